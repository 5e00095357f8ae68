// Quality masks (PyXAS §8.2): which pixels hold enough material and fit well enough for
// their fractions to mean something. Threshold masks on thickness and on the fit quality,
// combined with AND; a criterion set to 0 is off.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "science/image_part.hpp"
#include "science/incremental_lcf.hpp"

namespace xanesd::science {

struct MaskSettings {
  double thickness_min = 0;           // absolute edge step (signal units)
  double thickness_min_relative = 0;  // fraction of the 99th percentile of thickness
  double residual_max = 0;            // RMS misfit (signal units)
  double rfactor_max = 0;             // χ²/Σy²
};

struct QualityMask {
  std::vector<std::uint8_t> valid;  // 1 = fitted and passes every active criterion
  double thickness_threshold = 0;   // the absolute threshold actually used
  std::size_t n_valid = 0;
};

// The mask of `maps` into `m` (its buffer reused: every live cycle makes one). `part`: the maps
// are one part of the image; the percentile is the whole image's (its own pixels gathered from
// every part), the mask covers every pixel of the maps.
void update_quality_mask(QualityMask& m, const LcfMaps& maps, const MaskSettings& s, const ImagePart& part = {},
                         int threads = 1);

// The q-quantile of the values where `include` is set (null: all): the k-th smallest, k =
// ⌊(n − 1)·q⌋, exactly (the value std::nth_element gives); none when no value is included.
std::optional<float> quantile(std::span<const float> values, const std::uint8_t* include, double q, int threads = 1);

// fractions (K·P) with masked pixels set to 0.
std::vector<float> apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid);
// The same into `out` (per_pixel_k.size() floats): the publisher writes straight into a frame.
void apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid, std::span<float> out,
                int threads = 1);

}  // namespace xanesd::science
