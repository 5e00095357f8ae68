#!/usr/bin/env bash
# Energy selection benchmark: xanesd's RFE and A-optimal selection (build/bench/bench_select)
# against scikit-learn's RFE (bench/sklearn_rfe_baseline.py) on the SAME training mixtures
# (written by bench_select as .npy), every choice scored by the same held-out NNLS LCF evaluator
# (bench_select --evaluate). A benchmark, not a test: it always exits 0. See bench/README.md.
#
#   bench/run_select_benchmark.sh [--repeats N] [--seed S]
#
# Environment: XANESD_BUILD_DIR (default <repo>/build), XANESD_PYTHON (default /usr/bin/python3,
# Debian's, with numpy and scikit-learn), XANESD_SKIP_BUILD=1 to use the existing binary,
# XANESD_BENCH_OUT=DIR to keep the mixtures and outputs there (default: a temporary directory).
set -u
NAME=run_select_benchmark
TARGET=bench_select
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REPEATS=5
SEED_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) REPEATS="$2"; shift 2 ;;
    --seed) SEED_ARGS=(--seed "$2"); shift 2 ;;
    *) echo "run_select_benchmark: unknown option '$1' (--repeats N, --seed S)"; exit 0 ;;
  esac
done

bench_build
bench_python_needs "numpy, sklearn"
bench_out_dir

bench_machine_line before
echo
"$BIN" --out "$OUT" --repeats "$REPEATS" "${SEED_ARGS[@]}" | tee "$OUT/xanesd.txt" || { echo "run_select_benchmark: bench_select failed"; exit 0; }
echo
"$PY" "$ROOT/bench/sklearn_rfe_baseline.py" "$OUT" --repeats "$REPEATS" | tee "$OUT/sklearn.txt" || { echo "run_select_benchmark: the scikit-learn side failed"; exit 0; }
echo
echo "== the scikit-learn choices, scored by xanesd's evaluator on the same held-out mixtures"
"$BIN" --evaluate "$OUT/sklearn_indices.json" "${SEED_ARGS[@]}" | tee "$OUT/eval.txt"
echo
bench_machine_line after

"$PY" - "$ROOT/bench" "$OUT/xanesd.txt" "$OUT/sklearn.txt" "$OUT/eval.txt" <<'EOF'
import sys

sys.path.insert(0, sys.argv.pop(1))  # bench/, for bench_results
from bench_results import read_results  # noqa: E402

r = read_results(sys.argv[1:])


def ms(v):
    return "—" if v is None else f"{v * 1e3:.2f} ms"


def x(a, b):
    return "—" if a is None or b is None or b == 0 else f"{a / b:.0f}×"


for key in ("11", "65"):
    g = lambda k: r.get(k.format(key=key))
    full = g("cxx_{key}_full_rmse")
    print(f"\n== summary, {key} references, 75-point grid, 13 + 3 energies (time: selection only, best of runs)")
    rows = [
        ("xanesd RFE", g("cxx_{key}_rfe_s"), g("cxx_{key}_rfe_rmse"), ""),
        ("xanesd A-optimal", g("cxx_{key}_aopt_s"), g("cxx_{key}_aopt_rmse"), ""),
        ("sklearn RFE(LinearRegression()), raw", g("sk_{key}_rfe_s"), g("eval_{key}_sklearn_rmse"),
         f"{x(g('sk_{key}_rfe_s'), g('cxx_{key}_rfe_s'))} xanesd RFE's time"),
        ("sklearn, xanesd's algorithm", g("sk_{key}_rfe_same_s"), g("eval_{key}_sklearn_same_rmse"),
         f"{x(g('sk_{key}_rfe_same_s'), g('cxx_{key}_rfe_s'))} xanesd RFE's time; "
         f"{int(g('sk_{key}_same_overlap') or 0)}/16 energies as xanesd"),
    ]
    print(f"  {'':38} {'time':>10}  {'fraction RMSE':>13}  {'/ full grid':>11}")
    for name, t, e, note in rows:
        rel = "—" if e is None or not full else f"{e / full:.2f}×"
        print(f"  {name:38} {ms(t):>10}  {'—' if e is None else f'{e:.4f}':>13}  {rel:>11}  {note}")
    print(f"  {'full grid (75 energies)':38} {'':>10}  {'—' if full is None else f'{full:.4f}':>13}")
EOF
exit 0
