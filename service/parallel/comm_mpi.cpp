// The MPI build (-DXANESD_MPI=ON): MPI_COMM_WORLD and parallel HDF5's MPI-IO driver.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <list>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>

#include "parallel/comm.hpp"

namespace xanesd::parallel {

namespace {

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw std::runtime_error(std::string("MPI: ") + what + " failed");
}

// Completes `request`, polling: a blocking MPI call spins on its core while it waits, and a rank
// waiting for another (a live shard between frames, a block done before the slowest) would take
// that core from the ranks still computing on a shared machine.
// The pause grows from 50 µs to 1 ms: each test runs MPI's progress engine, which a rank idle for
// a whole scan (a worker between scans) would otherwise run 10 000 times a second.
void wait_idle(MPI_Request& request, const char* what) {
  int done = 0;
  for (int spins = 0; spins < 16 && !done; ++spins) check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what);
  auto pause = std::chrono::microseconds(50);
  while (!done) {
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what);
  }
}

class MpiComm final : public Comm {
 public:
  MpiComm() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    // One thread at a time calls MPI: the main thread of `xanesd fit`, the pipeline thread of a
    // live shard (the science's own threads never do).
    int provided = 0;
    if (!initialized) check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    else MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_SERIALIZED)
      throw std::runtime_error("MPI: this MPI library does not allow calls from more than one thread (MPI_THREAD_SERIALIZED)");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    access_ = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(access_, MPI_COMM_WORLD, MPI_INFO_NULL);
    transfer_ = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(transfer_, H5FD_MPIO_COLLECTIVE);
  }
  ~MpiComm() override {
    for (auto& s : sends_) MPI_Wait(&s.request, MPI_STATUS_IGNORE);
    H5Pclose(access_);
    H5Pclose(transfer_);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() const override {
    MPI_Request request;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &request), "MPI_Ibarrier");
    wait_idle(request, "MPI_Ibarrier");
  }
  void sum(std::span<double> v) const override {
    check(MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  }
  std::vector<float> all_gather(std::span<const float> local) const override {
    const auto counts = counts_of(static_cast<int>(local.size()));
    std::vector<int> displs(counts.size(), 0);
    for (std::size_t r = 1; r < counts.size(); ++r) displs[r] = displs[r - 1] + counts[r - 1];
    std::vector<float> all(static_cast<std::size_t>(displs.back() + counts.back()));
    check(MPI_Allgatherv(local.data(), static_cast<int>(local.size()), MPI_FLOAT, all.data(), counts.data(), displs.data(),
                         MPI_FLOAT, MPI_COMM_WORLD),
          "MPI_Allgatherv");
    return all;
  }
  std::vector<std::byte> gather(std::span<const std::byte> local) const override {
    // Counts as int: a block above 2 GiB per rank would need MPI 4's large counts.
    if (local.size() > static_cast<std::size_t>(INT32_MAX)) throw std::runtime_error("MPI: a rank's block exceeds 2 GiB");
    const auto counts = counts_of(static_cast<int>(local.size()));
    std::vector<int> displs(counts.size(), 0);
    std::size_t total = counts.empty() ? 0 : static_cast<std::size_t>(counts[0]);
    for (std::size_t r = 1; r < counts.size(); ++r) {
      if (total + static_cast<std::size_t>(counts[r]) > static_cast<std::size_t>(INT32_MAX))
        throw std::runtime_error("MPI: the gathered image exceeds 2 GiB");
      displs[r] = static_cast<int>(total);
      total += static_cast<std::size_t>(counts[r]);
    }
    std::vector<std::byte> all(rank_ == 0 ? total : 0);
    check(MPI_Gatherv(local.data(), static_cast<int>(local.size()), MPI_BYTE, all.data(), counts.data(), displs.data(),
                      MPI_BYTE, 0, MPI_COMM_WORLD),
          "MPI_Gatherv");
    return all;
  }
  void gather_into(std::span<const std::byte> local, std::size_t offset, std::span<std::byte> out) const override {
    if (local.size() > static_cast<std::size_t>(INT32_MAX) || offset > static_cast<std::size_t>(INT32_MAX))
      throw std::runtime_error("MPI: a gathered plane exceeds 2 GiB");
    const auto counts = counts_of(static_cast<int>(local.size()));
    std::vector<int> displs(counts.size());
    const int at = static_cast<int>(offset);
    check(MPI_Gather(&at, 1, MPI_INT, displs.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Gather");
    check(MPI_Gatherv(local.data(), static_cast<int>(local.size()), MPI_BYTE, out.data(), counts.data(), displs.data(), MPI_BYTE,
                      0, MPI_COMM_WORLD),
          "MPI_Gatherv");
  }
  std::vector<std::byte> scatter(std::span<const std::byte> all, std::span<const std::size_t> bounds) const override {
    std::vector<unsigned long long> sizes;
    std::vector<int> counts, displs;
    if (rank_ == 0) {
      if (bounds[static_cast<std::size_t>(size_)] > static_cast<std::size_t>(INT32_MAX))
        throw std::runtime_error("MPI: a scattered message exceeds 2 GiB");
      for (int r = 0; r < size_; ++r) {
        const auto b0 = bounds[static_cast<std::size_t>(r)], b1 = bounds[static_cast<std::size_t>(r) + 1];
        sizes.push_back(b1 - b0);
        counts.push_back(static_cast<int>(b1 - b0));
        displs.push_back(static_cast<int>(b0));
      }
    }
    unsigned long long mine = 0;
    MPI_Request request;
    check(MPI_Iscatter(sizes.data(), 1, MPI_UNSIGNED_LONG_LONG, &mine, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD, &request),
          "MPI_Iscatter");
    wait_idle(request, "MPI_Iscatter");
    std::vector<std::byte> part(static_cast<std::size_t>(mine));
    check(MPI_Scatterv(all.data(), counts.data(), displs.data(), MPI_BYTE, part.data(), static_cast<int>(mine), MPI_BYTE, 0,
                       MPI_COMM_WORLD),
          "MPI_Scatterv");
    return part;
  }
  void send(int to, std::span<const std::byte> bytes) const override {
    // Finished sends free their copies; the rest complete when their receiver takes them.
    for (auto it = sends_.begin(); it != sends_.end();) {
      int done = 0;
      check(MPI_Test(&it->request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      it = done ? sends_.erase(it) : std::next(it);
    }
    auto& s = sends_.emplace_back(Send{{bytes.begin(), bytes.end()}, MPI_REQUEST_NULL});
    check(MPI_Isend(s.bytes.data(), static_cast<int>(s.bytes.size()), MPI_BYTE, to, kPointTag, MPI_COMM_WORLD, &s.request),
          "MPI_Isend");
  }
  void receive(int from, std::span<std::byte> out) const override {
    MPI_Request request;
    check(MPI_Irecv(out.data(), static_cast<int>(out.size()), MPI_BYTE, from, kPointTag, MPI_COMM_WORLD, &request), "MPI_Irecv");
    wait_idle(request, "MPI_Irecv");
  }
  hid_t h5_file_access() const override { return access_; }
  hid_t h5_transfer() const override { return transfer_; }
  void abort(int code) const override {
    if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  }

 private:
  std::vector<int> counts_of(int n) const {
    std::vector<int> counts(static_cast<std::size_t>(size_));
    check(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather");
    return counts;
  }
  static constexpr int kPointTag = 17;
  struct Send {
    std::vector<std::byte> bytes;
    MPI_Request request;
  };
  mutable std::list<Send> sends_;  // sends in flight (send returns before the receiver takes them)
  int rank_ = 0, size_ = 1;
  hid_t access_ = H5I_INVALID_HID, transfer_ = H5I_INVALID_HID;
};

}  // namespace

std::unique_ptr<Comm> start() { return std::make_unique<MpiComm>(); }
bool mpi_build() { return true; }

}  // namespace xanesd::parallel
