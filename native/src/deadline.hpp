// deadline.hpp: the deadline rule, a port of runtime/policies.py (_Cell, LatencyEstimator, DeadlinePolicy).
//
// The rules are those of the module docstring of runtime/policies.py (rules 1-9): per (section, exact row
// count) cells that never age out; a cell's figure = max("higher" q-quantile, the larger of its last two
// samples); a row count never measured borrows pessimistically from the measured ones; a stop charged to
// a cell (its figure, not the profile's, made the cost not fit) trims the cell's largest sample every
// `interval` stops (16, doubling up to 2048 while the trims prove wrong); the warm-up keeps each cell's
// lower median (settle); cost = max(profile, online) and overhead = max(online cell (0, n), the profile's),
// the profile only until the cell has kPriorSamples samples of its own;
// exit heads of their own (bundle format version 2) are timed in cells of their own and a section's
// online figure is its trunk's plus its head's (rule 8); the whole network runs as one graph when it
// fits whole (rule 9).
// Everything here is deterministic in the sequence of record / should_stop / settle calls (no clock is
// read), and the same sequence gives the same figures and decisions as the Python classes, bit for bit:
// native/tests/unit_deadline.cpp replays traces the Python classes wrote (native/tests/vectors/).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <vector>

#include "profile.hpp"

namespace sdedge {

constexpr std::int64_t kProbeFirst = 16;   // charged stops of a cell between two trims, at first ...
constexpr std::int64_t kProbeMax = 2048;  // ... doubled after each trim the next run proved wrong, up to this
constexpr std::int64_t kPriorSamples = 32;  // rules 6-7: a cell with this many samples sets the profile aside

// `x` rounded to double here: keeps the compiler from fusing a*b+c into one FMA (one rounding) across
// this point, where Python rounds every operation; a fused rounding could flip a decision at the edge.
inline double rounded(double x) {
  volatile double v = x;
  return v;
}

// The measurements of one section at one exact row count (rules 1-4).
class LatencyCell {
 public:
  LatencyCell(std::size_t window, double quantile);
  void add(double ms);   // one run (rule 1); judges the last trim (rule 4)
  void skip();           // one deadline stop charged to this cell (rule 4)
  void settle();         // keep only the lower median of the samples (rule 5)
  double figure() const { return fig_; }
  std::size_t count() const { return order_.size(); }
  std::int64_t interval() const { return interval_; }

 private:
  void refigure();

  std::deque<double> order_;    // the samples, oldest first
  std::vector<double> ranked_;  // the same samples, ascending
  std::size_t window_;
  double quantile_;
  double fig_ = 0.0;                 // the figure (rule 2), kept current
  std::int64_t skips_ = 0;           // charged stops since the last sample or trim
  std::int64_t interval_ = kProbeFirst;
  std::optional<double> trimmed_to_;  // the figure right after a trim, until the next sample
};

// What is wrong with these online-estimate options (runtime/policies.py check_latency_options), "" if nothing:
// a quantile in [0.5, 1], a window of at least 8 samples.
std::string latency_options_problem(std::size_t window, double quantile);

// Online figures of each section (1..K) and of the runtime's own time per call (0), per exact row count.
class LatencyEstimator {
 public:
  // window >= 8 samples per cell, quantile in [0.5, 1] (Code::Policy otherwise, as PolicyError in Python)
  explicit LatencyEstimator(int num_sections, std::size_t window = 256, double quantile = 0.99);
  void record(int section, std::int64_t rows, double ms);
  void record_head(int section, std::int64_t rows, double ms);  // the exit head of `section`, run apart (rule 8)
  void record_full(std::int64_t rows, double ms);  // the whole network as one graph (rule 9)
  std::optional<double> estimate_full(std::int64_t rows) const { return figure(full_, rows); }
  void skipped(int section, std::int64_t rows);  // a stop charged to cell (section, rows), if it exists
  void settle();                                 // every cell keeps its lower median (after the warm-up)
  void reset(std::optional<int> section = std::nullopt);  // forget one section's cells (0 = overhead) or all
  std::size_t count(int section, std::int64_t rows) const;
  // The figure (ms) of `section` on `rows` rows (rules 2-3), plus its head's where that runs apart (rule 8);
  // nullopt only before the section's first sample.
  std::optional<double> estimate(int section, std::int64_t rows) const;
  // The cell (section, rows) itself, or nullptr (tests, diagnostics).
  const LatencyCell *cell(int section, std::int64_t rows) const;
  int num_sections() const { return static_cast<int>(cells_.size()) - 1; }
  std::size_t window() const { return window_; }

 private:
  using Cells = std::map<std::int64_t, LatencyCell>;
  Cells &cells_of(int section);
  const Cells &cells_of(int section) const;
  static std::optional<double> figure(const Cells &cells, std::int64_t rows);  // rules 2-3 on one set of cells
  void add(Cells &cells, std::int64_t rows, double ms);

  std::size_t window_;
  double quantile_;
  std::vector<Cells> cells_;  // [section 0..K] rows -> cell
  std::vector<Cells> heads_;  // [section 0..K] rows -> the exit head's cell (rule 8; empty for version 1)
  Cells full_;                // rows -> the full graph's cell (rule 9)
};

// Decides before each next section whether it still fits before the deadline (rules 6-7).
class DeadlinePolicy {
 public:
  DeadlinePolicy(int num_sections, std::optional<LatencyProfile> profile, std::size_t window = 256,
                 double quantile = 0.99, double margin_ms = 0.0);

  // One run of 1-based `section` (0 = the runtime's own per-call time) on `rows` rows took `ms`.
  void record(int section, std::int64_t rows, double ms) { estimator_.record(section, rows, ms); }
  void record_head(int section, std::int64_t rows, double ms) { estimator_.record_head(section, rows, ms); }
  void record_full(std::int64_t rows, double ms) { estimator_.record_full(rows, ms); }
  // Rule 9: the whole network on `rows` rows (the sum of the sections' costs, or the full graph's own figure
  // when larger), and whether it ends by `deadline_s` when started at `now_s`.
  double full_cost_ms(std::int64_t rows) const;
  bool full_fits(std::int64_t rows, double now_s, double deadline_s) const;
  void settle() { estimator_.settle(); }
  // True when section `next_section` on `rows` rows, started at `now_s`, would end after `deadline_s`
  // (seconds on the session's clock). A stop that the online figure alone causes (the profile's figure,
  // if any, would fit) is charged to that cell (rule 4).
  bool should_stop(int next_section, std::int64_t rows, double now_s, double deadline_s);

  // The larger of the profile's and the online figure (0 while neither exists); the profile's only until the
  // cell has kPriorSamples samples of its own (rule 6).
  double section_cost_ms(int section, std::int64_t rows) const;
  // The online figure of cell (0, rows) or, when larger, the profile's decision + fixed overhead; + margin.
  double overhead_ms(std::int64_t rows) const;

  const LatencyEstimator &estimator() const { return estimator_; }
  LatencyEstimator &estimator() { return estimator_; }
  const std::optional<LatencyProfile> &profile() const { return profile_; }

 private:
  std::optional<double> prior(int section, std::int64_t rows) const;
  bool has_own(int section, std::int64_t rows) const;

  LatencyEstimator estimator_;
  std::optional<LatencyProfile> profile_;
  double margin_ms_;
};

}  // namespace sdedge
