//! Compiles the TorchScript optimisation shim (`src/engine/torch_opt.cpp`) against libtorch and
//! bakes the engines' library locations into the binary so it runs without LD_LIBRARY_PATH:
//! libtorch's directory as an rpath (torch-sys exports it to dependants as DEP_TCH_LIBTORCH_LIB)
//! with its version, and the ONNX Runtime library `ort` loads at run time
//! (`PACKRAT_ORT_LIB` at build time, else the checkout's `.onnxruntime/`), and OpenVINO's C
//! library (`PACKRAT_OPENVINO_LIB`, else the checkout's `.openvino/`).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Installed from the .deb: libtorch sits under /usr/lib/packrat beside /usr/bin.
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/packrat/libtorch/lib");
        // The TorchScript optimisation shim, against the same libtorch (flags as torch-sys).
        let include = std::path::Path::new(&dir).join("../include");
        cc::Build::new()
            .cpp(true)
            .file("src/engine/torch_opt.cpp")
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .warnings(false)
            .compile("packrat_torch_opt");
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-lib=dylib=torch_cpu");
        println!("cargo:rustc-link-lib=dylib=c10");
        println!("cargo:rerun-if-changed=src/engine/torch_opt.cpp");
        let version = std::fs::read_to_string(std::path::Path::new(&dir).join("../build-version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        println!("cargo:rustc-env=PACKRAT_LIBTORCH_VERSION={version}");
    } else {
        println!("cargo:rustc-env=PACKRAT_LIBTORCH_VERSION=unknown");
    }
    let ort = std::env::var("PACKRAT_ORT_LIB").unwrap_or_else(|_| {
        let top = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        format!("{top}/.onnxruntime/lib/libonnxruntime.so.1")
    });
    println!("cargo:rustc-env=PACKRAT_ORT_LIB={ort}");
    let ov = std::env::var("PACKRAT_OPENVINO_LIB").unwrap_or_else(|_| {
        let top = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        format!("{top}/.openvino/libs/libopenvino_c.so")
    });
    println!("cargo:rustc-env=PACKRAT_OPENVINO_LIB={ov}");
    println!("cargo:rerun-if-env-changed=PACKRAT_OPENVINO_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PACKRAT_ORT_LIB");
}
