// Online segmentation (MPIS, science.md §4) against a known segmentation: synthetic scans of
// domains of fixed composition built from the shipped references, with varying thickness,
// Poisson noise, I0 drift and background, fed to the daemon's own Scan energy-major.
#include <doctest/doctest.h>

#include <barrier>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "science/cancel.hpp"
#include "science/segmentation.hpp"
#include "science_support.hpp"

using namespace xanesd;
using namespace xanesd::science;

namespace {

const std::vector<std::string> kSpecies = {"Magnetite", "Goethite", "Pyrite"};

sim::Scan domain_scan(double counts, std::uint64_t seed, int rows = 64, int cols = 64) {
  auto p = test::hxn_scan(rows, cols);
  p.layout = sim::Params::Layout::domains;
  p.counts = counts;
  p.seed = seed;
  return sim::simulate(test::pick(load_reference_file(test::fe_library()), kSpecies), p);
}

// ARI over the pixels with material in the truth (labels as ints).
double ari_on_material(const Segmentation& seg, const sim::Scan& truth) {
  std::vector<int> a, b;
  for (std::size_t p = 0; p < truth.pixels(); ++p)
    if (truth.domains[p] > 0) a.push_back(seg.labels[p]), b.push_back(truth.domains[p]);
  return adjusted_rand_index(a, b);
}

// The cluster id most pixels of each truth domain carry.
std::map<int, int> majority_label(const Segmentation& seg, const sim::Scan& truth) {
  std::map<int, std::map<int, int>> votes;
  for (std::size_t p = 0; p < truth.pixels(); ++p)
    if (truth.domains[p] > 0) ++votes[truth.domains[p]][seg.labels[p]];
  std::map<int, int> out;
  for (auto& [d, v] : votes)
    out[d] = std::max_element(v.begin(), v.end(), [](auto& x, auto& y) { return x.second < y.second; })->first;
  return out;
}

// Fraction MAE over material pixels of (a) the per-pixel LCF and (b) each pixel's cluster fit.
std::pair<double, double> fraction_errors(const Scan& scan, const sim::Scan& truth) {
  const auto& seg = *scan.segmentation();
  std::map<int, const ClusterSummary*> by_id;
  for (const auto& c : seg.clusters) by_id[c.id] = &c;
  const auto& maps = scan.fit()->maps();
  const std::size_t P = truth.pixels(), K = kSpecies.size();
  double pixel = 0, cluster = 0;
  std::size_t n = 0;
  for (std::size_t p = 0; p < P; ++p) {
    if (truth.domains[p] == 0 || !by_id.count(seg.labels[p])) continue;
    const auto& c = *by_id[seg.labels[p]];
    REQUIRE(c.fitted);
    for (std::size_t k = 0; k < K; ++k) {
      pixel += std::abs(maps.fractions[k * P + p] - truth.fractions[k * P + p]);
      cluster += std::abs(c.fractions[k] - truth.fractions[k * P + p]);
      ++n;
    }
  }
  return {pixel / static_cast<double>(n), cluster / static_cast<double>(n)};
}

// The domains layout's four fixed compositions include pure species 0 and 70 % of it with 30 %
// of the last: the default automatic k (segment.merge) calls those one domain (the same majority
// species drifting toward one other). These tests score the clustering against the four
// compositions, so they count each k-means cluster as a domain.
ScanSettings fixed_composition_settings() {
  auto s = test::default_settings();
  s.segment.merge = false;
  return s;
}

// The stripe's pixels labelled as their species is elsewhere (the label most of that truth
// class's other pixels carry).
double stripe_survival(const Segmentation& seg, const sim::Scan& truth) {
  std::map<int, std::map<int, int>> votes;
  for (std::size_t p = 0; p < truth.pixels(); ++p)
    if (truth.domains[p] > 0 && !truth.stripe[p]) ++votes[truth.domains[p]][seg.labels[p]];
  std::map<int, int> majority;
  for (auto& [d, v] : votes)
    majority[d] = std::max_element(v.begin(), v.end(), [](auto& x, auto& y) { return x.second < y.second; })->first;
  int n = 0, ok = 0;
  for (std::size_t p = 0; p < truth.pixels(); ++p)
    if (truth.stripe[p] && truth.domains[p] > 0) ++n, ok += seg.labels[p] == majority[truth.domains[p]];
  return n ? static_cast<double>(ok) / n : 0.0;
}

}  // namespace

TEST_CASE("adjusted Rand index: 1 for equal partitions under relabelling, ~0 for unrelated ones") {
  CHECK(adjusted_rand_index({0, 0, 1, 1, 2, 2}, {5, 5, 3, 3, 9, 9}) == doctest::Approx(1.0));
  CHECK(adjusted_rand_index({0, 0, 1, 1}, {0, 1, 0, 1}) < 0.0);
  std::vector<int> a, b;
  std::mt19937 rng(3);
  for (int i = 0; i < 5000; ++i) a.push_back(static_cast<int>(rng() % 4)), b.push_back(static_cast<int>(rng() % 4));
  CHECK(std::abs(adjusted_rand_index(a, b)) < 0.02);
}

TEST_CASE("domains of fixed composition are found whatever the thickness; k chosen; background class") {
  const auto truth = domain_scan(2000, 11);
  auto scan = test::run_scan(truth, test::pick(load_reference_file(test::fe_library()), kSpecies), fixed_composition_settings());
  scan->update_segments(2);
  const auto* seg = scan->segmentation();
  REQUIRE(seg != nullptr);
  REQUIRE(seg->waiting.empty());
  const double ari = ari_on_material(*seg, truth);
  MESSAGE("2000 counts: k = " << seg->clusters.size() << ", ARI " << ari << ", silhouette " << seg->silhouette
                              << ", PCA components " << seg->pca.components << " (significant " << seg->pca.significant << ")");
  CHECK(seg->clusters.size() == 4);  // the simulator's four compositions
  CHECK(ari > 0.95);
  // The empty border is its own class.
  std::size_t border = 0, border_bg = 0;
  for (std::size_t p = 0; p < truth.pixels(); ++p)
    if (truth.thickness[p] <= 0) ++border, border_bg += seg->labels[p] == kBackground;
  CHECK(border_bg >= border * 95 / 100);
  // Three species mixed with fractions summing to one span two dimensions after centring.
  CHECK(seg->pca.significant >= 2);
  CHECK(seg->pca.significant <= 4);
  for (std::size_t i = 1; i < seg->pca.explained.size(); ++i) CHECK(seg->pca.explained[i] <= seg->pca.explained[i - 1] + 1e-12);
  // Each cluster's mean is fitted: the fractions of its domain's composition.
  const auto [pixel_mae, cluster_mae] = fraction_errors(*scan, truth);
  MESSAGE("fraction MAE per-pixel LCF " << pixel_mae << ", cluster-then-fit " << cluster_mae);
  CHECK(cluster_mae < 0.03);
  for (const auto& c : seg->clusters) {
    CHECK(c.pixels > 0);
    double se = 0;
    for (auto v : c.stderr_) if (std::isfinite(v)) se = std::max(se, v);
    CHECK(se < 0.02);  // the mean of hundreds of pixels
  }
}

TEST_CASE("target transformation: references in the sample lie in the PCA subspace, others do not") {
  const auto lib = load_reference_file(test::fe_library());
  const auto truth = domain_scan(2000, 5);
  // Fit with the three species plus two that are not in the sample.
  auto refs = test::pick(lib, {"Magnetite", "Goethite", "Pyrite", "Fe3P", "LiFe(II)PO4"});
  auto scan = test::run_scan(truth, refs, test::default_settings());
  scan->update_segments(2);
  const auto& pca = scan->segmentation()->pca;
  REQUIRE(pca.tt_ratio.size() == 5);
  for (std::size_t k = 0; k < 5; ++k) MESSAGE(refs[k].name << ": TT residual " << pca.tt_residual[k] << " ratio " << pca.tt_ratio[k]);
  const double worst_present = *std::max_element(pca.tt_ratio.begin(), pca.tt_ratio.begin() + 3);
  CHECK(pca.tt_ratio[3] > 2 * worst_present);
  CHECK(pca.tt_ratio[4] > 2 * worst_present);
}

TEST_CASE("live energy-major updates: a domain keeps its cluster id from one publication to the next") {
  const auto truth = domain_scan(1000, 7);
  const auto refs = test::pick(load_reference_file(test::fe_library()), kSpecies);
  const std::size_t E = truth.params.energies_eV.size();
  std::vector<std::map<int, int>> history;
  std::vector<double> aris;
  test::run_scan(truth, refs, fixed_composition_settings(), [&](Scan& scan, std::size_t e) {
    if (e % 6 != 5 && e + 1 != E) return;
    scan.solve_changed(2);
    scan.update_segments(2);
    const auto* seg = scan.segmentation();
    if (!seg->waiting.empty()) return;
    history.push_back(majority_label(*seg, truth));
    aris.push_back(ari_on_material(*seg, truth));
  });
  REQUIRE(history.size() >= 5);
  MESSAGE("updates with a segmentation: " << history.size() << ", ARI first " << aris.front() << ", last " << aris.back());
  // Once the edge is measured (the last half of the updates) every domain keeps its id.
  for (std::size_t i = history.size() / 2 + 1; i < history.size(); ++i) CHECK(history[i] == history[i - 1]);
  CHECK(aris.back() > 0.95);
}

// A property of the method, not of one noise realization: swept over seeds. At 150 counts the
// automatic k sometimes calls the pure-species domain and its 70/30 neighbour one (k = 3, the
// merged cluster's scatter within segment.noise_ratio of the noise): 1 of seeds 1–12 here
// (README "Segmentation", known limits); a clang build's libstdc++ draws other realizations.
TEST_CASE("low counts: cluster-then-fit fractions beat per-pixel LCF against the truth") {
  const auto refs = test::pick(load_reference_file(test::fe_library()), kSpecies);
  constexpr int kSeeds = 10;
  int good = 0;
  std::vector<double> aris, ratios;
  for (std::uint64_t seed = 1; seed <= kSeeds; ++seed) {
    const auto truth = domain_scan(150, seed);
    auto scan = test::run_scan(truth, refs, fixed_composition_settings());
    scan->update_segments(2);
    const auto* seg = scan->segmentation();
    REQUIRE(seg->waiting.empty());
    const double ari = ari_on_material(*seg, truth);
    const auto [pixel_mae, cluster_mae] = fraction_errors(*scan, truth);
    MESSAGE("150 counts, seed " << seed << ": ARI " << ari << ", k " << seg->clusters.size() << ", fraction MAE per-pixel "
                                << pixel_mae << ", cluster-then-fit " << cluster_mae);
    aris.push_back(ari), ratios.push_back(cluster_mae / pixel_mae);
    good += seg->clusters.size() == 4 && ari > 0.9 && cluster_mae < pixel_mae;
  }
  std::sort(aris.begin(), aris.end()), std::sort(ratios.begin(), ratios.end());
  CHECK(good >= kSeeds - 2);  // k = 4, ARI > 0.9 and cluster-then-fit below per-pixel in 8 of 10
  CHECK(aris[kSeeds / 2] > 0.95);   // median
  CHECK(ratios[kSeeds / 2] < 0.5);  // median: cluster-then-fit at most half the per-pixel error
}

TEST_CASE("segmentation without references: edge-normalized spectra, no fits, same domains") {
  const auto truth = domain_scan(2000, 13);
  auto settings = test::default_settings();
  auto scan = test::run_scan(truth, test::pick(load_reference_file(test::fe_library()), kSpecies), settings);
  // Rebuild without references: the segmenter then finds material from the edge step.
  scan->refit({}, settings);
  scan->update_segments(2);
  const auto* seg = scan->segmentation();
  REQUIRE(seg->waiting.empty());
  const double ari = ari_on_material(*seg, truth);
  MESSAGE("no references: ARI " << ari << ", k " << seg->clusters.size());
  CHECK(ari > 0.9);
  for (const auto& c : seg->clusters) CHECK_FALSE(c.fitted);
}

TEST_CASE("a uniform domain stays one cluster however its thickness varies (noise must not split it)") {
  // The simulator's regions layout: pure species 0 and 1 in the top quadrants, over thickness
  // hills from 0.3 to 1 of the maximum, at a count level where thin pixels are visibly noisier.
  auto p = test::hxn_scan(155, 160);  // the demo scan
  p.counts = 2000;
  p.seed = 7;
  const auto truth = sim::simulate(test::pick(load_reference_file(test::fe_library()), kSpecies), p);
  // Live, as in the demo: the whole 11-reference library, segmentation updated every 4 energies.
  auto scan = test::run_scan(truth, load_reference_file(test::fe_library()), test::default_settings(), [](Scan& s, std::size_t e) {
    if (e % 4 == 3) s.solve_changed(2), s.update_segments(2);
  });
  scan->update_segments(2);
  const auto* seg = scan->segmentation();
  REQUIRE(seg->waiting.empty());
  for (int species = 0; species < 2; ++species) {
    std::map<int, std::size_t> votes;
    std::size_t n = 0;
    for (std::size_t q = 0; q < truth.pixels(); ++q)
      if (truth.thickness[q] > 0 && truth.fractions[static_cast<std::size_t>(species) * truth.pixels() + q] == 1.f)
        ++votes[seg->labels[q]], ++n;
    std::size_t top = 0;
    for (auto& [id, c] : votes) top = std::max(top, c);
    MESSAGE("pure " << kSpecies[static_cast<std::size_t>(species)] << ": " << votes.size() << " labels, largest "
                    << 100.0 * static_cast<double>(top) / static_cast<double>(n) << " %");
    CHECK(top >= n * 97 / 100);
  }
}

TEST_CASE("one species at varying thickness and low counts is one domain (shape size must not be biased by noise)") {
  auto p = test::hxn_scan(96, 96);
  p.layout = sim::Params::Layout::domains;
  p.counts = 300;
  p.seed = 9;
  const auto goethite = test::pick(load_reference_file(test::fe_library()), {"Goethite"});
  const auto truth = sim::simulate(goethite, p);
  auto scan = test::run_scan(truth, test::pick(load_reference_file(test::fe_library()), kSpecies), test::default_settings());
  scan->update_segments(2);
  const auto* seg = scan->segmentation();
  REQUIRE(seg->waiting.empty());
  MESSAGE("single species: k = " << seg->clusters.size() << ", scatter/noise " << seg->scatter_ratio);
  CHECK(seg->clusters.size() == 1);
}

TEST_CASE("XRF features separate domains the spectra cannot; weight 0 leaves them out") {
  // One species everywhere, but half the domains carry 5× the Fe XRF of the others (e.g. a
  // denser phase): spectrally one domain, two by XRF.
  auto p = test::hxn_scan(64, 64);
  p.layout = sim::Params::Layout::domains;
  p.counts = 1000;
  p.seed = 4;
  auto truth = sim::simulate(test::pick(load_reference_file(test::fe_library()), {"Goethite"}), p);
  std::mt19937 rng(1);
  std::vector<int> xrf_class(truth.pixels(), -1);
  for (std::size_t q = 0; q < truth.pixels(); ++q) {
    if (truth.domains[q] == 0) continue;
    xrf_class[q] = truth.domains[q] <= 2 ? 0 : 1;
    const double mean = xrf_class[q] == 0 ? 200.0 : 1000.0;
    truth.xrf[q] = static_cast<float>(std::poisson_distribution<int>(mean)(rng));
  }
  const auto refs = test::pick(load_reference_file(test::fe_library()), kSpecies);
  auto settings = test::default_settings();
  auto without = test::run_scan(truth, refs, settings);
  without->update_segments(2);
  CHECK(without->segmentation()->clusters.size() == 1);

  settings.segment.xrf_weight = 1.0;
  auto with = test::run_scan(truth, refs, settings);
  with->update_segments(2);
  const auto* seg = with->segmentation();
  REQUIRE(seg->waiting.empty());
  std::vector<int> a, b;
  for (std::size_t q = 0; q < truth.pixels(); ++q)
    if (xrf_class[q] >= 0) a.push_back(seg->labels[q]), b.push_back(xrf_class[q]);
  const double ari = adjusted_rand_index(a, b);
  MESSAGE("XRF weight 1: k = " << seg->clusters.size() << ", ARI against the XRF classes " << ari);
  CHECK(seg->clusters.size() == 2);
  CHECK(ari > 0.95);
}

TEST_CASE("transmission with flat field and dark current: Ni domains on the TXM keV grid") {
  std::vector<Reference> refs;
  for (const char* f : {"ref_NiO.txt", "ref_LiNiO2.txt"}) {
    auto r = load_reference_file(test::refs_dir() / "ni_k" / f);
    refs.insert(refs.end(), r.begin(), r.end());
  }
  sim::Params p;
  p.rows = 64, p.cols = 64;
  p.energies_eV = sim::read_energies_file(test::refs_dir() / "ni_k" / "energies_kev_txm.txt");
  p.mode = protocol::Mode::transmission;
  p.layout = sim::Params::Layout::domains;
  p.counts = 20000;
  p.dark = 100;
  p.max_thickness = 1.5;
  p.seed = 3;
  const auto truth = sim::simulate(refs, p);  // fractions of LiNiO2 per domain: 0, 1, 0.5, 0.3
  auto scan = test::run_scan(truth, refs, fixed_composition_settings()  /* fractions 0, 1, 0.5, 0.3 of one pair */);
  scan->update_segments(2);
  const auto* seg = scan->segmentation();
  REQUIRE(seg->waiting.empty());
  const double ari = ari_on_material(*seg, truth);
  MESSAGE("Ni transmission: k = " << seg->clusters.size() << ", ARI " << ari);
  CHECK(seg->clusters.size() == 4);
  CHECK(ari > 0.9);
}

TEST_CASE("few pixels: the PCA is seeded from reference mixtures, deterministically, and still finds the domains") {
  // 24×24 with the border: ~480 pixels with material, fewer than 10 × 73 energies.
  auto p = test::hxn_scan(24, 24);
  p.layout = sim::Params::Layout::domains;
  p.counts = 2000;
  p.seed = 6;
  const auto refs = test::pick(load_reference_file(test::fe_library()), kSpecies);
  const auto truth = sim::simulate(refs, p);
  std::vector<std::vector<std::uint8_t>> runs;
  for (int run = 0; run < 2; ++run) {
    auto scan = test::run_scan(truth, refs, fixed_composition_settings());
    scan->update_segments(2);
    const auto* seg = scan->segmentation();
    REQUIRE(seg->waiting.empty());
    CHECK(seg->pca.seeded_from_references);
    const double ari = ari_on_material(*seg, truth);
    MESSAGE("24×24, PCA from reference mixtures: k = " << seg->clusters.size() << ", components " << seg->pca.components
                                                       << ", ARI " << ari);
    CHECK(ari > 0.9);
    runs.push_back(seg->labels);
  }
  CHECK(runs[0] == runs[1]);  // the same seed, the same segmentation
}

// Swept over scenes and placements of the wild pixels: before the PCA left them out, 4 of 12
// placements lost one or two domains (their spikes took the leading components).
TEST_CASE("zingers and hot pixels neither get clusters of their own nor merge real domains") {
  const auto refs = test::pick(load_reference_file(test::fe_library()), kSpecies);
  for (const unsigned seed : {11u, 12u, 13u})
    for (const unsigned placement : {5u, 7u}) {
      auto p = test::hxn_scan(64, 64);
      p.layout = sim::Params::Layout::domains;
      p.counts = 2000;
      p.seed = seed;
      auto truth = sim::simulate(refs, p);
      const std::size_t P = truth.pixels(), E = p.energies_eV.size();
      std::mt19937 rng(placement);
      for (int b = 0; b < 40; ++b) {  // 1.3 % of the material: zingers (one energy 20× too bright), hot pixels
        const std::size_t q = rng() % P;
        if (b % 2 == 0) truth.counts[(rng() % E) * P + q] *= 20;
        else
          for (std::size_t e = 0; e < E; ++e) truth.counts[e * P + q] = truth.counts[e * P + q] * 5 + 3000;
      }
      auto scan = test::run_scan(truth, refs, fixed_composition_settings());
      scan->update_segments(2);
      const auto* seg = scan->segmentation();
      REQUIRE(seg->waiting.empty());
      const double ari = ari_on_material(*seg, truth);
      std::size_t smallest = P;
      for (const auto& c : seg->clusters) smallest = std::min(smallest, c.pixels);
      MESSAGE("scene " << seed << ", placement " << placement << ", 40 wild pixels: k = " << seg->clusters.size()
                       << ", ARI " << ari << ", smallest cluster " << smallest << " px");
      CHECK(seg->clusters.size() == 4);
      CHECK(smallest > 100);
      CHECK(ari > 0.95);
    }
}

// Issue 11 part 2: a realistic scene (Voronoi domains of a dominant species drifting 0–35 %
// toward a second, a thin disk at a tenth of the thickness, a one-pixel stripe of a third
// species, empty border) at 5000 and 500 counts. The default automatic k must find the
// dominant-species domains (a drifting composition is not split), the spatial smoothing must
// not eat the stripe.
TEST_CASE("scene: automatic k finds the dominant-species domains; gradients are not split; the one-pixel stripe survives") {
  const auto refs = test::pick(load_reference_file(test::fe_library()), test::scene_species());
  for (const double counts : {5000.0, 500.0})
    for (const std::uint64_t seed : {1, 2}) {
      const auto truth = sim::simulate(refs, test::scene_scan(155, 160, counts, seed));
      auto scan = test::run_scan(truth, refs, test::default_settings());
      scan->update_segments(2);
      const auto* seg = scan->segmentation();
      REQUIRE(seg->waiting.empty());
      const double ari = ari_on_material(*seg, truth), stripe = stripe_survival(*seg, truth);
      MESSAGE("scene " << counts << " counts, seed " << seed << ": k = " << seg->clusters.size() << " (" << seg->bins
                       << " k-means bins), ARI " << ari << ", stripe " << stripe << ", smoothing changed " << seg->smoothed << " px");
      CHECK(seg->clusters.size() == 4);
      CHECK(ari >= (counts >= 5000 ? 0.98 : 0.96));
      CHECK(stripe >= 0.9);
    }
}

TEST_CASE("scene, live: domain ids stay put from one publication to the next once the edge is measured") {
  const auto refs = test::pick(load_reference_file(test::fe_library()), test::scene_species());
  const auto truth = sim::simulate(refs, test::scene_scan(155, 160, 500, 3));
  const std::size_t E = truth.params.energies_eV.size();
  std::vector<std::map<int, int>> history;
  std::vector<double> aris;
  test::run_scan(truth, refs, test::default_settings(), [&](Scan& scan, std::size_t e) {
    if (e % 8 != 7 && e + 1 != E) return;
    scan.solve_changed(2);
    scan.update_segments(2);
    const auto* seg = scan.segmentation();
    if (!seg->waiting.empty()) return;
    history.push_back(majority_label(*seg, truth));
    aris.push_back(ari_on_material(*seg, truth));
  });
  REQUIRE(history.size() >= 5);
  MESSAGE("scene live: " << history.size() << " updates, ARI last three " << aris[aris.size() - 3] << " " << aris[aris.size() - 2] << " "
                         << aris.back());
  for (std::size_t i = history.size() - 3; i < history.size(); ++i) CHECK(history[i] == history[i - 1]);
  CHECK(aris.back() >= 0.96);
}

TEST_CASE("spatial smoothing: noisy pixels follow their neighbours, off changes nothing else") {
  const auto refs = test::pick(load_reference_file(test::fe_library()), test::scene_species());
  const auto truth = sim::simulate(refs, test::scene_scan(155, 160, 500, 1));
  auto settings = test::default_settings();
  settings.segment.smoothing = 0;
  auto off = test::run_scan(truth, refs, settings);
  off->update_segments(2);
  auto on = test::run_scan(truth, refs, test::default_settings());
  on->update_segments(2);
  const double a_off = ari_on_material(*off->segmentation(), truth), a_on = ari_on_material(*on->segmentation(), truth);
  MESSAGE("500 counts: ARI without smoothing " << a_off << ", with " << a_on << " (" << on->segmentation()->smoothed << " px changed)");
  CHECK(off->segmentation()->smoothed == 0);
  CHECK(a_on >= a_off);
  CHECK(stripe_survival(*on->segmentation(), truth) >= 0.9);
}

namespace {

// Two parts of one image segmented on two threads, joined as MPI ranks are (ImagePart): sums
// and gathers meet at a barrier, label rows go through queues.
class TwoParts {
 public:
  science::ImagePart part(int i, std::size_t begin, std::size_t end, int row0, int image_rows) {
    science::ImagePart p;
    p.begin = begin, p.end = end, p.row0 = row0, p.image_rows = image_rows;
    p.sum = [this, i](std::span<double> v) {
      sums_[i].assign(v.begin(), v.end());
      meet_.arrive_and_wait();
      for (std::size_t k = 0; k < v.size(); ++k) v[k] = sums_[0][k] + sums_[1][k];
      meet_.arrive_and_wait();
    };
    p.gather = [this, i](std::vector<float> v) {
      gathers_[i] = std::move(v);
      meet_.arrive_and_wait();
      std::vector<float> all = gathers_[0];
      all.insert(all.end(), gathers_[1].begin(), gathers_[1].end());
      meet_.arrive_and_wait();
      return all;
    };
    p.send_row = [this, i](int side, std::span<const std::uint8_t> row) {
      auto& q = rows_[i + side];  // the queue the part on that side reads from us
      std::lock_guard lock(q.m);
      q.rows.emplace_back(row.begin(), row.end());
      q.cv.notify_one();
    };
    p.receive_row = [this, i](int, std::span<std::uint8_t> row) {
      auto& q = rows_[i];
      std::unique_lock lock(q.m);
      q.cv.wait(lock, [&] { return !q.rows.empty(); });
      std::copy(q.rows.front().begin(), q.rows.front().end(), row.begin());
      q.rows.pop_front();
    };
    return p;
  }

 private:
  std::barrier<> meet_{2};
  std::vector<double> sums_[2];
  std::vector<float> gathers_[2];
  struct Queue {  // rows sent to one part (two parts: each has one neighbour)
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::vector<std::uint8_t>> rows;
  } rows_[2];
};

// A copy of rows [r0, r1) of `in`'s arrays, as a rank holding them would.
struct Window {
  std::vector<float> planes, xrf;
  std::vector<std::uint8_t> material;
  SegmentInput in;
  Window(const SegmentInput& whole, int r0, int r1) : in(whole) {
    const auto cols = static_cast<std::size_t>(whole.cols), n = static_cast<std::size_t>(r1 - r0) * cols;
    const auto at = static_cast<std::size_t>(r0) * cols;
    for (std::size_t e = 0; e < whole.energies->size(); ++e)
      planes.insert(planes.end(), whole.planes + e * whole.npix + at, whole.planes + e * whole.npix + at + n);
    for (int c = 0; c < whole.xrf_channels && whole.xrf; ++c)
      xrf.insert(xrf.end(), whole.xrf + static_cast<std::size_t>(c) * whole.npix + at, whole.xrf + static_cast<std::size_t>(c) * whole.npix + at + n);
    if (whole.material) material.assign(whole.material + at, whole.material + at + n);
    in.planes = planes.data(), in.npix = n, in.rows = r1 - r0;
    in.xrf = xrf.empty() ? nullptr : xrf.data();
    in.material = whole.material ? material.data() : nullptr;
    in.slices.first_row = r0;
  }
};

}  // namespace

TEST_CASE("an image segmented in two parts (MPI ranks' blocks) gets the labels of the whole; cluster sums to rounding") {
  // The scene at 500 counts: domains, gradients, the stripe; the smoothing relabels pixels.
  const auto refs = test::pick(load_reference_file(test::fe_library()), test::scene_species());
  const auto truth = sim::simulate(refs, test::scene_scan(155, 150, 500, 1));
  for (const int sample : {40000, 3000}) {  // every pixel, then a random sample
    CAPTURE(sample);
    auto settings = test::default_settings();
    settings.segment.sample = sample;
    auto scan = test::run_scan(truth, refs, settings);
    const SegmentInput whole = scan->segment_input(2);
    OnlineSegmenter one(settings.segment);
    one.update(whole);
    REQUIRE(one.result().waiting.empty());

    // Cuts through rows the smoothing changes (so the rows the sweeps pass across them decide
    // labels), not at multiples of 8 rows (so a run of 16 sampled pixels straddles them).
    constexpr int halo = 3, rows = 155;
    const auto cols = static_cast<std::size_t>(whole.cols);
    auto unsmoothed_settings = settings.segment;
    unsmoothed_settings.smoothing = 0;
    OnlineSegmenter unsmoothed(unsmoothed_settings);
    unsmoothed.update(whole);
    std::vector<int> cuts;
    for (int row = 20; row < rows - 20; ++row)
      for (std::size_t c = 0; c < cols && row % 8 != 0; ++c)
        if (unsmoothed.result().labels[static_cast<std::size_t>(row) * cols + c] != one.result().labels[static_cast<std::size_t>(row) * cols + c]) {
          cuts.push_back(row);
          break;
        }
    REQUIRE(cuts.size() >= 6);
    const auto& r = one.result();
    for (std::size_t i = 0; i < 6; ++i) {  // 6 of them, spread over the image
      const int cut = cuts[i * (cuts.size() - 1) / 5];
      CAPTURE(cut);
      TwoParts link;
      Window top(whole, 0, cut + halo), bottom(whole, cut - halo, rows);
      const auto top_part = link.part(0, 0, cut * cols, 0, rows);
      const auto bottom_part = link.part(1, halo * cols, static_cast<std::size_t>(rows - cut + halo) * cols, cut, rows);
      top.in.part = &top_part, bottom.in.part = &bottom_part;
      OnlineSegmenter a(settings.segment), b(settings.segment);
      {
        std::jthread other([&] { b.update(bottom.in); });
        a.update(top.in);
      }
      for (const auto* part : {&a.result(), &b.result()}) {
        CHECK(part->waiting.empty());
        CHECK(part->clusters.size() == r.clusters.size());
        CHECK(part->smoothed == r.smoothed);
        CHECK(part->labelled == r.labelled);
        CHECK(part->pca.components == r.pca.components);
      }
      std::vector<std::uint8_t> joined(a.result().labels.begin(), a.result().labels.begin() + cut * static_cast<std::ptrdiff_t>(cols));
      joined.insert(joined.end(), b.result().labels.begin() + halo * static_cast<std::ptrdiff_t>(cols), b.result().labels.end());
      CHECK(joined == r.labels);
      for (std::size_t c = 0; c < r.clusters.size() && c < b.result().clusters.size(); ++c) {
        const auto &x = r.clusters[c], &y = b.result().clusters[c];
        CHECK(x.id == y.id);
        CHECK(x.pixels == y.pixels);
        for (std::size_t e = 0; e < x.mean.size(); ++e)
          if (std::isfinite(x.mean[e])) CHECK(y.mean[e] == doctest::Approx(x.mean[e]).epsilon(1e-9));
        for (std::size_t k = 0; k < x.fractions.size(); ++k) CHECK(y.fractions[k] == doctest::Approx(x.fractions[k]).epsilon(1e-9));
      }
    }
  }
}

TEST_CASE("a live segmentation stops within its per-pixel passes when cancelled, not only between its steps") {
  // 256 × 512 pixels: two pieces of the labelling pass, and the smoothing's rows in pieces too.
  // Uncancelled, the segmentation looks at the cancellation more often than its 4 steps; told to
  // stop at one of the looks inside the passes, it throws Cancelled there.
  const auto truth = domain_scan(2000, 5, 256, 512);
  auto scan = test::run_scan(truth, test::pick(load_reference_file(test::fe_library()), kSpecies), fixed_composition_settings());
  int looks = 0;
  {
    auto a = scan->begin_analysis(1);
    const CancelScope count([&] { return ++looks, false; });
    scan->run_segmentation(a);
    REQUIRE(a.segmenter);
    REQUIRE(a.segmenter->result().waiting.empty());
  }
  MESSAGE("looks at the cancellation in one update: " << looks);
  CHECK(looks >= 4 + 2 + 2);  // between the steps, the labelling's pieces, the first sweep's rows
  {
    int seen = 0;
    const int stop_at = looks - 2;  // inside the smoothing's sweeps or the labelling (after step 3's look)
    auto a = scan->begin_analysis(1);
    const CancelScope stop([&] { return ++seen >= stop_at; });
    CHECK_THROWS_AS(scan->run_segmentation(a), Cancelled);
    CHECK(seen == stop_at);
  }

  // The scan's own segmenter, cancelled inside its labelling pass, is left as it was; its next
  // update equals that of a twin never cancelled (same sample draws, same cluster ids).
  auto twin = test::run_scan(truth, test::pick(load_reference_file(test::fe_library()), kSpecies), fixed_composition_settings());
  scan->update_segments(1), twin->update_segments(1);
  const auto before = scan->segmentation()->labels;
  REQUIRE(before == twin->segmentation()->labels);
  {
    int n = 0;
    // Three looks between the steps, then the labelling's first piece: the fifth is its second,
    // with half the pixels relabelled.
    const CancelScope stop_inside([&] { return ++n >= 5; });
    CHECK_THROWS_AS(scan->update_segments(1), Cancelled);
  }
  CHECK(scan->segmentation()->labels == before);
  CHECK(scan->segmentation()->updates == twin->segmentation()->updates);
  scan->update_segments(1), twin->update_segments(1);
  CHECK(scan->segmentation()->labels == twin->segmentation()->labels);
  CHECK(scan->segmentation()->clusters.size() == twin->segmentation()->clusters.size());
}
