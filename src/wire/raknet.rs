//! RakNet (the game transport of Roblox, Minecraft Bedrock and others),
//! recognised by its offline messages so that a game is not taken for
//! media: every one carries the same 16-byte "offline message" magic at a
//! place its type fixes. Connected RakNet datagrams start with 0x80-0x8F
//! and would read as RTP; the handshake before them does not.

/// The offline message magic (public protocol documentation).
const MAGIC: [u8; 16] = [
    0x00, 0xFF, 0xFF, 0x00, 0xFE, 0xFE, 0xFE, 0xFE, 0xFD, 0xFD, 0xFD, 0xFD, 0x12, 0x34, 0x56, 0x78,
];

/// Where the magic sits in each offline message type: unconnected pings
/// (0x01, 0x02: after an 8-byte time), the unconnected pong (0x1C: after
/// the time and the server's 8-byte id), the open-connection requests and
/// replies (0x05-0x08: right after the type), and "incompatible protocol"
/// (0x19: after the protocol version).
fn magic_at(kind: u8) -> Option<usize> {
    match kind {
        0x01 | 0x02 => Some(9),
        0x1C => Some(17),
        0x05..=0x08 => Some(1),
        0x19 => Some(2),
        _ => None,
    }
}

/// A RakNet offline message: a known type with the magic where that type
/// puts it.
pub fn offline_message(p: &[u8]) -> bool {
    let Some(at) = p.first().copied().and_then(magic_at) else {
        return false;
    };
    p.get(at..at + MAGIC.len()) == Some(&MAGIC[..])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Open Connection Request 1: type, magic, protocol version, then
    /// zero padding to the MTU being probed.
    pub(crate) fn open_connection_request(mtu: usize) -> Vec<u8> {
        let mut p = vec![0x05];
        p.extend_from_slice(&MAGIC);
        p.push(11);
        p.resize(mtu, 0);
        p
    }

    /// An Unconnected Ping: type, 8-byte time, magic, 8-byte client id.
    pub(crate) fn unconnected_ping() -> Vec<u8> {
        let mut p = vec![0x01];
        p.extend_from_slice(&1_234_567u64.to_be_bytes());
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        p
    }

    #[test]
    fn offline_messages_by_their_magic() {
        assert!(offline_message(&open_connection_request(1464)));
        assert!(offline_message(&unconnected_ping()));
        let mut moved = unconnected_ping();
        moved[0] = 0x05;
        assert!(
            !offline_message(&moved),
            "the magic where another type puts it"
        );
        let mut other = open_connection_request(100);
        other[5] ^= 1;
        assert!(!offline_message(&other), "one byte of the magic changed");
        assert!(!offline_message(&[0x05]), "too short");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = offline_message(&b);
        }
    }
}
