//! VPN tunnels on UDP, recognised so that a tunnel is not taken for media
//! by its shape: WireGuard (its handshake messages by their fixed sizes,
//! or transport data by a receiver index and a counter that go on from
//! one packet to the next), OpenVPN (a client's hard reset and the
//! server's answer that acknowledges the client's session id), IKE
//! (ISAKMP/IKEv2 headers on ports 500 and 4500, whose length field is the
//! datagram's) and ESP in UDP on port 4500 (two packets of one security
//! association, their sequence numbers going on); CAPWAP, which carries a
//! wireless controller's control messages and its access points' frames
//! (RFC 5415), and Cisco AnyConnect's DTLS tunnel (the pre-standard DTLS
//! version 0x0100).

use super::bytes::{be16, be32};

/// WireGuard message types and the sizes of the fixed-size ones
/// (WireGuard whitepaper, section 5.4): handshake initiation (148 bytes),
/// response (92), cookie reply (64). Every message starts with its type
/// and three zero bytes.
const WG_FIXED: [(u8, usize); 3] = [(1, 148), (2, 92), (3, 64)];
/// WireGuard transport data: type 4, the receiver's index, a 64-bit
/// little-endian counter, then the encrypted packet padded to 16 bytes
/// and its 16-byte tag: at least 32 bytes, a multiple of 16.
const WG_DATA: u8 = 4;

/// A WireGuard handshake message (initiation, response or cookie reply).
pub fn wireguard_handshake(p: &[u8]) -> bool {
    p.len() >= 4 && p[1..4] == [0, 0, 0] && WG_FIXED.iter().any(|&(t, n)| p[0] == t && p.len() == n)
}

/// A WireGuard transport data message: its receiver index and counter.
/// Alone this is a weak sign; two of them with the same receiver and a
/// counter that moved on by a little make it a strong one
/// ([`wireguard_data_follows`]).
pub fn wireguard_data(p: &[u8]) -> Option<(u32, u64)> {
    if p.len() < 32 || !p.len().is_multiple_of(16) || p[..4] != [WG_DATA, 0, 0, 0] {
        return None;
    }
    let receiver = u32::from_le_bytes(p.get(4..8)?.try_into().ok()?);
    let counter = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((receiver, counter))
}

/// Whether transport data `next` follows `prev` in one WireGuard session:
/// same receiver, counter ahead by 1 to 1,024 (packets may be lost or
/// reordered in a capture, not by thousands).
pub fn wireguard_data_follows(prev: (u32, u64), next: (u32, u64)) -> bool {
    prev.0 == next.0 && next.1 > prev.1 && next.1 - prev.1 <= 1024
}

/// OpenVPN opcodes (high 5 bits of the first byte; the low 3 are the key
/// id, 0 for a hard reset): client hard reset v2 (7) and v3 (10), server
/// hard reset v2 (8).
const OVPN_CLIENT_RESET: [u8; 2] = [7 << 3, 10 << 3];
const OVPN_SERVER_RESET: u8 = 8 << 3;

/// An OpenVPN client hard reset: opcode 7 or 10 with key id 0, then the
/// client's non-zero 8-byte session id, then at least a packet id (plain:
/// 14 bytes in all; with tls-auth or tls-crypt, more). Its session id.
pub fn openvpn_client_reset(p: &[u8]) -> Option<[u8; 8]> {
    if p.len() < 14 || p.len() > 1500 || !OVPN_CLIENT_RESET.contains(&p[0]) {
        return None;
    }
    let session: [u8; 8] = p[1..9].try_into().ok()?;
    (session != [0; 8]).then_some(session)
}

/// An OpenVPN server hard reset (opcode 8, key id 0) that acknowledges the
/// client's hard reset: it carries the client's session id as the remote
/// session id of its acknowledgement, after its own session id.
pub fn openvpn_server_reset(p: &[u8], client_session: &[u8; 8]) -> bool {
    p.len() >= 26
        && p.len() <= 1500
        && p[0] == OVPN_SERVER_RESET
        && p[9..].windows(8).any(|w| w == client_session)
}

/// IKE's ports: 500, and 4500 for NAT traversal, where IKE messages start
/// with a four-byte zero "non-ESP marker" (RFC 3948).
const IKE_PORT: u16 = 500;
const IKE_NATT_PORT: u16 = 4500;

/// An ISAKMP (IKEv1, RFC 2408) or IKEv2 (RFC 7296) message on port 500 or
/// 4500 (`ports`: either end): a non-zero initiator SPI, version 1.0 or
/// 2.0, an exchange type that version defines, and a length field equal
/// to the message's length.
pub fn ike(p: &[u8], ports: (u16, u16)) -> bool {
    let on = |port| ports.0 == port || ports.1 == port;
    let m = if on(IKE_NATT_PORT) && p.get(..4) == Some(&[0; 4]) {
        &p[4..]
    } else if on(IKE_PORT) {
        p
    } else {
        return false;
    };
    if m.len() < 28 || m[..8] == [0; 8] {
        return false;
    }
    let exchange_ok = match m[17] {
        0x10 => matches!(m[18], 1..=5 | 32 | 33),
        0x20 => matches!(m[18], 34..=37),
        _ => false,
    };
    exchange_ok && be32(m, 24).and_then(|l| usize::try_from(l).ok()) == Some(m.len())
}

/// ESP in UDP on port 4500 (RFC 3948): a Security Parameters Index of
/// 256 or more (0 is IKE's non-ESP marker, 1-255 are reserved) and a
/// sequence number, then the encrypted payload (at least 8 bytes here).
/// Its SPI and sequence number. Alone this is a weak sign; two of them
/// with the same SPI and a sequence that moved on by a little make a strong
/// one ([`esp_follows`]).
pub fn esp_in_udp(p: &[u8], ports: (u16, u16)) -> Option<(u32, u32)> {
    if (ports.0 != IKE_NATT_PORT && ports.1 != IKE_NATT_PORT) || p.len() < 16 {
        return None;
    }
    let spi = be32(p, 0)?;
    (spi >= 256).then_some((spi, be32(p, 4)?))
}

/// Whether ESP packet `next` follows `prev` in one direction of one
/// security association: same SPI, sequence ahead by 1 to 1,024.
pub fn esp_follows(prev: (u32, u32), next: (u32, u32)) -> bool {
    prev.0 == next.0 && next.1 > prev.1 && next.1 - prev.1 <= 1024
}

/// CAPWAP's control and data ports (RFC 5415).
const CAPWAP_CONTROL: u16 = 5246;
const CAPWAP_DATA: u16 = 5247;

/// A CAPWAP packet on its ports (either end 5246 or 5247): a DTLS preamble
/// (type 1, three zero bytes, then a DTLS record), or a CAPWAP header
/// (version 0, type 0) whose header length (HLEN, in 4-byte words, at
/// least the fixed 8 bytes) fits in the packet and whose wireless binding
/// is one RFC 5415 defines (0 reserved, 1 IEEE 802.11, 3 EPCGlobal).
pub fn capwap(p: &[u8], ports: (u16, u16)) -> bool {
    let on = |port| port == CAPWAP_CONTROL || port == CAPWAP_DATA;
    if !(on(ports.0) || on(ports.1)) {
        return false;
    }
    match p.first() {
        Some(0x01) => {
            p.len() >= 4 + 13
                && p[1..4] == [0, 0, 0]
                && (20..=26).contains(&p[4])
                && matches!(be16(p, 5), Some(0xFEFF | 0xFEFD))
        }
        Some(0x00) => capwap_header(p).is_some(),
        _ => false,
    }
}

/// A plain CAPWAP header's length in bytes, its wireless binding and
/// whether the frame it carries is in that binding's own format (the T
/// bit), if `p` starts with one.
fn capwap_header(p: &[u8]) -> Option<(usize, u8, bool)> {
    let (b1, b2) = (*p.get(1)?, *p.get(2)?);
    if *p.first()? != 0 {
        return None;
    }
    let hlen = usize::from(b1 >> 3) * 4;
    let wbid = (b2 >> 1) & 0x1F;
    (hlen >= 8 && hlen <= p.len() && matches!(wbid, 0 | 1 | 3)).then_some((hlen, wbid, b2 & 1 == 1))
}

/// The IP packet inside a CAPWAP data packet (UDP port 5247) carrying a
/// whole (not fragmented, not keep-alive) frame: an IEEE 802.3 frame, or
/// an unprotected IEEE 802.11 data frame with an LLC/SNAP header naming
/// IPv4 or IPv6.
pub fn capwap_data_inner(p: &[u8], ports: (u16, u16)) -> Option<&[u8]> {
    if ports.0 != CAPWAP_DATA && ports.1 != CAPWAP_DATA {
        return None;
    }
    let (hlen, wbid, native) = capwap_header(p)?;
    let flags = *p.get(3)?;
    // F (fragment) and K (keep-alive).
    if flags & 0x80 != 0 || flags & 0x08 != 0 {
        return None;
    }
    let frame = &p[hlen..];
    let ip = if native {
        if wbid != 1 {
            return None;
        }
        // Cisco's controllers send the frame control field byte-swapped;
        // the LLC/SNAP header that must follow tells which order it is in.
        let (a, b) = (*frame.first()?, *frame.get(1)?);
        super::packet::dot11_data_ip(frame, a, b)
            .or_else(|| super::packet::dot11_data_ip(frame, b, a))?
    } else {
        let ip = frame.get(14..)?;
        match be16(frame, 12)? {
            0x0800 | 0x86DD => ip,
            _ => return None,
        }
    };
    matches!(ip.first()? >> 4, 4 | 6).then_some(ip)
}

/// Cisco AnyConnect's DTLS tunnel (also OpenConnect's): a DTLS record with
/// the version number DTLS had before its standard (0x0100, kept by
/// OpenSSL as `DTLS1_BAD_VER` for Cisco, and today sent by little else), a
/// content type of 20 to 23 and a length that fits.
pub fn anyconnect_dtls(p: &[u8]) -> bool {
    p.len() >= 13
        && (20..=23).contains(&p[0])
        && be16(p, 1) == Some(0x0100)
        && be16(p, 11).is_some_and(|l| 13 + usize::from(l) <= p.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::bytes::hex;

    /// CAPWAP from nDPI 4.2's `capwap.pcap`: a DTLS-protected control
    /// message, a plain one, and a data packet carrying an 802.11 frame
    /// with a DHCP request inside (its first bytes).
    #[test]
    fn capwap_from_a_capture() {
        let dtls = hex(
            "0100000015feff0001000000000001003091525de0381a81cffbbc5c495068756e8580383b27a1c2ff20",
        );
        let plain = hex(
            "002002100000000006580a20690e20e80000000100006600001400010000270028020200010040960000",
        );
        let data = hex(
            "00204320000000000104ed4d0000000001082c00580a20690e201caba7f2139dffffffffffff0000aaaa03000000080045000148ec5a0000ff11ce4a00000000ffffffff00440043013499f701010600cc4ec6fe",
        );
        assert!(capwap(&dtls, (12380, 5246)));
        assert!(capwap(&plain, (12380, 5246)));
        assert!(capwap(&data, (12380, 5247)));
        assert!(!capwap(&plain, (12380, 5248)), "its ports only");
        let inner = capwap_data_inner(&data, (12380, 5247)).expect("an IPv4 packet inside");
        assert_eq!(&inner[..2], &[0x45, 0x00]);
        assert_eq!(&inner[12..16], &[0, 0, 0, 0], "DHCP's source 0.0.0.0");
        assert_eq!(capwap_data_inner(&data, (12380, 5246)), None, "data port");
        // The frame control field in the standard's byte order too.
        let mut standard = data.clone();
        standard.swap(16, 17);
        assert_eq!(capwap_data_inner(&standard, (12380, 5247)), Some(inner));
        assert_eq!(
            capwap_data_inner(&plain, (12380, 5247)),
            None,
            "no IP inside"
        );
        let mut fragment = data.clone();
        fragment[3] |= 0x80;
        assert_eq!(capwap_data_inner(&fragment, (12380, 5247)), None);
        let mut protected = data.clone();
        // The frame control field is byte-swapped (Cisco): flags first.
        protected[16] |= 0x40;
        assert_eq!(capwap_data_inner(&protected, (12380, 5247)), None);
        let mut long = data.clone();
        long[1] = 0xF8;
        assert!(
            !capwap(&long, (12380, 5247)),
            "header longer than the packet"
        );
    }

    /// AnyConnect's DTLS ClientHello from nDPI 4.2's `anyconnect-vpn.pcap`
    /// (its first 48 bytes, length field set to what is kept).
    #[test]
    fn anyconnect_dtls_from_a_capture() {
        let mut hello = hex(
            "160100000000000000000000560100004a000000000000004a0100ed89c4699ea16489a68421ebd0951f08172d595bf2",
        );
        assert!(!anyconnect_dtls(&hello), "the record is longer than kept");
        let kept = u16::try_from(hello.len() - 13).unwrap();
        hello[11..13].copy_from_slice(&kept.to_be_bytes());
        assert!(anyconnect_dtls(&hello));
        let mut standard = hello.clone();
        standard[1..3].copy_from_slice(&[0xFE, 0xFF]);
        assert!(!anyconnect_dtls(&standard), "standard DTLS is WebRTC's");
    }

    /// A WireGuard message of `kind` as the whitepaper lays it out (type,
    /// three zero bytes, then that message's fields, here filled).
    pub(crate) fn wg_message(kind: u8, len: usize) -> Vec<u8> {
        let mut p = vec![kind, 0, 0, 0];
        p.resize(len, 0x5A);
        p
    }

    /// WireGuard transport data to `receiver` with `counter`.
    pub(crate) fn wg_data(receiver: u32, counter: u64, len: usize) -> Vec<u8> {
        let mut p = vec![4, 0, 0, 0];
        p.extend_from_slice(&receiver.to_le_bytes());
        p.extend_from_slice(&counter.to_le_bytes());
        p.resize(len, 0xA5);
        p
    }

    /// An OpenVPN client hard reset without tls-auth (14 bytes).
    pub(crate) fn ovpn_client(session: [u8; 8]) -> Vec<u8> {
        let mut p = vec![0x38];
        p.extend_from_slice(&session);
        p.push(0); // no acknowledgements
        p.extend_from_slice(&0u32.to_be_bytes()); // message packet id
        p
    }

    /// The server's hard reset acknowledging `client`'s packet 0.
    pub(crate) fn ovpn_server(own: [u8; 8], client: [u8; 8]) -> Vec<u8> {
        let mut p = vec![0x40];
        p.extend_from_slice(&own);
        p.push(1); // one acknowledgement
        p.extend_from_slice(&0u32.to_be_bytes()); // of packet 0
        p.extend_from_slice(&client); // remote session id
        p.extend_from_slice(&0u32.to_be_bytes()); // message packet id
        p
    }

    /// An IKEv2 IKE_SA_INIT request header (RFC 7296 section 3.1) with
    /// `body` bytes of payloads.
    pub(crate) fn ikev2_init(body: usize) -> Vec<u8> {
        let mut p = vec![0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        p.extend_from_slice(&[0; 8]); // responder SPI: not known yet
        p.extend_from_slice(&[33, 0x20, 34, 0x08]); // SA, v2.0, IKE_SA_INIT, I
        p.extend_from_slice(&0u32.to_be_bytes()); // message id
        p.extend_from_slice(&u32::try_from(28 + body).unwrap_or(0).to_be_bytes());
        p.resize(28 + body, 0);
        p
    }

    #[test]
    fn wireguard_by_its_handshake_sizes_and_its_data_counters() {
        assert!(wireguard_handshake(&wg_message(1, 148)));
        assert!(wireguard_handshake(&wg_message(2, 92)));
        assert!(wireguard_handshake(&wg_message(3, 64)));
        assert!(!wireguard_handshake(&wg_message(1, 149)), "size is fixed");
        let mut odd = wg_message(1, 148);
        odd[2] = 1;
        assert!(!wireguard_handshake(&odd), "reserved bytes are zero");
        let a = wireguard_data(&wg_data(7, 100, 96)).expect("data");
        let b = wireguard_data(&wg_data(7, 103, 48)).expect("data");
        assert!(wireguard_data_follows(a, b));
        assert!(!wireguard_data_follows(b, a), "counters only go up");
        let other = wireguard_data(&wg_data(8, 101, 64)).expect("data");
        assert!(!wireguard_data_follows(a, other), "another receiver");
        assert_eq!(wireguard_data(&wg_data(7, 1, 40)), None, "not padded to 16");
    }

    #[test]
    fn openvpn_by_a_reset_and_the_answer_that_names_it() {
        let c = [1, 2, 3, 4, 5, 6, 7, 8];
        let s = [9, 9, 9, 9, 9, 9, 9, 9];
        assert_eq!(openvpn_client_reset(&ovpn_client(c)), Some(c));
        assert_eq!(openvpn_client_reset(&ovpn_client([0; 8])), None);
        assert!(openvpn_server_reset(&ovpn_server(s, c), &c));
        assert!(
            !openvpn_server_reset(&ovpn_server(s, [7; 8]), &c),
            "acknowledges another session"
        );
        let mut key1 = ovpn_client(c);
        key1[0] |= 1;
        assert_eq!(openvpn_client_reset(&key1), None, "a reset has key id 0");
    }

    /// An ESP-in-UDP packet of `spi` with sequence number `seq`.
    pub(crate) fn esp(spi: u32, seq: u32, len: usize) -> Vec<u8> {
        let mut p = spi.to_be_bytes().to_vec();
        p.extend_from_slice(&seq.to_be_bytes());
        p.resize(len, 0xC3);
        p
    }

    #[test]
    fn esp_by_its_spi_and_sequence_on_4500() {
        let a = esp_in_udp(&esp(0x1234_5678, 10, 120), (40000, 4500)).expect("esp");
        let b = esp_in_udp(&esp(0x1234_5678, 11, 120), (40000, 4500)).expect("esp");
        assert!(esp_follows(a, b));
        assert!(!esp_follows(b, a));
        assert_eq!(esp_in_udp(&esp(0x1234_5678, 10, 120), (40000, 4501)), None);
        assert_eq!(
            esp_in_udp(&esp(0, 10, 120), (40000, 4500)),
            None,
            "IKE's marker"
        );
        assert_eq!(
            esp_in_udp(&esp(255, 10, 120), (40000, 4500)),
            None,
            "reserved"
        );
    }

    #[test]
    fn ike_on_its_ports_with_its_own_length() {
        let m = ikev2_init(200);
        assert!(ike(&m, (500, 500)));
        assert!(!ike(&m, (40000, 5000)), "not an IKE port");
        let mut natt = vec![0; 4];
        natt.extend_from_slice(&m);
        assert!(ike(&natt, (4500, 4500)), "after the non-ESP marker");
        let mut short = m.clone();
        short.pop();
        assert!(!ike(&short, (500, 500)), "length field disagrees");
        let mut v3 = m.clone();
        v3[17] = 0x30;
        assert!(!ike(&v3, (500, 500)), "no such version");
        let mut v1 = m;
        v1[17] = 0x10;
        v1[18] = 2; // identity protection (main mode)
        assert!(ike(&v1, (500, 500)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            ports in proptest::prelude::any::<(u16, u16)>(),
        ) {
            let _ = wireguard_handshake(&b);
            let _ = wireguard_data(&b);
            let _ = openvpn_client_reset(&b);
            let _ = openvpn_server_reset(&b, &[1; 8]);
            let _ = ike(&b, ports);
            let _ = ike(&b, (4500, ports.1));
            let _ = esp_in_udp(&b, (4500, ports.1));
            let _ = capwap(&b, (ports.0, 5246));
            let _ = capwap(&b, ports);
            let _ = capwap_data_inner(&b, (ports.0, 5247));
            let _ = anyconnect_dtls(&b);
            // A CAPWAP header of any length, over an 802.11 data frame
            // (either byte order) or an 802.3 one.
            for head in [[0u8, 0x20, 0x43, 0x00], [0, 0x10, 0x02, 0x00]] {
                let mut p = head.to_vec();
                p.extend_from_slice(&b);
                let _ = capwap_data_inner(&p, (ports.0, 5247));
            }
        }
    }
}
