// queue/ — Queue, JoinableQueue and SimpleQueue over one shared-memory ring (<mpx/queues.hpp>).
// May include: sync, process, serialize, common.
//
// The queue engine: see mpx/detail/queue_core.hpp for the shape.
//
// Storage. The mapping holds N chunks of S bytes (S a power of two), a `next` link per chunk
// and a recycle ring of chunk numbers. Records (an 8-byte length, then the item's bytes,
// padded to 8) are laid end to end through a chain of chunks; an item may span any number of
// them. A consumer that leaves a chunk pushes it on the recycle ring; a producer that needs a
// chunk takes the oldest recycled one, and a never-used one only when none is recycled. So the
// memory a queue touches is its high-water mark of queued bytes, not its budget, and the
// budget is exhausted exactly when no chunk is left.
//
// Committing. Each side keeps its bookkeeping (position, counts, recycle index) in two slots
// and a selector. put() copies the record in beyond the tail and links any new chunks, writes
// its new bookkeeping into the spare slot, and then publishes the new item count: that one
// store is the commit. Only then does it flip the selector. A process that dies before the
// store left an item nobody can see; one that dies after it left a complete item, and whoever
// next takes the lock (a robust mutex, so they learn of the death) sees that the spare slot's
// count is the published one and flips the selector itself. get() is the mirror image, and
// publishes the chunks it freed only after its count, so a rolled-back get() never hands a
// producer a chunk that still holds its item: an item is never lost because its consumer died
// before get() returned.
//
// Waiting. Sleepers announce themselves in a flag next to a 32-bit futex epoch; the other side
// looks at the flag after publishing (a seq_cst store then load on each side, so one of them
// sees the other) and only then pays for a FUTEX_WAKE. Before sleeping a waiter spins briefly,
// because on a busy queue the next item usually arrives sooner than a wake-up would.
#include <mpx/detail/queue_core.hpp>
#include <mpx/detail/shm.hpp>
#include <mpx/detail/timespec.hpp>
#include <mpx/errors.hpp>

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <string>
#include <system_error>

#include "common/log.hpp"

namespace mpx::detail {
namespace {

using u32 = std::atomic<std::uint32_t>;
using u64 = std::atomic<std::uint64_t>;
static_assert(u32::is_always_lock_free && sizeof(u32) == 4 && u64::is_always_lock_free);

constexpr std::uint64_t kHeader = 8;
constexpr std::uint64_t kMinBytes = 4096;
constexpr std::uint64_t kMinChunk = 1024;
constexpr std::uint64_t kMaxChunk = 256 * 1024;  // fits L2: a streaming queue stays in cache
// How long a waiter spins before it sleeps: about what one cross-CPU wake-up costs.
constexpr std::chrono::nanoseconds kSpin = std::chrono::microseconds(30);

constexpr std::uint64_t round8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct PutState {
  std::uint64_t chunk;     // where the next record goes
  std::uint64_t off;       // 0..S (S: that chunk is full)
  std::uint64_t count;     // items ever put
  std::uint64_t recycled;  // recycle ring entries taken
  std::uint64_t fresh;     // never-used chunks handed out
};

struct GetState {
  std::uint64_t chunk;  // where the next record is
  std::uint64_t off;
  std::uint64_t count;     // items ever got
  std::uint64_t recycled;  // recycle ring entries given back
};

template <class State>
struct alignas(128) Side {  // one lock and the state only its holder touches
  pthread_mutex_t mutex;
  State slot[2];
  u32 current{0};
  // Lower bounds of what the other side published, to spare a cache miss per call.
  std::uint64_t seen_count = 0;
  std::uint64_t seen_recycled = 0;

  State state() const { return slot[current.load(std::memory_order_relaxed)]; }
};

// The commit of one side (see "Committing" above): the new bookkeeping goes to the spare slot,
// the store of the published count makes the call happen, and only then does the selector move.
template <class State>
void commit(Side<State>& side, const State& st, u64& published) {
  std::uint32_t spare = 1 - side.current.load(std::memory_order_relaxed);
  side.slot[spare] = st;
  published.store(st.count, std::memory_order_seq_cst);
  side.current.store(spare, std::memory_order_relaxed);
}

// After a holder died inside commit(): if its count was published, its call happened, so the
// selector moves as the dead process would have moved it.
template <class State>
void complete_dead_commit(Side<State>& side, const u64& published) {
  std::uint32_t spare = 1 - side.current.load(std::memory_order_relaxed);
  if (side.slot[spare].count == published.load(std::memory_order_relaxed)) side.current.store(spare);
}

struct alignas(128) Waiters {
  u32 epoch{0};
  u32 sleepers{0};
};

void init_robust_mutex(pthread_mutex_t* m) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  int rc = pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) throw std::system_error(rc, std::generic_category(), "pthread_mutex_init");
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A deadline in steady-clock (CLOCK_MONOTONIC) nanoseconds. Plain integers keep the hot path
// free of std::optional copies, which cost a store-forwarding stall or two per call.
struct Until {
  static constexpr std::int64_t kNever = INT64_MAX;
  std::int64_t ns;

  static Until from(bool block, const Timeout& timeout) {
    if (!block) return {0};
    if (!timeout) return {kNever};
    std::int64_t left = std::max<std::int64_t>(timeout->count(), 0);
    std::int64_t now = now_ns();
    return {left >= kNever - now ? kNever : now + left};
  }
  bool never() const { return ns == kNever; }
  bool expired() const { return ns == 0 || (ns != kNever && now_ns() >= ns); }
  timespec to_timespec() const { return detail::to_timespec(ns); }
};

// Shared futexes (not FUTEX_PRIVATE): the word lives in memory mapped by several processes.
void futex_wait(u32& word, std::uint32_t expected, Until until) {
  timespec ts = until.to_timespec();
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, which steady_clock is.
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_BITSET, expected,
            until.never() ? nullptr : &ts, nullptr, FUTEX_BITSET_MATCH_ANY);
}

void wake(Waiters& w) {
  w.epoch.fetch_add(1, std::memory_order_release);
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&w.epoch), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// Called right after the seq_cst store that may satisfy a sleeper.
void notify(Waiters& w) {
  if (w.sleepers.load(std::memory_order_seq_cst) != 0 && w.sleepers.exchange(0) != 0) wake(w);
}

// Returns once `word` may differ from `seen`: it changed, a wake-up came, or `until` passed.
// Callers re-check their condition and their deadline.
void await_change(Waiters& w, const u64& word, std::uint64_t seen, Until until) {
  const std::int64_t spin_until = std::min(now_ns() + kSpin.count(), until.ns);
  for (int i = 1;; ++i) {
    if (word.load(std::memory_order_acquire) != seen) return;
    cpu_relax();
    if (i % 64 == 0 && now_ns() >= spin_until) break;
  }
  if (until.expired()) return;
  std::uint32_t epoch = w.epoch.load(std::memory_order_acquire);
  w.sleepers.store(1, std::memory_order_seq_cst);
  if (word.load(std::memory_order_seq_cst) != seen) return;
  futex_wait(w.epoch, epoch, until);
}

}  // namespace

struct alignas(128) QueueShared {
  QueueShared(std::uint64_t chunk_size, std::uint64_t chunks, std::uint64_t max_items)
      : S(chunk_size), N(chunks), maxsize(max_items) {
    put.slot[0] = PutState{0, 0, 0, 0, 1};  // chunk 0 is where both sides start
    get.slot[0] = GetState{0, 0, 0, 0};
    init_robust_mutex(&put.mutex);
    init_robust_mutex(&get.mutex);
  }

  std::uint32_t* next() { return reinterpret_cast<std::uint32_t*>(this + 1); }
  std::uint32_t* recycle() { return next() + N; }
  std::byte* chunk(std::uint64_t c) { return reinterpret_cast<std::byte*>(recycle() + N) + c * S; }
  static std::uint64_t extra_bytes(std::uint64_t chunk_size, std::uint64_t chunks) {
    return chunks * (2 * sizeof(std::uint32_t) + chunk_size);
  }

  const std::uint64_t S;
  const std::uint64_t N;
  const std::uint64_t maxsize;
  Side<PutState> put;
  alignas(128) u64 put_count{0};  // producers' commit point
  Side<GetState> get;
  alignas(128) u64 get_count{0};  // consumers' commit point
  u64 recycled{0};                // recycle ring entries published for producers
  alignas(128) u64 done{0};       // task_done() calls
  Waiters data;                   // consumers waiting for an item
  Waiters room;                   // producers waiting for room
  Waiters joined;                 // join() callers
};
static_assert(std::is_trivially_destructible_v<QueueShared>);
static_assert(sizeof(QueueShared) % 128 == 0);

namespace {

// Reading the lock word before trying keeps spinners from bouncing its cache line away from
// the holder. (glibc's pthread_mutex_t exposes the word; a dead owner's word stays non-zero,
// so the blocking lock that follows the spin is what reports EOWNERDEAD.)
bool looks_locked(pthread_mutex_t* m) {
#ifdef __GLIBC__
  return __atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) != 0;
#else
  (void)m;
  return false;
#endif
}

// pthread_mutex_lock with a deadline on the monotonic clock. pthread_mutex_clocklock would do it
// in one call, but it is recent (glibc 2.30) and thread sanitizers do not intercept it, so they
// would miss the lock and report races on everything it guards. pthread_mutex_timedlock takes a
// wall-clock time instead: waiting in short slices bounds what a jump of that clock can distort.
int timed_lock(pthread_mutex_t* m, Until until) {
  constexpr std::int64_t kSlice = 50'000'000;  // ns
  for (;;) {
    const std::int64_t left = until.ns - now_ns();
    if (left <= 0) {
      int rc = pthread_mutex_trylock(m);
      return rc == EBUSY ? ETIMEDOUT : rc;
    }
    timespec wall;
    ::clock_gettime(CLOCK_REALTIME, &wall);
    const timespec step = detail::to_timespec(wall.tv_nsec + std::min(left, kSlice));
    wall.tv_sec += step.tv_sec;
    wall.tv_nsec = step.tv_nsec;
    int rc = pthread_mutex_timedlock(m, &wall);
    if (rc != ETIMEDOUT) return rc;
  }
}

// The lock of one side; learning that its last holder died, it completes or drops that
// holder's call (see the top of this file) before anyone else looks.
class SideLock {
 public:
  SideLock(QueueShared& s, bool producers) : s_(s), producers_(producers) {}
  SideLock(const SideLock&) = delete;
  SideLock& operator=(const SideLock&) = delete;
  ~SideLock() {
    if (held_) pthread_mutex_unlock(mutex());
  }

  // False when the deadline passed first.
  bool acquire(Until until) {
    pthread_mutex_t* m = mutex();
    int rc = pthread_mutex_trylock(m);
    if (rc == EBUSY) {  // holders copy and leave: a short spin beats sleeping in the kernel
      const std::int64_t spin_until = now_ns() + kSpin.count();
      for (int i = 1; rc == EBUSY; ++i) {
        cpu_relax();
        if (i % 64 == 0 && now_ns() > spin_until) break;
        if (!looks_locked(m)) rc = pthread_mutex_trylock(m);
      }
    }
    if (rc == EBUSY) {
      if (until.never()) {
        rc = pthread_mutex_lock(m);
      } else {
        rc = timed_lock(m, until);
      }
    }
    if (rc == ETIMEDOUT) return false;
    if (rc == EOWNERDEAD) {
      repair();
      pthread_mutex_consistent(m);
    } else if (rc != 0) {
      throw std::system_error(rc, std::generic_category(), "mpx queue lock");
    }
    held_ = true;
    return true;
  }

 private:
  pthread_mutex_t* mutex() { return producers_ ? &s_.put.mutex : &s_.get.mutex; }

  void repair() {
    if (producers_) {
      complete_dead_commit(s_.put, s_.put_count);
    } else {
      complete_dead_commit(s_.get, s_.get_count);
      s_.recycled.store(s_.get.state().recycled, std::memory_order_seq_cst);
    }
    logger().warn("mpx queue: a process died inside {}(); its call was {}", producers_ ? "put" : "get",
                  "completed or dropped whole");
    wake(s_.data);  // whatever the dead process had still to announce
    wake(s_.room);
    wake(s_.joined);
  }

  QueueShared& s_;
  bool producers_;
  bool held_ = false;
};

std::uint64_t pick_chunk_size(std::uint64_t budget) {
  std::uint64_t s = std::bit_floor(budget / 64);
  return std::clamp(s, kMinChunk, kMaxChunk);
}

}  // namespace

QueueCore::QueueCore(const QueueOptions& options) {
  if (options.max_bytes < kMinBytes)
    throw ValueError("mpx queue: max_bytes must be at least " + std::to_string(kMinBytes));
  std::uint64_t S = pick_chunk_size(options.max_bytes);
  std::uint64_t N = options.max_bytes / S;
  if (N > UINT32_MAX) throw ValueError("mpx queue: max_bytes is too large");
  s_ = make_shared_object_with_extra<QueueShared>(QueueShared::extra_bytes(S, N), S, N, options.maxsize);
}

std::size_t QueueCore::maxsize() const { return s_->maxsize; }
std::size_t QueueCore::max_bytes() const { return s_->N * s_->S; }
// However far into its chunk the tail stands, N - 1 more chunks are free once the queue drains.
std::size_t QueueCore::max_item_bytes() const { return (s_->N - 1) * s_->S - kHeader; }

void QueueCore::put(const std::byte* item, std::size_t n, bool block, const Timeout& timeout) const {
  QueueShared& s = *s_;
  const std::uint64_t S = s.S;
  const std::uint64_t N = s.N;
  if (n > max_item_bytes())
    throw Full("mpx queue: an item of " + std::to_string(n) + " bytes exceeds what a queue of " +
               std::to_string(max_bytes()) + " bytes can hold (" + std::to_string(max_item_bytes()) + ")");
  const std::uint64_t rec = round8(kHeader + n);
  const Until until = Until::from(block, timeout);
  auto& me = s.put;
  for (;;) {
    const u64* wait_on = &s.get_count;  // what a get() changes, read no later than "no room"
    std::uint64_t seen = 0;
    bool out_of_bytes = false;
    {
      SideLock lock(s, true);
      // Lock holders only copy: even a non-blocking call waits for one to finish.
      if (!lock.acquire(block ? until : Until{Until::kNever})) throw Full("mpx queue: put() timed out");
      PutState st = me.state();
      bool room = true;
      if (s.maxsize != 0 && st.count - me.seen_count >= s.maxsize) {
        seen = me.seen_count = s.get_count.load(std::memory_order_seq_cst);
        room = st.count - me.seen_count < s.maxsize;
      }
      const std::uint64_t chunks_needed = rec > S - st.off ? (rec - (S - st.off) + S - 1) / S : 0;
      auto chunks_free = [&] { return (me.seen_recycled - st.recycled) + (N - st.fresh); };
      if (room && chunks_needed > chunks_free()) {
        // Consumers publish freed chunks after their count: wait on the chunk counter itself.
        wait_on = &s.recycled;
        seen = me.seen_recycled = s.recycled.load(std::memory_order_seq_cst);
        if (chunks_needed > chunks_free()) room = false, out_of_bytes = true;
      }
      if (room) {
        std::uint32_t* next = s.next();
        auto advance = [&] {  // a recycled chunk if any (its pages are warm), else a fresh one
          if (st.recycled == me.seen_recycled) me.seen_recycled = s.recycled.load(std::memory_order_acquire);
          std::uint64_t c = st.recycled != me.seen_recycled ? s.recycle()[st.recycled++ % N] : st.fresh++;
          next[st.chunk] = static_cast<std::uint32_t>(c);
          st.chunk = c;
          st.off = 0;
        };
        if (st.off == S) advance();
        std::uint64_t len = n;
        std::memcpy(s.chunk(st.chunk) + st.off, &len, sizeof len);  // 8-aligned: never straddles
        st.off += kHeader;
        for (std::size_t left = n; left != 0;) {
          if (st.off == S) advance();
          std::size_t piece = std::min<std::uint64_t>(left, S - st.off);
          std::memcpy(s.chunk(st.chunk) + st.off, item, piece);
          item += piece;
          left -= piece;
          st.off += piece;
        }
        st.off = round8(st.off);
        st.count += 1;
        commit(me, st, s.put_count);
        notify(s.data);
        return;
      }
    }
    if (out_of_bytes && s.maxsize == 0)
      throw Full("mpx queue: its byte budget (" + std::to_string(max_bytes()) +
                 " bytes) is exhausted; QueueOptions::max_bytes sets it");
    if (until.expired()) throw Full("mpx queue is full");
    await_change(s.room, *wait_on, seen, until);
  }
}

void QueueCore::get(Sink sink, void* ctx, bool block, const Timeout& timeout) const {
  QueueShared& s = *s_;
  const std::uint64_t S = s.S;
  const std::uint64_t N = s.N;
  const Until until = Until::from(block, timeout);
  auto& me = s.get;
  for (;;) {
    std::uint64_t seen;
    {
      SideLock lock(s, false);
      if (!lock.acquire(block ? until : Until{Until::kNever})) throw Empty("mpx queue: get() timed out");
      GetState st = me.state();
      if (me.seen_count == st.count) me.seen_count = s.put_count.load(std::memory_order_acquire);
      if (me.seen_count != st.count) {
        const std::uint32_t* next = s.next();
        auto advance = [&] {  // slots past the published count: nobody reads them yet
          s.recycle()[st.recycled++ % N] = static_cast<std::uint32_t>(st.chunk);
          st.chunk = next[st.chunk];
          st.off = 0;
        };
        if (st.off == S) advance();
        std::uint64_t len;
        std::memcpy(&len, s.chunk(st.chunk) + st.off, sizeof len);
        st.off += kHeader;
        if (len == 0) sink(ctx, nullptr, 0, 0);
        for (std::uint64_t left = len; left != 0;) {
          if (st.off == S) advance();
          std::size_t piece = std::min<std::uint64_t>(left, S - st.off);
          sink(ctx, s.chunk(st.chunk) + st.off, piece, len);
          left -= piece;
          st.off += piece;
        }
        st.off = round8(st.off);
        st.count += 1;
        commit(me, st, s.get_count);
        s.recycled.store(st.recycled, std::memory_order_seq_cst);
        notify(s.room);
        return;
      }
      seen = me.seen_count;  // the put count that said "empty"
    }
    if (until.expired()) throw Empty("mpx queue is empty");
    await_change(s.data, s.put_count, seen, until);
  }
}

std::size_t QueueCore::qsize() const {
  std::uint64_t got = s_->get_count.load(std::memory_order_acquire);
  std::uint64_t put = s_->put_count.load(std::memory_order_acquire);
  return put > got ? put - got : 0;
}

bool QueueCore::empty() const { return qsize() == 0; }

bool QueueCore::full() const { return s_->maxsize != 0 && qsize() >= s_->maxsize; }

void QueueCore::task_done() const {
  QueueShared& s = *s_;
  std::uint64_t done = s.done.load(std::memory_order_relaxed);
  for (;;) {
    if (done >= s.put_count.load(std::memory_order_acquire))
      throw StateError("mpx queue: task_done() called more times than items were put");
    if (s.done.compare_exchange_weak(done, done + 1)) {
      if (done + 1 == s.put_count.load(std::memory_order_seq_cst)) notify(s.joined);
      return;
    }
  }
}

bool QueueCore::join(const Timeout& timeout) const {
  QueueShared& s = *s_;
  const Until until = Until::from(true, timeout);
  for (;;) {
    if (s.done.load(std::memory_order_seq_cst) >= s.put_count.load(std::memory_order_seq_cst)) return true;
    if (until.expired()) return false;
    std::uint32_t epoch = s.joined.epoch.load(std::memory_order_acquire);
    s.joined.sleepers.store(1, std::memory_order_seq_cst);
    if (s.done.load(std::memory_order_seq_cst) >= s.put_count.load(std::memory_order_seq_cst)) return true;
    futex_wait(s.joined.epoch, epoch, until);
  }
}

}  // namespace mpx::detail
