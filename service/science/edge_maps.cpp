#include "science/edge_maps.hpp"

#include <cmath>
#include <thread>

#include <Eigen/Dense>

namespace xanesd::science {

namespace {

// Least-squares projector onto polynomials of degree `deg` in (E − E0) over the energies in
// [lo, hi]: coefficients = P · y[idx]. Shared by every pixel (same energies).
struct Projector {
  std::vector<int> idx;
  Eigen::MatrixXd P;  // (deg+1) × |idx|
  double at(const Eigen::VectorXd& c, double de) const {
    double v = 0, p = 1;
    for (Eigen::Index i = 0; i < c.size(); ++i, p *= de) v += c(i) * p;
    return v;
  }
};

Projector make_projector(const std::vector<double>& e, double e0, double lo, double hi, int deg) {
  Projector pr;
  for (std::size_t i = 0; i < e.size(); ++i)
    if (e[i] >= lo && e[i] <= hi) pr.idx.push_back(static_cast<int>(i));
  Eigen::MatrixXd A(static_cast<Eigen::Index>(pr.idx.size()), deg + 1);
  for (std::size_t r = 0; r < pr.idx.size(); ++r) {
    double p = 1;
    for (int c = 0; c <= deg; ++c, p *= e[static_cast<std::size_t>(pr.idx[r])] - e0) A(static_cast<Eigen::Index>(r), c) = p;
  }
  pr.P = A.completeOrthogonalDecomposition().pseudoInverse();
  return pr;
}

}  // namespace

EdgeMaps compute_edge_maps(const std::vector<float>& planes, const std::vector<double>& e, std::size_t npix,
                           const std::vector<std::uint8_t>& selected, const PreEdgeParams& params, int threads) {
  EdgeMaps m;
  m.e0.assign(npix, 0.f);
  m.half_step.assign(npix, 0.f);
  m.white_line.assign(npix, 0.f);
  m.edge_step.assign(npix, 0.f);
  const std::size_t E = e.size();
  if (E < 6) return m;
  // The scan-level ranges from the mean spectrum of the selected, complete pixels.
  std::vector<double> mean(E, 0.0);
  std::size_t n = 0;
  auto complete = [&](std::size_t p) {
    if (!selected[p]) return false;
    for (std::size_t j = 0; j < E; ++j)
      if (std::isnan(planes[j * npix + p])) return false;
    return true;
  };
  std::vector<std::uint8_t> use(npix, 0);
  for (std::size_t p = 0; p < npix; ++p)
    if ((use[p] = complete(p))) {
      ++n;
      for (std::size_t j = 0; j < E; ++j) mean[j] += planes[j * npix + p];
    }
  if (n == 0) return m;
  for (auto& v : mean) v /= static_cast<double>(n);
  try {
    m.ranges = pre_edge(e, mean, params);
  } catch (const std::exception&) {
    return m;  // too few points in a range: no edge maps for this scan
  }
  const double e0 = m.ranges.e0;
  const auto pre = make_projector(e, e0, e0 + m.ranges.pre1, e0 + m.ranges.pre2, 1);
  const auto post = make_projector(e, e0, e0 + m.ranges.norm1, e0 + m.ranges.norm2, m.ranges.nnorm);

  auto work = [&](std::size_t begin, std::size_t end) {
    std::vector<double> y(E), norm(E);
    Eigen::VectorXd yp(static_cast<Eigen::Index>(pre.idx.size())), yq(static_cast<Eigen::Index>(post.idx.size()));
    for (std::size_t p = begin; p < end; ++p) {
      if (!use[p]) continue;
      for (std::size_t j = 0; j < E; ++j) y[j] = planes[j * npix + p];
      for (std::size_t i = 0; i < pre.idx.size(); ++i) yp(static_cast<Eigen::Index>(i)) = y[static_cast<std::size_t>(pre.idx[i])];
      for (std::size_t i = 0; i < post.idx.size(); ++i) yq(static_cast<Eigen::Index>(i)) = y[static_cast<std::size_t>(post.idx[i])];
      const Eigen::VectorXd cpre = pre.P * yp, cpost = post.P * yq;
      const double step = post.at(cpost, 0.0) - pre.at(cpre, 0.0);
      if (!(step > 0)) continue;  // no edge in this pixel
      for (std::size_t j = 0; j < E; ++j) norm[j] = (y[j] - pre.at(cpre, e[j] - e0)) / step;
      // E0: steepest rise of a 3-point smoothed spectrum (noise makes raw differences jumpy).
      double best = -INFINITY, pe0 = e0;
      for (std::size_t j = 2; j + 2 < E; ++j) {
        const double d = ((norm[j + 1] + norm[j + 2]) - (norm[j - 1] + norm[j - 2])) / (e[j + 2] + e[j + 1] - e[j - 1] - e[j - 2]);
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
  };
  const int nthreads = std::max(1, std::min<int>(threads, static_cast<int>(npix / 4096) + 1));
  {
    std::vector<std::jthread> pool;
    for (int t = 0; t < nthreads; ++t) pool.emplace_back(work, npix * static_cast<std::size_t>(t) / nthreads, npix * static_cast<std::size_t>(t + 1) / nthreads);
  }
  m.computed = n;
  return m;
}

}  // namespace xanesd::science
