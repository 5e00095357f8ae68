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
  std::string column;                // what in the file it is: a column name, "ln(i0/itrans)", an Athena group
  bool normalized_here = false;      // true if xanesd edge-normalized it (it was raw μ)
  double e0_eV = 0, edge_step = 0;   // from the edge normalization check
  // What normalization did, in words (result files, load_references replies, the log):
  // "none (never)", "already normalized", "edge step", "pre-edge line subtracted (...)".
  std::string normalization;
};

// Raw measured spectra must be edge-normalized before fitting; libraries exported by Athena
// already are. `auto` normalizes only spectra that are not (pre-edge ≉ 0 or step ≉ 1), and
// where a Larch-style edge step means nothing (L2,3 edges in optical density: white lines many
// times the continuum step over a ~30 eV range; a step ≤ 0; too few points to fit the lines)
// it does what `background` does. `background` subtracts the pre-edge line and keeps the
// spectrum's own scale (OD stays OD); the fit's background line absorbs what remains.
enum class NormalizeMode { automatic, always, never, background };
NormalizeMode normalize_mode_from_string(const std::string& s);  // "auto", "always", "never", "background"

class ReferenceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Loads every spectrum in a file (plain, or gzip-compressed):
// - Athena projects (.prj): one Reference per μ(E) group, named by its label; the Perl text is
//   parsed as data, never evaluated; χ groups are skipped.
// - Beamline scans with detector columns (XDI "# Column.N: i0", a header row "energy,i0,it"):
//   one Reference, from the μ column (norm, flat, mu, mutrans, mufluor, best first) or computed
//   as ln(i0/itrans) (transmission) or ifluor/i0 (fluorescence). i0 is never a reference.
// - Libraries (Demeter multi-column exports, CSV with a header row): one Reference per column
//   other than the energy column, named from XDI Column.N or the header row.
// - Two-column files: one Reference named from the header (`#%Name:`) or the file name.
// Separators: spaces, tabs, commas, semicolons. Errors name the file and line.
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
