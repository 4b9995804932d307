#!/usr/bin/env python3
"""Audit at capture scale: `geowall audit` against nDPI's `ndpiReader`.

Builds a large pcap from a shipped capture (tests/fixtures/ndpi/...) by
repeating its records on a steady clock (each copy starts one second after
the previous one ends), then times the whole process of each tool on it,
alternating, and reports the median wall time and peak RSS of each, and
the ratios. `ndpiReader` comes from Debian's `libndpi-bin`; the script
installs it with apt when it is missing (as root).

Nothing is sent anywhere: both tools only read the file.

    python3 benches/audit.py                       # 344,600 packets, 5 runs
    python3 benches/audit.py --packets 1500000 --runs 5 --gzip
"""

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def records(path):
    """The pcap's header and its records as (sec, frac, incl, orig, data)."""
    with open(path, "rb") as f:
        b = f.read()
    magic = struct.unpack("<I", b[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        e = ">"
    else:
        sys.exit(f"{path}: not a classic pcap")
    nanos = magic in (0xA1B23C4D, 0x4D3CB2A1)
    out, at = [], 24
    while at + 16 <= len(b):
        sec, frac, incl, orig = struct.unpack(e + "IIII", b[at : at + 16])
        out.append((sec, frac, orig, b[at + 16 : at + 16 + incl]))
        at += 16 + incl
    return b[:24], e, nanos, out


def build(src, packets, dst):
    header, e, nanos, recs = records(src)
    unit = 1_000_000_000 if nanos else 1_000_000
    first = recs[0][0] * unit + recs[0][1]
    span = recs[-1][0] * unit + recs[-1][1] - first + unit
    n = 0
    with open(dst, "wb") as f:
        f.write(header)
        copy = 0
        while n < packets:
            for sec, frac, orig, data in recs:
                if n >= packets:
                    break
                t = sec * unit + frac + copy * span
                f.write(struct.pack(e + "IIII", t // unit, t % unit, len(data), orig))
                f.write(data)
                n += 1
            copy += 1
    return n


def build_flows(flows, dst):
    """A raw-IPv4 pcap of `flows` distinct UDP flows (documentation
    addresses), three 100-byte datagrams each: the flow table's cost."""
    with open(dst, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        t = 0
        for i in range(flows):
            src = bytes([198, 18, (i >> 8) & 255, i & 255])
            dst_ip = bytes([192, 0, 2, ((i >> 16) & 255) + 1])
            payload = b"x" * 100
            udp = struct.pack(">HHHH", 10000 + i % 50000, 5000 + (i >> 16), 8 + len(payload), 0)
            ip = bytearray([0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0]) + src + dst_ip + udp + payload
            ip[2:4] = struct.pack(">H", len(ip))
            for _ in range(3):
                f.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(ip), len(ip)))
                f.write(ip)
                t += 10
    return flows * 3


def timed(cmd):
    """(seconds, peak RSS in MiB) of the whole process."""
    r = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M"] + cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = r.stderr.strip().splitlines()[-1]
    if r.returncode not in (0, 1):
        sys.exit(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    secs, kib = last.split()
    return float(secs), int(kib) / 1024


def ensure_ndpi():
    exe = shutil.which("ndpiReader")
    if exe:
        return exe
    if os.geteuid() != 0:
        sys.exit("ndpiReader is missing: apt-get install libndpi-bin (as root)")
    subprocess.run(["apt-get", "install", "-y", "libndpi-bin"], check=True)
    return shutil.which("ndpiReader")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=os.path.join(ROOT, "tests/fixtures/ndpi/telegram.pcap"))
    p.add_argument("--packets", type=int, default=344_600)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--flows", type=int, default=100_000, help="distinct flows of the second capture (0: none)")
    p.add_argument("--gzip", action="store_true", help="also time geowall on the gzip-compressed capture")
    p.add_argument("--geowall", default=os.path.join(ROOT, "target/release/geowall"))
    a = p.parse_args()
    if not os.path.exists(a.geowall):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    ndpi = ensure_ndpi()
    with tempfile.TemporaryDirectory() as d:
        cap = os.path.join(d, "big.pcap")
        n = build(a.source, a.packets, cap)
        size = os.path.getsize(cap)
        print(f"capture: {n} packets, {size / 1e6:.1f} MB, from {os.path.relpath(a.source, ROOT)}")
        tools = {
            "geowall": [a.geowall, "audit", "--json", cap],
            "ndpiReader": [ndpi, "-q", "-i", cap],
        }
        if a.gzip:
            subprocess.run(["gzip", "-k", "-1", cap], check=True)
            tools["geowall (gzip)"] = [a.geowall, "audit", "--json", cap + ".gz"]
        if a.flows:
            many = os.path.join(d, "flows.pcap")
            m = build_flows(a.flows, many)
            print(f"second capture: {a.flows} distinct UDP flows, {m} packets, {os.path.getsize(many) / 1e6:.1f} MB")
            tools["geowall (flows)"] = [a.geowall, "audit", "--json", many]
            tools["ndpiReader (flows)"] = [ndpi, "-q", "-i", many]
        res = {k: [] for k in tools}
        for _ in range(a.runs):
            for k, cmd in tools.items():
                res[k].append(timed(cmd))
        med = {}
        for k, runs in res.items():
            t = statistics.median(r[0] for r in runs)
            m = statistics.median(r[1] for r in runs)
            med[k] = (t, m)
            times = " ".join(f"{r[0]:.2f}" for r in runs)
            print(f"{k:16} median {t:.2f} s  peak RSS {m:.1f} MiB   (runs: {times})")
        for suffix in ["", " (flows)"]:
            if "geowall" + suffix not in med:
                continue
            g, nd = med["geowall" + suffix], med["ndpiReader" + suffix]
            print(f"geowall / ndpiReader{suffix}: time {g[0] / nd[0]:.2f}x, peak RSS {g[1] / nd[1]:.2f}x")


if __name__ == "__main__":
    main()
