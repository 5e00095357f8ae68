#include "science/edge_maps.hpp"
#include "science/parallel.hpp"

#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include <Eigen/Dense>

namespace xanesd::science {

namespace {
// Vectors of doubles (GCC vector extensions): 2 wide (one SSE2 register, plain x86-64's width:
// wider vectors are lowered element by element there, blends included) and 4 wide for AVX2
// (the block kernel below is compiled once per width, for its target; 8 wide with AVX-512 was
// slower on an AVX-512 core: 0.30 against 0.19 s for the edge maps of a 1024² × 100 scan).
using Vd2 = double __attribute__((vector_size(16)));
using Vd4 = double __attribute__((vector_size(32)));
// The helpers are always inlined, so the vectors never cross a call (GCC warns about the ABI of
// such calls for targets without AVX).
#pragma GCC diagnostic ignored "-Wpsabi"
template <class V>
__attribute__((always_inline)) inline V load(const double* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
__attribute__((always_inline)) inline void store(double* p, V v) { std::memcpy(p, &v, sizeof v); }
template <class V>
__attribute__((always_inline)) inline V splat(double x) {
  V v;
  for (std::size_t i = 0; i < sizeof v / sizeof x; ++i) v[i] = x;
  return v;
}
}  // namespace

PixelNormalizer::Projector PixelNormalizer::make(const std::vector<double>& e, double e0, double lo, double hi, int deg) {
  Projector pr;
  for (std::size_t i = 0; i < e.size(); ++i)
    if (e[i] >= lo && e[i] <= hi) pr.idx.push_back(static_cast<int>(i));
  if (static_cast<int>(pr.idx.size()) < deg + 1)
    throw std::invalid_argument("too few energies in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] eV to normalize");
  Eigen::MatrixXd A(static_cast<Eigen::Index>(pr.idx.size()), deg + 1);
  for (std::size_t r = 0; r < pr.idx.size(); ++r) {
    double p = 1;
    for (int c = 0; c <= deg; ++c, p *= e[static_cast<std::size_t>(pr.idx[r])] - e0) A(static_cast<Eigen::Index>(r), c) = p;
  }
  pr.P = A.completeOrthogonalDecomposition().pseudoInverse();
  return pr;
}

PixelNormalizer::PixelNormalizer(const std::vector<double>& e, const PreEdgeResult& ranges) : ranges_(ranges) {
  const double e0 = ranges.e0;
  pre_ = make(e, e0, e0 + ranges.pre1, e0 + ranges.pre2, 1);
  post_ = make(e, e0, e0 + ranges.norm1, e0 + ranges.norm2, ranges.nnorm);
  for (double v : e) de_.push_back(v - e0);
}

double PixelNormalizer::normalize(const double* y, double* norm) const {
  double step;
  normalize_block(y, 1, 1, norm, &step);
  return step;
}

__attribute__((always_inline)) inline void PixelNormalizer::normalize_block_inline(const double* y, std::size_t stride,
                                                                                   std::size_t n, double* norm,
                                                                                   double* step) const {
  constexpr std::size_t kChunk = 256;  // pixels per pass: the per-pixel coefficients stay on the stack
  double pre0[kChunk], pre1[kChunk], inv[kChunk];
  for (std::size_t i0 = 0; i0 < n; i0 += kChunk) {
    const std::size_t m = std::min(kChunk, n - i0);
    // The polynomial coefficients of the chunk's pixels, a projector row at a time.
    auto coefficients = [&](const Projector& pr, Eigen::Index row, double* __restrict c) {
      for (std::size_t i = 0; i < m; ++i) c[i] = 0;
      for (std::size_t j = 0; j < pr.idx.size(); ++j) {
        const double w = pr.P(row, static_cast<Eigen::Index>(j));
        const double* __restrict yj = y + static_cast<std::size_t>(pr.idx[j]) * stride + i0;
        for (std::size_t i = 0; i < m; ++i) c[i] += w * yj[i];
      }
    };
    double* __restrict st = step + i0;
    coefficients(pre_, 0, pre0);
    coefficients(pre_, 1, pre1);
    coefficients(post_, 0, st);
    for (std::size_t i = 0; i < m; ++i) {
      st[i] -= pre0[i];  // both polynomials at E0
      inv[i] = 1.0 / st[i];
    }
    for (std::size_t j = 0; j < de_.size(); ++j) {
      const double* __restrict yj = y + j * stride + i0;
      double* __restrict nj = norm + j * stride + i0;
      const double dej = de_[j];
      for (std::size_t i = 0; i < m; ++i) nj[i] = (yj[i] - pre0[i] - pre1[i] * dej) * inv[i];
    }
  }
}

void PixelNormalizer::normalize_block(const double* y, std::size_t stride, std::size_t n, double* norm,
                                      double* step) const {
  normalize_block_inline(y, stride, n, norm, step);
}

namespace {

// What every block of compute_edge_maps reads, and the maps it writes.
struct EdgeBlocks {
  const float* planes;  // E × npix
  std::size_t npix;
  const std::vector<double>& e;
  const std::vector<double>& inv_span;  // 1 / (energy span) of each smoothed derivative
  const PixelNormalizer& normalizer;
  double e0, half_from;
  const std::uint8_t* use;  // selected and complete
  EdgeMaps& maps;
};
constexpr std::size_t kEdgeBlock = 256;  // pixels per block

// The maps of pixels [begin, end) a block at a time: plane-major (a plane's values of the block
// side by side), each step a loop over the block's pixels in vectors of V, so it vectorizes;
// each pixel's arithmetic in the order of the one-pixel forms (white_line_energy), so the maps
// do not depend on the blocking or the vector width. `work`: 2·kEdgeBlock·E + 6·kEdgeBlock doubles.
template <class V>
__attribute__((always_inline)) inline void edge_blocks(const EdgeBlocks& in, std::size_t begin, std::size_t end,
                                                       double* work) {
  constexpr std::size_t kBlock = kEdgeBlock, W = sizeof(V) / sizeof(double);
  const auto& e = in.e;
  const std::size_t E = e.size(), npix = in.npix;
  double* y_buf = work;
  double* norm_buf = y_buf + kBlock * E;
  double* __restrict step = norm_buf + kBlock * E;
  double* __restrict best = step + kBlock;     // steepest rise so far
  double* __restrict pe0 = best + kBlock;      // its energy
  double* __restrict half = pe0 + kBlock;      // half-step energy (0: none yet)
  double* __restrict peak = half + kBlock;     // highest normalized value at or above E0
  double* __restrict peak_at = peak + kBlock;  // its energy index (E: none), as a double to blend with the rest
  for (std::size_t p0 = begin; p0 < end; p0 += kBlock) {
    const std::size_t nb = std::min(kBlock, end - p0);
    for (std::size_t j = 0; j < E; ++j) {
      const float* __restrict plane = in.planes + j * npix + p0;
      double* __restrict yj = y_buf + j * kBlock;
      for (std::size_t i = 0; i < nb; ++i) yj[i] = plane[i];
      for (std::size_t i = nb; i < kBlock; ++i) yj[i] = 0;
    }
    in.normalizer.normalize_block_inline(y_buf, kBlock, kBlock, norm_buf, step);
    const double* norm = norm_buf;
    auto at = [&](std::size_t j) { return norm + j * kBlock; };
    // The three scans below run over W pixels at a time with explicit blends: GCC would make
    // the selects conditional stores, which it does not vectorize. The tail of the block
    // computes on padding (zeros) and is not written out.
    const std::size_t nv = (nb + W - 1) / W * W;
    // E0: steepest rise of a 3-point smoothed spectrum (noise makes raw differences jumpy).
    for (std::size_t i = 0; i < nv; i += W) store(best + i, splat<V>(-INFINITY)), store(pe0 + i, splat<V>(in.e0));
    for (std::size_t j = 2; j + 2 < E; ++j) {
      const double *a = at(j - 2), *b = at(j - 1), *c = at(j + 1), *d = at(j + 2);
      const V ej = splat<V>(e[j]), s = splat<V>(in.inv_span[j]);
      for (std::size_t i = 0; i < nv; i += W) {
        const V rise = ((load<V>(c + i) + load<V>(d + i)) - (load<V>(b + i) + load<V>(a + i))) * s,
                top = load<V>(best + i);
        const auto steeper = rise > top;
        store(best + i, steeper ? rise : top);
        store(pe0 + i, steeper ? ej : load<V>(pe0 + i));
      }
    }
    // Half step: the first crossing of 0.5 above the pre-edge range (0 without one).
    for (std::size_t i = 0; i < nv; i += W) store(half + i, splat<V>(0));
    const V one_half = splat<V>(0.5), zero = splat<V>(0);
    for (std::size_t j = 1; j < E; ++j) {
      if (e[j] < in.half_from) continue;
      const double *lo = at(j - 1), *hi = at(j);
      const V ea = splat<V>(e[j - 1]), de = splat<V>(e[j] - e[j - 1]);
      for (std::size_t i = 0; i < nv; i += W) {
        const V l = load<V>(lo + i), h = load<V>(hi + i), was = load<V>(half + i);
        const auto cross = (was == zero) & (h >= one_half) & (l < one_half);
        store(half + i, cross ? ea + (one_half - l) / (h - l) * de : was);
      }
    }
    // White line: the maximum at or above each pixel's E0, then its parabola.
    for (std::size_t i = 0; i < nv; i += W)
      store(peak + i, splat<V>(-INFINITY)), store(peak_at + i, splat<V>(static_cast<double>(E)));
    for (std::size_t j = 0; j < E; ++j) {
      const double* nj = at(j);
      const V ej = splat<V>(e[j]), jd = splat<V>(static_cast<double>(j));
      for (std::size_t i = 0; i < nv; i += W) {
        const V v = load<V>(nj + i), top = load<V>(peak + i);
        const auto higher = (ej >= load<V>(pe0 + i)) & (v > top);
        store(peak + i, higher ? v : top);
        store(peak_at + i, higher ? jd : load<V>(peak_at + i));
      }
    }
    for (std::size_t i = 0; i < nb; ++i) {
      const std::size_t p = p0 + i;
      if (!in.use[p] || !(step[i] > 0)) continue;  // not selected, or no edge in this pixel
      const auto k = static_cast<std::size_t>(peak_at[i]);
      const double wl = k == E ? pe0[i]
                               : white_line_vertex(e, k, k > 0 ? at(k - 1)[i] : 0.0, peak[i],
                                                   k + 1 < E ? at(k + 1)[i] : 0.0);
      in.maps.e0[p] = static_cast<float>(pe0[i]);
      in.maps.half_step[p] = static_cast<float>(half[i]);
      in.maps.white_line[p] = static_cast<float>(wl);
      in.maps.edge_step[p] = static_cast<float>(step[i]);
    }
  }
}

// edge_blocks in AVX2 vectors where the CPU has them (chosen once; the features named, not an
// x86-64-v3 level, which clang 14's __builtin_cpu_supports does not know).
__attribute__((target("avx2,fma"))) void edge_blocks4(const EdgeBlocks& in, std::size_t b, std::size_t e, double* w) {
  edge_blocks<Vd4>(in, b, e, w);
}
void edge_blocks2(const EdgeBlocks& in, std::size_t b, std::size_t e, double* w) { edge_blocks<Vd2>(in, b, e, w); }
using EdgeBlocksKernel = void (*)(const EdgeBlocks&, std::size_t, std::size_t, double*);
EdgeBlocksKernel edge_blocks_kernel() {
  static const EdgeBlocksKernel k = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &edge_blocks4;
    return &edge_blocks2;
  }();
  return k;
}

// use[p] &= plane[p] is a number (not NaN), over one plane. Both loops below are passes over
// the whole stack: in AVX2 vectors where the CPU has them (scalar code took 0.1 s of a
// 1024² × 100 batch fit).
__attribute__((target_clones("arch=x86-64-v3", "default"))) void keep_measured(const float* __restrict plane,
                                                                              std::uint8_t* __restrict use, std::size_t n) {
  for (std::size_t p = 0; p < n; ++p) use[p] &= static_cast<std::uint8_t>(plane[p] == plane[p]);
}

// The sum of plane[p] over the pixels with use[p]: branch-free, with 8 partial sums (one long
// chain of dependent additions is latency-bound) in four 2-wide vectors (lane k sums the pixels
// p ≡ k mod 8), the same bits in every clone. 2-wide: a 4-wide vector in the default clone
// changes the ABI of the inlined helpers, which clang refuses.
__attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=off"))) double used_sum(
    const float* __restrict plane, const std::uint8_t* __restrict use, std::size_t n) {
  using Vf2 = float __attribute__((vector_size(8)));
  using Vb2 = std::uint8_t __attribute__((vector_size(2)));
  using Vl2 = std::int64_t __attribute__((vector_size(16)));
  const Vd2 zero = splat<Vd2>(0);
  Vd2 sum[4] = {zero, zero, zero, zero};
  std::size_t p = 0;
  for (; p + 8 <= n; p += 8)
    for (std::size_t k = 0; k < 4; ++k) {
      Vf2 f;
      Vb2 u;
      std::memcpy(&f, plane + p + 2 * k, sizeof f), std::memcpy(&u, use + p + 2 * k, sizeof u);
      sum[k] += __builtin_convertvector(u, Vl2) != 0 ? __builtin_convertvector(f, Vd2) : zero;
    }
  double part[8];
  for (std::size_t k = 0; k < 4; ++k) store(part + 2 * k, sum[k]);
  for (; p < n; ++p) part[0] += use[p] ? static_cast<double>(plane[p]) : 0.0;
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

}  // namespace

EdgeMapPlan plan_edge_maps(std::span<const float> planes, const std::vector<double>& e, std::size_t npix,
                           const std::vector<std::uint8_t>& selected, const PreEdgeParams& params, int threads, const ImagePart* part) {
  EdgeMapPlan plan;
  const std::size_t E = e.size();
  if (E < 6) return plan;
  // The scan-level ranges from the mean spectrum of the selected, complete pixels. Plane by
  // plane (contiguous reads): a pixel's spectrum is one float per plane, planes far apart.
  plan.use = selected;
  auto& use = plan.use;
  if (part && part->shared()) {  // an MPI rank's own rows only: its halo rows are its neighbours'
    std::fill(use.begin(), use.begin() + static_cast<std::ptrdiff_t>(std::min(part->begin, npix)), 0);
    std::fill(use.begin() + static_cast<std::ptrdiff_t>(std::min(part->end, npix)), use.end(), 0);
  }
  for (std::size_t j = 0; j < E; ++j) keep_measured(planes.data() + j * npix, use.data(), npix);
  // The mean spectrum: a full pass over the stack, the planes split over the threads.
  std::vector<double> sums(E + 1, 0.0);  // per energy, then the pixels
  for (auto u : use) sums[E] += u;
  auto plane_sums = [&](std::size_t j_begin, std::size_t j_end) {
    for (std::size_t j = j_begin; j < j_end; ++j) {
      sums[j] = used_sum(planes.data() + j * npix, use.data(), npix);
    }
  };
  parallel_ranges(E, threads > 1 && npix >= 65536 ? 2 : 1, 1,
                  [&](int, std::size_t j_begin, std::size_t j_end) { plane_sums(j_begin, j_end); });
  // Every part's sums: the mean differs from one process's in rounding only, and what the maps
  // take from it (E0, a measured energy; the ranges, rounded) does not.
  if (part && part->shared()) part->sum(sums);
  plan.n = static_cast<std::size_t>(sums[E]);
  if (plan.n == 0) return plan;
  std::vector<double> mean(sums.begin(), sums.begin() + static_cast<std::ptrdiff_t>(E));
  for (auto& v : mean) v /= static_cast<double>(plan.n);
  try {
    plan.ranges = pre_edge(e, mean, params);
  } catch (const std::exception&) {
    // too few points in a range: no edge maps for this scan
  }
  return plan;
}

EdgeMaps compute_edge_maps(const EdgeMapPlan& plan, std::span<const float> planes, const std::vector<double>& e, std::size_t npix,
                           int threads) {
  EdgeMaps m;
  m.e0.assign(npix, 0.f);
  m.half_step.assign(npix, 0.f);
  m.white_line.assign(npix, 0.f);
  m.edge_step.assign(npix, 0.f);
  const std::size_t E = e.size();
  if (!plan.ranges) return m;
  m.ranges = *plan.ranges;
  const double e0 = m.ranges.e0;
  std::optional<PixelNormalizer> normalizer;
  try {
    normalizer.emplace(e, m.ranges);
  } catch (const std::exception&) {
    return m;
  }

  // 1 / (energy span) of each smoothed derivative below: the same for every pixel.
  std::vector<double> inv_span(E, 0.0);
  for (std::size_t j = 2; j + 2 < E; ++j) inv_span[j] = 1.0 / (e[j + 2] + e[j + 1] - e[j - 1] - e[j - 2]);
  const EdgeBlocks blocks{planes.data(), npix, e, inv_span, *normalizer, e0, e0 + m.ranges.pre2, plan.use.data(), m};
  const auto kernel = edge_blocks_kernel();
  auto work = [&](std::size_t begin, std::size_t end) {
    std::vector<double> buffers(2 * kEdgeBlock * E + 6 * kEdgeBlock);
    kernel(blocks, begin, end, buffers.data());
  };
  parallel_ranges(npix, threads, 4096, [&](int, std::size_t begin, std::size_t end) { work(begin, end); });
  m.computed = plan.n;
  return m;
}

}  // namespace xanesd::science
