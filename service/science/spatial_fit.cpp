#include "science/spatial_fit.hpp"

#include <algorithm>
#include <cmath>
#include <thread>

#include <Eigen/Dense>

namespace xanesd::science {

namespace {

template <class F>
void parallel_rows(int rows, int threads, const F& f) {
  const int n = std::max(1, std::min(threads, rows / 8 + 1));
  if (n == 1) return f(0, rows);
  std::vector<std::jthread> pool;
  for (int t = 0; t < n; ++t) pool.emplace_back(f, rows * t / n, rows * (t + 1) / n);
}

struct SetConsts {
  bool usable = false;
  int n = 0;
  Eigen::MatrixXd W;    // K×K: ‖W c‖² = cᵀ (C_cc)⁻¹ c, C = G⁻¹ (the metric of the coefficients' noise)
  double total_var = 0;  // 1ᵀ C_cc 1: variance of the thickness per unit σ²
};

}  // namespace

SpatialResult spatial_average(const SpatialInput& in, const SpatialSettings& settings) {
  const int M = in.M, F = in.F, K = M - F, R = in.rows, C = in.cols;
  const std::size_t P = static_cast<std::size_t>(R) * static_cast<std::size_t>(C), S = static_cast<std::size_t>(M + 1);
  SpatialResult out;
  out.stats.assign(P * S, 0.0);
  out.sigma2.assign(P, -1.0);
  out.neighbours.assign(P, 0.f);
  if (P == 0 || K < 1 || !settings.enabled) return out;

  std::vector<SetConsts> sets(in.sets.size());
  for (std::size_t i = 0; i < in.sets.size(); ++i) {
    const auto& s = in.sets[i];
    if (!s.usable || s.n < M + 2 || !s.G_inv) continue;
    const Eigen::Map<const Eigen::MatrixXd> Gi(s.G_inv, M, M);
    const Eigen::MatrixXd Ccc = Gi.bottomRightCorner(K, K);
    Eigen::LLT<Eigen::MatrixXd> llt(Ccc.inverse());
    if (llt.info() != Eigen::Success) continue;
    sets[i].W = llt.matrixL().transpose();
    sets[i].total_var = Ccc.sum();
    sets[i].n = s.n;
    sets[i].usable = sets[i].total_var > 0;
  }

  // Pass 1, per pixel: the least-squares fit (linear, unbiased: the right thing to compare),
  // its noise σ² = χ²/(n − M), thickness T = Σc, the whitened normalized coefficients z = W c/T
  // (‖z_i − z_j‖² ~ (v_i + v_j)·χ² for equal chemistry, v = σ²/T²), and the statistics divided
  // by T (s/T, q/T²): a neighbour's spectrum brought to unit thickness.
  const int KF = K + 1;  // z (K) and v
  std::vector<float> feat(P * static_cast<std::size_t>(KF), 0.f);
  std::vector<std::uint8_t> valid(P, 0);
  std::vector<double> scaled(P * S, 0.0);
  std::vector<double> thickness(P, 0.0);
  const double snr2 = settings.min_snr * settings.min_snr;
  parallel_rows(R, in.threads, [&](int r0, int r1) {
    Eigen::VectorXd theta(M), c(K), z(K);
    for (std::size_t p = static_cast<std::size_t>(r0) * C; p < static_cast<std::size_t>(r1) * C; ++p) {
      const auto set = in.set_of[p];
      if (set >= sets.size() || !sets[set].usable) continue;
      const auto& sc = sets[set];
      const double* st = in.stats + p * S;
      const Eigen::Map<const Eigen::VectorXd> s(st, M);
      theta.noalias() = Eigen::Map<const Eigen::MatrixXd>(in.sets[set].G_inv, M, M) * s;
      const double chi2 = st[M] - theta.dot(s);
      const double sigma2 = chi2 / (sc.n - M);
      c = theta.tail(K);
      const double T = c.sum();
      if (!(T > 0) || !(sigma2 > 0) || !std::isfinite(sigma2) || T * T < snr2 * sigma2 * sc.total_var) continue;
      z.noalias() = sc.W * (c / T);
      float* f = &feat[p * static_cast<std::size_t>(KF)];
      for (int k = 0; k < K; ++k) f[k] = static_cast<float>(z(k));
      f[K] = static_cast<float>(sigma2 / (T * T));
      double* o = &scaled[p * S];
      for (int m = 0; m < M; ++m) o[m] = st[m] / T;
      o[M] = st[M] / (T * T);
      thickness[p] = T;
      valid[p] = 1;
    }
  });

  // The weight of neighbour j for a centre with whitened coefficients zc and their noise
  // variance vc: d² = ‖zc − z_j‖²/(vc + v_j) has about K − 1 degrees of freedom for equal
  // chemistry (the normalization takes one); w = (1 − e/(h²·dof))², e the excess of d² over dof,
  // is 1 for what noise explains and 0 beyond (a stripe, a domain edge). Each neighbour then
  // counts by its precision π_j = 1/v_j (thick pixels know their shape better).
  const double dof = std::max(1, K - 1);
  const double inv_width = 1.0 / (std::max(settings.strength, 1e-6) * std::max(settings.strength, 1e-6) * dof);
  const int rad = std::max(0, settings.radius);
  auto window = [&](std::size_t i, int r, int cc, const float* zc, double vc, int radius, auto&& use) {
    const auto set = in.set_of[i];
    for (int dr = -radius; dr <= radius; ++dr) {
      const int rr = r + dr;
      if (rr < 0 || rr >= R) continue;
      for (int dc = -radius; dc <= radius; ++dc) {
        const int c2 = cc + dc;
        if (c2 < 0 || c2 >= C) continue;
        const std::size_t j = static_cast<std::size_t>(rr) * C + c2;
        if (!valid[j] || in.set_of[j] != set) continue;
        const float* fj = &feat[j * static_cast<std::size_t>(KF)];
        double d2 = 0;
        for (int k = 0; k < K; ++k) d2 += (zc[k] - fj[k]) * static_cast<double>(zc[k] - fj[k]);
        const double vj = fj[K];
        d2 /= vc + vj;
        const double x = std::max(0.0, d2 - dof) * inv_width;
        if (x >= 1.0) continue;
        const double w = (1.0 - x) * (1.0 - x);
        use(j, w, 1.0 / vj);
      }
    }
  };

  // Pass 2, the pilot: weights judged against the pixel's own noisy coefficients select
  // neighbours whose noise resembles the centre's (the estimate then stays near the centre's
  // noise and its error exceeds the propagated σ). So first a pilot estimate of each pixel's
  // coefficients, the weighted mean of z over a 3×3 window, with its variance.
  std::vector<float> pilot(P * static_cast<std::size_t>(KF), 0.f);
  parallel_rows(R, in.threads, [&](int r0, int r1) {
    std::vector<double> zacc(static_cast<std::size_t>(K));
    for (int r = r0; r < r1; ++r)
      for (int cc = 0; cc < C; ++cc) {
        const std::size_t i = static_cast<std::size_t>(r) * C + cc;
        if (!valid[i]) continue;
        const float* fi = &feat[i * static_cast<std::size_t>(KF)];
        std::fill(zacc.begin(), zacc.end(), 0.0);
        double A = 0, B = 0;
        window(i, r, cc, fi, fi[K], std::min(rad, settings.pilot_radius), [&](std::size_t j, double w, double pj) {
          const double wp = w * pj;
          A += wp, B += w * wp;
          const float* fj = &feat[j * static_cast<std::size_t>(KF)];
          for (int k = 0; k < K; ++k) zacc[static_cast<std::size_t>(k)] += wp * fj[k];
        });
        float* o = &pilot[i * static_cast<std::size_t>(KF)];
        if (!(A > 0)) {  // no neighbour agrees: the pixel's own coefficients
          std::copy_n(fi, KF, o);
          continue;
        }
        for (int k = 0; k < K; ++k) o[k] = static_cast<float>(zacc[static_cast<std::size_t>(k)] / A);
        o[K] = static_cast<float>(B / (A * A));
      }
  });

  // Pass 3: each valid pixel's weighted mean of the statistics of its window (same energy
  // set), weights judged against the pilot.
  parallel_rows(R, in.threads, [&](int r0, int r1) {
    std::vector<double> acc(S);
    for (int r = r0; r < r1; ++r)
      for (int cc = 0; cc < C; ++cc) {
        const std::size_t i = static_cast<std::size_t>(r) * C + cc;
        if (!valid[i]) {
          if (in.set_of[i] < sets.size() && sets[in.set_of[i]].usable) out.neighbours[i] = 1.f;
          continue;
        }
        const double vi = feat[i * static_cast<std::size_t>(KF) + static_cast<std::size_t>(K)];
        const float* zi = settings.pilot_radius > 0 ? &pilot[i * static_cast<std::size_t>(KF)] : &feat[i * static_cast<std::size_t>(KF)];
        std::fill(acc.begin(), acc.end(), 0.0);
        double A = 0, B = 0;  // Σ w π, Σ w² π
        window(i, r, cc, zi, zi[K], rad, [&](std::size_t j, double w, double pj) {
          const double wp = w * pj;
          A += wp, B += w * wp;
          const double* sj = &scaled[j * S];
          for (std::size_t m = 0; m < S; ++m) acc[m] += wp * sj[m];
        });
        if (!(A > 0)) {  // nothing agrees with the pilot, not even the pixel: keep its own fit
          out.neighbours[i] = 1.f;
          continue;
        }
        const double T = thickness[i];
        double* o = &out.stats[i * S];
        for (int m = 0; m < M; ++m) o[m] = T * acc[static_cast<std::size_t>(m)] / A;
        o[M] = T * T * acc[static_cast<std::size_t>(M)] / A;
        out.sigma2[i] = T * T * B / (A * A);
        out.neighbours[i] = static_cast<float>(vi * A * A / B);
      }
  });
  return out;
}

}  // namespace xanesd::science
