// session.cpp: the anytime session's decision loop, inputs, warm-up and every-exit logits
// (runtime/session.py AnytimeSession: the same calls to the deadline rule, in the same order, on the
// session's clock, so that scripted section times give the same exits in both engines).
#include "session.hpp"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <numeric>
#include <set>

#include "errors.hpp"
#include "ort_backend.hpp"
#include "profile.hpp"

namespace sdedge {

std::int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

namespace {

void validate(const SessionConfig &c) {
  if (c.backend != "auto" && c.backend != "onnxruntime")
    fail(Code::Argument, "backend must be \"auto\" or \"onnxruntime\" (NULL = auto), got \"" + c.backend + "\"");
  if (c.max_batch < 1 || c.max_batch > kMaxBatchLimit)
    fail(Code::Argument, "max_batch must be an integer in 1.." + std::to_string(kMaxBatchLimit) + ", got " +
                             std::to_string(c.max_batch));
  if (c.warmup < 0) fail(Code::Argument, "warmup must be a non-negative integer, got " + std::to_string(c.warmup));
  const std::string latency_problem = latency_options_problem(c.latency_window, c.latency_quantile);
  if (!latency_problem.empty()) fail(Code::Argument, latency_problem);  // before the bundle is read
  parse_criterion(c.criterion);
  if (c.intra_op_threads < 0)
    fail(Code::Argument, "intra_op_threads must be >= 0 (0 = the backend's default), got " + std::to_string(c.intra_op_threads));
}

Bundle open_checked(const std::string &dir, const SessionConfig &c) {
  validate(c);
  return open_bundle(dir, c.verify);
}

}  // namespace

Session::Session(const std::string &bundle_dir, const SessionConfig &config) : bundle_(open_checked(bundle_dir, config)) {
  calibration_ = load_calibration(bundle_);
  backend_ = std::make_unique<OrtBackend>(
      bundle_, OrtBackendOptions{config.ort_library, config.providers, config.intra_op_threads, config.max_batch,
                                  config.full_graph});
  init(config);
}

Session::Session(Bundle bundle, std::unique_ptr<Backend> backend, const SessionConfig &config)
    : bundle_(std::move(bundle)), backend_(std::move(backend)) {
  validate(config);
  calibration_ = load_calibration(bundle_);
  init(config);
}

Session::Lock::Lock(Session &s) : s_(s) {
  if (s.owner_.load(std::memory_order_relaxed) == std::this_thread::get_id())
    fail(Code::Argument, "called back into a session from inside one of its own calls (an on_rows callback "
                         "must not call back into the session that called it; answer rows elsewhere)");
  s.mu_.lock();
  s.owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
}

Session::Lock::~Lock() {
  s_.owner_.store(std::thread::id(), std::memory_order_relaxed);
  s_.mu_.unlock();
}

void Session::init(const SessionConfig &config) {
  if (backend_->num_sections() != num_exits()) fail(Code::Internal, "backend and manifest disagree on the number of sections");
  answer_ = config.answer;
  criterion_ = config.criterion;
  max_batch_ = config.max_batch;
  device_name_ = backend_->device_name();
  std::optional<LatencyProfile> profile = load_profile(bundle_, device_name_);
  has_profile_ = profile.has_value();
  clock_ = config.clock;
  deadline_ = std::make_unique<DeadlinePolicy>(num_exits(), std::move(profile), config.latency_window,
                                               config.latency_quantile);
  prep_ = std::make_unique<Preprocessor>(bundle_.manifest);
  default_policy_ = ConfidencePolicy::build(num_exits(), NAN, false, nullptr, calibration_ ? &*calibration_ : nullptr,
                                            criterion_.c_str());
  warmup(config.warmup);
}

// Seeds the latency figures at 1 row and at max_batch rows (runtime/session.py _warmup): one untimed
// run of every section (and of the full graph), then `n` calls timed as live calls are (no budget, the default policy); every
// (section, rows) cell then keeps the lower median of its samples (rule 5). Counts in between borrow
// pessimistically (rule 3) until live calls measure them.
void Session::warmup(int n) {
  if (n <= 0) return;
  for (const int rows : std::set<int>{1, max_batch_}) {
    std::vector<float> x(static_cast<std::size_t>(rows) * static_cast<std::size_t>(prep_->image_size()), 0.0f);
    {
      Lock lock(*this);
      TensorPtr h = backend_->upload(x.data(), rows);
      if (backend_->has_full()) backend_->run_full(*h, logits_);
      for (int k = 1; k <= num_exits(); ++k) {
        TensorPtr next = backend_->run_section(k, *h, logits_);
        h = std::move(next);
      }
    }
    std::vector<RowResult> r(static_cast<std::size_t>(rows));
    // exit confidences asked for: the calls run the sections (the full graph would time none of them)
    std::vector<float> conf(static_cast<std::size_t>(rows) * static_cast<std::size_t>(num_exits()));
    for (int rep = 0; rep < n; ++rep) infer_f32(x.data(), rows, InferRequest{}, r.data(), nullptr, conf.data());
  }
  Lock lock(*this);
  deadline_->settle();
}

const ConfidencePolicy &Session::policy_for(const InferRequest &req, ConfidencePolicy &scratch) const {
  if (std::isnan(req.threshold) && !req.calibrated && !req.criterion && req.num_thresholds == 0) return default_policy_;
  scratch = ConfidencePolicy::build(num_exits(), req.threshold, req.calibrated, req.criterion,
                                    calibration_ ? &*calibration_ : nullptr, criterion_.c_str(), req.thresholds,
                                    req.num_thresholds);
  return scratch;
}

std::optional<double> Session::stop_at(double t0_s, const InferRequest &req) const {
  std::optional<double> d;
  if (!std::isnan(req.budget_ms)) {
    if (!(std::isfinite(req.budget_ms) && req.budget_ms > 0))
      fail(Code::Policy, "budget_ms must be a positive finite number of milliseconds (NAN = none), got " +
                             std::to_string(req.budget_ms));
    d = t0_s + rounded(req.budget_ms * 1e-3);
  }
  if (req.deadline_ns != 0) {
    if (req.deadline_ns < 0)
      fail(Code::Policy, "deadline_ns must be 0 (none) or a time on sdedge_now_ns()'s clock, got " + std::to_string(req.deadline_ns));
    const double dl = static_cast<double>(req.deadline_ns) * 1e-9;
    d = d ? std::min(*d, dl) : dl;
  }
  return d;
}

void Session::check_batch(std::int64_t batch) const {
  if (batch < 1) fail(Code::Argument, "empty batch: batch must be >= 1, got " + std::to_string(batch));
  if (batch > max_batch_)
    fail(Code::Argument, "batch of " + std::to_string(batch) + " images is larger than max_batch=" +
                             std::to_string(max_batch_) + "; split it or raise max_batch");
}

void Session::start_call(std::int64_t batch, const InferRequest &req, CallStart &call) const {
  call.t0 = clock();
  call.deadline = stop_at(call.t0, req);
  call.policy = &policy_for(req, call.scratch);
  check_batch(batch);
  call.row_thr = req.row_thresholds;
  call.on_rows = req.on_rows;
  call.on_rows_user = req.on_rows_user;
  if (req.row_deadlines_ns) {
    call.row_dl.resize(static_cast<std::size_t>(batch));
    for (std::int64_t i = 0; i < batch; ++i) {
      const std::int64_t ns = req.row_deadlines_ns[i];
      if (ns < 0)
        fail(Code::Policy, "row_deadlines_ns[" + std::to_string(i) + "] must be 0 (none) or a time on sdedge_now_ns()'s "
                           "clock, got " + std::to_string(ns));
      call.row_dl[static_cast<std::size_t>(i)] =
          ns == 0 ? std::numeric_limits<double>::infinity() : static_cast<double>(ns) * 1e-9;
    }
  }
  if (req.row_thresholds) {
    const std::size_t n = static_cast<std::size_t>(batch) * static_cast<std::size_t>(num_exits());
    for (std::size_t i = 0; i < n; ++i) {
      const float t = req.row_thresholds[i];
      if (!std::isnan(t) && !(t >= 0.0f && t <= 1.0f))
        fail(Code::Policy, "row_thresholds[" + std::to_string(i) + "] must be in [0, 1] or NAN (none), got " +
                               std::to_string(t));
    }
  }
}

void Session::infer_f32(const float *nchw, std::int64_t batch, const InferRequest &req, RowResult *results,
                        float *probabilities, float *exit_conf) {
  CallStart c;
  start_call(batch, req, c);
  prep_->check_finite(nchw, batch);
  infer_prepared(nchw, batch, c, (clock() - c.t0) * 1e3, results, probabilities, exit_conf);
}

void Session::infer_u8(const std::uint8_t *nhwc, std::int64_t batch, const InferRequest &req, RowResult *results,
                       float *probabilities, float *exit_conf) {
  CallStart c;
  start_call(batch, req, c);
  std::vector<float> x(static_cast<std::size_t>(batch * prep_->image_size()));
  prep_->from_u8(nhwc, batch, x.data());
  infer_prepared(x.data(), batch, c, (clock() - c.t0) * 1e3, results, probabilities, exit_conf);
}

void Session::infer_prepared(const float *nchw, std::int64_t batch, const CallStart &c, double prep_ms,
                             RowResult *results, float *probabilities, float *exit_conf) {
  Lock lock(*this);  // time spent waiting here counts against the deadline
  run(nchw, batch, c, prep_ms, results, probabilities, exit_conf);
}

void Session::rows_out_of_time(int next, const std::vector<std::int64_t> &rows, const std::vector<double> &row_dl,
                               const std::vector<char> &going, double now, std::vector<char> &late) {
  const std::size_t un = rows.size();
  late.assign(un, 0);
  std::vector<std::size_t> idx;
  std::int64_t n = 0;
  for (std::size_t i = 0; i < un; ++i) {
    if (!going[i]) continue;
    ++n;
    if (std::isfinite(row_dl[static_cast<std::size_t>(rows[i])])) idx.push_back(i);
  }
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
    return row_dl[static_cast<std::size_t>(rows[a])] < row_dl[static_cast<std::size_t>(rows[b])];
  });
  for (const std::size_t i : idx) {  // earliest deadline first; once one fits, every later one fits too
    if (!deadline_->should_stop(next, n, now, row_dl[static_cast<std::size_t>(rows[i])])) break;
    late[i] = 1;
    --n;
  }
}

void Session::run(const float *x, std::int64_t n_all, const CallStart &call, double prep_ms, RowResult *results,
                  float *probabilities, float *exit_conf) {
  const ConfidencePolicy &pol = *call.policy;
  const std::optional<double> d = call.deadline;
  const double t0 = call.t0;
  const float *row_thr = call.row_thr;
  const std::vector<double> &row_dl = call.row_dl;
  const double t1 = clock();
  const int K = num_exits();
  const std::int64_t C = num_classes();
  const auto nc = static_cast<std::size_t>(C);
  std::vector<float> out_probs(static_cast<std::size_t>(n_all) * nc), out_conf(static_cast<std::size_t>(n_all));
  std::vector<std::int32_t> out_exit(static_cast<std::size_t>(n_all)), out_why(static_cast<std::size_t>(n_all));
  const bool ensemble = answer_ == Answer::Ensemble;
  if (ensemble) acc_.assign(static_cast<std::size_t>(n_all) * nc, 0.0f);
  std::vector<std::int64_t> rows(static_cast<std::size_t>(n_all));
  std::iota(rows.begin(), rows.end(), 0);
  std::vector<char> stop, going, late;
  std::vector<std::int64_t> settled;
  double section_ms = 0.0;
  const bool row_mode = row_thr != nullptr || !row_dl.empty();
  const std::size_t image = static_cast<std::size_t>(prep_->image_size());
  auto check_finite_row = [&](std::size_t r) {
    for (std::size_t c = 0; c < nc; ++c) {
      if (std::isfinite(out_probs[r * nc + c])) continue;
      float peak = 0.0f;
      for (std::size_t j = 0; j < image; ++j) peak = std::max(peak, std::fabs(x[r * image + j]));
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.3g", static_cast<double>(peak));
      fail(Code::Input, "exit " + std::to_string(out_exit[r]) + " produced non-finite probabilities (NaN/Inf) for " +
                            (n_all == 1 ? std::string("the input") : "image " + std::to_string(r) + " of the batch") +
                            ": its preprocessed values reach |x| = " + buf +
                            ", which overflows the network; expected preprocessed values of order 1 (or send raw uint8 pixels)");
    }
  };
  auto write_row = [&](std::size_t r) {
    const float *p = out_probs.data() + r * nc;
    results[r].label = static_cast<std::int32_t>(std::max_element(p, p + nc) - p);
    results[r].exit_index = out_exit[r];
    results[r].confidence = out_conf[r];
    results[r].stopped_by = out_why[r];
    if (probabilities) std::copy(p, p + nc, probabilities + r * nc);
  };
  auto finalize = [&](std::size_t r, double t) {  // row mode: row r is answered at time t
    check_finite_row(r);
    write_row(r);
    results[r].latency_ms = (t - t0) * 1e3;
    results[r].deadline_met = std::isinf(row_dl.empty() ? INFINITY : row_dl[r]) ? -1 : (t <= row_dl[r] ? 1 : 0);
  };
  if (exit_conf) std::fill(exit_conf, exit_conf + n_all * K, std::numeric_limits<float>::quiet_NaN());

  TensorPtr h = backend_->upload(x, n_all);
  // No confidence stop before the deepest exit (nor a row threshold), answer "last", no exit confidences
  // wanted, and no deadline or an earliest deadline the whole network fits (rule 9): the deepest exit's answer
  // from full.onnx, without the intermediate exit heads. Without a deadline the latency figures learn nothing from it; under one it is timed into the
  // full graph's own cells.
  bool no_row_thr = true;  // row mode: no row has a threshold either
  for (std::int64_t i = 0; row_thr && no_row_thr && i < n_all * K; ++i) no_row_thr = std::isnan(row_thr[i]);
  std::optional<double> due = d;  // the earliest deadline of the call or of its rows
  for (const double r : row_dl)
    if (std::isfinite(r)) due = due ? std::min(*due, r) : r;
  const bool full = backend_->has_full() && no_row_thr && !ensemble && !exit_conf && !pol.stops_early() &&
                    (!due || deadline_->full_fits(n_all, clock(), *due));
  double full_ms = 0.0;
  if (full) {
    const double ts = clock();
    backend_->run_full(*h, logits_);
    if (due) {
      full_ms = (clock() - ts) * 1e3;
      deadline_->record_full(n_all, full_ms);
    }
    softmax_rows(logits_.data(), n_all, C, pol.temperatures[static_cast<std::size_t>(K - 1)], out_probs.data());
    for (std::size_t r = 0; r < static_cast<std::size_t>(n_all); ++r) {
      out_conf[r] = confidence_of(out_probs.data() + r * nc, C, pol.criterion);
      out_exit[r] = K;
      out_why[r] = kStopLast;
    }
    if (row_mode) {  // every row settles now, each against its own deadline
      const double t = clock();
      settled.resize(static_cast<std::size_t>(n_all));
      std::iota(settled.begin(), settled.end(), 0);
      for (const std::int64_t r : settled) finalize(static_cast<std::size_t>(r), t);
      if (call.on_rows) call.on_rows(call.on_rows_user, n_all, settled.data());
    }
  }
  for (int k = 1; !full && k <= K; ++k) {
    const auto n = static_cast<std::int64_t>(rows.size());
    const auto un = static_cast<std::size_t>(n);
    const std::optional<float> &thr = pol.thresholds32[static_cast<std::size_t>(k - 1)];
    bool any_thr = k < K && thr.has_value();
    if (row_thr && k < K) {  // per-row thresholds (ConfidencePolicy.step_rows): is there one among the rows running?
      any_thr = false;
      for (std::size_t i = 0; i < un && !any_thr; ++i)
        any_thr = !std::isnan(row_thr[static_cast<std::size_t>(rows[i]) * static_cast<std::size_t>(K) +
                                      static_cast<std::size_t>(k - 1)]);
    }
    // format version 2: the trunk alone, and the exit head only where its logits are needed (rule 8)
    const bool split = k < K && backend_->split_heads();
    const double ts = clock();
    TensorPtr next = split ? backend_->run_trunk(k, *h) : backend_->run_section(k, *h, logits_);
    const double dt = (clock() - ts) * 1e3;
    deadline_->record(k, n, dt);
    section_ms += dt;
    const double temp = pol.temperatures[static_cast<std::size_t>(k - 1)];

    // the answer's probabilities at this exit for the rows still running: softmax(z / T_k), or the
    // running mean of the exits' softmax under answer="ensemble"
    bool answered = false;
    auto answer = [&] {
      if (answered) return;
      answered = true;
      if (split) {  // the exit head, run now: its time goes to its own cell
        const double th = clock();
        backend_->run_head(k, *next, logits_);
        const double dth = (clock() - th) * 1e3;
        deadline_->record_head(k, n, dth);
        section_ms += dth;
      }
      answer_buf_.resize(un * nc);
      softmax_rows(logits_.data(), n, C, temp, answer_buf_.data());
      if (ensemble) {
        for (std::size_t i = 0; i < un; ++i) {
          float *acc = acc_.data() + static_cast<std::size_t>(rows[i]) * nc;
          float *ans = answer_buf_.data() + i * nc;
          for (std::size_t c = 0; c < nc; ++c) acc[c] += ans[c], ans[c] = acc[c] / static_cast<float>(k);
        }
      }
      if (exit_conf)  // every running row's answer confidence at this exit (InferenceResult.exit_confidences)
        for (std::size_t i = 0; i < un; ++i)
          exit_conf[static_cast<std::size_t>(rows[i]) * static_cast<std::size_t>(K) + static_cast<std::size_t>(k - 1)] =
              confidence_of(answer_buf_.data() + i * nc, C, pol.criterion);
    };
    if (!split || ensemble || exit_conf || any_thr) answer();
    auto settle = [&](const char *only, char want, std::int32_t why, bool have_conf) {
      settled.clear();
      for (std::size_t i = 0; i < un; ++i) {
        if (only && only[i] != want) continue;
        const auto r = static_cast<std::size_t>(rows[i]);
        const float *p = answer_buf_.data() + i * nc;
        std::copy(p, p + nc, out_probs.data() + r * nc);
        out_conf[r] = have_conf ? conf_buf_[i] : confidence_of(p, C, pol.criterion);
        out_exit[r] = k;
        out_why[r] = why;
        settled.push_back(rows[i]);
      }
      if (row_mode && !settled.empty()) {  // answered now: their latency and deadline as of this moment
        const double t = clock();
        for (const std::int64_t r : settled) finalize(static_cast<std::size_t>(r), t);
        if (call.on_rows) call.on_rows(call.on_rows_user, static_cast<std::int64_t>(settled.size()), settled.data());
      }
    };
    if (k == K) {
      settle(nullptr, 0, kStopLast, false);
      break;
    }
    std::int64_t n_stop = 0;
    if (any_thr) {  // a float32 confidence against the threshold rounded to float32 (ConfidencePolicy.step)
      conf_buf_.resize(un);
      stop.assign(un, 0);
      for (std::size_t i = 0; i < un; ++i) {
        conf_buf_[i] = confidence_of(answer_buf_.data() + i * nc, C, pol.criterion);
        const float t = row_thr ? row_thr[static_cast<std::size_t>(rows[i]) * static_cast<std::size_t>(K) +
                                          static_cast<std::size_t>(k - 1)]
                                : *thr;
        stop[i] = conf_buf_[i] >= t;  // NaN compares false: no stop
        n_stop += stop[i];
      }
      if (n_stop == n) {
        settle(nullptr, 0, kStopConfidence, true);
        break;
      }
    }
    if (!row_dl.empty()) {  // each row its own deadline: stop the rows the next section would overrun
      going.assign(un, 1);
      if (n_stop)
        for (std::size_t i = 0; i < un; ++i) going[i] = !stop[i];
      rows_out_of_time(k + 1, rows, row_dl, going, clock(), late);
      if (n_stop) settle(stop.data(), 1, kStopConfidence, true);
      if (std::find(late.begin(), late.end(), 1) != late.end()) {
        answer();
        settle(late.data(), 1, kStopDeadline, false);
      }
      std::vector<std::int64_t> keep, kept_rows;
      for (std::size_t i = 0; i < un; ++i)
        if (going[i] && !late[i]) keep.push_back(static_cast<std::int64_t>(i)), kept_rows.push_back(rows[i]);
      if (keep.empty()) break;
      if (keep.size() < un) {
        h = backend_->take_rows(*next, keep);
        rows = std::move(kept_rows);
      } else {
        h = std::move(next);
      }
      continue;
    }
    if (d && deadline_->should_stop(k + 1, n - n_stop, clock(), *d)) {
      answer();
      if (n_stop) {
        settle(stop.data(), 1, kStopConfidence, true);
        settle(stop.data(), 0, kStopDeadline, true);
      } else {
        settle(nullptr, 0, kStopDeadline, false);
      }
      break;
    }
    if (n_stop) {
      settle(stop.data(), 1, kStopConfidence, true);
      std::vector<std::int64_t> keep, kept_rows;
      for (std::size_t i = 0; i < un; ++i)
        if (!stop[i]) keep.push_back(static_cast<std::int64_t>(i)), kept_rows.push_back(rows[i]);
      h = backend_->take_rows(*next, keep);
      rows = std::move(kept_rows);
    } else {
      h = std::move(next);
    }
  }

  if (!row_mode) {
    for (std::size_t r = 0; r < static_cast<std::size_t>(n_all); ++r) check_finite_row(r);
    for (std::size_t r = 0; r < static_cast<std::size_t>(n_all); ++r) write_row(r);
  }
  const double t_end = clock();
  if (!full) deadline_->record(0, n_all, prep_ms + rounded((t_end - t1) * 1e3) - section_ms);
  else if (due) deadline_->record(0, n_all, prep_ms + rounded((t_end - t1) * 1e3) - full_ms);
  if (row_mode) return;  // every row was answered as it settled
  const double latency = (t_end - t0) * 1e3;
  const std::int32_t met = d ? (t_end <= *d ? 1 : 0) : -1;
  for (std::size_t r = 0; r < static_cast<std::size_t>(n_all); ++r) {
    results[r].latency_ms = latency;
    results[r].deadline_met = met;
  }
}

double Session::section_cost_ms(int section, std::int64_t rows) {
  if (section < 0 || section > num_exits())
    fail(Code::Argument, "section must be 0 (the per-call overhead) or 1.." + std::to_string(num_exits()) + ", got " +
                             std::to_string(section));
  if (rows < 1) fail(Code::Argument, "rows must be >= 1, got " + std::to_string(rows));
  Lock lock(*this);
  return section == 0 ? deadline_->overhead_ms(rows) : deadline_->section_cost_ms(section, rows);
}

void Session::infer_all_exits(const float *nchw, std::int64_t batch, float *logits) {
  if (batch < 1) fail(Code::Argument, "empty batch: batch must be >= 1, got " + std::to_string(batch));
  const std::int64_t image = prep_->image_size(), C = num_classes(), K = num_exits();
  if (batch > std::numeric_limits<std::int64_t>::max() / std::max(image, K * C))
    fail(Code::Argument, "batch of " + std::to_string(batch) + " images is too large");
  prep_->check_finite(nchw, batch);
  Lock lock(*this);
  for (std::int64_t off = 0; off < batch; off += max_batch_) {
    const std::int64_t m = std::min<std::int64_t>(max_batch_, batch - off);
    TensorPtr h = backend_->upload(nchw + off * image, m);
    for (int k = 1; k <= K; ++k) {
      TensorPtr next = backend_->run_section(k, *h, logits_);
      std::copy(logits_.begin(), logits_.begin() + m * C, logits + ((k - 1) * batch + off) * C);
      h = std::move(next);
    }
  }
}

}  // namespace sdedge
