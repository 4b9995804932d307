//! Ground truth from someone else: every capture in tests/fixtures/ndpi is
//! read through geowall's capture, IP and protocol parsers, and the server
//! names found (TLS SNI, HTTP Host, DNS question) are compared with the
//! names nDPI reported for the same flows (`*.out`), QUIC included (its
//! Initials are decrypted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use geowall::wire::capture::Capture;
use geowall::wire::packet::{Transport, innermost_ip, parse_ip, strip_link};
use geowall::wire::{dns, http, quic, rtc, tls};

fn captures_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi");
    if d.is_dir() {
        Some(d)
    } else {
        println!(
            "skipped: {} is not there (it is beside the project in CI and the workspace)",
            d.display()
        );
        None
    }
}

type FlowKey = (u8, SocketAddr, SocketAddr);

/// An unordered flow key.
fn key(proto: u8, a: SocketAddr, b: SocketAddr) -> FlowKey {
    if a <= b { (proto, a, b) } else { (proto, b, a) }
}

#[derive(Default)]
struct Seen {
    frames: usize,
    drops: usize,
    /// Directional stream starts, bounded to 16 KiB.
    streams: BTreeMap<(SocketAddr, SocketAddr), Vec<u8>>,
    names: BTreeMap<FlowKey, BTreeSet<String>>,
    rtc: usize,
    quic: BTreeMap<(SocketAddr, SocketAddr), quic::InitialAssembler>,
}

fn read(path: &Path) -> Seen {
    let bytes = std::fs::read(path).expect("capture readable");
    let mut s = Seen::default();
    for f in Capture::new(&bytes).expect("a capture") {
        let f = f.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        s.frames += 1;
        let Ok(ip) = strip_link(f.link, f.data) else {
            s.drops += 1;
            continue;
        };
        // The flows inside tunnels (GTP-U, CAPWAP, IP in IP), as nDPI reads them.
        let Ok(p) = parse_ip(innermost_ip(ip)) else {
            s.drops += 1;
            continue;
        };
        let (sp, dp) = p.ports();
        let (src, dst) = (SocketAddr::new(p.src, sp), SocketAddr::new(p.dst, dp));
        match p.transport {
            Transport::Tcp { payload, .. } if !payload.is_empty() => {
                let buf = s.streams.entry((src, dst)).or_default();
                if buf.len() < 16 * 1024 {
                    buf.extend_from_slice(payload);
                }
            }
            Transport::Udp { payload, .. } => {
                if (sp == 53 || dp == 53 || sp == 5353 || dp == 5353)
                    && let Some(q) = dns::question(payload)
                {
                    s.names
                        .entry(key(17, src, dst))
                        .or_default()
                        .insert(q.name.as_str().to_owned());
                }
                if rtc::classify(payload).is_some() {
                    s.rtc += 1;
                }
                if let Some(n) = quic::gquic_chlo_sni(payload) {
                    s.names
                        .entry(key(17, src, dst))
                        .or_default()
                        .insert(n.to_ascii_lowercase());
                } else if payload.first().is_some_and(|b| b & 0xC0 == 0xC0) {
                    let a = s.quic.entry((src, dst)).or_default();
                    if a.feed(payload) == Some(true)
                        && let Some(n) = a.sni()
                    {
                        s.names
                            .entry(key(17, src, dst))
                            .or_default()
                            .insert(n.to_ascii_lowercase());
                    }
                }
            }
            _ => {}
        }
    }
    let mut scratch = Vec::new();
    let streams = std::mem::take(&mut s.streams);
    for ((src, dst), buf) in &streams {
        let k = key(6, *src, *dst);
        if let tls::Hello::Found(h) = tls::client_hello(buf, &mut scratch)
            && let Some(n) = h.sni
        {
            s.names.entry(k).or_default().insert(n.to_ascii_lowercase());
        }
        if let http::HttpHost::Found(Some(h)) = http::host(buf) {
            s.names.entry(k).or_default().insert(h.to_ascii_lowercase());
        }
        if (src.port() == 53 || dst.port() == 53)
            && let Some(q) = dns::question_tcp(buf)
        {
            s.names
                .entry(k)
                .or_default()
                .insert(q.name.as_str().to_owned());
        }
    }
    s
}

/// nDPI's flows with a server name, for the masters geowall covers here.
fn ndpi_names(out: &Path) -> Vec<(FlowKey, String, String)> {
    let text = std::fs::read_to_string(out).expect("nDPI output readable");
    let mut v = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let mut parts = t.split_whitespace();
        let (Some(_n), Some(proto), Some(a), Some(_arrow), Some(b)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        let proto = match proto {
            "TCP" => 6,
            "UDP" => 17,
            _ => continue,
        };
        let (Ok(a), Ok(b)) = (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) else {
            continue;
        };
        let Some(master) = t
            .split("[proto: ")
            .nth(1)
            .and_then(|r| r.split(['/', '.', ']']).next())
        else {
            continue;
        };
        let Some(name) = t
            .split("[Hostname/SNI: ")
            .nth(1)
            .and_then(|r| r.split(']').next())
        else {
            continue;
        };
        // 91 TLS, 7 HTTP, 5 DNS, 188 QUIC.
        if !matches!(master, "91" | "7" | "5" | "188") {
            continue;
        }
        v.push((
            key(proto, a, b),
            name.to_ascii_lowercase(),
            master.to_owned(),
        ));
    }
    v
}

/// Names nDPI reports that geowall does not take, each with its reason:
/// (capture, nDPI's name, why).
const DOCUMENTED: &[(&str, &str, &str)] = &[
    (
        "dns-invalid-chars.pcap",
        "www.allyourbasesare???ongto.cn",
        "a label with bytes no host name has: no name rather than a made-up one",
    ),
    (
        "dns_invert_query.pcapng",
        "216.58.202.4",
        "an inverse query has no question name; nDPI shows the address asked about",
    ),
];

#[test]
fn every_capture_parses_and_names_agree_with_ndpi() {
    names_agree(captures_dir(), 20);
}

#[test]
fn names_agree_with_ndpi_4_2_on_every_quic_generation() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi-4.2");
    names_agree(d.is_dir().then_some(d), 40);
}

/// Reads every capture in `dir` and compares the server names with
/// nDPI's; at least `least` flows must be compared.
fn names_agree(dir: Option<PathBuf>, least: usize) {
    let Some(dir) = dir else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "captures found: {}", files.len());
    let (mut compared, mut agreed) = (0, 0);
    let mut disagreements = Vec::new();
    for f in &files {
        let s = read(f);
        assert!(s.frames > 0, "{}: no frames", f.display());
        let mut out = f.clone().into_os_string();
        out.push(".out");
        for (k, name, master) in ndpi_names(Path::new(&out)) {
            compared += 1;
            let ours = s.names.get(&k);
            let file = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if ours.is_some_and(|n| n.contains(&name)) {
                agreed += 1;
            } else if let Some((_, _, why)) = DOCUMENTED
                .iter()
                .find(|(df, dn, _)| *df == file && *dn == name)
            {
                println!("  differs: {file}: nDPI {name}, geowall {ours:?}: {why}");
            } else {
                disagreements.push(format!(
                    "{}: {:?} ({master}) nDPI {name}, geowall {:?}",
                    f.file_name().and_then(|n| n.to_str()).unwrap_or(""),
                    k,
                    ours
                ));
            }
        }
        println!(
            "{}: {} frames, {} dropped, {} flows named, {} real-time packets",
            f.file_name().and_then(|n| n.to_str()).unwrap_or(""),
            s.frames,
            s.drops,
            s.names.len(),
            s.rtc
        );
    }
    println!("server names: {agreed}/{compared} agree with nDPI");
    for d in &disagreements {
        println!("  disagree: {d}");
    }
    assert!(compared >= least, "enough flows compared: {compared}");
    assert!(
        disagreements.is_empty(),
        "{} disagreements",
        disagreements.len()
    );
}

#[test]
fn quic_hello_split_over_initial_packets_is_reassembled() {
    let Some(dir) = captures_dir() else { return };
    let bytes =
        std::fs::read(dir.join("quic_frags_ch_in_multiple_packets.pcapng")).expect("capture");
    let mut a = quic::InitialAssembler::new();
    let mut fed = Vec::new();
    for f in Capture::new(&bytes).expect("capture") {
        let f = f.expect("frame");
        let Ok(p) = strip_link(f.link, f.data).and_then(parse_ip) else {
            continue;
        };
        if let Transport::Udp {
            sport: 58822,
            payload,
            ..
        } = p.transport
        {
            fed.push(a.feed(payload));
        }
    }
    // The hello needs both Initials: incomplete after the first.
    assert_eq!(fed, [Some(false), Some(true)]);
    let h = a.client_hello().expect("hello");
    assert_eq!(h.alpn().next(), Some(b"h3-34".as_slice()));
    // The client connected to [::1] by address: no SNI (nDPI names none).
    assert_eq!(h.sni, None);
}

#[test]
fn real_time_captures_are_recognised() {
    let Some(dir) = captures_dir() else { return };
    for (file, min) in [("stun.pcap", 20), ("rtp.pcapng", 20), ("dtls.pcap", 5)] {
        let s = read(&dir.join(file));
        assert!(s.rtc >= min, "{file}: {} real-time packets", s.rtc);
    }
    let _ = IpAddr::from([0, 0, 0, 0]);
}
