#include "scan/scan.hpp"
#include "science/cancel.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <sstream>

#include <thread>

#include "config/config.hpp"
#include "science/normalize.hpp"
#include "science/parallel.hpp"

namespace xanesd {

using protocol::Mode;
using protocol::Region;

ScanSettings scan_settings(const Config& cfg) {
  ScanSettings s;
  s.energy_tolerance_eV = cfg.ingest.energy_tolerance_eV;
  s.min_transmission = cfg.ingest.min_transmission;
  s.margin_eV = cfg.references.margin_eV;
  s.fit.method = science::fit_method_from_string(cfg.fit.method);
  s.fit.sum_to_one = cfg.fit.sum_to_one;
  s.fit.lasso_alpha = cfg.fit.lasso_alpha;
  s.fit.lasso_refit = cfg.fit.lasso_refit;
  s.background = cfg.fit.background;
  s.weighting = cfg.fit.weighting == "poisson" ? ScanSettings::Weighting::poisson
                : cfg.fit.weighting == "auto"  ? ScanSettings::Weighting::final_maps
                                               : ScanSettings::Weighting::none;
  s.poisson_max_pixels = cfg.fit.poisson_max_pixels;
  s.spatial = cfg.fit.spatial;
  s.spatial_live_max_pixels = cfg.fit.spatial_live_max_pixels;
  auto given = [](double v) { return v != 0 ? std::optional<double>(v) : std::nullopt; };
  s.edge = {given(cfg.edge.e0_eV), given(cfg.edge.pre1_eV), given(cfg.edge.pre2_eV), given(cfg.edge.norm1_eV),
            given(cfg.edge.norm2_eV), cfg.edge.nnorm >= 0 ? std::optional<int>(cfg.edge.nnorm) : std::nullopt};
  s.mask = {cfg.mask.thickness_min, cfg.mask.thickness_min_relative, cfg.mask.residual_max, cfg.mask.rfactor_max};
  s.segment = cfg.segment;
  s.selection = cfg.references.selection;
  s.threads = solve_threads(cfg);
  return s;
}

int solve_threads(const Config& cfg) {
  return cfg.fit.threads > 0 ? cfg.fit.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

nlohmann::json to_json(const science::ReferenceSelection& s) {
  nlohmann::json refs = nlohmann::json::array();
  for (const auto& r : s.references)
    refs.push_back({{"name", r.name},
                    {"selected", r.selected},
                    {"delta_chi2", r.delta_chi2},
                    {"threshold", r.threshold},
                    {"share", r.share},
                    {"stability", r.stability},
                    {"mean_fraction", r.mean_fraction},
                    {"tiles_used", r.tiles_used}});
  nlohmann::json collinear = nlohmann::json::array();
  for (std::size_t i = 0; i < s.collinear.size(); ++i)
    collinear.push_back({{"a", s.references[static_cast<std::size_t>(s.collinear[i].first)].name},
                         {"b", s.references[static_cast<std::size_t>(s.collinear[i].second)].name},
                         {"cos", s.collinear_cos[i]}});
  return {{"selected", s.selected_names()}, {"references", refs}, {"indistinguishable", collinear},
          {"tiles", s.tiles},               {"energies", s.energies}, {"pixel_sigma", s.pixel_sigma},
          {"misfit_per_point", s.misfit_per_point}, {"waiting", s.waiting}};
}

std::string to_string(ScanState s) {
  switch (s) {
    case ScanState::running: return "running";
    case ScanState::stopped: return "stopped";
    case ScanState::aborted: return "aborted";
  }
  return "?";
}

ScanMemory scan_memory(int rows, int cols, std::size_t energies, std::size_t xrf_channels, std::size_t references,
                       const ScanSettings& settings) {
  const double P = static_cast<double>(rows) * cols, E = static_cast<double>(energies), K = static_cast<double>(references);
  const bool scales = keeps_count_scales(settings, static_cast<std::size_t>(P));
  ScanMemory m;
  m.store = P * (4.0 * E * (scales ? 2 : 1) + 4.0 * static_cast<double>(xrf_channels));
  // Per pixel: statistics [s (M), q] in doubles, M = K (+ 2 background terms); the maps (K
  // fractions and σ, thickness, residual, R-factor floats, energy count, fitted flag); the
  // energy set, changed flag and list entry (8), the spatial step's neighbour count and flags;
  // the quality mask.
  const double M = K + (settings.background ? 2 : 0);
  m.fit = P * (8.0 * (M + 1) + 8.0 * K + 12 + 3 + 4 + 1 + 8 + 4 + 2 + 1);
  // A cycle's map messages (masked fractions and σ, thickness, residual, R-factor, neighbours,
  // mask), the edge maps (4 floats, held and published), the segmentation's labels and its
  // per-domain label costs (floats).
  const double domains = std::max(settings.segment.k, settings.segment.k_max);
  m.products = P * (8.0 * K + 17 + 32 + (settings.segment.enabled ? 4.0 * (domains + 1) + 3 : 0.0));
  return m;
}

std::optional<Issue> plan_issue(const std::vector<double>& e) {
  for (std::size_t i = 0; i < e.size(); ++i)
    if (!std::isfinite(e[i]) || !(e[i] > 0) || e[i] > 1e6) {
      std::ostringstream m;
      m << "planned energy " << i << " = " << e[i] << " eV is not a finite energy in (0, 10^6] eV";
      return Issue{"invalid_plan", m.str()};
    }
  // The background a + b·(E − E0) alone needs two distinct energies; all equal fits nothing.
  if (std::adjacent_find(e.begin(), e.end(), std::not_equal_to<>()) == e.end())
    return Issue{"invalid_plan", "the plan has " + std::to_string(e.size()) +
                                     " energies but fewer than 2 distinct ones: nothing can be fitted"};
  return std::nullopt;
}

namespace {
bool same_references(const std::vector<science::Reference>& a, const std::vector<science::Reference>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t k = 0; k < a.size(); ++k)
    if (a[k].name != b[k].name || a[k].energies_eV != b[k].energies_eV || a[k].mu != b[k].mu) return false;
  return true;
}

std::vector<float> to_floats(const protocol::Array& a) {
  std::vector<float> v(a.size());
  a.convert_to(std::span<float>(v));
  return v;
}
}  // namespace

Scan::Scan(protocol::StartMsg start, const std::vector<science::Reference>& refs, const ScanSettings& settings,
           science::ImagePart part, Buffers recycled, bool allocate_store)
    : start_(std::move(start)), settings_(settings), part_(std::move(part)),
      npix_(static_cast<std::size_t>(start_.rows) * static_cast<std::size_t>(start_.cols)),
      xrf_(allocate_store ? start_.xrf_channels.size() * npix_ : 0, NAN),
      energy_seen_(start_.energies_eV.size(), 0) {
  // Every sample starts as not measured (NaN). A recycled store of the same size is refilled
  // in place: the writes then find their pages (at 2048² × 25 energies the kernel's zeroing
  // of 420 MB of fresh pages was a sixth of a scan's ingest profile).
  const std::size_t samples = allocate_store ? start_.energies_eV.size() * npix_ : 0;
  if (recycled.store.size() == samples) store_ = std::move(recycled.store);
  else recycled.store = {};  // released before the new store is allocated: never both at once
  store_.assign(samples, NAN);
  for (auto& plane : recycled.spare_planes)
    if (plane.size() == npix_) spare_planes_.push_back(std::move(plane));
  if (start_.dark) dark_ = to_floats(*start_.dark);
  if (start_.flat) flat_ = to_floats(*start_.flat);
  start_.dark.reset();  // keep the copies above, not the frames
  start_.flat.reset();
  // Count scales are kept from the first frame when the fit may ever weight by them.
  counts_scales_ = keeps_count_scales();
  if (counts_scales_ && allocate_store) scale_ = science::ZeroedVector<float>(store_.size());
  library_ = refs;
  spare_fit_ = std::move(recycled.fit);
  build_fit();
}

Scan::Buffers Scan::take_buffers() && {
  Buffers b{std::move(store_), std::move(spare_planes_), lcf_ ? std::move(*lcf_).take_buffers() : std::move(spare_fit_)};
  lcf_.reset();
  spare_fit_ = {};
  for (auto& staged : staged_)
    if (staged.continues) b.spare_planes.push_back(std::move(staged.plane));
  store_.clear(), spare_planes_.clear(), staged_.clear();
  return b;
}

science::LcfModel Scan::fit_model(const std::vector<std::uint8_t>& selected) const {
  std::vector<science::Reference> refs;
  for (std::size_t k = 0; k < library_.size(); ++k)
    if (selected.empty() || selected[k]) refs.push_back(library_[k]);
  const auto R = science::resample(refs, start_.energies_eV, settings_.margin_eV);
  std::vector<std::string> names;
  for (const auto& r : refs) names.push_back(r.name);
  return science::make_lcf_model(names, R, start_.energies_eV, settings_.background);
}

void Scan::build_fit() {
  // The last fit's buffers (a reference selection's refit) or the last scan's go to the new fit.
  if (lcf_) spare_fit_ = std::move(*lcf_).take_buffers();
  lcf_.reset();
  library_model_.reset();
  fit_error_.clear();
  if (library_.empty()) {
    fit_error_ = "no references loaded: spectra are recorded but not fitted (load_references)";
    return;
  }
  try {
    auto model = fit_model(selected_);
    if (model.n_refs() == static_cast<int>(library_.size())) {
      library_model_ = model;
    } else {  // the same E0 and background scale as the fit's model: one design, a subset of its columns
      std::vector<std::string> all;
      for (const auto& r : library_) all.push_back(r.name);
      library_model_ = science::make_lcf_model(all, science::resample(library_, start_.energies_eV, settings_.margin_eV),
                                               start_.energies_eV, settings_.background);
    }
    lcf_ = std::make_unique<science::IncrementalLcf>(std::move(model), npix_, settings_.fit, std::exchange(spare_fit_, {}));
    lcf_weighted_ = false;
    lcf_spatial_ = false;  // switched on by solve_changed when it applies
  } catch (const std::exception& e) {
    fit_error_ = e.what();
  }
}

std::optional<Issue> Scan::extend(const protocol::StartMsg& more, const std::vector<science::Reference>& refs) {
  if (more.rows != start_.rows || more.cols != start_.cols || more.mode != start_.mode)
    return Issue{"bad_extension", "extension of scan '" + id() + "' must keep its shape and mode"};
  if (start_.energies_eV.size() + more.energies_eV.size() > static_cast<std::size_t>(protocol::kMaxEnergies))
    return Issue{"bad_extension", "extension would make more than " + std::to_string(protocol::kMaxEnergies) + " energies"};
  {
    auto plan = start_.energies_eV;
    plan.insert(plan.end(), more.energies_eV.begin(), more.energies_eV.end());
    if (auto issue = plan_issue(plan)) return issue;
  }
  const std::size_t added = more.energies_eV.size() * npix_;
  start_.energies_eV.insert(start_.energies_eV.end(), more.energies_eV.begin(), more.energies_eV.end());
  store_.resize(store_.size() + added, NAN);
  if (!scale_.empty()) scale_.resize(scale_.size() + added, 0.f);
  energy_seen_.resize(start_.energies_eV.size(), 0);
  state_ = ScanState::running;
  stop_reason_.clear();
  ended_.reset();
  edge_maps_.reset();
  // The extension is a new segment: its sender numbers frames from 0 again.
  seqs_seen_.clear();
  max_seq_ = -1;
  segment_first_frame_ = frames_applied_;
  if (delegate_) delegate_->extend(more, refs);
  refit(refs, settings_);
  return std::nullopt;
}

void Scan::refit(const std::vector<science::Reference>& refs, const ScanSettings& settings) {
  settings_ = settings;
  if (!same_references(refs, library_)) selected_.clear(), selection_.reset(), selection_tried_ = false;  // a new library: choose again
  library_ = refs;
  if (!settings_.selection.enabled) selected_.clear(), selection_.reset();
  build_fit();
  refill_fit();
}

void Scan::refill_fit() {
  pending_planes_.clear();  // every stored sample goes in below
  if (!lcf_) return;
  if (delegate_) return delegate_->refit(library_, selected_);
  std::vector<int> all(start_.energies_eV.size());
  std::iota(all.begin(), all.end(), 0);
  lcf_->add_planes(store_.data(), npix_, all, settings_.threads);
  lcf_->mark_all_changed();
}

void Scan::fold_pending(int threads) {
  if (pending_planes_.empty()) return;
  if (lcf_ && !delegate_) lcf_->add_planes(store_.data(), npix_, pending_planes_, threads);
  pending_planes_.clear();
}

bool Scan::stageable(const protocol::FrameMsg& f) const {
  const bool whole = f.region.kind == Region::Kind::full, rows = f.region.kind == Region::Kind::rows;
  if (!(whole || rows) || f.pixels || f.xrf || f.spectra() || !scale_.empty()) return false;
  const bool in_plan = f.energy_index >= 0 && static_cast<std::size_t>(f.energy_index) < energy_seen_.size();
  if (!in_plan) return true;  // refused by validate, nothing stored
  // More rows of the energy staged last (an energy-major row stream) go into its plane where
  // they replace nothing: folded with it, they come after every energy staged before, as they
  // arrived.
  const auto e = static_cast<std::size_t>(f.energy_index);
  if (!staged_.empty() && staged_.back().energy == f.energy_index) return rows && unmeasured(f, staged_plane(staged_.back()));
  // An energy not seen yet is staged in its own plane of the store (no cycle reads it). The
  // first frame of a cycle may also be rows the store has not got of an energy it has (the
  // energy a row stream was at when the cycle began; the cycle may be folding that plane): they
  // go to a spare plane, and their samples are folded one by one at the commit, before anything
  // staged after them. Anything else at an energy already stored waits for the cycle.
  if (staged_.empty() && rows && energy_seen_[e]) return unmeasured(f, &store_[e * npix_]);
  return !energy_seen_[e];
}

bool Scan::unmeasured(const protocol::FrameMsg& f, const float* plane) const {
  std::size_t first = 0, n = npix_;
  if (f.region.kind == Region::Kind::rows) {
    if (f.region.row0 < 0 || f.region.nrows < 0 || f.region.row0 + f.region.nrows > start_.rows) return false;
    first = static_cast<std::size_t>(f.region.row0) * start_.cols, n = static_cast<std::size_t>(f.region.nrows) * start_.cols;
  } else if (f.region.kind != Region::Kind::full) {
    return false;
  }
  return std::all_of(plane + first, plane + first + n, [](float v) { return std::isnan(v); });
}

std::size_t Scan::commit_staged() {
  staging_ = false;
  const std::size_t n = std::exchange(staged_frames_, 0);
  for (auto& [e, continues, plane] : staged_) {
    if (!continues) {  // in its own plane of the store already: folded with the pending planes
      if (lcf_ && !delegate_) pending_planes_.push_back(e);
      continue;
    }
    // More rows of a plane folded already: sample by sample (stageable()).
    float* into = &store_[static_cast<std::size_t>(e) * npix_];
    auto* fit = lcf_ && !delegate_ ? lcf_.get() : nullptr;
    if (fit) fold_pending(1);
    for (std::size_t p = 0; p < npix_; ++p)
      if (!std::isnan(plane[p])) {
        into[p] = plane[p];
        if (fit) fit->add(p, e, plane[p]);
      }
    spare_planes_.push_back(std::move(plane));
  }
  staged_.clear();
  return n;
}

const float* Scan::staged_plane(const StagedPlane& staged) const {
  return staged.continues ? staged.plane.data() : &store_[static_cast<std::size_t>(staged.energy) * npix_];
}

std::optional<Issue> Scan::energy_issue(int index, double eV) const {
  std::ostringstream m;
  if (index < 0 || static_cast<std::size_t>(index) >= start_.energies_eV.size()) {
    m << "energy_index " << index << " is outside the plan (0.." << start_.energies_eV.size() - 1 << ")";
    return Issue{"energy_index_out_of_plan", m.str()};
  }
  const double planned = start_.energies_eV[static_cast<std::size_t>(index)];
  if (!(std::abs(eV - planned) <= settings_.energy_tolerance_eV)) {
    m << "energy " << eV << " eV differs from planned " << planned << " eV at index " << index
      << " by more than ingest.energy_tolerance_eV = " << settings_.energy_tolerance_eV;
    return Issue{"energy_mismatch", m.str()};
  }
  return std::nullopt;
}

std::optional<Issue> Scan::validate(const protocol::FrameMsg& f) const {
  std::ostringstream m;
  if (f.scan_id != start_.scan_id)
    return Issue{"unknown_scan", "frame for scan '" + f.scan_id + "' but the running scan is '" + start_.scan_id + "'"};
  if (!f.spectra()) {
    if (auto issue = energy_issue(f.energy_index, f.energy_eV)) return issue;
  }
  for (std::size_t j = 0; j < f.energy_indices.size(); ++j)  // a spectra batch: each of its energies
    if (auto issue = energy_issue(f.energy_indices[j], f.energies_eV[j])) return issue;
  if (seqs_seen_.count(f.seq)) {
    m << "duplicate seq " << f.seq << " (already applied); frame ignored";
    return Issue{"duplicate_seq", m.str()};
  }
  const auto& shape = f.counts.shape();
  switch (f.region.kind) {
    case Region::Kind::full:
      if (shape[0] != start_.rows || shape[1] != start_.cols) {
        m << "full-frame counts are " << shape[0] << "×" << shape[1] << ", scan is " << start_.rows << "×" << start_.cols;
        return Issue{"shape_mismatch", m.str()};
      }
      break;
    case Region::Kind::rows:
      if (f.region.row0 + f.region.nrows > start_.rows || shape[1] != start_.cols) {
        m << "rows " << f.region.row0 << ".." << f.region.row0 + f.region.nrows - 1 << " × " << shape[1]
          << " columns do not fit the " << start_.rows << "×" << start_.cols << " scan";
        return Issue{"region_out_of_bounds", m.str()};
      }
      break;
    case Region::Kind::pixels: {
      for (std::size_t i = 0; i < f.pixels->size(); ++i) {
        const double p = f.pixels->at(i);
        if (!(p >= 0 && p < static_cast<double>(npix_))) {
          m << "pixel index " << p << " (entry " << i << ") is outside 0.." << npix_ - 1;
          return Issue{"region_out_of_bounds", m.str()};
        }
      }
      break;
    }
  }
  if (f.xrf && f.xrf->shape()[0] != static_cast<std::int64_t>(start_.xrf_channels.size())) {
    m << "xrf has " << f.xrf->shape()[0] << " channels, start declared " << start_.xrf_channels.size();
    return Issue{"shape_mismatch", m.str()};
  }
  if (f.i0_scalar && !(std::isfinite(*f.i0_scalar) && *f.i0_scalar > 0)) {
    m << "scalar i0 = " << *f.i0_scalar << " must be finite and > 0";
    return Issue{"invalid_i0", m.str()};
  }
  for (const double i0 : f.i0_scalars)
    if (!(std::isfinite(i0) && i0 > 0)) {
      m << "scalar i0 = " << i0 << " must be finite and > 0";
      return Issue{"invalid_i0", m.str()};
    }
  if (start_.mode == Mode::transmission && !f.flat && flat_.empty() && !f.i0 && !f.i0_scalar && f.i0_scalars.empty())
    return Issue{"missing_flat", "transmission frame without a flat field or I0: nothing to divide by"};
  return std::nullopt;
}

// A frame's arrays as floats: native float32 read in place, anything else converted. Made
// before anything is stored (a conversion may throw). A spectra batch's arrays are pixels ×
// energies, one spectrum per row.
struct Scan::Prepared {
  std::vector<float> converted, i0, dark, flat, xrf;
  std::span<const float> counts;
  std::vector<std::int64_t> pix;  // the pixel indices
};

Scan::Prepared Scan::prepare(const protocol::FrameMsg& f) const {
  Prepared in;
  const std::size_t n = f.counts.size();
  // Zero-copy when the detector already sends native float32; converted otherwise.
  in.counts = f.counts.native_view<float>();
  // libzmq's zero-copy receive leaves a frame wherever it lies in its batch buffer: a frame not
  // aligned for float is converted, never read through a misaligned pointer (fuzz_control).
  if (reinterpret_cast<std::uintptr_t>(in.counts.data()) % alignof(float) != 0) in.counts = {};
  if (in.counts.empty() && n > 0) {
    in.converted = to_floats(f.counts);
    in.counts = in.converted;
  }
  if (f.pixels) {
    in.pix.resize(f.pixels->size());
    f.pixels->convert_to(std::span<std::int64_t>(in.pix));
  }
  if (f.i0) in.i0 = to_floats(*f.i0);
  if (f.dark) in.dark = to_floats(*f.dark);
  if (f.flat) in.flat = to_floats(*f.flat);
  if (f.xrf) in.xrf = to_floats(*f.xrf);
  return in;
}

FrameOutcome Scan::apply(protocol::FrameMsg& f) {
  FrameOutcome out;
  if (state_ != ScanState::running) {
    out.issues.push_back({"scan_not_running", "frame for scan '" + f.scan_id + "' which is " + to_string(state_)});
    return out;
  }
  // A spectra batch (several energies of the same pixels) is accepted or rejected whole (one seq).
  if (auto issue = validate(f)) {
    out.issues.push_back(*issue);
    return out;
  }
  const Prepared prepared = prepare(f);
  // Sequence bookkeeping only now that every conversion that can throw is done: a frame that
  // fails before storing anything must not make the genuine frame with its seq a duplicate.
  // Gaps are flagged, the frame is still applied.
  if (f.seq > max_seq_ + 1) {
    std::ostringstream m;
    m << "missing seq " << max_seq_ + 1 << (f.seq - 1 > max_seq_ + 1 ? ".." + std::to_string(f.seq - 1) : "")
      << " before seq " << f.seq;
    out.issues.push_back({"missing_seq", m.str()});
  }
  seqs_seen_.insert(f.seq);
  max_seq_ = std::max(max_seq_, f.seq);
  last_seq_ = f.seq;
  std::size_t invalid_i0 = 0;
  if (f.spectra()) store_spectra(f, prepared, out, invalid_i0);
  else store(f, prepared, out, invalid_i0);
  ++frames_applied_;
  out.accepted = true;

  auto flag = [&](std::size_t count, const char* code, const char* what) {
    if (!count) return;
    flags_[code] += static_cast<std::int64_t>(count);
    std::ostringstream m;
    m << "seq " << f.seq << ": " << count << " sample(s) " << what;
    out.issues.push_back({code, m.str()});
  };
  flag(out.samples_nonfinite, "nonfinite_samples", "non-finite (NaN/Inf): not stored");
  flag(invalid_i0, "invalid_i0", "with i0 ≤ 0 or non-finite: not stored");
  flag(out.samples_clamped, "clamped_samples", "with transmission ≤ ingest.min_transmission: clamped");
  flag(out.samples_replaced, "remeasured_samples", "measured again: the new value replaces the old");
  if (delegate_) delegate_->frame(f);
  return out;
}

inline bool Scan::normalize_sample(double c, double d, double i0v, double ref, float* scale, float& y, FrameOutcome& o,
                                   std::size_t& bad_i0) const {
  if (!std::isfinite(c) || !std::isfinite(d)) {
    ++o.samples_nonfinite;
    return false;
  }
  double v;
  if (start_.mode == Mode::transmission) {
    if (!std::isfinite(ref)) {
      ++o.samples_nonfinite;
      return false;
    }
    bool clamped = false;
    v = science::transmission_signal(c, d, ref, settings_.min_transmission, clamped);
    o.samples_clamped += clamped;
    if (scale) *scale = static_cast<float>(ref - d);
  } else {
    if (!(std::isfinite(i0v) && i0v > 0)) {
      ++bad_i0;
      return false;
    }
    v = science::fluorescence_signal(c, d, i0v);
    if (scale) *scale = static_cast<float>(i0v);
  }
  y = static_cast<float>(v);
  if (!std::isfinite(y)) {
    ++o.samples_nonfinite;
    return false;
  }
  return true;
}

namespace {
// A normalized sample into its slot of the store, and into `fit` (null: folded later, or by the
// shards): a new sample is added, one measured before replaced.
inline void keep_sample(float& slot, std::size_t p, int e, float y, science::IncrementalLcf* fit, FrameOutcome& o) {
  if (!std::isnan(slot)) {
    ++o.samples_replaced;
    if (fit) fit->replace(p, e, slot, y);
  } else if (fit) {
    fit->add(p, e, y);
  }
  slot = y;
  ++o.samples_stored;
}

// Strictly increasing or strictly decreasing: no pixel listed twice.
bool strictly_monotonic(const std::vector<std::int64_t>& v) {
  const auto up = std::adjacent_find(v.begin(), v.end(), std::greater_equal<>()) == v.end();
  return up || std::adjacent_find(v.begin(), v.end(), std::less_equal<>()) == v.end();
}
}  // namespace

void Scan::store_spectra(const protocol::FrameMsg& f, const Prepared& in, FrameOutcome& out, std::size_t& invalid_i0) {
  // Pixel by pixel, each pixel's samples in the batch's energy order: its statistics take its
  // samples in the order its frames at one energy would give them (bit for bit the same sums)
  // while its row of them stays in cache, and no frame per energy is built. That needs each
  // pixel once (a pixel listed twice would take its two spectra interleaved otherwise): a list
  // that is not strictly monotonic, or a batch applied while a cycle reads the store, goes in
  // as its frames at one energy.
  if (staging_ || !strictly_monotonic(in.pix)) {
    for (const auto& part : f.per_energy()) store(part, prepare(part), out, invalid_i0);
    return;
  }
  fold_pending(1);  // planes queued before this batch are folded first, as they arrived
  auto* fit = delegate_ ? nullptr : lcf_.get();
  const std::size_t n = in.pix.size(), E = f.energy_indices.size();
  const bool transmission = start_.mode == Mode::transmission;
  std::vector<double> i0_of(E);  // the header's I0 of each energy
  for (std::size_t j = 0; j < E; ++j) i0_of[j] = f.i0_scalars.empty() ? f.i0_scalar.value_or(1.0) : f.i0_scalars[j];
  const float* counts = in.counts.data();
  // A pixel's stored samples: their energies, values and the values they replace (NaN: none).
  std::vector<int> energies(E);
  std::vector<float> values(E), replaced(E);
  // Asks for the store lines pixel i will write, one per energy: a pixel's samples lie a plane
  // apart, which no hardware prefetcher follows (each line's first write waited on memory: half
  // the time of a batch). A line holds 16 pixels: the first pixel's lines at the start, then
  // every 16 pixels those of the pixel 16 on.
  auto prefetch = [&](std::size_t i) {
    for (const int e : f.energy_indices)
      __builtin_prefetch(&store_[static_cast<std::size_t>(e) * npix_ + static_cast<std::size_t>(in.pix[i])], 1);
  };
  if (n > 0) prefetch(0);
  for (std::size_t i = 0; i < n; ++i) {
    const auto p = static_cast<std::size_t>(in.pix[i]);
    if (i % 16 == 0 && i + 16 < n) prefetch(i + 16);
    const double own_dark = dark_.empty() ? 0.0 : dark_[p];
    std::size_t kept = 0;
    for (std::size_t j = 0, k = i * E; j < E; ++j, ++k) {
      const int e = f.energy_indices[j];
      const std::size_t at = static_cast<std::size_t>(e) * npix_ + p;
      const double d = !in.dark.empty() ? in.dark[k] : own_dark;
      const double i0v = !in.i0.empty() ? in.i0[k] : i0_of[j];
      const double ref = transmission ? (!in.flat.empty() ? in.flat[k] : (!flat_.empty() ? flat_[p] : i0v)) : 0.0;
      float y;
      if (!normalize_sample(counts[k], d, i0v, ref, scale_.empty() ? nullptr : &scale_[at], y, out, invalid_i0)) continue;
      energies[kept] = e, values[kept] = y, replaced[kept] = store_[at];
      keep_sample(store_[at], p, e, y, nullptr, out);
      ++kept;
    }
    if (fit) fit->add_spectrum(p, kept, energies.data(), values.data(), replaced.data());
  }
  for (std::size_t ch = 0; !in.xrf.empty() && ch < start_.xrf_channels.size(); ++ch)
    for (std::size_t i = 0; i < n; ++i) xrf_[ch * npix_ + static_cast<std::size_t>(in.pix[i])] = in.xrf[ch * n + i];
  for (const int e : f.energy_indices) energy_seen_[static_cast<std::size_t>(e)] = 1;
}

void Scan::store(const protocol::FrameMsg& f, const Prepared& in, FrameOutcome& out, std::size_t& invalid_i0) {
  const std::size_t n = f.counts.size();
  const std::span<const float> counts = in.counts;
  const std::vector<float>&i0 = in.i0, &dark = in.dark, &flat = in.flat, &x = in.xrf;
  const std::size_t base = f.region.kind == Region::Kind::rows ? static_cast<std::size_t>(f.region.row0) * start_.cols : 0;
  auto pixel_of = [&](std::size_t i) { return f.pixels ? static_cast<std::size_t>(in.pix[i]) : base + i; };
  const double i0_scalar = f.i0_scalar.value_or(1.0);
  const bool transmission = start_.mode == Mode::transmission;
  const int e = f.energy_index;
  // Staged (a cycle is running): into the energy's own plane of the store, which the cycle does
  // not read (it reads the planes seen before it began), or for rows of an energy seen already
  // into a spare plane; committed after the cycle (commit_staged). lcf_ is not looked at, the
  // cycle may be rebuilding it.
  const bool staged = staging_;
  science::ZeroedVector<float>* spare = nullptr;
  bool fresh_spare = false;
  if (staged) {
    ++staged_frames_;
    if (!staged_.empty() && staged_.back().energy == e) {  // more rows of the energy staged last (stageable())
      if (staged_.back().continues) spare = &staged_.back().plane;
    } else if (!energy_seen_[static_cast<std::size_t>(e)]) {
      staged_.push_back(StagedPlane{e, false, {}});  // the store's plane: NaN, never written yet
    } else {
      if (spare_planes_.empty()) spare_planes_.emplace_back(npix_);  // not filled: NaN-filled below
      spare = &staged_.emplace_back(StagedPlane{e, true, std::move(spare_planes_.back())}).plane;
      spare_planes_.pop_back();
      fresh_spare = true;
    }
  }
  float* plane = spare ? spare->data() : &store_[static_cast<std::size_t>(e) * npix_];
  // A full frame or row block that replaces nothing, at an energy not seen yet or into the plane
  // queued last for the fit (an energy-major row stream), is only stored: its plane is folded
  // into the fit later with the other pending ones, in their order, which is the order the
  // samples arrived in. Anything else is folded sample by sample, after them.
  const bool whole = f.region.kind == Region::Kind::full, rows_region = f.region.kind == Region::Kind::rows;
  const bool extends_pending = !pending_planes_.empty() && pending_planes_.back() == e;
  const bool defer = staged || (lcf_ && (whole || rows_region) &&
                                (!energy_seen_[static_cast<std::size_t>(e)] || (extends_pending && unmeasured(f, plane))));
  if (!defer) fold_pending(1);
  auto* fit = defer || delegate_ ? nullptr : lcf_.get();

  // Samples [begin, end): their counts go to `o` and `bad_i0`.
  auto normalize = [&](std::size_t begin, std::size_t end, FrameOutcome& o, std::size_t& bad_i0) {
    for (std::size_t i = begin; i < end; ++i) {
      const std::size_t p = pixel_of(i);
      const double c = counts[i];
      const double d = !dark.empty() ? dark[i] : (!dark_.empty() ? dark_[p] : 0.0);
      const double i0v = !i0.empty() ? i0[i] : i0_scalar;
      const double ref = transmission ? (!flat.empty() ? flat[i] : (!flat_.empty() ? flat_[p] : i0v)) : 0.0;
      float* scale = scale_.empty() ? nullptr : &scale_[static_cast<std::size_t>(e) * npix_ + p];
      float y;
      if (normalize_sample(c, d, i0v, ref, scale, y, o, bad_i0)) keep_sample(plane[p], p, e, y, fit, o);
    }
  };
  // A deferred frame touches only its own samples (no fit, nothing replaced): large ones are
  // normalized on several threads.
  // The common detector frame (fluorescence, full, one I0, no per-frame dark, nothing to
  // replace): the same arithmetic as `normalize` without its per-sample choices.
  const bool plain = defer && whole && !transmission && i0.empty() && dark.empty() && (dark_.empty() || dark_.size() == n);
  if (fresh_spare) std::fill(spare->begin(), spare->end(), NAN);  // a row block: the rest of the plane is not measured
  auto normalize_plain = [&](std::size_t begin, std::size_t end, FrameOutcome& o, std::size_t&) {
    const float* dk = dark_.empty() ? nullptr : dark_.data();
    std::size_t stored = 0;
    for (std::size_t i = begin; i < end; ++i) {
      const double c = counts[i], d = dk ? dk[i] : 0.0;
      const float yf = static_cast<float>(science::fluorescence_signal(c, d, i0_scalar));
      const bool ok = std::isfinite(c) && std::isfinite(d) && std::isfinite(yf);
      plane[i] = ok ? yf : NAN;  // the plane was all NaN: nothing else changes
      stored += ok;
    }
    o.samples_stored += stored;
    o.samples_nonfinite += (end - begin) - stored;
    if (!scale_.empty()) std::fill(scale_.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(e) * npix_ + begin),
                                   scale_.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(e) * npix_ + end),
                                   static_cast<float>(i0_scalar));
  };
  auto run = [&](std::size_t begin, std::size_t end, FrameOutcome& o, std::size_t& bad_i0) {
    if (plain) normalize_plain(begin, end, o, bad_i0);
    else normalize(begin, end, o, bad_i0);
  };
  const int nthreads = defer ? std::max(1, std::min<int>(settings_.threads, static_cast<int>(n >> 18))) : 1;
  if (nthreads == 1) {
    run(0, n, out, invalid_i0);
  } else {
    std::vector<FrameOutcome> part(static_cast<std::size_t>(nthreads));
    std::vector<std::size_t> part_i0(static_cast<std::size_t>(nthreads), 0);
    science::parallel_ranges(n, nthreads, 1, [&](int t, std::size_t begin, std::size_t end) { run(begin, end, part[t], part_i0[t]); });
    for (int t = 0; t < nthreads; ++t) {
      out.samples_stored += part[t].samples_stored, out.samples_nonfinite += part[t].samples_nonfinite;
      out.samples_clamped += part[t].samples_clamped, out.samples_replaced += part[t].samples_replaced;
      invalid_i0 += part_i0[t];
    }
  }
  if (f.xrf) {
    for (std::size_t ch = 0; ch < start_.xrf_channels.size(); ++ch)
      for (std::size_t i = 0; i < n; ++i) xrf_[ch * npix_ + pixel_of(i)] = x[ch * n + i];
  }
  if (defer && !staged && !delegate_ && !extends_pending) pending_planes_.push_back(e);
  energy_seen_[static_cast<std::size_t>(e)] = 1;
}

std::vector<Issue> Scan::stop(const protocol::StopMsg& s) {
  std::vector<Issue> issues;
  state_ = s.reason == "aborted" ? ScanState::aborted : ScanState::stopped;
  ended_ = std::chrono::system_clock::now();
  stop_reason_ = s.reason;
  if (delegate_) delegate_->stop(s);
  const auto missing = (max_seq_ + 1) - static_cast<std::int64_t>(seqs_seen_.size());
  if (missing > 0)
    issues.push_back({"missing_seq", std::to_string(missing) + " sequence number(s) never arrived in scan '" + id() + "'"});
  const auto applied = frames_applied_ - segment_first_frame_;
  if (s.frames_sent && *s.frames_sent != applied)
    issues.push_back({"frames_sent_mismatch", "sender reports " + std::to_string(*s.frames_sent) + " frames, " +
                                                  std::to_string(applied) + " were applied"});
  return issues;
}

void Scan::abort(const std::string& why) {
  state_ = ScanState::aborted;
  ended_ = std::chrono::system_clock::now();
  stop_reason_ = why;
  if (delegate_) delegate_->stop({start_.scan_id, "aborted", std::nullopt});
}

bool keeps_count_scales(const ScanSettings& s, std::size_t pixels) {
  using W = ScanSettings::Weighting;
  // fit.weighting=auto with the spatial step: the fractions come from the step, nothing to weight.
  return s.weighting == W::poisson ||
         (s.weighting == W::final_maps && !s.spatial.enabled && static_cast<double>(pixels) <= s.poisson_max_pixels);
}

Scan::OwnRows Scan::own_rows() const {
  const std::size_t begin = std::min(part_.begin, npix_), end = std::min(part_.end, npix_);
  const auto cols = static_cast<std::size_t>(std::max(1, start_.cols));
  return {part_.row0, static_cast<int>((end - begin) / cols), begin};
}

std::size_t Scan::image_pixels() const {
  return part_.image_rows > 0 ? static_cast<std::size_t>(part_.image_rows) * static_cast<std::size_t>(start_.cols) : npix_;
}

bool Scan::keeps_count_scales() const { return xanesd::keeps_count_scales(settings_, image_pixels()); }

bool Scan::spatial_solve() const {
  if (!settings_.spatial.enabled) return false;
  return static_cast<double>(image_pixels()) <= settings_.spatial_live_max_pixels || state_ != ScanState::running;
}

bool Scan::weighted_solve() const {
  // With the spatial step the fractions come from the averaged (unweighted) statistics: a
  // weighted per-pixel solve would be paid for and discarded.
  if (!keeps_count_scales() || scale_.empty() || settings_.spatial.enabled) return false;
  if (settings_.weighting == ScanSettings::Weighting::poisson) return true;
  // Final maps only, and not before the image-level selection has looked at this library: the
  // full library's weighted solve would be thrown away when the selection narrows it.
  const bool selection_pending = settings_.selection.enabled && library_.size() >= 2 && !selection_tried_;
  return state_ != ScanState::running && !selection_pending;
}

std::size_t Scan::solve_changed(int threads) {
  if (!lcf_) return 0;
  const bool weighted = weighted_solve(), spatial = spatial_solve();
  std::size_t n = 0;
  if (delegate_) {
    auto solved = delegate_->solve(threads, weighted, spatial, std::move(*lcf_).take_buffers().maps);
    lcf_weighted_ = weighted, lcf_spatial_ = spatial;
    lcf_->adopt_maps(std::move(solved.maps), std::move(solved.spatial_neighbours));
    n = solved.solved;
  } else {
    n = solve_as(threads, weighted, spatial);
  }
  science::update_quality_mask(mask_, lcf_->maps(), settings_.mask, part_, threads);
  return n;
}

std::size_t Scan::solve_as(int threads, bool weighted, bool spatial) {
  if (!lcf_) return 0;
  fold_pending(threads);
  if (weighted != lcf_weighted_) {
    lcf_->set_sample_source(weighted ? this : nullptr);
    lcf_->mark_all_changed();
    lcf_weighted_ = weighted;
  }
  if (spatial != lcf_spatial_) {
    auto settings = settings_.spatial;
    settings.enabled = spatial;
    lcf_->set_spatial(settings, start_.rows, start_.cols, slice_layout());
    lcf_->mark_all_changed();
    lcf_spatial_ = spatial;
  }
  return lcf_->solve_changed(threads);
}

void Scan::delegate_fit(FitDelegate* delegate) {
  delegate_ = delegate;
  pending_planes_.clear();
}

void Scan::follow_fit(const std::vector<science::Reference>& library, const std::vector<std::uint8_t>& selected,
                      const ScanSettings& settings) {
  settings_ = settings;
  library_ = library;
  selected_ = selected;
  build_fit();
  refill_fit();
}

bool Scan::update_reference_selection(int threads) {
  return take_selection(judge_references(nullptr, mask_.valid.data()), threads);
}

std::optional<science::ReferenceSelection> Scan::judge_references(const std::uint8_t* ready, const std::uint8_t* mask) const {
  if (!lcf_ || !library_model_ || !settings_.selection.enabled || library_.size() < 2) return std::nullopt;
  const auto& sel = settings_.selection;
  auto evidence = science::selection_evidence(*library_model_, store_.data(), npix_, rows(), cols(), mask, sel.max_tiles, 64,
                                              part_, ready);
  const auto previous = selection_ && selection_->done() ? selection_->selected() : std::vector<std::uint8_t>{};
  return science::select_references(*library_model_, evidence, sel, previous);
}

std::optional<std::vector<std::uint8_t>> Scan::fitted_set(const science::ReferenceSelection& verdict) const {
  // Not enough evidence yet (or none of the references explains the data): keep what is fitted.
  const auto chosen = verdict.selected();
  if (!verdict.done() || std::find(chosen.begin(), chosen.end(), 1) == chosen.end()) return std::nullopt;
  const bool all = std::find(chosen.begin(), chosen.end(), 0) == chosen.end();
  return all ? std::vector<std::uint8_t>{} : chosen;
}

bool Scan::take_selection(std::optional<science::ReferenceSelection> next, int threads) {
  if (!next) return false;
  selection_tried_ = true;
  const auto wanted = fitted_set(*next);
  if (!wanted) {
    if (!selection_ || !selection_->done()) selection_ = std::move(next);
    return false;
  }
  selection_ = std::move(next);
  if (*wanted == selected_) return false;
  selected_ = *wanted;
  build_fit();
  refill_fit();
  solve_changed(threads);
  return true;
}

Scan::Analysis Scan::begin_analysis(int threads) const {
  Analysis a;
  a.ready = energy_seen_;
  a.mask = mask_.valid;
  if (lcf_) a.model = lcf_->model();
  if (settings_.segment.enabled)
    a.segmenter = segmenter_ && same_clustering(segmenter_->settings(), settings_.segment) ? *segmenter_
                                                                                           : science::OnlineSegmenter(settings_.segment);
  a.at = progress();
  a.threads = threads;
  return a;
}

// The copies, not the scan's mask and model: a fit cycle may replace those meanwhile.
void Scan::run_selection(Analysis& a) const {
  a.selection = judge_references(a.ready.data(), a.mask.size() == npix_ ? a.mask.data() : nullptr);
  science::throw_if_cancelled();
  // The segmentation fits its clusters with the references the commit will fit.
  if (const auto wanted = a.selection ? fitted_set(*a.selection) : std::nullopt; wanted && *wanted != selected_)
    a.model = fit_model(*wanted);
}

void Scan::run_segmentation(Analysis& a) const {
  if (!a.segmenter) return;
  auto in = segment_input(a.threads, lcf_ && a.mask.size() == npix_ ? a.mask.data() : nullptr, a.model ? &*a.model : nullptr);
  in.ready = a.ready.data();
  a.segmenter->update(in);
}

bool Scan::commit_analysis(Analysis&& a, int threads) {
  const bool refitted = take_selection(std::move(a.selection), threads);
  if (!settings_.segment.enabled) segmenter_.reset();
  else if (a.segmenter) segmenter_ = std::move(a.segmenter);
  return refitted;
}

bool Scan::analysis_safe(const protocol::FrameMsg& f, const Analysis& a) const {
  auto unread = [&](int e) { return e >= 0 && static_cast<std::size_t>(e) < a.ready.size() && !a.ready[static_cast<std::size_t>(e)]; };
  if (f.xrf) return false;
  if (!f.spectra()) return unread(f.energy_index);
  return std::all_of(f.energy_indices.begin(), f.energy_indices.end(), unread);
}

std::unique_ptr<Scan> Scan::assemble(protocol::StartMsg whole, const std::vector<science::Reference>& refs,
                                     const ScanSettings& settings, ImageResults&& image, const Scan& block) {
  std::unique_ptr<Scan> scan(new Scan(std::move(whole), refs, settings, {}, {}, false));
  scan->adopt(std::move(image), block);
  return scan;
}

void Scan::adopt(ImageResults&& image, const Scan& block) {
  state_ = block.state_, stop_reason_ = block.stop_reason_, started_ = block.started_, ended_ = block.ended_;
  seqs_seen_ = block.seqs_seen_, max_seq_ = block.max_seq_, last_seq_ = block.last_seq_;
  frames_applied_ = block.frames_applied_, segment_first_frame_ = block.segment_first_frame_;
  energy_seen_ = block.energy_seen_, flags_ = std::move(image.flags);
  selected_ = block.selected_, selection_ = block.selection_, selection_tried_ = block.selection_tried_;
  build_fit();  // the references the blocks fitted
  pending_planes_.clear();
  lcf_weighted_ = block.lcf_weighted_, lcf_spatial_ = block.lcf_spatial_;
  mask_.thickness_threshold = block.mask_.thickness_threshold;
  edge_maps_ = std::move(image.edge_maps);
  if (image.segmentation) {
    segmenter_.emplace(settings_.segment);
    segmenter_->take_result(std::move(*image.segmentation));
  }
}

void Scan::update_segments(int threads) {
  if (!settings_.segment.enabled) {
    segmenter_.reset();
    return;
  }
  // New settings (configure) start a new segmentation; new references keep the clusters.
  if (!segmenter_ || !same_clustering(segmenter_->settings(), settings_.segment)) segmenter_.emplace(settings_.segment);
  segmenter_->update(segment_input(threads));
}

Scan::SideBySide Scan::segment_and_map_edges(int threads) {
  using clock = std::chrono::steady_clock;
  SideBySide r;
  auto timed = [](double& seconds, std::exception_ptr& error, const auto& step) {
    const auto t0 = clock::now();
    try {
      step();
    } catch (...) {
      error = std::current_exception();
    }
    seconds = std::chrono::duration<double>(clock::now() - t0).count();
  };
  if (!settings_.segment.enabled) {  // nothing beside: the edge maps take every thread
    timed(r.segments_s, r.segments_error, [&] { update_segments(threads); });
    timed(r.edge_maps_s, r.edge_maps_error, [&] { compute_edge_maps(threads); });
    return r;
  }
  // In an MPI job's block the edge maps' mean spectrum is a reduction, as are the segmentation's
  // steps on this thread: one thread at a time calls MPI, so the edge maps' ranges come first.
  std::optional<science::EdgeMapPlan> plan;
  double plan_s = 0;
  if (part_.shared()) timed(plan_s, r.edge_maps_error, [&] { plan = plan_edge_maps(threads); });
  {
    std::jthread edges([&] {
      if (r.edge_maps_error) return;
      const int beside = std::max(1, threads - 1);
      timed(r.edge_maps_s, r.edge_maps_error, [&] {
        if (!plan) plan = plan_edge_maps(beside);
        edge_maps_ = science::compute_edge_maps(*plan, store_, start_.energies_eV, npix_, beside);
      });
    });
    timed(r.segments_s, r.segments_error, [&] { update_segments(threads); });
  }
  r.edge_maps_s += plan_s;
  return r;
}

science::Reference Scan::cluster_reference(int cluster_id, const std::string& name) const {
  const auto* seg = segmentation();
  const science::ClusterSummary* cluster = nullptr;
  if (seg)
    for (const auto& c : seg->clusters)
      if (c.id == cluster_id) cluster = &c;
  if (!cluster) throw std::invalid_argument("scan '" + id() + "' has no cluster " + std::to_string(cluster_id));
  std::vector<std::pair<double, double>> points;
  for (std::size_t e = 0; e < cluster->mean.size(); ++e)
    if (std::isfinite(cluster->mean[e])) points.emplace_back(start_.energies_eV[e], cluster->mean[e]);
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end(), [](const auto& a, const auto& b) { return a.first == b.first; }),
               points.end());
  if (points.size() < 4)
    throw std::invalid_argument("cluster " + std::to_string(cluster_id) + " has fewer than 4 measured energies");
  science::Reference r;
  r.name = name.empty() ? "cluster" + std::to_string(cluster_id) : name;
  r.source = "cluster " + std::to_string(cluster_id) + " of scan '" + id() + "'";
  for (const auto& [e, mu] : points) r.energies_eV.push_back(e), r.mu.push_back(mu);
  return r;
}

science::SliceLayout Scan::slice_layout() const {
  const auto halo_rows = static_cast<int>(std::min(part_.begin, npix_) / static_cast<std::size_t>(std::max(1, start_.cols)));
  return {settings_.slice_rows, part_.row0 - halo_rows};
}

science::SegmentInput Scan::segment_input(int threads) const {
  return segment_input(threads, lcf_ ? mask_.valid.data() : nullptr, lcf_ ? &lcf_->model() : nullptr);
}

science::SegmentInput Scan::segment_input(int threads, const std::uint8_t* material, const science::LcfModel* model) const {
  science::SegmentInput in;
  in.planes = store_.data();
  in.npix = npix_;
  in.part = &part_;
  in.rows = rows(), in.cols = cols();
  in.slices = slice_layout();
  in.energies = &start_.energies_eV;
  in.material = material;
  in.xrf = xrf_.empty() ? nullptr : xrf_.data();
  in.xrf_channels = static_cast<int>(start_.xrf_channels.size());
  in.model = model;
  in.fit = settings_.fit;
  in.edge = settings_.edge;
  in.threads = threads;
  return in;
}

science::EdgeMapPlan Scan::plan_edge_maps(int threads) const {
  const std::vector<std::uint8_t> all(npix_, 1);
  return science::plan_edge_maps(store_, start_.energies_eV, npix_, lcf_ ? mask_.valid : all, settings_.edge, threads, &part_);
}

void Scan::compute_edge_maps(int threads) {
  edge_maps_ = science::compute_edge_maps(plan_edge_maps(threads), store_, start_.energies_eV, npix_, threads);
}

void Scan::samples(std::size_t p, std::vector<int>& energies, std::vector<double>& y, std::vector<double>& scale) const {
  energies.clear(), y.clear(), scale.clear();
  for (std::size_t e = 0; e < start_.energies_eV.size(); ++e) {
    const float v = store_[e * npix_ + p];
    if (std::isnan(v)) continue;
    energies.push_back(static_cast<int>(e));
    y.push_back(v);
    scale.push_back(scale_[e * npix_ + p]);
  }
}

std::size_t Scan::held_bytes() const {
  using science::capacity_bytes;
  std::size_t n = capacity_bytes(store_) + capacity_bytes(scale_) + capacity_bytes(xrf_) + capacity_bytes(mask_.valid) +
                  spare_fit_.held_bytes();
  for (const auto& plane : spare_planes_) n += capacity_bytes(plane);
  for (const auto& staged : staged_) n += capacity_bytes(staged.plane);
  if (lcf_) n += lcf_->held_bytes();
  if (edge_maps_)
    n += capacity_bytes(edge_maps_->e0) + capacity_bytes(edge_maps_->half_step) + capacity_bytes(edge_maps_->white_line) +
         capacity_bytes(edge_maps_->edge_step);
  return n;
}

int Scan::energies_seen() const {
  int n = 0;
  for (auto s : energy_seen_) n += s;
  return n;
}

ScanMemory Scan::memory() const {
  return scan_memory(rows(), cols(), start_.energies_eV.size(), start_.xrf_channels.size(), library_.size(), settings_);
}

nlohmann::json Scan::summary() const {
  // Domains no loaded reference explains (reference-free fallback: load_references {cluster}).
  nlohmann::json unexplained = nlohmann::json::array();
  if (const auto* seg = segmentation())
    for (const auto& c : seg->clusters)
      if (c.fitted && c.unexplained) unexplained.push_back(c.id);
  nlohmann::json refs = nlohmann::json::array();
  if (lcf_)
    for (const auto& r : lcf_->model().reference_names) refs.push_back(r);
  return {{"scan_id", id()},
          {"state", to_string(state_)},
          {"stop_reason", stop_reason_},
          {"shape", {rows(), cols()}},
          {"mode", protocol::to_string(start_.mode)},
          {"order", protocol::to_string(start_.order)},
          {"energies_planned", start_.energies_eV.size()},
          {"energies_seen", energies_seen()},
          // Which, for a dashboard's energy panel: the plan (eV) and the indices measured so far.
          {"energies_eV", start_.energies_eV},
          {"energy_indices_seen", [&] {
             std::vector<int> seen;
             for (std::size_t e = 0; e < energy_seen_.size(); ++e)
               if (energy_seen_[e]) seen.push_back(static_cast<int>(e));
             return seen;
           }()},
          {"frames_applied", frames_applied_},
          {"last_seq", last_seq_},
          {"missing_seq", (max_seq_ + 1) - static_cast<std::int64_t>(seqs_seen_.size())},
          {"flagged_samples", flags_},
          // What ingest.max_scan_GiB is checked against at start (scan_memory), by part and per sample.
          {"memory", [&] {
             const auto m = memory();
             const double samples = static_cast<double>(npix_) * static_cast<double>(start_.energies_eV.size());
             return nlohmann::json{{"bytes", m.total()},
                                   {"bytes_per_pixel_per_energy", samples > 0 ? m.total() / samples : 0.0},
                                   {"store", m.store}, {"fit", m.fit}, {"products", m.products}};
           }()},
          {"fit", {{"method", lcf_ ? science::to_string(lcf_->method()) : ""}, {"references", refs}, {"error", fit_error_},
                   {"library", library_.size()},
                   {"reference_selection", selection_ ? to_json(*selection_) : nlohmann::json(nullptr)},
                   {"unexplained_clusters", unexplained}}}};
}

}  // namespace xanesd
