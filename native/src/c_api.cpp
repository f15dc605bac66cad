// c_api.cpp: the C ABI of sdedge.h over the C++ core. Every entry point checks its arguments, catches
// every exception (status + this thread's last error message), and never lets one cross the ABI.
#include "sdedge/sdedge.h"

#include <cmath>
#include <cstddef>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "errors.hpp"
#include "json_util.hpp"
#include "session.hpp"

// The structs as ABI version 1 (DESIGN §5b as first written) laid them out: their sizes are the
// struct_size values a caller compiled against that header passes, accepted for ever.
namespace {
struct session_options_v1 {
  uint32_t struct_size;
  const char *backend;
  const char *providers;
  int32_t intra_op_threads;
  int32_t max_batch;
  int32_t warmup;
  const char *onnxruntime_library;
};
struct session_options_v2 {  // ABI versions 2 and 3: version 1's fields, then these
  session_options_v1 v1;
  const char *answer;
  const char *criterion;
  int32_t verify;
  int32_t latency_window;
  double latency_quantile;
};
struct infer_options_v1 {
  uint32_t struct_size;
  double threshold;
  int32_t calibrated;
  const char *criterion;
  double budget_ms;
  int64_t deadline_ns;
};
struct infer_options_v2 {  // version 1's fields, then these
  infer_options_v1 v1;
  const double *thresholds;
  int32_t num_thresholds;
};
}  // namespace
static_assert(offsetof(sdedge_infer_options, num_thresholds) == offsetof(infer_options_v2, num_thresholds),
              "ABI v2 prefix of sdedge_infer_options");
static_assert(sizeof(infer_options_v2) < sizeof(sdedge_infer_options), "appended fields (v3)");
static_assert(offsetof(sdedge_session_options, onnxruntime_library) == offsetof(session_options_v1, onnxruntime_library),
              "ABI v1 prefix of sdedge_session_options");
static_assert(offsetof(sdedge_infer_options, deadline_ns) == offsetof(infer_options_v1, deadline_ns),
              "ABI v1 prefix of sdedge_infer_options");
static_assert(sizeof(session_options_v1) < sizeof(sdedge_session_options), "appended fields");
static_assert(offsetof(sdedge_session_options, latency_quantile) == offsetof(session_options_v2, latency_quantile),
              "ABI v2 prefix of sdedge_session_options");
static_assert(sizeof(session_options_v2) < sizeof(sdedge_session_options), "appended fields (v4)");
static_assert(sizeof(infer_options_v1) < sizeof(sdedge_infer_options), "appended fields");

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

// The struct's size is the current one (true) or ABI version 1's (false: the appended fields are
// absent and take their defaults); anything else is refused.
template <class T, class V1>
bool check_struct(const T *o, const char *what, const char *init) {
  if (o->struct_size == sizeof(T)) return true;
  if (o->struct_size == sizeof(V1)) return false;
  arg_error(std::string(what) + ".struct_size is " + std::to_string(o->struct_size) + ", expected " +
            std::to_string(sizeof(T)) + " (or " + std::to_string(sizeof(V1)) + ", ABI version 1): initialise it with " +
            init + "() before setting fields");
}

sdedge::InferRequest request(const sdedge_infer_options *o) {
  sdedge::InferRequest r;
  if (!o) return r;
  // the sizes of ABI versions 3 (this header), 2 and 1: the fields a smaller struct lacks take their defaults
  const bool v3 = o->struct_size == sizeof(sdedge_infer_options);
  const bool v2 = v3 || o->struct_size == sizeof(infer_options_v2) ||
                  check_struct<sdedge_infer_options, infer_options_v1>(o, "sdedge_infer_options", "sdedge_infer_options_init");
  if (o->calibrated != 0 && o->calibrated != 1) arg_error("calibrated must be 0 or 1, got " + std::to_string(o->calibrated));
  if (!std::isnan(o->threshold) && !o->calibrated && !(o->threshold >= 0.0 && o->threshold <= 1.0))
    sdedge::fail(sdedge::Code::Policy, "threshold must be in [0, 1] or NAN (no confidence stop), got " + std::to_string(o->threshold));
  r.threshold = o->threshold;
  r.calibrated = o->calibrated == 1;
  r.criterion = o->criterion;
  r.budget_ms = o->budget_ms;
  r.deadline_ns = o->deadline_ns;
  if (v2 && (o->thresholds || o->num_thresholds)) {
    if (!o->thresholds) arg_error("num_thresholds is " + std::to_string(o->num_thresholds) + " but thresholds is NULL");
    if (o->num_thresholds <= 0) arg_error("thresholds is set but num_thresholds is " + std::to_string(o->num_thresholds));
    r.thresholds = o->thresholds;
    r.num_thresholds = o->num_thresholds;
  }
  if (v3) {
    if (o->row_thresholds && (!std::isnan(o->threshold) || o->calibrated || o->thresholds))
      arg_error("row_thresholds replaces threshold, calibrated and thresholds: leave those unset (NAN, 0, NULL)");
    if (o->row_deadlines_ns && (!std::isnan(o->budget_ms) || o->deadline_ns != 0))
      arg_error("row_deadlines_ns replaces budget_ms and deadline_ns: leave those unset (NAN, 0)");
    r.row_thresholds = o->row_thresholds;
    r.row_deadlines_ns = o->row_deadlines_ns;
    if (o->on_rows && !o->row_thresholds && !o->row_deadlines_ns)
      arg_error("on_rows reports rows settling under row_thresholds / row_deadlines_ns: set one of them");
    r.on_rows = o->on_rows;
    r.on_rows_user = o->on_rows_user;
  }
  return r;
}

sdedge_result to_c(const sdedge::RowResult &r) {
  return sdedge_result{r.label, r.exit_index, r.confidence, r.stopped_by, r.deadline_met, r.latency_ms};
}

sdedge::Session &session_of(sdedge_session *s) {
  if (!s) arg_error("session is NULL");
  return *s->core;
}

template <class T>
sdedge_status infer_rows(sdedge_session *s, const T *input, int64_t batch, const sdedge_infer_options *o,
                         sdedge_result *results, float *probabilities, float *exit_confidences) {
  return guarded([&] {
    sdedge::Session &core = session_of(s);
    if (!input) arg_error(sizeof(T) == 1 ? "input (nhwc) is NULL" : "input (nchw) is NULL");
    if (!results) arg_error("results is NULL (it receives one sdedge_result per row)");
    sdedge::InferRequest req = request(o);
    std::vector<sdedge::RowResult> rows(static_cast<std::size_t>(batch > 0 && batch <= core.max_batch() ? batch : 0));
    // row mode's callback: the settled rows' results are copied into the caller's array before it hears of them
    struct Relay {
      void (*user_fn)(void *, int64_t, const int64_t *);
      void *user;
      const std::vector<sdedge::RowResult> *rows;
      sdedge_result *results;
    } relay{req.on_rows, req.on_rows_user, &rows, results};
    if (req.on_rows) {
      req.on_rows = [](void *ctx, int64_t count, const int64_t *idx) {
        auto *r = static_cast<Relay *>(ctx);
        for (int64_t i = 0; i < count; ++i) r->results[idx[i]] = to_c((*r->rows)[static_cast<std::size_t>(idx[i])]);
        r->user_fn(r->user, count, idx);
      };
      req.on_rows_user = &relay;
    }
    if constexpr (sizeof(T) == 1)
      core.infer_u8(input, batch, req, rows.data(), probabilities, exit_confidences);
    else
      core.infer_f32(input, batch, req, rows.data(), probabilities, exit_confidences);
    for (std::size_t i = 0; i < rows.size(); ++i) results[i] = to_c(rows[i]);
  });
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
  o->answer = nullptr;
  o->criterion = nullptr;
  o->verify = 1;
  o->latency_window = 0;
  o->latency_quantile = 0.0;
  o->full_graph = 1;
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
  o->thresholds = nullptr;
  o->num_thresholds = 0;
  o->row_thresholds = nullptr;
  o->row_deadlines_ns = nullptr;
  o->on_rows = nullptr;
  o->on_rows_user = nullptr;
}

SDEDGE_API sdedge_status sdedge_session_create(const char *bundle_dir, const sdedge_session_options *o,
                                               sdedge_session **out) {
  if (out) *out = nullptr;
  return guarded([&] {
    if (!out) arg_error("out (the sdedge_session ** to fill) is NULL");
    if (!bundle_dir) arg_error("bundle_dir is NULL");
    sdedge::SessionConfig c;
    if (o) {
      // the sizes of ABI versions 4 (this header), 2/3 and 1: a smaller struct's missing fields take their defaults
      const bool v4 = o->struct_size == sizeof(sdedge_session_options);
      const bool v2 = v4 || o->struct_size == sizeof(session_options_v2) ||
                      check_struct<sdedge_session_options, session_options_v1>(o, "sdedge_session_options",
                                                                              "sdedge_session_options_init");
      c.backend = o->backend ? o->backend : "auto";
      c.providers = o->providers ? o->providers : "";
      c.intra_op_threads = o->intra_op_threads;
      c.max_batch = o->max_batch;
      c.warmup = o->warmup;
      c.ort_library = o->onnxruntime_library ? o->onnxruntime_library : "";
      if (v2) {
        const std::string answer = o->answer ? o->answer : "last";
        if (answer != "last" && answer != "ensemble")
          arg_error("answer must be \"last\" or \"ensemble\" (NULL = last), got \"" + answer + "\"");
        c.answer = answer == "ensemble" ? sdedge::Answer::Ensemble : sdedge::Answer::Last;
        c.criterion = o->criterion ? o->criterion : "max_prob";
        if (o->verify != 0 && o->verify != 1) arg_error("verify must be 0 or 1, got " + std::to_string(o->verify));
        c.verify = o->verify == 1;
        if (o->latency_window < 0) arg_error("latency_window must be >= 0 (0 = 256), got " + std::to_string(o->latency_window));
        if (o->latency_window > 0) c.latency_window = static_cast<std::size_t>(o->latency_window);
        if (o->latency_quantile != 0.0) c.latency_quantile = o->latency_quantile;
      }
      if (v4) {
        if (o->full_graph != 0 && o->full_graph != 1) arg_error("full_graph must be 0 or 1, got " + std::to_string(o->full_graph));
        c.full_graph = o->full_graph == 1;
      }
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
  return infer_rows(s, nchw, batch, o, results, probabilities, nullptr);
}

SDEDGE_API sdedge_status sdedge_session_infer_u8(sdedge_session *s, const uint8_t *nhwc, int64_t batch,
                                                 const sdedge_infer_options *o, sdedge_result *results,
                                                 float *probabilities) {
  return infer_rows(s, nhwc, batch, o, results, probabilities, nullptr);
}

SDEDGE_API sdedge_status sdedge_session_infer_f32_ex(sdedge_session *s, const float *nchw, int64_t batch,
                                                     const sdedge_infer_options *o, sdedge_result *results,
                                                     float *probabilities, float *exit_confidences) {
  return infer_rows(s, nchw, batch, o, results, probabilities, exit_confidences);
}

SDEDGE_API sdedge_status sdedge_session_infer_u8_ex(sdedge_session *s, const uint8_t *nhwc, int64_t batch,
                                                    const sdedge_infer_options *o, sdedge_result *results,
                                                    float *probabilities, float *exit_confidences) {
  return infer_rows(s, nhwc, batch, o, results, probabilities, exit_confidences);
}

SDEDGE_API sdedge_status sdedge_session_describe(const sdedge_session *s, char *buf, uint64_t capacity,
                                                 uint64_t *needed) {
  if (needed) *needed = 0;
  return guarded([&] {
    if (!s) arg_error("session is NULL");
    if (!buf && capacity) arg_error("buf is NULL but capacity is " + std::to_string(capacity));
    const sdedge::Session &c = *s->core;
    sdedge::Json d;
    d["abi_version"] = SDEDGE_ABI_VERSION;
    d["backend"] = c.backend_name();
    d["device_name"] = c.device_name();
    d["onnxruntime_version"] = c.runtime_version();
    d["num_exits"] = c.num_exits();
    d["num_classes"] = c.num_classes();
    d["input_chw"] = {c.chw(0), c.chw(1), c.chw(2)};
    d["classes"] = c.bundle().manifest.classes;
    d["max_batch"] = c.max_batch();
    d["answer"] = c.answer() == sdedge::Answer::Ensemble ? "ensemble" : "last";
    d["criterion"] = c.default_criterion();
    d["has_profile"] = c.has_profile();
    d["has_calibration"] = c.has_calibration();
    d["full_graph"] = c.has_full_graph();
    d["bundle_dir"] = c.bundle().path;
    const std::string text = d.dump(-1, ' ', false, sdedge::Json::error_handler_t::replace);
    const uint64_t size = static_cast<uint64_t>(text.size()) + 1;
    if (needed) *needed = size;
    if (!buf && !capacity) return;  // a size query
    if (capacity < size)
      arg_error("buffer of " + std::to_string(capacity) + " bytes is too small: the description needs " +
                std::to_string(size));
    std::memcpy(buf, text.c_str(), size);
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

SDEDGE_API sdedge_status sdedge_session_section_cost_ms(sdedge_session *s, int32_t section, int64_t rows,
                                                        double *ms) {
  return guarded([&] {
    sdedge::Session &core = session_of(s);
    if (!ms) arg_error("ms is NULL (it receives the predicted milliseconds)");
    *ms = core.section_cost_ms(section, rows);
  });
}

}  // extern "C"
