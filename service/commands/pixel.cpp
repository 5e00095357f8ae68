#include "commands/pixel.hpp"

#include <cmath>

#include <Eigen/Dense>

namespace xanesd {

nlohmann::json pixel_request(const protocol::PixelArgs& req, const Scan* scan, std::int64_t version) {
  auto bad = [](const std::string& why) { return nlohmann::json{{"ok", false}, {"code", "invalid_pixel"}, {"error", why}}; };
  if (!scan) return {{"ok", false}, {"error", "no scan yet: 'pixel' reads the current or last scan"}};
  // Integers already (protocol::ControlRequest::parse); here: inside this scan's image.
  const auto inside = [&](const char* key, std::int64_t v, int size) -> std::string {
    if (v >= 0 && v < size) return {};
    return std::string("'") + key + "' = " + std::to_string(v) + " is outside the image (0 to " + std::to_string(size - 1) +
           ") (x: column, y: row)";
  };
  if (auto why = inside("x", req.x, scan->cols()); !why.empty()) return bad(why);
  if (auto why = inside("y", req.y, scan->rows()); !why.empty()) return bad(why);
  const int x = static_cast<int>(req.x), y = static_cast<int>(req.y);
  const std::size_t P = scan->pixels(), p = static_cast<std::size_t>(y) * static_cast<std::size_t>(scan->cols()) + static_cast<std::size_t>(x);

  nlohmann::json reply = {{"ok", true}, {"scan_id", scan->id()}, {"version", version}, {"state", to_string(scan->state())},
                          {"x", x}, {"y", y}, {"rows", scan->rows()}, {"cols", scan->cols()}};
  // The measured points: energy-major store, NaN where this pixel was not measured.
  std::vector<int> measured;
  std::vector<double> energies, spectrum;
  for (std::size_t e = 0; e < scan->energies().size(); ++e) {
    const float v = scan->spectra()[e * P + p];
    if (std::isnan(v)) continue;
    measured.push_back(static_cast<int>(e));
    energies.push_back(scan->energies()[e]);
    spectrum.push_back(v);
  }
  reply["energy_indices"] = measured;
  reply["energies_eV"] = energies;
  reply["spectrum"] = spectrum;
  if (const auto* seg = scan->segmentation(); seg && seg->waiting.empty() && seg->labels.size() == P)
    reply["segment"] = seg->labels[p];
  else
    reply["segment"] = nullptr;

  const auto* fit = scan->fit();
  if (!fit) {
    reply["fit_error"] = scan->fit_error();
    return reply;
  }
  const auto& maps = fit->maps();
  const auto& model = fit->model();
  const int K = model.n_refs(), nb = model.n_background();
  const bool kept = scan->mask().valid.size() == P && scan->mask().valid[p] != 0;
  nlohmann::json fractions = nlohmann::json::array(), sigma = nlohmann::json::array();
  Eigen::VectorXd c(K);
  for (int k = 0; k < K; ++k) {
    const auto i = static_cast<std::size_t>(k) * P + p;
    // As published and written: 0 where the mask drops the pixel.
    fractions.push_back(kept ? maps.fractions[i] : 0.f);
    sigma.push_back(kept ? maps.fraction_sigma[i] : 0.f);
    c[k] = static_cast<double>(maps.fractions[i]) * static_cast<double>(maps.thickness[p]);  // c_k = f_k·Σc
  }
  reply["reference_names"] = model.reference_names;
  reply["fractions"] = fractions;
  reply["fraction_sigma"] = sigma;
  reply["thickness"] = maps.thickness[p];
  reply["residual"] = maps.residual[p];
  reply["rfactor"] = maps.rfactor[p];
  reply["nenergies"] = maps.nenergies[p];
  reply["fitted"] = maps.fitted[p] != 0;
  reply["mask"] = kept;
  reply["fit_method"] = science::to_string(fit->method());
  if (!maps.fitted[p] || measured.empty()) return reply;

  // The model on the measured energies, from the fit's coefficients (also where the mask drops
  // the pixel: that is when one wants to see why). The maps keep c but not the background line,
  // so the line is refitted by least squares given c: the solvers leave it unconstrained, so for
  // an unweighted fit this is the fit's own line.
  const auto n = static_cast<Eigen::Index>(measured.size());
  Eigen::MatrixXd Xr(n, K), Xb(n, nb);
  Eigen::VectorXd yv(n);
  for (Eigen::Index j = 0; j < n; ++j) {
    const auto e = measured[static_cast<std::size_t>(j)];
    Xr.row(j) = model.X.row(e).tail(K);
    if (nb) Xb.row(j) = model.X.row(e).head(nb);
    yv[j] = spectrum[static_cast<std::size_t>(j)];
  }
  const Eigen::VectorXd refs_part = Xr * c;
  Eigen::VectorXd background = Eigen::VectorXd::Zero(n);
  if (nb && n >= nb) background = Xb * Xb.colPivHouseholderQr().solve(yv - refs_part);
  const Eigen::VectorXd fitted_model = refs_part + background;
  const auto to_vec = [](const Eigen::VectorXd& v) { return std::vector<double>(v.data(), v.data() + v.size()); };
  reply["model"] = to_vec(fitted_model);
  reply["background"] = to_vec(background);
  nlohmann::json parts = nlohmann::json::array();
  for (int k = 0; k < K; ++k) parts.push_back(to_vec(Xr.col(k) * c[k]));
  reply["contributions"] = parts;
  // One σ per point: the fit's noise estimate, the pixel's RMS misfit (the unweighted fit's
  // homoscedastic assumption).
  reply["sigma"] = std::vector<double>(static_cast<std::size_t>(n), static_cast<double>(maps.residual[p]));
  return reply;
}

}  // namespace xanesd
