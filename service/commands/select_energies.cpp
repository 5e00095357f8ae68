#include "commands/select_energies.hpp"

#include <algorithm>
#include <cmath>

#include "science/cancel.hpp"
#include "science/energy_selection.hpp"
#include "xanesd/protocol/wire.hpp"

namespace xanesd {

double measured_noise(const Scan& scan) {
  const auto* fit = scan.fit();
  if (!fit) return 0;
  const auto& maps = fit->maps();
  const auto& valid = scan.mask().valid;
  std::vector<double> v;
  for (std::size_t p = 0; p < maps.residual.size(); ++p)
    if (p < valid.size() && valid[p] && maps.thickness[p] > 0) v.push_back(maps.residual[p] / maps.thickness[p]);
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

Eigen::VectorXd measured_mean_spectrum(const Scan& scan, const std::vector<int>& energy_indices) {
  const auto* fit = scan.fit();
  if (!fit) return {};
  const auto& maps = fit->maps();
  const auto& valid = scan.mask().valid;
  const auto& store = scan.spectra();
  const std::size_t P = scan.pixels();
  Eigen::VectorXd out(static_cast<Eigen::Index>(energy_indices.size()));
  for (std::size_t i = 0; i < energy_indices.size(); ++i) {
    const auto e = static_cast<std::size_t>(energy_indices[i]);
    double sy = 0, st = 0;
    for (std::size_t p = 0; p < P; ++p) {
      if (p >= valid.size() || !valid[p] || !(maps.thickness[p] > 0)) continue;
      const float y = store[e * P + p];
      if (std::isnan(y)) continue;
      sy += y, st += maps.thickness[p];
    }
    if (!(st > 0)) return {};  // an energy no kept pixel has: no measured mean
    out(static_cast<Eigen::Index>(i)) = sy / st;
  }
  return out;
}

namespace {

nlohmann::json refuse(const std::string& why) {
  const std::string prefix = "select_energies: ";
  return {{"ok", false}, {"error", why.rfind(prefix, 0) == 0 ? why : prefix + why}};
}

// References the sample is made of. With a segmentation: a positive LASSO fit (NNLS refit)
// of each cluster's mean spectrum — low noise, and sparse where per-pixel NNLS spreads weight
// over look-alike references — and every reference with ≥ 5 % in some cluster. Without one:
// references with ≥ 10 % in at least 10 % of the kept pixels.
std::vector<int> references_in_use_by_fit(const Scan& scan, const science::SolveOptions& fit) {
  const auto& model = scan.fit()->model();
  const int K = model.n_refs();
  std::vector<int> used;
  const auto* seg = scan.segmentation();
  if (seg && seg->waiting.empty() && !seg->clusters.empty()) {
    const auto& rows = seg->pca.energies;
    Eigen::MatrixXd X(static_cast<Eigen::Index>(rows.size()), model.n_params());
    for (std::size_t i = 0; i < rows.size(); ++i) X.row(static_cast<Eigen::Index>(i)) = model.X.row(rows[i]);
    science::SolveOptions opt = fit;
    opt.method = science::FitMethod::lasso;
    opt.lasso_refit = true;
    opt.n_free = model.n_background();
    std::vector<std::uint8_t> in_use(static_cast<std::size_t>(K), 0);
    for (const auto& c : seg->clusters) {
      Eigen::VectorXd y(static_cast<Eigen::Index>(rows.size()));
      for (std::size_t i = 0; i < rows.size(); ++i) y(static_cast<Eigen::Index>(i)) = c.mean[static_cast<std::size_t>(rows[i])];
      const auto r = science::solve(X.transpose() * X, X.transpose() * y, y.squaredNorm(), static_cast<int>(rows.size()), opt);
      if (!r.ok) continue;
      const Eigen::VectorXd cv = r.theta.tail(K);
      const double total = cv.sum();
      for (int k = 0; k < K; ++k)
        if (total > 0 && cv(k) / total >= 0.05) in_use[static_cast<std::size_t>(k)] = 1;
    }
    for (int k = 0; k < K; ++k)
      if (in_use[static_cast<std::size_t>(k)]) used.push_back(k);
    return used;
  }
  const auto& maps = scan.fit()->maps();
  const auto& valid = scan.mask().valid;
  const std::size_t P = scan.pixels();
  for (int k = 0; k < K; ++k) {
    std::size_t strong = 0, kept = 0;
    for (std::size_t p = 0; p < P; ++p)
      if (valid[p]) ++kept, strong += maps.fractions[static_cast<std::size_t>(k) * P + p] >= 0.1f;
    if (kept > 0 && strong * 10 >= kept) used.push_back(k);
  }
  return used;
}

// Names of the references the scan's fit uses (indices of the fit's model are not indices
// into the loaded list once the image-level selection has chosen a subset).
std::vector<std::string> references_in_use(const Scan& scan, const science::SolveOptions& fit) {
  const auto& model = scan.fit()->model();
  // The image-level selection decided it from the whole image: the fit's references are those.
  if (const auto* sel = scan.reference_selection(); sel && sel->done()) return model.reference_names;
  std::vector<std::string> names;
  for (int k : references_in_use_by_fit(scan, fit)) names.push_back(model.reference_names[static_cast<std::size_t>(k)]);
  return names;
}

// What one selection may cost: RFE refits an A×A system for every A from the candidate count
// down (~C⁴/12 flops: 1,600 candidates took 80 s), and the mixtures are (train + test) × C
// doubles, several copies. Beyond these the request is refused before any work.
constexpr std::size_t kMaxCandidates = 512;
constexpr double kMaxMixtureValues = 2e7;  // ≈ 160 MB per copy

// Why a candidate grid cannot be selected from (empty when it can).
std::string grid_error(const std::vector<double>& grid, int n_train, int n_test) {
  if (grid.empty()) return "the candidate grid is empty";
  if (grid.size() > kMaxCandidates)
    return "the candidate grid has " + std::to_string(grid.size()) + " energies, at most " + std::to_string(kMaxCandidates) + " are allowed";
  for (double e : grid)
    if (!std::isfinite(e) || e <= 0) return "the candidate grid must hold finite energies > 0 eV";
  const double values = static_cast<double>(grid.size()) * (static_cast<double>(n_train) + n_test);
  if (values > kMaxMixtureValues)
    return "candidates × (train + test mixtures) = " + protocol::number_text(values) + " is more than " + protocol::number_text(kMaxMixtureValues) +
           ": use fewer candidates or mixtures (select.train_mixtures, select.test_mixtures)";
  return {};
}

nlohmann::json subset_json(const science::EnergySubset& s) {
  return {{"energies_eV", s.energies_eV}, {"indices", s.indices}, {"normalization_indices", s.normalization_indices},
          {"fraction_rmse", s.fraction_rmse}, {"seconds", s.seconds}};
}

}  // namespace

nlohmann::json select_energies_request(const protocol::SelectEnergiesArgs& req, const std::vector<science::Reference>& refs,
                                       const Scan* scan, const Config& cfg) {
  // The request's arguments were type- and range-checked by protocol::ControlRequest::parse;
  // the config gives what it leaves out.
  science::EnergySelectionOptions opt;
  const bool n_auto = req.n_auto || (!req.n && cfg.select.n == 0);
  opt.n_select = static_cast<int>(req.n.value_or(cfg.select.n));
  const double n_tolerance = req.n_tolerance.value_or(cfg.select.n_tolerance);
  const std::string objective = req.objective.value_or(cfg.select.objective);
  if (n_auto && objective != "equal_time") return refuse("n \"auto\" needs objective 'equal_time'");
  opt.n_normalization = static_cast<int>(req.normalization_points.value_or(cfg.select.normalization_points));
  opt.n_train = cfg.select.train_mixtures;
  opt.n_test = cfg.select.test_mixtures;
  opt.seed = req.seed ? static_cast<decltype(opt.seed)>(*req.seed) : cfg.select.seed;
  double noise = req.noise.value_or(cfg.select.noise);
  const double floor = req.variance_floor.value_or(cfg.select.variance_floor);
  const std::string source = req.source.value_or("references");
  opt.background = cfg.fit.background;

  // The candidate grid: given, or the scan's.
  std::vector<double> grid;
  if (req.energies_eV) {
    grid = *req.energies_eV;
  } else if (scan) {
    grid = scan->energies();
  } else {
    return refuse("no scan to take candidate energies from: give 'energies_eV'");
  }
  if (const auto why = grid_error(grid, opt.n_train, opt.n_test); !why.empty()) return refuse(why);

  std::vector<std::string> names;
  Eigen::MatrixXd spectra;  // grid × K
  try {
    if (source == "references" || source == "in_use") {
      if (refs.empty()) return refuse("no references are loaded (load_references first, or source 'clusters')");
      std::vector<science::Reference> chosen = refs;
      if (source == "in_use") {
        if (!scan || !scan->fit()) return refuse("source 'in_use' needs a fitted scan");
        chosen.clear();
        for (const auto& name : references_in_use(*scan, scan_settings(cfg).fit)) {
          const auto it = std::find_if(refs.begin(), refs.end(), [&](const auto& r) { return r.name == name; });
          if (it != refs.end()) chosen.push_back(*it);
        }
        if (chosen.size() < 2)
          return refuse("the scan uses " + std::to_string(chosen.size()) + " reference(s): nothing to tell apart (source 'references' uses all)");
      }
      spectra = science::resample(chosen, grid, cfg.references.margin_eV);
      for (const auto& r : chosen) names.push_back(r.name);
    } else if (source == "clusters") {
      const auto* seg = scan ? scan->segmentation() : nullptr;
      if (!seg || !seg->waiting.empty() || seg->clusters.size() < 2)
        return refuse("source 'clusters' needs a segmented scan with at least 2 clusters");
      if (req.energies_eV) return refuse("source 'clusters' selects among the scan's own measured energies");
      grid.clear();
      for (int j : seg->pca.energies) grid.push_back(scan->energies()[static_cast<std::size_t>(j)]);
      spectra.resize(static_cast<Eigen::Index>(grid.size()), static_cast<Eigen::Index>(seg->clusters.size()));
      for (std::size_t c = 0; c < seg->clusters.size(); ++c) {
        names.push_back("cluster " + std::to_string(seg->clusters[c].id));
        for (std::size_t i = 0; i < grid.size(); ++i)
          spectra(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(c)) = seg->clusters[c].mean[static_cast<std::size_t>(seg->pca.energies[i])];
      }
    }
  } catch (const std::exception& e) {
    return refuse(e.what());
  }

  std::string noise_source = "request";
  if (!req.noise) {
    noise_source = "config";
    if (noise <= 0) {
      noise = scan ? measured_noise(*scan) : 0.0;
      noise_source = "measured";
    }
    if (noise <= 0) noise = 0.01, noise_source = "default (no fitted scan)";
  }
  opt.noise = noise;

  // The variance profile (objective equal_time): Poisson in fluorescence, from the scan's
  // measured mean spectrum per unit edge step when the candidates are the scan's energies,
  // else from the references' equal mixture; constant in transmission.
  science::DwellOptions dopt;
  dopt.variance_floor = floor;
  dopt.poisson = !(scan && scan->start().mode == protocol::Mode::transmission);
  Eigen::VectorXd expected;
  std::string expected_source = dopt.poisson ? "references' equal mixture" : "none (transmission: constant variance)";
  if (dopt.poisson && scan && scan->fit() && !req.energies_eV) {
    std::vector<int> idx;
    if (source == "clusters") idx = scan->segmentation()->pca.energies;
    else for (std::size_t j = 0; j < grid.size(); ++j) idx.push_back(static_cast<int>(j));
    expected = measured_mean_spectrum(*scan, idx);
    if (expected.size()) expected_source = "scan mean";
  }

  science::EnergySelection sel;
  science::DwellSelection dwell;
  const bool equal_time = objective == "equal_time";
  try {
    if (!n_auto) sel = science::select_energies(names, spectra, grid, opt);
    if (equal_time) dwell = science::select_dwell(names, spectra, grid, expected, opt, dopt, n_auto ? n_tolerance : 0.0);
  } catch (const science::Cancelled&) {
    throw;  // not a refusal: the pipeline reports it as a cancelled command
  } catch (const std::exception& e) {
    return refuse(e.what());
  }
  const double E = static_cast<double>(grid.size());
  nlohmann::json reply = {{"ok", true},
                          {"source", source},
                          {"scan_id", scan ? scan->id() : ""},
                          {"reference_names", names},
                          {"candidates", grid.size()},
                          {"normalization_points", opt.n_normalization},
                          {"noise", noise},
                          {"noise_source", noise_source},
                          {"seed", opt.seed},
                          {"objective", objective},
                          {"variance", dopt.poisson ? "poisson" : "constant"}};
  nlohmann::json methods = nlohmann::json::object();
  if (!n_auto) methods = {{"rfe", subset_json(sel.rfe)}, {"a_optimal", subset_json(sel.a_optimal)}};
  if (equal_time) {
    const double nt = static_cast<double>(dwell.indices.size());
    std::vector<double> dwell_full_units;  // per-point dwell in units of the full grid's, for its total time
    for (double w : dwell.dwell_weights) dwell_full_units.push_back(w * E / nt);
    nlohmann::json curve = nlohmann::json::array();
    for (const auto& [n, r] : dwell.curve) curve.push_back({n, r});
    reply.update({{"n", dwell.n_select},
                  {"n_auto", n_auto},
                  {"method", "a_optimal_dwell"},
                  {"energies_eV", dwell.energies_eV},
                  {"indices", dwell.indices},
                  {"normalization_indices", dwell.normalization_indices},
                  {"dwell_weights", dwell.dwell_weights},
                  {"dwell_equal_time", dwell_full_units},
                  {"expected_spectrum", expected_source},
                  {"variance_floor", floor},
                  {"expected_fraction_rmse", dwell.rmse_equal_dwell},
                  {"full_grid_fraction_rmse", dwell.full_grid_rmse},
                  {"ratio_to_full_grid", dwell.full_grid_rmse > 0 ? dwell.rmse_equal_dwell / dwell.full_grid_rmse : 0.0},
                  {"predicted_rmse_equal_time", dwell.rmse_equal_time},
                  {"full_grid_rmse_equal_time", dwell.full_grid_rmse},
                  {"ratio_equal_time", dwell.full_grid_rmse > 0 ? dwell.rmse_equal_time / dwell.full_grid_rmse : 0.0},
                  {"even_dwell_rmse_equal_time", dwell.rmse_even_equal_time},
                  {"optimum_rmse_equal_time", dwell.optimum_rmse_equal_time},
                  {"cramer_rao", {{"rmse_equal_time", dwell.linear_rmse_equal_time}, {"full_grid_rmse", dwell.linear_full_grid_rmse}}},
                  {"n_curve", curve}});
    if (n_auto) reply["n_tolerance"] = n_tolerance;
    methods["a_optimal_dwell"] = {{"energies_eV", dwell.energies_eV},
                                  {"indices", dwell.indices},
                                  {"normalization_indices", dwell.normalization_indices},
                                  {"dwell_weights", dwell.dwell_weights},
                                  {"fraction_rmse", dwell.rmse_equal_dwell},
                                  {"fraction_rmse_equal_time", dwell.rmse_equal_time},
                                  {"seconds", dwell.seconds}};
  } else {
    const auto& best = sel.best == "rfe" ? sel.rfe : sel.a_optimal;
    const double nt = static_cast<double>(best.indices.size());
    // Even dwell: at the full grid's total time each point gets E/n of its dwell, and with a
    // constant variance the error scales as √(n/E).
    reply.update({{"n", opt.n_select},
                  {"n_auto", false},
                  {"method", sel.best},
                  {"energies_eV", best.energies_eV},
                  {"indices", best.indices},
                  {"normalization_indices", best.normalization_indices},
                  {"dwell_weights", std::vector<double>(best.indices.size(), 1.0)},
                  {"dwell_equal_time", std::vector<double>(best.indices.size(), E / nt)},
                  {"expected_fraction_rmse", best.fraction_rmse},
                  {"full_grid_fraction_rmse", sel.full_grid_fraction_rmse},
                  {"ratio_to_full_grid", sel.full_grid_fraction_rmse > 0 ? best.fraction_rmse / sel.full_grid_fraction_rmse : 0.0},
                  {"predicted_rmse_equal_time", best.fraction_rmse * std::sqrt(nt / E)},
                  {"full_grid_rmse_equal_time", sel.full_grid_fraction_rmse},
                  {"ratio_equal_time",
                   sel.full_grid_fraction_rmse > 0 ? best.fraction_rmse * std::sqrt(nt / E) / sel.full_grid_fraction_rmse : 0.0}});
    reply["variance"] = "constant";
  }
  reply["methods"] = methods;
  return reply;
}

}  // namespace xanesd
