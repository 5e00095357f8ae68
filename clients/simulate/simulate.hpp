// Synthetic scans with known truth, built from real reference spectra: spatially varying
// species fractions and thickness, Poisson counting noise, I0 drift, background, and for
// transmission a flat field and dark current. Used by the demo, the tests and the benchmarks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "science/references.hpp"
#include "xanesd/protocol/messages.hpp"

namespace xanesd::sim {

struct Params {
  int rows = 64, cols = 64;
  std::vector<double> energies_eV;
  protocol::Mode mode = protocol::Mode::fluorescence;
  double counts = 2000;        // fluorescence: expected counts per unit signal at mean I0; transmission: flat-field counts
  double i0_drift = 0.08;      // relative I0 drift amplitude across the scan
  double dark = 0;             // dark counts (transmission: added to I and F)
  double max_thickness = 1.0;  // edge step at the thickest pixel (transmission: absorption length units)
  double background = 0.05;    // fluorescence: constant + slope background under the edge
  // Units of the recorded I0 (fluorescence): the I0 written per unit of relative beam
  // intensity. 0 = `counts` (I0 in detector counts per unit signal); a beamline ion chamber
  // records e.g. 1e5 while the detector counts a few thousand (science.md §7).
  double i0_units = 0;
  // An integrating detector's gain: recorded counts (and flat, dark) = gain × Poisson counts.
  double detector_gain = 1;
  bool empty_border = true;    // a frame of pixels with no material (thickness 0)
  bool noise = true;
  std::uint64_t seed = 1;
  // regions: pure species, a 50/50 mixture and a gradient (LCF has everything to find);
  // domains: blobs of a few fixed compositions (a known segmentation, for clustering tests);
  // scene: what a real chemical map looks like: domains of a dominant species whose
  // composition drifts smoothly toward a second species, a thin region, a one-pixel stripe of
  // another species, empty background (`domains` is then the dominant-species map).
  enum class Layout { regions, domains, scene } layout = Layout::regions;
  int scene_domains = 7;  // scene: number of domains (each species dominates at least one if K allows)
  // The scan file holds a volume E × Z × (rows/Z) × cols: the simulated image cut into Z slices
  // of consecutive rows (a test volume for `xanesd fit`, README "Volumes"); 1: an image.
  int slices = 1;
};

struct Scan {
  Params params;
  std::vector<std::string> reference_names;
  std::vector<float> counts;     // E × P
  std::vector<double> i0;        // E (fluorescence: counts scale; transmission: unused)
  std::vector<float> flat;       // E × P (transmission)
  std::vector<float> dark;       // P (transmission, if params.dark > 0)
  std::vector<float> fractions;  // K × P, truth
  std::vector<float> thickness;  // P, truth (edge step in signal units)
  std::vector<float> xrf;        // P, an Fe-like XRF map ∝ thickness
  std::vector<std::uint8_t> domains;  // P, truth composition class (0 = no material); domains and scene layouts
  std::vector<std::uint8_t> stripe;   // P, 1 on the scene's one-pixel stripe (scene layout only)
  std::size_t pixels() const { return static_cast<std::size_t>(params.rows) * static_cast<std::size_t>(params.cols); }
};

// The truth maps: a few domains of pure species and mixtures on a smooth gradient, so both
// sharp boundaries and gradual mixing are present. K = refs.size() (2 to 6 works best).
Scan simulate(const std::vector<science::Reference>& refs, const Params& p);

// The factor from the truth thickness (edge step per unit beam) to the signal the daemon
// computes, (I − dark)/I0: counts × gain / I0 units in fluorescence, 1 in transmission.
double signal_scale(const Params& p);

// The messages a detector and scan controller would send for this scan, energy-major, one full
// frame per energy (the XRF map with the first, as the replayer sends it): for feeding a Scan
// in-process (tests, benchmarks) without a file.
protocol::StartMsg start_message(const Scan& s, const std::string& scan_id);
protocol::FrameMsg frame_message(const Scan& s, const std::string& scan_id, std::size_t energy);

// The scan-file layout of README "Scan files": /energy, /raw/counts, /raw/i0, /raw/flat,
// /raw/dark, /xrf/Fe, plus /truth for tests.
void write_scan_file(const Scan& s, const std::filesystem::path& path);

std::vector<double> read_energies_file(const std::filesystem::path& path);  // eV or keV, one per line

}  // namespace xanesd::sim
