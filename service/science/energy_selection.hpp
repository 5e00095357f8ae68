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

}  // namespace xanesd::science
