#!/usr/bin/python3
"""Scaling of `xanesd fit` under MPI (bench/run_mpi_benchmark.sh): the one-process fit of a scan
file against `mpirun -np N xanesd fit` of the same file, in one run; one thread per rank
(fit.threads=1) so that N ranks use N cores. Prints the time per step (rank 0's, from the
summary's `timing`), the parallel efficiency T1 / (N·T_N), and a model for N nodes from the
measured per-rank rates and the bytes each step moves. A benchmark: it asserts nothing."""
import argparse
import json
import os
import resource
import subprocess
import sys

import h5py

STEPS = ("read", "apply", "fit", "reduce", "wait", "gather", "segments", "edge_maps", "analysis", "write", "total", "cpu")


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # mpirun's ranks too, once it has waited for them
    return r.ru_utime + r.ru_stime


def run(cmd):
    c0 = cpu_seconds()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
        return None
    summary = json.loads(p.stdout)
    t = summary["timing"]
    t["ranks"] = summary.get("rank_timing", [])
    t["cpu"] = cpu_seconds() - c0  # every process of the run: on a busy machine the figure that divides
    return t


def best(cmd, repeats):
    runs = [t for t in (run(cmd) for _ in range(repeats)) if t]
    return min(runs, key=lambda t: t["total"]) if runs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", required=True)
    ap.add_argument("--xanesd", required=True)
    ap.add_argument("--mpiexec", default="mpirun")
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    fit = ["fit", "--input", a.scan, "--config", a.config, "--quiet", "--set", "fit.threads=1"]
    mpi = [a.mpiexec, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
           "--mca", "btl_vader_single_copy_mechanism", "none", "--mca", "oob_tcp_if_include", "lo"]
    rows = {}
    rows["one process"] = best([a.xanesd, *fit, "--out", os.path.join(a.out, "serial.h5")], a.repeats)
    ranks = [int(n) for n in a.ranks.split(",")]
    for n in ranks:
        rows[f"mpirun -np {n}"] = best([*mpi, "-np", str(n), a.xanesd, *fit, "--out", os.path.join(a.out, f"np{n}.h5")],
                                       a.repeats)
    if any(t is None for t in rows.values()):
        return 0
    print(f"\n== seconds per step, rank 0, best of {a.repeats} (fit and analysis include reduce; one thread per rank; cpu: user +"
          " system seconds of every process of the run, mpirun's included)")
    print(f"  {'run':<14}" + "".join(f"{s:>10}" for s in STEPS) + f"{'efficiency':>12}")
    t1 = rows["one process"]["total"]
    for name, t in rows.items():
        n = int(name.split()[-1]) if name.startswith("mpirun") else 1
        print(f"  {name:<14}" + "".join(f"{t.get(s, 0.0):10.3f}" for s in STEPS) + f"{t1 / (n * t['total']):12.2f}")

    for name, t in rows.items():
        for r, rt in enumerate(t["ranks"]):
            print(f"  {name} rank {r}: " + ", ".join(f"{k} {rt.get(k, 0.0):.3f}" for k in ("read", "apply", "fit", "reduce", "wait")))

    # The model: per-rank work (read, apply, fit) divides by N; the segmentation and edge maps are
    # taken as constant (every rank fits the same PCA and clusters on the gathered sample, most of
    # the segmentation at these sizes; the labelling and the edge maps, which divide, are the rest);
    # so is the file: rank 0 writes its structure alone, and every rank its rows of the per-pixel
    # datasets, which on one machine share one disk (a parallel file system would divide that
    # part). The reductions (a thickness per pixel all-gathered, the tile sums, the segmentation's
    # sample and cluster sums) and the gather of the ranks' counts are taken as constant at N > 1.
    with h5py.File(os.path.join(a.out, "serial.h5"), "r") as f:
        E = f["entry/energy"].shape[0]
        K, R, C = f["entry/results/fractions"].shape
        spectra = "entry/data/spectra" in f
    s = rows["one process"]
    work = s["read"] + s["apply"] + s["fit"]
    root = s["analysis"] + s["write"]
    top = rows[f"mpirun -np {max(ranks)}"]
    exchange = top["reduce"] + top["gather"]
    print(f"\n== model for N nodes (one rank each) from these rates: image {R}×{C} × {E} energies, K = {K}")
    print(f"  per-rank work {work:.3f} s at N = 1; constant {root:.3f} s (segments and edge maps on every rank, "
          f"the file, the spectra {'in it' if spectra else 'not in it'});")
    print(f"  reductions and the gather of the counts {exchange:.3f} s at np {max(ranks)}, taken as constant")
    print(f"  {'N':>5}{'T_N (s)':>10}{'speed-up':>10}{'efficiency':>12}")
    for n in (1, 2, 4, 8, 16, 32, 64):
        t = work / n + root + (0 if n == 1 else exchange)
        print(f"  {n:>5}{t:10.3f}{(work + root) / t:10.2f}{(work + root) / (n * t):12.2f}")
    print("  (the constant steps do not shrink with N: they bound the speed-up; README \"MPI\")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
