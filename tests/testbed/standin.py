#!/usr/bin/env python3
"""A stand-in for adcnn-run on the testbed: checks the emulated links and CPU quotas.

    tests/testbed/run.sh --insecure --adcnn-run tests/testbed/standin.py CLUSTER.yaml -- measure

Subcommands, as tests/testbed/run.sh calls them:

  certs --cluster FILE -o DIR        writes a placeholder file to DIR
  worker --listen IP:PORT --token-file FILE [--tls-dir DIR | --insecure] --threads N
                                     serves the measurements below on IP:PORT
  <anything else> ... --cluster FILE --token-file FILE [...]
                                     the coordinator: measures every worker

The coordinator times, for each worker in turn, STANDIN_MB (default 5) MB sent to it
(coordinator -> worker: the bridge port's tbf) and received from it (worker -> coordinator:
the worker veth's tbf), then all workers' downloads at once, then asks every worker to spin
for STANDIN_BURN_S (default 3) s at once and reports the CPU time each got. With
STANDIN_HOLD_S=N it first waits N s (to inspect the testbed from outside). Python standard
library only; no TLS (the token is checked).
"""

import os
import re
import socket
import sys
import threading
import time

CHUNK = 1 << 16


def arg(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    return default


def recv_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            raise ConnectionError("connection closed")
        data += b
    return data.decode().strip()


def recv_exact(conn, n):
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left = n
    while left > 0:
        got = conn.recv_into(view, min(CHUNK, left))
        if got == 0:
            raise ConnectionError("connection closed")
        left -= got


def send_bytes(conn, n):
    block = b"\0" * CHUNK
    left = n
    while left > 0:
        k = min(CHUNK, left)
        conn.sendall(block[:k])
        left -= k


def serve(conn, token):
    try:
        serve_one(conn, token)
    except (ConnectionError, ValueError):
        pass  # e.g. the testbed's readiness probe: connects, then closes
    finally:
        conn.close()


def serve_one(conn, token):
    if recv_line(conn) != "TOKEN " + token:
        conn.sendall(b"ERR token\n")
        return
    cmd, value = recv_line(conn).split()
    if cmd == "SINK":
        recv_exact(conn, int(value))
        conn.sendall(b"OK\n")
    elif cmd == "SOURCE":
        send_bytes(conn, int(value))
    elif cmd == "BURN":
        wall0, cpu0 = time.monotonic(), time.thread_time()
        end = wall0 + float(value)
        x = 0
        while time.monotonic() < end:
            for _ in range(10000):
                x += 1
        cpu = time.thread_time() - cpu0
        wall = time.monotonic() - wall0
        conn.sendall(f"CPU {cpu:.4f} {wall:.4f}\n".encode())


def worker(args):
    host, port = arg(args, "--listen").rsplit(":", 1)
    token = open(arg(args, "--token-file")).read().strip()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(16)
    node = os.environ.get("ADCNN_TESTBED_NODE", "?")
    lat = os.environ.get("ADCNN_EMULATED_LATENCY_MS", "?")
    print(f"stand-in worker {node} on {host}:{port} (ADCNN_EMULATED_LATENCY_MS={lat})", flush=True)
    while True:
        conn, peer = srv.accept()
        threading.Thread(target=serve, args=(conn, token), daemon=True).start()


def nodes_of(path):
    """(name, ip, port, mbps, worker) for every flow-style node line of a cluster file."""
    out = []
    for line in open(path):
        line = line.split("#", 1)[0]
        m = re.search(r"\{(.*)\}", line)
        if not m:
            continue
        fields = {}
        for part in m.group(1).split(","):
            if ":" in part:
                k, v = part.split(":", 1)
                fields[k.strip()] = v.strip().strip("\"'")
        # The address holds a colon: take it whole.
        a = re.search(r"address:\s*\"?([0-9.]+):([0-9]+)", m.group(1))
        out.append(
            (
                fields["name"],
                a.group(1),
                int(a.group(2)),
                fields.get("mbps", "-"),
                fields.get("worker", "true") != "false",
            )
        )
    return out


def request(ip, port, token, line):
    conn = socket.create_connection((ip, port), timeout=120)
    conn.sendall(f"TOKEN {token}\n{line}\n".encode())
    return conn


def upload(ip, port, token, n):
    t0 = time.monotonic()
    conn = request(ip, port, token, f"SINK {n}")
    send_bytes(conn, n)
    assert recv_line(conn) == "OK"
    conn.close()
    return time.monotonic() - t0


def download(ip, port, token, n):
    t0 = time.monotonic()
    conn = request(ip, port, token, f"SOURCE {n}")
    recv_exact(conn, n)
    conn.close()
    return time.monotonic() - t0


def coordinator(args):
    # STANDIN_HOLD_S: wait first, to look at the testbed from outside while it stands.
    time.sleep(float(os.environ.get("STANDIN_HOLD_S", "0")))
    nodes = nodes_of(arg(args, "--cluster"))
    token = open(arg(args, "--token-file")).read().strip()
    me = os.environ.get("ADCNN_TESTBED_NODE", "?")
    n = int(float(os.environ.get("STANDIN_MB", "5")) * 1e6)
    burn = float(os.environ.get("STANDIN_BURN_S", "3"))
    workers = [x for x in nodes if x[4]]
    lats = {k: v for k, v in os.environ.items() if k.startswith("ADCNN_EMULATED_LATENCY_MS_")}
    print(f"stand-in coordinator on {me}; {' '.join(f'{k}={v}' for k, v in sorted(lats.items()))}")
    mbit = lambda t: n * 8 / t / 1e6
    print(f"one link at a time, {n / 1e6:g} MB each way:")
    print(f"  {'node':8} {'mbps':>6} {'to it':>18} {'from it':>18}")
    for name, ip, port, mbps, _ in workers:
        up = upload(ip, port, token, n)
        down = download(ip, port, token, n)
        print(
            f"  {name:8} {mbps:>6} {up:7.3f} s {mbit(up):6.1f} Mbit/s"
            f" {down:7.3f} s {mbit(down):6.1f} Mbit/s"
        )
    print(f"all links at once, {n / 1e6:g} MB from each:")
    results = {}

    def one(w):
        results[w[0]] = download(w[1], w[2], token, n)

    threads = [threading.Thread(target=one, args=(w,)) for w in workers]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.monotonic() - t0
    for name, _, _, mbps, _ in workers:
        t = results[name]
        print(f"  {name:8} {mbps:>6} {t:7.3f} s {mbit(t):6.1f} Mbit/s")
    print(f"  all: {total:.3f} s, {len(workers) * n * 8 / total / 1e6:.1f} Mbit/s in total")
    print(f"CPU: every worker spins for {burn:g} s at once; CPU time it got / wall time:")
    shares = {}

    def spin(w):
        conn = request(w[1], w[2], token, f"BURN {burn}")
        _, cpu, wall = recv_line(conn).split()
        shares[w[0]] = (float(cpu), float(wall))
        conn.close()

    threads = [threading.Thread(target=spin, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, *_ in workers:
        cpu, wall = shares[name]
        print(f"  {name:8} {cpu:6.3f} s / {wall:6.3f} s = {cpu / wall:.3f} core")
    return 0


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    if args[0] == "certs":
        out = arg(args, "-o")
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "README"), "w").write("stand-in: no certificates\n")
        return 0
    if args[0] == "worker":
        return worker(args)
    return coordinator(args)


if __name__ == "__main__":
    sys.exit(main())
