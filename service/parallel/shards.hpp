// Live sharding (README "Live sharding"): a running scan's fit spread over the ranks of an MPI
// job. Rank 0 is the daemon everyone talks to: its Scan of the whole image validates, stores,
// journals, analyses and publishes, and hands its fit to FitShards. Every rank (rank 0 too)
// holds the Scan of one block of rows plus halo rows (the spatial step's neighbours) and folds
// and solves it; each solve gathers the blocks' own rows into the whole image's maps on rank 0.
// The whole scan makes every choice (references, weighting, the spatial step) and the blocks
// follow it, so the maps equal one daemon's on the same stream, bit for bit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "parallel/comm.hpp"
#include "scan/scan.hpp"

namespace xanesd::parallel {

// The part of `f` (a frame of a scan `cols` pixels wide) in image rows [w0, w1), as a frame of
// the scan of those rows; nothing when it has no sample there. Arrays keep their dtype and
// byte order: the block normalizes exactly the values the whole scan did.
std::optional<protocol::FrameMsg> frame_rows(const protocol::FrameMsg& f, int cols, int w0, int w1);
// `s` as the start of the scan of image rows [w0, w1): its dark and flat cut to them.
protocol::StartMsg start_rows(const protocol::StartMsg& s, int w0, int w1);

// Halo rows above and below each block: fit.spatial_radius can be raised at run time up to its
// maximum, so the blocks always hold what the widest window reads.
inline constexpr int kShardHaloRows = 10;
// The rows a block that owns [r0, r1) of an image of `rows` rows holds: its own and its halo.
inline std::pair<int, int> halo_window(int r0, int r1, int rows) {
  return {std::max(0, r0 - kShardHaloRows), std::min(rows, r1 + kShardHaloRows)};
}

class Shard;
struct Parts;

// Rank 0's side. Every call is one operation that all ranks run in the same order: rank 0
// scatters it (a frame: each rank only its rows), then runs its own block's part of it.
// Not thread-safe: the pipeline thread alone calls it (MPI_THREAD_SERIALIZED).
class FitShards final : public FitDelegate {
 public:
  FitShards(const Comm& comm, const Config& cfg);
  ~FitShards() override;  // the other ranks leave run_shard_worker
  // The config in force (after configure): the blocks' settings from the next refit on.
  void set_config(const Config& cfg) { config_ = cfg.effective; }
  // A new scan: each rank makes the scan of its block with `refs` (the whole scan's library).
  void start(const protocol::StartMsg& whole, const std::vector<science::Reference>& refs);
  void frame(const protocol::FrameMsg& f) override;
  void stop(const protocol::StopMsg& s) override;
  void extend(const protocol::StartMsg& more, const std::vector<science::Reference>& refs) override;
  void refit(const std::vector<science::Reference>& library, const std::vector<std::uint8_t>& selected) override;
  Solved solve(int threads, bool weighted, bool spatial, science::LcfMaps recycled) override;
  // For status: the ranks and the rows each owns.
  nlohmann::json status() const;

 private:
  // Sends part r of `parts` to rank r and runs part 0 here.
  void run(Parts parts, Solved* solved = nullptr);
  // `parts`, one operation being written, ended and repeated for every rank.
  Parts same_for_all(Parts parts) const;

  const Comm& comm_;
  nlohmann::json config_;
  std::unique_ptr<Shard> own_;
  int rows_ = 0, cols_ = 0;
  std::vector<std::pair<int, int>> blocks_;  // own rows per rank, of the current scan
};

// Ranks ≥ 1: runs rank 0's operations on this rank's block until FitShards is destroyed.
void run_shard_worker(const Comm& comm);

}  // namespace xanesd::parallel
