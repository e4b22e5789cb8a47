// The byte codec every message catalogue uses (manager.md, pool.md): little-endian fixed-width
// scalars, and length-prefixed byte strings. Most lengths are u64 ("blob", which is also how
// cereal's binary format writes a std::string); the pool's messages use u32 lengths ("str32"),
// so both exist and each catalogue names the one its spec says.
#pragma once

#include <mpx/proto/errors.hpp>

#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace mpx::proto {

// Memcpy of the native representation is the encoding; a big-endian port would swap here.
static_assert(std::endian::native == std::endian::little, "the mpx wire formats are little-endian");

// Appends the encodings to a byte vector (the caller's, so messages are built in place).
class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) noexcept : out_(&out) {}
  void u8(std::uint8_t v) { out_->push_back(static_cast<std::byte>(v)); }
  void u32(std::uint32_t v) { raw(&v, sizeof v); }
  void u64(std::uint64_t v) { raw(&v, sizeof v); }
  void i32(std::int32_t v) { raw(&v, sizeof v); }
  void i64(std::int64_t v) { raw(&v, sizeof v); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void blob(std::span<const std::byte> b) {
    u64(b.size());
    raw(b.data(), b.size());
  }
  void str(std::string_view s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void str32(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  void raw(const void* p, std::size_t n) {
    auto* b = static_cast<const std::byte*>(p);
    out_->insert(out_->end(), b, b + n);
  }
  // Overwrites a scalar written earlier at offset `at` of the buffer: a length or a count known
  // only once what follows it has been written.
  template <std::integral T>
  void patch(std::size_t at, T v) noexcept {
    std::memcpy(out_->data() + at, &v, sizeof v);
  }
  std::vector<std::byte>& buffer() noexcept { return *out_; }

 private:
  std::vector<std::byte>* out_;
};

// Reads them back from a span; views point into the span. Bytes that do not parse call the
// failure hook with what is wrong. The hook must throw: the library passes one that throws its
// own error type (see errors.hpp); the default throws proto::ProtocolError with the manager
// protocol's wording, the catalogue the codec was first written for.
class Reader {
 public:
  using Failure = void (*)(const char* what);
  [[noreturn]] static void manager_protocol_error(const char* what);

  explicit Reader(std::span<const std::byte> in, Failure failure = &manager_protocol_error) noexcept
      : in_(in), failure_(failure) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)[0]); }
  std::uint32_t u32() { return scalar<std::uint32_t>(); }
  std::uint64_t u64() { return scalar<std::uint64_t>(); }
  std::int32_t i32() { return scalar<std::int32_t>(); }
  std::int64_t i64() { return scalar<std::int64_t>(); }
  bool boolean() { return u8() != 0; }
  std::span<const std::byte> blob() {
    std::uint64_t n = u64();
    if (n > remaining()) fail("blob length exceeds the message");
    return take(static_cast<std::size_t>(n));
  }
  std::string_view str() { return chars(blob()); }
  std::string_view str32() { return chars(take(u32())); }
  // A count of items that each take at least `min_item` bytes: refused when it cannot fit.
  std::uint64_t count(std::size_t min_item) {
    std::uint64_t n = u64();
    if (min_item && n > remaining() / min_item) fail("item count exceeds the message");
    return n;
  }
  std::span<const std::byte> take(std::uint64_t n) {
    if (n > remaining()) fail("truncated message");
    auto s = in_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  std::span<const std::byte> rest() { return take(remaining()); }
  std::size_t remaining() const noexcept { return in_.size() - pos_; }
  void expect_end() const {
    if (remaining()) fail("trailing bytes after the request body");
  }

 private:
  template <class T>
  T scalar() {
    T v;
    std::memcpy(&v, take(sizeof v).data(), sizeof v);
    return v;
  }
  static std::string_view chars(std::span<const std::byte> b) noexcept {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
  [[noreturn]] void fail(const char* what) const {
    failure_(what);
    manager_protocol_error(what);  // a hook that returned: the stream is still unreadable
  }

  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  Failure failure_;
};

}  // namespace mpx::proto
