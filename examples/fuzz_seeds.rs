//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/TARGET/`) from
//! real captures (`tests/fixtures/ndpi`, or the folder given): each IP
//! packet, each payload, each DNS message, each whole capture, and the
//! shipped presets. `fuzz/run` calls it:
//! `cargo run --release --example fuzz_seeds -- [CAPTURES_DIR]`.

use std::path::{Path, PathBuf};

use geowall::wire::capture::Capture;
use geowall::wire::packet::{Transport, parse_ip, strip_link};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus folder");
    std::fs::write(dir.join(name), bytes).expect("corpus file");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let here = root.join("fuzz");
    let src = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/fixtures/ndpi"));
    let corpus = here.join("corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{}: {e}", src.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    let mut counts = [0usize; 4];
    for f in &files {
        let stem = f.file_name().and_then(|n| n.to_str()).unwrap_or("capture");
        let bytes = std::fs::read(f).expect("capture");
        write(&corpus.join("loaders"), stem, &bytes);
        counts[0] += 1;
        let Ok(cap) = Capture::new(&bytes) else {
            continue;
        };
        for (i, frame) in cap.flatten().enumerate().take(400) {
            let Ok(ip) = strip_link(frame.link, frame.data) else {
                continue;
            };
            // engine_packets: one "packet from the TUN" operation.
            let mut op = vec![0u8];
            op.extend_from_slice(&(ip.len().min(65_535) as u16).to_be_bytes());
            op.extend_from_slice(ip);
            write(&corpus.join("engine_packets"), &format!("{stem}-{i}"), &op);
            counts[1] += 1;
            let Ok(p) = parse_ip(ip) else { continue };
            let (payload, port) = match p.transport {
                Transport::Udp {
                    payload,
                    dport,
                    sport,
                } => (payload, dport.min(sport)),
                Transport::Tcp {
                    payload,
                    dport,
                    sport,
                    ..
                } => (payload, dport.min(sport)),
                _ => continue,
            };
            if payload.is_empty() {
                continue;
            }
            write(&corpus.join("sniffers"), &format!("{stem}-{i}"), payload);
            counts[2] += 1;
            if port == 53 {
                let mut d = vec![payload.len().min(255) as u8];
                d.extend_from_slice(payload);
                d.extend_from_slice(payload);
                write(&corpus.join("dns_messages"), &format!("{stem}-{i}"), &d);
                counts[3] += 1;
            }
        }
    }
    for p in ["default", "clubhouse", "strict"] {
        let t = std::fs::read(root.join(format!("rules/presets/{p}.toml"))).expect("preset");
        write(&corpus.join("rules"), p, &t);
    }
    // bundle: a real one (unsigned) and its content, from the clubhouse
    // preset; the target signs what it is given as content.
    let dir = std::env::temp_dir().join(format!("geowall-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    std::fs::copy(
        root.join("rules/presets/clubhouse.toml"),
        dir.join("policy.toml"),
    )
    .expect("preset");
    let b = geowall::policy::bundle::build(&dir, 1, 1_700_000_000, 1_900_000_000)
        .expect("the preset builds into a bundle");
    let _ = std::fs::remove_dir_all(&dir);
    write(&corpus.join("bundle"), "whole", &b);
    // The header is 88 bytes; an unsigned bundle ends with one 0 byte.
    write(&corpus.join("bundle"), "content", &b[88..b.len() - 1]);
    println!(
        "seeds: {} captures, {} packets, {} payloads, {} DNS messages, 3 presets, 2 bundles into {}",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        corpus.display()
    );
}
