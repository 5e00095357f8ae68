#include "control/control_server.hpp"

#include <spdlog/spdlog.h>
#include <zmq_addon.hpp>

namespace xanesd {

ControlServer::ControlServer(zmq::context_t& ctx, const ControlConfig& cfg, Pipeline& pipeline, Publisher& publisher,
                             Counters& counters, std::atomic<bool>& shutdown_requested, const Authenticator* auth)
    : socket_(ctx, zmq::socket_type::rep), cfg_(cfg), pipeline_(pipeline), publisher_(publisher),
      counters_(counters), shutdown_requested_(shutdown_requested) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::rcvtimeo, 100);
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

std::vector<zmq::message_t> ControlServer::handle(const zmq::message_t& raw) {
  std::vector<zmq::message_t> reply;
  // code: a specific issue code (invalid_path …) when the command gave one.
  auto fail = [&](const std::string& why, const std::string& code = "bad_control_request") {
    counters_.add("control.errors");
    pipeline_.report({code, why}, "");
    reply.clear();
    reply.push_back(json_frame({{"ok", false}, {"error", why}, {"code", code}}));
    return std::move(reply);
  };
  const auto req = nlohmann::json::parse(raw.to_string_view(), nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object()) return fail("request is not a JSON object");
  if (!req.contains("cmd") || !req["cmd"].is_string()) return fail("request has no string 'cmd'");
  const auto cmd = req["cmd"].get<std::string>();
  counters_.add("control.requests");
  if (authenticated_ && cmd != "status" && cmd != "snapshot") {
    const char* user = const_cast<zmq::message_t&>(raw).gets("User-Id");  // set by the ZAP handler for this key
    if (!user || std::string_view(user) != "control")
      return fail("'" + cmd + "' needs a control client key (this key is listed in security.readonly_clients: status and snapshot only)",
                  "not_authorized");
  }

  if (cmd == "status") {
    auto s = pipeline_.status();
    s["ok"] = true;
    s["counters"] = counters_.to_json();
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
  static const char* pipeline_cmds[] = {"configure", "load_references", "save", "abort", "select_energies"};
  if (std::find(std::begin(pipeline_cmds), std::end(pipeline_cmds), cmd) == std::end(pipeline_cmds))
    return fail("unknown command '" + cmd + "' (status, configure, load_references, snapshot, select_energies, save, abort, shutdown)");
  auto fut = pipeline_.submit(req);
  if (fut.wait_for(std::chrono::milliseconds(cfg_.reply_timeout_ms)) != std::future_status::ready)
    return fail("'" + cmd + "' did not finish within control.reply_timeout_ms");
  auto result = fut.get();
  if (!result.value("ok", false))
    return fail(cmd + ": " + result.value("error", "failed"), result.value("code", "bad_control_request"));
  reply.push_back(json_frame(result));
  return reply;
}

void ControlServer::run(std::stop_token stop) {
  while (!stop.stop_requested()) {
    zmq::message_t request;
    try {
      if (!socket_.recv(request)) continue;
      // A multipart request is malformed; drain it so the REP state machine can answer.
      bool extra = false;
      while (socket_.get(zmq::sockopt::rcvmore)) {
        zmq::message_t more;
        (void)socket_.recv(more);
        extra = true;
      }
      std::vector<zmq::message_t> reply;
      if (extra) {
        counters_.add("control.errors");
        reply.push_back(json_frame({{"ok", false}, {"error", "control requests are one frame of JSON"}}));
      } else {
        try {
          reply = handle(request);
        } catch (const std::exception& e) {
          counters_.add("control.errors");
          reply.clear();
          reply.push_back(json_frame({{"ok", false}, {"error", std::string("internal error: ") + e.what()}}));
        }
      }
      (void)zmq::send_multipart(socket_, reply);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      spdlog::error("control socket: {}", e.what());
    }
  }
}

}  // namespace xanesd
