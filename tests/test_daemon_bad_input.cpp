// Bad input over real sockets: an in-process daemon on loopback receives every kind of broken
// message; each is rejected or flagged on the errors topic and counted in status, and the scan
// goes on to a complete result file that holds every accepted sample.
#include <doctest/doctest.h>

#include <thread>

#include "live_daemon.hpp"
#include "store/h5.hpp"

using namespace xanesd;
using namespace xanesd::protocol;
using namespace std::chrono_literals;
using xanesd::test::LiveDaemon;

namespace {

using test::kCols;
using test::kE;
using test::kRows;
using test::plan;

FrameMsg frame(std::int64_t seq, int e, float value = 100.f) { return test::frame("bad-input", seq, e, value); }

}  // namespace

TEST_CASE("every kind of bad input is reported and counted; the scan goes on") {
  LiveDaemon d("bad-input");

  // A frame before any start.
  d.send(frame(0, 0).to_wire());
  auto err = d.next_error();
  CHECK(err.value("code", "") == "no_scan");

  // Not msgpack at all.
  {
    std::vector<zmq::message_t> junk;
    junk.emplace_back(std::string("frame"));
    junk.emplace_back(std::string("\xc1\xc1\xc1 not msgpack"));
    d.send_frames(std::move(junk));
    CHECK(d.next_error().value("code", "") == "malformed_message");
  }

  // A start far too large for memory (8192² pixels × 4096 energies) is refused, not attempted.
  {
    StartMsg huge;
    huge.scan_id = "huge";
    huge.rows = 8192, huge.cols = 8192;
    huge.energies_eV.assign(4096, 7100.0);
    d.send(std::move(huge).to_wire());
    CHECK(d.next_error().value("code", "") == "scan_too_large");
  }

  StartMsg s;
  s.scan_id = "bad-input";
  s.rows = kRows, s.cols = kCols;
  s.energies_eV = plan();
  s.mode = Mode::fluorescence;
  d.send(std::move(s).to_wire());

  // A second start while the scan runs.
  StartMsg s2;
  s2.scan_id = "intruder";
  s2.rows = 2, s2.cols = 2;
  s2.energies_eV = {7100};
  d.send(std::move(s2).to_wire());
  CHECK(d.next_error().value("code", "") == "scan_running");

  std::int64_t seq = 0;
  d.send(frame(seq++, 0).to_wire());  // good

  // Wrong byte count for the declared dtype/shape.
  {
    auto frames = encode(frame(seq, 1).to_wire());
    frames[2] = zmq::message_t(std::string(10, 'x'));
    d.send_frames(std::move(frames));
    err = d.next_error();
    CHECK(err.value("code", "") == "malformed_message");
    CHECK(err.value("message", "").find("bytes") != std::string::npos);
  }
  // Rows region outside the image.
  {
    auto f = frame(seq, 1);
    const std::vector<float> counts(3 * kCols, 1.f);
    f.region = {Region::Kind::rows, kRows - 1, 3};
    f.counts = Array::from<float>("counts", counts, {3, kCols});
    d.send(std::move(f).to_wire());
    CHECK(d.next_error().value("code", "") == "region_out_of_bounds");
  }
  // Pixel list with an index past the end.
  {
    auto f = frame(seq, 1);
    const std::vector<float> counts = {1, 2};
    const std::vector<std::int64_t> pix = {3, kRows * kCols};
    f.region.kind = Region::Kind::pixels;
    f.counts = Array::from<float>("counts", counts, {2});
    f.pixels = Array::from<std::int64_t>("pixels", pix, {2});
    d.send(std::move(f).to_wire());
    CHECK(d.next_error().value("code", "") == "region_out_of_bounds");
  }
  // Energy index outside the plan.
  {
    auto f = frame(seq, 0);
    f.energy_index = kE;
    d.send(std::move(f).to_wire());
    CHECK(d.next_error().value("code", "") == "energy_index_out_of_plan");
  }
  // A spectra batch with one energy outside the plan: refused whole (not counted as accepted).
  {
    auto f = frame(seq, 0);
    const std::vector<float> counts = {7, 7, 7, 7};  // 2 pixels × 2 energies
    const std::vector<std::int64_t> pix = {0, 1};
    f.region.kind = Region::Kind::pixels;
    f.energy_indices = {1, kE};
    f.energies_eV = {frame(seq, 1).energy_eV, f.energy_eV};
    f.counts = Array::from<float>("counts", counts, {2, 2});
    f.pixels = Array::from<std::int64_t>("pixels", pix, {2});
    d.send(std::move(f).to_wire());
    const auto e = d.next_error();
    CHECK(e.value("code", "") == "energy_index_out_of_plan");
    CHECK(e.value("message", "").find(std::to_string(kE)) != std::string::npos);
  }
  // Energy value that does not match the plan.
  {
    auto f = frame(seq, 1);
    f.energy_eV += 30;
    d.send(std::move(f).to_wire());
    CHECK(d.next_error().value("code", "") == "energy_mismatch");
  }
  // Unknown scan id.
  {
    auto f = frame(seq, 1);
    f.scan_id = "someone-else";
    d.send(std::move(f).to_wire());
    CHECK(d.next_error().value("code", "") == "unknown_scan");
  }
  // Full frame of the wrong shape.
  {
    auto f = frame(seq, 1);
    const std::vector<float> counts(kRows * (kCols + 1), 1.f);
    f.counts = Array::from<float>("counts", counts, {kRows, kCols + 1});
    d.send(std::move(f).to_wire());
    CHECK(d.next_error().value("code", "") == "shape_mismatch");
  }
  // Duplicate sequence number.
  d.send(frame(0, 1).to_wire());
  CHECK(d.next_error().value("code", "") == "duplicate_seq");

  // NaN and Inf in an otherwise good frame: flagged, the finite samples are kept.
  {
    auto f = frame(seq++, 1, 200.f);
    std::vector<float> counts(kRows * kCols, 200.f);
    counts[5] = NAN;
    counts[6] = INFINITY;
    f.counts = Array::from<float>("counts", counts, {kRows, kCols});
    d.send(std::move(f).to_wire());
    err = d.next_error();
    CHECK(err.value("code", "") == "nonfinite_samples");
    CHECK(err.value("message", "").find("2 sample") != std::string::npos);
  }
  // A gap in the sequence numbers: flagged, frame applied.
  seq += 2;
  d.send(frame(seq++, 2).to_wire());
  CHECK(d.next_error().value("code", "") == "missing_seq");

  // Bad control requests all get an answer.
  CHECK(d.control({{"cmd", "fly"}}).value("ok", true) == false);
  CHECK(d.control({{"nocmd", 1}}).value("ok", true) == false);
  CHECK(d.control({{"cmd", "configure"}, {"set", {{"ingest.endpoint", "x"}}}}).value("ok", true) == false);
  CHECK(d.control({{"cmd", "load_references"}, {"files", {"/no/such/file.nor"}}}).value("ok", true) == false);
  {
    zmq::socket_t req(d.ctx, zmq::socket_type::req);
    req.set(zmq::sockopt::rcvtimeo, 5000);
    req.connect(d.daemon->endpoints().control);
    req.send(zmq::str_buffer("{not json"), zmq::send_flags::none);
    zmq::message_t reply;
    REQUIRE(req.recv(reply));
    CHECK(nlohmann::json::parse(reply.to_string_view()).value("ok", true) == false);
  }

  // The scan carries on to completion.
  for (int e = 3; e < kE; ++e) d.send(frame(seq++, e).to_wire());
  StopMsg stop;
  stop.scan_id = "bad-input";
  stop.frames_sent = seq;  // the sender counts the gap it made; xanesd reports the mismatch
  d.send(std::move(stop).to_wire());

  nlohmann::json status;
  for (int i = 0; i < 100; ++i) {
    status = d.control({{"cmd", "status"}});
    if (status.value("state", "") == "stopped" && !status.value("result_file", "").empty()) break;
    std::this_thread::sleep_for(50ms);
  }
  REQUIRE(status.value("state", "") == "stopped");
  const auto& c = status.at("counters");
  CHECK(c.at("ingest.frames_accepted") == 2 + (kE - 3) + 1);
  CHECK(c.at("issues.malformed_message") == 2);
  CHECK(c.at("issues.region_out_of_bounds") == 2);
  CHECK(c.at("issues.duplicate_seq") == 1);
  CHECK(c.at("issues.nonfinite_samples") == 1);
  CHECK(c.at("issues.no_scan") == 1);
  CHECK(c.at("issues.scan_running") == 1);
  CHECK(c.at("issues.frames_sent_mismatch") == 1);
  CHECK(c.at("control.errors") >= 5);
  CHECK(status.at("scan").at("missing_seq") == 2);

  // The result file holds every accepted sample: NaN only where nothing valid arrived.
  const auto path = d.dir / "bad-input.h5";
  REQUIRE(std::filesystem::exists(path));
  auto f = h5::open_file(path);
  const auto spectra = h5::read<float>(f, "entry/data/spectra");
  const std::size_t P = kRows * kCols;
  CHECK(spectra[0 * P + 0] == doctest::Approx(0.1));        // 100 counts / i0 1000
  CHECK(spectra[1 * P + 4] == doctest::Approx(0.2));        // the NaN frame's finite samples were kept
  CHECK(std::isnan(spectra[1 * P + 5]));                    // the NaN sample was not
  CHECK(std::isnan(spectra[1 * P + 6]));                    // nor the Inf one
  CHECK(spectra[(kE - 1) * P + P - 1] == doctest::Approx(0.1));
}

TEST_CASE("a bad config or a missing reference file stops start-up with a clear error") {
  CHECK_THROWS_WITH_AS(Daemon(make_config(nlohmann::json::object(), {"references.files=[\"/nope.nor\"]", "publish.endpoint=tcp://127.0.0.1:*", "ingest.endpoint=tcp://127.0.0.1:*", "control.endpoint=tcp://127.0.0.1:*"}, "/")),
                       doctest::Contains("/nope.nor"), ConfigError);
}

TEST_CASE("a scan extended later with more energies is fitted over all of them, as if measured at once") {
  LiveDaemon d("extend");
  const auto all = plan();
  const std::size_t P = kRows * kCols;
  // A smooth spectrum per pixel so the fit has something to say: y = a + step·logistic(E).
  auto value = [&](std::size_t px, int e) {
    const double x = (all[static_cast<std::size_t>(e)] - 7140.0) / 6.0;
    return static_cast<float>(1000.0 * (0.05 + (0.5 + 0.01 * px) / (1.0 + std::exp(-x))));
  };
  auto send_frames = [&](const std::string& id, int e0, int e1, int index_offset) {
    std::int64_t seq = 0;
    for (int e = e0; e < e1; ++e) {
      FrameMsg f;
      f.scan_id = id;
      f.seq = seq++;
      f.energy_index = e - index_offset;
      f.energy_eV = all[static_cast<std::size_t>(e)];
      f.i0_scalar = 1000.0;
      std::vector<float> counts(P);
      for (std::size_t px = 0; px < P; ++px) counts[px] = value(px, e);
      f.counts = Array::from<float>("counts", counts, {kRows, kCols});
      d.send(std::move(f).to_wire());
    }
    StopMsg stop;
    stop.scan_id = id;
    stop.frames_sent = seq;
    d.send(std::move(stop).to_wire());
  };
  // Waits for the result file of scan `id` once it plans `energies` energies (an extension's
  // messages may still be queued while the status shows the previous segment's stop).
  auto wait_file = [&](const std::string& id, int energies) {
    const auto path = d.dir / (id + ".h5");
    for (int i = 0; i < 200; ++i) {
      const auto st = d.control({{"cmd", "status"}});
      if (st.value("state", "") == "stopped" && st.at("scan").at("scan_id") == id &&
          st.at("scan").at("energies_planned") == energies && !st.value("result_file", "").empty())
        return path;
      std::this_thread::sleep_for(50ms);
    }
    FAIL("no result file for " << id);
    return path;
  };
  // Two references that span the signal: the library's Goethite and Magnetite.
  REQUIRE(d.control({{"cmd", "load_references"}, {"files", {test::fe_library().string()}}, {"names", {"Goethite", "Magnetite"}}})
              .value("ok", false));
  // In one go.
  StartMsg whole;
  whole.scan_id = "whole";
  whole.rows = kRows, whole.cols = kCols;
  whole.energies_eV = all;
  d.send(std::move(whole).to_wire());
  send_frames("whole", 0, kE, 0);
  const auto whole_file = wait_file("whole", kE);
  // Half the energies, stop, then extended with the other half.
  StartMsg first;
  first.scan_id = "ext";
  first.rows = kRows, first.cols = kCols;
  first.energies_eV = std::vector<double>(all.begin(), all.begin() + kE / 2);
  d.send(std::move(first).to_wire());
  send_frames("ext", 0, kE / 2, 0);
  wait_file("ext", kE / 2);
  StartMsg more;
  more.scan_id = "ext";
  more.rows = kRows, more.cols = kCols;
  more.energies_eV = std::vector<double>(all.begin() + kE / 2, all.end());
  more.extend = true;
  d.send(std::move(more).to_wire());
  send_frames("ext", kE / 2, kE, 0);  // indices continue after the first half: kE/2 .. kE−1
  const auto ext_file = wait_file("ext", kE);
  auto a = h5::open_file(whole_file), b = h5::open_file(ext_file);
  CHECK(h5::read<double>(b, "entry/energy").size() == static_cast<std::size_t>(kE));
  const auto ta = h5::read<float>(a, "entry/results/thickness"), tb = h5::read<float>(b, "entry/results/thickness");
  const auto fa = h5::read<float>(a, "entry/results/fractions"), fb = h5::read<float>(b, "entry/results/fractions");
  REQUIRE(ta.size() == tb.size());
  for (std::size_t i = 0; i < ta.size(); ++i) CHECK(tb[i] == doctest::Approx(ta[i]).epsilon(1e-5));
  for (std::size_t i = 0; i < fa.size(); ++i) CHECK(fb[i] == doctest::Approx(fa[i]).epsilon(1e-4).scale(1));
  const auto st = d.control({{"cmd", "status"}});
  CHECK(st.at("counters").value("issues.frames_sent_mismatch", 0) == 0);
  CHECK(st.at("counters").value("issues.duplicate_seq", 0) == 0);
}
