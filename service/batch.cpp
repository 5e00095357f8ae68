#include "batch.hpp"

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>

#include <spdlog/spdlog.h>

#include "daemon.hpp"
#include "progress.hpp"
#include "scan/scan.hpp"
#include "store/result_file.hpp"
#include "store/scan_file.hpp"

namespace xanesd {

nlohmann::json run_batch_fit(const Config& cfg, const BatchOptions& opt) {
  ReferencesConfig refs_cfg = cfg.references;
  if (!opt.reference_files.empty()) refs_cfg.files = opt.reference_files;
  auto refs = load_references(refs_cfg);
  if (!opt.reference_names.empty()) {
    std::vector<science::Reference> picked;
    for (const auto& n : opt.reference_names) {
      auto it = std::find_if(refs.begin(), refs.end(), [&](const auto& r) { return r.name == n; });
      if (it == refs.end()) throw ConfigError("--names: no reference named '" + n + "' in the reference files");
      picked.push_back(*it);
    }
    refs = std::move(picked);
  }
  std::unique_ptr<Scan> scan;
  std::map<std::string, std::int64_t> issues;
  auto note = [&](const Issue& i) {
    ++issues[i.code];
    spdlog::warn("[{}] {}", i.code, i.message);
  };
  ScanFileOptions read_opt;
  read_opt.borrow_buffers = true;  // each frame is applied (copied into the store) before the next is read
  // Frames are read and fitted as they come (the incremental fit), so frames read is the fit's progress.
  Progress progress("xanesd fit", "frames", opt.quiet);
  std::int64_t frames = 0;
  read_scan_file(opt.input, read_opt, [&](protocol::IngestMessage&& msg) {
    if (auto* s = std::get_if<protocol::StartMsg>(&msg)) {
      progress.set_total(scan_file_frames(*s, read_opt));
      scan = std::make_unique<Scan>(std::move(*s), refs, scan_settings(cfg));
    } else if (auto* f = std::get_if<protocol::FrameMsg>(&msg)) {
      for (const auto& i : scan->apply(*f).issues) note(i);
      progress.update(++frames);
    } else {
      for (const auto& i : scan->stop(std::get<protocol::StopMsg>(msg))) note(i);
    }
  });
  if (!scan->fit_error().empty()) throw std::runtime_error(scan->fit_error());
  if (!opt.quiet)
    std::fprintf(stderr, "xanesd fit: %lld frames read; final fit of %lld pixels, reference selection, segments, edge maps\n",
                 static_cast<long long>(frames), static_cast<long long>(scan->pixels()));
  scan->solve_changed(solve_threads(cfg));
  scan->update_reference_selection(solve_threads(cfg));
  scan->solve_changed(solve_threads(cfg));  // the final maps: Poisson-weighted once the references are chosen
  scan->update_segments(solve_threads(cfg));
  scan->compute_edge_maps(solve_threads(cfg));
  nlohmann::json counters = nlohmann::json::object();
  for (const auto& [code, n] : issues) counters["issues." + code] = n;
  // The file records the arguments this fit ran with, not only the config's defaults.
  auto effective = cfg.effective;
  effective["references.files"] = nlohmann::json::array();
  for (const auto& f : refs_cfg.files) effective["references.files"].push_back(std::filesystem::absolute(f).lexically_normal().string());
  if (!opt.reference_names.empty()) effective["references.names"] = opt.reference_names;
  effective["input"] = std::filesystem::absolute(opt.input).lexically_normal().string();
  const bool spectra = cfg.output.save_spectra && static_cast<double>(scan->pixels()) <= cfg.output.batch_spectra_max_pixels;
  if (cfg.output.save_spectra && !spectra)
    spdlog::info("{} pixels > output.batch_spectra_max_pixels: the normalized spectra are not written (raise it to opt in)",
                 scan->pixels());
  write_result_file(opt.output, *scan, effective, counters, spectra);
  return {{"scan", scan->summary()}, {"counters", counters}, {"output", opt.output.string()}};
}

int batch_command(const std::filesystem::path& config_file, const std::vector<std::string>& overrides, const BatchOptions& opt) {
  try {
    const Config cfg = config_file.empty() ? make_config(nlohmann::json::object(), overrides, std::filesystem::current_path())
                                           : load_config(config_file, overrides);
    spdlog::set_level(spdlog::level::from_str(cfg.log_level));
    const auto t0 = std::chrono::steady_clock::now();
    const auto summary = run_batch_fit(cfg, opt);
    if (!opt.quiet)
      std::fprintf(stderr, "xanesd fit: wrote %s in %.1f s\n", opt.output.string().c_str(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::cout << summary.dump(2) << "\n";
    return 0;
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "xanesd fit: configuration error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanesd fit: %s\n", e.what());
    return 1;
  }
}

}  // namespace xanesd
