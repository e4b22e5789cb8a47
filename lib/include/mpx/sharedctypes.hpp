// Values and arrays in shared memory, like Python's multiprocessing.Value / Array.
//
// Create them before forking; copies of the handle (in this process or inherited by children)
// all refer to the same memory. Each carries an RLock (get_lock()) for compound updates:
//
//   mpx::Value<long> counter(0);
//   { std::lock_guard g(counter.get_lock()); counter.store(counter.load() + 1); }
//
// Value::load/store are each atomic on their own: lock-free std::atomic_ref when T's size
// allows, otherwise under the RLock (which is recursive, so they stay legal while you hold it).
// Array elements are plain memory: hold get_lock() (or use std::atomic_ref) when processes
// write concurrently.
//
// RawValue / RawArray are the same storage without the lock (Python's RawValue, RawArray and
// Value(..., lock=False)): for data one process writes before the others read it, or guarded
// by a lock of your own. RawValue's load/store are still each atomic when T is lock-free.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include <mpx/detail/shm.hpp>
#include <mpx/detail/sync.hpp>
#include <mpx/errors.hpp>
#include <mpx/synchronize.hpp>

namespace mpx {

template <class T>
class Value {
  static_assert(std::is_trivially_copyable_v<T>, "mpx::Value<T> needs a trivially copyable T");

 public:
  explicit Value(T initial = T{})
      : s_(detail::make_locked_object<Shared>(0, initial)),
        lock_(std::shared_ptr<detail::LockState>(s_, &s_->lock)) {}

  T load() const {
    if constexpr (kLockFree) {
      return std::atomic_ref<T>(s_->value).load(std::memory_order_seq_cst);
    } else {
      std::lock_guard guard(lock_);
      return s_->value;
    }
  }

  void store(T value) {
    if constexpr (kLockFree) {
      std::atomic_ref<T>(s_->value).store(value, std::memory_order_seq_cst);
    } else {
      std::lock_guard guard(lock_);
      s_->value = value;
    }
  }

  RLock& get_lock() { return lock_; }

 private:
  static constexpr bool kLockFree = std::atomic_ref<T>::is_always_lock_free;
  struct Shared {
    explicit Shared(T v) : value(v) {}
    detail::LockState lock;
    alignas(std::atomic_ref<T>::required_alignment) T value;
  };
  template <class>
  friend struct detail::process_handle;
  struct Adopt {};
  Value(Adopt, std::shared_ptr<Shared> s)
      : s_(std::move(s)), lock_(std::shared_ptr<detail::LockState>(s_, &s_->lock)) {}
  std::shared_ptr<Shared> s_;
  mutable RLock lock_;
};

// A Value a forkserver child can be given as a Process argument (<mpx/detail/process_handle.hpp>).
namespace detail {
template <class T>
struct process_handle<Value<T>> {
  static const void* state(const Value<T>& h) { return h.s_.get(); }
  static Value<T> adopt(void* p) {
    return Value<T>(typename Value<T>::Adopt{}, adopt_shared_state<typename Value<T>::Shared>(p));
  }
};
}  // namespace detail

namespace detail {

// The elements of an Array or RawArray: n values of T after a Header (which holds `size`) in one
// shared mapping, with Python's bounds-checked access in at().
template <class T, class Header>
class SharedElements {
  static_assert(std::is_trivially_copyable_v<T>, "shared arrays need a trivially copyable T");
  static_assert(alignof(T) <= 4096, "shared mappings are page aligned");

 public:
  std::size_t size() const { return s_->size; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  // Bounds-checked: IndexError like Python.
  T& at(std::size_t i) { return data_[checked(i)]; }
  const T& at(std::size_t i) const { return data_[checked(i)]; }
  std::span<T> span() { return {data_, s_->size}; }
  std::span<const T> span() const { return {data_, s_->size}; }
  T* begin() { return data_; }
  T* end() { return data_ + s_->size; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + s_->size; }

 protected:
  static constexpr std::size_t kOffset = (sizeof(Header) + alignof(T) - 1) / alignof(T) * alignof(T);
  // The bytes a mapping needs beyond sizeof(Header) for n elements.
  static std::size_t extra_bytes(std::size_t n) { return kOffset - sizeof(Header) + n * sizeof(T); }

  explicit SharedElements(std::shared_ptr<Header> s)
      : s_(std::move(s)), data_(reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(s_.get()) + kOffset)) {}
  void fill(T value) { std::uninitialized_fill_n(data_, s_->size, value); }
  void copy(std::span<const T> init) { std::uninitialized_copy(init.begin(), init.end(), data_); }

  std::shared_ptr<Header> s_;

 private:
  std::size_t checked(std::size_t i) const {
    if (i >= s_->size)
      throw IndexError("index " + std::to_string(i) + " out of range (size " + std::to_string(s_->size) +
                       ")");
    return i;
  }
  T* data_;
};

struct LockedArrayHeader {
  explicit LockedArrayHeader(std::size_t n) : size(n) {}
  LockState lock;
  std::size_t size;
};
struct RawArrayHeader {
  explicit RawArrayHeader(std::size_t n) : size(n) {}
  std::size_t size;
};

}  // namespace detail

template <class T>
class Array : public detail::SharedElements<T, detail::LockedArrayHeader> {
  using Base = detail::SharedElements<T, detail::LockedArrayHeader>;

 public:
  explicit Array(std::size_t n, T fill = T{}) : Array(Sized{}, n) { this->fill(fill); }
  explicit Array(std::span<const T> init) : Array(Sized{}, init.size()) { this->copy(init); }

  RLock& get_lock() { return lock_; }

 private:
  struct Sized {};
  Array(Sized, std::size_t n)
      : Base(detail::make_locked_object<detail::LockedArrayHeader>(Base::extra_bytes(n), n)),
        lock_(std::shared_ptr<detail::LockState>(this->s_, &this->s_->lock)) {}
  template <class>
  friend struct detail::process_handle;
  explicit Array(std::shared_ptr<detail::LockedArrayHeader> s)
      : Base(std::move(s)), lock_(std::shared_ptr<detail::LockState>(this->s_, &this->s_->lock)) {}

  RLock lock_;
};

template <class T>
class RawValue {
  static_assert(std::is_trivially_copyable_v<T>, "mpx::RawValue<T> needs a trivially copyable T");

 public:
  explicit RawValue(T initial = T{}) : s_(detail::make_shared_object<Shared>(initial)) {}

  T load() const {
    if constexpr (kLockFree)
      return std::atomic_ref<T>(s_->value).load(std::memory_order_seq_cst);
    else
      return s_->value;
  }
  void store(T value) {
    if constexpr (kLockFree)
      std::atomic_ref<T>(s_->value).store(value, std::memory_order_seq_cst);
    else
      s_->value = value;
  }

 private:
  static constexpr bool kLockFree = std::atomic_ref<T>::is_always_lock_free;
  struct Shared {
    explicit Shared(T v) : value(v) {}
    alignas(std::atomic_ref<T>::required_alignment) T value;
  };
  template <class>
  friend struct detail::process_handle;
  struct Adopt {};
  RawValue(Adopt, std::shared_ptr<Shared> s) : s_(std::move(s)) {}
  std::shared_ptr<Shared> s_;
};

template <class T>
class RawArray : public detail::SharedElements<T, detail::RawArrayHeader> {
  using Base = detail::SharedElements<T, detail::RawArrayHeader>;

 public:
  explicit RawArray(std::size_t n, T fill = T{})
      : Base(detail::make_shared_object_with_extra<detail::RawArrayHeader>(Base::extra_bytes(n), n)) {
    this->fill(fill);
  }
  explicit RawArray(std::span<const T> init)
      : Base(detail::make_shared_object_with_extra<detail::RawArrayHeader>(Base::extra_bytes(init.size()),
                                                                           init.size())) {
    this->copy(init);
  }

 private:
  template <class>
  friend struct detail::process_handle;
  explicit RawArray(std::shared_ptr<detail::RawArrayHeader> s) : Base(std::move(s)) {}
};

// The other shared values a forkserver child can be given as Process arguments.
namespace detail {
template <class T>
struct process_handle<RawValue<T>> {
  static const void* state(const RawValue<T>& h) { return h.s_.get(); }
  static RawValue<T> adopt(void* p) {
    return RawValue<T>(typename RawValue<T>::Adopt{}, adopt_shared_state<typename RawValue<T>::Shared>(p));
  }
};
template <class T>
struct process_handle<Array<T>> {
  static const void* state(const Array<T>& h) { return h.s_.get(); }
  static Array<T> adopt(void* p) { return Array<T>(adopt_shared_state<LockedArrayHeader>(p)); }
};
template <class T>
struct process_handle<RawArray<T>> {
  static const void* state(const RawArray<T>& h) { return h.s_.get(); }
  static RawArray<T> adopt(void* p) { return RawArray<T>(adopt_shared_state<RawArrayHeader>(p)); }
};
}  // namespace detail

}  // namespace mpx
