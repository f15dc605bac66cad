// bundle.cpp: the bundle reader: manifest parsing, checksum verification, optional JSON files.
#include "bundle.hpp"

#include "errors.hpp"
#include "paths.hpp"
#include "sha256.hpp"

namespace sdedge {

std::string Bundle::file(const std::string &rel) const { return join_path(path, check_relpath(rel, "file")); }

std::optional<Json> Bundle::calibration_json() const {
  if (!manifest.has_file(kCalibrationName)) return std::nullopt;
  return read_json_file(file(kCalibrationName));
}

std::optional<Json> Bundle::profile_json(const std::string &device) const {
  const std::string rel = std::string(kProfilesDir) + "/" + device + ".json";
  if (!manifest.has_file(rel)) return std::nullopt;
  return read_json_file(file(rel));
}

Json read_manifest(const std::string &root) {
  if (!path_exists(root))
    bundle_error("bundle folder " + root + " does not exist");
  if (!is_dir(root))
    bundle_error(root + " is not a bundle folder (expected a folder holding " + kManifestName + ")");
  const std::string mpath = join_path(root, kManifestName);
  if (!is_regular_file(mpath)) bundle_error(root + " is not a bundle: " + kManifestName + " is missing");
  return read_json_file(mpath, "manifest: ", kMaxManifestBytes);
}

namespace {

void verify_file(const std::string &root, const std::string &root_real, const std::string &rel,
                 const std::string &expected) {
  const std::string p = join_path(root, rel);
  if (!is_regular_file(p)) bundle_error("bundle file " + rel + " listed in the manifest is missing from " + root);
  const std::string real = resolve(p);
  if (!is_inside(root_real, real))
    bundle_error("bundle file " + rel + " resolves outside the bundle folder (" + real + ")");
  const std::string got = sha256_file(p);
  if (got != expected) {
    fail(Code::Checksum, "checksum mismatch for bundle file " + rel + ": manifest says " + expected.substr(0, 12) +
                             "..., file has " + got.substr(0, 12) + "... (altered or corrupt)");
  }
}

}  // namespace

Bundle open_bundle(const std::string &path, bool verify) {
  Bundle b{path, validate_manifest(read_manifest(path))};
  if (verify) {
    const std::string root_real = resolve(path);
    for (const SectionSpec &s : b.manifest.sections) {
      verify_file(path, root_real, s.file, s.sha256);
      if (s.head) verify_file(path, root_real, s.head->file, s.head->sha256);
    }
    for (const auto &f : b.manifest.files) verify_file(path, root_real, f.first, f.second);
  }
  return b;
}

}  // namespace sdedge
