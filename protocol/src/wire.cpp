#include "xanesd/protocol/wire.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <sstream>

#include <msgpack.hpp>

namespace xanesd::protocol {
namespace {

struct DTypeInfo {
  DType type;
  const char* name;
  std::size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::uint8, "uint8", 1},     {DType::uint16, "uint16", 2},   {DType::uint32, "uint32", 4},
    {DType::uint64, "uint64", 8},   {DType::int16, "int16", 2},     {DType::int32, "int32", 4},
    {DType::int64, "int64", 8},     {DType::float32, "float32", 4}, {DType::float64, "float64", 8},
};

const DTypeInfo& info(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d;
  throw ProtocolError("unknown dtype");
}

// Header limits: a header is metadata; anything this large is an attack or a bug.
constexpr std::size_t kMaxHeaderBytes = 1 << 20;
constexpr int kMaxDepth = 16;

nlohmann::json to_json(const msgpack::object& o, int depth) {
  if (depth > kMaxDepth) throw ProtocolError("header nests too deeply");
  switch (o.type) {
    case msgpack::type::NIL: return nullptr;
    case msgpack::type::BOOLEAN: return o.via.boolean;
    case msgpack::type::POSITIVE_INTEGER: return o.via.u64;
    case msgpack::type::NEGATIVE_INTEGER: return o.via.i64;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return o.via.f64;
    case msgpack::type::STR: return std::string(o.via.str.ptr, o.via.str.size);
    case msgpack::type::BIN: return std::string(o.via.bin.ptr, o.via.bin.size);
    case msgpack::type::ARRAY: {
      auto a = nlohmann::json::array();
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) a.push_back(to_json(o.via.array.ptr[i], depth + 1));
      return a;
    }
    case msgpack::type::MAP: {
      auto m = nlohmann::json::object();
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        const auto& kv = o.via.map.ptr[i];
        if (kv.key.type != msgpack::type::STR) throw ProtocolError("header map key is not a string");
        m[std::string(kv.key.via.str.ptr, kv.key.via.str.size)] = to_json(kv.val, depth + 1);
      }
      return m;
    }
    default: throw ProtocolError("unsupported msgpack type in header");
  }
}

// A double as msgpack float64, written to the buffer directly. msgpack-c's pack_double first
// tries an integer encoding for integral values up to double(UINT64_MAX), which rounds up to
// 2^64, so for 2^64 itself it converts out of range (undefined behaviour; fuzz_wire found it
// under UBSan). Only values it would mis-handle come here.
void pack_float64(msgpack::sbuffer& buf, double d) {
  const auto bits = std::bit_cast<std::uint64_t>(d);
  char bytes[9] = {static_cast<char>(0xcb)};
  for (int i = 0; i < 8; ++i) bytes[1 + i] = static_cast<char>((bits >> (56 - 8 * i)) & 0xffu);
  buf.write(bytes, sizeof bytes);
}

void pack_json(msgpack::sbuffer& buf, msgpack::packer<msgpack::sbuffer>& pk, const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: pk.pack_nil(); break;
    case nlohmann::json::value_t::boolean: pk.pack(j.get<bool>()); break;
    case nlohmann::json::value_t::number_integer: pk.pack(j.get<std::int64_t>()); break;
    case nlohmann::json::value_t::number_unsigned: pk.pack(j.get<std::uint64_t>()); break;
    case nlohmann::json::value_t::number_float: {
      const double d = j.get<double>();
      if (d >= 0x1p64) pack_float64(buf, d);  // beyond every uint64 (see pack_float64)
      else pk.pack(d);
      break;
    }
    case nlohmann::json::value_t::string: pk.pack(j.get_ref<const std::string&>()); break;
    case nlohmann::json::value_t::array:
      pk.pack_array(static_cast<std::uint32_t>(j.size()));
      for (const auto& v : j) pack_json(buf, pk, v);
      break;
    case nlohmann::json::value_t::object:
      pk.pack_map(static_cast<std::uint32_t>(j.size()));
      for (const auto& [k, v] : j.items()) {
        pk.pack(k);
        pack_json(buf, pk, v);
      }
      break;
    default: throw ProtocolError("header value cannot be encoded");
  }
}

template <class T>
T load(const std::byte* p, bool swap) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  if (swap) {
    auto* b = reinterpret_cast<unsigned char*>(&v);
    for (std::size_t i = 0; i < sizeof(T) / 2; ++i) std::swap(b[i], b[sizeof(T) - 1 - i]);
  }
  return v;
}

template <class Out>
void convert_all(const Array& a, std::span<Out> out, bool swap) {
  if (out.size() != a.size()) throw ProtocolError("array '" + a.name() + "': output size mismatch");
  const std::byte* p = a.bytes();
  const std::size_t n = a.size();
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (!swap && reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0) {
      const T* src = reinterpret_cast<const T*>(p);
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(src[i]);
    } else {  // byte-swapped, or a frame not aligned for T: libzmq's zero-copy receive leaves a
              // frame wherever it lies in its batch buffer (fuzz_control found it under UBSan)
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<Out>(load<T>(p + i * sizeof(T), swap));
    }
  };
  switch (a.dtype()) {
    case DType::uint8: run(std::uint8_t{}); break;
    case DType::uint16: run(std::uint16_t{}); break;
    case DType::uint32: run(std::uint32_t{}); break;
    case DType::uint64: run(std::uint64_t{}); break;
    case DType::int16: run(std::int16_t{}); break;
    case DType::int32: run(std::int32_t{}); break;
    case DType::int64: run(std::int64_t{}); break;
    case DType::float32: run(float{}); break;
    case DType::float64: run(double{}); break;
  }
}

}  // namespace

std::size_t itemsize(DType t) { return info(t).size; }
std::string to_string(DType t) { return info(t).name; }
DType dtype_from_string(const std::string& s) {
  for (const auto& d : kDTypes)
    if (s == d.name) return d.type;
  throw ProtocolError("unknown dtype '" + s + "'");
}

Array::Array(std::string name, DType dtype, std::vector<std::int64_t> shape, bool little_endian,
             zmq::message_t data)
    : name_(std::move(name)), dtype_(dtype), shape_(std::move(shape)), little_endian_(little_endian),
      data_(std::move(data)) {
  for (auto d : shape_)
    if (d < 0) throw ProtocolError("array '" + name_ + "': negative dimension");
  if (size() > std::numeric_limits<std::size_t>::max() / itemsize(dtype_))
    throw ProtocolError("array '" + name_ + "': shape overflows");
  if (size() * itemsize(dtype_) != data_.size())
    throw ProtocolError("array '" + name_ + "': frame has " + std::to_string(data_.size()) +
                        " bytes, descriptor " + to_string(dtype_) + " shape needs " +
                        std::to_string(size() * itemsize(dtype_)));
}

std::size_t Array::size() const {
  std::size_t n = 1;
  for (auto d : shape_) {
    if (d > 0 && n > std::numeric_limits<std::size_t>::max() / static_cast<std::size_t>(d))
      throw ProtocolError("array '" + name_ + "': shape overflows");
    n *= static_cast<std::size_t>(d);
  }
  return n;
}

bool Array::native_order() const {
  return itemsize(dtype_) == 1 || little_endian_ == (std::endian::native == std::endian::little);
}

double Array::at(std::size_t i) const {
  const std::byte* p = bytes() + i * itemsize(dtype_);
  const bool swap = !native_order();
  switch (dtype_) {
    case DType::uint8: return load<std::uint8_t>(p, false);
    case DType::uint16: return load<std::uint16_t>(p, swap);
    case DType::uint32: return load<std::uint32_t>(p, swap);
    case DType::uint64: return static_cast<double>(load<std::uint64_t>(p, swap));
    case DType::int16: return load<std::int16_t>(p, swap);
    case DType::int32: return load<std::int32_t>(p, swap);
    case DType::int64: return static_cast<double>(load<std::int64_t>(p, swap));
    case DType::float32: return load<float>(p, swap);
    case DType::float64: return load<double>(p, swap);
  }
  return 0;
}

void Array::convert_to(std::span<float> out) const { convert_all(*this, out, !native_order()); }
void Array::convert_to(std::span<double> out) const { convert_all(*this, out, !native_order()); }
void Array::convert_to(std::span<std::int64_t> out) const {
  if (dtype_ == DType::float32 || dtype_ == DType::float64)
    throw ProtocolError("array '" + name_ + "': expected an integer dtype, got " + to_string(dtype_));
  convert_all(*this, out, !native_order());
}

nlohmann::json Array::descriptor() const {
  return {{"name", name_},
          {"dtype", to_string(dtype_)},
          {"shape", shape_},
          {"byteorder", itemsize(dtype_) == 1 ? "|" : (little_endian_ ? "<" : ">")}};
}

const Array* WireMessage::find(const std::string& name) const {
  for (const auto& a : arrays)
    if (a.name() == name) return &a;
  return nullptr;
}

std::optional<Array> WireMessage::take(const std::string& name) {
  for (auto& a : arrays)
    if (a.name() == name) return std::move(a);
  return std::nullopt;
}

std::vector<std::uint8_t> encode_header(const nlohmann::json& header) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pack_json(buf, pk, header);
  return {reinterpret_cast<const std::uint8_t*>(buf.data()),
          reinterpret_cast<const std::uint8_t*>(buf.data()) + buf.size()};
}

nlohmann::json decode_header(const void* data, std::size_t size) {
  if (size > kMaxHeaderBytes) throw ProtocolError("header larger than 1 MiB");
  try {
    const msgpack::unpack_limit limit(/*array*/ 1 << 16, /*map*/ 1 << 12, /*str*/ 1 << 16,
                                      /*bin*/ 1 << 16, /*ext*/ 1 << 10, /*depth*/ kMaxDepth);
    std::size_t offset = 0;
    msgpack::object_handle oh =
        msgpack::unpack(static_cast<const char*>(data), size, offset, nullptr, nullptr, limit);
    if (offset != size) throw ProtocolError("header has trailing bytes after the msgpack map");
    if (oh.get().type != msgpack::type::MAP) throw ProtocolError("header is not a msgpack map");
    return to_json(oh.get(), 0);
  } catch (const ProtocolError&) {
    throw;
  } catch (const std::exception& e) {
    throw ProtocolError(std::string("malformed msgpack header: ") + e.what());
  }
}

std::vector<zmq::message_t> encode(WireMessage&& msg) {
  msg.header["protocol"] = kProtocolVersion;
  auto descs = nlohmann::json::array();
  for (const auto& a : msg.arrays) descs.push_back(a.descriptor());
  msg.header["arrays"] = std::move(descs);
  std::vector<zmq::message_t> frames;
  frames.reserve(2 + msg.arrays.size());
  frames.emplace_back(msg.topic.data(), msg.topic.size());
  const auto h = encode_header(msg.header);
  frames.emplace_back(h.data(), h.size());
  for (auto& a : msg.arrays) frames.push_back(std::move(a.frame()));
  return frames;
}

WireMessage decode(std::vector<zmq::message_t>&& frames) {
  if (frames.size() < 2)
    throw ProtocolError("message has " + std::to_string(frames.size()) + " frame(s); need topic and header");
  WireMessage m;
  m.topic = frames[0].to_string();
  m.header = decode_header(frames[1].data(), frames[1].size());
  const auto& version = require(m.header, "protocol");
  if (!version.is_number_integer() || version.get<std::int64_t>() != kProtocolVersion)
    throw ProtocolError("unsupported protocol version " + quoted(version) + " (this is version " +
                        std::to_string(kProtocolVersion) + ")");
  const nlohmann::json empty = nlohmann::json::array();
  const auto& descs = m.header.contains("arrays") ? m.header["arrays"] : empty;
  if (!descs.is_array()) throw ProtocolError("'arrays' is not a list");
  if (descs.size() != frames.size() - 2)
    throw ProtocolError("header describes " + std::to_string(descs.size()) + " array(s) but " +
                        std::to_string(frames.size() - 2) + " array frame(s) follow");
  for (std::size_t i = 0; i < descs.size(); ++i) {
    const auto& d = descs[i];
    if (!d.is_object()) throw ProtocolError("array descriptor " + std::to_string(i) + " is not a map");
    const auto name = require_string(d, "name");
    const auto dtype = dtype_from_string(require_string(d, "dtype"));
    const auto& shape_j = require(d, "shape");
    if (!shape_j.is_array() || shape_j.size() > 8)
      throw ProtocolError("array '" + name + "': shape must be a list of at most 8 ints");
    std::vector<std::int64_t> shape;
    for (const auto& s : shape_j)
      shape.push_back(checked_int(s, "array '" + name + "': shape entry", 0, std::numeric_limits<std::int64_t>::max()));
    // byteorder is optional (default '<'); '|' ("not applicable") only for 1-byte types.
    const std::string bo = d.contains("byteorder") ? require_string(d, "byteorder") : "<";
    if (bo != "<" && bo != ">" && !(bo == "|" && itemsize(dtype) == 1))
      throw ProtocolError("array '" + name + "': byteorder must be '<' or '>' ('|' only for 1-byte dtypes), got '" + bo + "'");
    const bool little = bo != ">";
    m.arrays.emplace_back(name, dtype, std::move(shape), little, std::move(frames[i + 2]));
  }
  return m;
}

bool send(zmq::socket_ref socket, WireMessage&& msg, bool dontwait) {
  auto frames = encode(std::move(msg));
  // The first part decides: ZeroMQ queues a multipart message atomically, so once part one
  // is accepted the remaining parts are too.
  for (std::size_t i = 0; i < frames.size(); ++i) {
    auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
    if (dontwait) flags = flags | zmq::send_flags::dontwait;
    if (!socket.send(frames[i], flags)) return false;
  }
  return true;
}

const nlohmann::json& require(const nlohmann::json& header, const char* key) {
  if (!header.is_object() || !header.contains(key)) throw ProtocolError(std::string("missing key '") + key + "'");
  return header.at(key);
}
std::string require_string(const nlohmann::json& header, const char* key) {
  const auto& v = require(header, key);
  if (!v.is_string()) throw ProtocolError(std::string("key '") + key + "' must be a string");
  return v.get<std::string>();
}
std::string quoted(const nlohmann::json& v) {
  constexpr std::size_t kMax = 64;
  auto s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > kMax) s = s.substr(0, kMax) + "…";
  return s;
}

std::string number_text(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

std::int64_t checked_int(const nlohmann::json& v, const std::string& what, std::int64_t lo, std::int64_t hi) {
  if (!v.is_number_integer()) throw ProtocolError(what + " must be an integer");
  // A uint64 above INT64_MAX is out of range, never wrapped into a negative int64.
  const bool fits = !v.is_number_unsigned() || v.get<std::uint64_t>() <= static_cast<std::uint64_t>(INT64_MAX);
  if (!fits || v.get<std::int64_t>() < lo || v.get<std::int64_t>() > hi)
    throw ProtocolError(what + " = " + quoted(v) + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v.get<std::int64_t>();
}
std::int64_t require_int(const nlohmann::json& header, const char* key) {
  return require_int_in(header, key, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max());
}
std::int64_t require_int_in(const nlohmann::json& header, const char* key, std::int64_t lo, std::int64_t hi) {
  return checked_int(require(header, key), std::string("key '") + key + "'", lo, hi);
}
double require_number(const nlohmann::json& header, const char* key) {
  const auto& v = require(header, key);
  if (!v.is_number()) throw ProtocolError(std::string("key '") + key + "' must be a number");
  return v.get<double>();
}

}  // namespace xanesd::protocol
