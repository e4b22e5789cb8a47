// The built-in object kinds of the manager server, and registered types.
#include "server/internals.hpp"

#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <list>
#include <map>
#include <typeinfo>

namespace mpx::detail {

std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                             std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(mangled);
}

void rethrow_as_remote() {
  try {
    throw;
  } catch (const RemoteError& e) {
    throw RemoteError(e.type_name(), e.message());
  } catch (const std::exception& e) {
    throw RemoteError(demangle(typeid(e).name()), e.what());
  } catch (...) {
    throw RemoteError("unknown exception", "a non-standard exception was thrown");
  }
}

std::shared_ptr<RegisteredType> TypeRegistry::add(std::string name, std::string cpp_tag) {
  if (name.empty()) throw ValueError("mpx::register_type: the type name is empty");
  auto t = std::make_shared<RegisteredType>();
  t->name = name;
  t->cpp_tag = std::move(cpp_tag);
  std::lock_guard lock(m_);
  types_[std::move(name)] = t;
  return t;
}

std::shared_ptr<const RegisteredType> TypeRegistry::find(std::string_view name) const {
  std::lock_guard lock(m_);
  auto it = types_.find(name);
  return it == types_.end() ? nullptr : it->second;
}

std::shared_ptr<TypeRegistry> global_type_registry() {
  static const auto registry = std::make_shared<TypeRegistry>();
  return registry;
}

namespace server {

[[noreturn]] void bad_op(Op op, Kind kind) {
  throw ProtocolError("mpx manager protocol: operation " + std::to_string(static_cast<int>(op)) +
                      " does not apply to a " + std::string(proto::kind_name(kind)));
}

std::int64_t read_timeout(Reader& r) {
  std::int64_t timeout = r.i64();
  r.expect_end();
  // Refused here, before any handler parks: a parked request's timer takes every negative
  // value as "forever", so -2 would wait for ever where the caller meant something else.
  if (timeout < proto::kForever)
    throw ValueError("mpx: a timeout must be -1 (forever) or a non-negative number of nanoseconds, not " +
                     std::to_string(timeout));
  return timeout;
}

void reply_bool(Conn& c, bool value) {
  c.complete_ok([value](Writer& w) { w.boolean(value); });
}

namespace {

using proto::ErrorCode;

std::string_view as_sv(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
Bytes as_bytes(std::span<const std::byte> b) { return Bytes(b.begin(), b.end()); }

// `u64 n` then n blobs, as views into the request.
std::vector<std::span<const std::byte>> read_blobs(Reader& r) {
  std::uint64_t n = r.count(8);
  std::vector<std::span<const std::byte>> out;
  out.reserve(n);
  for (std::uint64_t i = 0; i < n; ++i) out.push_back(r.blob());
  return out;
}

// ---------------------------------------------------------------------------------------
// dict: insertion-ordered, keys compared by their encoded bytes

class DictObj final : public Obj {
 public:
  using Obj::Obj;

  bool handle(Conn&, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::dict_set: {
        auto k = r.blob();
        auto v = r.blob();
        r.expect_end();
        set(k, v);
        return false;
      }
      case Op::dict_get:
      case Op::dict_pop: {
        auto k = r.blob();
        r.expect_end();
        auto it = index_.find(as_sv(k));
        w.boolean(it != index_.end());
        if (it != index_.end()) {
          w.blob(it->second->value);
          if (op == Op::dict_pop) erase(it);
        }
        return false;
      }
      case Op::dict_contains: {
        auto k = r.blob();
        r.expect_end();
        w.boolean(index_.count(as_sv(k)) != 0);
        return false;
      }
      case Op::dict_erase: {
        auto k = r.blob();
        r.expect_end();
        auto it = index_.find(as_sv(k));
        w.boolean(it != index_.end());
        if (it != index_.end()) erase(it);
        return false;
      }
      case Op::dict_size:
        w.u64(entries_.size());
        return false;
      case Op::dict_keys:
        w.u64(entries_.size());
        for (auto& e : entries_) w.str(e.key);
        return false;
      case Op::dict_values:
        w.u64(entries_.size());
        for (auto& e : entries_) w.blob(e.value);
        return false;
      case Op::dict_items:
        w.u64(entries_.size());
        for (auto& e : entries_) {
          w.str(e.key);
          w.blob(e.value);
        }
        return false;
      case Op::dict_clear:
        index_.clear();
        entries_.clear();
        return false;
      case Op::dict_setdefault: {
        auto k = r.blob();
        auto v = r.blob();
        r.expect_end();
        auto it = index_.find(as_sv(k));
        if (it == index_.end()) {
          set(k, v);
          w.blob(v);
        } else {
          w.blob(it->second->value);
        }
        return false;
      }
      case Op::dict_popitem: {
        r.expect_end();
        if (entries_.empty()) throw KeyError("mpx: popitem(): the managed dict is empty");
        auto& last = entries_.back();  // LIFO, as Python's dict.popitem
        w.str(last.key);
        w.blob(last.value);
        erase(index_.find(std::string_view(last.key)));
        return false;
      }
      case Op::dict_update: {
        // Validate the whole request before changing anything.
        std::uint64_t n = r.count(16);
        std::vector<std::pair<std::span<const std::byte>, std::span<const std::byte>>> kv;
        kv.reserve(n);
        for (std::uint64_t i = 0; i < n; ++i) {
          auto k = r.blob();
          kv.emplace_back(k, r.blob());
        }
        r.expect_end();
        for (auto& [k, v] : kv) set(k, v);
        return false;
      }
      default:
        bad_op(op, kind());
    }
  }

 private:
  struct Entry {
    std::string key;
    Bytes value;
  };
  using Index = std::unordered_map<std::string_view, std::list<Entry>::iterator>;

  void set(std::span<const std::byte> k, std::span<const std::byte> v) {
    auto it = index_.find(as_sv(k));
    if (it != index_.end()) {
      it->second->value.assign(v.begin(), v.end());
      return;
    }
    entries_.push_back({std::string(as_sv(k)), as_bytes(v)});
    auto e = std::prev(entries_.end());
    index_.emplace(std::string_view(e->key), e);
  }
  void erase(Index::iterator it) {
    auto e = it->second;
    index_.erase(it);
    entries_.erase(e);
  }

 public:
  void rewrite_values(const Rewrite& key, const Rewrite& value) override {
    std::list<Entry> converted;
    for (const auto& e : entries_) {
      Bytes k = key(std::as_bytes(std::span(e.key.data(), e.key.size())));
      converted.push_back({std::string(reinterpret_cast<const char*>(k.data()), k.size()), value(e.value)});
    }
    Index index;
    for (auto it = converted.begin(); it != converted.end(); ++it)
      index.emplace(std::string_view(it->key), it);
    entries_.swap(converted);
    index_.swap(index);
  }

 private:
  std::list<Entry> entries_;
  Index index_;
};

// ---------------------------------------------------------------------------------------
// list

class ListObj final : public Obj {
 public:
  bool handle(Conn&, Op op, Reader& r, Writer& w) override {
    if (!allowed(op)) bad_op(op, kind());
    if (changes(op)) ++version_;  // a change that then fails bumps it too, which is harmless
    switch (op) {
      case Op::list_append: {
        auto v = r.blob();
        r.expect_end();
        items_.push_back(as_bytes(v));
        return false;
      }
      case Op::list_extend: {
        auto vs = read_blobs(r);
        r.expect_end();
        for (auto v : vs) items_.push_back(as_bytes(v));
        return false;
      }
      case Op::list_at: {
        auto i = index(r.i64());
        r.expect_end();
        w.blob(items_[i]);
        return false;
      }
      case Op::list_set: {
        auto i = index(r.i64());
        auto v = r.blob();
        r.expect_end();
        items_[i] = as_bytes(v);
        return false;
      }
      case Op::list_insert: {
        std::int64_t i = r.i64();
        auto v = r.blob();
        r.expect_end();
        auto n = static_cast<std::int64_t>(items_.size());
        if (i < 0) i = std::max<std::int64_t>(0, i + n);
        i = std::min(i, n);
        items_.insert(items_.begin() + i, as_bytes(v));
        return false;
      }
      case Op::list_pop: {
        std::int64_t raw = r.i64();
        r.expect_end();
        if (items_.empty()) throw IndexError("mpx: pop from an empty list");
        auto i = index(raw);
        w.blob(items_[i]);
        items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
        return false;
      }
      case Op::list_erase: {
        auto i = index(r.i64());
        r.expect_end();
        items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
        return false;
      }
      case Op::list_size:
        w.u64(items_.size());
        return false;
      case Op::list_clear:
        items_.clear();
        return false;
      case Op::list_snapshot:
        w.u64(items_.size());
        for (auto& v : items_) w.blob(v);
        return false;
      case Op::list_index:
      case Op::list_remove: {
        auto v = r.blob();
        r.expect_end();
        auto it = std::find_if(items_.begin(), items_.end(), [&](const Bytes& x) { return same(x, v); });
        if (it == items_.end())
          throw ValueError(op == Op::list_index ? "mpx: list.index(x): x not in list"
                                                : "mpx: list.remove(x): x not in list");
        if (op == Op::list_index)
          w.u64(static_cast<std::uint64_t>(it - items_.begin()));
        else
          items_.erase(it);
        return false;
      }
      case Op::list_count: {
        auto v = r.blob();
        r.expect_end();
        w.u64(static_cast<std::uint64_t>(
            std::count_if(items_.begin(), items_.end(), [&](const Bytes& x) { return same(x, v); })));
        return false;
      }
      case Op::list_reverse:
        r.expect_end();
        std::reverse(items_.begin(), items_.end());
        return false;
      case Op::list_snapshot_versioned:
        r.expect_end();
        w.u64(version_);
        w.u64(items_.size());
        for (auto& v : items_) w.blob(v);
        return false;
      case Op::list_permute:
        w.boolean(permute(r));
        return false;
      case Op::list_replace:
        w.boolean(replace(r));
        return false;
      default:
        bad_op(op, kind());
    }
  }

  ListObj(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag, std::string name,
          std::vector<Bytes> items = {})
      : Obj(owner, id, kind, std::move(tag), std::move(name)), items_(std::move(items)) {}

  void rewrite_values(const Rewrite&, const Rewrite& value) override {
    std::vector<Bytes> converted;
    converted.reserve(items_.size());
    for (const auto& v : items_) converted.push_back(value(v));
    items_.swap(converted);
    ++version_;
  }

 private:
  // An array (Python's Manager().Array) is a list of fixed length.
  bool allowed(Op op) const {
    return kind() != Kind::array || op == Op::list_at || op == Op::list_set || op == Op::list_size ||
           op == Op::list_snapshot;
  }
  static bool changes(Op op) {
    switch (op) {
      case Op::list_append:
      case Op::list_extend:
      case Op::list_set:
      case Op::list_insert:
      case Op::list_pop:
      case Op::list_erase:
      case Op::list_clear:
      case Op::list_remove:
      case Op::list_reverse:
        return true;
      default:
        return false;
    }
  }
  static bool same(const Bytes& x, std::span<const std::byte> v) {
    return x.size() == v.size() && std::equal(x.begin(), x.end(), v.begin());
  }
  // Sorting by value needs the values' C++ type, which only the client has: it reads a
  // versioned snapshot, sorts, and sends the order back; the order applies only if the list has
  // not changed since (false: the client tries again).
  bool permute(Reader& r) {
    std::uint64_t version = r.u64();
    std::uint64_t n = r.count(8);
    std::vector<std::size_t> order(n);
    for (auto& i : order) i = static_cast<std::size_t>(r.u64());
    r.expect_end();
    if (version != version_) return false;
    if (n != items_.size()) throw ValueError("mpx: list permutation of the wrong length");
    std::vector<bool> seen(n);
    for (auto i : order) {
      if (i >= n || seen[i]) throw ValueError("mpx: not a permutation of the list");
      seen[i] = true;
    }
    std::vector<Bytes> sorted;
    sorted.reserve(n);
    for (auto i : order) sorted.push_back(std::move(items_[i]));
    items_ = std::move(sorted);
    ++version_;
    return true;
  }
  // The same for edits a Python client works out on a snapshot (slice assignment and deletion):
  // the new contents apply only if the list has not changed since.
  bool replace(Reader& r) {
    std::uint64_t version = r.u64();
    std::vector<Bytes> items(r.count(8));
    for (auto& v : items) {
      auto b = r.blob();
      v.assign(b.begin(), b.end());
    }
    r.expect_end();
    if (version != version_) return false;
    items_ = std::move(items);
    ++version_;
    return true;
  }
  // Python's indexing: negative counts from the end; out of range is an IndexError.
  std::size_t index(std::int64_t i) const {
    auto n = static_cast<std::int64_t>(items_.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) throw IndexError("mpx: list index out of range");
    return static_cast<std::size_t>(i);
  }
  std::vector<Bytes> items_;
  std::uint64_t version_ = 0;
};

// ---------------------------------------------------------------------------------------
// value

class ValueObj final : public Obj {
 public:
  ValueObj(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag, std::string name,
           Bytes initial)
      : Obj(owner, id, kind, std::move(tag), std::move(name)), value_(std::move(initial)) {}

  void rewrite_values(const Rewrite&, const Rewrite& value) override { value_ = value(value_); }

  bool handle(Conn&, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::value_get:
        w.blob(value_);
        return false;
      case Op::value_set: {
        auto v = r.blob();
        r.expect_end();
        value_.assign(v.begin(), v.end());
        return false;
      }
      default:
        bad_op(op, kind());
    }
  }

 private:
  Bytes value_;
};

// ---------------------------------------------------------------------------------------
// namespace: attributes of any type, each remembering its type tag

class NamespaceObj final : public Obj {
 public:
  using Obj::Obj;

  bool handle(Conn&, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::ns_set: {
        std::string name(r.str());
        std::string tag(r.str());
        auto v = r.blob();
        r.expect_end();
        attrs_[std::move(name)] = {std::move(tag), as_bytes(v)};
        return false;
      }
      case Op::ns_get: {
        auto name = r.str();
        auto tag = r.str();
        r.expect_end();
        auto it = attrs_.find(name);
        if (it == attrs_.end())
          throw KeyError("mpx: the namespace has no attribute '" + std::string(name) + "'");
        if (it->second.first != tag)
          throw TypeMismatch("mpx: namespace attribute '" + std::string(name) + "' is a " + it->second.first +
                             ", not a " + std::string(tag));
        w.blob(it->second.second);
        return false;
      }
      case Op::ns_contains: {
        auto name = r.str();
        r.expect_end();
        w.boolean(attrs_.find(name) != attrs_.end());
        return false;
      }
      case Op::ns_erase: {
        auto name = r.str();
        r.expect_end();
        auto it = attrs_.find(name);
        w.boolean(it != attrs_.end());
        if (it != attrs_.end()) attrs_.erase(it);
        return false;
      }
      default:
        bad_op(op, kind());
    }
  }

 private:
  std::map<std::string, std::pair<std::string, Bytes>, std::less<>> attrs_;
};

// ---------------------------------------------------------------------------------------
// queue and joinable queue

class QueueObj final : public Obj {
 public:
  QueueObj(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag, std::string name,
           std::uint64_t maxsize)
      : Obj(owner, id, kind, std::move(tag), std::move(name)),
        maxsize_(maxsize),
        max_bytes_(owner.options().queue_max_bytes) {}

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::queue_put: {
        auto item = r.blob();
        std::int64_t timeout = read_timeout(r);
        check_item(item.size());
        if (putters_.empty() && has_room(item.size())) {
          push(as_bytes(item));
          pump();
          return false;
        }
        if (maxsize_ == 0) throw Full(budget_message(0, 1));
        if (timeout == 0) throw Full("mpx: the queue is full");
        wait_in(putters_, c, op, timeout);
        c.waiting().item = as_bytes(item);
        return true;
      }
      case Op::queue_put_many: {
        auto items = read_blobs(r);
        std::int64_t timeout = read_timeout(r);
        // A parked put_many remembers how many went in as a u32 (Park::saved).
        if (items.size() > std::numeric_limits<std::uint32_t>::max())
          throw ValueError("mpx: put_many of " + std::to_string(items.size()) + " items; at most " +
                           std::to_string(std::numeric_limits<std::uint32_t>::max()) + " per call");
        for (auto item : items) check_item(item.size());
        std::size_t done = 0;
        if (putters_.empty())
          while (done < items.size() && has_room(items[done].size())) push(as_bytes(items[done++]));
        pump();
        if (done == items.size()) return false;
        // An unbounded queue never waits: past its byte budget it refuses at once.
        if (maxsize_ == 0) throw Full(budget_message(done, items.size()));
        if (timeout == 0)
          throw Full("mpx: the queue is full (" + std::to_string(done) + " of " +
                     std::to_string(items.size()) + " items were put)");
        Park& p = c.park(*this, op, timeout);
        for (std::size_t i = done; i < items.size(); ++i) p.items.push_back(as_bytes(items[i]));
        p.n = 0;
        p.saved = static_cast<std::uint32_t>(done);
        putters_.push(&c);
        return true;
      }
      case Op::queue_get:
      case Op::queue_get_many: {
        std::uint64_t most = op == Op::queue_get_many ? r.u64() : 1;
        std::int64_t timeout = read_timeout(r);
        if (op == Op::queue_get_many && most == 0) throw ValueError("mpx: get_many of zero items");
        if (!items_.empty()) {
          write_items(op, most, w);
          pump();
          return false;
        }
        if (timeout == 0) throw Empty("mpx: the queue is empty");
        wait_in(getters_, c, op, timeout);
        c.waiting().n = most;
        return true;
      }
      case Op::queue_size:
        w.u64(items_.size());
        return false;
      case Op::queue_empty:
        w.boolean(items_.empty());
        return false;
      case Op::queue_full:
        w.boolean(!has_room(0) || bytes_ >= max_bytes_);
        return false;
      case Op::queue_task_done:
        if (kind() != Kind::joinable_queue) bad_op(op, kind());
        if (unfinished_ == 0) throw StateError("mpx: task_done() called more times than there were items");
        if (--unfinished_ == 0) {
          auto joiners = std::move(joiners_);
          joiners_ = {};
          for (Conn* j : joiners) j->complete_ok([](Writer& jw) { jw.boolean(true); });
        }
        return false;
      case Op::queue_join: {
        if (kind() != Kind::joinable_queue) bad_op(op, kind());
        std::int64_t timeout = read_timeout(r);
        if (unfinished_ == 0 || timeout == 0) {
          w.boolean(unfinished_ == 0);
          return false;
        }
        return wait_in(joiners_, c, op, timeout);
      }
      default:
        bad_op(op, kind());
    }
  }

  void on_timeout(Conn& c) override {
    Park* p = &c.waiting();
    switch (p->op) {
      case Op::queue_put:
        putters_.remove(&c);
        c.complete_error({ErrorCode::full, {}, "mpx: the queue is full", 0});
        break;
      case Op::queue_put_many: {
        putters_.remove(&c);
        auto put = p->saved + p->n, total = p->saved + p->items.size();
        c.complete_error({ErrorCode::full,
                          {},
                          "mpx: the queue is full (" + std::to_string(put) + " of " + std::to_string(total) +
                              " items were put)",
                          0});
        break;
      }
      case Op::queue_join:
        joiners_.remove(&c);
        c.complete_ok([](Writer& w) { w.boolean(false); });
        break;
      default:
        getters_.remove(&c);
        c.complete_error({ErrorCode::empty, {}, "mpx: the queue is empty", 0});
        break;
    }
  }
  void drop_waiter(Conn& c) override {
    putters_.remove(&c) || getters_.remove(&c) || joiners_.remove(&c);
    pump();
  }
  void fail_waiters(const ErrorInfo& e) override {
    putters_.fail_all(e);
    getters_.fail_all(e);
    joiners_.fail_all(e);
  }
  // Items still waiting in parked puts are converted too: they are the queue's values to be.
  void rewrite_values(const Rewrite&, const Rewrite& value) override {
    std::deque<Bytes> converted;
    std::size_t bytes = 0;
    for (const auto& v : items_) {
      converted.push_back(value(v));
      bytes += converted.back().size();
    }
    std::vector<std::pair<Bytes*, Bytes>> parked;
    for (Conn* pc : putters_) {
      Park& p = pc->waiting();
      if (p.op == Op::queue_put)
        parked.emplace_back(&p.item, value(p.item));
      else
        for (std::size_t i = p.n; i < p.items.size(); ++i)
          parked.emplace_back(&p.items[i], value(p.items[i]));
    }
    items_.swap(converted);
    bytes_ = bytes;
    for (auto& [slot, v] : parked) *slot = std::move(v);
  }

 private:
  // Room for one more item of `size` bytes: under maxsize (if any) and within the byte budget.
  bool has_room(std::size_t size) const noexcept {
    return (maxsize_ == 0 || items_.size() < maxsize_) && size <= max_bytes_ - bytes_;
  }
  // An item the budget could never take would wait forever (or always fail): refuse it now.
  void check_item(std::size_t size) const {
    if (size > max_bytes_)
      throw ValueError("mpx: an item of " + std::to_string(size) +
                       " bytes is larger than the managed queue's byte budget of " +
                       std::to_string(max_bytes_) + " bytes");
  }
  std::string budget_message(std::size_t done, std::size_t total) const {
    return "mpx: the managed queue holds " + std::to_string(bytes_) + " bytes, its byte budget is " +
           std::to_string(max_bytes_) + " (" + std::to_string(done) + " of " + std::to_string(total) +
           " items were put)";
  }
  void push(Bytes b) {
    bytes_ += b.size();
    items_.push_back(std::move(b));
    ++unfinished_;
  }
  void pop_into(Writer& w) {
    w.blob(items_.front());
    bytes_ -= items_.front().size();
    items_.pop_front();
  }
  void write_items(Op op, std::uint64_t most, Writer& w) {
    if (op == Op::queue_get) {
      pop_into(w);
      return;
    }
    std::uint64_t n = std::min<std::uint64_t>(most, items_.size());
    w.u64(n);
    for (std::uint64_t i = 0; i < n; ++i) pop_into(w);
  }
  // Moves items to parked getters and parked putters' items into the queue until neither can.
  void pump() {
    for (bool progress = true; progress;) {
      progress = false;
      while (!getters_.empty() && !items_.empty()) {
        Conn* g = getters_.pop();
        Park* p = &g->waiting();
        g->complete_ok([&](Writer& w) { write_items(p->op, p->n, w); });
        progress = true;
      }
      while (!putters_.empty()) {
        Conn* pc = putters_.front();
        Park* p = &pc->waiting();
        if (p->op == Op::queue_put) {
          if (!has_room(p->item.size())) break;
          push(std::move(p->item));
        } else {
          while (p->n < p->items.size() && has_room(p->items[p->n].size())) {
            push(std::move(p->items[p->n++]));
            progress = true;
          }
          if (p->n < p->items.size()) break;
        }
        progress = true;
        putters_.pop();
        pc->complete_ok([](Writer&) {});
      }
    }
  }

  std::uint64_t maxsize_;
  std::size_t max_bytes_;
  std::size_t bytes_ = 0;  // encoded bytes of the items in the queue
  std::deque<Bytes> items_;
  WaitList getters_, putters_, joiners_;
  std::uint64_t unfinished_ = 0;
};

// ---------------------------------------------------------------------------------------
// An object whose blocked requests wait in one list, in arrival order, and get `false` when
// their time runs out (lock, rlock, semaphore, event).
class WaitingObj : public Obj {
 public:
  using Obj::Obj;
  void on_timeout(Conn& c) override {
    waiters_.remove(&c);
    reply_bool(c, false);
  }
  void drop_waiter(Conn& c) override { waiters_.remove(&c); }
  void fail_waiters(const ErrorInfo& e) override { waiters_.fail_all(e); }

 protected:
  WaitList waiters_;
};

// ---------------------------------------------------------------------------------------
// lock and rlock (owned by a connection: one client thread); a condition is an rlock with a
// second wait list (below)

class LockObj : public WaitingObj {
 public:
  using WaitingObj::WaitingObj;

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::acquire: {
        std::int64_t timeout = read_timeout(r);
        if (!owner_) {
          take(&c, 1);
        } else if (kind() != Kind::lock && owner_ == &c) {
          // The depth is a u32 (a condition wait carries it in Park::saved): never wrap to 0.
          if (depth_ == std::numeric_limits<std::uint32_t>::max())
            throw ValueError("mpx: " + std::string(proto::kind_name(kind())) +
                             " acquired recursively too often");
          ++depth_;
        } else if (timeout == 0) {
          w.boolean(false);
          return false;
        } else {
          return wait_in(waiters_, c, op, timeout);
        }
        w.boolean(true);
        return false;
      }
      case Op::release:
        r.u32();
        r.expect_end();
        check_owner(c, "release of");
        if (--depth_ == 0) hand_off();
        return false;
      default:
        bad_op(op, kind());
    }
  }
  void release_held(Conn& c) override {
    if (owner_ == &c) hand_off();
  }

 protected:
  void check_owner(const Conn& c, const char* what) const {
    if (owner_ != &c)
      throw StateError("mpx: " + std::string(what) + (kind() == Kind::rlock ? " an " : " a ") +
                       std::string(proto::kind_name(kind())) + " this thread does not hold");
  }
  void take(Conn* c, std::uint32_t depth) {
    owner_ = c;
    depth_ = depth;
    c->hold(id());
  }
  // The first waiter gets the lock: a plain acquire at depth 1, a condition wait back at the
  // depth it released (answering whether it was notified).
  void hand_off() {
    owner_ = nullptr;
    depth_ = 0;
    if (waiters_.empty()) return;
    Conn* next = waiters_.pop();
    const Park& p = next->waiting();
    bool cond_wait = p.op == Op::cond_wait;
    bool result = cond_wait ? p.result : true;
    take(next, cond_wait ? p.saved : 1);
    reply_bool(*next, result);
  }

  Conn* owner_ = nullptr;
  std::uint32_t depth_ = 0;
};

// ---------------------------------------------------------------------------------------
// semaphore and bounded semaphore

class SemaphoreObj final : public WaitingObj {
 public:
  SemaphoreObj(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag, std::string name,
               std::uint32_t value)
      : WaitingObj(owner, id, kind, std::move(tag), std::move(name)), value_(value), initial_(value) {}

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::acquire: {
        std::int64_t timeout = read_timeout(r);
        if (value_ > 0 && waiters_.empty()) {
          take(&c);
          w.boolean(true);
          return false;
        }
        if (timeout == 0) {
          w.boolean(false);
          return false;
        }
        return wait_in(waiters_, c, op, timeout);
      }
      case Op::release: {
        std::uint64_t n = r.u32();
        r.expect_end();
        if (n == 0) throw ValueError("mpx: a semaphore release count must be at least 1");
        if (kind() == Kind::bounded_semaphore && value_ + n > initial_)
          throw StateError("mpx: BoundedSemaphore released too many times");
        auto it = held_.find(&c);
        std::uint64_t returned = it == held_.end() ? 0 : std::min(it->second, n);
        // The value goes out as a u32 (sem value), and the slots other connections hold come
        // back to it when they close: refuse a release that could ever make it exceed that.
        if (value_ + held_total_ - returned + n > kMaxValue)
          throw ValueError("mpx: releasing " + std::to_string(n) + " would raise the semaphore above " +
                           std::to_string(kMaxValue) + " (value " + std::to_string(value_) + ", " +
                           std::to_string(held_total_) + " held)");
        value_ += n;
        if (it != held_.end()) {
          it->second -= returned;
          held_total_ -= returned;
          if (it->second == 0) held_.erase(it);
        }
        wake();
        return false;
      }
      case Op::sem_value:
        w.u32(static_cast<std::uint32_t>(value_));  // at most kMaxValue: see release
        return false;
      default:
        bad_op(op, kind());
    }
  }
  void release_held(Conn& c) override {
    auto it = held_.find(&c);
    if (it == held_.end()) return;
    value_ += it->second;
    held_total_ -= it->second;
    if (kind() == Kind::bounded_semaphore) value_ = std::min(value_, initial_);
    held_.erase(it);
    wake();
  }

 private:
  void take(Conn* c) {
    --value_;
    ++held_[c];
    ++held_total_;
    c->hold(id());
  }
  void wake() {
    while (value_ > 0 && !waiters_.empty()) {
      Conn* c = waiters_.pop();
      take(c);
      reply_bool(*c, true);
    }
  }

  static constexpr std::uint64_t kMaxValue = std::numeric_limits<std::uint32_t>::max();
  // value_ + held_total_ <= kMaxValue always (the initial value is a u32; release keeps it).
  std::uint64_t value_, initial_;
  std::uint64_t held_total_ = 0;  // the sum of held_
  std::unordered_map<Conn*, std::uint64_t> held_;
};

// ---------------------------------------------------------------------------------------
// condition (over its own recursive lock, as Python's Condition())

class ConditionObj final : public LockObj {
 public:
  using LockObj::LockObj;

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::cond_wait: {
        std::int64_t timeout = read_timeout(r);
        check_owner(c, "wait() on");
        Park& p = c.park(*this, op, timeout);
        p.saved = depth_;
        p.result = true;
        cond_waiters_.push(&c);
        hand_off();
        return true;
      }
      case Op::cond_notify:
      case Op::cond_notify_all: {
        std::uint64_t n = op == Op::cond_notify ? r.u32() : cond_waiters_.size();
        r.expect_end();
        check_owner(c, "notify() on");
        for (; n > 0 && !cond_waiters_.empty(); --n) reacquire(*cond_waiters_.pop());
        return false;
      }
      default:
        return LockObj::handle(c, op, r, w);
    }
  }
  void on_timeout(Conn& c) override {
    Park& p = c.waiting();
    if (p.op == Op::acquire) {
      LockObj::on_timeout(c);
      return;
    }
    // A timed-out wait still takes the lock back before it returns false (as in Python).
    cond_waiters_.remove(&c);
    p.result = false;
    reacquire(c);
    if (!owner_) hand_off();
  }
  void drop_waiter(Conn& c) override { waiters_.remove(&c) || cond_waiters_.remove(&c); }
  void fail_waiters(const ErrorInfo& e) override {
    waiters_.fail_all(e);
    cond_waiters_.fail_all(e);
  }

 private:
  // A waiter that was notified (or timed out) now queues for the lock, with no time limit.
  void reacquire(Conn& c) {
    c.waiting().reacquiring = true;
    c.rearm(-1);
    waiters_.push(&c);
  }

  WaitList cond_waiters_;
};

// ---------------------------------------------------------------------------------------
// event

class EventObj final : public WaitingObj {
 public:
  using WaitingObj::WaitingObj;

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::event_is_set:
        w.boolean(flag_);
        return false;
      case Op::event_set: {
        flag_ = true;
        auto waiters = std::move(waiters_);
        waiters_ = {};
        for (Conn* waiter : waiters) reply_bool(*waiter, true);
        return false;
      }
      case Op::event_clear:
        flag_ = false;
        return false;
      case Op::event_wait: {
        std::int64_t timeout = read_timeout(r);
        if (flag_ || timeout == 0) {
          w.boolean(flag_);
          return false;
        }
        return wait_in(waiters_, c, op, timeout);
      }
      default:
        bad_op(op, kind());
    }
  }

 private:
  bool flag_ = false;
};

// ---------------------------------------------------------------------------------------
// barrier

class BarrierObj final : public Obj {
 public:
  BarrierObj(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag, std::string name,
             std::uint32_t parties)
      : Obj(owner, id, kind, std::move(tag), std::move(name)), parties_(parties) {}

  bool handle(Conn& c, Op op, Reader& r, Writer& w) override {
    switch (op) {
      case Op::barrier_wait: {
        std::int64_t timeout = read_timeout(r);
        if (broken_) throw BrokenBarrierError("mpx: the barrier is broken");
        // Fewer than parties_ (a u32) wait at any time, so the index fits a u32.
        auto index = static_cast<std::uint32_t>(waiters_.size());
        if (std::uint64_t{index} + 1 >= parties_) {
          auto waiters = std::move(waiters_);
          waiters_ = {};
          std::uint32_t i = 0;
          for (Conn* waiter : waiters) {
            std::uint32_t mine = i++;
            waiter->complete_ok([mine](Writer& ww) { ww.u32(mine); });
          }
          w.u32(index);
          return false;
        }
        if (timeout == 0) {
          break_barrier();
          throw BrokenBarrierError("mpx: barrier wait timed out");
        }
        return wait_in(waiters_, c, op, timeout);
      }
      case Op::barrier_reset:
        waiters_.fail_all(broken_error());
        broken_ = false;
        return false;
      case Op::barrier_abort:
        break_barrier();
        return false;
      case Op::barrier_parties:
        w.u32(parties_);
        return false;
      case Op::barrier_n_waiting:
        w.u32(static_cast<std::uint32_t>(waiters_.size()));
        return false;
      case Op::barrier_broken:
        w.boolean(broken_);
        return false;
      default:
        bad_op(op, kind());
    }
  }
  // A wait that times out breaks the barrier for everyone (as in Python).
  void on_timeout(Conn&) override { break_barrier(); }
  // So does a party that leaves while waiting: the others could never be released.
  void drop_waiter(Conn& c) override {
    if (waiters_.remove(&c)) break_barrier();
  }
  void fail_waiters(const ErrorInfo& e) override { waiters_.fail_all(e); }

 private:
  static ErrorInfo broken_error() { return {ErrorCode::broken_barrier, {}, "mpx: the barrier is broken", 0}; }
  void break_barrier() {
    broken_ = true;
    waiters_.fail_all(broken_error());
  }

  std::uint32_t parties_;
  WaitList waiters_;
  bool broken_ = false;
};

// ---------------------------------------------------------------------------------------
// registered types

class RegisteredObj final : public Obj {
 public:
  RegisteredObj(ObjectServerImpl& owner, std::uint64_t id, std::string tag, std::string name,
                std::shared_ptr<const RegisteredType> type, std::shared_ptr<void> instance)
      : Obj(owner, id, Kind::object, std::move(tag), std::move(name)),
        type_(std::move(type)),
        instance_(std::move(instance)) {}

  bool handle(Conn&, Op op, Reader& r, Writer& w) override {
    if (op != Op::object_call) bad_op(op, kind());
    auto method = r.str();
    auto args_tag = r.str();
    auto result_tag = r.str();
    auto args = r.blob();
    r.expect_end();
    auto it = type_->methods.find(method);
    if (it == type_->methods.end())
      throw TypeMismatch("mpx: " + type_->name + " has no method '" + std::string(method) + "'");
    const auto& m = it->second;
    if (m.args_tag != args_tag)
      throw TypeMismatch("mpx: " + type_->name + "::" + std::string(method) + " takes (" + m.args_tag +
                         "), not (" + std::string(args_tag) + ")");
    if (m.result_tag != result_tag)
      throw TypeMismatch("mpx: " + type_->name + "::" + std::string(method) + " returns " + m.result_tag +
                         ", not " + std::string(result_tag));
    Bytes result = m.invoke(instance_.get(), args);
    w.blob(result);
    return false;
  }

 private:
  std::shared_ptr<const RegisteredType> type_;
  std::shared_ptr<void> instance_;
};

}  // namespace

std::unique_ptr<Obj> make_builtin(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag,
                                  std::string name, Reader& init) {
  switch (kind) {
    case Kind::dict:
      init.expect_end();
      return std::make_unique<DictObj>(owner, id, kind, tag, name);
    case Kind::list:
      init.expect_end();
      return std::make_unique<ListObj>(owner, id, kind, tag, name);
    case Kind::array: {
      std::vector<Bytes> items;
      for (auto v : read_blobs(init)) items.push_back(as_bytes(v));
      init.expect_end();
      return std::make_unique<ListObj>(owner, id, kind, tag, name, std::move(items));
    }
    case Kind::namespace_:
      init.expect_end();
      return std::make_unique<NamespaceObj>(owner, id, kind, tag, name);
    case Kind::value: {
      auto v = init.blob();
      init.expect_end();
      return std::make_unique<ValueObj>(owner, id, kind, tag, name, as_bytes(v));
    }
    case Kind::queue:
    case Kind::joinable_queue: {
      std::uint64_t maxsize = init.u64();
      init.expect_end();
      return std::make_unique<QueueObj>(owner, id, kind, tag, name, maxsize);
    }
    case Kind::lock:
    case Kind::rlock:
      init.expect_end();
      return std::make_unique<LockObj>(owner, id, kind, tag, name);
    case Kind::semaphore:
    case Kind::bounded_semaphore: {
      std::uint32_t value = init.u32();
      init.expect_end();
      return std::make_unique<SemaphoreObj>(owner, id, kind, tag, name, value);
    }
    case Kind::condition:
      init.expect_end();
      return std::make_unique<ConditionObj>(owner, id, kind, tag, name);
    case Kind::event:
      init.expect_end();
      return std::make_unique<EventObj>(owner, id, kind, tag, name);
    case Kind::barrier: {
      std::uint32_t parties = init.u32();
      init.expect_end();
      if (parties == 0) throw ValueError("mpx: a barrier needs at least one party");
      return std::make_unique<BarrierObj>(owner, id, kind, tag, name, parties);
    }
    default:
      break;
  }
  throw ProtocolError("mpx manager protocol: unknown object kind");
}

std::unique_ptr<Obj> make_registered(ObjectServerImpl& owner, std::uint64_t id, std::string tag,
                                     std::string name, Reader& init, const TypeRegistry* types) {
  std::string type_name(init.str());
  auto args_tag = init.str();
  auto args = init.blob();
  init.expect_end();
  auto type = types ? types->find(type_name) : nullptr;
  if (!type) throw ValueError("mpx: no type named '" + type_name + "' is registered with this manager");
  if (tag != type->name + "|" + type->cpp_tag)
    throw TypeMismatch("mpx: '" + type_name + "' is registered as C++ type " + type->cpp_tag + ", not " +
                       tag.substr(std::min(tag.size(), type_name.size() + 1)));
  for (const auto& ctor : type->constructors)
    if (ctor.args_tag == args_tag)
      return std::make_unique<RegisteredObj>(owner, id, std::move(tag), std::move(name), type,
                                             ctor.make(args));
  throw TypeMismatch("mpx: " + type_name + " has no registered constructor taking (" + std::string(args_tag) +
                     ")");
}

}  // namespace server
}  // namespace mpx::detail
