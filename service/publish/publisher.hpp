// The lossy path: owns the PUB socket, sends what the pipeline hands it without ever making
// the pipeline wait, and caches the latest message per topic for late-join snapshots.
#pragma once

#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include "config/config.hpp"
#include "security/curve.hpp"
#include "common/bounded_queue.hpp"
#include "common/counters.hpp"
#include "xanesd/protocol/wire.hpp"

namespace xanesd {

class Publisher {
 public:
  Publisher(zmq::context_t& ctx, const PublishConfig& cfg, Counters& counters, const Authenticator* auth = nullptr);
  ~Publisher();
  void start();
  // The bound endpoint, with a "*" port resolved (tests bind tcp://127.0.0.1:*).
  std::string endpoint() const { return socket_.get(zmq::sockopt::last_endpoint); }

  // Queues a message for sending; never blocks. Returns false (counted) if the queue is full.
  bool publish(protocol::WireMessage&& msg);
  // Copies of the cached latest message of every topic (maps, status, energies) of the most
  // recent scan, as frames, and the highest `version` among them.
  struct Snapshot {
    std::vector<std::vector<zmq::message_t>> messages;
    std::int64_t version = 0;
    std::string scan_id;
  };
  Snapshot snapshot() const;
  nlohmann::json stats() const { return queue_.stats(); }

 private:
  void run(std::stop_token stop);

  zmq::socket_t socket_;
  Counters& counters_;
  BoundedQueue<protocol::WireMessage> queue_;
  struct Cached {
    std::vector<zmq::message_t> frames;
    std::int64_t version = 0;
  };
  mutable std::mutex cache_mutex_;  // guards cache_ and cache_scan_
  std::map<std::string, Cached> cache_;
  std::string cache_scan_;  // the scan the cached messages belong to
  std::jthread thread_;
};

}  // namespace xanesd
