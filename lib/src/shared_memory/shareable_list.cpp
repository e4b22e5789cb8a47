// ShareableList in Python 3.11's layout (Lib/multiprocessing/shared_memory.py), native byte order:
//   i64 n | i64 offsets[n + 1] (from the data area's start) | data area |
//   char formats[n][8] (struct formats, NUL-padded) | i8 back_transform[n]
// An item's slot holds its value in its struct format: "q" int, "d" float, "xxxxxxx?" bool,
// "xxxxxx?x" None, "<N>s" str/bytes (N = the slot's length). The back-transform code says how
// Python turns the unpacked value back into an object: 0 as is, 1 str, 2 bytes, 3 None.
#include <mpx/shared_memory.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>

namespace mpx {
namespace {

constexpr std::size_t kWord = 8;
constexpr const char* kInt = "q";
constexpr const char* kFloat = "d";
constexpr const char* kBool = "xxxxxxx?";
constexpr const char* kNone = "xxxxxx?x";
enum Code : std::int8_t { kAsIs = 0, kStr = 1, kBytes = 2, kNoneCode = 3 };

std::string_view text_of(const ShareableList::Item& v) {
  if (auto* s = std::get_if<std::string>(&v)) return *s;
  auto& b = std::get<Bytes>(v);
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

bool is_text(const ShareableList::Item& v) { return v.index() == 4 || v.index() == 5; }

// Python's slot for a str or bytes item: its length rounded up past the next multiple of 8.
std::size_t text_slot(std::size_t len) { return kWord * (len / kWord + 1); }

std::string text_format(std::size_t slot) {
  std::string f = std::to_string(slot) + "s";
  if (f.size() > kWord)
    throw ValueError("mpx::ShareableList: a str or bytes item of " + std::to_string(slot) +
                     " bytes does not fit (its format must fit in 8 characters)");
  return f;
}

std::int8_t code_of(const ShareableList::Item& v) {
  switch (v.index()) {
    case 0:
      return kNoneCode;
    case 4:
      return kStr;
    case 5:
      return kBytes;
    default:
      return kAsIs;
  }
}

std::string format_of(const ShareableList::Item& v, std::size_t slot) {
  switch (v.index()) {
    case 0:
      return kNone;
    case 1:
      return kBool;
    case 2:
      return kInt;
    case 3:
      return kFloat;
    default:
      return text_format(slot);
  }
}

// Python's == between items: numbers by value (True == 1 == 1.0), str never equals bytes.
bool python_equal(const ShareableList::Item& a, const ShareableList::Item& b) {
  auto as_int = [](const ShareableList::Item& v) -> std::optional<std::int64_t> {
    if (auto* x = std::get_if<bool>(&v)) return *x ? 1 : 0;
    if (auto* x = std::get_if<std::int64_t>(&v)) return *x;
    return std::nullopt;
  };
  auto ia = as_int(a), ib = as_int(b);
  if (ia && ib) return *ia == *ib;
  auto* da = std::get_if<double>(&a);
  auto* db = std::get_if<double>(&b);
  if (da && db) return *da == *db;
  if ((da && ib) || (db && ia)) {
    double d = da ? *da : *db;
    std::int64_t i = ia ? *ia : *ib;
    // Exact, as Python compares int and float: only an integral double in range can be equal.
    if (!(d >= -0x1p63 && d < 0x1p63) || std::trunc(d) != d) return false;
    return static_cast<std::int64_t>(d) == i;
  }
  return a == b;
}

std::int64_t load_i64(const std::byte* p) {
  std::int64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void store_i64(std::byte* p, std::int64_t v) { std::memcpy(p, &v, sizeof v); }

}  // namespace

ShareableList::ShareableList(SharedMemory shm) : shm_(std::move(shm)) {
  auto b = shm_.buf();
  auto bad = [&](const char* why) {
    return ProtocolError("mpx::ShareableList: the block '" + shm_.name() +
                         "' does not hold a ShareableList (" + why + ")");
  };
  if (b.size() < 2 * kWord) throw bad("too small");
  std::int64_t n = load_i64(b.data());
  if (n < 0 || static_cast<std::uint64_t>(n) > (b.size() - 2 * kWord) / (2 * kWord + 1))
    throw bad("bad item count");
  n_ = static_cast<std::size_t>(n);
  std::int64_t prev = 0;
  for (std::size_t k = 0; k <= n_; ++k) {
    std::int64_t off = load_i64(b.data() + kWord * (k + 1));
    if (off < prev || (k == 0 && off != 0)) throw bad("bad offsets");
    prev = off;
  }
  std::size_t data_start = (n_ + 2) * kWord;
  if (static_cast<std::uint64_t>(prev) > b.size() - data_start - n_ * (kWord + 1)) throw bad("truncated");
}

ShareableList ShareableList::create(std::vector<Item> items, std::string name) {
  const std::size_t n = items.size();
  std::vector<std::size_t> offsets{0};
  std::vector<std::string> formats;
  for (auto& v : items) {
    std::size_t slot = is_text(v) ? text_slot(text_of(v).size()) : kWord;
    formats.push_back(format_of(v, slot));
    offsets.push_back(offsets.back() + slot);
  }
  std::size_t size = kWord + kWord * (n + 1) + offsets.back() + kWord * n + n;
  auto shm = SharedMemory::create(size, std::move(name));
  std::byte* p = shm.buf().data();
  store_i64(p, static_cast<std::int64_t>(n));
  for (std::size_t k = 0; k <= n; ++k) store_i64(p + kWord * (k + 1), static_cast<std::int64_t>(offsets[k]));
  ShareableList list(std::move(shm));
  for (std::size_t k = 0; k < n; ++k) list.set(static_cast<std::ptrdiff_t>(k), std::move(items[k]));
  return list;
}

ShareableList ShareableList::attach(std::string name) {
  return ShareableList(SharedMemory::attach(std::move(name)));
}

std::size_t ShareableList::size() const { return n_; }

std::size_t ShareableList::position(std::ptrdiff_t i) const {
  std::ptrdiff_t k = i < 0 ? i + static_cast<std::ptrdiff_t>(n_) : i;
  if (k < 0 || static_cast<std::size_t>(k) >= n_)
    throw IndexError("mpx::ShareableList: index " + std::to_string(i) + " out of range (size " +
                     std::to_string(n_) + ")");
  return static_cast<std::size_t>(k);
}

std::uint64_t ShareableList::slot_offset(std::size_t k) const {
  return static_cast<std::uint64_t>(load_i64(shm_.buf().data() + kWord * (k + 1)));
}

ShareableList::Item ShareableList::get(std::ptrdiff_t i) const {
  const std::size_t k = position(i);
  auto b = shm_.buf();
  const std::size_t data_start = (n_ + 2) * kWord;
  const std::byte* formats = b.data() + data_start + slot_offset(n_);
  const std::byte* value = b.data() + data_start + slot_offset(k);
  std::string_view fmt(reinterpret_cast<const char*>(formats + kWord * k), kWord);
  fmt = fmt.substr(0, fmt.find('\0'));
  auto code = static_cast<std::int8_t>(formats[kWord * n_ + k]);
  auto bad = [&] {
    return ProtocolError("mpx::ShareableList: item " + std::to_string(k) + " of '" + shm_.name() +
                         "' has an unknown format '" + std::string(fmt) + "' (code " + std::to_string(code) +
                         ")");
  };
  if (code == kNoneCode) return std::monostate{};
  if (code == kAsIs) {
    if (fmt == kInt) return load_i64(value);
    if (fmt == kBool) return static_cast<std::uint8_t>(value[7]) != 0;
    if (fmt == kFloat) {
      double d;
      std::memcpy(&d, value, sizeof d);
      return d;
    }
    throw bad();
  }
  if (code != kStr && code != kBytes) throw bad();
  std::size_t len = 0;
  if (fmt.size() < 2 || fmt.back() != 's' ||
      std::from_chars(fmt.data(), fmt.data() + fmt.size() - 1, len).ptr != fmt.data() + fmt.size() - 1 ||
      len > slot_offset(k + 1) - slot_offset(k))
    throw bad();
  while (len > 0 && value[len - 1] == std::byte{0}) --len;  // Python strips trailing NULs
  if (code == kStr) return std::string(reinterpret_cast<const char*>(value), len);
  return Bytes(value, value + len);
}

void ShareableList::set(std::ptrdiff_t i, Item v) {
  const std::size_t k = position(i);
  auto b = shm_.buf();
  const std::size_t data_start = (n_ + 2) * kWord;
  std::byte* formats = b.data() + data_start + slot_offset(n_);
  std::byte* value = b.data() + data_start + slot_offset(k);
  const std::size_t allocated = slot_offset(k + 1) - slot_offset(k);
  std::string fmt;
  if (is_text(v)) {
    auto text = text_of(v);
    if (text.size() > allocated)
      throw ValueError("mpx::ShareableList: a str/bytes item of " + std::to_string(text.size()) +
                       " bytes exceeds the " + std::to_string(allocated) + " bytes of slot " +
                       std::to_string(k));
    std::string_view current(reinterpret_cast<const char*>(formats + kWord * k), kWord);
    current = current.substr(0, current.find('\0'));
    // As Python: a text slot keeps its format; another slot becomes text of its whole length.
    fmt = !current.empty() && current.back() == 's' ? std::string(current) : text_format(allocated);
    // struct's "<N>s" writes exactly N bytes: the text, cut or NUL-padded to N.
    std::size_t width = allocated;
    std::from_chars(fmt.data(), fmt.data() + fmt.size() - 1, width);
    width = std::min(width, allocated);
    std::size_t n = std::min(text.size(), width);
    if (n) std::memcpy(value, text.data(), n);  // an empty text may have no data pointer at all
    std::memset(value + n, 0, width - n);
  } else {
    fmt = format_of(v, kWord);
    std::byte word[kWord] = {};
    if (auto* x = std::get_if<std::int64_t>(&v)) std::memcpy(word, x, kWord);
    if (auto* x = std::get_if<double>(&v)) std::memcpy(word, x, kWord);
    if (auto* x = std::get_if<bool>(&v)) word[7] = std::byte{*x ? std::uint8_t{1} : std::uint8_t{0}};
    std::memcpy(value, word, kWord);
  }
  std::memset(formats + kWord * k, 0, kWord);
  std::memcpy(formats + kWord * k, fmt.data(), fmt.size());
  formats[kWord * n_ + k] = static_cast<std::byte>(code_of(v));
}

std::vector<ShareableList::Item> ShareableList::items() const {
  std::vector<Item> all;
  all.reserve(n_);
  for (std::size_t k = 0; k < n_; ++k) all.push_back(get(static_cast<std::ptrdiff_t>(k)));
  return all;
}

std::size_t ShareableList::count(const Item& v) const {
  std::size_t c = 0;
  for (std::size_t k = 0; k < n_; ++k) c += python_equal(get(static_cast<std::ptrdiff_t>(k)), v);
  return c;
}

std::optional<std::size_t> ShareableList::index(const Item& v) const {
  for (std::size_t k = 0; k < n_; ++k)
    if (python_equal(get(static_cast<std::ptrdiff_t>(k)), v)) return k;
  return std::nullopt;
}

}  // namespace mpx
