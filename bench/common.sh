# Shared plumbing of the benchmark scripts (bench/run_*_benchmark.sh): sourced, not run.
# Each script sets NAME (its name, for messages) and TARGET (its C++ benchmark target) first.
# Benchmarks never fail the caller: every problem is printed and the script exits 0.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${XANESD_BUILD_DIR:-$ROOT/build}"
PY="${XANESD_PYTHON:-/usr/bin/python3}"
[ -n "$PY" ] || PY=/usr/bin/python3

# Builds $TARGET (unless XANESD_SKIP_BUILD=1) and sets BIN to it.
bench_build() {
  if [ "${XANESD_SKIP_BUILD:-0}" != 1 ]; then
    echo "== building $TARGET"
    if ! { cmake -S "$ROOT" -B "$BUILD" >/dev/null && cmake --build "$BUILD" --target "$TARGET" -j2 >/dev/null; }; then
      echo "$NAME: build failed (rerun 'cmake --build $BUILD --target $TARGET' to see why)"
      exit 0
    fi
  fi
  BIN="$BUILD/bench/$TARGET"
  if [ ! -x "$BIN" ]; then echo "$NAME: $BIN not found"; exit 0; fi
}

# bench_options "--size=SIZE --repeats=REPEATS" "$@": each `--flag VALUE` of the command line
# sets the variable the spec names for it; anything else is printed with the options known and
# the script exits 0.
bench_options() {
  local spec="$1" var pair
  shift
  while [ $# -gt 0 ]; do
    var=""
    for pair in $spec; do [ "${pair%%=*}" = "$1" ] && var="${pair#*=}"; done
    if [ -z "$var" ] || [ $# -lt 2 ]; then
      echo "$NAME: unknown option or missing value: $1 (options: $(echo "$spec" | sed 's/=[A-Z_]*//g'))"
      exit 0
    fi
    printf -v "$var" '%s' "$2"
    shift 2
  done
}

# bench_python_needs "numpy, scipy": the baseline side's modules, on $PY.
bench_python_needs() {
  if ! "$PY" -c "import $1" 2>/dev/null; then
    echo "$NAME: $PY lacks $1 (use Debian's /usr/bin/python3 or set XANESD_PYTHON)"
    exit 0
  fi
}

# OUT: XANESD_BENCH_OUT (kept), else a temporary folder removed on exit.
bench_out_dir() {
  if [ -n "${XANESD_BENCH_OUT:-}" ]; then
    OUT="$XANESD_BENCH_OUT"; mkdir -p "$OUT"
  else
    OUT="$(mktemp -d)"; trap 'rm -rf "$OUT"' EXIT
  fi
}

# Share of the machine's CPU time that was not idle over `1` seconds: other work (builds,
# other users) skews every figure, the ratios included, so it is printed with them.
busy() {
  local a b tot=0 j
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep "$1"
  read -r -a b < <(grep '^cpu ' /proc/stat)
  for j in 1 2 3 4 5 6 7 8; do tot=$((tot + b[j] - a[j])); done
  echo $(( tot > 0 ? (tot - (b[4] - a[4]) - (b[5] - a[5])) * 100 / tot : 0 ))
}

# bench_machine_line before|after: the CPUs' other load, printed around a run.
bench_machine_line() {
  echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC'); CPUs busy with other work just $1 the run: $(busy 2)% (load average $(cut -d' ' -f1-3 /proc/loadavg))"
}

# The machine, for the top of a benchmark's output.
bench_machine_header() {
  echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
}

# bench_tools_build CMAKE_OPTION TARGET...: builds the targets in $BUILD, configured with
# CMAKE_OPTION (e.g. -DXANESD_MPI=ON; "" for none), unless XANESD_SKIP_BUILD=1, and checks
# them. Sets XANESD, SIM and REPLAY to the binaries.
bench_tools_build() {
  local option="$1" t
  shift
  if [ "${XANESD_SKIP_BUILD:-0}" != 1 ]; then
    echo "== building $* in $BUILD${option:+ ($option)}"
    if ! { cmake -S "$ROOT" -B "$BUILD" $option >/dev/null && cmake --build "$BUILD" --target "$@" -j2 >/dev/null; }; then
      echo "$NAME: build failed (rerun 'cmake --build $BUILD --target $*' to see why)"
      exit 0
    fi
  fi
  XANESD="$BUILD/service/xanesd" SIM="$BUILD/clients/xanes-simulate" REPLAY="$BUILD/clients/xanes-replay"
  for t in "$@"; do
    case "$t" in
      xanesd) t="$XANESD" ;; xanes-simulate) t="$SIM" ;; xanes-replay) t="$REPLAY" ;;
    esac
    [ -x "$t" ] || { echo "$NAME: $t not found"; exit 0; }
  done
}

# bench_mpi_build TARGET...: bench_tools_build in the MPI build $BUILD, then checks that xanesd
# is an MPI build and mpirun exists, and lets mpirun run as root.
bench_mpi_build() {
  bench_tools_build -DXANESD_MPI=ON "$@"
  "$XANESD" --version | grep -q MPI || { echo "$NAME: $XANESD is not an MPI build (-DXANESD_MPI=ON)"; exit 0; }
  command -v mpirun >/dev/null || { echo "$NAME: no mpirun (bash deploy/install-deps.sh --mpi)"; exit 0; }
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
}

# bench_simulate SCAN SIZE ENERGIES: a SIZE² fluorescence scan of the shipped library's
# Magnetite, Goethite and Pyrite (`domains` layout, seed 1) on the energies of the file ENERGIES,
# written to SCAN unless it exists (XANESD_BENCH_OUT kept it). Not timed.
bench_simulate() {
  if [ -f "$1" ]; then
    echo "== reusing $1"
    return
  fi
  echo "== simulating a $2×$2 × $(wc -l < "$3") fluorescence scan (not timed)"
  if ! "$SIM" --refs "$ROOT/config/references/fe_k_library_normalized.nor" --use Magnetite,Goethite,Pyrite \
      --energies "$3" --shape "$2x$2" --layout domains --seed 1 --out "$1" > "$OUT/simulate.log" 2>&1; then
    echo "$NAME: xanes-simulate failed:"; cat "$OUT/simulate.log"; rm -f "$1"; exit 0
  fi
}
