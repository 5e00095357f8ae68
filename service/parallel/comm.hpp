// The thin layer between xanesd and MPI (README "MPI"): what the batch fit and the live shards
// need of a communicator, nothing more. One process is the identity (SerialComm); the MPI build adds
// MpiComm (comm_mpi.cpp, MPI_COMM_WORLD), so no MPI header or #ifdef reaches the science.
#pragma once

#include <hdf5.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <vector>

namespace xanesd::parallel {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Returns when every rank has called it.
  virtual void barrier() const = 0;
  // Each element summed over the ranks, in place, on every rank.
  virtual void sum(std::span<double> v) const = 0;
  // Every rank's `local` concatenated in rank order, on every rank.
  virtual std::vector<float> all_gather(std::span<const float> local) const = 0;
  // Every rank's bytes concatenated in rank order on rank 0 (empty elsewhere).
  virtual std::vector<std::byte> gather(std::span<const std::byte> local) const = 0;
  // Every rank's `local` bytes into rank 0's `out` at that rank's `offset` (bytes; the ranks'
  // ranges do not overlap): straight into the final array, no staging copy. `out` is used on
  // rank 0 only.
  virtual void gather_into(std::span<const std::byte> local, std::size_t offset, std::span<std::byte> out) const = 0;
  // Rank 0's `all` cut at `bounds` (size() + 1 byte offsets; both used on rank 0 only), part r
  // to rank r: returns this rank's part. A rank waiting here for rank 0 sleeps between polls
  // instead of spinning on a core (a live shard waits here for the next frame).
  virtual std::vector<std::byte> scatter(std::span<const std::byte> all, std::span<const std::size_t> bounds) const = 0;
  // Point to point (rows of labels between neighbouring blocks, the segment smoothing's sweeps):
  // send copies `bytes` and returns at once; receive waits for the next bytes from `from`
  // (messages from one rank arrive in the order sent). Not used in one process.
  virtual void send(int to, std::span<const std::byte> bytes) const = 0;
  virtual void receive(int from, std::span<std::byte> out) const = 0;
  // HDF5 property lists for reading or writing one file from every rank: MPI-IO file access
  // and collective transfers under MPI, H5P_DEFAULT in one process.
  virtual hid_t h5_file_access() const { return H5P_DEFAULT; }
  virtual hid_t h5_transfer() const { return H5P_DEFAULT; }
  // Ends the whole job (an error on one rank would leave the others waiting in a collective).
  virtual void abort(int code) const = 0;
};

class SerialComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void barrier() const override {}
  void sum(std::span<double>) const override {}
  std::vector<float> all_gather(std::span<const float> local) const override { return {local.begin(), local.end()}; }
  std::vector<std::byte> gather(std::span<const std::byte> local) const override { return {local.begin(), local.end()}; }
  void gather_into(std::span<const std::byte> local, std::size_t offset, std::span<std::byte> out) const override {
    std::copy(local.begin(), local.end(), out.begin() + static_cast<std::ptrdiff_t>(offset));
  }
  std::vector<std::byte> scatter(std::span<const std::byte> all, std::span<const std::size_t> bounds) const override {
    return {all.begin() + static_cast<std::ptrdiff_t>(bounds[0]), all.begin() + static_cast<std::ptrdiff_t>(bounds[1])};
  }
  void send(int, std::span<const std::byte>) const override { throw std::logic_error("send: one process has no other rank"); }
  void receive(int, std::span<std::byte>) const override { throw std::logic_error("receive: one process has no other rank"); }
  void abort(int) const override {}
};

// The job's communicator: MPI_COMM_WORLD in the MPI build (MPI initialized here, finalized when
// it is destroyed), SerialComm otherwise. `xanesd fit` and the daemon of an MPI build start one;
// any thread may call it, one at a time (MPI_THREAD_SERIALIZED: the daemon's pipeline thread).
std::unique_ptr<Comm> start();

// Whether this build has MPI (xanesd --version says so).
bool mpi_build();

}  // namespace xanesd::parallel
