//! Keeping the engine's own upstream sockets out of the TUN.
//!
//! Three ways, combinable: a firewall mark (`SO_MARK`) that policy routing
//! sends past the TUN (how `geowall run` routes, like `wg-quick`); binding
//! to an interface (`SO_BINDTODEVICE`); and a [`SocketProtector`] hook
//! called with each socket before it connects (Android's
//! `VpnService.protect(fd)`). When the TUN lives in another network
//! namespace than the engine (as `geowall exec` and the tests arrange),
//! none is needed: the engine's namespace has no route into the TUN.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// Called for every upstream socket before it connects or sends; return
/// `false` to refuse it (the flow then fails, it never goes out
/// unprotected).
pub trait SocketProtector: Send + Sync {
    /// Protects the socket `fd` from the tunnel.
    fn protect(&self, fd: RawFd) -> bool;
}

/// How upstream sockets are kept out of the TUN.
#[derive(Clone, Default)]
pub struct Protection {
    /// `SO_MARK` for every upstream socket (needs `CAP_NET_ADMIN`).
    pub fwmark: Option<u32>,
    /// `SO_BINDTODEVICE` to this interface (needs `CAP_NET_RAW`).
    pub bind_device: Option<String>,
    /// A hook called with each socket.
    pub protector: Option<Arc<dyn SocketProtector>>,
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protection")
            .field("fwmark", &self.fwmark)
            .field("bind_device", &self.bind_device)
            .field("protector", &self.protector.is_some())
            .finish()
    }
}

impl Protection {
    /// A non-blocking socket for talking to `dst`, protected.
    pub fn socket(
        &self,
        dst: std::net::IpAddr,
        ty: socket2::Type,
        proto: Option<socket2::Protocol>,
    ) -> std::io::Result<socket2::Socket> {
        let domain = match dst {
            std::net::IpAddr::V4(_) => socket2::Domain::IPV4,
            std::net::IpAddr::V6(_) => socket2::Domain::IPV6,
        };
        let s = socket2::Socket::new(domain, ty, proto)?;
        self.apply(&s)?;
        s.set_nonblocking(true)?;
        Ok(s)
    }

    /// Whether a protected socket has a route to `ip`: a UDP socket is
    /// connected to it, which looks the route up and sends nothing. No
    /// route (network or host unreachable, a `prohibit`, `blackhole` or
    /// `unreachable` route, no source address, the family turned off) is
    /// `false`; a socket that cannot be made for another reason is `true`
    /// (the flow then fails on its own, as before).
    pub fn has_route(&self, ip: std::net::IpAddr) -> bool {
        use nix::libc;
        let no_route = |e: &std::io::Error| {
            matches!(
                e.raw_os_error(),
                Some(
                    libc::ENETUNREACH
                        | libc::EHOSTUNREACH
                        | libc::EADDRNOTAVAIL
                        | libc::EACCES
                        | libc::EPERM
                        | libc::EINVAL
                )
            )
        };
        let s = match self.socket(ip, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)) {
            Ok(s) => s,
            Err(e) => return e.raw_os_error() != Some(libc::EAFNOSUPPORT),
        };
        // The discard port; nothing is sent by a UDP connect.
        match s.connect(&std::net::SocketAddr::new(ip, 9).into()) {
            Ok(()) => true,
            Err(e) => !no_route(&e),
        }
    }

    /// Applies every configured protection to `sock`; the error says which
    /// failed.
    pub fn apply(&self, sock: &socket2::Socket) -> std::io::Result<()> {
        if let Some(mark) = self.fwmark {
            sock.set_mark(mark).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot set fwmark {mark:#x}: {e}"))
            })?;
        }
        if let Some(dev) = &self.bind_device {
            sock.bind_device(Some(dev.as_bytes())).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot bind to interface {dev}: {e}"))
            })?;
        }
        if let Some(p) = &self.protector
            && !p.protect(sock.as_raw_fd())
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the socket protector refused the socket",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize, bool);
    impl SocketProtector for Count {
        fn protect(&self, _fd: RawFd) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1
        }
    }

    fn udp() -> socket2::Socket {
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket")
    }

    #[test]
    fn the_protector_sees_every_socket_and_can_refuse() {
        let yes = Arc::new(Count(AtomicUsize::new(0), true));
        let p = Protection {
            protector: Some(yes.clone()),
            ..Protection::default()
        };
        p.apply(&udp()).expect("accepted");
        p.apply(&udp()).expect("accepted");
        assert_eq!(yes.0.load(Ordering::SeqCst), 2);
        let no = Protection {
            protector: Some(Arc::new(Count(AtomicUsize::new(0), false))),
            ..Protection::default()
        };
        let e = no.apply(&udp()).expect_err("refused");
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[test]
    fn a_route_is_looked_up_without_sending() {
        let p = Protection::default();
        assert!(p.has_route("127.0.0.1".parse().expect("ip")));
        let none = Protection {
            bind_device: Some("gw-no-such0".into()),
            ..Protection::default()
        };
        assert!(
            none.has_route("127.0.0.1".parse().expect("ip")),
            "a socket that cannot be made is not taken for no route"
        );
    }

    #[test]
    fn a_missing_interface_is_a_clear_error() {
        let p = Protection {
            bind_device: Some("gw-no-such0".into()),
            ..Protection::default()
        };
        let e = p.apply(&udp()).expect_err("no such device");
        assert!(e.to_string().contains("gw-no-such0"), "{e}");
    }
}
