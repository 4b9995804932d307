//! Which process owns a socket: its uid and inode from the kernel
//! (sock_diag for TCP and UDP, the `/proc/net/icmp*` tables for ping
//! sockets), then the process holding that inode among its file
//! descriptors. Used by `geowall run` (the apps share the host's namespace
//! with geowall), on a thread of its own ([`super::attribution`]): never on
//! the engine's.
//!
//! The search for the process starts with the processes that owned the
//! last flows (an app opens many), then those that ran since the last
//! search (a process that just opened a socket just ran: its CPU time in
//! `/proc/PID/schedstat` moved), the socket's user's first, the most
//! recently started first, then the rest; a search gives up when its flow
//! stops waiting. Idle processes, however many, are looked at last.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;

use super::sockdiag::SockDiag;
use crate::engine::dataplane::AppOwner;
use crate::policy::Transport;

/// How many recent owners are searched first.
const RECENT: usize = 16;

/// Finds the owners of sockets; one per thread that asks.
#[derive(Debug)]
pub struct Finder {
    diag: Option<SockDiag>,
    /// Processes that owned recent flows, most recent first.
    recent: VecDeque<u32>,
    /// Each process's CPU time at the last search (only the processes
    /// alive then: bounded by the process table).
    cpu: HashMap<u32, u64>,
}

impl Default for Finder {
    fn default() -> Self {
        Self::new()
    }
}

impl Finder {
    /// A finder (without sock_diag, the `/proc/net` tables are read).
    pub fn new() -> Self {
        Self {
            diag: SockDiag::open().ok(),
            recent: VecDeque::with_capacity(RECENT),
            cpu: HashMap::new(),
        }
    }

    /// The owner of the `proto` socket with local address `local` talking
    /// to `remote`: the executable of the process holding it, and its
    /// user. Either may be unknown (a socket already closed, a process
    /// gone).
    pub fn owner(&mut self, proto: Transport, local: SocketAddr, remote: SocketAddr) -> AppOwner {
        self.owner_by(proto, local, remote, None)
    }

    /// [`Finder::owner`], giving up the search for the process at
    /// `deadline` (the user, from the kernel, is still given).
    pub fn owner_by(
        &mut self,
        proto: Transport,
        local: SocketAddr,
        remote: SocketAddr,
        deadline: Option<std::time::Instant>,
    ) -> AppOwner {
        let Some((inode, uid)) = self.socket(proto, local, remote) else {
            return AppOwner::default();
        };
        if inode == 0 {
            // No file holds it: closed already (TIME-WAIT, or orphaned), so
            // no process is looked for (a search for inode 0 would read
            // every process's descriptors for nothing).
            return AppOwner::default();
        }
        let want = format!("socket:[{inode}]");
        let pid = match self.recent_holder(&want) {
            Some(pid) => Some(pid),
            // A search through every process, unless the socket was closed
            // meanwhile (an app that connected and closed before its
            // owner was asked for): then no process holds it, and reading
            // every process's descriptors would find nothing.
            None if self
                .socket(proto, local, remote)
                .is_some_and(|(now, _)| now == inode) =>
            {
                self.search(&want, uid, deadline)
            }
            None => None,
        };
        if let Some(pid) = pid {
            self.remember(pid);
        }
        let app = pid.and_then(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|e| e.to_string_lossy().into_owned())
        });
        AppOwner { app, uid }
    }

    /// The recent owner holding the descriptor whose link reads `want`.
    fn recent_holder(&self, want: &str) -> Option<u32> {
        self.recent.iter().copied().find(|&pid| holds(pid, want))
    }

    /// The inode and user of the `proto` socket at `local` talking to
    /// `remote`, from sock_diag (TCP, UDP) or the `/proc/net` tables.
    fn socket(
        &mut self,
        proto: Transport,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<(u64, Option<u32>)> {
        match (&mut self.diag, proto) {
            (Some(d), Transport::Tcp | Transport::Udp) => d
                .owner(proto, local, remote)
                .map(|o| (o.inode, Some(o.uid))),
            _ => table_entry(proto, local),
        }
    }

    /// The process holding the descriptor whose link reads `want`, among
    /// all but the recent owners: the processes that ran since the last
    /// search first, then the others (each group the processes of `uid`
    /// first, the newest first), until `deadline`.
    fn search(
        &mut self,
        want: &str,
        uid: Option<u32>,
        deadline: Option<std::time::Instant>,
    ) -> Option<u32> {
        let mut cpu = HashMap::with_capacity(self.cpu.len());
        // (idle, not the user's, newest first) sorts the order; newest by
        // start time, as pids wrap around.
        let mut pids: Vec<(bool, bool, std::cmp::Reverse<u64>, u32)> = Vec::new();
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ran = cpu_time(pid);
            let idle = ran.is_some() && ran == self.cpu.get(&pid).copied();
            if let Some(t) = ran {
                cpu.insert(pid, t);
            }
            let mine = uid.is_some_and(|u| e.metadata().is_ok_and(|m| m.uid() == u));
            pids.push((idle, !mine, std::cmp::Reverse(start_time(pid)), pid));
        }
        self.cpu = cpu;
        pids.sort_unstable();
        pids.into_iter()
            .map(|(_, _, _, pid)| pid)
            .take_while(|_| deadline.is_none_or(|d| std::time::Instant::now() < d))
            .find(|&pid| !self.recent.contains(&pid) && holds(pid, want))
    }

    /// Puts `pid` first among the recent owners (at most [`RECENT`]).
    fn remember(&mut self, pid: u32) {
        self.recent.retain(|&p| p != pid);
        if self.recent.len() == RECENT {
            self.recent.pop_back();
        }
        self.recent.push_front(pid);
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`, counted after the command name, which may hold
/// spaces and parentheses); 0 when unknown.
fn start_time(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let after = &t[t.rfind(')')? + 1..];
            after.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The CPU time process `pid` has had, in nanoseconds (the first field of
/// `/proc/PID/schedstat`).
fn cpu_time(pid: u32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    t.split_whitespace().next()?.parse().ok()
}

/// Whether process `pid` holds the descriptor whose link reads `want`.
fn holds(pid: u32, want: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want))
}

/// The inode and uid of the socket bound to `local` from the kernel's
/// `/proc/net/*` table for `proto` (ICMP's ping sockets, and TCP and UDP
/// where sock_diag is not available).
fn table_entry(proto: Transport, local: SocketAddr) -> Option<(u64, Option<u32>)> {
    let table = match (proto, local.ip()) {
        (Transport::Tcp, IpAddr::V4(_)) => "tcp",
        (Transport::Tcp, IpAddr::V6(_)) => "tcp6",
        (Transport::Udp, IpAddr::V4(_)) => "udp",
        (Transport::Udp, IpAddr::V6(_)) => "udp6",
        (Transport::Icmp, IpAddr::V4(_)) => "icmp",
        (Transport::Icmp, IpAddr::V6(_)) => "icmp6",
    };
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).ok()?;
    find_inode(&text, local)
}

/// The inode and uid of the socket whose local address is `local` in a
/// `/proc/net/*` table (wildcard-bound sockets match any address).
fn find_inode(text: &str, local: SocketAddr) -> Option<(u64, Option<u32>)> {
    let mut wildcard = None;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(inode)) = (f.get(1), f.get(9)) else {
            continue;
        };
        let Some((ip, port)) = addr.split_once(':') else {
            continue;
        };
        if u16::from_str_radix(port, 16).ok() != Some(local.port()) {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        let entry = (inode, f.get(7).and_then(|u| u.parse().ok()));
        match parse_ip(ip) {
            Some(a) if a == local.ip() => return Some(entry),
            Some(a) if a.is_unspecified() => wildcard = Some(entry),
            _ => {}
        }
    }
    wildcard
}

/// The kernel prints addresses as 32-bit words in host order (little
/// endian on the machines geowall runs on).
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_table_format_parses() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n   1: 00000000:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        assert_eq!(
            find_inode(t, "127.0.0.1:8080".parse().expect("a")),
            Some((12345, Some(0)))
        );
        assert_eq!(
            find_inode(t, "198.18.255.1:53".parse().expect("a")),
            Some((777, Some(0))),
            "wildcard"
        );
        assert_eq!(find_inode(t, "127.0.0.1:9".parse().expect("a")), None);
        assert_eq!(
            parse_ip("00000000000000000000000001000000"),
            Some("::1".parse().expect("v6"))
        );
    }

    /// Sockets of this very process are found, by sock_diag (TCP, UDP)
    /// and by the table (ICMP is looked up the same way), and their owner
    /// is this test's executable, run by this user.
    #[test]
    fn a_real_socket_is_traced_to_its_process() {
        let exe = std::env::current_exe().expect("exe");
        let me = AppOwner {
            app: Some(exe.to_string_lossy().into_owned()),
            uid: Some(nix::unistd::geteuid().as_raw()),
        };
        let mut f = Finder::new();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = u.local_addr().expect("addr");
        let remote: SocketAddr = "127.0.0.1:9".parse().expect("a");
        assert_eq!(f.owner(Transport::Udp, local, remote), me);
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let c = std::net::TcpStream::connect(l.local_addr().expect("a")).expect("connect");
        let (local, remote) = (c.local_addr().expect("l"), c.peer_addr().expect("p"));
        assert_eq!(f.owner(Transport::Tcp, local, remote), me);
        // Without sock_diag, from the tables.
        assert_eq!(
            table_entry(Transport::Tcp, local).map(|e| e.1),
            Some(me.uid)
        );
        // A socket nobody holds: unknown.
        drop(c);
        let gone = f.owner(Transport::Tcp, local, remote);
        assert_eq!(gone.app, None);
    }
}
