"""Python's side of mpx_bench's "pickle" group (standard library only).

Usage: python3 pickle_bench.py RUNS [--quick] [--server ADDRESS --authkey-file FILE]
Prints `python.pickle.<figure>: <median> <unit>` lines:
  dict1000.dumps_us / dict1000.loads_us
        pickle.dumps / pickle.loads (protocol 4) of a 1,000-entry dict of str -> float
  sync_manager.python_server.calls_per_s
        a SyncManager dict proxy: d[k] = v then d[k], against Python's own manager server
  sync_manager.mpx_server.calls_per_s
        the same calls against the mpx server at ADDRESS (when given), measured alternately
        with Python's server in the same run
"""
import multiprocessing.managers as mm
import pickle
import statistics
import sys
import time


def timed_us(f, n):
    best = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best.append((time.perf_counter() - t0) / n * 1e6)
    return min(best)


def dict_calls_per_s(d, n):
    d["warm"] = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        d["k"] = float(i)
        if d["k"] != float(i):
            raise RuntimeError("sync manager dict: wrong value back")
    return 2 * n / (time.perf_counter() - t0)


def main():
    args = sys.argv[1:]
    runs = int(args[0]) if args and args[0].isdigit() else 3
    quick = "--quick" in args
    server = args[args.index("--server") + 1] if "--server" in args else None
    key_file = args[args.index("--authkey-file") + 1] if "--authkey-file" in args else None

    d = {f"key{i:04d}": i * 0.5 for i in range(1000)}
    blob = pickle.dumps(d, protocol=4)
    n = 50 if quick else 500
    dumps = [timed_us(lambda: pickle.dumps(d, protocol=4), n) for _ in range(runs)]
    loads = [timed_us(lambda: pickle.loads(blob), n) for _ in range(runs)]
    print(f"python.pickle.dict1000.dumps_us: {statistics.median(dumps):.2f} us", flush=True)
    print(f"python.pickle.dict1000.loads_us: {statistics.median(loads):.2f} us", flush=True)

    calls = 500 if quick else 5000
    own = mm.SyncManager(address=("127.0.0.1", 0), authkey=b"bench")
    own.start()
    try:
        targets = [("python_server", own.dict())]
        if server:
            with open(key_file, "rb") as f:
                key = f.read().rstrip(b"\n")
            m = mm.SyncManager(address=server, authkey=key)
            m.connect()
            targets.append(("mpx_server", m.dict()))
        rates = {name: [] for name, _ in targets}
        for _ in range(runs):
            for name, proxy in targets:
                rates[name].append(dict_calls_per_s(proxy, calls))
        for name, r in rates.items():
            print(f"python.pickle.sync_manager.{name}.calls_per_s: {statistics.median(r):.0f} calls/s", flush=True)
    finally:
        own.shutdown()


if __name__ == "__main__":
    main()
