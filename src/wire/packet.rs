//! Checked, zero-copy views of IP packets: link layers (Ethernet with
//! stacked VLAN tags and PPPoE sessions, Linux SLL/SLL2, Linux NFLOG,
//! null/loopback, raw, PPP and Cisco HDLC, MPLS, IEEE 802.11), IPv4 (with 6in4), IPv6 (with extension headers), TCP, UDP, ICMP
//! and ICMPv6. A packet that cannot be
//! parsed is a [`Drop`] with a reason, never a panic.

use super::bytes::{be16, be32};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::capture::LinkType;

/// TCP header flag bits (RFC 9293).
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers (opens a connection).
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// ICMP (RFC 792) and ICMPv6 (RFC 4443) message types geowall handles.
pub mod icmp_type {
    /// ICMP echo reply.
    pub const ECHO_REPLY_V4: u8 = 0;
    /// ICMP destination unreachable.
    pub const UNREACHABLE_V4: u8 = 3;
    /// ICMP echo request.
    pub const ECHO_REQUEST_V4: u8 = 8;
    /// ICMPv6 destination unreachable.
    pub const UNREACHABLE_V6: u8 = 1;
    /// ICMPv6 echo request.
    pub const ECHO_REQUEST_V6: u8 = 128;
    /// ICMPv6 echo reply.
    pub const ECHO_REPLY_V6: u8 = 129;
    /// ICMPv6 types below this are errors.
    pub const FIRST_INFO_V6: u8 = 128;
}

/// Why a packet was not parsed (counted, not an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Shorter than its headers.
    Truncated,
    /// Not IPv4 or IPv6 (e.g. ARP), or an unknown link type.
    NotIp,
    /// A header field is impossible (length, version).
    Malformed,
}

impl Drop {
    /// A stable name for counters and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::NotIp => "not-ip",
            Drop::Malformed => "malformed",
        }
    }
}

/// An IP fragment's identity, for reassembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Identification.
    pub id: u32,
    /// Offset in bytes.
    pub offset: u32,
    /// More fragments follow.
    pub more: bool,
}

/// The transport part of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// TCP.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgement number.
        ack: u32,
        /// Flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
        flags: u8,
        /// Segment payload.
        payload: &'a [u8],
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Datagram payload.
        payload: &'a [u8],
    },
    /// ICMP or ICMPv6.
    Icmp {
        /// Type.
        kind: u8,
        /// Code.
        code: u8,
        /// Echo identifier, for echo request/reply.
        echo_id: Option<u16>,
        /// True for ICMPv6.
        v6: bool,
        /// Message body after the 4-byte header.
        payload: &'a [u8],
    },
    /// A fragment (not the first, or the first too short to hold the
    /// transport header): its transport is not parsed here.
    Fragment(Fragment),
    /// Another IP protocol.
    Other {
        /// The IP protocol number.
        proto: u8,
    },
}

/// A parsed IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number of the transport (after extension headers).
    pub proto: u8,
    /// Present when the packet is a fragment (including the first).
    pub fragment: Option<Fragment>,
    /// True when this packet was carried inside IPv4 (6in4, protocol 41).
    pub tunnelled: bool,
    /// Everything after the IP header (and IPv6 extension headers): the
    /// transport header and payload, or a fragment's data.
    pub l4: &'a [u8],
    /// The transport.
    pub transport: Transport<'a>,
}

impl Packet<'_> {
    /// Source and destination ports (0 for non-port protocols).
    pub fn ports(&self) -> (u16, u16) {
        match self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                (sport, dport)
            }
            _ => (0, 0),
        }
    }
}

/// The IP packet after EtherType `et`, whose field ends at `at` in `f`:
/// IPv4, IPv6, 802.1Q/802.1ad tags (possibly stacked), a PPPoE session or
/// an MPLS label stack.
pub(crate) fn ip_after_ethertype(f: &[u8], mut et: u16, mut at: usize) -> Result<&[u8], Drop> {
    // 802.1Q / 802.1ad tags, possibly stacked.
    while et == 0x8100 || et == 0x88A8 || et == 0x9100 {
        et = be16(f, at + 2).ok_or(Drop::Truncated)?;
        at += 4;
    }
    match et {
        0x0800 | 0x86DD => f.get(at..).ok_or(Drop::Truncated),
        // PPPoE session: 6-byte PPPoE header, then the PPP protocol
        // (0x0021 IPv4, 0x0057 IPv6).
        0x8864 => match be16(f, at + 6).ok_or(Drop::Truncated)? {
            0x0021 | 0x0057 => f.get(at + 8..).ok_or(Drop::Truncated),
            _ => Err(Drop::NotIp),
        },
        // MPLS: 4-byte labels up to the one with the bottom-of-stack
        // bit (at most 8), then IP, told by its version nibble.
        0x8847 | 0x8848 => {
            for _ in 0..8 {
                let bottom = f.get(at + 2).ok_or(Drop::Truncated)? & 0x01 != 0;
                at += 4;
                if bottom {
                    let ip = f.get(at..).ok_or(Drop::Truncated)?;
                    return match ip.first().map(|b| b >> 4) {
                        Some(4 | 6) => Ok(ip),
                        _ => Err(Drop::NotIp),
                    };
                }
            }
            Err(Drop::NotIp)
        }
        _ => Err(Drop::NotIp),
    }
}

/// The IP packet inside a link-layer frame.
pub fn strip_link(link: LinkType, f: &[u8]) -> Result<&[u8], Drop> {
    let after_ethertype = |et: u16, at: usize| ip_after_ethertype(f, et, at);
    match link {
        LinkType::Ethernet => after_ethertype(be16(f, 12).ok_or(Drop::Truncated)?, 14),
        LinkType::Raw => Ok(f),
        LinkType::LinuxSll => after_ethertype(be16(f, 14).ok_or(Drop::Truncated)?, 16),
        LinkType::LinuxSll2 => after_ethertype(be16(f, 0).ok_or(Drop::Truncated)?, 20),
        LinkType::Null | LinkType::Loop => {
            // The address family is 4 bytes in host or network order; the
            // IP version nibble decides.
            let ip = f.get(4..).ok_or(Drop::Truncated)?;
            match ip.first().map(|b| b >> 4) {
                Some(4 | 6) => Ok(ip),
                _ => Err(Drop::NotIp),
            }
        }
        LinkType::CiscoHdlc => after_ethertype(be16(f, 2).ok_or(Drop::Truncated)?, 4),
        LinkType::Ppp => match (f.first(), f.get(1)) {
            // Cisco HDLC recorded as PPP: unicast or broadcast address,
            // control 0, then an EtherType.
            (Some(0x0F | 0x8F), Some(0x00)) => {
                after_ethertype(be16(f, 2).ok_or(Drop::Truncated)?, 4)
            }
            // PPP in HDLC-like framing (address 0xFF, control 0x03), or
            // with those fields compressed away; then the PPP protocol.
            _ => {
                let at = if f.starts_with(&[0xFF, 0x03]) { 2 } else { 0 };
                match be16(f, at).ok_or(Drop::Truncated)? {
                    0x0021 | 0x0057 => f.get(at + 2..).ok_or(Drop::Truncated),
                    // MPLS unicast and multicast (RFC 3032).
                    0x0281 | 0x0283 => ip_after_ethertype(f, 0x8847, at + 2),
                    _ => Err(Drop::NotIp),
                }
            }
        },
        LinkType::Ieee80211 => ieee80211_ip(f),
        LinkType::Radiotap => {
            // Version 0, a pad byte, then the header's whole length
            // (little-endian), the 802.11 frame after it.
            if f.first() != Some(&0) {
                return Err(Drop::Malformed);
            }
            let len = usize::from(u16::from_le_bytes([
                *f.get(2).ok_or(Drop::Truncated)?,
                *f.get(3).ok_or(Drop::Truncated)?,
            ]));
            if len < 8 {
                return Err(Drop::Malformed);
            }
            ieee80211_ip(f.get(len..).ok_or(Drop::Truncated)?)
        }
        LinkType::Nflog => nflog_ip(f),
        LinkType::Other(_) => Err(Drop::NotIp),
    }
}

/// The IP packet in an IEEE 802.11 data frame whose frame control field
/// is `fc0`, `fc1`: the MAC header (24 bytes, 30 with four addresses, 2
/// more for QoS, 4 more for HT control), then an LLC/SNAP header naming
/// IPv4 or IPv6. Null and protected (encrypted) frames carry none.
pub(crate) fn dot11_data_ip(frame: &[u8], fc0: u8, fc1: u8) -> Option<&[u8]> {
    let (version, kind, subtype) = (fc0 & 0x03, (fc0 >> 2) & 0x03, fc0 >> 4);
    if version != 0 || kind != 2 || subtype & 0x04 != 0 || fc1 & 0x40 != 0 {
        return None;
    }
    let mut at = 24;
    if fc1 & 0x03 == 0x03 {
        at += 6;
    }
    if subtype & 0x08 != 0 {
        at += 2;
        if fc1 & 0x80 != 0 {
            at += 4;
        }
    }
    // LLC/SNAP: DSAP and SSAP 0xAA, control 3, an OUI, the EtherType.
    if frame.get(at..at + 3)? != [0xAA, 0xAA, 0x03] {
        return None;
    }
    match be16(frame, at + 6)? {
        0x0800 | 0x86DD => frame.get(at + 8..),
        _ => None,
    }
}

/// NFLOG's attribute holding the logged packet (`NFULA_PAYLOAD`).
const NFULA_PAYLOAD: u16 = 9;

/// The IP packet in a netfilter log record: a 4-byte header (address
/// family, version 0, resource id), then attributes, each a 2-byte length
/// (its 4-byte header included) and a 2-byte type in the capturing host's
/// byte order, padded to 4 bytes; the payload attribute holds the packet
/// from its IP header on. The byte order is told by the types, which are
/// all below 256.
fn nflog_ip(f: &[u8]) -> Result<&[u8], Drop> {
    if f.len() < 4 {
        return Err(Drop::Truncated);
    }
    if f[1] != 0 {
        return Err(Drop::Malformed);
    }
    let mut at = 4;
    while at < f.len() {
        let tlv = f.get(at..at + 4).ok_or(Drop::Truncated)?;
        let (mut len, mut kind) = (
            u16::from_le_bytes([tlv[0], tlv[1]]),
            u16::from_le_bytes([tlv[2], tlv[3]]),
        );
        if kind > 0xFF {
            len = len.swap_bytes();
            kind = kind.swap_bytes();
        }
        let len = usize::from(len);
        if len < 4 {
            return Err(Drop::Malformed);
        }
        if kind == NFULA_PAYLOAD {
            let ip = f.get(at + 4..at + len).ok_or(Drop::Truncated)?;
            return match ip.first().map(|b| b >> 4) {
                Some(4 | 6) => Ok(ip),
                _ => Err(Drop::NotIp),
            };
        }
        at += len.div_ceil(4) * 4;
    }
    Err(Drop::NotIp)
}

/// The IP packet in an IEEE 802.11 frame: an unprotected data frame
/// ([`dot11_data_ip`]); management, control, null and encrypted frames
/// carry none a capture can read.
fn ieee80211_ip(frame: &[u8]) -> Result<&[u8], Drop> {
    let (a, b) = (
        *frame.first().ok_or(Drop::Truncated)?,
        *frame.get(1).ok_or(Drop::Truncated)?,
    );
    let ip = dot11_data_ip(frame, a, b).ok_or(Drop::NotIp)?;
    match ip.first().map(|v| v >> 4) {
        Some(4 | 6) => Ok(ip),
        _ => Err(Drop::NotIp),
    }
}

/// Parses an IP packet (IPv4 or IPv6).
pub fn parse_ip(b: &[u8]) -> Result<Packet<'_>, Drop> {
    match b.first().map(|v| v >> 4) {
        Some(4) => parse_v4(b),
        Some(6) => parse_v6(b, false),
        Some(_) => Err(Drop::Malformed),
        None => Err(Drop::Truncated),
    }
}

fn parse_v4(b: &[u8]) -> Result<Packet<'_>, Drop> {
    let ihl = usize::from(b.first().ok_or(Drop::Truncated)? & 0x0F) * 4;
    if ihl < 20 {
        return Err(Drop::Malformed);
    }
    let total = usize::from(be16(b, 2).ok_or(Drop::Truncated)?);
    if total < ihl {
        return Err(Drop::Malformed);
    }
    // Ethernet padding may follow; a capture may cut the packet short.
    let body = b.get(ihl..total.min(b.len())).ok_or(Drop::Truncated)?;
    let id = u32::from(be16(b, 4).ok_or(Drop::Truncated)?);
    let ff = be16(b, 6).ok_or(Drop::Truncated)?;
    let proto = *b.get(9).ok_or(Drop::Truncated)?;
    let src: [u8; 4] = b
        .get(12..16)
        .ok_or(Drop::Truncated)?
        .try_into()
        .map_err(|_| Drop::Truncated)?;
    let dst: [u8; 4] = b
        .get(16..20)
        .ok_or(Drop::Truncated)?
        .try_into()
        .map_err(|_| Drop::Truncated)?;
    let more = ff & 0x2000 != 0;
    let offset = u32::from(ff & 0x1FFF) * 8;
    let fragment = (more || offset > 0).then_some(Fragment { id, offset, more });
    if proto == 41 && fragment.is_none() {
        let mut inner = parse_v6(body, true)?;
        inner.tunnelled = true;
        return Ok(inner);
    }
    let transport = if offset > 0 {
        Transport::Fragment(Fragment { id, offset, more })
    } else {
        transport(proto, body, false).unwrap_or(Transport::Fragment(Fragment { id, offset, more }))
    };
    Ok(Packet {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        proto,
        fragment,
        tunnelled: false,
        l4: body,
        transport,
    })
}

fn parse_v6(b: &[u8], tunnelled: bool) -> Result<Packet<'_>, Drop> {
    if b.first().map(|v| v >> 4) != Some(6) {
        return Err(Drop::Malformed);
    }
    let plen = usize::from(be16(b, 4).ok_or(Drop::Truncated)?);
    let src: [u8; 16] = b
        .get(8..24)
        .ok_or(Drop::Truncated)?
        .try_into()
        .map_err(|_| Drop::Truncated)?;
    let dst: [u8; 16] = b
        .get(24..40)
        .ok_or(Drop::Truncated)?
        .try_into()
        .map_err(|_| Drop::Truncated)?;
    let end = (40 + plen).min(b.len());
    let mut next = *b.get(6).ok_or(Drop::Truncated)?;
    let mut at = 40;
    let mut fragment = None;
    // Extension headers: hop-by-hop, routing, fragment, destination
    // options, at most 8 of them.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let n = *b.get(at).ok_or(Drop::Truncated)?;
                let len = (usize::from(*b.get(at + 1).ok_or(Drop::Truncated)?) + 1) * 8;
                next = n;
                at += len;
            }
            44 => {
                let n = *b.get(at).ok_or(Drop::Truncated)?;
                let fo = be16(b, at + 2).ok_or(Drop::Truncated)?;
                let id = be32(b, at + 4).ok_or(Drop::Truncated)?;
                fragment = Some(Fragment {
                    id,
                    offset: u32::from(fo & 0xFFF8),
                    more: fo & 1 != 0,
                });
                next = n;
                at += 8;
            }
            _ => break,
        }
    }
    let body = b.get(at..end.max(at)).ok_or(Drop::Truncated)?;
    let transport = match fragment {
        Some(f) if f.offset > 0 => Transport::Fragment(f),
        _ => transport(next, body, true).unwrap_or(Transport::Fragment(fragment.unwrap_or(
            Fragment {
                id: 0,
                offset: 0,
                more: false,
            },
        ))),
    };
    if matches!(transport, Transport::Fragment(_)) && fragment.is_none() {
        return Err(Drop::Truncated);
    }
    Ok(Packet {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        proto: next,
        fragment,
        tunnelled,
        l4: body,
        transport,
    })
}

/// The transport view, or `None` when the header does not fit.
fn transport(proto: u8, b: &[u8], v6: bool) -> Option<Transport<'_>> {
    Some(match proto {
        6 => {
            let off = usize::from(*b.get(12)? >> 4) * 4;
            if off < 20 {
                return None;
            }
            Transport::Tcp {
                sport: be16(b, 0)?,
                dport: be16(b, 2)?,
                seq: be32(b, 4)?,
                ack: be32(b, 8)?,
                flags: *b.get(13)?,
                payload: b.get(off..)?,
            }
        }
        17 => {
            let len = usize::from(be16(b, 4)?);
            let end = if len >= 8 { len.min(b.len()) } else { b.len() };
            Transport::Udp {
                sport: be16(b, 0)?,
                dport: be16(b, 2)?,
                payload: b.get(8..end)?,
            }
        }
        1 | 58 => {
            let kind = *b.first()?;
            let echo = if v6 {
                matches!(kind, icmp_type::ECHO_REQUEST_V6 | icmp_type::ECHO_REPLY_V6)
            } else {
                matches!(kind, icmp_type::ECHO_REPLY_V4 | icmp_type::ECHO_REQUEST_V4)
            };
            Transport::Icmp {
                kind,
                code: *b.get(1)?,
                echo_id: if echo { be16(b, 4) } else { None },
                v6: proto == 58,
                payload: b.get(4..)?,
            }
        }
        other => Transport::Other { proto: other },
    })
}

/// Tunnels inside tunnels unwrapped at most.
const MAX_TUNNEL_DEPTH: usize = 4;

/// The packet inside `ip`'s tunnels ([`carried_ip`], at most
/// four deep), or `ip` itself when it carries none.
pub fn innermost_ip(mut ip: &[u8]) -> &[u8] {
    for _ in 0..MAX_TUNNEL_DEPTH {
        match carried_ip(ip) {
            Some(inner) => ip = inner,
            None => break,
        }
    }
    ip
}

/// The IP packet `ip` carries, if it is a tunnel's: a GTPv1-U G-PDU on UDP
/// port 2152 (mobile core captures), a CAPWAP data packet with a whole
/// frame on UDP 5247 (wireless controllers), VXLAN, VXLAN-GPE, Geneve or
/// TZSP on their UDP ports, GRE (with ERSPAN's mirrored frames or PPTP's
/// PPP: see [`super::encap`]), or IP in IP (IPv4 or IPv6 inside IPv6, IPv4
/// inside IPv4; IPv6 inside IPv4 is read by [`parse_ip`] itself). A
/// fragment is not unwrapped.
pub fn carried_ip(ip: &[u8]) -> Option<&[u8]> {
    if !may_carry(ip) {
        return None;
    }
    let p = parse_ip(ip).ok()?;
    if p.fragment.is_some() {
        return None;
    }
    match p.transport {
        Transport::Udp {
            sport,
            dport,
            payload,
        } => {
            if sport == 2152 || dport == 2152 {
                gtp_u_inner(payload)
            } else {
                super::encap::udp_inner(payload, (sport, dport))
                    .or_else(|| super::tunnel::capwap_data_inner(payload, (sport, dport)))
            }
        }
        Transport::Other { proto: 47 } => super::encap::gre_inner(p.l4),
        Transport::Other { proto: 4 | 41 } => {
            let inner = p.l4;
            matches!(inner.first().map(|b| b >> 4), Some(4 | 6)).then_some(inner)
        }
        _ => None,
    }
}

/// Whether `ip` can be a tunnel's packet at all, read from a few header
/// bytes, so that the packets of ordinary flows are not parsed twice: an
/// IPv4 packet of protocol 4, 41 or 47 (GRE), or UDP with a tunnel's port
/// at either end; an IPv6 packet that is not plain TCP or ICMPv6.
fn may_carry(ip: &[u8]) -> bool {
    let Some(&first) = ip.first() else {
        return false;
    };
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0F) * 4;
            match ip.get(9) {
                Some(4 | 41 | 47) => true,
                Some(17) => [ihl, ihl + 2].into_iter().any(|at| {
                    be16(ip, at).is_some_and(|port| {
                        port == 2152 || port == 5247 || super::encap::UDP_PORTS.contains(&port)
                    })
                }),
                _ => false,
            }
        }
        6 => !matches!(ip.get(6), Some(6 | 58)),
        _ => false,
    }
}

/// The IP packet inside a GTPv1-U G-PDU, if that is what `p` is.
fn gtp_u_inner(p: &[u8]) -> Option<&[u8]> {
    let flags = *p.first()?;
    if flags >> 5 != 1 || flags & 0x10 == 0 || *p.get(1)? != 0xFF {
        return None;
    }
    let mut at = 8;
    if flags & 0x07 != 0 {
        let mut next = *p.get(11)?;
        at = 12;
        // Extension headers: length in 4-byte units, next type last.
        while next != 0 {
            let units = usize::from(*p.get(at)?);
            if units == 0 {
                return None;
            }
            at += units * 4;
            next = *p.get(at - 1)?;
        }
    }
    let inner = p.get(at..)?;
    matches!(inner.first().map(|b| b >> 4), Some(4 | 6)).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bytes::hex;

    #[test]
    fn ethernet_two_vlans_and_pppoe() {
        // The start of a real frame (nDPI's dns.pcap): Ethernet, VLAN 421,
        // VLAN 785, PPPoE session, PPP IPv4, UDP to port 53.
        let mut f = hex("000000000001d494e80eadc1810001a58100031188641100556a003f0021");
        let mut ip = hex("4500003d00004000401184a152b271f552b29eb5b8370035002900000000");
        // Fix the lengths to what we carry: 20 IP + 8 UDP + 1 payload byte.
        ip[2..4].copy_from_slice(&29u16.to_be_bytes());
        ip[24..26].copy_from_slice(&9u16.to_be_bytes());
        ip.truncate(29);
        f.extend_from_slice(&ip);
        let inner = strip_link(LinkType::Ethernet, &f).expect("IP inside");
        let p = parse_ip(inner).expect("parses");
        assert_eq!(p.dst.to_string(), "82.178.158.181");
        assert_eq!(p.ports(), (47159, 53));
    }

    /// PPP (with and without its address and control bytes), Cisco HDLC
    /// (also as some systems record it under PPP's link type) and an MPLS
    /// label stack: each leads to the IP packet inside.
    #[test]
    fn ppp_cisco_hdlc_and_mpls() {
        let mut ip = hex("4500001d00004000401100000102030405060708d903003500090000");
        ip.push(0x5a);
        let framed = |head: &str| {
            let mut f = hex(head);
            f.extend_from_slice(&ip);
            f
        };
        let cases = [
            (LinkType::Ppp, framed("ff030021")),
            (LinkType::Ppp, framed("0021")),
            (LinkType::Ppp, framed("0f000800")),
            (LinkType::CiscoHdlc, framed("8f000800")),
            // Two MPLS labels, the second at the bottom of the stack.
            (LinkType::CiscoHdlc, framed("0f0088470001200000012140")),
            // MPLS in PPP (protocol 0x0281), one label.
            (LinkType::Ppp, framed("ff0302810001213f")),
            (
                LinkType::Ethernet,
                framed("00000000000100000000000288470001213f"),
            ),
        ];
        for (link, f) in cases {
            let inner = strip_link(link, &f).unwrap_or_else(|e| panic!("{link:?} {f:02x?}: {e:?}"));
            assert_eq!(inner, ip.as_slice(), "{link:?}");
            assert_eq!(parse_ip(inner).map(|p| p.ports()), Ok((55555, 53)));
        }
        // Not IP: a PPP control protocol (LCP), an MPLS stack with no bottom.
        assert_eq!(
            strip_link(LinkType::Ppp, &framed("ff03c021")),
            Err(Drop::NotIp)
        );
        assert_eq!(
            strip_link(LinkType::CiscoHdlc, &framed("0f0088470001200000012000")),
            Err(Drop::NotIp)
        );
    }

    /// IPv4 in IPv4, IPv4 in IPv6, IPv6 in IPv6 (nested twice) and GTP-U:
    /// each is read as the packet inside; a fragment and plain UDP are not.
    #[test]
    fn packets_inside_tunnels() {
        let inner = hex("4500001d00004000401100000102030405060708d9030035000900005a");
        let v4 = |proto: u8, body: &[u8]| {
            let mut h = hex("450000000000400040000000c0000201c6336402");
            h[2..4].copy_from_slice(&u16::try_from(20 + body.len()).unwrap().to_be_bytes());
            h[9] = proto;
            h.extend_from_slice(body);
            h
        };
        let v6 = |next: u8, body: &[u8]| {
            let mut h = hex("6000000000000040");
            h[4..6].copy_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
            h[6] = next;
            h.extend_from_slice(&hex("20010db8000000000000000000000001"));
            h.extend_from_slice(&hex("20010db8000000000000000000000002"));
            h.extend_from_slice(body);
            h
        };
        assert_eq!(carried_ip(&v4(4, &inner)), Some(inner.as_slice()));
        assert_eq!(carried_ip(&v6(4, &inner)), Some(inner.as_slice()));
        let six_in_six = v6(41, &v6(41, &v6(4, &inner)));
        assert_eq!(innermost_ip(&six_in_six), inner.as_slice());
        // GTP-U: a G-PDU (version 1, PT, message 0xFF) on port 2152.
        let mut gtp = hex("0868086800000000");
        let mut g = hex("30ff000000000001");
        g[2..4].copy_from_slice(&u16::try_from(inner.len()).unwrap().to_be_bytes());
        g.extend_from_slice(&inner);
        gtp[4..6].copy_from_slice(&u16::try_from(8 + g.len()).unwrap().to_be_bytes());
        gtp.extend_from_slice(&g);
        assert_eq!(innermost_ip(&v4(17, &gtp)), inner.as_slice());
        // GRE (protocol 47) over IPv4 and IPv6, with a key.
        let mut gre = hex("20000800 0000002a");
        gre.extend_from_slice(&inner);
        assert_eq!(carried_ip(&v4(47, &gre)), Some(inner.as_slice()));
        assert_eq!(carried_ip(&v6(47, &gre)), Some(inner.as_slice()));
        // VXLAN to port 4789: an Ethernet frame inside.
        let mut vxlan = hex("c35112b500000000 0800000000006400 020000000001 020000000002 0800");
        vxlan.extend_from_slice(&inner);
        let len = u16::try_from(vxlan.len()).unwrap();
        vxlan[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(carried_ip(&v4(17, &vxlan)), Some(inner.as_slice()));
        // Not unwrapped: plain UDP, a tunnel packet that is a fragment.
        assert_eq!(carried_ip(&inner), None);
        let mut fragment = v4(4, &inner);
        fragment[6] = 0x20;
        assert_eq!(carried_ip(&fragment), None);
        // Deeper than MAX_TUNNEL_DEPTH: what is left after that many.
        let deep = v4(4, &v4(4, &v4(4, &v4(4, &v4(4, &inner)))));
        assert_eq!(innermost_ip(&deep), v4(4, &inner).as_slice());
    }

    /// A Wi-Fi card in monitor mode: an unprotected 802.11 data frame (a
    /// DHCP request, from nDPI 4.2's `capwap.pcap`), bare and after a
    /// radiotap header; a protected one and a beacon carry no IP.
    #[test]
    fn wifi_monitor_captures() {
        let frame = hex(
            "08012c00580a20690e201caba7f2139dffffffffffff0000aaaa03000000080045000148ec5a0000ff11ce4a00000000ffffffff00440043013499f7",
        );
        let ip = strip_link(LinkType::Ieee80211, &frame).expect("IP inside");
        assert_eq!(&ip[..2], &[0x45, 0x00]);
        assert_eq!(&ip[16..20], &[255, 255, 255, 255]);
        let mut radiotap = hex("0000080000000000");
        radiotap.extend_from_slice(&frame);
        assert_eq!(strip_link(LinkType::Radiotap, &radiotap), Ok(ip));
        let mut protected = frame.clone();
        protected[1] |= 0x40;
        assert_eq!(
            strip_link(LinkType::Ieee80211, &protected),
            Err(Drop::NotIp)
        );
        let mut beacon = frame.clone();
        beacon[0] = 0x80;
        assert_eq!(strip_link(LinkType::Ieee80211, &beacon), Err(Drop::NotIp));
        // A QoS data frame (2 more header bytes) with four addresses (6 more).
        let mut qos = frame[..24].to_vec();
        qos[0] = 0x88;
        qos[1] = 0x03;
        qos.extend_from_slice(&[0; 6]);
        qos.extend_from_slice(&[0; 2]);
        qos.extend_from_slice(&frame[24..]);
        assert_eq!(strip_link(LinkType::Ieee80211, &qos), Ok(ip));
        let mut short = hex("0000ff00");
        short.extend_from_slice(&frame);
        assert_eq!(strip_link(LinkType::Radiotap, &short), Err(Drop::Truncated));
    }

    /// A netfilter log record from tcpdump 4.99.6's `nflog.pcap` (a DNS
    /// answer logged by an `NFLOG` rule): attributes in little-endian, the
    /// packet in the payload attribute. The same record in big-endian, one
    /// without a payload attribute and one with a broken length.
    #[test]
    fn nflog_records() {
        let f = hex(
            "02000014080001000800012705000a00000000000800040000000002100008000006ffffb8a386b9c3d6000006000f000001000006001100000e0000120010000811961c10c8b8a386b9c3d6080000001400030000000000522a1f9e00000000000960fc4d00090045000049000040003711c5144a522a2a0a0000140035a65900356ddf437181800001000100000000076578616d706c6503636f6d0000010001c00c0001000100002f9600045db8d877000000",
        );
        let ip = strip_link(LinkType::Nflog, &f).expect("the logged packet");
        assert_eq!(ip.len(), 0x49);
        let p = parse_ip(ip).expect("IPv4");
        assert_eq!(p.ports(), (53, 42585));
        // Big-endian: swap every attribute's length and type.
        let mut be = f.clone();
        let mut at = 4;
        while at < be.len() {
            let len = usize::from(u16::from_le_bytes([be[at], be[at + 1]]));
            be.swap(at, at + 1);
            be.swap(at + 2, at + 3);
            at += len.div_ceil(4) * 4;
        }
        assert_eq!(strip_link(LinkType::Nflog, &be), Ok(ip));
        assert_eq!(strip_link(LinkType::Nflog, &f[..24]), Err(Drop::NotIp));
        let mut broken = f.clone();
        broken[4] = 2;
        assert_eq!(strip_link(LinkType::Nflog, &broken), Err(Drop::Malformed));
    }

    #[test]
    fn drops_have_reasons() {
        assert_eq!(
            strip_link(LinkType::Ethernet, &[0; 10]),
            Err(Drop::Truncated)
        );
        assert_eq!(
            strip_link(LinkType::Ethernet, &hex("ffffffffffff0000000000010806")),
            Err(Drop::NotIp)
        );
        assert_eq!(parse_ip(&[0x45, 0, 0, 10]), Err(Drop::Malformed));
        assert_eq!(parse_ip(&[]), Err(Drop::Truncated));
        assert_eq!(parse_ip(&[0x75]), Err(Drop::Malformed));
    }

    #[test]
    fn fragments_are_flagged_not_parsed() {
        // IPv4, MF set, UDP: the first fragment still shows its ports; a
        // later one is a Fragment.
        let mut first = hex("4500001c000120004011000001020304c6336401");
        first.extend_from_slice(&hex("d903003500080000"));
        let p = parse_ip(&first).expect("first fragment");
        assert_eq!(p.fragment.map(|f| (f.offset, f.more)), Some((0, true)));
        let mut later = first.clone();
        later[6] = 0x00;
        later[7] = 0x02; // offset 16 bytes, no MF
        let p = parse_ip(&later).expect("later fragment");
        assert!(matches!(
            p.transport,
            Transport::Fragment(Fragment {
                offset: 16,
                more: false,
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::Null, LinkType::Raw, LinkType::Ppp, LinkType::CiscoHdlc, LinkType::Ieee80211, LinkType::Radiotap] {
                if let Ok(ip) = strip_link(link, &b) {
                    let _ = parse_ip(ip);
                }
            }
            let mut v4 = vec![0x45];
            v4.extend_from_slice(&b);
            let _ = parse_ip(&v4);
            let _ = parse_ip(innermost_ip(&v4));
            let mut v6 = vec![0x60];
            v6.extend_from_slice(&b);
            let _ = parse_ip(&v6);
            let _ = parse_ip(innermost_ip(&v6));
        }
    }
}
