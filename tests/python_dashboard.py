#!/usr/bin/python3
"""The live dashboard in a real headless browser (issue 15): Debian's chromium driven by
python3-selenium, against the real xanesd, xanes-dashboard and xanes-replay on loopback.

  python_dashboard.py --xanesd BIN --simulate BIN --replay BIN --source-dir DIR --build-dir DIR

Checks: the page shows one fraction panel per fitted reference and the maps update while the
scan is replayed (their version increases); clicking a pixel shows its spectrum, model and
fractions, equal to the daemon's `pixel` reply and to the result file; a page opened after the
scan gets the final state at once; a daemon restart shows "reconnecting" and then "live" again;
the read-only dashboard refuses control commands; a relay frozen while a scan streams sees the
version gap and heals it with `snapshot`; a map zoomed while a scan streams shows the region at
full resolution, with the result file's values, on every map, and a click there inspects the
pixel under the mouse. Saves dashboard.png (and dashboard-reconnecting.png, dashboard-zoom.png)
in the build folder.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import h5py
import numpy as np

import binaries  # noqa: E402  (tests/binaries.py)

ARGS = None


def wait_for(what, cond, timeout=40.0, interval=0.05):
    """Polls cond() until it returns something truthy; fails the test with `what` on timeout."""
    until = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def get_json(url, data=None):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def final_version(xp, control, scan_id):
    """The version of the scan's final maps, from the daemon itself once the scan is stopped and
    its result file written (the relay's own view may still lag behind on the PUB socket)."""
    with xp.Client(control, timeout_ms=10000) as c:
        def done():
            s = c.status()
            return s.get("state") == "stopped" and (s.get("scan") or {}).get("scan_id") == scan_id \
                and s.get("result_file") and s
        return wait_for(f"'{scan_id}' stopped with its result file", done, timeout=60)["version"]


class Dashboard(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        a = ARGS
        sys.path.insert(0, os.path.join(a.source_dir, "protocol", "python"))
        from xanesd import protocol as xp  # noqa: PLC0415
        cls.xp = xp
        cls.tmp = tempfile.TemporaryDirectory(prefix="xanes-dashboard-")
        cls.procs = []
        refs = os.path.join(a.source_dir, "config/references")
        cls.scan = os.path.join(cls.tmp.name, "scan.h5")
        subprocess.run([a.simulate, "--refs", os.path.join(refs, "fe_k_library_normalized.nor"),
                        "--use", "Magnetite,Goethite,Pyrite", "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"),
                        "--shape", "48x40", "--layout", "domains", "--seed", "15", "--out", cls.scan],
                       check=True, capture_output=True)
        cls.ingest, cls.pub, cls.control = (f"tcp://127.0.0.1:{binaries.free_port()}" for _ in range(3))
        cls.results = os.path.join(cls.tmp.name, "results")
        cls.start_daemon()
        cls.port = binaries.free_port()
        cls.url = f"http://127.0.0.1:{cls.port}"
        cls.dash = cls.spawn([sys.executable, os.path.join(a.source_dir, "clients/dashboard/xanes-dashboard"),
                              "--results", cls.pub, "--control", cls.control, "--port", str(cls.port), "--quiet"],
                             "dashboard.log")
        wait_for("the dashboard to reach the daemon", lambda: cls.stats().get("daemon") == "live")

        cls.browser = binaries.headless_chromium(1500, 1500)
        cls.browser.set_script_timeout(10)

    @classmethod
    def spawn(cls, argv, log_name):
        with open(os.path.join(cls.tmp.name, log_name), "a") as log:  # the child keeps its own descriptor
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        cls.procs.append(p)
        return p

    @classmethod
    def start_daemon(cls):
        a = ARGS
        cls.daemon = cls.spawn([a.xanesd, "--config", os.path.join(a.source_dir, "config/default.json"),
                                "--set", f"ingest.endpoint={cls.ingest}", "--set", f"publish.endpoint={cls.pub}",
                                "--set", f"control.endpoint={cls.control}", "--set", f"output.directory={cls.results}",
                                "--set", "log.level=warn"], "xanesd.log")

    @classmethod
    def stats(cls, url=None):
        try:
            return get_json((url or cls.url) + "/api/stats")[1]
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            return {}

    @classmethod
    def tearDownClass(cls):
        browser = getattr(cls, "browser", None)
        if browser:
            browser.quit()
        binaries.stop(cls.procs)
        if os.environ.get("KEEP"):
            print("kept", cls.tmp.name)
        else:
            cls.tmp.cleanup()

    def js(self, expr):
        return self.browser.execute_script("return " + expr)

    def test_1_live_dashboard(self):
        b, xp = self.browser, self.xp
        b.get(self.url + "/")
        wait_for("the page to show the daemon live", lambda: self.js("window.xanesDash && window.xanesDash.daemon") == "live")
        self.assertIn("live", b.find_element("id", "connection").text)
        self.assertFalse(self.js("xanesDash.allowControl"))

        # -- maps appear and update while the scan is replayed --------------------------
        replay = self.spawn([ARGS.replay, "--input", self.scan, "--endpoint", self.ingest, "--rate", "15",
                             "--scan-id", "dash", "--quiet"], "replay.log")
        v1 = wait_for("the first fraction maps", lambda: self.js("xanesDash.versions['maps/fractions']"), timeout=30)
        names = self.js("xanesDash.referenceNames")
        self.assertGreaterEqual(len(names), 1)
        v2 = wait_for("a newer map version", lambda: (v := self.js("xanesDash.versions['maps/fractions']")) and v > v1 and v,
                      timeout=30)
        self.assertGreater(v2, v1)
        self.assertFalse(self.js("xanesDash.final"), "the maps updated live, before the final ones")
        self.assertEqual(replay.wait(60), 0)
        wait_for("the final maps and the result file", lambda: self.js(
            "xanesDash.final && xanesDash.health && xanesDash.health.state === 'stopped' && !!xanesDash.health.result_file"),
                 timeout=30)
        names = self.js("xanesDash.referenceNames")
        panels = b.find_elements("css selector", "#map-grid canvas")
        titles = [e.text for e in b.find_elements("css selector", "#map-grid .panel h3 span:first-child")]
        for n in names:
            self.assertIn(n, titles)
        self.assertEqual(len(panels), len(names) + 4, titles)  # + thickness, residual, segments, energies per pixel
        self.assertTrue({"thickness (edge step)", "residual (RMS)", "segments"} <= set(titles), titles)
        final_version = self.js("xanesDash.versions['maps/fractions']")
        drawn = self.js("xanesDash.drawn")
        self.assertGreaterEqual(drawn, len(panels))
        health = self.js("xanesDash.health")
        self.assertEqual(health["scan"]["energies_seen"], 73)
        self.assertEqual(len(health["scan"]["energy_indices_seen"]), 73)

        # -- click a kept pixel: its spectrum, model and fractions ----------------------
        result_file = health["result_file"]
        with h5py.File(result_file, "r") as f:
            mask = f["entry/results/mask"][()]
            fractions = f["entry/results/fractions"][()]
            sigma = f["entry/results/fraction_sigma"][()]
            file_names = [n.decode() if isinstance(n, bytes) else n for n in f["entry/results/reference_names"][()]]
            spectra = f["entry/data/spectra"][()]
            cluster_ids = f["entry/results/segments/cluster_ids"][()].tolist()
            cluster_fractions = f["entry/results/segments/cluster_fractions"][()]
        self.assertEqual(file_names, names)
        rows, cols = mask.shape
        # The domains: one row per cluster of the final segmentation, its fractions as in the file.
        wait_for("the domains table", lambda: self.js("document.querySelectorAll('#cluster-table tr.cluster').length")
                 == len(cluster_ids))
        table = b.find_elements("css selector", "#cluster-table tr.cluster")
        self.assertEqual([int(r.get_attribute("data-id")) for r in table], cluster_ids)
        for r, fr in zip(table, cluster_fractions):
            for v in fr[np.isfinite(fr)]:  # NaN: a domain the fit could not explain at all
                self.assertIn(f"{v:.2f}", r.text)
        self.assertTrue(self.js("!!document.querySelector('#cluster-plot .uplot canvas')"))
        ys, xs = np.nonzero(mask)
        pick = int(np.argmin((ys - rows / 2) ** 2 + (xs - cols / 3) ** 2))  # a kept pixel away from the edges
        y, x = int(ys[pick]), int(xs[pick])
        canvas = b.find_element("css selector", f"canvas[data-panel='fraction:{names[0]}']")
        w, h = canvas.size["width"], canvas.size["height"]
        from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415
        # Offsets from the canvas centre (selenium 4), to the middle of pixel (x, y).
        ActionChains(b).move_to_element_with_offset(canvas, int((x + 0.5) * w / cols - w / 2),
                                                    int((y + 0.5) * h / rows - h / 2)).click().perform()
        shown = wait_for("the clicked pixel's inspector", lambda: (p := self.js("xanesDash.pixel")) and p["x"] == x and p["y"] == y and p)
        with xp.Client(self.control, timeout_ms=10000) as c:
            direct = c.pixel(x, y)
        self.assertEqual(shown["fractions"], direct["fractions"].tolist())
        self.assertEqual(shown["fraction_sigma"], direct["fraction_sigma"].tolist())
        np.testing.assert_array_equal(np.float32(shown["fractions"]), fractions[:, y, x])
        np.testing.assert_array_equal(np.float32(shown["fraction_sigma"]), sigma[:, y, x])
        np.testing.assert_array_equal(np.float32(shown["spectrum"]), spectra[:, y, x])
        self.assertTrue(shown["mask"])
        self.assertEqual(len(shown["model"]), 73)
        rows_shown = b.find_elements("css selector", "#pixel-table tr.fraction")
        self.assertEqual([r.get_attribute("data-reference") for r in rows_shown], names)
        for r, f_, s_ in zip(rows_shown, shown["fractions"], shown["fraction_sigma"]):
            self.assertIn(f"{f_:.3f}", r.text)
        # uPlot drew the chart: measured points, model, background and one curve per reference
        self.assertTrue(self.js("!!document.querySelector('#spectrum .uplot canvas')"))
        legend = [e.text for e in b.find_elements("css selector", "#spectrum .u-legend .u-label")]
        for label in ["measured", "model", "background"] + names:
            self.assertIn(label, legend)
        b.save_screenshot(os.path.join(ARGS.build_dir, "dashboard.png"))

        # -- a late joiner gets the state at once ---------------------------------------
        # The scan is over, so nothing is published any more: the page can only get the final
        # maps from the relay's state (snapshot). The time bound is loose on purpose: a new
        # Chromium tab on a loaded 2-core CI machine took over 10 s once.
        first = b.current_window_handle
        b.switch_to.new_window("tab")
        t0 = time.monotonic()
        b.get(self.url + "/")
        wait_for("the late joiner's final maps", lambda: self.js(
            f"window.xanesDash && xanesDash.versions['maps/fractions'] === {final_version} && xanesDash.final "
            f"&& xanesDash.drawn >= {len(panels)}"), timeout=30)
        late = time.monotonic() - t0
        self.assertLess(late, 30)
        self.assertEqual(self.js("xanesDash.referenceNames"), names)
        self.assertEqual(len(b.find_elements("css selector", "#map-grid canvas")), len(panels))
        st = self.stats()
        self.assertEqual(len(st["browsers"]), 2)
        # every publication the relay took kept the typed contract (xp.check_product)
        self.assertEqual(st["stats"].get("bad_messages", 0), 0)
        for peer in st["browsers"]:  # bounded: at most one pending message per topic, plus events
            self.assertLessEqual(peer["queued"], 16)
        b.close()
        b.switch_to.window(first)

        # -- a daemon restart: "reconnecting", then live again --------------------------
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(20)
        wait_for("the page to show reconnecting", lambda: "reconnecting" in b.find_element("id", "connection").text, timeout=30)
        b.save_screenshot(os.path.join(ARGS.build_dir, "dashboard-reconnecting.png"))
        self.start_daemon()
        wait_for("the page to show the daemon live again", lambda: b.find_element("id", "connection").text == "live", timeout=40)

        # -- read-only by default ------------------------------------------------------
        code, reply = get_json(self.url + "/api/control", {"cmd": "abort"})
        self.assertEqual(code, 403)
        self.assertFalse(reply["ok"])
        self.assertIn("--allow-control", reply["error"])
        code, reply = get_json(self.url + "/api/pixel?x=100000&y=0")
        self.assertEqual(code, 400)
        self.assertEqual(reply.get("code"), "invalid_pixel")
        print(f"dashboard: maps v{v1} -> v{v2} live, final v{final_version}; {drawn} panels drawn; late joiner "
              f"{late:.2f} s; relay {json.dumps(st['stats'])}", flush=True)

    def test_2_slow_browser(self):
        """A browser that reads nothing while a 256×256 scan streams: the relay drops its stale
        map versions (one pending message per topic), its memory stays bounded, and once the
        browser reads again it gets the newest maps."""
        import asyncio  # noqa: PLC0415
        import threading  # noqa: PLC0415
        import aiohttp  # noqa: PLC0415

        wait_for("the daemon live", lambda: self.stats().get("daemon") == "live", timeout=20)
        refs = os.path.join(ARGS.source_dir, "config/references")
        big = os.path.join(self.tmp.name, "big.h5")
        subprocess.run([ARGS.simulate, "--refs", os.path.join(refs, "fe_k_library_normalized.nor"),
                        "--use", "Magnetite,Goethite,Pyrite", "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"),
                        "--shape", "256x256", "--layout", "domains", "--seed", "16", "--out", big],
                       check=True, capture_output=True)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        def run(coro, timeout=60):
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

        async def connect():
            session = aiohttp.ClientSession()
            ws = await session.ws_connect(self.url.replace("http", "ws") + "/ws", max_msg_size=0)
            # A receive buffer of 256 KB: no megabytes of autotuned kernel buffer to hide the
            # slowness, still above the loopback MSS (64 KB; a smaller window stalls TCP).
            ws.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
            return session, ws

        # aiohttp stops reading the socket while its queue is unread: the receive buffer fills,
        # then the relay's sends wait, as for a browser that cannot keep up.
        session, ws = run(connect())
        rss = lambda: int(next(l.split()[1] for l in open(f"/proc/{self.dash.pid}/status") if l.startswith("VmRSS")))  # noqa: E731
        rss0 = rss()
        replay = self.spawn([ARGS.replay, "--input", big, "--endpoint", self.ingest, "--rate", "25", "--scan-id", "big",
                             "--quiet"], "replay-big.log")
        peak = rss0
        while replay.poll() is None:
            peak = max(peak, rss())
            time.sleep(0.1)
        self.assertEqual(replay.returncode, 0)
        version = final_version(self.xp, self.control, "big")
        final = wait_for("the big scan's final maps at the relay", lambda: (st := self.stats()) and st.get("scan_id") == "big"
                         and st["versions"].get("maps/fractions") == version
                         and self.js("xanesDash.final && xanesDash.scanId === 'big'") and st, timeout=60)
        peak = max(peak, rss())
        slow = max(final["browsers"], key=lambda p: p["replaced"])
        self.assertGreater(slow["replaced"], 0, final["browsers"])
        self.assertLessEqual(slow["queued"], 16)
        # Queued: at most what the relay holds as the current state (the same payloads, shared).
        self.assertLessEqual(slow["queued_bytes"], final["state_bytes"] + 65536)
        self.assertLess(peak - rss0, 200 * 1024, f"relay RSS grew {peak - rss0} kB")  # kB

        seen = []

        async def drain():  # reading again, the browser ends with the newest maps
            while True:
                m = await ws.receive(timeout=20)
                if m.type == aiohttp.WSMsgType.BINARY:
                    n = int.from_bytes(m.data[:4], "little")
                    h = json.loads(m.data[4:4 + n])
                    seen.append((h["topic"], h["scan_id"], h["version"], h["final"]))
                    if h["topic"] == "maps/fractions" and h["scan_id"] == "big" and h["final"]:
                        return h
                elif m.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"the relay closed the socket: {m}")

        try:
            last = run(drain())
        except TimeoutError:
            raise AssertionError(f"no final fractions of 'big' after the client read again; it got {seen}; "
                                 f"relay now {self.stats()}") from None

        self.assertEqual(last["version"], final["versions"]["maps/fractions"])
        run(session.close())
        loop.call_soon_threadsafe(loop.stop)
        print(f"slow browser: {slow['replaced']} stale map versions dropped, queued {slow['queued']} messages "
              f"({slow['queued_bytes']} B, state {final['state_bytes']} B); relay RSS {rss0} kB -> peak {peak} kB", flush=True)

    def test_3_controls(self):
        """--allow-control: the page shows the controls; each asks for confirmation first, and
        nothing reaches the daemon when it is declined."""
        b = self.browser
        port = binaries.free_port()
        self.spawn([sys.executable, os.path.join(ARGS.source_dir, "clients/dashboard/xanes-dashboard"), "--results", self.pub,
                    "--control", self.control, "--port", str(port), "--allow-control", "--quiet"], "dashboard-control.log")
        url = f"http://127.0.0.1:{port}"
        wait_for("the controlling dashboard", lambda: (get_json(url + "/api/stats")[1].get("daemon") == "live")
                 if self._answers(url) else False)
        b.get(url + "/")
        wait_for("the page with controls", lambda: self.js("window.xanesDash && xanesDash.allowControl && xanesDash.state === 'stopped'"))
        self.assertTrue(b.find_element("id", "btn-save").is_displayed())

        def sent(cmd):  # commands the relay passed on to the daemon
            return get_json(url + "/api/stats")[1]["stats"].get("control_" + cmd, 0)

        def click(button, accept):
            b.find_element("id", button).click()
            confirm = wait_for("the confirm dialog", lambda: self._alert())
            self.assertIn("Really", confirm.text)
            if not accept:
                confirm.dismiss()
                return None
            confirm.accept()
            done = wait_for("the outcome", lambda: self._alert())
            text = done.text
            done.accept()
            return text

        def click_without_confirm(button):  # an input missing: the page says so, asks nothing
            b.find_element("id", button).click()
            alert = wait_for("the page's message", lambda: self._alert())
            text = alert.text
            alert.accept()
            return text

        self.assertIsNone(click("btn-save", accept=False))
        time.sleep(0.3)  # a request would have been sent at once: give it the time to arrive
        self.assertEqual(sent("save"), 0, "a declined save reached the daemon")
        result = os.path.join(self.results, "big.h5")
        mtime = os.path.getmtime(result)
        self.assertEqual(click("btn-save", accept=True), "save: done")
        self.assertGreater(os.path.getmtime(result), mtime)
        self.assertEqual(sent("save"), 1)
        self.assertIn("abort failed", click("btn-abort", accept=True))  # no scan is running
        # A new energy selection: published on `energies`, shown over the domains' mean spectra.
        self.assertEqual(click("btn-select", accept=True), "select_energies: done")
        shown = wait_for("the selection on the page", lambda: self.js("xanesDash.selection && xanesDash.selection.energies_eV"))
        self.assertGreaterEqual(len(shown), 3)
        self.assertIn(f"{len(shown)} energies", b.find_element("id", "selection").text)

        # Configure a runtime key: declined sends nothing; accepted, the daemon's effective
        # config has the value (typed as JSON: a number stays a number).
        def effective(key):
            with self.xp.Client(self.control, timeout_ms=10000) as c:
                return c.request("configure", set={})["config"][key]

        self.assertEqual(effective("publish.interval_ms"), 250)
        self.assertIn("type key=value", click_without_confirm("btn-configure"))
        self.assertEqual(sent("configure"), 0)
        b.find_element("id", "config-set").send_keys("publish.interval_ms=300")
        self.assertIsNone(click("btn-configure", accept=False))
        time.sleep(0.3)
        self.assertEqual(sent("configure"), 0, "a declined configure reached the daemon")
        self.assertEqual(click("btn-configure", accept=True), "configure: done")
        self.assertEqual(effective("publish.interval_ms"), 300)
        b.find_element("id", "config-set").clear()
        b.find_element("id", "config-set").send_keys("publish.interval_ms=250")
        self.assertEqual(click("btn-configure", accept=True), "configure: done")
        self.assertEqual(effective("publish.interval_ms"), 250)
        # Load references: the scan's own three from the shipped library (kept by name), and a
        # file the daemon cannot read, whose refusal the page reports.
        lib = os.path.join(ARGS.source_dir, "config/references/fe_k_library_normalized.nor")
        b.find_element("id", "ref-files").send_keys(os.path.join(self.tmp.name, "missing.nor"))
        self.assertIn("load_references failed", click("btn-load-refs", accept=True))
        b.find_element("id", "ref-files").clear()
        b.find_element("id", "ref-files").send_keys(lib)
        b.find_element("id", "ref-names").send_keys("Magnetite, Goethite, Pyrite")
        self.assertIsNone(click("btn-load-refs", accept=False))
        time.sleep(0.3)
        self.assertEqual(sent("load_references"), 1)  # the refused one only
        self.assertEqual(click("btn-load-refs", accept=True), "load_references: done")
        with self.xp.Client(self.control, timeout_ms=10000) as c:
            self.assertEqual(c.status()["references"], ["Magnetite", "Goethite", "Pyrite"])

    def test_4_reused_scan_id(self):
        """A scan that reuses the current scan's id (the daemon writes <id>-2.h5) starts its
        versions over: the page shows it from version 1, not the earlier scan's maps."""
        b = self.browser
        b.get(self.url + "/")
        wait_for("the page with the last scan", lambda: self.js("window.xanesDash && xanesDash.scanId === 'big' && xanesDash.final"))
        self.js("(xanesDash.fractionVersions = [], true)")
        restarts = self.stats()["stats"].get("scan_restarts", 0)
        replay = self.spawn([ARGS.replay, "--input", self.scan, "--endpoint", self.ingest, "--rate", "15", "--scan-id", "big",
                             "--quiet"], "replay-again.log")
        self.assertEqual(replay.wait(60), 0)
        h = wait_for("the new scan's final maps", lambda: (h := self.js("xanesDash.fractionHeader")) and h["final"]
                     and h["rows"] == 48 and h)
        self.assertEqual(h["scan_id"], "big")
        # The earlier scan's versions went up to ~15: none of the new scan's was dropped as stale.
        self.assertEqual(self.js("xanesDash.fractionVersions")[0], 1, (self.js("xanesDash.fractionVersions"), self.stats()))
        self.assertEqual(self.stats()["stats"].get("scan_restarts"), restarts + 1)

    def test_5_forced_gap(self):
        """A relay that stops reading while a scan streams misses publications for real: its own
        daemon keeps 4 messages for it (publish.sndhwm=4) and publishes as often as it can
        (publish.interval_ms=0, tens of MB of maps), and the relay is frozen (SIGSTOP) mid-scan
        while 4 cycles are published, then again until the scan has stopped. It sees the jump in the cycle version
        after the first, and the stopped scan's newer version in `status` after the second (the
        final maps dropped); each time it reloads the state with `snapshot`, and it ends with the
        final maps."""
        ingest, pub, control = (f"tcp://127.0.0.1:{binaries.free_port()}" for _ in range(3))
        results = os.path.join(self.tmp.name, "results-gap")
        self.spawn([ARGS.xanesd, "--config", os.path.join(ARGS.source_dir, "config/default.json"),
                    "--set", f"ingest.endpoint={ingest}", "--set", f"publish.endpoint={pub}",
                    "--set", f"control.endpoint={control}", "--set", f"output.directory={results}",
                    "--set", "publish.sndhwm=4", "--set", "publish.interval_ms=0", "--set", "log.level=warn"],
                   "xanesd-gap.log")
        port = binaries.free_port()
        url = f"http://127.0.0.1:{port}"
        relay = self.spawn([sys.executable, os.path.join(ARGS.source_dir, "clients/dashboard/xanes-dashboard"),
                            "--results", pub, "--control", control, "--port", str(port), "--quiet"], "dashboard-gap.log")
        stats = lambda: self.stats(url)  # noqa: E731
        wait_for("the relay live", lambda: stats().get("daemon") == "live")
        big = os.path.join(self.tmp.name, "big-gap.h5")  # 256×256: maps of 256 KB, so 4 messages fill fast
        refs = os.path.join(ARGS.source_dir, "config/references")
        subprocess.run([ARGS.simulate, "--refs", os.path.join(refs, "fe_k_library_normalized.nor"),
                        "--use", "Magnetite,Goethite,Pyrite", "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"),
                        "--shape", "256x256", "--layout", "domains", "--seed", "17", "--out", big],
                       check=True, capture_output=True)
        replay = self.spawn([ARGS.replay, "--input", big, "--endpoint", ingest, "--rate", "10", "--scan-id", "gap",
                             "--quiet"], "replay-gap.log")
        wait_for("the first maps at the relay", lambda: stats().get("versions", {}).get("maps/fractions", 0) >= 1, timeout=30)
        # Frozen mid-scan until the daemon has published 4 more cycles (≈ 2 MB each: more than
        # the 4 messages and the loopback socket buffers hold), so the cycles after it show the jump
        # whatever the machine's speed. Then frozen until the scan has stopped: its final maps
        # are lost.
        def healed():
            g = stats().get("stats", {})
            return g.get("gaps", 0) >= 1 and g.get("snapshots_gap", 0) >= 1

        with self.xp.Client(control, timeout_ms=10000) as daemon:
            first = daemon.status()["version"]
            relay.send_signal(signal.SIGSTOP)
            try:
                wait_for("4 cycles published while the relay is frozen",
                         lambda: daemon.status()["version"] >= first + 4 or replay.poll() is not None, timeout=60)
            finally:
                relay.send_signal(signal.SIGCONT)
        self.assertIsNone(replay.poll(), "the scan ended before 4 cycles passed: slow the replay down")
        # seen and healed before the next freeze (which would stall the snapshot)
        wait_for("the gap seen and healed", healed, timeout=30)
        relay.send_signal(signal.SIGSTOP)
        try:
            self.assertEqual(replay.wait(120), 0)
            version = final_version(self.xp, control, "gap")
        finally:
            relay.send_signal(signal.SIGCONT)
        try:
            final = wait_for("the final maps at the relay", lambda: (st := stats()) and st.get("scan_id") == "gap"
                             and st["versions"].get("maps/fractions") == version and st, timeout=60)
        except AssertionError as e:
            raise AssertionError(f"{e}: the daemon's final version is {version}, the relay has {stats()}") from None
        # The final maps were lost unless the kernel's socket buffers held them: then the stopped
        # scan's status showed the newer version, and that was healed once.
        st = final["stats"]
        self.assertGreaterEqual(st.get("snapshots_gap", 0), 1, st)
        self.assertGreater(st.get("missed_cycles", 0), 0, st)
        self.assertEqual(st.get("gaps_after_stop", 0), st.get("snapshots_stopped", 0), st)
        with h5py.File(os.path.join(results, "gap.h5"), "r") as f:
            self.assertEqual(f["entry/results/fractions"].shape[1:], (256, 256))
        print(f"forced gap: {st.get('gaps', 0)} gaps ({st.get('missed_cycles', 0)} cycles missed), "
              f"{st.get('gaps_after_stop', 0)} after the stop; snapshots {st.get('snapshots_gap', 0)} + "
              f"{st.get('snapshots_stopped', 0)}; final version {final['versions'].get('maps/fractions')}", flush=True)

    def test_6_zoom(self):
        """A relay with --max-display 16 sends the 48×40 maps every 3rd pixel. A rectangle
        dragged on one map while a scan streams makes every map show that region at full
        resolution, and the live publications keep refreshing it up to the final maps, whose
        values are the result file's; a click there inspects the pixel under the mouse; the wheel
        zooms out (every 2nd pixel); "reset zoom" shows the full image again; a malformed view
        is refused."""
        from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415
        from selenium.webdriver.common.actions.wheel_input import ScrollOrigin  # noqa: PLC0415
        b = self.browser
        port = binaries.free_port()
        self.spawn([sys.executable, os.path.join(ARGS.source_dir, "clients/dashboard/xanes-dashboard"), "--results", self.pub,
                    "--control", self.control, "--port", str(port), "--max-display", "16", "--quiet"], "dashboard-zoom.log")
        url = f"http://127.0.0.1:{port}"
        wait_for("the zooming dashboard", lambda: self._answers(url) and get_json(url + "/api/stats")[1].get("daemon") == "live")
        b.get(url + "/")
        wait_for("the page live", lambda: self.js("window.xanesDash && xanesDash.daemon") == "live")
        replay = self.spawn([ARGS.replay, "--input", self.scan, "--endpoint", self.ingest, "--rate", "10", "--scan-id", "zoom",
                             "--quiet"], "replay-zoom.log")
        wait_for("the first maps of 'zoom'", lambda: self.js("xanesDash.scanId === 'zoom' && !!xanesDash.fractionHeader "
                                                             "&& xanesDash.fractionHeader.scan_id === 'zoom'"), timeout=30)

        def panels():  # the fitted references may change while the scan starts (reference selection)
            return [f"fraction:{n}" for n in self.js("xanesDash.referenceNames")] + ["thickness", "residual", "segments",
                                                                                    "nenergies"]

        def shown(panel):  # the region a panel shows, and its version
            return self.js(f"(p => p && p.header && (({{x0, y0, x1, y1, step, w, h, version, final}}) => "
                           f"({{x0, y0, x1, y1, step, w, h, version, final}}))(p.header))(xanesDash.panels.get('{panel}'))")

        def region(panel):
            h = shown(panel)
            return h and (h["x0"], h["y0"], h["x1"], h["y1"], h["step"])

        def all_show(r):
            return all(region(i) == r for i in panels())

        full = (0, 0, 40, 48, 3)  # x0 y0 x1 y1 step: the scan is 48 rows × 40 columns
        wait_for("every map, full image every 3rd pixel", lambda: all_show(full), timeout=20)
        ids = panels()
        canvas = b.find_element("css selector", f"canvas[data-panel='{ids[0]}']")

        def offset(x, y):  # from the canvas centre (selenium 4) to image point (x, y), full-resolution pixels
            h, size = shown(ids[0]), canvas.size
            return (int((x - h["x0"]) * size["width"] / (h["w"] * h["step"]) - size["width"] / 2),
                    int((y - h["y0"]) * size["height"] / (h["h"] * h["step"]) - size["height"] / 2))

        # Drag from image point (10.5, 12.5) to (21.5, 21.5): the region x 10–21, y 12–21, 12×10 pixels.
        (ax, ay), (bx, by) = offset(10.5, 12.5), offset(21.5, 21.5)
        ActionChains(b).move_to_element_with_offset(canvas, ax, ay).click_and_hold().move_by_offset(bx - ax, by - ay) \
            .release().perform()
        zoomed = (10, 12, 22, 22, 1)
        wait_for("every map zoomed into x 10–21, y 12–21 at full resolution", lambda: all_show(zoomed), timeout=20)
        self.assertEqual(self.js("xanesDash.view"), [10, 12, 22, 22])
        self.assertIsNone(self.js("xanesDash.pixel"), "the drag inspected a pixel")
        v_zoom = shown(ids[0])["version"]
        self.assertEqual(replay.wait(60), 0)
        version = final_version(self.xp, self.control, "zoom")
        wait_for("the final maps, still zoomed", lambda: all((h := shown(i)) and h["final"] and h["version"] == version
                                                             and region(i) == zoomed for i in panels()), timeout=30)
        self.assertGreater(version, v_zoom, "the zoomed region was not refreshed by a later publication")
        with self.xp.Client(self.control, timeout_ms=10000) as c:
            result_file = c.status()["result_file"]
        with h5py.File(result_file, "r") as f:
            fractions = f["entry/results/fractions"][()]
            sigma = f["entry/results/fraction_sigma"][()]
            mask = f["entry/results/mask"][()]
            thickness = f["entry/results/thickness"][()]
            file_names = [n.decode() if isinstance(n, bytes) else n for n in f["entry/results/reference_names"][()]]
        names = self.js("xanesDash.referenceNames")
        self.assertEqual(file_names, names)
        # The first panel of the final maps (the reference selection may have dropped ids[0]'s).
        first = f"fraction:{names[0]}"
        canvas = b.find_element("css selector", f"canvas[data-panel='{first}']")

        def received(panel, key="data"):  # the panel's values, as the image rows × columns it shows
            h = shown(panel)
            return np.float32(self.js(f"Array.from(xanesDash.panels.get('{panel}').{key})")).reshape(h["h"], h["w"])

        window = np.s_[12:22, 10:22]
        for k, n in enumerate(names):
            np.testing.assert_array_equal(received(f"fraction:{n}"), fractions[k][window], n)
            np.testing.assert_array_equal(received(f"fraction:{n}", "sigma"), sigma[k][window], n)
        np.testing.assert_array_equal(received(first, "mask"), mask[window])
        np.testing.assert_array_equal(received("thickness"), thickness[window])

        # A click in the zoomed view: pixel (15, 17), as the inspector and the hover say.
        x, y = 15, 17
        ActionChains(b).move_to_element_with_offset(canvas, *offset(x + 0.5, y + 0.5)).click().perform()
        pixel = wait_for("the clicked pixel's inspector", lambda: (p := self.js("xanesDash.pixel")) and p["x"] == x and p["y"] == y
                         and p, timeout=20)
        np.testing.assert_array_equal(np.float32(pixel["fractions"]), fractions[:, y, x])
        self.assertIn(f"(x {x}, y {y})", b.find_element("id", "hover").text)
        b.save_screenshot(os.path.join(ARGS.build_dir, "dashboard-zoom.png"))

        # The wheel (towards you) zooms out around the mouse: 1.5 times the region, every 2nd pixel.
        ActionChains(b).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 100).perform()
        out = wait_for("every map zoomed out", lambda: (r := region(first)) and r != zoomed and all_show(r) and r, timeout=20)
        x0, y0, x1, y1, step = out
        self.assertTrue(x0 <= 10 and y0 <= 12 and x1 >= 22 and y1 >= 22 and step == 2, out)
        np.testing.assert_array_equal(received(first), fractions[0, y0:y1:2, x0:x1:2])

        b.find_element("id", "btn-reset-zoom").click()
        wait_for("every map, full image again", lambda: all_show(full), timeout=20)
        self.assertIsNone(self.js("xanesDash.view"))
        np.testing.assert_array_equal(received(first), fractions[0, ::3, ::3])
        self.js("xanesDash.ws.send(JSON.stringify({type: 'view', region: [1, 2]}))")
        wait_for("the malformed view refused", lambda: self.js("xanesDash.errors.some((e) => e.code === 'invalid_view')"))
        print(f"zoom: maps every 3rd pixel, zoomed to x 10–21, y 12–21 at v{v_zoom}, refreshed to final v{version}; "
              f"wheel out to {out}", flush=True)

    def test_7_scan_after_scan(self):
        """A scan started right after the last one's stop runs beside that scan's final maps and
        file (the daemon publishes them after the new scan's start): the relay keeps following
        the running scan, not the earlier one's end."""
        xp = self.xp
        import zmq  # noqa: PLC0415
        energies = np.loadtxt(os.path.join(ARGS.source_dir, "config/references/fe_k_energies_hxn.txt"))
        rng = np.random.default_rng(7)
        with xp.Client(self.control, timeout_ms=10000) as c:
            beside_before = c.status()["counters"].get("scans.started_beside_finish", 0)
        before = self.stats()["stats"].get("earlier_scan", 0)
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.connect(self.ingest)
        # Back to back, as a fly-scan controller sends them. burst-a is the larger: its finish
        # (final maps, selection, segmentation, file) must still run when burst-b's start is
        # taken, tens of milliseconds against one; with two equal 16×12 scans the finish
        # sometimes ended first on a loaded machine, and nothing of burst-a came late.
        for scan_id, shape in (("burst-a", (96, 128)), ("burst-b", (16, 12))):
            xp.send(push, xp.start_message(scan_id, shape, energies, "fluorescence"))
            for e, ev in enumerate(energies):
                mu = 1.0 + 2.0 / (1.0 + np.exp(-(ev - 7125.0) / 3.0))
                xp.send(push, xp.frame_message(scan_id, e, e, float(ev), rng.poisson(500 * mu, shape).astype(np.float32),
                                               i0=1e5))
            xp.send(push, xp.stop_message(scan_id, frames_sent=len(energies)))
        final_version(xp, self.control, "burst-b")
        push.close(linger=1000)
        with xp.Client(self.control, timeout_ms=10000) as c:
            self.assertEqual(c.status()["counters"].get("scans.started_beside_finish", 0), beside_before + 1)
        # burst-a's stopped status came after burst-b's start: set aside, not followed.
        wait_for("the relay on burst-b's final maps", lambda: self.stats().get("scan_id") == "burst-b"
                 and self.stats()["stats"].get("earlier_scan", 0) > before)
        b = self.browser
        b.get(self.url + "/")
        wait_for("the page on burst-b", lambda: self.js("window.xanesDash && xanesDash.scanId === 'burst-b' && xanesDash.final"))

    def _answers(self, url):
        try:
            get_json(url + "/api/stats")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def _alert(self):
        from selenium.common.exceptions import NoAlertPresentException  # noqa: PLC0415
        try:
            a = self.browser.switch_to.alert
            a.text  # noqa: B018  (raises when there is none)
            return a
        except NoAlertPresentException:
            return None


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    for opt in ("--xanesd", "--simulate", "--replay", "--source-dir", "--build-dir"):
        p.add_argument(opt, required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)
