#!/usr/bin/env bash
# A worker under a flood of bad connections: does it keep serving its coordinator?
# Three TLS workers on loopback and NET (default resnet18) planned `auto` for loopback3;
# `adcnn-run bench --remote` latency measured quiet, then while runtime/examples/flood.rs
# hits every worker with garbage bytes, half-open connections and stalled TLS handshakes,
# alternating ROUNDS times (default 3), side by side.
#
#   bench/flood.sh [NET] [RUNS] [ROUNDS]
#
# Prints p50/p99 per round and the median ratio flooded / quiet of the p50s (target: within
# 1.2), the flood's own counts, and each worker's open file descriptors at the end of a
# flooded round, and the CPU seconds the workers spent in each round. FLOOD (flags of
# runtime/examples/flood.rs, per worker) defaults to "--garbage 2 --pace-ms 4 --half-open 300
# --tls-stall 300": up to ~500 garbage connections a second per worker. The flood runs at
# nice 19 from 127.0.0.2: on this 2-core machine its own CPU would otherwise be most of what
# is measured; from another host it costs the worker's machine nothing.
# A benchmark: it measures and prints, nothing is asserted. Every process it starts is
# stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

NET=${1:-resnet18}
RUNS=${2:-30}
ROUNDS=${3:-3}
FLOOD=${FLOOD:---garbage 2 --pace-ms 4 --half-open 300 --tls-stall 300}
OUT=${OUT:-bench/out/flood}
mkdir -p "$OUT"
cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run --example flood
BIN=target/release
echo "== $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $NET on loopback3 (TLS), $RUNS frames a round"

head -c 32 /dev/urandom | base64 >"$OUT/token"
rm -rf "$OUT/certs"
"$BIN/adcnn-run" certs --cluster dsl-examples/loopback3.yaml -o "$OUT/certs" >/dev/null
# shellcheck source=bench/workers.sh
source bench/workers.sh
FLOODS=()
stop_flood() { for p in "${FLOODS[@]}"; do kill "$p" 2>/dev/null || true; done; FLOODS=(); }
on_exit() { stop_flood; }
start_workers --tls-dir "$OUT/certs" --name '{name}'
"$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster dsl-examples/loopback3.yaml \
  -o "$OUT/$NET.bin" >/dev/null
REMOTE=(--remote --token-file "$OUT/token" --tls-dir "$OUT/certs" "${WORKERS[@]}")
# Warm-up: ships the plan and compiles the kernels once.
"$BIN/adcnn-run" bench "$OUT/$NET.bin" "${REMOTE[@]}" --runs 3 --quiet >/dev/null

printf '\n%-22s %9s %9s %14s\n' round p50 p99 "workers' CPU s"
cpu() { # total CPU seconds of the workers
  local t=0
  for p in "${WPIDS[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}
quiet=()
flooded=()
for round in $(seq "$ROUNDS"); do
  c0=$(cpu)
  read -r _ p50 p99 _ < <("$BIN/adcnn-run" bench "$OUT/$NET.bin" "${REMOTE[@]}" --runs "$RUNS" --quiet)
  c1=$(cpu)
  printf '%-22s %9.1f %9.1f %14.2f\n' "quiet $round" "$p50" "$p99" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {print b - a}')"
  quiet+=("$p50")
  for i in 0 1 2; do
    # shellcheck disable=SC2086 # FLOOD is a list of flags
    nice -n 19 "$BIN/examples/flood" "${ADDRS[$i]}" $FLOOD 2>"$OUT/flood-w$((i + 1)).log" &
    FLOODS+=($!)
  done
  sleep 3 # the held connections are open before the frames start
  c0=$(cpu)
  read -r _ p50 p99 _ < <("$BIN/adcnn-run" bench "$OUT/$NET.bin" "${REMOTE[@]}" --runs "$RUNS" --quiet)
  c1=$(cpu)
  printf '%-22s %9.1f %9.1f %14.2f\n' "flooded $round" "$p50" "$p99" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {print b - a}')"
  flooded+=("$p50")
  fds=()
  for p in "${WPIDS[@]}"; do fds+=("$(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 | wc -l)"); done
  stop_flood
  sleep 1
  echo "  workers' open fds while flooded: ${fds[*]}; $(tail -1 "$OUT/flood-w1.log" 2>/dev/null | sed 's/^flood //')"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
q=$(median "${quiet[@]}")
f=$(median "${flooded[@]}")
awk -v q="$q" -v f="$f" 'BEGIN { printf "\nmedian p50: quiet %.1f ms, flooded %.1f ms, ratio %.3f (target ≤ 1.2)\n", q, f, f / q }'
for w in w1 w2 w3; do
  echo "$w log: $(grep -c 'tls accept error' "$OUT/$w.log" || true) refused TLS handshakes logged"
done
echo "== load $(cut -d' ' -f1-3 /proc/loadavg)"
