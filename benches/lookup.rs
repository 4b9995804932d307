//! `cargo bench --bench lookup`: world database lookups per second, side by
//! side with the `maxminddb` crate reading `iptoasn-country.mmdb` on the
//! same addresses in the same run; plus load time and resident memory.
//!
//! Rounds alternate geowall and maxminddb so both see the same machine
//! noise; the figures printed are medians over the rounds. Environment:
//! `GEOWALL_BENCH_N` (addresses per family, default 1,000,000),
//! `GEOWALL_BENCH_ROUNDS` (default 9).
//!
//! It also times this machine's memory floor in the same rounds: one
//! random read per address in a buffer the size of the database, the
//! least any lookup in it must do (see `support/floor.rs`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use geowall::intel::{World, WorldInfo};

#[path = "support/floor.rs"]
mod floor;

/// xorshift64*: a fixed, seedable sequence, so every run uses the same IPs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn rss_bytes() -> u64 {
    // Second field of /proc/self/statm: resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|p| p * 4096)
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(serde::Deserialize)]
struct MmdbRec<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
}

/// Folds everything a lookup answers into a checksum, so nothing is
/// optimised away and both geowall paths can be compared.
fn fold(acc: u64, i: &WorldInfo<'_>) -> u64 {
    let c = |c: Option<geowall::intel::Country>| c.map_or(0, |c| u64::from(c.packed()));
    let g = i.geo_sources();
    let (a, b) = (g.get(0), g.get(1));
    acc.wrapping_add(c(a))
        .wrapping_add(c(b))
        .wrapping_add(c(i.network_country()))
        .wrapping_add(u64::from(i.asn().unwrap_or(0)))
}

fn ours(w: &World, ips: &[IpAddr]) -> u64 {
    ips.iter().fold(0, |acc, &ip| fold(acc, &w.lookup(ip)))
}

fn ours_many(w: &World, ips: &[IpAddr]) -> u64 {
    // One output buffer reused across chunks, as a bulk caller would.
    let mut acc = 0u64;
    let mut buf = Vec::with_capacity(4096);
    for chunk in ips.chunks(4096) {
        buf.clear();
        w.lookup_many(chunk, &mut buf);
        acc = buf.iter().fold(acc, fold);
    }
    acc
}

/// The address as a key for the memory floor.
fn key(ip: &IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => u64::from(u32::from(*a)),
        IpAddr::V6(a) => {
            let x = u128::from(*a);
            (x >> 64) as u64 ^ x as u64
        }
    }
}

fn theirs(r: &maxminddb::Reader<Vec<u8>>, ips: &[IpAddr]) -> u64 {
    let mut acc = 0u64;
    for &ip in ips {
        if let Ok(res) = r.lookup(ip)
            && let Ok(Some(rec)) = res.decode::<MmdbRec<'_>>()
        {
            acc = acc.wrapping_add(rec.country_code.map_or(0, |c| c.len() as u64));
        }
    }
    acc
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let world_path = root.join("rules/world/world.gwdb");
    let mmdb_path = root.join("benches/data/iptoasn-country.mmdb");
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // file too, without it: then do a quick smoke pass only.
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full {
        env_usize("GEOWALL_BENCH_N", 1_000_000)
    } else {
        2_000
    };
    let rounds = if full {
        env_usize("GEOWALL_BENCH_ROUNDS", 9).max(1)
    } else {
        1
    };
    let load_runs = if full { 21 } else { 1 };

    // Resident memory the world database adds: loaded and every page used.
    let rss0 = rss_bytes();
    let world = World::open(&world_path).expect("rules/world/world.gwdb loads");
    let rss1 = rss_bytes();

    // Load time: read + validate (file in the page cache), median of runs.
    let mut loads: Vec<f64> = (0..load_runs)
        .map(|_| {
            let t = Instant::now();
            let w = World::open(&world_path).expect("loads");
            let dt = t.elapsed().as_secs_f64();
            black_box(w.size_bytes());
            dt
        })
        .collect();
    let bytes = std::fs::read(&world_path).expect("read");
    let mut validates: Vec<f64> = (0..load_runs)
        .map(|_| {
            let b = bytes.clone();
            let t = Instant::now();
            let w = World::from_vec(b).expect("validates");
            let dt = t.elapsed().as_secs_f64();
            black_box(w.size_bytes());
            dt
        })
        .collect();

    let mmdb = maxminddb::Reader::from_source(
        std::fs::read(&mmdb_path)
            .expect("benches/data/iptoasn-country.mmdb is present (see benches/data/README.md)"),
    )
    .expect("mmdb opens");

    // Same addresses for both: IPv4 uniform over the whole space; IPv6
    // uniform inside randomly chosen networks of the mmdb (uniform IPv6
    // would almost always miss every table).
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let v4: Vec<IpAddr> = (0..n)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
        .collect();
    let nets: Vec<(u128, u128)> = mmdb
        .networks(maxminddb::WithinOptions::default())
        .expect("networks")
        .filter_map(|r| r.ok()?.network().ok())
        .filter_map(|net| match (net.network(), net.broadcast()) {
            (IpAddr::V6(a), IpAddr::V6(b)) => Some((u128::from(a), u128::from(b))),
            _ => None,
        })
        .collect();
    let v6: Vec<IpAddr> = (0..n)
        .map(|_| {
            let (a, b) = nets[(rng.next() % nets.len() as u64) as usize];
            let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let span = b - a;
            let x = if span == u128::MAX {
                r
            } else {
                a + r % (span + 1)
            };
            IpAddr::V6(Ipv6Addr::from(x))
        })
        .collect();

    // Lookups allocate nothing: resident memory must not grow while they
    // run (the address vectors above are allocated before this point).
    let rss_before = rss_bytes();
    black_box(ours(&world, &v4));
    black_box(ours(&world, &v6));
    let rss_after = rss_bytes();

    if !full {
        println!("(smoke run under cargo test; `cargo bench --bench lookup` measures)");
    }
    println!("geowall lookup benchmark: {n} IPv4 + {n} IPv6 addresses, {rounds} rounds, medians;");
    println!("ratios are medians of per-round ratios against maxminddb in the same round");
    println!(
        "world database: {:.1} MB file; load (read + validate) {:.2} ms; validate only {:.2} ms",
        world.size_bytes() as f64 / 1e6,
        median(&mut loads) * 1e3,
        median(&mut validates) * 1e3
    );
    println!(
        "resident memory added by the world database: {:.1} MB at load, +{:.1} MB during 2 x {n} lookups",
        rss1.saturating_sub(rss0) as f64 / 1e6,
        rss_after.saturating_sub(rss_before) as f64 / 1e6
    );
    let floor = floor::Floor::new(world.size_bytes());
    // The IPv4 part alone (its /16 index, 5-byte entries and the 8-byte
    // records), what IPv4 lookups actually touch.
    let st = &world.meta().stats;
    let floor4 =
        floor::Floor::new(65_537 * 4 + st.v4_entries as usize * 5 + st.records as usize * 8);
    for (name, ips) in [("IPv4", &v4), ("IPv6", &v6)] {
        assert_eq!(
            ours(&world, ips),
            ours_many(&world, ips),
            "batched and single lookups agree"
        );
        let (mut a, mut m, mut b, mut ratio_a, mut ratio_m) =
            (vec![], vec![], vec![], vec![], vec![]);
        // Per floor buffer: rates and ratios to maxminddb.
        let (mut f, mut ratio_f) = ([vec![], vec![]], [vec![], vec![]]);
        for _ in 0..rounds {
            let t = Instant::now();
            black_box(ours(&world, ips));
            let ra = ips.len() as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            black_box(ours_many(&world, ips));
            let rm = ips.len() as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            black_box(theirs(&mmdb, ips));
            let rb = ips.len() as f64 / t.elapsed().as_secs_f64();
            for (k, fl) in [&floor, &floor4].into_iter().enumerate() {
                let t = Instant::now();
                black_box(fl.independent(ips.iter().map(key)));
                let rf = ips.len() as f64 / t.elapsed().as_secs_f64();
                f[k].push(rf);
                ratio_f[k].push(rf / rb);
            }
            a.push(ra);
            m.push(rm);
            b.push(rb);
            ratio_a.push(ra / rb);
            ratio_m.push(rm / rb);
        }
        println!(
            "{name}: maxminddb {:>6.2} M/s | geowall lookup {:>6.2} M/s = {:>4.1}x | geowall lookup_many {:>6.2} M/s = {:>4.1}x",
            median(&mut b) / 1e6,
            median(&mut a) / 1e6,
            median(&mut ratio_a),
            median(&mut m) / 1e6,
            median(&mut ratio_m)
        );
        println!(
            "{name}: memory floor, one random read per address and nothing else: in {:.1} MB {:>6.2} M/s = {:>4.1}x maxminddb; in {:.1} MB {:>6.2} M/s = {:>4.1}x",
            floor.bytes() as f64 / 1e6,
            median(&mut f[0]) / 1e6,
            median(&mut ratio_f[0]),
            floor4.bytes() as f64 / 1e6,
            median(&mut f[1]) / 1e6,
            median(&mut ratio_f[1])
        );
    }
    let steps = if full { 2_000_000 } else { 10_000 };
    let small = floor::Floor::new(2 << 20);
    let (mut big_ns, mut small_ns): (Vec<f64>, Vec<f64>) = (0..rounds)
        .map(|_| (floor.chase_ns(steps), small.chase_ns(steps)))
        .unzip();
    println!(
        "dependent random read (each waits for the last): {:.0} ns in {:.1} MB, {:.0} ns in 2.1 MB",
        median(&mut big_ns),
        floor.bytes() as f64 / 1e6,
        median(&mut small_ns)
    );
    println!(
        "(geowall answers two geolocation sources, the AS number and the AS registration country;"
    );
    println!(" maxminddb answers one country code from iptoasn-country.mmdb)");
}
