"""Python's side of tests/test_pickle.cpp: the real pickle module against mpx::py.

  pickle_peer.py gen SEED COUNT   values (fixed ones, then COUNT random ones from SEED), each
                                  pickled with protocols 0-5: "<protocol> <hex> <canon>" lines;
                                  "V <protocol> <hex>" for values mpx must refuse with
                                  ValueError and "P <protocol> <hex> <text>" for ProtocolError
  pickle_peer.py check            one hex pickle a line on stdin: canon(pickle.loads) or ERR ...
  pickle_peer.py peer ADDRESS KEY a multiprocessing.connection Client that echoes objects
  pickle_peer.py listen PATH KEY  the same behind a Listener, for one connection

canon() is a text both sides compute the same way: exact (floats by their bits, str by its
UTF-8 bytes), and independent of set order.
"""
import collections
import fractions
import pickle
import queue
import random
import struct
import sys
import threading


def canon(o):
    t = type(o)
    if o is None:
        return "N"
    if t is bool:
        return "T" if o else "F"
    if t is int:
        return "i%d" % o
    if t is float:
        return "f" + struct.pack("<d", o).hex()
    if t is str:
        return "s" + o.encode("utf-8", "surrogatepass").hex()
    if t is bytes:
        return "b" + o.hex()
    if t is bytearray:
        return "B" + o.hex()
    if t is list:
        return "[" + ",".join(map(canon, o)) + "]"
    if t is tuple:
        return "(" + ",".join(map(canon, o)) + ")"
    if t is dict:
        return "{" + ",".join(canon(k) + ":" + canon(v) for k, v in o.items()) + "}"
    if t is set:
        return "<" + ",".join(sorted(map(canon, o))) + ">"
    if t is frozenset:
        return "z<" + ",".join(sorted(map(canon, o))) + ">"
    if t is slice:
        return "S(" + canon(o.start) + "," + canon(o.stop) + "," + canon(o.step) + ")"
    if isinstance(o, BaseException):
        return "E" + t.__module__ + "." + t.__name__ + canon(o.args)
    raise TypeError("no canon for %r" % t)


def fixed():
    shared = [1, "two"]
    inner = {"k": shared}
    values = [
        None, True, False, 0, 1, -1, 255, 256, 65535, 65536, -129, 2**31 - 1, -2**31, 2**31, -2**31 - 1,
        2**40, 2**63 - 1, -2**63, 0.0, -0.0, 1.5, 1e300, -1e-300, float("inf"), float("-inf"), float("nan"),
        "", "a", "x" * 255, "y" * 256, "h\u00e9llo \u20ac \U0001f600", "\ud800lone", "quote' \"\\\n",
        b"", b"\x00\xff", b"z" * 300, bytearray(), bytearray(b"ab\x80"),
        [], [None], list(range(2500)), (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4),
        {}, {"a": 1, "b": [1, 2]}, {i: str(i) for i in range(1500)}, {(1, "x"): frozenset([1]), None: b"v"},
        set(), {1, 2, 3}, set(range(1200)), frozenset(), frozenset(["a", b"b", 3]),
        slice(1, None, 2), slice(None, 5, None), slice("a", [1], (2,)),
        [shared, shared, inner, inner], (shared, [shared, (shared,)]),
        ["s" * 70000, b"b" * 70000, list(range(20000))],
        KeyError("k"), IndexError("list index out of range"), ValueError("v", 1), TypeError(), AttributeError("a"),
        RuntimeError("r"), queue.Empty(), queue.Full(), threading.BrokenBarrierError(),
    ]
    deep = None
    for _ in range(200):
        deep = [deep]
    values.append(deep)
    return values


def rand_value(r, depth=0):
    kinds = ["none", "bool", "int", "float", "str", "bytes", "bytearray"]
    if depth < 4:
        kinds += ["list", "tuple", "dict", "set", "frozenset", "slice"] * 2
    k = r.choice(kinds)
    if k == "none":
        return None
    if k == "bool":
        return r.random() < 0.5
    if k == "int":
        bits = r.choice([7, 8, 16, 31, 32, 33, 62, 63])
        return r.randrange(-2**bits, 2**bits)
    if k == "float":
        return struct.unpack("<d", struct.pack("<Q", r.getrandbits(64)))[0] if r.random() < 0.3 else r.uniform(-1e6, 1e6)
    if k == "str":
        alphabet = "ab\u00e9\u20ac\U0001f600 '\"\\\n\x00"
        return "".join(r.choice(alphabet) for _ in range(r.randrange(0, 12)))
    if k == "bytes":
        return bytes(r.getrandbits(8) for _ in range(r.randrange(0, 12)))
    if k == "bytearray":
        return bytearray(r.getrandbits(8) for _ in range(r.randrange(0, 12)))
    n = r.randrange(0, 6)
    if k == "list":
        return [rand_value(r, depth + 1) for _ in range(n)]
    if k == "tuple":
        return tuple(rand_value(r, depth + 1) for _ in range(n))
    if k == "dict":
        return {rand_key(r): rand_value(r, depth + 1) for _ in range(n)}
    if k == "set":
        return {rand_key(r) for _ in range(n)}
    if k == "frozenset":
        return frozenset(rand_key(r) for _ in range(n))
    return slice(rand_value(r, 4), rand_value(r, 4), rand_value(r, 4))


def rand_key(r):
    k = r.choice(["int", "str", "bytes", "tuple", "frozenset", "none"])
    if k == "int":
        return r.randrange(-1000, 1000)
    if k == "str":
        return "".join(r.choice("xyz\u00e9") for _ in range(r.randrange(0, 4)))
    if k == "bytes":
        return bytes(r.getrandbits(8) for _ in range(r.randrange(0, 4)))
    if k == "tuple":
        return (rand_key(r), r.randrange(10))
    if k == "frozenset":
        return frozenset([r.randrange(10), "f"])
    return None


class Custom:
    pass


def gen(seed, count):
    r = random.Random(seed)
    values = fixed() + [rand_value(r) for _ in range(count)]
    out = sys.stdout
    for v in values:
        for p in range(6):
            b = pickle.dumps(v, p)  # canon of what Python itself reads back (a NaN's payload is lost in text)
            out.write("%d %s %s\n" % (p, b.hex(), canon(pickle.loads(b))))
    for v in [2**63, -2**63 - 1, 2**100, [1, 2**64]]:
        for p in range(6):
            out.write("V %d %s\n" % (p, pickle.dumps(v, p).hex()))
    refused = [
        (collections.OrderedDict(a=1), "collections.OrderedDict"),
        (fractions.Fraction(1, 3), "fractions.Fraction"),
        (Custom(), "Custom"),
        (int, "builtins.int"),
        (len, "builtins.len"),
        (range(3), "builtins.range"),
        (complex(1, 2), "builtins.complex"),
        (collections.deque([1]), "collections.deque"),
    ]
    for v, text in refused:
        for p in range(2, 6):
            out.write("P %d %s %s\n" % (p, pickle.dumps(v, p).hex(), text))


def check():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            print(canon(pickle.loads(bytes.fromhex(line))))
        except Exception as e:  # reported, compared by the test
            print("ERR %s: %s" % (type(e).__name__, e))


def peer(address, key):
    from multiprocessing.connection import Client

    if address.startswith("unix:"):
        address = address[5:]
    with Client(address, authkey=key.encode()) as c:
        serve(c)


def listen(path, key):
    from multiprocessing.connection import Listener

    with Listener(path, authkey=key.encode()) as listener:
        with listener.accept() as c:
            serve(c)


def serve(c):
    c.send({"hello": "from python", "n": 3, "xs": [1.5, None, (True, b"b")]})
    while True:
        o = c.recv()
        if o == "bye":
            break
        if o == "send None":
            c.send(None)
            continue
        if o == "send dict":
            c.send({"a": 1.0, "b": 2.5})
            continue
        c.send(["echo", canon(o), o])


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "gen":
        gen(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "check":
        check()
    elif mode == "peer":
        peer(sys.argv[2], sys.argv[3])
    elif mode == "listen":
        listen(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown mode " + mode)
