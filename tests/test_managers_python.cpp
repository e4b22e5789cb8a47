// Python's manager protocol on mpxd: a stock SyncManager client (tests/python/
// sync_manager_peer.py) drives every proxy type against the daemon; named objects are the same
// objects for C++ clients where their types agree; malformed Python requests get Python's
// '#TRACEBACK' reply and the connection keeps serving.
#include <mpx/connection.hpp>
#include <mpx/managers.hpp>
#include <mpx/pickle.hpp>

#include <doctest/doctest.h>
#include <support.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace py = mpx::py;

namespace {

const std::string kMpxd = std::string(MPX_BINARY_DIR) + "/apps/mpxd";
const std::string kPeer = std::string(MPX_SOURCE_DIR) + "/tests/python/sync_manager_peer.py";
const std::string kPipeline = std::string(MPX_BINARY_DIR) + "/apps/mixed_pipeline";
const std::string kPipelinePy = std::string(MPX_SOURCE_DIR) + "/apps/python/mixed_pipeline.py";
const std::string kWorker = std::string(MPX_BINARY_DIR) + "/apps/task_worker";
const std::string kShared = std::string(MPX_SOURCE_DIR) + "/tests/python/shared_objects_peer.py";

// An mpxd on a socket in a scratch directory, ready for clients.
struct Daemon {
  mpx::test::TempDir dir{"mpx-pymgr"};
  std::string sock = dir / "mpxd.sock";
  std::string key_file = mpx::test::write_file(dir / "key", "py key\n", 0600);
  mpx::Address address = mpx::Address::unix_path(sock);
  mpx::test::ChildProcess proc{{kMpxd, "--address", "unix:" + sock, "--authkey-file", key_file},
                               dir / "mpxd.log"};

  Daemon() {
    const std::string hint = "build the mpxd target first: " + kMpxd;
    REQUIRE_MESSAGE(fs::exists(kMpxd), hint);
    for (int i = 0; i < 500 && !mpx::test::unix_socket_listening(sock); ++i) REQUIRE_FALSE(proc.wait(10ms));
    REQUIRE(mpx::test::unix_socket_listening(sock));
  }
  mpx::Manager connect() { return mpx::Manager::connect(address, "py key"); }
  // Runs a program to its end (its output in the scratch directory): exit code and output.
  struct Ran {
    std::optional<int> rc;
    std::string out;
  };
  Ran run(const std::vector<std::string>& args, const std::string& log_name) {
    std::string log = dir / log_name;
    auto rc = mpx::test::run(args, log, 120s);
    return {rc, mpx::test::slurp(log)};
  }
  mpx::Connection raw() { return mpx::Client(address, std::string("py key")); }
};

py::Object request(py::Object ident, std::string method, py::List args = {}, py::Dict kwds = {}) {
  return py::Object::tuple({std::move(ident), py::Object(std::move(method)),
                            py::Object::tuple(std::move(args)), py::Object(std::move(kwds))});
}

// The reply's kind ('#RETURN', '#ERROR', '#TRACEBACK') and value.
std::pair<std::string, py::Object> answer(mpx::Connection& c) {
  py::Object r = c.recv_object();
  REQUIRE(r.kind() == py::Kind::tuple);
  const auto& t = r.get<py::List>();
  REQUIRE(t.size() == 2);
  return {t[0].get<std::string>(), t[1]};
}

// A program's own type: nothing Python could share.
struct Point {
  int x = 0, y = 0;
  template <class A>
  void serialize(A& a) {
    a(x, y);
  }
};

mpx::Bytes raw_bytes(std::string_view s) {
  mpx::Bytes b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

}  // namespace

TEST_CASE("a stock Python SyncManager uses mpxd: every proxy type, named objects, Python's errors") {
  MPX_REQUIRE_PYTHON(python);
  Daemon d;
  auto [rc, out] = d.run({*python, kPeer, d.sock, d.key_file}, "peer.log");
  INFO(out);
  INFO(d.proc.output());
  CHECK(rc == 0);
  CHECK(out.find("OK") != std::string::npos);

  // The script left its named objects behind: a lock (no values) is the same object for C++;
  // a dict of Python lists is not a dict of C++ ints, while the drained queue takes any type.
  auto m = d.connect();
  auto lock = m.lock("py-lock");
  CHECK(lock.acquire(0s));
  lock.release();
  auto open_as_ints = [&] { m.dict<std::string, int>("py-dict"); };
  CHECK_THROWS_WITH_AS(open_as_ints(), doctest::Contains("not all"), mpx::TypeMismatch);
  CHECK(m.queue<int>(0, "py-jobs").empty());  // drained: any element type can take it over

  // Every anonymous object the script made was released with its last proxy.
  auto c = d.raw();
  c.send_object(request(py::none, "number_of_objects"));
  CHECK(answer(c) == std::pair<std::string, py::Object>{"#RETURN", py::Object(0)});
}

TEST_CASE("Python requests: malformed ones get '#TRACEBACK', and the connection keeps serving") {
  Daemon d;
  auto c = d.raw();
  c.send_object(request(py::none, "dummy"));  // the first frame decides: Python's protocol
  CHECK(answer(c) == std::pair<std::string, py::Object>{"#RETURN", py::none});

  auto check_refused = [&](const mpx::Bytes& frame, const std::string& says) {
    CAPTURE(says);
    c.send_bytes(frame);
    auto [kind, value] = answer(c);
    CHECK(kind == "#TRACEBACK");
    CHECK(py::repr(value).find(says) != std::string::npos);
    c.send_object(request(py::none, "dummy"));
    CHECK(answer(c).first == "#RETURN");
  };
  mpx::Bytes dummy = py::dumps(request(py::none, "dummy"));
  SUBCASE("bad pickles") {
    mpx::Bytes truncated(dummy.begin(), dummy.begin() + static_cast<std::ptrdiff_t>(dummy.size() / 2));
    check_refused(truncated, "not a pickle");
    mpx::Bytes wrong_protocol = dummy;
    wrong_protocol[1] = std::byte{9};
    check_refused(wrong_protocol, "not a pickle");
    check_refused(raw_bytes("\x80\x02h\x05."), "not a pickle");              // memo reference to nothing
    check_refused(raw_bytes("\x80\x02X\xff\xff\xff\x7f."), "not a pickle");  // a 2 GiB str in 7 bytes
    std::string deep = "\x80\x02" + std::string(5000, ']') + std::string(5000, 'a') + ".";
    check_refused(raw_bytes(deep), "not a pickle");  // nesting past the depth limit
    check_refused(raw_bytes("\x80\x02"
                            "cos\nsystem\n."),
                  "os.system");  // any other global
  }
  SUBCASE("well-formed pickles that are not requests") {
    check_refused(py::dumps(py::Object("hello")), "request is a tuple");
    check_refused(py::dumps(py::Object::tuple({py::none, py::Object("dummy")})), "request is a tuple");
    check_refused(py::dumps(request(py::Object("no-such-id"), "keys")), "no-such-id");
    check_refused(py::dumps(request(py::none, "no_such_call")), "no_such_call");
    check_refused(py::dumps(request(py::none, "create", {py::Object("NoSuchType")})), "NoSuchType");
    check_refused(py::dumps(request(py::none, "shutdown")), "shutdown");
  }
  SUBCASE("a call with wrong arguments raises TypeError, as the method would") {
    c.send_object(request(py::none, "create", {py::Object("dict")}));
    auto [kind, made] = answer(c);
    REQUIRE(kind == "#RETURN");
    py::Object ident = made.get<py::List>()[0];
    c.send_object(request(ident, "__setitem__", {py::Object(1)}));
    auto [k1, e1] = answer(c);
    CHECK(k1 == "#ERROR");
    CHECK(e1.get<py::Exception>().type == py::ExceptionType::TypeError);
    c.send_object(request(ident, "get", {}, py::Dict{{py::Object("bogus"), py::Object(1)}}));
    auto [k2, e2] = answer(c);
    CHECK(k2 == "#ERROR");
    CHECK(py::repr(e2).find("bogus") != std::string::npos);
    c.send_object(request(ident, "__setitem__", {py::List{}, py::Object(1)}));  // an unhashable key
    CHECK(answer(c).first == "#ERROR");
    c.send_object(request(py::none, "decref", {ident}));
    CHECK(answer(c).first == "#RETURN");
  }
  // The server kept serving everyone.
  auto m = d.connect();
  m.dict<std::string, int>("still-here").set("x", 1);
  CHECK(m.dict<std::string, int>("still-here").at("x") == 1);
}

TEST_CASE("one named object, two languages: C++ types convert for Python, Python's values for C++") {
  MPX_REQUIRE_PYTHON(python);
  Daemon d;
  auto m = d.connect();
  auto peer = [&](const std::string& step) {
    auto [rc, out] = d.run({*python, kShared, d.sock, d.key_file, step}, "peer-" + step + ".log");
    INFO(out);
    CHECK(rc == 0);
    CHECK(out.find("OK") != std::string::npos);
  };

  SUBCASE("C++ makes them first") {
    using Doc = std::map<std::string, double>;
    auto jobs = m.queue<Doc>(0, "cpp-jobs");
    jobs.put(Doc{{"a", 1.5}});
    auto counts = m.dict<std::string, std::int32_t>("cpp-counts");
    counts.set("n", 1);
    auto xs = m.list<double>("cpp-xs");
    xs.append(0.5);
    xs.append(1.5);
    auto pair = m.value<std::tuple<std::string, std::int64_t, std::optional<bool>>>(
        std::tuple<std::string, std::int64_t, std::optional<bool>>{"x", 7, std::nullopt}, "cpp-pair");
    auto small = m.value<std::set<std::uint16_t>>({1, 2}, "cpp-set");
    peer("cpp-made");
    CHECK(jobs.get(10s) == Doc{{"b", 2.0}});
    CHECK(jobs.empty());  // the refused puts left nothing behind
    CHECK(counts.at("m") == 2);
    CHECK(counts.size() == 2);
    CHECK(xs.snapshot() == std::vector<double>{0.5, 1.5, 2.5});
    CHECK(pair.get() == std::tuple<std::string, std::int64_t, std::optional<bool>>{"y", 8, true});
    CHECK(small.get() == std::set<std::uint16_t>{3});
  }
  SUBCASE("Python makes them first") {
    peer("py-made");
    auto q = m.queue<std::map<std::string, double>>(0, "py-made");
    CHECK(q.get(10s) == std::map<std::string, double>{{"x", 1.0}});
    CHECK(q.get(10s) == std::map<std::string, double>{{"y", 2.0}});
    CHECK(m.dict<std::string, std::vector<std::int64_t>>("py-dict").at("k") ==
          std::vector<std::int64_t>{1, 2});
    // A value that is not a dict: the queue stays Python's, untouched.
    using Doc = std::map<std::string, double>;
    CHECK_THROWS_WITH_AS(m.queue<Doc>(0, "py-mixed"), doctest::Contains("not all dict[str,f64]"),
                         mpx::TypeMismatch);
    CHECK_THROWS_AS(m.queue<std::string>(0, "py-mixed"), mpx::TypeMismatch);
    auto c = d.raw();
    c.send_object(request(py::none, "create", {py::Object("get_queue"), py::Object("py-mixed")}));
    auto [kind, made] = answer(c);
    REQUIRE(kind == "#RETURN");
    py::Object ident = made.get<py::List>()[0];
    c.send_object(request(ident, "qsize"));
    CHECK(answer(c) == std::pair<std::string, py::Object>{"#RETURN", py::Object(2)});
  }
  SUBCASE("a C++ type Python cannot share is refused to Python clients") {
    m.queue<Point>(0, "points");
    auto c = d.raw();
    c.send_object(request(py::none, "create", {py::Object("get_queue"), py::Object("points")}));
    auto [kind, error] = answer(c);
    CHECK(kind == "#ERROR");
    CHECK(py::repr(error).find("cannot share") != std::string::npos);
  }
}

TEST_CASE("the mixed pipeline example: a C++ producer and a stock Python consumer share named queues") {
  MPX_REQUIRE_PYTHON(python);
  Daemon d;
  REQUIRE_MESSAGE(fs::exists(kPipeline), "build the mixed_pipeline target first");
  // Either side may open the queues first (a Python get may wait on a queue of pickles that the
  // C++ side then takes over); the second round runs on the queues the first one left typed.
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    mpx::test::ChildProcess consumer(
        {*python, kPipelinePy, "--address", "unix:" + d.sock, "--authkey-file", d.key_file},
        d.dir / "consumer.log");
    auto [rc, out] =
        d.run({kPipeline, "--address", "unix:" + d.sock, "--authkey-file", d.key_file, "--count", "300"},
              "producer.log");
    INFO(out);
    CHECK(rc == 0);
    CHECK(out.find("300 answers back from Python, 0 wrong") != std::string::npos);
    CHECK(consumer.wait(30s) == 0);
    CHECK(consumer.output().find("answered 300 jobs") != std::string::npos);
  }
}

TEST_CASE("a stock Python client submits to a named task queue that C++ workers serve") {
  MPX_REQUIRE_PYTHON(python);
  Daemon d;
  REQUIRE_MESSAGE(fs::exists(kWorker), "build the task_worker target first");
  mpx::test::ChildProcess workers(
      {kWorker, "--address", "unix:" + d.sock, "--authkey-file", d.key_file, "--processes", "2"},
      d.dir / "workers.log");
  // A C++ result means a worker serves, and it told the server its tasks before taking one.
  auto m = d.connect();
  CHECK(m.task_queue("work").submit<long>("square", 3L).get(30s) == 9);
  auto [rc, out] = d.run({*python, kShared, d.sock, d.key_file, "tasks"}, "tasks.log");
  INFO(out);
  INFO(workers.output());
  CHECK(rc == 0);
  CHECK(out.find("OK") != std::string::npos);
  workers.signal(SIGTERM);
  CHECK(workers.wait(30s) == 0);
}
