#!/usr/bin/env python3
"""The tutorial's random-matrix driver in Python, standard library only: the
spacing of the two central eigenvalues of GOE(N) matrices over an ensemble,
serially and on a multiprocessing.Pool, normalised by its mean and compared
with the Wigner surmise. Exit status 1 if a check fails. mpx_bench runs it next
to the C++ program; --json prints one document on stdout (text to stderr).

    python3 matrices.py [--size 50] [--count 1000] [--seed 2024] [--processes 2] [--json]

The tutorial's sizes are the defaults (minutes in CPython); the benchmark runs
smaller matrices and fewer of them, and says so.

Without numpy there is no LAPACK, so the eigenvalues come from a small routine
here: Householder reduction to tridiagonal form, then bisection on Sturm
sequences for just the two central eigenvalues (self-checked against the trace
and the Frobenius norm, which the full spectrum must reproduce). Its numbers are
not the C++ program's: CPython's generator is another stream. What is checked
is what holds for any stream: the normalised mean is 1, the variance is the
GOE's (about 0.286, the surmise's 4/pi - 1 = 0.273 close by) within a few
standard errors, and the pool's ensemble equals the serial one."""
import argparse
import json
import math
import multiprocessing
import os
import random
import sys
import time

SURMISE_VARIANCE = 4 / math.pi - 1
GOE_VARIANCE = 0.286


def goe(n, rng):
    """An n x n matrix m of standard normals (row by row), returned as m + m^T."""
    m = [[rng.gauss(0.0, 1.0) for _ in range(n)] for _ in range(n)]
    return [[m[i][j] + m[j][i] for j in range(n)] for i in range(n)]


def tridiagonal(a):
    """Householder reduction of the symmetric matrix a (changed in place): the diagonal and the
    off-diagonal of a tridiagonal matrix with the same eigenvalues."""
    n = len(a)
    for k in range(n - 2):
        x = [a[i][k] for i in range(k + 1, n)]
        norm = math.sqrt(sum(t * t for t in x))
        if norm == 0.0:
            continue
        alpha = -norm if x[0] > 0 else norm
        v = x[:]
        v[0] -= alpha
        vv = sum(t * t for t in v)
        if vv == 0.0:
            continue
        beta = 2.0 / vv
        rows = range(k + 1, n)
        # A <- H A H with H = I - beta v v^T on the trailing block: A - v q^T - q v^T.
        p = [beta * sum(a[i][j] * v[j - k - 1] for j in rows) for i in rows]
        half = 0.5 * beta * sum(pi * vi for pi, vi in zip(p, v))
        q = [pi - half * vi for pi, vi in zip(p, v)]
        for ii, i in enumerate(rows):
            row, vi, qi = a[i], v[ii], q[ii]
            for jj, j in enumerate(rows):
                row[j] -= vi * q[jj] + qi * v[jj]
        a[k + 1][k] = a[k][k + 1] = alpha
        for i in range(k + 2, n):
            a[i][k] = a[k][i] = 0.0
    return [a[i][i] for i in range(n)], [a[i][i + 1] for i in range(n - 1)]


def count_below(d, e2, x):
    """How many eigenvalues of the tridiagonal matrix (d, e) are below x (Sturm sequence)."""
    count, q = 0, 1.0
    for i, di in enumerate(d):
        q = di - x - (e2[i - 1] / q if i else 0.0)
        if q == 0.0:
            q = -1e-300
        if q < 0:
            count += 1
    return count


def eigenvalue(d, e, k):
    """The k-th smallest eigenvalue (from 0) of the tridiagonal matrix (d, e), by bisection to
    the last bit."""
    e2 = [t * t for t in e]
    radius = [abs(e[i - 1]) if i else 0.0 for i in range(len(d))]
    for i in range(len(e)):
        radius[i] += abs(e[i])
    lo = min(di - r for di, r in zip(d, radius))
    hi = max(di + r for di, r in zip(d, radius))
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            return hi
        if count_below(d, e2, mid) > k:
            hi = mid
        else:
            lo = mid


def central_spacing(a):
    n = len(a)
    d, e = tridiagonal([row[:] for row in a])
    return eigenvalue(d, e, n // 2) - eigenvalue(d, e, n // 2 - 1)


class GoeSpacing:
    """Matrix i of the ensemble from its own generator, seeded from (seed, i) alone: the
    ensemble is the same for any number of workers and any chunking."""

    def __init__(self, n, seed):
        self.n, self.seed = n, seed

    def __call__(self, i):
        return central_spacing(goe(self.n, random.Random(f"{self.seed}:{i}")))


def self_check(n, seed):
    """The eigenvalue routine on one matrix: the spectrum's sum is the trace, the sum of its
    squares the squared Frobenius norm."""
    a = goe(n, random.Random(f"{seed}:self-check"))
    d, e = tridiagonal([row[:] for row in a])
    evals = [eigenvalue(d, e, k) for k in range(n)]
    trace = sum(a[i][i] for i in range(n))
    frob = sum(t * t for row in a for t in row)
    ok = all(x <= y for x, y in zip(evals, evals[1:]))
    ok &= abs(sum(evals) - trace) <= 1e-9 * (1 + frob)
    ok &= abs(sum(t * t for t in evals) - frob) <= 1e-9 * frob
    return ok


def moments(xs):
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, var


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--size", type=int, default=50, help="matrix size N")
    ap.add_argument("-c", "--count", type=int, default=1000, help="matrices in the ensemble")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("-p", "--processes", type=int, default=os.cpu_count(), help="pool size")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = ap.parse_args()
    if a.size < 2 or a.count < 2:
        ap.error("--size and --count must be at least 2")
    out = sys.stderr if a.json else sys.stdout
    task = GoeSpacing(a.size, a.seed)
    members = range(a.count)

    t0 = time.perf_counter()
    serial = list(map(task, members))
    ts = time.perf_counter() - t0
    with multiprocessing.Pool(a.processes) as pool:
        # About 8 tasks per worker, as the C++ program.
        t0 = time.perf_counter()
        raw = pool.map(task, members, chunksize=max(1, a.count // (8 * a.processes)))
        tp = time.perf_counter() - t0

    mean_raw = sum(raw) / len(raw)
    s = [x / mean_raw for x in raw]
    mean, var = moments(s)
    # Standard error of the sample variance, from the fourth central moment.
    m4 = sum((x - mean) ** 4 for x in s) / len(s)
    se = math.sqrt(max(0.0, (m4 - var * var) / len(s)))
    checks = {
        "eigenvalues_self_check": self_check(a.size, a.seed),
        "normalised_mean_is_one": abs(mean - 1) <= 1e-9,
        "variance_is_goe": abs(var - GOE_VARIANCE) <= 4 * se,
        "pool_equals_serial": raw == serial,
    }
    ok = all(checks.values())
    print(f"GOE ensemble: {a.count} matrices of {a.size} x {a.size}, seed {a.seed}, "
          f"multiprocessing.Pool({a.processes})", file=out)
    print(f"pool {tp:.3f} s, serial {ts:.3f} s, speedup {ts / tp:.2f}x", file=out)
    print(f"normalised spacing s: mean {mean:.6f}, variance {var:.6f} ± {se:.4f} (Wigner surmise "
          f"{SURMISE_VARIANCE:.4f}, large-N GOE {GOE_VARIANCE:.3f})", file=out)
    for name, good in checks.items():
        print(f"  {name:<24} {'ok' if good else 'WRONG'}", file=out)
    print("all checks passed" if ok else "SOME CHECKS FAILED", file=out)
    if a.json:
        doc = {
            "program": "matrices.py",
            "inputs": {"size": a.size, "count": a.count, "seed": a.seed},
            "normalised_moments": {"mean": mean, "variance": var, "variance_se": se},
            "wigner_surmise_variance": SURMISE_VARIANCE,
            "goe_variance": GOE_VARIANCE,
            "checks": checks,
            "ok": ok,
            "run": {"processes": a.processes, "serial_seconds": ts, "pool_seconds": tp, "speedup": ts / tp},
        }
        print(json.dumps(doc, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
