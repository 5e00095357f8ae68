// Quality masks (PyXAS §8.2): which pixels hold enough material and fit well enough for
// their fractions to mean something. Threshold masks on thickness and on the fit quality,
// combined with AND; a criterion set to 0 is off.
#pragma once

#include <cstdint>
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

// `part`: the maps are one part of the image; the percentile is the whole image's (its own
// pixels gathered from every part), the mask covers every pixel of the maps.
QualityMask quality_mask(const LcfMaps& maps, const MaskSettings& s, const ImagePart& part = {});

// fractions (K·P) with masked pixels set to 0.
std::vector<float> apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid);
// The same into `out` (per_pixel_k.size() floats): the publisher writes straight into a frame.
void apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid, std::span<float> out);

}  // namespace xanesd::science
