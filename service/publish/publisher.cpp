#include "publish/publisher.hpp"

#include <spdlog/spdlog.h>

namespace xanesd {

Publisher::Publisher(zmq::context_t& ctx, const PublishConfig& cfg, Counters& counters, const Authenticator* auth)
    : socket_(ctx, zmq::socket_type::pub), counters_(counters), queue_(256) {
  socket_.set(zmq::sockopt::sndhwm, cfg.sndhwm);
  socket_.set(zmq::sockopt::linger, 0);
  if (auth) auth->secure(socket_, "publish");
  socket_.bind(cfg.endpoint);
}

Publisher::~Publisher() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void Publisher::start() {
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
  pthread_setname_np(thread_.native_handle(), "xanesd-pub");  // visible in top -H, perf, gdb
}

bool Publisher::publish(protocol::WireMessage&& msg) {
  if (queue_.try_push(std::move(msg))) return true;
  counters_.add("publish.queue_full");
  return false;
}

Publisher::Snapshot Publisher::snapshot() const {
  std::lock_guard lock(cache_mutex_);
  Snapshot out;
  out.scan_id = cache_scan_;
  for (const auto& [topic, cached] : cache_) {
    std::vector<zmq::message_t> copy;
    for (const auto& f : cached.frames) copy.emplace_back().copy(const_cast<zmq::message_t&>(f));  // shares the buffer
    out.messages.push_back(std::move(copy));
    out.version = std::max(out.version, cached.version);
  }
  return out;
}

void Publisher::run(std::stop_token stop) {
  while (!stop.stop_requested()) {
    auto msg = queue_.pop_for(std::chrono::milliseconds(100));
    if (!msg) continue;
    try {
      const std::string topic = msg->topic;
      const std::string scan_id = msg->header.value("scan_id", "");
      const std::int64_t version = msg->header.value("version", std::int64_t{0});
      auto frames = protocol::encode(std::move(*msg));
      std::vector<zmq::message_t> cached;
      if (topic != "errors")  // errors are events, not state: nothing to replay on late join
        for (auto& f : frames) cached.emplace_back().copy(f);  // zmq_msg_copy: shares the buffer, no copy
      // PUB never blocks: a subscriber past its high-water mark misses this message and sees
      // a gap in `version`.
      for (std::size_t i = 0; i < frames.size(); ++i)
        (void)socket_.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      counters_.add("publish.messages");
      if (!cached.empty()) {
        std::lock_guard lock(cache_mutex_);
        if (scan_id != cache_scan_) {  // a new scan: the previous scan's maps are not its state
          cache_.clear();
          cache_scan_ = scan_id;
        }
        cache_[topic] = {std::move(cached), version};
      }
    } catch (const std::exception& e) {
      counters_.add("publish.errors");
      spdlog::error("publisher: {}", e.what());
    }
  }
}

}  // namespace xanesd
