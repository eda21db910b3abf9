# Sourced by the bench scripts (after BIN and OUT are set, with OUT/token written): the three
# loopback3 workers on free loopback ports, stopped on exit.
#
#   start_workers [ARG…]   ARGs go to every worker; `{name}` in them becomes its name
#
# Sets WORKERS (`--worker NAME=HOST:PORT` flags for adcnn-run), ADDRS and WPIDS (one per
# worker, in order w1 w2 w3); every process a script adds to PIDS is killed on exit, after
# the script's own `on_exit` if it defines one.
PIDS=()
cleanup() {
  if declare -F on_exit >/dev/null; then on_exit; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start_workers() {
  WORKERS=()
  ADDRS=()
  WPIDS=()
  local w addr
  for w in w1 w2 w3; do
    "$BIN/adcnn-run" worker --listen 127.0.0.1:0 --token-file "$OUT/token" --threads 1 \
      "${@//\{name\}/$w}" >"$OUT/$w.out" 2>"$OUT/$w.log" &
    PIDS+=($!)
    WPIDS+=($!)
  done
  for w in w1 w2 w3; do
    for _ in $(seq 100); do grep -q '^listening on' "$OUT/$w.out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$OUT/$w.out")
    [[ -n $addr ]] || { echo "worker $w did not start:"; cat "$OUT/$w.log"; exit 1; }
    WORKERS+=(--worker "$w=$addr")
    ADDRS+=("$addr")
  done
}
