// Pixel-major statistics (S values per pixel, as IncrementalLcf keeps them) to planar rows (a
// value's B pixels side by side, as the block solvers and the spatial step read them), and back.
// A row at a time: strided loads, stores in sequence. With S known at compile time (4 to 9:
// models of 3 to 8 parameters, plus yᵀy) the strided side vectorizes; the pixel-at-a-time loop
// over a run-time S, a compare and branch per value, was half of the spatial step's pass 1.
#pragma once

#include <cstddef>
#include <type_traits>

namespace xanesd::science {

namespace detail {
// f(std::integral_constant<std::size_t, S>) for the common counts, else f(S).
template <class F>
__attribute__((always_inline)) inline void with_count(std::size_t S, F&& f) {
  using std::integral_constant;
  switch (S) {
    case 4: return f(integral_constant<std::size_t, 4>{});
    case 5: return f(integral_constant<std::size_t, 5>{});
    case 6: return f(integral_constant<std::size_t, 6>{});
    case 7: return f(integral_constant<std::size_t, 7>{});
    case 8: return f(integral_constant<std::size_t, 8>{});
    case 9: return f(integral_constant<std::size_t, 9>{});
    default: return f(S);
  }
}
}  // namespace detail

// B pixels' S values each (in: pixel-major) into S rows N apart.
__attribute__((always_inline)) inline void to_planar(std::size_t S, std::size_t B, std::size_t N,
                                                     const double* __restrict in, double* __restrict rows) {
  detail::with_count(S, [&](auto count) __attribute__((always_inline)) {
    const std::size_t s = count;
    for (std::size_t m = 0; m < s; ++m)
      for (std::size_t i = 0; i < B; ++i) rows[m * N + i] = in[i * s + m];
  });
}

// S rows N apart into B pixels' S values each (out: pixel-major).
__attribute__((always_inline)) inline void from_planar(std::size_t S, std::size_t B, std::size_t N,
                                                       const double* __restrict rows, double* __restrict out) {
  detail::with_count(S, [&](auto count) __attribute__((always_inline)) {
    const std::size_t s = count;
    for (std::size_t m = 0; m < s; ++m)
      for (std::size_t i = 0; i < B; ++i) out[i * s + m] = rows[m * N + i];
  });
}

}  // namespace xanesd::science
