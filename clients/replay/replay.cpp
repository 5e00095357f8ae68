#include "replay/replay.hpp"

#include <stdexcept>
#include <thread>

#include "store/scan_file.hpp"

namespace xanesd::replay {

Report run(const Options& opt, zmq::context_t& ctx, const std::function<void(std::int64_t)>& on_frame) {
  zmq::socket_t push(ctx, zmq::socket_type::push);
  // Queue only on a completed connection, and wait at most timeout_ms for one to take a
  // message: with no daemon listening, the first send fails instead of blocking forever.
  push.set(zmq::sockopt::immediate, 1);
  push.set(zmq::sockopt::sndtimeo, opt.timeout_ms);
  push.set(zmq::sockopt::linger, -1);  // deliver everything before close (all of it went to a live connection)
  push.connect(opt.endpoint);
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t seq = 0;
  ScanFileOptions read_opt{opt.order, opt.rows_per_frame, opt.chunk_pixels, opt.scan_id, opt.send_stop, opt.only_energies_eV};
  read_scan_file(opt.input, read_opt, [&](protocol::IngestMessage&& msg) {
    const bool is_frame = std::holds_alternative<protocol::FrameMsg>(msg);
    if (is_frame && opt.rate_fps > 0)  // pace frames as the beamline would
      std::this_thread::sleep_until(t0 + std::chrono::duration<double>(static_cast<double>(seq) / opt.rate_fps));
    const bool sent = std::visit([&](auto&& m) { return protocol::send(push, std::move(m).to_wire()); }, std::move(msg));
    if (!sent)
      throw std::runtime_error("no xanesd took a message at " + opt.endpoint + " within " + std::to_string(opt.timeout_ms / 1000.0).substr(0, 4) +
                               " s (is the daemon running, and is this its ingest endpoint?) after " + std::to_string(seq) + " frames");
    if (is_frame) {
      if (on_frame) on_frame(seq);
      ++seq;
    }
  });
  push.close();  // linger -1: returns once everything is handed to the peer
  return {seq, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

}  // namespace xanesd::replay
