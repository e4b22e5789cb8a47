// Timeouts: std::nullopt waits forever; any integral std::chrono duration converts.
#pragma once

#include <chrono>
#include <optional>

namespace mpx {

using Timeout = std::optional<std::chrono::nanoseconds>;
inline constexpr std::nullopt_t forever = std::nullopt;

namespace detail {

// A Timeout fixed to a point in time, so loops that wait several times keep one budget.
class Deadline {
 public:
  using clock = std::chrono::steady_clock;
  Deadline(Timeout timeout)  // NOLINT(google-explicit-constructor): built from every Timeout
      : at_(timeout ? std::optional(clock::now() + std::max(*timeout, std::chrono::nanoseconds{0}))
                    : std::nullopt) {}
  static Deadline never() { return Deadline(forever); }
  bool infinite() const { return !at_; }
  bool expired() const { return at_ && clock::now() >= *at_; }
  std::optional<clock::time_point> at() const { return at_; }
  // Time left, clamped at zero; nullopt when infinite.
  Timeout remaining() const {
    if (!at_) return forever;
    return std::max(std::chrono::nanoseconds{0}, *at_ - clock::now());
  }
  // For poll(2): -1 = infinite, else milliseconds left rounded up.
  int poll_ms() const {
    if (!at_) return -1;
    auto left = std::chrono::ceil<std::chrono::milliseconds>(*at_ - clock::now()).count();
    return left <= 0 ? 0 : left > 0x7fffffff ? 0x7fffffff : static_cast<int>(left);
  }

 private:
  std::optional<clock::time_point> at_;
};

// Python's Condition.wait_for, for any condition: wait(remaining) until pred() holds or the
// timeout passes; returns pred()'s last value.
template <class Wait, class Pred>
bool wait_for_predicate(Wait&& wait, Pred&& pred, Timeout timeout) {
  Deadline deadline(timeout);
  bool result = pred();
  while (!result && !deadline.expired()) {
    wait(deadline.remaining());
    result = pred();
  }
  return result;
}

}  // namespace detail
}  // namespace mpx
