//! Windows that grow with demand.
//!
//! smoltcp fixes a socket's buffers when it is made, and advertises all of
//! the free receive buffer as its window. Here every connection's buffers
//! are as big as [`EngineConfig::tcp_buffer`] (address space: a page is
//! only resident once bytes pass through it, and is given back when the
//! connection goes quiet), and what a connection may hold is its
//! *allowance* each way, which the engine sets:
//!
//! - **up** (the app's bytes): the window in each segment the stack sends
//!   the app is lowered to the allowance less what the socket holds,
//!   rewritten in the packet ([`Window::clamp`]). The right edge the app
//!   was offered does not move back (RFC 9293 3.8.6.2.2), but for less
//!   than one unit of the window's scale; when the allowance
//!   opens more than the last window said, a window update is sent
//!   ([`Window::update`]), as the stack does for its own window.
//! - **down** (the server's bytes): the engine puts at most the allowance
//!   into the socket's send buffer.
//!
//! A connection starts with a small allowance and doubles it each time the
//! allowance, not the app or the server, was what held it back (the app
//! sent its whole allowance within a millisecond; the server's bytes
//! filled it while the app's window had room for more); it goes
//! back to the floor once it has been quiet for [`RELEASE_IDLE_NS`]. All
//! allowances above the floor come out of one budget
//! ([`EngineConfig::tcp_memory`]).
//!
//! [`RELEASE_IDLE_NS`]: super::tcp::RELEASE_IDLE_NS

use std::net::SocketAddr;

use super::*;

/// Where the TCP header of an IP packet starts: IPv4 (not a fragment) or
/// IPv6 with TCP as its first next header; `None` for anything else.
fn tcp_at(p: &[u8]) -> Option<usize> {
    let at = match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
            if ihl < 20 || *p.get(9)? != 6 || frag & 0x3fff != 0 {
                return None;
            }
            ihl
        }
        6 if *p.get(6)? == 6 => 40,
        _ => return None,
    };
    (p.len() >= at + 20).then_some(at)
}

/// The value of option `want` (of `len` bytes in all) in the TCP header
/// at `t`, if there.
fn option(p: &[u8], t: usize, want: u8, len: usize) -> Option<&[u8]> {
    let off = usize::from(p.get(t + 12)? >> 4) * 4;
    let opts = p.get(t + 20..t + off)?;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return None,
            1 => i += 1,
            kind => {
                let l = usize::from(*opts.get(i + 1)?);
                if l < 2 {
                    return None;
                }
                if kind == want && l == len {
                    return opts.get(i + 2..i + l);
                }
                i += l;
            }
        }
    }
    None
}

/// The window scale option of a SYN's TCP header at `t`, if any.
fn window_scale(p: &[u8], t: usize) -> Option<u8> {
    // RFC 7323 2.3: a shift over 14 is taken as 14.
    option(p, t, 3, 3).map(|v| v[0].min(14))
}

/// The maximum segment size option of a SYN's TCP header at `t`, if any.
fn max_segment(p: &[u8], t: usize) -> Option<usize> {
    option(p, t, 2, 4).map(|v| usize::from(u16::from_be_bytes([v[0], v[1]])))
}

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// `a - b` in sequence space when `a` is not before `b`, else 0.
fn seq_ahead(a: u32, b: u32) -> usize {
    let d = a.wrapping_sub(b);
    if (d as i32) < 0 { 0 } else { d as usize }
}

/// What has been sent to the app, once the SYN-ACK went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    /// The last acknowledgment number.
    ack: u32,
    /// The right edge of the window offered so far.
    edge: u32,
    /// The sequence number after the furthest byte (or SYN, FIN) sent.
    next: u32,
}

/// One connection's allowances and what its app was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    /// App bytes the connection may hold (its receive window, at most).
    pub(super) up: usize,
    /// Server bytes the connection may hold for the app.
    pub(super) down: usize,
    /// The scale of the windows the stack advertises (its SYN-ACK's
    /// option; 0 without).
    shift: u8,
    /// The scale of the app's windows (its SYN's option; 0 without).
    app_shift: u8,
    /// The app's last window, in bytes.
    app_window: usize,
    /// The app's segment size (its SYN's option; 536 without).
    app_mss: usize,
    sent: Option<Sent>,
    /// App bytes counted since `round_ns` (see [`Window::up_limited`]).
    round_bytes: usize,
    round_ns: u64,
}

/// An app that sends its whole allowance within this is held back by it.
pub(super) const UP_ROUND_NS: u64 = 1_000_000;

impl Window {
    /// A connection allowed `each` bytes each way.
    pub(super) fn new(each: usize) -> Self {
        Self {
            up: each,
            down: each,
            shift: 0,
            app_shift: 0,
            app_window: 0,
            app_mss: 536,
            sent: None,
            round_bytes: 0,
            round_ns: 0,
        }
    }

    /// Bytes above the floor ([`TCP_BUFFER_MIN`] each way), which the
    /// budget pays for.
    pub(super) fn charge(&self) -> usize {
        self.up.saturating_sub(TCP_BUFFER_MIN) + self.down.saturating_sub(TCP_BUFFER_MIN)
    }

    /// The charge, taken off: the allowances go back to the floor (the
    /// connection's socket is gone or closing).
    pub(super) fn take_charge(&mut self) -> usize {
        let c = self.charge();
        self.up = self.up.min(TCP_BUFFER_MIN);
        self.down = self.down.min(TCP_BUFFER_MIN);
        c
    }

    /// Notes an app segment `p`: its window (and at its SYN, the scale of
    /// its windows).
    pub(super) fn on_app_segment(&mut self, p: &[u8]) {
        let Some(t) = tcp_at(p) else {
            return;
        };
        let flags = p[t + 13];
        let win = usize::from(be16(p, t + 14));
        if flags & tcp_flags::SYN != 0 {
            self.app_shift = window_scale(p, t).unwrap_or(0);
            self.app_mss = max_segment(p, t).unwrap_or(536).max(1);
            self.app_window = win;
        } else {
            self.app_window = win << self.app_shift;
        }
    }

    /// Counts `len` bytes the app sent at `now_ns`; whether it sent its
    /// whole allowance within [`UP_ROUND_NS`]: through the TUN an app's
    /// window comes back well within that, so an app sending that much
    /// was held back by its window (a slow or chatty one is not).
    pub(super) fn up_limited(&mut self, len: usize, now_ns: u64) -> bool {
        if now_ns.saturating_sub(self.round_ns) >= UP_ROUND_NS {
            self.round_ns = now_ns;
            self.round_bytes = 0;
        }
        self.round_bytes += len;
        if self.round_bytes >= self.up {
            self.round_ns = now_ns;
            self.round_bytes = 0;
            return true;
        }
        false
    }

    /// Whether `offered` more server bytes, with `queued` in the send
    /// buffer already, go past the allowance while the app's window would
    /// take more than it: the allowance holds the server's bytes back.
    pub(super) fn down_limited(&self, queued: usize, offered: usize) -> bool {
        queued + offered > self.down && self.app_window > self.down
    }

    /// Lowers the window of `p`, a segment the stack sends the app, to the
    /// allowance less `held` (app bytes in the socket), not moving the
    /// right edge offered before back (but for rounding to the scale, less
    /// than one unit of it); fixes the checksum unless the link
    /// finishes it (`offload`). Notes what was sent.
    pub(super) fn clamp(&mut self, p: &mut [u8], held: usize, offload: bool) {
        let Some(t) = tcp_at(p) else {
            return;
        };
        let flags = p[t + 13];
        if flags & tcp_flags::RST != 0 || flags & tcp_flags::ACK == 0 {
            return;
        }
        let seq = be32(p, t + 4);
        let ack = be32(p, t + 8);
        let field = be16(p, t + 14);
        let off = usize::from(p[t + 12] >> 4) * 4;
        let len = p.len().saturating_sub(t + off);
        let syn = flags & tcp_flags::SYN != 0;
        let end = seq
            .wrapping_add(len as u32)
            .wrapping_add(u32::from(syn))
            .wrapping_add(u32::from(flags & tcp_flags::FIN != 0));
        let new = if syn {
            // A SYN's window is not scaled.
            self.shift = window_scale(p, t).unwrap_or(0);
            let want = self.up.saturating_sub(held).min(usize::from(u16::MAX));
            field.min(want as u16)
        } else {
            let theirs = usize::from(field) << self.shift;
            let kept = self.sent.map_or(0, |s| seq_ahead(s.edge, ack));
            let want = self.up.saturating_sub(held).max(kept).min(theirs);
            // Rounded down to the scale: the edge may move back by less
            // than one unit of it (the stack's own buffer takes what the
            // app sent up to the old edge), never past the allowance.
            (want >> self.shift).min(usize::from(field)) as u16
        };
        let edge = ack.wrapping_add(u32::from(new) << if syn { 0 } else { self.shift });
        let next = match self.sent {
            Some(s) if seq_ahead(s.next, end) > 0 => s.next,
            _ => end,
        };
        self.sent = Some(Sent { ack, edge, next });
        if new != field {
            p[t + 14..t + 16].copy_from_slice(&new.to_be_bytes());
            if !offload {
                // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
                let hc = be16(p, t + 16);
                let mut sum = u32::from(!hc) + u32::from(!field) + u32::from(new);
                while sum > 0xffff {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                p[t + 16..t + 18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            }
        }
    }

    /// An ACK for the app, from `server` to `client`, when the allowance
    /// less `held` opens the window to at least twice what the app was
    /// last offered (and by at least a page), or when the app filled the
    /// window it was offered and all of it was read (`read_to`: where the
    /// app's bytes read in order end, if nothing else waits) while the
    /// allowance is at most two of the app's segments: the stack would
    /// not send the first, as its own (bigger) window did not change, and
    /// would delay the second by up to its delayed-ACK time (the app waits
    /// for it; past two segments the stack acknowledges at once itself).
    pub(super) fn update(
        &mut self,
        server: SocketAddr,
        client: SocketAddr,
        held: usize,
        capacity: usize,
        read_to: Option<u32>,
    ) -> Option<Vec<u8>> {
        let s = self.sent?;
        let want = self.up.min(capacity).saturating_sub(held);
        // The app filled its window and all of it was read: acknowledge it.
        let ack = match read_to {
            Some(r)
                if self.up <= 2 * self.app_mss
                    && seq_ahead(r, s.ack) > 0
                    && seq_ahead(s.edge, r) < 2048 =>
            {
                r
            }
            _ => s.ack,
        };
        let offered = seq_ahead(s.edge, ack);
        if ack == s.ack && (want < 2 * offered || want - offered < 4096) {
            return None;
        }
        // The edge offered before does not move back (but for rounding).
        let bytes = want.max(seq_ahead(s.edge, ack));
        let field = (bytes >> self.shift).min(usize::from(u16::MAX)) as u16;
        let edge = ack.wrapping_add(u32::from(field) << self.shift);
        let p = reply::tcp_ack(server, client, s.next, ack, field)?;
        self.sent = Some(Sent { ack, edge, ..s });
        Some(p)
    }
}

impl Engine {
    /// Allowance (each way) for a new connection: a 1,024th of the budget
    /// while the budget has room for it, else the floor.
    pub(super) fn tcp_start_allowance(&self) -> usize {
        let start = (self.cfg.tcp_memory / 1024).max(TCP_BUFFER_MIN);
        let cap = self.cfg.tcp_buffer.max(TCP_BUFFER_MIN);
        let start = start.min(cap);
        if self.tcp_memory + 2 * (start - TCP_BUFFER_MIN) <= self.cfg.tcp_memory {
            start
        } else {
            TCP_BUFFER_MIN
        }
    }

    /// Doubles the flow's allowance one way (`up`: the app's bytes), up to
    /// its buffer's size, if the budget has room for it beyond the quarter
    /// kept for new connections. Tells the driver the flow's new window.
    pub(super) fn grow_allowance(&mut self, key: TcpKey, up: bool) {
        let Some(cap) = self.socks.get(&key).map(|c| c.capacity()) else {
            return;
        };
        let Some(f) = self.tcp.get_mut(&key) else {
            return;
        };
        let now = if up { f.win.up } else { f.win.down };
        let more = (2 * now).min(cap).saturating_sub(now);
        let usable = self.cfg.tcp_memory - self.cfg.tcp_memory / 4;
        if more == 0 || self.tcp_memory + more > usable {
            return;
        }
        if up {
            f.win.up += more;
        } else {
            f.win.down += more;
        }
        self.tcp_memory += more;
        self.counters.tcp_windows_grown += 1;
        let (id, phase, window) = (f.id, f.phase, f.win.up.max(f.win.down));
        if matches!(phase, TcpPhase::Connecting | TcpPhase::Open) {
            self.out.push_back(Output::TcpWindow { flow: id, window });
        }
    }

    /// Takes a quiet flow's allowances back to the floor.
    pub(super) fn shrink_allowance(&mut self, key: TcpKey) {
        let Some(f) = self.tcp.get_mut(&key) else {
            return;
        };
        let before = f.win.charge();
        if before == 0 {
            return;
        }
        f.win.up = TCP_BUFFER_MIN;
        f.win.down = TCP_BUFFER_MIN;
        self.tcp_memory -= before;
        if matches!(f.phase, TcpPhase::Connecting | TcpPhase::Open) {
            self.out.push_back(Output::TcpWindow {
                flow: f.id,
                window: TCP_BUFFER_MIN,
            });
        }
    }

    /// The window of the segments just sent to the app for `key` (from
    /// `from` in the device's queue) lowered to its allowance.
    pub(super) fn clamp_sent(&mut self, key: TcpKey, from: usize) {
        let held = self.socks.get(&key).map_or(0, |c| c.socket().recv_queue());
        let Some(f) = self.tcp.get_mut(&key) else {
            return;
        };
        let offload = self.device.tcp_checksum_offload;
        for p in self.device.tx.iter_mut().skip(from) {
            f.win.clamp(p, held, offload);
        }
    }

    /// Sends the app a window update if its allowance opened (see
    /// [`Window::update`]).
    pub(super) fn window_update(&mut self, key: TcpKey) {
        let Some(c) = self.socks.get(&key) else {
            return;
        };
        let (held, cap) = (c.socket().recv_queue(), c.capacity());
        let Some(f) = self.tcp.get_mut(&key) else {
            return;
        };
        let read_to = (held == 0 && f.seq_seen == f.seq_read).then_some(f.seq_read);
        if let Some(p) = f.win.update(key.1, key.0, held, cap, read_to) {
            f.core.volume.down(p.len());
            self.device.tx.push_back(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP segment from 198.51.100.1:443 to 192.0.2.1:40000 with
    /// these fields (and a window scale option when `ws`), its checksum
    /// computed.
    fn segment(flags: u8, seq: u32, ack: u32, win: u16, ws: Option<u8>, payload: &[u8]) -> Vec<u8> {
        let opts: &[u8] = match ws {
            Some(s) => &[1, 3, 3, s],
            None => &[],
        };
        let thl = 20 + opts.len();
        let total = 20 + thl + payload.len();
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 1, 192, 0, 2, 1]);
        p.extend_from_slice(&443u16.to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ack.to_be_bytes());
        p.push(((thl / 4) as u8) << 4);
        p.push(flags);
        p.extend_from_slice(&win.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(opts);
        p.extend_from_slice(payload);
        let c = reply::l4_checksum(
            "198.51.100.1".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            6,
            &p[20..],
        );
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn checksum_ok(p: &[u8]) -> bool {
        let mut z = p[20..].to_vec();
        let c = be16(&z, 16);
        z[16] = 0;
        z[17] = 0;
        reply::l4_checksum(
            "198.51.100.1".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            6,
            &z,
        ) == c
    }

    const SA: u8 = tcp_flags::SYN | tcp_flags::ACK;
    const A: u8 = tcp_flags::ACK;

    #[test]
    fn windows_are_lowered_to_the_allowance_and_do_not_move_back() {
        let mut w = Window::new(16 * 1024);
        // SYN-ACK: scale 5, the stack's whole buffer offered.
        let mut p = segment(SA, 1000, 5001, u16::MAX, Some(5), &[]);
        w.clamp(&mut p, 0, false);
        assert_eq!(be16(&p, 34), 16 * 1024, "the SYN-ACK's window, unscaled");
        assert!(checksum_ok(&p), "checksum fixed");
        // An ACK offering 1 MiB (32,768 << 5): lowered to 16 KiB.
        let mut p = segment(A, 1001, 5001, 32_768, None, &[]);
        w.clamp(&mut p, 0, false);
        assert_eq!(usize::from(be16(&p, 34)) << 5, 16 * 1024);
        assert!(checksum_ok(&p));
        // 10 KiB arrived and wait in the socket: the edge stays where it was.
        let mut p = segment(A, 1001, 5001 + 10_240, 32_448, None, &[]);
        w.clamp(&mut p, 10_240, false);
        let win = usize::from(be16(&p, 34)) << 5;
        assert_eq!(5001 + 10_240 + win as u32, 5001 + 16 * 1024, "edge kept");
        // With offload the checksum is left for the link.
        let mut p = segment(A, 1001, 5001 + 10_240, 32_448, None, &[]);
        let before = be16(&p, 36);
        w.clamp(&mut p, 0, true);
        assert_eq!(be16(&p, 36), before);
        // Never more than the stack itself offers.
        let mut p = segment(A, 1001, 5001 + 10_240, 100, None, &[]);
        w.clamp(&mut p, 0, false);
        assert_eq!(be16(&p, 34), 100);
    }

    #[test]
    fn an_opened_allowance_is_announced_once() {
        let mut w = Window::new(16 * 1024);
        w.app_mss = 65_495;
        let mut p = segment(SA, 1000, 5001, u16::MAX, Some(5), &[]);
        w.clamp(&mut p, 0, false);
        // The app filled the window; all of it waits in the socket.
        let mut p = segment(A, 1001, 5001 + 16_384, 32_256, None, &[]);
        w.clamp(&mut p, 16_384, false);
        assert_eq!(be16(&p, 34), 0, "window closed");
        assert!(!w.up_limited(16_383, 1_000_000));
        assert!(w.up_limited(1, 1_500_000), "the allowance within 1 ms");
        assert!(!w.up_limited(16_383, 2_000_000));
        assert!(!w.up_limited(1, 3_100_000), "a new round");
        let s: SocketAddr = "198.51.100.1:443".parse().unwrap();
        let c: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        assert!(
            w.update(s, c, 16_384, 1 << 20, None).is_none(),
            "still full"
        );
        // Read out of the socket: the window opens, an update goes.
        let u = w.update(s, c, 0, 1 << 20, None).expect("a window update");
        assert_eq!(be32(&u, 24), 1001, "at the next sequence number");
        assert_eq!(be32(&u, 28), 5001 + 16_384, "the last ack");
        assert_eq!(usize::from(be16(&u, 34)) << 5, 16 * 1024);
        assert!(checksum_ok(&u));
        assert!(w.update(s, c, 0, 1 << 20, None).is_none(), "said once");
        // A bigger allowance opens it again.
        w.up = 64 * 1024;
        let u = w.update(s, c, 0, 1 << 20, None).expect("a window update");
        assert_eq!(usize::from(be16(&u, 34)) << 5, 64 * 1024);
        // The app fills that window and all of it is read: acknowledged at
        // once, with the window open again beyond it.
        let filled = 5001 + 16_384 + 64 * 1024;
        assert!(
            w.update(s, c, 0, 1 << 20, Some(filled - 4096)).is_none(),
            "not full"
        );
        let u = w.update(s, c, 0, 1 << 20, Some(filled)).expect("an ACK");
        assert_eq!(be32(&u, 28), filled);
        assert_eq!(usize::from(be16(&u, 34)) << 5, 64 * 1024);
        assert!(w.update(s, c, 0, 1 << 20, Some(filled)).is_none(), "once");
        // Past two of the app's segments the stack acknowledges at once.
        w.up = 256 * 1024;
        let u = w.update(s, c, 0, 1 << 20, None).expect("the window opens");
        let edge = filled + (usize::from(be16(&u, 34)) << 5) as u32;
        assert!(w.update(s, c, 0, 1 << 20, Some(edge)).is_none());
    }

    #[test]
    fn the_apps_window_is_read_with_its_scale() {
        let mut w = Window::new(16 * 1024);
        w.on_app_segment(&segment(tcp_flags::SYN, 5000, 0, 64_240, Some(7), &[]));
        assert_eq!(w.app_window, 64_240);
        w.on_app_segment(&segment(A, 5001, 1001, 1000, None, &[]));
        assert_eq!(w.app_window, 128_000);
        assert!(w.down_limited(16 * 1024, 1));
        assert!(!w.down_limited(0, 16 * 1024));
        w.on_app_segment(&segment(A, 5001, 1001, 10, None, &[]));
        assert!(!w.down_limited(16 * 1024, 1), "the app is the limit");
    }

    #[test]
    fn options_are_walked_safely() {
        let p = segment(SA, 1, 1, 1, Some(20), &[]);
        assert_eq!(window_scale(&p, 20), Some(14), "capped at 14");
        let mut bad = segment(SA, 1, 1, 1, Some(3), &[]);
        bad[41] = 0; // option length 0
        assert_eq!(window_scale(&bad, 20), None);
        assert_eq!(tcp_at(&bad[..30]), None);
        let mut p = segment(SA, 1, 1, 1, None, &[]);
        p.extend_from_slice(&[2, 4, 0x05, 0xb4]);
        p[32] = 6 << 4;
        assert_eq!(max_segment(&p, 20), Some(1460));
    }
}
