#!/usr/bin/python3
"""bench_journal: what the scan journal costs ingest (bench/README.md, "bench_journal").

Runs the real xanesd binary and the real xanes-replay on one simulated scan, as fast as the
daemon accepts it (fit running, default config), with the journal off, on (the default: a
writer thread, fdatasync every 1000 ms in the background), on without the writer thread
(journal.queue_MiB=0: each record written by the pipeline thread, the baseline) and on with
fdatasync after every frame. The settings alternate within each repeat, so all of them see the
same machine load. Ingest time is from the replayer's start until the daemon has accepted every
frame (counter ingest.frames_accepted, polled every 10 ms), and until the journal holds them all
(journal.frames: every frame acknowledged); the scan is not stopped, so the final solve and the
result file are not in it. The daemon also reports the time spent writing
the journal (status journal.write_seconds: CRC-32, write(2), and fdatasync when it syncs every
frame) and the pipeline thread's time in it (counter time_us.ingest.journal: the whole write
without the writer thread, handing the record over with it): the direct cost, printed next to
frames/s because on a busy machine the throughput ratio is noisier than the effect.

  bench/bench_journal.py --build build [--shape 512x512] [--repeats 3] [--rows-per-frame 0]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

HERE = os.path.dirname(os.path.realpath(__file__))
SOURCE = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE, "tests"))
from binaries import free_port  # noqa: E402  (tests/binaries.py)

SETTINGS = [
    ("off", ["journal.enabled=false"]),
    ("on (fsync 1000 ms)", ["journal.enabled=true", "journal.fsync_ms=1000"]),
    ("on, no writer thread", ["journal.enabled=true", "journal.fsync_ms=1000", "journal.queue_MiB=0"]),
    ("on (fsync every frame)", ["journal.enabled=true", "journal.fsync_ms=0"]),
]


def status(ctx, endpoint, timeout_ms=2000):
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.connect(endpoint)
    try:
        s.send_string(json.dumps({"cmd": "status"}))
        return json.loads(s.recv_string())
    except zmq.Again:
        return None
    finally:
        s.close()


def request(ctx, endpoint, req):
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.connect(endpoint)
    s.send_string(json.dumps(req))
    reply = json.loads(s.recv_string())
    s.close()
    return reply


def one_run(args, ctx, scan, frames, work, extra):
    out = tempfile.mkdtemp(prefix="run-", dir=work)
    ports = [free_port() for _ in range(3)]
    ingest, pub, control = (f"tcp://127.0.0.1:{p}" for p in ports)
    cmd = [os.path.join(args.build, "service", "xanesd"), "--config", os.path.join(SOURCE, "config", "default.json"),
           "--set", f"ingest.endpoint={ingest}", "--set", f"publish.endpoint={pub}",
           "--set", f"control.endpoint={control}", "--set", f"output.directory={out}", "--set", "log.level=warn"]
    for s in extra:
        cmd += ["--set", s]
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while status(ctx, control, 200) is None:
            if daemon.poll() is not None:
                sys.exit("bench_journal: xanesd exited at start-up: " + " ".join(cmd))
        replay = [os.path.join(args.build, "clients", "xanes-replay"), "--input", scan, "--endpoint", ingest,
                  "--scan-id", "bench", "--no-stop"]
        if args.rows_per_frame:
            replay += ["--rows-per-frame", str(args.rows_per_frame)]
        t0 = time.monotonic()
        sender = subprocess.Popen(replay, stdout=subprocess.DEVNULL)
        accepted_at = None
        while True:
            st = status(ctx, control)
            accepted = st["counters"].get("ingest.frames_accepted", 0) if st else 0
            journal = st.get("journal", {}) if st else {}
            if accepted >= frames and accepted_at is None:
                accepted_at = time.monotonic() - t0
            if accepted_at is not None and (not journal.get("enabled") or journal.get("frames", 0) >= frames):
                break
            if time.monotonic() - t0 > 600:
                sys.exit(f"bench_journal: only {accepted} of {frames} frames accepted after 600 s")
            time.sleep(0.01)
        seconds = accepted_at
        acknowledged = time.monotonic() - t0
        sender.wait(60)
        journal = st.get("journal", {})
        request(ctx, control, {"cmd": "shutdown"})
        daemon.wait(60)
        return {"seconds": seconds, "frames_per_s": frames / seconds, "acked_per_s": frames / acknowledged,
                "journal_bytes": journal.get("bytes", 0),
                "journal_seconds": journal.get("write_seconds", 0.0),
                "pipeline_seconds": st["counters"].get("time_us.ingest.journal", 0) / 1e6}
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(out, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(SOURCE, "build"))
    ap.add_argument("--shape", default="512x512")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows-per-frame", type=int, default=0)
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one under the build folder)")
    args = ap.parse_args()
    rows, cols = (int(x) for x in args.shape.split("x"))
    work = args.work or tempfile.mkdtemp(prefix="bench-journal-", dir=args.build)
    os.makedirs(work, exist_ok=True)
    scan = os.path.join(work, "scan.h5")
    refs = os.path.join(SOURCE, "config", "references")
    subprocess.run([os.path.join(args.build, "clients", "xanes-simulate"), "--refs",
                    os.path.join(refs, "fe_k_library_normalized.nor"), "--use", "Magnetite,Goethite,Pyrite",
                    "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"), "--shape", args.shape, "--out", scan],
                   check=True, stdout=subprocess.DEVNULL)
    energies = 73
    per_energy = 1 if not args.rows_per_frame else -(-rows // args.rows_per_frame)
    frames = energies * per_energy
    ctx = zmq.Context()
    results = {name: [] for name, _ in SETTINGS}
    for r in range(args.repeats):
        for name, extra in SETTINGS:
            res = one_run(args, ctx, scan, frames, work, extra)
            results[name].append(res)
            print(f"repeat {r + 1}: journal {name:24s} {res['seconds']:7.2f} s  {res['frames_per_s']:7.1f} frames/s"
                  f" accepted, {res['acked_per_s']:7.1f} acknowledged"
                  f"  journal {res['journal_bytes'] / 1e6:8.1f} MB, {res['journal_seconds']:6.3f} s writing it,"
                  f" {res['pipeline_seconds']:6.3f} s of the pipeline's", flush=True)
    base = statistics.median(x["frames_per_s"] for x in results["off"])
    print(f"\n{rows}x{cols} px x {energies} energies, {frames} frames, median of {args.repeats}:")
    print("frames/s: accepted by the pipeline; acknowledged: also in the journal (both from the first frame sent)")
    print(f"{'journal':26s} {'frames/s':>9s} {'ratio to off':>13s} {'acknowledged':>13s} {'journal MB':>11s} {'write s':>8s} {'MB/s':>7s}"
          f" {'pipeline s':>10s} {'share':>6s}")
    for name, _ in SETTINGS:
        runs = results[name]
        fps = statistics.median(x["frames_per_s"] for x in runs)
        acked = statistics.median(x["acked_per_s"] for x in runs)
        mb = statistics.median(x["journal_bytes"] for x in runs) / 1e6
        ws = statistics.median(x["journal_seconds"] for x in runs)
        # The pipeline thread's own time in the journal: the direct cost to ingest, which a
        # loaded machine's noise in frames/s can hide.
        ps = statistics.median(x["pipeline_seconds"] for x in runs)
        share = statistics.median(x["pipeline_seconds"] / x["seconds"] for x in runs)
        rate = mb / ws if ws > 0 else 0
        print(f"{name:26s} {fps:9.1f} {fps / base:13.3f} {acked:13.1f} {mb:11.1f} {ws:8.3f} {rate:7.0f} {ps:10.3f} {share:6.1%}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
