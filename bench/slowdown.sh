#!/usr/bin/env bash
# Slowdown on the emulated edge cluster (run as root): FRAMES frames of NET, planned `auto`
# for CLUSTER, go through the testbed (tests/testbed/run.sh) as one stream, one frame at a
# time. After frame AT, NODE's CPU quota is cut FACTOR times (through its cgroup), or with
# CUT=link its link's rate (both directions' tbf) is divided by FACTOR. The run is made once
# per mode in MODES, side by side:
#   adaptive  the `auto` plan, re-planning on (adcnn-run's default)
#   static    the `auto` plan, --no-replan (held as built)
#   steal     a STEAL_STRATEGY plan (default halo-even) of GRID tiles per segment, --steal
#             (DeepThings-style)
#   even      that plan, --no-replan
# Prints, per mode, the p50 latency before the cut and of frames FROM..FRAMES-1, the ratio of
# each to the adaptive one, the re-plans, the latencies around the cut and how many frames
# after the cut the adaptive run took to be back (a frame, and the median of ten from it,
# within 10 % of its final p50).
#
#   sudo bench/slowdown.sh [NET] [FRAMES]     # defaults: vgg16, 200
#   env: CLUSTER=edge4 NODE=edge1 AT=50 FROM=100 CUT=cpu FACTOR=4 (2 with CUT=link)
#        PERIOD=10000 MODES="adaptive static" GRID=3x3 STEAL_STRATEGY=halo-even
#        OUT=bench/out/slowdown
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
CUT=${CUT:-cpu}
case $CUT in
  cpu) FACTOR=${FACTOR:-4} ;;
  link) FACTOR=${FACTOR:-2} ;;
  *) echo "CUT is cpu or link, not $CUT" >&2 && exit 2 ;;
esac
PERIOD=${PERIOD:-10000}
read -r -a MODES <<<"${MODES:-adaptive static}"
GRID=${GRID:-3x3}
STEAL_STRATEGY=${STEAL_STRATEGY:-halo-even}
OUT=${OUT:-bench/out/slowdown}
QUOTA=/sys/fs/cgroup/cpu/adcnn-testbed/$CLUSTER/$NODE/cpu.cfs_quota_us
NODE_NS=adcnn-$CLUSTER-$NODE AP_NS=adcnn-$CLUSTER--ap
mkdir -p "$OUT"
cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run
BIN=target/release
{
  echo "== $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  what=$([[ $CUT == cpu ]] && echo "CPU quota" || echo "link rate")
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $NET on the $CLUSTER testbed, $FRAMES frames; $NODE's $what cut ${FACTOR}x after frame $AT, CFS period $PERIOD us; modes ${MODES[*]} (steal, even: $STEAL_STRATEGY $GRID)"
} | tee "$OUT/header.txt"
"$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster "dsl-examples/$CLUSTER.yaml" \
  -o "$OUT/$NET.bin" >/dev/null
if [[ " ${MODES[*]} " == *" steal "* || " ${MODES[*]} " == *" even "* ]]; then
  "$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster "dsl-examples/$CLUSTER.yaml" \
    --strategy "$STEAL_STRATEGY" --grid "$GRID" -o "$OUT/$NET-even.bin" >/dev/null
fi

# Cuts NODE's CPU quota, or its link's rate both ways (its veth in its namespace, the
# bridge's port towards it in the access point's), FACTOR times.
cut() {
  local mode=$1 n=$2
  if [[ $CUT == cpu ]]; then
    q=$(cat "$QUOTA")
    if ((q / FACTOR < 1000)); then
      echo "slowdown.sh: $NODE's quota $q us / $FACTOR is under the kernel's 1000 us minimum: raise PERIOD" >&2
      exit 2
    fi
    echo $((q / FACTOR)) >"$QUOTA"
    echo "  $mode: frame $n out, $NODE's quota $q -> $((q / FACTOR)) us per $PERIOD us"
    return
  fi
  local vn vb line rate burst
  vn=$(ip -n "$NODE_NS" -o link show type veth | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }')
  vb=adb${vn#adv}
  line=$(tc -n "$NODE_NS" qdisc show dev "$vn" | grep -m1 tbf)
  rate=$(awk '{ for (i = 1; i < NF; i++) if ($i == "rate") print $(i + 1) }' <<<"$line")
  read -r rate burst < <(awk -v r="$rate" -v f="$FACTOR" 'BEGIN {
    n = r + 0; u = r; sub(/^[0-9.]+/, "", u)
    k = (u == "Gbit") ? n * 1e6 : (u == "Mbit") ? n * 1e3 : (u == "Kbit") ? n : n / 1e3
    k = int(k / f + 0.5); b = int(k * 1000 / 8 / 1000); if (b < 4096) b = 4096
    print k "kbit", b }')
  tc -n "$NODE_NS" qdisc change dev "$vn" root tbf rate "$rate" burst "$burst" latency 50ms
  tc -n "$AP_NS" qdisc change dev "$vb" root tbf rate "$rate" burst "$burst" latency 50ms
  echo "  $mode: frame $n out, $NODE's link ($vn, bridge port $vb) $line -> rate $rate"
}
# shellcheck source=bench/npy.sh
source bench/npy.sh
npy_frame "$NET" "$OUT/frame.npy"

# One run of MODE. Counts the coordinator's per-frame lines and cuts once AT frames are out.
run() {
  local mode=$1 flags=() n=0 done=no plan=$OUT/$NET.bin
  case $mode in
    adaptive) ;;
    static) flags=(--no-replan) ;;
    steal) flags=(--steal) plan=$OUT/$NET-even.bin ;;
    even) flags=(--no-replan) plan=$OUT/$NET-even.bin ;;
    *) echo "unknown mode $mode (adaptive, static, steal, even)" >&2 && exit 2 ;;
  esac
  for _ in $(seq "$FRAMES"); do cat "$OUT/frame.npy"; done |
    tests/testbed/run.sh --adcnn-run "$BIN/adcnn-run" --cpu-period-us "$PERIOD" "dsl-examples/$CLUSTER.yaml" -- \
      "$plan" --input - --in-flight 1 --metrics "$OUT/$mode.json" "${flags[@]}" \
      2>"$OUT/$mode.log" |
    while read -r line; do
      [[ $line =~ ^[0-9]{6} ]] || continue
      n=$((n + 1))
      if ((n == AT)) && [[ $done == no ]]; then
        cut "$mode" "$n"
        done=yes
      fi
    done
}
for mode in "${MODES[@]}"; do run "$mode"; done

python3 - "$OUT" "$FROM" "$AT" "${MODES[@]}" <<'PY'
import json, statistics, sys
out, start, at, modes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
res = {}
for mode in modes:
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
            links = ", ".join(f"{x:.2f}" for x in r.get("links", []))
            print(f"          re-plan at frame {r['frame']}: {r['reason']}; planned with GFLOP/s "
                  f"[{speeds}], links slower [{links}]; shares now [{share}]")
first = modes[0]
a = statistics.median(res[first][start:])
for mode in modes[1:]:
    print(f"{mode} / {first} (frames {start}-): {statistics.median(res[mode][start:]) / a:.2f}x")
if "adaptive" not in res:
    sys.exit(0)
final = statistics.median(res["adaptive"][start:])
lat = res["adaptive"]
# Back: the first frame within 10 % of the final p50 from which the median of ten frames is
# too.
back = next((i for i in range(at, len(lat) - 10)
             if lat[i] <= 1.1 * final and statistics.median(lat[i:i + 10]) <= 1.1 * final), None)
print(f"adaptive back within 10 % of its final p50 ({final:.1f} ms; that frame and the median "
      f"of ten from it) at frame {back}: the {None if back is None else back - at + 1}th frame "
      f"after the cut")
print("latency around the cut (ms), from frame", at - 3)
for mode in modes:
    print(f"  {mode:8}:", [round(x) for x in res[mode][at - 3:at + 12]])
PY
