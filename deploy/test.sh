#!/usr/bin/env bash
# Quick start 2: install what is missing, build, and run the whole test suite (CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh
cd build
ctest --output-on-failure --timeout 900
