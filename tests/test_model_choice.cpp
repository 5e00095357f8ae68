// Choosing the model from the data (which references): image-level reference selection on
// scenes built from the shipped library, with the whole 11-reference library loaded.
#include <doctest/doctest.h>

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
