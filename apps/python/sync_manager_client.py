"""A stock Python SyncManager against mpxd: a dict, a queue and a lock, nothing but the
standard library. mpxd answers Python's own manager protocol on its usual address.

usage: sync_manager_client.py --address ADDRESS --authkey-file FILE
"""
import argparse
from multiprocessing.managers import SyncManager


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", required=True, help="unix:/path or a plain path of mpxd's socket")
    ap.add_argument("--authkey-file", required=True)
    args = ap.parse_args()
    address = args.address[len("unix:"):] if args.address.startswith("unix:") else args.address
    with open(args.authkey_file, "rb") as f:
        m = SyncManager(address=address, authkey=f.read().rstrip(b"\n"))
    m.connect()

    d = m.dict()
    d.update(language="Python", server="mpxd")
    d["squares"] = [i * i for i in range(5)]
    q = m.Queue()
    for word in ("hello", "from", "a", "stock", "SyncManager"):
        q.put(word)
    lock = m.Lock()
    with lock:
        words = [q.get(timeout=5) for _ in range(q.qsize())]
    print("dict:", d.copy())
    print("queue:", " ".join(words))


if __name__ == "__main__":
    main()
