#include "publish/products.hpp"

#include <chrono>

namespace xanesd {
namespace {

double now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

protocol::WireMessage map_message(const Scan& scan, const ScanProgress& at, const std::string& topic, std::int64_t version,
                                  bool final) {
  protocol::WireMessage m;
  m.topic = topic;
  m.header = {{"type", "map"},
              {"scan_id", scan.id()},
              {"version", version},
              {"time_unix", now_unix()},
              {"rows", scan.rows()},
              {"cols", scan.cols()},
              {"frames_applied", at.frames_applied},
              {"last_seq", at.last_seq},
              {"energies_measured", at.energies_seen},
              {"final", final}};
  return m;
}

// K maps with masked pixels set to 0, written straight into the frame (one copy, not two).
protocol::Array masked(std::string name, std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid,
                       std::vector<std::int64_t> shape) {
  zmq::message_t frame(per_pixel_k.size() * sizeof(float));
  science::apply_mask(per_pixel_k, valid, std::span<float>(static_cast<float*>(frame.data()), per_pixel_k.size()));
  return protocol::Array(std::move(name), protocol::DType::float32, std::move(shape), true, std::move(frame));
}

// maps/segments (the label map) and clusters (per-cluster spectra, fits, PCA diagnostics).
void append_segment_messages(const Scan& scan, const ScanProgress& at, const science::Segmentation& seg, std::int64_t version,
                             bool final, std::vector<protocol::WireMessage>& out) {
  const std::int64_t R = scan.rows(), C = scan.cols(), E = static_cast<std::int64_t>(scan.energies().size());
  auto segments = map_message(scan, at, "maps/segments", version, final);
  segments.header["waiting"] = seg.waiting;
  if (!seg.waiting.empty() || seg.labels.empty()) {
    out.push_back(std::move(segments));  // says why there is no map yet
    return;
  }
  nlohmann::json ids = nlohmann::json::array();
  for (const auto& c : seg.clusters) ids.push_back(c.id);
  segments.header["cluster_ids"] = ids;
  segments.header["labelled_pixels"] = seg.labelled;
  segments.header["silhouette"] = seg.silhouette;
  segments.arrays.push_back(protocol::Array::from<std::uint8_t>("segments", seg.labels, {R, C}));
  out.push_back(std::move(segments));

  auto clusters = map_message(scan, at, "clusters", version, final);
  clusters.header["type"] = "clusters";
  clusters.header["cluster_ids"] = ids;
  nlohmann::json pixels = nlohmann::json::array(), fractions = nlohmann::json::array(), sigma = nlohmann::json::array(),
                 thickness = nlohmann::json::array(), residual = nlohmann::json::array(),
                 noise = nlohmann::json::array(), unexplained = nlohmann::json::array();
  std::vector<double> mean, stderr_;
  for (const auto& c : seg.clusters) {
    pixels.push_back(c.pixels);
    fractions.push_back(c.fractions);
    sigma.push_back(c.fraction_sigma);
    thickness.push_back(c.thickness);
    noise.push_back(c.noise);
    if (c.fitted && c.unexplained) unexplained.push_back(c.id);
    residual.push_back(c.residual);
    mean.insert(mean.end(), c.mean.begin(), c.mean.end());
    stderr_.insert(stderr_.end(), c.stderr_.begin(), c.stderr_.end());
  }
  clusters.header["pixels"] = pixels;
  clusters.header["fractions"] = fractions;
  clusters.header["fraction_sigma"] = sigma;
  clusters.header["thickness"] = thickness;
  clusters.header["residual"] = residual;
  clusters.header["noise"] = noise;
  clusters.header["unexplained"] = unexplained;  // ids of domains no loaded reference explains
  clusters.header["reference_names"] = scan.fit() ? scan.fit()->model().reference_names : std::vector<std::string>{};
  const auto& pca = seg.pca;
  clusters.header["pca"] = {{"energy_indices", pca.energies},
                            {"explained_variance_ratio", pca.explained},
                            {"components", pca.components},
                            {"significant", pca.significant},
                            {"noise_sigma", pca.noise_sigma},
                            {"seeded_from_references", pca.seeded_from_references},
                            {"target_transformation", {{"residual", pca.tt_residual}, {"ratio", pca.tt_ratio}, {"plausible", pca.tt_plausible}}}};
  const auto k = static_cast<std::int64_t>(seg.clusters.size());
  clusters.arrays.push_back(protocol::Array::from<double>("mean_spectra", mean, {k, E}));
  clusters.arrays.push_back(protocol::Array::from<double>("stderr_spectra", stderr_, {k, E}));
  out.push_back(std::move(clusters));
}

}  // namespace

std::vector<protocol::WireMessage> make_map_messages(const Scan& scan, std::int64_t version, bool final, bool with_segments,
                                                     const ScanProgress* progress, bool with_fit) {
  const ScanProgress at = progress ? *progress : scan.progress();
  std::vector<protocol::WireMessage> out;
  // Segmentation needs no references: published even when there is no fit.
  if (const auto* seg = scan.segmentation(); seg && with_segments) append_segment_messages(scan, at, *seg, version, final, out);
  const auto* fit = scan.fit();
  if (!fit) return out;
  const auto& maps = fit->maps();
  const std::int64_t R = scan.rows(), C = scan.cols(), K = fit->model().n_refs();

  // The image-level reference selection, on the cycles that revise it (with the segments).
  if (const auto* sel = scan.reference_selection(); sel && with_segments) {
    auto m = map_message(scan, at, "references", version, final);
    m.header.update(to_json(*sel));
    m.header["type"] = "references";
    out.push_back(std::move(m));
  }
  if (!with_fit) return out;

  auto fractions = map_message(scan, at, "maps/fractions", version, final);
  fractions.header["reference_names"] = fit->model().reference_names;
  fractions.header["fit_method"] = science::to_string(fit->method());
  // Fractions where the quality mask holds (0 elsewhere), with the mask itself.
  const auto& mask = scan.mask();
  fractions.header["mask_thickness_threshold"] = mask.thickness_threshold;
  fractions.header["mask_valid_pixels"] = mask.n_valid;
  fractions.arrays.push_back(masked("fractions", maps.fractions, mask.valid, {K, R, C}));
  fractions.arrays.push_back(masked("fraction_sigma", maps.fraction_sigma, mask.valid, {K, R, C}));
  fractions.arrays.push_back(protocol::Array::from<std::uint8_t>("mask", mask.valid, {R, C}));
  fractions.header["spatial"] = !fit->spatial_neighbours().empty();
  if (const auto& nb = fit->spatial_neighbours(); !nb.empty())
    fractions.arrays.push_back(protocol::Array::from<float>("spatial_neighbours", nb, {R, C}));
  out.push_back(std::move(fractions));

  auto thickness = map_message(scan, at, "maps/thickness", version, final);
  thickness.arrays.push_back(protocol::Array::from<float>("thickness", maps.thickness, {R, C}));
  out.push_back(std::move(thickness));

  auto residual = map_message(scan, at, "maps/residual", version, final);
  residual.arrays.push_back(protocol::Array::from<float>("residual", maps.residual, {R, C}));
  residual.arrays.push_back(protocol::Array::from<float>("rfactor", maps.rfactor, {R, C}));
  out.push_back(std::move(residual));

  if (const auto* edge = scan.edge_maps()) {
    auto m = map_message(scan, at, "maps/edge", version, final);
    m.header["e0_scan_eV"] = edge->ranges.e0;
    m.header["pixels_computed"] = edge->computed;
    m.arrays.push_back(protocol::Array::from<float>("e0", edge->e0, {R, C}));
    m.arrays.push_back(protocol::Array::from<float>("half_step", edge->half_step, {R, C}));
    m.arrays.push_back(protocol::Array::from<float>("white_line", edge->white_line, {R, C}));
    m.arrays.push_back(protocol::Array::from<float>("edge_step", edge->edge_step, {R, C}));
    out.push_back(std::move(m));
  }

  auto nenergies = map_message(scan, at, "maps/nenergies", version, final);
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

protocol::WireMessage make_energies_message(const nlohmann::json& selection, std::int64_t version) {
  protocol::WireMessage m;
  m.topic = "energies";
  m.header = selection;
  m.header.erase("ok");
  m.header.erase("energies_eV");  // the array carries them
  m.header["type"] = "energies";
  m.header["version"] = version;
  m.header["time_unix"] = now_unix();
  m.arrays.push_back(protocol::Array::from<double>("energies_eV", selection.at("energies_eV").get<std::vector<double>>(),
                                                   {static_cast<std::int64_t>(selection.at("energies_eV").size())}));
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
