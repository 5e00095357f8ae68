#!/usr/bin/python3
"""The same full-stack LCF fit the PyXAS way, for bench/run_fit_benchmark.sh (see bench/README.md).

Run with Debian's /usr/bin/python3 (numpy, scipy). Re-creates, in numpy, the stack that
build/bench/bench_fit generates (same closed formulas, same counter-based noise), from the design
file bench_fit writes with --write-design (energies, design matrices, generation constants), then
times, best of --repeats:

  pyxas  PyXAS's non-iterative 2D fit (pyxas fit_2D_xanes_non_iter): float64 normal equations on
         the whole stack, X = (AᵀA)⁻¹·(Aᵀ·Y) with Y reshaped E×P, then the fitted spectra A·X, the
         residuals Y − A·X and their cost, the offset (background-only) images, and the
         coefficient standard errors, as PyXAS returns them; from those, thickness = Σ reference
         coefficients, fractions = coefficient / thickness, residual = RMS misfit.
  lean   a stronger numpy baseline: one float32 matmul with pinv(A) for the coefficients, the
         residual from norms (χ² = yᵀy − θᵀGθ), thickness and fractions; no E×P float64
         intermediates.
  nnls   scipy.optimize.nnls looped over the first --nnls-pixels spectra of bench_fit's
         6-reference set (background eliminated by projection, which is exactly the joint fit with
         a free background; the split-variable form [1, −1, x, −x, refs] is timed too).

A is the design matrix xanesd builds: columns 1, (E − E0)/100 and the references resampled onto
the energies. Prints "RESULT key=value" lines.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import scipy
from scipy.optimize import nnls

def splitmix64(x):
    """splitmix64 of a uint64 array (wrapping arithmetic, as bench_fit.cpp)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def noise_pattern(n, seed, chunk=1 << 22):
    """Standard normal pattern: Box–Muller on two counter-based uniforms per value."""
    z = np.empty(n)
    for b in range(0, n, chunk):
        i = np.arange(b, min(n, b + chunk), dtype=np.uint64)
        with np.errstate(over="ignore"):
            k = np.uint64(seed) + np.uint64(2) * i
        u1 = 1.0 - (splitmix64(k) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        u2 = (splitmix64(k + np.uint64(1)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        z[b:b + len(i)] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z


def make_main_stack(d):
    """The 2048×2048 × E stack of bench_fit.cpp (make_main_stack), float32, shape (E, P)."""
    g = d["generation"]
    N = g["size"]
    P = N * N
    E = len(d["energies_eV"])
    R = np.asarray(d["main"]["X"])[:, 2:]
    K = R.shape[1]
    z = noise_pattern(P, g["seed_main"])
    col = (np.arange(N) + 0.5) / N
    x = np.tile(col, N)          # p = r·N + c: x from the column
    y = np.repeat(col, N)        # y from the row
    tau = 2 * np.pi
    gk = [0.25 + 0.75 * x, 0.25 + 0.75 * y, 0.25 + 0.75 * (0.5 + 0.5 * np.sin(tau * (x + y)))]
    gs = gk[0] + gk[1] + gk[2]
    t = 0.3 + 1.2 * (0.5 + 0.5 * np.sin(tau * x) * np.sin(tau * y))
    c = [t * gk[k % 3] / gs for k in range(K)]
    a = 0.05 * (x - 0.5)
    b = 0.02 * (y - 0.5)
    del x, y, gk, gs, t
    Y = np.empty((E, P), dtype=np.float32)
    e_bg = g["background_e0_eV"]
    for e, energy in enumerate(d["energies_eV"]):
        v = a + b * ((energy - e_bg) / 100.0)
        for k in range(K):
            v += c[k] * R[e, k]
        off = (e * g["shift"]) % P
        v += g["sigma"] * np.roll(z, -off)
        Y[e] = v
    return Y


def make_nnls_stack(d, n):
    """The first n spectra of bench_fit.cpp's 6-reference NNLS set, float32, shape (E, n)."""
    g = d["generation"]
    Pn = g["nnls_pixels"]
    R = np.asarray(d["nnls"]["X"])[:, 2:]
    E, K = R.shape
    seed = g["seed_nnls"]
    z = noise_pattern(Pn, seed)
    p = np.arange(Pn, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = splitmix64(np.uint64(seed) + p)
    j1 = (h % np.uint64(K)).astype(np.int64)
    j2 = ((h >> np.uint64(8)) % np.uint64(K)).astype(np.int64)
    u = ((h >> np.uint64(20)) & np.uint64(0xFFFFF)).astype(np.float64) / 1048576.0
    v = ((h >> np.uint64(40)) & np.uint64(0xFFFFF)).astype(np.float64) / 1048576.0
    t = 0.3 + 1.2 * v
    C = np.zeros((K, Pn))
    idx = np.arange(Pn)
    same = j1 == j2
    f1 = np.where(same, 1.0, 0.2 + 0.6 * u)
    C[j1, idx] += t * f1
    C[j2[~same], idx[~same]] += t[~same] * (1.0 - f1[~same])
    Y = np.empty((E, Pn), dtype=np.float32)
    for e, energy in enumerate(d["energies_eV"]):
        de = (energy - g["background_e0_eV"]) / 100.0
        val = 0.02 - 0.01 * de + R[e] @ C
        off = (e * g["shift"]) % Pn
        Y[e] = val + g["sigma"] * np.roll(z, -off)
    return Y[:, :n]


def pyxas_fit(Y, A, n_bg, stages=None):
    """PyXAS's fit_2D_xanes_non_iter on an (E, P) stack, float64, with A's background columns.

    Returns thickness, fractions (K, P), the RMS residual and the coefficient standard errors,
    float64 as PyXAS computes them. `stages`, if given, receives the time of each step. The one
    change from PyXAS's order: the error sum is taken before the offset images are formed, so
    that four E×P float64 arrays are never alive at once (peak ~12 GB instead of ~16 GB at
    2048² × 100; the same work)."""
    clock = [time.perf_counter()]

    def stage(name):
        now = time.perf_counter()
        if stages is not None:
            stages[name] = now - clock[0]
        clock[0] = now

    num_eng, n_par = A.shape
    AT = A.T
    ATA_inv = np.linalg.inv(AT @ A)
    ATY = AT @ Y                       # Y float32 → float64 (numpy's promotion), as in PyXAS
    X = ATA_inv @ ATY
    stage("coefficients (A^T Y, float64)")
    Y_hat = A @ X                      # fitted spectra
    dy = Y - Y_hat                     # residual spectra
    cost = np.sum(dy**2, axis=0) / num_eng
    err = np.sum(dy**2, axis=0)
    stage("fitted spectra, residuals, cost")
    X_offset = X.copy()                # offset images: the background-only part of the fit
    X_offset[n_bg:] = 0
    Y_offset = A @ X_offset
    stage("offset images")
    sigma2 = err / max(num_eng - n_par, 1)
    var = np.sqrt(np.outer(np.diag(ATA_inv), sigma2))
    del Y_hat, dy, Y_offset, ATY
    coef = X[n_bg:]
    thickness = coef.sum(axis=0)
    fractions = coef / thickness
    residual = np.sqrt(cost)
    stage("σ, thickness, fractions, residual; free")
    return thickness, fractions, residual, var


def lean_fit(Y, A, n_bg):
    """float32: θ = pinv(A)·Y in one matmul, χ² = yᵀy − θᵀGθ from norms."""
    Ap = np.linalg.pinv(A).astype(np.float32)
    G = (A.T @ A).astype(np.float32)
    theta = Ap @ Y                                  # (M, P) float32
    q = np.einsum("ep,ep->p", Y, Y)                 # yᵀy, one pass over Y
    chi2 = q - np.einsum("mp,mp->p", theta, G @ theta)
    coef = theta[n_bg:]
    thickness = coef.sum(axis=0)
    fractions = coef / thickness
    residual = np.sqrt(np.maximum(chi2, 0) / Y.shape[0])
    return thickness, fractions, residual


def best_of(repeats, fn, warmup=True):
    if warmup:
        fn()
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def result(key, value):
    print(f"RESULT {key}={value:.7g}" if isinstance(value, float) else f"RESULT {key}={value}", flush=True)


def print_means(prefix, thickness, fractions, residual):
    for k in range(fractions.shape[0]):
        print(f"RESULT {prefix}_mean_fraction_{k}={fractions[k].mean(dtype=np.float64):.7f}")
    print(f"RESULT {prefix}_mean_thickness={thickness.mean(dtype=np.float64):.7f}")
    print(f"RESULT {prefix}_mean_residual={residual.mean(dtype=np.float64):.7g}", flush=True)


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--design", required=True, help="design file from bench_fit --write-design")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure, best reported (default 3)")
    ap.add_argument("--pyxas-repeats", type=int, default=2,
                    help="timed runs of the PyXAS-way fit after one warm-up run (~10 s each at 2048²; default 2)")
    ap.add_argument("--nnls-pixels", type=int, default=None,
                    help="spectra for the scipy nnls loop (default: the design's check_pixels, 20000)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: pyxas,lean,nnls")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with open(args.design) as f:
        d = json.load(f)
    g = d["generation"]
    E = len(d["energies_eV"])
    N = g["size"]
    A = np.asarray(d["main"]["X"])
    n_bg = 2
    blas = "unknown"
    try:
        cfg = np.__config__.blas_opt_info  # numpy < 1.25
        blas = ",".join(cfg.get("libraries", []))
    except AttributeError:
        pass
    print(f"numpy baseline (bench/pyxas_baseline.py): python {sys.version.split()[0]} ({sys.executable}), "
          f"numpy {np.__version__} (BLAS: {blas}, {os.path.realpath('/usr/lib/x86_64-linux-gnu/libblas.so.3')}), "
          f"scipy {scipy.__version__}")
    print(f"stack: {N}×{N} px × {E} energies float32, {A.shape[1]} parameters "
          f"({', '.join(d['main']['names'])} + background)", flush=True)

    t0 = time.perf_counter()
    Y = make_main_stack(d)
    print(f"generated the stack in {time.perf_counter() - t0:.1f} s (not timed)", flush=True)

    if "pyxas" not in skip:
        # The warm-up run matters here: the first pass through ~12 GB of fresh float64 arrays pays
        # for first-touch page faults that later runs do not (several times the fit on a VM).
        runs = []

        def run_pyxas():
            stages = {}
            out = pyxas_fit(Y, A, n_bg, stages)
            runs.append(stages)
            return out

        t, (thk, frac, res, var) = best_of(args.pyxas_repeats, run_pyxas)
        best = min(runs[1:] or runs, key=lambda st: sum(st.values()))
        print(f"pyxas way (float64 normal equations + fitted spectra, residuals, offsets): {t:.3f} s "
              f"(peak RSS so far {peak_rss_gb():.1f} GB)", flush=True)
        print("    stages of the best run: " + "; ".join(f"{k} {v:.2f} s" for k, v in best.items()), flush=True)
        result("pyxas_s", t)
        print_means("pyxas", thk, frac, res)
        del thk, frac, res, var

    if "lean" not in skip:
        t, (thk, frac, res) = best_of(args.repeats, lambda: lean_fit(Y, A, n_bg))
        print(f"lean numpy float32 (pinv matmul, residual from norms): {t:.3f} s", flush=True)
        result("lean_s", t)
        print_means("lean", thk, frac, res)
        del thk, frac, res

    Y = None  # free the stack (1.7 GB) before the NNLS part
    if "nnls" not in skip:
        n = args.nnls_pixels or g["check_pixels"]
        Yn = make_nnls_stack(d, n).astype(np.float64)
        A6 = np.asarray(d["nnls"]["X"])
        B, R6 = A6[:, :n_bg], A6[:, n_bg:]
        K6 = R6.shape[1]
        # Projection onto the complement of the background columns: the free a, b drop out exactly.
        Q, _ = np.linalg.qr(B)
        Rp = R6 - Q @ (Q.T @ R6)

        def nnls_projected():
            Yp = np.ascontiguousarray((Yn - Q @ (Q.T @ Yn)).T)  # one contiguous spectrum per row
            C = np.empty((K6, n))
            rn = np.empty(n)
            for p in range(n):
                C[:, p], rn[p] = nnls(Rp, Yp[p])
            return C, rn

        As = np.hstack([B, -B, R6])  # split variables: a = a⁺ − a⁻, b = b⁺ − b⁻

        def nnls_split():
            Yt = np.ascontiguousarray(Yn.T)
            C = np.empty((K6, n))
            rn = np.empty(n)
            for p in range(n):
                x, rn[p] = nnls(As, Yt[p])
                C[:, p] = x[2 * n_bg:]
            return C, rn

        t, (C, rn) = best_of(args.repeats, nnls_projected)
        thk = C.sum(axis=0)
        frac = C / np.where(thk != 0, thk, 1)
        print(f"scipy nnls loop (background projected out): {n} spectra in {t:.3f} s = {n / t:.4g} spectra/s", flush=True)
        result("scipy_nnls_pixels", n)
        result("scipy_nnls_rate", n / t)
        print_means("scipy_nnls", thk, frac, rn / np.sqrt(E))
        t2, (C2, _) = best_of(max(1, args.repeats - 1), nnls_split)
        print(f"scipy nnls loop (split background columns): {n / t2:.4g} spectra/s; "
              f"max |coefficient difference| to the projected form {np.abs(C2 - C).max():.2g}", flush=True)
        result("scipy_nnls_split_rate", n / t2)
    result("python_peak_rss_gb", peak_rss_gb())


if __name__ == "__main__":
    main()
