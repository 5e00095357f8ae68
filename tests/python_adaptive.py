#!/usr/bin/python3
"""The adaptive loop end to end with the Python scan controller (clients/python/xanes-adaptive).

  python_adaptive.py --xanesd BIN --simulate BIN --source-dir DIR [--keep]

Starts the real xanesd on free loopback ports (output.directory in a temporary folder),
makes a 64×64 domains scan of Magnetite/Goethite/Pyrite with xanes-simulate, runs
xanes-adaptive against it and checks its --json summary: 16 energies selected and measured
in the sub-spectra scan, the `energies` publication equals the select_energies reply, the
sub-spectra fractions are within 0.05 (MAE) of the truth, both result files exist. The
daemon is shut down at the end, also on failure. Exit status 0 = pass.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from binaries import free_port  # tests/binaries.py, beside this script


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--xanesd", required=True)
    p.add_argument("--simulate", required=True)
    p.add_argument("--source-dir", required=True)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = p.parse_args()
    src = os.path.abspath(a.source_dir)
    sys.path.insert(0, os.path.join(src, "protocol", "python"))
    from xanesd import protocol as xp  # noqa: PLC0415

    tmp = tempfile.mkdtemp(prefix="xanesd-adaptive-")
    ingest, pub, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    scan = os.path.join(tmp, "domains.h5")
    summary_path = os.path.join(tmp, "summary.json")
    log_path = os.path.join(tmp, "xanesd.log")
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    subprocess.run([a.simulate, "--refs", os.path.join(src, "config/references/fe_k_library_normalized.nor"),
                    "--use", "Magnetite,Goethite,Pyrite",
                    "--energies", os.path.join(src, "config/references/fe_k_energies_hxn.txt"),
                    "--shape", "64x64", "--counts", "1000", "--layout", "domains", "--seed", "7",
                    "--out", scan], check=True)
    log = open(log_path, "w")
    daemon = subprocess.Popen([a.xanesd, "--config", os.path.join(src, "config/default.json"),
                               "--set", f"ingest.endpoint={ingest}", "--set", f"publish.endpoint={pub}",
                               "--set", f"control.endpoint={control}",
                               "--set", f"output.directory={os.path.join(tmp, 'results')}"],
                              stdout=log, stderr=subprocess.STDOUT)
    client = xp.Client(control, timeout_ms=2000)
    try:
        for _ in range(50):  # the daemon loads the library before it answers
            try:
                if client.status().get("ok"):
                    break
            except TimeoutError:
                pass
            if daemon.poll() is not None:
                raise RuntimeError(f"xanesd exited with status {daemon.returncode}")
        else:
            raise RuntimeError("xanesd does not answer on " + control)

        cmd = [sys.executable, os.path.join(src, "clients/python/xanes-adaptive"), "--scan", scan,
               "--ingest", ingest, "--publish", pub, "--control", control, "--json", summary_path,
               "--scan-id", "py", "--timeout", "120"]
        print("$ " + " ".join(cmd), flush=True)
        run = subprocess.run(cmd, timeout=280)
        check(run.returncode == 0, f"xanes-adaptive exit status {run.returncode}")
        with open(summary_path) as f:
            s = json.load(f)
        sel, sub, full = s.get("selection", {}), s.get("sub", {}), s.get("full", {})
        check(len(sel.get("energies_eV", [])) == 16, f"16 energies selected (got {len(sel.get('energies_eV', []))})")
        check(sel.get("reference_names") == ["Magnetite", "Goethite", "Pyrite"],
              f"in-use references {sel.get('reference_names')}")
        check(s.get("published", {}).get("equal") is True, "the energies publication equals the reply")
        check(full.get("energies_measured") == 73, f"full scan measured 73 energies (got {full.get('energies_measured')})")
        check(sub.get("energies_measured") == 16, f"sub scan measured 16 energies (got {sub.get('energies_measured')})")
        mae = sub.get("fraction_mae_vs_truth")
        check(mae is not None and mae < 0.05, f"sub-scan fraction MAE vs truth {mae} < 0.05")
        for r in (full, sub):
            f = r.get("result_file")
            check(bool(f) and os.path.isfile(f), f"result file {f} exists")
        print(f"full scan MAE {full.get('fraction_mae_vs_truth')}, sub scan MAE {mae}", flush=True)

        # A client that gives up on a command gets it cancelled: Client sends its own timeout
        # as the request's timeout_ms, so a long selection stops at its next step once the
        # client has stopped waiting, instead of running on for nobody.
        check(client.configure({"select.train_mixtures": 40000, "select.test_mixtures": 8000}).get("ok") is True,
              "configure: a selection that takes seconds")
        before = client.status()["counters"]
        impatient = xp.Client(control, timeout_ms=300)
        grid = [7080 + 0.25 * i for i in range(400)]
        try:
            # The daemon answers at the same deadline that the client stops waiting: whichever
            # comes first (the client's poll or the daemon's command_timed_out), TimeoutError.
            reply = impatient.select_energies(12, energies_eV=grid, objective="equal_dwell", noise=0.01)
            check(False, f"the long selection answered within 300 ms (it should take seconds): {reply}")
        except TimeoutError:
            pass
        finally:
            impatient.close()
        after = before
        for _ in range(100):  # the selection stops at its next step
            after = client.status()["counters"]
            if after.get("control.cancelled", 0) > before.get("control.cancelled", 0):
                break
            time.sleep(0.05)
        check(after.get("control.cancelled", 0) == before.get("control.cancelled", 0) + 1,
              f"the abandoned selection was cancelled (control.cancelled {before.get('control.cancelled', 0)} → "
              f"{after.get('control.cancelled', 0)})")
        check(after.get("control.energy_selections", 0) == before.get("control.energy_selections", 0),
              "the abandoned selection did not run to the end")
    except Exception as e:  # noqa: BLE001 - reported as a failure, the daemon is still shut down
        failures.append(f"{type(e).__name__}: {e}")
        print(f"FAIL {type(e).__name__}: {e}", flush=True)
    finally:
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001
            pass
        client.close()
        try:
            code = daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
            failures.append("xanesd did not exit after shutdown")
        log.close()
        if code != 0:
            failures.append(f"xanesd exit status {code}")
        if failures:
            with open(log_path) as f:
                tail = f.readlines()[-30:]
            print("xanesd log (tail):\n" + "".join(tail), flush=True)
        if a.keep or failures:
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} failure(s)", flush=True)
        return 1
    print("pass", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
