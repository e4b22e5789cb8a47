// Groups of mpx::Process children for the tests that need several at once.
#pragma once

#include <mpx/process.hpp>

#include <chrono>
#include <vector>

namespace mpx::test {

// n daemon children running f(i), started: if a test fails early, their ~Process terminates
// them, so nothing outlives the test.
template <class F>
std::vector<mpx::Process> start_children(int n, F f) {
  std::vector<mpx::Process> children;
  for (int i = 0; i < n; ++i) {
    children.emplace_back(mpx::Process::Options{"", true}, f, i);
    children.back().start();
  }
  return children;
}

// True when every child ended within `limit` with exit code 0.
inline bool join_all(std::vector<mpx::Process>& children,
                     std::chrono::seconds limit = std::chrono::seconds(60)) {
  bool ok = true;
  for (auto& c : children) ok = c.join(limit) && c.exitcode() == 0 && ok;
  return ok;
}

}  // namespace mpx::test
