#include "science/masks.hpp"

#include <algorithm>

namespace xanesd::science {

QualityMask quality_mask(const LcfMaps& maps, const MaskSettings& s, const ImagePart& part) {
  const std::size_t P = maps.thickness.size();
  QualityMask m;
  m.thickness_threshold = s.thickness_min;
  if (s.thickness_min_relative > 0) {
    std::vector<float> t;
    const std::size_t own0 = std::min(part.begin, P), own1 = std::min(part.end, P);
    t.reserve(own1 - own0);
    for (std::size_t p = own0; p < own1; ++p)
      if (maps.fitted[p]) t.push_back(maps.thickness[p]);
    if (part.gather) t = part.gather(std::move(t));  // the whole image's, in pixel order
    if (!t.empty()) {
      const auto k = static_cast<std::ptrdiff_t>(static_cast<double>(t.size() - 1) * 0.99);
      std::nth_element(t.begin(), t.begin() + k, t.end());
      m.thickness_threshold = std::max(m.thickness_threshold, s.thickness_min_relative * static_cast<double>(t[static_cast<std::size_t>(k)]));
    }
  }
  m.valid.assign(P, 0);
  for (std::size_t p = 0; p < P; ++p) {
    bool ok = maps.fitted[p] != 0;
    if (m.thickness_threshold > 0) ok = ok && maps.thickness[p] >= m.thickness_threshold;
    if (s.residual_max > 0) ok = ok && maps.residual[p] <= s.residual_max;
    if (s.rfactor_max > 0) ok = ok && maps.rfactor[p] <= s.rfactor_max;
    m.valid[p] = ok;
    m.n_valid += ok;
  }
  return m;
}

void apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid, std::span<float> out) {
  const std::size_t P = valid.size();
  for (std::size_t k0 = 0; k0 < per_pixel_k.size(); k0 += P)
    for (std::size_t p = 0; p < P; ++p) out[k0 + p] = valid[p] ? per_pixel_k[k0 + p] : 0.f;
}

std::vector<float> apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid) {
  std::vector<float> out(per_pixel_k.size());
  apply_mask(per_pixel_k, valid, out);
  return out;
}

}  // namespace xanesd::science
