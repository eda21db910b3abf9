#!/usr/bin/env bash
# Slowdown on the emulated edge cluster (run as root): FRAMES frames of NET, planned `auto`
# for CLUSTER, go through the testbed (tests/testbed/run.sh) as one stream, one frame at a
# time. After frame AT, NODE's CPU quota is cut FACTOR times (through its cgroup). The run is
# made twice, side by side: with re-planning on (adcnn-run's default) and with --no-replan
# (the plan held static). Prints the p50 latency of frames FROM..FRAMES-1 of each, their
# ratio, the re-plans, the latencies around the cut and how many frames after the cut the
# adaptive run took to be back (a frame, and the median of ten from it, within 10 % of its
# final p50).
#
#   sudo bench/slowdown.sh [NET] [FRAMES]     # defaults: vgg16, 200
#   env: CLUSTER=edge4 NODE=edge1 AT=50 FROM=100 FACTOR=4 PERIOD=10000 OUT=bench/out/slowdown
#
# The CPU quotas are in CFS periods of PERIOD µs (the testbed's --cpu-period-us): with the
# testbed's default 100 ms, a node whose quota is an eighth of a core runs at full speed for
# 12.5 ms and then waits 87.5 ms, which a frame of a few hundred ms sees as bursts, not as a
# slow CPU.
#
# A benchmark: it measures and prints, nothing is asserted. The testbed removes everything it
# made when each run ends.
set -euo pipefail
cd "$(dirname "$0")/.."

NET=${1:-vgg16}
FRAMES=${2:-200}
CLUSTER=${CLUSTER:-edge4}
NODE=${NODE:-edge1}
AT=${AT:-50}
FROM=${FROM:-100}
FACTOR=${FACTOR:-4}
PERIOD=${PERIOD:-10000}
OUT=${OUT:-bench/out/slowdown}
QUOTA=/sys/fs/cgroup/cpu/adcnn-testbed/$CLUSTER/$NODE/cpu.cfs_quota_us
mkdir -p "$OUT"
cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run
BIN=target/release
{
  echo "== $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $NET auto on the $CLUSTER testbed, $FRAMES frames; $NODE's CPU quota cut ${FACTOR}x after frame $AT, CFS period $PERIOD us"
} | tee "$OUT/header.txt"
"$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster "dsl-examples/$CLUSTER.yaml" \
  -o "$OUT/$NET.bin" >/dev/null
# shellcheck source=bench/npy.sh
source bench/npy.sh
npy_frame "$NET" "$OUT/frame.npy"

# One run: MODE is adaptive or static. Counts the coordinator's per-frame lines and cuts
# the quota once AT frames are out.
run() {
  local mode=$1 flags=() n=0 cut=no
  [[ $mode == static ]] && flags=(--no-replan)
  for _ in $(seq "$FRAMES"); do cat "$OUT/frame.npy"; done |
    tests/testbed/run.sh --adcnn-run "$BIN/adcnn-run" --cpu-period-us "$PERIOD" "dsl-examples/$CLUSTER.yaml" -- \
      "$OUT/$NET.bin" --input - --in-flight 1 --metrics "$OUT/$mode.json" "${flags[@]}" \
      2>"$OUT/$mode.log" |
    while read -r line; do
      [[ $line =~ ^[0-9]{6} ]] || continue
      n=$((n + 1))
      if ((n == AT)) && [[ $cut == no ]]; then
        q=$(cat "$QUOTA")
        echo $((q / FACTOR)) >"$QUOTA"
        echo "  $mode: frame $n out, $NODE's quota $q -> $((q / FACTOR)) us per $PERIOD us"
        cut=yes
      fi
    done
}
run adaptive
run static

python3 - "$OUT" "$FROM" "$AT" <<'PY'
import json, statistics, sys
out, start, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = {}
for mode in ("adaptive", "static"):
    m = json.load(open(f"{out}/{mode}.json"))
    lat = [f["latency_ms"] for f in m["frames"]]
    res[mode] = lat
    p50 = statistics.median(lat[start:])
    before = statistics.median(lat[max(0, at - 30):at])
    print(f"{mode:8}: p50 {before:8.1f} ms before the cut (frames {max(0, at - 30)}-{at - 1}), "
          f"{p50:8.1f} ms over frames {start}-{len(lat) - 1}")
    for f in m["frames"]:
        for r in f.get("replans", []):
            share = ", ".join(f"{x:.2f}" for x in r["after"])
            speeds = ", ".join(f"{x:.1f}" for x in r["speeds"])
            print(f"          re-plan at frame {r['frame']}: {r['reason']}; planned with GFLOP/s "
                  f"[{speeds}]; shares now [{share}]")
a, s = statistics.median(res["adaptive"][start:]), statistics.median(res["static"][start:])
print(f"static / adaptive: {s / a:.2f}x")
final = a
lat = res["adaptive"]
# Back: the first frame within 10 % of the final p50 from which the median of ten frames is
# too.
back = next((i for i in range(at, len(lat) - 10)
             if lat[i] <= 1.1 * final and statistics.median(lat[i:i + 10]) <= 1.1 * final), None)
print(f"adaptive back within 10 % of its final p50 ({final:.1f} ms; that frame and the median "
      f"of ten from it) at frame {back}: the {None if back is None else back - at + 1}th frame "
      f"after the cut")
print("latency around the cut (ms), adaptive:", [round(x) for x in lat[at - 3:at + 12]])
print("                          static:  ", [round(x) for x in res["static"][at - 3:at + 12]])
PY
