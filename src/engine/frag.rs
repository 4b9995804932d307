//! IPv4 and IPv6 fragment reassembly, bounded, so that no fragment is ever
//! classified or forwarded on its own.
//!
//! Policy (the strict choice a firewall should make):
//! - overlapping fragments discard the whole datagram (RFC 5722 requires
//!   this for IPv6; geowall applies it to IPv4 too, which defeats
//!   overlap-rewriting tricks); an exact duplicate is tolerated;
//! - a datagram that is not complete [`FragLimits::timeout_ns`] after its
//!   first fragment is discarded;
//! - at most [`FragLimits::max_datagrams`] datagrams are pending and at most
//!   [`FragLimits::max_bytes`] bytes are held in all; beyond that new
//!   datagrams are refused (counted) and pending ones keep their place;
//! - a datagram may not exceed 65,535 bytes of payload.
//!
//! A complete datagram is returned as a new, unfragmented IP packet (IPv4
//! header without options; IPv6 fixed header followed directly by the
//! upper-layer data) to be inspected like any other packet.

use std::net::IpAddr;

use crate::wire::packet::Packet;

/// Limits, with defaults that suit a phone or a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragLimits {
    /// Pending datagrams at most (default 256).
    pub max_datagrams: usize,
    /// Bytes held across all pending datagrams (default 4 MiB).
    pub max_bytes: usize,
    /// Time a datagram may take to complete (default 10 s).
    pub timeout_ns: u64,
}

impl Default for FragLimits {
    fn default() -> Self {
        Self {
            max_datagrams: 256,
            max_bytes: 4 << 20,
            timeout_ns: 10_000_000_000,
        }
    }
}

/// Why fragments were discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FragDrop {
    /// Fragments overlap.
    Overlap,
    /// The datagram would exceed 65,535 bytes.
    TooBig,
    /// Not completed in time.
    Timeout,
    /// No room for another pending datagram.
    Full,
    /// A fragment that cannot be right (data not a multiple of 8 before
    /// the last, two different ends).
    Malformed,
}

impl FragDrop {
    /// A stable name for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            FragDrop::Overlap => "fragment-overlap",
            FragDrop::TooBig => "fragment-too-big",
            FragDrop::Timeout => "fragment-timeout",
            FragDrop::Full => "fragment-table-full",
            FragDrop::Malformed => "fragment-malformed",
        }
    }
}

/// The outcome of adding a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragResult {
    /// Held until the rest arrives.
    Pending,
    /// The whole datagram, as an unfragmented IP packet.
    Complete(Vec<u8>),
    /// Discarded (with every fragment of its datagram).
    Dropped(FragDrop),
}

#[derive(Debug)]
struct Pending {
    key: (IpAddr, IpAddr, u8, u32),
    first_ns: u64,
    /// (offset, data) pieces, sorted by offset, disjoint.
    pieces: Vec<(u32, Vec<u8>)>,
    /// Total length, once the last fragment is seen.
    end: Option<u32>,
    bytes: usize,
}

/// Reassembles fragments.
#[derive(Debug, Default)]
pub struct Reassembler {
    limits: FragLimits,
    pending: Vec<Pending>,
    held: usize,
    /// Datagrams timed out (counted when noticed).
    pub timed_out: u64,
}

impl Reassembler {
    /// A reassembler with these limits.
    pub fn new(limits: FragLimits) -> Self {
        Self {
            limits,
            pending: Vec::new(),
            held: 0,
            timed_out: 0,
        }
    }

    /// Bytes currently held.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Pending datagrams.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Discards datagrams older than the timeout; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.pending.len();
        let timeout = self.limits.timeout_ns;
        let mut freed = 0;
        self.pending.retain(|p| {
            let keep = now_ns.saturating_sub(p.first_ns) < timeout;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.held -= freed;
        let n = before - self.pending.len();
        self.timed_out += n as u64;
        n
    }

    /// Adds a fragment (`p.fragment` must be set; `p.l4` is its data).
    pub fn push(&mut self, p: &Packet<'_>, now_ns: u64) -> FragResult {
        let Some(f) = p.fragment else {
            return FragResult::Dropped(FragDrop::Malformed);
        };
        self.expire(now_ns);
        let data = p.l4;
        let start = f.offset;
        let Some(stop) = start.checked_add(data.len() as u32) else {
            return FragResult::Dropped(FragDrop::TooBig);
        };
        if stop > 65_535 {
            return self.discard_key((p.src, p.dst, p.proto, f.id), FragDrop::TooBig);
        }
        if f.more && !data.len().is_multiple_of(8) {
            return self.discard_key((p.src, p.dst, p.proto, f.id), FragDrop::Malformed);
        }
        let key = (p.src, p.dst, p.proto, f.id);
        let idx = match self.pending.iter().position(|x| x.key == key) {
            Some(i) => i,
            None => {
                if self.pending.len() >= self.limits.max_datagrams
                    || self.held + data.len() > self.limits.max_bytes
                {
                    return FragResult::Dropped(FragDrop::Full);
                }
                self.pending.push(Pending {
                    key,
                    first_ns: now_ns,
                    pieces: Vec::new(),
                    end: None,
                    bytes: 0,
                });
                self.pending.len() - 1
            }
        };
        if self.held + data.len() > self.limits.max_bytes {
            return self.discard_at(idx, FragDrop::Full);
        }
        let d = &mut self.pending[idx];
        if !f.more {
            if d.end.is_some_and(|e| e != stop) {
                return self.discard_at(idx, FragDrop::Malformed);
            }
            d.end = Some(stop);
        }
        if d.end.is_some_and(|e| stop > e) {
            return self.discard_at(idx, FragDrop::Malformed);
        }
        // Overlap check against the pieces held (exact duplicates pass).
        let pos = d.pieces.partition_point(|(o, _)| *o < start);
        let dup = d
            .pieces
            .get(pos)
            .is_some_and(|(o, b)| *o == start && b.as_slice() == data);
        if !dup {
            let prev_overlaps = pos > 0 && {
                let (o, b) = &d.pieces[pos - 1];
                o + b.len() as u32 > start
            };
            let next_overlaps = d.pieces.get(pos).is_some_and(|(o, _)| *o < stop);
            if prev_overlaps || next_overlaps {
                return self.discard_at(idx, FragDrop::Overlap);
            }
            d.pieces.insert(pos, (start, data.to_vec()));
            d.bytes += data.len();
            self.held += data.len();
        }
        // Complete when the pieces cover [0, end) without gaps.
        let d = &self.pending[idx];
        let Some(end) = d.end else {
            return FragResult::Pending;
        };
        let mut at = 0u32;
        for (o, b) in &d.pieces {
            if *o != at {
                return FragResult::Pending;
            }
            at += b.len() as u32;
        }
        if at != end {
            return FragResult::Pending;
        }
        let d = self.pending.swap_remove(idx);
        self.held -= d.bytes;
        let mut payload = Vec::with_capacity(end as usize);
        for (_, b) in d.pieces {
            payload.extend_from_slice(&b);
        }
        FragResult::Complete(rebuild(p.src, p.dst, p.proto, &payload))
    }

    fn discard_at(&mut self, idx: usize, why: FragDrop) -> FragResult {
        let d = self.pending.swap_remove(idx);
        self.held -= d.bytes;
        FragResult::Dropped(why)
    }

    fn discard_key(&mut self, key: (IpAddr, IpAddr, u8, u32), why: FragDrop) -> FragResult {
        if let Some(i) = self.pending.iter().position(|x| x.key == key) {
            return self.discard_at(i, why);
        }
        FragResult::Dropped(why)
    }
}

/// An unfragmented packet around a reassembled payload.
fn rebuild(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + payload.len()) as u16;
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = super::reply::checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h.extend_from_slice(payload);
            h
        }
        _ => {
            let (s, d) = match (src, dst) {
                (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets(), d.octets()),
                (IpAddr::V4(s), IpAddr::V6(d)) => (s.to_ipv6_mapped().octets(), d.octets()),
                (IpAddr::V6(s), IpAddr::V4(d)) => (s.octets(), d.to_ipv6_mapped().octets()),
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    (s.to_ipv6_mapped().octets(), d.to_ipv6_mapped().octets())
                }
            };
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            h.push(proto);
            h.push(64);
            h.extend_from_slice(&s);
            h.extend_from_slice(&d);
            h.extend_from_slice(payload);
            h
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::{Transport, parse_ip};

    /// A UDP datagram to 203.0.113.5:8130 with `len` bytes of payload.
    fn udp_v4(len: usize) -> Vec<u8> {
        let mut l4 = vec![0x9C, 0x40, 0x1F, 0xC2];
        l4.extend_from_slice(&((8 + len) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend((0..len).map(|i| (i % 251) as u8));
        l4
    }

    /// IPv4 fragments of `l4` cut at the given offsets (multiples of 8).
    fn frags_v4(l4: &[u8], cuts: &[usize], id: u16) -> Vec<Vec<u8>> {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(l4.len());
        bounds
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                let more = b < l4.len();
                let total = (20 + b - a) as u16;
                let ff = ((a / 8) as u16) | if more { 0x2000 } else { 0 };
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&ff.to_be_bytes());
                h.extend_from_slice(&[64, 17, 0, 0, 192, 0, 2, 10, 203, 0, 113, 5]);
                h.extend_from_slice(&l4[a..b]);
                h
            })
            .collect()
    }

    fn run(r: &mut Reassembler, frags: &[Vec<u8>]) -> FragResult {
        let mut last = FragResult::Pending;
        for f in frags {
            let p = parse_ip(f).expect("parses");
            last = r.push(&p, 0);
            if !matches!(last, FragResult::Pending) {
                return last;
            }
        }
        last
    }

    #[test]
    fn in_order_out_of_order_and_tiny_first() {
        let l4 = udp_v4(3000);
        for cuts in [vec![1480], vec![8, 1480], vec![1480, 2960]] {
            for reverse in [false, true] {
                let mut fr = frags_v4(&l4, &cuts, 7);
                if reverse {
                    fr.reverse();
                }
                let mut r = Reassembler::default();
                let FragResult::Complete(pkt) = run(&mut r, &fr) else {
                    panic!("complete for {cuts:?}")
                };
                let p = parse_ip(&pkt).expect("rebuilt packet parses");
                assert!(p.fragment.is_none());
                let Transport::Udp { dport, payload, .. } = p.transport else {
                    panic!("udp")
                };
                assert_eq!((dport, payload), (8130, &l4[8..]));
                assert_eq!((r.pending(), r.held_bytes()), (0, 0));
            }
        }
    }

    #[test]
    fn overlapping_fragments_discard_the_datagram() {
        let l4 = udp_v4(2000);
        let mut fr = frags_v4(&l4, &[1000], 9);
        // A second "first" fragment rewriting the header region overlaps.
        let mut evil = frags_v4(&l4[..16], &[8], 9)[1].clone();
        evil[6] = 0x20;
        evil[7] = 0x01; // offset 8, MF
        fr.insert(1, evil);
        let mut r = Reassembler::default();
        assert_eq!(
            run(&mut r, &fr[..2]),
            FragResult::Dropped(FragDrop::Overlap)
        );
        assert_eq!(r.held_bytes(), 0);
        // An exact duplicate is fine.
        let fr = frags_v4(&l4, &[1000], 10);
        let mut r = Reassembler::default();
        assert!(matches!(
            run(&mut r, &[fr[0].clone(), fr[0].clone(), fr[1].clone()]),
            FragResult::Complete(_)
        ));
    }

    #[test]
    fn never_completed_times_out_and_limits_hold() {
        let l4 = udp_v4(2000);
        let fr = frags_v4(&l4, &[1000], 11);
        let mut r = Reassembler::new(FragLimits {
            max_datagrams: 2,
            max_bytes: 5000,
            timeout_ns: 1_000,
        });
        let p = parse_ip(&fr[0]).expect("parses");
        assert_eq!(r.push(&p, 0), FragResult::Pending);
        assert_eq!(r.expire(999), 0);
        assert_eq!(r.expire(1_000), 1);
        assert_eq!((r.timed_out, r.held_bytes()), (1, 0));
        // Table full: a third datagram is refused, the two pending stay.
        for id in [1u16, 2] {
            let f = frags_v4(&l4, &[1000], id);
            assert_eq!(
                r.push(&parse_ip(&f[0]).expect("p"), 5_000),
                FragResult::Pending
            );
        }
        let f3 = frags_v4(&l4, &[1000], 3);
        assert_eq!(
            r.push(&parse_ip(&f3[0]).expect("p"), 5_000),
            FragResult::Dropped(FragDrop::Full)
        );
        let f1 = frags_v4(&l4, &[1000], 1);
        assert!(matches!(
            r.push(&parse_ip(&f1[1]).expect("p"), 5_000),
            FragResult::Complete(_)
        ));
    }

    #[test]
    fn oversized_datagrams_are_dropped() {
        let l4 = udp_v4(100);
        let mut fr = frags_v4(&l4, &[64], 12);
        // Claim an offset near 64 KiB.
        fr[1][6] = 0x1F;
        fr[1][7] = 0xFF;
        let mut r = Reassembler::default();
        assert_eq!(run(&mut r, &fr), FragResult::Dropped(FragDrop::TooBig));
    }

    #[test]
    fn ipv6_fragments() {
        let l4 = udp_v4(1600);
        let mut pkts = Vec::new();
        for (a, b) in [(0usize, 1200usize), (1200, l4.len())] {
            let more = b < l4.len();
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&((8 + b - a) as u16).to_be_bytes());
            h.push(44);
            h.push(64);
            h.extend_from_slice(&[
                0x20, 0x01, 0x0d, 0xb8, 0, 0x86, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ]);
            h.extend_from_slice(&[
                0x20, 0x01, 0x0d, 0xb8, 0, 0x86, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
            ]);
            h.extend_from_slice(&[17, 0]);
            h.extend_from_slice(&(((a as u16) & 0xFFF8) | u16::from(more)).to_be_bytes());
            h.extend_from_slice(&0xABCD_u32.to_be_bytes());
            h.extend_from_slice(&l4[a..b]);
            pkts.push(h);
        }
        pkts.reverse();
        let mut r = Reassembler::default();
        let FragResult::Complete(pkt) = run(&mut r, &pkts) else {
            panic!("complete")
        };
        let p = parse_ip(&pkt).expect("parses");
        assert!(matches!(p.transport, Transport::Udp { dport: 8130, .. }));
        assert_eq!(p.dst.to_string(), "2001:db8:86::2");
    }

    proptest::proptest! {
        #[test]
        fn any_fragmentation_in_any_order_reassembles(len in 9usize..4000, cuts in proptest::collection::btree_set(1usize..500, 0..6), seed in proptest::prelude::any::<u64>()) {
            let l4 = udp_v4(len);
            let cuts: Vec<usize> = cuts.into_iter().map(|c| c * 8).filter(|&c| c < l4.len()).collect();
            let mut fr = frags_v4(&l4, &cuts, 5);
            // A deterministic shuffle.
            let mut x = seed | 1;
            for i in (1..fr.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                fr.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut r = Reassembler::default();
            let res = if cuts.is_empty() { FragResult::Pending } else { run(&mut r, &fr) };
            if !cuts.is_empty() {
                let FragResult::Complete(pkt) = res else { return Err(proptest::test_runner::TestCaseError::fail("not complete")) };
                let p = parse_ip(&pkt).map_err(|_| proptest::test_runner::TestCaseError::fail("parse"))?;
                proptest::prop_assert_eq!(p.l4, &l4[..]);
                proptest::prop_assert_eq!(r.held_bytes(), 0);
            }
        }

        #[test]
        fn arbitrary_fragments_never_panic_or_leak_memory(frags in proptest::collection::vec((0u16..8192, proptest::prelude::any::<bool>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0u16..4), 0..40)) {
            let mut r = Reassembler::new(FragLimits { max_datagrams: 3, max_bytes: 1000, timeout_ns: 1_000_000 });
            for (i, (off, more, data, id)) in frags.into_iter().enumerate() {
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&((20 + data.len()) as u16).to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&((off & 0x1FFF) | if more { 0x2000 } else { 0 }).to_be_bytes());
                h.extend_from_slice(&[64, 17, 0, 0, 192, 0, 2, 1, 198, 51, 100, 1]);
                h.extend_from_slice(&data);
                if let Ok(p) = parse_ip(&h) && p.fragment.is_some() {
                    let _ = r.push(&p, i as u64 * 100_000);
                }
                proptest::prop_assert!(r.held_bytes() <= 1000);
                proptest::prop_assert!(r.pending() <= 3);
            }
        }
    }
}
