#include "science/spatial_fit.hpp"
#include "science/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
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
  std::vector<double> W_upper;  // W, row-major (upper triangular)
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

// The same sums for 8 centres at once with every accumulator in registers, all window offsets
// in turn: a neighbour's values are read once per offset and nothing else touches memory (the
// row-at-a-time form above streams its accumulator rows through the cache at every offset,
// which made the window sums half of the spatial step). The arithmetic per centre, and its
// order over the offsets, is window_offset's. K and NX known at compile time keep the sums in
// registers; only interior centres (the whole window inside the row).
using Vf8 = float __attribute__((vector_size(32)));
using Vi8 = std::int32_t __attribute__((vector_size(32)));

// The helpers are always inlined, so the vectors never cross a call (GCC warns about the ABI
// of such calls for targets without AVX, at the end of the file: the warning stays off).
#pragma GCC diagnostic ignored "-Wpsabi"
__attribute__((always_inline)) inline Vf8 load8(const float* p) {
  Vf8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline void store8(float* p, Vf8 v) { std::memcpy(p, &v, sizeof v); }
__attribute__((always_inline)) inline Vf8 max0(Vf8 a) {  // std::max(0.f, a): 0 for NaN too
  return reinterpret_cast<Vf8>(reinterpret_cast<Vi8>(a) & (a > 0.f));
}

template <int K, int NX, bool Sets>
__attribute__((always_inline)) inline void window_chunk8(const Kernel kern, std::size_t P, int R, int C, int radius,
                                                         int r, int c, const float* zc, const float* vc,
                                                         const float* z, const float* v, const float* prec,
                                                         const std::uint32_t* set, const float* x, float* A, float* B,
                                                         float* acc, std::size_t acc_stride) {
  const std::ptrdiff_t i = static_cast<std::ptrdiff_t>(r) * C + c;
  bool any_valid = false;  // centres without a valid fit (no material) are never smoothed: skip them
  for (int l = 0; l < 8; ++l) any_valid |= prec[i + l] > 0;
  if (!any_valid) {
    const Vf8 zero = {};
    store8(A + c, zero);
    store8(B + c, zero);
    for (int m = 0; m < NX; ++m) store8(acc + static_cast<std::size_t>(m) * acc_stride + c, zero);
    return;
  }
  Vf8 centre[K];
  for (int k = 0; k < K; ++k) centre[k] = load8(zc + static_cast<std::size_t>(k) * P + i);
  const Vf8 centre_v = load8(vc + i);
  Vi8 centre_set = {};
  if constexpr (Sets) std::memcpy(&centre_set, set + i, sizeof centre_set);
  Vf8 a = {}, b = {}, sums[NX] = {};
  for (int rr = std::max(0, r - radius); rr <= std::min(R - 1, r + radius); ++rr) {
    for (int dc = -radius; dc <= radius; ++dc) {
      const std::ptrdiff_t j = static_cast<std::ptrdiff_t>(rr) * C + c + dc;
      Vf8 d2 = {};
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        const Vf8 t = centre[k] - load8(z + static_cast<std::size_t>(k) * P + j);
        d2 += t * t;
      }
      const Vf8 e = max0(d2 / (centre_v + load8(v + j)) - kern.dof) * kern.inv_width;
      const Vf8 t = max0(1.f - e);
      Vf8 w = t * t;
      if constexpr (Sets) {
        Vi8 s;
        std::memcpy(&s, set + j, sizeof s);
        w = reinterpret_cast<Vf8>(reinterpret_cast<Vi8>(w) & (centre_set == s));
      }
      const Vf8 p = w * load8(prec + j);
      a += p;
      b += w * p;
#pragma GCC unroll 8
      for (int m = 0; m < NX; ++m) sums[m] += p * load8(x + static_cast<std::size_t>(m) * P + j);
    }
  }
  store8(A + c, a);
  store8(B + c, b);
  for (int m = 0; m < NX; ++m) store8(acc + static_cast<std::size_t>(m) * acc_stride + c, sums[m]);
}

// Centres [c0, c1) of row r (c1 − c0 a multiple of 8, whole windows inside the row) for
// K ≤ 6 features and NX ∈ [K, K + 2] planes (the pilot, and M with up to 2 background
// parameters); false (nothing done) otherwise.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
bool window_row_fused(const Kernel kern, int K, int nx, std::size_t P, int R, int C, int radius, int r, int c0, int c1,
                      const float* zc, const float* vc, const float* z, const float* v, const float* prec,
                      const std::uint32_t* set, const float* x, float* A, float* B, float* acc,
                      std::size_t acc_stride) {
#define XANESD_WINDOW_CASE(KC, XC)                                                                               \
  case KC * 16 + XC:                                                                                             \
    for (int c = c0; c < c1; c += 8) {                                                                           \
      if (set) window_chunk8<KC, XC, true>(kern, P, R, C, radius, r, c, zc, vc, z, v, prec, set, x, A, B, acc, acc_stride); \
      else window_chunk8<KC, XC, false>(kern, P, R, C, radius, r, c, zc, vc, z, v, prec, set, x, A, B, acc, acc_stride); \
    }                                                                                                            \
    return true;
#define XANESD_WINDOW_CASES(KC) \
  XANESD_WINDOW_CASE(KC, KC) XANESD_WINDOW_CASE(KC, KC + 1) XANESD_WINDOW_CASE(KC, KC + 2)
  switch (K * 16 + nx) {
    XANESD_WINDOW_CASES(1)
    XANESD_WINDOW_CASES(2)
    XANESD_WINDOW_CASES(3)
    XANESD_WINDOW_CASES(4)
    XANESD_WINDOW_CASES(5)
    XANESD_WINDOW_CASES(6)
    default: return false;
  }
#undef XANESD_WINDOW_CASES
#undef XANESD_WINDOW_CASE
}

// The weighted window sums of `nx` planes x for every centre of rows [r0, r1), handed row by
// row to `done(r, A, B, acc)` (acc: nx rows of C). Interior centres in registers
// (window_row_fused) where K and nx allow; the columns within `radius` of the image's sides,
// and other sizes, an offset at a time.
template <class Done>
void window_sums(const Kernel kern, int K, int R, int C, int radius, const float* zc, const float* vc,
                 const Features& f, const std::uint32_t* set, int nx, const float* x, int r0, int r1,
                 const Done& done) {
  const std::size_t P = static_cast<std::size_t>(R) * static_cast<std::size_t>(C);
  const std::size_t Cs = static_cast<std::size_t>(C);
  std::vector<float> d2(Cs), wp(Cs), A(Cs), B(Cs), acc(static_cast<std::size_t>(nx) * Cs);
  const int inner0 = radius, inner1 = radius + std::max(0, C - 2 * radius) / 8 * 8;
  for (int r = r0; r < r1; ++r) {
    const bool fused = inner1 > inner0 && window_row_fused(kern, K, nx, P, R, C, radius, r, inner0, inner1, zc, vc, f.z, f.v,
                                                           f.prec, set, x, A.data(), B.data(), acc.data(), Cs);
    // The rest: every column when not fused, else the sides [0, inner0) and [inner1, C).
    const int spans[2][2] = {{0, fused ? inner0 : C}, {fused ? inner1 : C, C}};
    for (const auto& span : spans) {
      if (span[0] >= span[1]) continue;
      std::fill(A.begin() + span[0], A.begin() + span[1], 0.f);
      std::fill(B.begin() + span[0], B.begin() + span[1], 0.f);
      for (int m = 0; m < nx; ++m)
        std::fill_n(acc.begin() + static_cast<std::ptrdiff_t>(m * Cs) + span[0], span[1] - span[0], 0.f);
    }
    const auto i0 = static_cast<std::ptrdiff_t>(r) * C;
    for (int dr = -radius; dr <= radius; ++dr) {
      const int rr = r + dr;
      if (rr < 0 || rr >= R) continue;
      for (int dc = -radius; dc <= radius; ++dc) {
        // j = i + (dr, dc) for centre column c: index rr·C + c + dc, written as j0 + c (j0 may be
        // negative; j0 + c is not, for c in the range given).
        const auto j0 = static_cast<std::ptrdiff_t>(rr) * C + dc;
        for (const auto& span : spans) {
          const int c0 = std::max({0, -dc, span[0]}), c1 = std::min({C, C - dc, span[1]});
          if (c0 < c1)
            window_offset(kern, K, P, i0, j0, c0, c1, zc, vc, f.z, f.v, f.prec, set, nx, x, d2.data(), wp.data(),
                          A.data(), B.data(), acc.data(), Cs);
        }
      }
    }
    done(r, A.data(), B.data(), acc.data());
  }
}

// Pass 1 for a run of pixels of one energy set: the planar outputs (plane k of a quantity at
// [k·P + p]) and the block's first pixel.
struct Pass1Out {
  float *z, *v, *prec, *scaled;
  double* thickness;
  std::size_t P;
};
constexpr std::size_t kPass1Block = 256;

// B ≤ kPass1Block pixels from p0, statistics pixel-major (M + 1 per pixel): the least-squares
// θ = G⁻¹ s, χ² = q − θᵀs, σ² = χ²/dof, T = Σ c; valid when T > 0, σ² finite and positive and
// T² ≥ snr2_var·σ² (the thickness above min_snr of its standard error); then z = W c/T,
// v = σ²/T², prec = 1/v, θ/T; invalid pixels get z = 0, v = 1, prec = 0, θ/T = 0, T = 0.
// Gi null: the set is unusable, every pixel invalid. The pixels are the inner loop (the
// statistics transposed first), so it vectorizes; `work`: (2M + 4)·kPass1Block doubles.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void pass1_block(int M, int F, std::size_t B, const double* __restrict stats, const double* Gi,
                 const double* __restrict W, int dof, double snr2_var, double* __restrict work, const Pass1Out out,
                 std::size_t p0) {
  const int K = M - F;
  const std::size_t S = static_cast<std::size_t>(M) + 1, N = kPass1Block, P = out.P;
  double* __restrict s = work;                                  // M + 1 rows: s, then q
  double* __restrict th = work + S * N;                         // M rows: θ
  double* __restrict inv_t = work + (S + static_cast<std::size_t>(M)) * N;  // 1/T where valid, else 0
  double* __restrict ratio = inv_t + N;                         // σ²/T² where valid, else 1
  double* __restrict thick = ratio + N;                         // T where valid, else 0
  if (Gi) {
    for (std::size_t i = 0; i < B; ++i)
      for (std::size_t m = 0; m < S; ++m) s[m * N + i] = stats[i * S + m];
    for (int r = 0; r < M; ++r) {
      double* __restrict tr = th + static_cast<std::size_t>(r) * N;
      for (std::size_t i = 0; i < B; ++i) tr[i] = 0;
      for (int k = 0; k < M; ++k) {
        const double g = Gi[static_cast<std::size_t>(k) * M + r];
        const double* __restrict sk = s + static_cast<std::size_t>(k) * N;
        for (std::size_t i = 0; i < B; ++i) tr[i] += g * sk[i];
      }
    }
    // χ² (in q's row) and T (in thick) a parameter at a time, so the loops over the pixels
    // vectorize; then the validity test per pixel.
    double* __restrict chi2 = s + static_cast<std::size_t>(M) * N;
    for (std::size_t i = 0; i < B; ++i) thick[i] = 0;
    for (int m = 0; m < M; ++m) {
      const double* __restrict tm = th + static_cast<std::size_t>(m) * N;
      const double* __restrict sm = s + static_cast<std::size_t>(m) * N;
      for (std::size_t i = 0; i < B; ++i) chi2[i] -= tm[i] * sm[i];
      if (m >= F)
        for (std::size_t i = 0; i < B; ++i) thick[i] += tm[i];
    }
    for (std::size_t i = 0; i < B; ++i) {
      const double sigma2 = chi2[i] / dof, t = thick[i];
      const bool valid = t > 0 && sigma2 > 0 && sigma2 < HUGE_VAL && t * t >= snr2_var * sigma2;
      const double it = 1.0 / t;
      inv_t[i] = valid ? it : 0.0;
      ratio[i] = valid ? sigma2 * it * it : 1.0;
      thick[i] = valid ? t : 0.0;
    }
  } else {
    for (std::size_t i = 0; i < B; ++i) inv_t[i] = 0, ratio[i] = 1, thick[i] = 0;
    for (std::size_t i = 0; i < static_cast<std::size_t>(M) * N; ++i) th[i] = 0;
  }
  double* __restrict za = s;  // s is no longer needed: the rows of z = W c/T
  for (int a = 0; a < K; ++a) {  // W is upper triangular
    double* __restrict zr = za + static_cast<std::size_t>(a) * N;
    for (std::size_t i = 0; i < B; ++i) zr[i] = 0;
    for (int b = a; Gi && b < K; ++b) {
      const double w = W[static_cast<std::size_t>(a) * K + b];
      const double* __restrict tb = th + static_cast<std::size_t>(F + b) * N;
      for (std::size_t i = 0; i < B; ++i) zr[i] += w * tb[i];
    }
    float* __restrict zo = out.z + static_cast<std::size_t>(a) * P + p0;
    for (std::size_t i = 0; i < B; ++i) zo[i] = static_cast<float>(zr[i] * inv_t[i]);
  }
  for (int m = 0; m < M; ++m) {
    float* __restrict sm = out.scaled + static_cast<std::size_t>(m) * P + p0;
    const double* __restrict tm = th + static_cast<std::size_t>(m) * N;
    for (std::size_t i = 0; i < B; ++i) sm[i] = static_cast<float>(tm[i] * inv_t[i]);
  }
  for (std::size_t i = 0; i < B; ++i) {
    out.v[p0 + i] = static_cast<float>(ratio[i]);
    out.prec[p0 + i] = inv_t[i] != 0 ? static_cast<float>(1.0 / ratio[i]) : 0.f;
    out.thickness[p0 + i] = thick[i];
  }
}

// Pass 3's last step for the centres [c0, c1) of one row (one energy set, W null if unusable):
// from the window sums A = Σ w π, B = Σ w² π, acc (M rows of the row) to the pixel's averaged
// coefficients at its thickness, their variance per unit G⁻¹ and the effective number of
// pixels averaged. A pixel not valid, or with nothing agreeing with its pilot, keeps its own
// fit (sigma2 stays −1). Branch-free over the centres so it vectorizes.
struct FinishIn {
  const float *A, *B, *acc;
  std::size_t acc_stride;
  const float *prec, *v;
  const double* thickness;
  const float* pilot_z;  // K planes (stride P); null: no pilot
  const float* pilot_v;
  std::size_t P;
};
struct FinishOut {
  float* theta;  // M planes (stride P)
  double* sigma2;
  float* neighbours;
  std::size_t P;
};

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void finish_span(int M, int F, const double* __restrict W, const FinishIn in, const FinishOut out, int c0, int c1) {
  const int K = M - F;
  constexpr int kChunk = 256;  // columns per step: the loops below run over them, parameter by parameter
  double inv_a[kChunk], var[kChunk], d2[kChunk], za[kChunk];
  for (int b0 = c0; b0 < c1; b0 += kChunk) {
    const int n = std::min(kChunk, c1 - b0);
    const float *A = in.A + b0, *B = in.B + b0, *prec = in.prec + b0;
    for (int c = 0; c < n; ++c) {
      const double a = A[c], b = B[c];
      const bool smooth = W && prec[c] > 0 && a > 0 && b > 0;
      inv_a[c] = smooth ? 1.0 / a : 0.0;
      var[c] = b * inv_a[c] * inv_a[c];
      d2[c] = 0;
    }
    const double* T = in.thickness + b0;
    for (int m = 0; m < M; ++m) {
      const float* __restrict am = in.acc + static_cast<std::size_t>(m) * in.acc_stride + b0;
      float* __restrict tm = out.theta + static_cast<std::size_t>(m) * out.P + b0;
      for (int c = 0; c < n; ++c) tm[c] = static_cast<float>(T[c] * am[c] * inv_a[c]);
    }
    if (in.pilot_z && W) {
      // The smoothing bias (a neighbour across an edge or up a gradient admitted by the kernel)
      // is not in the propagated variance. It shows as the move of the estimate away from the
      // narrower pilot beyond what the noise of that difference explains (nested windows:
      // v_pilot − v); added per component. Without it z-scores spread 1.2–1.3 near domain
      // edges at high counts.
      for (int ka = 0; ka < K; ++ka) {
        for (int c = 0; c < n; ++c) za[c] = 0;
        for (int kb = ka; kb < K; ++kb) {
          const double w = W[static_cast<std::size_t>(ka) * K + kb];
          const float* __restrict ab = in.acc + static_cast<std::size_t>(F + kb) * in.acc_stride + b0;
          for (int c = 0; c < n; ++c) za[c] += w * ab[c];
        }
        const float* __restrict pz = in.pilot_z + static_cast<std::size_t>(ka) * in.P + b0;
        for (int c = 0; c < n; ++c) {
          const double t = za[c] * inv_a[c] - pz[c];
          d2[c] += t * t;
        }
      }
      const float* pv = in.pilot_v + b0;
      const double dof = std::max(1, K - 1);
      for (int c = 0; c < n; ++c) {
        const double noise = std::max(0.0, static_cast<double>(pv[c]) - var[c]);
        var[c] += std::max(0.0, d2[c] / dof - noise);
      }
    }
    const float* v = in.v + b0;
    for (int c = 0; c < n; ++c) {
      const bool smooth = inv_a[c] != 0;
      out.sigma2[b0 + c] = smooth ? T[c] * T[c] * var[c] : -1.0;
      const double a = A[c];
      out.neighbours[b0 + c] = smooth ? static_cast<float>(v[c] * a * a / B[c]) : (W ? 1.f : 0.f);
    }
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
  auto& sc = out.scratch;
  resize_to(sc.z, static_cast<std::size_t>(K) * P, 0.f);
  resize_to(sc.v, P, 1.f);
  resize_to(sc.prec, P, 0.f);
  resize_to(sc.scaled, static_cast<std::size_t>(M) * P, 0.f);
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
    sets[i].W_upper.resize(static_cast<std::size_t>(K) * K);
    for (int a = 0; a < K; ++a)
      for (int b = 0; b < K; ++b) sets[i].W_upper[static_cast<std::size_t>(a) * K + b] = sets[i].W(a, b);
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
  // θ/T, a neighbour's fit brought to unit thickness (θ is linear in the statistics, so
  // averaging θ/T is averaging s/T and solving once). Every pixel's entries are written.
  const double snr2 = settings.min_snr * settings.min_snr;
  const Pass1Out planes{sc.z.data(), sc.v.data(), sc.prec.data(), sc.scaled.data(), sc.thickness.data(), P};
  parallel_rows(R, in.threads, [&](int r0, int r1) {
    std::vector<double> work(static_cast<std::size_t>(2 * M + 4) * kPass1Block);
    const std::size_t end = static_cast<std::size_t>(r1) * C;
    for (std::size_t p = static_cast<std::size_t>(r0) * C, next; p < end; p = next) {
      const auto set = in.set_of[p];  // a run of pixels of one set, at most kPass1Block
      next = p + 1;
      while (next < end && next - p < kPass1Block && in.set_of[next] == set) ++next;
      const bool usable = set < sets.size() && sets[set].usable;
      const SetConsts* c = usable ? &sets[set] : nullptr;
      pass1_block(M, F, next - p, in.stats + p * S, c ? in.sets[set].G_inv : nullptr, c ? c->W_upper.data() : nullptr,
                  c ? c->n - M : 1, c ? snr2 * c->total_var : 0.0, work.data(), planes, p);
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
    window_sums(kern, K, R, C, rad, centre_z, centre_v, feat, set_check, M, sc.scaled.data(), r0, r1,
                [&](int r, const float* A, const float* B, const float* acc) {
                  const std::size_t row = static_cast<std::size_t>(r) * C;
                  for (int c0 = 0, c1; c0 < C; c0 = c1) {  // runs of one energy set (one W)
                    const auto set = in.set_of[row + c0];
                    for (c1 = c0 + 1; c1 < C && in.set_of[row + c1] == set;) ++c1;
                    const bool usable = set < sets.size() && sets[set].usable;
                    const FinishIn fin{A, B, acc, static_cast<std::size_t>(C), feat.prec + row, feat.v + row,
                                       sc.thickness.data() + row, pilot_rad > 0 ? sc.pilot_z.data() + row : nullptr,
                                       sc.pilot_v.data() + row, P};
                    const FinishOut fout{out.theta.data() + row, out.sigma2.data() + row, out.neighbours.data() + row, P};
                    finish_span(M, F, usable ? sets[set].W_upper.data() : nullptr, fin, fout, c0, c1);
                  }
                });
  });
}

}  // namespace xanesd::science
