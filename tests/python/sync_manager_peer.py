"""A stock Python SyncManager client against an mpx server (standard library only).

usage: sync_manager_peer.py ADDRESS AUTHKEY_FILE

Drives every proxy type SyncManager offers, the named objects, and the errors Python's own
server would send, asserting each answer; prints "OK" and exits 0 when all hold.
"""
import multiprocessing.connection as mc
import multiprocessing.managers as mm
import queue
import sys
import threading
import time


class Named(mm.BaseManager):
    pass


for typeid in ("get_dict", "get_list", "get_queue", "get_value", "get_lock", "get_event", "get_namespace"):
    Named.register(typeid)


def expect(exc_type, f, *args, **kwds):
    try:
        f(*args, **kwds)
    except exc_type as e:
        return e
    raise AssertionError(f"{f} did not raise {exc_type.__name__}")


def main():
    address, key_file = sys.argv[1], sys.argv[2]
    with open(key_file, "rb") as f:
        authkey = f.read().rstrip(b"\n")
    m = mm.SyncManager(address=address, authkey=authkey)
    m.connect()

    d = m.dict()
    d["n"] = 1
    d["x"] = 2.5
    d.update({"s": "text", "b": b"\x00\xff"}, t=(1, 2))
    assert d["n"] == 1 and d["x"] == 2.5 and d["s"] == "text" and d["b"] == b"\x00\xff", d.copy()
    assert d["t"] == (1, 2)
    assert len(d) == 5 and "n" in d and "zz" not in d
    assert d.get("zz") is None and d.get("zz", 7) == 7
    assert d.keys() == ["n", "x", "s", "b", "t"], d.keys()
    assert sorted(k for k in d) == sorted(d.keys())  # __iter__: an Iterator proxy
    assert d.items()[0] == ("n", 1)
    assert d.setdefault("n", 99) == 1 and d.setdefault("new", 3) == 3
    assert d.pop("new") == 3 and d.pop("new", "gone") == "gone"
    e = expect(KeyError, d.__getitem__, "zz")
    assert e.args == ("zz",), e.args
    del d["t"]
    expect(KeyError, d.__delitem__, "t")
    assert d.popitem() == ("b", b"\x00\xff")
    d.clear()
    assert len(d) == 0
    expect(KeyError, d.popitem)
    d2 = m.dict({"a": [1, {"nested": None}]}, z=1)
    assert d2.copy() == {"a": [1, {"nested": None}], "z": 1}

    lst = m.list([3, 1, 2])
    lst.append(5)
    lst.extend([4, 0])
    assert lst[:] == [3, 1, 2, 5, 4, 0] and lst[-1] == 0 and lst[1:3] == [1, 2] and lst[::-2] == [0, 5, 1]
    lst.sort()
    assert lst[:] == [0, 1, 2, 3, 4, 5]
    lst.sort(reverse=True)
    assert lst[:] == [5, 4, 3, 2, 1, 0]
    lst.reverse()
    lst[0] = "zero"
    lst.insert(1, "half")
    assert lst.index(2) == 3 and lst.count(2) == 1 and 4 in lst and 9 not in lst
    assert lst.pop() == 5 and lst.pop(0) == "zero"
    lst.remove("half")
    expect(ValueError, lst.remove, "half")
    expect(IndexError, lst.__getitem__, 99)
    assert [x for x in lst] == [1, 2, 3, 4]  # iterates through __getitem__ until IndexError
    assert lst + [9] == [1, 2, 3, 4, 9] and lst * 2 == [1, 2, 3, 4] * 2
    lst += [5]
    del lst[0]
    assert lst[:] == [2, 3, 4, 5] and len(lst) == 4

    # Slice assignment and deletion, step or not, against a plain list doing the same.
    shared, plain = m.list(list(range(10))), list(range(10))
    for key, value in ((slice(2, 5), ["a", "b"]), (slice(None, 1), []), (slice(7, 3), ["ins"]),
                       (slice(None, None, 3), ["x", "y", "z"]), (slice(-1, None, -4), [0, 0, 0]),
                       (slice(-2, None), ("t", "u", "v"))):
        shared[key] = value
        plain[key] = value
        assert shared[:] == plain, (key, shared[:], plain)
    for key in (slice(1, 3), slice(None, None, -2), slice(100, 200)):
        del shared[key]
        del plain[key]
        assert shared[:] == plain, (key, shared[:], plain)
    expect(ValueError, shared.__setitem__, slice(None, None, 2), [1])
    expect(ValueError, shared.__setitem__, slice(None, None, 0), [])
    expect(TypeError, shared.__setitem__, slice(0, 1), 5)

    q = m.Queue()
    q.put({"k": 1})
    q.put_nowait([1, 2])
    assert q.qsize() == 2 and not q.empty()
    assert q.get() == {"k": 1} and q.get_nowait() == [1, 2]
    expect(queue.Empty, q.get_nowait)
    t0 = time.monotonic()
    expect(queue.Empty, q.get, timeout=0.2)
    assert time.monotonic() - t0 >= 0.15
    bq = m.Queue(1)
    bq.put(1)
    assert bq.full()
    expect(queue.Full, bq.put, 2, timeout=0.05)
    expect(queue.Full, bq.put_nowait, 2)
    # A blocking get served by another thread's put (each thread has its own connection).
    threading.Timer(0.1, lambda: q.put("late")).start()
    assert q.get(timeout=10) == "late"

    jq = m.JoinableQueue()
    jq.put(1)
    jq.get()
    jq.task_done()
    jq.join()
    expect(ValueError, jq.task_done)

    lock = m.Lock()
    assert lock.acquire() and not lock.acquire(False) and not lock.acquire(timeout=0.05)
    lock.release()
    expect(RuntimeError, lock.release)
    with lock:
        pass
    rl = m.RLock()
    with rl:
        with rl:
            pass
    sem = m.Semaphore(2)
    assert sem.acquire() and sem.acquire() and not sem.acquire(timeout=0.05)
    sem.release()
    sem.release()
    bs = m.BoundedSemaphore(1)
    bs.acquire()
    bs.release()
    expect(ValueError, bs.release)

    cond = m.Condition()
    ready = []

    def notifier():
        time.sleep(0.1)
        with cond:
            ready.append(1)
            cond.notify_all()

    threading.Thread(target=notifier).start()
    with cond:
        assert cond.wait_for(lambda: ready, timeout=10)
        assert not cond.wait(0.01)
    expect(RuntimeError, cond.notify)

    ev = m.Event()
    assert not ev.is_set() and not ev.wait(0.05)
    threading.Timer(0.05, ev.set).start()
    assert ev.wait(10) and ev.is_set()
    ev.clear()
    assert not ev.is_set()

    bar = m.Barrier(2)
    assert bar.parties == 2 and bar.n_waiting == 0 and not bar.broken
    out = []
    th = threading.Thread(target=lambda: out.append(bar.wait(10)))
    th.start()
    out.append(bar.wait(10))
    th.join()
    assert sorted(out) == [0, 1], out
    bar1 = m.Barrier(2)
    expect(threading.BrokenBarrierError, bar1.wait, 0.05)
    assert bar1.broken
    bar1.reset()

    ns = m.Namespace(a=1)
    ns.b = "two"
    assert ns.a == 1 and ns.b == "two"
    del ns.a
    expect(AttributeError, getattr, ns, "a")

    v = m.Value("i", 7)
    assert v.value == 7
    v.value += 1
    assert v.get() == 8
    arr = m.Array("d", [0.5, 1.5, 2.5])
    arr[1] = 9.0
    assert len(arr) == 3 and arr[1] == 9.0 and arr[:] == [0.5, 9.0, 2.5]
    expect(IndexError, arr.__getitem__, 3)

    # A method the object does not expose: Python's server answers with a traceback.
    conn = mc.Client(address, authkey=authkey)
    conn.send((d._id, "no_such_method", (), {}))
    kind, text = conn.recv()
    assert kind == "#TRACEBACK" and "no_such_method" in text, (kind, text)
    conn.send(("no-such-id", "keys", (), {}))
    kind, text = conn.recv()
    assert kind == "#TRACEBACK" and "no-such-id" in text, (kind, text)
    conn.send((None, "shutdown", (), {}))  # a client may not stop mpxd
    kind, text = conn.recv()
    assert kind == "#TRACEBACK" and "shutdown" in text, (kind, text)
    conn.send((None, "dummy", (), {}))  # and the connection still serves
    assert conn.recv() == ("#RETURN", None)
    conn.close()

    # Named objects: every client that asks for a name gets the same object.
    n1 = Named(address=address, authkey=authkey)
    n1.connect()
    n2 = Named(address=address, authkey=authkey)
    n2.connect()
    jobs = n1.get_queue("py-jobs")
    n2.get_queue("py-jobs").put({"job": 1})
    assert jobs.get(timeout=10) == {"job": 1}
    nd = n1.get_dict("py-dict")
    nd["k"] = [1, 2]
    assert n2.get_dict("py-dict")["k"] == [1, 2]
    assert n1.get_value("py-value", 5).get() == 5 and n2.get_value("py-value").get() == 5
    nl = n1.get_lock("py-lock")
    assert nl.acquire() and not n2.get_lock("py-lock").acquire(timeout=0.05)
    nl.release()
    print("OK")


if __name__ == "__main__":
    main()
