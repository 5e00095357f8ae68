// Feeds a simulated scan to the daemon's own Scan in-process, energy-major, frame by frame as the
// pipeline would (sim::start_message / sim::frame_message, Scan::apply), then solves (fit + quality
// mask), as tests/science_support.hpp's run_scan does for the tests. Benchmarks throw where the
// tests REQUIRE.
#pragma once

#include <memory>
#include <stdexcept>
#include <vector>

#include "scan/scan.hpp"
#include "simulate/simulate.hpp"

namespace xanesd::bench {

inline std::unique_ptr<Scan> run_scan(const sim::Scan& s, const std::vector<science::Reference>& refs, const ScanSettings& settings,
                                      int threads = 2) {
  auto scan = std::make_unique<Scan>(sim::start_message(s, "bench"), refs, settings);
  if (!scan->fit_error().empty()) throw std::runtime_error("scan: " + scan->fit_error());
  for (std::size_t e = 0; e < s.params.energies_eV.size(); ++e) {
    auto f = sim::frame_message(s, "bench", e);
    if (!scan->apply(f).accepted) throw std::runtime_error("scan: frame rejected");
  }
  scan->solve_changed(threads);
  return scan;
}

}  // namespace xanesd::bench
