// The control socket: JSON request → JSON reply, every request answered, errors included. A
// ROUTER socket (REQ clients talk to it as to a REP), so replies need not come in request
// order: status and snapshot are answered at once while a long command (select_energies)
// runs on the pipeline, and a command that outlives control.reply_timeout_ms is answered with
// an error then and cancelled if it has not started, else cancelled at its next step where it
// can be (select_energies) and reported (late_reply) when it ends. A request may carry a
// `request_id`: the same client re-sending it while the first still runs is not run again (the
// one reply goes to the latest copy); re-sent after its reply, it gets that reply again.
#pragma once

#include <atomic>
#include <deque>
#include <thread>

#include <zmq.hpp>

#include "config/config.hpp"
#include "common/counters.hpp"
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
  // Returns the reply frames: JSON first, then (for snapshot) the cached publications; empty
  // when the request went to the pipeline (answered later from pending_).
  std::vector<zmq::message_t> handle(const zmq::message_t& request, std::vector<zmq::message_t>& envelope);
  // The reply to a pipeline command's result (ok, or an error counted and published).
  std::vector<zmq::message_t> result_reply(const std::string& cmd, nlohmann::json result, const nlohmann::json& request_id);
  std::vector<zmq::message_t> error_reply(const std::string& why, const std::string& code = "bad_control_request",
                                          const nlohmann::json& request_id = nullptr);
  void send(std::vector<zmq::message_t>& envelope, std::vector<zmq::message_t>&& reply);
  // Answers pipeline commands that finished or timed out.
  void serve_pending();

  struct Pending {
    std::vector<zmq::message_t> envelope;  // the requester's routing id and delimiter
    std::string cmd;
    Pipeline::Ticket ticket;
    std::chrono::steady_clock::time_point deadline;
    std::string key;  // duplicate detection: routing id + request_id; empty without a request_id
    nlohmann::json request_id;
  };
  std::vector<Pending> pending_;
  // The last replies to requests that had a request_id (key, reply JSON), answered again to a
  // client that re-sends one: a retry after a lost reply must not run a command twice.
  static constexpr std::size_t kAnsweredKept = 64;
  std::deque<std::pair<std::string, nlohmann::json>> answered_;

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
