#!/usr/bin/python3
"""Batch reprocessing timings for bench/run_batch_benchmark.sh (see bench/README.md): `xanesd
fit` of a scan file against what numpy needs for the same file, on the same machine in one run.

  read    h5py reads /raw/counts (E×rows×cols float32) into memory: the floor of any batch fit.
  lean    the lean numpy fit of the file (bench/pyxas_baseline.py's lean_fit): read counts and
          I0, normalize y = counts / I0 in place, one float32 matmul with pinv(A) for the
          coefficients, the residual from norms. A has xanesd's columns: 1, (E − E0)/100 and the
          references interpolated onto the scan's energies (E0: the mean energy; the timing
          does not depend on it). Least squares, no mask, no segmentation, nothing written.
  xanesd  `xanesd fit --input SCAN --refs LIB --names ... --out RESULT` with the default config
          (NNLS, reference selection, spatial estimation, segmentation, edge maps, the result
          file), and with the --variant overrides given.

Wall time, best of --repeats after one warm-up run of each (the file is in the page cache for
every side). Run with Debian's /usr/bin/python3 (numpy, h5py). Prints "RESULT key=value" lines.
"""
import argparse
import os
import resource
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyxas_baseline import best_of, lean_fit, result  # noqa: E402


def read_counts(path):
    with h5py.File(path, "r") as f:
        return f["raw/counts"][...]


def references(path, names):
    cols = {}
    with open(path) as f:
        for line in f:
            if line.startswith("# Column."):
                i, name = line[len("# Column."):].split(":", 1)
                cols[name.strip().split()[0]] = int(i) - 1
    data = np.loadtxt(path, comments="#")
    return data[:, 0], [data[:, cols[n]] for n in names]


def run_xanesd(cmd, rss_file):
    """Wall time and peak RSS (GB) of one xanesd run; raises if it fails. The RSS comes from GNU
    time's own child: a child of this (large) Python process would report Python's peak too,
    since Linux carries the peak RSS across fork and exec."""
    gnu_time = os.access("/usr/bin/time", os.X_OK)  # Debian package `time`; without it no RSS figure
    t0 = time.perf_counter()
    p = subprocess.run((["/usr/bin/time", "-f", "%M", "-o", rss_file] if gnu_time else []) + cmd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}: {p.stderr}")
    if not gnu_time:
        return t, float("nan")
    with open(rss_file) as f:
        return t, int(f.read().split()[-1]) * 1024 / 1e9  # KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan", required=True, help="scan file (README: Scan files)")
    ap.add_argument("--refs", required=True, help="multi-column .nor reference file")
    ap.add_argument("--names", required=True, help="comma-separated reference names")
    ap.add_argument("--xanesd", required=True, help="the xanesd binary")
    ap.add_argument("--out", required=True, help="folder for xanesd's result files")
    ap.add_argument("--variant", action="append", default=[],
                    help="KEY:OVERRIDE[,OVERRIDE...]: also time xanesd with these --set overrides (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    t, Y = best_of(args.repeats, lambda: read_counts(args.scan))
    print(f"h5py read of /raw/counts {Y.shape} {Y.dtype}: {t:.3f} s", flush=True)
    result("read_s", t)
    del Y

    with h5py.File(args.scan, "r") as f:
        energies = f["energy"][...]
    ref_e, mus = references(args.refs, args.names.split(","))
    e0 = energies.mean()
    A = np.column_stack([np.ones_like(energies), (energies - e0) / 100] + [np.interp(energies, ref_e, mu) for mu in mus])

    def lean():
        with h5py.File(args.scan, "r") as f:
            counts = f["raw/counts"][...]
            i0 = f["raw/i0"][...].astype(np.float32)
        Y = counts.reshape(counts.shape[0], -1)
        Y /= i0[:, None]  # in place: no second copy of the stack
        return lean_fit(Y, A, 2)

    t, (thk, frac, res) = best_of(args.repeats, lean)
    print(f"lean numpy fit of the file (read, normalize, pinv matmul, residual from norms): {t:.3f} s", flush=True)
    result("lean_s", t)
    del thk, frac, res
    print(f"python peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB", flush=True)

    variants = [("default", [])]
    for v in args.variant:
        key, _, sets = v.partition(":")
        variants.append((key, [s for s in sets.split(",") if s]))
    for key, sets in variants:
        out = os.path.join(args.out, f"{key}.h5")
        cmd = [args.xanesd, "fit", "--input", args.scan, "--refs", args.refs, "--names", args.names, "--out", out,
               "--set", "log.level=warn"]
        for s in sets:
            cmd += ["--set", s]
        rss = []

        def once():
            t, r = run_xanesd(cmd, os.path.join(args.out, "rss.txt"))
            rss.append(r)
            return t

        t, _ = best_of(args.repeats, once)
        print(f"xanesd fit [{key}{': ' + ' '.join(sets) if sets else ''}]: {t:.3f} s (peak RSS {max(rss):.2f} GB)",
              flush=True)
        result(f"xanesd_{key}_s", t)
        result(f"xanesd_{key}_rss_gb", max(rss))
        with h5py.File(out, "r") as f:
            fr = f["entry/results/fractions"][...]
            names = [n.decode() if isinstance(n, bytes) else n for n in f["entry/results/reference_names"][...]]
            mask = f["entry/results/mask"][...].astype(bool)
            spectra = "entry/data/spectra" in f
        means = ", ".join(f"{n} {fr[k][mask].mean():.4f}" for k, n in enumerate(names))
        print(f"    {mask.sum()} pixels in the mask; mean fractions there: {means}; spectra written: {spectra}",
              flush=True)


if __name__ == "__main__":
    main()
