// confidence.hpp: the confidence criteria and the confidence policy (runtime/policies.py): softmax of
// temperature-scaled logits, max_prob / entropy / margin, per-exit thresholds compared in float32.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sdedge {

struct Calibration;

enum class Criterion { MaxProb, Entropy, Margin };

// "max_prob" | "entropy" | "margin"; PolicyError otherwise.
Criterion parse_criterion(const std::string &name);
const char *criterion_name(Criterion c);

// Row-wise softmax of logits / temperature in float32 (numerically stable); `out` may equal `logits`.
void softmax_rows(const float *logits, std::int64_t rows, std::int64_t classes, double temperature, float *out);
// Confidence in [0, 1] of one probability row.
float confidence_of(const float *probs, std::int64_t classes, Criterion c);

struct ConfidencePolicy {
  Criterion criterion = Criterion::MaxProb;
  std::vector<std::optional<double>> thresholds;  // per exit; the last is always none
  std::vector<std::optional<float>> thresholds32;  // the same rounded to float32: what rows are compared with
  std::vector<double> temperatures;               // per exit

  // Whether a threshold can stop a row before the deepest exit (ConfidencePolicy.active in Python).
  bool stops_early() const {
    for (std::size_t i = 0; i + 1 < thresholds.size(); ++i)
      if (thresholds[i]) return true;
    return false;
  }

  // No threshold (threshold NaN) or one threshold at every exit but the last; `calibrated` takes
  // calibration.json's thresholds where enabled, under its criterion (`criterion` must then be null or
  // match). Temperatures from the calibration whenever there is one. PolicyError on bad values.
  // `default_criterion` names the criterion when `criterion` is null and the thresholds are not the
  // calibrated ones. `per_exit` (when `n_per_exit` > 0): K-1 or K thresholds, NaN = none at that exit
  // (ConfidencePolicy.build's per-exit list); `threshold` must then be NaN and `calibrated` false.
  static ConfidencePolicy build(int num_exits, double threshold, bool calibrated, const char *criterion,
                                const Calibration *calibration, const char *default_criterion = "max_prob",
                                const double *per_exit = nullptr, int n_per_exit = 0);
};

}  // namespace sdedge
