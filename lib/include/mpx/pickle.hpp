// Python objects on the wire: a pickle codec written for mpx (no Python interpreter involved),
// for talking to stock Python programs through multiprocessing.connection (Connection's
// send_object/recv_object, send_py/recv_py).
//
//   mpx::py::Object d = mpx::py::Dict{{"n", 1}, {"x", 2.5}};
//   mpx::Bytes b = mpx::py::dumps(d);                 // Python: pickle.loads(b) == {'n': 1, 'x': 2.5}
//   mpx::py::Object back = mpx::py::loads(b);
//   auto m = mpx::py::from_object<std::map<std::string, double>>(back);
//
// Object is a value (copies are deep): None, bool, int (int64), float, str (UTF-8 bytes),
// bytes, bytearray, list, tuple, dict (insertion order kept), set, frozenset (insertion order
// kept too), slice, and the few exception instances a Python server sends (Exception).
// == and hash follow Python: 1 == 1.0 == True, list != tuple, set == frozenset,
// bytes == bytearray; an Object's kind() tells them apart.
//
// loads reads what Python's pickle.dumps makes of those types, protocols 0-5: memo references
// (shared structure comes back as equal copies), and the globals Python itself emits for them
// (_codecs.encode, builtins/__builtin__ bytes, bytearray, set, frozenset, slice, and the
// exception classes of ExceptionType below). Errors, never a wrong value:
//   ValueError     an int beyond int64; a str that is not UTF-8; an unhashable set item or key
//   ProtocolError  truncated or malformed input, an unknown opcode, any other global
//                  ("pickle: GLOBAL 'collections.OrderedDict' is not supported ..."), REDUCE of
//                  another callable, BUILD, NEWOBJ, persistent ids, out-of-band buffers, a
//                  cyclic structure (a list that contains itself), nesting deeper than
//                  LoadLimits::max_depth, or more objects than LoadLimits::max_objects once
//                  shared references are expanded into copies.
// Nothing is allocated beyond what the input's length accounts for (or the limits allow): a
// declared length or count is checked against the bytes present, and while loading, memory
// stays within about 100 bytes per input byte (Python's own unpickler needs as much).
//
// dumps writes protocol 2-5 (4 by default, framed as Python frames it); protocols 2 and 3 use
// the globals Python uses for bytes/bytearray/set/frozenset there. No memo is written (values
// have no identity), so a shared sub-object is written once per reference.
#pragma once

#include <mpx/errors.hpp>

#include <compare>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace mpx {

using Bytes = std::vector<std::byte>;  // as in <mpx/serialize.hpp>

namespace py {

enum class Kind : std::uint8_t {
  none,
  boolean,
  integer,
  floating,
  str,
  bytes,
  bytearray,
  list,
  tuple,
  dict,
  set,
  frozenset,
  slice,
  exception,
};
const char* kind_name(Kind k) noexcept;  // Python's type name: "NoneType", "int", "dict", ...

class Object;

struct None {
  bool operator==(const None&) const = default;
};
inline constexpr None none{};

// The exceptions a Python manager server sends back (Python's class and module on the wire):
enum class ExceptionType : std::uint8_t {
  KeyError,            // builtins.KeyError
  IndexError,          // builtins.IndexError
  ValueError,          // builtins.ValueError
  TypeError,           // builtins.TypeError
  AttributeError,      // builtins.AttributeError
  RuntimeError,        // builtins.RuntimeError
  Empty,               // queue.Empty (pickled as _queue.Empty, as Python does)
  Full,                // queue.Full
  BrokenBarrierError,  // threading.BrokenBarrierError
  StopIteration,       // builtins.StopIteration (the end of a server-side iterator)
};
const char* exception_name(ExceptionType t) noexcept;  // "KeyError", "queue.Empty", ...

namespace detail {
struct DictAccess;  // lib/src/pickle: the unpickler fills a Dict through it
}  // namespace detail

// dict: keys in insertion order, a key set twice keeps its first place (as in Python).
class Dict {
 public:
  Dict() = default;
  Dict(std::initializer_list<std::pair<Object, Object>> items);
  // Inserts or replaces; ValueError for an unhashable key (list, dict, set, bytearray).
  void set(const Object& key, const Object& value);
  void set(Object&& key, Object&& value);  // (moved in: no copy, and no move through a parameter)
  const Object* find(const Object& key) const noexcept;
  Object* find(const Object& key) noexcept;
  const Object& at(const Object& key) const;  // KeyError when absent
  bool erase(const Object& key);
  std::size_t size() const noexcept;  // (defined below Object: vector<Object> needs it complete)
  bool empty() const noexcept;
  const std::vector<Object>& keys() const noexcept { return keys_; }
  const std::vector<Object>& values() const noexcept { return values_; }
  std::vector<Object>& values() noexcept { return values_; }
  void reserve(std::size_t n);
  bool operator==(const Dict& other) const;  // same items, order ignored (as in Python)

 private:
  friend struct detail::DictAccess;
  std::ptrdiff_t index_of(const Object& key, std::size_t hash) const noexcept;
  void rehash(std::size_t buckets);
  std::vector<Object> keys_, values_;
  std::vector<std::size_t> hashes_;
  std::vector<std::uint32_t> table_;  // open addressing: index + 1, 0 = empty
};

// set / frozenset: items in insertion order, unique.
class Set {
 public:
  Set() = default;
  Set(std::initializer_list<Object> items);
  bool add(Object item);  // false when present; ValueError for an unhashable item
  bool contains(const Object& item) const noexcept;
  bool erase(const Object& item);
  std::size_t size() const noexcept;
  bool empty() const noexcept;
  const std::vector<Object>& items() const noexcept { return items_; }
  std::vector<Object>::const_iterator begin() const noexcept;
  std::vector<Object>::const_iterator end() const noexcept;
  bool operator==(const Set& other) const;  // same items, order ignored

 private:
  Dict index_;  // item -> None
  std::vector<Object> items_;
};

// slice(start, stop, step): each part any Object, usually an int or None.
class Slice {
 public:
  Slice();
  Slice(Object start, Object stop, Object step);
  const Object& start() const noexcept;
  const Object& stop() const noexcept;
  const Object& step() const noexcept;
  bool operator==(const Slice& other) const;

 private:
  std::vector<Object> parts_;  // always 3
};

// An exception instance: its type and args (Python: type(*args)).
struct Exception {
  ExceptionType type;
  std::vector<Object> args;
  bool operator==(const Exception& other) const;
};

namespace detail {
// A heap-held value with value semantics: keeps Object small (a dict or set would triple it).
template <class T>
class Box {
 public:
  Box(T v) : p_(new T(std::move(v))) {}
  Box(const Box& o) : p_(new T(*o.p_)) {}
  Box(Box&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  Box& operator=(const Box& o) {
    if (this != &o) *this = Box(o);
    return *this;
  }
  Box& operator=(Box&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~Box() { delete p_; }
  T& operator*() const noexcept { return *p_; }
  bool operator==(const Box& o) const { return *p_ == *o.p_; }

 private:
  T* p_;
};
}  // namespace detail

struct Bytearray {
  Bytes data;
  bool operator==(const Bytearray&) const = default;
};

using List = std::vector<Object>;

class Object {
 public:
  Object() noexcept = default;  // None
  Object(const Object&) = default;
  Object& operator=(const Object&) = default;
  // A moved-from Object is valid: None, or an empty value of its kind.
  Object(Object&& o) noexcept : kind_(o.kind_), v_(std::move(o.v_)) { o.after_move(); }
  Object& operator=(Object&& o) noexcept {
    if (this != &o) {
      kind_ = o.kind_;
      v_ = std::move(o.v_);
      o.after_move();
    }
    return *this;
  }
  Object(None) noexcept {}
  Object(std::nullptr_t) noexcept {}
  Object(bool v) noexcept : kind_(Kind::boolean), v_(v) {}
  // An unsigned 64-bit value above INT64_MAX throws ValueError (a Python int here is int64).
  template <class T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char>) Object(T v)
  noexcept(std::is_signed_v<T> || sizeof(T) < 8) : kind_(Kind::integer), v_(static_cast<std::int64_t>(v)) {
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= 8) {
      if (v > static_cast<T>(INT64_MAX)) throw ValueError("py::Object: an unsigned value beyond int64");
    }
  }
  Object(double v) noexcept : kind_(Kind::floating), v_(v) {}
  Object(float v) noexcept : Object(static_cast<double>(v)) {}
  Object(std::string v) noexcept : kind_(Kind::str), v_(std::move(v)) {}
  Object(std::string_view v) : Object(std::string(v)) {}
  Object(const char* v) : Object(std::string(v)) {}
  Object(Bytes v) noexcept : kind_(Kind::bytes), v_(std::move(v)) {}
  Object(Bytearray v) noexcept : kind_(Kind::bytearray), v_(std::move(v.data)) {}
  Object(List v) noexcept : kind_(Kind::list), v_(std::move(v)) {}
  Object(Dict v) noexcept : kind_(Kind::dict), v_(std::move(v)) {}
  Object(Set v) noexcept : kind_(Kind::set), v_(std::move(v)) {}
  Object(Slice v) noexcept : kind_(Kind::slice), v_(std::move(v)) {}
  Object(Exception v) noexcept : kind_(Kind::exception), v_(std::move(v)) {}

  static Object tuple(List items) {
    Object o(std::move(items));
    o.kind_ = Kind::tuple;
    return o;
  }
  static Object frozenset(Set items) {
    Object o(std::move(items));
    o.kind_ = Kind::frozenset;
    return o;
  }
  static Object bytes(std::string_view raw);  // bytes from the chars of `raw`

  Kind kind() const noexcept { return kind_; }
  const char* type_name() const noexcept { return kind_name(kind_); }
  bool is_none() const noexcept { return kind_ == Kind::none; }

  // The value as its C++ representation, TypeMismatch when the kind does not hold one:
  //   None: None; bool: bool; int: std::int64_t; float: double; str: std::string;
  //   bytes and bytearray: Bytes; list and tuple: List; dict: Dict; set and frozenset: Set;
  //   slice: Slice; exception: Exception. get<T>() is exact: an int is not a double here
  //   (from_object<double> converts).
  template <class T>
  const T& get() const;
  template <class T>
  T& get();
  template <class T>
  const T* get_if() const noexcept;
  template <class T>
  T* get_if() noexcept;

  // Calls f with the value as above (None for None, a const Bytes& for bytes/bytearray ...);
  // kind() distinguishes the pairs that share a representation.
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(
        [&](const auto& v) -> decltype(auto) {
          using V = std::remove_cvref_t<decltype(v)>;
          if constexpr (std::is_same_v<V, detail::Box<Dict>> || std::is_same_v<V, detail::Box<Set>> ||
                        std::is_same_v<V, detail::Box<Slice>> || std::is_same_v<V, detail::Box<Exception>>)
            return std::forward<F>(f)(std::as_const(*v));
          else
            return std::forward<F>(f)(v);
        },
        v_);
  }

  bool operator==(const Object& other) const;  // Python's ==
  std::size_t hash() const;                    // consistent with ==; ValueError if unhashable
  bool hashable() const noexcept;              // not list, dict, set, bytearray (or containing one)

 private:
  using Storage = std::variant<None, bool, std::int64_t, double, std::string, Bytes, List, detail::Box<Dict>,
                               detail::Box<Set>, detail::Box<Slice>, detail::Box<Exception>>;
  template <class T>
  static constexpr bool boxed = std::is_same_v<T, Dict> || std::is_same_v<T, Set> ||
                                std::is_same_v<T, Slice> || std::is_same_v<T, Exception>;
  [[noreturn]] void mismatch(const char* wanted) const;
  void after_move() noexcept {  // a moved-from string or vector is empty; a moved-from Box is not a value
    if (v_.index() >= 7) {
      kind_ = Kind::none;
      v_.template emplace<None>();
    }
  }
  Kind kind_ = Kind::none;
  Storage v_;
};

struct Hash {
  std::size_t operator()(const Object& o) const { return o.hash(); }
};

// Python-style text of a value (as ascii() writes it: non-ASCII escaped; set and dict in this
// Object's order), for messages and logs.
std::string repr(const Object& o);

// ---------------------------------------------------------------------------------------
// The codec.

struct LoadLimits {
  std::size_t max_depth = 1000;  // containers within containers (Python's own recursion limit)
  // Objects once shared references are expanded; 0: 4 * input length + 2^20.
  std::size_t max_objects = 0;
};

Bytes dumps(const Object& o, int protocol = 4);  // protocol 2..5, else ValueError
void dumps_append(Bytes& out, const Object& o, int protocol = 4);
Object loads(std::span<const std::byte> data, const LoadLimits& limits = {});
inline Object loads(const Bytes& data, const LoadLimits& limits = {}) {
  return loads(std::span<const std::byte>(data), limits);
}

// A pickle of the exception Python's server would raise: Python's type(*args), e.g.
// dumps_exception(ExceptionType::KeyError, {"k"}) unpickles as KeyError('k').
inline Bytes dumps_exception(ExceptionType type, List args = {}, int protocol = 4) {
  return dumps(Exception{type, std::move(args)}, protocol);
}

// Does `data` start as a pickle of protocol 2..5 would ("\x80" and the protocol byte) and end
// with STOP ('.')? A cheap test, not a parse.
bool looks_like_pickle(std::span<const std::byte> data) noexcept;

// ---------------------------------------------------------------------------------------
// The standard mapping between C++ types and Objects:
//   std::string/string_view <-> str       integral (not bool) <-> int (range-checked)
//   bool <-> bool                         floating <-> float (an int converts to floating too)
//   Bytes (std::vector<std::byte>) <-> bytes (bytearray also converts to Bytes)
//   std::vector<T>, std::list<T> <-> list (a tuple also converts)
//   std::tuple, std::pair <-> tuple (a list of the right length also converts)
//   std::map, std::unordered_map <-> dict  std::set, std::unordered_set <-> set (frozenset too)
//   std::optional<T> <-> None or T        std::monostate <-> None      py::Object <-> itself
// Anything else, or a value of another kind, throws TypeMismatch saying what was expected.

namespace detail {
[[noreturn]] void type_mismatch(const char* wanted, const Object& got);
[[noreturn]] void int_range(std::int64_t v, const char* type);
template <class T>
constexpr const char* repr_name() {
  if constexpr (std::is_same_v<T, None>)
    return "None";
  else if constexpr (std::is_same_v<T, bool>)
    return "bool";
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return "int (std::int64_t)";
  else if constexpr (std::is_same_v<T, double>)
    return "float (double)";
  else if constexpr (std::is_same_v<T, std::string>)
    return "str (std::string)";
  else if constexpr (std::is_same_v<T, Bytes>)
    return "bytes (Bytes)";
  else if constexpr (std::is_same_v<T, List>)
    return "list or tuple (List)";
  else if constexpr (std::is_same_v<T, Dict>)
    return "dict (Dict)";
  else if constexpr (std::is_same_v<T, Set>)
    return "set (Set)";
  else if constexpr (std::is_same_v<T, Slice>)
    return "slice (Slice)";
  else if constexpr (std::is_same_v<T, Exception>)
    return "exception (Exception)";
  else
    return "a type Object does not hold";
}
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
template <class T>
struct is_tuple_like : std::false_type {};
template <class... A>
struct is_tuple_like<std::tuple<A...>> : std::true_type {};
template <class A, class B>
struct is_tuple_like<std::pair<A, B>> : std::true_type {};
template <class T>
struct is_seq : std::false_type {};
template <class T, class A>
struct is_seq<std::vector<T, A>> : std::bool_constant<!std::is_same_v<T, std::byte>> {};
template <class T, class A>
struct is_seq<std::list<T, A>> : std::true_type {};
template <class T>
struct is_map : std::false_type {};
template <class K, class V, class C, class A>
struct is_map<std::map<K, V, C, A>> : std::true_type {};
template <class K, class V, class H, class E, class A>
struct is_map<std::unordered_map<K, V, H, E, A>> : std::true_type {};
template <class T>
struct is_set : std::false_type {};
template <class K, class C, class A>
struct is_set<std::set<K, C, A>> : std::true_type {};
template <class K, class H, class E, class A>
struct is_set<std::unordered_set<K, H, E, A>> : std::true_type {};
template <class T>
inline constexpr bool dependent_false = false;
}  // namespace detail

template <class T>
Object to_object(const T& v);
template <class T>
T from_object(const Object& o);

template <class T>
Object to_object(const T& v) {
  using U = std::remove_cvref_t<T>;
  if constexpr (std::is_same_v<U, Object>) {
    return v;
  } else if constexpr (std::is_same_v<U, bool>) {
    return Object(v);
  } else if constexpr (std::is_integral_v<U>) {
    return Object(v);
  } else if constexpr (std::is_floating_point_v<U>) {
    return Object(static_cast<double>(v));
  } else if constexpr (std::is_same_v<U, std::string> || std::is_same_v<U, std::string_view>) {
    return Object(std::string(v));
  } else if constexpr (std::is_same_v<U, Bytes>) {
    return Object(v);
  } else if constexpr (std::is_same_v<U, std::monostate> || std::is_same_v<U, None>) {
    return Object();
  } else if constexpr (detail::is_optional<U>::value) {
    return v ? to_object(*v) : Object();
  } else if constexpr (detail::is_seq<U>::value) {
    List l;
    l.reserve(v.size());
    for (const auto& x : v) l.push_back(to_object(x));
    return Object(std::move(l));
  } else if constexpr (detail::is_tuple_like<U>::value) {
    List l;
    std::apply([&](const auto&... xs) { (l.push_back(to_object(xs)), ...); }, v);
    return Object::tuple(std::move(l));
  } else if constexpr (detail::is_map<U>::value) {
    Dict d;
    d.reserve(v.size());
    for (const auto& [k, x] : v) d.set(to_object(k), to_object(x));
    return Object(std::move(d));
  } else if constexpr (detail::is_set<U>::value) {
    Set s;
    for (const auto& x : v) s.add(to_object(x));
    return Object(std::move(s));
  } else {
    static_assert(detail::dependent_false<U>,
                  "py::to_object: no Python mapping for this type (see pickle.hpp)");
  }
}

template <class T>
T from_object(const Object& o) {
  using U = T;
  if constexpr (std::is_same_v<U, Object>) {
    return o;
  } else if constexpr (std::is_same_v<U, bool>) {
    if (o.kind() != Kind::boolean) detail::type_mismatch("bool", o);
    return o.get<bool>();
  } else if constexpr (std::is_integral_v<U>) {
    if (o.kind() != Kind::integer) detail::type_mismatch("int", o);
    std::int64_t v = o.get<std::int64_t>();
    if constexpr (std::is_signed_v<U>) {
      if (v < static_cast<std::int64_t>(std::numeric_limits<U>::min()) ||
          v > static_cast<std::int64_t>(std::numeric_limits<U>::max()))
        detail::int_range(v, "the C++ integer type");
    } else {
      if (v < 0 || static_cast<std::uint64_t>(v) > static_cast<std::uint64_t>(std::numeric_limits<U>::max()))
        detail::int_range(v, "the C++ unsigned type");
    }
    return static_cast<U>(v);
  } else if constexpr (std::is_floating_point_v<U>) {
    if (o.kind() == Kind::floating) return static_cast<U>(o.get<double>());
    if (o.kind() == Kind::integer) return static_cast<U>(o.get<std::int64_t>());
    detail::type_mismatch("float", o);
  } else if constexpr (std::is_same_v<U, std::string>) {
    if (o.kind() != Kind::str) detail::type_mismatch("str", o);
    return o.get<std::string>();
  } else if constexpr (std::is_same_v<U, Bytes>) {
    if (o.kind() != Kind::bytes && o.kind() != Kind::bytearray) detail::type_mismatch("bytes", o);
    return o.get<Bytes>();
  } else if constexpr (std::is_same_v<U, std::monostate> || std::is_same_v<U, None>) {
    if (!o.is_none()) detail::type_mismatch("None", o);
    return U{};
  } else if constexpr (detail::is_optional<U>::value) {
    if (o.is_none()) return U{};
    return U(from_object<typename U::value_type>(o));
  } else if constexpr (detail::is_seq<U>::value) {
    if (o.kind() != Kind::list && o.kind() != Kind::tuple) detail::type_mismatch("list", o);
    U out;
    for (const auto& x : o.get<List>()) out.push_back(from_object<typename U::value_type>(x));
    return out;
  } else if constexpr (detail::is_tuple_like<U>::value) {
    if (o.kind() != Kind::tuple && o.kind() != Kind::list) detail::type_mismatch("tuple", o);
    const List& l = o.get<List>();
    constexpr std::size_t n = std::tuple_size_v<U>;
    if (l.size() != n) detail::type_mismatch(n == 2 ? "tuple of 2 items" : "tuple of another length", o);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return U(from_object<std::tuple_element_t<I, U>>(l[I])...);
    }
    (std::make_index_sequence<n>{});
  } else if constexpr (detail::is_map<U>::value) {
    if (o.kind() != Kind::dict) detail::type_mismatch("dict", o);
    const Dict& d = o.get<Dict>();
    U out;
    for (std::size_t i = 0; i < d.size(); ++i)
      out.emplace(from_object<typename U::key_type>(d.keys()[i]),
                  from_object<typename U::mapped_type>(d.values()[i]));
    return out;
  } else if constexpr (detail::is_set<U>::value) {
    if (o.kind() != Kind::set && o.kind() != Kind::frozenset) detail::type_mismatch("set", o);
    U out;
    for (const auto& x : o.get<Set>()) out.insert(from_object<typename U::key_type>(x));
    return out;
  } else {
    static_assert(detail::dependent_false<U>,
                  "py::from_object: no Python mapping for this type (see pickle.hpp)");
  }
}

// ---------------------------------------------------------------------------------------
// Implementation of the inline members that need Object complete, and of Object's templates.

inline std::size_t Dict::size() const noexcept { return keys_.size(); }
inline bool Dict::empty() const noexcept { return keys_.empty(); }
inline std::size_t Set::size() const noexcept { return items_.size(); }
inline bool Set::empty() const noexcept { return items_.empty(); }
inline std::vector<Object>::const_iterator Set::begin() const noexcept { return items_.begin(); }
inline std::vector<Object>::const_iterator Set::end() const noexcept { return items_.end(); }

template <class T>
const T* Object::get_if() const noexcept {
  return const_cast<Object*>(this)->get_if<T>();
}
template <class T>
T* Object::get_if() noexcept {
  if constexpr (boxed<T>) {
    auto* b = std::get_if<detail::Box<T>>(&v_);
    return b ? &**b : nullptr;
  } else {
    return std::get_if<T>(&v_);
  }
}
template <class T>
const T& Object::get() const {
  if (auto* p = get_if<T>()) return *p;
  mismatch(detail::repr_name<T>());
}
template <class T>
T& Object::get() {
  if (auto* p = get_if<T>()) return *p;
  mismatch(detail::repr_name<T>());
}

}  // namespace py
}  // namespace mpx
