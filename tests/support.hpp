// Shared test helpers: repository paths, loopback endpoints, and small socket utilities.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "xanesd/protocol/wire.hpp"

namespace xanesd::test {

inline std::filesystem::path source_dir() { return XANESD_SOURCE_DIR; }
inline std::filesystem::path build_dir() { return XANESD_BUILD_DIR; }
inline std::filesystem::path refs_dir() { return source_dir() / "config" / "references"; }
inline std::filesystem::path fe_library() { return refs_dir() / "fe_k_library_normalized.nor"; }
inline std::filesystem::path hxn_energies() { return refs_dir() / "fe_k_energies_hxn.txt"; }

// A fresh empty folder under the build tree for one test's files.
inline std::filesystem::path scratch(const std::string& name) {
  auto p = build_dir() / "test-scratch" / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// A loopback TCP port that is free now, picked below the kernel's ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range): the kernel gives ports of that range to outgoing
// connections, so a parallel test's client could take one picked there before the daemon binds
// it ("Address already in use"); below the range only an explicit bind takes a port. The start
// point differs per process and call, so parallel tests do not try the same ports.
inline int free_port() {
  int ephemeral_low = 32768;
  if (std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range"); range) range >> ephemeral_low;
  const int lo = std::max(1024, ephemeral_low / 2), span = ephemeral_low - lo;
  static std::atomic<unsigned> call{0};
  const unsigned start = static_cast<unsigned>(::getpid()) * 2654435761u + 7919u * call++;
  zmq::context_t ctx(1);
  for (int attempt = 0; span > 0 && attempt < 64; ++attempt) {
    const int port = lo + static_cast<int>((start + 104729u * static_cast<unsigned>(attempt)) % static_cast<unsigned>(span));
    try {
      zmq::socket_t s(ctx, zmq::socket_type::rep);
      s.set(zmq::sockopt::linger, 0);
      s.bind("tcp://127.0.0.1:" + std::to_string(port));
      return port;
    } catch (const zmq::error_t&) {
      // taken: try another
    }
  }
  zmq::socket_t s(ctx, zmq::socket_type::rep);  // no free port below the range: let the OS pick
  s.set(zmq::sockopt::linger, 0);
  s.bind("tcp://127.0.0.1:*");
  const auto ep = s.get(zmq::sockopt::last_endpoint);
  return std::stoi(ep.substr(ep.rfind(':') + 1));
}

// How many times slower than a Release build this run is (XANESD_TEST_SLOWDOWN, set by
// deploy/sanitize.sh): bounds on how fast the daemon answers are multiplied by it, so a sanitizer
// build still checks that an answer came at the timeout and not when the work ended.
inline double slowdown() {
  const char* v = std::getenv("XANESD_TEST_SLOWDOWN");
  const double f = v ? std::atof(v) : 1.0;
  return f >= 1.0 ? f : 1.0;
}

// Waits for a file the daemon writes by atomic rename (so it is complete once it exists). The deadline is
// generous because it is only reached on failure: sanitizer builds finish a scan many times slower.
inline bool wait_for_file(const std::filesystem::path& path, std::chrono::seconds deadline = std::chrono::seconds(180)) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!std::filesystem::exists(path)) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

inline std::string loopback(int port) { return "tcp://127.0.0.1:" + std::to_string(port); }

// Connects a SUB socket (subscribed already) and returns once its connection has finished the
// ZeroMQ handshake with the publisher, whose subscription message follows at once, plus a
// moment for the publisher's I/O thread to take it: a fixed sleep lost the first publications
// on a loaded machine. Throws when no handshake happens within 10 s × slowdown().
inline void connect_subscriber(zmq::context_t& ctx, zmq::socket_t& sub, const std::string& endpoint) {
  const std::string monitor = "inproc://subscriber-monitor-" + std::to_string(reinterpret_cast<std::uintptr_t>(sub.handle()));
  if (zmq_socket_monitor(sub.handle(), monitor.c_str(), ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0)
    throw std::runtime_error("connect_subscriber: zmq_socket_monitor failed");
  zmq::socket_t events(ctx, zmq::socket_type::pair);
  events.set(zmq::sockopt::rcvtimeo, static_cast<int>(10000 * slowdown()));
  events.connect(monitor);
  sub.connect(endpoint);
  zmq::message_t event, address;  // two frames: the event and value, then the peer's address
  const bool handshake = events.recv(event).has_value() && events.recv(address).has_value();
  zmq_socket_monitor(sub.handle(), nullptr, 0);
  if (!handshake) throw std::runtime_error("connect_subscriber: no handshake with " + endpoint);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

// A deep copy of a message (its array frames copied), for checks that consume a message.
inline protocol::WireMessage copy_of(const protocol::WireMessage& m) {
  protocol::WireMessage c;
  c.topic = m.topic;
  c.header = m.header;
  for (const auto& a : m.arrays)
    c.arrays.emplace_back(a.name(), a.dtype(), a.shape(), a.little_endian(), zmq::message_t(a.bytes(), a.nbytes()));
  return c;
}

// Receives one message within `timeout`, or nothing.
inline std::optional<protocol::WireMessage> recv_message(zmq::socket_t& s, std::chrono::milliseconds timeout) {
  zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq::poll(&item, 1, timeout) <= 0) return std::nullopt;
  std::vector<zmq::message_t> frames;
  (void)zmq::recv_multipart(s, std::back_inserter(frames));
  return protocol::decode(std::move(frames));
}

// Sends a JSON control request on a fresh REQ socket; returns all reply frames (JSON first).
inline std::vector<zmq::message_t> control_frames(zmq::context_t& ctx, const std::string& endpoint,
                                                  const nlohmann::json& req, int timeout_ms = 20000) {
  zmq::socket_t s(ctx, zmq::socket_type::req);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, timeout_ms);
  s.connect(endpoint);
  const auto text = req.dump();
  s.send(zmq::buffer(text), zmq::send_flags::none);
  std::vector<zmq::message_t> frames;
  if (!zmq::recv_multipart(s, std::back_inserter(frames))) throw std::runtime_error("control request timed out");
  return frames;
}

inline nlohmann::json control(zmq::context_t& ctx, const std::string& endpoint, const nlohmann::json& req,
                              int timeout_ms = 20000) {
  auto frames = control_frames(ctx, endpoint, req, timeout_ms);
  return nlohmann::json::parse(frames.at(0).to_string_view());
}

}  // namespace xanesd::test
