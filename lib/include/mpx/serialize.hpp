// The codec: how values become bytes that cross a process boundary.
//
//   struct Point { int x, y; template <class A> void serialize(A& a) { a(x, y); } };
//   mpx::Bytes b = mpx::encode(Point{1, 2});
//   Point p = mpx::decode<Point>(b);
//
// cereal's binary format is the default. A type that already speaks Boost.Serialization
// opts in with `template <> struct mpx::use_boost_serialization<T> : std::true_type {};`
// and is then encoded by Boost (member, free, split save/load, base_object, make_nvp all work).
// Decoding never trusts its input: garbage or truncated bytes throw ProtocolError, and no
// container or string is sized beyond the bytes actually present. An mpx error that a type's
// own load() throws (e.g. TypeMismatch from a proxy received as the wrong type) is passed on
// as it is, so the caller sees what went wrong rather than a generic decode failure.
#pragma once

#include <mpx/errors.hpp>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/atomic.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/forward_list.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/valarray.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <boost/archive/polymorphic_iarchive.hpp>
#include <boost/archive/polymorphic_oarchive.hpp>

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace mpx {

using Bytes = std::vector<std::byte>;

// Specialise to std::true_type to encode T with Boost.Serialization instead of cereal.
template <class T>
struct use_boost_serialization : std::false_type {};

namespace detail {

// cereal archives over a byte vector / byte span: no iostream formatting on the hot path,
// and the reader knows how many bytes are left, which bounds every size it accepts.
class OutputArchive : public cereal::OutputArchive<OutputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit OutputArchive(Bytes& out)
      : cereal::OutputArchive<OutputArchive, cereal::AllowEmptyClassElision>(this), out_(out) {}
  void saveBinary(const void* data, std::size_t size) {
    auto* p = static_cast<const std::byte*>(data);
    out_.insert(out_.end(), p, p + size);
  }

 private:
  Bytes& out_;
};

class InputArchive : public cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit InputArchive(std::span<const std::byte> in)
      : cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision>(this), in_(in) {}
  void loadBinary(void* data, std::size_t size) {
    if (size > remaining()) throw ProtocolError("mpx::decode: truncated input");
    if (size) std::memcpy(data, in_.data() + pos_, size);
    pos_ += size;
  }
  std::size_t remaining() const { return in_.size() - pos_; }

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const T& t) {
  ar.saveBinary(std::addressof(t), sizeof(t));
}
template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, T& t) {
  ar.loadBinary(std::addressof(t), sizeof(t));
}
template <class Archive, class T>
CEREAL_ARCHIVE_RESTRICT(InputArchive, OutputArchive)
CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const cereal::SizeTag<T>& t) {
  ar(t.size);
}
// Every element of a container takes at least one byte on the wire, so a count larger than
// what is left is a lie: refuse it before the container allocates.
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
  if (static_cast<std::uint64_t>(t.size) > ar.remaining())
    throw ProtocolError("mpx::decode: element count exceeds the input");
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const cereal::BinaryData<T>& bd) {
  ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::BinaryData<T>& bd) {
  ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}

// Boost.Serialization through its polymorphic archive interface: a type's serialize() is
// instantiated for polymorphic_[io]archive here, and the concrete binary archives (the input one
// bounding every count by the bytes left) are compiled once in lib/src/serialize. Boost's
// concrete archive headers would otherwise cost every user's translation unit ~1.5 s.
using BoostSave = void (*)(boost::archive::polymorphic_oarchive&, const void*);
using BoostLoad = void (*)(boost::archive::polymorphic_iarchive&, void*);
void boost_save(Bytes& out, const void* value, BoostSave save);
// Throws ProtocolError on garbage, truncation or trailing bytes.
void boost_load(std::span<const std::byte> in, void* value, BoostLoad load);

[[noreturn]] void throw_decode_error(const char* what);

}  // namespace detail

// A type is transferable when cereal can save and load it, or when it opted in to Boost.
template <class T>
concept transferable =
    !std::is_pointer_v<std::remove_cvref_t<T>> &&  // an address means nothing in another process
    (use_boost_serialization<std::remove_cvref_t<T>>::value ||
     (cereal::traits::is_output_serializable<std::remove_cvref_t<T>, detail::OutputArchive>::value &&
      cereal::traits::is_input_serializable<std::remove_cvref_t<T>, detail::InputArchive>::value));

namespace detail {
template <class T>
constexpr void require_transferable() {
  static_assert(transferable<T>,
                "mpx: this type cannot cross a process boundary. Give it a cereal serialize() "
                "(or save()/load()) function, or, if it already has Boost.Serialization support, "
                "specialise mpx::use_boost_serialization<T> to std::true_type.");
}
}  // namespace detail

// Appends the encoding of `value` to `out` (lets callers put a frame header first).
template <class T>
void encode_append(Bytes& out, const T& value) {
  detail::require_transferable<T>();
  if constexpr (use_boost_serialization<T>::value) {
    detail::boost_save(
        out, std::addressof(value),
        [](boost::archive::polymorphic_oarchive& ar, const void* v) { ar << *static_cast<const T*>(v); });
  } else {
    detail::OutputArchive ar(out);
    ar(value);
  }
}

template <class T>
Bytes encode(const T& value) {
  Bytes out;
  encode_append(out, value);
  return out;
}

// Decodes a whole message: trailing bytes are as much an error as missing ones.
template <class T>
T decode(std::span<const std::byte> bytes) {
  detail::require_transferable<T>();
  static_assert(std::is_default_constructible_v<T>, "mpx::decode<T>: T must be default-constructible");
  T value{};
  try {
    if constexpr (use_boost_serialization<T>::value) {
      detail::boost_load(bytes, std::addressof(value), [](boost::archive::polymorphic_iarchive& ar, void* v) {
        ar >> *static_cast<T*>(v);
      });
    } else {
      detail::InputArchive ar(bytes);
      ar(value);
      if (ar.remaining() != 0) throw ProtocolError("mpx::decode: trailing bytes after the value");
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    detail::throw_decode_error(e.what());
  }
  return value;
}

template <class T>
T decode(const Bytes& bytes) {
  return decode<T>(std::span<const std::byte>(bytes));
}

}  // namespace mpx

CEREAL_REGISTER_ARCHIVE(mpx::detail::OutputArchive)
CEREAL_REGISTER_ARCHIVE(mpx::detail::InputArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(mpx::detail::InputArchive, mpx::detail::OutputArchive)
