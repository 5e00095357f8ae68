#!/usr/bin/python3
"""Dashboard keep-up benchmark (issue 15): does a browser keep up with a large live scan?

The real xanesd (publish.interval_ms 250, 3 references loaded) fits a SIZE² scan replayed by
xanes-replay at RATE energies per second; xanes-dashboard relays its maps (every n-th pixel
above 512² for display); headless Chromium (Debian's, through python3-selenium) shows the page,
the full image or, with --zoom N, an N×N region in the middle (as a user zoomed in: the relay
sends it at full resolution up to 512²). Measured: the publication cycles the daemon made (the
final maps' version), the fraction maps the page received and drew (per fraction panel), the
stale versions the relay dropped for the page, the relay's CPU time and peak RSS, and the
machine's load average (other processes share its cores).

Target: frames drawn per publication >= 0.9 for one fraction panel (the page draws at most
once per animation frame, so a map that arrives while another waits replaces it: both the
relay and the page drop stale versions, never the newest).

With --paced-publisher MS the daemon does not fit: a publisher process of this script sends
synthetic but protocol-correct cycles (the daemon's topics in its order: maps/fractions,
maps/thickness, maps/residual, maps/nenergies, then status; the headers and array layout
xanesd's publish/products.cpp makes and xanesd.protocol.check_product checks, SIZE² with
--references K, the arrays encoded once and only the headers renewed) every MS milliseconds,
--count times, the last one final, on a PUB socket of its own with the daemon's send high-water
mark (20 messages). The relay subscribes to it, and asks `status` and `snapshot` of a real,
idle xanesd (no scan: its snapshot holds nothing of the synthetic scan), so its control side runs
as it does live. This is the issue's pace, which the daemon's own cycle at 2048² (0.5–2 s here)
cannot reach on a 2-core machine. Measured besides: the CPU time of each process (relay, page =
Chromium's processes, publisher, idle daemon, this script with chromedriver) and of the whole
machine over the run (/proc), and the relay's RSS and queued bytes (/api/stats) over it; with
--cpu-throttle R the page runs R× slower (DevTools Emulation.setCPUThrottlingRate), a slow
browser, to show the relay's memory stays bounded.

A benchmark, not a test: it prints its figures and always exits 0.
"""
import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import binaries  # noqa: E402  (tests/binaries.py: free_port, stop, headless_chromium, wait_for_status)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def children_of(pid):
    """Every process below pid (Chromium's browser, renderer, GPU and utility processes below chromedriver)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def process_kind(pid):
    """Chromium's process type from its command line (--type=renderer, gpu-process, utility …;
    none: the browser process), else the program's name. (Chromium rewrites its argv: one string.)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").split()
    except OSError:
        return "gone"
    kinds = [x[7:] for x in argv if x.startswith("--type=")]
    sub = [x[19:].rsplit(".", 1)[-1] for x in argv if x.startswith("--utility-sub-type=")]
    if kinds:
        return kinds[0] + (f" ({sub[0]})" if sub else "")
    return "browser" if argv and "chromium" in argv[0].lower() else os.path.basename(argv[0]) if argv else "?"


# The page's own time, measured the same way for any version of app.js: its top-level functions
# are properties of window, and the page calls them by name, so wrapping them times every call.
PAGE_TIMERS = """
const t = (window.__bench = {draw_ms: 0, draw_calls: 0, draw_max_ms: 0, map_ms: 0, decode_ms: 0});
const wrap = (name, key, calls) => {
  const f = window[name];
  if (typeof f !== "function") return false;
  window[name] = function (...args) {
    const t0 = performance.now();
    try { return f.apply(this, args); } finally {
      const ms = performance.now() - t0;
      t[key] += ms;
      if (calls) { t[calls]++; t.draw_max_ms = Math.max(t.draw_max_ms, ms); }
    }
  };
  return true;
};
return [wrap("drawDirty", "draw_ms", "draw_calls"), wrap("onMap", "map_ms"), wrap("decodeBinary", "decode_ms")];
"""


def thread_cpu(pid):
    """CPU seconds of each thread of pid, by thread name (ZeroMQ's I/O thread is ZMQbg/IO/0)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def tree_cpu(pids):
    """CPU seconds of these processes (those that ended meanwhile count 0)."""
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def machine_busy():
    """(busy, total) CPU seconds of the machine since boot, summed over its cores (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    return (sum(v[:8]) - v[3] - v[4]) / tck, sum(v[:8]) / tck


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def publish_paced(endpoint, size, n_refs, period_ms, count, scan_id):
    """The --paced-publisher process: binds a PUB socket at endpoint, says "ready" on stdout,
    waits for a line on stdin, then publishes count cycles every period_ms on a fixed schedule
    (a late cycle is sent at once, not skipped), and reports what it sent on stdout."""
    import numpy as np  # noqa: PLC0415
    import zmq  # noqa: PLC0415
    from xanesd import protocol as xp  # noqa: PLC0415
    N, K = size, n_refs
    names = [f"Ref{k + 1}" for k in range(K)]
    rng = np.random.default_rng(3)
    # Domains-like content: smooth blocks plus noise (the relay's and page's cost does not depend on it).
    yy, xx = np.mgrid[0:N, 0:N]
    dom = ((yy // max(1, N // 4)) + (xx // max(1, N // 4))) % K
    fr = np.stack([(dom == k).astype(np.float32) * 0.8 + 0.1 for k in range(K)])
    fr += rng.random(fr.shape, dtype=np.float32) * 0.05
    sg = rng.random((K, N, N), dtype=np.float32) * 0.01
    mask = np.ones((N, N), np.uint8)
    thick = (0.5 + rng.random((N, N), dtype=np.float32)).astype(np.float32)
    resid = rng.random((N, N), dtype=np.float32) * 0.01
    rfac = rng.random((N, N), dtype=np.float32) * 0.001
    nen = np.full((N, N), 24, np.uint16)
    del yy, xx, dom
    pixels = N * N

    def map_header(v, final):
        return dict(type="map", scan_id=scan_id, version=v, time_unix=time.time(), rows=N, cols=N,
                    frames_applied=v * pixels, last_seq=v * pixels - 1, energies_measured=min(24, v), final=final)

    # The arrays encoded once (their frames reused, copy=False); each cycle renews the headers.
    templates = [
        xp.encode("maps/fractions", dict(map_header(1, False), reference_names=names, fit_method="nnls",
                                         mask_thickness_threshold=0.0, mask_valid_pixels=pixels, spatial=False),
                  [("fractions", fr), ("fraction_sigma", sg), ("mask", mask)]),
        xp.encode("maps/thickness", map_header(1, False), [("thickness", thick)]),
        xp.encode("maps/residual", map_header(1, False), [("residual", resid), ("rfactor", rfac)]),
        xp.encode("maps/nenergies", map_header(1, False), [("nenergies", nen)]),
    ]
    for t in templates:  # the contract the relay checks
        xp.check_product(xp.decode(t))

    def status(v, state):
        return xp.encode("status", dict(type="status", scan_id=scan_id, version=v, time_unix=time.time(), state=state,
                                        scan={"scan_id": scan_id, "rows": N, "cols": N}, references=names))

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 20)  # xanesd's publish.sndhwm default
    pub.setsockopt(zmq.LINGER, 5000)
    pub.bind(endpoint)
    print("ready", flush=True)
    sys.stdin.readline()
    pub.send_multipart(status(0, "running"))  # the scan's start
    sent_bytes, late = 0, 0
    t0 = time.monotonic()
    for v in range(1, count + 1):
        final = v == count
        for t in templates:
            h = xp.decode_header(t[1])
            h.update(version=v, time_unix=time.time(), final=final, frames_applied=v * pixels, last_seq=v * pixels - 1,
                     energies_measured=min(24, v))
            pub.send_multipart([t[0], xp.encode_header(h)] + t[2:], copy=False)
            sent_bytes += sum(len(f) for f in t[2:])
        pub.send_multipart(status(v, "stopped" if final else "running"))
        wait = t0 + v * period_ms / 1000 - time.monotonic()
        if wait < 0:
            late += 1
        time.sleep(max(0.0, wait))
    wall = time.monotonic() - t0
    print(json.dumps({"sent": count, "wall": wall, "late": late, "bytes_per_cycle": sent_bytes / count}), flush=True)
    time.sleep(2)  # let the last frames leave
    pub.close()
    ctx.term()


def tear_down(browser, procs, logs, scratch):
    """The end of a run: the browser, the processes, their logs, and the scratch folder (None: kept)."""
    if browser:
        browser.quit()
    binaries.stop(procs)
    for log in logs:
        log.close()
    if scratch:
        subprocess.run(["rm", "-rf", scratch])


def page_metrics(browser):
    """The renderer's cumulative CDP Performance metrics (TaskDuration, ScriptDuration …, seconds)."""
    return {m["name"]: m["value"] for m in browser.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}


def relay_stats(port):
    """The relay's /api/stats."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=10) as r:
        return json.loads(r.read())


def open_page(a, spawn, results, control, port):
    """The relay on a results and a control endpoint, once it reports the daemon live, and the
    page in headless Chromium, connected before anything is published (else it would join late,
    with the current state rather than the first maps; no cap a loaded machine could exceed but
    120 s), zoomed into the middle a.zoom² pixels when asked. (relay process, browser, stats
    function), or None when the page did not connect; the caller quits the browser it gets."""
    dash = spawn([sys.executable, os.path.join(a.source_dir, "clients/dashboard/xanes-dashboard"), "--results", results,
                  "--control", control, "--port", str(port), "--quiet"], "dashboard.log")
    stats = functools.partial(relay_stats, port)
    for _ in range(100):
        try:
            if stats()["daemon"] == "live":
                break
        except OSError:
            pass
        time.sleep(0.1)
    browser = binaries.headless_chromium()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        t_page = time.monotonic()
        while browser.execute_script("return window.xanesDash && xanesDash.daemon") != "live":
            if time.monotonic() - t_page > 120:
                print("dashboard_keepup: the page did not connect within 120 s")
                browser.quit()
                return None
            time.sleep(0.1)
        print(f"page connected in {time.monotonic() - t_page:.1f} s", flush=True)
        if a.zoom:  # the page's own zoom call: the relay keeps the view for the maps to come
            x0 = (a.size - a.zoom) // 2
            browser.execute_script(f"setView([{x0}, {x0}, {x0 + a.zoom}, {x0 + a.zoom}])")
    except BaseException:
        browser.quit()
        raise
    return dash, browser, stats


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for opt in ("--xanesd", "--source-dir"):
        p.add_argument(opt, required=True)
    p.add_argument("--simulate", help="xanes-simulate (not with --paced-publisher)")
    p.add_argument("--replay", help="xanes-replay (not with --paced-publisher)")
    p.add_argument("--paced-publisher", type=float, metavar="MS",
                   help="publish synthetic SIZE² cycles every MS ms instead of the daemon's scan (the daemon answers control only)")
    p.add_argument("--count", type=int, default=60, help="cycles with --paced-publisher (default 60)")
    p.add_argument("--references", type=int, default=3, help="references in the synthetic maps (default 3)")
    p.add_argument("--cpu-throttle", type=float, metavar="R", help="the page runs R× slower (DevTools CPU throttling): a slow browser")
    p.add_argument("--publish-child", metavar="ENDPOINT", help=argparse.SUPPRESS)  # the paced publisher process itself
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--energies", type=int, default=24)
    p.add_argument("--rate", type=float, default=1.0, help="energies per second (default 1)")
    p.add_argument("--zoom", type=int, metavar="N", help="the page shows an N×N region in the middle (default: the full image)")
    p.add_argument("--out", help="keep the files here (default: a temporary folder)")
    # The daemon's cycle at 2048² is the pace: the fit alone by default, so that the page is
    # what is measured (segmentation, reference selection and the spatial step make cycles of seconds).
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   default=["fit.spatial=false", "segment.enabled=false", "references.select=false"],
                   help="daemon settings (default: fit.spatial=false segment.enabled=false references.select=false)")
    a = p.parse_args()
    sys.path.insert(0, os.path.join(a.source_dir, "protocol", "python"))
    from xanesd import protocol as xp  # noqa: PLC0415
    if a.publish_child:
        publish_paced(a.publish_child, a.size, a.references, a.paced_publisher, a.count, "paced")
        return 0
    if a.paced_publisher:
        return run_paced(a, xp)
    if not (a.simulate and a.replay):
        p.error("--simulate and --replay are needed unless --paced-publisher is given")

    out = a.out or tempfile.mkdtemp(prefix="xanes-dash-bench-")
    os.makedirs(out, exist_ok=True)
    refs = os.path.join(a.source_dir, "config/references")
    library = os.path.join(refs, "fe_k_library_normalized.nor")
    with open(os.path.join(refs, "fe_k_energies_hxn.txt")) as f:
        grid = [float(l.split()[0]) for l in f if l.strip() and not l.startswith("#")]
    step = max(1, len(grid) // a.energies)
    energies = grid[::step][:a.energies]
    efile = os.path.join(out, "energies.txt")
    with open(efile, "w") as f:
        f.write("\n".join(f"{e:.2f}" for e in energies) + "\n")
    scan = os.path.join(out, f"scan-{a.size}x{len(energies)}.h5")  # kept with --out: reused
    t0 = time.monotonic()
    if not os.path.exists(scan):
        subprocess.run([a.simulate, "--refs", library, "--use", "Magnetite,Goethite,Pyrite", "--energies", efile,
                        "--shape", f"{a.size}x{a.size}", "--layout", "domains", "--seed", "3", "--out", scan],
                       check=True, capture_output=True)
    print(f"scan: {a.size}x{a.size} x {len(energies)} energies ({time.monotonic() - t0:.1f} s to simulate)", flush=True)

    ingest, pub, control = (f"tcp://127.0.0.1:{binaries.free_port()}" for _ in range(3))
    port = binaries.free_port()
    procs = []
    logs = []

    def spawn(argv, name):
        log = open(os.path.join(out, name), "w")
        logs.append(log)
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    browser = None
    # A fresh output folder: the journal of an earlier run would be recovered as a scan.
    results = os.path.join(out, "results")
    subprocess.run(["rm", "-rf", results])
    try:
        spawn([a.xanesd, "--config", os.path.join(a.source_dir, "config/default.json"), "--set", f"ingest.endpoint={ingest}",
               "--set", f"publish.endpoint={pub}", "--set", f"control.endpoint={control}",
               "--set", f"output.directory={results}", "--set", "publish.interval_ms=250",
               "--set", "log.level=warn"] + [x for kv in a.set for x in ("--set", kv)], "xanesd.log")
        with binaries.wait_for_status(xp, control, tries=100) as c:
            c.load_references([library], names=["Magnetite", "Goethite", "Pyrite"])
        opened = open_page(a, spawn, pub, control, port)
        if opened is None:
            return 0
        dash, browser, stats = opened

        cpu0, rss0, load0 = cpu_seconds(dash.pid), rss_mb(dash.pid), os.getloadavg()[0]
        peak = rss0
        t0 = time.monotonic()
        replay = spawn([a.replay, "--input", scan, "--endpoint", ingest, "--rate", str(a.rate), "--scan-id", "keepup",
                        "--quiet"], "replay.log")
        final = None
        # (fraction maps the page has received, relay CPU then): the relay's CPU from one map the
        # page received to the next (one publication when it gets them all); its median is not
        # swayed by the first ones, which grow the relay's heap.
        marks = [(0, cpu0)]
        while time.monotonic() - t0 < 600:
            peak = max(peak, rss_mb(dash.pid))
            got = browser.execute_script("return xanesDash.mapsReceived['maps/fractions'] || 0")
            if got > marks[-1][0]:
                marks.append((got, cpu_seconds(dash.pid)))
            if replay.poll() is not None and browser.execute_script("return xanesDash.final && xanesDash.scanId === 'keepup'"):
                final = browser.execute_script("return xanesDash.versions['maps/fractions']")
                break
            time.sleep(0.1)
        wall = time.monotonic() - t0
        time.sleep(1.0)  # the last draws and the page's drawn report
        cpu = cpu_seconds(dash.pid) - cpu0
        between = [(c1 - c0) / (n1 - n0) for (n0, c0), (n1, c1) in zip(marks, marks[1:])]
        page = browser.execute_script("return {draws: xanesDash.draws, maps: xanesDash.mapsReceived, names: xanesDash.referenceNames, "
                                      "versions: xanesDash.fractionVersions}")
        st = stats()
        if final is None:
            print("dashboard_keepup: the final maps did not reach the page within 600 s")
            return 0
        first = "fraction:" + page["names"][0]
        drawn = page["draws"].get(first, 0)
        got = page["maps"].get("maps/fractions", 0)
        peer = max(st["browsers"], key=lambda b: b["sent"])
        ratio = None  # set below, from the daemon's count of published cycles
        with xp.Client(control, timeout_ms=30000) as c:
            counters = c.status()["counters"]
        # Publications: the fraction maps the relay took from the daemon's PUB socket (a live
        # cycle that a stop cut short used a version and published nothing).
        published = st["stats"].get("pub maps/fractions", 0)
        cycles = counters.get("publish.cycles", 0) + counters.get("publish.cycles_cancelled", 0)
        cycle_ms = counters.get("time_us.cycle.total", 0) / 1000 / max(1, cycles)
        ratio = drawn / max(1, published)
        shown = browser.execute_script("const h = xanesDash.panels.get(arguments[0]).header; return [h.x0, h.y0, h.x1, h.y1, h.step]",
                                       first)
        print(f"  daemon settings                            {' '.join(a.set)}")
        print(f"  page shows                                 x {shown[0]}–{shown[2] - 1}, y {shown[1]}–{shown[3] - 1}, "
              f"{'full resolution' if shown[4] == 1 else f'one pixel in {shown[4]} each way'}")
        print(f"  machine load average (1 min)               {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
              f"({os.cpu_count()} cores)")
        print(f"  publications (fraction maps at the relay)  {published}   in {wall:.1f} s: one every "
              f"{wall / max(1, published) * 1000:.0f} ms (final version {final}; a cycle takes {cycle_ms:.0f} ms in the daemon)")
        print(f"  fraction maps received by the page         {got}   versions {page['versions']}")
        print(f"  drawn ({first})                {drawn}")
        print(f"  stale versions the relay dropped for it    {peer['replaced']}")
        # A live cycle that the stop cut short used a version: a gap to the relay, not a drop.
        print(f"  gaps the relay saw (healed by snapshot)    {st['stats'].get('gaps', 0)} "
              f"({st['stats'].get('missed_cycles', 0)} versions missing; cycles the daemon cancelled: "
              f"{counters.get('publish.cycles_cancelled', 0)})")
        print(f"  frames drawn per map the page received     {drawn / max(1, got):.2f}")
        print(f"  relay counters                             {json.dumps(st['stats'])}")
        print(f"  relay CPU                                  {cpu:.1f} s ({cpu / max(1, published) * 1000:.0f} ms per publication; "
              f"from one map the page received to the next: median {sorted(between)[len(between) // 2] * 1000:.0f} ms, "
              f"the first {between[0] * 1000:.0f} ms)")
        print(f"  relay RSS                                  {rss0:.0f} MB -> peak {peak:.0f} MB")
        print(f"  frames drawn per publication               {ratio:.2f}   target >= 0.9   {'MET' if ratio >= 0.9 else 'NOT MET'}")
    finally:
        tear_down(browser, procs, logs, None if a.out else out)
    return 0


def run_paced(a, xp):
    """The relay and page fed by the paced publisher; a real, idle xanesd answers control."""
    out = a.out or tempfile.mkdtemp(prefix="xanes-dash-bench-")
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results")
    subprocess.run(["rm", "-rf", results])
    pub, control, synth = (f"tcp://127.0.0.1:{binaries.free_port()}" for _ in range(3))
    port = binaries.free_port()
    stats = functools.partial(relay_stats, port)
    procs, logs, browser = [], [], None

    def spawn(argv, name, **kw):
        log = open(os.path.join(out, name), "w")
        logs.append(log)
        procs.append(subprocess.Popen(argv, stderr=log, **({"stdout": log} | kw)))
        return procs[-1]

    print(f"uptime at the start: {uptime()}", flush=True)
    try:
        daemon = spawn([a.xanesd, "--config", os.path.join(a.source_dir, "config/default.json"),
                        "--set", f"ingest.endpoint=tcp://127.0.0.1:{binaries.free_port()}", "--set", f"publish.endpoint={pub}",
                        "--set", f"control.endpoint={control}", "--set", f"output.directory={results}", "--set", "log.level=warn"],
                       "xanesd.log")
        binaries.wait_for_status(xp, control, tries=100).close()
        publisher = spawn([sys.executable, os.path.realpath(__file__), "--xanesd", a.xanesd, "--source-dir", a.source_dir,
                           "--publish-child", synth, "--paced-publisher", str(a.paced_publisher), "--count", str(a.count),
                           "--size", str(a.size), "--references", str(a.references)], "publisher.log",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if publisher.stdout.readline().strip() != "ready":
            print("dashboard_keepup: the publisher did not start")
            return 0
        opened = open_page(a, spawn, synth, control, port)
        if opened is None:
            return 0
        dash, browser, _ = opened
        if a.cpu_throttle:
            browser.execute_cdp_cmd("Emulation.setCPUThrottlingRate", {"rate": a.cpu_throttle})
        wrapped = browser.execute_script(PAGE_TIMERS)
        browser.execute_cdp_cmd("Performance.enable", {})
        time.sleep(1.0)
        driver = browser.service.process.pid
        chromium = children_of(driver)
        kinds = {}
        for c in chromium:
            kinds.setdefault(process_kind(c), []).append(c)
        kind_cpu0 = {k: tree_cpu(v) for k, v in kinds.items()}
        perf0 = page_metrics(browser)
        relay_threads0 = thread_cpu(dash.pid)
        others = {"relay": [dash.pid], "page (Chromium)": chromium, "publisher": [publisher.pid], "xanesd (idle, control)": [daemon.pid],
                  "bench + chromedriver": [os.getpid(), driver]}
        cpu0 = {k: tree_cpu(v) for k, v in others.items()}
        busy0, total0 = machine_busy()
        rss0, up0 = rss_mb(dash.pid), uptime()
        peak, qpeak, qbrowser_peak = rss0, 0, 0
        t0 = time.monotonic()
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        final = None
        next_stats = 0.0
        samples = []  # (s since the start, relay RSS MB)
        while time.monotonic() - t0 < 60 + a.count * a.paced_publisher / 1000 * 3:
            samples.append((time.monotonic() - t0, rss_mb(dash.pid)))
            peak = max(peak, samples[-1][1])
            if time.monotonic() >= next_stats:  # the relay's queued bytes, twice a second
                st = stats()
                qpeak = max(qpeak, st["state_bytes"])
                qbrowser_peak = max([qbrowser_peak] + [b["queued_bytes"] for b in st["browsers"]])
                next_stats = time.monotonic() + 0.5
            if browser.execute_script("return xanesDash.final && xanesDash.scanId === 'paced'"):
                final = browser.execute_script("return xanesDash.versions['maps/fractions']")
                break
            time.sleep(0.1)
        wall = time.monotonic() - t0
        time.sleep(1.0)  # the last draws
        cpu = {k: tree_cpu(v) - cpu0[k] for k, v in others.items()}
        kind_cpu = {k: tree_cpu(v) - kind_cpu0[k] for k, v in kinds.items()}
        relay_threads = {k: v - relay_threads0.get(k, 0.0) for k, v in thread_cpu(dash.pid).items()}
        perf = {k: v - perf0.get(k, 0) for k, v in page_metrics(browser).items()}
        timers = browser.execute_script("return window.__bench")
        gl = browser.execute_script("return window.xanesDash && xanesDash.renderer || null")
        busy1, total1 = machine_busy()
        span = time.monotonic() - t0  # what the CPU times cover: the run and the second after it
        rss_end = rss_mb(dash.pid)
        done = json.loads(publisher.stdout.readline() or "{}")
        page = browser.execute_script("return {draws: xanesDash.draws, maps: xanesDash.mapsReceived, names: xanesDash.referenceNames, "
                                      "versions: xanesDash.fractionVersions || []}")
        st = stats()
        up1 = uptime()
        if final is None:
            print("dashboard_keepup: the final maps did not reach the page")
        first = "fraction:" + (page["names"] or ["?"])[0]
        drawn = page["draws"].get(first, 0)
        got = page["maps"].get("maps/fractions", 0)
        taken = st["stats"].get("pub maps/fractions", 0)
        sent = done.get("sent", a.count)
        peer = max(st["browsers"], key=lambda b: b["sent"])
        n_cores = os.cpu_count()
        machine = (busy1 - busy0) / max(1e-9, (total1 - total0)) * 100
        throttle = f"throttled {a.cpu_throttle:g}×" if a.cpu_throttle else "not throttled"
        print(f"  paced publisher                            {a.size}² × {a.references} references every {a.paced_publisher:.0f} ms, "
              f"{done.get('bytes_per_cycle', 0) / 1e6:.0f} MB of arrays a cycle; page {throttle}{', zoom ' + str(a.zoom) if a.zoom else ''}")
        print(f"  uptime                                     start: {up0}")
        print(f"                                             end:   {up1}")
        print(f"  publications sent                          {sent} in {done.get('wall', 0):.1f} s ({done.get('late', 0)} sent late)")
        print(f"  taken by the relay                         {taken}   (gaps {st['stats'].get('gaps', 0)}, "
              f"{st['stats'].get('missed_cycles', 0)} versions missed)")
        print(f"  received by the page                       {got}   (stale versions the relay dropped for it: {peer['replaced']})")
        if a.count <= 100:  # the page keeps the last 100 versions it received
            missing = sorted(set(range(1, sent + 1)) - set(page["versions"]))
            print(f"  versions the page did not receive          {missing}")
        print(f"  drawn ({first})                   {drawn}")
        ratio = drawn / max(1, sent)
        print(f"  frames drawn per publication               {ratio:.2f}   target >= 0.9   {'MET' if ratio >= 0.9 else 'NOT MET'}"
              f"   (per publication the relay took: {drawn / max(1, taken):.2f})")
        print(f"  relay RSS                                  start {rss0:.0f} MB, peak {peak:.0f} MB, end {rss_end:.0f} MB")
        quarters = [max([r for t, r in samples if q * wall / 4 <= t < (q + 1) * wall / 4] or [0]) for q in range(4)]
        print(f"  relay RSS peak in each quarter of the run  {' / '.join(f'{r:.0f}' for r in quarters)} MB")
        # /api/stats counts a queued map's full-resolution arrays, which it shares with the held state.
        print(f"  relay held / queued for the page (stats)   held peak {qpeak / 1e6:.0f} MB, end {st['state_bytes'] / 1e6:.0f} MB; "
              f"queued peak {qbrowser_peak / 1e6:.0f} MB, end {sum(b['queued_bytes'] for b in st['browsers']) / 1e6:.0f} MB "
              f"(a queued map is the held one, not a copy)")
        print(f"  CPU over {span:.1f} s, until the page had the final map ({wall:.1f} s) and 1 s more "
              f"(% of one core; {n_cores} cores, the machine {machine:.0f} % busy)")
        for k, v in cpu.items():
            print(f"    {k:<28} {v:6.1f} s  {v / span * 100:4.0f} %  {v / max(1, sent) * 1000:5.0f} ms per publication")
        print(f"    relay by thread: " + ", ".join(f"{k} {v / max(1, sent) * 1000:.0f}" for k, v in
                                                 sorted(relay_threads.items(), key=lambda kv: -kv[1]) if v > 0) + " ms per publication")
        print(f"    page by Chromium process: " + ", ".join(f"{k} {v / max(1, sent) * 1000:.0f}" for k, v in
                                                         sorted(kind_cpu.items(), key=lambda kv: -kv[1])) + " ms per publication")
        # The renderer's main thread (CDP Performance metrics) and the page's own functions.
        print(f"    page main thread: tasks {perf.get('TaskDuration', 0) / max(1, sent) * 1000:.0f} ms per publication "
              f"(script {perf.get('ScriptDuration', 0) / max(1, sent) * 1000:.0f}, "
              f"layout+style {(perf.get('LayoutDuration', 0) + perf.get('RecalcStyleDuration', 0)) / max(1, sent) * 1000:.0f})")
        if timers and all(wrapped):
            print(f"    page functions: drawing {timers['draw_ms'] / max(1, sent):.1f} ms per publication "
                  f"({timers['draw_calls']} animation frames drew, {timers['draw_ms'] / max(1, timers['draw_calls']):.1f} ms each, "
                  f"longest {timers['draw_max_ms']:.0f} ms); onMap {timers['map_ms'] / max(1, sent):.1f}, "
                  f"decodeBinary {timers['decode_ms'] / max(1, sent):.1f} ms per publication; map renderer: {gl or '2d (no report)'}")
        else:
            print(f"    page functions: not timed (wrapped drawDirty, onMap, decodeBinary: {wrapped})")
        rest = busy1 - busy0 - sum(cpu.values())
        print(f"    {'other processes and kernel':<28} {rest:6.1f} s  {rest / span * 100:4.0f} %")
        print(f"    {'all processes on the machine':<28} {busy1 - busy0:6.1f} s  {(busy1 - busy0) / span * 100:4.0f} %")
        print(f"  relay counters                             {json.dumps(st['stats'])}")
    finally:
        tear_down(browser, procs, logs, None if a.out else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
