// Progress lines for long command-line work (`xanesd fit`, xanes-replay): on stderr, at most
// one a second, with the rate and an ETA from the rate so far, e.g.
//   xanesd fit: 120/400 frames (30%), 41.2 frames/s, ETA 7 s
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace xanesd {

class Progress {
 public:
  using Clock = std::chrono::steady_clock;
  // quiet: print nothing. total <= 0: unknown (no percentage, no ETA).
  Progress(std::string prefix, std::string unit, bool quiet, Clock::duration every = std::chrono::seconds(1))
      : prefix_(std::move(prefix)), unit_(std::move(unit)), quiet_(quiet), every_(every), t0_(Clock::now()), last_(t0_) {}

  void set_total(std::int64_t total) { total_ = total; }

  // `done` units are finished; prints a line if `every` has passed since the last one.
  void update(std::int64_t done) {
    if (quiet_) return;
    const auto now = Clock::now();
    if (now - last_ < every_) return;
    last_ = now;
    std::fprintf(stderr, "%s\n", line(done, std::chrono::duration<double>(now - t0_).count()).c_str());
  }

  // The line update() prints after `seconds` (kept apart so a test can check the arithmetic).
  std::string line(std::int64_t done, double seconds) const {
    const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
    char buf[256];
    if (total_ > 0) {
      const double left = rate > 0 ? static_cast<double>(total_ - done) / rate : -1;
      std::snprintf(buf, sizeof buf, "%s: %lld/%lld %s (%.0f%%), %.1f %s/s, ETA %s", prefix_.c_str(), static_cast<long long>(done),
                    static_cast<long long>(total_), unit_.c_str(), 100.0 * static_cast<double>(done) / static_cast<double>(total_),
                    rate, unit_.c_str(), left < 0 ? "unknown" : duration(left).c_str());
    } else {
      std::snprintf(buf, sizeof buf, "%s: %lld %s in %.0f s, %.1f %s/s", prefix_.c_str(), static_cast<long long>(done), unit_.c_str(),
                    seconds, rate, unit_.c_str());
    }
    return buf;
  }

  // 42 s, 3 min 20 s, 2 h 05 min
  static std::string duration(double seconds) {
    const auto s = static_cast<long long>(seconds + 0.5);
    char buf[64];
    if (s < 60) std::snprintf(buf, sizeof buf, "%lld s", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%lld min %02lld s", s / 60, s % 60);
    else std::snprintf(buf, sizeof buf, "%lld h %02lld min", s / 3600, (s % 3600) / 60);
    return buf;
  }

 private:
  std::string prefix_, unit_;
  bool quiet_;
  Clock::duration every_;
  Clock::time_point t0_, last_;
  std::int64_t total_ = 0;
};

}  // namespace xanesd
