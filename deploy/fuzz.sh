#!/usr/bin/env bash
# CI step (README "Hardening"): builds the libFuzzer harnesses of tests/fuzz with clang, ASan and
# UBSan (deploy/hardening-build.sh, in build-hardening/), replays the committed regression inputs, then runs
# each harness for FUZZ_SECONDS (default 60) from its seed corpus. Fails on any crash, sanitizer
# report, undocumented exception or timeout. Artefacts (logs, grown corpora, crashing inputs)
# stay in build-hardening/fuzz-out/.
#   FUZZ_SECONDS=600 bash deploy/fuzz.sh            # longer runs
#   FUZZ_ONLY="fuzz_wire" bash deploy/fuzz.sh       # one harness
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${FUZZ_SECONDS:-60}
HARNESSES=(${FUZZ_ONLY:-fuzz_wire fuzz_control fuzz_config fuzz_scan_file fuzz_references})
BUILD=$ROOT/build-hardening
OUT=$BUILD/fuzz-out

bash deploy/hardening-build.sh "${HARNESSES[@]}"

# Seeds: the golden wire fixtures, the shipped config and reference files (the first byte of a
# reference input picks normalize mode and unit: 0 = auto, auto), and tests/fuzz/corpus/.
rm -rf "$OUT/seeds"
mkdir -p "$OUT/seeds"/{fuzz_wire,fuzz_control,fuzz_config,fuzz_scan_file,fuzz_references}
cp protocol/fixtures/*.frames "$OUT/seeds/fuzz_wire/"
cp config/default.json "$OUT/seeds/fuzz_config/"
n=0
while IFS= read -r -d '' f; do
  n=$((n + 1))
  { printf '\0'; cat "$f"; } > "$OUT/seeds/fuzz_references/ref$n"
done < <(find config/references -type f ! -name '*.md' ! -name 'LICENSE*' -size -200k -print0)
for h in "${HARNESSES[@]}"; do
  [ -d "tests/fuzz/corpus/${h#fuzz_}" ] && cp "tests/fuzz/corpus/${h#fuzz_}"/* "$OUT/seeds/$h/"
done

export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=()
for h in "${HARNESSES[@]}"; do
  mkdir -p "$OUT/$h/corpus" "$OUT/$h/crashes"
  # Every input that once crashed a harness, rerun as is (a regression test per finding).
  reg="tests/fuzz/regressions/$h"
  if [ -d "$reg" ] && [ -n "$(ls -A "$reg")" ]; then
    if ! (cd "$BUILD" && "tests/fuzz/$h" -runs=1 "$ROOT/$reg"/* > "$OUT/$h/regressions.log" 2>&1); then
      echo "fuzz: $h fails a regression input (see $OUT/$h/regressions.log)"; failed+=("$h"); continue
    fi
  fi
  echo "fuzz: $h for ${SECONDS_EACH}s"
  # Run from the build dir: the control harness's daemon resolves relative paths there.
  if (cd "$BUILD" && "tests/fuzz/$h" -max_total_time="$SECONDS_EACH" -timeout=120 -rss_limit_mb=4096 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$OUT/$h/crashes/" \
        "$OUT/$h/corpus" "$OUT/seeds/$h" > "$OUT/$h/fuzz.log" 2>&1); then
    grep -E '^stat::number_of_executed_units|^Done' "$OUT/$h/fuzz.log" | sed "s/^/  $h: /"
  else
    echo "fuzz: $h FAILED (log: $OUT/$h/fuzz.log; input: $OUT/$h/crashes/)"
    tail -n 40 "$OUT/$h/fuzz.log"
    failed+=("$h")
  fi
done
echo "fuzz: logs, grown corpora and crashing inputs are in $OUT/<harness>/ (crashes/: inputs to replay with tests/fuzz/<harness> FILE)"
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: failures in ${failed[*]}"
  exit 1
fi
echo "fuzz: ${HARNESSES[*]}: no crash in ${SECONDS_EACH}s each"
