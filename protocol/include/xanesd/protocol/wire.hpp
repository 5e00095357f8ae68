// The generic layer of the xanesd wire protocol (PROTOCOL.md): a message is a topic frame,
// a msgpack header map and raw array frames described by the header's `arrays` list.
// Headers are held as nlohmann::json in memory; msgpack-c does the wire encoding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

namespace xanesd::protocol {

inline constexpr int kProtocolVersion = 1;

// Thrown for any message that does not follow PROTOCOL.md; what() names the offending field.
class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class DType { uint8, uint16, uint32, uint64, int16, int32, int64, float32, float64 };

std::size_t itemsize(DType t);
std::string to_string(DType t);
DType dtype_from_string(const std::string& s);  // throws ProtocolError

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::uint8; }
template <> constexpr DType dtype_of<std::uint16_t>() { return DType::uint16; }
template <> constexpr DType dtype_of<std::uint32_t>() { return DType::uint32; }
template <> constexpr DType dtype_of<std::uint64_t>() { return DType::uint64; }
template <> constexpr DType dtype_of<std::int16_t>() { return DType::int16; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::int32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::int64; }
template <> constexpr DType dtype_of<float>() { return DType::float32; }
template <> constexpr DType dtype_of<double>() { return DType::float64; }

// An n-dimensional array carried in its own ZeroMQ frame. Owns the frame; never copies it
// on receive.
class Array {
 public:
  Array() = default;
  Array(std::string name, DType dtype, std::vector<std::int64_t> shape, bool little_endian,
        zmq::message_t data);

  // Copies `values` into a new little-endian frame.
  template <class T>
  static Array from(std::string name, std::span<const T> values, std::vector<std::int64_t> shape) {
    return Array(std::move(name), dtype_of<T>(), std::move(shape), true,
                 zmq::message_t(values.data(), values.size_bytes()));
  }

  const std::string& name() const { return name_; }
  DType dtype() const { return dtype_; }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  bool little_endian() const { return little_endian_; }
  std::size_t size() const;  // number of elements
  const std::byte* bytes() const { return static_cast<const std::byte*>(data_.data()); }
  std::size_t nbytes() const { return data_.size(); }

  // Element i converted to double (any dtype, any byte order).
  double at(std::size_t i) const;
  // All elements converted; the output span must hold size() elements.
  void convert_to(std::span<float> out) const;
  void convert_to(std::span<double> out) const;
  void convert_to(std::span<std::int64_t> out) const;
  // A zero-copy view when dtype and byte order already match T on this machine, else empty.
  template <class T>
  std::span<const T> native_view() const {
    if (dtype_ != dtype_of<T>() || !native_order()) return {};
    return {reinterpret_cast<const T*>(data_.data()), size()};
  }

  nlohmann::json descriptor() const;
  zmq::message_t& frame() { return data_; }
  const zmq::message_t& frame() const { return data_; }

 private:
  bool native_order() const;
  std::string name_;
  DType dtype_ = DType::float32;
  std::vector<std::int64_t> shape_;
  bool little_endian_ = true;
  zmq::message_t data_;
};

struct WireMessage {
  std::string topic;
  nlohmann::json header = nlohmann::json::object();  // `arrays` is filled in by encode()
  std::vector<Array> arrays;

  // The array called `name`, or nullptr.
  const Array* find(const std::string& name) const;
  // The array called `name` moved out of the message, or nullopt.
  std::optional<Array> take(const std::string& name);
};

// msgpack <-> JSON for headers. decode_header throws ProtocolError on malformed input and
// refuses absurd sizes (a header is small; arrays travel in their own frames).
std::vector<std::uint8_t> encode_header(const nlohmann::json& header);
nlohmann::json decode_header(const void* data, std::size_t size);

// Builds the frames of a message (copies the header in, moves the array frames out).
std::vector<zmq::message_t> encode(WireMessage&& msg);
// Parses frames into a message; checks protocol version and that every array frame's byte
// count matches its descriptor.
WireMessage decode(std::vector<zmq::message_t>&& frames);

// Sends all frames; returns false if the send would block with ZMQ_DONTWAIT (nothing sent).
bool send(zmq::socket_ref socket, WireMessage&& msg, bool dontwait = false);

// Typed accessors for headers with errors that name the key.
const nlohmann::json& require(const nlohmann::json& header, const char* key);
std::string require_string(const nlohmann::json& header, const char* key);
// Any int64 (a msgpack uint above INT64_MAX is refused, never wrapped).
std::int64_t require_int(const nlohmann::json& header, const char* key);
// An integer in [lo, hi]; every wire integer that becomes an int, a size or an index goes
// through here, so narrowing casts after it cannot truncate.
std::int64_t require_int_in(const nlohmann::json& header, const char* key, std::int64_t lo, std::int64_t hi);
std::int64_t checked_int(const nlohmann::json& v, const std::string& what, std::int64_t lo, std::int64_t hi);
double require_number(const nlohmann::json& header, const char* key);
// A peer's value quoted in an error message: JSON text with invalid UTF-8 replaced (dump()
// would throw on it) and cut to 64 characters (the log and the errors topic stay small).
std::string quoted(const nlohmann::json& v);
// A number in an error message, as a reader writes it (6 significant digits: 1e+06, 0.25).
std::string number_text(double v);

}  // namespace xanesd::protocol
