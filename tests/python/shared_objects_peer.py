"""Named objects shared between C++ and stock Python clients of one mpx server.

usage: shared_objects_peer.py ADDRESS AUTHKEY_FILE STEP
  cpp-made   reads and extends the objects the C++ side made first (C++ types)
  py-made    makes objects first, holding Python values the C++ side then opens
  tasks      submits to the named task queue 'work' that apps/task_worker serves
Standard library only; prints "OK" when every assertion holds.
"""
import multiprocessing.managers as mm
import sys


class Shared(mm.BaseManager):
    pass


for typeid in ("get_dict", "get_list", "get_queue", "get_value", "get_task_queue"):
    Shared.register(typeid)


def raises(exc_type, f, *args):
    try:
        f(*args)
    except exc_type:
        return True
    return False


def main():
    address, key_file, step = sys.argv[1:4]
    with open(key_file, "rb") as f:
        m = Shared(address=address, authkey=f.read().rstrip(b"\n"))
    m.connect()
    if step == "cpp-made":
        jobs = m.get_queue("cpp-jobs")  # std::map<std::string, double>
        assert jobs.get(timeout=10) == {"a": 1.5}
        jobs.put({"b": 2})  # an int converts to double, as C++ would
        assert raises(TypeError, jobs.put, {"b": "not a float"})
        assert raises(TypeError, jobs.put, [1, 2])
        counts = m.get_dict("cpp-counts")  # std::map<std::string, std::int32_t>
        assert counts["n"] == 1 and counts.keys() == ["n"]
        counts["m"] = 2
        assert raises(TypeError, counts.__setitem__, "big", 2**40)  # beyond int32
        assert raises(TypeError, counts.__setitem__, 3, 3)  # keys are str
        xs = m.get_list("cpp-xs")  # std::vector<double>
        assert xs[:] == [0.5, 1.5]
        xs.append(2.5)
        v = m.get_value("cpp-pair")  # std::tuple<std::string, std::int64_t, std::optional<bool>>
        assert v.get() == ("x", 7, None)
        v.set(["y", 8, True])
        s = m.get_value("cpp-set")  # std::set<std::uint16_t>
        assert s.get() == {1, 2}
        assert raises(TypeError, s.set, {70000})  # beyond uint16
        s.set({3})
    elif step == "py-made":
        q = m.get_queue("py-made")
        q.put({"x": 1.0})
        q.put({"y": 2})
        m.get_dict("py-dict")["k"] = [1, 2]
        mixed = m.get_queue("py-mixed")
        mixed.put({"x": 1.0})
        mixed.put("not a dict")
    elif step == "tasks":
        tq = m.get_task_queue("work")
        assert ("square", "tuple[i64]", "i64") in tq.tasks(), tq.tasks()
        assert tq.submit("square", 7) == 49
        assert tq.submit("shout", "hello") == "HELLO!"
        assert tq.submit("word_count", "one two three") == 3
        assert tq.submit("pid") > 0
        try:
            tq.submit("isqrt", -1)
            raise AssertionError("isqrt(-1) did not fail")
        except RuntimeError as e:
            assert "negative" in str(e), e
        assert raises(TypeError, tq.submit, "square", "seven")
        assert raises(TypeError, tq.submit, "square", 1, 2)
        assert raises(ValueError, tq.submit, "no_such_task")
        assert tq.submit("isqrt", 1 << 40) == 1 << 20  # and the queue still serves
    else:
        sys.exit(f"unknown step {step}")
    print("OK")


if __name__ == "__main__":
    main()
