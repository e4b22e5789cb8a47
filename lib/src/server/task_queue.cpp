// Named task queues on the manager server: clients submit encoded tasks, worker connections
// take them one at a time and send back the result encoding, which goes to the mailbox of
// the submitting session. The server never decodes a task; it only routes bytes and notices
// workers that vanish.
#include "server/internals.hpp"

#include "common/log.hpp"

#include <map>
#include <optional>

namespace mpx::detail::server {

namespace {

using proto::ErrorCode;

// How long a task whose worker vanished waits for the supervisor's report of the exit code.
constexpr auto kExitReportGrace = std::chrono::seconds(2);

// ---------------------------------------------------------------------------------------
// The per-session mailbox of finished tasks (task_wait).

class MailboxObj final : public Obj {
 public:
  explicit MailboxObj(ObjectServerImpl& owner) : Obj(owner, 0, Kind::task_queue, "", "") {}

  void deliver(TaskOutcome outcome) {
    results_.push_back(std::move(outcome));
    if (!waiters_.empty()) {
      Conn* c = waiters_.pop();
      std::uint64_t most = c->waiting().n;
      c->complete_ok([&](Writer& w) { write(w, most); });
    }
  }

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    if (op != Op::task_wait) bad_op(op, kind());
    std::uint64_t most = r.u64();
    std::int64_t timeout = read_timeout(r);
    if (most == 0) throw ValueError("mpx: task_wait for zero results");
    if (!results_.empty() || timeout == 0) {
      write(w, most);
      return false;
    }
    wait_in(waiters_, c, op, timeout);
    c.waiting().n = most;
    return true;
  }
  void on_timeout(Conn& c) override {
    waiters_.remove(&c);
    c.complete_ok([](Writer& w) { w.u64(0); });
  }
  void drop_waiter(Conn& c) override { waiters_.remove(&c); }
  void fail_waiters(const ErrorInfo& e) override { waiters_.fail_all(e); }

 private:
  void write(Writer& w, std::uint64_t most) {
    std::uint64_t n = std::min<std::uint64_t>(most, results_.size());
    w.u64(n);
    for (std::uint64_t i = 0; i < n; ++i) {
      auto& o = results_.front();
      w.u64(o.task_id);
      w.u8(o.failed ? 1 : 0);
      if (o.failed)
        proto::write_error(w, o.error);
      else
        w.blob(o.result);
      results_.pop_front();
    }
  }

  std::deque<TaskOutcome> results_;
  WaitList waiters_;
};

// ---------------------------------------------------------------------------------------
// A named task queue.

class TaskQueueObj final : public Obj {
 public:
  TaskQueueObj(ObjectServerImpl& owner, std::uint64_t id, std::string tag, std::string name)
      : Obj(owner, id, Kind::task_queue, std::move(tag), std::move(name)) {}
  ~TaskQueueObj() override { *alive_ = false; }

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::task_submit: {
        std::string task_name(r.str());
        auto body = r.blob();
        r.expect_end();
        if (!c.session()) throw StateError("mpx: no session");
        std::uint64_t tid = server_.next_task_id();
        Task& t = tasks_[tid];
        t.id = tid;
        t.name = std::move(task_name);
        t.body.assign(body.begin(), body.end());
        t.owner = c.session()->token;
        w.u64(tid);
        if (!idle_.empty()) {
          Conn* worker = idle_.pop();
          assign(*worker, t);
          worker->complete_ok([&](Writer& ww) { write_task(ww, t); });
        } else {
          pending_.push_back(tid);
        }
        return false;
      }
      case Op::task_serve: {
        std::int32_t pid = r.i32();
        r.expect_end();
        if (!c.session()) throw StateError("mpx: no session");
        Worker& wk = workers_[&c];
        wk.pid = pid;
        wk.session = c.session()->token;
        c.hold(id());
        logger().debug("manager: worker pid {} serves task queue '{}'", pid, name());
        return false;
      }
      case Op::task_next: {
        std::int64_t timeout = read_timeout(r);
        auto it = workers_.find(&c);
        if (it == workers_.end()) throw StateError("mpx: task_next before task_serve");
        if (it->second.running) throw StateError("mpx: task_next while a task is still running here");
        while (!pending_.empty()) {
          auto t = tasks_.find(pending_.front());
          pending_.pop_front();
          if (t == tasks_.end()) continue;
          assign(c, t->second);
          write_task(w, t->second);
          return false;
        }
        if (timeout == 0) throw Empty("mpx: no task is waiting");
        return wait_in(idle_, c, op, timeout);
      }
      case Op::task_result: {
        std::uint64_t tid = r.u64();
        auto result = r.blob();
        r.expect_end();
        auto t = tasks_.find(tid);
        if (t == tasks_.end() || t->second.worker != &c)
          throw StateError("mpx: a result for a task this worker is not running");
        TaskOutcome o;
        o.task_id = tid;
        o.result.assign(result.begin(), result.end());
        std::string owner = std::move(t->second.owner);
        tasks_.erase(t);
        workers_[&c].running = 0;
        server_.deliver_task(owner, std::move(o));
        return false;
      }
      case Op::task_catalog: {
        if (workers_.find(&c) == workers_.end()) throw StateError("mpx: task_catalog before task_serve");
        std::uint32_t n = r.u32();
        std::map<std::string, TaskSignature, std::less<>> given;
        for (std::uint32_t i = 0; i < n; ++i) {
          std::string task(r.str());
          TaskSignature& sig = given[task];
          sig.tag = r.u64();
          sig.args_tag = std::string(r.str());
          sig.result_tag = std::string(r.str());
        }
        r.expect_end();
        for (auto& [task, sig] : given) catalog_[task] = std::move(sig);  // the latest worker's word counts
        return false;
      }
      case Op::task_worker_exit: {
        std::int32_t pid = r.i32();
        std::int32_t code = r.i32();
        r.expect_end();
        // Only the worker's own session may say how it ended (serve_tasks' workers serve in
        // their supervisor's session): anyone else could fail a running task at will.
        if (!c.session()) throw StateError("mpx: no session");
        const std::string& reporter = c.session()->token;
        bool foreign = false;
        for (auto it = lost_.begin(); it != lost_.end(); ++it) {
          if (it->pid != pid) continue;
          if (it->session != reporter) {
            foreign = true;
            continue;
          }
          std::uint64_t tid = it->task_id;
          it->timer->cancel();
          lost_.erase(it);
          fail_lost(tid, code, true);
          return false;
        }
        // The report can come before the server notices the worker's connection close: it is
        // kept with the worker and used when it does.
        bool kept = false;
        for (auto& [conn, wk] : workers_) {
          if (wk.pid != pid) continue;
          if (wk.session != reporter) {
            foreign = true;
            continue;
          }
          wk.exit_code = code;
          kept = true;
        }
        if (!kept && foreign)
          throw StateError("mpx: worker " + std::to_string(pid) + " of task queue '" + name() +
                           "' serves another session; only that session may report its exit");
        return false;  // a worker the queue does not know (any more): nothing to do
      }
      default:
        bad_op(op, kind());
    }
  }

  void on_timeout(Conn& c) override {
    idle_.remove(&c);
    c.complete_error({ErrorCode::empty, {}, "mpx: no task is waiting", 0});
  }
  void drop_waiter(Conn& c) override { idle_.remove(&c); }

  const std::map<std::string, TaskSignature, std::less<>>& catalog() const noexcept { return catalog_; }

  // A worker's connection closed: the task it was running failed with it.
  void release_held(Conn& c) override {
    auto it = workers_.find(&c);
    if (it == workers_.end()) return;
    Worker w = it->second;
    workers_.erase(it);
    if (!w.running) return;
    auto t = tasks_.find(w.running);
    if (t == tasks_.end()) return;
    t->second.worker = nullptr;
    if (w.exit_code) {
      fail_lost(w.running, *w.exit_code, true);
      return;
    }
    // Wait a little for the supervisor to say how the worker ended.
    Lost lost{w.running, w.pid, w.session,
              std::make_shared<boost::asio::steady_timer>(server_.io(), kExitReportGrace)};
    lost.timer->async_wait([this, alive = alive_, tid = w.running](boost::system::error_code ec) {
      if (ec || !*alive) return;
      for (auto l = lost_.begin(); l != lost_.end(); ++l)
        if (l->task_id == tid) {
          lost_.erase(l);
          fail_lost(tid, 0, false);
          return;
        }
    });
    lost_.push_back(std::move(lost));
  }

  void fail_waiters(const ErrorInfo& e) override {
    idle_.fail_all(e);
    for (auto& l : lost_) l.timer->cancel();
    lost_.clear();
    auto tasks = std::move(tasks_);
    tasks_.clear();
    pending_.clear();
    for (auto& [tid, t] : tasks) {
      TaskOutcome o;
      o.task_id = tid;
      o.failed = true;
      o.error = {ErrorCode::state, {}, "mpx: task queue '" + name() + "' is gone", 0};
      server_.deliver_task(t.owner, std::move(o));
    }
  }

 private:
  struct Task {
    std::uint64_t id = 0;
    std::string name;
    Bytes body;
    std::string owner;       // the submitting session's token
    Conn* worker = nullptr;  // while running
  };
  struct Worker {
    std::int32_t pid = 0;
    std::uint64_t running = 0;              // task id, 0 when idle
    std::string session;                    // token of the session it serves in: who may report its exit
    std::optional<std::int32_t> exit_code;  // reported before its connection was seen to close
  };
  struct Lost {
    std::uint64_t task_id;
    std::int32_t pid;
    std::string session;
    std::shared_ptr<boost::asio::steady_timer> timer;
  };

  void assign(Conn& worker, Task& t) {
    t.worker = &worker;
    workers_[&worker].running = t.id;
  }
  static void write_task(Writer& w, const Task& t) {
    w.u64(t.id);
    w.str(t.name);
    w.blob(t.body);
  }
  void fail_lost(std::uint64_t tid, int exitcode, bool known) {
    auto t = tasks_.find(tid);
    if (t == tasks_.end()) return;
    TaskOutcome o;
    o.task_id = tid;
    o.failed = true;
    o.error.code = ErrorCode::worker_lost;
    o.error.exitcode = exitcode;
    o.error.message = "mpx: the worker running task '" + t->second.name + "' died" +
                      (known ? " (exit code " + std::to_string(exitcode) + ")" : " (exit status unknown)");
    std::string owner = std::move(t->second.owner);
    tasks_.erase(t);
    server_.deliver_task(owner, std::move(o));
  }

  std::map<std::string, TaskSignature, std::less<>> catalog_;  // what workers said they run
  std::map<std::uint64_t, Task> tasks_;                        // submitted and not finished
  std::deque<std::uint64_t> pending_;                          // not yet taken, in submission order
  WaitList idle_;                                              // workers waiting in task_next
  std::unordered_map<Conn*, Worker> workers_;
  std::vector<Lost> lost_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

const std::map<std::string, TaskSignature, std::less<>>* task_catalog(const Obj& queue) {
  const auto* q = dynamic_cast<const TaskQueueObj*>(&queue);
  return q ? &q->catalog() : nullptr;
}

std::unique_ptr<Obj> make_task_queue(ObjectServerImpl& owner, std::uint64_t id, std::string tag,
                                     std::string name) {
  return std::make_unique<TaskQueueObj>(owner, id, std::move(tag), std::move(name));
}

std::unique_ptr<Obj> make_mailbox(ObjectServerImpl& owner) { return std::make_unique<MailboxObj>(owner); }

void deliver_to_mailbox(Obj& mailbox, TaskOutcome outcome) {
  static_cast<MailboxObj&>(mailbox).deliver(std::move(outcome));
}

}  // namespace mpx::detail::server
