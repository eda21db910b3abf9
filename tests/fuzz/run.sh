#!/usr/bin/env bash
# Runs the fuzz targets for a chosen number of executions each.
#
#   tests/fuzz/run.sh [EXECUTIONS] [TARGET…]
#
# EXECUTIONS defaults to 10000000 per target; the targets to all of them. Builds the targets
# (cargo-fuzz, AddressSanitizer; stable Rust through RUSTC_BOOTSTRAP=1), writes the seed
# corpus when a target has none, runs each target on its corpus for EXECUTIONS executions,
# and prints executions, executions/s, wall time and findings per target. Exits non-zero if
# any target crashed, panicked, hung, leaked or allocated beyond the limits below; the input
# that did is in tests/fuzz/artifacts/TARGET/.
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none (faster, no ASan)
#   FUZZ_NO_BUILD   set: use the targets already built
#   FUZZ_CORPUS     corpus folder (default tests/fuzz/corpus)
#   FUZZ_ARGS       more libFuzzer flags, e.g. "-max_total_time=600"
#   CARGO_TARGET_DIR  where cargo builds; the targets go to $CARGO_TARGET_DIR/fuzz
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
all=(dsl onnx plan plan_edit wire grpc npy image)

runs="${1:-10000000}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "unknown target $t (targets: ${all[*]})" >&2; exit 2; }
done

sanitizer="${FUZZ_SANITIZER:-address}"
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"
corpus="${FUZZ_CORPUS:-$here/corpus}"
artifacts="$here/artifacts"

# Memory: one allocation may take at most 2 GiB (the largest tensor any decoder accepts is
# 1 GiB of float32); the process at most 4 GiB. An input taking more than 30 s is a hang.
limits=(-rss_limit_mb=4096 -malloc_limit_mb=2048 -timeout=30)

if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  (cd "$root" && RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir tests/fuzz -O -a \
    -s "$sanitizer" --target-dir "$target_dir")
fi
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"

need_seeds=0
for t in "${targets[@]}"; do
  [ -n "$(ls -A "$corpus/$t" 2>/dev/null)" ] || need_seeds=1
done
if [ "$need_seeds" = 1 ]; then
  (cd "$root" && FUZZ_CORPUS="$corpus" cargo test --quiet --test fuzz_regressions -- \
    --ignored write_seeds >/dev/null)
fi

failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$corpus/$t" "$artifacts/$t"
  # The regressions join the corpus: the fuzzer starts from what once failed.
  [ -d "$here/regressions/$t" ] && cp -n "$here/regressions/$t"/* "$corpus/$t/" 2>/dev/null || true
  log="$artifacts/$t/last-run.log"
  echo "== $t: $runs executions"
  start=$(date +%s%N)
  set +e
  "$bin_dir/$t" "$corpus/$t" -runs="$runs" "${limits[@]}" -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  set -e
  wall=$(( ($(date +%s%N) - start) / 1000000000 ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  findings=$(grep -cE '^(==[0-9]+== ?ERROR|ERROR: libFuzzer)' "$log" || true)
  line=$(printf '%-10s %12s execs %8s execs/s %8s s  %s finding(s)' "$t" "${execs:-?}" \
    "${rate:-?}" "$wall" "$findings")
  if [ "$rc" -ne 0 ]; then
    failed=1
    line="$line  FAILED (rc $rc): $(grep -m1 -E 'ERROR|panicked' "$log" | cut -c1-120); see $log"
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
