// Crash-safe scans: the real xanesd binary killed with SIGKILL at random moments during one
// scan, restarted on the same ports and folders, the real xanes-replay resuming after the last
// acknowledged seq each time. No accepted frame may be lost, and the final result file must
// hold the same maps as an uninterrupted run of the same scan.
#include <doctest/doctest.h>

#include <fstream>
#include <random>
#include <thread>

#include "daemon_process.hpp"
#include "simulate/simulate.hpp"
#include "store/h5.hpp"

using namespace xanesd;
using namespace std::chrono_literals;

namespace {

// 32×32 px at the 73 HXN energies, sent as 4-row blocks: 584 frames (at 40 frames/s, 20 kills at most
// 0.7 s apart cannot reach the end of the scan).
std::filesystem::path make_scan(const std::filesystem::path& dir) {
  std::vector<science::Reference> refs;
  for (const auto& r : science::load_reference_file(test::fe_library()))
    if (r.name == "Magnetite" || r.name == "Goethite" || r.name == "Pyrite") refs.push_back(r);
  sim::Params p;
  p.rows = 32, p.cols = 32;
  p.energies_eV = sim::read_energies_file(test::hxn_energies());
  p.counts = 1000;
  p.seed = 12;
  const auto file = dir / "crash.h5";
  sim::write_scan_file(sim::simulate(refs, p), file);
  return file;
}

constexpr std::int64_t kFrames = 73 * 8;

// Deterministic maps whatever the timing: no live reference selection (its hysteresis depends
// on when the live cycles fell), frequent cycles so kills land between and inside them.
const std::vector<std::string> kSettings = {"--set", "references.select=false", "--set", "publish.interval_ms=50"};

std::vector<std::string> replay_args(const std::filesystem::path& file, const test::DaemonProcess& d, double rate) {
  return {XANES_REPLAY_BIN, "--input", file.string(), "--endpoint", d.ingest, "--scan-id", "crash",
          "--rows-per-frame", "4", "--rate", std::to_string(rate), "--resume", d.control};
}

// Status within `timeout`, or null (the daemon is starting, replaying its journal, or gone).
nlohmann::json quick_status(zmq::context_t& ctx, const std::string& ep, int timeout_ms) {
  zmq::socket_t s(ctx, zmq::socket_type::req);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, timeout_ms);
  s.connect(ep);
  s.send(zmq::buffer(std::string(R"({"cmd":"status"})")), zmq::send_flags::none);
  zmq::message_t reply;
  if (!s.recv(reply)) return nullptr;
  return nlohmann::json::parse(reply.to_string_view());
}

nlohmann::json wait_stopped(zmq::context_t& ctx, const std::string& ep) {
  nlohmann::json st;
  for (int i = 0; i < 600; ++i) {
    st = test::control_retry(ctx, ep, {{"cmd", "status"}});
    if (st.value("state", "") == "stopped" && !st.value("result_file", "").empty()) break;
    std::this_thread::sleep_for(100ms);
  }
  return st;
}

// Plays every frame of the scan but its stop (the real replayer, as fast as xanesd takes
// them) and waits until the journal holds them all; returns the last status.
nlohmann::json send_all_but_stop(zmq::context_t& ctx, const std::filesystem::path& file, const test::DaemonProcess& d) {
  REQUIRE(test::control_retry(ctx, d.control, {{"cmd", "status"}}).value("ok", false));
  {
    auto args = replay_args(file, d, 0);
    args.insert(args.end(), {"--no-stop"});
    test::Process replay(args);
    REQUIRE(replay.wait(120s) == 0);
  }
  nlohmann::json st;
  for (int i = 0; i < 100; ++i) {
    st = test::control_retry(ctx, d.control, {{"cmd", "status"}});
    if (st.at("journal").value("frames", 0) == kFrames) break;
    std::this_thread::sleep_for(50ms);
  }
  return st;
}

struct Maps {
  std::vector<float> fractions, thickness, residual;
  std::vector<std::uint16_t> nenergies;
};
Maps read_maps(const std::filesystem::path& file) {
  auto f = h5::open_file(file);
  auto r = h5::open_group(f, "entry/results");
  return {h5::read<float>(r, "fractions"), h5::read<float>(r, "thickness"), h5::read<float>(r, "residual"),
          h5::read<std::uint16_t>(r, "nenergies")};
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::abs(a[i] - b[i])));
  return m;
}

}  // namespace

TEST_CASE("kill -9 twenty times during one scan: no accepted frame lost, the same maps as an uninterrupted run") {
  const auto dir = test::scratch("crash-recovery");
  const auto file = make_scan(dir);
  zmq::context_t ctx(1);

  // The reference: the same scan, uninterrupted.
  Maps clean;
  {
    std::filesystem::create_directories(dir / "clean");
    test::DaemonProcess d(dir / "clean", kSettings);
    REQUIRE(test::control_retry(ctx, d.control, {{"cmd", "status"}}).value("ok", false));
    test::Process replay(replay_args(file, d, 0));
    REQUIRE(replay.wait(120s) == 0);
    const auto st = wait_stopped(ctx, d.control);
    REQUIRE(st.value("state", "") == "stopped");
    CHECK(st.at("scan").value("frames_applied", 0) == kFrames);
    clean = read_maps(st.value("result_file", ""));
    CHECK(test::control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
    CHECK(d.proc->wait(10s) == 0);
  }

  std::filesystem::create_directories(dir / "killed");
  test::DaemonProcess d(dir / "killed", kSettings);
  std::mt19937 rng(20261129);
  std::uniform_int_distribution<int> delay_ms(0, 700);
  std::int64_t acknowledged = 0;  // frames the daemon said were in its journal before a kill
  int kills = 0, kills_while_sending = 0, recoveries_checked = 0;
  for (int round = 0; round < 20; ++round) {
    test::Process replay(replay_args(file, d, 40), (dir / "killed" / ("replay-" + std::to_string(round) + ".log")).string());
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    // The moment: a status (when the daemon answers at once) then SIGKILL.
    const auto st = quick_status(ctx, d.control, 100);
    d.proc->signal(SIGKILL);
    REQUIRE(d.proc->wait(10s).has_value());
    ++kills;
    replay.signal(SIGKILL);  // the sender notices and resumes (here: started again with --resume)
    (void)replay.wait(10s);
    if (!st.is_null()) {
      INFO("round " << round << ": " << st.dump());
      // Idle only before the first start arrived; stopped would mean the kills came too late.
      REQUIRE((st.value("state", "") == "running" || (st.value("state", "") == "idle" && acknowledged == 0)));
      const auto frames = st.at("journal").value("frames", std::int64_t{0});
      CHECK(frames >= acknowledged);
      if (frames > acknowledged) ++kills_while_sending;  // frames arrived since the restart
      acknowledged = std::max(acknowledged, frames);
    }
    d.launch("xanesd-" + std::to_string(round + 1) + ".log");
    // The restarted daemon reopens the scan with every acknowledged frame.
    const auto after = test::control_retry(ctx, d.control, {{"cmd", "status"}});
    INFO("after kill " << kills << ": " << after.dump());
    if (acknowledged > 0) {
      REQUIRE(after.value("state", "") == "running");
      CHECK(after.at("scan").value("scan_id", "") == "crash");
      CHECK(after.at("recovery").value("frames", std::int64_t{-1}) >= acknowledged);
      CHECK(after.at("scan").value("frames_applied", std::int64_t{-1}) >= acknowledged);
      CHECK(after.at("journal").value("last_seq", std::int64_t{-2}) + 1 == after.at("journal").value("frames", std::int64_t{-1}));
      acknowledged = after.at("journal").value("frames", std::int64_t{0});
      ++recoveries_checked;
    }
  }
  CHECK(kills == 20);
  MESSAGE(kills_while_sending << " of " << kills << " kills while frames were arriving; " << acknowledged
                              << " of " << kFrames << " frames acknowledged before the last restart");
  CHECK(kills_while_sending >= 10);
  CHECK(acknowledged < kFrames);  // the scan was still running at the last kill

  // The sender resumes once more and finishes the scan.
  test::Process replay(replay_args(file, d, 0), (dir / "killed" / "replay-final.log").string());
  REQUIRE(replay.wait(120s) == 0);
  const auto st = wait_stopped(ctx, d.control);
  REQUIRE(st.value("state", "") == "stopped");
  INFO(st.dump());
  CHECK(st.at("scan").value("frames_applied", 0) == kFrames);
  const auto& counters = st.at("counters");
  CHECK(counters.value("issues.missing_seq", 0) == 0);
  CHECK(counters.value("issues.duplicate_seq", 0) == 0);
  CHECK(counters.value("issues.frames_sent_mismatch", 0) == 0);
  const auto killed = read_maps(st.value("result_file", ""));
  CHECK(killed.nenergies == clean.nenergies);
  CHECK(max_diff(killed.fractions, clean.fractions) < 1e-6);
  CHECK(max_diff(killed.thickness, clean.thickness) < 1e-6);
  CHECK(max_diff(killed.residual, clean.residual) < 1e-6);
  CHECK(test::control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
  CHECK(d.proc->wait(10s) == 0);
}

TEST_CASE("a torn journal tail is cut off and reported; the frames before it are recovered") {
  const auto dir = test::scratch("crash-torn");
  const auto file = make_scan(dir);
  zmq::context_t ctx(1);
  test::DaemonProcess d(dir, kSettings);
  const auto st = send_all_but_stop(ctx, file, d);
  REQUIRE(st.at("journal").value("frames", 0) == kFrames);
  d.proc->signal(SIGKILL);
  REQUIRE(d.proc->wait(10s).has_value());
  // A power cut in the middle of the last record: the file ends inside it.
  const auto journal = dir / "results" / ".journal" / "scan.journal";
  REQUIRE(std::filesystem::exists(journal));
  std::filesystem::resize_file(journal, std::filesystem::file_size(journal) - 100);
  d.launch("xanesd-2.log");
  const auto after = test::control_retry(ctx, d.control, {{"cmd", "status"}});
  INFO(after.dump());
  CHECK(after.value("state", "") == "running");
  CHECK(after.at("recovery").value("frames", 0) == kFrames - 1);
  CHECK(after.at("recovery").value("truncated_bytes", 0) > 0);
  CHECK(after.at("journal").value("last_seq", 0) == kFrames - 2);
  CHECK(after.at("counters").value("issues.journal_truncated", 0) == 1);
  CHECK(after.at("counters").value("issues.scan_recovered", 0) == 1);
  // The sender resends the one frame that was lost with the tail, and stops the scan.
  test::Process replay(replay_args(file, d, 0));
  REQUIRE(replay.wait(120s) == 0);
  const auto done = wait_stopped(ctx, d.control);
  CHECK(done.at("scan").value("frames_applied", 0) == kFrames);
  CHECK(done.at("counters").value("issues.missing_seq", 0) == 0);
  CHECK(done.at("counters").value("issues.duplicate_seq", 0) == 0);
  // The stopped scan is restored, not reopened, after another restart; no second result file write.
  CHECK(test::control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
  CHECK(d.proc->wait(10s) == 0);
  d.launch("xanesd-3.log");
  const auto restored = test::control_retry(ctx, d.control, {{"cmd", "status"}});
  CHECK(restored.value("state", "") == "stopped");
  CHECK(restored.at("counters").value("issues.scan_recovered", 0) == 0);
  CHECK(restored.at("counters").value("results.files_written", 0) == 0);
  CHECK(restored.value("result_file", "") == done.value("result_file", ""));
  CHECK(test::control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
  CHECK(d.proc->wait(10s) == 0);
}

TEST_CASE("SIGTERM mid-scan saves the running scan as a partial result and says so; a restart resumes it") {
  const auto dir = test::scratch("crash-sigterm");
  const auto file = make_scan(dir);
  zmq::context_t ctx(1);
  test::DaemonProcess d(dir, kSettings);
  const auto st = send_all_but_stop(ctx, file, d);
  REQUIRE(st.at("journal").value("frames", 0) == kFrames);
  REQUIRE(st.value("state", "") == "running");
  d.proc->signal(SIGTERM);
  REQUIRE(d.proc->wait(60s) == 0);
  const auto partial = dir / "results" / "crash.h5";
  REQUIRE(std::filesystem::exists(partial));
  {
    const auto h = h5::open_file(partial);
    const auto status = nlohmann::json::parse(h5::read_string(h, "entry/status"));
    CHECK(status.at("scan").value("state", "") == "running");
    CHECK(status.at("scan").value("frames_applied", 0) == kFrames);
  }
  std::ifstream log_file(dir / "xanesd.log");
  const std::string log((std::istreambuf_iterator<char>(log_file)), std::istreambuf_iterator<char>());
  CHECK(log.find("saved as a partial result to") != std::string::npos);
  // The restarted daemon resumes the scan from its journal; the stop finishes it and the file
  // is rewritten as a complete result.
  d.launch("xanesd-2.log");
  CHECK(test::control_retry(ctx, d.control, {{"cmd", "status"}}).value("state", "") == "running");
  test::Process replay(replay_args(file, d, 0));
  REQUIRE(replay.wait(120s) == 0);
  const auto done = wait_stopped(ctx, d.control);
  CHECK(done.at("scan").value("frames_applied", 0) == kFrames);
  CHECK(std::filesystem::path(done.value("result_file", "")).filename() == "crash.h5");
  CHECK(!std::filesystem::exists(dir / "results" / "crash-2.h5"));
  {
    const auto h = h5::open_file(partial);
    CHECK(nlohmann::json::parse(h5::read_string(h, "entry/status")).at("scan").value("state", "") == "stopped");
  }
  CHECK(test::control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
  CHECK(d.proc->wait(10s) == 0);
}

TEST_CASE("references and config changed mid-scan survive kill -9: the recovered scan is fitted with them") {
  const auto dir = test::scratch("crash-fit-state");
  const auto file = make_scan(dir);
  zmq::context_t ctx(1);
  test::DaemonProcess d(dir, kSettings);
  const auto st = send_all_but_stop(ctx, file, d);
  REQUIRE(st.at("journal").value("frames", 0) == kFrames);
  const auto library = st.at("references");  // the start-up library: every Fe reference
  REQUIRE(library.size() > 3);
  // Mid-scan: three references of the library instead of all of it, and another mask threshold.
  const std::vector<std::string> three = {"Magnetite", "Goethite", "Pyrite"};
  const auto loaded = test::control_retry(
      ctx, d.control, {{"cmd", "load_references"}, {"files", {test::fe_library().string()}}, {"names", three}});
  REQUIRE(loaded.value("ok", false));
  const auto configured =
      test::control_retry(ctx, d.control, {{"cmd", "configure"}, {"set", {{"mask.thickness_min_relative", 0.2}}}});
  REQUIRE(configured.value("ok", false));
  const auto journaled = test::control_retry(ctx, d.control, {{"cmd", "status"}}).at("journal");
  MESSAGE("journal: " << st.at("journal").value("bytes", 0) << " bytes for the start (with the fit state of "
                      << library.size() << " references) and " << kFrames << " frames of 4×32 px; the two fit-state records of 3 references: "
                      << journaled.value("bytes", 0) - st.at("journal").value("bytes", 0) << " bytes");
  d.proc->signal(SIGKILL);
  REQUIRE(d.proc->wait(10s).has_value());

  d.launch("xanesd-2.log");
  const auto after = test::control_retry(ctx, d.control, {{"cmd", "status"}});
  INFO(after.dump());
  REQUIRE(after.value("state", "") == "running");
  CHECK(after.at("recovery").value("frames", 0) == kFrames);
  CHECK(after.at("recovery").value("unreadable_records", -1) == 0);
  CHECK(after.at("references") == nlohmann::json(three));  // not the start-up library
  test::Process replay(replay_args(file, d, 0));  // resumes: nothing left to send but the stop
  REQUIRE(replay.wait(120s) == 0);
  const auto done = wait_stopped(ctx, d.control);
  REQUIRE(done.value("state", "") == "stopped");
  CHECK(done.at("scan").value("frames_applied", 0) == kFrames);
  const auto h = h5::open_file(done.value("result_file", ""));
  CHECK(h5::read_strings(h5::open_group(h, "entry/results"), "reference_names") == three);
  const auto config = nlohmann::json::parse(h5::read_string(h, "entry/config"));
  CHECK(config.value("mask.thickness_min_relative", 0.0) == doctest::Approx(0.2));
  CHECK(test::control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
  CHECK(d.proc->wait(10s) == 0);
}

TEST_CASE("the journal's writer thread writes the same journal as writing on the pipeline thread") {
  const auto dir = test::scratch("crash-writer-thread");
  const auto file = make_scan(dir);
  zmq::context_t ctx(1);
  auto journal_of = [&](const std::string& name, const std::vector<std::string>& extra) {
    std::filesystem::create_directories(dir / name);
    auto settings = kSettings;
    settings.insert(settings.end(), extra.begin(), extra.end());
    test::DaemonProcess d(dir / name, settings);
    const auto st = send_all_but_stop(ctx, file, d);
    CHECK(st.at("journal").value("frames", 0) == kFrames);
    CHECK(st.at("journal").value("last_seq", -1) + 1 == kFrames);  // every frame acknowledged, in order
    CHECK(st.at("journal").value("queued_records", -1) == 0);
    CHECK(st.at("journal").value("queued_bytes", -1) == 0);
    CHECK(test::control_retry(ctx, d.control, {{"cmd", "shutdown"}}).value("ok", false));
    CHECK(d.proc->wait(10s) == 0);
    std::ifstream in(dir / name / "results" / ".journal" / "scan.journal", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  const auto threaded = journal_of("threaded", {});
  // A queue smaller than one frame (~100 bytes): each frame waits for the one before it to be
  // written (the full-queue path); and no writer thread.
  const auto full_queue = journal_of("full-queue", {"--set", "journal.queue_MiB=0.0001"});
  const auto no_thread = journal_of("no-thread", {"--set", "journal.queue_MiB=0"});
  REQUIRE(threaded.size() > static_cast<std::size_t>(kFrames) * 512);
  CHECK(threaded == full_queue);
  CHECK(threaded == no_thread);
}
