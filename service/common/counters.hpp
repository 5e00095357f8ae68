// Named event counters (accepted frames, rejects by reason, publications …), visible in status.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace xanesd {

class Counters {
 public:
  std::int64_t add(const std::string& name, std::int64_t n = 1) {
    std::lock_guard lock(mutex_);
    return counts_[name] += n;
  }
  std::int64_t get(const std::string& name) const {
    std::lock_guard lock(mutex_);
    auto it = counts_.find(name);
    return it == counts_.end() ? 0 : it->second;
  }
  nlohmann::json to_json() const {
    std::lock_guard lock(mutex_);
    return counts_;
  }

 private:
  mutable std::mutex mutex_;  // guards counts_
  std::map<std::string, std::int64_t> counts_;
};

}  // namespace xanesd
