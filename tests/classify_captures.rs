//! Traffic classes against nDPI's, flow by flow, on every capture in
//! tests/fixtures/ndpi: nDPI's master protocol is mapped to a class (RTP,
//! RTCP, SRTP, STUN, DTLS, SD-RTN, Zoom media -> media; TLS, QUIC, HTTP -> web; DNS, MDNS, LLMNR -> dns; ICMP, ICMPV6 ->
//! ping; anything else -> other), and geowall's class for the same flow
//! agree, or the difference must be one of [`DOCUMENTED`], each with its
//! reason. The issue asks for 95% agreement or a reason for each
//! difference; on these captures agreement is below 95% (printed), and
//! every difference has its reason below.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use geowall::engine::Inspector;
use geowall::wire::capture::Capture;
use geowall::wire::packet::strip_link;

fn captures_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi");
    if d.is_dir() {
        Some(d)
    } else {
        println!("skipped: {} is not there", d.display());
        None
    }
}

type Key = (u8, SocketAddr, SocketAddr);

fn key(p: u8, a: SocketAddr, b: SocketAddr) -> Key {
    if a <= b { (p, a, b) } else { (p, b, a) }
}

/// Differences with a reason: (capture, one endpoint, geowall's class, why).
const DOCUMENTED: &[(&str, &str, &str, &str)] = &[
    (
        "443-chrome.pcap",
        "192.168.1.13:53059",
        "other",
        "nDPI matched by port only; the capture holds one server segment from the middle of a TLS record, and geowall does not guess by port",
    ),
    (
        "quic.pcap",
        "192.168.1.105:40461",
        "other",
        "gQUIC from the middle of a connection: no version and no CHLO in the capture; geowall needs the handshake",
    ),
    (
        "6in4tunnel.pcap",
        "[2a03:2880:1010:6f03:face:b00c:0:2]:0",
        "other",
        "one ICMPv6 Packet Too Big (type 2): an error, not a ping",
    ),
    (
        "6in4tunnel.pcap",
        "[2001:470:1f16:13f::2]:0",
        "other",
        "one ICMPv6 Destination Unreachable (type 1 code 3): an error, not a ping",
    ),
    (
        "signal.pcap",
        "192.168.2.1:0",
        "other",
        "one ICMP Port Unreachable (type 3 code 3): an error, not a ping",
    ),
    (
        "stun.pcap",
        "74.125.247.128:0",
        "other",
        "one ICMP Port Unreachable (type 3 code 3): an error, not a ping",
    ),
    (
        "stun.pcap",
        "[2a38:e156:8167:a333:face:b00c:0:24d9]:3478",
        "ping",
        "STUN Binding only: connectivity checks are ping in geowall",
    ),
    (
        "stun.pcap",
        "10.206.50.239:42000",
        "ping",
        "STUN Binding only (RFC 4571 framing on TCP): connectivity checks are ping in geowall",
    ),
    (
        "rtp.pcapng",
        "192.113.193.227:50003",
        "media",
        "Discord voice is RTP: real-time audio; nDPI names the app",
    ),
    (
        "telegram.pcap",
        "91.108.8.1:533",
        "media",
        "Telegram voice relay with a real-time shape; nDPI names the app",
    ),
    (
        "telegram.pcap",
        "91.108.8.8:529",
        "media",
        "Telegram voice relay with a real-time shape; nDPI names the app",
    ),
    (
        "telegram.pcap",
        "91.108.8.7:521",
        "media",
        "Telegram voice relay with a real-time shape; nDPI names the app",
    ),
    (
        "telegram.pcap",
        "192.168.1.52:31480",
        "media",
        "Telegram peer-to-peer voice, RTP-shaped; nDPI leaves it unknown",
    ),
    (
        "telegram.pcap",
        "87.11.205.195:59772",
        "media",
        "Telegram peer-to-peer voice, RTP-shaped; nDPI leaves it unknown",
    ),
    (
        "telegram.pcap",
        "87.11.205.195:60723",
        "media",
        "Telegram peer-to-peer voice, RTP-shaped; nDPI leaves it unknown",
    ),
];

fn ndpi_class(master: &str) -> &'static str {
    match master {
        "RTP" | "RTCP" | "SRTP" | "STUN" | "DTLS" | "SD-RTN" | "Zoom" => "media",
        "TLS" | "QUIC" | "HTTP" => "web",
        "DNS" | "MDNS" | "LLMNR" => "dns",
        "ICMP" | "ICMPV6" => "ping",
        _ => "other",
    }
}

#[test]
fn classes_agree_with_ndpi() {
    let Some(dir) = captures_dir() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    let (mut total, mut agree) = (0usize, 0usize);
    let mut diffs: Vec<(String, Option<&str>)> = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).expect("capture");
        let mut insp = Inspector::new(100_000, None);
        for fr in Capture::new(&bytes).expect("capture") {
            let fr = fr.expect("frame");
            if let Ok(ip) = strip_link(fr.link, fr.data) {
                insp.on_ip(ip, fr.ts_nanos);
            }
        }
        let ours: BTreeMap<Key, (&'static str, &'static str)> = insp
            .flows()
            .iter()
            .map(|fl| {
                let p = if fl.proto == 58 { 1 } else { fl.proto };
                (
                    key(p, fl.core.client, fl.core.server),
                    (
                        fl.core.sniffer.class_now().name(),
                        fl.core.sniffer.protocol.map_or("-", |p| p.name()),
                    ),
                )
            })
            .collect();
        let mut out = f.clone().into_os_string();
        out.push(".out");
        let text = std::fs::read_to_string(&out).expect("nDPI output");
        for line in text.lines() {
            let t = line.trim_start();
            let mut w = t.split_whitespace();
            let (Some(_), Some(proto), Some(a), Some(_), Some(b)) =
                (w.next(), w.next(), w.next(), w.next(), w.next())
            else {
                continue;
            };
            let p = match proto {
                "TCP" => 6,
                "UDP" => 17,
                "ICMP" | "ICMPV6" => 1,
                _ => continue,
            };
            let (Ok(a), Ok(b)) = (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) else {
                continue;
            };
            // "[proto: 91.39/TLS.Signal]" or "[proto: GTP:30/DTLS]".
            let Some(names) = t
                .split("[proto: ")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .and_then(|r| r.split('/').nth(1))
            else {
                continue;
            };
            let master = names.split('.').next().unwrap_or("");
            let want = ndpi_class(master);
            total += 1;
            // ICMP flows are keyed by echo id here and by port 0 in nDPI.
            let got = if p == 1 {
                ours.iter()
                    .find(|((q, x, y), _)| {
                        *q == 1
                            && ((x.ip() == a.ip() && y.ip() == b.ip())
                                || (x.ip() == b.ip() && y.ip() == a.ip()))
                    })
                    .map(|(_, v)| *v)
            } else {
                ours.get(&key(p, a, b)).copied()
            };
            let file = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match got {
                Some((c, _)) if c == want => agree += 1,
                other => {
                    let why = DOCUMENTED.iter().find(|(df, ep, class, _)| {
                        *df == file
                            && (a.to_string() == *ep || b.to_string() == *ep)
                            && other.is_some_and(|o| o.0 == *class)
                    });
                    diffs.push((
                        format!(
                            "{file}: {proto} {a} <-> {b}: nDPI {master} ({want}), geowall {other:?}"
                        ),
                        why.map(|w| w.3),
                    ));
                }
            }
        }
    }
    println!(
        "classes: {agree}/{total} agree with nDPI ({:.1}%)",
        100.0 * agree as f64 / total.max(1) as f64
    );
    for (d, why) in &diffs {
        println!(
            "  differs: {d}\n    because: {}",
            why.unwrap_or("UNDOCUMENTED")
        );
    }
    assert!(total >= 50, "flows compared: {total}");
    let undocumented = diffs.iter().filter(|(_, w)| w.is_none()).count();
    assert_eq!(undocumented, 0, "differences without a documented reason");
    assert!(
        agree * 100 >= total * 95 || diffs.len() <= DOCUMENTED.len(),
        "{agree}/{total}"
    );
}
