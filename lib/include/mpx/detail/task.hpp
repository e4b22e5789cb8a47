// Task encoding: "call this function with these arguments" as bytes, and "here is its result or
// its exception" as bytes. Shared by the pool (forked workers) and the managers' named task
// queues (workers attached to a daemon), so any process running the same binary can execute a
// task that another one encoded. proto/pool.md is the byte-level spec.
//
// A function is named on the wire in one of two ways:
//  * by code address: a per-(function type, argument types) invoker template whose address is
//    sent as (module identity, offset from the module's load base). Module identity is the ELF
//    build-id (or path + size when there is none), so it holds across ASLR, exec, other hosts —
//    for the same binary. A plain function pointer travels the same way, next to the invoker of
//    its signature. The receiver checks the module and the invoker's signature tag and fails
//    the task with a clear error on a mismatch.
//  * by a registered name (register_named_task), for binaries that register the same name.
#pragma once

#include <mpx/detail/proxy_tags.hpp>
#include <mpx/errors.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/serialize.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <variant>
#include <vector>

namespace mpx::detail {

// ------------------------------------------------------------------------------------------
// The fixed-width fields around the codec's payloads are proto's (codec.hpp); a task message
// too short for what it announces is reported in the library's own words.
// ------------------------------------------------------------------------------------------
[[noreturn]] void truncated_task_message(const char* what);  // lib/src/pool/task.cpp
inline proto::Reader task_reader(std::span<const std::byte> in) noexcept {
  return proto::Reader(in, &truncated_task_message);
}

// ------------------------------------------------------------------------------------------
// Code identity (lib/src/pool/task.cpp).
// ------------------------------------------------------------------------------------------
struct CodeRef {
  std::uint64_t module = 0;  // hash of the module's build-id (or of path + size)
  std::uint64_t offset = 0;  // address - module load base
};
// Throws mpx::Error if the address is in no loaded module's code.
CodeRef code_ref(std::uintptr_t address);
// 0 when the module is not loaded here or the offset is outside its code.
std::uintptr_t code_address(CodeRef ref);
// code_address, or ValueError "<what> is in no module loaded here (<hint>)": the process runs
// another binary, or the library holding the code is not loaded in it.
std::uintptr_t loaded_code_address(CodeRef ref, std::string_view what, std::string_view hint = {});
// Reads the module table now, so processes forked later inherit it and never need the loader
// lock (which another thread of the parent may have held at fork time).
void prepare_code_refs();
// In forked workers: never call into the loader to look for modules loaded after the fork.
void disable_module_rescan() noexcept;

std::uint64_t fnv1a(std::string_view s) noexcept;
template <class T>
std::uint64_t type_tag() {
  static const std::uint64_t tag = fnv1a(typeid(T).name());
  return tag;
}

// ------------------------------------------------------------------------------------------
// Invokers: decode the payload, call, encode the result.
// ------------------------------------------------------------------------------------------
struct TaskCall {
  std::span<const std::byte> payload;  // the invoker's own encoding: function state, arguments
  std::uint64_t index = 0;             // identity of the first item (task_index())
  std::uint32_t count = 1;             // items in a chunk; 1 for a single call
  Bytes* out = nullptr;                // the result encoding is appended here
};
// With call == nullptr an invoker only returns its signature tag.
using Invoker = std::uint64_t (*)(const TaskCall* call);

// Result encoding: one status byte, then
enum ResultStatus : std::uint8_t {
  kResultOk = 0,       // the encoded value (a single call) or encoded std::vector<R> (a chunk)
  kResultRaised = 1,   // str type name, str message: the function threw (RemoteError)
  kResultMixed = 2,    // chunks: u64 n, per item u8 0 + u64 length + value, or u8 1 + type + message
  kResultSetupErr = 3  // u8 error kind, str message: the task could not run (unknown function ...)
};
enum class SetupErrorKind : std::uint8_t { error = 0, value = 1, type_mismatch = 2, protocol = 3 };

// Task body kinds.
enum TaskKind : std::uint8_t { kTaskByCode = 1, kTaskByName = 2 };

// Publishes the running item's index for task_index() while it lives (a pointer, so a chunk's
// loop only bumps its own counter).
class TaskIndexScope {
 public:
  explicit TaskIndexScope(const std::uint64_t* index) noexcept;  // lib/src/pool/task.cpp
  ~TaskIndexScope();
  TaskIndexScope(const TaskIndexScope&) = delete;
  TaskIndexScope& operator=(const TaskIndexScope&) = delete;

 private:
  const std::uint64_t* previous_;
};

// Appends kResultRaised for the exception (demangled dynamic type name + what()).
void encode_raised(Bytes& out, std::exception_ptr e);
void encode_raised_fields(Bytes& out, std::exception_ptr e);  // type + message only
std::exception_ptr read_raised_fields(proto::Reader& in);     // -> RemoteError
// Throws what a non-ok result stands for.
[[noreturn]] void throw_result_error(std::uint8_t status, proto::Reader& in);
// An error raised while setting a task up, before user code runs.
[[noreturn]] void throw_setup_error(SetupErrorKind kind, std::string message);

// Runs one encoded task body (see write_*_header below), appending the result encoding to
// out. Every failure becomes a result encoding; nothing escapes but std::bad_alloc.
void run_task(std::span<const std::byte> body, Bytes& out);

template <class F>
struct is_std_function : std::false_type {};
template <class S>
struct is_std_function<std::function<S>> : std::true_type {};

enum class FnKind { pointer, stateful, stateless, invalid };

template <class F>
constexpr FnKind fn_kind() {
  using D = std::decay_t<F>;
  if constexpr (std::is_pointer_v<D> && std::is_function_v<std::remove_pointer_t<D>>)
    return FnKind::pointer;
  else if constexpr (!std::is_class_v<D> || is_std_function<D>::value)
    return FnKind::invalid;
  else if constexpr (transferable<D>)
    return FnKind::stateful;
  else if constexpr (std::is_default_constructible_v<D>)
    return FnKind::stateless;
  else
    return FnKind::invalid;
}

template <class F>
constexpr bool check_task_function() {
  using D = std::decay_t<F>;
  static_assert(!std::is_member_pointer_v<D>,
                "mpx: a task function cannot be a pointer to member; call it from a captureless lambda "
                "that takes the object as an argument");
  static_assert(!is_std_function<D>::value,
                "mpx: a std::function cannot be sent to a worker process (its target has no portable "
                "identity); pass a function pointer, a captureless lambda or a function object instead");
  static_assert(fn_kind<F>() != FnKind::invalid,
                "mpx: a task function must be a function pointer, a captureless lambda, a "
                "default-constructible function object, or a transferable function object (one with a "
                "serialize() function, whose state then travels with the task). A capturing lambda "
                "cannot travel to another process: pass what it captures as task arguments instead.");
  return fn_kind<F>() != FnKind::invalid;
}

// Arguments and chunk items travel in the codec's formats. cereal values are written back to
// back through one archive (a std::tuple / std::vector encoding); a type that uses
// Boost.Serialization cannot sit inside a cereal container, so it gets a length-prefixed
// encoding of its own.
template <class... T>
inline constexpr bool all_cereal = (!use_boost_serialization<std::remove_cvref_t<T>>::value && ...);

template <class T>
void encode_prefixed(Bytes& out, const T& v) {
  proto::Writer w(out);
  auto at = out.size();
  w.u64(0);
  encode_append(out, v);
  w.patch<std::uint64_t>(at, out.size() - at - 8);
}

template <class... A>
void encode_args(Bytes& out, const A&... args) {
  if constexpr (sizeof...(A) == 0) {
    return;
  } else if constexpr (all_cereal<A...>) {
    (require_transferable<A>(), ...);
    OutputArchive ar(out);
    ar(args...);
  } else {
    (encode_prefixed(out, args), ...);
  }
}

template <class... A>
std::tuple<A...> decode_args(std::span<const std::byte> bytes) {
  std::tuple<A...> t{};
  if constexpr (sizeof...(A) == 0) {
    if (!bytes.empty()) throw ProtocolError("mpx: trailing bytes after task arguments");
  } else if constexpr (all_cereal<A...>) {
    InputArchive ar(bytes);
    try {
      std::apply([&](auto&... x) { ar(x...); }, t);
    } catch (const Error&) {
      throw;  // e.g. TypeMismatch from a proxy argument: as meaningful as the caller's own decode
    } catch (const std::exception& e) {
      throw_decode_error(e.what());
    }
    if (ar.remaining() != 0) throw ProtocolError("mpx: trailing bytes after task arguments");
  } else {
    auto in = task_reader(bytes);
    std::apply([&](auto&... x) { ((x = decode<std::remove_cvref_t<decltype(x)>>(in.take(in.u64()))), ...); },
               t);
    if (in.remaining() != 0) throw ProtocolError("mpx: trailing bytes after task arguments");
  }
  return t;
}

// A sequence of n values: the codec's std::vector<T> encoding for cereal types (u64 count, then
// the elements; arithmetic ones as one block), else u64 count and length-prefixed elements.
template <class T, class It>
void encode_seq(Bytes& out, It first, std::size_t n) {
  if constexpr (!all_cereal<T>) {
    proto::Writer(out).u64(n);
    for (std::size_t i = 0; i < n; ++i, ++first) encode_prefixed(out, static_cast<const T&>(*first));
  } else {
    require_transferable<T>();
    OutputArchive ar(out);
    ar(cereal::make_size_tag(static_cast<cereal::size_type>(n)));
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      if constexpr (std::contiguous_iterator<It> &&
                    std::is_same_v<std::remove_cvref_t<std::iter_reference_t<It>>, T>) {
        out.reserve(out.size() + n * sizeof(T));
        ar(cereal::binary_data(std::to_address(first), n * sizeof(T)));
      } else {
        T buf[512];
        std::size_t left = n;
        while (left) {
          std::size_t k = left < 512 ? left : 512;
          for (std::size_t i = 0; i < k; ++i, ++first) buf[i] = static_cast<T>(*first);
          ar(cereal::binary_data(buf, k * sizeof(T)));
          left -= k;
        }
      }
    } else {
      for (std::size_t i = 0; i < n; ++i, ++first) ar(static_cast<const T&>(*first));
    }
  }
}

template <class T>
std::vector<T> decode_seq(std::span<const std::byte> bytes) {
  if constexpr (all_cereal<T>) {
    return decode<std::vector<T>>(bytes);
  } else {
    auto in = task_reader(bytes);
    auto n = in.u64();
    if (n > in.remaining()) throw ProtocolError("mpx: element count exceeds the input");
    std::vector<T> v;
    v.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t i = 0; i < n; ++i) v.push_back(decode<T>(in.take(in.u64())));
    if (in.remaining() != 0) throw ProtocolError("mpx: trailing bytes after a sequence");
    return v;
  }
}

// The function part of a payload.
template <class D>
void encode_fn(Bytes& out, const D& f) {
  constexpr FnKind kind = fn_kind<D>();
  if constexpr (kind == FnKind::pointer) {
    CodeRef r = code_ref(reinterpret_cast<std::uintptr_t>(f));
    proto::Writer w(out);
    w.u64(r.module);
    w.u64(r.offset);
  } else if constexpr (kind == FnKind::stateful) {
    encode_prefixed(out, f);
  }
}

template <class D>
D decode_fn(proto::Reader& in) {
  constexpr FnKind kind = fn_kind<D>();
  if constexpr (kind == FnKind::pointer) {
    CodeRef r{in.u64(), in.u64()};
    std::uintptr_t a = code_address(r);
    if (!a)
      throw_setup_error(SetupErrorKind::value,
                        "mpx: the task's function pointer is not in a module loaded by this process "
                        "(workers must run the same binary as the submitter)");
    return reinterpret_cast<D>(a);
  } else if constexpr (kind == FnKind::stateful) {
    auto n = in.u64();
    return decode<D>(in.take(n));
  } else {
    return D{};
  }
}

template <class D, class... A>
decltype(auto) call_fn(D& f, std::tuple<A...>& args) {
  if constexpr (std::is_invocable_v<D&, A&&...>)
    return std::apply(f, std::move(args));
  else
    return std::apply(f, args);
}
template <class D, class Item>
decltype(auto) call_item(D& f, Item& item, std::false_type /*star*/) {
  if constexpr (std::is_invocable_v<D&, Item&&>)
    return std::invoke(f, std::move(item));
  else
    return std::invoke(f, item);
}
template <class D, class Item>
decltype(auto) call_item(D& f, Item& item, std::true_type /*star*/) {
  if constexpr (requires { std::apply(f, std::move(item)); })
    return std::apply(f, std::move(item));
  else
    return std::apply(f, item);
}

template <class D, class... A>
using call_result_t = std::decay_t<decltype(call_fn(std::declval<D&>(), std::declval<std::tuple<A...>&>()))>;
template <class D, class Item, bool Star>
using item_result_t =
    std::decay_t<decltype(call_item(std::declval<D&>(), std::declval<Item&>(), std::bool_constant<Star>{}))>;

template <class... T>
struct InvokerTag {};

// A single call f(args...).
template <class D, class... A>
std::uint64_t call_invoker(const TaskCall* call) {
  if (!call) return type_tag<InvokerTag<D, A...>>();
  auto in = task_reader(call->payload);
  D f = decode_fn<D>(in);
  auto args = decode_args<A...>(in.rest());
  Bytes& out = *call->out;
  TaskIndexScope scope(&call->index);
  using R = call_result_t<D, A...>;
  std::size_t mark = out.size();
  try {
    if constexpr (std::is_void_v<R>) {
      call_fn(f, args);
      proto::Writer(out).u8(kResultOk);
    } else {
      R r = call_fn(f, args);
      proto::Writer(out).u8(kResultOk);
      encode_append(out, r);
    }
  } catch (...) {
    out.resize(mark);
    encode_raised(out, std::current_exception());
  }
  return 0;
}

// A chunk of items: f(item) (Star: std::apply(f, item)) for each; an exception fails its item only.
template <class D, class Item, bool Star>
std::uint64_t chunk_invoker(const TaskCall* call) {
  if (!call) return type_tag<InvokerTag<D, Item, std::bool_constant<Star>>>();
  auto in = task_reader(call->payload);
  D f = decode_fn<D>(in);
  auto items = decode_seq<Item>(in.rest());
  if (items.size() != call->count) throw ProtocolError("mpx: chunk item count does not match its header");
  using R = item_result_t<D, Item, Star>;
  Bytes& out = *call->out;
  std::vector<R> results;
  results.reserve(items.size());
  std::vector<std::pair<std::size_t, std::exception_ptr>> errors;
  std::uint64_t index = call->index;
  TaskIndexScope scope(&index);
  for (std::size_t i = 0; i < items.size(); ++i, ++index) {
    try {
      results.push_back(call_item(f, items[i], std::bool_constant<Star>{}));
    } catch (...) {
      errors.emplace_back(i, std::current_exception());
      results.emplace_back();
    }
  }
  std::size_t mark = out.size();
  if (errors.empty()) {
    try {
      proto::Writer(out).u8(kResultOk);
      encode_seq<R>(out, results.begin(), results.size());
      return 0;
    } catch (...) {
      out.resize(mark);  // some item cannot be encoded: find which, item by item
    }
  }
  proto::Writer w(out);
  w.u8(kResultMixed);
  w.u64(results.size());
  std::size_t e = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (e < errors.size() && errors[e].first == i) {
      w.u8(1);
      encode_raised_fields(out, errors[e++].second);
      continue;
    }
    std::size_t item_mark = out.size();
    try {
      w.u8(0);
      w.u64(0);
      encode_append<R>(out, results[i]);
      w.patch<std::uint64_t>(item_mark + 1, out.size() - item_mark - 9);
    } catch (...) {
      out.resize(item_mark);
      w.u8(1);
      encode_raised_fields(out, std::current_exception());
    }
  }
  return 0;
}

// The invoker's own identity, resolved once per instantiation.
template <Invoker Inv>
const CodeRef& invoker_ref() {
  static const CodeRef ref = code_ref(reinterpret_cast<std::uintptr_t>(Inv));
  return ref;
}

// Body header of a task named by code address; the payload follows.
template <Invoker Inv>
void write_code_header(Bytes& out, std::uint64_t index, std::uint32_t count) {
  const CodeRef& ref = invoker_ref<Inv>();
  static const std::uint64_t tag = Inv(nullptr);
  std::size_t at = out.size();
  out.resize(at + 1 + 4 * 8 + 4);  // one resize for the whole header: it is on every task's path
  out[at] = static_cast<std::byte>(kTaskByCode);
  proto::Writer w(out);
  w.patch(at + 1, ref.module);
  w.patch(at + 9, ref.offset);
  w.patch(at + 17, tag);
  w.patch(at + 25, index);
  w.patch(at + 33, count);
}

// Encodes f(args...) as a task body.
template <class F, class... Args>
void encode_call_task(Bytes& out, const F& f, std::uint64_t index, const Args&... args) {
  using D = std::decay_t<F>;
  write_code_header<&call_invoker<D, std::decay_t<Args>...>>(out, index, 1);
  encode_fn(out, f);
  encode_args<std::decay_t<Args>...>(out, args...);
}

// Encodes a chunk of n items from `first` as a task body.
template <class F, class Item, bool Star, class It>
void encode_chunk_task(Bytes& out, const F& f, std::uint64_t index, It first, std::size_t n) {
  using D = std::decay_t<F>;
  write_code_header<&chunk_invoker<D, Item, Star>>(out, index, static_cast<std::uint32_t>(n));
  encode_fn(out, f);
  encode_seq<Item>(out, first, n);
}

// ------------------------------------------------------------------------------------------
// Decoding results (the submitter's side).
// ------------------------------------------------------------------------------------------
template <class R>
R decode_call_result(std::span<const std::byte> bytes) {
  auto in = task_reader(bytes);
  auto st = in.u8();
  if (st != kResultOk) throw_result_error(st, in);
  if constexpr (!std::is_void_v<R>) return decode<R>(in.rest());
}

// A chunk's outcome: every value, or per item a value or an exception, or one exception for all.
template <class R>
struct ChunkOutcome {
  std::vector<R> values;                                   // status ok
  std::vector<std::variant<R, std::exception_ptr>> items;  // status mixed
  std::exception_ptr all_failed;                           // raised / setup error
};

template <class R>
ChunkOutcome<R> decode_chunk_result(std::span<const std::byte> bytes, std::size_t count) {
  ChunkOutcome<R> o;
  auto in = task_reader(bytes);
  auto st = in.u8();
  if (st == kResultOk) {
    o.values = decode_seq<R>(in.rest());
    if (o.values.size() != count) throw ProtocolError("mpx: chunk result has the wrong number of items");
  } else if (st == kResultMixed) {
    auto n = in.u64();
    if (n != count) throw ProtocolError("mpx: chunk result has the wrong number of items");
    o.items.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t i = 0; i < n; ++i) {
      if (in.u8() == 0) {
        auto len = in.u64();
        o.items.emplace_back(std::in_place_index<0>, decode<R>(in.take(len)));
      } else {
        o.items.emplace_back(std::in_place_index<1>, read_raised_fields(in));
      }
    }
  } else {
    try {
      throw_result_error(st, in);
    } catch (...) {
      o.all_failed = std::current_exception();
    }
  }
  return o;
}

// ------------------------------------------------------------------------------------------
// Tasks by registered name (the managers' register_task builds on this).
// ------------------------------------------------------------------------------------------
struct NamedTask {
  std::uint64_t tag = 0;                     // named_signature_tag of the function
  std::function<void(const TaskCall&)> run;  // decodes the arguments, calls, encodes the result
  // The type tags of its arguments (as a tuple; "tuple[]" for none) and result ("void" for
  // none), which a worker tells the server so that Python clients can submit it.
  std::string args_tag, result_tag;
  // For a function with a portable identity (pointer, captureless lambda, function object): a
  // rebuilder and the function's encoding, so that a worker started by forkserver or spawn, which
  // did not run the registering code, can register it too. Null for a capturing lambda.
  NamedTask (*rebuild)(std::span<const std::byte> fn) = nullptr;
  Bytes fn;
};
// A registration as bytes another process of this binary can register (empty if the task has no
// portable identity), and the other way (lib/src/pool/task.cpp); the latter throws ValueError if
// the code is in no module loaded here.
Bytes portable_task(const NamedTask& task);
void register_portable_task(std::string name, std::span<const std::byte> portable);
void register_named_task(std::string name, NamedTask task);  // replaces an earlier registration
std::optional<NamedTask> find_named_task(std::string_view name);
std::vector<std::pair<std::string, NamedTask>> named_tasks();  // every registration, by name

template <class R, class... A>
std::uint64_t named_signature_tag() {
  return type_tag<R(std::decay_t<A>...)>();
}

template <class T>
struct signature_of : signature_of<decltype(&T::operator())> {};
template <class R, class... A>
struct signature_of<R (*)(A...)> {
  using result = R;
  using args = std::tuple<std::decay_t<A>...>;
};
template <class R, class... A>
struct signature_of<R (*)(A...) noexcept> : signature_of<R (*)(A...)> {};
template <class C, class R, class... A>
struct signature_of<R (C::*)(A...)> : signature_of<R (*)(A...)> {};
template <class C, class R, class... A>
struct signature_of<R (C::*)(A...) const> : signature_of<R (*)(A...)> {};
template <class C, class R, class... A>
struct signature_of<R (C::*)(A...) noexcept> : signature_of<R (*)(A...)> {};
template <class C, class R, class... A>
struct signature_of<R (C::*)(A...) const noexcept> : signature_of<R (*)(A...)> {};

template <class Tuple>
struct decode_args_of;
template <class... A>
struct decode_args_of<std::tuple<A...>> {
  static std::tuple<A...> get(std::span<const std::byte> b) { return decode_args<A...>(b); }
};
template <class Tuple>
Tuple decode_args_tuple(std::span<const std::byte> b) {
  return decode_args_of<Tuple>::get(b);
}

template <class R, class Tuple>
struct named_tag_of;
template <class R, class... A>
struct named_tag_of<R, std::tuple<A...>> {
  static std::uint64_t get() { return named_signature_tag<std::decay_t<R>, A...>(); }
};

template <class F>
NamedTask make_named_task(F f);

template <class D>
NamedTask rebuild_named_task(std::span<const std::byte> fn) {
  auto in = task_reader(fn);
  return make_named_task(decode_fn<D>(in));
}

// Wraps any callable with a deducible signature (not a template operator()); it lives in the
// registering process, so capturing lambdas are fine here.
template <class F>
NamedTask make_named_task(F f) {
  using Sig = signature_of<std::decay_t<F>>;
  using R = std::decay_t<typename Sig::result>;
  using Args = typename Sig::args;
  NamedTask t;
  t.tag = named_tag_of<R, Args>::get();
  if constexpr (std::tuple_size_v<Args> == 0)
    t.args_tag = "tuple[]";
  else
    t.args_tag = wire_type_tag<Args>();
  if constexpr (std::is_void_v<R>)
    t.result_tag = "void";
  else
    t.result_tag = wire_type_tag<R>();
  using D = std::decay_t<F>;
  if constexpr (fn_kind<D>() != FnKind::invalid) {
    t.rebuild = &rebuild_named_task<D>;
    encode_fn(t.fn, f);
  }
  t.run = [f = std::move(f)](const TaskCall& call) mutable {
    auto args = decode_args_tuple<Args>(call.payload);
    Bytes& out = *call.out;
    TaskIndexScope scope(&call.index);
    std::size_t mark = out.size();
    try {
      if constexpr (std::is_void_v<R>) {
        std::apply(f, std::move(args));
        proto::Writer(out).u8(kResultOk);
      } else {
        R r = std::apply(f, std::move(args));
        proto::Writer(out).u8(kResultOk);
        encode_append(out, r);
      }
    } catch (...) {
      out.resize(mark);
      encode_raised(out, std::current_exception());
    }
  };
  return t;
}

// Encodes a call of the task registered as `name`, with the submitter's view of its signature.
template <class R, class... Args>
void encode_named_task(Bytes& out, std::string_view name, std::uint64_t index, const Args&... args) {
  proto::Writer w(out);
  w.u8(kTaskByName);
  w.str32(name);
  w.u64(named_signature_tag<R, Args...>());
  w.u64(index);
  w.u32(1);
  encode_args<std::decay_t<Args>...>(out, args...);
}

}  // namespace mpx::detail
