// The exceptions mpx throws. Every one derives from mpx::Error and is
// constructible from a message, like std::runtime_error.
#pragma once

#include <stdexcept>
#include <string>

namespace mpx {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct TimeoutError : Error {
  using Error::Error;
};  // a timed wait ran out
struct Empty : Error {
  using Error::Error;
};  // get() on an empty queue
struct Full : Error {
  using Error::Error;
};  // put() on a full bounded queue
struct KeyError : Error {
  using Error::Error;
};  // missing key / attribute
struct ValueError : Error {
  using Error::Error;
};  // a bad argument
struct StateError : Error {
  using Error::Error;
};  // the object is in the wrong state
struct IndexError : Error {
  using Error::Error;
};  // index out of range
struct ConnectionError : Error {
  using Error::Error;
};  // connect/bind failed, peer gone
struct ConnectionClosed : ConnectionError {
  using ConnectionError::ConnectionError;
};  // EOF
struct AuthenticationError : Error {
  using Error::Error;
};  // authkey handshake failed
struct ProtocolError : Error {
  using Error::Error;
};  // malformed or oversized frame
struct TypeMismatch : Error {
  using Error::Error;
};  // named object opened as another type
struct BrokenBarrierError : Error {
  using Error::Error;
};
struct FileExistsError : Error {
  using Error::Error;
};  // a shared memory block of that name exists already
struct FileNotFoundError : Error {
  using Error::Error;
};  // no shared memory block of that name

// An exception thrown by user code in another process.
struct RemoteError : Error {
  using Error::Error;
  RemoteError(std::string type_name, std::string message)
      : Error(type_name + ": " + message), type_name_(std::move(type_name)), message_(std::move(message)) {}
  const std::string& type_name() const { return type_name_; }
  const std::string& message() const { return message_; }

 private:
  std::string type_name_;
  std::string message_;
};

// The worker running a task died; exitcode() follows Process: -N = killed by signal N.
struct WorkerLost : Error {
  using Error::Error;
  WorkerLost(const std::string& what, int exitcode) : Error(what), exitcode_(exitcode) {}
  int exitcode() const { return exitcode_; }

 private:
  int exitcode_ = 0;
};

}  // namespace mpx
