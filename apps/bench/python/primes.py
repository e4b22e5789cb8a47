#!/usr/bin/env python3
"""The tutorial's prime-number driver in Python, standard library only: serial
map(isprime, 0..N-1) and map(sum_primes, 0..M-1), then the same maps on a
multiprocessing.Pool, with both times and the speedup, and the known answers
checked (exit status 1 if one is wrong). mpx_bench runs it next to the C++
programs; --json prints one document on stdout (the text goes to stderr).

    python3 primes.py [--isprime-items 20000] [--sum-primes-items 5000] [--processes 2] [--json]

The tutorial's sizes are the defaults; sum_primes over 0..4999 takes tens of
seconds in CPython, so the benchmark runs fewer items (and says so)."""
import argparse
import json
import math
import multiprocessing
import os
import sys
import time


def isprime(n):
    """0 for n < 2, 1 for n == 2, else trial division by 2..ceil(sqrt(n))."""
    if n < 2:
        return 0
    if n == 2:
        return 1
    top = int(math.ceil(math.sqrt(n)))
    i = 2
    while i <= top:
        if n % i == 0:
            return 0
        i += 1
    return 1


def sum_primes(n):
    """The sum of the primes strictly below n."""
    return sum(x for x in range(2, n) if isprime(x))


def timed(f):
    t0 = time.perf_counter()
    result = f()
    return result, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--isprime-items", type=int, default=20000, help="isprime over 0..N-1")
    ap.add_argument("--sum-primes-items", type=int, default=5000, help="sum_primes over 0..M-1")
    ap.add_argument("-p", "--processes", type=int, default=os.cpu_count(), help="pool size")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = ap.parse_args()
    out = sys.stderr if a.json else sys.stdout
    xs, ys = range(a.isprime_items), range(a.sum_primes_items)

    is_serial, t1 = timed(lambda: list(map(isprime, xs)))
    sum_serial, t3 = timed(lambda: list(map(sum_primes, ys)))
    with multiprocessing.Pool(a.processes) as pool:
        # Python's default chunksize, as the tutorial (and the C++ program's default).
        is_pool, t2 = timed(lambda: pool.map(isprime, xs))
        sum_pool, t4 = timed(lambda: pool.map(sum_primes, ys))
        # The known answers that lie beyond a reduced range are computed on their own.
        known = {n: sum_pool[n] if n < len(sum_pool) else pool.apply(sum_primes, (n,))
                 for n in (100, 1000, 5000)}

    print(f"isprime over 0..{len(xs) - 1}, sum_primes over 0..{len(ys) - 1}; "
          f"multiprocessing.Pool({a.processes})", file=out)
    print(f"  isprime      serial {t1:8.4f} s   pool {t2:8.4f} s   speedup {t1 / t2:.2f}x", file=out)
    print(f"  sum_primes   serial {t3:8.4f} s   pool {t4:8.4f} s   speedup {t3 / t4:.2f}x", file=out)
    same = is_pool == is_serial and sum_pool == sum_serial
    if not same:
        print("  pool results differ from the serial results: WRONG", file=out)
    checks = []

    def check(name, got, expected):
        ok = got == expected
        print(f"  {name:<24} {got:>12}  (expected {expected}) {'ok' if ok else 'WRONG'}", file=out)
        checks.append({"name": name, "value": got, "expected": expected, "ok": ok})

    # Only the full range holds every prime below 20000.
    if len(xs) >= 20000:
        check("primes below 20000", sum(is_pool[:20000]), 2262)
    check("sum_primes(100)", known[100], 1060)
    check("sum_primes(1000)", known[1000], 76127)
    check("sum_primes(5000)", known[5000], 1548136)
    ok = same and all(c["ok"] for c in checks)
    print("all checks passed" if ok else "SOME CHECKS FAILED", file=out)
    if a.json:
        timing = lambda s, p: {"serial_seconds": s, "pool_seconds": p, "speedup": s / p}
        doc = {
            "program": "primes.py",
            "inputs": {"isprime_items": len(xs), "sum_primes_items": len(ys)},
            "checks": checks,
            "pool_equals_serial": same,
            "ok": ok,
            "run": {"processes": a.processes, "isprime": timing(t1, t2), "sum_primes": timing(t3, t4)},
        }
        print(json.dumps(doc, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
