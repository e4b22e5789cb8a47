// A Process target as bytes, for start methods whose child is not a copy of the caller
// (forkserver, spawn). It reuses the task encoding's identity of code across processes
// (<mpx/detail/task.hpp>: module build-id + offset), so the child finds the same function in
// its own copy of the binary: first the invoker instantiated for the target's types (checked by
// its signature tag), then the function (pointer, stateless or serialized object) and the
// arguments it decodes.
#pragma once

#include <mpx/detail/process_handle.hpp>
#include <mpx/detail/task.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace mpx::detail {

struct ProcessTargetTag {};

using TargetInvoker = std::uint64_t (*)(const std::span<const std::byte>* payload);

// Given nullptr, only returns the signature tag; else decodes and calls the target.
// A shared mapping that must reach the child: it is mapped there at `base` from `fd`.
struct SharedMappingRef {
  std::uintptr_t base = 0;
  std::size_t bytes = 0;
  int fd = -1;
};
// Appends p (state of a handle) and notes the mapping it lies in; a mapping not made by fd (in
// the fork server's snapshot, or out of a spawn child's reach) is noted with fd -1
// (lib/src/process/shared_mappings.cpp).
void encode_shared_pointer(Bytes& out, std::vector<SharedMappingRef>& maps, const void* p);
// In the child: where the state its starter had at `starter_address` is here. A forkserver child
// maps everything at its starter's addresses; a spawn child maps each mapping wherever its own
// address space has room, so a handle's address moves by its mapping's displacement.
void* shared_state_here(std::uint64_t starter_address) noexcept;

class TargetStateWriter final : public StateWriter {
 public:
  TargetStateWriter(Bytes& out, std::vector<SharedMappingRef>& maps) : out_(out), maps_(maps) {}
  void state(const void* p) override { encode_shared_pointer(out_, maps_, p); }
  void word(std::uint64_t w) override { proto::Writer(out_).u64(w); }
  void code(const void* function) override {
    CodeRef r = code_ref(reinterpret_cast<std::uintptr_t>(function));
    word(r.module);
    word(r.offset);
  }

 private:
  Bytes& out_;
  std::vector<SharedMappingRef>& maps_;
};

class TargetStateReader final : public StateReader {
 public:
  explicit TargetStateReader(proto::Reader& in) : in_(in) {}
  void* state() override { return shared_state_here(in_.u64()); }
  std::uint64_t word() override { return in_.u64(); }
  void* code() override;  // ValueError if the code is in no module loaded here

 private:
  proto::Reader& in_;
};

// Each argument on its own: a handle as the address(es) of its state, anything else encoded and
// length-prefixed.
template <class A>
void encode_target_arg(Bytes& out, std::vector<SharedMappingRef>& maps, const A& a) {
  if constexpr (crossing_handle<A>) {
    encode_shared_pointer(out, maps, process_handle<A>::state(a));
  } else if constexpr (crossing_compound<A>) {
    TargetStateWriter w(out, maps);
    process_handle<A>::encode(a, w);
  } else {
    encode_prefixed(out, a);
  }
}

template <class A>
A decode_target_arg(proto::Reader& in) {
  if constexpr (crossing_handle<A>) {
    return process_handle<A>::adopt(shared_state_here(in.u64()));
  } else if constexpr (crossing_compound<A>) {
    TargetStateReader r(in);
    return process_handle<A>::decode(r);
  } else {
    return decode<A>(in.take(in.u64()));
  }
}

template <class D, class... A>
std::uint64_t target_invoker(const std::span<const std::byte>* payload) {
  if (!payload) return type_tag<InvokerTag<ProcessTargetTag, D, A...>>();
  auto in = task_reader(*payload);
  D f = decode_fn<D>(in);
  // Braces: the arguments are read in order.
  std::tuple<A...> args{decode_target_arg<A>(in)...};
  if (in.remaining() != 0) throw ProtocolError("mpx: trailing bytes after a process target's arguments");
  call_fn(f, args);
  return 0;
}

// cereal's traits look at the outer type only: they call std::vector<X> or std::shared_ptr<X>
// serializable whatever X is, and encoding one with an X that is not fails to compile. Every
// Process target is encodable-checked (the start method is chosen at run time), so a fork-only
// argument such as a shared_ptr to shared memory must read as "not transferable" here instead
// of breaking the build: containers are judged by their elements, and smart pointers are never
// sent (what they point at is this process's).
template <class T>
struct deep_transferable;
template <class T>
inline constexpr bool deep_transferable_v = deep_transferable<std::remove_cv_t<T>>::value;

template <class T>
struct deep_transferable : std::bool_constant<transferable<T>> {};
template <class T>
requires requires {
  typename T::value_type;
} &&(!std::is_same_v<T, std::basic_string<typename T::value_type>>)struct deep_transferable<T>
    : std::bool_constant<transferable<T> && deep_transferable_v<typename T::value_type>> {
};
template <class T>
struct deep_transferable<std::shared_ptr<T>> : std::false_type {};
template <class T, class D>
struct deep_transferable<std::unique_ptr<T, D>> : std::false_type {};
template <class T>
struct deep_transferable<std::weak_ptr<T>> : std::false_type {};
template <class A, class B>
struct deep_transferable<std::pair<A, B>>
    : std::bool_constant<deep_transferable_v<A> && deep_transferable_v<B>> {};
template <class... T>
struct deep_transferable<std::tuple<T...>> : std::bool_constant<(deep_transferable_v<T> && ...)> {};
template <class... T>
struct deep_transferable<std::variant<T...>> : std::bool_constant<(deep_transferable_v<T> && ...)> {};
template <class T, std::size_t N>
struct deep_transferable<std::array<T, N>> : std::bool_constant<deep_transferable_v<T>> {};

template <class F, class... A>
inline constexpr bool transferable_target = fn_kind<F>() != FnKind::invalid &&
                                            ((deep_transferable_v<A> || crossing_handle<A> ||
                                              crossing_compound<A>)&&...);

template <class D, class... A>
void encode_target(Bytes& out, std::vector<SharedMappingRef>& maps, const D& f,
                   const std::tuple<A...>& args) {
  constexpr TargetInvoker inv = &target_invoker<D, A...>;
  CodeRef ref = code_ref(reinterpret_cast<std::uintptr_t>(inv));
  proto::Writer w(out);
  w.u64(ref.module);
  w.u64(ref.offset);
  w.u64(inv(nullptr));
  encode_fn(out, f);
  std::apply([&](const A&... a) { (encode_target_arg(out, maps, a), ...); }, args);
}

// In the child: runs what encode_target wrote; an empty encoding is a Process without a target.
// Throws ValueError / TypeMismatch when this binary has no such invoker (lib/src/process).
void run_encoded_target(std::span<const std::byte> bytes);

}  // namespace mpx::detail
