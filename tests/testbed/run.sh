#!/usr/bin/env bash
# The emulated edge cluster: one network namespace per node of a cluster file, bandwidth-limited
# links to a bridge, a CPU quota per node, a worker per worker node and the coordinator's
# command in the coordinator's namespace. `tests/testbed/run.sh --help` says it all; the book's
# page "The emulated cluster" (book/src/testbed.md) explains what is and is not emulated.
# tests/testbed.rs snapshots its --dry-run listings.
set -euo pipefail
shopt -s nullglob

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

CGROUP_CPU=/sys/fs/cgroup/cpu
CGROUP_BASE=$CGROUP_CPU/adcnn-testbed
STATE_DIR=/run/adcnn-testbed
CFS_PERIOD_US=100000
MIN_QUOTA_US=1000

usage() {
  cat <<EOF
Usage: tests/testbed/run.sh [options] CLUSTER.yaml -- ADCNN-RUN-ARGS...
       tests/testbed/run.sh --cleanup [CLUSTER.yaml]

Emulates the edge cluster of CLUSTER.yaml on this machine (as root) and runs the
coordinator command \`adcnn-run ADCNN-RUN-ARGS...\` on it:

  network   one network namespace per node, adcnn-<cluster>-<node>, holding the node's IP
            (from its \`address\`, on the smallest subnet up to /24 that covers all nodes)
            on a veth adv<N>; the other ends, adb<N>, are ports of a bridge adbr0 (the
            "access point") in a namespace of its own, adcnn-<cluster>--ap, without an IP.
            Nothing is created or changed in the root namespace.
  links     every node with \`mbps\` gets a tbf qdisc at that rate in both directions: on
            its own veth (what it sends) and on the bridge's port towards it (what it
            receives); bucket 1 ms of traffic (at least 4 KiB), queue 50 ms. The
            coordinator's link is not shaped: in the plan's model the links are each
            worker's link to the coordinator, in parallel.
  latency   NOT emulated by the network (this kernel's tc has no netem). Each worker gets
            ADCNN_EMULATED_LATENCY_MS=<its latency_ms> and the coordinator
            ADCNN_EMULATED_LATENCY_MS_<NODE>=<latency_ms> for every node (NODE upper-cased,
            \`.\` as \`_\`), for the runtime to add a per-message delay. Every process also
            gets ADCNN_TESTBED_NODE=<its node>.
  CPU       a cgroup v1 \`cpu\` child per node, $CGROUP_BASE/<cluster>/<node>,
            with cpu.cfs_period_us $CFS_PERIOD_US and cpu.cfs_quota_us = gflops x threads /
            GFLOPS-PER-CORE of it (at least $MIN_QUOTA_US; threads: the node's \`threads\`, else
            1): with the default 88 GFLOP/s per core, 44 GFLOP/s is half a core (50000), 22 a
            quarter (25000). Workers get --threads: the node's \`threads\`, else
            ceil(quota / period). The cluster's cgroup gets cpu.shares 1024 x
            nodes, to compete with other work on the machine like that many processes.
  workers   in each worker node's namespace and cgroup:
              \$ADCNN_RUN worker --listen <address> --token-file <rundir>/token
                                 [--tls-dir <rundir>/certs --name <node> | --insecure]
                                 --threads <n>
            logging to <rundir>/<node>.log; the script waits until each one accepts TCP
            connections from the coordinator's namespace, else stops and shows its log.
  restarts  <rundir>/<node>.pid holds each worker's pid, and <rundir>/<node>.start (a shell
            script) starts that worker again from outside, exactly as above (namespace,
            cgroup, environment, arguments; ADCNN_LOG and RUST_BACKTRACE as the script had
            them), in the background, appending to its log after a line
            \`# <node>.start: restarted at <time>\`; it prints the new pid and records it
            in <node>.pid, and refuses (exit 1) while the recorded pid still runs. A crash
            and a restart, from another shell while the run lasts:
              d=\$(awk '\$1 == "dir" { print \$2 }' $STATE_DIR/<cluster>.state)
              kill -9 "\$(cat "\$d/edge1.pid")"; sleep 10; "\$d/edge1.start"
            (bench/crash.sh does this). Teardown stops a restarted worker like the others.
  coordinator  in the coordinator's namespace and cgroup, stdin/stdout/stderr passed through:
              \$ADCNN_RUN ADCNN-RUN-ARGS... --cluster CLUSTER.yaml --token-file <rundir>/token
                                 [--tls-dir <rundir>/certs | --insecure]
            The script exits with its exit status.

The token (32 random bytes, hex, mode 600) and the certificates
(\`\$ADCNN_RUN certs --cluster CLUSTER.yaml -o <rundir>/certs\`) live in a fresh run
directory, mktemp -d -t adcnn-testbed-<cluster>.XXXXXX. Everything (processes, namespaces,
veths, bridge, cgroups, the run directory unless --keep) is removed when the script ends:
success, failure, Ctrl-C or SIGTERM. A run that could not clean up (SIGKILL, power loss)
is recorded in $STATE_DIR/<cluster>.state (lines \`pid <pid>\`, \`dir <rundir>\`,
\`rundir <rundir>\` for a run directory to remove, i.e. without --keep, and \`netns <name>\`);
the next run of that cluster, or --cleanup, removes what it left.

Options:
  --adcnn-run PATH       the adcnn-run binary (default: \$ADCNN_RUN, else
                         target/release/adcnn-run in the repository)
  --gflops-per-core N    CPU scale: GFLOP/s that one full core stands for (default 88)
  --cpu-period-us N      the CFS period the quotas are in (default 100000; 1000-1000000). A
                         node may use its whole quota at full speed at the start of a period,
                         then waits: over work shorter than a few periods a quota is a
                         bursty slow CPU. A short period (10000) is closer to a slow one
  --insecure             no certificates: workers and coordinator get --insecure
  --keep                 keep the run directory (token, certificates, worker logs)
  --wait SECONDS         how long to wait for the workers to listen (default 30)
  --dry-run              print every command, one per line (a worker's .start script as a
                         here-document), in order, and do nothing (needs neither root nor
                         adcnn-run); random or run-time values are placeholders: <rundir>,
                         <pid>
  --cleanup [CLUSTER]    remove what earlier runs left behind: with a cluster file, that
                         cluster's namespaces, cgroups and run directory; without, every
                         run recorded in $STATE_DIR and every cgroup under
                         $CGROUP_BASE
  -v, --verbose          print each command to stderr as it runs
  -h, --help             this text

Exit status: the coordinator's; 2 for a usage error, a malformed cluster file or a missing
prerequisite (root; ip and tc; the cgroup v1 cpu controller at $CGROUP_CPU with CFS
bandwidth control; the adcnn-run binary); 1 when the testbed could not be set up;
130/143 after SIGINT/SIGTERM.

Example:
  tests/testbed/run.sh dsl-examples/edge4.yaml -- bench plan.bin
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  local code=$1
  shift
  say "$*"
  exit "$code"
}

# ---------------------------------------------------------------------------------------------
# Options

DRY_RUN=0 CLEANUP=0 KEEP=0 INSECURE=0 VERBOSE=0
GFLOPS_PER_CORE=88 WAIT_S=30
ADCNN_RUN_OPT=""
CLUSTER_ARG=""
HAVE_DASHDASH=0
COORD_ARGS=()

is_number() { [[ $1 =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; }
positive() { is_number "$1" && awk -v v="$1" 'BEGIN { exit !(v > 0) }'; }

need_value() { [[ $# -ge 2 ]] || die 2 "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) DRY_RUN=1 ;;
    --cleanup) CLEANUP=1 ;;
    --keep) KEEP=1 ;;
    --insecure) INSECURE=1 ;;
    -v | --verbose) VERBOSE=1 ;;
    --adcnn-run)
      need_value "$@"
      ADCNN_RUN_OPT=$2
      shift
      ;;
    --adcnn-run=*) ADCNN_RUN_OPT=${1#*=} ;;
    --gflops-per-core)
      need_value "$@"
      GFLOPS_PER_CORE=$2
      shift
      ;;
    --gflops-per-core=*) GFLOPS_PER_CORE=${1#*=} ;;
    --cpu-period-us)
      need_value "$@"
      CFS_PERIOD_US=$2
      shift
      ;;
    --cpu-period-us=*) CFS_PERIOD_US=${1#*=} ;;
    --wait)
      need_value "$@"
      WAIT_S=$2
      shift
      ;;
    --wait=*) WAIT_S=${1#*=} ;;
    --)
      HAVE_DASHDASH=1
      shift
      COORD_ARGS=("$@")
      break
      ;;
    -*) die 2 "unknown option $1 (see --help)" ;;
    *)
      [[ -z $CLUSTER_ARG ]] || die 2 "one cluster file only ($CLUSTER_ARG, then $1); the coordinator's arguments go after --"
      CLUSTER_ARG=$1
      ;;
  esac
  shift
done

positive "$GFLOPS_PER_CORE" || die 2 "--gflops-per-core must be a positive number, not '$GFLOPS_PER_CORE'"
[[ $WAIT_S =~ ^[0-9]+$ && $WAIT_S -gt 0 ]] || die 2 "--wait must be a whole number of seconds > 0, not '$WAIT_S'"
[[ $CFS_PERIOD_US =~ ^[0-9]+$ ]] && ((CFS_PERIOD_US >= 1000 && CFS_PERIOD_US <= 1000000)) ||
  die 2 "--cpu-period-us must be a whole number from 1000 to 1000000, not '$CFS_PERIOD_US'"
if [[ $CLEANUP -eq 0 ]]; then
  [[ -n $CLUSTER_ARG ]] || die 2 "no cluster file (usage: $PROG [options] CLUSTER.yaml -- ADCNN-RUN-ARGS...; see --help)"
  [[ $HAVE_DASHDASH -eq 1 && ${#COORD_ARGS[@]} -gt 0 ]] ||
    die 2 "no coordinator command: put adcnn-run's arguments after --, e.g. $PROG $CLUSTER_ARG -- bench plan.bin"
  for a in "${COORD_ARGS[@]}"; do
    case $a in
      --cluster | --cluster=* | --token-file | --token-file=* | --tls-dir | --tls-dir=* | --insecure)
        die 2 "do not pass $a after --: the testbed adds --cluster, --token-file and --tls-dir/--insecure itself"
        ;;
    esac
  done
elif [[ $HAVE_DASHDASH -eq 1 ]]; then
  die 2 "--cleanup takes no coordinator command"
fi

# ---------------------------------------------------------------------------------------------
# The cluster file: a small awk reader for the one-node-per-line form of dsl-examples/*.yaml
# (block-style nodes work too). It prints tab-separated records:
#   cluster NAME|- LINE  /  coordinator NAME|- LINE  /  nodes LINE
#   node LINE NAME ADDRESS|- GFLOPS|- MBPS|- LATENCY WORKER  /  error LINE MESSAGE
# (no field is empty: `read` would merge two tabs).

parse_cluster() {
  awk '
    function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
    function uncomment(s,   i, c, q) {
      q = ""
      for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q != "") { if (c == q) q = ""; continue }
        if (c == "\"" || c == "\047") { q = c; continue }
        if (c == "#" && (i == 1 || substr(s, i - 1, 1) ~ /[ \t]/)) return substr(s, 1, i - 1)
      }
      return s
    }
    function unquote(v) {
      if (length(v) >= 2 && (v ~ /^".*"$/ || v ~ /^\047.*\047$/)) return substr(v, 2, length(v) - 2)
      return v
    }
    function err(line, msg) { printf "error\t%d\t%s\n", line, msg; errors++ }
    function isnum(v) { return v ~ /^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/ }
    # One `key: value` of the current node.
    function node_kv(kv, line,   i, k, v) {
      i = index(kv, ":")
      if (i == 0) { err(line, "expected `key: value` in a node, found `" trim(kv) "`"); return }
      k = trim(substr(kv, 1, i - 1)); v = unquote(trim(substr(kv, i + 1)))
      if (k !~ /^(name|address|gflops|mbps|latency_ms|worker|threads)$/) {
        err(line, "unknown node key `" k "` (expected name, address, gflops, mbps, latency_ms, worker, threads)"); return
      }
      if (k in field) { err(line, "`" k "` given twice in one node"); return }
      if (v == "") { err(line, "`" k "` has no value"); return }
      field[k] = v
    }
    # A flow mapping `{ k: v, k: v }` on one line.
    function node_flow(s, line,   inner, i, c, q, part) {
      inner = substr(s, 2, length(s) - 2); q = ""; part = ""
      for (i = 1; i <= length(inner); i++) {
        c = substr(inner, i, 1)
        if (q != "") { if (c == q) q = ""; part = part c; continue }
        if (c == "\"" || c == "\047") { q = c; part = part c; continue }
        if (c == ",") { if (trim(part) != "") node_kv(part, line); part = ""; continue }
        part = part c
      }
      if (q != "") err(line, "unclosed quote")
      if (trim(part) != "") node_kv(part, line)
    }
    function finish_node(   name, addr, gf, mb, lat, wk, th) {
      if (!in_node) return
      in_node = 0
      if (broken) { delete field; return }
      name = ("name" in field) ? field["name"] : ""
      if (name == "") { err(node_line, "a node without `name`"); delete field; return }
      if (name !~ /^[A-Za-z_][A-Za-z0-9_.]*$/)
        err(node_line, "`" name "` is not a valid node name (letters, digits, `_` and `.`, not starting with a digit or `.`)")
      addr = ("address" in field) ? field["address"] : "-"
      if (addr == "-") err(node_line, "node `" name "` has no `address` (the testbed puts every node at its address)")
      gf = ("gflops" in field) ? field["gflops"] : "-"
      if (gf == "-") err(node_line, "node `" name "` has no `gflops`")
      else if (!isnum(gf) || gf + 0 <= 0) err(node_line, "node `" name "`: `gflops` must be a positive number, not `" gf "`")
      mb = ("mbps" in field) ? field["mbps"] : "-"
      if (mb != "-" && (!isnum(mb) || mb + 0 <= 0)) err(node_line, "node `" name "`: `mbps` must be a positive number, not `" mb "`")
      lat = ("latency_ms" in field) ? field["latency_ms"] : "0"
      if (!isnum(lat)) err(node_line, "node `" name "`: `latency_ms` must be a number >= 0, not `" lat "`")
      wk = ("worker" in field) ? field["worker"] : "true"
      if (wk != "true" && wk != "false") err(node_line, "node `" name "`: `worker` must be true or false, not `" wk "`")
      th = ("threads" in field) ? field["threads"] : "-"
      if (th != "-" && (th !~ /^[0-9]+$/ || th + 0 < 1 || th + 0 > 1024)) err(node_line, "node `" name "`: `threads` must be an integer from 1 to 1024, not `" th "`")
      printf "node\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", node_line, name, addr, gf, mb, lat, wk, th
      delete field
    }
    {
      line = $0; sub(/\r$/, "", line)
      line = uncomment(line)
      if (line ~ /^[ \t]*$/) next
      if (line ~ /^ *\t/) { err(NR, "a tab in the indentation (YAML indents with spaces)"); next }
      match(line, /^ */); ind = RLENGTH; body = trim(substr(line, ind + 1))
      if (ind == 0) {
        finish_node(); in_cluster = 0; in_nodes = 0
        if (body == "---" || body == "...") next
        if (body ~ /^cluster[ \t]*:/) {
          rest = trim(substr(body, index(body, ":") + 1))
          if (rest == "") {
            in_cluster = 1; clusters++; ck = -1
            if (clusters == 1) cluster_line = NR
            else err(NR, "a second `cluster:` section")
          } else { err(NR, "`cluster: " rest "` names another file: pass that cluster file instead"); refs++ }
        }
        next
      }
      if (!in_cluster) next
      if (ck < 0) ck = ind
      if (in_nodes && body ~ /^-([ \t]|$)/ && ind >= ck) {
        finish_node()
        in_node = 1; node_line = NR; node_ind = ind; flow = 0; broken = 0; nodes++
        rest = trim(substr(body, 2))
        if (rest ~ /^\{/) {
          flow = 1
          if (rest !~ /\}$/) { err(NR, "a node `{ ... }` must close on the same line (one node per line)"); broken = 1 }
          else node_flow(rest, NR)
        } else if (rest != "") node_kv(rest, NR)
        next
      }
      if (in_node && !flow && ind > node_ind) { node_kv(body, NR); next }
      if (in_node && broken && ind > node_ind) next
      if (ind == ck) {
        finish_node(); in_nodes = 0
        i = index(body, ":")
        if (i == 0) { err(NR, "expected `key: value` in `cluster:`, found `" body "`"); next }
        k = trim(substr(body, 1, i - 1)); v = unquote(trim(substr(body, i + 1)))
        if (k == "name") { cname = v; cname_line = NR }
        else if (k == "coordinator") { coord = v; coord_line = NR }
        else if (k == "nodes") {
          nodes_line = NR
          if (v == "") in_nodes = 1
          else if (v ~ /^\[/) { err(NR, "write the nodes one per line, as `- { name: ..., address: ..., gflops: ... }`"); nodes_bad = 1 }
          else { err(NR, "`nodes` must be a list of nodes"); nodes_bad = 1 }
        } else err(NR, "unknown key `" k "` in `cluster:` (expected name, coordinator, nodes)")
        next
      }
      finish_node()
      err(NR, "unexpected line (check its indentation): `" body "`")
    }
    END {
      finish_node()
      if (clusters == 0 && refs == 0) err(0, "no top-level `cluster:` section")
      if (clusters > 0 && coord == "") err(cluster_line, "`cluster:` names no `coordinator`")
      if (clusters > 0 && nodes == 0 && !nodes_bad) {
        if (nodes_line) err(nodes_line, "`nodes:` is empty")
        else err(cluster_line, "`cluster:` has no `nodes:`")
      }
      printf "cluster\t%s\t%d\n", (cname == "" ? "-" : cname), cname_line
      printf "coordinator\t%s\t%d\n", (coord == "" ? "-" : coord), coord_line
      printf "nodes\t%d\n", nodes_line
    }
  ' "$1"
}

# Node tables, in file order (index 0..N-1).
N_NAME=() N_IP=() N_PORT=() N_ADDR=() N_GFLOPS=() N_MBPS=() N_LAT=() N_WORKER=()
N_QUOTA=() N_THREADS=() N_ENV=() N_CORES=()
CLUSTER="" COORD="" COORD_I=-1 PREFIX=24

ip_int() {
  local IFS=.
  # shellcheck disable=SC2086
  set -- $1
  echo $((($1 << 24) | ($2 << 16) | ($3 << 8) | $4))
}

load_cluster() {
  local file=$1 display=$2 errors=() kind a b c d e f g h
  local cname="-" coord="-" out cname_line=0 coord_line=0 nodes_line=0
  [[ -f $file && -r $file ]] || die 2 "$display: no such file, or not readable"
  out=$(parse_cluster "$file") || die 2 "$display: could not read it (awk failed)"
  while IFS=$'\t' read -r kind a b c d e f g h; do
    case $kind in
      error) errors+=("$a"$'\t'"$b") ;;
      cluster) cname=$a cname_line=$b ;;
      coordinator) coord=$a coord_line=$b ;;
      nodes) nodes_line=$a ;;
      node)
        N_NAME+=("$b") N_ADDR+=("$c") N_GFLOPS+=("$d") N_MBPS+=("$e") N_LAT+=("$f")
        N_WORKER+=("$([[ $g == true ]] && echo 1 || echo 0)") N_CORES+=("$h")
        NODE_LINE+=("$a")
        ;;
    esac
  done <<<"$out"
  # Meaning: names, the coordinator, links, addresses (also after syntax errors, to report
  # everything at once).
  {
    if [[ $cname == - ]]; then
      cname=$(basename "$file")
      cname=${cname%.*}
    fi
    if ! [[ $cname =~ ^[A-Za-z0-9_.]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$ ]]; then
      local named="the cluster name"
      [[ $cname_line -gt 0 ]] || named="the cluster name (the file's, as it names none)"
      errors+=("$cname_line"$'\t'"$named \`$cname\` cannot name network namespaces: use letters, digits, \`_\`, \`.\` and \`-\` inside")
    fi
    local i n=${#N_NAME[@]} ip port o1 o2 o3 o4 anyworker=0 env_i
    declare -A seen_name=() seen_ip=() seen_env=()
    for ((i = 0; i < n; i++)); do
      if [[ -n ${seen_name[${N_NAME[i]}]:-} ]]; then
        errors+=("${NODE_LINE[i]}"$'\t'"two nodes are named \`${N_NAME[i]}\` (first on line ${seen_name[${N_NAME[i]}]})")
      fi
      seen_name[${N_NAME[i]}]=${NODE_LINE[i]}
      [[ ${N_WORKER[i]} -eq 1 ]] && anyworker=1
      if [[ ${N_ADDR[i]} == - ]]; then
        : # reported by the reader
      elif [[ ${N_ADDR[i]} =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3}):([0-9]{1,5})$ ]]; then
        o1=${BASH_REMATCH[1]} o2=${BASH_REMATCH[2]} o3=${BASH_REMATCH[3]} o4=${BASH_REMATCH[4]}
        port=${BASH_REMATCH[5]}
        if ((10#$o1 > 255 || 10#$o2 > 255 || 10#$o3 > 255 || 10#$o4 > 255)); then
          errors+=("${NODE_LINE[i]}"$'\t'"\`${N_ADDR[i]}\` is not an IPv4 address")
        elif ((10#$port < 1 || 10#$port > 65535)); then
          errors+=("${NODE_LINE[i]}"$'\t'"the port of \`${N_ADDR[i]}\` must be 1-65535")
        elif ((10#$o1 == 0 || 10#$o1 == 127 || 10#$o1 >= 224)); then
          errors+=("${NODE_LINE[i]}"$'\t'"\`${N_ADDR[i]}\` is not a unicast address a node can have (0/8, 127/8 and 224/3 are not)")
        else
          ip="$((10#$o1)).$((10#$o2)).$((10#$o3)).$((10#$o4))"
          if [[ -n ${seen_ip[$ip]:-} ]]; then
            errors+=("${NODE_LINE[i]}"$'\t'"\`$ip\` is also the address of \`${seen_ip[$ip]}\`: every node needs its own IP in the testbed")
          fi
          seen_ip[$ip]=${N_NAME[i]}
          N_IP[i]=$ip N_PORT[i]=$((10#$port))
        fi
      else
        errors+=("${NODE_LINE[i]}"$'\t'"the testbed needs an IPv4 address and port, \`A.B.C.D:PORT\`, not \`${N_ADDR[i]}\`")
      fi
      env_i=$(printf '%s' "${N_NAME[i]}" | tr 'a-z.' 'A-Z_')
      if [[ -n ${seen_env[$env_i]:-} && ${seen_env[$env_i]} != "${N_NAME[i]}" ]]; then
        errors+=("${NODE_LINE[i]}"$'\t'"\`${N_NAME[i]}\` and \`${seen_env[$env_i]}\` both map to ADCNN_EMULATED_LATENCY_MS_$env_i")
      fi
      seen_env[$env_i]=${N_NAME[i]}
      N_ENV[i]=$env_i
    done
    if [[ $coord != - ]]; then
      for ((i = 0; i < n; i++)); do [[ ${N_NAME[i]} == "$coord" ]] && COORD_I=$i; done
      if [[ $COORD_I -lt 0 && $n -gt 0 ]]; then
        errors+=("$coord_line"$'\t'"the coordinator \`$coord\` is not one of the nodes (${N_NAME[*]})")
      fi
    fi
    [[ $n -gt 0 && $anyworker -eq 0 ]] && errors+=("$nodes_line"$'\t'"the cluster has no worker (every node has \`worker: false\`)")
    for ((i = 0; i < n; i++)); do
      if [[ $i -ne $COORD_I && ${N_MBPS[i]} == - ]]; then
        errors+=("${NODE_LINE[i]}"$'\t'"node \`${N_NAME[i]}\` has no \`mbps\` (every node but the coordinator declares its link)")
      fi
    done
    # The subnet: the longest prefix, at most /24, that holds every address.
    if [[ ${#errors[@]} -eq 0 && $n -gt 0 ]]; then
      local first diff=0 x
      first=$(ip_int "${N_IP[0]}")
      for ((i = 1; i < n; i++)); do
        x=$(ip_int "${N_IP[i]}")
        diff=$((diff | (first ^ x)))
      done
      PREFIX=32
      while ((diff > 0)); do
        diff=$((diff >> 1))
        PREFIX=$((PREFIX - 1))
      done
      ((PREFIX > 24)) && PREFIX=24
      local host_mask=$(((1 << (32 - PREFIX)) - 1))
      for ((i = 0; i < n; i++)); do
        x=$(($(ip_int "${N_IP[i]}") & host_mask))
        if ((x == 0 || x == host_mask)); then
          errors+=("${NODE_LINE[i]}"$'\t'"\`${N_IP[i]}\` is the network or broadcast address of the testbed's /$PREFIX")
        fi
      done
    fi
  }
  if [[ ${#errors[@]} -gt 0 ]]; then
    # In line order, as FILE:LINE: message (FILE: message for the file as a whole).
    printf '%s\n' "${errors[@]}" | sort -t $'\t' -k1,1n -s |
      while IFS=$'\t' read -r line msg; do
        if [[ $line -gt 0 ]]; then printf '%s:%s: %s\n' "$display" "$line" "$msg"; else printf '%s: %s\n' "$display" "$msg"; fi
      done >&2
    die 2 "$display is not a cluster file the testbed can run (${#errors[@]} error(s) above)"
  fi
  CLUSTER=$cname
  COORD=$coord
  # CPU quota per node: gflops / GFLOPS_PER_CORE of a core per thread (`threads`, else 1).
  for ((i = 0; i < n; i++)); do
    local t=${N_CORES[i]:--}
    N_QUOTA[i]=$(awk -v g="${N_GFLOPS[i]}" -v t="${t/-/1}" -v s="$GFLOPS_PER_CORE" -v p=$CFS_PERIOD_US \
      -v m=$MIN_QUOTA_US 'BEGIN { q = int(g * t / s * p + 0.5); if (q < m) q = m; print q }')
    if [[ $t == - ]]; then
      N_THREADS[i]=$(((N_QUOTA[i] + CFS_PERIOD_US - 1) / CFS_PERIOD_US))
    else
      N_THREADS[i]=$t
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# Running or printing commands

SAFE_WORD='^[A-Za-z0-9_./:=@%+,<>-]+$'
q() {
  if [[ $1 =~ $SAFE_WORD ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
show() {
  local w out=""
  for w; do out+="${out:+ }$(q "$w")"; done
  printf '%s' "$out"
}
# A comment in the dry-run listing.
comment() { [[ $DRY_RUN -eq 0 ]] || printf '# %s\n' "$*"; }
# A note for the user: stderr when running, a comment in the dry-run listing.
note() {
  if [[ $DRY_RUN -eq 1 ]]; then printf '# note: %s\n' "$*"; else say "note: $*"; fi
}
verbose() { [[ $VERBOSE -eq 0 ]] || printf '+ %s\n' "$*" >&2; }

# run CMD...: runs it (or prints it); a failure ends the script, which tears down.
run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    show "$@"
    echo
    return
  fi
  verbose "$(show "$@")"
  local rc=0
  "$@" || rc=$?
  [[ $rc -eq 0 ]] || die 1 "failed (exit $rc): $(show "$@")"
}
# write VALUE FILE: echo VALUE > FILE.
write() {
  if [[ $DRY_RUN -eq 1 ]]; then
    printf 'echo %s > %s\n' "$(q "$1")" "$(q "$2")"
    return
  fi
  verbose "echo $1 > $2"
  printf '%s\n' "$1" >"$2" || die 1 "could not write $1 to $2"
}
# The argv that runs CMD... inside cgroup DIR: the shell joins it, then becomes CMD.
in_cgroup() {
  local dir=$1
  shift
  CG_CMD=(sh -c "echo \$\$ > $dir/cgroup.procs && exec \"\$@\"" sh "$@")
}

# ---------------------------------------------------------------------------------------------
# Names

ns_of() { echo "adcnn-$CLUSTER-$1"; }   # a node's namespace
ap_ns() { echo "adcnn-$CLUSTER--ap"; } # the bridge's namespace (node names have no `-`)
cg_of() { echo "$CGROUP_BASE/$CLUSTER/$1"; }
state_file() { echo "$STATE_DIR/$1.state"; }
BRIDGE=adbr0

# ---------------------------------------------------------------------------------------------
# Teardown, shared by the end of a run and --cleanup

# `ip netns` keeps its namespaces in /run/netns.
netns_exists() { [[ -e /run/netns/$1 ]]; }

# A live testbed script recorded in a state file?
live_run_pid() {
  local file=$1 pid
  pid=$(awk '$1 == "pid" { print $2 }' "$file" 2>/dev/null) || return 1
  [[ -n $pid && $pid != "$$" && -r /proc/$pid/cmdline ]] || return 1
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *run.sh* ]] || return 1
  echo "$pid"
}

# Alive and not a zombie.
alive() { kill -0 "$1" 2>/dev/null && [[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# Stops every process in the namespaces and cgroup trees, then removes them, the run
# directory (if given) and the state file. Prints what it does with --verbose. Call it as
# `teardown ... || true`: it must run to the end, so not under `set -e`.
teardown() {
  local cluster=$1 rundir=$2 state=$3
  shift 3
  local namespaces=("$@") pids=() p ns dir
  if [[ $DRY_RUN -eq 1 ]]; then
    comment "teardown, also after a failure, Ctrl-C or SIGTERM:"
    echo "kill -TERM <every process in the testbed's namespaces and cgroups>"
    echo "kill -KILL <those still running after 5 s>"
    for ns in "${namespaces[@]}"; do echo "ip netns del $ns"; done
    for ((i = 0; i < ${#N_NAME[@]}; i++)); do echo "rmdir $(cg_of "${N_NAME[i]}")"; done
    echo "rmdir $CGROUP_BASE/$cluster"
    echo "rmdir $CGROUP_BASE  # if no other cluster runs"
    if [[ -n $rundir ]]; then echo "rm -rf $rundir"; fi
    echo "rm -f $state"
    return 0
  fi
  # Processes: ours, those in the namespaces, those in the cgroups.
  pids=("${CHILD_PIDS[@]}")
  for ns in "${namespaces[@]}"; do
    netns_exists "$ns" && mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
  done
  if [[ -d $CGROUP_BASE/$cluster ]]; then
    while IFS= read -r dir; do
      mapfile -t -O "${#pids[@]}" pids <"$dir/cgroup.procs" 2>/dev/null || true
    done < <(find "$CGROUP_BASE/$cluster" -type d 2>/dev/null)
  fi
  local live=()
  for p in "${pids[@]}"; do
    [[ $p =~ ^[0-9]+$ && $p != "$$" ]] && kill -0 "$p" 2>/dev/null && live+=("$p")
  done
  if [[ ${#live[@]} -gt 0 ]]; then
    verbose "kill -TERM ${live[*]}"
    kill -TERM "${live[@]}" 2>/dev/null || true
    local t still
    for ((t = 0; t < 50; t++)); do
      still=0
      for p in "${live[@]}"; do alive "$p" && still=1; done
      [[ $still -eq 1 ]] || break
      sleep 0.1
    done
    for p in "${live[@]}"; do
      if alive "$p"; then
        say "process $p did not stop within 5 s of SIGTERM: SIGKILL"
        kill -KILL "$p" 2>/dev/null || true
      fi
    done
  fi
  for p in "${CHILD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  CHILD_PIDS=()
  # Namespaces: deleting one deletes its veth end (and so the pair) and qdiscs; the access
  # point's holds the bridge.
  for ns in "${namespaces[@]}"; do
    if netns_exists "$ns"; then
      verbose "ip netns del $ns"
      ip netns del "$ns" 2>/dev/null || say "could not delete network namespace $ns"
    fi
  done
  # Cgroups: children first; a cgroup is removable once its tasks have exited.
  if [[ -d $CGROUP_BASE/$cluster ]]; then
    local t
    for ((t = 0; t < 30; t++)); do
      while IFS= read -r dir; do
        rmdir "$dir" 2>/dev/null && verbose "rmdir $dir"
      done < <(find "$CGROUP_BASE/$cluster" -depth -type d 2>/dev/null)
      [[ -d $CGROUP_BASE/$cluster ]] || break
      sleep 0.1
    done
    [[ ! -d $CGROUP_BASE/$cluster ]] || say "could not remove cgroup $CGROUP_BASE/$cluster: $(cat "$CGROUP_BASE/$cluster"/*/cgroup.procs 2>/dev/null | tr '\n' ' ')"
  fi
  rmdir "$CGROUP_BASE" 2>/dev/null || true
  if [[ -n $rundir && -d $rundir ]]; then
    verbose "rm -rf $rundir"
    rm -rf -- "$rundir"
  fi
  rm -f -- "$state"
  rmdir "$STATE_DIR" 2>/dev/null || true
  return 0
}

# What a state file records: namespaces, and the run directory to remove.
state_namespaces() { awk '$1 == "netns" { print $2 }' "$1" 2>/dev/null; }
state_rundir() { awk '$1 == "rundir" { print $2 }' "$1" 2>/dev/null; }

# Removes what an earlier run of the loaded cluster left behind. Returns 1 if one is live.
cleanup_loaded_cluster() {
  local state pid i namespaces=() rundir="" found=0
  state=$(state_file "$CLUSTER")
  if [[ -f $state ]]; then
    if pid=$(live_run_pid "$state"); then
      say "a testbed run of cluster $CLUSTER is still active (pid $pid); stop it first: kill -INT $pid"
      return 1
    fi
    mapfile -t namespaces < <(state_namespaces "$state")
    rundir=$(state_rundir "$state")
    found=1
  fi
  namespaces+=("$(ap_ns)")
  for ((i = 0; i < ${#N_NAME[@]}; i++)); do namespaces+=("$(ns_of "${N_NAME[i]}")"); done
  local ns uniq=() present=0
  declare -A have=()
  for ns in "${namespaces[@]}"; do
    [[ -n ${have[$ns]:-} ]] && continue
    have[$ns]=1
    uniq+=("$ns")
    netns_exists "$ns" && present=1
  done
  if [[ $found -eq 1 || $present -eq 1 || -d $CGROUP_BASE/$CLUSTER ]]; then
    say "removing what an earlier run of cluster $CLUSTER left behind"
    teardown "$CLUSTER" "$rundir" "$state" "${uniq[@]}" || true
  fi
  return 0
}

# --cleanup without a cluster file: every recorded run, every cgroup tree under ours.
cleanup_everything() {
  local state cluster pid rundir namespaces=() busy=0 dir
  declare -A done_cluster=()
  for state in "$STATE_DIR"/*.state; do
    cluster=$(basename "$state" .state)
    if pid=$(live_run_pid "$state"); then
      say "cluster $cluster: a testbed run is still active (pid $pid); left alone (stop it with kill -INT $pid)"
      busy=1
      done_cluster[$cluster]=1
      continue
    fi
    mapfile -t namespaces < <(state_namespaces "$state")
    rundir=$(state_rundir "$state")
    say "cluster $cluster: removing ${#namespaces[@]} namespaces, its cgroups${rundir:+ and $rundir}"
    CLUSTER=$cluster teardown "$cluster" "$rundir" "$state" "${namespaces[@]}" || true
    done_cluster[$cluster]=1
  done
  # Cgroup trees without a state file: their node directories name the namespaces.
  for dir in "$CGROUP_BASE"/*/; do
    cluster=$(basename "$dir")
    [[ -n ${done_cluster[$cluster]:-} ]] && continue
    namespaces=("adcnn-$cluster--ap")
    for node in "$dir"*/; do namespaces+=("adcnn-$cluster-$(basename "$node")"); done
    say "cluster $cluster: removing its cgroups and namespaces (no state file)"
    CLUSTER=$cluster teardown "$cluster" "" "$(state_file "$cluster")" "${namespaces[@]}" || true
  done
  rmdir "$CGROUP_BASE" 2>/dev/null || true
  [[ $busy -eq 0 ]]
}

# ---------------------------------------------------------------------------------------------
# Prerequisites

check_prerequisites() {
  local missing=() need_binary=$1 c
  [[ $EUID -eq 0 ]] || missing+=("root: it creates network namespaces and cgroups (run it with sudo)")
  for c in ip tc timeout od awk find; do
    command -v "$c" >/dev/null 2>&1 || missing+=("the \`$c\` command (ip, tc: package iproute2; timeout, od: coreutils)")
  done
  if [[ $EUID -eq 0 ]] && command -v ip >/dev/null 2>&1 && ! ip netns list >/dev/null 2>&1; then
    missing+=("network namespaces: \`ip netns list\` fails")
  fi
  if [[ ! -d $CGROUP_CPU ]] || ! awk -v d="$CGROUP_CPU" '$2 == d && $3 == "cgroup" && $4 ~ /(^|,)cpu(,|$)/ { f = 1 } END { exit !f }' /proc/mounts; then
    missing+=("the cgroup v1 \`cpu\` controller mounted at $CGROUP_CPU (mount -t cgroup -o cpu cgroup $CGROUP_CPU; cgroup v2-only systems are not supported)")
  elif [[ ! -e $CGROUP_CPU/cpu.cfs_quota_us ]]; then
    missing+=("CFS bandwidth control: $CGROUP_CPU has no cpu.cfs_quota_us (kernel without CONFIG_CFS_BANDWIDTH)")
  fi
  if [[ $need_binary -eq 1 ]]; then
    if [[ ! -f $ADCNN_RUN_REAL ]]; then
      missing+=("the adcnn-run binary: no file $ADCNN_RUN_REAL (build it with \`cargo build --release -p adcnn-runtime --bin adcnn-run\`, or pass --adcnn-run PATH or ADCNN_RUN=PATH)")
    elif [[ ! -x $ADCNN_RUN_REAL ]]; then
      missing+=("the adcnn-run binary: $ADCNN_RUN_REAL is not executable")
    fi
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    say "missing prerequisites:"
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
  fi
}

# ---------------------------------------------------------------------------------------------
# --cleanup

CHILD_PIDS=()
NODE_LINE=()

if [[ $CLEANUP -eq 1 ]]; then
  if [[ -n $CLUSTER_ARG ]]; then
    load_cluster "$CLUSTER_ARG" "$CLUSTER_ARG"
    if [[ $DRY_RUN -eq 1 ]]; then
      namespaces=("$(ap_ns)")
      for ((i = 0; i < ${#N_NAME[@]}; i++)); do namespaces+=("$(ns_of "${N_NAME[i]}")"); done
      teardown "$CLUSTER" "<rundir recorded in $(state_file "$CLUSTER")>" "$(state_file "$CLUSTER")" "${namespaces[@]}"
      exit 0
    fi
    check_prerequisites 0
    cleanup_loaded_cluster || exit 1
  else
    if [[ $DRY_RUN -eq 1 ]]; then
      echo "# every run recorded in $STATE_DIR/*.state and every cgroup under $CGROUP_BASE:"
      echo "kill -TERM <their processes>; ip netns del <their namespaces>; rmdir <their cgroups>; rm -rf <their run directories>"
      exit 0
    fi
    check_prerequisites 0
    cleanup_everything || exit 1
  fi
  say "clean"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# A run

# Paths as given (what --dry-run prints) and as used.
if [[ -n $ADCNN_RUN_OPT ]]; then
  ADCNN_RUN_SHOW=$ADCNN_RUN_OPT
elif [[ -n ${ADCNN_RUN:-} ]]; then
  ADCNN_RUN_SHOW=$ADCNN_RUN
else
  ADCNN_RUN_SHOW=target/release/adcnn-run
fi
if [[ -z $ADCNN_RUN_OPT && -z ${ADCNN_RUN:-} ]]; then
  ADCNN_RUN_REAL=$REPO_ROOT/target/release/adcnn-run
elif [[ $ADCNN_RUN_SHOW == */* ]]; then
  ADCNN_RUN_REAL=$(realpath -m -- "$ADCNN_RUN_SHOW")
else
  ADCNN_RUN_REAL=$(command -v -- "$ADCNN_RUN_SHOW" || echo "$ADCNN_RUN_SHOW")
fi

load_cluster "$CLUSTER_ARG" "$CLUSTER_ARG"
N=${#N_NAME[@]}

if [[ $DRY_RUN -eq 1 ]]; then
  BIN=$ADCNN_RUN_SHOW CLUSTER_FILE=$CLUSTER_ARG
else
  check_prerequisites 1
  BIN=$ADCNN_RUN_REAL CLUSTER_FILE=$(realpath -- "$CLUSTER_ARG")
fi
STATE=$(state_file "$CLUSTER")
NAMESPACES=("$(ap_ns)")
for ((i = 0; i < N; i++)); do NAMESPACES+=("$(ns_of "${N_NAME[i]}")"); done

RUNDIR=""
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() {
  local rc=$?
  trap '' INT TERM
  if [[ $DRY_RUN -eq 0 ]]; then
    if [[ $KEEP -eq 1 && -n $RUNDIR ]]; then
      teardown "$CLUSTER" "" "$STATE" "${NAMESPACES[@]}" || true
      say "kept the run directory $RUNDIR"
    else
      teardown "$CLUSTER" "$RUNDIR" "$STATE" "${NAMESPACES[@]}" || true
    fi
  fi
  exit "$rc"
}

if [[ $DRY_RUN -eq 0 ]]; then
  cleanup_loaded_cluster || exit 1
  trap on_exit EXIT
  trap 'say "interrupted: tearing down"; exit 130' INT
  trap 'say "terminated: tearing down"; exit 143' TERM
fi

comment "adcnn testbed: cluster $CLUSTER from $CLUSTER_ARG, $N nodes, coordinator $COORD, subnet /$PREFIX"
comment "CPU: gflops / $GFLOPS_PER_CORE GFLOP/s per core of cpu.cfs_period_us $CFS_PERIOD_US"
lat_nodes=()
for ((i = 0; i < N; i++)); do
  awk -v l="${N_LAT[i]}" 'BEGIN { exit !(l > 0) }' && lat_nodes+=("${N_NAME[i]} ${N_LAT[i]} ms")
done
if [[ ${#lat_nodes[@]} -gt 0 ]]; then
  lat_list=$(printf '%s, ' "${lat_nodes[@]}")
  note "latency_ms is NOT emulated by the network (tc here has tbf but no netem): ${lat_list%, }; the processes get ADCNN_EMULATED_LATENCY_MS* for the runtime to delay messages"
fi
if [[ $COORD_I -ge 0 && ${N_MBPS[COORD_I]} != - ]]; then
  note "the coordinator's link ($COORD, mbps ${N_MBPS[COORD_I]}) is not shaped: the model's links are the workers' links to it"
fi
if [[ $DRY_RUN -eq 0 ]]; then
  total=0
  for ((i = 0; i < N; i++)); do total=$((total + N_QUOTA[i])); done
  cores=$(nproc 2>/dev/null || echo 1)
  if ((total > cores * CFS_PERIOD_US)); then
    note "the nodes' CPU quotas add up to $(awk -v t=$total -v p=$CFS_PERIOD_US 'BEGIN { printf "%.2f", t / p }') cores, more than this machine's $cores: busy nodes will get less than their quota"
  fi
fi

# The run directory: token, certificates, worker logs.
comment "run directory (token, certificates, worker logs):"
if [[ $DRY_RUN -eq 1 ]]; then
  echo "mktemp -d -t adcnn-testbed-$CLUSTER.XXXXXX  # = <rundir>"
  RUNDIR="<rundir>"
else
  RUNDIR=$(mktemp -d -t "adcnn-testbed-$CLUSTER.XXXXXX") || die 1 "mktemp -d failed"
  chmod 700 "$RUNDIR"
fi
TOKEN=$RUNDIR/token
CERTS=$RUNDIR/certs

# The state file, written before anything is created, lets --cleanup find it all: `rundir`
# is the run directory to remove (not with --keep), `dir` the run directory whatever happens
# to it (for scripts that restart a worker: <dir>/<node>.start).
state_lines=("pid <pid>" "dir $RUNDIR")
[[ $KEEP -eq 1 ]] || state_lines+=("rundir $RUNDIR")
for ns in "${NAMESPACES[@]}"; do state_lines+=("netns $ns"); done
if [[ $DRY_RUN -eq 1 ]]; then
  comment "record the run for --cleanup:"
  run mkdir -p "$STATE_DIR"
  printf 'printf %s %s > %s\n' "$(q '%s\n')" "$(show "${state_lines[@]}")" "$STATE"
else
  state_lines[0]="pid $$"
  { mkdir -p "$STATE_DIR" && printf '%s\n' "${state_lines[@]}" >"$STATE"; } || die 1 "cannot write $STATE"
fi

comment "the token (32 random bytes, hex, mode 600):"
if [[ $DRY_RUN -eq 1 ]]; then
  printf '%s\n' "(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > $TOKEN)"
else
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN") || die 1 "cannot write $TOKEN"
  chmod 600 "$TOKEN"
fi
if [[ $INSECURE -eq 0 ]]; then
  comment "certificates:"
  run "$BIN" certs --cluster "$CLUSTER_FILE" -o "$CERTS"
  SECURITY=(--tls-dir "$CERTS")
else
  note "--insecure: no certificates, no TLS"
  SECURITY=(--insecure)
fi

comment "CPU: a cgroup per node; the testbed competes with other work on this machine like $N processes, not one"
run mkdir -p "$CGROUP_BASE/$CLUSTER"
write $((1024 * N)) "$CGROUP_BASE/cpu.shares"
write $((1024 * N)) "$CGROUP_BASE/$CLUSTER/cpu.shares"
for ((i = 0; i < N; i++)); do
  cg=$(cg_of "${N_NAME[i]}")
  per_thread=""
  [[ ${N_CORES[i]:--} == - ]] || per_thread=" x ${N_CORES[i]} threads"
  comment "${N_NAME[i]}: ${N_GFLOPS[i]} GFLOP/s$per_thread = $(awk -v q="${N_QUOTA[i]}" -v p=$CFS_PERIOD_US 'BEGIN { printf "%.3f", q / p }') core"
  run mkdir -p "$cg"
  write $CFS_PERIOD_US "$cg/cpu.cfs_period_us"
  write "${N_QUOTA[i]}" "$cg/cpu.cfs_quota_us"
done

comment "network: the access point (a bridge in a namespace of its own, no IP)"
AP=$(ap_ns)
run ip netns add "$AP"
run ip -n "$AP" link set lo up
run ip -n "$AP" link add "$BRIDGE" type bridge
run ip -n "$AP" link set "$BRIDGE" up
for ((i = 0; i < N; i++)); do
  ns=$(ns_of "${N_NAME[i]}")
  vn=adv$((i + 1)) vb=adb$((i + 1))
  comment "${N_NAME[i]}: ${N_IP[i]}/$PREFIX on $vn, bridge port $vb"
  run ip netns add "$ns"
  run ip -n "$ns" link set lo up
  run ip -n "$AP" link add "$vb" type veth peer name "$vn" netns "$ns"
  run ip -n "$AP" link set "$vb" master "$BRIDGE"
  run ip -n "$AP" link set "$vb" up
  run ip -n "$ns" addr add "${N_IP[i]}/$PREFIX" dev "$vn"
  run ip -n "$ns" link set "$vn" up
  if [[ $i -eq $COORD_I ]]; then
    comment "${N_NAME[i]} coordinates: its link is not shaped"
  elif [[ ${N_MBPS[i]} != - ]]; then
    # tbf at the node's rate; bucket = 1 ms of traffic (at least 4 KiB), queue = 50 ms.
    read -r rate burst < <(awk -v m="${N_MBPS[i]}" 'BEGIN {
      kbit = int(m * 1000 + 0.5); if (kbit < 1) kbit = 1
      rate = (kbit % 1000 == 0) ? (kbit / 1000) "mbit" : kbit "kbit"
      b = int(kbit * 1000 / 8 / 1000); if (b < 4096) b = 4096
      print rate, b }')
    comment "${N_NAME[i]}: ${N_MBPS[i]} Mbit/s both ways (send: $vn, receive: $vb)"
    run tc -n "$ns" qdisc add dev "$vn" root tbf rate "$rate" burst "$burst" latency 50ms
    run tc -n "$AP" qdisc add dev "$vb" root tbf rate "$rate" burst "$burst" latency 50ms
  fi
done

# Environment for the processes of a node: who they are, and the latencies to emulate.
node_env() {
  local i=$1 j
  NODE_ENV=(env "ADCNN_TESTBED_NODE=${N_NAME[i]}")
  if [[ $2 == worker ]]; then
    NODE_ENV+=("ADCNN_EMULATED_LATENCY_MS=${N_LAT[i]}")
  else
    for ((j = 0; j < N; j++)); do NODE_ENV+=("ADCNN_EMULATED_LATENCY_MS_${N_ENV[j]}=${N_LAT[j]}"); done
  fi
}

# The script <rundir>/<node>.start that starts worker i again, from outside, exactly as below:
# same namespace, cgroup, environment, arguments; appending to its log. It refuses while the
# pid in <rundir>/<node>.pid still runs, records the new pid there and prints it.
start_script() {
  local i=$1 v
  local name=${N_NAME[i]}
  local log=$RUNDIR/$name.log pidfile=$RUNDIR/$name.pid
  echo '#!/bin/sh'
  echo "# Starts worker $name of the $CLUSTER testbed again, as tests/testbed/run.sh started it"
  echo "# (namespace $(ns_of "$name"), its cgroup, environment and arguments), in the background,"
  echo "# appending to its log; prints its pid. Made by run.sh; it works while that run lasts."
  echo 'set -eu'
  for v in ADCNN_LOG RUST_BACKTRACE; do
    [[ -z ${!v:-} ]] || echo "export $v=$(q "${!v}")"
  done
  echo "pid=\$(cat $(q "$pidfile") 2>/dev/null || true)"
  # shellcheck disable=SC2016 # the script's own expansions
  echo 'if [ -n "$pid" ] && [ -e "/proc/$pid" ] && [ "$(cut -d" " -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; then'
  echo "  echo \"$name.start: worker $name still runs (pid \$pid)\" >&2"
  echo '  exit 1'
  echo 'fi'
  echo "echo \"# $name.start: restarted at \$(date -u +%FT%T.%NZ)\" >> $(q "$log")"
  printf '%s >> %s 2>&1 < /dev/null &\n' "$(show "${CG_CMD[@]}")" "$(q "$log")"
  echo "echo \$! > $(q "$pidfile")"
  echo 'echo $!'
}

comment "workers (each with <rundir>/<node>.start, which starts it again from outside; pid in <rundir>/<node>.pid):"
WORKER_PIDS=()
for ((i = 0; i < N; i++)); do
  [[ ${N_WORKER[i]} -eq 1 ]] || continue
  ns=$(ns_of "${N_NAME[i]}")
  log=$RUNDIR/${N_NAME[i]}.log
  node_env "$i" worker
  # With TLS a worker serves its own node's certificate, NAME.pem in the certificates folder.
  WORKER_SECURITY=("${SECURITY[@]}")
  [[ ${SECURITY[0]} == --tls-dir ]] && WORKER_SECURITY+=(--name "${N_NAME[i]}")
  in_cgroup "$(cg_of "${N_NAME[i]}")" ip netns exec "$ns" "${NODE_ENV[@]}" \
    "$BIN" worker --listen "${N_IP[i]}:${N_PORT[i]}" --token-file "$TOKEN" "${WORKER_SECURITY[@]}" --threads "${N_THREADS[i]}"
  start=$RUNDIR/${N_NAME[i]}.start
  if [[ $DRY_RUN -eq 1 ]]; then
    echo "cat > $start <<'EOF'"
    start_script "$i"
    echo "EOF"
    echo "chmod 700 $start"
    printf '%s > %s 2>&1 < /dev/null &\n' "$(show "${CG_CMD[@]}")" "$log"
    echo "echo \$! > $RUNDIR/${N_NAME[i]}.pid"
  else
    verbose "write $start"
    { start_script "$i" >"$start" && chmod 700 "$start"; } || die 1 "cannot write $start"
    verbose "$(show "${CG_CMD[@]}") > $log 2>&1 &"
    "${CG_CMD[@]}" >"$log" 2>&1 </dev/null &
    WORKER_PIDS[i]=$!
    CHILD_PIDS+=($!)
    echo "$!" >"$RUNDIR/${N_NAME[i]}.pid" || die 1 "cannot write $RUNDIR/${N_NAME[i]}.pid"
    cores=$(awk -v q="${N_QUOTA[i]}" -v p=$CFS_PERIOD_US 'BEGIN { printf "%.2f", q / p }')
    link=$([[ ${N_MBPS[i]} != - && $i -ne $COORD_I ]] && echo "${N_MBPS[i]} Mbit/s" || echo "unshaped link")
    say "worker ${N_NAME[i]} (${N_IP[i]}:${N_PORT[i]}, $cores core, $link, pid $!): log $log, restart: $start"
  fi
done

# Wait until every worker accepts connections from the coordinator's namespace.
CNS=$(ns_of "$COORD")
comment "wait (at most $WAIT_S s in all) until every worker accepts TCP connections, from $CNS:"
deadline=$((SECONDS + WAIT_S))
for ((i = 0; i < N; i++)); do
  [[ ${N_WORKER[i]} -eq 1 ]] || continue
  probe=(ip netns exec "$CNS" timeout 1 bash -c "exec 3<>/dev/tcp/${N_IP[i]}/${N_PORT[i]}")
  if [[ $DRY_RUN -eq 1 ]]; then
    show "${probe[@]}"
    echo
    continue
  fi
  log=$RUNDIR/${N_NAME[i]}.log
  while ! "${probe[@]}" 2>/dev/null; do
    if ! kill -0 "${WORKER_PIDS[i]}" 2>/dev/null; then
      rc=0
      wait "${WORKER_PIDS[i]}" || rc=$?
      say "worker ${N_NAME[i]} exited (status $rc) before it listened on ${N_IP[i]}:${N_PORT[i]}; its log, $log:"
      tail -n 40 "$log" | sed 's/^/  | /' >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      say "worker ${N_NAME[i]} does not accept connections on ${N_IP[i]}:${N_PORT[i]} after $WAIT_S s; its log, $log:"
      tail -n 40 "$log" | sed 's/^/  | /' >&2
      exit 1
    fi
    sleep 0.1
  done
  verbose "worker ${N_NAME[i]} listens on ${N_IP[i]}:${N_PORT[i]}"
done

comment "the coordinator (stdin, stdout, stderr passed through; its exit status is the script's):"
node_env "$COORD_I" coordinator
in_cgroup "$(cg_of "$COORD")" ip netns exec "$CNS" "${NODE_ENV[@]}" \
  "$BIN" "${COORD_ARGS[@]}" --cluster "$CLUSTER_FILE" --token-file "$TOKEN" "${SECURITY[@]}"
if [[ $DRY_RUN -eq 1 ]]; then
  show "${CG_CMD[@]}"
  echo
  teardown "$CLUSTER" "$([[ $KEEP -eq 1 ]] || echo "$RUNDIR")" "$STATE" "${NAMESPACES[@]}"
  exit 0
fi
say "coordinator on $COORD: $(show "$ADCNN_RUN_SHOW" "${COORD_ARGS[@]}") (+ --cluster, --token-file, ${SECURITY[0]})"
verbose "$(show "${CG_CMD[@]}")"
# In the background so that a signal to this script is handled at once (the trap stops the
# coordinator); `0<&0` keeps stdin, which a background command would otherwise lose.
"${CG_CMD[@]}" 0<&0 &
COORD_PID=$!
CHILD_PIDS+=("$COORD_PID")
rc=0
wait "$COORD_PID" || rc=$?
others=()
for p in "${CHILD_PIDS[@]}"; do [[ $p == "$COORD_PID" ]] || others+=("$p"); done
CHILD_PIDS=("${others[@]}")
if [[ $rc -ne 0 ]]; then
  say "the coordinator exited with status $rc"
  for ((i = 0; i < N; i++)); do
    [[ ${N_WORKER[i]} -eq 1 && -s $RUNDIR/${N_NAME[i]}.log ]] || continue
    say "last lines of worker ${N_NAME[i]}'s log ($RUNDIR/${N_NAME[i]}.log):"
    tail -n 10 "$RUNDIR/${N_NAME[i]}.log" | sed 's/^/  | /' >&2
  done
fi
exit "$rc"
