//! `cargo bench --bench copies`: how fast the C library copies a block the
//! size of a relayed TCP segment (65,000 bytes, in cache), by where the
//! destination lies against the source modulo 4 KiB: the copies every
//! segment geowall relays goes through (into a socket's ring buffer and out
//! of it into a packet). Run it twice to see what the packet-moving
//! commands change on an AMD CPU (`src/cli/copies.rs`):
//!
//! ```sh
//! cargo bench --bench copies
//! GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=1073741824 cargo bench --bench copies
//! ```
//!
//! Each figure is the best of 5 rounds of 20,000 copies (`cargo test` runs
//! one short round as a smoke test).

use std::hint::black_box;
use std::time::Instant;

/// Bytes per copy: a segment at the TUN's 65,535-byte MTU, about.
const BLOCK: usize = 65_000;
/// Where the destination lies past the source, modulo 4 KiB.
const OFFSETS: [usize; 12] = [0, 1, 8, 16, 24, 31, 32, 64, 512, 2048, 4064, 4080];

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, n) = if full { (5, 20_000) } else { (1, 10) };
    // Page-aligned starts, so that the offsets are exact.
    let mut src = vec![1u8; BLOCK + 2 * 4096];
    let mut dst = vec![0u8; BLOCK + 2 * 4096];
    let s0 = src.as_ptr().align_offset(4096) + 64;
    let d0 = dst.as_ptr().align_offset(4096) + 64;
    black_box(&mut src);
    println!(
        "GLIBC_TUNABLES={}",
        std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| "(unset)".into())
    );
    println!("| destination past source (mod 4 KiB) | GB/s |");
    println!("|---|---|");
    for off in OFFSETS {
        let from = &src[s0..s0 + BLOCK];
        let best = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    let to = &mut dst[d0 + off..d0 + off + BLOCK];
                    to.copy_from_slice(black_box(from));
                    black_box(to);
                }
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let rate = (BLOCK * n) as f64 / best / 1e9;
        println!("| {off} | {rate:.1} |");
    }
}
