//! Encapsulations that carry whole packets or frames from one network to
//! another, read so that a capture taken on the carrier's path shows the
//! flows inside it:
//!
//! - GRE (RFC 2784, with RFC 2890's key and sequence number) carrying IP,
//!   MPLS, bridged Ethernet (`gretap`, NVGRE) or a switch's mirrored frames
//!   (Cisco ERSPAN types I, II and III);
//! - PPTP's enhanced GRE (RFC 2637, version 1) carrying PPP;
//! - VXLAN (RFC 7348, also on Linux's historic port 8472, with or without
//!   the group-policy extension) and VXLAN-GPE;
//! - Geneve (RFC 8926);
//! - TZSP, the stream in which MikroTik routers send what they capture.
//!
//! VXLAN and Geneve are also what cloud traffic mirroring sends (AWS, Azure
//! and Google Cloud mirror a machine's packets inside them).
//!
//! Each reader takes the carrier's payload (after the outer IP or UDP
//! header) and gives the IP packet inside, or `None` when there is none to
//! read: a control or OAM message, a frame that is not IP (ARP, PPP's own
//! control protocols), an encrypted PPP frame, or bytes that do not follow
//! the encapsulation's rules.

use super::bytes::be16;
use super::capture::LinkType;
use super::packet::{ip_after_ethertype, strip_link};

/// VXLAN's IANA port (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;
/// The port Linux's VXLAN driver used before IANA assigned one, still its
/// default and the one Kubernetes' flannel uses.
pub const VXLAN_LINUX_PORT: u16 = 8472;
/// VXLAN-GPE's port (draft-ietf-nvo3-vxlan-gpe).
pub const VXLAN_GPE_PORT: u16 = 4790;
/// Geneve's port (RFC 8926).
pub const GENEVE_PORT: u16 = 6081;
/// TZSP's port.
pub const TZSP_PORT: u16 = 37008;

/// The UDP ports at which [`udp_inner`] looks for an encapsulation.
pub const UDP_PORTS: [u16; 5] = [
    VXLAN_PORT,
    VXLAN_LINUX_PORT,
    VXLAN_GPE_PORT,
    GENEVE_PORT,
    TZSP_PORT,
];

/// GRE's protocol type for bridged Ethernet frames (RFC 1701).
const ETHERTYPE_TEB: u16 = 0x6558;
/// GRE's protocol type for ERSPAN types I and II.
const ETHERTYPE_ERSPAN_2: u16 = 0x88BE;
/// GRE's protocol type for ERSPAN type III.
const ETHERTYPE_ERSPAN_3: u16 = 0x22EB;
/// GRE's protocol type for PPP (PPTP).
const ETHERTYPE_PPP: u16 = 0x880B;

/// `ip` if it starts like an IPv4 or IPv6 header.
fn ip(ip: &[u8]) -> Option<&[u8]> {
    matches!(ip.first()? >> 4, 4 | 6).then_some(ip)
}

/// The IP packet in an Ethernet frame (VLAN tags, PPPoE and MPLS read
/// through, as in a capture's own link layer).
fn ethernet_ip(frame: &[u8]) -> Option<&[u8]> {
    ip(strip_link(LinkType::Ethernet, frame).ok()?)
}

/// The IP packet after an EtherType-numbered protocol field: IP itself,
/// MPLS, a VLAN tag, or a bridged Ethernet frame.
fn typed_ip(body: &[u8], ethertype: u16) -> Option<&[u8]> {
    if ethertype == ETHERTYPE_TEB {
        ethernet_ip(body)
    } else {
        ip(ip_after_ethertype(body, ethertype, 0).ok()?)
    }
}

/// The IP packet a GRE packet carries (`p` is what follows the outer IP
/// header, protocol 47).
///
/// Version 0: the 4-byte header, then the checksum (flag C), key (K) and
/// sequence number (S) fields when flagged, 4 bytes each. Packets with
/// RFC 1701's routing, strict-source-route or recursion fields set, which
/// RFC 2784 tells receivers to discard, are not read. Version 1 is PPTP's
/// (PPP inside enhanced GRE).
pub fn gre_inner(p: &[u8]) -> Option<&[u8]> {
    let (f0, f1) = (*p.first()?, *p.get(1)?);
    let proto = be16(p, 2)?;
    match f1 & 0x07 {
        0 => {
            if f0 & 0x4F != 0 || f1 & 0xF8 != 0 {
                return None;
            }
            let at = 4 + 4 * [0x80, 0x20, 0x10]
                .iter()
                .filter(|&&flag| f0 & flag != 0)
                .count();
            let body = p.get(at..)?;
            match proto {
                // Type II has a sequence number and its own 8-byte header;
                // type I has neither.
                ETHERTYPE_ERSPAN_2 if f0 & 0x10 != 0 => erspan2_ip(body),
                ETHERTYPE_ERSPAN_2 => ethernet_ip(body),
                ETHERTYPE_ERSPAN_3 => erspan3_ip(body),
                _ => typed_ip(body, proto),
            }
        }
        1 => pptp_ip(p),
        _ => None,
    }
}

/// ERSPAN type II: version 1 in the first 4 bits of an 8-byte header,
/// then the mirrored Ethernet frame.
fn erspan2_ip(h: &[u8]) -> Option<&[u8]> {
    if h.first()? >> 4 != 1 {
        return None;
    }
    ethernet_ip(h.get(8..)?)
}

/// ERSPAN type III: version 2 in the first 4 bits of a 12-byte header
/// whose last bit (O) announces an 8-byte platform sub-header; its frame
/// type (5 bits of the 11th byte) is 0 for an Ethernet frame, 2 for an IP
/// packet.
fn erspan3_ip(h: &[u8]) -> Option<&[u8]> {
    if h.first()? >> 4 != 2 {
        return None;
    }
    let at = if h.get(11)? & 0x01 != 0 { 20 } else { 12 };
    let body = h.get(at..)?;
    match (h.get(10)? >> 2) & 0x1F {
        0 => ethernet_ip(body),
        2 => ip(body),
        _ => None,
    }
}

/// PPTP's enhanced GRE (RFC 2637): version 1, the key flag always set (its
/// field holds the payload length and the call id), an optional sequence
/// number (S) and acknowledgement number (A, in the second byte), protocol
/// PPP. The PPP frame may keep its address and control bytes (0xFF 0x03)
/// and may compress its protocol field to one byte; IPv4 is 0x21, IPv6
/// 0x57. A frame encrypted by MPPE (0xFD) or compressed is not readable.
fn pptp_ip(p: &[u8]) -> Option<&[u8]> {
    let (f0, f1) = (*p.first()?, *p.get(1)?);
    if f0 & 0xEF != 0x20 || f1 & 0x7F != 0x01 || be16(p, 2)? != ETHERTYPE_PPP {
        return None;
    }
    let at = 8 + if f0 & 0x10 != 0 { 4 } else { 0 } + if f1 & 0x80 != 0 { 4 } else { 0 };
    let len = usize::from(be16(p, 4)?);
    let ppp = p.get(at..)?;
    let ppp = &ppp[..len.min(ppp.len())];
    let ppp = ppp.strip_prefix(&[0xFF, 0x03]).unwrap_or(ppp);
    let (protocol, at) = match *ppp.first()? {
        odd if odd & 0x01 != 0 => (u16::from(odd), 1),
        _ => (be16(ppp, 0)?, 2),
    };
    match protocol {
        0x0021 | 0x0057 => ip(ppp.get(at..)?),
        _ => None,
    }
}

/// The IP packet a UDP encapsulation carries, told by `ports` (source,
/// destination; either may be the encapsulation's): VXLAN, VXLAN-GPE,
/// Geneve or TZSP.
pub fn udp_inner(p: &[u8], ports: (u16, u16)) -> Option<&[u8]> {
    let at = |port| ports.0 == port || ports.1 == port;
    if at(VXLAN_PORT) || at(VXLAN_LINUX_PORT) {
        vxlan_ip(p)
    } else if at(GENEVE_PORT) {
        geneve_ip(p)
    } else if at(VXLAN_GPE_PORT) {
        vxlan_gpe_ip(p)
    } else if at(TZSP_PORT) {
        tzsp_ip(p)
    } else {
        None
    }
}

/// VXLAN: an 8-byte header whose I flag (0x08) says the network identifier
/// is valid, the other flags clear but for the group-policy extension's G
/// (0x80), the last byte reserved (0); then an Ethernet frame.
fn vxlan_ip(p: &[u8]) -> Option<&[u8]> {
    let flags = *p.first()?;
    if flags & 0x7F != 0x08 || *p.get(7)? != 0 {
        return None;
    }
    ethernet_ip(p.get(8..)?)
}

/// VXLAN-GPE: flags with version 0 (bits 0x30), I set, O (0x01, an OAM
/// message) clear; when P (0x04) is set, the fourth byte names what
/// follows the 8-byte header (1 IPv4, 2 IPv6, 3 Ethernet), otherwise an
/// Ethernet frame follows.
fn vxlan_gpe_ip(p: &[u8]) -> Option<&[u8]> {
    let flags = *p.first()?;
    if flags & 0x39 != 0x08 {
        return None;
    }
    let body = p.get(8..)?;
    match (flags & 0x04 != 0, *p.get(3)?) {
        (false, _) | (true, 3) => ethernet_ip(body),
        (true, 1 | 2) => ip(body),
        _ => None,
    }
}

/// Geneve: version 0 and the options' length (in 4-byte words) in the
/// first byte, the O flag (a control message) clear, an EtherType naming
/// what follows the 8-byte header and the options.
fn geneve_ip(p: &[u8]) -> Option<&[u8]> {
    let first = *p.first()?;
    if first >> 6 != 0 || p.get(1)? & 0x80 != 0 {
        return None;
    }
    let at = 8 + usize::from(first & 0x3F) * 4;
    typed_ip(p.get(at..)?, be16(p, 2)?)
}

/// TZSP: version 1, type 0 or 1 (a received or a sent packet), the
/// captured frame's encapsulation (1 Ethernet, 18 IEEE 802.11), then tags
/// up to the end tag (1): padding (0) is one byte, any other tag its type,
/// its length and that many bytes. The captured frame follows.
fn tzsp_ip(p: &[u8]) -> Option<&[u8]> {
    if *p.first()? != 1 || *p.get(1)? > 1 {
        return None;
    }
    let link = match be16(p, 2)? {
        1 => LinkType::Ethernet,
        18 => LinkType::Ieee80211,
        _ => return None,
    };
    let mut at = 4;
    loop {
        match *p.get(at)? {
            0 => at += 1,
            1 => break at += 1,
            _ => at += 2 + usize::from(*p.get(at + 1)?),
        }
    }
    ip(strip_link(link, p.get(at..)?).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bytes::hex;

    /// A DNS query from 192.0.2.1 to 198.51.100.2, the packet every
    /// encapsulation below carries.
    fn inner() -> Vec<u8> {
        hex("4500001d 00004000 40110000 c0000201 c6336402 d9030035 00090000 5a")
    }

    /// An Ethernet frame (made-up MAC addresses) around `ip`, optionally
    /// with an 802.1Q tag.
    fn ethernet(ip: &[u8], vlan: bool) -> Vec<u8> {
        let mut f = hex("020000000001 020000000002");
        if vlan {
            f.extend_from_slice(&hex("81000064"));
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(ip);
        f
    }

    /// The header `head` (hex) followed by `body`.
    fn with(head: &str, body: &[u8]) -> Vec<u8> {
        let mut p = hex(head);
        p.extend_from_slice(body);
        p
    }

    /// `p` with the byte at `at` set to `v`.
    fn altered(p: &[u8], at: usize, v: u8) -> Vec<u8> {
        let mut q = p.to_vec();
        q[at] = v;
        q
    }

    fn arp() -> Vec<u8> {
        hex(
            "ffffffffffff 020000000002 0806 0001 0800 0604 0001 020000000002 c0000201 000000000000 c6336402",
        )
    }

    /// GRE version 0 per RFC 2784 and RFC 2890: bare, with checksum, key
    /// and sequence number, around IPv4, bridged Ethernet and MPLS.
    #[test]
    fn gre_version_0() {
        let ip = inner();
        assert_eq!(gre_inner(&with("00000800", &ip)), Some(ip.as_slice()));
        let all = with("b0000800 00000000 0000002a 00000007", &ip);
        assert_eq!(gre_inner(&all), Some(ip.as_slice()));
        let key_only = with("20000800 0000002a", &ip);
        assert_eq!(gre_inner(&key_only), Some(ip.as_slice()));
        let bridged = with("20006558 00000001", &ethernet(&ip, true));
        assert_eq!(gre_inner(&bridged), Some(ip.as_slice()));
        // One MPLS label with the bottom-of-stack bit, then IP.
        let mpls = with("00008847 00064140", &ip);
        assert_eq!(gre_inner(&mpls), Some(ip.as_slice()));
        // Not read: RFC 1701 routing present, a recursion count, a frame
        // that is not IP, an unknown version, a header cut short.
        assert_eq!(gre_inner(&with("40000800 00000000", &ip)), None);
        assert_eq!(gre_inner(&with("01000800", &ip)), None);
        assert_eq!(gre_inner(&with("00006558", &arp())), None);
        assert_eq!(gre_inner(&with("00020800", &ip)), None);
        assert_eq!(gre_inner(&hex("b0000800 0000")), None);
        // The flagged fields are skipped, not read as the packet.
        assert_eq!(gre_inner(&with("80000800", &ip)), None, "checksum word");
    }

    /// A switch's mirrored frames: ERSPAN type I (no sequence number, no
    /// header), type II (8-byte header, version 1) and type III (12-byte
    /// header, version 2, with and without the platform sub-header, an
    /// Ethernet frame or an IP packet).
    #[test]
    fn erspan_types() {
        let ip = inner();
        let frame = ethernet(&ip, false);
        assert_eq!(gre_inner(&with("000088be", &frame)), Some(ip.as_slice()));
        let type2 = with("100088be 00000001 10640001 00000000", &frame);
        assert_eq!(gre_inner(&type2), Some(ip.as_slice()));
        let wrong_version = with("100088be 00000001 20640001 00000000", &frame);
        assert_eq!(gre_inner(&wrong_version), None);
        let type3 = "100022eb 00000001 20640001 12345678 0000";
        assert_eq!(
            gre_inner(&with(&format!("{type3}0000"), &frame)),
            Some(ip.as_slice())
        );
        assert_eq!(
            gre_inner(&with(&format!("{type3}0001 0000000000000000"), &frame)),
            Some(ip.as_slice()),
            "platform sub-header"
        );
        assert_eq!(
            gre_inner(&with(&format!("{type3}0800"), &ip)),
            Some(ip.as_slice()),
            "frame type 2: IP"
        );
        assert_eq!(gre_inner(&with(&format!("{type3}0400"), &frame)), None);
    }

    /// PPTP's enhanced GRE with PPP inside: full and compressed PPP
    /// headers, sequence and acknowledgement numbers; an encrypted frame
    /// and a control protocol carry no readable IP.
    #[test]
    fn pptp() {
        let ip = inner();
        let gre = |flags: &str, extra: &str, ppp_head: &str| {
            let mut ppp = hex(ppp_head);
            ppp.extend_from_slice(&ip);
            let mut p = hex(flags);
            p.extend_from_slice(&hex("880b"));
            p.extend_from_slice(&u16::try_from(ppp.len()).unwrap().to_be_bytes());
            p.extend_from_slice(&hex("4000"));
            p.extend_from_slice(&hex(extra));
            p.extend_from_slice(&ppp);
            p
        };
        let want = Some(ip.as_slice());
        assert_eq!(gre_inner(&gre("3001", "00000005", "ff030021")), want);
        assert_eq!(gre_inner(&gre("3081", "00000005 00000004", "21")), want);
        assert_eq!(gre_inner(&gre("2081", "00000004", "0021")), want);
        assert_eq!(gre_inner(&gre("3001", "00000005", "ff0300fd")), None);
        assert_eq!(gre_inner(&gre("3001", "00000005", "ff03c021")), None);
        // Version 1 without the key flag is not PPTP's.
        assert_eq!(gre_inner(&gre("1001", "00000005", "ff030021")), None);
    }

    /// VXLAN, with and without the group-policy flag and on both ports; an
    /// ARP frame inside, a header without the I flag and a VXLAN packet on
    /// another port carry nothing read.
    #[test]
    fn vxlan() {
        let ip = inner();
        let mut p = hex("0800000000006400");
        p.extend_from_slice(&ethernet(&ip, false));
        let want = Some(ip.as_slice());
        assert_eq!(udp_inner(&p, (50123, VXLAN_PORT)), want);
        assert_eq!(udp_inner(&p, (VXLAN_LINUX_PORT, 50123)), want);
        assert_eq!(udp_inner(&p, (50123, 53)), None);
        let mut gbp = p.clone();
        gbp[0] = 0x88;
        gbp[3] = 0x2a;
        assert_eq!(udp_inner(&gbp, (50123, VXLAN_PORT)), want);
        let mut no_i = p.clone();
        no_i[0] = 0;
        assert_eq!(udp_inner(&no_i, (50123, VXLAN_PORT)), None);
        let mut reserved = p.clone();
        reserved[7] = 1;
        assert_eq!(udp_inner(&reserved, (50123, VXLAN_PORT)), None);
        let mut arp_inside = p[..8].to_vec();
        arp_inside.extend_from_slice(&arp());
        assert_eq!(udp_inner(&arp_inside, (50123, VXLAN_PORT)), None);
    }

    /// VXLAN-GPE naming IPv4, Ethernet, or nothing (Ethernet); an OAM
    /// message and NSH are not read.
    #[test]
    fn vxlan_gpe() {
        let ip = inner();
        let port = (50123, VXLAN_GPE_PORT);
        let want = Some(ip.as_slice());
        assert_eq!(udp_inner(&with("0c000001 00006400", &ip), port), want);
        let frame = ethernet(&ip, false);
        assert_eq!(udp_inner(&with("0c000003 00006400", &frame), port), want);
        assert_eq!(udp_inner(&with("08000000 00006400", &frame), port), want);
        assert_eq!(udp_inner(&with("0d000001 00006400", &ip), port), None);
        assert_eq!(udp_inner(&with("0c000004 00006400", &ip), port), None);
        assert_eq!(udp_inner(&with("2c000001 00006400", &ip), port), None);
    }

    /// Geneve with IPv4 directly and with an Ethernet frame after two
    /// words of options; a control message is not read.
    #[test]
    fn geneve() {
        let ip = inner();
        let port = (50123, GENEVE_PORT);
        let mut direct = hex("00000800 00000b00");
        direct.extend_from_slice(&ip);
        assert_eq!(udp_inner(&direct, port), Some(ip.as_slice()));
        let mut options = hex("02006558 00000a00 01020301 00000000");
        options.extend_from_slice(&ethernet(&ip, true));
        assert_eq!(udp_inner(&options, port), Some(ip.as_slice()));
        assert_eq!(udp_inner(&altered(&direct, 1, 0x80), port), None, "control");
        assert_eq!(udp_inner(&altered(&direct, 0, 0x40), port), None, "version");
    }

    /// TZSP with padding and a tag before the end tag, around an Ethernet
    /// frame and an 802.11 data frame (the one in `packet`'s tests, from
    /// nDPI 4.2's `capwap.pcap`).
    #[test]
    fn tzsp() {
        let ip = inner();
        let port = (50123, TZSP_PORT);
        let mut eth = hex("01000001 00 0a0100 0c0400000001 01");
        eth.extend_from_slice(&ethernet(&ip, false));
        assert_eq!(udp_inner(&eth, port), Some(ip.as_slice()));
        let dot11 = hex(
            "01000012 01 08012c00580a20690e201caba7f2139dffffffffffff0000aaaa03000000080045000148ec5a0000ff11ce4a00000000ffffffff00440043013499f7",
        );
        let got = udp_inner(&dot11, port).expect("IP in the 802.11 frame");
        assert_eq!(&got[..2], &[0x45, 0x00]);
        assert_eq!(
            udp_inner(&altered(&eth, 3, 0x77), port),
            None,
            "unknown_link"
        );
        // Tags that run off the end, version 2, a configuration message.
        assert_eq!(udp_inner(&hex("01000001 0a08"), port), None);
        assert_eq!(udp_inner(&altered(&eth, 0, 2), port), None, "v2");
        assert_eq!(udp_inner(&altered(&eth, 1, 3), port), None, "config");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..160)) {
            let _ = gre_inner(&b);
            for port in UDP_PORTS {
                let _ = udp_inner(&b, (port, 1));
            }
        }
    }
}
