// Online image segmentation, MPIS style (science.md §4): domains first, then what they are.
// Each update: the energies most pixels have so far, every pixel reduced to its spectral shape
// (linear background removed, divided by its size along the image's mean shape: thickness-free),
// a PCA of a pixel sample (seeded from the references while too few pixels have data),
// features = PCA scores (+ XRF, + position), each block standardized and weighted, trimmed
// k-means warm-started from the previous update's clusters (so a domain keeps its id), every
// pixel labelled, and each cluster's mean spectrum fitted against the references.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "science/edge_normalize.hpp"
#include "science/image_part.hpp"
#include "science/kmeans.hpp"
#include "science/lcf.hpp"
#include "science/random.hpp"

namespace xanesd::science {

struct SegmentationSettings {
  bool enabled = true;
  int k = 0;                 // clusters; 0 = the smallest k whose scatter passes noise_ratio
  int k_max = 6;
  int components = 0;        // PCA components used as features; 0 = from explained variance
  double variance = 0.99;    // explained-variance target when components = 0
  int max_components = 8;
  double spectral_weight = 1, spatial_weight = 0, xrf_weight = 0;
  int sample = 20000;        // pixels the PCA and k-means are fitted on (all pixels are labelled)
  // Automatic k: within-cluster scatter per measured feature (PCA scores, XRF) at most this ×
  // their noise (measured from adjacent pixels).
  double noise_ratio = 1.3;
  // Automatic k groups those k-means clusters ("bins", up to 2·k_max) into domains: bins
  // whose pixels fill the segment between their centres (one continuous cloud split by
  // k-means), and, with references, bins whose mean spectra need the same references (the
  // LCF support: fractions ≥ merge_fraction) as one composition drifting smoothly. false: every
  // bin is a domain (the k-means clusters as they are).
  bool merge = true;
  double merge_fraction = 0.05;
  // Spatially coherent labels: a Potts prior over 4-neighbours (ICM sweeps), in units of the
  // data term's log-likelihood, whose noise is measured per pixel (σ² ∝ noise/edge size: thin,
  // noisy pixels lean on their neighbours, thick ones on their own spectrum). 0: off.
  double smoothing = 1.0;
  std::uint64_t seed = 1;
  int interval_ms = 1000;    // while a scan runs, at most one update per interval (the pipeline's schedule)
};

// True when two settings give the same clustering (all but `enabled`).
bool same_clustering(const SegmentationSettings& a, const SegmentationSettings& b);

// Labels: 0 = no material (the quality mask), 1..254 = cluster ids, 255 = not measured yet.
inline constexpr std::uint8_t kBackground = 0, kUnassigned = 255;

struct ClusterSummary {
  int id = 0;
  std::size_t pixels = 0;
  // Edge-normalized mean spectrum on the scan's energies (NaN where not used) and its standard
  // error; the mean is of the pixels' spectra brought to a common edge size.
  std::vector<double> mean, stderr_;
  // LCF of the mean normalized spectrum against the references (empty without references).
  std::vector<double> fractions, fraction_sigma;
  double thickness = 0, residual = 0;  // Σc and RMS misfit of the mean
  bool fitted = false;
  // No loaded reference explains this domain: the mean's misfit is above 5× its own noise (RMS
  // standard error) and above 1 % of the edge step, or the fit accounts for less than 70 % or
  // more than 130 % of the edge. Its mean spectrum can then be loaded as a reference.
  double noise = 0;
  bool unexplained = false;
};

struct PcaDiagnostics {
  std::vector<int> energies;            // indices into the scan's energies the PCA used
  std::vector<double> explained;        // explained-variance ratio per component (scree), descending
  int components = 0;                   // components used as features
  int significant = 0;                  // eigenvalues above the noise floor (Marchenko–Pastur edge)
  double noise_sigma = 0;               // per-point noise of the shapes (√ of the median eigenvalue)
  bool seeded_from_references = false;  // too few pixels: PCA of reference mixtures instead
  // Target transformation per reference: RMS per point of the part of its shape outside
  // span{mean shape, components}, and that part's share of the shape's norm. Small: the
  // reference can be a component of this sample.
  std::vector<double> tt_residual, tt_ratio;
  std::vector<std::uint8_t> tt_plausible;  // tt_residual < 3 × noise_sigma
};

struct Segmentation {
  std::vector<std::uint8_t> labels;  // P
  std::vector<ClusterSummary> clusters;
  PcaDiagnostics pca;
  double silhouette = 0;             // mean silhouette of the chosen clustering on a sample
  int bins = 0;                      // k-means clusters grouped into the domains (automatic k)
  std::size_t smoothed = 0;          // pixels whose label the spatial smoothing changed
  double scatter_ratio = 0;          // within-cluster spectral scatter / noise floor
  std::size_t labelled = 0;          // pixels with a cluster id
  std::int64_t updates = 0;
  std::string waiting;               // why there is no segmentation yet ("" once there is)
};

// Everything one update reads; pointers stay owned by the scan.
struct SegmentInput {
  const float* planes = nullptr;           // E × P energy-major, NaN = not measured
  std::size_t npix = 0;
  int rows = 0, cols = 0;
  SliceLayout slices;  // a volume's slices: label smoothing stays within each
  const std::vector<double>* energies = nullptr;
  const std::uint8_t* material = nullptr;  // P: 1 where the pixel holds material; nullptr: from the edge step
  // E: 1 where a plane may be read (a scan's analysis running beside ingest reads only the
  // planes that held data when it began); nullptr: every plane.
  const std::uint8_t* ready = nullptr;
  const float* xrf = nullptr;              // C × P (NaN where absent); nullptr or C = 0: none
  int xrf_channels = 0;
  const LcfModel* model = nullptr;         // references (rows = energies) for cluster fits and TT
  SolveOptions fit;
  PreEdgeParams edge;
  int threads = 1;
  // An MPI rank's block (planes hold its rows plus halo rows; slices.first_row is the image row
  // of row 0): its own rows are labelled, the sample, the clusters' sums and the smoothing's
  // border rows combined with the other blocks'. nullptr or not shared(): the whole image.
  const ImagePart* part = nullptr;
};

class OnlineSegmenter {
 public:
  explicit OnlineSegmenter(SegmentationSettings s) : settings_(s), rng_(s.seed) {}
  // Labels every pixel from a fresh sample (warm: from the last update's). Throws
  // science::Cancelled when a CancelScope asks it to stop (between its steps and within its
  // passes over every pixel), leaving the segmenter as it was before the call.
  void update(const SegmentInput& in);
  const Segmentation& result() const { return result_; }
  // A result made elsewhere: the whole image's, assembled from an MPI job's blocks.
  void take_result(Segmentation r) { result_ = std::move(r); }
  const SegmentationSettings& settings() const { return settings_; }
  // The sampled pixels' features of the last update (rows: pixels, columns: PCA scores, then
  // position and XRF when weighted): what the k-means ran on, for diagnostics and benchmarks.
  const FeatureMatrix& sample_features() const { return features_; }

 private:
  void update_once(const SegmentInput& in, const std::vector<std::uint8_t>& previous);  // previous: the last labels

  SegmentationSettings settings_;
  Rng rng_;
  Segmentation result_;
  FeatureMatrix features_;
  std::vector<std::uint8_t> bin_labels_;  // per pixel: its k-means bin + 1 (0: none), for the warm start
  // The sample's spectra and shapes, kept from one update to the next: the next (the final maps'
  // among them) fills the same memory instead of faulting in tens of MB of fresh pages.
  FeatureMatrix sample_spectra_, sample_shapes_;
  int next_id_ = 1;
};


}  // namespace xanesd::science
