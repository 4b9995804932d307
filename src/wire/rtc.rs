//! Real-time protocols on UDP, told apart by their first byte as in RFC 9443
//! (0-3 STUN, 16-19 ZRTP, 20-63 DTLS, 64-79 TURN ChannelData, 128-191
//! RTP/RTCP), each then checked against its own header rules; and Agora's
//! SD-RTN.

use super::bytes::{be16, be32};

/// A recognised real-time packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rtc<'a> {
    /// STUN / TURN (RFC 8489/8656) with the magic cookie.
    Stun {
        /// Method (1 = Binding, 3 = Allocate, ...).
        method: u16,
        /// Class: 0 request, 1 indication, 2 success, 3 error.
        class: u8,
    },
    /// ZRTP.
    Zrtp,
    /// A DTLS record.
    Dtls {
        /// Content type (22 = handshake, 23 = application data).
        content_type: u8,
    },
    /// TURN ChannelData.
    TurnChannel {
        /// Channel number (0x4000-0x4FFF).
        channel: u16,
    },
    /// RTP (RFC 3550).
    Rtp {
        /// Payload type.
        payload_type: u8,
        /// Sequence number.
        seq: u16,
        /// Synchronisation source.
        ssrc: u32,
    },
    /// RTCP (RFC 3550/5761).
    Rtcp {
        /// Packet type (200 SR, 201 RR, ...).
        packet_type: u8,
    },
    /// Agora SD-RTN, with the cleartext host name it carries.
    SdRtn {
        /// The host name (e.g. `104-166-161-75.edge.agora.io`).
        host: &'a str,
    },
}

/// STUN magic cookie.
pub const STUN_COOKIE: u32 = 0x2112_A442;

/// Recognises a UDP payload, or `None`.
pub fn classify(p: &[u8]) -> Option<Rtc<'_>> {
    if let Some(s) = sd_rtn(p) {
        return Some(s);
    }
    let first = *p.first()?;
    match first {
        0..=3 => {
            let t = be16(p, 0)?;
            let len = usize::from(be16(p, 2)?);
            if be32(p, 4)? != STUN_COOKIE || len + 20 != p.len() || len % 4 != 0 {
                return None;
            }
            let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
            let class = (((t >> 4) & 1) | ((t >> 7) & 2)) as u8;
            Some(Rtc::Stun { method, class })
        }
        16..=19 => (p.len() >= 12 && be32(p, 4)? == 0x5A52_5450).then_some(Rtc::Zrtp),
        20..=63 => {
            let version = be16(p, 1)?;
            let len = usize::from(be16(p, 11)?);
            let ok = (20..=26).contains(&first)
                && matches!(version, 0xFEFF | 0xFEFD | 0xFEFC)
                && 13 + len <= p.len();
            ok.then_some(Rtc::Dtls {
                content_type: first,
            })
        }
        64..=79 => {
            let ch = be16(p, 0)?;
            let len = usize::from(be16(p, 2)?);
            // Over UDP the data is not padded, so lengths match exactly
            // (up to 3 bytes of padding are tolerated).
            (len + 4 <= p.len() && p.len() <= len + 4 + 3)
                .then_some(Rtc::TurnChannel { channel: ch })
        }
        128..=191 => {
            let b1 = *p.get(1)?;
            if (192..=223).contains(&b1) {
                // RTCP: length in 32-bit words minus one.
                let words = usize::from(be16(p, 2)?);
                return ((words + 1) * 4 <= p.len()).then_some(Rtc::Rtcp { packet_type: b1 });
            }
            let cc = usize::from(first & 0x0F);
            if p.len() < 12 + 4 * cc {
                return None;
            }
            Some(Rtc::Rtp {
                payload_type: b1 & 0x7F,
                seq: be16(p, 2)?,
                ssrc: be32(p, 8)?,
            })
        }
        _ => None,
    }
}

/// A STUN message at the start of a TCP segment, which may hold more
/// than one message: returns the first one's method.
pub fn stun_prefix(p: &[u8]) -> Option<u16> {
    let t = be16(p, 0)?;
    let len = usize::from(be16(p, 2)?);
    if t & 0xC000 != 0 || be32(p, 4)? != STUN_COOKIE || len % 4 != 0 || len + 20 > p.len() {
        return None;
    }
    Some((t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2))
}

/// Agora SD-RTN (public facts): a UDP payload of at least 20 bytes with
/// byte 6 = 0x21 and bytes 12..16 = `04 53 4E 49` ("\x04SNI"), a big-endian
/// u16 length at 16, byte 18 = 0, then a cleartext host name at 19 of that
/// length. Default port UDP 8130.
pub fn sd_rtn(p: &[u8]) -> Option<Rtc<'_>> {
    if p.len() < 20 || p[6] != 0x21 || p[12..16] != [0x04, 0x53, 0x4E, 0x49] || p[18] != 0 {
        return None;
    }
    let len = usize::from(be16(p, 16)?);
    let host = p.get(19..19 + len)?;
    if !super::tls::is_host_name(host) {
        return None;
    }
    Some(Rtc::SdRtn {
        host: std::str::from_utf8(host).ok()?,
    })
}

/// A minimal SD-RTN-shaped datagram naming `host`, as [`sd_rtn`] reads it:
/// what the demo and the tests send as Agora's probe.
pub fn sd_rtn_probe(host: &str) -> Vec<u8> {
    let mut p = vec![
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x21, 0, 0, 0, 0, 0, 0x04, 0x53, 0x4E, 0x49,
    ];
    p.extend_from_slice(&u16::try_from(host.len()).unwrap_or(0).to_be_bytes());
    p.push(0);
    p.extend_from_slice(host.as_bytes());
    p.extend_from_slice(&[0; 8]);
    p
}

/// A plain RTP packet (version 2, payload type 96, 160 bytes of payload,
/// timestamp advancing 160 per packet, a fixed SSRC), as [`classify`]
/// reads it: what the demo and the tests send as voice.
pub fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&u32::from(seq).wrapping_mul(160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[0x55; 160]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rtp_builder_is_read_as_rtp() {
        for seq in [0, 1, 65_535] {
            assert!(matches!(classify(&rtp_packet(seq)), Some(Rtc::Rtp { .. })));
        }
    }

    #[test]
    fn sd_rtn_from_the_documented_layout() {
        let p = sd_rtn_probe("104-166-161-75.edge.agora.io");
        assert_eq!(
            classify(&p),
            Some(Rtc::SdRtn {
                host: "104-166-161-75.edge.agora.io"
            })
        );
        let mut bad = p.clone();
        bad[6] = 0x20;
        assert_eq!(sd_rtn(&bad), None);
        let mut long = p.clone();
        long[17] = 200;
        assert_eq!(sd_rtn(&long), None, "a length past the end is refused");
    }

    #[test]
    fn stun_binding_request_and_response() {
        // Binding request with no attributes; a success response with one
        // 8-byte attribute.
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(&[1; 12]);
        assert_eq!(
            classify(&req),
            Some(Rtc::Stun {
                method: 1,
                class: 0
            })
        );
        let mut resp = vec![0x01, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        resp.extend_from_slice(&[2; 12]);
        resp.extend_from_slice(&[0, 0x20, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            classify(&resp),
            Some(Rtc::Stun {
                method: 1,
                class: 2
            })
        );
        let mut wrong_len = resp.clone();
        wrong_len.push(0);
        assert_eq!(classify(&wrong_len), None);
    }

    #[test]
    fn rtp_rtcp_dtls_turn() {
        let mut rtp = vec![0x80, 0x6F, 0x12, 0x34, 0, 0, 0, 1, 0xDE, 0xAD, 0xBE, 0xEF];
        rtp.extend_from_slice(&[0; 160]);
        assert_eq!(
            classify(&rtp),
            Some(Rtc::Rtp {
                payload_type: 111,
                seq: 0x1234,
                ssrc: 0xDEAD_BEEF
            })
        );
        let rr = [
            0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0,
        ];
        assert_eq!(classify(&rr), Some(Rtc::Rtcp { packet_type: 201 }));
        let mut dtls = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4];
        dtls.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(classify(&dtls), Some(Rtc::Dtls { content_type: 22 }));
        let turn = [0x40, 0x01, 0, 4, 9, 9, 9, 9];
        assert_eq!(classify(&turn), Some(Rtc::TurnChannel { channel: 0x4001 }));
        assert_eq!(classify(&[0x40, 0x01, 0, 40, 1]), None);
        assert_eq!(classify(b"hello world"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = classify(&b);
        }
    }
}
