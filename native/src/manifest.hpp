// manifest.hpp: the bundle manifest's schema, validation and typed view (runtime/manifest.py).
// The format versions this core reads are listed in one place, kBundleVersions in manifest.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "json_util.hpp"

namespace sdedge {

constexpr const char *kBundleFormat = "sdedge-bundle";
constexpr const char *kManifestName = "manifest.json";

// Section k (1-based) takes "image" (k = 1) or "features_{k-1}" and returns "features_k" and "logits_k".
std::string input_name(int section);
std::string features_name(int section);
std::string logits_name(int section);

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;  // -1 = dynamic (null in JSON: the batch)
  std::string dtype = "float32";
};

// A section's exit head as a graph of its own (format version 2): features_k -> logits_k.
struct HeadSpec {
  std::string file;
  std::string sha256;
  TensorSpec input;   // == the section's features
  TensorSpec logits;
  std::optional<std::int64_t> macs, params;
  std::string int8_file, fp16_file;  // "" when none
};

struct SectionSpec {
  int index = 0;  // 1-based
  std::string file;
  std::string sha256;
  TensorSpec input;
  std::optional<TensorSpec> features;  // none for the last section
  TensorSpec logits;
  std::optional<std::int64_t> macs, params;
  std::string int8_file;  // "" when none
  std::string fp16_file;  // "" when none (float16 graph, float32 I/O: sdedge export --fp16)
  // Format version 2, every section but the last: the exit head's own graph (the section's file then
  // returns features only). macs/params above stay the section with its head, as in version 1.
  std::optional<HeadSpec> head;
};

// (pixel * scale - mean) / std per channel; channel_order "RGB", "BGR" or "L".
struct Preprocess {
  double scale = 1.0;
  std::vector<double> mean, std;
  std::string channel_order;
};

struct Manifest {
  int format_version = 0;
  TensorSpec input;  // [-1, C, H, W]
  Preprocess preprocess;
  std::vector<std::string> classes;
  std::vector<SectionSpec> sections;
  std::vector<std::pair<std::string, std::string>> files;  // normalised relative path -> sha256, file order

  int num_exits() const { return static_cast<int>(sections.size()); }
  bool split_heads() const { return sections.size() > 1 && sections.front().head.has_value(); }
  int num_classes() const { return static_cast<int>(classes.size()); }
  bool has_file(const std::string &rel) const;
};

// Check `raw` (parsed manifest.json) and return the typed view; BundleError naming the first problem.
Manifest validate_manifest(const Json &raw);

}  // namespace sdedge
