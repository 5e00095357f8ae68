// The `select_energies` control command (PROTOCOL.md): picks the spectra to select for (the
// loaded references, the references the current scan uses, or its cluster mean spectra), the
// candidate grid (the scan's energies or a given list) and the noise level (measured on the
// scan, or given), runs science::select_energies, and builds the reply — the same JSON is the
// header of the `energies` publication the scan controller listens to.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "scan/scan.hpp"
#include "science/references.hpp"

namespace xanesd {

// scan may be nullptr. Returns {"ok": false, "error": …} for a request that cannot be served.
nlohmann::json select_energies_request(const nlohmann::json& request, const std::vector<science::Reference>& refs,
                                       const Scan* scan, const Config& cfg);

// The per-point noise of edge-normalized spectra in a fitted scan: the median over kept pixels
// of RMS residual / thickness. 0 when there is no fit.
double measured_noise(const Scan& scan);

}  // namespace xanesd
