// ipc/ — Python objects on a Connection (send_object/recv_object, and recv<T>'s refusal of a
// pickle): the pickle codec (pickle/) over the frames of connection.cpp.
#include <mpx/connection.hpp>
#include <mpx/pickle.hpp>

#include <string>

namespace mpx {

void Connection::send_object(const py::Object& value, int protocol) {
  Bytes& buffer = encode_buffer();
  py::dumps_append(buffer, value, protocol);
  send_bytes(std::span<const std::byte>(buffer));
  release_encode_buffer();
}

py::Object Connection::recv_object(const py::LoadLimits& limits) { return py::loads(recv_view({}), limits); }

namespace detail {

void refuse_pickle(std::span<const std::byte> message, const char* why) {
  throw ProtocolError("mpx: recv<T>(): the message is a pickle (protocol " +
                      std::to_string(static_cast<unsigned>(message[1])) +
                      ", as Python's Connection.send writes; it " + why +
                      "): use recv_object() or recv_py<T>() for messages from Python");
}

bool reads_as_pickle(std::span<const std::byte> message) {
  try {
    py::loads(message);
    return true;
  } catch (const ValueError&) {
    return true;  // a pickle whose value does not fit (an int beyond int64 ...)
  } catch (const Error&) {
    return false;
  }
}

}  // namespace detail
}  // namespace mpx
