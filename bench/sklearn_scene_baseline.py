#!/usr/bin/python3
"""scikit-learn side of the scene segmentation benchmarks (bench/run_segment_benchmark.sh,
bench/run_accuracy_benchmark.sh).

Reads what `bench_segment --only scene --out DIR` or `bench_accuracy --out DIR` wrote per scene
(bench/scene_features.hpp; DIR/scene_*_*.npy: the
features xanesd's segmenter clustered, one row per pixel it labelled, `_rows` their pixel
indices, `_truth` the dominant-species map (0 = no material), `_stripe` the one-pixel stripe,
`_segmenter_labels` xanesd's labels of every pixel) and runs KMeans(n_clusters = the true number
of species, n_init=10, k-means++) on the same features. Pixels the segmenter did not cluster (no
material by its mask) keep label 0 on both sides, so both are scored on the same pixels:
adjusted Rand index against the truth over the truth's material pixels. Machine-readable
results are the lines "RESULT key=value".
"""
import argparse
import glob
import json
import os

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--n-init", type=int, default=10)
    args = ap.parse_args()
    metas = sorted(glob.glob(os.path.join(args.dir, "scene_*_scene.json")))
    if not metas:
        return
    print(f"== scene: scikit-learn KMeans(n_clusters=true k, n_init={args.n_init}) on xanesd's features")
    print(f"  {'counts':>7} {'seed':>5}  {'xanesd auto k':>13} {'ARI':>7}  {'sklearn KMeans(k)':>17}")
    for path in metas:
        meta = json.load(open(path))
        key = meta["key"]
        base = os.path.join(args.dir, key)
        F = np.load(base + "_features.npy")
        rows = np.load(base + "_rows.npy")[:, 0].astype(int)
        truth = np.load(base + "_truth.npy")[:, 0].astype(int)
        seg = np.load(base + "_segmenter_labels.npy")[:, 0].astype(int)
        k = int(meta["k_true"])
        km = KMeans(n_clusters=k, n_init=args.n_init, init="k-means++", random_state=int(meta["kmeans_seed"])).fit(F)
        lab = np.zeros_like(truth)
        lab[rows] = km.labels_ + 1
        m = truth > 0
        a_sk = adjusted_rand_score(truth[m], lab[m])
        a_x = adjusted_rand_score(truth[m], seg[m])
        print(f"  {meta['counts']:>7} {meta['seed']:>5}  {meta['k_auto']:>13} {a_x:>7.4f}  {a_sk:>17.4f}")
        print(f"RESULT sk_{key}_ari_kmeans={a_sk:.10g}")


if __name__ == "__main__":
    main()
