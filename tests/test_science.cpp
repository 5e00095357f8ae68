// Science library: reference loading, resampling, the LCF solvers and the incremental fit.
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include <time.h>

#include "science/incremental_lcf.hpp"
#include "science/masks.hpp"
#include "science/normalize.hpp"
#include "science/parallel.hpp"
#include "science/references.hpp"
#include "support.hpp"

using namespace xanesd;
using namespace xanesd::science;

TEST_CASE("parallel_ranges: every item once, from concurrent and nested callers; an exception reaches the caller") {
  // Four callers at once, each asking for 8 ranges with 2 nested ranges inside each: the pool
  // has fewer workers than that, so callers must do their own ranges rather than wait.
  constexpr std::size_t n = 10000;
  std::vector<std::jthread> callers;
  std::vector<std::vector<int>> seen(4, std::vector<int>(n, 0));
  std::atomic<int> bad_ranges{0};
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&, c] {
      for (int repeat = 0; repeat < 50; ++repeat)
        parallel_ranges(n, 8, 100, [&](int t, std::size_t b, std::size_t e) {
          if (t < 0 || t >= 8 || b != n * static_cast<std::size_t>(t) / 8) ++bad_ranges;
          parallel_ranges(e - b, 2, 1, [&](int, std::size_t b2, std::size_t e2) {
            for (std::size_t i = b + b2; i < b + e2; ++i) ++seen[static_cast<std::size_t>(c)][i];
          });
        });
    });
  callers.clear();  // joins them
  CHECK(bad_ranges.load() == 0);
  for (const auto& s : seen) CHECK(std::count(s.begin(), s.end(), 50) == static_cast<std::ptrdiff_t>(n));
  // A range that throws: the others still run to their end, the caller gets the exception.
  std::atomic<int> ran{0};
  CHECK_THROWS_WITH_AS(parallel_ranges(8, 8, 1,
                                       [&](int t, std::size_t, std::size_t) {
                                         ++ran;
                                         if (t == 5) throw std::runtime_error("range 5 failed");
                                       }),
                       "range 5 failed", std::runtime_error);
  CHECK(ran.load() == 8);
}

TEST_CASE("work_cpu_time counts the CPU of ranges run by pool workers for the caller") {
  if (std::thread::hardware_concurrency() < 2) return;  // no pool workers: nothing to count
  // Each range spins for 20 ms of its own thread's CPU time and reports it; whichever thread ran
  // it, the caller's work_cpu_time grows by at least their sum (less the clock's granularity).
  // The first range to start waits until a second one has started: that one runs on another
  // thread, a pool worker, so the test covers what workers spend for the caller.
  auto thread_cpu = [] {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec);
  };
  std::atomic<std::int64_t> spent_ns{0};
  std::atomic<int> started{0};
  std::mutex threads_mutex;
  std::set<std::thread::id> threads;
  const auto before = work_cpu_time();
  parallel_ranges(4, 4, 1, [&](int, std::size_t, std::size_t) {
    {
      std::lock_guard lock(threads_mutex);
      threads.insert(std::this_thread::get_id());
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    if (++started == 1)
      while (started.load() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    const auto t0 = thread_cpu();
    volatile double x = 1;
    while (thread_cpu() - t0 < std::chrono::milliseconds(20)) x = x * 1.0000001;
    spent_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(thread_cpu() - t0).count();
  });
  const auto counted = work_cpu_time() - before;
  CHECK(threads.size() >= 2);
  CHECK(spent_ns.load() >= 80'000'000);
  CHECK(counted.count() >= spent_ns.load() - 1'000'000);
}

TEST_CASE("Athena XDI multi-column export: 11 named references in eV") {
  const auto refs = load_reference_file(test::fe_library());
  REQUIRE(refs.size() == 11);
  CHECK(refs[0].name == "Magnetite");
  CHECK(refs[6].name == "LiFe(II)PO4");
  CHECK(refs[10].name == "Hematite_NP");
  CHECK(refs[0].energies_eV.front() == doctest::Approx(7090.0));
  CHECK(refs[0].energies_eV.back() == doctest::Approx(7199.7197));
  // Normalized: ~0 before the edge, ~1 after.
  CHECK(std::abs(refs[2].mu.front()) < 0.05);
  CHECK(refs[2].mu.back() == doctest::Approx(1.0).epsilon(0.1));
}

TEST_CASE("two-column keV file is converted to eV; raw .e file with spaces is named from its header") {
  const auto ni = load_reference_file(test::refs_dir() / "ni_k" / "ref_NiO.txt");
  REQUIRE(ni.size() == 1);
  CHECK(ni[0].name == "ref_NiO");
  CHECK(ni[0].energies_eV.front() == doctest::Approx(8200.0));
  CHECK(ni[0].energies_eV.back() == doctest::Approx(9000.0));
  const auto g = load_reference_file(test::refs_dir() / "fe_k_standards_raw" / "Goethite FeXANES.e");
  REQUIRE(g.size() == 1);
  CHECK(g[0].name == "Goethite");
  CHECK(g[0].energies_eV.front() == doctest::Approx(6910.9281));
}

TEST_CASE("resampling refuses a scan beyond the margin and names the reference") {
  const auto refs = load_reference_file(test::fe_library());
  const std::vector<double> inside = {7080, 7120, 7190};  // 10 eV below the library: within 20 eV
  const auto R = resample(refs, inside, 20.0);
  CHECK(R.rows() == 3);
  CHECK(R(0, 0) == doctest::Approx(refs[0].mu.front()));  // end value held
  const std::vector<double> outside = {7000, 7120};
  CHECK_THROWS_WITH_AS(resample(refs, outside, 20.0), doctest::Contains("Magnetite"), ReferenceError);
  CHECK_THROWS_WITH_AS(resample(refs, outside, 20.0), doctest::Contains("references.margin_eV"), ReferenceError);
  CHECK_THROWS_AS(load_reference_file(test::refs_dir() / "no-such-file.nor"), ReferenceError);
}

TEST_CASE("signal normalization") {
  CHECK(fluorescence_signal(110, 10, 200) == doctest::Approx(0.5));
  CHECK(std::isnan(fluorescence_signal(110, 10, 0)));
  bool clamped = true;
  CHECK(transmission_signal(500, 0, 1000, 1e-6, clamped) == doctest::Approx(std::log(2.0)));
  CHECK_FALSE(clamped);
  const double y = transmission_signal(5, 10, 1000, 1e-6, clamped);  // counts below dark
  CHECK(clamped);
  CHECK(std::isfinite(y));
  CHECK(y == doctest::Approx(-std::log(1e-6)));
  transmission_signal(100, 10, 10, 1e-6, clamped);  // flat == dark: no beam
  CHECK(clamped);
}

namespace {

struct Problem {
  LcfModel model;
  std::vector<double> energies;
};

Problem fe_problem(const std::vector<std::string>& names) {
  auto all = load_reference_file(test::fe_library());
  std::vector<Reference> refs;
  for (const auto& n : names)
    for (const auto& r : all)
      if (r.name == n) refs.push_back(r);
  Problem p;
  p.energies = {};
  for (double e = 7080; e <= 7196; e += 2) p.energies.push_back(e);
  p.model = make_lcf_model(names, resample(refs, p.energies, 20), p.energies, true);
  return p;
}

// An energy-major stack (E planes of P) of random 3-reference mixtures of p with Gaussian noise.
std::vector<float> mixture_planes(const Problem& p, std::size_t P, unsigned seed) {
  const auto E = static_cast<int>(p.energies.size());
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::normal_distribution<double> noise(0, 0.01);
  std::vector<float> planes(static_cast<std::size_t>(E) * P);
  for (std::size_t px = 0; px < P; ++px) {
    Eigen::VectorXd theta(5);
    theta << 0.02, 0.01, u(rng), u(rng), u(rng);
    const Eigen::VectorXd y = p.model.X * theta;
    for (int e = 0; e < E; ++e) planes[static_cast<std::size_t>(e) * P + px] = static_cast<float>(y(e) + noise(rng));
  }
  return planes;
}

// Exact NNLS optimum by enumerating every active set (small K only): the truth to test against.
double brute_force_nnls_chi2(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n_free) {
  const int M = static_cast<int>(G.rows()), K = M - n_free;
  double best = INFINITY;
  for (int mask = 0; mask < (1 << K); ++mask) {
    std::vector<int> idx;
    for (int i = 0; i < n_free; ++i) idx.push_back(i);
    for (int k = 0; k < K; ++k)
      if (mask & (1 << k)) idx.push_back(n_free + k);
    const auto n = static_cast<Eigen::Index>(idx.size());
    Eigen::MatrixXd A(n, n);
    Eigen::VectorXd b(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      b(i) = s(idx[i]);
      for (Eigen::Index j = 0; j < n; ++j) A(i, j) = G(idx[i], idx[j]);
    }
    const Eigen::VectorXd z = A.ldlt().solve(b);
    bool feasible = true;
    Eigen::VectorXd theta = Eigen::VectorXd::Zero(M);
    for (Eigen::Index i = 0; i < n; ++i) {
      theta(idx[i]) = z(i);
      if (idx[i] >= n_free && z(i) < -1e-12) feasible = false;
    }
    if (feasible) best = std::min(best, chi_squared(G, s, q, theta));
  }
  return best;
}

}  // namespace

TEST_CASE("least squares recovers exact coefficients and background from noise-free data") {
  const auto p = fe_problem({"Magnetite", "Goethite", "Pyrite"});
  Eigen::VectorXd theta(5);
  theta << 0.03, -0.01, 0.5, 0.3, 0.2;
  const Eigen::VectorXd y = p.model.X * theta;
  const Eigen::MatrixXd G = p.model.X.transpose() * p.model.X;
  const Eigen::VectorXd s = p.model.X.transpose() * y;
  const auto r = solve_least_squares(G, s, y.squaredNorm());
  REQUIRE(r.ok);
  for (int i = 0; i < 5; ++i) CHECK(r.theta(i) == doctest::Approx(theta(i)).epsilon(1e-6));
  CHECK(r.chi2 < 1e-12);
}

TEST_CASE("NNLS: never negative, and equal to the exhaustive optimum") {
  const auto p = fe_problem({"Magnetite", "Maghemite", "Goethite", "HFO", "Pyrite", "Hematite_NP"});
  const Eigen::MatrixXd G = p.model.X.transpose() * p.model.X;
  std::mt19937 rng(3);
  std::normal_distribution<double> noise(0, 0.02);
  std::uniform_real_distribution<double> u(0, 1);
  for (int trial = 0; trial < 200; ++trial) {
    Eigen::VectorXd theta = Eigen::VectorXd::Zero(8);
    theta(0) = 0.05 * u(rng);
    theta(1) = 0.02 * (u(rng) - 0.5);
    for (int k = 2; k < 8; ++k) theta(k) = u(rng) < 0.5 ? u(rng) : 0.0;  // sparse mixtures
    Eigen::VectorXd y = p.model.X * theta;
    for (auto& v : y) v += noise(rng);
    const Eigen::VectorXd s = p.model.X.transpose() * y;
    const auto r = solve_nnls(G, s, y.squaredNorm(), 2);
    REQUIRE(r.ok);
    CHECK(r.theta.tail(6).minCoeff() >= 0.0);
    CHECK(r.chi2 == doctest::Approx(brute_force_nnls_chi2(G, s, y.squaredNorm(), 2)).epsilon(1e-7));
  }
}

TEST_CASE("NNLS beyond the stack-sized solver (17 parameters): the optimum by its KKT conditions") {
  // 15 random positive "references" and a linear background on 40 points; sparse mixtures.
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0, 1);
  std::normal_distribution<double> noise(0, 0.01);
  const int n = 40, K = 15, M = K + 2;
  Eigen::MatrixXd X(n, M);
  for (int i = 0; i < n; ++i) {
    X(i, 0) = 1.0, X(i, 1) = (i - n / 2.0) / n;
    for (int k = 0; k < K; ++k) X(i, 2 + k) = 0.2 + u(rng);
  }
  const Eigen::MatrixXd G = X.transpose() * X;
  for (int trial = 0; trial < 50; ++trial) {
    Eigen::VectorXd theta = Eigen::VectorXd::Zero(M);
    theta(0) = 0.05 * u(rng);
    for (int k = 2; k < M; ++k) theta(k) = u(rng) < 0.3 ? u(rng) : 0.0;
    Eigen::VectorXd y = X * theta;
    for (auto& v : y) v += noise(rng);
    const Eigen::VectorXd s = X.transpose() * y;
    const auto r = solve_nnls(G, s, y.squaredNorm(), 2);
    REQUIRE(r.ok);
    const Eigen::VectorXd w = s - G * r.theta;  // −gradient: 0 on the free and positive ones, ≤ 0 on the zeros
    const double tol = 1e-8 * s.cwiseAbs().maxCoeff();
    for (int j = 0; j < M; ++j) {
      if (j >= 2) CHECK(r.theta(j) >= 0.0);
      if (j < 2 || r.theta(j) > 0) CHECK(std::abs(w(j)) <= tol);
      else CHECK(w(j) <= tol);
    }
    CHECK(r.chi2 == doctest::Approx((y - X * r.theta).squaredNorm()).epsilon(1e-9));
  }
}

TEST_CASE("incremental fit: any arrival order, re-measurement and energy subsets give the batch answer") {
  const auto p = fe_problem({"Magnetite", "Goethite", "Pyrite"});
  const auto E = static_cast<int>(p.energies.size());
  const std::size_t P = 50;
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(0, 1);
  std::normal_distribution<double> noise(0, 0.01);
  std::vector<std::vector<double>> y(P, std::vector<double>(static_cast<std::size_t>(E)));
  for (auto& spec : y) {
    Eigen::VectorXd theta(5);
    theta << 0.02, 0.01, u(rng), u(rng), u(rng);
    const Eigen::VectorXd clean = p.model.X * theta;
    for (int e = 0; e < E; ++e) spec[static_cast<std::size_t>(e)] = clean(e) + noise(rng);
  }
  IncrementalLcf energy_major(p.model, P, {}), pixel_major(p.model, P, {});
  for (int e = 0; e < E; ++e)
    for (std::size_t px = 0; px < P; ++px) energy_major.add(px, e, y[px][static_cast<std::size_t>(e)]);
  for (std::size_t px = 0; px < P; ++px)
    for (int e = E - 1; e >= 0; --e) {  // reversed energies, and one bad value later corrected
      if (e == 5) {
        pixel_major.add(px, e, 99.0);
        pixel_major.replace(px, e, 99.0, y[px][5]);
      } else {
        pixel_major.add(px, e, y[px][static_cast<std::size_t>(e)]);
      }
    }
  energy_major.solve_changed();
  pixel_major.solve_changed();
  for (std::size_t px = 0; px < P; ++px) {
    CHECK(energy_major.maps().fitted[px] == 1);
    CHECK(energy_major.maps().thickness[px] == doctest::Approx(pixel_major.maps().thickness[px]).epsilon(1e-4));
    for (int k = 0; k < 3; ++k)
      CHECK(energy_major.maps().fractions[k * P + px] ==
            doctest::Approx(pixel_major.maps().fractions[k * P + px]).epsilon(1e-4));
  }
  // Batch reference on one pixel.
  const Eigen::Map<const Eigen::VectorXd> y0(y[0].data(), E);
  const Eigen::MatrixXd G = p.model.X.transpose() * p.model.X;
  const auto r = solve_nnls(G, p.model.X.transpose() * y0, y0.squaredNorm(), 2);
  CHECK(energy_major.maps().thickness[0] == doctest::Approx(r.theta.tail(3).sum()).epsilon(1e-5));

  // Subset: only every third energy measured (plus the edge), still fits; fewer than M: not fitted.
  IncrementalLcf subset(p.model, 2, {.method = FitMethod::least_squares});
  for (int e = 0; e < E; e += 3) subset.add(0, e, y[0][static_cast<std::size_t>(e)]);
  for (int e = 0; e < 3; ++e) subset.add(1, e, y[1][static_cast<std::size_t>(e)]);
  subset.solve_changed();
  CHECK(subset.maps().fitted[0] == 1);
  CHECK(subset.maps().nenergies[0] == (E + 2) / 3);
  CHECK(subset.maps().fitted[1] == 0);
  CHECK(subset.maps().thickness[0] == doctest::Approx(energy_major.maps().thickness[0]).epsilon(0.1));
  // All pixels of the energy-major scan share the E prefix sets (+ the empty set).
  CHECK(energy_major.energy_sets() == static_cast<std::size_t>(E) + 1);
}

TEST_CASE("the image solver (cached passive sets, threads) matches the reference NNLS pixel by pixel") {
  const auto p = fe_problem({"Magnetite", "Maghemite", "Goethite", "HFO", "Pyrite", "Hematite_NP"});
  const auto E = static_cast<int>(p.energies.size());
  const std::size_t P = 20000;
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0, 1);
  std::normal_distribution<double> noise(0, 0.02);
  IncrementalLcf lcf(p.model, P, {});
  std::vector<Eigen::VectorXd> spectra;
  for (std::size_t px = 0; px < P; ++px) {
    Eigen::VectorXd theta = Eigen::VectorXd::Zero(8);
    theta(0) = 0.03;
    for (int k = 2; k < 8; ++k) theta(k) = u(rng) < 0.4 ? u(rng) : 0.0;
    Eigen::VectorXd y = p.model.X * theta;
    for (auto& v : y) v += noise(rng);
    spectra.push_back(y);
  }
  for (int e = 0; e < E; ++e)
    for (std::size_t px = 0; px < P; ++px) lcf.add(px, e, spectra[px](e));
  CHECK(lcf.solve_changed(2) == P);
  const Eigen::MatrixXd G = p.model.X.transpose() * p.model.X;
  int negative = 0, no_material = 0;
  for (std::size_t px = 0; px < P; px += 97) {
    const auto r = solve_nnls(G, p.model.X.transpose() * spectra[px], spectra[px].squaredNorm(), 2);
    const double total = r.theta.tail(6).sum();
    CHECK(lcf.maps().thickness[px] == doctest::Approx(total).epsilon(1e-5));
    CHECK(lcf.maps().fitted[px] == 1);
    CHECK(lcf.maps().residual[px] == doctest::Approx(std::sqrt(r.chi2 / E)).epsilon(1e-4));
    no_material += total == 0;
    for (int k = 0; k < 6; ++k) {
      const float f = lcf.maps().fractions[static_cast<std::size_t>(k) * P + px];
      negative += f < 0;
      if (total > 1e-6) CHECK(f == doctest::Approx(r.theta(2 + k) / total).epsilon(1e-4).scale(1));
      if (total == 0) {  // no reference in the solution: fractions and their errors 0, as per pixel
        CHECK(f == 0.f);
        CHECK(lcf.maps().fraction_sigma[static_cast<std::size_t>(k) * P + px] == 0.f);
      }
    }
  }
  CHECK(negative == 0);
  CHECK(no_material > 0);  // the background-only solution is among the cases compared
}

#include <fstream>

#include "science/edge_normalize.hpp"

TEST_CASE("a raw μ(E) reference is edge-normalized as Larch's pre_edge does; normalized ones are left alone") {
  const auto src = load_reference_file(test::refs_dir() / "fe_k_standards_raw" / "Goethite FeXANES.e", NormalizeMode::never);
  REQUIRE(src.size() == 1);
  const auto& g = src[0];
  // Make it raw: an offset and sloped pre-edge, an edge step of 2.4, a post-edge that falls off.
  const double e0 = 7126.0;
  std::vector<double> raw(g.mu.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const double de = g.energies_eV[i] - e0;
    raw[i] = 0.35 - 2e-4 * de + 2.4 * g.mu[i] * (1.0 - 1.5e-4 * std::max(0.0, de));
  }
  const auto dir = test::scratch("raw-reference");
  {
    std::ofstream out(dir / "goethite raw.txt");
    out << "# raw transmission mu(E) of goethite\n";
    for (std::size_t i = 0; i < raw.size(); ++i) out << g.energies_eV[i] << " " << raw[i] << "\n";
  }
  const auto loaded = load_reference_file(dir / "goethite raw.txt");
  REQUIRE(loaded.size() == 1);
  CHECK(loaded[0].name == "goethite raw");
  CHECK(loaded[0].normalized_here);
  CHECK(loaded[0].e0_eV == doctest::Approx(7126).epsilon(4.0 / 7126));
  double worst = 0;
  for (std::size_t i = 0; i < raw.size(); ++i)
    if (g.energies_eV[i] < 7300) worst = std::max(worst, std::abs(loaded[0].mu[i] - g.mu[i]));
  CHECK(worst < 0.05);  // the XANES region is recovered to within 5 % of the edge step

  // The shipped libraries: Athena's normalized export is left alone, and all 65 standards load
  // (some have '=====' separator lines without '#'); only the few that are not ~0/~1 get normalized.
  for (const auto& r : load_reference_file(test::fe_library())) CHECK_FALSE(r.normalized_here);
  int n = 0, normalized = 0;
  for (const auto& f : std::filesystem::directory_iterator(test::refs_dir() / "fe_k_standards_raw")) {
    const auto r = load_reference_file(f.path());
    REQUIRE(r.size() == 1);
    ++n;
    normalized += r[0].normalized_here;
    CHECK(r[0].mu.back() == doctest::Approx(1.0).epsilon(0.2));
  }
  CHECK(n == 65);
  CHECK(normalized <= 5);
}

TEST_CASE("pre_edge follows Larch's default ranges and accepts explicit ones") {
  std::vector<double> e, mu;
  for (double x = 7000; x <= 7600; x += 2) {
    e.push_back(x);
    mu.push_back(0.2 + 1e-4 * (x - 7000) + 1.7 / (1 + std::exp(-(x - 7120) / 2.0)));
  }
  const auto r = pre_edge(e, mu);
  CHECK(r.e0 == doctest::Approx(7120).epsilon(2.0 / 7120));
  CHECK(r.pre1 == doctest::Approx(-120));  // (7002 − 7120) rounded to 5 eV
  CHECK(r.pre2 == doctest::Approx(-40));   // 5·round(pre1/15)
  CHECK(r.norm2 == doctest::Approx(480));
  CHECK(r.norm1 == doctest::Approx(150));  // min(150, 5·round(norm2/15))
  CHECK(r.nnorm == 1);                     // norm2 − norm1 = 330 < 350
  CHECK(r.edge_step == doctest::Approx(1.7).epsilon(0.02));
  CHECK(r.norm.front() == doctest::Approx(0.0).scale(1.0).epsilon(0.01));
  CHECK(r.norm.back() == doctest::Approx(1.0).epsilon(0.02));
  const auto fixed = pre_edge(e, mu, {.e0 = 7121.0, .pre1 = -100.0, .pre2 = -50.0, .norm1 = 100.0, .norm2 = 400.0, .nnorm = 2});
  CHECK(fixed.e0 == doctest::Approx(7120));  // snapped to a measured energy
  CHECK(fixed.nnorm == 2);
  CHECK(white_line_energy(e, mu, r.e0) >= r.e0);
}

TEST_CASE("full-stack fit (blocked, fused) equals the incremental path, NaN samples included") {
  const auto p = fe_problem({"Magnetite", "Goethite", "Pyrite"});
  const auto E = static_cast<int>(p.energies.size());
  const std::size_t P = 5000;  // more than one block, not a multiple of it
  auto planes = mixture_planes(p, P, 9);
  planes[3 * P + 17] = NAN;  // one bad sample
  for (int e = 0; e < E; ++e) planes[static_cast<std::size_t>(e) * P + P - 1] = NAN;  // nothing usable
  IncrementalLcf stack(p.model, P, {}), incremental(p.model, P, {});
  stack.fit_stack(planes.data(), P, 2);
  for (int e = 0; e < E; ++e)
    for (std::size_t px = 0; px < P; ++px) {
      const float y = planes[static_cast<std::size_t>(e) * P + px];
      if (std::isfinite(y)) incremental.add(px, e, y);
    }
  incremental.solve_changed(2);
  CHECK(stack.maps().nenergies[17] == E - 1);
  CHECK(stack.maps().fitted[17] == 1);
  CHECK(stack.maps().fitted[P - 1] == 0);  // the block solve's values for it are cleared
  CHECK(stack.maps().nenergies[P - 1] == 0);
  CHECK(stack.maps().thickness[P - 1] == 0.f);
  CHECK(stack.maps().fraction_sigma[P - 1] == 0.f);
  for (std::size_t px = 0; px < P; ++px) {
    CHECK(stack.maps().thickness[px] == doctest::Approx(incremental.maps().thickness[px]).epsilon(1e-4));
    CHECK(stack.maps().residual[px] == doctest::Approx(incremental.maps().residual[px]).epsilon(1e-2).scale(1e-4));
    CHECK(stack.maps().fractions[px] == doctest::Approx(incremental.maps().fractions[px]).epsilon(1e-4).scale(1));
  }
}

TEST_CASE("plane folding (add_planes, threads) gives add()'s statistics: NaN samples, earlier energies, unmeasured pixels") {
  const auto p = fe_problem({"Magnetite", "Goethite", "Pyrite"});
  const auto E = static_cast<int>(p.energies.size());
  const std::size_t P = 70000;  // several blocks and more than one thread's share, not a multiple of either
  auto planes = mixture_planes(p, P, 4);
  planes[7 * P + 123] = NAN;                                                      // one sample not measured
  for (int e = 0; e < E; ++e) planes[static_cast<std::size_t>(e) * P + 500] = NAN;  // a pixel never measured
  // Energies 0..2 one sample at a time first (as a row block would), the rest folded as planes
  // in two batches, out of order.
  std::vector<int> first, second;
  for (int e = 3; e < E; ++e) (e % 2 ? first : second).push_back(e);
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    IncrementalLcf folded(p.model, P, {}), by_sample(p.model, P, {});
    for (auto* fit : {&folded, &by_sample})
      for (int e = 0; e < 3; ++e)
        for (std::size_t px = 0; px < P; ++px)
          if (const float y = planes[static_cast<std::size_t>(e) * P + px]; !std::isnan(y)) fit->add(px, e, y);
    folded.add_planes(planes.data(), P, first, threads);
    folded.add_planes(planes.data(), P, second, threads);
    for (const auto* list : {&first, &second})
      for (int e : *list)
        for (std::size_t px = 0; px < P; ++px)
          if (const float y = planes[static_cast<std::size_t>(e) * P + px]; !std::isnan(y)) by_sample.add(px, e, y);
    CHECK(folded.solve_changed(threads) == by_sample.solve_changed(threads));
    CHECK(folded.energy_sets() == by_sample.energy_sets());
    CHECK(folded.maps().nenergies[123] == E - 1);
    CHECK(folded.maps().fitted[500] == 0);
    CHECK(folded.energies_measured(500) == 0);
    int differ = 0;
    for (std::size_t px = 0; px < P; ++px) {
      differ += folded.maps().nenergies[px] != by_sample.maps().nenergies[px];
      differ += std::abs(folded.maps().thickness[px] - by_sample.maps().thickness[px]) > 1e-6f * std::abs(by_sample.maps().thickness[px]);
      for (int k = 0; k < 3; ++k)
        differ += std::abs(folded.maps().fractions[k * P + px] - by_sample.maps().fractions[k * P + px]) > 1e-6f;
    }
    CHECK(differ == 0);
  }
}

TEST_CASE("energy units: declared by the caller, declared in the header, or detected") {
  const auto dir = test::scratch("units");
  {
    std::ofstream out(dir / "declared.txt");  // values look like eV·10⁻³ but the header says keV
    out << "# energy (keV)  mu\n";
    for (int i = 0; i < 10; ++i) out << 7.1 + 0.01 * i << " " << 0.1 * i << "\n";
  }
  {
    std::ofstream out(dir / "plain.txt");
    for (int i = 0; i < 10; ++i) out << 150 + i << " " << 0.1 * i << "\n";  // a low-energy edge, in eV
  }
  CHECK(load_reference_file(dir / "declared.txt", NormalizeMode::never)[0].energies_eV.front() == doctest::Approx(7100));
  CHECK(load_reference_file(dir / "plain.txt", NormalizeMode::never)[0].energies_eV.front() == doctest::Approx(150));
  CHECK(load_reference_file(dir / "plain.txt", NormalizeMode::never, EnergyUnit::keV)[0].energies_eV.front() ==
        doctest::Approx(150000));
  CHECK_THROWS_AS(energy_unit_from_string("meV"), ReferenceError);
}

TEST_CASE("fraction uncertainties match the scatter of fits over noise realizations") {
  const auto p = fe_problem({"Magnetite", "Goethite", "Pyrite"});
  const auto E = static_cast<int>(p.energies.size());
  const std::size_t P = 4000;  // the same spectrum, P independent noise draws
  Eigen::VectorXd theta(5);
  theta << 0.03, 0.01, 0.5, 0.3, 0.2;
  const Eigen::VectorXd clean = p.model.X * theta;
  std::mt19937 rng(21);
  std::normal_distribution<double> noise(0, 0.02);
  IncrementalLcf lcf(p.model, P, {.method = FitMethod::least_squares});
  for (int e = 0; e < E; ++e)
    for (std::size_t px = 0; px < P; ++px) lcf.add(px, e, clean(e) + noise(rng));
  lcf.solve_changed(2);
  for (int k = 0; k < 3; ++k) {
    double mean = 0, mean_sigma = 0;
    for (std::size_t px = 0; px < P; ++px) {
      mean += lcf.maps().fractions[k * P + px] / P;
      mean_sigma += lcf.maps().fraction_sigma[k * P + px] / P;
    }
    double var = 0;
    for (std::size_t px = 0; px < P; ++px) var += std::pow(lcf.maps().fractions[k * P + px] - mean, 2) / (P - 1);
    INFO("reference " << k << ": scatter " << std::sqrt(var) << ", reported σ " << mean_sigma);
    CHECK(mean_sigma == doctest::Approx(std::sqrt(var)).epsilon(0.1));
  }
}

TEST_CASE("the quality mask: its percentile is nth_element's value and its tests the doubles', with any threads") {
  // Values drawn to stress the two-pass selection: negatives, ±0, duplicates, a crowded bin,
  // NaN-free; 200 000 pixels, so two and three threads split them.
  const std::size_t P = 200000;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-0.5f, 2.f);
  LcfMaps maps;
  maps.resize(P, 1);
  for (std::size_t p = 0; p < P; ++p) {
    const auto kind = rng() % 10;
    maps.thickness[p] = kind == 0 ? 0.f : kind == 1 ? -0.f : kind < 4 ? 1.25f + 1e-6f * static_cast<float>(rng() % 7) : u(rng);
    maps.residual[p] = std::abs(u(rng)) * 0.01f;
    maps.rfactor[p] = std::abs(u(rng)) * 0.1f;
    maps.fitted[p] = rng() % 5 != 0;
  }
  for (double q : {0.0, 0.3, 0.99, 1.0}) {
    std::vector<float> kept;
    for (std::size_t p = 0; p < P; ++p)
      if (maps.fitted[p]) kept.push_back(maps.thickness[p]);
    const auto k = static_cast<std::size_t>(static_cast<double>(kept.size() - 1) * q);
    std::nth_element(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(k), kept.end());
    for (int threads : {1, 2, 3}) {
      CAPTURE(q);
      CAPTURE(threads);
      const auto got = quantile(maps.thickness, maps.fitted.data(), q, threads);
      REQUIRE(got.has_value());
      CHECK(*got == kept[k]);
    }
  }
  // Every value in one bin (a flat image), and nothing included.
  const std::vector<float> flat(P, 0.75f);
  CHECK(quantile(flat, nullptr, 0.99, 2) == 0.75f);
  const std::vector<std::uint8_t> none(P, 0);
  CHECK_FALSE(quantile(flat, none.data(), 0.99, 2).has_value());

  // The relative threshold: 0.3 × the 99th percentile of the fitted pixels' thickness.
  QualityMask one, two;
  update_quality_mask(one, maps, {0.1, 0.3, 0, 0}, {}, 2);
  {
    std::vector<float> kept;
    for (std::size_t p = 0; p < P; ++p)
      if (maps.fitted[p]) kept.push_back(maps.thickness[p]);
    const auto k = static_cast<std::size_t>(static_cast<double>(kept.size() - 1) * 0.99);
    std::nth_element(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(k), kept.end());
    CHECK(one.thickness_threshold == std::max(0.1, 0.3 * static_cast<double>(kept[k])));
  }
  // Thresholds no float equals, one rounding down to a float (0.7) and one up (0.0031), with map
  // values a float step either side of each.
  const MaskSettings s{0.7, 0, 0.0031, 0.07};
  for (std::size_t p = 0; p < P; p += 97) {
    const float f = static_cast<float>(s.thickness_min);
    maps.thickness[p] = p % 2 ? f : std::nextafter(f, 1.f);
  }
  for (std::size_t p = 1; p < P; p += 89) {
    const float f = static_cast<float>(s.residual_max);
    maps.residual[p] = p % 2 ? f : std::nextafter(f, 0.f);
  }
  update_quality_mask(one, maps, s, {}, 1);
  update_quality_mask(two, maps, s, {}, 2);
  CHECK(one.thickness_threshold == 0.7);
  std::size_t n = 0, mismatched = 0;
  for (std::size_t p = 0; p < P; ++p) {
    const bool ok = maps.fitted[p] && static_cast<double>(maps.thickness[p]) >= s.thickness_min &&
                    static_cast<double>(maps.residual[p]) <= s.residual_max && static_cast<double>(maps.rfactor[p]) <= s.rfactor_max;
    n += ok;
    mismatched += (one.valid[p] != ok) + (two.valid[p] != ok);
  }
  CHECK(mismatched == 0);
  CHECK(one.n_valid == n);
  CHECK(two.n_valid == n);
  CHECK(n > P / 50);  // neither all kept nor all masked
  CHECK(n < P / 2);
  // The mask's buffer is reused: a second call on other maps replaces every value.
  for (std::size_t p = 0; p < P; ++p) maps.fitted[p] = 0;
  update_quality_mask(one, maps, s, {}, 2);
  CHECK(one.n_valid == 0);
  CHECK(std::count(one.valid.begin(), one.valid.end(), std::uint8_t{0}) == static_cast<std::ptrdiff_t>(P));
}
