// Named shared memory blocks and ShareableList: their errors, fork and name sharing, byte
// compatibility with the machine's python3 both ways, and the resource tracker's cleanup after
// a SIGKILL. RawValue / RawArray are here too (the lock-free kin of Value / Array).
#include <mpx/process.hpp>
#include <mpx/shared_memory.hpp>
#include <mpx/sharedctypes.hpp>

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>
#include <support.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using mpx::ShareableList;
using mpx::SharedMemory;
using Item = ShareableList::Item;

namespace {

// Names the suite's leak check recognises ("mpx" in them), unique per process and call.
std::string test_name(const std::string& what) {
  static int n = 0;
  return "mpx-test-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
}

bool exists(const std::string& name) { return std::filesystem::exists("/dev/shm/" + name); }

bool have_python() { return mpx::test::run({"python3", "-c", "pass"}, "/dev/null", 10s) == 0; }

// Runs a python3 script with arguments; its stdout (stderr too) when it exits 0.
std::string python(const std::string& script, std::vector<std::string> args = {}) {
  mpx::test::TempDir dir("mpx-py");
  std::vector<std::string> argv{"python3", "-c", script};
  argv.insert(argv.end(), args.begin(), args.end());
  auto code = mpx::test::run(argv, dir / "log", 30s);
  std::string out = mpx::test::slurp(dir / "log");
  INFO(out);
  REQUIRE(code == 0);
  return out;
}

// Python 3.11 registers blocks it only attaches to with its resource tracker, which would unlink
// them when the script ends: the scripts unregister what they did not create for keeps.
const std::string kPyPrelude =
    "import sys\n"
    "from multiprocessing import shared_memory, resource_tracker\n"
    "def keep(shm): resource_tracker.unregister(shm._name, 'shared_memory')\n";

}  // namespace

TEST_CASE("SharedMemory: create, attach by name, share through fork, unlink") {
  auto name = test_name("basic");
  auto shm = SharedMemory::create(10 * sizeof(double), name);
  CHECK(shm.name() == name);
  CHECK(shm.size() == 80);
  auto xs = shm.as<double>();
  REQUIRE(xs.size() == 10);
  CHECK(std::all_of(xs.begin(), xs.end(), [](double x) { return x == 0.0; }));  // fresh blocks are zeroed
  std::iota(xs.begin(), xs.end(), 1.0);

  mpx::Process child([name] {
    auto other = SharedMemory::attach(name);
    auto ys = other.as<double>();
    double sum = std::accumulate(ys.begin(), ys.end(), 0.0);
    ys[0] = sum;  // 55
  });
  child.start();
  child.join();
  CHECK(child.exitcode() == 0);
  CHECK(xs[0] == 55.0);

  auto again = SharedMemory::attach(name);
  CHECK(again.size() == 80);
  CHECK(again.as<double>()[9] == 10.0);
  again.close();
  CHECK(again.closed());
  CHECK_THROWS_AS(again.buf(), mpx::StateError);
  again.close();  // idempotent

  shm.unlink();
  CHECK_FALSE(exists(name));
  CHECK(xs[9] == 10.0);  // still mapped here
  CHECK_THROWS_AS(shm.unlink(), mpx::FileNotFoundError);
  CHECK_THROWS_AS(SharedMemory::attach(name), mpx::FileNotFoundError);
}

TEST_CASE("SharedMemory: a fresh name is Python's kind, and moves keep one owner") {
  auto shm = SharedMemory::create(100);
  CHECK(shm.name().size() == 12);
  CHECK(shm.name().rfind("psm_", 0) == 0);
  CHECK(exists(shm.name()));
  SharedMemory moved = std::move(shm);
  CHECK(moved.size() == 100);
  CHECK(moved.buf().size() == 100);
  moved.unlink();
  CHECK_FALSE(exists(moved.name()));
}

TEST_CASE("SharedMemory: bad input is refused and leaves nothing behind") {
  CHECK_THROWS_AS(SharedMemory::create(0, test_name("zero")), mpx::ValueError);
  CHECK_THROWS_AS(SharedMemory::create(8, "a/b"), mpx::ValueError);
  CHECK_THROWS_AS(SharedMemory::create(8, std::string(256, 'x')), mpx::ValueError);
  CHECK_THROWS_AS(SharedMemory::create(8, ".."), mpx::ValueError);
  CHECK_THROWS_AS(SharedMemory::attach("a/b"), mpx::ValueError);
  CHECK_THROWS_AS(SharedMemory::attach(test_name("missing")), mpx::FileNotFoundError);

  auto name = test_name("taken");
  auto shm = SharedMemory::create(24, name);
  std::memset(shm.buf().data(), 7, 24);
  CHECK_THROWS_AS(SharedMemory::create(48, name), mpx::FileExistsError);
  CHECK(SharedMemory::attach(name).size() == 24);  // the first block is untouched
  CHECK(static_cast<int>(SharedMemory::attach(name).buf()[23]) == 7);

  CHECK(shm.as<std::uint64_t>().size() == 3);
  using Sixteen = std::array<char, 16>;
  CHECK_THROWS_AS(shm.as<Sixteen>(), mpx::ValueError);  // 24 is not a multiple of 16
  shm.unlink();
}

TEST_CASE("SharedMemory: the block of a SIGKILLed process tree is unlinked by the tracker") {
  auto prefix = test_name("killed");
  mpx::test::TempDir dir("mpx-shm");
  mpx::test::ChildProcess holder({std::string(MPX_BINARY_DIR) + "/tests/shm_holder", prefix}, dir / "log");
  const std::string parent = prefix + "-parent", child = prefix + "-child";
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!(exists(parent) && exists(child)) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  INFO(holder.output());
  REQUIRE(exists(parent));
  REQUIRE(exists(child));
  // Both lines printed: the blocks are registered (each is printed after its create returned).
  deadline = std::chrono::steady_clock::now() + 20s;
  auto lines = [&] {
    auto out = holder.output();
    return std::count(out.begin(), out.end(), '\n');
  };
  while (lines() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  REQUIRE(lines() == 2);

  holder.signal(SIGKILL);  // the forked child follows by its parent-death signal
  CHECK(holder.wait(10s) == -SIGKILL);
  deadline = std::chrono::steady_clock::now() + 10s;
  while ((exists(parent) || exists(child)) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  CHECK_FALSE(exists(parent));
  CHECK_FALSE(exists(child));
}

TEST_CASE("SharedMemoryManager unlinks every block it made, in its own process only") {
  std::string a, b;
  {
    mpx::SharedMemoryManager smm;
    auto shm = smm.shared_memory(64);
    auto list = smm.shareable_list({std::int64_t{1}, std::string("two")});
    a = shm.name();
    b = list.shm().name();
    CHECK(exists(a));
    CHECK(exists(b));
    mpx::Process child([&] { smm.shutdown(); });  // a forked copy must not remove them
    child.start();
    child.join();
    CHECK(child.exitcode() == 0);
    CHECK(exists(a));
    CHECK(exists(b));
  }
  CHECK_FALSE(exists(a));
  CHECK_FALSE(exists(b));

  mpx::SharedMemoryManager smm;
  auto c = smm.shared_memory(8).name();
  smm.shutdown();
  CHECK_FALSE(exists(c));
  smm.shutdown();  // idempotent
}

TEST_CASE("ShareableList: items, negative indexes, set within a slot, count and index") {
  auto list = ShareableList::create({std::monostate{}, true, std::int64_t{-42}, 2.5, std::string("hello"),
                                     mpx::Bytes{std::byte{1}, std::byte{0}, std::byte{2}}, std::int64_t{1}},
                                    test_name("list"));
  REQUIRE(list.size() == 7);
  CHECK(list.get(0) == Item{std::monostate{}});
  CHECK(list.get(1) == Item{true});
  CHECK(list.get(2) == Item{std::int64_t{-42}});
  CHECK(list.get(3) == Item{2.5});
  CHECK(list.get(4) == Item{std::string("hello")});
  CHECK(list.get(5) == Item{mpx::Bytes{std::byte{1}, std::byte{0}, std::byte{2}}});
  CHECK(list.get(-1) == Item{std::int64_t{1}});
  CHECK_THROWS_AS(list.get(7), mpx::IndexError);
  CHECK_THROWS_AS(list.get(-8), mpx::IndexError);

  // "hello" has a slot of 8 bytes: up to 8 fit, 9 do not (as in Python).
  list.set(4, std::string("12345678"));
  CHECK(list.get(4) == Item{std::string("12345678")});
  CHECK_THROWS_AS(list.set(4, std::string("123456789")), mpx::ValueError);
  CHECK(list.get(4) == Item{std::string("12345678")});
  list.set(4, std::int64_t{7});  // any kind fits any slot
  CHECK(list.get(4) == Item{std::int64_t{7}});
  list.set(2, std::string("abc"));  // an 8-byte number slot takes up to 8 bytes of text
  CHECK(list.get(2) == Item{std::string("abc")});
  list.set(-7, 1.0);
  CHECK(list.get(0) == Item{1.0});

  // Python's equality: True == 1 == 1.0.
  CHECK(list.count(Item{std::int64_t{1}}) == 3);  // True, 1, 1.0
  CHECK(list.index(Item{true}) == std::optional<std::size_t>{0});
  CHECK(list.index(Item{std::string("nope")}) == std::nullopt);

  auto other = ShareableList::attach(list.shm().name());
  CHECK(other.items() == list.items());
  CHECK_THROWS_AS(ShareableList::create({std::string(10'000'000, 'x')}), mpx::ValueError);
  list.shm().unlink();
}

TEST_CASE("SharedMemory and ShareableList with Python's multiprocessing.shared_memory, both ways") {
  if (!have_python()) {
    MESSAGE("python3 not found: interop skipped");
    return;
  }
  SUBCASE("a C++ block read and written by Python") {
    auto shm = SharedMemory::create(4 * sizeof(double), test_name("py"));
    auto xs = shm.as<double>();
    std::iota(xs.begin(), xs.end(), 0.5);
    auto out = python(kPyPrelude +
                          "shm = shared_memory.SharedMemory(name=sys.argv[1]); keep(shm)\n"
                          "d = shm.buf.cast('d'); print(shm.size, list(d)); d[3] = 99.25\n"
                          "del d; shm.close()\n",
                      {shm.name()});
    CHECK(out == "32 [0.5, 1.5, 2.5, 3.5]\n");
    CHECK(xs[3] == 99.25);
    shm.unlink();
  }
  SUBCASE("a Python block read by C++") {
    auto name = test_name("frompy");
    python(kPyPrelude +
               "shm = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=24); keep(shm)\n"
               "shm.buf.cast('q')[2] = -123456789\n"
               "shm.close()\n",
           {name});
    auto shm = SharedMemory::attach(name);
    CHECK(shm.size() == 24);
    CHECK(shm.as<std::int64_t>()[2] == -123456789);
    shm.unlink();
  }
  SUBCASE("ShareableList: the same bytes as Python's for the same items, and each reads the other's") {
    const std::string items_py =
        "[None, True, False, 42, -7, 2.5, 'hello', 'exactly8', '', b'ab\\x00c', b'']";
    std::vector<Item> items{std::monostate{},
                            true,
                            false,
                            std::int64_t{42},
                            std::int64_t{-7},
                            2.5,
                            std::string("hello"),
                            std::string("exactly8"),
                            std::string(""),
                            mpx::Bytes{std::byte{'a'}, std::byte{'b'}, std::byte{0}, std::byte{'c'}},
                            mpx::Bytes{}};
    auto mine = ShareableList::create(items, test_name("sl"));
    auto name = test_name("slpy");
    auto out = python(kPyPrelude + "sl = shared_memory.ShareableList(" + items_py +
                          ", name=sys.argv[1]); keep(sl.shm)\n"
                          "print(bytes(sl.shm.buf).hex())\n"
                          "theirs = shared_memory.ShareableList(name=sys.argv[2]); keep(theirs.shm)\n"
                          "print(list(theirs) == " +
                          items_py +
                          ")\n"
                          "theirs[6] = 'bye'; theirs[3] = 1.25; theirs[0] = 'x'\n"
                          "sl.shm.close(); theirs.shm.close()\n",
                      {name, mine.shm().name()});
    // Byte for byte what Python made for the same items.
    std::ostringstream hex;
    for (auto b : mine.shm().buf())
      hex << "0123456789abcdef"[static_cast<int>(b) >> 4] << "0123456789abcdef"[static_cast<int>(b) & 15];
    auto lines = out.substr(0, out.find('\n'));
    // Python wrote "bye" / 1.25 / "x" after this process wrote its list: compare the original.
    auto fresh = ShareableList::create(items, test_name("sl2"));
    std::ostringstream fresh_hex;
    for (auto b : fresh.shm().buf())
      fresh_hex << "0123456789abcdef"[static_cast<int>(b) >> 4]
                << "0123456789abcdef"[static_cast<int>(b) & 15];
    CHECK(lines == fresh_hex.str());
    CHECK(out.substr(out.find('\n') + 1) == "True\n");
    CHECK(mine.get(6) == Item{std::string("bye")});
    CHECK(mine.get(3) == Item{1.25});
    CHECK(mine.get(0) == Item{std::string("x")});
    fresh.shm().unlink();
    mine.shm().unlink();

    auto theirs = ShareableList::attach(name);
    CHECK(theirs.items() == items);
    theirs.set(9, std::string("py"));
    theirs.set(1, std::monostate{});
    CHECK(python(kPyPrelude + "sl = shared_memory.ShareableList(name=sys.argv[1]); keep(sl.shm)\n"
                              "print(sl[9], sl[1], sl.format)\n"
                              "sl.shm.close()\n",
                 {name}) ==
          "py None " + std::string("xxxxxx?x") + "xxxxxx?x" + "xxxxxxx?" + "qqd8s16s8s8s8s\n");
    theirs.shm().unlink();
  }
}

TEST_CASE("RawValue and RawArray: shared storage without a lock") {
  mpx::RawValue<std::int64_t> v(5);
  mpx::RawArray<double> a(4, 1.5);
  mpx::RawArray<int> b(std::vector<int>{1, 2, 3});
  CHECK(v.load() == 5);
  CHECK(a.size() == 4);
  CHECK(b[2] == 3);
  CHECK_THROWS_AS(b.at(3), mpx::IndexError);
  mpx::Process child([v, a, b]() mutable {
    v.store(v.load() * 10);
    a[3] = 9.0;
    b.span()[0] = 100;
  });
  child.start();
  child.join();
  CHECK(child.exitcode() == 0);
  CHECK(v.load() == 50);
  CHECK(a[3] == 9.0);
  CHECK(b[0] == 100);
  CHECK(std::accumulate(a.begin(), a.end(), 0.0) == 13.5);
}
