// bench_select: energy selection (science.md §5) timed and validated, for
// bench/run_select_benchmark.sh against scikit-learn's RFE on the same mixtures (see bench/README.md).
//
// Two libraries on a 75-point grid spanning the HXN range (the 73 HXN energies interpolated
// over their index, so the grid keeps the HXN's coarse pre/post-edge and ~1 eV edge spacing):
// the shipped 11-reference Fe library and the 65 shipped standards (raw μ, edge-normalized on
// loading). For each: the 3 normalization points, training and held-out mixtures
// (make_mixtures), then, best of --repeats after one warm-up, the time of rfe_select and of
// a_optimal_select, and the held-out NNLS fraction RMSE of both 16-energy subsets and of the
// full grid.
//
//   bench_select [--out DIR] [--repeats N] [--seed S]
//       --out DIR writes, per library L (11, 65): DIR/L_train_spectra.npy (N×E float64),
//       DIR/L_train_fractions.npy (N×K), DIR/L_meta.json (grid, candidate and normalization
//       indices, n_select, the C++ choices) for bench/sklearn_rfe_baseline.py.
//   bench_select --evaluate FILE [--seed S]
//       FILE: JSON {"11": {"name": [indices…], …}, "65": {…}} (sorted grid indices, the
//       normalization points included). Re-creates the same mixtures from the seed and prints
//       the held-out fraction RMSE of each subset with the same evaluator.
//
// Then (unless --only library) the equal-beam-time comparison (issue 11 part 3): a 155×160
// fluorescence scene (xanes-simulate's scene layout, seed 1, Magnetite, Goethite, Pyrite and
// Hematite_NP) on the 73 HXN energies, measured with Poisson counts at S = 5000 and 500 counts
// per unit edge step at the full grid's per-point dwell and fitted by the daemon's NNLS,
// Poisson-weighted (sim::DwellScene). Every selection (the dwell design, n = 13 and n auto;
// A-optimal and RFE at even dwell; 16 evenly spaced energies) is measured at the full grid's
// total time and at its per-point dwell, against the full grid at uniform dwell.
//   --only library|scene   run one part;  --scene-size RxC (default 155x160)
// Machine-readable results are the lines "RESULT key=value".
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "machine.hpp"
#include "npy.hpp"
#include "science/energy_selection.hpp"
#include "science/references.hpp"
#include "simulate/dwell_eval.hpp"

using namespace xanesd::science;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

const fs::path kRefs = fs::path(XANESD_SOURCE_DIR) / "config" / "references";

struct Library {
  std::string key;  // "11" or "65"
  std::vector<std::string> names;
  Eigen::MatrixXd refs;
};

std::vector<double> read_energies(const fs::path& p) {
  std::ifstream in(p);
  std::vector<double> e;
  for (double v; in >> v;) e.push_back(v);
  if (e.size() < 2) throw std::runtime_error("cannot read energies from " + p.string());
  return e;
}

// 75 energies spanning the HXN range with the HXN's density profile: the 73-point grid
// linearly interpolated at 75 evenly spaced fractional indices.
std::vector<double> grid75() {
  const auto hxn = read_energies(kRefs / "fe_k_energies_hxn.txt");
  std::vector<double> g;
  const double last = static_cast<double>(hxn.size() - 1);
  for (int i = 0; i < 75; ++i) {
    const double t = last * i / 74.0;
    const auto j = std::min(static_cast<std::size_t>(t), hxn.size() - 2);
    g.push_back(hxn[j] + (t - static_cast<double>(j)) * (hxn[j + 1] - hxn[j]));
  }
  return g;
}

Library load(const std::string& key, const std::vector<double>& grid) {
  std::vector<Reference> refs;
  double margin = 20;  // the daemon's default: the grid starts 14 eV below the library
  if (key == "11") {
    refs = load_reference_file(kRefs / "fe_k_library_normalized.nor");
  } else {
    for (const auto& f : fs::directory_iterator(kRefs / "fe_k_standards_raw")) refs.push_back(load_reference_file(f.path())[0]);
    std::sort(refs.begin(), refs.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    margin = 200;  // as test_accuracy: some standards stop short of the grid's ends (flat there once normalized)
  }
  Library lib{key, {}, resample(refs, grid, margin)};
  for (const auto& r : refs) lib.names.push_back(r.name);
  return lib;
}

template <class F>
double best_of(int repeats, F&& f) {
  f();  // warm-up
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

struct Setup {
  LcfModel model;
  std::vector<int> norm;
  Mixtures train, test;
};

// The same mixtures in every mode of this program, from --seed.
Setup setup(const Library& lib, const std::vector<double>& grid, const EnergySelectionOptions& o) {
  Setup s{make_lcf_model(lib.names, lib.refs, grid, o.background), normalization_points(grid, lib.refs, o.n_normalization), {}, {}};
  s.train = make_mixtures(s.model, o.n_train, o, o.seed);
  s.test = make_mixtures(s.model, o.n_test, o, o.seed + 1);
  return s;
}

std::string energies_of(const std::vector<int>& idx, const std::vector<double>& grid) {
  std::string out;
  char buf[32];
  for (int j : idx) std::snprintf(buf, sizeof buf, "%s%.1f", out.empty() ? "" : " ", grid[static_cast<std::size_t>(j)]), out += buf;
  return out;
}


// The equal-beam-time comparison on a simulated scene (see the top of this file).
void equal_time_scene(int rows, int cols, int repeats) {
  const auto hxn = read_energies(kRefs / "fe_k_energies_hxn.txt");
  const std::vector<std::string> species{"Magnetite", "Goethite", "Pyrite", "Hematite_NP"};
  std::vector<Reference> refs;
  for (const auto& name : species)
    for (const auto& r : load_reference_file(kRefs / "fe_k_library_normalized.nor"))
      if (r.name == name) refs.push_back(r);
  xanesd::sim::Params p;
  p.rows = rows, p.cols = cols, p.energies_eV = hxn, p.layout = xanesd::sim::Params::Layout::scene;
  p.background = 0.002, p.seed = 1;
  const xanesd::sim::DwellScene scene(refs, p);
  const int E = static_cast<int>(hxn.size());
  EnergySelectionOptions o;  // 13 + 3, σ 0.01 (only the held-out predictions depend on it)
  DwellSelection d, d_auto;
  // Timed: the design alone (DwellSelection::seconds, best of runs), not its held-out validation.
  double t_dwell = 1e300, t_auto = 1e300;
  for (int r = 0; r < std::max(1, repeats / 2); ++r) {
    d = select_dwell(scene.names, scene.refs, hxn, {}, o, DwellOptions{});
    d_auto = select_dwell(scene.names, scene.refs, hxn, {}, o, DwellOptions{}, 0.05);
    t_dwell = std::min(t_dwell, d.seconds), t_auto = std::min(t_auto, d_auto.seconds);
  }
  const auto model = make_lcf_model(scene.names, scene.refs, hxn, true);
  const auto norm = normalization_points(hxn, scene.refs, o.n_normalization);
  const auto train = make_mixtures(model, o.n_train, o, o.seed);
  std::vector<int> rfe, aopt;
  const double t_rfe = best_of(repeats, [&] { rfe = rfe_select(train, norm, o.n_select); });
  const double t_aopt = best_of(repeats, [&] { aopt = a_optimal_select(model, norm, o.n_select, o.noise * o.noise); });
  std::vector<int> all(static_cast<std::size_t>(E)), even;
  for (int j = 0; j < E; ++j) all[static_cast<std::size_t>(j)] = j;
  for (int i = 0; i < 16; ++i) even.push_back(static_cast<int>(std::lround(static_cast<double>(i) * (E - 1) / 15.0)));
  // The unrounded optimum on every energy: the bound (energies with < 0.01 % of the time left out).
  const auto Q = fraction_weight_matrix(2, default_compositions(static_cast<int>(species.size())));
  DwellOptions dopt;
  const auto v = variance_profile(scene.refs.rowwise().mean(), dopt);
  const auto opt_all = optimal_dwell(model, v, Q, all, norm, dopt);
  std::vector<int> opt_idx;
  std::vector<double> opt_w;
  for (std::size_t i = 0; i < all.size(); ++i)
    if (opt_all.weights[i] > 1e-4) opt_idx.push_back(all[i]), opt_w.push_back(opt_all.weights[i]);

  auto scaled = [](std::vector<double> w, double total) {
    double sum = 0;
    for (double x : w) sum += x;
    for (double& x : w) x *= total / sum;
    return w;
  };
  struct Row {
    std::string name, key;
    std::vector<int> idx;
    std::vector<double> weights;  // relative dwell
    double seconds;
  };
  const std::vector<Row> rows_ = {
      {"dwell design (a_optimal_dwell), n = 13", "dwell", d.indices, d.dwell_weights, t_dwell},
      {"  its energies at even dwell", "dwell_even", d.indices, std::vector<double>(d.indices.size(), 1.0), -1},
      {"dwell design, n auto (tolerance 5 %)", "dwell_auto", d_auto.indices, d_auto.dwell_weights, t_auto},
      {"A-optimal, even dwell (before)", "aopt", aopt, std::vector<double>(aopt.size(), 1.0), t_aopt},
      {"RFE, even dwell", "rfe", rfe, std::vector<double>(rfe.size(), 1.0), t_rfe},
      {"16 evenly spaced", "even", even, std::vector<double>(16, 1.0), -1},
      {"unrounded optimum (the bound)", "optimum", opt_idx, opt_w, -1},
  };
  std::printf("\nequal beam time: %d×%d scene (%s, %s, %s, %s), the %d HXN energies, Poisson counts, NNLS with background, "
              "Poisson-weighted\n", rows, cols, species[0].c_str(), species[1].c_str(), species[2].c_str(), species[3].c_str(), E);
  std::printf("  dwell design (eV × relative dwell):");
  for (std::size_t i = 0; i < d.indices.size(); ++i) std::printf(" %.1f×%.2f", d.energies_eV[i], d.dwell_weights[i]);
  std::printf("\n  n auto: %d + %d energies; linear prediction along the path (n: RMSE at equal time, σ = 0.01):", d_auto.n_select,
              o.n_normalization);
  for (const auto& [n, r] : d_auto.curve)
    if (n <= 20 || n % 10 == 0) std::printf(" %d:%.4f", n, r);
  std::printf("\n");
  for (const double S : {5000.0, 500.0}) {
    const auto tS = Clock::now();
    const double full = scene.fraction_rmse(all, std::vector<double>(all.size(), 1.0), S, true, 1);
    const double full_unw = scene.fraction_rmse(all, std::vector<double>(all.size(), 1.0), S, false, 1);
    std::printf("\n  S = %.0f counts per unit edge step: full grid (73, uniform dwell) fraction RMSE %.4f (unweighted fit %.4f)\n", S, full,
                full_unw);
    std::printf("  %-42s %8s %10s  %12s  %21s\n", "", "energies", "select", "equal time", "equal dwell per point");
    int seed = 2;
    for (const auto& r : rows_) {
      const double n = static_cast<double>(r.idx.size());
      const double eq_time = scene.fraction_rmse(r.idx, scaled(r.weights, E), S, true, static_cast<std::uint64_t>(seed++));
      const double eq_dwell = scene.fraction_rmse(r.idx, scaled(r.weights, n), S, true, static_cast<std::uint64_t>(seed++));
      char t[32] = "";
      if (r.seconds >= 0) std::snprintf(t, sizeof t, "%.1f ms", r.seconds * 1e3);
      std::printf("  %-42s %8zu %10s  %6.4f %5.2f×  %14.4f %5.2f×\n", r.name.c_str(), r.idx.size(), t, eq_time, eq_time / full, eq_dwell,
                  eq_dwell / full);
      std::printf("RESULT scene_%.0f_%s_equal_time_ratio=%.6g\nRESULT scene_%.0f_%s_equal_dwell_ratio=%.6g\n", S, r.key.c_str(),
                  eq_time / full, S, r.key.c_str(), eq_dwell / full);
    }
    std::printf("RESULT scene_%.0f_full_rmse=%.6g\n", S, full);
    std::printf("  (%.1f s)\n", std::chrono::duration<double>(Clock::now() - tS).count());
  }
}

}  // namespace

int main(int argc, char** argv) try {
  fs::path out_dir, evaluate;
  int repeats = 5;
  std::string only;
  int scene_rows = 155, scene_cols = 160;
  EnergySelectionOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--out") out_dir = next();
    else if (a == "--evaluate") evaluate = next();
    else if (a == "--repeats") repeats = std::stoi(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--only") only = next();
    else if (a == "--scene-size") {
      const auto v = next();
      const auto x = v.find('x');
      if (x == std::string::npos) throw std::runtime_error("--scene-size wants RxC, e.g. 155x160");
      scene_rows = std::stoi(v.substr(0, x)), scene_cols = std::stoi(v.substr(x + 1));
    }
    else if (a == "-h" || a == "--help") {
      std::printf("usage: bench_select [--out DIR] [--repeats N] [--seed S] [--only library|scene] [--scene-size RxC] | --evaluate FILE [--seed S]\n");
      return 0;
    } else throw std::runtime_error("unknown option '" + a + "'");
  }
  if (repeats < 1) throw std::runtime_error("--repeats must be ≥ 1");
  const auto grid = grid75();

  if (!evaluate.empty()) {
    std::ifstream in(evaluate);
    const auto j = nlohmann::json::parse(in);
    for (const auto& [key, subsets] : j.items()) {
      const auto lib = load(key, grid);
      const auto s = setup(lib, grid, o);
      for (const auto& [name, idx] : subsets.items()) {
        const auto indices = idx.get<std::vector<int>>();
        int failed = 0;
        const double rmse = fraction_rmse(s.model, indices, s.test, &failed);
        std::printf("%s references, %-14s %zu energies: held-out fraction RMSE %.4f%s\n", key.c_str(), name.c_str(), indices.size(),
                    rmse, failed ? " (some fits failed)" : "");
        std::printf("RESULT eval_%s_%s_rmse=%.6g\n", key.c_str(), name.c_str(), rmse);
      }
    }
    return 0;
  }

  std::printf("== bench_select: %d CPUs (%s), %s RAM; Eigen %d.%d.%d\n", xanesd::bench::nproc(), xanesd::bench::cpu_model().c_str(),
              xanesd::bench::mem_total().c_str(), EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
  std::printf("== grid: 75 energies %.2f–%.2f eV (HXN range and spacing profile); %d training, %d held-out mixtures, σ = %g, "
              "seed %llu; %d + %d energies; best of %d\n",
              grid.front(), grid.back(), o.n_train, o.n_test, o.noise, static_cast<unsigned long long>(o.seed), o.n_select,
              o.n_normalization, repeats);
  if (!out_dir.empty()) fs::create_directories(out_dir);
  if (only != "scene")
  for (const std::string key : {"11", "65"}) {
    const auto t_load = Clock::now();
    const auto lib = load(key, grid);
    const auto s = setup(lib, grid, o);
    const double gen_s = std::chrono::duration<double>(Clock::now() - t_load).count();
    std::vector<int> rfe, aopt;
    const double t_rfe = best_of(repeats, [&] { rfe = rfe_select(s.train, s.norm, o.n_select); });
    const double t_aopt = best_of(repeats, [&] { aopt = a_optimal_select(s.model, s.norm, o.n_select, std::max(o.noise * o.noise, 1e-8)); });
    std::vector<int> all(grid.size());
    for (std::size_t j = 0; j < all.size(); ++j) all[j] = static_cast<int>(j);
    const auto t_eval = Clock::now();
    const double full = fraction_rmse(s.model, all, s.test), e_rfe = fraction_rmse(s.model, rfe, s.test),
                 e_aopt = fraction_rmse(s.model, aopt, s.test);
    const double eval_s = std::chrono::duration<double>(Clock::now() - t_eval).count();
    std::printf("\n%s references (%s … %s): loading + mixtures %.2f s, held-out evaluation (3 × %d NNLS fits) %.2f s\n", key.c_str(),
                lib.names.front().c_str(), lib.names.back().c_str(), gen_s, o.n_test, eval_s);
    std::printf("  RFE        %8.2f ms   fraction RMSE %.4f (%.2f× full grid)\n    %s\n", t_rfe * 1e3, e_rfe, e_rfe / full,
                energies_of(rfe, grid).c_str());
    std::printf("  A-optimal  %8.2f ms   fraction RMSE %.4f (%.2f× full grid)\n    %s\n", t_aopt * 1e3, e_aopt, e_aopt / full,
                energies_of(aopt, grid).c_str());
    std::printf("  full grid (75)         fraction RMSE %.4f\n", full);
    std::printf("RESULT cxx_%s_rfe_s=%.6g\nRESULT cxx_%s_aopt_s=%.6g\nRESULT cxx_%s_full_rmse=%.6g\n", key.c_str(), t_rfe, key.c_str(),
                t_aopt, key.c_str(), full);
    std::printf("RESULT cxx_%s_rfe_rmse=%.6g\nRESULT cxx_%s_aopt_rmse=%.6g\n", key.c_str(), e_rfe, key.c_str(), e_aopt);
    if (!out_dir.empty()) {
      xanesd::bench::write_npy(out_dir / (key + "_train_spectra.npy"), s.train.spectra);
      xanesd::bench::write_npy(out_dir / (key + "_train_fractions.npy"), s.train.fractions);
      std::vector<int> cand;
      for (int j : all)
        if (!std::binary_search(s.norm.begin(), s.norm.end(), j)) cand.push_back(j);
      const nlohmann::json meta = {{"grid_eV", grid},        {"names", lib.names},     {"candidates", cand},
                                   {"normalization", s.norm}, {"n_select", o.n_select}, {"seed", o.seed},
                                   {"cxx_rfe", rfe},          {"cxx_a_optimal", aopt}};
      std::ofstream(out_dir / (key + "_meta.json")) << meta.dump(1);
    }
  }
  if (only != "library") equal_time_scene(scene_rows, scene_cols, repeats);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_select: %s\n", e.what());
  return 1;
}
