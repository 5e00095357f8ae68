#include "xanesd/protocol/messages.hpp"

#include <cstring>

namespace xanesd::protocol {
namespace {

void expect_type(const WireMessage& m, const char* type) {
  if (m.topic != type) throw ProtocolError("topic '" + m.topic + "' is not '" + type + "'");
  if (require_string(m.header, "type") != type)
    throw ProtocolError("header type '" + m.header["type"].get<std::string>() + "' does not match topic '" + type + "'");
}

void expect_rank(const Array& a, std::size_t rank) {
  if (a.shape().size() != rank)
    throw ProtocolError("array '" + a.name() + "' must have " + std::to_string(rank) + " dimension(s), has " +
                        std::to_string(a.shape().size()));
}

}  // namespace

std::string to_string(Mode m) { return m == Mode::fluorescence ? "fluorescence" : "transmission"; }
std::string to_string(Order o) { return o == Order::energy_major ? "energy-major" : "pixel-major"; }
Mode mode_from_string(const std::string& s) {
  if (s == "fluorescence") return Mode::fluorescence;
  if (s == "transmission") return Mode::transmission;
  throw ProtocolError("mode must be 'fluorescence' or 'transmission', got '" + s + "'");
}
Order order_from_string(const std::string& s) {
  if (s == "energy-major") return Order::energy_major;
  if (s == "pixel-major") return Order::pixel_major;
  throw ProtocolError("order must be 'energy-major' or 'pixel-major', got '" + s + "'");
}

WireMessage StartMsg::to_wire() && {
  WireMessage m;
  m.topic = "start";
  m.header = {{"type", "start"},          {"scan_id", scan_id},       {"shape", {rows, cols}},
              {"energies_eV", energies_eV}, {"mode", to_string(mode)}, {"order", to_string(order)},
              {"xrf_channels", xrf_channels}};
  if (extend) m.header["extend"] = true;
  if (!references.empty()) m.header["references"] = references;
  if (!metadata.empty()) m.header["metadata"] = metadata;
  if (dark) m.arrays.push_back(std::move(*dark));
  if (flat) m.arrays.push_back(std::move(*flat));
  return m;
}

StartMsg StartMsg::from_wire(WireMessage&& m) {
  expect_type(m, "start");
  StartMsg s;
  s.scan_id = require_string(m.header, "scan_id");
  if (s.scan_id.empty() || s.scan_id.size() > 200) throw ProtocolError("scan_id must have 1 to 200 characters");
  const auto& shape = require(m.header, "shape");
  if (!shape.is_array() || shape.size() != 2) throw ProtocolError("'shape' must be [rows, cols]");
  s.rows = static_cast<int>(checked_int(shape[0], "'shape' rows", 1, kMaxPixels));
  s.cols = static_cast<int>(checked_int(shape[1], "'shape' cols", 1, kMaxPixels));
  if (static_cast<std::int64_t>(s.rows) * s.cols > kMaxPixels) throw ProtocolError("'shape' must have at most 2^26 pixels");
  const auto& e = require(m.header, "energies_eV");
  if (!e.is_array() || e.empty() || e.size() > static_cast<std::size_t>(kMaxEnergies)) throw ProtocolError("'energies_eV' must be a list of 1 to 4096 numbers");
  for (const auto& v : e) {
    if (!v.is_number()) throw ProtocolError("'energies_eV' must hold numbers");
    s.energies_eV.push_back(v.get<double>());
  }
  s.mode = mode_from_string(require_string(m.header, "mode"));
  if (m.header.contains("order")) s.order = order_from_string(require_string(m.header, "order"));
  if (m.header.contains("xrf_channels")) {
    const auto& x = m.header["xrf_channels"];
    if (!x.is_array()) throw ProtocolError("'xrf_channels' must be a list of names");
    for (const auto& v : x) {
      if (!v.is_string()) throw ProtocolError("'xrf_channels' must be a list of names");
      s.xrf_channels.push_back(v.get<std::string>());
    }
  }
  if (m.header.contains("extend")) {
    if (!m.header["extend"].is_boolean()) throw ProtocolError("'extend' must be true or false");
    s.extend = m.header["extend"].get<bool>();
  }
  if (m.header.contains("references")) {  // one name or path, or a list of them
    const auto& r = m.header["references"];
    const auto bad = "'references' must be a name or file path, or a list of 1 to 256 of them";
    if (r.is_string()) s.references.push_back(r.get<std::string>());
    else if (r.is_array() && !r.empty() && r.size() <= 256)
      for (const auto& v : r) {
        if (!v.is_string()) throw ProtocolError(bad);
        s.references.push_back(v.get<std::string>());
      }
    else throw ProtocolError(bad);
    for (const auto& v : s.references)
      if (v.empty() || v.size() > 4096) throw ProtocolError(bad);
  }
  if (m.header.contains("metadata")) {
    auto& md = m.header["metadata"];
    if (!md.is_object() || md.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).size() > 65536)
      throw ProtocolError("'metadata' must be a map of at most 64 KiB");
    s.metadata = std::move(md);
  }
  s.dark = m.take("dark");
  s.flat = m.take("flat");
  for (auto* a : {&s.dark, &s.flat}) {
    if (!*a) continue;
    if ((*a)->shape() != std::vector<std::int64_t>{s.rows, s.cols})
      throw ProtocolError("start array '" + (*a)->name() + "' must be rows×cols");
  }
  return s;
}

WireMessage FrameMsg::to_wire() && {
  WireMessage m;
  m.topic = "frame";
  nlohmann::json region;
  switch (this->region.kind) {
    case Region::Kind::full: region = {{"kind", "full"}}; break;
    case Region::Kind::rows: region = {{"kind", "rows"}, {"row0", this->region.row0}, {"nrows", this->region.nrows}}; break;
    case Region::Kind::pixels: region = {{"kind", "pixels"}}; break;
  }
  m.header = {{"type", "frame"}, {"scan_id", scan_id}, {"seq", seq}, {"region", region}};
  if (spectra()) {
    m.header["energy_indices"] = energy_indices;
    m.header["energies_eV"] = energies_eV;
  } else {
    m.header["energy_index"] = energy_index;
    m.header["energy_eV"] = energy_eV;
  }
  if (!i0_scalars.empty()) m.header["i0"] = i0_scalars;
  else if (i0_scalar) m.header["i0"] = *i0_scalar;
  m.arrays.push_back(std::move(counts));
  for (auto* a : {&i0, &dark, &flat, &pixels, &xrf})
    if (*a) m.arrays.push_back(std::move(**a));
  return m;
}

FrameMsg FrameMsg::from_wire(WireMessage&& m) {
  expect_type(m, "frame");
  FrameMsg f;
  f.scan_id = require_string(m.header, "scan_id");
  f.seq = require_int_in(m.header, "seq", 0, kMaxSeq);
  if (m.header.contains("energy_indices")) {  // a spectra batch
    if (m.header.contains("energy_index") || m.header.contains("energy_eV"))
      throw ProtocolError("a frame has either 'energy_index' and 'energy_eV' or 'energy_indices' and 'energies_eV'");
    const auto& idx = require(m.header, "energy_indices");
    const auto& ev = require(m.header, "energies_eV");
    if (!idx.is_array() || idx.empty() || idx.size() > static_cast<std::size_t>(kMaxEnergies))
      throw ProtocolError("'energy_indices' must be a list of 1 to 4096 integers");
    if (!ev.is_array() || ev.size() != idx.size())
      throw ProtocolError("'energies_eV' must be a list as long as 'energy_indices'");
    for (std::size_t j = 0; j < idx.size(); ++j) {
      f.energy_indices.push_back(static_cast<int>(checked_int(idx[j], "'energy_indices' entry", 0, kMaxEnergies - 1)));
      if (!ev[j].is_number()) throw ProtocolError("'energies_eV' must hold numbers");
      f.energies_eV.push_back(ev[j].get<double>());
    }
    f.energy_index = f.energy_indices.front();
    f.energy_eV = f.energies_eV.front();
  } else {
    f.energy_index = static_cast<int>(require_int_in(m.header, "energy_index", 0, kMaxEnergies - 1));
    f.energy_eV = require_number(m.header, "energy_eV");
  }
  const auto& r = require(m.header, "region");
  const auto kind = require_string(r, "kind");
  if (kind == "full") {
    f.region.kind = Region::Kind::full;
  } else if (kind == "rows") {
    f.region.kind = Region::Kind::rows;
    // Each bounded before they are added: row0 + nrows cannot overflow.
    const auto row0 = require_int_in(r, "row0", 0, kMaxPixels - 1), nrows = require_int_in(r, "nrows", 1, kMaxPixels);
    if (row0 + nrows > kMaxPixels) throw ProtocolError("region rows out of range");
    f.region.row0 = static_cast<int>(row0);
    f.region.nrows = static_cast<int>(nrows);
  } else if (kind == "pixels") {
    f.region.kind = Region::Kind::pixels;
  } else {
    throw ProtocolError("region kind must be 'full', 'rows' or 'pixels', got '" + kind + "'");
  }
  if (m.header.contains("i0")) {
    const auto& v = m.header["i0"];
    if (f.spectra() && v.is_array()) {
      if (v.size() != f.energy_indices.size()) throw ProtocolError("'i0' as a list must have one number per energy");
      for (const auto& x : v) {
        if (!x.is_number()) throw ProtocolError("'i0' must hold numbers");
        f.i0_scalars.push_back(x.get<double>());
      }
    } else {
      f.i0_scalar = require_number(m.header, "i0");
    }
  }
  auto counts = m.take("counts");
  if (!counts) throw ProtocolError("frame has no 'counts' array");
  f.counts = std::move(*counts);
  f.i0 = m.take("i0");
  f.dark = m.take("dark");
  f.flat = m.take("flat");
  f.pixels = m.take("pixels");
  f.xrf = m.take("xrf");
  // Shape rules that need no scan context; the service checks them against the scan's shape.
  if (f.spectra()) {
    if (f.region.kind != Region::Kind::pixels) throw ProtocolError("a spectra batch ('energy_indices') needs region kind 'pixels'");
    expect_rank(f.counts, 2);
    if (f.counts.shape()[1] != static_cast<std::int64_t>(f.energy_indices.size()))
      throw ProtocolError("counts has " + std::to_string(f.counts.shape()[1]) + " columns, 'energy_indices' lists " +
                          std::to_string(f.energy_indices.size()) + " energies (counts is pixels × energies)");
    if (!f.pixels) throw ProtocolError("region 'pixels' needs a 'pixels' array");
    expect_rank(*f.pixels, 1);
    if (f.pixels->dtype() == DType::float32 || f.pixels->dtype() == DType::float64)
      throw ProtocolError("'pixels' must have an integer dtype (uint32 or int64), got " + to_string(f.pixels->dtype()));
    if (f.pixels->shape()[0] != f.counts.shape()[0]) throw ProtocolError("'pixels' and the rows of 'counts' differ in length");
    for (auto* a : {&f.i0, &f.dark, &f.flat})
      if (*a && (*a)->shape() != f.counts.shape()) throw ProtocolError("array '" + (*a)->name() + "' must have the shape of 'counts'");
    if (f.xrf && (f.xrf->shape().size() != 2 || f.xrf->shape()[1] != f.counts.shape()[0]))
      throw ProtocolError("'xrf' of a spectra batch must be channels × pixels");
    return f;
  }
  const std::size_t rank = f.region.kind == Region::Kind::pixels ? 1 : 2;
  expect_rank(f.counts, rank);
  if (f.region.kind == Region::Kind::rows && f.counts.shape()[0] != f.region.nrows)
    throw ProtocolError("counts has " + std::to_string(f.counts.shape()[0]) + " rows, region says " +
                        std::to_string(f.region.nrows));
  if (f.region.kind == Region::Kind::pixels) {
    if (!f.pixels) throw ProtocolError("region 'pixels' needs a 'pixels' array");
    expect_rank(*f.pixels, 1);
    if (f.pixels->dtype() == DType::float32 || f.pixels->dtype() == DType::float64)
      throw ProtocolError("'pixels' must have an integer dtype (uint32 or int64), got " + to_string(f.pixels->dtype()));
    if (f.pixels->size() != f.counts.size()) throw ProtocolError("'pixels' and 'counts' differ in length");
  } else if (f.pixels) {
    throw ProtocolError("a 'pixels' array is only allowed with region kind 'pixels'");
  }
  for (auto* a : {&f.i0, &f.dark, &f.flat}) {
    if (*a && (*a)->shape() != f.counts.shape())
      throw ProtocolError("array '" + (*a)->name() + "' must have the shape of 'counts'");
  }
  if (f.xrf) {
    if (f.xrf->shape().size() != rank + 1) throw ProtocolError("'xrf' must be channels × region");
    if (!std::equal(f.counts.shape().begin(), f.counts.shape().end(), f.xrf->shape().begin() + 1))
      throw ProtocolError("'xrf' must be channels × (shape of counts)");
  }
  return f;
}

WireMessage StopMsg::to_wire() && {
  WireMessage m;
  m.topic = "stop";
  m.header = {{"type", "stop"}, {"scan_id", scan_id}, {"reason", reason}};
  if (frames_sent) m.header["frames_sent"] = *frames_sent;
  return m;
}

StopMsg StopMsg::from_wire(WireMessage&& m) {
  expect_type(m, "stop");
  StopMsg s;
  s.scan_id = require_string(m.header, "scan_id");
  if (m.header.contains("reason")) s.reason = require_string(m.header, "reason");
  if (s.reason != "completed" && s.reason != "aborted")
    throw ProtocolError("stop reason must be 'completed' or 'aborted'");
  if (m.header.contains("frames_sent")) s.frames_sent = require_int_in(m.header, "frames_sent", 0, kMaxSeq);
  return s;
}

namespace {
// Column j of an N × E' array as an array of N (any dtype and byte order: bytes are copied).
Array column(const Array& a, std::size_t j) {
  const std::size_t n = static_cast<std::size_t>(a.shape()[0]), cols = static_cast<std::size_t>(a.shape()[1]);
  const std::size_t w = itemsize(a.dtype());
  zmq::message_t out(n * w);
  auto* dst = static_cast<std::byte*>(out.data());
  const std::byte* src = a.bytes() + j * w;
  for (std::size_t i = 0; i < n; ++i) std::memcpy(dst + i * w, src + i * cols * w, w);
  return Array(a.name(), a.dtype(), {static_cast<std::int64_t>(n)}, a.little_endian(), std::move(out));
}
// A view of `a` (no copy: a ZeroMQ message without a free function), valid while `a` lives.
Array view_of(const Array& a) {
  return Array(a.name(), a.dtype(), a.shape(), a.little_endian(),
               zmq::message_t(const_cast<std::byte*>(a.bytes()), a.nbytes(), nullptr, nullptr));
}
}  // namespace

std::vector<FrameMsg> FrameMsg::per_energy() const {
  std::vector<FrameMsg> out;
  for (std::size_t j = 0; j < energy_indices.size(); ++j) {
    FrameMsg f;
    f.scan_id = scan_id, f.seq = seq, f.region = region;
    f.energy_index = energy_indices[j], f.energy_eV = energies_eV[j];
    f.i0_scalar = i0_scalars.empty() ? i0_scalar : std::optional<double>(i0_scalars[j]);
    f.counts = column(counts, j);
    if (i0) f.i0 = column(*i0, j);
    if (dark) f.dark = column(*dark, j);
    if (flat) f.flat = column(*flat, j);
    if (pixels) f.pixels = view_of(*pixels);
    if (xrf && j == 0) f.xrf = view_of(*xrf);
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace xanesd::protocol
