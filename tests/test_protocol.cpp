// Wire protocol: round trips for every dtype and byte order, rejection of malformed messages,
// and the golden fixtures shared with the Python implementation.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>

#include "support.hpp"
#include "xanesd/protocol/messages.hpp"

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
  for (const auto& [k, v] : expect.at("header").items()) {
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

TEST_CASE("a header float of 2^64 or more survives encode → decode (fuzz_wire: msgpack-c's pack_double converted 2^64 to uint64)") {
  for (const double d : {0x1p64, 0x1p64 * 3, 1e300, 0x1p63, 12.5}) {
    const nlohmann::json h = {{"value", d}};
    const auto b = encode_header(h);
    CHECK(decode_header(b.data(), b.size()).at("value").get<double>() == d);
  }
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
