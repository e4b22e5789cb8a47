#include <mpx/serialize.hpp>

#include <algorithm>

#include <doctest/doctest.h>
#include <boost/serialization/base_object.hpp>
#include <boost/serialization/map.hpp>
#include <boost/serialization/nvp.hpp>
#include <boost/serialization/split_member.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

namespace {

struct Point {
  int x = 0, y = 0;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label);
  }
  bool operator==(const Point&) const = default;
};

// Boost.Serialization in its several forms.
struct BoostMember {
  int a = 0;
  std::vector<double> v;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar& BOOST_SERIALIZATION_NVP(a) & BOOST_SERIALIZATION_NVP(v);
  }
  bool operator==(const BoostMember&) const = default;
};

struct BoostFree {
  std::string name;
  std::map<std::string, int> counts;
  bool operator==(const BoostFree&) const = default;
};
template <class Archive>
void serialize(Archive& ar, BoostFree& f, unsigned) {
  ar& boost::serialization::make_nvp("name", f.name) & boost::serialization::make_nvp("counts", f.counts);
}

struct BoostSplit {
  std::string stored;  // saved upper-cased marker, restored as is
  int loads = 0;
  template <class Archive>
  void save(Archive& ar, unsigned) const {
    ar << stored;
  }
  template <class Archive>
  void load(Archive& ar, unsigned) {
    ar >> stored;
    ++loads;
  }
  BOOST_SERIALIZATION_SPLIT_MEMBER()
};

struct BoostDerived : BoostMember {
  std::string extra;
  template <class Archive>
  void serialize(Archive& ar, unsigned) {
    ar& boost::serialization::base_object<BoostMember>(*this) & extra;
  }
};

struct NotSerializable {
  int x;
};

}  // namespace

template <>
struct mpx::use_boost_serialization<BoostMember> : std::true_type {};
template <>
struct mpx::use_boost_serialization<BoostFree> : std::true_type {};
template <>
struct mpx::use_boost_serialization<BoostSplit> : std::true_type {};
template <>
struct mpx::use_boost_serialization<BoostDerived> : std::true_type {};

static_assert(mpx::transferable<int>);
static_assert(mpx::transferable<std::string>);
static_assert(mpx::transferable<std::vector<std::map<std::string, std::optional<int>>>>);
static_assert(mpx::transferable<Point>);
static_assert(mpx::transferable<BoostMember>);
static_assert(!mpx::transferable<NotSerializable>);
static_assert(!mpx::transferable<int*>);

template <class T>
T round_trip(const T& v) {
  return mpx::decode<T>(mpx::encode(v));
}

TEST_CASE("cereal round-trips standard and user types") {
  CHECK(round_trip(42) == 42);
  CHECK(round_trip(std::int64_t{-1} << 40) == (std::int64_t{-1} << 40));
  CHECK(round_trip(3.25) == 3.25);
  CHECK(round_trip(std::string("hello")) == "hello");
  CHECK(round_trip(std::string()) == "");
  std::vector<int> big(100000);
  for (int i = 0; i < 100000; ++i) big[i] = i * 7;
  CHECK(round_trip(big) == big);
  std::map<std::string, std::vector<double>> m{{"a", {1.5}}, {"b", {}}};
  CHECK(round_trip(m) == m);
  std::tuple<int, std::string, std::optional<double>> t{1, "x", std::nullopt};
  CHECK(round_trip(t) == t);
  std::variant<int, std::string> var = std::string("v");
  CHECK(round_trip(var) == var);
  Point p{3, -4, "corner"};
  CHECK(round_trip(p) == p);
}

TEST_CASE("the encoding is compact and stable") {
  // int32 is its 4 native (little-endian) bytes; a string is a u64 length then its bytes.
  CHECK(mpx::encode(0x01020304) == mpx::Bytes{std::byte{4}, std::byte{3}, std::byte{2}, std::byte{1}});
  auto s = mpx::encode(std::string("ab"));
  REQUIRE(s.size() == 10);
  CHECK(s[0] == std::byte{2});
  CHECK(s[8] == std::byte{'a'});
  CHECK(s[9] == std::byte{'b'});
}

TEST_CASE("encode_append keeps what was already in the buffer") {
  mpx::Bytes out{std::byte{0xAA}};
  mpx::encode_append(out, std::uint16_t{0x0102});
  CHECK(out == mpx::Bytes{std::byte{0xAA}, std::byte{2}, std::byte{1}});
}

TEST_CASE("Boost.Serialization types in every form") {
  BoostMember bm{7, {1.0, 2.5}};
  CHECK(round_trip(bm) == bm);
  BoostFree bf{"n", {{"x", 1}, {"y", 2}}};
  CHECK(round_trip(bf) == bf);
  BoostSplit bs;
  bs.stored = "split";
  auto back = round_trip(bs);
  CHECK(back.stored == "split");
  CHECK(back.loads == 1);
  BoostDerived d;
  d.a = 9;
  d.v = {4.0};
  d.extra = "more";
  auto dd = round_trip(d);
  CHECK(dd.a == 9);
  CHECK(dd.v == std::vector<double>{4.0});
  CHECK(dd.extra == "more");
}

TEST_CASE("garbage and truncated input throw ProtocolError") {
  auto good = mpx::encode(Point{1, 2, "label"});
  for (std::size_t n = 0; n < good.size(); ++n) {
    std::span<const std::byte> cut(good.data(), n);
    CHECK_THROWS_AS(mpx::decode<Point>(cut), mpx::ProtocolError);
  }
  auto trailing = good;
  trailing.push_back(std::byte{0});
  CHECK_THROWS_AS(mpx::decode<Point>(trailing), mpx::ProtocolError);

  auto boost_good = mpx::encode(BoostFree{"name", {{"k", 3}}});
  for (std::size_t n = 0; n < boost_good.size(); ++n) {
    std::span<const std::byte> cut(boost_good.data(), n);
    CHECK_THROWS_AS(mpx::decode<BoostFree>(cut), mpx::ProtocolError);
  }
}

TEST_CASE("a huge announced size is refused before allocating") {
  // A u64 length of 2^62 followed by three bytes: a string, a vector, a Boost string.
  mpx::Bytes lie(8, std::byte{0});
  lie[7] = std::byte{0x40};
  lie.insert(lie.end(), 3, std::byte{'x'});
  CHECK_THROWS_AS(mpx::decode<std::string>(lie), mpx::ProtocolError);
  CHECK_THROWS_AS(mpx::decode<std::vector<std::uint64_t>>(lie), mpx::ProtocolError);
  CHECK_THROWS_AS(mpx::decode<std::vector<std::string>>(lie), mpx::ProtocolError);
  CHECK_THROWS_AS(mpx::decode<BoostFree>(lie), mpx::ProtocolError);
  CHECK_THROWS_AS(mpx::decode<BoostMember>(mpx::Bytes(4, std::byte{0xFF})), mpx::ProtocolError);

  // A Boost collection count of 2^40 over three bytes is refused as a count, not by running
  // out of memory: the vector's 8-byte count is the one that reads 3 here.
  auto member = mpx::encode(BoostMember{7, {1.0, 2.5, 4.0}});
  const mpx::Bytes three{std::byte{3}, std::byte{0}, std::byte{0}, std::byte{0},
                         std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0}};
  auto at = std::search(member.begin(), member.end(), three.begin(), three.end());
  REQUIRE(at != member.end());
  mpx::Bytes huge(member.begin(), at);
  const std::uint64_t count = std::uint64_t{1} << 40;
  for (int i = 0; i < 8; ++i) huge.push_back(static_cast<std::byte>(count >> (8 * i)));
  huge.insert(huge.end(), 3, std::byte{1});
  CHECK_THROWS_WITH_AS(mpx::decode<BoostMember>(huge), doctest::Contains("element count exceeds the input"),
                       mpx::ProtocolError);
}

TEST_CASE("random bytes never crash the decoder") {
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int errors = 0;
  for (int round = 0; round < 2000; ++round) {
    mpx::Bytes junk(next() % 64);
    for (auto& b : junk) b = static_cast<std::byte>(next());
    try {
      (void)mpx::decode<std::map<std::string, std::vector<Point>>>(junk);
    } catch (const mpx::ProtocolError&) {
      ++errors;
    }
    try {
      (void)mpx::decode<BoostFree>(junk);
    } catch (const mpx::ProtocolError&) {
      ++errors;
    }
  }
  CHECK(errors > 3000);  // nearly all junk is rejected, and all of it without a crash
}
