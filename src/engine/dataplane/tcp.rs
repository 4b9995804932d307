//! TCP: connections terminated in the userspace stack (smoltcp, one
//! socket set per connection), the app's first bytes read and judged
//! before anything is relayed, bytes moved between the local socket and
//! the driver's upstream connection with flow control both ways.
//!
//! About 700 lines, on purpose: a connection's whole life (SYN, first
//! bytes, verdict, relay, close) with [`Engine`]'s `service_tcp` as its one
//! state machine reads best in one place.

use super::*;

/// App bytes moved out of a local TCP socket in one read.
const READ_CHUNK: usize = 64 * 1024;

/// TURN messages taken out of one connection's stream and not yet past
/// ([`TcpFlow::elide`]); past it, a message naming a refused peer cuts the
/// connection instead.
const MAX_ELIDED: usize = 64;

/// A connection with empty buffers and no packet from the app for this
/// long gives its buffers' pages back (see [`Engine::release_idle`]): a
/// busy one is not slowed by it, an idle one holds its pages this long
/// after its last bytes.
pub(super) const RELEASE_IDLE_NS: u64 = 50_000_000;

/// What the engine reads of an app's TCP segment before the stack does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment {
    pub(super) flags: u8,
    pub(super) seq: u32,
    pub(super) len: usize,
}

/// Whether sequence number `a` comes after `b` (RFC 1982 arithmetic).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Where a TCP flow is with the app's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstBytes {
    /// Judged (or the flow is DNS, answered here).
    Judged,
    /// Opened by the timer before the app sent anything: the first bytes
    /// will be held and judged.
    Awaited,
    /// The first bytes came after the flow was opened: held since then,
    /// judged when the sniffer is done, [`TCP_SNIFF_BYTES`] (or a longer
    /// ClientHello or request head) are in, the app
    /// finished sending, or [`TCP_SNIFF_NS`] passed.
    Reading { since_ns: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TcpPhase {
    /// Accepted, waiting for its owner (the program that opened it, which
    /// the driver looks for off the engine's thread): nothing is judged
    /// before it is known ([`Engine::owner_found`]); the app's first bytes
    /// are read and held meanwhile, bounded as while sniffing.
    Owner,
    /// Reading the app's first bytes.
    Sniffing { since_ns: Option<u64> },
    /// Held for an answer to an `ask` rule's question (the app's first
    /// bytes kept, bounded as while sniffing); judged again once
    /// [`FlowCore::answer`] is set.
    Asking,
    /// Allowed; waiting for the upstream connection.
    Connecting,
    /// Relaying.
    Open,
    /// Blocked or cut: the local socket was aborted.
    Blocked,
    /// DNS over TCP, answered here: never opened upstream.
    Dns,
}

pub(super) struct TcpFlow {
    pub(super) id: FlowId,
    /// Endpoints, classifier, leaks, names, last packet.
    pub(super) core: FlowCore,
    /// When the stack wants this connection polled again (retransmission,
    /// delayed ACK), as kept in [`Engine`]'s timer queue.
    pub(super) timer: Option<u64>,
    pub(super) scan: ScanState,
    pub(super) phase: TcpPhase,
    /// App bytes read but not yet sent upstream.
    pub(super) pending: Vec<u8>,
    /// Whether the app's first bytes were judged: a flow opened by the
    /// sniffing timer (server-first protocols) still has its client's
    /// first bytes read, held and judged before they are relayed.
    pub(super) first_bytes: FirstBytes,
    /// Judge again at the next service (the rules changed, or a name for
    /// the server was learned).
    pub(super) rejudge: bool,
    pub(super) app_fin_sent: bool,
    /// The driver's upstream queue is full: leave the app's bytes in the
    /// local socket (its window closes) until resumed.
    pub(super) paused: bool,
    /// What the connection may hold each way, and what its app was told
    /// (see `dataplane/window.rs`).
    pub(super) win: window::Window,
    /// Counted in the engine's `long_reads`: it may read its first bytes
    /// past [`TCP_SNIFF_BYTES`].
    pub(super) long_read: bool,
    /// Its long read was refused (counted once).
    pub(super) long_refused: bool,
    /// Dropped silently: its socket is gone and its segments are
    /// swallowed (no RST) until it has been idle for the UDP idle time.
    pub(super) silent: bool,
    /// Sequence number of the app's next byte the engine will read from
    /// the socket (the SYN's + 1 + bytes read).
    pub(super) seq_read: u32,
    /// App bytes read from the socket in all: the stream offset of the
    /// next one (the bytes held in `pending` end there).
    pub(super) read: u64,
    /// Stream ranges of TURN messages naming a refused peer, inside
    /// `pending`, in order: taken out when it is released
    /// ([`TcpFlow::release`]). At most [`MAX_ELIDED`].
    pub(super) elide: Vec<std::ops::Range<u64>>,
    /// End of the furthest app segment seen: beyond `seq_read` with an
    /// empty socket, the stack may hold bytes that came ahead of a gap.
    pub(super) seq_seen: u32,
    /// Bytes went through the local buffers since they were last given
    /// back.
    pub(super) buffers_used: bool,
    /// App bytes are held because a message in them that can change the
    /// verdict (a TURN message, an HTTP/1.x request's head, a SOCKS
    /// request, a proxy tunnel's ClientHello) is not whole yet: they are
    /// judged once it is.
    pub(super) msg_held: bool,
    /// Since when the app's bytes end inside such a message: after
    /// [`TCP_SNIFF_NS`] with no more of it, what is held goes on (the
    /// reading goes on too: the message's end is judged before it leaves,
    /// so a server never gets the whole of a message the rules block; a
    /// stream read wrongly is never held up for longer).
    pub(super) partial_since_ns: Option<u64>,
}

impl TcpFlow {
    /// A new connection whose SYN had sequence number `syn`, holding
    /// Allowed `each` bytes each way at first.
    fn new(id: FlowId, core: FlowCore, phase: TcpPhase, each: usize, syn: u32) -> Self {
        Self {
            id,
            core,
            timer: None,
            scan: ScanState::default(),
            phase,
            pending: Vec::new(),
            first_bytes: FirstBytes::Judged,
            rejudge: false,
            app_fin_sent: false,
            paused: false,
            win: window::Window::new(each),
            long_read: false,
            long_refused: false,
            silent: false,
            seq_read: syn.wrapping_add(1),
            read: 0,
            elide: Vec::new(),
            seq_seen: syn.wrapping_add(1),
            buffers_used: false,
            msg_held: false,
            partial_since_ns: None,
        }
    }
}

impl Engine {
    /// Bytes of the connections' allowances above the floor
    /// ([`TCP_BUFFER_MIN`] each way): at most [`EngineConfig::tcp_memory`]
    /// (see `dataplane/window.rs`).
    pub fn tcp_memory(&self) -> usize {
        self.tcp_memory
    }

    /// The verdict a new connection gets before any payload (at its SYN,
    /// or once its owner is known): the whole verdict when no rule needs
    /// the payload (`sniff` false), otherwise only a block no payload could
    /// lift, so the app fails over at once instead of after its first
    /// write. With an `ask` rule's question the connection is held (true).
    fn start_verdict<'p>(
        &mut self,
        policy: &'p crate::policy::Policy,
        key: TcpKey,
        id: FlowId,
        core: &mut FlowCore,
        sniff: bool,
        now_ns: u64,
    ) -> (Option<Verdict<'p>>, bool) {
        let mut v = if sniff {
            let names = fact_names(core);
            let facts = facts(PTransport::Tcp, core, &names);
            policy.settled_block(&self.intel, &facts)
        } else {
            let v = judge_parts(policy, &self.intel, PTransport::Tcp, core);
            Some(self.asks.resolve(v, core))
        };
        let mut asked = false;
        if let Some(vv) = &mut v {
            // An ask rule: accept the connection and hold it.
            let held = ask::Held::Tcp(key);
            asked = self
                .asking()
                .hold_or_settle(held, id, FlowProto::Tcp, core, vv, now_ns);
        }
        (v, asked)
    }

    /// A connection blocked at its start by `v`: counted, noted on the
    /// flow; its `blocked` event.
    fn blocked_at_start(&mut self, id: FlowId, core: &mut FlowCore, v: &Verdict<'_>) -> Event {
        self.counters.blocked += 1;
        let ev = Event::of_flow(EventKind::Blocked, id, FlowProto::Tcp, core, Some(v));
        core.note_block(&ev);
        ev
    }

    /// The owner of a connection accepted while it was looked for
    /// ([`TcpPhase::Owner`]) is known (or given up: `owner` empty): the
    /// connection gets the verdict of its start now, as at a SYN, and goes
    /// on (blocked, held for a question, sniffed or opened).
    pub(super) fn start_owned(&mut self, key: TcpKey, owner: AppOwner, now_ns: u64) {
        use smoltcp::socket::tcp::State as S;
        let Some(mut f) = self.tcp.remove(&key) else {
            return;
        };
        if f.phase != TcpPhase::Owner {
            self.tcp.insert(key, f);
            return;
        }
        f.core.ctx.app = owner.app;
        f.core.ctx.uid = owner.uid;
        let policy = self.policy.current();
        let sniff = policy.needs_payload();
        let (v, asked) = self.start_verdict(&policy, key, f.id, &mut f.core, sniff, now_ns);
        let handshake_done = self
            .socks
            .get(&key)
            .is_some_and(|c| !matches!(c.socket().state(), S::Listen | S::SynReceived));
        match v {
            Some(v) if matches!(v.action, Action::Block(_)) => {
                let ev = self.blocked_at_start(f.id, &mut f.core, &v);
                self.out.push_back(Output::Event(Box::new(ev)));
                f.phase = TcpPhase::Blocked;
                f.pending.clear();
                f.elide.clear();
                if v.action == Action::Block(BlockMode::Reject) {
                    // The RST leaves at the poll below.
                    if let Some(c) = self.socks.get_mut(&key) {
                        c.socket_mut().abort();
                    }
                } else {
                    // Dropped: its segments are swallowed from now on.
                    f.silent = true;
                    self.socks.remove(&key);
                    self.tcp_memory -= f.win.take_charge();
                    self.wake_at(now_ns + self.cfg.udp_idle_ns);
                }
            }
            _ if asked => f.phase = TcpPhase::Asking,
            _ if sniff => {
                f.phase = TcpPhase::Sniffing {
                    since_ns: handshake_done.then_some(now_ns),
                };
                let t = now_ns + TCP_SNIFF_NS;
                self.wake_at(t);
            }
            v => {
                f.phase = TcpPhase::Connecting;
                self.counters.opened += 1;
                let ev = f.event(EventKind::Opened, v.as_ref());
                self.out.push_back(Output::Event(Box::new(ev)));
                self.out.push_back(Output::TcpOpen {
                    flow: f.id,
                    dst: f.core.server,
                    window: f.win.up.max(f.win.down),
                });
            }
        }
        self.tcp.insert(key, f);
        self.poll_stack(now_ns, Some(key));
    }

    pub(super) fn on_tcp_packet(
        &mut self,
        raw: &[u8],
        client: SocketAddr,
        server: SocketAddr,
        seg: Segment,
        now_ns: u64,
    ) {
        let key = (client, server);
        let flags = seg.flags;
        if let Some(f) = self.tcp.get_mut(&key) {
            f.core.last_ns = now_ns;
            f.core.volume.up(raw.len());
            let mut grow = false;
            if seg.len > 0 {
                f.buffers_used = true;
                let end = seg.seq.wrapping_add(seg.len as u32);
                if seq_after(end, f.seq_seen) {
                    f.seq_seen = end;
                }
                // The app sent its whole allowance within a round while
                // its bytes were being moved on: the allowance held it back.
                grow = f.win.up_limited(seg.len, now_ns) && !f.paused && f.phase == TcpPhase::Open;
            }
            if f.silent {
                // A silently dropped connection: nothing back, nothing on.
                return;
            }
            f.win.on_app_segment(raw);
            if grow {
                self.grow_allowance(key, true);
            }
        }
        if !self.tcp.contains_key(&key)
            && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
        {
            if self.flow_count() >= self.cfg.max_flows {
                self.counters.refused += 1;
                if let Some(r) = reply::tcp_reset(raw) {
                    self.out.push_back(Output::ToTun(r));
                }
                return;
            }
            let is_dns = server.port() == 53;
            if !is_dns && self.refused_without_route(raw, server.ip(), now_ns) {
                return;
            }
            let policy = self.policy.current();
            let sniff = policy.needs_payload() && !is_dns;
            // Its owner is being looked for: accepted now (unless the
            // address alone blocks it), judged once known.
            let owner_wait = !is_dns && self.owners_pending.remove(&key);
            let ctx = self.flow_ctx(PTransport::Tcp, false, client, server, now_ns);
            let mut core = FlowCore::new(client, server, ctx, now_ns);
            core.volume.up(raw.len());
            let id = self.next_id;
            self.next_id += 1;
            // The verdict the SYN decided (none: the payload decides).
            let mut decided = None;
            let mut asked = false;
            // The start's verdict needs no owner unless a rule looks at it
            // (then the driver holds the SYN until the owner is known; new
            // rules between the two leave this one to its owner's arrival).
            let owner_decides = owner_wait && policy.needs_owner();
            if !is_dns && !owner_decides {
                let (v, held) = self.start_verdict(&policy, key, id, &mut core, sniff, now_ns);
                asked = held;
                if let Some(v) = v
                    && let Action::Block(mode) = v.action
                {
                    let ev = self.blocked_at_start(id, &mut core, &v);
                    if mode == BlockMode::Reject
                        && let Some(r) = reply::tcp_reset(raw)
                    {
                        self.out.push_back(Output::ToTun(r));
                    }
                    self.out.push_back(Output::Event(Box::new(ev)));
                    if mode == BlockMode::Drop {
                        // Remembered, silent: the app's retransmitted SYNs
                        // are swallowed, not judged (and evented) again.
                        let mut f = TcpFlow::new(id, core, TcpPhase::Blocked, 0, seg.seq);
                        f.silent = true;
                        self.tcp.insert(key, f);
                        self.tcp_ids.insert(id, key);
                        self.wake_at(now_ns + self.cfg.udp_idle_ns);
                    }
                    return;
                }
                decided = v;
            }
            let each = self.tcp_start_allowance();
            if each == TCP_BUFFER_MIN {
                self.counters.tcp_squeezed += 1;
            }
            let cap = self.cfg.tcp_buffer.max(TCP_BUFFER_MIN);
            let mut conn = crate::engine::pages::ConnSockets::new(cap, &self.pages);
            let each = each.min(conn.capacity());
            let sock = conn.socket_mut();
            sock.set_nagle_enabled(false);
            // One ACK per two segments (or after 1 ms): with 64 KiB
            // segments, half the packets written back during an upload.
            sock.set_ack_delay(Some(smoltcp::time::Duration::from_millis(1)));
            let ep = smoltcp::wire::IpListenEndpoint {
                addr: Some(server.ip().into()),
                port: server.port(),
            };
            if sock.listen(ep).is_err() {
                return self.drop_reason(DropReason::TcpListenFailed);
            }
            self.socks.insert(key, conn);
            let phase = if is_dns {
                TcpPhase::Dns
            } else if owner_wait {
                TcpPhase::Owner
            } else if asked {
                TcpPhase::Asking
            } else if sniff {
                TcpPhase::Sniffing { since_ns: None }
            } else {
                TcpPhase::Connecting
            };
            let mut f = TcpFlow::new(id, core, phase, each, seg.seq);
            f.win.on_app_segment(raw);
            self.tcp_memory += f.win.charge();
            self.wake_at(now_ns + self.cfg.tcp_handshake_ns.min(self.cfg.tcp_idle_ns));
            if !asked && !sniff && !is_dns && !owner_wait {
                self.counters.opened += 1;
                let ev = f.event(EventKind::Opened, decided.as_ref());
                self.out.push_back(Output::Event(Box::new(ev)));
                self.out.push_back(Output::TcpOpen {
                    flow: id,
                    dst: server,
                    window: f.win.up.max(f.win.down),
                });
            }
            self.tcp.insert(key, f);
            self.tcp_ids.insert(id, key);
        }
        // Everything else (and segments of unknown connections, which the
        // stack answers with an RST) goes through the stack.
        self.poll_stack_with(now_ns, Some(key), Some(raw));
    }

    /// Runs the TCP stack, moves app bytes along, judges, and collects the
    /// packets it sends. With `only`, just that connection is serviced (a
    /// packet or an upstream event touches one); without, all are (timers).
    pub(super) fn poll_stack(&mut self, now_ns: u64, only: Option<(SocketAddr, SocketAddr)>) {
        self.poll_stack_with(now_ns, only, None);
    }

    /// [`Engine::poll_stack`], first handing the stack `packet` (borrowed,
    /// not copied).
    pub(super) fn poll_stack_with(
        &mut self,
        now_ns: u64,
        only: Option<(SocketAddr, SocketAddr)>,
        packet: Option<&[u8]>,
    ) {
        match only {
            Some(key) => self.poll_one(now_ns, key, packet),
            None => {
                let keys: Vec<_> = self.tcp.keys().copied().collect();
                for key in keys {
                    self.poll_one(now_ns, key, None);
                }
            }
        }
        while let Some(p) = self.device.tx.pop_front() {
            self.out.push_back(Output::ToTun(p));
        }
    }

    /// Runs the stack for one connection (its own socket set, with
    /// `packet` if given), services it, and files its next stack timer.
    /// A segment of no connection goes to the stack with no socket, which
    /// answers an RST.
    pub(super) fn poll_one(&mut self, now_ns: u64, key: TcpKey, packet: Option<&[u8]>) {
        let t = crate::engine::stack::instant(now_ns);
        let sent = self.device.tx.len();
        let mut dev = crate::engine::stack::OneShot {
            rx: packet,
            tx: &mut self.device.tx,
            mtu: self.device.mtu,
            tcp_checksum_offload: self.device.tcp_checksum_offload,
        };
        let set = match self.socks.get_mut(&key) {
            Some(c) => c.set(),
            None => &mut self.no_sockets,
        };
        self.iface.poll(t, &mut dev, set);
        let Some(f) = self.tcp.get_mut(&key) else {
            return;
        };
        count_sent(&mut f.core, &self.device.tx, sent);
        self.clamp_sent(key, sent);
        self.service_tcp(now_ns, key);
        let sent = self.device.tx.len();
        if let Some(c) = self.socks.get_mut(&key) {
            self.iface.poll(t, &mut self.device, c.set());
            if let Some(f) = self.tcp.get_mut(&key) {
                count_sent(&mut f.core, &self.device.tx, sent);
            }
            self.clamp_sent(key, sent);
            self.window_update(key);
        }
        let at = self.socks.get_mut(&key).and_then(|c| {
            self.iface
                .poll_at(t, c.set())
                .map(|i| u64::try_from(i.total_micros()).unwrap_or(0) * 1_000)
        });
        let at = match (at, self.release_idle(key, now_ns)) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        if let Some(f) = self.tcp.get_mut(&key)
            && f.timer != at
        {
            if let Some(old) = f.timer {
                self.tcp_timers.remove(&(old, key));
            }
            if let Some(a) = at {
                self.tcp_timers.insert((a, key));
            }
            f.timer = at;
        }
    }

    /// Gives a connection's buffer pages back to the system once both
    /// buffers are empty, the stack holds no bytes that came ahead of a
    /// gap (see [`crate::engine::pages`]) and the app sent nothing for
    /// [`RELEASE_IDLE_NS`]. Returns when to look again: the buffers are
    /// empty but the app was heard from less than that ago.
    fn release_idle(&mut self, key: TcpKey, now_ns: u64) -> Option<u64> {
        let f = self.tcp.get_mut(&key)?;
        let c = self.socks.get_mut(&key)?;
        let s = c.socket();
        if s.recv_queue() != 0 || s.send_queue() != 0 {
            // Bytes in a buffer now (app bytes read at this poll were seen
            // in their segment).
            f.buffers_used = true;
            return None;
        }
        if !f.buffers_used {
            return None;
        }
        let idle_at = f.core.last_ns + RELEASE_IDLE_NS;
        if now_ns < idle_at {
            return Some(idle_at);
        }
        if c.release(f.seq_seen == f.seq_read) {
            f.buffers_used = false;
            self.counters.tcp_released += 1;
            self.shrink_allowance(key);
        }
        None
    }

    /// Forgets a connection: its flow, id, socket set, timer and buffers.
    /// Returns them (the set, if it still had one).
    pub(super) fn remove_tcp(
        &mut self,
        key: &TcpKey,
    ) -> Option<(TcpFlow, Option<crate::engine::pages::ConnSockets>)> {
        let f = self.tcp.remove(key)?;
        self.tcp_ids.remove(&f.id);
        if let Some(t) = f.timer {
            self.tcp_timers.remove(&(t, *key));
        }
        self.tcp_memory -= f.win.charge();
        if f.long_read {
            self.long_reads -= 1;
        }
        Some((f, self.socks.remove(key)))
    }

    pub(super) fn service_tcp(&mut self, now_ns: u64, key: (SocketAddr, SocketAddr)) {
        use smoltcp::socket::tcp::State as S;
        {
            let Some(f) = self.tcp.get_mut(&key) else {
                return;
            };
            if f.silent {
                return;
            }
            let Some(set) = self.socks.get_mut(&key) else {
                return;
            };
            let sock = set.socket_mut();
            if let TcpPhase::Sniffing { since_ns: None } = f.phase
                && sock.state() == S::Established
            {
                f.phase = TcpPhase::Sniffing {
                    since_ns: Some(now_ns),
                };
                let t = now_ns + TCP_SNIFF_NS;
                self.wake_ns = Some(self.wake_ns.map_or(t, |w| w.min(t)));
            }
            // Read what the app sent (bounded while not open, and while
            // late first bytes are held).
            let mut new_leak = false;
            let (mut new_peer, mut too_many, mut new_host) = (false, false, false);
            let holding = f.first_bytes != FirstBytes::Judged;
            // The app's first bytes are still being read (not yet relayed).
            let reading_first = holding
                || matches!(
                    f.phase,
                    TcpPhase::Owner
                        | TcpPhase::Sniffing { .. }
                        | TcpPhase::Asking
                        | TcpPhase::Connecting
                );
            loop {
                // Relayed bytes of an open flow are not looked at here.
                let mut first_limit = if reading_first {
                    crate::classify::sniff_limit(&f.pending)
                } else {
                    TCP_SNIFF_BYTES
                };
                if first_limit > TCP_SNIFF_BYTES && !f.long_read {
                    if self.long_reads < self.cfg.long_first_reads {
                        f.long_read = true;
                        self.long_reads += 1;
                    } else {
                        first_limit = TCP_SNIFF_BYTES;
                        if f.pending.len() == TCP_SNIFF_BYTES && !f.long_refused {
                            f.long_refused = true;
                            self.counters.tcp_long_reads_refused += 1;
                        }
                    }
                }
                let room = match f.phase {
                    TcpPhase::Open if f.paused => 0,
                    TcpPhase::Open | TcpPhase::Connecting if holding => {
                        first_limit.saturating_sub(f.pending.len()).min(READ_CHUNK)
                    }
                    TcpPhase::Open => READ_CHUNK,
                    TcpPhase::Owner
                    | TcpPhase::Sniffing { .. }
                    | TcpPhase::Asking
                    | TcpPhase::Connecting => {
                        first_limit.saturating_sub(f.pending.len()).min(READ_CHUNK)
                    }
                    TcpPhase::Blocked => 0,
                    // Queries, at most two full messages waiting.
                    TcpPhase::Dns => (2 * 65_537usize).saturating_sub(f.pending.len()),
                };
                if room == 0 || !sock.can_recv() {
                    break;
                }
                // One copy, out of the socket's ring into the bytes that
                // travel on.
                let data = match sock.recv(|b| {
                    let n = b.len().min(room);
                    (n, b[..n].to_vec())
                }) {
                    Ok(v) if !v.is_empty() => v,
                    _ => break,
                };
                // Where the bytes not yet relayed begin.
                let kept_from = f.read - f.pending.len() as u64;
                f.seq_read = f.seq_read.wrapping_add(data.len() as u32);
                f.read += data.len() as u64;
                let named = f.core.sniffer.server_name.is_some();
                f.core.sniffer.on_payload(
                    Carrier::Tcp,
                    Dir::Up,
                    (f.core.client.port(), f.core.server.port()),
                    &data,
                    now_ns,
                );
                new_leak |= crate::engine::scan_leaks(
                    self.leak.load().as_deref(),
                    f.core.sniffer.encrypted,
                    &mut f.scan,
                    &data,
                    &mut self.hits,
                    &mut f.core.leaks,
                );
                // TURN over TCP: a message naming a new peer is judged
                // before it leaves; so is one still coming in pieces. One
                // naming a peer the rules refuse is taken out of the
                // stream whole (the framing of what follows is unchanged)
                // and the relay goes on for its other peers, as over UDP;
                // if some of it left already (it came in pieces slower
                // than the sniffing time), the peer is the flow's and the
                // judging cuts it.
                let (rules, intel, id) = (&self.policy, &self.intel, f.id);
                let mut refusals = Vec::new();
                let turn = f.core.learn_stream_peers_with(&data, |core, peer, start| {
                    if start < kept_from {
                        return false;
                    }
                    let policy = rules.current();
                    let refused =
                        peer_refusal(&policy, intel, PTransport::Tcp, core, &core.peers, peer);
                    if let Some(v) = &refused {
                        let mut ev = Event::of_flow(
                            EventKind::PeerRefused,
                            id,
                            FlowProto::Tcp,
                            core,
                            Some(v),
                        );
                        ev.peers = vec![peer.to_string()];
                        refusals.push(ev);
                    }
                    refused.is_some()
                });
                for ev in refusals {
                    self.out.push_back(Output::Event(Box::new(ev)));
                }
                for r in turn.refused {
                    if r.start < kept_from || f.elide.len() == MAX_ELIDED {
                        f.core.admit_refused();
                    } else {
                        f.elide.push(r);
                        *self
                            .counters
                            .drops
                            .entry(DropReason::TurnPeerRefused)
                            .or_insert(0) += 1;
                    }
                }
                match turn.news {
                    PeerNews::New | PeerNews::Refused => new_peer = true,
                    PeerNews::TooMany => too_many = true,
                    PeerNews::Nothing => {}
                }
                // HTTP/1.x: a later request naming a new host is judged
                // before it leaves; so is a head still coming in pieces.
                let req = f.core.learn_stream_hosts(&data);
                new_host |= req.new;
                // The first ClientHello or request head, judged before it
                // was whole (it stopped coming for the sniffing time): its
                // rest is held until the name it gives is judged.
                let head = !reading_first && f.core.sniffer.head_coming();
                new_host |= !reading_first && !named && f.core.sniffer.server_name.is_some();
                if req.udp_relay {
                    // Its datagrams to the proxy name their targets.
                    self.socks_relays
                        .add(f.core.client.ip(), f.core.server.ip());
                }
                f.msg_held |= turn.partial || req.partial || head;
                if (turn.partial || req.partial || head) && f.partial_since_ns.is_none() {
                    f.partial_since_ns = Some(now_ns);
                    let t = now_ns + TCP_SNIFF_NS;
                    self.wake_ns = Some(self.wake_ns.map_or(t, |w| w.min(t)));
                }
                if f.first_bytes == FirstBytes::Awaited {
                    f.first_bytes = FirstBytes::Reading { since_ns: now_ns };
                    let t = now_ns + TCP_SNIFF_NS;
                    self.wake_ns = Some(self.wake_ns.map_or(t, |w| w.min(t)));
                }
                if f.phase == TcpPhase::Open
                    && !new_leak
                    && !new_peer
                    && !new_host
                    && !f.msg_held
                    && !holding
                {
                    self.out.push_back(Output::TcpSend {
                        flow: f.id,
                        payload: data,
                    });
                } else {
                    f.pending.extend_from_slice(&data);
                }
            }
            if f.phase == TcpPhase::Dns {
                // Length-prefixed queries; answered here, in order.
                let mut frames = Vec::new();
                while let [a, b, ..] = f.pending[..] {
                    let n = usize::from(u16::from_be_bytes([a, b]));
                    if f.pending.len() < 2 + n {
                        break;
                    }
                    frames.push(f.pending[2..2 + n].to_vec());
                    f.pending.drain(..2 + n);
                }
                if frames.is_empty() && matches!(sock.state(), S::CloseWait) && f.pending.is_empty()
                {
                    sock.close();
                }
                for q in frames {
                    self.on_dns(&q, Reply::Tcp(key), now_ns);
                }
                return;
            }
            // A TURN message naming more peers than one message is read
            // for cannot be judged: the connection is cut before it leaves.
            if too_many {
                sock.abort();
                let upstream = matches!(f.phase, TcpPhase::Open | TcpPhase::Connecting);
                f.phase = TcpPhase::Blocked;
                f.pending.clear();
                f.elide.clear();
                *self
                    .counters
                    .drops
                    .entry(DropReason::TurnTooManyPeers)
                    .or_insert(0) += 1;
                if upstream {
                    self.counters.cut += 1;
                    self.out.push_back(Output::Close { flow: f.id });
                } else {
                    self.counters.blocked += 1;
                }
                return;
            }
            let partial_now = f.core.turn_partial()
                || f.core.head_partial()
                || (!reading_first && f.core.sniffer.head_coming());
            if !partial_now {
                f.partial_since_ns = None;
            }
            // A message that stopped coming in pieces for the sniffing
            // time (a person typing, a stream read wrongly) holds no longer.
            let late = f
                .partial_since_ns
                .is_some_and(|t| now_ns.saturating_sub(t) >= TCP_SNIFF_NS);
            if late {
                f.partial_since_ns = None;
            }
            let msg_partial = f.msg_held && partial_now && !late;
            // Bytes held for a TURN message or a request head that is whole
            // now.
            let msg_due = f.msg_held && !msg_partial;
            let mut aborted_now = false;
            let mut drop_silently = false;
            // Judge when the first bytes are in, or the time is up.
            let first_in = |t: u64| {
                f.core.sniffer.is_done()
                    || f.pending.len()
                        >= if f.long_read {
                            crate::classify::sniff_limit(&f.pending)
                        } else {
                            TCP_SNIFF_BYTES
                        }
                    // The app finished sending: no more bytes will come.
                    || (matches!(sock.state(), S::CloseWait | S::LastAck) && !sock.can_recv())
                    || now_ns.saturating_sub(t) >= TCP_SNIFF_NS
            };
            let late_in = match f.first_bytes {
                FirstBytes::Reading { since_ns } => first_in(since_ns),
                _ => false,
            };
            let due = match f.phase {
                TcpPhase::Sniffing { since_ns: Some(t) } => first_in(t),
                TcpPhase::Connecting | TcpPhase::Open => {
                    new_leak || new_peer || new_host || msg_due || late_in || f.rejudge
                }
                TcpPhase::Asking => f.core.answer.is_some(),
                _ => false,
            };
            f.rejudge = false;
            if due {
                // A hello judged before it is whole: by the name its bytes
                // so far give, if they do.
                f.core.sniffer.name_from_partial_hello();
                if let Some(n) = f.core.server_own_name() {
                    // TLS, QUIC and HTTP names feed the same map as DNS.
                    let until = now_ns + dns::SEEN_NAME_TTL_NS;
                    self.names
                        .learn(f.core.server.ip(), n, until, self.cfg.dns.names);
                }
                let policy = self.policy.current();
                let v = judge_parts(&policy, &self.intel, PTransport::Tcp, &f.core);
                let mut v = self.asks.resolve(v, &f.core);
                let was = f.phase;
                let first = matches!(was, TcpPhase::Sniffing { .. } | TcpPhase::Asking);
                let held_now = first
                    && asking!(self).hold_or_settle(
                        ask::Held::Tcp(key),
                        f.id,
                        FlowProto::Tcp,
                        &mut f.core,
                        &mut v,
                        now_ns,
                    );
                if held_now {
                    f.phase = TcpPhase::Asking;
                }
                // An ask rule that newly matches an open flow does not
                // hold it: it goes on (only new flows are asked about).
                if held_now {
                } else if let Action::Block(mode) = v.action {
                    if mode == BlockMode::Reject {
                        // The RST goes out at the stack's next poll: keep
                        // the socket until then.
                        sock.abort();
                        aborted_now = true;
                    } else {
                        drop_silently = true;
                    }
                    f.phase = TcpPhase::Blocked;
                    f.pending.clear();
                    f.elide.clear();
                    if first {
                        self.counters.blocked += 1;
                    } else {
                        self.counters.cut += 1;
                        self.out.push_back(Output::Close { flow: f.id });
                    }
                    let ev = f.event(
                        if first {
                            EventKind::Blocked
                        } else {
                            EventKind::Cut
                        },
                        Some(&v),
                    );
                    f.core.note_block(&ev);
                    self.out.push_back(Output::Event(Box::new(ev)));
                } else if first {
                    f.phase = TcpPhase::Connecting;
                    if !msg_partial {
                        f.msg_held = false;
                    }
                    if f.pending.is_empty() && !f.core.sniffer.is_done() {
                        // The timer opened it: the app's first bytes, when
                        // they come, are still judged before they leave.
                        f.first_bytes = FirstBytes::Awaited;
                    }
                    self.counters.opened += 1;
                    let ev = f.event(EventKind::Opened, Some(&v));
                    self.out.push_back(Output::Event(Box::new(ev)));
                    self.out.push_back(Output::TcpOpen {
                        flow: f.id,
                        dst: f.core.server,
                        window: f.win.up.max(f.win.down),
                    });
                } else {
                    if late_in {
                        f.first_bytes = FirstBytes::Judged;
                    }
                    if !msg_partial {
                        f.msg_held = false;
                    }
                    if was == TcpPhase::Open
                        && f.first_bytes == FirstBytes::Judged
                        && !f.msg_held
                        && !f.pending.is_empty()
                    {
                        self.out.push_back(Output::TcpSend {
                            flow: f.id,
                            payload: f.release(),
                        });
                    }
                }
            }
            // Its first bytes judged and on their way (or dropped): the long
            // read's place is free again.
            if f.long_read
                && f.first_bytes == FirstBytes::Judged
                && !matches!(
                    f.phase,
                    TcpPhase::Owner
                        | TcpPhase::Sniffing { .. }
                        | TcpPhase::Asking
                        | TcpPhase::Connecting
                )
            {
                f.long_read = false;
                self.long_reads -= 1;
            }
            if drop_silently {
                f.silent = true;
                self.socks.remove(&key);
                self.tcp_memory -= f.win.take_charge();
                return;
            }
            // The app finished sending.
            if !f.app_fin_sent
                && f.phase == TcpPhase::Open
                && f.pending.is_empty()
                && sock.recv_queue() == 0
                && matches!(
                    sock.state(),
                    S::CloseWait | S::LastAck | S::Closing | S::TimeWait
                )
            {
                f.app_fin_sent = true;
                self.out.push_back(Output::TcpFin { flow: f.id });
            }
            // Gone: free the socket and the flow.
            if !aborted_now
                && matches!(sock.state(), S::Closed | S::TimeWait)
                && !matches!(f.phase, TcpPhase::Sniffing { since_ns: None })
            {
                let (id, phase) = (f.id, f.phase);
                let ev = f.closed_event();
                self.remove_tcp(&key);
                if matches!(phase, TcpPhase::Open | TcpPhase::Connecting) {
                    self.out.push_back(Output::Close { flow: id });
                }
                if let Some(ev) = ev {
                    self.out.push_back(Output::Event(Box::new(ev)));
                }
            }
        }
    }

    /// The upstream connection for the flow is established: what the app
    /// already sent goes out.
    pub fn handle_tcp_connected(&mut self, flow: FlowId, now_ns: u64) {
        let Some(key) = self.tcp_ids.get(&flow).copied() else {
            return self.drop_reason(DropReason::UnknownFlow);
        };
        if let Some(f) = self.tcp.get_mut(&key)
            && f.phase == TcpPhase::Connecting
        {
            f.phase = TcpPhase::Open;
            let server = f.core.server.ip();
            if !crate::policy::eval::is_local(server) {
                self.paths.answered(server);
            }
            if f.first_bytes == FirstBytes::Judged && !f.msg_held && !f.pending.is_empty() {
                self.out.push_back(Output::TcpSend {
                    flow,
                    payload: f.release(),
                });
            }
        }
        self.poll_stack(now_ns, Some(key));
    }

    /// Bytes from the flow's upstream connection, for the app. Returns how
    /// many were taken; the driver keeps the rest and offers them again
    /// after the next call (backpressure: the app's window is full).
    pub fn handle_tcp_from_upstream(&mut self, flow: FlowId, data: &[u8], now_ns: u64) -> usize {
        let Some(key) = self.tcp_ids.get(&flow).copied() else {
            self.drop_reason(DropReason::UnknownFlow);
            return 0;
        };
        let Some(f) = self.tcp.get_mut(&key) else {
            return 0;
        };
        if f.phase != TcpPhase::Open || f.silent {
            return 0;
        }
        let Some(set) = self.socks.get_mut(&key) else {
            return 0;
        };
        let (queued, cap) = (set.socket().send_queue(), set.capacity());
        if f.win.down < cap && f.win.down_limited(queued, data.len()) {
            self.grow_allowance(key, false);
        }
        let (Some(f), Some(set)) = (self.tcp.get_mut(&key), self.socks.get_mut(&key)) else {
            return 0;
        };
        let room = f.win.down.min(cap).saturating_sub(queued);
        let sock = set.socket_mut();
        let n = sock.send_slice(&data[..data.len().min(room)]).unwrap_or(0);
        f.core.sniffer.on_payload(
            Carrier::Tcp,
            Dir::Down,
            (f.core.client.port(), f.core.server.port()),
            &data[..n],
            now_ns,
        );
        self.poll_stack(now_ns, Some(key));
        n
    }

    /// How many bytes [`Engine::handle_tcp_from_upstream`] would take now
    /// for the flow (room in its local send buffer); 0 for a flow that is
    /// not open.
    /// Asked with bytes waiting: a flow whose allowance is full while its
    /// app's window has room for more grows it first.
    pub fn tcp_send_room(&mut self, flow: FlowId) -> usize {
        let Some(&k) = self.tcp_ids.get(&flow) else {
            return 0;
        };
        let full = self
            .tcp
            .get(&k)
            .zip(self.socks.get(&k))
            .is_some_and(|(f, c)| {
                let queued = c.socket().send_queue();
                f.win.down < c.capacity() && queued >= f.win.down && f.win.down_limited(queued, 1)
            });
        if full {
            self.grow_allowance(k, false);
        }
        self.tcp
            .get(&k)
            .filter(|f| f.phase == TcpPhase::Open && !f.silent)
            .zip(self.socks.get(&k))
            .map_or(0, |(f, set)| {
                let s = set.socket();
                f.win
                    .down
                    .min(s.send_capacity())
                    .saturating_sub(s.send_queue())
            })
    }

    /// Backpressure from upstream: while paused, the app's bytes for the
    /// flow stay in its local socket (so its window closes) instead of
    /// becoming [`Output::TcpSend`]; resuming moves them along at once.
    pub fn set_tcp_upstream_paused(&mut self, flow: FlowId, paused: bool, now_ns: u64) {
        let Some(key) = self.tcp_ids.get(&flow).copied() else {
            return;
        };
        if let Some(f) = self.tcp.get_mut(&key) {
            f.paused = paused;
        }
        if !paused {
            self.poll_stack(now_ns, Some(key));
        }
    }

    /// The upstream side closed cleanly: close towards the app (FIN).
    pub fn handle_tcp_upstream_closed(&mut self, flow: FlowId, now_ns: u64) {
        self.with_app_socket(flow, now_ns, smoltcp::socket::tcp::Socket::close);
    }

    /// The upstream connection failed or was reset: reset the app's side.
    pub fn handle_tcp_upstream_failed(&mut self, flow: FlowId, now_ns: u64) {
        self.with_app_socket(flow, now_ns, smoltcp::socket::tcp::Socket::abort);
    }

    /// The upstream connect failed (`why`): reset the app's side, as
    /// [`Engine::handle_tcp_upstream_failed`], and learn from it whether
    /// the family carries connections ([`super::super::paths`]; an
    /// internet server's only, and only while the flow was connecting).
    pub fn handle_tcp_connect_failed(&mut self, flow: FlowId, why: ConnectFailure, now_ns: u64) {
        let server = self
            .tcp_ids
            .get(&flow)
            .and_then(|k| self.tcp.get(k))
            .filter(|f| f.phase == TcpPhase::Connecting)
            .map(|f| f.core.server.ip())
            .filter(|ip| !crate::policy::eval::is_local(*ip));
        if let Some(ip) = server {
            match why {
                ConnectFailure::Refused => self.paths.answered(ip),
                ConnectFailure::Unanswered => {
                    if self.paths.unanswered(ip, now_ns) {
                        self.counters.families_down += 1;
                    }
                }
                ConnectFailure::Other => {}
            }
        }
        self.handle_tcp_upstream_failed(flow, now_ns);
    }

    /// Applies `op` to the flow's local socket (if it still has one), then
    /// runs the stack.
    pub(super) fn with_app_socket(
        &mut self,
        flow: FlowId,
        now_ns: u64,
        op: fn(&mut smoltcp::socket::tcp::Socket<'static>),
    ) {
        let key = self.tcp_ids.get(&flow).copied();
        if let Some(key) = key
            && let Some(set) = self.socks.get_mut(&key)
        {
            op(set.socket_mut());
        }
        self.poll_stack(now_ns, key);
    }
}

impl TcpFlow {
    /// The held app bytes, to be relayed: [`TcpFlow::pending`] without the
    /// TURN messages taken out of the stream ([`TcpFlow::elide`]).
    fn release(&mut self) -> Vec<u8> {
        let mut held = std::mem::take(&mut self.pending);
        if self.elide.is_empty() {
            return held;
        }
        let start = self.read - held.len() as u64;
        let at_of = |o: u64| usize::try_from(o.saturating_sub(start)).unwrap_or(usize::MAX);
        // Kept bytes are moved down over the ones taken out, in place.
        let (mut kept, mut at) = (0, 0);
        for r in self.elide.drain(..) {
            let a = at_of(r.start).clamp(at, held.len());
            let b = at_of(r.end).clamp(a, held.len());
            held.copy_within(at..a, kept);
            kept += a - at;
            at = b;
        }
        held.copy_within(at.., kept);
        kept += held.len() - at;
        held.truncate(kept);
        held
    }

    /// The event that ends this connection: none for one whose handshake
    /// never completed, or that ended before its owner was known (no event
    /// ever named it).
    pub(super) fn closed_event(&self) -> Option<Event> {
        (!matches!(
            self.phase,
            TcpPhase::Sniffing { since_ns: None } | TcpPhase::Owner
        ))
        .then(|| self.event(EventKind::Closed, None))
    }

    /// A decision event about this connection.
    pub(super) fn event(&self, kind: EventKind, v: Option<&Verdict<'_>>) -> Event {
        Event::of_flow(kind, self.id, FlowProto::Tcp, &self.core, v)
    }
}

/// Counts the packets the stack queued for the app past the first `from`
/// as the connection's.
fn count_sent(core: &mut FlowCore, tx: &VecDeque<Vec<u8>>, from: usize) {
    for p in tx.iter().skip(from) {
        core.volume.down(p.len());
    }
}

/// How long a TCP flow may stay idle: a silently dropped one as long as UDP,
/// a handshake for `tcp_handshake_ns`, a connection for `tcp_idle_ns`.
pub(super) fn tcp_idle_limit(cfg: &EngineConfig, f: &TcpFlow) -> u64 {
    if f.silent {
        cfg.udp_idle_ns
    } else if matches!(
        f.phase,
        TcpPhase::Sniffing { since_ns: None } | TcpPhase::Owner
    ) {
        cfg.tcp_handshake_ns
    } else {
        cfg.tcp_idle_ns
    }
}
