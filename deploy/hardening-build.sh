#!/usr/bin/env bash
# The hardening build (README "Hardening"), shared by deploy/fuzz.sh and deploy/sanitize.sh so
# CI compiles the daemon's libraries once: clang, ASan + UBSan (any UB fatal), libFuzzer's
# coverage (-DXANESD_FUZZ=ON), in build-hardening/.
#   bash deploy/hardening-build.sh TARGET...      # configures if needed, builds the targets
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$PWD/build-hardening
bash deploy/install-deps.sh
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXANESD_FUZZ=ON \
        -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 > hardening-configure.log 2>&1 \
    || { cat hardening-configure.log; exit 1; }
  rm -f hardening-configure.log
fi
cmake --build "$BUILD" -j"$(nproc)" --target "$@"
