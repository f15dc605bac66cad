// profile.cpp: the latency-profile reader and its section-time query (runtime/profile.py).
#include "profile.hpp"

#include <cctype>
#include <cmath>
#include <limits>

#include "bundle.hpp"
#include "errors.hpp"

namespace sdedge {

namespace {
const std::initializer_list<int> kProfileVersions = {1};
const double kNaN = std::numeric_limits<double>::quiet_NaN();

[[noreturn]] void bad(const std::string &msg) { bundle_error("malformed latency profile: " + msg); }

double ms(const Json &v, const std::string &where) {
  if (!is_number(v) || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
    bad(where + " must be a non-negative finite number of milliseconds, got " + show(v));
  return v.get<double>();
}

// Python's int(key) for the keys sdedge writes: optional blanks and sign, then decimal digits.
bool parse_int_key(const std::string &key, long long &out) {
  std::size_t i = 0, j = key.size();
  while (i < j && std::isspace(static_cast<unsigned char>(key[i]))) ++i;
  while (j > i && std::isspace(static_cast<unsigned char>(key[j - 1]))) --j;
  bool neg = false;
  if (i < j && (key[i] == '+' || key[i] == '-')) neg = key[i++] == '-';
  if (i == j) return false;
  long long v = 0;
  for (; i < j; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(key[i]))) return false;
    if (v > 100000000) v = 100000000;  // far beyond any batch size; stays >= 1
    v = v * 10 + (key[i] - '0');
  }
  out = neg ? -v : v;
  return true;
}
}  // namespace

LatencyProfile parse_profile(const Json &d, int num_sections, const std::string &where) {
  check_format(d, "sdedge-profile", kProfileVersions, "latency profile", where, "re-run `sdedge calibrate` on the bundle");
  LatencyProfile p;
  auto dev = d.find("device");
  if (dev == d.end() || !dev->is_string() || dev->get<std::string>().empty()) bad("'device' must be a non-empty string");
  p.device = dev->get<std::string>();
  auto bs = d.find("batch_sizes");
  if (bs == d.end() || !bs->is_object() || bs->empty()) bad("'batch_sizes' must be a non-empty object keyed by batch size");
  for (auto it = bs->begin(); it != bs->end(); ++it) {
    const std::string &key = it.key();
    long long b = 0;
    if (!parse_int_key(key, b)) bad("batch size key '" + key + "' is not an integer");
    if (b < 1) bad("batch size key '" + key + "' must be >= 1");
    const Json &entry = it.value();
    const Json *secs = entry.is_object() && entry.contains("sections") ? &entry["sections"] : nullptr;
    if (!secs || !secs->is_array() || secs->size() != static_cast<std::size_t>(num_sections)) {
      std::string got = secs && secs->is_array() ? std::to_string(secs->size()) : (secs ? py_type(*secs) : "NoneType");
      bad("batch_sizes['" + key + "'].sections must list " + std::to_string(num_sections) + " sections, got " + got);
    }
    std::vector<SectionQuantiles> rows;
    for (int i = 1; i <= num_sections; ++i) {
      const std::string w = "batch_sizes['" + key + "'].sections[" + std::to_string(i - 1) + "]";
      const Json &s = (*secs)[static_cast<std::size_t>(i - 1)];
      bool ok = s.is_object();
      if (ok && s.contains("index")) ok = is_number(s["index"]) && s["index"].get<double>() == i;
      if (!ok) bad(w + " must be an object with index " + std::to_string(i));
      SectionQuantiles q{kNaN, kNaN, kNaN, kNaN};
      bool any = false;
      const std::pair<const char *, double *> keys[] = {
          {"p50_ms", &q.p50_ms}, {"p90_ms", &q.p90_ms}, {"p99_ms", &q.p99_ms}, {"mean_ms", &q.mean_ms}};
      for (const auto &k : keys) {
        if (s.contains(k.first)) *k.second = ms(s[k.first], w + "." + k.first), any = true;
      }
      if (!any) bad(w + " has none of p50_ms, p90_ms, p99_ms, mean_ms");
      rows.push_back(q);
    }
    p.sections[static_cast<int>(b)] = std::move(rows);  // "8" and "08": the later wins, as in Python
  }
  p.decision_overhead_ms = d.contains("decision_overhead_ms") ? ms(d["decision_overhead_ms"], "decision_overhead_ms") : 0.0;
  p.fixed_per_call_ms = d.contains("fixed_per_call_ms") ? ms(d["fixed_per_call_ms"], "fixed_per_call_ms") : 0.0;
  return p;
}

double LatencyProfile::section_ms(int section, long long batch, Quantile quantile) const {
  auto it = sections.lower_bound(static_cast<int>(std::min<long long>(batch, std::numeric_limits<int>::max())));
  double scale = 1.0;
  if (it == sections.end()) {
    it = std::prev(sections.end());
    scale = static_cast<double>(batch) / it->first;
  }
  const SectionQuantiles &q = it->second.at(static_cast<std::size_t>(section - 1));
  double first = quantile == Quantile::P50 ? q.p50_ms : quantile == Quantile::P90 ? q.p90_ms
               : quantile == Quantile::Mean ? q.mean_ms : q.p99_ms;
  for (double v : {first, q.p99_ms, q.p90_ms, q.p50_ms, q.mean_ms})
    if (!std::isnan(v)) return v * scale;
  fail(Code::Internal, "latency profile entry without quantiles");  // parse_profile refuses these
}

std::optional<LatencyProfile> load_profile(const Bundle &bundle, const std::string &device) {
  std::optional<Json> raw = bundle.profile_json(device);
  if (!raw) return std::nullopt;
  const std::string rel = std::string(kProfilesDir) + "/" + device + ".json";
  LatencyProfile p = parse_profile(*raw, bundle.manifest.num_exits(), rel);
  if (p.device != device) bad(rel + " says it is for device '" + p.device + "'");
  return p;
}

}  // namespace sdedge
