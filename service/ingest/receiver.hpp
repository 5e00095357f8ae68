// Where a message enters xanesd: the PULL socket, decoding and protocol validation. Decoded
// messages go to the pipeline over a bounded queue; when the queue is full the receiver waits,
// ZeroMQ's queues fill, and the sender is slowed down: back-pressure, never a silent drop.
#pragma once

#include <functional>
#include <thread>
#include <variant>

#include <zmq.hpp>

#include "config/config.hpp"
#include "security/curve.hpp"
#include "common/bounded_queue.hpp"
#include "common/counters.hpp"
#include "scan/scan.hpp"
#include "xanesd/protocol/messages.hpp"

namespace xanesd {

using protocol::IngestMessage;
using IngestQueue = BoundedQueue<IngestMessage>;
using IssueSink = std::function<void(const Issue&, const std::string& scan_id)>;

class Receiver {
 public:
  Receiver(zmq::context_t& ctx, const IngestConfig& cfg, IngestQueue& queue, Counters& counters, IssueSink report,
           const Authenticator* auth = nullptr);
  ~Receiver();
  void start();
  // The bound endpoint, with a "*" port resolved (tests bind tcp://127.0.0.1:*).
  std::string endpoint() const { return socket_.get(zmq::sockopt::last_endpoint); }

  // Decodes one multipart message; throws protocol::ProtocolError with a clear message.
  static IngestMessage parse(std::vector<zmq::message_t>&& frames);
  // The bytes of its arrays (ZeroMQ's buffers, held, not copied, while it waits in the queue).
  static std::size_t held_bytes(const IngestMessage& msg);

 private:
  void run(std::stop_token stop);

  zmq::socket_t socket_;
  IngestQueue& queue_;
  Counters& counters_;
  IssueSink report_;
  std::jthread thread_;
};

}  // namespace xanesd
