#!/usr/bin/env bash
# MPI scaling benchmark (README "MPI"): `xanesd fit` of a simulated scan file (default 512² × 73
# HXN energies, fluorescence, 3 references) in one process against `mpirun -np 1` and `-np 2` of
# the MPI build, one thread per rank; time per step, parallel efficiency, a model for N nodes
# (bench/mpi_benchmark.py). A benchmark, not a test: it always exits 0.
#
#   bench/run_mpi_benchmark.sh [--size N] [--ranks 1,2] [--repeats N]
#
# Environment: XANESD_BUILD_DIR (default <repo>/build-mpi, configured with -DXANESD_MPI=ON),
# XANESD_SKIP_BUILD=1 to use the existing binaries, XANESD_BENCH_OUT=DIR to keep the files.
set -u
NAME=run_mpi_benchmark
XANESD_BUILD_DIR="${XANESD_BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build-mpi}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SIZE=512
RANKS=1,2
REPEATS=3
bench_options "--size=SIZE --ranks=RANKS --repeats=REPEATS" "$@"

bench_mpi_build xanesd xanes-simulate
bench_python_needs "h5py"
bench_out_dir

echo "== command: $0 $*"
bench_machine_header
echo "== $(mpirun --version | head -1), $("$XANESD" --version)"
SCAN="$OUT/scan-${SIZE}.h5"
bench_simulate "$SCAN" "$SIZE" "$ROOT/config/references/fe_k_energies_hxn.txt"
bench_machine_line before
"$PY" "$ROOT/bench/mpi_benchmark.py" --scan "$SCAN" --xanesd "$XANESD" --config "$ROOT/config/default.json" \
  --out "$OUT" --ranks "$RANKS" --repeats "$REPEATS"
bench_machine_line after
exit 0
