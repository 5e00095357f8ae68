// Reference spectra: loading from the file formats beamline users have (Athena/Demeter XDI
// multi-column exports, two-column text in eV or keV) and resampling onto a scan's energies.
// No sockets, no threads: the daemon, the batch fit and the tests all call these.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Dense>

namespace xanesd::science {

struct Reference {
  std::string name;
  std::string source;                // file it came from
  std::vector<double> energies_eV;   // strictly increasing
  std::vector<double> mu;            // same length; edge-normalized after loading
  bool normalized_here = false;      // true if xanesd edge-normalized it (it was raw μ)
  double e0_eV = 0, edge_step = 0;   // from the edge normalization check
};

// Raw measured spectra must be edge-normalized before fitting; libraries exported by Athena
// already are. `auto` normalizes only spectra that are not (pre-edge ≉ 0 or step ≉ 1).
enum class NormalizeMode { automatic, always, never };
NormalizeMode normalize_mode_from_string(const std::string& s);  // "auto", "always", "never"

class ReferenceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Loads every spectrum in a file. Multi-column files give one Reference per column after
// the energy column; two-column files give one, named from the header (`#%Name:`) or the
// file name. Energies below 100 are taken as keV and converted to eV.
enum class EnergyUnit { automatic, eV, keV };
EnergyUnit energy_unit_from_string(const std::string& s);  // "auto", "eV", "keV"

// unit: declared by the caller, or (automatic) declared in the file (XDI "Column.1: energy keV",
// a header line "# ... units: keV"), or detected (all energies below 100 → keV).
// The file must be a regular file of at most kMaxReferenceFileBytes (never a FIFO or a device);
// errors name the path and line, never the file's contents.
inline constexpr long kMaxReferenceFileBytes = 64L << 20;
std::vector<Reference> load_reference_file(const std::filesystem::path& path,
                                           NormalizeMode normalize = NormalizeMode::automatic,
                                           EnergyUnit unit = EnergyUnit::automatic);

// Edge-normalizes one reference in place as Larch's pre_edge does (see edge_normalize.hpp),
// when `mode` asks for it; records E0 and the edge step either way.
void normalize_reference(Reference& r, NormalizeMode mode);

// Resamples each reference onto `energies_eV` by linear interpolation. Inside
// [first − margin, last + margin] of a reference's own range, points beyond its ends take
// the end value (normalized spectra are flat there); beyond the margin, throws
// ReferenceError naming the reference and both ranges. Returns E×K.
Eigen::MatrixXd resample(const std::vector<Reference>& refs, const std::vector<double>& energies_eV,
                         double margin_eV);

// Linear interpolation of (x, y) at xq, holding end values outside; x strictly increasing.
double interpolate(const std::vector<double>& x, const std::vector<double>& y, double xq);

}  // namespace xanesd::science
