//! Which process owns a socket, from the kernel's tables in `/proc`: the
//! socket's inode from `/proc/net/{tcp,udp}{,6}` by its local address, then
//! the process holding that inode among its file descriptors. Used by
//! `geowall run` (the apps share the host's namespace with geowall).

use std::net::{IpAddr, SocketAddr};

use crate::policy::Transport;

/// The executable of the process that owns the socket bound to `local`
/// (`proto`: TCP, UDP or ICMP), if it can be found.
pub fn owner(proto: Transport, local: SocketAddr) -> Option<String> {
    let table = match (proto, local.ip()) {
        (Transport::Tcp, IpAddr::V4(_)) => "tcp",
        (Transport::Tcp, IpAddr::V6(_)) => "tcp6",
        (Transport::Udp, IpAddr::V4(_)) => "udp",
        (Transport::Udp, IpAddr::V6(_)) => "udp6",
        (Transport::Icmp, IpAddr::V4(_)) => "icmp",
        (Transport::Icmp, IpAddr::V6(_)) => "icmp6",
    };
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).ok()?;
    let inode = find_inode(&text, local)?;
    let want = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = p.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return std::fs::read_link(p.path().join("exe"))
                    .ok()
                    .map(|e| e.to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// The inode of the socket whose local address is `local` in a
/// `/proc/net/*` table (wildcard-bound sockets match any address).
fn find_inode(text: &str, local: SocketAddr) -> Option<u64> {
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
        match parse_ip(ip) {
            Some(a) if a == local.ip() => return Some(inode),
            Some(a) if a.is_unspecified() => wildcard = Some(inode),
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
            Some(12345)
        );
        assert_eq!(
            find_inode(t, "198.18.255.1:53".parse().expect("a")),
            Some(777),
            "wildcard"
        );
        assert_eq!(find_inode(t, "127.0.0.1:9".parse().expect("a")), None);
        assert_eq!(
            parse_ip("00000000000000000000000001000000"),
            Some("::1".parse().expect("v6"))
        );
    }

    /// A socket of this very process is found, and its owner is this
    /// test's executable.
    #[test]
    fn a_real_socket_is_traced_to_its_process() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = s.local_addr().expect("addr");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(
            owner(Transport::Udp, local).as_deref(),
            Some(exe.to_string_lossy().as_ref())
        );
    }
}
