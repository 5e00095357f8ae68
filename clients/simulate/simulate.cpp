#include "simulate/simulate.hpp"

#include <optional>
#include <cmath>
#include <fstream>
#include <random>

#include "store/h5.hpp"

namespace xanesd::sim {

namespace {

// Fractions at normalized position (u, v) ∈ [0,1]²: four regions — pure species 0, pure
// species 1, a 50/50 mixture of 1 and 2, and a left-to-right gradient between species 0 and
// the last one — so segmentation and LCF both have something to find.
std::vector<double> fractions_at(double u, double v, int K) {
  std::vector<double> f(static_cast<std::size_t>(K), 0.0);
  if (K == 1) return {1.0};
  const auto last = static_cast<std::size_t>(K - 1);
  if (v < 0.5 && u < 0.5) f[0] = 1.0;
  else if (v < 0.5) f[1] = 1.0;
  else if (u < 0.4 && K >= 3) f[1] = 0.5, f[2] = 0.5;
  else {
    const double g = std::clamp((u - 0.0) / 1.0, 0.0, 1.0);
    f[0] = 1.0 - g;
    f[last] += g;
  }
  return f;
}

// Domains layout: Voronoi blobs around seeded points, each of one of four compositions
// (pure 0, pure 1, 50/50 of 1 and 2, 70/30 of 0 and the last species). Returns the class 1..4.
int domain_at(double u, double v, const std::vector<std::pair<double, double>>& seeds) {
  std::size_t best = 0;
  double bd = 1e300;
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    const double d = (u - seeds[i].first) * (u - seeds[i].first) + (v - seeds[i].second) * (v - seeds[i].second);
    if (d < bd) bd = d, best = i;
  }
  return static_cast<int>(best % 4) + 1;
}

std::vector<double> domain_fractions(int domain, int K) {
  std::vector<double> f(static_cast<std::size_t>(K), 0.0);
  const auto last = static_cast<std::size_t>(K - 1);
  switch (K == 1 ? 1 : domain) {
    case 1: f[0] = 1.0; break;
    case 2: f[1] = 1.0; break;
    case 3: f[1] += 0.5, f[K >= 3 ? 2 : 0] += 0.5; break;
    default: f[0] += 0.7, f[last] += 0.3; break;
  }
  return f;
}

// Scene layout: Voronoi domains, each of a dominant species d (every species dominates at least
// one domain when there are enough) drifting smoothly toward species d+1 (0 to 35 % across
// the image, a different direction per domain), a thin disk (a tenth of the thickness) and
// a one-pixel-wide vertical stripe of pure species d+2 through the middle.
struct SceneLayout {
  struct Domain {
    double u, v, du, dv, phase;
    int species;
  };
  std::vector<Domain> domains;
  double thin_u = 0, thin_v = 0, thin_r = 0;
  int K = 1;

  SceneLayout(int K_, int n, std::uint64_t seed) : K(K_) {
    std::mt19937_64 g(seed ^ 0x5ce7eULL);
    std::uniform_real_distribution<double> U(0.0, 1.0);
    for (int i = 0; i < n; ++i)
      domains.push_back({0.08 + 0.84 * U(g), 0.08 + 0.84 * U(g), U(g) * 2 - 1, U(g) * 2 - 1, 6.28 * U(g), i % K});
    thin_u = 0.25 + 0.5 * U(g), thin_v = 0.25 + 0.5 * U(g), thin_r = 0.1;
  }
  const Domain& domain_at(double u, double v) const {
    std::size_t best = 0;
    double bd = 1e300;
    for (std::size_t i = 0; i < domains.size(); ++i) {
      const double d = (u - domains[i].u) * (u - domains[i].u) + (v - domains[i].v) * (v - domains[i].v);
      if (d < bd) bd = d, best = i;
    }
    return domains[best];
  }
  // Fractions and the dominant species at (u, v); on the stripe, the stripe's species.
  std::vector<double> fractions(double u, double v, bool on_stripe, int& dominant) const {
    std::vector<double> f(static_cast<std::size_t>(K), 0.0);
    const Domain& d = domain_at(u, v);
    dominant = on_stripe ? (d.species + 2) % K : d.species;
    if (on_stripe || K == 1) {
      f[static_cast<std::size_t>(dominant)] = 1.0;
      return f;
    }
    const double g = 0.175 * (1.0 + std::sin(3.0 * (d.du * u + d.dv * v) + d.phase));  // 0..0.35
    f[static_cast<std::size_t>(d.species)] = 1.0 - g;
    f[static_cast<std::size_t>((d.species + 1) % K)] += g;
    return f;
  }
  double thickness_factor(double u, double v) const {
    return (u - thin_u) * (u - thin_u) + (v - thin_v) * (v - thin_v) < thin_r * thin_r ? 0.1 : 1.0;
  }
};

}  // namespace

double signal_scale(const Params& p) {
  if (p.mode == protocol::Mode::transmission) return 1.0;
  return p.counts * p.detector_gain / (p.i0_units > 0 ? p.i0_units : p.counts);
}

Scan simulate(const std::vector<science::Reference>& refs, const Params& p) {
  Scan s;
  s.params = p;
  const std::size_t P = s.pixels(), E = p.energies_eV.size(), K = refs.size();
  for (const auto& r : refs) s.reference_names.push_back(r.name);
  // Wide margin: simulation holds reference end values, as the daemon does within its margin.
  const Eigen::MatrixXd R = science::resample(refs, p.energies_eV, 1e9);
  const double e0 = p.energies_eV.empty() ? 0 : p.energies_eV[E / 2];

  s.fractions.assign(K * P, 0.f);
  s.thickness.assign(P, 0.f);
  s.xrf.assign(P, 0.f);
  std::vector<std::pair<double, double>> seeds;
  if (p.layout == Params::Layout::domains) {
    std::mt19937_64 g(p.seed ^ 0x5eedULL);
    for (int i = 0; i < 8; ++i) seeds.emplace_back(static_cast<double>(g() % 1000) / 1000.0, static_cast<double>(g() % 1000) / 1000.0);
    s.domains.assign(P, 0);
  }
  const SceneLayout scene(static_cast<int>(K), p.scene_domains, p.seed);
  if (p.layout == Params::Layout::scene) s.domains.assign(P, 0), s.stripe.assign(P, 0);
  const int stripe_col = p.cols / 2 + p.cols / 9;
  for (int r = 0; r < p.rows; ++r)
    for (int c = 0; c < p.cols; ++c) {
      const std::size_t px = static_cast<std::size_t>(r) * p.cols + c;
      const double u = (c + 0.5) / p.cols, v = (r + 0.5) / p.rows;
      const bool border = p.empty_border && (r < p.rows / 16 || c < p.cols / 16 || r >= p.rows - p.rows / 16 ||
                                             c >= p.cols - p.cols / 16);
      std::vector<double> f;
      double thin = 1.0;
      if (p.layout == Params::Layout::scene) {
        const bool on_stripe = c == stripe_col && r >= p.rows / 5 && r < p.rows - p.rows / 5;
        int dominant = 0;
        f = scene.fractions(u, v, on_stripe, dominant);
        thin = on_stripe ? 1.0 : scene.thickness_factor(u, v);
        if (!border) s.domains[px] = static_cast<std::uint8_t>(dominant + 1), s.stripe[px] = on_stripe;
      } else if (p.layout == Params::Layout::domains) {
        const int d = domain_at(u, v, seeds);
        if (!border) s.domains[px] = static_cast<std::uint8_t>(d);
        f = domain_fractions(d, static_cast<int>(K));
      } else {
        f = fractions_at(u, v, static_cast<int>(K));
      }
      for (std::size_t k = 0; k < K; ++k) s.fractions[k * P + px] = border ? 0.f : static_cast<float>(f[k]);
      // Thickness: smooth hills between 0.3 and 1 of the maximum.
      const double t = 0.65 + 0.35 * std::sin(6.0 * u + 1.0) * std::cos(4.0 * v);
      s.thickness[px] = border ? 0.f : static_cast<float>(p.max_thickness * t * thin);
    }

  std::mt19937_64 rng(p.seed);
  // Recorded counts: the detector's gain times Poisson photon counts.
  auto poisson = [&](double mean) -> float {
    if (!p.noise) return static_cast<float>(p.detector_gain * mean);
    if (mean <= 0) return 0.f;
    return static_cast<float>(p.detector_gain * static_cast<double>(std::poisson_distribution<long long>(mean)(rng)));
  };
  // beam[e]: expected counts per unit signal at energy e; the recorded I0 is the same relative
  // intensity in the monitor's own units.
  std::vector<double> beam(E);
  s.i0.resize(E);
  const double i0_units = p.i0_units > 0 ? p.i0_units : p.counts;
  for (std::size_t e = 0; e < E; ++e) {  // slow drift plus a ripple, as storage-ring I0 does
    const double x = E > 1 ? static_cast<double>(e) / static_cast<double>(E - 1) : 0.0;
    const double rel = 1.0 - p.i0_drift * x + 0.3 * p.i0_drift * std::sin(17.0 * x);
    beam[e] = p.counts * rel;
    s.i0[e] = i0_units * rel;
  }
  s.counts.assign(E * P, 0.f);
  const bool trans = p.mode == protocol::Mode::transmission;
  if (trans) {
    s.flat.assign(E * P, 0.f);
    if (p.dark > 0) s.dark.assign(P, static_cast<float>(p.detector_gain * p.dark));
  }
  for (std::size_t e = 0; e < E; ++e) {
    const double de = (p.energies_eV[e] - e0) / 100.0;
    for (std::size_t px = 0; px < P; ++px) {
      double mix = 0;
      for (std::size_t k = 0; k < K; ++k) mix += s.fractions[k * P + px] * R(static_cast<Eigen::Index>(e), static_cast<Eigen::Index>(k));
      const double signal = s.thickness[px] * mix;
      if (trans) {
        // Beam profile across the field of view, times I0 drift; substrate absorbs a little.
        const double profile = beam[e] * (0.8 + 0.2 * std::cos(3.0 * static_cast<double>(px % p.cols) / p.cols));
        const double mu = p.background * (1.0 - 0.5 * de) + signal;
        s.flat[e * P + px] = poisson(profile + p.dark);
        s.counts[e * P + px] = poisson(profile * std::exp(-mu) + p.dark);
      } else {
        const double y = p.background * (1.0 + 0.5 * de) + signal;
        s.counts[e * P + px] = poisson(beam[e] * std::max(0.0, y));
      }
    }
  }
  const double tmax = std::max(1e-9, p.max_thickness);
  for (std::size_t px = 0; px < P; ++px) s.xrf[px] = poisson(1000.0 * s.thickness[px] / tmax + 20.0);
  return s;
}

protocol::StartMsg start_message(const Scan& s, const std::string& scan_id) {
  protocol::StartMsg start;
  start.scan_id = scan_id;
  start.rows = s.params.rows, start.cols = s.params.cols;
  start.energies_eV = s.params.energies_eV;
  start.mode = s.params.mode;
  if (!s.dark.empty()) start.dark = protocol::Array::from<float>("dark", s.dark, {start.rows, start.cols});
  if (!s.xrf.empty()) start.xrf_channels = {"Fe"};
  return start;
}

protocol::FrameMsg frame_message(const Scan& s, const std::string& scan_id, std::size_t e) {
  const std::size_t P = s.pixels();
  const std::int64_t R = s.params.rows, C = s.params.cols;
  protocol::FrameMsg f;
  f.scan_id = scan_id;
  f.seq = static_cast<std::int64_t>(e);
  f.energy_index = static_cast<int>(e);
  f.energy_eV = s.params.energies_eV[e];
  f.counts = protocol::Array::from<float>("counts", std::span<const float>(&s.counts[e * P], P), {R, C});
  if (s.params.mode == protocol::Mode::fluorescence) f.i0_scalar = s.i0[e];
  else f.flat = protocol::Array::from<float>("flat", std::span<const float>(&s.flat[e * P], P), {R, C});
  if (e == 0 && !s.xrf.empty()) f.xrf = protocol::Array::from<float>("xrf", s.xrf, {1, R, C});
  return f;
}

void write_scan_file(const Scan& s, const std::filesystem::path& path) {
  using hs = std::vector<hsize_t>;
  const auto E = static_cast<hsize_t>(s.params.energies_eV.size());
  const auto R = static_cast<hsize_t>(s.params.rows), C = static_cast<hsize_t>(s.params.cols);
  const auto Z = static_cast<hsize_t>(std::max(1, s.params.slices));
  if (R % Z != 0) throw std::invalid_argument("the image's rows must be a multiple of the slices");
  // A per-pixel array's shape, after `lead` (energies, references): rows × cols, or Z × Y × X.
  auto pixels = [&](std::optional<hsize_t> lead = std::nullopt) {
    hs d = Z > 1 ? hs{Z, R / Z, C} : hs{R, C};
    if (lead) d.insert(d.begin(), *lead);
    return d;
  };
  auto f = h5::create_file(path);
  h5::attr_string(f, "mode", protocol::to_string(s.params.mode));
  h5::attr_string(f, "creator", "xanes-simulate");
  h5::write(f, "energy", s.params.energies_eV);
  auto raw = h5::create_group(f, "raw");
  h5::write(raw, "counts", s.counts.data(), pixels(E));
  if (s.params.mode == protocol::Mode::fluorescence) {
    h5::write(raw, "i0", s.i0);
  } else {
    h5::write(raw, "flat", s.flat.data(), pixels(E));
    if (!s.dark.empty()) h5::write(raw, "dark", s.dark.data(), pixels());
  }
  auto xrf = h5::create_group(f, "xrf");
  h5::write(xrf, "Fe", s.xrf.data(), pixels());
  auto truth = h5::create_group(f, "truth");
  h5::write(truth, "fractions", s.fractions.data(), pixels(s.reference_names.size()));
  h5::write(truth, "thickness", s.thickness.data(), pixels());
  h5::write_strings(truth, "reference_names", s.reference_names);
  if (!s.domains.empty()) h5::write(truth, "domains", s.domains.data(), pixels());
  if (!s.stripe.empty()) h5::write(truth, "stripe", s.stripe.data(), pixels());
}

std::vector<double> read_energies_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open energies file '" + path.string() + "'");
  std::vector<double> e;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    e.push_back(std::stod(line));
  }
  if (e.empty()) throw std::runtime_error("energies file '" + path.string() + "' is empty");
  if (*std::max_element(e.begin(), e.end()) < 100.0)
    for (auto& v : e) v *= 1000.0;  // keV
  return e;
}

}  // namespace xanesd::sim
