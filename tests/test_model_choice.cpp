// Choosing the model from the data (which references): image-level reference selection on
// scenes built from the shipped library, with the whole 11-reference library loaded.
#include <doctest/doctest.h>

#include <map>
#include <set>

#include "science/reference_selection.hpp"
#include "science_support.hpp"

using namespace xanesd;
using namespace xanesd::science;
using test::default_settings;
using test::pick;
using test::run_scan;

TEST_CASE("image-level selection finds the scene's species in the 11-reference library") {
  const auto library = load_reference_file(test::fe_library());
  const auto refs = pick(library, test::scene_species());
  for (double counts : {5000.0, 500.0}) {
    const auto truth = sim::simulate(refs, test::scene_scan(96, 96, counts, 5));
    const auto scan = run_scan(truth, library, default_settings());
    const auto& model = scan->fit()->model();
    const auto ev = selection_evidence(model, scan->spectra().data(), scan->pixels(), scan->rows(), scan->cols(),
                                       scan->mask().valid.data(), 1024);
    const auto sel = select_references(model, ev, ReferenceSelectionSettings{});
    std::string report;
    for (const auto& r : sel.references)
      report += r.name + (r.selected ? "* " : " ") + std::to_string(r.delta_chi2) + "/" + std::to_string(r.threshold) +
                " s=" + std::to_string(r.stability) + "\n";
    MESSAGE(counts << " counts: " << sel.tiles << " tiles, σ " << sel.pixel_sigma << ", misfit/point " << sel.misfit_per_point
                   << "\n" << report);
    auto names = sel.selected_names();
    std::sort(names.begin(), names.end());
    auto want = test::scene_species();
    std::sort(want.begin(), want.end());
    CHECK(names == want);
  }
}

TEST_CASE("reference-free fallback: a domain no loaded reference explains is flagged, and its mean spectrum fits it") {
  const auto library = load_reference_file(test::fe_library());
  const auto species = pick(library, test::scene_species());  // Hematite_NP is the fourth
  const auto truth = sim::simulate(species, test::scene_scan(80, 80, 5000, 5));
  const std::vector<Reference> loaded(species.begin(), species.begin() + 3);  // Hematite_NP missing
  auto scan = run_scan(truth, loaded, default_settings());
  scan->update_reference_selection(2);
  scan->update_segments(2);
  const auto* seg = scan->segmentation();
  REQUIRE(seg);
  REQUIRE(seg->waiting.empty());
  // The cluster holding most of the Hematite-dominated pixels (truth domain 4), and the one
  // holding most Magnetite-dominated pixels (domain 1, drifting toward Goethite: both loaded).
  auto majority_cluster = [&](int domain) {
    std::map<int, int> count;
    for (std::size_t p = 0; p < truth.pixels(); ++p)
      if (truth.domains[p] == domain && !truth.stripe[p]) ++count[seg->labels[p]];
    return std::max_element(count.begin(), count.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  };
  const int hematite = majority_cluster(4), magnetite = majority_cluster(1);
  REQUIRE(hematite != magnetite);
  auto summary = [&](int id) {
    for (const auto& c : seg->clusters)
      if (c.id == id) return c;
    FAIL("no cluster " << id);
    return science::ClusterSummary{};
  };
  const auto h = summary(hematite), m = summary(magnetite);
  MESSAGE("Hematite domain: residual " << h.residual << " noise " << h.noise << " thickness " << h.thickness
                                       << "; Magnetite domain: residual " << m.residual << " noise " << m.noise);
  CHECK(h.unexplained);
  CHECK_FALSE(m.unexplained);
  CHECK(scan->summary()["fit"]["unexplained_clusters"].size() >= 1);

  // Load that domain's mean spectrum as a reference: the misfit of its pixels falls (what is
  // left is their noise).
  auto misfit = [&](const Scan& s) {  // mean squared RMS residual of the Hematite-dominated pixels
    double sum = 0;
    int n = 0;
    for (std::size_t p = 0; p < truth.pixels(); ++p)
      if (truth.domains[p] == 4 && !truth.stripe[p] && s.mask().valid[p])
        sum += static_cast<double>(s.fit()->maps().residual[p]) * s.fit()->maps().residual[p], ++n;
    return sum / n;
  };
  const double before = misfit(*scan);
  auto refs = loaded;
  refs.push_back(scan->cluster_reference(hematite, "domain"));
  CHECK_THROWS_AS(scan->cluster_reference(250, ""), std::invalid_argument);
  scan->refit(refs, default_settings());
  scan->solve_changed(2);
  scan->update_reference_selection(2);
  const auto names = scan->fit()->model().reference_names;
  CHECK(std::find(names.begin(), names.end(), "domain") != names.end());
  const double after = misfit(*scan);
  MESSAGE("mean squared residual of the Hematite-dominated pixels: " << before << " → " << after);
  CHECK(after < 0.7 * before);
}

TEST_CASE("live: the selection is revised as energies arrive, settles on the true set and does not flicker") {
  const auto library = load_reference_file(test::fe_library());
  const auto refs = pick(library, test::scene_species());
  const auto truth = sim::simulate(refs, test::scene_scan(64, 64, 500, 8));
  std::vector<std::vector<std::string>> history;
  auto scan = run_scan(truth, library, default_settings(), [&](Scan& s, std::size_t e) {
    if (e % 4 != 3) return;  // a segmentation cycle every few frames, as the pipeline's interval gives
    s.solve_changed(2);
    s.update_reference_selection(2);
    if (s.reference_selection() && s.reference_selection()->done())
      history.push_back(s.fit()->model().reference_names);
  });
  REQUIRE(history.size() >= 5);
  auto want = test::scene_species();
  std::sort(want.begin(), want.end());
  auto last = history.back();
  std::sort(last.begin(), last.end());
  CHECK(last == want);
  int changes = 0;
  for (std::size_t i = 1; i < history.size(); ++i) changes += history[i] != history[i - 1];
  std::string trace;
  for (const auto& h : history) trace += std::to_string(h.size()) + " ";
  MESSAGE(history.size() << " live selections, " << changes << " changes of the fitted set; sizes " << trace);
  // No flicker: a reference that left the fitted set does not come back.
  std::set<std::string> left;
  for (std::size_t i = 1; i < history.size(); ++i) {
    for (const auto& name : history[i]) CHECK_MESSAGE(!left.count(name), name << " left and came back");
    for (const auto& name : history[i - 1])
      if (std::find(history[i].begin(), history[i].end(), name) == history[i].end()) left.insert(name);
  }
  // Once the whole edge is measured (the last third of the grid), the set holds.
  for (std::size_t i = history.size() * 2 / 3; i < history.size(); ++i) CHECK(history[i] == history.back());
}
