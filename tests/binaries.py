"""Command line of the Python tests that run the built binaries: --xanesd, --simulate, --source-dir
(CTest passes them); the rest goes to unittest."""
import argparse
import os
import random
import socket
import subprocess
import sys
import time


def parse(doc):
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--xanesd", required=True)
    p.add_argument("--simulate", required=True)
    p.add_argument("--source-dir", required=True)
    args, rest = p.parse_known_args()
    return args, [sys.argv[0]] + rest


def simulate_fe(simulate, source_dir, out, *options):
    """xanes-simulate of the shipped Fe K library's Magnetite, Goethite and Pyrite on the HXN
    energies into `out` (a scan file), with `options` (shape, layout, mode, seed); returns `out`."""
    refs = os.path.join(source_dir, "config", "references")
    subprocess.run([simulate, "--refs", os.path.join(refs, "fe_k_library_normalized.nor"), "--use", "Magnetite,Goethite,Pyrite",
                    "--energies", os.path.join(refs, "fe_k_energies_hxn.txt"), "--out", out, *options],
                   check=True, capture_output=True, timeout=240)
    return out


def free_port():
    """A loopback TCP port free now, picked below the kernel's ephemeral range: ports of that range
    go to outgoing connections, so a parallel test's client could take one picked there before the
    daemon binds it (tests/support.hpp free_port says the same for the C++ tests)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    lo = max(1024, ephemeral_low // 2)
    rng = random.Random(os.getpid() * 1000003 + time.monotonic_ns())
    for _ in range(64 if ephemeral_low > lo else 0):
        port = rng.randrange(lo, ephemeral_low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_command(xanesd, config, out, *sets):
    """The command line of a daemon with `config` on three free loopback ports, writing its results
    and journal under `out`, with more `--set KEY=VALUE` overrides; and its ingest, publish and
    control endpoints."""
    ingest, pub, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    cmd = [xanesd, "--config", config, "--set", f"ingest.endpoint={ingest}", "--set", f"publish.endpoint={pub}",
           "--set", f"control.endpoint={control}", "--set", f"output.directory={out}",
           "--set", f"journal.directory={os.path.join(out, 'journal')}"]
    for kv in sets:
        cmd += ["--set", kv]
    return cmd, ingest, pub, control


def wait_for_status(xp, control, timeout_ms=30000, tries=300):
    """A control client (xanesd.protocol `xp`) of the daemon at `control` once it answers
    `status` (tries × 0.1 s at most), open."""
    c = xp.Client(control, timeout_ms=timeout_ms)
    for _ in range(tries):
        try:
            c.status()
            break
        except TimeoutError:
            time.sleep(0.1)
    return c


def stop(procs, timeout=10):
    """Ends the child processes still running: SIGTERM, then SIGKILL after `timeout` s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()


def headless_chromium(width=1500, height=1100):
    """Debian's chromium, headless, driven by python3-selenium through chromium-driver (CI runs
    as root: --no-sandbox)."""
    from selenium import webdriver  # noqa: PLC0415  (only the browser tests need it)
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for o in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(o)
    return webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
