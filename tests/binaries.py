"""Command line of the Python tests that run the built binaries: --xanesd, --simulate, --source-dir
(CTest passes them); the rest goes to unittest."""
import argparse
import socket
import sys


def parse(doc):
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--xanesd", required=True)
    p.add_argument("--simulate", required=True)
    p.add_argument("--source-dir", required=True)
    args, rest = p.parse_known_args()
    return args, [sys.argv[0]] + rest


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
