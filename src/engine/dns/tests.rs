//! DNS through the engine: queries built as an app would send them, the
//! resolver's part played by the test, the test world of
//! tests/fixtures/world.csv.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::svcb::{SVCB, SvcParamKey};
use hickory_proto::rr::rdata::{CNAME, HTTPS};

use super::*;
use crate::engine::dataplane::{Decision, DropReason, Engine, EngineConfig, EventKind, Output};
use crate::engine::reply;
use crate::intel::catalog::Catalog;
use crate::intel::world::{World, WorldBuilder};
use crate::policy::PolicyHandle;
use crate::wire::packet::{Transport, parse_ip};

const S: u64 = 1_000_000_000;
const APP: &str = "192.0.2.200:40000";
const DNS: &str = "198.18.1.1:53";

const POLICY: &str = r#"
name = "dns-test"
default = "allow"

[[rule]]
name = "no trackers"
action = "block"
domain = ["tracker.example"]

[[rule]]
name = "no ads"
action = "block"
domain = ["ads.example"]
dns_answer = "null"

[[rule]]
name = "no media to PRC"
action = "block"
traffic = ["media"]
jurisdiction = { countries = ["CN", "HK", "MO"] }
"#;

fn engine(policy: &str, cfg: EngineConfig) -> Engine {
    let mut b = WorldBuilder::new();
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv");
    b.add_fixture_csv(&csv, &mut |_| {}).expect("fixture");
    let world = World::from_vec(b.build(&mut |_| {}).expect("builds").0).expect("loads");
    let catalog = Catalog::shipped().expect("catalog");
    let p = Policy::parse(Path::new("dns-test.toml"), policy, None, &catalog).expect("policy");
    Engine::new(
        cfg,
        Intel::new(Arc::new(world)),
        Arc::new(PolicyHandle::new(p)),
        None,
    )
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn query_bytes(id: u16, qname: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), t));
    if edns {
        m.set_edns(Edns::new());
    }
    m.to_vec().expect("encodes")
}

fn query(e: &mut Engine, id: u16, qname: &str, t: RecordType) -> Vec<Output> {
    let q = query_bytes(id, qname, t, true);
    e.handle_tun(&reply::udp_packet(sa(APP), sa(DNS), &q).expect("packet"), S);
    std::iter::from_fn(|| e.poll_output()).collect()
}

/// The DNS answer in the packets for the app.
fn answer_of(out: &[Output]) -> Option<Message> {
    out.iter().find_map(|o| match o {
        Output::ToTun(p) => {
            let ip = parse_ip(p).ok()?;
            match ip.transport {
                Transport::Udp {
                    sport: 53, payload, ..
                } => Message::from_vec(payload).ok(),
                _ => None,
            }
        }
        _ => None,
    })
}

fn token(out: &[Output]) -> u64 {
    out.iter()
        .find_map(|o| match o {
            Output::DnsQuery { query, .. } => Some(*query),
            _ => None,
        })
        .expect("a query for the resolver")
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(A(Ipv4Addr::from(ip))))
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(IpAddr::V4(*ip)),
            RData::AAAA(AAAA(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<&crate::engine::dataplane::Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(&**e),
            _ => None,
        })
        .collect()
}

fn resolve(e: &mut Engine, out: &[Output], records: Vec<Record>) -> Vec<Output> {
    e.handle_dns_answer(
        token(out),
        Some(Resolved {
            rcode: ResponseCode::NoError,
            records,
            negative_ttl: None,
        }),
        S,
    );
    std::iter::from_fn(|| e.poll_output()).collect()
}

#[test]
fn blocked_jurisdictions_are_filtered_out_and_names_follow_the_addresses() {
    let mut e = engine(POLICY, EngineConfig::default());
    let out = query(&mut e, 7, "meet.example.org.", RecordType::A);
    assert!(
        answer_of(&out).is_none(),
        "nothing before the resolver answers"
    );
    let out = resolve(
        &mut e,
        &out,
        vec![
            a("meet.example.org.", [203, 0, 113, 10]),
            a("meet.example.org.", [198, 51, 100, 10]),
        ],
    );
    let m = answer_of(&out).expect("an answer");
    assert_eq!(m.metadata.id, 7);
    assert_eq!(addresses(&m), vec![IpAddr::from([198, 51, 100, 10])]);
    let ev = events(&out);
    assert_eq!(ev[0].kind, EventKind::DnsFiltered);
    assert_eq!(ev[0].rule.as_deref(), Some("no media to PRC"));
    assert_eq!(ev[0].detail.as_deref(), Some("removed 203.0.113.10"));
    // A later flow to the kept address carries the name and matches on it.
    e.handle_tun(
        &reply::udp_packet(sa(APP), sa("198.51.100.10:9000"), b"hi").expect("packet"),
        2 * S,
    );
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    assert_eq!(events(&out)[0].names, vec!["meet.example.org".to_owned()]);
    // The same query again comes from the cache: no resolver, same answer.
    let out = query(&mut e, 8, "MEET.example.org.", RecordType::A);
    assert!(!out.iter().any(|o| matches!(o, Output::DnsQuery { .. })));
    assert_eq!(
        addresses(&answer_of(&out).expect("cached")),
        vec![IpAddr::from([198, 51, 100, 10])]
    );
    assert_eq!(e.dns_cache.hits, 1);
}

#[test]
fn blocked_names_get_the_configured_answer_without_the_resolver() {
    let mut e = engine(POLICY, EngineConfig::default());
    let out = query(&mut e, 1, "x.tracker.example.", RecordType::A);
    let m = answer_of(&out).expect("answered at once");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(!out.iter().any(|o| matches!(o, Output::DnsQuery { .. })));
    assert_eq!(events(&out)[0].kind, EventKind::DnsBlocked);
    let out = query(&mut e, 2, "ads.example.", RecordType::AAAA);
    let m = answer_of(&out).expect("answered");
    assert_eq!(addresses(&m), vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]);
    let out = query(&mut e, 3, "ads.example.", RecordType::A);
    assert_eq!(
        addresses(&answer_of(&out).expect("answered")),
        vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
    );
}

#[test]
fn a_blocked_link_in_a_cname_chain_blocks_the_answer() {
    let mut e = engine(POLICY, EngineConfig::default());
    let out = query(&mut e, 9, "www.example.org.", RecordType::A);
    let out = resolve(
        &mut e,
        &out,
        vec![
            Record::from_rdata(
                name("www.example.org."),
                300,
                RData::CNAME(CNAME(name("edge.cdn.example."))),
            ),
            Record::from_rdata(
                name("edge.cdn.example."),
                300,
                RData::CNAME(CNAME(name("x.tracker.example."))),
            ),
            a("x.tracker.example.", [198, 51, 100, 10]),
        ],
    );
    let m = answer_of(&out).expect("answer");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let ev = events(&out);
    assert_eq!(ev[0].kind, EventKind::DnsBlocked);
    assert_eq!(
        ev[0].names,
        vec!["www.example.org", "edge.cdn.example", "x.tracker.example"]
    );
}

#[test]
fn only_blocked_addresses_leave_an_empty_answer_or_nxdomain_per_policy() {
    let mut e = engine(POLICY, EngineConfig::default());
    let out = query(&mut e, 4, "cn-only.example.", RecordType::A);
    let out = resolve(&mut e, &out, vec![a("cn-only.example.", [203, 0, 113, 10])]);
    let m = answer_of(&out).expect("answer");
    assert_eq!(
        (m.metadata.response_code, m.answers.len()),
        (ResponseCode::NoError, 0)
    );

    let mut e = engine(
        &format!("{POLICY}\n[dns]\nfiltered = \"nxdomain\"\n"),
        EngineConfig::default(),
    );
    let out = query(&mut e, 4, "cn-only.example.", RecordType::A);
    let out = resolve(&mut e, &out, vec![a("cn-only.example.", [203, 0, 113, 10])]);
    assert_eq!(
        answer_of(&out).expect("answer").metadata.response_code,
        ResponseCode::NXDomain
    );

    // "prefer": with nothing else to offer, the answer stands.
    let mut e = engine(
        &format!("{POLICY}\n[dns]\nfilter = \"prefer\"\n"),
        EngineConfig::default(),
    );
    let out = query(&mut e, 4, "cn-only.example.", RecordType::A);
    let out = resolve(&mut e, &out, vec![a("cn-only.example.", [203, 0, 113, 10])]);
    assert_eq!(
        addresses(&answer_of(&out).expect("answer")),
        vec![IpAddr::from([203, 0, 113, 10])]
    );
}

#[test]
fn https_hints_cannot_smuggle_a_blocked_address() {
    let mut e = engine(POLICY, EngineConfig::default());
    let out = query(&mut e, 5, "svc.example.", RecordType::HTTPS);
    let svcb = SVCB::new(
        1,
        name("."),
        vec![
            (
                SvcParamKey::Ipv4Hint,
                SvcParamValue::Ipv4Hint(IpHint(vec![
                    A::new(203, 0, 113, 10),
                    A::new(198, 51, 100, 10),
                ])),
            ),
            (
                SvcParamKey::Ipv6Hint,
                SvcParamValue::Ipv6Hint(IpHint(vec![AAAA("2001:db8:86::1".parse().expect("v6"))])),
            ),
        ],
    );
    let out = resolve(
        &mut e,
        &out,
        vec![Record::from_rdata(
            name("svc.example."),
            300,
            RData::HTTPS(HTTPS(svcb)),
        )],
    );
    let m = answer_of(&out).expect("answer");
    let RData::HTTPS(h) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    let hints: Vec<&SvcParamValue> = h.0.svc_params.iter().map(|(_, v)| v).collect();
    assert_eq!(
        hints,
        vec![&SvcParamValue::Ipv4Hint(IpHint(vec![A::new(
            198, 51, 100, 10
        )]))],
        "the CN v4 hint and the whole CN-only v6 hint list are gone"
    );
}

#[test]
fn big_answers_over_udp_are_truncated_and_malformed_queries_get_servfail() {
    let mut e = engine(POLICY, EngineConfig::default());
    let q = query_bytes(6, "many.example.", RecordType::A, false);
    e.handle_tun(&reply::udp_packet(sa(APP), sa(DNS), &q).expect("packet"), S);
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    let many: Vec<Record> = (0..100u8)
        .map(|i| a("many.example.", [198, 51, 100, i]))
        .collect();
    let out = resolve(&mut e, &out, many);
    let m = answer_of(&out).expect("answer");
    assert!(m.metadata.truncation, "512 bytes without EDNS");
    assert!(m.answers.is_empty());

    // Twelve bytes of nonsense: SERVFAIL with the same id.
    let junk = [0xAB, 0xCD, 1, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0xFF];
    e.handle_tun(
        &reply::udp_packet(sa(APP), sa(DNS), &junk).expect("packet"),
        S,
    );
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    let m = answer_of(&out).expect("an error answer");
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0xABCD, ResponseCode::ServFail)
    );
    // Too short to answer: dropped and counted.
    e.handle_tun(
        &reply::udp_packet(sa(APP), sa(DNS), &[1, 2, 3]).expect("packet"),
        S,
    );
    assert!(answer_of(&std::iter::from_fn(|| e.poll_output()).collect::<Vec<_>>()).is_none());
    assert_eq!(e.counters.drops.get(&DropReason::DnsUnreadable), Some(&1));
}

#[test]
fn a_failed_resolver_gives_servfail_and_the_pending_bound_holds() {
    let cfg = EngineConfig {
        dns: DnsLimits {
            pending: 2,
            ..DnsLimits::default()
        },
        ..EngineConfig::default()
    };
    let mut e = engine(POLICY, cfg);
    let out = query(&mut e, 1, "a.example.", RecordType::A);
    e.handle_dns_answer(token(&out), None, S);
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    assert_eq!(
        answer_of(&out).expect("answer").metadata.response_code,
        ResponseCode::ServFail
    );
    query(&mut e, 2, "b.example.", RecordType::A);
    query(&mut e, 3, "c.example.", RecordType::A);
    let out = query(&mut e, 4, "d.example.", RecordType::A);
    assert_eq!(
        answer_of(&out).expect("refused").metadata.response_code,
        ResponseCode::ServFail
    );
    assert_eq!(e.dns_pending(), 2);
}

#[test]
fn a_resolver_that_does_not_answer_in_time_gives_servfail() {
    let mut e = engine(POLICY, EngineConfig::default());
    let out = query(&mut e, 7, "late.example.", RecordType::A);
    let t = token(&out);
    // The engine asks to be woken when the answer is due.
    let due = e.poll_timeout().expect("a deadline");
    assert!(due <= S + 4 * S, "{due}");
    e.handle_timeout(S + 2 * S);
    assert!(std::iter::from_fn(|| e.poll_output()).next().is_none());
    e.handle_timeout(S + 4 * S);
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    let a = answer_of(&out).expect("SERVFAIL");
    assert_eq!(a.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(a.metadata.id, 7);
    assert_eq!(e.dns_pending(), 0);
    assert_eq!(
        e.counters.drops.get(&DropReason::DnsResolverTimeout),
        Some(&1)
    );
    // The resolver's late answer finds no one waiting: counted, not sent.
    e.handle_dns_answer(t, None, S + 5 * S);
    assert!(std::iter::from_fn(|| e.poll_output()).next().is_none());
    assert_eq!(e.counters.drops.get(&DropReason::DnsUnknownQuery), Some(&1));
}

#[test]
fn the_cache_and_the_name_map_stay_within_their_bounds() {
    let lim = DnsLimits {
        cache_entries: 16,
        cache_bytes: 4096,
        names: 8,
        pending: 8,
        ..DnsLimits::default()
    };
    let mut c = Cache::default();
    let mut names = NameMap::default();
    for i in 0..200u32 {
        let q = parse_query(&query_bytes(
            1,
            &format!("n{i}.example."),
            RecordType::A,
            false,
        ))
        .expect("q");
        let r = Resolved {
            rcode: ResponseCode::NoError,
            records: vec![a(
                &format!("n{i}.example."),
                [198, 51, 100, (i % 250) as u8],
            )],
            negative_ttl: None,
        };
        store(&mut c, &q, &r, u64::from(i) * S, &lim);
        assert!(
            c.len() <= 16 && c.bytes() <= 4096,
            "{} {}",
            c.len(),
            c.bytes()
        );
        names.learn(
            IpAddr::from([198, 51, 100, (i % 250) as u8]),
            &format!("n{i}.example"),
            1000 * S,
            8,
        );
        assert!(names.len() <= 8);
    }
    // Expiry: an answer is not served past its TTL (300 s here).
    let q = parse_query(&query_bytes(1, "n199.example.", RecordType::A, false)).expect("q");
    assert!(cached(&mut c, &q, 199 * S + 299 * S).is_some());
    assert!(cached(&mut c, &q, 199 * S + 301 * S).is_none());
}

proptest::proptest! {
    /// Whatever the app sends to port 53, the engine answers or drops it,
    /// never panics, and never asks the resolver for more than one name.
    #[test]
    fn arbitrary_dns_messages_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut e = engine(POLICY, EngineConfig::default());
        e.handle_tun(&reply::udp_packet(sa(APP), sa(DNS), &body).expect("packet"), S);
        let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
        let asks = out.iter().filter(|o| matches!(o, Output::DnsQuery { .. })).count();
        proptest::prop_assert!(asks <= 1);
        if let Some(t) = out.iter().find_map(|o| match o { Output::DnsQuery { query, .. } => Some(*query), _ => None }) {
            e.handle_dns_answer(t, None, S);
        }
    }
}

#[test]
fn names_seen_in_flows_feed_the_same_map() {
    let mut e = engine(POLICY, EngineConfig::default());
    // An SD-RTN probe naming an Agora edge, to a US address.
    let probe = crate::wire::rtc::sd_rtn_probe("1-2-3-4.edge.agora.io");
    e.handle_tun(
        &reply::udp_packet(sa(APP), sa("198.51.100.20:4001"), &probe).expect("packet"),
        S,
    );
    while e.poll_output().is_some() {}
    let names: Vec<&str> = e
        .names
        .names(IpAddr::from([198, 51, 100, 20]), 2 * S)
        .collect();
    assert_eq!(names, vec!["1-2-3-4.edge.agora.io"]);
    // Another flow to that address carries the name.
    e.handle_tun(
        &reply::udp_packet(sa("192.0.2.200:40001"), sa("198.51.100.20:9"), b"x").expect("packet"),
        2 * S,
    );
    // Held while it could be media to a PRC vendor, then decided.
    while e.poll_output().is_some() {}
    e.handle_timeout(3 * S);
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    assert_eq!(
        events(&out)[0].names,
        vec!["1-2-3-4.edge.agora.io".to_owned()]
    );
}

use crate::wire::rtc::rtp_packet as rtp;

/// No media to Agora's services, recognised by name: the DNS step keeps
/// their addresses (signalling to them is allowed), so the names must
/// follow the addresses into the flows.
const NO_AGORA_MEDIA: &str = r#"
name = "no-agora-media"
default = "allow"

[[rule]]
name = "no media to Agora"
action = "block"
traffic = ["media"]
vendor = ["agora"]
"#;

fn no_agora_media() -> Engine {
    engine(NO_AGORA_MEDIA, EngineConfig::default())
}

/// Sends RTP from the app to `to` until the engine decides; the events.
fn media_to(e: &mut Engine, to: &str, at: u64) -> Vec<Output> {
    let mut out = Vec::new();
    for seq in 0..12u16 {
        let p = reply::udp_packet(sa(APP), sa(to), &rtp(seq)).expect("packet");
        e.handle_tun(&p, at + u64::from(seq) * 20_000_000);
        out.extend(std::iter::from_fn(|| e.poll_output()));
    }
    out
}

/// A vendor's name learned from an answer with a 1 s TTL stays with its
/// edge's address: media to it 5 s later is still blocked by the vendor
/// layer, and not a datagram of it leaves.
#[test]
fn a_low_ttl_cannot_detach_a_vendor_name_from_its_edge() {
    let mut e = no_agora_media();
    let out = query(&mut e, 9, "104-166-161-75.edge.agora.io.", RecordType::A);
    let mut rec = a("104-166-161-75.edge.agora.io.", [198, 51, 100, 20]);
    rec.ttl = 1;
    let out = resolve(&mut e, &out, vec![rec]);
    assert!(answer_of(&out).is_some());
    let out = media_to(&mut e, "198.51.100.20:5000", 6 * S);
    let ev = events(&out);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::UdpOpen { .. } | Output::UdpSend { .. })),
        "{out:?}"
    );
    let b = ev
        .iter()
        .find(|e| e.action == Decision::Block)
        .expect("blocked");
    assert_eq!(b.rule.as_deref(), Some("no media to Agora"));
    assert_eq!(b.names, vec!["104-166-161-75.edge.agora.io".to_owned()]);
}

/// A name learned for an address after a flow to it opened is judged with
/// that flow: media already flowing to what turns out to be an Agora edge
/// is cut.
#[test]
fn a_name_learned_later_rejudges_open_flows() {
    let mut e = no_agora_media();
    let out = media_to(&mut e, "198.51.100.21:5000", S);
    let flow = events(&out)[0].flow;
    assert!(
        out.iter().any(|o| matches!(o, Output::UdpSend { .. })),
        "allowed at first"
    );
    let q = query(&mut e, 10, "1-2-3-4.edge.agora.io.", RecordType::A);
    let out = resolve(
        &mut e,
        &q,
        vec![a("1-2-3-4.edge.agora.io.", [198, 51, 100, 21])],
    );
    assert!(out.contains(&Output::Close { flow }), "{out:?}");
    let cut = events(&out)
        .into_iter()
        .find(|e| e.kind == EventKind::Cut)
        .expect("cut");
    assert_eq!(cut.rule.as_deref(), Some("no media to Agora"));
}

/// The name map evicts the address used least recently, not the oldest:
/// an edge looked up again survives newer addresses.
#[test]
fn the_name_map_evicts_the_least_recently_used() {
    let mut m = NameMap::default();
    let (a1, a2, a3) = (
        IpAddr::from([198, 51, 100, 1]),
        IpAddr::from([198, 51, 100, 2]),
        IpAddr::from([198, 51, 100, 3]),
    );
    m.learn(a1, "edge.example", 100 * S, 2);
    m.learn(a2, "other.example", 100 * S, 2);
    assert_eq!(m.names(a1, S).count(), 1, "a1 used again");
    m.learn(a3, "new.example", 100 * S, 2);
    assert_eq!(m.len(), 2);
    assert_eq!(m.names(a1, S).collect::<Vec<_>>(), vec!["edge.example"]);
    assert_eq!(m.names(a2, S).count(), 0, "a2 was the least recently used");
    // Many uses keep the bookkeeping bounded.
    for _ in 0..1000 {
        let _ = m.names(a1, S).count();
    }
    m.learn(a2, "other.example", 100 * S, 2);
    assert_eq!(m.len(), 2);
    assert_eq!(m.names(a1, S).count(), 1, "a1 still most recent");
}

/// RFC 7050: the AAAA answer to `ipv4only.arpa` reveals the network's
/// NAT64 prefix; from then on an address under it is judged by the IPv4
/// address it embeds (a CN relay here), where before it was unknown.
#[test]
fn the_nat64_prefix_is_discovered_from_ipv4only_arpa() {
    let mut e = engine(
        "name='no-cn'\ndefault='allow'\n[[rule]]\nname='no CN'\naction='block'\njurisdiction={countries=['CN']}\n",
        EngineConfig::default(),
    );
    let app6 = "[2001:db8:ffff::2]:40000";
    let relay = "[2001:db8:64::203.0.113.10]:7000";
    let send = |e: &mut Engine, port: u16| {
        let from: SocketAddr = format!("[2001:db8:ffff::2]:{port}").parse().expect("addr");
        e.handle_tun(
            &reply::udp_packet(from, sa(relay), b"hello").expect("packet"),
            2 * S,
        );
        let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
        events(&out).first().map(|ev| ev.action)
    };
    assert_eq!(
        send(&mut e, 40_001),
        Some(Decision::Allow),
        "prefix unknown"
    );
    let q = query_bytes(3, "ipv4only.arpa.", RecordType::AAAA, true);
    e.handle_tun(
        &reply::udp_packet(sa(app6), sa("[2001:db8::53]:53"), &q).expect("packet"),
        S,
    );
    let out: Vec<Output> = std::iter::from_fn(|| e.poll_output()).collect();
    let wka: Ipv6Addr = "2001:db8:64::192.0.0.170".parse().expect("addr");
    let _ = resolve(
        &mut e,
        &out,
        vec![Record::from_rdata(
            name("ipv4only.arpa."),
            300,
            RData::AAAA(AAAA(wka)),
        )],
    );
    assert_eq!(e.counters.nat64_discovered, 1);
    assert_eq!(
        send(&mut e, 40_002),
        Some(Decision::Block),
        "judged as the CN relay"
    );
}
