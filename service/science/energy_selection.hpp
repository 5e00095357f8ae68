// Energy selection (science.md §5): which few energies of a candidate grid to measure so that
// linear combination fitting still recovers the species fractions. Two methods, both validated
// the same way on held-out synthetic mixtures with the daemon's own LCF (science::solve, NNLS,
// background fitted jointly):
//   * RFE, as in the nano-XANES MPIS work: a linear regression from the spectrum at the
//     remaining energies to the fractions, dropping the least important energy each round;
//   * A-optimal backward elimination: drops the energy whose removal least increases the
//     trace of the fraction block of (X_SᵀX_S)⁻¹, X the LCF design (model-based, no mixtures).
// Pure arrays in, results out: no sockets, no threads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "science/lcf.hpp"

namespace xanesd::science {

struct EnergySelectionOptions {
  int n_select = 13;          // energies chosen by the method, in addition to the normalization points
  int n_normalization = 3;    // pre-/post-edge points always included (3 as in the MPIS work); see normalization_points
  int n_train = 2000;         // synthetic mixtures the RFE regression is trained on
  int n_test = 1000;          // held-out mixtures the subsets are validated on
  double noise = 0.01;        // Gaussian σ per point on edge-normalized spectra ("the measured level")
  double sparse_share = 0.5;  // share of mixtures with only 1–3 nonzero references (the rest: all K)
  std::uint64_t seed = 1;
  bool background = true;     // the LCF model fits a + b·(E−E0) jointly, and the mixtures carry one
};

struct EnergySubset {
  std::string method;                      // "rfe" or "a_optimal"
  std::vector<int> indices;                // sorted, into the candidate grid, normalization points included
  std::vector<double> energies_eV;         // grid energies of `indices`
  std::vector<int> normalization_indices;  // sorted, a subset of `indices`
  double fraction_rmse = 0;                // held-out RMSE of c_k/Σc against the true fractions
  double seconds = 0;                      // selection time (not mixture generation or validation)
};

struct EnergySelection {
  EnergySubset rfe, a_optimal;
  double full_grid_fraction_rmse = 0;  // the same held-out mixtures fitted on every candidate energy
  std::string best;                    // method with the lower held-out RMSE ("rfe" on a tie)
};

// Runs both methods and validates them on the same held-out mixtures (training and test
// mixtures come from independent streams derived from opt.seed, so a seed fixes everything). refs: E×K on the candidate grid
// `grid_eV` (strictly increasing), edge-normalized. Throws std::invalid_argument naming the
// problem (empty or non-finite references, names/shape mismatch, grid not increasing,
// n_select + n_normalization more than the grid, too few pre-/post-edge points, …).
EnergySelection select_energies(const std::vector<std::string>& names, const Eigen::MatrixXd& refs,
                                const std::vector<double>& grid_eV, const EnergySelectionOptions& opt);

// ---- the building blocks, public for tests and benchmarks -------------------------------------

// Synthetic mixtures on the candidate grid: row i of `spectra` is
//   T_i·Σ_k f_ik r_k(E) + a_i + b_i·(E−E0)/100 eV + N(0, noise²),
// f_i on the simplex (uniform, i.e. Dirichlet(1); in a `sparse_share` of rows only 1–3 random
// references are nonzero), thickness T ~ U[0.8, 1.2], a, b ~ U[−0.05, 0.05] (0 without
// background), E0 as in make_lcf_model. Deterministic in `seed` across compilers and standard
// libraries: std::mt19937_64 bits with the distributions written out here.
struct Mixtures {
  Eigen::MatrixXd spectra;    // N × E
  Eigen::MatrixXd fractions;  // N × K, rows sum to 1
};
Mixtures make_mixtures(const LcfModel& model, int n, const EnergySelectionOptions& opt, std::uint64_t seed);

// The normalization points, sorted indices into the grid. E0 = edge_energy of the mean
// reference (the steepest rise of the edge). n_post = n/3 (at least 1 when n ≥ 2), n_pre = the
// rest, so 3 → 2 pre-edge + 1 post-edge, 2 → 1 + 1, 1 → the lowest point. Pre-edge points lie
// in the lower half of the span below E0 (E ≤ E0 − (E0 − E_first)/2: clear of the pre-edge peak,
// ~10–15 eV below E0 at a K-edge), evenly spread from the lowest grid point upwards to the top
// of that range; post-edge points lie in the upper half above E0 (E ≥ E0 + (E_last − E0)/2),
// spread from the highest grid point downwards. Each target snaps to the nearest unused grid
// point of its range. Throws std::invalid_argument if a range holds too few grid points.
std::vector<int> normalization_points(const std::vector<double>& grid_eV, const Eigen::MatrixXd& refs, int n);

// RFE: features = the spectra at the candidate energies not in `keep` (standardized on
// `train`), targets = the fractions; least squares with a tiny ridge (1e-8·N on the
// standardized Gram, only against exact collinearity); importance of an energy = Σ_k |coef_k|;
// drops the least important, refits, until n_select remain. Returns them plus `keep`, sorted.
std::vector<int> rfe_select(const Mixtures& train, const std::vector<int>& keep, int n_select);

// A-optimal backward elimination on the LCF design X (model.X, background columns included):
// starting from every candidate energy, repeatedly drops the energy (never one of `keep`) whose
// removal gives the smallest tr[(X_SᵀX_S + λI)⁻¹] over the reference block, by rank-one
// downdates of the inverse. λ = ridge: with ridge = noise² this is the Bayesian A-optimal design
// for a prior σ = 1 (the edge-step scale) on every parameter, negligible while X_S has full
// column rank and what keeps the criterion defined when the subset has fewer energies than
// parameters (e.g. 16 energies, 65 references). Returns n_select energies plus `keep`, sorted.
std::vector<int> a_optimal_select(const LcfModel& model, const std::vector<int>& keep, int n_select, double ridge);

// Held-out error: fits every mixture on the energies `indices` (strictly increasing) with science::solve (NNLS, the
// background free when the model has one, as the daemon's default) and returns the RMSE of
// c_k/Σc against the true fractions over all mixtures and references. A fit that fails or has
// Σc ≤ 0 counts as fractions 1/K (and is counted in *failed if given).
double fraction_rmse(const LcfModel& model, const std::vector<int>& indices, const Mixtures& test,
                     int* failed = nullptr);


// ---- Equal beam time: unequal dwell per energy with Poisson variances (science.md §7) --------
//
// A scan's noise is set by its beam time, not by its point count: measuring fewer energies
// for longer each can beat the full grid at the same total time. Fluorescence counts are
// Poisson, so y at energy e measured for dwell t_e has var ∝ ŷ_e / t_e (ŷ the expected
// spectrum: low before the edge, high after it). The dwell design is the approximate
// A-optimal design (Kiefer–Wolfowitz) for the fraction error: weights w_e ≥ 0, Σ w = 1 (the
// share of the total time spent at e) minimizing Φ(w) = tr(Q M(w)⁻¹), M(w) = Σ_e w_e x_e x_eᵀ / v_e,
// x_e the LCF design row (background included), v_e the variance profile and Q the fraction
// block's weight (fraction_weight_matrix). The multiplicative algorithm w_e ← w_e·d_e/Σ_j w_j d_j,
// d_e = x_eᵀ M⁻¹ Q M⁻¹ x_e / v_e, converges to it (at the optimum max_e d_e = Φ: the
// equivalence theorem, used as the stopping rule). It is then rounded to n energies by backward
// removal (drop the energy with the least time, re-optimize the rest), which gives the whole
// path n = E … M at once: n "auto" is the smallest n whose predicted error is within a
// tolerance of the best.

struct DwellOptions {
  // Floor on the expected spectrum in the variance profile, in edge-step units: fluorescence
  // before the edge is mostly background (scatter, other elements: ~1 % of the edge step), and
  // a variance of 0 would make a pre-edge point free.
  double variance_floor = 0.01;
  bool poisson = true;          // variance ∝ max(ŷ, floor) (fluorescence); false: constant (the old model)
  // Minimum dwell of a kept (normalization) point, relative to the mean dwell of the design's
  // energies: the design alone would give them almost no time (the background is fitted), but
  // edge normalization and the edge maps need them measured.
  double keep_min_weight = 0.5;
  // Minimum dwell of every selected energy, relative to the mean: where n is larger than the
  // optimum's support (~M energies) the extra energies would get no time at all; a little
  // keeps them measured (robustness to a species or a background the model lacks).
  double min_weight = 0.1;
  int max_iterations = 20000;   // multiplicative-algorithm updates per optimization
  double tolerance = 1e-3;      // stop when max_e d_e ≤ (1 + tolerance)·Φ (the equivalence theorem): Φ within 0.1 % of its optimum
  double ridge = 1e-9;          // added to M's diagonal (relative to its mean diagonal): keeps M⁻¹ defined
};

// v_e = max(expected_e, floor) with options.poisson, else 1.
Eigen::VectorXd variance_profile(const Eigen::VectorXd& expected, const DwellOptions& o);

// Q = mean over the rows f of `compositions` (fractions, N×K) of JᵀJ, J = [0 | I − f·1ᵀ] (K × M,
// zero on the n_background background columns): the first-order error of c/Σc at thickness 1
// is J·δθ, so tr(Q·cov θ) is the mean squared fraction error summed over references.
Eigen::MatrixXd fraction_weight_matrix(int n_background, const Eigen::MatrixXd& compositions);

// Default compositions: each reference pure, and the equal mixture ((K+1) × K).
Eigen::MatrixXd default_compositions(int K);

struct DwellDesign {
  std::vector<int> indices;     // sorted, into the grid
  std::vector<double> weights;  // share of the total time per index, Σ = 1
  double criterion = 0;         // Φ(w) = tr(Q M(w)⁻¹)
  std::vector<double> contributions;  // w_e·d_e per index (Σ = Φ without ridge); empty if singular
  int iterations = 0;
};

// Φ(w) for `weights` on `indices` (inf if M is singular).
double dwell_criterion(const LcfModel& model, const Eigen::VectorXd& variance, const Eigen::MatrixXd& Q,
                       const std::vector<int>& indices, const std::vector<double>& weights);

// The approximate optimum on `indices` (start: `start` if given and of matching size, else uniform).
// Every index gets at least o.min_weight / indices.size() of the time, those in `keep` (sorted)
// at least o.keep_min_weight / indices.size().
DwellDesign optimal_dwell(const LcfModel& model, const Eigen::VectorXd& variance, const Eigen::MatrixXd& Q,
                          const std::vector<int>& indices, const std::vector<int>& keep, const DwellOptions& o,
                          const std::vector<double>& start = {});

// Backward removal from every grid energy down to `keep` + min_select (dropping the energy with
// the smallest contribution w_e·d_e, then re-optimizing from the old weights): element i of the result is
// the design with keep.size() + min_select + i energies, the last is the approximate optimum
// on all energies.
std::vector<DwellDesign> dwell_path(const LcfModel& model, const Eigen::VectorXd& variance, const Eigen::MatrixXd& Q,
                                    const std::vector<int>& keep, int min_select, const DwellOptions& o);

// The noise of a measurement at relative dwell t (1 = the full grid's per-point dwell): sample e
// of a spectrum with expected value ȳ_e has σ² = sigma²·p(ȳ_e)/mean_profile/t_e, p(ȳ) = max(ȳ, floor)
// (poisson) or 1: sigma is the RMS noise per point of the expected spectrum on the full grid at
// uniform dwell, as `noise` is measured.
struct NoiseModel {
  double sigma = 0.01;
  bool poisson = true;
  double floor = 0.01;
  double mean_profile = 1;  // mean of the variance profile over the grid
};

// Held-out error of a dwell design: each clean mixture (clean.spectra, noise-free) gets noise
// z·σ_e (z: N × E standard normals, the same for every design compared: common random numbers)
// at the energies `indices` with relative dwell `dwell` (one per index), and is fitted by NNLS
// with the background, weighted as the daemon's fit.weighting=poisson does (1/σ_e² from the
// fit's own prediction, 3 rounds after a first pass weighted by the dwell alone) when
// `weighted`, else unweighted. Returns the RMSE of c/Σc over mixtures and references.
double fraction_rmse_dwell(const LcfModel& model, const std::vector<int>& indices, const std::vector<double>& dwell,
                           const Mixtures& clean, const Eigen::MatrixXd& z, const NoiseModel& noise, bool weighted = true);

struct DwellSelection {
  std::vector<int> indices;                // sorted, normalization points included
  std::vector<double> energies_eV;
  std::vector<int> normalization_indices;
  std::vector<double> dwell_weights;       // per index, mean 1 (Σ = indices.size())
  int n_select = 0;                        // energies besides the normalization points
  bool n_auto = false;
  double n_tolerance = 0;
  // n → the linear (Cramér–Rao) fraction RMSE at equal total time, for the whole removal path
  std::vector<std::pair<int, double>> curve;
  // Held-out mixtures (fraction_rmse_dwell, weighted):
  double rmse_equal_time = 0;        // the design, total time = the full grid's (dwell t = E·w)
  double rmse_equal_dwell = 0;       // the design, mean dwell = the full grid's per point (t = n·w)
  double rmse_even_equal_time = 0;   // the same energies at even dwell, total = the full grid's
  double full_grid_rmse = 0;         // every energy at uniform dwell (equal time and equal dwell)
  double optimum_rmse_equal_time = 0;  // the approximate optimum on every energy (the bound)
  double linear_rmse_equal_time = 0;   // Cramér–Rao prediction for the design, and for the full grid
  double linear_full_grid_rmse = 0;
  double seconds = 0;                // design time (not validation)
};

// The equal-time selection: the dwell path on the references `refs` (E×K on `grid_eV`) with
// the expected spectrum `expected` (E, per unit edge step, background included; empty: the
// references' equal mixture), the normalization points of opt.n_normalization kept, n =
// opt.n_select or, when n_tolerance > 0, the smallest n whose linear RMSE at equal time is
// ≤ (1 + n_tolerance)× the best on the path; validated on opt.n_test held-out mixtures at
// noise opt.noise (NoiseModel.sigma).
DwellSelection select_dwell(const std::vector<std::string>& names, const Eigen::MatrixXd& refs,
                            const std::vector<double>& grid_eV, const Eigen::VectorXd& expected,
                            const EnergySelectionOptions& opt, const DwellOptions& dopt, double n_tolerance = 0);

}  // namespace xanesd::science
