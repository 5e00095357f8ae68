// References as beamlines keep them: XDI scans with detector columns, CSV with a header row,
// Athena projects (gzipped Perl text, parsed as data), L-edge spectra in optical density.
// The files in tests/data/references/ are made by tests/data/make_reference_fixtures.py from
// the shipped Fe K library; the L-edge spectra there are synthetic.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "science/lcf.hpp"
#include "science/references.hpp"
#include "support.hpp"

using namespace xanesd::science;
namespace fs = std::filesystem;

namespace {

fs::path data() { return xanesd::test::source_dir() / "tests" / "data" / "references"; }

Reference library(const std::string& name) {
  for (auto& r : load_reference_file(xanesd::test::fe_library()))
    if (r.name == name) return r;
  FAIL("no " << name << " in the library");
  return {};
}

// Largest |a − b| over a's energies in [lo, hi] (b interpolated).
double worst_difference(const Reference& a, const Reference& b, double lo, double hi) {
  double worst = 0;
  for (std::size_t i = 0; i < a.energies_eV.size(); ++i)
    if (a.energies_eV[i] >= lo && a.energies_eV[i] <= hi)
      worst = std::max(worst, std::abs(a.mu[i] - interpolate(b.energies_eV, b.mu, a.energies_eV[i])));
  return worst;
}

// Largest |μ − (offset + slope·(E − 7112) + step·library)| over the file's energies: how the
// fixture maker built a raw μ from the library (tests/data/make_reference_fixtures.py).
double worst_raw_difference(const Reference& a, const Reference& lib, double offset, double slope, double step) {
  double worst = 0;
  for (std::size_t i = 0; i < a.energies_eV.size(); ++i) {
    const double e = a.energies_eV[i];
    worst = std::max(worst, std::abs(a.mu[i] - (offset + slope * (e - 7112) + step * interpolate(lib.energies_eV, lib.mu, e))));
  }
  return worst;
}

std::string error_of(const fs::path& p, NormalizeMode mode = NormalizeMode::automatic) {
  try {
    load_reference_file(p, mode);
  } catch (const ReferenceError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("an XDI transmission scan (energy i0 itrans) gives one reference, μ = ln(i0/itrans); i0 is never a reference") {
  const auto refs = load_reference_file(data() / "goethite_trans.xdi");
  REQUIRE(refs.size() == 1);
  CHECK(refs[0].name == "Goethite");  // XDI Sample.name
  CHECK(refs[0].column == "ln(i0/itrans)");
  CHECK(refs[0].normalized_here);  // raw μ: edge-normalized
  CHECK(refs[0].normalization.rfind("edge step", 0) == 0);
  // μ = ln(i0/itrans) is the raw μ the file was made from: 0.4 − 10⁻⁴·(E − 7112) + 1.3·goethite.
  const auto raw = load_reference_file(data() / "goethite_trans.xdi", NormalizeMode::never);
  CHECK(worst_raw_difference(raw[0], library("Goethite"), 0.4, -1e-4, 1.3) < 1e-4);
  // Normalized, it is the library's goethite again, within what Larch-style normalization of
  // a XANES-only range (~300 eV) recovers.
  CHECK(worst_difference(refs[0], library("Goethite"), 7100, 7250) < 0.1);
}

TEST_CASE("an XDI scan with a μ column uses it; with raw fluorescence columns μ = ifluor/i0") {
  const auto m = load_reference_file(data() / "magnetite_fluor.xdi");
  REQUIRE(m.size() == 1);
  CHECK(m[0].name == "Magnetite");
  CHECK(m[0].column == "mufluor");
  CHECK(worst_raw_difference(load_reference_file(data() / "magnetite_fluor.xdi", NormalizeMode::never)[0], library("Magnetite"), 0.3, 0, 2.0) < 1e-5);
  CHECK(worst_difference(m[0], library("Magnetite"), 7100, 7250) < 0.1);
  const auto p = load_reference_file(data() / "pyrite_fluor_raw.xdi");
  REQUIRE(p.size() == 1);
  CHECK(p[0].name == "pyrite_fluor_raw");  // no Sample.name: the file name
  CHECK(p[0].column == "ifluor/i0");
  CHECK(worst_raw_difference(load_reference_file(data() / "pyrite_fluor_raw.xdi", NormalizeMode::never)[0], library("Pyrite"), 0.05, 0, 0.5) < 1e-5);
  CHECK(worst_difference(p[0], library("Pyrite"), 7100, 7250) < 0.15);
}

TEST_CASE("a CSV library with a header row: one reference per column, named by the header, keV declared there") {
  const auto refs = load_reference_file(data() / "fe_two.csv");
  REQUIRE(refs.size() == 2);
  CHECK(refs[0].name == "Goethite");
  CHECK(refs[1].name == "Pyrite");
  CHECK(refs[0].energies_eV.front() == doctest::Approx(7090));
  CHECK_FALSE(refs[0].normalized_here);  // already normalized: left alone
  CHECK(refs[0].normalization == "already normalized");
  CHECK(worst_difference(refs[1], library("Pyrite"), 7090, 7400) < 2e-4);  // 6 decimals of keV in the file
}

TEST_CASE("a gzipped Athena project: its μ(E) groups by label, energy shift applied, χ groups skipped") {
  const auto refs = load_reference_file(data() / "fe_project.prj");
  REQUIRE(refs.size() == 2);
  CHECK(refs[0].name == "Hematite NP");
  CHECK(refs[1].name == "Fe(III)PO4");
  CHECK(refs[1].energies_eV.front() == doctest::Approx(7090));  // stored 7089.5 + bkg_eshift 0.5
  CHECK(refs[0].normalized_here);
  CHECK(refs[0].column == "Athena group ahxyz (@y)");
  const auto raw = load_reference_file(data() / "fe_project.prj", NormalizeMode::never);
  CHECK(worst_raw_difference(raw[0], library("Hematite_NP"), 0.3, 2e-4, 1.7) < 1e-5);
  CHECK(worst_raw_difference(raw[1], library("Fe(III)PO4"), 0.1, 0, 0.9) < 1e-5);
  CHECK(worst_difference(refs[0], library("Hematite_NP"), 7100, 7250) < 0.1);
  CHECK(worst_difference(refs[1], library("Fe(III)PO4"), 7100, 7250) < 0.1);
}

TEST_CASE("bad files get errors that name the file, the line and what was expected") {
  const auto dir = xanesd::test::scratch("bad-references");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return dir / name;
  };
  // A CSV with only a header used to say "fewer than 4 data rows" and nothing else.
  auto e = error_of(write("header_only.csv", "energy,mu\n"));
  CHECK(e.find("header_only.csv") != std::string::npos);
  CHECK(e.find("0 rows of numbers") != std::string::npos);
  CHECK(e.find("commas") != std::string::npos);
  e = error_of(write("ragged.csv", "energy,mu\n7000,0\n7001,0\n7002\n"));
  CHECK(e.find("ragged.csv:4") != std::string::npos);
  e = error_of(write("i0_only.xdi", "# Column.1: energy eV\n# Column.2: i0\n# Column.3: irefer\n7000 1 2\n7001 1 2\n7002 1 2\n7003 1 2\n"));
  CHECK(e.find("no μ column") != std::string::npos);
  e = error_of(write("dark.xdi", "# energy i0 itrans\n7000 1 2\n7001 0 2\n7002 1 2\n7003 1 2\n7004 1 2\n7005 1 2\n"));
  CHECK(e.find("dark.xdi:3") != std::string::npos);
  CHECK(e.find("positive") != std::string::npos);
  e = error_of(write("broken.prj", "# Athena project file -- Demeter version 0.9.26\n$old_group = 'a';\n@args = ('label','x');\n@x = ('7000','7001';\n"));
  CHECK(e.find("broken.prj:4") != std::string::npos);
  e = error_of(write("words.prj", "# Athena project file -- Demeter version 0.9.26\n@x = ('7000','abc');\n@y = ('1','2');\n[record]\n"));
  CHECK(e.find("words.prj:2") != std::string::npos);
  e = error_of(write("empty.prj", "# Athena project file -- Demeter version 0.9.26\n1;\n"));
  CHECK(e.find("no μ(E) group") != std::string::npos);
  // A gzip stream cut short.
  std::ifstream in(data() / "fe_project.prj", std::ios::binary);
  std::string gz{std::istreambuf_iterator<char>(in), {}};
  e = error_of(write("cut.prj", gz.substr(0, gz.size() / 2)));
  CHECK(e.find("cut.prj") != std::string::npos);
  CHECK(e.find("gzip") != std::string::npos);
}

TEST_CASE("the Athena project and gzip readers survive mangled input: a ReferenceError, never a crash") {
  std::ifstream in(data() / "fe_project.prj", std::ios::binary);
  const std::string gz{std::istreambuf_iterator<char>(in), {}};
  const auto dir = xanesd::test::scratch("fuzz-references");
  // The plain text too: decompress once through the loader's own path by writing it out.
  std::mt19937 rng(7);
  int errors = 0, loaded = 0;
  for (int round = 0; round < 300; ++round) {
    std::string s = gz;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < edits; ++k) {
      const auto pos = rng() % s.size();
      switch (rng() % 3) {
        case 0: s[pos] = static_cast<char>(rng()); break;
        case 1: s.erase(pos, 1 + rng() % 16); break;
        default: s.insert(pos, 1, "'(),;=@$[\n"[rng() % 10]);
      }
      if (s.size() < 4) s = gz;
    }
    std::ofstream(dir / "m.prj", std::ios::binary) << s;
    try {
      const auto refs = load_reference_file(dir / "m.prj");
      loaded += !refs.empty();
    } catch (const ReferenceError&) {
      ++errors;
    }
  }
  CHECK(errors + loaded == 300);
  CHECK(errors > 0);
}

TEST_CASE("Fe L-edge spectra in optical density load with normalize=auto and fit a mixture (synthetic L3/L2)") {
  const auto fe2 = load_reference_file(data() / "feii_od_synthetic.txt");
  const auto fe3 = load_reference_file(data() / "feiii_od_synthetic.txt");
  REQUIRE(fe2.size() == 1);
  REQUIRE(fe3.size() == 1);
  CHECK(fe2[0].name == "FeII_L");
  // auto saw that an edge step means nothing here and said what it did instead.
  CHECK(fe2[0].normalization.find("pre-edge line subtracted, scale kept") == 0);
  CHECK(fe2[0].normalized_here);
  // The pre-edge is at zero, the scale is still OD (L3 peak ~0.9 above the background).
  CHECK(std::abs(fe2[0].mu.front()) < 0.01);
  const double peak = *std::max_element(fe2[0].mu.begin(), fe2[0].mu.end());
  CHECK(peak > 0.8);
  CHECK(peak < 1.1);
  // always still refuses, and says which mode would take it.
  CHECK(error_of(data() / "feii_od_synthetic.txt", NormalizeMode::always).find("normalize=auto or background") != std::string::npos);

  // A 30 % Fe(II) / 70 % Fe(III) pixel in OD, 0.5 thick, on its own sloped background, with noise.
  const std::vector<Reference> refs{fe2[0], fe3[0]};
  const auto raw2 = load_reference_file(data() / "feii_od_synthetic.txt", NormalizeMode::never)[0];
  const auto raw3 = load_reference_file(data() / "feiii_od_synthetic.txt", NormalizeMode::never)[0];
  std::vector<double> E;
  for (double e = 700; e <= 730; e += 0.5) E.push_back(e);
  const auto X = resample(refs, E, 1.0);
  const auto model = make_lcf_model({"FeII_L", "FeIII_L"}, X, E, true);
  std::mt19937 rng(3);
  std::normal_distribution<double> noise(0, 0.005);
  Eigen::VectorXd y(static_cast<Eigen::Index>(E.size()));
  for (std::size_t j = 0; j < E.size(); ++j)
    y(static_cast<Eigen::Index>(j)) = 0.2 + 0.001 * (E[j] - 700) +
                                      0.5 * (0.3 * interpolate(raw2.energies_eV, raw2.mu, E[j]) + 0.7 * interpolate(raw3.energies_eV, raw3.mu, E[j])) +
                                      noise(rng);
  SolveOptions opt;
  const auto r = solve(model.X.transpose() * model.X, model.X.transpose() * y, y.squaredNorm(), static_cast<int>(E.size()), opt);
  REQUIRE(r.ok);
  const double c2 = r.theta(2), c3 = r.theta(3);
  CHECK(c2 / (c2 + c3) == doctest::Approx(0.3).epsilon(0.03 / 0.3));
  CHECK(c2 + c3 == doctest::Approx(0.5).epsilon(0.05));
}

TEST_CASE("normalize modes by name, and the K-edge behaviour of auto is unchanged") {
  CHECK(normalize_mode_from_string("background") == NormalizeMode::background);
  CHECK_THROWS_AS(normalize_mode_from_string("sometimes"), ReferenceError);
  // A raw K-edge spectrum is still edge-normalized by its edge step.
  const auto g = load_reference_file(data() / "goethite_trans.xdi");
  CHECK(g[0].normalization.rfind("edge step", 0) == 0);
}
