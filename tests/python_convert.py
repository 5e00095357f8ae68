#!/usr/bin/python3
"""xanes-convert against real files: a simulated transmission scan (xanes-simulate) exported
as a TIFF stack with per-energy flats and a dark (tifffile), as one TIFF per energy, and as a
generic HDF5 file (the layout of full-field XANES beamlines: /exchange/data, data_white,
data_dark, energies in keV); each converted back to xanesd's scan file, compared array by
array with the original, and fitted by `xanesd fit` to maps equal to the original's and close
to the simulation's truth. Bad input gets a clear message and a non-zero exit.

  python_convert.py --xanesd BIN --simulate BIN --source-dir DIR"""
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np
import tifffile

import binaries  # noqa: E402  (tests/binaries.py)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from make_format_fixtures import write_als_stack, write_nxstxm  # noqa: E402  (the fixtures' writers)

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
    def fit(cls, scan, species=None):
        """`xanesd fit` of a scan file: the fraction maps of `species` (default the truth's), in that order."""
        species = species or cls.truth_names
        out = scan + ".result.h5"
        subprocess.run([ARGS.xanesd, "fit", "--input", scan, "--refs", cls.library, "--names", ",".join(species),
                        "--out", out, "--set", "log.level=warn", "--quiet"], check=True, capture_output=True)
        with h5py.File(out, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f["entry/results/reference_names"][()]]
            fr = f["entry/results/fractions"][()]
        return np.stack([fr[names.index(n)] for n in species])

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

    def test_fxi_layout(self):
        src = os.path.join(self.dir, "fxi_xanes.h5")
        with h5py.File(src, "w") as f:  # as NSLS-II FXI writes a XANES scan (PyXAS reads these keys)
            f["img_xanes"] = self.counts
            f["X_eng"] = self.energy / 1000.0
            f["img_bkg"] = self.flat
            f["img_dark"] = self.dark[None]
            f["scan_id"] = 1234
        out = os.path.join(self.dir, "from_fxi.h5")
        r = self.run_convert("fxi", "--input", src, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_scan(out)
        r = self.run_convert("fxi", "--input", self.sim, "--out", out)
        self.assertIn("not an FXI XANES file", r.stderr)

    def test_nxstxm(self):
        # An NXstxm stack of the same scan: transmitted counts I0(E)·T with the ion-chamber I0 in
        # control/data, T the original's (counts − dark)/(flat − dark).
        i0 = 5.0e4 * (1 + 0.1 * np.linspace(0, 1, len(self.energy)))
        t = (self.counts - self.dark) / (self.flat - self.dark)
        src = os.path.join(self.dir, "scan.nxstxm.h5")
        write_nxstxm(src, self.energy, t, i0)
        out = os.path.join(self.dir, "from_stxm.h5")
        r = self.run_convert("stxm", "--input", src, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(out, "r") as f:
            self.assertEqual(f.attrs["mode"], "transmission")
            np.testing.assert_allclose(f["raw/i0"][()], i0)
        maps = self.fit(out)
        np.testing.assert_allclose(maps, self.reference_maps, atol=2e-3)  # float32 counts: T rounded
        self.assertLess(float(np.sqrt(np.mean((maps - self.truth) ** 2))), 0.05)
        with h5py.File(src, "a") as f:
            del f["entry1/control"]
        r = self.run_convert("stxm", "--input", src, "--out", out)
        self.assertIn("no I0 monitor", r.stderr)

    def test_als_hdr_xim(self):
        # The same STXM data as ALS STXMs write it: a .hdr naming the energies and a text image
        # per energy; I0 from a text file.
        d = os.path.join(self.dir, "xim")
        os.makedirs(d)
        i0 = 2.0e4 * np.ones(len(self.energy))
        t = (self.counts - self.dark) / (self.flat - self.dark)
        write_als_stack(d, self.energy, t, i0)
        i0_file = os.path.join(d, "i0.txt")
        out = os.path.join(d, "scan.h5")
        r = self.run_convert("xim", "--hdr", os.path.join(d, "Stack_001.hdr"), "--i0", i0_file, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        maps = self.fit(out)
        np.testing.assert_allclose(maps, self.reference_maps, atol=5e-3)  # 2-decimal text counts
        self.assertLess(float(np.sqrt(np.mean((maps - self.truth) ** 2))), 0.05)
        r = self.run_convert("xim", "--hdr", os.path.join(d, "Stack_001.hdr"), "--out", out)
        self.assertIn("need I0", r.stderr)

    def test_shipped_fixtures_convert_and_fit(self):
        # The small files in tests/data/formats (tests/data/make_format_fixtures.py): a TIFF stack
        # with per-energy flats and a dark, an NXstxm file and an ALS .hdr/.xim pair of one
        # simulated scan; each converted and fitted to the simulation's fractions.
        src = os.path.join(ARGS.source_dir, "tests/data/formats")
        with h5py.File(os.path.join(src, "truth.h5"), "r") as f:
            truth = f["fractions"][()]
            names = [n.decode() if isinstance(n, bytes) else n for n in f["reference_names"][()]]
        tiff = os.path.join(src, "tiff")
        runs = {
            "tiff": ["tiff", "--stack", os.path.join(tiff, "stack.tif"), "--energies", os.path.join(tiff, "energies_keV.txt"),
                     "--flat", os.path.join(tiff, "flat.tif"), "--dark", os.path.join(tiff, "dark.tif")],
            "stxm": ["stxm", "--input", os.path.join(src, "stxm/scan.nxstxm.h5")],
            "xim": ["xim", "--hdr", os.path.join(src, "xim/Stack_001.hdr"), "--i0", os.path.join(src, "xim/i0.txt")],
        }
        maps = {}
        for kind, args in runs.items():
            with self.subTest(kind):
                out = os.path.join(self.dir, "shipped_" + kind + ".h5")
                r = self.run_convert(*args, "--out", out)
                self.assertEqual(r.returncode, 0, r.stderr)
                maps[kind] = self.fit(out, names)
                rmse = float(np.sqrt(np.mean((maps[kind] - truth) ** 2)))
                print(f"shipped {kind}: fraction RMSE {rmse:.4f}", file=sys.stderr)
                self.assertLess(rmse, 0.05, kind)
        # The three carry the same transmissions (text and float32 rounding apart): the same maps.
        np.testing.assert_allclose(maps["stxm"], maps["tiff"], atol=5e-3)
        np.testing.assert_allclose(maps["xim"], maps["tiff"], atol=5e-3)

    def test_result_file_refitted(self):
        # A result file (with its spectra) back into a scan file: refitted with the same
        # references it gives the same maps; with two of them, a two-reference fit.
        result = self.sim + ".result.h5"  # written by setUpClass's fit
        out = os.path.join(self.dir, "refit_scan.h5")
        r = self.run_convert("result", "--input", result, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_allclose(self.fit(out), self.reference_maps, atol=2e-3)
        two = out + ".two.h5"
        subprocess.run([ARGS.xanesd, "fit", "--input", out, "--refs", self.library, "--names", "Magnetite,Goethite",
                        "--out", two, "--set", "log.level=warn"], check=True, capture_output=True)
        with h5py.File(two, "r") as f:
            self.assertEqual(f["entry/results/fractions"].shape[0], 2)

    def test_registration_recovers_sample_drift(self):
        # A full-field stack whose sample drifted by known sub-pixel shifts between energies
        # (the flats did not: the beam stayed): --register finds the shifts (saved, printed)
        # and the registered scan fits as well as the undrifted one; unregistered it does not.
        d = os.path.join(self.dir, "drift")
        os.makedirs(d)
        sim = os.path.join(d, "sim.h5")
        refs = os.path.join(ARGS.source_dir, "config/references")
        subprocess.run([ARGS.simulate, "--refs", self.library, "--use", "Magnetite,Goethite,Pyrite",
                        "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"), "--shape", "40x40", "--mode",
                        "transmission", "--layout", "domains", "--seed", "4", "--out", sim], check=True, capture_output=True)
        with h5py.File(sim, "r") as f:
            counts, flat, energy, truth = f["raw/counts"][()], f["raw/flat"][()], f["energy"][()], f["truth/fractions"][()]
        E = len(energy)
        rng = np.random.default_rng(11)
        drift = rng.uniform(-2.5, 2.5, size=(E, 2))
        drift[-1] = 0  # the reference energy
        spec = importlib.util.spec_from_loader("xc", importlib.machinery.SourceFileLoader("xc", self.convert))
        xc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(xc)
        moved = np.stack([np.exp(-xc.apply_shift(-np.log(counts[e] / flat[e]), drift[e])) * flat[e] for e in range(E)])
        tifffile.imwrite(os.path.join(d, "stack.tif"), moved.astype(np.float32))
        tifffile.imwrite(os.path.join(d, "flat.tif"), flat.astype(np.float32))
        energies = os.path.join(d, "e.txt")
        np.savetxt(energies, energy)
        args = ["tiff", "--stack", os.path.join(d, "stack.tif"), "--energies", energies, "--flat", os.path.join(d, "flat.tif")]
        r = self.run_convert(*args, "--register", "--out", os.path.join(d, "reg.h5"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("registered to energy", r.stdout)
        with h5py.File(os.path.join(d, "reg.h5"), "r") as f:
            shifts = f["registration/shifts"][()]
            registered = f["registration/registered"][()].astype(bool)
            self.assertEqual(f["registration/shifts"].attrs["units"], "pixel")
        # The simulated sample has nothing but iron: below the edge there is no structure to
        # align, and those energies are left alone and reported; from the edge on all are shifted.
        self.assertTrue(registered[energy >= 7125].all())
        self.assertIn("not shifted", r.stdout)
        err = np.abs(shifts[registered] + drift[registered])
        self.assertLess(float(np.median(err)), 0.25)
        self.assertLess(float(err.max()), 0.75)
        self.assertEqual(self.run_convert(*args, "--out", os.path.join(d, "raw.h5")).returncode, 0)

        def rmse(scan):
            maps = self.fit(scan)
            inner = (slice(None), slice(4, -4), slice(4, -4))  # the Fourier shift wraps at the borders
            return float(np.sqrt(np.mean((maps[inner] - truth[inner]) ** 2)))
        original, registered, unregistered = rmse(sim), rmse(os.path.join(d, "reg.h5")), rmse(os.path.join(d, "raw.h5"))
        self.assertLess(registered, original + 0.02)
        self.assertGreater(unregistered, registered + 0.02)

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
    ARGS, argv = binaries.parse(__doc__)
    unittest.main(argv=argv)
