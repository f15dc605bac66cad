// unit_real_bundle.cpp: real inference through the C ABI on the exported bundle at $SDEDGE_TEST_BUNDLE
// (skipped, 77, without one): every exit's logits and the answers under confidence policies equal the
// Python runtime's (native/tests/expected_vectors.py; $SDEDGE_TEST_EXPECTED or run here with
// $SDEDGE_TEST_PYTHON / python3), threshold 0 stops at exit 1, no policy runs to the last exit, budgets and
// deadlines, misuse with a live session, several threads on one session, chunked infer_all_exits,
// unavailable providers and libraries, a tampered section refused naming the file.
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "check.h"
#include "hostinfo.hpp"
#include "sdedge/sdedge.h"
#include "session.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;

namespace {

struct Session {  // RAII for the test
  sdedge_session *s = nullptr;
  ~Session() { sdedge_session_free(s); }
};

sdedge_status open(const std::string &dir, Session &out, int max_batch = 64, const char *providers = nullptr,
                   const char *library = nullptr) {
  sdedge_session_options o;
  sdedge_session_options_init(&o);
  o.intra_op_threads = 1;
  o.warmup = 1;
  o.max_batch = max_batch;
  o.providers = providers;
  o.onnxruntime_library = library;
  return sdedge_session_create(dir.c_str(), &o, &out.s);
}

bool close_all(const float *a, const std::vector<double> &b, double tol, const char *what) {
  double worst = 0.0;
  for (std::size_t i = 0; i < b.size(); ++i) worst = std::max(worst, std::fabs(double(a[i]) - b[i]));
  if (worst > tol) fprintf(stderr, "  %s: max |native - python| = %g > %g\n", what, worst, tol);
  return worst <= tol;
}

int stop_code(const std::string &why) { return why == "confidence" ? SDEDGE_STOP_CONFIDENCE : why == "deadline" ? SDEDGE_STOP_DEADLINE : SDEDGE_STOP_LAST; }

}  // namespace

int main() {
  const char *bundle_env = getenv("SDEDGE_TEST_BUNDLE");
  if (!bundle_env || !*bundle_env) {
    printf("SDEDGE_TEST_BUNDLE not set: skipped\n");
    return 77;
  }
  const std::string bundle = bundle_env;

  // expected values from the Python runtime
  std::string expected_path = getenv("SDEDGE_TEST_EXPECTED") ? getenv("SDEDGE_TEST_EXPECTED") : "";
  if (expected_path.empty()) {
    expected_path = "/tmp/sdedge-expected-" + std::to_string(getpid()) + ".json";
    const char *py = getenv("SDEDGE_TEST_PYTHON");
    const std::string cmd = std::string(py && *py ? py : "python3") + " " SDEDGE_SOURCE_DIR "/tests/expected_vectors.py '" +
                            bundle + "' '" + expected_path + "'";
    if (std::system(cmd.c_str()) != 0) {
      fprintf(stderr, "FAILED: could not produce the Python expectations with: %s\n"
                      "(set SDEDGE_TEST_EXPECTED to a file made by expected_vectors.py, or SDEDGE_TEST_PYTHON)\n", cmd.c_str());
      return 1;
    }
  }
  nlohmann::json ex;
  {
    std::ifstream f(expected_path);
    if (!f) {
      fprintf(stderr, "FAILED: cannot read %s\n", expected_path.c_str());
      return 1;
    }
    f >> ex;
  }
  if (!getenv("SDEDGE_TEST_EXPECTED")) fs::remove(expected_path);
  const auto B = ex["rows"].get<int64_t>();
  const auto K = ex["num_exits"].get<int32_t>();
  const auto C = ex["num_classes"].get<int32_t>();
  const auto pixels = ex["pixels"].get<std::vector<uint8_t>>();
  const auto input = ex["input"].get<std::vector<float>>();
  const auto all_exits = ex["all_exits"].get<std::vector<double>>();
  const int64_t image = static_cast<int64_t>(input.size()) / B;

  Session s;
  CHECK_STATUS(open(bundle, s), SDEDGE_OK, nullptr);
  if (!s.s) return TEST_RESULT();

  int32_t ne = 0, nc = 0;
  int64_t chw[3] = {0, 0, 0};
  CHECK_STATUS(sdedge_session_info(s.s, &ne, &nc, chw), SDEDGE_OK, nullptr);
  CHECK(ne == K && nc == C && chw[0] * chw[1] * chw[2] == image);
  CHECK(chw[0] == ex["chw"][0].get<int64_t>() && chw[1] == ex["chw"][1].get<int64_t>());

  // every exit's logits equal the Python runtime's
  std::vector<float> logits(static_cast<size_t>(K * B * C));
  CHECK_STATUS(sdedge_session_infer_all_exits(s.s, input.data(), B, logits.data()), SDEDGE_OK, nullptr);
  CHECK(close_all(logits.data(), all_exits, 1e-4, "infer_all_exits"));

  // the answers under each policy, from raw pixels (the manifest's preprocessing) and from floats
  std::vector<sdedge_result> res(static_cast<size_t>(B)), res_f(static_cast<size_t>(B));
  std::vector<float> probs(static_cast<size_t>(B * C)), probs_f(static_cast<size_t>(B * C));
  for (const auto &cs : ex["cases"]) {
    sdedge_infer_options io;
    sdedge_infer_options_init(&io);
    if (cs["kind"] == "calibrated") io.calibrated = 1;
    else io.threshold = cs["threshold"].get<double>();
    const std::string criterion = cs.value("criterion", nlohmann::json()).is_string() ? cs["criterion"].get<std::string>() : "";
    if (!criterion.empty()) io.criterion = criterion.c_str();
    CHECK_STATUS(sdedge_session_infer_u8(s.s, pixels.data(), B, &io, res.data(), probs.data()), SDEDGE_OK, nullptr);
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), B, &io, res_f.data(), probs_f.data()), SDEDGE_OK, nullptr);
    int mismatched = 0;
    for (int64_t i = 0; i < B; ++i) {
      const auto &r = res[static_cast<size_t>(i)];
      const auto &rf = res_f[static_cast<size_t>(i)];
      const bool same = r.exit_index == cs["exit_index"][i].get<int>() && r.label == cs["label"][i].get<int>() &&
                        r.stopped_by == stop_code(cs["stopped_by"][i].get<std::string>()) &&
                        std::fabs(r.confidence - cs["confidence"][i].get<double>()) <= 1e-4 && r.deadline_met == -1;
      const bool same_f = rf.exit_index == r.exit_index && rf.label == r.label && rf.stopped_by == r.stopped_by;
      if (!same || !same_f) {
        ++mismatched;
        fprintf(stderr, "  case %s row %lld: native exit %d label %d stop %d conf %.6f (f32: exit %d), python exit %d label %d %s %.6f\n",
                cs.dump().substr(0, 40).c_str(), (long long)i, r.exit_index, r.label, r.stopped_by, r.confidence,
                rf.exit_index, cs["exit_index"][i].get<int>(), cs["label"][i].get<int>(),
                cs["stopped_by"][i].get<std::string>().c_str(), cs["confidence"][i].get<double>());
      }
    }
    CHECK(mismatched == 0);
    CHECK(close_all(probs.data(), cs["probabilities"].get<std::vector<double>>(), 1e-4, "probabilities (u8)"));
    CHECK(close_all(probs_f.data(), cs["probabilities"].get<std::vector<double>>(), 1e-4, "probabilities (f32)"));
    if (cs["kind"] == "threshold" && cs["threshold"].get<double>() == 0.0) {
      for (const auto &r : res) CHECK(r.exit_index == 1 && r.stopped_by == SDEDGE_STOP_CONFIDENCE);
    }
  }

  // no policy: every row runs to the last exit; its label is the argmax of the last exit's logits
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), B, nullptr, res.data(), nullptr), SDEDGE_OK, nullptr);
  for (int64_t i = 0; i < B; ++i) {
    const float *z = logits.data() + ((K - 1) * B + i) * C;
    const int arg = static_cast<int>(std::max_element(z, z + C) - z);
    const auto &r = res[static_cast<size_t>(i)];
    CHECK(r.exit_index == K && r.stopped_by == SDEDGE_STOP_LAST && r.label == arg && r.deadline_met == -1);
    CHECK(r.confidence > 0.0f && r.confidence <= 1.0f && r.latency_ms > 0.0);
  }

  // no policy runs full.onnx (fixture bundles have it): the same answer as the chain of sections, which runs
  // when exit confidences are asked for, and as a session that never loads full.onnx
  {
    std::vector<float> p_full(static_cast<size_t>(B * C)), p_chain(static_cast<size_t>(B * C)), ec(static_cast<size_t>(B * K));
    std::vector<sdedge_result> r_chain(static_cast<size_t>(B));
    CHECK_STATUS(sdedge_session_infer_f32_ex(s.s, input.data(), B, nullptr, res.data(), p_full.data(), nullptr), SDEDGE_OK, nullptr);
    CHECK_STATUS(sdedge_session_infer_f32_ex(s.s, input.data(), B, nullptr, r_chain.data(), p_chain.data(), ec.data()),
                 SDEDGE_OK, nullptr);
    std::vector<double> chain(p_chain.begin(), p_chain.end());
    CHECK(close_all(p_full.data(), chain, 1e-4, "full.onnx vs chain probabilities"));
    for (int64_t i = 0; i < B; ++i) {
      CHECK(res[static_cast<size_t>(i)].exit_index == K && r_chain[static_cast<size_t>(i)].exit_index == K);
      CHECK(!std::isnan(ec[static_cast<size_t>(i * K)]));  // the chain ran exit 1
    }
    char desc[4096];
    CHECK_STATUS(sdedge_session_describe(s.s, desc, sizeof desc, nullptr), SDEDGE_OK, nullptr);
    CHECK(nlohmann::json::parse(desc)["full_graph"] == true);
    sdedge_session_options o;
    sdedge_session_options_init(&o);
    o.intra_op_threads = 1;
    o.warmup = 0;
    o.full_graph = 0;
    Session nf;
    CHECK_STATUS(sdedge_session_create(bundle.c_str(), &o, &nf.s), SDEDGE_OK, nullptr);
    CHECK_STATUS(sdedge_session_describe(nf.s, desc, sizeof desc, nullptr), SDEDGE_OK, nullptr);
    CHECK(nlohmann::json::parse(desc)["full_graph"] == false);
    CHECK_STATUS(sdedge_session_infer_f32(nf.s, input.data(), B, nullptr, r_chain.data(), p_chain.data()), SDEDGE_OK, nullptr);
    CHECK(close_all(p_full.data(), std::vector<double>(p_chain.begin(), p_chain.end()), 1e-4, "full_graph=0 probabilities"));
  }

  // budgets and deadlines: exit 1 is the floor; a generous budget reaches the last exit in time
  sdedge_infer_options io;
  sdedge_infer_options_init(&io);
  io.budget_ms = 1e-6;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_OK, nullptr);
  CHECK(res[0].exit_index == 1 && res[0].stopped_by == SDEDGE_STOP_DEADLINE && res[0].deadline_met == 0);
  io.budget_ms = 60000.0;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 4, &io, res.data(), nullptr), SDEDGE_OK, nullptr);
  CHECK(res[0].exit_index == K && res[3].stopped_by == SDEDGE_STOP_LAST && res[0].deadline_met == 1);
  io.budget_ms = NAN;
  io.deadline_ns = sdedge_now_ns() - 1000;  // already past
  CHECK_STATUS(sdedge_session_infer_u8(s.s, pixels.data(), 2, &io, res.data(), nullptr), SDEDGE_OK, nullptr);
  CHECK(res[1].exit_index == 1 && res[1].stopped_by == SDEDGE_STOP_DEADLINE && res[1].deadline_met == 0);

  // ABI version 2: per-exit thresholds, exit confidences, describe, and ABI version 1's struct size
  {
    sdedge_infer_options_init(&io);
    std::vector<double> thr(static_cast<size_t>(K - 1), NAN);
    thr[0] = 0.0;  // exit 1 stops every row
    io.thresholds = thr.data();
    io.num_thresholds = K - 1;
    std::vector<float> ec(static_cast<size_t>(4 * K), -1.0f);
    CHECK_STATUS(sdedge_session_infer_f32_ex(s.s, input.data(), 4, &io, res.data(), nullptr, ec.data()), SDEDGE_OK, nullptr);
    for (int64_t i = 0; i < 4; ++i) {
      CHECK(res[static_cast<size_t>(i)].exit_index == 1 && res[static_cast<size_t>(i)].stopped_by == SDEDGE_STOP_CONFIDENCE);
      CHECK(ec[static_cast<size_t>(i * K)] == res[static_cast<size_t>(i)].confidence);
      for (int k = 1; k < K; ++k) CHECK(std::isnan(ec[static_cast<size_t>(i * K + k)]));
    }
    // no policy: every exit's confidence, the last one the answer's
    CHECK_STATUS(sdedge_session_infer_u8_ex(s.s, pixels.data(), 2, nullptr, res.data(), nullptr, ec.data()), SDEDGE_OK, nullptr);
    for (int64_t i = 0; i < 2; ++i)
      for (int k = 0; k < K; ++k) {
        const float c = ec[static_cast<size_t>(i * K + k)];
        CHECK(c >= 0.0f && c <= 1.0f);
        if (k == K - 1) CHECK(c == res[static_cast<size_t>(i)].confidence);
      }
    io.num_thresholds = K + 1;
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "per-exit");
    io.num_thresholds = K - 1;
    io.threshold = 0.5;
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "per-exit");
    io.threshold = NAN;
    thr[0] = 2.0;
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "threshold[0]");
    io.thresholds = nullptr;
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_ARGUMENT, "NULL");
    // a caller compiled against ABI version 1: its struct ends at deadline_ns; what follows is not read
    sdedge_infer_options_init(&io);
    io.struct_size = static_cast<uint32_t>(offsetof(sdedge_infer_options, deadline_ns) + sizeof(int64_t));
    io.thresholds = reinterpret_cast<const double *>(0x1);
    io.num_thresholds = 12345;
    io.threshold = 0.0;
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_OK, nullptr);
    CHECK(res[0].exit_index == 1);
    io.struct_size += 4;
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_ARGUMENT, "struct_size");
    uint64_t need = 0;
    CHECK_STATUS(sdedge_session_describe(s.s, nullptr, 0, &need), SDEDGE_OK, nullptr);
    CHECK(need > 10);
    std::vector<char> text(static_cast<size_t>(need));
    CHECK_STATUS(sdedge_session_describe(s.s, text.data(), need - 1, nullptr), SDEDGE_E_ARGUMENT, "too small");
    CHECK_STATUS(sdedge_session_describe(s.s, text.data(), need, &need), SDEDGE_OK, nullptr);
    const auto d = nlohmann::json::parse(text.data());
    CHECK(d["num_exits"] == K && d["num_classes"] == C && d["backend"] == "onnxruntime" && d["classes"].size() == static_cast<size_t>(C));
    CHECK(d["answer"] == "last" && d["criterion"] == "max_prob" && !d["onnxruntime_version"].get<std::string>().empty());
    // ABI version 3: the policy's cost figures, read back (warm-up measured sections 1..K at 1 row)
    double ms = -1.0;
    for (int k = 0; k <= K; ++k) {
      CHECK_STATUS(sdedge_session_section_cost_ms(s.s, k, 1, &ms), SDEDGE_OK, nullptr);
      CHECK(ms >= 0.0 && std::isfinite(ms));
    }
    CHECK_STATUS(sdedge_session_section_cost_ms(s.s, K + 1, 1, &ms), SDEDGE_E_ARGUMENT, "section must be");
    CHECK_STATUS(sdedge_session_section_cost_ms(s.s, 1, 0, &ms), SDEDGE_E_ARGUMENT, "rows must be");
    CHECK_STATUS(sdedge_session_section_cost_ms(s.s, 1, 1, nullptr), SDEDGE_E_ARGUMENT, "ms is NULL");
  }

  // misuse on a live session: an error status and a message, the session still works afterwards
  std::vector<float> bad(input.begin(), input.begin() + image * 2);
  bad[static_cast<size_t>(image) + 3] = NAN;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, bad.data(), 2, nullptr, res.data(), nullptr), SDEDGE_E_INPUT, "NaN/Inf");
  bad[static_cast<size_t>(image) + 3] = INFINITY;
  CHECK_STATUS(sdedge_session_infer_all_exits(s.s, bad.data(), 2, logits.data()), SDEDGE_E_INPUT, "1 NaN/Inf value");
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 0, nullptr, res.data(), nullptr), SDEDGE_E_ARGUMENT, "batch");
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), -3, nullptr, res.data(), nullptr), SDEDGE_E_ARGUMENT, "batch");
  CHECK_STATUS(sdedge_session_infer_u8(s.s, pixels.data(), 65, nullptr, res.data(), nullptr), SDEDGE_E_ARGUMENT, "max_batch=64");
  CHECK_STATUS(sdedge_session_infer_all_exits(s.s, input.data(), 0, logits.data()), SDEDGE_E_ARGUMENT, "batch");
  CHECK_STATUS(sdedge_session_infer_f32(s.s, nullptr, 1, nullptr, res.data(), nullptr), SDEDGE_E_ARGUMENT, "NULL");
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, nullptr, nullptr, nullptr), SDEDGE_E_ARGUMENT, "results is NULL");
  CHECK_STATUS(sdedge_session_infer_all_exits(s.s, input.data(), 1, nullptr), SDEDGE_E_ARGUMENT, "logits is NULL");
  CHECK_STATUS(sdedge_session_info(s.s, nullptr, nullptr, nullptr), SDEDGE_E_ARGUMENT, "NULL");
  sdedge_infer_options_init(&io);
  io.struct_size = 8;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_ARGUMENT, "struct_size");
  sdedge_infer_options_init(&io);
  io.threshold = 1.5;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "threshold");
  sdedge_infer_options_init(&io);
  io.criterion = "top5";
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "top5");
  sdedge_infer_options_init(&io);
  io.budget_ms = -1.0;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "budget_ms");
  io.budget_ms = INFINITY;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "budget_ms");
  sdedge_infer_options_init(&io);
  io.calibrated = 1;
  io.criterion = "margin";
  if (fs::exists(fs::path(bundle) / "calibration.json"))
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "criterion");
  else
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_E_POLICY, "calibration.json");
  sdedge_infer_options_init(&io);
  io.threshold = 0.6;
  CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), 1, &io, res.data(), nullptr), SDEDGE_OK, nullptr);

  // several threads on one session: serialized, each answer the same as alone
  {
    std::vector<sdedge_result> alone(static_cast<size_t>(B));
    CHECK_STATUS(sdedge_session_infer_f32(s.s, input.data(), B, &io, alone.data(), nullptr), SDEDGE_OK, nullptr);
    const int T = 4, calls = 12;
    std::vector<int> wrong(T, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < T; ++t) {
      threads.emplace_back([&, t] {
        sdedge_result r[3];
        for (int c = 0; c < calls; ++c) {
          const int64_t row = (t * calls + c) % (B - 2), n = 1 + (c % 3);
          if (sdedge_session_infer_f32(s.s, input.data() + row * image, n, &io, r, nullptr) != SDEDGE_OK) {
            ++wrong[t];
            continue;
          }
          for (int64_t i = 0; i < n; ++i)
            wrong[t] += r[i].exit_index != alone[row + i].exit_index || r[i].label != alone[row + i].label ||
                        std::fabs(r[i].confidence - alone[row + i].confidence) > 1e-5;
        }
      });
    }
    for (auto &th : threads) th.join();
    for (int t = 0; t < T; ++t) CHECK(wrong[t] == 0);
  }

  // infer_all_exits runs a batch larger than max_batch in chunks
  {
    Session small;
    CHECK_STATUS(open(bundle, small, 5), SDEDGE_OK, nullptr);
    if (small.s) {
      std::fill(logits.begin(), logits.end(), NAN);
      CHECK_STATUS(sdedge_session_infer_all_exits(small.s, input.data(), B, logits.data()), SDEDGE_OK, nullptr);
      CHECK(close_all(logits.data(), all_exits, 1e-4, "infer_all_exits in chunks of 5"));
      CHECK_STATUS(sdedge_session_infer_f32(small.s, input.data(), 6, nullptr, res.data(), nullptr), SDEDGE_E_ARGUMENT, "max_batch=5");
    }
  }

  // providers and libraries that are not there
  {
    Session g;
    CHECK_STATUS(open(bundle, g, 64, "cuda"), SDEDGE_E_BACKEND, "CUDAExecutionProvider");
    CHECK(g.s == nullptr);
    CHECK_STATUS(open(bundle, g, 64, "cpu,tensorrt"), SDEDGE_E_BACKEND, "TensorrtExecutionProvider");
    CHECK_STATUS(open(bundle, g, 64, "BogusExecutionProvider"), SDEDGE_E_BACKEND, "not available");
    CHECK_STATUS(open(bundle, g, 64, "cpu"), SDEDGE_OK, nullptr);
    Session h;
    CHECK_STATUS(open(bundle, h, 64, nullptr, "/nonexistent/libonnxruntime.so.1"), SDEDGE_E_BACKEND, "/nonexistent/libonnxruntime.so.1");
    CHECK_STATUS(open(bundle, h, 64, nullptr, "libcrypto.so.3"), SDEDGE_E_BACKEND, "not an ONNX Runtime library");
  }

  // the core finds the latency profile named after its device (as the Python ORT backend names it)
  {
    sdedge::SessionConfig cfg;
    cfg.intra_op_threads = 1;
    cfg.warmup = 0;
    sdedge::Session core(bundle, cfg);
    const std::string device = "onnxruntime-cpu-" + sdedge::slug(sdedge::cpu_model()) + "-t1";
    CHECK(core.device_name() == device);
    CHECK(core.has_profile() == fs::exists(fs::path(bundle) / "profiles" / (device + ".json")));
    printf("device %s, latency profile: %s\n", device.c_str(), core.has_profile() ? "yes" : "no");
  }

  // a tampered section is refused, naming the file
  {
    char tmpl[] = "/tmp/sdedge-tampered-XXXXXX";
    if (mkdtemp(tmpl)) {
      const fs::path copy = fs::path(tmpl) / "bundle";
      fs::copy(bundle, copy, fs::copy_options::recursive);
      const fs::path s2 = copy / "sections" / "s2.onnx";
      std::fstream f(s2, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(100);
      char byte = 0;
      f.read(&byte, 1);
      byte = static_cast<char>(byte ^ 0x20);
      f.seekp(100);
      f.write(&byte, 1);
      f.close();
      Session t;
      CHECK_STATUS(open(copy.string(), t, 64), SDEDGE_E_CHECKSUM, "sections/s2.onnx");
      CHECK(t.s == nullptr);
      // sections swapped with checksums that match: the graphs' tensors are not the manifest's
      fs::copy_file(fs::path(bundle) / "sections" / "s2.onnx", copy / "sections" / "s1.onnx", fs::copy_options::overwrite_existing);
      fs::copy_file(fs::path(bundle) / "sections" / "s1.onnx", copy / "sections" / "s2.onnx", fs::copy_options::overwrite_existing);
      nlohmann::ordered_json m;
      std::ifstream(copy / "manifest.json") >> m;
      for (int i = 0; i < 2; ++i)
        m["sections"][i]["sha256"] = sdedge::sha256_file((copy / m["sections"][i]["file"].get<std::string>()).string());
      std::ofstream(copy / "manifest.json") << m.dump(2);
      CHECK_STATUS(open(copy.string(), t, 64), SDEDGE_E_BUNDLE, "section 1 (sections/s1.onnx): the graph's inputs are");
      fs::remove_all(tmpl);
    }
  }

  printf("unit_real_bundle: %s (%lld rows, %d exits, %zu policies compared with Python)\n",
         check_failures ? "FAILED" : "ok", (long long)B, K, ex["cases"].size());
  return TEST_RESULT();
}
