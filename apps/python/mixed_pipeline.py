"""The Python half of a pipeline shared with a C++ program through mpxd (standard library only).

Takes jobs ({'i': ..., 'x': ...}) from the named queue 'pipeline-jobs' that apps/mixed_pipeline.cpp
fills, answers each with {'i': i, 'y': x*x + 1} on the named queue 'pipeline-results', and stops at
None. Run it before or after the C++ side: whoever opens a queue first, both see the values
in their own language.

usage: mixed_pipeline.py --address ADDRESS --authkey-file FILE
"""
import argparse
from multiprocessing.managers import BaseManager


class Mpxd(BaseManager):
    pass


Mpxd.register("get_queue")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", required=True, help="unix:/path or a plain path of mpxd's socket")
    ap.add_argument("--authkey-file", required=True)
    args = ap.parse_args()
    address = args.address[len("unix:"):] if args.address.startswith("unix:") else args.address
    with open(args.authkey_file, "rb") as f:
        m = Mpxd(address=address, authkey=f.read().rstrip(b"\n"))
    m.connect()
    jobs, results = m.get_queue("pipeline-jobs"), m.get_queue("pipeline-results")
    n = 0
    while (job := jobs.get()) is not None:
        results.put({"i": job["i"], "y": job["x"] ** 2 + 1})
        n += 1
    print(f"mixed_pipeline.py: answered {n} jobs")


if __name__ == "__main__":
    main()
