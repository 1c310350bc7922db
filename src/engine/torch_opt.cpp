// What tch does not expose: torch.jit.freeze and torch.jit.optimize_for_inference. The
// optimised module holds oneDNN constants that do not survive save/load, so it stays here, in a
// handle, and runs through packrat_forward. Tensors cross as torch::Tensor* (tch's C_tensor).
// Every entry point catches C++ exceptions and reports them as text, so none reaches Rust.
#include <cstring>
#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/torch.h>

namespace {
void set_error(char* err, size_t len, const std::string& what) {
  if (err == nullptr || len == 0) return;
  // The first line only: libtorch appends a C++ backtrace no user needs.
  std::string line = what.substr(0, what.find('\n'));
  std::strncpy(err, line.c_str(), len - 1);
  err[len - 1] = '\0';
}
}  // namespace

struct PackratModule {
  torch::jit::Module module;
};

extern "C" {

// Loads the TorchScript file `path`, converts it to bfloat16 when `bf16` is set, freezes it and
// optimises it for inference. Returns the handle, or null with a reason in `err`.
PackratModule* packrat_load_optimized(const char* path, int bf16, char* err, size_t err_len) {
  try {
    torch::jit::Module m = torch::jit::load(std::string(path));
    m.eval();
    if (bf16) m.to(torch::kBFloat16);
    torch::jit::Module frozen = torch::jit::freeze(m);
    frozen = torch::jit::optimize_for_inference(frozen);
    return new PackratModule{frozen};
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
  } catch (...) {
    set_error(err, err_len, "unknown C++ exception");
  }
  return nullptr;
}

// Runs forward on `n_in` tensors. Writes up to `max_out` new tensors to `out` (the caller owns
// them) and their count to `n_out`. A single tensor result is one output; a tuple or list of
// tensors is several. Returns 0, or 1 with a reason in `err`.
int packrat_forward(PackratModule* m, const torch::Tensor* const* in, size_t n_in,
                    torch::Tensor** out, size_t max_out, size_t* n_out, char* err,
                    size_t err_len) {
  try {
    torch::NoGradGuard no_grad;
    std::vector<torch::jit::IValue> args;
    args.reserve(n_in);
    for (size_t i = 0; i < n_in; i++) args.emplace_back(*in[i]);
    torch::jit::IValue result = m->module.forward(args);
    std::vector<torch::Tensor> tensors;
    if (result.isTensor()) {
      tensors.push_back(result.toTensor());
    } else if (result.isTuple()) {
      for (const auto& v : result.toTupleRef().elements()) tensors.push_back(v.toTensor());
    } else if (result.isList()) {
      for (const auto& v : result.toListRef()) tensors.push_back(v.toTensor());
    } else {
      set_error(err, err_len, "the module returns something other than tensors");
      return 1;
    }
    if (tensors.size() > max_out) {
      set_error(err, err_len, "the module returns too many outputs");
      return 1;
    }
    for (size_t i = 0; i < tensors.size(); i++) {
      // Back to plain dense tensors: outputs leave the oneDNN world here.
      torch::Tensor t = tensors[i].is_mkldnn() ? tensors[i].to_dense() : tensors[i];
      out[i] = new torch::Tensor(t);
    }
    *n_out = tensors.size();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
  } catch (...) {
    set_error(err, err_len, "unknown C++ exception");
  }
  return 1;
}

void packrat_free(PackratModule* m) { delete m; }
}
