// pickle/ — what object.cpp and codec.cpp share beyond <mpx/pickle.hpp>: the hash of a str
// (Object::hash has it), and the unpickler's way of filling a Dict with str keys straight from
// the input's bytes, without an Object per key to hash, compare and move.
#pragma once

#include <mpx/pickle.hpp>

#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

namespace mpx::py::detail {

inline std::size_t hash_mix(std::size_t h, std::size_t v) {
  return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
}

// The chars of a str, hashed: short ones (dict keys, mostly) by a multiply of their bytes,
// inline, where std::hash would call out to a loop; longer ones as std::hash has them.
[[gnu::always_inline]] inline std::size_t str_chars_hash(const char* s, std::size_t n) {
  if (n > 16) return std::hash<std::string_view>{}(std::string_view(s, n));
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  std::uint64_t a = 0, b = 0;
  if (n >= 8) {
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + n - 8, 8);
  } else if (n >= 4) {
    std::uint32_t x, y;
    std::memcpy(&x, p, 4);
    std::memcpy(&y, p + n - 4, 4);
    a = x;
    b = y;
  } else if (n > 0) {
    a = p[0] | (std::uint64_t{p[n / 2]} << 8) | (std::uint64_t{p[n - 1]} << 16);
  }
  std::uint64_t h = a * 0x9e3779b97f4a7c15ULL ^ std::rotl((b + n) * 0xc2b2ae3d27d4eb4fULL, 31);
  h ^= h >> 32;
  h *= 0xd6e8feb86659fd93ULL;
  return static_cast<std::size_t>(h ^ (h >> 32));
}

// Object::hash() of a str with these chars.
[[gnu::always_inline]] inline std::size_t str_object_hash(const char* s, std::size_t n) {
  return hash_mix(1, str_chars_hash(s, n));
}

struct DictAccess {
  // Room for n more items at a quarter of the table at most: the probe for a new key then
  // mostly meets a free slot first, a branch the CPU predicts (at half full, it guesses).
  static void reserve(Dict& d, std::size_t n) {
    d.keys_.reserve(d.size() + n);
    d.values_.reserve(d.size() + n);
    d.hashes_.reserve(d.size() + n);
    std::size_t want = std::bit_ceil((d.size() + n) * 4 + 8);
    if (want > d.table_.size()) d.rehash(want);
  }

  // d[str(key)] = Object(value), as Dict::set(Object(std::string(key)), Object(value)) does it:
  // a new key goes last, a present one keeps its place and takes the value. The key's Object
  // is built in its place in the dict, the value's too.
  template <class V>
  static void set_str(Dict& d, std::string_view key, V&& value) {
    std::size_t h = str_object_hash(key.data(), key.size());
    if (d.keys_.size() >= UINT32_MAX - 1) throw ValueError("py::Dict: too many items");
    // Room first (as Dict::set makes it for a new key), so that one probe finds the key or
    // the free slot it goes to.
    if ((d.keys_.size() + 1) * 2 > d.table_.size()) d.rehash(std::max<std::size_t>(16, d.table_.size() * 2));
    std::size_t mask = d.table_.size() - 1, j = h & mask;
    for (; d.table_[j]; j = (j + 1) & mask) {
      std::uint32_t slot = d.table_[j];
      const Object& k = d.keys_[slot - 1];
      if (d.hashes_[slot - 1] == h && k.kind() == Kind::str && k.get<std::string>() == key) {
        d.values_[slot - 1] = Object(std::forward<V>(value));
        return;
      }
    }
    // Built from the chars in its place: one copy of them, and one move (an append to an
    // empty str moved in costs more: measured 12% of the benchmark's load).
    d.keys_.emplace_back(key);
    d.values_.emplace_back(std::forward<V>(value));
    d.hashes_.push_back(h);
    d.table_[j] = static_cast<std::uint32_t>(d.keys_.size());
  }
};

}  // namespace mpx::py::detail
