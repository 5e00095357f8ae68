#!/usr/bin/python3
"""The result file as a scientist reopens it, read with silx's NXdata API and h5py (Debian's
python3-silx, python3-h5py): a scan made by xanes-simulate, fitted by `xanesd fit`.

  python_result_file.py --xanesd BIN --simulate BIN --source-dir DIR

Checks: the default plot chain ends at a valid 2-D NXdata (a named reference's fraction map
with errors and labelled axes), every reference has one, /entry/results is a valid NXdata whose
errors silx finds, every numeric dataset has units, the file records the --refs and --names
it was fitted with, the software version, the reference spectra used, the input file and the
start and end times. A volume (E × Z × Y × X): maps shaped Z × Y × X, each slice fitted as
its own image."""
import json
import os
import subprocess
import tempfile
import unittest

import h5py
import numpy as np
from silx.io import nxdata

import binaries  # noqa: E402  (tests/binaries.py)

ARGS = None
SPECIES = "Magnetite,Goethite,Pyrite"


def library():
    return os.path.join(ARGS.source_dir, "config/references/fe_k_library_normalized.nor")


def simulate(out, *options):
    """A scan file of the three species on the HXN grid (xanes-simulate `options`)."""
    subprocess.run([ARGS.simulate, "--refs", library(), "--use", SPECIES, "--energies",
                    os.path.join(ARGS.source_dir, "config/references/fe_k_energies_hxn.txt"), *options, "--out", out],
                   check=True, capture_output=True)
    return out


def fit(scan, out):
    """`xanesd fit` of `scan` with the three species."""
    subprocess.run([ARGS.xanesd, "fit", "--input", scan, "--refs", library(), "--names", SPECIES,
                    "--out", out, "--set", "log.level=warn"], check=True, capture_output=True)
    return out


class ResultFile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.library = library()
        scan = simulate(os.path.join(cls.tmp.name, "scan.h5"), "--shape", "16x16", "--layout", "regions", "--seed", "5")
        cls.out = fit(scan, os.path.join(cls.tmp.name, "result.h5"))
        cls.f = h5py.File(cls.out, "r")

    @classmethod
    def tearDownClass(cls):
        cls.f.close()
        cls.tmp.cleanup()

    def test_summary_on_stdout_logs_on_stderr(self):
        # A log line (here: the spectra left out of a scan above output.batch_spectra_max_pixels)
        # goes to stderr: stdout is the JSON summary alone, for scripts to parse.
        out = os.path.join(self.tmp.name, "no-spectra.h5")
        p = subprocess.run([ARGS.xanesd, "fit", "--input", os.path.join(self.tmp.name, "scan.h5"), "--refs", library(),
                            "--names", SPECIES, "--out", out, "--quiet", "--set", "output.batch_spectra_max_pixels=10"],
                           check=True, capture_output=True, text=True)
        self.assertEqual(json.loads(p.stdout)["output"], out)
        self.assertIn("batch_spectra_max_pixels", p.stderr)
        with h5py.File(out, "r") as f:
            self.assertNotIn("entry/data/spectra", f)

    def test_default_plot(self):
        d = nxdata.get_default(self.f)
        self.assertIsNotNone(d, "no valid default NXdata")
        self.assertTrue(d.is_valid)
        self.assertTrue(d.is_image)
        self.assertEqual(d.signal_dataset_name, "fraction")
        self.assertEqual(d.signal_name, "fraction of Magnetite")  # the plot's label (long_name)
        self.assertEqual(d.title, "fraction of Magnetite (c_k/Σc; 0 outside the mask)")
        self.assertEqual(list(d.axes_dataset_names), ["y", "x"])
        self.assertIsNotNone(d.errors)
        self.assertEqual(d.errors.shape, (16, 16))

    def test_one_nxdata_per_reference(self):
        names = [n.decode() if isinstance(n, bytes) else n for n in self.f["entry/results/reference_names"][()]]
        self.assertEqual(sorted(names), ["Goethite", "Magnetite", "Pyrite"])
        stack = self.f["entry/results/fractions"][()]
        for k, n in enumerate(names):
            d = nxdata.NXdata(self.f["entry/fraction_" + n])
            self.assertTrue(d.is_valid, n)
            np.testing.assert_array_equal(d.signal[()], stack[k])
            np.testing.assert_array_equal(d.errors[()], self.f["entry/results/fraction_sigma"][k])

    def test_results_stack_has_errors_and_a_reference_axis(self):
        d = nxdata.NXdata(self.f["entry/results"])
        self.assertTrue(d.is_valid)
        self.assertIsNotNone(d.errors)
        self.assertEqual(list(d.axes_dataset_names), ["reference_index", "y", "x"])

    def test_units_everywhere(self):
        missing = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "iuf" and "units" not in obj.attrs:
                missing.append(name)
        self.f.visititems(visit)
        self.assertEqual(missing, [])
        self.assertEqual(self.f["entry/energy"].attrs["units"], "eV")

    def test_reproducible(self):
        config = json.loads(self.f["entry/config"][()])
        self.assertEqual(config["references.files"], [os.path.abspath(self.library)])
        self.assertEqual(config["references.names"], ["Magnetite", "Goethite", "Pyrite"])
        self.assertTrue(config["input"].endswith("scan.h5"))
        self.assertTrue(self.f["entry/program_name"].attrs["version"].startswith("0."))
        refs = self.f["entry/references"]
        self.assertEqual([n.decode() if isinstance(n, bytes) else n for n in refs["names"][()]],
                         ["Magnetite", "Goethite", "Pyrite"])
        g = refs["Goethite"]
        self.assertEqual(g["energy"].attrs["units"], "eV")
        self.assertEqual(g["energy"].shape, g["mu"].shape)
        self.assertEqual(g["normalization"][()].decode(), "already normalized")
        self.assertTrue(nxdata.NXdata(g).is_valid)

    def test_input_and_times(self):
        """What was fitted and when: the input file and ISO 8601 UTC start and end times. A volume (E × Z × Y × X): maps shaped Z × Y × X, each slice fitted as
its own image."""
        self.assertEqual(self.f["entry/input_file"][()].decode(), os.path.abspath(os.path.join(self.tmp.name, "scan.h5")))
        times = [self.f[f"entry/{k}"][()].decode() for k in ("start_time", "end_time")]
        for t in times:
            self.assertRegex(t, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertLessEqual(times[0], times[1])


class Volume(unittest.TestCase):
    """A volume (E × Z × Y × X) is fitted as its slices stacked: maps shaped Z × Y × X, and no
    step that reads neighbours (the spatial fit's window, label smoothing) crosses a slice."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        # Three slices of 20 rows cut from one scene: the domains run on across the cuts, so a
        # window that crossed them would find neighbours that agree (and change the maps).
        cls.volume = simulate(os.path.join(cls.tmp.name, "volume.h5"), "--shape", "60x40", "--layout", "scene",
                              "--counts", "500", "--slices", "3", "--seed", "7")
        cls.out = cls.fit(cls.volume, "volume-result.h5")
        cls.f = h5py.File(cls.out, "r")

    @classmethod
    def tearDownClass(cls):
        cls.f.close()
        cls.tmp.cleanup()

    @classmethod
    def fit(cls, scan, name):
        return fit(scan, os.path.join(cls.tmp.name, name))

    def part(self, name, rows=None, z=None):
        """A scan file of the volume's slice z (an image), or of all its slices as one image
        (rows = Z·Y)."""
        path = os.path.join(self.tmp.name, name)
        with h5py.File(self.volume, "r") as v, h5py.File(path, "w") as f:
            f.attrs["mode"] = v.attrs["mode"]
            f["energy"] = v["energy"][()]
            f["raw/i0"] = v["raw/i0"][()]
            counts, xrf = v["raw/counts"][()], v["xrf/Fe"][()]
            if z is not None:
                f["raw/counts"], f["xrf/Fe"] = counts[:, z], xrf[z]
            else:
                f["raw/counts"] = counts.reshape(counts.shape[0], rows, counts.shape[-1])
                f["xrf/Fe"] = xrf.reshape(rows, xrf.shape[-1])
        return path

    def test_maps_are_shaped_like_the_volume(self):
        r = self.f["entry/results"]
        self.assertEqual(r["fractions"].shape, (3, 3, 20, 40))
        for name in ("thickness", "mask", "spatial_neighbours", "residual", "segments/segments"):
            self.assertEqual(r[name].shape, (3, 20, 40), name)
        self.assertEqual(list(r.attrs["axes"]), ["reference_index", "z", "y", "x"])
        self.assertEqual(list(r["z"][()]), [0, 1, 2])
        self.assertEqual(self.f["entry/edge/e0"].shape, (3, 20, 40))
        self.assertEqual(self.f["entry/xrf/Fe"].shape, (3, 20, 40))
        self.assertEqual(self.f["entry/data/spectra"].shape, (73, 3, 20, 40))
        d = nxdata.get_default(self.f)
        self.assertTrue(d is not None and d.is_valid)
        self.assertEqual(list(d.axes_dataset_names), ["z", "y", "x"])
        # The spatial step ran: most material pixels averaged several neighbours.
        self.assertGreater(np.median(r["spatial_neighbours"][()][r["mask"][()] == 1]), 2.0)

    def test_each_slice_is_fitted_as_its_own_image(self):
        """Per pixel, a slice's maps are those of the slice fitted alone (the mask's threshold,
        a percentile of the whole volume, is compared only where both keep the pixel)."""
        r = self.f["entry/results"]
        for z in range(3):
            with h5py.File(self.fit(self.part(f"slice{z}.h5", z=z), f"slice{z}-result.h5"), "r") as s:
                alone = s["entry/results"]
                np.testing.assert_array_equal(r["thickness"][z], alone["thickness"][()])
                np.testing.assert_array_equal(r["spatial_neighbours"][z], alone["spatial_neighbours"][()])
                both = (r["mask"][z] == 1) & (alone["mask"][()] == 1)
                self.assertGreater(both.sum(), 300)
                np.testing.assert_array_equal(r["fractions"][:, z][:, both], alone["fractions"][()][:, both])

    def test_the_same_rows_as_one_image_differ_at_the_cuts(self):
        """The control: fitted as one 60-row image, the windows cross the cuts, and the rows
        beside them (only those) change."""
        with h5py.File(self.fit(self.part("stacked.h5", rows=60), "stacked-result.h5"), "r") as s:
            stacked = s["entry/results/thickness"][()].reshape(3, 20, 40)
        differs = np.any(stacked != self.f["entry/results/thickness"][()], axis=(0, 2))
        self.assertTrue(differs[[0, 1, 18, 19]].any(), differs)
        self.assertFalse(differs[3:17].any(), differs)


if __name__ == "__main__":
    ARGS, argv = binaries.parse(__doc__)
    unittest.main(argv=argv)
