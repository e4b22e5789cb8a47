// mpx::get_logger() and mpx::log_to_stderr(): the library's own spdlog logger, open to the
// user's sinks, with a level that children forked later keep.
#include <doctest/doctest.h>
#include <mpx/logging.hpp>
#include <mpx/process.hpp>
#include <support.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <sstream>

namespace {

// Restores the logger's sinks and level when a case ends.
struct LoggerState {
  LoggerState() : sinks(mpx::get_logger().sinks()), level(mpx::get_logger().level()) {}
  ~LoggerState() {
    mpx::get_logger().sinks() = sinks;
    mpx::log_to_stderr(level);
  }
  std::vector<spdlog::sink_ptr> sinks;
  spdlog::level::level_enum level;
};

std::size_t stderr_sinks() {
  auto& sinks = mpx::get_logger().sinks();
  return static_cast<std::size_t>(std::count_if(sinks.begin(), sinks.end(), [](const spdlog::sink_ptr& s) {
    return dynamic_cast<spdlog::sinks::stderr_sink_mt*>(s.get()) != nullptr;
  }));
}

}  // namespace

TEST_CASE("get_logger is the logger mpx writes to: a sink added there sees the library's warnings") {
  LoggerState restore;
  CHECK(mpx::get_logger().name() == "mpx");
  std::ostringstream out;
  mpx::get_logger().sinks().push_back(std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  mpx::log_to_stderr(spdlog::level::warn);

  mpx::Process p([] {});
  p.start();
  int status = 0;
  REQUIRE(::waitpid(p.pid(), &status, 0) == p.pid());  // reaped behind the Process's back
  p.join();
  CHECK_FALSE(p.exitcode().has_value());
  CHECK(out.str().find("was reaped elsewhere") != std::string::npos);
}

TEST_CASE("log_to_stderr sets the level, keeps one stderr sink, and children forked later keep the level") {
  LoggerState restore;
  mpx::get_logger().sinks().clear();
  CHECK(stderr_sinks() == 0);
  mpx::log_to_stderr();
  CHECK(stderr_sinks() == 1);
  mpx::log_to_stderr(spdlog::level::debug);
  CHECK(stderr_sinks() == 1);
  CHECK(mpx::get_logger().level() == spdlog::level::debug);

  mpx::Process child([] { ::_exit(static_cast<int>(mpx::get_logger().level())); });
  child.start();
  child.join(std::chrono::seconds(30));
  CHECK(child.exitcode() == static_cast<int>(spdlog::level::debug));

  mpx::log_to_stderr(spdlog::level::err);
  mpx::Process child2([] { ::_exit(static_cast<int>(mpx::get_logger().level())); });
  child2.start();
  child2.join(std::chrono::seconds(30));
  CHECK(child2.exitcode() == static_cast<int>(spdlog::level::err));
}
