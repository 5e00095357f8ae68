#include "ingest/receiver.hpp"

#include <zmq_addon.hpp>

#include <spdlog/spdlog.h>

namespace xanesd {

Receiver::Receiver(zmq::context_t& ctx, const IngestConfig& cfg, IngestQueue& queue, Counters& counters,
                   IssueSink report, const Authenticator* auth)
    : socket_(ctx, zmq::socket_type::pull), queue_(queue), counters_(counters), report_(std::move(report)) {
  socket_.set(zmq::sockopt::rcvhwm, cfg.rcvhwm);
  socket_.set(zmq::sockopt::maxmsgsize, max_message_bytes(cfg));  // not received whole, then refused
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::rcvtimeo, 100);  // so a stop request is noticed
  if (auth) auth->secure(socket_, "ingest");
  socket_.bind(cfg.endpoint);
}

Receiver::~Receiver() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void Receiver::start() {
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
  pthread_setname_np(thread_.native_handle(), "xanesd-recv");  // visible in top -H, perf, gdb
}

IngestMessage Receiver::parse(std::vector<zmq::message_t>&& frames) {
  auto wire = protocol::decode(std::move(frames));
  if (wire.topic == "frame") return protocol::FrameMsg::from_wire(std::move(wire));
  if (wire.topic == "start") return protocol::StartMsg::from_wire(std::move(wire));
  if (wire.topic == "stop") return protocol::StopMsg::from_wire(std::move(wire));
  throw protocol::ProtocolError("unknown topic '" + wire.topic + "' (expected start, frame or stop)");
}

std::size_t Receiver::held_bytes(const IngestMessage& msg) {
  auto add = [](std::size_t n, const std::optional<protocol::Array>& a) { return n + (a ? a->nbytes() : 0); };
  if (const auto* f = std::get_if<protocol::FrameMsg>(&msg))
    return add(add(add(add(add(f->counts.nbytes(), f->i0), f->dark), f->flat), f->pixels), f->xrf);
  if (const auto* s = std::get_if<protocol::StartMsg>(&msg)) return add(add(0, s->dark), s->flat);
  return 0;
}

void Receiver::run(std::stop_token stop) {
  while (!stop.stop_requested()) {
    std::vector<zmq::message_t> frames;
    try {
      const auto n = zmq::recv_multipart(socket_, std::back_inserter(frames));
      if (!n) continue;  // timeout
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      spdlog::error("ingest receive failed: {}", e.what());
      continue;
    }
    counters_.add("ingest.messages");
    try {
      auto msg = parse(std::move(frames));
      const auto bytes = held_bytes(msg);
      if (!queue_.push(std::move(msg), stop, bytes)) return;
    } catch (const protocol::ProtocolError& e) {
      counters_.add("ingest.rejected.malformed");
      report_({"malformed_message", e.what()}, "");
    } catch (const std::exception& e) {  // e.g. allocation failure for an absurd array
      counters_.add("ingest.rejected.malformed");
      report_({"malformed_message", std::string("cannot decode message: ") + e.what()}, "");
    }
  }
}

}  // namespace xanesd
