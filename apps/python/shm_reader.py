#!/usr/bin/env python3
"""Sum the doubles a C++ program left in a shared memory block, by the block's name.

Standard library only (numpy is used when installed): the block is Python's own
multiprocessing.shared_memory.SharedMemory. The sum goes back into the block's last double.

  shm_reader.py NAME COUNT      # the block holds COUNT doubles and one more for the answer
"""
import sys
from multiprocessing import resource_tracker, shared_memory


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    name, count = sys.argv[1], int(sys.argv[2])
    shm = shared_memory.SharedMemory(name=name)
    # Python 3.11 registers a block it merely attaches to and would unlink it at exit: the
    # block is the C++ program's to remove.
    resource_tracker.unregister(shm._name, "shared_memory")
    try:
        import numpy
        xs = numpy.ndarray((count + 1,), dtype=numpy.float64, buffer=shm.buf)
        how, total = "numpy", float(xs[:count].sum())
        xs[count] = total
        del xs
    except ImportError:
        xs = shm.buf.cast("d")
        how, total = "memoryview", float(sum(xs[:count]))
        xs[count] = total
        xs.release()
    print(f"python ({how}): {count} doubles in '{name}', sum {total:.1f}")
    shm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
