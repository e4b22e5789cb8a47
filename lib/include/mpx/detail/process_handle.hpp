// How a process-shared handle (Event, Lock, Value ...) reaches a child that is not a fork of its
// maker (the forkserver start method). It does not become transferable: sending one through a
// queue or a connection stays a compile-time error, as the handle means nothing to a process
// that does not share the memory. A Process target's argument is the one place where the
// library itself gives the child that memory (<mpx/detail/shm.hpp>: the mapping, by fd, at the
// same address), so there the handle crosses as the address of its state.
#pragma once

#include <concepts>
#include <cstdint>
#include <memory>

namespace mpx::detail {

// Specialised next to each handle type that can cross: static const void* state(const H&) gives
// the address of its state in a shared mapping, static H adopt(void*) rebuilds the handle from it.
template <class H>
struct process_handle {};

template <class H>
concept crossing_handle = requires(const H& h, void* p) {
  { process_handle<H>::state(h) } -> std::same_as<const void*>;
  { process_handle<H>::adopt(p) } -> std::same_as<H>;
};

// A handle made of more than one state, or with more than an address to it (Condition: its lock,
// its own state and whether the lock is an RLock; Barrier: its state and its action), writes
// them in order with process_handle<H>::encode(h, StateWriter&) and reads them back in the same
// order with decode(StateReader&). encode may throw ValueError for what cannot cross (a Barrier
// action that is not a function pointer).
struct StateWriter {
  virtual void state(const void* p) = 0;  // an address in a shared mapping
  virtual void word(std::uint64_t w) = 0;
  virtual void code(const void* function) = 0;  // a function, by its code's identity
 protected:
  ~StateWriter() = default;
};
struct StateReader {
  virtual void* state() = 0;
  virtual std::uint64_t word() = 0;
  virtual void* code() = 0;

 protected:
  ~StateReader() = default;
};

template <class H>
concept crossing_compound = requires(const H& h, StateWriter& w, StateReader& r) {
  process_handle<H>::encode(h, w);
  { process_handle<H>::decode(r) } -> std::same_as<H>;
};

// The child's handle on state its starter gave it: the mapping stays for the child's life, so
// dropping the handle releases nothing.
template <class T>
std::shared_ptr<T> adopt_shared_state(void* p) {
  return std::shared_ptr<T>(static_cast<T*>(p), [](T*) {});
}

}  // namespace mpx::detail
