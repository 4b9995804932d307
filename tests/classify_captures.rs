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
    if !d.is_dir() {
        println!("skipped: {} is not there", d.display());
    }
    captures_in(&d)
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
    check(&captures("tests/fixtures/ndpi"), 130);
}

#[test]
fn classes_agree_with_ndpi_4_2_on_older_and_rarer_protocols() {
    check(&captures("tests/fixtures/ndpi-4.2"), 350);
}

/// A measurement, not a check: every capture of an nDPI test corpus named
/// by `GEOWALL_NDPI_CORPUS` (a folder of captures with their `.out` beside
/// them, or nDPI's own tree with `pcap/` and `result/`), compared with
/// nDPI's classes and names; prints the agreement and each difference.
///
/// `GEOWALL_NDPI_CORPUS=/path/to/nDPI/tests cargo test --release --test
/// classify_captures -- --ignored --nocapture`
#[test]
#[ignore = "needs GEOWALL_NDPI_CORPUS: a corpus outside the repository"]
fn agreement_on_a_corpus() {
    let root = PathBuf::from(std::env::var("GEOWALL_NDPI_CORPUS").expect("GEOWALL_NDPI_CORPUS"));
    let (pcaps, results) = if root.join("pcap").is_dir() {
        (root.join("pcap"), root.join("result"))
    } else {
        (root.clone(), root.clone())
    };
    let files: Vec<(PathBuf, PathBuf)> = captures_in(&pcaps)
        .into_iter()
        .filter_map(|f| {
            let out = results.join(format!("{}.out", f.file_name()?.to_str()?));
            out.is_file().then_some((f, out))
        })
        .collect();
    assert!(
        !files.is_empty(),
        "no capture with an .out in {}",
        root.display()
    );
    let r = compare(&files);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (d, _) in &r.diffs {
        *kinds.entry(d.kind.clone()).or_default() += 1;
    }
    for (k, n) in &kinds {
        println!("  {n:>5}  {k}");
    }
    for (d, _) in &r.diffs {
        println!("  class differs: {}", d.line);
    }
    for d in &r.name_diffs {
        println!("  name differs: {d}");
    }
    println!(
        "{} captures: classes {}/{} ({:.1}%), names {}/{} ({:.1}%)",
        files.len(),
        r.agree,
        r.total,
        100.0 * r.agree as f64 / r.total.max(1) as f64,
        r.names_agree,
        r.names_total,
        100.0 * r.names_agree as f64 / r.names_total.max(1) as f64
    );
}

fn captures_in(d: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(d)
        .map(|e| {
            e.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A flow where geowall's class is not the one nDPI's label maps to.
struct Diff {
    /// The flow, nDPI's label and geowall's class and protocol.
    line: String,
    /// "nDPI label (class) -> geowall class protocol", to count alike.
    kind: String,
}

#[derive(Default)]
struct Report {
    total: usize,
    agree: usize,
    diffs: Vec<(Diff, Option<&'static str>)>,
    not_inspected: Vec<String>,
    names_total: usize,
    names_agree: usize,
    /// Flows whose server name is not nDPI's.
    name_diffs: Vec<String>,
}

/// Checks every capture of a fixture folder: at least `least` flows
/// compared, each difference documented, most flows nDPI's inspections.
fn check(files: &[PathBuf], least: usize) {
    if files.is_empty() {
        return;
    }
    let folder = files[0]
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let pairs: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .map(|f| {
            let mut out = f.clone().into_os_string();
            out.push(".out");
            (f.clone(), PathBuf::from(out))
        })
        .collect();
    let r = compare(&pairs);
    println!(
        "{folder}: classes: {}/{} flows nDPI decided by inspection agree with nDPI ({:.1}%)",
        r.agree,
        r.total,
        100.0 * r.agree as f64 / r.total.max(1) as f64
    );
    for n in &r.not_inspected {
        println!("  not compared: {n}");
    }
    for (d, why) in &r.diffs {
        println!(
            "  differs: {}\n    because: {}",
            d.line,
            why.unwrap_or("UNDOCUMENTED")
        );
    }
    assert!(r.total >= least, "flows compared: {}", r.total);
    let undocumented = r.diffs.iter().filter(|(_, w)| w.is_none()).count();
    assert_eq!(undocumented, 0, "differences without a documented reason");
    assert!(
        r.not_inspected.len() * 10 < r.total,
        "most flows are nDPI's inspections: {} not",
        r.not_inspected.len()
    );
}

/// Reads each capture through geowall's inspector and compares its flows
/// with nDPI's `.out`.
fn compare(files: &[(PathBuf, PathBuf)]) -> Report {
    let mut r = Report::default();
    for (f, out) in files {
        let bytes = std::fs::read(f).expect("capture");
        let mut insp = Inspector::new(100_000, None);
        let Ok(cap) = Capture::new(&bytes) else {
            println!("  unreadable: {}", f.display());
            continue;
        };
        let mut last = 0;
        for fr in cap {
            // A torn last record ends the capture (as nDPI's reader does).
            let Ok(fr) = fr else { break };
            last = fr.ts_nanos;
            if let Ok(ip) = strip_link(fr.link, fr.data) {
                insp.on_ip(ip, fr.ts_nanos);
            }
        }
        insp.finish(last);
        type Ours = (&'static str, &'static str, Option<String>);
        let ours: BTreeMap<Key, Ours> = insp
            .flows()
            .iter()
            .map(|fl| {
                let p = if fl.proto == 58 { 1 } else { fl.proto };
                (
                    key(p, fl.core.client, fl.core.server),
                    (
                        fl.core.sniffer.class_now().name(),
                        fl.core.sniffer.protocol.map_or("-", |p| p.name()),
                        fl.core.sniffer.server_name.clone(),
                    ),
                )
            })
            .collect();
        // nDPI's output may hold bytes that are not UTF-8 (names it read).
        let text = String::from_utf8_lossy(&std::fs::read(out).expect("nDPI output")).into_owned();
        let file = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
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
            // "[Confidence: DPI]" comes before the FPC's own confidence.
            let confidence = t
                .split("[Confidence: ")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .unwrap_or("");
            if confidence != "DPI" {
                r.not_inspected.push(format!(
                    "{file}: {proto} {a} <-> {b}: nDPI {master} by {confidence:?}"
                ));
                continue;
            }
            r.total += 1;
            // ICMP flows are keyed by echo id here and by port 0 in nDPI.
            let got = if p == 1 {
                ours.iter()
                    .find(|((q, x, y), _)| {
                        *q == 1
                            && ((x.ip() == a.ip() && y.ip() == b.ip())
                                || (x.ip() == b.ip() && y.ip() == a.ip()))
                    })
                    .map(|(_, v)| v)
            } else {
                ours.get(&key(p, a, b))
            };
            if let Some(name) = t
                .split("[Hostname/SNI: ")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .filter(|_| matches!(master, "TLS" | "HTTP" | "DNS" | "QUIC"))
            {
                r.names_total += 1;
                let ours = got.and_then(|g| g.2.as_deref());
                if ours.is_some_and(|g| g.eq_ignore_ascii_case(name)) {
                    r.names_agree += 1;
                } else {
                    r.name_diffs.push(format!(
                        "{file}: {proto} {a} <-> {b}: nDPI {name:?}, geowall {ours:?}"
                    ));
                }
            }
            match got {
                Some((c, _, _)) if *c == want => r.agree += 1,
                other => {
                    let other = other.map(|o| (o.0, o.1));
                    let why = DOCUMENTED.iter().find(|(df, ep, class, _)| {
                        *df == file
                            && (a.to_string() == *ep || b.to_string() == *ep)
                            && other.is_some_and(|o| o.0 == *class)
                    });
                    let ours = other.map_or("no flow".to_owned(), |(c, p)| format!("{c} {p}"));
                    r.diffs.push((
                        Diff {
                            line: format!(
                                "{file}: {proto} {a} <-> {b}: nDPI {master} ({want}), geowall {ours}"
                            ),
                            kind: format!("nDPI {master} ({want}) -> geowall {ours}"),
                        },
                        why.map(|w| w.3),
                    ));
                }
            }
        }
    }
    r
}
