//! The userspace TCP stack the engine terminates app connections in:
//! smoltcp on a queue-backed device (no IO), with AnyIP so that it accepts
//! connections to any destination address.

use std::collections::VecDeque;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{
    Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken,
};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

/// Packets in (from the TUN) and out (to the TUN), in memory.
#[derive(Debug)]
pub struct QueueDevice {
    /// Packets for the stack.
    pub rx: VecDeque<Vec<u8>>,
    /// Packets the stack sent.
    pub tx: VecDeque<Vec<u8>>,
    /// The virtual link's MTU (the TUN's).
    pub mtu: usize,
    /// The link finishes the TCP checksums of what is sent (a Linux TUN
    /// with offloads): the stack leaves them out.
    pub tcp_checksum_offload: bool,
}

impl QueueDevice {
    /// An empty device for a link with this MTU.
    pub fn new(mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
            tcp_checksum_offload: false,
        }
    }
}

/// Receive token.
#[derive(Debug)]
pub struct Rx(Vec<u8>);
/// Transmit token.
#[derive(Debug)]
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.mtu, self.tcp_checksum_offload)
    }
}

/// A device for one poll: at most one packet in, borrowed from the caller
/// (no copy), and the transmit queue of a [`QueueDevice`].
#[derive(Debug)]
pub struct OneShot<'a> {
    /// The packet for the stack, if any.
    pub rx: Option<&'a [u8]>,
    /// Where the stack's packets go.
    pub tx: &'a mut VecDeque<Vec<u8>>,
    /// The link's MTU.
    pub mtu: usize,
    /// As [`QueueDevice::tcp_checksum_offload`].
    pub tcp_checksum_offload: bool,
}

/// Receive token of a [`OneShot`].
#[derive(Debug)]
pub struct RxRef<'a>(&'a [u8]);

impl RxToken for RxRef<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl Device for OneShot<'_> {
    type RxToken<'b>
        = RxRef<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxRef<'_>, Tx<'_>)> {
        let p = self.rx.take()?;
        Some((RxRef(p), Tx(self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.mtu, self.tcp_checksum_offload)
    }
}

fn capabilities(mtu: usize, tcp_checksum_offload: bool) -> DeviceCapabilities {
    let mut c = DeviceCapabilities::default();
    c.medium = Medium::Ip;
    c.max_transmission_unit = mtu;
    // Packets from the TUN come from the local kernel, which computed
    // their checksums over memory: checking them again costs a pass over
    // every 64 KiB segment and finds nothing. Ours are computed, unless
    // the link finishes them.
    let mut cs = ChecksumCapabilities::default();
    cs.ipv4 = Checksum::Tx;
    cs.tcp = if tcp_checksum_offload {
        Checksum::None
    } else {
        Checksum::Tx
    };
    c.checksum = cs;
    c
}

/// Converts nanoseconds to smoltcp's clock.
pub fn instant(now_ns: u64) -> Instant {
    Instant::from_micros(i64::try_from(now_ns / 1_000).unwrap_or(i64::MAX))
}

/// An interface that accepts every destination (AnyIP), with IPv4 and
/// IPv6 default routes through its own addresses (198.18.0.1 and
/// 2001:db8:ffff::1, never used on the wire).
pub fn any_ip_interface(device: &mut QueueDevice, now_ns: u64) -> Interface {
    let mut cfg = Config::new(HardwareAddress::Ip);
    cfg.random_seed = now_ns ^ 0x9E37_79B9_7F4A_7C15;
    let mut iface = Interface::new(cfg, device, instant(now_ns));
    let v4 = Ipv4Address::new(198, 18, 0, 1);
    let v6 = Ipv6Address::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(v4), 32));
        let _ = a.push(IpCidr::new(IpAddress::Ipv6(v6), 128));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(v4);
    let _ = iface.routes_mut().add_default_ipv6_route(v6);
    iface.set_any_ip(true);
    iface
}

/// An empty socket set.
pub fn sockets() -> SocketSet<'static> {
    SocketSet::new(Vec::new())
}
