#!/usr/bin/env bash
# Accuracy and model-choice benchmark (issues 10 part 4 and 11 part 5): build/bench/bench_accuracy
# runs xanesd's own Scan on simulated scenes with the per-pixel baselines in the same run (per-pixel
# NNLS told the true references, Gaussian blur + NNLS at the best σ, the Poisson-weighted oracle,
# per-pixel NNLS and LASSO over the whole library, 16 evenly spaced energies);
# bench/sklearn_scene_baseline.py runs scikit-learn's KMeans(true k) on the features xanesd's
# segmenter clustered. Prints the Markdown tables of bench/README.md. A benchmark, not a test: it
# always exits 0.
#
#   bench/run_accuracy_benchmark.sh [bench_accuracy options, e.g. --counts 500 --random 8 --set KEY=VALUE]
#
# Environment: XANESD_BUILD_DIR (default <repo>/build), XANESD_PYTHON (default /usr/bin/python3,
# Debian's, with numpy and scikit-learn), XANESD_SKIP_BUILD=1 to use the existing binary,
# XANESD_BENCH_OUT=DIR to keep the features and outputs there (default: a temporary directory).
set -u
NAME=run_accuracy_benchmark
TARGET=bench_accuracy
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bench_build
bench_python_needs "numpy, sklearn"
bench_out_dir

bench_machine_line before
"$BIN" --out "$OUT" "$@" | tee "$OUT/xanesd.txt" || { echo "$NAME: bench_accuracy failed"; exit 0; }
echo
"$PY" "$ROOT/bench/sklearn_scene_baseline.py" "$OUT" | tee "$OUT/sklearn.txt" || echo "$NAME: the scikit-learn side failed"
echo
bench_machine_line after

"$PY" - "$ROOT/bench" "$OUT/xanesd.txt" "$OUT/sklearn.txt" <<'PYEOF'
import re
import sys

sys.path.insert(0, sys.argv.pop(1))  # bench/, for bench_results
from bench_results import read_results  # noqa: E402

r = read_results(sys.argv[1:])

scenes = []  # (scene, S) in run order
for k in r:
    m = re.match(r"acc_(\w+?)_c(\d+)_nnls_true_rmse$", k)
    if m:
        scenes.append((m.group(1), int(m.group(2))))
names = {}
with open(sys.argv[1]) as f:
    for line in f:
        m = re.match(r"== scene (\w+): (\S+), seed", line)
        if m:
            names[m.group(1)] = m.group(2).replace("+", ", ")

rows = [("nnls_true", "per-pixel NNLS, told the true refs"), ("blur", "Gaussian blur (best σ) + per-pixel NNLS, true refs"),
        ("oracle", "Poisson-weighted oracle (true model and variances)"), ("default", "**xanesd default** (11 refs, selection)"),
        ("poisson", "xanesd `fit.weighting=poisson`"), ("nnls_all", "per-pixel NNLS, all 11 refs"),
        ("lasso_all", "per-pixel positive LASSO (`fit.method=lasso`), all 11 refs")]


def ratio(a, b):
    return "—" if a is None or not b else f"{a / b:.2f}×"


def t(v):
    return "—" if v is None else (f"{v:.2f} s" if v >= 0.1 else f"{v * 1e3:.0f} ms")


if scenes:
    print("\n== summary: fraction RMSE of the true species (ratio to per-pixel NNLS told the true refs); z = std((est − truth)/σ)")
    print("\n| scene | S | method | fraction RMSE | edge ±2 px | one-px stripe | z spread | time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for sc, S in scenes:
        p = f"acc_{sc}_c{S}_"
        g = lambda row, m: r.get(p + row + "_" + m)
        base = {m: g("nnls_true", m) for m in ("rmse", "edge", "stripe")}
        for row, label in rows:
            if g(row, "rmse") is None:
                continue
            if row == "blur":
                label = label.replace("best σ", f"σ = {r.get(p + 'blur_sigma', 0):.1f} px")
            if row == "default":
                label += ", true set " + ("selected" if r.get(p + "default_true_set") else "**not** selected")
            cells = []
            for m in ("rmse", "edge", "stripe"):
                v = g(row, m)
                cells.append(f"{v:.4f}" + ("" if row == "nnls_true" else f" ({ratio(v, base[m])})"))
            print(f"| {sc} | {S} | {label} | {' | '.join(cells)} | {g(row, 'z'):.2f} | {t(g(row, 's'))} |")
    print("\nscenes: " + "; ".join(f"{k}: {v}" for k, v in names.items()))

    print("\n== summary: model choice (domains: ARI against the dominant-species map over material pixels; energies: refit "
          "fraction RMSE / the full grid's, at the full grid's per-point dwell; at its total beam time)")
    print("\n| scene | S | true set selected | xanesd automatic k: k, ARI | scikit-learn KMeans(true k) ARI, same features | "
          "select_energies / full | 16 evenly spaced / full |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for sc, S in scenes:
        p, s, e = f"acc_{sc}_c{S}_", f"scene_{sc}_c{S}", f"en_{sc}_c{S}_"
        sk = r.get(f"sk_{s}_ari_kmeans")
        full = r.get(e + "full")
        en = lambda a: "—" if full is None else f"{r[e + a] / full:.2f}× ; {r[e + a + '_time'] / full:.2f}×"
        print(f"| {sc} | {S} | {'yes' if r.get(p + 'default_true_set') else '**no**'} | "
              f"{int(r.get('seg_' + s + '_k', 0))} (true {int(r.get('seg_' + s + '_k_true', 0))}), {r.get('seg_' + s + '_ari', 0):.3f} | "
              f"{'—' if sk is None else f'{sk:.3f}'} | {en('select')} ({int(r.get(e + 'n', 0))} energies) | {en('even')} |")

for S in sorted({int(m.group(1)) for k in r for m in [re.match(r"rnd_c(\d+)_share$", k)] if m}, reverse=True):
    k = f"rnd_c{S}_"
    print(f"\nrandom 3–5-species scenes, S = {S}: true set selected in {r[k + 'share'] * 100:.0f} % of {int(r[k + 'n'])}; "
          f"xanesd default RMSE / told the true refs: median {r[k + 'ratio_median']:.2f}×, worst {r[k + 'ratio_worst']:.2f}×")
PYEOF
exit 0
