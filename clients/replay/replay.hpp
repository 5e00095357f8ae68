// Plays a scan file into xanesd exactly as a detector and scan controller would: start,
// frames (energy-major full images or row blocks, or pixel-major pixel lists), stop. The
// file is read by store/scan_file.hpp, the same reader `xanesd fit` uses.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "xanesd/protocol/messages.hpp"

namespace xanesd::replay {

struct Options {
  std::filesystem::path input;
  std::string endpoint = "tcp://127.0.0.1:5555";
  protocol::Order order = protocol::Order::energy_major;
  double rate_fps = 0;       // frames per second; 0 = as fast as xanesd accepts
  int rows_per_frame = 0;    // energy-major: 0 = whole image per frame
  int chunk_pixels = 0;      // pixel-major: pixels per frame (0 = one image row)
  bool spectra = false;      // pixel-major: each chunk's every energy in one message (a spectra batch)
  std::string scan_id;       // default: the file's stem
  bool send_stop = true;
  std::vector<double> only_energies_eV;  // a sub-spectra scan at these energies (eV); empty: all
  // How long a message may wait for xanesd to take it (no daemon listening, a stalled one):
  // then run() throws saying so, rather than hanging.
  int timeout_ms = 30000;
  // Resume after a daemon restart: ask this control endpoint's `status` which frames of the
  // scan xanesd has acknowledged (journal.last_seq) and send only the rest; nothing if the
  // scan has stopped already; everything if xanesd does not know the scan.
  std::string resume_control;
  double resume_timeout_s = 60;  // how long to wait for the control socket to answer
  // CURVE (a daemon with security.server_key): the daemon's NAME.pub and this client's NAME.key.
  std::filesystem::path server_key, client_key;
};

// Where a resumed replay picks up: the first seq to send, whether to send start.
struct ResumePoint {
  bool send_start = true;
  std::int64_t first_seq = 0;
  bool done = false;  // the scan has stopped already: nothing to send
  std::string why;    // said on stdout
};
// Asks xanesd's control socket; throws std::runtime_error when it does not answer in time.
ResumePoint resume_point(const Options& opt, const std::string& scan_id, zmq::context_t& ctx);

struct Report {
  std::int64_t frames = 0;  // frames sent (a resumed replay skips the acknowledged ones)
  std::int64_t skipped = 0;  // frames xanesd had acknowledged before a resume
  double seconds = 0;
};

// Sends the scan; `on_frame(sent, total)` is called right after each frame is handed to ZeroMQ,
// with the frames sent so far and the frames this replay sends in all (progress, ETA).
Report run(const Options& opt, zmq::context_t& ctx, const std::function<void(std::int64_t, std::int64_t)>& on_frame = {});

}  // namespace xanesd::replay
