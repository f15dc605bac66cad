// unit_deadline.cpp: the deadline rule of the C++ core against the Python one (runtime/policies.py rules 1-8).
//
// 1. Replays native/tests/vectors/deadline_trace.json (written by deadline_vectors.py from the Python classes):
//    every should_stop decision, figure, sample count and trim interval must be equal, bit for bit.
// 2. The estimator tests of tests/test_policies.py (quantile and window, exact row counts borrowing
//    pessimistically, the warm-up median, profile vs online, trims and their backoff, stops the profile
//    causes), same numbers.
// 3. The session scenarios of tests/test_deadline_policy.py (issue 12 item 4 a-d, the mid-range budgets of
//    issue 17 item 1) on a scripted backend that advances a scripted session clock by scripted section
//    times, so the runtime's own time is exactly 0: same section times, same budgets, same expected exits.
// 4. Replays the Python session trace of the same file: the same section times consumed in the same order
//    must give every call the same exits, stop reasons, deadline_met and latency (equal doubles).
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "check.h"
#include "deadline.hpp"
#include "errors.hpp"
#include "json_util.hpp"
#include "session.hpp"

using namespace sdedge;

namespace {

bool near(double a, double b, double rel = 1e-9) { return std::fabs(a - b) <= rel * std::max(1.0, std::fabs(b)); }
bool near(std::optional<double> a, double b) { return a && near(*a, b); }

// ---- 1. the Python traces -------------------------------------------------------------------------------

bool same(const std::optional<double> &got, const Json &want) {
  return want.is_null() ? !got : (got && *got == want.get<double>());
}

void replay_traces() {
  const std::string path = std::string(SDEDGE_SOURCE_DIR) + "/tests/vectors/deadline_trace.json";
  const Json doc = read_json_file(path);
  CHECK(doc.at("format") == "sdedge-deadline-trace");
  std::size_t checked = 0;
  for (const Json &t : doc.at("traces")) {
    const int K = t.at("num_sections").get<int>();
    std::optional<LatencyProfile> prof;
    if (!t.at("profile").is_null()) prof = parse_profile(t.at("profile"), K, "trace profile");
    DeadlinePolicy pol(K, prof, t.at("window").get<std::size_t>(), t.at("quantile").get<double>());
    const LatencyEstimator &est = pol.estimator();
    const std::string name = t.at("name").get<std::string>();
    std::size_t i = 0, bad = 0;
    // the cell's figure, count and interval after an operation: [.., est, count, interval] at `at`
    auto cell_matches = [&](const Json &op, std::size_t at, int s, std::int64_t n) {
      const LatencyCell *c = est.cell(s, n);
      return same(est.estimate(s, n), op[at]) && est.count(s, n) == op[at + 1].get<std::size_t>() &&
             (op[at + 2].is_null() ? c == nullptr : (c && c->interval() == op[at + 2].get<std::int64_t>()));
    };
    for (const Json &op : t.at("ops")) {
      const std::string kind = op[0].get<std::string>();
      bool ok = true;
      if (kind == "settle") {
        pol.settle();
      } else {
        const int s = op[1].get<int>();
        const auto n = op[2].get<std::int64_t>();
        if (kind == "r") {
          pol.record(s, n, op[3].get<double>());
          ok = cell_matches(op, 4, s, n);
        } else if (kind == "h") {  // an exit head timed apart (rule 8)
          pol.record_head(s, n, op[3].get<double>());
          ok = cell_matches(op, 4, s, n);
        } else if (kind == "q") {
          ok = pol.should_stop(s, n, op[3].get<double>(), op[4].get<double>()) == op[5].get<bool>() &&
               cell_matches(op, 6, s, n);
        } else if (kind == "x") {
          ok = cell_matches(op, 3, s, n) && pol.overhead_ms(n) == op[7].get<double>() &&
               (s == 0 || pol.section_cost_ms(s, n) == op[6].get<double>());
        } else {
          ok = false;
        }
      }
      if (!ok && bad++ < 5) fprintf(stderr, "trace '%s', operation %zu differs from Python: %s\n", name.c_str(), i, op.dump().c_str());
      ++i;
    }
    CHECK(bad == 0);
    checked += i;
  }
  CHECK(checked > 5000);
  printf("unit_deadline: %zu traced operations replayed\n", checked);
}

// ---- 2. the estimator (tests/test_policies.py) ---------------------------------------------------------

LatencyProfile profile_of(std::vector<double> ms, double overhead = 0.01) {  // _profile_dict: batches 1 and 8
  LatencyProfile p;
  p.device = "dev-x";
  for (double m : ms) {
    p.sections[1].push_back(SectionQuantiles{m, m, m, m});
    p.sections[8].push_back(SectionQuantiles{4 * m, 4 * m, 4 * m, 4 * m});
  }
  p.decision_overhead_ms = overhead;
  return p;
}

template <class F>
bool throws(F f, Code code, const char *needle) {
  try {
    f();
  } catch (const Error &e) {
    return e.code() == code && std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

void estimator_tests() {
  {  // high quantile and window; one slow run is felt at once
    LatencyEstimator est(2, 100, 0.95);
    CHECK(!est.estimate(1, 1));
    for (int v = 100; v > 0; --v) est.record(1, 1, v);
    CHECK(near(est.estimate(1, 1), 96.0));
    for (int i = 0; i < 100; ++i) est.record(1, 1, 2.0);
    CHECK(near(est.estimate(1, 1), 2.0));
    est.record(1, 1, 50.0);
    CHECK(near(est.estimate(1, 1), 50.0));
    est.record(1, 1, 2.0);
    CHECK(near(est.estimate(1, 1), 50.0));
    est.record(1, 1, 2.0);
    CHECK(near(est.estimate(1, 1), 2.0));
    for (int i = 0; i < 5; ++i) est.record(1, 1, 50.0);
    CHECK(near(est.estimate(1, 1), 50.0));
  }
  {  // exact row counts; unmeasured ones borrow pessimistically (no power-of-two buckets)
    LatencyEstimator est(1, 16, 0.99);
    for (int i = 0; i < 5; ++i) est.record(1, 4, 8.0);
    CHECK(near(est.estimate(1, 3), 8.0) && near(est.estimate(1, 1), 8.0));
    CHECK(near(est.estimate(1, 16), 32.0));
    est.record(1, 8, 10.0);
    CHECK(near(est.estimate(1, 5), 10.0) && near(est.estimate(1, 6), 10.0));
    est.record(1, 2, 2.0);
    CHECK(near(est.estimate(1, 3), 3.0));
    CHECK(near(est.estimate(1, 8), 10.0) && est.count(1, 8) == 1 && est.count(1, 5) == 0);
    CHECK(!est.estimate(0, 1));
  }
  {  // the warm-up settles on the lower median
    LatencyEstimator est(2, 16);
    for (double ms : {2.0, 5.4, 2.1}) est.record(2, 1, ms);
    est.record(0, 1, 0.03);
    est.settle();
    CHECK(near(est.estimate(2, 1), 2.1) && est.count(2, 1) == 1 && near(est.estimate(0, 1), 0.03));
    est.reset(2);
    CHECK(!est.estimate(2, 1) && near(est.estimate(0, 1), 0.03));
    est.reset();
    CHECK(!est.estimate(0, 1));
  }
  {  // the larger of profile and online; the overhead
    DeadlinePolicy pol(3, profile_of({1.0, 2.0, 3.0}), 16);
    CHECK(near(pol.section_cost_ms(2, 1), 2.0));
    CHECK(near(pol.section_cost_ms(2, 5), 8.0) && near(pol.section_cost_ms(2, 16), 16.0));  // profile lookup
    for (int i = 0; i < 5; ++i) pol.record(2, 1, 5.0);
    CHECK(near(pol.section_cost_ms(2, 1), 5.0));
    CHECK(DeadlinePolicy(3, std::nullopt, 16).section_cost_ms(3, 1) == 0.0);
    LatencyProfile p = profile_of({1.0, 2.0, 3.0});
    p.fixed_per_call_ms = 0.02;
    CHECK(near(DeadlinePolicy(3, p).overhead_ms(1), 0.03));
    const double now = 100.0;
    CHECK(!pol.should_stop(2, 1, now, now + 0.006) && pol.should_stop(2, 1, now, now + 0.004));
  }
  {  // rule 6: the prior is the profile's p90, not its p99 (policies.PROFILE_PRIOR_QUANTILE)
    LatencyProfile p;
    p.device = "dev-x";
    p.sections[1].push_back(SectionQuantiles{0.5, 1.0, 9.0, 0.6});
    DeadlinePolicy pol(1, p, 16);
    CHECK(near(pol.section_cost_ms(1, 1), 1.0));
    CHECK(!pol.should_stop(1, 1, 100.0, 100.002) && pol.should_stop(1, 1, 100.0, 100.0009));
  }
  {  // never forgotten; comes down by trimming after kProbeFirst charged stops
    DeadlinePolicy pol(2, std::nullopt, 16);
    const LatencyEstimator &est = pol.estimator();
    for (double ms : {1.0, 1.1, 1.0, 9.0, 1.2, 1.0}) pol.record(2, 1, ms);
    CHECK(near(est.estimate(2, 1), 9.0));
    const double now = 100.0, deadline = 100.005;
    for (int i = 0; i < kProbeFirst - 1; ++i) CHECK(pol.should_stop(2, 1, now, deadline));
    CHECK(near(est.estimate(2, 1), 9.0));
    CHECK(pol.should_stop(2, 1, now, deadline));
    CHECK(near(est.estimate(2, 1), 1.2) && est.count(2, 1) == 5);
    CHECK(!pol.should_stop(2, 1, now, deadline));
    pol.record(2, 1, 1.1);
    CHECK(est.cell(2, 1)->interval() == kProbeFirst);
  }
  {  // a persistent slowdown backs off the trims: 16 late calls in 20 000
    DeadlinePolicy pol(2, std::nullopt, 16);
    pol.record(2, 1, 1.0);
    pol.record(2, 1, 1.0);
    int runs = 0;
    for (int i = 0; i < 20000; ++i) {
      if (pol.should_stop(2, 1, 100.0, 100.005)) continue;
      ++runs;
      pol.record(2, 1, 9.0);
    }
    CHECK(kProbeMax == 2048 && runs == 1 + 8 + 7);
    CHECK(pol.estimator().cell(2, 1)->interval() == kProbeMax);
  }
  {  // a trim removes the oldest of equal largest samples (what is left is evicted in Python's order)
    DeadlinePolicy pol(2, std::nullopt, 8);
    for (double ms : {9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0}) pol.record(2, 1, ms);
    for (int i = 0; i < kProbeFirst; ++i) CHECK(pol.should_stop(2, 1, 100.0, 100.005));
    CHECK(pol.estimator().count(2, 1) == 7 && near(pol.estimator().estimate(2, 1), 9.0));
    pol.record(2, 1, 1.0);
    pol.record(2, 1, 1.0);  // evicts the first 1.0, not the remaining 9.0 (the newer of the two)
    CHECK(near(pol.estimator().estimate(2, 1), 9.0));
  }
  {  // a trim the next run proves wrong doubles the interval; one it proves right resets it
    DeadlinePolicy pol(2, std::nullopt, 16);
    for (double ms : {1.0, 1.0, 9.0}) pol.record(2, 1, ms);
    for (int i = 0; i < kProbeFirst; ++i) pol.should_stop(2, 1, 100.0, 100.005);
    const LatencyCell *c = pol.estimator().cell(2, 1);
    CHECK(near(pol.estimator().estimate(2, 1), 1.0) && c->interval() == kProbeFirst);
    pol.record(2, 1, 9.0);
    CHECK(c->interval() == 2 * kProbeFirst);
    int stops = 0;
    while (pol.should_stop(2, 1, 100.0, 100.005) && stops < 1000) ++stops;
    CHECK(stops == 2 * kProbeFirst && near(pol.estimator().estimate(2, 1), 1.0));
    pol.record(2, 1, 1.0);
    CHECK(c->interval() == kProbeFirst);
  }
  {  // a stop the profile causes is not charged to the online figure
    DeadlinePolicy pol(3, profile_of({1.0, 8.0, 3.0}), 16);
    for (double ms : {1.0, 9.0}) pol.record(2, 1, ms);
    for (int i = 0; i < 10 * kProbeFirst; ++i) CHECK(pol.should_stop(2, 1, 100.0, 100.005));
    CHECK(pol.estimator().count(2, 1) == 2 && near(pol.estimator().estimate(2, 1), 9.0));
  }
  // the settings are checked
  CHECK(throws([] { LatencyEstimator(2, 256, 0.2); }, Code::Policy, "quantile"));
  CHECK(throws([] { LatencyEstimator(2, 256, NAN); }, Code::Policy, "quantile"));
  CHECK(throws([] { LatencyEstimator(2, 4); }, Code::Policy, "window"));
}

// ---- 3. the session on a scripted backend and clock (tests/test_deadline_policy.py) ----------------------

constexpr int K = 3;
constexpr double kBaseMs[K] = {1.0, 2.0, 3.0};
const char *const kDevice = "scripted-dev";

double linear_ms(int k, std::int64_t rows) { return kBaseMs[k - 1] * static_cast<double>(1 + rows) / 2; }

struct FakeClock {
  double t = 1000.0;
  void advance_ms(double ms) { t += rounded(ms * 1e-3); }
};

struct RowsTensor : DeviceTensor {
  std::int64_t rows = 0;
};

TensorPtr rows_tensor(std::int64_t rows) {
  auto t = std::make_unique<RowsTensor>();
  t->rows = rows;
  return t;
}

// Runs no model: each section advances the clock by ms(section, rows), or by the next value queued in
// queue[section - 1]; logits are all zero (two classes).
struct ScriptedBackend : Backend {
  FakeClock *clock;
  std::function<double(int, std::int64_t)> ms = linear_ms;
  std::deque<double> queue[K];

  explicit ScriptedBackend(FakeClock *c) : clock(c) {}
  std::string name() const override { return "scripted"; }
  std::string device_name() const override { return kDevice; }
  int num_sections() const override { return K; }
  TensorPtr upload(const float *, std::int64_t rows) override { return rows_tensor(rows); }
  TensorPtr run_section(int k, const DeviceTensor &in, std::vector<float> &logits) override {
    const std::int64_t rows = static_cast<const RowsTensor &>(in).rows;
    auto &q = queue[k - 1];
    if (q.empty()) {
      clock->advance_ms(ms(k, rows));
    } else {
      clock->advance_ms(q.front());
      q.pop_front();
    }
    logits.assign(static_cast<std::size_t>(rows * 2), 0.0f);
    return k == K ? nullptr : rows_tensor(rows);
  }
  TensorPtr take_rows(const DeviceTensor &, const std::vector<std::int64_t> &keep) override {
    return rows_tensor(static_cast<std::int64_t>(keep.size()));
  }
};

// A folder holding profiles/scripted-dev.json, removed when it goes.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/sdedge-deadline-XXXXXX";
    if (::mkdtemp(tmpl)) path = tmpl;
  }
  ~TempDir() {
    if (path.empty()) return;
    std::remove((path + "/profiles/" + kDevice + ".json").c_str());
    ::rmdir((path + "/profiles").c_str());
    ::rmdir(path.c_str());
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
};

// K sections on [1, 4, 4] inputs, two classes; with `profile_dir`, profiles/scripted-dev.json in it.
Bundle scripted_bundle(const std::string &profile_dir = "") {
  Bundle b;
  b.path = profile_dir.empty() ? "/nonexistent-scripted-bundle" : profile_dir;
  Manifest &m = b.manifest;
  m.format_version = 1;
  m.input = {"image", {-1, 1, 4, 4}, "float32"};
  m.preprocess = {1.0, {0.0}, {1.0}, "L"};
  m.classes = {"a", "b"};
  for (int k = 1; k <= K; ++k) {
    SectionSpec s;
    s.index = k;
    s.file = "sections/s" + std::to_string(k) + ".onnx";
    s.logits = {logits_name(k), {-1, 2}, "float32"};
    m.sections.push_back(s);
  }
  if (!profile_dir.empty()) m.files.emplace_back(std::string("profiles/") + kDevice + ".json", std::string(64, '0'));
  return b;
}

// make_profile(DEVICE, ..., {b: [[linear_ms(k, b)] * 5 ...] for b in (1, 4)}, 0.0, 5): every quantile exact
void write_profile(const std::string &dir) {
  Json batches = Json::object();
  for (int b : {1, 4}) {
    Json secs = Json::array();
    for (int k = 1; k <= K; ++k) {
      const double v = linear_ms(k, b);
      secs.push_back({{"index", k}, {"p50_ms", v}, {"p90_ms", v}, {"p99_ms", v}, {"mean_ms", v}});
    }
    batches[std::to_string(b)] = {{"sections", secs}};
  }
  const Json doc = {{"format", "sdedge-profile"}, {"format_version", 1}, {"device", kDevice}, {"backend", "scripted"},
                    {"precision", "fp32"}, {"threads", 1}, {"batch_sizes", batches}, {"decision_overhead_ms", 0.0},
                    {"runs", 5}};
  ::mkdir((dir + "/profiles").c_str(), 0700);
  std::ofstream(dir + "/profiles/" + kDevice + ".json") << doc.dump();
}

struct Scripted {
  FakeClock clock;
  ScriptedBackend *be = nullptr;
  std::unique_ptr<Session> s;

  explicit Scripted(int warmup = 3, int max_batch = 1, const std::string &profile_dir = "",
                    const std::function<void(ScriptedBackend &)> &before = nullptr) {
    auto b = std::make_unique<ScriptedBackend>(&clock);
    be = b.get();
    if (before) before(*be);
    SessionConfig cfg;
    cfg.warmup = warmup;
    cfg.max_batch = max_batch;
    cfg.clock = [this] { return clock.t; };
    s = std::make_unique<Session>(scripted_bundle(profile_dir), std::move(b), cfg);
  }
  Scripted(const Scripted &) = delete;  // the session's clock points at this object
  Scripted &operator=(const Scripted &) = delete;
  // One call of `rows` rows under `budget_ms`, `gap_ms` after the previous one; its first result.
  RowResult call(std::int64_t rows, double budget_ms, double gap_ms = 1.0) {
    clock.advance_ms(gap_ms);
    std::vector<float> x(static_cast<std::size_t>(rows * 16), 0.0f);
    std::vector<RowResult> r(static_cast<std::size_t>(rows));
    InferRequest req;
    req.budget_ms = budget_ms;
    s->infer_f32(x.data(), rows, req, r.data(), nullptr);
    return r[0];
  }
  const LatencyEstimator &est() const { return s->estimator(); }
};

int deepest_that_fits(std::int64_t rows, double budget_ms) {
  double total = 0.0;
  int best = 1;
  for (int k = 1; k <= K; ++k) {
    total += linear_ms(k, rows);
    if (total <= budget_ms) best = k;
  }
  return best;
}

double total_ms(std::int64_t rows, int upto) {
  double t = 0.0;
  for (int k = 1; k <= upto; ++k) t += linear_ms(k, rows);
  return t;
}

std::vector<double> mid_range_budgets(std::int64_t rows) {
  std::vector<double> cum(K), out;
  for (int k = 1; k <= K; ++k) cum[static_cast<std::size_t>(k - 1)] = (k > 1 ? cum[static_cast<std::size_t>(k - 2)] : 0.0) + linear_ms(k, rows);
  for (std::size_t i = 0; i + 1 < cum.size(); ++i)
    for (double f : {0.25, 0.75}) out.push_back(cum[i] + f * (cum[i + 1] - cum[i]));
  out.push_back(cum.back() * 1.25);
  return out;
}

void session_tests() {
  // issue 17 item 1: the deepest exit that fits at mid-range budgets (should_stop sees the current time)
  for (const bool from_profile : {false, true}) {
    for (const std::int64_t rows : {1, 4}) {
      TempDir dir;
      if (from_profile) write_profile(dir.path);
      Scripted t(from_profile ? 0 : 3, 4, from_profile ? dir.path : "");
      CHECK(t.s->has_profile() == from_profile);
      CHECK(near(t.s->deadline_policy().section_cost_ms(2, rows), linear_ms(2, rows)));
      for (double budget : mid_range_budgets(rows)) {
        const RowResult r = t.call(rows, budget);
        const int want = deepest_that_fits(rows, budget);
        CHECK(r.exit_index == want && r.deadline_met == 1);
        CHECK(r.stopped_by == (want == K ? kStopLast : kStopDeadline));
        CHECK(near(r.latency_ms, total_ms(rows, want), 1e-6));
        if (r.exit_index != want) fprintf(stderr, "  profile=%d rows=%lld budget=%g: exit %d, want %d\n", from_profile, static_cast<long long>(rows), budget, r.exit_index, want);
      }
    }
  }
  {  // a budget below exit 1 still answers at exit 1
    Scripted t;
    const RowResult r = t.call(1, 0.5);
    CHECK(r.exit_index == 1 && r.stopped_by == kStopDeadline && r.deadline_met == 0);
  }
  // a: figures survive an idle minute and sections the budget skips
  for (const bool idle : {true, false}) {
    Scripted t;
    std::vector<RowResult> rs;
    for (int i = 0; i < 10; ++i) rs.push_back(t.call(1, 4.5));
    if (idle) {
      t.clock.advance_ms(65000);
      for (int i = 0; i < 5; ++i) rs.push_back(t.call(1, 4.5));
    } else {
      for (int i = 0; i < 260; ++i) rs.push_back(t.call(1, 4.5, 500));
    }
    bool all = true;
    for (const auto &r : rs) all = all && r.exit_index == 2 && r.deadline_met == 1;
    CHECK(all);
  }
  {  // b: one pre-empted warm-up run does not count
    Scripted t(3, 1, "", [](ScriptedBackend &be) { be.queue[1] = {2.0, 2.0, 5.4, 2.0}; });
    bool all = true;
    for (int i = 0; i < 300; ++i) all = all && t.call(1, 4.5).exit_index == 2;
    CHECK(all);
  }
  {  // b: a live outlier is forgiven; a persistent slowdown costs few late calls
    Scripted t;
    bool all = true;
    for (int i = 0; i < 50; ++i) all = all && t.call(1, 4.5).exit_index == 2;
    CHECK(all);
    t.be->queue[1] = {5.4};
    const RowResult first = t.call(1, 4.5);
    CHECK(first.exit_index == 2 && first.deadline_met == 0);
    bool met = true, back = true;
    for (int i = 0; i < 60; ++i) {
      const RowResult r = t.call(1, 4.5);
      met = met && r.deadline_met == 1;
      if (i >= 20) back = back && r.exit_index == 2;
    }
    CHECK(met && back);
    t.be->queue[1].assign(10000, 5.4);
    int late = 0;
    bool tail_exit1 = true;
    for (int i = 0; i < 1000; ++i) {
      const RowResult r = t.call(1, 4.5);
      late += r.deadline_met == 0;
      if (i >= 900) tail_exit1 = tail_exit1 && r.exit_index == 1;
    }
    CHECK(late >= 1 && late <= 8 && tail_exit1);
    t.be->queue[1].clear();
    met = true, back = true;
    for (int i = 0; i < 1500; ++i) {
      const RowResult r = t.call(1, 4.5);
      met = met && r.deadline_met == 1;
      if (i >= 1200) back = back && r.exit_index == 2;
    }
    CHECK(met && back);
    printf("unit_deadline: persistent slowdown: %d late calls in 1000\n", late);
  }
  {  // c: 8-row calls are not judged by 5-row timings
    Scripted t(3, 8);
    bool all = true;
    for (int i = 0; i < 200; ++i) all = all && t.call(5, 1e6).exit_index == K;
    CHECK(all);
    for (double budget : mid_range_budgets(8)) {
      const RowResult r = t.call(8, budget);
      CHECK(r.exit_index == deepest_that_fits(8, budget) && r.deadline_met == 1);
    }
  }
  {  // c: a row count never measured is judged pessimistically
    Scripted t(3, 8);
    CHECK(t.est().count(2, 6) == 0 && t.est().count(2, 4) == 0);
    CHECK(t.est().count(2, 1) == 1 && t.est().count(2, 8) == 1);
    for (int k = 1; k <= K; ++k) CHECK(t.s->deadline_policy().section_cost_ms(k, 6) >= linear_ms(k, 6));
    for (double budget : mid_range_budgets(6)) {
      const RowResult r = t.call(6, budget);
      CHECK(r.deadline_met == 1 && r.exit_index <= deepest_that_fits(6, budget));
    }
  }
  {  // d: a slowdown is felt after one late call
    Scripted t;
    bool all = true;
    for (int i = 0; i < 300; ++i) all = all && t.call(1, 5.5).exit_index == 2;
    CHECK(all);
    t.be->ms = [](int k, std::int64_t rows) { return 3 * linear_ms(k, rows); };
    int late = 0;
    bool rest = true;
    for (int i = 0; i < 17; ++i) {
      const RowResult r = t.call(1, 5.5);
      late += r.deadline_met == 0;
      if (i > 0) rest = rest && r.exit_index == 1 && r.deadline_met == 1;
    }
    CHECK(late == 1 && rest);
  }
  {  // the session clock times sections and deadlines (deadline_ns is read on it)
    Scripted t(1);
    const double now = t.clock.t;
    InferRequest req;
    req.deadline_ns = std::llround((now + 3.5e-3) * 1e9);
    std::vector<float> x(16, 0.0f);
    RowResult r;
    t.s->infer_f32(x.data(), 1, req, &r, nullptr);
    CHECK(r.exit_index == 2 && r.deadline_met == 1 && near(r.latency_ms, 3.0, 1e-6));
    CHECK(t.est().count(1, 1) == 2 && near(t.est().estimate(3, 1), 3.0));
  }
  {  // the warm-up runs at 1 and max_batch rows only, and settles every cell to one sample
    Scripted t(3, 8);
    for (int k = 0; k <= K; ++k)
      for (std::int64_t n = 1; n <= 8; ++n) CHECK(t.est().count(k, n) == (n == 1 || n == 8 ? 1u : 0u));
    CHECK(near(t.est().estimate(3, 8), linear_ms(3, 8)) && near(t.est().estimate(0, 8), 0.0));
  }
  // the latency settings reach the estimator and are checked
  CHECK(throws([] {
    FakeClock c;
    SessionConfig cfg;
    cfg.latency_window = 4;
    Session s(scripted_bundle(), std::make_unique<ScriptedBackend>(&c), cfg);
  }, Code::Argument, "latency_window"));
}

// ---- 4. the Python session trace: the same section times in the same order give the same calls -----------

struct IdsTensor : DeviceTensor {
  std::vector<std::int64_t> ids;
};

// Handles carry the row ids (each row's first input value); section times come from the trace, in the
// order Python's backend consumed them; row r is sure ([5, 0]) from exit stop_at[r] on (0: never).
struct TraceBackend : Backend {
  FakeClock *clock;
  std::vector<double> times;
  std::size_t next_time = 0;
  std::vector<int> stop_at;

  explicit TraceBackend(FakeClock *c) : clock(c) {}
  std::string name() const override { return "scripted"; }
  std::string device_name() const override { return "trace-dev"; }
  int num_sections() const override { return K; }
  TensorPtr upload(const float *x, std::int64_t rows) override {
    auto t = std::make_unique<IdsTensor>();
    for (std::int64_t r = 0; r < rows; ++r) t->ids.push_back(static_cast<std::int64_t>(x[r * 16]));
    return t;
  }
  TensorPtr run_section(int k, const DeviceTensor &in, std::vector<float> &logits) override {
    const auto &t = static_cast<const IdsTensor &>(in);
    if (next_time >= times.size()) fail(Code::Internal, "the C++ session ran more sections than Python did");
    clock->advance_ms(times[next_time++]);
    logits.clear();
    for (std::int64_t id : t.ids) {
      const int at = stop_at.empty() ? 0 : stop_at[static_cast<std::size_t>(id)];
      logits.push_back(at >= 1 && at <= k ? 5.0f : 0.0f);
      logits.push_back(0.0f);
    }
    if (k == K) return nullptr;
    auto f = std::make_unique<IdsTensor>();
    f->ids = t.ids;
    return f;
  }
  TensorPtr take_rows(const DeviceTensor &in, const std::vector<std::int64_t> &keep) override {
    const auto &t = static_cast<const IdsTensor &>(in);
    auto f = std::make_unique<IdsTensor>();
    for (auto i : keep) f->ids.push_back(t.ids[static_cast<std::size_t>(i)]);
    return f;
  }
};

void replay_session_trace() {
  const Json doc = read_json_file(std::string(SDEDGE_SOURCE_DIR) + "/tests/vectors/deadline_trace.json");
  const Json &tr = doc.at("session");
  FakeClock clock;
  auto b = std::make_unique<TraceBackend>(&clock);
  TraceBackend *be = b.get();
  be->times = tr.at("times").get<std::vector<double>>();
  SessionConfig cfg;
  cfg.warmup = tr.at("warmup").get<int>();
  cfg.max_batch = tr.at("max_batch").get<int>();
  cfg.clock = [&clock] { return clock.t; };
  Session s(scripted_bundle(), std::move(b), cfg);
  std::size_t i = 0, bad = 0;
  for (const Json &c : tr.at("calls")) {
    const auto rows = c[0].get<std::int64_t>();
    InferRequest req;
    req.budget_ms = c[2].get<double>();
    if (!c[3].is_null()) req.threshold = c[3].get<double>();
    be->stop_at = c[4].get<std::vector<int>>();
    std::vector<float> x(static_cast<std::size_t>(rows * 16), 0.0f);
    for (std::int64_t r = 0; r < rows; ++r) x[static_cast<std::size_t>(r * 16)] = static_cast<float>(r);
    std::vector<RowResult> res(static_cast<std::size_t>(rows));
    clock.advance_ms(c[1].get<double>());
    s.infer_f32(x.data(), rows, req, res.data(), nullptr);
    bool ok = res[0].latency_ms == c[6].get<double>();
    for (std::size_t r = 0; r < res.size(); ++r) {
      const Json &w = c[5][r];
      ok = ok && res[r].exit_index == w[0].get<int>() && res[r].deadline_met == w[1].get<int>() &&
           res[r].stopped_by == w[2].get<int>();
    }
    if (!ok && bad++ < 5) {
      fprintf(stderr, "session trace: call %zu differs from Python: %s; C++ row 0: exit %d met %d why %d latency %.17g\n", i,
              c.dump().c_str(), res[0].exit_index, res[0].deadline_met, res[0].stopped_by, res[0].latency_ms);
    }
    ++i;
  }
  CHECK(bad == 0 && be->next_time == be->times.size());
  for (const Json &c : tr.at("cells")) {
    const int k = c[0].get<int>();
    const auto n = c[1].get<std::int64_t>();
    CHECK(same(s.estimator().estimate(k, n), c[2]) && s.estimator().count(k, n) == c[3].get<std::size_t>());
  }
  printf("unit_deadline: %zu session calls replayed (%zu section runs)\n", i, be->next_time);
}

}  // namespace

int main() {
  try {
    replay_traces();
    replay_session_trace();
    estimator_tests();
    session_tests();
  } catch (const std::exception &e) {
    fprintf(stderr, "unexpected exception: %s\n", e.what());
    return 1;
  }
  printf("unit_deadline: %s\n", check_failures ? "FAILED" : "ok");
  return TEST_RESULT();
}
