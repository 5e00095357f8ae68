// Shared by the libFuzzer harnesses (README "Hardening"): how an input becomes frames or a file,
// and what counts as a finding besides a crash or a sanitizer report.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include <zmq.hpp>

namespace xanesd::fuzz {

// An input in the format of protocol/fixtures/*.frames (per frame: little-endian uint32 length,
// then the bytes), so the golden fixtures are the seed corpus. A short last frame takes what is left.
inline std::vector<zmq::message_t> split_frames(const std::uint8_t* data, std::size_t size) {
  std::vector<zmq::message_t> frames;
  std::size_t at = 0;
  while (at + 4 <= size && frames.size() < 64) {
    std::uint32_t len;
    std::memcpy(&len, data + at, 4);
    at += 4;
    const std::size_t n = std::min<std::size_t>(len, size - at);
    frames.emplace_back(data + at, n);
    at += n;
  }
  return frames;
}

// A per-process scratch file for readers that take a path (one harness process, one file).
inline std::filesystem::path scratch_file(const char* stem) {
  const auto dir = std::filesystem::temp_directory_path() / ("xanesd-fuzz-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir / stem;
}

inline void write_file(const std::filesystem::path& p, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// A finding that is neither a crash nor a sanitizer report (an exception of an undocumented
// type, a broken invariant): print it and abort, so libFuzzer keeps the input as a crash.
[[noreturn]] inline void fail(std::string_view what) {
  std::fprintf(stderr, "FUZZ FINDING: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}
[[noreturn]] inline void fail_unexpected(const std::exception& e, std::string_view where) {
  fail(std::string(where) + ": undocumented exception " + typeid(e).name() + ": " + e.what());
}

}  // namespace xanesd::fuzz
