// Python's manager protocol (multiprocessing.managers) on the object server, so that a stock
// Python SyncManager/BaseManager uses mpxd unchanged. A connection whose first request after
// the handshake is a pickle speaks it: each request is a pickled (ident, method, args, kwds)
// and each reply a pickled ('#RETURN', value) / ('#ERROR', exception) / ('#TRACEBACK', text) /
// ('#PROXY', (exposed, token)). A Python call becomes one or more of the server's own requests
// on the server's own objects, so a lock or a named queue is one object whichever language
// uses it, and blocking calls park exactly as the C++ clients' do. Values held for Python are
// pickles under the type tag "pickle" (proto/manager.md, "Python clients").
#include "server/internals.hpp"

#include "ipc/wire_errors.hpp"
#include "server/value_schema.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <span>

namespace mpx::detail::server {

using py::Object;

namespace {

constexpr std::string_view kPickleTag = "pickle";
constexpr int kReplyProtocol = 4;

// A request Python's server itself would refuse with a traceback (unknown id, a method the
// object does not expose, a request that is not a 4-tuple): the client raises RemoteError.
struct Traceback {
  std::string text;
};
// An exception the called method raised: the client re-raises it.
struct Raise {
  py::Exception exc;
};

[[noreturn]] void raise(py::ExceptionType t, std::string message) {
  throw Raise{{t, {Object(std::move(message))}}};
}
[[noreturn]] void raise_with(py::ExceptionType t, Object arg) { throw Raise{{t, {std::move(arg)}}}; }

// The Python types a SyncManager asks for, and the named objects of mpxd.
enum class PyType {
  dict,
  list,
  queue,
  joinable_queue,
  lock,
  rlock,
  semaphore,
  bounded_semaphore,
  condition,
  event,
  barrier,
  namespace_,
  value,
  array,
  iterator,
  task_queue,
};

// What each type exposes, as Python's own server answers `create` (the method names the
// client's proxy offers).
const std::vector<std::string>& exposed(PyType t, bool named) {
  static const std::vector<std::string> dict = {
      "__contains__", "__delitem__", "__getitem__", "__iter__", "__len__", "__setitem__", "clear",  "copy",
      "get",          "items",       "keys",        "pop",      "popitem", "setdefault",  "update", "values"};
  // A named dict is served to an AutoProxy, whose manager registers no Iterator type.
  static const std::vector<std::string> named_dict = {
      "__contains__", "__delitem__", "__getitem__", "__len__", "__setitem__", "clear",  "copy",  "get",
      "items",        "keys",        "pop",         "popitem", "setdefault",  "update", "values"};
  static const std::vector<std::string> list = {
      "__add__",  "__contains__", "__delitem__", "__getitem__", "__len__", "__mul__",
      "__rmul__", "__setitem__",  "append",      "count",       "extend",  "index",
      "insert",   "pop",          "remove",      "reverse",     "sort",    "__imul__"};
  static const std::vector<std::string> queue = {"empty", "full",       "get",   "get_nowait", "join",
                                                 "put",   "put_nowait", "qsize", "task_done"};
  static const std::vector<std::string> lock = {"acquire", "release"};
  static const std::vector<std::string> condition = {"acquire", "release", "wait", "notify", "notify_all"};
  static const std::vector<std::string> event = {"is_set", "set", "clear", "wait"};
  static const std::vector<std::string> barrier = {"__getattribute__", "wait", "abort", "reset"};
  static const std::vector<std::string> namespace_ = {"__getattribute__", "__setattr__", "__delattr__"};
  static const std::vector<std::string> value = {"get", "set"};
  static const std::vector<std::string> array = {"__len__", "__getitem__", "__setitem__"};
  static const std::vector<std::string> iterator = {"__next__", "send", "throw", "close"};
  static const std::vector<std::string> task_queue = {"submit", "tasks"};
  switch (t) {
    case PyType::dict:
      return named ? named_dict : dict;
    case PyType::list:
      return list;
    case PyType::queue:
    case PyType::joinable_queue:
      return queue;
    case PyType::lock:
    case PyType::rlock:
    case PyType::semaphore:
    case PyType::bounded_semaphore:
      return lock;
    case PyType::condition:
      return condition;
    case PyType::event:
      return event;
    case PyType::barrier:
      return barrier;
    case PyType::namespace_:
      return namespace_;
    case PyType::value:
      return value;
    case PyType::array:
      return array;
    case PyType::iterator:
      return iterator;
    case PyType::task_queue:
      return task_queue;
  }
  return iterator;
}

Object exposed_tuple(PyType t, bool named) {
  py::List names;
  for (const auto& n : exposed(t, named)) names.emplace_back(n);
  return Object::tuple(std::move(names));
}

// Python's argument binding for one method: positional then keyword, Python's messages.
class Args {
 public:
  Args(std::string_view method, const py::List& args, const py::Dict& kwds,
       std::initializer_list<const char*> names, std::size_t required = 0)
      : slots_(names.size()) {
    std::vector<const char*> n(names);
    if (args.size() > n.size())
      raise(py::ExceptionType::TypeError,
            fmt::format("{}() takes at most {} arguments ({} given)", method, n.size(), args.size()));
    for (std::size_t i = 0; i < args.size(); ++i) slots_[i] = &args[i];
    for (std::size_t k = 0; k < kwds.size(); ++k) {
      const auto* key = kwds.keys()[k].get_if<std::string>();
      auto it = key ? std::find_if(n.begin(), n.end(), [&](const char* s) { return *key == s; }) : n.end();
      if (it == n.end())
        raise(py::ExceptionType::TypeError,
              fmt::format("{}() got an unexpected keyword argument {}", method, py::repr(kwds.keys()[k])));
      auto& slot = slots_[static_cast<std::size_t>(it - n.begin())];
      if (slot)
        raise(py::ExceptionType::TypeError,
              fmt::format("{}() got multiple values for argument '{}'", method, *it));
      slot = &kwds.values()[k];
    }
    for (std::size_t i = 0; i < required; ++i)
      if (!slots_[i])
        raise(py::ExceptionType::TypeError, fmt::format("{}() missing required argument '{}'", method, n[i]));
  }
  const Object* operator[](std::size_t i) const { return slots_[i]; }
  const Object& at(std::size_t i) const { return *slots_[i]; }
  bool has(std::size_t i) const { return slots_[i] != nullptr; }

 private:
  std::vector<const Object*> slots_;
};

std::int64_t as_int(const Object& o, const char* what) {
  if (const auto* i = o.get_if<std::int64_t>()) return *i;
  if (const auto* b = o.get_if<bool>()) return *b ? 1 : 0;
  raise(py::ExceptionType::TypeError, fmt::format("{} must be an int, not {}", what, o.type_name()));
}

bool truthy(const Object& o) {
  switch (o.kind()) {
    case py::Kind::none:
      return false;
    case py::Kind::boolean:
      return o.get<bool>();
    case py::Kind::integer:
      return o.get<std::int64_t>() != 0;
    case py::Kind::floating:
      return o.get<double>() != 0;
    default:
      return true;
  }
}

// A Python timeout (seconds, None = forever) in the wire's nanoseconds.
std::int64_t timeout_ns(const Object* t, bool block = true) {
  if (!block) return 0;
  if (!t || t->is_none()) return proto::kForever;
  double s = t->kind() == py::Kind::floating ? t->get<double>() : static_cast<double>(as_int(*t, "timeout"));
  if (std::isnan(s) || s < 0) raise(py::ExceptionType::ValueError, "'timeout' must be a non-negative number");
  if (s > 1e9) return proto::kForever;
  return static_cast<std::int64_t>(s * 1e9);
}

Bytes pickled(const Object& o) { return py::dumps(o, kReplyProtocol); }
// A dict key: keys compare by their pickles, so only what Python can hash may be one.
Bytes pickled_key(const Object& key) {
  if (!key.hashable())
    raise(py::ExceptionType::TypeError, fmt::format("unhashable type: '{}'", key.type_name()));
  return pickled(key);
}
Object unpickled(std::span<const std::byte> b) { return py::loads(b); }

Bytes body(const std::function<void(Writer&)>& write) {
  Bytes out;
  Writer w(out);
  write(w);
  return out;
}

// How one object stores a Python client's values: as pickles (an object made for Python), or
// as the C++ encoding of the type its tag spells (value_schema.hpp).
struct Codec {
  std::shared_ptr<const ValueSchema> key, value;  // nullptr: pickles
  Bytes put(const Object& v) const { return value ? value->encode(v) : pickled(v); }
  Bytes put_key(const Object& k) const { return key ? key->encode(k) : pickled_key(k); }
  Object get(std::span<const std::byte> b) const { return value ? value->decode(b) : unpickled(b); }
  Object get_key(std::span<const std::byte> b) const { return key ? key->decode(b) : unpickled(b); }
  // `u64 n` then n values.
  py::List get_all(Reader& r) const {
    std::uint64_t n = r.count(8);
    py::List out;
    out.reserve(n);
    for (std::uint64_t i = 0; i < n; ++i) out.push_back(get(r.blob()));
    return out;
  }
};

const py::List& as_sequence(const Object& o, const char* what) {
  if (const auto* l = o.get_if<py::List>()) return *l;
  raise(py::ExceptionType::TypeError,
        fmt::format("{}: expected a list or tuple, got {}", what, o.type_name()));
}

// An ordering for list.sort on what Python orders the same way (numbers, str, bytes).
bool less(const Object& a, const Object& b) {
  auto number = [](const Object& o, double& out) {
    if (const auto* i = o.get_if<std::int64_t>()) return out = static_cast<double>(*i), true;
    if (const auto* d = o.get_if<double>()) return out = *d, true;
    if (const auto* flag = o.get_if<bool>()) return out = *flag ? 1 : 0, true;
    return false;
  };
  double x, y;
  if (number(a, x) && number(b, y)) {
    const auto* i = a.get_if<std::int64_t>();
    const auto* j = b.get_if<std::int64_t>();
    return i && j ? *i < *j : x < y;
  }
  if (a.kind() == py::Kind::str && b.kind() == py::Kind::str)
    return a.get<std::string>() < b.get<std::string>();
  if (a.kind() == py::Kind::bytes && b.kind() == py::Kind::bytes) return a.get<Bytes>() < b.get<Bytes>();
  raise(py::ExceptionType::TypeError,
        fmt::format("'<' not supported between instances of '{}' and '{}'", a.type_name(), b.type_name()));
}

// The exception a failed request raises in Python.
Object exception_for(const ErrorInfo& e) {
  using T = py::ExceptionType;
  auto with = [&](T t) { return Object(py::Exception{t, {Object(e.message)}}); };
  switch (e.code) {
    case proto::ErrorCode::empty:
      return py::Exception{T::Empty, {}};
    case proto::ErrorCode::full:
      return py::Exception{T::Full, {}};
    case proto::ErrorCode::key:
      return with(T::KeyError);
    case proto::ErrorCode::value:
      return with(T::ValueError);
    case proto::ErrorCode::index:
      return with(T::IndexError);
    case proto::ErrorCode::type_mismatch:
    case proto::ErrorCode::protocol:
      return with(T::TypeError);
    case proto::ErrorCode::broken_barrier:
      return py::Exception{T::BrokenBarrierError, {}};
    default:
      return with(T::RuntimeError);
  }
}

Object reply(std::string_view kind, Object value) { return Object::tuple({Object(kind), std::move(value)}); }

// ('#PROXY', (exposed, Token(typeid, None, ident))), written out by hand: a Token is an
// instance of multiprocessing.managers.Token, which the codec does not model. The client
// replaces the address with its own.
Bytes proxy_reply(PyType type, std::string_view typeid_, std::string_view ident) {
  Bytes out;
  auto op = [&](char c) { out.push_back(static_cast<std::byte>(c)); };
  auto text = [&](std::string_view s) {
    for (char c : s) op(c);
  };
  auto unicode = [&](std::string_view s) {
    op('X');
    std::uint32_t n = static_cast<std::uint32_t>(s.size());
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
    text(s);
  };
  op('\x80');
  op('\x02');
  unicode("#PROXY");
  op('(');
  for (const auto& m : exposed(type, false)) unicode(m);
  op('t');
  text("cmultiprocessing.managers\nToken\n");
  op(')');
  op('\x81');  // NEWOBJ: Token.__new__(Token)
  unicode(typeid_);
  op('N');
  unicode(ident);
  op('\x87');  // TUPLE3: the state
  op('b');     // BUILD: Token.__setstate__(state)
  op('\x86');
  op('\x86');
  op('.');
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------

class PythonClients {
 public:
  explicit PythonClients(ObjectServerImpl& server) : server_(server) {}

  void serve(Conn& c, Bytes& frame);

 private:
  struct Entry {
    PyType type;
    std::uint64_t oid = 0;  // the server object (0 for an iterator)
    std::string typeid_;
    bool named = false;
    std::int64_t refs = 0;
    std::deque<Object> rest;  // an iterator's items still to come
  };

  void serve_request(Conn& c, const Object& request);
  Object control(Conn& c, std::string_view method, const py::List& args, const py::Dict& kwds);
  std::pair<std::string, PyType> create(Conn& c, std::string_view typeid_, const py::List& args,
                                        const py::Dict& kwds);
  std::uint64_t open(Conn& c, Kind kind, std::string_view name, std::string_view tag, const Bytes& init);
  Entry& entry(std::string_view ident);
  std::string add_entry(Entry e);
  void incref(std::string_view ident);
  void decref(std::string_view ident);
  bool call(Conn& c, Entry& e, std::string_view method, const py::List& args, const py::Dict& kwds);

  // How the object behind `e` stores values, from its current tag (a C++ client may have
  // retagged it since): TypeMismatch for a C++ type Python cannot share.
  Codec codec_for(const Entry& e) { return codec_for(e.oid); }
  Codec codec_for(std::uint64_t oid);
  std::shared_ptr<const ValueSchema> schema(std::string_view tag);

  // tq.submit(name, *args): runs the task on the queue's workers, answers with its result.
  bool submit_task(Conn& c, const Entry& e, const std::map<std::string, TaskSignature, std::less<>>& catalog,
                   const py::List& args, const py::Dict& kwds);

  // One server request answered at once (never parks), its ok body returned.
  Bytes query(Conn& c, const Entry& e, Op op, const Bytes& request = {});
  // The request that answers the call: its ok body becomes the returned value through `ok`
  // (and a failure an exception through `error`, when given), now or when it unparks.
  bool issue(Conn& c, const Entry& e, Op op, const Bytes& request, PyAnswer answer);

  ObjectServerImpl& server_;
  std::unordered_map<std::string, Entry> entries_;
  std::unordered_map<std::string, std::shared_ptr<const ValueSchema>> schemas_;
  std::uint64_t next_iterator_ = 1;
};

void PythonClientsDeleter::operator()(PythonClients* p) const { delete p; }

void ObjectServerImpl::serve_python(Conn& c, Bytes& frame) {
  if (!python_) python_.reset(new PythonClients(*this));
  python_->serve(c, frame);
}

Object python_reply(proto::Status status, Reader& body, const PyAnswer& answer) {
  try {
    if (status == proto::Status::ok) return reply("#RETURN", answer.ok ? answer.ok(body) : Object());
    ErrorInfo e = proto::read_error(body);
    return reply("#ERROR", answer.error ? answer.error(e) : exception_for(e));
  } catch (const Raise& r) {
    return reply("#ERROR", r.exc);
  } catch (const std::exception& e) {
    return reply("#TRACEBACK", fmt::format("mpx server: {}\n", e.what()));
  }
}

void PythonClients::serve(Conn& c, Bytes& frame) {
  Object request;
  try {
    request = py::loads(frame);
  } catch (const std::exception& e) {
    server_.note(ObjectServerImpl::Event::python_request_refused,
                 fmt::format("{}: {}", c.peer_description(), e.what()));
    c.send_python(
        reply("#TRACEBACK", fmt::format("mpx server: the request is not a pickle it reads: {}\n", e.what())));
    return;
  }
  try {
    serve_request(c, request);
  } catch (const Traceback& t) {
    server_.note(ObjectServerImpl::Event::python_request_refused,
                 fmt::format("{}: {}", c.peer_description(), t.text));
    c.send_python(reply("#TRACEBACK", t.text + "\n"));
  } catch (const Raise& r) {
    c.send_python(reply("#ERROR", r.exc));
  } catch (const std::exception& e) {
    c.send_python(reply("#ERROR", exception_for(detail::error_from_exception(e))));
  }
}

void PythonClients::serve_request(Conn& c, const Object& request) {
  const auto* t = request.kind() == py::Kind::tuple ? request.get_if<py::List>() : nullptr;
  if (!t || t->size() != 4)
    throw Traceback{"mpx server: a request is a tuple (ident, method name, args, kwds), not " +
                    py::repr(request)};
  const Object& ident = (*t)[0];
  const auto* method = (*t)[1].get_if<std::string>();
  const auto* args = (*t)[2].kind() == py::Kind::tuple ? (*t)[2].get_if<py::List>() : nullptr;
  const auto* kwds = (*t)[3].get_if<py::Dict>();
  if (!method || !args || !kwds)
    throw Traceback{"mpx server: a request is a tuple (ident, method name, args, kwds), not " +
                    py::repr(request)};
  if (ident.is_none()) {
    Object result = control(c, *method, *args, *kwds);
    if (!c.closed()) c.send_python(reply("#RETURN", std::move(result)));
    return;
  }
  const auto* id = ident.get_if<std::string>();
  if (!id) throw Traceback{"KeyError: " + py::repr(ident)};
  Entry& e = entry(*id);
  const auto& names = exposed(e.type, e.named);
  if (std::find(names.begin(), names.end(), *method) == names.end())
    throw Traceback{fmt::format("AttributeError: method {} of {} object is not in exposed", py::repr(*method),
                                e.typeid_)};
  call(c, e, *method, *args, *kwds);
}

Object PythonClients::control(Conn& c, std::string_view method, const py::List& args, const py::Dict& kwds) {
  if (method == "dummy") return {};
  if (method == "accept_connection") return {};  // this connection now carries the calls of one thread
  if (method == "create") {
    if (args.empty() || !args[0].get_if<std::string>()) throw Traceback{"TypeError: create() needs a typeid"};
    py::List rest(args.begin() + 1, args.end());
    auto [ident, type] = create(c, args[0].get<std::string>(), rest, kwds);
    return Object::tuple({Object(ident), exposed_tuple(type, entries_.at(ident).named)});
  }
  if (method == "incref" || method == "decref") {
    if (args.size() != 1 || !args[0].get_if<std::string>())
      throw Traceback{fmt::format("TypeError: {}() takes an ident", method)};
    method == "incref" ? incref(args[0].get<std::string>()) : decref(args[0].get<std::string>());
    return {};
  }
  if (method == "number_of_objects") return Object(static_cast<std::int64_t>(entries_.size()));
  if (method == "debug_info") {
    std::string out;
    for (const auto& [ident, e] : entries_)
      out += fmt::format("  {}:       refcount={}\n    {}\n", ident, e.refs, e.typeid_);
    return Object(out);
  }
  if (method == "shutdown") {
    if (!server_.options().allow_remote_shutdown)
      throw Traceback{"mpx server: this server does not take shutdown requests"};
    server_.request_shutdown();
    return {};
  }
  throw Traceback{fmt::format("mpx server: unknown request {}", py::repr(Object(method)))};
}

std::uint64_t PythonClients::open(Conn& c, Kind kind, std::string_view name, std::string_view tag,
                                  const Bytes& init) {
  Bytes request = body([&](Writer& w) {
    w.u8(static_cast<std::uint8_t>(kind));
    w.str(name);
    w.str(tag);
    w.raw(init.data(), init.size());
  });
  Bytes answer;
  Writer w(answer);
  Reader r(request);
  bool parked = false;
  server_.dispatch(c, Op::open, 0, r, w, parked);
  Reader a(answer);
  return a.u64();
}

std::pair<std::string, PyType> PythonClients::create(Conn& c, std::string_view typeid_, const py::List& args,
                                                     const py::Dict& kwds) {
  // Named objects (mpxd's, shared with C++ clients): BaseManager.register('get_dict') and the like.
  struct Named {
    std::string_view typeid_;
    PyType type;
  };
  static constexpr Named kNamed[] = {
      {"get_dict", PyType::dict},
      {"get_list", PyType::list},
      {"get_queue", PyType::queue},
      {"get_joinable_queue", PyType::joinable_queue},
      {"get_value", PyType::value},
      {"get_lock", PyType::lock},
      {"get_rlock", PyType::rlock},
      {"get_event", PyType::event},
      {"get_namespace", PyType::namespace_},
      {"get_condition", PyType::condition},
      {"get_semaphore", PyType::semaphore},
      {"get_task_queue", PyType::task_queue},
  };
  std::string name;
  std::optional<PyType> type;
  for (const auto& n : kNamed)
    if (n.typeid_ == typeid_) type = n.type;
  if (type) {
    Args a(typeid_, args, kwds, {"name", "value"}, 1);
    const auto* s = a.at(0).get_if<std::string>();
    if (!s || s->empty())
      raise(py::ExceptionType::ValueError, fmt::format("{}(): the name must be a non-empty str", typeid_));
    name = *s;
  }
  auto make = [&](PyType t, Kind kind, std::string_view tag, const Bytes& init = {}) {
    // A named object a C++ client made keeps its type: Python's values convert to it.
    const Obj* existing = name.empty() ? nullptr : server_.find_named(name);
    std::string adopted;
    if (existing && existing->kind() == kind && existing->tag() != tag) {
      adopted = existing->tag();
      Entry probe{t, existing->id(), std::string(typeid_), true, 0, {}};
      codec_for(probe);
      tag = adopted;
    }
    std::uint64_t oid = open(c, kind, name, tag, init);
    // A named object opened again is the same entry: its ident is stable for every client.
    std::string ident = fmt::format("{:x}", oid);
    auto it = entries_.find(ident);
    if (it == entries_.end())
      it = entries_.emplace(ident, Entry{t, oid, std::string(typeid_), !name.empty(), 0, {}}).first;
    ++it->second.refs;  // the creator's reference, dropped by its decref once its proxy holds one
    return std::pair{ident, t};
  };
  const std::string pair_tag = std::string(kPickleTag) + "|" + std::string(kPickleTag);
  if (type) {
    switch (*type) {
      case PyType::dict:
        return make(*type, Kind::dict, pair_tag);
      case PyType::list:
        return make(*type, Kind::list, kPickleTag);
      case PyType::queue:
        return make(*type, Kind::queue, kPickleTag, body([](Writer& w) { w.u64(0); }));
      case PyType::joinable_queue:
        return make(*type, Kind::joinable_queue, kPickleTag, body([](Writer& w) { w.u64(0); }));
      case PyType::value: {
        Args a(typeid_, args, kwds, {"name", "value"}, 1);
        Object initial = a.has(1) ? a.at(1) : Object();
        return make(*type, Kind::value, kPickleTag, body([&](Writer& w) { w.blob(pickled(initial)); }));
      }
      case PyType::lock:
        return make(*type, Kind::lock, "");
      case PyType::rlock:
        return make(*type, Kind::rlock, "");
      case PyType::event:
        return make(*type, Kind::event, "");
      case PyType::namespace_:
        return make(*type, Kind::namespace_, "");
      case PyType::condition:
        return make(*type, Kind::condition, "");
      case PyType::task_queue:
        return make(*type, Kind::task_queue, "");
      case PyType::semaphore: {
        Args a(typeid_, args, kwds, {"name", "value"}, 1);
        std::int64_t v = a.has(1) ? as_int(a.at(1), "value") : 1;
        if (v < 0 || v > UINT32_MAX)
          raise(py::ExceptionType::ValueError, "semaphore initial value out of range");
        return make(*type, Kind::semaphore, "",
                    body([&](Writer& w) { w.u32(static_cast<std::uint32_t>(v)); }));
      }
      default:
        break;
    }
  }
  if (typeid_ == "dict") {
    Args a(typeid_, args, {}, {"mapping"});
    auto made = make(PyType::dict, Kind::dict, pair_tag);
    py::Dict init;
    if (a.has(0)) {
      if (const auto* d = a.at(0).get_if<py::Dict>())
        init = *d;
      else
        for (const auto& pair : as_sequence(a.at(0), "dict()")) {
          const auto& kv = as_sequence(pair, "dict()");
          if (kv.size() != 2)
            raise(py::ExceptionType::ValueError, "dictionary update sequence element has the wrong length");
          init.set(kv[0], kv[1]);
        }
    }
    for (std::size_t i = 0; i < kwds.size(); ++i) init.set(kwds.keys()[i], kwds.values()[i]);
    if (!init.empty())
      query(c, entries_.at(made.first), Op::dict_update, body([&](Writer& w) {
              w.u64(init.size());
              for (std::size_t i = 0; i < init.size(); ++i) {
                w.blob(pickled(init.keys()[i]));
                w.blob(pickled(init.values()[i]));
              }
            }));
    return made;
  }
  if (typeid_ == "list") {
    Args a(typeid_, args, kwds, {"iterable"});
    auto made = make(PyType::list, Kind::list, kPickleTag);
    if (a.has(0)) {
      const auto& items = as_sequence(a.at(0), "list()");
      query(c, entries_.at(made.first), Op::list_extend, body([&](Writer& w) {
              w.u64(items.size());
              for (const auto& v : items) w.blob(pickled(v));
            }));
    }
    return made;
  }
  if (typeid_ == "Queue" || typeid_ == "JoinableQueue") {
    Args a(typeid_, args, kwds, {"maxsize"});
    std::int64_t maxsize = a.has(0) ? as_int(a.at(0), "maxsize") : 0;
    bool joinable = typeid_ == "JoinableQueue";
    return make(joinable ? PyType::joinable_queue : PyType::queue,
                joinable ? Kind::joinable_queue : Kind::queue, kPickleTag,
                body([&](Writer& w) { w.u64(maxsize > 0 ? static_cast<std::uint64_t>(maxsize) : 0); }));
  }
  if (typeid_ == "Lock") return make(PyType::lock, Kind::lock, "");
  if (typeid_ == "RLock") return make(PyType::rlock, Kind::rlock, "");
  if (typeid_ == "Semaphore" || typeid_ == "BoundedSemaphore") {
    Args a(typeid_, args, kwds, {"value"});
    std::int64_t v = a.has(0) ? as_int(a.at(0), "value") : 1;
    if (v < 0) raise(py::ExceptionType::ValueError, "semaphore initial value must be >= 0");
    if (v > UINT32_MAX) raise(py::ExceptionType::ValueError, "semaphore initial value out of range");
    bool bounded = typeid_ == "BoundedSemaphore";
    return make(bounded ? PyType::bounded_semaphore : PyType::semaphore,
                bounded ? Kind::bounded_semaphore : Kind::semaphore, "",
                body([&](Writer& w) { w.u32(static_cast<std::uint32_t>(v)); }));
  }
  if (typeid_ == "Condition") {
    if (!args.empty() && !args[0].is_none())
      raise(py::ExceptionType::ValueError,
            "mpx server: a Condition over another lock is not supported; use Condition()");
    return make(PyType::condition, Kind::condition, "");
  }
  if (typeid_ == "Event") return make(PyType::event, Kind::event, "");
  if (typeid_ == "Barrier") {
    Args a(typeid_, args, kwds, {"parties", "action", "timeout"}, 1);
    std::int64_t parties = as_int(a.at(0), "parties");
    if (parties < 1 || parties > UINT32_MAX) raise(py::ExceptionType::ValueError, "parties must be > 0");
    if (a.has(1) && !a.at(1).is_none())
      raise(py::ExceptionType::ValueError, "mpx server: a Barrier action is not supported");
    return make(PyType::barrier, Kind::barrier, "",
                body([&](Writer& w) { w.u32(static_cast<std::uint32_t>(parties)); }));
  }
  if (typeid_ == "Namespace") {
    auto made = make(PyType::namespace_, Kind::namespace_, "");
    for (std::size_t i = 0; i < kwds.size(); ++i)
      query(c, entries_.at(made.first), Op::ns_set, body([&](Writer& w) {
              w.str(kwds.keys()[i].get<std::string>());
              w.str(kPickleTag);
              w.blob(pickled(kwds.values()[i]));
            }));
    return made;
  }
  if (typeid_ == "Value") {
    Args a(typeid_, args, kwds, {"typecode", "value", "lock"}, 2);
    return make(PyType::value, Kind::value, kPickleTag, body([&](Writer& w) { w.blob(pickled(a.at(1))); }));
  }
  if (typeid_ == "Array") {
    Args a(typeid_, args, kwds, {"typecode", "sequence", "lock"}, 2);
    py::List items;
    if (const auto* n = a.at(1).get_if<std::int64_t>())
      items.assign(static_cast<std::size_t>(std::max<std::int64_t>(*n, 0)), Object(std::int64_t{0}));
    else
      items = as_sequence(a.at(1), "Array()");
    return make(PyType::array, Kind::array, kPickleTag, body([&](Writer& w) {
                  w.u64(items.size());
                  for (const auto& v : items) w.blob(pickled(v));
                }));
  }
  throw Traceback{fmt::format("KeyError: {} (mpx server: not a type it serves to Python clients)",
                              py::repr(Object(typeid_)))};
}

PythonClients::Entry& PythonClients::entry(std::string_view ident) {
  auto it = entries_.find(std::string(ident));
  if (it == entries_.end()) throw Traceback{"KeyError: " + py::repr(Object(ident))};
  if (it->second.oid && !server_.find(it->second.oid)) {
    entries_.erase(it);  // erased by a C++ client, or gone with the server's shutdown
    throw Traceback{"KeyError: " + py::repr(Object(ident)) + " (the object is gone)"};
  }
  return it->second;
}

std::string PythonClients::add_entry(Entry e) {
  std::string ident = fmt::format("i{:x}", next_iterator_++);
  entries_.emplace(ident, std::move(e));
  return ident;
}

void PythonClients::incref(std::string_view ident) {
  auto it = entries_.find(std::string(ident));
  if (it == entries_.end()) throw Traceback{"KeyError: " + py::repr(Object(ident))};
  ++it->second.refs;
}

void PythonClients::decref(std::string_view ident) {
  auto it = entries_.find(std::string(ident));
  if (it == entries_.end()) return;  // gone already, as Python's server tolerates
  if (--it->second.refs > 0) return;
  Entry e = std::move(it->second);
  entries_.erase(it);
  // A named object outlives its Python proxies, as it outlives C++ ones.
  if (e.oid && !e.named) server_.destroy(e.oid, "its last Python proxy was released");
}

std::shared_ptr<const ValueSchema> PythonClients::schema(std::string_view tag) {
  auto it = schemas_.find(std::string(tag));
  if (it != schemas_.end()) return it->second;
  auto parsed = ValueSchema::parse(tag);
  if (!parsed)
    throw TypeMismatch(
        fmt::format("mpx: the object holds C++ values of type '{}', which a Python client cannot share "
                    "(proto/manager.md, \"Python clients\")",
                    tag));
  if (schemas_.size() > 1024) schemas_.clear();  // tags come from clients: keep the cache bounded
  return schemas_[std::string(tag)] = parsed;
}

Codec PythonClients::codec_for(std::uint64_t oid) {
  const Obj* o = server_.find(oid);
  if (!o) throw StateError("mpx: the managed object is gone");
  std::string_view tag = o->tag();
  auto part = [&](std::string_view t) { return t == kPickleTag ? nullptr : schema(t); };
  if (o->kind() != Kind::dict) return {nullptr, part(tag)};
  auto bar = tag.find('|');
  if (bar == std::string_view::npos) throw TypeMismatch("mpx: a dict's type tag without '|'");
  return {part(tag.substr(0, bar)), part(tag.substr(bar + 1))};
}

bool ObjectServerImpl::adopt_python_values(Obj& o, const std::string& tag) {
  bool dict = o.kind() == Kind::dict;
  if (o.tag() != (dict ? "pickle|pickle" : "pickle")) return false;  // only objects made for Python
  std::shared_ptr<const ValueSchema> key, value;
  if (dict) {
    auto bar = tag.find('|');
    if (bar == std::string::npos) return false;
    key = ValueSchema::parse(std::string_view(tag).substr(0, bar));
    value = ValueSchema::parse(std::string_view(tag).substr(bar + 1));
    if (!key || !value) return false;
  } else {
    value = ValueSchema::parse(tag);
    if (!value) return false;
  }
  auto convert = [](std::shared_ptr<const ValueSchema> s) {
    return
        [s](std::span<const std::byte> b) { return s ? s->encode(py::loads(b)) : Bytes(b.begin(), b.end()); };
  };
  try {
    o.rewrite_values(convert(key), convert(value));
  } catch (const std::exception& e) {
    throw TypeMismatch(fmt::format("mpx: managed object '{}' holds Python values that are not all {}: {}",
                                   o.name(), tag, e.what()));
  }
  o.retag(tag);
  return true;
}

bool PythonClients::submit_task(Conn& c, const Entry& e,
                                const std::map<std::string, TaskSignature, std::less<>>& catalog,
                                const py::List& args, const py::Dict& kwds) {
  using T = py::ExceptionType;
  if (!kwds.empty()) raise(T::TypeError, "submit() takes the task's arguments by position");
  const auto* task = args.empty() ? nullptr : args[0].get_if<std::string>();
  if (!task) raise(T::TypeError, "submit() takes the task's name, then its arguments");
  auto it = catalog.find(*task);
  if (it == catalog.end())
    raise(T::ValueError, fmt::format("no worker of this task queue has registered a task '{}' (yet)", *task));
  const TaskSignature& sig = it->second;
  py::List call(args.begin() + 1, args.end());
  Bytes payload;
  if (sig.args_tag == "tuple[]") {
    if (!call.empty())
      raise(T::TypeError, fmt::format("{}() takes no arguments ({} given)", *task, call.size()));
  } else {
    try {
      payload = schema(sig.args_tag)->encode(Object::tuple(std::move(call)));
    } catch (const TypeMismatch& mismatch) {
      raise(T::TypeError, fmt::format("{}() takes ({}): {}", *task, sig.args_tag, mismatch.what()));
    }
  }
  std::shared_ptr<const ValueSchema> result = sig.result_tag == "void" ? nullptr : schema(sig.result_tag);
  // The task body a C++ client's submit makes (proto/pool.md, section 4): by name, one call.
  Bytes request = body([&](Writer& w) {
    w.str(*task);
    Bytes encoded = body([&](Writer& t) {
      t.u8(2);
      t.str32(*task);
      t.u64(sig.tag);
      t.u64(0);
      t.u32(1);
      t.raw(payload.data(), payload.size());
    });
    w.blob(encoded);
  });
  // Results go to a session's mailbox: this connection's own, where its calls, one at a time,
  // find exactly the result of the task they submitted.
  server_.own_session(c);
  query(c, e, Op::task_submit, request);
  return issue(c, e, Op::task_wait, body([](Writer& w) {
                 w.u64(1);
                 w.i64(proto::kForever);
               }),
               {[result](Reader& r) -> Object {
                  r.u64();  // one result
                  r.u64();  // the task id
                  if (r.u8() != 0) throw Raise{exception_for(proto::read_error(r)).get<py::Exception>()};
                  Reader out(r.blob());
                  switch (out.u8()) {
                    case 0:
                      return result ? result->decode(out.rest()) : Object();
                    case 1: {
                      std::string type(out.str32());
                      raise(T::RuntimeError, fmt::format("{}: {}", type, out.str32()));
                    }
                    default: {
                      auto kind = out.u8();  // 1 ValueError, 2 TypeMismatch, else an error
                      std::string message(out.str32());
                      raise(kind == 1 ? T::ValueError : kind == 2 ? T::TypeError : T::RuntimeError, message);
                    }
                  }
                },
                {}});
}

Bytes PythonClients::query(Conn& c, const Entry& e, Op op, const Bytes& request) {
  Bytes answer;
  Writer w(answer);
  Reader r(request);
  bool parked = false;
  server_.dispatch(c, op, e.oid, r, w, parked);
  return answer;
}

bool PythonClients::issue(Conn& c, const Entry& e, Op op, const Bytes& request, PyAnswer answer) {
  Bytes ok;
  bool parked = false;
  try {
    Writer w(ok);
    Reader r(request);
    server_.dispatch(c, op, e.oid, r, w, parked);
  } catch (const std::exception& failure) {
    Bytes err;
    Writer w(err);
    proto::write_error(w, detail::error_from_exception(failure));
    Reader r(err);
    c.send_python(python_reply(proto::Status::error, r, answer));
    return false;
  }
  if (parked) {
    c.expect_python_reply(std::move(answer));
    return true;
  }
  Reader r(ok);
  c.send_python(python_reply(proto::Status::ok, r, answer));
  return false;
}

namespace {
PyAnswer returns_none() {
  return {[](Reader&) { return Object(); }, {}};
}
PyAnswer returns_bool() {
  return {[](Reader& r) { return Object(r.boolean()); }, {}};
}
PyAnswer returns_u64() {
  return {[](Reader& r) { return Object(r.u64()); }, {}};
}
PyAnswer returns_value(const Codec& codec) {
  return {[codec](Reader& r) { return codec.get(r.blob()); }, {}};
}
PyAnswer returns_values(const Codec& codec) {
  return {[codec](Reader& r) { return Object(codec.get_all(r)); }, {}};
}
// A slice's positions in a list of n items, by Python's slice.indices rules.
struct SliceRange {
  std::int64_t start, stop, step;
  std::vector<std::size_t> positions() const {
    std::vector<std::size_t> out;
    for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
      out.push_back(static_cast<std::size_t>(i));
    return out;
  }
};
SliceRange slice_range(const py::Slice& s, std::size_t size) {
  auto n = static_cast<std::int64_t>(size);
  auto part = [](const Object& o, std::int64_t dflt) {
    return o.is_none() ? dflt : as_int(o, "slice index");
  };
  std::int64_t step = part(s.step(), 1);
  if (step == 0) raise(py::ExceptionType::ValueError, "slice step cannot be zero");
  std::int64_t lo = step > 0 ? 0 : -1, hi = step > 0 ? n : n - 1;
  auto clamp = [&](std::int64_t v) {
    if (v < 0) v += n;
    return std::clamp(v, lo, hi);
  };
  std::int64_t start = s.start().is_none() ? (step > 0 ? 0 : n - 1) : clamp(part(s.start(), 0));
  std::int64_t stop = s.stop().is_none() ? (step > 0 ? n : -1) : clamp(part(s.stop(), 0));
  return {start, stop, step};
}

// Python's list index rules on a snapshot: an int, or a slice (step too).
Object index_snapshot(const py::List& items, const Object& index) {
  if (const auto* s = index.get_if<py::Slice>()) {
    py::List out;
    for (std::size_t i : slice_range(*s, items.size()).positions()) out.push_back(items[i]);
    return out;
  }
  auto n = static_cast<std::int64_t>(items.size());
  std::int64_t i = as_int(index, "list indices");
  if (i < 0) i += n;
  if (i < 0 || i >= n) raise(py::ExceptionType::IndexError, "list index out of range");
  return items[static_cast<std::size_t>(i)];
}

// items[s] = *values, or del items[s] when values is null: Python's rules, on a snapshot.
py::List assign_slice(py::List items, const py::Slice& s, const py::List* values) {
  SliceRange r = slice_range(s, items.size());
  if (r.step == 1) {
    auto first = items.begin() + r.start, last = items.begin() + std::max(r.stop, r.start);
    auto at = items.erase(first, last);
    if (values) items.insert(at, values->begin(), values->end());
    return items;
  }
  std::vector<std::size_t> pos = r.positions();
  if (values) {
    if (values->size() != pos.size())
      raise(py::ExceptionType::ValueError,
            fmt::format("attempt to assign sequence of size {} to extended slice of size {}", values->size(),
                        pos.size()));
    for (std::size_t k = 0; k < pos.size(); ++k) items[pos[k]] = (*values)[k];
    return items;
  }
  std::vector<bool> gone(items.size());
  for (std::size_t i : pos) gone[i] = true;
  py::List kept;
  for (std::size_t i = 0; i < items.size(); ++i)
    if (!gone[i]) kept.push_back(std::move(items[i]));
  return kept;
}
}  // namespace

bool PythonClients::call(Conn& c, Entry& e, std::string_view m, const py::List& args, const py::Dict& kwds) {
  using T = py::ExceptionType;
  auto done = [&](Object v) {
    c.send_python(reply("#RETURN", std::move(v)));
    return false;
  };
  const bool holds_values = e.type == PyType::dict || e.type == PyType::list || e.type == PyType::array ||
                            e.type == PyType::queue || e.type == PyType::joinable_queue ||
                            e.type == PyType::value;
  const Codec codec = holds_values ? codec_for(e) : Codec{};
  auto snapshot = [&]() {
    Bytes b = query(c, e, Op::list_snapshot);
    Reader r(b);
    return codec.get_all(r);
  };
  switch (e.type) {
    case PyType::dict: {
      if (m == "__setitem__") {
        Args a(m, args, kwds, {"key", "value"}, 2);
        return issue(c, e, Op::dict_set, body([&](Writer& w) {
                       w.blob(codec.put_key(a.at(0)));
                       w.blob(codec.put(a.at(1)));
                     }),
                     returns_none());
      }
      if (m == "__getitem__" || m == "get" || m == "pop") {
        Args a(m, args, kwds, {"key", "default"}, 1);
        Object key = a.at(0);
        bool fallback = m == "get" || a.has(1);
        Object dflt = a.has(1) ? a.at(1) : Object();
        return issue(c, e, m == "pop" ? Op::dict_pop : Op::dict_get,
                     body([&](Writer& w) { w.blob(codec.put_key(key)); }),
                     {[codec, key, fallback, dflt](Reader& r) {
                        if (r.boolean()) return codec.get(r.blob());
                        if (!fallback) raise_with(T::KeyError, key);
                        return dflt;
                      },
                      {}});
      }
      if (m == "__contains__") {
        Args a(m, args, kwds, {"key"}, 1);
        return issue(c, e, Op::dict_contains, body([&](Writer& w) { w.blob(codec.put_key(a.at(0))); }),
                     returns_bool());
      }
      if (m == "__delitem__") {
        Args a(m, args, kwds, {"key"}, 1);
        Object key = a.at(0);
        return issue(c, e, Op::dict_erase, body([&](Writer& w) { w.blob(codec.put_key(key)); }),
                     {[key](Reader& r) {
                        if (!r.boolean()) raise_with(T::KeyError, key);
                        return Object();
                      },
                      {}});
      }
      if (m == "__len__") return issue(c, e, Op::dict_size, {}, returns_u64());
      if (m == "keys")
        return issue(c, e, Op::dict_keys, {},
                     {[codec](Reader& r) {
                        std::uint64_t n = r.count(8);
                        py::List keys;
                        for (std::uint64_t k = 0; k < n; ++k) keys.push_back(codec.get_key(r.blob()));
                        return Object(std::move(keys));
                      },
                      {}});
      if (m == "values") return issue(c, e, Op::dict_values, {}, returns_values(codec));
      if (m == "clear") return issue(c, e, Op::dict_clear, {}, returns_none());
      if (m == "items" || m == "copy" || m == "__iter__") {
        Bytes b = query(c, e, Op::dict_items);
        Reader r(b);
        std::uint64_t n = r.count(16);
        py::List items;
        py::Dict d;
        for (std::uint64_t i = 0; i < n; ++i) {
          Object k = codec.get_key(r.blob());
          Object v = codec.get(r.blob());
          if (m == "items")
            items.push_back(Object::tuple({std::move(k), std::move(v)}));
          else if (m == "copy")
            d.set(std::move(k), std::move(v));
          else
            items.push_back(std::move(k));
        }
        if (m == "items") return done(std::move(items));
        if (m == "copy") return done(std::move(d));
        // An iterator over a snapshot of the keys, handed out as a proxy as Python's server does.
        std::string it = add_entry(
            Entry{PyType::iterator, 0, "Iterator", false, 1, std::deque<Object>(items.begin(), items.end())});
        c.send_python_pickle(proxy_reply(PyType::iterator, "Iterator", it));
        return false;
      }
      if (m == "update") {
        Args a(m, args, {}, {"other"});
        py::Dict d;
        if (a.has(0)) {
          if (const auto* o = a.at(0).get_if<py::Dict>())
            d = *o;
          else
            for (const auto& pair : as_sequence(a.at(0), "update()")) {
              const auto& kv = as_sequence(pair, "update()");
              if (kv.size() != 2)
                raise(T::ValueError, "dictionary update sequence element has the wrong length");
              d.set(kv[0], kv[1]);
            }
        }
        for (std::size_t i = 0; i < kwds.size(); ++i) d.set(kwds.keys()[i], kwds.values()[i]);
        return issue(c, e, Op::dict_update, body([&](Writer& w) {
                       w.u64(d.size());
                       for (std::size_t i = 0; i < d.size(); ++i) {
                         w.blob(codec.put(d.keys()[i]));
                         w.blob(codec.put(d.values()[i]));
                       }
                     }),
                     returns_none());
      }
      if (m == "setdefault") {
        Args a(m, args, kwds, {"key", "default"}, 1);
        return issue(c, e, Op::dict_setdefault, body([&](Writer& w) {
                       w.blob(codec.put_key(a.at(0)));
                       w.blob(codec.put(a.has(1) ? a.at(1) : Object()));
                     }),
                     returns_value(codec));
      }
      if (m == "popitem") {
        Args a(m, args, kwds, {});
        return issue(c, e, Op::dict_popitem, {},
                     {[codec](Reader& r) {
                        Object k = codec.get_key(r.blob());
                        return Object::tuple({std::move(k), codec.get(r.blob())});
                      },
                      [](const ErrorInfo& err) -> Object {
                        if (err.code == proto::ErrorCode::key)
                          return py::Exception{T::KeyError, {Object("popitem(): dictionary is empty")}};
                        return exception_for(err);
                      }});
      }
      break;
    }
    case PyType::list:
    case PyType::array: {
      // An edit worked out on a versioned snapshot, applied unless the list changed meanwhile.
      auto edit_snapshot = [&](const auto& edit) {
        for (;;) {
          Bytes b = query(c, e, Op::list_snapshot_versioned);
          Reader r(b);
          std::uint64_t version = r.u64();
          py::List items = edit(codec.get_all(r));
          Bytes applied = query(c, e, Op::list_replace, body([&](Writer& w) {
                                  w.u64(version);
                                  w.u64(items.size());
                                  for (const auto& v : items) w.blob(codec.put(v));
                                }));
          if (Reader(applied).boolean()) return done(Object());
        }
      };
      auto out_of_range = [](const char* text) {
        return [text](const ErrorInfo& err) -> Object {
          if (err.code == proto::ErrorCode::index) return py::Exception{T::IndexError, {Object(text)}};
          return exception_for(err);
        };
      };
      if (m == "__len__") return issue(c, e, Op::list_size, {}, returns_u64());
      if (m == "__getitem__") {
        Args a(m, args, kwds, {"index"}, 1);
        if (a.at(0).kind() == py::Kind::slice) return done(index_snapshot(snapshot(), a.at(0)));
        std::int64_t i = as_int(a.at(0), "list indices");
        return issue(c, e, Op::list_at, body([&](Writer& w) { w.i64(i); }),
                     {returns_value(codec).ok, out_of_range("list index out of range")});
      }
      if (m == "__setitem__") {
        Args a(m, args, kwds, {"index", "value"}, 2);
        if (const auto* s = a.at(0).get_if<py::Slice>()) {
          if (e.type == PyType::array)
            raise(T::TypeError,
                  fmt::format("can only assign array (not \"{}\") to array slice", a.at(1).type_name()));
          if (!a.at(1).get_if<py::List>()) raise(T::TypeError, "can only assign an iterable");
          const py::List& values = as_sequence(a.at(1), "slice assignment");
          return edit_snapshot([&](py::List items) { return assign_slice(std::move(items), *s, &values); });
        }
        std::int64_t i = as_int(a.at(0), "list indices");
        return issue(c, e, Op::list_set, body([&](Writer& w) {
                       w.i64(i);
                       w.blob(codec.put(a.at(1)));
                     }),
                     {returns_none().ok, out_of_range("list assignment index out of range")});
      }
      if (e.type == PyType::array) break;
      if (m == "__delitem__") {
        Args a(m, args, kwds, {"index"}, 1);
        if (const auto* s = a.at(0).get_if<py::Slice>())
          return edit_snapshot([&](py::List items) { return assign_slice(std::move(items), *s, nullptr); });
        std::int64_t i = as_int(a.at(0), "list indices");
        return issue(c, e, Op::list_erase, body([&](Writer& w) { w.i64(i); }),
                     {returns_none().ok, out_of_range("list assignment index out of range")});
      }
      if (m == "append") {
        Args a(m, args, kwds, {"object"}, 1);
        return issue(c, e, Op::list_append, body([&](Writer& w) { w.blob(codec.put(a.at(0))); }),
                     returns_none());
      }
      if (m == "extend") {
        Args a(m, args, kwds, {"iterable"}, 1);
        const auto& items = as_sequence(a.at(0), "extend()");
        return issue(c, e, Op::list_extend, body([&](Writer& w) {
                       w.u64(items.size());
                       for (const auto& v : items) w.blob(codec.put(v));
                     }),
                     returns_none());
      }
      if (m == "insert") {
        Args a(m, args, kwds, {"index", "object"}, 2);
        std::int64_t i = as_int(a.at(0), "list indices");
        return issue(c, e, Op::list_insert, body([&](Writer& w) {
                       w.i64(i);
                       w.blob(codec.put(a.at(1)));
                     }),
                     returns_none());
      }
      if (m == "pop") {
        Args a(m, args, kwds, {"index"});
        std::int64_t i = a.has(0) ? as_int(a.at(0), "list indices") : -1;
        return issue(c, e, Op::list_pop, body([&](Writer& w) { w.i64(i); }),
                     {returns_value(codec).ok, out_of_range("pop index out of range")});
      }
      if (m == "remove" || m == "index" || m == "count" || m == "__contains__") {
        Args a(m, args, kwds, {"value", "start", "stop"}, 1);
        Op op = m == "remove" ? Op::list_remove : m == "index" ? Op::list_index : Op::list_count;
        Object v = a.at(0);
        PyAnswer answer = m == "remove" ? returns_none() : returns_u64();
        if (m == "__contains__") answer = {[](Reader& r) { return Object(r.u64() > 0); }, {}};
        answer.error = [v, remove = m == "remove"](const ErrorInfo& err) -> Object {
          if (err.code == proto::ErrorCode::value)
            return py::Exception{
                T::ValueError,
                {Object(remove ? "list.remove(x): x not in list" : py::repr(v) + " is not in list")}};
          return exception_for(err);
        };
        return issue(c, e, op, body([&](Writer& w) { w.blob(codec.put(v)); }), std::move(answer));
      }
      if (m == "reverse") return issue(c, e, Op::list_reverse, {}, returns_none());
      if (m == "__add__") {
        Args a(m, args, kwds, {"other"}, 1);
        py::List items = snapshot();
        for (const auto& v : as_sequence(a.at(0), "+")) items.push_back(v);
        return done(std::move(items));
      }
      if (m == "__mul__" || m == "__rmul__" || m == "__imul__") {
        Args a(m, args, kwds, {"n"}, 1);
        std::int64_t n = as_int(a.at(0), "can't multiply sequence by non-int");
        py::List items = snapshot(), out;
        if (n > 0 && items.size() * static_cast<std::uint64_t>(n) > (std::size_t{1} << 26))
          raise(T::ValueError, "mpx server: the repeated list would be too large");
        for (std::int64_t k = 0; k < n; ++k) out.insert(out.end(), items.begin(), items.end());
        if (m != "__imul__") return done(std::move(out));
        query(c, e, Op::list_clear);
        return issue(c, e, Op::list_extend, body([&](Writer& w) {
                       w.u64(out.size());
                       for (const auto& v : out) w.blob(codec.put(v));
                     }),
                     {[out](Reader&) { return Object(out); }, {}});
      }
      if (m == "sort") {
        Args a(m, args, kwds, {"key", "reverse"});
        if (a.has(0) && !a.at(0).is_none()) raise(T::TypeError, "mpx server: sort(key=...) is not supported");
        bool reverse = a.has(1) && truthy(a.at(1));
        // Sort a versioned snapshot and apply it as a permutation unless the list changed since.
        for (;;) {
          Bytes b = query(c, e, Op::list_snapshot_versioned);
          Reader r(b);
          std::uint64_t version = r.u64();
          py::List items = codec.get_all(r);
          std::vector<std::uint64_t> order(items.size());
          for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
          std::stable_sort(order.begin(), order.end(), [&](std::uint64_t x, std::uint64_t y) {
            return reverse ? less(items[y], items[x]) : less(items[x], items[y]);
          });
          Bytes applied = query(c, e, Op::list_permute, body([&](Writer& w) {
                                  w.u64(version);
                                  w.u64(order.size());
                                  for (auto p : order) w.u64(p);
                                }));
          if (Reader(applied).boolean()) return done(Object());
        }
      }
      break;
    }
    case PyType::queue:
    case PyType::joinable_queue: {
      if (m == "put" || m == "put_nowait") {
        Args a(m, args, kwds, {"item", "block", "timeout"}, 1);
        bool block = m == "put" && (!a.has(1) || truthy(a.at(1)));
        std::int64_t t = timeout_ns(a[2], block);
        return issue(c, e, Op::queue_put, body([&](Writer& w) {
                       w.blob(codec.put(a.at(0)));
                       w.i64(t);
                     }),
                     returns_none());
      }
      if (m == "get" || m == "get_nowait") {
        Args a(m, args, kwds, {"block", "timeout"});
        bool block = m == "get" && (!a.has(0) || truthy(a.at(0)));
        std::int64_t t = timeout_ns(a[1], block);
        // Decoded by the tag the queue has when the item arrives: a get that waits on a queue
        // of pickles may be answered after a C++ client has taken the queue over.
        return issue(c, e, Op::queue_get, body([&](Writer& w) { w.i64(t); }),
                     {[this, oid = e.oid](Reader& r) { return codec_for(oid).get(r.blob()); }, {}});
      }
      Args no_args(m, args, kwds, {});
      if (m == "qsize") return issue(c, e, Op::queue_size, {}, returns_u64());
      if (m == "empty") return issue(c, e, Op::queue_empty, {}, returns_bool());
      if (m == "full") return issue(c, e, Op::queue_full, {}, returns_bool());
      if (m == "task_done" || m == "join") {
        if (e.type != PyType::joinable_queue)
          raise(T::AttributeError, fmt::format("mpx server: {}() needs a JoinableQueue", m));
        if (m == "join")
          return issue(c, e, Op::queue_join, body([](Writer& w) { w.i64(proto::kForever); }),
                       {[](Reader&) { return Object(); }, {}});
        return issue(c, e, Op::queue_task_done, {},
                     {returns_none().ok, [](const ErrorInfo& err) -> Object {
                        if (err.code == proto::ErrorCode::state)
                          return py::Exception{T::ValueError, {Object("task_done() called too many times")}};
                        return exception_for(err);
                      }});
      }
      break;
    }
    case PyType::lock:
    case PyType::rlock:
    case PyType::semaphore:
    case PyType::bounded_semaphore:
    case PyType::condition: {
      if (m == "acquire") {
        Args a(m, args, kwds, {"blocking", "timeout"});
        bool block = !a.has(0) || truthy(a.at(0));
        const Object* t = a[1];
        // Lock.acquire takes -1 for "no timeout"; the others take None.
        bool forever = !t || t->is_none() ||
                       (t->kind() == py::Kind::integer && t->get<std::int64_t>() == -1) ||
                       (t->kind() == py::Kind::floating && t->get<double>() == -1.0);
        if (!block && t && !forever) raise(T::ValueError, "can't specify a timeout for a non-blocking call");
        std::int64_t ns = !block ? 0 : forever ? proto::kForever : timeout_ns(t);
        return issue(c, e, Op::acquire, body([&](Writer& w) { w.i64(ns); }), returns_bool());
      }
      if (m == "release") {
        Args a(m, args, kwds, {"n"});
        std::int64_t n = a.has(0) ? as_int(a.at(0), "n") : 1;
        if (n < 1 || n > UINT32_MAX) raise(T::ValueError, "n must be one or more");
        return issue(c, e, Op::release, body([&](Writer& w) { w.u32(static_cast<std::uint32_t>(n)); }),
                     {returns_none().ok, [type = e.type](const ErrorInfo& err) -> Object {
                        if (err.code != proto::ErrorCode::state) return exception_for(err);
                        if (type == PyType::bounded_semaphore)
                          return py::Exception{T::ValueError, {Object("Semaphore released too many times")}};
                        if (type == PyType::lock)
                          return py::Exception{T::RuntimeError, {Object("release unlocked lock")}};
                        return py::Exception{T::RuntimeError, {Object("cannot release un-acquired lock")}};
                      }});
      }
      if (e.type != PyType::condition) break;
      if (m == "wait") {
        Args a(m, args, kwds, {"timeout"});
        return issue(c, e, Op::cond_wait, body([&](Writer& w) { w.i64(timeout_ns(a[0])); }),
                     {returns_bool().ok, [](const ErrorInfo& err) -> Object {
                        if (err.code == proto::ErrorCode::state)
                          return py::Exception{T::RuntimeError, {Object("cannot wait on un-acquired lock")}};
                        return exception_for(err);
                      }});
      }
      auto not_owned = [](const ErrorInfo& err) -> Object {
        if (err.code == proto::ErrorCode::state)
          return py::Exception{T::RuntimeError, {Object("cannot notify on un-acquired lock")}};
        return exception_for(err);
      };
      if (m == "notify") {
        Args a(m, args, kwds, {"n"});
        std::int64_t n = a.has(0) ? as_int(a.at(0), "n") : 1;
        n = std::clamp<std::int64_t>(n, 0, UINT32_MAX);
        return issue(c, e, Op::cond_notify, body([&](Writer& w) { w.u32(static_cast<std::uint32_t>(n)); }),
                     {returns_none().ok, not_owned});
      }
      if (m == "notify_all") return issue(c, e, Op::cond_notify_all, {}, {returns_none().ok, not_owned});
      break;
    }
    case PyType::event: {
      if (m == "is_set") return issue(c, e, Op::event_is_set, {}, returns_bool());
      if (m == "set") return issue(c, e, Op::event_set, {}, returns_none());
      if (m == "clear") return issue(c, e, Op::event_clear, {}, returns_none());
      if (m == "wait") {
        Args a(m, args, kwds, {"timeout"});
        return issue(c, e, Op::event_wait, body([&](Writer& w) { w.i64(timeout_ns(a[0])); }), returns_bool());
      }
      break;
    }
    case PyType::barrier: {
      auto returns_u32 = [] { return PyAnswer{[](Reader& r) { return Object(r.u32()); }, {}}; };
      if (m == "wait") {
        Args a(m, args, kwds, {"timeout"});
        return issue(c, e, Op::barrier_wait, body([&](Writer& w) { w.i64(timeout_ns(a[0])); }),
                     returns_u32());
      }
      if (m == "abort") return issue(c, e, Op::barrier_abort, {}, returns_none());
      if (m == "reset") return issue(c, e, Op::barrier_reset, {}, returns_none());
      if (m == "__getattribute__") {
        Args a(m, args, kwds, {"name"}, 1);
        const auto* name = a.at(0).get_if<std::string>();
        if (name && *name == "parties") return issue(c, e, Op::barrier_parties, {}, returns_u32());
        if (name && *name == "n_waiting") return issue(c, e, Op::barrier_n_waiting, {}, returns_u32());
        if (name && *name == "broken") return issue(c, e, Op::barrier_broken, {}, returns_bool());
        raise(T::AttributeError, fmt::format("'Barrier' object has no attribute {}", py::repr(a.at(0))));
      }
      break;
    }
    case PyType::namespace_: {
      Args a(m, args, kwds, {"name", "value"}, 1);
      const auto* name = a.at(0).get_if<std::string>();
      if (!name) raise(T::TypeError, "attribute name must be string");
      std::string attr = *name;
      if (m == "__getattribute__")
        return issue(c, e, Op::ns_get, body([&](Writer& w) {
                       w.str(attr);
                       w.str(kPickleTag);
                     }),
                     {returns_value(Codec{}).ok, [attr](const ErrorInfo& err) -> Object {
                        if (err.code == proto::ErrorCode::key)
                          return py::Exception{
                              T::AttributeError,
                              {Object("'Namespace' object has no attribute '" + attr + "'")}};
                        return exception_for(err);
                      }});
      if (m == "__setattr__") {
        if (!a.has(1)) raise(T::TypeError, "__setattr__() missing required argument 'value'");
        return issue(c, e, Op::ns_set, body([&](Writer& w) {
                       w.str(attr);
                       w.str(kPickleTag);
                       w.blob(pickled(a.at(1)));
                     }),
                     returns_none());
      }
      if (m == "__delattr__")
        return issue(c, e, Op::ns_erase, body([&](Writer& w) { w.str(attr); }),
                     {[attr](Reader& r) {
                        if (!r.boolean())
                          raise(T::AttributeError, "'Namespace' object has no attribute '" + attr + "'");
                        return Object();
                      },
                      {}});
      break;
    }
    case PyType::value: {
      if (m == "get") {
        Args a(m, args, kwds, {});
        return issue(c, e, Op::value_get, {}, returns_value(codec));
      }
      if (m == "set") {
        Args a(m, args, kwds, {"value"}, 1);
        return issue(c, e, Op::value_set, body([&](Writer& w) { w.blob(codec.put(a.at(0))); }),
                     returns_none());
      }
      break;
    }
    case PyType::task_queue: {
      const Obj* q = server_.find(e.oid);
      const auto* catalog = q ? task_catalog(*q) : nullptr;
      if (!catalog) throw StateError("mpx: the task queue is gone");
      if (m == "tasks") {
        Args a(m, args, kwds, {});
        py::List out;
        for (const auto& [task, sig] : *catalog)
          out.push_back(Object::tuple({Object(task), Object(sig.args_tag), Object(sig.result_tag)}));
        return done(std::move(out));
      }
      if (m == "submit") return submit_task(c, e, *catalog, args, kwds);
      break;
    }
    case PyType::iterator: {
      if (m == "__next__" || m == "send") {
        if (e.rest.empty()) throw Raise{{T::StopIteration, {}}};
        Object v = std::move(e.rest.front());
        e.rest.pop_front();
        return done(std::move(v));
      }
      if (m == "close") {
        e.rest.clear();
        return done(Object());
      }
      if (m == "throw") raise(T::RuntimeError, "mpx server: throw() into a snapshot iterator");
      break;
    }
  }
  throw Traceback{
      fmt::format("AttributeError: method {} of {} object is not served", py::repr(Object(m)), e.typeid_)};
}

}  // namespace mpx::detail::server
