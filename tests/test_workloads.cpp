// The three workloads on the pool: known answers, results independent of the number of workers
// and of chunking, and sane statistics.
#include <doctest/doctest.h>
#include <mpx/managers.hpp>
#include <mpx/pool.hpp>
#include <mpx/process.hpp>

#include "task_queue_pool.hpp"
#include "workloads/matrices.hpp"
#include "workloads/options.hpp"
#include "workloads/primes.hpp"
#include "workloads/serial.hpp"
#include "workloads/tasks.hpp"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <ranges>
#include <stdexcept>
#include <vector>

namespace wl = mpx::workloads;

TEST_CASE("isprime and sum_primes: the tutorial's definitions and known answers") {
  const std::vector<int> first{0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1};
  for (std::int64_t n = 0; n < static_cast<std::int64_t>(first.size()); ++n)
    CHECK(wl::isprime(n) == first[n]);
  CHECK(wl::isprime(-7) == 0);
  CHECK(wl::isprime(25) == 0);  // a square: ceil(sqrt) must reach its root
  CHECK(wl::isprime(7919) == 1);
  CHECK(wl::isprime(7921) == 0);  // 89^2
  CHECK(wl::isprime(2147483647) == 1);
  CHECK(wl::sum_primes(100) == 1060);
  CHECK(wl::sum_primes(1000) == 76127);
  CHECK(wl::sum_primes(5000) == 1548136);
  CHECK(wl::sum_primes(2) == 0);
  CHECK(wl::sum_primes(3) == 2);
}

TEST_CASE("tutorial driver: pool maps agree with serial maps and the known answers") {
  mpx::Pool pool(2);
  std::vector<std::int64_t> xs(20000);
  std::iota(xs.begin(), xs.end(), 0);
  std::vector<int> flags = pool.map(wl::isprime, xs);
  CHECK(std::accumulate(flags.begin(), flags.end(), 0) == 2262);
  for (std::size_t i = 0; i < xs.size(); i += 997) CHECK(flags[i] == wl::isprime(xs[i]));
  std::vector<std::int64_t> ns{100, 1000, 5000};
  CHECK(pool.map(wl::sum_primes, ns, 1) == std::vector<std::int64_t>{1060, 76127, 1548136});
}

TEST_CASE("segmented sieve: ranges agree with trial division, pi(10^6) on the pool") {
  for (auto [lo, hi] : std::vector<std::pair<std::uint64_t, std::uint64_t>>{{0, 0},
                                                                            {0, 1},
                                                                            {0, 2},
                                                                            {0, 3},
                                                                            {2, 3},
                                                                            {3, 4},
                                                                            {0, 1000},
                                                                            {999, 5003},
                                                                            {7919, 7920},
                                                                            {100000, 101234}}) {
    std::uint64_t brute = 0;
    for (std::uint64_t n = lo; n < hi; ++n)
      brute += static_cast<std::uint64_t>(wl::isprime(static_cast<std::int64_t>(n)));
    CAPTURE(lo);
    CAPTURE(hi);
    CHECK(wl::count_primes_in({lo, hi}) == brute);
  }
  // Segments much smaller than the sieve's inner block and not aligned with anything.
  CHECK(wl::count_primes_below_serial(1000000, 12345) == 78498);
  CHECK(wl::count_primes_below_serial(10000000) == 664579);

  mpx::Pool pool(2);
  std::size_t calls = 0, last_done = 0, last_total = 0;
  auto progress = [&](std::size_t done, std::size_t total) {
    ++calls;
    last_done = done;
    last_total = total;
  };
  CHECK(wl::count_primes_below(pool, 1000000, 0, progress) == 78498);
  CHECK(calls == last_total);
  CHECK(last_done == last_total);
  CHECK(last_total == wl::split_range(1000000, wl::default_segment(1000000, 2)).size());
  CHECK(last_total >= 8);
  CHECK(wl::count_primes_below(pool, 1000000, 99991) == 78498);
  CHECK(wl::known_prime_count(1000000) == 78498U);
  CHECK(wl::known_prime_count(1000000000) == 50847534U);
  CHECK_FALSE(wl::known_prime_count(12345).has_value());
}

TEST_CASE("split_range covers [0, n) exactly once") {
  auto r = wl::split_range(100, 30);
  REQUIRE(r.size() == 4);
  CHECK(r.front().lo == 0);
  CHECK(r.back().hi == 100);
  for (std::size_t i = 1; i < r.size(); ++i) CHECK(r[i].lo == r[i - 1].hi);
  CHECK(wl::split_range(0, 30).empty());
}

TEST_CASE("options: Black-Scholes closed form and the Monte Carlo price within 4 standard errors") {
  CHECK(wl::black_scholes_call(100, 100, 0.25, 0.05) == doctest::Approx(12.3360).epsilon(1e-5));
  CHECK(wl::black_scholes_put(100, 100, 0.25, 0.05) == doctest::Approx(7.4589).epsilon(1e-5));

  mpx::Pool pool(2);
  const wl::OptionParams defaults;  // S=100 K=100 sigma=0.25 r=0.05, 260 days, 10000 paths
  const std::vector<wl::OptionParams> point{defaults};
  const wl::OptionPrices p = pool.map(wl::PriceOptions{7}, point).at(0);
  for (std::size_t k = 0; k < 4; ++k) {
    CHECK(p.se[k] > 0);
    CHECK(p.se[k] < 0.5);
  }
  CHECK(std::abs(p.price[wl::kEuroCall] - 12.3360) < 4 * p.se[wl::kEuroCall]);
  CHECK(std::abs(p.price[wl::kEuroPut] - 7.4589) < 4 * p.se[wl::kEuroPut]);
  // Averaging damps volatility: Asian options are cheaper than European ones.
  CHECK(p.price[wl::kAsianCall] < p.price[wl::kEuroCall]);
  CHECK(p.price[wl::kAsianPut] < p.price[wl::kEuroPut]);
}

TEST_CASE("options: prices are bit-identical for any number of workers and chunking") {
  const wl::Grid g = wl::tutorial_grid(52, 400);  // the 5 x 5 grid, light paths
  REQUIRE(g.points.size() == 25);
  CHECK(g.strikes == std::vector<double>{90, 95, 100, 105, 110});
  const auto serial = wl::price_grid_serial(g, 11);
  std::vector<std::vector<wl::OptionPrices>> runs;
  {
    mpx::Pool one(1);
    runs.push_back(wl::price_grid(one, g, 11, 1));
    runs.push_back(wl::price_grid(one, g, 11, 25));
  }
  {
    mpx::Pool two(2);
    runs.push_back(wl::price_grid(two, g, 11, 1));
    runs.push_back(wl::price_grid(two, g, 11, 4));
    runs.push_back(wl::price_grid(two, g, 11, 7));
    runs.push_back(two.map(wl::PriceOptions{11}, g.points));  // Python's chunksize rule
  }
  for (const auto& r : runs) CHECK(r == serial);
  // Independent streams per task: two grid points with equal parameters would still differ.
  const auto same = wl::price_grid_serial({{}, {}, {g.points[0], g.points[0]}}, 11);
  CHECK(same[0].price != same[1].price);
  // Another seed, other numbers.
  CHECK(wl::price_grid_serial(g, 12) != serial);
}

TEST_CASE("matrices: GOE matrices are symmetric with a positive central spacing") {
  std::mt19937_64 rng(5);
  const Eigen::MatrixXd m = wl::goe(40, rng);
  CHECK(m.rows() == 40);
  CHECK(m.isApprox(m.transpose(), 0.0));
  CHECK((m - m.transpose()).cwiseAbs().maxCoeff() == 0.0);
  CHECK(wl::central_spacing(m) > 0);
  // The diagonal is 2 z: variance 4; off-diagonal z + z': variance 2. Loose bounds on 40 x 40.
  CHECK(m.diagonal().squaredNorm() / 40 == doctest::Approx(4).epsilon(0.6));
  // A known spectrum: diag(0, 1, 3, 6) has central spacing 3 - 1.
  Eigen::MatrixXd d = Eigen::Vector4d(6, 0, 3, 1).asDiagonal();
  CHECK(wl::central_spacing(d) == doctest::Approx(2.0));
}

TEST_CASE("matrices: the ensemble is bit-identical for any workers and chunking, statistics are sane") {
  wl::EnsembleOptions o;
  o.n = 20;
  o.count = 600;
  o.seed = 99;
  const auto serial = wl::goe_spacings_serial(o);
  REQUIRE(serial.size() == 600);
  {
    mpx::Pool one(1);
    CHECK(wl::goe_spacings(one, o) == serial);
  }
  {
    mpx::Pool two(2);
    std::size_t seen = 0;
    CHECK(wl::goe_spacings(two, o, [&](std::size_t done, std::size_t) { seen = done; }) == serial);
    CHECK(seen == 600);
    for (std::size_t chunk : {1, 7, 600}) {
      o.chunksize = chunk;
      CHECK(wl::goe_spacings(two, o) == serial);
    }
  }
  const auto s = wl::normalise_by_mean(serial);
  const wl::Moments m = wl::moments(s);
  CHECK(m.mean == doctest::Approx(1.0).epsilon(1e-12));
  // Level repulsion: variance near 0.27-0.29 (Poisson spacings would give 1).
  CHECK(m.variance > 0.2);
  CHECK(m.variance < 0.38);
  // Few tiny spacings (the surmise gives P(s < 0.1) of about 0.8%).
  CHECK(std::count_if(s.begin(), s.end(), [](double x) { return x < 0.1; }) < 20);
  const wl::Histogram h = wl::histogram(s, 35, 3.5);
  double area = 0;
  for (double d : h.density) area += d * h.width();
  CHECK(area == doctest::Approx(1.0).epsilon(0.01));
  CHECK(wl::render_svg(h, "t").find("<polyline") != std::string::npos);
  CHECK(wl::render_terminal(h).find('*') != std::string::npos);
}

TEST_CASE("serial_map publishes the item's index as task_index()") {
  auto idx = [](int) { return mpx::task_index(); };
  CHECK(wl::serial_map(idx, std::vector<int>{5, 5, 5}) == std::vector<std::uint64_t>{0, 1, 2});
  CHECK(mpx::task_index() == 0);
}

TEST_CASE("thread_map: the same results as serial_map for any threads and chunking") {
  auto idx = [](int x) { return mpx::task_index() * 10 + static_cast<std::uint64_t>(x); };
  const std::vector<int> xs{1, 2, 3, 4, 5, 6, 7};
  const auto expected = wl::serial_map(idx, xs);
  REQUIRE(expected.back() == 67);
  for (unsigned threads : {1U, 2U, 3U})
    for (std::size_t chunk : {1U, 2U, 7U, 50U}) CHECK(wl::thread_map(idx, xs, threads, chunk) == expected);
  CHECK(wl::thread_map(idx, std::vector<int>{}, 2).empty());
  auto throws_at_5 = [](int x) {
    if (x == 5) throw std::runtime_error("five");
    return x;
  };
  CHECK_THROWS_WITH_AS(wl::thread_map(throws_at_5, xs, 2), "five", std::runtime_error);

  const wl::Grid g = wl::tutorial_grid(20, 200, 3);
  CHECK(wl::thread_map(wl::PriceOptions{11}, g.points, 2) == wl::price_grid_serial(g, 11));
  wl::EnsembleOptions o;
  o.n = 12;
  o.count = 30;
  CHECK(wl::thread_map(wl::GoeSpacing{o.n, o.seed}, std::views::iota(std::int64_t{0}, o.count), 2, 4) ==
        wl::goe_spacings_serial(o));
}

TEST_CASE("--backend mpxd's pool: imap_unordered yields chunks as they finish, imap in input order") {
  using namespace std::chrono_literals;
  wl::register_tasks();
  mpx::Manager m;
  mpx::Process workers(mpx::Process::Options{"", true},
                       [a = m.address(), key = m.authkey()] { mpx::serve_tasks(a, key, "primes", 2); });
  workers.start();
  mpx::apps::TaskQueuePool pool(m.task_queue("primes"), 2, "the test's queue");

  // One long range first, then short ones: two task_workers finish short ones while one works
  // on the long one.
  const std::uint64_t base = 100'000'000'000;
  std::vector<wl::SieveRange> ranges{{base, base + 40'000'000}};
  for (std::uint64_t k = 0; k < 6; ++k) ranges.push_back({base + k * 1000, base + (k + 1) * 1000});
  std::vector<std::uint64_t> expected;
  for (const auto& r : ranges) expected.push_back(wl::count_primes_in(r));

  std::vector<std::uint64_t> ordered;
  for (std::uint64_t c : pool.imap(wl::count_primes_in, ranges)) ordered.push_back(c);
  CHECK(ordered == expected);

  std::vector<std::uint64_t> unordered;
  for (std::uint64_t c : pool.imap_unordered(wl::count_primes_in, ranges)) unordered.push_back(c);
  REQUIRE(unordered.size() == expected.size());
  CHECK(std::accumulate(unordered.begin(), unordered.end(), std::uint64_t{0}) ==
        std::accumulate(expected.begin(), expected.end(), std::uint64_t{0}));
  CHECK(unordered.front() != expected.front());  // a short range came before the long one

  workers.terminate();
  REQUIRE(workers.join(60s));
}
