// bench_segment: online segmentation (MPIS, science.md §4) timed, for
// bench/run_segment_benchmark.sh against scikit-learn's KMeans and MiniBatchKMeans on the SAME
// features (see bench/README.md). Two parts:
//
//  features  For each --sizes N: a simulated N×N domains-layout fluorescence scan (Poisson
//            noise at 2000 counts, and the --noisy-sizes again at --noisy-counts so that the
//            domains overlap in feature space and the k-means results can differ; I0 drift, background; Magnetite, Goethite, Pyrite from the shipped Fe
//            library; the 73-energy HXN grid) fed frame by frame, energy-major, to xanesd's own
//            Scan, solved (quality mask), then segmented once as the daemon does
//            (Scan::update_segments, timed) with segment.sample = all pixels, so the segmenter's
//            sample is every pixel with material in pixel order. The features its k-means ran on
//            (sample_features(): PCA scores) are written as .npy with the truth domain of each
//            row; xanesd's public kmeans(F, k, seed, n_init=3) is timed on them (best of
//            --repeats after a warm-up), k = the number of clusters the segmenter chose.
//  keepup    For each --keepup-energies E: an --keepup-size N×N (2048) domains scan, all E
//            energies measured (E < 73: evenly spread over the HXN grid, as bench_ingest's
//            2048² scan), the simulator's clean signal + a fixed √N Gaussian noise pattern
//            (Poisson draws for 4 M px × 73 would take minutes), divided by I0 as the daemon
//            stores it, material = the truth's thickness > 0. One OnlineSegmenter::update on
//            --threads threads, first (cold) and then repeated (warm, as the daemon's later
//            publication cycles), for several --keepup-samples (segment.sample) to split the
//            time into the part that grows with the sample (sampling, PCA, k-means for each k
//            tried) and the part that does not (the measured-energy pass, labelling every pixel).
//
//   bench_segment [--out DIR] [--only features|keepup] [--sizes 256,1024] [--noisy-sizes 1024|none]
//                 [--noisy-counts 100] [--repeats N]
//                 [--keepup-size N] [--keepup-energies 25,73] [--keepup-samples 2000,20000,200000]
//                 [--threads N] [--seed S]
//       --out DIR writes per size N (key segN; segNcC for the noisy runs): DIR/segN_features.npy (n×d float64), DIR/segN_truth.npy
//       (n×1: truth domain of each row), DIR/segN_xanesd_labels.npy (n×1: kmeans() labels),
//       DIR/segN_segmenter_labels.npy (n×1: the cluster id the segmenter gave the pixel),
//       DIR/segN_meta.json (k, seed, times) for bench/sklearn_kmeans_baseline.py.
// Machine-readable results are the lines "RESULT key=value".
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "args.hpp"
#include "machine.hpp"
#include "npy.hpp"
#include "run_scan.hpp"
#include "scene_features.hpp"
#include "scan/scan.hpp"
#include "science/lcf.hpp"
#include "science/references.hpp"
#include "science/segmentation.hpp"
#include "simulate/scene_truth.hpp"
#include "simulate/simulate.hpp"

using namespace xanesd;
using namespace xanesd::science;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

const fs::path kRefs = fs::path(XANESD_SOURCE_DIR) / "config" / "references";
const std::vector<std::string> kSpecies = {"Magnetite", "Goethite", "Pyrite"};

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<Reference> species() {
  return sim::pick_references(load_reference_file(kRefs / "fe_k_library_normalized.nor"), kSpecies);
}

using bench::parse_ints;

ScanSettings default_settings() { return scan_settings(make_config(nlohmann::json::object(), {}, "/")); }

using bench::run_scan;

struct Options {
  fs::path out;
  bool features = true, keepup = true, scene = true;
  // scene part: 155×160 scene-layout scans (Voronoi domains drifting toward a second species,
  // thin disk, one-pixel stripe) of the four scene species, at these counts and seeds.
  std::vector<int> scene_counts = {5000, 500};
  std::vector<int> scene_seeds = {1, 2, 3};
  int scene_rows = 155, scene_cols = 160;
  std::vector<int> sizes = {256, 1024};
  std::vector<int> noisy_sizes = {1024};  // again at --noisy-counts: clusters that overlap
  double noisy_counts = 100;
  int repeats = 3;
  int keepup_size = 2048;
  std::vector<int> keepup_energies = {25, 73};
  std::vector<int> keepup_samples = {2000, 20000, 200000};
  int threads = 2;
  std::uint64_t seed = 1;
  double smoothing = -1;  // keepup: segment.smoothing (−1: the default)
  int merge = -1;         // keepup: segment.merge 0/1 (−1: the default)
};

void features_part(const Options& o, const std::vector<Reference>& refs, const std::vector<double>& hxn) {
  std::vector<std::pair<int, double>> runs;
  for (const int N : o.sizes) runs.emplace_back(N, 2000.0);
  for (const int N : o.noisy_sizes) runs.emplace_back(N, o.noisy_counts);
  for (const auto& [N, counts] : runs) {
    std::printf("\n== features: %d×%d domains scan, %zu HXN energies, Poisson noise (%g counts), fed to xanesd::Scan energy-major\n",
                N, N, hxn.size(), counts);
    auto t0 = Clock::now();
    sim::Params p;
    p.rows = p.cols = N;
    p.energies_eV = hxn;
    p.layout = sim::Params::Layout::domains;
    p.counts = counts;
    p.seed = 11;
    const auto truth = sim::simulate(refs, p);
    const double t_sim = since(t0);
    ScanSettings settings = default_settings();
    const std::size_t P = truth.pixels();
    settings.segment.sample = static_cast<int>(P);  // every pixel with material: the sample is in pixel order
    settings.segment.seed = o.seed;
    t0 = Clock::now();
    auto scan = run_scan(truth, refs, settings);
    const double t_scan = since(t0);
    t0 = Clock::now();
    scan->update_segments(o.threads);
    const double t_update = since(t0);
    const Segmentation& daemon_seg = *scan->segmentation();
    if (!daemon_seg.waiting.empty()) throw std::runtime_error("segmentation waiting: " + daemon_seg.waiting);

    // The same update on the same input, with the segmenter in hand (Scan keeps its own private).
    OnlineSegmenter seg(settings.segment);
    seg.update(scan->segment_input(o.threads));
    const Segmentation& r = seg.result();
    const FeatureMatrix& F = seg.sample_features();
    if (r.labels != daemon_seg.labels) std::printf("  WARNING: the bench's segmenter labels differ from Scan::update_segments'\n");
    // With sample ≥ P the segmenter's sample is every labelled pixel, in pixel order.
    std::vector<std::size_t> rows_px;
    for (std::size_t q = 0; q < P; ++q)
      if (r.labels[q] != kBackground && r.labels[q] != kUnassigned) rows_px.push_back(q);
    if (rows_px.size() != static_cast<std::size_t>(F.rows()))
      throw std::runtime_error("sample features (" + std::to_string(F.rows()) + " rows) do not match the labelled pixels (" +
                               std::to_string(rows_px.size()) + ")");
    const int k = static_cast<int>(r.clusters.size());
    std::vector<int> truth_rows, seg_rows;
    int truth_background = 0;
    for (auto q : rows_px) {
      truth_rows.push_back(truth.domains[q]);
      seg_rows.push_back(r.labels[q]);
      truth_background += truth.domains[q] == 0;
    }
    std::printf("  simulate %.2f s; Scan ingest + solve %.2f s; Scan::update_segments (%d threads, sample = all) %.3f s\n", t_sim,
                t_scan, o.threads, t_update);
    std::printf("  segmenter: k = %d, %d PCA components, %zu of %zu px labelled (%d of them background in the truth), "
                "ARI vs truth on material %.4f\n",
                k, r.pca.components, r.labelled, P, truth_background, sim::ari_on_material(r.labels, truth.domains));
    std::printf("  features: %lld × %lld float64\n", static_cast<long long>(F.rows()), static_cast<long long>(F.cols()));

    KMeans km;
    double best = 1e300;
    (void)kmeans(F, k, o.seed, 3);  // warm-up
    for (int i = 0; i < o.repeats; ++i) {
      t0 = Clock::now();
      km = kmeans(F, k, o.seed, 3);
      best = std::min(best, since(t0));
    }
    const double ari_truth = adjusted_rand_index(km.labels, truth_rows), ari_seg = adjusted_rand_index(km.labels, seg_rows);
    std::printf("  xanesd kmeans(F, k=%d, seed=%llu, n_init=3): best of %d %.4f s (1 thread), inertia %.6g; "
                "ARI vs truth %.4f, vs the segmenter's labels %.4f\n",
                k, static_cast<unsigned long long>(o.seed), o.repeats, best, km.inertia, ari_truth, ari_seg);
    const std::string key = "seg" + std::to_string(N) + (counts != 2000.0 ? "c" + std::to_string(static_cast<int>(counts)) : "");
    std::printf("RESULT cxx_%s_n=%lld\nRESULT cxx_%s_d=%lld\nRESULT cxx_%s_k=%d\nRESULT cxx_%s_kmeans_s=%.6g\n"
                "RESULT cxx_%s_inertia=%.10g\nRESULT cxx_%s_update_s=%.6g\nRESULT cxx_%s_ari_truth=%.6g\n",
                key.c_str(), static_cast<long long>(F.rows()), key.c_str(), static_cast<long long>(F.cols()), key.c_str(), k,
                key.c_str(), best, key.c_str(), km.inertia, key.c_str(), t_update, key.c_str(), ari_truth);
    if (!o.out.empty()) {
      bench::write_npy(o.out / (key + "_features.npy"), Eigen::MatrixXd(F));
      bench::write_npy(o.out / (key + "_truth.npy"), bench::column(truth_rows));
      bench::write_npy(o.out / (key + "_xanesd_labels.npy"), bench::column(km.labels));
      bench::write_npy(o.out / (key + "_segmenter_labels.npy"), bench::column(seg_rows));
      nlohmann::json meta = {{"key", key}, {"counts", counts}, {"size", N},       {"k", k},           {"seed", o.seed}, {"n", F.rows()}, {"d", F.cols()},
                             {"cxx_kmeans_s", best}, {"cxx_inertia", km.inertia}, {"update_s", t_update}};
      std::ofstream(o.out / (key + "_meta.json")) << meta.dump(1) << "\n";
    }
  }
}

// The segmenter's first step on its own: count measured (non-NaN) samples per energy plane.
// parallel_for there splits over energies with at most n/16384 + 1 threads, so one thread.
double measured_pass(const std::vector<float>& planes, std::size_t E, std::size_t P) {
  const auto t0 = Clock::now();
  std::vector<std::size_t> measured(E);
  for (std::size_t j = 0; j < E; ++j) {
    const float* plane = planes.data() + j * P;
    std::size_t c = 0;
    for (std::size_t p = 0; p < P; ++p) c += !std::isnan(plane[p]);
    measured[j] = c;
  }
  const double t = since(t0);
  if (measured[0] == 0) std::printf(" ");  // keep the loop
  return t;
}

void keepup_part(const Options& o, const std::vector<Reference>& refs, const std::vector<double>& hxn) {
  const int N = o.keepup_size;
  const ScanSettings base = default_settings();
  for (const int n : o.keepup_energies) {
    std::vector<double> energies;
    if (n >= static_cast<int>(hxn.size())) energies = hxn;
    else {
      for (int i = 0; i < n; ++i) {
        const auto idx = static_cast<std::size_t>(std::lround(static_cast<double>(i) * static_cast<double>(hxn.size() - 1) / (n - 1)));
        energies.push_back(hxn[std::min(idx, hxn.size() - 1)]);
      }
      energies.erase(std::unique(energies.begin(), energies.end()), energies.end());
    }
    const std::size_t E = energies.size();
    std::printf("\n== keep-up: %d×%d domains scan, %zu energies measured (%.0f–%.0f eV), clean signal + fixed √N noise pattern, "
                "%d threads\n",
                N, N, E, energies.front(), energies.back(), o.threads);
    auto t0 = Clock::now();
    sim::Params p;
    p.rows = p.cols = N;
    p.energies_eV = energies;
    p.layout = sim::Params::Layout::domains;
    p.counts = 2000;
    p.noise = false;
    p.seed = 11;
    auto s = sim::simulate(refs, p);
    const std::size_t P = s.pixels();
    {
      std::vector<float> z(P);
      std::mt19937_64 rng(7);
      std::normal_distribution<float> normal;
      for (auto& v : z) v = normal(rng);
      for (std::size_t e = 0; e < E; ++e) {
        float* plane = s.counts.data() + e * P;
        const std::size_t shift = (e * 1'000'003) % P;
        const auto i0 = static_cast<float>(s.i0[e]);
        for (std::size_t px = 0; px < P; ++px) {
          const float c = plane[px];
          std::size_t j = px + shift;
          if (j >= P) j -= P;
          plane[px] = std::max(0.f, std::round(c + std::sqrt(c) * z[j])) / i0;  // the store holds counts / I0
        }
      }
    }
    std::vector<std::uint8_t> material(P);
    for (std::size_t q = 0; q < P; ++q) material[q] = s.thickness[q] > 0;
    s.fractions = {}, s.xrf = {};
    std::vector<std::string> names;
    for (const auto& r : refs) names.push_back(r.name);
    const LcfModel model = make_lcf_model(names, resample(refs, energies, base.margin_eV), energies, base.background);
    std::printf("  data %.1f s, %.2f GB of float32 planes\n", since(t0), static_cast<double>(E * P * 4) / 1e9);
    SegmentInput in;
    in.planes = s.counts.data();
    in.npix = P;
    in.rows = in.cols = N;
    in.energies = &energies;
    in.material = material.data();
    in.model = &model;
    in.fit = base.fit;
    in.edge = base.edge;
    in.threads = o.threads;

    double best_pass = 1e300;
    for (int i = 0; i < 3; ++i) best_pass = std::min(best_pass, measured_pass(s.counts, E, P));
    std::printf("  step 1 alone (count measured samples per energy, 1 thread, as the segmenter runs it): %.3f s\n", best_pass);
    std::printf("RESULT keep_size=%d\nRESULT keep_%zu_count_pass_s=%.6g\n", N, E, best_pass);

    std::printf("  %-8s %9s %9s %9s %9s %4s %4s %9s %12s\n", "sample", "cold s", "warm best", "warm med", "kmeans s", "k", "r",
                "ARI", "updates/s");
    for (const int sample : o.keepup_samples) {
      SegmentationSettings ss = base.segment;
      ss.sample = sample;
      ss.seed = o.seed;
      if (o.smoothing >= 0) ss.smoothing = o.smoothing;
      if (o.merge >= 0) ss.merge = o.merge != 0;
      OnlineSegmenter seg(ss);
      t0 = Clock::now();
      seg.update(in);
      const double cold = since(t0);
      if (!seg.result().waiting.empty()) throw std::runtime_error("segmentation waiting: " + seg.result().waiting);
      std::vector<double> warm;
      for (int i = 0; i < o.repeats; ++i) {
        t0 = Clock::now();
        seg.update(in);
        warm.push_back(since(t0));
      }
      std::sort(warm.begin(), warm.end());
      const double ari = sim::ari_on_material(seg.result().labels, s.domains);
      const int k = static_cast<int>(seg.result().clusters.size());
      // k-means alone on this update's sample features, at the chosen k (the update runs it for
      // every k = 1 … chosen while the scatter test fails, so this is a lower bound of its share).
      t0 = Clock::now();
      (void)kmeans(seg.sample_features(), std::max(1, k), o.seed, 3);
      const double t_km = since(t0);
      std::printf("  %-8d %9.3f %9.3f %9.3f %9.3f %4d %4d %9.4f %12.2f\n", sample, cold, warm.front(), warm[warm.size() / 2], t_km, k,
                  seg.result().pca.components, ari, 1.0 / warm.front());
      std::printf("RESULT keep_%zu_%d_cold_s=%.6g\nRESULT keep_%zu_%d_warm_s=%.6g\nRESULT keep_%zu_%d_warm_median_s=%.6g\n"
                  "RESULT keep_%zu_%d_kmeans_s=%.6g\nRESULT keep_%zu_%d_k=%d\nRESULT keep_%zu_%d_ari=%.6g\n",
                  E, sample, cold, E, sample, warm.front(), E, sample, warm[warm.size() / 2], E, sample, t_km, E, sample, k, E, sample,
                  ari);
    }
  }
}

// Stripe survival: the share of the one-pixel stripe's pixels labelled as their species is
// labelled elsewhere (the label most pixels of that truth class carry): a stripe swallowed by
// the domains it crosses scores 0.
double stripe_survival(const std::vector<std::uint8_t>& labels, const sim::Scan& truth) {
  std::map<int, std::map<int, int>> votes;
  for (std::size_t p = 0; p < truth.pixels(); ++p)
    if (truth.domains[p] > 0 && !truth.stripe[p]) ++votes[truth.domains[p]][labels[p]];
  std::map<int, int> majority;
  for (auto& [d, v] : votes)
    majority[d] = std::max_element(v.begin(), v.end(), [](auto& x, auto& y) { return x.second < y.second; })->first;
  int n = 0, ok = 0;
  for (std::size_t p = 0; p < truth.pixels(); ++p)
    if (truth.stripe[p] && truth.domains[p] > 0) ++n, ok += majority.count(truth.domains[p]) && labels[p] == majority[truth.domains[p]];
  return n ? static_cast<double>(ok) / n : 0.0;
}

// Scene part: the realistic scene (issue 11 part 2) at each count level and seed, segmented by
// the daemon's default (automatic k) and told k = the number of species; the automatic run's
// features go to .npy for scikit-learn's KMeans(n_clusters = true k) on the same rows.
void scene_part(const Options& o, const std::vector<double>& hxn) {
  const auto refs = sim::pick_references(load_reference_file(kRefs / "fe_k_library_normalized.nor"), sim::scene_species());
  const int K = static_cast<int>(refs.size());
  std::printf("\n== scene: %d×%d scene-layout fluorescence scans (%d species, 73 HXN energies, background 0.002, I0 in 1e5 units), "
              "ARI against the dominant-species map over material pixels\n",
              o.scene_rows, o.scene_cols, K);
  std::printf("  %7s %5s | %-28s | %-28s\n", "counts", "seed", "automatic k: k   ARI  stripe  s", "told k: ARI  stripe  s");
  for (const int counts : o.scene_counts)
    for (const int seed : o.scene_seeds) {
      const sim::Params p = sim::scene_params(o.scene_rows, o.scene_cols, hxn, counts, static_cast<std::uint64_t>(seed));
      const auto truth = sim::simulate(refs, p);
      const std::size_t P = truth.pixels();
      ScanSettings settings = default_settings();
      settings.segment.sample = static_cast<int>(P);  // the features of every labelled pixel, in pixel order
      settings.segment.seed = o.seed;
      auto scan = run_scan(truth, refs, settings);
      auto t0 = Clock::now();
      OnlineSegmenter seg(settings.segment);
      seg.update(scan->segment_input(o.threads));
      const double t_auto = since(t0);
      const Segmentation r = seg.result();
      if (!r.waiting.empty()) throw std::runtime_error("segmentation waiting: " + r.waiting);
      SegmentationSettings told = settings.segment;
      told.k = K;
      OnlineSegmenter seg_k(told);
      t0 = Clock::now();
      seg_k.update(scan->segment_input(o.threads));
      const double t_told = since(t0);
      const double ari = sim::ari_on_material(r.labels, truth.domains), ari_k = sim::ari_on_material(seg_k.result().labels, truth.domains);
      const double st = stripe_survival(r.labels, truth), st_k = stripe_survival(seg_k.result().labels, truth);
      const int k = static_cast<int>(r.clusters.size());
      std::printf("  %7d %5d | %13d %6.4f %6.2f %5.3f | %12.4f %6.2f %5.3f\n", counts, seed, k, ari, st, t_auto, ari_k, st_k, t_told);
      const std::string key = "scene_c" + std::to_string(counts) + "_s" + std::to_string(seed);
      std::printf("RESULT cxx_%s_k=%d\nRESULT cxx_%s_ari_auto=%.6g\nRESULT cxx_%s_ari_told=%.6g\nRESULT cxx_%s_stripe_auto=%.6g\n"
                  "RESULT cxx_%s_stripe_told=%.6g\nRESULT cxx_%s_auto_s=%.6g\n",
                  key.c_str(), k, key.c_str(), ari, key.c_str(), ari_k, key.c_str(), st, key.c_str(), st_k, key.c_str(), t_auto);
      if (!o.out.empty())  // the automatic run sampled every pixel with material, in pixel order
        bench::write_scene_features(o.out, key, seg, truth, K,
                                    {{"counts", counts}, {"seed", seed}, {"ari_auto", ari}, {"ari_told", ari_k}, {"kmeans_seed", o.seed}});
    }
}

int run(int argc, char** argv) {
  Options o;
  for (bench::Args args(argc, argv); args.next();) {
    const std::string& a = args.option();
    if (a == "--out") o.out = args.value();
    else if (a == "--only") {
      const auto v = args.value();
      if (v != "features" && v != "keepup" && v != "scene") throw std::runtime_error("--only takes features, keepup or scene");
      o.features = v == "features", o.keepup = v == "keepup", o.scene = v == "scene";
    } else if (a == "--sizes") o.sizes = parse_ints(args.value());
    else if (a == "--noisy-sizes") {
      const auto v = args.value();
      o.noisy_sizes = v == "none" ? std::vector<int>{} : parse_ints(v);
    }
    else if (a == "--noisy-counts") o.noisy_counts = std::stod(args.value());
    else if (a == "--repeats") o.repeats = std::stoi(args.value());
    else if (a == "--keepup-size") o.keepup_size = std::stoi(args.value());
    else if (a == "--keepup-energies") o.keepup_energies = parse_ints(args.value());
    else if (a == "--keepup-samples") o.keepup_samples = parse_ints(args.value());
    else if (a == "--segment-smoothing") o.smoothing = std::stod(args.value());
    else if (a == "--segment-merge") o.merge = std::stoi(args.value());
    else if (a == "--scene-counts") o.scene_counts = parse_ints(args.value());
    else if (a == "--scene-seeds") o.scene_seeds = parse_ints(args.value());
    else if (a == "--threads") o.threads = std::stoi(args.value());
    else if (a == "--seed") o.seed = std::stoull(args.value());
    else if (a == "-h" || a == "--help") {
      std::printf(
          "usage: bench_segment [--out DIR] [--only features|keepup|scene] [--sizes 256,1024] [--noisy-sizes 1024|none]\n"
          "                     [--noisy-counts 100] [--repeats 3]\n"
          "                     [--keepup-size 2048] [--keepup-energies 25,73] [--keepup-samples 2000,20000,200000]\n"
          "                     [--scene-counts 5000,500] [--scene-seeds 1,2,3] [--threads 2] [--seed 1]\n"
          "                     [--segment-smoothing X] [--segment-merge 0|1] (keep-up: settings other than the defaults)\n");
      return 0;
    } else args.unknown();
  }
  if (o.repeats < 1 || o.threads < 1) throw std::runtime_error("--repeats and --threads must be ≥ 1");
  std::printf("== bench_segment: %d CPUs (%s), %s RAM; Eigen %d.%d.%d\n", xanesd::bench::nproc(), xanesd::bench::cpu_model().c_str(),
              xanesd::bench::mem_total().c_str(), EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
  if (!o.out.empty()) fs::create_directories(o.out);
  const auto refs = species();
  const auto hxn = sim::read_energies_file(kRefs / "fe_k_energies_hxn.txt");
  if (o.features) features_part(o, refs, hxn);
  if (o.keepup) keepup_part(o, refs, hxn);
  if (o.scene) scene_part(o, hxn);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return xanesd::bench::run_main("bench_segment", [&] { return run(argc, argv); });
}
