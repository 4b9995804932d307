//! VPN tunnels on UDP, recognised so that a tunnel is not taken for media
//! by its shape: WireGuard (its handshake messages by their fixed sizes,
//! or transport data by a receiver index and a counter that go on from
//! one packet to the next), OpenVPN (a client's hard reset and the
//! server's answer that acknowledges the client's session id), IKE
//! (ISAKMP/IKEv2 headers on ports 500 and 4500, whose length field is the
//! datagram's) and ESP in UDP on port 4500 (two packets of one security
//! association, their sequence numbers going on).

use super::bytes::be32;

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        }
    }
}
