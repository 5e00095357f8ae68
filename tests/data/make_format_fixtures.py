#!/usr/bin/python3
"""Writes the small beamline-format scans in tests/data/formats/ that python_convert takes
through xanes-convert → xanesd fit: one simulated Fe K-edge transmission scan (10×12 px, every
3rd energy of the HXN grid, Magnetite/Goethite/Pyrite regions, Poisson counts) saved as

  tiff/stack.tif, flat.tif (one page per energy), dark.tif, energies_keV.txt   a full-field TIFF stack
  stxm/scan.nxstxm.h5                                                            NXstxm: I0·T, I0 in control/
  xim/Stack_001.hdr, Stack_001_aNNN.xim, i0.txt                                  ALS/aXis2000 .hdr + text images
  truth.h5                                                                       the simulation's fractions

Simulated from the shipped references (config/references), not measured.
Run from the repository root after a build:
  /usr/bin/python3 tests/data/make_format_fixtures.py --simulate build/clients/xanes-simulate"""
import argparse
import pathlib
import subprocess
import tempfile

import h5py
import numpy as np
import tifffile

here = pathlib.Path(__file__).resolve().parent
refs = here.parent.parent / "config" / "references"
out = here / "formats"
SPECIES = "Magnetite,Goethite,Pyrite"


def write_nxstxm(path, energy, transmission, i0):
    """An NXstxm stack: transmitted counts I0(E)·T in Counter0/data, the I0 monitor in control/."""
    with h5py.File(path, "w") as f:
        e = f.create_group("entry1")
        e.attrs["NX_class"] = "NXentry"
        e["definition"] = "NXstxm"
        g = e.create_group("Counter0")
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "data"
        g.attrs["axes"] = ["energy", "sample_y", "sample_x"]
        g["data"] = (i0[:, None, None] * transmission).astype(np.float32)
        g["energy"] = energy
        g["sample_y"] = np.arange(transmission.shape[1]) * 0.05
        g["sample_x"] = np.arange(transmission.shape[2]) * 0.05
        c = e.create_group("control")
        c.attrs["NX_class"] = "NXmonitor"
        c["data"] = i0


def write_als_stack(directory, energy, transmission, i0):
    """The same data as ALS STXMs write it: Stack_001.hdr naming the energies, a text image
    Stack_001_aNNN.xim of I0·T per energy, and I0 in i0.txt."""
    directory = pathlib.Path(directory)
    with open(directory / "Stack_001.hdr", "w") as f:
        f.write('ScanDefinition = { Label = "Stack_001.hdr"; Type = "Image Scan"; Flags = "Image Multi-Region";\n'
                '\tRegions = (1,\n{\n\t\t\tPAxis = { Name = "Sample X"; Unit = "um"; Min = 0; Max = 1; Dir = 1;\n'
                '\t\t\t\tPoints = (2, 0, 1);\n};\n});\n\n'
                '\tStackAxis = { Name = "Energy"; Unit = "eV"; Min = %g; Max = %g; Dir = 1;\n'
                '\t\tPoints = (%d, %s);\n};\n\n\tChannels = (1, { Name = "Counter0"; Unit = "counts";});\n};\n'
                % (energy[0], energy[-1], len(energy), ", ".join("%.4f" % e for e in energy)))
    for e in range(len(energy)):
        np.savetxt(directory / ("Stack_001_a%03d.xim" % e), i0[e] * transmission[e], fmt="%.2f", delimiter="\t")
    np.savetxt(directory / "i0.txt", i0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--simulate", required=True, help="the xanes-simulate binary")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        energies = np.loadtxt(refs / "fe_k_energies_hxn.txt")[::3]
        e_file = pathlib.Path(tmp) / "e.txt"
        np.savetxt(e_file, energies, fmt="%.4f")
        sim = pathlib.Path(tmp) / "sim.h5"
        subprocess.run([a.simulate, "--refs", str(refs / "fe_k_library_normalized.nor"), "--use", SPECIES,
                        "--energies", str(e_file), "--shape", "10x12", "--mode", "transmission", "--counts", "20000",
                        "--dark", "20", "--layout", "regions", "--seed", "5", "--out", str(sim)], check=True)
        with h5py.File(sim, "r") as f:
            counts, flat, dark = f["raw/counts"][()], f["raw/flat"][()], f["raw/dark"][()]
            energy = f["energy"][()]
            truth = f["truth/fractions"][()]
            names = [n.decode() if isinstance(n, bytes) else n for n in f["truth/reference_names"][()]]
    transmission = (counts - dark) / (flat - dark)

    d = out / "tiff"
    d.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(d / "stack.tif", counts.astype(np.float32))
    tifffile.imwrite(d / "flat.tif", flat.astype(np.float32))
    tifffile.imwrite(d / "dark.tif", dark.astype(np.float32))
    np.savetxt(d / "energies_keV.txt", energy / 1000, fmt="%.7f", header="energies in keV")

    (out / "stxm").mkdir(exist_ok=True)
    i0 = 5.0e4 * (1 + 0.1 * np.linspace(0, 1, len(energy)))  # an ion chamber's drifting I0
    write_nxstxm(out / "stxm" / "scan.nxstxm.h5", energy, transmission, i0)
    (out / "xim").mkdir(exist_ok=True)
    write_als_stack(out / "xim", energy, transmission, 2.0e4 * np.ones(len(energy)))

    with h5py.File(out / "truth.h5", "w") as f:
        f["fractions"] = truth
        f["reference_names"] = names
        f["energy"] = energy


if __name__ == "__main__":
    main()
