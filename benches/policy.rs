//! `cargo bench --bench policy`: compiling and matching a generated
//! 1,000,000-domain list, and full policy evaluations per second.
//!
//! Two more figures bound the match rate from below and above on this
//! machine: the memory floor (one random read per name in a buffer the
//! matcher's size, and nothing else; `support/floor.rs`) and the match rate
//! with every table line the names touch already cached (the first 1,000
//! names, over and over).
//!
//! Figures are medians over rounds. Under `cargo test` (no `--bench`
//! argument) it runs a small smoke pass instead.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use geowall::intel::catalog::Catalog;
use geowall::intel::domain::DomainMap;
use geowall::intel::jurisdiction::Intel;
use geowall::policy::lists::{ListFormat, parse_list};
use geowall::policy::{Facts, Policy, Traffic};

#[path = "support/floor.rs"]
mod floor;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const TLDS: [&str; 8] = ["com", "net", "org", "io", "cn", "de", "co.uk", "example"];

fn domain(i: u64) -> String {
    // Realistic shapes: 2-4 labels, 5-20 characters of labels.
    let tld = TLDS[(i % 8) as usize];
    match i % 3 {
        0 => format!("site{i:x}.{tld}"),
        1 => format!("cdn{}.brand{i}.{tld}", i % 7),
        _ => format!("a{}.b{}.svc{i}.{tld}", i % 13, i % 5),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = if full {
        std::env::var("GEOWALL_BENCH_DOMAINS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        5_000
    };
    let rounds = if full { 5 } else { 1 };

    // The list as a maintainer would ship it.
    let text: String = (0..n).map(|i| domain(i) + "\n").collect();
    let mut compile_s = Vec::new();
    let mut map = DomainMap::default();
    for _ in 0..rounds {
        let t = Instant::now();
        let entries = parse_list(Path::new("gen.txt"), &text, ListFormat::Domains).expect("parses");
        let mut b = DomainMap::builder();
        for p in &entries.domains {
            b.insert(p, 0);
        }
        drop(entries);
        map = b.build();
        compile_s.push(t.elapsed().as_secs_f64());
    }
    let per_domain = map.heap_bytes() as f64 / n as f64;

    // Names to match: half under listed domains (subdomains), half not.
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let names: Vec<String> = (0..1_000_000u64.min(n * 4))
        .map(|k| {
            let i = rng.next() % n;
            if k % 2 == 0 {
                format!("www.{}", domain(i))
            } else {
                format!("www.{}", domain(i + n))
            }
        })
        .collect();
    let hits = names.iter().filter(|s| map.matches(s)).count();
    let floor = floor::Floor::new(map.heap_bytes());
    let mut krng = Rng(0xF100_F100_F100_F100);
    let keys: Vec<u64> = names.iter().map(|_| krng.next()).collect();
    let few = &names[..names.len().min(1_000)];
    let repeat = names.len() / few.len();
    let (mut match_rate, mut floor_rate, mut cached_rate) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        black_box(floor.independent(keys.iter().copied()));
        floor_rate.push(keys.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut c = 0usize;
        for _ in 0..repeat {
            for s in few {
                c += usize::from(map.matches(s));
            }
        }
        black_box(c);
        cached_rate.push((repeat * few.len()) as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut c = 0usize;
        for s in &names {
            c += usize::from(map.matches(s));
        }
        black_box(c);
        match_rate.push(names.len() as f64 / t.elapsed().as_secs_f64());
    }

    // Full evaluation: shipped world and catalog, clubhouse preset, random
    // IPv4 destinations with a name and a traffic class.
    let world = geowall::intel::world::embedded().expect("shipped world");
    let catalog = Arc::new(Catalog::shipped().expect("catalog"));
    let policy = Policy::preset("clubhouse", &catalog).expect("preset");
    let intel = Intel::new(world);
    let flows: Vec<(IpAddr, usize, Traffic)> = (0..200_000)
        .map(|k| {
            let ip = IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
            let t = [Traffic::Web, Traffic::Media, Traffic::Ping, Traffic::Dns][k % 4];
            (ip, k % names.len(), t)
        })
        .collect();
    let mut blocked = 0usize;
    let mut eval_rate = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        blocked = 0;
        for (ip, ni, tr) in &flows {
            let name = [names[*ni].as_str()];
            let f = Facts {
                dst: Some(*ip),
                names: &name,
                traffic: Some(*tr),
                ..Facts::default()
            };
            blocked += usize::from(policy.evaluate(&intel, &f).is_block());
        }
        eval_rate.push(flows.len() as f64 / t.elapsed().as_secs_f64());
    }

    if !full {
        println!("(smoke run under cargo test; `cargo bench --bench policy` measures)");
    }
    println!("policy benchmark: {n} generated domains, {rounds} rounds, medians");
    println!(
        "compile (parse + validate + build) {:.2} s; matcher memory {:.1} bytes per domain ({:.1} MB)",
        median(&mut compile_s),
        per_domain,
        map.heap_bytes() as f64 / 1e6
    );
    println!(
        "match: {:.2} M names/s on one core ({} names, {} matched)",
        median(&mut match_rate) / 1e6,
        names.len(),
        hits
    );
    let steps = if full { 2_000_000 } else { 10_000 };
    let mut chase: Vec<f64> = (0..rounds).map(|_| floor.chase_ns(steps)).collect();
    println!(
        "  memory floor, one random read per name and nothing else, in {:.1} MB: {:.2} M/s; a read that waits for the last: {:.0} ns",
        floor.bytes() as f64 / 1e6,
        median(&mut floor_rate) / 1e6,
        median(&mut chase)
    );
    println!(
        "  match with the table lines cached ({} names, {repeat} times): {:.2} M names/s",
        few.len(),
        median(&mut cached_rate) / 1e6
    );
    println!(
        "full policy evaluation (clubhouse, shipped world): {:.2} M flows/s ({} of {} blocked)",
        median(&mut eval_rate) / 1e6,
        blocked,
        flows.len()
    );
}
