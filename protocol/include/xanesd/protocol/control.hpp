// Typed control requests and replies (PROTOCOL.md "Control"): a request is a JSON object
// {"cmd": …, "request_id": …, arguments}; parse() checks the command, the request id and every
// argument's type and range, so the daemon's handlers read typed fields only. Arguments that
// depend on the daemon's state (a pixel inside the image, a path inside output.directory, a
// configure key that exists) are checked where that state is.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "xanesd/protocol/messages.hpp"  // the wire limits (kMaxPixels …)

namespace xanesd::protocol {

// A request that breaks the contract; code() is its error code (PROTOCOL.md "Error codes").
class RequestError : public ProtocolError {
 public:
  RequestError(std::string code, const std::string& why) : ProtocolError(why), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

struct ConfigureArgs {
  nlohmann::json set = nlohmann::json::object();  // dotted key → value
};
struct LoadReferencesArgs {
  std::optional<std::int64_t> cluster;  // a cluster's mean spectrum (then `name`), or `files`
  std::string name;
  std::vector<std::string> files;
  std::optional<std::vector<std::string>> names;  // keep these, in this order
  std::optional<std::string> normalize, energy_unit;
};
struct SelectEnergiesArgs {
  std::optional<std::int64_t> n;  // absent with n_auto
  bool n_auto = false;            // "n": "auto"
  std::optional<double> n_tolerance, variance_floor, noise;
  std::optional<std::int64_t> normalization_points, seed;
  std::optional<std::string> objective, source;
  std::optional<std::vector<double>> energies_eV;  // the candidate grid
};
struct PixelArgs {
  std::int64_t x = 0, y = 0;  // column, row
};
struct SaveArgs {
  std::string path;  // empty: the scan's own file
};
using CommandArgs = std::variant<std::monostate, ConfigureArgs, LoadReferencesArgs, SelectEnergiesArgs, PixelArgs, SaveArgs>;

struct ControlRequest {
  std::string cmd;
  nlohmann::json request_id;  // null, an integer, or a string of 1–128 bytes
  // This request's own reply timeout (ms, 100 to 3.6e6), instead of control.reply_timeout_ms:
  // a client that gives up after its own timeout does not want the command run after that.
  std::optional<std::int64_t> timeout_ms;
  CommandArgs args;           // monostate for status, snapshot, abort, shutdown

  // Throws RequestError (code bad_control_request, or invalid_pixel for pixel coordinates).
  static ControlRequest parse(const nlohmann::json& request);
  static ControlRequest parse(std::string_view text);
  nlohmann::json to_json() const;
  // status, snapshot and pixel: allowed to read-only clients.
  static bool read_only(const std::string& cmd);
};

// The commands parse() knows, in PROTOCOL.md's order.
const std::vector<std::string>& control_commands();

// A reply's envelope: ok, error and code on failure, the request_id repeated, `duplicate` for a
// re-sent request answered from the reply kept; `body` holds the command's own keys.
struct ControlReply {
  bool ok = true;
  std::string error, code;
  nlohmann::json request_id;
  bool duplicate = false;
  nlohmann::json body = nlohmann::json::object();

  nlohmann::json to_json() const;
  static ControlReply from_json(const nlohmann::json& reply);  // throws ProtocolError
};

}  // namespace xanesd::protocol
