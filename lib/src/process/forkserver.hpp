// The fork server and spawn (see <mpx/context.hpp>): what process.cpp, forkserver.cpp and
// spawn.cpp share.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include <mpx/detail/fork.hpp>
#include <mpx/process.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/serialize.hpp>

namespace mpx::detail {

// Whether children are watched through pidfds (pidfd_open, Linux 5.3) rather than pipes; decided
// once per process. MPX_NO_PIDFD=1 in the environment forces the pipes, so tests cover them.
bool have_pidfd();

// What the server needs to fork one child: who it is, whose child it counts as, and its target.
struct ForwardedStart {
  std::string name;
  bool daemon = false;
  std::string identity;
  ProcessInfo parent;                  // the process that called start(), not the server
  sigset_t mask{};                     // the caller's signal mask, which the child runs with
  Bytes target;                        // encode_target's bytes; empty for a Process without a target
  std::vector<SharedMappingRef> maps;  // what the arguments' handles need mapped in the child
  std::vector<int> fds;                // descriptors the child is given: passed_fd(i) there
};

// The request's fields (all but the descriptors) in the order both start methods send them.
void write_forwarded(proto::Writer& w, const ForwardedStart& request);
// Throws ProtocolError on a malformed request; the mappings' and the passed fds are left at -1.
ForwardedStart read_forwarded(proto::Reader& in);

// Shared mappings one start may hand over (one descriptor each), descriptors it may pass, and all
// descriptors one message may carry: for the fork server, status pipe, working directory and
// three standard streams too.
inline constexpr std::size_t kMaxMaps = 64;
inline constexpr std::size_t kMaxPassedFds = 4;
inline constexpr std::size_t kMaxFds = 5 + kMaxMaps + kMaxPassedFds;

// In a child started by forkserver or spawn: descriptor i of its request's `fds` (-1 if there is
// no such one). The library's own children use it (the pool's spawner gets its control socket).
int passed_fd(std::size_t i) noexcept;
void set_passed_fds(std::vector<int> fds);

// Starts the child `request` describes by forkserver or spawn, as Process::start does: the
// caller's identity, signal mask and flushed standard streams go with it. The request's target,
// mappings and fds are the caller's (mappings with fd -1 are dropped under forkserver: they are
// in the server's snapshot; under spawn they are the caller's error to refuse).
std::shared_ptr<ChildProcess> start_forwarded(StartMethod method, ForwardedStart& request);

// Descriptor plumbing for the start methods' sockets (forkserver.cpp).
void close_fd(int fd) noexcept;
// Closes every descriptor from `from` up, but those in `keep`.
void close_from(int from, std::span<const int> keep = {}) noexcept;
bool write_all(int fd, const void* data, std::size_t n);
bool read_all(int fd, void* data, std::size_t n);
// Sends n bytes, the first of them with the nfds (<= kMaxFds) descriptors.
bool send_with_fds(int sock, const void* data, std::size_t n, const int* fds, std::size_t nfds);
// Reads exactly n bytes, the first of them with the descriptors sent alongside (CLOEXEC here).
bool recv_with_fds(int sock, void* data, std::size_t n, int* fds, std::size_t& nfds);

// In the parent: has the server fork the child, starting the server first if needed.
// Throws mpx::Error when the server cannot be started or reached.
std::shared_ptr<ChildProcess> forkserver_start_child(const ForwardedStart& request);
// Starts the server now, if it is not running (set_start_method(forkserver)).
void forkserver_ensure_started();
// In a freshly forked child: the parent's server is not this process's to use.
void forkserver_forget_after_fork() noexcept;

// process.cpp, for forkserver.cpp:
// The parent's handle on a child the server forked (see ChildProcess::Forwarded).
std::shared_ptr<ChildProcess> make_forwarded_child(pid_t pid, int status_fd, int signal_fd);
// In the server's fresh child, once it holds only its standard streams: becomes the child the
// request describes, runs its target and exits as a forked Process child does.
[[noreturn]] void forwarded_child_main(const ForwardedStart& request, pid_t server);
// Forks the server itself (a die-with-parent helper that does not count as a started child).
std::shared_ptr<ChildProcess> fork_server_process(ChildFn fn, void* ctx);
// 0..255 for an exit status, -N for a fatal signal N.
int exitcode_from_status(int status);

// Spawn (spawn.cpp): the child is a fresh image of this executable, a direct child of the caller.
// `default_method` becomes the child's get_start_method(), as a forkserver child inherits it.
std::shared_ptr<ChildProcess> spawn_start_child(const ForwardedStart& request, StartMethod default_method);
// In a spawned child, from a library initializer before the program's own: reads the request
// from the descriptor(s) named by the marker's value, becomes the child and never returns.
[[noreturn]] void spawned_child_main(const char* marker_value);
inline constexpr const char* kSpawnMarker = "MPX_SPAWNED";
// In a spawned child: its starter's default start method becomes its own (a fork server is
// started only when first used).
void inherit_start_method(StartMethod method) noexcept;

// process.cpp, for spawn.cpp: starts a direct child with launch(ctx, sentinel_write_end), which
// returns its pid (or -1 with errno set). sentinel_write_end is -1 when the sentinel is a pidfd;
// otherwise the child must hold that pipe end open for its life. Runs launch on the thread that
// forks die-with-parent children when die_with_parent and the caller is not the main thread, so
// PR_SET_PDEATHSIG in the child means "the process died".
using LaunchFn = pid_t (*)(void* ctx, int sentinel_write_end);
std::shared_ptr<ChildProcess> launch_direct_child(bool die_with_parent, LaunchFn launch, void* ctx);

}  // namespace mpx::detail
