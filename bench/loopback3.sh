#!/usr/bin/env bash
# The distributed runtime on this machine's loopback: three worker processes and the
# coordinator, VGG16 (or NET) planned `auto` for dsl-examples/loopback3.yaml.
#
#   bench/loopback3.sh [NET] [RUNS]
#
# Prints, side by side in one run: latency (1 frame in flight) and throughput (1 and 4 in
# flight) over gRPC against the same plan in process; bytes per frame on the wire for
# compression none/q8/q4 with each lossless coder (none, lz4, zstd); and the coders on the
# plan's real tile tensors (runtime/examples/coder_bench.rs). A benchmark: it measures and
# prints, nothing is asserted. Workers are stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

NET=${1:-vgg16}
RUNS=${2:-10}
OUT=${OUT:-bench/out/loopback3}
mkdir -p "$OUT"
cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run --example coder_bench
BIN=target/release
echo "== $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $NET on loopback3, $RUNS runs"

head -c 32 /dev/urandom | base64 >"$OUT/token"
# shellcheck source=bench/workers.sh
source bench/workers.sh
start_workers
REMOTE=(--token-file "$OUT/token" "${WORKERS[@]}")

for how in none q8 q4; do
  "$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster dsl-examples/loopback3.yaml \
    --compress "$how" -o "$OUT/$NET-$how.bin" >/dev/null
done

echo
echo "latency and throughput (compression none; p50/p99 ms of $RUNS frames, frames/s)"
printf '%-34s %9s %9s %10s\n' transport p50 p99 frames/s
for round in 1 2; do
  read -r _ p50 p99 _ _ _ fps _ < <("$BIN/adcnn-run" bench "$OUT/$NET-none.bin" --runs "$RUNS" --quiet)
  printf '%-34s %9.1f %9.1f %10.2f\n' "in process (round $round)" "$p50" "$p99" "$fps"
  for inflight in 1 4; do
    read -r _ p50 p99 _ _ _ fps _ < <("$BIN/adcnn-run" bench "$OUT/$NET-none.bin" --remote "${REMOTE[@]}" \
      --runs "$RUNS" --in-flight "$inflight" --quiet)
    printf '%-34s %9.1f %9.1f %10.2f\n' "gRPC, $inflight in flight (round $round)" "$p50" "$p99" "$fps"
  done
done

echo
echo "bytes per frame on the wire (tile inputs + outputs, one frame of chelsea.jpg)"
printf '%-12s %8s %14s %14s\n' compression coder bytes "rel. L2 error"
for how in none q8 q4; do
  for coder in none lz4 zstd; do
    "$BIN/adcnn-run" "$OUT/$NET-$how.bin" "${REMOTE[@]}" --coder "$coder" \
      --input dsl-examples/images/chelsea.jpg --metrics "$OUT/m.json" >"$OUT/run.txt"
    bytes=$(python3 -c "import json; m=json.load(open('$OUT/m.json')); print(sum(n['bytes_in']+n['bytes_out'] for n in m['nodes']))" 2>/dev/null \
      || grep -o '"bytes_[a-z]*": [0-9]*' "$OUT/m.json" | awk '{s+=$2} END {print s}')
    err=$(sed -n 's/.*compression error on tile outputs: relative L2 \([^ ]*\).*/\1/p' "$OUT/run.txt")
    printf '%-12s %8s %14s %14s\n' "$how" "$coder" "$bytes" "${err:--}"
  done
done

echo
"$BIN/examples/coder_bench" "$OUT/$NET-none.bin" dsl-examples/images/chelsea.jpg 5
echo "== load $(cut -d' ' -f1-3 /proc/loadavg)"
