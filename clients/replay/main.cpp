// xanes-replay: plays a scan file into xanesd as a detector and scan controller would.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "cli.hpp"
#include "progress.hpp"
#include "replay/replay.hpp"

using namespace xanesd;

int main(int argc, char** argv) {
  CLI::App app(
      "Plays a scan file (README \"Scan files\"; xanes-convert makes them from TIFF, HDF5 and STXM stacks) into xanesd\n"
      "as a detector and scan controller would; prints progress (frames sent, ETA) on stderr every 5 s.",
      "xanes-replay");
  replay::Options opt;
  std::string order = "energy-major";
  double timeout_s = opt.timeout_ms / 1000.0;
  bool quiet = false;
  app.add_option("--input", opt.input, "the scan file")->required();
  app.add_option("--endpoint", opt.endpoint, "xanesd's ingest endpoint")->capture_default_str();
  app.add_option("--order", order, "frame order")->check(CLI::IsMember({"energy-major", "pixel-major"}))->capture_default_str();
  app.add_option("--rate", opt.rate_fps, "frames per second (0: as fast as xanesd takes them)")
      ->check(cli::non_negative());
  app.add_option("--rows-per-frame", opt.rows_per_frame, "energy-major: rows per frame (0: whole images)")->check(cli::non_negative());
  app.add_option("--chunk-pixels", opt.chunk_pixels, "pixel-major: pixels per frame (0: one image row)")->check(cli::non_negative());
  app.add_flag("--spectra", opt.spectra, "pixel-major: send each chunk's whole spectra in one message (a spectra batch)");
  app.add_option("--scan-id", opt.scan_id, "scan id (default: the file's stem)");
  app.add_flag("--no-stop", [&](std::int64_t) { opt.send_stop = false; }, "do not send stop");
  app.add_option("--energies", opt.only_energies_eV, "eV: a sub-spectra scan at these energies only: E1,E2,...")
      ->delimiter(',')
      ->check(cli::number());
  app.add_option("--timeout", timeout_s, "seconds a message may wait for xanesd before xanes-replay gives up")
      ->check(cli::positive())
      ->capture_default_str();
  app.add_option("--resume", opt.resume_control,
                 "CONTROL_ENDPOINT: after a daemon restart, send only the frames xanesd has not acknowledged");
  app.add_option("--server-key", opt.server_key, "DAEMON.pub (CURVE: a daemon with security.server_key)");
  app.add_option("--client-key", opt.client_key, "CLIENT.key (CURVE)");
  app.add_flag("--quiet", quiet, "no progress lines");
  if (auto code = cli::parse(app, argc, argv)) return *code;
  opt.order = opt.spectra ? protocol::Order::pixel_major : protocol::order_from_string(order);  // spectra batches are pixel-major
  opt.timeout_ms = static_cast<int>(1000 * timeout_s);
  try {
    zmq::context_t ctx(1);
    Progress progress("xanes-replay", "frames sent", quiet, std::chrono::seconds(5));
    const auto r = replay::run(opt, ctx, [&](std::int64_t sent, std::int64_t total) {
      progress.set_total(total);
      progress.update(sent);
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
