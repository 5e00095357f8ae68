// Authenticated, encrypted sockets (CurveZMQ). With security.server_key set, every socket the
// daemon binds is a CURVE server, and a ZAP handler admits only the client keys the config
// lists: ingest senders on the ingest socket, control and read-only clients on the control
// and results sockets. A read-only client's control requests carry the ZAP user id "readonly"
// and only status and snapshot are served to it. Without keys, only loopback endpoints may be
// bound (checked at start-up, with a message saying how to make keys).
#pragma once

#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "config/config.hpp"
#include "xanesd/protocol/curve_keys.hpp"

namespace xanesd {

// True for endpoints nothing outside this machine can reach: tcp on 127.0.0.0/8, ::1 or
// localhost, ipc://, inproc://.
bool is_loopback_endpoint(const std::string& endpoint);
// Throws ConfigError when `endpoint` (config key `key`) is not loopback and no server key is
// configured, saying how to make keys.
void require_keys_for(const std::string& key, const std::string& endpoint, const SecurityConfig& cfg);

// The ZAP handler (RFC 27) for one ZeroMQ context: create it before any CURVE socket binds.
// Domains: "ingest", "control", "publish".
class Authenticator {
 public:
  // Refuses (ConfigError) a non-loopback endpoint without keys, a key file that cannot be read.
  Authenticator(zmq::context_t& ctx, const Config& cfg);
  ~Authenticator();
  bool enabled() const { return enabled_; }
  // Makes `socket` a CURVE server in ZAP domain `domain` (no-op when security is off).
  void secure(zmq::socket_t& socket, const std::string& domain) const;

 private:
  void run(std::stop_token stop);
  void refused(const std::string& domain, const std::string& key, const std::string& peer);
  std::chrono::steady_clock::time_point last_log_{};
  std::int64_t refused_ = 0;
  bool enabled_ = false;
  std::string server_secret_;
  std::set<std::string> ingest_, control_, readonly_;  // Z85 public keys
  zmq::socket_t handler_;
  std::jthread thread_;
};

}  // namespace xanesd
