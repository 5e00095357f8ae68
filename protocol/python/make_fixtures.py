#!/usr/bin/python3
"""Writes the Python-side golden messages of protocol/fixtures/ (decoded by both languages'
tests): py_start, py_frame_rows, py_frame_pixels, py_stop.

Each message is a `<name>.frames` file (per frame: little-endian uint32 length, then the
bytes) with a sidecar `<name>.expect.json`:

    {"topic": str,
     "header": {the header fields to check; never 'arrays' or 'protocol'},
     "arrays": [{"name", "dtype", "shape", "byteorder", "values": flat list, C order}]}

`byteorder` is informational (how the fixture was sent); a checker compares values, which
are exactly representable in the array's dtype.

Usage: make_fixtures.py [OUTPUT_DIR]   (default: ../fixtures next to this script)
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
from xanesd import protocol as xp  # noqa: E402


def expect_for(frames, header_keys):
    m = xp.decode(frames)
    return {
        "topic": m.topic,
        "header": {k: m.header[k] for k in header_keys},
        "arrays": [
            {"name": d["name"], "dtype": d["dtype"], "shape": d["shape"], "byteorder": d["byteorder"],
             "values": m.arrays[d["name"]].ravel().tolist()}
            for d in m.header["arrays"]
        ],
    }


def fixtures():
    energies = [7100.0, 7112.0, 7120.5, 7150.25]

    # start: 2×3 image with a start-level dark (uint16) and flat (float32) field.
    dark = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint16)
    flat = np.array([[1000.0, 1000.5, 999.5], [1001.0, 998.25, 1000.0]], dtype=np.float32)
    start = xp.start_message("fixture-scan", (2, 3), energies, "transmission", order="pixel-major",
                             xrf_channels=["Fe_Ka", "Ca_Ka"], dark=dark, flat=flat)
    yield "py_start", start, ["type", "scan_id", "shape", "energies_eV", "mode", "order", "xrf_channels"]

    # frame, region rows: rows 1..1 (nrows 1) of a 2×3 image; counts big-endian float32
    # (exercises byte swapping), per-pixel i0 float64 (little-endian).
    counts = np.array([[10.5, -2.25, 3.0e6]], dtype=">f4")
    i0 = np.array([[1.0, 0.5, 2.0]], dtype="<f8")
    rows = xp.frame_message("fixture-scan", 7, 2, 7120.5, counts, region=("rows", 1), i0=i0)
    yield "py_frame_rows", rows, ["type", "scan_id", "seq", "energy_index", "energy_eV", "region"]

    # frame, region pixels: 3 pixels by flat index (int64), uint16 counts, scalar i0.
    counts = np.array([0, 65535, 1234], dtype=np.uint16)
    pixels = np.array([5, 0, 3], dtype=np.int64)
    pix = xp.frame_message("fixture-scan", 8, 3, 7150.25, counts, region=("pixels", pixels), i0=12345.5)
    yield "py_frame_pixels", pix, ["type", "scan_id", "seq", "energy_index", "energy_eV", "region", "i0"]

    stop = xp.stop_message("fixture-scan", reason="aborted", frames_sent=9)
    yield "py_stop", stop, ["type", "scan_id", "reason", "frames_sent"]


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.join(HERE, "..", "fixtures")
    os.makedirs(out, exist_ok=True)
    for name, frames, keys in fixtures():
        xp.write_frames_file(os.path.join(out, name + ".frames"), frames)
        with open(os.path.join(out, name + ".expect.json"), "w") as f:
            json.dump(expect_for(frames, keys), f, indent=1)
            f.write("\n")
        print(f"wrote {os.path.normpath(os.path.join(out, name))}.{{frames,expect.json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
