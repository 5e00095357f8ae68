#!/usr/bin/env bash
# Segmentation benchmark: xanesd's k-means (build/bench/bench_segment) against scikit-learn's
# KMeans and MiniBatchKMeans (bench/sklearn_kmeans_baseline.py) on the SAME features (the ones
# xanesd's online segmenter clustered, written by bench_segment as .npy): time ratios and
# adjusted Rand indices; then whether one segmentation update keeps up with a 2048² scan.
# A benchmark, not a test: it always exits 0. See bench/README.md.
#
#   bench/run_segment_benchmark.sh [--repeats N] [--sizes 256,1024] [--only features|keepup|scene] [-- bench_segment options]
#
# Environment: XANESD_BUILD_DIR (default <repo>/build), XANESD_PYTHON (default /usr/bin/python3,
# Debian's, with numpy and scikit-learn), XANESD_SKIP_BUILD=1 to use the existing binary,
# XANESD_BENCH_OUT=DIR to keep the features and outputs there (default: a temporary directory).
set -u
NAME=run_segment_benchmark
TARGET=bench_segment
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REPEATS=3
ARGS=()
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) REPEATS="$2"; shift 2 ;;
    --sizes) ARGS+=(--sizes "$2"); shift 2 ;;
    --only) ONLY="$2"; ARGS+=(--only "$2"); shift 2 ;;
    --) shift; ARGS+=("$@"); break ;;
    *) echo "run_segment_benchmark: unknown option '$1' (--repeats N, --sizes A,B, --only features|keepup, -- bench_segment options)"; exit 0 ;;
  esac
done

bench_build
bench_python_needs "numpy, sklearn, threadpoolctl"
bench_out_dir

bench_machine_line before
"$BIN" --out "$OUT" --repeats "$REPEATS" "${ARGS[@]}" | tee "$OUT/xanesd.txt" || { echo "run_segment_benchmark: bench_segment failed"; exit 0; }
: > "$OUT/sklearn.txt"
if [ "$ONLY" != keepup ] && [ "$ONLY" != scene ]; then
  echo
  "$PY" "$ROOT/bench/sklearn_kmeans_baseline.py" "$OUT" --repeats "$REPEATS" | tee "$OUT/sklearn.txt" || { echo "run_segment_benchmark: the scikit-learn side failed"; exit 0; }
fi
if [ "$ONLY" != keepup ] && [ "$ONLY" != features ]; then
  echo
  # The realistic scenes: scikit-learn KMeans told the true k on the same features.
  "$PY" "$ROOT/bench/sklearn_scene_baseline.py" "$OUT" | tee -a "$OUT/sklearn.txt" || echo "run_segment_benchmark: the scikit-learn scene side failed"
fi
echo
bench_machine_line after

"$PY" - "$ROOT/bench" "$OUT/xanesd.txt" "$OUT/sklearn.txt" <<'EOF'
import re
import sys

sys.path.insert(0, sys.argv.pop(1))  # bench/, for bench_results
from bench_results import read_results  # noqa: E402

r = read_results(sys.argv[1:])


def s(v):
    return "—" if v is None else (f"{v:.3f} s" if v >= 0.1 else f"{v * 1e3:.1f} ms")


def x(a, b):
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


keys = [m.group(1) for k in r for m in [re.match(r"cxx_(seg\w+)_kmeans_s$", k)] if m]
for key in keys:
    n, _, c = key[3:].partition("c")
    g = lambda k: r.get(k.format(key=key))
    print(f"\n== summary, {n}×{n} scan, {c or 2000} counts: {int(g('cxx_{key}_n') or 0)} × {int(g('cxx_{key}_d') or 0)} features "
          f"(the segmenter's own), k = {int(g('cxx_{key}_k') or 0)}, n_init = 3, best of runs")
    cx = g("cxx_{key}_kmeans_s")
    print(f"  {'':36} {'time':>10}  {'its time / xanesd':>17}  {'ARI vs xanesd':>13}  {'ARI vs truth':>12}")
    print(f"  {'xanesd kmeans() (1 thread)':36} {s(cx):>10}  {'':>17}  {'':>13}  {g('sk_{key}_ari_truth_xanesd') or 0:>12.4f}")
    for name, t, a, at in [
        ("sklearn KMeans lloyd (all cores)", "sk_{key}_kmeans_s", "sk_{key}_ari_xanesd_kmeans", "sk_{key}_ari_truth_kmeans"),
        ("sklearn KMeans lloyd (1 thread)", "sk_{key}_kmeans1_s", "sk_{key}_ari_xanesd_kmeans", "sk_{key}_ari_truth_kmeans"),
        ("sklearn MiniBatchKMeans (all cores)", "sk_{key}_mbk_s", "sk_{key}_ari_xanesd_mbk", "sk_{key}_ari_truth_mbk"),
        ("sklearn MiniBatchKMeans (1 thread)", "sk_{key}_mbk1_s", "sk_{key}_ari_xanesd_mbk", "sk_{key}_ari_truth_mbk"),
    ]:
        av, atv = g(a), g(at)
        print(f"  {name:36} {s(g(t)):>10}  {x(g(t), cx):>17}  {'—' if av is None else f'{av:.4f}':>13}  "
              f"{'—' if atv is None else f'{atv:.4f}':>12}")
    ix, ik = g("sk_{key}_inertia_xanesd"), g("sk_{key}_inertia_kmeans")
    if ix and ik:
        print(f"  inertia xanesd / KMeans {ix / ik:.6f}; whole segmentation update (Scan::update_segments, sample = all) "
              f"{s(g('cxx_{key}_update_s'))}; segmenter's labels vs truth ARI {g('sk_{key}_ari_truth_segmenter') or 0:.4f}")

energies = sorted({int(m.group(1)) for k in r for m in [re.match(r"keep_(\d+)_count_pass_s$", k)] if m})
# 2048² ingest with the fit and segmentation running, README "Benchmarks" (bench_ingest, this machine): 3.5–5.5 frames/s.
lo, hi = 3.5, 5.5
for e in energies:
    samples = sorted({int(m.group(1)) for k in r for m in [re.match(rf"keep_{e}_(\d+)_warm_s$", k)] if m})
    N = int(r.get("keep_size", 0))
    print(f"\n== summary, keep-up at {N}×{N}, {e} energies, one OnlineSegmenter::update (warm, best of runs) "
          f"against xanesd's 2048² ingest of {lo}–{hi} frames/s")
    print(f"  {'segment.sample':>14} {'update':>9} {'updates/s':>10} {'frames per update':>18} {'k':>3} {'ARI vs truth':>12}")
    for smp in samples:
        w = r.get(f"keep_{e}_{smp}_warm_s")
        print(f"  {smp:>14} {s(w):>9} {1 / w:>10.2f} {f'{lo * w:.1f}–{hi * w:.1f}':>18} {int(r.get(f'keep_{e}_{smp}_k', 0)):>3} "
              f"{r.get(f'keep_{e}_{smp}_ari', 0):>12.4f}")
    if len(samples) >= 2:
        a, b = samples[0], samples[-1]
        ta, tb = r[f"keep_{e}_{a}_warm_s"], r[f"keep_{e}_{b}_warm_s"]
        slope = (tb - ta) / (b - a)
        fixed = ta - slope * a
        print(f"  split (linear in segment.sample): {s(fixed)} per update does not depend on the sample (measured-energy pass "
              f"{s(r.get(f'keep_{e}_count_pass_s'))}, labelling every pixel, cluster fits); {slope * 1e6:.2f} µs per sampled pixel "
              f"(sampling, PCA, k-means for each k tried) = {s(slope * 20000)} at the default 20000")
EOF
exit 0
