#!/usr/bin/python3
"""Compares two xanesd result files dataset by dataset and attribute by attribute (README "MPI").

    compare_results.py A.h5 B.h5 [--skip PATH ...] [--close PATH ...]

Numeric datasets must be equal bit for bit (NaN equal to NaN), strings equal; the same set of
objects in both. --skip: a dataset (entry/start_time) or attribute (@file_time,
entry/x@units) whose values may differ (it must still exist in both): the times of the two runs.
--close: a dataset whose values may differ by rounding (relative 1e-9; sums added in another
order). Exit status 0 when equal, 1 with one line per difference.
"""
import argparse
import sys

import h5py
import numpy as np


def items(f):
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj))
    out[""] = f
    return out


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return a.tobytes() == b.tobytes() or bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind not in "fc":
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--skip", action="append", default=[])
    ap.add_argument("--close", action="append", default=[])
    args = ap.parse_args()
    diffs = []
    with h5py.File(args.a, "r") as fa, h5py.File(args.b, "r") as fb:
        ia, ib = items(fa), items(fb)
        for name in sorted(set(ia) ^ set(ib)):
            diffs.append(f"/{name}: only in {'A' if name in ia else 'B'}")
        compared = 0
        for name in sorted(set(ia) & set(ib)):
            oa, ob = ia[name], ib[name]
            if type(oa) is not type(ob):
                diffs.append(f"/{name}: a {type(oa).__name__} in A, a {type(ob).__name__} in B")
                continue
            for key in sorted(set(oa.attrs) | set(ob.attrs)):
                if key not in oa.attrs or key not in ob.attrs:
                    diffs.append(f"/{name}@{key}: only in one file")
                elif f"{name}@{key}" not in args.skip and not same(oa.attrs[key], ob.attrs[key]):
                    diffs.append(f"/{name}@{key}: differs")
            if isinstance(oa, h5py.Dataset) and name not in args.skip:
                compared += 1
                equal = close if name in args.close else same
                if not equal(oa[()], ob[()]):
                    detail = ""
                    if oa.shape == ob.shape and oa.dtype.kind in "fiub":
                        d = np.asarray(oa[()], dtype=float) != np.asarray(ob[()], dtype=float)
                        detail = f" ({int(np.count_nonzero(d))} of {d.size} values)"
                    diffs.append(f"/{name}: values differ{detail}")
    for d in diffs:
        print(d)
    print(f"compare_results: {compared} datasets compared, {len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
