// Helpers for in-process science tests: shipped references, a simulated scan fed to the
// daemon's own Scan energy-major (as the pipeline would), default settings, the HXN grid.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>

#include <doctest/doctest.h>

#include "config/config.hpp"
#include "scan/scan.hpp"
#include "simulate/simulate.hpp"
#include "support.hpp"

namespace xanesd::test {

inline std::vector<science::Reference> pick(const std::vector<science::Reference>& all, const std::vector<std::string>& names) {
  std::vector<science::Reference> out;
  for (const auto& n : names) {
    auto it = std::find_if(all.begin(), all.end(), [&](const auto& r) { return r.name == n; });
    REQUIRE(it != all.end());
    out.push_back(*it);
  }
  return out;
}

// Feeds a simulated scan to a Scan energy-major, as the pipeline would, and solves;
// `after_frame(scan, e)` runs after energy e is applied (live updates in between).
inline std::unique_ptr<Scan> run_scan(const sim::Scan& s, const std::vector<science::Reference>& refs, const ScanSettings& settings,
                                      const std::function<void(Scan&, std::size_t)>& after_frame = {}) {
  protocol::StartMsg start;
  start.scan_id = "accuracy";
  start.rows = s.params.rows, start.cols = s.params.cols;
  start.energies_eV = s.params.energies_eV;
  start.mode = s.params.mode;
  if (!s.dark.empty()) start.dark = protocol::Array::from<float>("dark", s.dark, {start.rows, start.cols});
  auto scan = std::make_unique<Scan>(std::move(start), refs, settings);
  REQUIRE(scan->fit_error().empty());
  const std::size_t P = s.pixels();
  for (std::size_t e = 0; e < s.params.energies_eV.size(); ++e) {
    protocol::FrameMsg f;
    f.scan_id = "accuracy";
    f.seq = static_cast<std::int64_t>(e);
    f.energy_index = static_cast<int>(e);
    f.energy_eV = s.params.energies_eV[e];
    f.counts = protocol::Array::from<float>("counts", std::span<const float>(&s.counts[e * P], P), {s.params.rows, s.params.cols});
    if (s.params.mode == protocol::Mode::fluorescence) f.i0_scalar = s.i0[e];
    else f.flat = protocol::Array::from<float>("flat", std::span<const float>(&s.flat[e * P], P), {s.params.rows, s.params.cols});
    REQUIRE(scan->apply(f).accepted);
    if (after_frame) after_frame(*scan, e);
  }
  scan->solve_changed(2);
  return scan;
}

inline ScanSettings default_settings() { return scan_settings(make_config(nlohmann::json::object(), {}, "/")); }

// A rows×cols fluorescence scan on the real HXN grid (the simulator's other defaults).
inline sim::Params hxn_scan(int rows, int cols) {
  sim::Params p;
  p.rows = rows, p.cols = cols;
  p.energies_eV = sim::read_energies_file(hxn_energies());
  return p;
}

}  // namespace xanesd::test
