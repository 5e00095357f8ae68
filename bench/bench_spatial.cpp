// bench_spatial: what fit.spatial adds to a publication cycle (bench/README.md).
// Part 1, the solve: a size×size image at `energies` of the HXN grid (Magnetite, Goethite,
// Pyrite, linear background: 5 parameters), a smooth mixture with Gaussian noise, folded into
// IncrementalLcf energy-major (not timed); then, best of --repeats, solve_changed() after all
// pixels changed (what the final cycle and every energy-major cycle does), spatial step off/on.
// Part 2, the cycle (--cycle-size, 0 to skip): a simulated scene scan (the simulator's scene
// layout, 4 species, 500 counts) fed to the daemon's Scan energy-major with the default settings
// and with fit.spatial off, the two in turn, a cycle after every --frames-per-cycle frames (1: the
// worst case for the step's share; 6: a 250 ms publication interval at 25 frames/s) as a live scan
// runs them; timed over --cycles cycles, what Pipeline::publish_cycle does between segmentations:
// the fold, solve_changed and the map messages; medians, and the median of the per-cycle ratios
// (--only plain or spatial: one mode, for a profiler). Wall and process CPU time (CPU
// time is what a loaded machine distorts least).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>

#include <ctime>

#include "config/config.hpp"
#include "publish/products.hpp"
#include "scan/scan.hpp"
#include "science/incremental_lcf.hpp"
#include "science/references.hpp"
#include "simulate/scene_truth.hpp"

using namespace xanesd::science;
using Clock = std::chrono::steady_clock;

namespace {

double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Wall and CPU seconds of each timed live cycle (solve + map messages), and the solve's wall time.
struct CycleTimes {
  std::vector<double> wall, cpu, solve_wall;
};
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? NAN : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The scan fed energy-major to one Scan per mode (spatial step off, on), a cycle after every
// `per_cycle` frames (and after the last) as a live scan runs them. The modes take turns cycle
// by cycle, so a busy moment of the machine falls on both alike and the per-cycle ratio on/off
// is a paired comparison (run one after the other, the modes differed by up to 20 points
// between runs). With one frame a cycle, the last `cycles` cycles are timed; with more, whole
// scans are fed again until `cycles` cycles of per_cycle frames have been timed, leaving out
// each scan's first (its statistics' pages are faulted in there) and a short last one.
std::vector<CycleTimes> live_cycles(const xanesd::sim::Scan& scan, const std::vector<Reference>& refs,
                                    const std::vector<bool>& modes, int threads, int cycles, int per_cycle) {
  const std::size_t E = scan.params.energies_eV.size(), N = static_cast<std::size_t>(std::max(1, per_cycle));
  std::vector<CycleTimes> t(modes.size());
  for (int pass = 0; t[0].wall.size() < static_cast<std::size_t>(cycles); ++pass) {
    std::vector<std::unique_ptr<xanesd::Scan>> live;
    for (bool spatial : modes) {
      auto settings = xanesd::scan_settings(xanesd::make_config(nlohmann::json::object(), {}, "/"));
      settings.spatial.enabled = spatial;
      settings.spatial_live_max_pixels = 1e300;  // the step in every live cycle, whatever the size
      live.push_back(std::make_unique<xanesd::Scan>(
          xanesd::sim::start_message(scan, "bench-" + std::to_string(pass)), refs, settings));
    }
    for (std::size_t e0 = 0; e0 < E; e0 += N) {
      const std::size_t e1 = std::min(E, e0 + N);
      const bool timed = N == 1 ? e0 + static_cast<std::size_t>(cycles) >= E : e0 > 0 && e1 - e0 == N;
      for (std::size_t m = 0; m < modes.size(); ++m) {
        for (std::size_t e = e0; e < e1; ++e) {
          auto f = xanesd::sim::frame_message(scan, "bench-" + std::to_string(pass), e);
          if (!live[m]->apply(f).accepted) std::abort();
        }
        const auto t0 = Clock::now();
        const double c0 = cpu_seconds();
        live[m]->solve_changed(threads);
        const double solve = std::chrono::duration<double>(Clock::now() - t0).count();
        const auto msgs = xanesd::make_map_messages(*live[m], static_cast<std::int64_t>(e1), false, false);
        if (msgs.empty()) std::abort();
        if (!timed || t[m].wall.size() >= static_cast<std::size_t>(cycles)) continue;
        t[m].wall.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        t[m].cpu.push_back(cpu_seconds() - c0);
        t[m].solve_wall.push_back(solve);
      }
    }
    if (N == 1) break;
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int size = 2048, E = 25, threads = 2, repeats = 3, cycle_size = 2048, cycles = 12, per_cycle = 1;
  std::string only;  // "plain" or "spatial": that mode's cycle alone (for a profiler); no ratio printed
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--size") size = std::atoi(argv[i + 1]);
    else if (a == "--energies") E = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--repeats") repeats = std::atoi(argv[i + 1]);
    else if (a == "--cycle-size") cycle_size = std::atoi(argv[i + 1]);
    else if (a == "--cycles") cycles = std::atoi(argv[i + 1]);
    else if (a == "--frames-per-cycle") per_cycle = std::atoi(argv[i + 1]);
    else if (a == "--only") only = argv[i + 1];
  }
  if (per_cycle < 1 || (per_cycle > 1 && E < 2 * per_cycle) || cycles < 1) {
    std::fprintf(stderr, "bench_spatial: --frames-per-cycle must be ≥ 1 and, above 1, at most half the energies; --cycles ≥ 1\n");
    return 2;
  }
  const std::string src = XANESD_SOURCE_DIR;
  auto lib = load_reference_file(src + "/config/references/fe_k_library_normalized.nor");
  std::vector<Reference> refs;
  for (const char* n : {"Magnetite", "Goethite", "Pyrite"})
    refs.push_back(*std::find_if(lib.begin(), lib.end(), [&](const auto& r) { return r.name == n; }));
  std::vector<double> all;
  {
    FILE* f = std::fopen((src + "/config/references/fe_k_energies_hxn.txt").c_str(), "r");
    for (double v; std::fscanf(f, "%lf", &v) == 1;) all.push_back(v);
    std::fclose(f);
  }
  std::vector<double> energies;
  for (int e = 0; e < E; ++e) energies.push_back(all[static_cast<std::size_t>(e) * (all.size() - 1) / (E - 1)]);
  const auto R = resample(refs, energies, 20);
  std::vector<std::string> names{"Magnetite", "Goethite", "Pyrite"};
  const auto model = make_lcf_model(names, R, energies, true);
  const std::size_t P = static_cast<std::size_t>(size) * size;
  std::mt19937 rng(1);
  std::normal_distribution<float> noise(0.f, 0.03f);
  // Both modes fed the same data, then timed in turn (a busy moment of the machine falls on both
  // alike): best of --repeats each, and the median of the paired ratios.
  auto make = [&](bool spatial) {
    auto lcf = std::make_unique<IncrementalLcf>(model, P, SolveOptions{});
    SpatialSettings s;
    s.enabled = spatial;
    lcf->set_spatial(s, size, size);
    return lcf;
  };
  if (size > 0) {
    auto plain = make(false), spatial = make(true);
    for (int e = 0; e < E; ++e)
      for (std::size_t p = 0; p < P; ++p) {
        const double u = static_cast<double>(p % size) / size, v = static_cast<double>(p / size) / size;
        const double f0 = u < 0.5 ? 0.8 - 0.3 * v : 0.1, f1 = u < 0.5 ? 0.2 + 0.3 * v : 0.3, f2 = 1 - f0 - f1;
        const double y = 0.01 + f0 * R(e, 0) + f1 * R(e, 1) + f2 * R(e, 2) + noise(rng);
        plain->add(p, e, y);
        spatial->add(p, e, y);
      }
    auto time_solve = [&](IncrementalLcf& lcf) {
      lcf.mark_all_changed();
      const auto t0 = Clock::now();
      lcf.solve_changed(threads);
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    std::vector<double> t_plain, t_spatial, ratio;
    for (int r = 0; r < repeats; ++r) {
      t_plain.push_back(time_solve(*plain));
      t_spatial.push_back(time_solve(*spatial));
      ratio.push_back(t_spatial.back() / t_plain.back());
    }
    const double best_plain = *std::min_element(t_plain.begin(), t_plain.end());
    const double best_spatial = *std::min_element(t_spatial.begin(), t_spatial.end());
    double nb = 0;
    for (float x : spatial->spatial_neighbours()) nb += x;
    std::printf("%dx%d px, %d energies, %d threads, solve_changed (all pixels), best of %d in turn:\n"
                "  fit.spatial=false: %.3f s\n  fit.spatial=true : %.3f s, mean effective neighbours %.2f\n",
                size, size, E, threads, repeats, best_plain, best_spatial, nb / static_cast<double>(P));
    std::printf("spatial step: +%.3f s (best of each: %.0f %% of the per-pixel solve; median of paired ratios %.0f %%)\n",
                best_spatial - best_plain, 100 * (best_spatial - best_plain) / best_plain, 100 * (median(ratio) - 1));
    std::printf("RESULT solve_plain_s=%.4f solve_spatial_s=%.4f solve_ratio_median=%.3f\n", best_plain, best_spatial,
                median(ratio));
  }
  if (cycle_size > 0) {
    std::vector<Reference> scene_refs;
    for (const auto& n : xanesd::sim::scene_species())
      scene_refs.push_back(*std::find_if(lib.begin(), lib.end(), [&](const auto& r) { return r.name == n; }));
    const auto scan = xanesd::sim::simulate(scene_refs, xanesd::sim::scene_params(cycle_size, cycle_size, energies, 500.0, 7));
    if (!only.empty()) {
      const auto t = live_cycles(scan, scene_refs, {only == "spatial"}, threads, cycles, per_cycle).at(0);
      std::printf("fit.spatial=%s live cycle, median of %d: %.3f s wall (solve %.3f s), %.3f s CPU\n",
                  only == "spatial" ? "true" : "false", cycles, median(t.wall), median(t.solve_wall), median(t.cpu));
      return 0;
    }
    const auto t = live_cycles(scan, scene_refs, {false, true}, threads, cycles, per_cycle);
    const auto &off = t[0], &on = t[1];
    std::vector<double> wall_ratio, cpu_ratio;
    for (std::size_t i = 0; i < off.wall.size(); ++i)
      wall_ratio.push_back(on.wall[i] / off.wall[i]), cpu_ratio.push_back(on.cpu[i] / off.cpu[i]);
    const auto [lo, hi] = std::minmax_element(wall_ratio.begin(), wall_ratio.end());
    std::printf("%dx%d scene, %d energies, %d threads, live cycle (fold, solve, map messages) after every %d frame(s), the "
                "modes in turn, median of %d cycles:\n"
                "  fit.spatial=false: %.3f s wall (solve %.3f s), %.3f s CPU\n"
                "  fit.spatial=true : %.3f s wall (solve %.3f s), %.3f s CPU\n"
                "  spatial step adds %.0f %% (wall; cycles %.0f to %.0f %%), %.0f %% (CPU) to the cycle\n",
                cycle_size, cycle_size, E, threads, per_cycle, cycles, median(off.wall), median(off.solve_wall), median(off.cpu),
                median(on.wall), median(on.solve_wall), median(on.cpu), 100 * (median(wall_ratio) - 1), 100 * (*lo - 1),
                100 * (*hi - 1), 100 * (median(cpu_ratio) - 1));
    std::printf("RESULT cycle_plain_s=%.4f cycle_spatial_s=%.4f cycle_plain_cpu_s=%.4f cycle_spatial_cpu_s=%.4f "
                "cycle_added_wall=%.3f cycle_added_cpu=%.3f\n",
                median(off.wall), median(on.wall), median(off.cpu), median(on.cpu), median(wall_ratio) - 1,
                median(cpu_ratio) - 1);
  }
}
