// Type tags: how a manager tells one C++ type from another without knowing either.
// A named object remembers the tag of the type it was made with; opening it as another type
// is a TypeMismatch. Tags are derived from the type's name, so two binaries (or a client in
// another language, see proto/manager.md) agree on them: fixed short names for the common
// scalar types and std::string, the demangled name for everything else.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <typeinfo>

namespace mpx::detail {

std::string demangle(const char* mangled);

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
    return demangle(typeid(U).name());
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
