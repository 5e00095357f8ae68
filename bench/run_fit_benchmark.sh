#!/usr/bin/env bash
# Full-stack LCF fit benchmark: xanesd (build/bench/bench_fit) against the PyXAS way in numpy and
# scipy's nnls (bench/pyxas_baseline.py), on the same machine and the same data. A benchmark, not
# a test: it always exits 0 and prints whether each target of the issue is met. See bench/README.md.
#
#   bench/run_fit_benchmark.sh [bench_fit options] [-- pyxas_baseline.py options]
#   e.g. bench/run_fit_benchmark.sh                  # the issue's 2048×2048 × 100, 3 references
#        bench/run_fit_benchmark.sh --size 1024 -- --pyxas-repeats 1
#
# Environment: XANESD_BUILD_DIR (default <repo>/build), XANESD_PYTHON (default /usr/bin/python3,
# Debian's, with numpy and scipy), XANESD_SKIP_BUILD=1 to use the existing binary,
# XANESD_BENCH_OUT=DIR to keep the raw outputs there (default: a temporary directory, removed).
set -u
NAME=run_fit_benchmark
TARGET=bench_fit
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CXX_ARGS=()
PY_ARGS=()
seen_sep=0
for a in "$@"; do
  if [ "$seen_sep" = 0 ] && [ "$a" = "--" ]; then seen_sep=1; continue; fi
  if [ "$seen_sep" = 0 ]; then CXX_ARGS+=("$a"); else PY_ARGS+=("$a"); fi
done

bench_build
bench_python_needs "numpy, scipy"
bench_out_dir

# CPU time the rest of the machine used while a step ran: busy time from /proc/stat minus the
# CPU time of our own children (bash `times`).
TICK_MS=$((1000 / $(getconf CLK_TCK)))
NCPU=$(nproc)
machine_busy_ms() {
  local a
  read -r -a a < <(grep '^cpu ' /proc/stat)
  echo $(( (a[1] + a[2] + a[3] + a[6] + a[7]) * TICK_MS ))
}
# CPU time of this shell's finished children, in ms, into CHILD_MS (`times` must run in this
# shell, not in a command substitution's subshell).
children_ms() {
  times > "$OUT/.times"
  CHILD_MS=$(tail -n 1 "$OUT/.times" | awk '{ t = 0; for (i = 1; i <= 2; ++i) { split($i, p, "m"); t += p[1] * 60000 + p[2] * 1000 }; printf "%d\n", t }')
}
step_begin() { S_BUSY=$(machine_busy_ms); children_ms; S_CHILD=$CHILD_MS; S_T=$(date +%s%N); }
step_end() {  # step_end NAME FILE KEY: prints the line, appends it and a RESULT line to FILE (no pipe: `times` needs this shell)
  local busy child wall msg
  busy=$(( $(machine_busy_ms) - S_BUSY )); children_ms; child=$(( CHILD_MS - S_CHILD )); wall=$(( ($(date +%s%N) - S_T) / 1000000 ))
  msg=$(awk -v o=$((busy - child)) -v w="$wall" -v n="$NCPU" -v name="$1" 'BEGIN {
    if (o < 0) o = 0
    share = (w > 0) ? o / (w * n) : 0
    printf("== other work on the machine during %s: %.1f CPU-s over %.0f s (%.0f%% of %d CPUs)%s\n", name, o / 1000,
           w / 1000, 100 * share, n, (share > 0.05) ? "  <- figures skewed: rerun on a quiet machine" : "") }')
  echo "$msg"
  echo "$msg" >> "$2"
  awk -v o=$((busy - child)) -v w="$wall" -v n="$NCPU" -v key="$3" \
    'BEGIN { if (o < 0) o = 0; printf("RESULT other_work_share_%s=%.4f\n", key, (w > 0) ? o / (w * n) : 0) }' >> "$2"
}

echo "== command: $0 $*"
bench_machine_line before
echo
echo "== xanesd: $BIN ${CXX_ARGS[*]:-}"
step_begin
"$BIN" "${CXX_ARGS[@]}" --write-design "$OUT/design.json" | tee "$OUT/xanesd.txt"
step_end "the xanesd run" "$OUT/xanesd.txt" xanesd
echo
echo "== numpy/scipy: $PY $ROOT/bench/pyxas_baseline.py ${PY_ARGS[*]:-}"
step_begin
"$PY" "$ROOT/bench/pyxas_baseline.py" --design "$OUT/design.json" "${PY_ARGS[@]}" | tee "$OUT/numpy.txt"
step_end "the numpy/scipy run" "$OUT/numpy.txt" numpy
echo
bench_machine_line after

"$PY" - "$ROOT/bench" "$OUT/xanesd.txt" "$OUT/numpy.txt" <<'EOF'
import sys

sys.path.insert(0, sys.argv.pop(1))  # bench/, for bench_results
from bench_results import read_results  # noqa: E402

r = read_results(sys.argv[1:])


def g(k):
    return r.get(k)


def fmt_s(v):
    return "—" if v is None else (f"{v:.3f} s" if v >= 0.1 else f"{v * 1e3:.1f} ms")


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_x(v):
    return "—" if v is None else f"{v:.1f}×"


rows, targets = [], []
n = int(g("size") or 0)
E = int(g("energies") or 0)
T = int(g("threads") or 0)
print(f"\n== summary: {n}×{n} px × {E} energies float32, 3 references + linear background, xanesd on {T} threads")
read, copy = g("read_s"), g("copy_s")
ls, nn = g("xanesd_ls_total_s"), g("xanesd_nnls_total_s")
pyx, lean = g("pyxas_s"), g("lean_s")
rows += [
    ("read pass over the stack (floor)", fmt_s(read), f"{T} threads; 1 thread {fmt_s(g('read_1t_s'))}"),
    ("copy of the stack", fmt_s(copy), f"1 thread {fmt_s(g('copy_1t_s'))}"),
    ("xanesd LS: construct + fit_stack", fmt_s(ls),
     f"construct {fmt_s(g('xanesd_ls_construct_s'))}, fit_stack {fmt_s(g('xanesd_ls_fit_stack_s'))}; "
     f"1 thread {fmt_s(g('xanesd_ls_1t_total_s'))}"),
    ("xanesd NNLS: construct + fit_stack", fmt_s(nn),
     f"construct {fmt_s(g('xanesd_nnls_construct_s'))}, fit_stack {fmt_s(g('xanesd_nnls_fit_stack_s'))}"),
    ("PyXAS way (numpy float64)", fmt_s(pyx), "normal equations + fitted spectra, residuals, offsets, σ"),
    ("lean numpy float32", fmt_s(lean), "pinv matmul + residual from norms"),
]
w = max(len(a) for a, _, _ in rows)
for a, b, c in rows:
    print(f"  {a:<{w}}  {b:>10}   {c}")

print()
x_pyx = ratio(pyx, ls)
x_pyx_nn = ratio(pyx, nn)
x_lean = ratio(lean, ls)
x_read = ratio(ls, read)
x_read_fit = ratio(g("xanesd_ls_fit_stack_s"), read)
x_read_nn = ratio(nn, read)
nn_x = ratio(g("xanesd_nnls_rate"), g("scipy_nnls_rate"))
nn_x1 = ratio(g("xanesd_nnls_rate_1t"), g("scipy_nnls_rate"))


def target(name, value, ok, goal):
    status = "—" if value is None else ("MET" if ok else "NOT MET")
    print(f"  {name:<52} {fmt_x(value):>8}   target {goal:<8} {status}")


print("  ratios")
target("PyXAS way / xanesd LS (speed-up)", x_pyx, x_pyx is not None and x_pyx >= 20, "≥ 20×")
target("PyXAS way / xanesd NNLS (speed-up)", x_pyx_nn, x_pyx_nn is not None and x_pyx_nn >= 20, "≥ 20×")
print(f"  {'lean numpy float32 / xanesd LS (speed-up)':<52} {fmt_x(x_lean):>8}")
target("xanesd LS (construct + fit) / read pass", x_read, x_read is not None and x_read <= 3, "≤ 3×")
target("xanesd NNLS (construct + fit) / read pass", x_read_nn, x_read_nn is not None and x_read_nn <= 3, "≤ 3×")
print(f"  {'xanesd LS fit_stack alone / read pass':<52} {fmt_x(x_read_fit):>8}")

print("\n  per-frame incremental update (one frame, every pixel; NNLS model)")
fa, fs, fs1 = g("frame_add_ms"), g("frame_solve_ms"), g("frame_solve_1t_ms")
if fa is not None:
    print(f"    add(p, e, y) loop                 {fa:8.1f} ms/frame ({fa * 1e6 / max(n * n, 1):.1f} ns/pixel; "
          f"first frame of a scan {g('frame_first_add_ms'):.1f} ms)")
    print(f"    solve_changed after the frame     {fs:8.1f} ms on {T} threads, {fs1:.1f} ms on 1 "
          f"({int(g('frame_solve_energies'))} energies measured)")

print("\n  NNLS spectra/s, 6 references, sparse truths "
      f"({100 * (g('nnls_active_set_share') or 0):.1f} % of pixels need the active set)")
if g("xanesd_nnls_rate") is not None:
    print(f"    xanesd fit_stack                  {g('xanesd_nnls_rate'):12.4g} /s on {T} threads, "
          f"{g('xanesd_nnls_rate_1t'):.4g} /s on 1")
if g("scipy_nnls_rate") is not None:
    print(f"    scipy nnls loop (1 thread)        {g('scipy_nnls_rate'):12.4g} /s "
          f"(split-background form {g('scipy_nnls_split_rate'):.4g} /s)")
    print(f"    xanesd / scipy                    {fmt_x(nn_x):>12} ({fmt_x(nn_x1)} per thread)")

# Same data on both sides: the mean fitted fractions must agree.
print("\n  same data on both sides (mean fitted fractions)")
for label, a, b, K in (("xanesd LS vs PyXAS way", "xanesd_ls", "pyxas", 3), ("xanesd LS vs lean numpy", "xanesd_ls", "lean", 3),
                       ("xanesd NNLS vs scipy nnls", "nnls_check", "scipy_nnls", 6)):
    d = [abs(r[f"{a}_mean_fraction_{k}"] - r[f"{b}_mean_fraction_{k}"]) for k in range(K)
         if f"{a}_mean_fraction_{k}" in r and f"{b}_mean_fraction_{k}" in r]
    if len(d) == K:
        print(f"    {label:<28} max |Δ mean fraction| {max(d):.1e}  {'ok' if max(d) < 1e-4 else 'MISMATCH'}")
    else:
        print(f"    {label:<28} (not run)")
if g("main_ls_fraction_rmse") is not None:
    print(f"    xanesd LS fraction RMSE against the true fractions: {g('main_ls_fraction_rmse'):.4f}")
if g("python_peak_rss_gb") is not None or g("xanesd_peak_rss_gb") is not None:
    print(f"    peak RSS: xanesd side {g('xanesd_peak_rss_gb') or 0:.1f} GB, numpy side {g('python_peak_rss_gb') or 0:.1f} GB")
ox, on = g("other_work_share_xanesd"), g("other_work_share_numpy")
if ox is not None and on is not None:
    quiet = max(ox, on) <= 0.05
    print(f"\n  other work on the machine: {100 * ox:.0f}% of the CPUs during the xanesd run, {100 * on:.0f}% during the "
          f"numpy run: {'quiet enough' if quiet else 'SKEWED, rerun on a quiet machine'}")
EOF
exit 0
