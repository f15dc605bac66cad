// ort_backend.hpp: the ONNX Runtime backend: one OrtSession per section with explicit options
// (intra-op threads, inter-op 1, sequential, spinning off), CPU by default, CUDA / TensorRT execution
// providers appended when asked for and present in the loaded library (runtime/backends/onnxruntime.py).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "bundle.hpp"
#include "ort.hpp"

namespace sdedge {

struct OrtBackendOptions {
  std::string library;      // "" = $SDEDGE_ORT_LIBRARY, else libonnxruntime.so.1
  std::string providers;    // comma list ("cpu", "cuda", "tensorrt" or full ORT names); "" = CPU
  int intra_op_threads = 0;  // 0 = the CPUs this process may use
  int max_batch = 64;        // TensorRT optimisation-profile shapes: 1..max_batch
  bool full_graph = true;    // also load the bundle's full.onnx when it has one (Backend::run_full)
};

class OrtBackend : public Backend {
 public:
  OrtBackend(const Bundle &bundle, const OrtBackendOptions &options);
  ~OrtBackend() override;

  std::string name() const override { return "onnxruntime"; }
  std::string device_name() const override { return device_name_; }
  std::string runtime_version() const override;
  int num_sections() const override { return num_sections_; }
  TensorPtr upload(const float *x, std::int64_t rows) override;
  TensorPtr run_section(int k, const DeviceTensor &in, std::vector<float> &logits) override;
  bool split_heads() const override { return split_heads_; }
  TensorPtr run_trunk(int k, const DeviceTensor &in) override;
  void run_head(int k, const DeviceTensor &features, std::vector<float> &logits) override;
  TensorPtr take_rows(const DeviceTensor &t, const std::vector<std::int64_t> &keep) override;
  bool has_full() const override { return static_cast<int>(sessions_.size()) > num_sections_; }
  void run_full(const DeviceTensor &in, std::vector<float> &logits) override;

 private:
  OrtPtr<OrtSessionOptions> session_options(const std::vector<std::string> &providers, const SectionSpec &spec,
                                            const Bundle &bundle) const;
  // Refuse a graph whose inputs/outputs (names, ranks, fixed dims, dtypes) are not the manifest's.
  void check_io(OrtSession *session, const std::vector<const TensorSpec *> &inputs,
                const std::vector<const TensorSpec *> &outputs, const std::string &where) const;
  // Load section `spec`'s graph (and its exit head's, format version 2) or the full graph (index 0).
  void load(const std::vector<std::string> &providers, const SectionSpec &spec, const Bundle &bundle);
  OrtPtr<OrtSession> open(const std::vector<std::string> &providers, const SectionSpec &spec, const Bundle &bundle,
                          const std::string &rel);
  // Run graph `i` (0-based: sections, then the full graph), or section i+1's head (`head`); `logits`
  // null: features only (a trunk). `what` names it in errors.
  TensorPtr run_graph(std::size_t i, const DeviceTensor &in, std::vector<float> *logits, const std::string &what,
                      bool head = false);
  // Copy `rows` x classes logits out of `value`, refusing any other element count.
  void read_logits(OrtValue *value, std::int64_t rows, std::vector<float> &logits, const std::string &what);

  std::unique_ptr<OrtLibrary> lib_;  // first member: released last
  OrtPtr<OrtEnv> env_;
  OrtPtr<OrtMemoryInfo> cpu_;
  std::vector<OrtPtr<OrtSession>> sessions_;  // the sections, then full.onnx when loaded
  int num_sections_ = 0;
  std::vector<std::string> in_names_, feat_names_, logit_names_;
  std::vector<OrtPtr<OrtSession>> heads_;  // per section: its exit head's graph (format version 2), or null
  bool split_heads_ = false;
  int threads_ = 1;
  int max_batch_ = 64;
  std::int64_t num_classes_ = 0;
  std::vector<std::int64_t> input_shape_;  // [-1, C, H, W]
  std::string device_name_;
};

}  // namespace sdedge
