// End to end, as at the beamline: the real xanesd binary with the shipped default config, the
// real xanes-replay playing a 155×160 × 73-energy fluorescence scan built from the shipped Fe
// references (Poisson noise, I0 drift, background), a SUB client watching the live maps, and
// the result file read back with HDF5. Checked against the truth the test built.
#include <doctest/doctest.h>

#include <fstream>
#include <numeric>
#include <map>
#include <thread>

#include "daemon_process.hpp"
#include "science/segmentation.hpp"
#include "simulate/simulate.hpp"
#include "store/h5.hpp"
#include "support.hpp"
#include "xanesd/protocol/products.hpp"

using namespace xanesd;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> kSpecies = {"Magnetite", "Goethite", "Pyrite"};

struct Truth {
  sim::Scan scan;
  std::filesystem::path file;
};

Truth make_scan(const std::filesystem::path& dir, protocol::Mode mode, double counts) {
  std::vector<science::Reference> refs;
  for (const auto& r : science::load_reference_file(test::fe_library()))
    if (std::find(kSpecies.begin(), kSpecies.end(), r.name) != kSpecies.end()) refs.push_back(r);
  sim::Params p;
  p.rows = 155, p.cols = 160;
  p.energies_eV = sim::read_energies_file(test::hxn_energies());
  p.mode = mode;
  p.counts = counts;
  p.dark = mode == protocol::Mode::transmission ? 5.0 : 0.0;
    p.seed = 2026;
  std::filesystem::create_directories(dir / "input");
  Truth t{sim::simulate(refs, p), dir / "input" / (mode == protocol::Mode::fluorescence ? "fluo.h5" : "trans.h5")};
  sim::write_scan_file(t.scan, t.file);
  return t;
}

struct Accuracy {
  double fraction_mae = 0, fraction_p95 = 0, thickness_median_rel = 0;
};

// Compares fraction maps (K×P, in kSpecies order) and thickness with the truth over material pixels.
Accuracy compare(const std::vector<float>& fractions, const std::vector<float>& thickness, const sim::Scan& truth) {
  const std::size_t P = truth.pixels(), K = kSpecies.size();
  std::vector<double> ferr, terr;
  for (std::size_t p = 0; p < P; ++p) {
    if (truth.thickness[p] <= 0) continue;
    for (std::size_t k = 0; k < K; ++k) ferr.push_back(std::abs(fractions[k * P + p] - truth.fractions[k * P + p]));
    terr.push_back(std::abs(thickness[p] - truth.thickness[p]) / truth.thickness[p]);
  }
  Accuracy a;
  for (double e : ferr) a.fraction_mae += e;
  a.fraction_mae /= static_cast<double>(ferr.size());
  std::sort(ferr.begin(), ferr.end());
  a.fraction_p95 = ferr[ferr.size() * 95 / 100];
  std::nth_element(terr.begin(), terr.begin() + static_cast<long>(terr.size() / 2), terr.end());
  a.thickness_median_rel = terr[terr.size() / 2];
  return a;
}

using Daemon = test::DaemonProcess;
using test::control_retry;

int replay(const std::filesystem::path& file, const std::string& endpoint, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {XANES_REPLAY_BIN, "--input", file.string(), "--endpoint", endpoint};
  argv.insert(argv.end(), extra.begin(), extra.end());
  test::Process p(argv);
  return p.wait(120s).value_or(-1);
}

}  // namespace

TEST_CASE("live fluorescence scan: maps on the PUB socket while it runs, result file at stop") {
  const auto dir = test::scratch("e2e-fluorescence");
  const auto truth = make_scan(dir, protocol::Mode::fluorescence, 2000);
  Daemon d(dir);
  zmq::context_t ctx(1);
  REQUIRE(control_retry(ctx, d.control, {{"cmd", "status"}}).value("state", "") == "idle");
  // Fit the three species present (load_references over the control socket, by name).
  const auto loaded = control_retry(ctx, d.control,
                                    {{"cmd", "load_references"},
                                     {"files", {test::fe_library().string()}},
                                     {"names", kSpecies}});
  REQUIRE(loaded.value("ok", false));
  CHECK(loaded.at("reference_names") == nlohmann::json(kSpecies));

  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "maps/");
  sub.set(zmq::sockopt::subscribe, "clusters");
  sub.set(zmq::sockopt::subscribe, "status");
  sub.set(zmq::sockopt::rcvhwm, 0);
  sub.connect(d.pub);
  std::this_thread::sleep_for(300ms);

  // Replay at a beamline-like pace so several publication cycles happen mid-scan.
  std::thread player([&] { CHECK(replay(truth.file, d.ingest, {"--rate", "60", "--scan-id", "fluo"}) == 0); });
  std::map<std::string, std::int64_t> last_version;
  std::vector<int> energies_at_publication;
  std::optional<protocol::WireMessage> final_fractions, final_thickness, final_segments, final_clusters;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while ((!final_fractions || !final_thickness || !final_segments || !final_clusters) && std::chrono::steady_clock::now() < until) {
    auto m = test::recv_message(sub, 500ms);
    if (!m || m->header.value("scan_id", "") != "fluo") continue;
    // Every publication keeps the typed contract (xanesd/protocol/products.hpp).
    CHECK_NOTHROW(protocol::parse_product(test::copy_of(*m)));
    const auto v = m->header.at("version").get<std::int64_t>();
    CHECK(v >= last_version[m->topic]);  // versions never go back
    last_version[m->topic] = v;
    if (m->topic == "maps/fractions") {
      energies_at_publication.push_back(m->header.at("energies_measured").get<int>());
      CHECK(m->header.at("reference_names") == nlohmann::json(kSpecies));
      if (m->header.at("final").get<bool>()) final_fractions = std::move(m);
    } else if (m->topic == "maps/thickness" && m->header.at("final").get<bool>()) {
      final_thickness = std::move(m);
    } else if (m->topic == "maps/segments" && m->header.at("final").get<bool>()) {
      final_segments = std::move(m);
    } else if (m->topic == "clusters" && m->header.at("final").get<bool>()) {
      final_clusters = std::move(m);
    }
  }
  player.join();
  REQUIRE(final_fractions);
  REQUIRE(final_thickness);
  // Live: maps were published before the last energy arrived.
  REQUIRE(energies_at_publication.size() >= 3);
  CHECK(energies_at_publication.front() < 73);
  CHECK(energies_at_publication.back() == 73);

  const auto* fa = final_fractions->find("fractions");
  REQUIRE(fa);
  CHECK(fa->shape() == std::vector<std::int64_t>{3, 155, 160});
  std::vector<float> fractions(fa->size()), thickness(155 * 160);
  fa->convert_to(std::span<float>(fractions));
  final_thickness->find("thickness")->convert_to(std::span<float>(thickness));
  const auto acc = compare(fractions, thickness, truth.scan);
  MESSAGE("fluorescence 2000 counts: fraction MAE " << acc.fraction_mae << ", p95 " << acc.fraction_p95
                                                    << ", thickness median rel. error " << acc.thickness_median_rel);
  CHECK(acc.fraction_mae < 0.03);
  CHECK(acc.fraction_p95 < 0.10);
  CHECK(acc.thickness_median_rel < 0.03);

  // Segmentation, live: the label map and the clusters' spectra and fits, in the same final cycle.
  REQUIRE(final_segments);
  REQUIRE(final_clusters);
  CHECK(final_segments->header.at("version") == final_fractions->header.at("version"));
  const auto* seg_array = final_segments->find("segments");
  REQUIRE(seg_array);
  CHECK(seg_array->shape() == std::vector<std::int64_t>{155, 160});
  const auto ids = final_clusters->header.at("cluster_ids").get<std::vector<int>>();
  CHECK(final_segments->header.at("cluster_ids").get<std::vector<int>>() == ids);
  CHECK(ids.size() >= 3);  // pure species 0, pure species 1, their 50/50 mixture, a gradient
  const auto* means = final_clusters->find("mean_spectra");
  REQUIRE(means);
  CHECK(means->shape() == std::vector<std::int64_t>{static_cast<std::int64_t>(ids.size()), 73});
  for (const auto& f : final_clusters->header.at("fractions")) {
    double sum = 0;
    for (const auto& v : f) sum += v.get<double>();
    CHECK(sum == doctest::Approx(1.0).epsilon(1e-6));
  }
  CHECK(final_clusters->header.at("pca").at("target_transformation").at("residual").size() == 3);

  // The result file: NeXus structure, and the same maps as the final publication.
  const auto path = dir / "results" / "fluo.h5";
  REQUIRE(test::wait_for_file(path));
  auto f = h5::open_file(path);
  CHECK(h5::read_attr_string(h5::open_group(f, "entry"), "NX_class") == "NXentry");
  auto results = h5::open_group(f, "entry/results");
  CHECK(h5::read_attr_string(results, "NX_class") == "NXdata");
  CHECK(h5::read_attr_string(results, "signal") == "fractions");
  CHECK(h5::read_strings(results, "reference_names") == kSpecies);
  CHECK(h5::read<double>(f, "entry/energy").size() == 73);
  std::vector<hsize_t> dims;
  CHECK(h5::read<float>(results, "fractions", &dims) == fractions);
  CHECK(dims == std::vector<hsize_t>{3, 155, 160});
  CHECK(h5::read<float>(results, "thickness") == thickness);
  CHECK(h5::shape(results, "residual") == std::vector<hsize_t>{155, 160});
  const auto config = nlohmann::json::parse(h5::read_string(f, "entry/config"));
  CHECK(config.at("fit.method") == "nnls");
  {
    std::vector<std::uint8_t> published(155 * 160);
    for (std::size_t i = 0; i < published.size(); ++i) published[i] = static_cast<std::uint8_t>(seg_array->at(i));
    CHECK(h5::read<std::uint8_t>(f, "entry/results/segments/segments") == published);
    CHECK(h5::read<std::int32_t>(f, "entry/results/segments/cluster_ids") == std::vector<std::int32_t>(ids.begin(), ids.end()));
  }

  // Batch mode reprocesses the same file with the same code: the same maps.
  {
    const auto batch_out = dir / "batch" / "fluo.h5";
    std::filesystem::create_directories(batch_out.parent_path());
    test::Process fit({XANESD_BIN, "fit", "--input", truth.file.string(), "--refs", test::fe_library().string(), "--names",
                       "Magnetite,Goethite,Pyrite", "--out", batch_out.string(), "--set", "log.level=warn"},
                      (dir / "batch.log").string());
    REQUIRE(fit.wait(60s) == 0);
    auto bf = h5::open_file(batch_out);
    const auto batch_fractions = h5::read<float>(bf, "entry/results/fractions");
    REQUIRE(batch_fractions.size() == fractions.size());
    double maxdiff = 0;
    for (std::size_t i = 0; i < fractions.size(); ++i)
      maxdiff = std::max(maxdiff, static_cast<double>(std::abs(batch_fractions[i] - fractions[i])));
    CHECK(maxdiff < 1e-5);
    CHECK(h5::read_strings(bf, "entry/results/reference_names") == kSpecies);
  }

  // Pixel-major arrival gives the same maps (a second scan on the same daemon).
  REQUIRE(replay(truth.file, d.ingest, {"--order", "pixel-major", "--scan-id", "fluo-pm"}) == 0);
  const auto pm_path = dir / "results" / "fluo-pm.h5";
  REQUIRE(test::wait_for_file(pm_path));
  const auto pm = h5::read<float>(h5::open_file(pm_path), "entry/results/fractions");
  REQUIRE(pm.size() == fractions.size());
  double maxdiff = 0;
  for (std::size_t i = 0; i < pm.size(); ++i) maxdiff = std::max(maxdiff, static_cast<double>(std::abs(pm[i] - fractions[i])));
  CHECK(maxdiff < 1e-4);

  // So do spectra batches: 100 pixels × every energy in one message (a third scan).
  REQUIRE(replay(truth.file, d.ingest, {"--spectra", "--chunk-pixels", "100", "--scan-id", "fluo-sb"}) == 0);
  const auto sb_path = dir / "results" / "fluo-sb.h5";
  REQUIRE(test::wait_for_file(sb_path));
  {
    auto sb_file = h5::open_file(sb_path);
    const auto sb = h5::read<float>(sb_file, "entry/results/fractions");
    REQUIRE(sb.size() == fractions.size());
    maxdiff = 0;
    for (std::size_t i = 0; i < sb.size(); ++i) maxdiff = std::max(maxdiff, static_cast<double>(std::abs(sb[i] - fractions[i])));
    CHECK(maxdiff < 1e-4);
    // Every sample of every batch stored: the spectra equal the pixel-major scan's.
    CHECK(h5::read<float>(sb_file, "entry/data/spectra") == h5::read<float>(h5::open_file(pm_path), "entry/data/spectra"));
  }

  // Late join: a snapshot from the control socket carries the latest publication of each topic.
  {
    auto frames = test::control_frames(ctx, d.control, {{"cmd", "snapshot"}});
    const auto head = nlohmann::json::parse(frames.at(0).to_string_view());
    REQUIRE(head.value("ok", false));
    std::map<std::string, protocol::WireMessage> latest;
    std::size_t i = 1;
    for (int n = 0; n < head.at("publications").get<int>(); ++n) {
      const auto header = protocol::decode_header(frames.at(i + 1).data(), frames.at(i + 1).size());
      const std::size_t parts = 2 + header.at("arrays").size();
      std::vector<zmq::message_t> one;
      for (std::size_t j = 0; j < parts; ++j) one.push_back(std::move(frames.at(i + j)));
      auto m = protocol::decode(std::move(one));
      CHECK_NOTHROW(protocol::parse_product(test::copy_of(m)));
      latest.emplace(m.topic, std::move(m));
      i += parts;
    }
    CHECK(i == frames.size());
    REQUIRE(latest.count("maps/fractions"));
    REQUIRE(latest.count("status"));
    CHECK(latest["maps/fractions"].header.at("scan_id") == "fluo-sb");
    CHECK(latest["maps/fractions"].header.at("final") == true);
    CHECK(latest["maps/fractions"].header.at("version") == head.at("version"));
  }

  CHECK(control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
  CHECK(d.proc->wait(60s) == 0);
}

TEST_CASE("transmission scan with flat and dark, replayed in row blocks") {
  const auto dir = test::scratch("e2e-transmission");
  const auto truth = make_scan(dir, protocol::Mode::transmission, 20000);
  Daemon d(dir);
  zmq::context_t ctx(1);
  REQUIRE(control_retry(ctx, d.control,
                        {{"cmd", "load_references"}, {"files", {test::fe_library().string()}}, {"names", kSpecies}})
              .value("ok", false));
  REQUIRE(replay(truth.file, d.ingest, {"--rows-per-frame", "40", "--scan-id", "trans"}) == 0);
  const auto path = dir / "results" / "trans.h5";
  REQUIRE(test::wait_for_file(path));
  auto f = h5::open_file(path);
  const auto acc = compare(h5::read<float>(f, "entry/results/fractions"), h5::read<float>(f, "entry/results/thickness"),
                           truth.scan);
  MESSAGE("transmission: fraction MAE " << acc.fraction_mae << ", p95 " << acc.fraction_p95
                                        << ", thickness median rel. error " << acc.thickness_median_rel);
  CHECK(acc.fraction_mae < 0.03);
  CHECK(acc.thickness_median_rel < 0.03);
  // Every frame was applied: 73 energies × 4 row blocks.
  const auto status = control_retry(ctx, d.control, {{"cmd", "status"}});
  CHECK(status.at("scan").at("frames_applied") == 73 * 4);
  CHECK(status.at("scan").at("missing_seq") == 0);
  d.proc->signal(SIGTERM);
  CHECK(d.proc->wait(60s) == 0);
}

TEST_CASE("xanesd refuses a bad config at start-up with a non-zero exit") {
  const auto dir = test::scratch("e2e-badconfig");
  test::Process p({XANESD_BIN, "--config", (test::source_dir() / "config" / "default.json").string(), "--set",
                   "fit.metod=nnls"},
                  (dir / "log.txt").string());
  CHECK(p.wait(10s) == 2);
  std::ifstream log(dir / "log.txt");
  std::string text((std::istreambuf_iterator<char>(log)), {});
  CHECK(text.find("fit.metod") != std::string::npos);
}

TEST_CASE("adaptive sub-spectra loop: full scan, select_energies, a scan at the selected energies fitted live") {
  const auto dir = test::scratch("e2e-adaptive");
  // A scan of domains of three species from the 11-reference library the daemon loads.
  std::vector<science::Reference> refs;
  for (const auto& r : science::load_reference_file(test::fe_library()))
    if (std::find(kSpecies.begin(), kSpecies.end(), r.name) != kSpecies.end()) refs.push_back(r);
  sim::Params p;
  p.rows = 64, p.cols = 64;
  p.energies_eV = sim::read_energies_file(test::hxn_energies());
  p.layout = sim::Params::Layout::domains;
  p.counts = 1000;
  p.seed = 7;
  const auto truth = sim::simulate(refs, p);
  std::filesystem::create_directories(dir / "input");
  const auto file = dir / "input" / "domains.h5";
  sim::write_scan_file(truth, file);

  // The domains layout's fixed compositions include pure Magnetite and 70 % of it with 30 %
  // Pyrite, one domain for the default automatic k (the same majority species drifting toward
  // one other); the ARI below scores the four compositions, so each k-means cluster is a domain.
  Daemon d(dir, {"--set", "segment.merge=false"});
  zmq::context_t ctx(1);
  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::subscribe, "energies");
  sub.connect(d.pub);
  REQUIRE(control_retry(ctx, d.control, {{"cmd", "status"}}).value("ok", false));

  // 1. The full spectrum: 73 energies, fitted with the whole library.
  REQUIRE(replay(file, d.ingest, {"--scan-id", "full"}) == 0);
  REQUIRE(test::wait_for_file(dir / "results" / "full.h5"));

  // 2. Energies for the references this sample uses; bad requests are answered, not fatal.
  CHECK_FALSE(control_retry(ctx, d.control, {{"cmd", "select_energies"}, {"n", 500}}).value("ok", true));
  CHECK_FALSE(control_retry(ctx, d.control, {{"cmd", "select_energies"}, {"source", "nonsense"}}).value("ok", true));
  // xanes-replay measures every energy of the file once (fixed counts): select for even dwell.
  const auto sel = control_retry(ctx, d.control, {{"cmd", "select_energies"}, {"source", "in_use"}, {"n", 13}, {"objective", "equal_dwell"}});
  INFO(sel.dump());
  REQUIRE(sel.value("ok", false));
  const auto energies = sel.at("energies_eV").get<std::vector<double>>();
  CHECK(energies.size() == 16);
  CHECK(std::is_sorted(energies.begin(), energies.end()));
  CHECK(sel.at("normalization_indices").size() == 3);
  CHECK(sel.at("reference_names").get<std::vector<std::string>>() == std::vector<std::string>{"Magnetite", "Goethite", "Pyrite"});
  CHECK(sel.at("noise_source") == "measured");
  MESSAGE("selected by " << sel.at("method").get<std::string>() << ": expected fraction RMSE "
                         << sel.at("expected_fraction_rmse").get<double>() << " vs full grid "
                         << sel.at("full_grid_fraction_rmse").get<double>() << ", noise " << sel.at("noise").get<double>());
  // The scan controller hears the list on the energies topic.
  const auto published = test::recv_message(sub, 60s);
  REQUIRE(published.has_value());
  CHECK(published->topic == "energies");
  CHECK(protocol::EnergiesProduct::from_wire(test::copy_of(*published)).energies_eV == energies);
  CHECK(published->header.at("scan_id") == "full");
  const auto& arr = published->arrays.at(0);
  REQUIRE(arr.size() == energies.size());
  for (std::size_t i = 0; i < energies.size(); ++i) CHECK(arr.at(i) == energies[i]);
  CHECK(sel.at("dwell_weights").get<std::vector<double>>() == std::vector<double>(16, 1.0));
  // The default objective: energies with dwell weights for the full scan's beam time.
  const auto timed = control_retry(ctx, d.control, {{"cmd", "select_energies"}, {"source", "in_use"}, {"n", 13}});
  INFO(timed.dump());
  REQUIRE(timed.value("ok", false));
  CHECK(timed.at("method") == "a_optimal_dwell");
  CHECK(timed.at("variance") == "poisson");
  CHECK(timed.at("expected_spectrum") == "scan mean");
  const auto w = timed.at("dwell_weights").get<std::vector<double>>();
  REQUIRE(w.size() == 16);
  CHECK(std::accumulate(w.begin(), w.end(), 0.0) == doctest::Approx(16.0));
  CHECK(timed.at("ratio_equal_time").get<double>() < 0.8);
  const auto republished = test::recv_message(sub, 60s);
  REQUIRE(republished.has_value());
  CHECK(republished->header.at("dwell_weights") == timed.at("dwell_weights"));
  const auto autos = control_retry(ctx, d.control, {{"cmd", "select_energies"}, {"source", "in_use"}, {"n", "auto"}});
  INFO(autos.dump());
  REQUIRE(autos.value("ok", false));
  CHECK(autos.at("n_auto") == true);
  CHECK(autos.at("n").get<int>() <= 13);
  CHECK_FALSE(control_retry(ctx, d.control, {{"cmd", "select_energies"}, {"n", "all"}}).value("ok", true));
  CHECK_FALSE(control_retry(ctx, d.control, {{"cmd", "select_energies"}, {"n", "auto"}, {"objective", "equal_dwell"}}).value("ok", true));

  auto accuracy = [&](const std::string& name, const std::vector<std::string>& order) {
    auto f = h5::open_file(dir / "results" / (name + ".h5"));
    const auto names = h5::read_strings(f, "entry/results/reference_names");
    const auto all = h5::read<float>(f, "entry/results/fractions");
    const std::size_t P = truth.pixels();
    std::vector<float> picked;
    for (const auto& n : order) {
      const auto k = static_cast<std::size_t>(std::find(names.begin(), names.end(), n) - names.begin());
      REQUIRE(k < names.size());
      picked.insert(picked.end(), all.begin() + static_cast<long>(k * P), all.begin() + static_cast<long>((k + 1) * P));
    }
    return compare(picked, h5::read<float>(f, "entry/results/thickness"), truth);
  };
  const auto full = accuracy("full", kSpecies);

  // 3. The sub-spectra scan: the selected references, 16 energies, the same live path.
  const auto loaded = control_retry(ctx, d.control, {{"cmd", "load_references"}, {"files", {test::fe_library().string()}},
                                                     {"names", sel.at("reference_names")}});
  REQUIRE(loaded.value("ok", false));
  // The finished scan is refitted with them, and its result file rewritten to match its maps.
  CHECK(h5::read_strings(h5::open_file(dir / "results" / "full.h5"), "entry/results/reference_names").size() == 3);
  std::string list;
  for (double e : energies) {
    if (!list.empty()) list += ',';
    list += std::to_string(e);
  }
  REQUIRE(replay(file, d.ingest, {"--scan-id", "sub", "--energies", list}) == 0);
  REQUIRE(test::wait_for_file(dir / "results" / "sub.h5"));

  const auto part = accuracy("sub", kSpecies);
  MESSAGE("fraction MAE: full 73-energy scan (11 references) " << full.fraction_mae << ", 16-energy scan (3 references) "
                                                              << part.fraction_mae);
  CHECK(h5::read<double>(h5::open_file(dir / "results" / "sub.h5"), "entry/energy").size() == 16);
  CHECK(part.fraction_mae < 0.05);
  // Segmentation works on the subset too.
  {
    auto f = h5::open_file(dir / "results" / "sub.h5");
    REQUIRE(h5::exists(f, "entry/results/segments/segments"));
    const auto labels = h5::read<std::uint8_t>(f, "entry/results/segments/segments");
    std::vector<int> a, b;
    for (std::size_t q = 0; q < truth.pixels(); ++q)
      if (truth.domains[q] > 0) a.push_back(labels[q]), b.push_back(truth.domains[q]);
    const double ari = science::adjusted_rand_index(a, b);
    MESSAGE("segmentation of the 16-energy scan: ARI " << ari);
    CHECK(ari > 0.9);
  }
  CHECK(control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
  CHECK(d.proc->wait(60s) == 0);
}
