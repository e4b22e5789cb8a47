#include <mpx/proto/codec.hpp>

#include <string>

namespace mpx::proto {

void Reader::manager_protocol_error(const char* what) {
  throw ProtocolError(std::string("mpx manager protocol: ") + what);
}

}  // namespace mpx::proto
