// ort.hpp: ONNX Runtime's C API, loaded at run time. OrtLibrary dlopens the library (the one named in
// the options, else $SDEDGE_ORT_LIBRARY, else the loader's libonnxruntime.so.1), asks it for the API of
// the headers we were built with, and turns every OrtStatus into a BackendError (status released).
// OrtPtr<T> owns an ORT object and releases it with the matching Release function.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <onnxruntime_c_api.h>

namespace sdedge {

template <class T>
using OrtPtr = std::unique_ptr<T, std::function<void(T *)>>;

class OrtLibrary {
 public:
  // `path` empty: $SDEDGE_ORT_LIBRARY, else "libonnxruntime.so.1". BackendError when it cannot be loaded
  // or is older than the headers (ORT_API_VERSION).
  explicit OrtLibrary(const std::string &path);
  ~OrtLibrary();
  OrtLibrary(const OrtLibrary &) = delete;
  OrtLibrary &operator=(const OrtLibrary &) = delete;

  const OrtApi &api() const { return *api_; }
  const std::string &path() const { return path_; }
  std::string version() const;  // GetVersionString(), e.g. "1.32.0"
  std::vector<std::string> available_providers() const;

  // Throws BackendError "<what>: <ORT message>" when `status` is an error; releases it either way.
  void check(OrtStatus *status, const std::string &what) const;

  // Owning wrappers for objects this library created.
  OrtPtr<OrtEnv> own(OrtEnv *p) const { return {p, [a = api_](OrtEnv *q) { a->ReleaseEnv(q); }}; }
  OrtPtr<OrtSession> own(OrtSession *p) const { return {p, [a = api_](OrtSession *q) { a->ReleaseSession(q); }}; }
  OrtPtr<OrtSessionOptions> own(OrtSessionOptions *p) const {
    return {p, [a = api_](OrtSessionOptions *q) { a->ReleaseSessionOptions(q); }};
  }
  OrtPtr<OrtValue> own(OrtValue *p) const { return {p, [a = api_](OrtValue *q) { a->ReleaseValue(q); }}; }
  OrtPtr<OrtMemoryInfo> own(OrtMemoryInfo *p) const {
    return {p, [a = api_](OrtMemoryInfo *q) { a->ReleaseMemoryInfo(q); }};
  }
  OrtPtr<OrtTypeInfo> own(OrtTypeInfo *p) const { return {p, [a = api_](OrtTypeInfo *q) { a->ReleaseTypeInfo(q); }}; }
  OrtPtr<OrtTensorTypeAndShapeInfo> own(OrtTensorTypeAndShapeInfo *p) const {
    return {p, [a = api_](OrtTensorTypeAndShapeInfo *q) { a->ReleaseTensorTypeAndShapeInfo(q); }};
  }
  OrtPtr<OrtCUDAProviderOptionsV2> own(OrtCUDAProviderOptionsV2 *p) const {
    return {p, [a = api_](OrtCUDAProviderOptionsV2 *q) { a->ReleaseCUDAProviderOptions(q); }};
  }
  OrtPtr<OrtTensorRTProviderOptionsV2> own(OrtTensorRTProviderOptionsV2 *p) const {
    return {p, [a = api_](OrtTensorRTProviderOptionsV2 *q) { a->ReleaseTensorRTProviderOptions(q); }};
  }

 private:
  void *handle_ = nullptr;
  const OrtApi *api_ = nullptr;
  std::string version_;
  std::string path_;
};

}  // namespace sdedge
