// calibration.cpp: the calibration.json reader (runtime/calibration.py parse_calibration).
#include "calibration.hpp"

#include <cmath>
#include <limits>

#include "bundle.hpp"
#include "errors.hpp"
#include "paths.hpp"

namespace sdedge {

namespace {
const std::initializer_list<int> kCalibrationVersions = {1};

[[noreturn]] void bad(const std::string &msg, const std::string &where) { bundle_error("malformed " + where + ": " + msg); }
}  // namespace

Calibration parse_calibration(const Json &d, int num_exits, const std::string &where) {
  check_format(d, "sdedge-calibration", kCalibrationVersions, "calibration", where,
               "re-run `sdedge calibrate` on the bundle");
  Calibration c;
  auto crit = d.find("criterion");
  if (crit != d.end()) {
    if (!crit->is_string() || (*crit != "max_prob" && *crit != "entropy" && *crit != "margin"))
      bad("criterion " + show(*crit) + " is not one of max_prob, entropy, margin", where);
    c.criterion = crit->get<std::string>();
  }
  const auto n = static_cast<std::size_t>(num_exits);
  auto list = [&](const char *key) -> const Json * {
    auto it = d.find(key);
    if (it == d.end()) return nullptr;  // the default: one value per exit
    if (!it->is_array() || it->size() != n)
      bad(std::string(key) + " must be a list of " + std::to_string(n) + " values (one per exit), got " + show(*it), where);
    return &*it;
  };
  const Json *temps = list("temperatures"), *thr = list("thresholds"), *en = list("enabled");
  for (std::size_t i = 0; i < n; ++i) {
    const std::string at = "[" + std::to_string(i) + "] (exit " + std::to_string(i + 1) + ")";
    double t = 1.0;
    if (temps) {
      const Json &v = (*temps)[i];
      // temperatures divide float32 logits: within float32's normal range (runtime/calibration.py)
      if (!is_number(v) || !(v.get<double>() >= static_cast<double>(std::numeric_limits<float>::min()) &&
                             v.get<double>() <= static_cast<double>(std::numeric_limits<float>::max())))
        bad("temperatures" + at + " must be a positive finite number within float32's normal range "
            "(1.18e-38..3.4e+38), got " + show(v), where);
      t = v.get<double>();
    }
    c.temperatures.push_back(t);
    std::optional<double> th;
    if (thr && !(*thr)[i].is_null()) {
      const Json &v = (*thr)[i];
      if (!is_number(v) || !(v.get<double>() >= 0.0 && v.get<double>() <= 1.0))
        bad("thresholds" + at + " must be a number in [0, 1] or null, got " + show(v), where);
      th = v.get<double>();
    }
    c.thresholds.push_back(th);
    bool e = true;
    if (en) {
      const Json &v = (*en)[i];
      if (!v.is_boolean()) bad("enabled" + at + " must be true or false, got " + show(v), where);
      e = v.get<bool>();
    }
    c.enabled.push_back(e);
  }
  return c;
}

std::optional<Calibration> load_calibration(const Bundle &bundle) {
  std::optional<Json> raw = bundle.calibration_json();
  if (!raw) return std::nullopt;
  return parse_calibration(*raw, bundle.manifest.num_exits(), join_path(bundle.path, kCalibrationName));
}

}  // namespace sdedge
