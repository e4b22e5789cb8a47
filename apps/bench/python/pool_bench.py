"""Python's multiprocessing.Pool(2), the figures mpx_bench's "pool" group compares with.

Usage: python3 pool_bench.py [RUNS] [--quick]
Prints `python.pool.<figure>: <median> <unit>` lines:
  map of x*x over 1,000,000 ints (default chunksize), apply_async x 20,000 tiny tasks then get
  all, sequential apply round trip, imap_unordered over 200,000 items (chunksize 1),
  Pool(2) start + shutdown (close + join).
Standard library only.
"""
import multiprocessing as mp
import statistics
import sys
import time


def square(x):
    return x * x


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    runs = int(args[0]) if args else 3
    map_n = 100_000 if quick else 1_000_000
    async_n = 1_000 if quick else 20_000
    rtt_n = 200 if quick else 2_000
    imap_n = 20_000 if quick else 200_000
    mp.set_start_method("fork")

    xs = list(range(map_n))
    pool = mp.Pool(2)
    pool.map(square, range(1000))  # warm-up
    map_s, async_rate, imap_rate, rtt = [], [], [], []
    for _ in range(runs):
        map_s.append(timed(lambda: pool.map(square, xs)))

        def many():
            results = [pool.apply_async(square, (i,)) for i in range(async_n)]
            for r in results:
                r.get()

        async_rate.append(async_n / timed(many))

        def unordered():
            for _ in pool.imap_unordered(square, range(imap_n), 1):
                pass

        imap_rate.append(imap_n / timed(unordered))
        for i in range(rtt_n):
            t0 = time.perf_counter()
            pool.apply(square, (i,))
            rtt.append((time.perf_counter() - t0) * 1e6)
    pool.close()
    pool.join()

    start = []
    for _ in range(runs * 5):
        def cycle():
            p = mp.Pool(2)
            p.close()
            p.join()

        start.append(timed(cycle) * 1e3)

    print(f"python.pool.map_x2_1M.seconds: {statistics.median(map_s):.4f} s")
    print(f"python.pool.apply_async_20k.tasks_per_s: {statistics.median(async_rate):.0f} tasks/s")
    print(f"python.pool.apply.rtt_median: {statistics.median(rtt):.1f} us")
    print(f"python.pool.imap_unordered_200k.items_per_s: {statistics.median(imap_rate):.0f} items/s")
    print(f"python.pool.start_shutdown.median: {statistics.median(start):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
