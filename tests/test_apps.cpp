// The programs in apps/ as a user runs them: every one parses its command line (--help exits 0
// with its usage, a usage error exits 2 with CLI11's message and does no work); output paths are
// checked before any work; the workloads' --json documents have their keys and known values and
// are the same, timings aside, for any --processes and --chunksize, and on every backend (a pool,
// MPI ranks, task_workers of an mpxd); options reports progress.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <support.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using mpx::test::run;
using mpx::test::slurp;
using Json = nlohmann::json;

namespace {

const std::string kApps = std::string(MPX_BINARY_DIR) + "/apps/";

// Runs `command` through sh with stdout and stderr in their own files of `dir`.
struct Ran {
  std::optional<int> rc;
  std::string out, err;
};
Ran sh(const mpx::test::TempDir& dir, const std::string& name, const std::string& command,
       std::chrono::milliseconds timeout = 120s) {
  const std::string out = dir / (name + ".out"), err = dir / (name + ".err");
  Ran r;
  r.rc = run({"/bin/sh", "-c", command + " >'" + out + "' 2>'" + err + "'"}, dir / (name + ".log"), timeout);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// The same --json command run twice, with the extra flags of each run; both must succeed.
struct TwoRuns {
  Ran one, two;
  Json a, b;  // their documents (stdout is the document alone)
};
TwoRuns sh_twice(const mpx::test::TempDir& dir, const std::string& cmd, const std::string& first,
                 const std::string& second) {
  TwoRuns r{sh(dir, "one", cmd + first), sh(dir, "two", cmd + second), {}, {}};
  REQUIRE(r.one.rc == 0);
  REQUIRE(r.two.rc == 0);
  r.a = Json::parse(r.one.out);
  r.b = Json::parse(r.two.out);
  return r;
}

// The document without its "run" object (worker count, chunking, timings).
Json without_run(Json doc) {
  CHECK(doc.contains("run"));
  doc.erase("run");
  return doc;
}

}  // namespace

TEST_CASE("every program: --help prints its usage and exits 0, a usage error exits 2 before any work") {
  mpx::test::TempDir dir("mpx-apps");
  std::vector<std::string> apps{"mp1",
                                "mp2",
                                "simple_pools",
                                "echo_server",
                                "echo_client",
                                "custom_server",
                                "manager_client",
                                "task_worker",
                                "shm_numpy_demo",
                                "mpxd",
                                "primes",
                                "matrices",
                                "options",
                                "threads_and_processes",
                                "pool_coroutines"};
  for (const std::string& app : apps) {
    CAPTURE(app);
    const Ran help = sh(dir, app + "-help", kApps + app + " --help", 30s);
    CHECK(help.rc == 0);
    CHECK(help.out.find("Usage:") != std::string::npos);
    CHECK(help.out.find("--help") != std::string::npos);
    // CLI11's message names the first problem: the unknown flag, or a required option missing.
    const Ran bogus = sh(dir, app + "-bogus", kApps + app + " --bogus", 30s);
    CHECK(bogus.rc == 2);
    CHECK(bogus.err.find("Run with --help for more information.") != std::string::npos);
    CHECK(bogus.out.empty());  // nothing ran
  }
  for (std::string app : {"mp1", "mp2", "primes", "matrices", "options"})
    CHECK(sh(dir, app + "-bogus2", kApps + app + " --bogus", 30s).err.find("--bogus") != std::string::npos);
  // The tutorial demos used to run whatever they were given.
  CHECK(sh(dir, "mp1", kApps + "mp1 --help", 30s).out.find("process id") == std::string::npos);
  CHECK(sh(dir, "mp2", kApps + "mp2 --bogus", 30s).out.find("woke up") == std::string::npos);
  // A value the option refuses is a usage error too.
  CHECK(sh(dir, "p-bad", kApps + "primes --count-below lots", 30s).rc == 2);
  CHECK(sh(dir, "o-bad", kApps + "options --grid 0", 30s).rc == 2);
  CHECK(sh(dir, "m-bad", kApps + "matrices --size x", 30s).rc == 2);
}

TEST_CASE("mp1 and mp2 run with their flags") {
  mpx::test::TempDir dir("mpx-apps");
  const Ran mp1 = sh(dir, "mp1", kApps + "mp1", 30s);
  CHECK(mp1.rc == 0);
  CHECK(mp1.out.find("worker: process id") != std::string::npos);
  const Ran mp2 = sh(dir, "mp2", kApps + "mp2 --processes 2", 30s);
  CHECK(mp2.rc == 0);
  CHECK(mp2.out ==
        "10000000000\n[0, 1, 1024, 59049, 1048576, 9765625, 60466176, 282475249, 1073741824, 3486784401]\n"
        "False\nI just woke up!\nTrue\n"
        "[0, 1, 1024, 59049, 1048576, 9765625, 60466176, 282475249, 1073741824, 3486784401]\n");
}

// The line of `out` that starts with `prefix` ("" if none).
static std::string line_starting(const std::string& out, const std::string& prefix) {
  for (std::size_t at = 0; at < out.size();) {
    const std::size_t end = std::min(out.find('\n', at), out.size());
    if (out.compare(at, prefix.size(), prefix) == 0) return out.substr(at, end - at);
    at = end + 1;
  }
  return "";
}

TEST_CASE(
    "threads_and_processes: a fork child finds the busy threads' mutex locked, forkserver and spawn ones "
    "unlocked") {
  mpx::test::TempDir dir("mpx-apps");
  const Ran r = sh(dir, "tap", kApps + "threads_and_processes --threads 4 --children 2 --probe-ms 50", 60s);
  CHECK(r.rc == 0);
  CHECK(r.out.find("4 threads held the mutex") != std::string::npos);
  const std::string fork = line_starting(r.out, "fork "), forkserver = line_starting(r.out, "forkserver ");
  CHECK(fork.find("locked 2/2") != std::string::npos);
  CHECK(fork.find("unlocked") == std::string::npos);
  CHECK(fork.substr(fork.size() - 3) == " ok");
  CHECK(forkserver.find("unlocked 2/2") != std::string::npos);
  CHECK(forkserver.substr(forkserver.size() - 3) == " ok");
  const std::string spawn = line_starting(r.out, "spawn ");
  CHECK(spawn.find("unlocked 2/2") != std::string::npos);
  CHECK(spawn.substr(spawn.size() - 3) == " ok");
  CHECK(r.out.find("all checks passed") != std::string::npos);
  CHECK(r.err.empty());
  // Values the options refuse are usage errors, before any child.
  for (std::string bad : {"--threads 0", "--children 0", "--probe-ms x"}) {
    CAPTURE(bad);
    const Ran u = sh(dir, "tap-bad", kApps + "threads_and_processes " + bad, 30s);
    CHECK(u.rc == 2);
    CHECK(u.out.empty());
  }
}

TEST_CASE(
    "pool_coroutines: coroutines await pool results and a failing task, as_completed yields every result") {
  mpx::test::TempDir dir("mpx-apps");
  const Ran r = sh(dir, "coro", kApps + "pool_coroutines -p 2 --squares 10 --collatz-below 1000", 60s);
  CHECK(r.rc == 0);
  CHECK(r.out.find("ok     sum of squares 1..10 = 385\n") != std::string::npos);
  CHECK(r.out.find("ok     longest Collatz chain below 1000: 871 takes 178 steps\n") != std::string::npos);
  CHECK(r.out.find("ok     a failing task's RemoteError caught in the coroutine: ") != std::string::npos);
  CHECK(r.out.find("no answer for 42") != std::string::npos);
  CHECK(r.out.find("ok     as_completed over naps of 300, 50, 150, 0 ms: finished as ") != std::string::npos);
  const std::string order = line_starting(r.out, "coroutines on one thread, in the order they finished: ");
  for (const char* name : {"squares", "collatz", "error"}) CHECK(order.find(name) != std::string::npos);
  CHECK(r.out.find("FAILED") == std::string::npos);
  CHECK(r.out.find("all checks passed") != std::string::npos);
  // Another size, another known answer: 97 has the longest chain below 100.
  const Ran small =
      sh(dir, "coro-small", kApps + "pool_coroutines -p 1 --squares 3 --collatz-below 100", 60s);
  CHECK(small.rc == 0);
  CHECK(small.out.find("ok     sum of squares 1..3 = 14\n") != std::string::npos);
  CHECK(small.out.find("ok     longest Collatz chain below 100: 97 takes 118 steps\n") != std::string::npos);
  for (std::string bad : {"--squares 0", "--collatz-below 1", "-p x"}) {
    CAPTURE(bad);
    const Ran u = sh(dir, "coro-bad", kApps + "pool_coroutines " + bad, 30s);
    CHECK(u.rc == 2);
    CHECK(u.out.empty());
  }
}

TEST_CASE("matrices --svg: an unwritable path fails at once with exit 2, a good one gets the picture") {
  mpx::test::TempDir dir("mpx-apps");
  // Big enough to take minutes if it were computed first.
  const std::string big = kApps + "matrices --size 400 --count 100000 --no-progress";
  const auto t0 = std::chrono::steady_clock::now();
  const Ran missing = sh(dir, "missing", big + " --svg '" + (dir / "no/such/dir/x.svg") + "'", 30s);
  CHECK(missing.rc == 2);
  CHECK(missing.err.find("cannot write") != std::string::npos);
  CHECK(missing.out.empty());
  const Ran directory = sh(dir, "directory", big + " --svg '" + dir.path().string() + "'", 30s);
  CHECK(directory.rc == 2);
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  CHECK(!std::filesystem::exists(dir / "no"));

  const std::string svg = dir / "spacings.svg";
  const Ran good = sh(dir, "good", kApps + "matrices --size 20 --count 50 --no-progress --svg '" + svg + "'");
  CHECK(good.rc == 0);
  CHECK(slurp(svg).find("<svg") != std::string::npos);
  CHECK(slurp(svg).find("</svg>") != std::string::npos);
}

TEST_CASE("primes --json: known answers, the same document for any --processes and --chunksize") {
  mpx::test::TempDir dir("mpx-apps");
  const std::string cmd = kApps + "primes --json --repeat 1 --count-below 1e6 --no-progress";
  const auto [one, two, a, b] = sh_twice(dir, cmd, " -p 1", " -p 2 --chunksize 7 --segment 30000");
  CHECK(a["program"] == "primes");
  CHECK(a["ok"] == true);
  CHECK(a["tutorial"]["primes_below_20000"] == 2262);
  CHECK(a["tutorial"]["sum_primes"]["5000"] == 1548136);
  CHECK(a["tutorial"]["pool_equals_serial"] == true);
  CHECK(a["count_below"]["n"] == 1000000);
  CHECK(a["count_below"]["pi"] == 78498);
  CHECK(a["count_below"]["pool_equals_serial"] == true);
  CHECK(a["checks"].size() == 5);
  for (const Json& c : a["checks"]) CHECK(c["ok"] == true);
  CHECK(a["run"]["processes"] == 1);
  CHECK(b["run"]["processes"] == 2);
  CHECK(b["run"]["count_below"]["segment"] == 30000);
  CHECK(b["run"]["isprime"]["pool_seconds"].get<double>() > 0);
  CHECK(b["run"]["count_below"].contains("speedup"));
  CHECK(without_run(a) == without_run(b));
  CHECK(one.err.find("all checks passed") != std::string::npos);  // the text went to stderr
}

TEST_CASE("matrices --json: the ensemble and its statistics, the same for any --processes and --chunksize") {
  mpx::test::TempDir dir("mpx-apps");
  const std::string cmd = kApps + "matrices --json --size 30 --count 200 --seed 7 --no-progress";
  const auto [one, two, a, b] = sh_twice(dir, cmd, " -p 1", " -p 2 --chunksize 3");
  CHECK(a["program"] == "matrices");
  CHECK(a["inputs"] == Json{{"size", 30}, {"count", 200}, {"seed", 7}, {"bins", 14}});
  CHECK(a["spacings"].size() == 200);
  CHECK(a["normalised_moments"]["mean"].get<double>() == doctest::Approx(1.0).epsilon(1e-9));
  CHECK(a["histogram"]["density"].size() == 14);
  CHECK(a["checks"]["pool_equals_serial"] == true);
  CHECK(a["ok"] == true);
  CHECK(b["run"]["chunksize"] == 3);
  CHECK(b["run"].contains("speedup"));
  CHECK(without_run(a) == without_run(b));
  // Another seed, another ensemble.
  const Ran other = sh(dir, "other", kApps + "matrices --json --size 30 --count 200 --seed 8 --no-progress");
  REQUIRE(other.rc == 0);
  CHECK(Json::parse(other.out)["spacings_checksum"] != a["spacings_checksum"]);
}

TEST_CASE("options --json: one object per grid point, the same for any --processes and --chunksize") {
  mpx::test::TempDir dir("mpx-apps");
  const std::string cmd = kApps + "options --json --paths 2000 --days 50 --grid 3";
  const auto [one, two, a, b] = sh_twice(dir, cmd, " -p 1 --no-progress", " -p 2 --chunksize 2");
  CHECK(a["program"] == "options");
  CHECK(a["inputs"]["seed"] == 2024);
  CHECK(a["inputs"]["paths"] == 2000);
  REQUIRE(a["points"].size() == 9);
  CHECK(a["points"][0]["K"] == 90.0);
  CHECK(a["points"][0]["sigma"] == 0.1);
  CHECK(a["points"][8]["K"] == 110.0);
  CHECK(a["points"][8]["sigma"] == 0.4);
  for (const Json& p : a["points"]) {
    for (const char* k : {"european_call", "european_put", "asian_call", "asian_put"}) {
      CAPTURE(k);
      CHECK(p[k].get<double>() >= 0);
      CHECK(p[std::string(k) + "_se"].get<double>() > 0);
    }
    // An Asian option averages the path: it is cheaper than the European one.
    CHECK(p["asian_call"].get<double>() < p["european_call"].get<double>());
    CHECK(std::abs(p["european_call"].get<double>() - p["black_scholes_call"].get<double>()) <
          4 * p["european_call_se"].get<double>());
  }
  CHECK(a["checks"]["black_scholes"]["ok"] == true);
  CHECK(a["checks"]["pool_equals_serial"] == true);
  CHECK(a["ok"] == true);
  CHECK(without_run(a) == without_run(b));

  // Progress on stderr: lines when it is not a terminal, none with --no-progress.
  CHECK(two.err.find("pool: 9/9 (100%)") != std::string::npos);
  CHECK(two.err.find("serial: 9/9 (100%)") != std::string::npos);
  CHECK(one.err.find("pool: ") == std::string::npos);
}

TEST_CASE("--backend: a backend this build or this launch cannot give is a usage error") {
  mpx::test::TempDir dir("mpx-apps");
  for (std::string app : {"primes", "matrices", "options"}) {
    CAPTURE(app);
    CHECK(sh(dir, app + "-foo", kApps + app + " --backend foo", 30s).rc == 2);
    // Not under mpirun (or built without MPI): a single rank has no workers. (MPI_Init's
    // allocations outlive MPI_Finalize: no leak check for it under AddressSanitizer.)
    const Ran alone =
        sh(dir, app + "-alone",
           "ASAN_OPTIONS=detect_leaks=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + kApps +
               app + " --backend mpi --no-progress",
           30s);
    CHECK(alone.rc == 2);
    CHECK(alone.err.find("--backend mpi") != std::string::npos);
    CHECK(alone.out.empty());
    // mpxd needs its daemon named; the daemon's flags mean nothing to the other backends.
    const Ran nowhere = sh(dir, app + "-nowhere", kApps + app + " --backend mpxd --no-progress", 30s);
    CHECK(nowhere.rc == 2);
    CHECK(nowhere.err.find("--address") != std::string::npos);
    CHECK(sh(dir, app + "-stray", kApps + app + " --address unix:/nonexistent --no-progress", 30s).rc == 2);
    // No daemon there: said at once, before any work.
    const std::string key = mpx::test::write_file(dir / "key", "k", 0600);
    const Ran absent =
        sh(dir, app + "-absent",
           kApps + app + " --backend mpxd --no-progress --address unix:" + (dir / "none.sock") +
               " --authkey-file " + key,
           30s);
    CHECK(absent.rc == 1);
    CHECK(absent.err.find("--backend mpxd") != std::string::npos);
    CHECK(absent.out.empty());
  }
}

TEST_CASE("--backend mpxd: task_workers on a running mpxd give the same documents, bit for bit, as a pool") {
  mpx::test::TempDir dir("mpx-apps");
  const std::string sock = dir / "mpxd.sock";
  const std::string key = mpx::test::write_file(dir / "authkey", "apps test key\n", 0600);
  const std::vector<std::string> server{"--address", "unix:" + sock, "--authkey-file", key};
  auto with_server = [&](std::vector<std::string> args) {
    args.insert(args.end(), server.begin(), server.end());
    return args;
  };
  mpx::test::ChildProcess mpxd(with_server({kApps + "mpxd", "--log-level", "warn"}), dir / "mpxd.log");
  for (int i = 0; i < 400 && !mpx::test::unix_socket_listening(sock); ++i) REQUIRE_FALSE(mpxd.wait(25ms));
  REQUIRE(mpx::test::unix_socket_listening(sock));
  mpx::test::ChildProcess workers(with_server({kApps + "task_worker", "--processes", "2"}),
                                  dir / "workers.log");

  // The daemon's runs chunk differently from the pool's: every item must still keep its task index.
  const std::string daemon = " --backend mpxd --address unix:" + sock + " --authkey-file " + key;
  const std::vector<std::pair<std::string, std::string>> runs{
      {"primes --json --repeat 1 --count-below 1e6 --no-progress", " --chunksize 7 --segment 30000"},
      {"matrices --json --size 30 --count 200 --no-progress", " --chunksize 3"},
      {"options --json --paths 2000 --days 50 --grid 3 --no-progress", " --chunksize 2"}};
  for (const auto& [args, chunking] : runs) {
    const std::string name = args.substr(0, args.find(' '));
    CAPTURE(name);
    const Ran pool = sh(dir, name + "-pool", kApps + args + " --backend pool -p 2", 60s);
    const Ran queued = sh(dir, name + "-mpxd", kApps + args + chunking + daemon, 60s);
    REQUIRE(pool.rc == 0);
    REQUIRE(queued.rc == 0);
    const Json a = Json::parse(pool.out), b = Json::parse(queued.out);
    CHECK(b["run"]["backend"] == "mpxd");
    CHECK(b["ok"] == true);
    CHECK(without_run(a) == without_run(b));
  }

  // The workers stop with the daemon, which removes its socket file.
  mpxd.signal(SIGTERM);
  CHECK(mpxd.wait(30s) == 0);
  CHECK(workers.wait(30s) == 0);
  CHECK_FALSE(std::filesystem::exists(sock));
}

#ifdef MPX_TEST_MPIEXEC
TEST_CASE("--backend mpi under mpirun: the same documents, bit for bit, as --backend pool") {
  mpx::test::TempDir dir("mpx-apps");
  // Open MPI as root, on this host only, over shared memory; its allocations outlive MPI_Finalize
  // (so no leak check for these runs under AddressSanitizer).
  const std::string mpirun = std::string("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ") +
                             "OMPI_MCA_plm=isolated OMPI_MCA_btl=self,vader ASAN_OPTIONS=detect_leaks=0 " +
                             MPX_TEST_MPIEXEC + " -n 3 --oversubscribe ";
  const std::vector<std::pair<std::string, std::string>> runs{
      {"primes", "primes --json --repeat 1 --count-below 1e6 --no-progress"},
      {"matrices", "matrices --json --size 30 --count 200 --no-progress"},
      {"options", "options --json --paths 2000 --days 50 --grid 3 --no-progress"}};
  for (const auto& [name, args] : runs) {
    CAPTURE(name);
    const Ran pool = sh(dir, name + "-pool", kApps + args + " --backend pool -p 2");
    const Ran mpi = sh(dir, name + "-mpi", mpirun + kApps + args + " --backend mpi");
    REQUIRE(pool.rc == 0);
    REQUIRE(mpi.rc == 0);
    const Json a = Json::parse(pool.out), b = Json::parse(mpi.out);  // rank 0 alone prints
    CHECK(a["run"]["backend"] == "pool");
    CHECK(b["run"]["backend"] == "mpi");
    CHECK(b["run"]["processes"] == 2);  // worker ranks
    CHECK(b["ok"] == true);
    CHECK(without_run(a) == without_run(b));
  }
}
#endif

TEST_CASE("the tutorial's drivers in Python (apps/bench/python) pass their own checks, on a pool too") {
  mpx::test::TempDir dir("mpx-apps");
  if (sh(dir, "python3", "command -v python3", 30s).rc != 0) {
    MESSAGE("no python3: skipped");
    return;
  }
  const std::string py = "python3 " + std::string(MPX_SOURCE_DIR) + "/apps/bench/python/";
  const std::vector<std::pair<std::string, std::string>> runs{
      {"primes", "primes.py --json -p 2 --isprime-items 20000 --sum-primes-items 200"},
      {"matrices", "matrices.py --json -p 2 --size 12 --count 60"},
      {"options", "options.py --json -p 2 --paths 200 --days 20 --grid 3"}};
  for (const auto& [name, args] : runs) {
    CAPTURE(name);
    const Ran r = sh(dir, name + "-py", py + args, 60s);
    REQUIRE(r.rc == 0);
    const Json doc = Json::parse(r.out);
    CHECK(doc["ok"] == true);
    CHECK(doc["run"]["processes"] == 2);
    CHECK(r.err.find("all checks passed") != std::string::npos);
  }
}
