// The `pixel` control command (issue 15): the real xanesd binary, the real xanes-replay playing a
// small simulated scan, and the result file read back with HDF5. One pixel's reply must equal
// that pixel in the result file (spectrum, fractions ± σ, thickness, residual, mask, segment),
// its model must be the background plus the references' contributions and reproduce the
// pixel's own misfit, and bad coordinates get `invalid_pixel` while the daemon goes on serving.
// It also writes the golden reply protocol/fixtures/cpp_pixel.*.json the Python tests decode.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <thread>

#include "daemon_process.hpp"
#include "science_support.hpp"
#include "store/h5.hpp"

using namespace xanesd;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> kSpecies = {"Magnetite", "Goethite", "Pyrite"};

std::filesystem::path make_scan(const std::filesystem::path& dir) {
  auto p = test::hxn_scan(24, 30);
  p.layout = sim::Params::Layout::domains;
  p.seed = 15;
  const auto file = dir / "pixel-scan.h5";
  sim::write_scan_file(sim::simulate(test::pick(science::load_reference_file(test::fe_library()), kSpecies), p), file);
  return file;
}

}  // namespace

TEST_CASE("pixel: one pixel's spectrum, model and map values equal the result file; bad coordinates are refused") {
  const auto dir = test::scratch("pixel");
  const auto scan_file = make_scan(dir);
  // Unweighted and per pixel, so the model's misfit is the residual map's (see PROTOCOL.md).
  test::DaemonProcess d(dir, {"--set", "fit.spatial=false", "--set", "fit.weighting=none", "--set", "log.level=warn"});
  zmq::context_t ctx(1);
  const auto before = test::control_retry(ctx, d.control, {{"cmd", "pixel"}, {"x", 0}, {"y", 0}});
  CHECK_FALSE(before.value("ok", true));
  CHECK(before.value("code", "") == "bad_control_request");  // no scan yet
  REQUIRE(test::control(ctx, d.control, {{"cmd", "load_references"}, {"files", {test::fe_library().string()}}, {"names", kSpecies}})
              .value("ok", false));

  test::Process replay({XANES_REPLAY_BIN, "--input", scan_file.string(), "--endpoint", d.ingest, "--scan-id", "pix", "--quiet"});
  REQUIRE(replay.wait(120s).value_or(-1) == 0);
  nlohmann::json st;
  for (int i = 0; i < 400; ++i) {
    st = test::control(ctx, d.control, {{"cmd", "status"}});
    if (st.value("state", "") == "stopped" && !st.value("result_file", "").empty()) break;
    std::this_thread::sleep_for(50ms);
  }
  REQUIRE(st.value("state", "") == "stopped");
  const std::filesystem::path result = st.at("result_file").get<std::string>();

  auto f = h5::open_file(result);
  auto res = h5::open_group(f, "entry/results");
  const auto fractions = h5::read<float>(res, "fractions"), sigma = h5::read<float>(res, "fraction_sigma");
  const auto thickness = h5::read<float>(res, "thickness"), residual = h5::read<float>(res, "residual");
  const auto rfactor = h5::read<float>(res, "rfactor");
  const auto mask = h5::read<std::uint8_t>(res, "mask");
  const auto segments = h5::read<std::uint8_t>(h5::open_group(res, "segments"), "segments");
  const auto spectra = h5::read<float>(h5::open_group(f, "entry/data"), "spectra");
  const auto energies = h5::read<double>(f, "entry/energy");
  const int R = 24, C = 30;
  const std::size_t P = R * C, E = energies.size();
  REQUIRE(mask.size() == P);
  REQUIRE(segments.size() == P);
  REQUIRE(spectra.size() == E * P);

  // Every pixel of one row and one column: kept material, the empty border, masked pixels.
  std::vector<std::pair<int, int>> pixels;
  for (int x = 0; x < C; ++x) pixels.emplace_back(x, R / 2);
  for (int y = 0; y < R; ++y) pixels.emplace_back(C / 3, y);
  int kept = 0, dropped = 0, models = 0;
  nlohmann::json golden;
  for (const auto& pixel : pixels) {  // no structured binding: CAPTURE captures it (clang 14)
    const int x = pixel.first, y = pixel.second;
    CAPTURE(x);
    CAPTURE(y);
    const auto r = test::control(ctx, d.control, {{"cmd", "pixel"}, {"x", x}, {"y", y}});
    REQUIRE(r.value("ok", false));
    const std::size_t p = static_cast<std::size_t>(y) * C + static_cast<std::size_t>(x);
    CHECK(r.at("scan_id") == "pix");
    CHECK(r.at("state") == "stopped");
    CHECK(r.at("reference_names") == nlohmann::json(kSpecies));
    CHECK(r.at("mask").get<bool>() == (mask[p] != 0));
    (mask[p] ? kept : dropped)++;
    CHECK(r.at("segment").get<int>() == segments[p]);
    CHECK(r.at("thickness").get<float>() == thickness[p]);
    CHECK(r.at("residual").get<float>() == residual[p]);
    CHECK(r.at("rfactor").get<float>() == rfactor[p]);
    for (std::size_t k = 0; k < kSpecies.size(); ++k) {
      CHECK(r.at("fractions")[k].get<float>() == fractions[k * P + p]);
      CHECK(r.at("fraction_sigma")[k].get<float>() == sigma[k * P + p]);
    }
    // The measured points are the file's spectrum where it is not NaN (all 73 here).
    std::vector<double> want_e, want_y;
    for (std::size_t e = 0; e < E; ++e)
      if (!std::isnan(spectra[e * P + p])) want_e.push_back(energies[e]), want_y.push_back(spectra[e * P + p]);
    CHECK(want_e.size() == E);
    CHECK(r.at("energies_eV").get<std::vector<double>>() == want_e);
    CHECK(r.at("spectrum").get<std::vector<double>>() == want_y);
    if (!r.at("fitted").get<bool>()) continue;
    ++models;
    const auto model = r.at("model").get<std::vector<double>>(), bg = r.at("background").get<std::vector<double>>();
    const auto parts = r.at("contributions").get<std::vector<std::vector<double>>>();
    REQUIRE(model.size() == E);
    REQUIRE(parts.size() == kSpecies.size());
    double sse = 0, scale = 0;
    for (std::size_t j = 0; j < E; ++j) {
      double sum = bg[j];
      for (const auto& c : parts) sum += c[j];
      CHECK(model[j] == doctest::Approx(sum).epsilon(1e-12));
      sse += (want_y[j] - model[j]) * (want_y[j] - model[j]);
      scale = std::max(scale, std::abs(want_y[j]));
    }
    // The model rebuilt from the maps reproduces the fit: its RMS misfit is the residual map's.
    CHECK(std::sqrt(sse / static_cast<double>(E)) == doctest::Approx(residual[p]).epsilon(1e-3).scale(1e-6 * scale));
    CHECK(r.at("sigma").get<std::vector<double>>() == std::vector<double>(E, static_cast<double>(residual[p])));
    if (golden.is_null() && mask[p]) golden = r;
  }
  CHECK(kept > 10);
  CHECK(dropped >= 4);  // the empty border, where the row and the column cross it
  CHECK(models >= kept);

  // Bad coordinates: a clear code, counted, published on errors; the daemon goes on serving.
  for (const auto& bad : {nlohmann::json{{"cmd", "pixel"}, {"x", C}, {"y", 0}}, nlohmann::json{{"cmd", "pixel"}, {"x", 0}, {"y", -1}},
                          nlohmann::json{{"cmd", "pixel"}, {"x", "3"}, {"y", 0}}, nlohmann::json{{"cmd", "pixel"}, {"x", 1.5}, {"y", 0}},
                          nlohmann::json{{"cmd", "pixel"}, {"y", 2}}}) {
    CAPTURE(bad.dump());
    const auto r = test::control(ctx, d.control, bad);
    CHECK_FALSE(r.value("ok", true));
    CHECK(r.value("code", "") == "invalid_pixel");
    CHECK(r.value("error", "").find("pixel") != std::string::npos);
  }
  const auto after = test::control(ctx, d.control, {{"cmd", "status"}});
  CHECK(after.at("counters").value("issues.invalid_pixel", 0) == 5);
  CHECK(test::control(ctx, d.control, {{"cmd", "pixel"}, {"x", 1}, {"y", 1}}).value("ok", false));

  // The golden reply the Python side decodes (protocol/python/test_protocol.py).
  REQUIRE(!golden.is_null());
  const auto fixtures = test::source_dir() / "protocol" / "fixtures";
  std::ofstream(fixtures / "cpp_pixel.request.json")
      << nlohmann::json{{"cmd", "pixel"}, {"x", golden.at("x")}, {"y", golden.at("y")}}.dump(1) << "\n";
  std::ofstream(fixtures / "cpp_pixel.reply.json") << golden.dump(1) << "\n";
}
