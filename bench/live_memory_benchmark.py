#!/usr/bin/python3
"""Live memory (bench/run_live_memory_benchmark.sh): the daemon's peak resident memory over one
live scan, fed by xanes-replay as fast as the daemon takes it, against the scan's raw float32
cube, the figures `status` states for it (scan.memory: bytes, peak_bytes) and, run here too, numpy holding the
same counts read with h5py. The daemon's peak is the kernel's high-water mark (VmHWM) of its
process, read before it shuts down. A benchmark: it asserts nothing."""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "tests"))
import binaries  # noqa: E402  (tests/binaries.py: daemon_command, wait_for_status, stop)


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--scan", "--xanesd", "--replay", "--config", "--out", "--source-dir"):
        ap.add_argument(name, required=True)
    ap.add_argument("--sets", default="", help="config overrides for the daemon: KEY=VALUE,...")
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.source_dir, "protocol", "python"))
    from xanesd import protocol as xp  # noqa: PLC0415
    import h5py  # noqa: PLC0415

    with h5py.File(a.scan, "r") as f:
        E, R, C = f["raw/counts"].shape
    cube = E * R * C * 4

    # The baseline: numpy holding the counts as float32, read with h5py (GNU time's own child).
    code = ("import h5py, numpy as np; f = h5py.File(%r, 'r'); c = np.asarray(f['raw/counts'][()], dtype=np.float32); "
            "print(c.nbytes)") % a.scan
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", code], capture_output=True, text=True, check=True)
    numpy_s = time.monotonic() - t0
    numpy_peak = int(p.stderr.strip().splitlines()[-1]) * 1024

    os.makedirs(a.out, exist_ok=True)
    cmd, ingest, _, control = binaries.daemon_command(a.xanesd, a.config, a.out, *filter(None, a.sets.split(",")))
    log = open(os.path.join(a.out, "xanesd.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    client = binaries.wait_for_status(xp, control, timeout_ms=60000)
    try:
        idle = status_kb(proc.pid, "VmRSS") * 1024
        t0 = time.monotonic()
        replay = subprocess.Popen([a.replay, "--input", a.scan, "--endpoint", ingest, "--scan-id", "memory", "--quiet",
                                   "--timeout", "900"])
        # Where the memory goes: the daemon's RSS with its progress, every half second.
        timeline, last = [], -1.0
        while True:
            st = client.status()
            now = time.monotonic() - t0
            if now - last >= 0.5:
                c = st["counters"]
                timeline.append((now, status_kb(proc.pid, "VmRSS") * 1024, c.get("ingest.frames_accepted", 0),
                                 c.get("publish.cycles", 0), st.get("state", "")))
                last = now
            if replay.poll() is not None and replay.returncode != 0:
                raise RuntimeError(f"xanes-replay exited {replay.returncode}")
            if (st.get("scan") or {}).get("scan_id") == "memory" and st.get("state") == "stopped" and st.get("result_file"):
                break
            time.sleep(0.05)
        replay.wait()
        seconds = time.monotonic() - t0
        memory = st["scan"]["memory"]
        stated, stated_peak = memory["bytes"], memory["peak_bytes"]
        accepted = st["counters"].get("ingest.frames_accepted", 0)
        peak = status_kb(proc.pid, "VmHWM") * 1024
        client.shutdown()
        proc.wait(timeout=120)
    finally:
        binaries.stop([proc])  # still running: an error above
        client.close()
        log.close()

    gb = 1e9
    print(f"== {R}×{C} × {E} energies{', ' + a.sets if a.sets else ''}: raw float32 cube {cube / gb:.2f} GB; the daemon took {accepted} frames, "
          f"first sent to the result file in {seconds:.1f} s")
    print(f"  {'':<48}{'GB':>8}{'× cube':>9}")
    print(f"  {'numpy holding the counts (h5py read, peak RSS)':<48}{numpy_peak / gb:8.2f}{numpy_peak / cube:9.2f}"
          f"   ({numpy_s:.1f} s)")
    print(f"  {'xanesd: stated, the scan (scan.memory.bytes)':<48}{stated / gb:8.2f}{stated / cube:9.2f}"
          f"   store {memory['store'] / gb:.2f}, fit {memory['fit'] / gb:.2f}, products {memory['products'] / gb:.2f}")
    print(f"  {'xanesd: stated, with ingest buffers (peak_bytes)':<48}{stated_peak / gb:8.2f}{stated_peak / cube:9.2f}"
          f"   ingest buffers {memory['ingest_buffers'] / gb:.2f}")
    print(f"  {'xanesd: idle before the scan (RSS)':<48}{idle / gb:8.2f}{idle / cube:9.2f}")
    print(f"  {'xanesd: peak over the scan (VmHWM)':<48}{peak / gb:8.2f}{peak / cube:9.2f}"
          f"   target ≤ 2.5× the cube: {'MET' if peak <= 2.5 * cube else 'NOT MET'}")
    print(f"  xanesd peak / numpy holding the counts: {peak / numpy_peak:.2f}×; peak / stated peak: {peak / stated_peak:.2f}×")
    print("  the daemon's RSS over the scan (s, GB, frames accepted, publication cycles, state):")
    print("   " + "; ".join(f"{t:.1f} {r / gb:.2f} {n} {k} {s[:1]}" for t, r, n, k, s in timeline))


if __name__ == "__main__":
    main()
