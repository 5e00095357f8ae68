// Image-level reference selection (docs/science.md, "Which references"): which of the loaded
// references the sample needs, decided from the whole image rather than pixel by pixel.
//
// A noisy pixel cannot tell Magnetite from Maghemite; the image can. The image is cut into
// tiles, each tile's material pixels averaged (noise falls as 1/√n, and a tile mean is still a
// linear mixture of the species in it), and the references are chosen by stepwise selection
// on the pooled misfit of all tile means, Z(S) = Σ_t χ²_t(S) / v_t, each tile fitted by NNLS
// (background free) on the candidate set S, v_t the noise variance of tile t's mean measured
// as what the whole library cannot fit in its pixels. A reference stays when removing it costs
// more than a BIC penalty (log n per tile that uses it) and more than a share of the misfit
// (which keeps model mismatch on real data from recruiting references that only patch it).
// Pure arrays in, a report out: no sockets, no threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "science/image_part.hpp"
#include "science/lcf.hpp"

namespace xanesd::science {

struct ReferenceSelectionSettings {
  bool enabled = true;
  int max_tiles = 1024;          // tiles the image is cut into at most (tile size follows)
  double penalty = 1.0;          // × log(energies) per tile where the reference is used (1: BIC)
  double min_share = 0.02;       // a reference must explain at least this share of the misfit without it
  double hysteresis = 2.0;       // live: a selected reference stays down to penalty / h, a new one needs h × penalty
  double collinear_cos = 0.995;  // pairs more alike than this (background removed) are reported indistinguishable
  int stability_samples = 8;     // half-samples of the tiles the selection is repeated on (0: no stability score)
  std::uint64_t seed = 1;
};

// What the selection reads: tile means on a common set of energies and their noise.
struct SelectionEvidence {
  std::vector<int> energies;            // indices into the model's energies (rows of library.X)
  Eigen::MatrixXd tile_means;           // T × energies.size()
  std::vector<double> tile_variance;    // T: noise variance per point of each tile mean
  std::vector<double> tile_pixels;      // T: pixels averaged (reported, and the stability draws' weights)
  double pixel_sigma = 0;               // median per-pixel noise σ (reported)
  std::size_t tiles() const { return tile_variance.size(); }
};

struct ReferenceEvidence {
  std::string name;
  bool selected = false;
  // Selected: the pooled misfit without it minus with it; not selected: the misfit without it
  // minus with it added. In noise units (χ²); compared against `threshold`.
  double delta_chi2 = 0;
  double threshold = 0;     // what delta_chi2 had to exceed (penalty, share and hysteresis applied)
  double share = 0;         // delta_chi2 / the misfit without it
  double stability = -1;    // fraction of half-samples selecting it (−1: not computed)
  double mean_fraction = 0; // mean fraction over the tiles in the final fit (0 when not selected)
  int tiles_used = 0;       // tiles whose fit gives it a nonzero coefficient
};

struct ReferenceSelection {
  std::vector<ReferenceEvidence> references;   // one per library reference, library order
  std::vector<std::pair<int, int>> collinear;  // indistinguishable pairs on these energies (indices)
  std::vector<double> collinear_cos;           // their cosine (background removed)
  int tiles = 0, energies = 0;
  double pixel_sigma = 0;
  double misfit = 0;                           // Z of the selected set, and per tile and point:
  double misfit_per_point = 0;                 // Z / (T·n): ≈ 1 when the selection explains the data
  std::string waiting;                         // why nothing was selected ("" once selected)
  bool done() const { return waiting.empty(); }
  std::vector<std::uint8_t> selected() const;
  std::vector<std::string> selected_names() const;
};

// Stepwise selection (forward additions, then backward removals, until neither changes the
// set). `previous` (library order, empty: none) applies the hysteresis. Throws
// std::invalid_argument on inconsistent shapes.
ReferenceSelection select_references(const LcfModel& library, const SelectionEvidence& evidence,
                                     const ReferenceSelectionSettings& settings,
                                     const std::vector<std::uint8_t>& previous = {});

// Builds the evidence from an energy-major store (E × P, NaN = not measured): the energies
// measured by at least 90 % of the material pixels, tiles of material pixels measured at all of
// them, and each tile's noise from the residual of an unconstrained fit of its pixels against
// the whole library (at most `noise_pixels` per tile). Fewer energies than parameters + 3 or no
// material: empty evidence.
// `part`: the planes are one part of the image (npix pixels, `rows` rows with its halo); only its
// own pixels are read, and the tile statistics of every part are summed (`part.sum`). Each tile
// lies in one part when parts start at multiples of selection_tile_side, so the sums add zeros
// and the evidence is the whole image's bit for bit. Throws std::invalid_argument otherwise.
// `ready` (E, or null: all): the planes that may be read; the others count as not measured (a
// scan's analysis running beside ingest: Scan::begin_analysis).
SelectionEvidence selection_evidence(const LcfModel& library, const float* planes, std::size_t npix, int rows,
                                     int cols, const std::uint8_t* material, int max_tiles, int noise_pixels = 64,
                                     const ImagePart& part = {}, const std::uint8_t* ready = nullptr);
// The side of the evidence's square tiles for an image of rows × cols (at least 6 pixels, at
// most max_tiles tiles).
int selection_tile_side(int rows, int cols, int max_tiles);

}  // namespace xanesd::science
