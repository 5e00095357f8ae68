// Scientific accuracy against known truth: synthetic scans built from the shipped real
// references (Poisson noise, I0 drift, background, the real non-uniform HXN grid), run through
// the daemon's own scan code (validation, normalization, incremental fit, mask) in-process.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>

#include "config/config.hpp"
#include "scan/scan.hpp"
#include "simulate/simulate.hpp"
#include "science_support.hpp"

using namespace xanesd;
using namespace xanesd::science;
using test::default_settings;
using test::hxn_scan;
using test::pick;
using test::run_scan;

namespace {

struct Errors {
  double fraction_mae = 0, thickness_rel = 0;
};

// Over material pixels the mask keeps; references of the fit in the truth's order first.
Errors errors(const Scan& scan, const sim::Scan& truth) {
  const auto& maps = scan.fit()->maps();
  const std::size_t P = truth.pixels(), K = truth.reference_names.size();
  double fe = 0, te = 0;
  std::size_t nf = 0, nt = 0;
  for (std::size_t p = 0; p < P; ++p) {
    if (truth.thickness[p] <= 0 || !scan.mask().valid[p]) continue;
    for (std::size_t k = 0; k < K; ++k) fe += std::abs(maps.fractions[k * P + p] - truth.fractions[k * P + p]), ++nf;
    te += std::abs(maps.thickness[p] - truth.thickness[p]) / truth.thickness[p], ++nt;
  }
  return {fe / static_cast<double>(nf), te / static_cast<double>(nt)};
}

}  // namespace

TEST_CASE("fluorescence at two count levels on the real HXN grid: fractions and thickness recovered") {
  const auto refs = pick(load_reference_file(test::fe_library()), {"Magnetite", "Goethite", "Pyrite"});
  auto p = hxn_scan(64, 64);
  for (const auto& [counts, max_mae, max_trel] : {std::tuple{2000.0, 0.03, 0.02}, std::tuple{200.0, 0.08, 0.05}}) {
    p.counts = counts;
    p.seed = static_cast<std::uint64_t>(counts);
    const auto truth = sim::simulate(refs, p);
    const auto scan = run_scan(truth, refs, default_settings());
    const auto err = errors(*scan, truth);
    MESSAGE(counts << " counts: fraction MAE " << err.fraction_mae << ", thickness mean rel. error " << err.thickness_rel);
    CHECK(err.fraction_mae < max_mae);
    CHECK(err.thickness_rel < max_trel);
    // NNLS: no negative fraction anywhere.
    const auto& f = scan->fit()->maps().fractions;
    CHECK(*std::min_element(f.begin(), f.end()) >= 0.f);
  }
}

TEST_CASE("transmission with flat field and dark current, Ni K-edge references in keV on the TXM grid") {
  std::vector<Reference> refs;
  for (const char* f : {"ref_NiO.txt", "ref_LiNiO2.txt"}) {
    auto r = load_reference_file(test::refs_dir() / "ni_k" / f);
    refs.insert(refs.end(), r.begin(), r.end());
  }
  sim::Params p;
  p.rows = 48, p.cols = 64;
  p.energies_eV = sim::read_energies_file(test::refs_dir() / "ni_k" / "energies_kev_txm.txt");
  p.mode = protocol::Mode::transmission;
  p.counts = 20000;
  p.dark = 100;
  p.max_thickness = 1.5;
  const auto truth = sim::simulate(refs, p);
  const auto scan = run_scan(truth, refs, default_settings());
  const auto err = errors(*scan, truth);
  MESSAGE("Ni transmission: fraction MAE " << err.fraction_mae << ", thickness mean rel. error " << err.thickness_rel);
  CHECK(err.fraction_mae < 0.03);
  CHECK(err.thickness_rel < 0.03);
}

TEST_CASE("the thickness mask removes the empty border and keeps the material") {
  const auto refs = pick(load_reference_file(test::fe_library()), {"Magnetite", "Goethite", "Pyrite"});
  auto p = hxn_scan(64, 64);
  p.counts = 500;
  const auto truth = sim::simulate(refs, p);
  const auto scan = run_scan(truth, refs, default_settings());
  std::size_t border = 0, border_masked = 0, material = 0, material_kept = 0;
  for (std::size_t px = 0; px < truth.pixels(); ++px) {
    if (truth.thickness[px] <= 0) ++border, border_masked += !scan->mask().valid[px];
    else ++material, material_kept += scan->mask().valid[px];
  }
  CHECK(border_masked >= border * 95 / 100);
  CHECK(material_kept >= material * 99 / 100);
  // Masked pixels publish fraction 0; the residual mask can be added on top.
  auto settings = default_settings();
  settings.mask.residual_max = 1e-9;  // nothing fits that well
  const auto strict = run_scan(truth, refs, settings);
  CHECK(strict->mask().n_valid == 0);
}

namespace {

struct SupportScore {
  int exact = 0, all_found = 0;
  double false_refs = 0, fraction_mae = 0;
};

// Mixtures of 3–4 references of a library, with noise at the level of a cluster-mean spectrum;
// scores how often the fit picks exactly the true references (fraction > 0.05).
SupportScore score_support(const std::vector<Reference>& refs, FitMethod method, double noise_sd, int trials) {
  const auto E = sim::read_energies_file(test::hxn_energies());
  std::vector<std::string> names;
  for (const auto& r : refs) names.push_back(r.name);
  const auto model = make_lcf_model(names, resample(refs, E, 200), E, true);
  const int K = model.n_refs(), M = model.n_params();
  const Eigen::MatrixXd G = model.X.transpose() * model.X;
  std::mt19937 rng(42);
  std::normal_distribution<double> noise(0, noise_sd);
  std::uniform_real_distribution<double> u(0, 1);
  SupportScore sc;
  for (int t = 0; t < trials; ++t) {
    std::vector<int> idx(static_cast<std::size_t>(K));
    std::iota(idx.begin(), idx.end(), 0);
    std::shuffle(idx.begin(), idx.end(), rng);
    const int n = 3 + t % 2;
    Eigen::VectorXd theta = Eigen::VectorXd::Zero(M);
    theta(0) = 0.02, theta(1) = 0.005;
    double sum = 0;
    std::vector<double> f(static_cast<std::size_t>(n));
    for (auto& v : f) sum += (v = 0.15 + u(rng));
    for (int i = 0; i < n; ++i) theta(2 + idx[static_cast<std::size_t>(i)]) = f[static_cast<std::size_t>(i)] / sum;
    Eigen::VectorXd y = model.X * theta;
    for (auto& v : y) v += noise(rng);
    SolveOptions opt;
    opt.method = method;
    const auto r = solve(G, model.X.transpose() * y, y.squaredNorm(), static_cast<int>(E.size()), opt);
    REQUIRE(r.ok);
    const double T = r.theta.tail(K).sum();
    int found = 0, extra = 0;
    for (int k = 0; k < K; ++k) {
      const double fk = r.theta(2 + k) / T;
      const bool present = theta(2 + k) > 0;
      found += fk > 0.05 && present;
      extra += fk > 0.05 && !present;
      sc.fraction_mae += std::abs(fk - theta(2 + k)) / (K * trials);
    }
    sc.all_found += found == n;
    sc.exact += found == n && extra == 0;
    sc.false_refs += static_cast<double>(extra) / trials;
  }
  return sc;
}

}  // namespace

TEST_CASE("positive LASSO picks the references present, out of the 11-reference library and the 65 standards") {
  const auto lib = load_reference_file(test::fe_library());
  const auto lasso11 = score_support(lib, FitMethod::lasso, 0.001, 200);
  MESSAGE("11 references: exact support " << lasso11.exact << "/200, false refs " << lasso11.false_refs);
  CHECK(lasso11.exact >= 190);

  std::vector<Reference> standards;
  for (const auto& f : std::filesystem::directory_iterator(test::refs_dir() / "fe_k_standards_raw"))
    standards.push_back(load_reference_file(f.path())[0]);
  std::sort(standards.begin(), standards.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  REQUIRE(standards.size() == 65);
  const auto lasso65 = score_support(standards, FitMethod::lasso, 0.001, 200);
  const auto nnls65 = score_support(standards, FitMethod::nnls, 0.001, 200);
  MESSAGE("65 standards: LASSO exact support " << lasso65.exact << "/200 (all found " << lasso65.all_found
                                               << "), false refs " << lasso65.false_refs << ", MAE " << lasso65.fraction_mae
                                               << "; NNLS exact " << nnls65.exact << ", MAE " << nnls65.fraction_mae);
  CHECK(lasso65.all_found >= 170);
  CHECK(lasso65.exact >= 150);
  CHECK(lasso65.false_refs < 0.3);
  CHECK(lasso65.fraction_mae <= nnls65.fraction_mae);
}

TEST_CASE("edge maps tell an Fe(0)-like domain from an Fe(III) domain without references") {
  const auto refs = pick(load_reference_file(test::fe_library()), {"Fe3P", "Fe(III)PO4"});
  auto p = hxn_scan(48, 48);
  p.counts = 2000;
  auto median_in = [&](const std::vector<float>& map, int domain) {  // domain 0: left top, 1: right top
    std::vector<float> v;
    for (int r = 4; r < p.rows / 2 - 2; ++r)
      for (int c = (domain ? p.cols / 2 + 2 : 4); c < (domain ? p.cols - 4 : p.cols / 2 - 2); ++c)
        v.push_back(map[static_cast<std::size_t>(r * p.cols + c)]);
    std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
    return static_cast<double>(v[v.size() / 2]);
  };
  auto shift = [&](bool noise) {
    p.noise = noise;
    const auto truth = sim::simulate(refs, p);
    auto scan = run_scan(truth, refs, default_settings());
    scan->compute_edge_maps(2);
    REQUIRE(scan->edge_maps());
    const auto& m = *scan->edge_maps();
    CHECK(m.computed > 1000);
    return std::pair{median_in(m.half_step, 1) - median_in(m.half_step, 0), median_in(m.white_line, 1)};
  };
  const auto [clean_shift, clean_wl] = shift(false);
  const auto [noisy_shift, noisy_wl] = shift(true);
  MESSAGE("half-step edge shift Fe(III)PO4 − Fe3P: " << noisy_shift << " eV (noise-free " << clean_shift << " eV)");
  CHECK(clean_shift > 5.0);  // Fe(III) edges sit well above metallic/phosphide Fe
  CHECK(noisy_shift == doctest::Approx(clean_shift).epsilon(0.1));
  CHECK(noisy_wl == doctest::Approx(clean_wl).epsilon(1.5 / 7130));
}

TEST_CASE("Poisson weighting (maximum likelihood for counts) beats unweighted LCF at low counts") {
  const auto refs = pick(load_reference_file(test::fe_library()), {"Magnetite", "Goethite", "Pyrite"});
  auto p = hxn_scan(48, 48);
  p.background = 0.02;
  for (double counts : {30.0, 300.0}) {
    p.counts = counts;
    p.seed = 77;
    const auto truth = sim::simulate(refs, p);
    auto plain = default_settings();
    plain.weighting = ScanSettings::Weighting::none;
    plain.spatial.enabled = false;  // the per-pixel fits (with fit.spatial the fractions come from the spatial step)
    auto weighted = plain;
    weighted.weighting = ScanSettings::Weighting::poisson;
    const auto e_plain = errors(*run_scan(truth, refs, plain), truth);
    const auto e_weighted = errors(*run_scan(truth, refs, weighted), truth);
    MESSAGE(counts << " counts: fraction MAE unweighted " << e_plain.fraction_mae << ", Poisson-weighted "
                   << e_weighted.fraction_mae << "; thickness rel. error " << e_plain.thickness_rel << " vs "
                   << e_weighted.thickness_rel);
    CHECK(e_weighted.fraction_mae < e_plain.fraction_mae * 0.97);
    CHECK(e_weighted.thickness_rel < e_plain.thickness_rel * 0.9);
  }
}

namespace {

// Fraction RMSE of the truth's species over material pixels (truth thickness > 0), masked or
// not: the fit's reference named like each truth species, 0 where the fit lacks it.
double fraction_rmse(const Scan& scan, const sim::Scan& truth) {
  return sim::fraction_rmse(scan.fit()->maps().fractions, scan.fit()->model().reference_names, truth);
}

}  // namespace

// Property (docs/science.md, "I0 is not photons"): the unit of I0 and the gain of the detector
// are arbitrary, so nothing a user reads may depend on them. The same Poisson draws are
// recorded with I0 in units from 1e-6 to 1e6 of the nominal and counts times a gain from 1e-6
// to 1e6: fractions, their uncertainties, the mask and the R-factor must not move.
TEST_CASE("fractions, uncertainties and masks do not depend on the unit of I0 or the detector gain") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  struct Mode {
    const char* name;
    FitMethod method;
    bool poisson;
  };
  const Mode modes[] = {{"nnls", FitMethod::nnls, false},           {"nnls+poisson", FitMethod::nnls, true},
                        {"lsq", FitMethod::least_squares, false},    {"lsq+poisson", FitMethod::least_squares, true},
                        {"lasso", FitMethod::lasso, false},          {"lasso+poisson", FitMethod::lasso, true}};
  const auto nominal = test::scene_scan(40, 40, 500, 11);
  for (const auto& mode : modes) {
    auto settings = default_settings();
    settings.fit.method = mode.method;
    settings.weighting = mode.poisson ? ScanSettings::Weighting::poisson : ScanSettings::Weighting::none;
    const auto base_truth = sim::simulate(refs, nominal);
    const auto base = run_scan(base_truth, refs, settings);
    const auto& b = base->fit()->maps();
    for (double factor : {1e-6, 1e-3, 1e3, 1e6})
      for (bool gain : {false, true}) {
        auto p = nominal;
        if (gain) p.detector_gain = factor;
        else p.i0_units = nominal.i0_units * factor;
        const auto scan = run_scan(sim::simulate(refs, p), refs, settings);
        const auto& m = scan->fit()->maps();
        double df = 0, dsig = 0, drf = 0;
        const std::size_t P = base->pixels();
        for (std::size_t i = 0; i < b.fractions.size(); ++i) {
          if (!base->mask().valid[i % P]) continue;  // what users read: masked maps
          df = std::max(df, static_cast<double>(std::abs(m.fractions[i] - b.fractions[i])));
          dsig = std::max(dsig, std::abs(m.fraction_sigma[i] - b.fraction_sigma[i]) / (1e-3 + b.fraction_sigma[i]));
        }
        for (std::size_t i = 0; i < b.rfactor.size(); ++i)
          if (base->mask().valid[i]) drf = std::max(drf, std::abs(m.rfactor[i] - b.rfactor[i]) / (1e-6 + b.rfactor[i]));
        const std::string what = std::string(mode.name) + (gain ? ": detector gain " : ": I0 units x") + std::to_string(factor);
        INFO(what << ": max |Δf| " << df
                       << ", max rel. Δσ " << dsig << ", max rel. ΔR " << drf);
        CHECK(df < 2e-4);
        CHECK(dsig < 2e-3);
        CHECK(drf < 1e-3);
        CHECK(scan->mask().valid == base->mask().valid);
      }
  }
}

TEST_CASE("Poisson weighting is never worse than unweighted on the scenes, with an ion-chamber I0") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  for (double counts : {5000.0, 500.0}) {
    const auto truth = sim::simulate(refs, test::scene_scan(64, 64, counts, 3));
    auto plain = default_settings();
    plain.spatial.enabled = false;  // per-pixel fits: with fit.spatial the fractions come from the spatial step
    plain.weighting = ScanSettings::Weighting::none;
    auto weighted = plain;
    weighted.weighting = ScanSettings::Weighting::poisson;
    const double e_plain = fraction_rmse(*run_scan(truth, refs, plain), truth);
    const double e_weighted = fraction_rmse(*run_scan(truth, refs, weighted), truth);
    MESSAGE(counts << " counts, I0 in 1e5 units: fraction RMSE unweighted " << e_plain << ", Poisson " << e_weighted);
    CHECK(e_weighted <= e_plain);
  }
}

TEST_CASE("the default weighting: live maps unweighted, the final maps Poisson-weighted (as fit.weighting=poisson)") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  const auto truth = sim::simulate(refs, test::scene_scan(40, 40, 500, 4));
  auto poisson = default_settings();
  poisson.spatial.enabled = false;  // the per-pixel fits: with fit.spatial the fractions come from the spatial step
  poisson.weighting = ScanSettings::Weighting::poisson;
  auto none = poisson;
  none.weighting = ScanSettings::Weighting::none;
  auto by_default = poisson;
  by_default.weighting = default_settings().weighting;
  REQUIRE(default_settings().weighting == ScanSettings::Weighting::final_maps);
  auto live = run_scan(truth, refs, by_default);
  const auto unweighted = run_scan(truth, refs, none);
  CHECK(live->fit()->maps().fractions == unweighted->fit()->maps().fractions);  // while the scan runs
  test::finish_scan(*live);
  auto weighted = run_scan(truth, refs, poisson);
  test::finish_scan(*weighted);
  CHECK(live->fit()->maps().fractions == weighted->fit()->maps().fractions);
  CHECK(live->fit()->maps().fractions != unweighted->fit()->maps().fractions);
}

TEST_CASE("full frames folded in bulk give the maps of row blocks folded sample by sample, re-measurement and bad samples included") {
  const auto refs = pick(load_reference_file(test::fe_library()), {"Magnetite", "Goethite", "Pyrite"});
  const auto truth = sim::simulate(refs, hxn_scan(37, 41));
  auto settings = default_settings();
  settings.spatial.enabled = false;  // compare the per-pixel fits themselves
  settings.selection.enabled = false;
  Scan full(sim::start_message(truth, "s"), refs, settings), rows(sim::start_message(truth, "s"), refs, settings);
  const auto E = truth.params.energies_eV.size();
  const int R = truth.params.rows, C = truth.params.cols;
  std::int64_t full_seq = 0, rows_seq = 0;
  auto send = [&](std::size_t e, bool bad_sample) {
    auto f = sim::frame_message(truth, "s", e);
    const auto view = f.counts.native_view<float>();
    std::vector<float> counts(view.begin(), view.end());
    if (bad_sample) counts[5] = NAN;  // not stored, counted
    f.seq = full_seq++;
    f.counts = protocol::Array::from<float>("counts", std::span<const float>(counts), {R, C});
    const auto a = full.apply(f);
    // The same samples as two row blocks: the sample-by-sample path.
    std::size_t stored = 0, replaced = 0, nonfinite = 0;
    for (int r0 : {0, R / 2}) {
      const int n = r0 == 0 ? R / 2 : R - R / 2;
      auto g = sim::frame_message(truth, "s", e);
      g.seq = rows_seq++;
      if (r0 > 0) g.xrf.reset();
      g.region = {protocol::Region::Kind::rows, r0, n};
      if (g.xrf) {
        const auto x = g.xrf->native_view<float>();
        g.xrf = protocol::Array::from<float>("xrf", x.subspan(0, static_cast<std::size_t>(n) * C), {1, n, C});
      }
      g.counts = protocol::Array::from<float>(
          "counts", std::span<const float>(counts.data() + static_cast<std::size_t>(r0) * C, static_cast<std::size_t>(n) * C), {n, C});
      const auto b = rows.apply(g);
      REQUIRE(b.accepted);
      stored += b.samples_stored, replaced += b.samples_replaced, nonfinite += b.samples_nonfinite;
    }
    REQUIRE(a.accepted);
    CHECK(a.samples_stored == stored);
    CHECK(a.samples_replaced == replaced);
    CHECK(a.samples_nonfinite == nonfinite);
  };
  auto same_maps = [&] {
    CHECK(full.solve_changed(2) == rows.solve_changed(2));
    // Bit for bit (NaN where not measured: == on floats would call every such store different).
    REQUIRE(full.spectra().size() == rows.spectra().size());
    CHECK(std::memcmp(full.spectra().data(), rows.spectra().data(), full.spectra().size() * sizeof(float)) == 0);
    const auto &a = full.fit()->maps(), &b = rows.fit()->maps();
    CHECK(a.nenergies == b.nenergies);
    CHECK(a.fitted == b.fitted);
    int differ = 0;
    for (std::size_t i = 0; i < a.fractions.size(); ++i) differ += std::abs(a.fractions[i] - b.fractions[i]) > 1e-6f;
    for (std::size_t p = 0; p < a.thickness.size(); ++p)
      differ += std::abs(a.thickness[p] - b.thickness[p]) > 1e-6f * std::abs(b.thickness[p]) + 1e-12f;
    CHECK(differ == 0);
    CHECK(full.summary()["flagged_samples"] == rows.summary()["flagged_samples"]);
  };
  for (std::size_t e = 0; e < E / 2; ++e) send(e, e == 3);
  same_maps();  // a live cycle folds the pending planes
  for (std::size_t e = E / 2; e < E; ++e) send(e, false);
  send(E - 1, false);  // re-measured while its plane is pending: folded first, then replaced sample by sample
  send(3, false);       // the bad sample measured again: now stored
  same_maps();
  CHECK(full.fit()->maps().nenergies[5] == E);
  // status: the store is 4 bytes per sample (8 with the count scales Poisson weighting keeps)
  // and 4 per pixel per XRF channel; the whole is the store, the fit and the products.
  const auto memory = full.summary()["memory"];
  const bool scales = keeps_count_scales(settings, full.pixels());
  const auto P = static_cast<double>(full.pixels());
  const double store = memory["store"], fit = memory["fit"], products = memory["products"];
  const auto held = static_cast<double>(full.held_bytes());
  CHECK(store == doctest::Approx(P * ((scales ? 8.0 : 4.0) * static_cast<double>(E) + 4.0)));  // 1 XRF channel
  CHECK(memory["bytes"].get<double>() == doctest::Approx(store + fit + products));
  CHECK(memory["bytes_per_pixel_per_energy"].get<double>() == doctest::Approx((store + fit + products) / (P * static_cast<double>(E))));
  // The model follows what the scan allocates: its store, fit and edge maps (16 bytes per pixel
  // of the products) hold no more than it states, and not much less.
  full.compute_edge_maps(2);
  const auto held_now = static_cast<double>(full.held_bytes());
  CHECK(held <= store + fit);
  CHECK(held_now <= store + fit + 16 * P);
  CHECK(held_now >= 0.85 * (store + fit + 16 * P));
}

namespace {

// The same measured scan repeated ty × tx times: a larger scan of a periodic sample, every
// pixel of every copy recorded with the same counts (the same noise draw) as the original.
sim::Scan tiled(const sim::Scan& s, int ty, int tx) {
  sim::Scan t = s;
  const int R = s.params.rows, C = s.params.cols;
  t.params.rows = R * ty, t.params.cols = C * tx;
  const std::size_t P = s.pixels(), Pt = t.pixels();
  auto tile = [&](const auto& v) {
    std::decay_t<decltype(v)> out(v.size() / P * Pt);
    for (std::size_t plane = 0; plane < v.size() / P; ++plane)
      for (int r = 0; r < t.params.rows; ++r)
        for (int c = 0; c < t.params.cols; ++c)
          out[plane * Pt + static_cast<std::size_t>(r * t.params.cols + c)] =
              v[plane * P + static_cast<std::size_t>((r % R) * C + c % C)];
    return out;
  };
  t.counts = tile(s.counts), t.flat = tile(s.flat), t.dark = tile(s.dark);
  t.fractions = tile(s.fractions), t.thickness = tile(s.thickness), t.xrf = tile(s.xrf);
  t.domains = tile(s.domains), t.stripe = tile(s.stripe);
  return t;
}

}  // namespace

// Property: how much of a sample was scanned around a pixel is the user's choice, not the
// sample's; the chemistry shown at that pixel must not depend on it. One scene scan (the whole
// 11-reference library loaded, default config, the final cycle) and larger scans made of copies
// of it, the same counts in every copy: the same references are selected, and every pixel of
// the first copy farther from its edges than the spatial step reaches (window radius + pilot
// radius) gets the fractions and uncertainties it gets in the original scan; over the whole
// image the error against the truth stays the original's.
TEST_CASE("fractions do not depend on the scan size: a scene scanned alone or inside a larger scan of copies") {
  const auto library = load_reference_file(test::fe_library());
  const auto refs = pick(library, test::scene_species());
  auto params = test::scene_scan(28, 36, 1000, 21);
  params.empty_border = false;  // material up to the edges: the copies meet inside material
  const auto original = sim::simulate(refs, params);
  const auto settings = default_settings();
  const int reach = settings.spatial.radius + settings.spatial.pilot_radius;
  auto base = run_scan(original, library, settings);
  test::finish_scan(*base);
  const auto& b = base->fit()->maps();
  const auto base_names = base->fit()->model().reference_names;
  auto want = test::scene_species(), got = base_names;
  std::sort(want.begin(), want.end()), std::sort(got.begin(), got.end());
  REQUIRE(got == want);  // the selection found the scene's species in the original
  const double base_rmse = fraction_rmse(*base, original);
  const int R = original.params.rows, C = original.params.cols;
  const std::size_t P0 = original.pixels(), K = base_names.size();
  for (const auto& [ty, tx] : {std::pair{2, 1}, std::pair{1, 3}, std::pair{3, 2}}) {
    const auto big_truth = tiled(original, ty, tx);
    auto big = run_scan(big_truth, library, settings);
    test::finish_scan(*big);
    const std::string size = std::to_string(R * ty) + "x" + std::to_string(C * tx);
    REQUIRE_MESSAGE(big->fit()->model().reference_names == base_names, size << ": another reference set selected");
    const auto& m = big->fit()->maps();
    const std::size_t P = big->pixels();
    double df = 0, dsig = 0;
    std::size_t compared = 0;
    for (int r = reach; r < R - reach; ++r)
      for (int c = reach; c < C - reach; ++c) {
        const std::size_t p0 = static_cast<std::size_t>(r * C + c), p = static_cast<std::size_t>(r * C * tx + c);
        if (!base->mask().valid[p0] || !big->mask().valid[p]) continue;
        ++compared;
        for (std::size_t k = 0; k < K; ++k) {
          df = std::max(df, static_cast<double>(std::abs(m.fractions[k * P + p] - b.fractions[k * P0 + p0])));
          dsig = std::max(dsig, std::abs(m.fraction_sigma[k * P + p] - b.fraction_sigma[k * P0 + p0]) /
                                    (1e-3 + b.fraction_sigma[k * P0 + p0]));
        }
      }
    const double rmse = fraction_rmse(*big, big_truth);
    MESSAGE(size << ": " << compared << " inner pixels compared, max |Δf| " << df << ", max rel. Δσ " << dsig
                 << "; fraction RMSE " << rmse << " (original " << base_rmse << ")");
    CHECK(compared > P0 / 3);
    CHECK(df < 1e-5);
    CHECK(dsig < 1e-4);
    CHECK(std::abs(rmse - base_rmse) < 0.1 * base_rmse);
  }
}
