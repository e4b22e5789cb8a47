// The serve loop shared by mpx::Server, the private Manager() process and mpxd.
#pragma once

#include "server/object_server.hpp"

#include <mpx/connection.hpp>

#include <functional>
#include <mutex>
#include <vector>

namespace mpx::detail {

// Lets another thread stop a running serve loop.
struct ServeControl {
  std::mutex m;
  std::function<void()> stop;  // set while serving
  bool stop_requested = false;
};

// Serves on `listener` until one of `signals` arrives, a client's allowed shutdown request,
// or control->stop(); then drains the connections and returns. `ready` runs once the
// server accepts connections and the signals are handled.
void serve_listener(Listener& listener, ServerOptions options, const std::vector<int>& signals,
                    const std::function<void()>& ready, ServeControl* control);

}  // namespace mpx::detail
