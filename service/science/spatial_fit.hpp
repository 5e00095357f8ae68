// Edge-preserving spatial estimation of the fraction maps (science.md §7, "Neighbours share
// chemistry"): each pixel's sufficient statistics are replaced by a weighted mean of its
// neighbours' statistics, brought to the pixel's own thickness, with weights that vanish for
// neighbours whose normalized spectra differ from the pixel's by more than the measured noise
// explains (a bilateral / non-local-means weight on a χ² distance). The averaged statistics are
// then solved with the pixel's own solver (NNLS, the selected references), so a one-pixel stripe
// of another species keeps its own chemistry while a uniform domain averages its noise away.
// Pure arrays in, arrays out; no state. It runs in every live cycle, so it streams: the passes
// run row by row over a ring of per-pixel features that stays in cache, and every pass is
// written to vectorize over planar float rows (the window sums keep 8 centres' sums in registers
// over all window offsets, the per-pixel passes loop over pixels a parameter at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "science/image_part.hpp"

namespace xanesd::science {

struct SpatialSettings {
  bool enabled = true;
  int radius = 2;          // window (2·radius + 1)² pixels
  // Kernel width: a neighbour's weight falls from 1 to 0 as the excess of its χ² distance over
  // the distance expected of pure noise (its degrees of freedom) grows to strength² × that
  // expectation. Larger: more smoothing, softer edges.
  double strength = 3.0;
  // A pixel whose thickness is below min_snr standard errors (empty background, no material)
  // is neither smoothed nor lent to its neighbours.
  double min_snr = 3.0;
  // Neighbours are judged against a pilot estimate of the pixel's chemistry (the same weights
  // over this smaller window) rather than its own noisy fit; 0: against the pixel itself.
  int pilot_radius = 1;
  // Centres per vector chunk of the window sums: 0, the widest this CPU runs (16 with AVX-512,
  // else 8); 8 to force the narrower chunks (tests compare the two: equal bit for bit).
  int vector_lanes = 0;
};

// One set of measured energies (the pixels that share one Gram matrix G).
struct SpatialSet {
  bool usable = false;           // invertible G and at least M + 2 energies
  int n = 0;                     // energies measured
  const double* G_inv = nullptr;  // M×M, column-major (symmetric)
};

struct SpatialInput {
  int rows = 0, cols = 0;
  SliceLayout slices;
  int M = 0, F = 0;                      // parameters per pixel; leading free (background) ones
  const double* stats = nullptr;         // P × (M+1): s = Xᵀy (M), q = yᵀy
  const std::uint32_t* set_of = nullptr;  // P: energy set of each pixel (index into sets)
  std::vector<SpatialSet> sets;
  int threads = 1;
};

// One row of the step's result, handed to the caller as soon as it is done (the caller solves
// it while its values are in cache: nothing image-sized is written). Only meaningful where
// sigma2 ≥ 0:
// - theta (M planes of C floats): the least-squares coefficients θ̄ = G⁻¹ s̄ of each pixel's
//   averaged statistics s̄, scaled to its own thickness; s̄ = G θ̄ (the neighbours share the
//   pixel's G), so a constrained solver can start from them. No averaged yᵀy: the solvers'
//   tolerances scale with the pixel's own (the same size: the neighbours are brought to its
//   thickness), and its χ² is its own data's.
// - sigma2 (C): variance per unit G⁻¹ of the averaged statistics (cov θ = sigma2 · G⁻¹ for
//   least squares): the weights propagated, Σ ω_j² σ_j² (T_i/T_j)², plus the smoothing bias
//   seen against the pilot; −1 where the pixel is not smoothed (keep its own fit).
// - neighbours (C): effective number of independent pixels averaged, σ²(own) / σ²(averaged);
//   1 where not smoothed, 0 where the pixel has no fit.
struct SpatialRow {
  int r = 0;
  const float* theta = nullptr;  // M planes, theta_stride apart
  std::size_t theta_stride = 0;
  const double* sigma2 = nullptr;
  const float* neighbours = nullptr;
};
using SpatialRowSink = std::function<void(const SpatialRow&)>;

// Runs the step on in.threads threads; each calls make_sink() once and hands its rows, in
// order, to the sink it got. With the step off (or a model it cannot take) every row comes
// with sigma2 = −1 (nothing smoothed).
void spatial_average(const SpatialInput& in, const SpatialSettings& settings,
                     const std::function<SpatialRowSink()>& make_sink);

}  // namespace xanesd::science
