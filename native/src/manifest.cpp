// manifest.cpp: manifest.json validation, rule for rule as runtime/manifest.py validate_manifest.
#include "manifest.hpp"

#include <cmath>
#include <limits>

#include "errors.hpp"
#include "paths.hpp"

namespace sdedge {

namespace {

// The one place that says which bundle format versions this core reads (runtime/manifest.py FORMAT_VERSIONS).
const std::initializer_list<int> kBundleVersions = {1, 2};

void require(bool cond, const std::string &msg) {
  if (!cond) bundle_error("malformed manifest: " + msg);
}

enum class Kind { Str, List, Dict, Number };

const char *kind_name(Kind k) {
  switch (k) {
    case Kind::Str: return "str";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    default: return "(int, float)";
  }
}

bool has_kind(const Json &v, Kind k) {
  switch (k) {
    case Kind::Str: return v.is_string();
    case Kind::List: return v.is_array();
    case Kind::Dict: return v.is_object();
    default: return is_number(v);
  }
}

const Json &get(const Json &d, const char *key, Kind k, const std::string &where) {
  auto it = d.find(key);
  require(it != d.end(), where + ": missing key '" + key + "'");
  require(has_kind(*it, k), where + "." + key + ": expected " + kind_name(k) + ", got " + py_type(*it));
  return *it;
}

std::string shape_str(const std::vector<std::int64_t> &shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + (shape[i] < 0 ? std::string("None") : std::to_string(shape[i]));
  return s + "]";
}

TensorSpec tensor_from_json(const Json &d, const std::string &where) {
  require(d.is_object(), where + ": expected an object with name/shape/dtype, got " + py_type(d));
  TensorSpec t;
  t.name = get(d, "name", Kind::Str, where).get<std::string>();
  const Json &shape = get(d, "shape", Kind::List, where);
  for (const Json &s : shape) {
    bool ok = s.is_null() || (is_int(s) && (s.is_number_unsigned() ? s.get<std::uint64_t>() > 0 : s.get<std::int64_t>() > 0));
    require(ok, where + ".shape: dimensions must be positive integers or null, got " + show(shape));
    if (s.is_null()) {
      t.shape.push_back(-1);
    } else {
      // beyond int64 cannot be a real dimension; clamp so the size checks below refuse it
      t.shape.push_back(s.is_number_unsigned() && s.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
                            ? std::numeric_limits<std::int64_t>::max()
                            : s.get<std::int64_t>());
    }
  }
  auto dt = d.find("dtype");
  if (dt != d.end()) {
    require(dt->is_string(), where + ".dtype must be a string");
    t.dtype = dt->get<std::string>();
  }
  return t;
}

std::vector<double> floats(const Json &values, const std::string &where) {
  std::vector<double> out;
  for (const Json &v : values) {
    require(is_number(v), (where + " must hold numbers, got " + show(v)).substr(0, 300));
    out.push_back(v.get<double>());
  }
  return out;
}

std::string hex64(const Json &v, const std::string &where) {
  bool ok = v.is_string();
  if (ok) {
    const std::string &s = v.get_ref<const std::string &>();
    ok = s.size() == 64;
    for (char c : s) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  }
  require(ok, where + ": sha256 must be 64 lowercase hex digits");
  return v.get<std::string>();
}

bool same_tail(const std::vector<std::int64_t> &a, const std::vector<std::int64_t> &b) {
  if (a.size() != b.size() || a.empty()) return a.size() == b.size();
  return std::equal(a.begin() + 1, a.end(), b.begin() + 1);
}

std::optional<std::int64_t> count(const Json &d, const char *key, const std::string &where) {
  auto v = d.find(key);
  bool ok = v == d.end() || v->is_null() || (v->is_number_unsigned() || (v->is_number_integer() && v->get<std::int64_t>() >= 0));
  require(ok, where + "." + key + " must be a non-negative integer or null");
  if (v == d.end() || v->is_null()) return std::nullopt;
  return v->get<std::int64_t>();
}

std::string optional_path(const Json &d, const char *key, const std::string &where) {
  auto v = d.find(key);
  if (v == d.end() || v->is_null()) return "";
  require(v->is_string(), where + "." + key + ": file path must be a non-empty string");
  return check_relpath(v->get<std::string>(), where + "." + key);
}

// A version-2 section's "head": its own graph from the section's features to its logits (_head in Python).
HeadSpec head_from_json(const Json &h, const std::string &where, const TensorSpec &features) {
  require(h.is_object(), where + " must be an object");
  HeadSpec head;
  head.file = check_relpath(get(h, "file", Kind::Str, where).get<std::string>(), where + ".file");
  head.sha256 = hex64(get(h, "sha256", Kind::Str, where), where + ".sha256");
  const Json &ins = get(h, "inputs", Kind::List, where);
  const Json &outs = get(h, "outputs", Kind::List, where);
  require(ins.size() == 1 && outs.size() == 1,
          where + " must have exactly one input (features) and one output (logits)");
  head.input = tensor_from_json(ins[0], where + ".inputs[0]");
  require(head.input.name == features.name && head.input.shape == features.shape,
          where + ": input must be the section's features '" + features.name + "' " + shape_str(features.shape) +
              ", got '" + head.input.name + "' " + shape_str(head.input.shape));
  head.logits = tensor_from_json(outs[0], where + ".outputs[0]");
  head.int8_file = optional_path(h, "int8_file", where);
  head.fp16_file = optional_path(h, "fp16_file", where);
  head.macs = count(h, "macs", where);
  head.params = count(h, "params", where);
  return head;
}

}  // namespace

std::string input_name(int section) { return section == 1 ? "image" : "features_" + std::to_string(section - 1); }
std::string features_name(int section) { return "features_" + std::to_string(section); }
std::string logits_name(int section) { return "logits_" + std::to_string(section); }

bool Manifest::has_file(const std::string &rel) const {
  for (const auto &f : files)
    if (f.first == rel) return true;
  return false;
}

Manifest validate_manifest(const Json &raw) {
  Manifest m;
  m.format_version = check_format(raw, kBundleFormat, kBundleVersions, "bundle", "manifest", "re-export the bundle");

  auto model = raw.find("model");
  require(model == raw.end() || model->is_object(), "manifest.model must be an object (name, backbone, method, ...)");
  const Json &inp = get(raw, "input", Kind::Dict, "manifest");
  m.input = tensor_from_json(inp, "input");
  const auto &ish = m.input.shape;
  require(ish.size() == 4 && ish[0] < 0 && ish[1] > 0 && ish[2] > 0 && ish[3] > 0,
          "input.shape must be [null, C, H, W], got " + shape_str(ish));
  // not in the Python reader (it would fail later, allocating): one image must fit in memory
  require(ish[1] <= (1 << 16) && ish[2] <= (1 << 16) && ish[3] <= (1 << 16) && ish[1] * ish[2] * ish[3] <= (1LL << 31),
          "input.shape " + shape_str(ish) + " is too large for one image");
  const Json &pre = get(inp, "preprocess", Kind::Dict, "input");
  auto channels = static_cast<std::size_t>(ish[1]);
  Preprocess &p = m.preprocess;
  p.mean = floats(get(pre, "mean", Kind::List, "input.preprocess"), "input.preprocess.mean");
  p.std = floats(get(pre, "std", Kind::List, "input.preprocess"), "input.preprocess.std");
  p.scale = floats(Json::array({get(pre, "scale", Kind::Number, "input.preprocess")}), "input.preprocess.scale")[0];
  require(p.mean.size() == channels && p.std.size() == channels,
          "input.preprocess mean/std must have " + std::to_string(channels) + " values (one per channel)");
  for (double v : p.mean) require(std::isfinite(v), "input.preprocess mean must be finite");
  bool pos = std::isfinite(p.scale) && p.scale > 0;
  for (double v : p.std) pos = pos && v > 0 && std::isfinite(v);
  require(pos, "input.preprocess std and scale must be positive and finite");
  // runtime/manifest.py _pixels_stay_finite: pixel * a + b in float32 finite, a non-zero, for 0..255
  bool finite32 = true;
  for (std::size_t c = 0; c < channels; ++c) {
    const float sd = static_cast<float>(p.std[c]);
    const float a = static_cast<float>(p.scale) / sd, b = -static_cast<float>(p.mean[c]) / sd;
    finite32 = finite32 && std::isfinite(a) && a != 0.0f && std::isfinite(b) && std::isfinite(255.0f * a + b);
  }
  require(finite32, "input.preprocess (scale, mean, std) maps pixel values 0..255 to zero scale or beyond float32's "
                    "finite range: values too small or too large for float32");
  auto order = pre.find("channel_order");
  if (order == pre.end()) {
    p.channel_order = channels == 3 ? "RGB" : "L";
  } else {
    bool ok = order->is_string() && (*order == "RGB" || *order == "BGR" || *order == "L");
    require(ok, "input.preprocess.channel_order must be RGB, BGR or L, got " + show(*order));
    p.channel_order = order->get<std::string>();
  }

  const Json &classes = get(raw, "classes", Kind::List, "manifest");
  bool cls_ok = classes.size() >= 2;
  for (const Json &c : classes) cls_ok = cls_ok && c.is_string();
  require(cls_ok, "classes must be a list of at least two class names");
  for (const Json &c : classes) m.classes.push_back(c.get<std::string>());
  const auto num_classes = static_cast<std::int64_t>(m.classes.size());

  const Json &secs = get(raw, "sections", Kind::List, "manifest");
  require(!secs.empty(), "sections must list at least one section");
  std::vector<std::int64_t> prev = m.input.shape;
  for (std::size_t i0 = 0; i0 < secs.size(); ++i0) {
    const int i = static_cast<int>(i0) + 1;
    const std::string where = "sections[" + std::to_string(i0) + "]";
    const Json &s = secs[i0];
    require(s.is_object(), where + " must be an object");
    SectionSpec sec;
    sec.index = i;
    sec.file = check_relpath(get(s, "file", Kind::Str, where).get<std::string>(), where + ".file");
    sec.sha256 = hex64(get(s, "sha256", Kind::Str, where), where + ".sha256");
    const Json &ins = get(s, "inputs", Kind::List, where);
    const Json &outs = get(s, "outputs", Kind::List, where);
    require(ins.size() == 1, where + ".inputs must hold exactly one tensor");
    sec.input = tensor_from_json(ins[0], where + ".inputs[0]");
    require(sec.input.name == input_name(i),
            where + ": input must be named '" + input_name(i) + "', got '" + sec.input.name + "'");
    require(same_tail(sec.input.shape, prev), where + ": input shape " + shape_str(sec.input.shape) +
                                                  " does not match the previous output " + shape_str(prev));
    const bool last = i0 + 1 == secs.size();
    const bool split = m.format_version == 2 && !last;  // a version-2 trunk: features out, its head apart
    require(outs.size() == (last || split ? 1u : 2u),
            where + ".outputs must hold " + (last ? "logits" : split ? "features" : "features and logits"));
    std::optional<TensorSpec> feats;
    if (!last) feats = tensor_from_json(outs[0], where + ".outputs[0]");
    if (split) {
      require(s.contains("head"), where + ": a format version 2 section other than the last must have a head");
      sec.head = head_from_json(s["head"], where + ".head", *feats);
      sec.logits = sec.head->logits;
    } else {
      require(!s.contains("head"), where + ": only format version 2 sections other than the last have a head");
      sec.logits = tensor_from_json(outs.back(), where + ".outputs[-1]");
    }
    if (feats) {
      const TensorSpec &f = *feats;
      require(f.name == features_name(i), where + ": features output must be named '" + features_name(i) + "'");
      require(f.shape.size() >= 2 && f.shape[0] < 0, where + ": features shape must start with a dynamic batch");
      for (std::size_t d = 1; d < f.shape.size(); ++d)  // not in Python: fixed feature dims are needed to size buffers
        require(f.shape[d] > 0 && f.shape[d] <= (1LL << 31), where + ": features shape " + shape_str(f.shape) +
                                                                 " must have fixed dimensions after the batch");
      prev = f.shape;
      sec.features = f;
    }
    require(sec.logits.name == logits_name(i), where + ": logits output must be named '" + logits_name(i) + "'");
    require(sec.logits.shape == std::vector<std::int64_t>{-1, num_classes},
            where + ": logits shape must be [null, " + std::to_string(num_classes) + "], got " + shape_str(sec.logits.shape));
    sec.macs = count(s, "macs", where);
    sec.params = count(s, "params", where);
    sec.int8_file = optional_path(s, "int8_file", where);
    sec.fp16_file = optional_path(s, "fp16_file", where);
    m.sections.push_back(std::move(sec));
  }

  auto files = raw.find("files");
  if (files != raw.end()) {
    require(files->is_object(), "files must be an object mapping relative paths to {sha256}");
    for (auto it = files->begin(); it != files->end(); ++it) {
      const std::string where = "files['" + it.key() + "']";
      std::string norm = check_relpath(it.key(), where);
      const Json &info = it.value();
      Json sha = info.is_object() ? (info.contains("sha256") ? info["sha256"] : Json()) : info;
      std::string hex = hex64(sha, where + ".sha256");
      bool replaced = false;  // "a/b" and "a/./b" name one file: the later entry wins, as in a dict
      for (auto &f : m.files)
        if (f.first == norm) f.second = hex, replaced = true;
      if (!replaced) m.files.emplace_back(norm, hex);
    }
  }
  for (const SectionSpec &s : m.sections) {
    const std::string where = "sections[" + std::to_string(s.index - 1) + "]";
    std::vector<std::pair<std::string, std::string>> extra = {{"int8_file", s.int8_file}, {"fp16_file", s.fp16_file}};
    if (s.head) {
      extra.emplace_back("head.int8_file", s.head->int8_file);
      extra.emplace_back("head.fp16_file", s.head->fp16_file);
      require(s.int8_file.empty() == s.head->int8_file.empty(),
              where + ": int8_file and head.int8_file must be given together");
      require(s.fp16_file.empty() == s.head->fp16_file.empty(),
              where + ": fp16_file and head.fp16_file must be given together");
    }
    for (const auto &[key, rel] : extra)
      if (!rel.empty()) require(m.has_file(rel), where + "." + key + " '" + rel + "' is not listed in files");
  }
  auto exits = raw.find("exits");
  require(exits == raw.end() || exits->is_array(), "exits must be a list");
  return m;
}

}  // namespace sdedge
