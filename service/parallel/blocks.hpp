// How an image is cut into the row blocks of an MPI job's ranks (`xanesd fit`, batch.cpp, and
// the live shards, shards.cpp), and how rank 0 assembles the whole image's planes from every
// rank's own rows (the live shards' maps).
#pragma once

#include <span>
#include <string>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "parallel/comm.hpp"
#include "science/zeroed_allocator.hpp"

namespace xanesd::parallel {

// The rows of the image each rank owns: contiguous blocks in rank order, each starting on a
// multiple of `align` rows (the reference selection's tiles: each tile lies in one block).
// More ranks than such blocks is a ConfigError naming the limit.
inline std::vector<std::pair<int, int>> row_blocks(int rows, int ranks, int align) {
  const int units = (rows + align - 1) / align;
  if (units < ranks)
    throw ConfigError("the image has " + std::to_string(rows) + " rows, " + std::to_string(units) + " block(s) of " +
                      std::to_string(align) + " (the reference selection's tiles): run at most " + std::to_string(units) +
                      " ranks");
  std::vector<std::pair<int, int>> blocks;
  for (int r = 0; r < ranks; ++r) {
    const int u0 = static_cast<int>(static_cast<long long>(units) * r / ranks);
    const int u1 = static_cast<int>(static_cast<long long>(units) * (r + 1) / ranks);
    blocks.emplace_back(u0 * align, std::min(rows, u1 * align));
  }
  return blocks;
}

// Rank 0 gets the whole image's values of `planes` per-pixel planes (plane stride `local_npix`
// here, `image_npix` there) from every rank's own pixels, straight into the image (on huge
// pages: no zero-fill, a fault per 2 MiB); `own` is [first pixel, count) per rank, in the
// image, and `local0` the first own pixel in this rank's arrays. The blocks' own rows cover the
// image, so every element is written: `reuse` (the last gather's, its pages mapped) serves
// again when its size matches.
template <class T>
science::ZeroedVector<T> gather_planes(const Comm& comm, const T* local, std::size_t local_npix, std::size_t local0,
                                       std::size_t planes, const std::vector<std::pair<std::size_t, std::size_t>>& own,
                                       std::size_t image_npix, science::ZeroedVector<T> reuse = {}) {
  const auto [first, count] = own[static_cast<std::size_t>(comm.rank())];
  const std::size_t size = comm.rank() == 0 ? planes * image_npix : 0;
  science::ZeroedVector<T> image = reuse.size() == size ? std::move(reuse) : science::ZeroedVector<T>(size);
  for (std::size_t pl = 0; pl < planes; ++pl) {
    std::span<std::byte> out;
    if (comm.rank() == 0) out = std::as_writable_bytes(std::span<T>(image.data() + pl * image_npix, image_npix));
    comm.gather_into(std::as_bytes(std::span<const T>(local + pl * local_npix + local0, count)), first * sizeof(T), out);
  }
  return image;
}

}  // namespace xanesd::parallel
