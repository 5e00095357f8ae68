// Pixel-major statistics (S values per pixel, as IncrementalLcf keeps them) to planar rows (a
// value's B pixels side by side, as the block solvers and the spatial step read them).
#pragma once

#include <cstddef>

namespace xanesd::science {

namespace detail {
template <std::size_t S>
__attribute__((always_inline)) inline void from_planar_fixed(std::size_t B, std::size_t N, const double* __restrict rows,
                                                             double* __restrict out) {
  for (std::size_t m = 0; m < S; ++m)
    for (std::size_t i = 0; i < B; ++i) out[i * S + m] = rows[m * N + i];
}
template <std::size_t S>
__attribute__((always_inline)) inline void to_planar_fixed(std::size_t B, std::size_t N, const double* __restrict in,
                                                           double* __restrict rows) {
  for (std::size_t m = 0; m < S; ++m)
    for (std::size_t i = 0; i < B; ++i) rows[m * N + i] = in[i * S + m];
}
}  // namespace detail

// B pixels' S values each (in: pixel-major) into S rows N apart, a row at a time (strided
// loads, stores in sequence). With S known at compile time (4 to 9: models of 3 to 8
// parameters, plus yᵀy) the loads vectorize; the pixel-at-a-time loop over a run-time S spent
// a compare and branch per value (half of the spatial step's pass 1).
__attribute__((always_inline)) inline void to_planar(std::size_t S, std::size_t B, std::size_t N,
                                                     const double* __restrict in, double* __restrict rows) {
  switch (S) {
    case 4: return detail::to_planar_fixed<4>(B, N, in, rows);
    case 5: return detail::to_planar_fixed<5>(B, N, in, rows);
    case 6: return detail::to_planar_fixed<6>(B, N, in, rows);
    case 7: return detail::to_planar_fixed<7>(B, N, in, rows);
    case 8: return detail::to_planar_fixed<8>(B, N, in, rows);
    case 9: return detail::to_planar_fixed<9>(B, N, in, rows);
    default: break;
  }
  for (std::size_t m = 0; m < S; ++m)
    for (std::size_t i = 0; i < B; ++i) rows[m * N + i] = in[i * S + m];
}

// The way back: S rows N apart into B pixels' S values each (pixel-major).
__attribute__((always_inline)) inline void from_planar(std::size_t S, std::size_t B, std::size_t N,
                                                       const double* __restrict rows, double* __restrict out) {
  switch (S) {
    case 4: return detail::from_planar_fixed<4>(B, N, rows, out);
    case 5: return detail::from_planar_fixed<5>(B, N, rows, out);
    case 6: return detail::from_planar_fixed<6>(B, N, rows, out);
    case 7: return detail::from_planar_fixed<7>(B, N, rows, out);
    case 8: return detail::from_planar_fixed<8>(B, N, rows, out);
    case 9: return detail::from_planar_fixed<9>(B, N, rows, out);
    default: break;
  }
  for (std::size_t m = 0; m < S; ++m)
    for (std::size_t i = 0; i < B; ++i) out[i * S + m] = rows[m * N + i];
}

}  // namespace xanesd::science
