// pickle/ — the pickle codec of <mpx/pickle.hpp>. Bytes are read and written with mpx::proto's
// byte codec (little-endian scalars); the few big-endian and text fields of pickle are here.
//
// loads runs Python's unpickling machine over a graph: every container is a node that later
// opcodes may still fill (APPEND, SETITEM ...), and the stack and memo hold references to
// nodes, so shared references and memo lookups cost nothing while parsing. Only at STOP is
// the graph turned into Object values, depth-first: a node met again while it is being built
// is a cycle (refused), a node met again after is shared (copied, within max_objects).
#include <mpx/errors.hpp>
#include <mpx/pickle.hpp>
#include <mpx/proto/codec.hpp>

#include "dict_access.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>

namespace mpx::py {

namespace {

// ---- opcodes (Python's Lib/pickle.py)
enum Op : std::uint8_t {
  MARK = '(',
  STOP = '.',
  POP = '0',
  POP_MARK = '1',
  DUP = '2',
  FLOAT = 'F',
  INT = 'I',
  BININT = 'J',
  BININT1 = 'K',
  LONG = 'L',
  BININT2 = 'M',
  NONE = 'N',
  PERSID = 'P',
  BINPERSID = 'Q',
  REDUCE = 'R',
  STRING = 'S',
  BINSTRING = 'T',
  SHORT_BINSTRING = 'U',
  UNICODE = 'V',
  BINUNICODE = 'X',
  APPEND = 'a',
  BUILD = 'b',
  GLOBAL = 'c',
  DICT = 'd',
  EMPTY_DICT = '}',
  APPENDS = 'e',
  GET = 'g',
  BINGET = 'h',
  INST = 'i',
  LONG_BINGET = 'j',
  LIST = 'l',
  EMPTY_LIST = ']',
  OBJ = 'o',
  PUT = 'p',
  BINPUT = 'q',
  LONG_BINPUT = 'r',
  SETITEM = 's',
  TUPLE = 't',
  EMPTY_TUPLE = ')',
  SETITEMS = 'u',
  BINFLOAT = 'G',
  PROTO = 0x80,
  NEWOBJ = 0x81,
  EXT1 = 0x82,
  EXT2 = 0x83,
  EXT4 = 0x84,
  TUPLE1 = 0x85,
  TUPLE2 = 0x86,
  TUPLE3 = 0x87,
  NEWTRUE = 0x88,
  NEWFALSE = 0x89,
  LONG1 = 0x8a,
  LONG4 = 0x8b,
  BINBYTES = 'B',
  SHORT_BINBYTES = 'C',
  SHORT_BINUNICODE = 0x8c,
  BINUNICODE8 = 0x8d,
  BINBYTES8 = 0x8e,
  EMPTY_SET = 0x8f,
  ADDITEMS = 0x90,
  FROZENSET = 0x91,
  NEWOBJ_EX = 0x92,
  STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94,
  FRAME = 0x95,
  BYTEARRAY8 = 0x96,
  NEXT_BUFFER = 0x97,
  READONLY_BUFFER = 0x98,
};

const char* op_name(std::uint8_t op) {
  switch (op) {
    case PERSID:
      return "PERSID";
    case BINPERSID:
      return "BINPERSID";
    case BUILD:
      return "BUILD";
    case INST:
      return "INST";
    case OBJ:
      return "OBJ";
    case NEWOBJ:
      return "NEWOBJ";
    case NEWOBJ_EX:
      return "NEWOBJ_EX";
    case EXT1:
      return "EXT1";
    case EXT2:
      return "EXT2";
    case EXT4:
      return "EXT4";
    case NEXT_BUFFER:
      return "NEXT_BUFFER";
    case READONLY_BUFFER:
      return "READONLY_BUFFER";
    case GLOBAL:
      return "GLOBAL";
    case STACK_GLOBAL:
      return "STACK_GLOBAL";
    case REDUCE:
      return "REDUCE";
    default:
      return nullptr;
  }
}

[[noreturn]] void fail(const std::string& what) { throw ProtocolError("pickle: " + what); }
[[noreturn]] void reader_failure(const char* what) { fail(what); }

// UTF-8 as Python writes str (encoded with 'surrogatepass': lone surrogates allowed).
bool valid_utf8(const unsigned char* p, std::size_t n) {
  // Most text is ASCII: one branch-free pass decides it.
  unsigned char any = 0;
  for (std::size_t k = 0; k < n; ++k) any |= p[k];
  if (any < 0x80) return true;
  std::size_t i = 0;
  while (i < n) {
    while (i + 8 <= n) {  // ASCII, a word at a time
      std::uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    std::uint32_t cp;
    if (c >= 0xc2 && c < 0xe0) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c < 0xf0) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c < 0xf5) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return false;
    i += len;
  }
  return true;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

// ---- dumps

constexpr int kMaxDumpDepth = 1000;
constexpr std::size_t kFrameTarget = 64 * 1024;
constexpr std::size_t kBatch = 1000;

// Python's module names for protocols 0-2 (its _compat_pickle, with fix_imports).
struct GlobalName {
  const char* module3;
  const char* module2;
  const char* name;
};

GlobalName exception_global(ExceptionType t) {
  switch (t) {
    case ExceptionType::KeyError:
      return {"builtins", "exceptions", "KeyError"};
    case ExceptionType::IndexError:
      return {"builtins", "exceptions", "IndexError"};
    case ExceptionType::ValueError:
      return {"builtins", "exceptions", "ValueError"};
    case ExceptionType::TypeError:
      return {"builtins", "exceptions", "TypeError"};
    case ExceptionType::AttributeError:
      return {"builtins", "exceptions", "AttributeError"};
    case ExceptionType::RuntimeError:
      return {"builtins", "exceptions", "RuntimeError"};
    case ExceptionType::Empty:
      return {"_queue", "_queue", "Empty"};
    case ExceptionType::Full:
      return {"queue", "Queue", "Full"};
    case ExceptionType::BrokenBarrierError:
      return {"threading", "threading", "BrokenBarrierError"};
    case ExceptionType::StopIteration:
      return {"builtins", "exceptions", "StopIteration"};
  }
  return {"builtins", "exceptions", "RuntimeError"};
}

// The pickler's output: the buffer is grown ahead in steps and written through a cursor, so an
// opcode costs a store, not a vector insert; the unused tail is cut when the pickler is done
// (also when it throws, so a failed dumps_append leaves what it had written, as before).
class Out {
 public:
  explicit Out(Bytes& v) : v_(v), pos_(v.size()) {}
  Out(const Out&) = delete;
  Out& operator=(const Out&) = delete;
  ~Out() { v_.resize(pos_); }

  std::size_t size() const noexcept { return pos_; }
  void reserve(std::size_t n) {
    if (v_.size() - pos_ < n) grow(n);
  }
  void u8(std::uint8_t x) {
    reserve(1);
    v_[pos_++] = static_cast<std::byte>(x);
  }
  void u32(std::uint32_t x) { raw(&x, sizeof x); }
  void u64(std::uint64_t x) { raw(&x, sizeof x); }
  void i32(std::int32_t x) { raw(&x, sizeof x); }
  void raw(const void* p, std::size_t n) {
    if (n == 0) return;  // an empty str or bytes may have no data pointer at all
    reserve(n);
    std::memcpy(v_.data() + pos_, p, n);
    pos_ += n;
  }
  // Writes without a capacity check, after a reserve() that covers them.
  void put8(std::uint8_t x) noexcept { v_[pos_++] = static_cast<std::byte>(x); }
  void put(const void* p, std::size_t n) noexcept {
    if (n != 0) std::memcpy(v_.data() + pos_, p, n);
    pos_ += n;
  }
  template <class T>
  void patch(std::size_t at, T x) noexcept {
    std::memcpy(v_.data() + at, &x, sizeof x);
  }
  void erase(std::size_t at, std::size_t n) {
    std::memmove(v_.data() + at, v_.data() + at + n, pos_ - at - n);
    pos_ -= n;
  }

 private:
  void grow(std::size_t n) { v_.resize(std::max({pos_ + n, v_.size() * 2, std::size_t{256}})); }
  Bytes& v_;
  std::size_t pos_;
};

class Pickler {
 public:
  Pickler(Bytes& out, int protocol) : w_(out), proto_(protocol) {
    if (protocol < 2 || protocol > 5)
      throw ValueError("py::dumps: protocol must be 2..5, not " + std::to_string(protocol));
  }

  void run(const Object& o) {
    w_.u8(PROTO);
    w_.u8(static_cast<std::uint8_t>(proto_));
    if (proto_ >= 4) start_frame();
    dump(o, 0);
    w_.u8(STOP);
    if (proto_ >= 4) commit_frame();
  }

 private:
  void start_frame() {
    frame_ = w_.size();
    w_.u8(FRAME);
    w_.u64(0);
  }
  void commit_frame() {
    std::size_t len = w_.size() - frame_ - 9;
    if (len < 4)
      w_.erase(frame_, 9);
    else
      w_.patch<std::uint64_t>(frame_ + 1, len);
  }
  // Between opcodes: a frame that has grown past the target is closed and the next begun.
  void boundary() {
    if (proto_ >= 4 && w_.size() - frame_ - 9 >= kFrameTarget) {
      commit_frame();
      start_frame();
    }
  }

  void global(const char* module3, const char* module2, const char* name) {
    if (proto_ >= 4) {
      short_unicode(module3);
      short_unicode(name);
      w_.u8(STACK_GLOBAL);
    } else {
      w_.u8(GLOBAL);
      std::string_view m = proto_ < 3 ? module2 : module3;
      w_.raw(m.data(), m.size());
      w_.u8('\n');
      w_.raw(name, std::strlen(name));
      w_.u8('\n');
    }
  }
  void short_unicode(std::string_view s) {
    w_.reserve(2 + s.size());
    w_.put8(SHORT_BINUNICODE);
    w_.put8(static_cast<std::uint8_t>(s.size()));
    w_.put(s.data(), s.size());
  }

  void str(const std::string& s) {
    if (!valid_utf8(reinterpret_cast<const unsigned char*>(s.data()), s.size()))
      throw ValueError("py::dumps: a str that is not UTF-8");
    if (proto_ >= 4 && s.size() < 256) {
      short_unicode(s);
    } else if (s.size() <= UINT32_MAX) {
      w_.u8(BINUNICODE);
      w_.u32(static_cast<std::uint32_t>(s.size()));
      w_.raw(s.data(), s.size());
    } else if (proto_ >= 4) {
      w_.u8(BINUNICODE8);
      w_.u64(s.size());
      w_.raw(s.data(), s.size());
    } else {
      throw ValueError("py::dumps: a str over 4 GiB needs protocol 4");
    }
  }

  void raw_bytes(const Bytes& b) {  // protocol 3+
    if (b.size() < 256) {
      w_.u8(SHORT_BINBYTES);
      w_.u8(static_cast<std::uint8_t>(b.size()));
    } else if (b.size() <= UINT32_MAX) {
      w_.u8(BINBYTES);
      w_.u32(static_cast<std::uint32_t>(b.size()));
    } else if (proto_ >= 4) {
      w_.u8(BINBYTES8);
      w_.u64(b.size());
    } else {
      throw ValueError("py::dumps: bytes over 4 GiB need protocol 4");
    }
    w_.raw(b.data(), b.size());
  }

  // Protocol 2 has no bytes opcode: _codecs.encode(<the bytes as latin-1 text>, 'latin1').
  void bytes(const Bytes& b) {
    if (proto_ >= 3) return raw_bytes(b);
    if (b.empty()) {
      global("builtins", "__builtin__", "bytes");
      w_.u8(EMPTY_TUPLE);
      w_.u8(REDUCE);
      return;
    }
    global("_codecs", "_codecs", "encode");
    std::string latin1;
    latin1.reserve(b.size() * 2);
    for (std::byte x : b) append_utf8(latin1, static_cast<std::uint8_t>(x));
    str(latin1);
    str("latin1");
    w_.u8(TUPLE2);
    w_.u8(REDUCE);
  }

  void integer(std::int64_t v) {
    if (v >= 0 && v <= 0xff) {
      w_.u8(BININT1);
      w_.u8(static_cast<std::uint8_t>(v));
    } else if (v >= 0 && v <= 0xffff) {
      w_.u8(BININT2);
      std::uint16_t x = static_cast<std::uint16_t>(v);
      w_.raw(&x, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      w_.u8(BININT);
      w_.i32(static_cast<std::int32_t>(v));
    } else {
      // LONG1: the fewest little-endian two's-complement bytes that keep the sign.
      std::uint8_t buf[8];
      auto u = static_cast<std::uint64_t>(v);
      std::memcpy(buf, &u, 8);
      std::size_t n = 8;
      while (n > 1) {
        bool neg = buf[n - 1] == 0xff && (buf[n - 2] & 0x80);
        bool pos = buf[n - 1] == 0x00 && !(buf[n - 2] & 0x80);
        if (!neg && !pos) break;
        --n;
      }
      w_.u8(LONG1);
      w_.u8(static_cast<std::uint8_t>(n));
      w_.raw(buf, n);
    }
  }

  void items(const List& l, int depth) {
    for (const auto& x : l) dump(x, depth + 1);
  }

  void tuple(const List& l, int depth) {
    switch (l.size()) {
      case 0:
        w_.u8(EMPTY_TUPLE);
        return;
      case 1:
        items(l, depth), w_.u8(TUPLE1);
        return;
      case 2:
        items(l, depth), w_.u8(TUPLE2);
        return;
      case 3:
        items(l, depth), w_.u8(TUPLE3);
        return;
      default:
        w_.u8(MARK);
        items(l, depth);
        w_.u8(TUPLE);
    }
  }

  // Items after an EMPTY_LIST / EMPTY_SET in batches of kBatch: `one` for a single item, MARK
  // ... `many` otherwise.
  void batched(const List& l, std::uint8_t one, std::uint8_t many, int depth) {
    for (std::size_t i = 0; i < l.size(); i += kBatch) {
      std::size_t n = std::min(kBatch, l.size() - i);
      if (n == 1 && one) {
        dump(l[i], depth + 1);
        w_.u8(one);
      } else {
        w_.u8(MARK);
        for (std::size_t k = 0; k < n; ++k) item(l[i + k], depth);
        w_.u8(many);
      }
      boundary();
    }
  }

  void list_for_reduce(const List& l, int depth) {  // set(list) / frozenset(list) below protocol 4
    w_.u8(EMPTY_LIST);
    batched(l, APPEND, APPENDS, depth);
  }

  void binfloat(double d) {
    auto bits = __builtin_bswap64(std::bit_cast<std::uint64_t>(d));  // BINFLOAT is big-endian
    w_.reserve(9);
    w_.put8(BINFLOAT);
    w_.put(&bits, 8);
  }

  // An item of a container: the common scalars written here, inline, without dump()'s
  // dispatch (a mispredicted jump per item, where a dict of str -> float alternates).
  void item(const Object& x, int depth) {
    if (depth >= kMaxDumpDepth) {  // dump() throws there, for scalars too
      dump(x, depth + 1);
    } else if (auto* s = x.get_if<std::string>();
               s && x.kind() == Kind::str && proto_ >= 4 && s->size() < 256) {
      if (!valid_utf8(reinterpret_cast<const unsigned char*>(s->data()), s->size()))
        throw ValueError("py::dumps: a str that is not UTF-8");
      short_unicode(*s);
    } else if (auto* d = x.get_if<double>()) {
      binfloat(*d);
    } else {
      dump(x, depth + 1);
    }
  }

  void dump(const Object& o, int depth) {
    if (depth > kMaxDumpDepth) throw ValueError("py::dumps: nesting deeper than 1000");
    switch (o.kind()) {
      case Kind::none:
        w_.u8(NONE);
        break;
      case Kind::boolean:
        w_.u8(o.get<bool>() ? NEWTRUE : NEWFALSE);
        break;
      case Kind::integer:
        integer(o.get<std::int64_t>());
        break;
      case Kind::floating:
        binfloat(o.get<double>());
        break;
      case Kind::str:
        str(o.get<std::string>());
        break;
      case Kind::bytes:
        bytes(o.get<Bytes>());
        break;
      case Kind::bytearray: {
        const Bytes& b = o.get<Bytes>();
        if (proto_ >= 5) {
          w_.u8(BYTEARRAY8);
          w_.u64(b.size());
          w_.raw(b.data(), b.size());
          break;
        }
        global("builtins", "__builtin__", "bytearray");
        if (proto_ >= 3 || !b.empty()) bytes(b);
        if (proto_ >= 3 || !b.empty())
          w_.u8(TUPLE1);
        else
          w_.u8(EMPTY_TUPLE);
        w_.u8(REDUCE);
        break;
      }
      case Kind::list:
        w_.u8(EMPTY_LIST);
        batched(o.get<List>(), APPEND, APPENDS, depth);
        break;
      case Kind::tuple:
        tuple(o.get<List>(), depth);
        break;
      case Kind::dict: {
        const Dict& d = o.get<Dict>();
        // A guess (a short key and a scalar per item) that spares most of the regrowth.
        w_.reserve(std::min<std::size_t>(d.size(), kBatch) * 20 + 8);
        w_.u8(EMPTY_DICT);
        for (std::size_t i = 0; i < d.size(); i += kBatch) {
          std::size_t n = std::min(kBatch, d.size() - i);
          if (n > 1) w_.u8(MARK);
          for (std::size_t k = i; k < i + n; ++k) {
            item(d.keys()[k], depth);
            item(d.values()[k], depth);
          }
          w_.u8(n > 1 ? SETITEMS : SETITEM);
          boundary();
        }
        break;
      }
      case Kind::set:
        if (proto_ >= 4) {
          w_.u8(EMPTY_SET);
          batched(o.get<Set>().items(), 0, ADDITEMS, depth);
        } else {
          global("builtins", "__builtin__", "set");
          list_for_reduce(o.get<Set>().items(), depth);
          w_.u8(TUPLE1);
          w_.u8(REDUCE);
        }
        break;
      case Kind::frozenset:
        if (proto_ >= 4) {
          w_.u8(MARK);
          items(o.get<Set>().items(), depth);
          w_.u8(FROZENSET);
        } else {
          global("builtins", "__builtin__", "frozenset");
          list_for_reduce(o.get<Set>().items(), depth);
          w_.u8(TUPLE1);
          w_.u8(REDUCE);
        }
        break;
      case Kind::slice: {
        const Slice& s = o.get<Slice>();
        global("builtins", "__builtin__", "slice");
        dump(s.start(), depth + 1);
        dump(s.stop(), depth + 1);
        dump(s.step(), depth + 1);
        w_.u8(TUPLE3);
        w_.u8(REDUCE);
        break;
      }
      case Kind::exception: {
        const Exception& e = o.get<Exception>();
        GlobalName g = exception_global(e.type);
        global(g.module3, g.module2, g.name);
        tuple(e.args, depth);
        w_.u8(REDUCE);
        break;
      }
    }
  }

  Out w_;
  int proto_;
  std::size_t frame_ = 0;
};

// ---- loads

// The callables loads accepts as REDUCE's first argument (Python's own reductions of the types).
enum class Callable : std::uint8_t { codecs_encode, bytes, bytearray, set, frozenset, slice, exception };

struct Global {
  Callable callable;
  ExceptionType exception = ExceptionType::KeyError;
};

bool resolve_global(std::string_view module, std::string_view name, Global& g) {
  bool builtins = module == "builtins" || module == "__builtin__";
  if (module == "_codecs" && name == "encode") return g = {Callable::codecs_encode}, true;
  if (builtins) {
    if (name == "bytes") return g = {Callable::bytes}, true;
    if (name == "bytearray") return g = {Callable::bytearray}, true;
    if (name == "set") return g = {Callable::set}, true;
    if (name == "frozenset") return g = {Callable::frozenset}, true;
    if (name == "slice") return g = {Callable::slice}, true;
  }
  if (builtins || module == "exceptions") {
    static constexpr std::pair<std::string_view, ExceptionType> names[] = {
        {"KeyError", ExceptionType::KeyError},
        {"IndexError", ExceptionType::IndexError},
        {"ValueError", ExceptionType::ValueError},
        {"TypeError", ExceptionType::TypeError},
        {"AttributeError", ExceptionType::AttributeError},
        {"RuntimeError", ExceptionType::RuntimeError},
        {"StopIteration", ExceptionType::StopIteration}};
    for (auto& [n, t] : names)
      if (name == n) return g = {Callable::exception, t}, true;
  }
  if ((module == "_queue" || module == "queue" || module == "Queue") && name == "Empty")
    return g = {Callable::exception, ExceptionType::Empty}, true;
  if ((module == "queue" || module == "Queue") && name == "Full")
    return g = {Callable::exception, ExceptionType::Full}, true;
  if (module == "threading" && name == "BrokenBarrierError")
    return g = {Callable::exception, ExceptionType::BrokenBarrierError}, true;
  return false;
}

class Unpickler {
 public:
  Unpickler(std::span<const std::byte> in, const LoadLimits& limits)
      : in_(in), r_(in, &reader_failure), limits_(limits) {
    budget_ = limits.max_objects ? limits.max_objects : 4 * in.size() + (std::size_t{1} << 20);
    // An opcode takes at least a byte: a modest guess from the length, not a promise of it.
    std::size_t guess = std::min<std::size_t>(in.size() / 4, 1 << 14);
    leaves_.reserve(guess);
    stack_.reserve(guess);
    leaves_.push_back({Object(), true});
    leaves_.push_back({Object(true), true});
    leaves_.push_back({Object(false), true});
  }

  Object run() {
    for (;;) {
      std::uint8_t op = r_.u8();
      if (op == STOP) break;
      step(op);
    }
    if (r_.remaining()) fail("trailing bytes after STOP");
    if (stack_.size() != 1 || !marks_.empty())
      fail("STOP with " + std::to_string(stack_.size()) + " objects on the stack");
    return build(stack_.back(), 0);
  }

 private:
  // A reference: a leaf (scalar Object) or a node (container or global), by index.
  using Ref = std::uint32_t;
  static constexpr Ref kNode = 0x80000000u;
  enum class NodeKind : std::uint8_t { list, tuple, dict, set, frozenset, slice, exception, global };
  enum class State : std::uint8_t { fresh, building, built };
  struct Node {
    NodeKind kind = NodeKind::list;
    State state = State::fresh;
    bool shared = false;
    Global global{};
    std::vector<Ref> kids;  // dict: key, value, key, value ...
  };
  struct Leaf {
    Object value;
    bool shared = false;
  };

  Ref leaf(Object o) {
    check_refs();
    leaves_.push_back({std::move(o)});
    return static_cast<Ref>(leaves_.size() - 1);
  }
  Ref node(NodeKind k) {
    check_refs();
    nodes_.emplace_back().kind = k;
    return static_cast<Ref>(nodes_.size() - 1) | kNode;
  }
  void check_refs() {
    if (leaves_.size() + nodes_.size() >= kNode - 1) fail("too many objects");
  }
  Node* as_node(Ref r) { return (r & kNode) ? &nodes_[r & ~kNode] : nullptr; }
  void push(Ref r) { stack_.push_back(r); }
  Ref pop() {
    if (stack_.size() <= floor()) fail("stack underflow");
    Ref r = stack_.back();
    stack_.pop_back();
    return r;
  }
  Ref& top() {
    if (stack_.size() <= floor()) fail("stack underflow");
    return stack_.back();
  }
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<Ref> pop_mark() {
    if (marks_.empty()) fail("MARK expected");
    std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Ref> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  void share(Ref r) {
    if (Node* n = as_node(r))
      n->shared = true;
    else
      leaves_[r].shared = true;
  }

  // ---- reading
  std::string_view line() {
    std::span<const std::byte> rest = in_.subspan(in_.size() - r_.remaining());
    auto* p = reinterpret_cast<const char*>(rest.data());
    auto* nl = static_cast<const char*>(std::memchr(p, '\n', rest.size()));
    if (!nl) fail("truncated (a line without its newline)");
    std::size_t n = static_cast<std::size_t>(nl - p);
    r_.take(n + 1);
    return {p, n};
  }
  std::string_view chars(std::uint64_t n) {
    if (n > r_.remaining()) fail("a length beyond the input");
    auto b = r_.take(n);
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
  std::uint16_t u16() {
    auto b = r_.take(2);
    return static_cast<std::uint16_t>(static_cast<unsigned>(b[0]) | (static_cast<unsigned>(b[1]) << 8));
  }
  std::size_t memo_index(std::uint64_t i) {
    // Python's pickler numbers its memo 0, 1, 2 ...; an index beyond the input's length is no
    // pickle of Python's and would size the memo by a hostile number.
    if (i >= in_.size()) fail("memo index " + std::to_string(i) + " beyond the input");
    return static_cast<std::size_t>(i);
  }
  void put(std::uint64_t i) {
    std::size_t k = memo_index(i);
    if (k >= memo_.size()) memo_.resize(k + 1, kNone);
    memo_[k] = top();
  }
  void get(std::uint64_t i) {
    std::size_t k = memo_index(i);
    if (k >= memo_.size() || memo_[k] == kNone) fail("memo reference " + std::to_string(i) + " to nothing");
    share(memo_[k]);
    push(memo_[k]);
  }
  static std::uint64_t decimal(std::string_view s, const char* what) {
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size())
      fail(std::string("bad ") + what + " '" + std::string(s) + "'");
    return v;
  }
  Object text_int(std::string_view s, bool is_long) {
    if (is_long && !s.empty() && s.back() == 'L') s.remove_suffix(1);
    if (!is_long && s == "00") return Object(false);
    if (!is_long && s == "01") return Object(true);
    std::string_view digits = s;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    std::int64_t v = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (ec == std::errc::result_out_of_range)
      throw ValueError("pickle: int " + std::string(s) + " beyond int64");
    if (ec != std::errc() || p != digits.data() + digits.size() || digits.empty())
      fail("bad INT/LONG '" + std::string(s) + "'");
    return Object(v);
  }
  Object long_bytes(std::span<const std::byte> b) {
    // Two's complement, little-endian; significant bytes beyond 8 -> beyond int64.
    std::size_t n = b.size();
    if (n == 0) return Object(0);
    bool neg = (static_cast<std::uint8_t>(b[n - 1]) & 0x80) != 0;
    std::uint8_t fill = neg ? 0xff : 0x00;
    while (n > 8 && static_cast<std::uint8_t>(b[n - 1]) == fill &&
           ((static_cast<std::uint8_t>(b[n - 2]) & 0x80) != 0) == neg)
      --n;
    if (n > 8) throw ValueError("pickle: an int beyond int64 (" + std::to_string(b.size()) + " bytes)");
    std::uint64_t u = neg ? ~std::uint64_t{0} : 0;
    for (std::size_t i = 0; i < n; ++i) {
      u &= ~(std::uint64_t{0xff} << (8 * i));
      u |= std::uint64_t{static_cast<std::uint8_t>(b[i])} << (8 * i);
    }
    auto v = static_cast<std::int64_t>(u);
    if ((v < 0) != neg) throw ValueError("pickle: an int beyond int64");
    return Object(v);
  }
  Object utf8(std::string_view s) {
    if (!valid_utf8(reinterpret_cast<const unsigned char*>(s.data()), s.size()))
      throw ValueError("pickle: a str that is not UTF-8");
    return Object(std::string(s));
  }
  Object ascii_str(std::string_view s) {  // Python 2 str, which Python 3 decodes as ASCII
    for (char c : s)
      if (static_cast<unsigned char>(c) >= 0x80) throw ValueError("pickle: a Python 2 str that is not ASCII");
    return Object(std::string(s));
  }
  Object raw_unicode_escape(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      auto c = static_cast<unsigned char>(s[i]);
      if (c == '\\' && i + 1 < s.size() && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
        std::size_t n = s[i + 1] == 'u' ? 4 : 8;
        if (i + 2 + n > s.size()) fail("bad \\u escape in UNICODE");
        std::uint32_t cp = 0;
        auto [p, ec] = std::from_chars(s.data() + i + 2, s.data() + i + 2 + n, cp, 16);
        if (ec != std::errc() || p != s.data() + i + 2 + n || cp > 0x10ffff)
          fail("bad \\u escape in UNICODE");
        append_utf8(out, cp);
        i += 1 + n;
      } else {
        append_utf8(out, c);
      }
    }
    return Object(std::move(out));
  }
  Object quoted_string(std::string_view s) {  // STRING: a Python 2 repr, 'x' or "x"
    if (s.size() < 2 || s.front() != s.back() || (s.front() != '\'' && s.front() != '"'))
      fail("STRING not quoted");
    s = s.substr(1, s.size() - 2);
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      char c = s[i];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (++i >= s.size()) fail("bad escape in STRING");
      switch (s[i]) {
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'x': {
          unsigned v = 0;
          if (i + 2 >= s.size()) fail("bad escape in STRING");
          auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + std::min(s.size(), i + 3), v, 16);
          if (ec != std::errc() || p != s.data() + i + 3) fail("bad escape in STRING");
          out += static_cast<char>(v);
          i += 2;
          break;
        }
        default:
          fail("unsupported escape in STRING");
      }
    }
    return ascii_str(out);
  }

  void global_op(std::uint8_t op, std::string_view module, std::string_view name) {
    Global g;
    if (!resolve_global(module, name, g))
      fail(std::string(op_name(op)) + " '" + std::string(module) + "." + std::string(name) +
           "' is not supported (only the globals Python emits for None, bool, int, float, str, bytes, "
           "bytearray, list, tuple, dict, set, frozenset, slice and a few exceptions)");
    Ref r = node(NodeKind::global);
    nodes_[r & ~kNode].global = g;
    push(r);
  }

  const std::string& str_arg(Ref r, const char* what) {
    if ((r & kNode) || leaves_[r].value.kind() != Kind::str)
      fail(std::string(what) + ": a str argument expected");
    return leaves_[r].value.get<std::string>();
  }
  Bytes encode_text(const std::string& text, const std::string& encoding) {
    Bytes out;
    if (encoding == "utf-8" || encoding == "utf8") {
      auto* p = reinterpret_cast<const std::byte*>(text.data());
      return Bytes(p, p + text.size());
    }
    if (encoding != "latin1" && encoding != "latin-1" && encoding != "iso-8859-1")
      fail("REDUCE _codecs.encode with encoding '" + encoding + "' is not supported");
    auto* p = reinterpret_cast<const unsigned char*>(text.data());
    for (std::size_t i = 0; i < text.size(); ++i) {
      unsigned c = p[i];
      if (c < 0x80) {
        out.push_back(static_cast<std::byte>(c));
      } else if ((c == 0xc2 || c == 0xc3) && i + 1 < text.size()) {
        out.push_back(static_cast<std::byte>(((c & 0x1f) << 6) | (p[++i] & 0x3f)));
      } else {
        throw ValueError("pickle: _codecs.encode: text beyond latin-1");
      }
    }
    return out;
  }
  Bytes bytes_from_args(const std::vector<Ref>& args, const char* what) {
    if (args.empty()) return {};
    if (args.size() == 1 && !(args[0] & kNode)) {
      const Object& v = leaves_[args[0]].value;
      if (v.kind() == Kind::bytes || v.kind() == Kind::bytearray) return v.get<Bytes>();
    }
    if (args.size() == 2) return encode_text(str_arg(args[0], what), str_arg(args[1], what));
    if (args.size() == 1 && !(args[0] & kNode) && leaves_[args[0]].value.kind() == Kind::str)
      return encode_text(leaves_[args[0]].value.get<std::string>(), "utf-8");
    fail(std::string("REDUCE ") + what + " with arguments other than Python's");
  }

  void reduce() {
    Ref args_ref = pop();
    Ref callable_ref = pop();
    Node* c = as_node(callable_ref);
    if (!c || c->kind != NodeKind::global) fail("REDUCE of something that is not a supported global");
    Node* a = as_node(args_ref);
    if (!a || a->kind != NodeKind::tuple) fail("REDUCE with arguments that are not a tuple");
    std::vector<Ref> args = a->kids;
    Global g = c->global;
    switch (g.callable) {
      case Callable::codecs_encode:
        if (args.size() < 1 || args.size() > 2)
          fail("REDUCE _codecs.encode with arguments other than Python's");
        push(leaf(Object(encode_text(str_arg(args[0], "_codecs.encode"),
                                     args.size() == 2 ? str_arg(args[1], "_codecs.encode") : "utf-8"))));
        return;
      case Callable::bytes:
        push(leaf(Object(bytes_from_args(args, "builtins.bytes"))));
        return;
      case Callable::bytearray:
        push(leaf(Object(Bytearray{bytes_from_args(args, "builtins.bytearray")})));
        return;
      case Callable::set:
      case Callable::frozenset: {
        Ref r = node(g.callable == Callable::set ? NodeKind::set : NodeKind::frozenset);
        if (args.size() > 1) fail("REDUCE set/frozenset with more than one argument");
        if (args.size() == 1) {
          Node* from = as_node(args[0]);
          if (!from || (from->kind != NodeKind::list && from->kind != NodeKind::tuple &&
                        from->kind != NodeKind::set && from->kind != NodeKind::frozenset))
            fail("REDUCE set/frozenset of something that is not a list, tuple or set");
          std::vector<Ref> kids = from->kids;
          for (Ref k : kids) share(k);
          nodes_[r & ~kNode].kids = std::move(kids);
        }
        push(r);
        return;
      }
      case Callable::slice: {
        if (args.empty() || args.size() > 3) fail("REDUCE builtins.slice with arguments other than 1 to 3");
        Ref none = kNoneLeaf;
        Ref r = node(NodeKind::slice);
        auto& kids = nodes_[r & ~kNode].kids;
        if (args.size() == 1)
          kids = {none, args[0], none};
        else
          kids = {args[0], args[1], args.size() == 3 ? args[2] : none};
        for (Ref k : args) share(k);
        push(r);
        return;
      }
      case Callable::exception: {
        Ref r = node(NodeKind::exception);
        nodes_[r & ~kNode].global = g;
        for (Ref k : args) share(k);
        nodes_[r & ~kNode].kids = std::move(args);
        push(r);
        return;
      }
    }
  }

  // APPENDS, SETITEMS, ADDITEMS: the items above the mark go into the container below it.
  void extend_from_mark(NodeKind k, const char* op, std::size_t multiple) {
    if (marks_.empty()) fail(std::string(op) + ": MARK expected");
    std::size_t m = marks_.back();
    marks_.pop_back();
    if ((stack_.size() - m) % multiple) fail(std::string(op) + " with an odd number of items");
    if (m == 0 || m <= floor()) fail(std::string(op) + ": stack underflow");
    Node* n = as_node(stack_[m - 1]);
    if (!n || n->kind != k) fail(std::string(op) + " on something other than its container");
    n->kids.insert(n->kids.end(), stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
  }

  Node& target(NodeKind k, const char* op) {
    Node* n = as_node(top());
    if (!n || n->kind != k) fail(std::string(op) + " on something other than its container");
    return *n;
  }

  void step(std::uint8_t op) {
    switch (op) {
      case PROTO: {
        std::uint8_t p = r_.u8();
        if (p > 5) fail("unsupported pickle protocol " + std::to_string(p));
        return;
      }
      case FRAME: {
        std::uint64_t n = r_.u64();
        if (n > r_.remaining()) fail("FRAME longer than the input");
        return;
      }
      case MARK:
        marks_.push_back(stack_.size());
        return;
      case POP:
        if (stack_.size() == floor() && !marks_.empty()) {  // POP of a MARK (Python allows it)
          marks_.pop_back();
          return;
        }
        pop();
        return;
      case POP_MARK:
        pop_mark();
        return;
      case DUP: {
        Ref r = top();
        share(r);
        push(r);
        return;
      }
      case NONE:
        push(kNoneLeaf);
        return;
      case NEWTRUE:
        push(kTrueLeaf);
        return;
      case NEWFALSE:
        push(kFalseLeaf);
        return;
      case BININT:
        push(leaf(Object(r_.i32())));
        return;
      case BININT1:
        push(leaf(Object(r_.u8())));
        return;
      case BININT2:
        push(leaf(Object(u16())));
        return;
      case INT:
        push(leaf(text_int(line(), false)));
        return;
      case LONG:
        push(leaf(text_int(line(), true)));
        return;
      case LONG1:
        push(leaf(long_bytes(r_.take(r_.u8()))));
        return;
      case LONG4: {
        std::int32_t n = r_.i32();
        if (n < 0) fail("LONG4 with a negative length");
        push(leaf(long_bytes(r_.take(static_cast<std::uint64_t>(n)))));
        return;
      }
      case FLOAT: {
        std::string_view s = line();
        double d = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
        if (ec != std::errc() || p != s.data() + s.size()) fail("bad FLOAT '" + std::string(s) + "'");
        push(leaf(Object(d)));
        return;
      }
      case BINFLOAT: {
        std::uint64_t bits = __builtin_bswap64(r_.u64());
        push(leaf(Object(std::bit_cast<double>(bits))));
        return;
      }
      case SHORT_BINUNICODE:
        push(leaf(utf8(chars(r_.u8()))));
        return;
      case BINUNICODE:
        push(leaf(utf8(chars(r_.u32()))));
        return;
      case BINUNICODE8:
        push(leaf(utf8(chars(r_.u64()))));
        return;
      case UNICODE:
        push(leaf(raw_unicode_escape(line())));
        return;
      case SHORT_BINSTRING:
        push(leaf(ascii_str(chars(r_.u8()))));
        return;
      case BINSTRING: {
        std::int32_t n = r_.i32();
        if (n < 0) fail("BINSTRING with a negative length");
        push(leaf(ascii_str(chars(static_cast<std::uint64_t>(n)))));
        return;
      }
      case STRING:
        push(leaf(quoted_string(line())));
        return;
      case SHORT_BINBYTES:
        push(leaf(Object::bytes(chars(r_.u8()))));
        return;
      case BINBYTES:
        push(leaf(Object::bytes(chars(r_.u32()))));
        return;
      case BINBYTES8:
        push(leaf(Object::bytes(chars(r_.u64()))));
        return;
      case BYTEARRAY8: {
        std::string_view s = chars(r_.u64());
        auto* p = reinterpret_cast<const std::byte*>(s.data());
        push(leaf(Object(Bytearray{Bytes(p, p + s.size())})));
        return;
      }
      case EMPTY_LIST:
        push(node(NodeKind::list));
        return;
      case EMPTY_TUPLE:
        push(node(NodeKind::tuple));
        return;
      case EMPTY_DICT:
        push(node(NodeKind::dict));
        return;
      case EMPTY_SET:
        push(node(NodeKind::set));
        return;
      case LIST:
      case TUPLE:
      case FROZENSET: {
        std::vector<Ref> items = pop_mark();
        Ref r = node(op == LIST ? NodeKind::list : op == TUPLE ? NodeKind::tuple : NodeKind::frozenset);
        nodes_[r & ~kNode].kids = std::move(items);
        push(r);
        return;
      }
      case TUPLE1:
      case TUPLE2:
      case TUPLE3: {
        std::size_t n = op - TUPLE1 + 1u;
        std::vector<Ref> items(n);
        for (std::size_t i = n; i-- > 0;) items[i] = pop();
        Ref r = node(NodeKind::tuple);
        nodes_[r & ~kNode].kids = std::move(items);
        push(r);
        return;
      }
      case DICT: {
        std::vector<Ref> items = pop_mark();
        if (items.size() % 2) fail("DICT with an odd number of items");
        Ref r = node(NodeKind::dict);
        nodes_[r & ~kNode].kids = std::move(items);
        push(r);
        return;
      }
      case APPEND: {
        Ref v = pop();
        target(NodeKind::list, "APPEND").kids.push_back(v);
        return;
      }
      case APPENDS:
        extend_from_mark(NodeKind::list, "APPENDS", 1);
        return;
      case SETITEM: {
        Ref v = pop();
        Ref k = pop();
        auto& kids = target(NodeKind::dict, "SETITEM").kids;
        kids.push_back(k);
        kids.push_back(v);
        return;
      }
      case SETITEMS:
        extend_from_mark(NodeKind::dict, "SETITEMS", 2);
        return;
      case ADDITEMS:
        extend_from_mark(NodeKind::set, "ADDITEMS", 1);
        return;
      case PUT:
        put(decimal(line(), "PUT index"));
        return;
      case BINPUT:
        put(r_.u8());
        return;
      case LONG_BINPUT:
        put(r_.u32());
        return;
      case MEMOIZE:
        put(memo_.size());
        return;
      case GET:
        get(decimal(line(), "GET index"));
        return;
      case BINGET:
        get(r_.u8());
        return;
      case LONG_BINGET:
        get(r_.u32());
        return;
      case GLOBAL: {
        std::string_view module = line();
        std::string_view name = line();
        global_op(op, module, name);
        return;
      }
      case STACK_GLOBAL: {
        Ref name = pop();
        Ref module = pop();
        if ((name & kNode) || (module & kNode) || leaves_[name].value.kind() != Kind::str ||
            leaves_[module].value.kind() != Kind::str)
          fail("STACK_GLOBAL of something other than two str");
        global_op(op, leaves_[module].value.get<std::string>(), leaves_[name].value.get<std::string>());
        return;
      }
      case REDUCE:
        reduce();
        return;
      default:
        break;
    }
    if (const char* name = op_name(op))
      fail(std::string(name) +
           " is not supported (it pickles an object of a class: only Python's built-in "
           "value types are)");
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02x", op);
    fail(std::string("unknown opcode ") + buf);
  }

  // ---- building Objects from the graph
  void spend(std::size_t n) {
    if (n > budget_) fail("more objects than max_objects once shared references are copied");
    budget_ -= n;
  }

  Object build(Ref r, std::size_t depth) {
    if (!(r & kNode)) {
      spend(1);
      Leaf& l = leaves_[r];
      return l.shared ? l.value : std::move(l.value);
    }
    Node& n = nodes_[r & ~kNode];
    if (n.state == State::building)
      fail("a cyclic structure (a container that contains itself) is not supported");
    if (n.state == State::built) {
      auto it = built_.find(r & ~kNode);
      if (it == built_.end())
        fail("a reference the unpickler did not see as shared");  // not reached; no UB if it is
      spend(it->second.count);
      return it->second.value;
    }
    if (depth >= limits_.max_depth) fail("nesting deeper than " + std::to_string(limits_.max_depth));
    n.state = State::building;
    std::size_t before = budget_;
    Object o = build_node(r & ~kNode, depth);
    Node& m = nodes_[r & ~kNode];  // nodes_ does not grow here, but stay safe
    m.state = State::built;
    if (m.shared) built_.emplace(r & ~kNode, Built{o, before - budget_});
    m.kids.clear();
    m.kids.shrink_to_fit();
    return o;
  }

  Object build_node(std::size_t i, std::size_t depth) {
    NodeKind kind = nodes_[i].kind;
    std::vector<Ref> kids = std::move(nodes_[i].kids);
    spend(1);
    auto items = [&] {
      List l;
      l.reserve(kids.size());
      for (Ref k : kids) l.push_back(build(k, depth + 1));
      return l;
    };
    switch (kind) {
      case NodeKind::list:
        return Object(items());
      case NodeKind::tuple:
        return Object::tuple(items());
      case NodeKind::dict: {
        Dict d;
        d.reserve(kids.size() / 2);
        for (std::size_t k = 0; k + 1 < kids.size(); k += 2) {
          Object key = build(kids[k], depth + 1);
          d.set(std::move(key), build(kids[k + 1], depth + 1));
        }
        return Object(std::move(d));
      }
      case NodeKind::set:
      case NodeKind::frozenset: {
        Set s;
        for (Ref k : kids) s.add(build(k, depth + 1));
        return kind == NodeKind::set ? Object(std::move(s)) : Object::frozenset(std::move(s));
      }
      case NodeKind::slice: {
        List l = items();
        return Object(Slice(std::move(l[0]), std::move(l[1]), std::move(l[2])));
      }
      case NodeKind::exception:
        return Object(Exception{nodes_[i].global.exception, items()});
      case NodeKind::global:
        break;
    }
    fail("a class or function as a value is not supported (only instances of Python's built-in value types)");
  }

  static constexpr Ref kNone = 0xffffffffu;
  // None, True and False: one shared leaf each, so that a run of them costs only the stack.
  static constexpr Ref kNoneLeaf = 0, kTrueLeaf = 1, kFalseLeaf = 2;
  struct Built {
    Object value;       // a shared node's value, copied for each further reference
    std::size_t count;  // the objects in it, charged to max_objects for each copy
  };
  std::unordered_map<std::uint32_t, Built> built_;
  std::span<const std::byte> in_;
  proto::Reader r_;
  LoadLimits limits_;
  std::size_t budget_;
  std::vector<Leaf> leaves_;
  std::vector<Node> nodes_;
  std::vector<Ref> stack_;
  std::vector<std::size_t> marks_;
  std::vector<Ref> memo_;
};

}  // namespace

void dumps_append(Bytes& out, const Object& o, int protocol) {
  Pickler p(out, protocol);
  p.run(o);
}

Bytes dumps(const Object& o, int protocol) {
  Bytes out;
  dumps_append(out, o, protocol);
  return out;
}

namespace {

// The common case in one pass: values built straight on a stack of Objects, for pickles of
// plain values without shared structure (what Python's pickle.dumps makes of a dict of
// scalars, a list of tuples ...). Anything else, or anything wrong, returns nullopt and the
// general unpickler above (a graph, then values) decides, with its exact error messages.
// A batch of str -> scalar dict items skips the stack: it goes straight into its dict
// (direct_items).
class FastUnpickler {
 public:
  FastUnpickler(std::span<const std::byte> in, const LoadLimits& limits)
      : p_(reinterpret_cast<const unsigned char*>(in.data())),
        end_(p_ + in.size()),
        begin_(p_),
        limits_(limits),
        budget_(limits.max_objects ? limits.max_objects : 4 * in.size() + (std::size_t{1} << 20)) {
    // An item takes at least two bytes of input: a guess from the length, capped.
    std::size_t guess = std::min<std::size_t>(in.size() / 2, 1 << 14);
    stack_.reserve(guess);
    depth_.reserve(guess);
    memo_.reserve(guess / 4);
  }

  std::optional<Object> run() {
    try {
      while (p_ < end_) {
        unsigned op = *p_++;
        if (op == STOP)
          return p_ == end_ && stack_.size() == 1 && marks_.empty() ? std::optional(std::move(stack_[0]))
                                                                    : std::nullopt;
        if (!step(op)) return std::nullopt;
      }
    } catch (...) {
    }
    return std::nullopt;
  }

 private:
  // A memo entry: a scalar's copy, a str's bytes in the input, or a container (whose later
  // reference means shared structure: the general path's business).
  // Plain data, so that a memo entry per str (Python memoizes each one) costs two stores; a
  // scalar's copy is kept in scalars_, at index `at`.
  struct Memo {
    enum Kind : std::uint8_t { none, scalar, str, container } kind = none;
    std::uint32_t at = 0, size = 0;
  };

  bool need(std::size_t n) const { return static_cast<std::size_t>(end_ - p_) >= n; }
  template <class T>
  T le() {
    T v;
    std::memcpy(&v, p_, sizeof v);
    p_ += sizeof v;
    return v;
  }
  bool push(Object o, std::uint32_t depth = 0) {
    if (budget_-- == 0) return false;
    stack_.push_back(std::move(o));
    depth_.push_back(depth);
    last_str_ = nullptr;
    return true;
  }
  // A scalar built in its stack slot: a str moved through temporaries would copy its chars
  // each time (a short str lives inside the string).
  template <class A>
  bool emplace(A&& a) {
    if (budget_-- == 0) return false;
    stack_.emplace_back(std::forward<A>(a));
    depth_.push_back(0);
    last_str_ = nullptr;
    return true;
  }
  bool str(std::size_t n) {
    if (!need(n) || !valid_utf8(p_, n)) return false;
    const unsigned char* at = p_;
    p_ += n;
    if (!emplace(std::string(reinterpret_cast<const char*>(at), n))) return false;
    last_str_ = at;
    last_len_ = n;
    return true;
  }
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  // Moves the items above the mark into the container below it.
  bool extend(Kind kind, std::size_t multiple) {
    if (marks_.empty()) return false;
    std::size_t m = marks_.back();
    marks_.pop_back();
    if (m == 0 || (stack_.size() - m) % multiple) return false;
    if (m - 1 < floor()) return false;
    Object& target = stack_[m - 1];
    if (target.kind() != kind) return false;
    std::uint32_t depth = depth_[m - 1];
    for (std::size_t i = m; i < stack_.size(); ++i) depth = std::max(depth, depth_[i] + 1);
    if (depth >= limits_.max_depth) return false;
    depth_[m - 1] = depth;
    if (kind == Kind::dict) {
      Dict& d = target.get<Dict>();
      d.reserve(d.size() + (stack_.size() - m) / 2);
      for (std::size_t i = m; i < stack_.size(); i += 2)
        d.set(std::move(stack_[i]), std::move(stack_[i + 1]));
    } else {
      List& l = target.get<List>();
      l.reserve(l.size() + stack_.size() - m);
      for (std::size_t i = m; i < stack_.size(); ++i) l.push_back(std::move(stack_[i]));
    }
    stack_.resize(m);
    depth_.resize(m);
    last_str_ = nullptr;
    return true;
  }
  // ---- a batch of str -> scalar items straight into the dict below the MARK just read
  //
  // MARK, then pairs of a str key (memoized or not) and a scalar or str value, then SETITEMS:
  // what Python writes for a dict of str keys, 1,000 items a batch. Such a batch goes into the
  // dict without the stack (an Object per key and value, hashed, moved and destroyed), each key
  // and value built in its place in the dict. Only a whole batch up to its SETITEMS: the items
  // above a MARK may as well end up in a TUPLE. Memo, budget and depth come out as the stack
  // would have left them; anything else (a truncated or malformed batch too) is left to it.
  // A FRAME may come before any key or value (a memo op follows its str at once, in Python's
  // pickles), the batch is read twice: checked and counted, then loaded.

  std::size_t left(const unsigned char* q) const { return static_cast<std::size_t>(end_ - q); }
  // Past the FRAMEs at q; false at the end of the input or at a FRAME longer than the rest.
  bool skip_frames(const unsigned char*& q) const {
    while (q < end_ && *q == FRAME) {
      if (left(q) < 9) return false;
      std::uint64_t n;
      std::memcpy(&n, q + 1, 8);
      if (n > left(q) - 9) return false;
      q += 9;
    }
    return q < end_;
  }
  // Past the str opcode at q, if one is there whole.
  bool skip_str(const unsigned char*& q) const {
    if (*q == SHORT_BINUNICODE) {
      if (left(q) < 2 || left(q) - 2 < q[1]) return false;
      q += 2 + q[1];
      return true;
    }
    if (*q == BINUNICODE) {
      if (left(q) < 5) return false;
      std::uint32_t n;
      std::memcpy(&n, q + 1, 4);
      if (left(q) - 5 < n) return false;
      q += 5 + static_cast<std::size_t>(n);
      return true;
    }
    return false;
  }
  // Past the memo op at q, if one is there whole.
  bool skip_memo(const unsigned char*& q) const {
    std::size_t n = *q == MEMOIZE ? 1 : *q == BINPUT ? 2 : *q == LONG_BINPUT ? 5 : 0;
    if (n == 0 || left(q) < n) return false;
    q += n;
    return true;
  }
  // Past the scalar opcode at q, if one is there whole.
  bool skip_scalar(const unsigned char*& q) const {
    std::size_t n;
    switch (*q) {
      case BINFLOAT:
        n = 9;
        break;
      case BININT:
        n = 5;
        break;
      case BININT2:
        n = 3;
        break;
      case BININT1:
        n = 2;
        break;
      case NONE:
      case NEWTRUE:
      case NEWFALSE:
        n = 1;
        break;
      default:
        return false;
    }
    if (left(q) < n) return false;
    q += n;
    return true;
  }

  // Counts the batch's pairs from p_; 0 when it is not such a batch.
  std::size_t count_direct_items() const {
    const unsigned char* q = p_;
    std::size_t pairs = 0;
    for (;;) {
      if (!skip_frames(q)) return 0;
      if (*q == SETITEMS) return pairs;
      if (!skip_str(q)) return 0;
      if (q < end_) skip_memo(q);
      if (!skip_frames(q)) return 0;
      if (!skip_scalar(q)) {
        if (!skip_str(q)) return 0;
        if (q < end_) skip_memo(q);
      }
      ++pairs;
    }
  }

  // Loads the memo op at p_, if any (checked by count_direct_items): its entry is `entry`, as
  // put() would make it.
  bool direct_memo(const Memo& entry) {
    std::size_t i;
    if (*p_ == MEMOIZE) {
      ++p_;
      i = memo_.size();
    } else if (*p_ == BINPUT) {
      i = p_[1];
      p_ += 2;
    } else if (*p_ == LONG_BINPUT) {
      ++p_;
      i = le<std::uint32_t>();
    } else {
      return true;
    }
    if (i >= static_cast<std::size_t>(end_ - begin_)) return false;
    if (i == memo_.size())
      memo_.push_back(entry);
    else {
      if (i > memo_.size()) memo_.resize(i + 1);
      memo_[i] = entry;
    }
    return true;
  }

  // valid_utf8(p, n), for a short ASCII str (a dict key, mostly) in two loads and a test:
  // the input goes on past it (its SETITEMS at least), so reading 16 bytes from p is safe then.
  bool ascii_or_utf8(const unsigned char* p, std::size_t n) const {
    if (n > 16 || left(p) < 16) return valid_utf8(p, n);
    std::uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + 8, 8);
    if (n < 8) {
      a &= (std::uint64_t{1} << (8 * n)) - 1;
      b = 0;
    } else if (n < 16) {
      b &= (std::uint64_t{1} << (8 * (n - 8))) - 1;
    }
    return ((a | b) & 0x8080808080808080ULL) == 0 || valid_utf8(p, n);
  }

  // The str at p_ (checked by count_direct_items) as UTF-8, and its memo op if any.
  bool direct_str(std::string_view& s) {
    std::size_t n;
    if (*p_ == SHORT_BINUNICODE) {
      n = p_[1];
      p_ += 2;
    } else {
      std::uint32_t n32;
      std::memcpy(&n32, p_ + 1, 4);
      n = n32;
      p_ += 5;
    }
    if (!ascii_or_utf8(p_, n)) return false;
    Memo entry{Memo::str, static_cast<std::uint32_t>(p_ - begin_), static_cast<std::uint32_t>(n)};
    s = {reinterpret_cast<const char*>(p_), n};
    p_ += n;
    return p_ == end_ || direct_memo(entry);
  }

  // false: the input is for the general path; `done`: the batch went in (else: for the stack).
  bool direct_items(bool& done) {
    std::size_t pairs = count_direct_items();
    if (pairs == 0 || pairs > budget_ / 2) return true;
    done = true;
    std::uint32_t& depth = depth_.back();
    depth = std::max<std::uint32_t>(depth, 1);
    if (depth >= limits_.max_depth) return false;
    Dict& d = stack_.back().get<Dict>();
    detail::DictAccess::reserve(d, pairs);
    for (std::size_t k = 0; k < pairs; ++k) {
      while (*p_ == FRAME) p_ += 9;
      std::string_view key;
      if (!direct_str(key)) return false;
      while (*p_ == FRAME) p_ += 9;
      unsigned op = *p_;
      if (op == BINFLOAT) {  // the common case first, past the switch's jump
        ++p_;
        detail::DictAccess::set_str(d, key, std::bit_cast<double>(__builtin_bswap64(le<std::uint64_t>())));
        continue;
      }
      ++p_;
      switch (op) {
        case BININT:
          detail::DictAccess::set_str(d, key, static_cast<std::int64_t>(le<std::int32_t>()));
          break;
        case BININT2:
          detail::DictAccess::set_str(d, key, static_cast<std::int64_t>(le<std::uint16_t>()));
          break;
        case BININT1:
          detail::DictAccess::set_str(d, key, static_cast<std::int64_t>(*p_++));
          break;
        case NONE:
          detail::DictAccess::set_str(d, key, None{});
          break;
        case NEWTRUE:
          detail::DictAccess::set_str(d, key, true);
          break;
        case NEWFALSE:
          detail::DictAccess::set_str(d, key, false);
          break;
        default: {  // a str
          --p_;
          std::string_view v;
          if (!direct_str(v)) return false;
          detail::DictAccess::set_str(d, key, v);  // (Object(std::string_view): a str)
        }
      }
    }
    budget_ -= 2 * pairs;
    while (*p_ == FRAME) p_ += 9;
    ++p_;  // SETITEMS
    last_str_ = nullptr;
    return true;
  }

  bool tuple(std::size_t n) {
    if (stack_.size() < floor() + n) return false;
    std::size_t first = stack_.size() - n;
    std::uint32_t depth = 1;
    List items;
    items.reserve(n);
    for (std::size_t i = first; i < stack_.size(); ++i) {
      depth = std::max(depth, depth_[i] + 1);
      items.push_back(std::move(stack_[i]));
    }
    if (depth >= limits_.max_depth) return false;
    stack_.resize(first);
    depth_.resize(first);
    return push(Object::tuple(std::move(items)), depth);
  }
  bool put(std::size_t i) {
    if (stack_.size() <= floor() || i >= static_cast<std::size_t>(end_ - begin_)) return false;
    if (i >= memo_.size()) memo_.resize(i + 1);
    Memo& m = memo_[i];
    const Object& top = stack_.back();
    if (last_str_) {
      m = {Memo::str, static_cast<std::uint32_t>(last_str_ - begin_), static_cast<std::uint32_t>(last_len_)};
    } else if (top.kind() == Kind::list || top.kind() == Kind::dict || top.kind() == Kind::tuple ||
               top.kind() == Kind::set || top.kind() == Kind::bytes || top.kind() == Kind::str) {
      m = {Memo::container, 0, 0};
    } else {
      m = {Memo::scalar, static_cast<std::uint32_t>(scalars_.size()), 0};
      scalars_.push_back(top);
    }
    return true;
  }
  bool get(std::size_t i) {
    if (i >= memo_.size()) return false;
    const Memo& m = memo_[i];
    if (m.kind == Memo::scalar) return push(scalars_[m.at]);
    if (m.kind == Memo::str)
      return emplace(std::string(reinterpret_cast<const char*>(begin_ + m.at), m.size));
    return false;
  }

  bool step(unsigned op) {
    switch (op) {
      case PROTO:
        return need(1) && *p_++ <= 5;
      case FRAME:
        return need(8) && le<std::uint64_t>() <= static_cast<std::size_t>(end_ - p_);
      case MARK:
        if (stack_.size() > floor() && stack_.back().kind() == Kind::dict) {
          bool done = false;
          if (!direct_items(done)) return false;
          if (done) return true;
        }
        marks_.push_back(stack_.size());
        last_str_ = nullptr;
        return true;
      case NONE:
        return push(Object());
      case NEWTRUE:
        return push(Object(true));
      case NEWFALSE:
        return push(Object(false));
      case BININT:
        return need(4) && emplace(le<std::int32_t>());
      case BININT1:
        return need(1) && emplace(static_cast<std::int64_t>(*p_++));
      case BININT2:
        return need(2) && emplace(static_cast<std::int64_t>(le<std::uint16_t>()));
      case BINFLOAT:
        return need(8) && emplace(std::bit_cast<double>(__builtin_bswap64(le<std::uint64_t>())));
      case SHORT_BINUNICODE:
        return need(1) && str(*p_++);
      case BINUNICODE:
        return need(4) && str(le<std::uint32_t>());
      case SHORT_BINBYTES: {
        if (!need(1)) return false;
        std::size_t n = *p_++;
        if (!need(n)) return false;
        const auto* b = reinterpret_cast<const std::byte*>(p_);
        p_ += n;
        return push(Object(Bytes(b, b + n)));
      }
      case EMPTY_DICT:
        return push(Object(Dict{}));
      case EMPTY_LIST:
        return push(Object(List{}));
      case EMPTY_TUPLE:
        return push(Object::tuple({}));
      case TUPLE1:
        return tuple(1);
      case TUPLE2:
        return tuple(2);
      case TUPLE3:
        return tuple(3);
      case TUPLE: {
        if (marks_.empty()) return false;
        std::size_t m = marks_.back();
        marks_.pop_back();
        return tuple(stack_.size() - m);
      }
      case SETITEM:
        marks_.push_back(stack_.size() - std::min<std::size_t>(stack_.size(), 2));
        return extend(Kind::dict, 2);
      case SETITEMS:
        return extend(Kind::dict, 2);
      case APPEND:
        marks_.push_back(stack_.size() - std::min<std::size_t>(stack_.size(), 1));
        return extend(Kind::list, 1);
      case APPENDS:
        return extend(Kind::list, 1);
      case MEMOIZE:
        return put(memo_.size());
      case BINPUT:
        return need(1) && put(*p_++);
      case LONG_BINPUT:
        return need(4) && put(le<std::uint32_t>());
      case BINGET:
        return need(1) && get(*p_++);
      case LONG_BINGET:
        return need(4) && get(le<std::uint32_t>());
      default:
        return false;
    }
  }

  const unsigned char* p_;
  const unsigned char* end_;
  const unsigned char* begin_;
  LoadLimits limits_;
  std::size_t budget_;
  std::vector<Object> stack_;
  std::vector<std::uint32_t> depth_;  // per stack entry: the nesting of containers in it
  std::vector<std::size_t> marks_;
  std::vector<Memo> memo_;
  std::vector<Object> scalars_;
  const unsigned char* last_str_ = nullptr;  // the top is a str read from here (for the memo)
  std::size_t last_len_ = 0;
};

}  // namespace

Object loads(std::span<const std::byte> data, const LoadLimits& limits) {
  if (auto fast = FastUnpickler(data, limits).run()) return std::move(*fast);
  Unpickler u(data, limits);
  return u.run();
}

namespace detail {
// The two paths one at a time, for the fuzz target that checks they agree (not in the header).
std::optional<Object> loads_fast_path(std::span<const std::byte> data, const LoadLimits& limits) {
  return FastUnpickler(data, limits).run();
}
Object loads_general_path(std::span<const std::byte> data, const LoadLimits& limits) {
  Unpickler u(data, limits);
  return u.run();
}
}  // namespace detail

bool looks_like_pickle(std::span<const std::byte> data) noexcept {
  return data.size() >= 3 && data[0] == std::byte{PROTO} && data[1] >= std::byte{2} &&
         data[1] <= std::byte{5} && data.back() == std::byte{STOP};
}

}  // namespace mpx::py
