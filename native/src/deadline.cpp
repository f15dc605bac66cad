// deadline.cpp: the deadline rule (runtime/policies.py _Cell, LatencyEstimator, DeadlinePolicy), ported
// operation for operation so that both engines compute the same figures and decisions from the same
// samples; the rule numbers refer to the module docstring of runtime/policies.py.
#include "deadline.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "errors.hpp"

namespace sdedge {

// ---- one (section, rows) cell ------------------------------------------------------------------------

LatencyCell::LatencyCell(std::size_t window, double quantile) : window_(window), quantile_(quantile) {}

void LatencyCell::refigure() {
  // rule 2: the "higher" q-quantile (a sample: index ceil(q * (m - 1)) of the m sorted), max'd with the
  // larger of the last two samples
  const std::size_t m = ranked_.size();
  const auto idx = static_cast<std::size_t>(std::ceil(quantile_ * static_cast<double>(m - 1)));
  const double tail = ranked_[std::min(m - 1, idx)];
  fig_ = std::max(tail, order_.back());
  if (order_.size() >= 2) fig_ = std::max(fig_, order_[order_.size() - 2]);
}

void LatencyCell::add(double ms) {
  if (trimmed_to_) {  // the first run after a trim judges it (rule 4)
    interval_ = ms > *trimmed_to_ ? std::min(2 * interval_, kProbeMax) : kProbeFirst;
    trimmed_to_.reset();
  }
  skips_ = 0;
  if (order_.size() == window_) {
    const double old = order_.front();
    order_.pop_front();
    ranked_.erase(std::lower_bound(ranked_.begin(), ranked_.end(), old));
  }
  order_.push_back(ms);
  ranked_.insert(std::upper_bound(ranked_.begin(), ranked_.end(), ms), ms);  // bisect.insort (right)
  refigure();
}

void LatencyCell::skip() {
  ++skips_;
  if (skips_ >= interval_ && ranked_.size() >= 2) {
    const double top = ranked_.back();
    ranked_.pop_back();
    order_.erase(std::find(order_.begin(), order_.end(), top));  // the oldest of equal largest samples
    skips_ = 0;
    refigure();
    trimmed_to_ = fig_;
  }
}

void LatencyCell::settle() {
  const double med = ranked_[(ranked_.size() - 1) / 2];
  order_.assign(1, med);
  ranked_.assign(1, med);
  skips_ = 0;
  interval_ = kProbeFirst;
  trimmed_to_.reset();
  refigure();
}

// ---- the estimator ----------------------------------------------------------------------------------

std::string latency_options_problem(std::size_t window, double quantile) {
  if (!(quantile >= 0.5 && quantile <= 1.0))  // also refuses NaN
    return "latency_quantile must be in [0.5, 1], got " + std::to_string(quantile);
  if (window < 8) return "latency_window must hold at least 8 samples, got " + std::to_string(window);
  return "";
}

LatencyEstimator::LatencyEstimator(int num_sections, std::size_t window, double quantile)
    : window_(window), quantile_(quantile) {
  const std::string problem = latency_options_problem(window, quantile);
  if (!problem.empty()) fail(Code::Policy, problem);
  if (num_sections < 1) fail(Code::Internal, "a latency estimator needs at least one section");
  cells_.resize(static_cast<std::size_t>(num_sections) + 1);
  heads_.resize(static_cast<std::size_t>(num_sections) + 1);
}

std::map<std::int64_t, LatencyCell> &LatencyEstimator::cells_of(int section) {
  if (section < 0 || section >= static_cast<int>(cells_.size()))
    fail(Code::Internal, "latency estimator: no section " + std::to_string(section));
  return cells_[static_cast<std::size_t>(section)];
}

const std::map<std::int64_t, LatencyCell> &LatencyEstimator::cells_of(int section) const {
  return const_cast<LatencyEstimator *>(this)->cells_of(section);
}

void LatencyEstimator::add(Cells &cells, std::int64_t rows, double ms) {
  auto it = cells.find(rows);
  if (it == cells.end()) it = cells.emplace(rows, LatencyCell(window_, quantile_)).first;
  it->second.add(ms);
}

void LatencyEstimator::record(int section, std::int64_t rows, double ms) { add(cells_of(section), rows, ms); }

void LatencyEstimator::record_head(int section, std::int64_t rows, double ms) {
  cells_of(section);  // the range check
  add(heads_[static_cast<std::size_t>(section)], rows, ms);
}

void LatencyEstimator::record_full(std::int64_t rows, double ms) { add(full_, rows, ms); }

void LatencyEstimator::skipped(int section, std::int64_t rows) {
  auto &cells = cells_of(section);
  auto it = cells.find(rows);
  if (it != cells.end()) it->second.skip();
}

void LatencyEstimator::settle() {
  for (auto *all : {&cells_, &heads_})
    for (auto &cells : *all)
      for (auto &kv : cells) kv.second.settle();
  for (auto &kv : full_) kv.second.settle();
}

void LatencyEstimator::reset(std::optional<int> section) {
  if (section) {
    cells_of(*section).clear();
    heads_[static_cast<std::size_t>(*section)].clear();
  } else {
    for (auto &cells : cells_) cells.clear();
    for (auto &cells : heads_) cells.clear();
  }
  full_.clear();
}

const LatencyCell *LatencyEstimator::cell(int section, std::int64_t rows) const {
  const auto &cells = cells_of(section);
  auto it = cells.find(rows);
  return it == cells.end() ? nullptr : &it->second;
}

std::size_t LatencyEstimator::count(int section, std::int64_t rows) const {
  const LatencyCell *c = cell(section, rows);
  return c ? c->count() : 0;
}

std::optional<double> LatencyEstimator::estimate(int section, std::int64_t rows) const {
  const std::optional<double> trunk = figure(cells_of(section), rows);
  const Cells &head = heads_[static_cast<std::size_t>(section)];
  if (!trunk || head.empty()) return trunk;
  return *trunk + figure(head, rows).value_or(0.0);  // rule 8
}

std::optional<double> LatencyEstimator::figure(const Cells &cells, std::int64_t rows) {
  auto above = cells.lower_bound(rows);
  if (above != cells.end() && above->first == rows) return above->second.figure();
  // rule 3: the smallest larger count's figure (more rows never cost less) or the largest smaller
  // count's figure times rows / m (the cost per row never grows with the batch), the smaller of both
  const bool has_above = above != cells.end(), has_below = above != cells.begin();
  std::optional<double> scaled;
  if (has_below) {
    const auto below = std::prev(above);
    // (fig * rows) / m, in Python's order of operations
    scaled = below->second.figure() * static_cast<double>(rows) / static_cast<double>(below->first);
  }
  if (has_above && scaled) return std::min(above->second.figure(), *scaled);
  if (has_above) return above->second.figure();
  return scaled;
}

// ---- the decision -----------------------------------------------------------------------------------

DeadlinePolicy::DeadlinePolicy(int num_sections, std::optional<LatencyProfile> profile, std::size_t window,
                               double quantile, double margin_ms)
    : estimator_(num_sections, window, quantile), profile_(std::move(profile)), margin_ms_(margin_ms) {}

bool DeadlinePolicy::has_own(int section, std::int64_t rows) const {
  return estimator_.count(section, rows) >= std::min(static_cast<std::size_t>(kPriorSamples), estimator_.window());
}

std::optional<double> DeadlinePolicy::prior(int section, std::int64_t rows) const {
  if (!profile_ || has_own(section, rows)) return std::nullopt;  // rule 6: it steps aside after kPriorSamples
  return profile_->section_ms(section, rows, Quantile::P90);  // ... and the p90 is the prior (policies.py)
}

double DeadlinePolicy::section_cost_ms(int section, std::int64_t rows) const {
  std::optional<double> est = estimator_.estimate(section, rows);
  const std::optional<double> p = prior(section, rows);
  if (p) est = est ? std::max(*p, *est) : *p;
  return est.value_or(0.0);
}

double DeadlinePolicy::full_cost_ms(std::int64_t rows) const {
  double total = 0.0;
  for (int k = 1; k <= estimator_.num_sections(); ++k) total += section_cost_ms(k, rows);
  const std::optional<double> own = estimator_.estimate_full(rows);
  return own ? std::max(total, *own) : total;
}

bool DeadlinePolicy::full_fits(std::int64_t rows, double now_s, double deadline_s) const {
  return now_s + rounded((full_cost_ms(rows) + overhead_ms(rows)) * 1e-3) <= deadline_s;
}

double DeadlinePolicy::overhead_ms(std::int64_t rows) const {
  double est = estimator_.estimate(0, rows).value_or(0.0);
  if (profile_ && !has_own(0, rows)) est = std::max(est, profile_->decision_overhead_ms + profile_->fixed_per_call_ms);
  return est + margin_ms_;
}

bool DeadlinePolicy::should_stop(int next_section, std::int64_t rows, double now_s, double deadline_s) {
  const std::optional<double> online = estimator_.estimate(next_section, rows);
  const std::optional<double> p = prior(next_section, rows);
  const double ovh = overhead_ms(rows);
  const double cost = std::max(online.value_or(0.0), p.value_or(0.0));
  if (now_s + rounded((cost + ovh) * 1e-3) <= deadline_s) return false;
  if (online && (!p || now_s + rounded((*p + ovh) * 1e-3) <= deadline_s)) estimator_.skipped(next_section, rows);
  return true;
}

}  // namespace sdedge
