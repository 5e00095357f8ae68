"""Bluesky documents → xanesd ingest messages: a RunEngine callback (`RE.subscribe(bridge)`)
that sends a run to xanesd as a scan controller would (start, a frame per event, stop).

Documents are taken as the event-model schema defines them; bluesky itself is not needed.
- start: the scan's planned energies (eV) are `start[energies_key]` (a plan puts its energy list
  there); optional `start[references_key]` (names or files, see the `start` message); the
  scan id is `<plan_name>-<scan_id>` (or the run uid's first 8 characters).
- descriptor of `stream` (default "primary"): the image shape from `data_keys[image]["shape"]`;
  the xanesd `start` is sent then.
- event / event_page: the energy (`data[energy]`, eV; keV when below 100), I0 (`data[i0]`,
  optional) and, when filled, the image (`data[image]`): one frame each.
- stream_resource / stream_datum (images written to HDF5 by the detector): the images of
  `indices` are read with h5py from `uri` + `parameters["dataset"]` and paired with the
  events of the same seq_num (which carry the energy and I0).
- stop: `stop` with the frames sent; exit_status other than "success" is `aborted`.
Bad documents raise BridgeError naming what is missing; frames are never invented."""
import re
import urllib.parse

import numpy as np

from . import protocol as xp


class BridgeError(ValueError):
    pass


class Bridge:
    def __init__(self, endpoint="tcp://127.0.0.1:5555", image="image", energy="energy", i0="I0",
                 mode="fluorescence", stream="primary", energies_key="energies_eV",
                 references_key="xanesd_references", socket=None, timeout_ms=30000):
        self.image, self.energy, self.i0, self.mode, self.stream = image, energy, i0, mode, stream
        self.energies_key, self.references_key = energies_key, references_key
        if socket is None:
            zmq = xp._zmq()
            socket = zmq.Context.instance().socket(zmq.PUSH)
            socket.setsockopt(zmq.IMMEDIATE, 1)  # no daemon: send times out instead of queueing forever
            socket.setsockopt(zmq.SNDTIMEO, timeout_ms)
            socket.connect(endpoint)
        self.sock = socket
        self._reset()

    def _reset(self):
        self.run = None
        self.scan_id = None
        self.plan = []
        self.descriptor = None
        self.seq = 0
        self.started = False
        self.resources = {}
        self.pending_images = {}   # seq_num → image (stream_datum before its event)
        self.pending_events = {}   # seq_num → (energy, i0) (event before its stream_datum)

    def close(self):
        self.sock.close(linger=1000)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __call__(self, name, doc):
        handler = getattr(self, "_" + name, None)
        if handler is not None:
            handler(doc)

    def _send(self, frames):
        try:
            xp.send(self.sock, frames)
        except Exception as e:  # zmq.Again: nothing took it
            raise BridgeError(f"xanesd did not take a message ({e}): is the daemon listening?") from e

    def _start(self, doc):
        self._reset()
        self.run = doc
        plan = doc.get(self.energies_key)
        if not isinstance(plan, (list, tuple)) or len(plan) < 2:
            raise BridgeError(f"start document has no '{self.energies_key}' list of planned energies (eV)")
        self.plan = [float(e) * (1000.0 if max(plan) < 100 else 1.0) for e in plan]
        base = f"{doc.get('plan_name', 'run')}-{doc.get('scan_id', doc.get('uid', 'x')[:8])}"
        self.scan_id = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:128] or "run"

    def _descriptor(self, doc):
        if self.run is None or doc.get("name") != self.stream:
            return
        keys = doc.get("data_keys", {})
        if self.image not in keys or self.energy not in keys:
            raise BridgeError(f"descriptor of '{self.stream}' lacks data keys '{self.image}' and/or '{self.energy}'")
        shape = [int(n) for n in keys[self.image].get("shape", []) if int(n) > 1]
        if len(shape) != 2:
            raise BridgeError(f"'{self.image}' has shape {keys[self.image].get('shape')}: expected a 2-D image")
        self.descriptor = doc["uid"]
        refs = self.run.get(self.references_key)
        # The run's identity goes into the result file (/entry/entry_identifier, /entry/start_metadata).
        metadata = {k: self.run[k] for k in ("uid", "scan_id", "plan_name", "time", "sample", "proposal") if k in self.run}
        self._send(xp.start_message(self.scan_id, shape, self.plan, self.mode, references=refs or None,
                                    metadata=metadata))
        self.started = True

    def _frame(self, energy, i0, image):
        e = float(energy) * (1000.0 if float(energy) < 100 else 1.0)
        idx = int(np.argmin([abs(p - e) for p in self.plan]))
        self._send(xp.frame_message(self.scan_id, self.seq, idx, self.plan[idx], np.asarray(image, dtype=np.float32),
                                    i0=None if i0 is None else float(i0)))
        self.seq += 1

    def _event(self, doc):
        if not self.started or doc.get("descriptor") != self.descriptor:
            return
        data, filled = doc["data"], doc.get("filled", {})
        energy, i0 = data[self.energy], data.get(self.i0)
        if self.image in data and filled.get(self.image, True) is not False and np.ndim(data[self.image]) == 2:
            self._frame(energy, i0, data[self.image])
            return
        n = doc["seq_num"]
        if n in self.pending_images:
            self._frame(energy, i0, self.pending_images.pop(n))
        else:
            self.pending_events[n] = (energy, i0)

    def _event_page(self, page):
        n = len(page["seq_num"])
        for k in range(n):
            self._event({"descriptor": page["descriptor"], "seq_num": page["seq_num"][k],
                         "data": {key: v[k] for key, v in page["data"].items()},
                         "filled": {key: v[k] for key, v in page.get("filled", {}).items()}})

    def _stream_resource(self, doc):
        if doc.get("data_key") != self.image:
            return
        uri = urllib.parse.urlparse(doc["uri"])
        if uri.scheme not in ("file", ""):
            raise BridgeError(f"stream_resource uri '{doc['uri']}': only file:// HDF5 is read")
        dataset = doc.get("parameters", {}).get("dataset")
        if not dataset:
            raise BridgeError("stream_resource has no parameters.dataset (the HDF5 dataset of the images)")
        self.resources[doc["uid"]] = (urllib.parse.unquote(uri.path), dataset)

    def _stream_datum(self, doc):
        if doc.get("stream_resource") not in self.resources or not self.started:
            return
        import h5py
        path, dataset = self.resources[doc["stream_resource"]]
        i, j = doc["indices"]["start"], doc["indices"]["stop"]
        s0 = doc["seq_nums"]["start"]
        with h5py.File(path, "r") as f:
            images = f[dataset][i:j]
        for k, image in enumerate(images):
            n = s0 + k
            if n in self.pending_events:
                energy, i0 = self.pending_events.pop(n)
                self._frame(energy, i0, image)
            else:
                self.pending_images[n] = image

    def _stop(self, doc):
        if not self.started:
            self._reset()
            return
        reason = "completed" if doc.get("exit_status", "success") == "success" else "aborted"
        self._send(xp.stop_message(self.scan_id, reason, frames_sent=self.seq))
        self._reset()
