//! Packets the engine sends back to the app to carry out `reject`: a TCP
//! RST for TCP, an ICMP/ICMPv6 "administratively prohibited" unreachable
//! for everything else. `drop` sends nothing.
//!
//! Following RFC 1122 and RFC 4443, no error is generated in reply to an
//! ICMP error, to a fragment other than the first, or to a packet sent to
//! a broadcast or multicast address; no RST in reply to an RST.

use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
    UdpRepr,
};

use crate::wire::packet::{Packet, Transport, icmp_type, parse_ip, tcp_flags};

/// A packet from `src` to `dst` (one family) with room for `len` bytes of
/// `proto`, its IP header written by smoltcp's emitter (header checksum
/// computed, TTL 64, IPv4 don't-fragment); and where the upper layer
/// starts. `None` for mixed families or a packet over 65,535 bytes.
fn ip_packet(src: IpAddr, dst: IpAddr, proto: IpProtocol, len: usize) -> Option<(Vec<u8>, usize)> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let repr = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: len,
                hop_limit: 64,
            };
            let at = repr.buffer_len();
            u16::try_from(at + len).ok()?;
            let mut buf = vec![0u8; at + len];
            repr.emit(
                &mut Ipv4Packet::new_unchecked(&mut buf[..]),
                &ChecksumCapabilities::default(),
            );
            Some((buf, at))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: len,
                hop_limit: 64,
            };
            let at = repr.buffer_len();
            u16::try_from(len).ok()?;
            let mut buf = vec![0u8; at + len];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            Some((buf, at))
        }
        _ => None,
    }
}

/// The most bytes of the offending packet quoted in an ICMPv6 error (so the
/// error fits the IPv6 minimum MTU of 1280).
const ICMP6_QUOTE: usize = 1280 - 40 - 8;
/// Bytes quoted in an ICMPv4 error: the header and as much as fits 576.
const ICMP4_QUOTE: usize = 576 - 20 - 8;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data` (an IPv4 header, an ICMPv4 message).
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// The Internet checksum of an upper-layer segment with its pseudo-header.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut acc = 0u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
            acc += u32::from(proto) + segment.len() as u32;
        }
        (s, d) => {
            let o = |a: IpAddr| match a {
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                IpAddr::V6(v) => v.octets(),
            };
            acc = sum16(&o(s), acc);
            acc = sum16(&o(d), acc);
            acc += segment.len() as u32;
            acc += u32::from(proto);
        }
    }
    fold(sum16(segment, acc))
}

fn ip_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Option<Vec<u8>> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&u16::try_from(20 + len).ok()?.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            Some(h)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
            h.push(proto);
            h.push(64);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            Some(h)
        }
        _ => None,
    }
}

/// Broadcast (255.255.255.255) or multicast: addresses of the local link
/// or of groups, never one server.
pub(crate) fn is_group(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_broadcast() || v.is_multicast(),
        IpAddr::V6(v) => v.is_multicast(),
    }
}

/// A UDP datagram from `src` to `dst` (both of one family), with its
/// checksum (a computed 0 is sent as all ones, RFC 768).
pub fn udp_packet(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let (mut buf, at) = ip_packet(src.ip(), dst.ip(), IpProtocol::Udp, 8 + payload.len())?;
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut buf[at..]),
        &IpAddress::from(src.ip()),
        &IpAddress::from(dst.ip()),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    Some(buf)
}

/// An ICMP or ICMPv6 echo reply from `src` to `dst`.
pub fn echo_reply(src: IpAddr, dst: IpAddr, ident: u16, seq: u16, data: &[u8]) -> Option<Vec<u8>> {
    echo_packet(src, dst, false, ident, seq, data)
}

/// An ICMP or ICMPv6 echo request (`request`) or reply from `src` to
/// `dst`.
pub fn echo_packet(
    src: IpAddr,
    dst: IpAddr,
    request: bool,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let repr = if request {
                Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data,
                }
            } else {
                Icmpv4Repr::EchoReply {
                    ident,
                    seq_no: seq,
                    data,
                }
            };
            let (mut buf, at) = ip_packet(src, dst, IpProtocol::Icmp, repr.buffer_len())?;
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[at..]), &caps);
            Some(buf)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = if request {
                Icmpv6Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data,
                }
            } else {
                Icmpv6Repr::EchoReply {
                    ident,
                    seq_no: seq,
                    data,
                }
            };
            let (mut buf, at) = ip_packet(src, dst, IpProtocol::Icmpv6, repr.buffer_len())?;
            repr.emit(
                &s,
                &d,
                &mut Icmpv6Packet::new_unchecked(&mut buf[at..]),
                &caps,
            );
            Some(buf)
        }
        _ => None,
    }
}

/// The RST that refuses the TCP segment `raw` (RFC 9293 section 3.10.7.1):
/// from its destination to its source; `None` if `raw` is not TCP or is
/// itself an RST.
pub fn tcp_reset(raw: &[u8]) -> Option<Vec<u8>> {
    let p = parse_ip(raw).ok()?;
    let Transport::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        payload,
    } = p.transport
    else {
        return None;
    };
    if flags & tcp_flags::RST != 0 || p.fragment.is_some_and(|f| f.offset > 0) {
        return None;
    }
    // RFC 9293 3.10.7.1: answer an ACK with its number (RST alone),
    // anything else by acknowledging what it occupied (RST and ACK).
    let (rseq, rack) = if flags & tcp_flags::ACK != 0 {
        (ack, None)
    } else {
        let len = payload.len()
            + usize::from(flags & tcp_flags::SYN != 0)
            + usize::from(flags & tcp_flags::FIN != 0);
        (0, Some(TcpSeqNumber(seq as i32) + len))
    };
    let ports = (dport, sport);
    bare_segment(p.dst, p.src, ports, TcpControl::Rst, rseq, rack, 0)
}

/// A TCP segment with no options and no payload, from `src` to `dst`
/// (one family), `ports` (source, destination), its checksum computed.
fn bare_segment(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    control: TcpControl,
    seq: u32,
    ack: Option<TcpSeqNumber>,
    window: u16,
) -> Option<Vec<u8>> {
    let repr = TcpRepr {
        src_port: ports.0,
        dst_port: ports.1,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack,
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (mut buf, at) = ip_packet(src, dst, IpProtocol::Tcp, repr.buffer_len())?;
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[at..]),
        &IpAddress::from(src),
        &IpAddress::from(dst),
        &ChecksumCapabilities::default(),
    );
    Some(buf)
}

/// A bare ACK from `src` to `dst` (one family) with sequence number
/// `seq`, acknowledgment number `ack` and window field `window` (already
/// scaled): a window update. `None` for mixed families.
pub fn tcp_ack(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    seq: u32,
    ack: u32,
    window: u16,
) -> Option<Vec<u8>> {
    let ack = Some(TcpSeqNumber(ack as i32));
    let ports = (src.port(), dst.port());
    bare_segment(
        src.ip(),
        dst.ip(),
        ports,
        TcpControl::None,
        seq,
        ack,
        window,
    )
}

/// Why a destination cannot be reached, as an ICMP destination
/// unreachable (RFC 792, RFC 1812) or ICMPv6 (RFC 4443) error says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unreachable {
    /// The policy refused it (`reject`): "communication administratively
    /// prohibited", ICMP code 13, ICMPv6 code 1.
    Prohibited,
    /// No route to its network: ICMP code 0, ICMPv6 code 0.
    Network,
    /// No route to its network here at all (the host's own answer, where
    /// its `connect()` would fail): ICMP code 6, "destination network
    /// unknown", which Linux reports to a connected UDP socket as
    /// `ENETUNREACH` (code 0 only to one that asked for errors with
    /// `IP_RECVERR`); ICMPv6 code 0 (no such code there).
    NoRoute,
    /// Its host did not answer: ICMP code 1, ICMPv6 code 3 ("address
    /// unreachable").
    Host,
    /// Nothing listens on its port: ICMP code 3, ICMPv6 code 4.
    Port,
}

impl Unreachable {
    /// The error's code, for ICMPv6 (`v6`) or ICMP.
    pub fn code(self, v6: bool) -> u8 {
        match (self, v6) {
            (Self::Prohibited, false) => 13,
            (Self::Prohibited, true) => 1,
            (Self::Network, _) | (Self::NoRoute, true) => 0,
            (Self::NoRoute, false) => 6,
            (Self::Host, false) => 1,
            (Self::Host, true) => 3,
            (Self::Port, false) => 3,
            (Self::Port, true) => 4,
        }
    }

    /// What an upstream socket's error says of its destination, if it is
    /// one of these (`ECONNREFUSED`: the port; `EHOSTUNREACH`: the host;
    /// `ENETUNREACH`: the network).
    pub fn of_io(kind: std::io::ErrorKind) -> Option<Self> {
        match kind {
            std::io::ErrorKind::ConnectionRefused => Some(Self::Port),
            std::io::ErrorKind::HostUnreachable => Some(Self::Host),
            std::io::ErrorKind::NetworkUnreachable => Some(Self::Network),
            _ => None,
        }
    }
}

/// The ICMP (type 3 code 13) or ICMPv6 (type 1 code 1) "administratively
/// prohibited" error refusing `raw`, quoting it; `None` where RFC 1122 /
/// RFC 4443 forbid an error.
pub fn unreachable(raw: &[u8]) -> Option<Vec<u8>> {
    icmp_unreachable(raw, Unreachable::Prohibited)
}

/// The ICMP (type 3) or ICMPv6 (type 1) destination unreachable error
/// saying `why` of `raw`, sent from its destination to its source and
/// quoting it; `None` where RFC 1122 / RFC 4443 forbid an error.
pub fn icmp_unreachable(raw: &[u8], why: Unreachable) -> Option<Vec<u8>> {
    let p: Packet<'_> = parse_ip(raw).ok()?;
    if p.fragment.is_some_and(|f| f.offset > 0) || is_group(p.dst) {
        return None;
    }
    if let Transport::Icmp { kind, v6, .. } = p.transport {
        let is_error = if v6 {
            kind < icmp_type::FIRST_INFO_V6
        } else {
            // Echo, timestamp, information and address-mask messages.
            !matches!(kind, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
        };
        if is_error {
            return None;
        }
    }
    let v6 = matches!(p.src, IpAddr::V6(_));
    let quote = &raw[..raw.len().min(if v6 { ICMP6_QUOTE } else { ICMP4_QUOTE })];
    let kind = if v6 {
        icmp_type::UNREACHABLE_V6
    } else {
        icmp_type::UNREACHABLE_V4
    };
    let mut m = vec![kind, why.code(v6), 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quote);
    let c = if v6 {
        l4_checksum(p.dst, p.src, 58, &m)
    } else {
        checksum(&m)
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut out = ip_header(p.dst, p.src, if v6 { 58 } else { 1 }, m.len())?;
    out.extend_from_slice(&m);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_v4(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![
            0x9C, 0x40, 0x01, 0xBB, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, flags, 0xFF, 0xFF, 0, 0, 0,
            0,
        ];
        t.extend_from_slice(payload);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + t.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 10, 203, 0, 113, 5]);
        ip.extend_from_slice(&t);
        ip
    }

    fn checksum_ok(pkt: &[u8]) -> bool {
        let p = parse_ip(pkt).expect("parses");
        let l4 = p.l4;
        let v4_header_ok = pkt[0] >> 4 != 4 || checksum(&pkt[..20]) == 0;
        let l4_ok = match p.proto {
            1 => checksum(l4) == 0,
            proto => l4_checksum(p.src, p.dst, proto, l4) == 0,
        };
        v4_header_ok && l4_ok
    }

    #[test]
    fn rst_for_a_syn_and_for_an_ack() {
        let syn = tcp_v4(0x02, b"");
        let r = tcp_reset(&syn).expect("rst");
        let p = parse_ip(&r).expect("parses");
        assert_eq!(
            (p.src.to_string(), p.dst.to_string()),
            ("203.0.113.5".into(), "192.0.2.10".into())
        );
        let Transport::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            ..
        } = p.transport
        else {
            panic!("tcp")
        };
        assert_eq!(
            (sport, dport, seq, ack, flags),
            (443, 40_000, 0, 0x1000 + 1, 0x14)
        );
        assert!(checksum_ok(&r));
        let data = tcp_v4(0x18, b"hello");
        let r = tcp_reset(&data).expect("rst");
        let Transport::Tcp { seq, flags, .. } = parse_ip(&r).expect("p").transport else {
            panic!("tcp")
        };
        assert_eq!((seq, flags), (0x2000, 0x04));
        assert!(checksum_ok(&r));
        assert!(
            tcp_reset(&tcp_v4(0x04, b"")).is_none(),
            "never an RST for an RST"
        );
    }

    #[test]
    fn unreachable_v4_and_v6() {
        let syn = tcp_v4(0x02, b"");
        let u = unreachable(&syn).expect("icmp");
        let p = parse_ip(&u).expect("parses");
        assert!(matches!(
            p.transport,
            Transport::Icmp {
                kind: 3,
                code: 13,
                v6: false,
                ..
            }
        ));
        assert_eq!(&p.l4[8..], &syn[..], "quotes the packet");
        assert!(checksum_ok(&u));
        // IPv6 UDP.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 12, 17, 64];
        v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0x86, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ]);
        v6.extend_from_slice(&[0x9C, 0x40, 0x1F, 0xC2, 0, 12, 0, 0, 1, 2, 3, 4]);
        let u = unreachable(&v6).expect("icmpv6");
        let p = parse_ip(&u).expect("parses");
        assert!(matches!(
            p.transport,
            Transport::Icmp {
                kind: 1,
                code: 1,
                v6: true,
                ..
            }
        ));
        assert_eq!(p.dst.to_string(), "2001:db8:1::1");
        assert!(checksum_ok(&u));
    }

    /// Each reason's code, as RFC 792 / RFC 1812 and RFC 4443 assign them,
    /// and the errors an upstream socket reports mapped to them.
    #[test]
    fn each_reason_has_its_code() {
        let syn = tcp_v4(0x02, b"");
        for (why, v4) in [
            (Unreachable::Prohibited, 13),
            (Unreachable::Network, 0),
            (Unreachable::Host, 1),
            (Unreachable::Port, 3),
        ] {
            let u = icmp_unreachable(&syn, why).expect("icmp");
            assert_eq!((u[20], u[21]), (3, v4), "{why:?}");
            assert!(checksum_ok(&u));
        }
        let v6: Vec<_> = [
            Unreachable::Prohibited,
            Unreachable::Network,
            Unreachable::Host,
            Unreachable::Port,
        ]
        .map(|w| w.code(true))
        .into();
        assert_eq!(v6, [1, 0, 3, 4]);
        use std::io::ErrorKind as K;
        assert_eq!(
            Unreachable::of_io(K::ConnectionRefused),
            Some(Unreachable::Port)
        );
        assert_eq!(
            Unreachable::of_io(K::HostUnreachable),
            Some(Unreachable::Host)
        );
        assert_eq!(
            Unreachable::of_io(K::NetworkUnreachable),
            Some(Unreachable::Network)
        );
        assert_eq!(Unreachable::of_io(K::WouldBlock), None);
    }

    #[test]
    fn no_error_for_errors_multicast_or_later_fragments() {
        let syn = tcp_v4(0x02, b"");
        let err = unreachable(&syn).expect("icmp");
        assert!(unreachable(&err).is_none(), "no error about an error");
        let mut mc = syn.clone();
        mc[16..20].copy_from_slice(&[224, 0, 0, 1]);
        assert!(unreachable(&mc).is_none());
        let mut frag = syn.clone();
        frag[6] = 0x00;
        frag[7] = 0x02;
        assert!(unreachable(&frag).is_none());
        // An echo request does get an error.
        let mut echo = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 192, 0, 2, 10, 203, 0, 113, 5,
        ];
        echo.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        assert!(unreachable(&echo).is_some());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = tcp_reset(&b);
            let _ = unreachable(&b);
            let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 192, 0, 2, 1, 198, 51, 100, 1];
            v4.extend_from_slice(&b);
            let _ = tcp_reset(&v4);
            let _ = unreachable(&v4);
        }
    }
}
