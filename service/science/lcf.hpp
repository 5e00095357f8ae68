// Linear combination fitting on sufficient statistics (science.md §3).
// The model is y(E) = a + b·(E−E0)/scale + Σ c_k r_k(E), θ = [a, b, c_1..c_K]; every solver
// works from G = XᵀX and s = Xᵀy of one pixel, never from its raw spectrum.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <Eigen/Dense>

namespace xanesd::science {

enum class FitMethod { least_squares, nnls, lasso };
FitMethod fit_method_from_string(const std::string& s);  // throws std::invalid_argument
std::string to_string(FitMethod m);

// The design matrix of the joint model on a scan's planned energies.
struct LcfModel {
  std::vector<std::string> reference_names;
  double e0_eV = 0;                 // centre of the background line
  double slope_scale_eV = 100;      // b is per 100 eV: keeps G well conditioned
  bool background = true;           // fit a + b·(E−E0) jointly (science.md §3)
  Eigen::MatrixXd X;                // E × M, M = (background ? 2 : 0) + K

  int n_background() const { return background ? 2 : 0; }
  int n_refs() const { return static_cast<int>(reference_names.size()); }
  int n_params() const { return static_cast<int>(X.cols()); }
};

// refs: E×K references resampled onto `energies_eV`. E0 is the energy of steepest rise of the
// mean reference, where the edge is.
LcfModel make_lcf_model(const std::vector<std::string>& names, const Eigen::MatrixXd& refs,
                        const std::vector<double>& energies_eV, bool background);

// Energy of the maximum derivative of mu over energies (central differences).
double edge_energy(const std::vector<double>& energies_eV, const Eigen::VectorXd& mu);

struct FitResult {
  Eigen::VectorXd theta;
  Eigen::MatrixXd cov;    // covariance of θ, σ²·(G_AA)⁻¹ on the active set A (0 elsewhere), σ² = χ²/(n − |A|)
  double chi2 = 0;        // Σ (y − ŷ)² (weighted if the statistics are)
  int n_active = 0;       // parameters in the final model (free + nonzero references)
  bool ok = false;        // false when the system is singular for the energies measured
};

struct SolveOptions {
  FitMethod method = FitMethod::nnls;
  int n_free = 2;             // leading unconstrained parameters (the background a, b)
  bool sum_to_one = false;    // Σ c_k = 1 (for edge-normalized spectra)
  // Positive LASSO penalty per energy point, in scikit-learn's convention on normalized spectra
  // (½n⁻¹‖y − Xθ‖² + α‖c‖₁); scaled here by n and by the pixel's thickness so one α suits
  // thick and thin pixels alike. The MPIS work used 5·10⁻⁴.
  double lasso_alpha = 5e-4;
  bool lasso_refit = true;    // LASSO selects the references, NNLS on them estimates (no shrinkage bias)
};

// One pixel's fit from its statistics: G = XᵀX, s = Xᵀy, q = yᵀy over n energies.
FitResult solve(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n, const SolveOptions& opt);

// Lawson–Hanson's tolerances, free of units: multiplying the data (the unit of I0, a detector
// gain) or the weights by any constant scales s, q, θ and G so that these scale exactly as the
// quantities they bound, and the active set, hence the fractions, do not move. A gradient
// s_j − (Gθ)_j is compared with √(G_jj·q), a coefficient θ_j with √(q/G_jj) (Cauchy–Schwarz bounds).
struct NnlsTolerance {
  static constexpr double kRelative = 1e-12;
  static double gradient(const Eigen::MatrixXd& G, int j, double q) {
    return kRelative * std::sqrt(std::max(G(j, j), 0.0) * std::max(q, 0.0));
  }
  static double coefficient(const Eigen::MatrixXd& G, int j, double q) {
    return G(j, j) > 0 ? kRelative * std::sqrt(std::max(q, 0.0) / G(j, j)) : 0.0;
  }
};

// Unconstrained least squares θ = G⁻¹s (LDLT; refuses rank-deficient G).
FitResult solve_least_squares(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q);

// Lawson–Hanson active set on (G, s): the first `n_free` parameters (the background) are
// unconstrained, the rest are ≥ 0.
FitResult solve_nnls(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n_free);

// Positive LASSO by coordinate descent on ½θᵀGθ − sᵀθ + α·Σc (c ≥ 0, the first n_free free),
// started from `theta`.
FitResult solve_lasso(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n_free, double alpha,
                      Eigen::VectorXd theta);

// Standard errors of the fractions f_k = c_k/Σc from the covariance of c (first-order propagation).
Eigen::VectorXd fraction_sigma(const FitResult& r, int n_free);

// χ² = q − 2θᵀs + θᵀGθ, clamped at 0 against round-off.
double chi_squared(const Eigen::MatrixXd& G, const Eigen::Ref<const Eigen::VectorXd>& s, double q,
                   const Eigen::Ref<const Eigen::VectorXd>& theta);

}  // namespace xanesd::science
