// Registered types: C++ classes a manager server constructs and whose methods clients call
// by name (Server::register_type, mpx::register_type). The server sees a type only through
// this table: constructors and methods that take and return encoded bytes, each with the
// type tags of its parameters and result, so a client that disagrees gets TypeMismatch.
#pragma once

#include <mpx/detail/proxy_tags.hpp>
#include <mpx/errors.hpp>
#include <mpx/serialize.hpp>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx::detail {

struct RegisteredType {
  struct Constructor {
    std::string args_tag;  // wire_type_tags<Args...>()
    std::function<std::shared_ptr<void>(std::span<const std::byte>)> make;
  };
  struct Method {
    std::string args_tag;
    std::string result_tag;
    std::function<Bytes(void*, std::span<const std::byte>)> invoke;
  };
  std::string name;
  std::string cpp_tag;  // wire_type_tag<T>()
  std::vector<Constructor> constructors;
  std::map<std::string, Method, std::less<>> methods;
};

// Name -> type. Registration happens before serving starts (the table is read without a
// lock by the server thread); adding a name twice replaces the earlier registration.
class TypeRegistry {
 public:
  std::shared_ptr<RegisteredType> add(std::string name, std::string cpp_tag);
  std::shared_ptr<const RegisteredType> find(std::string_view name) const;

 private:
  mutable std::mutex m_;
  std::map<std::string, std::shared_ptr<RegisteredType>, std::less<>> types_;
};

// Inside a catch block: rethrows the exception in flight as RemoteError (what user code
// threw, on the way to another process).
[[noreturn]] void rethrow_as_remote();

// The table a private Manager() server starts with (it is copied into the forked server).
std::shared_ptr<TypeRegistry> global_type_registry();

}  // namespace mpx::detail

namespace mpx {

// What register_type<T>(name) returns: add methods (and constructors beyond the default one).
// Public, so users can name the type they hold while chaining registrations.
template <class T>
class TypeRegistration {
 public:
  explicit TypeRegistration(std::shared_ptr<detail::RegisteredType> t) : t_(std::move(t)) {
    if constexpr (std::is_default_constructible_v<T>) constructor<>();
  }

  // T(Args...) from arguments a client passes to make<T>(type, name, args...).
  template <class... Args>
  TypeRegistration& constructor() {
    static_assert(std::is_constructible_v<T, Args...>, "mpx::register_type: T has no such constructor");
    (detail::require_transferable<std::decay_t<Args>>(), ...);
    t_->constructors.push_back(
        {detail::wire_type_tags<std::decay_t<Args>...>(), [](std::span<const std::byte> args) {
           auto tuple = decode<std::tuple<std::decay_t<Args>...>>(args);
           try {
             return std::apply(
                 [](auto&&... a) -> std::shared_ptr<void> { return std::make_shared<T>(std::move(a)...); },
                 std::move(tuple));
           } catch (...) {
             detail::rethrow_as_remote();
           }
         }});
    return *this;
  }

  template <class R, class... A>
  TypeRegistration& method(std::string name, R (T::*f)(A...)) {
    return add_method<R, A...>(std::move(name), f);
  }
  template <class R, class... A>
  TypeRegistration& method(std::string name, R (T::*f)(A...) const) {
    return add_method<R, A...>(std::move(name), f);
  }
  template <class R, class... A>
  TypeRegistration& method(std::string name, R (T::*f)(A...) noexcept) {
    return add_method<R, A...>(std::move(name), f);
  }
  template <class R, class... A>
  TypeRegistration& method(std::string name, R (T::*f)(A...) const noexcept) {
    return add_method<R, A...>(std::move(name), f);
  }

 private:
  template <class R, class... A, class F>
  TypeRegistration& add_method(std::string name, F f) {
    using Result = std::decay_t<R>;
    if constexpr (!std::is_void_v<Result>) detail::require_transferable<Result>();
    (detail::require_transferable<std::decay_t<A>>(), ...);
    detail::RegisteredType::Method m;
    m.args_tag = detail::wire_type_tags<std::decay_t<A>...>();
    m.result_tag = detail::wire_type_tag<Result>();
    m.invoke = [f](void* self, std::span<const std::byte> args) -> Bytes {
      auto tuple = decode<std::tuple<std::decay_t<A>...>>(args);
      auto call = [&](auto&... a) -> decltype(auto) {
        return (static_cast<T*>(self)->*f)(static_cast<A&&>(a)...);
      };
      if constexpr (std::is_void_v<Result>) {
        try {
          std::apply(call, tuple);
        } catch (...) {
          detail::rethrow_as_remote();
        }
        return {};
      } else {
        std::optional<Result> result;
        try {
          result.emplace(std::apply(call, tuple));
        } catch (...) {
          detail::rethrow_as_remote();
        }
        return encode<Result>(*result);
      }
    };
    t_->methods[std::move(name)] = std::move(m);
    return *this;
  }

  std::shared_ptr<detail::RegisteredType> t_;
};

namespace detail {
// The name this type had before it was public; kept so code that spelled it still compiles.
template <class T>
using TypeRegistration = mpx::TypeRegistration<T>;
}  // namespace detail

}  // namespace mpx
