// serialize/ — the codec facade (<mpx/serialize.hpp>): cereal by default, Boost.Serialization on
// opt-in. Owns the compiled half of the bounded Boost archive. Includes only <mpx/serialize.hpp>
// and <mpx/errors.hpp>.
#include <mpx/serialize.hpp>

// The bounded Boost archive is a derived archive: its template members are compiled here once.
#include <boost/archive/impl/archive_serializer_map.ipp>
#include <boost/archive/impl/basic_binary_iarchive.ipp>
#include <boost/archive/impl/basic_binary_iprimitive.ipp>

namespace mpx::detail {

void throw_decode_error(const char* what) { throw ProtocolError(std::string("mpx::decode: ") + what); }

void BoostInputArchive::check_count(std::uint64_t n) const {
  if (n > buf_.remaining()) throw ProtocolError("mpx::decode: element count exceeds the input");
}

void BoostInputArchive::load(std::string& s) {
  std::size_t n = 0;
  load(n);
  check_count(n);
  s.resize(n);
  if (n) load_binary(s.data(), n);
}

void BoostInputArchive::load(std::wstring& s) {
  std::size_t n = 0;
  load(n);
  check_count(static_cast<std::uint64_t>(n) * sizeof(wchar_t));
  s.resize(n);
  if (n) load_binary(s.data(), n * sizeof(wchar_t));
}

void BoostInputArchive::load_override(boost::serialization::collection_size_type& t) {
  base::load_override(t);
  check_count(static_cast<std::uint64_t>(static_cast<std::size_t>(t)));
}

}  // namespace mpx::detail

template class boost::archive::basic_binary_iprimitive<mpx::detail::BoostInputArchive, char,
                                                       std::char_traits<char>>;
template class boost::archive::basic_binary_iarchive<mpx::detail::BoostInputArchive>;
template class boost::archive::detail::archive_serializer_map<mpx::detail::BoostInputArchive>;
