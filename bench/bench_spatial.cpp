// bench_spatial: what fit.spatial adds to a publication cycle's solve (bench/README.md).
// A size×size image at `energies` of the HXN grid (Magnetite, Goethite, Pyrite, linear
// background: 5 parameters), a smooth mixture with Gaussian noise, folded into IncrementalLcf
// energy-major (not timed); then, best of --repeats, solve_changed() after all pixels changed
// (what the final cycle and every energy-major cycle does) with the spatial step off and on.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "science/incremental_lcf.hpp"
#include "science/references.hpp"

using namespace xanesd::science;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int size = 2048, E = 25, threads = 2, repeats = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--size") size = std::atoi(argv[i + 1]);
    else if (a == "--energies") E = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--repeats") repeats = std::atoi(argv[i + 1]);
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
  auto run = [&](bool spatial) {
    IncrementalLcf lcf(model, P, SolveOptions{});
    SpatialSettings s;
    s.enabled = spatial;
    lcf.set_spatial(s, size, size);
    for (int e = 0; e < E; ++e)
      for (std::size_t p = 0; p < P; ++p) {
        const double u = static_cast<double>(p % size) / size, v = static_cast<double>(p / size) / size;
        const double f0 = u < 0.5 ? 0.8 - 0.3 * v : 0.1, f1 = u < 0.5 ? 0.2 + 0.3 * v : 0.3, f2 = 1 - f0 - f1;
        const double y = 0.01 + f0 * R(e, 0) + f1 * R(e, 1) + f2 * R(e, 2);
        lcf.add(p, e, y + noise(rng));
      }
    double best = 1e300;
    for (int r = 0; r < repeats; ++r) {
      lcf.mark_all_changed();
      const auto t0 = Clock::now();
      lcf.solve_changed(threads);
      best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    double nb = 0;
    for (float x : lcf.spatial_neighbours()) nb += x;
    std::printf("%dx%d px, %d energies, %d threads: solve_changed (all pixels) with fit.spatial=%s: %.3f s%s\n", size,
                size, E, threads, spatial ? "true " : "false", best,
                spatial ? (", mean effective neighbours " + std::to_string(nb / static_cast<double>(P))).c_str() : "");
    std::printf("RESULT solve_%s_s=%.4f\n", spatial ? "spatial" : "plain", best);
    return best;
  };
  const double plain = run(false), spatial = run(true);
  std::printf("spatial step: +%.3f s (%.0f %% of the per-pixel solve)\n", spatial - plain, 100 * (spatial - plain) / plain);
}
