// unit_bundle.cpp: the bundle reader refuses what runtime/bundle.py refuses, on synthetic bundles this
// test writes itself: bad JSON, wrong format, unknown versions, schema errors, paths escaping the folder,
// missing files, an altered byte (checksum error naming the file); calibration.json and profile readers;
// and the same refusals through the C ABI's sdedge_session_create. Needs no ONNX Runtime.
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "bundle.hpp"
#include "calibration.hpp"
#include "check.h"
#include "errors.hpp"
#include "profile.hpp"
#include "sdedge/sdedge.h"
#include "sha256.hpp"

namespace fs = std::filesystem;
using sdedge::Json;

namespace {

void write(const fs::path &p, const std::string &data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
}

// A bundle of two sections (fake graph bytes) and a calibration.json, every checksum right.
Json good_manifest(const fs::path &dir) {
  write(dir / "sections/s1.onnx", "section one bytes");
  write(dir / "sections/s2.onnx", "section two bytes");
  Json cal = {{"format", "sdedge-calibration"}, {"format_version", 1}, {"criterion", "max_prob"},
              {"temperatures", {1.5, 1.0}}, {"thresholds", {0.9, nullptr}}, {"enabled", {true, true}}};
  write(dir / "calibration.json", cal.dump(2));
  auto tensor = [](const std::string &name, Json shape) { return Json{{"name", name}, {"shape", shape}, {"dtype", "float32"}}; };
  Json m = {
      {"format", "sdedge-bundle"},
      {"format_version", 1},
      {"model", {{"name", "synthetic"}}},
      {"input", {{"name", "image"}, {"shape", {nullptr, 1, 4, 4}}, {"dtype", "float32"},
                 {"preprocess", {{"scale", 1.0 / 255}, {"mean", {0.5}}, {"std", {0.25}}, {"channel_order", "L"}}}}},
      {"classes", {"a", "b", "c"}},
      {"sections",
       {{{"file", "sections/s1.onnx"}, {"sha256", sdedge::sha256_file((dir / "sections/s1.onnx").string())},
         {"inputs", {tensor("image", {nullptr, 1, 4, 4})}},
         {"outputs", {tensor("features_1", {nullptr, 2, 2, 2}), tensor("logits_1", {nullptr, 3})}},
         {"macs", 10}, {"params", 5}},
        {{"file", "sections/s2.onnx"}, {"sha256", sdedge::sha256_file((dir / "sections/s2.onnx").string())},
         {"inputs", {tensor("features_1", {nullptr, 2, 2, 2})}},
         {"outputs", {tensor("logits_2", {nullptr, 3})}},
         {"macs", 20}, {"params", 7}}}},
      {"exits", Json::array()},
      {"files", {{"calibration.json", {{"sha256", sdedge::sha256_file((dir / "calibration.json").string())}}}}}};
  write(dir / "manifest.json", m.dump(2));
  return m;
}

// The error `f` throws (code and message); Code::Internal + "no error" when it throws none.
std::pair<sdedge::Code, std::string> error_of(const std::function<void()> &f) {
  try {
    f();
  } catch (const sdedge::Error &e) {
    return {e.code(), e.what()};
  }
  return {sdedge::Code::Internal, "no error"};
}

bool refused(const fs::path &dir, sdedge::Code code, const std::string &needle) {
  auto [c, msg] = error_of([&] { sdedge::open_bundle(dir.string()); });
  const bool ok = c == code && msg.find(needle) != std::string::npos;
  if (!ok) fprintf(stderr, "  expected code %d with \"%s\", got code %d: %s\n", int(code), needle.c_str(), int(c), msg.c_str());
  return ok;
}

// Rewrite the manifest of a fresh good bundle after `edit`, expect open_bundle to refuse with `needle`.
bool manifest_refused(const fs::path &dir, const std::function<void(Json &)> &edit, const std::string &needle,
                      sdedge::Code code = sdedge::Code::Bundle) {
  fs::remove_all(dir);
  Json m = good_manifest(dir);
  edit(m);
  write(dir / "manifest.json", m.dump(2));
  return refused(dir, code, needle);
}

}  // namespace

int main() {
  char tmpl[] = "/tmp/sdedge-unit-bundle-XXXXXX";
  if (!mkdtemp(tmpl)) return 2;
  const fs::path root(tmpl), dir = root / "bundle";
  using sdedge::Code;

  // a good bundle opens, typed view as written
  good_manifest(dir);
  {
    sdedge::Bundle b = sdedge::open_bundle(dir.string());
    CHECK(b.manifest.num_exits() == 2 && b.manifest.num_classes() == 3 && b.manifest.format_version == 1);
    CHECK(b.manifest.input.shape == (std::vector<std::int64_t>{-1, 1, 4, 4}));
    CHECK(b.manifest.sections[0].features && !b.manifest.sections[1].features);
    CHECK(b.manifest.preprocess.channel_order == "L" && b.manifest.files.size() == 1);
    auto cal = sdedge::load_calibration(b);
    CHECK(cal && cal->temperatures == (std::vector<double>{1.5, 1.0}) && cal->thresholds[0] == 0.9 && !cal->thresholds[1]);
  }

  // the folder itself
  CHECK(refused(root / "nope", Code::Bundle, "does not exist"));
  CHECK(refused(dir / "manifest.json", Code::Bundle, "is not a bundle folder"));
  CHECK(refused(root, Code::Bundle, "manifest.json is missing"));

  // not JSON, not an object, not ours, versions
  write(dir / "manifest.json", "{\"format\": \"sdedge-bundle\", ");
  CHECK(refused(dir, Code::Bundle, "is not valid JSON"));
  CHECK(refused(dir, Code::Bundle, "manifest.json"));
  write(dir / "manifest.json", "{\"format\": \"sdedge-bundle\", \"x\": \"\xff\xfe\"}");
  CHECK(refused(dir, Code::Bundle, "is not valid JSON"));
  write(dir / "manifest.json", "[1, 2]");
  CHECK(refused(dir, Code::Bundle, "top level must be an object, got list"));
  CHECK(manifest_refused(dir, [](Json &m) { m["format"] = "onnx-bundle"; }, "is not an sdedge bundle"));
  CHECK(manifest_refused(dir, [](Json &m) { m.erase("format"); }, "'format' is None"));
  CHECK(manifest_refused(dir, [](Json &m) { m["format_version"] = 99; }, "format_version 99, not supported by this sdedge (reads version 1, 2); upgrade sdedge"));
  CHECK(manifest_refused(dir, [](Json &m) { m["format_version"] = 0; }, "re-export the bundle"));
  CHECK(manifest_refused(dir, [](Json &m) { m["format_version"] = "1"; }, "'format_version' must be an integer"));
  CHECK(manifest_refused(dir, [](Json &m) { m["format_version"] = true; }, "'format_version' must be an integer"));
  CHECK(manifest_refused(dir, [](Json &m) { m["format_version"] = 1.0; }, "'format_version' must be an integer"));

  // format version 2: section 1's exit head as a graph of its own (heads/h1.onnx, checksummed)
  {
    auto to_v2 = [&dir](Json &m) {
      write(dir / "heads/h1.onnx", "head one bytes");
      m["format_version"] = 2;
      Json &s1 = m["sections"][0];
      Json logits = s1["outputs"][1];
      s1["outputs"] = Json::array({s1["outputs"][0]});
      s1["head"] = {{"file", "heads/h1.onnx"}, {"sha256", sdedge::sha256_file((dir / "heads/h1.onnx").string())},
                    {"inputs", {s1["outputs"][0]}}, {"outputs", {logits}}, {"macs", 2}, {"params", 1}};
    };
    fs::remove_all(dir);
    Json m = good_manifest(dir);
    to_v2(m);
    write(dir / "manifest.json", m.dump(2));
    sdedge::Bundle b = sdedge::open_bundle(dir.string());
    CHECK(b.manifest.format_version == 2 && b.manifest.split_heads());
    CHECK(b.manifest.sections[0].head && b.manifest.sections[0].head->file == "heads/h1.onnx" &&
          b.manifest.sections[0].head->macs == 2 && b.manifest.sections[0].logits.name == "logits_1");
    CHECK(!b.manifest.sections[1].head && b.manifest.sections[0].macs == 10);
    write(dir / "heads/h1.onnx", "head one bytes, altered");
    CHECK(refused(dir, Code::Checksum, "heads/h1.onnx"));
    CHECK(manifest_refused(dir, [&](Json &m) { to_v2(m); m["sections"][0].erase("head"); }, "must have a head"));
    CHECK(manifest_refused(dir, [&](Json &m) { to_v2(m); m["sections"][1]["head"] = m["sections"][0]["head"]; },
                           "only format version 2 sections other than the last have a head"));
    CHECK(manifest_refused(dir, [&](Json &m) { to_v2(m); m["sections"][0]["head"]["inputs"][0]["name"] = "features_2"; },
                           "input must be the section's features 'features_1'"));
    CHECK(manifest_refused(dir, [&](Json &m) { to_v2(m); m["sections"][0]["head"]["outputs"][0]["name"] = "logits_9"; },
                           "logits output must be named 'logits_1'"));
    CHECK(manifest_refused(dir, [&](Json &m) { to_v2(m); m["sections"][0]["head"]["file"] = "../h.onnx"; }, "escapes"));
    CHECK(manifest_refused(dir, [&](Json &m) { to_v2(m); m["sections"][0]["head"]["int8_file"] = "int8/h1.onnx"; },
                           "int8_file and head.int8_file must be given together"));
    CHECK(manifest_refused(dir, [&](Json &m) { to_v2(m); m["format_version"] = 1; }, "must hold features and logits"));
    CHECK(manifest_refused(dir, [&](Json &m) { m["format_version"] = 2; }, "must hold features"));
    fs::remove_all(dir);
    good_manifest(dir);
  }

  // schema
  CHECK(manifest_refused(dir, [](Json &m) { m.erase("sections"); }, "manifest: missing key 'sections'"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"] = Json::array(); }, "at least one section"));
  CHECK(manifest_refused(dir, [](Json &m) { m["classes"] = {"only"}; }, "at least two class names"));
  CHECK(manifest_refused(dir, [](Json &m) { m["model"] = 3; }, "manifest.model must be an object"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["shape"] = {nullptr, 1, 4}; }, "input.shape must be [null, C, H, W]"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["shape"][1] = 0; }, "dimensions must be positive integers or null"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["std"] = {0.0}; }, "std and scale must be positive"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["mean"] = {0.1, 0.2}; }, "must have 1 values"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["mean"] = {"x"}; }, "must hold numbers"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["channel_order"] = "RGBA"; }, "channel_order must be RGB, BGR or L"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["inputs"][0]["name"] = "input"; }, "input must be named 'image'"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][1]["inputs"][0]["shape"] = {nullptr, 3, 2, 2}; }, "does not match the previous output"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["outputs"][1]["name"] = "logits"; }, "logits output must be named 'logits_1'"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][1]["outputs"][0]["shape"] = {nullptr, 4}; }, "logits shape must be [null, 3]"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["outputs"].erase(0); }, "outputs must hold features and logits"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["sha256"] = std::string(64, 'A'); }, "sha256 must be 64 lowercase hex digits"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["macs"] = -1; }, "macs must be a non-negative integer or null"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["file"] = 5; }, "sections[0].file: expected str, got int"));
  CHECK(manifest_refused(dir, [](Json &m) { m["files"] = Json::array(); }, "files must be an object"));
  CHECK(manifest_refused(dir, [](Json &m) { m["exits"] = 1; }, "exits must be a list"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["int8_file"] = "int8/s1.onnx"; }, "is not listed in files"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["fp16_file"] = "fp16/s1.onnx"; }, "fp16_file"));
  CHECK(manifest_refused(dir, [](Json &m) { m["sections"][0]["fp16_file"] = 7; }, "fp16_file"));

  // paths that escape the folder
  for (const char *bad : {"../outside.onnx", "/etc/passwd", "sections/../../x.onnx", "a\\b.onnx", "c:x.onnx", ".", "./"}) {
    CHECK(manifest_refused(dir, [bad](Json &m) { m["sections"][0]["file"] = bad; }, "escapes the bundle folder"));
    CHECK(manifest_refused(dir, [bad](Json &m) { m["files"][bad] = {{"sha256", std::string(64, '0')}}; }, "escapes the bundle folder"));
  }
  // a symlink inside that points outside
  fs::remove_all(dir);
  good_manifest(dir);
  write(root / "outside.onnx", "section two bytes");
  fs::remove(dir / "sections/s2.onnx");
  fs::create_symlink(root / "outside.onnx", dir / "sections/s2.onnx");
  CHECK(refused(dir, Code::Bundle, "resolves outside the bundle folder"));

  // missing and altered files: the message names the file
  fs::remove_all(dir);
  good_manifest(dir);
  fs::remove(dir / "sections/s2.onnx");
  CHECK(refused(dir, Code::Bundle, "bundle file sections/s2.onnx listed in the manifest is missing"));
  fs::remove_all(dir);
  good_manifest(dir);
  write(dir / "sections/s2.onnx", "section twO bytes");
  CHECK(refused(dir, Code::Checksum, "checksum mismatch for bundle file sections/s2.onnx"));
  CHECK(refused(dir, Code::Checksum, "altered or corrupt"));
  CHECK(error_of([&] { sdedge::open_bundle(dir.string(), false); }).second == "no error");  // verify=false skips
  fs::remove_all(dir);
  good_manifest(dir);
  write(dir / "calibration.json", "{}");
  CHECK(refused(dir, Code::Checksum, "bundle file calibration.json"));

  // hostile JSON files: nesting far past any sdedge file's (64 levels at most: copying or printing a value
  // recurses, so 200 000 would overflow the stack), a FIFO in place of calibration.json even with verify=false
  // (refused, not waited on), float32-degenerate preprocessing and temperatures
  fs::remove_all(dir);
  good_manifest(dir);
  write(dir / "manifest.json", "{\"format\": " + std::string(200000, '[') + std::string(200000, ']') + "}");
  CHECK(refused(dir, Code::Bundle, "nested deeper than 64 levels"));
  {
    Json m = good_manifest(dir);
    Json deep = 1;
    for (int i = 0; i < 62; ++i) deep = Json::array({deep});  // 63 levels with the manifest's own object: read
    m["model"]["note"] = deep;
    write(dir / "manifest.json", m.dump());
    CHECK(error_of([&] { sdedge::open_bundle(dir.string()); }).second == "no error");
    m["model"]["note"] = Json::array({Json::array({deep})});  // 65 levels
    write(dir / "manifest.json", m.dump());
    CHECK(refused(dir, Code::Bundle, "nested deeper than 64 levels"));
  }
  fs::remove_all(dir);
  good_manifest(dir);
  fs::remove(dir / "calibration.json");
  CHECK(::mkfifo((dir / "calibration.json").c_str(), 0600) == 0);
  {
    auto [code, msg] = error_of([&] { sdedge::load_calibration(sdedge::open_bundle(dir.string(), false)); });
    CHECK(code == Code::Bundle && msg.find("calibration.json is not a regular file") != std::string::npos);
  }
  fs::remove_all(dir);
  good_manifest(dir);
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["std"] = {1e-300}; }, "beyond float32's finite range"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["scale"] = 1e300; }, "beyond float32's finite range"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["scale"] = 1e-300; }, "to zero scale"));
  CHECK(manifest_refused(dir, [](Json &m) { m["input"]["preprocess"]["mean"] = {1e39}; }, "beyond float32's finite range"));

  // the same through the C ABI
  {
    sdedge_session *s = reinterpret_cast<sdedge_session *>(0x1);
    fs::remove_all(dir);
    good_manifest(dir);
    write(dir / "sections/s1.onnx", "tampered");
    CHECK_STATUS(sdedge_session_create(dir.c_str(), nullptr, &s), SDEDGE_E_CHECKSUM, "sections/s1.onnx");
    CHECK(s == nullptr);
    write(dir / "manifest.json", "not json");
    CHECK_STATUS(sdedge_session_create(dir.c_str(), nullptr, &s), SDEDGE_E_BUNDLE, "is not valid JSON");
    fs::remove_all(dir);
    Json m = good_manifest(dir);
    m["format_version"] = 3;
    write(dir / "manifest.json", m.dump());
    CHECK_STATUS(sdedge_session_create(dir.c_str(), nullptr, &s), SDEDGE_E_BUNDLE, "format_version 3");
  }

  // calibration.json
  auto cal_error = [](const Json &doc) { return error_of([&] { sdedge::parse_calibration(doc, 2, "calibration.json"); }).second; };
  Json cal = {{"format", "sdedge-calibration"}, {"format_version", 1}, {"temperatures", {1.0, 2.0}}};
  CHECK(cal_error(cal) == "no error");
  {
    sdedge::Calibration c = sdedge::parse_calibration(cal, 2, "c");
    CHECK(c.criterion == "max_prob" && c.enabled == (std::vector<bool>{true, true}) && !c.thresholds[0]);
  }
  CHECK(cal_error(Json{{"format", "sdedge-profile"}, {"format_version", 1}}).find("is not an sdedge calibration") != std::string::npos);
  CHECK(cal_error(Json{{"format", "sdedge-calibration"}, {"format_version", 2}}).find("upgrade sdedge") != std::string::npos);
  Json c2 = cal;
  c2["temperatures"] = {1e-300, 1.0};  // finite as a double, 0 as the float32 that divides the logits
  CHECK(cal_error(c2).find("temperatures[0] (exit 1) must be a positive finite number within float32's normal range") !=
        std::string::npos);
  c2["temperatures"] = {1.0, 1e39};
  CHECK(cal_error(c2).find("temperatures[1] (exit 2)") != std::string::npos);
  c2["temperatures"] = {1.0};
  CHECK(cal_error(c2).find("temperatures must be a list of 2 values") != std::string::npos);
  c2 = cal;
  c2["temperatures"] = {1.0, 0.0};
  CHECK(cal_error(c2).find("temperatures[1] (exit 2) must be a positive finite number") != std::string::npos);
  c2 = cal;
  c2["thresholds"] = {1.5, nullptr};
  CHECK(cal_error(c2).find("thresholds[0] (exit 1) must be a number in [0, 1] or null") != std::string::npos);
  c2 = cal;
  c2["enabled"] = {1, true};
  CHECK(cal_error(c2).find("enabled[0] (exit 1) must be true or false") != std::string::npos);
  c2 = cal;
  c2["criterion"] = "top5";
  CHECK(cal_error(c2).find("criterion \"top5\" is not one of") != std::string::npos);

  // latency profiles: reading and the section-time query
  Json prof = {{"format", "sdedge-profile"}, {"format_version", 1}, {"device", "dev"},
               {"batch_sizes", {{"1", {{"sections", {{{"index", 1}, {"p50_ms", 1.0}, {"p99_ms", 2.0}}, {{"index", 2}, {"mean_ms", 3.0}}}}}},
                                {"4", {{"sections", {{{"p99_ms", 5.0}}, {{"p99_ms", 6.0}}}}}}}},
               {"decision_overhead_ms", 0.01}};
  {
    sdedge::LatencyProfile p = sdedge::parse_profile(prof, 2, "profiles/dev.json");
    CHECK(p.section_ms(1, 1) == 2.0 && p.section_ms(1, 1, sdedge::Quantile::P50) == 1.0);
    CHECK(p.section_ms(2, 1) == 3.0);        // only the mean recorded
    CHECK(p.section_ms(1, 3) == 5.0);        // the next larger profiled batch
    CHECK(p.section_ms(2, 8) == 12.0);       // the largest, scaled linearly
    CHECK(p.decision_overhead_ms == 0.01 && p.fixed_per_call_ms == 0.0);
  }
  auto prof_error = [](const Json &doc) { return error_of([&] { sdedge::parse_profile(doc, 2, "profiles/dev.json"); }).second; };
  Json p2 = prof;
  p2["batch_sizes"]["x"] = p2["batch_sizes"]["1"];
  CHECK(prof_error(p2).find("batch size key 'x' is not an integer") != std::string::npos);
  p2 = prof;
  p2["batch_sizes"]["1"]["sections"][0]["p99_ms"] = -1;
  CHECK(prof_error(p2).find("must be a non-negative finite number of milliseconds") != std::string::npos);
  p2 = prof;
  p2["batch_sizes"]["1"]["sections"][1] = {{"index", 2}};
  CHECK(prof_error(p2).find("has none of p50_ms") != std::string::npos);
  p2 = prof;
  p2["batch_sizes"]["1"]["sections"].erase(1);
  CHECK(prof_error(p2).find("must list 2 sections, got 1") != std::string::npos);
  p2 = prof;
  p2["format_version"] = 7;
  CHECK(prof_error(p2).find("format_version 7") != std::string::npos);

  fs::remove_all(root);
  printf("unit_bundle: %s\n", check_failures ? "FAILED" : "ok");
  return TEST_RESULT();
}
