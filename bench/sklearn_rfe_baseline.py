#!/usr/bin/python3
"""scikit-learn's RFE on the mixtures bench_select wrote, for bench/run_select_benchmark.sh.

Run with Debian's /usr/bin/python3 (numpy, scikit-learn). For each library L in DIR (the files
bench_select --out DIR writes: L_train_spectra.npy, L_train_fractions.npy, L_meta.json), times,
best of --repeats after one warm-up, the fit of

  sklearn      RFE(LinearRegression(), n_features_to_select=13) on the raw spectra at the
               candidate energies (the grid minus the 3 normalization points, which both sides
               always keep), targets the fractions: the usual scikit-learn recipe;
  sklearn_same the algorithm xanesd's rfe_select implements, in scikit-learn: standardized
               features (StandardScaler first) and importance Σ_k |coef_k| (an
               importance_getter; RFE squares it, which keeps the ranking). Its choice should be
               xanesd's exactly. (Plain RFE ranks multi-output coefficients by Σ_k coef_k², not
               Σ_k |coef_k|, so on standardized features it differs from xanesd in a few energies.)

Writes DIR/sklearn_indices.json ({"L": {"sklearn": [...], "sklearn_same": [...]}}, grid indices
with the normalization points) for bench_select --evaluate, which scores them with the same NNLS
LCF evaluator as xanesd's own choices. Prints "RESULT key=value" lines.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import sklearn
from sklearn.feature_selection import RFE
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler


def best_of(repeats, f):
    f()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="directory bench_select --out wrote")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"== scikit-learn {sklearn.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}; "
          f"OMP/BLAS threads: {os.environ.get('OMP_NUM_THREADS', 'default')}")
    chosen = {}
    for key in ("11", "65"):
        meta_path = os.path.join(a.dir, f"{key}_meta.json")
        if not os.path.exists(meta_path):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        X = np.load(os.path.join(a.dir, f"{key}_train_spectra.npy"))
        Y = np.load(os.path.join(a.dir, f"{key}_train_fractions.npy"))
        cand = np.array(meta["candidates"])
        norm = meta["normalization"]
        n_select = meta["n_select"]
        Xc = X[:, cand]

        def rfe_raw():
            return RFE(LinearRegression(), n_features_to_select=n_select).fit(Xc, Y).support_

        def rfe_same():
            Z = StandardScaler().fit_transform(Xc)
            l1 = lambda est: np.abs(est.coef_).sum(axis=0)
            return RFE(LinearRegression(), n_features_to_select=n_select, importance_getter=l1).fit(Z, Y).support_

        t_raw, sup_raw = best_of(a.repeats, rfe_raw)
        t_same, sup_same = best_of(a.repeats, rfe_same)
        pick = lambda sup: sorted(int(i) for i in list(cand[sup]) + norm)
        chosen[key] = {"sklearn": pick(sup_raw), "sklearn_same": pick(sup_same)}
        same = chosen[key]["sklearn_same"] == meta["cxx_rfe"]
        overlap = len(set(chosen[key]["sklearn_same"]) & set(meta["cxx_rfe"]))
        grid = meta["grid_eV"]
        print(f"\n{key} references: {X.shape[0]} mixtures × {len(cand)} candidate energies, {Y.shape[1]} targets")
        print(f"  sklearn RFE(LinearRegression()), raw features   {t_raw * 1e3:8.1f} ms")
        print("    " + " ".join(f"{grid[j]:.1f}" for j in chosen[key]["sklearn"]))
        print(f"  xanesd's algorithm (standardized, Σ|coef|)      {t_same * 1e3:8.1f} ms   "
              f"{'same 16 energies as xanesd' if same else f'{overlap} of 16 energies as xanesd'}")
        print(f"RESULT sk_{key}_rfe_s={t_raw:.6g}")
        print(f"RESULT sk_{key}_rfe_same_s={t_same:.6g}")
        print(f"RESULT sk_{key}_same_overlap={overlap}")
    with open(os.path.join(a.dir, "sklearn_indices.json"), "w") as f:
        json.dump(chosen, f)


if __name__ == "__main__":
    main()
