// Part of an image: the row block one process of an MPI job fits (service/parallel). The
// image-level steps (the mask's thickness percentile, the reference selection's tile evidence,
// the segmentation's sample, clusters and smoothing, the edge maps' mean spectrum) then combine
// every part's own pixels through `gather`, `sum` and the label rows; in one process the part is
// the whole image and none of them is set, so the science has no MPI in it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <vector>

namespace xanesd::science {

struct ImagePart {
  // Pixels [begin, end) of this part's arrays are its own; the rest are halo rows (neighbours'
  // pixels the spatial step reads), counted by the part that owns them.
  std::size_t begin = 0, end = std::numeric_limits<std::size_t>::max();
  int row0 = 0;        // the image row of the first own pixel
  int image_rows = 0;  // rows of the whole image (0: this part is the whole image)
  // Every part's values concatenated in image order; each element summed over the parts.
  std::function<std::vector<float>(std::vector<float>)> gather;
  std::function<void(std::span<double>)> sum;
  // A row of labels to or from the part above (side −1) or below (+1): the segment smoothing's
  // sweeps cross the cut. send_row returns at once; receive_row waits for the neighbour's next.
  std::function<void(int side, std::span<const std::uint8_t>)> send_row;
  std::function<void(int side, std::span<std::uint8_t>)> receive_row;
  // Several parts (an MPI rank's block): the image-level steps combine them.
  bool shared() const { return static_cast<bool>(sum); }
};

// A volume fitted as one image of its Z slices stacked (Z·Y rows, `xanesd fit` of an
// E × Z × Y × X file): the steps that read a pixel's neighbours (the spatial fit's window, the
// segment labels' smoothing) never reach into another slice.
struct SliceLayout {
  int slice_rows = 0;  // image rows per slice (Y); 0: an image, no slices
  int first_row = 0;   // the image row of the arrays' row 0 (an MPI rank's block with its halo)
  bool same_slice(int r, int q) const {
    return slice_rows <= 0 || (first_row + r) / slice_rows == (first_row + q) / slice_rows;
  }
};

}  // namespace xanesd::science
