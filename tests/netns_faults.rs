//! Faults (root only; skips otherwise): a flood of new flows, a resolver
//! that is down or slow, a slow client, a closed UDP port, a ping no
//! router can deliver, a network without IPv6, rules bundles
//! that are corrupt, truncated, rolled back or wrongly signed pushed during
//! traffic, a valid one bringing a vendor of its own, and the TUN removed
//! under the engine. (SIGKILL mid-transfer is in `netns_e2e.rs`.) See
//! `SECURITY.md`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use geowall::policy::bundle;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::{Net, addr, dns_query, echo, in_ns, sa, udp_exchange_within};

const POLICY: &str = r#"
name = "faults"
default = "allow"

[[rule]]
name = "nothing to PRC networks"
action = "block"
block = "reject"
jurisdiction = { countries = ["CN", "HK", "MO"], layers = ["geo", "network"] }
"#;

/// How long a UDP exchange waits for its answer.
const WAIT: Duration = Duration::from_secs(2);

/// An echo server in the internet namespace that answers each read at
/// once (for a connection that stays open while other things happen).
fn interactive_echo(net: &Net, at: SocketAddr) {
    let l = in_ns(&net.net, || TcpListener::bind(at).expect("bind"));
    std::thread::spawn(move || {
        for c in l.incoming().take(8) {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65_536];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Sends `msg` on an open connection and reads the same back.
fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    assert_eq!(back, msg);
    Ok(())
}

fn status(net: &Net) -> serde_json::Value {
    let out = support::geowall_cli(net, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Whether `status --json`'s counter `key` reaches `least` within 2 s
/// (the status is published about every 100 ms).
fn status_reaches(net: &Net, key: &str, least: u64) -> bool {
    (0..20).any(|_| {
        let n = status(net)[key].as_u64().unwrap_or(0);
        if n < least {
            std::thread::sleep(Duration::from_millis(100));
        }
        n >= least
    })
}

/// A process's memory figure (`VmHWM`, `VmRSS`) in KiB.
fn memory(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 100,000 new UDP flows from the app against a table of 2,000: memory
/// stays bounded, refusals are counted, a connection opened before the
/// flood keeps working during and after it. (The flood's flows leave the
/// table when they idle out, after 60 s by default.)
#[test]
fn a_flood_of_new_flows_is_refused_and_counted() {
    if !support::root_or_skip("a_flood_of_new_flows_is_refused_and_counted") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    interactive_echo(&net, sa(addr::US, 7000));
    net.start_geowall(
        &world,
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--max-flows",
            "2000",
            "--dns-upstream",
            &format!("udp:{}:53", addr::US),
        ],
    );
    let pid = net.geowall_pid().expect("geowall runs");
    let app = net.app.clone();
    let mut open = in_ns(&app, || {
        let mut s = TcpStream::connect_timeout(&sa(addr::US, 7000), Duration::from_secs(3))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        round_trip(&mut s, b"before the flood").expect("echo");
        s
    });
    let rss_before = memory(pid, "VmRSS");
    // The flood: 100,000 datagrams, each a new flow (50,000 ports from
    // each of two sockets), to a US address nobody serves.
    let sent = in_ns(&app, || {
        let socks = [
            UdpSocket::bind("0.0.0.0:0").expect("bind"),
            UdpSocket::bind("0.0.0.0:0").expect("bind"),
        ];
        let mut sent = 0u32;
        for port in 10_000u16..60_000 {
            for s in &socks {
                // A full socket buffer drops the datagram in the app's own
                // kernel; count only what left.
                if s.send_to(b"flood", sa(addr::US2, port)).is_ok() {
                    sent += 1;
                }
            }
            // Paced (about 50,000 a second at most) so that the TUN's
            // queue in the app's kernel does not drop what geowall has not
            // read yet: the flood is meant to reach the engine.
            if port % 25 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    round_trip(&mut open, b"after the flood").expect("the open connection still works");
    let v = status(&net);
    let refused = v["refused"].as_u64().unwrap_or(0);
    let flows = v["flows_open"].as_u64().unwrap_or(0);
    let seen = v["packets_from_tun"].as_u64().unwrap_or(0);
    let peak = memory(pid, "VmHWM");
    eprintln!(
        "flood: {sent} datagrams sent, {seen} packets reached geowall, {refused} flows refused, {flows} open (bound 2,000); geowall RSS before {rss_before} KiB, peak {peak} KiB"
    );
    assert!(flows <= 2_000, "{v}");
    // Every flood datagram that reached geowall opened a flow or was
    // refused (the rest of the packets: the open connection's).
    assert!(seen > 50_000, "the flood reached geowall: {v}");
    assert!(refused + 2_000 + 100 >= seen, "refusals counted: {v}");
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    // A new connection meets the full table: refused, and counted.
    let refused_before = refused;
    let r = in_ns(&app, || support::tcp_exchange(sa(addr::US, 7000), b"new"));
    assert!(r.is_err(), "a new flow while the table is full");
    std::thread::sleep(Duration::from_millis(300));
    assert!(status(&net)["refused"].as_u64() > Some(refused_before));
    round_trip(&mut open, b"still").expect("the open connection still works");
}

/// The upstream resolver down (nothing listens) or slow (1.5 s): the app
/// gets an answer before its own 5 s timeout (SERVFAIL after 4 s, or the
/// slow answer), other traffic is not held up meanwhile.
#[test]
fn a_dead_or_slow_resolver_fails_only_dns() {
    if !support::root_or_skip("a_dead_or_slow_resolver_fails_only_dns") {
        return;
    }
    fn slow(name: &str, t: RecordType) -> Vec<Record> {
        std::thread::sleep(Duration::from_millis(1_500));
        match (name, t) {
            ("slow.example", RecordType::A) => vec![Record::from_rdata(
                Name::from_ascii("slow.example.").expect("name"),
                60,
                RData::A(A(addr::US.parse().expect("ip"))),
            )],
            _ => Vec::new(),
        }
    }
    for (case, upstream) in [("dead", "198.51.100.53"), ("slow", "198.51.100.54")] {
        let mut net = Net::new();
        let (policy, world) = net.policy_and_world(POLICY);
        net.add_server_address(upstream);
        if case == "slow" {
            net.dns_server(sa(upstream, 53), slow);
        }
        net.udp_server(sa(addr::US, 7000), echo);
        net.start_geowall(
            &world,
            &[
                "--policy",
                policy.to_str().expect("utf-8"),
                "--dns-upstream",
                &format!("udp:{upstream}"),
            ],
        );
        let app = net.app.clone();
        let (answer, during) = in_ns(&app, || {
            std::thread::scope(|s| {
                let q = s.spawn(|| {
                    dns_query(sa("192.0.2.53", 53), "slow.example", RecordType::A, false)
                });
                std::thread::sleep(Duration::from_millis(200));
                // Meanwhile, other traffic flows.
                let during = udp_exchange_within(sa(addr::US, 7000), b"meanwhile", WAIT);
                (q.join().expect("query thread"), during)
            })
        });
        assert_eq!(during.expect("UDP while DNS waits"), b"meanwhile", "{case}");
        let m = answer.unwrap_or_else(|e| panic!("{case}: no answer at all: {e}"));
        match case {
            "dead" => assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m:?}"),
            _ => assert_eq!(m.answers.len(), 1, "the slow answer: {m:?}"),
        }
    }
}

/// A slow reader: a 4 MB download the app reads only after a pause, while
/// another flow works; the download arrives whole.
#[test]
fn a_slow_client_gets_everything_and_holds_up_no_one() {
    if !support::root_or_skip("a_slow_client_gets_everything_and_holds_up_no_one") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    net.tcp_server(sa(addr::US, 7100), |_| {
        (0..4_000_000u32).map(|i| (i % 253) as u8).collect()
    });
    net.udp_server(sa(addr::US, 7000), echo);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    let got = in_ns(&app, || {
        let mut s = TcpStream::connect_timeout(&sa(addr::US, 7100), Duration::from_secs(3))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.shutdown(std::net::Shutdown::Write).expect("fin");
        // Read nothing for two seconds; another flow meanwhile.
        std::thread::sleep(Duration::from_secs(1));
        let other = udp_exchange_within(sa(addr::US, 7000), b"other", WAIT);
        assert_eq!(other.expect("the other flow works"), b"other");
        std::thread::sleep(Duration::from_secs(1));
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read");
        all
    });
    assert!(
        got == big,
        "{} of {} bytes, or different",
        got.len(),
        big.len()
    );
}

/// A datagram to a UDP port nothing listens on, IPv4 and IPv6: the
/// server's host answers with an ICMP port unreachable, and the app's
/// connected socket fails with "connection refused" as it does without
/// geowall, instead of waiting out its timeout (a stub resolver would wait
/// 5 s before it tried its next server). The datagram did reach the
/// server's host: the error is the server's, not geowall's. A port that
/// answers still does.
#[test]
fn a_closed_udp_port_is_refused_at_once_as_without_geowall() {
    if !support::root_or_skip("a_closed_udp_port_is_refused_at_once_as_without_geowall") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US, 7000), echo);
    net.udp_server(sa(addr::US6, 7000), echo);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    for ip in [addr::US, addr::US6] {
        let closed = sa(ip, 7001);
        let r = in_ns(&app, move || {
            // Longer than geowall holds a first datagram, shorter than a
            // resolver's timeout.
            udp_exchange_within(closed, b"anyone there?", Duration::from_secs(3))
        });
        eprintln!("{closed}: {r:?}");
        let e = r.expect_err("nothing listens, yet an answer came");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{closed}: refused, not timed out: {e}"
        );
        // (The capture on the internet side counts it a little later.)
        let reached = (0..40).any(|_| {
            let n = net.count(ip, 17, 7001);
            if n == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            n >= 1
        });
        assert!(
            reached,
            "{closed}: the datagram never reached the server's host"
        );
        let open = in_ns(&app, move || {
            udp_exchange_within(sa(ip, 7000), b"hello", WAIT)
        });
        assert_eq!(open.expect("the open port answers"), b"hello");
    }
    assert!(
        status_reaches(&net, "udp_unreachable", 2),
        "{}",
        status(&net)
    );
}

/// Sends one echo request from a ping socket that asks for ICMP errors
/// (`IP_RECVERR`, as `ping` does) and waits up to `wait` for what comes
/// back: the reply's bytes, or the error.
fn ping_once(to: std::net::IpAddr, wait: Duration) -> std::io::Result<Vec<u8>> {
    use nix::sys::socket::{setsockopt, sockopt};
    let (domain, proto, request) = match to {
        std::net::IpAddr::V4(_) => (socket2::Domain::IPV4, socket2::Protocol::ICMPV4, 8u8),
        std::net::IpAddr::V6(_) => (socket2::Domain::IPV6, socket2::Protocol::ICMPV6, 128u8),
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(proto))?;
    match to {
        std::net::IpAddr::V4(_) => setsockopt(&s, sockopt::Ipv4RecvErr, &true)?,
        std::net::IpAddr::V6(_) => setsockopt(&s, sockopt::Ipv6RecvErr, &true)?,
    }
    s.connect(&SocketAddr::new(to, 0).into())?;
    s.set_read_timeout(Some(wait))?;
    s.send(&[request, 0, 0, 0, 0, 0, 0, 1, b'h', b'i'])?;
    let mut buf = [0u8; 1500];
    let n = (&s).read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// A ping to an address a router on the way cannot reach (an
/// `unreachable` route in the internet namespace, IPv4 and IPv6): the
/// router's ICMP error reaches the app's ping socket as it would without
/// geowall ("Destination Host Unreachable", "Network unreachable"),
/// instead of a timeout; a reachable address still answers.
#[test]
fn a_ping_a_router_cannot_deliver_fails_at_once_as_without_geowall() {
    if !support::root_or_skip("a_ping_a_router_cannot_deliver_fails_at_once_as_without_geowall") {
        return;
    }
    let mut net = Net::new();
    // (An IPv4 router answers for an unreachable route only if it forwards.)
    support::sysctl(&net.net, "net.ipv4.ip_forward", "1");
    support::ip(&[
        "-n",
        &net.net,
        "route",
        "add",
        "unreachable",
        "198.51.100.99/32",
    ]);
    support::ip(&[
        "-n",
        &net.net,
        "-6",
        "route",
        "add",
        "unreachable",
        "2001:db8:99::99/128",
    ]);
    let (policy, world) = net.policy_and_world(POLICY);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    for (to, errno) in [
        ("198.51.100.99", nix::libc::EHOSTUNREACH),
        ("2001:db8:99::99", nix::libc::ENETUNREACH),
    ] {
        let ip: std::net::IpAddr = to.parse().expect("ip");
        let r = in_ns(&app, move || ping_once(ip, Duration::from_secs(3)));
        eprintln!("ping {to}: {r:?}");
        let e = r.expect_err("no answer can come");
        assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "{to}: the router's error, not a timeout: {e}"
        );
    }
    let us: std::net::IpAddr = addr::US.parse().expect("ip");
    let r = in_ns(&app, move || ping_once(us, Duration::from_secs(3)));
    assert_eq!(
        r.expect("the US server answers").first(),
        Some(&0),
        "an echo reply"
    );
    assert!(
        status_reaches(&net, "echo_unreachable", 2),
        "{}",
        status(&net)
    );
}

/// An HTTP server in the internet namespace on `at` that answers every
/// request head it reads with "ok" and closes; it counts the requests.
fn http_server(net: &Net, at: SocketAddr) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let l = in_ns(&net.net, move || TcpListener::bind(at).expect("bind http"));
    l.set_nonblocking(true).expect("nonblocking");
    let (stop, n) = (net.stopping(), served.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            if head.starts_with(b"GET ") {
                n.fetch_add(1, Ordering::SeqCst);
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        }
    });
    served
}

/// What curl in namespace `app` gets from `http://dual.example/`, the name
/// given both addresses (`v6` first, as Happy Eyeballs tries it).
fn curl_dual(app: &str, v6: &str, v4: &str) -> String {
    let resolve = format!("dual.example:80:[{v6}],{v4}");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", app, "curl", "-sS", "--max-time", "5"])
        .args(["--resolve", &resolve, "http://dual.example/"])
        .output()
        .expect("curl (the CI installs it)");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("curl: {said:?} {}", String::from_utf8_lossy(&out.stderr));
    said
}

/// On a network with no IPv6 route (geowall's side has no IPv6 default
/// route), a connection to an IPv6 internet address fails at `connect()`
/// with "network unreachable", as it does without geowall, instead of
/// being accepted by the local stack and reset after the app's first
/// bytes. So a real client with both addresses of a server (curl, Happy
/// Eyeballs: IPv6 first) falls back to IPv4 and gets its page, where it
/// got "connection reset". IPv4 goes on; once the IPv6 route is back, so
/// does IPv6, without restarting geowall.
#[test]
fn a_family_with_no_route_fails_at_connect_so_apps_fall_back() {
    if !support::root_or_skip("a_family_with_no_route_fails_at_connect_so_apps_fall_back") {
        return;
    }
    let mut net = Net::new();
    let v4 = http_server(&net, sa(addr::US, 80));
    let v6 = http_server(&net, sa(addr::US6, 80));
    support::ipv6_default_route(&net.fw, "del");
    let (policy, world) = net.policy_and_world(POLICY);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    let six = sa(addr::US6, 80);
    let r = in_ns(&app, move || {
        TcpStream::connect_timeout(&six, Duration::from_secs(3))
    });
    eprintln!("connect {six}: {r:?}");
    let e = r.expect_err("no IPv6 route, yet connected");
    assert_eq!(
        e.raw_os_error(),
        Some(nix::libc::ENETUNREACH),
        "network unreachable at connect, not accepted then reset: {e}"
    );
    let said = curl_dual(&app, addr::US6, addr::US);
    assert_eq!(said, "ok", "curl fell back to IPv4");
    assert_eq!(v4.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(v6.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(status_reaches(&net, "no_route", 2), "{}", status(&net));
    // The route comes back: within a few of geowall's route checks, IPv6
    // connects again.
    support::ipv6_default_route(&net.fw, "add");
    let back = (0..30).any(|_| {
        let ok = in_ns(&app, move || {
            support::tcp_exchange_within(six, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", WAIT)
        })
        .is_ok_and(|r| r.ends_with(b"ok"));
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
        ok
    });
    assert!(back, "IPv6 works again once its route is back");
    assert_eq!(v6.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// On a network with no IPv6 route, geowall's DNS answers leave out IPv6
/// addresses: a AAAA question gets an empty answer and an A question its
/// address, as from a host resolver that asks only for the families the
/// host has, so apps (UDP ones too, which would not see an ICMPv6 "no
/// route") use IPv4 from the start. The answers are cached whole: once the
/// route is back, the same question gets its IPv6 address.
#[test]
fn without_an_ipv6_route_names_resolve_to_ipv4_only() {
    if !support::root_or_skip("without_an_ipv6_route_names_resolve_to_ipv4_only") {
        return;
    }
    fn dual(name: &str, t: RecordType) -> Vec<Record> {
        let n = Name::from_ascii("dual.example.").expect("name");
        match (name, t) {
            ("dual.example", RecordType::A) => {
                vec![Record::from_rdata(
                    n,
                    60,
                    RData::A(A(addr::US.parse().expect("ip"))),
                )]
            }
            ("dual.example", RecordType::AAAA) => vec![Record::from_rdata(
                n,
                60,
                RData::AAAA(hickory_proto::rr::rdata::AAAA(
                    addr::US6.parse().expect("ip"),
                )),
            )],
            _ => Vec::new(),
        }
    }
    let upstream = "198.51.100.53";
    let mut net = Net::new();
    net.add_server_address(upstream);
    net.dns_server(sa(upstream, 53), dual);
    support::ipv6_default_route(&net.fw, "del");
    let (policy, world) = net.policy_and_world(POLICY);
    support::start_with_resolver(&mut net, &world, &policy, upstream);
    let app = net.app.clone();
    let ask = |t: RecordType| {
        in_ns(&app, || {
            dns_query(sa("192.0.2.53", 53), "dual.example.", t, false).expect("an answer")
        })
    };
    let addresses = |m: &hickory_proto::op::Message| -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    };
    let six = ask(RecordType::AAAA);
    assert_eq!(six.metadata.response_code, ResponseCode::NoError, "{six:?}");
    assert!(addresses(&six).is_empty(), "no IPv6 route, yet: {six:?}");
    assert_eq!(addresses(&ask(RecordType::A)), vec![addr::US.to_string()]);
    let counted = (0..20).any(|_| {
        let n = status(&net)["dns"]["unroutable"].as_u64().unwrap_or(0);
        if n < 1 {
            std::thread::sleep(Duration::from_millis(100));
        }
        n == 1
    });
    assert!(counted, "{}", status(&net));
    support::ipv6_default_route(&net.fw, "add");
    let back = (0..30).any(|_| {
        let got = addresses(&ask(RecordType::AAAA));
        if got.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        got == vec![addr::US6.to_string()]
    });
    assert!(back, "the IPv6 address is answered once the route is back");
}

/// On a network whose IPv6 default route leads nowhere (here: a range
/// geowall's side cannot reach, while the family's route check still
/// finds a default route), the first IPv6 connections are accepted by the
/// local stack and reset once their upstream connects fail; after three
/// servers, geowall takes IPv6 as not carrying connections, and a new
/// IPv6 connection fails at `connect()` with "network unreachable" as
/// without a route, so curl, with both addresses of a server, falls back
/// to IPv4 and gets its page where it got "connection reset". IPv4 goes on.
#[test]
fn a_family_whose_route_leads_nowhere_is_refused_after_a_few_connects() {
    if !support::root_or_skip("a_family_whose_route_leads_nowhere_is_refused_after_a_few_connects")
    {
        return;
    }
    let mut net = Net::new();
    let v4 = http_server(&net, sa(addr::US, 80));
    support::ip(&[
        "-n",
        &net.fw,
        "-6",
        "route",
        "add",
        "unreachable",
        "2001:db8:99::/48",
    ]);
    let (policy, world) = net.policy_and_world(POLICY);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    for i in 1..=3 {
        let to = sa(&format!("2001:db8:99::{i}"), 80);
        let r = in_ns(&app, move || {
            support::tcp_exchange_within(to, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", WAIT)
        });
        eprintln!("{to}: {r:?}");
        assert!(r.is_err(), "{to}: no server can answer");
    }
    assert!(status_reaches(&net, "families_down", 1), "{}", status(&net));
    let to = sa("2001:db8:99::4", 80);
    let r = in_ns(&app, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    });
    let e = r.expect_err("IPv6 does not carry connections, yet connected");
    assert_eq!(
        e.raw_os_error(),
        Some(nix::libc::ENETUNREACH),
        "network unreachable at connect: {e}"
    );
    let said = curl_dual(&app, "2001:db8:99::5", addr::US);
    assert_eq!(said, "ok", "curl fell back to IPv4");
    assert_eq!(v4.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(status_reaches(&net, "family_down", 2), "{}", status(&net));
}

/// On a network without IPv4 (geowall's side has no IPv4 default route),
/// an app's connected UDP socket to an IPv4 internet address gets "network
/// unreachable" at once, as without geowall (there at `connect()`),
/// instead of waiting out its own timeout; TCP fails at connect.
#[test]
fn without_an_ipv4_route_udp_and_tcp_fail_at_once() {
    if !support::root_or_skip("without_an_ipv4_route_udp_and_tcp_fail_at_once") {
        return;
    }
    let mut net = Net::new();
    net.udp_server(sa(addr::US, 7000), echo);
    support::ip(&[
        "-n",
        &net.fw,
        "route",
        "del",
        "default",
        "via",
        "198.18.0.2",
    ]);
    let (policy, world) = net.policy_and_world(POLICY);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    let to = sa(addr::US, 7000);
    let r = in_ns(&app, move || udp_exchange_within(to, b"x", WAIT));
    let e = r.expect_err("no IPv4 route, yet answered");
    assert_eq!(
        e.raw_os_error(),
        Some(nix::libc::ENETUNREACH),
        "network unreachable on the connected socket, not a timeout: {e}"
    );
    let to = sa(addr::US, 80);
    let r = in_ns(&app, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    });
    let e = r.expect_err("no IPv4 route, yet connected");
    assert_eq!(e.raw_os_error(), Some(nix::libc::ENETUNREACH), "{e}");
    assert!(status_reaches(&net, "no_route", 2), "{}", status(&net));
}

/// Starts geowall on a bundle of [`POLICY`] (sequence 10) signed by `key`,
/// trusting only `key`; the bundle file's path (rewrite it and run
/// `geowall reload` to update).
fn start_on_bundle(net: &mut Net, world: &Path, key: &bundle::SigningKey) -> PathBuf {
    let dir = net.dir.path().to_owned();
    let pubkey = trusted_key(&dir, key);
    let live = dir.join("rules.gwb");
    std::fs::write(&live, signed_bundle(&dir, 10, POLICY, &[], key)).expect("bundle");
    net.start_geowall(
        world,
        &[
            "--bundle",
            live.to_str().expect("utf-8"),
            "--pubkey",
            pubkey.to_str().expect("utf-8"),
        ],
    );
    live
}

/// A bundle of `policy` with sequence `seq`, valid for an hour, signed by
/// `key`; with `vendors` (file name, TOML) as its vendor catalog, or the
/// shipped one when empty.
fn signed_bundle(
    dir: &Path,
    seq: u64,
    policy: &str,
    vendors: &[(&str, &str)],
    key: &bundle::SigningKey,
) -> Vec<u8> {
    signed_bundle_for(dir, seq, policy, vendors, key, 3_600)
}

/// Writes `key`'s public half to `dir/key.pub`, the file `--pubkey` takes.
fn trusted_key(dir: &Path, key: &bundle::SigningKey) -> PathBuf {
    let pubkey = dir.join("key.pub");
    std::fs::write(&pubkey, bundle::key_hex(key.verifying_key().as_bytes())).expect("key");
    pubkey
}

/// [`POLICY`] with one more rule that blocks US2 by address.
fn policy_blocking_us2() -> String {
    format!(
        "{POLICY}\n[[rule]]\nname = \"no US2\"\naction = \"block\"\ncidr = [\"{}/32\"]\n",
        addr::US2
    )
}

/// [`signed_bundle`] valid for `valid_s` seconds from now.
fn signed_bundle_for(
    dir: &Path,
    seq: u64,
    policy: &str,
    vendors: &[(&str, &str)],
    key: &bundle::SigningKey,
    valid_s: u64,
) -> Vec<u8> {
    let d = dir.join(format!("src{seq}"));
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("policy.toml"), policy).expect("policy");
    if !vendors.is_empty() {
        std::fs::create_dir_all(d.join("vendors")).expect("mkdir vendors");
        for (name, text) in vendors {
            std::fs::write(d.join("vendors").join(name), text).expect("vendor file");
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    bundle::sign(
        &bundle::build(&d, seq, now - 60, now + valid_s).expect("build"),
        key,
    )
    .expect("sign")
}

/// A bundle that brings a vendor of its own, pushed with `geowall reload`:
/// the running engine recognises the vendor from then on (by the name in a
/// TLS ClientHello) and blocks it, while other names still pass.
#[test]
fn a_reloaded_bundle_brings_its_own_vendors() {
    if !support::root_or_skip("a_reloaded_bundle_brings_its_own_vendors") {
        return;
    }
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(POLICY);
    net.tcp_server(sa(addr::US, 7000), echo);
    net.tcp_server(sa(addr::US2, 7001), echo);
    let dir = net.dir.path().to_owned();
    let key = bundle::SigningKey::from_bytes(&[7; 32]);
    let live = start_on_bundle(&mut net, &world, &key);
    let app = net.app.clone();
    let hello = support::client_hello("cdn.vendor.test");
    let got = in_ns(&app, || support::tcp_exchange(sa(addr::US, 7000), &hello));
    assert_eq!(got.expect("allowed before the update"), hello);

    let shipped = geowall::intel::catalog::SHIPPED
        .iter()
        .find(|(p, _)| p.contains("vendors"))
        .map(|(_, t)| *t)
        .expect("shipped vendors");
    let extra = r#"
[[vendor]]
id = "testvendor"
name = "Test Vendor"
jurisdiction = "CN"
evidence = "a vendor only this bundle knows"
domains = ["vendor.test"]
sources = ["this test"]
"#;
    let policy = format!(
        "{POLICY}\n[[rule]]\nname = \"no testvendor\"\naction = \"block\"\nblock = \"reject\"\nvendor = [\"testvendor\"]\n"
    );
    let update = signed_bundle(
        &dir,
        11,
        &policy,
        &[("vendors.toml", shipped), ("extra.toml", extra)],
        &key,
    );
    std::fs::write(&live, update).expect("write");
    support::reload(&net);
    std::thread::sleep(Duration::from_millis(300));
    let before = net.count_settled(addr::US, 6, 7000);
    let got = in_ns(&app, || support::tcp_exchange(sa(addr::US, 7000), &hello));
    assert!(
        got.is_err() || got.as_ref().is_ok_and(Vec::is_empty),
        "the bundle's vendor is blocked: {got:?}"
    );
    // Another name still passes (the block is the vendor's, not a
    // breakage); at another address, since names seen for one are
    // remembered for its later flows.
    let other = support::client_hello("cdn.other.test");
    let got = in_ns(&app, || support::tcp_exchange(sa(addr::US2, 7001), &other));
    assert_eq!(got.expect("another name passes"), other);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        net.count(addr::US, 6, 7000),
        before,
        "no packet of the blocked flow reached the server"
    );
}

/// Bundles pushed with `geowall reload` while a connection is open: a
/// corrupt, a truncated, a rolled-back and a wrongly signed one are refused
/// and the running rules stay; the open connection never notices; a newer
/// valid one applies.
#[test]
fn bad_bundles_pushed_during_traffic_are_refused() {
    if !support::root_or_skip("bad_bundles_pushed_during_traffic_are_refused") {
        return;
    }
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(POLICY);
    interactive_echo(&net, sa(addr::US, 7000));
    net.udp_server(sa(addr::US2, 7000), echo);
    let dir = net.dir.path().to_owned();
    let key = bundle::SigningKey::from_bytes(&[5; 32]);
    let make = |seq: u64, policy: &str, key: &bundle::SigningKey| {
        signed_bundle(&dir, seq, policy, &[], key)
    };
    let blocks_us2 = format!(
        "{POLICY}\n[[rule]]\nname = \"no US2\"\naction = \"block\"\ncidr = [\"{}/32\"]\n",
        addr::US2
    );
    let live = start_on_bundle(&mut net, &world, &key);
    let app = net.app.clone();
    let mut open = in_ns(&app, || {
        let mut s = TcpStream::connect_timeout(&sa(addr::US, 7000), Duration::from_secs(3))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        round_trip(&mut s, b"start").expect("echo");
        s
    });
    let reload = || support::geowall_cli(&net, &["reload"]);
    let good = make(11, &blocks_us2, &key);
    let mut corrupt = make(12, &blocks_us2, &key);
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 1;
    let other = bundle::SigningKey::from_bytes(&[6; 32]);
    for (what, bytes) in [
        ("corrupt", corrupt),
        ("truncated", good[..good.len() - 10].to_vec()),
        ("rolled back", make(9, &blocks_us2, &key)),
        ("wrongly signed", make(13, &blocks_us2, &other)),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&live, &bytes).expect("write");
        let out = reload();
        assert!(!out.status.success(), "{what} bundle accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the running rules stay"), "{what}: {err}");
        round_trip(&mut open, what.as_bytes()).expect("the open connection is unaffected");
        // The old rules: US2 still allowed.
        let ok = in_ns(&app, || {
            udp_exchange_within(sa(addr::US2, 7000), what.as_bytes(), WAIT).is_ok()
        });
        assert!(ok, "after the {what} bundle, the old rules still allow US2");
    }
    std::fs::write(&live, &good).expect("write");
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    round_trip(&mut open, b"after the update").expect("still open");
    std::thread::sleep(Duration::from_millis(100));
    let before = net.count(addr::US2, 17, 7000);
    in_ns(&app, || {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.send_to(b"now blocked", sa(addr::US2, 7000))
            .expect("send");
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        net.count(addr::US2, 17, 7000),
        before,
        "bundle 11 blocks US2"
    );
    // Reloading the same bundle again is not an update.
    assert!(!reload().status.success());
}

/// The TUN deleted under the engine: geowall exits with an error that
/// says so, the app namespace is left without a route, nothing leaves.
#[test]
fn a_removed_tun_is_a_clean_error_and_fails_closed() {
    if !support::root_or_skip("a_removed_tun_is_a_clean_error_and_fails_closed") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US, 7000), echo);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    support::ip(&["-n", &app, "link", "del", &net.tun]);
    let (status, err) = net
        .wait_geowall(Duration::from_secs(10))
        .expect("geowall exits when its TUN is gone");
    assert!(!status.success(), "exit status {status}");
    assert!(err.contains("TUN"), "the error names the TUN: {err}");
    let before = net.count(addr::US, 17, 7000);
    let sent = in_ns(&app, || {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.send_to(b"after", sa(addr::US, 7000)).is_ok()
    });
    assert!(!sent, "no route is left in the app namespace");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(net.count(addr::US, 17, 7000), before);
}

/// Rollback protection survives a restart: geowall started on bundle 11
/// (which blocks US2) with a state directory, stopped, and started again
/// on the older bundle 10 (which allows everything) keeps bundle 11's rules
/// in force, says so, and US2 gets 0 packets.
#[test]
fn a_restart_with_an_older_bundle_keeps_the_newer_rules() {
    if !support::root_or_skip("a_restart_with_an_older_bundle_keeps_the_newer_rules") {
        return;
    }
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US2, 7000), echo);
    let dir = net.dir.path().to_owned();
    let key = bundle::SigningKey::from_bytes(&[7; 32]);
    let pubkey = trusted_key(&dir, &key);
    let blocks_us2 = policy_blocking_us2();
    let b11 = dir.join("b11.gwb");
    std::fs::write(&b11, signed_bundle(&dir, 11, &blocks_us2, &[], &key)).expect("bundle");
    let b10 = dir.join("b10.gwb");
    std::fs::write(&b10, signed_bundle(&dir, 10, POLICY, &[], &key)).expect("bundle");
    let state = dir.join("state");
    let args = |b: &Path| {
        vec![
            "--bundle".to_owned(),
            b.to_str().expect("utf-8").to_owned(),
            "--pubkey".to_owned(),
            pubkey.to_str().expect("utf-8").to_owned(),
            "--state-dir".to_owned(),
            state.to_str().expect("utf-8").to_owned(),
        ]
    };
    let app = net.app.clone();
    let a11 = args(&b11);
    net.start_geowall(&world, &a11.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        in_ns(&app, || udp_exchange_within(
            sa(addr::US2, 7000),
            b"x",
            Duration::from_millis(700)
        ))
        .is_err()
    );
    net.stop_geowall();
    // The events carry their time; a restart appends to them.
    let first = net.events();
    assert!(!first.is_empty());
    for e in &first {
        assert!(
            e["time"]
                .as_str()
                .is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
            "{e}"
        );
    }
    let a10 = args(&b10);
    net.start_geowall(&world, &a10.iter().map(String::as_str).collect::<Vec<_>>());
    let before = net.count(addr::US2, 17, 7000);
    assert!(
        in_ns(&app, || udp_exchange_within(
            sa(addr::US2, 7000),
            b"y",
            Duration::from_millis(700)
        ))
        .is_err(),
        "bundle 11's rules stay in force"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        net.count(addr::US2, 17, 7000),
        before,
        "nothing reached US2"
    );
    // It said why, loudly.
    let pid = net.geowall_pid().expect("running");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let (_, err) = net.wait_geowall(Duration::from_secs(10)).expect("stopped");
    assert!(
        err.contains("WARNING") && err.contains("rollback") && err.contains("sequence 11"),
        "{err}"
    );
    let all = net.events();
    assert!(all.len() > first.len(), "the first run's events are kept");
    assert_eq!(all[..first.len()], first[..]);
}

/// A bundle that expires while geowall runs: its rules stay in force (the
/// address they block still gets 0 packets), and `status` says the rules
/// are stale, in JSON and as a warning in the text.
#[test]
fn a_bundle_that_expires_while_running_stays_in_force_and_status_says_stale() {
    let test = "a_bundle_that_expires_while_running_stays_in_force_and_status_says_stale";
    if !support::root_or_skip(test) {
        return;
    }
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US2, 7000), echo);
    net.udp_server(sa(addr::US, 7000), echo);
    let dir = net.dir.path().to_owned();
    let key = bundle::SigningKey::from_bytes(&[9; 32]);
    let pubkey = trusted_key(&dir, &key);
    let blocks_us2 = policy_blocking_us2();
    let b = dir.join("short.gwb");
    std::fs::write(&b, signed_bundle_for(&dir, 3, &blocks_us2, &[], &key, 4)).expect("bundle");
    let state = dir.join("state");
    net.start_geowall(
        &world,
        &[
            "--bundle",
            b.to_str().expect("utf-8"),
            "--pubkey",
            pubkey.to_str().expect("utf-8"),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
    );
    let fresh = status(&net);
    assert_eq!(fresh["rules_stale"], false, "{fresh}");
    assert!(fresh["rules_expires"].as_u64().is_some(), "{fresh}");
    // Past the bundle's expiry (4 s after it was signed).
    std::thread::sleep(Duration::from_secs(5));
    let stale = status(&net);
    assert_eq!(stale["rules_stale"], true, "{stale}");
    let text = support::geowall_cli(&net, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("WARNING") && text.contains("expired"),
        "{text}"
    );
    let app = net.app.clone();
    let (us2, us) = in_ns(&app, || {
        (
            udp_exchange_within(sa(addr::US2, 7000), b"x", Duration::from_millis(700)),
            udp_exchange_within(sa(addr::US, 7000), b"x", Duration::from_millis(700)),
        )
    });
    assert!(us2.is_err(), "the expired bundle's block still holds");
    assert_eq!(us.expect("US"), b"x");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(net.count(addr::US2, 17, 7000), 0, "nothing reached US2");
}

/// `geowall world update` against a running instance: a signed world
/// bundle that moves the US range into the PRC blocks flows there at once
/// (0 packets more at the server); a tampered, expired, foreign-signed or
/// older bundle is refused and the running data stays; after a restart
/// the accepted data is still in force.
#[test]
fn a_world_update_moves_a_server_and_bad_ones_are_refused() {
    if !support::root_or_skip("a_world_update_moves_a_server_and_bad_ones_are_refused") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US, 7000), echo);
    let dir = net.dir.path().to_owned();
    let key = bundle::SigningKey::from_bytes(&[9; 32]);
    let pubkey = trusted_key(&dir, &key);
    let state = dir.join("state");
    let args: Vec<String> = [
        "--policy",
        policy.to_str().expect("utf-8"),
        "--world-pubkey",
        pubkey.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
    ]
    .map(str::to_owned)
    .to_vec();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.start_geowall(&world, &args);
    let app = net.app.clone();
    let reaches = |net: &Net| {
        let before = net.count(addr::US, 17, 7000);
        let ok = in_ns(&app, || {
            udp_exchange_within(sa(addr::US, 7000), b"w", Duration::from_millis(700)).is_ok()
        });
        std::thread::sleep(Duration::from_millis(100));
        (ok, net.count(addr::US, 17, 7000) - before)
    };
    assert_eq!(reaches(&net), (true, 1), "the US server before");
    // The same world with the US range in the PRC.
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv"),
    )
    .expect("fixture");
    let moved = fixture.replace(
        "198.51.100.0/24,US,US,64502,Test US Carrier,US",
        "198.51.100.0/24,CN,CN,64500,Test PRC Telecom,CN",
    );
    assert_ne!(moved, fixture);
    let csv = dir.join("moved.csv");
    std::fs::write(&csv, moved).expect("csv");
    let mut b = geowall::intel::world::WorldBuilder::new();
    b.add_fixture_csv(&csv, &mut |_| {}).expect("reads");
    let db = b.build(&mut |_| {}).expect("builds").0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let write = |name: &str, seq: u64, expires: u64, k: &bundle::SigningKey| {
        let p = dir.join(name);
        let framed = bundle::build_world(&db, seq, now - 10, expires).expect("build");
        std::fs::write(&p, bundle::sign(&framed, k).expect("sign")).expect("write");
        p
    };
    let update = |net: &Net, p: &Path| {
        let o = support::geowall_cli(
            net,
            &["world", "update", "--bundle", p.to_str().expect("utf-8")],
        );
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let tampered = write("tampered.gwb", 5, now + 3_600, &key);
    let mut t = std::fs::read(&tampered).expect("read");
    let mid = t.len() / 2;
    t[mid] ^= 1;
    std::fs::write(&tampered, t).expect("write");
    for (p, why) in [
        (tampered, "altered"),
        (write("expired.gwb", 5, now - 1, &key), "expired"),
        (
            write(
                "foreign.gwb",
                5,
                now + 3_600,
                &bundle::SigningKey::from_bytes(&[3; 32]),
            ),
            "unknown key",
        ),
    ] {
        let (code, err) = update(&net, &p);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(why) && err.contains("running data stays"),
            "{err}"
        );
        assert_eq!(reaches(&net), (true, 1), "still the old data after {why}");
    }
    let (code, err) = update(&net, &write("w5.gwb", 5, now + 3_600, &key));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(reaches(&net), (false, 0), "the moved server gets nothing");
    let (code, err) = update(&net, &write("w4.gwb", 4, now + 3_600, &key));
    assert!(code == Some(1) && err.contains("rollback"), "{err}");
    // A restart keeps the accepted data.
    net.stop_geowall();
    net.start_geowall(&world, &args);
    assert_eq!(reaches(&net), (false, 0), "still moved after a restart");
    let (code, err) = update(&net, &write("w5-again.gwb", 5, now + 3_600, &key));
    assert!(code == Some(1) && err.contains("rollback"), "{err}");
    net.stop_geowall();
}
