#include "xanesd/protocol/control.hpp"

#include <algorithm>

namespace xanesd::protocol {
namespace {

[[noreturn]] void refuse(const std::string& why) { throw RequestError("bad_control_request", why); }

// An optional number argument within [lo, hi]; integral when T is.
template <class T>
std::optional<T> number_arg(const nlohmann::json& req, const char* key, double lo, double hi) {
  if (!req.contains(key)) return std::nullopt;
  const auto& v = req[key];
  if (!v.is_number() || (std::is_integral_v<T> && !v.is_number_integer()) || !(v.get<double>() >= lo) || v.get<double>() > hi)
    refuse(std::string("'") + key + "' must be " + (std::is_integral_v<T> ? "an integer" : "a number") + " in [" + number_text(lo) +
           ", " + number_text(hi) + "], got " + quoted(v));
  return v.get<T>();
}

std::optional<std::string> string_arg(const nlohmann::json& req, const char* key, std::size_t max_size = 4096) {
  if (!req.contains(key)) return std::nullopt;
  const auto& v = req[key];
  if (!v.is_string() || v.get_ref<const std::string&>().size() > max_size)
    refuse(std::string("'") + key + "' must be a string of at most " + std::to_string(max_size) + " bytes, got " + quoted(v));
  return v.get<std::string>();
}

std::vector<std::string> string_list_arg(const nlohmann::json& req, const char* key, std::size_t max_items) {
  const auto& v = req.at(key);
  const auto bad = std::string("'") + key + "' must be a non-empty list of at most " + std::to_string(max_items) + " strings";
  if (!v.is_array() || v.empty() || v.size() > max_items) refuse(bad);
  std::vector<std::string> out;
  for (const auto& s : v) {
    if (!s.is_string() || s.get_ref<const std::string&>().empty() || s.get_ref<const std::string&>().size() > 4096) refuse(bad);
    out.push_back(s.get<std::string>());
  }
  return out;
}

ConfigureArgs configure_args(const nlohmann::json& req) {
  ConfigureArgs a;
  if (!req.contains("set")) refuse("configure needs 'set': {\"dotted.key\": value, …}");
  if (!req["set"].is_object()) refuse("'set' must be a map of dotted config keys to values");
  a.set = req["set"];
  return a;
}

LoadReferencesArgs load_references_args(const nlohmann::json& req) {
  LoadReferencesArgs a;
  if (req.contains("cluster")) {
    if (req.contains("files")) refuse("give either 'cluster' or 'files', not both");
    a.cluster = number_arg<std::int64_t>(req, "cluster", 1, 254);
    a.name = string_arg(req, "name", 128).value_or("");
  } else {
    if (!req.contains("files")) refuse("load_references needs 'files' (paths) or 'cluster' (a cluster id)");
    a.files = string_list_arg(req, "files", 256);
  }
  if (req.contains("names")) a.names = string_list_arg(req, "names", 256);
  a.normalize = string_arg(req, "normalize", 64);
  a.energy_unit = string_arg(req, "energy_unit", 64);
  return a;
}

SelectEnergiesArgs select_energies_args(const nlohmann::json& req) {
  SelectEnergiesArgs a;
  if (req.contains("n") && req["n"].is_string()) {
    if (req["n"].get_ref<const std::string&>() != "auto") refuse("'n' must be an integer in [1, 1000] or \"auto\", got " + quoted(req["n"]));
    a.n_auto = true;
  } else {
    a.n = number_arg<std::int64_t>(req, "n", 1, 1000);
  }
  a.n_tolerance = number_arg<double>(req, "n_tolerance", 0.001, 10);
  a.variance_floor = number_arg<double>(req, "variance_floor", 1e-6, 10);
  a.normalization_points = number_arg<std::int64_t>(req, "normalization_points", 0, 100);
  a.noise = number_arg<double>(req, "noise", 0, 10);
  a.seed = number_arg<std::int64_t>(req, "seed", 0, 9.2e18);
  a.objective = string_arg(req, "objective", 64);
  if (a.objective && *a.objective != "equal_time" && *a.objective != "equal_dwell")
    refuse("'objective' must be 'equal_time' or 'equal_dwell', got " + quoted(nlohmann::json(*a.objective)));
  a.source = string_arg(req, "source", 64);
  if (a.source && *a.source != "references" && *a.source != "in_use" && *a.source != "clusters")
    refuse("'source' must be 'references', 'in_use' or 'clusters', got " + quoted(nlohmann::json(*a.source)));
  if (req.contains("energies_eV")) {
    const auto& e = req["energies_eV"];
    if (!e.is_array()) refuse("'energies_eV' must be a list of energies (eV)");
    a.energies_eV.emplace();
    for (const auto& v : e) {
      if (!v.is_number()) refuse("'energies_eV' must hold numbers, got " + quoted(v));
      a.energies_eV->push_back(v.get<double>());
    }
  }
  return a;
}

PixelArgs pixel_args(const nlohmann::json& req) {
  PixelArgs a;
  for (auto [key, out] : {std::pair{"x", &a.x}, std::pair{"y", &a.y}}) {
    if (!req.contains(key) || !req[key].is_number_integer())
      throw RequestError("invalid_pixel", std::string("'") + key + "' must be an integer pixel index (x: column, y: row)");
    if (req[key].is_number_unsigned() && req[key].get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxPixels))
      throw RequestError("invalid_pixel", std::string("'") + key + "' is outside any image (x: column, y: row)");
    *out = req[key].get<std::int64_t>();
  }
  return a;
}

SaveArgs save_args(const nlohmann::json& req) { return {string_arg(req, "path", 4096).value_or("")}; }

}  // namespace

const std::vector<std::string>& control_commands() {
  static const std::vector<std::string> commands = {"status", "configure", "load_references", "snapshot", "select_energies",
                                                    "pixel",  "save",      "abort",           "shutdown"};
  return commands;
}

ControlRequest ControlRequest::parse(const nlohmann::json& req) {
  if (!req.is_object()) refuse("request is not a JSON object");
  if (!req.contains("cmd") || !req["cmd"].is_string()) refuse("request has no string 'cmd'");
  ControlRequest r;
  r.cmd = req["cmd"].get<std::string>();
  if (std::ranges::find(control_commands(), r.cmd) == control_commands().end())
    refuse("unknown command " + quoted(nlohmann::json(r.cmd)) + " (status, configure, load_references, snapshot, select_energies, pixel, save, abort, shutdown)");
  if (req.contains("request_id")) {
    const auto& id = req["request_id"];
    if (!(id.is_string() && !id.get_ref<const std::string&>().empty() && id.get_ref<const std::string&>().size() <= 128) &&
        !id.is_number_integer())
      refuse("'request_id' must be an integer or a string of 1–128 bytes");
    r.request_id = id;
  }
  r.timeout_ms = number_arg<std::int64_t>(req, "timeout_ms", 100, 3.6e6);
  if (r.cmd == "configure") r.args = configure_args(req);
  else if (r.cmd == "load_references") r.args = load_references_args(req);
  else if (r.cmd == "select_energies") r.args = select_energies_args(req);
  else if (r.cmd == "pixel") r.args = pixel_args(req);
  else if (r.cmd == "save") r.args = save_args(req);
  return r;
}

ControlRequest ControlRequest::parse(std::string_view text) {
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) refuse("request is not a JSON object");
  return parse(j);
}

nlohmann::json ControlRequest::to_json() const {
  nlohmann::json j = {{"cmd", cmd}};
  if (!request_id.is_null()) j["request_id"] = request_id;
  if (timeout_ms) j["timeout_ms"] = *timeout_ms;
  auto put = [&](const char* key, const auto& v) {
    if (v) j[key] = *v;
  };
  if (const auto* a = std::get_if<ConfigureArgs>(&args)) j["set"] = a->set;
  if (const auto* a = std::get_if<LoadReferencesArgs>(&args)) {
    if (a->cluster) {
      j["cluster"] = *a->cluster;
      if (!a->name.empty()) j["name"] = a->name;
    } else {
      j["files"] = a->files;
    }
    put("names", a->names);
    put("normalize", a->normalize);
    put("energy_unit", a->energy_unit);
  }
  if (const auto* a = std::get_if<SelectEnergiesArgs>(&args)) {
    if (a->n_auto) j["n"] = "auto";
    else put("n", a->n);
    put("n_tolerance", a->n_tolerance);
    put("variance_floor", a->variance_floor);
    put("normalization_points", a->normalization_points);
    put("noise", a->noise);
    put("seed", a->seed);
    put("objective", a->objective);
    put("source", a->source);
    put("energies_eV", a->energies_eV);
  }
  if (const auto* a = std::get_if<PixelArgs>(&args)) j["x"] = a->x, j["y"] = a->y;
  if (const auto* a = std::get_if<SaveArgs>(&args); a && !a->path.empty()) j["path"] = a->path;
  return j;
}

bool ControlRequest::read_only(const std::string& cmd) { return cmd == "status" || cmd == "snapshot" || cmd == "pixel"; }

nlohmann::json ControlReply::to_json() const {
  nlohmann::json j = body;
  j["ok"] = ok;
  if (!ok) {
    j["error"] = error;
    j["code"] = code.empty() ? "bad_control_request" : code;
  }
  if (!request_id.is_null()) j["request_id"] = request_id;
  if (duplicate) j["duplicate"] = true;
  return j;
}

ControlReply ControlReply::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ProtocolError("a control reply is a JSON object");
  ControlReply r;
  if (!j.contains("ok") || !j["ok"].is_boolean()) throw ProtocolError("a control reply needs a boolean 'ok'");
  r.ok = j["ok"].get<bool>();
  if (!r.ok) {
    r.error = require_string(j, "error");
    r.code = require_string(j, "code");
  }
  if (j.contains("request_id")) r.request_id = j["request_id"];
  if (j.contains("duplicate")) {
    if (!j["duplicate"].is_boolean()) throw ProtocolError("'duplicate' must be true or false");
    r.duplicate = j["duplicate"].get<bool>();
  }
  r.body = j;
  for (const char* key : {"ok", "error", "code", "request_id", "duplicate"}) r.body.erase(key);
  return r;
}

}  // namespace xanesd::protocol
