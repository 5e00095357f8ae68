#!/usr/bin/python3
"""scikit-learn side of the segmentation benchmark (bench/run_segment_benchmark.sh).

Reads what bench_segment --out DIR wrote for each image size N (DIR/segN_features.npy: the
features xanesd's segmenter clustered; segN_truth.npy: each row's truth domain;
segN_xanesd_labels.npy: xanesd kmeans() labels on the same rows; segN_meta.json: k, seed) and
runs, on the same features, KMeans(n_clusters=k, n_init=3, init='k-means++', algorithm='lloyd')
and MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=...), best of --repeats after one
warm-up. KMeans runs with its default OpenMP threads (all cores) and limited to one thread
(xanesd's kmeans() is single-threaded). Prints times, inertia (Σ squared distance to the own
cluster mean, computed the same way for every labeling) and adjusted Rand indices
(sklearn.metrics.adjusted_rand_score) between xanesd, each scikit-learn result and the truth.
Machine-readable results are the lines "RESULT key=value".
"""
import argparse
import glob
import json
import os
import time

import numpy as np
import sklearn
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits


def best_of(repeats, fit):
    fit()  # warm-up
    best, model = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = fit()
        best = min(best, time.perf_counter() - t0)
    return best, model


def inertia(F, labels):
    total = 0.0
    for c in np.unique(labels):
        X = F[labels == c]
        total += float(((X - X.mean(axis=0)) ** 2).sum())
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()
    print(f"== scikit-learn {sklearn.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs; best of {args.repeats}")
    metas = sorted(glob.glob(os.path.join(args.dir, "seg*_meta.json")), key=lambda p: (json.load(open(p))["size"], -json.load(open(p))["counts"]))
    for path in metas:
        meta = json.load(open(path))
        key = meta["key"]
        base = os.path.join(args.dir, key)
        F = np.ascontiguousarray(np.load(base + "_features.npy"))
        truth = np.load(base + "_truth.npy")[:, 0].astype(int)
        xl = np.load(base + "_xanesd_labels.npy")[:, 0].astype(int)
        sl = np.load(base + "_segmenter_labels.npy")[:, 0].astype(int)
        k, seed = int(meta["k"]), int(meta["seed"])
        print(f"\n== {meta['size']}×{meta['size']}, {meta['counts']:g} counts: {F.shape[0]} × {F.shape[1]} features, k = {k}")

        def km():
            return KMeans(n_clusters=k, n_init=3, init="k-means++", algorithm="lloyd", random_state=seed).fit(F)

        def mbk():
            return MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=args.batch_size, random_state=seed).fit(F)

        t_km, m_km = best_of(args.repeats, km)
        with threadpool_limits(limits=1):
            t_km1, _ = best_of(args.repeats, km)
        t_mbk, m_mbk = best_of(args.repeats, mbk)
        with threadpool_limits(limits=1):
            t_mbk1, _ = best_of(args.repeats, mbk)
        lk, lm = m_km.labels_, m_mbk.predict(F)
        rows = [("xanesd kmeans", xl), ("sklearn KMeans", lk), ("sklearn MiniBatchKMeans", lm)]
        print(f"  KMeans(lloyd, n_init=3):            {t_km:.4f} s ({os.cpu_count()} threads), {t_km1:.4f} s (1 thread), "
              f"{m_km.n_iter_} iterations")
        print(f"  MiniBatchKMeans(n_init=3, b={args.batch_size}):  {t_mbk:.4f} s ({os.cpu_count()} threads), "
              f"{t_mbk1:.4f} s (1 thread)")
        for name, lab in rows:
            print(f"  {name:24} inertia {inertia(F, lab):.6g}; ARI vs truth {adjusted_rand_score(truth, lab):.4f}")
        a_k = adjusted_rand_score(xl, lk)
        a_m = adjusted_rand_score(xl, lm)
        a_km = adjusted_rand_score(lk, lm)
        print(f"  ARI xanesd vs KMeans {a_k:.4f}, xanesd vs MiniBatchKMeans {a_m:.4f}, KMeans vs MiniBatchKMeans {a_km:.4f}")
        print(f"  ARI segmenter's labels vs truth {adjusted_rand_score(truth, sl):.4f}")
        res = {
            "kmeans_s": t_km, "kmeans1_s": t_km1, "mbk_s": t_mbk, "mbk1_s": t_mbk1,
            "ari_xanesd_kmeans": a_k, "ari_xanesd_mbk": a_m, "ari_kmeans_mbk": a_km,
            "ari_truth_xanesd": adjusted_rand_score(truth, xl), "ari_truth_kmeans": adjusted_rand_score(truth, lk),
            "ari_truth_mbk": adjusted_rand_score(truth, lm), "ari_truth_segmenter": adjusted_rand_score(truth, sl),
            "inertia_xanesd": inertia(F, xl), "inertia_kmeans": inertia(F, lk), "inertia_mbk": inertia(F, lm),
        }
        for name, v in res.items():
            print(f"RESULT sk_{key}_{name}={v:.10g}")


if __name__ == "__main__":
    main()
