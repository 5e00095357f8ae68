// bench_ingest: xanesd ingest over TCP loopback with the fit running (see bench/README.md).
//
// One process holds an in-process xanesd::Daemon on tcp://127.0.0.1:* endpoints, a PUSH sender
// thread playing energy-major full frames (float32 counts, scalar i0) of a synthetic
// fluorescence scan as fast as the daemon accepts them, and a SUB client that time-stamps every
// `maps/fractions` publication. For each image size and publish interval it prints frames/s,
// pixel-samples/s and the frame-to-published-map latency (median, p99), next to the raw
// ZeroMQ PUSH→PULL loopback rate for the same frames with no daemon.
#include "machine.hpp"
#include <sched.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <tuple>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "common/allocator.hpp"
#include "daemon.hpp"
#include "science/references.hpp"
#include "simulate/simulate.hpp"
#include "xanesd/protocol/messages.hpp"
#include "xanesd/protocol/wire.hpp"

using namespace xanesd;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> kSpecies = {"Magnetite", "Goethite", "Pyrite"};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
double millis(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  std::filesystem::path library = std::filesystem::path(XANESD_SOURCE_DIR) / "config/references/fe_k_library_normalized.nor";
  std::filesystem::path energies = std::filesystem::path(XANESD_SOURCE_DIR) / "config/references/fe_k_energies_hxn.txt";
  bool small = true, large = true;
  int large_size = 2048;
  int large_energies = 25;  // of the 73 HXN energies, evenly spread over the grid
  int large_scans = 1;
  int small_rows = 155, small_cols = 160;
  int small_scans = 30;  // repeats of the full 73-energy scan, distinct scan_ids
  std::vector<int> intervals = {0, 250};
  bool raw = true;
  // Paced runs (latency when xanesd keeps up): the sender offers frames at pace_fraction × the
  // lowest unpaced frame rate of that size, for the sizes listed.
  bool paced_small = true, paced_large = false;
  double pace_fraction = 0.5;
  double pace_rate = 0;  // frames/s: a fixed paced rate instead (to compare builds at the same load)
  std::vector<std::string> set;  // extra daemon config overrides (--set KEY=VALUE)
  // Message shapes besides full frames: row blocks of N rows (energy-major) of the large image,
  // batches of N pixels (pixel-major, as a fly scan sends them) of one small scan.
  std::vector<int> large_rows, small_pixels, small_spectra;
  int worst = 0;  // print the N frames with the longest latency of each run (which scan, which seq)
};

int usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: bench_ingest [options]\n"
               "  --only small|large       run one image size (default: both)\n"
               "  --large-size N           large image is N×N (default 2048)\n"
               "  --large-energies N       energies of the HXN grid used for the large image (default 25)\n"
               "  --large-scans N          scans of the large image per setting (default 1)\n"
               "  --small-scans N          repeats of the 155×160 × 73-energy scan per setting (default 30)\n"
               "  --intervals A,B,...      publish.interval_ms values to run (default 0,250)\n"
               "  --no-raw                 skip the raw ZeroMQ PUSH→PULL baseline\n"
               "  --set KEY=VALUE          daemon config override, repeatable (e.g. segment.enabled=false)\n"
               "  --large-rows N,...       also send the large image as row blocks of N rows (energy-major)\n"
               "  --small-shape RxC        the small image's shape (default 155x160)\n"
               "  --small-spectra N,...    also send one small scan as spectra batches: N pixels × every energy\n"
               "                           in one message\n"
               "  --small-pixels N,...     also send one small scan as batches of N pixels (pixel-major; 1 pixel:\n"
               "                           1.8 M messages)\n"
               "  --paced small|all|none   also run with the sender paced below capacity (default small:\n"
               "                           a paced 2048×2048 run takes several minutes)\n"
               "  --pace-fraction F        paced rate = F × the lowest unpaced frame rate of that size (default 0.5)\n"
               "  --pace-rate R            paced rate = R frames/s, whatever the unpaced rate (builds compared at one load)\n"
               "  --library FILE           reference library (default config/references/fe_k_library_normalized.nor)\n"
               "  --energies FILE          energy grid (default config/references/fe_k_energies_hxn.txt)\n"
               "  --worst N                list each run's N slowest frames (scan, seq, latency): where a p99 comes from\n");
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
    if (a == "--only") {
      const auto v = next();
      if (v != "small" && v != "large") throw std::runtime_error("--only takes small or large");
      o.small = v == "small";
      o.large = v == "large";
    } else if (a == "--large-size") o.large_size = std::stoi(next());
    else if (a == "--large-energies") o.large_energies = std::stoi(next());
    else if (a == "--large-scans") o.large_scans = std::stoi(next());
    else if (a == "--small-scans") o.small_scans = std::stoi(next());
    else if (a == "--worst") o.worst = std::stoi(next());
    else if (a == "--small-shape") {
      const auto v = next();
      const auto x = v.find('x');
      if (x == std::string::npos) throw std::runtime_error("--small-shape takes ROWSxCOLS");
      o.small_rows = std::stoi(v.substr(0, x)), o.small_cols = std::stoi(v.substr(x + 1));
      if (o.small_rows < 1 || o.small_cols < 1) throw std::runtime_error("--small-shape takes positive sizes");
    }
    else if (a == "--intervals") {
      o.intervals.clear();
      std::string v = next();
      for (std::size_t p = 0; p <= v.size();) {
        const auto q = std::min(v.find(',', p), v.size());
        o.intervals.push_back(std::stoi(v.substr(p, q - p)));
        p = q + 1;
      }
    } else if (a == "--large-rows" || a == "--small-pixels" || a == "--small-spectra") {
      auto& list = a == "--large-rows" ? o.large_rows : (a == "--small-pixels" ? o.small_pixels : o.small_spectra);
      std::string v = next();
      for (std::size_t p = 0; p <= v.size();) {
        const auto q = std::min(v.find(',', p), v.size());
        list.push_back(std::stoi(v.substr(p, q - p)));
        if (list.back() < 1) throw std::runtime_error(a + " takes positive counts");
        p = q + 1;
      }
    } else if (a == "--no-raw") o.raw = false;
    else if (a == "--set") o.set.push_back(next());
    else if (a == "--paced") {
      const auto v = next();
      if (v != "small" && v != "all" && v != "none") throw std::runtime_error("--paced takes small, all or none");
      o.paced_small = v != "none";
      o.paced_large = v == "all";
    } else if (a == "--pace-fraction") o.pace_fraction = std::stod(next());
    else if (a == "--pace-rate") o.pace_rate = std::stod(next());
    else if (a == "--library") o.library = next();
    else if (a == "--energies") o.energies = next();
    else throw std::runtime_error("unknown option '" + a + "'");
  }
  if (!(o.pace_fraction > 0 && o.pace_fraction <= 10)) throw std::runtime_error("--pace-fraction must be in (0, 10]");
  if (!(o.pace_rate >= 0 && o.pace_rate < 1e6)) throw std::runtime_error("--pace-rate must be in [0, 1e6) frames/s");
  if (o.large_energies < 6 || o.small_scans < 1 || o.large_scans < 1 || o.large_size < 8)
    throw std::runtime_error("--large-energies must be ≥ 6 (the fit has 5 parameters), scans and size ≥ 1");
  return o;
}

using xanesd::bench::cpu_model;
using xanesd::bench::mem_total;
using xanesd::bench::nproc;

// ---------------------------------------------------------------------------------------------
// Workloads: the frames are computed once and reused; the sender does no per-frame work beyond
// a small msgpack header (counts go out zero-copy from these buffers).

struct Workload {
  std::string label;
  int rows = 0, cols = 0;
  std::vector<double> energies;
  std::vector<float> counts;  // E × P, energy-major
  std::vector<float> spectra_counts;  // P × E, pixel-major (spectra batches)
  std::vector<double> i0;     // E
  int scans = 1;
  bool large = false;
  std::string how;            // how the frames were made, for the output
  // Message shape: full frames (block 0), row blocks of `block` rows, or batches of `block` pixels.
  // Spectra: batches of `block` pixels with every energy in one message.
  enum class Split { full, rows, pixels, spectra } split = Split::full;
  int block = 0;
  std::shared_ptr<std::vector<std::uint32_t>> pixel_ids;  // 0..P−1, the pixel lists' source
  std::size_t pixels() const { return static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols); }
  std::size_t blocks() const {  // messages per energy
    if (split == Split::rows) return (static_cast<std::size_t>(rows) + block - 1) / block;
    if (split == Split::pixels || split == Split::spectra) return (pixels() + block - 1) / block;
    return 1;
  }
  std::size_t energies_per_message() const { return split == Split::spectra ? energies.size() : 1; }
  std::size_t frames_per_scan() const { return energies.size() / energies_per_message() * blocks(); }
  std::size_t frame_bytes() const { return pixels() * energies_per_message() * sizeof(float) / blocks(); }  // mean
  std::string shape_id() const {
    static const char* kinds[] = {"full", "rows", "pixels", "spectra"};
    return split == Split::full ? "full" : kinds[static_cast<int>(split)] + std::to_string(block);
  }
  std::string shape() const {
    if (split == Split::rows) return "rows×" + std::to_string(block);
    if (split == Split::pixels) return "pixels×" + std::to_string(block);
    if (split == Split::spectra) return "spectra×" + std::to_string(block);
    return "full";
  }
  // Message i of a scan in sending order: energy-major for full frames and row blocks (all
  // blocks of an energy, then the next energy), pixel-major for pixel batches (every energy of
  // a batch, then the next batch). Returns (energy, first element, element count).
  std::tuple<std::size_t, std::size_t, std::size_t> message(std::size_t i) const {
    const std::size_t E = energies.size(), per = split == Split::rows ? static_cast<std::size_t>(block) * cols : block;
    const std::size_t total = split == Split::rows ? static_cast<std::size_t>(rows) * cols : pixels();
    if (split == Split::full) return {i, 0, pixels()};
    if (split == Split::spectra) return {0, i * static_cast<std::size_t>(block), std::min<std::size_t>(block, pixels() - i * static_cast<std::size_t>(block))};
    const std::size_t e = split == Split::rows ? i / blocks() : i % E, b = split == Split::rows ? i % blocks() : i / E;
    return {e, b * per, std::min(per, total - b * per)};
  }
};

std::vector<science::Reference> species_refs(const std::filesystem::path& library) {
  std::vector<science::Reference> refs;
  for (const auto& name : kSpecies)
    for (const auto& r : science::load_reference_file(library))
      if (r.name == name) refs.push_back(r);
  if (refs.size() != kSpecies.size()) throw std::runtime_error("reference library lacks one of Magnetite, Goethite, Pyrite");
  return refs;
}

// 155×160 (or as given) × all energies, with per-sample Poisson noise from the simulator.
Workload small_workload(const Options& o, const std::vector<science::Reference>& refs, const std::vector<double>& grid) {
  sim::Params p;
  p.rows = o.small_rows, p.cols = o.small_cols;
  p.energies_eV = grid;
  p.counts = 2000;
  p.seed = 2026;
  auto s = sim::simulate(refs, p);
  Workload w;
  w.label = std::to_string(p.rows) + "x" + std::to_string(p.cols);
  w.rows = p.rows, w.cols = p.cols;
  w.energies = grid;
  w.counts = std::move(s.counts);
  w.i0 = std::move(s.i0);
  w.scans = o.small_scans;
  w.how = "xanes-simulate fluorescence scan (Poisson noise, I0 drift, background), all " +
          std::to_string(grid.size()) + " HXN energies, " + std::to_string(w.scans) + " scans back to back";
  return w;
}

// N×N × a subset of the energies: the simulator's clean mixture at each energy plus one fixed
// Gaussian approximation of counting noise (√counts · z), its pattern shifted per energy so
// the planes differ. Per-sample Poisson draws for 4 M pixels per frame would take longer than
// the ingest being measured.
Workload large_workload(const Options& o, const std::vector<science::Reference>& refs, const std::vector<double>& grid) {
  const int n = o.large_energies;
  std::vector<double> subset;
  for (int i = 0; i < n; ++i) {
    const auto idx = static_cast<std::size_t>(std::lround(static_cast<double>(i) * static_cast<double>(grid.size() - 1) / (n - 1)));
    subset.push_back(grid[std::min(idx, grid.size() - 1)]);
  }
  subset.erase(std::unique(subset.begin(), subset.end()), subset.end());
  sim::Params p;
  p.rows = p.cols = o.large_size;
  p.energies_eV = subset;
  p.counts = 2000;
  p.noise = false;
  auto s = sim::simulate(refs, p);
  const std::size_t P = s.pixels();
  std::vector<float> z(P);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal;
  for (auto& v : z) v = normal(rng);
  for (std::size_t e = 0; e < subset.size(); ++e) {
    float* plane = s.counts.data() + e * P;
    const std::size_t shift = (e * 1'000'003) % P;
    for (std::size_t px = 0; px < P; ++px) {
      const float c = plane[px];
      std::size_t j = px + shift;
      if (j >= P) j -= P;
      plane[px] = std::max(0.f, std::round(c + std::sqrt(c) * z[j]));
    }
  }
  Workload w;
  w.label = std::to_string(p.rows) + "x" + std::to_string(p.cols);
  w.rows = p.rows, w.cols = p.cols;
  w.energies = subset;
  w.counts = std::move(s.counts);
  w.i0 = std::move(s.i0);
  w.scans = o.large_scans;
  w.large = true;
  w.how = "clean simulated mixture + fixed sqrt(N) noise pattern, " + std::to_string(subset.size()) + " of the " +
          std::to_string(grid.size()) + " HXN energies (evenly spread over the grid: " +
          std::to_string(static_cast<int>(subset.front())) + "–" + std::to_string(static_cast<int>(subset.back())) +
          " eV), " + std::to_string(w.scans) + " scan(s)";
  return w;
}

// Message i of a scan (Workload::message); its arrays are zero-copy views of the workload's
// buffers (they outlive the send).
protocol::WireMessage frame_message(const Workload& w, const std::string& scan_id, std::int64_t seq, std::size_t i) {
  const auto [e, first, n] = w.message(i);
  protocol::FrameMsg f;
  f.scan_id = scan_id;
  f.seq = seq;
  f.energy_index = static_cast<int>(e);
  f.energy_eV = w.energies[e];
  f.i0_scalar = w.i0[e];
  auto view = [](const std::string& name, const void* data, std::size_t bytes, protocol::DType t, std::vector<std::int64_t> shape) {
    return protocol::Array(name, t, std::move(shape), true, zmq::message_t(const_cast<void*>(data), bytes, nullptr, nullptr));
  };
  const float* counts = w.counts.data() + e * w.pixels() + first;
  const auto N = static_cast<std::int64_t>(n);
  if (w.split == Workload::Split::full) {
    f.counts = view("counts", counts, n * sizeof(float), protocol::DType::float32, {w.rows, w.cols});
  } else if (w.split == Workload::Split::rows) {
    const int r0 = static_cast<int>(first / static_cast<std::size_t>(w.cols)), nr = static_cast<int>(n / static_cast<std::size_t>(w.cols));
    f.region = {protocol::Region::Kind::rows, r0, nr};
    f.counts = view("counts", counts, n * sizeof(float), protocol::DType::float32, {nr, w.cols});
  } else if (w.split == Workload::Split::pixels) {
    f.region.kind = protocol::Region::Kind::pixels;
    f.pixels = view("pixels", w.pixel_ids->data() + first, n * sizeof(std::uint32_t), protocol::DType::uint32, {N});
    f.counts = view("counts", counts, n * sizeof(float), protocol::DType::float32, {N});
  } else {  // a spectra batch: n pixels × every energy
    const std::size_t E = w.energies.size();
    f.region.kind = protocol::Region::Kind::pixels;
    f.pixels = view("pixels", w.pixel_ids->data() + first, n * sizeof(std::uint32_t), protocol::DType::uint32, {N});
    f.counts = view("counts", w.spectra_counts.data() + first * E, n * E * sizeof(float), protocol::DType::float32,
                    {N, static_cast<std::int64_t>(E)});
    f.i0_scalar.reset();
    for (std::size_t j = 0; j < E; ++j) f.energy_indices.push_back(static_cast<int>(j));
    f.energies_eV = w.energies;
    f.i0_scalars = w.i0;
  }
  return std::move(f).to_wire();
}

// ---------------------------------------------------------------------------------------------
// Raw transport baseline: the same frame messages PUSH→PULL over loopback, the PULL side only
// receives. Two contexts (one I/O thread each), as in the daemon run (the daemon has its own).

struct RawResult {
  std::size_t frames = 0;
  double seconds = 0, fps = 0, gbytes_per_s = 0;
};

RawResult run_raw(const Workload& w) {
  const std::size_t bytes = w.frame_bytes();
  const auto n = static_cast<std::size_t>(std::clamp<double>(3e9 / static_cast<double>(bytes), 60, 30000));
  zmq::context_t rctx(1), sctx(1);
  zmq::socket_t pull(rctx, zmq::socket_type::pull);
  pull.set(zmq::sockopt::linger, 0);
  pull.bind("tcp://127.0.0.1:*");
  const auto ep = pull.get(zmq::sockopt::last_endpoint);
  zmq::socket_t push(sctx, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(ep);
  // Warm-up: connection established, first message through.
  protocol::send(push, frame_message(w, "raw", 0, 0));
  {
    std::vector<zmq::message_t> parts;
    (void)zmq::recv_multipart(pull, std::back_inserter(parts));
  }
  Clock::time_point t_last;
  std::thread receiver([&] {
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<zmq::message_t> parts;
      (void)zmq::recv_multipart(pull, std::back_inserter(parts));
    }
    t_last = Clock::now();
  });
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i)
    protocol::send(push, frame_message(w, "raw", static_cast<std::int64_t>(i), i % w.frames_per_scan()));
  // (n is sized by bytes: small messages get the 30000 cap, enough to time the per-message cost)
  receiver.join();
  RawResult r;
  r.frames = n;
  r.seconds = seconds(t_last - t0);
  r.fps = static_cast<double>(n) / r.seconds;
  r.gbytes_per_s = r.fps * static_cast<double>(bytes) / 1e9;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Daemon run

nlohmann::json control(zmq::context_t& ctx, const std::string& endpoint, const nlohmann::json& req) {
  zmq::socket_t s(ctx, zmq::socket_type::req);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 60000);
  s.connect(endpoint);
  const auto text = req.dump();
  s.send(zmq::buffer(text), zmq::send_flags::none);
  zmq::message_t reply;
  if (!s.recv(reply)) throw std::runtime_error("control request '" + req.value("cmd", "") + "' timed out");
  return nlohmann::json::parse(reply.to_string_view());
}

struct RunResult {
  std::size_t frames = 0;
  double seconds = 0, fps = 0, samples_per_s = 0;
  double lat_median_ms = 0, lat_p99_ms = 0, lat_max_ms = 0;
  std::size_t publications = 0;   // maps/fractions messages received (incl. the final ones)
  std::int64_t cycles = 0;        // daemon publish.cycles
  double sender_done_s = 0;       // when the last frame was handed to ZeroMQ (from first send)
  double ingest_fps = 0;          // frames / (first frame sent → daemon has accepted every frame)
  std::string breakdown;          // where the daemon's time went (its time_us.* counters)
  std::string worst;              // --worst N: the slowest frames, "scan:seq ms" each
  std::vector<std::string> warnings;
};

double percentile(std::vector<double> v, double q) {  // nearest rank
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::clamp<std::size_t>(rank, 1, v.size()) - 1];
}

std::string sfmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// rate_fps = 0: the sender sends as fast as ZeroMQ accepts; otherwise frame i is sent at
// t_begin + i / rate_fps (or as soon after as back-pressure allows).
RunResult run_daemon(const Options& o, const Workload& w, int interval_ms, double rate_fps) {
  // A journal of its own, new for every row: the shared default (output.directory/.journal)
  // would replay the previous run's scan at start-up (its frames counted as accepted) and its
  // lock would keep a second benchmark on the machine from journaling at all.
  static int run_number = 0;
  const auto journal_dir = std::filesystem::temp_directory_path() /
                           ("xanesd-bench-journal-" + std::to_string(getpid()) + "-" + std::to_string(++run_number));
  struct Remove {
    std::filesystem::path dir;
    ~Remove() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } remove_journal{journal_dir};
  std::vector<std::string> overrides = {"journal.directory=" + journal_dir.string(),"ingest.endpoint=tcp://127.0.0.1:*", "publish.endpoint=tcp://127.0.0.1:*",
                                        "control.endpoint=tcp://127.0.0.1:*", "publish.interval_ms=" + std::to_string(interval_ms),
                                        "output.write_on_stop=false", "output.directory=/tmp", "log.level=warn",
                                        "references.files=[" + nlohmann::json(o.library.string()).dump() + "]"};
  overrides.insert(overrides.end(), o.set.begin(), o.set.end());
  const auto cfg = make_config(nlohmann::json::object(), overrides, "/");
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));  // Daemon leaves the level to main()
  Daemon daemon(cfg);
  daemon.start();
  const auto eps = daemon.endpoints();

  zmq::context_t ctx(1);
  const auto loaded = control(ctx, eps.control,
                              {{"cmd", "load_references"}, {"files", {o.library.string()}}, {"names", kSpecies}});
  if (!loaded.value("ok", false)) throw std::runtime_error("load_references failed: " + loaded.dump());

  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::rcvhwm, 0);
  sub.set(zmq::sockopt::linger, 0);
  sub.set(zmq::sockopt::subscribe, "maps/fractions");
  sub.connect(eps.publish);
  zmq::socket_t push(ctx, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.set(zmq::sockopt::sndtimeo, 600'000);  // a stuck daemon ends the run instead of hanging it
  push.connect(eps.ingest);
  std::this_thread::sleep_for(300ms);  // let the subscription reach the PUB socket

  const std::size_t E = w.frames_per_scan();
  const std::size_t total = E * static_cast<std::size_t>(w.scans);
  std::vector<std::string> ids;
  for (int s = 0; s < w.scans; ++s)
    ids.push_back("bench-" + std::to_string(w.rows) + "x" + std::to_string(w.cols) + "-" + w.shape_id() + "-i" +
                  std::to_string(interval_ms) + "-" + std::to_string(s));  // a scan id: ASCII, no spaces

  std::vector<Clock::time_point> handed(total);
  Clock::time_point t_begin;
  std::atomic<bool> sender_ok{true}, begun{false};
  std::string sender_error;
  std::thread sender([&] {
    auto send = [&](protocol::WireMessage&& m) {
      if (!protocol::send(push, std::move(m))) throw std::runtime_error("xanesd accepted nothing for 600 s");
    };
    try {
      for (int s = 0; s < w.scans; ++s) {
        protocol::StartMsg start;
        start.scan_id = ids[static_cast<std::size_t>(s)];
        start.rows = w.rows, start.cols = w.cols;
        start.energies_eV = w.energies;
        start.mode = protocol::Mode::fluorescence;
        send(std::move(start).to_wire());
        for (std::size_t e = 0; e < E; ++e) {
          if (rate_fps > 0 && !(s == 0 && e == 0))
            std::this_thread::sleep_until(
                t_begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                              static_cast<double>(static_cast<std::size_t>(s) * E + e) / rate_fps)));
          else if (s == 0 && e == 0)
            t_begin = Clock::now();
          send(frame_message(w, ids[static_cast<std::size_t>(s)], static_cast<std::int64_t>(e), e));
          handed[static_cast<std::size_t>(s) * E + e] = Clock::now();
          begun = true;
        }
        protocol::StopMsg stop;
        stop.scan_id = ids[static_cast<std::size_t>(s)];
        stop.frames_sent = static_cast<std::int64_t>(E);
        send(std::move(stop).to_wire());
      }
    } catch (const std::exception& e) {
      sender_error = e.what();
      sender_ok = false;
    }
  });

  struct Pub {
    std::size_t scan;
    std::int64_t last_seq;
    bool final;
    Clock::time_point t;
  };
  // When the daemon has accepted every frame (its ingest, apart from the final maps): status
  // polled every 10 ms on its own socket; status is answered without the pipeline thread.
  std::atomic<bool> polling{true};
  Clock::time_point t_accepted{};
  std::thread poller([&] {
    while (polling) {
      std::this_thread::sleep_for(10ms);
      if (!begun) continue;
      const auto st = control(ctx, eps.control, {{"cmd", "status"}});
      if (st.at("counters").value("ingest.frames_accepted", std::int64_t{0}) >= static_cast<std::int64_t>(total)) {
        t_accepted = Clock::now();
        return;
      }
    }
  });
  std::vector<Pub> pubs;
  std::map<std::string, std::size_t> scan_index;
  for (std::size_t s = 0; s < ids.size(); ++s) scan_index[ids[s]] = s;
  std::size_t finals = 0;
  Clock::time_point t_end{};
  const auto deadline = Clock::now() + 900s;
  RunResult r;
  while (finals < ids.size()) {
    if (Clock::now() > deadline) {
      r.warnings.push_back("timed out waiting for the final maps");
      break;
    }
    if (!sender_ok) break;
    zmq::pollitem_t item{sub.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, 200ms) <= 0) continue;
    std::vector<zmq::message_t> parts;
    (void)zmq::recv_multipart(sub, std::back_inserter(parts));
    const auto t = Clock::now();
    if (parts.size() < 2) continue;
    const auto header = protocol::decode_header(parts[1].data(), parts[1].size());
    const auto it = scan_index.find(header.value("scan_id", ""));
    if (it == scan_index.end()) continue;
    const bool final = header.value("final", false);
    pubs.push_back({it->second, header.value("last_seq", std::int64_t{-1}), final, t});
    if (final) {
      ++finals;
      t_end = t;
    }
  }
  sender.join();
  polling = false;
  poller.join();
  if (!sender_ok) throw std::runtime_error("sender failed: " + sender_error);

  // Latency of frame (scan s, seq q): first publication of scan s with last_seq ≥ q.
  std::vector<double> lat;
  std::vector<std::tuple<double, std::size_t, std::size_t>> by_latency;  // (ms, scan, seq)
  for (std::size_t s = 0; s < ids.size(); ++s) {
    std::size_t k = 0;
    std::vector<const Pub*> mine;
    for (const auto& p : pubs)
      if (p.scan == s) mine.push_back(&p);
    for (std::size_t q = 0; q < E; ++q) {
      while (k < mine.size() && mine[k]->last_seq < static_cast<std::int64_t>(q)) ++k;
      if (k == mine.size()) {
        r.warnings.push_back("frame " + std::to_string(q) + " of scan " + ids[s] + " never appeared in a map");
        break;
      }
      lat.push_back(millis(mine[k]->t - handed[s * E + q]));
      by_latency.emplace_back(lat.back(), s, q);
    }
  }
  std::sort(by_latency.rbegin(), by_latency.rend());
  for (std::size_t i = 0; i < std::min<std::size_t>(by_latency.size(), static_cast<std::size_t>(std::max(0, o.worst))); ++i)
    r.worst += (i ? ", " : "") + std::to_string(std::get<1>(by_latency[i])) + ":" + std::to_string(std::get<2>(by_latency[i])) +
               " " + sfmt("%.1f", std::get<0>(by_latency[i])) + " ms";

  const auto status = control(ctx, eps.control, {{"cmd", "status"}});
  const auto& c = status.at("counters");
  auto counter = [&](const char* k) { return c.contains(k) ? c.at(k).get<std::int64_t>() : 0; };
  if (counter("ingest.frames_accepted") != static_cast<std::int64_t>(total))
    r.warnings.push_back("daemon accepted " + std::to_string(counter("ingest.frames_accepted")) + " of " +
                         std::to_string(total) + " frames");
  for (const auto& [k, v] : c.items())
    if ((k.rfind("issues.", 0) == 0 || k == "publish.queue_full" || k == "internal_errors") && v.get<std::int64_t>() > 0)
      r.warnings.push_back("daemon counter " + k + " = " + std::to_string(v.get<std::int64_t>()));

  r.frames = total;
  if (t_end == Clock::time_point{}) t_end = Clock::now();
  r.seconds = seconds(t_end - t_begin);
  r.fps = static_cast<double>(total) / r.seconds;
  r.samples_per_s = static_cast<double>(w.energies.size() * w.pixels()) * w.scans / r.seconds;
  r.lat_median_ms = percentile(lat, 0.50);
  r.lat_p99_ms = percentile(lat, 0.99);
  r.lat_max_ms = percentile(lat, 1.0);
  r.publications = pubs.size();
  r.cycles = counter("publish.cycles");
  // More maps than cycles is normal: a cycle whose reference selection changed the fitted
  // references publishes the fit's maps again after it.
  if (static_cast<std::int64_t>(r.publications) < r.cycles)
    r.warnings.push_back("received " + std::to_string(r.publications) + " fraction maps of " + std::to_string(r.cycles) +
                         " publication cycles (subscriber too slow?)");
  r.sender_done_s = seconds(handed.back() - t_begin);
  r.ingest_fps = t_accepted == Clock::time_point{} ? NAN : static_cast<double>(total) / seconds(t_accepted - t_begin);
  {
    // Per frame: Scan::apply (validate, normalize, store) and the journal; per cycle: its phases.
    const double n = static_cast<double>(std::max<std::int64_t>(1, counter("ingest.frames_accepted")));
    const double cyc = static_cast<double>(std::max<std::int64_t>(1, r.cycles));
    auto ms = [&](const char* k) { return static_cast<double>(counter(k)) / 1000.0; };
    r.breakdown = "per frame: apply " + sfmt("%.2f", ms("time_us.ingest.apply") / n) + " ms, journal " +
                  sfmt("%.2f", ms("time_us.ingest.journal") / n) + " ms; " + std::to_string(counter("ingest.frames_staged")) +
                  " frames staged during cycles, pipeline waited " + sfmt("%.0f", ms("time_us.pipeline.waited_for_cycle")) +
                  " ms for cycles; " + std::to_string(counter("publish.cycles_cancelled")) +
                  " live cycles cancelled by a stop; per published cycle (" + std::to_string(r.cycles) +
                  ", the cancelled ones' steps included): total " + sfmt("%.0f", ms("time_us.cycle.total") / cyc) +
                  " ms = fold " + sfmt("%.1f", ms("time_us.cycle.fold") / cyc) + ", solve " + sfmt("%.1f", ms("time_us.cycle.solve") / cyc) +
                  ", encode " + sfmt("%.1f", ms("time_us.cycle.encode") / cyc) + ", publish " + sfmt("%.1f", ms("time_us.cycle.publish") / cyc) +
                  " ms";
    // The image-level steps run in the final cycles only (while a scan runs, on the analysis thread).
    const double finals = static_cast<double>(w.scans);
    r.breakdown += "; per final cycle (" + std::to_string(w.scans) + "): reference selection " +
                   sfmt("%.0f", ms("time_us.cycle.reference_selection") / finals) + ", segmentation beside edge maps " +
                   sfmt("%.0f", ms("time_us.cycle.analysis") / finals) + " (segmentation " +
                   sfmt("%.0f", ms("time_us.cycle.segmentation") / finals) + ", edge maps " +
                   sfmt("%.0f", ms("time_us.cycle.edge_maps") / finals) + ") ms";
    // The live reference selection and segmentation, on the analysis thread beside the cycles.
    const auto runs = counter("analysis.runs");
    const double an = static_cast<double>(std::max<std::int64_t>(1, runs));
    r.breakdown += "; " + std::to_string(runs) + " analyses beside the cycles: reference selection " +
                   sfmt("%.0f", ms("time_us.analysis.reference_selection") / an) + ", segmentation " +
                   sfmt("%.0f", ms("time_us.analysis.segmentation") / an) + " ms each, pipeline waited " +
                   sfmt("%.0f", ms("time_us.pipeline.waited_for_analysis")) + " ms for them";
  }
  return r;
}

std::string human_rate(double v) {  // 1.23 M, 456 k …
  if (v >= 1e9) return sfmt("%.2f G", v / 1e9);
  if (v >= 1e6) return sfmt("%.1f M", v / 1e6);
  if (v >= 1e3) return sfmt("%.1f k", v / 1e3);
  return sfmt("%.1f ", v);
}

}  // namespace

int main(int argc, char** argv) {
  xanesd::restart_with_huge_page_heap(argv);  // as xanesd's main() does
  xanesd::tune_allocator();
  Options o;
  try {
    auto parsed = parse_args(argc, argv);
    if (!parsed) return usage(0);
    o = *parsed;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ingest: %s\n", e.what());
    return usage(2);
  }
  try {
    const auto t_start = Clock::now();
    utsname u{};
    uname(&u);
    const auto [zmaj, zmin, zpat] = zmq::version();
    std::printf("xanesd ingest benchmark (bench/bench_ingest.cpp)\n");
    std::printf("machine : %d CPUs (nproc), %s, %s RAM, %s %s\n", nproc(), cpu_model().c_str(), mem_total().c_str(),
                u.sysname, u.release);
    std::printf("software: xanesd %s, ZeroMQ %d.%d.%d, compiler %s %s\n", XANESD_VERSION_STRING, zmaj, zmin, zpat,
#ifdef __clang__
                "clang",
#else
                "gcc",
#endif
                __VERSION__);
    std::printf("setup   : in-process daemon, tcp://127.0.0.1 loopback; sender, daemon and map subscriber share these CPUs\n");
    std::printf("fit     : nnls, 3 references (%s, %s, %s) + linear background; fluorescence, float32 full frames, scalar i0\n",
                kSpecies[0].c_str(), kSpecies[1].c_str(), kSpecies[2].c_str());
    std::printf("sender  : PUSH, energy-major, as fast as the daemon accepts (lossless back-pressure)\n\n");
    std::fflush(stdout);

    const auto refs = species_refs(o.library);
    const auto grid = sim::read_energies_file(o.energies);
    std::vector<Workload> workloads;
    if (o.large) {
      const auto t = Clock::now();
      workloads.push_back(large_workload(o, refs, grid));
      std::printf("workload %-9s: %s [generated in %.1f s]\n", workloads.back().label.c_str(), workloads.back().how.c_str(),
                  seconds(Clock::now() - t));
    }
    if (o.small) {
      const auto t = Clock::now();
      workloads.push_back(small_workload(o, refs, grid));
      std::printf("workload %-9s: %s [generated in %.1f s]\n", workloads.back().label.c_str(), workloads.back().how.c_str(),
                  seconds(Clock::now() - t));
    }
    std::printf("\n");
    std::fflush(stdout);

    struct Row {
      std::string size, setting;
      std::size_t frames;
      double fps, sps, pct;
      std::string lat50, lat99, latmax, cycles;
      double ingest_fps = NAN;
    };
    std::vector<Row> rows;
    std::vector<std::string> summary;
    // Each workload as full frames (every interval, paced runs), then in the other message
    // shapes asked for (the default interval only; pixel batches: one scan).
    for (auto& w : workloads) {
      const int default_interval = 250;
      std::vector<std::pair<Workload::Split, int>> shapes = {{Workload::Split::full, 0}};
      for (int n : w.large ? o.large_rows : std::vector<int>{}) shapes.push_back({Workload::Split::rows, n});
      for (int n : w.large ? std::vector<int>{} : o.small_pixels) shapes.push_back({Workload::Split::pixels, n});
      for (int n : w.large ? std::vector<int>{} : o.small_spectra) shapes.push_back({Workload::Split::spectra, n});
      if (shapes.size() > 1 && !w.pixel_ids) {
        w.pixel_ids = std::make_shared<std::vector<std::uint32_t>>(w.pixels());
        std::iota(w.pixel_ids->begin(), w.pixel_ids->end(), 0u);
      }
      if (!w.large && !o.small_spectra.empty() && w.spectra_counts.empty()) {
        const std::size_t E = w.energies.size(), P = w.pixels();
        w.spectra_counts.resize(E * P);
        for (std::size_t e = 0; e < E; ++e)
          for (std::size_t p = 0; p < P; ++p) w.spectra_counts[p * E + e] = w.counts[e * P + p];
      }
      const std::string base_label = w.label;
      const int base_scans = w.scans;
      for (const auto& [split, block] : shapes) {
        w.split = split, w.block = block;
        w.label = split == Workload::Split::full ? base_label : base_label + " " + w.shape();
        w.scans = split == Workload::Split::pixels || split == Workload::Split::spectra ? 1 : base_scans;
        const auto intervals = split == Workload::Split::full ? o.intervals : std::vector<int>{default_interval};
        std::optional<RawResult> raw;
        if (o.raw) {
          raw = run_raw(w);
          std::printf("[%s] raw PUSH→PULL loopback: %zu frames of %.1f MB in %.2f s: %.1f frames/s, %.2f GB/s\n",
                      w.label.c_str(), raw->frames, static_cast<double>(w.frame_bytes()) / 1e6, raw->seconds, raw->fps,
                      raw->gbytes_per_s);
          std::fflush(stdout);
          rows.push_back({w.label, "raw ZeroMQ, no daemon", raw->frames, raw->fps,
                          raw->fps * static_cast<double>(w.pixels() * w.energies_per_message()) / static_cast<double>(w.blocks()),
                          100.0, "-", "-", "-", "-"});
        }
        auto run = [&](int interval, double rate) {
          const auto r = run_daemon(o, w, interval, rate);
          const std::string pace = rate > 0 ? ", paced " + sfmt("%.3g", rate) + "/s" : "";
          const double pct = raw && rate == 0 ? 100.0 * r.fps / raw->fps : NAN;
          std::printf("[%s] xanesd, publish.interval_ms=%d%s: %zu frames in %.2f s (last frame handed to ZeroMQ at %.2f s): "
                      "%.1f frames/s, %s pixel-samples/s, latency median %.1f ms, p99 %.1f ms, max %.1f ms; "
                      "%zu fraction maps received, %lld publication cycles\n",
                      w.label.c_str(), interval, pace.c_str(), r.frames, r.seconds, r.sender_done_s, r.fps,
                      human_rate(r.samples_per_s).c_str(), r.lat_median_ms, r.lat_p99_ms, r.lat_max_ms, r.publications,
                      static_cast<long long>(r.cycles));
          std::printf("  ingest: every frame accepted at %.1f frames/s; %s\n", r.ingest_fps, r.breakdown.c_str());
          if (!r.worst.empty()) std::printf("  slowest frames (scan:seq latency): %s\n", r.worst.c_str());
          for (const auto& wmsg : r.warnings) std::printf("  WARNING: %s\n", wmsg.c_str());
          std::fflush(stdout);
          rows.push_back({w.label, "xanesd interval_ms=" + std::to_string(interval) + (rate > 0 ? " paced" : ""), r.frames,
                          r.fps, r.samples_per_s, pct, sfmt("%.0f", r.lat_median_ms), sfmt("%.0f", r.lat_p99_ms),
                          sfmt("%.0f", r.lat_max_ms), std::to_string(r.cycles), r.ingest_fps});
          if (!std::isnan(pct))
            summary.push_back(w.label + ", publish.interval_ms=" + std::to_string(interval) + ": xanesd reaches " +
                              sfmt("%.1f", pct) + "% of raw loopback frame rate");
          return r;
        };
        double slowest = INFINITY;
        for (int interval : intervals) slowest = std::min(slowest, run(interval, 0).fps);
        if (split == Workload::Split::full && (w.large ? o.paced_large : o.paced_small)) {
          const double rate = o.pace_rate > 0 ? o.pace_rate : o.pace_fraction * slowest;
          std::printf("[%s] paced runs: sender offers %.3g frames/s (%.0f%% of the lowest unpaced rate above)\n", w.label.c_str(),
                      rate, 100 * rate / slowest);
          for (int interval : intervals) run(interval, rate);
        }
      }
      w.label = base_label;
    }

    std::printf("\n%-20s  %-29s %7s %10s %16s %8s %11s %11s %11s %11s %7s\n", "size", "setting", "frames", "frames/s",
                "pixel-samples/s", "% raw", "ingest f/s", "lat p50 ms", "lat p99 ms", "lat max ms", "cycles");
    std::printf("%s\n", std::string(153, '-').c_str());
    for (const auto& r : rows)
      std::printf("%-20s  %-29s %7zu %10.1f %16s %8s %11s %11s %11s %11s %7s\n", r.size.c_str(), r.setting.c_str(), r.frames,
                  r.fps, (human_rate(r.sps) + "/s").c_str(), std::isnan(r.pct) ? "-" : sfmt("%.1f%%", r.pct).c_str(),
                  std::isnan(r.ingest_fps) ? "-" : sfmt("%.1f", r.ingest_fps).c_str(), r.lat50.c_str(), r.lat99.c_str(),
                  r.latmax.c_str(), r.cycles.c_str());
    std::printf("\n");
    for (const auto& s : summary) std::printf("%s\n", s.c_str());
    std::printf("\nframes/s, pixel-samples/s: all frames of the run (× pixels per frame) / (first frame sent → final map received)\n"
                "ingest f/s: all frames / (first frame sent → the daemon has accepted the last one; its final maps not included)\n"
                "latency: frame handed to ZeroMQ by the sender → arrival of the first maps/fractions publication whose\n"
                "  last_seq covers it. Unpaced rows: the sender outruns xanesd, so this is mostly time spent queued\n"
                "  behind earlier frames (ZeroMQ buffers + ingest queue). Paced rows: the sender offers a fixed rate\n"
                "  below capacity; frames/s there is the offered rate. cycles: the daemon's publish.cycles (map\n"
                "  publications, including the final one of each scan). See bench/README.md. Total run time %.0f s.\n",
                seconds(Clock::now() - t_start));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ingest: %s\n", e.what());
    return 1;
  }
}
