//! `cargo bench --bench reply`: packets the engine builds for the app,
//! per second, one core: UDP datagrams from upstream (64 and 1,200 bytes of
//! payload, IPv4 and IPv6; the hot one, one per datagram relayed down),
//! echo replies and TCP resets. The figure is the median of 9 rounds of
//! 1,000,000 packets (`cargo test` runs one short round as a smoke test).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use geowall::engine::reply;

fn rate(rounds: usize, n: u32, mut f: impl FnMut(u32)) -> f64 {
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            f64::from(n) / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, n) = if full { (9, 1_000_000) } else { (1, 1_000) };
    let v4 = (
        "198.51.100.7:5000".parse::<SocketAddr>().expect("addr"),
        "192.0.2.200:40000".parse::<SocketAddr>().expect("addr"),
    );
    let v6 = (
        "[2001:db8:1::7]:5000".parse::<SocketAddr>().expect("addr"),
        "[2001:db8:ffff::2]:40000"
            .parse::<SocketAddr>()
            .expect("addr"),
    );
    for size in [64usize, 1200] {
        let payload = vec![0x5a; size];
        for (name, (s, d)) in [("IPv4", v4), ("IPv6", v6)] {
            let r = rate(rounds, n, |_| {
                black_box(reply::udp_packet(black_box(s), black_box(d), &payload));
            });
            println!(
                "udp_packet {name} {size:>4} B payload: {:>6.2} M packets/s",
                r / 1e6
            );
        }
    }
    let (s, d): (IpAddr, IpAddr) = (v4.0.ip(), v4.1.ip());
    let data = [7u8; 56];
    let r = rate(rounds, n, |i| {
        black_box(reply::echo_reply(s, d, 0x1234, i as u16, black_box(&data)));
    });
    println!(
        "echo_reply IPv4   56 B data:    {:>6.2} M packets/s",
        r / 1e6
    );
    let syn = {
        let mut p = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&[192, 0, 2, 200, 203, 0, 113, 5]);
        p.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
        p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        p
    };
    let r = rate(rounds, n, |_| {
        black_box(reply::tcp_reset(black_box(&syn)));
    });
    println!(
        "tcp_reset  IPv4 (to a SYN):     {:>6.2} M packets/s",
        r / 1e6
    );
}
