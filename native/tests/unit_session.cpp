// unit_session.cpp: the session's decision loop on a scripted backend (no ONNX Runtime): per-row early exit
// with the batch shrinking and results in input order, stop reasons, float32 threshold rounding, answer
// modes, deadlines against scripted (slept) section times; the confidence criteria; a first check of the
// deadline rule (unit_deadline.cpp has the rest); uint8 NHWC preprocessing of a 3-channel input.
#include <time.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "confidence.hpp"
#include "deadline.hpp"
#include "errors.hpp"
#include "preprocess.hpp"
#include "session.hpp"

using namespace sdedge;

namespace {

constexpr int kK = 3, kC = 4;

// Row r's logits at exit k: table[k-1][r]. The input's first value of each row is the row's id; the
// features carry it on, so the backend knows which original row it sees after the batch shrank.
struct FakeTensor : DeviceTensor {
  std::vector<float> ids;
};

struct FakeBackend : Backend {
  std::vector<std::vector<std::vector<float>>> table;  // [exit][row][class]
  std::vector<double> sleep_ms = {0, 0, 0};
  std::vector<std::vector<int>> seen;  // the row ids each run_section call saw
  std::int64_t image = 1;
  bool full = false;                            // has a full graph: its logits are full_table[row]
  std::vector<std::vector<float>> full_table;  // [row][class]
  int full_runs = 0;

  std::string name() const override { return "fake"; }
  bool has_full() const override { return full; }
  void run_full(const DeviceTensor &in, std::vector<float> &logits) override {
    ++full_runs;
    logits.clear();
    for (float id : static_cast<const FakeTensor &>(in).ids) {
      const auto &row = full_table[static_cast<std::size_t>(id)];
      logits.insert(logits.end(), row.begin(), row.end());
    }
  }
  std::string device_name() const override { return "fake-device"; }
  int num_sections() const override { return kK; }
  TensorPtr upload(const float *x, std::int64_t rows) override {
    auto t = std::make_unique<FakeTensor>();
    for (std::int64_t r = 0; r < rows; ++r) t->ids.push_back(x[r * image]);
    return t;
  }
  TensorPtr run_section(int k, const DeviceTensor &in, std::vector<float> &logits) override {
    const auto &t = static_cast<const FakeTensor &>(in);
    if (sleep_ms[k - 1] > 0)  // sleeping, not spinning: scripted times hold on a busy machine
      std::this_thread::sleep_for(std::chrono::microseconds(static_cast<long>(sleep_ms[k - 1] * 1e3)));
    std::vector<int> ids;
    logits.clear();
    for (float id : t.ids) {
      ids.push_back(static_cast<int>(id));
      const auto &row = table[k - 1][static_cast<std::size_t>(id)];
      logits.insert(logits.end(), row.begin(), row.end());
    }
    seen.push_back(ids);
    if (k == kK) return nullptr;
    auto f = std::make_unique<FakeTensor>();
    f->ids = t.ids;
    return f;
  }
  TensorPtr take_rows(const DeviceTensor &in, const std::vector<std::int64_t> &keep) override {
    const auto &t = static_cast<const FakeTensor &>(in);
    auto f = std::make_unique<FakeTensor>();
    for (auto i : keep) f->ids.push_back(t.ids[static_cast<std::size_t>(i)]);
    return f;
  }
};

// The same scripted model with its exit heads apart (format version 2): sections 1..K-1 run as trunks,
// each head only when the session asks for it; every trunk and head run is logged as (kind, section).
struct SplitBackend : FakeBackend {
  std::vector<std::pair<char, int>> runs;  // ('t', k) trunk, ('h', k) head, ('s', k) a whole section
  bool split_heads() const override { return true; }
  TensorPtr run_trunk(int k, const DeviceTensor &in) override {
    runs.emplace_back('t', k);
    std::vector<float> unused;
    return FakeBackend::run_section(k, in, unused);
  }
  void run_head(int k, const DeviceTensor &features, std::vector<float> &logits) override {
    runs.emplace_back('h', k);
    logits.clear();
    for (float id : static_cast<const FakeTensor &>(features).ids) {
      const auto &row = table[static_cast<std::size_t>(k - 1)][static_cast<std::size_t>(id)];
      logits.insert(logits.end(), row.begin(), row.end());
    }
  }
  TensorPtr run_section(int k, const DeviceTensor &in, std::vector<float> &logits) override {
    runs.emplace_back('s', k);
    return FakeBackend::run_section(k, in, logits);
  }
};

Bundle fake_bundle(std::int64_t channels = 1) {
  Bundle b;
  b.path = "/nonexistent-fake-bundle";
  Manifest &m = b.manifest;
  m.format_version = 1;
  m.input = {"image", {-1, channels, 1, 1}, "float32"};
  m.preprocess = {1.0 / 255, std::vector<double>(static_cast<std::size_t>(channels), 0.5),
                  std::vector<double>(static_cast<std::size_t>(channels), 0.25), channels == 3 ? "RGB" : "L"};
  m.classes = {"a", "b", "c", "d"};
  for (int k = 1; k <= kK; ++k) {
    SectionSpec s;
    s.index = k;
    s.file = "sections/s" + std::to_string(k) + ".onnx";
    s.logits = {logits_name(k), {-1, kC}, "float32"};
    m.sections.push_back(s);
  }
  return b;
}

// logits whose softmax puts probability ~p on class `c` (p > 0.25), the rest spread evenly
std::vector<float> peaked(int c, double p) {
  const double rest = (1 - p) / (kC - 1);
  std::vector<float> z(kC, static_cast<float>(std::log(rest)));
  z[static_cast<std::size_t>(c)] = static_cast<float>(std::log(p));
  return z;
}

}  // namespace

int main() {
  // ---- confidence criteria
  {
    const float p[4] = {0.5f, 0.25f, 0.125f, 0.125f};
    CHECK(confidence_of(p, 4, Criterion::MaxProb) == 0.5f);
    CHECK(std::fabs(confidence_of(p, 4, Criterion::Margin) - 0.25f) < 1e-7f);
    const double h = -(0.5 * std::log(0.5) + 0.25 * std::log(0.25) + 2 * 0.125 * std::log(0.125));
    CHECK(std::fabs(confidence_of(p, 4, Criterion::Entropy) - (1 - h / std::log(4.0))) < 1e-6);
    const float u[4] = {0.25f, 0.25f, 0.25f, 0.25f};
    CHECK(std::fabs(confidence_of(u, 4, Criterion::Entropy)) < 1e-6f && confidence_of(u, 4, Criterion::Margin) == 0.0f);
    const float z[4] = {2.0f, 0.0f, 0.0f, 0.0f};
    float s[4];
    softmax_rows(z, 1, 4, 2.0, s);  // temperature 2: softmax([1, 0, 0, 0])
    CHECK(std::fabs(s[0] - std::exp(1.0) / (std::exp(1.0) + 3)) < 1e-6);
    CHECK(parse_criterion("margin") == Criterion::Margin);
    bool threw = false;
    try {
      parse_criterion("top5");
    } catch (const Error &e) {
      threw = e.code() == Code::Policy;
    }
    CHECK(threw);
  }

  // ---- the decision loop: rows leave at their own exits, results in input order
  {
    auto fb = std::make_unique<FakeBackend>();
    FakeBackend *be = fb.get();
    // row 0: sure at exit 1; row 1: sure at exit 2; row 2: never sure; row 3: sure at exit 1
    be->table = {{peaked(1, 0.95), peaked(2, 0.5), peaked(0, 0.4), peaked(3, 0.97)},
                 {peaked(1, 0.95), peaked(2, 0.93), peaked(0, 0.5), peaked(3, 0.97)},
                 {peaked(1, 0.95), peaked(2, 0.93), peaked(0, 0.6), peaked(3, 0.97)}};
    SessionConfig cfg;
    cfg.warmup = 0;
    Session s(fake_bundle(), std::move(fb), cfg);
    const float x[4] = {0, 1, 2, 3};
    InferRequest req;
    req.threshold = 0.9;
    std::vector<RowResult> r(4);
    std::vector<float> probs(4 * kC);
    s.infer_f32(x, 4, req, r.data(), probs.data());
    CHECK(r[0].exit_index == 1 && r[1].exit_index == 2 && r[2].exit_index == 3 && r[3].exit_index == 1);
    CHECK(r[0].stopped_by == kStopConfidence && r[1].stopped_by == kStopConfidence && r[2].stopped_by == kStopLast);
    CHECK(r[0].label == 1 && r[1].label == 2 && r[2].label == 0 && r[3].label == 3);
    CHECK(std::fabs(r[1].confidence - 0.93f) < 1e-5f && std::fabs(probs[1 * kC + 2] - 0.93f) < 1e-5f);
    CHECK(std::fabs(r[2].confidence - 0.6f) < 1e-5f && r[0].deadline_met == -1);
    // the batch shrank: section 2 saw rows 1 and 2, section 3 only row 2
    CHECK(be->seen.size() == 3 && be->seen[0] == (std::vector<int>{0, 1, 2, 3}) &&
          be->seen[1] == (std::vector<int>{1, 2}) && be->seen[2] == (std::vector<int>{2}));

    // threshold 0: everything at exit 1; no policy: everything at the last exit
    be->seen.clear();
    req.threshold = 0.0;
    s.infer_f32(x, 4, req, r.data(), nullptr);
    for (const auto &row : r) CHECK(row.exit_index == 1 && row.stopped_by == kStopConfidence);
    CHECK(be->seen.size() == 1);
    s.infer_f32(x, 4, InferRequest{}, r.data(), nullptr);
    for (const auto &row : r) CHECK(row.exit_index == 3 && row.stopped_by == kStopLast);

    // the threshold is compared in float32: a confidence equal to float32(t) stops
    req.threshold = static_cast<double>(static_cast<float>(0.93)) - 1e-12;  // rounds to the same float32
    s.infer_f32(x + 1, 1, req, r.data(), probs.data());
    CHECK((r[0].exit_index == 2) == (probs[2] >= static_cast<float>(req.threshold)));

    // criterion margin at 0.85: row 1 at exit 2 has margin 0.93 - 0.0233 ~ 0.907
    req.threshold = 0.85;
    req.criterion = "margin";
    s.infer_f32(x, 4, req, r.data(), nullptr);
    CHECK(r[1].exit_index == 2 && r[2].exit_index == 3);
    req.criterion = "nope";
    bool threw = false;
    try {
      s.infer_f32(x, 4, req, r.data(), nullptr);
    } catch (const Error &e) {
      threw = e.code() == Code::Policy;
    }
    CHECK(threw);
  }

  // ---- exit heads of their own (format version 2): a head runs only where its logits are needed, and the
  // answers are those of the same model with its heads inside the sections
  {
    const std::vector<std::vector<std::vector<float>>> table = {
        {peaked(1, 0.95), peaked(2, 0.5), peaked(0, 0.4), peaked(3, 0.97)},
        {peaked(1, 0.95), peaked(2, 0.93), peaked(0, 0.5), peaked(3, 0.97)},
        {peaked(1, 0.95), peaked(2, 0.93), peaked(0, 0.6), peaked(3, 0.97)}};
    auto fb = std::make_unique<SplitBackend>();
    SplitBackend *be = fb.get();
    be->table = table;
    auto ref_b = std::make_unique<FakeBackend>();
    ref_b->table = table;
    SessionConfig cfg;
    cfg.warmup = 0;
    Session s(fake_bundle(), std::move(fb), cfg);
    Session ref(fake_bundle(), std::move(ref_b), cfg);
    const float x[4] = {0, 1, 2, 3};
    using Runs = std::vector<std::pair<char, int>>;
    std::vector<RowResult> r(4), want(4);
    std::vector<float> p(4 * kC), q(4 * kC);
    InferRequest far;
    far.budget_ms = 1e6;  // a deadline-only call to the deepest exit: no intermediate head
    s.infer_f32(x, 4, far, r.data(), p.data());
    CHECK(be->runs == (Runs{{'t', 1}, {'t', 2}, {'s', 3}}));
    ref.infer_f32(x, 4, far, want.data(), q.data());
    for (int i = 0; i < 4; ++i) CHECK(r[i].exit_index == 3 && r[i].label == want[i].label && r[i].confidence == want[i].confidence);
    CHECK(p == q);
    be->runs.clear();
    InferRequest gone;
    gone.deadline_ns = 1;  // long past: the call stops at exit 1, whose head then runs for the answer
    s.infer_f32(x, 4, gone, r.data(), p.data());
    CHECK(be->runs == (Runs{{'t', 1}, {'h', 1}}));
    for (int i = 0; i < 4; ++i) CHECK(r[i].exit_index == 1 && r[i].stopped_by == kStopDeadline && r[i].deadline_met == 0);
    ref.infer_f32(x, 4, gone, want.data(), q.data());
    CHECK(p == q);
    be->runs.clear();
    const double at2[3] = {NAN, 0.9, NAN};  // a threshold at exit 2 only: head 2 runs, head 1 does not
    InferRequest t2;
    t2.thresholds = at2;
    t2.num_thresholds = 3;
    s.infer_f32(x, 4, t2, r.data(), p.data());
    CHECK(be->runs == (Runs{{'t', 1}, {'t', 2}, {'h', 2}, {'s', 3}}));
    ref.infer_f32(x, 4, t2, want.data(), q.data());
    for (int i = 0; i < 4; ++i) CHECK(r[i].exit_index == want[i].exit_index && r[i].label == want[i].label);
    CHECK(r[1].exit_index == 2 && r[0].exit_index == 2 && r[2].exit_index == 3);
    be->runs.clear();
    std::vector<float> conf(4 * kK), conf_ref(4 * kK);  // exit confidences asked for: every head runs
    s.infer_f32(x, 4, far, r.data(), p.data(), conf.data());
    ref.infer_f32(x, 4, far, want.data(), q.data(), conf_ref.data());
    CHECK(be->runs == (Runs{{'t', 1}, {'h', 1}, {'t', 2}, {'h', 2}, {'s', 3}}) && conf == conf_ref);
    // the heads were timed in their own cells: a section's figure is its trunk's plus its head's (rule 8)
    const LatencyEstimator &est = s.deadline_policy().estimator();
    CHECK(est.count(1, 4) == 4 && est.estimate(1, 4).has_value());
    SessionConfig ens = cfg;
    ens.answer = Answer::Ensemble;
    auto eb = std::make_unique<SplitBackend>();
    SplitBackend *ebp = eb.get();
    eb->table = table;
    Session e(fake_bundle(), std::move(eb), ens);
    e.infer_f32(x, 4, far, r.data(), p.data());  // the ensemble answer needs every exit's probabilities
    CHECK(ebp->runs == (Runs{{'t', 1}, {'h', 1}, {'t', 2}, {'h', 2}, {'s', 3}}));
  }

  // ---- per-row thresholds and deadlines (ABI 3: a server's dynamic batch), each row as it would go alone
  {
    auto fb = std::make_unique<FakeBackend>();
    FakeBackend *be = fb.get();
    be->table = {{peaked(1, 0.95), peaked(2, 0.5), peaked(0, 0.4), peaked(3, 0.97)},
                 {peaked(1, 0.95), peaked(2, 0.93), peaked(0, 0.5), peaked(3, 0.97)},
                 {peaked(1, 0.95), peaked(2, 0.93), peaked(0, 0.6), peaked(3, 0.97)}};
    SessionConfig cfg;
    cfg.warmup = 0;
    Session s(fake_bundle(), std::move(fb), cfg);
    const float x[4] = {0, 1, 2, 3};
    const float nan = NAN;
    // row 0: no threshold; row 1: 0.9 everywhere; row 2: 0.45 at exit 2 only; row 3: 0.99 (never sure)
    const float thr[4 * kK] = {nan, nan, nan, 0.9f, 0.9f, nan, nan, 0.45f, nan, 0.99f, 0.99f, nan};
    InferRequest req;
    req.row_thresholds = thr;
    std::vector<RowResult> r(4);
    // on_rows hears of rows as they settle, their results already final: rows 1 and 2 after exit 2, then 0 and 3
    struct Heard {
      std::vector<std::vector<std::int64_t>> calls;
      const RowResult *results;
      bool final_when_heard = true;
    } heard{{}, r.data()};
    req.on_rows = [](void *user, std::int64_t count, const std::int64_t *rows) {
      auto *h = static_cast<Heard *>(user);
      h->calls.emplace_back(rows, rows + count);
      for (std::int64_t i = 0; i < count; ++i) h->final_when_heard &= h->results[rows[i]].exit_index > 0;
    };
    req.on_rows_user = &heard;
    s.infer_f32(x, 4, req, r.data(), nullptr);
    CHECK(heard.calls.size() == 2 && heard.calls[0] == (std::vector<std::int64_t>{1, 2}) &&
          heard.calls[1] == (std::vector<std::int64_t>{0, 3}) && heard.final_when_heard);
    CHECK(r[1].latency_ms <= r[0].latency_ms);
    CHECK(r[0].exit_index == 3 && r[1].exit_index == 2 && r[2].exit_index == 2 && r[3].exit_index == 3);
    CHECK(r[1].stopped_by == kStopConfidence && r[2].stopped_by == kStopConfidence && r[0].stopped_by == kStopLast);
    CHECK(be->seen.size() == 3 && be->seen[2] == (std::vector<int>{0, 3}));
    // deadlines: row 1's has passed (exit 1, missed), row 2 has none, rows 0 and 3 an hour away
    const std::int64_t now = now_ns(), hour = 3600LL * 1000000000LL;
    const std::int64_t dl[4] = {now + hour, now - 1000000, 0, now + hour};
    InferRequest req2;
    req2.row_deadlines_ns = dl;
    be->seen.clear();
    s.infer_f32(x, 4, req2, r.data(), nullptr);
    CHECK(r[1].exit_index == 1 && r[1].stopped_by == kStopDeadline && r[1].deadline_met == 0);
    CHECK(r[0].exit_index == 3 && r[0].deadline_met == 1 && r[2].exit_index == 3 && r[2].deadline_met == -1);
    CHECK(be->seen.size() == 3 && be->seen[1] == (std::vector<int>{0, 2, 3}));
    // a bad per-row threshold is a policy error naming it
    const float bad[4 * kK] = {nan, 1.5f, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan};
    InferRequest req3;
    req3.row_thresholds = bad;
    bool threw = false;
    try {
      s.infer_f32(x, 4, req3, r.data(), nullptr);
    } catch (const Error &e) {
      threw = e.code() == Code::Policy && std::string(e.what()).find("row_thresholds[1]") != std::string::npos;
    }
    CHECK(threw);
    // an on_rows callback that calls back into the session gets an argument error, not a second lock (a hang)
    struct Reentry {
      Session *s;
      int code = -1;
      std::string msg;
    } re{&s};
    InferRequest req4;
    req4.row_thresholds = thr;
    req4.on_rows = [](void *user, std::int64_t, const std::int64_t *) {
      auto *r = static_cast<Reentry *>(user);
      try {
        r->s->section_cost_ms(1, 1);
        r->code = 0;
      } catch (const Error &e) {
        r->code = static_cast<int>(e.code());
        r->msg = e.what();
      }
    };
    req4.on_rows_user = &re;
    s.infer_f32(x, 4, req4, r.data(), nullptr);
    CHECK(re.code == static_cast<int>(Code::Argument) && re.msg.find("called back into a session") != std::string::npos);
    CHECK(s.section_cost_ms(1, 1) >= 0.0);  // the session is free again after the call
  }

  // ---- options refused before anything is loaded: max_batch beyond 4096, latency options out of range
  for (auto edit : std::vector<std::function<void(SessionConfig &)>>{
           [](SessionConfig &c) { c.max_batch = 4097; }, [](SessionConfig &c) { c.max_batch = 0; },
           [](SessionConfig &c) { c.latency_quantile = 0.3; }, [](SessionConfig &c) { c.latency_window = 3; }}) {
    SessionConfig cfg;
    cfg.warmup = 0;
    edit(cfg);
    bool threw = false;
    try {
      Session bad(fake_bundle(), std::make_unique<FakeBackend>(), cfg);
    } catch (const Error &e) {
      threw = e.code() == Code::Argument;
    }
    CHECK(threw);
  }

  // ---- no policy: the full graph answers (no section runs); anything that needs a section's logits or time runs them
  {
    auto fb = std::make_unique<FakeBackend>();
    FakeBackend *be = fb.get();
    be->table = {{peaked(1, 0.95), peaked(2, 0.5)}, {peaked(1, 0.95), peaked(2, 0.93)}, {peaked(1, 0.9), peaked(2, 0.9)}};
    be->full = true;
    be->full_table = {peaked(3, 0.8), peaked(0, 0.7)};  // unlike any section: which graph answered shows
    SessionConfig cfg;
    cfg.warmup = 0;
    Session s(fake_bundle(), std::move(fb), cfg);
    const float x[2] = {0, 1};
    RowResult r[2];
    float probs[2 * kC], conf[2 * kK];
    s.infer_f32(x, 2, InferRequest{}, r, probs);
    CHECK(be->full_runs == 1 && be->seen.empty());
    CHECK(r[0].label == 3 && r[1].label == 0 && r[0].exit_index == kK && r[1].stopped_by == kStopLast);
    CHECK(std::fabs(probs[3] - 0.8f) < 1e-5f && std::fabs(r[1].confidence - 0.7f) < 1e-5f && r[0].deadline_met == -1);
    s.infer_f32(x, 2, InferRequest{}, r, probs, conf);  // exit confidences wanted: every section runs
    CHECK(be->full_runs == 1 && be->seen.size() == 3 && r[0].label == 1 && std::fabs(conf[0] - 0.95f) < 1e-5f);
    InferRequest thr;
    thr.threshold = 0.99;  // a threshold no row meets still needs every exit's logits
    s.infer_f32(x, 2, thr, r, probs);
    CHECK(be->full_runs == 1 && be->seen.size() == 6 && r[0].label == 1);
    InferRequest budget;
    budget.budget_ms = 1e6;  // a deadline the whole network fits: the full graph, timed in its own cells (rule 9)
    s.infer_f32(x, 2, budget, r, probs);
    CHECK(be->full_runs == 2 && be->seen.size() == 6 && r[0].deadline_met == 1 && r[0].label == 3);
    CHECK(r[0].exit_index == kK && r[0].stopped_by == kStopLast);
    CHECK(s.deadline_policy().estimator().estimate_full(2).has_value());
    be->sleep_ms = {2, 2, 2};  // a slow chain: a 3 ms budget no longer fits the whole network, so the sections run
    s.infer_f32(x, 2, InferRequest{}, r, probs, conf);  // (timed: exit confidences keep it off the full graph)
    InferRequest tight;
    tight.budget_ms = 3.0;
    s.infer_f32(x, 2, tight, r, probs);
    CHECK(be->full_runs == 2 && be->seen.size() == 10 && r[0].exit_index == 1 && r[0].stopped_by == kStopDeadline);
    be->sleep_ms = {0, 0, 0};
    {  // rows with their own deadlines and no threshold: the earliest deadline decides, every row settles at once
      const std::int64_t far = now_ns() + 60'000'000'000LL;
      const std::int64_t dls[2] = {far, 0};
      InferRequest rows;
      rows.row_deadlines_ns = dls;
      struct Seen { int calls = 0; std::int64_t count = 0; } seen_rows;
      rows.on_rows = [](void *u, std::int64_t count, const std::int64_t *) {
        auto *sr = static_cast<Seen *>(u);
        ++sr->calls;
        sr->count += count;
      };
      rows.on_rows_user = &seen_rows;
      s.infer_f32(x, 2, rows, r, probs);
      CHECK(be->full_runs == 3 && seen_rows.calls == 1 && seen_rows.count == 2);
      CHECK(r[0].exit_index == kK && r[0].deadline_met == 1 && r[1].deadline_met == -1 && r[1].label == 0);
    }
    cfg.answer = Answer::Ensemble;  // the ensemble answer needs every exit
    auto fb2 = std::make_unique<FakeBackend>();
    FakeBackend *be2 = fb2.get();
    be2->table = be->table;
    be2->full = true;
    be2->full_table = be->full_table;
    Session e(fake_bundle(), std::move(fb2), cfg);
    e.infer_f32(x, 2, InferRequest{}, r, probs);
    CHECK(be2->full_runs == 0 && be2->seen.size() == 3 && r[0].label == 1);
  }

  // ---- answer mode "ensemble": the mean of the exits' softmax so far
  {
    auto fb = std::make_unique<FakeBackend>();
    fb->table = {{peaked(0, 0.9)}, {peaked(1, 0.5)}, {peaked(1, 0.7)}};
    SessionConfig cfg;
    cfg.warmup = 0;
    cfg.answer = Answer::Ensemble;
    Session s(fake_bundle(), std::move(fb), cfg);
    const float x[1] = {0};
    RowResult r;
    std::vector<float> probs(kC);
    s.infer_f32(x, 1, InferRequest{}, &r, probs.data());
    const double want0 = (0.9 + 0.5 / 3 + 0.1) / 3, want1 = (0.1 / 3 + 0.5 + 0.7) / 3;
    CHECK(r.exit_index == 3 && std::fabs(probs[0] - want0) < 1e-5 && std::fabs(probs[1] - want1) < 1e-5);
    CHECK(r.label == 1 && std::fabs(r.confidence - want1) < 1e-5);
  }

  // ---- deadlines on scripted section times (section 2 takes 20 ms)
  {
    auto fb = std::make_unique<FakeBackend>();
    fb->table = {{peaked(0, 0.5)}, {peaked(1, 0.5)}, {peaked(2, 0.5)}};
    fb->sleep_ms = {1, 20, 1};
    SessionConfig cfg;
    cfg.warmup = 3;  // seeds the estimates: 3 timed chains
    Session s(fake_bundle(), std::move(fb), cfg);
    const float x[1] = {0};
    RowResult r;
    InferRequest req;
    req.budget_ms = 12;  // exit 1 fits, section 2 (>= 20 ms measured) does not
    s.infer_f32(x, 1, req, &r, nullptr);
    CHECK(r.exit_index == 1 && r.stopped_by == kStopDeadline && r.deadline_met != -1 && r.label == 0);
    req.budget_ms = 1000;  // generous margins: other tests may share the cores
    s.infer_f32(x, 1, req, &r, nullptr);
    CHECK(r.exit_index == 3 && r.stopped_by == kStopLast && r.deadline_met == 1 && r.latency_ms >= 22);
    req.budget_ms = NAN;
    req.deadline_ns = now_ns() + 1000000000;  // an absolute deadline 1 s away: every section fits
    s.infer_f32(x, 1, req, &r, nullptr);
    CHECK(r.exit_index == 3 && r.deadline_met == 1);
    req.deadline_ns = now_ns() + 12000000;  // 12 ms away: as the 12 ms budget
    s.infer_f32(x, 1, req, &r, nullptr);
    CHECK(r.exit_index == 1 && r.stopped_by == kStopDeadline);
    req.deadline_ns = -5;
    bool threw = false;
    try {
      s.infer_f32(x, 1, req, &r, nullptr);
    } catch (const Error &e) {
      threw = e.code() == Code::Policy;
    }
    CHECK(threw);
  }

  // ---- the deadline rule (runtime/policies.py rules 1-9; unit_deadline.cpp has the full port's tests and
  // replays Python's traces): no minimum sample count, exact row counts, no aging (no time argument at all)
  {
    LatencyEstimator est(2);
    CHECK(!est.estimate(1, 1));
    est.record(1, 1, 1.0);
    CHECK(est.estimate(1, 1) == 1.0);  // one sample is a figure
    est.record(1, 1, 2.0);
    est.record(1, 1, 1.5);
    CHECK(est.estimate(1, 1) == 2.0);  // max(higher p99, the larger of the last two): an observed value
    CHECK(est.estimate(1, 2) == 4.0);  // an unmeasured larger count: the largest smaller one, scaled
    for (int i = 0; i < 3; ++i) est.record(1, 8, 10.0);
    CHECK(est.estimate(1, 3) == 6.0);   // min(8 rows: 10, 1 row scaled: 2 * 3), not a shared bucket
    CHECK(est.estimate(1, 5) == 10.0 && est.count(1, 5) == 0 && est.count(1, 8) == 3);

    LatencyProfile prof;
    prof.device = "d";
    prof.sections[1] = {SectionQuantiles{NAN, NAN, 3.0, NAN}, SectionQuantiles{NAN, NAN, 5.0, NAN}};
    prof.decision_overhead_ms = 0.5;
    DeadlinePolicy dp(2, prof);
    CHECK(dp.section_cost_ms(2, 1) == 5.0);  // the profile alone
    for (int i = 0; i < 3; ++i) dp.record(2, 1, 7.0);
    CHECK(dp.section_cost_ms(2, 1) == 7.0);  // online slower than the profile: the larger wins
    CHECK(dp.overhead_ms(1) == 0.5);
    CHECK(dp.should_stop(2, 1, 0.0, 0.007) && !dp.should_stop(2, 1, 0.0, 0.0076));
    for (int i = 0; i < 15; ++i) CHECK(dp.should_stop(2, 1, 0.0, 0.007));  // 16 charged stops ...
    CHECK(dp.estimator().count(2, 1) == 2);  // ... trim the largest sample (all equal here: the oldest)
  }

  // ---- uint8 NHWC -> normalised NCHW, 3 channels
  {
    Bundle b = fake_bundle(3);
    b.manifest.input.shape = {-1, 3, 1, 2};
    b.manifest.preprocess.mean = {0.1, 0.2, 0.3};
    b.manifest.preprocess.std = {0.5, 0.25, 0.125};
    Preprocessor p(b.manifest);
    const std::uint8_t px[6] = {0, 51, 102, 255, 153, 204};  // pixel (0,0) = (0, 51, 102), pixel (0,1) = ...
    float out[6];
    p.from_u8(px, 1, out);
    const double want[6] = {(0 / 255.0 - 0.1) / 0.5, (255 / 255.0 - 0.1) / 0.5, (51 / 255.0 - 0.2) / 0.25,
                            (153 / 255.0 - 0.2) / 0.25, (102 / 255.0 - 0.3) / 0.125, (204 / 255.0 - 0.3) / 0.125};
    for (int i = 0; i < 6; ++i) CHECK(std::fabs(out[i] - want[i]) < 1e-5);
    const float bad[6] = {0, 1, NAN, 2, INFINITY, 3};
    bool threw = false;
    try {
      p.check_finite(bad, 1);
    } catch (const Error &e) {
      threw = e.code() == Code::Input && std::string(e.what()).find("2 NaN/Inf") != std::string::npos;
    }
    CHECK(threw);
  }

  printf("unit_session: %s\n", check_failures ? "FAILED" : "ok");
  return TEST_RESULT();
}
