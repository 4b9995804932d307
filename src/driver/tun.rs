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
const F_DATA_VALID: u8 = 2;
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

    /// Writes one packet, waiting while the device cannot take it.
    pub async fn send(&self, p: &[u8]) -> io::Result<()> {
        if !self.offload {
            return self.dev.send(p).await.map(|_| ());
        }
        // The checksums are right (the stack computed them): the kernel
        // need not check them again.
        let hdr = [F_DATA_VALID, GSO_NONE, 0, 0, 0, 0, 0, 0, 0, 0];
        let bufs = [io::IoSlice::new(&hdr), io::IoSlice::new(p)];
        self.dev.send_vectored(&bufs).await.map(|_| ())
    }
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
