//! The engine's packet input: a sequence of operations read from the fuzz
//! input (`op`, 2-byte length, bytes): a packet from the TUN, time passing
//! (with the upstream's routes changing), or the upstream side answering
//! the last flow it opened (or its socket reporting an ICMP error).
#![no_main]

use geowall::engine::dataplane::{ConnectFailure, Output, Unreachable, UpstreamRoutes};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut e = common::engine();
    let mut now = 1_000_000_000u64;
    let (mut last_tcp, mut last_udp, mut last_echo) = (None, None, None);
    let mut rest = data;
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match op % 5 {
            0 | 1 => e.handle_tun(body, now),
            2 => {
                now += u64::from(body.first().copied().unwrap_or(1)) * 50_000_000;
                // Now and then a family loses or regains its route.
                if let Some(&r) = body.get(1) {
                    e.set_upstream_routes(UpstreamRoutes {
                        v4: r & 1 == 0,
                        v6: r & 2 == 0,
                    });
                }
                e.handle_timeout(now);
            }
            3 => {
                if let Some(f) = last_tcp {
                    // Now and then its connect fails instead.
                    match body.first() {
                        Some(1) => e.handle_tcp_connect_failed(f, ConnectFailure::Unanswered, now),
                        Some(2) => e.handle_tcp_connect_failed(f, ConnectFailure::Refused, now),
                        _ => {}
                    }
                    e.handle_tcp_connected(f, now);
                    e.handle_tcp_from_upstream(f, body, now);
                    if body.first() == Some(&0) {
                        e.handle_tcp_upstream_closed(f, now);
                    }
                }
            }
            _ => {
                if let Some(f) = last_udp {
                    e.handle_udp_from_upstream(f, body, now);
                    // An ICMP error on the flow's socket, now and then.
                    let why = match body.first() {
                        Some(0) => Some(Unreachable::Port),
                        Some(1) => Some(Unreachable::Host),
                        Some(2) => Some(Unreachable::Network),
                        _ => None,
                    };
                    if let Some(why) = why {
                        e.handle_udp_unreachable(f, why, now);
                    }
                }
                // And one about an echo request.
                if let (Some(f), Some(&[a, b])) = (last_echo, body.get(1..3)) {
                    let seq = u16::from_be_bytes([a, b]);
                    e.handle_echo_unreachable(f, seq, Unreachable::Host, now);
                }
            }
        }
        while let Some(o) = e.poll_output() {
            match o {
                Output::TcpOpen { flow, .. } => last_tcp = Some(flow),
                Output::UdpOpen { flow, .. } => last_udp = Some(flow),
                Output::EchoRequest { flow, .. } => last_echo = Some(flow),
                Output::DnsQuery { query, .. } => e.handle_dns_answer(query, None, now),
                _ => {}
            }
        }
        let _ = e.poll_timeout();
    }
});
