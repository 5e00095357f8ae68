#!/usr/bin/python3
"""Live sharding (bench/run_live_mpi_benchmark.sh): one daemon against `mpirun -np N xanesd` fed
the same scan file by xanes-replay as fast as the daemon takes it, in one run: one daemon on one
thread (fit.threads=1) and on every core, and N ranks of one thread each (N ranks use N cores,
as the batch MPI benchmark runs them). Each daemon gets
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "tests"))
import binaries  # noqa: E402  (tests/binaries.py: daemon_command, wait_for_status, stop)

MPI = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
       "--mca", "btl_vader_single_copy_mechanism", "none", "--mca", "oob_tcp_if_include", "lo"]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_daemon(a, ranks, threads, out):
    """Runs the daemon (ranks 0: one process, no mpirun), two scans; returns the second's figures."""
    os.makedirs(out, exist_ok=True)
    cmd, ingest, _, control = binaries.daemon_command(a.xanesd, a.config, out, "output.save_spectra=false",
                                                      f"fit.threads={threads}")
    if ranks:
        cmd = [a.mpiexec, *MPI, "-np", str(ranks), *cmd]
    c0 = cpu_seconds()
    log = open(os.path.join(out, "xanesd.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    client = binaries.wait_for_status(xp, control)
    try:
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
        binaries.stop([proc])  # still running: an error above
        client.close()
        log.close()
    figures["cpu"] = cpu_seconds() - c0  # both scans, every rank
    figures["threads"] = f"{max(1, ranks)}×{threads}"
    return figures


def main():
    global xp
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--scan", "--xanesd", "--replay", "--config", "--out", "--source-dir"):
        ap.add_argument(name, required=True)
    ap.add_argument("--mpiexec", default="mpirun")
    ap.add_argument("--ranks", default="2", help="ranks of the MPI jobs (one daemon always runs)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.source_dir, "protocol", "python"))
    from xanesd import protocol as xp  # noqa: PLC0415
    rows = {}
    cores = os.cpu_count() or 1
    configs = [("one daemon", 0, 1), (f"one daemon, {cores} threads", 0, cores)]
    configs += [(f"mpirun -np {n}", n, 1) for n in (int(r) for r in a.ranks.split(",")) if n > 0]
    for name, n, threads in configs:
        runs = [one_daemon(a, n, threads, os.path.join(a.out, f"np{n}-t{threads}-{i}")) for i in range(a.repeats)]
        rows[name] = min(runs, key=lambda f: f["seconds"])
    base = rows.get("one daemon")
    print(f"{'daemon':<22} {'threads':>7} {'s':>7} {'frames/s':>9} {'× one':>6} {'cycles':>6} {'apply s':>8} {'fold s':>7} "
          f"{'solve s':>8} {'cycles s':>8} {'CPU s':>7}")
    for name, f in rows.items():
        ratio = base["seconds"] / f["seconds"] if base else float("nan")
        print(f"{name:<22} {f['threads']:>7} {f['seconds']:7.2f} {f['frames'] / f['seconds']:9.1f} {ratio:6.2f} {f['cycles']:6d} "
              f"{f['apply']:8.2f} {f['fold']:7.2f} {f['solve']:8.2f} {f['cycle']:8.2f} {f['cpu']:7.1f}")
    print("(threads: ranks × fit.threads; × one: against one daemon on one thread; s: first frame sent to the result file "
          "written (without the spectra), the second scan of the daemon; apply, fold, solve and cycles: rank 0's "
          "pipeline; CPU: every process, both scans)")


if __name__ == "__main__":
    main()
