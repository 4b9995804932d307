//! BitTorrent's uTP (BEP 29), recognised by its connection handshake so
//! that a transfer's steady stream of small acknowledgements is not taken
//! for media: a SYN from the initiator, and the responder's STATE that
//! carries the SYN's connection id and acknowledges its sequence number.
//!
//! The header is 20 bytes: type (high 4 bits) and version 1 (low 4 bits),
//! the first extension's type, connection id, two timestamps, the window,
//! sequence and acknowledgement numbers; then a chain of extensions (next
//! type, length, data) until type 0.

use super::bytes::be16;

/// Packet types (high nibble of the first byte).
const ST_STATE: u8 = 2;
const ST_SYN: u8 = 4;
/// Protocol version (low nibble).
const VERSION: u8 = 1;
const HEADER: usize = 20;
/// Extension types defined so far: none, selective acknowledgement,
/// extension bits (and two that clients have used since).
const MAX_EXTENSION: u8 = 4;

/// A uTP packet of `kind` with no payload after its extensions (as SYN and
/// STATE are): its connection id, sequence and acknowledgement numbers.
fn bare(p: &[u8], kind: u8) -> Option<(u16, u16, u16)> {
    if p.len() < HEADER || p[0] != (kind << 4 | VERSION) {
        return None;
    }
    let (mut ext, mut at) = (p[1], HEADER);
    while ext != 0 {
        if ext > MAX_EXTENSION {
            return None;
        }
        let (next, len) = (*p.get(at)?, usize::from(*p.get(at + 1)?));
        ext = next;
        at += 2 + len;
    }
    (at == p.len()).then_some((be16(p, 2)?, be16(p, 16)?, be16(p, 18)?))
}

/// A uTP SYN: its connection id and sequence number.
pub fn syn(p: &[u8]) -> Option<(u16, u16)> {
    bare(p, ST_SYN).map(|(id, seq, _)| (id, seq))
}

/// Whether `p` is the responder's STATE answering a SYN with connection id
/// `id` and sequence number `seq`.
pub fn answers_syn(p: &[u8], (id, seq): (u16, u16)) -> bool {
    bare(p, ST_STATE).is_some_and(|(i, _, ack)| i == id && ack == seq)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A uTP header of `kind` for connection `id` with `seq` and `ack`,
    /// and the extension chain `exts` (type, data).
    pub(crate) fn utp(kind: u8, id: u16, seq: u16, ack: u16, exts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut p = vec![kind << 4 | VERSION, exts.first().map_or(0, |e| e.0)];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // timestamp
        p.extend_from_slice(&0u32.to_be_bytes()); // timestamp difference
        p.extend_from_slice(&0x0010_0000u32.to_be_bytes()); // window
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ack.to_be_bytes());
        for (i, (_, data)) in exts.iter().enumerate() {
            p.push(exts.get(i + 1).map_or(0, |e| e.0));
            p.push(u8::try_from(data.len()).unwrap_or(0));
            p.extend_from_slice(data);
        }
        p
    }

    #[test]
    fn a_syn_and_the_state_that_answers_it() {
        let s = utp(ST_SYN, 0x4321, 7, 0, &[(2, &[0; 8])]);
        let id = syn(&s).expect("syn");
        assert_eq!(id, (0x4321, 7));
        assert!(answers_syn(&utp(ST_STATE, 0x4321, 900, 7, &[]), id));
        assert!(
            !answers_syn(&utp(ST_STATE, 0x4322, 900, 7, &[]), id),
            "another id"
        );
        assert!(
            !answers_syn(&utp(ST_STATE, 0x4321, 900, 8, &[]), id),
            "acks another"
        );
        let mut with_data = utp(ST_SYN, 0x4321, 7, 0, &[]);
        with_data.push(0);
        assert_eq!(syn(&with_data), None, "a SYN carries no payload");
        let mut v2 = s.clone();
        v2[0] = ST_SYN << 4 | 2;
        assert_eq!(syn(&v2), None, "version 1 only");
        let mut cut = s;
        cut.pop();
        assert_eq!(syn(&cut), None, "the extension runs past the end");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = syn(&b);
            let _ = answers_syn(&b, (1, 1));
        }
    }
}
