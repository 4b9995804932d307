//! Real-time protocols on UDP, told apart by their first byte as in RFC 9443
//! (0-3 STUN, 16-19 ZRTP, 20-63 DTLS, 64-79 TURN ChannelData, 128-191
//! RTP/RTCP), each then checked against its own header rules; classic
//! STUN (RFC 3489, no magic cookie) by its message types and an exact walk
//! of its attributes; Agora's SD-RTN; and Zoom's encapsulations
//! ([`zoom`]).

use super::bytes::{be16, be32};

/// A recognised real-time packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rtc<'a> {
    /// STUN / TURN (RFC 8489/8656) with the magic cookie, or classic STUN
    /// (RFC 3489) without it.
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
            if len + 20 != p.len() || len % 4 != 0 {
                return None;
            }
            if be32(p, 4)? != STUN_COOKIE && !classic_stun(t, &p[20..]) {
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

/// Classic STUN (RFC 3489), which has no magic cookie: one of its six
/// message types (Binding and Shared Secret requests, responses and error
/// responses), and attributes that fill the body exactly, each of a type
/// RFC 3489 defines (0x0001-0x000B), one later STUN added (below 0x0030,
/// or comprehension-optional 0x8000-0x80FF) or one an application put in
/// the low range (Zoom's peers send 0x0101; 0x0001-0x01FF are taken),
/// each value padded to 4 bytes.
/// Only a Binding request may have no attribute.
fn classic_stun(t: u16, mut body: &[u8]) -> bool {
    if !matches!(t, 0x0001 | 0x0101 | 0x0111 | 0x0002 | 0x0102 | 0x0112) {
        return false;
    }
    if body.is_empty() {
        return t == 0x0001;
    }
    while !body.is_empty() {
        let (Some(a), Some(l)) = (be16(body, 0), be16(body, 2)) else {
            return false;
        };
        if a == 0 || (0x0200..0x8000).contains(&a) || a > 0x80FF {
            return false;
        }
        let padded = (usize::from(l) + 3) & !3;
        match body.get(4 + padded..) {
            Some(rest) => body = rest,
            None => return false,
        }
    }
    true
}

/// What a Zoom datagram is ([`zoom`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zoom {
    /// The first packets of a client and its server on Zoom's media ports
    /// (SFU encapsulation types 1 and 2).
    SfuSetup,
    /// Audio, video, screen sharing or RTCP in the SFU encapsulation
    /// (type 5), with the RTP or RTCP inside where it belongs.
    SfuMedia,
    /// The first packet of a peer-to-peer call: type 0x1F, then a
    /// length-prefixed address string and identifier.
    PeerHello,
}

/// Zoom's media transport, from public measurement work (Princeton's
/// "Enabling Passive Measurement of Zoom Performance" and its Wireshark
/// dissector, and nDPI's published detection facts). On UDP ports
/// 8801-8810 (`media_port`): an SFU setup packet starts `01 00 02`,
/// `01 00 03`, `02 00 02` or `02 00 03`; an SFU media packet is an 8-byte
/// header (type 5, sequence, 4 bytes, direction 0 or 4) then the media
/// encapsulation: type 15 (audio, RTP at 19), 16 (video, RTP at 24, or at
/// 20 for a frame's single packet), 13 (screen share; RTP at 27 once it
/// flows), 30 (peer screen share, RTP at 20) or 33-35 (RTCP at 16). On any
/// port, a peer hello: `1F 02 01`, a 24-byte header, a 4-byte length and
/// that many bytes (an address as text), a 4-byte length and that many
/// bytes (an identifier), then four zero bytes, exactly.
pub fn zoom(p: &[u8], media_port: bool) -> Option<Zoom> {
    if media_port && p.len() > 8 {
        if matches!(p[..3], [0x01 | 0x02, 0x00, 0x02 | 0x03]) {
            return Some(Zoom::SfuSetup);
        }
        if p[0] == 0x05 && matches!(p[7], 0 | 4) && zoom_media(&p[8..]) {
            return Some(Zoom::SfuMedia);
        }
    }
    if p.len() > 36 && p[..3] == [0x1F, 0x02, 0x01] && p[p.len() - 4..] == [0; 4] {
        let ip = usize::try_from(be32(p, 24)?).ok()?;
        let id_at = 28usize.checked_add(ip)?;
        let id = usize::try_from(be32(p, id_at)?).ok()?;
        let end = id_at.checked_add(4)?.checked_add(id)?.checked_add(4)?;
        return (end == p.len()).then_some(Zoom::PeerHello);
    }
    None
}

/// Zoom's media encapsulation (15 bytes of header at least) with its RTP
/// or RTCP at the offset its type puts it.
fn zoom_media(m: &[u8]) -> bool {
    let rtp_at = |at: usize| matches!(m.get(at..).and_then(classify), Some(Rtc::Rtp { .. }));
    let rtcp_at = |at: usize| matches!(m.get(at..).and_then(classify), Some(Rtc::Rtcp { .. }));
    if m.len() <= 15 {
        return false;
    }
    match m[0] {
        15 => rtp_at(19),
        16 => rtp_at(24) || rtp_at(20),
        13 => m.len() > 27,
        30 => rtp_at(20),
        33..=35 => rtcp_at(16),
        _ => false,
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

/// TURN methods that name a peer the relay is to reach (RFC 8656): Send
/// (indication), CreatePermission and ChannelBind (requests).
pub const TURN_SEND: u16 = 0x006;
/// See [`TURN_SEND`].
pub const TURN_CREATE_PERMISSION: u16 = 0x008;
/// See [`TURN_SEND`].
pub const TURN_CHANNEL_BIND: u16 = 0x009;
/// STUN attribute XOR-PEER-ADDRESS (RFC 8656 section 18.3).
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
/// The most peer addresses read from one message (RFC 8656 lets a
/// CreatePermission carry several; any beyond this are not read, and the
/// message is reported as having more).
pub const MAX_PEERS_PER_MESSAGE: usize = 8;

/// The peers a TURN message from the client asks its relay to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TurnPeers {
    peers: [Option<std::net::SocketAddr>; MAX_PEERS_PER_MESSAGE],
    /// More XOR-PEER-ADDRESS attributes than [`MAX_PEERS_PER_MESSAGE`].
    pub more: bool,
}

impl TurnPeers {
    /// The peers read, in message order.
    pub fn iter(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.peers.iter().flatten().copied()
    }

    /// True when the message named no peer.
    pub fn is_empty(&self) -> bool {
        self.peers[0].is_none()
    }
}

/// Reads the XOR-PEER-ADDRESS attributes of a whole STUN message (one UDP
/// datagram) that is a TURN Send indication or a CreatePermission or
/// ChannelBind request: the addresses, in the clear to anyone on the path,
/// of the peers the relay will forward this client's data to. `None` for
/// anything else (other methods, responses, a malformed message).
pub fn turn_peers(p: &[u8]) -> Option<TurnPeers> {
    let t = be16(p, 0)?;
    let len = usize::from(be16(p, 2)?);
    if t & 0xC000 != 0 || be32(p, 4)? != STUN_COOKIE || len + 20 != p.len() || len % 4 != 0 {
        return None;
    }
    let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
    let class = ((t >> 4) & 1) | ((t >> 7) & 2);
    let wanted = matches!(
        (method, class),
        (TURN_SEND, 1) | (TURN_CREATE_PERMISSION, 0) | (TURN_CHANNEL_BIND, 0)
    );
    if !wanted {
        return None;
    }
    let mut out = TurnPeers::default();
    let mut n = 0;
    let mut at = 20;
    while at + 4 <= p.len() {
        let kind = be16(p, at)?;
        let alen = usize::from(be16(p, at + 2)?);
        let value = p.get(at + 4..at + 4 + alen)?;
        if kind == XOR_PEER_ADDRESS {
            let peer = xor_address(value, p.get(4..20)?)?;
            match out.peers.get_mut(n) {
                Some(slot) => *slot = Some(peer),
                None => out.more = true,
            }
            n += 1;
        }
        at += 4 + alen.next_multiple_of(4);
    }
    Some(out)
}

/// The longest TURN message over TCP read whole for its peers; a longer
/// one (it would carry data, not a permission) is passed over unread.
pub const MAX_TURN_TCP_MESSAGE: usize = 2048;

/// TURN over TCP (RFC 8656 section 12.3): the client's byte stream is STUN
/// messages and ChannelData frames back to back, ChannelData padded to a
/// multiple of 4. [`TurnStream::feed`] frames it and hands over each whole
/// STUN message of at most [`MAX_TURN_TCP_MESSAGE`] bytes (for
/// [`turn_peers`]), skipping ChannelData without keeping it. A stream that
/// stops looking like TURN framing is given up ([`TurnStream::lost`]).
/// Memory: at most one message.
#[derive(Debug, Default)]
pub struct TurnStream {
    /// The current message's bytes so far (its 4-byte header at least).
    msg: Vec<u8>,
    /// Bytes of the current frame still to pass over unread.
    skip: usize,
    /// Bytes fed so far: the stream offset of the next byte.
    fed: u64,
    lost: bool,
}

impl TurnStream {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream stopped looking like TURN framing (nothing more
    /// is read from it).
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Whether a message (or a frame's header) has begun and is not whole
    /// yet: the bytes fed so far end inside it.
    pub fn partial(&self) -> bool {
        !self.msg.is_empty()
    }

    /// Frames the next bytes of the stream; `on_message` gets every whole
    /// STUN message they complete, with the stream offset of its first
    /// byte (the first byte ever fed is at 0): the message is the stream's
    /// bytes from there to there plus its length, so it can be taken out
    /// of the stream whole, the framing of what follows unchanged.
    pub fn feed(&mut self, mut data: &[u8], mut on_message: impl FnMut(&[u8], u64)) {
        while !data.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                self.fed += n as u64;
                data = &data[n..];
                continue;
            }
            // The 4-byte header says what the frame is and how long.
            let want = if self.msg.len() < 4 {
                4
            } else {
                20 + usize::from(u16::from_be_bytes([self.msg[2], self.msg[3]]))
            };
            let n = (want - self.msg.len()).min(data.len());
            self.msg.extend_from_slice(&data[..n]);
            self.fed += n as u64;
            data = &data[n..];
            if self.msg.len() == 4 {
                let len = usize::from(u16::from_be_bytes([self.msg[2], self.msg[3]]));
                match self.msg[0] {
                    // STUN: a whole message, unless it is too long to keep.
                    0x00..=0x3F if len % 4 == 0 => {
                        if 20 + len > MAX_TURN_TCP_MESSAGE {
                            self.skip = 16 + len;
                            self.msg.clear();
                        }
                    }
                    // ChannelData: pass over it, padding included.
                    0x40..=0x4F => {
                        self.skip = len.next_multiple_of(4);
                        self.msg.clear();
                    }
                    _ => {
                        self.lost = true;
                        self.msg = Vec::new();
                    }
                }
            } else if self.msg.len() > 4 && self.msg.len() == want {
                on_message(&self.msg, self.fed - want as u64);
                self.msg.clear();
            }
        }
    }
}

/// Whether a TCP stream that begins with `p` may be TURN over TCP: the
/// type of a STUN message whose method is one IANA has assigned (all below
/// 0x100, so the first byte is 0 to 3: Binding to ConnectionAttempt, and
/// Google's GOOG-PING) and, once 8 bytes are in, the magic cookie. The
/// message itself may continue in later segments. (A SOCKS greeting, 4 or
/// 5 then its methods, is not one.)
pub fn stun_start(p: &[u8]) -> bool {
    p.first().is_some_and(|&b| b <= 0x03) && (p.len() < 8 || be32(p, 4) == Some(STUN_COOKIE))
}

/// Whether `p` is the start of a STUN message on a stream whose rest is
/// still to come ([`stun_start`], and fewer bytes than its length says).
pub fn stun_incomplete(p: &[u8]) -> bool {
    stun_start(p)
        && match be16(p, 2) {
            None => true,
            Some(len) => len % 4 == 0 && 20 + usize::from(len) > p.len(),
        }
}

/// An XOR-MAPPED-ADDRESS-style value (RFC 8489 section 14.2): family, port
/// and address XORed with the magic cookie (and, for IPv6, the
/// transaction ID); `cookie_and_id` is the message's bytes 4..20.
fn xor_address(v: &[u8], cookie_and_id: &[u8]) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let port = be16(v, 2)? ^ 0x2112;
    let ip = match (*v.get(1)?, v.len()) {
        (0x01, 8) => {
            let x = be32(v, 4)? ^ STUN_COOKIE;
            IpAddr::V4(Ipv4Addr::from(x))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v.get(4 + i)? ^ cookie_and_id.get(i)?;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A TURN message from the client naming `peers` in XOR-PEER-ADDRESS
/// attributes (RFC 8656): `method` is [`TURN_SEND`] (sent as an
/// indication, with `data` in a DATA attribute), [`TURN_CREATE_PERMISSION`]
/// or [`TURN_CHANNEL_BIND`] (requests; `channel` goes in CHANNEL-NUMBER).
/// What the tests and the demo send as a relay's client.
pub fn turn_message(
    method: u16,
    id: [u8; 12],
    peers: &[std::net::SocketAddr],
    channel: Option<u16>,
    data: &[u8],
) -> Vec<u8> {
    let class = u16::from(method == TURN_SEND);
    let t = (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((class & 1) << 4)
        | ((class & 2) << 7);
    let mut attrs = Vec::new();
    let mut attr = |kind: u16, v: &[u8]| {
        attrs.extend_from_slice(&kind.to_be_bytes());
        attrs.extend_from_slice(&u16::try_from(v.len()).unwrap_or(0).to_be_bytes());
        attrs.extend_from_slice(v);
        attrs.resize(attrs.len().next_multiple_of(4), 0);
    };
    if let Some(ch) = channel {
        let mut v = ch.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0]);
        attr(0x000C, &v);
    }
    let mut cookie_and_id = STUN_COOKIE.to_be_bytes().to_vec();
    cookie_and_id.extend_from_slice(&id);
    for peer in peers {
        let mut v = vec![0];
        v.push(if peer.is_ipv4() { 0x01 } else { 0x02 });
        v.extend_from_slice(&(peer.port() ^ 0x2112).to_be_bytes());
        match peer.ip() {
            std::net::IpAddr::V4(a) => {
                v.extend_from_slice(&(u32::from(a) ^ STUN_COOKIE).to_be_bytes());
            }
            std::net::IpAddr::V6(a) => {
                v.extend(a.octets().iter().zip(&cookie_and_id).map(|(b, k)| b ^ k));
            }
        }
        attr(XOR_PEER_ADDRESS, &v);
    }
    if method == TURN_SEND {
        attr(0x0013, data);
    }
    let mut m = t.to_be_bytes().to_vec();
    m.extend_from_slice(&u16::try_from(attrs.len()).unwrap_or(0).to_be_bytes());
    m.extend_from_slice(&cookie_and_id);
    m.extend_from_slice(&attrs);
    m
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
pub(crate) mod tests {
    use super::*;

    /// A Zoom SFU media packet (type 5, direction `dir`) around an audio
    /// (15) or video (16) media encapsulation whose RTP sits where the
    /// published layout puts it.
    pub(crate) fn zoom_sfu_media(kind: u8, dir: u8, seq: u16) -> Vec<u8> {
        let mut p = vec![0x05];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, dir]);
        let rtp_at = if kind == 15 { 19 } else { 24 };
        let mut m = vec![kind];
        m.resize(rtp_at, 0);
        m.extend_from_slice(&rtp_packet(seq));
        p.extend_from_slice(&m);
        p
    }

    /// A Zoom peer-to-peer hello: `1F 02 01`, a 24-byte header, the
    /// address as text and an identifier, each after a 4-byte length, then
    /// four zero bytes.
    pub(crate) fn zoom_peer_hello(addr: &str, id: &[u8]) -> Vec<u8> {
        let mut p = vec![0x1F, 0x02, 0x01];
        p.resize(24, 0x33);
        p.extend_from_slice(&u32::try_from(addr.len()).unwrap_or(0).to_be_bytes());
        p.extend_from_slice(addr.as_bytes());
        p.extend_from_slice(&u32::try_from(id.len()).unwrap_or(0).to_be_bytes());
        p.extend_from_slice(id);
        p.extend_from_slice(&[0; 4]);
        p
    }

    /// A classic (RFC 3489) STUN message: `t`, a transaction id of 16
    /// bytes, and `attrs` as (type, value) pairs.
    pub(crate) fn classic_stun_message(t: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (a, v) in attrs {
            body.extend_from_slice(&a.to_be_bytes());
            body.extend_from_slice(&u16::try_from(v.len()).unwrap_or(0).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut p = t.to_be_bytes().to_vec();
        p.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        p.extend_from_slice(&[0x5C; 16]);
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn classic_stun_by_its_types_and_an_exact_attribute_walk() {
        let req = classic_stun_message(0x0001, &[]);
        assert_eq!(
            classify(&req),
            Some(Rtc::Stun {
                method: 1,
                class: 0
            })
        );
        let mapped = [0, 1, 0x1F, 0x90, 203, 0, 113, 7];
        let resp = classic_stun_message(0x0101, &[(0x0001, &mapped), (0x0005, &mapped)]);
        assert_eq!(
            classify(&resp),
            Some(Rtc::Stun {
                method: 1,
                class: 2
            })
        );
        let change = classic_stun_message(0x0001, &[(0x0003, &[0, 0, 0, 6])]);
        assert!(matches!(classify(&change), Some(Rtc::Stun { .. })));
        // An attribute running past the body, an unknown attribute type, a
        // message type RFC 3489 does not have, an empty response: no.
        let mut long = resp.clone();
        long[23] = 12;
        assert_eq!(classify(&long), None);
        assert_eq!(
            classify(&classic_stun_message(0x0101, &[(0x4000, &mapped)])),
            None
        );
        assert_eq!(
            classify(&classic_stun_message(0x0003, &[(0x0001, &mapped)])),
            None
        );
        assert_eq!(classify(&classic_stun_message(0x0101, &[])), None);
    }

    #[test]
    fn zoom_by_its_published_layouts() {
        for (kind, dir) in [(15, 0), (16, 4)] {
            let p = zoom_sfu_media(kind, dir, 9);
            assert_eq!(zoom(&p, true), Some(Zoom::SfuMedia), "type {kind}");
            assert_eq!(zoom(&p, false), None, "only on the media ports");
        }
        let mut bad_dir = zoom_sfu_media(15, 0, 9);
        bad_dir[7] = 2;
        assert_eq!(zoom(&bad_dir, true), None);
        let mut no_rtp = zoom_sfu_media(15, 0, 9);
        no_rtp[8 + 19] = 0x40;
        assert_eq!(zoom(&no_rtp, true), None, "audio without its RTP");
        let mut setup = vec![0x01, 0x00, 0x03];
        setup.resize(120, 0x11);
        assert_eq!(zoom(&setup, true), Some(Zoom::SfuSetup));
        assert_eq!(zoom(&setup, false), None);
        let hello = zoom_peer_hello("203.0.113.9", b"3f0c8e3d-2b1a-4c3e-9d8f-0a1b2c3d4e5f");
        assert_eq!(zoom(&hello, false), Some(Zoom::PeerHello));
        let mut longer = hello.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(zoom(&longer, false), None, "lengths fill it exactly");
    }

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

    /// RFC 5769 section 2.2's sample response carries XOR-MAPPED-ADDRESS
    /// 192.0.2.1:32853 (same encoding as XOR-PEER-ADDRESS); 2.3's, the IPv6
    /// 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
    #[test]
    fn xor_addresses_from_the_rfc_5769_vectors() {
        let id = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let mut ck = STUN_COOKIE.to_be_bytes().to_vec();
        ck.extend_from_slice(&id);
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert_eq!(
            xor_address(&v4, &ck),
            Some("192.0.2.1:32853".parse().expect("addr"))
        );
        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        assert_eq!(
            xor_address(&v6, &ck),
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .expect("addr")
            )
        );
    }

    #[test]
    fn turn_messages_name_their_peers() {
        let a: std::net::SocketAddr = "203.0.113.10:5004".parse().expect("addr");
        let b: std::net::SocketAddr = "[2001:db8:86::10]:6000".parse().expect("addr");
        let id = [7; 12];
        let perm = turn_message(TURN_CREATE_PERMISSION, id, &[a, b], None, &[]);
        // The type is 0x0008 (a request) and the message is well formed STUN.
        assert_eq!(&perm[..2], &[0x00, 0x08]);
        assert!(matches!(
            classify(&perm),
            Some(Rtc::Stun {
                method: 8,
                class: 0
            })
        ));
        let got = turn_peers(&perm).expect("peers");
        assert_eq!(got.iter().collect::<Vec<_>>(), [a, b]);
        let bind = turn_message(TURN_CHANNEL_BIND, id, &[a], Some(0x4001), &[]);
        assert_eq!(&bind[..2], &[0x00, 0x09]);
        assert_eq!(
            turn_peers(&bind).expect("peers").iter().collect::<Vec<_>>(),
            [a]
        );
        let send = turn_message(TURN_SEND, id, &[b], None, b"voice");
        // Send is an indication: 0x0016.
        assert_eq!(&send[..2], &[0x00, 0x16]);
        assert_eq!(
            turn_peers(&send).expect("peers").iter().collect::<Vec<_>>(),
            [b]
        );
        // Other methods and classes, and broken messages, name no peer.
        let mut resp = perm.clone();
        resp[1] = 0x08;
        resp[0] = 0x01; // a success response
        assert_eq!(turn_peers(&resp), None);
        let mut alloc = perm.clone();
        alloc[1] = 0x03;
        assert_eq!(turn_peers(&alloc), None);
        let mut cut = perm.clone();
        cut.truncate(cut.len() - 4);
        assert_eq!(turn_peers(&cut), None);
        let mut overlong = perm.clone();
        overlong[23] = 200; // the first attribute's length runs past the end
        assert_eq!(turn_peers(&overlong), None);
        // More peers than are read are said.
        let many: Vec<std::net::SocketAddr> = (0..10)
            .map(|i| std::net::SocketAddr::from(([203, 0, 113, i], 9)))
            .collect();
        let m =
            turn_peers(&turn_message(TURN_CREATE_PERMISSION, id, &many, None, &[])).expect("peers");
        assert_eq!(m.iter().count(), MAX_PEERS_PER_MESSAGE);
        assert!(m.more);
    }

    #[test]
    fn turn_over_tcp_is_framed_across_segments_and_channel_data_is_passed_over() {
        let id = [0x51; 12];
        let cn = std::net::SocketAddr::from(([203, 0, 113, 10], 5004));
        let us = std::net::SocketAddr::from(([198, 51, 100, 20], 5004));
        let mut stream = turn_message(TURN_CREATE_PERMISSION, id, &[us], None, &[]);
        let mut cd = vec![0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        cd.extend_from_slice(&[0; 3]); // padded to 4 on TCP
        stream.extend_from_slice(&cd);
        let send = turn_message(TURN_SEND, id, &[cn], None, &[0x55; 160]);
        stream.extend_from_slice(&send);
        // Every way of cutting the stream in two gives the same messages.
        for cut in 0..stream.len() {
            let mut t = TurnStream::new();
            let mut peers = Vec::new();
            let mut at = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                t.feed(part, |m, start| {
                    // Each message is the stream's bytes at its offset.
                    let start = start as usize;
                    assert_eq!(&stream[start..start + m.len()], m, "cut at {cut}");
                    at.push(start);
                    peers.extend(turn_peers(m).expect("peers").iter())
                });
            }
            assert_eq!(peers, vec![us, cn], "cut at {cut}");
            assert_eq!(at, [0, stream.len() - send.len()], "cut at {cut}");
            assert!(!t.lost());
        }
        // A long Send is passed over, and what follows is still read.
        let mut t = TurnStream::new();
        let mut long = turn_message(TURN_SEND, id, &[us], None, &[0x55; 4000]);
        long.extend_from_slice(&turn_message(TURN_CREATE_PERMISSION, id, &[cn], None, &[]));
        let mut peers = Vec::new();
        let mut at = 0;
        t.feed(&long, |m, start| {
            at = start;
            peers.extend(turn_peers(m).expect("peers").iter())
        });
        assert_eq!(peers, vec![cn]);
        assert_eq!(at as usize + 32, long.len(), "offset past the long Send");
        // Not TURN framing: given up, nothing more read.
        let mut t = TurnStream::new();
        t.feed(&rtp_packet(1), |_, _| panic!("no message"));
        assert!(t.lost());
    }

    proptest::proptest! {
        #[test]
        fn turn_stream_never_panics_nor_keeps_more_than_a_message(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            cut in 0usize..3000,
        ) {
            let mut t = TurnStream::new();
            let cut = cut.min(b.len());
            let mut end = 0;
            t.feed(&b[..cut], |m, at| { let _ = turn_peers(m); end = at + m.len() as u64; });
            t.feed(&b[cut..], |m, at| { let _ = turn_peers(m); end = at + m.len() as u64; });
            proptest::prop_assert!(end <= b.len() as u64);
            proptest::prop_assert!(t.msg.len() <= MAX_TURN_TCP_MESSAGE);
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = classify(&b);
            let _ = turn_peers(&b);
            let _ = zoom(&b, true);
            let _ = zoom(&b, false);
            let _ = stun_start(&b);
            let _ = stun_incomplete(&b);
        }
    }
}
