#!/usr/bin/env bash
# CI step (README "MPI"): the optional MPI build (-DXANESD_MPI=ON: OpenMPI, parallel HDF5) in
# build-mpi/, only what its tests need (xanesd, xanes-simulate, xanes-replay), then those tests:
# `mpirun -np N xanesd fit` against the one-process fit of the same files (python_mpi_fit), and
# the live daemon on 2 ranks against one daemon fed the same streams (python_mpi_live). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh --mpi
cmake -S . -B build-mpi -DCMAKE_BUILD_TYPE=Release -DXANESD_MPI=ON > mpi-configure.log 2>&1 || { cat mpi-configure.log; exit 1; }
rm -f mpi-configure.log
cmake --build build-mpi -j"$(nproc)" --target xanesd xanes-simulate xanes-replay
cd build-mpi
# mpirun refuses root unless told (CI runs as root); the test passes --allow-run-as-root too.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --output-on-failure --timeout 900 -R '^python_mpi_'
