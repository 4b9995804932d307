//! Engine simulation tests: packets built here, simulated time, the test
//! world of tests/fixtures/world.csv. No TUN, no socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::classify::{Protocol, Traffic};
use crate::intel::catalog::Catalog;
use crate::intel::world::{World, WorldBuilder};
use crate::policy::{Answered, Policy};

const S: u64 = 1_000_000_000;

fn engine(preset: &str, cfg: EngineConfig, ids: &[(&str, &str)]) -> (Engine, Arc<PolicyHandle>) {
    let mut b = WorldBuilder::new();
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv");
    b.add_fixture_csv(&csv, &mut |_| {}).expect("fixture");
    let world = World::from_vec(b.build(&mut |_| {}).expect("builds").0).expect("loads");
    let catalog = Catalog::shipped().expect("catalog");
    let policy = Arc::new(PolicyHandle::new(
        Policy::preset(preset, &catalog).expect("preset"),
    ));
    let leak = (!ids.is_empty()).then(|| {
        LeakDetector::new(
            &ids.iter()
                .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
        .expect("ids")
    });
    (
        Engine::new(cfg, Intel::new(Arc::new(world)), Arc::clone(&policy), leak),
        policy,
    )
}

/// An engine (default settings) judging with the policy `toml`.
fn engine_with(toml: &str) -> (Engine, Arc<PolicyHandle>) {
    let cat = Catalog::shipped().expect("catalog");
    let p = Policy::parse(Path::new("p.toml"), toml, None, &cat).expect("policy");
    let (e, handle) = engine("default", EngineConfig::default(), &[]);
    handle.replace(p);
    (e, handle)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn udp(from: &str, to: &str, payload: &[u8]) -> Vec<u8> {
    reply::udp_packet(sa(from), sa(to), payload).expect("packet")
}

/// A bare TCP SYN, IPv4 or IPv6 (checksums left zero: the engine's stack
/// trusts the local kernel's).
fn tcp_syn(from: &str, to: &str) -> Vec<u8> {
    let (f, t) = (sa(from), sa(to));
    let mut p = match (f.ip(), t.ip()) {
        (IpAddr::V4(fi), IpAddr::V4(ti)) => {
            let mut p = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
            p.extend_from_slice(&fi.octets());
            p.extend_from_slice(&ti.octets());
            p
        }
        (IpAddr::V6(fi), IpAddr::V6(ti)) => {
            let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
            p.extend_from_slice(&fi.octets());
            p.extend_from_slice(&ti.octets());
            p
        }
        _ => panic!("one family"),
    };
    p.extend_from_slice(&f.port().to_be_bytes());
    p.extend_from_slice(&t.port().to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xFF, 0xFF, 0, 0, 0, 0]);
    p
}

fn drain(e: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| e.poll_output()).collect()
}

fn events(out: &[Output]) -> Vec<&Event> {
    out.iter()
        .filter_map(|o| {
            if let Output::Event(e) = o {
                Some(&**e)
            } else {
                None
            }
        })
        .collect()
}

/// The datagrams the engine sent upstream, in order.
fn udp_sent(out: &[Output]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|o| match o {
            Output::UdpSend { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

fn sent_upstream(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| {
            matches!(
                o,
                Output::UdpOpen { .. } | Output::UdpSend { .. } | Output::EchoRequest { .. }
            )
        })
        .count()
}

/// An ICMP error the upstream socket reported reaches the app as the
/// server's own error would, for each reason and both families: from the
/// server's address, the right type and code, quoting the flow's addresses
/// and ports (what the app's kernel matches it to its socket by). A flow
/// geowall does not have gets nothing.
#[test]
fn an_unreachable_destination_is_told_to_the_app_as_icmp() {
    let cases = [
        (
            "192.0.2.200:40000",
            "198.51.100.7:5000",
            Unreachable::Port,
            3,
            3,
        ),
        (
            "192.0.2.200:40000",
            "198.51.100.7:5000",
            Unreachable::Host,
            3,
            1,
        ),
        (
            "192.0.2.200:40000",
            "198.51.100.7:5000",
            Unreachable::Network,
            3,
            0,
        ),
        (
            "[2001:db8::2]:40000",
            "[2001:db8:1::7]:5000",
            Unreachable::Port,
            1,
            4,
        ),
        (
            "[2001:db8::2]:40000",
            "[2001:db8:1::7]:5000",
            Unreachable::Host,
            1,
            3,
        ),
    ];
    for (app, server, why, kind, code) in cases {
        let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
        e.handle_tun(&udp(app, server, b"hello"), S);
        let out = drain(&mut e);
        let flow = events(&out)[0].flow;
        e.handle_udp_unreachable(flow, why, S + 1);
        let out = drain(&mut e);
        let [Output::ToTun(pkt)] = out.as_slice() else {
            panic!("{why:?}: one packet: {out:?}")
        };
        let p = parse_ip(pkt).expect("parses");
        assert_eq!((p.src, p.dst), (sa(server).ip(), sa(app).ip()), "{why:?}");
        let Transport::Icmp {
            kind: k, code: c, ..
        } = p.transport
        else {
            panic!("{why:?}: icmp: {p:?}")
        };
        assert_eq!((k, c), (kind, code), "{why:?} {server}");
        let quoted = parse_ip(&p.l4[8..]).expect("quotes an IP packet");
        assert_eq!((quoted.src, quoted.dst), (sa(app).ip(), sa(server).ip()));
        let Transport::Udp { sport, dport, .. } = quoted.transport else {
            panic!("quotes the UDP header")
        };
        assert_eq!((sport, dport), (40_000, 5000));
        let ok = match p.src {
            IpAddr::V4(_) => reply::checksum(p.l4),
            IpAddr::V6(_) => reply::l4_checksum(p.src, p.dst, 58, p.l4),
        };
        assert_eq!(ok, 0, "valid ICMP checksum");
        assert_eq!(e.counters.udp_unreachable, 1);
        // The flow stays: the app decides.
        e.handle_tun(&udp(app, server, b"again"), S + 2);
        assert_eq!(
            drain(&mut e),
            vec![Output::UdpSend {
                flow,
                payload: b"again".to_vec()
            }]
        );
        e.handle_udp_unreachable(flow + 1000, why, S + 3);
        assert!(drain(&mut e).is_empty());
        assert_eq!(e.counters.udp_unreachable, 1);
    }
}

/// An ICMP error the upstream ping socket reported about one echo request
/// reaches the app as that error, quoting that request (its identifier and
/// sequence number, what the app's kernel matches it by), from the
/// server's address.
#[test]
fn an_unreachable_ping_is_told_to_the_app_as_icmp() {
    for (app, server, why, kind, code) in [
        ("192.0.2.200", "198.51.100.9", Unreachable::Host, 3, 1),
        ("2001:db8::2", "2001:db8:1::9", Unreachable::Network, 1, 0),
    ] {
        let (app, server): (IpAddr, IpAddr) =
            (app.parse().expect("ip"), server.parse().expect("ip"));
        let (mut e, _) = engine("default", EngineConfig::default(), &[]);
        let req = reply::echo_packet(app, server, true, 0x1234, 7, b"ping").expect("request");
        e.handle_tun(&req, S);
        let out = drain(&mut e);
        let flow = events(&out)[0].flow;
        e.handle_echo_unreachable(flow, 7, why, S + 1);
        let out = drain(&mut e);
        let [Output::ToTun(pkt)] = out.as_slice() else {
            panic!("{why:?}: one packet: {out:?}")
        };
        let p = parse_ip(pkt).expect("parses");
        assert_eq!((p.src, p.dst), (server, app));
        let Transport::Icmp {
            kind: k, code: c, ..
        } = p.transport
        else {
            panic!("icmp: {p:?}")
        };
        assert_eq!((k, c), (kind, code), "{why:?}");
        let quoted = parse_ip(&p.l4[8..]).expect("quotes an IP packet");
        assert_eq!((quoted.src, quoted.dst), (app, server));
        let Transport::Icmp {
            echo_id, payload, ..
        } = quoted.transport
        else {
            panic!("quotes the echo request")
        };
        assert_eq!(echo_id, Some(0x1234));
        assert_eq!(payload.get(2..4), Some(&[0, 7][..]), "its sequence number");
        assert_eq!(e.counters.echo_unreachable, 1);
        // A flow that is not an echo flow gets nothing.
        e.handle_echo_unreachable(flow + 100, 7, why, S + 2);
        assert!(drain(&mut e).is_empty());
    }
}

/// With no upstream route for a family, a new flow to an internet address
/// of it is refused at its first packet with "network unreachable" (what
/// the system says to a `connect()` with no route), TCP, UDP and echo
/// alike, and nothing is opened; the other family, local addresses and
/// DNS queries go on; once the route is back, so are new flows.
#[test]
fn a_family_without_an_upstream_route_is_unreachable_at_the_first_packet() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    e.set_upstream_routes(UpstreamRoutes {
        v4: true,
        v6: false,
    });
    let mut echo6 = vec![0x60, 0, 0, 0, 0, 12, 58, 64];
    for a in ["2001:db8::2", "2001:db8:1::7"] {
        let a: std::net::Ipv6Addr = a.parse().expect("v6");
        echo6.extend_from_slice(&a.octets());
    }
    echo6.extend_from_slice(&[128, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g']);
    let refused = [
        tcp_syn("[2001:db8::2]:40000", "[2001:db8:1::7]:443"),
        udp("[2001:db8::2]:40001", "[2001:db8:1::7]:443", b"quic?"),
        echo6,
    ];
    for (i, pkt) in refused.iter().enumerate() {
        e.handle_tun(pkt, S + i as u64);
        let out = drain(&mut e);
        let [Output::ToTun(r)] = out.as_slice() else {
            panic!("packet {i}: one answer, nothing else: {out:?}")
        };
        let p = parse_ip(r).expect("parses");
        let Transport::Icmp { kind, code, .. } = p.transport else {
            panic!("packet {i}: ICMPv6: {p:?}")
        };
        assert_eq!((kind, code), (1, 0), "packet {i}: no route to destination");
        assert_eq!(p.dst, sa("[2001:db8::2]:0").ip());
        assert_eq!(&p.l4[8..], pkt.as_slice(), "packet {i}: quoted whole");
    }
    assert_eq!(e.counters.no_route, 3);
    assert_eq!(e.open_flows().count(), 0, "nothing opened");
    // IPv4, a local IPv6 address and a DNS query over IPv6 go on.
    e.handle_tun(&tcp_syn("192.0.2.200:40000", "198.51.100.7:443"), 2 * S);
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(o, Output::ToTun(p) if parse_ip(p).is_ok_and(|p| matches!(p.transport, Transport::Tcp { flags, .. } if flags & tcp_flags::SYN != 0)))),
        "IPv4 is accepted: {out:?}"
    );
    e.handle_tun(&udp("[fd00::2]:40002", "[fd00::7]:5000", b"lan"), 2 * S);
    let out = drain(&mut e);
    assert_eq!(
        sent_upstream(&out),
        2,
        "a local address is not refused: {out:?}"
    );
    let q = crate::wire::dns::tests::query("example.com");
    e.handle_tun(
        &udp("[2001:db8::2]:40003", "[2001:db8:1::53]:53", &q),
        2 * S,
    );
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(o, Output::DnsQuery { .. })),
        "DNS is the engine's own: {out:?}"
    );
    assert_eq!(e.counters.no_route, 3);
    // A route to one address of the family (a lookup the driver makes).
    e.set_route_lookup(Box::new(|ip| ip == sa("[2001:db8:1::8]:0").ip()));
    e.handle_tun(
        &tcp_syn("[2001:db8::2]:40005", "[2001:db8:1::8]:443"),
        2 * S,
    );
    e.handle_tun(
        &tcp_syn("[2001:db8::2]:40006", "[2001:db8:1::9]:443"),
        2 * S,
    );
    let out = drain(&mut e);
    let tcp_answers = out
        .iter()
        .filter(|o| matches!(o, Output::ToTun(p) if parse_ip(p).is_ok_and(|p| matches!(p.transport, Transport::Tcp { .. }))))
        .count();
    assert_eq!(tcp_answers, 1, "the routed address is accepted: {out:?}");
    assert_eq!(e.counters.no_route, 4, "the other is not");
    e.set_upstream_routes(UpstreamRoutes::default());
    e.handle_tun(
        &tcp_syn("[2001:db8::2]:40004", "[2001:db8:1::7]:443"),
        3 * S,
    );
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(o, Output::ToTun(p) if parse_ip(p).is_ok_and(|p| matches!(p.transport, Transport::Tcp { .. })))),
        "the route is back: accepted: {out:?}"
    );
    assert_eq!(e.counters.no_route, 4);
}

/// The app's resolver answer for `name`/`qtype` when the resolver found
/// `records` (unless it is in the engine's cache): what the engine
/// writes back into the TUN, parsed.
fn answer_through(
    e: &mut Engine,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
    records: Vec<hickory_proto::rr::Record>,
    now: u64,
) -> hickory_proto::op::Message {
    use hickory_proto::op::{Message, Query};
    let mut q = Message::query();
    q.metadata.id = 99;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        hickory_proto::rr::Name::from_ascii(name).expect("name"),
        qtype,
    ));
    e.handle_tun(
        &udp(
            "192.0.2.200:5353",
            "198.18.1.1:53",
            &q.to_vec().expect("query"),
        ),
        now,
    );
    let mut out = drain(e);
    let token = out.iter().find_map(|o| match o {
        Output::DnsQuery { query, .. } => Some(*query),
        _ => None,
    });
    // None: answered from the cache.
    if let Some(token) = token {
        e.handle_dns_answer(
            token,
            Some(Resolved {
                rcode: hickory_proto::op::ResponseCode::NoError,
                records,
                negative_ttl: None,
            }),
            now,
        );
        out = drain(e);
    }
    let reply = out
        .iter()
        .find_map(|o| match o {
            Output::ToTun(p) => parse_ip(p).ok().map(|p| p.l4[8..].to_vec()),
            _ => None,
        })
        .expect("an answer");
    Message::from_vec(&reply).expect("parses")
}

/// An answer's addresses: A and AAAA records, then HTTPS hints.
fn answer_addresses(m: &hickory_proto::op::Message) -> Vec<IpAddr> {
    use hickory_proto::rr::RData;
    let mut v = Vec::new();
    for r in &m.answers {
        match &r.data {
            RData::A(a) => v.push(IpAddr::V4(a.0)),
            RData::AAAA(a) => v.push(IpAddr::V6(a.0)),
            RData::HTTPS(s) => v.extend(dns::hints(&s.0.svc_params)),
            _ => {}
        }
    }
    v
}

/// On a network with no IPv6 route, the engine's DNS answers leave out
/// IPv6 addresses (AAAA records, HTTPS hints) the upstream cannot reach,
/// so apps connect over IPv4 at once instead of trying IPv6 first; an
/// address the route lookup finds a route to stays, IPv4 answers are
/// untouched, and with the route back AAAA answers are whole again.
#[test]
fn dns_answers_leave_out_addresses_the_upstream_cannot_reach() {
    use hickory_proto::rr::rdata::svcb::{IpHint, SVCB, SvcParamKey, SvcParamValue};
    use hickory_proto::rr::rdata::{A, AAAA, HTTPS};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let name = "dual.example.";
    let rec = |d: RData| Record::from_rdata(Name::from_ascii(name).expect("name"), 60, d);
    let aaaa = |s: &str| rec(RData::AAAA(AAAA(s.parse().expect("v6"))));
    // Another name, for answers not in the cache yet.
    let two = "two.example.";
    let aaaa2 = |s: &str| {
        Record::from_rdata(
            Name::from_ascii(two).expect("name"),
            60,
            RData::AAAA(AAAA(s.parse().expect("v6"))),
        )
    };
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    e.set_upstream_routes(UpstreamRoutes {
        v4: true,
        v6: false,
    });
    let m = answer_through(
        &mut e,
        name,
        RecordType::AAAA,
        vec![aaaa("2001:db8:1::7")],
        S,
    );
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    assert!(answer_addresses(&m).is_empty(), "no AAAA: {m:?}");
    assert_eq!(e.counters.dns_unroutable, 1);
    let m = answer_through(
        &mut e,
        name,
        RecordType::A,
        vec![rec(RData::A(A("198.51.100.7".parse().expect("v4"))))],
        S,
    );
    assert_eq!(answer_addresses(&m), vec![sa("198.51.100.7:0").ip()]);
    assert_eq!(e.counters.dns_unroutable, 1, "IPv4 is reachable");
    let https = rec(RData::HTTPS(HTTPS(SVCB::new(
        1,
        Name::root(),
        vec![
            (
                SvcParamKey::Ipv4Hint,
                SvcParamValue::Ipv4Hint(IpHint(vec![A("198.51.100.7".parse().expect("v4"))])),
            ),
            (
                SvcParamKey::Ipv6Hint,
                SvcParamValue::Ipv6Hint(IpHint(vec![AAAA("2001:db8:1::7".parse().expect("v6"))])),
            ),
        ],
    ))));
    let m = answer_through(&mut e, name, RecordType::HTTPS, vec![https.clone()], S);
    assert_eq!(
        answer_addresses(&m),
        vec![sa("198.51.100.7:0").ip()],
        "the IPv6 hint is gone, the IPv4 one stays: {m:?}"
    );
    // One address of the family has a route (the driver's lookup).
    e.set_route_lookup(Box::new(|ip| ip == sa("[2001:db8:1::8]:0").ip()));
    let m = answer_through(
        &mut e,
        two,
        RecordType::AAAA,
        vec![aaaa2("2001:db8:1::7"), aaaa2("2001:db8:1::8")],
        2 * S,
    );
    assert_eq!(answer_addresses(&m), vec![sa("[2001:db8:1::8]:0").ip()]);
    assert_eq!(e.counters.dns_unroutable, 3);
    e.set_upstream_routes(UpstreamRoutes::default());
    let m = answer_through(&mut e, two, RecordType::AAAA, Vec::new(), 3 * S);
    assert_eq!(
        answer_addresses(&m).len(),
        2,
        "the route is back, the cached answer whole: {m:?}"
    );
    let m = answer_through(&mut e, name, RecordType::HTTPS, vec![https], 3 * S);
    assert_eq!(answer_addresses(&m).len(), 2);
    assert_eq!(e.counters.dns_unroutable, 3);
}

/// An app's connection to `to`, accepted and opened upstream at once (an
/// address-only policy): the flow the engine asked to connect.
fn opened_at_the_syn(e: &mut Engine, to: &str, now: &mut u64) -> FlowId {
    let mut app = App::connect(to);
    for _ in 0..5 {
        *now += MS;
        for o in app.step(e, *now) {
            if let Output::TcpOpen { flow, .. } = o {
                return flow;
            }
        }
    }
    panic!("{to}: no TcpOpen")
}

/// Whether a SYN to `to` is accepted (a SYN-ACK) rather than answered
/// "network unreachable".
fn syn_accepted(e: &mut Engine, from: &str, to: &str, now: u64) -> bool {
    e.handle_tun(&tcp_syn(from, to), now);
    let out = drain(e);
    let answers: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::ToTun(p) => parse_ip(p).ok().map(|p| p.transport),
            _ => None,
        })
        .collect();
    match answers.as_slice() {
        [Transport::Tcp { flags, .. }, ..] if flags & tcp_flags::SYN != 0 => true,
        // IPv4: "destination network unknown"; IPv6: "no route".
        [
            Transport::Icmp {
                kind: 3, code: 6, ..
            }
            | Transport::Icmp {
                kind: 1, code: 0, ..
            },
        ] => false,
        other => panic!("{to}: neither accepted nor unreachable: {other:?}"),
    }
}

/// Connects of a family that go unanswered (a default route that leads
/// nowhere): after three different servers, new flows of that family are
/// refused at their first packet, as without a route, so the apps use
/// their other addresses; the other family goes on; after the hold, or
/// once a connect is answered, or on another network, flows go on again.
#[test]
fn a_family_whose_connects_go_unanswered_is_refused_for_a_while() {
    use crate::engine::paths::FIRST_HOLD_NS;
    let (mut e, _) = engine_with("name='open'\ndefault='allow'\n");
    let mut now = S;
    for i in 1..=3 {
        let flow = opened_at_the_syn(&mut e, &format!("198.51.100.{i}:443"), &mut now);
        e.handle_tcp_connect_failed(flow, ConnectFailure::Unanswered, now);
        drain(&mut e);
    }
    assert_eq!(e.counters.families_down, 1);
    assert!(
        !syn_accepted(&mut e, "192.0.2.200:41001", "198.51.100.9:443", now),
        "refused at the SYN"
    );
    assert_eq!(e.counters.family_down, 1);
    assert!(
        syn_accepted(&mut e, "[2001:db8::2]:41002", "[2001:db8:1::7]:443", now),
        "the other family goes on"
    );
    assert!(
        syn_accepted(
            &mut e,
            "192.0.2.200:41003",
            "198.51.100.9:443",
            now + FIRST_HOLD_NS
        ),
        "after the hold"
    );
    // An answered connect between failures keeps the family.
    let mut now = now + FIRST_HOLD_NS;
    // (None: the connect succeeded.)
    for (i, why) in [
        (11, Some(ConnectFailure::Unanswered)),
        (12, Some(ConnectFailure::Unanswered)),
        (13, Some(ConnectFailure::Refused)),
        (14, Some(ConnectFailure::Unanswered)),
        (15, Some(ConnectFailure::Unanswered)),
        (16, None),
        (17, Some(ConnectFailure::Unanswered)),
    ] {
        let flow = opened_at_the_syn(&mut e, &format!("198.51.100.{i}:443"), &mut now);
        match why {
            Some(why) => e.handle_tcp_connect_failed(flow, why, now),
            None => e.handle_tcp_connected(flow, now),
        }
        drain(&mut e);
    }
    assert!(syn_accepted(
        &mut e,
        "192.0.2.200:41004",
        "198.51.100.9:443",
        now
    ));
    // Broken again, then another network: forgotten.
    for i in 21..=22 {
        let flow = opened_at_the_syn(&mut e, &format!("198.51.100.{i}:443"), &mut now);
        e.handle_tcp_connect_failed(flow, ConnectFailure::Unanswered, now);
        drain(&mut e);
    }
    assert!(!syn_accepted(
        &mut e,
        "192.0.2.200:41005",
        "198.51.100.9:443",
        now
    ));
    e.set_upstream_routes(UpstreamRoutes {
        v4: true,
        v6: false,
    });
    assert!(syn_accepted(
        &mut e,
        "192.0.2.200:41006",
        "198.51.100.9:443",
        now
    ));
    assert_eq!(e.counters.families_down, 2);
}

#[test]
fn an_allowed_udp_exchange_byte_for_byte() {
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    e.handle_tun(&udp("192.0.2.200:40000", "198.51.100.7:5000", b"hello"), S);
    let out = drain(&mut e);
    let ev = events(&out);
    assert_eq!(
        (ev.len(), ev[0].kind, ev[0].action),
        (1, EventKind::Opened, Decision::Allow)
    );
    let flow = ev[0].flow;
    assert!(out.contains(&Output::UdpOpen {
        flow,
        dst: sa("198.51.100.7:5000")
    }));
    assert!(out.contains(&Output::UdpSend {
        flow,
        payload: b"hello".to_vec()
    }));
    // The reply comes back to the app from the server's address.
    e.handle_udp_from_upstream(flow, b"world", S + 1);
    let out = drain(&mut e);
    let [Output::ToTun(pkt)] = out.as_slice() else {
        panic!("one packet: {out:?}")
    };
    let p = parse_ip(pkt).expect("parses");
    assert_eq!(
        (p.src, p.dst),
        (
            "198.51.100.7".parse::<IpAddr>().expect("ip"),
            "192.0.2.200".parse::<IpAddr>().expect("ip")
        )
    );
    let Transport::Udp {
        sport,
        dport,
        payload,
    } = p.transport
    else {
        panic!("udp")
    };
    assert_eq!((sport, dport, payload), (5000, 40_000, b"world".as_slice()));
    assert_eq!(
        reply::l4_checksum(p.src, p.dst, 17, p.l4),
        0,
        "valid UDP checksum"
    );
    // Later datagrams are sent without another open.
    e.handle_tun(
        &udp("192.0.2.200:40000", "198.51.100.7:5000", b"again"),
        S + 2,
    );
    assert_eq!(
        drain(&mut e),
        vec![Output::UdpSend {
            flow,
            payload: b"again".to_vec()
        }]
    );
    assert_eq!(e.counters.opened, 1);
    // Idle, it closes with its counts: two datagrams up, one down.
    e.handle_timeout(S + 2 + EngineConfig::default().udp_idle_ns);
    let out = drain(&mut e);
    let closed = events(&out)
        .into_iter()
        .find(|ev| ev.kind == EventKind::Closed)
        .expect("closed");
    assert_eq!(
        closed.volume,
        Some(crate::engine::Volume {
            packets_up: 2,
            packets_down: 1,
            bytes_up: 2 * 33,
            bytes_down: 33,
        })
    );
}

#[test]
fn blocked_first_datagram_never_goes_upstream() {
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    // SD-RTN probe to a CN-located edge: media, blocked (reject).
    let probe = crate::wire::rtc::sd_rtn_probe("104-166-161-75.edge.agora.io");
    e.handle_tun(&udp("192.0.2.200:40000", "203.0.113.5:8130", &probe), S);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0, "zero bytes upstream: {out:?}");
    let ev = events(&out);
    assert_eq!(
        (ev[0].kind, ev[0].action, ev[0].class, ev[0].protocol),
        (
            EventKind::Blocked,
            Decision::Block,
            Traffic::Media,
            Protocol::SdRtn
        )
    );
    assert_eq!(ev[0].layer.as_deref(), Some("geo:CN"));
    // Reject: an ICMP unreachable back to the app.
    let icmp = out
        .iter()
        .find_map(|o| {
            if let Output::ToTun(p) = o {
                Some(p)
            } else {
                None
            }
        })
        .expect("an ICMP error");
    assert!(matches!(
        parse_ip(icmp).expect("p").transport,
        Transport::Icmp {
            kind: 3,
            code: 13,
            ..
        }
    ));
    // More datagrams on the blocked flow: still nothing upstream.
    e.handle_tun(&udp("192.0.2.200:40000", "203.0.113.5:8130", &probe), S + 1);
    assert_eq!(sent_upstream(&drain(&mut e)), 0);
    // The vendor layer: an Agora name on a German host.
    e.handle_tun(&udp("192.0.2.201:40001", "192.0.2.200:8130", &probe), S + 2);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0);
    assert_eq!(events(&out)[0].layer.as_deref(), Some("vendor:CN"));
    // A STUN binding (ping) to a US-located PRC cloud: network layer.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    e.handle_tun(&udp("192.0.2.201:40002", "192.0.2.10:3478", &stun), S + 3);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0);
    assert_eq!(events(&out)[0].layer.as_deref(), Some("network:CN"));
    assert_eq!(e.counters.blocked, 3);
}

/// A call that begins with a real QUIC Initial (web, allowed to a CN
/// server under `clubhouse`) leaks none of its RTP: the stream's first
/// packet, not yet confirmed, is dropped; the second confirms it and cuts
/// the flow. One RTP-looking datagram alone (a QUIC packet with its fixed
/// bit greased) is dropped, and the flow goes on as web.
#[test]
fn rtp_after_a_quic_start_never_leaves_for_a_blocked_server() {
    let rtp = crate::wire::rtc::rtp_packet;
    let initial = crate::classify::tests::quic_initial();
    let (app, cn) = ("192.0.2.200:40000", "203.0.113.10:443");
    let rtp_sent = |out: &[Output]| {
        out.iter()
            .filter(|o| matches!(o, Output::UdpSend { payload, .. } if payload[0] & 0xC0 == 0x80))
            .count()
    };
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, cn, &initial), S);
    let out = drain(&mut e);
    assert_eq!(events(&out)[0].class, Traffic::Web);
    assert_eq!(sent_upstream(&out), 2, "the Initial leaves: {out:?}");
    e.handle_tun(&udp(app, cn, &rtp(1)), S + 20 * MS);
    e.handle_tun(&udp(app, cn, &rtp(2)), S + 40 * MS);
    e.handle_tun(&udp(app, cn, &rtp(3)), S + 60 * MS);
    let out = drain(&mut e);
    assert_eq!(rtp_sent(&out), 0, "{out:?}");
    let cut = events(&out);
    assert_eq!(
        (cut[0].kind, cut[0].class),
        (EventKind::Cut, Traffic::Media)
    );
    assert_eq!(e.counters.drops.get(&DropReason::UnconfirmedRtp), Some(&1));
    // A lone RTP-looking datagram between QUIC packets: dropped, still web.
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, cn, &initial), S);
    e.handle_tun(&udp(app, cn, &rtp(9)), S + MS);
    e.handle_tun(&udp(app, cn, b"\x41short header"), S + 2 * MS);
    let out = drain(&mut e);
    assert_eq!(rtp_sent(&out), 0);
    assert_eq!(
        sent_upstream(&out),
        3,
        "the Initial and the short header: {out:?}"
    );
    assert!(events(&out).iter().all(|ev| ev.kind == EventKind::Opened));
}

/// Every QUIC connection an app opens on one UDP socket to one server is
/// judged by its own name: a later connection's Initials wait for its whole
/// hello; one to an allowed name leaves in order, one naming a PRC vendor's
/// edge never leaves and the flow is cut, the event naming it. The first
/// connection's packets go on meanwhile; a hello that never comes whole
/// holds its Initials no longer than the hold time.
#[test]
fn every_quic_connection_on_a_flow_is_judged_by_its_name() {
    use crate::wire::quic::client_initials;
    let agora = "104-166-161-75.edge.agora.io";
    let (app, us) = ("192.0.2.200:40000", "198.51.100.7:443");
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let first = client_initials(1, &[0xA1; 8], "www.example.com", 1).expect("initials");
    e.handle_tun(&udp(app, us, &first[0]), S);
    let out = drain(&mut e);
    assert_eq!(udp_sent(&out), first, "the first connection opens");
    // A second connection, its hello in two Initials: the first waits;
    // the first connection's packets do not.
    let second = client_initials(1, &[0xB2; 8], "cdn.example.net", 2).expect("initials");
    let short = b"\x41 the first connection's 1-RTT packet".to_vec();
    e.handle_tun(&udp(app, us, &second[0]), S + MS);
    e.handle_tun(&udp(app, us, &short), S + 2 * MS);
    let out = drain(&mut e);
    assert_eq!(
        udp_sent(&out),
        std::slice::from_ref(&short),
        "the Initial waits"
    );
    e.handle_tun(&udp(app, us, &second[1]), S + 3 * MS);
    let out = drain(&mut e);
    assert_eq!(udp_sent(&out), second, "the whole hello leaves, in order");
    assert!(events(&out).is_empty(), "{out:?}");
    // A later Initial of an open connection (the server's ID as its DCID:
    // its own keys do not open it) is not held.
    let mut ack = first[0].clone();
    ack[6..14].copy_from_slice(&[0xEE; 8]);
    e.handle_tun(&udp(app, us, &ack), S + 4 * MS);
    assert_eq!(udp_sent(&drain(&mut e)), [ack]);
    // A third naming the vendor's edge: none of it leaves; the flow is cut.
    let third = client_initials(1, &[0xC3; 8], agora, 2).expect("initials");
    e.handle_tun(&udp(app, us, &third[0]), S + 5 * MS);
    e.handle_tun(&udp(app, us, &third[1]), S + 6 * MS);
    e.handle_tun(&udp(app, us, &short), S + 7 * MS);
    let out = drain(&mut e);
    assert!(udp_sent(&out).is_empty(), "{out:?}");
    let ev = events(&out);
    let cut = ev.iter().find(|e| e.kind == EventKind::Cut).expect("a cut");
    assert_eq!(cut.server_name.as_deref(), Some("www.example.com"));
    assert_eq!(cut.hosts, ["cdn.example.net", agora]);
    assert!(out.iter().any(|o| matches!(o, Output::Close { .. })));
    assert_eq!(e.held_bytes, 0, "nothing left held");
    // A hello that never comes whole: its Initial goes on after the hold.
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, us, &first[0]), S);
    drain(&mut e);
    e.handle_tun(&udp(app, us, &third[0]), S + MS);
    assert!(udp_sent(&drain(&mut e)).is_empty());
    e.handle_timeout(S + MS + udp::HOLD_NS);
    assert_eq!(udp_sent(&drain(&mut e)), [third[0].clone()]);
    assert_eq!(e.held_bytes, 0);
}

/// A DNS query on a port other than 53 (relayed, not answered by
/// geowall) names what it asks about, not the resolver: the resolver's
/// address is not taken for the vendor's edge it was asked about.
#[test]
fn a_dns_question_does_not_name_the_resolver() {
    let rtp = crate::wire::rtc::rtp_packet;
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    let (app, resolver) = ("192.0.2.200:40000", "198.51.100.53:5300");
    let q = crate::wire::dns::tests::query("104-166-161-75.edge.agora.io");
    e.handle_tun(&udp(app, resolver, &q), S);
    let out = drain(&mut e);
    assert_eq!(events(&out)[0].class, Traffic::Dns);
    assert_eq!(sent_upstream(&out), 2, "opened and sent: {out:?}");
    // Media to the resolver's address: judged by where it is (US).
    let media = "198.51.100.53:5004";
    e.handle_tun(&udp("192.0.2.200:40002", media, &rtp(1)), S + MS);
    e.handle_tun(&udp("192.0.2.200:40002", media, &rtp(2)), S + 21 * MS);
    let out = drain(&mut e);
    assert!(
        events(&out).iter().all(|ev| ev.kind != EventKind::Blocked),
        "{out:?}"
    );
    assert!(sent_upstream(&out) >= 2);
}

/// RTP is told by two packets of one stream; a call's first packet waits
/// for the second, and a lone packet that reads as RTP is taken for media
/// when its hold ends (fail closed), not let through as `other`.
#[test]
fn rtp_waits_for_its_stream_and_a_lone_header_is_held_as_media() {
    let rtp = crate::wire::rtc::rtp_packet;
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    let (app, cn) = ("192.0.2.200:40000", "203.0.113.10:5004");
    e.handle_tun(&udp(app, cn, &rtp(7)), S);
    assert_eq!(sent_upstream(&drain(&mut e)), 0, "held for the next packet");
    e.handle_tun(&udp(app, cn, &rtp(8)), S + 20 * MS);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0);
    let ev = events(&out);
    assert_eq!(
        (ev[0].kind, ev[0].class),
        (EventKind::Blocked, Traffic::Media)
    );
    // One packet and nothing after it: blocked when the hold ends.
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, cn, &rtp(7)), S);
    e.handle_timeout(S + udp::HOLD_NS);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0, "{out:?}");
    let ev = events(&out);
    assert_eq!(
        (ev[0].kind, ev[0].class),
        (EventKind::Blocked, Traffic::Media)
    );
}

#[test]
fn later_evidence_cuts_an_open_flow() {
    let (mut e, _) = engine(
        "clubhouse",
        EngineConfig::default(),
        &[("user_id", "4815162342")],
    );
    // Unknown UDP to an HK server: held while it could turn out to be
    // media; when the hold time is up, still unknown: allowed.
    e.handle_tun(
        &udp("192.0.2.200:40000", "203.0.113.200:7000", b"opaque start"),
        S,
    );
    assert_eq!(sent_upstream(&drain(&mut e)), 0, "held");
    e.handle_timeout(S + udp::HOLD_NS);
    let out = drain(&mut e);
    let flow = events(&out)[0].flow;
    assert_eq!(events(&out)[0].kind, EventKind::Opened);
    assert!(out.contains(&Output::UdpSend {
        flow,
        payload: b"opaque start".to_vec()
    }));
    // Then the app sends the user id in cleartext: cut.
    e.handle_tun(
        &udp("192.0.2.200:40000", "203.0.113.200:7000", b"uid=4815162342"),
        S + udp::HOLD_NS + 1,
    );
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0, "the leaking datagram never leaves");
    assert!(out.contains(&Output::Close { flow }));
    let ev = events(&out);
    assert_eq!(
        (ev[0].kind, ev[0].leaks.as_slice()),
        (EventKind::Cut, ["user_id".to_owned()].as_slice())
    );
    assert_eq!(
        ev[0].rule.as_deref(),
        Some("no cleartext identifiers to PRC jurisdiction")
    );
    // Replies for the cut flow are not delivered.
    e.handle_udp_from_upstream(flow, b"late", S + udp::HOLD_NS + 2);
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.counters.cut, 1);
}

#[test]
fn echo_allowed_and_blocked() {
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    let echo = |dst: [u8; 4]| {
        let mut m = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        m.extend_from_slice(b"ping data");
        let mut ip = vec![
            0x45,
            0,
            0,
            (20 + m.len()) as u8,
            0,
            1,
            0,
            0,
            64,
            1,
            0,
            0,
            192,
            0,
            2,
            200,
        ];
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&m);
        ip
    };
    e.handle_tun(&echo([198, 51, 100, 9]), S);
    let out = drain(&mut e);
    let Some(Output::EchoRequest {
        flow,
        dst,
        seq,
        data,
    }) = out
        .iter()
        .find(|o| matches!(o, Output::EchoRequest { .. }))
        .cloned()
    else {
        panic!("echo sent: {out:?}")
    };
    assert_eq!(
        (dst.to_string(), seq, data.as_slice()),
        ("198.51.100.9".into(), 1, b"ping data".as_slice())
    );
    e.handle_echo_reply(flow, 1, b"ping data", S + 1);
    let out = drain(&mut e);
    let [Output::ToTun(pkt)] = out.as_slice() else {
        panic!("reply: {out:?}")
    };
    let p = parse_ip(pkt).expect("parses");
    assert!(matches!(
        p.transport,
        Transport::Icmp {
            kind: 0,
            echo_id: Some(0x1234),
            ..
        }
    ));
    // To a CN-located address: ping blocked, nothing upstream.
    e.handle_tun(&echo([203, 0, 113, 9]), S + 2);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0);
    assert_eq!(events(&out)[0].class, Traffic::Ping);
}

#[test]
fn idle_flows_close_and_the_table_is_bounded() {
    let cfg = EngineConfig {
        max_flows: 2,
        udp_idle_ns: 10 * S,
        ..EngineConfig::default()
    };
    let (mut e, _) = engine("default", cfg, &[]);
    e.handle_tun(&udp("192.0.2.200:1", "198.51.100.7:5000", b"a"), S);
    e.handle_tun(&udp("192.0.2.200:2", "198.51.100.7:5000", b"b"), S);
    drain(&mut e);
    // Full: a third flow is refused (counted, ICMP back), the others work.
    e.handle_tun(&udp("192.0.2.200:3", "198.51.100.7:5000", b"c"), S);
    let out = drain(&mut e);
    assert_eq!((sent_upstream(&out), e.counters.refused), (0, 1));
    e.handle_tun(&udp("192.0.2.200:1", "198.51.100.7:5000", b"a2"), 2 * S);
    assert_eq!(sent_upstream(&drain(&mut e)), 1);
    assert_eq!(e.poll_timeout(), Some(11 * S));
    e.handle_timeout(11 * S);
    let out = drain(&mut e);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Close { .. }))
            .count(),
        1,
        "the flow idle since 1 s"
    );
    assert_eq!(e.flow_count(), 1);
    e.handle_timeout(12 * S);
    drain(&mut e);
    assert_eq!(e.flow_count(), 0);
}

/// A flow's `closed` event says how it ended: a blocked or cut flow's
/// repeats the block and its rule (not an allow without one), an allowed
/// one's is an allow; and when the firewall stops, every flow still open
/// gets its `closed` event with its packets and bytes, and the table is
/// left empty.
#[test]
fn closed_events_say_how_flows_ended_and_the_stop_closes_every_flow() {
    let cfg = EngineConfig {
        udp_idle_ns: 10 * S,
        ..EngineConfig::default()
    };
    let (mut e, handle) = engine("clubhouse", cfg, &[]);
    let rtp = |seq: u8| {
        let mut p = vec![0x80, 0x60, 0, seq, 0, 0, 0, seq, 0, 0, 0, 7];
        p.extend_from_slice(&[0x55; 160]);
        p
    };
    // Media to CN: blocked at the first packets.
    let (app, cn) = ("192.0.2.200:5000", "203.0.113.5:7000");
    for i in 0..3 {
        e.handle_tun(&udp(app, cn, &rtp(i)), S + u64::from(i) * MS);
    }
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0);
    let blocked = events(&out)[0].clone();
    assert_eq!(blocked.kind, EventKind::Blocked);
    // Media to the US, allowed; then rules that block it: cut.
    let us = "198.51.100.7:7000";
    e.handle_tun(&udp("192.0.2.200:5002", us, &rtp(1)), 2 * S);
    e.handle_tun(&udp("192.0.2.200:5002", us, &rtp(2)), 2 * S + MS);
    drain(&mut e);
    let cat = Catalog::shipped().expect("catalog");
    let strict = "name='no media'\ndefault='allow'\n[[rule]]\nname='no media'\naction='block'\ntraffic=['media']\n";
    handle.replace(Policy::parse(Path::new("p.toml"), strict, None, &cat).expect("policy"));
    e.handle_tun(&udp("192.0.2.200:5002", us, &rtp(3)), 3 * S);
    let out = drain(&mut e);
    assert_eq!(events(&out)[0].kind, EventKind::Cut);
    // A UDP flow to DE that stays open.
    e.handle_tun(
        &udp("192.0.2.200:5004", "192.0.2.130:9000", b"hello"),
        4 * S,
    );
    drain(&mut e);
    // The blocked and the cut flows go idle: closed, as blocks.
    e.handle_timeout(13 * S);
    let out = drain(&mut e);
    let closed: Vec<_> = events(&out)
        .into_iter()
        .filter(|ev| ev.kind == EventKind::Closed)
        .collect();
    assert_eq!(closed.len(), 2, "{closed:?}");
    for c in &closed {
        assert_eq!(c.action, Decision::Block, "{c:?}");
        assert!(c.rule.is_some(), "{c:?}");
    }
    let first = closed
        .iter()
        .find(|c| c.flow == blocked.flow)
        .expect("the blocked flow");
    assert_eq!((&first.rule, &first.layer), (&blocked.rule, &blocked.layer));
    assert_eq!(first.volume.map(|v| v.packets_up), Some(3));
    // The stop: the flows still open are closed, allowed, with their bytes.
    assert!(e.flow_count() >= 1);
    e.close_all();
    let out = drain(&mut e);
    let ev = events(&out);
    let de = ev
        .iter()
        .find(|c| c.server == "192.0.2.130:9000")
        .expect("the open flow");
    assert_eq!((de.kind, de.action), (EventKind::Closed, Decision::Allow));
    assert_eq!(de.volume.map(|v| v.bytes_up), Some(20 + 8 + 5));
    assert!(ev.iter().all(|c| c.kind == EventKind::Closed));
    assert_eq!(e.flow_count(), 0);
}

#[test]
fn a_policy_swap_applies_to_new_flows() {
    let (mut e, handle) = engine("default", EngineConfig::default(), &[]);
    // Unknown UDP to CN under default: held while its class could still
    // be media, then allowed (only media/ping blocked).
    e.handle_tun(&udp("192.0.2.200:1", "203.0.113.5:7000", b"x"), S);
    assert!(events(&drain(&mut e)).is_empty(), "held");
    e.handle_timeout(S + udp::HOLD_NS);
    assert!(events(&drain(&mut e))[0].action == Decision::Allow);
    handle
        .replace(Policy::preset("strict", &Catalog::shipped().expect("catalog")).expect("strict"));
    e.handle_tun(&udp("192.0.2.200:2", "203.0.113.5:7000", b"x"), S);
    let out = drain(&mut e);
    assert_eq!(
        (events(&out)[0].action, sent_upstream(&out)),
        (Decision::Block, 0)
    );
}

/// An app with its own TCP stack (smoltcp), wired to the engine's TUN side.
struct App {
    dev: crate::engine::stack::QueueDevice,
    iface: smoltcp::iface::Interface,
    sockets: smoltcp::iface::SocketSet<'static>,
    sock: smoltcp::iface::SocketHandle,
    /// Packets the engine sent to the app.
    received: usize,
    /// IP bytes the engine sent to the app.
    received_bytes: usize,
    /// Packets and IP bytes the app sent the engine.
    sent: (usize, usize),
}

impl App {
    fn connect(to: &str) -> Self {
        Self::connect_from("192.0.2.200:40000", to)
    }

    /// An app at `from` (an address in 192.0.2.0/24) connecting to `to`.
    fn connect_from(from: &str, to: &str) -> Self {
        use smoltcp::iface::{Config, Interface, SocketSet};
        use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};
        let mut dev = crate::engine::stack::QueueDevice::new(1500);
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = 7;
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(
                IpAddress::Ipv4(Ipv4Address::new(192, 0, 2, 200)),
                24,
            ));
        });
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(192, 0, 2, 1));
        let mut sockets = SocketSet::new(Vec::new());
        let mut s = smoltcp::socket::tcp::Socket::new(
            smoltcp::socket::tcp::SocketBuffer::new(vec![0; 65_536]),
            smoltcp::socket::tcp::SocketBuffer::new(vec![0; 65_536]),
        );
        let remote = sa(to);
        s.connect(
            iface.context(),
            (remote.ip(), remote.port()),
            sa(from).port(),
        )
        .expect("connect");
        let sock = sockets.add(s);
        Self {
            dev,
            iface,
            sockets,
            sock,
            received: 0,
            received_bytes: 0,
            sent: (0, 0),
        }
    }

    fn socket(&mut self) -> &mut smoltcp::socket::tcp::Socket<'static> {
        self.sockets.get_mut(self.sock)
    }

    /// One round trip between the app and the engine at `now`; returns the
    /// engine's outputs other than packets for the app.
    fn step(&mut self, e: &mut Engine, now: u64) -> Vec<Output> {
        let t = crate::engine::stack::instant(now);
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        while let Some(p) = self.dev.tx.pop_front() {
            self.sent.0 += 1;
            self.sent.1 += p.len();
            e.handle_tun(&p, now);
        }
        e.handle_timeout(now);
        let mut rest = Vec::new();
        while let Some(o) = e.poll_output() {
            match o {
                Output::ToTun(p) => {
                    self.received += 1;
                    self.received_bytes += p.len();
                    self.dev.rx.push_back(p);
                }
                other => rest.push(other),
            }
        }
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        rest
    }
}

const MS: u64 = 1_000_000;

#[test]
fn a_full_tcp_exchange_with_the_first_bytes_judged_before_connecting() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    let mut app = App::connect("198.51.100.7:80");
    let request = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n";
    let mut outs = Vec::new();
    let mut now = S;
    let mut sent = false;
    // Handshake, then the request; the engine asks to connect only after
    // reading it.
    for _ in 0..50 {
        now += MS;
        outs.extend(app.step(&mut e, now));
        if !sent && app.socket().may_send() {
            app.socket().send_slice(request).expect("send");
            sent = true;
        }
        if outs.iter().any(|o| matches!(o, Output::TcpOpen { .. })) {
            break;
        }
    }
    let Some(Output::TcpOpen { flow, dst, .. }) = outs
        .iter()
        .find(|o| matches!(o, Output::TcpOpen { .. }))
        .cloned()
    else {
        panic!("no TcpOpen: {outs:?}")
    };
    assert_eq!(dst, sa("198.51.100.7:80"));
    let opened = events(&outs)
        .into_iter()
        .find(|ev| ev.kind == EventKind::Opened)
        .expect("opened event");
    assert_eq!(
        (opened.protocol, opened.class, opened.server_name.as_deref()),
        (Protocol::Http, Traffic::Web, Some("www.example.org"))
    );
    assert!(
        !outs.iter().any(|o| matches!(o, Output::TcpSend { .. })),
        "nothing sent before the upstream is connected"
    );
    // The upstream connects: the request goes out byte for byte.
    e.handle_tcp_connected(flow, now);
    let mut upstream = Vec::new();
    while let Some(o) = e.poll_output() {
        match o {
            Output::TcpSend { payload, .. } => upstream.extend(payload),
            Output::ToTun(p) => app.dev.rx.push_back(p),
            _ => {}
        }
    }
    assert_eq!(upstream, request);
    // The response reaches the app byte for byte.
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(
        e.handle_tcp_from_upstream(flow, response, now),
        response.len()
    );
    let mut got = Vec::new();
    for _ in 0..50 {
        now += MS;
        app.step(&mut e, now);
        let mut buf = [0u8; 256];
        while app.socket().can_recv() {
            let n = app.socket().recv_slice(&mut buf).expect("recv");
            got.extend_from_slice(&buf[..n]);
        }
        if got.len() >= response.len() {
            break;
        }
    }
    assert_eq!(got, response);
    // The app closes: the engine asks to shut down the upstream side.
    app.socket().close();
    let mut fin = false;
    for _ in 0..50 {
        now += MS;
        fin |= app
            .step(&mut e, now)
            .iter()
            .any(|o| matches!(o, Output::TcpFin { flow: f } if *f == flow));
        if fin {
            break;
        }
    }
    assert!(fin, "TcpFin after the app's FIN");
    e.handle_tcp_upstream_closed(flow, now);
    let mut tail = Vec::new();
    for _ in 0..100 {
        now += 10 * MS;
        tail.extend(app.step(&mut e, now));
        if tail
            .iter()
            .any(|o| matches!(o, Output::Close { flow: f } if *f == flow))
        {
            break;
        }
    }
    assert!(
        tail.contains(&Output::Close { flow }),
        "the flow is freed once both sides closed"
    );
    let closed = events(&tail)
        .into_iter()
        .find(|ev| ev.kind == EventKind::Closed && ev.flow == flow && ev.proto == FlowProto::Tcp)
        .expect("a closed event");
    // It counts every packet each way, as the app's side saw them.
    let v = closed.volume.expect("a close carries its counts");
    assert_eq!(
        (v.packets_up, v.bytes_up, v.packets_down, v.bytes_down),
        (
            app.sent.0 as u64,
            app.sent.1 as u64,
            app.received as u64,
            app.received_bytes as u64
        )
    );
    assert!(v.bytes_down > response.len() as u64);
    assert_eq!(e.flow_count(), 0);
}

#[test]
fn a_blocked_tcp_flow_is_reset_and_never_opened_upstream() {
    // A US address whose ClientHello names a PRC vendor's edge: only the
    // payload tells, so the handshake completes and the hello is judged.
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut app = App::connect("198.51.100.7:443");
    let hello = crate::wire::tls::tests::hello_record("104-166-161-75.edge.agora.io");
    let mut outs = Vec::new();
    let mut now = S;
    let mut sent = false;
    for _ in 0..50 {
        now += MS;
        outs.extend(app.step(&mut e, now));
        if !sent && app.socket().may_send() {
            app.socket().send_slice(&hello).expect("send");
            sent = true;
        }
        if sent && app.socket().state() == smoltcp::socket::tcp::State::Closed {
            break;
        }
    }
    assert_eq!(
        app.socket().state(),
        smoltcp::socket::tcp::State::Closed,
        "the app saw an RST"
    );
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::TcpOpen { .. } | Output::TcpSend { .. })),
        "{outs:?}"
    );
    let ev = events(&outs);
    assert_eq!(
        (ev[0].kind, ev[0].protocol, ev[0].server_name.as_deref()),
        (
            EventKind::Blocked,
            Protocol::Tls,
            Some("104-166-161-75.edge.agora.io")
        )
    );
    assert_eq!(e.counters.blocked, 1);
}

/// Under `strict`, the app at `to` sends `first` at once; whatever its
/// length, it is judged whole by `name` before any of it leaves: nothing
/// goes upstream, the app is reset, the event names `name`.
fn long_first_bytes_are_blocked_by_name(to: &str, first: &[u8], name: &str) {
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    blocked_by_name_on(&mut e, &mut now, to, first, name);
}

/// The app sends `bytes` as its window lets it, a millisecond a step, for
/// at most 200 steps or until `done`; the engine's outputs for others.
fn app_sends_until(
    app: &mut App,
    e: &mut Engine,
    now: &mut u64,
    bytes: &[u8],
    done: impl Fn(&mut App, &[Output]) -> bool,
) -> Vec<Output> {
    let mut outs = Vec::new();
    let mut sent = 0;
    for _ in 0..200 {
        *now += MS;
        outs.extend(app.step(e, *now));
        if sent < bytes.len() && app.socket().may_send() {
            sent += app.socket().send_slice(&bytes[sent..]).expect("send");
        }
        if done(app, &outs) {
            break;
        }
    }
    outs
}

/// [`long_first_bytes_are_blocked_by_name`] on the engine `e`.
fn blocked_by_name_on(e: &mut Engine, now: &mut u64, to: &str, first: &[u8], name: &str) {
    use smoltcp::socket::tcp::State as S_;
    let mut app = App::connect(to);
    let outs = app_sends_until(&mut app, e, now, first, |a, _| {
        a.socket().state() == S_::Closed
    });
    assert_eq!(app.socket().state(), S_::Closed, "the app saw an RST");
    assert_eq!(upstream_bytes(&outs), 0, "{outs:?}");
    let ev = events(&outs);
    let block = ev
        .iter()
        .find(|e| e.kind == EventKind::Blocked)
        .expect("a block event");
    assert_eq!(block.server_name.as_deref(), Some(name), "{to}");
}

/// TURN over TLS is media: under `clubhouse` a relay under a PRC
/// jurisdiction reached on the `turns:` port, or on 443 with TURN's ALPN,
/// gets none of the hello, and the event says media; web to it on 443,
/// and TURN over TLS to a US relay, go on.
#[test]
fn turn_over_tls_to_a_relay_under_a_blocked_jurisdiction_is_blocked_as_media() {
    use smoltcp::socket::tcp::State as S_;
    for (to, alpn, blocked) in [
        ("203.0.113.10:5349", &b"\x08http/1.1"[..], true),
        ("203.0.113.10:443", &b"\x09stun.turn"[..], true),
        ("203.0.113.10:443", &b"\x02h2"[..], false),
        ("198.51.100.7:5349", &b"\x09stun.turn"[..], false),
    ] {
        let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
        let mut now = S;
        let mut app = App::connect(to);
        let hello = crate::wire::tls::tests::hello_record_alpn("", alpn);
        let mut outs = app_sends_until(&mut app, &mut e, &mut now, &hello, |a, o| {
            a.socket().state() == S_::Closed || tcp_open_of(o).is_some()
        });
        let ev = events(&outs);
        assert_eq!(ev.len(), 1, "{to} {alpn:?}: {ev:?}");
        let media = blocked || to.ends_with("5349");
        assert_eq!(
            ev[0].class,
            if media { Traffic::Media } else { Traffic::Web }
        );
        if blocked {
            assert_eq!(ev[0].kind, EventKind::Blocked, "{to} {alpn:?}");
            assert_eq!(app.socket().state(), S_::Closed, "the app saw an RST");
            assert_eq!(upstream_bytes(&outs), 0);
        } else {
            assert_eq!(ev[0].kind, EventKind::Opened, "{to} {alpn:?}");
            let flow = tcp_open_of(&outs).expect("opened");
            e.handle_tcp_connected(flow, now);
            deliver(&mut app, &mut e, &mut outs);
            outs.extend(run_until(&mut app, &mut e, &mut now, MS, 50, |_, o| {
                upstream_bytes(o) >= hello.len()
            }));
            assert_eq!(upstream_bytes(&outs), hello.len(), "the hello, whole");
        }
    }
}

/// A ClientHello padded past the 16 KiB read before a verdict (40 KiB, in
/// three records) is still read whole and judged by its name.
#[test]
fn a_hello_longer_than_the_first_read_is_judged_whole() {
    let name = "104-166-161-75.edge.agora.io";
    let hello = crate::wire::tls::client_hello_records(name, 40_000);
    assert!(hello.len() > 2 * TCP_SNIFF_BYTES);
    long_first_bytes_are_blocked_by_name("198.51.100.7:443", &hello, name);
}

/// An HTTP request whose `Host` (a PRC vendor's edge) follows 30 KB of
/// cookies is read to its `Host` and judged by it.
#[test]
fn a_request_head_longer_than_the_first_read_is_judged_by_its_host() {
    let name = "104-166-161-75.edge.agora.io";
    let mut request = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
    request.resize(request.len() + 30_000, b'x');
    request.extend_from_slice(format!("\r\nHost: {name}\r\n\r\n").as_bytes());
    long_first_bytes_are_blocked_by_name("198.51.100.7:80", &request, name);
}

/// The long reads' places are given back, by a flow that goes before its
/// verdict and by one judged: more connections than [`LONG_FIRST_READS`],
/// one after another, each with a padded hello, are each read whole and
/// blocked by name; none is left counted.
#[test]
fn long_first_reads_give_their_place_back() {
    let name = "104-166-161-75.edge.agora.io";
    let hello = crate::wire::tls::client_hello_records(name, 40_000);
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    // Apps that give up halfway through their hello (reset): their flows
    // go before any verdict.
    for i in 0..e.cfg.long_first_reads + 6 {
        let mut app = App::connect(&format!("198.51.100.{}:443", 100 + i));
        let mut sent = 0;
        for _ in 0..100 {
            now += MS;
            app.step(&mut e, now);
            if sent < 30_000 && app.socket().may_send() {
                sent += app.socket().send_slice(&hello[sent..30_000]).expect("send");
            }
            if sent == 30_000 && e.long_reads > 0 {
                break;
            }
        }
        assert_eq!(e.long_reads, 1, "a long read in progress");
        app.socket().abort();
        for _ in 0..10 {
            now += MS;
            app.step(&mut e, now);
        }
        assert_eq!(e.long_reads, 0, "given back when the flow went");
    }
    for i in 0..e.cfg.long_first_reads + 6 {
        let to = format!("198.51.100.{}:443", 10 + i);
        blocked_by_name_on(&mut e, &mut now, &to, &hello, name);
    }
    assert_eq!(e.long_reads, 0);
    assert_eq!(e.counters.tcp_long_reads_refused, 0);
}

/// A padded hello with an ordinary name, read whole and allowed, goes
/// upstream whole once the connection is up, and its long read's place
/// is given back.
#[test]
fn an_allowed_long_hello_goes_out_whole() {
    let hello = crate::wire::tls::client_hello_records("www.example.org", 40_000);
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut app = App::connect("198.51.100.7:443");
    let mut now = S;
    let mut outs = app_sends_until(&mut app, &mut e, &mut now, &hello, |_, o| {
        tcp_open_of(o).is_some()
    });
    let flow = tcp_open_of(&outs).expect("opened");
    assert_eq!(e.long_reads, 1, "held while connecting");
    e.handle_tcp_connected(flow, now);
    deliver(&mut app, &mut e, &mut outs);
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 50, |_, o| {
        upstream_bytes(o) >= hello.len()
    }));
    assert_eq!(upstream_bytes(&outs), hello.len());
    assert_eq!(e.long_reads, 0);
}

/// A ClientHello naming `sni` whose padding extension (`pad` bytes)
/// comes before its `server_name`, in records of at most 16,384 bytes.
fn padding_then_name(sni: &str, pad: usize) -> Vec<u8> {
    let n = |v: usize| u16::try_from(v).expect("fits").to_be_bytes();
    let mut ext = vec![0, 21];
    ext.extend_from_slice(&n(pad));
    ext.resize(ext.len() + pad, 0);
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&n(sni.len() + 5));
    ext.extend_from_slice(&n(sni.len() + 3));
    ext.push(0);
    ext.extend_from_slice(&n(sni.len()));
    ext.extend_from_slice(sni.as_bytes());
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&n(ext.len()));
    body.extend_from_slice(&ext);
    let len = u32::try_from(body.len()).expect("fits").to_be_bytes();
    let mut hs = vec![1, len[1], len[2], len[3]];
    hs.extend_from_slice(&body);
    let mut rec = Vec::new();
    for chunk in hs.chunks(16_384) {
        rec.extend_from_slice(&[22, 3, 1]);
        rec.extend_from_slice(&n(chunk.len()));
        rec.extend_from_slice(chunk);
    }
    rec
}

/// With no long read allowed, a padded hello is judged on its first
/// 16 KiB and counted: by the name they hold when its `server_name`
/// extension is in them (here: blocked, a PRC vendor under `strict`),
/// without a name when they end before it (here: let through, as any
/// nameless hello to a US address under `strict`).
#[test]
fn a_refused_long_read_is_judged_on_the_first_read_and_counted() {
    use smoltcp::socket::tcp::State as S_;
    let agora = "104-166-161-75.edge.agora.io";
    let cfg = EngineConfig {
        long_first_reads: 0,
        ..EngineConfig::default()
    };
    // The name first, then the padding.
    let hello = crate::wire::tls::client_hello_records(agora, 40_000);
    let (mut e, _) = engine("strict", cfg, &[]);
    let mut app = App::connect("198.51.100.7:443");
    let mut now = S;
    let outs = app_sends_until(&mut app, &mut e, &mut now, &hello, |a, o| {
        tcp_open_of(o).is_some() || a.socket().state() == S_::Closed
    });
    assert!(tcp_open_of(&outs).is_none(), "not opened: {outs:?}");
    let ev = events(&outs);
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::Blocked && e.server_name.as_deref() == Some(agora)),
        "{ev:?}"
    );
    assert_eq!(e.counters.tcp_long_reads_refused, 1);
    // The padding first (a hello whose other extensions come before its
    // name), then the name: past the first read.
    let hello = padding_then_name(agora, 40_000);
    assert_eq!(
        crate::wire::tls::client_hello(&hello, &mut Vec::new()),
        crate::wire::tls::Hello::Found(crate::wire::tls::ClientHello {
            sni: Some(agora),
            alpn_raw: None
        }),
        "a hello naming the vendor"
    );
    let (mut e, _) = engine("strict", cfg, &[]);
    let mut app = App::connect("198.51.100.8:443");
    let outs = app_sends_until(&mut app, &mut e, &mut now, &hello, |_, o| {
        tcp_open_of(o).is_some()
    });
    assert!(tcp_open_of(&outs).is_some(), "opened: {outs:?}");
    assert_eq!(app.socket().state(), S_::Established);
    assert_eq!(e.counters.tcp_long_reads_refused, 1);
    assert_eq!(e.long_reads, 0);
}

#[test]
fn an_address_only_policy_judges_at_the_syn() {
    let (mut e, handle) = engine_with(
        "name='cidr'\ndefault='allow'\n[[rule]]\nname='no test-CN'\naction='block'\nblock='reject'\ncidr=['203.0.113.0/25']\n",
    );
    assert!(!handle.current().needs_payload());
    let mut app = App::connect("203.0.113.5:443");
    let mut outs = Vec::new();
    let mut now = S;
    for _ in 0..20 {
        now += MS;
        outs.extend(app.step(&mut e, now));
        if app.socket().state() == smoltcp::socket::tcp::State::Closed {
            break;
        }
    }
    assert_eq!(
        app.socket().state(),
        smoltcp::socket::tcp::State::Closed,
        "RST answers the SYN"
    );
    assert_eq!(events(&outs)[0].kind, EventKind::Blocked);
    assert!(!outs.iter().any(|o| matches!(o, Output::TcpOpen { .. })));
    // An allowed address connects at once, before any payload.
    let mut app = App::connect("198.51.100.7:22");
    outs.clear();
    for _ in 0..5 {
        now += MS;
        outs.extend(app.step(&mut e, now));
    }
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::TcpOpen { dst, .. } if *dst == sa("198.51.100.7:22"))),
        "{outs:?}"
    );
}

/// A connection dropped at its SYN (`block = "drop"` on an address that
/// settles it) is remembered silently: the app's retransmitted SYNs get no
/// answer and are neither judged nor evented again (one `blocked` event,
/// one count, however often the app retries); the entry is freed once the
/// app gives up.
#[test]
fn a_connection_dropped_at_its_syn_is_evented_once() {
    let (mut e, _) = engine_with(
        "name='drop cn'\ndefault='allow'\n[[rule]]\nname='no test-CN'\naction='block'\nblock='drop'\ncidr=['203.0.113.0/25']\n",
    );
    let mut app = App::connect("203.0.113.5:443");
    let mut outs = Vec::new();
    let mut now = S;
    let mut syns = 0;
    for _ in 0..100 {
        now += 100 * MS;
        let before = app.sent.0;
        outs.extend(app.step(&mut e, now));
        syns += app.sent.0 - before;
    }
    assert!(syns >= 3, "the app retried its SYN: {syns}");
    assert_eq!(app.received, 0, "no answer at all");
    let ev = events(&outs);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, EventKind::Blocked);
    assert_eq!(e.counters.blocked, 1);
    e.handle_timeout(now + 61 * S);
    assert_eq!(e.flow_count(), 0, "freed once idle");
}

#[test]
fn a_dropped_tcp_flow_gets_no_answer_at_all() {
    let cat = Catalog::shipped().expect("catalog");
    let p = Policy::parse(
        Path::new("p.toml"),
        "name='drop web'\ndefault='allow'\n[[rule]]\nname='no web to test-CN'\naction='block'\nblock='drop'\ntraffic=['web']\ncidr=['203.0.113.0/25']\n",
        None,
        &cat,
    )
    .expect("policy");
    let cfg = EngineConfig {
        udp_idle_ns: 5 * S,
        ..EngineConfig::default()
    };
    let (mut e, handle) = engine("default", cfg, &[]);
    handle.replace(p);
    let mut app = App::connect("203.0.113.5:443");
    let hello = crate::wire::tls::tests::hello_record("quiet.example");
    let mut outs = Vec::new();
    let mut now = S;
    let mut sent = false;
    for _ in 0..40 {
        now += 10 * MS;
        outs.extend(app.step(&mut e, now));
        if !sent && app.socket().may_send() {
            app.socket().send_slice(&hello).expect("send");
            sent = true;
        }
    }
    let ev = events(&outs);
    assert_eq!(
        (ev.len(), ev[0].kind, ev[0].action),
        (1, EventKind::Blocked, Decision::Block)
    );
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::TcpOpen { .. } | Output::TcpSend { .. }))
    );
    // From the verdict on, nothing comes back, not even an RST: the app's
    // connection just hangs while it keeps sending.
    let before = app.received;
    app.socket().send_slice(b"more bytes").expect("send");
    for _ in 0..40 {
        now += 50 * MS;
        outs.extend(app.step(&mut e, now));
    }
    assert_eq!(app.received, before, "no packet back after the drop");
    assert_eq!(
        app.socket().state(),
        smoltcp::socket::tcp::State::Established
    );
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::TcpOpen { .. } | Output::TcpSend { .. }))
    );
    // The silent entry is freed once idle.
    e.handle_timeout(now + 10 * S);
    assert_eq!(e.flow_count(), 0);
}

#[test]
fn idle_tcp_connections_are_reset() {
    let cfg = EngineConfig {
        tcp_idle_ns: 10 * S,
        ..EngineConfig::default()
    };
    let (mut e, _) = engine("default", cfg, &[]);
    let mut app = App::connect("198.51.100.7:80");
    let mut outs = Vec::new();
    let mut now = S;
    let mut sent = false;
    for _ in 0..20 {
        now += MS;
        outs.extend(app.step(&mut e, now));
        if !sent && app.socket().may_send() {
            app.socket()
                .send_slice(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
                .expect("send");
            sent = true;
        }
    }
    let Some(Output::TcpOpen { flow, .. }) = outs
        .iter()
        .find(|o| matches!(o, Output::TcpOpen { .. }))
        .cloned()
    else {
        panic!("opened")
    };
    e.handle_tcp_connected(flow, now);
    while e.poll_output().is_some() {}
    assert_eq!(e.flow_count(), 1);
    // The engine asks to be woken when the connection would go idle.
    let deadline = e.poll_timeout().expect("an idle deadline");
    assert!(deadline <= now + 10 * S, "{deadline}");
    // Quiet for longer than the idle limit: reset, upstream closed.
    now += 11 * S;
    e.handle_timeout(now);
    let outs: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    assert!(outs.contains(&Output::Close { flow }), "{outs:?}");
    for o in outs {
        if let Output::ToTun(p) = o {
            app.dev.rx.push_back(p);
        }
    }
    assert_eq!(e.flow_count(), 0);
    for _ in 0..3 {
        now += MS;
        app.step(&mut e, now);
    }
    assert_eq!(
        app.socket().state(),
        smoltcp::socket::tcp::State::Closed,
        "the app saw the RST"
    );
}

#[test]
fn ipv6_udp_allowed_and_blocked() {
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[3; 12]);
    // US test range: allowed, the reply comes back over IPv6.
    e.handle_tun(
        &udp("[2001:db8:1::10]:40000", "[2001:db8:1::20]:3478", &stun),
        S,
    );
    let out = drain(&mut e);
    let flow = events(&out)[0].flow;
    assert_eq!(events(&out)[0].action, Decision::Allow);
    e.handle_udp_from_upstream(flow, b"pong", S + 1);
    let out = drain(&mut e);
    let [Output::ToTun(pkt)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let p = parse_ip(pkt).expect("parses");
    assert_eq!(p.src.to_string(), "2001:db8:1::20");
    assert_eq!(reply::l4_checksum(p.src, p.dst, 17, p.l4), 0);
    // CN test range: the ping is blocked, ICMPv6 unreachable back.
    e.handle_tun(
        &udp("[2001:db8:1::10]:40001", "[2001:db8:86::20]:3478", &stun),
        S + 2,
    );
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0);
    let icmp = out
        .iter()
        .find_map(|o| {
            if let Output::ToTun(p) = o {
                Some(p)
            } else {
                None
            }
        })
        .expect("icmpv6");
    assert!(matches!(
        parse_ip(icmp).expect("p").transport,
        Transport::Icmp {
            kind: 1,
            code: 1,
            v6: true,
            ..
        }
    ));
}

#[test]
fn data_on_the_syn_is_not_relayed_before_the_verdict() {
    // A SYN carrying a TLS hello (TCP Fast Open style) to a US address: only
    // the payload (an Agora edge's name, PRC vendor) could block it, so
    // the address alone settles nothing and the payload path is what runs.
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let hello = crate::wire::tls::tests::hello_record("104-166-161-75.edge.agora.io");
    let (src, dst) = ([192, 0, 2, 200], [198, 51, 100, 7]);
    let mut t = vec![
        0x9C, 0x40, 0x01, 0xBB, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xFF, 0xFF, 0, 0, 0, 0,
    ];
    t.extend_from_slice(&hello);
    let c = reply::l4_checksum(IpAddr::from(src), IpAddr::from(dst), 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + t.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let hc = reply::checksum(&ip);
    ip[10..12].copy_from_slice(&hc.to_be_bytes());
    ip.extend_from_slice(&t);
    let mut outs = Vec::new();
    for i in 0..5 {
        e.handle_tun(&ip, S + i * MS);
        e.handle_timeout(S + i * MS + 400 * MS);
        outs.extend(drain(&mut e));
    }
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::TcpOpen { .. } | Output::TcpSend { .. })),
        "{outs:?}"
    );
    assert_eq!(e.counters.opened, 0);
    // The SYN was answered (the connection is accepted locally and waits
    // for the app's first bytes), not refused: the address settled nothing.
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::ToTun(p) if p[33] & 0x12 == 0x12)),
        "a SYN-ACK: {outs:?}"
    );
}

#[test]
fn raw_ip_protocols_never_leave() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    for proto in [47u8, 50, 132, 253] {
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, proto, 0, 0, 192, 0, 2, 200, 203, 0, 113, 5,
        ];
        ip.extend_from_slice(&[0; 8]);
        e.handle_tun(&ip, S);
    }
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.counters.drops.get(&DropReason::OtherProtocol), Some(&4));
}

#[test]
fn broadcast_and_multicast_stay_in_the_tunnel() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    for (from, to) in [
        ("198.18.1.2:5353", "224.0.0.251:5353"),
        ("198.18.1.2:1900", "239.255.255.250:1900"),
        ("198.18.1.2:6000", "255.255.255.255:6000"),
        ("198.18.1.2:6000", "0.0.0.0:6000"),
        ("[2001:db8:ff01::2]:5353", "[ff02::fb]:5353"),
        ("[2001:db8:ff01::2]:53", "[ff05::1:3]:53"),
    ] {
        e.handle_tun(&udp(from, to, b"who is there"), S);
    }
    e.handle_tun(&tcp_syn("198.18.1.2:40000", "224.0.0.1:80"), S);
    assert!(drain(&mut e).is_empty());
    assert_eq!(
        e.counters.drops.get(&DropReason::BroadcastOrMulticast),
        Some(&7)
    );
    assert_eq!(e.flow_count(), 0);
}

#[test]
fn the_flow_bound_counts_tcp_and_udp_together() {
    // Found by the property test below: a TCP flow plus a full set of UDP
    // flows went over the bound.
    let cfg = EngineConfig {
        max_flows: 2,
        ..EngineConfig::default()
    };
    let (mut e, _) = engine("default", cfg, &[]);
    e.handle_tun(&tcp_syn("192.0.2.200:40000", "198.51.100.7:22"), S);
    e.handle_tun(&udp("192.0.2.200:1", "198.51.100.7:5000", b"a"), S);
    e.handle_tun(&udp("192.0.2.200:2", "198.51.100.7:5000", b"b"), S);
    assert_eq!((e.flow_count(), e.counters.refused), (2, 1));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Nothing on the packet path panics, whatever the app sends, and the
    /// flow table stays within its bound.
    #[test]
    fn arbitrary_packets_never_panic(packets in proptest::collection::vec((0u8..4, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)), 1..40)) {
        let cfg = EngineConfig { max_flows: 8, ..EngineConfig::default() };
        let (mut e, _) = engine("clubhouse", cfg, &[("id", "secret-123")]);
        for (i, (kind, body)) in packets.iter().enumerate() {
            let now = S + i as u64 * 50 * MS;
            let pkt: Vec<u8> = match kind {
                // Random bytes as they come.
                0 => body.clone(),
                // A valid IPv4 header around random transport bytes.
                1 | 2 => {
                    let proto = if *kind == 1 { 6 } else { 17 };
                    let mut ip = vec![0x45, 0];
                    ip.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
                    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 192, 0, 2, 200, 203, 0, 113, (i % 7) as u8]);
                    ip.extend_from_slice(body);
                    ip
                }
                // A fragment with random data.
                _ => {
                    let mut ip = vec![0x45, 0];
                    ip.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
                    ip.extend_from_slice(&[0, 9, 0x20 | (i % 3) as u8, 0, 64, 17, 0, 0, 192, 0, 2, 200, 198, 51, 100, 1]);
                    ip.extend_from_slice(body);
                    ip
                }
            };
            e.handle_tun(&pkt, now);
            e.handle_timeout(now);
            while e.poll_output().is_some() {}
            proptest::prop_assert!(e.flow_count() <= 8);
        }
    }
}

/// The app's FIN reaches upstream only after every byte before it, even
/// when the upstream was paused (backpressure) while the app finished.
#[test]
fn the_app_fin_follows_all_its_bytes_through_a_paused_upstream() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    let mut app = App::connect("198.51.100.7:9000");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (mut now, mut off, mut flow, mut upstream) = (S, 0usize, None, Vec::new());
    let mut fin_at = None;
    for step in 0..4000 {
        now += MS;
        for o in app.step(&mut e, now) {
            match o {
                Output::TcpOpen { flow: f, .. } => {
                    flow = Some(f);
                    e.handle_tcp_connected(f, now);
                    // Pause at once: everything the app sends waits.
                    e.set_tcp_upstream_paused(f, true, now);
                }
                Output::TcpSend { payload, .. } => {
                    assert!(fin_at.is_none(), "bytes after the FIN");
                    upstream.extend(payload);
                }
                Output::TcpFin { .. } => fin_at = Some(upstream.len()),
                _ => {}
            }
        }
        if app.socket().may_send() && off < data.len() {
            off += app.socket().send_slice(&data[off..]).unwrap_or(0);
            if off == data.len() {
                app.socket().close();
            }
        }
        // Resume after a while, with the app long finished.
        if step == 300
            && let Some(f) = flow
        {
            e.set_tcp_upstream_paused(f, false, now);
        }
        if fin_at.is_some() {
            break;
        }
    }
    assert_eq!(
        fin_at,
        Some(data.len()),
        "FIN after all {} bytes",
        data.len()
    );
    assert!(upstream == data, "the bytes, in order");
}

/// Every new connection starts at the same allowance (a 1,024th of the
/// budget each way), whoever came before it; once the starts have spent
/// the budget, connections still open at the floor (counted as squeezed),
/// the budget is never passed, and none is refused.
#[test]
fn tcp_allowances_start_equal_and_pressure_never_refuses() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    let budget = EngineConfig::default().tcp_memory;
    let start = budget / 1024;
    let mut starts = Vec::new();
    for i in 0..800u16 {
        let syn = tcp_syn(&format!("192.0.2.200:{}", 20_000 + i), "198.51.100.7:443");
        e.handle_tun(&syn, S);
        let out = drain(&mut e);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::ToTun(p) if p[33] & 0x04 != 0)),
            "no RST"
        );
        let key = (
            sa(&format!("192.0.2.200:{}", 20_000 + i)),
            sa("198.51.100.7:443"),
        );
        let f = &e.tcp[&key];
        assert_eq!(f.win.up, f.win.down);
        starts.push(f.win.up);
        assert!(e.tcp_memory() <= budget, "within the budget");
    }
    assert_eq!(e.counters.refused, 0, "none refused");
    assert_eq!(e.flow_count(), 800);
    let fair = budget / (2 * (start - TCP_BUFFER_MIN));
    assert!(
        starts[..fair].iter().all(|&s| s == start),
        "the first {fair} all start at {start}: {starts:?}"
    );
    assert!(starts[fair..].iter().all(|&s| s == TCP_BUFFER_MIN));
    assert_eq!(
        e.counters.tcp_squeezed,
        u64::try_from(800 - fair).expect("fits"),
        "the rest were squeezed"
    );
    // The flow table's bound is what refuses.
    let cfg = EngineConfig {
        max_flows: 10,
        ..EngineConfig::default()
    };
    let (mut e, _) = engine("default", cfg, &[]);
    for i in 0..11u16 {
        let syn = tcp_syn(&format!("192.0.2.200:{}", 20_000 + i), "198.51.100.7:443");
        e.handle_tun(&syn, S);
        drain(&mut e);
    }
    assert_eq!((e.flow_count(), e.counters.refused), (10, 1));
}

/// Steps `app` until `done` says so or `steps` rounds of `dt` passed;
/// returns the engine's outputs other than packets for the app.
fn run_until(
    app: &mut App,
    e: &mut Engine,
    now: &mut u64,
    dt: u64,
    steps: usize,
    mut done: impl FnMut(&mut App, &[Output]) -> bool,
) -> Vec<Output> {
    let mut outs = Vec::new();
    for _ in 0..steps {
        *now += dt;
        outs.extend(app.step(e, *now));
        if done(app, &outs) {
            break;
        }
    }
    outs
}

/// An app connecting to `to` at `now`, stepped (1 ms at a time, 20 at
/// most) until its handshake completes; the engine's outputs meanwhile.
fn connected(e: &mut Engine, to: &str, now: &mut u64) -> (App, Vec<Output>) {
    let mut app = App::connect(to);
    let outs = run_until(&mut app, e, now, MS, 20, |a, _| {
        a.socket().state() == smoltcp::socket::tcp::State::Established
    });
    (app, outs)
}

fn tcp_open_of(outs: &[Output]) -> Option<FlowId> {
    outs.iter().find_map(|o| match o {
        Output::TcpOpen { flow, .. } => Some(*flow),
        _ => None,
    })
}

fn upstream_bytes(outs: &[Output]) -> usize {
    outs.iter()
        .map(|o| match o {
            Output::TcpSend { payload, .. } => payload.len(),
            _ => 0,
        })
        .sum()
}

/// With a link that finishes TCP checksums, the stack leaves them out (the
/// SYN-ACK's checksum field is zero); without, it computes them.
#[test]
fn tcp_checksums_are_left_to_a_link_that_finishes_them() {
    for offload in [false, true] {
        let (mut e, _) = engine("default", EngineConfig::default(), &[]);
        e.set_tcp_checksum_offload(offload);
        e.handle_tun(&tcp_syn("192.0.2.200:40000", "198.51.100.7:443"), S);
        let out = drain(&mut e);
        let synack = out
            .iter()
            .find_map(|o| match o {
                Output::ToTun(p) => Some(p),
                _ => None,
            })
            .expect("a SYN-ACK");
        let p = parse_ip(synack).expect("parses");
        let field = u16::from_be_bytes([p.l4[16], p.l4[17]]);
        if offload {
            assert_eq!(field, 0, "left to the link");
        } else {
            assert_eq!(reply::l4_checksum(p.src, p.dst, 6, p.l4), 0, "computed");
        }
    }
}

/// Under `strict` a CN address is refused at the SYN: no handshake, so the
/// app fails over at once; a US address is not (its payload is read).
#[test]
fn an_address_that_settles_the_block_is_refused_at_the_syn() {
    use smoltcp::socket::tcp::State as S_;
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut app = App::connect("203.0.113.5:443");
    let mut now = S;
    let mut established = false;
    let outs = run_until(&mut app, &mut e, &mut now, MS, 20, |a, _| {
        established |= a.socket().state() == S_::Established;
        a.socket().state() == S_::Closed
    });
    assert!(!established, "the handshake never completed");
    assert_eq!(app.socket().state(), S_::Closed, "an RST answered the SYN");
    let ev = events(&outs);
    assert_eq!(
        (ev.len(), ev[0].kind, ev[0].layer.as_deref()),
        (1, EventKind::Blocked, Some("geo:CN"))
    );
    assert_eq!(tcp_open_of(&outs), None);
    // A US address: the handshake completes and the engine waits for the
    // app's first bytes.
    let (mut app, _) = connected(&mut e, "198.51.100.7:443", &mut now);
    assert_eq!(app.socket().state(), S_::Established);
}

/// An app connects to `to` and stays quiet: the sniffing timer opens the
/// flow and its upstream connects. The flow, what came out, the time.
fn opened_quiet(app: &mut App, e: &mut Engine, now: &mut u64) -> (FlowId, Vec<Output>) {
    let mut outs = run_until(app, e, now, 10 * MS, 400, |_, o| tcp_open_of(o).is_some());
    let flow = tcp_open_of(&outs).expect("opened by the timer");
    e.handle_tcp_connected(flow, *now);
    deliver(app, e, &mut outs);
    (flow, outs)
}

/// The engine's packets for the app go to the app; the rest to `outs`.
fn deliver(app: &mut App, e: &mut Engine, outs: &mut Vec<Output>) {
    while let Some(o) = e.poll_output() {
        match o {
            Output::ToTun(p) => app.dev.rx.push_back(p),
            o => outs.push(o),
        }
    }
}

/// The app sends a ClientHello naming `name`; runs until it is cut or has
/// all gone upstream. The hello's length.
fn app_sends_hello(
    app: &mut App,
    e: &mut Engine,
    now: &mut u64,
    name: &str,
    outs: &mut Vec<Output>,
) -> usize {
    use smoltcp::socket::tcp::State as S_;
    let hello = crate::wire::tls::tests::hello_record(name);
    app.socket().send_slice(&hello).expect("send");
    let n = hello.len();
    outs.extend(run_until(app, e, now, 10 * MS, 100, |a, o| {
        a.socket().state() == S_::Closed || upstream_bytes(o) >= n
    }));
    n
}

/// A flow the sniffing timer opened (the app said nothing for a while)
/// still has the app's first bytes judged before they leave: a ClientHello
/// naming a PRC vendor, sent 0.5 s or 2 s after connecting, never goes
/// upstream and the flow is cut; a harmless one goes out whole.
#[test]
fn late_first_bytes_are_judged_before_they_leave() {
    use smoltcp::socket::tcp::State as S_;
    for (delay, name, blocked) in [
        (500 * MS, "104-166-161-75.edge.agora.io", true),
        (2 * S, "104-166-161-75.edge.agora.io", true),
        (2 * S, "www.example.org", false),
    ] {
        let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
        let mut app = App::connect("198.51.100.7:443");
        let mut now = S;
        let start = now;
        // The app connects and stays quiet: the timer opens the flow.
        let (flow, mut outs) = opened_quiet(&mut app, &mut e, &mut now);
        while now < start + delay {
            now += 10 * MS;
            outs.extend(app.step(&mut e, now));
        }
        let hello_len = app_sends_hello(&mut app, &mut e, &mut now, name, &mut outs);
        let ev = events(&outs);
        if blocked {
            assert_eq!(
                upstream_bytes(&outs),
                0,
                "{name} after {delay} ns: {outs:?}"
            );
            assert!(outs.contains(&Output::Close { flow }));
            let cut = ev
                .iter()
                .find(|e| e.kind == EventKind::Cut)
                .expect("a cut event");
            assert_eq!(
                (cut.server_name.as_deref(), cut.layer.as_deref()),
                (Some(name), Some("vendor:CN"))
            );
            assert_eq!(app.socket().state(), S_::Closed, "the app saw an RST");
        } else {
            assert_eq!(upstream_bytes(&outs), hello_len, "the hello, whole");
            assert!(!ev.iter().any(|e| e.kind == EventKind::Cut));
        }
    }
}

/// A server that speaks first, with bytes that look like TLS records or an
/// HTTP response, cannot stand in for its client: the app's own hello,
/// naming a blocked vendor, is still read and judged before it leaves.
#[test]
fn a_server_speaking_first_does_not_decide_for_the_client() {
    let first: [&[u8]; 2] = [
        &[23, 3, 3, 0, 4, 1, 2, 3, 4],
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ];
    for server_first in first {
        let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
        let mut app = App::connect("198.51.100.7:443");
        let mut now = S;
        let (flow, mut outs) = opened_quiet(&mut app, &mut e, &mut now);
        assert_eq!(
            e.handle_tcp_from_upstream(flow, server_first, now),
            server_first.len()
        );
        deliver(&mut app, &mut e, &mut outs);
        for _ in 0..5 {
            now += 10 * MS;
            outs.extend(app.step(&mut e, now));
        }
        let name = "104-166-161-75.edge.agora.io";
        app_sends_hello(&mut app, &mut e, &mut now, name, &mut outs);
        assert_eq!(upstream_bytes(&outs), 0, "{server_first:?}: {outs:?}");
        let ev = events(&outs);
        let cut = ev
            .iter()
            .find(|e| e.kind == EventKind::Cut)
            .expect("a cut event");
        assert_eq!(cut.server_name.as_deref(), Some(name));
    }
}

/// New rules reach the flows already open: a reload that blocks their
/// destination cuts an open UDP flow and an open TCP connection, with an
/// event naming the rule, and nothing more leaves on either.
#[test]
fn a_rules_change_cuts_open_flows_it_now_blocks() {
    use smoltcp::socket::tcp::State as S_;
    let (mut e, handle) = engine("default", EngineConfig::default(), &[]);
    e.handle_tun(&udp("192.0.2.200:40000", "203.0.113.5:7000", b"x"), S);
    drain(&mut e);
    // Held while it could be media, then opened.
    e.handle_timeout(S + udp::HOLD_NS);
    let out = drain(&mut e);
    let udp_flow = events(&out)[0].flow;
    assert_eq!(events(&out)[0].action, Decision::Allow);
    let mut app = App::connect("203.0.113.5:80");
    let mut now = S;
    let mut sent = false;
    let outs = run_until(&mut app, &mut e, &mut now, MS, 50, |a, o| {
        if !sent && a.socket().may_send() {
            a.socket()
                .send_slice(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
                .expect("send");
            sent = true;
        }
        tcp_open_of(o).is_some()
    });
    let tcp_flow = tcp_open_of(&outs).expect("opened");
    e.handle_tcp_connected(tcp_flow, now);
    drain(&mut e);
    handle
        .replace(Policy::preset("strict", &Catalog::shipped().expect("catalog")).expect("strict"));
    assert_eq!(
        e.poll_timeout(),
        Some(0),
        "new rules ask for a look at once"
    );
    now += MS;
    e.handle_timeout(now);
    let mut outs = Vec::new();
    while let Some(o) = e.poll_output() {
        match o {
            Output::ToTun(p) => app.dev.rx.push_back(p),
            o => outs.push(o),
        }
    }
    assert!(outs.contains(&Output::Close { flow: udp_flow }), "{outs:?}");
    assert!(outs.contains(&Output::Close { flow: tcp_flow }), "{outs:?}");
    let cuts: Vec<_> = events(&outs)
        .into_iter()
        .filter(|e| e.kind == EventKind::Cut)
        .collect();
    assert_eq!(cuts.len(), 2);
    assert!(
        cuts.iter()
            .all(|c| c.rule.as_deref() == Some("nothing to PRC jurisdiction; unknown counts"))
    );
    assert_eq!(e.counters.cut, 2);
    // Nothing more leaves on either.
    e.handle_tun(&udp("192.0.2.200:40000", "203.0.113.5:7000", b"y"), now);
    assert_eq!(sent_upstream(&drain(&mut e)), 0);
    let outs = run_until(&mut app, &mut e, &mut now, MS, 20, |a, _| {
        a.socket().state() == S_::Closed
    });
    assert_eq!(app.socket().state(), S_::Closed, "the app's side was reset");
    assert_eq!(upstream_bytes(&outs), 0);
}

/// One capture's packets, replayed through the live engine (which answers
/// the DNS query through its resolver, here given the captured answer's
/// records) and through the audit's inspector: every flow gets the same
/// verdict, the Agora edge's media included (blocked by the vendor layer
/// through the name the DNS answer tied to its address, 1 s TTL and all).
#[test]
fn the_audit_and_the_engine_give_the_same_verdicts() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};
    let edge = "104-166-161-75.edge.agora.io.";
    let mut q = Message::query();
    q.metadata.id = 77;
    q.add_query(Query::query(
        Name::from_ascii(edge).expect("name"),
        RecordType::A,
    ));
    let mut rec = Record::from_rdata(
        Name::from_ascii(edge).expect("name"),
        1,
        RData::A(A("198.51.100.20".parse().expect("ip"))),
    );
    rec.ttl = 1;
    let mut r = Message::response(77, OpCode::Query);
    r.metadata.message_type = MessageType::Response;
    r.add_query(Query::query(
        Name::from_ascii(edge).expect("name"),
        RecordType::A,
    ));
    r.add_answer(rec.clone());
    let (app_dns, dns) = ("192.0.2.200:5353", "198.18.1.1:53");
    let rtp = crate::wire::rtc::rtp_packet;
    let probe = crate::wire::rtc::sd_rtn_probe("1-2-3-4.edge.agora.io");
    // (time, packet) after the DNS exchange.
    let mut later: Vec<(u64, Vec<u8>)> = Vec::new();
    for seq in 0..10u16 {
        let t = 5 * S + u64::from(seq) * 20 * MS;
        later.push((t, udp("192.0.2.200:40002", "198.51.100.20:5000", &rtp(seq))));
        later.push((t, udp("192.0.2.200:40003", "198.51.100.30:5000", &rtp(seq))));
    }
    later.push((6 * S, udp("192.0.2.200:40004", "203.0.113.10:8130", &probe)));
    later.push((
        6 * S,
        udp("192.0.2.200:40005", "198.51.100.40:443", b"opaque"),
    ));

    // The live engine.
    let (mut e, handle) = engine("clubhouse", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app_dns, dns, &q.to_vec().expect("query")), S);
    let token = drain(&mut e)
        .iter()
        .find_map(|o| match o {
            Output::DnsQuery { query, .. } => Some(*query),
            _ => None,
        })
        .expect("asks the resolver");
    e.handle_dns_answer(
        token,
        Some(Resolved {
            rcode: hickory_proto::op::ResponseCode::NoError,
            records: vec![rec],
            negative_ttl: None,
        }),
        S,
    );
    drain(&mut e);
    let mut live: HashMap<String, &'static str> = HashMap::new();
    for (t, p) in &later {
        e.handle_tun(p, *t);
        for o in drain(&mut e) {
            if let Output::Event(ev) = o {
                live.insert(ev.server.clone(), ev.action.as_str());
            }
        }
    }

    // The audit.
    let mut insp = crate::engine::Inspector::new(100, None);
    insp.on_ip(&udp(app_dns, dns, &q.to_vec().expect("query")), S);
    insp.on_ip(&udp(dns, app_dns, &r.to_vec().expect("answer")), S);
    for (t, p) in &later {
        insp.on_ip(p, *t);
    }
    let policy = handle.current();
    let audit: HashMap<String, &'static str> = insp
        .flows()
        .iter()
        .filter(|f| f.core.server.port() != 53)
        .map(|f| {
            let v = f.judge(&policy, &e.intel);
            (
                f.core.server.to_string(),
                if v.is_block() { "block" } else { "allow" },
            )
        })
        .collect();
    assert_eq!(live, audit);
    assert_eq!(live.len(), 4);
    assert_eq!(
        audit["198.51.100.20:5000"], "block",
        "the Agora edge, by name"
    );
    assert_eq!(audit["198.51.100.30:5000"], "allow");
    assert_eq!(audit["203.0.113.10:8130"], "block");
    assert_eq!(audit["198.51.100.40:443"], "allow");
}

/// Each connection's stack timers are filed on their own: SYN-ACKs the
/// app never acknowledged are sent again when their retransmission time
/// comes, for every connection, and the engine says when that is.
#[test]
fn stack_timers_are_kept_per_connection() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    let synacks = |out: &[Output]| {
        out.iter()
            .filter(|o| matches!(o, Output::ToTun(p) if p[33] & 0x12 == 0x12))
            .count()
    };
    for i in 0..100u16 {
        let syn = tcp_syn(&format!("192.0.2.200:{}", 20_000 + i), "198.51.100.7:443");
        e.handle_tun(&syn, S);
    }
    assert_eq!(synacks(&drain(&mut e)), 100);
    let due = e.poll_timeout().expect("a retransmission is due");
    assert!(due > S && due < S + 5 * S, "{due}");
    // Nothing before it is due; all 100 when it is.
    e.handle_timeout(due - 1);
    assert_eq!(synacks(&drain(&mut e)), 0);
    e.handle_timeout(due);
    assert_eq!(synacks(&drain(&mut e)), 100);
    assert!(e.poll_timeout().expect("the next one") > due);
}

/// Media cannot be disguised by its start: under `clubhouse`, RTP to a CN
/// relay that begins with one odd 1,400-byte datagram is held until its
/// class is known and then blocked, not a datagram of it leaving; the
/// same stream to a US relay, where no class could be blocked, is not held
/// and leaves whole, in order.
#[test]
fn media_that_starts_with_an_odd_datagram_is_held_then_judged() {
    let rtp = crate::wire::rtc::rtp_packet;
    let stream = |e: &mut Engine, to: &str, port: u16| {
        let from = format!("192.0.2.200:{port}");
        let mut out = Vec::new();
        e.handle_tun(&udp(&from, to, &[0x17; 1400]), S);
        out.extend(drain(e));
        for seq in 0..10u16 {
            e.handle_tun(&udp(&from, to, &rtp(seq)), S + u64::from(seq + 1) * 20 * MS);
            out.extend(drain(e));
        }
        out
    };
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    let out = stream(&mut e, "203.0.113.10:5004", 41_000);
    assert_eq!(sent_upstream(&out), 0, "nothing to the CN relay: {out:?}");
    let ev = events(&out);
    assert_eq!(
        (ev[0].kind, ev[0].class, ev[0].action),
        (EventKind::Blocked, Traffic::Media, Decision::Block)
    );
    assert!(e.counters.held_dropped >= 1);
    let out = stream(&mut e, "198.51.100.30:5004", 41_001);
    let sent: Vec<&Vec<u8>> = out
        .iter()
        .filter_map(|o| match o {
            Output::UdpSend { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 11, "all of it, once allowed");
    assert_eq!(sent[0].len(), 1400, "in order, the odd one first");
    assert_eq!(sent[1], &rtp(0));
    assert_eq!(e.counters.held, 1, "only the CN flow was held");
}

/// A held flow whose class never becomes known is decided when the hold
/// time is up: allowed here (unknown UDP to CN under `clubhouse`), it
/// opens and what was held leaves.
#[test]
fn a_hold_ends_at_its_time() {
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    e.handle_tun(&udp("192.0.2.200:41002", "203.0.113.10:7000", b"opaque"), S);
    assert_eq!(sent_upstream(&drain(&mut e)), 0, "held");
    let due = e.poll_timeout().expect("a deadline");
    assert!(due <= S + udp::HOLD_NS, "{due}");
    e.handle_timeout(S + udp::HOLD_NS);
    let out = drain(&mut e);
    assert!(out.contains(&Output::UdpSend {
        flow: events(&out)[0].flow,
        payload: b"opaque".to_vec()
    }));
    assert_eq!(events(&out)[0].kind, EventKind::Opened);
}

/// A world update that moves a server under a blocked jurisdiction cuts
/// the open media flow to it, and new flows there are blocked; the
/// engine follows the handle without being rebuilt.
#[test]
fn a_world_update_cuts_flows_it_now_places_under_a_blocked_jurisdiction() {
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv"),
    )
    .expect("fixture");
    let build = |csv: &str| {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("w.csv");
        std::fs::write(&p, csv).expect("write");
        let mut b = WorldBuilder::new();
        b.add_fixture_csv(&p, &mut |_| {}).expect("fixture");
        World::from_vec(b.build(&mut |_| {}).expect("builds").0).expect("loads")
    };
    let handle = Arc::new(WorldHandle::new(Arc::new(build(&fixture))));
    e.follow_world(Arc::clone(&handle));
    let rtp = crate::wire::rtc::rtp_packet;
    let media = |seq: u16| udp("192.0.2.200:40000", "198.51.100.7:5004", &rtp(seq));
    for seq in 0..8 {
        e.handle_tun(&media(seq), S + u64::from(seq) * 20 * MS);
    }
    let out = drain(&mut e);
    let opened = events(&out);
    // Opened at once (no class could block it there); RTP from the second
    // packet of its stream on.
    assert_eq!(
        opened[0].kind,
        EventKind::Opened,
        "media to the US is allowed"
    );
    let flow = opened[0].flow;
    // The same range, now in the PRC by every source.
    let moved = fixture.replace(
        "198.51.100.0/24,US,US,64502,Test US Carrier,US",
        "198.51.100.0/24,CN,CN,64500,Test PRC Telecom,CN",
    );
    assert_ne!(moved, fixture);
    handle.replace(build(&moved));
    assert_eq!(
        e.poll_timeout(),
        Some(0),
        "new world data asks for a look at once"
    );
    e.handle_timeout(S + S);
    let out = drain(&mut e);
    assert!(out.contains(&Output::Close { flow }), "{out:?}");
    let cut = events(&out)
        .into_iter()
        .find(|ev| ev.kind == EventKind::Cut)
        .expect("cut");
    assert_eq!(cut.layer.as_deref(), Some("geo:CN"));
    assert_eq!(cut.class, Traffic::Media);
    e.handle_tun(&media(9), S + S + MS);
    assert_eq!(sent_upstream(&drain(&mut e)), 0, "nothing more leaves");
}

/// A TURN Allocate request (RFC 8656): REQUESTED-TRANSPORT UDP.
fn turn_allocate() -> Vec<u8> {
    let mut m = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[3; 12]);
    m.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    m
}

#[test]
fn a_relay_is_judged_by_the_peers_it_is_asked_to_reach() {
    use crate::wire::rtc::{TURN_CHANNEL_BIND, TURN_CREATE_PERMISSION, TURN_SEND, turn_message};
    let (mut e, handle) = engine("clubhouse", EngineConfig::default(), &[]);
    let (app, relay) = ("192.0.2.200:40000", "198.51.100.7:3478");
    // The allocation itself goes to a US relay: media, allowed.
    e.handle_tun(&udp(app, relay, &turn_allocate()), S);
    let out = drain(&mut e);
    let flow = events(&out)[0].flow;
    assert_eq!(events(&out)[0].kind, EventKind::Opened);
    assert_eq!(sent_upstream(&out), 2, "open and send");
    // A permission for a US peer: relayed; the peer is on the flow.
    let us = sa("198.51.100.20:5004");
    let perm = turn_message(TURN_CREATE_PERMISSION, [4; 12], &[us], None, &[]);
    e.handle_tun(&udp(app, relay, &perm), 2 * S);
    let out = drain(&mut e);
    assert!(out.contains(&Output::UdpSend {
        flow,
        payload: perm.clone()
    }));
    assert!(events(&out).is_empty());
    // A channel to a CN peer: the request never leaves, the peer is
    // refused (one event naming it and the rule), and the relay goes on
    // for its US peer: a peer on the far side cannot end the call by
    // offering a candidate under a blocked jurisdiction.
    let cn = sa("203.0.113.10:5004");
    let bind = turn_message(TURN_CHANNEL_BIND, [5; 12], &[cn], Some(0x4001), &[]);
    e.handle_tun(&udp(app, relay, &bind), 3 * S);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0, "the bind to a CN peer never leaves");
    assert!(
        !out.contains(&Output::Close { flow }),
        "the relay is not cut"
    );
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventKind::PeerRefused);
    assert_eq!(ev[0].flow, flow);
    assert_eq!(ev[0].peer.as_deref(), Some("203.0.113.10:5004"));
    assert_eq!(ev[0].peers, ["203.0.113.10:5004".to_owned()]);
    assert_eq!(
        ev[0].rule.as_deref(),
        Some("no pings or media to PRC jurisdiction")
    );
    let json = serde_json::to_value(ev[0]).expect("json");
    assert_eq!(json["kind"], "peer-refused");
    assert_eq!(json["peer"], "203.0.113.10:5004");
    // Its retries, and a Send indication with media for it, never leave,
    // without more events; one naming the US peer and the CN one neither.
    let send_cn = turn_message(TURN_SEND, [6; 12], &[cn], None, b"voice");
    let both = turn_message(TURN_CREATE_PERMISSION, [8; 12], &[us, cn], None, &[]);
    for (i, m) in [&bind, &send_cn, &both].into_iter().enumerate() {
        e.handle_tun(&udp(app, relay, m), (4 + i as u64) * S);
        let out = drain(&mut e);
        assert_eq!(sent_upstream(&out), 0, "message {i} names the CN peer");
        assert!(events(&out).is_empty());
    }
    assert_eq!(e.counters.drops.get(&DropReason::TurnPeerRefused), Some(&4));
    // The US peer's media still goes: a Send indication and ChannelData.
    let send_us = turn_message(TURN_SEND, [9; 12], &[us], None, b"voice");
    for m in [send_us.clone(), vec![0x40, 0x00, 0, 4, 1, 2, 3, 4]] {
        e.handle_tun(&udp(app, relay, &m), 8 * S);
        let out = drain(&mut e);
        assert!(out.contains(&Output::UdpSend { flow, payload: m }));
    }
    assert_eq!((e.counters.cut, e.counters.blocked), (0, 0));
    // New rules judge a refused peer again at its next message: under
    // rules that allow it, the bind leaves.
    let cat = Catalog::shipped().expect("catalog");
    let open = "name='open'\ndefault='allow'\n";
    handle.replace(Policy::parse(Path::new("p.toml"), open, None, &cat).expect("policy"));
    e.handle_tun(&udp(app, relay, &bind), 9 * S);
    assert!(drain(&mut e).contains(&Output::UdpSend {
        flow,
        payload: bind.clone()
    }));
    handle.replace(Policy::preset("clubhouse", &cat).expect("preset"));
    // And a reload that blocks a peer the relay already reaches cuts it.
    e.handle_tun(&udp(app, relay, &send_us), 10 * S);
    let out = drain(&mut e);
    assert!(
        out.contains(&Output::Close { flow }),
        "the CN channel exists now"
    );
    assert_eq!(events(&out)[0].kind, EventKind::Cut);

    // A relay the rules block for itself is blocked whole, whatever its
    // peers: the allocation to a CN relay never leaves.
    let app2 = "192.0.2.200:40002";
    e.handle_tun(&udp(app2, "203.0.113.7:3478", &turn_allocate()), 11 * S);
    let out = drain(&mut e);
    assert_eq!(sent_upstream(&out), 0);
    assert_eq!(events(&out)[0].kind, EventKind::Blocked);

    // A message naming more peers than geowall reads is dropped, counted.
    let app3 = "192.0.2.200:40003";
    e.handle_tun(&udp(app3, relay, &turn_allocate()), 7 * S);
    drain(&mut e);
    let many: Vec<SocketAddr> = (1..=9)
        .map(|i| SocketAddr::from(([198, 51, 100, 30 + i], 9)))
        .collect();
    let crowd = turn_message(TURN_CREATE_PERMISSION, [7; 12], &many, None, &[]);
    e.handle_tun(&udp(app3, relay, &crowd), 8 * S);
    assert_eq!(sent_upstream(&drain(&mut e)), 0);
    assert_eq!(
        e.counters.drops.get(&DropReason::TurnTooManyPeers),
        Some(&1)
    );
}

/// The app at `from` connects to `to`, sends `req` and its FIN at once, a
/// millisecond a step for 50 steps; the engine's outputs.
fn send_and_close(e: &mut Engine, now: &mut u64, from: &str, to: &str, req: &[u8]) -> Vec<Output> {
    let mut app = App::connect_from(from, to);
    let mut outs = Vec::new();
    let mut sent = false;
    for _ in 0..50 {
        *now += MS;
        outs.extend(app.step(e, *now));
        if !sent && app.socket().may_send() {
            app.socket().send_slice(req).expect("send");
            app.socket().close();
            sent = true;
        }
    }
    outs
}

/// TCP flows end with a `closed` event however they end: an idle
/// connection closed by the idle time, a flow dropped silently (its
/// segments swallowed) when it has been idle for the UDP idle time, and
/// one still dropped silently when geowall stops, each repeating its
/// block and rule.
#[test]
fn idle_and_silently_dropped_tcp_flows_are_closed_too() {
    let cfg = EngineConfig {
        tcp_idle_ns: 5 * S,
        udp_idle_ns: 10 * S,
        ..EngineConfig::default()
    };
    let (mut e, handle) = engine("clubhouse", cfg, &[]);
    let cat = Catalog::shipped().expect("catalog");
    let text = "name='w'\ndefault='allow'\n[[rule]]\nname='no web on 7001'\naction='block'\nblock='drop'\ntraffic=['web']\nport=[7001]\n";
    handle.replace(Policy::parse(Path::new("p.toml"), text, None, &cat).expect("policy"));
    let mut now = S;
    let req = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
    let outs = send_and_close(
        &mut e,
        &mut now,
        "192.0.2.200:40001",
        "198.51.100.8:7001",
        req,
    );
    let dropped = events(&outs)[0].clone();
    assert_eq!(
        (dropped.kind, dropped.action),
        (EventKind::Blocked, Decision::Block)
    );
    // (Opened last: an app stepped after it would take its segments.)
    let (_app, open, _) = open_keep_alive(&mut e, &mut now, "198.51.100.7:80");
    assert_eq!(
        e.flow_count(),
        2,
        "the dropped flow is kept to swallow its segments"
    );
    let closed_now = |e: &mut Engine, at: u64| -> Vec<Event> {
        e.handle_timeout(at);
        events(&drain(e))
            .into_iter()
            .filter(|ev| ev.kind == EventKind::Closed)
            .cloned()
            .collect()
    };
    // The idle connection, at its idle time.
    let closed = closed_now(&mut e, 7 * S);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!((closed[0].flow, closed[0].action), (open, Decision::Allow));
    assert!(closed[0].volume.is_some_and(|v| v.bytes_up > 0));
    // The dropped one, at the UDP idle time, as the block it was.
    let closed = closed_now(&mut e, 12 * S);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].flow, dropped.flow);
    assert_eq!(closed[0].action, Decision::Block);
    assert_eq!(closed[0].rule.as_deref(), Some("no web on 7001"));
    assert_eq!(e.flow_count(), 0);
    // One still dropped at the stop: closed then.
    let outs = send_and_close(
        &mut e,
        &mut now,
        "192.0.2.200:40002",
        "198.51.100.8:7001",
        req,
    );
    let flow = events(&outs)[0].flow;
    e.close_all();
    let ev = events(&drain(&mut e))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].flow), (EventKind::Closed, flow));
    assert_eq!(ev[0].rule.as_deref(), Some("no web on 7001"));
}

/// TURN over TCP: the client's stream is framed and each message read for
/// its peers. A permission for a US peer that comes in two pieces leaves
/// only once whole (and judged). One for a CN peer is taken out of the
/// stream whole, and so is every later message naming it, while the
/// connection goes on for the US peer (one event naming the CN peer and
/// the rule). A message naming it whose head had to leave before the rest
/// came (slower than the sniffing time) cuts the connection instead.
#[test]
fn a_relay_over_tcp_is_judged_by_the_peers_it_is_asked_to_reach() {
    use crate::wire::rtc::{TURN_CREATE_PERMISSION, TURN_SEND, turn_message};
    use smoltcp::socket::tcp::State as S_;
    let (mut e, handle) = engine("clubhouse", EngineConfig::default(), &[]);
    let mut now = S;
    let (mut app, _) = connected(&mut e, "198.51.100.7:3478", &mut now);
    let alloc = turn_allocate();
    app.socket().send_slice(&alloc).expect("send");
    let mut outs = run_until(&mut app, &mut e, &mut now, MS, 50, |_, o| {
        tcp_open_of(o).is_some()
    });
    let flow = tcp_open_of(&outs).expect("a US relay: opened");
    e.handle_tcp_connected(flow, now);
    while let Some(o) = e.poll_output() {
        match o {
            Output::ToTun(p) => app.dev.rx.push_back(p),
            o => outs.push(o),
        }
    }
    assert_eq!(tcp_sent_upstream(&outs), alloc, "the allocation");
    // A US peer's permission, in two pieces: nothing of it leaves until
    // the rest is in.
    let us = sa("198.51.100.20:5004");
    let perm = turn_message(TURN_CREATE_PERMISSION, [4; 12], &[us], None, &[]);
    app.socket().send_slice(&perm[..10]).expect("send");
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 20, |_, _| false));
    assert_eq!(tcp_sent_upstream(&outs), alloc, "half a message waits");
    app.socket().send_slice(&perm[10..]).expect("send");
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 20, |_, _| false));
    let mut relayed = [alloc.clone(), perm].concat();
    assert_eq!(tcp_sent_upstream(&outs), relayed);
    assert!(!events(&outs).iter().any(|e| e.kind == EventKind::Cut));
    // A CN peer's permission, in one segment between media for the US
    // peer: taken out, the media on both sides of it relayed.
    let cn = sa("203.0.113.10:5004");
    let bad = turn_message(TURN_CREATE_PERMISSION, [5; 12], &[cn], None, &[]);
    let voice = turn_message(TURN_SEND, [6; 12], &[us], None, b"voice");
    let frame = vec![0x40, 0x00, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0];
    app.socket()
        .send_slice(&[voice.clone(), bad.clone(), frame.clone()].concat())
        .expect("send");
    let mut outs = run_until(&mut app, &mut e, &mut now, MS, 20, |_, _| false);
    relayed.extend_from_slice(&[voice.clone(), frame.clone()].concat());
    assert_eq!(
        tcp_sent_upstream(&outs),
        relayed[relayed.len() - 12 - voice.len()..]
    );
    assert!(
        !outs.contains(&Output::Close { flow }),
        "the relay is not cut"
    );
    let ev = events(&outs);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, EventKind::PeerRefused);
    assert_eq!(ev[0].proto, FlowProto::Tcp);
    assert_eq!(ev[0].peer.as_deref(), Some("203.0.113.10:5004"));
    assert_eq!(
        ev[0].rule.as_deref(),
        Some("no pings or media to PRC jurisdiction")
    );
    // Its retry and media for it, in pieces within the sniffing time,
    // around media for the US peer: taken out too, without more events.
    let send_cn = turn_message(TURN_SEND, [7; 12], &[cn], None, b"voice");
    let stream = [bad.clone(), voice.clone(), send_cn.clone(), frame.clone()].concat();
    for part in stream.chunks(17) {
        app.socket().send_slice(part).expect("send");
        outs.extend(run_until(&mut app, &mut e, &mut now, MS, 5, |_, _| false));
    }
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 20, |_, _| false));
    assert_eq!(
        tcp_sent_upstream(&outs),
        [voice.clone(), frame.clone(), voice.clone(), frame.clone()].concat()
    );
    assert!(events(&outs).len() == 1 && !outs.contains(&Output::Close { flow }));
    assert_eq!(e.counters.drops.get(&DropReason::TurnPeerRefused), Some(&3));
    assert_eq!((e.counters.cut, e.counters.blocked), (0, 0));
    // New rules judge the refused peer again at its next message: under
    // rules that allow it, its permission leaves; back under `clubhouse`,
    // the relay reaches it now, so the connection is cut.
    let cat = Catalog::shipped().expect("catalog");
    let open = "name='open'\ndefault='allow'\n";
    handle.replace(Policy::parse(Path::new("p.toml"), open, None, &cat).expect("policy"));
    app.socket().send_slice(&bad).expect("send");
    let outs = run_until(&mut app, &mut e, &mut now, MS, 20, |_, _| false);
    assert_eq!(tcp_sent_upstream(&outs), bad, "allowed now");
    handle.replace(Policy::preset("clubhouse", &cat).expect("preset"));
    let outs = run_until(&mut app, &mut e, &mut now, MS, 50, |a, _| {
        a.socket().state() == S_::Closed
    });
    assert!(
        outs.contains(&Output::Close { flow }),
        "cut: the relay reaches it"
    );
    // A second connection to the relay, its CN peer refused, then media
    // for it whose head stops for longer than the sniffing time: the head
    // leaves (the stream may be read wrongly), so the message cannot be
    // taken out whole when it ends: the connection is cut before its end
    // leaves, the event naming the peer.
    let (mut app, _) = connected(&mut e, "198.51.100.7:3480", &mut now);
    app.socket()
        .send_slice(&[alloc.clone(), bad.clone()].concat())
        .expect("send");
    let mut outs = run_until(&mut app, &mut e, &mut now, MS, 50, |_, o| {
        tcp_open_of(o).is_some()
    });
    let flow = tcp_open_of(&outs).expect("opened");
    e.handle_tcp_connected(flow, now);
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 5, |_, _| false));
    assert_eq!(tcp_sent_upstream(&outs), alloc, "the permission taken out");
    app.socket().send_slice(&send_cn[..24]).expect("send");
    outs.extend(run_until(
        &mut app,
        &mut e,
        &mut now,
        10 * MS,
        40,
        |_, _| false,
    ));
    let mut head = alloc.clone();
    head.extend_from_slice(&send_cn[..24]);
    assert_eq!(tcp_sent_upstream(&outs), head, "the head left");
    app.socket().send_slice(&send_cn[24..]).expect("send");
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 50, |a, _| {
        a.socket().state() == S_::Closed
    }));
    assert_eq!(tcp_sent_upstream(&outs), head, "its end never left");
    assert!(outs.contains(&Output::Close { flow }));
    let ev = events(&outs);
    let cut = ev.iter().find(|e| e.kind == EventKind::Cut).expect("a cut");
    assert_eq!(cut.peer.as_deref(), Some("203.0.113.10:5004"));
    assert_eq!(
        cut.rule.as_deref(),
        Some("no pings or media to PRC jurisdiction")
    );
    assert_eq!(app.socket().state(), S_::Closed, "the app saw an RST");
    // A message naming more peers than are read: the connection is cut,
    // counted, and the message never leaves (another connection: the app's
    // port is the same).
    let (mut app, _) = connected(&mut e, "198.51.100.7:3479", &mut now);
    let crowd: Vec<SocketAddr> = (1..=9)
        .map(|i| SocketAddr::from(([198, 51, 100, 30 + i], 5004)))
        .collect();
    let many = turn_message(TURN_CREATE_PERMISSION, [6; 12], &crowd, None, &[]);
    app.socket()
        .send_slice(&[turn_allocate(), many].concat())
        .expect("send");
    let outs = run_until(&mut app, &mut e, &mut now, MS, 50, |a, _| {
        a.socket().state() == S_::Closed
    });
    assert_eq!(upstream_bytes(&outs), 0, "nothing of it left");
    assert_eq!(app.socket().state(), S_::Closed);
    assert_eq!(
        e.counters.drops.get(&DropReason::TurnTooManyPeers),
        Some(&1)
    );
}

/// An app's keep-alive HTTP/1.x connection to `to`, its first request
/// (to an allowed host) judged, opened and relayed; the engine's outputs.
fn open_keep_alive(e: &mut Engine, now: &mut u64, to: &str) -> (App, FlowId, Vec<Output>) {
    open_after(
        e,
        now,
        to,
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    )
}

/// An app's connection to `to` whose `first` bytes were judged (within
/// 10 ms), opened and relayed; the engine's outputs.
fn open_after(e: &mut Engine, now: &mut u64, to: &str, first: &[u8]) -> (App, FlowId, Vec<Output>) {
    let (mut app, _) = connected(e, to, now);
    app.socket().send_slice(first).expect("send");
    let mut outs = run_until(&mut app, e, now, MS, 10, |_, o| tcp_open_of(o).is_some());
    let flow = tcp_open_of(&outs).expect("an allowed host: opened");
    e.handle_tcp_connected(flow, *now);
    while let Some(o) = e.poll_output() {
        match o {
            Output::ToTun(p) => app.dev.rx.push_back(p),
            o => outs.push(o),
        }
    }
    assert_eq!(tcp_sent_upstream(&outs), first, "{:?}", events(&outs));
    (app, flow, outs)
}

/// The app sends `bad` in `pieces` on an open flow: none of it leaves, the
/// connection is cut, and the cut's event names `host`.
fn later_request_is_cut(
    e: &mut Engine,
    now: &mut u64,
    c: &mut (App, FlowId, Vec<Output>),
    pieces: &[&[u8]],
    host: &str,
) {
    let cut = later_bytes_are_cut(e, now, c, pieces);
    assert_eq!(cut.server_name.as_deref(), Some("www.example.com"));
    assert_eq!(cut.hosts.last().map(String::as_str), Some(host));
}

/// The app sends `pieces` on an open flow: none of them leaves, the
/// connection is cut with an RST to the app; the cut's event.
fn later_bytes_are_cut(
    e: &mut Engine,
    now: &mut u64,
    (app, flow, outs): &mut (App, FlowId, Vec<Output>),
    pieces: &[&[u8]],
) -> Event {
    use smoltcp::socket::tcp::State as S_;
    let before = tcp_sent_upstream(outs);
    for p in pieces {
        app.socket().send_slice(p).expect("send");
        outs.extend(run_until(app, e, now, MS, 20, |a, _| {
            a.socket().state() == S_::Closed
        }));
    }
    assert_eq!(tcp_sent_upstream(outs), before, "the request never left");
    assert!(outs.contains(&Output::Close { flow: *flow }));
    assert_eq!(app.socket().state(), S_::Closed, "the app saw an RST");
    let ev = events(outs);
    let cut = ev.iter().find(|e| e.kind == EventKind::Cut).expect("a cut");
    assert!(cut.rule.is_some(), "{cut:?}");
    (*cut).clone()
}

/// Where a SOCKS client asks its proxy (a US address) to go is judged
/// before the request leaves: a name (a PRC vendor's edge), an address
/// (CN), and, through the tunnel to an allowed name, the ClientHello's
/// name, held while it comes; the connection is cut, and nothing of these
/// reaches the proxy. The greeting itself is judged at once (it is not
/// taken for the start of a STUN message and waited on), and an allowed
/// request and hello go out whole.
#[test]
fn where_a_socks_client_asks_to_go_is_judged_before_it_leaves() {
    let agora = "104-166-161-75.edge.agora.io";
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    let request = |name: &str| {
        let mut r = vec![5, 1, 0, 3, name.len() as u8];
        r.extend_from_slice(name.as_bytes());
        r.extend_from_slice(&443u16.to_be_bytes());
        r
    };
    // By name.
    let mut c = open_after(&mut e, &mut now, "198.51.100.7:1080", &[5, 1, 0]);
    let cut = later_bytes_are_cut(&mut e, &mut now, &mut c, &[&request(agora)]);
    assert_eq!(cut.protocol, Protocol::Socks);
    assert_eq!(cut.hosts, [agora]);
    // By address (IPv4, CN).
    let mut c = open_after(&mut e, &mut now, "198.51.100.8:1080", &[5, 1, 0]);
    let cn = [5, 1, 0, 1, 203, 0, 113, 10, 0x01, 0xBB];
    let cut = later_bytes_are_cut(&mut e, &mut now, &mut c, &[&cn]);
    assert_eq!(cut.peer.as_deref(), Some("203.0.113.10:443"), "{cut:?}");
    // An allowed name, then a ClientHello naming the edge through the
    // tunnel, in two pieces.
    let mut c = open_after(&mut e, &mut now, "198.51.100.9:1080", &[5, 1, 0]);
    let allowed = request("www.example.com");
    c.0.socket().send_slice(&allowed).expect("send");
    c.2.extend(run_until(&mut c.0, &mut e, &mut now, MS, 10, |_, _| false));
    assert_eq!(tcp_sent_upstream(&c.2), [&[5, 1, 0][..], &allowed].concat());
    let hello = crate::wire::tls::client_hello_records(agora, 0);
    let (a, b) = hello.split_at(40);
    let cut = later_bytes_are_cut(&mut e, &mut now, &mut c, &[a, b]);
    assert_eq!(cut.hosts, ["www.example.com", agora]);
    // All allowed: the request and the hello go out whole.
    let mut c = open_after(&mut e, &mut now, "198.51.100.10:1080", &[5, 1, 0]);
    let hello = crate::wire::tls::client_hello_records("www.example.org", 0);
    let (app, _, outs) = &mut c;
    for piece in [&allowed[..], &hello[..40], &hello[40..]] {
        app.socket().send_slice(piece).expect("send");
        outs.extend(run_until(app, &mut e, &mut now, MS, 10, |_, _| false));
    }
    assert_eq!(
        tcp_sent_upstream(outs),
        [&[5, 1, 0][..], &allowed, &hello].concat()
    );
    assert!(!events(outs).iter().any(|e| e.kind == EventKind::Cut));
}

/// Every request of a keep-alive HTTP/1.x connection is judged by its
/// host before it leaves: a later request to another allowed host goes
/// out once its head is whole; a body's bytes that read like a request are
/// not taken for one; a later request naming a PRC vendor's edge (whole,
/// or its head in two pieces) never leaves and the connection is cut, the
/// event naming the host; so is a forward proxy's request whose target
/// names it, whatever its `Host` says.
#[test]
fn every_request_of_a_keep_alive_connection_is_judged_by_its_host() {
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    let agora = "104-166-161-75.edge.agora.io";
    let mut c = open_keep_alive(&mut e, &mut now, "198.51.100.7:80");
    let first = tcp_sent_upstream(&c.2);
    // A request whose body reads like a request to the vendor (passed
    // over), then one to another allowed host, its head in two pieces.
    let body = format!("GET / HTTP/1.1\r\nHost: {agora}\r\n\r\n");
    let post = format!(
        "POST /form HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let other = b"GET /x HTTP/1.1\r\nHost: cdn.example.net\r\n\r\n";
    let (app, _, outs) = &mut c;
    app.socket()
        .send_slice(&[post.as_bytes(), &other[..20]].concat())
        .expect("send");
    outs.extend(run_until(app, &mut e, &mut now, MS, 20, |_, _| false));
    assert_eq!(
        tcp_sent_upstream(outs).len(),
        first.len(),
        "bytes that end inside a head wait for the rest"
    );
    app.socket().send_slice(&other[20..]).expect("send");
    outs.extend(run_until(app, &mut e, &mut now, MS, 20, |_, _| false));
    let allowed = [&first[..], post.as_bytes(), other].concat();
    assert_eq!(
        tcp_sent_upstream(outs),
        allowed,
        "allowed hosts go out whole"
    );
    assert!(!events(outs).iter().any(|e| e.kind == EventKind::Cut));
    // The vendor's edge, whole in one write.
    let bad = format!("GET /v HTTP/1.1\r\nUser-Agent: sdk\r\nHost: {agora}\r\n\r\n");
    later_request_is_cut(&mut e, &mut now, &mut c, &[bad.as_bytes()], agora);
    // Its head in two pieces, on another connection.
    let mut c = open_keep_alive(&mut e, &mut now, "198.51.100.8:80");
    let (a, b) = bad.as_bytes().split_at(30);
    later_request_is_cut(&mut e, &mut now, &mut c, &[a, b], agora);
    // A forward proxy asked for the vendor's edge by an absolute-form
    // target, with an allowed Host.
    let mut c = open_keep_alive(&mut e, &mut now, "198.51.100.9:3128");
    let proxied = format!("GET http://{agora}/v HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
    later_request_is_cut(&mut e, &mut now, &mut c, &[proxied.as_bytes()], agora);
}

/// A rule that allows one name does not carry another through the same
/// connection: each later request's host is judged by itself. Here an
/// allow rule for the site comes before the vendor block; a second request
/// on the site's connection naming the vendor's edge is cut, and one
/// naming another ordinary host goes on.
#[test]
fn a_name_an_allow_rule_matches_does_not_carry_a_later_one_through() {
    let cat = Catalog::shipped().expect("catalog");
    let p = Policy::parse(
        Path::new("p.toml"),
        "name='allowlist'\ndefault='allow'\n\
         [[rule]]\nname='our site'\naction='allow'\ndomain=['=www.example.com']\n\
         [[rule]]\nname='no PRC vendors'\naction='block'\nblock='reject'\n\
         jurisdiction={countries=['CN'], layers=['vendor']}\n",
        None,
        &cat,
    )
    .expect("policy");
    let (mut e, handle) = engine("default", EngineConfig::default(), &[]);
    handle.replace(p);
    let mut now = S;
    let agora = "104-166-161-75.edge.agora.io";
    let mut c = open_keep_alive(&mut e, &mut now, "198.51.100.7:80");
    let first = tcp_sent_upstream(&c.2);
    let other = b"GET /x HTTP/1.1\r\nHost: cdn.example.net\r\n\r\n";
    let (app, _, outs) = &mut c;
    app.socket().send_slice(other).expect("send");
    outs.extend(run_until(app, &mut e, &mut now, MS, 20, |_, _| false));
    assert_eq!(tcp_sent_upstream(outs), [&first[..], other].concat());
    let bad = format!("GET /v HTTP/1.1\r\nHost: {agora}\r\n\r\n");
    let cut = later_bytes_are_cut(&mut e, &mut now, &mut c, &[bad.as_bytes()]);
    assert_eq!(cut.rule.as_deref(), Some("no PRC vendors"));
    assert_eq!(cut.hosts.last().map(String::as_str), Some(agora));
}

/// A rule allowing a name a DNS answer tied to the address does not
/// carry a ClientHello naming something else: the hello's own name is also
/// judged by itself. The address (a shared front, say) is known from DNS
/// as the allowed site; a hello to it naming the vendor's edge is blocked,
/// one naming the site or an ordinary host is not.
#[test]
fn an_allowed_name_of_the_address_does_not_carry_another_hello_through() {
    let cat = Catalog::shipped().expect("catalog");
    let p = Policy::parse(
        Path::new("p.toml"),
        "name='allowlist'\ndefault='allow'\n\
         [[rule]]\nname='our site'\naction='allow'\ndomain=['=www.example.com']\n\
         [[rule]]\nname='no PRC vendors'\naction='block'\nblock='reject'\n\
         jurisdiction={countries=['CN'], layers=['vendor']}\n",
        None,
        &cat,
    )
    .expect("policy");
    let (mut e, handle) = engine("default", EngineConfig::default(), &[]);
    handle.replace(p);
    let front: IpAddr = "198.51.100.7".parse().expect("ip");
    e.names.learn(front, "www.example.com", 3600 * S, 1024);
    let mut now = S;
    for (name, port, opened) in [
        ("104-166-161-75.edge.agora.io", 443, false),
        ("www.example.com", 8443, true),
        ("cdn.example.net", 4433, true),
    ] {
        let to = format!("198.51.100.7:{port}");
        let (mut app, _) = connected(&mut e, &to, &mut now);
        let hello = crate::wire::tls::client_hello_records(name, 0);
        app.socket().send_slice(&hello).expect("send");
        let outs = run_until(&mut app, &mut e, &mut now, MS, 20, |a, o| {
            tcp_open_of(o).is_some() || a.socket().state() == smoltcp::socket::tcp::State::Closed
        });
        assert_eq!(
            tcp_open_of(&outs).is_some(),
            opened,
            "{name}: {:?}",
            events(&outs)
        );
        if !opened {
            let ev = events(&outs);
            let b = ev
                .iter()
                .find(|e| e.kind == EventKind::Blocked)
                .expect("blocked");
            assert_eq!(b.rule.as_deref(), Some("no PRC vendors"));
        }
    }
}

/// A connection that begins with an HTTP request and goes on in a protocol
/// of its own (no request heads) is not held up: its bytes leave as they
/// come.
#[test]
fn bytes_after_an_http_start_that_are_not_requests_are_not_held() {
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    let (app, _, outs) = &mut open_keep_alive(&mut e, &mut now, "198.51.100.7:80");
    let before = tcp_sent_upstream(outs).len();
    for msg in [&b"again"[..], b" 0001", b" HTTP/1.1 ok\r\n", b"\x00\x01"] {
        app.socket().send_slice(msg).expect("send");
        let sent = tcp_sent_upstream(outs).len();
        outs.extend(run_until(app, &mut e, &mut now, MS, 5, |_, o| {
            upstream_bytes(o) > 0
        }));
        assert_eq!(
            tcp_sent_upstream(outs).len(),
            sent + msg.len(),
            "{:?} left within 5 ms",
            String::from_utf8_lossy(msg)
        );
    }
    assert!(tcp_sent_upstream(outs).len() > before);
}

/// A SOCKS 5 client that asks its proxy (a US address) for a UDP relay
/// sends datagrams whose headers name their targets: one to a US address
/// leaves; one to a CN address never does, and the relay flow is cut, the
/// event naming the peer. The same datagrams from a client that asked for
/// no relay are not read so.
#[test]
fn a_socks_udp_relay_is_judged_by_the_targets_its_datagrams_name() {
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    let associate = [5, 3, 0, 1, 0, 0, 0, 0, 0, 0];
    let mut c = open_after(&mut e, &mut now, "198.51.100.7:1080", &[5, 1, 0]);
    c.0.socket().send_slice(&associate).expect("send");
    c.2.extend(run_until(&mut c.0, &mut e, &mut now, MS, 10, |_, _| false));
    assert_eq!(
        tcp_sent_upstream(&c.2),
        [&[5, 1, 0][..], &associate].concat()
    );
    let (app, relay) = ("192.0.2.200:41000", "198.51.100.7:40000");
    let to = |ip: [u8; 4]| {
        let mut d = vec![0, 0, 0, 1];
        d.extend_from_slice(&ip);
        d.extend_from_slice(&5004u16.to_be_bytes());
        d.extend_from_slice(&crate::wire::rtc::rtp_packet(1));
        d
    };
    e.handle_tun(&udp(app, relay, &to([198, 51, 100, 20])), now);
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(o, Output::UdpSend { .. })),
        "a US target: {out:?}"
    );
    e.handle_tun(&udp(app, relay, &to([203, 0, 113, 10])), now + MS);
    e.handle_tun(&udp(app, relay, &to([198, 51, 100, 20])), now + 2 * MS);
    let out = drain(&mut e);
    assert!(
        !out.iter().any(|o| matches!(o, Output::UdpSend { .. })),
        "{out:?}"
    );
    let ev = events(&out);
    let cut = ev.iter().find(|e| e.kind == EventKind::Cut).expect("a cut");
    assert_eq!(cut.peer.as_deref(), Some("203.0.113.10:5004"), "{cut:?}");
    // Another client's datagrams to the same proxy are not read so.
    let other = "192.0.2.201:41000";
    e.handle_tun(&udp(other, relay, &to([203, 0, 113, 10])), now + 3 * MS);
    let out = drain(&mut e);
    assert!(
        out.iter().any(|o| matches!(o, Output::UdpSend { .. })),
        "{out:?}"
    );
}

/// A first message that reads as the start of a STUN message (TURN over
/// TCP) and never comes whole, the app waiting for its answer, holds the
/// connection no longer than the sniffing time: it then goes out.
#[test]
fn a_start_that_never_comes_whole_is_held_no_longer_than_the_sniffing_time() {
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    let (mut app, _) = connected(&mut e, "198.51.100.7:5000", &mut now);
    app.socket().send_slice(&[1, 2, 0]).expect("send");
    let sent_at = now;
    let mut outs = run_until(&mut app, &mut e, &mut now, 10 * MS, 50, |_, o| {
        tcp_open_of(o).is_some()
    });
    let flow = tcp_open_of(&outs).expect("opened by the sniffing time");
    e.handle_tcp_connected(flow, now);
    while let Some(o) = e.poll_output() {
        match o {
            Output::ToTun(p) => app.dev.rx.push_back(p),
            o => outs.push(o),
        }
    }
    if tcp_sent_upstream(&outs).is_empty() {
        outs.extend(run_until(
            &mut app,
            &mut e,
            &mut now,
            10 * MS,
            100,
            |_, o| upstream_bytes(o) > 0,
        ));
    }
    assert_eq!(tcp_sent_upstream(&outs), [1, 2, 0], "held for good");
    let waited = now - sent_at;
    assert!(waited < TCP_SNIFF_NS + 100 * MS, "{} ms", waited / MS);
}

/// A later request's head that stops coming for the sniffing time (a
/// person typing, a stream framed wrongly) holds the connection no longer:
/// what came of it goes on. Its end is still judged before it leaves: a
/// head that then names a PRC vendor's edge never reaches the server
/// whole, and the connection is cut.
#[test]
fn a_head_that_stops_coming_holds_no_longer_and_its_end_is_still_judged() {
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    let mut now = S;
    let mut c = open_keep_alive(&mut e, &mut now, "198.51.100.7:80");
    let (app, _, outs) = &mut c;
    let before = tcp_sent_upstream(outs).len();
    let start = b"GET /v HTTP/1.1\r\nUser-Agent: sdk\r\n";
    app.socket().send_slice(start).expect("send");
    outs.extend(run_until(app, &mut e, &mut now, MS, 100, |_, _| false));
    assert_eq!(
        tcp_sent_upstream(outs).len(),
        before,
        "held while the sniffing time runs"
    );
    let waited = run_until(app, &mut e, &mut now, 10 * MS, 30, |_, o| {
        upstream_bytes(o) > 0
    });
    outs.extend(waited);
    assert_eq!(
        tcp_sent_upstream(outs).len(),
        before + start.len(),
        "then it goes on"
    );
    let end = b"Host: 104-166-161-75.edge.agora.io\r\n\r\n";
    later_request_is_cut(
        &mut e,
        &mut now,
        &mut c,
        &[end],
        "104-166-161-75.edge.agora.io",
    );
}

/// An engine with one `ask` rule over 198.51.100.0/24 and 198.18.0.0/15
/// (`default` and `timeout` as given, blocks rejected); flows from app
/// ports below 41,000 belong to `/usr/bin/a`, the rest to `/usr/bin/b`.
fn ask_engine(default: &str, timeout: u32) -> Engine {
    let text = format!(
        "name = \"ask\"\ndefault = \"allow\"\n[[rule]]\nname = \"ask about the test nets\"\naction = \"ask\"\nblock = \"reject\"\nask = {{ default = \"{default}\", timeout = {timeout} }}\ncidr = [\"198.51.100.0/24\", \"198.18.0.0/15\"]\n"
    );
    let (mut e, handle) = engine("default", EngineConfig::default(), &[]);
    let catalog = Catalog::shipped().expect("catalog");
    handle.replace(Policy::parse(Path::new("ask.toml"), &text, None, &catalog).expect("policy"));
    e.set_app_lookup(Box::new(|_, client, _| AppOwner {
        app: Some(
            if client.port() < 41_000 {
                "/usr/bin/a"
            } else {
                "/usr/bin/b"
            }
            .into(),
        ),
        uid: None,
    }));
    e
}

fn asked(out: &[Output]) -> Vec<PromptId> {
    events(out)
        .iter()
        .filter(|e| e.kind == EventKind::Asked)
        .filter_map(|e| e.prompt)
        .collect()
}

/// A TCP connection an ask rule matches is accepted and held: the app's
/// bytes stay here, nothing is opened upstream, however long it waits;
/// "allow once" opens it and its bytes leave; the next connection of the
/// same app is asked about again.
#[test]
fn an_ask_rule_holds_a_tcp_connection_until_answered() {
    use smoltcp::socket::tcp::State as S_;
    let mut e = ask_engine("block", 30);
    let mut now = S;
    let (mut app, mut outs) = connected(&mut e, "198.51.100.7:443", &mut now);
    app.socket().send_slice(b"hello").expect("send");
    outs.extend(run_until(
        &mut app,
        &mut e,
        &mut now,
        100 * MS,
        100,
        |_, _| false,
    ));
    assert_eq!(app.socket().state(), S_::Established, "held, not reset");
    assert_eq!(tcp_open_of(&outs), None, "nothing opened: {outs:?}");
    assert_eq!(upstream_bytes(&outs), 0);
    let q = asked(&outs);
    assert_eq!(q.len(), 1, "one question: {outs:?}");
    let ev = events(&outs);
    assert_eq!(
        (ev[0].action, ev[0].app.as_deref(), ev[0].rule.as_deref()),
        (
            Decision::Ask,
            Some("/usr/bin/a"),
            Some("ask about the test nets")
        )
    );
    assert_eq!(e.prompts().count(), 1);
    let kept = e
        .answer(
            q[0],
            Answer {
                allow: true,
                scope: Scope::Once,
            },
            now,
        )
        .expect("waiting");
    assert_eq!(kept, None);
    let mut outs: Vec<Output> = drain(&mut e);
    let flow = tcp_open_of(&outs).expect("opened once answered");
    let answered = events(&outs)
        .into_iter()
        .find(|e| e.kind == EventKind::Answered)
        .expect("an answered event")
        .clone();
    assert_eq!(
        (answered.prompt, answered.action, answered.answered),
        (Some(q[0]), Decision::Allow, Some(Answered::Once))
    );
    e.handle_tcp_connected(flow, now);
    outs.extend(drain(&mut e));
    assert_eq!(upstream_bytes(&outs), 5, "the held bytes, once: {outs:?}");
    assert!(
        e.answer(
            q[0],
            Answer {
                allow: true,
                scope: Scope::Once
            },
            now
        )
        .is_err(),
        "a question is answered once"
    );
    // Once means this flow: the app's next one is asked about.
    let (_app, outs) = connected(&mut e, "198.51.100.8:443", &mut now);
    assert_eq!(asked(&outs).len(), 1);
    assert_eq!(e.counters.asked, 2);
}

/// Unanswered, the rule's default applies at its timeout: a block resets
/// the held connection and drops the held datagrams, nothing having left;
/// an allow opens the flow with what was held.
#[test]
fn an_unanswered_question_takes_the_default_at_its_timeout() {
    use smoltcp::socket::tcp::State as S_;
    let mut e = ask_engine("block", 2);
    let mut now = S;
    let (mut app, mut outs) = connected(&mut e, "198.51.100.7:443", &mut now);
    app.socket().send_slice(b"hello").expect("send");
    e.handle_tun(&udp("192.0.2.200:40001", "198.18.0.9:3478", b"one"), now);
    e.handle_tun(&udp("192.0.2.200:40001", "198.18.0.9:3478", b"two"), now);
    outs.extend(run_until(
        &mut app,
        &mut e,
        &mut now,
        100 * MS,
        40,
        |a, _| a.socket().state() == S_::Closed,
    ));
    assert_eq!(app.socket().state(), S_::Closed, "reset at the timeout");
    assert!(now <= S + 3 * S, "within a poll of the deadline: {now}");
    assert_eq!((tcp_open_of(&outs), upstream_bytes(&outs)), (None, 0));
    assert_eq!(sent_upstream(&outs), 0, "no datagram left: {outs:?}");
    let timed_out = events(&outs)
        .iter()
        .filter(|e| e.kind == EventKind::Answered && e.answered == Some(Answered::Timeout))
        .count();
    assert_eq!(timed_out, 2, "both questions");
    assert_eq!(e.counters.held_dropped, 2);
    assert_eq!(e.prompts().count(), 0);
    // A default allow lets the held datagrams out, in order.
    let mut e = ask_engine("allow", 2);
    e.handle_tun(&udp("192.0.2.200:40001", "198.18.0.9:3478", b"one"), S);
    e.handle_tun(&udp("192.0.2.200:40001", "198.18.0.9:3478", b"two"), S);
    assert_eq!(sent_upstream(&drain(&mut e)), 0, "held");
    let due = e.poll_timeout().expect("a deadline");
    assert!(due <= 3 * S, "{due}");
    e.handle_timeout(3 * S);
    let sent: Vec<Vec<u8>> = drain(&mut e)
        .into_iter()
        .filter_map(|o| match o {
            Output::UdpSend { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![b"one".to_vec(), b"two".to_vec()]);
}

/// "For this app" settles the app's other questions under the rule and
/// its later flows, not another app's; "always" is returned to be kept,
/// and an engine given it does not ask again.
#[test]
fn answers_for_the_app_and_kept_answers_settle_later_flows() {
    let mut e = ask_engine("block", 30);
    e.handle_tun(&udp("192.0.2.200:40001", "198.18.0.1:3478", b"a1"), S);
    e.handle_tun(&udp("192.0.2.200:40002", "198.18.0.2:3478", b"a2"), S);
    e.handle_tun(&udp("192.0.2.200:41001", "198.18.0.1:3478", b"b1"), S);
    let q = asked(&drain(&mut e));
    assert_eq!(q.len(), 3);
    e.answer(
        q[0],
        Answer {
            allow: true,
            scope: Scope::App,
        },
        S,
    )
    .expect("waiting");
    let out = drain(&mut e);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::UdpOpen { .. }))
            .count(),
        2,
        "both of app a's flows, not b's: {out:?}"
    );
    assert_eq!(e.prompts().count(), 1, "b's question waits");
    e.handle_tun(&udp("192.0.2.200:40003", "198.18.0.3:3478", b"a3"), S);
    let out = drain(&mut e);
    assert!(asked(&out).is_empty(), "app a is not asked again");
    assert_eq!(events(&out)[0].answered, Some(Answered::App));
    let kept = e
        .answer(
            q[2],
            Answer {
                allow: false,
                scope: Scope::Always,
            },
            S,
        )
        .expect("waiting")
        .expect("an answer to keep");
    assert_eq!(
        (kept.app.as_deref(), kept.destination.as_str(), kept.action),
        (Some("/usr/bin/b"), "198.18.0.1", KeptAction::Block)
    );
    // After a restart, with the kept answer: b is not asked about that
    // destination, and it is blocked; another destination is asked.
    let mut e = ask_engine("allow", 30);
    e.keep_answers(vec![kept]);
    e.handle_tun(&udp("192.0.2.200:41002", "198.18.0.1:3478", b"b2"), S);
    e.handle_tun(&udp("192.0.2.200:41003", "198.18.0.4:3478", b"b3"), S);
    let out = drain(&mut e);
    assert_eq!(asked(&out).len(), 1, "only the new destination: {out:?}");
    let blocked = events(&out)
        .into_iter()
        .find(|e| e.kind == EventKind::Blocked)
        .expect("blocked by the kept answer");
    assert_eq!(blocked.answered, Some(Answered::Always));
    assert_eq!(sent_upstream(&out), 0);
}

/// Questions are bounded: past [`ask::MAX_PROMPTS`] waiting, a new flow
/// gets the rule's default at once (counted), and nothing it sent left
/// before that.
#[test]
fn questions_are_bounded() {
    let mut e = ask_engine("block", 30);
    for i in 0..=ask::MAX_PROMPTS {
        let to = format!("198.18.{}.{}:3478", i / 250, i % 250 + 1);
        e.handle_tun(&udp("192.0.2.200:40001", &to, b"x"), S);
    }
    let out = drain(&mut e);
    assert_eq!(asked(&out).len(), ask::MAX_PROMPTS);
    assert_eq!(
        (e.counters.asked, e.counters.asked_busy),
        (ask::MAX_PROMPTS as u64, 1)
    );
    assert_eq!(sent_upstream(&out), 0);
    let busy = events(&out)
        .into_iter()
        .find(|e| e.answered == Some(Answered::Busy))
        .expect("the one past the bound");
    assert_eq!(busy.action, Decision::Block);
}

/// Bytes the app sent that reached the upstream side, in order.
fn tcp_sent_upstream(outs: &[Output]) -> Vec<u8> {
    outs.iter()
        .flat_map(|o| match o {
            Output::TcpSend { payload, .. } => payload.as_slice(),
            _ => &[],
        })
        .copied()
        .collect()
}

/// A request the app sends on a new connection to 198.51.100.7:80.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n";

/// An app connects and sends [`REQUEST`]; the flow is opened upstream.
/// The app, the flow, the engine's outputs until it opened.
fn requested(e: &mut Engine, now: &mut u64) -> (App, FlowId, Vec<Output>) {
    let (mut app, _) = connected(e, "198.51.100.7:80", now);
    app.socket().send_slice(REQUEST).expect("send");
    let outs = run_until(&mut app, e, now, MS, 50, |_, o| tcp_open_of(o).is_some());
    let flow = tcp_open_of(&outs).expect("opened");
    e.handle_tcp_connected(flow, *now);
    (app, flow, outs)
}

/// An idle connection gives its buffers' pages back (both empty), and the
/// bytes that come after arrive intact both ways; while segments wait
/// behind a lost one, nothing is given back, whatever the time.
#[test]
fn idle_connections_give_their_buffers_back_and_lose_no_byte() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    let mut now = S;
    let (mut app, flow, _) = requested(&mut e, &mut now);
    let request = REQUEST;
    let mut up = Vec::new();
    while let Some(o) = e.poll_output() {
        if let Output::ToTun(p) = o {
            app.dev.rx.push_back(p);
        } else {
            up.push(o);
        }
    }
    assert_eq!(tcp_sent_upstream(&up), request.to_vec());
    let reply: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
    assert_eq!(e.handle_tcp_from_upstream(flow, &reply, now), reply.len());
    let mut got = Vec::new();
    run_until(&mut app, &mut e, &mut now, MS, 50, |a, _| {
        let mut b = [0u8; 4096];
        while let Ok(n) = a.socket().recv_slice(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        got.len() == reply.len() && a.socket().send_queue() == 0
    });
    assert_eq!(got, reply);
    // Idle for two seconds: the empty buffers were given back.
    run_until(&mut app, &mut e, &mut now, 100 * MS, 20, |_, _| false);
    let released = e.counters.tcp_released;
    assert!(
        released >= 1,
        "an idle connection's buffers were given back"
    );

    // Now 4,000 bytes in three segments, the first lost on the way: the
    // other two wait in the stack behind the gap.
    let body: Vec<u8> = (0..4000u32).map(|i| (i % 253) as u8 + 1).collect();
    app.socket().send_slice(&body).expect("send");
    let t = crate::engine::stack::instant(now);
    app.iface.poll(t, &mut app.dev, &mut app.sockets);
    let segs: Vec<Vec<u8>> = app.dev.tx.drain(..).collect();
    assert!(segs.len() >= 2, "the body went in several segments");
    for p in &segs[1..] {
        e.handle_tun(p, now);
    }
    // Time passes without the app (its retransmission comes later).
    for _ in 0..30 {
        now += 100 * MS;
        e.handle_timeout(now);
    }
    assert_eq!(
        e.counters.tcp_released, released,
        "nothing given back while bytes wait behind a gap"
    );
    let mut later = Vec::new();
    while let Some(o) = e.poll_output() {
        if let Output::ToTun(p) = o {
            app.dev.rx.push_back(p);
        } else {
            later.push(o);
        }
    }
    // The app retransmits; every byte reaches the server in order.
    later.extend(run_until(
        &mut app,
        &mut e,
        &mut now,
        100 * MS,
        50,
        |_, o| tcp_sent_upstream(o).len() >= body.len(),
    ));
    let got = tcp_sent_upstream(&later);
    let differs = got.iter().zip(&body).position(|(a, b)| a != b);
    assert!(
        got.len() == body.len() && differs.is_none(),
        "{} of {} bytes, first difference at {differs:?}",
        got.len(),
        body.len()
    );
}

/// A ClientHello that stops midway for longer than the sniffing time
/// (sent in two pieces a second apart, on a connection that spoke at once
/// or one the timer opened) is judged at the deadline by the name its
/// bytes so far hold, if they hold it whole (none of it leaves then), and
/// its rest is held until the name it completes is judged: the server of a
/// blocked vendor never gets the name, the connection is cut, the event
/// names the vendor; so is an HTTP request's head. An allowed hello in
/// two pieces goes out whole.
#[test]
fn a_hello_that_stops_midway_is_judged_by_its_name_before_its_rest_leaves() {
    use smoltcp::socket::tcp::State as S_;
    let agora = "104-166-161-75.edge.agora.io";
    let hello = crate::wire::tls::tests::hello_record(agora);
    let name_ends = hello
        .windows(agora.len())
        .position(|w| w == agora.as_bytes())
        .expect("the name is in")
        + agora.len();
    // (name, bytes of the first piece, the timer opened the flow first,
    // bytes the server may get)
    let cases = [
        ("http", 10, false, 10),
        ("http", 10, true, 10),
        (agora, 40, false, 40),
        (agora, 40, true, 40),
        (agora, name_ends - 1, false, name_ends - 1),
        (agora, name_ends, false, 0),
        (agora, name_ends, true, 0),
        ("www.example.org", 40, false, usize::MAX),
        ("www.example.org", 40, true, usize::MAX),
    ];
    for (name, first, quiet, allowed_bytes) in cases {
        let case = format!("{name}, {first} bytes first, opened by the timer: {quiet}");
        // An HTTP request's head, the same way.
        let hello = match name {
            "http" => {
                format!("GET / HTTP/1.1\r\nHost: {agora}\r\nAccept: */*\r\n\r\n").into_bytes()
            }
            _ => crate::wire::tls::tests::hello_record(name),
        };
        let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
        let mut app = App::connect("198.51.100.7:443");
        let mut now = S;
        let mut outs = Vec::new();
        let mut opened = false;
        // The app's side, and the upstream connect answered at once.
        let step =
            |app: &mut App, e: &mut Engine, now: u64, outs: &mut Vec<Output>, opened: &mut bool| {
                outs.extend(app.step(e, now));
                if !*opened && let Some(f) = tcp_open_of(outs) {
                    *opened = true;
                    e.handle_tcp_connected(f, now);
                    deliver(app, e, outs);
                }
            };
        let quiet_until = now + if quiet { 2 * S } else { 20 * MS };
        while now < quiet_until {
            now += 10 * MS;
            step(&mut app, &mut e, now, &mut outs, &mut opened);
        }
        assert_eq!(app.socket().state(), S_::Established, "{case}");
        app.socket().send_slice(&hello[..first]).expect("send");
        let pause_until = now + S;
        while now < pause_until {
            now += 10 * MS;
            step(&mut app, &mut e, now, &mut outs, &mut opened);
        }
        // The rest (the connection may be gone already).
        let _ = app.socket().send_slice(&hello[first..]);
        for _ in 0..100 {
            now += 10 * MS;
            step(&mut app, &mut e, now, &mut outs, &mut opened);
        }
        let sent = upstream_bytes(&outs);
        let ev = events(&outs);
        if allowed_bytes == usize::MAX {
            assert_eq!(sent, hello.len(), "{case}: the hello, whole");
            assert!(
                !ev.iter()
                    .any(|e| matches!(e.kind, EventKind::Cut | EventKind::Blocked)),
                "{case}"
            );
            continue;
        }
        assert_eq!(sent, allowed_bytes, "{case}: {outs:?}");
        let stop = ev
            .iter()
            .find(|e| matches!(e.kind, EventKind::Cut | EventKind::Blocked))
            .unwrap_or_else(|| panic!("{case}: cut or blocked: {ev:?}"));
        assert_eq!(stop.server_name.as_deref(), Some(agora), "{case}");
        assert_eq!(
            app.socket().state(),
            S_::Closed,
            "{case}: the app saw an RST"
        );
    }
}

/// A flow's first QUIC connection whose ClientHello takes two Initials
/// (a browser's, with post-quantum key shares) waits until the hello is
/// whole before any Initial leaves: one naming a PRC vendor's edge in its
/// second Initial is blocked with nothing sent; an ordinary one leaves
/// whole, in order. A hello the hold's end finds unfinished is judged by
/// the name its first Initial holds, if it does (nothing sent), or goes
/// on, and the Initial that completes a blocked name is not sent: the
/// flow is cut.
#[test]
fn a_first_quic_hello_in_several_initials_is_judged_whole_before_any_leaves() {
    use crate::wire::quic::{client_initials, client_initials_padded};
    let agora = "104-166-161-75.edge.agora.io";
    let (app, us) = ("192.0.2.200:40000", "198.51.100.7:443");
    let sent = udp_sent;
    let stop = |out: &[Output]| {
        events(out)
            .iter()
            .find(|e| matches!(e.kind, EventKind::Blocked | EventKind::Cut))
            .map(|e| (e.kind, e.server_name.clone()))
    };
    // Back to back, the name in the second Initial.
    let two = client_initials(1, &[0xA1; 8], agora, 2).expect("initials");
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, us, &two[0]), S);
    e.handle_tun(&udp(app, us, &two[1]), S + MS);
    let out = drain(&mut e);
    assert!(sent(&out).is_empty(), "{out:?}");
    assert_eq!(
        stop(&out),
        Some((EventKind::Blocked, Some(agora.to_owned())))
    );
    // An ordinary name: both leave, in order.
    let ok = client_initials(1, &[0xA2; 8], "www.example.org", 2).expect("initials");
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, us, &ok[0]), S);
    e.handle_tun(&udp(app, us, &ok[1]), S + MS);
    let out = drain(&mut e);
    assert_eq!(sent(&out), ok);
    assert_eq!(stop(&out), None);
    // The name whole in the first Initial; the rest never comes: at the
    // hold's end, judged by that name.
    let long = client_initials_padded(1, &[0xA3; 8], agora, 1_000, 2).expect("initials");
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, us, &long[0]), S);
    let mut out = drain(&mut e);
    e.handle_timeout(S + udp::HOLD_NS);
    out.extend(drain(&mut e));
    assert!(sent(&out).is_empty(), "{out:?}");
    assert_eq!(
        stop(&out),
        Some((EventKind::Blocked, Some(agora.to_owned())))
    );
    // The name in the second Initial, 2 s later: the first goes on at the
    // hold's end, the second does not; the flow is cut.
    let (mut e, _) = engine("strict", EngineConfig::default(), &[]);
    e.handle_tun(&udp(app, us, &two[0]), S);
    let mut out = drain(&mut e);
    e.handle_timeout(S + udp::HOLD_NS);
    out.extend(drain(&mut e));
    e.handle_tun(&udp(app, us, &two[1]), 3 * S);
    out.extend(drain(&mut e));
    assert_eq!(sent(&out), [two[0].clone()]);
    assert_eq!(stop(&out), Some((EventKind::Cut, Some(agora.to_owned()))));
}

/// While its owner is looked for, a connection is accepted at once: its
/// handshake completes and its first bytes are read, but nothing of it is
/// judged, written in an event or relayed until the owner is known; then
/// it is judged and goes on, its events naming the program. One the
/// address alone blocks is still refused at its SYN. Under rules that
/// look at owners the engine does not take the SYN early (the driver
/// holds it until the owner is known).
#[test]
fn a_connection_waits_for_its_owner_to_be_judged_not_to_be_accepted() {
    use smoltcp::socket::tcp::State as S_;
    let (mut e, _) = engine("clubhouse", EngineConfig::default(), &[]);
    let mut now = S;
    let us = "198.51.100.7:80";
    let key = (PTransport::Tcp, sa("192.0.2.200:40000"), sa(us));
    assert!(e.await_owner(key));
    let (mut app, mut outs) = connected(&mut e, us, &mut now);
    assert_eq!(app.socket().state(), S_::Established, "accepted at once");
    let req = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
    app.socket().send_slice(req).expect("send");
    // Longer than the sniffing time: still nothing.
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 400, |_, _| false));
    assert!(events(&outs).is_empty(), "{:?}", events(&outs));
    assert_eq!(tcp_open_of(&outs), None);
    assert_eq!(upstream_bytes(&outs), 0);
    let owner = AppOwner {
        app: Some("/usr/bin/a".into()),
        uid: Some(1000),
    };
    e.owner_found(key, owner, now);
    let mut outs = drain(&mut e);
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 5, |_, _| false));
    let flow = tcp_open_of(&outs).expect("opened once its owner is known");
    let ev = events(&outs);
    assert_eq!(ev[0].kind, EventKind::Opened);
    assert_eq!(
        (ev[0].app.as_deref(), ev[0].uid),
        (Some("/usr/bin/a"), Some(1000))
    );
    e.handle_tcp_connected(flow, now);
    outs.extend(run_until(&mut app, &mut e, &mut now, MS, 5, |_, _| false));
    assert_eq!(
        tcp_sent_upstream(&outs),
        req,
        "the held request, once judged"
    );

    // Under `strict` a CN address alone blocks: refused at the SYN, owner
    // or not.
    let (mut e, handle) = engine("strict", EngineConfig::default(), &[]);
    let cn = "203.0.113.10:443";
    let key = (PTransport::Tcp, sa("192.0.2.200:40000"), sa(cn));
    assert!(e.await_owner(key));
    let mut app = App::connect(cn);
    let outs = run_until(&mut app, &mut e, &mut now, MS, 20, |a, _| {
        a.socket().state() == S_::Closed
    });
    assert_eq!(app.socket().state(), S_::Closed, "refused at the SYN");
    assert_eq!(events(&outs)[0].kind, EventKind::Blocked);
    e.owner_found(key, AppOwner::default(), now);
    assert!(events(&drain(&mut e)).is_empty());

    // Rules that look at owners: the SYN waits for the owner in the driver.
    let cat = Catalog::shipped().expect("catalog");
    let by_app =
        "name='a'\ndefault='allow'\n[[rule]]\nname='no b'\naction='block'\napp=['/usr/bin/b']\n";
    handle.replace(Policy::parse(Path::new("p.toml"), by_app, None, &cat).expect("policy"));
    let other = (PTransport::Tcp, sa("192.0.2.200:40001"), sa(us));
    assert!(!e.await_owner(other));
}

/// A connection opened after 64 others went quiet grows its allowances
/// (the quiet ones went back to the floor), the windows its app sees grow
/// with them, and every byte arrives in order both ways.
#[test]
fn a_bulk_connection_after_quiet_ones_grows_its_windows_and_loses_no_byte() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    let mut now = S;
    let request = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n";
    let mut quiet = Vec::new();
    for i in 0..64u16 {
        let mut app = App::connect_from(&format!("192.0.2.200:{}", 30_000 + i), "198.51.100.7:80");
        run_until(&mut app, &mut e, &mut now, MS, 20, |a, _| {
            a.socket().may_send()
        });
        app.socket().send_slice(request).expect("send");
        let outs = run_until(&mut app, &mut e, &mut now, MS, 50, |_, o| {
            tcp_open_of(o).is_some()
        });
        let flow = tcp_open_of(&outs).expect("opened");
        e.handle_tcp_connected(flow, now);
        let reply = vec![b'x'; 2000];
        assert_eq!(e.handle_tcp_from_upstream(flow, &reply, now), reply.len());
        run_until(&mut app, &mut e, &mut now, MS, 20, |a, _| {
            a.socket().recv_queue() == 2000
        });
        quiet.push(app);
    }
    // Their apps' last ACKs go, then quiet for 200 ms: every one is back
    // at the floor.
    for app in &mut quiet {
        run_until(app, &mut e, &mut now, MS, 2, |_, _| false);
    }
    for _ in 0..20 {
        now += 10 * MS;
        e.handle_timeout(now);
        drain(&mut e);
    }
    assert_eq!(e.tcp_memory(), 0, "quiet connections hold no allowance");
    assert!(e.tcp.values().all(|f| f.win.up == TCP_BUFFER_MIN));

    // The bulk connection: 512 KiB up after a request head, 512 KiB down.
    let body: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut up = format!(
        "POST /up HTTP/1.1\r\nHost: www.example.org\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    let head = up.len();
    up.extend_from_slice(&body);
    let mut app = App::connect_from("192.0.2.200:40000", "198.51.100.7:80");
    run_until(&mut app, &mut e, &mut now, MS, 20, |a, _| {
        a.socket().may_send()
    });
    let mut queued = 0;
    let mut got_up = Vec::new();
    let mut got_down = Vec::new();
    let mut flow = None;
    let mut down_sent = 0;
    let mut widest = 0usize;
    let mut first = None;
    for _ in 0..20_000 {
        if queued < up.len()
            && let Ok(n) = app.socket().send_slice(&up[queued..])
        {
            queued += n;
        }
        now += MS / 10;
        let t = crate::engine::stack::instant(now);
        app.iface.poll(t, &mut app.dev, &mut app.sockets);
        while let Some(p) = app.dev.tx.pop_front() {
            e.handle_tun(&p, now);
        }
        e.handle_timeout(now);
        while let Some(o) = e.poll_output() {
            match o {
                Output::ToTun(p) => {
                    // The window the engine offers the app.
                    let ip = parse_ip(&p).expect("parses");
                    if ip.l4[13] & 0x02 == 0 {
                        let w = usize::from(u16::from_be_bytes([ip.l4[14], ip.l4[15]]));
                        first.get_or_insert(w);
                        widest = widest.max(w);
                    }
                    app.dev.rx.push_back(p);
                }
                Output::TcpOpen { flow: f, .. } => {
                    flow = Some(f);
                    e.handle_tcp_connected(f, now);
                }
                Output::TcpSend { payload, .. } => got_up.extend_from_slice(&payload),
                _ => {}
            }
        }
        if let Some(f) = flow
            && down_sent < body.len()
        {
            down_sent += e.handle_tcp_from_upstream(f, &body[down_sent..], now);
        }
        app.iface.poll(t, &mut app.dev, &mut app.sockets);
        let mut b = [0u8; 16 * 1024];
        while let Ok(n) = app.socket().recv_slice(&mut b) {
            if n == 0 {
                break;
            }
            got_down.extend_from_slice(&b[..n]);
        }
        if got_up.len() == up.len() && got_down.len() == body.len() {
            break;
        }
    }
    assert!(
        got_up == up,
        "{} of {} bytes up, in order",
        got_up.len(),
        up.len()
    );
    assert!(
        got_down == body,
        "{} of {} bytes down, in order",
        got_down.len(),
        body.len()
    );
    assert!(got_up.len() > head);
    let key = (sa("192.0.2.200:40000"), sa("198.51.100.7:80"));
    let f = &e.tcp[&key];
    let start = EngineConfig::default().tcp_memory / 1024;
    // The app's own buffers are 64 KiB each way: what it can use.
    assert!(
        f.win.up >= 64 * 1024 && f.win.down >= 64 * 1024,
        "grown from {start}: up {}, down {}, grown {} times, {:?}",
        f.win.up,
        f.win.down,
        e.counters.tcp_windows_grown,
        f.win
    );
    assert!(
        first.is_some_and(|w| w << 5 <= start),
        "the app was first offered at most its allowance, not the 1 MiB buffer: {:?}",
        first.map(|w| w << 5)
    );
    assert!(
        widest > start >> 5,
        "the app was offered more than the start: {} bytes",
        widest << 5
    );
    assert!(e.tcp_memory() <= EngineConfig::default().tcp_memory);
}

/// A connection whose upstream is paused closes its app's window at the
/// allowance; resumed, the engine tells the app at once that the window
/// opened (the stack's own window never closed, so it would not), and the
/// app's next bytes come without waiting for a probe.
#[test]
fn a_window_closed_by_a_paused_upstream_is_reopened_at_once() {
    let (mut e, _) = engine("default", EngineConfig::default(), &[]);
    let mut now = S;
    let (mut app, flow, outs) = requested(&mut e, &mut now);
    let request = REQUEST;
    let mut up = upstream_bytes(&outs);
    e.set_tcp_upstream_paused(flow, true, now);
    let body = vec![7u8; 60 * 1024];
    let mut queued = 0;
    // While paused, the app gets its allowance in and then waits.
    for _ in 0..50 {
        if queued < body.len()
            && let Ok(n) = app.socket().send_slice(&body[queued..])
        {
            queued += n;
        }
        now += MS / 10;
        up += upstream_bytes(&app.step(&mut e, now));
    }
    let start = EngineConfig::default().tcp_memory / 1024;
    let key = (sa("192.0.2.200:40000"), sa("198.51.100.7:80"));
    let held = e.socks[&key].socket().recv_queue();
    assert!(
        held > 0 && held <= start,
        "the app's bytes wait, within its allowance: {held}"
    );
    let in_flight = app.socket().send_queue();
    assert!(in_flight > 0, "the app has more to send");
    // Resumed: what waited goes up, and the app sends more within a
    // tenth of a millisecond or two.
    e.set_tcp_upstream_paused(flow, false, now);
    let mut sent_more = false;
    for _ in 0..3 {
        now += MS / 10;
        let before = app.sent.1;
        up += upstream_bytes(&app.step(&mut e, now));
        sent_more |= app.sent.1 > before + 1000;
    }
    assert!(sent_more, "the app was told its window opened");
    assert!(up > request.len() + held, "{up} bytes went up");
}
