// One scan: its state machine (running → stopped/aborted), its spectral store, its incremental
// fit, and the validation of every frame against the scan's plan. Owned by the pipeline thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "science/image_part.hpp"
#include "science/incremental_lcf.hpp"
#include "science/edge_maps.hpp"
#include "science/masks.hpp"
#include "science/reference_selection.hpp"
#include "science/references.hpp"
#include "science/segmentation.hpp"
#include "xanesd/protocol/messages.hpp"

namespace xanesd {

// A rejected or flagged input: a stable code for counters, a message for people.
struct Issue {
  std::string code;
  std::string message;
};

struct FrameOutcome {
  bool accepted = false;
  std::size_t samples_stored = 0, samples_replaced = 0, samples_nonfinite = 0, samples_clamped = 0;
  std::vector<Issue> issues;  // rejection reason, or flags on an accepted frame
};

struct ScanSettings {
  double energy_tolerance_eV = 1.0;
  double min_transmission = 1e-6;
  double margin_eV = 20.0;
  science::SolveOptions fit;  // method, sum-to-one, LASSO α
  science::MaskSettings mask;
  science::PreEdgeParams edge;
  // Poisson weighting (fit.weighting): never, always, or for the final maps only (live
  // cycles unweighted) of scans up to poisson_max_pixels.
  enum class Weighting { none, poisson, final_maps } weighting = Weighting::none;
  double poisson_max_pixels = 1048576;
  bool background = true;
  science::SpatialSettings spatial;  // edge-preserving spatial estimation of the fractions (fit.spatial*)
  double spatial_live_max_pixels = 1048576;  // larger scans: the spatial step in the final maps only
  science::SegmentationSettings segment;
  science::ReferenceSelectionSettings selection;
  int threads = 1;  // for the work of one frame that splits (a large full frame's normalization)
  // A volume (E × Z × Y × X, `xanesd fit`) is fitted as an image of its Z slices stacked: Y image
  // rows per slice, which the neighbour steps (spatial fit, label smoothing) do not cross and the
  // result file's maps are shaped by (Z × Y × X). 0: an image.
  int slice_rows = 0;
};

struct Config;
// The scan settings a config implies (ingest tolerances, reference margin, fit options).
ScanSettings scan_settings(const Config& cfg);
// Threads to solve pixels with (fit.threads, 0 = one per core).
int solve_threads(const Config& cfg);

// The reference selection's report as published (`references` topic), in status and in the result file.
nlohmann::json to_json(const science::ReferenceSelection& s);

// Why a plan of energies cannot be fitted (non-finite or non-positive energies, fewer than two
// distinct ones), or nothing. Checked at start and for an extended plan, before any allocation.
std::optional<Issue> plan_issue(const std::vector<double>& energies_eV);

// What a scan of this size holds at most, by part, in bytes (README "Memory"; ingest.max_scan_GiB
// covers the total), with every loaded reference fitted (the selection only narrows it).
struct ScanMemory {
  double store = 0;     // the float32 samples, the Poisson count scales when kept, the XRF channels
  double fit = 0;       // the fit's statistics (doubles), maps and bookkeeping, the quality mask
  double products = 0;  // a cycle's map messages, the edge maps, the segmentation's working buffers
  double total() const { return store + fit + products; }
};
ScanMemory scan_memory(int rows, int cols, std::size_t energies, std::size_t xrf_channels, std::size_t references,
                       const ScanSettings& settings);
// Whether a scan of this many pixels keeps count scales (Poisson weighting may apply).
bool keeps_count_scales(const ScanSettings& s, std::size_t pixels);

enum class ScanState { running, stopped, aborted };

// The fit of a scan whose row blocks other processes fold and solve (live sharding:
// parallel/shards.hpp). The scan keeps its store, validation and the image-level steps, and hands
// what changes its fit to the delegate instead of folding it into statistics of its own.
class FitDelegate {
 public:
  virtual ~FitDelegate() = default;
  virtual void frame(const protocol::FrameMsg& f) = 0;  // a frame the scan accepted
  virtual void stop(const protocol::StopMsg& s) = 0;
  virtual void extend(const protocol::StartMsg& more, const std::vector<science::Reference>& refs) = 0;
  // The fit rebuilt over the references of `library` that `selected` marks (empty: all) with the
  // scan settings now in force, every stored sample folded in again.
  virtual void refit(const std::vector<science::Reference>& library, const std::vector<std::uint8_t>& selected) = 0;
  // Every block's changed pixels solved (Poisson-weighted and with the spatial step as the scan
  // decided) and the whole image's maps assembled, in `recycled`'s buffers where sizes match
  // (the last solve's maps: their pages are mapped already).
  struct Solved {
    science::LcfMaps maps;
    std::vector<float> spatial_neighbours;  // empty without the spatial step
    std::size_t solved = 0;
  };
  virtual Solved solve(int threads, bool weighted, bool spatial, science::LcfMaps recycled) = 0;
};

// How far ingest had got when a publication cycle took its snapshot (stamped on its maps).
struct ScanProgress {
  std::int64_t frames_applied = 0, last_seq = -1;
  int energies_seen = 0;
};
std::string to_string(ScanState s);

class Scan : private science::SampleSource {
 public:
  // The references are resampled onto the scan's energies; if that fails the scan still
  // records every frame and `fit_error()` says why there are no maps.
  // `part`: this scan is one row block of an image several processes fit (xanes fit under MPI,
  // service/parallel): its mask percentile and reference selection are the whole image's, and
  // the choices made by image size (Poisson weighting) are the image's.
  // Image-sized buffers one scan hands to the next (Pipeline, at start): their pages are
  // already faulted in. Used where the sizes match, dropped otherwise.
  struct Buffers {
    science::ZeroedVector<float> store;
    std::vector<science::ZeroedVector<float>> spare_planes;
    science::IncrementalLcf::Buffers fit;  // the fit's statistics and maps
  };
  Scan(protocol::StartMsg start, const std::vector<science::Reference>& refs, const ScanSettings& settings,
       science::ImagePart part = {}, Buffers recycled = {})
      : Scan(std::move(start), refs, settings, std::move(part), std::move(recycled), true) {}
  // This scan's buffers for the next one; the scan is left without its spectra and fit.
  Buffers take_buffers() &&;

  // What an MPI job's rank 0 knows of the whole image beyond its own block: the flagged samples
  // summed over the blocks, and the image-level results every block holds alike (the clusters
  // and PCA, the edge maps' ranges). The per-pixel state stays with the blocks, each of which
  // writes its rows of the result file (write_result_file).
  struct ImageResults {
    std::map<std::string, std::int64_t> flags;     // flagged samples by code, summed over the blocks
    std::optional<science::Segmentation> segmentation;  // without labels
    std::optional<science::EdgeMaps> edge_maps;         // without maps
  };
  const std::map<std::string, std::int64_t>& flagged_samples() const { return flags_; }
  // The whole image's scan of an MPI job (`whole`: its start), assembled on rank 0 to describe it
  // in the result file and the summary: no store, no per-pixel maps; the image-level state (the
  // references selected and fitted, the mask threshold, frames, sequence numbers, state) is
  // `block`'s, one row block of the same scan, the rest `image`'s.
  static std::unique_ptr<Scan> assemble(protocol::StartMsg whole, const std::vector<science::Reference>& refs,
                                        const ScanSettings& settings, ImageResults&& image, const Scan& block);

  FrameOutcome apply(protocol::FrameMsg& frame);

  // Live sharding (parallel/shards.hpp). On rank 0, the whole image's scan hands its fit to
  // `delegate` (set before the first frame; it outlives the scan): no statistics here, the maps
  // are the blocks' gathered each solve. On every rank, a block's scan follows the whole one:
  // the fit rebuilt with the whole scan's choice of references and settings (follow_fit), solved
  // as it decided (solve_as; no mask: the whole scan computes it from the gathered maps).
  void delegate_fit(FitDelegate* delegate);
  void follow_fit(const std::vector<science::Reference>& library, const std::vector<std::uint8_t>& selected,
                  const ScanSettings& settings);
  std::size_t solve_as(int threads, bool weighted, bool spatial);

  // A publication cycle on another thread (Pipeline) reads the store, the fit and what derives
  // from them. Between begin_staging() and commit_staged() apply() takes only the frames
  // stageable() accepts (full frames or row blocks into an energy not seen yet, more rows of the
  // energy staged last, no XRF, no count scales): they are validated and counted at once and
  // normalized into planes the cycle never reads (a new energy's own plane of the store; rows of
  // an energy seen already into a spare plane), and commit_staged() (after the cycle; returns how
  // many frames were staged) queues them for the fit in arrival order, so the final statistics
  // are the same whatever the cycles overlapped.
  bool stageable(const protocol::FrameMsg& f) const;
  void begin_staging() { staging_ = true; }
  std::size_t commit_staged();
  ScanProgress progress() const { return {frames_applied_, last_seq_, energies_seen()}; }
  // What scan_memory models for this scan (its plan, the library it started with): status scan.memory.
  ScanMemory memory() const;
  // The bytes its image-sized buffers hold now (store, count scales, XRF, spare planes, the fit,
  // the mask, the edge maps): what scan_memory's store and fit parts and its edge maps model.
  std::size_t held_bytes() const;
  // Ends the scan; returns flags (frames_sent mismatch, missing sequence numbers).
  std::vector<Issue> stop(const protocol::StopMsg& stop);
  void abort(const std::string& why);

  // Appends energies to the plan (a scan extended later, science.md §1) and runs again; the
  // fit is rebuilt over all stored samples. Returns an issue if the extension does not fit.
  std::optional<Issue> extend(const protocol::StartMsg& more, const std::vector<science::Reference>& refs);

  // Rebuilds the fit from the stored spectra with new references or settings.
  void refit(const std::vector<science::Reference>& refs, const ScanSettings& settings);
  // Solves changed pixels and recomputes the quality mask (folding pending planes first;
  // fold() does only that, for a cycle that times its steps).
  std::size_t solve_changed(int threads);
  void fold(int threads) { fold_pending(threads); }
  // Image-level reference selection (science/reference_selection): which of the loaded
  // references the image needs, judged on the current maps' material pixels. When the chosen
  // set changes, the fit is rebuilt with those references only and solved again. Returns true
  // if the fit's references changed.
  bool update_reference_selection(int threads);
  const science::ReferenceSelection* reference_selection() const { return selection_ ? &*selection_ : nullptr; }
  const std::vector<science::Reference>& library() const { return library_; }
  const science::QualityMask& mask() const { return mask_; }
  // Threads for the work of one frame or one set of maps that splits (ScanSettings::threads).
  int threads() const { return settings_.threads; }
  // Per-pixel edge maps (E0, half-step, white line, step) of the pixels the mask keeps (all
  // pixels with data when there is no fit); computed on request (at stop: a full pass).
  void compute_edge_maps(int threads);
  // Their scan-level ranges (in an MPI job's block: from every block's mean spectrum).
  science::EdgeMapPlan plan_edge_maps(int threads) const;
  const science::EdgeMaps* edge_maps() const { return edge_maps_ ? &*edge_maps_ : nullptr; }
  // Live segmentation (science.md §4) over what is stored so far; call after solve_changed so
  // the thickness mask is current. nullptr when segmentation is off.
  void update_segments(int threads);
  // The final maps' segmentation and edge maps, side by side. They are independent (both read
  // the store and the mask) and the segmentation is mostly serial (its sample's PCA and
  // clustering), so the edge maps take the cores it leaves idle: at 1024² × 100 on 2 cores
  // 0.37 + 0.17 s in turn (bench/run_batch_benchmark.sh). Each step's exception (null if it
  // finished) and seconds; the segmentation runs on the calling thread (its cancellation scope),
  // as does anything that combines an MPI job's blocks (the edge maps' ranges first).
  struct SideBySide {
    std::exception_ptr segments_error, edge_maps_error;
    double segments_s = 0, edge_maps_s = 0;
  };
  SideBySide segment_and_map_edges(int threads);

  // The image-level analysis (the reference selection's evidence and choice, the segmentation)
  // on a thread of its own while frames and the fit's cycles go on (Pipeline): a live scan's
  // fit maps then never wait for it. begin_analysis (on the scan's thread, no cycle running)
  // takes what it needs: the energies whose planes hold data now (it reads only those planes,
  // so frames into other energies may be stored meanwhile: analysis_safe), a copy of the mask,
  // of the fit's model and of the segmenter. run_selection and run_segmentation read the store
  // and the library on any thread; commit_analysis (the scan's thread, no cycle running) takes the results: a new
  // choice of references refits the scan (returns true), the segmenter replaces the scan's.
  struct Analysis {
    std::vector<std::uint8_t> ready;  // per energy: its plane may be read
    std::vector<std::uint8_t> mask;   // the quality mask when it began
    std::optional<science::LcfModel> model;
    std::optional<science::OnlineSegmenter> segmenter;
    std::optional<science::ReferenceSelection> selection;  // the selection's verdict, if it ran
    ScanProgress at;  // the frames it saw
    int threads = 1;
    bool cancelled = false;  // stopped by a stop (science::CancelScope): nothing to commit
  };
  Analysis begin_analysis(int threads) const;
  void run_selection(Analysis& a) const;
  void run_segmentation(Analysis& a) const;
  bool commit_analysis(Analysis&& a, int threads);
  // Whether applying `f` leaves alone everything a running analysis reads (an energy it does
  // not read, no XRF).
  bool analysis_safe(const protocol::FrameMsg& f, const Analysis& a) const;
  // What update_segments gives the segmenter: views of this scan's store, mask, XRF and model.
  science::SegmentInput segment_input(int threads) const;
  // A domain's edge-normalized mean spectrum as a reference (the reference-free fallback:
  // a domain no loaded reference explains is fitted with its own spectrum). Throws
  // std::invalid_argument when there is no such cluster or too few energies.
  science::Reference cluster_reference(int cluster_id, const std::string& name) const;
  const science::Segmentation* segmentation() const { return segmenter_ ? &segmenter_->result() : nullptr; }

  const std::string& id() const { return start_.scan_id; }
  const protocol::StartMsg& start() const { return start_; }
  ScanState state() const { return state_; }
  const std::string& stop_reason() const { return stop_reason_; }
  int rows() const { return start_.rows; }
  // Image rows per slice of a volume (ScanSettings::slice_rows), 0 for an image; and where this
  // scan's rows lie among the slices.
  int slice_rows() const { return settings_.slice_rows; }
  science::SliceLayout slice_layout() const;
  int cols() const { return start_.cols; }
  std::size_t pixels() const { return npix_; }
  // The image rows whose pixels are this scan's own: all its rows in one process, an MPI rank's
  // block without its halo rows (the result file's rows it writes). first_pixel: the first own
  // pixel in the scan's arrays.
  struct OwnRows {
    int first_row = 0, rows = 0;
    std::size_t first_pixel = 0;
  };
  OwnRows own_rows() const;
  const std::vector<double>& energies() const { return start_.energies_eV; }
  const science::IncrementalLcf* fit() const { return lcf_.get(); }
  const std::string& fit_error() const { return fit_error_; }
  // Why a scan started without references has no fit (e.g. its start named references that
  // could not be loaded), in place of the generic "no references loaded".
  void set_fit_error(std::string why) {
    if (!lcf_) fit_error_ = std::move(why);
  }
  // The spectral store: energy-major planes, NaN where a pixel was not measured at that energy.
  const science::ZeroedVector<float>& spectra() const { return store_; }
  const science::ZeroedVector<float>& xrf() const { return xrf_; }  // channels × pixels, NaN if absent

  std::int64_t frames_applied() const { return frames_applied_; }
  std::chrono::system_clock::time_point started() const { return started_; }
  // When the scan stopped or was aborted (the result file's end_time); none while it runs.
  std::optional<std::chrono::system_clock::time_point> ended() const { return ended_; }
  std::int64_t last_seq() const { return last_seq_; }
  int energies_seen() const;
  nlohmann::json summary() const;

 private:
  // allocate_store false: no store (assemble: the image of an MPI job, described only).
  Scan(protocol::StartMsg start, const std::vector<science::Reference>& refs, const ScanSettings& settings, science::ImagePart part,
       Buffers recycled, bool allocate_store);
  void adopt(ImageResults&& image, const Scan& block);
  // Whether the samples a full frame or row block would write into `plane` are all unmeasured.
  bool unmeasured(const protocol::FrameMsg& f, const float* plane) const;
  std::optional<Issue> validate(const protocol::FrameMsg& f) const;  // a frame, or a spectra batch
  std::optional<Issue> energy_issue(int index, double eV) const;     // not in the plan, or not at its energy
  struct Prepared;
  Prepared prepare(const protocol::FrameMsg& f) const;
  // Normalizes and stores a validated frame at one energy (and folds it into the fit or queues
  // its plane); counts into `out` and `invalid_i0`.
  void store(const protocol::FrameMsg& f, const Prepared& in, FrameOutcome& out, std::size_t& invalid_i0);
  // The same for a validated spectra batch: every sample as its frames at one energy would be.
  void store_spectra(const protocol::FrameMsg& f, const Prepared& in, FrameOutcome& out, std::size_t& invalid_i0);
  // One sample's signal from its counts c, dark d, I0 i0v and (transmission) flat `ref`
  // (science.md §2), its count scale into *scale (null: none kept); false when it is not
  // stored, counted in `o` (non-finite) or `bad_i0` (I0 ≤ 0 or not finite). Inline: per sample.
  inline bool normalize_sample(double c, double d, double i0v, double ref, float* scale, float& y, FrameOutcome& o,
                        std::size_t& bad_i0) const;
  // SampleSource: the pixel's stored samples and count scales, for Poisson weighting.
  void samples(std::size_t p, std::vector<int>& energies, std::vector<double>& y, std::vector<double>& scale) const override;
  bool transmission() const override { return start_.mode == protocol::Mode::transmission; }
  // Whether this scan may weight at all (count scales are then kept from the first frame), and
  // whether the next solve does.
  bool keeps_count_scales() const;
  std::size_t image_pixels() const;  // the whole image's (a row block's scan: not its own)
  bool weighted_solve() const;
  bool spatial_solve() const;
  // The selection's verdict on the stored planes (those `ready` marks; null: all) and `mask`,
  // and taking it: the fit is rebuilt and solved when the chosen set changes (returns true).
  std::optional<science::ReferenceSelection> judge_references(const std::uint8_t* ready, const std::uint8_t* mask) const;
  bool take_selection(std::optional<science::ReferenceSelection> next, int threads);
  // The references (library order; empty: all) a verdict has the scan fit, or none: keep the set fitted.
  std::optional<std::vector<std::uint8_t>> fitted_set(const science::ReferenceSelection& verdict) const;
  // The fit's model of the library's references `selected` marks (empty: all).
  science::LcfModel fit_model(const std::vector<std::uint8_t>& selected) const;
  science::SegmentInput segment_input(int threads, const std::uint8_t* material, const science::LcfModel* model) const;
  // The fit over library_ (all of it, or the selected references when a selection holds).
  void build_fit();
  void refill_fit();  // folds every stored sample into a freshly built fit
  // Full frames into empty planes are stored at once and folded into the fit later, all
  // pending planes in one pass (IncrementalLcf::add_planes), before the statistics are read.
  void fold_pending(int threads);

  protocol::StartMsg start_;
  ScanSettings settings_;
  science::ImagePart part_;
  std::size_t npix_;
  ScanState state_ = ScanState::running;
  std::string stop_reason_;
  // Image-sized buffers on huge pages (science::ZeroedVector): a 2048² × 25 store is 420 MB,
  // and faulting it in 4 KiB at a time cost more than a frame's normalization.
  science::ZeroedVector<float> store_;       // E × P
  science::ZeroedVector<float> scale_;       // E × P count scale per sample (Poisson weighting only)
  std::vector<float> dark_, flat_;           // P each, from start (empty if absent)
  science::ZeroedVector<float> xrf_;        // C × P
  std::vector<science::Reference> library_;       // every loaded reference
  std::vector<std::uint8_t> selected_;            // library order; empty: fit them all
  std::optional<science::LcfModel> library_model_;  // the whole library on the scan's energies (selection evidence)
  std::optional<science::ReferenceSelection> selection_;
  std::unique_ptr<science::IncrementalLcf> lcf_;
  FitDelegate* delegate_ = nullptr;  // live sharding: the blocks fit, lcf_ holds the model and gathered maps
  science::IncrementalLcf::Buffers spare_fit_;  // recycled fit buffers while there is no fit (build_fit)
  bool lcf_weighted_ = false;      // the fit reads count scales (Poisson) in its solves
  bool lcf_spatial_ = false;       // the fit runs the spatial step in its solves
  bool selection_tried_ = false;   // the reference selection has run on this fit's library
  std::string fit_error_;
  science::QualityMask mask_;
  bool counts_scales_ = false;  // decided at start: the store's count scales are kept (in `scale_`, or on the ranks)
  std::optional<science::EdgeMaps> edge_maps_;
  std::optional<science::OnlineSegmenter> segmenter_;
  std::unordered_set<std::int64_t> seqs_seen_;
  std::int64_t max_seq_ = -1, last_seq_ = -1, frames_applied_ = 0;
  std::int64_t segment_first_frame_ = 0;  // frames_applied_ when the current segment (start or extension) began
  std::vector<std::uint8_t> energy_seen_;
  std::vector<int> pending_planes_;  // stored, not yet in the fit's statistics
  bool staging_ = false;
  struct StagedPlane {
    int energy = 0;
    bool continues = false;  // rows of an energy stored before the cycle began (stageable())
    science::ZeroedVector<float> plane;  // continues only: normalized, NaN where nothing was staged
  };
  const float* staged_plane(const StagedPlane& staged) const;  // where its samples are
  std::vector<StagedPlane> staged_;  // in arrival order
  std::size_t staged_frames_ = 0;  // the frames in them (a row stream stages several per plane)
  std::vector<science::ZeroedVector<float>> spare_planes_;  // continued planes' buffers, reused: no new pages per cycle
  std::map<std::string, std::int64_t> flags_;  // flagged sample counts by code
  std::chrono::system_clock::time_point started_ = std::chrono::system_clock::now();
  std::optional<std::chrono::system_clock::time_point> ended_;
};

}  // namespace xanesd
