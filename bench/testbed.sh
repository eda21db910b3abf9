#!/usr/bin/env bash
# Strategies side by side on the emulated edge cluster (tests/testbed/run.sh; run as root):
# for each network and compression, every strategy's plan run over gRPC on the testbed's
# workers — network namespaces, tbf-shaped links, CPU quotas — FRAMES frames after two
# warm-up ones. Prints a table (p50/p99 latency, frames/s, bytes per frame, speedup over
# `single`, predicted vs measured, aggregate GFLOP/s over the workers' summed ceilings) and
# writes it, with a chart, to $OUT.
#
#   sudo bench/testbed.sh [CLUSTER] [FRAMES] [NETS…]      # defaults: edge4, 50, vgg16 yolov2-tiny
#
# A benchmark: it measures and prints, nothing is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${1:-edge4}
FRAMES=${2:-50}
shift 2 2>/dev/null || shift $#
NETS=("${@:-vgg16 yolov2-tiny}")
read -r -a NETS <<<"${NETS[*]}"
STRATEGIES=(single layerwise halo-even halo auto fdsp)
COMPRESSIONS=(${COMPRESSIONS:-none q8})
OUT=${OUT:-bench/out/testbed}
mkdir -p "$OUT"

cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run
BIN=target/release
# The workers' summed speed, as the cluster file gives it (GFLOP/s).
CEILING=$(awk '/gflops/ && !/worker: false/ { match($0, /gflops: *[0-9.]+/); s += substr($0, RSTART + 8, RLENGTH - 8) } END { print s }' "dsl-examples/$CLUSTER.yaml")
{
  echo "== $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on the $CLUSTER testbed, $FRAMES frames, workers' ceilings $CEILING GFLOP/s"
} | tee "$OUT/header.txt"

CSV=$OUT/results.csv
echo "net,compression,strategy,p50_ms,p99_ms,frames_per_s,bytes_per_frame,predicted_ms,gflop" >"$CSV"
for net in "${NETS[@]}"; do
  for how in "${COMPRESSIONS[@]}"; do
    for s in "${STRATEGIES[@]}"; do
      plan=$OUT/$net-$s-$how.bin
      "$BIN/adcnnc" build "dsl-examples/$net.yaml" --cluster "dsl-examples/$CLUSTER.yaml" \
        --strategy "$s" --compress "$how" -o "$plan" >/dev/null
      line=$(tests/testbed/run.sh "dsl-examples/$CLUSTER.yaml" -- bench "$plan" --remote \
        --runs "$FRAMES" --quiet 2>"$OUT/$net-$s-$how.log" | grep '^bench ' || true)
      if [[ -z $line ]]; then
        echo "$net $how $s: failed (see $OUT/$net-$s-$how.log)"
        continue
      fi
      read -r _ p50 p99 _ gflop _ fps bytes predicted <<<"$line"
      echo "$net,$how,$s,$p50,$p99,$fps,$bytes,$predicted,$gflop" >>"$CSV"
      echo "$net $how $s: p50 $p50 ms, p99 $p99 ms, $fps frames/s, $bytes B/frame, predicted $predicted ms"
    done
  done
done

# The table, with speedup over `single` and the aggregate against the ceilings.
awk -F, -v ceiling="$CEILING" '
  NR == 1 { next }
  { key = $1 "," $2; if ($3 == "single") single[key] = $4; rows[NR] = $0 }
  END {
    print "| network | compression | strategy | p50 ms | p99 ms | frames/s | KiB/frame | speedup vs single | predicted ms | measured / predicted | GFLOP/s (of " ceiling ") |"
    print "|---|---|---|---|---|---|---|---|---|---|---|"
    for (i = 2; i <= NR; i++) {
      split(rows[i], f, ",")
      key = f[1] "," f[2]
      sp = (key in single) ? sprintf("%.2f×", single[key] / f[4]) : "-"
      agg = f[9] / (f[4] / 1000)
      printf "| %s | %s | %s | %.1f | %.1f | %.2f | %.0f | %s | %.1f | %.2f | %.1f (%.0f %%) |\n", \
        f[1], f[2], f[3], f[4], f[5], f[6], f[7] / 1024, sp, f[8], f[4] / f[8], agg, 100 * agg / ceiling
    }
  }' "$CSV" | tee "$OUT/table.md"

# A bar chart of p50 latency per strategy (SVG), one group per network and compression.
awk -F, '
  NR == 1 { next }
  { n++; label[n] = $1 " " $2 " " $3; v[n] = $4; if ($4 > max) max = $4; grp[n] = $1 " " $2 }
  END {
    bh = 16; gap = 4; left = 230; width = 420; top = 30
    h = top + n * (bh + gap) + 40
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", left + width + 80, h
    printf "<text x=\"10\" y=\"18\" font-size=\"13\">p50 latency on the testbed (ms), lower is better</text>\n"
    for (i = 1; i <= n; i++) {
      y = top + (i - 1) * (bh + gap)
      w = width * v[i] / max
      colour = (label[i] ~ / auto$/) ? "#0072B2" : ((label[i] ~ / fdsp$/) ? "#E69F00" : "#999999")
      printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", left - 6, y + bh - 4, label[i]
      printf "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", left, y, w, bh, colour
      printf "<text x=\"%.1f\" y=\"%d\">%.0f</text>\n", left + w + 4, y + bh - 4, v[i]
    }
    print "</svg>"
  }' "$CSV" >"$OUT/latency.svg"
echo "wrote $OUT/table.md, $OUT/results.csv, $OUT/latency.svg"
echo "== load $(cut -d' ' -f1-3 /proc/loadavg)"
