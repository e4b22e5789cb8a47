// A Process target as bytes, for start methods whose child is not a copy of the caller
// (forkserver, spawn). It reuses the task encoding's identity of code across processes
// (<mpx/detail/task.hpp>: module build-id + offset), so the child finds the same function in
// its own copy of the binary: first the invoker instantiated for the target's types (checked by
// its signature tag), then the function (pointer, stateless or serialized object) and the
// arguments it decodes.
#pragma once

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

namespace mpx::detail {

struct ProcessTargetTag {};

using TargetInvoker = std::uint64_t (*)(const std::span<const std::byte>* payload);

// Given nullptr, only returns the signature tag; else decodes and calls the target.
template <class D, class... A>
std::uint64_t target_invoker(const std::span<const std::byte>* payload) {
  if (!payload) return type_tag<InvokerTag<ProcessTargetTag, D, A...>>();
  auto in = task_reader(*payload);
  D f = decode_fn<D>(in);
  auto args = decode_args<A...>(in.rest());
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
                                            (deep_transferable_v<A> && ...);

template <class D, class... A>
void encode_target(Bytes& out, const D& f, const std::tuple<A...>& args) {
  constexpr TargetInvoker inv = &target_invoker<D, A...>;
  CodeRef ref = code_ref(reinterpret_cast<std::uintptr_t>(inv));
  proto::Writer w(out);
  w.u64(ref.module);
  w.u64(ref.offset);
  w.u64(inv(nullptr));
  encode_fn(out, f);
  std::apply([&](const A&... a) { encode_args<A...>(out, a...); }, args);
}

// In the child: runs what encode_target wrote; an empty encoding is a Process without a target.
// Throws ValueError / TypeMismatch when this binary has no such invoker (lib/src/process).
void run_encoded_target(std::span<const std::byte> bytes);

}  // namespace mpx::detail
