#!/usr/bin/env bash
# The Gantt chart in the book's "Running a plan": six frames of YOLOv2-tiny, planned `auto`
# for edge4, run in process with --trace, drawn by `adcnn-run report`.
#
#   bench/gantt.sh [NET] [FRAMES]     # defaults: yolov2-tiny, 6; writes book/src/img/gantt-NET.svg
#
# A picture of one run on this machine: the spans' lengths change from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
NET=${1:-yolov2-tiny}
FRAMES=${2:-6}
OUT=${OUT:-bench/out/gantt}
mkdir -p "$OUT"
cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run
BIN=target/release
"$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster dsl-examples/edge4.yaml -o "$OUT/$NET.bin" >/dev/null
# shellcheck source=bench/npy.sh
source bench/npy.sh
npy_frame "$NET" "$OUT/frame.npy"
for _ in $(seq "$FRAMES"); do cat "$OUT/frame.npy"; done |
  "$BIN/adcnn-run" "$OUT/$NET.bin" --local --input - --trace "$OUT/trace.json" >/dev/null
"$BIN/adcnn-run" report "$OUT/trace.json" -o "book/src/img/gantt-$NET.svg"
