// The dispatcher's out-of-line parts: task records, lane bookkeeping, the window's average.
#include "pool/dispatcher.hpp"

#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include <algorithm>
#include <cstring>

#include "pool/wire.hpp"

namespace mpx::detail {

TaskPtr TaskRec::make(TaskSubmission& t) {
  auto r = std::make_shared<TaskRec>();
  r->frame = std::move(t.frame);
  std::uint64_t len = r->frame.size() - proto::kLongHeaderSize;
  auto h = proto::encode_header(len);
  r->off = proto::kLongHeaderSize - h.size();
  std::memcpy(r->frame.data() + r->off, h.bytes().data(), h.size());
  r->frame[proto::kLongHeaderSize] = static_cast<std::byte>(poolwire::kTask);
  r->sink = std::move(t.sink);
  r->tag = t.tag;
  return r;
}

void fail_all(std::vector<TaskPtr>& recs, const std::exception_ptr& e) {
  for (auto& r : recs) r->sink->on_failure(r->tag, e);
  recs.clear();
}

TaskPtr Lane::take_answer(std::uint64_t seq) {
  if (inflight.empty() || inflight.front()->seq != seq) return nullptr;
  TaskPtr rec = std::move(inflight.front());
  inflight.pop_front();
  inflight_bytes -= rec->frame.size();
  ++answered;
  return rec;
}

void Lane::drop_all(std::vector<TaskPtr>& out) {
  out.insert(out.end(), inflight.begin(), inflight.end());
  inflight.clear();
  queued.clear();
  inflight_bytes = 0;
}

void Dispatcher::record(std::uint64_t ns) noexcept {
  double x = static_cast<double>(ns);
  avg_ns_ = have_avg_ ? avg_ns_ + (x - avg_ns_) / 8 : x;
  have_avg_ = true;
  unsigned window;
  if (avg_ns_ >= kLongTaskNs)
    window = 1;
  else
    window =
        static_cast<unsigned>(std::clamp(kTargetQueueNs / std::max(avg_ns_, 1.0), 2.0, double{kMaxWindow}));
  window_.store(window, std::memory_order_relaxed);
}

}  // namespace mpx::detail
