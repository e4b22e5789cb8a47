// The client side of named task queues: the per-session thread that collects results.
#pragma once

#include <mpx/detail/proxy_core.hpp>

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace mpx::detail {

// An error reply from the server as the exception it stands for (lib/src/manager/client.cpp).
std::exception_ptr error_to_exception(const proto::ErrorInfo& e);

// Reads this session's finished tasks (task_wait) on a connection of its own and completes
// their AsyncResults, so the callbacks run on this thread, never in the thread that submits.
class TaskCollector : public std::enable_shared_from_this<TaskCollector> {
 public:
  explicit TaskCollector(std::unique_ptr<ClientConn> conn);
  ~TaskCollector();
  void start();
  void track(std::uint64_t id, std::shared_ptr<ResultStateBase> state, TaskCompleter complete);
  // The session is ending: wake the thread (its connection is shut down) and wait for it.
  void stop() noexcept;
  // In a forked child: the thread does not exist here and the socket is the parent's.
  void abandon_after_fork() noexcept;

 private:
  void run();
  void finish(std::uint64_t id, std::span<const std::byte> result, std::exception_ptr error);
  void fail_all(std::exception_ptr error);

  struct Entry {
    std::shared_ptr<ResultStateBase> state;
    TaskCompleter complete = nullptr;
  };
  struct Early {
    Bytes result;
    std::exception_ptr error;
  };

  std::mutex m_;
  std::unordered_map<std::uint64_t, Entry> waiting_;
  std::unordered_map<std::uint64_t, Early> early_;  // results that beat their track() call
  std::exception_ptr dead_;                         // set once the thread has ended
  std::unique_ptr<ClientConn> conn_;
  std::thread thread_;
  // A second descriptor of the connection's socket, for stop() to shut it down: the thread may
  // close conn_'s own descriptor at any moment (and its number be reused), so stop() never
  // touches that one.
  int wake_fd_ = -1;
  std::atomic<bool> stopping_{false};
  bool abandoned_ = false;
};

}  // namespace mpx::detail
