#include "matrices.hpp"

#include "serial.hpp"

#include <fmt/core.h>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <ranges>
#include <stdexcept>

namespace mpx::workloads {

Eigen::MatrixXd goe(int n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  Eigen::MatrixXd m(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) m(i, j) = normal(rng);
  Eigen::MatrixXd sym = m + m.transpose();
  return sym;
}

double central_spacing(const Eigen::MatrixXd& symmetric) {
  const auto n = symmetric.rows();
  if (n < 2) throw std::invalid_argument("central_spacing: the matrix must be at least 2 x 2");
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(symmetric, Eigen::EigenvaluesOnly);
  if (solver.info() != Eigen::Success)
    throw std::runtime_error("central_spacing: eigenvalues did not converge");
  const Eigen::VectorXd& evals = solver.eigenvalues();  // ascending
  return evals[n / 2] - evals[n / 2 - 1];
}

double GoeSpacing::operator()(std::int64_t /*member: its identity is task_index()*/) const {
  std::mt19937_64 rng = task_rng(seed);
  return central_spacing(goe(n, rng));
}

namespace {

auto members(const EnsembleOptions& o) { return std::views::iota(std::int64_t{0}, o.count); }

}  // namespace

std::vector<double> goe_spacings_serial(const EnsembleOptions& o) {
  return serial_map(GoeSpacing{o.n, o.seed}, members(o));
}

std::vector<double> normalise_by_mean(const std::vector<double>& s) {
  if (s.empty()) return {};
  const double mean = std::accumulate(s.begin(), s.end(), 0.0) / static_cast<double>(s.size());
  std::vector<double> out(s.size());
  std::transform(s.begin(), s.end(), out.begin(), [mean](double x) { return x / mean; });
  return out;
}

Moments moments(const std::vector<double>& xs) {
  Moments m;
  if (xs.empty()) return m;
  m.mean = std::accumulate(xs.begin(), xs.end(), 0.0) / static_cast<double>(xs.size());
  if (xs.size() < 2) return m;
  double ss = 0;
  for (double x : xs) ss += (x - m.mean) * (x - m.mean);
  m.variance = ss / static_cast<double>(xs.size() - 1);
  return m;
}

double wigner_surmise(double s) {
  using std::numbers::pi;
  return pi * s / 2 * std::exp(-pi * s * s / 4);
}

Histogram histogram(const std::vector<double>& xs, std::size_t bins, double max) {
  Histogram h;
  h.max = max;
  h.density.assign(std::max<std::size_t>(1, bins), 0.0);
  h.total = xs.size();
  const double w = h.width();
  for (double x : xs) {
    if (x < 0 || x >= max) continue;
    auto b = std::min(h.density.size() - 1, static_cast<std::size_t>(x / w));
    h.density[b] += 1;
  }
  if (h.total)
    for (double& d : h.density) d /= static_cast<double>(h.total) * w;
  return h;
}

std::string render_terminal(const Histogram& h, int bar_width) {
  const double w = h.width();
  double top = 0;
  for (std::size_t b = 0; b < h.density.size(); ++b)
    top = std::max({top, h.density[b], wigner_surmise((static_cast<double>(b) + 0.5) * w)});
  if (top <= 0) top = 1;
  std::string out = fmt::format("{:>11}  {:>7} {:>7}  # ensemble, * Wigner surmise at the bin centre\n", "s",
                                "p(s)", "surmise");
  for (std::size_t b = 0; b < h.density.size(); ++b) {
    const double lo = static_cast<double>(b) * w;
    const double p = wigner_surmise(lo + w / 2);
    const auto len = static_cast<int>(std::lround(h.density[b] / top * bar_width));
    const auto mark = static_cast<int>(std::lround(p / top * bar_width));
    std::string bar(static_cast<std::size_t>(std::max(len, mark) + 1), ' ');
    for (int i = 0; i < len; ++i) bar[static_cast<std::size_t>(i)] = '#';
    bar[static_cast<std::size_t>(mark)] = '*';
    while (!bar.empty() && bar.back() == ' ') bar.pop_back();
    out += fmt::format("{:5.2f}-{:5.2f}  {:7.3f} {:7.3f}  |{}\n", lo, lo + w, h.density[b], p, bar);
  }
  return out;
}

std::string render_svg(const Histogram& h, const std::string& title, const std::string& note) {
  constexpr double W = 720, H = 440, left = 70, right = 20, top = 50, bottom = 60;
  const double pw = W - left - right, ph = H - top - bottom;
  const double w = h.width();
  double ymax = 0;
  for (double d : h.density) ymax = std::max(ymax, d);
  for (int i = 0; i <= 400; ++i) ymax = std::max(ymax, wigner_surmise(h.max * i / 400.0));
  ymax = std::ceil(ymax * 10 + 0.5) / 10;  // headroom, and a round top for the ticks
  auto X = [&](double s) { return left + s / h.max * pw; };
  auto Y = [&](double p) { return top + ph - p / ymax * ph; };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"13\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">{3}</text>\n",
      W, H, left + pw / 2, title);
  for (std::size_t b = 0; b < h.density.size(); ++b) {
    const double x0 = X(static_cast<double>(b) * w), x1 = X(static_cast<double>(b + 1) * w);
    svg += fmt::format(
        "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"#8fb3d9\" "
        "stroke=\"#3b6ea5\" "
        "stroke-width=\"0.8\"/>\n",
        x0, Y(h.density[b]), x1 - x0, Y(0) - Y(h.density[b]));
  }
  svg += "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2.2\" points=\"";
  for (int i = 0; i <= 400; ++i) {
    const double s = h.max * i / 400.0;
    svg += fmt::format("{:.2f},{:.2f} ", X(s), Y(wigner_surmise(s)));
  }
  svg += "\"/>\n";
  // Axes, ticks and labels.
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/>\n", left, Y(0),
                     left + pw);
  svg +=
      fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/>\n", left, top, Y(0));
  for (double s = 0; s <= h.max + 1e-9; s += 0.5)
    svg += fmt::format(
        "<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\" stroke=\"black\"/>"
        "<text x=\"{0:.2f}\" y=\"{3:.2f}\" text-anchor=\"middle\">{4:.1f}</text>\n",
        X(s), Y(0), Y(0) + 5, Y(0) + 20, s);
  for (double p = 0; p <= ymax + 1e-9; p += 0.1)
    svg += fmt::format(
        "<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{2:.2f}\" y2=\"{1:.2f}\" stroke=\"black\"/>"
        "<text x=\"{3:.2f}\" y=\"{4:.2f}\" text-anchor=\"end\">{5:.1f}</text>\n",
        left - 5, Y(p), left, left - 8, Y(p) + 4, p);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">normalised spacing s</text>\n",
                     left + pw / 2, H - 15);
  svg += fmt::format(
      "<text x=\"18\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0})\">probability density "
      "p(s)</text>\n",
      top + ph / 2);
  // Legend.
  const double lx = left + pw - 300, ly = top + 10;
  svg += fmt::format(
      "<rect x=\"{0}\" y=\"{1}\" width=\"14\" height=\"14\" fill=\"#8fb3d9\" stroke=\"#3b6ea5\"/>"
      "<text x=\"{2}\" y=\"{3}\">ensemble ({4} spacings)</text>\n"
      "<line x1=\"{0}\" y1=\"{5}\" x2=\"{6}\" y2=\"{5}\" stroke=\"#c0392b\" stroke-width=\"2.2\"/>"
      "<text x=\"{2}\" y=\"{7}\">Wigner surmise (πs/2) exp(−πs²/4)</text>\n",
      lx, ly, lx + 22, ly + 12, h.total, ly + 29, lx + 14, ly + 34);
  if (!note.empty()) svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", lx, ly + 56, note);
  svg += "</svg>\n";
  return svg;
}

}  // namespace mpx::workloads
