#!/usr/bin/env bash
# CI step (README "Hardening"): the C++ test suites built with AddressSanitizer and
# UndefinedBehaviorSanitizer (deploy/hardening-build.sh: clang, in build-hardening/, the build
# deploy/fuzz.sh uses, so CI compiles the libraries once) and run with CTest; any sanitizer
# report fails the test that triggered it (UB is fatal, not a warning). The Python suites drive
# the same daemon code as the C++ ones and stay in the Release run (deploy/test.sh).
# SANITIZE_TESTS: the CTest names to build and run; "all" = every C++ suite. The default: every
# suite but the four slow science ones (README "Hardening": test_energy_selection,
# test_accuracy, test_model_choice and test_spatial take 2–7 min each under ASan; all 20 pass).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-hardening
DEFAULT_TESTS="test_protocol test_references test_science test_beamline test_config test_cli test_daemon_bad_input
  test_hardening test_security test_error_codes test_cycles test_pixel test_crash_recovery test_end_to_end
  test_control_plane test_segmentation"
TESTS=${SANITIZE_TESTS:-$DEFAULT_TESTS}
[ "$TESTS" = all ] && TESTS=$(sed -n 's/^xanesd_test(\(test_[a-z0-9_]*\))$/\1/p' tests/CMakeLists.txt | tr '\n' ' ')
TESTS=$(echo $TESTS)  # one line, single spaces

bash deploy/hardening-build.sh $TESTS
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export XANESD_TEST_SLOWDOWN=${XANESD_TEST_SLOWDOWN:-10}  # tests multiply their response-time bounds by it (tests/support.hpp)
cd "$BUILD"
if ! ctest --output-on-failure --timeout 1800 -j"$(nproc)" -R "^($(echo $TESTS | tr ' ' '|'))\$"; then
  echo "sanitize: failures; the full output (sanitizer reports included) is in $PWD/Testing/Temporary/LastTest.log"
  exit 1
fi
