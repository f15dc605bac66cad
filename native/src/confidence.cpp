// confidence.cpp: softmax, the three confidence criteria and building a confidence policy.
#include "confidence.hpp"

#include <algorithm>
#include <cmath>

#include "calibration.hpp"
#include "errors.hpp"

namespace sdedge {

Criterion parse_criterion(const std::string &name) {
  if (name == "max_prob") return Criterion::MaxProb;
  if (name == "entropy") return Criterion::Entropy;
  if (name == "margin") return Criterion::Margin;
  fail(Code::Policy, "unknown confidence criterion '" + name + "'; expected one of max_prob, entropy, margin");
}

const char *criterion_name(Criterion c) {
  return c == Criterion::MaxProb ? "max_prob" : c == Criterion::Entropy ? "entropy" : "margin";
}

void softmax_rows(const float *logits, std::int64_t rows, std::int64_t classes, double temperature, float *out) {
  const float t = static_cast<float>(temperature);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float *z = logits + r * classes;
    float *p = out + r * classes;
    for (std::int64_t i = 0; i < classes; ++i) p[i] = temperature == 1.0 ? z[i] : z[i] / t;
    const float mx = *std::max_element(p, p + classes);
    float sum = 0.0f;
    for (std::int64_t i = 0; i < classes; ++i) sum += (p[i] = std::exp(p[i] - mx));
    for (std::int64_t i = 0; i < classes; ++i) p[i] /= sum;
  }
}

float confidence_of(const float *p, std::int64_t classes, Criterion c) {
  switch (c) {
    case Criterion::MaxProb: return *std::max_element(p, p + classes);
    case Criterion::Margin: {
      float a = -1.0f, b = -1.0f;  // top-1, top-2
      for (std::int64_t i = 0; i < classes; ++i) {
        if (p[i] > a) b = a, a = p[i];
        else if (p[i] > b) b = p[i];
      }
      return a - b;
    }
    case Criterion::Entropy: {
      float s = 0.0f;
      for (std::int64_t i = 0; i < classes; ++i) s += p[i] * std::log(std::max(p[i], 1e-30f));
      const float v = 1.0f + s / static_cast<float>(std::log(static_cast<double>(classes)));
      return std::min(1.0f, std::max(0.0f, v));
    }
  }
  return 0.0f;
}

ConfidencePolicy ConfidencePolicy::build(int num_exits, double threshold, bool calibrated, const char *criterion,
                                         const Calibration *cal, const char *default_criterion, const double *per_exit,
                                         int n_per_exit) {
  const auto k = static_cast<std::size_t>(num_exits);
  ConfidencePolicy p;
  if (n_per_exit != 0) {
    if (!per_exit || n_per_exit < 0) fail(Code::Argument, "thresholds is NULL or num_thresholds is negative");
    if (calibrated || !std::isnan(threshold))
      fail(Code::Policy, "per-exit thresholds go without a single threshold or the calibrated ones");
    if (n_per_exit != num_exits - 1 && n_per_exit != num_exits)
      fail(Code::Policy, "a per-exit threshold list needs " + std::to_string(num_exits - 1) + " or " +
                             std::to_string(num_exits) + " values (one per exit), got " + std::to_string(n_per_exit));
    p.temperatures = cal ? cal->temperatures : std::vector<double>(k, 1.0);
    p.criterion = parse_criterion(criterion ? criterion : (default_criterion ? default_criterion : "max_prob"));
    for (int i = 0; i < num_exits; ++i) {
      const double v = i < n_per_exit ? per_exit[i] : NAN;
      if (std::isnan(v)) {
        p.thresholds.emplace_back(std::nullopt);
        continue;
      }
      if (!(v >= 0.0 && v <= 1.0))
        fail(Code::Policy, "threshold[" + std::to_string(i) + "] (exit " + std::to_string(i + 1) +
                               ") must be in [0, 1] (confidence is 1 - H/log C, max prob or top-1 minus top-2 prob), got " +
                               std::to_string(v));
      p.thresholds.emplace_back(v);
    }
    p.thresholds.back() = std::nullopt;
    for (const auto &t : p.thresholds)
      p.thresholds32.push_back(t ? std::optional<float>(static_cast<float>(*t)) : std::nullopt);
    return p;
  }
  p.temperatures = cal ? cal->temperatures : std::vector<double>(k, 1.0);
  if (calibrated) {
    if (!cal) fail(Code::Policy, "calibrated thresholds need calibration.json in the bundle; run `sdedge calibrate`");
    if (criterion && cal->criterion != criterion)
      fail(Code::Policy, "the calibrated thresholds are for criterion '" + cal->criterion + "', not '" + criterion +
                             "'; pass criterion '" + cal->criterion + "' (or NULL) or your own threshold");
    p.criterion = parse_criterion(cal->criterion);
    for (std::size_t i = 0; i < k; ++i) p.thresholds.push_back(cal->enabled[i] ? cal->thresholds[i] : std::nullopt);
  } else {
    p.criterion = parse_criterion(criterion ? criterion : (default_criterion ? default_criterion : "max_prob"));
    std::optional<double> t;
    if (!std::isnan(threshold)) {
      if (!(threshold >= 0.0 && threshold <= 1.0))
        fail(Code::Policy, "threshold must be in [0, 1] (confidence is 1 - H/log C, max prob or top-1 minus top-2 prob), "
                           "got " + std::to_string(threshold));
      t = threshold;
    }
    p.thresholds.assign(k, t);
  }
  p.thresholds.back() = std::nullopt;  // the deepest exit always answers
  for (const auto &t : p.thresholds)
    p.thresholds32.push_back(t ? std::optional<float>(static_cast<float>(*t)) : std::nullopt);
  return p;
}

}  // namespace sdedge
