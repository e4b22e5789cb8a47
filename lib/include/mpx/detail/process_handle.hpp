// How a process-shared handle (Event, Lock, Value ...) reaches a child that is not a fork of its
// maker (the forkserver start method). It does not become transferable: sending one through a
// queue or a connection stays a compile-time error, as the handle means nothing to a process
// that does not share the memory. A Process target's argument is the one place where the
// library itself gives the child that memory (<mpx/detail/shm.hpp>: the mapping, by fd, at the
// same address), so there the handle crosses as the address of its state.
#pragma once

#include <concepts>
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

// The child's handle on state its starter gave it: the mapping stays for the child's life, so
// dropping the handle releases nothing.
template <class T>
std::shared_ptr<T> adopt_shared_state(void* p) {
  return std::shared_ptr<T>(static_cast<T*>(p), [](T*) {});
}

}  // namespace mpx::detail
