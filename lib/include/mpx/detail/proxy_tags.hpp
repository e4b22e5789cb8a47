// Type tags: how a manager tells one C++ type from another without knowing either.
// A named object remembers the tag of the type it was made with; opening it as another type
// is a TypeMismatch. Tags are derived from the type's name, so two binaries (or a client in
// another language, see proto/manager.md) agree on them: fixed short names for the common
// scalar types and std::string, a structural name for the standard containers of those
// (list[i32], dict[str,f64], tuple[str,i64], optional[str] ...; the types a Python client
// shares, which the server converts), the demangled name for everything else.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace mpx::detail {

std::string demangle(const char* mangled);

// The structural spelling of a type Python shares, or "" when it is not one.
template <class T>
struct shared_tag {
  static std::string get() {
    if constexpr (std::is_same_v<T, bool>)
      return "bool";
    else if constexpr (std::is_same_v<T, char>)
      return "";
    else if constexpr (std::is_integral_v<T>)
      return (std::is_signed_v<T> ? "i" : "u") + std::to_string(sizeof(T) * 8);
    else if constexpr (std::is_floating_point_v<T> && sizeof(T) <= 8)
      return "f" + std::to_string(sizeof(T) * 8);
    else if constexpr (std::is_same_v<T, std::string>)
      return "str";
    else
      return "";
  }
};
template <class... Ts>
std::string shared_tags(const char* open) {
  std::string items[] = {shared_tag<Ts>::get()...};
  std::string out = open;
  for (const auto& i : items) {
    if (i.empty()) return "";
    out += (out.back() == '[' ? "" : ",") + i;
  }
  return out + "]";
}
template <class T, class A>
requires(!std::is_same_v<T, std::byte>) struct shared_tag<std::vector<T, A>> {
  static std::string get() { return shared_tags<T>("list["); }
};
template <class T, class A>
struct shared_tag<std::list<T, A>> {
  static std::string get() { return shared_tags<T>("list["); }
};
template <class T, class C, class A>
struct shared_tag<std::set<T, C, A>> {
  static std::string get() { return shared_tags<T>("set["); }
};
template <class T, class H, class E, class A>
struct shared_tag<std::unordered_set<T, H, E, A>> {
  static std::string get() { return shared_tags<T>("set["); }
};
template <class K, class V, class C, class A>
struct shared_tag<std::map<K, V, C, A>> {
  static std::string get() { return shared_tags<K, V>("dict["); }
};
template <class K, class V, class H, class E, class A>
struct shared_tag<std::unordered_map<K, V, H, E, A>> {
  static std::string get() { return shared_tags<K, V>("dict["); }
};
template <class A, class B>
struct shared_tag<std::pair<A, B>> {
  static std::string get() { return shared_tags<A, B>("tuple["); }
};
template <class... Ts>
requires(sizeof...(Ts) > 0) struct shared_tag<std::tuple<Ts...>> {
  static std::string get() { return shared_tags<Ts...>("tuple["); }
};
template <class T>
struct shared_tag<std::optional<T>> {
  static std::string get() { return shared_tags<T>("optional["); }
};

template <class T>
std::string wire_type_tag() {
  using U = std::remove_cvref_t<T>;
  if constexpr (std::is_void_v<U>) {
    return "void";
  } else if constexpr (std::is_same_v<U, bool>) {
    return "bool";
  } else if constexpr (std::is_same_v<U, char>) {
    return "char";
  } else if constexpr (std::is_integral_v<U>) {
    return (std::is_signed_v<U> ? "i" : "u") + std::to_string(sizeof(U) * 8);
  } else if constexpr (std::is_floating_point_v<U>) {
    return "f" + std::to_string(sizeof(U) * 8);
  } else if constexpr (std::is_same_v<U, std::string>) {
    return "str";
  } else {
    std::string shared = shared_tag<U>::get();
    return shared.empty() ? demangle(typeid(U).name()) : shared;
  }
}

// "A,B,C" for a parameter pack (empty for none).
template <class... Ts>
std::string wire_type_tags() {
  std::string out;
  ((out += (out.empty() ? "" : ","), out += wire_type_tag<Ts>()), ...);
  return out;
}

}  // namespace mpx::detail
