#!/usr/bin/env python3
"""The tutorial's options-pricing driver in Python, standard library only: Monte
Carlo prices of European and Asian calls and puts, one task per (strike,
volatility) point of a grid, serially and on a multiprocessing.Pool; the
European prices checked against Black-Scholes (exit status 1 beyond 4 standard
errors). mpx_bench runs it next to the C++ program; --json prints one document
on stdout (the tables go to stderr).

    python3 options.py [--paths 10000] [--days 260] [--grid 5] [--seed 2024] [--processes 2] [--json]

The tutorial's sizes are the defaults (minutes in CPython); the benchmark runs
fewer paths and days, and says so. CPython's generator is not the C++
program's, so the prices differ from its within their standard errors."""
import argparse
import json
import math
import multiprocessing
import os
import random
import sys
import time

PAYOFFS = ("european_call", "european_put", "asian_call", "asian_put")


def price_options(S=100.0, K=100.0, sigma=0.25, r=0.05, days=260, paths=10000, rng=random):
    """The tutorial's price_options: each path starts at S and `days` times does
    price *= c1 exp(c2 Z), sum += price; avg = sum / days. Discounted mean payoffs of
    (european_call, european_put, asian_call, asian_put), and their standard errors."""
    h = 1.0 / days
    c1 = math.exp((r - 0.5 * sigma * sigma) * h)
    c2 = sigma * math.sqrt(h)
    gauss, exp = rng.gauss, math.exp
    sums, squares = [0.0] * 4, [0.0] * 4
    for _ in range(paths):
        price, total = S, 0.0
        for _ in range(days):
            price *= c1 * exp(c2 * gauss(0.0, 1.0))
            total += price
        avg = total / days
        payoff = (max(price - K, 0.0), max(K - price, 0.0), max(avg - K, 0.0), max(K - avg, 0.0))
        for k in range(4):
            sums[k] += payoff[k]
            squares[k] += payoff[k] * payoff[k]
    df = math.exp(-r)
    prices, errors = [], []
    for k in range(4):
        mean = sums[k] / paths
        var = max(0.0, (squares[k] - paths * mean * mean) / (paths - 1))
        prices.append(df * mean)
        errors.append(df * math.sqrt(var / paths))
    return prices, errors


class PricePoint:
    """Grid point i from its own generator, seeded from (seed, i) alone: the prices are the same
    for any number of workers."""

    def __init__(self, seed, days, paths):
        self.seed, self.days, self.paths = seed, days, paths

    def __call__(self, point):
        i, (K, sigma) = point
        return price_options(K=K, sigma=sigma, days=self.days, paths=self.paths,
                             rng=random.Random(f"{self.seed}:{i}"))


def normal_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def black_scholes(S, K, sigma, r, T=1.0):
    d1 = (math.log(S / K) + (r + 0.5 * sigma * sigma) * T) / (sigma * math.sqrt(T))
    d2 = d1 - sigma * math.sqrt(T)
    call = S * normal_cdf(d1) - K * math.exp(-r * T) * normal_cdf(d2)
    put = K * math.exp(-r * T) * normal_cdf(-d2) - S * normal_cdf(-d1)
    return call, put


def linspace(a, b, n):
    return [a + (b - a) * i / (n - 1) for i in range(n)] if n > 1 else [a]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", type=int, default=10000, help="Monte Carlo paths per grid point")
    ap.add_argument("--days", type=int, default=260, help="time steps of each one-year path")
    ap.add_argument("--grid", type=int, default=5,
                    help="grid points per axis (K in 90..110, sigma in 0.1..0.4)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("-p", "--processes", type=int, default=os.cpu_count(), help="pool size")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = ap.parse_args()
    if a.paths < 2 or a.days < 1 or a.grid < 1:
        ap.error("--paths must be at least 2, --days and --grid at least 1")
    out = sys.stderr if a.json else sys.stdout
    S, r = 100.0, 0.05
    strikes, sigmas = linspace(90.0, 110.0, a.grid), linspace(0.1, 0.4, a.grid)
    grid = [(K, sigma) for sigma in sigmas for K in strikes]  # row-major: a row per sigma
    task = PricePoint(a.seed, a.days, a.paths)

    t0 = time.perf_counter()
    serial = list(map(task, enumerate(grid)))
    ts = time.perf_counter() - t0
    with multiprocessing.Pool(a.processes) as pool:
        t0 = time.perf_counter()
        prices = pool.map(task, enumerate(grid), chunksize=1)  # one task per point, as the C++ program
        tp = time.perf_counter() - t0

    print(f"Options: {len(grid)} grid points, {a.paths} paths of {a.days} days each, seed {a.seed}, "
          f"multiprocessing.Pool({a.processes})\n", file=out)
    for k, name in enumerate(PAYOFFS):
        print(name, file=out)
        print("  sigma \\ K " + "".join(f"{K:>18g}" for K in strikes), file=out)
        for row, sigma in enumerate(sigmas):
            cells = prices[row * len(strikes):(row + 1) * len(strikes)]
            text = "".join(f"{p[0][k]:>10.4f} ± {p[1][k]:<5.3f}" for p in cells)
            print(f"  {sigma:<9g} {text}", file=out)
        print(file=out)
    worst = (0.0, None, None)
    for (K, sigma), (price, se) in zip(grid, prices):
        for k, bs in enumerate(black_scholes(S, K, sigma, r)):
            z = abs(price[k] - bs) / se[k]
            if z > worst[0]:
                worst = (z, PAYOFFS[k], (K, sigma))
    bs_ok = worst[0] <= 4
    same = prices == serial
    where = f" ({worst[1]} at K={worst[2][0]:g} sigma={worst[2][1]:g})" if worst[1] else ""
    print(f"largest Black-Scholes deviation over the grid: {worst[0]:.2f} SE{where} "
          f"{'ok (<= 4 SE)' if bs_ok else 'WRONG (> 4 SE)'}", file=out)
    if not same:
        print("the pool's prices differ from the serial ones: WRONG", file=out)
    print(f"pool {tp:.3f} s, serial {ts:.3f} s, speedup {ts / tp:.2f}x", file=out)
    ok = bs_ok and same
    print("all checks passed" if ok else "SOME CHECKS FAILED", file=out)
    if a.json:
        points = []
        for (K, sigma), (price, se) in zip(grid, prices):
            p = {"K": K, "sigma": sigma}
            p.update(zip(PAYOFFS, price))
            p.update((f"{name}_se", e) for name, e in zip(PAYOFFS, se))
            p["black_scholes_call"], p["black_scholes_put"] = black_scholes(S, K, sigma, r)
            points.append(p)
        doc = {
            "program": "options.py",
            "inputs": {"S": S, "r": r, "days": a.days, "paths": a.paths, "grid": a.grid, "seed": a.seed},
            "points": points,
            "checks": {"black_scholes": {"worst_se": worst[0], "limit_se": 4.0, "ok": bs_ok},
                       "pool_equals_serial": same},
            "ok": ok,
            "run": {"processes": a.processes, "serial_seconds": ts, "pool_seconds": tp, "speedup": ts / tp},
        }
        print(json.dumps(doc, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
