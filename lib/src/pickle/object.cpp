// pickle/ — Python objects on the wire (<mpx/pickle.hpp>): the Object model here (equality and
// hashing as Python has them, the ordered dict and set, repr), the codec in codec.cpp.
// Includes only <mpx/pickle.hpp>, <mpx/errors.hpp> and mpx::proto's byte codec.
#include <mpx/pickle.hpp>

#include "dict_access.hpp"

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>

namespace mpx::py {

const char* kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::none:
      return "NoneType";
    case Kind::boolean:
      return "bool";
    case Kind::integer:
      return "int";
    case Kind::floating:
      return "float";
    case Kind::str:
      return "str";
    case Kind::bytes:
      return "bytes";
    case Kind::bytearray:
      return "bytearray";
    case Kind::list:
      return "list";
    case Kind::tuple:
      return "tuple";
    case Kind::dict:
      return "dict";
    case Kind::set:
      return "set";
    case Kind::frozenset:
      return "frozenset";
    case Kind::slice:
      return "slice";
    case Kind::exception:
      return "exception";
  }
  return "?";
}

const char* exception_name(ExceptionType t) noexcept {
  switch (t) {
    case ExceptionType::KeyError:
      return "KeyError";
    case ExceptionType::IndexError:
      return "IndexError";
    case ExceptionType::ValueError:
      return "ValueError";
    case ExceptionType::TypeError:
      return "TypeError";
    case ExceptionType::AttributeError:
      return "AttributeError";
    case ExceptionType::RuntimeError:
      return "RuntimeError";
    case ExceptionType::Empty:
      return "queue.Empty";
    case ExceptionType::Full:
      return "queue.Full";
    case ExceptionType::BrokenBarrierError:
      return "threading.BrokenBarrierError";
    case ExceptionType::StopIteration:
      return "StopIteration";
  }
  return "?";
}

namespace detail {
void type_mismatch(const char* wanted, const Object& got) {
  throw TypeMismatch(std::string("py::from_object: expected ") + wanted + ", got " + got.type_name());
}
void int_range(std::int64_t v, const char* type) {
  throw ValueError("py::from_object: int " + std::to_string(v) + " does not fit " + type);
}
}  // namespace detail

void Object::mismatch(const char* wanted) const {
  throw TypeMismatch(std::string("py::Object::get: holds ") + type_name() + ", not " + wanted);
}

Object Object::bytes(std::string_view raw) {
  auto* p = reinterpret_cast<const std::byte*>(raw.data());
  return Object(Bytes(p, p + raw.size()));
}

namespace {

bool is_number(Kind k) { return k == Kind::boolean || k == Kind::integer || k == Kind::floating; }

// Python compares int and float exactly (2**53 + 1 != float(2**53)).
bool number_equal(const Object& a, const Object& b) {
  auto as_int = [](const Object& o) -> std::int64_t {
    return o.kind() == Kind::boolean ? (o.get<bool>() ? 1 : 0) : o.get<std::int64_t>();
  };
  if (a.kind() == Kind::floating && b.kind() == Kind::floating) return a.get<double>() == b.get<double>();
  if (a.kind() != Kind::floating && b.kind() != Kind::floating) return as_int(a) == as_int(b);
  double d = a.kind() == Kind::floating ? a.get<double>() : b.get<double>();
  std::int64_t i = a.kind() == Kind::floating ? as_int(b) : as_int(a);
  if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) || std::trunc(d) != d) return false;
  return static_cast<std::int64_t>(d) == i;
}

using detail::hash_mix;

std::size_t bytes_hash(const void* p, std::size_t n) {
  return std::hash<std::string_view>{}(std::string_view(static_cast<const char*>(p), n));
}

}  // namespace

bool Object::operator==(const Object& other) const {
  Kind a = kind_, b = other.kind_;
  if (is_number(a) && is_number(b)) return number_equal(*this, other);
  auto family = [](Kind k) {
    switch (k) {
      case Kind::bytearray:
        return Kind::bytes;
      case Kind::frozenset:
        return Kind::set;
      default:
        return k;
    }
  };
  if (family(a) != family(b)) return false;
  return v_ == other.v_;
}

bool Object::hashable() const noexcept {
  switch (kind_) {
    case Kind::list:
    case Kind::dict:
    case Kind::set:
    case Kind::bytearray:
      return false;
    case Kind::tuple:
      for (const auto& x : get<List>())
        if (!x.hashable()) return false;
      return true;
    case Kind::slice:
      return false;  // unhashable before Python 3.12; kept so for all peers
    case Kind::exception:
      return false;
    default:
      return true;
  }
}

std::size_t Object::hash() const {
  switch (kind_) {
    case Kind::none:
      return 0x5bd1e995;
    case Kind::boolean:
      return std::hash<std::int64_t>{}(std::get<bool>(v_) ? 1 : 0);
    case Kind::integer:
      return std::hash<std::int64_t>{}(std::get<std::int64_t>(v_));
    case Kind::floating: {
      double d = std::get<double>(v_);
      if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && std::trunc(d) == d)
        return std::hash<std::int64_t>{}(static_cast<std::int64_t>(d));
      if (d == 0) return std::hash<std::int64_t>{}(0);
      return std::hash<double>{}(d);
    }
    case Kind::str:
      return detail::str_object_hash(std::get<std::string>(v_).data(), std::get<std::string>(v_).size());
    case Kind::bytes: {
      const Bytes& b = std::get<Bytes>(v_);
      return hash_mix(2, bytes_hash(b.data(), b.size()));
    }
    case Kind::tuple: {
      std::size_t h = 3;
      for (const auto& x : get<List>()) h = hash_mix(h, x.hash());
      return h;
    }
    case Kind::frozenset: {
      std::size_t h = 4;  // order-independent
      for (const auto& x : get<Set>().items()) h += x.hash() * 0x100000001b3ULL;
      return h;
    }
    default:
      throw ValueError(std::string("unhashable type: '") + type_name() + "'");
  }
}

// ---- Dict

Dict::Dict(std::initializer_list<std::pair<Object, Object>> items) {
  reserve(items.size());
  for (const auto& [k, v] : items) set(k, v);
}

void Dict::reserve(std::size_t n) {
  keys_.reserve(n);
  values_.reserve(n);
  hashes_.reserve(n);
  if (n * 2 > table_.size()) rehash(std::bit_ceil(n * 2 + 8));
}

void Dict::rehash(std::size_t buckets) {
  table_.assign(buckets, 0);
  std::size_t mask = buckets - 1;
  for (std::size_t i = 0; i < hashes_.size(); ++i) {
    std::size_t j = hashes_[i] & mask;
    while (table_[j]) j = (j + 1) & mask;
    table_[j] = static_cast<std::uint32_t>(i + 1);
  }
}

std::ptrdiff_t Dict::index_of(const Object& key, std::size_t hash) const noexcept {
  if (table_.empty()) return -1;
  std::size_t mask = table_.size() - 1;
  for (std::size_t j = hash & mask;; j = (j + 1) & mask) {
    std::uint32_t slot = table_[j];
    if (!slot) return -1;
    if (hashes_[slot - 1] == hash && keys_[slot - 1] == key) return slot - 1;
  }
}

void Dict::set(const Object& key, const Object& value) { set(Object(key), Object(value)); }

void Dict::set(Object&& key, Object&& value) {
  if (!key.hashable())
    throw ValueError(std::string("unhashable type: '") + key.type_name() + "' as a dict key");
  std::size_t h = key.hash();
  std::ptrdiff_t i = index_of(key, h);
  if (i >= 0) {
    values_[static_cast<std::size_t>(i)] = std::move(value);
    return;
  }
  if (keys_.size() >= UINT32_MAX - 1) throw ValueError("py::Dict: too many items");
  if ((keys_.size() + 1) * 2 > table_.size()) rehash(std::max<std::size_t>(16, table_.size() * 2));
  keys_.push_back(std::move(key));
  values_.push_back(std::move(value));
  hashes_.push_back(h);
  std::size_t mask = table_.size() - 1, j = h & mask;
  while (table_[j]) j = (j + 1) & mask;
  table_[j] = static_cast<std::uint32_t>(keys_.size());
}

const Object* Dict::find(const Object& key) const noexcept {
  if (!key.hashable()) return nullptr;
  std::ptrdiff_t i = index_of(key, key.hash());
  return i < 0 ? nullptr : &values_[static_cast<std::size_t>(i)];
}

Object* Dict::find(const Object& key) noexcept {
  return const_cast<Object*>(static_cast<const Dict*>(this)->find(key));
}

const Object& Dict::at(const Object& key) const {
  if (auto* v = find(key)) return *v;
  throw KeyError("py::Dict: no key " + repr(key));
}

bool Dict::erase(const Object& key) {
  if (!key.hashable()) return false;
  std::ptrdiff_t i = index_of(key, key.hash());
  if (i < 0) return false;
  keys_.erase(keys_.begin() + i);
  values_.erase(values_.begin() + i);
  hashes_.erase(hashes_.begin() + i);
  rehash(table_.size());
  return true;
}

bool Dict::operator==(const Dict& other) const {
  if (size() != other.size()) return false;
  for (std::size_t i = 0; i < keys_.size(); ++i) {
    const Object* v = other.find(keys_[i]);
    if (!v || !(*v == values_[i])) return false;
  }
  return true;
}

// ---- Set

Set::Set(std::initializer_list<Object> items) {
  for (const auto& x : items) add(x);
}

bool Set::add(Object item) {
  if (!item.hashable()) throw ValueError(std::string("unhashable type: '") + item.type_name() + "' in a set");
  if (index_.find(item)) return false;
  index_.set(item, Object());
  items_.push_back(std::move(item));
  return true;
}

bool Set::contains(const Object& item) const noexcept { return index_.find(item) != nullptr; }

bool Set::erase(const Object& item) {
  if (!index_.erase(item)) return false;
  for (auto it = items_.begin(); it != items_.end(); ++it)
    if (*it == item) {
      items_.erase(it);
      break;
    }
  return true;
}

bool Set::operator==(const Set& other) const {
  if (size() != other.size()) return false;
  for (const auto& x : items_)
    if (!other.contains(x)) return false;
  return true;
}

// ---- Slice, Exception

Slice::Slice() : parts_(3) {}
Slice::Slice(Object start, Object stop, Object step) {
  parts_.reserve(3);
  parts_.push_back(std::move(start));
  parts_.push_back(std::move(stop));
  parts_.push_back(std::move(step));
}
const Object& Slice::start() const noexcept { return parts_[0]; }
const Object& Slice::stop() const noexcept { return parts_[1]; }
const Object& Slice::step() const noexcept { return parts_[2]; }
bool Slice::operator==(const Slice& other) const { return parts_ == other.parts_; }

bool Exception::operator==(const Exception& other) const { return type == other.type && args == other.args; }

// ---- repr

namespace {

// One character (a byte, or a code point of a str) as Python's repr writes it between '...'.
void repr_char(std::string& out, std::uint32_t c) {
  if (c == '\\' || c == '\'') {
    out += '\\';
    out += static_cast<char>(c);
  } else if (c == '\n') {
    out += "\\n";
  } else if (c == '\r') {
    out += "\\r";
  } else if (c == '\t') {
    out += "\\t";
  } else if (c >= 0x20 && c < 0x7f) {
    out += static_cast<char>(c);
  } else {
    char buf[12];
    if (c < 0x100)
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
    else if (c < 0x10000)
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
    else
      std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
    out += buf;
  }
}

void repr_bytes(std::string& out, const unsigned char* p, std::size_t n) {
  out += '\'';
  for (std::size_t i = 0; i < n; ++i) repr_char(out, p[i]);
  out += '\'';
}

// UTF-8 (surrogates allowed) to code points, escaped as ascii() does.
void repr_str(std::string& out, const std::string& s) {
  out += '\'';
  auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    std::uint32_t c = p[i];
    std::size_t len = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (i + len > n) len = 1;
    if (len == 2) c = ((c & 0x1f) << 6) | (p[i + 1] & 0x3f);
    if (len == 3) c = ((c & 0x0f) << 12) | ((p[i + 1] & 0x3fu) << 6) | (p[i + 2] & 0x3f);
    if (len == 4)
      c = ((c & 0x07) << 18) | ((p[i + 1] & 0x3fu) << 12) | ((p[i + 2] & 0x3fu) << 6) | (p[i + 3] & 0x3f);
    i += len;
    repr_char(out, c);
  }
  out += '\'';
}

void repr_into(std::string& out, const Object& o, int depth) {
  if (depth > 1000) {
    out += "...";
    return;
  }
  auto seq = [&](const List& l, const char* open, const char* close, bool one_comma) {
    out += open;
    for (std::size_t i = 0; i < l.size(); ++i) {
      if (i) out += ", ";
      repr_into(out, l[i], depth + 1);
    }
    if (one_comma && l.size() == 1) out += ',';
    out += close;
  };
  switch (o.kind()) {
    case Kind::none:
      out += "None";
      break;
    case Kind::boolean:
      out += o.get<bool>() ? "True" : "False";
      break;
    case Kind::integer:
      out += std::to_string(o.get<std::int64_t>());
      break;
    case Kind::floating: {
      double d = o.get<double>();
      char buf[32];
      if (std::isnan(d))
        out += "nan";
      else if (std::isinf(d))
        out += d > 0 ? "inf" : "-inf";
      else {
        std::snprintf(buf, sizeof buf, "%.17g", d);
        out += buf;
      }
      break;
    }
    case Kind::str:
      repr_str(out, o.get<std::string>());
      break;
    case Kind::bytes:
    case Kind::bytearray: {
      const Bytes& b = o.get<Bytes>();
      out += o.kind() == Kind::bytes ? "b" : "bytearray(b";
      repr_bytes(out, reinterpret_cast<const unsigned char*>(b.data()), b.size());
      if (o.kind() == Kind::bytearray) out += ')';
      break;
    }
    case Kind::list:
      seq(o.get<List>(), "[", "]", false);
      break;
    case Kind::tuple:
      seq(o.get<List>(), "(", ")", true);
      break;
    case Kind::dict: {
      const Dict& d = o.get<Dict>();
      out += '{';
      for (std::size_t i = 0; i < d.size(); ++i) {
        if (i) out += ", ";
        repr_into(out, d.keys()[i], depth + 1);
        out += ": ";
        repr_into(out, d.values()[i], depth + 1);
      }
      out += '}';
      break;
    }
    case Kind::set:
    case Kind::frozenset: {
      const Set& s = o.get<Set>();
      if (s.empty()) {
        out += o.kind() == Kind::set ? "set()" : "frozenset()";
        break;
      }
      if (o.kind() == Kind::frozenset) out += "frozenset(";
      seq(s.items(), "{", "}", false);
      if (o.kind() == Kind::frozenset) out += ')';
      break;
    }
    case Kind::slice: {
      const Slice& s = o.get<Slice>();
      out += "slice(";
      repr_into(out, s.start(), depth + 1);
      out += ", ";
      repr_into(out, s.stop(), depth + 1);
      out += ", ";
      repr_into(out, s.step(), depth + 1);
      out += ')';
      break;
    }
    case Kind::exception: {
      const Exception& e = o.get<Exception>();
      const char* name = exception_name(e.type);
      if (const char* dot = std::strrchr(name, '.')) name = dot + 1;
      out += name;
      seq(e.args, "(", ")", false);
      break;
    }
  }
}

}  // namespace

std::string repr(const Object& o) {
  std::string out;
  repr_into(out, o, 0);
  return out;
}

}  // namespace mpx::py
