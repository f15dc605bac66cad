// profile.hpp: per-device latency profiles, profiles/<device>.json (format "sdedge-profile" v1),
// read and queried as runtime/profile.py does.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "json_util.hpp"

namespace sdedge {

struct Bundle;

// The quantiles of one section at one batch size; absent ones are NaN.
struct SectionQuantiles {
  double p50_ms, p90_ms, p99_ms, mean_ms;
};

enum class Quantile { P50, P90, P99, Mean };

struct LatencyProfile {
  std::string device;
  std::map<int, std::vector<SectionQuantiles>> sections;  // batch size -> per section (index 1..K)
  double decision_overhead_ms = 0.0;
  double fixed_per_call_ms = 0.0;

  // Predicted time of 1-based `section` at `batch` rows: the next larger profiled batch size, or the
  // largest scaled linearly; `q` missing -> the highest recorded of p99, p90, p50, mean answers.
  double section_ms(int section, long long batch, Quantile q = Quantile::P99) const;
};

LatencyProfile parse_profile(const Json &doc, int num_sections, const std::string &where);

// profiles/<device>.json of the bundle, or nullopt when the manifest lists none for that device.
std::optional<LatencyProfile> load_profile(const Bundle &bundle, const std::string &device);

}  // namespace sdedge
