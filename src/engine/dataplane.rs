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
//! the app's first bytes are read (at most [`TCP_SNIFF_BYTES`] or a whole
//! ClientHello or request head, at most
//! [`TCP_SNIFF_NS`] after the handshake) and judged before the upstream
//! connection is even requested; when the address alone decides, it is
//! judged at the SYN. Later evidence (a reclassification, a leaked
//! identifier) is judged again and can cut an open flow: RST to the app,
//! upstream closed.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::dns::{self, DnsLimits, Question, Refusal, Resolved};
pub use super::events::{Decision, DropReason, Event, EventKind, FlowProto};
use super::frag::{FragLimits, FragResult, Reassembler};
use super::reply;
pub use super::reply::Unreachable;
use super::{FlowCore, PeerNews};
use crate::classify::leak::{LeakDetector, LeakHit, ScanState};
use crate::classify::{Carrier, Dir, Encryption};
use crate::intel::jurisdiction::{Intel, WorldHandle};
use crate::policy::{Action, BlockMode, Facts, PolicyHandle, Transport as PTransport, Verdict};
use crate::wire::packet::{Transport, icmp_type, parse_ip, tcp_flags};

/// Borrows what a new flow's question touches ([`ask::Asking`]) field by
/// field, so it can be used while a flow of the table is borrowed too.
macro_rules! asking {
    ($e:expr) => {
        ask::Asking {
            asks: &mut $e.asks,
            out: &mut $e.out,
            counters: &mut $e.counters,
            wake_ns: &mut $e.wake_ns,
        }
    };
}

/// A flow's identity towards the driver.
pub type FlowId = u64;

/// App bytes read from a TCP connection before it is judged, at most; a
/// TLS ClientHello that announces more is read whole, up to
/// [`crate::classify::HELLO_SNIFF_BYTES`], an HTTP request's head up to
/// [`crate::classify::HEAD_SNIFF_BYTES`] ([`crate::classify::sniff_limit`]).
pub const TCP_SNIFF_BYTES: usize = crate::classify::SNIFF_BYTES;
/// Connections that may read their first bytes past [`TCP_SNIFF_BYTES`]
/// at once by default (a ClientHello or request head that goes on):
/// together they hold at most 64 × [`crate::classify::HELLO_SNIFF_BYTES`]
/// (5 MiB). Past it, a connection is judged on its first
/// [`TCP_SNIFF_BYTES`], as if its hello were cut there (with the name
/// only if they hold it), and counted (`tcp_long_reads_refused`).
pub const LONG_FIRST_READS: usize = 64;
/// How long after the handshake a TCP connection may stay unjudged
/// waiting for the app's first bytes (server-first protocols send none).
pub const TCP_SNIFF_NS: u64 = 300_000_000;
/// Default largest receive and send buffer of one local TCP connection
/// (each way): the most its allowance grows to.
pub const TCP_BUFFER: usize = 1024 * 1024;
/// The floor of a connection's allowance (each way): what a quiet one
/// keeps, and what a new one gets once the budget is spent.
pub const TCP_BUFFER_MIN: usize = 4 * 1024;
/// Default budget for the connections' allowances together.
pub const TCP_MEMORY: usize = 16 * 1024 * 1024;

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
    /// way (default [`TCP_BUFFER`]): the most its allowance grows to, and
    /// so the most the app's window opens. Address space only until bytes
    /// pass (see [`super::pages`]).
    pub tcp_buffer: usize,
    /// DNS cache, name map and pending-query bounds.
    pub dns: DnsLimits,
    /// Budget for the connections' allowances above the floor (default
    /// [`TCP_MEMORY`]): what each may hold each way, between
    /// [`TCP_BUFFER_MIN`] and `tcp_buffer` (see `dataplane/window.rs`). A
    /// new connection starts at a 1,024th of the budget each way; an
    /// allowance doubles each time it held its connection back, while
    /// three quarters of the budget are not spent (a quarter is kept for
    /// new connections), and goes back to the floor once its connection
    /// has been quiet for 50 ms. Once the budget is spent, new connections
    /// still open, at the floor (small windows: pressure slows them, it
    /// does not refuse them; counted as `tcp_squeezed`). Only the flow
    /// table's bound (`max_flows`) refuses connections. A connection keeps
    /// the window its app was offered until the app uses it (a window's
    /// edge never moves back), so the bytes held can pass
    /// `tcp_memory + max_flows × 2 × TCP_BUFFER_MIN` by what quiet
    /// connections were offered before they shrank: at most the budget
    /// again.
    pub tcp_memory: usize,
    /// Connections that may read their first bytes past
    /// [`TCP_SNIFF_BYTES`] at once (default [`LONG_FIRST_READS`]).
    pub long_first_reads: usize,
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
            long_first_reads: LONG_FIRST_READS,
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
        /// The flow's allowance (the larger way), in bytes: the most the
        /// driver should read ahead from the server for it, and queue
        /// towards the server before pausing the app (so the driver's
        /// queues follow the TCP memory budget too). Changed later by
        /// [`Output::TcpWindow`].
        window: usize,
    },
    /// The flow's allowance changed: its new window, as in
    /// [`Output::TcpOpen`].
    TcpWindow {
        /// The flow.
        flow: FlowId,
        /// Its window, in bytes.
        window: usize,
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

/// What a flow is judged with beside its packets: names its address was
/// learned with, and the app that owns it.
#[derive(Debug, Clone, Default)]
pub struct FlowCtx {
    /// Names (DNS answers, earlier flows).
    pub names: Vec<String>,
    /// The owning app, from [`Engine::set_app_lookup`] or
    /// [`Engine::hint_owner`].
    pub app: Option<String>,
    /// The user the owning app runs as, when the platform says.
    pub uid: Option<u32>,
}

/// Who owns a flow, as the platform can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppOwner {
    /// The app: an executable's path, or the platform's name for it.
    pub app: Option<String>,
    /// The user it runs as.
    pub uid: Option<u32>,
}

/// Finds the app that owns a flow: (transport, app side, server side).
pub type AppLookup = Box<dyn FnMut(PTransport, SocketAddr, SocketAddr) -> AppOwner + Send>;

/// A flow as an owner is looked up for it: (transport, app side, server
/// side; for echo flows the identifier and port 0).
pub type OwnerKey = (PTransport, SocketAddr, SocketAddr);

/// The most owners [`Engine::hint_owner`] keeps for flows not yet seen.
pub const OWNER_HINTS: usize = 4_096;

/// A UDP or echo flow's key: (echo?, app side, server side).
type DatagramKey = (bool, SocketAddr, SocketAddr);
/// A TCP connection's key: (app side, server side).
type TcpKey = (SocketAddr, SocketAddr);

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
    /// TCP connections started at the floor allowance because the TCP
    /// memory budget was spent (they run with small windows until it has
    /// room; none is refused).
    pub tcp_squeezed: u64,
    /// Times a TCP connection's allowance doubled (see
    /// [`EngineConfig::tcp_memory`]).
    pub tcp_windows_grown: u64,
    /// TCP connections judged on their first [`TCP_SNIFF_BYTES`] although
    /// their ClientHello or request head went on, because
    /// [`EngineConfig::long_first_reads`] others were reading past them.
    pub tcp_long_reads_refused: u64,
    /// Times an idle TCP connection's buffers were given back to the
    /// system (both empty; see [`super::pages`]).
    pub tcp_released: u64,
    /// UDP flows whose first datagrams were held until their class was
    /// known (a class could decide a block).
    pub held: u64,
    /// Held datagrams that never left: their flow was blocked, or the
    /// hold's bounds were full.
    pub held_dropped: u64,
    /// New flows held for an answer to an `ask` rule's question.
    pub asked: u64,
    /// New flows an `ask` rule matched that got the rule's default at
    /// once, because [`ask::MAX_PROMPTS`] questions (or
    /// [`ask::MAX_FLOWS_PER_PROMPT`] flows of one) were waiting.
    pub asked_busy: u64,
    /// NAT64 prefixes learned from `ipv4only.arpa` answers (RFC 7050).
    pub nat64_discovered: u64,
    /// DNS queries answered (from the cache, the resolver, or blocked).
    pub dns_queries: u64,
    /// DNS queries whose name was blocked.
    pub dns_blocked: u64,
    /// DNS answers with addresses removed.
    pub dns_filtered: u64,
    /// DNS answers with addresses left out because the upstream network
    /// cannot reach them now (their family has no route, or is down; see
    /// [`Engine::set_upstream_routes`]): apps then use the family that
    /// works, as they do on a host whose resolver asks only for the
    /// families it has.
    pub dns_unroutable: u64,
    /// ICMP destination-unreachable errors passed on to the app for its
    /// UDP flows (what the upstream sockets reported; see
    /// [`Engine::handle_udp_unreachable`]).
    pub udp_unreachable: u64,
    /// ICMP errors passed on to the app for its echo requests (see
    /// [`Engine::handle_echo_unreachable`]).
    pub echo_unreachable: u64,
    /// New flows answered "network unreachable" at their first packet
    /// because the upstream network had no route for their address family
    /// (see [`Engine::set_upstream_routes`]).
    pub no_route: u64,
    /// New flows answered "network unreachable" at their first packet
    /// because their family's upstream connects had gone unanswered (see
    /// [`super::paths`]).
    pub family_down: u64,
    /// Times an address family was found not to carry connections (see
    /// [`super::paths`]).
    pub families_down: u64,
}

/// How a flow's upstream connect failed, as far as the engine learns from
/// it ([`Engine::handle_tcp_connect_failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The server answered: refused (a reset). The network carries
    /// connections.
    Refused,
    /// No answer in time, or the host or network is unreachable.
    Unanswered,
    /// Anything else (a local error): nothing learned.
    Other,
}

/// Which address families the upstream network has a default route for,
/// as the driver last found them ([`Engine::set_upstream_routes`]). A new
/// flow to an internet address with no route is answered at its first
/// packet with ICMP "network unreachable", as the system answers a
/// `connect()` with no route: an app with addresses of both families
/// (Happy Eyeballs) goes on with the other at once, where a connection
/// accepted by the local stack would only fail once the engine opened its
/// upstream side, after the app's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamRoutes {
    /// IPv4 has a default route.
    pub v4: bool,
    /// IPv6 has a default route.
    pub v6: bool,
}

impl Default for UpstreamRoutes {
    /// Both families: the engine refuses nothing until told.
    fn default() -> Self {
        Self { v4: true, v6: true }
    }
}

impl UpstreamRoutes {
    /// Whether `ip`'s family has a default route.
    pub fn covers(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self.v6,
        }
    }
}

/// Why the upstream network cannot reach an address now
/// ([`Engine::unroutable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unroutable {
    /// Its family's connects went unanswered ([`super::paths`]).
    Down,
    /// No route to it.
    NoRoute,
}

/// Whether the upstream network has a route to one address (the driver
/// looks it up; no packet is sent). Asked only for the first packet of a
/// new flow to an internet address whose family has no default route.
pub type RouteLookup = Box<dyn FnMut(IpAddr) -> bool + Send>;

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
    socks: HashMap<TcpKey, super::pages::ConnSockets>,
    /// An empty socket set, for segments of no connection (the stack
    /// answers them with an RST).
    no_sockets: smoltcp::iface::SocketSet<'static>,
    /// Pages for one-page socket buffers (see [`super::pages`]); declared
    /// after `socks`, whose buffers hold it alive anyway.
    pages: Arc<super::pages::PagePool>,
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
    /// The SOCKS 5 UDP relays apps asked their proxies for.
    socks_relays: crate::engine::SocksRelays,
    /// Connections now reading first bytes past [`TCP_SNIFF_BYTES`] (a long
    /// ClientHello or request head), at most
    /// [`EngineConfig::long_first_reads`].
    long_reads: usize,
    /// Resolver answers, as received.
    pub dns_cache: dns::Cache,
    /// Address → names, from DNS answers and flows.
    pub names: dns::NameMap,
    /// Queries sent to the resolver: the question, where the answer goes,
    /// and when SERVFAIL is due if none came.
    dns_pending: HashMap<u64, (Question, Reply, u64)>,
    apps: Option<AppLookup>,
    /// The world database to follow, and the generation in use.
    world: Option<Arc<WorldHandle>>,
    world_gen: u64,
    /// Owners found ahead of their flows' first packets.
    owner_hints: HashMap<OwnerKey, AppOwner>,
    /// TCP connections whose owner the driver looks for
    /// ([`Engine::await_owner`]): accepted at their SYN, judged once it is
    /// known. At most [`OWNER_HINTS`].
    owners_pending: std::collections::HashSet<TcpKey>,
    next_query: u64,
    /// The policy generation the open flows were judged with.
    policy_gen: u64,
    /// Bytes of datagrams held by all flows (at most
    /// `udp::HOLD_BYTES_TOTAL`).
    held_bytes: usize,
    /// Questions `ask` rules raised, and the answers given.
    asks: ask::Asks,
    /// Counters.
    pub counters: EngineCounters,
    /// The address families the upstream has a default route for.
    routes: UpstreamRoutes,
    /// Routes to single addresses of a family without a default route.
    route_lookup: Option<RouteLookup>,
    /// Which families' upstream connects go unanswered.
    paths: super::paths::Paths,
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
            pages: super::pages::PagePool::new(),
            no_sockets: super::stack::sockets(),
            tcp_timers: std::collections::BTreeSet::new(),
            tcp: HashMap::new(),
            tcp_ids: HashMap::new(),
            wake_ns: None,
            tcp_memory: 0,
            socks_relays: Default::default(),
            long_reads: 0,
            dns_cache: dns::Cache::default(),
            names: dns::NameMap::default(),
            dns_pending: HashMap::new(),
            apps: None,
            owner_hints: HashMap::new(),
            owners_pending: std::collections::HashSet::new(),
            world: None,
            world_gen: 0,
            next_query: 1,
            policy_gen: policy.generation(),
            held_bytes: 0,
            asks: ask::Asks::default(),
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
            routes: UpstreamRoutes::default(),
            route_lookup: None,
            paths: super::paths::Paths::default(),
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

    /// The open flows (UDP, echo and TCP), in no particular order.
    pub fn open_flows(&self) -> impl Iterator<Item = &FlowCore> {
        self.flows
            .values()
            .map(|f| &f.core)
            .chain(self.tcp.values().map(|f| &f.core))
    }

    /// Ends every flow, as when the firewall stops: each gets its `closed`
    /// event (with its packets and bytes, and what blocked it, if
    /// anything), and the table is left empty. Upstream sockets are the
    /// driver's to drop.
    pub fn close_all(&mut self) {
        let mut ended: Vec<Event> = self
            .flows
            .drain()
            .map(|(_, f)| f.event(EventKind::Closed, None))
            .collect();
        ended.extend(self.tcp.drain().filter_map(|(_, f)| f.closed_event()));
        self.ids.clear();
        self.held_bytes = 0;
        self.tcp_ids.clear();
        self.tcp_timers.clear();
        self.socks.clear();
        self.tcp_memory = 0;
        self.long_reads = 0;
        ended.sort_by_key(|e| e.flow);
        self.out
            .extend(ended.into_iter().map(|e| Output::Event(Box::new(e))));
    }

    /// Flows in the table (UDP, echo and TCP).
    pub fn flow_count(&self) -> usize {
        self.flows.len() + self.tcp.len()
    }

    /// When [`Engine::handle_timeout`] should next be called. Cheap: flow
    /// deadlines are kept as one lower bound, refreshed at each sweep.
    pub fn poll_timeout(&mut self) -> Option<u64> {
        if self.policy.generation() != self.policy_gen
            || self
                .world
                .as_ref()
                .is_some_and(|h| h.generation() != self.world_gen)
        {
            // New rules or world data: the open flows are judged again at
            // once.
            return Some(0);
        }
        let stack = self.tcp_timers.first().map(|(t, _)| *t);
        [self.wake_ns, stack].into_iter().flatten().min()
    }

    /// Answers question `question` (from an `asked` event): its held flows,
    /// and with [`Scope::App`] or [`Scope::Always`] the app's other
    /// waiting questions the answer covers, go on or are blocked now.
    /// Returns the answer to keep in the local answers file for
    /// [`Scope::Always`] (the caller writes it; see [`Engine::keep_answers`]).
    ///
    /// # Errors
    /// The question is not waiting (answered, timed out, never asked).
    pub fn answer(
        &mut self,
        question: PromptId,
        reply: Answer,
        now_ns: u64,
    ) -> Result<Option<KeptAnswer>, AnswerError> {
        let (settled, kept) = self.asks.answer(question, reply)?;
        self.settle(settled, now_ns);
        Ok(kept)
    }

    /// The answers kept in the local answers file (read at start): each
    /// settles, without asking, the questions of its app about its
    /// destination. The last [`ask::MAX_KEPT`] are kept.
    pub fn keep_answers(&mut self, kept: Vec<KeptAnswer>) {
        self.asks.keep(kept);
    }

    /// The questions waiting for an answer, oldest first.
    pub fn prompts(&self) -> impl Iterator<Item = (PromptId, &Prompt)> {
        self.asks.waiting()
    }

    /// Carries out settled questions: an `answered` event each, and their
    /// held flows judged again with the answer.
    fn settle(&mut self, s: ask::Settled, now_ns: u64) {
        for (id, q) in s.questions {
            let ev = Event::answered(id, &q, s.allow, s.how);
            self.out.push_back(Output::Event(Box::new(ev)));
            for h in q.held() {
                match *h {
                    ask::Held::Tcp(key) => {
                        if let Some(f) = self.tcp.get_mut(&key)
                            && f.phase == TcpPhase::Asking
                        {
                            f.core.answer = Some((s.allow, s.how));
                            self.poll_stack(now_ns, Some(key));
                        }
                    }
                    ask::Held::Datagram(key) => {
                        if let Some(f) = self.flows.get_mut(&key)
                            && f.state == State::Asking
                        {
                            f.core.answer = Some((s.allow, s.how));
                            self.release_held(key, None);
                        }
                    }
                }
            }
        }
    }

    /// What a new flow's question touches ([`ask::Asking`]).
    fn asking(&mut self) -> ask::Asking<'_> {
        asking!(self)
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
            .map(|f| match (f.state, f.later_since) {
                (State::Holding { since_ns }, _) | (_, Some(since_ns)) => since_ns + udp::HOLD_NS,
                _ => f.core.last_ns + if f.icmp { icmp } else { udp },
            })
            .min();
        let sniff = self
            .tcp
            .values()
            .filter_map(|f| match (f.phase, f.first_bytes) {
                (TcpPhase::Sniffing { since_ns: Some(t) }, _)
                | (_, FirstBytes::Reading { since_ns: t }) => Some(t + TCP_SNIFF_NS),
                _ => f.partial_since_ns.map(|t| t + TCP_SNIFF_NS),
            })
            .min();
        let tcp = self
            .tcp
            .values()
            .map(|f| f.core.last_ns + tcp_idle_limit(&self.cfg, f))
            .min();
        let dns = self.dns_pending.values().map(|p| p.2).min();
        [idle, sniff, tcp, dns, self.asks.deadline()]
            .into_iter()
            .flatten()
            .min()
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
            if now_ns.saturating_sub(f.core.last_ns) >= limit {
                stale.push(*k);
            }
        }
        for k in stale {
            let Some((f, set)) = self.remove_tcp(&k) else {
                continue;
            };
            if let Some(mut set) = set {
                // Reset the app's side; the RST leaves at this poll.
                set.socket_mut().abort();
                self.iface
                    .poll(super::stack::instant(now_ns), &mut self.device, set.set());
                if matches!(f.phase, TcpPhase::Open | TcpPhase::Connecting) {
                    self.out.push_back(Output::Close { flow: f.id });
                }
            }
            // Idle past its time (a silently dropped one too): it ends here.
            if let Some(ev) = f.closed_event() {
                self.out.push_back(Output::Event(Box::new(ev)));
            }
        }
        while let Some(p) = self.device.tx.pop_front() {
            self.out.push_back(Output::ToTun(p));
        }
        // Flows held past the hold time: decided with what is known.
        let ripe: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                matches!(f.state, State::Holding { since_ns } if now_ns.saturating_sub(since_ns) >= udp::HOLD_NS)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in ripe {
            self.release_held(k, None);
        }
        // Later QUIC connections whose hello did not come whole in time.
        let late: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                f.later_since
                    .is_some_and(|t| now_ns.saturating_sub(t) >= udp::HOLD_NS)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            self.send_later_held(k);
        }
        // Questions no one answered in time: the rules' defaults.
        for s in self.asks.expire(now_ns) {
            self.settle(s, now_ns);
        }
        let (udp, icmp) = (self.cfg.udp_idle_ns, self.cfg.icmp_idle_ns);
        let idle: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                now_ns.saturating_sub(f.core.last_ns) >= if f.icmp { icmp } else { udp }
            })
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            if let Some(f) = self.flows.remove(&k) {
                self.ids.remove(&f.id);
                self.held_bytes -= f.held.iter().map(Vec::len).sum::<usize>();
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
                seq,
                payload,
                ..
            } => {
                let client = SocketAddr::new(p.src, sport);
                let server = SocketAddr::new(p.dst, dport);
                let seg = tcp::Segment {
                    flags,
                    seq,
                    len: payload.len(),
                };
                self.on_tcp_packet(packet, client, server, seg, now_ns);
            }
            Transport::Fragment(_) => {
                self.drop_reason(DropReason::Packet(crate::wire::packet::Drop::Malformed))
            }
            Transport::Other { .. } => self.drop_reason(DropReason::OtherProtocol),
        }
    }

    /// Judges every open flow again when the rules were replaced since they
    /// were judged (`geowall reload`, a bundle pushed by the phone
    /// library): those the new rules block are cut, with an event naming
    /// the rule. Called at every packet and timeout; costs one atomic load
    /// when nothing changed.
    fn follow_policy(&mut self, now_ns: u64) {
        let g = self.policy.generation();
        let w = self.world.as_ref().map_or(0, |h| h.generation());
        if g == self.policy_gen && w == self.world_gen {
            return;
        }
        self.policy_gen = g;
        if w != self.world_gen {
            self.world_gen = w;
            if let Some(h) = &self.world {
                self.intel = self.intel.with_world(h.current());
            }
        }
        // Peers refused under the old rules are judged again at their
        // next message.
        for f in self.flows.values_mut() {
            f.core.refused_peers.clear();
        }
        for f in self.tcp.values_mut() {
            f.core.refused_peers.clear();
        }
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

    /// Follows `handle` for the world database: a replacement (a world
    /// update) takes the place of the one the engine was built with, and
    /// the open flows are judged again under it.
    pub fn follow_world(&mut self, handle: Arc<WorldHandle>) {
        self.world_gen = handle.generation();
        self.intel = self.intel.with_world(handle.current());
        self.world = Some(handle);
    }

    /// Which address families the upstream network has a default route
    /// for now (the driver looks at start and every few seconds). A new
    /// flow to an internet address of a family without one is refused at
    /// its first packet with "network unreachable" (counted in
    /// [`EngineCounters::no_route`]), unless the [`RouteLookup`] finds a
    /// route to that address; local addresses (a LAN) and DNS queries
    /// (answered by the engine) never are. DNS answers leave out the
    /// addresses such flows would go to (counted in
    /// [`EngineCounters::dns_unroutable`]), so apps do not try them. Both
    /// families, by default.
    /// A change of routes means another network: what was learned of the
    /// families' connects ([`super::paths`]) is forgotten.
    pub fn set_upstream_routes(&mut self, routes: UpstreamRoutes) {
        if routes != self.routes {
            self.paths.forget();
        }
        self.routes = routes;
    }

    /// How to find a route to one address of a family without a default
    /// route (the driver's route lookup). Without it, such a family's
    /// internet addresses are all taken as unreachable.
    pub fn set_route_lookup(&mut self, f: RouteLookup) {
        self.route_lookup = Some(f);
    }

    /// The address families the engine takes to have a default route.
    pub fn upstream_routes(&self) -> UpstreamRoutes {
        self.routes
    }

    /// Refuses a new flow's first packet `raw` to `dst` when the upstream
    /// has no route to it (see [`Engine::set_upstream_routes`]), or its
    /// family's connects go unanswered ([`super::paths`]); whether it did.
    fn refused_without_route(&mut self, raw: &[u8], dst: IpAddr, now_ns: u64) -> bool {
        match self.unroutable(dst, now_ns) {
            None => return false,
            Some(Unroutable::Down) => self.counters.family_down += 1,
            Some(Unroutable::NoRoute) => self.counters.no_route += 1,
        }
        if let Some(r) = reply::icmp_unreachable(raw, Unreachable::NoRoute) {
            self.out.push_back(Output::ToTun(r));
        }
        true
    }

    /// Why the upstream network cannot reach `dst` now, if it cannot: its
    /// family is down ([`super::paths`]), or has no default route and the
    /// [`RouteLookup`] finds none to `dst`. Local addresses are always
    /// reachable.
    pub(super) fn unroutable(&mut self, dst: IpAddr, now_ns: u64) -> Option<Unroutable> {
        // Two comparisons while both families carry.
        let down = self.paths.broken(dst, now_ns);
        if (!down && self.routes.covers(dst)) || crate::policy::eval::is_local(dst) {
            return None;
        }
        if down {
            return Some(Unroutable::Down);
        }
        if let Some(f) = &mut self.route_lookup
            && f(dst)
        {
            return None;
        }
        Some(Unroutable::NoRoute)
    }

    /// Whether the link the engine's packets go to finishes their TCP
    /// checksums (a Linux TUN with offloads, which the driver tells with
    /// a partial-checksum header): the local stack then leaves them out of
    /// the segments it sends, a pass over every byte saved. Off by default:
    /// every packet carries its checksums. Call it before traffic.
    pub fn set_tcp_checksum_offload(&mut self, on: bool) {
        if self.device.tcp_checksum_offload != on {
            self.device.tcp_checksum_offload = on;
            // smoltcp's interface reads its device's capabilities when it
            // is made: made again.
            self.iface = super::stack::any_ip_interface(&mut self.device, 0);
        }
    }

    /// How to find the app that owns a new flow (the platform's answer:
    /// `getConnectionOwnerUid` on Android, the program under `geowall
    /// exec`). Called once per flow, before it is judged, unless
    /// [`Engine::hint_owner`] already said.
    pub fn set_app_lookup(&mut self, f: AppLookup) {
        self.apps = Some(f);
    }

    /// The owner of the flow `key` will start, found ahead of its first
    /// packet (off the packet path: the driver holds the packet until the
    /// answer is in). Kept until that flow starts; at most
    /// [`OWNER_HINTS`] are kept (past it, the oldest go all at once).
    pub fn hint_owner(&mut self, key: OwnerKey, owner: AppOwner) {
        if self.owner_hints.len() >= OWNER_HINTS {
            self.owner_hints.clear();
        }
        self.owner_hints.insert(key, owner);
    }

    /// The owner of the flow `key` is being looked for (off the packet
    /// path). A TCP connection (true) need not wait for it when no rule
    /// looks at owners ([`crate::policy::Policy::needs_owner`]): its SYN
    /// is handed over at once and answered (or refused, when the address
    /// alone blocks it), and the connection is judged, and its events
    /// written, once [`Engine::owner_found`] says who owns it, so the
    /// app's handshake does not wait on the search. Otherwise (false) the
    /// driver holds the flow's first packets until the owner is known,
    /// tells the engine ([`Engine::hint_owner`]) and hands them over.
    pub fn await_owner(&mut self, key: OwnerKey) -> bool {
        let (t, client, server) = key;
        if t != PTransport::Tcp
            || self.owners_pending.len() >= OWNER_HINTS
            || self.policy.current().needs_owner()
        {
            return false;
        }
        self.owners_pending.insert((client, server));
        true
    }

    /// The owner of the flow `key`, as found (`owner` empty: not found, or
    /// given up). A TCP connection accepted while it was looked for
    /// ([`Engine::await_owner`]) is judged now; a flow yet to start takes
    /// it when it does ([`Engine::hint_owner`]).
    pub fn owner_found(&mut self, key: OwnerKey, owner: AppOwner, now_ns: u64) {
        let (t, client, server) = key;
        if t == PTransport::Tcp && !self.owners_pending.remove(&(client, server)) {
            return self.start_owned((client, server), owner, now_ns);
        }
        self.hint_owner(key, owner);
    }

    /// The flow `packet` (from the app) would start, if it starts one: a
    /// TCP SYN, the first datagram or echo request of an unknown flow. DNS
    /// queries, which geowall answers itself, start none.
    pub fn starts_flow(&self, packet: &[u8]) -> Option<OwnerKey> {
        let p = parse_ip(packet).ok()?;
        if p.fragment.is_some() {
            return None;
        }
        match p.transport {
            Transport::Tcp {
                sport,
                dport,
                flags,
                ..
            } => {
                let key = (SocketAddr::new(p.src, sport), SocketAddr::new(p.dst, dport));
                (flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
                    && !self.tcp.contains_key(&key))
                .then_some((PTransport::Tcp, key.0, key.1))
            }
            Transport::Udp { sport, dport, .. } if dport != 53 => {
                let key = (
                    false,
                    SocketAddr::new(p.src, sport),
                    SocketAddr::new(p.dst, dport),
                );
                (!self.flows.contains_key(&key)).then_some((PTransport::Udp, key.1, key.2))
            }
            Transport::Icmp {
                kind,
                echo_id: Some(ident),
                ..
            } if kind == icmp_type::ECHO_REQUEST_V4 || kind == icmp_type::ECHO_REQUEST_V6 => {
                let key = (
                    true,
                    SocketAddr::new(p.src, ident),
                    SocketAddr::new(p.dst, 0),
                );
                (!self.flows.contains_key(&key)).then_some((PTransport::Icmp, key.1, key.2))
            }
            _ => None,
        }
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
        let owner = match self.owner_hints.remove(&(t, client, server)) {
            Some(o) => o,
            None => self
                .apps
                .as_mut()
                .map(|f| f(t, client, server))
                .unwrap_or_default(),
        };
        FlowCtx {
            names: self.learned_names(server.ip(), now_ns),
            app: owner.app,
            uid: owner.uid,
        }
    }
}

pub mod ask;
mod names;
mod tcp;
mod udp;
mod verdict;
mod window;

use names::Reply;
use tcp::{FirstBytes, TcpFlow, TcpPhase};
use udp::{FlowState, State};

pub use ask::{Answer, AnswerError, KeptAction, KeptAnswer, Prompt, PromptId, Scope};
use tcp::tcp_idle_limit;
pub use verdict::{admit_peers, fact_names, facts, judge_parts, judge_with_peers, peer_refusal};

#[cfg(test)]
mod tests;
