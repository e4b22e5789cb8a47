// Named task queues on the manager server.
#include "server_impl.hpp"

namespace mpx::detail::server {

std::unique_ptr<Obj> make_task_queue(Core&, std::uint64_t, std::string, std::string) {
  throw ValueError("mpx: named task queues are not served by this manager");
}

}  // namespace mpx::detail::server
