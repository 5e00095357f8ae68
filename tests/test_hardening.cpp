// Hardening (issue 12): each trial that crashed the daemon, escaped its output folder or lost
// data, replayed against an in-process daemon on loopback. Every trial must end in a clean
// rejection with a counter, and the daemon must still serve a valid scan afterwards.
#include <doctest/doctest.h>

#include <fstream>
#include <functional>
#include <thread>

#include <sys/stat.h>

#include "live_daemon.hpp"
#include "store/h5.hpp"
#include "store/scan_file.hpp"

using namespace xanesd;
using namespace xanesd::protocol;
using namespace std::chrono_literals;
using xanesd::test::LiveDaemon;

namespace {

using test::frame;
using test::kCols;
using test::kE;
using test::kRows;
using test::plan;
using test::start;

// Re-encodes a message after `edit` changed its header (values the typed structs cannot hold).
WireMessage edited(WireMessage&& m, const std::function<void(nlohmann::json&)>& edit) {
  auto w = decode(encode(std::move(m)));
  edit(w.header);
  w.header.erase("arrays");
  return w;
}

std::int64_t counter(LiveDaemon& d, const std::string& name) {
  return d.control({{"cmd", "status"}}).at("counters").value(name, std::int64_t{0});
}

}  // namespace

TEST_CASE("[1] wire integers are range-checked: a rows region at INT64_MAX and a 2^32+8 shape are refused") {
  LiveDaemon d("harden-int");
  d.send(start("ints").to_wire());
  d.send(frame("ints", 0, 0).to_wire());
  // row0 + nrows overflowed int64, truncated to int −1 and wrote before the store.
  d.send(edited(frame("ints", 1, 1).to_wire(), [](nlohmann::json& h) {
    h["region"] = {{"kind", "rows"}, {"row0", std::numeric_limits<std::int64_t>::max()}, {"nrows", 1}};
  }));
  auto err = d.next_error();
  CHECK(err.value("code", "") == "malformed_message");
  CHECK(err.value("message", "").find("row0") != std::string::npos);
  // A uint64 row0 must not wrap to a negative int64 either.
  d.send(edited(frame("ints", 1, 1).to_wire(), [](nlohmann::json& h) {
    h["region"] = {{"kind", "rows"}, {"row0", std::numeric_limits<std::uint64_t>::max()}, {"nrows", 1}};
  }));
  CHECK(d.next_error().value("code", "") == "malformed_message");
  d.send(edited(frame("ints", 1, 1).to_wire(), [](nlohmann::json& h) { h["seq"] = std::numeric_limits<std::uint64_t>::max(); }));
  CHECK(d.next_error().value("code", "") == "malformed_message");
  d.send(StopMsg{"ints", "completed", 1}.to_wire());
  CHECK(d.wait_stopped("ints").value("state", "") == "stopped");

  // shape [2^32 + 8, 8] was read by get<int> as 8×8.
  d.send(edited(start("wide").to_wire(), [](nlohmann::json& h) { h["shape"] = {4294967304LL, 8}; }));
  err = d.next_error();
  CHECK(err.value("code", "") == "malformed_message");
  CHECK(err.value("message", "").find("shape") != std::string::npos);
  CHECK(d.control({{"cmd", "status"}}).at("scan").value("scan_id", "") == "ints");
  CHECK(counter(d, "issues.malformed_message") == 4);
  CHECK(d.serves_a_valid_scan());
}

TEST_CASE("[2] select_energies refuses empty, non-finite and too large candidate grids; mixture counts are bounded") {
  LiveDaemon d("harden-select");
  // An empty grid crashed the daemon (minmax_element of nothing in resample).
  auto r = d.control({{"cmd", "select_energies"}, {"energies_eV", nlohmann::json::array()}});
  CHECK(r.value("ok", true) == false);
  CHECK(r.value("error", "").find("empty") != std::string::npos);
  // 1,600 candidates ran for 80 s and stalled everything: refused at once.
  std::vector<double> many;
  for (int i = 0; i < 1600; ++i) many.push_back(7000 + 0.25 * i);
  const auto t0 = std::chrono::steady_clock::now();
  r = d.control({{"cmd", "select_energies"}, {"energies_eV", many}});
  CHECK(r.value("ok", true) == false);
  CHECK(r.value("error", "").find("at most") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  r = d.control({{"cmd", "select_energies"}, {"energies_eV", {7100, -1, 7200}}});
  CHECK(r.value("ok", true) == false);
  // Infinity cannot be written in JSON; an overflowing literal parses to it.
  {
    zmq::socket_t req(d.ctx, zmq::socket_type::req);
    req.set(zmq::sockopt::rcvtimeo, 5000);
    req.connect(d.daemon->endpoints().control);
    req.send(zmq::str_buffer(R"({"cmd": "select_energies", "energies_eV": [7100, 1e400, 7200]})"), zmq::send_flags::none);
    zmq::message_t reply;
    REQUIRE(req.recv(reply));
    CHECK(nlohmann::json::parse(reply.to_string_view()).value("ok", true) == false);
  }
  // Mixture counts: 10^6 took 53 s and 2.9 GB.
  r = d.control({{"cmd", "configure"}, {"set", {{"select.train_mixtures", 1000000}}}});
  CHECK(r.value("ok", true) == false);
  r = d.control({{"cmd", "configure"}, {"set", {{"select.train_mixtures", 100000}, {"select.test_mixtures", 100000}}}});
  REQUIRE(r.value("ok", false));
  std::vector<double> grid;
  for (int i = 0; i < 200; ++i) grid.push_back(7080 + 0.6 * i);
  r = d.control({{"cmd", "select_energies"}, {"energies_eV", grid}});
  CHECK(r.value("ok", true) == false);
  CHECK(r.value("error", "").find("mixtures") != std::string::npos);
  REQUIRE(d.control({{"cmd", "configure"}, {"set", {{"select.train_mixtures", 2000}, {"select.test_mixtures", 1000}}}}).value("ok", false));
  // A sensible request still works (a few seconds; 10–20× that in the ASan/UBSan build, so a
  // longer wait than control()'s 20 s).
  r = test::control(d.ctx, d.daemon->endpoints().control, {{"cmd", "select_energies"}, {"energies_eV", grid}, {"n", 10}},
                    120000);
  CHECK_MESSAGE(r.value("ok", false), r.dump());
  CHECK(d.serves_a_valid_scan());
}

TEST_CASE("[3] a publication cycle with 4 energies in use neither aborts the daemon nor fails the segmentation") {
  LiveDaemon d("harden-cycle", {"publish.interval_ms=20", "segment.interval_ms=0"});
  REQUIRE(d.control({{"cmd", "load_references"}, {"files", {test::fe_library().string()}}, {"names", {"Goethite", "Magnetite"}}})
              .value("ok", false));
  // Two domains of Goethite/Magnetite mixtures, thickness varying per pixel, at 4 energies
  // across the edge: the segmentation's mean normalization needed 5 points and threw.
  auto refs = science::load_reference_file(test::fe_library());
  std::erase_if(refs, [](const auto& r) { return r.name != "Goethite" && r.name != "Magnetite"; });
  const std::vector<int> measured = {2, 4, 6, 8};
  std::vector<double> at;
  for (int e : measured) at.push_back(plan()[static_cast<std::size_t>(e)]);
  const auto R = science::resample(refs, at, 20.0);
  d.send(start("four").to_wire());
  auto send_energy = [&](std::int64_t seq, std::size_t i) {
    auto f = frame("four", seq, measured[i]);
    std::vector<float> counts(kRows * kCols);
    for (int p = 0; p < kRows * kCols; ++p) {
      const double g = p < kRows * kCols / 2 ? 0.8 : 0.2, t = 0.5 + 0.02 * p;
      counts[static_cast<std::size_t>(p)] = static_cast<float>(1000.0 * (0.1 + t * (g * R(static_cast<Eigen::Index>(i), 0) + (1 - g) * R(static_cast<Eigen::Index>(i), 1))));
    }
    f.counts = Array::from<float>("counts", counts, {kRows, kCols});
    d.send(std::move(f).to_wire());
  };
  for (std::size_t i = 0; i < measured.size(); ++i) send_energy(static_cast<std::int64_t>(i), i);
  std::this_thread::sleep_for(500ms);
  send_energy(4, 1);  // measured again a moment later: another cycle
  std::this_thread::sleep_for(500ms);
  const auto st = d.control({{"cmd", "status"}});  // the process is alive and answers
  CHECK(st.value("state", "") == "running");
  CHECK(st.at("counters").value("internal_errors", 0) == 0);
  CHECK(st.at("counters").value("publish.cycles", 0) >= 1);
  d.send(StopMsg{"four", "completed", 5}.to_wire());
  CHECK(d.wait_stopped("four").value("result_file", "") != "");
  CHECK(d.serves_a_valid_scan());
}

TEST_CASE("[4] a pixel frame with float pixel indices is refused before its seq is recorded; the genuine frame is kept") {
  LiveDaemon d("harden-pixels");
  d.send(start("pix").to_wire());
  d.send(frame("pix", 0, 0).to_wire());
  auto pixel_frame = [](auto tag, std::int64_t seq) {
    using T = decltype(tag);
    FrameMsg f = frame("pix", seq, 1);
    const std::vector<float> counts(kRows * kCols, 300.f);
    std::vector<T> pix(kRows * kCols);
    for (std::size_t i = 0; i < pix.size(); ++i) pix[i] = static_cast<T>(i);
    f.region.kind = Region::Kind::pixels;
    f.counts = Array::from<float>("counts", counts, {kRows * kCols});
    f.pixels = Array::from<T>("pixels", pix, {kRows * kCols});
    return f;
  };
  d.send(pixel_frame(float{}, 1).to_wire());
  auto err = d.next_error();
  CHECK(err.value("code", "") == "malformed_message");
  CHECK(err.value("message", "").find("pixels") != std::string::npos);
  d.send(pixel_frame(std::int64_t{}, 1).to_wire());  // the genuine frame with that seq
  d.send(StopMsg{"pix", "completed", 2}.to_wire());
  const auto st = d.wait_stopped("pix");
  CHECK(st.at("scan").value("frames_applied", 0) == 2);
  CHECK(st.at("counters").value("issues.duplicate_seq", 0) == 0);
  CHECK(st.at("counters").value("ingest.samples_stored", 0) == 2 * kRows * kCols);
  CHECK(d.serves_a_valid_scan());
}

TEST_CASE("[5] a plan that cannot be fitted is refused at start: all energies equal, NaN or Inf, or extended so") {
  LiveDaemon d("harden-plan");
  auto refused = [&](std::vector<double> energies) {
    auto s = start("degenerate");
    s.energies_eV = std::move(energies);
    d.send(std::move(s).to_wire());
    return d.next_error().value("code", "") == "invalid_plan";
  };
  CHECK(refused(std::vector<double>(73, 7112.0)));
  CHECK(refused({7100, NAN, 7120}));
  CHECK(refused({7100, INFINITY, 7120}));
  CHECK(refused({7100, -7110, 7120}));
  CHECK(d.control({{"cmd", "status"}}).value("state", "") == "idle");
  CHECK(d.serves_a_valid_scan("plan"));
  // An extension is checked as the whole plan it makes.
  auto more = start("plan");
  more.rows = 4, more.cols = 5, more.extend = true;
  more.energies_eV = {NAN};
  d.send(std::move(more).to_wire());
  CHECK(d.next_error().value("code", "") == "invalid_plan");
  CHECK(d.control({{"cmd", "status"}}).at("counters").value("issues.invalid_plan", 0) == 5);
  CHECK(d.serves_a_valid_scan());
}

TEST_CASE("[6] scan ids and save paths stay inside output.directory; invalid UTF-8 does not break status") {
  LiveDaemon d("harden-paths");
  const auto outside = test::scratch("harden-paths-outside");
  for (const std::string& id : {outside.string() + "/abs", std::string("../escape"), std::string("a/b"), std::string(".."),
                               std::string("line\nbreak"), std::string("\xff\xfe-bad-utf8"), std::string(129, 'x')}) {
    d.send(start(id).to_wire());
    auto err = d.next_error();
    CHECK(err.value("code", "") == "invalid_scan_id");
    // The published message is valid UTF-8 whatever came in.
    CHECK_NOTHROW((void)err.dump());
  }
  CHECK(d.control({{"cmd", "status"}}).value("state", "") == "idle");
  CHECK(d.control({{"cmd", "status"}}).at("counters").value("issues.invalid_scan_id", 0) == 7);
  CHECK(std::filesystem::is_empty(outside));
  CHECK(!std::filesystem::exists(d.dir.parent_path() / "escape.h5"));
  // An unknown scan id with invalid UTF-8 in a frame still gives a readable error and status.
  d.send(frame("\xc3\x28", 0, 0).to_wire());
  CHECK(d.next_error().value("code", "") == "no_scan");
  CHECK(d.control({{"cmd", "snapshot"}}).value("ok", false));

  REQUIRE(d.serves_a_valid_scan("paths"));
  auto save = [&](const std::string& path) { return d.control({{"cmd", "save"}, {"path", path}}); };
  for (const std::string& p : {outside.string() + "/x.h5", std::string("../x.h5"), std::string("sub/../../x.h5"), std::string("./x.h5")}) {
    const auto r = save(p);
    CHECK(r.value("ok", true) == false);
    CHECK(r.value("code", "") == "invalid_path");
  }
  CHECK(std::filesystem::is_empty(outside));
  // A non-HDF5 file in the folder is never replaced.
  { std::ofstream(d.dir / "notes.txt") << "beamline notes"; }
  CHECK(save("notes.txt").value("ok", true) == false);
  {
    std::ifstream in(d.dir / "notes.txt");
    std::string text;
    std::getline(in, text);
    CHECK(text == "beamline notes");
  }
  // Inside the folder it works, and replacing an earlier result file is fine.
  auto r = save("copies/paths-copy.h5");
  CHECK(r.value("ok", false));
  CHECK(std::filesystem::exists(d.dir / "copies" / "paths-copy.h5"));
  CHECK(save("copies/paths-copy.h5").value("ok", false));
  CHECK(save("").value("ok", false));
  for (const auto& f : std::filesystem::recursive_directory_iterator(d.dir))
    CHECK(f.path().extension() != ".partial");
  CHECK(d.serves_a_valid_scan());
}

TEST_CASE("[6] an unusable output.directory is reported at start-up, in the log and in status") {
  const auto dir = test::scratch("harden-outdir");
  { std::ofstream(dir / "a-file") << "x"; }
  LiveDaemon d("harden-outdir-daemon", {"output.directory=" + (dir / "a-file" / "results").string()});
  const auto st = d.control({{"cmd", "status"}});
  CHECK(st.at("output").value("writable", true) == false);
  CHECK(st.at("output").value("error", "") != "");
}

TEST_CASE("[7] budgets: XRF channels and extended plans count against ingest.max_scan_GiB; oversized parts and long texts are cut") {
  LiveDaemon d("harden-budget", {"ingest.max_scan_GiB=0.01"});
  // 64×64 px × 12 energies is 1 MB; 1000 XRF channels add 16 MB.
  auto s = start("xrf");
  s.rows = 64, s.cols = 64;
  for (int c = 0; c < 1000; ++c) s.xrf_channels.push_back("ch" + std::to_string(c));
  d.send(std::move(s).to_wire());
  CHECK(d.next_error().value("code", "") == "scan_too_large");
  // 1,000 energies more by `extend`: 16 MB.
  auto small = start("grow");
  small.rows = 64, small.cols = 64;
  d.send(std::move(small).to_wire());
  d.send(StopMsg{"grow", "completed", 0}.to_wire());
  (void)d.wait_stopped("grow");
  auto more = start("grow");
  more.rows = 64, more.cols = 64, more.extend = true;
  more.energies_eV.clear();
  for (int e = 0; e < 1000; ++e) more.energies_eV.push_back(7200 + 0.5 * e);
  d.send(std::move(more).to_wire());
  auto err = d.next_error();
  CHECK(err.value("code", "") == "scan_too_large");
  CHECK(d.control({{"cmd", "status"}}).at("scan").value("energies_planned", 0) == kE);
  // A 4 MiB array part is over the derived ZMQ_MAXMSGSIZE (2 MiB here): never received.
  const auto messages = counter(d, "ingest.messages");
  {
    auto f = frame("grow", 0, 0);
    const std::vector<float> big(1024 * 1024, 1.f);
    f.counts = Array::from<float>("counts", big, {1024, 1024});
    d.send(std::move(f).to_wire());
  }
  std::this_thread::sleep_for(500ms);
  CHECK(counter(d, "ingest.messages") == messages);
  // A 10,000-character scan id in a rejected message: the published error text is bounded.
  d.send(StopMsg{std::string(10000, 'z'), "completed", {}}.to_wire());
  err = d.next_error();
  CHECK(err.value("code", "") == "unknown_scan");
  CHECK(err.value("message", "").size() < 256);
  CHECK(err.value("scan_id", "").size() < 140);
  std::this_thread::sleep_for(300ms);  // the PUSH socket reconnects after its dropped connection
  CHECK(d.serves_a_valid_scan());
}

TEST_CASE("[8] load_references never blocks on a FIFO or a device, reads no unbounded file and echoes no contents") {
  LiveDaemon d("harden-refs");
  auto load = [&](const std::filesystem::path& p) { return d.control({{"cmd", "load_references"}, {"files", {p.string()}}}); };
  const auto fifo = d.dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  auto t0 = std::chrono::steady_clock::now();
  auto r = load(fifo);
  CHECK(r.value("ok", true) == false);
  CHECK(r.value("error", "").find("regular file") != std::string::npos);
  r = load("/dev/zero");
  CHECK(r.value("ok", true) == false);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
  // A sparse 100 MiB file is refused by its size, not read.
  const auto big = d.dir / "big.nor";
  { std::ofstream(big) << ""; }
  std::filesystem::resize_file(big, 100u << 20);
  r = load(big);
  CHECK(r.value("error", "").find("larger than") != std::string::npos);
  // A file that starts like a reference and then holds a secret: the error does not quote it.
  const auto secret = d.dir / "secret.txt";
  { std::ofstream(secret) << "7000 0.1\n7010 0.2\n7020 0.3\n7030 0.4\nhunter2-secret-token 0.5\n"; }
  r = load(secret);
  CHECK(r.value("ok", true) == false);
  CHECK(r.dump().find("hunter2") == std::string::npos);
  CHECK(d.control({{"cmd", "status"}}).at("references").size() == 11);  // the loaded set is kept
  CHECK(d.serves_a_valid_scan());
}

// Findings of the fuzzers (tests/fuzz, README "Hardening"), each replayed here as well.

TEST_CASE("[fuzz] a reference file with a bare '#' header line loads like the same file without it") {
  const auto dir = test::scratch("fuzz_bare_hash");
  std::ifstream in(test::fe_library());
  std::string first, rest((std::istreambuf_iterator<char>(std::getline(in, first))), std::istreambuf_iterator<char>());
  const auto file = dir / "bare_hash.nor";
  std::ofstream(file) << first << "\n#\n#%\n" << rest;
  std::vector<science::Reference> with, without;
  REQUIRE_NOTHROW(with = science::load_reference_file(file));  // threw std::out_of_range (substr of npos)
  without = science::load_reference_file(test::fe_library());
  REQUIRE(with.size() == without.size());
  for (std::size_t k = 0; k < with.size(); ++k) {
    CHECK(with[k].name == without[k].name);
    CHECK(with[k].mu == without[k].mu);
  }
}

TEST_CASE("[fuzz] a scan file whose datasets do not match /raw/counts is refused, naming the dataset") {
  const auto dir = test::scratch("fuzz_scan_file");
  constexpr hsize_t E = 3, C = 4;  // and 2 rows
  // A valid 3×2×4 file plus one broken dataset; before the checks each of these read out of
  // bounds (a short I0, dark or XRF channel) or emitted a start the daemon refuses (0 rows).
  auto make = [&](const std::string& name, const std::function<void(hid_t)>& spoil, hsize_t rows = 2) {
    const auto path = dir / (name + ".h5");
    auto f = h5::create_file(path);
    h5::attr_string(f, "mode", "fluorescence");
    h5::write<double>(f, "energy", std::vector<double>{7100, 7110, 7120});
    auto raw = h5::create_group(f, "raw");
    h5::write<float>(raw, "counts", std::vector<float>(E * rows * C, 100.f), {E, rows, C});
    spoil(f);
    return path;
  };
  auto refused = [](const std::filesystem::path& p) {
    try {
      read_scan_file(p, {}, [](protocol::IngestMessage&&) {});
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const auto ok = make("ok", [](hid_t) {});
  CHECK(read_scan_file(ok, {}, [](protocol::IngestMessage&&) {}) == static_cast<std::int64_t>(E));
  CHECK(refused(make("short_i0", [](hid_t f) { h5::write<float>(f, "raw/i0", std::vector<float>{1000.f}); })).find("/raw/i0") != std::string::npos);
  CHECK(refused(make("small_dark", [](hid_t f) { h5::write<float>(f, "raw/dark", std::vector<float>(4, 1.f), {2, 2}); })).find("/raw/dark") != std::string::npos);
  CHECK(refused(make("small_flat", [](hid_t f) { h5::write<float>(f, "raw/flat", std::vector<float>(E * 4, 1.f), {E, 2, 2}); })).find("/raw/flat") != std::string::npos);
  CHECK(refused(make("short_xrf", [](hid_t f) {
          auto g = h5::create_group(f, "xrf");
          h5::write<float>(g, "Fe", std::vector<float>(3, 1.f));
        })).find("/xrf/Fe") != std::string::npos);
  CHECK(refused(make("no_rows", [](hid_t) {}, 0)).find("/raw/counts") != std::string::npos);
  // A requested energy that is not a number is not "within 1 eV" of any.
  ScanFileOptions nan;
  nan.only_energies_eV = {std::nan("")};
  CHECK_THROWS_AS(read_scan_file(ok, nan, [](protocol::IngestMessage&&) {}), std::runtime_error);
}

TEST_CASE("[fuzz] a --set value of the wrong type with invalid UTF-8 is a ConfigError, not a JSON exception") {
  // "50\xB0" is not JSON, so it is taken as a string; quoting it in the error threw type_error 316.
  CHECK_THROWS_AS(make_config(nlohmann::json::object(), {"publish.interval_ms=50\xB0"}, "/"), ConfigError);
}
