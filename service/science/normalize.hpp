// Signal normalization per sample (science.md §2). Inline: called per pixel in the ingest path.
#pragma once

#include <cmath>

namespace xanesd::science {

// Fluorescence: y = (I − dark) / I0. Returns NaN when I0 is not positive (caller rejects).
inline double fluorescence_signal(double counts, double dark, double i0) {
  return i0 > 0 ? (counts - dark) / i0 : NAN;
}

// Transmission: y = −ln((I − dark) / (F − dark)). A non-positive or tiny transmission would
// give an undefined or absurd absorbance: the ratio is clamped to `min_transmission` and
// `clamped` is set so the caller can count and flag the sample. Never returns NaN for finite input.
inline double transmission_signal(double counts, double dark, double flat, double min_transmission,
                                  bool& clamped) {
  const double num = counts - dark, den = flat - dark;
  double t = (den > 0) ? num / den : 0.0;
  clamped = !(t >= min_transmission);
  if (clamped) t = min_transmission;
  return -std::log(t);
}

}  // namespace xanesd::science
