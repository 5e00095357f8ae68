#include "xanesd/protocol/products.hpp"

#include <algorithm>
#include <limits>

namespace xanesd::protocol {
namespace {

// A result's counts and indices: large enough for any scan, small enough to index with.
constexpr std::int64_t kMaxCount = std::int64_t{1} << 53;

void expect_topic(const WireMessage& m, const char* topic, const char* type) {
  if (m.topic != topic) throw ProtocolError("topic '" + m.topic + "' is not '" + topic + "'");
  if (require_string(m.header, "type") != type)
    throw ProtocolError(std::string(topic) + ": header type must be '" + type + "', got " + quoted(m.header["type"]));
}

bool require_bool(const nlohmann::json& h, const char* key) {
  const auto& v = require(h, key);
  if (!v.is_boolean()) throw ProtocolError(std::string("'") + key + "' must be true or false");
  return v.get<bool>();
}

std::vector<std::string> string_list(const nlohmann::json& h, const char* key) {
  const auto& v = require(h, key);
  const auto bad = std::string("'") + key + "' must be a list of strings";
  if (!v.is_array()) throw ProtocolError(bad);
  std::vector<std::string> out;
  for (const auto& x : v) {
    if (!x.is_string()) throw ProtocolError(bad);
    out.push_back(x.get<std::string>());
  }
  return out;
}
// JSON has no NaN: nlohmann writes a NaN as null, so null reads back as NaN.
std::vector<double> number_list(const nlohmann::json& h, const char* key) {
  const auto& v = require(h, key);
  if (!v.is_array()) throw ProtocolError(std::string("'") + key + "' must be a list of numbers");
  std::vector<double> out;
  for (const auto& x : v) {
    if (x.is_null()) out.push_back(std::numeric_limits<double>::quiet_NaN());
    else if (x.is_number()) out.push_back(x.get<double>());
    else throw ProtocolError(std::string("'") + key + "' must be a list of numbers");
  }
  return out;
}
std::vector<std::int64_t> count_list(const nlohmann::json& h, const char* key) {
  std::vector<std::int64_t> out;
  const auto& v = require(h, key);
  if (!v.is_array()) throw ProtocolError(std::string("'") + key + "' must be a list of integers");
  for (const auto& x : v) out.push_back(checked_int(x, std::string("'") + key + "' entries", 0, kMaxCount));
  return out;
}
// `rows` lists, each of `cols` numbers or empty (a cluster that was not fitted).
std::vector<std::vector<double>> number_rows(const nlohmann::json& h, const char* key, std::size_t rows, std::size_t cols) {
  const auto& v = require(h, key);
  if (!v.is_array() || v.size() != rows)
    throw ProtocolError(std::string("'") + key + "' must hold " + std::to_string(rows) + " lists");
  std::vector<std::vector<double>> out;
  for (const auto& row : v) {
    const nlohmann::json holder = {{"row", row}};
    out.push_back(number_list(holder, "row"));
    if (!out.back().empty() && out.back().size() != cols)
      throw ProtocolError(std::string("'") + key + "' lists must hold " + std::to_string(cols) + " numbers or none");
  }
  return out;
}

// The array `name` with this dtype and shape, moved out of the message.
Array take_array(WireMessage& m, const std::string& name, DType dtype, const std::vector<std::int64_t>& shape) {
  auto a = m.take(name);
  if (!a) throw ProtocolError(m.topic + ": no array '" + name + "'");
  if (a->dtype() != dtype)
    throw ProtocolError(m.topic + ": array '" + name + "' must be " + to_string(dtype) + ", is " + to_string(a->dtype()));
  if (a->shape() != shape) {
    std::string want;
    for (auto d : shape) want += (want.empty() ? "" : "×") + std::to_string(d);
    throw ProtocolError(m.topic + ": array '" + name + "' must have shape " + want);
  }
  return std::move(*a);
}

nlohmann::json map_header(const MapHeader& h, const char* type) {
  return {{"type", type},
          {"scan_id", h.scan_id},
          {"version", h.version},
          {"time_unix", h.time_unix},
          {"rows", h.rows},
          {"cols", h.cols},
          {"frames_applied", h.frames_applied},
          {"last_seq", h.last_seq},
          {"energies_measured", h.energies_measured},
          {"final", h.final}};
}

MapHeader read_map_header(const WireMessage& m, const char* topic, const char* type) {
  expect_topic(m, topic, type);
  const auto& j = m.header;
  MapHeader h;
  h.scan_id = require_string(j, "scan_id");
  h.version = require_int_in(j, "version", 0, kMaxCount);
  h.time_unix = require_number(j, "time_unix");
  h.rows = static_cast<int>(require_int_in(j, "rows", 1, kMaxPixels));
  h.cols = static_cast<int>(require_int_in(j, "cols", 1, kMaxPixels));
  if (std::int64_t{h.rows} * h.cols > kMaxPixels) throw ProtocolError(m.topic + ": rows×cols beyond 2^26 pixels");
  h.frames_applied = require_int_in(j, "frames_applied", 0, kMaxCount);
  h.last_seq = require_int_in(j, "last_seq", -1, kMaxSeq);
  h.energies_measured = static_cast<int>(require_int_in(j, "energies_measured", 0, kMaxEnergies));
  h.final = require_bool(j, "final");
  return h;
}

std::vector<std::int64_t> image(const MapHeader& h) { return {h.rows, h.cols}; }

WireMessage product_message(std::string topic, nlohmann::json header) {
  WireMessage m;
  m.topic = std::move(topic);
  m.header = std::move(header);
  return m;
}

}  // namespace

WireMessage FractionsProduct::to_wire() && {
  auto m = product_message("maps/fractions", map_header(map, "map"));
  m.header["reference_names"] = reference_names;
  m.header["fit_method"] = fit_method;
  m.header["mask_thickness_threshold"] = mask_thickness_threshold;
  m.header["mask_valid_pixels"] = mask_valid_pixels;
  m.header["spatial"] = spatial_neighbours.has_value();
  m.arrays.push_back(std::move(fractions));
  m.arrays.push_back(std::move(fraction_sigma));
  m.arrays.push_back(std::move(mask));
  if (spatial_neighbours) m.arrays.push_back(std::move(*spatial_neighbours));
  return m;
}

FractionsProduct FractionsProduct::from_wire(WireMessage&& m) {
  FractionsProduct p;
  p.map = read_map_header(m, "maps/fractions", "map");
  p.reference_names = string_list(m.header, "reference_names");
  if (p.reference_names.empty()) throw ProtocolError("maps/fractions: 'reference_names' is empty");
  p.fit_method = require_string(m.header, "fit_method");
  p.mask_thickness_threshold = require_number(m.header, "mask_thickness_threshold");
  p.mask_valid_pixels = require_int_in(m.header, "mask_valid_pixels", 0, std::int64_t{p.map.rows} * p.map.cols);
  const bool spatial = require_bool(m.header, "spatial");
  const std::vector<std::int64_t> krc = {static_cast<std::int64_t>(p.reference_names.size()), p.map.rows, p.map.cols};
  p.fractions = take_array(m, "fractions", DType::float32, krc);
  p.fraction_sigma = take_array(m, "fraction_sigma", DType::float32, krc);
  p.mask = take_array(m, "mask", DType::uint8, image(p.map));
  if (spatial != (m.find("spatial_neighbours") != nullptr))
    throw ProtocolError("maps/fractions: 'spatial' must say whether 'spatial_neighbours' is there");
  if (spatial) p.spatial_neighbours = take_array(m, "spatial_neighbours", DType::float32, image(p.map));
  return p;
}

WireMessage ThicknessProduct::to_wire() && {
  auto m = product_message("maps/thickness", map_header(map, "map"));
  m.arrays.push_back(std::move(thickness));
  return m;
}
ThicknessProduct ThicknessProduct::from_wire(WireMessage&& m) {
  ThicknessProduct p;
  p.map = read_map_header(m, "maps/thickness", "map");
  p.thickness = take_array(m, "thickness", DType::float32, image(p.map));
  return p;
}

WireMessage ResidualProduct::to_wire() && {
  auto m = product_message("maps/residual", map_header(map, "map"));
  m.arrays.push_back(std::move(residual));
  m.arrays.push_back(std::move(rfactor));
  return m;
}
ResidualProduct ResidualProduct::from_wire(WireMessage&& m) {
  ResidualProduct p;
  p.map = read_map_header(m, "maps/residual", "map");
  p.residual = take_array(m, "residual", DType::float32, image(p.map));
  p.rfactor = take_array(m, "rfactor", DType::float32, image(p.map));
  return p;
}

WireMessage EdgeProduct::to_wire() && {
  auto m = product_message("maps/edge", map_header(map, "map"));
  m.header["e0_scan_eV"] = e0_scan_eV;
  m.header["pixels_computed"] = pixels_computed;
  for (auto* a : {&e0, &half_step, &white_line, &edge_step}) m.arrays.push_back(std::move(*a));
  return m;
}
EdgeProduct EdgeProduct::from_wire(WireMessage&& m) {
  EdgeProduct p;
  p.map = read_map_header(m, "maps/edge", "map");
  p.e0_scan_eV = require_number(m.header, "e0_scan_eV");
  p.pixels_computed = require_int_in(m.header, "pixels_computed", 0, std::int64_t{p.map.rows} * p.map.cols);
  p.e0 = take_array(m, "e0", DType::float32, image(p.map));
  p.half_step = take_array(m, "half_step", DType::float32, image(p.map));
  p.white_line = take_array(m, "white_line", DType::float32, image(p.map));
  p.edge_step = take_array(m, "edge_step", DType::float32, image(p.map));
  return p;
}

WireMessage NenergiesProduct::to_wire() && {
  auto m = product_message("maps/nenergies", map_header(map, "map"));
  m.arrays.push_back(std::move(nenergies));
  return m;
}
NenergiesProduct NenergiesProduct::from_wire(WireMessage&& m) {
  NenergiesProduct p;
  p.map = read_map_header(m, "maps/nenergies", "map");
  p.nenergies = take_array(m, "nenergies", DType::uint16, image(p.map));
  return p;
}

WireMessage SegmentsProduct::to_wire() && {
  auto m = product_message("maps/segments", map_header(map, "map"));
  m.header["waiting"] = waiting;
  if (!waiting.empty() || !segments) return m;  // says why there is no map yet
  m.header["cluster_ids"] = cluster_ids;
  m.header["labelled_pixels"] = labelled_pixels;
  m.header["silhouette"] = silhouette;
  m.arrays.push_back(std::move(*segments));
  return m;
}
SegmentsProduct SegmentsProduct::from_wire(WireMessage&& m) {
  SegmentsProduct p;
  p.map = read_map_header(m, "maps/segments", "map");
  p.waiting = require_string(m.header, "waiting");
  if (!p.waiting.empty()) {
    if (m.find("segments")) throw ProtocolError("maps/segments: a 'waiting' message carries no map");
    return p;
  }
  p.cluster_ids = count_list(m.header, "cluster_ids");
  for (auto id : p.cluster_ids)
    if (id < 1 || id > 254) throw ProtocolError("maps/segments: cluster ids are 1–254");
  p.labelled_pixels = require_int_in(m.header, "labelled_pixels", 0, std::int64_t{p.map.rows} * p.map.cols);
  p.silhouette = require_number(m.header, "silhouette");
  p.segments = take_array(m, "segments", DType::uint8, image(p.map));
  return p;
}

WireMessage ClustersProduct::to_wire() && {
  auto m = product_message("clusters", map_header(map, "clusters"));
  m.header["cluster_ids"] = cluster_ids;
  m.header["pixels"] = pixels;
  m.header["fractions"] = fractions;
  m.header["fraction_sigma"] = fraction_sigma;
  m.header["thickness"] = thickness;
  m.header["residual"] = residual;
  m.header["noise"] = noise;
  m.header["unexplained"] = unexplained;
  m.header["reference_names"] = reference_names;
  m.header["pca"] = std::move(pca);
  m.arrays.push_back(std::move(mean_spectra));
  m.arrays.push_back(std::move(stderr_spectra));
  return m;
}
ClustersProduct ClustersProduct::from_wire(WireMessage&& m) {
  ClustersProduct p;
  p.map = read_map_header(m, "clusters", "clusters");
  p.cluster_ids = count_list(m.header, "cluster_ids");
  const auto k = p.cluster_ids.size();
  p.pixels = count_list(m.header, "pixels");
  p.reference_names = string_list(m.header, "reference_names");
  const auto K = p.reference_names.size();
  // Without references nothing is fitted: the per-cluster fit lists are then k empty lists.
  p.fractions = number_rows(m.header, "fractions", k, K);
  p.fraction_sigma = number_rows(m.header, "fraction_sigma", k, K);
  p.thickness = number_list(m.header, "thickness");
  p.residual = number_list(m.header, "residual");
  p.noise = number_list(m.header, "noise");
  p.unexplained = count_list(m.header, "unexplained");
  for (const auto size : {p.pixels.size(), p.thickness.size(), p.residual.size(), p.noise.size()})
    if (size != k) throw ProtocolError("clusters: 'pixels', 'thickness', 'residual' and 'noise' must have one entry per cluster");
  for (auto id : p.unexplained)
    if (std::find(p.cluster_ids.begin(), p.cluster_ids.end(), id) == p.cluster_ids.end())
      throw ProtocolError("clusters: 'unexplained' names a cluster id not in 'cluster_ids'");
  p.pca = require(m.header, "pca");
  if (!p.pca.is_object()) throw ProtocolError("clusters: 'pca' must be a map");
  const auto* mean = m.find("mean_spectra");
  if (!mean || mean->shape().size() != 2) throw ProtocolError("clusters: 'mean_spectra' must be k×E");
  const std::vector<std::int64_t> kE = {static_cast<std::int64_t>(k), mean->shape()[1]};
  p.mean_spectra = take_array(m, "mean_spectra", DType::float64, kE);
  p.stderr_spectra = take_array(m, "stderr_spectra", DType::float64, kE);
  return p;
}

WireMessage ReferencesProduct::to_wire() && {
  auto header = std::move(selection);
  header.update(map_header(map, "references"));
  header["selected"] = selected;
  return product_message("references", std::move(header));
}
ReferencesProduct ReferencesProduct::from_wire(WireMessage&& m) {
  ReferencesProduct p;
  p.map = read_map_header(m, "references", "references");
  p.selected = string_list(m.header, "selected");
  const auto& refs = require(m.header, "references");
  if (!refs.is_array()) throw ProtocolError("references: 'references' must be a list");
  for (const auto& r : refs) {
    if (!r.is_object()) throw ProtocolError("references: each of 'references' must be a map");
    (void)require_string(r, "name");
    (void)require_bool(r, "selected");
  }
  p.selection = std::move(m.header);
  for (const char* key : {"type", "scan_id", "version", "time_unix", "rows", "cols", "frames_applied", "last_seq",
                          "energies_measured", "final", "selected", "arrays"})
    p.selection.erase(key);
  return p;
}

WireMessage StatusProduct::to_wire() && {
  auto header = std::move(details);
  header["type"] = "status";
  header["scan_id"] = scan_id;
  header["version"] = version;
  header["time_unix"] = time_unix;
  header["state"] = state;
  return product_message("status", std::move(header));
}
StatusProduct StatusProduct::from_wire(WireMessage&& m) {
  expect_topic(m, "status", "status");
  StatusProduct p;
  p.scan_id = require_string(m.header, "scan_id");
  p.version = require_int_in(m.header, "version", 0, kMaxCount);
  p.time_unix = require_number(m.header, "time_unix");
  p.state = require_string(m.header, "state");
  if (p.state != "idle" && p.state != "running" && p.state != "stopped" && p.state != "aborted")
    throw ProtocolError("status: 'state' must be idle, running, stopped or aborted, got " + quoted(m.header["state"]));
  const auto& scan = require(m.header, "scan");
  if (!scan.is_null() && !scan.is_object()) throw ProtocolError("status: 'scan' must be a map or null");
  (void)string_list(m.header, "references");
  p.details = std::move(m.header);
  for (const char* key : {"type", "scan_id", "version", "time_unix", "state", "arrays"}) p.details.erase(key);
  return p;
}

WireMessage EnergiesProduct::to_wire() && {
  auto header = std::move(selection);
  header.erase("ok");
  header.erase("energies_eV");  // the array carries them
  header["type"] = "energies";
  header["scan_id"] = scan_id;
  header["version"] = version;
  header["time_unix"] = time_unix;
  auto m = product_message("energies", std::move(header));
  m.arrays.push_back(Array::from<double>("energies_eV", energies_eV, {static_cast<std::int64_t>(energies_eV.size())}));
  return m;
}
EnergiesProduct EnergiesProduct::from_wire(WireMessage&& m) {
  expect_topic(m, "energies", "energies");
  EnergiesProduct p;
  p.scan_id = require_string(m.header, "scan_id");
  p.version = require_int_in(m.header, "version", 0, kMaxCount);
  p.time_unix = require_number(m.header, "time_unix");
  const auto* e = m.find("energies_eV");
  if (!e || e->dtype() != DType::float64 || e->shape().size() != 1 || e->size() == 0 ||
      e->size() > static_cast<std::size_t>(kMaxEnergies))
    throw ProtocolError("energies: 'energies_eV' must be a float64 list of 1 to 4096 energies");
  p.energies_eV.resize(e->size());
  e->convert_to(std::span<double>(p.energies_eV));
  if (!std::is_sorted(p.energies_eV.begin(), p.energies_eV.end())) throw ProtocolError("energies: 'energies_eV' must be sorted");
  p.selection = std::move(m.header);
  for (const char* key : {"type", "scan_id", "version", "time_unix", "arrays"}) p.selection.erase(key);
  return p;
}

WireMessage ErrorProduct::to_wire() && {
  return product_message("errors", {{"type", "error"}, {"scan_id", scan_id}, {"code", code}, {"message", message},
                            {"count", count}, {"version", version}, {"time_unix", time_unix}});
}
ErrorProduct ErrorProduct::from_wire(WireMessage&& m) {
  expect_topic(m, "errors", "error");
  ErrorProduct p;
  p.scan_id = require_string(m.header, "scan_id");
  p.code = require_string(m.header, "code");
  if (p.code.empty()) throw ProtocolError("errors: 'code' is empty");
  p.message = require_string(m.header, "message");
  p.count = require_int_in(m.header, "count", 1, kMaxCount);
  p.version = require_int_in(m.header, "version", 1, kMaxCount);
  p.time_unix = require_number(m.header, "time_unix");
  return p;
}

const std::vector<std::string>& product_topics() {
  static const std::vector<std::string> topics = {"status", "maps/fractions", "maps/thickness", "maps/residual",
                                                  "maps/edge", "maps/nenergies", "maps/segments", "references",
                                                  "clusters", "energies", "errors"};
  return topics;
}

Product parse_product(WireMessage&& m) {
  const auto topic = m.topic;
  if (topic == "maps/fractions") return FractionsProduct::from_wire(std::move(m));
  if (topic == "maps/thickness") return ThicknessProduct::from_wire(std::move(m));
  if (topic == "maps/residual") return ResidualProduct::from_wire(std::move(m));
  if (topic == "maps/edge") return EdgeProduct::from_wire(std::move(m));
  if (topic == "maps/nenergies") return NenergiesProduct::from_wire(std::move(m));
  if (topic == "maps/segments") return SegmentsProduct::from_wire(std::move(m));
  if (topic == "clusters") return ClustersProduct::from_wire(std::move(m));
  if (topic == "references") return ReferencesProduct::from_wire(std::move(m));
  if (topic == "status") return StatusProduct::from_wire(std::move(m));
  if (topic == "energies") return EnergiesProduct::from_wire(std::move(m));
  if (topic == "errors") return ErrorProduct::from_wire(std::move(m));
  throw ProtocolError("unknown result topic " + quoted(nlohmann::json(topic)));
}

}  // namespace xanesd::protocol
