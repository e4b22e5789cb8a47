// Random matrix theory: the spacing of the two central eigenvalues of GOE matrices, over an
// ensemble computed on the pool, against the Wigner surmise.
#pragma once

#include <mpx/pool.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <ranges>
#include <string>
#include <vector>

namespace mpx::workloads {

// An n x n matrix m of standard normals (drawn row by row), returned as m + m^T.
Eigen::MatrixXd goe(int n, std::mt19937_64& rng);

// evals[n/2] - evals[n/2 - 1] of the sorted eigenvalues (Eigen's symmetric solver, values only).
double central_spacing(const Eigen::MatrixXd& symmetric);

// One ensemble member as a pool task: matrix i of the ensemble draws from task_rng(seed), a
// stream fixed by (seed, i) alone, so the ensemble is the same for any workers or chunking.
struct GoeSpacing {
  int n = 50;
  std::uint64_t seed = 0;
  double operator()(std::int64_t member) const;
  template <class A>
  void serialize(A& a) {
    a(n, seed);
  }
};

struct EnsembleOptions {
  int n = 50;                 // matrix size
  std::int64_t count = 1000;  // matrices
  std::uint64_t seed = 2024;
  std::size_t chunksize = 0;  // 0: about 8 tasks per worker (progress and balance)
};

// About 8 chunks per worker: progress and balance, with the per-chunk cost lost in the work.
inline std::size_t default_chunksize(std::size_t members, unsigned processes) {
  return std::max<std::size_t>(1, members / (8 * std::max(1U, processes)));
}

// The raw central spacings of the ensemble, in member order. `progress(done, total)` runs in
// this thread as results come in. `pool` is an mpx::Pool or an mpx::mpi::Pool: the same tasks,
// the same spacings.
template <class P>
std::vector<double> goe_spacings(P& pool, const EnsembleOptions& o,
                                 const std::function<void(std::size_t, std::size_t)>& progress = {}) {
  const auto total = static_cast<std::size_t>(std::max<std::int64_t>(0, o.count));
  const std::size_t chunk = o.chunksize ? o.chunksize : default_chunksize(total, pool.processes());
  std::vector<double> out;
  out.reserve(total);
  // imap keeps input order (member i's spacing lands at i) and lets progress be reported.
  for (double s : pool.imap(GoeSpacing{o.n, o.seed}, std::views::iota(std::int64_t{0}, o.count), chunk)) {
    out.push_back(s);
    if (progress) progress(out.size(), total);
  }
  return out;
}
// The same ensemble computed in this process (the serial baseline; identical values).
std::vector<double> goe_spacings_serial(const EnsembleOptions& o);

// Spacings divided by their mean (so their mean is 1).
std::vector<double> normalise_by_mean(const std::vector<double>& s);

struct Moments {
  double mean = 0;
  double variance = 0;  // sample variance (n - 1)
};
Moments moments(const std::vector<double>& xs);

// p(s) = (pi s / 2) exp(-pi s^2 / 4): mean 1, variance 4/pi - 1.
double wigner_surmise(double s);
inline constexpr double kSurmiseVariance = 0.27323954473516276;  // 4/pi - 1
inline constexpr double kGoeVariance = 0.286;                    // large-n GOE, for comparison

// A density histogram on [0, max) (values beyond fall in no bin but count in the total).
struct Histogram {
  double max = 3.5;
  std::vector<double> density;  // per bin, normalised so that sum(density) * width == share in range
  std::size_t total = 0;
  double width() const { return density.empty() ? 0 : max / static_cast<double>(density.size()); }
};
Histogram histogram(const std::vector<double>& xs, std::size_t bins, double max);

// Rows of bars for a terminal, `#` for the ensemble and `*` where the surmise falls.
std::string render_terminal(const Histogram& h, int bar_width = 50);
// A standalone SVG picture: bars, the surmise curve, axes with ticks, labels and a legend (with
// `note` as its last line). Text is inserted as is: no markup characters.
std::string render_svg(const Histogram& h, const std::string& title, const std::string& note = "");

}  // namespace mpx::workloads
