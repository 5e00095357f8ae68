#!/usr/bin/env bash
# Batch reprocessing benchmark: `xanesd fit` of a simulated scan file (default 1024² × 100
# energies, fluorescence, float32 counts, I0 per energy, 2 references) against h5py's read of
# its counts and the lean numpy fit of the same file, in one run (bench/batch_benchmark.py).
# A benchmark, not a test: it always exits 0 and prints whether each target is met. See bench/README.md.
#
#   bench/run_batch_benchmark.sh [--size N] [--energies N] [--repeats N]
#
# Environment: XANESD_BUILD_DIR (default <repo>/build), XANESD_PYTHON (default /usr/bin/python3,
# Debian's, with numpy and h5py), XANESD_SKIP_BUILD=1 to use the existing binaries,
# XANESD_BENCH_OUT=DIR to keep the scan file and results there (default: a temporary directory).
set -u
NAME=run_batch_benchmark
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SIZE=1024
ENERGIES=100
REPEATS=3
bench_options "--size=SIZE --energies=ENERGIES --repeats=REPEATS" "$@"

if [ "${XANESD_SKIP_BUILD:-0}" != 1 ]; then
  echo "== building xanesd and xanes-simulate"
  if ! { cmake -S "$ROOT" -B "$BUILD" >/dev/null && cmake --build "$BUILD" --target xanesd xanes-simulate -j2 >/dev/null; }; then
    echo "$NAME: build failed (rerun 'cmake --build $BUILD --target xanesd xanes-simulate' to see why)"
    exit 0
  fi
fi
XANESD="$BUILD/service/xanesd"
SIM="$BUILD/clients/xanes-simulate"
for b in "$XANESD" "$SIM"; do [ -x "$b" ] || { echo "$NAME: $b not found"; exit 0; }; done
bench_python_needs "numpy, h5py"
bench_out_dir

LIB="$ROOT/config/references/fe_k_library_normalized.nor"
NAMES=Magnetite,Goethite
echo "== command: $0 $*"
bench_machine_header
# Energies evenly over the Fe K-edge library's range (7075–7196 eV, the HXN grid's span).
awk -v n="$ENERGIES" 'BEGIN { for (i = 0; i < n; ++i) printf "%.3f\n", 7075 + (7196 - 7075) * i / (n - 1) }' > "$OUT/energies.txt"
SCAN="$OUT/scan-${SIZE}x${ENERGIES}.h5"  # kept in XANESD_BENCH_OUT: the same simulation is reused
if [ -f "$SCAN" ]; then
  echo "== reusing $SCAN"
else
  echo "== simulating a ${SIZE}×${SIZE} × $ENERGIES fluorescence scan ($NAMES; not timed)"
  if ! "$SIM" --refs "$LIB" --use "$NAMES" --energies "$OUT/energies.txt" --shape "${SIZE}x${SIZE}" --layout domains \
      --seed 1 --out "$SCAN" > "$OUT/simulate.log" 2>&1; then
    echo "$NAME: xanes-simulate failed:"; cat "$OUT/simulate.log"; rm -f "$SCAN"; exit 0
  fi
fi
echo "   $(du -h "$SCAN" | cut -f1) scan file"
mkdir -p "$OUT/results"
bench_machine_line before
"$PY" "$ROOT/bench/batch_benchmark.py" --scan "$SCAN" --refs "$LIB" --names "$NAMES" --xanesd "$XANESD" \
  --out "$OUT/results" --repeats "$REPEATS" \
  --variant "no_spatial:fit.spatial=false,fit.weighting=none" \
  --variant "fit_only:fit.spatial=false,fit.weighting=none,segment.enabled=false,references.select=false" \
  --variant "with_spectra:output.batch_spectra_max_pixels=1000000000" | tee "$OUT/batch.txt"
bench_machine_line after

"$PY" - "$ROOT/bench" "$OUT/batch.txt" <<'EOF'
import sys

sys.path.insert(0, sys.argv.pop(1))  # bench/, for bench_results
from bench_results import read_results  # noqa: E402

r = read_results(sys.argv[1:])
read, lean, x = r.get("read_s"), r.get("lean_s"), r.get("xanesd_default_s")
if None in (read, lean, x):
    print("\n(some runs failed: no summary)")
    sys.exit(0)
print("\n== summary (best of the repeats, same run, same file in the page cache)")
for key in ("default", "no_spatial", "fit_only", "with_spectra"):
    t = r.get(f"xanesd_{key}_s")
    if t is not None:
        print(f"  xanesd fit [{key:<12}] {t:7.3f} s = {t / read:4.2f}× the h5py read, {lean / t:4.2f}× faster than lean numpy")
print(f"  h5py read of the counts   {read:7.3f} s")
print(f"  lean numpy fit of the file {lean:6.3f} s")


def target(name, ok, goal):
    print(f"  {name:<48} target {goal:<8} {'MET' if ok else 'NOT MET'}")


print("  targets (default config)")
target(f"xanesd fit / h5py read = {x / read:.2f}×", x / read <= 1.5, "≤ 1.5×")
target(f"lean numpy / xanesd fit = {lean / x:.2f}×", lean / x >= 2, "≥ 2×")
EOF
exit 0
