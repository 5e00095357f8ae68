#include "publish/products.hpp"

#include <chrono>

namespace xanesd {
namespace {

double now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

protocol::WireMessage map_message(const Scan& scan, const std::string& topic, std::int64_t version, bool final) {
  protocol::WireMessage m;
  m.topic = topic;
  m.header = {{"type", "map"},
              {"scan_id", scan.id()},
              {"version", version},
              {"time_unix", now_unix()},
              {"rows", scan.rows()},
              {"cols", scan.cols()},
              {"frames_applied", scan.frames_applied()},
              {"last_seq", scan.last_seq()},
              {"energies_measured", scan.energies_seen()},
              {"final", final}};
  return m;
}

}  // namespace

std::vector<protocol::WireMessage> make_map_messages(const Scan& scan, std::int64_t version, bool final) {
  std::vector<protocol::WireMessage> out;
  const auto* fit = scan.fit();
  if (!fit) return out;
  const auto& maps = fit->maps();
  const std::int64_t R = scan.rows(), C = scan.cols(), K = fit->model().n_refs();

  auto fractions = map_message(scan, "maps/fractions", version, final);
  fractions.header["reference_names"] = fit->model().reference_names;
  fractions.header["fit_method"] = science::to_string(fit->method());
  // Fractions where the quality mask holds (0 elsewhere), with the mask itself.
  const auto& mask = scan.mask();
  fractions.header["mask_thickness_threshold"] = mask.thickness_threshold;
  fractions.header["mask_valid_pixels"] = mask.n_valid;
  fractions.arrays.push_back(protocol::Array::from<float>("fractions", science::apply_mask(maps.fractions, mask.valid), {K, R, C}));
  fractions.arrays.push_back(protocol::Array::from<float>("fraction_sigma", science::apply_mask(maps.fraction_sigma, mask.valid), {K, R, C}));
  fractions.arrays.push_back(protocol::Array::from<std::uint8_t>("mask", mask.valid, {R, C}));
  out.push_back(std::move(fractions));

  auto thickness = map_message(scan, "maps/thickness", version, final);
  thickness.arrays.push_back(protocol::Array::from<float>("thickness", maps.thickness, {R, C}));
  out.push_back(std::move(thickness));

  auto residual = map_message(scan, "maps/residual", version, final);
  residual.arrays.push_back(protocol::Array::from<float>("residual", maps.residual, {R, C}));
  residual.arrays.push_back(protocol::Array::from<float>("rfactor", maps.rfactor, {R, C}));
  out.push_back(std::move(residual));

  if (const auto* edge = scan.edge_maps()) {
    auto m = map_message(scan, "maps/edge", version, final);
    m.header["e0_scan_eV"] = edge->ranges.e0;
    m.header["pixels_computed"] = edge->computed;
    m.arrays.push_back(protocol::Array::from<float>("e0", edge->e0, {R, C}));
    m.arrays.push_back(protocol::Array::from<float>("half_step", edge->half_step, {R, C}));
    m.arrays.push_back(protocol::Array::from<float>("white_line", edge->white_line, {R, C}));
    m.arrays.push_back(protocol::Array::from<float>("edge_step", edge->edge_step, {R, C}));
    out.push_back(std::move(m));
  }

  auto nenergies = map_message(scan, "maps/nenergies", version, final);
  nenergies.arrays.push_back(protocol::Array::from<std::uint16_t>("nenergies", maps.nenergies, {R, C}));
  out.push_back(std::move(nenergies));
  return out;
}

protocol::WireMessage make_status_message(const nlohmann::json& status, const std::string& scan_id, std::int64_t version) {
  protocol::WireMessage m;
  m.topic = "status";
  m.header = status;
  m.header["type"] = "status";
  m.header["scan_id"] = scan_id;
  m.header["version"] = version;
  m.header["time_unix"] = now_unix();
  return m;
}

protocol::WireMessage make_error_message(const std::string& scan_id, const std::string& code, const std::string& message,
                                         std::int64_t count, std::int64_t version) {
  protocol::WireMessage m;
  m.topic = "errors";
  m.header = {{"type", "error"}, {"scan_id", scan_id}, {"code", code}, {"message", message},
              {"count", count},  {"version", version}, {"time_unix", now_unix()}};
  return m;
}

}  // namespace xanesd
