#!/usr/bin/env bash
# Installs the Debian 12 packages xanesd builds, tests and runs with. Idempotent: it asks apt
# only for what is missing, so a second run is a no-op. Run as root (or with sudo).
#   bash deploy/install-deps.sh          # the default (serial) build, tests, fuzzing, Python clients
#   bash deploy/install-deps.sh --mpi    # and the optional MPI build (deploy/mpi.sh)
set -euo pipefail

BUILD_PACKAGES=(cmake g++ make pkg-config libzmq3-dev cppzmq-dev libmsgpack-cxx-dev libeigen3-dev
                libhdf5-dev hdf5-tools nlohmann-json3-dev libspdlog-dev doctest-dev zlib1g-dev
                libcli11-dev)
# libcli11-dev: CLI11, header-only, the one command-line parser of the C++ tools (service/cli.hpp).
# Hardening (deploy/fuzz.sh): clang 14 and its runtime libraries, which hold libFuzzer and the
# sanitizer runtimes clang links (README "Hardening").
FUZZ_PACKAGES=(clang-14 libclang-rt-14-dev)
# The optional MPI build (deploy/mpi.sh, README "MPI"), only with --mpi (the quick start stays
# serial and lean): OpenMPI and the HDF5 built for it, which installs beside the serial
# libhdf5-dev (its own include and library directories; the default build still finds the serial
# one through h5cc).
MPI_PACKAGES=()
if [ "${1:-}" = "--mpi" ]; then MPI_PACKAGES=(libopenmpi-dev openmpi-bin libhdf5-openmpi-dev); fi
# Python clients (replayer helpers, viewer, tests) run on Debian's /usr/bin/python3.
PYTHON_PACKAGES=(python3 python3-zmq python3-msgpack python3-numpy python3-h5py python3-matplotlib
                 python3-scipy python3-sklearn python3-silx python3-tifffile)
# python3-silx: the result-file test reads files with silx's NXdata API, as beamline users view them.
# python3-tifffile: xanes-convert reads TIFF stacks with it (no hand-written TIFF decoder).
# python3-aiohttp: xanes-dashboard's web server (HTTP and WebSocket in one asyncio library, Debian-packaged).
# Browser test of the dashboard (tests/python_dashboard.py): Debian's chromium and chromium-driver,
# driven by python3-selenium.
WEB_PACKAGES=(python3-aiohttp python3-selenium chromium chromium-driver)

missing=()
for pkg in "${BUILD_PACKAGES[@]}" "${FUZZ_PACKAGES[@]}" "${MPI_PACKAGES[@]}" "${PYTHON_PACKAGES[@]}" "${WEB_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deploy/install-deps.sh: all packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "deploy/install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
