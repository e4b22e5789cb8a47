// A client of a running manager (mpxd, or any mpx::Server). Instances of it share a named
// dict and a named queue, and submit named tasks that task_worker processes run:
//
//   manager_client --address unix:/tmp/mpxd.sock --authkey-file key consumer &   # waits for items
//   manager_client --address unix:/tmp/mpxd.sock --authkey-file key producer --count 100
//   manager_client --address unix:/tmp/mpxd.sock --authkey-file key submit --count 10
//   manager_client --address unix:/tmp/mpxd.sock --authkey-file key show
//
// The dict holds strings on both sides (DictProxy<std::string, std::string>), so
// apps/python/manager_dict.py reads and writes it too.
#include <mpx/managers.hpp>

#include "authkey_file.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include "cli.hpp"

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace {

using Dict = mpx::DictProxy<std::string, std::string>;
constexpr long kEnd = -1;  // the producer's last item: no more work

struct Options {
  std::string dict = "demo", queue = "jobs", tasks = "work";
  long count = 100;
  double timeout = 30;
  std::chrono::nanoseconds wait() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(timeout));
  }
};

// Puts 1..count on the shared queue in batches (one round trip each), then the end marker.
int producer(mpx::Manager& m, const Options& o) {
  auto q = m.queue<long>(0, o.queue);
  auto d = m.dict<std::string, std::string>(o.dict);
  std::vector<long> batch;
  for (long i = 1; i <= o.count; ++i) {
    batch.push_back(i);
    if (batch.size() == 64 || i == o.count) {
      q.put_many(batch, true, o.wait());
      batch.clear();
    }
  }
  q.put(kEnd, true, o.wait());
  d.update({{"producer.pid", std::to_string(::getpid())}, {"producer.items", std::to_string(o.count)}});
  fmt::print("producer: put {} items on queue '{}'\n", o.count, o.queue);
  return 0;
}

// Takes items until the end marker, and leaves what it saw in the shared dict.
int consumer(mpx::Manager& m, const Options& o) {
  auto q = m.queue<long>(0, o.queue);
  auto d = m.dict<std::string, std::string>(o.dict);
  long n = 0, sum = 0;
  for (bool done = false; !done;) {
    for (long v : q.get_many(256, true, o.wait())) {
      if (v == kEnd) {
        done = true;
        break;
      }
      ++n;
      sum += v;
    }
  }
  d.update({{"consumer.items", std::to_string(n)}, {"consumer.sum", std::to_string(sum)}});
  fmt::print("consumer: got {} items from queue '{}', sum {}\n", n, o.queue, sum);
  return 0;
}

// Submits tasks by name to the workers and prints their results.
int submit(mpx::Manager& m, const Options& o) {
  auto tq = m.task_queue(o.tasks);
  auto d = m.dict<std::string, std::string>(o.dict);
  std::vector<mpx::AsyncResult<long>> squares;
  for (long i = 1; i <= o.count; ++i) squares.push_back(tq.submit<long>("square", i));
  auto words = tq.submit<int>("word_count", std::string("the quick brown fox jumps over the lazy dog"));
  auto loud = tq.submit<std::string>("shout", std::string("hello from mpx"));
  auto bad = tq.submit<long>("isqrt", -4L);
  auto unknown = tq.submit<long>("no_such_task", 1L);

  long total = 0;
  std::string list;
  for (auto& r : squares) {
    long v = r.get(o.wait());
    total += v;
    list += (list.empty() ? "" : " ") + std::to_string(v);
  }
  fmt::print("submit: square(1..{}) = {}\n", o.count, list);
  fmt::print("submit: sum of squares = {}\n", total);
  fmt::print("submit: word_count = {}\n", words.get(o.wait()));
  fmt::print("submit: shout = {}\n", loud.get(o.wait()));
  try {
    bad.get(o.wait());
    fmt::print("submit: isqrt(-4) unexpectedly succeeded\n");
    return 1;
  } catch (const mpx::RemoteError& e) {
    fmt::print("submit: isqrt(-4) failed: RemoteError({})\n", e.type_name());
  }
  try {
    unknown.get(o.wait());
    fmt::print("submit: no_such_task unexpectedly succeeded\n");
    return 1;
  } catch (const mpx::ValueError&) {
    fmt::print("submit: no_such_task failed: ValueError\n");
  }
  d.set("submit.sum_of_squares", std::to_string(total));
  return 0;
}

int show(mpx::Manager& m, const Options& o) {
  for (auto& [k, v] : m.dict<std::string, std::string>(o.dict).items()) fmt::print("{}={}\n", k, v);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "A client of a running mpx manager (mpxd): shares a named dict and queue with other\n"
      "clients and submits named tasks to task_worker processes.",
      "manager_client"};
  app.require_subcommand(1);
  app.fallthrough();  // the common options may also follow the subcommand
  std::string address, keyfile;
  Options o;
  app.add_option("--address", address, "the manager: unix:/path, unix:@name or tcp:host:port")->required();
  app.add_option("--authkey-file", keyfile, "file holding the manager's authkey (mode 0600)")->required();
  app.add_option("--dict", o.dict, "the shared dict's name")->capture_default_str();
  app.add_option("--queue", o.queue, "the shared queue's name")->capture_default_str();
  app.add_option("--tasks", o.tasks, "the task queue's name")->capture_default_str();
  app.add_option("--timeout", o.timeout, "seconds any one wait may take")->capture_default_str();
  auto* prod = app.add_subcommand("producer", "put 1..count on the queue, then an end marker");
  auto* cons = app.add_subcommand("consumer", "take items until the end marker; record count and sum");
  auto* sub = app.add_subcommand("submit", "run square(1..count) and a few other tasks on the workers");
  app.add_subcommand("show", "print the shared dict");
  for (auto* s : {prod, cons, sub})
    s->add_option("--count", o.count, "how many items")->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  try {
    auto m = mpx::Manager::connect(mpx::Address::parse(address), mpx::apps::read_authkey_file(keyfile));
    if (*prod) return producer(m, o);
    if (*cons) return consumer(m, o);
    if (*sub) return submit(m, o);
    return show(m, o);
  } catch (const std::exception& e) {
    fmt::print(stderr, "manager_client: {}\n", e.what());
    return 1;
  }
}
