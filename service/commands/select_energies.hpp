// The `select_energies` control command (PROTOCOL.md): picks the spectra to select for (the
// loaded references, the references the current scan uses, or its cluster mean spectra), the
// candidate grid (the scan's energies or a given list) and the noise level (measured on the
// scan, or given), runs science::select_dwell (objective equal_time: energies and dwell weights
// for the full grid's beam time) and/or science::select_energies (RFE and A-optimal at even
// dwell), and builds the reply — the same JSON is the
// header of the `energies` publication the scan controller listens to.
#pragma once

#include <vector>

#include <Eigen/Dense>
#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "scan/scan.hpp"
#include "science/references.hpp"
#include "xanesd/protocol/control.hpp"

namespace xanesd {

// scan may be nullptr. Returns {"ok": false, "error": …} for a request that cannot be served.
nlohmann::json select_energies_request(const protocol::SelectEnergiesArgs& request, const std::vector<science::Reference>& refs,
                                       const Scan* scan, const Config& cfg);

// The per-point noise of edge-normalized spectra in a fitted scan: the median over kept pixels
// of RMS residual / thickness. 0 when there is no fit.
double measured_noise(const Scan& scan);

// The scan's mean spectrum per unit edge step at `energy_indices` (the Poisson variance profile
// of the equal-time selection): Σ y / Σ thickness over the kept pixels measured there, background
// included. Empty without a fit, or if a listed energy has no kept pixel.
Eigen::VectorXd measured_mean_spectrum(const Scan& scan, const std::vector<int>& energy_indices);

}  // namespace xanesd
