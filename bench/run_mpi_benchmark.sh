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

if [ "${XANESD_SKIP_BUILD:-0}" != 1 ]; then
  echo "== building xanesd and xanes-simulate (MPI) in $BUILD"
  if ! { cmake -S "$ROOT" -B "$BUILD" -DXANESD_MPI=ON >/dev/null && cmake --build "$BUILD" --target xanesd xanes-simulate -j2 >/dev/null; }; then
    echo "$NAME: build failed (rerun 'cmake --build $BUILD --target xanesd xanes-simulate' to see why)"
    exit 0
  fi
fi
XANESD="$BUILD/service/xanesd"
SIM="$BUILD/clients/xanes-simulate"
for b in "$XANESD" "$SIM"; do [ -x "$b" ] || { echo "$NAME: $b not found"; exit 0; }; done
"$XANESD" --version | grep -q MPI || { echo "$NAME: $XANESD is not an MPI build (-DXANESD_MPI=ON)"; exit 0; }
command -v mpirun >/dev/null || { echo "$NAME: no mpirun (bash deploy/install-deps.sh --mpi)"; exit 0; }
bench_python_needs "h5py"
bench_out_dir
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== command: $0 $*"
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "== $(mpirun --version | head -1), $("$XANESD" --version)"
SCAN="$OUT/scan-${SIZE}.h5"
if [ -f "$SCAN" ]; then
  echo "== reusing $SCAN"
else
  echo "== simulating a ${SIZE}×${SIZE} × 73 fluorescence scan (not timed)"
  if ! "$SIM" --refs "$ROOT/config/references/fe_k_library_normalized.nor" --use Magnetite,Goethite,Pyrite \
      --energies "$ROOT/config/references/fe_k_energies_hxn.txt" --shape "${SIZE}x${SIZE}" --layout domains \
      --seed 1 --out "$SCAN" > "$OUT/simulate.log" 2>&1; then
    echo "$NAME: xanes-simulate failed:"; cat "$OUT/simulate.log"; rm -f "$SCAN"; exit 0
  fi
fi
bench_machine_line before
"$PY" "$ROOT/bench/mpi_benchmark.py" --scan "$SCAN" --xanesd "$XANESD" --config "$ROOT/config/default.json" \
  --out "$OUT" --ranks "$RANKS" --repeats "$REPEATS"
bench_machine_line after
exit 0
