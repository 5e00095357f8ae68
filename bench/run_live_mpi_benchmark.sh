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

if [ "${XANESD_SKIP_BUILD:-0}" != 1 ]; then
  echo "== building xanesd, xanes-simulate and xanes-replay (MPI) in $BUILD"
  if ! { cmake -S "$ROOT" -B "$BUILD" -DXANESD_MPI=ON >/dev/null &&
         cmake --build "$BUILD" --target xanesd xanes-simulate xanes-replay -j2 >/dev/null; }; then
    echo "$NAME: build failed (rerun 'cmake --build $BUILD --target xanesd xanes-simulate xanes-replay' to see why)"
    exit 0
  fi
fi
XANESD="$BUILD/service/xanesd"
SIM="$BUILD/clients/xanes-simulate"
REPLAY="$BUILD/clients/xanes-replay"
for b in "$XANESD" "$SIM" "$REPLAY"; do [ -x "$b" ] || { echo "$NAME: $b not found"; exit 0; }; done
"$XANESD" --version | grep -q MPI || { echo "$NAME: $XANESD is not an MPI build (-DXANESD_MPI=ON)"; exit 0; }
command -v mpirun >/dev/null || { echo "$NAME: no mpirun (bash deploy/install-deps.sh --mpi)"; exit 0; }
bench_python_needs "zmq, msgpack"
bench_out_dir
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== command: $0 $*"
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "== $(mpirun --version | head -1), $("$XANESD" --version)"
SCAN="$OUT/scan-${SIZE}.h5"
if [ -f "$SCAN" ]; then
  echo "== reusing $SCAN"
else
  echo "== simulating a ${SIZE}×${SIZE} × 25 fluorescence scan (every third HXN energy; not timed)"
  awk 'NR % 3 == 1' "$ROOT/config/references/fe_k_energies_hxn.txt" > "$OUT/energies-25.txt"
  if ! "$SIM" --refs "$ROOT/config/references/fe_k_library_normalized.nor" --use Magnetite,Goethite,Pyrite \
      --energies "$OUT/energies-25.txt" --shape "${SIZE}x${SIZE}" --layout domains \
      --seed 1 --out "$SCAN" > "$OUT/simulate.log" 2>&1; then
    echo "$NAME: xanes-simulate failed:"; cat "$OUT/simulate.log"; rm -f "$SCAN"; exit 0
  fi
fi
bench_machine_line before
"$PY" "$ROOT/bench/live_mpi_benchmark.py" --scan "$SCAN" --xanesd "$XANESD" --replay "$REPLAY" \
  --config "$ROOT/config/default.json" --source-dir "$ROOT" --out "$OUT/runs" --ranks "$RANKS" --repeats "$REPEATS"
bench_machine_line after
exit 0
