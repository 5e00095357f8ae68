#include "store/result_file.hpp"

#include <chrono>

#include "store/h5.hpp"

namespace xanesd {
namespace {

using hs = std::vector<hsize_t>;

void write_scan_info(hid_t entry, const Scan& scan, const nlohmann::json& config, const nlohmann::json& counters) {
  h5::write_string(entry, "scan_id", scan.id());
  h5::write_string(entry, "definition", "NXxanes_maps");  // informal: documented in protocol/PROTOCOL.md
  h5::write_string(entry, "program_name", "xanesd");
  std::vector<double> e = scan.energies();
  h5::write(entry, "energy", e);
  {
    h5::Handle ds(H5Dopen2(entry, "energy", H5P_DEFAULT), H5Dclose, "open energy");
    h5::attr_string(ds, "units", "eV");
  }
  h5::write_string(entry, "config", config.dump(2));
  h5::write_string(entry, "status", nlohmann::json{{"scan", scan.summary()}, {"counters", counters}}.dump(2));
}

void write_results(hid_t entry, const Scan& scan) {
  auto results = h5::create_group(entry, "results", "NXdata");
  const auto R = static_cast<hsize_t>(scan.rows()), C = static_cast<hsize_t>(scan.cols());
  std::vector<std::int32_t> y(R), x(C);
  for (hsize_t i = 0; i < R; ++i) y[i] = static_cast<std::int32_t>(i);
  for (hsize_t i = 0; i < C; ++i) x[i] = static_cast<std::int32_t>(i);
  h5::write(results, "y", y);
  h5::write(results, "x", x);
  const auto* fit = scan.fit();
  if (!fit) {
    h5::write_string(results, "fit_error", scan.fit_error());
    return;
  }
  const auto& maps = fit->maps();
  const auto K = static_cast<hsize_t>(fit->model().n_refs());
  const auto& mask = scan.mask();
  h5::write(results, "fractions", science::apply_mask(maps.fractions, mask.valid).data(), hs{K, R, C});
  h5::write(results, "mask", mask.valid.data(), hs{R, C});
  {
    h5::Handle ds(H5Dopen2(results, "mask", H5P_DEFAULT), H5Dclose, "open mask");
    h5::attr_string(ds, "description", "1 = fitted and passes the mask.* thresholds (fractions are 0 elsewhere)");
  }
  h5::write_strings(results, "reference_names", fit->model().reference_names);
  h5::write(results, "thickness", maps.thickness.data(), hs{R, C});
  h5::write(results, "fraction_sigma", science::apply_mask(maps.fraction_sigma, mask.valid).data(), hs{K, R, C});
  h5::write(results, "residual", maps.residual.data(), hs{R, C});
  h5::write(results, "rfactor", maps.rfactor.data(), hs{R, C});
  h5::write(results, "nenergies", maps.nenergies.data(), hs{R, C});
  h5::write(results, "fitted", maps.fitted.data(), hs{R, C});
  h5::write_string(results, "fit_method", science::to_string(fit->method()));
  h5::attr_string(results, "signal", "fractions");
  h5::attr_strings(results, "axes", {".", "y", "x"});
  h5::attr_string(results, "title", "species fractions c_k/Σc (per reference)");
}

void write_edge_maps(hid_t entry, const Scan& scan) {
  const auto* edge = scan.edge_maps();
  if (!edge) return;
  auto g = h5::create_group(entry, "edge", "NXdata");
  const hs dims{static_cast<hsize_t>(scan.rows()), static_cast<hsize_t>(scan.cols())};
  h5::write(g, "e0", edge->e0.data(), dims);
  h5::write(g, "half_step", edge->half_step.data(), dims);
  h5::write(g, "white_line", edge->white_line.data(), dims);
  h5::write(g, "edge_step", edge->edge_step.data(), dims);
  h5::attr_string(g, "signal", "white_line");
  h5::attr_string(g, "title", "per-pixel edge maps, eV (0 = not computed: masked or incomplete)");
  const nlohmann::json ranges = {{"e0_eV", edge->ranges.e0},       {"pre1_eV", edge->ranges.pre1}, {"pre2_eV", edge->ranges.pre2},
                                 {"norm1_eV", edge->ranges.norm1}, {"norm2_eV", edge->ranges.norm2}, {"nnorm", edge->ranges.nnorm}};
  h5::write_string(g, "normalization", ranges.dump());
}

void write_spectra(hid_t entry, const Scan& scan) {
  auto data = h5::create_group(entry, "data", "NXdata");
  const auto E = static_cast<hsize_t>(scan.energies().size());
  h5::write(data, "spectra", scan.spectra().data(), hs{E, static_cast<hsize_t>(scan.rows()), static_cast<hsize_t>(scan.cols())});
  h5::write(data, "energy", scan.energies());
  h5::attr_string(data, "signal", "spectra");
  h5::attr_strings(data, "axes", {"energy", ".", "."});
  h5::attr_string(data, "title", "normalized signal per pixel (NaN = not measured)");
}

void write_xrf(hid_t entry, const Scan& scan) {
  if (!scan.start().xrf_channels.empty()) {
    auto xrf = h5::create_group(entry, "xrf", "NXcollection");
    for (std::size_t ch = 0; ch < scan.start().xrf_channels.size(); ++ch)
      h5::write(xrf, scan.start().xrf_channels[ch], scan.xrf().data() + ch * scan.pixels(),
                hs{static_cast<hsize_t>(scan.rows()), static_cast<hsize_t>(scan.cols())});
  }
}

}  // namespace

void write_result_file(const std::filesystem::path& path, const Scan& scan, const nlohmann::json& config,
                       const nlohmann::json& counters, bool save_spectra) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  const auto tmp = path.string() + ".partial";
  {
    auto file = h5::create_file(tmp);
    h5::attr_string(file, "default", "entry");
    h5::attr_string(file, "creator", "xanesd");
    auto entry = h5::create_group(file, "entry", "NXentry");
    h5::attr_string(entry, "default", "results");
    write_scan_info(entry, scan, config, counters);
    write_results(entry, scan);
    write_edge_maps(entry, scan);
    if (save_spectra) write_spectra(entry, scan);
    write_xrf(entry, scan);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace xanesd
