#include "store/result_file.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <functional>

#include "store/h5.hpp"
#include "xanesd/protocol/messages.hpp"

#ifndef XANESD_VERSION
#define XANESD_VERSION "unknown"
#endif

namespace xanesd {
namespace {

using hs = std::vector<hsize_t>;

// The shape of a per-pixel map and its NeXus axes: rows × cols (y, x), or for a volume fitted as
// its slices stacked Z × Y × X (z, y, x). `leading`: a dimension before the pixels (references,
// energies) and its axis name.
struct PixelGrid {
  hs dims;
  std::vector<std::string> axes;
};
PixelGrid pixel_grid(const Scan& scan, std::optional<std::pair<hsize_t, std::string>> leading = std::nullopt) {
  const auto R = static_cast<hsize_t>(scan.rows()), C = static_cast<hsize_t>(scan.cols());
  const auto Y = static_cast<hsize_t>(scan.slice_rows());
  PixelGrid g = Y > 0 && R % Y == 0 ? PixelGrid{{R / Y, Y, C}, {"z", "y", "x"}} : PixelGrid{{R, C}, {"y", "x"}};
  if (leading) g.dims.insert(g.dims.begin(), leading->first), g.axes.insert(g.axes.begin(), leading->second);
  return g;
}
// Soft links in `g` to /entry/results' pixel axes, so each NXdata group plots on its own.
void link_pixel_axes(hid_t g, const Scan& scan) {
  for (const auto& axis : pixel_grid(scan).axes)
    if (H5Lcreate_soft(("/entry/results/" + axis).c_str(), g, axis.c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0)
      throw std::runtime_error("cannot link an axis");
}
constexpr const char* kVersion = XANESD_VERSION;

// Units of the result file's quantities (NeXus @units; "1" = dimensionless, a ratio or a count).
constexpr const char* kSignalUnits = "1 (normalized signal: -ln(I/I0) in transmission, counts/I0 in fluorescence)";
constexpr const char* kThicknessUnits = "1 (reference units: edge steps for edge-normalized references, OD for OD references)";

void units(hid_t loc, const std::string& dataset, const std::string& value) {
  h5::Handle ds(H5Dopen2(loc, dataset.c_str(), H5P_DEFAULT), H5Dclose, "open " + dataset);
  h5::attr_string(ds, "units", value);
}

void units(hid_t loc, std::initializer_list<std::pair<const char*, const char*>> table) {
  for (const auto& [name, u] : table)
    if (h5::exists(loc, name)) units(loc, name, u);
}

std::string iso_time(std::chrono::system_clock::time_point t) {
  const auto tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// A NeXus-safe group name from a reference name: [A-Za-z0-9_], unique among `taken`.
std::string group_name(const std::string& prefix, const std::string& name, std::vector<std::string>& taken) {
  std::string n = prefix;
  for (unsigned char c : name) n += std::isalnum(c) ? static_cast<char>(c) : '_';
  std::string out = n;
  for (int k = 2; std::find(taken.begin(), taken.end(), out) != taken.end(); ++k) out = n + "_" + std::to_string(k);
  taken.push_back(out);
  return out;
}

void write_scan_info(hid_t entry, const Scan& scan, const nlohmann::json& config, const nlohmann::json& counters) {
  h5::write_string(entry, "scan_id", scan.id());
  h5::write_string(entry, "definition", "NXxanes_maps");  // informal: documented in protocol/PROTOCOL.md
  h5::write_string(entry, "program_name", "xanesd");
  {
    h5::Handle ds(H5Dopen2(entry, "program_name", H5P_DEFAULT), H5Dclose, "open program_name");
    h5::attr_string(ds, "version", kVersion);
  }
  h5::write_string(entry, "start_time", iso_time(scan.started()));
  if (const auto ended = scan.ended()) h5::write_string(entry, "end_time", iso_time(*ended));
  // What was fitted: the scan file of `xanesd fit`, or the run a live scan belongs to (its start's metadata).
  if (config.contains("input") && config["input"].is_string()) h5::write_string(entry, "input_file", config["input"].get<std::string>());
  constexpr auto replace_bad = nlohmann::json::error_handler_t::replace;
  if (const auto& md = scan.start().metadata; md.is_object() && !md.empty()) {
    h5::write_string(entry, "start_metadata", md.dump(2, ' ', false, replace_bad));
    for (const char* key : {"run_id", "uid"})
      if (md.contains(key) && md[key].is_string()) {
        h5::write_string(entry, "entry_identifier", md[key].get<std::string>());
        break;
      }
  }
  h5::write_string(entry, "mode", protocol::to_string(scan.start().mode));
  std::vector<double> e = scan.energies();
  h5::write(entry, "energy", e);
  units(entry, "energy", "eV");
  // Replace, not throw, on invalid UTF-8 (a reference name from a file): the scan is worth more.
  constexpr auto replace = nlohmann::json::error_handler_t::replace;
  h5::write_string(entry, "config", config.dump(2, ' ', false, replace));
  h5::write_string(entry, "status", nlohmann::json{{"scan", scan.summary()}, {"counters", counters}}.dump(2, ' ', false, replace));
}

// /entry/results: the fit's maps (their values written as per-pixel datasets) and what they mean.
void write_results(hid_t entry, const Scan& scan) {
  auto results = h5::require_group(entry, "results", "NXdata");
  const auto grid = pixel_grid(scan);
  for (std::size_t a = 0; a < grid.axes.size(); ++a) {
    std::vector<std::int32_t> index(grid.dims[a]);
    for (hsize_t i = 0; i < grid.dims[a]; ++i) index[i] = static_cast<std::int32_t>(i);
    h5::write(results, grid.axes[a], index);
    units(results, grid.axes[a], "pixel");
  }
  const auto* fit = scan.fit();
  if (!fit) {
    h5::write_string(results, "fit_error", scan.fit_error());
    return;
  }
  const auto K = static_cast<hsize_t>(fit->model().n_refs());
  const auto per_reference = pixel_grid(scan, std::pair<hsize_t, std::string>{K, "reference_index"});
  {
    h5::Handle ds(H5Dopen2(results, "mask", H5P_DEFAULT), H5Dclose, "open mask");
    h5::attr_string(ds, "description", "1 = fitted and passes the mask.* thresholds (fractions are 0 elsewhere)");
  }
  h5::write_strings(results, "reference_names", fit->model().reference_names);
  h5::write_string(results, "fit_method", science::to_string(fit->method()));
  if (h5::exists(results, "spatial_neighbours")) {
    h5::Handle ds(H5Dopen2(results, "spatial_neighbours", H5P_DEFAULT), H5Dclose, "open spatial_neighbours");
    h5::attr_string(ds, "description",
                    "fit.spatial: effective number of independent pixels behind each pixel's fractions "
                    "(σ² own fit / σ² averaged; 1 = own fit only, 0 = no fit)");
  }
  // NeXus errors of `fractions` (silx, h5web): the same data under the conventional name.
  if (H5Lcreate_hard(results, "fraction_sigma", results, "fractions_errors", H5P_DEFAULT, H5P_DEFAULT) < 0)
    throw std::runtime_error("cannot link fractions_errors");
  std::vector<std::int32_t> index(K);
  for (hsize_t k = 0; k < K; ++k) index[k] = static_cast<std::int32_t>(k);
  h5::write(results, "reference_index", index);
  {
    h5::Handle ds(H5Dopen2(results, "reference_index", H5P_DEFAULT), H5Dclose, "open reference_index");
    h5::attr_string(ds, "long_name", "reference (index into reference_names)");
  }
  units(results, {{"fractions", "1"}, {"mask", "1"}, {"thickness", kThicknessUnits}, {"fraction_sigma", "1"},
                  {"residual", kSignalUnits}, {"rfactor", "1"}, {"nenergies", "1"}, {"fitted", "1"},
                  {"spatial_neighbours", "1"}, {"reference_index", "1"}});
  h5::attr_string(results, "signal", "fractions");
  h5::attr_strings(results, "axes", per_reference.axes);
  h5::attr_string(results, "title", "species fractions c_k/Σc (per reference)");
}

// One 2-D NXdata per reference (/entry/fraction_<name>): its fraction map with its errors and
// labelled pixel axes, so silx and h5web plot each species by name. The maps are virtual
// datasets over the reference's plane of /entry/results' fractions and fraction_sigma (written
// by write_results): the file holds each value once. Returns the group names.
std::vector<std::string> write_fraction_maps(hid_t entry, const Scan& scan) {
  std::vector<std::string> groups;
  const auto* fit = scan.fit();
  if (!fit) return groups;
  const auto& names = fit->model().reference_names;
  const auto axes = pixel_grid(scan).axes;
  const auto per_reference = pixel_grid(scan, std::pair<hsize_t, std::string>{names.size(), "reference_index"});
  std::vector<std::string> taken;
  for (std::size_t k = 0; k < names.size(); ++k) {
    const auto name = group_name("fraction_", names[k], taken);
    auto g = h5::create_group(entry, name, "NXdata");
    h5::write_plane_view(g, "fraction", "/entry/results/fractions", per_reference.dims, k, H5T_NATIVE_FLOAT);
    h5::write_plane_view(g, "fraction_errors", "/entry/results/fraction_sigma", per_reference.dims, k, H5T_NATIVE_FLOAT);
    link_pixel_axes(g, scan);
    {
      h5::Handle ds(H5Dopen2(g, "fraction", H5P_DEFAULT), H5Dclose, "open fraction");
      h5::attr_string(ds, "long_name", "fraction of " + names[k]);
    }
    units(g, {{"fraction", "1"}, {"fraction_errors", "1"}});
    h5::attr_string(g, "signal", "fraction");
    h5::attr_strings(g, "axes", axes);
    h5::attr_string(g, "reference", names[k]);
    h5::attr_string(g, "title", "fraction of " + names[k] + " (c_k/Σc; 0 outside the mask)");
    groups.push_back(name);
  }
  return groups;
}

// /entry/signal_mean: the mean measured signal per pixel (its values: PixelDatasets), the
// default plot when nothing was fitted.
void write_signal_mean(hid_t entry, const Scan& scan) {
  auto g = h5::require_group(entry, "signal_mean", "NXdata");
  const auto grid = pixel_grid(scan);
  units(g, "signal_mean", kSignalUnits);
  link_pixel_axes(g, scan);
  h5::attr_string(g, "signal", "signal_mean");
  h5::attr_strings(g, "axes", grid.axes);
  h5::attr_string(g, "title", "mean normalized signal over the measured energies (no fit: " + scan.fit_error() + ")");
}

// /entry/references: the spectra the scan was fitted with, as fitted (after normalization), with
// where each came from and what normalization did: enough to refit the scan without the files.
void write_references(hid_t entry, const Scan& scan) {
  const auto& refs = scan.library();
  if (refs.empty()) return;
  auto g = h5::create_group(entry, "references", "NXcollection");
  std::vector<std::string> names, taken;
  for (const auto& r : refs) names.push_back(r.name);
  h5::write_strings(g, "names", names);
  for (const auto& r : refs) {
    auto d = h5::create_group(g, group_name("", r.name, taken), "NXdata");
    h5::write_string(d, "name", r.name);
    h5::write(d, "energy", r.energies_eV);
    h5::write(d, "mu", r.mu);
    h5::write_string(d, "source", r.source);
    h5::write_string(d, "column", r.column);
    h5::write_string(d, "normalization", r.normalization);
    h5::write(d, "e0", std::vector<double>{r.e0_eV});
    h5::write(d, "edge_step", std::vector<double>{r.edge_step});
    units(d, {{"energy", "eV"}, {"mu", r.normalization.rfind("pre-edge line", 0) == 0 || r.normalization.rfind("none", 0) == 0
                                            ? "1 (as in the file, e.g. optical density)" : "1 (edge-normalized)"},
              {"e0", "eV"}, {"edge_step", "1 (as in the file)"}});
    h5::attr_string(d, "signal", "mu");
    h5::attr_strings(d, "axes", {"energy"});
    h5::attr_string(d, "title", "reference " + r.name);
  }
}

// /entry/results/reference_selection: which loaded references the fit uses and the evidence.
void write_reference_selection(hid_t entry, const Scan& scan) {
  const auto* sel = scan.reference_selection();
  if (!sel) return;
  auto results = h5::open_group(entry, "results");
  auto g = h5::create_group(results, "reference_selection", "NXcollection");
  std::vector<std::string> names;
  std::vector<std::uint8_t> selected;
  std::vector<double> delta, threshold, stability, mean_fraction;
  for (const auto& r : sel->references) {
    names.push_back(r.name);
    selected.push_back(r.selected);
    delta.push_back(r.delta_chi2);
    threshold.push_back(r.threshold);
    stability.push_back(r.stability);
    mean_fraction.push_back(r.mean_fraction);
  }
  h5::write_strings(g, "library_names", names);
  h5::write(g, "selected", selected);
  h5::write(g, "delta_chi2", delta);
  h5::write(g, "threshold", threshold);
  h5::write(g, "stability", stability);
  h5::write(g, "mean_fraction", mean_fraction);
  h5::write_string(g, "report", to_json(*sel).dump(2));
  units(g, {{"selected", "1"}, {"delta_chi2", "1"}, {"threshold", "1"}, {"stability", "1"}, {"mean_fraction", "1"}});
}

void write_edge_maps(hid_t entry, const Scan& scan) {
  const auto* edge = scan.edge_maps();
  if (!edge) return;
  auto g = h5::require_group(entry, "edge", "NXdata");
  h5::attr_string(g, "signal", "white_line");
  h5::attr_string(g, "title", "per-pixel edge maps, eV (0 = not computed: masked or incomplete)");
  const nlohmann::json ranges = {{"e0_eV", edge->ranges.e0},       {"pre1_eV", edge->ranges.pre1}, {"pre2_eV", edge->ranges.pre2},
                                 {"norm1_eV", edge->ranges.norm1}, {"norm2_eV", edge->ranges.norm2}, {"nnorm", edge->ranges.nnorm}};
  h5::write_string(g, "normalization", ranges.dump());
  units(g, {{"e0", "eV"}, {"half_step", "eV"}, {"white_line", "eV"}, {"edge_step", kSignalUnits}});
}

// /entry/results/segments: the label map, each cluster's mean spectrum and fit, PCA diagnostics.
void write_segments(hid_t entry, const Scan& scan) {
  const auto* seg = scan.segmentation();
  if (!seg) return;
  auto results = h5::open_group(entry, "results");
  auto g = h5::require_group(results, "segments", "NXdata");
  if (!h5::exists(g, "segments")) {  // no label map (PixelDatasets): why not
    h5::write_string(g, "waiting", seg->waiting);
    return;
  }

  const auto E = static_cast<hsize_t>(scan.energies().size()), k = static_cast<hsize_t>(seg->clusters.size());
  {
    h5::Handle ds(H5Dopen2(g, "segments", H5P_DEFAULT), H5Dclose, "open segments");
    h5::attr_string(ds, "description", "cluster id per pixel: 0 = no material (mask), 255 = not measured, else cluster_ids");
  }
  h5::attr_string(g, "signal", "segments");
  std::vector<std::int32_t> ids;
  std::vector<std::int64_t> pixels;
  std::vector<double> mean, se, thickness, residual, fractions, sigma;
  std::vector<std::uint8_t> unexplained;
  const auto K = static_cast<hsize_t>(scan.fit() ? scan.fit()->model().n_refs() : 0);
  for (const auto& c : seg->clusters) {
    ids.push_back(c.id);
    pixels.push_back(static_cast<std::int64_t>(c.pixels));
    mean.insert(mean.end(), c.mean.begin(), c.mean.end());
    se.insert(se.end(), c.stderr_.begin(), c.stderr_.end());
    thickness.push_back(c.thickness);
    unexplained.push_back(c.fitted && c.unexplained);
    residual.push_back(c.residual);
    for (hsize_t i = 0; i < K; ++i) {
      fractions.push_back(c.fitted ? c.fractions[i] : std::nan(""));
      sigma.push_back(c.fitted ? c.fraction_sigma[i] : std::nan(""));
    }
  }
  h5::write(g, "cluster_ids", ids);
  h5::write(g, "cluster_pixels", pixels);
  h5::write(g, "cluster_spectra", mean.data(), hs{k, E});
  h5::write(g, "cluster_spectra_stderr", se.data(), hs{k, E});
  if (K > 0) {
    h5::write(g, "cluster_fractions", fractions.data(), hs{k, K});
    h5::write(g, "cluster_fraction_sigma", sigma.data(), hs{k, K});
    h5::write(g, "cluster_thickness", thickness);
    h5::write(g, "cluster_residual", residual);
    h5::write(g, "cluster_unexplained", unexplained);
    h5::write_strings(g, "reference_names", scan.fit()->model().reference_names);
  }
  h5::write(g, "silhouette", std::vector<double>{seg->silhouette});
  auto pca = h5::create_group(g, "pca", "NXcollection");
  h5::write(pca, "explained_variance_ratio", seg->pca.explained);
  std::vector<std::int32_t> energies(seg->pca.energies.begin(), seg->pca.energies.end());
  h5::write(pca, "energy_indices", energies);
  h5::write(pca, "components", std::vector<std::int32_t>{seg->pca.components});
  h5::write(pca, "significant", std::vector<std::int32_t>{seg->pca.significant});
  h5::write(pca, "noise_sigma", std::vector<double>{seg->pca.noise_sigma});
  if (!seg->pca.tt_residual.empty()) {
    h5::write(pca, "target_transformation_residual", seg->pca.tt_residual);
    h5::write(pca, "target_transformation_ratio", seg->pca.tt_ratio);
    h5::write(pca, "target_transformation_plausible", seg->pca.tt_plausible);
  }
  units(g, {{"segments", "1"}, {"cluster_ids", "1"}, {"cluster_pixels", "pixel"}, {"cluster_spectra", kSignalUnits},
            {"cluster_spectra_stderr", kSignalUnits}, {"cluster_fractions", "1"}, {"cluster_fraction_sigma", "1"},
            {"cluster_thickness", kThicknessUnits}, {"cluster_residual", kSignalUnits}, {"cluster_unexplained", "1"},
            {"silhouette", "1"}});
  units(pca, {{"explained_variance_ratio", "1"}, {"energy_indices", "1"}, {"components", "1"}, {"significant", "1"},
              {"noise_sigma", kSignalUnits}, {"target_transformation_residual", kSignalUnits},
              {"target_transformation_ratio", "1"}, {"target_transformation_plausible", "1"}});
}

void write_spectra(hid_t entry, const Scan& scan) {
  auto data = h5::require_group(entry, "data", "NXdata");
  const auto E = static_cast<hsize_t>(scan.energies().size());
  const auto grid = pixel_grid(scan, std::pair<hsize_t, std::string>{E, "energy"});
  h5::write(data, "energy", scan.energies());
  h5::attr_string(data, "signal", "spectra");
  std::vector<std::string> axes(grid.axes.size(), ".");
  axes[0] = "energy";
  h5::attr_strings(data, "axes", axes);
  h5::attr_string(data, "title", "normalized signal per pixel (NaN = not measured)");
  units(data, {{"spectra", kSignalUnits}, {"energy", "eV"}});
}

void write_xrf(hid_t entry, const Scan& scan) {
  if (scan.start().xrf_channels.empty()) return;
  auto xrf = h5::require_group(entry, "xrf", "NXcollection");
  for (const auto& channel : scan.start().xrf_channels) units(xrf, channel, "counts (as sent)");
}

// The result file's per-pixel datasets (the maps, segment labels, edge maps, XRF, spectra; the
// mean signal without a fit), listed once: the file gets each at the image's shape, and a
// process writes the rows it owns (one process all of them, an MPI rank its block's).
struct PixelDataset {
  std::string path;  // under /entry
  hid_t type;
  std::optional<std::pair<hsize_t, std::string>> planes;  // a leading axis (references, energies) and its name
  // (planes or 1) × scan.pixels() values, plane after plane: the scan's own, or made for the
  // file when it is written (one such copy at a time).
  const void* data = nullptr;
  std::function<std::vector<float>()> make;
};

class PixelDatasets {
 public:
  PixelDatasets(const Scan& scan, bool save_spectra) {
    const auto P = scan.pixels();
    if (const auto* fit = scan.fit()) {
      const auto& maps = fit->maps();
      const auto& valid = scan.mask().valid;
      const std::pair<hsize_t, std::string> per_reference{static_cast<hsize_t>(fit->model().n_refs()), "reference_index"};
      // Fractions and their errors are 0 outside the mask.
      add_made("results/fractions", [&maps, &valid] { return science::apply_mask(maps.fractions, valid); }, per_reference);
      add("results/mask", valid.data());
      add("results/thickness", maps.thickness.data());
      add_made("results/fraction_sigma", [&maps, &valid] { return science::apply_mask(maps.fraction_sigma, valid); },
               per_reference);
      add("results/residual", maps.residual.data());
      add("results/rfactor", maps.rfactor.data());
      add("results/nenergies", maps.nenergies.data());
      add("results/fitted", maps.fitted.data());
      if (const auto& nb = fit->spatial_neighbours(); nb.size() == P) add("results/spatial_neighbours", nb.data());
    } else {
      add_made("signal_mean/signal_mean", [&scan] { return signal_mean(scan); });
    }
    if (const auto* edge = scan.edge_maps())
      for (const auto& [name, map] : {std::pair{"e0", &edge->e0}, std::pair{"half_step", &edge->half_step},
                                      std::pair{"white_line", &edge->white_line}, std::pair{"edge_step", &edge->edge_step}})
        add(std::string("edge/") + name, map->data());
    if (const auto* seg = scan.segmentation(); seg && seg->waiting.empty() && !seg->labels.empty())
      add("results/segments/segments", seg->labels.data());
    if (save_spectra)
      add("data/spectra", scan.spectra().data(), std::pair<hsize_t, std::string>{scan.energies().size(), "energy"});
    const auto& channels = scan.start().xrf_channels;
    for (std::size_t ch = 0; ch < channels.size(); ++ch) add("xrf/" + channels[ch], scan.xrf().data() + ch * P);
  }
  const std::vector<PixelDataset>& list() const { return list_; }
  // The list's paths in order, as one number: every rank of a job must write the same datasets.
  double fingerprint() const {
    std::string paths;
    for (const auto& d : list_) paths += d.path + '\n';
    return static_cast<double>(std::hash<std::string>{}(paths) % (1u << 20));
  }

 private:
  template <class T>
  void add(std::string path, const T* data, std::optional<std::pair<hsize_t, std::string>> planes = std::nullopt) {
    list_.push_back({std::move(path), h5::native_type<T>(), std::move(planes), data, {}});
  }
  void add_made(std::string path, std::function<std::vector<float>()> make,
                std::optional<std::pair<hsize_t, std::string>> planes = std::nullopt) {
    list_.push_back({std::move(path), H5T_NATIVE_FLOAT, std::move(planes), nullptr, std::move(make)});
  }
  // The mean of each pixel's measured samples (NaN: none).
  static std::vector<float> signal_mean(const Scan& scan) {
    const auto P = scan.pixels(), E = scan.energies().size();
    std::vector<float> mean(P, 0.f);
    std::vector<std::int32_t> n(P, 0);
    const auto& s = scan.spectra();
    for (std::size_t e = 0; e < E; ++e)
      for (std::size_t p = 0; p < P; ++p)
        if (const float v = s[e * P + p]; std::isfinite(v)) mean[p] += v, ++n[p];
    for (std::size_t p = 0; p < P; ++p) mean[p] = n[p] ? mean[p] / static_cast<float>(n[p]) : std::nanf("");
    return mean;
  }
  std::vector<PixelDataset> list_;
};

// Every per-pixel dataset at the image's shape (`image`: the whole image's scan), unwritten.
void create_pixel_datasets(hid_t entry, const Scan& image, const PixelDatasets& pixels) {
  for (const auto& d : pixels.list()) h5::create_allocated(entry, d.path, d.type, pixel_grid(image, d.planes).dims);
}

// This process's rows of every per-pixel dataset, from its scan (`transfer`: collective under MPI).
void write_own_rows(hid_t entry, const Scan& scan, const PixelDatasets& pixels, hid_t transfer) {
  const auto own = scan.own_rows();
  for (const auto& d : pixels.list()) {
    const auto made = d.make ? d.make() : std::vector<float>();
    h5::write_rows(entry, d.path, d.type, d.make ? made.data() : d.data, d.planes.has_value(),
                   static_cast<hsize_t>(own.first_row), static_cast<hsize_t>(own.rows), own.first_pixel, scan.pixels(),
                   transfer);
  }
}

}  // namespace

std::string path_name_error(std::string_view name) {
  if (name.empty() || name.size() > 128) return "must have 1 to 128 characters";
  if (name.front() == '.') return "must not start with '.'";
  for (unsigned char c : name)
    if (!(std::isalnum(c) || c == '.' || c == '_' || c == '-') || c >= 0x80)
      return "may only hold the characters A–Z a–z 0–9 . _ - (no separators, spaces, control characters or non-ASCII)";
  return {};
}

std::filesystem::path result_path(const std::filesystem::path& directory, const std::string& requested,
                                  const std::string& scan_id) {
  const std::filesystem::path rel = requested.empty() ? std::filesystem::path(scan_id + ".h5") : std::filesystem::path(requested);
  if (rel.is_absolute() || rel.has_root_name()) throw std::invalid_argument("save path must be relative to output.directory");
  for (const auto& part : rel)
    if (const auto why = path_name_error(part.string()); !why.empty())
      throw std::invalid_argument("save path component '" + part.string().substr(0, 64) + "' " + why);
  const auto root = std::filesystem::weakly_canonical(std::filesystem::absolute(directory));
  const auto out = std::filesystem::weakly_canonical(root / rel);
  // A symlink inside the folder must not lead out of it.
  const auto [end, _] = std::mismatch(root.begin(), root.end(), out.begin(), out.end());
  if (end != root.end()) throw std::invalid_argument("save path leads outside output.directory");
  return out;
}

std::string output_directory_error(const std::filesystem::path& directory) {
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) return "cannot create '" + directory.string() + "': " + ec.message();
  const auto probe = directory / ".xanesd-write-probe";
  const bool ok = static_cast<bool>(std::ofstream(probe) << "probe");
  std::filesystem::remove(probe, ec);
  return ok ? std::string() : "cannot write in '" + directory.string() + "'";
}

namespace {
bool is_hdf5_file(const std::filesystem::path& p) {
  static constexpr char kSignature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  if (!std::filesystem::is_regular_file(p)) return false;
  char head[8] = {};
  std::ifstream in(p, std::ios::binary);
  return in.read(head, 8) && std::equal(head, head + 8, kSignature);
}
}  // namespace

void write_result_file(const std::filesystem::path& path, const Scan& scan, const nlohmann::json& config,
                       const nlohmann::json& counters, bool save_spectra) {
  write_result_file(path, &scan, scan, config, counters, save_spectra, parallel::SerialComm());
}

void write_result_file(const std::filesystem::path& path, const Scan* image, const Scan& block, const nlohmann::json& config,
                       const nlohmann::json& counters, bool save_spectra, const parallel::Comm& comm) {
  const bool root = comm.rank() == 0;
  if (root && !image) throw std::logic_error("write_result_file: rank 0 needs the image's scan");
  const auto tmp = path.string() + ".partial";
  // Debris would fill the disk and make the next write fail: a failed write removes its own.
  struct RemoveOnFailure {
    std::string tmp;
    bool armed = true;
    ~RemoveOnFailure() {
      std::error_code ec;
      if (armed) std::filesystem::remove(tmp, ec);
    }
  } cleanup{tmp, root};
  const PixelDatasets pixels(block, save_spectra);
  if (comm.size() > 1) {
    // Every rank must list the same datasets, or the collective writes below would not match:
    // the same fingerprint on every rank, i.e. N · Σf² = (Σf)², or an error on every rank.
    const double f = pixels.fingerprint();
    std::vector<double> sums{f, f * f};
    comm.sum(sums);
    if (static_cast<double>(comm.size()) * sums[1] != sums[0] * sums[0])
      throw std::logic_error("write_result_file: the ranks' blocks do not have the same per-pixel datasets");
  }
  if (root) {
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
    if (std::filesystem::exists(std::filesystem::symlink_status(path)) && !is_hdf5_file(path))
      throw std::runtime_error("'" + path.string() + "' exists and is not an HDF5 file: not replaced");
    auto file = h5::create_file(tmp);
    h5::attr_string(file, "default", "entry");
    h5::attr_string(file, "creator", "xanesd");
    h5::attr_string(file, "file_time", iso_time(std::chrono::system_clock::now()));
    auto entry = h5::create_group(file, "entry", "NXentry");
    write_scan_info(entry, *image, config, counters);
    create_pixel_datasets(entry, *image, pixels);
    write_results(entry, *image);
    write_reference_selection(entry, *image);
    write_edge_maps(entry, *image);
    write_segments(entry, *image);
    write_references(entry, *image);
    if (save_spectra) write_spectra(entry, *image);
    write_xrf(entry, *image);
    // The default plot: the first reference's fraction map; without a fit, the mean signal.
    const auto maps = write_fraction_maps(entry, *image);
    if (maps.empty()) write_signal_mean(entry, *image);
    h5::attr_string(entry, "default", maps.empty() ? "signal_mean" : maps.front());
    if (comm.size() == 1) write_own_rows(entry, block, pixels, H5P_DEFAULT);
  }
  if (comm.size() > 1) {
    // Rank 0 wrote the file's structure, serially (parallel HDF5 writes no variable-length
    // strings): every rank now opens it with MPI-IO (so `path` must be on a file system they
    // all share) and writes its rows of the per-pixel datasets, one collective call each.
    comm.barrier();
    h5::Handle file, entry;
    try {
      file = h5::open_file_for_writing(tmp, comm.h5_file_access());
      entry = h5::open_group(file, "entry");
      write_own_rows(entry, block, pixels, comm.h5_transfer());
    } catch (const std::exception& e) {
      // Closing the file is collective: the other ranks, inside a collective write, would never
      // return to close it with this one. The job ends here.
      std::fprintf(stderr, "xanesd: rank %d: cannot write its rows of '%s': %s\n", comm.rank(), tmp.c_str(), e.what());
      std::error_code ec;
      if (root) std::filesystem::remove(tmp, ec);
      comm.abort(1);  // does not return
      throw;
    }
  }  // closed by every rank: the collective close flushes the file
  comm.barrier();
  if (root) std::filesystem::rename(tmp, path);
  cleanup.armed = false;
}

bool is_partial_result(const std::filesystem::path& path, const std::string& scan_id) {
  try {
    if (!std::filesystem::is_regular_file(path)) return false;
    const auto f = h5::open_file(path);
    if (h5::read_string(f, "entry/scan_id") != scan_id) return false;
    const auto status = nlohmann::json::parse(h5::read_string(f, "entry/status"));
    return status.at("scan").value("state", "") == "running";
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace xanesd
