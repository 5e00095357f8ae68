// The machine a benchmark ran on, printed at the top of every benchmark's output.
#pragma once

#include <sched.h>

#include <fstream>
#include <string>
#include <thread>

namespace xanesd::bench {

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

inline int nproc() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::thread::hardware_concurrency());
}

inline std::string mem_total() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  long kb = 0;
  while (in >> key >> kb)
    if (key == "MemTotal:") return std::to_string(kb / 1024 / 1024) + " GiB";
  return "?";
}

}  // namespace xanesd::bench
