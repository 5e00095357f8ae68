// bench_accuracy: how well xanesd's maps recover a known truth, and how well it chooses the
// model (references, domains, energies), against baselines computed in the same run (issues 10
// part 4 and 11 part 5; bench/run_accuracy_benchmark.sh adds scikit-learn's KMeans and prints
// the Markdown table; see bench/README.md). A benchmark, not a test: it asserts nothing.
//
// Scenes: the simulator's scene layout (sim::scene_params: Voronoi domains of a dominant species
// drifting toward a second, a thin disk, a one-pixel stripe, empty border; background 0.002; I0
// in ion-chamber units 1e5) from the shipped 11-reference Fe library on the 73 HXN energies, at
// S = 5000 and 500 counts per unit edge step: the issues' 4 species (seed 1), a 3-species and a
// 5-species variant (other species, seeds 2 and 3). Every xanesd row feeds the scan to the
// daemon's own Scan in-process (start and frame messages, Scan::apply, solve_changed,
// update_reference_selection, as the pipeline's final cycle and `xanesd fit`), configured by
// config keys (make_config), so its numbers are the daemon's.
//
// Accuracy rows:
//   nnls_true  per-pixel NNLS told the true references (references.select=false, true refs only):
//              the per-pixel baseline every ratio is taken to
//   blur       each energy image blurred by a Gaussian (σ scanned over --sigmas, the best by
//              fraction RMSE reported), then the same per-pixel NNLS
//   oracle     per-pixel NNLS with the true model and the true variances: weights 1/Var(y) =
//              I0²/E[counts] from the noise-free truth, the simulator's own references (single
//              thread; σ from the exact weights)
//   default    xanesd's default config, the whole 11-reference library loaded (image-level
//              reference selection on)
//   poisson    the same with fit.weighting=poisson
// Model-choice rows (references): nnls_all (the 11 references in every pixel,
// references.select=false), lasso_all (fit.method=lasso, references.select=false), plus default
// and nnls_true above; "selected" = the default's selected set equals the true species.
// Columns: fraction RMSE of the true species over material pixels (truth thickness > 0), the
// same within 2 px of a change of truth.domains and on the one-pixel stripe, the spread
// std((estimate − truth)/σ) over material pixels the mask keeps, time (fit path: frames in,
// solve, selection; 2 threads).
// Domains: the default scan's segmentation (Scan::update_segments, automatic k): k and ARI
// against the dominant-species map; the segmenter again with segment.sample = every pixel, whose
// features go to --out for bench/sklearn_scene_baseline.py (KMeans(n_clusters = true k)).
// Energies: the daemon's select_energies (select_energies_request, source in_use, on the
// default scan) against 16 evenly spaced energies, refitted on the same scene by
// sim::DwellScene (Poisson counts at S, NNLS with background, Poisson-weighted): fraction RMSE at
// the full grid's per-point dwell and at its total beam time, / the full grid.
// Random scenes: --random scenes of 3–5 species drawn from the library (random seeds, --random-size
// px square) at both S: the share where the default's selected set is the true set, and the
// default's fraction RMSE / the fit told the true references.
//
//   bench_accuracy [--out DIR] [--counts 5000,500] [--size 155x160] [--sigmas 0.4,0.5,...,1.5]
//                  [--random 24] [--random-size 64] [--only scenes|random] [--threads 2] [--set KEY=VALUE ...]
// --set applies a config override to every xanesd row (e.g. a new default to be measured).
// Machine-readable results are the lines "RESULT key=value".
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "commands/select_energies.hpp"
#include "args.hpp"
#include "machine.hpp"
#include "run_scan.hpp"
#include "scan/scan.hpp"
#include "scene_features.hpp"
#include "science/lcf.hpp"
#include "science/random.hpp"
#include "science/references.hpp"
#include "science/segmentation.hpp"
#include "simulate/dwell_eval.hpp"
#include "simulate/scene_truth.hpp"
#include "simulate/simulate.hpp"

using namespace xanesd;
using namespace xanesd::science;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

const fs::path kRefs = fs::path(XANESD_SOURCE_DIR) / "config" / "references";

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Options {
  fs::path out;
  std::vector<int> counts = {5000, 500};
  int rows = 155, cols = 160;
  std::vector<double> sigmas = {0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5};
  int random = 24, random_size = 64;
  bool scenes = true, random_part = true;
  int threads = 2;
  std::vector<std::string> overrides;  // --set, applied to every xanesd row
};

struct SceneDef {
  std::string key;
  std::vector<std::string> species;
  std::uint64_t seed;
};

const std::vector<SceneDef> kScenes = {
    {"k4", sim::scene_species(), 1},
    {"k3", {"Goethite", "LiFe(II)PO4", "Pyrite"}, 2},
    {"k5", {"Magnetite", "HFO", "FeIII_sulfate", "Fe3P", "Pyrite"}, 3},
};

// The pixel sets the columns are scored on.
struct Sets {
  std::vector<std::uint8_t> edge, stripe;
};

struct Scores {
  double rmse = 0, edge = 0, stripe = 0, z = 0, seconds = 0;
};

Scores score(std::span<const float> fractions, std::span<const float> sigma, const std::vector<std::string>& names,
             const std::vector<std::uint8_t>& valid, const sim::Scan& truth, const Sets& sets, double seconds) {
  return {sim::fraction_rmse(fractions, names, truth), sim::fraction_rmse(fractions, names, truth, &sets.edge),
          sim::fraction_rmse(fractions, names, truth, &sets.stripe), sim::zscore_spread(fractions, sigma, names, truth, valid),
          seconds};
}

Scores score(const Scan& scan, const sim::Scan& truth, const Sets& sets, double seconds) {
  const auto& m = scan.fit()->maps();
  return score(m.fractions, m.fraction_sigma, scan.fit()->model().reference_names, scan.mask().valid, truth, sets, seconds);
}

Config config(const Options& o, std::vector<std::string> overrides) {
  overrides.insert(overrides.begin(), o.overrides.begin(), o.overrides.end());
  return make_config(nlohmann::json::object(), overrides, "/");
}

// A xanesd run as the pipeline's final cycle (and `xanesd fit`) does it, timed: frames in,
// solve, image-level reference selection (refits when the set changes).
std::unique_ptr<Scan> run_xanesd(const sim::Scan& truth, const std::vector<Reference>& refs, const Config& cfg, int threads,
                                 double& seconds) {
  const auto t0 = Clock::now();
  auto scan = bench::run_scan(truth, refs, scan_settings(cfg), threads);
  protocol::StopMsg stop;
  stop.scan_id = "bench";
  scan->stop(stop);  // the final maps: the modes that apply at stop (fit.weighting=auto) apply
  scan->solve_changed(threads);
  scan->update_reference_selection(threads);
  scan->solve_changed(threads);
  seconds = since(t0);
  return scan;
}

// Each energy image blurred by a Gaussian of σ px (truncated at 3σ, renormalized at the image
// border): the counts, since I0 is one number per energy.
sim::Scan blurred(const sim::Scan& s, double sigma) {
  sim::Scan b = s;
  const int R = s.params.rows, C = s.params.cols, rad = static_cast<int>(std::ceil(3 * sigma));
  std::vector<double> w(static_cast<std::size_t>(rad) + 1);
  for (int i = 0; i <= rad; ++i) w[static_cast<std::size_t>(i)] = std::exp(-0.5 * i * i / (sigma * sigma));
  const std::size_t P = s.pixels();
  std::vector<double> tmp(P);
  for (std::size_t e = 0; e < s.params.energies_eV.size(); ++e) {
    float* x = &b.counts[e * P];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        double num = 0, den = 0;
        for (int d = -rad; d <= rad; ++d)
          if (c + d >= 0 && c + d < C) num += w[std::abs(d)] * x[r * C + c + d], den += w[std::abs(d)];
        tmp[static_cast<std::size_t>(r) * C + c] = num / den;
      }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        double num = 0, den = 0;
        for (int d = -rad; d <= rad; ++d)
          if (r + d >= 0 && r + d < R) num += w[std::abs(d)] * tmp[static_cast<std::size_t>(r + d) * C + c], den += w[std::abs(d)];
        x[r * C + c] = static_cast<float>(num / den);
      }
  }
  return b;
}

// The Poisson-weighted oracle: per material pixel, NNLS with the background on the true model
// (the simulator's references, resampled as it does), weighted by the true inverse variances of
// y = counts/I0: I0²/E[counts], E[counts] from the noise-free scan `clean`. σ of the fractions
// from (XᵀWX)⁻¹ on the active set, not rescaled by χ² (the variances are known).
Scores oracle(const sim::Scan& truth, const sim::Scan& clean, const std::vector<Reference>& refs, const Sets& sets) {
  const auto t0 = Clock::now();
  const auto& grid = truth.params.energies_eV;
  const auto model = make_lcf_model(truth.reference_names, resample(refs, grid, 1e9), grid, true);
  const Eigen::MatrixXd& X = model.X;
  const auto E = static_cast<Eigen::Index>(grid.size());
  const int K = model.n_refs();
  const std::size_t P = truth.pixels();
  SolveOptions opt;
  opt.n_free = model.n_background();
  std::vector<float> f(static_cast<std::size_t>(K) * P, 0.f), sig(static_cast<std::size_t>(K) * P, 0.f);
  std::vector<std::uint8_t> valid(P, 0);
  Eigen::VectorXd y(E), w(E);
  for (std::size_t p = 0; p < P; ++p) {
    if (truth.thickness[p] <= 0) continue;
    for (Eigen::Index e = 0; e < E; ++e) {
      const auto i = static_cast<std::size_t>(e) * P + p;
      const double i0 = truth.i0[static_cast<std::size_t>(e)];
      y(e) = truth.counts[i] / i0;
      w(e) = i0 * i0 / std::max(1e-9, static_cast<double>(clean.counts[i]));
    }
    const Eigen::VectorXd wy = w.cwiseProduct(y);
    auto r = solve(X.transpose() * w.asDiagonal() * X, X.transpose() * wy, y.dot(wy), static_cast<int>(E), opt);
    if (!r.ok) continue;
    const double dof = static_cast<double>(E - r.n_active), s2 = dof > 0 ? r.chi2 / dof : 0.0;
    if (s2 > 0) r.cov /= s2;
    const double T = r.theta.tail(K).sum();
    if (!(T > 0)) continue;
    const Eigen::VectorXd fs_ = fraction_sigma(r, opt.n_free);
    for (int k = 0; k < K; ++k) {
      f[static_cast<std::size_t>(k) * P + p] = static_cast<float>(r.theta(opt.n_free + k) / T);
      sig[static_cast<std::size_t>(k) * P + p] = static_cast<float>(fs_(k));
    }
    valid[p] = 1;
  }
  return score(f, sig, truth.reference_names, valid, truth, sets, since(t0));
}

std::string joined(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : "+") + x;
  return s;
}

void result(const std::string& key, double v) { std::printf("RESULT %s=%.6g\n", key.c_str(), v); }

void print_row(const std::string& prefix, const std::string& row, const std::string& label, const Scores& s, const Scores& base,
               const std::string& note = "") {
  std::printf("  %-52s %7.4f %5.2f×  %7.4f %5.2f×  %7.4f %5.2f×  %6.2f  %7.3f s  %s\n", label.c_str(), s.rmse, s.rmse / base.rmse,
              s.edge, s.edge / base.edge, s.stripe, s.stripe / base.stripe, s.z, s.seconds, note.c_str());
  const std::string k = prefix + "_" + row + "_";
  result(k + "rmse", s.rmse), result(k + "edge", s.edge), result(k + "stripe", s.stripe), result(k + "z", s.z), result(k + "s", s.seconds);
}

void scene_part(const Options& o, const std::vector<Reference>& library, const std::vector<double>& hxn) {
  for (const auto& def : kScenes) {
    const auto refs = sim::pick_references(library, def.species);
    const int K = static_cast<int>(refs.size());
    for (const int S : o.counts) {
      const auto tS = Clock::now();
      const auto p = sim::scene_params(o.rows, o.cols, hxn, S, def.seed);
      const auto truth = sim::simulate(refs, p);
      auto pc = p;
      pc.noise = false;
      const auto clean = sim::simulate(refs, pc);
      const Sets sets{sim::edge_band(truth, 2), truth.stripe};
      const std::string prefix = "acc_" + def.key + "_c" + std::to_string(S);
      std::size_t n_mat = 0, n_edge = 0, n_stripe = 0;
      for (std::size_t q = 0; q < truth.pixels(); ++q)
        n_mat += truth.thickness[q] > 0, n_edge += sets.edge[q], n_stripe += truth.stripe[q] && truth.thickness[q] > 0;
      std::printf("\n== scene %s: %s, seed %llu, %d×%d, S = %d counts per unit edge step (%zu material px, %zu within 2 px of a "
                  "domain change, %zu on the stripe)\n",
                  def.key.c_str(), joined(def.species).c_str(), static_cast<unsigned long long>(def.seed), o.rows, o.cols, S, n_mat,
                  n_edge, n_stripe);
      std::printf("  %-52s %14s  %14s  %14s  %6s  %9s\n", "", "fraction RMSE", "edge ±2 px", "stripe", "z std", "time");

      // Per-pixel NNLS told the true references: the baseline.
      const Config c_true = config(o, {"references.select=false", "fit.spatial=false", "fit.weighting=none"});
      double t = 0;
      const auto s_true = run_xanesd(truth, refs, c_true, o.threads, t);
      const Scores base = score(*s_true, truth, sets, t);
      print_row(prefix, "nnls_true", "per-pixel NNLS, true refs (baseline)", base, base);

      // Gaussian blur + the same NNLS, best σ.
      Scores best;
      double best_sigma = 0;
      std::string curve;
      for (const double sg : o.sigmas) {
        const auto t0 = Clock::now();
        const auto b = blurred(truth, sg);
        double tf = 0;
        const auto sb = run_xanesd(b, refs, c_true, o.threads, tf);
        const Scores sc = score(*sb, truth, sets, since(t0));
        char buf[32];
        std::snprintf(buf, sizeof buf, " %.1f:%.4f", sg, sc.rmse);
        curve += buf;
        if (best_sigma == 0 || sc.rmse < best.rmse) best = sc, best_sigma = sg;
      }
      char note[96];
      std::snprintf(note, sizeof note, "best σ = %.1f px%s", best_sigma,
                    best_sigma == *std::min_element(o.sigmas.begin(), o.sigmas.end()) ? " (the smallest scanned)" : "");
      print_row(prefix, "blur", "Gaussian blur + per-pixel NNLS, true refs", best, base, note);
      std::printf("    σ → RMSE:%s\n", curve.c_str());
      result(prefix + "_blur_sigma", best_sigma);

      print_row(prefix, "oracle", "Poisson-weighted oracle (true model, variances)", oracle(truth, clean, refs, sets), base,
                "1 thread");

      // xanesd as shipped: the whole library, image-level selection.
      const Config c_def = config(o, {});
      const auto s_def = run_xanesd(truth, library, c_def, o.threads, t);
      const Scores d = score(*s_def, truth, sets, t);
      const auto* sel = s_def->reference_selection();
      const auto chosen = sel ? sel->selected_names() : std::vector<std::string>{};
      const bool right = joined(chosen) == joined(def.species);
      print_row(prefix, "default", "xanesd default (11 refs, selection)", d, base,
                std::string("selected ") + (chosen.empty() ? "none" : joined(chosen)) + (right ? " (the true set)" : " (NOT the true set)"));
      result(prefix + "_default_true_set", right);

      const Config c_poi = config(o, {"fit.weighting=poisson", "fit.spatial=false"});
      const auto s_poi = run_xanesd(truth, library, c_poi, o.threads, t);
      const auto* sel_p = s_poi->reference_selection();
      print_row(prefix, "poisson", "xanesd per-pixel, fit.spatial=false fit.weighting=poisson (11 refs, selection)", score(*s_poi, truth, sets, t), base,
                "selected " + (sel_p ? joined(sel_p->selected_names()) : std::string("none")));

      // Model choice, references: the 11 references in every pixel, NNLS and positive LASSO.
      const auto s_all = run_xanesd(truth, library, config(o, {"references.select=false", "fit.spatial=false", "fit.weighting=none"}), o.threads, t);
      print_row(prefix, "nnls_all", "per-pixel NNLS, all 11 refs", score(*s_all, truth, sets, t), base);
      const auto s_lasso = run_xanesd(truth, library, config(o, {"references.select=false", "fit.method=lasso", "fit.spatial=false", "fit.weighting=none"}), o.threads, t);
      print_row(prefix, "lasso_all", "per-pixel positive LASSO, all 11 refs", score(*s_lasso, truth, sets, t), base);

      // Domains: the default scan's segmentation (automatic k), then again with every pixel
      // sampled for scikit-learn's KMeans on the same features.
      auto t0 = Clock::now();
      s_def->update_segments(o.threads);
      const double t_seg = since(t0);
      const auto* seg = s_def->segmentation();
      const int k = seg ? static_cast<int>(seg->clusters.size()) : 0;
      const double ari = seg ? sim::ari_on_material(seg->labels, truth.domains) : 0.0;
      auto all_px = scan_settings(c_def).segment;
      all_px.sample = static_cast<int>(truth.pixels());
      OnlineSegmenter seg_all(all_px);
      seg_all.update(s_def->segment_input(o.threads));
      const double ari_all = sim::ari_on_material(seg_all.result().labels, truth.domains);
      std::printf("  domains: xanesd automatic k = %d (true %d), ARI %.4f (%.3f s); with every pixel sampled k = %zu, ARI %.4f\n", k, K,
                  ari, t_seg, seg_all.result().clusters.size(), ari_all);
      const std::string skey = "scene_" + def.key + "_c" + std::to_string(S);
      result("seg_" + skey + "_k", k), result("seg_" + skey + "_k_true", K), result("seg_" + skey + "_ari", ari);
      result("seg_" + skey + "_ari_all", ari_all), result("seg_" + skey + "_s", t_seg);
      if (!o.out.empty())
        bench::write_scene_features(o.out, skey, seg_all, truth, K,
                                    {{"counts", S}, {"seed", def.seed}, {"kmeans_seed", all_px.seed}, {"ari_auto", ari_all}});

      // Energies: the daemon's select_energies (source in_use) against 16 evenly spaced,
      // refitted on this scene at S.
      t0 = Clock::now();
      const auto reply = select_energies_request({.source = "in_use"}, library, s_def.get(), c_def);
      const double t_sel = since(t0);
      if (!reply.value("ok", false)) {
        std::printf("  energies: select_energies refused: %s\n", reply.value("error", std::string("?")).c_str());
      } else {
        const sim::DwellScene ds(refs, p);
        const int E = static_cast<int>(hxn.size());
        std::vector<int> all(static_cast<std::size_t>(E)), even;
        for (int j = 0; j < E; ++j) all[static_cast<std::size_t>(j)] = j;
        for (int i = 0; i < 16; ++i) even.push_back(static_cast<int>(std::lround(static_cast<double>(i) * (E - 1) / 15.0)));
        const auto idx = reply.at("indices").get<std::vector<int>>();
        const auto dw = reply.at("dwell_weights").get<std::vector<double>>();
        const auto dw_time = reply.at("dwell_equal_time").get<std::vector<double>>();
        const double full = ds.fraction_rmse(all, std::vector<double>(all.size(), 1.0), S, true, 1);
        const double ev = ds.fraction_rmse(even, std::vector<double>(16, 1.0), S, true, 2);
        const double ev_t = ds.fraction_rmse(even, std::vector<double>(16, E / 16.0), S, true, 3);
        const double se = ds.fraction_rmse(idx, dw, S, true, 4);
        const double se_t = ds.fraction_rmse(idx, dw_time, S, true, 5);
        std::printf("  energies (refit on this scene, NNLS Poisson-weighted, true refs): full grid (%d) %.4f; 16 evenly spaced %.4f "
                    "(%.2f×) / at equal time %.4f (%.2f×); select_energies (%zu, dwell design for %s, %.0f ms) %.4f (%.2f×) / at "
                    "equal time %.4f (%.2f×)\n",
                    E, full, ev, ev / full, ev_t, ev_t / full, idx.size(), joined(reply.at("reference_names").get<std::vector<std::string>>()).c_str(),
                    t_sel * 1e3, se, se / full, se_t, se_t / full);
        const std::string ek = "en_" + def.key + "_c" + std::to_string(S) + "_";
        result(ek + "full", full), result(ek + "even", ev), result(ek + "even_time", ev_t), result(ek + "select", se);
        result(ek + "select_time", se_t), result(ek + "n", static_cast<double>(idx.size())), result(ek + "select_s", t_sel);
      }
      std::printf("  (%.1f s)\n", since(tS));
    }
  }
}

// Random 3–5-species scenes from the library: is the selected set the true one?
void random_part(const Options& o, const std::vector<Reference>& library, const std::vector<double>& hxn) {
  std::printf("\n== random scenes: %d × (3–5 species drawn from the %zu-reference library, random seed), %d×%d px, xanesd default "
              "(11 refs loaded) vs told the true refs\n",
              o.random, library.size(), o.random_size, o.random_size);
  Rng g(20261129);
  struct Draw {
    std::vector<std::string> species;
    std::uint64_t seed;
  };
  std::vector<Draw> draws;
  for (int i = 0; i < o.random; ++i) {
    const int K = 3 + g.below(3);
    std::vector<std::string> names;
    for (const auto& r : library) names.push_back(r.name);
    for (int j = 0; j < K; ++j) std::swap(names[static_cast<std::size_t>(j)], names[static_cast<std::size_t>(j + g.below(static_cast<int>(names.size()) - j))]);
    names.resize(static_cast<std::size_t>(K));
    draws.push_back({names, 1 + g.below(std::uint64_t{1000000})});
  }
  for (const int S : o.counts) {
    int right = 0;
    std::vector<double> ratios;
    for (const auto& d : draws) {
      const auto refs = sim::pick_references(library, d.species);
      const auto truth = sim::simulate(refs, sim::scene_params(o.random_size, o.random_size, hxn, S, d.seed));
      double t = 0;
      const auto s_def = run_xanesd(truth, library, config(o, {}), o.threads, t);
      const auto s_true = run_xanesd(truth, refs, config(o, {"references.select=false"}), o.threads, t);
      const auto* sel = s_def->reference_selection();
      const auto chosen = sel ? sel->selected_names() : std::vector<std::string>{};
      const bool ok = joined(chosen) == joined(d.species);
      right += ok;
      const double e_def = sim::fraction_rmse(s_def->fit()->maps().fractions, s_def->fit()->model().reference_names, truth);
      const double e_true = sim::fraction_rmse(s_true->fit()->maps().fractions, s_true->fit()->model().reference_names, truth);
      ratios.push_back(e_def / e_true);
      std::printf("  S %5d seed %7llu  true %-52s %s  RMSE %.4f / true refs %.4f = %.2f×%s%s\n", S, static_cast<unsigned long long>(d.seed),
                  joined(d.species).c_str(), ok ? "selected: same " : "selected: OTHER", e_def, e_true, e_def / e_true,
                  ok ? "" : "  selected ", ok ? "" : joined(chosen).c_str());
    }
    std::sort(ratios.begin(), ratios.end());
    const double share = static_cast<double>(right) / static_cast<double>(draws.size());
    std::printf("  S = %d: true set selected in %d of %zu scenes (%.0f %%); RMSE / true refs: median %.2f×, worst %.2f×\n", S, right,
                draws.size(), 100 * share, ratios[ratios.size() / 2], ratios.back());
    const std::string k = "rnd_c" + std::to_string(S) + "_";
    result(k + "share", share), result(k + "n", static_cast<double>(draws.size())), result(k + "ratio_median", ratios[ratios.size() / 2]);
    result(k + "ratio_worst", ratios.back());
  }
}

int run(int argc, char** argv) {
  Options o;
  for (bench::Args args(argc, argv); args.next();) {
    const std::string& a = args.option();
    if (a == "--out") o.out = args.value();
    else if (a == "--counts") o.counts = bench::parse_ints(args.value());
    else if (a == "--size") {
      const auto v = args.value();
      if (std::sscanf(v.c_str(), "%dx%d", &o.rows, &o.cols) != 2 || o.rows < 16 || o.cols < 16)
        throw std::runtime_error("--size takes RxC (each ≥ 16)");
    } else if (a == "--sigmas") o.sigmas = bench::parse_numbers(args.value());
    else if (a == "--random") o.random = std::stoi(args.value());
    else if (a == "--random-size") o.random_size = std::stoi(args.value());
    else if (a == "--only") {
      const auto v = args.value();
      if (v != "scenes" && v != "random") throw std::runtime_error("--only takes scenes or random");
      o.scenes = v == "scenes", o.random_part = v == "random";
    } else if (a == "--threads") o.threads = std::stoi(args.value());
    else if (a == "--set") o.overrides.push_back(args.value());
    else if (a == "-h" || a == "--help") {
      std::printf(
          "usage: bench_accuracy [--out DIR] [--counts 5000,500] [--size 155x160] [--sigmas 0.4,0.5,...,1.5]\n"
          "                      [--random 24] [--random-size 64] [--only scenes|random] [--threads 2] [--set KEY=VALUE ...]\n");
      return 0;
    } else args.unknown();
  }
  if (o.threads < 1 || o.random < 1 || o.random_size < 16) throw std::runtime_error("--threads ≥ 1, --random ≥ 1, --random-size ≥ 16");
  std::printf("== bench_accuracy: %d CPUs (%s), %s RAM; Eigen %d.%d.%d\n", bench::nproc(), bench::cpu_model().c_str(),
              bench::mem_total().c_str(), EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
  for (const auto& s : o.overrides) std::printf("   --set %s on every xanesd row\n", s.c_str());
  if (!o.out.empty()) fs::create_directories(o.out);
  const auto library = load_reference_file(kRefs / "fe_k_library_normalized.nor");
  const auto hxn = sim::read_energies_file(kRefs / "fe_k_energies_hxn.txt");
  if (o.scenes) scene_part(o, library, hxn);
  if (o.random_part) random_part(o, library, hxn);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return xanesd::bench::run_main("bench_accuracy", [&] { return run(argc, argv); });
}
