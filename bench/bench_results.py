"""The machine-readable lines of the bench programs and their Python baselines: "RESULT key=value".

The summaries of bench/run_*_benchmark.sh read them with read_results(paths): a dict key → float
(values that are not numbers are skipped).
"""


def read_results(paths):
    r = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("RESULT ") and "=" in line:
                    k, v = line[7:].strip().split("=", 1)
                    try:
                        r[k] = float(v)
                    except ValueError:
                        pass
    return r
