#include "publish/products.hpp"

#include <chrono>

#include "publish/frame_pool.hpp"

namespace xanesd {
namespace {

double now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

protocol::MapHeader map_header(const Scan& scan, const ScanProgress& at, std::int64_t version, bool final) {
  return {.scan_id = scan.id(),
          .version = version,
          .time_unix = now_unix(),
          .rows = scan.rows(),
          .cols = scan.cols(),
          .frames_applied = at.frames_applied,
          .last_seq = at.last_seq,
          .energies_measured = at.energies_seen,
          .final = final};
}

// K maps with masked pixels set to 0, written straight into the frame (one copy, not two), on
// `threads` threads (at 2048² a single thread spent ~50 ms of each cycle here).
protocol::Array masked(std::string name, std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid,
                       std::vector<std::int64_t> shape, int threads) {
  auto frame = FramePool::maps().take(per_pixel_k.size() * sizeof(float));
  science::apply_mask(per_pixel_k, valid, std::span<float>(static_cast<float*>(frame.data()), per_pixel_k.size()), threads);
  return protocol::Array(std::move(name), protocol::DType::float32, std::move(shape), true, std::move(frame));
}

// maps/segments (the label map) and clusters (per-cluster spectra, fits, PCA diagnostics).
void append_segment_messages(const Scan& scan, const protocol::MapHeader& header, const science::Segmentation& seg,
                             std::vector<protocol::WireMessage>& out) {
  const std::int64_t R = scan.rows(), C = scan.cols(), E = static_cast<std::int64_t>(scan.energies().size());
  protocol::SegmentsProduct segments{.map = header, .waiting = seg.waiting};
  if (!seg.waiting.empty() || seg.labels.empty()) {
    out.push_back(std::move(segments).to_wire());  // says why there is no map yet
    return;
  }
  protocol::ClustersProduct clusters{.map = header};
  std::vector<double> mean, stderr_;
  for (const auto& c : seg.clusters) {
    clusters.cluster_ids.push_back(c.id);
    clusters.pixels.push_back(c.pixels);
    clusters.fractions.push_back(c.fractions);
    clusters.fraction_sigma.push_back(c.fraction_sigma);
    clusters.thickness.push_back(c.thickness);
    clusters.noise.push_back(c.noise);
    if (c.fitted && c.unexplained) clusters.unexplained.push_back(c.id);  // domains no loaded reference explains
    clusters.residual.push_back(c.residual);
    mean.insert(mean.end(), c.mean.begin(), c.mean.end());
    stderr_.insert(stderr_.end(), c.stderr_.begin(), c.stderr_.end());
  }
  segments.cluster_ids = clusters.cluster_ids;
  segments.labelled_pixels = seg.labelled;
  segments.silhouette = seg.silhouette;
  segments.segments = FramePool::maps().array<std::uint8_t>("segments", seg.labels, {R, C});
  out.push_back(std::move(segments).to_wire());

  if (scan.fit()) clusters.reference_names = scan.fit()->model().reference_names;
  const auto& pca = seg.pca;
  clusters.pca = {{"energy_indices", pca.energies},
                  {"explained_variance_ratio", pca.explained},
                  {"components", pca.components},
                  {"significant", pca.significant},
                  {"noise_sigma", pca.noise_sigma},
                  {"seeded_from_references", pca.seeded_from_references},
                  {"target_transformation", {{"residual", pca.tt_residual}, {"ratio", pca.tt_ratio}, {"plausible", pca.tt_plausible}}}};
  const auto k = static_cast<std::int64_t>(seg.clusters.size());
  clusters.mean_spectra = protocol::Array::from<double>("mean_spectra", mean, {k, E});
  clusters.stderr_spectra = protocol::Array::from<double>("stderr_spectra", stderr_, {k, E});
  out.push_back(std::move(clusters).to_wire());
}

}  // namespace

std::vector<protocol::WireMessage> make_map_messages(const Scan& scan, std::int64_t version, bool final, bool with_segments,
                                                     const ScanProgress* progress, bool with_fit) {
  const auto header = map_header(scan, progress ? *progress : scan.progress(), version, final);
  std::vector<protocol::WireMessage> out;
  // Segmentation needs no references: published even when there is no fit.
  if (const auto* seg = scan.segmentation(); seg && with_segments) append_segment_messages(scan, header, *seg, out);
  const auto* fit = scan.fit();
  if (!fit) return out;
  const auto& maps = fit->maps();
  const std::int64_t R = scan.rows(), C = scan.cols(), K = fit->model().n_refs();

  // The image-level reference selection, on the cycles that revise it (with the segments).
  if (const auto* sel = scan.reference_selection(); sel && with_segments) {
    auto selection = to_json(*sel);
    auto selected = selection.at("selected").get<std::vector<std::string>>();
    out.push_back(protocol::ReferencesProduct{.map = header, .selected = std::move(selected), .selection = std::move(selection)}.to_wire());
  }
  if (!with_fit) return out;

  // Fractions where the quality mask holds (0 elsewhere), with the mask itself.
  const auto& mask = scan.mask();
  protocol::FractionsProduct fractions{.map = header,
                                       .reference_names = fit->model().reference_names,
                                       .fit_method = science::to_string(fit->method()),
                                       .mask_thickness_threshold = mask.thickness_threshold,
                                       .mask_valid_pixels = static_cast<std::int64_t>(mask.n_valid),
                                       .fractions = masked("fractions", maps.fractions, mask.valid, {K, R, C}, scan.threads()),
                                       .fraction_sigma = masked("fraction_sigma", maps.fraction_sigma, mask.valid, {K, R, C}, scan.threads()),
                                       .mask = FramePool::maps().array<std::uint8_t>("mask", mask.valid, {R, C})};
  if (const auto& nb = fit->spatial_neighbours(); !nb.empty())
    fractions.spatial_neighbours = FramePool::maps().array<float>("spatial_neighbours", nb, {R, C});
  out.push_back(std::move(fractions).to_wire());

  out.push_back(protocol::ThicknessProduct{header, FramePool::maps().array<float>("thickness", maps.thickness, {R, C})}.to_wire());
  out.push_back(protocol::ResidualProduct{header, FramePool::maps().array<float>("residual", maps.residual, {R, C}),
                                          FramePool::maps().array<float>("rfactor", maps.rfactor, {R, C})}
                    .to_wire());
  if (const auto* edge = scan.edge_maps())
    out.push_back(protocol::EdgeProduct{.map = header,
                                        .e0_scan_eV = edge->ranges.e0,
                                        .pixels_computed = static_cast<std::int64_t>(edge->computed),
                                        .e0 = FramePool::maps().array<float>("e0", edge->e0, {R, C}),
                                        .half_step = FramePool::maps().array<float>("half_step", edge->half_step, {R, C}),
                                        .white_line = FramePool::maps().array<float>("white_line", edge->white_line, {R, C}),
                                        .edge_step = FramePool::maps().array<float>("edge_step", edge->edge_step, {R, C})}
                      .to_wire());
  out.push_back(protocol::NenergiesProduct{header, FramePool::maps().array<std::uint16_t>("nenergies", maps.nenergies, {R, C})}.to_wire());
  return out;
}

protocol::WireMessage make_status_message(const nlohmann::json& status, const std::string& scan_id, std::int64_t version) {
  return protocol::StatusProduct{.scan_id = scan_id,
                                 .version = version,
                                 .time_unix = now_unix(),
                                 .state = status.at("state").get<std::string>(),
                                 .details = status}
      .to_wire();
}

protocol::WireMessage make_energies_message(const nlohmann::json& selection, std::int64_t version) {
  return protocol::EnergiesProduct{.scan_id = selection.value("scan_id", std::string()),
                                   .version = version,
                                   .time_unix = now_unix(),
                                   .energies_eV = selection.at("energies_eV").get<std::vector<double>>(),
                                   .selection = selection}
      .to_wire();
}

protocol::WireMessage make_error_message(const std::string& scan_id, const std::string& code, const std::string& message,
                                         std::int64_t count, std::int64_t version) {
  return protocol::ErrorProduct{.scan_id = scan_id, .code = code, .message = message, .count = count, .version = version, .time_unix = now_unix()}
      .to_wire();
}

}  // namespace xanesd
