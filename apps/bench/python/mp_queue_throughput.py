"""Python's multiprocessing.Queue between two processes, for mpx_bench's comparison.

Usage: python3 mp_queue_throughput.py ITEMS RUNS
Prints `python.queue.small_items: <median items/s> items/s`.
"""
import multiprocessing as mp
import statistics
import sys
import time


def produce(q, n):
    for i in range(n):
        q.put(i)


def one_run(n):
    q = mp.Queue()
    p = mp.Process(target=produce, args=(q, n))
    t0 = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get()
    elapsed = time.perf_counter() - t0
    p.join()
    return n / elapsed


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    mp.set_start_method("fork")
    rates = [one_run(n) for _ in range(runs)]
    print(f"python.queue.small_items: {statistics.median(rates):.0f} items/s", flush=True)


if __name__ == "__main__":
    main()
