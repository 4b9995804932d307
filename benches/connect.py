#!/usr/bin/env python3
"""Where a new TCP connection's time goes under geowall. Root only; not a
test. Uses benches/dataplane.py's topology (namespaces made here and
deleted on exit; documentation and benchmark ranges only) and its TCP
server, and Wireshark's `dumpcap` and `tshark` (Debian: tshark).

    sudo python3 benches/connect.py [--geowall BIN] [--baseline BIN]
                                    [--count 2000] [--gap-ms 0] [--runs 3]

For each binary and run: geowall starts afresh; an app opens --count
connections one after another (connect, then close at once; --gap-ms
between them), timing each connect(); dumpcap records the TUN meanwhile,
and each SYN is paired with the SYN-ACK geowall wrote back, so the time
geowall took to answer is told apart from the rest of the path. Prints the
p50 of both per run and their medians. Every loop is bounded.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataplane as d  # noqa: E402

CLIENT = r"""
import socket, sys, time
host, n, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000
took = []
for i in range(n):
    s = socket.socket()
    s.settimeout(2)
    t = time.perf_counter_ns()
    s.connect((host, 9001))
    took.append(time.perf_counter_ns() - t)
    s.close()
    if gap:
        time.sleep(gap)
took.sort()
print(took[len(took) // 2] / 1000)
"""


def syn_to_synack(pcap):
    """The p50 in µs from each SYN on the TUN to the SYN-ACK after it."""
    rows = subprocess.run(
        ["tshark", "-r", pcap, "-T", "fields", "-e", "frame.time_epoch", "-e", "tcp.flags"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    syn, gaps = None, []
    for row in rows:
        t, flags = row.split("\t")
        t, flags = float(t), int(flags, 16)
        if flags == 0x02:
            syn = t
        elif flags == 0x12 and syn is not None:
            gaps.append((t - syn) * 1e6)
            syn = None
    if not gaps:
        raise SystemExit(f"no SYN/SYN-ACK pairs in {pcap}")
    return statistics.median(gaps)


def one(geowall, count, gap_ms, tmp):
    d.topology(True)
    servers = d.start_servers(tmp)
    fw, where = d.start_geowall(tmp, geowall)
    pcap = os.path.join(tmp, "tun.pcapng")
    try:
        cap = subprocess.Popen(
            ["ip", "netns", "exec", where, "dumpcap", "-q", "-i", f"{d.TAG}t", "-w", pcap,
             "-f", "tcp port 9001"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)  # dumpcap is up
        r = subprocess.run(
            ["ip", "netns", "exec", where, sys.executable, "-c", CLIENT, d.SERVER4, str(count),
             str(gap_ms)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"the client failed: {r.stderr[-500:]}")
        time.sleep(0.5)
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=10)
        return float(r.stdout.strip()), syn_to_synack(pcap)
    finally:
        for p in [fw] + servers:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        d.cleanup()


def main():
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--geowall", default=os.path.join(d.ROOT, "target/release/geowall"))
    a.add_argument("--baseline", help="another geowall binary, measured in turn")
    a.add_argument("--count", type=int, default=2000)
    a.add_argument("--gap-ms", type=float, default=0)
    a.add_argument("--runs", type=int, default=3)
    args = a.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("connect.py needs root (it makes network namespaces)")
    if not args.count > 0 or not 0 <= args.gap_ms <= 1000:
        raise SystemExit("--count must be positive and --gap-ms within 0..1000")
    bins = [("geowall", args.geowall)] + ([("geowall-baseline", args.baseline)] if args.baseline else [])
    got = {name: [] for name, _ in bins}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, path in bins:
                conn, turn = one(path, args.count, args.gap_ms, tmp)
                print(f"run {run + 1}/{args.runs} {name}: connect p50 {conn:.1f} us, "
                      f"SYN to SYN-ACK at the TUN p50 {turn:.1f} us", flush=True)
                got[name].append((conn, turn))
    print(f"\nmedian of {args.runs} runs, {args.count} connects, {args.gap_ms} ms apart")
    for name, v in got.items():
        print(f"{name}: connect p50 {statistics.median(c for c, _ in v):.1f} us, "
              f"SYN to SYN-ACK p50 {statistics.median(t for _, t in v):.1f} us")


if __name__ == "__main__":
    main()
