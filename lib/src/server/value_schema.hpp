// The C++ value types Python clients share with C++ clients: a type tag that spells one
// (proto/manager.md, "Type tags"), parsed into the conversion between the value's mpx
// encoding and a Python object. So a named queue of std::map<std::string, double> made by a
// C++ client holds C++ encodings, and a Python client of the same queue gets and puts dicts.
//
//   tag        C++                                  Python
//   bool       bool                                 bool
//   i8..i64, u8..u64  integers                      int (range-checked both ways)
//   f32, f64   float, double                        float (an int is accepted)
//   str        std::string                          str
//   list[T]    std::vector<T>, std::list<T>         list (a tuple is accepted)
//   set[T]     std::set<T>, std::unordered_set<T>   set (a frozenset is accepted)
//   dict[K,V]  std::map<K,V>, std::unordered_map    dict
//   tuple[A,..] std::pair, std::tuple               tuple (a list of that length is accepted)
//   optional[T] std::optional<T>                    None or the value
#pragma once

#include <mpx/pickle.hpp>

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>

namespace mpx::detail::server {

class ValueSchema {
 public:
  // The schema a tag spells, or nullptr when the tag names a type Python cannot share
  // (a class of the program's own, a demangled name).
  static std::shared_ptr<const ValueSchema> parse(std::string_view tag);

  // ProtocolError when the bytes are not an encoding of the type; ValueError for an unsigned
  // value beyond Python's int64 here.
  py::Object decode(std::span<const std::byte> encoded) const;
  // TypeMismatch when the object does not fit the type (its kind, or an int out of range).
  Bytes encode(const py::Object& value) const;

  struct Node;
  explicit ValueSchema(std::shared_ptr<const Node> root) : root_(std::move(root)) {}

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace mpx::detail::server
