// The control socket (REP): JSON request → JSON reply, every request answered, errors included.
#pragma once

#include <atomic>
#include <thread>

#include <zmq.hpp>

#include "config/config.hpp"
#include "pipeline/counters.hpp"
#include "pipeline/pipeline.hpp"
#include "publish/publisher.hpp"
#include "security/curve.hpp"

namespace xanesd {

class ControlServer {
 public:
  ControlServer(zmq::context_t& ctx, const ControlConfig& cfg, Pipeline& pipeline, Publisher& publisher,
                Counters& counters, std::atomic<bool>& shutdown_requested, const Authenticator* auth = nullptr);
  ~ControlServer();
  void start();
  // The bound endpoint, with a "*" port resolved (tests bind tcp://127.0.0.1:*).
  std::string endpoint() const { return socket_.get(zmq::sockopt::last_endpoint); }

 private:
  void run(std::stop_token stop);
  // Returns the reply frames: JSON first, then (for snapshot) the cached publications.
  std::vector<zmq::message_t> handle(const zmq::message_t& request);

  zmq::socket_t socket_;
  ControlConfig cfg_;
  Pipeline& pipeline_;
  Publisher& publisher_;
  Counters& counters_;
  std::atomic<bool>& shutdown_requested_;
  bool authenticated_ = false;  // CURVE on: requests carry the ZAP user id (control or readonly)
  std::jthread thread_;
};

}  // namespace xanesd
