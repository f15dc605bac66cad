// bundle.hpp: open and verify a bundle folder (runtime/bundle.py open_bundle): parse manifest.json,
// validate it, check the sha256 of every section and every listed file, refuse naming the file.
#pragma once

#include <optional>
#include <string>

#include "json_util.hpp"
#include "manifest.hpp"

namespace sdedge {

constexpr const char *kCalibrationName = "calibration.json";
constexpr const char *kProfilesDir = "profiles";
constexpr std::uint64_t kMaxManifestBytes = kMaxJsonBytes;

struct Bundle {
  std::string path;  // the folder as given
  Manifest manifest;

  // Absolute-or-relative path of a bundle-relative file (checked with check_relpath).
  std::string file(const std::string &rel) const;
  // Parsed calibration.json / profiles/<device>.json when the manifest lists it, else nullopt.
  std::optional<Json> calibration_json() const;
  std::optional<Json> profile_json(const std::string &device) const;
};

// Parse manifest.json of the folder `path` (existence, size cap, JSON) without validating it.
Json read_manifest(const std::string &path);

// Load, validate and (when `verify`) check every checksum. BundleError / ChecksumError (Code::Checksum).
Bundle open_bundle(const std::string &path, bool verify = true);

}  // namespace sdedge
