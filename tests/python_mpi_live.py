#!/usr/bin/python3
"""A live daemon spread over MPI ranks (`mpirun -np 2 xanesd`) against one daemon fed the same
stream (MPI build only; README "Live sharding").

Both are fed by xanes-replay on loopback; each writes its result file at stop. The files must be
equal dataset by dataset and bit for bit (tests/compare_results.py) except the run's times and
its counters: the fit's maps and errors, the mask, the spatial step's neighbours, the reference
selection, segments, edge maps, spectra, XRF. Full frames, row blocks that straddle the ranks'
rows, pixel-major batches and spectra batches.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import h5py
import numpy as np

ARGS = None
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import binaries  # noqa: E402

# What differs between two runs of one stream: times, the status with its counters (cycles
# published, timings), and the config's endpoints and directories (compared without them).
SKIP = ["--skip", "@file_time", "--skip", "entry/start_time", "--skip", "entry/end_time", "--skip", "entry/status",
        "--skip", "entry/config"]
RUN_KEYS = ("ingest.endpoint", "publish.endpoint", "control.endpoint", "output.directory", "journal.directory")


def selection_report(path):
    """--skip for the reference selection's report. The first live analysis runs after the scan's
    first cycle on the frames that have arrived by then, and the final selection starts from its
    verdict: the report's statistics depend on whether a live verdict came before the last frame,
    in one daemon too (one daemon with segment.interval_ms 100 against one with an hour, on the
    scene's stream: the report differs, the maps do not). The ranks' job stalls ingest during its
    cycles, so its analysis sees other frames. The choice itself is compared: the results'
    reference_names and every map fitted with them."""
    with h5py.File(path, "r") as f:
        group = f.get("entry/results/reference_selection")
        names = [] if group is None else [f"entry/results/reference_selection/{n}" for n in group]
    return [arg for n in names for arg in ("--skip", n)]


def config_of(path):
    with h5py.File(path, "r") as f:
        config = json.loads(f["entry/config"][()])
    for key in RUN_KEYS:
        config.pop(key)
    return config
MPIRUN = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
          "--mca", "btl_vader_single_copy_mechanism", "none", "--mca", "oob_tcp_if_include", "lo"]


def run(cmd, timeout=240):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


class LiveDaemon:
    """xanesd (ranks=0: one process, no mpirun) on loopback ports, its results in `directory`."""

    def __init__(self, directory, ranks, extra):
        self.ingest, pub, self.control = (f"tcp://127.0.0.1:{binaries.free_port()}" for _ in range(3))
        self.directory = directory
        cmd = [ARGS.xanesd, "--config", os.path.join(ARGS.source_dir, "config", "default.json"),
               "--set", f"ingest.endpoint={self.ingest}", "--set", f"publish.endpoint={pub}",
               "--set", f"control.endpoint={self.control}", "--set", f"output.directory={directory}",
               "--set", f"journal.directory={os.path.join(directory, 'journal')}", *extra]
        if ranks:
            cmd = [ARGS.mpiexec, *MPIRUN, "-np", str(ranks), *cmd]
        self.log = open(os.path.join(directory, "xanesd.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = xp.Client(self.control, timeout_ms=2000)
        for _ in range(200):
            try:
                self.client.status()
                return
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise AssertionError(f"xanesd did not answer: {self.read_log()}")

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        with open(os.path.join(self.directory, "xanesd.log")) as f:
            return f.read()

    def replay(self, scan, scan_id, *options):
        run([ARGS.replay, "--input", scan, "--endpoint", self.ingest, "--scan-id", scan_id, "--quiet", *options])
        for _ in range(600):
            st = self.client.status()
            if (st.get("scan") or {}).get("scan_id") == scan_id and st.get("state") == "stopped" and st.get("result_file"):
                return st
            time.sleep(0.1)
        raise AssertionError(f"no result file for {scan_id}: {self.read_log()}")

    def close(self):
        try:
            self.client.shutdown()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.client.close()
        self.log.close()
        return self.proc.returncode


class MpiLive(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        global xp
        sys.path.insert(0, os.path.join(ARGS.source_dir, "protocol", "python"))
        from xanesd import protocol as xp  # noqa: PLC0415
        cls.tmp = tempfile.TemporaryDirectory(prefix="xanesd-mpi-live-")
        cls.dir = cls.tmp.name

        def simulate(name, *options):
            return binaries.simulate_fe(ARGS.simulate, ARGS.source_dir, os.path.join(cls.dir, name), *options)

        cls.domains = simulate("domains.h5", "--shape", "48x40", "--layout", "domains", "--seed", "3")
        # 67 rows: the ranks' blocks are 33 and 34 rows; transmission with a dark, a flat per
        # energy and an XRF map.
        cls.scene = simulate("scene.h5", "--shape", "67x50", "--layout", "scene", "--mode", "transmission",
                             "--dark", "5", "--seed", "5")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def feed(self, ranks, name, streams, extra):
        """Runs a daemon of `ranks` ranks, replays each (scan, scan_id, options) of `streams` into
        it in turn, and returns the result files."""
        directory = os.path.join(self.dir, f"{name}-np{ranks}")
        os.makedirs(directory)
        daemon = LiveDaemon(directory, ranks, extra)
        try:
            files = [daemon.replay(scan, scan_id, *options)["result_file"] for scan, scan_id, options in streams]
            status = daemon.client.status()
        finally:
            code = daemon.close()
        self.assertEqual(code, 0, daemon.read_log())
        return files, status

    def assert_same(self, name, streams, extra=()):
        one, _ = self.feed(0, name, streams, extra)
        two, status = self.feed(2, name, streams, extra)
        self.assertEqual(status["shards"]["ranks"], 2, status.get("shards"))
        for a, b in zip(one, two):
            c = subprocess.run([sys.executable, os.path.join(HERE, "compare_results.py"), a, b, *SKIP, *selection_report(a)],
                               capture_output=True, text=True)
            self.assertEqual(c.returncode, 0, f"{os.path.basename(a)}:\n{c.stdout}{c.stderr}")
            self.assertIn(" 0 difference(s)", c.stdout)
            self.assertEqual(config_of(a), config_of(b))
        return one, two

    # Live analyses (reference selection, segmentation) run on their own timer: with them the
    # final maps depend on how the stream and the timer interleaved, in one daemon too. These
    # tests run the analysis with the final maps only, so both daemons have one answer.
    FINAL_ANALYSIS = ("--set", "segment.interval_ms=3600000")

    def test_full_frames_and_row_blocks(self):
        one, _ = self.assert_same("frames", [(self.domains, "full", ()),
                                              (self.domains, "rows", ("--rows-per-frame", "7")),
                                              (self.scene, "scene", ("--rows-per-frame", "5"))],
                                  self.FINAL_ANALYSIS)
        with h5py.File(one[0], "r") as f:  # the comparison compared maps, not empty files
            fractions = f["entry/results/fractions"][()]
            self.assertEqual(fractions.shape[1:], (48, 40))
            self.assertGreater(np.nanmax(fractions), 0.5)
            self.assertIn("spatial_neighbours", f["entry/results"])

    def test_pixel_major_batches_and_spectra_batches(self):
        # Pixel batches at one energy, then spectra batches (100 pixels × every energy): rank 0
        # stores a spectra batch a pixel at a time and hands the ranks its frames at one energy.
        self.assert_same("pixels", [(self.domains, "pixels", ("--order", "pixel-major", "--chunk-pixels", "100")),
                                    (self.domains, "spectra", ("--spectra", "--chunk-pixels", "100"))],
                         self.FINAL_ANALYSIS)

    def test_without_spatial_step_poisson_final_maps(self):
        self.assert_same("weighted", [(self.scene, "weighted", ())],
                         (*self.FINAL_ANALYSIS, "--set", "fit.spatial=false"))

    def test_live_analysis_refits_the_ranks(self):
        # Analyses while frames arrive (every 50 ms, a paced stream): the selection narrows the
        # library before the last frame, which refits every rank's block. The same references are
        # chosen and the fractions agree with one daemon's (not bit for bit: which frames each
        # live verdict saw differs, see selection_report).
        runs = [self.feed(ranks, "analysis", [(self.domains, "live", ("--rate", "60"))],
                          ("--set", "segment.interval_ms=50", "--set", "publish.interval_ms=50")) for ranks in (0, 2)]
        (one,), _ = runs[0]
        (two,), status = runs[1]
        self.assertGreaterEqual(status["counters"].get("analysis.refits", 0), 1, status["counters"])
        with h5py.File(one, "r") as a, h5py.File(two, "r") as b:
            names = list(a["entry/results/reference_names"][()])
            self.assertEqual(names, list(b["entry/results/reference_names"][()]))
            self.assertLess(len(names), len(a["entry/results/reference_selection/delta_chi2"]))  # narrowed
            np.testing.assert_allclose(a["entry/results/fractions"][()], b["entry/results/fractions"][()], atol=2e-3)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for a in ("--xanesd", "--simulate", "--replay", "--source-dir", "--mpiexec"):
        ap.add_argument(a, required=True)
    ARGS, rest = ap.parse_known_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    unittest.main(argv=[sys.argv[0]] + rest)
