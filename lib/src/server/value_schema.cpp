// Type tags that Python can share, and the conversion between their mpx (cereal binary)
// encoding and Python objects. The encodings are the ones mpx::encode writes: scalars little
// endian at their size, a string or a container as a u64 count then its items, a pair or
// tuple as its items in order, an optional as a u8 "empty" flag then the value if any.
#include "server/value_schema.hpp"

#include <mpx/errors.hpp>
#include <mpx/proto/codec.hpp>

#include <fmt/format.h>

#include <cstring>
#include <limits>
#include <vector>

namespace mpx::detail::server {

struct ValueSchema::Node {
  enum Kind { boolean, integer, floating, str, list, set, dict, tuple, optional } kind;
  int bits = 0;
  bool is_signed = false;
  std::vector<std::shared_ptr<const Node>> items;
  std::string tag;  // for messages
};

namespace {

using Node = ValueSchema::Node;
using NodePtr = std::shared_ptr<const Node>;

constexpr int kMaxDepth = 32;

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}
  NodePtr whole() {
    NodePtr n = node(0);
    return n && pos_ == s_.size() ? n : nullptr;
  }

 private:
  NodePtr node(int depth) {
    if (depth > kMaxDepth) return nullptr;
    std::size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] != '[' && s_[pos_] != ',' && s_[pos_] != ']') ++pos_;
    std::string_view name = s_.substr(start, pos_ - start);
    auto n = std::make_shared<Node>();
    if (pos_ < s_.size() && s_[pos_] == '[') {
      ++pos_;
      if (name == "list")
        n->kind = Node::list;
      else if (name == "set")
        n->kind = Node::set;
      else if (name == "dict")
        n->kind = Node::dict;
      else if (name == "tuple")
        n->kind = Node::tuple;
      else if (name == "optional")
        n->kind = Node::optional;
      else
        return nullptr;
      for (;;) {
        NodePtr item = node(depth + 1);
        if (!item) return nullptr;
        n->items.push_back(std::move(item));
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_.size() && s_[pos_] == ']') {
          ++pos_;
          break;
        }
        return nullptr;
      }
      std::size_t want = n->kind == Node::dict ? 2 : n->kind == Node::tuple ? n->items.size() : 1;
      if (n->items.size() != want || n->items.empty()) return nullptr;
    } else if (name == "bool") {
      n->kind = Node::boolean;
    } else if (name == "str") {
      n->kind = Node::str;
    } else if (name == "f32" || name == "f64") {
      n->kind = Node::floating;
      n->bits = name == "f32" ? 32 : 64;
    } else if (name.size() >= 2 && (name[0] == 'i' || name[0] == 'u') &&
               (name.substr(1) == "8" || name.substr(1) == "16" || name.substr(1) == "32" ||
                name.substr(1) == "64")) {
      n->kind = Node::integer;
      n->is_signed = name[0] == 'i';
      n->bits = std::stoi(std::string(name.substr(1)));
    } else {
      return nullptr;
    }
    n->tag = std::string(s_.substr(start, pos_ - start));
    return n;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

// The fewest bytes one encoded item takes: bounds a declared count by the bytes present.
std::size_t min_size(const Node& n) {
  switch (n.kind) {
    case Node::boolean:
      return 1;
    case Node::integer:
    case Node::floating:
      return static_cast<std::size_t>(n.bits / 8);
    case Node::str:
    case Node::list:
    case Node::set:
    case Node::dict:
      return 8;
    case Node::optional:
      return 1;
    case Node::tuple: {
      std::size_t s = 0;
      for (const auto& i : n.items) s += min_size(*i);
      return s;
    }
  }
  return 1;
}

template <class T>
T scalar(proto::Reader& r) {
  T v;
  auto b = r.take(sizeof v);
  std::memcpy(&v, b.data(), sizeof v);
  return v;
}

py::Object decode_node(const Node& n, proto::Reader& r) {
  switch (n.kind) {
    case Node::boolean:
      return py::Object(r.u8() != 0);
    case Node::integer:
      switch (n.bits) {
        case 8:
          return n.is_signed ? py::Object(scalar<std::int8_t>(r)) : py::Object(scalar<std::uint8_t>(r));
        case 16:
          return n.is_signed ? py::Object(scalar<std::int16_t>(r)) : py::Object(scalar<std::uint16_t>(r));
        case 32:
          return n.is_signed ? py::Object(scalar<std::int32_t>(r)) : py::Object(scalar<std::uint32_t>(r));
        default:
          return n.is_signed ? py::Object(scalar<std::int64_t>(r)) : py::Object(scalar<std::uint64_t>(r));
      }
    case Node::floating:
      return n.bits == 32 ? py::Object(static_cast<double>(scalar<float>(r))) : py::Object(scalar<double>(r));
    case Node::str: {
      auto b = r.blob();
      return py::Object(std::string(reinterpret_cast<const char*>(b.data()), b.size()));
    }
    case Node::list:
    case Node::set: {
      std::uint64_t count = r.count(std::max<std::size_t>(1, min_size(*n.items[0])));
      py::List items;
      py::Set set;
      for (std::uint64_t i = 0; i < count; ++i) {
        if (n.kind == Node::list)
          items.push_back(decode_node(*n.items[0], r));
        else
          set.add(decode_node(*n.items[0], r));
      }
      return n.kind == Node::list ? py::Object(std::move(items)) : py::Object(std::move(set));
    }
    case Node::dict: {
      std::uint64_t count = r.count(std::max<std::size_t>(1, min_size(*n.items[0]) + min_size(*n.items[1])));
      py::Dict d;
      for (std::uint64_t i = 0; i < count; ++i) {
        py::Object k = decode_node(*n.items[0], r);
        d.set(std::move(k), decode_node(*n.items[1], r));
      }
      return d;
    }
    case Node::tuple: {
      py::List items;
      for (const auto& i : n.items) items.push_back(decode_node(*i, r));
      return py::Object::tuple(std::move(items));
    }
    case Node::optional:
      if (r.u8() != 0) return py::Object();  // cereal writes the "nullopt" flag first
      return decode_node(*n.items[0], r);
  }
  return {};
}

[[noreturn]] void mismatch(const Node& n, const py::Object& v) {
  throw TypeMismatch(
      fmt::format("mpx: the object holds C++ values of type tag '{}', which a Python {} cannot be", n.tag,
                  v.type_name()));
}

const py::List& sequence(const Node& n, const py::Object& v) {
  const auto* l = v.get_if<py::List>();
  if (!l) mismatch(n, v);
  return *l;
}

void encode_node(const Node& n, const py::Object& v, proto::Writer& w) {
  switch (n.kind) {
    case Node::boolean: {
      const auto* b = v.get_if<bool>();
      if (!b) mismatch(n, v);
      w.u8(*b ? 1 : 0);
      return;
    }
    case Node::integer: {
      const auto* i = v.get_if<std::int64_t>();
      if (!i) mismatch(n, v);
      std::int64_t x = *i;
      bool fits = n.is_signed ? (n.bits == 64 || (x >= -(std::int64_t{1} << (n.bits - 1)) &&
                                                  x < (std::int64_t{1} << (n.bits - 1))))
                              : (x >= 0 && (n.bits == 64 || x < (std::int64_t{1} << n.bits)));
      if (!fits) throw TypeMismatch(fmt::format("mpx: {} does not fit the C++ type of tag '{}'", x, n.tag));
      auto u = static_cast<std::uint64_t>(x);  // two's complement: the low bytes are the value
      w.raw(&u, static_cast<std::size_t>(n.bits / 8));
      return;
    }
    case Node::floating: {
      double d;
      if (const auto* f = v.get_if<double>())
        d = *f;
      else if (const auto* i = v.get_if<std::int64_t>())
        d = static_cast<double>(*i);
      else
        mismatch(n, v);
      if (n.bits == 32) {
        auto f = static_cast<float>(d);
        w.raw(&f, sizeof f);
      } else {
        w.raw(&d, sizeof d);
      }
      return;
    }
    case Node::str: {
      const auto* s = v.get_if<std::string>();
      if (!s) mismatch(n, v);
      w.str(*s);
      return;
    }
    case Node::list: {
      const auto& items = sequence(n, v);
      w.u64(items.size());
      for (const auto& i : items) encode_node(*n.items[0], i, w);
      return;
    }
    case Node::set: {
      const auto* s = v.get_if<py::Set>();
      if (!s) mismatch(n, v);
      w.u64(s->size());
      for (const auto& i : s->items()) encode_node(*n.items[0], i, w);
      return;
    }
    case Node::dict: {
      const auto* d = v.get_if<py::Dict>();
      if (!d) mismatch(n, v);
      w.u64(d->size());
      for (std::size_t i = 0; i < d->size(); ++i) {
        encode_node(*n.items[0], d->keys()[i], w);
        encode_node(*n.items[1], d->values()[i], w);
      }
      return;
    }
    case Node::tuple: {
      const auto& items = sequence(n, v);
      if (items.size() != n.items.size()) mismatch(n, v);
      for (std::size_t i = 0; i < items.size(); ++i) encode_node(*n.items[i], items[i], w);
      return;
    }
    case Node::optional:
      w.u8(v.is_none() ? 1 : 0);
      if (!v.is_none()) encode_node(*n.items[0], v, w);
      return;
  }
}

}  // namespace

std::shared_ptr<const ValueSchema> ValueSchema::parse(std::string_view tag) {
  NodePtr root = Parser(tag).whole();
  return root ? std::make_shared<ValueSchema>(std::move(root)) : nullptr;
}

py::Object ValueSchema::decode(std::span<const std::byte> encoded) const {
  proto::Reader r(encoded);
  py::Object v = decode_node(*root_, r);
  if (r.remaining())
    throw ProtocolError("mpx: trailing bytes after a value of type tag '" + root_->tag + "'");
  return v;
}

Bytes ValueSchema::encode(const py::Object& value) const {
  Bytes out;
  proto::Writer w(out);
  encode_node(*root_, value, w);
  return out;
}

}  // namespace mpx::detail::server
