// xanes-replay: plays a scan file into xanesd as a detector and scan controller would.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "cli_numbers.hpp"
#include "replay/replay.hpp"

using namespace xanesd;

static int usage(int code = 2) {
  std::fprintf(code ? stderr : stdout,
               "usage: xanes-replay --input SCAN.h5 [--endpoint tcp://127.0.0.1:5555]\n"
               "                    [--order energy-major|pixel-major] [--rate FRAMES_PER_S]\n"
               "                    [--rows-per-frame N] [--chunk-pixels N] [--scan-id ID] [--no-stop]\n"
               "                    [--energies E1,E2,... (eV: a sub-spectra scan at these energies only)]\n"
               "                    [--timeout SECONDS (default 30: how long a message may wait for xanesd)]\n"
               "                    [--resume CONTROL_ENDPOINT (after a daemon restart: send only the frames xanesd has not acknowledged)]\n"
               "                    [--server-key DAEMON.pub --client-key CLIENT.key (CURVE: a daemon with security.server_key)]\n"
               "Plays a scan file (README \"Scan files\"; xanes-convert makes them from TIFF and HDF5 stacks)\n"
               "into xanesd; prints progress every 5 s.\n");
  return code;
}

int main(int argc, char** argv) {
  replay::Options opt;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
        return argv[++i];
      };
      if (a == "--input") opt.input = next();
      else if (a == "--endpoint") opt.endpoint = next();
      else if (a == "--order") opt.order = protocol::order_from_string(next());
      else if (a == "--rate") opt.rate_fps = cli::number(a, next());
      else if (a == "--rows-per-frame") opt.rows_per_frame = static_cast<int>(cli::whole(a, next()));
      else if (a == "--chunk-pixels") opt.chunk_pixels = static_cast<int>(cli::whole(a, next()));
      else if (a == "--timeout") opt.timeout_ms = static_cast<int>(1000 * cli::number(a, next()));
      else if (a == "-h" || a == "--help") return usage(0);
      else if (a == "--scan-id") opt.scan_id = next();
      else if (a == "--no-stop") opt.send_stop = false;
      else if (a == "--resume") opt.resume_control = next();
      else if (a == "--server-key") opt.server_key = next();
      else if (a == "--client-key") opt.client_key = next();
      else if (a == "--energies") {
        const std::string list = next();
        for (std::size_t pos = 0; pos < list.size();) {
          const auto comma = list.find(',', pos);
          opt.only_energies_eV.push_back(cli::number(a, list.substr(pos, comma - pos)));
          pos = comma == std::string::npos ? list.size() : comma + 1;
        }
      }
      else {
        std::fprintf(stderr, "xanes-replay: unknown option '%s'\n", a.c_str());
        return usage();
      }
    }
    if (opt.input.empty()) {
      std::fprintf(stderr, "xanes-replay: --input is required\n");
      return usage();
    }
    if (opt.timeout_ms <= 0) throw std::invalid_argument("--timeout must be positive");
    zmq::context_t ctx(1);
    auto last = std::chrono::steady_clock::now();
    const auto t0 = last;
    const auto r = replay::run(opt, ctx, [&](std::int64_t seq) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last < std::chrono::seconds(5)) return;
      last = now;
      const double s = std::chrono::duration<double>(now - t0).count();
      std::fprintf(stderr, "xanes-replay: %lld frames sent in %.0f s (%.1f frames/s)\n", static_cast<long long>(seq + 1), s,
                   static_cast<double>(seq + 1) / s);
    });
    std::printf("xanes-replay: sent %lld frames in %.2f s (%.1f frames/s)%s\n", static_cast<long long>(r.frames), r.seconds,
                r.seconds > 0 ? static_cast<double>(r.frames) / r.seconds : 0.0,
                r.skipped ? (", skipped " + std::to_string(r.skipped) + " acknowledged").c_str() : "");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanes-replay: %s\n", e.what());
    return 1;
  }
}
