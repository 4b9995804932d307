//! The sans-IO engine: packets from the TUN side and results from upstream
//! in, with the time; packets for the TUN side, instructions for the
//! driver and events out. No clock, file or socket in here.
//!
//! Call order (as in quinn-proto): feed input with [`Engine::handle_tun`],
//! [`Engine::handle_udp_from_upstream`], [`Engine::handle_echo_reply`] and
//! [`Engine::handle_timeout`]; after each, drain [`Engine::poll_output`];
//! ask [`Engine::poll_timeout`] when to call `handle_timeout` next.
//!
//! **No byte before the verdict.** A UDP flow's first datagram is
//! classified and judged before the driver is asked to open anything
//! upstream. A TCP connection is accepted locally (smoltcp, AnyIP); when
//! the policy needs payload facts ([`crate::policy::Policy::needs_payload`]),
//! the app's first bytes are read (at most [`TCP_SNIFF_BYTES`], at most
//! [`TCP_SNIFF_NS`] after the handshake) and judged before the upstream
//! connection is even requested; when the address alone decides, it is
//! judged at the SYN. Later evidence (a reclassification, a leaked
//! identifier) is judged again and can cut an open flow: RST to the app,
//! upstream closed.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::dns::{self, DnsLimits, Question, Refusal, Resolved};
use super::events::FlowView;
pub use super::events::{Decision, DropReason, Event, EventKind, FlowProto};
use super::frag::{FragLimits, FragResult, Reassembler};
use super::reply;
use crate::classify::leak::{LeakDetector, LeakHit, ScanState};
use crate::classify::{Carrier, Dir, Encryption, Sniffer};
use crate::intel::jurisdiction::Intel;
use crate::policy::{Action, BlockMode, Facts, PolicyHandle, Transport as PTransport, Verdict};
use crate::wire::packet::{Transport, icmp_type, parse_ip, tcp_flags};

/// A flow's identity towards the driver.
pub type FlowId = u64;

/// App bytes read from a TCP connection before it is judged, at most.
pub const TCP_SNIFF_BYTES: usize = 16 * 1024;
/// How long after the handshake a TCP connection may stay unjudged
/// waiting for the app's first bytes (server-first protocols send none).
pub const TCP_SNIFF_NS: u64 = 300_000_000;
/// Default largest receive and send buffer of one local TCP connection
/// (each way).
pub const TCP_BUFFER: usize = 256 * 1024;
/// Smallest buffer a connection is given (each way).
pub const TCP_BUFFER_MIN: usize = 4 * 1024;
/// Default budget for all local TCP buffers together.
pub const TCP_MEMORY: usize = 16 * 1024 * 1024;
/// App bytes moved out of a local TCP socket in one read.
const READ_CHUNK: usize = 64 * 1024;

/// Where a TCP flow is with the app's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstBytes {
    /// Judged (or the flow is DNS, answered here).
    Judged,
    /// Opened by the timer before the app sent anything: the first bytes
    /// will be held and judged.
    Awaited,
    /// The first bytes came after the flow was opened: held since then,
    /// judged when the sniffer is done, [`TCP_SNIFF_BYTES`] are in, the app
    /// finished sending, or [`TCP_SNIFF_NS`] passed.
    Reading { since_ns: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpPhase {
    /// Reading the app's first bytes.
    Sniffing { since_ns: Option<u64> },
    /// Allowed; waiting for the upstream connection.
    Connecting,
    /// Relaying.
    Open,
    /// Blocked or cut: the local socket was aborted.
    Blocked,
    /// DNS over TCP, answered here: never opened upstream.
    Dns,
}

struct TcpFlow {
    id: FlowId,
    client: SocketAddr,
    server: SocketAddr,
    /// Its socket, in its own set in [`Engine`]'s `socks`.
    handle: smoltcp::iface::SocketHandle,
    /// When the stack wants this connection polled again (retransmission,
    /// delayed ACK), as kept in [`Engine`]'s timer queue.
    timer: Option<u64>,
    sniffer: Sniffer,
    leaks: Vec<LeakHit>,
    scan: ScanState,
    phase: TcpPhase,
    /// App bytes read but not yet sent upstream.
    pending: Vec<u8>,
    /// Whether the app's first bytes were judged: a flow opened by the
    /// sniffing timer (server-first protocols) still has its client's
    /// first bytes read, held and judged before they are relayed.
    first_bytes: FirstBytes,
    /// Judge again at the next service (the rules changed, or a name for
    /// the server was learned).
    rejudge: bool,
    app_fin_sent: bool,
    /// The driver's upstream queue is full: leave the app's bytes in the
    /// local socket (its window closes) until resumed.
    paused: bool,
    /// Bytes of local buffers (both ways) this connection holds.
    buffers: usize,
    /// Names the server's address was learned with (DNS, earlier flows).
    ctx: FlowCtx,
    /// Dropped silently: its socket is gone and its segments are
    /// swallowed (no RST) until it has been idle for the UDP idle time.
    silent: bool,
    last_ns: u64,
}

/// Limits and timeouts, with defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Flows at most (default 65,536); new ones beyond are refused.
    pub max_flows: usize,
    /// A UDP flow idle this long is closed (default 60 s).
    pub udp_idle_ns: u64,
    /// An echo flow idle this long is closed (default 30 s).
    pub icmp_idle_ns: u64,
    /// An established TCP connection idle this long is reset (default 2 h).
    pub tcp_idle_ns: u64,
    /// A TCP handshake not completed in this time is forgotten (default
    /// 30 s).
    pub tcp_handshake_ns: u64,
    /// Fragment reassembly limits.
    pub frag: FragLimits,
    /// The TUN's MTU, which the local TCP stack sizes segments by (default
    /// 65,535: big segments make the userspace stack cheap per byte).
    pub mtu: usize,
    /// Largest receive and send buffer of one local TCP connection, each
    /// way (default [`TCP_BUFFER`]); it is also the most the app's window
    /// opens.
    pub tcp_buffer: usize,
    /// DNS cache, name map and pending-query bounds.
    pub dns: DnsLimits,
    /// Budget for the local TCP buffers (default [`TCP_MEMORY`]).
    /// Buffers adapt: a new connection gets a sixteenth of what is left,
    /// between [`TCP_BUFFER_MIN`] and `tcp_buffer` each way, so the first
    /// connections run at full speed and a flood of them shrinks each
    /// one's share. Once the budget is spent, new connections still open,
    /// with [`TCP_BUFFER_MIN`] each way (small windows: pressure slows
    /// them, it does not refuse them; counted as `tcp_squeezed`). Only the
    /// flow table's bound (`max_flows`) refuses connections, so the most
    /// these buffers hold is `tcp_memory + max_flows × 2 × TCP_BUFFER_MIN`.
    pub tcp_memory: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            udp_idle_ns: 60_000_000_000,
            icmp_idle_ns: 30_000_000_000,
            tcp_idle_ns: 7_200_000_000_000,
            tcp_handshake_ns: 30_000_000_000,
            frag: FragLimits::default(),
            mtu: 65_535,
            tcp_buffer: TCP_BUFFER,
            tcp_memory: TCP_MEMORY,
            dns: DnsLimits::default(),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write this packet to the TUN.
    ToTun(Vec<u8>),
    /// Open an upstream UDP socket for the flow, connected to `dst`.
    UdpOpen {
        /// The flow.
        flow: FlowId,
        /// Where to.
        dst: SocketAddr,
    },
    /// Send a datagram on the flow's upstream socket.
    UdpSend {
        /// The flow.
        flow: FlowId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Send an echo request upstream (an unprivileged ICMP socket).
    EchoRequest {
        /// The flow.
        flow: FlowId,
        /// Where to.
        dst: IpAddr,
        /// Sequence number.
        seq: u16,
        /// Data.
        data: Vec<u8>,
    },
    /// Open an upstream TCP connection for the flow; answer with
    /// [`Engine::handle_tcp_connected`] or [`Engine::handle_tcp_upstream_failed`].
    TcpOpen {
        /// The flow.
        flow: FlowId,
        /// Where to.
        dst: SocketAddr,
    },
    /// Write bytes to the flow's upstream connection.
    TcpSend {
        /// The flow.
        flow: FlowId,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// The app finished sending: shut down the upstream connection's write
    /// side.
    TcpFin {
        /// The flow.
        flow: FlowId,
    },
    /// Close the flow's upstream socket.
    Close {
        /// The flow.
        flow: FlowId,
    },
    /// Resolve `name` (fully qualified) for type `rtype`; answer with
    /// [`Engine::handle_dns_answer`] and the same `query`.
    DnsQuery {
        /// The query's token.
        query: u64,
        /// The name.
        name: hickory_proto::rr::Name,
        /// The record type.
        rtype: hickory_proto::rr::RecordType,
    },
    /// A decision, for logs and the user.
    Event(Box<Event>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Blocked(BlockMode),
}

#[derive(Debug)]
struct FlowState {
    id: FlowId,
    icmp: bool,
    client: SocketAddr,
    server: SocketAddr,
    /// Echo identifier the app used (ICMP).
    ident: u16,
    sniffer: Sniffer,
    leaks: Vec<LeakHit>,
    scan: ScanState,
    state: State,
    /// Names the server's address was learned with.
    ctx: FlowCtx,
    last_ns: u64,
}

/// What a flow is judged with beside its packets: names its address was
/// learned with, and the app that owns it.
#[derive(Debug, Clone, Default)]
pub struct FlowCtx {
    /// Names (DNS answers, earlier flows).
    pub names: Vec<String>,
    /// The owning app, from [`Engine::set_app_lookup`].
    pub app: Option<String>,
}

/// Finds the app that owns a flow: (transport, app side, server side).
pub type AppLookup = Box<dyn FnMut(PTransport, SocketAddr, SocketAddr) -> Option<String> + Send>;

/// A UDP or echo flow's key: (echo?, app side, server side).
type DatagramKey = (bool, SocketAddr, SocketAddr);
/// A TCP connection's key: (app side, server side).
type TcpKey = (SocketAddr, SocketAddr);

/// Where a DNS answer goes.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// A UDP datagram from `server` to `client`.
    Udp {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// The local TCP connection with this key.
    Tcp((SocketAddr, SocketAddr)),
}

/// Counters (monotonic).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineCounters {
    /// Packets from the TUN.
    pub tun_packets: u64,
    /// Packets dropped without a flow, by reason.
    pub drops: HashMap<DropReason, u64>,
    /// Flows opened upstream.
    pub opened: u64,
    /// Flows blocked at their first packet.
    pub blocked: u64,
    /// Open flows cut by later evidence.
    pub cut: u64,
    /// New flows refused because the table was full.
    pub refused: u64,
    /// TCP connections given the smallest buffers because the TCP memory
    /// budget was spent (they run with small windows; none is refused).
    pub tcp_squeezed: u64,
    /// DNS queries answered (from the cache, the resolver, or blocked).
    pub dns_queries: u64,
    /// DNS queries whose name was blocked.
    pub dns_blocked: u64,
    /// DNS answers with addresses removed.
    pub dns_filtered: u64,
}

/// The engine.
pub struct Engine {
    cfg: EngineConfig,
    intel: Intel,
    policy: Arc<PolicyHandle>,
    leak: Arc<arc_swap::ArcSwapOption<LeakDetector>>,
    flows: HashMap<DatagramKey, FlowState>,
    ids: HashMap<FlowId, DatagramKey>,
    next_id: FlowId,
    frags: Reassembler,
    out: VecDeque<Output>,
    hits: Vec<LeakHit>,
    device: super::stack::QueueDevice,
    iface: smoltcp::iface::Interface,
    /// Each connection's own socket set, holding its one socket: the stack
    /// is polled per connection, so a packet costs the same whatever the
    /// number of connections. A connection dropped silently has none.
    socks: HashMap<TcpKey, smoltcp::iface::SocketSet<'static>>,
    /// An empty socket set, for segments of no connection (the stack
    /// answers them with an RST).
    no_sockets: smoltcp::iface::SocketSet<'static>,
    /// The stack's timers: (when, connection), one entry per connection
    /// that has one (see [`TcpFlow::timer`]).
    tcp_timers: std::collections::BTreeSet<(u64, TcpKey)>,
    tcp: HashMap<(SocketAddr, SocketAddr), TcpFlow>,
    tcp_ids: HashMap<FlowId, (SocketAddr, SocketAddr)>,
    /// No flow deadline (idle, sniffing) falls before this: a lower bound,
    /// so that [`Engine::poll_timeout`] need not look at every flow.
    wake_ns: Option<u64>,
    /// Bytes of local TCP buffers held by all connections.
    tcp_memory: usize,
    /// Resolver answers, as received.
    pub dns_cache: dns::Cache,
    /// Address → names, from DNS answers and flows.
    pub names: dns::NameMap,
    /// Queries sent to the resolver: the question, where the answer goes,
    /// and when SERVFAIL is due if none came.
    dns_pending: HashMap<u64, (Question, Reply, u64)>,
    apps: Option<AppLookup>,
    next_query: u64,
    /// The policy generation the open flows were judged with.
    policy_gen: u64,
    /// Counters.
    pub counters: EngineCounters,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("flows", &self.flows.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine judging flows with `policy` (which may be replaced while
    /// running) and `intel`, looking for `leak` identifiers.
    pub fn new(
        cfg: EngineConfig,
        intel: Intel,
        policy: Arc<PolicyHandle>,
        leak: Option<LeakDetector>,
    ) -> Self {
        let mut device = super::stack::QueueDevice::new(cfg.mtu);
        let iface = super::stack::any_ip_interface(&mut device, 0);
        Self {
            device,
            iface,
            socks: HashMap::new(),
            no_sockets: super::stack::sockets(),
            tcp_timers: std::collections::BTreeSet::new(),
            tcp: HashMap::new(),
            tcp_ids: HashMap::new(),
            wake_ns: None,
            tcp_memory: 0,
            dns_cache: dns::Cache::default(),
            names: dns::NameMap::default(),
            dns_pending: HashMap::new(),
            apps: None,
            next_query: 1,
            policy_gen: policy.generation(),
            frags: Reassembler::new(cfg.frag),
            cfg,
            intel,
            policy,
            leak: Arc::new(arc_swap::ArcSwapOption::from(leak.map(Arc::new))),
            flows: HashMap::new(),
            ids: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
            hits: Vec::new(),
            counters: EngineCounters::default(),
        }
    }

    /// The identifiers watched for leaks, replaceable while the engine
    /// runs (from another thread too): `store(Some(..))` to watch new ones,
    /// `store(None)` to stop. Flows judged later see the new set.
    pub fn identifiers(&self) -> Arc<arc_swap::ArcSwapOption<LeakDetector>> {
        Arc::clone(&self.leak)
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Flows in the table (UDP, echo and TCP).
    pub fn flow_count(&self) -> usize {
        self.flows.len() + self.tcp.len()
    }

    /// When [`Engine::handle_timeout`] should next be called. Cheap: flow
    /// deadlines are kept as one lower bound, refreshed at each sweep.
    pub fn poll_timeout(&mut self) -> Option<u64> {
        if self.policy.generation() != self.policy_gen {
            // New rules: the open flows are judged again at once.
            return Some(0);
        }
        let stack = self.tcp_timers.first().map(|(t, _)| *t);
        [self.wake_ns, stack].into_iter().flatten().min()
    }

    /// Buffer size (each way) for a new TCP connection: a sixteenth of the
    /// budget left, within [`TCP_BUFFER_MIN`]..=`tcp_buffer`. Past the
    /// budget it is the minimum: the connection is served with a small
    /// window, never refused.
    fn tcp_buffer_size(&self) -> usize {
        let left = self.cfg.tcp_memory.saturating_sub(self.tcp_memory);
        (left / 16).clamp(TCP_BUFFER_MIN, self.cfg.tcp_buffer.max(TCP_BUFFER_MIN)) / 1024 * 1024
    }

    /// Bytes of local TCP buffers held now: at most
    /// [`EngineConfig::tcp_memory`] plus 2 × [`TCP_BUFFER_MIN`] for each
    /// connection opened past it.
    pub fn tcp_memory(&self) -> usize {
        self.tcp_memory
    }

    /// Lowers the flow-deadline bound to `t`.
    fn wake_at(&mut self, t: u64) {
        self.wake_ns = Some(self.wake_ns.map_or(t, |w| w.min(t)));
    }

    /// The earliest flow deadline, looking at every flow.
    fn next_deadline(&self) -> Option<u64> {
        let (udp, icmp) = (self.cfg.udp_idle_ns, self.cfg.icmp_idle_ns);
        let idle = self
            .flows
            .values()
            .map(|f| f.last_ns + if f.icmp { icmp } else { udp })
            .min();
        let sniff = self
            .tcp
            .values()
            .filter_map(|f| match (f.phase, f.first_bytes) {
                (TcpPhase::Sniffing { since_ns: Some(t) }, _)
                | (_, FirstBytes::Reading { since_ns: t }) => Some(t + TCP_SNIFF_NS),
                _ => None,
            })
            .min();
        let tcp = self
            .tcp
            .values()
            .map(|f| f.last_ns + tcp_idle_limit(&self.cfg, f))
            .min();
        let dns = self.dns_pending.values().map(|p| p.2).min();
        [idle, sniff, tcp, dns].into_iter().flatten().min()
    }

    fn drop_reason(&mut self, r: DropReason) {
        *self.counters.drops.entry(r).or_insert(0) += 1;
    }

    /// Closes idle flows, judges TCP connections whose sniffing time is up,
    /// and lets the TCP stack retransmit.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.follow_policy(now_ns);
        self.frags.expire(now_ns);
        // The connections whose stack timers (delayed ACKs,
        // retransmissions) are due, and only those.
        while let Some(&(t, key)) = self.tcp_timers.first()
            && t <= now_ns
        {
            self.tcp_timers.pop_first();
            if let Some(f) = self.tcp.get_mut(&key) {
                f.timer = None;
            }
            self.poll_stack(now_ns, Some(key));
        }
        if self.wake_ns.is_none_or(|w| now_ns < w) {
            return;
        }
        self.poll_stack(now_ns, None);
        // Queries the resolver did not answer in time: SERVFAIL.
        let late: Vec<u64> = self
            .dns_pending
            .iter()
            .filter(|(_, p)| p.2 <= now_ns)
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            self.drop_reason(DropReason::DnsResolverTimeout);
            self.handle_dns_answer(t, None, now_ns);
        }
        let (udp_idle, tcp_idle, handshake) = (
            self.cfg.udp_idle_ns,
            self.cfg.tcp_idle_ns,
            self.cfg.tcp_handshake_ns,
        );
        let mut stale = Vec::new();
        for (k, f) in &self.tcp {
            let limit = if f.silent {
                udp_idle
            } else if matches!(f.phase, TcpPhase::Sniffing { since_ns: None }) {
                handshake
            } else {
                tcp_idle
            };
            if now_ns.saturating_sub(f.last_ns) >= limit {
                stale.push(*k);
            }
        }
        for k in stale {
            let Some((f, set)) = self.remove_tcp(&k) else {
                continue;
            };
            if let Some(mut set) = set {
                // Reset the app's side; the RST leaves at this poll.
                set.get_mut::<smoltcp::socket::tcp::Socket>(f.handle)
                    .abort();
                self.iface
                    .poll(super::stack::instant(now_ns), &mut self.device, &mut set);
                if matches!(f.phase, TcpPhase::Open | TcpPhase::Connecting) {
                    self.out.push_back(Output::Close { flow: f.id });
                }
            }
        }
        while let Some(p) = self.device.tx.pop_front() {
            self.out.push_back(Output::ToTun(p));
        }
        let (udp, icmp) = (self.cfg.udp_idle_ns, self.cfg.icmp_idle_ns);
        let idle: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| now_ns.saturating_sub(f.last_ns) >= if f.icmp { icmp } else { udp })
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            if let Some(f) = self.flows.remove(&k) {
                self.ids.remove(&f.id);
                if f.state == State::Open {
                    self.out.push_back(Output::Close { flow: f.id });
                }
                let ev = f.event(EventKind::Closed, None);
                self.out.push_back(Output::Event(Box::new(ev)));
            }
        }
        self.wake_ns = self.next_deadline();
    }

    /// A packet the app sent into the TUN.
    pub fn handle_tun(&mut self, packet: &[u8], now_ns: u64) {
        self.follow_policy(now_ns);
        self.counters.tun_packets += 1;
        let p = match parse_ip(packet) {
            Ok(p) => p,
            Err(d) => return self.drop_reason(DropReason::Packet(d)),
        };
        if p.fragment.is_some() {
            match self.frags.push(&p, now_ns) {
                FragResult::Complete(whole) => {
                    self.counters.tun_packets -= 1;
                    return self.handle_tun(&whole, now_ns);
                }
                FragResult::Pending => return,
                FragResult::Dropped(why) => return self.drop_reason(DropReason::Fragment(why)),
            }
        }
        if reply::is_group(p.dst) || p.dst.is_unspecified() {
            // Relayed through an upstream socket, a broadcast or multicast
            // (mDNS, SSDP, ...) would land on the real network's link, and
            // no one server answers it: it stays in the tunnel.
            return self.drop_reason(DropReason::BroadcastOrMulticast);
        }
        match p.transport {
            Transport::Udp {
                sport,
                dport,
                payload,
            } => {
                let client = SocketAddr::new(p.src, sport);
                let server = SocketAddr::new(p.dst, dport);
                if dport == 53 {
                    // Every DNS query is answered here, whatever its address.
                    return self.on_dns(payload, Reply::Udp { client, server }, now_ns);
                }
                self.on_datagram(packet, false, client, server, 0, payload, now_ns);
            }
            Transport::Icmp {
                kind,
                echo_id: Some(ident),
                payload,
                ..
            } if kind == icmp_type::ECHO_REQUEST_V4 || kind == icmp_type::ECHO_REQUEST_V6 => {
                let seq = payload
                    .get(2..4)
                    .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
                let data = payload.get(4..).unwrap_or(&[]);
                let client = SocketAddr::new(p.src, ident);
                let server = SocketAddr::new(p.dst, 0);
                self.on_datagram(packet, true, client, server, seq, data, now_ns);
            }
            Transport::Icmp { .. } => self.drop_reason(DropReason::IcmpNotEcho),
            Transport::Tcp {
                sport,
                dport,
                flags,
                ..
            } => {
                let client = SocketAddr::new(p.src, sport);
                let server = SocketAddr::new(p.dst, dport);
                self.on_tcp_packet(packet, client, server, flags, now_ns);
            }
            Transport::Fragment(_) => {
                self.drop_reason(DropReason::Packet(crate::wire::packet::Drop::Malformed))
            }
            Transport::Other { .. } => self.drop_reason(DropReason::OtherProtocol),
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one internal call site per transport"
    )]
    fn on_datagram(
        &mut self,
        raw: &[u8],
        icmp: bool,
        client: SocketAddr,
        server: SocketAddr,
        seq: u16,
        payload: &[u8],
        now_ns: u64,
    ) {
        let key = (icmp, client, server);
        let new = !self.flows.contains_key(&key);
        if new {
            // The bound covers every flow, TCP included.
            if self.flow_count() >= self.cfg.max_flows {
                self.counters.refused += 1;
                // Refuse like a block: the app learns at once.
                if let Some(r) = reply::unreachable(raw) {
                    self.out.push_back(Output::ToTun(r));
                }
                return;
            }
            let id = self.next_id;
            self.next_id += 1;
            let ctx = self.flow_ctx(PTransport::Udp, icmp, client, server, now_ns);
            self.ids.insert(id, key);
            self.flows.insert(
                key,
                FlowState {
                    id,
                    icmp,
                    client,
                    server,
                    ident: client.port(),
                    sniffer: Sniffer::new(),
                    leaks: Vec::new(),
                    scan: ScanState::default(),
                    state: State::Open,
                    ctx,
                    last_ns: now_ns,
                },
            );
            let idle = if icmp {
                self.cfg.icmp_idle_ns
            } else {
                self.cfg.udp_idle_ns
            };
            self.wake_at(now_ns + idle);
        }
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        f.last_ns = now_ns;
        let carrier = if icmp {
            Carrier::IcmpEcho
        } else {
            Carrier::Udp
        };
        f.sniffer.on_payload(
            carrier,
            Dir::Up,
            (client.port(), server.port()),
            payload,
            now_ns,
        );
        let new_leak = super::scan_leaks(
            self.leak.load().as_deref(),
            f.sniffer.encrypted,
            &mut f.scan,
            payload,
            &mut self.hits,
            &mut f.leaks,
        );
        if let State::Blocked(mode) = f.state {
            // Still blocked: nothing leaves; a reject answers again.
            if mode == BlockMode::Reject
                && let Some(r) = reply::unreachable(raw)
            {
                self.out.push_back(Output::ToTun(r));
            }
            return;
        }
        // Judge at the first datagram, and again on new evidence.
        if new || new_leak || !f.sniffer.is_done() || self.needs_rejudge(&key) {
            let policy = self.policy.current();
            let f = &self.flows[&key];
            if let Some(n) = &f.sniffer.server_name {
                // QUIC, SD-RTN and other names feed the same map as DNS.
                let until = now_ns + dns::SEEN_NAME_TTL_NS;
                self.names
                    .learn(f.server.ip(), n, until, self.cfg.dns.names);
            }
            let verdict = judge(&policy, &self.intel, f);
            if let Action::Block(mode) = verdict.action {
                let kind = if new {
                    EventKind::Blocked
                } else {
                    EventKind::Cut
                };
                let ev = self.flows[&key].event(kind, Some(&verdict));
                let id = self.flows[&key].id;
                if let Some(f) = self.flows.get_mut(&key) {
                    f.state = State::Blocked(mode);
                }
                if new {
                    self.counters.blocked += 1;
                } else {
                    self.counters.cut += 1;
                    self.out.push_back(Output::Close { flow: id });
                }
                if mode == BlockMode::Reject
                    && let Some(r) = reply::unreachable(raw)
                {
                    self.out.push_back(Output::ToTun(r));
                }
                self.out.push_back(Output::Event(Box::new(ev)));
                return;
            }
            if new {
                let ev = self.flows[&key].event(EventKind::Opened, Some(&verdict));
                self.counters.opened += 1;
                self.out.push_back(Output::Event(Box::new(ev)));
                if !icmp {
                    self.out.push_back(Output::UdpOpen {
                        flow: self.flows[&key].id,
                        dst: server,
                    });
                }
            }
        }
        let id = self.flows[&key].id;
        if icmp {
            self.out.push_back(Output::EchoRequest {
                flow: id,
                dst: server.ip(),
                seq,
                data: payload.to_vec(),
            });
        } else {
            self.out.push_back(Output::UdpSend {
                flow: id,
                payload: payload.to_vec(),
            });
        }
    }

    /// Judges every open flow again when the rules were replaced since they
    /// were judged (`geowall reload`, a bundle pushed by the phone
    /// library): those the new rules block are cut, with an event naming
    /// the rule. Called at every packet and timeout; costs one atomic load
    /// when nothing changed.
    fn follow_policy(&mut self, now_ns: u64) {
        let g = self.policy.generation();
        if g == self.policy_gen {
            return;
        }
        self.policy_gen = g;
        let open: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| f.state == State::Open)
            .map(|(k, _)| *k)
            .collect();
        for k in open {
            self.rejudge_datagram_flow(k);
        }
        let mut any = false;
        for f in self.tcp.values_mut() {
            if matches!(f.phase, TcpPhase::Connecting | TcpPhase::Open) && !f.silent {
                f.rejudge = true;
                any = true;
            }
        }
        if any {
            self.poll_stack(now_ns, None);
        }
    }

    /// Judges an open UDP or echo flow again (new rules, a name learned for
    /// its server); cuts it if it is now blocked.
    fn rejudge_datagram_flow(&mut self, key: DatagramKey) {
        let policy = self.policy.current();
        let Some(f) = self.flows.get(&key).filter(|f| f.state == State::Open) else {
            return;
        };
        let v = judge(&policy, &self.intel, f);
        let Action::Block(mode) = v.action else {
            return;
        };
        let ev = f.event(EventKind::Cut, Some(&v));
        let id = f.id;
        if let Some(f) = self.flows.get_mut(&key) {
            f.state = State::Blocked(mode);
        }
        self.counters.cut += 1;
        self.out.push_back(Output::Close { flow: id });
        self.out.push_back(Output::Event(Box::new(ev)));
    }

    /// A DNS answer tied `names` to `ip` after flows to it were opened:
    /// those flows carry the names from now on and are judged again.
    fn names_learned(&mut self, ip: IpAddr, names: &[String], now_ns: u64) {
        let add = |ctx: &mut FlowCtx| {
            let mut changed = false;
            for n in names {
                if !ctx.names.iter().any(|m| m == n) {
                    ctx.names.push(n.clone());
                    changed = true;
                }
            }
            changed
        };
        let mut udp = Vec::new();
        for (k, f) in &mut self.flows {
            if f.server.ip() == ip && f.state == State::Open && add(&mut f.ctx) {
                udp.push(*k);
            }
        }
        for k in udp {
            self.rejudge_datagram_flow(k);
        }
        let mut tcp = Vec::new();
        for (k, f) in &mut self.tcp {
            // Flows still sniffing take the names into their first verdict.
            if f.server.ip() == ip
                && !f.silent
                && f.phase != TcpPhase::Blocked
                && add(&mut f.ctx)
                && matches!(f.phase, TcpPhase::Connecting | TcpPhase::Open)
            {
                f.rejudge = true;
                tcp.push(*k);
            }
        }
        for k in tcp {
            self.poll_stack(now_ns, Some(k));
        }
    }

    /// STUN flows can turn out to carry media after they are decided:
    /// judge them again on every packet.
    fn needs_rejudge(&self, key: &(bool, SocketAddr, SocketAddr)) -> bool {
        self.flows
            .get(key)
            .is_some_and(|f| f.sniffer.protocol == Some(crate::classify::Protocol::Stun))
    }

    /// The open UDP or echo flow `flow`, its idle clock refreshed; `None`
    /// (counted when the id is unknown) for blocked or closed flows.
    fn open_flow(&mut self, flow: FlowId, now_ns: u64) -> Option<&mut FlowState> {
        let Some(key) = self.ids.get(&flow).copied() else {
            self.drop_reason(DropReason::UnknownFlow);
            return None;
        };
        let f = self
            .flows
            .get_mut(&key)
            .filter(|f| f.state == State::Open)?;
        f.last_ns = now_ns;
        Some(f)
    }

    /// A datagram that arrived on the flow's upstream socket.
    pub fn handle_udp_from_upstream(&mut self, flow: FlowId, payload: &[u8], now_ns: u64) {
        let Some(f) = self.open_flow(flow, now_ns) else {
            return;
        };
        f.sniffer.on_payload(
            Carrier::Udp,
            Dir::Down,
            (f.client.port(), f.server.port()),
            payload,
            now_ns,
        );
        if let Some(pkt) = reply::udp_packet(f.server, f.client, payload) {
            self.out.push_back(Output::ToTun(pkt));
        }
    }

    /// An echo reply that arrived upstream for the flow.
    pub fn handle_echo_reply(&mut self, flow: FlowId, seq: u16, data: &[u8], now_ns: u64) {
        let Some(f) = self.open_flow(flow, now_ns) else {
            return;
        };
        if let Some(pkt) = reply::echo_reply(f.server.ip(), f.client.ip(), f.ident, seq, data) {
            self.out.push_back(Output::ToTun(pkt));
        }
    }

    fn on_tcp_packet(
        &mut self,
        raw: &[u8],
        client: SocketAddr,
        server: SocketAddr,
        flags: u8,
        now_ns: u64,
    ) {
        let key = (client, server);
        if let Some(f) = self.tcp.get_mut(&key) {
            f.last_ns = now_ns;
            if f.silent {
                // A silently dropped connection: nothing back, nothing on.
                return;
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
            let policy = self.policy.current();
            let is_dns = server.port() == 53;
            let sniff = policy.needs_payload() && !is_dns;
            let ctx = self.flow_ctx(PTransport::Tcp, false, client, server, now_ns);
            let id = self.next_id;
            self.next_id += 1;
            if !is_dns {
                // Judge at the SYN when the address alone decides: every
                // time for a policy with no payload rules, and for a block
                // that no payload could lift (so the app fails over at
                // once instead of after its first write).
                let sn = Sniffer::new();
                let v = if sniff {
                    let names = fact_names(&sn, &ctx);
                    let facts = facts(PTransport::Tcp, server, &sn, &[], &ctx, &names);
                    policy.settled_block(&self.intel, &facts)
                } else {
                    Some(judge_parts(
                        &policy,
                        &self.intel,
                        PTransport::Tcp,
                        server,
                        &sn,
                        &[],
                        &ctx,
                    ))
                };
                if let Some(v) = v
                    && let Action::Block(mode) = v.action
                {
                    self.counters.blocked += 1;
                    let view = FlowView {
                        id,
                        proto: FlowProto::Tcp,
                        client,
                        server,
                        sniffer: &sn,
                        leaks: &[],
                        ctx: &ctx,
                    };
                    let ev = Event::of_flow(EventKind::Blocked, view, Some(&v));
                    if mode == BlockMode::Reject
                        && let Some(r) = reply::tcp_reset(raw)
                    {
                        self.out.push_back(Output::ToTun(r));
                    }
                    self.out.push_back(Output::Event(Box::new(ev)));
                    return;
                }
            }
            let each = self.tcp_buffer_size();
            if self.cfg.tcp_memory.saturating_sub(self.tcp_memory) < 2 * each {
                self.counters.tcp_squeezed += 1;
            }
            let mut sock = smoltcp::socket::tcp::Socket::new(
                smoltcp::socket::tcp::SocketBuffer::new(vec![0; each]),
                smoltcp::socket::tcp::SocketBuffer::new(vec![0; each]),
            );
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
            let mut set = super::stack::sockets();
            let handle = set.add(sock);
            self.socks.insert(key, set);
            self.tcp_memory += 2 * each;
            let phase = if is_dns {
                TcpPhase::Dns
            } else if sniff {
                TcpPhase::Sniffing { since_ns: None }
            } else {
                TcpPhase::Connecting
            };
            let f = TcpFlow {
                id,
                client,
                server,
                handle,
                timer: None,
                sniffer: Sniffer::new(),
                leaks: Vec::new(),
                scan: ScanState::default(),
                phase,
                pending: Vec::new(),
                first_bytes: FirstBytes::Judged,
                rejudge: false,
                app_fin_sent: false,
                paused: false,
                buffers: 2 * each,
                ctx,
                silent: false,
                last_ns: now_ns,
            };
            self.wake_at(now_ns + self.cfg.tcp_handshake_ns.min(self.cfg.tcp_idle_ns));
            if !sniff && !is_dns {
                self.counters.opened += 1;
                let ev = f.event(EventKind::Opened, None);
                self.out.push_back(Output::Event(Box::new(ev)));
                self.out.push_back(Output::TcpOpen {
                    flow: id,
                    dst: server,
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
    fn poll_stack(&mut self, now_ns: u64, only: Option<(SocketAddr, SocketAddr)>) {
        self.poll_stack_with(now_ns, only, None);
    }

    /// [`Engine::poll_stack`], first handing the stack `packet` (borrowed,
    /// not copied).
    fn poll_stack_with(
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
    fn poll_one(&mut self, now_ns: u64, key: TcpKey, packet: Option<&[u8]>) {
        let t = super::stack::instant(now_ns);
        let mut dev = super::stack::OneShot {
            rx: packet,
            tx: &mut self.device.tx,
            mtu: self.device.mtu,
        };
        let set = self.socks.get_mut(&key).unwrap_or(&mut self.no_sockets);
        self.iface.poll(t, &mut dev, set);
        if !self.tcp.contains_key(&key) {
            return;
        }
        self.service_tcp(now_ns, key);
        let at = match self.socks.get_mut(&key) {
            Some(set) => {
                self.iface.poll(t, &mut self.device, set);
                self.iface
                    .poll_at(t, set)
                    .map(|i| u64::try_from(i.total_micros()).unwrap_or(0) * 1_000)
            }
            None => None,
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

    /// Forgets a connection: its flow, id, socket set, timer and buffers.
    /// Returns them (the set, if it still had one).
    fn remove_tcp(
        &mut self,
        key: &TcpKey,
    ) -> Option<(TcpFlow, Option<smoltcp::iface::SocketSet<'static>>)> {
        let f = self.tcp.remove(key)?;
        self.tcp_ids.remove(&f.id);
        if let Some(t) = f.timer {
            self.tcp_timers.remove(&(t, *key));
        }
        self.tcp_memory -= f.buffers;
        Some((f, self.socks.remove(key)))
    }

    fn service_tcp(&mut self, now_ns: u64, key: (SocketAddr, SocketAddr)) {
        use smoltcp::socket::tcp::{Socket, State as S};
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
            let sock = set.get_mut::<Socket>(f.handle);
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
            let holding = f.first_bytes != FirstBytes::Judged;
            loop {
                let room = match f.phase {
                    TcpPhase::Open if f.paused => 0,
                    TcpPhase::Open | TcpPhase::Connecting if holding => TCP_SNIFF_BYTES
                        .saturating_sub(f.pending.len())
                        .min(READ_CHUNK),
                    TcpPhase::Open => READ_CHUNK,
                    TcpPhase::Sniffing { .. } | TcpPhase::Connecting => TCP_SNIFF_BYTES
                        .saturating_sub(f.pending.len())
                        .min(READ_CHUNK),
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
                f.sniffer.on_payload(
                    Carrier::Tcp,
                    Dir::Up,
                    (f.client.port(), f.server.port()),
                    &data,
                    now_ns,
                );
                new_leak |= super::scan_leaks(
                    self.leak.load().as_deref(),
                    f.sniffer.encrypted,
                    &mut f.scan,
                    &data,
                    &mut self.hits,
                    &mut f.leaks,
                );
                if f.first_bytes == FirstBytes::Awaited {
                    f.first_bytes = FirstBytes::Reading { since_ns: now_ns };
                    let t = now_ns + TCP_SNIFF_NS;
                    self.wake_ns = Some(self.wake_ns.map_or(t, |w| w.min(t)));
                }
                if f.phase == TcpPhase::Open && !new_leak && !holding {
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
            let mut aborted_now = false;
            let mut drop_silently = false;
            // Judge when the first bytes are in, or the time is up.
            let first_in = |t: u64| {
                f.sniffer.is_done()
                    || f.pending.len() >= TCP_SNIFF_BYTES
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
                TcpPhase::Connecting | TcpPhase::Open => new_leak || late_in || f.rejudge,
                _ => false,
            };
            f.rejudge = false;
            if due {
                if let Some(n) = &f.sniffer.server_name {
                    // TLS, QUIC and HTTP names feed the same map as DNS.
                    let until = now_ns + dns::SEEN_NAME_TTL_NS;
                    self.names
                        .learn(f.server.ip(), n, until, self.cfg.dns.names);
                }
                let policy = self.policy.current();
                let v = judge_parts(
                    &policy,
                    &self.intel,
                    PTransport::Tcp,
                    f.server,
                    &f.sniffer,
                    &f.leaks,
                    &f.ctx,
                );
                let was = f.phase;
                if let Action::Block(mode) = v.action {
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
                    let first = matches!(was, TcpPhase::Sniffing { .. });
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
                    self.out.push_back(Output::Event(Box::new(ev)));
                } else if matches!(was, TcpPhase::Sniffing { .. }) {
                    f.phase = TcpPhase::Connecting;
                    if f.pending.is_empty() && !f.sniffer.is_done() {
                        // The timer opened it: the app's first bytes, when
                        // they come, are still judged before they leave.
                        f.first_bytes = FirstBytes::Awaited;
                    }
                    self.counters.opened += 1;
                    let ev = f.event(EventKind::Opened, Some(&v));
                    self.out.push_back(Output::Event(Box::new(ev)));
                    self.out.push_back(Output::TcpOpen {
                        flow: f.id,
                        dst: f.server,
                    });
                } else {
                    if late_in {
                        f.first_bytes = FirstBytes::Judged;
                    }
                    if was == TcpPhase::Open
                        && f.first_bytes == FirstBytes::Judged
                        && !f.pending.is_empty()
                    {
                        self.out.push_back(Output::TcpSend {
                            flow: f.id,
                            payload: std::mem::take(&mut f.pending),
                        });
                    }
                }
            }
            if drop_silently {
                f.silent = true;
                self.socks.remove(&key);
                self.tcp_memory -= std::mem::take(&mut f.buffers);
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
                let ev = f.event(EventKind::Closed, None);
                self.remove_tcp(&key);
                if matches!(phase, TcpPhase::Open | TcpPhase::Connecting) {
                    self.out.push_back(Output::Close { flow: id });
                }
                self.out.push_back(Output::Event(Box::new(ev)));
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
            if f.first_bytes == FirstBytes::Judged && !f.pending.is_empty() {
                self.out.push_back(Output::TcpSend {
                    flow,
                    payload: std::mem::take(&mut f.pending),
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
        let sock = set.get_mut::<smoltcp::socket::tcp::Socket>(f.handle);
        let n = sock.send_slice(data).unwrap_or(0);
        f.sniffer.on_payload(
            Carrier::Tcp,
            Dir::Down,
            (f.client.port(), f.server.port()),
            &data[..n],
            now_ns,
        );
        self.poll_stack(now_ns, Some(key));
        n
    }

    /// How many bytes [`Engine::handle_tcp_from_upstream`] would take now
    /// for the flow (room in its local send buffer); 0 for a flow that is
    /// not open.
    pub fn tcp_send_room(&self, flow: FlowId) -> usize {
        let Some(k) = self.tcp_ids.get(&flow) else {
            return 0;
        };
        self.tcp
            .get(k)
            .filter(|f| f.phase == TcpPhase::Open && !f.silent)
            .zip(self.socks.get(k))
            .map_or(0, |(f, set)| {
                let s = set.get::<smoltcp::socket::tcp::Socket>(f.handle);
                s.send_capacity() - s.send_queue()
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

    /// Applies `op` to the flow's local socket (if it still has one), then
    /// runs the stack.
    fn with_app_socket(
        &mut self,
        flow: FlowId,
        now_ns: u64,
        op: fn(&mut smoltcp::socket::tcp::Socket<'static>),
    ) {
        let key = self.tcp_ids.get(&flow).copied();
        if let Some(key) = key
            && let Some(f) = self.tcp.get(&key)
            && let Some(set) = self.socks.get_mut(&key)
        {
            op(set.get_mut::<smoltcp::socket::tcp::Socket>(f.handle));
        }
        self.poll_stack(now_ns, key);
    }

    /// How to find the app that owns a new flow (the platform's answer:
    /// the kernel's socket tables on Linux, `getConnectionOwnerUid` on
    /// Android). Called once per flow, before it is judged.
    pub fn set_app_lookup(&mut self, f: AppLookup) {
        self.apps = Some(f);
    }

    fn flow_ctx(
        &mut self,
        t: PTransport,
        icmp: bool,
        client: SocketAddr,
        server: SocketAddr,
        now_ns: u64,
    ) -> FlowCtx {
        let t = if icmp { PTransport::Icmp } else { t };
        FlowCtx {
            names: self.learned_names(server.ip(), now_ns),
            app: self.apps.as_mut().and_then(|f| f(t, client, server)),
        }
    }

    /// Names the address `ip` was learned with, still valid at `now_ns`.
    fn learned_names(&mut self, ip: IpAddr, now_ns: u64) -> Vec<String> {
        self.names.names(ip, now_ns).map(str::to_owned).collect()
    }

    /// A DNS query from the app: answered at once when blocked, cached or
    /// malformed; otherwise sent to the resolver.
    fn on_dns(&mut self, payload: &[u8], reply: Reply, now_ns: u64) {
        self.counters.dns_queries += 1;
        let q = match dns::parse_query(payload) {
            Ok(q) => q,
            Err(Refusal::Unreadable) => return self.drop_reason(DropReason::DnsUnreadable),
            Err(Refusal::Answer(id, rcode)) => {
                self.drop_reason(DropReason::DnsMalformed);
                let a = dns::error_answer(id, rcode, None);
                return self.dns_reply(reply, &a, now_ns);
            }
        };
        if let Some((rcode, records, age)) = dns::cached(&mut self.dns_cache, &q, now_ns) {
            return self.dns_answer(&q, reply, rcode, &records, age, now_ns);
        }
        if self.dns_pending.len() >= self.cfg.dns.pending {
            self.drop_reason(DropReason::DnsPendingFull);
            let a = dns::error_answer(q.id, hickory_proto::op::ResponseCode::ServFail, Some(&q));
            return self.dns_reply(reply, &a, now_ns);
        }
        // A name blocked by itself needs no resolver.
        let policy = self.policy.current();
        let name = q.name_text();
        if let Some(rule) = policy.dns_blocks_name(&self.intel, &[name.as_str()], None) {
            let how = rule.dns_answer.unwrap_or(policy.dns.blocked);
            let rule = rule.name.clone();
            drop(policy);
            let a = dns::block_answer(&q, how, matches!(reply, Reply::Tcp(_)));
            self.dns_event(
                EventKind::DnsBlocked,
                &q,
                vec![name],
                Some(rule),
                None,
                None,
            );
            self.counters.dns_blocked += 1;
            return self.dns_reply(reply, &a, now_ns);
        }
        let token = self.next_query;
        self.next_query += 1;
        self.out.push_back(Output::DnsQuery {
            query: token,
            name: q.name.clone(),
            rtype: q.query.query_type(),
        });
        let due = now_ns.saturating_add(self.cfg.dns.answer_within_ns);
        self.dns_pending.insert(token, (q, reply, due));
        self.wake_at(due);
    }

    /// The resolver's answer to query `query` (`None`: it failed; the app
    /// gets SERVFAIL).
    pub fn handle_dns_answer(&mut self, query: u64, answer: Option<Resolved>, now_ns: u64) {
        let Some((q, reply, _)) = self.dns_pending.remove(&query) else {
            return self.drop_reason(DropReason::DnsUnknownQuery);
        };
        match answer {
            Some(r) => {
                dns::store(&mut self.dns_cache, &q, &r, now_ns, &self.cfg.dns);
                self.dns_answer(&q, reply, r.rcode, &r.records, 0, now_ns);
            }
            None => {
                let a =
                    dns::error_answer(q.id, hickory_proto::op::ResponseCode::ServFail, Some(&q));
                self.dns_reply(reply, &a, now_ns);
            }
        }
    }

    /// Queries waiting for the resolver.
    pub fn dns_pending(&self) -> usize {
        self.dns_pending.len()
    }

    fn dns_answer(
        &mut self,
        q: &Question,
        reply: Reply,
        rcode: hickory_proto::op::ResponseCode,
        records: &[hickory_proto::rr::Record],
        age: u32,
        now_ns: u64,
    ) {
        let policy = self.policy.current();
        let tcp = matches!(reply, Reply::Tcp(_));
        let (bytes, out) = dns::answer(q, rcode, records, age, &policy, &self.intel, None, tcp);
        drop(policy);
        // Every address of the answer carries its names, also those removed
        // from it or the whole answer blocked: the app may know them
        // anyway (its own cache, a hard-coded list), and the name is the
        // evidence of whose service it is. An audit of the same answer
        // learns the same ([`dns::learn_answer`]).
        let addrs: Vec<IpAddr> = records
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::A(a) => Some(IpAddr::V4(a.0)),
                hickory_proto::rr::RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        let ttl = records
            .iter()
            .map(|r| r.ttl.saturating_sub(age))
            .min()
            .unwrap_or(0)
            .max(dns::MIN_TTL);
        dns::learn_answer(
            &mut self.names,
            &out.chain,
            &addrs,
            ttl,
            now_ns,
            self.cfg.dns.names,
        );
        for ip in &addrs {
            self.names_learned(*ip, &out.chain, now_ns);
        }
        if let Some(rule) = out.blocked_by {
            self.counters.dns_blocked += 1;
            self.dns_event(EventKind::DnsBlocked, q, out.chain, Some(rule), None, None);
        } else {
            if let Some((rule, layer)) = out.removed_by {
                self.counters.dns_filtered += 1;
                let detail = format!(
                    "removed {}",
                    out.removed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.dns_event(
                    EventKind::DnsFiltered,
                    q,
                    out.chain,
                    Some(rule),
                    layer,
                    Some(detail),
                );
            }
        }
        self.dns_reply(reply, &bytes, now_ns);
    }

    fn dns_event(
        &mut self,
        kind: EventKind,
        q: &Question,
        names: Vec<String>,
        rule: Option<String>,
        layer: Option<String>,
        detail: Option<String>,
    ) {
        let ev = Event::dns(kind, q.name_text(), names, rule, layer, detail);
        self.out.push_back(Output::Event(Box::new(ev)));
    }

    /// Sends a DNS answer back the way its query came.
    fn dns_reply(&mut self, reply: Reply, bytes: &[u8], now_ns: u64) {
        match reply {
            Reply::Udp { client, server } => {
                if let Some(p) = reply::udp_packet(server, client, bytes) {
                    self.out.push_back(Output::ToTun(p));
                }
            }
            Reply::Tcp(key) => {
                let (Some(f), Some(set)) = (self.tcp.get(&key), self.socks.get_mut(&key)) else {
                    return self.drop_reason(DropReason::DnsTcpGone);
                };
                let sock = set.get_mut::<smoltcp::socket::tcp::Socket>(f.handle);
                let Ok(len) = u16::try_from(bytes.len()) else {
                    return;
                };
                let mut framed = Vec::with_capacity(bytes.len() + 2);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(bytes);
                if sock.send_capacity() - sock.send_queue() < framed.len() {
                    // An app that does not read its answers: reset it.
                    sock.abort();
                    self.drop_reason(DropReason::DnsTcpFull);
                } else {
                    let _ = sock.send_slice(&framed);
                }
                self.poll_stack(now_ns, Some(key));
            }
        }
    }
}

impl TcpFlow {
    /// A decision event about this connection.
    fn event(&self, kind: EventKind, v: Option<&Verdict<'_>>) -> Event {
        Event::of_flow(
            kind,
            FlowView {
                id: self.id,
                proto: FlowProto::Tcp,
                client: self.client,
                server: self.server,
                sniffer: &self.sniffer,
                leaks: &self.leaks,
                ctx: &self.ctx,
            },
            v,
        )
    }
}

impl FlowState {
    /// A decision event about this UDP or echo flow.
    fn event(&self, kind: EventKind, v: Option<&Verdict<'_>>) -> Event {
        Event::of_flow(
            kind,
            FlowView {
                id: self.id,
                proto: if self.icmp {
                    FlowProto::Icmp
                } else {
                    FlowProto::Udp
                },
                client: self.client,
                server: self.server,
                sniffer: &self.sniffer,
                leaks: &self.leaks,
                ctx: &self.ctx,
            },
            v,
        )
    }
}

/// How long a TCP flow may stay idle: a silently dropped one as long as UDP,
/// a handshake for `tcp_handshake_ns`, a connection for `tcp_idle_ns`.
fn tcp_idle_limit(cfg: &EngineConfig, f: &TcpFlow) -> u64 {
    if f.silent {
        cfg.udp_idle_ns
    } else if matches!(f.phase, TcpPhase::Sniffing { since_ns: None }) {
        cfg.tcp_handshake_ns
    } else {
        cfg.tcp_idle_ns
    }
}

/// The names a flow's facts carry: the one its payload named (SNI, Host,
/// QUIC, SD-RTN), then those its address was learned with.
pub fn fact_names<'a>(sn: &'a Sniffer, ctx: &'a FlowCtx) -> Vec<&'a str> {
    sn.server_name
        .as_deref()
        .into_iter()
        .chain(ctx.names.iter().map(String::as_str))
        .collect()
}

/// The policy's facts about a flow: the one place they are built, for the
/// live engine and the audit alike. `names` comes from [`fact_names`].
pub fn facts<'a>(
    transport: PTransport,
    server: SocketAddr,
    sn: &'a Sniffer,
    leaks: &[LeakHit],
    ctx: &'a FlowCtx,
    names: &'a [&'a str],
) -> Facts<'a> {
    Facts {
        dst: Some(server.ip()),
        port: (transport != PTransport::Icmp).then_some(server.port()),
        transport: Some(transport),
        names,
        traffic: sn.class,
        protocol: sn.protocol.map(|p| p.name()),
        encrypted: match sn.encryption() {
            Encryption::Encrypted => Some(true),
            Encryption::Cleartext => Some(false),
            Encryption::Unknown => None,
        },
        leak: !leaks.is_empty(),
        app: ctx.app.as_deref(),
    }
}

/// The verdict on a flow's facts (see [`facts`]).
pub fn judge_parts<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    server: SocketAddr,
    sn: &Sniffer,
    leaks: &[LeakHit],
    ctx: &FlowCtx,
) -> Verdict<'p> {
    let names = fact_names(sn, ctx);
    policy.evaluate(intel, &facts(transport, server, sn, leaks, ctx, &names))
}

fn judge<'p>(policy: &'p crate::policy::Policy, intel: &Intel, f: &FlowState) -> Verdict<'p> {
    let t = if f.icmp {
        PTransport::Icmp
    } else {
        PTransport::Udp
    };
    judge_parts(policy, intel, t, f.server, &f.sniffer, &f.leaks, &f.ctx)
}

#[cfg(test)]
mod tests;
