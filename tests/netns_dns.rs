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
    support::start_with_resolver(&mut net, &world, &policy, UPSTREAM);
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

// ---- DNS over TLS and over HTTPS upstreams ---------------------------------

/// How geowall reaches its upstream in these cases.
#[derive(Clone, Copy)]
enum Encrypted {
    /// DNS over TLS, port 853.
    Tls,
    /// DNS over HTTPS (HTTP/2, POST /dns-query), port 443.
    Https,
}

impl Encrypted {
    fn port(self) -> u16 {
        match self {
            Encrypted::Tls => 853,
            Encrypted::Https => 443,
        }
    }

    fn spec(self) -> String {
        match self {
            Encrypted::Tls => format!("tls:{UPSTREAM}@dns.test"),
            Encrypted::Https => format!("https:{UPSTREAM}@dns.test"),
        }
    }
}

fn dot_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dot")
        .join(name)
}

/// Server TLS settings with the `dns.test` certificate of the test CA.
fn server_tls(alpn: &[&[u8]]) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(dot_fixture("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dot_fixture("server.key")).expect("server.key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server TLS settings");
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// A DNS-over-TLS server on UPSTREAM:853; counts the queries it answered.
fn dot_server(net: &mut Net) -> Arc<AtomicUsize> {
    let cfg = Arc::new(server_tls(&[]));
    net.dns_stream_server(sa(&format!("{UPSTREAM}:853")), zone, move |tcp| {
        let conn = rustls::ServerConnection::new(Arc::clone(&cfg)).ok()?;
        Some(rustls::StreamOwned::new(conn, tcp))
    })
}

/// A DNS-over-HTTPS server on UPSTREAM:443 (HTTP/2 over TLS, queries as
/// POST bodies, RFC 8484); counts the queries it answered. Runs until the
/// network is dropped.
fn doh_server(net: &Net) -> Arc<AtomicUsize> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(&[b"h2"])));
    let listener = in_ns(&net.net, || {
        std::net::TcpListener::bind(sa(&format!("{UPSTREAM}:443"))).expect("bind doh")
    });
    listener.set_nonblocking(true).expect("nonblocking");
    let (stop, served) = (net.stopping(), Arc::new(AtomicUsize::new(0)));
    let counter = served.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            while !stop.load(Ordering::SeqCst) {
                let Ok(Ok((tcp, _))) =
                    tokio::time::timeout(Duration::from_millis(50), l.accept()).await
                else {
                    continue;
                };
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        tokio::spawn(answer_doh(req, respond, counter.clone()));
                    }
                });
            }
        });
    });
    served
}

/// Answers one DNS-over-HTTPS request from the zone.
async fn answer_doh(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    served: Arc<AtomicUsize>,
) {
    let mut body = req.into_body();
    let mut q = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        q.extend_from_slice(&chunk);
    }
    served.fetch_add(1, Ordering::SeqCst);
    let a = support::zone_answer(&q, zone).unwrap_or_default();
    let Ok(head) = http::Response::builder()
        .status(200)
        .header("content-type", "application/dns-message")
        .header("content-length", a.len())
        .body(())
    else {
        return;
    };
    if let Ok(mut send) = respond.send_response(head, false) {
        let _ = send.send_data(bytes::Bytes::from(a), true);
    }
}

/// Starts the encrypted upstream and geowall with it, trusting `ca`; asks
/// for `ok.example` from the app. The network, the queries the server
/// answered, and the app's answer.
fn query_through(how: Encrypted, ca: &str) -> (Net, Arc<AtomicUsize>, hickory_proto::op::Message) {
    let mut net = Net::new();
    net.add_server_address(UPSTREAM);
    let served = match how {
        Encrypted::Tls => dot_server(&mut net),
        Encrypted::Https => doh_server(&net),
    };
    let (policy, world) = net.policy_and_world(POLICY);
    let ca = dot_fixture(ca);
    net.start_geowall(
        &world,
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--dns-upstream",
            &how.spec(),
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

/// With the upstream's private CA trusted (`--dns-ca`), the app's plain
/// query is answered through the encrypted upstream, and nothing of DNS
/// leaves in clear text.
fn answers_with_a_private_ca(how: Encrypted) {
    let (net, served, m) = query_through(how, "ca.pem");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), vec![addr::US.parse::<IpAddr>().expect("ip")]);
    assert!(served.load(Ordering::SeqCst) >= 1, "the server answered");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        net.count(UPSTREAM, 6, how.port()) > 0,
        "queries went encrypted"
    );
    for proto in [6, 17] {
        assert_eq!(net.count(UPSTREAM, proto, 53), 0, "no clear-text DNS");
    }
}

/// With only an unrelated CA trusted, the certificate is refused, no query
/// is sent, and the app gets SERVFAIL.
fn an_untrusted_certificate_gets_no_query(how: Encrypted) {
    let (net, served, m) = query_through(how, "other-ca.pem");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(addresses(&m).is_empty());
    assert_eq!(
        served.load(Ordering::SeqCst),
        0,
        "no query reached the server"
    );
    assert!(
        net.count(UPSTREAM, 6, how.port()) > 0,
        "the TLS handshake was tried (else the case proves nothing)"
    );
}

#[test]
fn dns_over_tls_upstreams_answer_with_a_private_ca() {
    if support::root_or_skip("dns_over_tls_upstreams_answer_with_a_private_ca") {
        answers_with_a_private_ca(Encrypted::Tls);
    }
}

#[test]
fn a_dns_over_tls_upstream_with_an_untrusted_certificate_gets_no_query() {
    if support::root_or_skip("a_dns_over_tls_upstream_with_an_untrusted_certificate_gets_no_query")
    {
        an_untrusted_certificate_gets_no_query(Encrypted::Tls);
    }
}

#[test]
fn dns_over_https_upstreams_answer_with_a_private_ca() {
    if support::root_or_skip("dns_over_https_upstreams_answer_with_a_private_ca") {
        answers_with_a_private_ca(Encrypted::Https);
    }
}

#[test]
fn a_dns_over_https_upstream_with_an_untrusted_certificate_gets_no_query() {
    if support::root_or_skip(
        "a_dns_over_https_upstream_with_an_untrusted_certificate_gets_no_query",
    ) {
        an_untrusted_certificate_gets_no_query(Encrypted::Https);
    }
}
