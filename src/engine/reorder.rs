//! One direction of a captured TCP stream put back in order for the
//! inspectors (the audit's; the live engine's userspace stack orders its
//! own): retransmitted bytes are given once, a segment that came early
//! waits for the gap before it to fill, and a gap that a capture never
//! fills (a segment the capture lost) is stepped over once too much waits
//! behind it.
//!
//! Bounds: a direction holds at most [`MAX_WAITING_SEGMENTS`] early
//! segments and [`MAX_WAITING_BYTES`] bytes, and all directions together
//! at most what the caller's budget allows ([`StreamOrder::push`]); past
//! either the waiting bytes are given at once, in sequence order, over the
//! gap.

/// Early segments one direction holds at most before it steps over its gap.
pub const MAX_WAITING_SEGMENTS: usize = 16;
/// Early bytes one direction holds at most before it steps over its gap.
pub const MAX_WAITING_BYTES: usize = 64 * 1024;
/// A segment further ahead than this is no early segment but a stream
/// the capture picked up again after losing much of it: the order starts
/// over from it.
const RESYNC: u32 = 1 << 30;

/// What one push did, for the inspector's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// The segment's bytes were all given before (a retransmission).
    pub duplicate: bool,
    /// The segment came before a gap filled and waits.
    pub early: bool,
    /// A gap was stepped over (its bytes never came).
    pub gap_skipped: bool,
}

/// One direction of a TCP stream's order.
#[derive(Debug, Default)]
pub struct StreamOrder {
    /// The next sequence number expected, once one segment was seen.
    next: Option<u32>,
    /// Early segments: sequence number and bytes, in arrival order.
    waiting: Vec<(u32, Vec<u8>)>,
    waiting_bytes: usize,
    /// Where the last SYN seen put the stream's first byte.
    syn_start: Option<u32>,
}

impl StreamOrder {
    /// A direction that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held now.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }

    /// One segment: sequence number `seq`, whether it is a SYN, and its
    /// payload. Gives `deliver` the stream's next bytes, in order, each
    /// byte once. `budget` is what all directions together may still hold
    /// (it shrinks by what this one holds and grows by what it gives).
    pub fn push(
        &mut self,
        seq: u32,
        syn: bool,
        payload: &[u8],
        budget: &mut usize,
        mut deliver: impl FnMut(&[u8]),
    ) -> Pushed {
        let mut out = Pushed::default();
        let start = if syn { seq.wrapping_add(1) } else { seq };
        if syn && self.syn_start != Some(start) {
            // A SYN other than the one this side began with (not its
            // retransmission): a new connection on the same addresses and
            // ports (a long capture, a port used again), a new sequence
            // space.
            if self.next.is_some_and(|n| n != start) {
                out.gap_skipped = !self.waiting.is_empty();
                self.release(None, budget, &mut deliver);
                self.next = Some(start);
            }
            self.syn_start = Some(start);
        }
        let next = *self.next.get_or_insert(start);
        if payload.is_empty() {
            return out;
        }
        let ahead = start.wrapping_sub(next);
        if ahead >= RESYNC && ahead < RESYNC.wrapping_mul(2) {
            // Far ahead (neither behind nor a plausible early segment):
            // the capture lost much of the stream; start over from here.
            self.release(None, budget, &mut deliver);
            self.next = Some(start);
            out.gap_skipped = true;
        } else if ahead != 0 && ahead < RESYNC {
            // Early: wait for the gap before it, within the bounds.
            if self.waiting.len() < MAX_WAITING_SEGMENTS
                && self.waiting_bytes + payload.len() <= MAX_WAITING_BYTES
                && payload.len() <= *budget
            {
                self.waiting.push((start, payload.to_vec()));
                self.waiting_bytes += payload.len();
                *budget -= payload.len();
                out.early = true;
                return out;
            }
            out.gap_skipped = true;
            self.release(Some((start, payload)), budget, &mut deliver);
            return out;
        }
        if !self.give(start, payload, &mut deliver) {
            out.duplicate = true;
        }
        self.drain(budget, &mut deliver);
        out
    }

    /// Whether the other side acknowledged bytes past this side's next
    /// expected one while segments wait here: then the gap before them
    /// reached the other side but not the capture, and will not fill.
    pub fn acked_past_gap(&self, ack: u32) -> bool {
        !self.waiting.is_empty()
            && self
                .next
                .is_some_and(|n| (1..RESYNC).contains(&ack.wrapping_sub(n)))
    }

    /// Gives every waiting segment now, over the gaps before them (the
    /// stream ended, or its capture did). Whether any was waiting.
    pub fn flush(&mut self, budget: &mut usize, mut deliver: impl FnMut(&[u8])) -> bool {
        let any = !self.waiting.is_empty();
        self.release(None, budget, &mut deliver);
        self.waiting = Vec::new();
        any
    }

    /// Gives what of `payload` (starting at `seq`) is past what was given;
    /// false if none of it was.
    fn give(&mut self, seq: u32, payload: &[u8], deliver: &mut impl FnMut(&[u8])) -> bool {
        let next = self.next.unwrap_or(seq);
        let behind = next.wrapping_sub(seq) as usize;
        // `seq` is at or before `next` here (wrapping).
        if behind >= payload.len() {
            return false;
        }
        deliver(&payload[behind..]);
        self.next = Some(seq.wrapping_add(payload.len() as u32));
        true
    }

    /// Gives every waiting segment the stream has now reached.
    fn drain(&mut self, budget: &mut usize, deliver: &mut impl FnMut(&[u8])) {
        while let Some(i) = self.reached() {
            let (seq, bytes) = self.waiting.swap_remove(i);
            self.waiting_bytes -= bytes.len();
            *budget += bytes.len();
            self.give(seq, &bytes, deliver);
        }
        if self.waiting.is_empty() {
            self.waiting = Vec::new();
        }
    }

    /// A waiting segment that starts at or before the next expected byte.
    fn reached(&self) -> Option<usize> {
        let next = self.next?;
        self.waiting
            .iter()
            .position(|(s, _)| next.wrapping_sub(*s) < RESYNC)
    }

    /// Gives every waiting segment now, and `extra` with them, in sequence
    /// order, stepping over the gaps between them.
    fn release(
        &mut self,
        extra: Option<(u32, &[u8])>,
        budget: &mut usize,
        deliver: &mut impl FnMut(&[u8]),
    ) {
        let Some(next) = self.next else { return };
        let waiting = std::mem::take(&mut self.waiting);
        *budget += self.waiting_bytes;
        self.waiting_bytes = 0;
        let mut all: Vec<(u32, &[u8])> = waiting.iter().map(|(s, b)| (*s, b.as_slice())).collect();
        all.extend(extra);
        all.sort_by_key(|(s, _)| s.wrapping_sub(next));
        for (seq, bytes) in all {
            // Over the gap: the stream goes on from this segment.
            if self.next.is_some_and(|n| seq.wrapping_sub(n) < RESYNC) {
                self.next = Some(seq);
            }
            self.give(seq, bytes, deliver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        o: &mut StreamOrder,
        budget: &mut usize,
        segs: &[(u32, bool, &[u8])],
    ) -> (Vec<u8>, Vec<Pushed>) {
        let mut got = Vec::new();
        let mut what = Vec::new();
        for &(seq, syn, p) in segs {
            what.push(o.push(seq, syn, p, budget, |b| got.extend_from_slice(b)));
        }
        (got, what)
    }

    #[test]
    fn in_order_retransmitted_overlapping_and_early() {
        let mut o = StreamOrder::new();
        let mut budget = 1 << 20;
        let (got, what) = run(
            &mut o,
            &mut budget,
            &[
                (1000, true, b""),
                (1001, false, b"GET "),
                // Retransmitted whole, then overlapping the next bytes.
                (1001, false, b"GET "),
                (1003, false, b"T /a"),
                // Early: waits for " HTTP" before it.
                (1012, false, b"/1.1"),
                (1007, false, b" HTTP"),
                // Retransmitted across what was given.
                (1010, false, b"TP/1"),
            ],
        );
        assert_eq!(got, b"GET /a HTTP/1.1");
        assert!(what[2].duplicate);
        assert!(what[4].early);
        assert!(what[6].duplicate);
        assert_eq!(o.waiting_bytes(), 0);
        assert_eq!(budget, 1 << 20, "all given back");
    }

    #[test]
    fn a_gap_the_capture_never_fills_is_stepped_over() {
        let mut o = StreamOrder::new();
        let mut budget = 1 << 20;
        let mut segs: Vec<(u32, bool, Vec<u8>)> = vec![(0, false, b"ab".to_vec())];
        // Byte 2 is lost; every segment after it is early.
        for i in 0..=MAX_WAITING_SEGMENTS as u32 {
            segs.push((3 + i, false, vec![b'c' + i as u8]));
        }
        let segs: Vec<(u32, bool, &[u8])> = segs
            .iter()
            .map(|(s, f, p)| (*s, *f, p.as_slice()))
            .collect();
        let (got, what) = run(&mut o, &mut budget, &segs);
        assert!(what.last().unwrap().gap_skipped);
        let want: Vec<u8> = b"ab"
            .iter()
            .copied()
            .chain((0..=MAX_WAITING_SEGMENTS as u8).map(|i| b'c' + i))
            .collect();
        assert_eq!(got, want, "everything after the gap, in order");
        // The stream goes on from there.
        let (more, _) = run(
            &mut o,
            &mut budget,
            &[(3 + MAX_WAITING_SEGMENTS as u32 + 1, false, b"!")],
        );
        assert_eq!(more, b"!");
        assert_eq!(budget, 1 << 20);
    }

    #[test]
    fn the_shared_budget_bounds_what_waits() {
        let mut o = StreamOrder::new();
        let mut budget = 3;
        let (got, what) = run(
            &mut o,
            &mut budget,
            &[(0, false, b"a"), (2, false, b"cd"), (4, false, b"ef")],
        );
        assert!(what[1].early);
        assert!(what[2].gap_skipped, "no budget left to wait");
        assert_eq!(got, b"acdef");
        assert_eq!(budget, 3);
    }

    /// The same ports used again by a new connection, its initial sequence
    /// number behind the old one's: its bytes are new, not retransmitted.
    #[test]
    fn a_new_connection_on_the_same_ports_starts_a_new_order() {
        let mut o = StreamOrder::new();
        let mut budget = 1 << 20;
        let (got, what) = run(
            &mut o,
            &mut budget,
            &[
                (5_000, true, b""),
                (5_001, false, b"old"),
                // A retransmitted SYN changes nothing.
                (5_000, true, b""),
                (5_001, false, b"old"),
                (100, true, b""),
                (101, false, b"new"),
            ],
        );
        assert_eq!(got, b"oldnew");
        assert!(what[3].duplicate);
        assert!(!what[5].duplicate);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut o = StreamOrder::new();
        let mut budget = 1 << 20;
        let (got, _) = run(
            &mut o,
            &mut budget,
            &[
                (u32::MAX - 1, false, b"ab"),
                (1, false, b"d"),
                (0, false, b"c"),
            ],
        );
        assert_eq!(got, b"abcd");
    }

    #[test]
    fn a_stream_picked_up_far_ahead_starts_over() {
        let mut o = StreamOrder::new();
        let mut budget = 1 << 20;
        let (got, what) = run(
            &mut o,
            &mut budget,
            &[(0, false, b"ab"), (0x5000_0000, false, b"xy")],
        );
        assert_eq!(got, b"abxy");
        assert!(what[1].gap_skipped);
    }

    proptest::proptest! {
        /// Any segments, in any order, any bounds: each byte given at most
        /// once per position, the budget back whole once nothing waits.
        #[test]
        fn never_panics_and_the_budget_comes_back(
            segs in proptest::collection::vec((0u32..200, proptest::prelude::any::<bool>(), 0usize..40), 0..60),
            budget in 0usize..500,
        ) {
            let mut o = StreamOrder::new();
            let mut b = budget;
            for (seq, syn, len) in segs {
                let p = vec![7u8; len];
                o.push(seq, syn, &p, &mut b, |_| {});
                proptest::prop_assert_eq!(b + o.waiting_bytes(), budget);
            }
        }
    }
}
