#include "science/spatial_fit.hpp"
#include "science/parallel.hpp"
#include "science/planar.hpp"

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

// Pass 1's per-pixel features of one image row, planes of `cols` floats `stride` apart: z (K
// planes: the whitened normalized coefficients W c/T), v (σ²/T², the noise variance of z per
// component; 1 where not valid), prec (1/v: how much the pixel counts when lent; 0 where not
// valid), then the M planes averaged (θ/T). The window passes read rows of these through a ring
// (RowRing below).
struct RowLayout {
  int K, M, cols;
  std::size_t stride;
  std::size_t v() const { return static_cast<std::size_t>(K) * stride; }
  std::size_t prec() const { return static_cast<std::size_t>(K + 1) * stride; }
  std::size_t scaled() const { return static_cast<std::size_t>(K + 2) * stride; }
  std::size_t floats() const { return static_cast<std::size_t>(K + 2 + M) * stride; }
};

// The plane stride for rows of `cols` floats: an odd number of 64-byte lines. The window sums
// read some 60 planes at once, a line or two of each; with a stride of a multiple of 4 KiB
// (any power-of-two width ≥ 1024) they all fall in the same sets of the L1 and L2 caches,
// which then hold only 8 of them, and the reads go to L3 (at 2048² the padding cut the window
// kernel's profile samples by 45 %). Odd line counts spread the planes over all sets.
// Each plane also has kColumnPad columns of zeros on either side (below).
constexpr int kColumnPad = 16;
std::size_t padded_stride(int cols) {
  std::size_t lines = (static_cast<std::size_t>(std::max(cols, 1)) + 2 * kColumnPad + 15) / 16;
  if (lines % 2 == 0) ++lines;
  return lines * 16;
}

// The kernel of the weights: for equal chemistry d² = ‖z_c − z_j‖²/(v_c + v_j) has about `dof`
// degrees of freedom; w = (1 − e/(h²·dof))², e the excess of d² over dof, is 1 for what noise
// explains and 0 beyond (a stripe, a domain edge).
struct Kernel {
  float dof, inv_width;
};

// One window row of a centre row: the neighbours' feature rows (RowLayout), null outside the
// image, and their energy sets (null: all pixels share one set).
struct WindowRows {
  const float* const* rows;            // 2·radius + 1, top to bottom
  const std::uint32_t* const* sets;    // same, or null
};

// One window offset (row d of the window, column offset dc) for the centres [c0, c1) of a row:
// with j = c + dc,
//   A_c += w π_j,  B_c += w² π_j,  acc_m,c += w π_j x_m,j   (m < nx)
// `ctr`: the centres' z (K planes) and v (the plane after); `nb`: the neighbour row (RowLayout),
// x its planes from `xoff`; `acc`: nx planes; all planes L.stride apart. `set_c`, `set_n`:
// energy sets (null: one set).
// Branch-free so the loops vectorize; compiled for wider vectors too.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void window_offset(const Kernel kern, const RowLayout L, const float* __restrict ctr, const float* __restrict nb,
                   int dc, const std::uint32_t* __restrict set_c, const std::uint32_t* __restrict set_n, int c0, int c1,
                   int nx, std::size_t xoff, float* __restrict d2, float* __restrict wp, float* __restrict A,
                   float* __restrict B, float* __restrict acc) {
  const std::size_t C = L.stride;
  for (int c = c0; c < c1; ++c) d2[c] = 0.f;
  for (int k = 0; k < L.K; ++k) {
    const float* __restrict a = ctr + static_cast<std::size_t>(k) * C;
    const float* __restrict b = nb + static_cast<std::size_t>(k) * C;
    for (int c = c0; c < c1; ++c) {
      const float t = a[c] - b[c + dc];
      d2[c] += t * t;
    }
  }
  const float *vc = ctr + L.v(), *v = nb + L.v(), *prec = nb + L.prec();
  for (int c = c0; c < c1; ++c) {
    const float e = std::max(0.f, d2[c] / (vc[c] + v[c + dc]) - kern.dof) * kern.inv_width;
    const float t = std::max(0.f, 1.f - e);
    float w = t * t;
    if (set_c) w = set_c[c] == set_n[c + dc] ? w : 0.f;
    const float p = w * prec[c + dc];
    A[c] += p;
    B[c] += w * p;
    wp[c] = p;
  }
  for (int m = 0; m < nx; ++m) {
    const float* __restrict xm = nb + xoff + static_cast<std::size_t>(m) * C;
    float* __restrict am = acc + static_cast<std::size_t>(m) * C;
    for (int c = c0; c < c1; ++c) am[c] += wp[c] * xm[c + dc];
  }
}

// The same sums for a chunk of 8 or 16 centres at once with every accumulator in registers,
// all window offsets in turn: a neighbour's values are read once per offset and nothing else
// touches memory (the row-at-a-time form above streams its accumulator rows through the cache
// at every offset, which made the window sums half of the spatial step). The arithmetic per
// centre, and its order over the offsets, is window_offset's. K and NX known at compile time keep the sums in
// registers; only interior centres (the whole window inside the row).
using Vf8 = float __attribute__((vector_size(32)));
using Vi8 = std::int32_t __attribute__((vector_size(32)));
using Vf16 = float __attribute__((vector_size(64)));
using Vi16 = std::int32_t __attribute__((vector_size(64)));
template <int Lanes> struct Lane;  // the vector types of a chunk of Lanes centres
template <> struct Lane<8> { using F = Vf8; using I = Vi8; };
template <> struct Lane<16> { using F = Vf16; using I = Vi16; };

// The helpers are always inlined, so the vectors never cross a call (GCC warns about the ABI
// of such calls for targets without AVX, at the end of the file: the warning stays off).
#pragma GCC diagnostic ignored "-Wpsabi"
template <class V>
__attribute__((always_inline)) inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
__attribute__((always_inline)) inline void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
template <class V, class I>
__attribute__((always_inline)) inline V max0(V a) {  // std::max(0.f, a): 0 for NaN too
  return reinterpret_cast<V>(reinterpret_cast<I>(a) & (a > 0.f));
}

template <int K, int NX, bool Sets, int Lanes>
__attribute__((always_inline)) inline void window_chunk(const Kernel kern, const RowLayout L, int radius, int c,
                                                        const float* ctr, const WindowRows W,
                                                        const std::uint32_t* set_c, std::size_t xoff, float* A,
                                                        float* B, float* acc) {
  using V = typename Lane<Lanes>::F;
  using I = typename Lane<Lanes>::I;
  const std::size_t C = L.stride;
  const float* prec_c = W.rows[radius] + L.prec();
  bool any_valid = false;  // centres without a valid fit (no material) are never smoothed: skip them
  for (int l = 0; l < Lanes; ++l) any_valid |= prec_c[c + l] > 0;
  if (!any_valid) {
    const V zero = {};
    store(A + c, zero);
    store(B + c, zero);
    for (int m = 0; m < NX; ++m) store(acc + static_cast<std::size_t>(m) * C + c, zero);
    return;
  }
  V centre[K];
  for (int k = 0; k < K; ++k) centre[k] = load<V>(ctr + static_cast<std::size_t>(k) * C + c);
  const V centre_v = load<V>(ctr + L.v() + c);
  I centre_set = {};
  if constexpr (Sets) std::memcpy(&centre_set, set_c + c, sizeof centre_set);
  V a = {}, b = {}, sums[NX] = {};
  for (int d = 0; d <= 2 * radius; ++d) {
    const float* row = W.rows[d];
    if (!row) continue;
    for (int dc = -radius; dc <= radius; ++dc) {
      const int j = c + dc;
      V d2 = {};
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        const V t = centre[k] - load<V>(row + static_cast<std::size_t>(k) * C + j);
        d2 += t * t;
      }
      const V e = max0<V, I>(d2 / (centre_v + load<V>(row + L.v() + j)) - kern.dof) * kern.inv_width;
      const V t = max0<V, I>(1.f - e);
      V w = t * t;
      if constexpr (Sets) {
        I s;
        std::memcpy(&s, W.sets[d] + j, sizeof s);
        w = reinterpret_cast<V>(reinterpret_cast<I>(w) & (centre_set == s));
      }
      const V p = w * load<V>(row + L.prec() + j);
      a += p;
      b += w * p;
#pragma GCC unroll 8
      for (int m = 0; m < NX; ++m) sums[m] += p * load<V>(row + xoff + static_cast<std::size_t>(m) * C + j);
    }
  }
  store(A + c, a);
  store(B + c, b);
  for (int m = 0; m < NX; ++m) store(acc + static_cast<std::size_t>(m) * C + c, sums[m]);
}

// Centres [c0, c1) of a row (c1 − c0 ≥ Lanes, whole windows inside the row) for K ≤ 6 features
// and NX ∈ [K, K + 2] planes (the pilot, and M with up to 2 background parameters); false
// (nothing done) otherwise. The last chunk ends at c1 and overlaps the one before it: its
// centres are computed twice, to the same values (each centre's sums are its own).
template <int Lanes>
__attribute__((always_inline)) inline bool window_row_chunks(const Kernel kern, const RowLayout L, int nx,
                                                             int radius, int c0, int c1, const float* ctr,
                                                             const WindowRows W, const std::uint32_t* set_c,
                                                             std::size_t xoff, float* A, float* B, float* acc) {
#define XANESD_WINDOW_CASE(KC, XC)                                                                       \
  case KC * 16 + XC:                                                                                     \
    for (int c = c0; c < c1; c = c + Lanes < c1 ? std::min(c + Lanes, c1 - Lanes) : c1) {              \
      if (set_c) window_chunk<KC, XC, true, Lanes>(kern, L, radius, c, ctr, W, set_c, xoff, A, B, acc); \
      else window_chunk<KC, XC, false, Lanes>(kern, L, radius, c, ctr, W, set_c, xoff, A, B, acc);      \
    }                                                                                                    \
    return true;
#define XANESD_WINDOW_CASES(KC) \
  XANESD_WINDOW_CASE(KC, KC) XANESD_WINDOW_CASE(KC, KC + 1) XANESD_WINDOW_CASE(KC, KC + 2)
  switch (L.K * 16 + nx) {
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

// The chunks 8 centres wide (AVX2, and 4-wide halves without it) and, where the CPU has
// AVX-512, 16 wide: the window sums are bound by arithmetic, and a core with 512-bit units
// does twice the centres per instruction.
__attribute__((target_clones("arch=x86-64-v3", "default")))
bool window_row_fused8(const Kernel kern, const RowLayout L, int nx, int radius, int c0, int c1, const float* ctr,
                       const WindowRows W, const std::uint32_t* set_c, std::size_t xoff, float* A, float* B,
                       float* acc) {
  return window_row_chunks<8>(kern, L, nx, radius, c0, c1, ctr, W, set_c, xoff, A, B, acc);
}
__attribute__((target("arch=x86-64-v4")))
bool window_row_fused16(const Kernel kern, const RowLayout L, int nx, int radius, int c0, int c1, const float* ctr,
                        const WindowRows W, const std::uint32_t* set_c, std::size_t xoff, float* A, float* B,
                        float* acc) {
  return window_row_chunks<16>(kern, L, nx, radius, c0, c1, ctr, W, set_c, xoff, A, B, acc);
}
// Centres per fused chunk: the widest this CPU runs.
int fused_lanes() {
  static const int lanes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                               ? 16
                               : 8;
  return lanes;
}

// Buffers of the window sums of one row: A, B and nx rows of acc (L.stride apart), indexed by
// column.
struct WindowSums {
  std::vector<float> d2, wp, A, B, acc;
  WindowSums(const RowLayout& L, int nx)
      : d2(L.stride), wp(L.stride), A(L.stride), B(L.stride), acc(static_cast<std::size_t>(nx) * L.stride) {}
};

// The weighted window sums of `nx` planes (from `xoff` in the neighbour rows) for every centre
// of one row, into `out`. Centres in registers (window_row_fused8 or 16) where K and nx allow:
// with one energy set, every centre, the windows of those near the sides reaching into the
// rows' zero columns (a neighbour there has prec = 0, so it adds exactly 0 to every sum: the
// same sums as leaving it out); with several sets (their arrays have no such columns) the
// interior ones. The rest an offset at a time, a call per offset and side: at 160 columns the
// step cost 25–40 % less once the sides went through the vector kernel too.
void window_row(const Kernel kern, const RowLayout L, int lanes, int radius, const float* ctr, const WindowRows W,
                const std::uint32_t* set_c, int nx, std::size_t xoff, WindowSums& out) {
  const int C = L.cols;
  const bool whole_rows = !set_c && radius <= kColumnPad;
  const int inner0 = whole_rows ? 0 : radius, inner1 = whole_rows ? C : C - radius;
  const bool fused = inner1 - inner0 >= lanes && (lanes == 16 ? window_row_fused16 : window_row_fused8)(
                                            kern, L, nx, radius, inner0, inner1, ctr, W, set_c, xoff, out.A.data(),
                                            out.B.data(), out.acc.data());
  // The rest: every column when not fused, else the sides [0, inner0) and [inner1, C).
  const int spans[2][2] = {{0, fused ? inner0 : C}, {fused ? inner1 : C, C}};
  if (fused && whole_rows) return;
  for (const auto& span : spans) {
    if (span[0] >= span[1]) continue;
    std::fill(out.A.begin() + span[0], out.A.begin() + span[1], 0.f);
    std::fill(out.B.begin() + span[0], out.B.begin() + span[1], 0.f);
    for (int m = 0; m < nx; ++m)
      std::fill_n(out.acc.begin() + static_cast<std::ptrdiff_t>(m * L.stride) + span[0], span[1] - span[0], 0.f);
  }
  for (int d = 0; d <= 2 * radius; ++d) {
    if (!W.rows[d]) continue;
    for (int dc = -radius; dc <= radius; ++dc)
      for (const auto& span : spans) {
        const int c0 = std::max({0, -dc, span[0]}), c1 = std::min({C, C - dc, span[1]});
        if (c0 < c1)
          window_offset(kern, L, ctr, W.rows[d], dc, set_c, set_c ? W.sets[d] : nullptr, c0, c1, nx, xoff,
                        out.d2.data(), out.wp.data(), out.A.data(), out.B.data(), out.acc.data());
      }
  }
}

// Pass 1 for a run of pixels of one energy set: the planar outputs (plane k of a quantity at
// [k·P + p]: a row's planes, P its plane stride) and the block's first column.
struct Pass1Out {
  float *z, *v, *prec, *scaled;
  double* thickness;
  std::size_t P;
};
constexpr std::size_t kPass1Block = 256;
// The stride of pass1_block's work rows: a line more than a block, so a row's stores and the
// next row's loads are not 4 KiB apart (the load would wait for the store: 4K aliasing).
constexpr std::size_t kPass1Stride = kPass1Block + 8;

// θ = G⁻¹ s for B pixels (rows of stride N): with M known, a pixel's M sums stay in registers
// and each s value is read once (the row-at-a-time loop reads and writes θ's rows M times).
template <int M>
__attribute__((always_inline)) inline void theta_rows_fixed(std::size_t B, std::size_t N, const double* Gi,
                                                            const double* __restrict s, double* __restrict th) {
  double g[M][M];  // g[r][k] = G⁻¹(r, k), column-major input
  for (int r = 0; r < M; ++r)
    for (int k = 0; k < M; ++k) g[r][k] = Gi[static_cast<std::size_t>(k) * M + r];
  for (std::size_t i = 0; i < B; ++i) {
    double sv[M];
    for (int k = 0; k < M; ++k) sv[k] = s[static_cast<std::size_t>(k) * N + i];
    for (int r = 0; r < M; ++r) {
      double t = 0;
      for (int k = 0; k < M; ++k) t += g[r][k] * sv[k];
      th[static_cast<std::size_t>(r) * N + i] = t;
    }
  }
}
// θ = G⁻¹ s for B pixels: theta_rows_fixed for M from 3 to 8, else a row of θ at a time.
__attribute__((always_inline)) inline void theta_rows(int M, std::size_t B, std::size_t N, const double* Gi,
                                                      const double* __restrict s, double* __restrict th) {
  switch (M) {
    case 3: return theta_rows_fixed<3>(B, N, Gi, s, th);
    case 4: return theta_rows_fixed<4>(B, N, Gi, s, th);
    case 5: return theta_rows_fixed<5>(B, N, Gi, s, th);
    case 6: return theta_rows_fixed<6>(B, N, Gi, s, th);
    case 7: return theta_rows_fixed<7>(B, N, Gi, s, th);
    case 8: return theta_rows_fixed<8>(B, N, Gi, s, th);
    default: break;
  }
  for (int r = 0; r < M; ++r) {
    double* __restrict tr = th + static_cast<std::size_t>(r) * N;
    for (std::size_t i = 0; i < B; ++i) tr[i] = 0;
    for (int k = 0; k < M; ++k) {
      const double g = Gi[static_cast<std::size_t>(k) * M + r];
      const double* __restrict sk = s + static_cast<std::size_t>(k) * N;
      for (std::size_t i = 0; i < B; ++i) tr[i] += g * sk[i];
    }
  }
}

// B ≤ kPass1Block pixels from p0, statistics pixel-major (M + 1 per pixel): the least-squares
// θ = G⁻¹ s, χ² = q − θᵀs, σ² = χ²/dof, T = Σ c; valid when T > 0, σ² finite and positive and
// T² ≥ snr2_var·σ² (the thickness above min_snr of its standard error); then z = W c/T,
// v = σ²/T², prec = 1/v, θ/T; invalid pixels get z = 0, v = 1, prec = 0, θ/T = 0, T = 0.
// Gi null: the set is unusable, every pixel invalid. The pixels are the inner loop (the
// statistics transposed first), so it vectorizes; `work`: (2M + 4)·kPass1Stride doubles.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void pass1_block(int M, int F, std::size_t B, const double* __restrict stats, const double* Gi,
                 const double* __restrict W, int dof, double snr2_var, double* __restrict work, const Pass1Out out,
                 std::size_t p0) {
  const int K = M - F;
  const std::size_t S = static_cast<std::size_t>(M) + 1, N = kPass1Stride, P = out.P;
  double* __restrict s = work;                                  // M + 1 rows: s, then q
  double* __restrict th = work + S * N;                         // M rows: θ
  double* __restrict inv_t = work + (S + static_cast<std::size_t>(M)) * N;  // 1/T where valid, else 0
  double* __restrict ratio = inv_t + N;                         // σ²/T² where valid, else 1
  double* __restrict thick = ratio + N;                         // T where valid, else 0
  if (Gi) {
    to_planar(S, B, N, stats, s);
    theta_rows(M, B, N, Gi, s, th);
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
    for (std::size_t i = 0; i < B; ++i) {  // & not &&: no branches, so it vectorizes
      const double sigma2 = chi2[i] / dof, t = thick[i];
      const bool valid = (t > 0) & (sigma2 > 0) & (sigma2 < HUGE_VAL) & (t * t >= snr2_var * sigma2);
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

// The pilot of a row from its window sums: z̄ = acc/A (K planes), v̄ = B/A²; where A is not
// positive (not valid, or no neighbour agrees) the pixel's own z and v from `own`. Branch-free
// (the division on 1 where A ≤ 0) so the loops vectorize.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void pilot_from_sums(const RowLayout L, const float* __restrict A, const float* __restrict B,
                     const float* __restrict acc, const float* __restrict own, float* __restrict pilot) {
  for (int k = 0; k <= L.K; ++k) {  // plane K: v
    const std::size_t o = static_cast<std::size_t>(k) * L.stride;
    const float* __restrict num = k < L.K ? acc + o : B;
    const float* __restrict mine = own + o;
    float* __restrict out = pilot + o;
    const bool squared = k == L.K;
    for (int c = 0; c < L.cols; ++c) {
      const bool pos = A[c] > 0;
      const float inv = 1.f / (pos ? A[c] : 1.f);
      const float x = num[c] * inv * (squared ? inv : 1.f);
      out[c] = pos ? x : mine[c];
    }
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
  std::size_t P;  // the pilot's plane stride
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


}  // namespace

void spatial_average(const SpatialInput& in, const SpatialSettings& settings,
                     const std::function<SpatialRowSink()>& make_sink) {
  const int M = in.M, F = in.F, K = M - F, R = in.rows, C = in.cols;
  const std::size_t P = static_cast<std::size_t>(R) * static_cast<std::size_t>(C), S = static_cast<std::size_t>(M + 1);
  if (P == 0) return;
  if (K < 1 || M > 64 || !settings.enabled) {  // nothing smoothed
    parallel_rows(R, in.threads, [&](int r0, int r1) {
      const auto sink = make_sink();
      const std::vector<double> sigma2(static_cast<std::size_t>(C), -1.0);
      const std::vector<float> neighbours(static_cast<std::size_t>(C), 0.f);
      for (int r = r0; r < r1; ++r) sink({r, nullptr, 0, sigma2.data(), neighbours.data()});
    });
    return;
  }
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

  const double snr2 = settings.min_snr * settings.min_snr;
  const Kernel kern{static_cast<float>(std::max(1, K - 1)),
                    static_cast<float>(1.0 / (std::max(settings.strength, 1e-3) * std::max(settings.strength, 1e-3) *
                                              std::max(1, K - 1)))};
  const int rad = std::max(0, settings.radius), pilot_rad = std::min(rad, std::max(0, settings.pilot_radius));
  const RowLayout L{K, M, C, padded_stride(C)};
  const int lanes = settings.vector_lanes == 8 ? 8 : fused_lanes();
  const std::size_t Cs = static_cast<std::size_t>(C), Ps = L.stride;  // columns, plane stride

  // The three passes run row by row through a ring of the last 2·radius + 1 rows of pass 1's
  // features, so the features never leave the cache: the step reads the statistics and writes
  // its results, and nothing else goes to memory (the passes over whole-image feature planes
  // spent their time waiting for memory). Each thread computes pass 1 for the radius rows
  // beside its band again.
  parallel_rows(R, in.threads, [&](int r0, int r1) {
    const int slots = 2 * rad + 1;
    // Zeros, and pass 1 writes columns [0, C) of each plane only: kColumnPad zero columns stay
    // on either side of every plane (window_row reads them for the centres near the sides).
    std::vector<float> ring(static_cast<std::size_t>(slots) * L.floats());
    std::vector<double> ring_thickness(static_cast<std::size_t>(slots) * Cs);
    std::vector<double> work(static_cast<std::size_t>(2 * M + 4) * kPass1Stride);
    std::vector<float> pilot(static_cast<std::size_t>(K + 1) * Ps);  // the centre row's pilot z (K planes), v
    WindowSums pilot_sums(L, K), sums(L, M);
    std::vector<float> theta(static_cast<std::size_t>(M) * Ps), neighbours(Cs);  // the row's results
    std::vector<double> sigma2(Cs);
    const auto sink = make_sink();
    std::vector<const float*> rows(static_cast<std::size_t>(slots));
    std::vector<const std::uint32_t*> set_rows(static_cast<std::size_t>(slots));
    auto slot = [&](int r) { return static_cast<std::size_t>(r % slots); };
    auto features = [&](int r) { return ring.data() + slot(r) * L.floats() + kColumnPad; };

    // Pass 1 for row r, per pixel: the least-squares fit (linear, unbiased: the right thing to
    // compare), its noise σ² = χ²/(n − M), thickness T = Σc, the whitened normalized
    // coefficients z = W c/T (‖z_i − z_j‖² ~ (v_i + v_j)·χ² for equal chemistry, v = σ²/T²), and
    // what is averaged: θ/T, a neighbour's fit brought to unit thickness (θ is linear in the
    // statistics, so averaging θ/T is averaging s/T and solving once).
    auto pass1_row = [&](int r) {
      float* f = features(r);
      const Pass1Out planes{f, f + L.v(), f + L.prec(), f + L.scaled(), ring_thickness.data() + slot(r) * Cs, Ps};
      const std::size_t row = static_cast<std::size_t>(r) * Cs;
      for (std::size_t c = 0, next; c < Cs; c = next) {
        const auto set = in.set_of[row + c];  // a run of pixels of one set, at most kPass1Block
        next = c + 1;
        while (next < Cs && next - c < kPass1Block && in.set_of[row + next] == set) ++next;
        const bool usable = set < sets.size() && sets[set].usable;
        const SetConsts* sc = usable ? &sets[set] : nullptr;
        pass1_block(M, F, next - c, in.stats + (row + c) * S, sc ? in.sets[set].G_inv : nullptr,
                    sc ? sc->W_upper.data() : nullptr, sc ? sc->n - M : 1, sc ? snr2 * sc->total_var : 0.0,
                    work.data(), planes, c);
      }
    };
    // The window rows around centre row r (radius ≤ rad): the ring's rows, null outside the image
    // (or the centre's slice of a volume).
    auto window = [&](int r, int radius) {
      for (int d = 0; d <= 2 * radius; ++d) {
        const int rr = r - radius + d;
        const bool inside = rr >= 0 && rr < R && in.slices.same_slice(r, rr);
        rows[static_cast<std::size_t>(d)] = inside ? features(rr) : nullptr;
        set_rows[static_cast<std::size_t>(d)] = inside && set_check ? set_check + static_cast<std::size_t>(rr) * Cs : nullptr;
      }
      return WindowRows{rows.data(), set_check ? set_rows.data() : nullptr};
    };

    for (int r = std::max(0, r0 - rad); r < std::min(R, r0 + rad); ++r) pass1_row(r);
    for (int r = r0; r < r1; ++r) {
      if (r + rad < R) pass1_row(r + rad);
      // The statistics pass 1 reads next: asked for now, they arrive while this row's window
      // sums compute (read after them, each row's reads began cold and waited on memory).
      if (r + rad + 1 < R) {
        const char* next = reinterpret_cast<const char*>(in.stats + static_cast<std::size_t>(r + rad + 1) * Cs * S);
        for (std::size_t b = 0; b < Cs * S * sizeof(double); b += 64) __builtin_prefetch(next + b, 0, 2);
      }
      const float* centre = features(r);
      const std::uint32_t* set_c = set_check ? set_check + static_cast<std::size_t>(r) * Cs : nullptr;

      // Pass 2, the pilot: weights judged against the pixel's own noisy coefficients select
      // neighbours whose noise resembles the centre's (the estimate then stays near the centre's
      // noise and its error exceeds the propagated σ). So first a pilot estimate of each pixel's
      // coefficients, the weighted mean of z over a small window, with its variance.
      const float* judge = centre;  // what the neighbours are judged against: z (K planes), v
      if (pilot_rad > 0) {
        window_row(kern, L, lanes, pilot_rad, centre, window(r, pilot_rad), set_c, K, 0, pilot_sums);
        pilot_from_sums(L, pilot_sums.A.data(), pilot_sums.B.data(), pilot_sums.acc.data(), centre, pilot.data());
        judge = pilot.data();
      }

      // Pass 3: each valid pixel's weighted mean of its window's scaled fits (same energy set),
      // weights judged against the pilot, brought back to the pixel's thickness.
      window_row(kern, L, lanes, rad, judge, window(r, rad), set_c, M, L.scaled(), sums);
      const std::size_t row = static_cast<std::size_t>(r) * Cs;
      for (std::size_t c0 = 0, c1; c0 < Cs; c0 = c1) {  // runs of one energy set (one W)
        const auto set = in.set_of[row + c0];
        for (c1 = c0 + 1; c1 < Cs && in.set_of[row + c1] == set;) ++c1;
        const bool usable = set < sets.size() && sets[set].usable;
        const FinishIn fin{sums.A.data(), sums.B.data(), sums.acc.data(), Ps, centre + L.prec(), centre + L.v(),
                           ring_thickness.data() + slot(r) * Cs, pilot_rad > 0 ? pilot.data() : nullptr,
                           pilot.data() + L.v(), Ps};
        const FinishOut fout{theta.data(), sigma2.data(), neighbours.data(), Ps};
        finish_span(M, F, usable ? sets[set].W_upper.data() : nullptr, fin, fout, static_cast<int>(c0),
                    static_cast<int>(c1));
      }
      sink({r, theta.data(), Ps, sigma2.data(), neighbours.data()});
    }
  });
}

}  // namespace xanesd::science
