// Wire protocol: round trips for every dtype and byte order, rejection of malformed messages,
// and the golden fixtures shared with the Python implementation.
#include <doctest/doctest.h>

#include <cstring>
#include <functional>
#include <fstream>

#include "support.hpp"
#include "xanesd/protocol/messages.hpp"
#include "xanesd/protocol/control.hpp"
#include "xanesd/protocol/products.hpp"

using namespace xanesd;
using namespace xanesd::protocol;

namespace {

std::vector<zmq::message_t> copy_frames(const std::vector<zmq::message_t>& in) {
  std::vector<zmq::message_t> out;
  for (const auto& f : in) out.emplace_back(f.data(), f.size());
  return out;
}

std::vector<zmq::message_t> read_frames_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<zmq::message_t> frames;
  std::uint32_t len;
  while (in.read(reinterpret_cast<char*>(&len), 4)) {  // fixtures are little-endian; so is x86-64
    std::vector<char> buf(len);
    in.read(buf.data(), len);
    frames.emplace_back(buf.data(), buf.size());
  }
  return frames;
}

void write_frames_file(const std::filesystem::path& p, const std::vector<zmq::message_t>& frames) {
  std::ofstream out(p, std::ios::binary);
  for (const auto& f : frames) {
    const auto len = static_cast<std::uint32_t>(f.size());
    out.write(reinterpret_cast<const char*>(&len), 4);
    out.write(static_cast<const char*>(f.data()), static_cast<std::streamsize>(f.size()));
  }
}

// Checks a decoded message against a fixture's .expect.json (header fields and array values).
void check_expectation(const WireMessage& m, const nlohmann::json& expect) {
  CHECK(m.topic == expect.at("topic").get<std::string>());
  for (const auto& item : expect.at("header").items()) {  // no structured binding: INFO captures it (clang 14)
    const auto& k = item.key();
    const auto& v = item.value();
    INFO("header key " << k);
    REQUIRE(m.header.contains(k));
    if (v.is_number()) CHECK(m.header[k].get<double>() == doctest::Approx(v.get<double>()));
    else CHECK(m.header[k] == v);
  }
  REQUIRE(m.arrays.size() == expect.at("arrays").size());
  for (std::size_t i = 0; i < m.arrays.size(); ++i) {
    const auto& a = m.arrays[i];
    const auto& e = expect["arrays"][i];
    INFO("array " << a.name());
    CHECK(a.name() == e.at("name").get<std::string>());
    CHECK(to_string(a.dtype()) == e.at("dtype").get<std::string>());
    CHECK(a.shape() == e.at("shape").get<std::vector<std::int64_t>>());
    const auto values = e.at("values").get<std::vector<double>>();
    REQUIRE(values.size() == a.size());
    for (std::size_t j = 0; j < values.size(); ++j) CHECK(a.at(j) == doctest::Approx(values[j]));
  }
}

FrameMsg sample_frame() {
  FrameMsg f;
  f.scan_id = "s1";
  f.seq = 7;
  f.energy_index = 3;
  f.energy_eV = 7112.5;
  f.region = {Region::Kind::rows, 2, 2};
  f.i0_scalar = 1234.5;
  const std::vector<float> counts = {1, 2, 3, 4, 5, 6};
  f.counts = Array::from<float>("counts", counts, {2, 3});
  return f;
}

}  // namespace

TEST_CASE("every dtype survives encode/decode in both byte orders") {
  const std::vector<double> values = {0, 1, 2, 100, 255};
  for (DType t : {DType::uint8, DType::uint16, DType::uint32, DType::uint64, DType::int16, DType::int32,
                  DType::int64, DType::float32, DType::float64}) {
    for (bool little : {true, false}) {
      const auto sz = itemsize(t);
      std::vector<unsigned char> bytes(values.size() * sz);
      for (std::size_t i = 0; i < values.size(); ++i) {
        // Build the value's bytes by hand, in the requested order.
        unsigned char tmp[8] = {};
        switch (t) {
          case DType::uint8: tmp[0] = static_cast<std::uint8_t>(values[i]); break;
          case DType::uint16: { auto v = static_cast<std::uint16_t>(values[i]); std::memcpy(tmp, &v, 2); break; }
          case DType::uint32: { auto v = static_cast<std::uint32_t>(values[i]); std::memcpy(tmp, &v, 4); break; }
          case DType::uint64: { auto v = static_cast<std::uint64_t>(values[i]); std::memcpy(tmp, &v, 8); break; }
          case DType::int16: { auto v = static_cast<std::int16_t>(values[i]); std::memcpy(tmp, &v, 2); break; }
          case DType::int32: { auto v = static_cast<std::int32_t>(values[i]); std::memcpy(tmp, &v, 4); break; }
          case DType::int64: { auto v = static_cast<std::int64_t>(values[i]); std::memcpy(tmp, &v, 8); break; }
          case DType::float32: { auto v = static_cast<float>(values[i]); std::memcpy(tmp, &v, 4); break; }
          case DType::float64: { auto v = values[i]; std::memcpy(tmp, &v, 8); break; }
        }
        if (!little) std::reverse(tmp, tmp + sz);
        std::memcpy(&bytes[i * sz], tmp, sz);
      }
      WireMessage m;
      m.topic = "test";
      m.header = {{"type", "test"}};
      m.arrays.emplace_back("a", t, std::vector<std::int64_t>{static_cast<std::int64_t>(values.size())}, little,
                            zmq::message_t(bytes.data(), bytes.size()));
      auto back = decode(encode(std::move(m)));
      REQUIRE(back.arrays.size() == 1);
      INFO(to_string(t) << (little ? " <" : " >"));
      std::vector<double> out(values.size());
      back.arrays[0].convert_to(std::span<double>(out));
      CHECK(out == values);
    }
  }
}

TEST_CASE("typed messages round trip") {
  StartMsg s;
  s.scan_id = "scan-42";
  s.rows = 3, s.cols = 4;
  s.energies_eV = {7100, 7110.5, 7120};
  s.mode = Mode::transmission;
  s.order = Order::pixel_major;
  s.xrf_channels = {"Fe", "Ca"};
  const std::vector<float> dark(12, 2.0f);
  s.dark = Array::from<float>("dark", dark, {3, 4});
  auto s2 = StartMsg::from_wire(decode(encode(std::move(s).to_wire())));
  CHECK(s2.scan_id == "scan-42");
  CHECK(s2.rows == 3);
  CHECK(s2.energies_eV == std::vector<double>{7100, 7110.5, 7120});
  CHECK(s2.mode == Mode::transmission);
  CHECK(s2.order == Order::pixel_major);
  CHECK(s2.xrf_channels == std::vector<std::string>{"Fe", "Ca"});
  REQUIRE(s2.dark);
  CHECK(s2.dark->at(11) == 2.0);

  auto f2 = FrameMsg::from_wire(decode(encode(sample_frame().to_wire())));
  CHECK(f2.seq == 7);
  CHECK(f2.region.kind == Region::Kind::rows);
  CHECK(f2.region.row0 == 2);
  CHECK(*f2.i0_scalar == 1234.5);
  CHECK(f2.counts.at(5) == 6.0);
  CHECK(f2.counts.native_view<float>().size() == 6);

  StopMsg st;
  st.scan_id = "scan-42";
  st.frames_sent = 10;
  auto st2 = StopMsg::from_wire(decode(encode(std::move(st).to_wire())));
  CHECK(*st2.frames_sent == 10);
  CHECK(st2.reason == "completed");
}

TEST_CASE("malformed messages are rejected with a message that names the problem") {
  auto frames = encode(sample_frame().to_wire());
  SUBCASE("missing header") {
    std::vector<zmq::message_t> one;
    one.push_back(std::move(frames[0]));
    CHECK_THROWS_WITH_AS(decode(std::move(one)), doctest::Contains("need topic and header"), ProtocolError);
  }
  SUBCASE("garbage header") {
    frames[1] = zmq::message_t(std::string("\xc1\xff garbage"));
    CHECK_THROWS_AS(decode(std::move(frames)), ProtocolError);
  }
  SUBCASE("header not a map") {
    const auto h = encode_header(nlohmann::json::array({1, 2}));
    frames[1] = zmq::message_t(h.data(), h.size());
    CHECK_THROWS_WITH_AS(decode(std::move(frames)), doctest::Contains("not a msgpack map"), ProtocolError);
  }
  SUBCASE("array frame too short") {
    frames[2] = zmq::message_t(std::string("abc"));
    CHECK_THROWS_WITH_AS(decode(std::move(frames)), doctest::Contains("bytes"), ProtocolError);
  }
  SUBCASE("missing array frame") {
    frames.pop_back();
    CHECK_THROWS_WITH_AS(decode(std::move(frames)), doctest::Contains("array frame"), ProtocolError);
  }
  SUBCASE("wrong protocol version") {
    auto h = decode_header(frames[1].data(), frames[1].size());
    h["protocol"] = 99;
    const auto b = encode_header(h);
    frames[1] = zmq::message_t(b.data(), b.size());
    CHECK_THROWS_WITH_AS(decode(std::move(frames)), doctest::Contains("protocol version"), ProtocolError);
  }
  SUBCASE("protocol version that is not valid UTF-8 text, or is long (found by fuzz_wire)") {
    auto h = decode_header(frames[1].data(), frames[1].size());
    h["protocol"] = nlohmann::json::array({std::string("\x91\x91\x01"), std::string(1000, 'x')});
    const auto b = encode_header(h);
    frames[1] = zmq::message_t(b.data(), b.size());
    try {
      decode(std::move(frames));
      FAIL("accepted");
    } catch (const ProtocolError& e) {
      CHECK(std::string(e.what()).find("protocol version") != std::string::npos);
      CHECK(std::string(e.what()).size() < 200);
    }
  }
  SUBCASE("unknown dtype") {
    auto h = decode_header(frames[1].data(), frames[1].size());
    h["arrays"][0]["dtype"] = "complex64";
    const auto b = encode_header(h);
    frames[1] = zmq::message_t(b.data(), b.size());
    CHECK_THROWS_WITH_AS(decode(std::move(frames)), doctest::Contains("complex64"), ProtocolError);
  }
  SUBCASE("frame without seq") {
    auto h = decode_header(frames[1].data(), frames[1].size());
    h.erase("seq");
    const auto b = encode_header(h);
    frames[1] = zmq::message_t(b.data(), b.size());
    CHECK_THROWS_WITH_AS(FrameMsg::from_wire(decode(std::move(frames))), doctest::Contains("'seq'"), ProtocolError);
  }
  SUBCASE("region rows disagree with counts") {
    auto h = decode_header(frames[1].data(), frames[1].size());
    h["region"]["nrows"] = 5;
    const auto b = encode_header(h);
    frames[1] = zmq::message_t(b.data(), b.size());
    CHECK_THROWS_AS(FrameMsg::from_wire(decode(std::move(frames))), ProtocolError);
  }
}

namespace {
// 3 pixels × 2 energies, a spectrum per row, with per-energy scalar I0 and XRF per pixel.
FrameMsg spectra_batch() {
  FrameMsg f;
  f.scan_id = "pm";
  f.seq = 4;
  f.region.kind = Region::Kind::pixels;
  f.energy_indices = {1, 0};
  f.energies_eV = {7110.0, 7100.0};
  f.i0_scalars = {2.0, 4.0};
  const std::vector<float> counts{10, 20, 11, 21, 12, 22};
  const std::vector<std::uint32_t> pixels{5, 6, 9};
  const std::vector<float> xrf{1, 2, 3};
  f.counts = Array::from<float>("counts", counts, {3, 2});
  f.pixels = Array::from<std::uint32_t>("pixels", pixels, {3});
  f.xrf = Array::from<float>("xrf", xrf, {1, 3});
  return f;
}
}  // namespace

TEST_CASE("a spectra batch round trips and splits into its frames at one energy, in its energy order") {
  auto f = FrameMsg::from_wire(decode(encode(spectra_batch().to_wire())));
  REQUIRE(f.spectra());
  CHECK(f.energy_indices == std::vector<int>{1, 0});
  CHECK(f.energies_eV == std::vector<double>{7110.0, 7100.0});
  CHECK(f.i0_scalars == std::vector<double>{2.0, 4.0});
  CHECK(f.energy_index == 1);
  auto parts = f.per_energy();
  REQUIRE(parts.size() == 2);
  for (std::size_t j = 0; j < 2; ++j) {
    CHECK(parts[j].seq == 4);
    CHECK_FALSE(parts[j].spectra());
    CHECK(parts[j].energy_index == f.energy_indices[j]);
    CHECK(parts[j].energy_eV == f.energies_eV[j]);
    CHECK(*parts[j].i0_scalar == f.i0_scalars[j]);
    REQUIRE(parts[j].counts.shape() == std::vector<std::int64_t>{3});
    for (std::size_t i = 0; i < 3; ++i) CHECK(parts[j].counts.at(i) == f.counts.at(i * 2 + j));
    REQUIRE(parts[j].pixels);
    CHECK(parts[j].pixels->at(2) == 9);
    // The pixel list is shared, not copied per energy: a batch costs its size once more at most.
    CHECK(parts[j].pixels->bytes() == f.pixels->bytes());
  }
  REQUIRE(parts[0].xrf);  // the XRF once, with the first energy
  CHECK_FALSE(parts[1].xrf);
  // Each part is a valid frame of its own.
  for (auto& p : parts) CHECK_NOTHROW(FrameMsg::from_wire(decode(encode(std::move(p).to_wire()))));
}

TEST_CASE("a malformed spectra batch is refused with its reason") {
  auto header_edit = [](const std::function<void(nlohmann::json&)>& edit) {
    auto frames = encode(spectra_batch().to_wire());
    auto h = decode_header(frames[1].data(), frames[1].size());
    edit(h);
    const auto b = encode_header(h);
    frames[1] = zmq::message_t(b.data(), b.size());
    return decode(std::move(frames));
  };
  CHECK_THROWS_WITH_AS(FrameMsg::from_wire(header_edit([](auto& h) { h["energy_indices"] = {1, 0, 2}; })),
                       doctest::Contains("as long as"), ProtocolError);
  CHECK_THROWS_WITH_AS(FrameMsg::from_wire(header_edit([](auto& h) { h["energy_index"] = 0; })), doctest::Contains("either"),
                       ProtocolError);
  CHECK_THROWS_WITH_AS(FrameMsg::from_wire(header_edit([](auto& h) { h["region"] = {{"kind", "full"}}; })),
                       doctest::Contains("region kind 'pixels'"), ProtocolError);
  CHECK_THROWS_WITH_AS(FrameMsg::from_wire(header_edit([](auto& h) { h["i0"] = {1.0}; })), doctest::Contains("one number per energy"),
                       ProtocolError);
  CHECK_THROWS_WITH_AS(FrameMsg::from_wire(header_edit([](auto& h) { h["energy_indices"] = {1, 4096}; })),
                       doctest::Contains("energy_indices"), ProtocolError);
  CHECK_THROWS_WITH_AS(FrameMsg::from_wire(header_edit([](auto& h) {
                         h["energy_indices"] = {1, 0, 2};
                         h["energies_eV"] = {1.0, 2.0, 3.0};
                         h.erase("i0");
                       })),
                       doctest::Contains("columns"), ProtocolError);
}

TEST_CASE("a header float of 2^64 or more survives encode → decode (fuzz_wire: msgpack-c's pack_double converted 2^64 to uint64)") {
  for (const double d : {0x1p64, 0x1p64 * 3, 1e300, 0x1p63, 12.5}) {
    const nlohmann::json h = {{"value", d}};
    const auto b = encode_header(h);
    CHECK(decode_header(b.data(), b.size()).at("value").get<double>() == d);
  }
}

// Result products (xanesd/protocol/products.hpp): a small maps/fractions and clusters, as the
// daemon would publish them for a 2×3 image fitted with 2 references.
MapHeader sample_map_header() {
  return {.scan_id = "s1", .version = 4, .time_unix = 1.7e9, .rows = 2, .cols = 3, .frames_applied = 9,
          .last_seq = 8, .energies_measured = 9, .final = true};
}
FractionsProduct sample_fractions() {
  const std::vector<float> f = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f};
  const std::vector<float> sigma(12, 0.01f), neighbours = {1, 2, 3, 4, 5, 6};
  const std::vector<std::uint8_t> mask = {1, 1, 1, 0, 1, 1};
  return {.map = sample_map_header(), .reference_names = {"Magnetite", "Goethite"}, .fit_method = "nnls",
          .mask_thickness_threshold = 0.05, .mask_valid_pixels = 5,
          .fractions = Array::from<float>("fractions", f, {2, 2, 3}),
          .fraction_sigma = Array::from<float>("fraction_sigma", sigma, {2, 2, 3}),
          .mask = Array::from<std::uint8_t>("mask", mask, {2, 3}),
          .spatial_neighbours = Array::from<float>("spatial_neighbours", neighbours, {2, 3})};
}
ClustersProduct sample_clusters() {
  const std::vector<double> mean = {0.1, 0.5, 1.0, 0.2, 0.6, 1.1}, err(6, 0.01);
  return {.map = sample_map_header(), .cluster_ids = {1, 2}, .pixels = {4, 2}, .unexplained = {2},
          .fractions = {{0.25, 0.75}, {}}, .fraction_sigma = {{0.01, 0.01}, {}},
          .thickness = {1.0, 0.5}, .residual = {0.01, 0.2}, .noise = {0.005, 0.006},
          .reference_names = {"Magnetite", "Goethite"}, .pca = {{"significant", 2}},
          .mean_spectra = Array::from<double>("mean_spectra", mean, {2, 3}),
          .stderr_spectra = Array::from<double>("stderr_spectra", err, {2, 3})};
}
ErrorProduct sample_error() {
  return {.scan_id = "s1", .code = "shape_mismatch", .message = "counts is 2×2, the scan is 2×3", .count = 3, .version = 7,
          .time_unix = 1.7e9};
}
// Through the wire and back: encode, decode, parse.
WireMessage over_the_wire(WireMessage&& m) { return decode(encode(std::move(m))); }

TEST_CASE("result products round-trip through the wire, typed") {
  const auto fr = FractionsProduct::from_wire(over_the_wire(sample_fractions().to_wire()));
  CHECK(fr.map.scan_id == "s1");
  CHECK(fr.map.version == 4);
  CHECK(fr.map.rows == 2);
  CHECK(fr.map.cols == 3);
  CHECK(fr.map.last_seq == 8);
  CHECK(fr.map.final);
  CHECK(fr.reference_names == std::vector<std::string>{"Magnetite", "Goethite"});
  CHECK(fr.mask_valid_pixels == 5);
  REQUIRE(fr.spatial_neighbours.has_value());
  CHECK(fr.fractions.at(6) == doctest::Approx(0.9));
  CHECK(fr.spatial_neighbours->at(5) == 6.0);

  const auto cl = ClustersProduct::from_wire(over_the_wire(sample_clusters().to_wire()));
  CHECK(cl.cluster_ids == std::vector<std::int64_t>{1, 2});
  CHECK(cl.fractions[0] == std::vector<double>{0.25, 0.75});
  CHECK(cl.fractions[1].empty());
  CHECK(cl.unexplained == std::vector<std::int64_t>{2});
  CHECK(cl.mean_spectra.at(5) == 1.1);

  const auto er = ErrorProduct::from_wire(over_the_wire(sample_error().to_wire()));
  CHECK(er.code == "shape_mismatch");
  CHECK(er.count == 3);

  const std::vector<float> t = {1, 2, 3, 4, 5, 6};
  const auto th = std::get<ThicknessProduct>(
      parse_product(over_the_wire(ThicknessProduct{sample_map_header(), Array::from<float>("thickness", t, {2, 3})}.to_wire())));
  CHECK(th.thickness.at(2) == 3.0);

  auto waiting = SegmentsProduct{.map = sample_map_header(), .waiting = "fewer than 5 energies measured"};
  const auto sg = std::get<SegmentsProduct>(parse_product(over_the_wire(std::move(waiting).to_wire())));
  CHECK(sg.waiting == "fewer than 5 energies measured");
  CHECK_FALSE(sg.segments.has_value());

  const auto st = StatusProduct::from_wire(over_the_wire(
      StatusProduct{.scan_id = "s1", .version = 4, .time_unix = 1.7e9, .state = "running",
                    .details = {{"scan", nullptr}, {"references", {"Magnetite"}}, {"ingest_queue", {{"depth", 0}}}}}
          .to_wire()));
  CHECK(st.state == "running");
  CHECK(st.details.at("ingest_queue").at("depth") == 0);
  CHECK_FALSE(st.details.contains("type"));

  const auto en = EnergiesProduct::from_wire(over_the_wire(
      EnergiesProduct{.scan_id = "s1", .version = 1, .time_unix = 1.7e9, .energies_eV = {7100, 7120.5, 7200},
                      .selection = {{"ok", true}, {"method", "rfe"}, {"energies_eV", {7100, 7120.5, 7200}}}}
          .to_wire()));
  CHECK(en.energies_eV == std::vector<double>{7100, 7120.5, 7200});
  CHECK(en.selection.at("method") == "rfe");
  CHECK_FALSE(en.selection.contains("ok"));
}

TEST_CASE("a product that breaks its contract is refused with the reason") {
  auto refused = [](WireMessage&& m, const std::string& why) {
    INFO(why);
    try {
      (void)parse_product(over_the_wire(std::move(m)));
      FAIL("accepted");
    } catch (const ProtocolError& e) {
      CHECK(std::string(e.what()).find(why) != std::string::npos);
    }
  };
  {  // K × rows × cols: a third reference name without its maps
    auto f = sample_fractions();
    f.reference_names.push_back("Pyrite");
    refused(std::move(f).to_wire(), "array 'fractions' must have shape 3×2×3");
  }
  {
    auto m = sample_fractions().to_wire();
    m.arrays.erase(m.arrays.begin() + 2);  // the mask
    refused(std::move(m), "no array 'mask'");
  }
  {
    auto m = sample_fractions().to_wire();
    m.header["spatial"] = false;
    refused(std::move(m), "'spatial' must say whether");
  }
  {
    auto m = sample_fractions().to_wire();
    m.header["rows"] = 3;
    refused(std::move(m), "must have shape");
  }
  {
    auto m = sample_fractions().to_wire();
    m.header["version"] = -1;
    refused(std::move(m), "version");
  }
  {
    auto m = sample_fractions().to_wire();
    m.header["final"] = 1;
    refused(std::move(m), "'final' must be true or false");
  }
  {
    auto c = sample_clusters();
    c.thickness.pop_back();
    refused(std::move(c).to_wire(), "one entry per cluster");
  }
  {
    auto c = sample_clusters();
    c.unexplained = {9};
    refused(std::move(c).to_wire(), "'unexplained' names a cluster id");
  }
  {
    auto c = sample_clusters();
    c.fractions[0].push_back(0.0);
    refused(std::move(c).to_wire(), "must hold 2 numbers or none");
  }
  {
    auto e = sample_error();
    e.count = 0;
    refused(std::move(e).to_wire(), "count");
  }
  {
    auto m = sample_error().to_wire();
    m.topic = "maps/unknown";
    refused(std::move(m), "unknown result topic");
  }
  {
    auto m = StatusProduct{.scan_id = "", .state = "sleeping", .details = {{"scan", nullptr}, {"references", nlohmann::json::array()}}}.to_wire();
    refused(std::move(m), "'state' must be");
  }
  {
    auto m = EnergiesProduct{.scan_id = "s1", .energies_eV = {7200, 7100}}.to_wire();
    refused(std::move(m), "must be sorted");
  }
}

// Control requests (xanesd/protocol/control.hpp): the golden table protocol/fixtures/
// control_requests.json lists valid requests and invalid ones with their code and reason; the
// Python tests read the same table.
TEST_CASE("control requests parse to typed arguments, or are refused with their code") {
  const auto table = nlohmann::json::parse(std::ifstream(test::source_dir() / "protocol" / "fixtures" / "control_requests.json"));
  REQUIRE(table.size() >= 30);
  for (const auto& row : table) {
    INFO(row.dump());
    if (row.at("ok").get<bool>()) {
      const auto r = ControlRequest::parse(row.at("request"));
      // to_json writes back exactly what was parsed: a client built from the types sends the same.
      CHECK(r.to_json() == row.at("request"));
      CHECK(ControlRequest::parse(r.to_json()).to_json() == r.to_json());
    } else {
      try {
        (void)ControlRequest::parse(row.at("request"));
        FAIL("accepted");
      } catch (const RequestError& e) {
        CHECK(e.code() == row.at("code").get<std::string>());
        CHECK(std::string(e.what()).find(row.at("error").get<std::string>()) != std::string::npos);
      }
    }
  }
  const auto sel = std::get<SelectEnergiesArgs>(ControlRequest::parse(nlohmann::json{{"cmd", "select_energies"}, {"n", "auto"}}).args);
  CHECK(sel.n_auto);
  CHECK_FALSE(sel.n.has_value());
  const auto px = std::get<PixelArgs>(ControlRequest::parse(nlohmann::json{{"cmd", "pixel"}, {"x", 1}, {"y", 12}}).args);
  CHECK(px.x == 1);
  CHECK(px.y == 12);
  CHECK_THROWS_AS(ControlRequest::parse(std::string_view("{not json")), RequestError);
}

TEST_CASE("control replies: the envelope around a command's own keys") {
  ControlReply failed;
  failed.ok = false, failed.error = "no scan to save", failed.request_id = 7;
  const auto j = failed.to_json();
  CHECK(j.at("ok") == false);
  CHECK(j.at("code") == "bad_control_request");
  CHECK(j.at("request_id") == 7);
  const auto back = ControlReply::from_json(j);
  CHECK(back.error == "no scan to save");
  CHECK(back.body.empty());
  const auto pixel = ControlReply::from_json(nlohmann::json::parse(std::ifstream(test::source_dir() / "protocol" / "fixtures" / "cpp_pixel.reply.json")));
  CHECK(pixel.ok);
  CHECK(pixel.body.contains("spectrum"));
  CHECK_THROWS_AS(ControlReply::from_json(nlohmann::json{{"ok", false}}), ProtocolError);  // a failure says why
  CHECK_THROWS_AS(ControlReply::from_json(nlohmann::json{{"ok", "yes"}}), ProtocolError);
}

// Golden fixtures: the Python module writes py_*.frames, this test writes cpp_*.frames when
// XANESD_WRITE_FIXTURES is set; both languages decode both sets against .expect.json.
TEST_CASE("golden fixtures decode to their expectations") {
  const auto dir = test::source_dir() / "protocol" / "fixtures";
  if (std::getenv("XANESD_WRITE_FIXTURES")) {
    auto f = sample_frame();
    const std::vector<std::uint16_t> i0 = {10, 20, 30, 40, 50, 60};
    f.i0 = Array::from<std::uint16_t>("i0", i0, {2, 3});
    write_frames_file(dir / "cpp_frame_rows.frames", encode(std::move(f).to_wire()));
    std::ofstream(dir / "cpp_frame_rows.expect.json")
        << nlohmann::json{{"topic", "frame"},
                          {"header", {{"type", "frame"}, {"scan_id", "s1"}, {"seq", 7}, {"energy_index", 3},
                                      {"energy_eV", 7112.5}, {"i0", 1234.5},
                                      {"region", {{"kind", "rows"}, {"row0", 2}, {"nrows", 2}}}}},
                          {"arrays", {{{"name", "counts"}, {"dtype", "float32"}, {"shape", {2, 3}}, {"values", {1, 2, 3, 4, 5, 6}}},
                                      {{"name", "i0"}, {"dtype", "uint16"}, {"shape", {2, 3}}, {"values", {10, 20, 30, 40, 50, 60}}}}}}
                             .dump(2);
    StopMsg st;
    st.scan_id = "s1";
    st.frames_sent = 12;
    write_frames_file(dir / "cpp_stop.frames", encode(std::move(st).to_wire()));
    // Result products: the expectations are the products' own headers and arrays.
    auto write_product = [&](const std::string& name, WireMessage&& m) {
      nlohmann::json arrays = nlohmann::json::array();
      for (const auto& a : m.arrays) {
        std::vector<double> values(a.size());
        a.convert_to(std::span<double>(values));
        arrays.push_back({{"name", a.name()}, {"dtype", to_string(a.dtype())}, {"shape", a.shape()}, {"values", values}});
      }
      const nlohmann::json expect = {{"topic", m.topic}, {"header", m.header}, {"arrays", arrays}};
      write_frames_file(dir / ("cpp_" + name + ".frames"), encode(std::move(m)));
      std::ofstream(dir / ("cpp_" + name + ".expect.json")) << expect.dump(2);
    };
    write_product("maps_fractions", sample_fractions().to_wire());
    write_product("clusters", sample_clusters().to_wire());
    write_product("errors", sample_error().to_wire());
    std::ofstream(dir / "cpp_stop.expect.json")
        << nlohmann::json{{"topic", "stop"}, {"header", {{"type", "stop"}, {"scan_id", "s1"}, {"reason", "completed"}, {"frames_sent", 12}}}, {"arrays", nlohmann::json::array()}}.dump(2);
  }
  int checked = 0, from_python = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".frames") continue;
    auto expect_path = entry.path();
    expect_path.replace_extension(".expect.json");
    REQUIRE(std::filesystem::exists(expect_path));
    INFO(entry.path().filename().string());
    auto frames = read_frames_file(entry.path());
    auto m = decode(copy_frames(frames));
    check_expectation(m, nlohmann::json::parse(std::ifstream(expect_path)));
    // The typed parsers accept them too.
    if (m.topic == "frame") CHECK_NOTHROW(FrameMsg::from_wire(decode(std::move(frames))));
    if (m.topic == "start") CHECK_NOTHROW(StartMsg::from_wire(decode(std::move(frames))));
    if (m.topic == "stop") CHECK_NOTHROW(StopMsg::from_wire(decode(std::move(frames))));
    if (std::ranges::find(product_topics(), m.topic) != product_topics().end())
      CHECK_NOTHROW(parse_product(decode(std::move(frames))));
    ++checked;
    from_python += entry.path().filename().string().rfind("py_", 0) == 0;
  }
  CHECK(checked >= 4);
  CHECK(from_python >= 3);
}

TEST_CASE("an array frame not aligned for its dtype converts to the values it holds") {
  // libzmq's zero-copy receive leaves a frame wherever it lies in its batch buffer: fuzz_control
  // found UBSan's misaligned load in Scan::apply on such a frame.
  alignas(8) static unsigned char buffer[1 + 6 * sizeof(float)];
  const float values[6] = {1, 2, 3, 4, 5, 6};
  std::memcpy(buffer + 1, values, sizeof values);
  zmq::message_t frame(buffer + 1, sizeof values, [](void*, void*) {}, nullptr);  // no copy: misaligned
  const xanesd::protocol::Array a("counts", xanesd::protocol::DType::float32, {2, 3}, true, std::move(frame));
  std::vector<float> out(6);
  a.convert_to(std::span<float>(out));
  CHECK(out == std::vector<float>(values, values + 6));
  CHECK(a.at(4) == 5.0);
}
