// The real xanesd binary as a child process on loopback ports, and control requests that wait
// for it to come up: the end-to-end and crash-recovery tests.
#pragma once

#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "process.hpp"
#include "support.hpp"

namespace xanesd::test {

struct DaemonProcess {
  std::string ingest, pub, control;
  std::filesystem::path dir;
  std::vector<std::string> extra;
  std::unique_ptr<Process> proc;
  // Free loopback ports; output in dir/results, log in dir/xanesd.log.
  DaemonProcess(const std::filesystem::path& dir, const std::vector<std::string>& extra = {})
      : ingest(loopback(free_port())), pub(loopback(free_port())), control(loopback(free_port())), dir(dir), extra(extra) {
    launch();
  }
  // Starts the binary (again, on the same ports and folders: a restart after a crash).
  void launch(const std::string& log_name = "xanesd.log") {
    std::vector<std::string> argv = {XANESD_BIN, "--config", (source_dir() / "config" / "default.json").string(),
                                     "--set", "ingest.endpoint=" + ingest, "--set", "publish.endpoint=" + pub,
                                     "--set", "control.endpoint=" + control, "--set", "output.directory=" + (dir / "results").string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<Process>(argv, (dir / log_name).string());
  }
};

// Sends a control request once the daemon answers: `status` is retried while it starts (it
// is answered at once), then `req` is sent once. A request is never re-sent: the control socket
// serves every request it reads, so a re-sent command would run twice.
inline nlohmann::json control_retry(zmq::context_t& ctx, const std::string& ep, const nlohmann::json& req) {
  auto ask = [&](const nlohmann::json& r, int timeout_ms) -> nlohmann::json {
    zmq::socket_t s(ctx, zmq::socket_type::req);
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::rcvtimeo, timeout_ms);
    s.connect(ep);
    s.send(zmq::buffer(r.dump()), zmq::send_flags::none);
    zmq::message_t reply;
    if (!s.recv(reply)) return nullptr;
    return nlohmann::json::parse(reply.to_string_view());
  };
  for (int i = 0;; ++i) {
    auto st = ask({{"cmd", "status"}}, 200);
    if (!st.is_null()) break;
    if (i > 300) throw std::runtime_error("xanesd does not answer on " + ep);
  }
  auto reply = ask(req, 120000);
  if (reply.is_null()) throw std::runtime_error("no reply from " + ep + " to " + req.dump());
  return reply;
}

}  // namespace xanesd::test
