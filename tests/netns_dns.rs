//! DNS end to end (root only; skips otherwise): the app's queries, to any
//! address, are answered by geowall through the configured upstream only;
//! answers lose addresses under blocked jurisdictions; blocked vendor names
//! get the block answer; later flows carry the names they were resolved by.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::{Net, addr, dns_query, in_ns};

/// The DNS server's address (US in the test world).
const UPSTREAM: &str = "198.51.100.53";
/// Where the app thinks its resolver is (nothing listens there).
const APP_RESOLVER: &str = "192.0.2.53:53";

const POLICY: &str = r#"
name = "dns-e2e"
default = "allow"

[[rule]]
name = "no agora"
action = "block"
vendor = ["agora"]
dns_answer = "null"

[[rule]]
name = "no tcp 7001 to meet"
action = "block"
block = "reject"
protocol = ["tcp"]
port = [7001]
domain = ["meet.example.org"]

[[rule]]
name = "no pings or media to PRC jurisdiction"
action = "block"
block = "reject"
traffic = ["ping", "media"]
jurisdiction = { countries = ["CN", "HK", "MO"], layers = ["geo", "network", "owner", "vendor"], disputed = "any" }
"#;

fn rec(name: &str, ip: &str) -> Record {
    let n = Name::from_ascii(format!("{name}.")).expect("name");
    match ip.parse::<IpAddr>().expect("ip") {
        IpAddr::V4(v) => Record::from_rdata(n, 60, RData::A(A(v))),
        IpAddr::V6(v) => Record::from_rdata(n, 60, RData::AAAA(AAAA(v))),
    }
}

fn zone(name: &str, t: RecordType) -> Vec<Record> {
    match (name, t) {
        ("meet.example.org", RecordType::A) => vec![rec(name, addr::CN), rec(name, addr::US)],
        ("meet.example.org", RecordType::AAAA) => vec![rec(name, addr::CN6), rec(name, addr::US6)],
        ("x.edge.agora.io", RecordType::A) => vec![rec(name, addr::US)],
        ("ok.example", RecordType::A) => vec![rec(name, addr::US)],
        _ => Vec::new(),
    }
}

fn addresses(m: &hickory_proto::op::Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(IpAddr::V4(*ip)),
            RData::AAAA(AAAA(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        })
        .collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

#[test]
fn queries_are_answered_filtered_and_attributed() {
    if !support::root_or_skip("netns_dns") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.add_server_address(UPSTREAM);
    let served = net.dns_server(sa(&format!("{UPSTREAM}:53")), zone);
    net.tcp_server(sa(&format!("{}:7000", addr::US)), |r| r.to_vec());
    net.tcp_server(sa(&format!("{}:7001", addr::US)), |r| r.to_vec());
    net.start_geowall(
        &world,
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--dns-upstream",
            &format!("udp:{UPSTREAM}"),
        ],
    );
    let app = net.app.clone();
    in_ns(&app, || {
        // One CN and one US address: only the US one, over UDP and TCP.
        let m =
            dns_query(sa(APP_RESOLVER), "meet.example.org.", RecordType::A, false).expect("udp");
        assert_eq!(addresses(&m), vec![addr::US.parse::<IpAddr>().expect("ip")]);
        let m = dns_query(
            sa(APP_RESOLVER),
            "meet.example.org.",
            RecordType::AAAA,
            true,
        )
        .expect("tcp");
        assert_eq!(
            addresses(&m),
            vec![addr::US6.parse::<IpAddr>().expect("ip")]
        );
        // A blocked vendor's name: the configured block answer (0.0.0.0).
        let m =
            dns_query(sa(APP_RESOLVER), "x.edge.agora.io.", RecordType::A, false).expect("agora");
        assert_eq!(
            addresses(&m),
            vec!["0.0.0.0".parse::<IpAddr>().expect("ip")]
        );
        // A name that does not exist stays NXDOMAIN.
        let m = dns_query(
            sa(APP_RESOLVER),
            "nothing.example.org.",
            RecordType::A,
            false,
        )
        .expect("nx");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // The learned name follows the address: allowed on 7000 ...
        let mut s = std::net::TcpStream::connect_timeout(
            &sa(&format!("{}:7000", addr::US)),
            Duration::from_secs(3),
        )
        .expect("connect 7000");
        std::io::Write::write_all(&mut s, b"x").expect("write");
        drop(s);
        // ... and a domain rule matches a connection made by address.
        let r = std::net::TcpStream::connect_timeout(
            &sa(&format!("{}:7001", addr::US)),
            Duration::from_secs(3),
        )
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            std::io::Write::write_all(&mut s, b"hello")?;
            let mut b = [0u8; 8];
            std::io::Read::read(&mut s, &mut b)
        });
        assert!(
            r.is_err() || r.is_ok_and(|n| n == 0),
            "port 7001 to meet.example.org must be rejected"
        );
    });
    std::thread::sleep(Duration::from_millis(200));
    // No DNS packet reached anything but the configured upstream.
    assert_eq!(
        net.count("192.0.2.53", 17, 53) + net.count("192.0.2.53", 6, 53),
        0
    );
    assert!(net.count(UPSTREAM, 17, 53) > 0, "the upstream was asked");
    assert!(served.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        net.count(addr::US, 6, 7001),
        0,
        "nothing reached the blocked port"
    );
    let events = net.events();
    let filtered = events
        .iter()
        .find(|e| e["kind"] == "dns-filtered")
        .unwrap_or_else(|| panic!("no dns-filtered event: {events:#?}"));
    assert_eq!(filtered["server"], "meet.example.org");
    let opened = events
        .iter()
        .find(|e| e["kind"] == "opened" && e["server"] == format!("{}:7000", addr::US))
        .unwrap_or_else(|| panic!("no opened event: {events:#?}"));
    assert_eq!(opened["names"][0], "meet.example.org");
    let blocked = events
        .iter()
        .find(|e| e["kind"] == "blocked" && e["server"] == format!("{}:7001", addr::US))
        .unwrap_or_else(|| panic!("no blocked event: {events:#?}"));
    assert_eq!(blocked["rule"], "no tcp 7001 to meet");
    net.stop_geowall();
}

/// Not root needed: the check happens before anything is set up.
#[test]
fn an_upstream_under_a_blocked_jurisdiction_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geowall"))
        .args([
            "tunnel",
            "--tun",
            "gwrefuse0",
            "--preset",
            "clubhouse",
            "--dns-upstream",
        ])
        .arg(format!("udp:{}", addr::CN))
        .arg("--world")
        .arg(&world)
        .output()
        .expect("geowall runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refusing upstream resolver 203.0.113.10") && err.contains("layer"),
        "{err}"
    );
}

// ---- DNS over TLS upstreams -------------------------------------------------

fn dot_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dot")
        .join(name)
}

/// A DNS-over-TLS server on UPSTREAM:853 with the `dns.test` certificate
/// of the test CA; counts the queries it answered.
fn dot_server(net: &mut Net) -> Arc<AtomicUsize> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    net.add_server_address(UPSTREAM);
    let certs = CertificateDer::pem_file_iter(dot_fixture("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dot_fixture("server.key")).expect("server.key");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server TLS settings");
    let cfg = Arc::new(cfg);
    net.dns_stream_server(sa(&format!("{UPSTREAM}:853")), zone, move |tcp| {
        let conn = rustls::ServerConnection::new(Arc::clone(&cfg)).ok()?;
        Some(rustls::StreamOwned::new(conn, tcp))
    })
}

/// Starts the DoT server and geowall with it as the upstream, trusting
/// `ca`; asks for `ok.example` from the app. The network, the queries the
/// server answered, and the app's answer.
fn query_through_dot(ca: &str) -> (Net, Arc<AtomicUsize>, hickory_proto::op::Message) {
    let mut net = Net::new();
    let served = dot_server(&mut net);
    let (policy, world) = net.policy_and_world(POLICY);
    let ca = dot_fixture(ca);
    net.start_geowall(
        &world,
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--dns-upstream",
            &format!("tls:{UPSTREAM}@dns.test"),
            "--dns-ca",
            ca.to_str().expect("utf-8"),
        ],
    );
    let m = in_ns(&net.app, || {
        dns_query(sa(APP_RESOLVER), "ok.example.", RecordType::A, false)
    })
    .expect("an answer");
    (net, served, m)
}

/// A DNS-over-TLS upstream with a private CA (`--dns-ca`): the app's
/// plain queries are answered through it, and nothing of DNS leaves in
/// clear text.
#[test]
fn dns_over_tls_upstreams_answer_with_a_private_ca() {
    if !support::root_or_skip("dns_over_tls_upstreams_answer_with_a_private_ca") {
        return;
    }
    let (net, served, m) = query_through_dot("ca.pem");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), vec![addr::US.parse::<IpAddr>().expect("ip")]);
    assert!(
        served.load(Ordering::SeqCst) >= 1,
        "the DoT server answered"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(net.count(UPSTREAM, 6, 853) > 0, "queries went over TLS");
    for proto in [6, 17] {
        assert_eq!(net.count(UPSTREAM, proto, 53), 0, "no clear-text DNS");
    }
}

/// The same upstream when only an unrelated CA is trusted: the
/// certificate is refused, no query is sent, and the app gets SERVFAIL.
#[test]
fn a_dns_over_tls_upstream_with_an_untrusted_certificate_gets_no_query() {
    if !support::root_or_skip("a_dns_over_tls_upstream_with_an_untrusted_certificate_gets_no_query")
    {
        return;
    }
    let (net, served, m) = query_through_dot("other-ca.pem");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(addresses(&m).is_empty());
    assert_eq!(
        served.load(Ordering::SeqCst),
        0,
        "no query reached the server"
    );
    assert!(
        net.count(UPSTREAM, 6, 853) > 0,
        "the TLS handshake was tried (else the case proves nothing)"
    );
}
