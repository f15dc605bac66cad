// c_api.cpp: the C ABI of sdedge.h over the C++ core. Every entry point checks its arguments, catches
// every exception (status + this thread's last error message), and never lets one cross the ABI.
#include "sdedge/sdedge.h"

#include <cmath>
#include <exception>
#include <new>
#include <string>

#include "errors.hpp"
#include "session.hpp"

static_assert(SDEDGE_E_ARGUMENT == static_cast<int>(sdedge::Code::Argument), "status codes");
static_assert(SDEDGE_E_BUNDLE == static_cast<int>(sdedge::Code::Bundle), "status codes");
static_assert(SDEDGE_E_CHECKSUM == static_cast<int>(sdedge::Code::Checksum), "status codes");
static_assert(SDEDGE_E_INPUT == static_cast<int>(sdedge::Code::Input), "status codes");
static_assert(SDEDGE_E_BACKEND == static_cast<int>(sdedge::Code::Backend), "status codes");
static_assert(SDEDGE_E_POLICY == static_cast<int>(sdedge::Code::Policy), "status codes");
static_assert(SDEDGE_E_INTERNAL == static_cast<int>(sdedge::Code::Internal), "status codes");
static_assert(int{SDEDGE_STOP_CONFIDENCE} == int{sdedge::kStopConfidence} && int{SDEDGE_STOP_DEADLINE} == int{sdedge::kStopDeadline} &&
                  int{SDEDGE_STOP_LAST} == int{sdedge::kStopLast}, "stop reasons");

struct sdedge_session {
  explicit sdedge_session(std::unique_ptr<sdedge::Session> s) : core(std::move(s)) {}
  std::unique_ptr<sdedge::Session> core;
};

namespace {

thread_local std::string t_last_error;  // the only mutable global: this thread's last error message

sdedge_status set_error(sdedge_status s, const std::string &msg) {
  try {
    t_last_error = msg;
  } catch (...) {  // out of memory while keeping the message: keep the status
  }
  return s;
}

// Run `f`; map what it throws onto a status and a message.
template <class F>
sdedge_status guarded(F &&f) {
  try {
    f();
    return SDEDGE_OK;
  } catch (const sdedge::Error &e) {
    return set_error(static_cast<sdedge_status>(e.code()), e.what());
  } catch (const std::bad_alloc &) {
    return set_error(SDEDGE_E_INTERNAL, "out of memory");
  } catch (const std::exception &e) {
    return set_error(SDEDGE_E_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return set_error(SDEDGE_E_INTERNAL, "internal error: unknown exception");
  }
}

[[noreturn]] void arg_error(const std::string &msg) { sdedge::fail(sdedge::Code::Argument, msg); }

template <class T>
void check_struct(const T *o, const char *what, const char *init) {
  if (o->struct_size != sizeof(T))
    arg_error(std::string(what) + ".struct_size is " + std::to_string(o->struct_size) + ", expected " +
              std::to_string(sizeof(T)) + ": initialise it with " + init + "() before setting fields");
}

sdedge::InferRequest request(const sdedge_infer_options *o) {
  sdedge::InferRequest r;
  if (!o) return r;
  check_struct(o, "sdedge_infer_options", "sdedge_infer_options_init");
  if (o->calibrated != 0 && o->calibrated != 1) arg_error("calibrated must be 0 or 1, got " + std::to_string(o->calibrated));
  if (!std::isnan(o->threshold) && !o->calibrated && !(o->threshold >= 0.0 && o->threshold <= 1.0))
    sdedge::fail(sdedge::Code::Policy, "threshold must be in [0, 1] or NAN (no confidence stop), got " + std::to_string(o->threshold));
  r.threshold = o->threshold;
  r.calibrated = o->calibrated == 1;
  r.criterion = o->criterion;
  r.budget_ms = o->budget_ms;
  r.deadline_ns = o->deadline_ns;
  return r;
}

sdedge::Session &session_of(sdedge_session *s) {
  if (!s) arg_error("session is NULL");
  return *s->core;
}

}  // namespace

extern "C" {

SDEDGE_API uint32_t sdedge_abi_version(void) { return SDEDGE_ABI_VERSION; }

SDEDGE_API const char *sdedge_last_error(void) { return t_last_error.c_str(); }

SDEDGE_API int64_t sdedge_now_ns(void) { return sdedge::now_ns(); }

SDEDGE_API void sdedge_session_options_init(sdedge_session_options *o) {
  if (!o) return;
  *o = sdedge_session_options{};
  o->struct_size = sizeof(*o);
  o->backend = nullptr;
  o->providers = nullptr;
  o->intra_op_threads = 0;
  o->max_batch = 64;
  o->warmup = 3;
  o->onnxruntime_library = nullptr;
}

SDEDGE_API void sdedge_infer_options_init(sdedge_infer_options *o) {
  if (!o) return;
  *o = sdedge_infer_options{};
  o->struct_size = sizeof(*o);
  o->threshold = NAN;
  o->calibrated = 0;
  o->criterion = nullptr;
  o->budget_ms = NAN;
  o->deadline_ns = 0;
}

SDEDGE_API sdedge_status sdedge_session_create(const char *bundle_dir, const sdedge_session_options *o,
                                               sdedge_session **out) {
  if (out) *out = nullptr;
  return guarded([&] {
    if (!out) arg_error("out (the sdedge_session ** to fill) is NULL");
    if (!bundle_dir) arg_error("bundle_dir is NULL");
    sdedge::SessionConfig c;
    if (o) {
      check_struct(o, "sdedge_session_options", "sdedge_session_options_init");
      c.backend = o->backend ? o->backend : "auto";
      c.providers = o->providers ? o->providers : "";
      c.intra_op_threads = o->intra_op_threads;
      c.max_batch = o->max_batch;
      c.warmup = o->warmup;
      c.ort_library = o->onnxruntime_library ? o->onnxruntime_library : "";
    }
    auto core = std::make_unique<sdedge::Session>(bundle_dir, c);
    *out = new sdedge_session(std::move(core));
  });
}

SDEDGE_API void sdedge_session_free(sdedge_session *s) {
  try {
    delete s;
  } catch (...) {  // destructors do not throw; never let anything cross the ABI
  }
}

SDEDGE_API sdedge_status sdedge_session_info(const sdedge_session *s, int32_t *num_exits, int32_t *num_classes,
                                             int64_t chw[3]) {
  return guarded([&] {
    if (!s) arg_error("session is NULL");
    if (!num_exits && !num_classes && !chw) arg_error("num_exits, num_classes and chw are all NULL: nothing to fill");
    if (num_exits) *num_exits = s->core->num_exits();
    if (num_classes) *num_classes = s->core->num_classes();
    if (chw)
      for (int i = 0; i < 3; ++i) chw[i] = s->core->chw(i);
  });
}

SDEDGE_API sdedge_status sdedge_session_infer_f32(sdedge_session *s, const float *nchw, int64_t batch,
                                                  const sdedge_infer_options *o, sdedge_result *results,
                                                  float *probabilities) {
  return guarded([&] {
    sdedge::Session &core = session_of(s);
    if (!nchw) arg_error("input (nchw) is NULL");
    if (!results) arg_error("results is NULL (it receives one sdedge_result per row)");
    const sdedge::InferRequest req = request(o);
    std::vector<sdedge::RowResult> rows(static_cast<std::size_t>(batch > 0 && batch <= core.max_batch() ? batch : 0));
    core.infer_f32(nchw, batch, req, rows.data(), probabilities);
    for (std::size_t i = 0; i < rows.size(); ++i)
      results[i] = sdedge_result{rows[i].label, rows[i].exit_index, rows[i].confidence, rows[i].stopped_by,
                                 rows[i].deadline_met, rows[i].latency_ms};
  });
}

SDEDGE_API sdedge_status sdedge_session_infer_u8(sdedge_session *s, const uint8_t *nhwc, int64_t batch,
                                                 const sdedge_infer_options *o, sdedge_result *results,
                                                 float *probabilities) {
  return guarded([&] {
    sdedge::Session &core = session_of(s);
    if (!nhwc) arg_error("input (nhwc) is NULL");
    if (!results) arg_error("results is NULL (it receives one sdedge_result per row)");
    const sdedge::InferRequest req = request(o);
    std::vector<sdedge::RowResult> rows(static_cast<std::size_t>(batch > 0 && batch <= core.max_batch() ? batch : 0));
    core.infer_u8(nhwc, batch, req, rows.data(), probabilities);
    for (std::size_t i = 0; i < rows.size(); ++i)
      results[i] = sdedge_result{rows[i].label, rows[i].exit_index, rows[i].confidence, rows[i].stopped_by,
                                 rows[i].deadline_met, rows[i].latency_ms};
  });
}

SDEDGE_API sdedge_status sdedge_session_infer_all_exits(sdedge_session *s, const float *nchw, int64_t batch,
                                                        float *logits) {
  return guarded([&] {
    sdedge::Session &core = session_of(s);
    if (!nchw) arg_error("input (nchw) is NULL");
    if (!logits) arg_error("logits is NULL (it receives num_exits * batch * num_classes floats)");
    core.infer_all_exits(nchw, batch, logits);
  });
}

}  // extern "C"
