//! The live firewall classes flows with the same recognisers as the audit
//! (root only; skips otherwise). Under `clubhouse` (no media or pings to
//! PRC jurisdiction), to a CN server: a WireGuard tunnel, whose paced data
//! alone would look like media, is recognised by its handshake and
//! reaches the server whole; the same pacing without the handshake is
//! media and nothing of it arrives; a STUN Binding request, the first step
//! of a call, is media too and never arrives. Counted at the server by
//! geowall's own frame counter.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use support::{Net, addr, in_ns, sa};

/// Sends `datagrams` from the app namespace to `port` on the CN address,
/// 20 ms apart.
fn send_paced(net: &Net, port: u16, datagrams: &[Vec<u8>]) {
    in_ns(&net.app, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect(sa(addr::CN, port)).expect("connect");
        for d in datagrams {
            let _ = s.send(d);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// A WireGuard handshake initiation (type 1, three zero bytes, 148 bytes
/// in all) and `n` transport data messages of one session (type 4, the
/// receiver index, a counter that goes on, padded to 16).
fn wireguard(n: u64) -> Vec<Vec<u8>> {
    let mut init = vec![1, 0, 0, 0];
    init.resize(148, 0x5A);
    let mut out = vec![init];
    for i in 0..n {
        let mut d = vec![4, 0, 0, 0];
        d.extend_from_slice(&7u32.to_le_bytes());
        d.extend_from_slice(&i.to_le_bytes());
        d.resize(160, 0xA5);
        out.push(d);
    }
    out
}

#[test]
fn tunnels_reach_their_server_and_calls_do_not() {
    if !support::root_or_skip("tunnels_reach_their_server_and_calls_do_not") {
        return;
    }
    let mut net = Net::new();
    for port in [51820, 51821, 3478] {
        net.udp_server(sa(addr::CN, port), |_| Vec::new());
    }
    let world = support::test_world(net.dir.path());
    net.start_geowall(&world, &["--preset", "clubhouse"]);

    // WireGuard: the handshake, then 25 data messages.
    let tunnel = wireguard(25);
    send_paced(&net, 51820, &tunnel);
    // The same data, paced alike, with no handshake and no session:
    // unknown UDP with a real-time shape.
    let paced: Vec<Vec<u8>> = (0..26u8)
        .map(|i| {
            let mut d = vec![0x3A, i, 0x11, 0x22];
            d.resize(160, i);
            d
        })
        .collect();
    send_paced(&net, 51821, &paced);
    // A STUN Binding request (RFC 8489: type 1, no attributes, the magic
    // cookie, a transaction id).
    let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    binding.extend_from_slice(&[0x42; 12]);
    send_paced(&net, 3478, &[binding.clone(), binding]);

    let tunnel_in = net.count_settled(addr::CN, 17, 51820);
    assert_eq!(
        tunnel_in,
        tunnel.len() as u64,
        "every WireGuard datagram reached the server"
    );
    assert_eq!(
        net.count_settled(addr::CN, 17, 51821),
        0,
        "media-shaped datagrams reached the CN server"
    );
    assert_eq!(
        net.count_settled(addr::CN, 17, 3478),
        0,
        "a STUN Binding request reached the CN server"
    );
    let ev = net.events();
    let wg = ev
        .iter()
        .find(|e| e["server"] == format!("{}:51820", addr::CN))
        .unwrap_or_else(|| panic!("no event for the tunnel in {ev:#?}"));
    assert_eq!(wg["protocol"], "wireguard", "{wg}");
    assert_eq!(wg["class"], "other", "{wg}");
    net.stop_geowall();
}
