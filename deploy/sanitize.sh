#!/usr/bin/env bash
# CI step (README "Hardening"): the C++ test suites built with AddressSanitizer and
# UndefinedBehaviorSanitizer (deploy/hardening-build.sh: clang, in build-hardening/, the build
# deploy/fuzz.sh uses, so CI compiles the libraries once) and run with CTest; any sanitizer
# report fails the test that triggered it (UB is fatal, not a warning). The Python suites drive
# the same daemon code as the C++ ones and stay in the Release run (deploy/test.sh).
# SANITIZE_TESTS: the CTest names to build and run; the default "all" is every C++ suite
# (README "Hardening": ~7 min more for the four science suites that are slow under ASan).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build-hardening
TESTS=${SANITIZE_TESTS:-all}
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
