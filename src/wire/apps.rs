//! UDP application protocols that are neither media nor web, recognised so
//! that their steady pace is not taken for a call's: TFTP (RFC 1350) file
//! transfers, AFS's RX remote procedure calls, and Nintendo's PIA game
//! transport.

use super::bytes::{be16, be32};

/// TFTP opcodes (RFC 1350, RFC 2347): read request, write request, data,
/// acknowledgement, error, option acknowledgement.
const TFTP_RRQ: u16 = 1;
const TFTP_WRQ: u16 = 2;
const TFTP_DATA: u16 = 3;
const TFTP_ACK: u16 = 4;
/// TFTP's well-known port, where requests go.
const TFTP_PORT: u16 = 69;
/// A TFTP data packet: opcode, block number, at most 512 bytes of file
/// (RFC 1350) or, with the blocksize option (RFC 2348), at most 65,464.
const TFTP_DATA_MAX: usize = 4 + 65_464;

/// A TFTP read or write request to port 69: opcode 1 or 2, then a file
/// name and a transfer mode (`netascii`, `octet` or `mail`, any case), each
/// ended by a zero byte; options may follow (RFC 2347).
pub fn tftp_request(p: &[u8], dport: u16) -> bool {
    if dport != TFTP_PORT || !matches!(be16(p, 0), Some(TFTP_RRQ | TFTP_WRQ)) {
        return false;
    }
    let mut fields = p[2..].split(|&b| b == 0);
    let (Some(file), Some(mode)) = (fields.next(), fields.next()) else {
        return false;
    };
    !file.is_empty()
        && file.iter().all(|b| (0x20..0x7F).contains(b))
        && ["netascii", "octet", "mail"]
            .iter()
            .any(|m| mode.eq_ignore_ascii_case(m.as_bytes()))
        && p.last() == Some(&0)
}

/// A TFTP data packet: its block number. Alone a weak sign (four bytes of
/// header); the acknowledgement of the same block coming back
/// ([`tftp_ack`]) makes it a strong one.
pub fn tftp_data(p: &[u8]) -> Option<u16> {
    (p.len() <= TFTP_DATA_MAX && be16(p, 0)? == TFTP_DATA).then(|| be16(p, 2))?
}

/// A TFTP acknowledgement (exactly four bytes): the block it acknowledges.
pub fn tftp_ack(p: &[u8]) -> Option<u16> {
    (p.len() == 4 && be16(p, 0)? == TFTP_ACK).then(|| be16(p, 2))?
}

/// AFS's RX ports: file server 7000, cache manager 7001, protection 7002,
/// volume location 7003, and the other AFS services to 7009.
fn rx_port(port: u16) -> bool {
    (7000..=7009).contains(&port)
}

/// The size of an RX header: epoch, connection id, call number, sequence
/// number and serial number (4 bytes each), packet type, flags, user
/// status, security index (1 each), checksum and service id (2 each).
const RX_HEADER: usize = 28;

/// An RX packet on an AFS port (one end 7000-7009): a whole header whose
/// packet type is one RX defines (1 data to 13 version), whose flags use
/// only RX's bits, whose security index is one AFS uses (0 none, 1
/// rxkad, 2 rxkad-k5... at most 3) and whose connection id counts calls in
/// its low two bits (a channel number 0-3 is kept there, the rest is the
/// id).
pub fn rx(p: &[u8], ports: (u16, u16)) -> bool {
    if p.len() < RX_HEADER || !(rx_port(ports.0) || rx_port(ports.1)) {
        return false;
    }
    let (kind, flags, security) = (p[20], p[21], p[23]);
    // An epoch of 0 is no time RX's clients start at.
    be32(p, 0).is_some_and(|e| e != 0)
        && (1..=13).contains(&kind)
        && flags & 0xC0 == 0
        && security <= 3
}

/// Nintendo PIA's magic: every packet of its game sessions starts with it.
const PIA_MAGIC: [u8; 4] = [0x32, 0xAB, 0x98, 0x64];

/// A Nintendo PIA packet: its magic, a protocol version byte (1 to 9 in the
/// versions seen) and at least a header's worth of bytes after it.
pub fn nintendo_pia(p: &[u8]) -> bool {
    p.len() >= 20 && p[..4] == PIA_MAGIC && (1..=9).contains(&p[4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bytes::hex;

    /// Packets from nDPI 4.2's `tftp.pcap`: a read request for
    /// `rfc1350.txt`, a write request for `zz.bin`, the first data block
    /// and its acknowledgement.
    #[test]
    fn tftp_from_a_capture() {
        let rrq = hex("0001726663313335302e747874006f6374657400");
        let wrq = hex("00027a7a2e62696e006e6574617363696900");
        assert!(tftp_request(&rrq, 69));
        assert!(tftp_request(&wrq, 69));
        assert!(!tftp_request(&rrq, 70), "requests go to port 69");
        let mut bad_mode = rrq.clone();
        bad_mode[14] = b'x';
        assert!(!tftp_request(&bad_mode, 69));
        assert!(!tftp_request(&rrq[..rrq.len() - 1], 69), "unterminated");
        let data = hex("000300010a0a0a0a0a0a4e6574776f726b20576f726b696e67");
        assert_eq!(tftp_data(&data), Some(1));
        assert_eq!(tftp_ack(&hex("00040001")), Some(1));
        assert_eq!(tftp_ack(&hex("0004000100")), None, "an ack is 4 bytes");
        assert_eq!(tftp_data(&hex("00040001")), None);
        assert_eq!(tftp_ack(&[0, 4]), None);
    }

    /// The first packets of an RX call between an AFS cache manager (7001)
    /// and a file server (7000), from nDPI 4.2's `rx.pcap`.
    #[test]
    fn rx_from_a_capture() {
        let call = hex("d70fb3305c224fb0000000010000000100000001010500000000000100010004");
        let ack = hex(
            "d70fb3305c224fb0000000010000000000000001022200000000000100000000000000010000000100000000060101000000000005a4000005a40000001000000001",
        );
        assert!(rx(&call, (7001, 7000)));
        assert!(rx(&ack, (7000, 7001)));
        assert!(!rx(&call, (40000, 443)), "AFS ports only");
        assert!(!rx(&call[..27], (7001, 7000)));
        let mut bad = call.clone();
        bad[20] = 14;
        assert!(!rx(&bad, (7001, 7000)), "no such packet type");
        let mut bad = call.clone();
        bad[23] = 9;
        assert!(!rx(&bad, (7001, 7000)), "no such security index");
    }

    /// A PIA packet from nDPI 4.2's `nintendo.pcap` (its first 40 bytes).
    #[test]
    fn nintendo_pia_from_a_capture() {
        let p =
            hex("32ab986402000000ecc00000895c564c741760b90c98486fdd31610a8f43f745f0a965db80e9590f");
        assert!(nintendo_pia(&p));
        assert!(!nintendo_pia(&p[..12]));
        let mut other = p.clone();
        other[1] = 0xAC;
        assert!(!nintendo_pia(&other));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            ports in proptest::prelude::any::<(u16, u16)>(),
        ) {
            let _ = tftp_request(&b, 69);
            let _ = tftp_request(&b, ports.1);
            let _ = tftp_data(&b);
            let _ = tftp_ack(&b);
            let _ = rx(&b, ports);
            let _ = rx(&b, (7000, ports.1));
            let _ = nintendo_pia(&b);
            let mut request = vec![0, 1];
            request.extend_from_slice(&b);
            let _ = tftp_request(&request, 69);
        }
    }
}
