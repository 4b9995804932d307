//! A flow's life end to end, in network namespaces (root only; skips
//! otherwise): first bytes that come late, or a hello padded past the
//! first read, are still judged, a reload cuts the open flows the new rules
//! block, a name learned from DNS outlives its TTL, a name an allow rule
//! matches carries no other through, a block the address settles is
//! refused at the SYN, and thousands of connections held at once are all
//! served. Every block is checked at the server: what it received, not
//! only what the app saw.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::{Net, addr, echo, in_ns, sa, udp_exchange};

/// An Agora media edge's name (the vendor layer says CN wherever it is).
const AGORA_EDGE: &str = "104-166-161-75.edge.agora.io";
/// The test's DNS server (US in the test world).
const UPSTREAM: &str = "198.51.100.53";
/// Where the app thinks its resolver is (geowall answers every query).
const APP_RESOLVER: &str = "192.0.2.53:53";
/// A third US address, for a flow no other flow's name touches.
const US3: &str = "198.51.100.30";
/// A fourth.
const US4: &str = "198.51.100.40";

/// Runs `body` on a thread of its own and fails the test if it takes
/// longer than `limit` (its panics are the test's).
fn bounded(test: &str, limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    let t = Instant::now();
    match rx.recv_timeout(limit) {
        Ok(()) => {
            let _ = h.join();
            eprintln!("{test}: done in {:.1} s", t.elapsed().as_secs_f64());
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{test}: still running after {limit:?}")
        }
    }
}

/// What a test server received.
#[derive(Clone, Default)]
struct Tally {
    /// Connections accepted (TCP) or datagrams received (UDP).
    accepted: Arc<AtomicUsize>,
    /// Payload bytes received.
    bytes: Arc<AtomicU64>,
    /// TCP connections open now.
    live: Arc<AtomicUsize>,
}

impl Tally {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// A TCP server in the internet namespace on `at` that counts what it
/// accepts and receives and echoes every read at once, keeping each
/// connection open until the client closes it (or the network is
/// dropped). One small thread per connection.
fn counting_tcp_server(net: &Net, at: SocketAddr) -> Tally {
    let tally = Tally::default();
    let l = in_ns(&net.net, || {
        let domain = if at.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
        s.set_reuse_address(true).expect("reuse");
        s.bind(&at.into()).expect("bind tcp server");
        // Thousands of connections may arrive at once.
        s.listen(4096).expect("listen");
        std::net::TcpListener::from(s)
    });
    l.set_nonblocking(true).expect("nonblocking");
    let (stop, t) = (net.stopping(), tally.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            t.accepted.fetch_add(1, Ordering::SeqCst);
            t.live.fetch_add(1, Ordering::SeqCst);
            let (stop, t) = (stop.clone(), t.clone());
            let spawned = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    serve_connection(c, &stop, &t);
                    t.live.fetch_sub(1, Ordering::SeqCst);
                });
            assert!(spawned.is_ok(), "a server thread");
        }
    });
    tally
}

fn serve_connection(mut c: TcpStream, stop: &AtomicBool, t: &Tally) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                t.bytes.fetch_add(n as u64, Ordering::SeqCst);
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

/// A UDP server in the internet namespace on `at` that counts the
/// datagrams and bytes it receives and answers nothing.
fn counting_udp_server(net: &Net, at: SocketAddr) -> Tally {
    let tally = Tally::default();
    let s = in_ns(&net.net, || UdpSocket::bind(at).expect("bind udp server"));
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let (stop, t) = (net.stopping(), tally.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                t.accepted.fetch_add(1, Ordering::SeqCst);
                t.bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    });
    tally
}

/// Waits up to `limit` for `done`.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
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

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// An RTP packet.
fn rtp(seq: u16) -> Vec<u8> {
    geowall::wire::rtc::rtp_packet(seq)
}

/// Connects from the app namespace to `to`, waits `delay` (the sniffing
/// timer opens the flow meanwhile when it is longer than 300 ms), sends
/// `hello` and reads what comes back: the echoed hello, or the error.
fn send_hello(
    app: &str,
    to: SocketAddr,
    delay: Duration,
    hello: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    in_ns(app, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        std::thread::sleep(delay);
        s.write_all(&hello)?;
        let mut back = vec![0u8; hello.len()];
        s.read_exact(&mut back)?;
        Ok(back)
    })
}

/// Under `strict`, a ClientHello naming an Agora edge sent 0.5 s and 2 s
/// after the connect (the 300 ms sniffing timer has opened the flow to the
/// server by then), or at once but padded to 40 KiB (past the 16 KiB first
/// read, in three records), is still held and judged: the server gets none
/// of it, the app gets a reset. The same with an ordinary name arrives
/// whole.
#[test]
fn a_late_client_hello_naming_a_blocked_vendor_never_reaches_the_server() {
    let test = "a_late_client_hello_naming_a_blocked_vendor_never_reaches_the_server";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        net.add_server_address(US3);
        net.add_server_address(US4);
        let world = support::test_world(net.dir.path());
        // One address each: a name seen for an address is remembered for
        // its later flows, which would then be refused at the SYN.
        let late = support::client_hello(AGORA_EDGE);
        let padded = geowall::wire::tls::client_hello_records(AGORA_EDGE, 40_000);
        let cases = [
            ("A", addr::US, Duration::from_millis(500), &late),
            ("B", addr::US2, Duration::from_secs(2), &late),
            ("C", US4, Duration::ZERO, &padded),
        ];
        let servers: Vec<Tally> = cases
            .iter()
            .map(|(_, ip, _, _)| counting_tcp_server(&net, sa(ip, 443)))
            .collect();
        let control = counting_tcp_server(&net, sa(US3, 443));
        net.start_geowall(&world, &["--preset", "strict"]);
        let app = net.app.clone();
        for ((case, ip, delay, hello), server) in cases.iter().zip(&servers) {
            let r = send_hello(&app, sa(ip, 443), *delay, hello.to_vec());
            std::thread::sleep(Duration::from_millis(300));
            eprintln!(
                "case {case} ({delay:?}, {} bytes): the app got {:?}; the server accepted {}, received {} bytes",
                hello.len(),
                r.as_ref().map(Vec::len),
                server.accepted(),
                server.bytes()
            );
            assert_eq!(server.bytes(), 0, "case {case}: bytes reached the server");
            // The late path indeed: the timer had opened the connection.
            let opened = usize::from(!delay.is_zero());
            assert_eq!(
                server.accepted(),
                opened,
                "case {case}: opened before the hello"
            );
            match &r {
                Err(e) => assert!(is_reset(e), "case {case}: not a reset: {e}"),
                Ok(b) => panic!("case {case}: the hello came back ({} bytes)", b.len()),
            }
        }
        // Control: an ordinary name, as late, arrives whole.
        let hello = support::client_hello("www.example.org");
        let got = send_hello(
            &app,
            sa(US3, 443),
            Duration::from_millis(500),
            hello.clone(),
        )
        .expect("the control hello is answered");
        assert_eq!(got, hello);
        assert_eq!(control.bytes(), hello.len() as u64);
        let events = net.events();
        for (case, ip, delay, _) in cases {
            let server = format!("{ip}:443");
            let cut = events
                .iter()
                .find(|e| e["server"] == server.as_str() && e["action"] == "block")
                .unwrap_or_else(|| panic!("case {case}: no block event: {events:#?}"));
            let kind = if delay.is_zero() { "blocked" } else { "cut" };
            assert_eq!(cut["kind"], kind, "case {case}: {cut}");
            assert_eq!(cut["server_name"], AGORA_EDGE, "case {case}: {cut}");
        }
        net.stop_geowall();
    });
}

/// Under `strict`, a ClientHello naming an Agora edge that stops midway
/// for a second (two writes a second apart, past the 300 ms sniffing
/// time): cut before its name, the server gets the bytes before the name
/// and nothing more; cut after its name, the server gets nothing (the
/// flow is judged by the name those bytes hold). Either way the app gets
/// a reset and the event names the vendor. An ordinary name sent the same
/// way arrives whole.
#[test]
fn a_client_hello_that_stops_midway_never_gives_the_server_its_name() {
    let test = "a_client_hello_that_stops_midway_never_gives_the_server_its_name";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        net.add_server_address(US3);
        let world = support::test_world(net.dir.path());
        let hello = support::client_hello(AGORA_EDGE);
        let name_ends = hello
            .windows(AGORA_EDGE.len())
            .position(|w| w == AGORA_EDGE.as_bytes())
            .expect("the name is in the hello")
            + AGORA_EDGE.len();
        // (server, bytes before the pause, bytes the server may get)
        let cases = [(addr::US, 20, 20), (addr::US2, name_ends, 0)];
        let servers: Vec<Tally> = cases
            .iter()
            .map(|(ip, _, _)| counting_tcp_server(&net, sa(ip, 443)))
            .collect();
        let control = counting_tcp_server(&net, sa(US3, 443));
        net.start_geowall(&world, &["--preset", "strict"]);
        let app = net.app.clone();
        let in_two = |to: SocketAddr, hello: &[u8], first: usize| {
            in_ns(&app, || {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(&hello[..first])?;
                std::thread::sleep(Duration::from_secs(1));
                s.write_all(&hello[first..])?;
                let mut back = vec![0u8; hello.len()];
                s.read_exact(&mut back)?;
                Ok::<_, std::io::Error>(back)
            })
        };
        for ((ip, first, allowed), server) in cases.iter().zip(&servers) {
            let r = in_two(sa(ip, 443), &hello, *first);
            std::thread::sleep(Duration::from_millis(300));
            eprintln!(
                "{ip}: {first} bytes, a second, the rest: the app got {:?}; the server received {} bytes",
                r.as_ref().map(Vec::len),
                server.bytes()
            );
            assert_eq!(server.bytes(), *allowed as u64, "{ip}: bytes at the server");
            match &r {
                Err(e) => assert!(is_reset(e), "{ip}: not a reset: {e}"),
                Ok(b) => panic!("{ip}: the hello came back ({} bytes)", b.len()),
            }
        }
        let ordinary = support::client_hello("www.example.org");
        let got = in_two(sa(US3, 443), &ordinary, 20).expect("the control hello is answered");
        assert_eq!(got, ordinary);
        assert_eq!(control.bytes(), ordinary.len() as u64);
        let events = net.events();
        for (ip, _, _) in cases {
            let server = format!("{ip}:443");
            let stop = events
                .iter()
                .find(|e| e["server"] == server.as_str() && e["action"] == "block")
                .unwrap_or_else(|| panic!("{ip}: no block event: {events:#?}"));
            assert_eq!(stop["server_name"], AGORA_EDGE, "{ip}: {stop}");
        }
        net.stop_geowall();
    });
}

/// The first policy: allows everything (its rule about media makes TCP
/// connections be read before they are judged, as under the presets).
const ALLOW_US: &str = r#"
name = "before"
default = "allow"

[[rule]]
name = "no media to PRC"
action = "block"
traffic = ["media"]
jurisdiction = { countries = ["CN", "HK", "MO"] }
"#;

/// A UDP flow and a TCP connection to a US address carry data every 50 ms;
/// `geowall reload` to rules that block the address cuts both: the server
/// receives nothing more while the app keeps sending, and the app's
/// connection is reset.
#[test]
fn a_reload_that_blocks_an_address_cuts_open_udp_and_tcp_flows() {
    let test = "a_reload_that_blocks_an_address_cuts_open_udp_and_tcp_flows";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        let (policy, world) = net.policy_and_world(ALLOW_US);
        let tcp = counting_tcp_server(&net, sa(addr::US, 7000));
        let udp = counting_udp_server(&net, sa(addr::US, 7000));
        net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
        let app = net.app.clone();
        let stop = Arc::new(AtomicBool::new(false));
        // The app: one datagram every 50 ms on one socket (one flow).
        let udp_app = {
            let (app, stop) = (app.clone(), stop.clone());
            std::thread::spawn(move || {
                support::enter(&app);
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                let mut sent = 0u32;
                for i in 0..400u32 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // A reject answers with ICMP unreachable, which a
                    // later send reports; keep sending anyway.
                    if s.send_to(format!("datagram {i}").as_bytes(), sa(addr::US, 7000))
                        .is_ok()
                    {
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                sent
            })
        };
        // ... and 100 bytes every 50 ms on one TCP connection, reading the
        // echo; the first error ends it.
        let tcp_app = {
            let (app, stop) = (app.clone(), stop.clone());
            std::thread::spawn(move || -> (u32, Option<std::io::Error>) {
                support::enter(&app);
                let mut s = TcpStream::connect_timeout(&sa(addr::US, 7000), Duration::from_secs(3))
                    .expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let mut rounds = 0;
                let mut back = [0u8; 100];
                for _ in 0..400 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Err(e) = s
                        .write_all(&[b'x'; 100])
                        .and_then(|()| s.read_exact(&mut back))
                    {
                        return (rounds, Some(e));
                    }
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                (rounds, None)
            })
        };
        // Both reach the server.
        std::thread::sleep(Duration::from_secs(1));
        let (t0, u0) = (tcp.bytes(), udp.accepted());
        std::thread::sleep(Duration::from_millis(500));
        let (t1, u1) = (tcp.bytes(), udp.accepted());
        eprintln!("before the reload: TCP bytes {t0} -> {t1}, UDP datagrams {u0} -> {u1}");
        assert!(t1 > t0 && t0 > 0, "TCP reaches the server: {t0} -> {t1}");
        assert!(u1 > u0 && u0 > 0, "UDP reaches the server: {u0} -> {u1}");
        // New rules: the address is blocked.
        let blocks = format!(
            "{}\n[[rule]]\nname = \"no US server\"\naction = \"block\"\nblock = \"reject\"\ncidr = [\"{}/32\"]\n",
            ALLOW_US.replace("\"before\"", "\"after\""),
            addr::US
        );
        std::fs::write(&policy, blocks).expect("write");
        let reloaded = Instant::now();
        support::reload(&net);
        // A short settle, then nothing more for a second while the app
        // keeps sending.
        std::thread::sleep(Duration::from_millis(500));
        let (t2, u2) = (tcp.bytes(), udp.accepted());
        std::thread::sleep(Duration::from_millis(1_200));
        let (t3, u3) = (tcp.bytes(), udp.accepted());
        stop.store(true, Ordering::SeqCst);
        let sent = udp_app.join().expect("udp app");
        let (rounds, err) = tcp_app.join().expect("tcp app");
        eprintln!(
            "after the reload ({:.1} s ago): TCP bytes {t2} -> {t3}, UDP datagrams {u2} -> {u3}; the app sent {sent} datagrams, {rounds} TCP rounds, then {err:?}",
            reloaded.elapsed().as_secs_f64()
        );
        assert_eq!(t3, t2, "TCP bytes reached the server after the cut");
        assert_eq!(u3, u2, "UDP datagrams reached the server after the cut");
        let err = err.expect("the app's connection ended");
        assert!(is_reset(&err), "the app's connection was reset: {err}");
        let events = net.events();
        for proto in ["tcp", "udp"] {
            let cut = events
                .iter()
                .find(|e| e["kind"] == "cut" && e["proto"] == proto)
                .unwrap_or_else(|| panic!("no {proto} cut event: {events:#?}"));
            assert_eq!(cut["rule"], "no US server", "{cut}");
        }
        let v = status(&net);
        assert!(v["cut"].as_u64() >= Some(2), "{v}");
        net.stop_geowall();
    });
}

/// The test DNS server's zone: the Agora edge's name on a US address, with
/// a one-second TTL.
fn agora_zone(name: &str, t: RecordType) -> Vec<Record> {
    match (name, t) {
        (AGORA_EDGE, RecordType::A) => vec![Record::from_rdata(
            Name::from_ascii(format!("{AGORA_EDGE}.")).expect("name"),
            1,
            RData::A(A(addr::US.parse().expect("ip"))),
        )],
        _ => Vec::new(),
    }
}

const NO_AGORA_MEDIA: &str = r#"
name = "no agora media"
default = "allow"

[[rule]]
name = "no media to Agora"
action = "block"
traffic = ["media"]
vendor = ["agora"]
"#;

/// The app resolves an Agora edge's name (TTL 1 s) through geowall and
/// sends RTP to its address 5 s later: the name still ties the address to
/// Agora, and no packet reaches the server. RTP to another US address,
/// which no name ties to anyone, arrives.
#[test]
fn a_vendor_name_from_a_one_second_ttl_answer_still_blocks_media_5s_later() {
    let test = "a_vendor_name_from_a_one_second_ttl_answer_still_blocks_media_5s_later";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        let (policy, world) = net.policy_and_world(NO_AGORA_MEDIA);
        net.add_server_address(UPSTREAM);
        let served = net.dns_server(sa(UPSTREAM, 53), agora_zone);
        let agora = counting_udp_server(&net, sa(addr::US, 5004));
        let other = counting_udp_server(&net, sa(addr::US2, 5004));
        support::start_with_resolver(&mut net, &world, &policy, UPSTREAM);
        let app = net.app.clone();
        let answer = in_ns(&app, || {
            support::dns_query(
                APP_RESOLVER.parse().expect("address"),
                &format!("{AGORA_EDGE}."),
                RecordType::A,
                false,
            )
        })
        .expect("the name resolves through geowall");
        let ips: Vec<IpAddr> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(A(ip)) => Some(IpAddr::V4(*ip)),
                _ => None,
            })
            .collect();
        assert_eq!(ips, vec![addr::US.parse::<IpAddr>().expect("ip")]);
        assert!(served.load(Ordering::SeqCst) >= 1, "the upstream was asked");
        std::thread::sleep(Duration::from_secs(5));
        in_ns(&app, || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for seq in 1..=10u16 {
                let _ = s.send_to(&rtp(seq), sa(addr::US, 5004));
                let _ = s.send_to(&rtp(seq), sa(addr::US2, 5004));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert!(
            wait_for(Duration::from_secs(2), || other.accepted() == 10),
            "the control's RTP arrives: {} of 10",
            other.accepted()
        );
        std::thread::sleep(Duration::from_millis(200));
        eprintln!(
            "RTP at the Agora edge's address: {} datagrams ({} packets on the wire); at the other: {}",
            agora.accepted(),
            net.count(addr::US, 17, 5004),
            other.accepted()
        );
        assert_eq!(agora.accepted(), 0, "RTP reached the Agora edge");
        assert_eq!(net.count(addr::US, 17, 5004), 0, "packets on the wire");
        let events = net.events();
        let blocked = events
            .iter()
            .find(|e| e["kind"] == "blocked" && e["server"] == format!("{}:5004", addr::US))
            .unwrap_or_else(|| panic!("no blocked event: {events:#?}"));
        assert_eq!(blocked["rule"], "no media to Agora", "{blocked}");
        assert_eq!(blocked["names"][0], AGORA_EDGE, "{blocked}");
        net.stop_geowall();
    });
}

/// An allowlist that names a site, then a vendor block.
const ALLOW_SITE: &str = r#"
name = "our site, no PRC vendors"
default = "allow"

[[rule]]
name = "our site"
action = "allow"
domain = ["=www.example.com"]

[[rule]]
name = "no PRC vendors"
action = "block"
block = "reject"
jurisdiction = { countries = ["CN"], layers = ["vendor"] }
"#;

/// The test DNS server's zone: the allowed site on a US address (a front
/// it may share with others).
fn site_zone(name: &str, t: RecordType) -> Vec<Record> {
    match (name, t) {
        ("www.example.com", RecordType::A) => vec![Record::from_rdata(
            Name::from_ascii("www.example.com.").expect("name"),
            300,
            RData::A(A(addr::US.parse().expect("ip"))),
        )],
        _ => Vec::new(),
    }
}

/// A rule that allows a name does not carry another through: the app
/// resolves the allowed site through geowall, then connects to its
/// address with a ClientHello naming an Agora edge (the server gets none
/// of it), and on a kept-alive connection to the site sends a second
/// request naming the edge (the server reads only the first). The site's
/// own hello and request arrive.
#[test]
fn a_name_an_allow_rule_matches_carries_no_other_name_through() {
    let test = "a_name_an_allow_rule_matches_carries_no_other_name_through";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        let (policy, world) = net.policy_and_world(ALLOW_SITE);
        net.add_server_address(UPSTREAM);
        net.dns_server(sa(UPSTREAM, 53), site_zone);
        let tls = counting_tcp_server(&net, sa(addr::US, 443));
        let http = recording_http_server(&net, sa(addr::US, 80));
        support::start_with_resolver(&mut net, &world, &policy, UPSTREAM);
        let app = net.app.clone();
        in_ns(&app, || {
            support::dns_query(
                APP_RESOLVER.parse().expect("address"),
                "www.example.com.",
                RecordType::A,
                false,
            )
        })
        .expect("the site resolves through geowall");
        let site = support::client_hello("www.example.com");
        let back = send_hello(&app, sa(addr::US, 443), Duration::ZERO, site.clone());
        assert_eq!(back.expect("the site's hello is served"), site);
        let before = tls.bytes();
        let edge = send_hello(
            &app,
            sa(addr::US, 443),
            Duration::ZERO,
            support::client_hello(AGORA_EDGE),
        );
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "hello naming the edge: {edge:?}; bytes at the server after it: {}",
            tls.bytes() - before
        );
        assert!(edge.is_err(), "the edge's hello was answered");
        assert_eq!(
            tls.bytes(),
            before,
            "bytes of the edge's hello reached the server"
        );
        let out = curl(
            &app,
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} ",
                &format!("http://{}/first", addr::US),
                "-H",
                "Host: www.example.com",
                "--next",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} ",
                &format!("http://{}/second", addr::US),
                "-H",
                &format!("Host: {AGORA_EDGE}"),
            ],
        );
        std::thread::sleep(Duration::from_millis(300));
        let seen: Vec<String> = http
            .lock()
            .expect("requests")
            .iter()
            .map(|r| format!("{} {}", r.target, r.host))
            .collect();
        eprintln!("curl: {out}; the server read {seen:?}");
        assert_eq!(seen, ["/first www.example.com"], "what the server read");
        net.stop_geowall();
    });
}

/// Under `strict`, a connection to a CN address is refused at the SYN:
/// `connect()` fails at once and the server never sees a connection; a
/// connection to a US address is served.
#[test]
fn strict_refuses_a_connect_to_a_cn_address_at_once() {
    let test = "strict_refuses_a_connect_to_a_cn_address_at_once";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(30), || {
        let mut net = Net::new();
        let world = support::test_world(net.dir.path());
        let cn = counting_tcp_server(&net, sa(addr::CN, 443));
        let us = counting_tcp_server(&net, sa(addr::US, 443));
        net.start_geowall(&world, &["--preset", "strict"]);
        let app = net.app.clone();
        let (took, r) = in_ns(&app, || {
            let t = Instant::now();
            let r = TcpStream::connect_timeout(&sa(addr::CN, 443), Duration::from_secs(3));
            (t.elapsed(), r)
        });
        // Were it relayed, the server would have it by now (the
        // sniffing timer opens a silent connection after 300 ms).
        std::thread::sleep(Duration::from_millis(600));
        eprintln!(
            "connect to {}:443: {r:?} after {took:?}; the server accepted {}, {} packets reached it",
            addr::CN,
            cn.accepted(),
            net.count(addr::CN, 6, 443)
        );
        assert_eq!(cn.accepted(), 0, "the CN server accepted a connection");
        assert_eq!(net.count(addr::CN, 6, 443), 0, "packets to the CN server");
        match r {
            Err(e) => assert!(is_reset(&e), "refused or reset: {e}"),
            Ok(_) => panic!("the connect to a CN address succeeded"),
        }
        assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
        let hello = support::client_hello("www.example.org");
        let got = in_ns(&app, || {
            let mut s = TcpStream::connect_timeout(&sa(addr::US, 443), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(&hello)?;
            let mut back = vec![0u8; hello.len()];
            s.read_exact(&mut back)?;
            Ok::<_, std::io::Error>(back)
        });
        assert_eq!(got.expect("the US connection is served"), hello);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(cn.accepted(), 0, "the CN server accepted a connection");
        assert_eq!(net.count(addr::CN, 6, 443), 0, "packets to the CN server");
        assert_eq!(us.accepted(), 1);
        let events = net.events();
        let e = events
            .iter()
            .find(|e| e["kind"] == "blocked" && e["server"] == format!("{}:443", addr::CN))
            .unwrap_or_else(|| panic!("no blocked event: {events:#?}"));
        assert_eq!(e["rule"], "nothing to PRC jurisdiction; unknown counts");
        net.stop_geowall();
    });
}

/// Connections held open at once.
const CONNECTIONS: usize = 2_000;
/// App threads opening them.
const OPENERS: usize = 8;

/// Under `default`, the app opens 2,000 connections to a keep-alive server
/// (8 threads, 250 each), each sending a request and reading the reply,
/// all held open; then each is used once more. None is refused or reset,
/// and the server holds all 2,000 at the end.
#[test]
fn two_thousand_concurrent_connections_are_all_served() {
    let test = "two_thousand_concurrent_connections_are_all_served";
    if !support::root_or_skip(test) {
        return;
    }
    // This process holds both ends (the app's and the server's), geowall
    // one upstream socket a connection; it inherits this limit and lowers
    // its flow bound (65,536 by default) to the hard limit minus 256.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let need = 2 * CONNECTIONS as u64 + 1_000;
    if hard < need {
        eprintln!("{test}: skipped (the open-files limit is {hard}, {need} are needed)");
        return;
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        let world = support::test_world(net.dir.path());
        let server = counting_tcp_server(&net, sa(addr::US, 8080));
        net.start_geowall(&world, &["--preset", "default"]);
        let app = net.app.clone();
        let t = Instant::now();
        let openers: Vec<_> = (0..OPENERS)
            .map(|k| {
                let app = app.clone();
                std::thread::spawn(move || {
                    support::enter(&app);
                    let mut held = Vec::new();
                    let mut failed = Vec::new();
                    for i in (k..CONNECTIONS).step_by(OPENERS) {
                        let req = format!("GET /{i:04} HTTP/1.1\r\nHost: www.example.org\r\n\r\n");
                        let r =
                            TcpStream::connect_timeout(&sa(addr::US, 8080), Duration::from_secs(5))
                                .and_then(|mut s| {
                                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                                    s.write_all(req.as_bytes())?;
                                    let mut back = vec![0u8; req.len()];
                                    s.read_exact(&mut back)?;
                                    if back != req.as_bytes() {
                                        return Err(std::io::Error::other("a wrong reply"));
                                    }
                                    Ok(s)
                                });
                        match r {
                            Ok(s) => held.push((i, s)),
                            Err(e) => failed.push((i, e)),
                        }
                    }
                    (held, failed)
                })
            })
            .collect();
        let mut held = Vec::new();
        let mut failed = Vec::new();
        for h in openers {
            let (ok, bad) = h.join().expect("an opener");
            held.extend(ok);
            failed.extend(bad);
        }
        let opened_in = t.elapsed();
        let served_live = server.live();
        eprintln!(
            "{} connections served and held in {:.1} s, {} failed{}; the server holds {served_live}",
            held.len(),
            opened_in.as_secs_f64(),
            failed.len(),
            failed
                .first()
                .map(|(i, e)| format!(" (first: #{i}: {e})"))
                .unwrap_or_default()
        );
        assert!(failed.is_empty(), "{} connections failed", failed.len());
        assert_eq!(held.len(), CONNECTIONS);
        // Held idle, every connection gives its buffers' pages back (both
        // empty, the app quiet for 50 ms); waited for, 10 s at most.
        let mut released = 0;
        for _ in 0..100 {
            released = status(&net)["tcp_released"].as_u64().unwrap_or(0);
            if released >= CONNECTIONS as u64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            released >= CONNECTIONS as u64,
            "idle connections whose buffers were given back: {released} of {CONNECTIONS}"
        );
        // All held at once: each answers once more (through buffers given
        // back and faulted in again).
        let mut second = 0;
        for (i, s) in &mut held {
            let msg = format!("again {i:04}\n");
            let mut back = vec![0u8; msg.len()];
            match s
                .write_all(msg.as_bytes())
                .and_then(|()| s.read_exact(&mut back))
            {
                Ok(()) if back == msg.as_bytes() => second += 1,
                Ok(()) => panic!("#{i}: a wrong second reply"),
                Err(e) => panic!("#{i}: the second round failed: {e}"),
            }
        }
        assert_eq!(second, CONNECTIONS);
        assert_eq!(server.accepted(), CONNECTIONS, "connections at the server");
        assert_eq!(server.live(), CONNECTIONS, "all open at the server at once");
        let v = status(&net);
        eprintln!(
            "geowall: {} flows open, {} opened, {} refused, {} cut, {} blocked; all in {:.1} s",
            v["flows_open"],
            v["opened"],
            v["refused"],
            v["cut"],
            v["blocked"],
            t.elapsed().as_secs_f64()
        );
        assert_eq!(v["refused"], 0, "{v}");
        assert_eq!(v["cut"], 0, "{v}");
        assert_eq!(v["blocked"], 0, "{v}");
        assert!(v["flows_open"].as_u64() >= Some(CONNECTIONS as u64), "{v}");
        drop(held);
        net.stop_geowall();
    });
}

/// A UDP server in the internet namespace on `at` that counts the media
/// datagrams it receives (172-byte RTP as [`rtp`] makes them, and the
/// 160-byte opaque voice frames of [`opaque_voice`]) and everything else
/// apart, by reading them itself.
fn rtp_counting_server(net: &Net, at: SocketAddr) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (rtp_seen, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let s = in_ns(&net.net, || UdpSocket::bind(at).expect("bind udp server"));
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let (stop, r, o) = (net.stopping(), rtp_seen.clone(), other.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let media = (n == 172 && buf[0] & 0xC0 == 0x80) || n == 160;
                let c = if media { &r } else { &o };
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (rtp_seen, other)
}

/// An encrypted voice frame no sniffer names (only its real-time shape
/// tells): 160 bytes, nothing like RTP, STUN or QUIC.
fn opaque_voice(seq: u16) -> Vec<u8> {
    (0..160u16)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seq.wrapping_mul(17)) as u8) | 0x01)
        .map(|b| b & 0x3F)
        .collect()
}

/// Media to a CN relay cannot be disguised by its start: under
/// `clubhouse`, voice that only its real-time shape gives away and that
/// begins with one odd 1,400-byte datagram, and RTP that begins with a
/// real QUIC Initial (from a capture), reach the relay with 0 media
/// packets; the same voice to a US relay arrives whole.
#[test]
fn disguised_media_to_a_cn_relay_never_reaches_it() {
    let test = "disguised_media_to_a_cn_relay_never_reaches_it";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        let (_, world) = net.policy_and_world("name='x'\ndefault='allow'\n");
        let (cn_rtp, cn_other) = rtp_counting_server(&net, sa(addr::CN, 5004));
        let (us_rtp, _) = rtp_counting_server(&net, sa(addr::US, 5004));
        net.start_geowall(&world, &["--preset", "clubhouse"]);
        let initial = quic_initial();
        let app = net.app.clone();
        let send = |to: &str, first: &[u8], frame: fn(u16) -> Vec<u8>| {
            in_ns(&app, || {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                let _ = s.send_to(first, sa(to, 5004));
                for seq in 0..25u16 {
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = s.send_to(&frame(seq), sa(to, 5004));
                }
            });
        };
        send(addr::CN, &[0x17; 1400], opaque_voice);
        send(addr::CN, &initial, rtp);
        send(addr::US, &[0x17; 1400], opaque_voice);
        // Longer than any hold.
        std::thread::sleep(Duration::from_millis(1_500));
        eprintln!(
            "CN relay: {} media, {} other datagrams; US relay: {} media",
            cn_rtp.load(Ordering::SeqCst),
            cn_other.load(Ordering::SeqCst),
            us_rtp.load(Ordering::SeqCst)
        );
        assert_eq!(
            cn_rtp.load(Ordering::SeqCst),
            0,
            "media reached the CN relay"
        );
        assert_eq!(
            us_rtp.load(Ordering::SeqCst),
            25,
            "the US relay gets it all"
        );
    });
}

/// The first QUIC Initial a client sends in tests/fixtures/ndpi/quic.pcap.
fn quic_initial() -> Vec<u8> {
    use geowall::wire::capture::Capture;
    use geowall::wire::packet::{Transport, parse_ip, strip_link};
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi/quic.pcap"),
    )
    .expect("capture");
    Capture::new(&bytes)
        .expect("pcap")
        .filter_map(Result::ok)
        .find_map(|f| {
            let ip = parse_ip(strip_link(f.link, f.data).ok()?).ok()?;
            match ip.transport {
                Transport::Udp {
                    dport: 443,
                    payload,
                    ..
                } => Some(payload.to_vec()),
                _ => None,
            }
        })
        .expect("a QUIC Initial")
}

/// NAT64 in every form a network uses: under `strict`, a server reached
/// through the local-use prefix (`64:ff9b:1::/96`) or through the
/// network's own /48 prefix (`--nat64-prefix`) is judged by the IPv4
/// address it embeds: the one embedding a CN address gets 0 packets, the
/// one embedding a US address answers. (The test world has no NAT64
/// gateway: the servers listen on the NAT64 addresses themselves.)
#[test]
fn nat64_addresses_are_judged_by_the_ipv4_address_they_embed() {
    let test = "nat64_addresses_are_judged_by_the_ipv4_address_they_embed";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        let (_, world) = net.policy_and_world("name='x'\ndefault='allow'\n");
        // 203.0.113.10 (CN) and 198.51.100.10 (US), under 64:ff9b:1::/96
        // and, in the RFC 6052 /48 layout, under 2001:db8:64::/48.
        let cases = [
            ("64:ff9b:1::cb00:710a", true),
            ("64:ff9b:1::c633:640a", false),
            ("2001:db8:64:cb00:71:a00::", true),
            ("2001:db8:64:c633:64:a00::", false),
        ];
        for (a, _) in cases {
            net.add_server_address(a);
            net.udp_server(sa(a, 7000), echo);
        }
        net.start_geowall(
            &world,
            &["--preset", "strict", "--nat64-prefix", "2001:db8:64::/48"],
        );
        let app = net.app.clone();
        for (a, blocked) in cases {
            let r = in_ns(&app, || {
                (0..3)
                    .map(|_| udp_exchange(sa(a, 7000), b"nat64?"))
                    .find(Result::is_ok)
                    .unwrap_or_else(|| Err(std::io::Error::other("no answer in 3 tries")))
            });
            if blocked {
                assert!(r.is_err(), "{a}: answered");
            } else {
                assert_eq!(r.expect(a), b"nat64?", "{a}");
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for (a, blocked) in cases {
            let n = net.count(a, 17, 7000);
            if blocked {
                assert_eq!(n, 0, "packets reached {a}");
            } else {
                assert!(n > 0, "nothing reached {a}");
            }
        }
    });
}

/// One HTTP/1.x request as an HTTP server in the internet namespace read
/// it: the connection it came on (numbered from 1), its request target and
/// its `Host`.
#[derive(Debug, Clone)]
struct Request {
    conn: usize,
    target: String,
    host: String,
}

/// An HTTP/1.1 keep-alive server (or a forward proxy's first hop: it
/// answers absolute-form requests itself) on `at` that records every
/// request it reads, with its own reading of the heads, and answers each
/// with a 2-byte body. Requests carry no body here.
fn recording_http_server(net: &Net, at: SocketAddr) -> Arc<std::sync::Mutex<Vec<Request>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = in_ns(&net.net, || {
        std::net::TcpListener::bind(at).expect("bind http server")
    });
    l.set_nonblocking(true).expect("nonblocking");
    let (stop, s) = (net.stopping(), seen.clone());
    std::thread::spawn(move || {
        let mut conns = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            conns += 1;
            let (conn, stop, s) = (conns, stop.clone(), s.clone());
            std::thread::spawn(move || {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                while !stop.load(Ordering::SeqCst) {
                    match c.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            continue;
                        }
                        Err(_) => break,
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let mut lines = head.split("\r\n");
                        let target = lines
                            .next()
                            .and_then(|l| l.split(' ').nth(1))
                            .unwrap_or_default()
                            .to_owned();
                        let host = lines
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                            .map(|(_, v)| v.trim().to_owned())
                            .unwrap_or_default();
                        s.lock()
                            .expect("requests")
                            .push(Request { conn, target, host });
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if c.write_all(ok).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    seen
}

/// Runs curl in the app namespace with `args`; what it printed.
fn curl(app: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", app, "curl", "-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl (the CI installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Under `strict`, every request of a keep-alive HTTP/1.1 connection is
/// judged by its own host, with a real client: curl sends a request for an
/// ordinary host, then, on the same connection, one whose `Host` is an
/// Agora edge; and through a forward proxy, a request for an ordinary host,
/// then one for the edge. The servers read none naming the edge (curl's
/// retry on a fresh connection is blocked at its first bytes). The control:
/// two ordinary hosts on one connection both arrive, on that one
/// connection.
#[test]
fn every_request_of_a_keep_alive_connection_is_judged_by_its_own_host() {
    let test = "every_request_of_a_keep_alive_connection_is_judged_by_its_own_host";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        net.add_server_address(US3);
        net.add_server_address(US4);
        let world = support::test_world(net.dir.path());
        let direct = recording_http_server(&net, sa(US4, 80));
        let proxy = recording_http_server(&net, sa(US3, 3128));
        let control = recording_http_server(&net, sa(addr::US, 80));
        net.start_geowall(&world, &["--preset", "strict"]);
        let app = net.app.clone();
        let edge = format!("Host: {AGORA_EDGE}");
        let (us4, us) = (format!("http://{US4}/"), format!("http://{}/", addr::US));
        let args = |url: &str, host: &str| {
            vec![
                "-o".to_owned(),
                "/dev/null".to_owned(),
                "-w".to_owned(),
                "%{http_code} %{num_connects};".to_owned(),
                url.to_owned(),
                "-H".to_owned(),
                host.to_owned(),
            ]
        };
        let pair = |a: Vec<String>, b: Vec<String>| {
            let mut v = a;
            v.push("--next".to_owned());
            v.extend(b);
            v
        };
        let run = |v: Vec<String>| {
            let v: Vec<&str> = v.iter().map(String::as_str).collect();
            curl(&app, &v)
        };
        let got = run(pair(
            args(&us, "Host: www.example.com"),
            args(&us, "Host: cdn.example.net"),
        ));
        eprintln!("control: curl printed {got:?}");
        let got = run(pair(args(&us4, "Host: www.example.com"), args(&us4, &edge)));
        eprintln!("keep-alive: curl printed {got:?}");
        let proxied = format!("http://{AGORA_EDGE}/v");
        let px = format!("http://{US3}:3128");
        let got = curl(
            &app,
            &[
                "-x",
                &px,
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{num_connects};",
                "http://www.example.com/",
                &proxied,
            ],
        );
        eprintln!("proxy: curl printed {got:?}");
        std::thread::sleep(Duration::from_millis(300));
        let control = control.lock().expect("requests").clone();
        let direct = direct.lock().expect("requests").clone();
        let proxy = proxy.lock().expect("requests").clone();
        eprintln!("the servers read: control {control:?}, direct {direct:?}, proxy {proxy:?}");
        // The control shows the connection is kept alive: both on one.
        assert_eq!(control.len(), 2, "{control:?}");
        assert!(control.iter().all(|r| r.conn == 1), "{control:?}");
        // The first requests arrive; none naming the edge does.
        assert_eq!(direct.len(), 1, "{direct:?}");
        assert_eq!(direct[0].host, "www.example.com");
        assert_eq!(proxy.len(), 1, "{proxy:?}");
        assert_eq!(proxy[0].target, "http://www.example.com/");
        let events = net.events();
        for server in [format!("{US4}:80"), format!("{US3}:3128")] {
            let cut = events
                .iter()
                .find(|e| e["server"] == server.as_str() && e["kind"] == "cut")
                .unwrap_or_else(|| panic!("{server}: no cut event: {events:#?}"));
            assert_eq!(cut["hosts"][0], AGORA_EDGE, "{cut}");
        }
        net.stop_geowall();
    });
}

/// Under `strict`, every QUIC connection an app opens on one UDP socket to
/// one US server (as an endpoint that keeps one socket for all its
/// connections does) is judged by its own name: the first (an ordinary
/// name) and a second (another ordinary name, its hello in two Initials)
/// reach the server whole; a third naming an Agora edge does not, nor
/// anything the socket sends after it. The server reads the connection ID
/// of each datagram itself.
#[test]
fn every_quic_connection_on_one_socket_is_judged_by_its_own_name() {
    use geowall::wire::quic::client_initials;
    let test = "every_quic_connection_on_one_socket_is_judged_by_its_own_name";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        net.add_server_address(US4);
        let world = support::test_world(net.dir.path());
        let seen = dcid_server(&net, sa(US4, 443));
        net.start_geowall(&world, &["--preset", "strict"]);
        let (a, b, c) = ([0xA1; 8], [0xB2; 8], [0xC3; 8]);
        let first = client_initials(1, &a, "www.example.com", 1).expect("built");
        let second = client_initials(1, &b, "cdn.example.net", 2).expect("built");
        let third = client_initials(1, &c, AGORA_EDGE, 2).expect("built");
        let app = net.app.clone();
        in_ns(&app, || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for d in first.iter().chain(&second).chain(&third) {
                s.send_to(d, sa(US4, 443)).expect("send");
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s.send_to(b"\x41after", sa(US4, 443));
        });
        std::thread::sleep(Duration::from_millis(1_500));
        let seen = seen.lock().expect("seen").clone();
        let count = |id: &[u8]| seen.iter().filter(|d| d.as_slice() == id).count();
        eprintln!(
            "the server read {} datagrams: first connection {}, second {}, third (the edge) {}, other {}",
            seen.len(),
            count(&a),
            count(&b),
            count(&c),
            count(b"short")
        );
        assert_eq!(count(&a), 1, "the first connection");
        assert_eq!(count(&b), 2, "the second, whole");
        assert_eq!(count(&c), 0, "the edge's Initials reached the server");
        assert_eq!(count(b"short"), 0, "the flow is cut");
        let events = net.events();
        let cut = events
            .iter()
            .find(|e| e["kind"] == "cut" && e["server"] == format!("{US4}:443").as_str())
            .unwrap_or_else(|| panic!("no cut event: {events:#?}"));
        assert_eq!(cut["hosts"][1], AGORA_EDGE, "{cut}");
        net.stop_geowall();
    });
}

/// A UDP server on `at` in the internet namespace that records the
/// Destination Connection ID of every long-header datagram it receives
/// (`short` for any other datagram), with its own reading.
fn dcid_server(net: &Net, at: SocketAddr) -> Arc<std::sync::Mutex<Vec<Vec<u8>>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let s = in_ns(&net.net, || UdpSocket::bind(at).expect("bind"));
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let (stop, got) = (net.stopping(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let d = &buf[..n];
                let dcid = if d[0] & 0x80 != 0 && n > 6 {
                    d.get(6..6 + usize::from(d[5])).unwrap_or_default().to_vec()
                } else {
                    b"short".to_vec()
                };
                got.lock().expect("seen").push(dcid);
            }
        }
    });
    seen
}

/// Under `strict`, a flow's first QUIC connection whose ClientHello takes
/// two Initials (as a browser's with post-quantum key shares does), sent
/// back to back: naming an Agora edge in the second, the server reads
/// none of them; with an ordinary name, both. The server reads the
/// connection ID of each datagram itself.
#[test]
fn a_first_quic_hello_in_two_initials_naming_a_blocked_vendor_never_reaches_the_server() {
    use geowall::wire::quic::client_initials_padded;
    let test =
        "a_first_quic_hello_in_two_initials_naming_a_blocked_vendor_never_reaches_the_server";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        net.add_server_address(US3);
        net.add_server_address(US4);
        let world = support::test_world(net.dir.path());
        let edge_server = dcid_server(&net, sa(US4, 443));
        let control = dcid_server(&net, sa(US3, 443));
        net.start_geowall(&world, &["--preset", "strict"]);
        // 1,400 bytes of padding after the name: the name in the first
        // Initial, the hello's end in the second.
        let (a, b) = ([0xA1; 8], [0xB2; 8]);
        let edge = client_initials_padded(1, &a, AGORA_EDGE, 1_400, 2).expect("built");
        let ordinary = client_initials_padded(1, &b, "www.example.org", 1_400, 2).expect("built");
        let app = net.app.clone();
        in_ns(&app, || {
            for (to, initials) in [(US4, &edge), (US3, &ordinary)] {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                for d in initials {
                    s.send_to(d, sa(to, 443)).expect("send");
                }
            }
        });
        std::thread::sleep(Duration::from_millis(1_500));
        let (edge_got, control_got) = (
            edge_server.lock().expect("seen").clone(),
            control.lock().expect("seen").clone(),
        );
        eprintln!(
            "the edge's server read {} datagrams, the other server {}",
            edge_got.len(),
            control_got.len()
        );
        assert!(edge_got.is_empty(), "Initials reached the edge's server");
        assert_eq!(
            control_got,
            [b.to_vec(), b.to_vec()],
            "the ordinary hello, whole"
        );
        let events = net.events();
        let blocked = events
            .iter()
            .find(|e| e["kind"] == "blocked" && e["server"] == format!("{US4}:443").as_str())
            .unwrap_or_else(|| panic!("no block event: {events:#?}"));
        assert_eq!(blocked["server_name"], AGORA_EDGE, "{blocked}");
        net.stop_geowall();
    });
}

/// A SOCKS 5 proxy on `at` in the internet namespace that records, with
/// its own reading, where each client asks it to go (a name, or an
/// address as text), accepts, and then answers one HTTP request itself.
fn recording_socks_server(net: &Net, at: SocketAddr) -> Arc<std::sync::Mutex<Vec<String>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = in_ns(&net.net, || {
        std::net::TcpListener::bind(at).expect("bind socks")
    });
    l.set_nonblocking(true).expect("nonblocking");
    let (stop, s) = (net.stopping(), seen.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let s = s.clone();
            std::thread::spawn(move || {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                let mut b = [0u8; 2];
                if c.read_exact(&mut b).is_err() || b[0] != 5 {
                    return;
                }
                let mut methods = vec![0u8; usize::from(b[1])];
                if c.read_exact(&mut methods).is_err() || c.write_all(&[5, 0]).is_err() {
                    return;
                }
                let mut h = [0u8; 4];
                if c.read_exact(&mut h).is_err() {
                    return;
                }
                let target = match h[3] {
                    1 => {
                        let mut a = [0u8; 4];
                        let _ = c.read_exact(&mut a);
                        std::net::Ipv4Addr::from(a).to_string()
                    }
                    3 => {
                        let mut n = [0u8; 1];
                        let _ = c.read_exact(&mut n);
                        let mut name = vec![0u8; usize::from(n[0])];
                        let _ = c.read_exact(&mut name);
                        String::from_utf8_lossy(&name).into_owned()
                    }
                    _ => return,
                };
                let mut port = [0u8; 2];
                let _ = c.read_exact(&mut port);
                s.lock().expect("targets").push(target);
                let _ = c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    seen
}

/// Under `strict`, curl through a SOCKS 5 proxy at a US address: the
/// proxy is reached and serves an ordinary name at once (a SOCKS greeting
/// is not held as the start of a STUN message); asked for an Agora edge by
/// name, or for a CN address, the request never reaches the proxy, whose
/// own reading records neither.
#[test]
fn where_a_socks_client_asks_to_go_never_reaches_the_proxy_when_blocked() {
    let test = "where_a_socks_client_asks_to_go_never_reaches_the_proxy_when_blocked";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        net.add_server_address(US3);
        let world = support::test_world(net.dir.path());
        let proxy = recording_socks_server(&net, sa(US3, 1080));
        net.start_geowall(&world, &["--preset", "strict"]);
        let app = net.app.clone();
        let via = format!("{US3}:1080");
        let fetch = |flag: &str, url: &str| {
            let t = Instant::now();
            let out = curl(&app, &[flag, &via, "-w", " %{http_code}", url]);
            (out, t.elapsed())
        };
        let (ok, took) = fetch("--socks5-hostname", "http://www.example.com/");
        let (edge, _) = fetch("--socks5-hostname", &format!("http://{AGORA_EDGE}/"));
        let (cn, _) = fetch("--socks5", &format!("http://{}/", addr::CN));
        let seen = proxy.lock().expect("targets").clone();
        eprintln!(
            "curl printed {ok:?} in {:.0} ms, {edge:?}, {cn:?}; the proxy was asked for {seen:?}",
            took.as_secs_f64() * 1e3
        );
        assert_eq!(ok, "ok 200", "the ordinary name is served");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(
            seen,
            ["www.example.com"],
            "only the ordinary name reached the proxy"
        );
        let events = net.events();
        let cuts: Vec<_> = events.iter().filter(|e| e["kind"] == "cut").collect();
        assert!(
            cuts.iter().any(|e| e["hosts"][0] == AGORA_EDGE),
            "{cuts:#?}"
        );
        assert!(
            cuts.iter()
                .any(|e| e["peer"] == format!("{}:80", addr::CN).as_str()),
            "{cuts:#?}"
        );
        net.stop_geowall();
    });
}

/// A SOCKS 5 proxy that grants UDP ASSOCIATE on `tcp_at` and relays on
/// `udp_at`, recording, with its own reading, the target each datagram's
/// header names (it forwards nothing).
fn recording_socks_udp_relay(
    net: &Net,
    tcp_at: SocketAddr,
    udp_at: SocketAddr,
) -> Arc<std::sync::Mutex<Vec<String>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = in_ns(&net.net, || {
        std::net::TcpListener::bind(tcp_at).expect("bind socks")
    });
    l.set_nonblocking(true).expect("nonblocking");
    let u = in_ns(&net.net, || UdpSocket::bind(udp_at).expect("bind relay"));
    u.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = net.stopping();
    let reply = match udp_at {
        SocketAddr::V4(a) => {
            let mut r = vec![5, 0, 0, 1];
            r.extend_from_slice(&a.ip().octets());
            r.extend_from_slice(&a.port().to_be_bytes());
            r
        }
        SocketAddr::V6(_) => panic!("IPv4 only"),
    };
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !s2.load(Ordering::SeqCst) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let mut greet = [0u8; 3];
            let mut req = [0u8; 10];
            if c.read_exact(&mut greet).is_ok()
                && c.write_all(&[5, 0]).is_ok()
                && c.read_exact(&mut req).is_ok()
                && req[1] == 3
            {
                let _ = c.write_all(&reply);
            }
            // The association lives as long as its TCP connection.
            held.push(c);
        }
    });
    let got = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, _)) = u.recv_from(&mut buf) {
                let d = &buf[..n];
                let target = if n >= 10 && d[..4] == [0, 0, 0, 1] {
                    let ip = std::net::Ipv4Addr::new(d[4], d[5], d[6], d[7]);
                    format!("{ip}:{}", u16::from_be_bytes([d[8], d[9]]))
                } else {
                    "other".to_owned()
                };
                got.lock().expect("targets").push(target);
            }
        }
    });
    seen
}

/// Under `strict`, a SOCKS 5 client asks its proxy (a US address) for a
/// UDP relay and sends voice through it: 5 datagrams for a US peer reach
/// the relay; then 5 for a CN peer and 5 more for the US one: the relay's
/// own reading counts none of them (the relay flow is cut at the first CN
/// one), and the event names the CN peer.
#[test]
fn a_socks_udp_relay_never_carries_media_to_a_blocked_peer() {
    let test = "a_socks_udp_relay_never_carries_media_to_a_blocked_peer";
    if !support::root_or_skip(test) {
        return;
    }
    bounded(test, Duration::from_secs(60), || {
        let mut net = Net::new();
        net.add_server_address(US3);
        let world = support::test_world(net.dir.path());
        let relay = recording_socks_udp_relay(&net, sa(US3, 1080), sa(US3, 1081));
        net.start_geowall(&world, &["--preset", "strict"]);
        let app = net.app.clone();
        in_ns(&app, || {
            let mut c = TcpStream::connect_timeout(&sa(US3, 1080), Duration::from_secs(3))
                .expect("connect to the proxy");
            c.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            c.write_all(&[5, 1, 0]).expect("greeting");
            let mut choice = [0u8; 2];
            c.read_exact(&mut choice).expect("method chosen");
            c.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
                .expect("UDP ASSOCIATE");
            let mut granted = [0u8; 10];
            c.read_exact(&mut granted).expect("relay granted");
            let relay_at = SocketAddr::from((
                [granted[4], granted[5], granted[6], granted[7]],
                u16::from_be_bytes([granted[8], granted[9]]),
            ));
            let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let to = |peer: [u8; 4], seq: u16| {
                let mut d = vec![0, 0, 0, 1];
                d.extend_from_slice(&peer);
                d.extend_from_slice(&5004u16.to_be_bytes());
                d.extend_from_slice(&rtp(seq));
                d
            };
            for (peer, first) in [
                ([198, 51, 100, 20], 0),
                ([203, 0, 113, 10], 5),
                ([198, 51, 100, 20], 10),
            ] {
                for seq in first..first + 5 {
                    let _ = u.send_to(&to(peer, seq), relay_at);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            std::thread::sleep(Duration::from_millis(1_200));
            drop(c);
        });
        let seen = relay.lock().expect("targets").clone();
        let count = |t: &str| seen.iter().filter(|s| s.as_str() == t).count();
        eprintln!(
            "the relay read {} datagrams: {} for the US peer, {} for the CN peer",
            seen.len(),
            count("198.51.100.20:5004"),
            count("203.0.113.10:5004")
        );
        assert_eq!(
            count("203.0.113.10:5004"),
            0,
            "media reached the relay for the CN peer"
        );
        assert_eq!(count("198.51.100.20:5004"), 5, "only before the cut");
        let events = net.events();
        let cut = events
            .iter()
            .find(|e| e["kind"] == "cut" && e["proto"] == "udp")
            .unwrap_or_else(|| panic!("no cut: {events:#?}"));
        assert_eq!(cut["peer"], "203.0.113.10:5004", "{cut}");
        net.stop_geowall();
    });
}
