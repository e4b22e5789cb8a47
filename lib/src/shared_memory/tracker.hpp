// The resource tracker: unlinks the shared memory blocks a process tree created and left behind
// once every process of the tree has ended (killed ones included), as Python's does.
//
// One tracker process per tree, started by the first track(): it holds one end of a socket
// pair, the tree the other (inherited by every child forked afterwards). When the last process
// of the tree ends, the tracker reads end-of-file, unlinks what is still registered, and exits.
#pragma once

#include <string_view>

namespace mpx::detail::shm_tracker {

// Registers a block this process created (starting the tracker on first use). Throws Error if
// the tracker cannot be started.
void track(std::string_view name);
// Forgets a block (it was unlinked). Never throws.
void untrack(std::string_view name) noexcept;

}  // namespace mpx::detail::shm_tracker
