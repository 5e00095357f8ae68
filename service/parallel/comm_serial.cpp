// The serial build: one process, no MPI.
#include "parallel/comm.hpp"

namespace xanesd::parallel {

std::unique_ptr<Comm> start() { return std::make_unique<SerialComm>(); }
bool mpi_build() { return false; }

}  // namespace xanesd::parallel
