"""Python's multiprocessing.Manager, the figures mpx_bench's "managers" group compares with.

Usage: python3 manager_bench.py [RUNS] [--quick]
Prints `python.managers.<figure>: <median> <unit>` lines:
  dict.call_median      one proxy call (d[k] = v, then d[k]), median latency
  dict.ops_per_s        d[k] = v calls per second (one round trip each; Python has no pipelining)
  queue.items_per_s     a producer process puts ints on a manager Queue, this process gets them
  lock_value.increments_per_s
                        two processes each doing `with lock: v.value += 1`
Standard library only.
"""
import multiprocessing as mp
import statistics
import sys
import time


def producer(q, gate, n):
    q.qsize()  # connect before the clock starts
    gate.wait()
    for i in range(n):
        q.put(i)


def incrementer(lock, v, gate, n):
    v.value  # connect before the clock starts
    gate.wait()
    for _ in range(n):
        with lock:
            v.value += 1


def dict_calls(d, n):
    us = []
    for i in range(n):
        t0 = time.perf_counter()
        d[7] = i
        t1 = time.perf_counter()
        if d[7] != i:
            raise RuntimeError("dict: wrong value back")
        t2 = time.perf_counter()
        us += [(t1 - t0) * 1e6, (t2 - t1) * 1e6]
    return us


def dict_ops(d, n):
    t0 = time.perf_counter()
    for i in range(n):
        d[i & 1023] = i
    return n / (time.perf_counter() - t0)


def queue_items(m, n):
    q, gate = m.Queue(), mp.Event()
    p = mp.Process(target=producer, args=(q, gate, n))
    p.start()
    time.sleep(0.2)  # let the child connect
    t0 = time.perf_counter()
    gate.set()
    for i in range(n):
        if q.get() != i:
            raise RuntimeError("queue: out of order")
    rate = n / (time.perf_counter() - t0)
    p.join()
    return rate


def locked_increments(m, per_process):
    lock, v, gate = m.Lock(), m.Value("l", 0), mp.Event()
    ps = [mp.Process(target=incrementer, args=(lock, v, gate, per_process)) for _ in range(2)]
    for p in ps:
        p.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    gate.set()
    for p in ps:
        p.join()
    rate = 2 * per_process / (time.perf_counter() - t0)
    if v.value != 2 * per_process:
        raise RuntimeError("lock: increments were lost")
    return rate


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    runs = int(args[0]) if args else 3
    calls = 1_000 if quick else 10_000
    items = 1_000 if quick else 20_000
    increments = 500 if quick else 5_000
    mp.set_start_method("fork")
    with mp.Manager() as m:
        d = m.dict()
        dict_calls(d, 200)  # warm-up
        call_us, ops, q, inc = [], [], [], []
        for _ in range(runs):
            call_us += dict_calls(d, calls)
            ops.append(dict_ops(d, calls))
            q.append(queue_items(m, items))
            inc.append(locked_increments(m, increments))
    print(f"python.managers.dict.call_median: {statistics.median(call_us):.2f} us")
    print(f"python.managers.dict.ops_per_s: {statistics.median(ops):.0f} ops/s")
    print(f"python.managers.queue.items_per_s: {statistics.median(q):.0f} items/s")
    print(f"python.managers.lock_value.increments_per_s: {statistics.median(inc):.0f} increments/s")


if __name__ == "__main__":
    main()
