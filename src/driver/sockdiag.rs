//! One socket's owner (its user and inode) from the kernel's sock_diag
//! netlink interface (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY`): one
//! request and one answer per lookup, instead of reading the
//! `/proc/net/*` tables.
//!
//! The request names the socket by its four-tuple (`inet_diag_req_v2` with
//! an exact `inet_diag_sockid`); the answer (`inet_diag_msg`) carries the
//! socket's uid and inode. Layouts are the kernel's UAPI
//! (`linux/inet_diag.h`, `linux/sock_diag.h`), in host byte order except
//! ports and addresses.

use std::net::{IpAddr, SocketAddr};

use nix::libc;

use crate::policy::Transport;

/// `NETLINK_SOCK_DIAG`.
const NETLINK_SOCK_DIAG: i32 = 4;
/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `INET_DIAG_NOCOOKIE`: any socket with this address.
const NO_COOKIE: u32 = u32::MAX;
/// `nlmsghdr` (16) + `inet_diag_req_v2` (56).
const REQUEST_LEN: usize = 72;
/// Offsets in an answer: `nlmsghdr` (16), then `inet_diag_msg`, whose uid
/// and inode follow the 4 flag bytes, the 48-byte socket id and 3 words.
const UID_AT: usize = 16 + 64;
const INODE_AT: usize = 16 + 68;

/// What the kernel says about a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwner {
    /// The user that created it.
    pub uid: u32,
    /// Its inode (as in `/proc/PID/fd/*` → `socket:[INODE]`).
    pub inode: u64,
}

/// A netlink socket for sock_diag queries (one per thread that asks).
#[derive(Debug)]
pub struct SockDiag {
    sock: socket2::Socket,
    seq: u32,
}

impl SockDiag {
    /// Opens the netlink socket.
    ///
    /// # Errors
    /// The kernel refused it (no sock_diag support, or sandboxed).
    pub fn open() -> std::io::Result<Self> {
        let sock = socket2::Socket::new(
            socket2::Domain::from(libc::AF_NETLINK),
            socket2::Type::DGRAM.cloexec(),
            Some(socket2::Protocol::from(NETLINK_SOCK_DIAG)),
        )?;
        // Never wait long for the kernel (it answers at once).
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
        Ok(Self { sock, seq: 0 })
    }

    /// The owner of the `proto` socket with local address `local` talking
    /// to `remote` (for UDP, a socket bound to `local` whether or not it
    /// is connected); `None` when the kernel has no such socket. ICMP is
    /// not covered by sock_diag.
    pub fn owner(
        &mut self,
        proto: Transport,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<SocketOwner> {
        let ipproto = match proto {
            Transport::Tcp => libc::IPPROTO_TCP,
            Transport::Udp => libc::IPPROTO_UDP,
            Transport::Icmp => return None,
        };
        // The kernel reads the id as (local, remote) for TCP, and as the
        // datagram's (source, destination), that is (remote, local), for
        // UDP. Only that order: the other one finds listeners and servers.
        match proto {
            Transport::Udp => self.ask(ipproto, remote, local),
            _ => self.ask(ipproto, local, remote),
        }
    }

    fn ask(&mut self, ipproto: i32, src: SocketAddr, dst: SocketAddr) -> Option<SocketOwner> {
        let family = match (src.ip(), dst.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
            (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
            _ => return None,
        };
        self.seq = self.seq.wrapping_add(1);
        let req = request(self.seq, family, ipproto, src, dst);
        if self.sock.send(&req).ok()? != REQUEST_LEN {
            return None;
        }
        let mut buf = [0u8; 8192];
        loop {
            let n = std::io::Read::read(&mut &self.sock, &mut buf).ok()?;
            match parse_answer(&buf[..n], self.seq) {
                Answer::Owner(o) => return Some(o),
                Answer::None => return None,
                // An answer to an earlier, timed-out request.
                Answer::Stale => {}
            }
        }
    }
}

/// The request message: `nlmsghdr` then `inet_diag_req_v2`.
fn request(seq: u32, family: i32, ipproto: i32, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST_LEN);
    m.extend_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states (all).
    m.push(u8::try_from(family).unwrap_or(0));
    m.push(u8::try_from(ipproto).unwrap_or(0));
    m.push(0);
    m.push(0);
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: ports and addresses in network order.
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    for a in [src.ip(), dst.ip()] {
        let mut b = [0u8; 16];
        match a {
            IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
            IpAddr::V6(v) => b.copy_from_slice(&v.octets()),
        }
        m.extend_from_slice(&b);
    }
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    m.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    m
}

enum Answer {
    Owner(SocketOwner),
    None,
    Stale,
}

/// Reads the kernel's answer to request `seq`.
fn parse_answer(b: &[u8], seq: u32) -> Answer {
    let word = |at: usize| {
        b.get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map(u32::from_ne_bytes)
    };
    let kind = b
        .get(4..6)
        .and_then(|w| <[u8; 2]>::try_from(w).ok())
        .map(u16::from_ne_bytes);
    if word(8) != Some(seq) {
        return Answer::Stale;
    }
    match (kind, word(UID_AT), word(INODE_AT)) {
        (Some(SOCK_DIAG_BY_FAMILY), Some(uid), Some(inode)) => Answer::Owner(SocketOwner {
            uid,
            inode: u64::from(inode),
        }),
        // NLMSG_ERROR (ENOENT: no such socket), or something short.
        (Some(NLMSG_ERROR) | Some(_) | None, _, _) => Answer::None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// The inode of one of this process's sockets, from /proc.
    fn inode_of(fd: i32) -> u64 {
        let l = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("fd link");
        let s = l.to_string_lossy();
        s.trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .expect("socket inode")
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_tcp_connection_is_found_by_its_addresses_both_families() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let l = std::net::TcpListener::bind(any).expect("listen");
            let c = std::net::TcpStream::connect(l.local_addr().expect("a")).expect("connect");
            let (local, remote) = (c.local_addr().expect("l"), c.peer_addr().expect("p"));
            let mut d = SockDiag::open().expect("sock_diag");
            let o = d.owner(Transport::Tcp, local, remote).expect("found");
            assert_eq!(
                o,
                SocketOwner {
                    uid: me(),
                    inode: inode_of(c.as_raw_fd())
                }
            );
            // Another port: no such socket.
            let other = SocketAddr::new(local.ip(), local.port() ^ 1);
            assert_eq!(d.owner(Transport::Tcp, other, remote), None);
        }
    }

    #[test]
    fn a_udp_socket_is_found_connected_or_not() {
        let mut d = SockDiag::open().expect("sock_diag");
        let server: SocketAddr = "127.0.0.1:9".parse().expect("a");
        let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = u.local_addr().expect("l");
        let o = d.owner(Transport::Udp, local, server).expect("unconnected");
        assert_eq!(o.inode, inode_of(u.as_raw_fd()));
        u.connect(server).expect("connect");
        let o = d.owner(Transport::Udp, local, server).expect("connected");
        assert_eq!((o.uid, o.inode), (me(), inode_of(u.as_raw_fd())));
        let u6 = std::net::UdpSocket::bind("[::1]:0").expect("bind6");
        let o = d
            .owner(
                Transport::Udp,
                u6.local_addr().expect("l"),
                "[::1]:9".parse().expect("a"),
            )
            .expect("v6");
        assert_eq!(o.inode, inode_of(u6.as_raw_fd()));
        assert_eq!(d.owner(Transport::Icmp, local, server), None);
    }

    #[test]
    fn answers_are_read_by_their_sequence() {
        let mut b = vec![0u8; 88];
        b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        b[8..12].copy_from_slice(&7u32.to_ne_bytes());
        b[UID_AT..UID_AT + 4].copy_from_slice(&1000u32.to_ne_bytes());
        b[INODE_AT..INODE_AT + 4].copy_from_slice(&4242u32.to_ne_bytes());
        assert!(matches!(
            parse_answer(&b, 7),
            Answer::Owner(SocketOwner {
                uid: 1000,
                inode: 4242
            })
        ));
        assert!(matches!(parse_answer(&b, 8), Answer::Stale));
        b[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(matches!(parse_answer(&b, 7), Answer::None));
        assert!(matches!(parse_answer(&b[..10], 7), Answer::Stale));
        assert_eq!(
            request(
                1,
                libc::AF_INET,
                libc::IPPROTO_TCP,
                "192.0.2.1:1".parse().expect("a"),
                "192.0.2.2:2".parse().expect("a")
            )
            .len(),
            REQUEST_LEN
        );
    }
}
