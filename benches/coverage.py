#!/usr/bin/env python3
"""How much of other tools' test captures `geowall audit` reads.

For every capture in the folders given (pcap, pcapng, gzip-compressed or
not), runs `geowall audit` and Wireshark's `tshark`, and compares what
each found: the frames tshark decodes as IPv4 or IPv6 against the frames
geowall read as IP (all frames but the "non-IP frames" of its stop line),
and whether geowall read the file to its end (exit status 0, no warning).
A capture where tshark sees more IP frames than geowall read is listed
with its link type, so that a missing link layer or encapsulation shows.

Nothing is sent anywhere: both tools only read the files. tshark comes
from Debian's `tshark` package.

    cargo build --release
    python3 benches/coverage.py /path/to/tcpdump-4.99.6/tests \\
        /path/to/wireshark/test/captures
    python3 benches/coverage.py --geowall /tmp/base/geowall DIR...   # another build
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz")
STOP = re.compile(r": (\d+) frames, .* (\d+) non-IP frames")


def audit(geowall, path):
    """(frames, frames read as IP, read to the end) by geowall."""
    r = subprocess.run(
        [geowall, "audit", path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )
    last = r.stderr.strip().splitlines()[-1:] or [""]
    m = STOP.search(last[0])
    if not m:
        return None
    frames, non_ip = int(m.group(1)), int(m.group(2))
    whole = r.returncode == 0 and "WARNING" not in r.stderr
    return frames, frames - non_ip, whole


def tshark_ip(path):
    """(frames tshark decodes as IP, the file's link type)."""
    r = subprocess.run(
        ["tshark", "-r", path, "-Y", "ip or ipv6", "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
        check=False,
    )
    ip = sum(1 for line in r.stdout.splitlines() if line.strip())
    c = subprocess.run(
        ["capinfos", "-E", path], capture_output=True, text=True, errors="replace", check=False
    )
    link = "?"
    for line in c.stdout.splitlines():
        if "encapsulation:" in line:
            link = line.split("encapsulation:", 1)[1].strip()
    return ip, link


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="folders of captures")
    ap.add_argument("--geowall", default=os.path.join(ROOT, "target/release/geowall"))
    a = ap.parse_args()
    for tool in ("tshark", "capinfos"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install tshark)")
    if not os.access(a.geowall, os.X_OK):
        sys.exit(f"{a.geowall}: not an executable (cargo build --release)")
    files = sorted(
        os.path.join(d, f)
        for d in a.dirs
        for f in os.listdir(d)
        if f.endswith(SUFFIXES)
    )
    if not files:
        sys.exit("no captures in " + ", ".join(a.dirs))
    totals = {"files": 0, "unread": 0, "short": 0, "tshark_ip": 0, "geowall_ip": 0}
    missed = []
    for i, path in enumerate(files, 1):
        print(f"\r{i}/{len(files)} {os.path.basename(path)[:50]:50}", end="", file=sys.stderr)
        g = audit(a.geowall, path)
        totals["files"] += 1
        if g is None:
            totals["unread"] += 1
            continue
        frames, read_ip, whole = g
        totals["short"] += 0 if whole else 1
        ip, link = tshark_ip(path)
        totals["tshark_ip"] += ip
        totals["geowall_ip"] += min(read_ip, ip)
        if ip > read_ip:
            missed.append((ip - read_ip, link, os.path.basename(path), frames))
    print(file=sys.stderr)
    print(
        f"{totals['files']} captures: {totals['unread']} not read at all, "
        f"{totals['short']} not read to the end; IP frames (tshark): "
        f"{totals['tshark_ip']}, read by geowall: {totals['geowall_ip']} "
        f"({100 * totals['geowall_ip'] / max(1, totals['tshark_ip']):.2f}%)"
    )
    by_link = {}
    for n, link, _, _ in missed:
        by_link[link] = by_link.get(link, 0) + n
    for link, n in sorted(by_link.items(), key=lambda kv: -kv[1]):
        print(f"  {n:>6} IP frames not read, link type {link}")
    for n, link, name, frames in sorted(missed, reverse=True):
        print(f"  {n:>6} of {frames:>6} frames  {name}  ({link})")


if __name__ == "__main__":
    main()
