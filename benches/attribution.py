#!/usr/bin/env python3
"""What finding each flow's owner costs under `geowall run`: TCP connect
time through `geowall run` with many processes on the host, for one or more
geowall binaries side by side. Root only; not a test.

    sudo python3 benches/attribution.py --geowall now=target/release/geowall \
        [--geowall before=/path/to/older/geowall] [--procs 0,2000] [--runs 5]

Topology (namespaces made here and deleted on exit; documentation and
benchmark ranges only):

    ns host ── veth 198.18.0.1 ─── veth 198.18.0.2 ── ns srv
    (geowall run, the client,                          TCP server on lo:
     the idle processes)                               198.51.100.10:9001

`geowall run` routes the namespace's traffic through its TUN (its resolver
change goes to /etc/netns/HOST/resolv.conf, its state to a temporary
directory). The idle processes are forks of one process holding 64 open
files each, as a desktop's processes hold descriptors; they stay idle until
the end. The client connects --connects times, one after another, and closes;
reported: connect p50 and p99 in microseconds, the median over --runs runs.
Every loop is bounded.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SERVER = "198.51.100.10"
TAG = f"ga{os.getpid() % 100000}"
HOST, SRV = f"{TAG}h", f"{TAG}s"

TCP_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9001))
s.listen(1024)
s.settimeout(120)
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    c.close()
"""

CLIENT = r"""
import json, socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
conn = []
for i in range(n):
    s = socket.socket()
    s.settimeout(2)
    t = time.perf_counter_ns()
    try:
        s.connect((host, 9001))
        conn.append(time.perf_counter_ns() - t)
    except OSError:
        pass
    s.close()
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] / 1000 if v else float("nan")
print(json.dumps({"p50": pct(conn, .5), "p99": pct(conn, .99), "ok": len(conn)}))
"""

# Forks N sleepers, each holding 64 open files; they wait (idle) until
# their standard input, shared with the parent, closes, or 30 minutes.
SLEEPERS = r"""
import os, select, sys
n = int(sys.argv[1])
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(64)]
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        select.select([0], [], [], 1800)
        os._exit(0)
    kids.append(pid)
print("ready", flush=True)
sys.stdin.read()
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def cleanup():
    for n in (HOST, SRV):
        sh("ip", "netns", "del", n, check=False)
    sh("rm", "-rf", f"/etc/netns/{HOST}", check=False)


def topology():
    cleanup()
    for n in (HOST, SRV):
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    sh("ip", "link", "add", f"{TAG}v0", "netns", HOST, "type", "veth", "peer", "name", f"{TAG}v1", "netns", SRV)
    sh("ip", "-n", HOST, "addr", "add", "198.18.0.1/30", "dev", f"{TAG}v0")
    sh("ip", "-n", SRV, "addr", "add", "198.18.0.2/30", "dev", f"{TAG}v1")
    sh("ip", "-n", HOST, "link", "set", f"{TAG}v0", "up")
    sh("ip", "-n", SRV, "link", "set", f"{TAG}v1", "up")
    sh("ip", "-n", HOST, "route", "add", "default", "via", "198.18.0.2")
    sh("ip", "-n", SRV, "addr", "add", f"{SERVER}/32", "dev", "lo")
    sh("ip", "-n", SRV, "route", "add", "198.18.0.0/15", "via", "198.18.0.1")
    os.makedirs(f"/etc/netns/{HOST}", exist_ok=True)
    with open(f"/etc/netns/{HOST}/resolv.conf", "w") as f:
        f.write("nameserver 192.0.2.53\n")


def start_run(geowall, state):
    p = subprocess.Popen(
        ["ip", "netns", "exec", HOST, geowall, "run", "--preset", "default", "--state-dir", state,
         "--dns-upstream", "udp:198.51.100.53"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = p.stderr.readline()
        if "whole host goes through" in line:
            return p
        if not line:
            break
    p.kill()
    raise SystemExit(f"geowall run did not start: {line}")


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geowall", action="append", required=True, metavar="LABEL=PATH")
    ap.add_argument("--procs", default="0,2000", help="idle processes on the host (comma-separated)")
    ap.add_argument("--connects", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("root only (network namespaces)")
    bins = [g.split("=", 1) for g in a.geowall]
    counts = [int(x) for x in a.procs.split(",") if x]
    results = {}
    srv = None
    try:
        topology()
        srv = subprocess.Popen(["ip", "netns", "exec", SRV, sys.executable, "-c", TCP_SERVER, SERVER])
        time.sleep(0.3)
        for n in counts:
            sleepers = subprocess.Popen([sys.executable, "-c", SLEEPERS, str(n)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if sleepers.stdout.readline().strip() != "ready":
                raise SystemExit("the idle processes did not start")
            try:
                for run in range(a.runs):
                    # Alternate the binaries within each run.
                    for label, path in bins:
                        with tempfile.TemporaryDirectory() as state:
                            g = start_run(path, state)
                            try:
                                out = sh("ip", "netns", "exec", HOST, sys.executable, "-c", CLIENT,
                                         SERVER, str(a.connects)).stdout
                            finally:
                                stop(g)
                        r = json.loads(out)
                        print(f"{n} processes, run {run + 1}/{a.runs}, {label}: {r}", file=sys.stderr, flush=True)
                        results.setdefault((n, label), []).append(r)
            finally:
                sleepers.stdin.close()
                sleepers.wait(timeout=60)
    finally:
        if srv:
            srv.kill()
        cleanup()
    print(f"\nconnect through geowall run, median of {a.runs} runs of {a.connects} connects\n")
    print(f"{'processes':>10} {'binary':>10} {'p50 us':>9} {'p99 us':>9} {'ok':>5}")
    for (n, label), rs in results.items():
        med = lambda k: statistics.median(r[k] for r in rs)
        print(f"{n:>10} {label:>10} {med('p50'):>9.1f} {med('p99'):>9.1f} {int(med('ok')):>5}")


if __name__ == "__main__":
    main()
