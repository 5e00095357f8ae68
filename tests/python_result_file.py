#!/usr/bin/python3
"""The result file as a scientist reopens it, read with silx's NXdata API and h5py (Debian's
python3-silx, python3-h5py): a scan made by xanes-simulate, fitted by `xanesd fit`.

  python_result_file.py --xanesd BIN --simulate BIN --source-dir DIR

Checks: the default plot chain ends at a valid 2-D NXdata (a named reference's fraction map
with errors and labelled axes), every reference has one, /entry/results is a valid NXdata whose
errors silx finds, every numeric dataset has units, the file records the --refs and --names
it was fitted with, the software version, the reference spectra used, the input file and the
start and end times."""
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


class ResultFile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        a = ARGS
        cls.tmp = tempfile.TemporaryDirectory()
        refs = os.path.join(a.source_dir, "config/references")
        cls.library = os.path.join(refs, "fe_k_library_normalized.nor")
        scan = os.path.join(cls.tmp.name, "scan.h5")
        cls.out = os.path.join(cls.tmp.name, "result.h5")
        subprocess.run([a.simulate, "--refs", cls.library, "--use", "Magnetite,Goethite,Pyrite",
                        "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"), "--shape", "16x16",
                        "--layout", "regions", "--seed", "5", "--out", scan], check=True, capture_output=True)
        subprocess.run([a.xanesd, "fit", "--input", scan, "--refs", cls.library, "--names", "Magnetite,Goethite,Pyrite",
                        "--out", cls.out, "--set", "log.level=warn"], check=True, capture_output=True)
        cls.f = h5py.File(cls.out, "r")

    @classmethod
    def tearDownClass(cls):
        cls.f.close()
        cls.tmp.cleanup()

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
        """What was fitted and when: the input file and ISO 8601 UTC start and end times."""
        self.assertEqual(self.f["entry/input_file"][()].decode(), os.path.abspath(os.path.join(self.tmp.name, "scan.h5")))
        times = [self.f[f"entry/{k}"][()].decode() for k in ("start_time", "end_time")]
        for t in times:
            self.assertRegex(t, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertLessEqual(times[0], times[1])


if __name__ == "__main__":
    ARGS, argv = binaries.parse(__doc__)
    unittest.main(argv=argv)
