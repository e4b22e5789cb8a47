// process/ — WorkerSet: forked workers by slot, their exits, the crash-loop back-off.
#include "process/worker_set.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace mpx::detail {

WorkerSet::WorkerSet(std::size_t slots, BackOff back_off) : back_off_(back_off), slots_(slots) {}

WorkerSet::~WorkerSet() {
  try {
    kill_all();
  } catch (...) {  // out of memory for the reports: ~ChildProcess still kills and reaps each
  }
}

void WorkerSet::close_in_child(const std::vector<int>& fds) noexcept {
  for (int fd : fds) ::close(fd);
}

WorkerSet::Started WorkerSet::adopt(std::size_t slot, std::shared_ptr<ChildProcess> proc,
                                    std::optional<std::uint32_t> generation) {
  if (proc->sentinel() < 0) {
    // fork_child could not open a pidfd (the fd table is full): a child nobody can watch would
    // never be reported or replaced, so it does not get to run.
    proc->signal(SIGKILL);
    proc->wait();
    errno = EMFILE;
    throw Error("cannot start a worker: no file descriptor left to watch it");
  }
  if (slot >= slots_.size()) slots_.resize(slot + 1);
  Slot& s = slots_[slot];
  s.generation = generation.value_or(s.generation + 1);
  s.occupied = true;
  children_.push_back({slot, s.generation, proc, Clock::now()});
  return {s.generation, proc->pid()};
}

std::vector<int> WorkerSet::sentinels() const {
  std::vector<int> fds;
  fds.reserve(children_.size());
  for (const Child& c : children_) fds.push_back(c.proc->sentinel());
  return fds;
}

const WorkerSet::Child* WorkerSet::find(std::size_t slot, std::uint32_t generation) const {
  for (const Child& c : children_)
    if (c.slot == slot && c.generation == generation) return &c;
  return nullptr;
}

int WorkerSet::sentinel(std::size_t slot, std::uint32_t generation) const {
  const Child* c = find(slot, generation);
  return c ? c->proc->sentinel() : -1;
}

bool WorkerSet::running(std::size_t slot, std::uint32_t generation) const {
  return find(slot, generation) != nullptr;
}

WorkerSet::Exit WorkerSet::retire(std::size_t i, Clock::time_point now) {
  Child c = std::move(children_[i]);
  children_.erase(children_.begin() + static_cast<std::ptrdiff_t>(i));
  Exit e{c.slot, c.generation, c.proc->pid(), c.proc->exitcode(), now - c.started};
  Slot& s = slots_[c.slot];
  if (s.generation == c.generation) {  // the slot's latest child, not an older one finishing
    s.occupied = false;
    s.allowed_at = now + (e.lived < back_off_.crash_window ? back_off_.crash_pause : Clock::duration{0});
  }
  return e;
}

std::vector<WorkerSet::Exit> WorkerSet::reap() {
  // waitpid(WNOHANG) per child rather than trusting the sentinels: a pipe sentinel (kernels
  // without pidfd) stays unreadable while a grandchild holds its write end.
  std::vector<Exit> exits;
  const auto now = Clock::now();
  for (std::size_t i = 0; i < children_.size();) {
    if (children_[i].proc->poll())
      exits.push_back(retire(i, now));
    else
      ++i;
  }
  return exits;
}

bool WorkerSet::signal(std::size_t slot, int sig) {
  bool sent = false;
  for (Child& c : children_)
    if (c.slot == slot) sent = c.proc->signal(sig) || sent;
  return sent;
}

void WorkerSet::signal_all(int sig) {
  for (Child& c : children_) c.proc->signal(sig);
}

bool WorkerSet::occupied(std::size_t slot) const { return slot < slots_.size() && slots_[slot].occupied; }

WorkerSet::Clock::time_point WorkerSet::start_allowed_at(std::size_t slot) const {
  return slot < slots_.size() ? slots_[slot].allowed_at : Clock::time_point{};
}

std::vector<std::size_t> WorkerSet::due(Clock::time_point now) const {
  std::vector<std::size_t> ready;
  for (std::size_t i = 0; i < slots_.size(); ++i)
    if (!slots_[i].occupied && slots_[i].allowed_at <= now) ready.push_back(i);
  return ready;
}

int WorkerSet::ms_until_due(Clock::time_point now) const {
  int wait = -1;
  for (const Slot& s : slots_) {
    if (s.occupied) continue;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(s.allowed_at - now).count();
    int left = static_cast<int>(std::clamp<decltype(ms)>(ms, 0, 0x7fffffff));
    wait = wait < 0 ? left : std::min(wait, left);
  }
  return wait;
}

std::vector<WorkerSet::Exit> WorkerSet::wait_all(Timeout timeout) {
  Deadline deadline(timeout);
  for (Child& c : children_)
    if (c.proc->owned_here()) c.proc->wait(deadline.remaining());  // in a fork, not ours to wait for
  return reap();
}

std::vector<WorkerSet::Exit> WorkerSet::stop(Clock::duration grace) {
  signal_all(SIGTERM);
  std::vector<Exit> exits = wait_all(std::chrono::duration_cast<std::chrono::nanoseconds>(grace));
  if (children_.empty()) return exits;
  std::vector<Exit> killed = kill_all();
  exits.insert(exits.end(), killed.begin(), killed.end());
  return exits;
}

std::vector<WorkerSet::Exit> WorkerSet::kill_all() {
  signal_all(SIGKILL);
  return wait_all(forever);
}

}  // namespace mpx::detail
