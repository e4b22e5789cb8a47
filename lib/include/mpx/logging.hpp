// The library's log, as Python's multiprocessing.get_logger() and log_to_stderr().
//
//   mpx::log_to_stderr(spdlog::level::info);   // what pools, managers and servers do, on stderr
//   mpx::get_logger().sinks().push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>("mpx.log"));
//
// It is an spdlog logger named "mpx", writing to stderr at level warn unless MPX_LOG_LEVEL
// (trace, debug, info, warn, error, critical, off) says otherwise. Include spdlog's headers to
// use it; this one only declares. A forked child starts a logger of its own with the parent's
// level and a stderr sink only: a sink added here may be locked by another of the parent's
// threads at the moment of the fork, and would stay locked in the child.
#pragma once

namespace spdlog {
class logger;
namespace level {
enum level_enum : int;
}  // namespace level
}  // namespace spdlog

namespace mpx {

// The logger every part of mpx writes to.
spdlog::logger& get_logger();
// Sets the level (kept by children forked later) and makes sure stderr is one of the sinks.
spdlog::logger& log_to_stderr(spdlog::level::level_enum level);
// Makes sure stderr is one of the sinks; the level stays.
spdlog::logger& log_to_stderr();

}  // namespace mpx
