//! Traffic classes against nDPI's, flow by flow, on every capture in
//! tests/fixtures/ndpi (nDPI's current corpus) and tests/fixtures/ndpi-4.2
//! (older and rarer protocols, with nDPI 4.2's results): nDPI's master
//! protocol is mapped to a class (RTP, RTCP, SRTP, STUN, DTLS, SD-RTN,
//! Zoom media -> media; TLS, QUIC, HTTP -> web; DNS, MDNS, LLMNR -> dns;
//! ICMP, ICMPV6 -> ping; anything else -> other). Flows nDPI decided by
//! inspection (`Confidence: DPI`) are compared: geowall's class agrees, or
//! the difference is one of [`DOCUMENTED`], each with its reason. Flows
//! nDPI matched by port or left unknown are printed and not counted: there
//! nDPI did not look.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use geowall::engine::Inspector;
use geowall::wire::capture::Capture;
use geowall::wire::packet::strip_link;

/// The captures of one fixture folder, sorted, or none (with a note) if
/// the folder is not there.
fn captures(folder: &str) -> Vec<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    let Ok(entries) = std::fs::read_dir(&d) else {
        println!("skipped: {} is not there", d.display());
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    files
}

type Key = (u8, SocketAddr, SocketAddr);

fn key(p: u8, a: SocketAddr, b: SocketAddr) -> Key {
    if a <= b { (p, a, b) } else { (p, b, a) }
}

/// Differences with a reason: (capture, one endpoint, geowall's class, why).
/// Each is a flow nDPI decided by inspection where geowall's class is the
/// truer one for a firewall: the voice flows nDPI names by application
/// only, which the mapping then calls `other`.
const DOCUMENTED: &[(&str, &str, &str, &str)] = &[
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
    compare("tests/fixtures/ndpi", 130);
}

#[test]
fn classes_agree_with_ndpi_4_2_on_older_and_rarer_protocols() {
    compare("tests/fixtures/ndpi-4.2", 350);
}

/// Compares every capture of `folder` with nDPI's results; at least
/// `least` flows must be compared.
fn compare(folder: &str, least: usize) {
    let files = captures(folder);
    if files.is_empty() {
        return;
    }
    let (mut total, mut agree) = (0usize, 0usize);
    let mut diffs: Vec<(String, Option<&str>)> = Vec::new();
    let mut not_inspected: Vec<String> = Vec::new();
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
            let file = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // "[Confidence: DPI]" comes before the FPC's own confidence.
            let confidence = t
                .split("[Confidence: ")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .unwrap_or("");
            if confidence != "DPI" {
                not_inspected.push(format!(
                    "{file}: {proto} {a} <-> {b}: nDPI {master} by {confidence:?}"
                ));
                continue;
            }
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
        "{folder}: classes: {agree}/{total} flows nDPI decided by inspection agree with nDPI ({:.1}%)",
        100.0 * agree as f64 / total.max(1) as f64
    );
    for n in &not_inspected {
        println!("  not compared: {n}");
    }
    for (d, why) in &diffs {
        println!(
            "  differs: {d}\n    because: {}",
            why.unwrap_or("UNDOCUMENTED")
        );
    }
    assert!(total >= least, "flows compared: {total}");
    let undocumented = diffs.iter().filter(|(_, w)| w.is_none()).count();
    assert_eq!(undocumented, 0, "differences without a documented reason");
    assert!(
        not_inspected.len() * 10 < total,
        "most flows are nDPI's inspections: {} not",
        not_inspected.len()
    );
}
