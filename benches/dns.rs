//! `cargo bench --bench dns`: DNS queries answered from the cache through
//! the engine (sans-IO, one core): an app's query packet in, the filtered
//! answer packet out, with the `default` preset and the shipped world
//! database as `geowall tunnel` loads it. 1,000 names, each cached with
//! one address in CN and one in the US (data only: nothing is sent), so
//! every answer is also filtered. Reports the median per-query latency and
//! queries per second, median of rounds.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use geowall::engine::dataplane::{Engine, EngineConfig, Output};
use geowall::engine::dns::Resolved;
use geowall::engine::reply::udp_packet;
use geowall::intel::catalog::Catalog;
use geowall::intel::jurisdiction::Intel;
use geowall::policy::{Policy, PolicyHandle};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

const NAMES: usize = 1_000;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let catalog = Catalog::shipped().expect("catalog");
    let policy = Policy::preset("default", &catalog).expect("preset");
    let world = geowall::intel::world::embedded_lean().expect("world");
    let mut e = Engine::new(
        EngineConfig::default(),
        Intel::new(world),
        Arc::new(PolicyHandle::new(policy)),
        None,
    );
    let app: SocketAddr = "198.18.1.2:40000".parse().expect("addr");
    let dns: SocketAddr = "198.18.1.1:53".parse().expect("addr");
    let queries: Vec<Vec<u8>> = (0..NAMES)
        .map(|i| {
            let mut m = Message::query();
            m.metadata.id = i as u16;
            m.metadata.recursion_desired = true;
            let name = Name::from_ascii(format!("host{i}.example.org.")).expect("name");
            m.add_query(Query::query(name, RecordType::A));
            udp_packet(app, dns, &m.to_vec().expect("query")).expect("packet")
        })
        .collect();
    // Prime the cache: one resolver answer per name.
    for (i, q) in queries.iter().enumerate() {
        e.handle_tun(q, 1);
        let mut token = None;
        while let Some(o) = e.poll_output() {
            if let Output::DnsQuery { query, .. } = o {
                token = Some(query);
            }
        }
        let name = Name::from_ascii(format!("host{i}.example.org.")).expect("name");
        let rec =
            |ip: [u8; 4]| Record::from_rdata(name.clone(), 3600, RData::A(A(Ipv4Addr::from(ip))));
        e.handle_dns_answer(
            token.expect("a resolver query"),
            Some(Resolved {
                rcode: ResponseCode::NoError,
                // 112.126.96.46: CN (Alibaba); 8.8.8.8: US.
                records: vec![rec([112, 126, 96, 46]), rec([8, 8, 8, 8])],
                negative_ttl: None,
            }),
            1,
        );
        while e.poll_output().is_some() {}
    }
    let rounds = if full { 21 } else { 1 };
    let (mut rates, mut p50s) = (Vec::new(), Vec::new());
    let mut lat = Vec::with_capacity(NAMES * 10);
    let mut answered = 0u64;
    for r in 0..rounds {
        lat.clear();
        let t0 = Instant::now();
        for _ in 0..10 {
            for q in &queries {
                let t = Instant::now();
                e.handle_tun(q, 2 + r as u64);
                while let Some(o) = e.poll_output() {
                    if let Output::ToTun(p) = o {
                        answered += 1;
                        black_box(p);
                    }
                }
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
        rates.push(lat.len() as f64 / t0.elapsed().as_secs_f64());
        lat.sort_unstable();
        p50s.push(lat[lat.len() / 2]);
    }
    assert_eq!(
        answered,
        (rounds * 10 * NAMES) as u64,
        "every query answered from the cache"
    );
    assert!(e.counters.dns_filtered > 0, "answers were filtered");
    rates.sort_by(f64::total_cmp);
    p50s.sort_unstable();
    if !full {
        println!("(smoke run under cargo test; `cargo bench --bench dns` measures)");
    }
    println!(
        "dns: cached query through the engine, filtered answer: median {:.1} us per query (p50 of each round, median of {rounds}), {:.0} queries/s on one core (min {:.0}, max {:.0})",
        p50s[p50s.len() / 2] as f64 / 1e3,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}
