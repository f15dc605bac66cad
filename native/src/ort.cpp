// ort.cpp: loading ONNX Runtime with dlopen and checking its statuses.
#include "ort.hpp"

#include <dlfcn.h>

#include <cstdlib>

#include "errors.hpp"

namespace sdedge {

OrtLibrary::OrtLibrary(const std::string &path) {
  path_ = path;
  if (path_.empty()) {
    const char *env = std::getenv("SDEDGE_ORT_LIBRARY");
    path_ = env && *env ? env : "libonnxruntime.so.1";
  }
  handle_ = ::dlopen(path_.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle_) {
    const char *why = ::dlerror();
    fail(Code::Backend, "could not load the ONNX Runtime library " + path_ + " (" + (why ? why : "unknown error") +
                            "); point sdedge_session_options.onnxruntime_library or $SDEDGE_ORT_LIBRARY at a "
                            "libonnxruntime.so (e.g. the onnxruntime wheel's capi/libonnxruntime.so.*), or put "
                            "libonnxruntime.so.1 on the loader path");
  }
  using GetApiBase = const OrtApiBase *(*)();
  auto get_base = reinterpret_cast<GetApiBase>(::dlsym(handle_, "OrtGetApiBase"));
  const OrtApiBase *base = get_base ? get_base() : nullptr;
  if (!base) {
    ::dlclose(handle_);
    fail(Code::Backend, path_ + " is not an ONNX Runtime library (no OrtGetApiBase)");
  }
  version_ = base->GetVersionString ? base->GetVersionString() : "unknown";  // e.g. "1.32.0"
  api_ = base->GetApi(ORT_API_VERSION);
  if (!api_) {
    ::dlclose(handle_);
    fail(Code::Backend, "the ONNX Runtime library " + path_ + " (version " + version_ + ") is older than API version " +
                            std::to_string(ORT_API_VERSION) + " that sdedge was built with; use onnxruntime >= 1." +
                            std::to_string(ORT_API_VERSION));
  }
}

OrtLibrary::~OrtLibrary() {
  if (handle_) ::dlclose(handle_);
}

std::string OrtLibrary::version() const { return version_; }

void OrtLibrary::check(OrtStatus *status, const std::string &what) const {
  if (!status) return;
  std::string msg = api_->GetErrorMessage(status);
  api_->ReleaseStatus(status);
  fail(Code::Backend, what + ": " + msg);
}

std::vector<std::string> OrtLibrary::available_providers() const {
  char **names = nullptr;
  int n = 0;
  check(api_->GetAvailableProviders(&names, &n), "onnxruntime GetAvailableProviders");
  std::vector<std::string> out(names, names + n);
  check(api_->ReleaseAvailableProviders(names, n), "onnxruntime ReleaseAvailableProviders");
  return out;
}

}  // namespace sdedge
