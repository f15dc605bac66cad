// backend.hpp: the small interface the session's loop runs sections through (DESIGN §5: load section,
// run section on device-resident buffers). ort_backend.cpp implements it over ONNX Runtime; tests can
// implement it with scripted logits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "errors.hpp"

namespace sdedge {

// A batch living where the backend keeps it (host memory for ORT on CPU). Opaque to the session.
struct DeviceTensor {
  virtual ~DeviceTensor() = default;
};
using TensorPtr = std::unique_ptr<DeviceTensor>;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "onnxruntime"
  virtual std::string device_name() const = 0;
  virtual std::string runtime_version() const { return ""; }  // e.g. ONNX Runtime's version  // names the latency profile: profiles/<device_name>.json
  virtual int num_sections() const = 0;
  // The input batch: `rows` float32 NCHW images at `x`, which stays valid until the call returns.
  virtual TensorPtr upload(const float *x, std::int64_t rows) = 0;
  // Run 1-based section `k` on `in`; write its logits (rows x classes) into `logits` (resized) and
  // return its features (nullptr for the last section).
  virtual TensorPtr run_section(int k, const DeviceTensor &in, std::vector<float> &logits) = 0;
  // Format version 2: sections 1..K-1 run without their exit heads (run_trunk) and a head runs only where
  // the session needs that exit's logits (run_head on the features run_trunk returned); run_section still
  // runs both.
  virtual bool split_heads() const { return false; }
  virtual TensorPtr run_trunk(int k, const DeviceTensor &) {
    fail(Code::Internal, "run_trunk: the " + name() + " backend runs section " + std::to_string(k) + " with its head");
  }
  virtual void run_head(int k, const DeviceTensor &, std::vector<float> &) {
    fail(Code::Internal, "run_head: the " + name() + " backend runs section " + std::to_string(k) + " with its head");
  }
  // The rows `keep` (ascending indices) of `t`, as a new tensor.
  virtual TensorPtr take_rows(const DeviceTensor &t, const std::vector<std::int64_t> &keep) = 0;
  // The bundle's full.onnx (every section to the deepest exit in one graph, no intermediate exit heads),
  // when the backend loaded it: a call with no policy answers from it.
  virtual bool has_full() const { return false; }
  // Run the full graph on `in` (an upload()ed batch); write the deepest exit's logits (rows x classes).
  virtual void run_full(const DeviceTensor &, std::vector<float> &) {
    fail(Code::Internal, "run_full: the " + name() + " backend has no full graph");
  }
};

}  // namespace sdedge
