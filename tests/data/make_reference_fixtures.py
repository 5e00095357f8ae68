#!/usr/bin/python3
"""Writes the small reference files in tests/data/references/ in the formats beamlines keep
(XDI scans with detector columns, CSV with a header row, a gzipped Athena project, an L-edge
spectrum in optical density). Made from the shipped Fe K library and standards; the Fe L-edge
spectra are synthetic (two-peak L3/L2 shapes, see below), not measurements.
Run from anywhere: /usr/bin/python3 tests/data/make_reference_fixtures.py"""
import gzip
import pathlib

import numpy as np

here = pathlib.Path(__file__).resolve().parent
refs = here.parent.parent / "config" / "references"
out = here / "references"
out.mkdir(exist_ok=True)

lib = np.loadtxt(refs / "fe_k_library_normalized.nor")
names = [l.split(":", 1)[1].strip() for l in open(refs / "fe_k_library_normalized.nor") if l.startswith("# Column.")][1:]
sel = np.arange(0, lib.shape[0], 4)  # every 4th point keeps the files small
E = lib[sel, 0]
col = {n: lib[sel, i + 1] for i, n in enumerate(names)}


def raw_mu(norm, offset, slope, step):
    """A raw μ(E): a sloped pre-edge line plus `step` times the normalized spectrum."""
    return offset + slope * (E - 7112.0) + step * norm


# XDI transmission scan of goethite: energy, i0, itrans only (μ = ln(i0/itrans)).
mu = raw_mu(col["Goethite"], 0.4, -1e-4, 1.3)
i0 = 2.0e5 * (1 + 0.02 * np.sin(E / 7.0))
it = i0 * np.exp(-mu)
with open(out / "goethite_trans.xdi", "w") as f:
    f.write("# XDI/1.0 GSE/1.0\n# Column.1: energy eV\n# Column.2: i0\n# Column.3: itrans\n"
            "# Element.symbol: Fe\n# Element.edge: K\n# Sample.name: Goethite\n"
            "# Scan.start_time: 2026-11-01T10:00:00\n#----\n# energy i0 itrans\n")
    for row in zip(E, i0, it):
        f.write("%.4f %.2f %.4f\n" % row)

# XDI fluorescence scan of magnetite with a μ column too: the μ column is used.
mu = raw_mu(col["Magnetite"], 0.3, 0.0, 2.0)
ifl = i0 * mu
with open(out / "magnetite_fluor.xdi", "w") as f:
    f.write("# XDI/1.0\n# Column.1: energy eV\n# Column.2: i0\n# Column.3: ifluor\n# Column.4: mufluor\n"
            "# Sample.name: Magnetite\n#----\n# energy i0 ifluor mufluor\n")
    for row in zip(E, i0, ifl, mu):
        f.write("%.4f %.2f %.4f %.6f\n" % row)

# XDI fluorescence scan of pyrite with raw columns only: μ = ifluor/i0.
mu = raw_mu(col["Pyrite"], 0.05, 0.0, 0.5)
with open(out / "pyrite_fluor_raw.xdi", "w") as f:
    f.write("# XDI/1.0\n# Column.1: energy eV\n# Column.2: i0\n# Column.3: ifluor\n#----\n# energy i0 ifluor\n")
    for row in zip(E, i0, i0 * mu):
        f.write("%.4f %.2f %.5f\n" % row)

# CSV with a header row, two normalized spectra, energies in keV.
with open(out / "fe_two.csv", "w") as f:
    f.write("energy_keV,Goethite,Pyrite\n")
    for e, g, p in zip(E, col["Goethite"], col["Pyrite"]):
        f.write("%.6f,%.6f,%.6f\n" % (e / 1000, g, p))

# Athena project (gzipped Perl Data::Dumper text): two μ(E) groups and one χ(k) group.
def perl_list(values):
    return "(" + ",".join("'%s'" % v for v in values) + ");"

groups = [("ahxyz", "Hematite NP", "xmu", 0.0, raw_mu(col["Hematite_NP"], 0.3, 2e-4, 1.7)),
          ("bqrst", "Fe(III)PO4", "xmu", 0.5, raw_mu(col["Fe(III)PO4"], 0.1, 0.0, 0.9)),
          ("ckuvw", "Fe foil chi", "chi", 0.0, np.zeros_like(E))]
text = ["# Athena project file -- Demeter version 0.9.26",
        "# This file created at 2026-11-01 10:00:00",
        "# Using Demeter 0.9.26 with perl 5.032001 and using Larch 0.9.47 on linux", "#", ""]
for old, label, dtype, eshift, y in groups:
    x = E - eshift  # Athena stores the unshifted energies and the shift in bkg_eshift
    text += ["$old_group = '%s';" % old,
             "@args = " + perl_list(["bkg_e0", "7112", "bkg_eshift", eshift, "datatype", dtype, "label", label,
                                     "is_xmu", 1 if dtype == "xmu" else 0]),
             "@x = " + perl_list(["%.4f" % v for v in x]),
             "@y = " + perl_list(["%.6f" % v for v in y]),
             "@i0 = ();", "@signal = ();", "@stddev = ();",
             "[record] # create object and set arrays in slurry", ""]
text += ["@journal = ();", "", "1;", ""]
with open(out / "fe_project.prj", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    f.write("\n".join(text).encode())

# Fe L-edge spectra in optical density, SYNTHETIC: L3 (~708 eV) and L2 (~721 eV) white lines
# as Lorentzian peaks over arctan continuum steps (2:1, as the spin-orbit split levels) and a
# sloped pre-edge from other matter. Fe(II) has its strongest L3 peak ~1.6 eV below Fe(III)'s.
EL = np.arange(700.0, 730.01, 0.2)


def peak(c, w, h):
    return h / (1 + ((EL - c) / w) ** 2)


def step(c):
    return 0.5 + np.arctan((EL - c) / 0.8) / np.pi


base = 0.12 + 0.002 * (EL - 700) + 0.06 * step(708) + 0.03 * step(721)
spectra = {"FeII_L": base + peak(707.8, 0.45, 0.9) + peak(709.4, 0.5, 0.35) + peak(720.8, 0.8, 0.3),
           "FeIII_L": base + peak(708.0, 0.45, 0.3) + peak(709.6, 0.5, 0.9) + peak(722.2, 0.8, 0.3)}
for name, od in spectra.items():
    with open(out / ("%s_od_synthetic.txt" % name.split("_")[0].lower()), "w") as f:
        f.write("# SYNTHETIC Fe L2,3 spectrum in optical density (not a measurement), made by\n"
                "# tests/data/make_reference_fixtures.py\n#%%Name: %s\n# energy (eV)  OD\n" % name)
        for e, v in zip(EL, od):
            f.write("%.2f %.6f\n" % (e, v))
print("wrote", sorted(p.name for p in out.iterdir()))
