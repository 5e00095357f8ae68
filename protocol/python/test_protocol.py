#!/usr/bin/python3
"""Tests of xanesd/protocol.py: encode/decode round trips, the golden fixtures of
protocol/fixtures (py_* written by make_fixtures.py, cpp_* by the C++ tests), and the
rejection of malformed messages.

Run: /usr/bin/python3 protocol/python/test_protocol.py [-v]   (exit status 0 = all passed)

A fixture's `.expect.json` is {"topic", "header": {...}, "arrays": [{"name", "dtype",
"shape", "values", optional "byteorder"}]}; or {"error": "substring"} for a message that
must be rejected with a ProtocolError whose text contains the substring.
"""

import glob
import json
import math
import os
import sys
import unittest

import msgpack
import numpy as np

HERE = os.path.dirname(os.path.realpath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
sys.path.insert(0, HERE)
from xanesd import protocol as xp  # noqa: E402

ALL_DTYPES = ["uint8", "uint16", "uint32", "uint64", "int16", "int32", "int64", "float32", "float64"]


def sample(dtype: np.dtype, shape):
    n = int(np.prod(shape))
    if dtype.kind == "f":
        vals = np.linspace(-3.5, 1e6, n) if n else np.zeros(0)
    else:
        info = np.iinfo(dtype)
        vals = np.linspace(info.min, info.max, n, dtype=np.float64) if n else np.zeros(0)
        vals = np.clip(np.round(vals), info.min, info.max)
        vals = np.array([int(v) for v in vals], dtype=object)
        if n:
            vals[0], vals[-1] = info.min, info.max  # exact extremes (float rounding aside)
    return np.array(vals, dtype=dtype).reshape(shape)


def pack(h):
    return msgpack.packb(h, use_bin_type=True)


class RoundTrip(unittest.TestCase):
    def test_every_dtype_and_byte_order(self):
        for name in ALL_DTYPES:
            for bo in ("<", ">"):
                for shape in [(3,), (2, 3), (2, 1, 4), (0,), (), (1, 0, 2)]:
                    dt = np.dtype(name).newbyteorder(bo)
                    a = sample(dt, shape)
                    frames = xp.encode("maps/test", {"type": "map", "k": 1}, [("a", a)])
                    self.assertEqual(len(frames), 3)
                    self.assertTrue(all(isinstance(f, bytes) for f in frames))
                    m = xp.decode(frames)
                    d = m.header["arrays"][0]
                    self.assertEqual(d["dtype"], name)
                    self.assertEqual(d["shape"], list(shape))
                    self.assertEqual(d["byteorder"], "|" if dt.itemsize == 1 else bo)
                    b = m.arrays["a"]
                    self.assertEqual(b.dtype.name, name)
                    self.assertEqual(b.shape, shape)
                    if dt.itemsize > 1:
                        got_bo = xp._NATIVE if b.dtype.byteorder == "=" else b.dtype.byteorder
                        self.assertEqual(got_bo, bo, f"{name}{bo}")
                    np.testing.assert_array_equal(b, a, err_msg=f"{name} {bo} {shape}")
                    self.assertEqual(len(frames[2]), a.size * dt.itemsize)

    def test_raw_bytes_follow_the_byte_order(self):
        a = np.array([1.0, 2.0], dtype=">f4")
        frames = xp.encode("t", {}, [("a", a)])
        self.assertEqual(frames[2], np.array([1.0, 2.0], dtype=">f4").tobytes())
        self.assertEqual(frames[2][:4], b"\x3f\x80\x00\x00")
        b = np.array([1, 2], dtype="<u2")
        self.assertEqual(xp.encode("t", {}, [("b", b)])[2], b"\x01\x00\x02\x00")

    def test_non_contiguous_arrays_are_sent_in_c_order(self):
        a = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran-ordered view
        m = xp.decode(xp.encode("t", {}, [("a", a)]))
        np.testing.assert_array_equal(m.arrays["a"], a)
        self.assertEqual(m.header["arrays"][0]["shape"], [4, 3])

    def test_header_fields_and_multiple_arrays(self):
        h = {"type": "map", "scan_id": "s1", "version": np.int64(3), "final": True,
             "nested": {"x": [1, 2.5, "three", None]}, "time_unix": np.float64(1.5)}
        frames = xp.encode("maps/fractions", h, [("a", np.zeros((2, 2), np.float32)),
                                                 ("b", np.ones(3, np.uint8))])
        self.assertNotIn("protocol", h, "encode must not modify the caller's header")
        m = xp.decode(frames)
        self.assertEqual(m.topic, "maps/fractions")
        self.assertEqual(m.header["protocol"], 1)
        self.assertEqual(m.header["version"], 3)
        self.assertIs(m.header["final"], True)
        self.assertEqual(m.header["nested"], {"x": [1, 2.5, "three", None]})
        self.assertEqual([d["name"] for d in m.header["arrays"]], ["a", "b"])
        self.assertEqual(set(m.arrays), {"a", "b"})

    def test_zero_copy_and_accepted_frame_types(self):
        a = np.arange(6, dtype="<f8").reshape(2, 3)
        frames = xp.encode("t", {}, [("a", a)])
        buf = bytearray(frames[2])
        m = xp.decode([frames[0], memoryview(frames[1]), buf])
        buf[0:8] = np.float64(42.0).tobytes()  # a view of the frame, not a copy
        self.assertEqual(m.arrays["a"][0, 0], 42.0)

    def test_decoder_defaults_like_cpp(self):
        # no `arrays` key = no arrays; `byteorder` missing = '<'; '=' = native.
        m = xp.decode([b"t", pack({"protocol": 1})])
        self.assertEqual(m.arrays, {})
        h = {"protocol": 1, "arrays": [{"name": "a", "dtype": "uint16", "shape": [2]}]}
        self.assertEqual(xp.decode([b"t", pack(h), b"\x01\x00\x02\x00"]).arrays["a"].tolist(), [1, 2])
        h["arrays"][0]["byteorder"] = ">"
        self.assertEqual(xp.decode([b"t", pack(h), b"\x00\x01\x00\x02"]).arrays["a"].tolist(), [1, 2])
        h["arrays"][0]["byteorder"] = "="
        self.assertEqual(xp.decode([b"t", pack(h), np.array([1, 2], "=u2").tobytes()]).arrays["a"].tolist(), [1, 2])
        h["arrays"][0]["byteorder"] = "|"  # treated as little-endian, like C++
        self.assertEqual(xp.decode([b"t", pack(h), b"\x01\x00\x02\x00"]).arrays["a"].tolist(), [1, 2])
        # unknown header keys are kept, not rejected (forward compatibility)
        self.assertEqual(xp.decode([b"t", pack({"protocol": 1, "future": {"x": 1}})]).header["future"], {"x": 1})

    def test_frames_file_container(self):
        import tempfile
        frames = [b"abc", b"", b"\x00" * 5]
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "x.frames")
            xp.write_frames_file(p, frames)
            with open(p, "rb") as f:
                self.assertEqual(f.read(), b"\x03\x00\x00\x00abc\x00\x00\x00\x00\x05\x00\x00\x00" + b"\x00" * 5)
            self.assertEqual(xp.read_frames_file(p), frames)
            with open(p, "ab") as f:
                f.write(b"\x09\x00\x00\x00ab")
            with self.assertRaises(xp.ProtocolError):
                xp.read_frames_file(p)

    def test_split_messages(self):
        a = xp.encode("maps/a", {"v": 1}, [("x", np.zeros(2)), ("y", np.zeros(1))])
        b = xp.encode("status", {"v": 2}, [])
        c = xp.encode("maps/c", {"v": 3}, [("z", np.zeros(3, np.uint16))])
        parts = xp.split_messages(a + b + c)
        self.assertEqual([len(p) for p in parts], [4, 2, 3])
        self.assertEqual([xp.decode(p).topic for p in parts], ["maps/a", "status", "maps/c"])
        with self.assertRaises(xp.ProtocolError):
            xp.split_messages(a[:-1])
        with self.assertRaises(xp.ProtocolError):
            xp.split_messages(b + [b"lonely topic"])


class IngestHelpers(unittest.TestCase):
    def test_start(self):
        dark = np.zeros((2, 3), np.uint16)
        m = xp.decode(xp.start_message("s", (2, 3), np.array([7100, 7110.5]), "fluorescence",
                                       xrf_channels=("Fe",), dark=dark))
        self.assertEqual(m.topic, "start")
        h = m.header
        self.assertEqual((h["type"], h["scan_id"], h["shape"], h["energies_eV"], h["mode"], h["order"],
                          h["xrf_channels"]),
                         ("start", "s", [2, 3], [7100.0, 7110.5], "fluorescence", "energy-major", ["Fe"]))
        self.assertIsInstance(h["energies_eV"][0], float)
        self.assertEqual(list(m.arrays), ["dark"])
        with self.assertRaises(ValueError):
            xp.start_message("s", (2, 3), [1.0], "absorption")

    def test_start_references(self):
        self.assertNotIn("references", xp.decode(xp.start_message("s", (2, 3), [1.0, 2.0], "transmission")).header)
        one = xp.decode(xp.start_message("s", (2, 3), [1.0, 2.0], "transmission", references="refs/fe_l.txt"))
        self.assertEqual(one.header["references"], ["refs/fe_l.txt"])
        two = xp.decode(xp.start_message("s", (2, 3), [1.0, 2.0], "transmission", references=("Goethite", "Pyrite")))
        self.assertEqual(two.header["references"], ["Goethite", "Pyrite"])
        for bad in ([], "", ["a", ""]):
            with self.assertRaises(ValueError):
                xp.start_message("s", (2, 3), [1.0, 2.0], "transmission", references=bad)

    def test_frame_full(self):
        c = np.ones((2, 3), np.float32)
        m = xp.decode(xp.frame_message("s", 0, 1, 7110.0, c))
        self.assertEqual(m.header["region"], {"kind": "full"})
        self.assertNotIn("i0", m.header)
        self.assertEqual([d["name"] for d in m.header["arrays"]], ["counts"])
        self.assertEqual((m.header["seq"], m.header["energy_index"], m.header["energy_eV"]), (0, 1, 7110.0))
        self.assertIsInstance(m.header["energy_eV"], float)

    def test_frame_rows_and_array_order(self):
        c = np.ones((2, 3), np.float32)
        m = xp.decode(xp.frame_message("s", 4, 0, 7100, c, region=("rows", 5), i0=np.full((2, 3), 2.0),
                                       dark=np.zeros((2, 3)), flat=np.ones((2, 3)),
                                       xrf=np.zeros((1, 2, 3), np.uint32)))
        self.assertEqual(m.header["region"], {"kind": "rows", "row0": 5, "nrows": 2})
        self.assertEqual([d["name"] for d in m.header["arrays"]], ["counts", "i0", "dark", "flat", "xrf"])
        self.assertIsInstance(m.header["energy_eV"], float)

    def test_frame_pixels_and_scalar_i0(self):
        m = xp.decode(xp.frame_message("s", 1, 0, 7100.0, [5, 6], region=("pixels", [3, 4]), i0=np.float32(2.5)))
        self.assertEqual(m.header["region"], {"kind": "pixels"})
        self.assertEqual(m.header["i0"], 2.5)
        self.assertEqual(m.arrays["pixels"].dtype, np.int64)
        self.assertEqual(m.arrays["pixels"].tolist(), [3, 4])
        m = xp.decode(xp.frame_message("s", 1, 0, 7100.0, [5], region=("pixels", np.array([3], np.uint32)), i0=3))
        self.assertEqual(m.arrays["pixels"].dtype, np.uint32)
        self.assertEqual(m.header["i0"], 3.0)
        self.assertIsInstance(m.header["i0"], float)
        m = xp.decode(xp.frame_message("s", 1, 0, 7100.0, [5], region=("pixels", np.array([3], np.int32))))
        self.assertEqual(m.arrays["pixels"].dtype, np.int64)

    def test_spectra_batch(self):
        counts = np.arange(6, dtype=np.float32).reshape(3, 2)
        m = xp.decode(xp.spectra_message("s", 2, [1, 0], [7110.0, 7100.0], [4, 5, 6], counts, i0=[2.0, 4.0],
                                         xrf=np.ones((1, 3), np.float32)))
        self.assertEqual(m.header["energy_indices"], [1, 0])
        self.assertEqual(m.header["energies_eV"], [7110.0, 7100.0])
        self.assertEqual(m.header["i0"], [2.0, 4.0])
        self.assertNotIn("energy_index", m.header)
        self.assertEqual(m.header["region"], {"kind": "pixels"})
        self.assertEqual(m.arrays["counts"].shape, (3, 2))
        self.assertEqual(m.arrays["pixels"].tolist(), [4, 5, 6])
        with self.assertRaises(ValueError):
            xp.spectra_message("s", 2, [1, 0, 2], [1.0, 2.0, 3.0], [4, 5, 6], counts)

    def test_stop(self):
        m = xp.decode(xp.stop_message("s"))
        self.assertEqual(m.header["reason"], "completed")
        self.assertNotIn("frames_sent", m.header)
        m = xp.decode(xp.stop_message("s", "aborted", frames_sent=np.int64(12)))
        self.assertEqual((m.topic, m.header["type"], m.header["reason"], m.header["frames_sent"]),
                         ("stop", "stop", "aborted", 12))
        with self.assertRaises(ValueError):
            xp.stop_message("s", "broken")


def check_values(tc, got: np.ndarray, exp: dict, where: str):
    tc.assertEqual(got.dtype.name, exp["dtype"], where)
    tc.assertEqual(list(got.shape), list(exp["shape"]), where)
    if "byteorder" in exp and got.dtype.itemsize > 1:
        bo = got.dtype.byteorder if got.dtype.byteorder != "=" else xp._NATIVE
        tc.assertEqual(bo, exp["byteorder"], where)
    vals = exp["values"]
    flat = got.ravel()
    tc.assertEqual(len(flat), len(vals), where)
    if got.dtype.kind == "f":
        e = np.array([float("nan") if v is None else v for v in vals], dtype=np.float64)
        np.testing.assert_allclose(flat.astype(np.float64), e, rtol=1e-6, atol=0, equal_nan=True, err_msg=where)
    else:
        tc.assertEqual([int(v) for v in flat], [int(v) for v in vals], where)


def header_equal(tc, got, exp, where):
    if isinstance(exp, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        tc.assertTrue(math.isclose(got, exp, rel_tol=1e-12) or got == exp, f"{where}: {got!r} != {exp!r}")
    elif isinstance(exp, dict):
        tc.assertIsInstance(got, dict, where)
        for k, v in exp.items():
            tc.assertIn(k, got, f"{where}.{k} missing")
            header_equal(tc, got[k], v, f"{where}.{k}")
    elif isinstance(exp, list):
        tc.assertIsInstance(got, list, where)
        tc.assertEqual(len(got), len(exp), where)
        for i, (g, e) in enumerate(zip(got, exp)):
            header_equal(tc, g, e, f"{where}[{i}]")
    else:
        tc.assertEqual(got, exp, where)
        tc.assertEqual(type(got) is bool, type(exp) is bool, f"{where}: bool vs number")


class Fixtures(unittest.TestCase):
    def fixture_files(self, prefix):
        return sorted(glob.glob(os.path.join(FIXTURES, prefix + "*.frames")))

    def check_fixture(self, path):
        base = path[: -len(".frames")]
        name = os.path.basename(base)
        with open(base + ".expect.json") as f:
            exp = json.load(f)
        frames = xp.read_frames_file(path)
        if "error" in exp:
            with self.assertRaises(xp.ProtocolError, msg=name) as cm:
                xp.decode(frames)
            self.assertIn(exp["error"], str(cm.exception), name)
            return
        m = xp.decode(frames)
        self.assertEqual(m.topic, exp["topic"], name)
        self.assertEqual(m.header["protocol"], 1, name)
        for k, v in exp.get("header", {}).items():
            self.assertIn(k, m.header, f"{name}: header key '{k}' missing")
            header_equal(self, m.header[k], v, f"{name}: header.{k}")
        exp_arrays = exp.get("arrays", [])
        self.assertEqual([d["name"] for d in m.header["arrays"]], [a["name"] for a in exp_arrays], name)
        for a in exp_arrays:
            check_values(self, m.arrays[a["name"]], a, f"{name}: array {a['name']}")
        # re-encoding what was decoded gives the same message back
        again = xp.decode(xp.encode(m.topic, {k: v for k, v in m.header.items() if k not in ("arrays", "protocol")},
                                    [(d["name"], m.arrays[d["name"]]) for d in m.header["arrays"]]))
        self.assertEqual(again.header, m.header, name)

    def test_python_fixtures(self):
        files = self.fixture_files("py_")
        names = {os.path.basename(p) for p in files}
        self.assertTrue({"py_start.frames", "py_frame_rows.frames", "py_frame_pixels.frames",
                         "py_stop.frames"} <= names, f"run make_fixtures.py (found {sorted(names)})")
        for p in files:
            with self.subTest(fixture=os.path.basename(p)):
                self.check_fixture(p)

    def test_python_fixtures_are_current(self):
        # make_fixtures.py run now produces the same expectations as the committed ones
        import make_fixtures
        for name, frames, keys in make_fixtures.fixtures():
            with open(os.path.join(FIXTURES, name + ".expect.json")) as f:
                self.assertEqual(json.load(f), json.loads(json.dumps(make_fixtures.expect_for(frames, keys))), name)

    def test_python_fixture_details(self):
        m = xp.decode(xp.read_frames_file(os.path.join(FIXTURES, "py_frame_rows.frames")))
        self.assertEqual(m.header["arrays"][0]["byteorder"], ">")
        self.assertEqual(m.arrays["counts"].dtype.str, ">f4")
        self.assertEqual(m.arrays["i0"].dtype.name, "float64")
        m = xp.decode(xp.read_frames_file(os.path.join(FIXTURES, "py_frame_pixels.frames")))
        self.assertEqual(m.arrays["pixels"].dtype.name, "int64")
        self.assertEqual(m.arrays["counts"].dtype.name, "uint16")
        self.assertIsInstance(m.header["i0"], float)

    def test_cpp_fixtures(self):
        files = self.fixture_files("cpp_")
        if not files:
            self.skipTest("no cpp_*.frames in protocol/fixtures yet")
        for p in files:
            with self.subTest(fixture=os.path.basename(p)):
                self.check_fixture(p)

    def test_cpp_products_keep_their_contract(self):
        # the result products test_protocol (C++) wrote, checked by the Python contract
        files = [p for p in self.fixture_files("cpp_")
                 if xp.decode(xp.read_frames_file(p)).topic in xp.PRODUCT_TOPICS]
        self.assertGreaterEqual(len(files), 3, "run test_protocol with XANESD_WRITE_FIXTURES=1")
        for p in files:
            with self.subTest(fixture=os.path.basename(p)):
                m = xp.check_product(xp.decode(xp.read_frames_file(p)))
                if m.topic == "maps/fractions":
                    k = len(m["reference_names"])
                    self.assertEqual(m.arrays["fractions"].shape, (k, m["rows"], m["cols"]))

    def test_products_that_break_their_contract_are_refused(self):
        def fixture(name):
            return xp.decode(xp.read_frames_file(os.path.join(FIXTURES, f"cpp_{name}.frames")))

        def refused(msg, why):
            with self.assertRaisesRegex(xp.ProtocolError, why):
                xp.check_product(msg)

        m = fixture("maps_fractions")
        m.header["reference_names"] = m.header["reference_names"] + ["Pyrite"]
        refused(m, "'fractions' must have shape 3×2×3")
        m = fixture("maps_fractions")
        del m.arrays["mask"]
        refused(m, "no array 'mask'")
        m = fixture("maps_fractions")
        m.header["spatial"] = False
        refused(m, "'spatial' must say")
        m = fixture("maps_fractions")
        m.header["final"] = 1
        refused(m, "'final' must be a bool")
        m = fixture("clusters")
        m.header["thickness"] = m.header["thickness"][:1]
        refused(m, "one entry per cluster")
        m = fixture("clusters")
        m.header["unexplained"] = [9]
        refused(m, "'unexplained' names")
        m = fixture("errors")
        m.header["count"] = 0
        refused(m, "'count' must be an int >= 1")
        m = fixture("errors")
        m.topic = "maps/unknown"
        refused(m, "unknown result topic")

    def test_control_requests_table(self):
        # the golden table the C++ ControlRequest::parse reads too: the same verdicts and codes
        with open(os.path.join(FIXTURES, "control_requests.json")) as f:
            table = json.load(f)
        self.assertGreaterEqual(len(table), 30)
        for row in table:
            with self.subTest(request=row["request"]):
                if row["ok"]:
                    self.assertIs(xp.check_request(row["request"]), row["request"])
                else:
                    with self.assertRaises(xp.RequestError) as e:
                        xp.check_request(row["request"])
                    self.assertEqual(e.exception.code, row["code"])
                    self.assertIn(row["error"], str(e.exception))

    def test_cpp_pixel_reply(self):
        # the golden `pixel` reply test_pixel (C++) took from the real daemon
        path = os.path.join(FIXTURES, "cpp_pixel.reply.json")
        if not os.path.exists(path):
            self.skipTest("no cpp_pixel.reply.json in protocol/fixtures yet")
        with open(path) as f:
            raw = json.load(f)
        with open(os.path.join(FIXTURES, "cpp_pixel.request.json")) as f:
            req = json.load(f)
        self.assertEqual((req["cmd"], req["x"], req["y"]), ("pixel", raw["x"], raw["y"]))
        r = xp.pixel_reply(raw)
        n, k = len(r["energies_eV"]), len(r["reference_names"])
        self.assertGreater(n, 2)
        self.assertEqual(r["contributions"].shape, (k, n))
        np.testing.assert_allclose(r["model"], r["background"] + r["contributions"].sum(axis=0), rtol=1e-12, atol=0)
        self.assertTrue(r["mask"])
        self.assertAlmostEqual(float(r["fractions"].sum()), 1.0, places=5)
        rms = float(np.sqrt(np.mean((r["spectrum"] - r["model"]) ** 2)))
        self.assertAlmostEqual(rms / r["residual"], 1.0, places=3)
        bad = dict(raw, spectrum=raw["spectrum"][:-1])
        with self.assertRaises(xp.ProtocolError):
            xp.pixel_reply(bad)

    def test_other_fixtures(self):
        files = [p for p in self.fixture_files("") if not os.path.basename(p).startswith(("py_", "cpp_"))]
        if not files:
            self.skipTest("no other fixtures")
        for p in files:
            with self.subTest(fixture=os.path.basename(p)):
                self.check_fixture(p)


class Malformed(unittest.TestCase):
    def good(self):
        return xp.encode("frame", {"type": "frame"}, [("counts", np.arange(6, dtype=np.float32).reshape(2, 3))])

    def rejects(self, frames, *needles):
        with self.assertRaises(xp.ProtocolError) as cm:
            xp.decode(frames)
        for n in needles:
            self.assertIn(n, str(cm.exception))
        return str(cm.exception)

    def with_header(self, mutate, arrays=None):
        f = self.good()
        h = msgpack.unpackb(f[1], raw=False)
        mutate(h)
        return [f[0], pack(h)] + (f[2:] if arrays is None else arrays)

    def test_good_is_good(self):
        xp.decode(self.good())

    def test_missing_frames(self):
        self.rejects([], "0 frame(s)")
        self.rejects([b"frame"], "1 frame(s)")
        self.rejects(self.good()[:2], "describes 1 array(s) but 0 array frame(s)")
        self.rejects(self.good() + [b"\x00" * 4], "describes 1 array(s) but 2 array frame(s)")

    def test_protocol_version(self):
        self.rejects(self.with_header(lambda h: h.update(protocol=2)), "unsupported protocol version 2")
        self.rejects(self.with_header(lambda h: h.update(protocol=0)), "protocol version")
        self.rejects(self.with_header(lambda h: h.update(protocol=1.0)), "protocol version")
        self.rejects(self.with_header(lambda h: h.update(protocol=True)), "protocol version")
        self.rejects(self.with_header(lambda h: h.update(protocol="1")), "protocol version")
        self.rejects(self.with_header(lambda h: h.pop("protocol")), "missing key 'protocol'")

    def test_byte_count_mismatch(self):
        f = self.good()
        self.rejects(f[:2] + [f[2][:-1]], "counts", "23 bytes", "needs 24")
        self.rejects(f[:2] + [f[2] + b"\x00"], "25 bytes")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=[3, 3])), "needs 36")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(dtype="float64")), "needs 48")

    def test_unknown_dtype(self):
        for bad in ("float16", "complex64", "bool", "int8", "<f4", "f4", ""):
            self.rejects(self.with_header(lambda h: h["arrays"][0].update(dtype=bad)), "unknown dtype")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(dtype=4)), "'dtype' must be a string")

    def test_header_not_a_map(self):
        f = self.good()
        for obj in ([1, 2], "header", 1, None, b"bin"):
            self.rejects([f[0], pack(obj)] + f[2:], "not a msgpack map")

    def test_garbage_msgpack(self):
        f = self.good()
        self.rejects([f[0], b""] + f[2:], "malformed msgpack")
        self.rejects([f[0], b"\xc1"] + f[2:], "malformed msgpack")  # never-used type byte
        self.rejects([f[0], f[1][:-3]] + f[2:], "malformed msgpack")  # truncated
        self.rejects([f[0], b"\x85\xa1a"] + f[2:], "malformed msgpack")
        self.rejects([f[0], f[1] + b"\x00"] + f[2:], "trailing bytes")
        self.rejects([f[0], b"\x81\x01\x02"] + f[2:])  # int map key
        self.rejects([f[0], pack({b"protocol": 1})] + f[2:])  # bin map key
        self.rejects([f[0], pack({"protocol": 1, "n": {"x": {1: 2}}})] + f[2:])
        self.rejects([f[0], pack({"protocol": 1, "t": msgpack.ExtType(5, b"x")})] + f[2:], "unsupported msgpack type")
        self.rejects([f[0], b"\x82\xa8protocol\x01\xa1t\xd6\xff\x00\x00\x00\x01"] + f[2:], "unsupported msgpack type")
        self.rejects([f[0], b"\xde" + b"\x00" * (2 << 20)] + f[2:], "larger than 1 MiB")

    def test_too_deep(self):
        v = 1
        for _ in range(20):
            v = [v]
        self.rejects(self.with_header(lambda h: h.update(deep=v)), "nests too deeply")
        v = 1
        for _ in range(15):
            v = [v]
        xp.decode(self.with_header(lambda h: h.update(deep=v)))  # depth 16: allowed

    def test_bad_descriptors(self):
        self.rejects(self.with_header(lambda h: h.update(arrays={"a": 1})), "'arrays' is not a list")
        self.rejects(self.with_header(lambda h: h.update(arrays=[5])), "descriptor 0 is not a map")
        self.rejects(self.with_header(lambda h: h["arrays"][0].pop("name")), "missing key 'name'")
        self.rejects(self.with_header(lambda h: h["arrays"][0].pop("dtype")), "missing key 'dtype'")
        self.rejects(self.with_header(lambda h: h["arrays"][0].pop("shape")), "missing key 'shape'")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=6)), "shape must be a list")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=[1] * 9)), "at most 8")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=[2.0, 3])), "shape entries must be ints")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=[True, 6])), "shape entries must be ints")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=[-2, -3])), "negative dimension")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(byteorder="!")), "byteorder")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(byteorder=1)), "'byteorder' must be a string")
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=[1 << 40] * 2)), "shape overflows")
        # 2^61 float64 elements need 2^64 bytes: must not wrap around to match an empty frame
        self.rejects(self.with_header(lambda h: h["arrays"][0].update(shape=[1 << 61], dtype="float64"), [b""]),
                     "needs 18446744073709551616")

    def test_encode_rejects_unsupported(self):
        for a in (np.zeros(2, np.float16), np.zeros(2, bool), np.zeros(2, np.int8), np.zeros(2, np.complex64),
                  np.array(["a"])):
            with self.assertRaises(xp.ProtocolError):
                xp.encode("t", {}, [("a", a)])
        with self.assertRaises(xp.ProtocolError):
            xp.encode("t", {"x": object()}, [])
        with self.assertRaises(xp.ProtocolError):
            xp.encode("t", [], [])


class Sockets(unittest.TestCase):
    """Client, subscribe and recv against in-process fake daemon sockets (no xanesd needed)."""

    def setUp(self):
        try:
            import zmq
        except ImportError:
            self.skipTest("pyzmq not available")
        self.zmq = zmq
        self.ctx = zmq.Context.instance()

    def test_client_request_snapshot_and_timeout(self):
        import threading
        import time
        zmq = self.zmq
        cached = (xp.encode("maps/thickness", {"type": "map", "scan_id": "s", "version": 4},
                            [("thickness", np.ones((2, 2), np.float32))])
                  + xp.encode("status", {"type": "status", "scan_id": "s", "version": 4}, [])
                  + xp.encode("maps/fractions", {"type": "map", "version": 4},
                              [("fractions", np.zeros((2, 2, 2), np.float32)), ("extra", np.zeros(1, np.uint8))]))

        def serve(rep, n):
            for _ in range(n):
                if not rep.poll(5000):
                    return
                req = json.loads(rep.recv())
                if req["cmd"] == "snapshot":
                    rep.send_multipart([json.dumps({"ok": True, "version": 4, "publications": 3}).encode()] + cached)
                else:
                    rep.send(json.dumps({"ok": True, "echo": req}).encode())

        def server(endpoint, n):
            rep = self.ctx.socket(zmq.REP)
            rep.setsockopt(zmq.LINGER, 0)
            for _ in range(200):  # a closed socket releases its address asynchronously
                try:
                    rep.bind(endpoint)
                    break
                except zmq.ZMQError:
                    time.sleep(0.01)
            t = threading.Thread(target=serve, args=(rep, n), daemon=True)
            t.start()
            return rep, t

        rep, t = server("tcp://127.0.0.1:*", 2)
        endpoint = rep.getsockopt_string(zmq.LAST_ENDPOINT)
        c = xp.Client(endpoint, timeout_ms=3000)
        try:
            # A pipeline command carries the client's timeout (the daemon cancels it then).
            self.assertEqual(c.request("configure", set={"fit.method": "nnls"})["echo"],
                             {"cmd": "configure", "set": {"fit.method": "nnls"}, "timeout_ms": 3000})
            reply, msgs = c.snapshot()
            self.assertEqual(reply["publications"], 3)
            self.assertEqual([m.topic for m in msgs], ["maps/thickness", "status", "maps/fractions"])
            self.assertEqual(set(msgs[2].arrays), {"fractions", "extra"})
            t.join()
            rep.close(linger=0)
            # nobody answers: TimeoutError ...
            c.timeout_ms = 200
            with self.assertRaises(TimeoutError):
                c.request("status")
            # ... and the client works again once a daemon is back (its socket was recreated)
            rep, t = server(endpoint, 1)
            c.timeout_ms = 3000
            self.assertEqual(c.request("status")["echo"], {"cmd": "status"})
            t.join()
        finally:
            rep.close(linger=0)
            c.close()

    def test_select_energies_arguments(self):
        import threading
        zmq = self.zmq
        rep = self.ctx.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        rep.bind("tcp://127.0.0.1:*")
        endpoint = rep.getsockopt_string(zmq.LAST_ENDPOINT)

        def serve():
            for _ in range(3):
                if not rep.poll(5000):
                    return
                rep.send(json.dumps({"ok": True, "echo": json.loads(rep.recv())}).encode())

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        c = xp.Client(endpoint, timeout_ms=3000)
        try:
            self.assertEqual(c.select_energies(13)["echo"], {"cmd": "select_energies", "n": 13, "timeout_ms": 3000})
            self.assertEqual(c.select_energies("auto", n_tolerance=0.1)["echo"],
                             {"cmd": "select_energies", "n": "auto", "n_tolerance": 0.1, "timeout_ms": 3000})
            # the request's own timeout_ms stands
            self.assertEqual(c.request("select_energies", objective="equal_dwell", timeout_ms=500)["echo"],
                             {"cmd": "select_energies", "objective": "equal_dwell", "timeout_ms": 500})
            t.join()
        finally:
            rep.close(linger=0)
            c.close()

    def test_subscribe_and_recv(self):
        zmq = self.zmq
        pub = self.ctx.socket(zmq.PUB)
        pub.bind("inproc://xanesd-test-pub")
        sub = xp.subscribe("inproc://xanesd-test-pub", topics=("maps/",))
        try:
            self.assertIsNone(xp.recv(sub, timeout_ms=10))
            import time
            deadline = time.monotonic() + 5
            got = None
            while got is None and time.monotonic() < deadline:  # slow joiner
                xp.send(pub, xp.encode("status", {"version": 1}, []))
                xp.send(pub, xp.encode("maps/residual", {"version": 1}, [("residual", np.ones(3, ">f4"))]))
                got = xp.recv(sub, timeout_ms=50)
            self.assertIsNotNone(got)
            self.assertEqual(got.topic, "maps/residual")  # status filtered out by the subscription
            self.assertEqual(got.arrays["residual"].tolist(), [1.0, 1.0, 1.0])
            pub.send_multipart([b"maps/bad", b"\xc1"])
            with self.assertRaises(xp.ProtocolError):
                while True:
                    xp.recv(sub, timeout_ms=1000)
        finally:
            sub.close(linger=0)
            pub.close(linger=0)


if __name__ == "__main__":
    unittest.main(verbosity=2 if "-v" in sys.argv else 1, argv=[a for a in sys.argv if a != "-v"])
