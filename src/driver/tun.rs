//! The TUN device: created by name (optionally moved into another network
//! namespace and addressed there) or adopted from a file descriptor that a
//! platform handed over (Android's `VpnService`, a parent process).

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
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
}

/// An open TUN device, non-blocking, registered with tokio.
pub struct Tun {
    dev: tun::AsyncDevice,
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
        let mut cfg = tun::Configuration::default();
        cfg.tun_name(&spec.name).mtu(spec.mtu);
        let dev = tun::create(&cfg).map_err(|e| {
            io::Error::other(format!("cannot create TUN device {}: {e}", spec.name))
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
        Self::wrap(dev, spec.mtu)
    }

    /// Adopts an open TUN file descriptor (closed when this is dropped).
    pub fn from_fd(fd: RawFd, mtu: u16) -> io::Result<Self> {
        let mut cfg = tun::Configuration::default();
        cfg.raw_fd(fd).mtu(mtu);
        let dev = tun::create(&cfg)
            .map_err(|e| io::Error::other(format!("cannot use TUN fd {fd}: {e}")))?;
        Self::wrap(dev, mtu)
    }

    fn wrap(dev: tun::Device, mtu: u16) -> io::Result<Self> {
        Ok(Self {
            dev: tun::AsyncDevice::new(dev)?,
            mtu,
        })
    }

    /// The MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Reads one packet, waiting for it.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf).await
    }

    /// Reads one packet if one is waiting, without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let fut = std::pin::pin!(self.dev.recv(buf));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        }
    }

    /// Writes one packet, waiting while the device cannot take it.
    pub async fn send(&self, p: &[u8]) -> io::Result<()> {
        self.dev.send(p).await.map(|_| ())
    }
}
