// An allocator for large per-pixel maps that are zero without being written: big blocks come
// straight from mmap (the kernel hands out zeroed pages on first touch), so a 2048² map set
// costs nothing to allocate and its pages are faulted in by whichever thread first writes
// them (the parallel fit), instead of by a serial zero-fill in the constructor.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <vector>

namespace xanesd::science {

template <class T>
struct ZeroedAllocator {
  static_assert(std::is_trivially_copyable_v<T>, "all-zero bytes must be a valid, value-initialized T");
  using value_type = T;
  static constexpr std::size_t kHuge = std::size_t{2} << 20;  // transparent huge page size

  ZeroedAllocator() noexcept = default;
  template <class U>
  ZeroedAllocator(const ZeroedAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < kHuge) {  // small: calloc (zeroed; usually without a memset for fresh memory)
      void* p = std::calloc(n ? n : 1, sizeof(T));
      if (!p) throw std::bad_alloc();
      return static_cast<T*>(p);
    }
    // Large: a 2 MiB-aligned anonymous mapping (over-map, trim both ends), advised for huge
    // pages: one fault per 2 MiB instead of 512.
    const std::size_t len = round_up(bytes);
    void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto base = reinterpret_cast<std::uintptr_t>(raw);
    const auto aligned = (base + kHuge - 1) & ~(kHuge - 1);
    if (aligned > base) munmap(raw, aligned - base);
    if (const std::size_t tail = base + len + kHuge - (aligned + len); tail > 0)
      munmap(reinterpret_cast<void*>(aligned + len), tail);
    madvise(reinterpret_cast<void*>(aligned), len, MADV_HUGEPAGE);
    return reinterpret_cast<T*>(aligned);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n * sizeof(T) < kHuge) std::free(p);
    else munmap(p, round_up(n * sizeof(T)));
  }
  // Value-initialization (vector(n), resize(n)) writes nothing: fresh memory is already zero.
  // Only valid because every block handed out comes zeroed from allocate().
  template <class U>
  void construct(U*) noexcept {}
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }

  friend bool operator==(const ZeroedAllocator&, const ZeroedAllocator&) noexcept { return true; }

 private:
  static std::size_t round_up(std::size_t bytes) { return (bytes + kHuge - 1) & ~(kHuge - 1); }
};

// A vector whose growth by resize(n) yields zeros without writing them. Shrinking and growing
// again would expose the old values, so zero a map by assigning a fresh vector.
template <class T>
using ZeroedVector = std::vector<T, ZeroedAllocator<T>>;

// The bytes a vector has allocated (memory accounting: README "Memory").
template <class V>
std::size_t capacity_bytes(const V& v) {
  return v.capacity() * sizeof(typename V::value_type);
}

// `n` zeros: in `recycled` when it has that size (its pages are mapped already: zeroing them
// costs a fraction of faulting in fresh ones, which on a virtual machine can be 10× a write),
// else a fresh vector.
template <class T>
ZeroedVector<T> reuse_zeroed(ZeroedVector<T>&& recycled, std::size_t n) {
  if (recycled.size() != n) return ZeroedVector<T>(n);
  std::fill(recycled.begin(), recycled.end(), T{});
  return std::move(recycled);
}

}  // namespace xanesd::science
