#!/usr/bin/env bash
# Live memory benchmark (issue 13's budget, README "Memory"): the daemon's peak resident memory
# over one live scan (default 2048² × 100 energies, fluorescence, 3 species, the default config
# and library) fed by xanes-replay as fast as it takes it, against the scan's raw float32 cube,
# the figure `status` states for the scan (scan.memory), and, run in the same script, numpy
# holding the same counts read with h5py (bench/live_memory_benchmark.py). A benchmark, not a
# test: it always exits 0. Needs about 2 × the cube on disk (the scan file and the journal).
#
#   bench/run_live_memory_benchmark.sh [--size N] [--energies N] [--sets KEY=VALUE,...]
#
# --sets: config overrides for the daemon (e.g. ingest.queue_frames=8,ingest.rcvhwm=8).
#
# Environment: XANESD_BUILD_DIR (default <repo>/build), XANESD_SKIP_BUILD=1 to use the existing
# binaries, XANESD_BENCH_OUT=DIR to keep the files.
set -u
NAME=run_live_memory_benchmark
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SIZE=2048
ENERGIES=100
SETS=""
bench_options "--size=SIZE --energies=ENERGIES --sets=SETS" "$@"

bench_tools_build "" xanesd xanes-simulate xanes-replay
bench_python_needs "zmq, msgpack, h5py, numpy"
bench_out_dir

echo "== command: $0 $*"
bench_machine_header
SCAN="$OUT/scan-${SIZE}-${ENERGIES}.h5"
# ENERGIES points evenly over the shipped HXN grid's range.
awk -v n="$ENERGIES" 'NR == 1 { lo = $1 } { hi = $1 } END { for (i = 0; i < n; i++) printf "%.2f\n", lo + (hi - lo) * i / (n - 1) }' \
  "$ROOT/config/references/fe_k_energies_hxn.txt" > "$OUT/energies.txt"
bench_simulate "$SCAN" "$SIZE" "$OUT/energies.txt"
bench_machine_line before
"$PY" "$ROOT/bench/live_memory_benchmark.py" --scan "$SCAN" --xanesd "$XANESD" --replay "$REPLAY" \
  --config "$ROOT/config/default.json" --source-dir "$ROOT" --out "$OUT/run" --sets "$SETS"
bench_machine_line after
exit 0
