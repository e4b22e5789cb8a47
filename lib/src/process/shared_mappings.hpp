// Shared mappings a forkserver child can be given: the process layer's side of
// <mpx/detail/shm.hpp>'s registry.
#pragma once

#include <mpx/detail/transfer.hpp>

namespace mpx::detail {

// From now on mappings are made by fd (the fork server is starting).
void share_mappings_by_fd() noexcept;
// The same for good, in forked children too: the program chose spawn, whose children have no
// snapshot of anything.
void share_mappings_for_spawn() noexcept;
// In a freshly forked child.
void shared_mappings_after_fork() noexcept;
// In a spawned child, before its target is decoded: the starter's mapping m (fd included, which
// stays open) is at `here` in this process. Handles into it are translated by
// shared_state_here, and the child may pass them on to children of its own.
void adopt_received_mapping(const SharedMappingRef& m, void* here);

}  // namespace mpx::detail
