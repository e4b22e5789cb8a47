// mpx::mpi::Pool: the pool's tasks on MPI ranks. On the root, whoever holds the drive lock makes
// the pool's MPI calls (one at a time: MPI_THREAD_SERIALIZED is enough): it batches queued tasks
// to the workers (at most kDepth batches in flight per worker, so a worker finds its next batch
// waiting) and collects and settles result batches. A dispatch thread drives while tasks are in
// flight and runs the callbacks; a caller that blocks on a result (apply, map) drives the pool
// itself while the lock is free, so a round trip costs no wake-up of another thread on the way
// out or back. A worker rank runs batches in a loop. The
// messages (on a private duplicate of the user's communicator, so they never meet the user's):
//   tasks   root -> worker   u32 n, then n x (u64 seq, u64 length, task body)
//   results worker -> root   u32 n, then n x (u64 seq, u64 length, result encoding)
//   exit    root -> worker   empty: finish, answer bye, leave run_pool
//   bye     worker -> root   empty
// Task bodies and result encodings are the pool's (proto/pool.md), so a task means the same here.
#include <mpx/mpi.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/timeout.hpp>

#include <malloc.h>
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "pool/frame_arena.hpp"

namespace mpx {
namespace detail {
namespace {

constexpr int kTagTasks = 1, kTagResults = 2, kTagExit = 3, kTagBye = 4;
constexpr unsigned kDepth = 2;                                        // batches in flight per worker
constexpr std::size_t kMaxBatchTasks = 256;                           // tasks per batch message
constexpr std::size_t kMaxBatchBytes = 8u << 20;                      // bytes per batch message (soft)
constexpr std::size_t kMaxMessage = std::numeric_limits<int>::max();  // MPI counts are ints
constexpr std::size_t kInPlaceMin = 64u << 10;     // tasks this big are sent without a copy
constexpr std::size_t kRecordHeader = 4 + 8 + 8;   // a one-record batch: n, seq, length
constexpr std::size_t kMaxSpareBytes = 64u << 20;  // sent task frames kept for reuse

// Polling without burning a core: spin a little (sched_yield lets co-located ranks run), then
// sleep in steps growing from 10 us to 1 ms. Reset on every bit of progress.
class Backoff {
 public:
  void reset() noexcept { idle_ = 0; }
  // How long to sleep before polling again; zero while still spinning.
  std::chrono::microseconds next() noexcept {
    unsigned i = idle_++;
    if (i < kSpins) return std::chrono::microseconds(0);
    return std::chrono::microseconds(std::min(1000L, 10L << std::min(i - kSpins, 7u)));
  }
  void pause() {
    auto d = next();
    if (d.count() == 0)
      ::sched_yield();
    else
      std::this_thread::sleep_for(d);
  }

 private:
  static constexpr unsigned kSpins = 64;
  unsigned idle_ = 0;
};

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(std::string("mpx::mpi: ") + what + ": " + std::string(text, static_cast<std::size_t>(len)));
}

void put_record(Bytes& out, std::uint64_t seq, std::span<const std::byte> bytes) {
  proto::Writer w(out);
  w.u64(seq);
  w.u64(bytes.size());
  w.raw(bytes.data(), bytes.size());
}

// Reads one batch message: calls f(seq, bytes) per record. ProtocolError on a malformed one.
template <class F>
void for_each_record(std::span<const std::byte> msg, F&& f) {
  auto in = task_reader(msg);
  std::uint32_t n = in.u32();
  for (std::uint32_t i = 0; i < n; ++i) {
    std::uint64_t seq = in.u64();
    std::uint64_t len = in.u64();
    if (len > in.remaining()) throw ProtocolError("mpx::mpi: truncated batch message");
    f(seq, in.take(static_cast<std::size_t>(len)));
  }
}

// Receives the message `status` announced, whole, into buf (grown, never shrunk, so a series
// of large messages does not fault in fresh pages each time). Returns the message's bytes.
std::span<const std::byte> receive(MPI_Comm comm, const MPI_Status& status, Bytes& buf) {
  int count = 0;
  MPI_Get_count(&status, MPI_BYTE, &count);
  auto n = static_cast<std::size_t>(count);
  if (buf.size() < n) buf.resize(n);
  check_mpi(MPI_Recv(buf.data(), count, MPI_BYTE, status.MPI_SOURCE, status.MPI_TAG, comm, MPI_STATUS_IGNORE),
            "receive");
  return {buf.data(), n};
}

}  // namespace

class MpiPoolCore final : public Driver {
 public:
  MpiPoolCore(MPI_Comm comm, int root) : comm_(comm), root_(root) {
    MPI_Comm_size(comm_, &size_);
    for (int r = 0; r < size_; ++r)
      if (r != root_) workers_.push_back(Worker{r, 0, {}});
    thread_ = std::thread([this] { run(); });
  }
  ~MpiPoolCore() override {
    if (!thread_.joinable()) return;
    terminate();
    try {
      join();
    } catch (...) {
    }
  }

  unsigned processes() const noexcept { return static_cast<unsigned>(workers_.size()); }

  // ---- Driver ----
  bool wait(const Waitable& w, const Deadline& d) override {
    if (w.is_ready()) return true;
    if (on_callback_thread()) {
      kick_dispatch();  // tasks submitted for this caller to drive still go
      throw StateError("mpx::mpi::Pool: waiting for a pool result inside a pool callback would deadlock");
    }
    Backoff backoff;
    for (;;) {
      std::unique_lock drive(drive_m_, std::try_to_lock);
      if (!drive.owns_lock()) break;  // another thread drives: its progress wakes this one
      if (stopped_driving_) break;
      bool progressed = drive_once();
      bool busy = !inflight_.empty() || !sends_.empty() || !pending_.empty();
      drive.unlock();
      if (progressed) {
        backoff.reset();
        notify_waiters();
      }
      if (w.is_ready()) {
        // What is still in flight (other threads' tasks) is the dispatch thread's to drive.
        if (busy) kick_dispatch();
        return true;
      }
      if (d.expired()) {
        if (busy) kick_dispatch();
        return false;
      }
      backoff.pause();
    }
    kick_dispatch();
    std::unique_lock lk(wait_m_);
    auto ready = [&] { return w.is_ready(); };
    if (d.infinite()) {
      wait_cv_.wait(lk, ready);
      return true;
    }
    return wait_cv_.wait_until(lk, *d.at(), ready);
  }
  bool on_callback_thread() const noexcept override {
    return std::this_thread::get_id() == thread_id_.load();
  }
  void schedule_callbacks(std::shared_ptr<ResultStateBase> s) override {
    {
      std::lock_guard lk(m_);
      callbacks_.push_back(std::move(s));
    }
    cv_.notify_one();
  }

  // ---- submissions ----
  std::uint64_t next_apply_index() noexcept { return apply_index_.fetch_add(1, std::memory_order_relaxed); }
  void check_open() {
    std::lock_guard lk(m_);
    if (!accepting_) throw StateError("mpx::mpi::Pool: the pool is closed");
  }
  // A caller about to wait for these tasks drives the pool itself (wait()): no wake-up needed.
  void submit(std::vector<TaskSubmission>&& tasks, bool caller_waits) {
    bool wake = false;
    {
      std::lock_guard lk(m_);
      if (!accepting_) throw StateError("mpx::mpi::Pool: the pool is closed");
      wake = enqueue(tasks) && !caller_waits;
    }
    if (wake) cv_.notify_one();
  }
  bool feed(std::vector<TaskSubmission>&& tasks) {
    bool wake = false;
    {
      std::lock_guard lk(m_);
      if (join_requested_ || terminated_) return false;
      wake = enqueue(tasks);
    }
    if (wake) cv_.notify_one();
    return true;
  }
  std::size_t inflight_hint() const noexcept { return workers_.size() * kDepth * 8; }

  // Large task frames are reused once sent (frame_arena.hpp says why).
  Bytes take_frame(std::size_t reserve) { return arena_.take_task_frame(reserve); }

  // ---- lifecycle ----
  void close() {
    std::lock_guard lk(m_);
    accepting_ = false;
  }
  void terminate() {
    {
      std::lock_guard lk(m_);
      accepting_ = false;
      terminated_ = true;
    }
    cv_.notify_one();
  }
  void request_join() {
    {
      std::lock_guard lk(m_);
      if (accepting_) throw StateError("mpx::mpi::Pool: join() before close() or terminate()");
      join_requested_ = true;
    }
    cv_.notify_one();
    join();
  }

 private:
  struct Worker {
    int rank;
    unsigned batches;                             // in flight
    std::deque<std::vector<std::uint64_t>> seqs;  // per batch in flight, oldest first
  };
  struct InFlight {
    std::shared_ptr<TaskSink> sink;
    std::uint64_t tag;
  };
  struct Send {
    MPI_Request request;
    Bytes buffer;
  };

  // Under m_. True when the dispatch thread needs waking: only the first submission since it last
  // looked does, so a burst of apply_async costs one wake-up, not one per task.
  bool enqueue(std::vector<TaskSubmission>& tasks) {
    bool first = incoming_.empty();
    for (auto& t : tasks) incoming_.push_back(std::move(t));
    return first;
  }

  void join() {
    std::lock_guard lk(join_m_);
    if (thread_.joinable()) thread_.join();
    if (error_) {
      auto e = std::exchange(error_, nullptr);
      std::rethrow_exception(e);
    }
  }

  void run() {
    thread_id_.store(std::this_thread::get_id());
    try {
      dispatch_loop();
      std::lock_guard drive(drive_m_);
      release_workers();
    } catch (...) {
      std::lock_guard drive(drive_m_);
      if (!error_) error_ = std::current_exception();
      stopped_driving_ = true;
      fail_everything_locked(error_);
      // The workers cannot be released reliably after an MPI failure: end the job instead of
      // leaving them waiting forever.
      MPI_Abort(comm_, 70);
    }
  }

  // Under drive_m_: one round of the pool's MPI work. True if anything moved.
  bool drive_once() {
    {
      std::lock_guard lk(m_);
      for (auto& t : incoming_) pending_.push_back(std::move(t));
      incoming_.clear();
    }
    try {
      bool progressed = send_batches();
      progressed |= collect_results();
      progressed |= reap_sends();
      return progressed;
    } catch (...) {
      // After an MPI failure the workers cannot be released reliably: end the job instead of
      // leaving them waiting forever (whichever thread was driving).
      error_ = std::current_exception();
      fail_everything_locked(error_);
      MPI_Abort(comm_, 70);
      throw;
    }
  }

  void kick_dispatch() {
    {
      std::lock_guard lk(m_);
      kick_ = true;
    }
    cv_.notify_one();
  }

  void dispatch_loop() {
    Backoff backoff;
    std::chrono::microseconds idle_wait{0};
    bool idle = true;  // nothing in flight when last looked: nothing to poll MPI for
    for (;;) {
      std::vector<std::shared_ptr<ResultStateBase>> callbacks;
      bool terminated = false, join_requested = false;
      {
        std::unique_lock lk(m_);
        auto news = [&] { return !incoming_.empty() || !callbacks_.empty() || terminated_ || kick_; };
        if (idle)
          cv_.wait(lk, [&] { return news() || join_requested_; });
        else if (idle_wait.count() > 0 && !news())
          cv_.wait_for(lk, idle_wait);
        kick_ = false;
        callbacks.swap(callbacks_);
        terminated = terminated_;
        join_requested = join_requested_;
      }
      for (auto& s : callbacks) s->run_callbacks();
      std::unique_lock drive(drive_m_);
      if (terminated) {
        fail_everything_locked(std::make_exception_ptr(
            StateError("mpx::mpi::Pool: the pool was terminated before this task finished")));
        stopped_driving_ = true;
        return;
      }
      bool progressed = drive_once() || !callbacks.empty();
      idle = inflight_.empty() && sends_.empty() && pending_.empty();
      if (join_requested && idle) {
        stopped_driving_ = true;
        return;
      }
      drive.unlock();
      if (progressed) {
        backoff.reset();
        idle_wait = std::chrono::microseconds(0);
        notify_waiters();
      } else {
        idle_wait = backoff.next();
        if (idle_wait.count() == 0) ::sched_yield();
      }
    }
  }

  bool send_batches() {
    bool sent = false;
    while (!pending_.empty()) {
      Worker* w = nullptr;
      for (auto& c : workers_)
        if (c.batches < kDepth && (!w || c.batches < w->batches)) w = &c;
      if (!w) break;
      // Spread what is queued over every free slot rather than giving it all to one worker.
      std::size_t share = std::max<std::size_t>(1, pending_.size() / (workers_.size() * kDepth));
      share = std::min(share, kMaxBatchTasks);
      if (auto& t = pending_.front(); t.frame.size() - kTaskPrefix >= kInPlaceMin) {
        send_in_place(*w, t);
        pending_.pop_front();
        sent = true;
        continue;
      }
      Bytes msg;
      proto::Writer(msg).u32(0);
      std::vector<std::uint64_t> seqs;
      while (!pending_.empty() && seqs.size() < share) {
        auto& t = pending_.front();
        auto body = std::span<const std::byte>(t.frame).subspan(kTaskPrefix);
        if (!seqs.empty() && (msg.size() + body.size() > kMaxBatchBytes || body.size() >= kInPlaceMin)) break;
        if (body.size() + 32 > kMaxMessage) {
          t.sink->on_failure(
              t.tag,
              std::make_exception_ptr(ValueError("mpx::mpi::Pool: a task larger than 2 GiB cannot be sent")));
          pending_.pop_front();
          continue;
        }
        std::uint64_t seq = next_seq_++;
        put_record(msg, seq, body);
        inflight_.emplace(seq, InFlight{std::move(t.sink), t.tag});
        seqs.push_back(seq);
        pending_.pop_front();
      }
      if (seqs.empty()) continue;
      proto::Writer(msg).patch(0, static_cast<std::uint32_t>(seqs.size()));
      auto& s = sends_.emplace_back(Send{MPI_REQUEST_NULL, std::move(msg)});
      check_mpi(MPI_Isend(s.buffer.data(), static_cast<int>(s.buffer.size()), MPI_BYTE, w->rank, kTagTasks,
                          comm_, &s.request),
                "send tasks");
      ++w->batches;
      w->seqs.push_back(std::move(seqs));
      sent = true;
    }
    return sent;
  }

  // A large task goes alone, straight from its frame: a one-record batch header fits in the room
  // the frame keeps in front of the body, so the body is not copied again.
  void send_in_place(Worker& w, TaskSubmission& t) {
    std::size_t len = t.frame.size() - kTaskPrefix;
    if (len + 32 > kMaxMessage) {
      t.sink->on_failure(t.tag, std::make_exception_ptr(
                                    ValueError("mpx::mpi::Pool: a task larger than 2 GiB cannot be sent")));
      return;
    }
    static_assert(kTaskPrefix >= kRecordHeader);
    std::size_t at = kTaskPrefix - kRecordHeader;
    std::uint64_t seq = next_seq_++;
    proto::Writer header(t.frame);
    header.patch(at, std::uint32_t{1});
    header.patch(at + 4, seq);
    header.patch<std::uint64_t>(at + 12, len);
    inflight_.emplace(seq, InFlight{std::move(t.sink), t.tag});
    auto& s = sends_.emplace_back(Send{MPI_REQUEST_NULL, std::move(t.frame)});
    check_mpi(MPI_Isend(s.buffer.data() + at, static_cast<int>(s.buffer.size() - at), MPI_BYTE, w.rank,
                        kTagTasks, comm_, &s.request),
              "send tasks");
    ++w.batches;
    w.seqs.push_back({seq});
  }

  bool collect_results() {
    bool got = false;
    for (;;) {
      int flag = 0;
      MPI_Status status;
      check_mpi(MPI_Iprobe(MPI_ANY_SOURCE, kTagResults, comm_, &flag, &status), "probe");
      if (!flag) return got;
      got = true;
      auto msg = receive(comm_, status, recv_buf_);
      Worker* w = worker(status.MPI_SOURCE);
      for_each_record(msg, [&](std::uint64_t seq, std::span<const std::byte> result) {
        auto it = inflight_.find(seq);
        if (it == inflight_.end()) throw ProtocolError("mpx::mpi: a result for a task that was not sent");
        InFlight f = std::move(it->second);
        inflight_.erase(it);
        f.sink->on_result(f.tag, result);
      });
      // A worker answers a batch with one message unless its results overflow one; the batch
      // is done when all its tasks are.
      while (w && !w->seqs.empty() &&
             std::none_of(w->seqs.front().begin(), w->seqs.front().end(),
                          [&](std::uint64_t s) { return inflight_.count(s) != 0; })) {
        w->seqs.pop_front();
        --w->batches;
      }
    }
  }

  bool reap_sends() {
    bool any = false;
    for (auto it = sends_.begin(); it != sends_.end();) {
      int done = 0;
      check_mpi(MPI_Test(&it->request, &done, MPI_STATUS_IGNORE), "send");
      if (done) {
        arena_.recycle(std::move(it->buffer));
        it = sends_.erase(it);
        any = true;
      } else {
        ++it;
      }
    }
    return any;
  }

  // Tells every worker to leave and waits for each one's bye, throwing away results that still
  // arrive (after terminate()).
  void release_workers() {
    std::vector<MPI_Request> exits(workers_.size(), MPI_REQUEST_NULL);
    for (std::size_t i = 0; i < workers_.size(); ++i)
      check_mpi(MPI_Isend(nullptr, 0, MPI_BYTE, workers_[i].rank, kTagExit, comm_, &exits[i]), "send exit");
    std::size_t byes = 0;
    Backoff backoff;
    while (byes < workers_.size()) {
      int flag = 0;
      MPI_Status status;
      check_mpi(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &status), "probe");
      if (!flag) {
        reap_sends();
        backoff.pause();
        continue;
      }
      backoff.reset();
      receive(comm_, status, recv_buf_);
      if (status.MPI_TAG == kTagBye) ++byes;
    }
    check_mpi(MPI_Waitall(static_cast<int>(exits.size()), exits.data(), MPI_STATUSES_IGNORE), "send exit");
    for (auto& s : sends_) MPI_Wait(&s.request, MPI_STATUS_IGNORE);
    sends_.clear();
  }

  // Under drive_m_.
  void fail_everything_locked(const std::exception_ptr& e) {
    std::deque<TaskSubmission> pending;
    {
      std::lock_guard lk(m_);
      accepting_ = false;
      for (auto& t : incoming_) pending_.push_back(std::move(t));
      incoming_.clear();
    }
    pending.swap(pending_);
    for (auto& t : pending) t.sink->on_failure(t.tag, e);
    auto inflight = std::move(inflight_);
    inflight_.clear();
    for (auto& [seq, f] : inflight) f.sink->on_failure(f.tag, e);
    for (auto& w : workers_) {
      w.batches = 0;
      w.seqs.clear();
    }
    notify_waiters();
  }

  void notify_waiters() {
    { std::lock_guard lk(wait_m_); }
    wait_cv_.notify_all();
  }

  Worker* worker(int rank) {
    for (auto& w : workers_)
      if (w.rank == rank) return &w;
    return nullptr;
  }

  MPI_Comm comm_;
  int root_;
  int size_ = 0;
  std::vector<Worker> workers_;

  // Shared with the submitting threads.
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<TaskSubmission> incoming_;
  std::vector<std::shared_ptr<ResultStateBase>> callbacks_;
  bool accepting_ = true, terminated_ = false, join_requested_ = false;
  bool kick_ = false;  // a waiting caller stopped driving with tasks still in flight
  std::atomic<std::uint64_t> apply_index_{0};

  // The driver's: whoever holds drive_m_ (the dispatch thread, or a caller in wait()).
  std::mutex drive_m_;
  bool stopped_driving_ = false;  // the dispatch thread has ended: nobody may drive any more
  std::deque<TaskSubmission> pending_;
  std::unordered_map<std::uint64_t, InFlight> inflight_;
  std::list<Send> sends_;
  std::uint64_t next_seq_ = 1;
  Bytes recv_buf_;

  FrameArena arena_{kInPlaceMin, kMaxSpareBytes};

  std::mutex wait_m_;
  std::condition_variable wait_cv_;
  std::mutex join_m_;
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_{};
  std::exception_ptr error_;
};

Driver* pool_driver(MpiPoolCore& core) noexcept { return &core; }
std::uint64_t pool_next_apply_index(MpiPoolCore& core) noexcept { return core.next_apply_index(); }
Bytes pool_frame(MpiPoolCore& core, std::size_t reserve) { return core.take_frame(reserve); }
void pool_check_open(MpiPoolCore& core) { core.check_open(); }
void pool_submit(MpiPoolCore& core, std::vector<TaskSubmission>&& tasks, bool caller_waits) {
  core.submit(std::move(tasks), caller_waits);
}
void pool_submit_one(MpiPoolCore& core, TaskSubmission&& task, bool caller_waits) {
  std::vector<TaskSubmission> one;
  one.push_back(std::move(task));
  core.submit(std::move(one), caller_waits);
}
bool pool_feed(MpiPoolCore& core, std::vector<TaskSubmission>&& tasks) { return core.feed(std::move(tasks)); }
std::size_t pool_inflight_hint(const MpiPoolCore& core) noexcept { return core.inflight_hint(); }

namespace {

// A worker rank: batches in, result batches out, until the root says exit.
void serve(MPI_Comm comm, int root) {
  disable_module_rescan();
  // Task after task allocates and frees the same large buffers: keep them in the heap rather
  // than mapping fresh pages (a fault per 4 KiB) every time, as a forked pool worker does.
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 128 << 20);
  Backoff backoff;
  Bytes in, out;
  proto::Writer w(out);
  for (;;) {
    int flag = 0;
    MPI_Status status;
    check_mpi(MPI_Iprobe(root, MPI_ANY_TAG, comm, &flag, &status), "probe");
    if (!flag) {
      backoff.pause();
      continue;
    }
    backoff.reset();
    auto msg = receive(comm, status, in);
    if (status.MPI_TAG == kTagExit) break;
    if (status.MPI_TAG != kTagTasks) throw ProtocolError("mpx::mpi: unexpected message from the root");
    out.clear();
    w.u32(0);
    std::uint32_t n = 0;
    auto flush = [&] {
      if (n == 0) return;
      w.patch(0, n);
      check_mpi(MPI_Send(out.data(), static_cast<int>(out.size()), MPI_BYTE, root, kTagResults, comm),
                "send results");
      out.clear();
      w.u32(0);
      n = 0;
    };
    Bytes result;
    for_each_record(msg, [&](std::uint64_t seq, std::span<const std::byte> body) {
      result.clear();
      run_task(body, result);
      if (result.size() + 32 > kMaxMessage) {
        result.clear();
        encode_raised(result, std::make_exception_ptr(
                                  ValueError("mpx::mpi::Pool: a result larger than 2 GiB cannot be sent")));
      }
      if (out.size() + result.size() + 16 > kMaxMessage) flush();
      put_record(out, seq, result);
      ++n;
    });
    flush();
  }
  check_mpi(MPI_Send(nullptr, 0, MPI_BYTE, root, kTagBye, comm), "send bye");
}

}  // namespace
}  // namespace detail

namespace mpi {

Pool::Pool(const boost::mpi::communicator& comm, const Options& options) : comm_(comm) {
  core_ = std::make_shared<detail::MpiPoolCore>(static_cast<MPI_Comm>(comm_), options.root);
  processes_ = core_->processes();
}

Pool::~Pool() {
  try {
    core_->close();
    core_->request_join();
  } catch (...) {
    detail::report_callback_exception(std::current_exception());
  }
}

void Pool::close() { core_->close(); }
void Pool::terminate() { core_->terminate(); }
void Pool::join() { core_->request_join(); }

int run_pool(const boost::mpi::communicator& comm, const std::function<int(Pool&)>& main, Options options) {
  if (comm.size() < 2)
    throw ValueError(
        "mpx::mpi::run_pool: the communicator needs at least two ranks (a root and a worker); "
        "start the program with mpirun -n 2 or more");
  if (options.root < 0 || options.root >= comm.size())
    throw ValueError("mpx::mpi::run_pool: root " + std::to_string(options.root) + " is not a rank of the " +
                     std::to_string(comm.size()) + "-rank communicator");
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_SERIALIZED)
    throw StateError(
        "mpx::mpi::run_pool: MPI must be initialised with at least MPI_THREAD_SERIALIZED, e.g. "
        "boost::mpi::environment env(argc, argv, boost::mpi::threading::serialized)");
  // Collective: a private communicator keeps the pool's messages apart from the user's.
  boost::mpi::communicator own(comm, boost::mpi::comm_duplicate);
  if (own.rank() != options.root) {
    if (options.initializer) options.initializer();
    detail::prepare_code_refs();
    detail::serve(static_cast<MPI_Comm>(own), options.root);
    return 0;
  }
  detail::prepare_code_refs();
  Pool pool(own, options);
  try {
    return main(pool);
  } catch (...) {
    pool.terminate();
    try {
      pool.join();
    } catch (...) {
    }
    throw;
  }
}

}  // namespace mpi
}  // namespace mpx
