#!/usr/bin/python3
"""The Bluesky bridge (xanesd.bluesky.Bridge) against the real daemon: document streams shaped
as the event-model schema defines them (start, descriptor, events with filled images, an
event_page; then images in an HDF5 file announced by stream_resource / stream_datum) drive live
scans whose result files equal `xanesd fit` of the same scan file. With no daemon listening
the bridge raises a clear error instead of hanging. Bluesky itself is not needed.

  python_bluesky.py --xanesd BIN --simulate BIN --source-dir DIR"""
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

import h5py
import numpy as np

import binaries  # noqa: E402  (tests/binaries.py)

ARGS = None


def uid():
    return str(uuid.uuid4())


class BlueskyBridge(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        a = ARGS
        sys.path.insert(0, os.path.join(a.source_dir, "protocol", "python"))
        global xp, bluesky
        from xanesd import bluesky, protocol as xp  # noqa: PLC0415
        cls.tmp = tempfile.TemporaryDirectory()
        refs = os.path.join(a.source_dir, "config/references")
        cls.library = os.path.join(refs, "fe_k_library_normalized.nor")
        cls.scan = os.path.join(cls.tmp.name, "scan.h5")
        subprocess.run([a.simulate, "--refs", cls.library, "--use", "Magnetite,Goethite,Pyrite",
                        "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"), "--shape", "12x10",
                        "--layout", "regions", "--seed", "9", "--out", cls.scan], check=True, capture_output=True)
        with h5py.File(cls.scan, "r") as f:
            cls.counts, cls.i0, cls.energy = f["raw/counts"][()], f["raw/i0"][()], f["energy"][()]
        cls.batch = os.path.join(cls.tmp.name, "batch.h5")
        subprocess.run([a.xanesd, "fit", "--input", cls.scan, "--out", cls.batch, "--config",
                        os.path.join(a.source_dir, "config/default.json"), "--set", "log.level=warn"],
                       check=True, capture_output=True)
        cls.ingest, pub, cls.control = (f"tcp://127.0.0.1:{binaries.free_port()}" for _ in range(3))
        cls.results = os.path.join(cls.tmp.name, "results")
        cls.log = open(os.path.join(cls.tmp.name, "xanesd.log"), "w")
        cls.daemon = subprocess.Popen([a.xanesd, "--config", os.path.join(a.source_dir, "config/default.json"),
                                       "--set", f"ingest.endpoint={cls.ingest}", "--set", f"publish.endpoint={pub}",
                                       "--set", f"control.endpoint={cls.control}", "--set", f"output.directory={cls.results}"],
                                      stdout=cls.log, stderr=subprocess.STDOUT)
        cls.client = xp.Client(cls.control, timeout_ms=2000)
        for _ in range(100):
            try:
                cls.client.status()
                break
            except TimeoutError:
                time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.client.shutdown()
            cls.daemon.wait(timeout=20)
        except Exception:
            cls.daemon.kill()
        cls.client.close()
        cls.log.close()
        cls.tmp.cleanup()

    def wait_result(self, scan_id):
        for _ in range(300):
            st = self.client.status()
            if st.get("state") == "stopped" and (st.get("scan") or {}).get("scan_id") == scan_id and st.get("result_file"):
                return st
            time.sleep(0.1)
        self.fail(f"no result file for {scan_id}")

    def check_maps(self, path):
        with h5py.File(path, "r") as live, h5py.File(self.batch, "r") as batch:
            self.assertEqual(list(live["entry/results/reference_names"][()]), list(batch["entry/results/reference_names"][()]))
            np.testing.assert_allclose(live["entry/results/fractions"][()], batch["entry/results/fractions"][()], atol=1e-3)

    def documents(self, scan_id, external=False):
        E, R, C = self.counts.shape
        start = {"uid": uid(), "time": time.time(), "scan_id": scan_id, "plan_name": "xanes_map",
                 "energies_eV": [float(e) / 1000 for e in self.energy]}  # a plan in keV: converted
        image_key = {"dtype": "array", "shape": [R, C], "source": "sim:image"}
        if external:
            image_key["external"] = "STREAM:"
        desc = {"uid": uid(), "run_start": start["uid"], "name": "primary", "time": time.time(),
                "data_keys": {"image": image_key, "energy": {"dtype": "number", "shape": [], "source": "mono", "units": "eV"},
                              "I0": {"dtype": "number", "shape": [], "source": "ic"}}}
        events = []
        for e in range(E):
            data = {"energy": float(self.energy[e]), "I0": float(self.i0[e])}
            if not external:
                data["image"] = self.counts[e]
            events.append({"uid": uid(), "descriptor": desc["uid"], "seq_num": e + 1, "time": time.time(),
                           "data": data, "timestamps": {k: time.time() for k in data},
                           "filled": {} if external else {"image": True}})
        stop = {"uid": uid(), "run_start": start["uid"], "time": time.time(), "exit_status": "success",
                "num_events": {"primary": E}}
        return start, desc, events, stop

    def run_filled(self, scan_id):
        """A run of filled events, the last three as an event_page; returns the final status."""
        bridge = bluesky.Bridge(self.ingest)
        self.addCleanup(bridge.close)
        start, desc, events, stop = self.documents(scan_id)
        self.last_start = start
        bridge("start", start)
        bridge("descriptor", desc)
        for ev in events[:-3]:
            bridge("event", ev)
        page = {"descriptor": desc["uid"], "seq_num": [ev["seq_num"] for ev in events[-3:]],
                "data": {k: [ev["data"][k] for ev in events[-3:]] for k in events[0]["data"]},
                "filled": {"image": [True] * 3}, "uid": [ev["uid"] for ev in events[-3:]],
                "time": [ev["time"] for ev in events[-3:]], "timestamps": {}}
        bridge("event_page", page)
        bridge("stop", stop)
        return self.wait_result(f"xanes_map-{scan_id}")

    def test_filled_events_and_an_event_page(self):
        st = self.run_filled(11)
        self.assertEqual(st["scan"]["frames_applied"], len(self.energy))
        self.check_maps(st["result_file"])
        # The result file names the run (its start document's uid) and when the scan ran.
        with h5py.File(st["result_file"], "r") as f:
            self.assertEqual(f["entry/entry_identifier"][()].decode(), self.last_start["uid"])
            md = json.loads(f["entry/start_metadata"][()])
            self.assertEqual(md["uid"], self.last_start["uid"])
            self.assertEqual(md["plan_name"], "xanes_map")
            start_time, end_time = (f[f"entry/{k}"][()].decode() for k in ("start_time", "end_time"))
            self.assertRegex(start_time, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertRegex(end_time, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertLessEqual(start_time, end_time)

    def test_stream_resource_and_datum_from_hdf5(self):
        bridge = bluesky.Bridge(self.ingest)
        self.addCleanup(bridge.close)
        start, desc, events, stop = self.documents(12, external=True)
        E = len(self.energy)
        bridge("start", start)
        bridge("descriptor", desc)
        res = {"uid": uid(), "data_key": "image", "mimetype": "application/x-hdf5", "uri": "file://localhost" + self.scan,
               "parameters": {"dataset": "raw/counts", "chunk_shape": [1]}, "run_start": start["uid"]}
        bridge("stream_resource", res)
        half = E // 2
        for ev in events[:half]:  # events first, then their images
            bridge("event", ev)
        bridge("stream_datum", {"uid": uid(), "stream_resource": res["uid"], "descriptor": desc["uid"],
                                "indices": {"start": 0, "stop": E}, "seq_nums": {"start": 1, "stop": E + 1}})
        for ev in events[half:]:  # images first, then their events
            bridge("event", ev)
        bridge("stop", stop)
        st = self.wait_result("xanes_map-12")
        self.assertEqual(st["scan"]["frames_applied"], E)
        self.check_maps(st["result_file"])

    def test_agent_suggests_and_submits_to_a_queue_server(self):
        from xanesd import agent  # noqa: PLC0415
        import json
        import threading
        import zmq
        # A fake queue server speaking the queue server's ZeroMQ request/reply: JSON
        # {"method", "params"} in, {"success", "msg", "qsize", "item"} out.
        address = f"tcp://127.0.0.1:{binaries.free_port()}"
        ctx = zmq.Context.instance()
        rep = ctx.socket(zmq.REP)
        rep.bind(address)
        received = []

        def serve():
            msg = json.loads(rep.recv())
            received.append(msg)
            item = dict(msg["params"]["item"], item_uid="uid-1")
            rep.send(json.dumps({"success": True, "msg": "", "qsize": 1, "item": item}).encode())
        t = threading.Thread(target=serve)
        t.start()
        self.run_filled(21)  # the scan the selection is made on
        a = agent.XanesAgent(self.control, queue=address, timeout_ms=20000,
                             plan={"name": "xanes_map", "kwargs": {"detectors": ["det"]}, "energies_kwarg": "energies",
                                   "energy_unit": "keV"},
                             select={"n": 8, "objective": "equal_dwell", "source": "references"})
        a.ingest({"energy": 7110.0}, {"image": "…"})
        suggestion = a.suggest()
        t.join(timeout=20)
        rep.close()
        a.client.close()
        self.assertEqual(len(received), 1)
        msg = received[0]
        self.assertEqual(msg["method"], "queue_item_add")
        item = msg["params"]["item"]
        self.assertEqual((item["item_type"], item["name"], item["kwargs"]["detectors"]), ("plan", "xanes_map", ["det"]))
        energies = suggestion[0]["energies_eV"]
        self.assertGreaterEqual(len(energies), 8)
        self.assertEqual(item["kwargs"]["md"]["energies_eV"], energies)
        self.assertEqual(item["kwargs"]["energies"], [e / 1000 for e in energies])
        self.assertEqual(suggestion[0]["queue_item_uid"], "uid-1")
        report = a.report()
        self.assertEqual((report["measured"], report["submitted"]), (1, 1))
        self.assertEqual(report["suggested"]["energies_eV"], energies)

    def test_bad_documents_and_no_daemon(self):
        bridge = bluesky.Bridge(self.ingest)
        self.addCleanup(bridge.close)
        with self.assertRaises(bluesky.BridgeError):
            bridge("start", {"uid": uid(), "time": 0, "scan_id": 1})  # no energies_eV
        nobody = bluesky.Bridge(f"tcp://127.0.0.1:{binaries.free_port()}", timeout_ms=300)
        self.addCleanup(nobody.close)
        start, desc, _, _ = self.documents(13)
        nobody("start", start)
        t0 = time.time()
        with self.assertRaises(bluesky.BridgeError) as e:
            nobody("descriptor", desc)
        self.assertIn("is the daemon listening", str(e.exception))
        self.assertLess(time.time() - t0, 5)


if __name__ == "__main__":
    ARGS, argv = binaries.parse(__doc__)
    unittest.main(argv=argv)
