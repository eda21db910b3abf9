#!/usr/bin/env bash
# Crash on the emulated edge cluster (run as root): FRAMES frames of NET, planned `auto`
# (exact, no compression) for CLUSTER, go through the testbed (tests/testbed/run.sh) as one
# stream, one frame at a time, each output written. Once KILL_AT frames are out, NODE's worker
# is killed with SIGKILL; once RESTART_AT frames are out, it is started again exactly as the
# testbed started it (<rundir>/NODE.start). Prints the frames in and out (lost, duplicated,
# out of order), the largest relative L2 of any output against the reference interpreter's
# (one frame, computed once), the latencies around the kill and the restart, the p50 before,
# between and after, the re-plans and re-dispatched tiles from --metrics, and whether NODE
# computes tiles again after its restart.
#
#   sudo bench/crash.sh [NET] [FRAMES]     # defaults: vgg16, 200
#   env: CLUSTER=edge4 NODE=edge1 KILL_AT=50 RESTART_AT=120 OUT=bench/out/crash
#        FLAGS="..." (more adcnn-run options, e.g. --no-replan; none by default)
#
# The frame has varied values (seeded), so a tile computed on the wrong input region or
# stitched in the wrong place shows in the output. Frame numbers count from 0: the kill
# comes after frames 0..KILL_AT-1 are out, while frame KILL_AT is being computed.
#
# A benchmark: it measures and prints, nothing is asserted; it exits non-zero only when the
# run itself failed. The testbed removes everything it made when the run ends but its run
# directory (--keep), from which the workers' logs are copied to OUT/logs before it goes.
set -euo pipefail
cd "$(dirname "$0")/.."

NET=${1:-vgg16}
FRAMES=${2:-200}
CLUSTER=${CLUSTER:-edge4}
NODE=${NODE:-edge1}
KILL_AT=${KILL_AT:-50}
RESTART_AT=${RESTART_AT:-120}
OUT=${OUT:-bench/out/crash}
read -r -a FLAGS <<<"${FLAGS:-}"
STATE=/run/adcnn-testbed/$CLUSTER.state
((0 < KILL_AT && KILL_AT < RESTART_AT && RESTART_AT < FRAMES)) ||
  { echo "crash.sh: need 0 < KILL_AT ($KILL_AT) < RESTART_AT ($RESTART_AT) < FRAMES ($FRAMES)" >&2; exit 2; }
mkdir -p "$OUT"
rm -rf "$OUT/outputs" "$OUT/logs"
rm -f "$OUT/frames.txt" "$OUT/times.txt" "$OUT/events.txt" "$OUT/metrics.json" "$OUT/run.log"
touch "$OUT/frames.txt" "$OUT/times.txt" "$OUT/events.txt"
nice cargo build --release --quiet -p adcnn-compiler --bin adcnnc -p adcnn-runtime --bin adcnn-run
BIN=target/release
{
  echo "== $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $NET auto (exact, no compression) on the $CLUSTER testbed, $FRAMES frames, 1 in flight; $NODE killed (SIGKILL) after frame $((KILL_AT - 1)), restarted after frame $((RESTART_AT - 1))${FLAGS[*]:+; adcnn-run ${FLAGS[*]}}"
} | tee "$OUT/header.txt"
"$BIN/adcnnc" build "dsl-examples/$NET.yaml" --cluster "dsl-examples/$CLUSTER.yaml" \
  --strategy auto --compress none -o "$OUT/$NET.bin" >/dev/null

# One frame, float32 in the network's input shape, values from a seeded generator.
shape=$(grep -m1 -A1 '^  input:' "dsl-examples/$NET.yaml" | sed -n 's/.*shape: *\[\(.*\)\].*/\1/p')
python3 - "$OUT/frame.npy" "$shape" <<'PY'
import array, random, sys
path, shape = sys.argv[1], [int(d) for d in sys.argv[2].split(",")]
n = 1
for d in shape:
    n *= d
rng = random.Random(16)
a = array.array("f", (rng.uniform(-2.0, 2.5) for _ in range(n)))
if sys.byteorder != "little":
    a.byteswap()
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % "".join(f"{d}, " for d in shape).rstrip(" ")
header += " " * (-(len(header) + 11) % 64) + "\n"
with open(path, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + a.tobytes())
PY
"$BIN/adcnnc" run "dsl-examples/$NET.yaml" --input "$OUT/frame.npy" --output "$OUT/reference.npy" \
  >"$OUT/reference.txt"

# The run. Counts the coordinator's per-frame lines; kills NODE's worker once KILL_AT are
# out and starts it again once RESTART_AT are.
now() { echo "$EPOCHREALTIME"; }
rc=0
for _ in $(seq "$FRAMES"); do cat "$OUT/frame.npy"; done |
  tests/testbed/run.sh --keep --adcnn-run "$BIN/adcnn-run" "dsl-examples/$CLUSTER.yaml" -- \
    "$OUT/$NET.bin" --input - --in-flight 1 --output "$OUT/outputs" --metrics "$OUT/metrics.json" \
    "${FLAGS[@]}" 2>"$OUT/run.log" |
  {
    n=0 dir=""
    while IFS= read -r line; do
      printf '%s\n' "$line" >>"$OUT/frames.txt"
      [[ $line =~ ^[0-9]{6} ]] || continue
      echo "$EPOCHREALTIME ${line%% *}" >>"$OUT/times.txt"
      n=$((n + 1))
      [[ -n $dir ]] || dir=$(awk '$1 == "dir" { print $2 }' "$STATE")
      # (Keep reading whatever happens: the coordinator must not lose its stdout.)
      if ((n == KILL_AT)); then
        pid=$(cat "$dir/$NODE.pid" 2>/dev/null) || pid=""
        in_ns=$(ip netns pids "adcnn-$CLUSTER-$NODE" 2>/dev/null | tr '\n' ' ') || true
        if [[ -n $pid ]] && kill -9 "$pid"; then
          what="kill -9 $NODE's worker, pid $pid (pids in its namespace: ${in_ns% })"
        else
          what="could not kill $NODE's worker (pid file $dir/$NODE.pid: '$pid')"
        fi
        echo "  $(now) frame $((n - 1)) out: $what" | tee -a "$OUT/events.txt"
      elif ((n == RESTART_AT)); then
        if pid=$("$dir/$NODE.start"); then
          what="$NODE restarted by $dir/$NODE.start, pid $pid"
        else
          what="$dir/$NODE.start failed"
        fi
        echo "  $(now) frame $((n - 1)) out: $what" | tee -a "$OUT/events.txt"
      fi
    done
  } || rc=$?
# The run directory, kept (--keep) for the workers' logs; its token and certificates are not
# wanted.
dir=$(sed -n 's/^run\.sh: kept the run directory //p' "$OUT/run.log" | tail -n 1)
if [[ $dir == */adcnn-testbed-"$CLUSTER".* && -d $dir ]]; then
  mkdir -p "$OUT/logs"
  cp "$dir"/*.log "$OUT/logs/" || true
  rm -rf -- "$dir"
fi
if ((rc != 0)); then
  echo "crash.sh: the run failed (exit $rc); the coordinator's stderr, $OUT/run.log:" >&2
  tail -n 20 "$OUT/run.log" | sed 's/^/  | /' >&2
fi
echo "-- the coordinator's warnings and notes ($OUT/run.log):"
grep -E '^(warning|note|error)' "$OUT/run.log" | grep -v 'latency_ms is NOT emulated' | sed 's/^/  /' || true
if grep -q "^# $NODE.start: restarted" "$OUT/logs/$NODE.log" 2>/dev/null; then
  echo "-- $NODE's log from its restart on ($OUT/logs/$NODE.log):"
  sed -n "/^# $NODE.start: restarted/,\$p" "$OUT/logs/$NODE.log" | head -n 12 | cut -c1-200 | sed 's/^/  /'
fi

python3 - "$OUT" "$FRAMES" "$KILL_AT" "$RESTART_AT" "$NODE" <<'PY'
import array, ast, json, math, os, re, statistics, sys

out, frames, kill_at, restart_at, node = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]

def npy(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:6] == b"\x93NUMPY", path
    if data[6] == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    else:
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    assert header["descr"] == "<f4" and not header["fortran_order"], (path, header)
    a = array.array("f")
    a.frombytes(data[start + hlen:])
    if sys.byteorder != "little":
        a.byteswap()
    return a

# Frames in and out: the coordinator's per-frame lines, the output files, the metrics.
lines = [l.split()[0] for l in open(f"{out}/frames.txt") if re.match(r"^[0-9]{6}", l)]
want = [f"{i:06d}" for i in range(frames)]
files = sorted(f[:-4] for f in os.listdir(f"{out}/outputs")) if os.path.isdir(f"{out}/outputs") else []
print(f"frames: {frames} in, {len(lines)} out ({len(set(lines))} distinct), "
      f"{len(want) - len(set(lines) & set(want))} lost, {len(lines) - len(set(lines))} duplicated, "
      f"in order: {'yes' if lines == want[:len(lines)] else 'no'}; {len(files)} output files")

ref = npy(f"{out}/reference.npy")
norm = math.sqrt(sum(x * x for x in ref))
errs = []
for name in files:
    o = npy(f"{out}/outputs/{name}.npy")
    if len(o) != len(ref):
        errs.append((math.inf, name))
        continue
    errs.append((math.sqrt(sum((x - y) ** 2 for x, y in zip(o, ref))) / norm, name))
if errs:
    worst = max(errs)
    over = [n for e, n in errs if e > 1e-5]
    print(f"outputs against the reference interpreter: max relative L2 {worst[0]:.2e} (frame {worst[1]}), "
          f"median {statistics.median(e for e, _ in errs):.2e}; {len(over)} frame(s) over 1e-5"
          + (f": {', '.join(over[:20])}" if over else ""))

if not os.path.exists(f"{out}/metrics.json"):
    print("no metrics (the run did not finish)")
    sys.exit(0)
m = json.load(open(f"{out}/metrics.json"))
names = [n["name"] for n in m["nodes"]]
k = names.index(node)
fr = m["frames"]
lat = [f["latency_ms"] for f in fr]
busy = [f["node_busy_ms"][k] for f in fr]

def p50(a, b):
    s = lat[a:b]
    return f"{statistics.median(s):7.1f} ms (frames {a}-{b - 1})" if s else "-"

print(f"p50 latency: before the kill {p50(0, kill_at)}; between {p50(kill_at, restart_at)}; "
      f"after the restart {p50(restart_at, len(lat))}")
print(f"plan: {m['plan']['strategy']}, {m['plan']['compression']}, predicted {m['plan']['predicted_ms']:.1f} ms")

replan_at = {}
for f in fr:
    for r in f.get("replans", []):
        replan_at[f["frame"]] = r
        share = ", ".join(f"{names[i]} {100 * s:.0f}%" for i, s in enumerate(r["after"]) if s > 0)
        print(f"re-plan reported with frame {f['frame']}: from frame {r['frame']}, {r['reason']}; shares now {share}")
redis = [(f["frame"], d) for f in fr for d in f.get("redispatched", [])]
print(f"re-dispatched tiles: {len(redis)}")
for i, d in redis:
    print(f"  frame {i}: segment {d['segment']} tile {d['tile']} {names[d['from']]} -> {names[d['to']]}"
          f"{' (late)' if d.get('late') else ''}")

def table(a, b, title):
    print(f"{title}:")
    print(f"  {'frame':>5} {'latency':>10} {node + ' busy':>11} {'re-sent':>7}  re-plan")
    for i in range(max(0, a), min(b, len(fr))):
        r = replan_at.get(i)
        print(f"  {i:5d} {lat[i]:7.1f} ms {busy[i]:8.1f} ms {len(fr[i].get('redispatched', [])):7d}  "
              f"{'' if r is None else r['reason']}")

table(kill_at - 3, kill_at + 11, f"around the kill (after frame {kill_at - 1})")
table(restart_at - 3, restart_at + 11, f"around the restart (after frame {restart_at - 1})")

def busy_frames(a, b):
    return sum(1 for x in busy[a:b] if x > 0), len(busy[a:b])

def share(a, b):
    tot = sum(sum(f["node_busy_ms"]) for f in fr[a:b])
    return 100 * sum(busy[a:b]) / tot if tot else 0.0

for (a, b, what) in [(0, kill_at, "before the kill"), (kill_at, restart_at, "between"),
                     (restart_at, len(fr), "after the restart")]:
    n, t = busy_frames(a, b)
    print(f"{node} computed in {n} of {t} frames {what} ({share(a, b):.1f} % of the nodes' busy time)")
back = next((i for i in range(restart_at, len(fr)) if busy[i] > 0), None)
print(f"{node} back in the assignment: "
      + ("no" if back is None else f"yes, computes again from frame {back} "
         f"({back - restart_at + 1} frame(s) after the restart), in every frame from it on: "
         f"{'yes' if all(x > 0 for x in busy[back:]) else 'no'}"))
# When: the kill and the restart (events.txt), each frame's line (times.txt), in seconds.
try:
    ev = [float(l.split()[0]) for l in open(f"{out}/events.txt")]
    t = [float(l.split()[0]) for l in open(f"{out}/times.txt")]
    if len(ev) == 2 and len(t) == len(fr):
        print(f"timeline: the kill {1000 * (t[kill_at] - ev[0]):.0f} ms before frame {kill_at} was out; "
              f"the restart {1000 * (t[restart_at] - ev[1]):.0f} ms before frame {restart_at} was out"
              + ("" if back is None else f", {1000 * (t[back] - ev[1]):.0f} ms before frame {back}, "
                 f"the first one {node} computed in, was out"))
except (OSError, ValueError, IndexError):
    pass
nf = m["nodes"][k]
print(f"{node} at the end: lost {nf['lost']}, rejoined {nf['rejoined']}, tiles {nf['tiles']}, "
      f"tiles re-dispatched from it {nf['redispatched']}, late {nf['late']}")
PY
exit "$rc"
