// Framing and handshake as pure functions, checked against bytes Python produced:
//   struct.pack('!i', n), struct.pack('!i', -1) + struct.pack('!Q', n),
//   hmac.new(key, msg, digest).digest() (Python 3.11.7).
#include <mpx/connection.hpp>
#include <mpx/errors.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/proto/errors.hpp>
#include <mpx/proto/frame.hpp>
#include <mpx/proto/handshake.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <deque>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace mpx::proto;

namespace {

std::vector<std::byte> hex(std::string_view h) {
  std::vector<std::byte> out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<std::byte>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
  return out;
}

std::string to_hex(std::span<const std::byte> b) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (auto x : b) {
    auto v = std::to_integer<unsigned>(x);
    s += digits[v >> 4];
    s += digits[v & 15];
  }
  return s;
}

std::vector<std::byte> bytes(std::string_view s) {
  auto b = as_bytes(s);
  return {b.begin(), b.end()};
}

std::vector<std::byte> copy(std::span<const std::byte> b) { return {b.begin(), b.end()}; }

std::vector<std::byte> concat(std::vector<std::byte> a, std::span<const std::byte> b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const std::string kKey = "secret key";
// b'{sha256}' + bytes(range(40))
const auto kModernBody =
    hex("7b7368613235367d000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627");
// bytes(range(100, 120)): what Python 3.11 sends after #CHALLENGE#
const auto kLegacyBody = hex("6465666768696a6b6c6d6e6f7071727374757677");

}  // namespace

TEST_CASE("frame headers match struct.pack('!i') and the -1 + '!Q' form") {
  CHECK(to_hex(FrameHeader(0).bytes()) == "00000000");
  CHECK(to_hex(FrameHeader(1).bytes()) == "00000001");
  CHECK(to_hex(FrameHeader(255).bytes()) == "000000ff");
  CHECK(to_hex(FrameHeader(256).bytes()) == "00000100");
  CHECK(to_hex(FrameHeader(16384).bytes()) == "00004000");
  CHECK(to_hex(FrameHeader(0x7fffffff).bytes()) == "7fffffff");
  CHECK(to_hex(FrameHeader(0x80000000).bytes()) == "ffffffff0000000080000000");
  CHECK(to_hex(FrameHeader(0x0123456789abcdefULL).bytes()) == "ffffffff0123456789abcdef");
  CHECK(header_size(0x7fffffff) == 4);
  CHECK(header_size(0x80000000) == 12);
}

TEST_CASE("decode_header: incomplete, short form, long form, negative lengths") {
  auto h = hex("000000ff");
  for (std::size_t n = 0; n < 4; ++n) CHECK_FALSE(decode_header(std::span(h).first(n)).has_value());
  CHECK(decode_header(h) == DecodedHeader{255, 4});

  auto l = hex("ffffffff0123456789abcdef");
  for (std::size_t n = 0; n < 12; ++n) CHECK_FALSE(decode_header(std::span(l).first(n)).has_value());
  CHECK(decode_header(l) == DecodedHeader{0x0123456789abcdefULL, 12});
  // Python accepts a small length in the long form; so do we.
  CHECK(decode_header(hex("ffffffff0000000000000005")) == DecodedHeader{5, 12});

  CHECK_THROWS_AS(decode_header(hex("fffffffe")), ProtocolError);  // -2
  CHECK_THROWS_AS(decode_header(hex("80000000")), ProtocolError);  // INT_MIN
  CHECK_THROWS_WITH_AS(decode_header(hex("ffffff00")), doctest::Contains("negative length -256"),
                       ProtocolError);
}

TEST_CASE("append_frame/make_frame lay out header + payload") {
  auto payload = bytes("hello");
  CHECK(to_hex(make_frame(payload)) == "00000005" + to_hex(payload));
  std::vector<std::byte> batch;
  append_frame(batch, payload);
  append_frame(batch, {});
  CHECK(to_hex(batch) == "0000000568656c6c6f00000000");
}

TEST_CASE("FrameDecoder reassembles frames from any chunking") {
  std::vector<std::byte> stream;
  std::vector<std::vector<std::byte>> messages = {bytes(""), bytes("a"),
                                                  std::vector<std::byte>(70000, std::byte{7}), bytes("last")};
  for (auto& m : messages) append_frame(stream, m);
  // The long form for a short payload, as another implementation might send it.
  auto long_form = hex("ffffffff0000000000000003");
  stream.insert(stream.end(), long_form.begin(), long_form.end());
  auto xyz = bytes("xyz");
  stream.insert(stream.end(), xyz.begin(), xyz.end());
  messages.push_back(xyz);

  for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{4096}, stream.size()}) {
    CAPTURE(chunk);
    FrameDecoder d;
    std::vector<std::vector<std::byte>> got;
    std::size_t pos = 0;
    while (pos < stream.size()) {
      auto piece = std::span(stream).subspan(pos, std::min(chunk, stream.size() - pos));
      std::size_t used = 0;
      while (used < piece.size()) {
        used += d.feed(piece.subspan(used));
        if (d.ready()) got.push_back(d.take());
      }
      pos += piece.size();
    }
    if (d.ready()) got.push_back(d.take());
    CHECK(got == messages);
  }
}

TEST_CASE("FrameDecoder prepare/commit never reads past a frame") {
  std::vector<std::byte> stream;
  append_frame(stream, bytes("abc"));
  append_frame(stream, bytes("defg"));
  FrameDecoder d;
  std::size_t pos = 0;
  std::vector<std::string> got;
  while (pos < stream.size()) {
    auto dst = d.prepare();
    REQUIRE(dst.size() > 0);
    REQUIRE(pos + dst.size() <= stream.size());
    std::copy_n(stream.begin() + static_cast<std::ptrdiff_t>(pos), dst.size(), dst.begin());
    pos += dst.size();
    d.commit(dst.size());
    if (d.ready()) {
      auto m = d.take();
      got.emplace_back(reinterpret_cast<const char*>(m.data()), m.size());
    }
  }
  CHECK(got == std::vector<std::string>{"abc", "defg"});
}

TEST_CASE("FrameDecoder: a huge announced length is neither accepted over the limit nor allocated upfront") {
  FrameDecoder limited(1000);
  CHECK_THROWS_AS(limited.feed(FrameHeader(1001).bytes()), ProtocolError);

  FrameDecoder d;
  auto h = FrameHeader(std::uint64_t{1} << 40);  // a terabyte, announced
  CHECK(d.feed(h.bytes()) == h.size());
  CHECK(d.length() == std::uint64_t{1} << 40);
  CHECK(d.prepare().size() == kMaxUpfrontAllocation);
  d.commit(10);
  CHECK(d.prepare().size() == kMaxUpfrontAllocation - 10);
  CHECK_FALSE(d.ready());
  CHECK_THROWS_AS(d.take(), std::logic_error);
  d.reset();
  CHECK_FALSE(d.length().has_value());
}

TEST_CASE("FrameReader: several frames in one buffer, views into it, the tail left alone") {
  std::vector<std::byte> buf;
  append_frame(buf, bytes("one"));
  append_frame(buf, {});
  append_frame(buf, bytes("three"));
  const auto whole = buf.size();
  append_frame(buf, bytes("incomplete"));
  buf.resize(buf.size() - 1);
  FrameReader frames(buf);
  auto a = frames.next();
  REQUIRE(a);
  CHECK(copy(*a) == bytes("one"));
  CHECK(a->data() == buf.data() + 4);  // a view, not a copy
  auto b = frames.next();
  REQUIRE(b);
  CHECK(b->empty());
  auto c = frames.next();
  REQUIRE(c);
  CHECK(copy(*c) == bytes("three"));
  CHECK_FALSE(frames.next());
  CHECK(frames.consumed() == whole);
  CHECK_FALSE(frames.next());  // asking again changes nothing
  CHECK(frames.consumed() == whole);
}

TEST_CASE("FrameReader and peek_frame: a frame split at every byte boundary") {
  std::vector<std::byte> frame;
  append_frame(frame, bytes("split me anywhere"));
  for (std::size_t cut = 0; cut < frame.size(); ++cut) {
    std::span<const std::byte> part(frame.data(), cut);
    FrameReader frames(part);
    CHECK_FALSE(frames.next());
    CHECK(frames.consumed() == 0);
    auto f = peek_frame(part);
    CHECK(f.has_value() == (cut >= kShortHeaderSize));
    if (f) {
      CHECK_FALSE(f->complete());
      CHECK(f->missing() == frame.size() - cut);
      CHECK(f->size() == frame.size());
    }
  }
  FrameReader frames(frame);
  auto p = frames.next();
  REQUIRE(p);
  CHECK(copy(*p) == bytes("split me anywhere"));
  CHECK(frames.consumed() == frame.size());
}

TEST_CASE("FrameReader accepts the 12-byte long form for any length") {
  auto buf = concat(hex("ffffffff0000000000000003"), bytes("abc"));
  for (std::size_t cut = 0; cut < buf.size(); ++cut) {
    FrameReader partial(std::span<const std::byte>(buf.data(), cut));
    CHECK_FALSE(partial.next());
  }
  FrameReader frames(buf);
  auto p = frames.next();
  REQUIRE(p);
  CHECK(copy(*p) == bytes("abc"));
  CHECK(frames.consumed() == kLongHeaderSize + 3);
}

TEST_CASE("a header announcing more than the cap: refused before the payload, never waited for") {
  auto header = FrameHeader(std::uint64_t{1} << 40);
  FrameDecoder capped(1000);
  CHECK_THROWS_WITH_AS(capped.feed(header.bytes()), doctest::Contains("exceeds the limit of 1000"),
                       mpx::proto::ProtocolError);
  auto f = peek_frame(header.bytes());
  REQUIRE(f);
  CHECK(f->header.length == std::uint64_t{1} << 40);
  CHECK(f->missing() == std::uint64_t{1} << 40);
  CHECK_THROWS_AS(FrameReader(hex("fffffffe00")).next(), mpx::proto::ProtocolError);
}

TEST_CASE("begin_frame/end_frame: the header written last reads back, in place, several per buffer") {
  std::vector<std::byte> out = bytes("prefix");
  std::vector<std::string> messages{"", "x", std::string(70000, 'y'), "last"};
  for (const auto& m : messages) {
    auto at = begin_frame(out);
    CHECK(payload_start(at) == at + kShortHeaderSize);
    auto payload = bytes(m);
    out.insert(out.end(), payload.begin(), payload.end());
    end_frame(out, at);
  }
  std::vector<std::byte> expected = bytes("prefix");
  for (const auto& m : messages) append_frame(expected, bytes(m));
  CHECK(out == expected);
  FrameReader frames(std::span<const std::byte>(out).subspan(6));
  for (const auto& m : messages) {
    auto p = frames.next();
    REQUIRE(p);
    CHECK(copy(*p) == bytes(m));
  }
  CHECK(frames.consumed() == out.size() - 6);
}

TEST_CASE("proto's errors reach a library user as mpx's, message unchanged") {
  auto [a, b] = mpx::Pipe();
  auto bad = hex("fffffffe");  // a negative length other than -1
  REQUIRE(::write(a.fileno(), bad.data(), bad.size()) == 4);
  CHECK_THROWS_WITH_AS(b.recv_bytes(), doctest::Contains("negative length -2"), mpx::ProtocolError);

  // The codec's failure hook decides the type: proto's by default, the library's when it asks.
  std::vector<std::byte> short_message{std::byte{1}};
  CHECK_THROWS_AS(Reader(short_message).u64(), mpx::proto::ProtocolError);
  auto as_mpx = [](const char* what) { throw mpx::ProtocolError(what); };
  CHECK_THROWS_WITH_AS(Reader(short_message, as_mpx).u64(), "truncated message", mpx::ProtocolError);
}

TEST_CASE("grow_payload_buffer doubles after the upfront allowance and never exceeds the length") {
  CHECK(grow_payload_buffer(10, 0) == 10);
  CHECK(grow_payload_buffer(std::uint64_t{1} << 40, 0) == kMaxUpfrontAllocation);
  CHECK(grow_payload_buffer(std::uint64_t{1} << 40, kMaxUpfrontAllocation) == 2 * kMaxUpfrontAllocation);
  CHECK(grow_payload_buffer(kMaxUpfrontAllocation + 5, kMaxUpfrontAllocation) == kMaxUpfrontAllocation + 5);
}

TEST_CASE("HMAC known answers (Python hmac.new(b'secret key', body, digest))") {
  CHECK(to_hex(hmac(Digest::sha256, kKey, kModernBody)) ==
        "de660527caa52c2d8313422ff6496f5aa46b4ddfca5f20b8da5748f901d3dd5b");
  CHECK(to_hex(hmac(Digest::md5, kKey, kModernBody)) == "b60d7fd0e70a7da2749f805c65053205");
  CHECK(to_hex(hmac(Digest::md5, kKey, kLegacyBody)) == "316925bc6c3c42d0accaaf0bdeec1c0b");
  CHECK(to_hex(hmac(Digest::sha384, kKey, kModernBody)) ==
        "d1d5b5540fa8b27b177f256f812d1bacc95484ac2282b067eef33ffe167725a5d34f960d3953aa51df6338323b3f8ad8");
  CHECK(to_hex(hmac(Digest::sha512, kKey, kModernBody)) ==
        "f53f56dceee834f10d121df86eb42dad28c346dee08badfd43775f072b7bcf81e83e0d95f6df7919a2e2f2929563d1a83d7"
        "2633e323f05be41a88d15baab17d1");
  CHECK(to_hex(hmac(Digest::sha3_256, kKey, kModernBody)) ==
        "9c51ddc2e9513a6501a9822d7a462fc7d8b414f13c0f25f6eb015c71687025f2");
  CHECK(to_hex(hmac(Digest::sha3_384, kKey, kModernBody)) ==
        "e4e35db63df76499250292ff38541fc487149ac145ad971cf18159b91109c9020885e31f1d4305942d9045350f5fa25d");
  CHECK(to_hex(hmac(Digest::sha3_512, kKey, kModernBody)) ==
        "23c4688f3db6f6f8e1c47fd2a35ee534497702661c918e1eb02148beea278545c59bb292c42e9805fe64c5993fa0a42bd59"
        "39d467665c991b3d51139a9f6a125");
  CHECK(to_hex(hmac(Digest::blake2b, kKey, kModernBody)) ==
        "61b0dc804e46917d4b3b24425d9a857f80672514310bf12fcfd289663e526d34508ccdf000c65b0f7af3e7eb24ab9b5c9ad"
        "2ed3d3134d997ac7e4e36cf7358ff");
  CHECK(to_hex(hmac(Digest::blake2s, kKey, kModernBody)) ==
        "0fdbffe57c44f2549ab60efdc5a20058f72540c8102582b2bea9c327146e9c61");
  CHECK(to_hex(hmac(Digest::sha256, "", kModernBody)) ==
        "d18b190a737f779d3125c4a2dfddcebf933e2f2713bc92fbe386ca25df9fd7af");
}

TEST_CASE("digest names round-trip") {
  for (auto d : {Digest::md5, Digest::sha256, Digest::sha384, Digest::sha512, Digest::sha3_256,
                 Digest::sha3_384, Digest::sha3_512, Digest::blake2b, Digest::blake2s})
    CHECK(digest_from_name(digest_name(d)) == d);
  CHECK_FALSE(digest_from_name("sha1").has_value());
  CHECK(digest_name(Digest::sha3_256) == "sha3_256");
}

TEST_CASE("make_challenge: #CHALLENGE#{sha256} + 40 fresh random bytes") {
  auto a = make_challenge();
  auto b = make_challenge();
  REQUIRE(a.size() == 11 + 8 + 40);
  CHECK(std::string(reinterpret_cast<const char*>(a.data()), 19) == "#CHALLENGE#{sha256}");
  CHECK(a != b);
  auto c = make_challenge(Digest::sha512);
  CHECK(std::string(reinterpret_cast<const char*>(c.data()), 19) == "#CHALLENGE#{sha512}");
  CHECK(challenge_body(a).size() == 48);
}

TEST_CASE("create_response: the 3.12 form and the legacy MD5 form") {
  auto modern = concat(bytes("#CHALLENGE#"), kModernBody);
  CHECK(to_hex(create_response(kKey, modern)) ==
        "7b7368613235367dde660527caa52c2d8313422ff6496f5aa46b4ddfca5f20b8da5748f901d3dd5b");
  // A 20-byte body (Python <= 3.11): raw 16-byte HMAC-MD5, no prefix.
  auto legacy = concat(bytes("#CHALLENGE#"), kLegacyBody);
  CHECK(to_hex(create_response(kKey, legacy)) == "316925bc6c3c42d0accaaf0bdeec1c0b");
  // Another digest named in the challenge is answered with that digest.
  auto body512 = concat(bytes("{sha512}"), std::span(kModernBody).subspan(8));
  auto r = create_response(kKey, concat(bytes("#CHALLENGE#"), body512));
  CHECK(std::string(reinterpret_cast<const char*>(r.data()), 8) == "{sha512}");
  CHECK(r.size() == 8 + 64);
}

TEST_CASE("create_response rejects what CPython rejects") {
  CHECK_THROWS_WITH_AS(create_response(kKey, bytes("#WELCOME#")), doctest::Contains("expected a challenge"),
                       AuthenticationError);
  CHECK_THROWS_WITH_AS(create_response(kKey, concat(bytes("#CHALLENGE#"), std::span(kLegacyBody).first(19))),
                       doctest::Contains("too short"), AuthenticationError);
  // Neither a legacy length nor a known "{digest}" prefix.
  CHECK_THROWS_AS(create_response(kKey, concat(bytes("#CHALLENGE#{sha1}"), kLegacyBody)),
                  AuthenticationError);
  CHECK_THROWS_AS(create_response(kKey, concat(bytes("#CHALLENGE#"), std::vector<std::byte>(21))),
                  AuthenticationError);
  CHECK_THROWS_AS(create_response(kKey, concat(bytes("#CHALLENGE#{sha256"), kLegacyBody)),
                  AuthenticationError);
}

TEST_CASE("verify_response accepts every correct form and nothing else") {
  auto challenge = concat(bytes("#CHALLENGE#"), kModernBody);
  // What Python 3.12 (and mpx) sends.
  CHECK_NOTHROW(verify_response(
      kKey, challenge,
      hex("7b7368613235367dde660527caa52c2d8313422ff6496f5aa46b4ddfca5f20b8da5748f901d3dd5b")));
  // What Python 3.11 sends to our {sha256} challenge: raw HMAC-MD5 over the whole body.
  CHECK_NOTHROW(verify_response(kKey, challenge, hex("b60d7fd0e70a7da2749f805c65053205")));
  // The peer may pick another allowed digest.
  CHECK_NOTHROW(
      verify_response(kKey, challenge, concat(bytes("{sha512}"), hmac(Digest::sha512, kKey, kModernBody))));
  CHECK_NOTHROW(
      verify_response(kKey, challenge, concat(bytes("{md5}"), hmac(Digest::md5, kKey, kModernBody))));
  // Legacy challenge, legacy response.
  CHECK_NOTHROW(verify_response(kKey, concat(bytes("#CHALLENGE#"), kLegacyBody),
                                hex("316925bc6c3c42d0accaaf0bdeec1c0b")));

  auto bad = hex("7b7368613235367dde660527caa52c2d8313422ff6496f5aa46b4ddfca5f20b8da5748f901d3dd5c");
  CHECK_THROWS_WITH_AS(verify_response(kKey, challenge, bad), doctest::Contains("digest received was wrong"),
                       AuthenticationError);
  CHECK_THROWS_AS(verify_response("other key", challenge, hex("b60d7fd0e70a7da2749f805c65053205")),
                  AuthenticationError);
  // 20 unprefixed bytes are "legacy" but an MD5 is 16.
  CHECK_THROWS_WITH_AS(verify_response(kKey, challenge, std::vector<std::byte>(20)),
                       doctest::Contains("16 bytes"), AuthenticationError);
  CHECK_THROWS_AS(verify_response(kKey, challenge, concat(bytes("{sha256}"), std::vector<std::byte>(31))),
                  AuthenticationError);
  CHECK_THROWS_AS(verify_response(kKey, challenge, bytes("{sha1}0123456789012345678901")),
                  AuthenticationError);
  CHECK_THROWS_AS(verify_response(kKey, challenge, std::vector<std::byte>{}), AuthenticationError);
}

namespace {

// A scripted peer for the blocking handshake templates.
struct FakeConn {
  std::deque<std::vector<std::byte>> inbox;
  std::vector<std::vector<std::byte>> sent;
  std::function<void(FakeConn&)> on_send;
  void send_bytes(std::span<const std::byte> m) {
    sent.emplace_back(m.begin(), m.end());
    if (on_send) on_send(*this);
  }
  std::vector<std::byte> recv_bytes(std::optional<std::size_t> maxlength) {
    REQUIRE(maxlength == kMaxHandshakeMessage);
    REQUIRE_FALSE(inbox.empty());
    auto m = std::move(inbox.front());
    inbox.pop_front();
    return m;
  }
};

}  // namespace

TEST_CASE("deliver_challenge / answer_challenge over a scripted peer") {
  SUBCASE("deliver: a good answer gets #WELCOME#") {
    FakeConn c;
    c.on_send = [](FakeConn& self) {
      if (self.sent.size() == 1) self.inbox.push_back(create_response(kKey, self.sent[0]));
    };
    deliver_challenge(c, kKey);
    REQUIRE(c.sent.size() == 2);
    CHECK(is_welcome(c.sent[1]));
  }
  SUBCASE("deliver: a wrong answer gets #FAILURE# and AuthenticationError") {
    FakeConn c;
    c.on_send = [](FakeConn& self) {
      if (self.sent.size() == 1) self.inbox.push_back(create_response("wrong", self.sent[0]));
    };
    CHECK_THROWS_AS(deliver_challenge(c, kKey), AuthenticationError);
    REQUIRE(c.sent.size() == 2);
    CHECK(c.sent[1] == bytes("#FAILURE#"));
  }
  SUBCASE("answer: legacy challenge, then #WELCOME#") {
    FakeConn c;
    c.inbox.push_back(concat(bytes("#CHALLENGE#"), kLegacyBody));
    c.inbox.push_back(bytes("#WELCOME#"));
    answer_challenge(c, kKey);
    REQUIRE(c.sent.size() == 1);
    CHECK(to_hex(c.sent[0]) == "316925bc6c3c42d0accaaf0bdeec1c0b");
  }
  SUBCASE("answer: #FAILURE# is an AuthenticationError") {
    FakeConn c;
    c.inbox.push_back(concat(bytes("#CHALLENGE#"), kModernBody));
    c.inbox.push_back(bytes("#FAILURE#"));
    CHECK_THROWS_WITH_AS(answer_challenge(c, kKey), doctest::Contains("rejected"), AuthenticationError);
  }
  SUBCASE("answer: garbage instead of a challenge") {
    FakeConn c;
    c.inbox.push_back(bytes("GET / HTTP/1.1"));
    CHECK_THROWS_AS(answer_challenge(c, kKey), AuthenticationError);
    CHECK(c.sent.empty());
  }
}
