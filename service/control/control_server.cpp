#include "control/control_server.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>
#include <zmq_addon.hpp>

#include "xanesd/protocol/control.hpp"

namespace xanesd {

ControlServer::ControlServer(zmq::context_t& ctx, const ControlConfig& cfg, Pipeline& pipeline, Publisher& publisher,
                             Counters& counters, std::atomic<bool>& shutdown_requested, const Authenticator* auth)
    : socket_(ctx, zmq::socket_type::router), cfg_(cfg), pipeline_(pipeline), publisher_(publisher),
      counters_(counters), shutdown_requested_(shutdown_requested) {
  socket_.set(zmq::sockopt::linger, 0);
  if (auth) auth->secure(socket_, "control");
  authenticated_ = auth && auth->enabled();
  socket_.bind(cfg.endpoint);
}

ControlServer::~ControlServer() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void ControlServer::start() {
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
  pthread_setname_np(thread_.native_handle(), "xanesd-ctl");  // visible in top -H, perf, gdb
}

namespace {
zmq::message_t json_frame(const nlohmann::json& j) {
  // Invalid UTF-8 (from a file or a peer) is replaced, never a reason for status to fail.
  const auto s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return zmq::message_t(s.data(), s.size());
}
}  // namespace

std::vector<zmq::message_t> ControlServer::error_reply(const std::string& why, const std::string& code, const nlohmann::json& request_id) {
  counters_.add("control.errors");
  pipeline_.report({code, why}, "");
  std::vector<zmq::message_t> reply;
  protocol::ControlReply failed;
  failed.ok = false, failed.error = why, failed.code = code, failed.request_id = request_id;
  reply.push_back(json_frame(failed.to_json()));
  return reply;
}

std::vector<zmq::message_t> ControlServer::result_reply(const std::string& cmd, nlohmann::json result, const nlohmann::json& request_id) {
  if (!result.value("ok", false))
    return error_reply(cmd + ": " + result.value("error", "failed"), result.value("code", "bad_control_request"), request_id);
  std::vector<zmq::message_t> reply;
  protocol::ControlReply done;
  done.request_id = request_id, done.body = std::move(result);
  reply.push_back(json_frame(done.to_json()));
  return reply;
}

std::vector<zmq::message_t> ControlServer::handle(const zmq::message_t& raw, std::vector<zmq::message_t>& envelope) {
  std::vector<zmq::message_t> reply;
  // code: a specific issue code (invalid_path …) when the command gave one.
  auto fail = [&](const std::string& why, const std::string& code = "bad_control_request") { return error_reply(why, code); };
  const auto json = nlohmann::json::parse(raw.to_string_view(), nullptr, /*allow_exceptions=*/false);
  // Authorization before the arguments are looked at: a read-only key learns nothing more of a
  // state-changing command than that it may not send it.
  if (authenticated_ && json.is_object() && json.contains("cmd") && json["cmd"].is_string() &&
      !protocol::ControlRequest::read_only(json["cmd"].get<std::string>())) {
    const char* user = const_cast<zmq::message_t&>(raw).gets("User-Id");  // set by the ZAP handler for this key
    if (!user || std::string_view(user) != "control")
      return fail(protocol::quoted(json["cmd"]) +
                      " needs a control client key (this key is listed in security.readonly_clients: status, snapshot and pixel only)",
                  "not_authorized");
  }
  protocol::ControlRequest req;
  try {
    req = protocol::ControlRequest::parse(json.is_discarded() ? nlohmann::json() : json);
  } catch (const protocol::RequestError& e) {
    return fail(e.what(), e.code());
  }
  const auto& cmd = req.cmd;
  counters_.add("control.requests");

  if (cmd == "status") {
    auto s = pipeline_.status();
    s["ok"] = true;
    s["counters"] = counters_.to_json();
    s["control_pending"] = pending_.size();  // pipeline commands waiting for their reply
    reply.push_back(json_frame(s));
    return reply;
  }
  if (cmd == "snapshot") {
    auto snap = publisher_.snapshot();
    reply.push_back(json_frame({{"ok", true}, {"scan_id", snap.scan_id}, {"version", snap.version},
                                {"publications", snap.messages.size()}}));
    for (auto& frames : snap.messages)
      for (auto& f : frames) reply.push_back(std::move(f));
    return reply;
  }
  if (cmd == "shutdown") {
    shutdown_requested_ = true;
    reply.push_back(json_frame({{"ok", true}}));
    return reply;
  }
  // A client that retries (its own timeout, a lost reply) re-sends the same request_id: the
  // command runs once. The key is the client's routing id, so two clients never collide.
  const auto& request_id = req.request_id;
  std::string key;
  if (!request_id.is_null()) {
    key = envelope.front().to_string() + '\0' + request_id.dump();
    const auto running = std::find_if(pending_.begin(), pending_.end(), [&](const Pending& p) { return p.key == key; });
    if (running != pending_.end()) {
      counters_.add("control.duplicate_requests");
      running->envelope = std::move(envelope);  // one reply, to the copy the client waits for now
      return {};
    }
    const auto done = std::find_if(answered_.begin(), answered_.end(), [&](const auto& a) { return a.first == key; });
    if (done != answered_.end()) {
      counters_.add("control.duplicate_requests");
      auto again = done->second;
      again["duplicate"] = true;  // the reply it was given before; the command did not run again
      reply.push_back(json_frame(again));
      return reply;
    }
  }
  const auto timeout = std::chrono::milliseconds(req.timeout_ms.value_or(cfg_.reply_timeout_ms));
  Pending p{std::move(envelope), cmd, {}, std::chrono::steady_clock::now() + timeout, key, request_id};
  p.ticket = pipeline_.submit(std::move(req));  // after the copies above: `cmd` and `request_id` refer into req
  pending_.push_back(std::move(p));
  return {};
}

void ControlServer::send(std::vector<zmq::message_t>& envelope, std::vector<zmq::message_t>&& reply) {
  std::vector<zmq::message_t> frames;
  frames.reserve(envelope.size() + reply.size());
  for (auto& e : envelope) frames.push_back(std::move(e));
  for (auto& r : reply) frames.push_back(std::move(r));
  (void)zmq::send_multipart(socket_, frames);  // a requester that has gone is dropped by ROUTER
}

void ControlServer::serve_pending() {
  using State = Pipeline::CommandState;
  const auto now = std::chrono::steady_clock::now();
  for (auto it = pending_.begin(); it != pending_.end();) {
    auto& p = *it;
    std::vector<zmq::message_t> reply;
    if (p.ticket.reply.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      reply = result_reply(p.cmd, p.ticket.reply.get(), p.request_id);
    } else if (now >= p.deadline) {
      auto expected = State::queued;
      if (p.ticket.state->compare_exchange_strong(expected, State::cancelled)) {
        reply = error_reply("'" + p.cmd + "' did not start within its timeout (timeout_ms, else control.reply_timeout_ms); it was cancelled and will not run",
                            "command_timed_out", p.request_id);
      } else if (expected = State::running; p.ticket.state->compare_exchange_strong(expected, State::abandoned)) {
        reply = error_reply("'" + p.cmd + "' did not finish within its timeout (timeout_ms, else control.reply_timeout_ms); it is cancelled at its next step "
                            "where it can be (select_energies), else it goes on; its outcome is published on the errors topic "
                            "(late_reply) when it ends", "command_timed_out", p.request_id);
      } else {
        ++it;  // it finished just now: answered with its result on the next pass
        continue;
      }
    } else {
      ++it;
      continue;
    }
    if (!p.key.empty()) {
      answered_.emplace_back(p.key, nlohmann::json::parse(reply.front().to_string_view()));
      if (answered_.size() > kAnsweredKept) answered_.pop_front();
    }
    send(p.envelope, std::move(reply));
    it = pending_.erase(it);
  }
}

void ControlServer::run(std::stop_token stop) {
  while (!stop.stop_requested()) {
    try {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(pending_.empty() ? 100 : 5));
      if (item.revents & ZMQ_POLLIN) {
        std::vector<zmq::message_t> frames;
        if (zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait)) {
          // A REQ peer's message: its routing id, an empty delimiter, then the request.
          const auto delim = std::find_if(frames.begin(), frames.end(), [](const auto& f) { return f.size() == 0; });
          if (delim != frames.end()) {
            std::vector<zmq::message_t> envelope;
            for (auto f = frames.begin(); f <= delim; ++f) envelope.push_back(std::move(*f));
            const auto body = static_cast<std::size_t>(frames.end() - delim - 1);
            std::vector<zmq::message_t> reply;
            if (body != 1) {
              counters_.add("control.errors");
              reply.push_back(json_frame({{"ok", false}, {"error", "control requests are one frame of JSON"}}));
            } else {
              try {
                reply = handle(*(delim + 1), envelope);
              } catch (const std::exception& e) {
                counters_.add("control.errors");
                reply.clear();
                reply.push_back(json_frame({{"ok", false}, {"error", std::string("internal error: ") + e.what()}}));
              }
            }
            if (!reply.empty()) send(envelope, std::move(reply));
          }
        }
      }
      serve_pending();
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      spdlog::error("control socket: {}", e.what());
    }
  }
}

}  // namespace xanesd
