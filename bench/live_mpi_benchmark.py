#!/usr/bin/python3
"""Live sharding (bench/run_live_mpi_benchmark.sh): one daemon against `mpirun -np N xanesd` fed
the same scan file by xanes-replay as fast as the daemon takes it, in one run. Each daemon gets
the scan twice and the second is timed (the first pays the pages every later scan of that size
reuses): from the replay's first frame to the result file written at stop. Prints frames/s,
the publication cycles and where the pipeline's time went (rank 0's counters), and the ratio to
the one-process daemon. A benchmark: it asserts nothing."""
import argparse
import os
import resource
import subprocess
import sys
import time

MPI = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
       "--mca", "btl_vader_single_copy_mechanism", "none", "--mca", "oob_tcp_if_include", "lo"]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_daemon(a, ranks, out):
    """Runs the daemon (ranks 0: one process, no mpirun), two scans; returns the second's figures."""
    ingest, pub, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    os.makedirs(out, exist_ok=True)
    cmd = [a.xanesd, "--config", a.config, "--set", f"ingest.endpoint={ingest}", "--set", f"publish.endpoint={pub}",
           "--set", f"control.endpoint={control}", "--set", f"output.directory={out}",
           "--set", f"journal.directory={os.path.join(out, 'journal')}", "--set", "output.save_spectra=false"]
    if ranks:
        cmd = [a.mpiexec, *MPI, "-np", str(ranks), *cmd]
    c0 = cpu_seconds()
    log = open(os.path.join(out, "xanesd.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    client = xp.Client(control, timeout_ms=30000)
    try:
        for _ in range(300):
            try:
                client.status()
                break
            except TimeoutError:
                time.sleep(0.1)
        figures = None
        for scan_id in ("warm", "timed"):
            before = client.status()["counters"]
            t0 = time.monotonic()
            subprocess.run([a.replay, "--input", a.scan, "--endpoint", ingest, "--scan-id", scan_id, "--quiet",
                            "--timeout", "600"], check=True)
            while True:
                st = client.status()
                if (st.get("scan") or {}).get("scan_id") == scan_id and st.get("state") == "stopped" and st.get("result_file"):
                    break
                time.sleep(0.02)
            seconds = time.monotonic() - t0
            after = st["counters"]
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if isinstance(after.get(k), (int, float))}
            figures = {"seconds": seconds, "frames": delta.get("ingest.frames_accepted", 0),
                       "cycles": delta.get("publish.cycles", 0),
                       "apply": delta.get("time_us.ingest.apply", 0) / 1e6,
                       "fold": delta.get("time_us.cycle.fold", 0) / 1e6, "solve": delta.get("time_us.cycle.solve", 0) / 1e6,
                       "cycle": delta.get("time_us.cycle.total", 0) / 1e6}
        client.shutdown()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
        log.close()
    figures["cpu"] = cpu_seconds() - c0  # both scans, every rank
    return figures


def main():
    global xp
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--scan", "--xanesd", "--replay", "--config", "--out", "--source-dir"):
        ap.add_argument(name, required=True)
    ap.add_argument("--mpiexec", default="mpirun")
    ap.add_argument("--ranks", default="0,2", help="0: one process without mpirun")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.source_dir, "protocol", "python"))
    from xanesd import protocol as xp  # noqa: PLC0415
    rows = {}
    for n in [int(r) for r in a.ranks.split(",")]:
        runs = [one_daemon(a, n, os.path.join(a.out, f"np{n}-{i}")) for i in range(a.repeats)]
        rows["one daemon" if n == 0 else f"mpirun -np {n}"] = min(runs, key=lambda f: f["seconds"])
    base = rows.get("one daemon")
    print(f"{'daemon':<14} {'s':>7} {'frames/s':>9} {'× one':>6} {'cycles':>6} {'apply s':>8} {'fold s':>7} "
          f"{'solve s':>8} {'cycles s':>8} {'CPU s':>7}")
    for name, f in rows.items():
        ratio = base["seconds"] / f["seconds"] if base else float("nan")
        print(f"{name:<14} {f['seconds']:7.2f} {f['frames'] / f['seconds']:9.1f} {ratio:6.2f} {f['cycles']:6d} "
              f"{f['apply']:8.2f} {f['fold']:7.2f} {f['solve']:8.2f} {f['cycle']:8.2f} {f['cpu']:7.1f}")
    print("(s: first frame sent to the result file written, the second scan of the daemon; apply, fold, solve and "
          "cycles: rank 0's pipeline; CPU: every process, both scans)")


if __name__ == "__main__":
    main()
