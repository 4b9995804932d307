//! The clever cases (root only; skips otherwise): traffic shaped to slip
//! past a firewall that looks only at the obvious. Each case counts the
//! packets that reach the blocked server on the internet side of the link
//! (must be zero) and checks that the allowed twin still gets through, so
//! that a zero means "blocked", not "broken". See `SECURITY.md`.
//!
//! Packets the kernel would not build for an ordinary socket (fragments,
//! data on a SYN, raw IP protocols, ICMP errors) are written with raw
//! sockets in the app namespace; they reach geowall through its TUN like
//! any other packet.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use geowall::engine::reply::{checksum, l4_checksum};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::{Net, addr, dns_query, echo, in_ns, sa, sd_rtn, tcp_exchange};

/// Everything under PRC jurisdiction by any layer (Agora's edges are CN by
/// the vendor layer wherever they sit), and one name blocked by domain.
const POLICY: &str = r#"
name = "adversarial"
default = "allow"

[[rule]]
name = "nothing to PRC jurisdiction"
action = "block"
block = "drop"
jurisdiction = { countries = ["CN", "HK", "MO"], layers = ["geo", "network", "owner", "vendor"], disputed = "any" }

[[rule]]
name = "not this name"
action = "block"
block = "drop"
domain = ["mail.google.com"]
"#;

/// The DNS server the engine asks (US in the test world).
const UPSTREAM: &str = "198.51.100.53";
/// The app's address on the TUN.
const APP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The app's IPv6 address on the TUN.
const APP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff01, 0, 0, 0, 0, 2);
/// A second US IPv6 server (names learned for one do not touch the other).
const US6_2: &str = "2001:db8:1::20";

fn v4(ip: &str) -> Ipv4Addr {
    ip.parse().expect("IPv4")
}

// ---- packets by hand -------------------------------------------------------

/// A transport segment with its checksum over the IPv4 pseudo-header.
fn l4(src: IpAddr, dst: IpAddr, proto: u8, mut seg: Vec<u8>, at: usize) -> Vec<u8> {
    let c = l4_checksum(src, dst, proto, &seg);
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    seg
}

fn udp_seg(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    l4(src.into(), dst.into(), 17, s, 6)
}

fn tcp_syn_seg(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[
        0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, 0x02, 0xFF, 0xFF, 0, 0, 0, 0,
    ]);
    s.extend_from_slice(payload);
    l4(src.into(), dst.into(), 6, s, 16)
}

/// An IPv4 packet: `frag` is the fragment offset in bytes, `more` the MF
/// flag.
fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    frag: usize,
    more: bool,
    body: &[u8],
) -> Vec<u8> {
    let off = (frag / 8) as u16 | if more { 0x2000 } else { 0 };
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&off.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// The pieces of `seg` cut at the byte offsets `cuts` (multiples of 8):
/// offset, bytes, and whether more follow.
fn pieces<'a>(seg: &'a [u8], cuts: &[usize]) -> Vec<(usize, &'a [u8], bool)> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(seg.len());
    bounds
        .windows(2)
        .map(|w| (w[0], &seg[w[0]..w[1]], w[1] < seg.len()))
        .collect()
}

/// `seg` cut at the byte offsets `cuts` (multiples of 8) into fragments.
fn fragments(dst: Ipv4Addr, proto: u8, id: u16, seg: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    pieces(seg, cuts)
        .into_iter()
        .map(|(at, body, more)| ipv4(APP, dst, proto, id, at, more, body))
        .collect()
}

/// Sends whole IP packets from the app namespace, headers included (raw
/// IPPROTO_RAW sockets; the family from each packet's version).
fn send_raw(app: &str, packets: &[Vec<u8>]) {
    in_ns(app, || {
        let raw = |d| {
            socket2::Socket::new(d, socket2::Type::RAW, Some(socket2::Protocol::from(255)))
                .expect("raw socket")
        };
        let (v4, v6) = (raw(socket2::Domain::IPV4), raw(socket2::Domain::IPV6));
        v4.set_broadcast(true).expect("broadcast");
        for p in packets {
            let (s, to) = if p[0] >> 4 == 6 {
                let d: [u8; 16] = p[24..40].try_into().expect("IPv6 header");
                (&v6, SocketAddr::from((Ipv6Addr::from(d), 0)))
            } else {
                (
                    &v4,
                    SocketAddr::from((Ipv4Addr::new(p[16], p[17], p[18], p[19]), 0)),
                )
            };
            s.send_to(p, &to.into()).expect("raw send");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// An IPv6 packet carrying one fragment: `frag` is the fragment offset in
/// bytes, `more` the M flag; `before` are extension headers placed ahead
/// of the fragment header (their first byte, the next header, is set here).
fn ipv6_fragment(
    dst: Ipv6Addr,
    proto: u8,
    id: u32,
    frag: usize,
    more: bool,
    before: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((before.len() + 8 + body.len()) as u16).to_be_bytes());
    h.push(if before.is_empty() { 44 } else { 60 });
    h.push(64);
    h.extend_from_slice(&APP6.octets());
    h.extend_from_slice(&dst.octets());
    if !before.is_empty() {
        h.push(44);
        h.extend_from_slice(&before[1..]);
    }
    h.extend_from_slice(&[proto, 0]);
    h.extend_from_slice(&(((frag as u16) & 0xFFF8) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// `seg` cut at the byte offsets `cuts` (multiples of 8) into IPv6
/// fragments.
fn fragments6(dst: Ipv6Addr, proto: u8, id: u32, seg: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    pieces(seg, cuts)
        .into_iter()
        .map(|(at, body, more)| ipv6_fragment(dst, proto, id, at, more, &[], body))
        .collect()
}

/// One datagram from the app; errors (no route, refused) are ignored by
/// the callers: what counts is what reaches the far side.
fn udp_send(app: &str, to: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    in_ns(app, || {
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind)?;
        s.set_broadcast(true)?;
        s.send_to(payload, to).map(drop)
    })
}

/// Waits (a few seconds at most) until IPv6 goes through end to end: the
/// links' neighbour discovery must settle before a lone datagram can pass.
fn warm_up_ipv6(app: &str) {
    let ok = in_ns(app, || {
        let s = UdpSocket::bind("[::]:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        (0..25).any(|_| {
            let _ = s.send_to(b"warm", sa(addr::US6, 6201));
            s.recv_from(&mut buf).is_ok()
        })
    });
    assert!(ok, "IPv6 through geowall never worked");
}

/// The first UDP payload a capture's client sends from `sport`.
fn first_udp_payload(file: &str, sport: u16) -> Vec<u8> {
    use geowall::wire::packet::{Transport, parse_ip, strip_link};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ndpi")
        .join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cap = geowall::wire::capture::Capture::new(&bytes).expect("capture");
    for f in cap.flatten() {
        let Ok(ip) = strip_link(f.link, f.data) else {
            continue;
        };
        if let Ok(p) = parse_ip(ip)
            && let Transport::Udp {
                sport: s, payload, ..
            } = p.transport
            && s == sport
        {
            return payload.to_vec();
        }
    }
    panic!("no UDP payload from port {sport} in {file}")
}

// ---- the world -------------------------------------------------------------

static FLIPS: AtomicUsize = AtomicUsize::new(0);

fn rec(name: &str, ip: &str) -> Record {
    let n = Name::from_ascii(format!("{name}.")).expect("name");
    Record::from_rdata(n, 1, RData::A(A(v4(ip))))
}

/// 192.0.0.170 and 192.0.0.171 under the test network's NAT64 prefix.
const NAT64_WKA_170: &str = "2001:db8:6464:1:c0:0:aa00:0";
const NAT64_WKA_171: &str = "2001:db8:6464:1:c0:0:ab00:0";
/// 203.0.113.10 (CN) and 198.51.100.10 (US) under the same prefix.
const NAT64_CN: &str = "2001:db8:6464:1:cb:71:a00:0";
const NAT64_US: &str = "2001:db8:6464:1:c6:3364:a00:0";

/// The vendor edge name `flip.example` turns into at its second answer.
const EDGE: &str = "104-166-161-75.edge.agora.io";

/// `flip.example` is a plain US name at the first answer; from the second
/// on it is a CNAME to an Agora edge name on the same US address (CN by
/// the vendor layer, allowed by every other layer).
fn zone(name: &str, t: RecordType) -> Vec<Record> {
    match (name, t) {
        ("flip.example", RecordType::A) => {
            if FLIPS.fetch_add(1, Ordering::SeqCst) == 0 {
                vec![rec(name, addr::US2)]
            } else {
                let owner = Name::from_ascii("flip.example.").expect("name");
                let target = Name::from_ascii(format!("{EDGE}.")).expect("name");
                vec![
                    Record::from_rdata(owner, 1, RData::CNAME(CNAME(target))),
                    rec(EDGE, addr::US2),
                ]
            }
        }
        ("ok.example", RecordType::A) => vec![rec(name, addr::US)],
        // RFC 7050: the network's NAT64 prefix is 2001:db8:6464:1::/64
        // (RFC 6052's /64 layout: the IPv4 address in bytes 9 to 12).
        ("ipv4only.arpa", RecordType::AAAA) => [NAT64_WKA_170, NAT64_WKA_171]
            .iter()
            .map(|ip| {
                let n = Name::from_ascii("ipv4only.arpa.").expect("name");
                Record::from_rdata(n, 60, RData::AAAA(AAAA(ip.parse().expect("IPv6"))))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn start(net: &mut Net) {
    let (policy, world) = net.policy_and_world(POLICY);
    net.add_server_address(UPSTREAM);
    net.dns_server(sa(UPSTREAM, 53), zone);
    net.start_geowall(
        &world,
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--dns-upstream",
            &format!("udp:{UPSTREAM}"),
        ],
    );
}

/// Waits for the last packets to land, then checks the counts: zero for
/// every blocked destination, some for every allowed one.
fn settle_and_check(net: &Net, blocked: &[(&str, u8, u16)], allowed: &[(&str, u8, u16)]) {
    std::thread::sleep(Duration::from_millis(300));
    check_counts(net, blocked, allowed);
}

/// As [`settle_and_check`], after the engine's reassembly time has run out
/// (plus a margin): a datagram never completed would have been discarded
/// by then, and one wrongly released after it would be counted.
fn settle_past_reassembly_and_check(
    net: &Net,
    blocked: &[(&str, u8, u16)],
    allowed: &[(&str, u8, u16)],
) {
    let wait = geowall::engine::frag::FragLimits::default().timeout_ns / 1_000_000 + 500;
    std::thread::sleep(Duration::from_millis(wait));
    check_counts(net, blocked, allowed);
}

fn check_counts(net: &Net, blocked: &[(&str, u8, u16)], allowed: &[(&str, u8, u16)]) {
    for &(ip, proto, port) in blocked {
        assert_eq!(
            net.count(ip, proto, port),
            0,
            "packets reached blocked {ip} proto {proto} port {port}"
        );
    }
    for &(ip, proto, port) in allowed {
        assert!(
            net.count(ip, proto, port) > 0,
            "nothing reached allowed {ip} proto {proto} port {port}: the case proves nothing; seen: {:?}; events: {:#?}",
            net.counts.lock().map(|c| c.clone()).unwrap_or_default(),
            net.events()
        );
    }
}

// ---- the cases -------------------------------------------------------------

/// IPv4 fragments: a tiny first fragment that hides the TCP flags and the
/// UDP payload, out-of-order fragments, overlapping fragments (dropped
/// whole), fragments never completed (nothing leaves). Reassembly happens
/// before any verdict; nothing is forwarded as a fragment.
#[test]
fn fragments_are_judged_whole_or_not_at_all() {
    if !support::root_or_skip("fragments_are_judged_whole_or_not_at_all") {
        return;
    }
    let mut net = Net::new();
    for ip in [addr::US, addr::CN, addr::US2] {
        for port in [6000, 6001, 6002, 6003, 9999] {
            net.udp_server(sa(ip, port), echo);
        }
        net.tcp_server(sa(ip, 7000), echo);
    }
    start(&mut net);
    let app = net.app.clone();
    let payload: Vec<u8> = (0..64u8).collect();
    let (us, cn, us2) = (v4(addr::US), v4(addr::CN), v4(addr::US2));

    // Tiny first fragment (8 bytes: the UDP header and nothing else).
    let mut p = Vec::new();
    for (i, dst) in [us, cn].into_iter().enumerate() {
        let seg = udp_seg(APP, dst, 40_000, 6000, &payload);
        p.extend(fragments(dst, 17, 100 + i as u16, &seg, &[8, 40]));
    }
    // An Agora SD-RTN probe to a US address, its signature only in the
    // later fragments: seen whole, it is the vendor's, and blocked.
    let probe = sd_rtn("104-166-161-75.edge.agora.io");
    let seg = udp_seg(APP, us2, 40_001, 9999, &probe);
    p.extend(fragments(us2, 17, 110, &seg, &[8, 16]));
    // A TCP SYN to CN whose first fragment (8 bytes) holds only the ports.
    let syn = tcp_syn_seg(APP, cn, 40_002, 7000, &[]);
    p.extend(fragments(cn, 6, 120, &syn, &[8]));
    // Out of order: last fragment first.
    for (i, dst) in [us, cn].into_iter().enumerate() {
        let seg = udp_seg(APP, dst, 40_003, 6002, &payload);
        let mut f = fragments(dst, 17, 130 + i as u16, &seg, &[16, 48]);
        f.reverse();
        p.extend(f);
    }
    // Overlapping: the second fragment rewrites bytes the first carried
    // (here, the destination port); such datagrams are dropped whole.
    let seg = udp_seg(APP, us, 40_004, 6001, &payload);
    let mut rewritten = seg.clone();
    rewritten[2..4].copy_from_slice(&6003u16.to_be_bytes());
    p.push(ipv4(APP, us, 17, 140, 0, true, &seg[..24]));
    p.push(ipv4(APP, us, 17, 140, 0, true, &rewritten[..16]));
    p.push(ipv4(APP, us, 17, 140, 24, false, &seg[24..]));
    // Never completed: the first fragment alone.
    let seg = udp_seg(APP, us, 40_005, 6003, &payload);
    p.push(ipv4(APP, us, 17, 150, 0, true, &seg[..32]));
    send_raw(&app, &p);

    // Allowed traffic still flows.
    let r = in_ns(&app, || {
        tcp_exchange(sa(addr::US, 7000), b"after the fragments")
    });
    assert_eq!(r.expect("TCP to US").as_slice(), b"after the fragments");
    settle_past_reassembly_and_check(
        &net,
        &[
            (addr::CN, 17, 6000),
            (addr::US2, 17, 9999),
            (addr::CN, 6, 7000),
            (addr::CN, 17, 6002),
            (addr::US, 17, 6001),
            (addr::US, 17, 6003),
        ],
        &[
            (addr::US, 17, 6000),
            (addr::US, 17, 6002),
            (addr::US, 6, 7000),
        ],
    );
}

/// The IPv6 twin of the fragments case: a tiny first fragment, fragments
/// out of order, overlapping (dropped whole), never completed, an atomic
/// fragment (RFC 6946), a fragment header behind a destination-options
/// header, a TCP SYN in pieces and an SD-RTN probe whose signature sits in
/// the later fragments. Reassembled before any verdict; nothing leaves as
/// a fragment.
#[test]
fn ipv6_fragments_are_judged_whole_or_not_at_all() {
    if !support::root_or_skip("ipv6_fragments_are_judged_whole_or_not_at_all") {
        return;
    }
    let mut net = Net::new();
    net.add_server_address(US6_2);
    for ip in [addr::US6, addr::CN6] {
        for port in 6300..=6305 {
            net.udp_server(sa(ip, port), echo);
        }
        net.tcp_server(sa(ip, 7000), echo);
    }
    net.udp_server(sa(addr::US6, 6201), echo);
    net.udp_server(sa(US6_2, 9999), echo);
    start(&mut net);
    let app = net.app.clone();
    warm_up_ipv6(&app);
    let payload: Vec<u8> = (0..64u8).collect();
    let v6 = |s: &str| -> Ipv6Addr { s.parse().expect("IPv6") };
    let (us, cn, us2) = (v6(addr::US6), v6(addr::CN6), v6(US6_2));

    let mut p = Vec::new();
    // Tiny first fragment (8 bytes: the UDP header and nothing else).
    for (i, dst) in [us, cn].into_iter().enumerate() {
        let seg = udp_seg(APP6, dst, 41_000, 6300, &payload);
        p.extend(fragments6(dst, 17, 600 + i as u32, &seg, &[8, 40]));
    }
    // Out of order: last fragment first.
    for (i, dst) in [us, cn].into_iter().enumerate() {
        let seg = udp_seg(APP6, dst, 41_002, 6302, &payload);
        let mut f = fragments6(dst, 17, 610 + i as u32, &seg, &[16, 48]);
        f.reverse();
        p.extend(f);
    }
    // Overlapping: the second fragment rewrites the destination port.
    let seg = udp_seg(APP6, us, 41_001, 6301, &payload);
    let mut rewritten = seg.clone();
    rewritten[2..4].copy_from_slice(&6303u16.to_be_bytes());
    p.push(ipv6_fragment(us, 17, 620, 0, true, &[], &seg[..24]));
    p.push(ipv6_fragment(us, 17, 620, 0, true, &[], &rewritten[..16]));
    p.push(ipv6_fragment(us, 17, 620, 24, false, &[], &seg[24..]));
    // Never completed: the first fragment alone.
    let seg = udp_seg(APP6, us, 41_003, 6303, &payload);
    p.push(ipv6_fragment(us, 17, 630, 0, true, &[], &seg[..32]));
    // Atomic fragments: offset 0, no more to come; judged as the datagram.
    for (i, dst) in [us, cn].into_iter().enumerate() {
        let seg = udp_seg(APP6, dst, 41_004, 6304, &payload);
        p.push(ipv6_fragment(dst, 17, 640 + i as u32, 0, false, &[], &seg));
    }
    // A destination-options header (PadN) ahead of the fragment header.
    let dest_opts = [0, 0, 1, 4, 0, 0, 0, 0];
    let seg = udp_seg(APP6, cn, 41_005, 6305, &payload);
    p.push(ipv6_fragment(cn, 17, 650, 0, true, &dest_opts, &seg[..8]));
    p.push(ipv6_fragment(cn, 17, 650, 8, false, &dest_opts, &seg[8..]));
    // A TCP SYN to CN whose first fragment (8 bytes) holds only the ports.
    let syn = tcp_syn_seg(APP6, cn, 41_006, 7000, &[]);
    p.extend(fragments6(cn, 6, 660, &syn, &[8]));
    // Agora's SD-RTN probe to a US address, its signature only in the
    // later fragments: seen whole, it is the vendor's, and blocked.
    let probe = sd_rtn("104-166-161-75.edge.agora.io");
    let seg = udp_seg(APP6, us2, 41_007, 9999, &probe);
    p.extend(fragments6(us2, 17, 670, &seg, &[8, 16]));
    send_raw(&app, &p);

    // Allowed traffic still flows.
    let r = in_ns(&app, || {
        tcp_exchange(sa(addr::US6, 7000), b"after the IPv6 fragments")
    });
    assert_eq!(
        r.expect("TCP to US over IPv6").as_slice(),
        b"after the IPv6 fragments"
    );
    let mut blocked = vec![
        (addr::CN6, 17, 6300),
        (addr::CN6, 17, 6302),
        (addr::US6, 17, 6301),
        (addr::US6, 17, 6303),
        (addr::CN6, 17, 6304),
        (addr::CN6, 17, 6305),
        (addr::CN6, 6, 7000),
        (US6_2, 17, 9999),
    ];
    // Nothing of any kind, fragments included, to the blocked servers.
    blocked.extend([(addr::CN6, 0, 0), (US6_2, 0, 0)]);
    settle_past_reassembly_and_check(
        &net,
        &blocked,
        &[
            (addr::US6, 17, 6300),
            (addr::US6, 17, 6302),
            (addr::US6, 17, 6304),
            (addr::US6, 6, 7000),
        ],
    );
}

/// Data on a SYN (TCP Fast Open), raw IP protocols (GRE, ESP, SCTP, 253),
/// ICMP errors, broadcast and multicast: none of it leaves, to a blocked
/// server or any other. geowall relays TCP, UDP and ICMP echo only.
#[test]
fn odd_packets_never_leave() {
    if !support::root_or_skip("odd_packets_never_leave") {
        return;
    }
    let mut net = Net::new();
    for ip in [addr::US, addr::CN] {
        net.tcp_server(sa(ip, 7000), echo);
    }
    start(&mut net);
    let app = net.app.clone();
    let (us, cn) = (v4(addr::US), v4(addr::CN));
    let mut p = Vec::new();
    // A SYN carrying a TLS ClientHello, to CN.
    let hello = support::client_hello("tfo.example");
    p.push(ipv4(
        APP,
        cn,
        6,
        200,
        0,
        false,
        &tcp_syn_seg(APP, cn, 41_000, 7000, &hello),
    ));
    // Raw IP protocols, to CN and to US.
    for (i, proto) in [47u8, 50, 132, 253].into_iter().enumerate() {
        for dst in [us, cn] {
            p.push(ipv4(APP, dst, proto, 210 + i as u16, 0, false, &[0x42; 32]));
        }
    }
    // ICMP errors (destination unreachable, time exceeded) toward both.
    for dst in [us, cn] {
        for kind in [3u8, 11] {
            let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&ipv4(dst, APP, 17, 1, 0, false, &[0; 8]));
            let c = checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            p.push(ipv4(APP, dst, 1, 230, 0, false, &icmp));
        }
    }
    // Limited broadcast.
    p.push(ipv4(
        APP,
        Ipv4Addr::BROADCAST,
        17,
        240,
        0,
        false,
        &udp_seg(APP, Ipv4Addr::BROADCAST, 41_001, 6100, b"anyone?"),
    ));
    send_raw(&app, &p);
    // Multicast through ordinary sockets: mDNS and SSDP, v4 and v6.
    let _ = udp_send(&app, sa("224.0.0.251", 5353), b"mdns");
    let _ = udp_send(&app, sa("239.255.255.250", 1900), b"ssdp");
    let _ = udp_send(&app, sa("ff0e::fb", 5353), b"mdns6");
    let r = in_ns(&app, || tcp_exchange(sa(addr::US, 7000), b"still fine"));
    assert_eq!(r.expect("TCP to US").as_slice(), b"still fine");
    settle_and_check(
        &net,
        &[
            (addr::CN, 6, 7000),
            (addr::CN, 0, 0),
            (addr::US, 0, 0),
            (addr::CN, 1, 0),
            (addr::US, 1, 0),
            ("255.255.255.255", 17, 6100),
            ("224.0.0.251", 17, 5353),
            ("239.255.255.250", 17, 1900),
            ("ff0e::fb", 17, 5353),
        ],
        &[(addr::US, 6, 7000)],
    );
}

/// Real QUIC and DTLS handshakes (from captures) to CN, QUIC naming a
/// blocked server to an allowed address, and SD-RTN on a port Agora does not
/// use: all blocked; the same handshakes to an allowed server pass.
#[test]
fn quic_dtls_and_sd_rtn_are_seen_on_any_port() {
    if !support::root_or_skip("quic_dtls_and_sd_rtn_are_seen_on_any_port") {
        return;
    }
    let mut net = Net::new();
    for ip in [addr::US, addr::CN, addr::US2] {
        for port in [443, 8443, 11111, 5555] {
            net.udp_server(sa(ip, port), |_| Vec::new());
        }
    }
    start(&mut net);
    let app = net.app.clone();
    // Flow 1 of quic.pcap names mail.google.com (blocked by domain here);
    // flow 2 names www.youtube.com.
    let quic_blocked = first_udp_payload("quic.pcap", 57_833);
    let quic_ok = first_udp_payload("quic.pcap", 35_236);
    let dtls = first_udp_payload("dtls.pcap", 40_983);
    for (to, what) in [
        (sa(addr::CN, 443), &quic_ok),
        // (Another address than the allowed flows': a server name seen
        // in a flow sticks to its address, for later flows too.)
        (sa(addr::DE, 8443), &quic_blocked),
        (sa(addr::US, 443), &quic_ok),
        (sa(addr::CN, 11111), &dtls),
        (sa(addr::US, 11111), &dtls),
        (sa(addr::US2, 5555), &sd_rtn("104-166-161-75.edge.agora.io")),
    ] {
        udp_send(&app, to, what).expect("send");
    }
    settle_and_check(
        &net,
        &[
            (addr::CN, 17, 443),
            (addr::DE, 17, 8443),
            (addr::CN, 17, 11111),
            (addr::US2, 17, 5555),
        ],
        &[(addr::US, 17, 443), (addr::US, 17, 11111)],
    );
    let events = net.events();
    let blocked = |server: &str| {
        events
            .iter()
            .any(|e| e["kind"] == "blocked" && e["server"] == server)
    };
    assert!(blocked(&format!("{}:8443", addr::DE)), "{events:#?}");
    assert!(blocked(&format!("{}:5555", addr::US2)), "{events:#?}");
}

/// DNS to a resolver in a blocked jurisdiction, over UDP and TCP, is
/// answered by geowall through its own upstream: not a packet to the
/// blocked resolver. DNS over TLS and over HTTPS to it are blocked as the
/// TCP flows they are.
#[test]
fn dns_to_a_blocked_resolver_never_reaches_it() {
    if !support::root_or_skip("dns_to_a_blocked_resolver_never_reaches_it") {
        return;
    }
    let mut net = Net::new();
    for port in [853, 443] {
        net.tcp_server(sa(addr::CN, port), echo);
    }
    start(&mut net);
    let app = net.app.clone();
    in_ns(&app, || {
        for tcp in [false, true] {
            let m = dns_query(sa(addr::CN, 53), "ok.example", RecordType::A, tcp)
                .expect("answered by geowall");
            assert_eq!(m.answers.len(), 1, "tcp={tcp}: {m:?}");
        }
        for port in [853, 443] {
            let hello = support::client_hello("dns.example");
            assert!(tcp_exchange(sa(addr::CN, port), &hello).is_err(), "{port}");
        }
    });
    settle_and_check(
        &net,
        &[
            (addr::CN, 17, 53),
            (addr::CN, 6, 53),
            (addr::CN, 6, 853),
            (addr::CN, 6, 443),
        ],
        &[(UPSTREAM, 17, 53)],
    );
}

/// IPv6 addresses that embed a CN IPv4 address (NAT64, 6to4, Teredo,
/// IPv4-compatible, IPv4-mapped): the embedded address's jurisdiction
/// counts. The same forms embedding a US address pass.
#[test]
fn ipv6_addresses_embedding_a_blocked_ipv4_address_are_blocked() {
    if !support::root_or_skip("ipv6_addresses_embedding_a_blocked_ipv4_address_are_blocked") {
        return;
    }
    let mut net = Net::new();
    net.udp_server(sa(addr::US6, 6201), echo);
    start(&mut net);
    let app = net.app.clone();
    warm_up_ipv6(&app);
    // 203.0.113.10 (CN) = cb00:710a; 198.51.100.10 (US) = c633:640a.
    // Teredo keeps the client address inverted.
    let blocked = [
        "64:ff9b::cb00:710a",
        "2002:cb00:710a::1",
        "2001:0:4136:e378:8000:63bf:34ff:8ef5",
        "::cb00:710a",
        "::ffff:203.0.113.10",
    ];
    let allowed = [
        "64:ff9b::c633:640a",
        "2002:c633:640a::1",
        "2001:0:4136:e378:8000:63bf:39cc:9bf5",
    ];
    for ip in blocked.iter().chain(&allowed) {
        let _ = udp_send(&app, sa(ip, 6200), b"embedded");
    }
    let mut b: Vec<(&str, u8, u16)> = blocked.iter().map(|ip| (*ip, 17, 6200)).collect();
    // The mapped form travels as plain IPv4.
    b.push((addr::CN, 17, 6200));
    let a: Vec<(&str, u8, u16)> = allowed.iter().map(|ip| (*ip, 17, 6200)).collect();
    settle_and_check(&net, &b, &a);
}

/// An address whose name changes: `flip.example` first answers a US
/// address (allowed by every layer), then becomes a CNAME to an Agora edge
/// name on the same address. A connection after the change is judged by
/// the current answer (CN by the vendor layer), although the app's own
/// hello still says `flip.example` and the address alone would allow; the
/// address is also filtered out of the second answer.
#[test]
fn an_address_that_changes_jurisdiction_is_judged_at_connect() {
    if !support::root_or_skip("an_address_that_changes_jurisdiction_is_judged_at_connect") {
        return;
    }
    let mut net = Net::new();
    for port in [7443, 7444] {
        net.tcp_server(sa(addr::US2, port), echo);
    }
    start(&mut net);
    let app = net.app.clone();
    let resolver = sa("192.0.2.53", 53);
    in_ns(&app, || {
        let first = dns_query(resolver, "flip.example", RecordType::A, false).expect("answer");
        assert_eq!(first.answers.len(), 1, "the US address: {first:?}");
        let hello = support::client_hello("flip.example");
        let r = tcp_exchange(sa(addr::US2, 7443), &hello).expect("before the change");
        assert_eq!(r, hello);
        // The TTL (1 s) runs out; the name now leads to the vendor's edge.
        std::thread::sleep(Duration::from_millis(1_500));
        let second = dns_query(resolver, "flip.example", RecordType::A, false).expect("answer");
        let kept: Vec<_> = second
            .answers
            .iter()
            .filter(|r| matches!(r.data, RData::A(_)))
            .collect();
        assert!(kept.is_empty(), "the edge's address filtered: {second:?}");
        // An app that connects to the address anyway (a stale cache, its
        // own resolver) is judged by what the address is now.
        assert!(tcp_exchange(sa(addr::US2, 7444), &hello).is_err());
    });
    settle_and_check(&net, &[(addr::US2, 6, 7444)], &[(addr::US2, 6, 7443)]);
    assert!(FLIPS.load(Ordering::SeqCst) >= 2);
}

/// RFC 7050 end to end: the network's NAT64 prefix (a /64, not configured
/// anywhere) is learned when the app asks geowall's resolver for
/// `ipv4only.arpa`; from then on the address embedding a CN server under
/// it gets 0 packets, while the one embedding a US server answers. (The
/// prefix is outside the test world, so without discovery both addresses
/// are unknown and the policy allows them.)
#[test]
fn a_nat64_prefix_discovered_from_ipv4only_arpa_judges_by_the_embedded_address() {
    let test = "a_nat64_prefix_discovered_from_ipv4only_arpa_judges_by_the_embedded_address";
    if !support::root_or_skip(test) {
        return;
    }
    let mut net = Net::new();
    for a in [NAT64_CN, NAT64_US] {
        net.add_server_address(a);
        net.udp_server(sa(a, 7000), echo);
    }
    start(&mut net);
    let app = net.app.clone();
    let answer = in_ns(&app, || {
        dns_query(
            sa("192.0.2.53", 53),
            "ipv4only.arpa",
            RecordType::AAAA,
            false,
        )
    })
    .expect("an answer for ipv4only.arpa");
    assert_eq!(answer.answers.len(), 2, "{answer:?}");
    let us = in_ns(&app, || {
        // Neighbour discovery on the links settles within a few tries.
        (0..10)
            .map(|_| support::udp_exchange(sa(NAT64_US, 7000), b"nat64?"))
            .find(Result::is_ok)
            .unwrap_or_else(|| Err(std::io::Error::other("no answer in 10 tries")))
    });
    assert_eq!(us.expect("the US server through NAT64"), b"nat64?");
    for _ in 0..3 {
        let _ = udp_send(&app, sa(NAT64_CN, 7000), b"nat64?");
    }
    settle_and_check(&net, &[(NAT64_CN, 17, 7000)], &[(NAT64_US, 17, 7000)]);
}

/// The `strict` preset's own DNS rules, where the address alone would
/// allow: DNS over TLS (port 853) and DNS over HTTPS to a public resolver
/// by name (`dns.google` in the ClientHello) to a US address reach it with
/// 0 packets; ordinary HTTPS to another US address goes through (not to
/// the same one: the name seen in the refused hello stays with its address
/// for a while, and judges it).
#[test]
fn strict_refuses_encrypted_dns_around_geowall_to_an_allowed_address() {
    let test = "strict_refuses_encrypted_dns_around_geowall_to_an_allowed_address";
    if !support::root_or_skip(test) {
        return;
    }
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(POLICY);
    for port in [853, 443] {
        net.tcp_server(sa(addr::US, port), echo);
    }
    net.tcp_server(sa(addr::US2, 443), echo);
    net.start_geowall(&world, &["--preset", "strict"]);
    let app = net.app.clone();
    in_ns(&app, || {
        let dot = support::client_hello("resolver.example");
        assert!(tcp_exchange(sa(addr::US, 853), &dot).is_err(), "DoT");
        let doh = support::client_hello("dns.google");
        assert!(
            tcp_exchange(sa(addr::US, 443), &doh).is_err(),
            "DoH by name"
        );
    });
    let before = net.count(addr::US, 6, 443);
    assert_eq!(
        before, 0,
        "nothing of the DoH connection reached the server"
    );
    in_ns(&app, || {
        let web = support::client_hello("www.example.org");
        assert_eq!(tcp_exchange(sa(addr::US2, 443), &web).expect("HTTPS"), web);
    });
    settle_and_check(
        &net,
        &[(addr::US, 6, 853), (addr::US, 6, 443)],
        &[(addr::US2, 6, 443)],
    );
}
