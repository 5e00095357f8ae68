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
  explicit BoundedQueue(std::size_t capacity) : capacity_(capacity) {}

  // Waits while full (back-pressure, never a drop). Returns false only if stop was requested.
  bool push(T item, std::stop_token stop) {
    std::unique_lock lock(mutex_);
    if (items_.size() >= capacity_) {
      ++full_waits_;
      while (items_.size() >= capacity_ && !stop.stop_requested()) not_full_.wait_for(lock, std::chrono::milliseconds(50));
      if (stop.stop_requested()) return false;
    }
    items_.push_back(std::move(item));
    high_water_ = std::max(high_water_, items_.size());
    ++pushed_;
    not_empty_.notify_one();
    return true;
  }

  // Never waits; returns false (and counts it) when full.
  bool try_push(T item) {
    std::lock_guard lock(mutex_);
    if (items_.size() >= capacity_) {
      ++refused_;
      return false;
    }
    items_.push_back(std::move(item));
    high_water_ = std::max(high_water_, items_.size());
    ++pushed_;
    not_empty_.notify_one();
    return true;
  }

  std::optional<T> pop_for(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!not_empty_.wait_for(lock, timeout, [&] { return !items_.empty(); })) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    // Producers waiting on a full queue are woken when it has room for a burst (half of it), not
    // at every pop: woken at every pop, a producer and this consumer took turns a message at a
    // time, a context switch each, which was most of the cost of small messages.
    if (items_.size() <= capacity_ / 2) not_full_.notify_all();
    return item;
  }

  bool empty() const {
    std::lock_guard lock(mutex_);
    return items_.empty();
  }

  nlohmann::json stats() const {
    std::lock_guard lock(mutex_);
    return {{"size", items_.size()},      {"capacity", capacity_}, {"high_water", high_water_},
            {"pushed", pushed_},          {"full_waits", full_waits_}, {"refused", refused_}};
  }

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;  // guards items_ and every counter below
  std::condition_variable not_empty_, not_full_;
  std::deque<T> items_;
  std::size_t high_water_ = 0;
  std::uint64_t pushed_ = 0, full_waits_ = 0, refused_ = 0;
};

}  // namespace xanesd
