// What bench/sklearn_scene_baseline.py reads for one segmented scene (bench_segment's scene part,
// bench_accuracy's domains rows): the features xanesd's segmenter clustered, so scikit-learn's
// KMeans(n_clusters = the true species count) runs on exactly the same rows.
//
//   DIR/KEY_features.npy          n × d, OnlineSegmenter::sample_features() (the segmenter must
//                                 have sampled every labelled pixel: segment.sample ≥ pixels)
//   DIR/KEY_rows.npy              n × 1, the pixel index of each row
//   DIR/KEY_truth.npy             P × 1, truth.domains (0 = no material)
//   DIR/KEY_stripe.npy            P × 1, truth.stripe
//   DIR/KEY_segmenter_labels.npy  P × 1, the segmenter's labels
//   DIR/KEY_scene.json            `meta` plus key, k_true, k_auto, rows, cols
// KEY must start with "scene_" (the script globs DIR/scene_*_scene.json).
#pragma once

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "npy.hpp"
#include "science/segmentation.hpp"
#include "simulate/simulate.hpp"

namespace xanesd::bench {

inline Eigen::MatrixXd column(const std::vector<int>& v) {
  Eigen::MatrixXd m(static_cast<Eigen::Index>(v.size()), 1);
  for (std::size_t i = 0; i < v.size(); ++i) m(static_cast<Eigen::Index>(i), 0) = v[i];
  return m;
}

inline void write_scene_features(const std::filesystem::path& dir, const std::string& key, const science::OnlineSegmenter& seg,
                                 const sim::Scan& truth, int k_true, nlohmann::json meta) {
  const science::Segmentation& r = seg.result();
  const science::FeatureMatrix& F = seg.sample_features();
  const std::size_t P = truth.pixels();
  std::vector<int> row_px, domains, labels, stripe;
  for (std::size_t q = 0; q < P; ++q)
    if (r.labels[q] != science::kBackground && r.labels[q] != science::kUnassigned) row_px.push_back(static_cast<int>(q));
  if (row_px.size() != static_cast<std::size_t>(F.rows()))
    throw std::runtime_error(key + ": sample features do not match the labelled pixels (segment.sample below the pixel count?)");
  for (std::size_t q = 0; q < P; ++q) {
    domains.push_back(truth.domains[q]);
    labels.push_back(r.labels[q]);
    stripe.push_back(truth.stripe.empty() ? 0 : truth.stripe[q]);
  }
  write_npy(dir / (key + "_features.npy"), Eigen::MatrixXd(F));
  write_npy(dir / (key + "_rows.npy"), column(row_px));
  write_npy(dir / (key + "_truth.npy"), column(domains));
  write_npy(dir / (key + "_stripe.npy"), column(stripe));
  write_npy(dir / (key + "_segmenter_labels.npy"), column(labels));
  meta.update({{"key", key}, {"k_true", k_true}, {"k_auto", static_cast<int>(r.clusters.size())}, {"rows", truth.params.rows},
               {"cols", truth.params.cols}});
  std::ofstream(dir / (key + "_scene.json")) << meta.dump(1) << "\n";
}

}  // namespace xanesd::bench
