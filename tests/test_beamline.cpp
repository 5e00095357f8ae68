// Beamline workflows against a real daemon on loopback: switching edges between scans (start
// names its references; load_references between scans is for the next scan), and the result
// file a scientist reopens later (references used, units, errors, default plot, version,
// scan_id reuse). The Fe L-edge spectra are the synthetic ones of tests/data/references.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "live_daemon.hpp"
#include "science/references.hpp"
#include "store/h5.hpp"
#include "store/journal.hpp"

using namespace xanesd;
using namespace xanesd::test;
namespace fs = std::filesystem;

namespace {

fs::path l_edge(const std::string& which) { return source_dir() / "tests" / "data" / "references" / (which + "_od_synthetic.txt"); }

constexpr int R = 6, C = 8;

// A transmission scan across the Fe L3/L2 edges: Fe(II) fraction col/(C−1), 0.5 OD-units
// thick, on 0.2 OD of other matter; noise-free counts I0·exp(−OD).
std::vector<double> l_plan() {
  std::vector<double> e;
  for (double x = 700; x <= 730.01; x += 1.0) e.push_back(x);
  return e;
}

void send_l_scan(LiveDaemon& d, const std::string& id, const std::vector<std::string>& references) {
  const auto fe2 = science::load_reference_file(l_edge("feii"), science::NormalizeMode::never)[0];
  const auto fe3 = science::load_reference_file(l_edge("feiii"), science::NormalizeMode::never)[0];
  protocol::StartMsg s;
  s.scan_id = id, s.rows = R, s.cols = C, s.mode = protocol::Mode::transmission;
  s.energies_eV = l_plan();
  s.references = references;
  d.send(std::move(s).to_wire());
  const auto plan = l_plan();
  for (std::size_t e = 0; e < plan.size(); ++e) {
    const double a = science::interpolate(fe2.energies_eV, fe2.mu, plan[e]), b = science::interpolate(fe3.energies_eV, fe3.mu, plan[e]);
    std::vector<float> counts(R * C);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        const double f = static_cast<double>(c) / (C - 1);
        counts[static_cast<std::size_t>(r * C + c)] = static_cast<float>(1e5 * std::exp(-(0.2 + 0.5 * (f * a + (1 - f) * b))));
      }
    protocol::FrameMsg f;
    f.scan_id = id, f.seq = static_cast<std::int64_t>(e), f.energy_index = static_cast<int>(e), f.energy_eV = plan[e];
    f.i0_scalar = 1e5;
    f.counts = protocol::Array::from<float>("counts", counts, {R, C});
    d.send(std::move(f).to_wire());
  }
  protocol::StopMsg stop;
  stop.scan_id = id, stop.frames_sent = static_cast<std::int64_t>(plan.size());
  d.send(std::move(stop).to_wire());
}

// The Fe(II) fraction map of a result file against the truth col/(C−1).
double worst_fe2_error(const fs::path& file) {
  auto f = h5::open_file(file);
  const auto names = h5::read_strings(f, "entry/results/reference_names");
  const auto fr = h5::read<float>(f, "entry/results/fractions");
  const auto k = static_cast<std::size_t>(std::find(names.begin(), names.end(), "FeII_L") - names.begin());
  REQUIRE(k < names.size());
  double worst = 0;
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      worst = std::max(worst, std::abs(fr[k * R * C + static_cast<std::size_t>(r * C + c)] - static_cast<double>(c) / (C - 1)));
  return worst;
}

// Sends a start of scan `id` naming `references`; returns the errors-topic message it gets.
nlohmann::json start_error(LiveDaemon& d, const std::string& id, const std::vector<std::string>& references) {
  while (test::recv_message(d.sub, 50ms)) {  // what came before
  }
  protocol::StartMsg s = start(id);
  s.references = references;
  d.send(std::move(s).to_wire());
  return d.next_error();
}

}  // namespace

TEST_CASE("start names its references: an Fe L-edge scan in OD is fitted with files named at start, defaults otherwise") {
  LiveDaemon d("beamline-start-refs");  // loaded: the Fe K library
  send_l_scan(d, "l-files", {l_edge("feii").string(), l_edge("feiii").string()});
  const auto st = d.wait_stopped("l-files");
  REQUIRE(st.value("state", "") == "stopped");
  CHECK(st.at("references") == nlohmann::json::array({"FeII_L", "FeIII_L"}));  // the start's set is now the loaded set
  CHECK(st.at("scan").at("fit").value("error", "x").empty());
  CHECK(worst_fe2_error(d.dir / "l-files.h5") < 0.03);

  // The result file: the config names the files actually used, the reference spectra are in it.
  auto f = h5::open_file(d.dir / "l-files.h5");
  const auto config = nlohmann::json::parse(h5::read_string(f, "entry/config"));
  CHECK(config.at("references.files") == nlohmann::json::array({l_edge("feii").string(), l_edge("feiii").string()}));
  CHECK(h5::read_strings(f, "entry/references/names") == std::vector<std::string>{"FeII_L", "FeIII_L"});
  CHECK(h5::read_string(f, "entry/references/FeII_L/normalization").rfind("pre-edge line subtracted", 0) == 0);
  CHECK(h5::read<double>(f, "entry/references/FeII_L/energy").size() == 151);

  // A name of the start-up library and a name that is nothing: the second scan is recorded, not
  // fitted, and says why on the errors topic.
  auto err = start_error(d, "k-named", {"no-such-reference"});
  REQUIRE(err.is_object());
  CHECK(err.value("code", "") == "references_unusable");
  CHECK(err.value("message", "").find("no-such-reference") != std::string::npos);
  CHECK(d.control({{"cmd", "abort"}}).value("ok", false));
  {  // recorded, not fitted: the file's default plot falls back to the mean signal
    auto k_file = h5::open_file(d.dir / "k-named.h5");
    auto entry = h5::open_group(k_file, "entry");
    CHECK(h5::read_attr_string(entry, "default") == "signal_mean");
    CHECK(h5::shape(entry, "signal_mean/signal_mean") == std::vector<hsize_t>{kRows, kCols});
    CHECK(h5::read_string(entry, "results/fit_error").find("no-such-reference") != std::string::npos);
  }
  protocol::StartMsg g = start("k-goethite");
  g.references = {"Goethite", "Magnetite"};  // names from the start-up library (the loaded set is the L-edge one now)
  d.send(std::move(g).to_wire());
  for (int e = 0; e < kE; ++e) d.send(frame("k-goethite", e, e, 100.f + 50.f * static_cast<float>(e > 3)).to_wire());
  protocol::StopMsg stop;
  stop.scan_id = "k-goethite", stop.frames_sent = kE;
  d.send(std::move(stop).to_wire());
  const auto st2 = d.wait_stopped("k-goethite");
  CHECK(st2.at("references") == nlohmann::json::array({"Goethite", "Magnetite"}));
  CHECK(st2.at("scan").at("fit").value("error", "x").empty());
}

TEST_CASE("load_references between scans is for the next scan: a new edge is not refused by the last scan's energies") {
  LiveDaemon d("beamline-next-scan");
  REQUIRE(d.serves_a_valid_scan("k-edge"));
  const auto reply = d.control({{"cmd", "load_references"}, {"files", {l_edge("feii").string(), l_edge("feiii").string()}}});
  REQUIRE(reply.value("ok", false));
  CHECK_FALSE(reply.value("refitted", true));
  CHECK(reply.value("note", "").find("next scan") != std::string::npos);
  CHECK(reply.at("normalization").at("FeII_L").get<std::string>().rfind("pre-edge line subtracted", 0) == 0);
  // The K-edge scan keeps its fit and its file; the L-edge scan that follows is fitted.
  CHECK(h5::read_strings(h5::open_file(d.dir / "k-edge.h5"), "entry/results/reference_names").size() > 2);
  send_l_scan(d, "l-next", {});
  REQUIRE(d.wait_stopped("l-next").value("state", "") == "stopped");
  CHECK(worst_fe2_error(d.dir / "l-next.h5") < 0.03);
  // While a scan runs, references that do not cover it are still refused.
  d.send(start("k-running").to_wire());
  std::this_thread::sleep_for(200ms);
  CHECK(d.control({{"cmd", "load_references"}, {"files", {fe_library().string()}}, {"names", {"Goethite"}}}).value("ok", false));
  const auto refused = d.control({{"cmd", "load_references"}, {"files", {l_edge("feii").string()}}});
  CHECK_FALSE(refused.value("ok", true));
  CHECK(refused.value("error", "").find("covers") != std::string::npos);
}

TEST_CASE("result files: units on every numeric dataset, NeXus errors, one NXdata per reference as the default plot, version") {
  LiveDaemon d("beamline-result-file");
  send_l_scan(d, "rf", {l_edge("feii").string(), l_edge("feiii").string()});
  REQUIRE(d.wait_stopped("rf").value("state", "") == "stopped");
  auto f = h5::open_file(d.dir / "rf.h5");
  CHECK(h5::read_attr_string(f, "default") == "entry");
  auto entry = h5::open_group(f, "entry");
  const auto def = h5::read_attr_string(entry, "default");
  CHECK(def == "fraction_FeII_L");
  auto plot = h5::open_group(entry, def);
  CHECK(h5::read_attr_string(plot, "NX_class") == "NXdata");
  CHECK(h5::read_attr_string(plot, "signal") == "fraction");
  CHECK(h5::shape(plot, "fraction") == std::vector<hsize_t>{R, C});
  CHECK(h5::shape(plot, "fraction_errors") == std::vector<hsize_t>{R, C});
  CHECK(h5::exists(entry, "fraction_FeIII_L"));
  CHECK(h5::read<float>(plot, "y").size() == R);  // the pixel axes, linked
  // fraction_sigma is also fractions_errors (same data), the 3-D stack has a reference axis.
  CHECK(h5::read<float>(f, "entry/results/fractions_errors") == h5::read<float>(f, "entry/results/fraction_sigma"));
  CHECK(h5::read<std::int32_t>(f, "entry/results/reference_index") == std::vector<std::int32_t>{0, 1});
  // Each reference's maps are its planes of the stacks (virtual datasets: stored once).
  {
    const auto fractions = h5::read<float>(f, "entry/results/fractions");
    const auto sigma = h5::read<float>(f, "entry/results/fraction_sigma");
    const auto P = static_cast<std::ptrdiff_t>(R * C);
    CHECK(h5::read<float>(plot, "fraction") == std::vector<float>(fractions.begin(), fractions.begin() + P));
    CHECK(h5::read<float>(entry, "fraction_FeIII_L/fraction") == std::vector<float>(fractions.begin() + P, fractions.end()));
    CHECK(h5::read<float>(entry, "fraction_FeIII_L/fraction_errors") == std::vector<float>(sigma.begin() + P, sigma.end()));
  }
  {
    h5::Handle prog(H5Dopen2(entry, "program_name", H5P_DEFAULT), H5Dclose, "open");
    CHECK(h5::read_attr_string(prog, "version").rfind("0.", 0) == 0);
  }
  CHECK(h5::read_string(entry, "start_time").size() == 20);
  // Every numeric dataset states its units.
  std::vector<std::string> missing;
  std::function<void(hid_t, const std::string&)> walk = [&](hid_t g, const std::string& path) {
    for (const auto& name : h5::list(g)) {
      h5::Handle obj(H5Oopen(g, name.c_str(), H5P_DEFAULT), H5Oclose, "open " + name);
      if (H5Iget_type(obj) == H5I_GROUP) {
        auto sub = h5::open_group(g, name);
        walk(sub, path + "/" + name);
      } else if (H5Iget_type(obj) == H5I_DATASET) {
        h5::Handle ds(H5Dopen2(g, name.c_str(), H5P_DEFAULT), H5Dclose, "open");
        h5::Handle type(H5Dget_type(ds), H5Tclose, "type");
        const auto cls = H5Tget_class(type);
        if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && !h5::has_attr(ds, "units")) missing.push_back(path + "/" + name);
      }
    }
  };
  walk(f, "");
  CHECK_MESSAGE(missing.empty(), "numeric datasets without units: " << nlohmann::json(missing).dump());
}

TEST_CASE("a reused scan_id does not overwrite the earlier scan's file: the new one is <id>-2.h5, and says so") {
  LiveDaemon d("beamline-reuse");
  REQUIRE(d.serves_a_valid_scan("same"));
  const auto first = fs::last_write_time(d.dir / "same.h5");
  while (test::recv_message(d.sub, 50ms)) {
  }
  REQUIRE(d.serves_a_valid_scan("same"));
  CHECK(fs::exists(d.dir / "same-2.h5"));
  CHECK(fs::last_write_time(d.dir / "same.h5") == first);
  CHECK(d.control({{"cmd", "status"}}).value("result_file", "").find("same-2.h5") != std::string::npos);
  CHECK(d.control({{"cmd", "status"}}).at("counters").value("issues.scan_id_reused", 0) == 1);
}

TEST_CASE("output.reused_scan_id=refuse: a start with a used scan_id is rejected, named and counted; nothing is recorded") {
  LiveDaemon d("beamline-refuse", {"output.reused_scan_id=refuse"});
  REQUIRE(d.serves_a_valid_scan("same"));
  const auto first = fs::last_write_time(d.dir / "same.h5");
  while (test::recv_message(d.sub, 50ms)) {
  }
  d.send(start("same").to_wire());
  const auto err = d.next_error();
  REQUIRE(err.is_object());
  CHECK(err.value("code", "") == "scan_id_exists");
  CHECK(err.value("message", "").find("same.h5 exists already") != std::string::npos);
  const auto st = d.control({{"cmd", "status"}});
  CHECK(st.at("counters").value("issues.scan_id_exists", 0) == 1);
  CHECK(st.at("counters").value("ingest.rejected.start", 0) == 1);
  CHECK(st.at("counters").value("scans.started", 0) == 1);
  CHECK(fs::last_write_time(d.dir / "same.h5") == first);
  CHECK_FALSE(fs::exists(d.dir / "same-2.h5"));
  REQUIRE(d.serves_a_valid_scan("other"));  // a new scan_id is served as before
}

TEST_CASE("start names a library of references.libraries (a folder or files); one that does not cover the scan is told at start") {
  const auto lib = scratch("beamline-libraries-folder");
  fs::copy_file(l_edge("feii"), lib / "feii.txt", fs::copy_options::overwrite_existing);
  fs::copy_file(l_edge("feiii"), lib / "feiii.txt", fs::copy_options::overwrite_existing);
  const nlohmann::json libraries = {{"fe-l", lib.string()},
                                    {"fe-l-files", {l_edge("feii").string(), l_edge("feiii").string()}},
                                    {"gone", "/no/such/library"}};
  LiveDaemon d("beamline-libraries", {"references.libraries=" + libraries.dump()});
  send_l_scan(d, "l-folder", {"fe-l"});
  const auto st = d.wait_stopped("l-folder");
  REQUIRE(st.value("state", "") == "stopped");
  CHECK(st.at("references") == nlohmann::json::array({"FeII_L", "FeIII_L"}));
  CHECK(st.at("scan").at("fit").value("error", "x").empty());
  CHECK(worst_fe2_error(d.dir / "l-folder.h5") < 0.03);
  send_l_scan(d, "l-files", {"fe-l-files"});
  REQUIRE(d.wait_stopped("l-files").value("state", "") == "stopped");
  CHECK(worst_fe2_error(d.dir / "l-files.h5") < 0.03);

  // At the Fe K edge the L-edge library covers nothing: the scan is told at start, recorded, not fitted.
  auto err = start_error(d, "k-with-l", {"fe-l"});
  REQUIRE(err.is_object());
  CHECK(err.value("code", "") == "references_unusable");
  CHECK(err.value("scan_id", "") == "k-with-l");
  CHECK(d.control({{"cmd", "abort"}}).value("ok", false));
  // A library whose folder is gone is named in the error.
  err = start_error(d, "k-gone", {"gone"});
  REQUIRE(err.is_object());
  CHECK(err.value("code", "") == "references_unusable");
  CHECK(err.value("message", "").find("reference library 'gone'") != std::string::npos);
}

#include "process.hpp"
#include "simulate/simulate.hpp"

TEST_CASE("xanes-replay with no daemon listening exits with a clear error instead of hanging") {
  const auto dir = scratch("beamline-replay-timeout");
  sim::Params p;
  p.rows = 4, p.cols = 5;
  p.energies_eV = {7100, 7110, 7120, 7130, 7140};
  std::vector<science::Reference> refs;
  for (const auto& r : science::load_reference_file(fe_library()))
    if (r.name == "Goethite") refs.push_back(r);
  sim::write_scan_file(sim::simulate(refs, p), dir / "scan.h5");
  const auto endpoint = loopback(free_port());  // nothing listens there
  Process replay({XANES_REPLAY_BIN, "--input", (dir / "scan.h5").string(), "--endpoint", endpoint, "--timeout", "1"},
                 (dir / "replay.log").string());
  const auto code = replay.wait(20s);
  REQUIRE(code.has_value());
  CHECK(*code == 1);
  std::ifstream log(dir / "replay.log");
  const std::string text{std::istreambuf_iterator<char>(log), {}};
  CHECK(text.find("no xanesd took a message at " + endpoint) != std::string::npos);
}

namespace {

// Scan `id` of the small test shape: start, one frame per energy (an edge at the fifth), and stop.
void send_scan(LiveDaemon& d, const std::string& id) {
  d.send(start(id).to_wire());
  for (int e = 0; e < kE; ++e) d.send(frame(id, e, e, e < 5 ? 100.f : 300.f + 10.f * static_cast<float>(e)).to_wire());
  protocol::StopMsg stop;
  stop.scan_id = id, stop.frames_sent = kE;
  d.send(std::move(stop).to_wire());
}

std::vector<float> fractions_of(const fs::path& file) {
  auto f = h5::open_file(file);
  return h5::read<float>(h5::open_group(f, "entry/results"), "fractions");
}

}  // namespace

TEST_CASE("scan after scan: the next scan starts beside the last one's final maps and file, both files as if run in turn") {
  LiveDaemon d("beamline-beside");
  // Sent back to back: the second start is queued while the first scan's stop is handled.
  send_scan(d, "first");
  send_scan(d, "second");
  const auto st = d.wait_stopped("second", 2);
  REQUIRE(st.value("state", "") == "stopped");
  CHECK(st.at("scan").value("frames_applied", 0) == kE);
  CHECK(st.at("counters").value("scans.started_beside_finish", 0) == 1);
  CHECK(st.at("counters").value("results.files_written", 0) == 2);
  REQUIRE(fs::exists(d.dir / "first.h5"));
  // The status topic told the first scan's end with its file, though a newer scan was running.
  bool told = false;
  while (auto m = test::recv_message(d.sub, 100ms))
    if (m->topic == "status" && m->header.value("scan_id", "") == "first" && m->header.value("state", "") == "stopped")
      told = told || m->header.value("result_file", "").ends_with("first.h5");
  CHECK(told);
  // The first scan alone (nothing after it) gives the same maps, bit for bit.
  send_scan(d, "alone");
  REQUIRE(d.wait_stopped("alone", 3).value("state", "") == "stopped");
  CHECK(d.control({{"cmd", "status"}}).at("counters").value("scans.started_beside_finish", 0) == 1);
  const auto first = fractions_of(d.dir / "first.h5");
  CHECK(!first.empty());
  CHECK(first == fractions_of(d.dir / "alone.h5"));
  CHECK(fractions_of(d.dir / "second.h5") == first);
  // The finished scan's journal went once its file was written.
  CHECK_FALSE(fs::exists(d.dir / ".journal" / "scan.journal.finishing"));

  // Scans above ingest.beside_finish_MiB together wait for the finish: the same files.
  LiveDaemon waits("beamline-beside-off", {"ingest.beside_finish_MiB=0"});
  send_scan(waits, "first");
  send_scan(waits, "second");
  const auto off = waits.wait_stopped("second", 2);
  REQUIRE(off.value("state", "") == "stopped");
  CHECK(off.at("counters").value("scans.started_beside_finish", 0) == 0);  // counted from the first
  CHECK(fractions_of(waits.dir / "first.h5") == first);
  CHECK(fractions_of(waits.dir / "second.h5") == first);
}

TEST_CASE("a new scan's journal and the finished one's removal go through the writer thread, in order with the records") {
  // begin, stop and release_finishing return without waiting for the file (the writer does the
  // syncs and renames); what ends on the disk is what writing on the caller's thread leaves.
  auto journal_files = [](const std::string& name, std::size_t queue_bytes) {
    const auto dir = scratch(name);
    {
      Journal j({true, dir, 0, queue_bytes});
      j.begin(start("finishing"));
      for (int e = 0; e < kE; ++e) j.append(frame("finishing", e, e));
      protocol::StopMsg stop;
      stop.scan_id = "finishing", stop.frames_sent = kE;
      j.append(stop);
      j.begin(start("running"), true);  // the finishing scan's journal kept beside
      for (int e = 0; e < 3; ++e) j.append(frame("running", e, e));
      j.release_finishing();  // its file is written: its journal goes, after the begin that kept it
      j.append(frame("running", 3, 3));
      j.drain();
      const auto st = j.stats();
      CHECK(st.value("scan_id", "") == "running");
      CHECK(st.value("frames", 0) == 4);
      CHECK(st.value("last_seq", -1) == 3);
    }
    CHECK_FALSE(std::filesystem::exists(dir / "scan.journal.finishing"));
    CHECK_FALSE(std::filesystem::exists(dir / "scan.journal.new"));
    std::ifstream in(dir / "scan.journal", std::ios::binary);
    return std::pair{std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()), dir};
  };
  const auto [threaded, threaded_dir] = journal_files("beamline-journal-order-threaded", 256u << 20);
  const auto direct = journal_files("beamline-journal-order-direct", 0).first;
  REQUIRE(!threaded.empty());
  CHECK(threaded == direct);
  // The running scan's journal holds its start and its 4 frames, nothing of the finished scan.
  Journal replay({true, threaded_dir, 0, 0});
  std::vector<std::string> topics;
  replay.recover([&](std::vector<zmq::message_t>&& parts) { topics.push_back(parts.at(0).to_string()); });
  REQUIRE(topics.size() == 5);
  CHECK(topics.front() != topics.back());  // a start, then frames
}

TEST_CASE("a crash while the last scan's file is written beside the next scan: restart writes that file and resumes the next scan") {
  // The journals a daemon leaves when killed at that moment: the finishing scan's (start,
  // frames, stop) kept beside the running scan's (start, frames so far).
  const auto journal_dir = scratch("beamline-beside-crash-journal");
  {
    Journal j({true, journal_dir, -1, 0});
    j.begin(start("finishing"));
    for (int e = 0; e < kE; ++e) j.append(frame("finishing", e, e, e < 5 ? 100.f : 300.f));
    protocol::StopMsg stop;
    stop.scan_id = "finishing", stop.frames_sent = kE;
    j.append(stop);
    j.begin(start("running"), true);
    for (int e = 0; e < 3; ++e) j.append(frame("running", e, e));
  }  // no release_finishing: the process died first
  REQUIRE(fs::exists(journal_dir / "scan.journal.finishing"));
  LiveDaemon d("beamline-beside-crash", {"journal.directory=" + journal_dir.string()});
  const auto st = d.control({{"cmd", "status"}});
  CHECK(st.value("state", "") == "running");
  CHECK(st.at("scan").value("scan_id", "") == "running");
  CHECK(st.at("scan").value("frames_applied", 0) == 3);
  CHECK(st.at("journal").value("last_seq", -1) == 2);  // the sender resumes after it
  CHECK(st.at("recovery").value("frames", 0) == kE + 3);
  REQUIRE(fs::exists(d.dir / "finishing.h5"));
  {
    auto f = h5::open_file(d.dir / "finishing.h5");
    const auto saved = nlohmann::json::parse(h5::read_string(f, "entry/status"));
    CHECK(saved.at("scan").value("scan_id", "") == "finishing");
    CHECK(saved.at("scan").value("frames_applied", 0) == kE);
    CHECK(saved.at("scan").value("state", "") == "stopped");
  }
  CHECK_FALSE(fractions_of(d.dir / "finishing.h5").empty());
  CHECK_FALSE(fs::exists(journal_dir / "scan.journal.finishing"));
  for (int e = 3; e < kE; ++e) d.send(frame("running", e, e).to_wire());
  protocol::StopMsg stop;
  stop.scan_id = "running", stop.frames_sent = kE;
  d.send(std::move(stop).to_wire());
  CHECK(d.wait_stopped("running").at("scan").value("frames_applied", 0) == kE);
}
