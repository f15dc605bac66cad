// session.hpp: the anytime session (runtime/session.py AnytimeSession): a verified bundle on a backend,
// the decision loop with per-row early exit (the batch shrinks, results in input order), confidence
// policies with calibrated temperatures, the deadline rule, answer modes, and every exit's logits.
// Calls on one session are serialized by its mutex. A call with no policy answers from full.onnx (see
// SessionConfig::full_graph).
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backend.hpp"
#include "bundle.hpp"
#include "calibration.hpp"
#include "confidence.hpp"
#include "deadline.hpp"
#include "preprocess.hpp"

namespace sdedge {

enum class Answer { Last, Ensemble };
enum StopReason { kStopConfidence = 1, kStopDeadline = 2, kStopLast = 3 };  // == SDEDGE_STOP_*

// The most images one call may carry (runtime/options.py MAX_BATCH_LIMIT): the warm-up runs max_batch rows at
// once, so a larger value only asks for memory no edge device has.
constexpr int kMaxBatchLimit = 4096;

struct SessionConfig {
  std::string backend = "auto";  // "auto" | "onnxruntime"
  std::string providers;         // comma list; "" = CPU
  int intra_op_threads = 0;      // 0 = every CPU this process may use
  int max_batch = 64;             // 1..kMaxBatchLimit
  int warmup = 3;
  std::string ort_library;       // "" = $SDEDGE_ORT_LIBRARY, else libonnxruntime.so.1
  Answer answer = Answer::Last;
  std::string criterion = "max_prob";  // the default criterion of calls that name none
  bool verify = true;
  std::size_t latency_window = 256;  // samples per (section, rows) cell (DeadlinePolicy)
  double latency_quantile = 0.99;    // the tail quantile over them
  // Load the bundle's full.onnx when it has one: a call with no policy (no deadline, no threshold at any
  // exit, answer "last") that asks for no exit confidences then runs that one graph instead of the
  // chain of sections, whose intermediate exit heads it would not use.
  bool full_graph = true;
  // The clock (seconds) that times sections and deadlines; empty = CLOCK_MONOTONIC (now_ns()). Tests
  // pass a scripted one (Python: AnytimeSession(clock=...)); InferRequest::deadline_ns is read on it.
  std::function<double()> clock;
};

struct InferRequest {
  double threshold = NAN;        // NaN = no confidence stop
  bool calibrated = false;       // calibration.json's thresholds and enabled flags
  const char *criterion = nullptr;
  double budget_ms = NAN;        // NaN = none
  std::int64_t deadline_ns = 0;  // 0 = none; absolute on now_ns()'s clock
  const double *thresholds = nullptr;  // per-exit thresholds (NaN = none), num_thresholds of them
  int num_thresholds = 0;
  const float *row_thresholds = nullptr;      // batch * num_exits per-row float32 thresholds (NaN = none), or NULL
  const std::int64_t *row_deadlines_ns = nullptr;  // batch per-row deadlines on now_ns()'s clock (0 = none), or NULL
  // row mode (row_thresholds / row_deadlines_ns): told of the row indices each time rows settle, after their
  // RowResult, probabilities and exit confidences are final
  void (*on_rows)(void *user, std::int64_t count, const std::int64_t *rows) = nullptr;
  void *on_rows_user = nullptr;
};

struct RowResult {
  std::int32_t label = 0, exit_index = 0;
  float confidence = 0.0f;
  std::int32_t stopped_by = 0, deadline_met = -1;
  double latency_ms = 0.0;
};

std::int64_t now_ns();  // CLOCK_MONOTONIC

class Session {
 public:
  Session(const std::string &bundle_dir, const SessionConfig &config);
  // On a ready backend (tests: scripted logits); `profile` is the latency profile to use, if any.
  Session(Bundle bundle, std::unique_ptr<Backend> backend, const SessionConfig &config);

  int num_exits() const { return bundle_.manifest.num_exits(); }
  int num_classes() const { return bundle_.manifest.num_classes(); }
  std::int64_t chw(int i) const { return bundle_.manifest.input.shape[static_cast<std::size_t>(i) + 1]; }
  int max_batch() const { return max_batch_; }
  const std::string &device_name() const { return device_name_; }
  bool has_profile() const { return has_profile_; }
  bool has_calibration() const { return calibration_.has_value(); }
  bool has_full_graph() const { return backend_->has_full(); }  // no-policy calls run full.onnx
  const Bundle &bundle() const { return bundle_; }
  std::string backend_name() const { return backend_->name(); }
  std::string runtime_version() const { return backend_->runtime_version(); }
  Answer answer() const { return answer_; }
  const std::string &default_criterion() const { return criterion_; }
  // The deadline rule and its online figures (tests, diagnostics; not synchronized with running calls).
  const DeadlinePolicy &deadline_policy() const { return *deadline_; }
  const LatencyEstimator &estimator() const { return deadline_->estimator(); }

  // `batch` rows (1..max_batch) of float NCHW / uint8 NHWC; `results` gets `batch` entries in input
  // order, `probabilities` (nullable) batch * num_classes floats, `exit_conf` (nullable) batch * num_exits
  // floats: each row's answer confidence at every exit it ran, NaN past its exit.
  void infer_f32(const float *nchw, std::int64_t batch, const InferRequest &req, RowResult *results, float *probabilities,
                 float *exit_conf = nullptr);
  void infer_u8(const std::uint8_t *nhwc, std::int64_t batch, const InferRequest &req, RowResult *results,
                float *probabilities, float *exit_conf = nullptr);
  // Raw logits of every exit, [K][batch][C]; any batch >= 1 (run in chunks of max_batch).
  void infer_all_exits(const float *nchw, std::int64_t batch, float *logits);
  // The deadline policy's predicted time of `section` (1..K) on `rows` rows; section 0: the per-call overhead.
  double section_cost_ms(int section, std::int64_t rows);

 private:
  void init(const SessionConfig &config);
  double clock() const { return clock_ ? clock_() : static_cast<double>(now_ns()) * 1e-9; }
  void warmup(int n);
  const ConfidencePolicy &policy_for(const InferRequest &req, ConfidencePolicy &scratch) const;
  // What every infer call starts with: its entry time, its deadline, its policy, the batch checked.
  struct CallStart {
    double t0 = 0.0;
    std::optional<double> deadline;
    ConfidencePolicy scratch;  // holds the policy when the request builds its own
    const ConfidencePolicy *policy = nullptr;
    const float *row_thr = nullptr;  // per-row thresholds [batch][K] (NaN = none), or NULL: the policy's
    std::vector<double> row_dl;      // per-row deadlines in seconds on clock() (inf = none), or empty: `deadline`
    void (*on_rows)(void *, std::int64_t, const std::int64_t *) = nullptr;
    void *on_rows_user = nullptr;
  };
  void start_call(std::int64_t batch, const InferRequest &req, CallStart &call) const;
  std::optional<double> stop_at(double t0_s, const InferRequest &req) const;
  void check_batch(std::int64_t batch) const;
  void infer_prepared(const float *nchw, std::int64_t batch, const CallStart &c, double prep_ms, RowResult *results,
                      float *probabilities, float *exit_conf);
  void run(const float *nchw, std::int64_t n_all, const CallStart &c, double prep_ms, RowResult *results,
           float *probabilities, float *exit_conf);
  // Which going rows stop for their own deadline before section `next` (runtime/policies.py rows_out_of_time).
  void rows_out_of_time(int next, const std::vector<std::int64_t> &rows, const std::vector<double> &row_dl,
                        const std::vector<char> &going, double now, std::vector<char> &late);

  Bundle bundle_;
  std::unique_ptr<Backend> backend_;
  std::optional<Calibration> calibration_;
  std::unique_ptr<DeadlinePolicy> deadline_;
  std::function<double()> clock_;
  std::unique_ptr<Preprocessor> prep_;
  ConfidencePolicy default_policy_;
  Answer answer_ = Answer::Last;
  std::string criterion_ = "max_prob";
  int max_batch_ = 64;
  bool has_profile_ = false;
  std::string device_name_;
  std::mutex mu_;
  // The thread inside the session (holding mu_), so that a call back into the session from its own on_rows
  // callback is refused with an error instead of locking mu_ twice (a hang: undefined behaviour).
  std::atomic<std::thread::id> owner_{};
  class Lock {  // mu_, held by this thread; refuses re-entry from the same thread
   public:
    explicit Lock(Session &s);
    ~Lock();
    Lock(const Lock &) = delete;
    Lock &operator=(const Lock &) = delete;

   private:
    Session &s_;
  };
  // scratch reused across calls (guarded by mu_)
  std::vector<float> logits_, probs_, acc_, answer_buf_, conf_buf_;
};

}  // namespace sdedge
