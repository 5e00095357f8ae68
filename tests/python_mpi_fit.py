#!/usr/bin/python3
"""`mpirun -np N xanesd fit` against the one-process fit of the same scan file (MPI build only).

The result files must be equal dataset by dataset and attribute by attribute (tests/
compare_results.py), except the times of the two runs: fractions, errors, thickness, residual,
mask, spatial neighbours, the reference selection, segment labels, edge maps, spectra, XRF,
status. The segments' cluster summaries (mean spectra and their fits) are equal to rounding: each
rank segments its block and the clusters' sums are added over the ranks in another order.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np

ARGS = None
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import binaries  # noqa: E402
TIMES = ["--skip", "@file_time", "--skip", "entry/start_time", "--skip", "entry/end_time"]
CLUSTER_SUMS = [arg for name in ("spectra", "spectra_stderr", "fractions", "fraction_sigma", "thickness", "residual")
                for arg in ("--close", f"entry/results/segments/cluster_{name}")]


def run(cmd, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


class MpiFit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="xanesd-mpi-")
        cls.dir = cls.tmp.name
        cls.config = os.path.join(ARGS.source_dir, "config", "default.json")

        def simulate(name, *options):
            return binaries.simulate_fe(ARGS.simulate, ARGS.source_dir, os.path.join(cls.dir, name), *options)

        # 48 rows: tiles of 6 rows, 8 blocks, 4 per rank at -np 2.
        cls.domains = simulate("domains.h5", "--shape", "48x40", "--layout", "domains", "--seed", "3")
        # 67 rows (prime): 12 tile rows over 3 ranks, the last block 19 rows; transmission with a
        # dark, a flat per energy and an XRF map.
        cls.scene = simulate("scene.h5", "--shape", "67x50", "--layout", "scene", "--mode", "transmission",
                             "--dark", "5", "--seed", "5")
        # A volume of 3 slices of 20 rows: at -np 3 the blocks are rows 0-17, 18-35, 36-59, so
        # the middle block's halo (rows 16-37) starts in slice 0 and reaches into slice 1.
        cls.volume = simulate("volume.h5", "--shape", "60x40", "--layout", "scene", "--slices", "3", "--seed", "9")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fit(self, scan, out, ranks=0, extra=(), check=True):
        cmd = [ARGS.xanesd, "fit", "--input", scan, "--config", self.config, "--out", out, "--quiet", *extra]
        if ranks:
            # Loopback only, oversubscribed (2 cores, shared), allowed as root (CI runs as root).
            cmd = [ARGS.mpiexec, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
                   "--mca", "btl_vader_single_copy_mechanism", "none", "--mca", "oob_tcp_if_include", "lo",
                   "-np", str(ranks), *cmd]
        return run(cmd, check)

    def compare(self, a, b, *skip):
        return run([sys.executable, os.path.join(HERE, "compare_results.py"), a, b, *TIMES, *CLUSTER_SUMS, *skip], check=False)

    def assert_same(self, scan, ranks, extra=()):
        name = os.path.splitext(os.path.basename(scan))[0]
        serial = os.path.join(self.dir, f"{name}-serial{'-'.join(extra)}.h5")
        if not os.path.exists(serial):
            self.fit(scan, serial, extra=extra)
        parallel = os.path.join(self.dir, f"{name}-np{ranks}{'-'.join(extra)}.h5")
        self.fit(scan, parallel, ranks, extra)
        c = self.compare(serial, parallel)
        self.assertEqual(c.returncode, 0, c.stdout)
        self.assertIn(" 0 difference(s)", c.stdout)

    def test_two_ranks_equal_one_process(self):
        self.assert_same(self.domains, 2)

    def test_sampled_segmentation(self):
        # A segmentation sample smaller than the image: the ranks draw the same random pixels and
        # gather their spectra. Without the selection's tiles the scene's 67 rows are cut at rows
        # 22 and 44 (pixels 1100 and 2200), inside runs of 16 pixels that two ranks then share.
        self.assert_same(self.domains, 2, ("--set", "segment.sample=300"))
        extra = ("--set", "segment.sample=300", "--set", "references.select=false")
        self.assert_same(self.scene, 3, extra)
        with h5py.File(os.path.join(self.dir, f"scene-np3{'-'.join(extra)}.h5"), "r") as f:
            labels = f["entry/results/segments/segments"][()]
            self.assertEqual(f["entry/results/segments/pca/components"][0] > 0, True)
        self.assertGreater(len(set(np.unique(labels).tolist()) - {0, 255}), 1)  # domains were found

    def test_ranks_that_do_not_divide_the_rows(self):
        self.assert_same(self.scene, 3)
        self.assert_same(self.scene, 2)

    def test_volume(self):
        self.assert_same(self.volume, 3)
        with h5py.File(os.path.join(self.dir, "volume-np3.h5"), "r") as f:
            self.assertEqual(f["entry/results/fractions"].shape, (3, 3, 20, 40))

    def test_without_selection_and_spatial_step(self):
        # Blocks of single rows (no tiles to align to), Poisson-weighted final maps per pixel.
        self.assert_same(self.domains, 3, ("--set", "references.select=false", "--set", "fit.spatial=false"))

    def test_bad_samples_counted_once(self):
        # Non-finite counts in rank 0's rows (row 3) and in rank 1's (row 40), away from the halo
        # rows (22..25 at -np 2): the result file's counters equal the one-process run's.
        bad = os.path.join(self.dir, "bad.h5")
        with h5py.File(self.domains, "r") as f, h5py.File(bad, "w") as g:
            for name in ("energy", "raw/counts", "raw/i0"):
                if name in f:
                    f.copy(name, g, name=name)
            g.attrs["mode"] = f.attrs["mode"]
            c = g["raw/counts"][()]
            c[5, 3, 7] = np.nan
            c[9, 40, 11] = np.inf
            g["raw/counts"][...] = c
        self.assert_same(bad, 2)
        with h5py.File(os.path.join(self.dir, "bad-np2.h5"), "r") as f:
            status = json.loads(f["entry/status"][()])
        self.assertEqual(status["counters"].get("issues.nonfinite_samples"), 2, status["counters"])
        self.assertEqual(status["scan"]["flagged_samples"].get("nonfinite_samples"), 2, status["scan"])

    def test_one_rank_under_mpirun(self):
        self.assert_same(self.domains, 1)

    def test_the_comparison_sees_a_difference(self):
        # The same scan with a wider spatial window: the comparison must report the maps.
        serial = os.path.join(self.dir, "domains-serial.h5")
        if not os.path.exists(serial):
            self.fit(self.domains, serial)
        other = os.path.join(self.dir, "domains-radius3.h5")
        self.fit(self.domains, other, 2, ("--set", "fit.spatial_radius=3"))
        c = self.compare(serial, other)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("/entry/results/fractions: values differ", c.stdout)

    def test_more_ranks_than_blocks_is_a_clear_error(self):
        p = self.fit(self.domains, os.path.join(self.dir, "too-many.h5"), 9, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("run at most 8 ranks", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "too-many.h5")))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for a in ("--xanesd", "--simulate", "--source-dir", "--mpiexec"):
        ap.add_argument(a, required=True)
    ARGS, rest = ap.parse_known_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    unittest.main(argv=[sys.argv[0]] + rest)
