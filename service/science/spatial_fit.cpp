#include "science/spatial_fit.hpp"
#include "science/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <thread>

#include <Eigen/Dense>

namespace xanesd::science {

namespace {

// f(r0, r1) on ranges of image rows, at least 8 rows per thread.
template <class F>
void parallel_rows(int rows, int threads, const F& f) {
  parallel_ranges(static_cast<std::size_t>(rows), threads, 8,
                  [&](int, std::size_t r0, std::size_t r1) { f(static_cast<int>(r0), static_cast<int>(r1)); });
}

struct SetConsts {
  bool usable = false;
  int n = 0;
  Eigen::MatrixXd W;    // K×K: ‖W c‖² = cᵀ (C_cc)⁻¹ c, C = G⁻¹ (the metric of the coefficients' noise)
  double total_var = 0;  // 1ᵀ C_cc 1: variance of the thickness per unit σ²
};

// The per-pixel features, planar (plane k at [k·P + p]) so the window sums vectorize along rows.
struct Features {
  const float* z;     // K planes: whitened normalized coefficients W c/T
  const float* v;     // σ²/T², the noise variance of z per component (1 where not valid)
  const float* prec;  // 1/v: how much the pixel counts when lent; 0 where not valid
};

// The kernel of the weights: for equal chemistry d² = ‖z_c − z_j‖²/(v_c + v_j) has about `dof`
// degrees of freedom; w = (1 − e/(h²·dof))², e the excess of d² over dof, is 1 for what noise
// explains and 0 beyond (a stripe, a domain edge).
struct Kernel {
  float dof, inv_width;
};

// One window offset (dr, dc) for the centres of one row: with j = i + offset,
//   A_i += w π_j,  B_i += w² π_j,  acc_m,i += w π_j x_m,j   (m < nx)
// over centres c ∈ [c0, c1). `zc`, `vc`: the centres' features (planar, stride P); `z`, `v`,
// `prec`, `x`: the neighbours'; `set`: energy set per pixel (null: all pixels share one set).
// Branch-free so the loops vectorize; compiled for wider vectors too.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void window_offset(const Kernel kern, int K, std::size_t P, std::ptrdiff_t i0, std::ptrdiff_t j0, int c0, int c1,
                   const float* __restrict zc, const float* __restrict vc, const float* __restrict z,
                   const float* __restrict v, const float* __restrict prec, const std::uint32_t* __restrict set,
                   int nx, const float* __restrict x, float* __restrict d2, float* __restrict wp,
                   float* __restrict A, float* __restrict B, float* __restrict acc, std::size_t acc_stride) {
  for (int c = c0; c < c1; ++c) d2[c] = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* __restrict a = zc + static_cast<std::size_t>(k) * P;
    const float* __restrict b = z + static_cast<std::size_t>(k) * P;
    for (int c = c0; c < c1; ++c) {
      const float t = a[i0 + c] - b[j0 + c];
      d2[c] += t * t;
    }
  }
  for (int c = c0; c < c1; ++c) {
    const float e = std::max(0.f, d2[c] / (vc[i0 + c] + v[j0 + c]) - kern.dof) * kern.inv_width;
    const float t = std::max(0.f, 1.f - e);
    float w = t * t;
    if (set) w = set[i0 + c] == set[j0 + c] ? w : 0.f;
    const float p = w * prec[j0 + c];
    A[c] += p;
    B[c] += w * p;
    wp[c] = p;
  }
  for (int m = 0; m < nx; ++m) {
    const float* __restrict xm = x + static_cast<std::size_t>(m) * P;
    float* __restrict am = acc + static_cast<std::size_t>(m) * acc_stride;
    for (int c = c0; c < c1; ++c) am[c] += wp[c] * xm[j0 + c];
  }
}

// The weighted window sums of `nx` planes x for every centre of rows [r0, r1), handed row by
// row to `done(r, A, B, acc)` (acc: nx rows of C).
template <class Done>
void window_sums(const Kernel kern, int K, int R, int C, int radius, const float* zc, const float* vc,
                 const Features& f, const std::uint32_t* set, int nx, const float* x, int r0, int r1,
                 const Done& done) {
  const std::size_t P = static_cast<std::size_t>(R) * static_cast<std::size_t>(C);
  const std::size_t Cs = static_cast<std::size_t>(C);
  std::vector<float> d2(Cs), wp(Cs), A(Cs), B(Cs), acc(static_cast<std::size_t>(nx) * Cs);
  for (int r = r0; r < r1; ++r) {
    std::fill(A.begin(), A.end(), 0.f);
    std::fill(B.begin(), B.end(), 0.f);
    std::fill(acc.begin(), acc.end(), 0.f);
    const auto i0 = static_cast<std::ptrdiff_t>(r) * C;
    for (int dr = -radius; dr <= radius; ++dr) {
      const int rr = r + dr;
      if (rr < 0 || rr >= R) continue;
      for (int dc = -radius; dc <= radius; ++dc) {
        // j = i + (dr, dc) for centre column c: index rr·C + c + dc, written as j0 + c (j0 may be
        // negative; j0 + c is not, for c in the range given).
        const auto j0 = static_cast<std::ptrdiff_t>(rr) * C + dc;
        window_offset(kern, K, P, i0, j0, std::max(0, -dc), std::min(C, C - dc), zc, vc, f.z, f.v, f.prec, set, nx, x, d2.data(), wp.data(), A.data(), B.data(), acc.data(), Cs);
      }
    }
    done(r, A.data(), B.data(), acc.data());
  }
}

// Pass 1 for one pixel with M parameters (a compile-time constant for the common sizes, so the
// small products unroll): θ = G⁻¹ s, χ² = q − θᵀs.
template <int Mc>
void pixel_fit(int M_rt, const double* gi, const double* st, double* theta, double& chi2) {
  const int M = Mc > 0 ? Mc : M_rt;
  chi2 = st[M];
  for (int r = 0; r < M; ++r) {
    double t = 0;
    for (int k = 0; k < M; ++k) t += gi[k * M + r] * st[k];
    theta[r] = t;
    chi2 -= t * st[r];
  }
}

using PixelFit = void (*)(int, const double*, const double*, double*, double&);

PixelFit pixel_fit_for(int M) {
  switch (M) {
    case 3: return pixel_fit<3>;
    case 4: return pixel_fit<4>;
    case 5: return pixel_fit<5>;
    case 6: return pixel_fit<6>;
    case 7: return pixel_fit<7>;
    case 8: return pixel_fit<8>;
    default: return pixel_fit<0>;
  }
}

template <class T>
void resize_to(std::vector<T>& v, std::size_t n, T value) {  // reuses the pages already there
  if (v.size() != n) v.assign(n, value);
}

}  // namespace

void spatial_average(const SpatialInput& in, const SpatialSettings& settings, SpatialResult& out) {
  const int M = in.M, F = in.F, K = M - F, R = in.rows, C = in.cols;
  const std::size_t P = static_cast<std::size_t>(R) * static_cast<std::size_t>(C), S = static_cast<std::size_t>(M + 1);
  resize_to(out.sigma2, P, -1.0);
  resize_to(out.neighbours, P, 0.f);
  std::fill(out.sigma2.begin(), out.sigma2.end(), -1.0);
  std::fill(out.neighbours.begin(), out.neighbours.end(), 0.f);
  if (P == 0 || K < 1 || M > 64 || !settings.enabled) return;
  resize_to(out.theta, static_cast<std::size_t>(M) * P, 0.f);
  resize_to(out.q, P, 0.f);
  auto& sc = out.scratch;
  resize_to(sc.z, static_cast<std::size_t>(K) * P, 0.f);
  resize_to(sc.v, P, 1.f);
  resize_to(sc.prec, P, 0.f);
  resize_to(sc.scaled, S * P, 0.f);
  resize_to(sc.thickness, P, 0.0);

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
  // Pixel-major scans mid-way have several energy sets, and only pixels of one set share G.
  bool one_set = true;
  for (std::size_t p = 1; p < P && one_set; ++p) one_set = in.set_of[p] == in.set_of[0];
  const std::uint32_t* set_check = one_set ? nullptr : in.set_of;

  // Pass 1, per pixel: the least-squares fit (linear, unbiased: the right thing to compare),
  // its noise σ² = χ²/(n − M), thickness T = Σc, the whitened normalized coefficients z = W c/T
  // (‖z_i − z_j‖² ~ (v_i + v_j)·χ² for equal chemistry, v = σ²/T²), and what is averaged:
  // θ/T and q/T², a neighbour's fit brought to unit thickness (θ is linear in the statistics, so
  // averaging θ/T is averaging s/T and solving once). Every pixel's entries are written.
  const double snr2 = settings.min_snr * settings.min_snr;
  const PixelFit fit = pixel_fit_for(M);
  parallel_rows(R, in.threads, [&](int r0, int r1) {
    double theta[64];
    for (std::size_t p = static_cast<std::size_t>(r0) * C; p < static_cast<std::size_t>(r1) * C; ++p) {
      const auto set = in.set_of[p];
      double chi2 = 0, T = 0, sigma2 = 0;
      bool valid = set < sets.size() && sets[set].usable;
      if (valid) {
        fit(M, in.sets[set].G_inv, in.stats + p * S, theta, chi2);
        sigma2 = chi2 / (sets[set].n - M);
        for (int k = F; k < M; ++k) T += theta[k];
        valid = T > 0 && sigma2 > 0 && std::isfinite(sigma2) && T * T >= snr2 * sigma2 * sets[set].total_var;
      }
      if (!valid) {
        for (int k = 0; k < K; ++k) sc.z[static_cast<std::size_t>(k) * P + p] = 0.f;
        for (std::size_t m = 0; m < S; ++m) sc.scaled[m * P + p] = 0.f;
        sc.v[p] = 1.f, sc.prec[p] = 0.f, sc.thickness[p] = 0.0;
        continue;
      }
      const auto& W = sets[set].W;
      for (int a = 0; a < K; ++a) {  // W is upper triangular
        double za = 0;
        for (int b = a; b < K; ++b) za += W(a, b) * theta[F + b];
        sc.z[static_cast<std::size_t>(a) * P + p] = static_cast<float>(za / T);
      }
      const double v = sigma2 / (T * T);
      sc.v[p] = static_cast<float>(v);
      sc.prec[p] = static_cast<float>(1.0 / v);
      for (int m = 0; m < M; ++m) sc.scaled[static_cast<std::size_t>(m) * P + p] = static_cast<float>(theta[m] / T);
      sc.scaled[static_cast<std::size_t>(M) * P + p] = static_cast<float>(in.stats[p * S + static_cast<std::size_t>(M)] / (T * T));
      sc.thickness[p] = T;
    }
  });
  const Features feat{sc.z.data(), sc.v.data(), sc.prec.data()};
  const Kernel kern{static_cast<float>(std::max(1, K - 1)),
                    static_cast<float>(1.0 / (std::max(settings.strength, 1e-3) * std::max(settings.strength, 1e-3) *
                                              std::max(1, K - 1)))};
  const int rad = std::max(0, settings.radius), pilot_rad = std::min(rad, std::max(0, settings.pilot_radius));

  // Pass 2, the pilot: weights judged against the pixel's own noisy coefficients select
  // neighbours whose noise resembles the centre's (the estimate then stays near the centre's
  // noise and its error exceeds the propagated σ). So first a pilot estimate of each pixel's
  // coefficients, the weighted mean of z over a small window, with its variance.
  if (pilot_rad > 0) {
    resize_to(sc.pilot_z, static_cast<std::size_t>(K) * P, 0.f);
    resize_to(sc.pilot_v, P, 1.f);
    parallel_rows(R, in.threads, [&](int r0, int r1) {
      window_sums(kern, K, R, C, pilot_rad, feat.z, feat.v, feat, set_check, K, feat.z, r0, r1,
                  [&](int r, const float* A, const float* B, const float* acc) {
                    for (int cc = 0; cc < C; ++cc) {
                      const std::size_t i = static_cast<std::size_t>(r) * C + cc;
                      if (!(A[cc] > 0)) {  // not valid, or no neighbour agrees: its own coefficients
                        for (int k = 0; k < K; ++k) sc.pilot_z[static_cast<std::size_t>(k) * P + i] = feat.z[static_cast<std::size_t>(k) * P + i];
                        sc.pilot_v[i] = feat.v[i];
                        continue;
                      }
                      for (int k = 0; k < K; ++k)
                        sc.pilot_z[static_cast<std::size_t>(k) * P + i] = acc[static_cast<std::size_t>(k) * C + cc] / A[cc];
                      sc.pilot_v[i] = B[cc] / (A[cc] * A[cc]);
                    }
                  });
    });
  }
  const float* centre_z = pilot_rad > 0 ? sc.pilot_z.data() : feat.z;
  const float* centre_v = pilot_rad > 0 ? sc.pilot_v.data() : feat.v;

  // Pass 3: each valid pixel's weighted mean of its window's scaled fits (same energy set),
  // weights judged against the pilot, brought back to the pixel's thickness.
  parallel_rows(R, in.threads, [&](int r0, int r1) {
    window_sums(kern, K, R, C, rad, centre_z, centre_v, feat, set_check, M + 1, sc.scaled.data(), r0, r1,
                [&](int r, const float* A, const float* B, const float* acc) {
                  for (int cc = 0; cc < C; ++cc) {
                    const std::size_t i = static_cast<std::size_t>(r) * C + cc;
                    const auto set = in.set_of[i];
                    if (!(feat.prec[i] > 0)) {
                      if (set < sets.size() && sets[set].usable) out.neighbours[i] = 1.f;
                      continue;
                    }
                    const double a = A[cc], b = B[cc];
                    if (!(a > 0) || !(b > 0)) {  // nothing agrees with the pilot: keep the pixel's own fit
                      out.neighbours[i] = 1.f;
                      continue;
                    }
                    const double T = sc.thickness[i];
                    for (int m = 0; m < M; ++m)
                      out.theta[static_cast<std::size_t>(m) * P + i] =
                          static_cast<float>(T * acc[static_cast<std::size_t>(m) * C + cc] / a);
                    out.q[i] = static_cast<float>(T * T * acc[static_cast<std::size_t>(M) * C + cc] / a);
                    double var = b / (a * a);
                    if (pilot_rad > 0) {
                      // The smoothing bias (a neighbour across an edge or up a gradient admitted
                      // by the kernel) is not in the propagated variance. It shows as the move of
                      // the estimate away from the narrower pilot beyond what the noise of that
                      // difference explains (nested windows: v_pilot − v); added per component.
                      // Without it z-scores spread 1.2–1.3 near domain edges at high counts.
                      const auto& W = sets[set].W;
                      double d2 = 0;
                      for (int ka = 0; ka < K; ++ka) {
                        double za = 0;
                        for (int kb = ka; kb < K; ++kb) za += W(ka, kb) * acc[static_cast<std::size_t>(F + kb) * C + cc] / a;
                        const double t = za - sc.pilot_z[static_cast<std::size_t>(ka) * P + i];
                        d2 += t * t;
                      }
                      const double noise = std::max(0.0, static_cast<double>(sc.pilot_v[i]) - var);
                      var += std::max(0.0, d2 / std::max(1, K - 1) - noise);
                    }
                    out.sigma2[i] = T * T * var;
                    out.neighbours[i] = static_cast<float>(feat.v[i] * a * a / b);
                  }
                });
  });
}

}  // namespace xanesd::science
