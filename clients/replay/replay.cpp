#include "replay/replay.hpp"

#include <cstdio>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

#include "store/scan_file.hpp"
#include "xanesd/protocol/curve_keys.hpp"

namespace xanesd::replay {

namespace {
void secure(zmq::socket_t& s, const Options& opt) {
  if (!opt.client_key.empty() || !opt.server_key.empty()) protocol::make_curve_client(s, opt.server_key, opt.client_key);
}
}  // namespace

ResumePoint resume_point(const Options& opt, const std::string& scan_id, zmq::context_t& ctx) {
  const auto& control_endpoint = opt.resume_control;
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(opt.resume_timeout_s);
  nlohmann::json st;
  while (st.is_null()) {  // a restarted daemon answers once it has replayed its journal
    if (std::chrono::steady_clock::now() > until)
      throw std::runtime_error("resume: xanesd does not answer on " + control_endpoint);
    zmq::socket_t req(ctx, zmq::socket_type::req);
    req.set(zmq::sockopt::linger, 0);
    req.set(zmq::sockopt::rcvtimeo, 1000);
    secure(req, opt);
    req.connect(control_endpoint);
    const std::string q = R"({"cmd":"status"})";
    req.send(zmq::buffer(q), zmq::send_flags::none);
    zmq::message_t reply;
    if (req.recv(reply)) st = nlohmann::json::parse(reply.to_string_view());
  }
  ResumePoint r;
  const auto& scan = st.contains("scan") && st["scan"].is_object() ? st["scan"] : nlohmann::json::object();
  if (scan.value("scan_id", "") != scan_id) {
    r.why = "xanesd does not know scan '" + scan_id + "': sending all of it";
    return r;
  }
  if (st.value("state", "") != "running") {
    r.done = true;
    r.why = "scan '" + scan_id + "' is " + st.value("state", "") + " already: nothing to send";
    return r;
  }
  // journal.last_seq is live (the last frame written to the journal); scan.last_seq is as of the last publication.
  const auto& j = st.contains("journal") && st["journal"].is_object() ? st["journal"] : nlohmann::json::object();
  const bool journaled = j.value("enabled", false) && j.value("scan_id", "") == scan_id;
  const std::int64_t last = journaled ? j.value("last_seq", std::int64_t{-1}) : scan.value("last_seq", std::int64_t{-1});
  r.send_start = false;
  r.first_seq = last + 1;
  r.why = "scan '" + scan_id + "' is running with seq " + std::to_string(last) + " acknowledged" +
          (journaled ? "" : " (xanesd has no journal: as of its last publication)") + ": resuming at seq " + std::to_string(r.first_seq);
  return r;
}

Report run(const Options& opt, zmq::context_t& ctx, const std::function<void(std::int64_t, std::int64_t)>& on_frame) {
  ResumePoint from;
  if (!opt.resume_control.empty()) {
    from = resume_point(opt, opt.scan_id.empty() ? opt.input.stem().string() : opt.scan_id, ctx);
    std::printf("xanes-replay: %s\n", from.why.c_str());
    if (from.done) return {};
  }
  zmq::socket_t push(ctx, zmq::socket_type::push);
  // Queue only on a completed connection, and wait at most timeout_ms for one to take a
  // message: with no daemon listening, the first send fails instead of blocking forever.
  push.set(zmq::sockopt::immediate, 1);
  push.set(zmq::sockopt::sndtimeo, opt.timeout_ms);
  push.set(zmq::sockopt::linger, -1);  // deliver everything before close (all of it went to a live connection)
  secure(push, opt);
  push.connect(opt.endpoint);
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t seq = 0, skipped = 0, total = 0;
  ScanFileOptions read_opt{opt.order, opt.rows_per_frame, opt.chunk_pixels, opt.spectra, opt.scan_id, opt.send_stop, opt.only_energies_eV};
  read_scan_file(opt.input, read_opt, [&](protocol::IngestMessage&& msg) {
    if (const auto* s = std::get_if<protocol::StartMsg>(&msg)) total = scan_file_frames(*s, read_opt) - from.first_seq;
    const bool is_frame = std::holds_alternative<protocol::FrameMsg>(msg);
    if (is_frame && std::get<protocol::FrameMsg>(msg).seq < from.first_seq) return void(++skipped);  // acknowledged
    if (!from.send_start && std::holds_alternative<protocol::StartMsg>(msg)) return;  // the scan runs already
    if (is_frame && opt.rate_fps > 0)  // pace frames as the beamline would
      std::this_thread::sleep_until(t0 + std::chrono::duration<double>(static_cast<double>(seq) / opt.rate_fps));
    const bool sent = std::visit([&](auto&& m) { return protocol::send(push, std::move(m).to_wire()); }, std::move(msg));
    if (!sent)
      throw std::runtime_error("no xanesd took a message at " + opt.endpoint + " within " + std::to_string(opt.timeout_ms / 1000.0).substr(0, 4) +
                               " s (is the daemon running, and is this its ingest endpoint?) after " + std::to_string(seq) + " frames");
    if (is_frame) {
      ++seq;
      if (on_frame) on_frame(seq, total);
    }
  });
  push.close();  // linger -1: returns once everything is handed to the peer
  return {seq, skipped, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

}  // namespace xanesd::replay
