#include "publish/frame_pool.hpp"

#include <cstdlib>
#include <new>

namespace xanesd {

FramePool::~FramePool() {
  for (auto& [bytes, data] : free_) std::free(data);
}

zmq::message_t FramePool::take(std::size_t bytes) {
  if (bytes < min_bytes_) return zmq::message_t(bytes);
  void* data = nullptr;
  {
    std::lock_guard lock(mutex_);
    if (auto it = free_.find(bytes); it != free_.end()) {
      data = it->second;
      free_.erase(it);
      kept_ -= bytes;
    }
  }
  if (!data) data = std::malloc(bytes);
  if (!data) throw std::bad_alloc();
  {
    std::lock_guard lock(mutex_);
    outstanding_.emplace(data, bytes);
  }
  return zmq::message_t(data, bytes, &FramePool::give_back, this);
}

void FramePool::give_back(void* data, void* hint) { static_cast<FramePool*>(hint)->put(data); }

void FramePool::put(void* data) {
  std::lock_guard lock(mutex_);
  const auto it = outstanding_.find(data);
  if (it == outstanding_.end()) return;  // not ours (cannot happen: only take() sets this free function)
  const std::size_t bytes = it->second;
  outstanding_.erase(it);
  // Room for it: kept frames of other sizes go first (the image size changed with the scan).
  for (auto i = free_.begin(); kept_ + bytes > max_kept_ && i != free_.end();) {
    if (i->first == bytes) {
      ++i;
      continue;
    }
    kept_ -= i->first;
    std::free(i->second);
    i = free_.erase(i);
  }
  if (kept_ + bytes > max_kept_) {
    std::free(data);
    return;
  }
  free_.emplace(bytes, data);
  kept_ += bytes;
}

std::size_t FramePool::kept_bytes() const {
  std::lock_guard lock(mutex_);
  return kept_;
}

FramePool& FramePool::maps() {
  // 1 MiB and up: a 512² map of floats and larger. 512 MiB kept: about two 2048² cycles' maps.
  static auto* pool = new FramePool(std::size_t{1} << 20, std::size_t{512} << 20);
  return *pool;
}

}  // namespace xanesd
