//! What random memory reads cost on this machine, as a floor under the
//! lookup and matching targets (shared by `--bench lookup` and `--bench
//! policy`).
//!
//! A lookup in a table of N bytes must read the table at least once, at a
//! place that depends on the key. [`Floor::independent`] times exactly that
//! and nothing else (one 8-byte read per key, at a line chosen from the
//! key, in a huge-page buffer of N bytes, every read independent of the
//! others so the CPU may overlap them all): no design that answers from
//! such a table runs faster on this machine. [`Floor::chase_ns`] times one
//! read that must wait for the previous one (a lookup's dependent steps).

use std::hint::black_box;
use std::time::Instant;

/// A huge-page-advised buffer whose 64-byte lines form one random cycle.
pub(crate) struct Floor {
    map: memmap2::MmapMut,
    start: usize,
    lines: usize,
}

const LINE: usize = 64;
const HUGE: usize = 2 << 20;

/// splitmix64: spreads keys and drives the shuffle.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Floor {
    /// A buffer of `bytes` (rounded up to whole lines, at least two).
    pub(crate) fn new(bytes: usize) -> Self {
        let lines = bytes.div_ceil(LINE).max(2);
        let mut map = memmap2::MmapOptions::new()
            .len(lines * LINE + HUGE)
            .map_anon()
            .expect("anonymous mapping for the memory floor");
        // As the world database's own mapping does (advice only).
        let _ = map.advise(memmap2::Advice::HugePage);
        let start = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
        // Sattolo's shuffle: one cycle through every line.
        let mut order: Vec<u64> = (0..lines as u64).collect();
        let mut seed = 0x5EED_u64;
        for i in (1..lines).rev() {
            seed = mix(seed);
            order.swap(i, (seed % i as u64) as usize);
        }
        let buf = &mut map[start..start + lines * LINE];
        for (i, &next) in order.iter().enumerate() {
            buf[i * LINE..i * LINE + 8].copy_from_slice(&next.to_le_bytes());
        }
        // order[i] is line i's successor: Sattolo's permutation is a cycle.
        Self { map, start, lines }
    }

    /// Size in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.lines * LINE
    }

    #[inline(always)]
    fn word(&self, line: usize) -> u64 {
        let at = self.start + line * LINE;
        self.map
            .get(at..at + 8)
            .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }

    /// One independent read per key; returns the checksum (keep it alive).
    pub(crate) fn independent(&self, keys: impl Iterator<Item = u64>) -> u64 {
        let lines = self.lines as u128;
        keys.fold(0u64, |acc, k| {
            let line = ((u128::from(mix(k)) * lines) >> 64) as usize;
            acc.wrapping_add(self.word(line))
        })
    }

    /// Nanoseconds per read when each read needs the previous one's value.
    pub(crate) fn chase_ns(&self, steps: usize) -> f64 {
        let mut at = 0usize;
        let t = Instant::now();
        for _ in 0..steps {
            at = self.word(at) as usize;
        }
        black_box(at);
        t.elapsed().as_secs_f64() * 1e9 / steps as f64
    }
}
