// calibration.hpp: calibration.json (format "sdedge-calibration" v1): criterion, per-exit temperatures,
// thresholds (null = none) and enabled flags, checked as runtime/calibration.py checks them.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "json_util.hpp"

namespace sdedge {

struct Bundle;

struct Calibration {
  std::string criterion = "max_prob";
  std::vector<double> temperatures;
  std::vector<std::optional<double>> thresholds;
  std::vector<bool> enabled;
};

// A whole calibration document (format header and fields) for a `num_exits`-exit bundle; messages name `where`.
Calibration parse_calibration(const Json &doc, int num_exits, const std::string &where);

// The bundle's calibration, or nullopt when the manifest lists none.
std::optional<Calibration> load_calibration(const Bundle &bundle);

}  // namespace sdedge
