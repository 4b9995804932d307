//! `cargo bench --bench classify`: packets per second through IP parsing,
//! flow lookup and classification (the engine's inspection path), one core,
//! on every capture in tests/fixtures/ndpi. Capture-file IO and the
//! capture format are excluded: the IP packets are extracted first.
//! Each round replays all packets into a fresh flow table (so flow
//! creation and sniffing are included); the figure is the median round.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use geowall::engine::Inspector;
use geowall::wire::capture::Capture;
use geowall::wire::packet::strip_link;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        println!("skipped: {} is not there", dir.display());
        return;
    };
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    let mut packets: Vec<(Vec<u8>, u64)> = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).expect("capture");
        for fr in Capture::new(&bytes).expect("capture").flatten() {
            if let Ok(ip) = strip_link(fr.link, fr.data) {
                packets.push((ip.to_vec(), fr.ts_nanos));
            }
        }
    }
    let rounds = if full { 31 } else { 1 };
    let mut rates = Vec::new();
    let mut flows = 0;
    for _ in 0..rounds {
        let mut insp = Inspector::new(1_000_000, None);
        let t = Instant::now();
        for (p, ts) in &packets {
            black_box(insp.on_ip(p, *ts));
        }
        rates.push(packets.len() as f64 / t.elapsed().as_secs_f64());
        flows = insp.flows().len();
    }
    rates.sort_by(f64::total_cmp);
    if !full {
        println!("(smoke run under cargo test; `cargo bench --bench classify` measures)");
    }
    println!(
        "classify: {} packets from {} captures ({} flows), {} rounds: median {:.2} M packets/s on one core (min {:.2}, max {:.2})",
        packets.len(),
        files.len(),
        flows,
        rounds,
        rates[rates.len() / 2] / 1e6,
        rates[0] / 1e6,
        rates[rates.len() - 1] / 1e6
    );
}
