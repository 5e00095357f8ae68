// A bounded multi-producer queue with the counters areaDetector taught us to expose: how full
// it is, its high-water mark, and how often a producer had to wait.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stop_token>

#include <nlohmann/json.hpp>

namespace xanesd {

template <class T>
class BoundedQueue {
 public:
  // At most `capacity` items and, if max_bytes > 0, at most max_bytes of the sizes their
  // producers state (an item larger than that alone still goes into an empty queue).
  explicit BoundedQueue(std::size_t capacity, std::size_t max_bytes = 0) : capacity_(capacity), max_bytes_(max_bytes) {}

  // Waits while full (back-pressure, never a drop). Returns false only if stop was requested.
  bool push(T item, std::stop_token stop, std::size_t bytes = 0) {
    std::unique_lock lock(mutex_);
    if (full(bytes)) {
      ++full_waits_;
      while (full(bytes) && !stop.stop_requested()) not_full_.wait_for(lock, std::chrono::milliseconds(50));
      if (stop.stop_requested()) return false;
    }
    add(std::move(item), bytes);
    return true;
  }

  // Never waits; returns false (and counts it) when full.
  bool try_push(T item, std::size_t bytes = 0) {
    std::lock_guard lock(mutex_);
    if (full(bytes)) {
      ++refused_;
      return false;
    }
    add(std::move(item), bytes);
    return true;
  }

  // The next item, or nothing after `timeout` or a wake().
  template <class Rep, class Period>
  std::optional<T> pop_for(std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock lock(mutex_);
    not_empty_.wait_for(lock, timeout, [&] { return !items_.empty() || woken_; });
    woken_ = false;
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front().item);
    bytes_ -= items_.front().bytes;
    items_.pop_front();
    // Producers waiting on a full queue are woken when it has room for a burst (half of it), not
    // at every pop: woken at every pop, a producer and this consumer took turns a message at a
    // time, a context switch each, which was most of the cost of small messages.
    if (items_.empty() || (items_.size() <= capacity_ / 2 && bytes_ <= max_bytes_ / 2)) not_full_.notify_all();
    return item;
  }

  // Ends the consumer's current (or next) pop_for wait without an item: another thread has
  // something for it to look at (a finished cycle, a command).
  void wake() {
    {
      std::lock_guard lock(mutex_);
      woken_ = true;
    }
    not_empty_.notify_one();
  }

  bool empty() const {
    std::lock_guard lock(mutex_);
    return items_.empty();
  }

  nlohmann::json stats() const {
    std::lock_guard lock(mutex_);
    nlohmann::json s = {{"size", items_.size()},      {"capacity", capacity_}, {"high_water", high_water_},
                        {"pushed", pushed_},          {"full_waits", full_waits_}, {"refused", refused_}};
    if (max_bytes_ > 0) s.update({{"bytes", bytes_}, {"capacity_bytes", max_bytes_}, {"high_water_bytes", high_water_bytes_}});
    return s;
  }

 private:
  struct Entry {
    T item;
    std::size_t bytes;
  };
  bool full(std::size_t bytes) const {
    return items_.size() >= capacity_ || (max_bytes_ > 0 && !items_.empty() && bytes_ + bytes > max_bytes_);
  }
  void add(T&& item, std::size_t bytes) {
    items_.push_back({std::move(item), bytes});
    bytes_ += bytes;
    high_water_ = std::max(high_water_, items_.size());
    high_water_bytes_ = std::max(high_water_bytes_, bytes_);
    ++pushed_;
    not_empty_.notify_one();
  }

  const std::size_t capacity_, max_bytes_;
  mutable std::mutex mutex_;  // guards items_ and every counter below
  std::condition_variable not_empty_, not_full_;
  std::deque<Entry> items_;
  std::size_t bytes_ = 0, high_water_ = 0, high_water_bytes_ = 0;
  bool woken_ = false;
  std::uint64_t pushed_ = 0, full_waits_ = 0, refused_ = 0;
};

}  // namespace xanesd
