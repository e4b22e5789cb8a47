// libFuzzer target for the unpickler (py::loads), which reads what a Python peer sends: any
// input either loads or throws an mpx::Error; what loads also dumps with every protocol and
// loads back to the same value; and what the one-pass fast path accepts, the general path
// accepts too, as the same value.
//   fuzz_pickle -max_total_time=60 corpus/
#include <mpx/errors.hpp>
#include <mpx/pickle.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <span>

namespace mpx::py::detail {  // lib/src/pickle/codec.cpp: the two paths of loads, one at a time
std::optional<Object> loads_fast_path(std::span<const std::byte> data, const LoadLimits& limits);
Object loads_general_path(std::span<const std::byte> data, const LoadLimits& limits);
}  // namespace mpx::py::detail

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace py = mpx::py;
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  py::LoadLimits limits;
  limits.max_depth = 200;
  limits.max_objects = 100000;
  py::Object o;
  try {
    o = py::loads(in, limits);
  } catch (const mpx::Error&) {
    return 0;
  }
  const std::string text = py::repr(o);
  if (auto fast = py::detail::loads_fast_path(in, limits)) {
    py::Object general;
    try {
      general = py::detail::loads_general_path(in, limits);
    } catch (const mpx::Error&) {
      std::abort();  // the fast path took what the general path refuses
    }
    if (py::repr(general) != py::repr(*fast)) std::abort();
  }
  for (int protocol = 2; protocol <= 5; ++protocol) {
    mpx::Bytes b = py::dumps(o, protocol);  // a loaded value always dumps
    if (py::repr(py::loads(b, limits)) != text) std::abort();
  }
  return 0;
}
