//! Bakes libtorch's directory into the binary's rpath so it runs without LD_LIBRARY_PATH
//! (torch-sys exports it to dependants as DEP_TCH_LIBTORCH_LIB), and records its version.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        let version = std::fs::read_to_string(std::path::Path::new(&dir).join("../build-version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        println!("cargo:rustc-env=PACKRAT_LIBTORCH_VERSION={version}");
    } else {
        println!("cargo:rustc-env=PACKRAT_LIBTORCH_VERSION=unknown");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
