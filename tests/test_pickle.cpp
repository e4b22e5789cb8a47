// <mpx/pickle.hpp> against the real pickle module of the machine's python3 (both directions,
// protocols 0-5 in, 2-5 out, through tests/python/pickle_peer.py), the mapping of C++ types,
// hostile input, and Connection's send_object/recv_object with a Python peer.
#include <mpx/connection.hpp>
#include <mpx/pickle.hpp>

#include <doctest/doctest.h>
#include <support.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

using mpx::Bytes;
namespace py = mpx::py;

namespace {

const std::string kPeer = std::string(MPX_SOURCE_DIR) + "/tests/python/pickle_peer.py";

bool have_python() { return std::system("python3 -c 'import pickle' >/dev/null 2>&1") == 0; }

#define REQUIRE_PYTHON()                                      \
  if (!have_python()) {                                       \
    MESSAGE("python3 not found: Python cross-check skipped"); \
    return;                                                   \
  }

std::string hex(const Bytes& b) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::byte x : b) {
    s += digits[static_cast<unsigned>(x) >> 4];
    s += digits[static_cast<unsigned>(x) & 15];
  }
  return s;
}
std::string hex(std::string_view s) {
  auto* p = reinterpret_cast<const std::byte*>(s.data());
  return hex(Bytes(p, p + s.size()));
}
Bytes unhex(std::string_view s) {
  Bytes b(s.size() / 2);
  for (std::size_t i = 0; i < b.size(); ++i)
    b[i] = static_cast<std::byte>(std::stoi(std::string(s.substr(2 * i, 2)), nullptr, 16));
  return b;
}
Bytes bytes_of(std::string_view s) {
  auto* p = reinterpret_cast<const std::byte*>(s.data());
  return Bytes(p, p + s.size());
}

// The same text pickle_peer.py's canon() gives.
std::string canon(const py::Object& o) {
  auto seq = [](const py::List& l, const char* open, const char* close) {
    std::string s = open;
    for (std::size_t i = 0; i < l.size(); ++i) s += (i ? "," : "") + canon(l[i]);
    return s + close;
  };
  auto sorted = [](const py::Set& set, const char* open) {
    std::vector<std::string> parts;
    for (const auto& x : set) parts.push_back(canon(x));
    std::sort(parts.begin(), parts.end());
    std::string s = open;
    for (std::size_t i = 0; i < parts.size(); ++i) s += (i ? "," : "") + parts[i];
    return s + ">";
  };
  switch (o.kind()) {
    case py::Kind::none:
      return "N";
    case py::Kind::boolean:
      return o.get<bool>() ? "T" : "F";
    case py::Kind::integer:
      return "i" + std::to_string(o.get<std::int64_t>());
    case py::Kind::floating: {
      double d = o.get<double>();
      Bytes b(8);
      std::memcpy(b.data(), &d, 8);
      return "f" + hex(b);
    }
    case py::Kind::str:
      return "s" + hex(o.get<std::string>());
    case py::Kind::bytes:
      return "b" + hex(o.get<Bytes>());
    case py::Kind::bytearray:
      return "B" + hex(o.get<Bytes>());
    case py::Kind::list:
      return seq(o.get<py::List>(), "[", "]");
    case py::Kind::tuple:
      return seq(o.get<py::List>(), "(", ")");
    case py::Kind::dict: {
      const auto& d = o.get<py::Dict>();
      std::string s = "{";
      for (std::size_t i = 0; i < d.size(); ++i)
        s += (i ? "," : "") + canon(d.keys()[i]) + ":" + canon(d.values()[i]);
      return s + "}";
    }
    case py::Kind::set:
      return sorted(o.get<py::Set>(), "<");
    case py::Kind::frozenset:
      return sorted(o.get<py::Set>(), "z<");
    case py::Kind::slice: {
      const auto& s = o.get<py::Slice>();
      return "S(" + canon(s.start()) + "," + canon(s.stop()) + "," + canon(s.step()) + ")";
    }
    case py::Kind::exception: {
      const auto& e = o.get<py::Exception>();
      std::string name;
      switch (e.type) {
        case py::ExceptionType::Empty:
          name = "_queue.Empty";
          break;
        case py::ExceptionType::Full:
          name = "queue.Full";
          break;
        case py::ExceptionType::BrokenBarrierError:
          name = "threading.BrokenBarrierError";
          break;
        default:
          name = std::string("builtins.") + py::exception_name(e.type);
      }
      return "E" + name + seq(e.args, "(", ")");
    }
  }
  return "?";
}

std::string run(const std::string& command) {
  std::string out;
  FILE* f = ::popen(command.c_str(), "r");
  REQUIRE(f);
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  REQUIRE(::pclose(f) == 0);
  return out;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

template <class E>
std::string error_of(std::span<const std::byte> b) {
  try {
    py::loads(b);
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("another exception: " << e.what());
  }
  FAIL("no exception");
  return {};
}
template <class E>
std::string error_of(std::string_view raw) {
  return error_of<E>(std::span<const std::byte>(bytes_of(raw)));
}
template <class E, std::size_t N>
std::string error_of(const char (&raw)[N]) {  // a literal, NULs included
  return error_of<E>(std::string_view(raw, N - 1));
}

}  // namespace

TEST_CASE("Python's pickles load as the same values, and mpx's dumps load in Python as them") {
  REQUIRE_PYTHON();
  auto out = lines(run("python3 " + kPeer + " gen 15 300"));
  REQUIRE(out.size() > 1000);
  mpx::test::TempDir dir("mpx-pickle");
  std::string to_python = dir / "dumps.hex";
  std::ofstream file(to_python);
  std::vector<std::string> expected;
  int values = 0, value_errors = 0, protocol_errors = 0;
  for (const auto& l : out) {
    std::istringstream in(l);
    std::string first, second, third;
    in >> first >> second >> third;
    if (first == "V") {
      CAPTURE(l);
      error_of<mpx::ValueError>(std::span<const std::byte>(unhex(third)));
      ++value_errors;
      continue;
    }
    if (first == "P") {
      CAPTURE(l);
      std::string rest;
      std::getline(in, rest);
      auto what = error_of<mpx::ProtocolError>(std::span<const std::byte>(unhex(third)));
      // Protocol 2 names Python 2's modules (__builtin__.long for int): the opcode is named then.
      CHECK(what.find(second == "2" ? std::string("GLOBAL '") : rest.substr(1)) != std::string::npos);
      ++protocol_errors;
      continue;
    }
    CAPTURE(first);
    CAPTURE(third);
    py::Object o = py::loads(unhex(second));
    REQUIRE(canon(o) == third);
    ++values;
    if (first != "4") continue;  // one protocol's load is enough to dump from
    for (int p = 2; p <= 5; ++p) {
      Bytes b = py::dumps(o, p);
      CHECK(canon(py::loads(b)) == third);  // and our own round trip
      file << hex(b) << "\n";
      expected.push_back(third);
    }
  }
  file.close();
  MESSAGE(values << " pickles loaded, " << value_errors << " ValueErrors, " << protocol_errors
                 << " ProtocolErrors");
  auto back = lines(run("python3 " + kPeer + " check < " + to_python));
  REQUIRE(back.size() == expected.size());
  for (std::size_t i = 0; i < back.size(); ++i) {
    CAPTURE(i);
    CHECK(back[i] == expected[i]);
  }
}

TEST_CASE("dumps writes Python's opcodes: small ints, framing, the protocol 2 globals") {
  CHECK(hex(py::dumps(py::none)) == "80044e2e");  // no frame under 4 bytes, as Python
  CHECK(hex(py::dumps(300)) == "80049504000000000000004d2c012e");
  static const char protocol2_bytes[] =
      "\x80\x02"
      "c_codecs\nencode\nX\x02\x00\x00\x00"
      "abX\x06\x00\x00\x00latin1\x86R.";
  CHECK(hex(py::dumps(py::Object::bytes("ab"), 2)) ==
        hex(std::string_view(protocol2_bytes, sizeof protocol2_bytes - 1)));
  CHECK(hex(py::dumps(py::Object::bytes("ab"), 3)) ==
        "800343026162"
        "2e");
  // A big value spans several frames, none above Python's 64 KiB target by more than an item.
  py::List big(200000, py::Object(123456));
  Bytes b = py::dumps(big);
  CHECK(py::loads(b) == py::Object(big));
  CHECK_THROWS_AS(py::dumps(1, 1), mpx::ValueError);
  CHECK_THROWS_AS(py::dumps(1, 6), mpx::ValueError);
  CHECK_THROWS_AS(py::dumps(std::string("\xff")), mpx::ValueError);  // not UTF-8
}

TEST_CASE("dumps: items written inline keep the nesting limit, UTF-8 check and appended output") {
  // Containers nested n deep around a scalar: the scalar sits at depth n, and dumps refuses
  // depths beyond 1000 for scalars as for containers.
  auto nested_list = [](int n, py::Object inner) {
    for (int i = 0; i < n; ++i) inner = py::List{std::move(inner)};
    return inner;
  };
  auto nested_dict = [](int n, py::Object key, py::Object value) {
    py::Object o = py::Dict{{std::move(key), std::move(value)}};
    for (int i = 1; i < n; ++i) o = py::Dict{{"k", std::move(o)}};
    return o;
  };
  for (py::Object leaf : {py::Object("s"), py::Object(0.5), py::Object(7)}) {
    py::Object ok = nested_list(1000, leaf);
    CHECK(py::loads(py::dumps(ok), {.max_depth = 2000}) == ok);
    CHECK_THROWS_AS(py::dumps(nested_list(1001, leaf)), mpx::ValueError);
    CHECK_NOTHROW(py::dumps(nested_dict(1000, "key", leaf)));
    CHECK_THROWS_AS(py::dumps(nested_dict(1001, "key", leaf)), mpx::ValueError);
  }
  CHECK_THROWS_AS(py::dumps(py::Dict{{std::string("\xff"), 1.0}}), mpx::ValueError);
  CHECK_THROWS_AS(py::dumps(py::Dict{{"k", std::string("a\xc3")}}), mpx::ValueError);
  CHECK_THROWS_AS(py::dumps(py::List{1.0, std::string("\xed\xa0")}), mpx::ValueError);
  CHECK(py::loads(py::dumps(py::List{"\xc3\xa9", 2.5})) == py::Object(py::List{"\xc3\xa9", 2.5}));

  // After what is already in the buffer, and with it left as it was when dumps throws.
  Bytes out = bytes_of("head");
  py::Object v = py::Dict{{"a", 1.5}, {"b", py::List{"c", 2}}};
  py::dumps_append(out, v);
  REQUIRE(out.size() > 4);
  CHECK(hex(Bytes(out.begin(), out.begin() + 4)) == hex(std::string_view("head")));
  CHECK(py::loads(std::span<const std::byte>(out).subspan(4)) == v);
  CHECK(hex(Bytes(out.begin() + 4, out.end())) == hex(py::dumps(v)));
  Bytes failed = bytes_of("head");
  CHECK_THROWS_AS(py::dumps_append(failed, py::List{1, std::string("\xff")}), mpx::ValueError);
  REQUIRE(failed.size() >= 4);
  CHECK(hex(Bytes(failed.begin(), failed.begin() + 4)) == hex(std::string_view("head")));
  Bytes small = bytes_of("x");
  py::dumps_append(small, py::none);  // a frame under 4 bytes is taken out again
  CHECK(hex(small) ==
        "78"
        "80044e2e");
}

TEST_CASE("Dict: str keys of every short length hash apart; set copies or moves") {
  py::Dict d;
  std::vector<std::string> keys;
  for (int len = 0; len <= 20; ++len)
    for (int i = 0; i < 50; ++i) {
      std::string k(static_cast<std::size_t>(len), 'a');
      for (int j = 0; j < len; ++j)
        k[static_cast<std::size_t>(j)] = static_cast<char>('a' + (i * 7 + j) % 26);
      keys.push_back(k);
    }
  for (std::size_t i = 0; i < keys.size(); ++i) d.set(keys[i], static_cast<int>(i));
  // A key met twice keeps its first place and takes the later value.
  std::vector<std::string> order;
  for (const auto& k : keys)
    if (std::find(order.begin(), order.end(), k) == order.end()) order.push_back(k);
  REQUIRE(d.size() == order.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    CHECK(d.keys()[i] == py::Object(order[i]));
    auto last = static_cast<int>(
        keys.size() - 1 -
        static_cast<std::size_t>(std::find(keys.rbegin(), keys.rend(), order[i]) - keys.rbegin()));
    const py::Object* v = d.find(order[i]);
    REQUIRE(v != nullptr);
    CHECK(*v == py::Object(last));
  }
  CHECK(py::Object("abcdefgh").hash() != py::Object("abcdefgi").hash());
  CHECK(py::Object("").hash() == py::Object(std::string()).hash());

  py::Object k("key"), val(py::List{1, 2});
  py::Dict e;
  e.set(k, val);  // copies: both still hold their values
  CHECK(k == py::Object("key"));
  CHECK(val == py::Object(py::List{1, 2}));
  e.set(std::move(k), py::Object(3));
  e.set(py::Object("other"), val);
  REQUIRE(e.size() == 2);
  CHECK(e.at("key") == py::Object(3));
  CHECK(e.at("other") == py::Object(py::List{1, 2}));
  py::Object moved_key("m"), moved_val("v");
  e.set(std::move(moved_key), std::move(moved_val));
  CHECK(e.at("m") == py::Object("v"));
  CHECK_THROWS_AS(e.set(py::Object(py::Dict{}), py::Object(1)), mpx::ValueError);
}

TEST_CASE("Object: Python's equality and hashing, ordered dict, get and visit") {
  CHECK(py::Object(1) == py::Object(1.0));
  CHECK(py::Object(true) == py::Object(1));
  CHECK(py::Object(1).hash() == py::Object(1.0).hash());
  CHECK_FALSE(py::Object(py::List{1}) == py::Object::tuple({1}));
  CHECK(py::Object(py::Set{1, 2}) == py::Object::frozenset(py::Set{2, 1}));
  CHECK(py::Object(py::Bytearray{bytes_of("a")}) == py::Object::bytes("a"));
  CHECK_FALSE(py::Object(std::int64_t{9007199254740993}) == py::Object(9007199254740992.0));

  py::Dict d{{"b", 1}, {"a", 2}};
  d.set("b", 3);  // keeps its place
  d.set(1, "int");
  d.set(1.0, "float");  // the same key, as in Python
  REQUIRE(d.size() == 3);
  CHECK(d.keys()[0] == py::Object("b"));
  CHECK(d.at("b") == py::Object(3));
  CHECK(d.at(1) == py::Object("float"));
  CHECK_THROWS_AS(d.at("zz"), mpx::KeyError);
  CHECK_THROWS_AS(d.set(py::List{}, 1), mpx::ValueError);
  CHECK(d.erase("b"));
  CHECK(d.keys()[0] == py::Object("a"));
  CHECK(d.find(1) != nullptr);

  py::Object o = py::Dict{{"x", py::List{1, "two", py::none}}};
  CHECK(o.kind() == py::Kind::dict);
  CHECK(o.get<py::Dict>().at("x").get<py::List>().size() == 3);
  CHECK_THROWS_AS(o.get<std::string>(), mpx::TypeMismatch);
  CHECK(o.visit([](const auto& v) { return std::is_same_v<std::decay_t<decltype(v)>, py::Dict>; }));
  py::Object moved = std::move(o);
  CHECK(o.is_none());  // NOLINT: a moved-from dict is None
  CHECK(py::repr(moved) == "{'x': [1, 'two', None]}");
  CHECK(py::repr(py::Object::tuple({1})) == "(1,)");
  CHECK(py::repr(py::Object(std::string("\xc3\xa9'"))) == "'\\xe9\\''");
  CHECK_THROWS_AS(py::Object(std::uint64_t{1} << 63), mpx::ValueError);
}

TEST_CASE("to_object / from_object: the standard mapping, TypeMismatch otherwise") {
  std::map<std::string, std::vector<double>> m{{"a", {1.5, 2}}, {"b", {}}};
  CHECK(py::from_object<decltype(m)>(py::to_object(m)) == m);
  std::tuple<int, std::string, std::optional<bool>> t{1, "x", std::nullopt};
  py::Object ot = py::to_object(t);
  CHECK(ot.kind() == py::Kind::tuple);
  CHECK(py::from_object<decltype(t)>(ot) == t);
  std::set<std::int64_t> s{3, 1, 2};
  CHECK(py::to_object(s).kind() == py::Kind::set);
  CHECK(py::from_object<std::set<std::int64_t>>(py::to_object(s)) == s);
  std::unordered_map<int, std::pair<Bytes, bool>> u{{7, {bytes_of("b"), true}}};
  CHECK(py::from_object<decltype(u)>(py::to_object(u)) == u);
  CHECK(py::from_object<double>(py::Object(3)) == 3.0);  // int -> float, as Python
  CHECK(py::to_object(std::monostate{}).is_none());

  CHECK_THROWS_AS(py::from_object<int>(py::Object(1.5)), mpx::TypeMismatch);
  CHECK_THROWS_AS(py::from_object<int>(py::Object(true)), mpx::TypeMismatch);
  CHECK_THROWS_AS(py::from_object<std::string>(py::Object::bytes("x")), mpx::TypeMismatch);
  CHECK_THROWS_AS(py::from_object<std::vector<int>>(py::Object(py::Dict{})), mpx::TypeMismatch);
  CHECK_THROWS_AS((py::from_object<std::pair<int, int>>(py::Object::tuple({1}))), mpx::TypeMismatch);
  CHECK_THROWS_AS(py::from_object<std::int8_t>(py::Object(300)), mpx::ValueError);
  CHECK_THROWS_AS(py::from_object<unsigned>(py::Object(-1)), mpx::ValueError);
}

TEST_CASE("exceptions as Python's server sends them") {
  Bytes b = py::dumps_exception(py::ExceptionType::KeyError, {"k"});
  py::Object e = py::loads(b);
  REQUIRE(e.kind() == py::Kind::exception);
  CHECK(e.get<py::Exception>().type == py::ExceptionType::KeyError);
  CHECK(py::repr(e) == "KeyError('k')");
  for (int p = 2; p <= 5; ++p)
    CHECK(py::loads(py::dumps_exception(py::ExceptionType::Empty, {}, p)) ==
          py::Object(py::Exception{py::ExceptionType::Empty, {}}));
}

namespace mpx::py::detail {  // lib/src/pickle/codec.cpp: the two paths of loads, one at a time
std::optional<Object> loads_fast_path(std::span<const std::byte> data, const LoadLimits& limits);
Object loads_general_path(std::span<const std::byte> data, const LoadLimits& limits);
}  // namespace mpx::py::detail

namespace {

// loads of `raw`: its repr, or nullopt for an error; the same from either path of loads (the
// fast one may decline, never differ).
template <std::size_t N>
std::optional<std::string> loads_both_ways(const char (&raw)[N], py::LoadLimits limits = {}) {
  Bytes in = bytes_of(std::string_view(raw, N - 1));
  std::optional<std::string> general, full;
  try {
    general = py::repr(py::detail::loads_general_path(in, limits));
  } catch (const mpx::Error&) {
  }
  try {
    full = py::repr(py::loads(in, limits));
  } catch (const mpx::Error&) {
  }
  CHECK(full == general);
  if (auto fast = py::detail::loads_fast_path(in, limits)) CHECK(py::repr(*fast) == general);
  return general;
}

}  // namespace

TEST_CASE("a batch of str -> scalar dict items, as the stack would have it") {
  using S = std::optional<std::string>;
  CHECK(loads_both_ways("\x80\x04}\x94(\x8c\x01"
                        "a\x94G\x3f\xf8\x00\x00\x00\x00\x00\x00\x8c\x01"
                        "bK\x05u.") == S("{'a': 1.5, 'b': 5}"));
  // Every scalar, a str value, BINUNICODE, a key set twice (its first place, its last value).
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01"
                        "aN\x8c\x01"
                        "b\x88\x8c\x01"
                        "c\x89\x8c\x01"
                        "dJ\xfe\xff\xff\xff"
                        "\x8c\x01"
                        "eM\x01\x02X\x01\x00\x00\x00"
                        "f\x8c\x02"
                        "xy\x8c\x01"
                        "aK\x07u.") == S("{'a': 7, 'b': True, 'c': False, 'd': -2, 'e': 513, 'f': 'xy'}"));
  // The memo: MEMOIZE, BINPUT, LONG_BINPUT of keys and str values, read back by BINGET.
  CHECK(loads_both_ways("\x80\x04](}(\x8c\x01"
                        "a\x94K\x01\x8c\x01"
                        "bq\x05\x8c\x01"
                        "cr\x07\x00\x00\x00uh\x00h\x05h\x07"
                        "e.") == S("[{'a': 1, 'b': 'c'}, 'a', 'b', 'c']"));
  // A FRAME between any two opcodes of the batch.
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01"
                        "a\x95\x01\x00\x00\x00\x00\x00\x00\x00K\x01\x95\x01\x00\x00\x00\x00\x00"
                        "\x00\x00u.") == S("{'a': 1}"));
  // Items above a MARK on a dict that end in something other than SETITEMS are not the dict's.
  CHECK(loads_both_ways("\x80\x04](}(\x8c\x01"
                        "aK\x01te.") == S("[{}, ('a', 1)]"));
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01"
                        "a}(\x8c\x01"
                        "bK\x01uu.") == S("{'a': {'b': 1}}"));
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01"
                        "aK\x01\x8c\x01"
                        "b](K\x02"
                        "eu.") == S("{'a': 1, 'b': [2]}"));
  // Errors: a key that is not UTF-8, a truncated batch, an odd one, a memoized scalar value.
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01\xffK\x01u.") == S());
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01"
                        "aK\x01") == S());
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01"
                        "aK\x01\x8c\x01"
                        "bu.") == S());
  CHECK(loads_both_ways("\x80\x04](}(\x8c\x01"
                        "aK\x01\x94uh\x00"
                        "e.") == S("[{'a': 1}, 1]"));
  CHECK(loads_both_ways("\x80\x04}(\x8c\x01"
                        "aK\x01u\x95\xff\x00\x00\x00\x00\x00\x00\x00.") == S());
  // The limits, as for items through the stack.
  const char two[] =
      "\x80\x04}(\x8c\x01"
      "aK\x01\x8c\x01"
      "bK\x02u.";
  for (std::size_t objects = 1; objects <= 6; ++objects)
    CHECK(loads_both_ways(two, {1000, objects}).has_value() == (objects >= 5));
  CHECK(loads_both_ways(two, {1, 0}) == S("{'a': 1, 'b': 2}"));  // scalars are no deeper
  CHECK(loads_both_ways(two, {2, 0}) == S("{'a': 1, 'b': 2}"));
}

TEST_CASE("hostile pickles: clean errors, never a crash or a wrong value") {
  using PE = mpx::ProtocolError;
  // Truncated at every length.
  Bytes good = py::dumps(py::Dict{{"a", py::List{1, 2.5, "x"}}, {"b", py::Object::bytes("yy")}});
  for (std::size_t n = 0; n < good.size(); ++n) {
    CAPTURE(n);
    CHECK_THROWS_AS(py::loads(std::span<const std::byte>(good.data(), n)), PE);
  }
  CHECK(error_of<PE>("\x80\x04N.junk").find("trailing") != std::string::npos);
  CHECK(error_of<PE>("\x80\x09N.").find("protocol 9") != std::string::npos);
  CHECK(error_of<PE>("\x80\x04\xff").find("unknown opcode 0xff") != std::string::npos);
  CHECK(error_of<PE>("\x80\x04h\x05.").find("memo") != std::string::npos);  // BINGET of nothing
  CHECK(error_of<PE>("\x80\x04r\xff\xff\xff\xff.").find("memo") !=
        std::string::npos);  // LONG_BINPUT, empty stack
  CHECK(error_of<PE>("\x80\x04N\x94j\xff\xff\xff\x7f.").find("memo") != std::string::npos);
  CHECK(error_of<PE>(std::string_view("\x80\x04X\xff\xff\xff\x7f"
                                      "ab.",
                                      11))
            .find("length") != std::string::npos);
  CHECK(error_of<PE>(std::string_view("\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff.", 12)).find("length") !=
        std::string::npos);
  CHECK(error_of<PE>(std::string_view("\x80\x04\x95\xff\xff\x00\x00\x00\x00\x00\x00N.", 13)).find("FRAME") !=
        std::string::npos);
  CHECK(error_of<PE>("\x80\x04\x30.").find("underflow") != std::string::npos);  // POP of nothing
  CHECK(error_of<PE>("\x80\x04NN\x61.").find("APPEND") != std::string::npos);   // APPEND to None
  CHECK(error_of<PE>("\x80\x04"
                     "e.")
            .find("MARK") != std::string::npos);
  CHECK(error_of<PE>("\x80\x04NN.").find("stack") != std::string::npos);
  CHECK(error_of<PE>("\x80\x02"
                     "ccollections\nOrderedDict\n)R.")
            .find("GLOBAL 'collections.OrderedDict'") != std::string::npos);
  CHECK(error_of<PE>("\x80\x04\x8c\x02os\x8c\x06system\x93.").find("STACK_GLOBAL 'os.system'") !=
        std::string::npos);
  CHECK(error_of<PE>("\x80\x04\x8c\x01x\x51.").find("BINPERSID") != std::string::npos);
  CHECK(error_of<PE>("\x80\x04}N\x62.").find("BUILD") != std::string::npos);
  CHECK(error_of<PE>("\x80\x02"
                     "c__builtin__\nset\n.")
            .find("a class") != std::string::npos);
  CHECK(error_of<PE>("\x80\x02"
                     "c__builtin__\nset\nN\x85R.")
            .find("not a list") != std::string::npos);
  CHECK(error_of<PE>("\x80\x02N)R.").find("REDUCE") != std::string::npos);
  CHECK(
      error_of<mpx::ValueError>(std::string_view("\x80\x04\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.", 14))
          .find("int64") != std::string::npos);
  CHECK(error_of<mpx::ValueError>("\x80\x04\x8c\x01\xff.").find("UTF-8") != std::string::npos);
  CHECK(error_of<mpx::ValueError>("\x80\x04}]N\x73.").find("unhashable") != std::string::npos);  // {[]: None}
  // A list that contains itself (Python: l = []; l.append(l)).
  CHECK(error_of<PE>("\x80\x04]\x94h\x00\x61.").find("cyclic") != std::string::npos);
  // A LONG1 with redundant sign bytes is still the small int it is.
  CHECK(py::loads(bytes_of(std::string_view("\x80\x04\x8a\x0a\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
                                            15))) == py::Object(5));
  // Duplicate dict keys: the last value wins, as in Python.
  CHECK(py::loads(bytes_of("\x80\x04}(K\x01K\x02K\x01K\x03u.")) == py::Object(py::Dict{{1, 3}}));

  auto u32 = [](int i) { return std::string(reinterpret_cast<const char*>(&i), 4); };
  // Deep nesting: refused past the depth limit, read below it, no stack overflow either way.
  std::string deep = "\x80\x04";
  for (int i = 0; i < 100000; ++i) deep += "]";
  for (int i = 0; i < 99999; ++i) deep += "a";
  deep += ".";
  CHECK(error_of<PE>(deep).find("nesting deeper") != std::string::npos);
  std::string ok = "\x80\x04";
  for (int i = 0; i < 900; ++i) ok += "]";
  for (int i = 0; i < 899; ++i) ok += "a";
  ok += ".";
  CHECK(py::loads(bytes_of(ok)).kind() == py::Kind::list);
  // Deep through the memo with a flat stack: l0 = []; l1 = [l0]; l2 = [l1] ...
  std::string chain = "\x80\x04]\x94";
  for (int i = 0; i < 5000; ++i) chain += "0]j" + u32(i) + "a\x94";
  chain += ".";
  CHECK(error_of<PE>(chain).find("nesting deeper") != std::string::npos);
  // Shared references multiplied: x(i+1) = [x(i), x(i)] 40 times is 2^40 copies: refused
  // by max_objects, not allocated.
  std::string bomb = "\x80\x04]\x94";
  for (int i = 0; i < 40; ++i) bomb += "0(j" + u32(i) + "j" + u32(i) + "l\x94";
  bomb += ".";
  CHECK(error_of<PE>(bomb).find("max_objects") != std::string::npos);
  // A 10^6-element list: one byte an item in the input, linear to load.
  std::string many = "\x80\x04](";
  many.append(1'000'000, 'N');
  many += "e.";
  CHECK(py::loads(bytes_of(many)).get<py::List>().size() == 1'000'000);
  // Random bytes after a valid header: an error or a value, never anything else.
  std::srand(7);
  for (int i = 0; i < 20000; ++i) {
    std::string junk = "\x80\x04";
    int n = std::rand() % 24;
    for (int k = 0; k < n; ++k) junk += static_cast<char>(std::rand() % 256);
    junk += ".";
    try {
      py::loads(bytes_of(junk));
    } catch (const mpx::Error&) {
    }
  }
}

TEST_CASE("recv<T>() of a pickle names it and points to recv_py; lookalike mpx payloads still decode") {
  auto [a, b] = mpx::Pipe();
  a.send_bytes(std::span<const std::byte>(py::dumps(py::none)));  // Python's Connection.send(None)
  try {
    (void)b.recv<int>();
    FAIL("no exception");
  } catch (const mpx::ProtocolError& e) {
    CHECK(std::string(e.what()).find("pickle") != std::string::npos);
    CHECK(std::string(e.what()).find("recv_py") != std::string::npos);
  }
  a.send_bytes(std::span<const std::byte>(py::dumps(py::Dict{{"a", 1}})));
  using StrInt = std::map<std::string, int>;
  CHECK_THROWS_AS(b.recv<StrInt>(), mpx::ProtocolError);
  // mpx payloads that start 80 02: an int 640, a string of 640 chars ending in '.'.
  a.send(640);
  CHECK(b.recv<int>() == 640);
  std::string s(640, 'x');
  s.back() = '.';
  a.send(s);
  CHECK(b.recv<std::string>() == s);
  a.send(std::int64_t{0x2e0000000002 * 0x10000 + 0x0480});  // 80 04 .. but no complete pickle
  CHECK(b.recv<std::int64_t>() == std::int64_t{0x2e0000000002 * 0x10000 + 0x0480});

  // The documented collision: an int32 whose four bytes are also pickled None is refused by
  // recv<T>(); recv_bytes() + decode<T>() still reads it.
  a.send(std::int32_t{776864896});
  CHECK_THROWS_AS(b.recv<std::int32_t>(), mpx::ProtocolError);
  a.send(std::int32_t{776864896});
  CHECK(mpx::decode<std::int32_t>(b.recv_bytes()) == 776864896);

  a.send_py(std::map<std::string, double>{{"x", 1.5}});
  CHECK(b.recv_object() == py::Object(py::Dict{{"x", 1.5}}));
  a.send_object(py::List{1, "2"}, 2);
  CHECK_THROWS_AS(b.recv_py<std::vector<int>>(), mpx::TypeMismatch);
}

namespace {

// One conversation with pickle_peer.py's serve(): its greeting, values of every kind echoed
// with every protocol, typed values both ways, and recv<T>() of a pickle refused.
void converse(mpx::Connection& c) {
  py::Object hello = c.recv_object();
  CHECK(py::repr(hello) == "{'hello': 'from python', 'n': 3, 'xs': [1.5, None, (True, b'b')]}");
  std::vector<py::Object> values{
      py::none,
      py::Dict{{"k", py::Set{1, 2}}, {py::Object::tuple({1, "t"}), py::Object::frozenset({"f"})}},
      py::List(3000, py::Object("many")),
      py::Object(py::Slice(1, py::none, -1)),
      py::Object(py::Bytearray{bytes_of("ba")}),
      py::Object(py::Exception{py::ExceptionType::Full, {}}),
  };
  for (int p = 2; p <= 5; ++p)
    for (const auto& v : values) {
      c.send_object(v, p);
      py::Object echo = c.recv_object();
      REQUIRE(echo.kind() == py::Kind::list);
      const auto& l = echo.get<py::List>();
      REQUIRE(l.size() == 3);
      CHECK(l[1] == py::Object(canon(v)));
      CHECK(canon(l[2]) == canon(v));
    }
  c.send_py(std::string("send dict"));
  CHECK(c.recv_py<std::map<std::string, double>>() == std::map<std::string, double>{{"a", 1.0}, {"b", 2.5}});
  c.send_py(std::string("send None"));
  CHECK_THROWS_WITH_AS(c.recv<int>(), doctest::Contains("recv_py"), mpx::ProtocolError);
  c.send_py(std::string("bye"));
}

struct Join {
  std::thread& t;
  ~Join() { t.join(); }
};

}  // namespace

TEST_CASE("Connection: objects with a Python multiprocessing.connection Client") {
  REQUIRE_PYTHON();
  mpx::test::TempDir dir("mpx-pickle");
  auto address = mpx::Address::unix_path(dir / "py.sock");
  mpx::Listener listener(address, 4, "pickle-key");
  std::string command = "python3 " + kPeer + " peer " + address.str() + " pickle-key";
  std::thread peer([&] { std::system(command.c_str()); });
  Join join{peer};
  mpx::Connection c = listener.accept(std::chrono::seconds(30));
  converse(c);
}

TEST_CASE("Connection: objects with a Python multiprocessing.connection Listener") {
  REQUIRE_PYTHON();
  mpx::test::TempDir dir("mpx-pickle");
  std::string path = dir / "pyl.sock";
  std::string command = "python3 " + kPeer + " listen " + path + " pickle-key";
  std::thread peer([&] { std::system(command.c_str()); });
  Join join{peer};
  std::optional<mpx::Connection> c;
  for (int i = 0; i < 300 && !c; ++i) {
    try {
      c.emplace(mpx::Client(mpx::Address::unix_path(path), "pickle-key"));
    } catch (const mpx::ConnectionError&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // not listening yet
    }
  }
  REQUIRE(c);
  converse(*c);
}
