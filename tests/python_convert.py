#!/usr/bin/python3
"""xanes-convert against real files: a simulated transmission scan (xanes-simulate) exported
as a TIFF stack with per-energy flats and a dark (tifffile), as one TIFF per energy, and as a
generic HDF5 file (the layout of full-field XANES beamlines: /exchange/data, data_white,
data_dark, energies in keV); each converted back to xanesd's scan file, compared array by
array with the original, and fitted by `xanesd fit` to maps equal to the original's and close
to the simulation's truth. Bad input gets a clear message and a non-zero exit.

  python_convert.py --xanesd BIN --simulate BIN --source-dir DIR"""
import argparse
import os
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np
import tifffile

ARGS = None


class Convert(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        a = ARGS
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        refs = os.path.join(a.source_dir, "config/references")
        cls.library = os.path.join(refs, "fe_k_library_normalized.nor")
        cls.convert = os.path.join(a.source_dir, "clients/python/xanes-convert")
        cls.sim = os.path.join(cls.dir, "sim.h5")
        subprocess.run([a.simulate, "--refs", cls.library, "--use", "Magnetite,Goethite,Pyrite",
                        "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"), "--shape", "12x14",
                        "--mode", "transmission", "--dark", "20", "--layout", "regions", "--seed", "3",
                        "--out", cls.sim], check=True, capture_output=True)
        with h5py.File(cls.sim, "r") as f:
            cls.counts = f["raw/counts"][()]
            cls.flat = f["raw/flat"][()]
            cls.dark = f["raw/dark"][()]
            cls.energy = f["energy"][()]
            cls.truth = f["truth/fractions"][()]
            cls.truth_names = [n.decode() if isinstance(n, bytes) else n for n in f["truth/reference_names"][()]]
        cls.reference_maps = cls.fit(cls.sim)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def fit(cls, scan):
        out = scan + ".result.h5"
        subprocess.run([ARGS.xanesd, "fit", "--input", scan, "--refs", cls.library, "--names", "Magnetite,Goethite,Pyrite",
                        "--out", out, "--set", "log.level=warn"], check=True, capture_output=True)
        with h5py.File(out, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f["entry/results/reference_names"][()]]
            fr = f["entry/results/fractions"][()]
        return np.stack([fr[names.index(n)] for n in cls.truth_names])

    def run_convert(self, *args):
        return subprocess.run([sys.executable, self.convert, *args], capture_output=True, text=True)

    def check_scan(self, path, per_energy_flat=True):
        with h5py.File(path, "r") as f:
            self.assertEqual(f.attrs["mode"], "transmission")
            np.testing.assert_allclose(f["energy"][()], self.energy, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(f["raw/counts"][()], self.counts)
            np.testing.assert_array_equal(f["raw/dark"][()], self.dark)
            if per_energy_flat:
                np.testing.assert_array_equal(f["raw/flat"][()], self.flat)
        maps = self.fit(path)
        np.testing.assert_allclose(maps, self.reference_maps, atol=1e-6)
        rmse = float(np.sqrt(np.mean((maps - self.truth) ** 2)))
        self.assertLess(rmse, 0.05)

    def write_energies_keV(self, name):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write("# energies in keV\n" + "\n".join("%.9f" % (e / 1000) for e in self.energy) + "\n")
        return path

    def test_multipage_stack_with_per_energy_flats_and_dark(self):
        d = os.path.join(self.dir, "stack")
        os.makedirs(d)
        tifffile.imwrite(os.path.join(d, "stack.tif"), self.counts.astype(np.float32))
        flats = []
        for e in range(len(self.energy)):  # one flat file per energy, unpadded numbers: natural order
            flats.append(os.path.join(d, f"flat_{e + 1}.tif"))
            tifffile.imwrite(flats[-1], self.flat[e].astype(np.float32))
        tifffile.imwrite(os.path.join(d, "dark.tif"), self.dark.astype(np.float32))
        out = os.path.join(d, "scan.h5")
        r = self.run_convert("tiff", "--stack", os.path.join(d, "stack.tif"), "--energies", self.write_energies_keV("e.txt"),
                             "--flat", *reversed(flats), "--dark", os.path.join(d, "dark.tif"), "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_scan(out)

    def test_one_file_per_energy(self):
        d = os.path.join(self.dir, "frames")
        os.makedirs(d)
        for e in range(len(self.energy)):
            tifffile.imwrite(os.path.join(d, f"img_{e + 1}.tif"), self.counts[e].astype(np.float32))
        tifffile.imwrite(os.path.join(d, "flats.tif"), self.flat.astype(np.float32))  # multi-page, a page per energy
        tifffile.imwrite(os.path.join(d, "dark.tif"), self.dark.astype(np.float32))
        energies = os.path.join(d, "energies_eV.txt")
        np.savetxt(energies, self.energy, fmt="%.6f")
        out = os.path.join(d, "scan.h5")
        r = self.run_convert("tiff", "--frames", os.path.join(d, "img_*.tif"), "--energies", energies,
                             "--flat", os.path.join(d, "flats.tif"), "--dark", os.path.join(d, "dark.tif"), "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_scan(out)

    def test_generic_hdf5_with_dataset_paths(self):
        src = os.path.join(self.dir, "fullfield.h5")
        with h5py.File(src, "w") as f:
            f["exchange/data"] = self.counts
            f["exchange/data_white"] = self.flat
            f["exchange/data_dark"] = np.stack([self.dark, self.dark])  # two darks, averaged
            f["exchange/energy"] = self.energy / 1000.0
        out = os.path.join(self.dir, "from_hdf5.h5")
        r = self.run_convert("hdf5", "--input", src, "--counts", "exchange/data", "--energies", "exchange/energy",
                             "--flat", "exchange/data_white", "--dark", "exchange/data_dark", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_scan(out)

    def test_bad_input_gets_a_clear_message(self):
        d = os.path.join(self.dir, "bad")
        os.makedirs(d)
        tifffile.imwrite(os.path.join(d, "stack.tif"), self.counts[:5].astype(np.float32))
        out = os.path.join(d, "x.h5")
        r = self.run_convert("tiff", "--stack", os.path.join(d, "stack.tif"), "--energies", self.write_energies_keV("e2.txt"),
                             "--flat", os.path.join(d, "stack.tif"), "--out", out)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("energies but 5 images", r.stderr)
        self.assertFalse(os.path.exists(out))
        bad = os.path.join(d, "bad.txt")
        with open(bad, "w") as f:
            f.write("7100\n7101\nseven\n")
        r = self.run_convert("tiff", "--stack", os.path.join(d, "stack.tif"), "--energies", bad, "--out", out)
        self.assertIn("bad.txt:3", r.stderr)
        r = self.run_convert("tiff", "--stack", os.path.join(d, "stack.tif"), "--energies", bad, "--out", out, "--mode", "x")
        self.assertEqual(r.returncode, 2)
        r = self.run_convert("hdf5", "--input", os.path.join(d, "stack.tif"), "--counts", "a", "--energies", "b", "--out", out)
        self.assertIn("as HDF5", r.stderr)
        r = self.run_convert("--help")
        self.assertEqual(r.returncode, 0)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--xanesd", required=True)
    p.add_argument("--simulate", required=True)
    p.add_argument("--source-dir", required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)
