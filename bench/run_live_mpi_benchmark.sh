#!/usr/bin/env bash
# Live sharding benchmark (README "Live sharding"): one daemon against `mpirun -np 2 xanesd` of
# the MPI build, fed the same simulated scan (default 1024² × 25 energies, fluorescence, 3
# species, the default config and library) by xanes-replay as fast as each takes it
# (bench/live_mpi_benchmark.py). A benchmark, not a test: it always exits 0.
#
#   bench/run_live_mpi_benchmark.sh [--size N] [--ranks 2] [--repeats N]
#
# Environment: XANESD_BUILD_DIR (default <repo>/build-mpi, configured with -DXANESD_MPI=ON),
# XANESD_SKIP_BUILD=1 to use the existing binaries, XANESD_BENCH_OUT=DIR to keep the files.
set -u
NAME=run_live_mpi_benchmark
XANESD_BUILD_DIR="${XANESD_BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build-mpi}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SIZE=1024
RANKS=2
REPEATS=2
bench_options "--size=SIZE --ranks=RANKS --repeats=REPEATS" "$@"

bench_mpi_build xanesd xanes-simulate xanes-replay
bench_python_needs "zmq, msgpack"
bench_out_dir

echo "== command: $0 $*"
bench_machine_header
echo "== $(mpirun --version | head -1), $("$XANESD" --version)"
SCAN="$OUT/scan-${SIZE}.h5"
# Every third HXN energy: 25, the energies of the 2048² × 25 live cycle the spatial-step target names.
awk 'NR % 3 == 1' "$ROOT/config/references/fe_k_energies_hxn.txt" > "$OUT/energies-25.txt"
bench_simulate "$SCAN" "$SIZE" "$OUT/energies-25.txt"
bench_machine_line before
"$PY" "$ROOT/bench/live_mpi_benchmark.py" --scan "$SCAN" --xanesd "$XANESD" --replay "$REPLAY" \
  --config "$ROOT/config/default.json" --source-dir "$ROOT" --out "$OUT/runs" --ranks "$RANKS" --repeats "$REPEATS"
bench_machine_line after
exit 0
