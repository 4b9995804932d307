//! The engine's DNS handling: the first part of the input is a query an
//! app sends (over UDP to port 53), the rest a message whose records are
//! the resolver's answer; the engine filters and answers.
#![no_main]

use geowall::engine::dataplane::Output;
use geowall::engine::dns::Resolved;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(data.len());
    let (query, answer) = data.split_at(cut);
    let _ = geowall::engine::dns::parse_query(query);
    let mut e = common::engine();
    let Some(packet) = geowall::engine::reply::udp_packet(
        "198.18.1.2:40000".parse().expect("addr"),
        "192.0.2.53:53".parse().expect("addr"),
        query,
    ) else {
        return;
    };
    e.handle_tun(&packet, 1_000_000_000);
    let mut tokens = Vec::new();
    while let Some(o) = e.poll_output() {
        if let Output::DnsQuery { query, .. } = o {
            tokens.push(query);
        }
    }
    let msg = hickory_proto::op::Message::from_vec(answer).ok();
    for t in tokens {
        let resolved = msg.as_ref().map(|m| Resolved {
            rcode: m.metadata.response_code,
            records: m.answers.clone(),
            negative_ttl: answer.first().map(|&b| u32::from(b) * 60),
        });
        e.handle_dns_answer(t, resolved, 1_000_000_000);
    }
    while e.poll_output().is_some() {}
    // The same name again: served from the cache.
    e.handle_tun(&packet, 2_000_000_000);
    while e.poll_output().is_some() {}
});
