// An in-process daemon on loopback for the bad-input and hardening tests: ephemeral ports,
// its own output folder, a PUSH socket to send with and a SUB socket on every topic.
#pragma once

#include <memory>
#include <thread>

#include "xanesd/protocol/messages.hpp"
#include "xanesd/protocol/products.hpp"

#include "daemon.hpp"
#include "support.hpp"

namespace xanesd::test {

using namespace std::chrono_literals;

// The small scan the bad-input and hardening tests send: 6×8 pixels, 12 energies 8 eV apart.
constexpr int kRows = 6, kCols = 8, kE = 12;

inline std::vector<double> plan() {
  std::vector<double> e;
  for (int i = 0; i < kE; ++i) e.push_back(7100 + 8.0 * i);
  return e;
}

inline protocol::StartMsg start(const std::string& id) {
  protocol::StartMsg s;
  s.scan_id = id;
  s.rows = kRows, s.cols = kCols;
  s.energies_eV = plan();
  return s;
}

// A full frame of scan `id` at energy e, every pixel `value` counts, I0 1000.
inline protocol::FrameMsg frame(const std::string& id, std::int64_t seq, int e, float value = 100.f) {
  protocol::FrameMsg f;
  f.scan_id = id;
  f.seq = seq;
  f.energy_index = e;
  f.energy_eV = plan()[static_cast<std::size_t>(e)];
  f.i0_scalar = 1000.0;
  const std::vector<float> counts(kRows * kCols, value);
  f.counts = protocol::Array::from<float>("counts", counts, {kRows, kCols});
  return f;
}

struct LiveDaemon {
  std::filesystem::path dir;
  Config cfg;
  std::unique_ptr<Daemon> daemon;
  zmq::context_t ctx{1};
  zmq::socket_t push{ctx, zmq::socket_type::push}, sub{ctx, zmq::socket_type::sub};

  explicit LiveDaemon(const std::string& name, const std::vector<std::string>& extra = {}) : dir(test::scratch(name)) {
    std::vector<std::string> settings = {
        "ingest.endpoint=tcp://127.0.0.1:*", "publish.endpoint=tcp://127.0.0.1:*", "control.endpoint=tcp://127.0.0.1:*",
        "publish.interval_ms=60000", "log.level=off", "output.directory=" + dir.string(),
        "references.files=[\"" + test::fe_library().string() + "\"]"};
    settings.insert(settings.end(), extra.begin(), extra.end());
    cfg = make_config(nlohmann::json::object(), settings, "/");
    daemon = std::make_unique<Daemon>(cfg);
    daemon->start();
    push.set(zmq::sockopt::linger, 0);
    push.connect(daemon->endpoints().ingest);
    sub.set(zmq::sockopt::subscribe, "");
    if (cfg.security.server_key.empty()) connect_subscriber(ctx, sub, daemon->endpoints().publish);
    else sub.connect(daemon->endpoints().publish);  // without keys: no handshake, nothing received (test_security)
  }
  void send_frames(std::vector<zmq::message_t>&& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i)
      push.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
  void send(protocol::WireMessage&& m) { protocol::send(push, std::move(m)); }
  // Waits for the next errors-topic message, skipping maps and status.
  nlohmann::json next_error() {
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < until) {
      auto m = test::recv_message(sub, 200ms);
      if (m && m->topic == "errors") {
        try {  // the typed contract holds (a broken one shows as a code no test expects)
          (void)protocol::ErrorProduct::from_wire(test::copy_of(*m));
        } catch (const protocol::ProtocolError& e) {
          return {{"code", std::string("errors message breaks its contract: ") + e.what()}};
        }
        return m->header;
      }
    }
    return nullptr;
  }
  nlohmann::json control(const nlohmann::json& req) { return test::control(ctx, daemon->endpoints().control, req); }
  // Waits until status shows scan `id` stopped with its result file written; returns that status.
  // Waits until scan `id` has stopped and written its file; `started`: wait also until at least
  // this many scans have started (status is answered at once, so a reused id's earlier scan
  // could otherwise pass for the new one).
  nlohmann::json wait_stopped(const std::string& id, int started = 0) {
    nlohmann::json st;
    for (int i = 0; i < 200; ++i) {
      st = control({{"cmd", "status"}});
      if (st.value("state", "") == "stopped" && st.at("scan").value("scan_id", "") == id && !st.value("result_file", "").empty() &&
          st.at("counters").value("scans.started", 0) >= started)
        break;
      std::this_thread::sleep_for(50ms);
    }
    return st;
  }
  // The check after every trial: a small complete scan (4×5 px, 8 energies across the Fe edge)
  // still runs to a result file, and status still answers.
  bool serves_a_valid_scan(const std::string& id = "after") {
    constexpr int R = 4, C = 5, E = 8;
    const int started = control({{"cmd", "status"}}).at("counters").value("scans.started", 0) + 1;
    protocol::StartMsg s;
    s.scan_id = id, s.rows = R, s.cols = C;
    for (int e = 0; e < E; ++e) s.energies_eV.push_back(7100 + 8.0 * e);
    const auto plan = s.energies_eV;
    send(std::move(s).to_wire());
    for (int e = 0; e < E; ++e) {
      protocol::FrameMsg f;
      f.scan_id = id, f.seq = e, f.energy_index = e, f.energy_eV = plan[static_cast<std::size_t>(e)], f.i0_scalar = 1000.0;
      const std::vector<float> counts(R * C, 100.f + 50.f * static_cast<float>(e > 3));
      f.counts = protocol::Array::from<float>("counts", counts, {R, C});
      send(std::move(f).to_wire());
    }
    protocol::StopMsg stop;
    stop.scan_id = id, stop.frames_sent = E;
    send(std::move(stop).to_wire());
    const auto st = wait_stopped(id, started);
    return st.value("state", "") == "stopped" && st.at("scan").value("frames_applied", 0) == E &&
           std::filesystem::exists(dir / (id + ".h5"));
  }
};

}  // namespace xanesd::test
