#!/usr/bin/env bash
# CI step (README "Hardening"): builds the test suites with AddressSanitizer and
# UndefinedBehaviorSanitizer (-DXANESD_SANITIZE=ON, gcc, in build-asan/) and runs them with
# CTest; any sanitizer report fails the test that triggered it (UB is fatal, not a warning).
# SANITIZE_TESTS: the CTest names to build and run (default below; "all" = every suite).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-asan
# The suites that feed the daemon bad and hostile input, the wire contract, the config parser
# and the control socket. See README "Hardening" for why the others are not here by default
# (time under ASan).
DEFAULT_TESTS="test_hardening test_daemon_bad_input test_protocol test_config test_control_plane"
TESTS=${SANITIZE_TESTS:-$DEFAULT_TESTS}

bash deploy/install-deps.sh
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXANESD_SANITIZE=ON > sanitize-configure.log 2>&1 \
  || { cat sanitize-configure.log; exit 1; }
rm -f sanitize-configure.log
if [ "$TESTS" = all ]; then
  cmake --build "$BUILD" -j"$(nproc)"
  filter=()
else
  cmake --build "$BUILD" -j"$(nproc)" --target $TESTS
  filter=(-R "^($(echo $TESTS | tr ' ' '|'))\$")
fi
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$BUILD"
if ! ctest --output-on-failure --timeout 1800 "${filter[@]}"; then
  echo "sanitize: failures; the full output (sanitizer reports included) is in $PWD/Testing/Temporary/LastTest.log"
  exit 1
fi
