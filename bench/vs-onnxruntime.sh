#!/usr/bin/env bash
# adcnn (plan `single`, compiled kernels, `--threads N`) against onnxruntime (N intra-op
# threads, all graph optimisations) on the same architectures, interleaved, in one run, for
# each N in THREADS (default 1,2).
#
#   bench/vs-onnxruntime.sh [ROUNDS] [MODELS...]     (default: 10 rounds, all six models)
#   THREADS=1,2,4 bench/vs-onnxruntime.sh 5 vgg16
#
# Makes its own venv under bench/.venv (torch, torchvision, onnx, onnxruntime, numpy) unless
# ADCNN_BENCH_VENV names an existing one (e.g. /tmp/tv). A benchmark: prints, asserts nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ROUNDS="${1:-10}"
shift || true
MODELS="${*:-vgg16 yolov2-tiny resnet18 resnet50 mobilenetv2 ppocr-det}"
VENV="${ADCNN_BENCH_VENV:-$ROOT/bench/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch torchvision onnx onnxruntime numpy
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run
OUT="$ROOT/bench/out"
mkdir -p "$OUT"
for m in $MODELS; do
  # Plans are rebuilt every time: one left by another version (another plan format) would be
  # refused.
  "$CARGO_TARGET_DIR/release/adcnnc" build "dsl-examples/$m.yaml" \
      --strategy single -o "$OUT/$m.plan.bin" >/dev/null
done
echo "loadavg: $(cat /proc/loadavg)"
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
  "$VENV/bin/python" "$ROOT/bench/vs_onnxruntime.py" --rounds "$ROUNDS" --out "$OUT" \
  --threads "${THREADS:-1,2}" --adcnn-run "$CARGO_TARGET_DIR/release/adcnn-run" $MODELS
echo "loadavg: $(cat /proc/loadavg)"
