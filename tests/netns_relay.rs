//! A TURN relay's peers, end to end in network namespaces (root only;
//! skips otherwise): the app allocates on a real TURN server (coturn's
//! `turnserver`, anonymous, on a US address) and asks it to reach a peer.
//! Under `clubhouse`, media through the US relay to a CN peer is blocked
//! and the peer receives nothing; to a US peer it flows. Both with the app
//! talking to its relay over UDP and over TCP. What reaches each
//! peer is counted on the internet side, by a counter that reads frames
//! itself.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geowall::wire::rtc::{TURN_CHANNEL_BIND, TURN_CREATE_PERMISSION, TURN_SEND, turn_message};
use support::{Net, addr, in_ns, sa};

/// The relay's port.
const TURN_PORT: u16 = 3478;
/// The peers' port.
const PEER_PORT: u16 = 5004;

/// coturn's `turnserver` in the internet namespace, on the US address,
/// anonymous (no credentials), relaying from the same address; killed on
/// drop.
struct Relay(Child);

impl Relay {
    fn start(net: &Net) -> Self {
        let log = net.dir.path().join("turnserver.log");
        let pid = net.dir.path().join("turnserver.pid");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.net, "turnserver", "-n", "-z"])
            .args(["-L", addr::US, "-E", addr::US])
            .args(["--listening-port", &TURN_PORT.to_string()])
            .args(["--min-port", "49152", "--max-port", "49200"])
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--realm",
                "geowall.test",
            ])
            .arg("--log-file")
            .arg(&log)
            .arg("--pidfile")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver (Debian package coturn) starts");
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TURN Allocate request for a UDP relay (RFC 8656), no credentials.
fn allocate(id: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[id; 12]);
    m.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    m
}

/// The app's connection to the relay: TURN over UDP, or over one TCP
/// connection (RFC 8656 section 12.3; the relay still reaches its peers
/// over UDP).
enum Client {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Client {
    /// A client (in the calling namespace) with an allocation on the relay
    /// over `proto` (6 TCP, 17 UDP), retrying while coturn starts (at most
    /// 10 s).
    fn allocated(proto: u8) -> Self {
        let t = Instant::now();
        let mut id = 1u8;
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the relay never answered an Allocate"
            );
            let mut c = if proto == 6 {
                let to = sa(addr::US, TURN_PORT);
                match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                    Ok(s) => Client::Tcp(s),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
            } else {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.connect(sa(addr::US, TURN_PORT)).expect("connect");
                Client::Udp(s)
            };
            c.send(&allocate(id));
            // 0x0103: Allocate success response.
            if c.answer(Duration::from_millis(300)) == Some(0x0103) {
                return c;
            }
            id = id.wrapping_add(1);
        }
    }

    /// Sends one message (or frame); a failure (the connection was cut)
    /// is left to the answers and the counts.
    fn send(&mut self, m: &[u8]) {
        let _ = match self {
            Client::Udp(s) => s.send(m).map(drop),
            Client::Tcp(s) => s.write_all(m),
        };
    }

    /// The STUN message type of the next answer, if one came whole within
    /// `wait`; `None` also when the connection was closed or reset.
    fn answer(&mut self, wait: Duration) -> Option<u16> {
        let mut head = [0u8; 20];
        match self {
            Client::Udp(s) => {
                s.set_read_timeout(Some(wait)).expect("timeout");
                let mut buf = [0u8; 1500];
                let n = s.recv(&mut buf).ok()?;
                head.copy_from_slice(buf[..n].get(..20)?);
            }
            Client::Tcp(s) => {
                s.set_read_timeout(Some(wait)).expect("timeout");
                s.read_exact(&mut head).ok()?;
                let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[2], head[3]]))];
                s.read_exact(&mut rest).ok()?;
            }
        }
        Some(u16::from_be_bytes([head[0], head[1]]))
    }

    /// `rounds` rounds, 20 ms apart, of 160 bytes of voice to each of
    /// `peers` by Send indication and one ChannelData frame on channel
    /// 0x4001 (a multiple of 4 long: no padding on TCP).
    fn send_media(&mut self, peers: &[SocketAddr], rounds: usize) {
        for i in 0..rounds {
            let voice = [0x55u8; 160];
            for &peer in peers {
                self.send(&turn_message(
                    TURN_SEND,
                    [0x60 + i as u8; 12],
                    &[peer],
                    None,
                    &voice,
                ));
            }
            let mut cd = vec![0x40, 0x01, 0, 160];
            cd.extend_from_slice(&voice);
            self.send(&cd);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// From the app namespace, over `proto`: allocates on the relay, then
/// asks for `peer` by CreatePermission and ChannelBind and sends it
/// `media` rounds by Send indication and ChannelData. What the relay
/// answered to the permission request (`None`: no answer).
fn talk_through_relay(net: &Net, peer: SocketAddr, media: usize, proto: u8) -> Option<u16> {
    in_ns(&net.app, || {
        let mut c = Client::allocated(proto);
        c.send(&turn_message(
            TURN_CREATE_PERMISSION,
            [0x51; 12],
            &[peer],
            None,
            &[],
        ));
        let got = c.answer(Duration::from_secs(1));
        c.send(&turn_message(
            TURN_CHANNEL_BIND,
            [0x52; 12],
            &[peer],
            Some(0x4001),
            &[],
        ));
        let _ = c.answer(Duration::from_millis(500));
        c.send_media(&[peer], media);
        got
    })
}

/// The namespaces with a CN and a US peer listening (both would answer;
/// the counter, not they, decides), coturn on the US relay address, and
/// geowall under `clubhouse`; the relay runs while its guard lives.
fn relay_and_two_peers() -> (Net, Relay) {
    let mut net = Net::new();
    net.udp_server(sa(addr::CN, PEER_PORT), |_| Vec::new());
    net.udp_server(sa(addr::US2, PEER_PORT), |_| Vec::new());
    let relay = Relay::start(&net);
    let world = support::test_world(net.dir.path());
    net.start_geowall(&world, &["--preset", "clubhouse"]);
    (net, relay)
}

/// Under `clubhouse`, with the app talking to a US relay over `proto` (6
/// TCP, 17 UDP): a US peer is granted and gets the media, a CN peer behind
/// the same relay gets nothing, and the event names it.
fn a_us_relay_is_judged_by_the_peer_it_reaches(media: usize, proto: u8) {
    let (mut net, _relay) = relay_and_two_peers();

    // A US peer: the permission is granted and media reaches it.
    let us = sa(addr::US2, PEER_PORT);
    let got = talk_through_relay(&net, us, media, proto);
    // 0x0108: CreatePermission success response.
    assert_eq!(got, Some(0x0108), "the relay granted the US peer");
    let t = Instant::now();
    while net.count(addr::US2, 17, PEER_PORT) < 20 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_us = net.count(addr::US2, 17, PEER_PORT);
    assert!(to_us >= 20, "media relayed to the US peer: {to_us} packets");

    // A CN peer behind the same US relay: the permission request never
    // reaches the relay and nothing reaches the peer.
    let cn = sa(addr::CN, PEER_PORT);
    let got = talk_through_relay(&net, cn, media, proto);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        net.count(addr::CN, 17, PEER_PORT),
        0,
        "packets reached the CN peer"
    );
    assert_eq!(
        got, None,
        "the permission request for the CN peer never left"
    );
    // The relay itself was reached (the allocations), and the event names
    // the peer that decided.
    assert!(net.count(addr::US, proto, TURN_PORT) > 0);
    // The peer is refused and its messages dropped (taken out of the
    // stream over TCP).
    let ev = net.events();
    let cut = ev
        .iter()
        .find(|e| e["kind"] == "peer-refused" && e["peer"] == cn.to_string())
        .unwrap_or_else(|| panic!("no peer-refused naming the CN peer in {ev:#?}"));
    assert_eq!(cut["server"], format!("{}:{TURN_PORT}", addr::US));
    assert_eq!(cut["proto"], if proto == 6 { "tcp" } else { "udp" });
    assert_eq!(cut["rule"], "no pings or media to PRC jurisdiction");
    assert_eq!(cut["layer"], "geo:CN");
    net.stop_geowall();
}

#[test]
fn media_through_a_us_relay_is_judged_by_the_peer_it_reaches() {
    if !support::root_or_skip("media_through_a_us_relay_is_judged_by_the_peer_it_reaches") {
        return;
    }
    // Ten Send indications and ten ChannelData frames.
    a_us_relay_is_judged_by_the_peer_it_reaches(10, 17);
}

#[test]
fn media_through_a_us_relay_over_tcp_is_judged_by_the_peer_it_reaches() {
    if !support::root_or_skip("media_through_a_us_relay_over_tcp_is_judged_by_the_peer_it_reaches")
    {
        return;
    }
    // Ten Send indications and ten ChannelData frames on the stream.
    a_us_relay_is_judged_by_the_peer_it_reaches(10, 6);
}

/// From the app namespace, on one allocation: a permission and a channel
/// for `us`, then a permission for `cn`, then `media` rounds of a Send
/// indication to each peer and ChannelData on the US channel. What the
/// relay answered to the two permission requests.
fn call_with_two_peers(
    net: &Net,
    us: SocketAddr,
    cn: SocketAddr,
    media: usize,
    proto: u8,
) -> (Option<u16>, Option<u16>) {
    in_ns(&net.app, || {
        let mut c = Client::allocated(proto);
        let perm = |peer, tid| turn_message(TURN_CREATE_PERMISSION, [tid; 12], &[peer], None, &[]);
        c.send(&perm(us, 0x71));
        let to_us = c.answer(Duration::from_secs(1));
        c.send(&turn_message(
            TURN_CHANNEL_BIND,
            [0x72; 12],
            &[us],
            Some(0x4001),
            &[],
        ));
        let _ = c.answer(Duration::from_millis(500));
        c.send(&perm(cn, 0x73));
        let to_cn = c.answer(Duration::from_secs(1));
        c.send_media(&[us, cn], media);
        (to_us, to_cn)
    })
}

/// A call through a US relay, over `proto` (6 TCP, 17 UDP), whose far
/// side also offers a CN candidate: under `clubhouse` the CN peer is
/// refused (its permission request and the media for it never reach the
/// relay, and nothing reaches it), while the call to the US peer goes on,
/// media included, after the refusal.
fn a_peer_is_refused_and_the_call_goes_on(proto: u8) {
    let (mut net, _relay) = relay_and_two_peers();
    let (us, cn) = (sa(addr::US2, PEER_PORT), sa(addr::CN, PEER_PORT));
    let (to_us, to_cn) = call_with_two_peers(&net, us, cn, 15, proto);
    // 0x0108: CreatePermission success response.
    assert_eq!(to_us, Some(0x0108), "the relay granted the US peer");
    assert_eq!(
        to_cn, None,
        "the permission request for the CN peer never left"
    );
    let t = Instant::now();
    while net.count(addr::US2, 17, PEER_PORT) < 30 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each round's Send indication and ChannelData, all after the refusal.
    let at_us = net.count(addr::US2, 17, PEER_PORT);
    assert!(
        at_us >= 30,
        "the call to the US peer went on: {at_us} packets"
    );
    assert_eq!(
        net.count(addr::CN, 17, PEER_PORT),
        0,
        "packets reached the CN peer"
    );
    let ev = net.events();
    let refused: Vec<_> = ev.iter().filter(|e| e["kind"] == "peer-refused").collect();
    assert_eq!(
        refused.len(),
        1,
        "one event for the peer, not one per message: {ev:#?}"
    );
    assert_eq!(refused[0]["peer"], cn.to_string());
    assert_eq!(refused[0]["rule"], "no pings or media to PRC jurisdiction");
    assert!(
        !ev.iter()
            .any(|e| e["kind"] == "cut" || e["kind"] == "blocked"),
        "the relay was not cut: {ev:#?}"
    );
    net.stop_geowall();
}

#[test]
fn a_peer_under_a_blocked_jurisdiction_is_refused_and_the_call_goes_on() {
    if !support::root_or_skip("a_peer_under_a_blocked_jurisdiction_is_refused_and_the_call_goes_on")
    {
        return;
    }
    a_peer_is_refused_and_the_call_goes_on(17);
}

/// As above over TCP: the messages naming the CN peer are taken out of
/// the stream whole, and the stream's framing holds for what follows.
#[test]
fn over_tcp_a_peer_under_a_blocked_jurisdiction_is_refused_and_the_call_goes_on() {
    if !support::root_or_skip(
        "over_tcp_a_peer_under_a_blocked_jurisdiction_is_refused_and_the_call_goes_on",
    ) {
        return;
    }
    a_peer_is_refused_and_the_call_goes_on(6);
}
