// k-means as the segmentation uses it (science.md §4): k-means++ seeding (Arthur &
// Vassilvitskii), Lloyd iterations with scikit-learn's convergence tolerance, best of several
// starts by inertia; plus the mean silhouette and the adjusted Rand index used to judge
// clusterings. Rows of a FeatureMatrix are points.
#pragma once

#include <cstdint>
#include <vector>

#include <Eigen/Dense>

#include "science/random.hpp"

namespace xanesd::science {

using FeatureMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct KMeans {
  FeatureMatrix centroids;  // k × d
  std::vector<int> labels;  // per row, 0..k−1
  double inertia = 0;       // Σ squared distance to the own centroid
};
// Best of n_init k-means++ starts (scikit-learn's KMeans does the same). trim > 0: trimmed
// k-means, the share `trim` of points farthest from their centres is left out of the centres,
// the seeding weights and the inertia (every point is still labelled). Throws
// std::invalid_argument unless 1 ≤ k ≤ rows.
KMeans kmeans(const FeatureMatrix& features, int k, Rng& rng, int n_init = 3, double trim = 0);
KMeans kmeans(const FeatureMatrix& features, int k, std::uint64_t seed, int n_init = 3, double trim = 0);

// Index of the centroid nearest to point f (the first of equal minima), its squared distance,
// and with `all`, the squared distance to every centroid.
int nearest(const FeatureMatrix& centroids, const double* f, double* dist = nullptr, double* all = nullptr);
// Adds k-means++ centres to C until it has k rows.
void add_kmeanspp(const FeatureMatrix& F, FeatureMatrix& C, int k, Rng& rng, double trim = 0);
// Lloyd iterations from the centres in C until they settle (moves below 1e-4 of the features'
// mean variance) or max_iter; labels out; returns the inertia. Empty clusters keep their centre.
double lloyd(const FeatureMatrix& F, FeatureMatrix& C, std::vector<int>& labels, int max_iter = 100, double trim = 0);
// Mean silhouette (Rousseeuw 1987) on m rows spread evenly over F; 0 for one cluster.
double silhouette(const FeatureMatrix& F, const std::vector<int>& labels, int k, Eigen::Index m);
// Adjusted Rand index of two labelings (pairs counted where both are ≥ 0).
double adjusted_rand_index(const std::vector<int>& a, const std::vector<int>& b);

}  // namespace xanesd::science
