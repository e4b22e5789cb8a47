// Named shared memory blocks, like Python's multiprocessing.shared_memory.
//
// A block is a POSIX shared memory object (shm_open), named the way Python names them, so a
// block made here opens in Python by name and the other way round:
//
//   auto shm = mpx::SharedMemory::create(1000 * sizeof(double));   // name() like "psm_1f2e3d4c"
//   auto xs = shm.as<double>();                                     // 1000 doubles, zeroed
//   std::iota(xs.begin(), xs.end(), 0.0);
//   // another process, C++ or Python, any time before unlink():
//   //   SharedMemory(name="psm_1f2e3d4c").buf.cast('d')[999] == 999.0
//   shm.unlink();   // the name goes now; the memory when the last mapping closes
//
// A block this process tree creates and never unlinks is unlinked once every process of the
// tree has ended, killed ones included: the first create() starts one small tracker process,
// which every child forked afterwards shares, as Python's resource tracker does. Blocks only
// attached to are never unlinked for you.
//
// ShareableList lays its items out exactly as Python 3.11's ShareableList does (the same
// header, format strings and back-transform codes), so either side reads what the other wrote.
// SharedMemoryManager owns the blocks it makes and unlinks them all in shutdown().
#pragma once

#include <mpx/errors.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace mpx {

using Bytes = std::vector<std::byte>;  // as in <mpx/serialize.hpp>

class SharedMemory {
 public:
  // size > 0. name "": a fresh unique name. FileExistsError if the name is taken; ValueError
  // for size 0, a name with '/' in it or longer than the system allows.
  static SharedMemory create(std::size_t size, std::string name = {});
  // FileNotFoundError if there is no block of that name.
  static SharedMemory attach(std::string name);

  SharedMemory(SharedMemory&& other) noexcept;
  SharedMemory& operator=(SharedMemory&& other) noexcept;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();  // close()

  const std::string& name() const noexcept { return name_; }  // as Python prints it: no '/'
  std::size_t size() const noexcept { return size_; }
  // StateError after close().
  std::span<std::byte> buf();
  std::span<const std::byte> buf() const;
  // The block as an array of T: ValueError unless size() is a multiple of sizeof(T).
  template <class T>
  std::span<T> as() {
    static_assert(std::is_trivially_copyable_v<T>, "SharedMemory::as<T> needs a trivially copyable T");
    static_assert(alignof(T) <= 4096, "blocks are page aligned");
    auto b = buf();
    check_fits(sizeof(T));
    return {reinterpret_cast<T*>(b.data()), b.size() / sizeof(T)};
  }
  bool closed() const noexcept { return data_ == nullptr; }
  // Unmaps this handle's view; the block lives on. Idempotent.
  void close() noexcept;
  // Removes the name (FileNotFoundError if it is already gone); the memory stays mapped here
  // and wherever else it is until those mappings close.
  void unlink();

 private:
  SharedMemory(std::string name, std::byte* data, std::size_t size) noexcept
      : name_(std::move(name)), data_(data), size_(size) {}
  void check_fits(std::size_t item) const;

  std::string name_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// A fixed-length list of None, bool, int64, double, str and bytes items in one block, laid out
// as Python 3.11's multiprocessing.shared_memory.ShareableList. A str or bytes item keeps the
// slot it was created with (its length rounded up to the next multiple of 8, plus 8 if it was
// one already); trailing NUL bytes are not kept, as in Python.
class ShareableList {
 public:
  using Item = std::variant<std::monostate, bool, std::int64_t, double, std::string, Bytes>;

  static ShareableList create(std::vector<Item> items, std::string name = {});
  static ShareableList attach(std::string name);  // ProtocolError if the block is not a list

  std::size_t size() const;
  Item get(std::ptrdiff_t i) const;    // negative counts from the end; IndexError
  void set(std::ptrdiff_t i, Item v);  // ValueError if a str/bytes outgrows its slot
  // Python's equality: bool, int and float compare by value (True == 1 == 1.0).
  std::size_t count(const Item& v) const;
  std::optional<std::size_t> index(const Item& v) const;
  std::vector<Item> items() const;
  SharedMemory& shm() noexcept { return shm_; }

 private:
  explicit ShareableList(SharedMemory shm);
  std::size_t position(std::ptrdiff_t i) const;
  std::uint64_t slot_offset(std::size_t k) const;  // from the start of the data area

  SharedMemory shm_;
  std::size_t n_ = 0;
};

// Makes blocks and lists, keeps their names, and unlinks every one of them in shutdown() (or
// when destroyed) — in the process that made the manager only, not in forked copies.
class SharedMemoryManager {
 public:
  SharedMemoryManager();
  SharedMemoryManager(SharedMemoryManager&&) noexcept;
  SharedMemoryManager& operator=(SharedMemoryManager&&) noexcept;
  SharedMemoryManager(const SharedMemoryManager&) = delete;
  SharedMemoryManager& operator=(const SharedMemoryManager&) = delete;
  ~SharedMemoryManager();

  SharedMemory shared_memory(std::size_t size);
  ShareableList shareable_list(std::vector<ShareableList::Item> items);
  // Unlinks every block made here that is still there. Idempotent.
  void shutdown() noexcept;

 private:
  std::vector<std::string> names_;
  int owner_ = 0;  // the pid that made it
};

}  // namespace mpx
