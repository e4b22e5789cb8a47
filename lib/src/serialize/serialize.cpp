// serialize/ — the codec facade (<mpx/serialize.hpp>): cereal by default, Boost.Serialization on
// opt-in. Owns Boost's concrete archives: a binary output archive appending to Bytes, and a
// binary input archive over a span that bounds every string length and collection count by the
// bytes left. Types reach them through Boost's polymorphic archive interface, so users' code
// compiles against that interface only. Includes only <mpx/serialize.hpp> and <mpx/errors.hpp>.
#include <mpx/serialize.hpp>

#include <boost/archive/binary_iarchive_impl.hpp>
#include <boost/archive/binary_oarchive.hpp>
#include <boost/archive/detail/polymorphic_iarchive_route.hpp>
#include <boost/archive/detail/polymorphic_oarchive_route.hpp>
#include <boost/archive/detail/register_archive.hpp>
#include <boost/serialization/array_optimization.hpp>
#include <boost/serialization/collection_size_type.hpp>

#include <cstring>
#include <istream>
#include <ostream>
#include <streambuf>
#include <string_view>

// The bounded input archive is a derived archive: its template members are compiled here once.
#include <boost/archive/impl/archive_serializer_map.ipp>
#include <boost/archive/impl/basic_binary_iarchive.ipp>
#include <boost/archive/impl/basic_binary_iprimitive.ipp>

namespace mpx::detail {
namespace {

class BytesWriteBuf : public std::streambuf {
 public:
  explicit BytesWriteBuf(Bytes& out) : out_(out) {}

 protected:
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    auto* p = reinterpret_cast<const std::byte*>(s);
    out_.insert(out_.end(), p, p + n);
    return n;
  }
  int_type overflow(int_type ch) override {
    if (!traits_type::eq_int_type(ch, traits_type::eof())) out_.push_back(static_cast<std::byte>(ch));
    return traits_type::not_eof(ch);
  }

 private:
  Bytes& out_;
};

class SpanReadBuf : public std::streambuf {
 public:
  explicit SpanReadBuf(std::span<const std::byte> in) {
    // std::streambuf's get area is char*, though it is only ever read through.
    char* b = const_cast<char*>(reinterpret_cast<const char*>(in.data()));
    setg(b, b, b + in.size());
  }
  std::size_t remaining() const { return static_cast<std::size_t>(egptr() - gptr()); }
  bool at_end() const { return gptr() == egptr(); }
};

}  // namespace

class BoostInputArchive
    : public boost::archive::binary_iarchive_impl<BoostInputArchive, char, std::char_traits<char>> {
  using base = boost::archive::binary_iarchive_impl<BoostInputArchive, char, std::char_traits<char>>;
  friend class boost::archive::detail::interface_iarchive<BoostInputArchive>;
  friend class boost::archive::basic_binary_iarchive<BoostInputArchive>;
  friend class boost::archive::basic_binary_iprimitive<BoostInputArchive, char, std::char_traits<char>>;
  friend class boost::archive::load_access;

 public:
  // The polymorphic route constructs its archive from a stream.
  BoostInputArchive(std::istream& is, unsigned flags)
      : base(*is.rdbuf(), flags), buf_(static_cast<SpanReadBuf&>(*is.rdbuf())) {}

  using base::load;
  void load(std::string& s) {
    std::size_t n = 0;
    load(n);
    check_count(n);
    s.resize(n);
    if (n) load_binary(s.data(), n);
  }
  void load(std::wstring& s) {
    std::size_t n = 0;
    load(n);
    check_count(static_cast<std::uint64_t>(n) * sizeof(wchar_t));
    s.resize(n);
    if (n) load_binary(s.data(), n * sizeof(wchar_t));
  }

  // Through the polymorphic interface a collection's count arrives as a plain unsigned integer;
  // the one sign that it is a count is the name Boost's collection loaders give it.
  void load_start(const char* name) {
    counting_ = name && std::string_view(name) == "count";
    base::load_start(name);
  }
  void load_end(const char* name) {
    counting_ = false;
    base::load_end(name);
  }
  void load(unsigned long& t) {
    base::load(t);
    if (counting_) check_count(t);
  }
  void load(unsigned long long& t) {
    base::load(t);
    if (counting_) check_count(t);
  }

 private:
  // Every element takes at least one byte, so a count larger than what is left is a lie:
  // refuse it before the container allocates.
  void check_count(std::uint64_t n) const {
    if (n > buf_.remaining()) throw ProtocolError("mpx::decode: element count exceeds the input");
  }

  SpanReadBuf& buf_;
  bool counting_ = false;
};

namespace {

constexpr unsigned kBoostFlags = boost::archive::no_header | boost::archive::no_codecvt;

}  // namespace

void throw_decode_error(const char* what) { throw ProtocolError(std::string("mpx::decode: ") + what); }

void boost_save(Bytes& out, const void* value, BoostSave save) {
  BytesWriteBuf buf(out);
  std::ostream os(&buf);
  boost::archive::detail::polymorphic_oarchive_route<boost::archive::binary_oarchive> ar(os, kBoostFlags);
  save(ar, value);
}

void boost_load(std::span<const std::byte> in, void* value, BoostLoad load) {
  SpanReadBuf buf(in);
  std::istream is(&buf);
  boost::archive::detail::polymorphic_iarchive_route<BoostInputArchive> ar(is, kBoostFlags);
  load(ar, value);
  if (!buf.at_end()) throw ProtocolError("mpx::decode: trailing bytes after the value");
}

}  // namespace mpx::detail

BOOST_SERIALIZATION_REGISTER_ARCHIVE(mpx::detail::BoostInputArchive)
BOOST_SERIALIZATION_USE_ARRAY_OPTIMIZATION(mpx::detail::BoostInputArchive)

template class boost::archive::basic_binary_iprimitive<mpx::detail::BoostInputArchive, char,
                                                       std::char_traits<char>>;
template class boost::archive::basic_binary_iarchive<mpx::detail::BoostInputArchive>;
template class boost::archive::detail::archive_serializer_map<mpx::detail::BoostInputArchive>;
