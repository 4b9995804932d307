//! The TUN device: created by name (optionally moved into another network
//! namespace and addressed there) or adopted from a file descriptor that a
//! platform handed over (Android's `VpnService`, a parent process).

use std::io;
use std::process::Command;

use ipnet::IpNet;

/// Where the TUN comes from and how it is set up.
#[derive(Debug, Clone)]
pub struct TunSpec {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// MTU (default 65,535; the engine's must match).
    pub mtu: u16,
    /// Move the interface into this named network namespace
    /// (`/run/netns/NAME`) and set it up there; the engine and its
    /// sockets stay in the current one.
    pub netns: Option<String>,
    /// Addresses for the interface.
    pub addresses: Vec<IpNet>,
    /// Point the IPv4 and IPv6 default routes at the TUN. Only with
    /// `netns`: whole-host routing is `geowall run`'s job, done with policy
    /// routing so the engine's own sockets cannot loop.
    pub default_route: bool,
    /// Use the kernel's TUN offloads (a virtio-net header on every packet):
    /// the apps' kernel stops computing checksums for what it sends into
    /// the TUN and stops checking those geowall writes back.
    pub offload: bool,
}

/// Size of the virtio-net header in front of each packet with offloads.
pub const VNET_HDR: usize = 10;
/// The packet's checksum is to be finished from `csum_start` on, into
/// `csum_start + csum_offset` (virtio-net `VIRTIO_NET_HDR_F_NEEDS_CSUM`).
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;

/// An open TUN device, non-blocking, registered with tokio.
pub struct Tun {
    dev: tun_rs::AsyncDevice,
    /// Packets carry a virtio-net header (see [`TunSpec::offload`]).
    offload: bool,
    mtu: u16,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

fn ip(ns: Option<&str>, args: &[&str]) -> io::Result<()> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(args);
    let out = c
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `ip` (iproute2): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}{}` failed: {}",
            ns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Tun {
    /// Creates the device described by `spec` and sets it up.
    pub fn create(spec: &TunSpec) -> io::Result<Self> {
        if spec.name.is_empty() || spec.name.len() > 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TUN name '{}' must be 1 to 15 bytes", spec.name),
            ));
        }
        if spec.default_route && spec.netns.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a default route through the TUN needs --netns (whole-host routing is `geowall run`)",
            ));
        }
        let dev = tun_rs::DeviceBuilder::new()
            .name(&spec.name)
            .mtu(spec.mtu)
            .offload(spec.offload)
            .build_async()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create TUN device {}{}: {e}",
                        spec.name,
                        if spec.offload { " with offloads" } else { "" }
                    ),
                )
            })?;
        let ns = spec.netns.as_deref();
        if let Some(ns) = ns {
            ip(None, &["link", "set", "dev", &spec.name, "netns", ns])?;
        }
        let mtu = spec.mtu.to_string();
        ip(ns, &["link", "set", "dev", &spec.name, "mtu", &mtu, "up"])?;
        for a in &spec.addresses {
            let a = a.to_string();
            let mut args = vec!["addr", "add", a.as_str(), "dev", spec.name.as_str()];
            if a.contains(':') {
                args.push("nodad");
            }
            ip(ns, &args)?;
        }
        if spec.default_route {
            ip(ns, &["route", "replace", "default", "dev", &spec.name])?;
            if spec.addresses.iter().any(|a| matches!(a, IpNet::V6(_))) {
                ip(
                    ns,
                    &["-6", "route", "replace", "default", "dev", &spec.name],
                )?;
            }
        }
        Ok(Self {
            dev,
            offload: spec.offload,
            mtu: spec.mtu,
        })
    }

    /// Adopts a TUN device opened elsewhere, without offloads: a file
    /// descriptor a platform handed over (Android's `VpnService`) becomes
    /// one with `tun_rs::AsyncDevice::from_fd`, in the caller that owns
    /// the descriptor (it is `unsafe`: the phone library does it).
    pub fn from_device(dev: tun_rs::AsyncDevice, mtu: u16) -> Self {
        Self {
            dev,
            offload: false,
            mtu,
        }
    }

    /// The MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Bytes a read buffer needs (a packet and its header, if any).
    pub fn buffer_len(&self) -> usize {
        usize::from(self.mtu).max(1500) + VNET_HDR + 64
    }

    /// Reads what the kernel has (waiting for it); hand it to
    /// [`Tun::packets`].
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf).await
    }

    /// Reads what the kernel has, if anything, without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match self.dev.try_recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }

    /// The IP packets in what [`Tun::recv`] read: one, or with offloads a
    /// UDP segmentation batch split into its datagrams (in `scratch`).
    pub fn packets(&self, raw: &[u8], scratch: &mut Vec<u8>, mut f: impl FnMut(&[u8])) {
        if !self.offload {
            return f(raw);
        }
        let Some((hdr, pkt)) = raw.split_at_checked(VNET_HDR) else {
            return;
        };
        let gso_size = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
        match hdr[1] & 0x7f {
            // One packet (a TCP segment of up to 64 KiB is one segment to
            // the engine; checksums are not checked).
            GSO_NONE | GSO_TCPV4 | GSO_TCPV6 => f(pkt),
            GSO_UDP_L4 => split_udp(pkt, gso_size, scratch, &mut f),
            _ => {}
        }
    }

    /// Whether this TUN finishes the TCP checksums of what is written to
    /// it (offloads: see [`Tun::send`]); tell the engine
    /// ([`crate::engine::dataplane::Engine::set_tcp_checksum_offload`]).
    pub fn completes_tcp_checksums(&self) -> bool {
        self.offload
    }

    /// Writes one packet, waiting while the device cannot take it.
    ///
    /// With offloads, a TCP segment goes with a partial checksum (the
    /// virtio-net header's "needs checksum", its checksum field holding
    /// the pseudo-header's sum, whatever was there): the apps' kernel then
    /// takes it as checked on local delivery, and computes the checksum
    /// only if it sends the segment on (forwarding). So neither geowall
    /// nor the kernel passes over the bytes for it. Other packets go as
    /// they are, with their checksums.
    pub async fn send(&self, p: &[u8]) -> io::Result<()> {
        if !self.offload {
            return self.dev.send(p).await.map(|_| ());
        }
        let mut head = [0u8; PARTIAL_HEAD_MAX];
        match partial_tcp_checksum(p, &mut head) {
            Some((hdr, n)) => {
                let bufs = [
                    io::IoSlice::new(&hdr),
                    io::IoSlice::new(&head[..n]),
                    io::IoSlice::new(&p[n..]),
                ];
                self.dev.send_vectored(&bufs).await.map(|_| ())
            }
            None => {
                let hdr = [0u8; VNET_HDR];
                let bufs = [io::IoSlice::new(&hdr), io::IoSlice::new(p)];
                self.dev.send_vectored(&bufs).await.map(|_| ())
            }
        }
    }
}

/// The longest IP and TCP header start [`partial_tcp_checksum`] copies:
/// a 60-byte IPv4 header and the TCP header up to its checksum.
const PARTIAL_HEAD_MAX: usize = 60 + 18;

/// For a whole TCP segment in `p` (IPv4 not fragmented, or IPv6 with TCP
/// as its first next header): the virtio-net header asking the kernel to
/// finish the checksum ("needs checksum", the TCP header's start and the
/// checksum's offset in it), and in `head` the packet's first bytes up to
/// the end of the checksum field, that field set to the pseudo-header's
/// sum (RFC 9293 3.1, folded, not complemented, as the kernel expects of
/// a partial checksum); how many bytes of `head` that is. `None` for
/// anything else.
fn partial_tcp_checksum(
    p: &[u8],
    head: &mut [u8; PARTIAL_HEAD_MAX],
) -> Option<([u8; VNET_HDR], usize)> {
    let (start, mut sum) = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
            // Not TCP, a fragment (MF or an offset), or a length that is
            // not the packet's.
            if ihl < 20 || *p.get(9)? != 6 || frag & 0x3fff != 0 || total != p.len() {
                return None;
            }
            let mut sum = sum_words(p.get(12..20)?);
            sum += 6 + u32::try_from(total.checked_sub(ihl)?).ok()?;
            (ihl, sum)
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            if *p.get(6)? != 6 || 40 + payload != p.len() {
                return None;
            }
            let mut sum = sum_words(p.get(8..40)?);
            sum += 6 + u32::try_from(payload).ok()?;
            (40, sum)
        }
        _ => return None,
    };
    let n = start + 18;
    // A TCP header is at least 20 bytes.
    if p.len() < start + 20 {
        return None;
    }
    head.get_mut(..n)?.copy_from_slice(&p[..n]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    head[start + 16..n].copy_from_slice(&(sum as u16).to_be_bytes());
    let s = u16::try_from(start).ok()?.to_le_bytes();
    let hdr = [F_NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0, s[0], s[1], 16, 0];
    Some((hdr, n))
}

/// The sum of `b`'s 16-bit big-endian words (an even length).
fn sum_words(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// Splits a UDP segmentation batch (one IP and UDP header, then datagrams
/// of `size` bytes, the last maybe shorter) into datagrams with their own
/// headers; lengths are fixed, checksums left (nothing checks them).
fn split_udp(pkt: &[u8], size: usize, scratch: &mut Vec<u8>, f: &mut dyn FnMut(&[u8])) {
    let ihl = match pkt.first().map(|b| b >> 4) {
        Some(4) => usize::from(pkt[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => return,
    };
    let hl = ihl + 8;
    if size == 0 || pkt.len() <= hl {
        return;
    }
    for chunk in pkt[hl..].chunks(size) {
        scratch.clear();
        scratch.extend_from_slice(&pkt[..hl]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        let udp_len = u16::try_from(8 + chunk.len()).unwrap_or(u16::MAX);
        if ihl == 40 {
            scratch[4..6].copy_from_slice(&udp_len.to_be_bytes());
        } else {
            scratch[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
            scratch[10..12].copy_from_slice(&[0, 0]);
            let mut sum = 0u32;
            for w in scratch[..ihl].chunks(2) {
                sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            scratch[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        scratch[ihl + 4..ihl + 6].copy_from_slice(&udp_len.to_be_bytes());
        f(scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel does with a partial checksum: sums the segment from
    /// `csum_start` (the pseudo-header's sum in the checksum field) and
    /// stores the complement. It must give the checksum computed in full.
    fn finish(hdr: &[u8; VNET_HDR], packet: &[u8]) -> u16 {
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let mut sum = sum_words(&packet[start..]);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn a_tcp_segment_goes_with_its_pseudo_header_sum_for_the_kernel_to_finish() {
        use crate::engine::reply::tcp_reset;
        for (src, dst) in [
            ("192.0.2.10:40000", "203.0.113.5:443"),
            ("[2001:db8::10]:40000", "[2001:db8:86::5]:443"),
        ] {
            // A SYN with an odd-length payload, answered by a full RST+ACK
            // whose checksum the stack computed.
            let syn = tcp_syn_with(
                src.parse().expect("addr"),
                dst.parse().expect("addr"),
                b"odd",
            );
            let rst = tcp_reset(&syn).expect("rst");
            let ip = crate::wire::packet::parse_ip(&rst).expect("parses");
            let start = rst.len() - ip.l4.len();
            let full = u16::from_be_bytes([rst[start + 16], rst[start + 17]]);
            let mut head = [0u8; PARTIAL_HEAD_MAX];
            let (hdr, n) = partial_tcp_checksum(&rst, &mut head).expect("a TCP segment");
            assert_eq!((hdr[0], hdr[1]), (F_NEEDS_CSUM, GSO_NONE));
            assert_eq!((usize::from(hdr[6]), hdr[8]), (start, 16), "{src}");
            let written = [&head[..n], &rst[n..]].concat();
            assert_eq!(written.len(), rst.len());
            assert_eq!(
                finish(&hdr, &written),
                full,
                "{src}: the kernel's checksum is the stack's"
            );
            // Everything but the checksum field is what the stack wrote.
            assert_eq!(written[..start + 16], rst[..start + 16]);
            assert_eq!(written[start + 18..], rst[start + 18..]);
        }
        // Not TCP, or a fragment: as it is.
        let udp = crate::engine::reply::udp_packet(
            "192.0.2.10:5000".parse().expect("addr"),
            "203.0.113.5:53".parse().expect("addr"),
            b"q",
        )
        .expect("udp");
        assert!(partial_tcp_checksum(&udp, &mut [0; PARTIAL_HEAD_MAX]).is_none());
        let mut frag = tcp_reset(&tcp_syn_with(
            "192.0.2.10:40000".parse().expect("addr"),
            "203.0.113.5:443".parse().expect("addr"),
            b"",
        ))
        .expect("rst");
        frag[6] |= 0x20;
        assert!(partial_tcp_checksum(&frag, &mut [0; PARTIAL_HEAD_MAX]).is_none());
        assert!(partial_tcp_checksum(&[0x45, 0, 0], &mut [0; PARTIAL_HEAD_MAX]).is_none());
    }

    /// A SYN from `s` to `d` carrying `data`, checksums left zero.
    fn tcp_syn_with(s: std::net::SocketAddr, d: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&s.port().to_be_bytes());
        t[2..4].copy_from_slice(&d.port().to_be_bytes());
        t[4..8].copy_from_slice(&7u32.to_be_bytes());
        t[12] = 0x50;
        t[13] = 0x02;
        t[14] = 0xff;
        t.extend_from_slice(data);
        match (s.ip(), d.ip()) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                let mut p = vec![0x45, 0];
                p.extend_from_slice(&u16::try_from(20 + t.len()).expect("len").to_be_bytes());
                p.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
                p.extend_from_slice(&a.octets());
                p.extend_from_slice(&b.octets());
                p.extend_from_slice(&t);
                p
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                let mut p = vec![0x60, 0, 0, 0];
                p.extend_from_slice(&u16::try_from(t.len()).expect("len").to_be_bytes());
                p.extend_from_slice(&[6, 64]);
                p.extend_from_slice(&a.octets());
                p.extend_from_slice(&b.octets());
                p.extend_from_slice(&t);
                p
            }
            _ => panic!("one family"),
        }
    }

    #[test]
    fn a_udp_segmentation_batch_becomes_its_datagrams() {
        let src = "198.18.1.2:5000".parse().expect("addr");
        let dst = "198.51.100.10:5004".parse().expect("addr");
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        // One "datagram" carrying three of 1000, 1000 and 500 bytes.
        let batch = crate::engine::reply::udp_packet(src, dst, &payload).expect("packet");
        let mut got = Vec::new();
        split_udp(&batch, 1000, &mut Vec::new(), &mut |p| {
            let ip = crate::wire::packet::parse_ip(p).expect("parses");
            if let crate::wire::packet::Transport::Udp { payload, dport, .. } = ip.transport {
                assert_eq!(dport, 5004);
                got.push(payload.to_vec());
            }
        });
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        assert_eq!(got.concat(), payload);
    }
}
