//! Every first-payload sniffer and wire parser, on the same bytes (and
//! the bytes as an IP packet that may carry others).
#![no_main]

use geowall::wire::{
    apps, dns, encap, http, packet, quic, raknet, rtc, sip, socks, tls, tunnel, utp,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    let _ = tls::client_hello(data, &mut scratch);
    let _ = tls::client_hello_message(data);
    let _ = tls::sslv2_client_hello(data);
    let _ = tls::partial_hello_sni(data);
    let _ = http::host(data);
    let _ = rtc::classify(data);
    let _ = rtc::sd_rtn(data);
    let _ = rtc::stun_prefix(data);
    let _ = rtc::turn_peers(data);
    let _ = rtc::stun_start(data);
    let _ = rtc::stun_incomplete(data);
    let mut turn = rtc::TurnStream::new();
    for part in data.chunks(data.len() / 3 + 1) {
        turn.feed(part, |m, at| {
            let _ = rtc::turn_peers(m);
            // A message is bytes of the stream.
            assert!(at as usize + m.len() <= data.len());
        });
    }
    // HTTP/1.x request framing, from a request start and from the bytes
    // alone.
    for start in [&b"GET / HTTP/1.1\r\nHost: a\r\n"[..], b""] {
        let mut r = http::RequestStream::new();
        r.feed(start, |_| {});
        for part in data.chunks(data.len() / 3 + 1) {
            r.feed(part, |h| assert!(!h.is_empty()));
        }
        let _ = (r.partial(), r.lost());
    }
    let _ = quic::initial_dcid(data);
    let _ = socks::greeting(data);
    let mut proxy = socks::SocksStream::new();
    for part in data.chunks(data.len() / 3 + 1) {
        proxy.feed(part, |_| {});
    }
    let _ = (proxy.partial(), proxy.done());
    let _ = rtc::zoom(data, true);
    let _ = rtc::zoom(data, false);
    let _ = tunnel::wireguard_handshake(data);
    let _ = tunnel::wireguard_data(data);
    let _ = tunnel::openvpn_client_reset(data);
    let _ = tunnel::openvpn_server_reset(data, &[1; 8]);
    let _ = tunnel::ike(data, (500, 4500));
    let _ = tunnel::esp_in_udp(data, (4500, 4500));
    let _ = tunnel::capwap(data, (5246, 5247));
    let _ = tunnel::capwap_data_inner(data, (5247, 5247));
    let _ = tunnel::anyconnect_dtls(data);
    let _ = sip::start(data);
    let _ = encap::gre_inner(data);
    for port in encap::UDP_PORTS {
        let _ = encap::udp_inner(data, (port, port));
    }
    let _ = apps::tftp_request(data, 69);
    let _ = apps::tftp_data(data);
    let _ = apps::tftp_ack(data);
    let _ = apps::rx(data, (7000, 7001));
    let _ = apps::nintendo_pia(data);
    let _ = packet::parse_ip(packet::innermost_ip(data));
    let _ = utp::syn(data);
    let _ = raknet::offline_message(data);
    let _ = utp::answers_syn(data, (1, 1));
    let _ = quic::gquic_chlo(data);
    let _ = quic::long_header(data);
    let mut plain = Vec::new();
    let _ = quic::decrypt_initial(data, &mut plain);
    let mut r = quic::InitialAssembler::new();
    // The bytes as up to three datagrams of one connection.
    for part in data.chunks(data.len() / 3 + 1) {
        let _ = r.feed(part);
    }
    let _ = r.client_hello();
    let _ = dns::question(data);
    let _ = dns::question_tcp(data);
    let _ = dns::read_name(data, 0);
});
