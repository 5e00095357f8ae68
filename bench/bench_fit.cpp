// bench_fit: the full-stack LCF fit of xanesd against its floors (see bench/README.md).
//
// Builds a synthetic normalized full-field stack in memory (energy-major planes, float32: a
// mixture of 3 Fe K-edge references with spatially varying fractions and thickness, a linear
// background and Gaussian noise; generation is not timed), then times, best of --repeats after
// one warm-up:
//   * the floors: one read pass over the stack (vectorized float sum) and one copy (memcpy into
//     a preallocated buffer), on 1 and on --threads threads;
//   * the xanesd full-stack fit: IncrementalLcf construction (allocates the output maps) and
//     IncrementalLcf::fit_stack, least squares and NNLS;
//   * the per-frame incremental update: add(p, e, y) over every pixel of one frame, and
//     solve_changed() after it, as the daemon does per frame;
//   * NNLS spectra/s on a 6-reference mixture with sparse true fractions (most pixels need the
//     active set).
// The data are defined by closed formulas and a counter-based noise (splitmix64 + Box–Muller),
// so bench/pyxas_baseline.py re-creates the same stack in numpy from the design file this
// program writes (--write-design); a few sanity figures (mean fractions) are printed on both
// sides so the runner can check that both fitted the same data.
// Machine-readable results are the lines "RESULT key=value".
#include "machine.hpp"
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "science/incremental_lcf.hpp"
#include "science/lcf.hpp"
#include "science/references.hpp"

using namespace xanesd::science;
using Clock = std::chrono::steady_clock;

namespace {

const std::vector<std::string> kMain = {"Magnetite", "Goethite", "Pyrite"};
// Six references for the NNLS rate: distinct species (no near-duplicate pairs such as
// Magnetite/Maghemite), so the fit is well posed but sparse truths push LS coefficients negative.
const std::vector<std::string> kNnls = {"Magnetite", "Goethite", "Pyrite", "Hematite_NP", "LiFe(II)PO4", "FeIII_sulfate"};

// Generation constants (also written to the design file for the numpy side).
constexpr double kSigma = 0.01;          // Gaussian noise, normalized units (edge step 0.3–1.5)
constexpr std::uint64_t kShift = 7919;   // plane e uses the noise pattern shifted by e·kShift pixels
constexpr std::uint64_t kSeedMain = 0x5EED0001, kSeedNnls = 0x5EED0002;
constexpr double kBgE0 = 7120;           // background line centre used to make the data

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  std::filesystem::path library = std::filesystem::path(XANESD_SOURCE_DIR) / "config/references/fe_k_library_normalized.nor";
  int size = 2048;
  int energies = 100;
  int repeats = 3;
  int threads = 2;
  std::size_t nnls_pixels = 200000;
  std::size_t check_pixels = 20000;  // the NNLS sanity means cover the first N pixels (scipy's sample)
  int frame_warm = 50;               // frames folded in before the per-frame timing
  bool hugepages = true;
  bool design_only = false;
  std::string write_design;
  std::string only = "floors,fit,frame,nnls";  // parts to run
  bool part(std::string_view name) const {
    for (std::string_view s = only;;) {
      const auto comma = s.find(',');
      if (s.substr(0, comma) == name) return true;
      if (comma == std::string_view::npos) return false;
      s.remove_prefix(comma + 1);
    }
  }
};

int usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: bench_fit [options]\n"
               "  --size N            image is N×N pixels (default 2048)\n"
               "  --energies N        energies in the TXM-like grid over 7090–7190 eV (default 100, ≥ 12)\n"
               "  --repeats N         timed repetitions per figure, best reported (default 3; one warm-up first)\n"
               "  --threads N         threads for the parallel figures (default 2)\n"
               "  --nnls-pixels N     pixels of the 6-reference NNLS-rate set (default 200000)\n"
               "  --check-pixels N    NNLS sanity means over the first N of them (default 20000)\n"
               "  --frame-warm N      frames folded in before the per-frame timing (default 50)\n"
               "  --only LIST         comma-separated parts to run: floors,fit,frame,nnls (default all)\n"
               "  --no-hugepages      do not madvise(MADV_HUGEPAGE) the stack and copy buffers\n"
               "  --write-design FILE write energies, design matrices and generation constants (JSON)\n"
               "  --design-only       write the design file and exit\n"
               "  --library FILE      reference library (default config/references/fe_k_library_normalized.nor)\n");
  return code;
}

std::optional<Options> parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") return std::nullopt;
    if (a == "--size") o.size = std::stoi(next());
    else if (a == "--energies") o.energies = std::stoi(next());
    else if (a == "--repeats") o.repeats = std::stoi(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--nnls-pixels") o.nnls_pixels = std::stoul(next());
    else if (a == "--check-pixels") o.check_pixels = std::stoul(next());
    else if (a == "--frame-warm") o.frame_warm = std::stoi(next());
    else if (a == "--no-hugepages") o.hugepages = false;
    else if (a == "--only") o.only = next();
    else if (a == "--write-design") o.write_design = next();
    else if (a == "--design-only") o.design_only = true;
    else if (a == "--library") o.library = next();
    else throw std::runtime_error("unknown option '" + a + "'");
  }
  if (o.size < 8 || o.energies < 12 || o.repeats < 1 || o.threads < 1 || o.nnls_pixels < 1)
    throw std::runtime_error("need --size ≥ 8, --energies ≥ 12, --repeats ≥ 1, --threads ≥ 1, --nnls-pixels ≥ 1");
  if (o.frame_warm < 8 || o.frame_warm + 3 > o.energies)
    throw std::runtime_error("--frame-warm must be in [8, energies − 3]");
  o.check_pixels = std::min(o.check_pixels, o.nnls_pixels);
  return o;
}

using xanesd::bench::cpu_model;
using xanesd::bench::mem_total;
using xanesd::bench::nproc;

// ---------------------------------------------------------------------------------------------
// Buffers: page-aligned, optionally transparent huge pages (numpy madvises its large arrays the
// same way, so both sides read the stack through the same kind of pages).

struct Buffer {
  float* data = nullptr;
  std::size_t n = 0;
  Buffer(std::size_t count, bool huge) : n(count) {
    const std::size_t bytes = (count * sizeof(float) + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    data = static_cast<float*>(std::aligned_alloc(2u << 20, bytes));
    if (!data) throw std::bad_alloc();
    if (huge) madvise(data, bytes, MADV_HUGEPAGE);
  }
  ~Buffer() { std::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// Runs fn(begin, end) on `threads` threads over [0, n) in chunks aligned to 1024 elements.
void parallel_for(std::size_t n, int threads, const std::function<void(std::size_t, std::size_t)>& fn) {
  if (threads <= 1) return fn(0, n);
  std::vector<std::jthread> pool;
  const std::size_t chunks = (n + 1023) / 1024;
  for (int t = 0; t < threads; ++t) {
    const std::size_t b = std::min(n, chunks * static_cast<std::size_t>(t) / static_cast<std::size_t>(threads) * 1024);
    const std::size_t e = std::min(n, chunks * static_cast<std::size_t>(t + 1) / static_cast<std::size_t>(threads) * 1024);
    pool.emplace_back(fn, b, e);
  }
}

// ---------------------------------------------------------------------------------------------
// Deterministic data (same formulas in bench/pyxas_baseline.py)

inline std::uint64_t splitmix64(std::uint64_t x) {
  std::uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline double unit53(std::uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }  // [0, 1)

// Standard normal pattern of n values: Box–Muller on two counter-based uniforms per value.
std::vector<double> noise_pattern(std::size_t n, std::uint64_t seed, int threads) {
  std::vector<double> z(n);
  parallel_for(n, threads, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const double u1 = 1.0 - unit53(splitmix64(seed + 2 * i));  // (0, 1]
      const double u2 = unit53(splitmix64(seed + 2 * i + 1));
      z[i] = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
    }
  });
  return z;
}

// TXM-like grid over 7090–7190 eV (inside the library's 7090–7200 eV, so no extrapolation):
// 8 % coarse pre-edge points (2 eV for E = 100), 80 % through the edge and white line
// (7105–7144.5 eV, 0.5 eV), 12 % coarse post-edge (4 eV).
std::vector<double> txm_energies(int E) {
  const int n1 = static_cast<int>(std::lround(0.08 * E)), n3 = static_cast<int>(std::lround(0.12 * E)), n2 = E - n1 - n3;
  std::vector<double> e;
  auto lin = [&](double a, double b, int n) {
    for (int i = 0; i < n; ++i) e.push_back(n == 1 ? a : a + (b - a) * i / (n - 1));
  };
  lin(7090, 7104, n1);
  lin(7105, 7144.5, n2);
  lin(7146, 7190, n3);
  return e;
}

struct Truth {  // per pixel, for the fraction error of the fit
  std::vector<float> fractions;  // K·P, reference-major
  std::vector<float> thickness;
};

// The full-field stack: P = N² pixels, energy-major planes.
//   x = (c + ½)/N, y = (r + ½)/N; g = (¼ + ¾x, ¼ + ¾y, ¼ + ¾(½ + ½ sin 2π(x+y))), f = g/Σg;
//   t = 0.3 + 1.2(½ + ½ sin 2πx · sin 2πy); a = 0.05(x − ½); b = 0.02(y − ½) per 100 eV from 7120 eV;
//   Y[e, p] = float32(a + b(E_e − 7120)/100 + t Σ_k f_k R[e, k] + σ z[(p + e·shift) mod P]).
void make_main_stack(float* Y, int N, const Eigen::MatrixXd& R, const std::vector<double>& energies, int threads,
                     Truth& truth) {
  const std::size_t P = static_cast<std::size_t>(N) * static_cast<std::size_t>(N);
  const int E = static_cast<int>(energies.size()), K = static_cast<int>(R.cols());
  const auto z = noise_pattern(P, kSeedMain, threads);
  std::vector<double> c(static_cast<std::size_t>(K) * P), a(P), b(P);
  truth.fractions.resize(static_cast<std::size_t>(K) * P);
  truth.thickness.resize(P);
  const double tau = 2.0 * std::numbers::pi;
  parallel_for(P, threads, [&](std::size_t b0, std::size_t e0) {
    for (std::size_t p = b0; p < e0; ++p) {
      const double x = (static_cast<double>(p % N) + 0.5) / N, y = (static_cast<double>(p / N) + 0.5) / N;
      const double g[3] = {0.25 + 0.75 * x, 0.25 + 0.75 * y, 0.25 + 0.75 * (0.5 + 0.5 * std::sin(tau * (x + y)))};
      const double gs = g[0] + g[1] + g[2];
      const double t = 0.3 + 1.2 * (0.5 + 0.5 * std::sin(tau * x) * std::sin(tau * y));
      for (int k = 0; k < K; ++k) {
        c[static_cast<std::size_t>(k) * P + p] = t * g[k % 3] / gs;
        truth.fractions[static_cast<std::size_t>(k) * P + p] = static_cast<float>(g[k % 3] / gs);
      }
      truth.thickness[p] = static_cast<float>(t);
      a[p] = 0.05 * (x - 0.5);
      b[p] = 0.02 * (y - 0.5);
    }
  });
  parallel_for(static_cast<std::size_t>(E), threads, [&](std::size_t eb, std::size_t ee) {
    for (std::size_t e = eb; e < ee; ++e) {
      const double de = (energies[e] - kBgE0) / 100.0;
      const std::size_t off = (e * kShift) % P;
      float* plane = Y + e * P;
      for (std::size_t p = 0; p < P; ++p) {
        double v = a[p] + b[p] * de;
        for (int k = 0; k < K; ++k) v += c[static_cast<std::size_t>(k) * P + p] * R(static_cast<Eigen::Index>(e), k);
        const std::size_t j = p + off < P ? p + off : p + off - P;
        plane[p] = static_cast<float>(v + kSigma * z[j]);
      }
    }
  });
}

// The NNLS-rate set: P pixels, each with one or two of the K references present.
//   h = splitmix64(seed + p); j1 = h mod K; j2 = (h >> 8) mod K; u = ((h >> 20) & 0xFFFFF)/2²⁰;
//   v = ((h >> 40) & 0xFFFFF)/2²⁰; f_j1 = 1 if j1 = j2 else 0.2 + 0.6u, f_j2 = 1 − f_j1;
//   t = 0.3 + 1.2v; a = 0.02; b = −0.01; Y[e, p] as above with the NNLS seed.
void make_nnls_stack(float* Y, std::size_t P, const Eigen::MatrixXd& R, const std::vector<double>& energies) {
  const int E = static_cast<int>(energies.size()), K = static_cast<int>(R.cols());
  const auto z = noise_pattern(P, kSeedNnls, 1);
  std::vector<double> c(static_cast<std::size_t>(K) * P, 0.0);
  for (std::size_t p = 0; p < P; ++p) {
    const std::uint64_t h = splitmix64(kSeedNnls + p);
    const auto j1 = static_cast<std::size_t>(h % static_cast<std::uint64_t>(K));
    const auto j2 = static_cast<std::size_t>((h >> 8) % static_cast<std::uint64_t>(K));
    const double u = static_cast<double>((h >> 20) & 0xFFFFF) / 1048576.0, v = static_cast<double>((h >> 40) & 0xFFFFF) / 1048576.0;
    const double t = 0.3 + 1.2 * v;
    if (j1 == j2) {
      c[j1 * P + p] = t;
    } else {
      c[j1 * P + p] = t * (0.2 + 0.6 * u);
      c[j2 * P + p] = t * (1.0 - (0.2 + 0.6 * u));
    }
  }
  for (int e = 0; e < E; ++e) {
    const double de = (energies[static_cast<std::size_t>(e)] - kBgE0) / 100.0;
    const std::size_t off = (static_cast<std::size_t>(e) * kShift) % P;
    for (std::size_t p = 0; p < P; ++p) {
      double v = 0.02 - 0.01 * de;
      for (int k = 0; k < K; ++k) v += c[static_cast<std::size_t>(k) * P + p] * R(e, k);
      const std::size_t j = p + off < P ? p + off : p + off - P;
      Y[static_cast<std::size_t>(e) * P + p] = static_cast<float>(v + kSigma * z[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Floors

// Sum of n floats with 32 independent accumulators (SLP-vectorized: 4 AVX2 / 8 SSE registers),
// so the loop is bound by memory, not by a dependent add chain.
__attribute__((target_clones("avx2", "default")))
float sum_floats(const float* __restrict p, std::size_t n) {
  float acc[32] = {};
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int j = 0; j < 32; ++j) acc[j] += p[i + static_cast<std::size_t>(j)];
  float s = 0;
  for (int j = 0; j < 32; ++j) s += acc[j];
  for (; i < n; ++i) s += p[i];
  return s;
}

double read_pass(const float* data, std::size_t n, int threads) {
  std::vector<double> part(static_cast<std::size_t>(threads), 0.0);
  if (threads <= 1) return sum_floats(data, n);
  std::vector<std::jthread> pool;
  for (int t = 0; t < threads; ++t) {
    const std::size_t b = n * static_cast<std::size_t>(t) / static_cast<std::size_t>(threads) / 64 * 64;
    const std::size_t e = t + 1 == threads ? n : n * static_cast<std::size_t>(t + 1) / static_cast<std::size_t>(threads) / 64 * 64;
    pool.emplace_back([&, t, b, e] { part[static_cast<std::size_t>(t)] = sum_floats(data + b, e - b); });
  }
  pool.clear();
  double s = 0;
  for (double v : part) s += v;
  return s;
}

void copy_pass(float* dst, const float* src, std::size_t n, int threads) {
  parallel_for(n, threads, [&](std::size_t b, std::size_t e) { std::memcpy(dst + b, src + b, (e - b) * sizeof(float)); });
}

// ---------------------------------------------------------------------------------------------
// Timing helpers

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One warm-up call, then `repeats` timed calls; returns the best (minimum) time in seconds.
double best_of(int repeats, const std::function<void()>& fn) {
  fn();
  double best = INFINITY;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

void result(const char* key, double value) {
  std::printf("RESULT %s=%.6g\n", key, value);
  std::fflush(stdout);
}

LcfModel model_for(const std::vector<Reference>& library, const std::vector<std::string>& names,
                   const std::vector<double>& energies, Eigen::MatrixXd& R) {
  std::vector<Reference> refs;
  for (const auto& n : names) {
    auto it = std::find_if(library.begin(), library.end(), [&](const Reference& r) { return r.name == n; });
    if (it == library.end()) throw std::runtime_error("reference '" + n + "' not in the library");
    if (it->normalized_here) std::printf("note    : %s was edge-normalized on loading\n", n.c_str());
    refs.push_back(*it);
  }
  R = resample(refs, energies, 5.0);
  return make_lcf_model(names, R, energies, true);
}

nlohmann::json matrix_json(const Eigen::MatrixXd& X) {
  auto rows = nlohmann::json::array();
  for (Eigen::Index i = 0; i < X.rows(); ++i) {
    auto row = nlohmann::json::array();
    for (Eigen::Index j = 0; j < X.cols(); ++j) row.push_back(X(i, j));
    rows.push_back(row);
  }
  return rows;
}

// Means of the fitted maps over pixels [0, n), for the cross-check with numpy.
void print_means(const char* prefix, const LcfMaps& m, std::size_t npix, std::size_t n, int K) {
  for (int k = 0; k < K; ++k) {
    double s = 0;
    for (std::size_t p = 0; p < n; ++p) s += m.fractions[static_cast<std::size_t>(k) * npix + p];
    std::printf("RESULT %s_mean_fraction_%d=%.7f\n", prefix, k, s / static_cast<double>(n));
  }
  double t = 0, r = 0;
  for (std::size_t p = 0; p < n; ++p) t += m.thickness[p], r += m.residual[p];
  std::printf("RESULT %s_mean_thickness=%.7f\nRESULT %s_mean_residual=%.7g\n", prefix, t / static_cast<double>(n), prefix,
              r / static_cast<double>(n));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    auto parsed = parse_args(argc, argv);
    if (!parsed) return usage(0);
    o = *parsed;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_fit: %s\n", e.what());
    return usage(2);
  }
  try {
    const auto t_start = Clock::now();
    const int T = o.threads;
    const auto energies = txm_energies(o.energies);
    const int E = o.energies;
    const auto library = load_reference_file(o.library);
    Eigen::MatrixXd R3, R6;
    const auto model3 = model_for(library, kMain, energies, R3);
    const auto model6 = model_for(library, kNnls, energies, R6);
    const std::size_t P = static_cast<std::size_t>(o.size) * static_cast<std::size_t>(o.size);
    const std::size_t Pn = o.nnls_pixels;

    if (!o.write_design.empty()) {
      nlohmann::json d;
      d["energies_eV"] = energies;
      d["e0_eV"] = model3.e0_eV;
      d["library"] = o.library.string();
      d["generation"] = {{"size", o.size},           {"sigma", kSigma},        {"shift", kShift},
                         {"seed_main", kSeedMain},   {"seed_nnls", kSeedNnls}, {"background_e0_eV", kBgE0},
                         {"nnls_pixels", Pn},        {"check_pixels", o.check_pixels}};
      d["main"] = {{"names", kMain}, {"X", matrix_json(model3.X)}};
      d["nnls"] = {{"names", kNnls}, {"X", matrix_json(model6.X)}};
      std::ofstream(o.write_design) << d.dump(1) << "\n";
      std::printf("design  : wrote %s\n", o.write_design.c_str());
      if (o.design_only) return 0;
    }

    utsname u{};
    uname(&u);
    std::printf("xanesd full-stack fit benchmark (bench/bench_fit.cpp)\n");
    std::printf("machine : %d CPUs (nproc), %s, %s RAM, %s %s\n", nproc(), cpu_model().c_str(), mem_total().c_str(),
                u.sysname, u.release);
    std::printf("software: xanesd %s, compiler %s %s, Eigen %d.%d.%d\n", XANESD_VERSION_STRING,
#ifdef __clang__
                "clang",
#else
                "gcc",
#endif
                __VERSION__, EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
    std::printf("stack   : %d×%d px × %d energies float32 energy-major (%.2f GB), TXM-like grid %.1f–%.1f eV; "
                "fit E0 %.2f eV\n",
                o.size, o.size, E, static_cast<double>(P) * E * 4 / 1e9, energies.front(), energies.back(), model3.e0_eV);
    std::printf("model   : %s, %s, %s + background a + b·(E−E0)/100 (%d parameters); threads %d; best of %d after a warm-up\n",
                kMain[0].c_str(), kMain[1].c_str(), kMain[2].c_str(), model3.n_params(), T, o.repeats);
    std::printf("pages   : stack and copy buffers %s\n\n", o.hugepages ? "madvise(MADV_HUGEPAGE) (as numpy does)" : "4 KiB pages");
    result("size", o.size);
    result("energies", E);
    result("pixels", static_cast<double>(P));
    result("threads", T);
    result("stack_bytes", static_cast<double>(P) * E * 4);

    // ---- data (not timed)
    auto t0 = Clock::now();
    Buffer stack(P * static_cast<std::size_t>(E), o.hugepages);
    Truth truth;
    make_main_stack(stack.data, o.size, R3, energies, T, truth);
    std::printf("generated the stack in %.1f s (not timed)\n", seconds_since(t0));
    std::fflush(stdout);

    // ---- (a) floors
    volatile double sink = 0;
    const std::size_t n = P * static_cast<std::size_t>(E);
    if (o.part("floors")) {
      const double read1 = best_of(o.repeats, [&] { sink = sink + read_pass(stack.data, n, 1); });
      const double readT = best_of(o.repeats, [&] { sink = sink + read_pass(stack.data, n, T); });
      double copy1 = 0, copyT = 0;
      {
        Buffer dst(n, o.hugepages);
        std::memset(dst.data, 0, n * sizeof(float));  // preallocated and faulted in: the copy alone is timed
        copy1 = best_of(o.repeats, [&] { copy_pass(dst.data, stack.data, n, 1); });
        copyT = best_of(o.repeats, [&] { copy_pass(dst.data, stack.data, n, T); });
        sink = sink + dst.data[n / 2];
      }
      std::printf("\n(a) floors: read pass %.4f s (1 thread %.4f s, %.1f GB/s on %d), copy %.4f s (1 thread %.4f s)\n",
                  readT, read1, static_cast<double>(n) * 4 / readT / 1e9, T, copyT, copy1);
      result("read_1t_s", read1);
      result("read_s", readT);
      result("copy_1t_s", copy1);
      result("copy_s", copyT);
    }

    // ---- (b) xanesd full-stack fit
    auto fit_case = [&](const char* key, FitMethod method, int threads) {
      double best_total = INFINITY, best_ctor = INFINITY, best_fit = INFINITY, best_refit = INFINITY, best_dtor = INFINITY;
      double at_best_ctor = 0, at_best_fit = 0;
      for (int r = 0; r <= o.repeats; ++r) {  // r = 0 is the warm-up
        auto tc = Clock::now();
        auto lcf = std::make_unique<IncrementalLcf>(model3, P, SolveOptions{.method = method});
        const double ctor = seconds_since(tc);
        auto tf = Clock::now();
        lcf->fit_stack(stack.data, P, threads);
        const double fit = seconds_since(tf);
        auto tr = Clock::now();
        lcf->fit_stack(stack.data, P, threads);  // same object again: outputs already in memory
        const double refit = seconds_since(tr);
        if (r == o.repeats) {
          print_means(key, lcf->maps(), P, P, model3.n_refs());
          if (method == FitMethod::least_squares && threads == T) {
            double se = 0;
            std::size_t negative = 0;
            for (std::size_t i = 0; i < truth.fractions.size(); ++i) {
              const double d = lcf->maps().fractions[i] - truth.fractions[i];
              se += d * d;
              negative += lcf->maps().fractions[i] < 0;
            }
            result("main_ls_fraction_rmse", std::sqrt(se / static_cast<double>(truth.fractions.size())));
            result("main_ls_negative_fraction_pixels", static_cast<double>(negative));
          }
        }
        auto td = Clock::now();
        lcf.reset();
        const double dtor = seconds_since(td);
        if (r == 0) continue;
        if (ctor + fit < best_total) best_total = ctor + fit, at_best_ctor = ctor, at_best_fit = fit;
        best_ctor = std::min(best_ctor, ctor);
        best_fit = std::min(best_fit, fit);
        best_refit = std::min(best_refit, refit);
        best_dtor = std::min(best_dtor, dtor);
      }
      std::printf("    %-26s total %.4f s (construct %.4f + fit_stack %.4f); best construct %.4f, best fit_stack %.4f, "
                  "fit_stack again on the same object %.4f, destroy %.4f\n",
                  key, best_total, at_best_ctor, at_best_fit, best_ctor, best_fit, best_refit, best_dtor);
      char k[96];
      std::snprintf(k, sizeof k, "%s_total_s", key), result(k, best_total);
      std::snprintf(k, sizeof k, "%s_construct_s", key), result(k, best_ctor);
      std::snprintf(k, sizeof k, "%s_fit_stack_s", key), result(k, best_fit);
      std::snprintf(k, sizeof k, "%s_refit_s", key), result(k, best_refit);
      std::snprintf(k, sizeof k, "%s_destroy_s", key), result(k, best_dtor);
    };
    if (o.part("fit")) {
      std::printf("\n(b) xanesd full-stack fit (IncrementalLcf construction + fit_stack; outputs: fractions, σ, thickness, "
                  "residual, R-factor)\n");
      fit_case("xanesd_ls", FitMethod::least_squares, T);
      fit_case("xanesd_nnls", FitMethod::nnls, T);
      fit_case("xanesd_ls_1t", FitMethod::least_squares, 1);
    }

    // ---- (c) per-frame incremental update
    if (o.part("frame")) {
      std::printf("\n(c) per-frame incremental update, one %d×%d frame (add(p, e, y) for every pixel), NNLS\n", o.size, o.size);
      auto tc = Clock::now();
      IncrementalLcf lcf(model3, P, SolveOptions{});
      const double ctor = seconds_since(tc);
      auto frame = [&](int e) {
        const float* y = stack.data + static_cast<std::size_t>(e) * P;
        for (std::size_t p = 0; p < P; ++p) lcf.add(p, e, y[p]);
      };
      auto tf = Clock::now();
      frame(0);
      const double first = seconds_since(tf);
      for (int e = 1; e < o.frame_warm; ++e) frame(e);
      lcf.solve_changed(T);
      // Three more frames (distinct energies, as in a scan), each followed by the solve of every
      // pixel: the first two solves on T threads, the third on one.
      double best_add = INFINITY, best_solve = INFINITY, best_solve_1t = INFINITY;
      for (int i = 0; i < 3; ++i) {
        const int e = o.frame_warm + i;
        auto ta = Clock::now();
        frame(e);
        best_add = std::min(best_add, seconds_since(ta));
        const int threads = i < 2 ? T : 1;
        auto ts = Clock::now();
        lcf.solve_changed(threads);
        double& best = i < 2 ? best_solve : best_solve_1t;
        best = std::min(best, seconds_since(ts));
      }
      std::printf("    add loop %.2f ms/frame (%.2f ns/pixel; first frame of a scan %.2f ms), solve_changed after a frame "
                  "(all %zu pixels, %d energies) %.1f ms on %d threads, %.1f ms on 1; construction %.1f ms\n",
                  best_add * 1e3, best_add / static_cast<double>(P) * 1e9, first * 1e3, P, o.frame_warm + 1, best_solve * 1e3,
                  T, best_solve_1t * 1e3, ctor * 1e3);
      result("frame_add_ms", best_add * 1e3);
      result("frame_first_add_ms", first * 1e3);
      result("frame_solve_ms", best_solve * 1e3);
      result("frame_solve_1t_ms", best_solve_1t * 1e3);
      result("frame_solve_energies", o.frame_warm + 1);
    }

    // ---- (d) NNLS spectra/s, 6 references, sparse truths
    if (o.part("nnls")) {
      std::vector<float> Yn(static_cast<std::size_t>(E) * Pn);
      make_nnls_stack(Yn.data(), Pn, R6, energies);
      std::printf("\n(d) NNLS rate: %zu spectra, 6 references (", Pn);
      for (std::size_t k = 0; k < kNnls.size(); ++k) std::printf("%s%s", k ? ", " : "", kNnls[k].c_str());
      std::printf("), 1–2 present per pixel, + background (%d parameters)\n", model6.n_params());
      IncrementalLcf ls(model6, Pn, SolveOptions{.method = FitMethod::least_squares});
      ls.fit_stack(Yn.data(), Pn, T);
      std::size_t needs = 0;
      for (std::size_t p = 0; p < Pn; ++p)
        for (int k = 0; k < model6.n_refs(); ++k)
          if (ls.maps().fractions[static_cast<std::size_t>(k) * Pn + p] < 0 || ls.maps().thickness[p] <= 0) {
            ++needs;
            break;
          }
      auto run = [&](int threads) {
        std::unique_ptr<IncrementalLcf> keep;
        const double t = best_of(o.repeats, [&] {
          keep = std::make_unique<IncrementalLcf>(model6, Pn, SolveOptions{.method = FitMethod::nnls});
          keep->fit_stack(Yn.data(), Pn, threads);
        });
        return std::pair{t, std::move(keep)};
      };
      auto [tT, lcfT] = run(T);
      auto [t1, lcf1] = run(1);
      const double ls_t = best_of(o.repeats, [&] {
        IncrementalLcf l(model6, Pn, SolveOptions{.method = FitMethod::least_squares});
        l.fit_stack(Yn.data(), Pn, T);
      });
      std::printf("    %.1f %% of pixels have a negative LS coefficient (need the active set)\n",
                  100.0 * static_cast<double>(needs) / static_cast<double>(Pn));
      std::printf("    xanesd NNLS %.4f s = %.3g spectra/s on %d threads, %.3g spectra/s on 1 (LS on the same: %.3g spectra/s)\n",
                  tT, static_cast<double>(Pn) / tT, T, static_cast<double>(Pn) / t1, static_cast<double>(Pn) / ls_t);
      result("nnls_pixels", static_cast<double>(Pn));
      result("nnls_active_set_share", static_cast<double>(needs) / static_cast<double>(Pn));
      result("xanesd_nnls_rate", static_cast<double>(Pn) / tT);
      result("xanesd_nnls_rate_1t", static_cast<double>(Pn) / t1);
      result("xanesd_nnls6_ls_rate", static_cast<double>(Pn) / ls_t);
      print_means("nnls_check", lcfT->maps(), Pn, o.check_pixels, model6.n_refs());
      result("nnls_check_pixels", static_cast<double>(o.check_pixels));
    }
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    result("xanesd_peak_rss_gb", static_cast<double>(ru.ru_maxrss) / 1e6);
    std::printf("\nbench_fit done in %.0f s, peak RSS %.1f GB (checksum %.3g)\n", seconds_since(t_start),
                static_cast<double>(ru.ru_maxrss) / 1e6, static_cast<double>(sink));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_fit: %s\n", e.what());
    return 1;
  }
  return 0;
}
