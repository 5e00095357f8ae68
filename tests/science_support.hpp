// Helpers for in-process science tests: shipped references, a simulated scan fed to the
// daemon's own Scan energy-major (as the pipeline would), default settings, the HXN grid.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>

#include <doctest/doctest.h>

#include "config/config.hpp"
#include "scan/scan.hpp"
#include "simulate/scene_truth.hpp"
#include "simulate/simulate.hpp"
#include "support.hpp"

namespace xanesd::test {

// Two scans' fits and masks equal bit for bit: every map, the spatial step's neighbours, the mask.
inline void check_same_fit(const Scan& x, const Scan& y) {
  REQUIRE(x.fit());
  REQUIRE(y.fit());
  CHECK(x.fit()->model().reference_names == y.fit()->model().reference_names);
  const auto &a = x.fit()->maps(), &b = y.fit()->maps();
  CHECK(a.fractions == b.fractions);
  CHECK(a.fraction_sigma == b.fraction_sigma);
  CHECK(a.thickness == b.thickness);
  CHECK(a.residual == b.residual);
  CHECK(a.rfactor == b.rfactor);
  CHECK(a.nenergies == b.nenergies);
  CHECK(a.fitted == b.fitted);
  CHECK(x.fit()->spatial_neighbours() == y.fit()->spatial_neighbours());
  CHECK(x.mask().valid == y.mask().valid);
}

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
  auto scan = std::make_unique<Scan>(sim::start_message(s, "accuracy"), refs, settings);
  REQUIRE(scan->fit_error().empty());
  for (std::size_t e = 0; e < s.params.energies_eV.size(); ++e) {
    auto f = sim::frame_message(s, "accuracy", e);
    REQUIRE(scan->apply(f).accepted);
    if (after_frame) after_frame(*scan, e);
  }
  scan->solve_changed(2);
  return scan;
}

inline ScanSettings default_settings() { return scan_settings(make_config(nlohmann::json::object(), {}, "/")); }

// The final cycle after the last frame, as the pipeline and `xanesd fit` run it: the stop, then
// the fit, the image-level reference selection on all the data and the refit it may ask for.
inline void finish_scan(Scan& scan) {
  protocol::StopMsg stop;
  stop.scan_id = scan.id();
  scan.stop(stop);
  scan.solve_changed(2);
  scan.update_reference_selection(2);
  scan.solve_changed(2);
}

// A rows×cols fluorescence scan on the real HXN grid (the simulator's other defaults).
inline sim::Params hxn_scan(int rows, int cols) {
  sim::Params p;
  p.rows = rows, p.cols = cols;
  p.energies_eV = sim::read_energies_file(hxn_energies());
  return p;
}

// A scene like a real chemical map (the simulator's scene layout, sim::scene_params) on the HXN grid.
inline sim::Params scene_scan(int rows, int cols, double counts, std::uint64_t seed = 1) {
  return sim::scene_params(rows, cols, sim::read_energies_file(hxn_energies()), counts, seed);
}

inline const std::vector<std::string>& scene_species() { return sim::scene_species(); }

}  // namespace xanesd::test
