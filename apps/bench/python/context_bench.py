"""Python's start methods, the figures mpx_bench's "context" group compares with.

Usage: python3 context_bench.py [RUNS] [--quick]
For m in fork, forkserver, spawn, prints the medians of
  python.process.start_join_<m>_us: get_context(m).Process(target=nothing), start() + join()
  python.pool.start_shutdown_<m>_ms: get_context(m).Pool(2), close() + join()
Each method is warmed up first (forkserver starts its server then). A method this platform
lacks is left out. Standard library only.
"""
import multiprocessing as mp
import statistics
import sys
import time


def nothing():
    pass


def process_us(ctx):
    t0 = time.perf_counter()
    p = ctx.Process(target=nothing)
    p.start()
    p.join()
    return (time.perf_counter() - t0) * 1e6


def pool_ms(ctx):
    t0 = time.perf_counter()
    p = ctx.Pool(2)
    p.close()
    p.join()
    return (time.perf_counter() - t0) * 1e3


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    runs = int(args[0]) if args else 5
    for method in ("fork", "forkserver", "spawn"):
        if method not in mp.get_all_start_methods():
            continue
        ctx = mp.get_context(method)
        slow = method == "spawn"  # a fresh interpreter each time: tens of milliseconds
        n_process = max(1, (runs if slow else 10 * runs) // (5 if quick else 1))
        n_pool = max(1, ((runs + 1) // 2 if slow else 2 * runs) // (5 if quick else 1))
        process_us(ctx)  # warm-up
        started = [process_us(ctx) for _ in range(n_process)]
        pool_ms(ctx)
        pools = [pool_ms(ctx) for _ in range(n_pool)]
        print(f"python.process.start_join_{method}_us: {statistics.median(started):.1f} us")
        print(f"python.pool.start_shutdown_{method}_ms: {statistics.median(pools):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
