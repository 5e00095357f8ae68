// Reused buffers for the large array frames of the map publications. A 2048² cycle publishes
// ≈ 270 MB of maps (4 species); malloc serves each buffer that large with a fresh mmap, which the
// copy then faults in page by page, and unmaps it once ZeroMQ has sent the frame: in a perf
// profile of 2048² live cycles the page faults were ≈ 20 % of the CPU time. Frames taken here
// come back when ZeroMQ (or the last holder of a message) releases them, and the next cycle's
// maps of the same size reuse them, already mapped.
#pragma once

#include <cstddef>
#include <cstring>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "xanesd/protocol/wire.hpp"

namespace xanesd {

class FramePool {
 public:
  // Frames below min_bytes come from plain malloc (cheap, and not worth keeping); at most
  // max_kept_bytes of released frames are kept for reuse, the rest freed.
  FramePool(std::size_t min_bytes, std::size_t max_kept_bytes) : min_bytes_(min_bytes), max_kept_(max_kept_bytes) {}
  ~FramePool();  // frees the kept frames; no frame taken here may outlive the pool
  FramePool(const FramePool&) = delete;
  FramePool& operator=(const FramePool&) = delete;

  // A frame of `bytes` bytes, contents unspecified. Any thread.
  zmq::message_t take(std::size_t bytes);
  // `values` copied into a pooled frame, as protocol::Array::from does into a fresh one.
  template <class T>
  protocol::Array array(std::string name, std::span<const T> values, std::vector<std::int64_t> shape) {
    auto frame = take(values.size_bytes());
    if (!values.empty()) std::memcpy(frame.data(), values.data(), values.size_bytes());
    return protocol::Array(std::move(name), protocol::dtype_of<T>(), std::move(shape), true, std::move(frame));
  }
  std::size_t kept_bytes() const;

  // The pool of the map publications: never destroyed, since ZeroMQ's I/O thread may give a
  // frame back while the process exits.
  static FramePool& maps();

 private:
  static void give_back(void* data, void* hint);  // ZeroMQ's free function
  void put(void* data);

  const std::size_t min_bytes_, max_kept_;
  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;      // released frames by size
  std::map<void*, std::size_t> outstanding_;    // frames in messages, with their sizes
  std::size_t kept_ = 0;
};

}  // namespace xanesd
