// Shared mappings a forkserver child can be given: the process layer's side of
// <mpx/detail/shm.hpp>'s registry.
#pragma once

#include <mpx/detail/transfer.hpp>

namespace mpx::detail {

// From now on mappings are made by fd (the fork server is starting).
void share_mappings_by_fd() noexcept;
// In a freshly forked child.
void shared_mappings_after_fork() noexcept;

}  // namespace mpx::detail
