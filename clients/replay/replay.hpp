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
  std::string scan_id;       // default: the file's stem
  bool send_stop = true;
  std::vector<double> only_energies_eV;  // a sub-spectra scan at these energies (eV); empty: all
  // How long a message may wait for xanesd to take it (no daemon listening, a stalled one):
  // then run() throws saying so, rather than hanging.
  int timeout_ms = 30000;
};

struct Report {
  std::int64_t frames = 0;
  double seconds = 0;
};

// Sends the scan; `on_frame(seq)` is called right after each frame is handed to ZeroMQ
// (the benchmark uses it to time frame-to-map latency).
Report run(const Options& opt, zmq::context_t& ctx, const std::function<void(std::int64_t)>& on_frame = {});

}  // namespace xanesd::replay
