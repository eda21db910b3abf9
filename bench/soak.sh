#!/usr/bin/env bash
# Soak: FRAMES frames (default 10 000) of NET (default resnet18, `auto` on loopback3) through
# three worker processes and a coordinator on this machine's loopback, as one stream on the
# coordinator's stdin. Every 100 finished frames it samples each process's resident memory,
# open file descriptors and threads (from /proc).
#
#   bench/soak.sh [NET] [FRAMES]
#
# Writes bench/out/soak/samples.csv (frame, process, rss_kib, fds, threads), summary.md
# (first sample after warm-up, last, min, max and drift per process) and rss.svg, the chart
# in the book's "Limits and fuzzing" page. A benchmark: it measures and prints, nothing is
# asserted. Every process it starts is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

NET=${1:-resnet18}
FRAMES=${2:-10000}
EVERY=${EVERY:-100}
WARM=${WARM:-500} # frames before the flatness figures start
OUT=${OUT:-bench/out/soak}
mkdir -p "$OUT"
rm -rf "$OUT/frames-out"
cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run
BIN=target/release
echo "== $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $NET on loopback3, $FRAMES frames"

head -c 32 /dev/urandom | base64 >"$OUT/token"
# shellcheck source=bench/workers.sh
source bench/workers.sh
start_workers
"$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster dsl-examples/loopback3.yaml \
  -o "$OUT/$NET.bin" >/dev/null
# One input frame as .npy, repeated FRAMES times.
# shellcheck source=bench/npy.sh
source bench/npy.sh
npy_frame "$NET" "$OUT/frame.npy"

mkdir -p "$OUT/frames-out"
for _ in $(seq "$FRAMES"); do cat "$OUT/frame.npy"; done |
  "$BIN/adcnn-run" "$OUT/$NET.bin" --token-file "$OUT/token" "${WORKERS[@]}" --input - \
    --in-flight 2 --output "$OUT/frames-out" >"$OUT/coordinator.out" 2>"$OUT/coordinator.log" &
COORD=$!
PIDS+=("$COORD")

sample() { # frame pid name
  local rss fds threads
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$2/status" 2>/dev/null) || return 0
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$2/status" 2>/dev/null) || return 0
  fds=$(find "/proc/$2/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "$1,$3,$rss,$fds,$threads" >>"$OUT/samples.csv"
}
echo "frame,process,rss_kib,fds,threads" >"$OUT/samples.csv"
next=$EVERY
start=$(date +%s)
while kill -0 "$COORD" 2>/dev/null; do
  done_frames=$(find "$OUT/frames-out" -maxdepth 1 -name '*.npy' | wc -l)
  if ((done_frames >= next)); then
    sample "$next" "$COORD" coordinator
    for i in 0 1 2; do sample "$next" "${WPIDS[$i]}" "w$((i + 1))"; done
    ((next % 1000 == 0)) && echo "  $next frames, $(($(date +%s) - start)) s"
    next=$((next + EVERY))
  fi
  sleep 0.05
done
wait "$COORD" || { echo "the coordinator failed:"; tail -5 "$OUT/coordinator.log"; exit 1; }
elapsed=$(($(date +%s) - start))
written=$(find "$OUT/frames-out" -maxdepth 1 -name '*.npy' | wc -l)
echo "== $written frames in $elapsed s; load $(cut -d' ' -f1-3 /proc/loadavg)"

awk -F, -v warm="$WARM" -v frames="$written" -v secs="$elapsed" '
  NR > 1 && $1 >= warm {
    p = $2
    if (!(p in first)) { first[p] = $3; ffd[p] = $4; fth[p] = $5; order[++n] = p }
    last[p] = $3; lfd[p] = $4; lth[p] = $5
    if (!(p in lo) || $3 < lo[p]) lo[p] = $3
    if ($3 > hi[p]) hi[p] = $3
    if ($4 > hifd[p]) hifd[p] = $4
    if ($5 > hith[p]) hith[p] = $5
  }
  END {
    printf "%d frames in %d s (%.1f frames/s); figures from frame %d on.\n\n", frames, secs, frames / secs, warm
    print "| process | RSS at " warm " (MiB) | last | min | max | (max − min) / first | fds first → last (max) | threads first → last (max) |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) {
      p = order[i]
      printf "| %s | %.1f | %.1f | %.1f | %.1f | %.1f %% | %d → %d (%d) | %d → %d (%d) |\n", p,
        first[p] / 1024, last[p] / 1024, lo[p] / 1024, hi[p] / 1024,
        100 * (hi[p] - lo[p]) / first[p], ffd[p], lfd[p], hifd[p], fth[p], lth[p], hith[p]
    }
  }' "$OUT/samples.csv" | tee "$OUT/summary.md"

# The chart: RSS of each process over the frames.
awk -F, -v frames="$FRAMES" '
  NR > 1 { x[NR] = $1; p[NR] = $2; y[NR] = $3 / 1024; if (y[NR] > max) max = y[NR]; if (!($2 in seen)) { seen[$2] = 1; names[++n] = $2 } }
  END {
    left = 60; top = 20; width = 640; height = 260; top_mib = int(max * 1.15 / 50 + 1) * 50
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", left + width + 110, top + height + 40
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
    for (v = 0; v <= top_mib; v += top_mib / 5) {
      yy = top + height - height * v / top_mib
      printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%d</text>\n", left, yy, left + width, yy, left - 5, yy + 4, v
    }
    for (f = 0; f <= frames; f += frames / 5) {
      xx = left + width * f / frames
      printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", xx, top + height + 15, f
    }
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">frames</text>\n", left + width / 2, top + height + 32
    printf "<text x=\"12\" y=\"%d\" transform=\"rotate(-90 12 %d)\" text-anchor=\"middle\">RSS (MiB)</text>\n", top + height / 2, top + height / 2
    split("#1f77b4 #ff7f0e #2ca02c #d62728", colour, " ")
    for (i = 1; i <= n; i++) {
      pts = ""
      for (r = 2; r <= NR; r++) if (p[r] == names[i])
        pts = pts sprintf("%.1f,%.1f ", left + width * x[r] / frames, top + height - height * y[r] / top_mib)
      printf "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\"/>\n", colour[i], pts
      printf "<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", left + width + 10, top + 15 * i, colour[i], names[i]
    }
    print "</svg>"
  }' "$OUT/samples.csv" >"$OUT/rss.svg"
echo "wrote $OUT/samples.csv, $OUT/summary.md, $OUT/rss.svg"
