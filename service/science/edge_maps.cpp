#include "science/edge_maps.hpp"
#include "science/parallel.hpp"

#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include <Eigen/Dense>

namespace xanesd::science {

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
  auto coefficients = [&](const Projector& pr, double* c) {
    const auto n = pr.P.rows();
    for (Eigen::Index i = 0; i < n; ++i) {
      double v = 0;
      for (std::size_t j = 0; j < pr.idx.size(); ++j) v += pr.P(i, static_cast<Eigen::Index>(j)) * y[pr.idx[j]];
      c[i] = v;
    }
  };
  double pre[2], post[3];
  coefficients(pre_, pre);
  coefficients(post_, post);
  const double step = post[0] - pre[0];  // both polynomials at E0
  if (!(step > 0)) return step;
  const double inv = 1.0 / step;
  for (std::size_t j = 0; j < de_.size(); ++j) norm[j] = (y[j] - pre[0] - pre[1] * de_[j]) * inv;
  return step;
}

EdgeMaps compute_edge_maps(std::span<const float> planes, const std::vector<double>& e, std::size_t npix,
                           const std::vector<std::uint8_t>& selected, const PreEdgeParams& params, int threads) {
  EdgeMaps m;
  m.e0.assign(npix, 0.f);
  m.half_step.assign(npix, 0.f);
  m.white_line.assign(npix, 0.f);
  m.edge_step.assign(npix, 0.f);
  const std::size_t E = e.size();
  if (E < 6) return m;
  // The scan-level ranges from the mean spectrum of the selected, complete pixels. Plane by
  // plane (contiguous reads): a pixel's spectrum is one float per plane, planes far apart.
  std::vector<std::uint8_t> use(selected);
  for (std::size_t j = 0; j < E; ++j) {
    const float* plane = planes.data() + j * npix;
    for (std::size_t p = 0; p < npix; ++p) use[p] &= !std::isnan(plane[p]);
  }
  std::size_t n = 0;
  for (auto u : use) n += u;
  if (n == 0) return m;
  // The mean spectrum: a full pass over the stack, so branch-free with 8 partial sums (one
  // long dependent chain of additions is latency-bound) and the planes split over the threads.
  std::vector<double> mean(E, 0.0);
  auto plane_sums = [&](std::size_t j_begin, std::size_t j_end) {
    for (std::size_t j = j_begin; j < j_end; ++j) {
      const float* plane = planes.data() + j * npix;
      double part[8] = {};
      std::size_t p = 0;
      for (; p + 8 <= npix; p += 8)
        for (std::size_t k = 0; k < 8; ++k) part[k] += use[p + k] ? static_cast<double>(plane[p + k]) : 0.0;
      for (; p < npix; ++p) part[0] += use[p] ? static_cast<double>(plane[p]) : 0.0;
      mean[j] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    }
  };
  if (threads > 1 && npix >= 65536) {
    std::jthread other(plane_sums, E / 2, E);
    plane_sums(0, E / 2);
  } else {
    plane_sums(0, E);
  }
  for (auto& v : mean) v /= static_cast<double>(n);
  try {
    m.ranges = pre_edge(e, mean, params);
  } catch (const std::exception&) {
    return m;  // too few points in a range: no edge maps for this scan
  }
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
  auto work = [&](std::size_t begin, std::size_t end) {
    constexpr std::size_t kBlock = 256;  // pixels copied plane by plane, then one by one
    std::vector<double> block(kBlock * E), norm(E);
    for (std::size_t p0 = begin; p0 < end; p0 += kBlock) {
      const std::size_t nb = std::min(kBlock, end - p0);
      for (std::size_t j = 0; j < E; ++j) {
        const float* plane = planes.data() + j * npix + p0;
        for (std::size_t i = 0; i < nb; ++i) block[i * E + j] = plane[i];
      }
      for (std::size_t i = 0; i < nb; ++i) {
        const std::size_t p = p0 + i;
        if (!use[p]) continue;
        const double* y = block.data() + i * E;
        const double step = normalizer->normalize(y, norm.data());
        if (!(step > 0)) continue;  // no edge in this pixel
        // E0: steepest rise of a 3-point smoothed spectrum (noise makes raw differences jumpy).
        double best = -INFINITY, pe0 = e0;
        for (std::size_t j = 2; j + 2 < E; ++j) {
          const double d = ((norm[j + 1] + norm[j + 2]) - (norm[j - 1] + norm[j - 2])) * inv_span[j];
          if (d > best) best = d, pe0 = e[j];
        }
        double half = 0;
        for (std::size_t j = 1; j < E; ++j)
          if (e[j] >= e0 + m.ranges.pre2 && norm[j] >= 0.5 && norm[j - 1] < 0.5) {
            half = e[j - 1] + (0.5 - norm[j - 1]) / (norm[j] - norm[j - 1]) * (e[j] - e[j - 1]);
            break;
          }
        m.e0[p] = static_cast<float>(pe0);
        m.half_step[p] = static_cast<float>(half);
        m.white_line[p] = static_cast<float>(white_line_energy(e, norm, pe0));
        m.edge_step[p] = static_cast<float>(step);
      }
    }
  };
  parallel_ranges(npix, threads, 4096, [&](int, std::size_t begin, std::size_t end) { work(begin, end); });
  m.computed = n;
  return m;
}

}  // namespace xanesd::science
