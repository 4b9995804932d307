//! The engine's packet path, sans-IO: packets and time in, flow state and
//! findings out. This part (flow table, classification, leak scanning) is
//! what `geowall audit` replays captures through; the live data plane
//! builds on it.

pub mod dataplane;
pub mod dns;
pub mod events;
pub mod frag;
pub mod pages;
pub mod paths;
pub mod reorder;
pub mod reply;
pub mod stack;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::classify::leak::{LeakDetector, LeakHit, ScanState};
use crate::classify::{Carrier, Dir, Sniffer};
use crate::intel::jurisdiction::Intel;
use crate::policy::{Policy, Transport as PTransport, Verdict};
use crate::wire::packet::{Drop, Transport, parse_ip, tcp_flags};
use dataplane::FlowCtx;
use events::DropReason;

/// The most leak findings kept per flow.
pub const MAX_LEAKS_PER_FLOW: usize = 64;

/// What every flow has, whoever tracks it: the live engine's UDP, echo
/// and TCP flows and the audit's inspector each embed one, and the
/// policy's facts are built from it alone ([`dataplane::judge_parts`]).
#[derive(Debug)]
pub struct FlowCore {
    /// The initiator (the app).
    pub client: SocketAddr,
    /// The responder (for echo flows, port 0).
    pub server: SocketAddr,
    /// What the classifier knows.
    pub sniffer: Sniffer,
    /// Identifiers seen in cleartext (at most [`MAX_LEAKS_PER_FLOW`]).
    pub leaks: Vec<LeakHit>,
    /// Names the server's address was reached by (DNS answers, earlier
    /// flows) and the app that owns the flow.
    pub ctx: FlowCtx,
    /// Last packet, ns.
    pub last_ns: u64,
    /// IP packets and bytes each way, as seen on the app's side.
    pub volume: Volume,
    /// The peers a relay (this flow's server) was asked to reach, in the
    /// order learned: a TURN relay's (`XOR-PEER-ADDRESS`), a SOCKS or HTTP
    /// proxy's target given as an address (port 0 where the request gave
    /// none); at most [`MAX_PEERS`], the oldest forgotten
    /// first (a forgotten peer named again is learned, and judged, again).
    pub peers: Vec<SocketAddr>,
    /// The peers the live engine refused to let a relay be asked to reach
    /// ([`FlowCore::learn_peers_with`]): every message naming one is
    /// dropped while the flow goes on. At most [`MAX_PEERS`], the oldest
    /// forgotten first; emptied when the rules change (each is judged
    /// again at its next message).
    pub refused_peers: Vec<SocketAddr>,
    /// What blocked the flow (at its start or later), for the event that
    /// closes it ([`FlowCore::note_block`]).
    pub blocked: Option<Box<BlockNote>>,
    /// The answer an `ask` rule got for this flow (allow?, how it came):
    /// it settles every later verdict of that rule on the flow.
    pub answer: Option<(bool, crate::policy::Answered)>,
    /// TCP: the client's stream read as TURN over TCP
    /// ([`FlowCore::learn_stream_peers`]).
    turn: TurnRead,
    /// Names the flow's later messages asked for that are not
    /// [`Sniffer::server_name`], in the order learned: the hosts of the
    /// client's later HTTP/1.x requests on a TCP connection (keep-alive,
    /// pipelined, or through a forward proxy), the SNI of later QUIC
    /// connections on a UDP flow; at most [`MAX_HOSTS`], the oldest
    /// forgotten first.
    pub hosts: Vec<String>,
    /// TCP: the client's stream read as HTTP/1.x requests or a SOCKS
    /// handshake ([`FlowCore::learn_stream_hosts`]).
    requests: StreamRead,
    /// UDP: the QUIC connections the flow's datagrams opened
    /// ([`FlowCore::learn_quic_names`]).
    quic: Option<Box<QuicConns>>,
    /// UDP: the flow goes to the UDP relay its client asked a SOCKS 5
    /// proxy for ([`SocksRelays`]): each datagram names its target.
    pub socks_relay: bool,
}

/// The QUIC connections one UDP flow carries, told apart by the
/// Destination Connection ID of their client Initials.
#[derive(Debug, Default)]
struct QuicConns {
    /// DCIDs accounted for: the connections the flow's first datagrams
    /// opened, those read since, and those of Initials that the keys of
    /// their own DCID do not open (a client's later Initials carry the
    /// server's connection ID). At most [`MAX_QUIC_CONNS`], the oldest
    /// forgotten first.
    known: std::collections::VecDeque<Vec<u8>>,
    /// A later connection whose hello is still coming: its DCID and
    /// what its Initials gave so far.
    assembling: Option<(Vec<u8>, crate::wire::quic::InitialAssembler)>,
}

/// Connection IDs one UDP flow remembers of the QUIC connections it
/// carries ([`FlowCore::learn_quic_names`]).
pub const MAX_QUIC_CONNS: usize = 16;

impl QuicConns {
    fn know(&mut self, dcid: &[u8]) {
        if self.known.len() == MAX_QUIC_CONNS {
            self.known.pop_front();
        }
        self.known.push_back(dcid.to_vec());
    }
}

/// How a TCP flow's stream is read for the names and addresses its later
/// messages ask for, decided by its first bytes.
#[derive(Debug, Default)]
enum StreamRead {
    /// No byte from the app yet.
    #[default]
    Unseen,
    /// The stream began like an HTTP/1.x request: every head is read.
    Http(Box<crate::wire::http::RequestStream>),
    /// The stream began with a SOCKS greeting: its request and the
    /// tunnel's ClientHello are read.
    Socks(Box<crate::wire::socks::SocksStream>),
    /// Neither (or no longer read).
    No,
}

/// What one datagram told of the QUIC connections on its flow
/// ([`FlowCore::learn_quic_names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuicNews {
    /// It completed a later connection's hello, which names a host the
    /// flow did not know: judge the flow again.
    pub new: bool,
    /// It is an Initial of a later connection whose hello is not whole
    /// yet: it waits for the rest.
    pub waits: bool,
    /// It completed a later connection's hello: the Initials that waited
    /// go (or not) with it.
    pub completes: bool,
}

/// Hosts of one connection's later requests kept, at most (see
/// [`FlowCore::hosts`]).
pub const MAX_HOSTS: usize = 16;

/// What the next bytes of a TCP stream told of the hosts its HTTP/1.x
/// requests name ([`FlowCore::learn_stream_hosts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamHosts {
    /// A request named a host not known for the flow: judge it again.
    pub new: bool,
    /// The bytes end inside a request's head: only its rest says its
    /// host, and only then can it be judged.
    pub partial: bool,
    /// The client asked its SOCKS 5 proxy for a UDP relay (UDP
    /// ASSOCIATE): its datagrams to the proxy name their targets
    /// ([`SocksRelays`]).
    pub udp_relay: bool,
}

/// The SOCKS 5 UDP relays clients asked for, as (client address, proxy
/// address): a UDP flow between them is read for the target each
/// datagram's header names ([`FlowCore::learn_relay_target`]). At most
/// [`MAX_SOCKS_RELAYS`], the oldest forgotten first.
#[derive(Debug, Default)]
pub struct SocksRelays {
    set: std::collections::HashSet<(IpAddr, IpAddr)>,
    order: std::collections::VecDeque<(IpAddr, IpAddr)>,
}

/// SOCKS 5 UDP relays remembered, at most (see [`SocksRelays`]).
pub const MAX_SOCKS_RELAYS: usize = 1024;

impl SocksRelays {
    /// Remembers that `client` asked the proxy at `proxy` for a UDP relay.
    pub fn add(&mut self, client: IpAddr, proxy: IpAddr) {
        if !self.set.insert((client, proxy)) {
            return;
        }
        self.order.push_back((client, proxy));
        if self.order.len() > MAX_SOCKS_RELAYS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }

    /// Whether `client` asked the proxy at `proxy` for a UDP relay.
    pub fn has(&self, client: IpAddr, proxy: IpAddr) -> bool {
        !self.set.is_empty() && self.set.contains(&(client, proxy))
    }
}

/// Whether a TCP flow's stream is read as TURN over TCP, decided by its
/// first bytes: a STUN message there starts a framer that reads every
/// later message for the peers it names.
#[derive(Debug, Default)]
enum TurnRead {
    /// No byte from the app yet.
    #[default]
    Unseen,
    /// The stream began with a STUN message: framed.
    Reading(Box<crate::wire::rtc::TurnStream>),
    /// Not TURN (or no longer framed as it).
    No,
}

/// What the next bytes of a TCP stream told of its relay's peers
/// ([`FlowCore::learn_stream_peers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPeers {
    /// What the messages the bytes completed said (the most pressing:
    /// too many, then new, then refused).
    pub news: PeerNews,
    /// The bytes end inside a TURN message: what comes next completes it,
    /// and only then can it be judged.
    pub partial: bool,
    /// The stream ranges (offsets from the stream's first byte) of the
    /// messages they completed that name a refused peer
    /// ([`FlowCore::learn_stream_peers_with`]), in stream order.
    pub refused: Vec<std::ops::Range<u64>>,
}

/// The rule, layer and peer of the verdict that blocked a flow, as its
/// `blocked` or `cut` event gave them: the `closed` event repeats them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockNote {
    /// The deciding rule's name (none: the policy's default).
    pub rule: Option<String>,
    /// The layer and country that made it match.
    pub layer: Option<String>,
    /// The relay's peer that made it match.
    pub peer: Option<String>,
}

/// Peers of one relayed flow kept, at most (see [`FlowCore::peers`]).
pub const MAX_PEERS: usize = 32;

/// What one datagram from the app told of its relay's peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerNews {
    /// Not a TURN message naming peers, or only known ones.
    Nothing,
    /// At least one peer not known before: judge the flow again.
    New,
    /// The message names a peer refused ([`FlowCore::refused_peers`]): it
    /// must not leave; the flow goes on.
    Refused,
    /// A TURN message naming more peers than one message is read for
    /// ([`crate::wire::rtc::MAX_PEERS_PER_MESSAGE`]): it cannot be judged
    /// and must not be relayed.
    TooMany,
}

/// IP packets and bytes of one flow (or many), each way, as the app's
/// side sees them: what it sent (`up`) and what it was given (`down`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    /// Packets from the app.
    pub packets_up: u64,
    /// Packets to the app.
    pub packets_down: u64,
    /// IP bytes from the app.
    pub bytes_up: u64,
    /// IP bytes to the app.
    pub bytes_down: u64,
}

impl Volume {
    /// Counts one packet of `len` bytes from the app.
    pub fn up(&mut self, len: usize) {
        self.packets_up += 1;
        self.bytes_up += len as u64;
    }

    /// Counts one packet of `len` bytes to the app.
    pub fn down(&mut self, len: usize) {
        self.packets_down += 1;
        self.bytes_down += len as u64;
    }

    /// Adds another flow's counts.
    pub fn add(&mut self, o: &Volume) {
        self.packets_up += o.packets_up;
        self.packets_down += o.packets_down;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_up + self.bytes_down
    }
}

impl FlowCore {
    /// The name the server itself was reached by (TLS SNI, QUIC, HTTP Host,
    /// SD-RTN), to remember for its address; none for DNS, whose name is
    /// the question the server is asked, not the server's own.
    pub fn server_own_name(&self) -> Option<&str> {
        if self.sniffer.protocol == Some(crate::classify::Protocol::Dns) {
            return None;
        }
        self.sniffer.server_name.as_deref()
    }

    /// What a person calls the server: the name it was reached by, else
    /// its address.
    pub fn destination(&self) -> String {
        events::destination(
            self.sniffer.server_name.as_deref(),
            &self.ctx.names,
            &self.server.ip().to_string(),
        )
    }

    /// A flow with nothing seen yet.
    pub fn new(client: SocketAddr, server: SocketAddr, ctx: FlowCtx, now_ns: u64) -> Self {
        Self {
            client,
            server,
            sniffer: Sniffer::new(),
            leaks: Vec::new(),
            ctx,
            last_ns: now_ns,
            volume: Volume::default(),
            peers: Vec::new(),
            refused_peers: Vec::new(),
            blocked: None,
            answer: None,
            turn: TurnRead::Unseen,
            hosts: Vec::new(),
            requests: StreamRead::Unseen,
            quic: None,
            socks_relay: false,
        }
    }

    /// Remembers what blocked the flow, from its `blocked` or `cut`
    /// event `ev`, for the event that closes it.
    pub fn note_block(&mut self, ev: &events::Event) {
        self.blocked = Some(Box::new(BlockNote {
            rule: ev.rule.clone(),
            layer: ev.layer.clone(),
            peer: ev.peer.clone(),
        }));
    }

    /// Keeps `n` as a name a later message asked for, unless the flow
    /// knows it; whether it is new.
    fn learn_host(&mut self, n: &str) -> bool {
        if self
            .sniffer
            .server_name
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case(n))
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(n))
        {
            return false;
        }
        if self.hosts.len() == MAX_HOSTS {
            self.hosts.remove(0);
        }
        self.hosts.push(n.chars().take(253).collect());
        true
    }

    /// Reads a datagram the app sent for a QUIC connection it opens on
    /// the flow after the first (an endpoint that keeps one socket for
    /// several connections to one server): the client Initials of a
    /// Destination Connection ID not seen before are decrypted and their
    /// ClientHello assembled ([`crate::wire::quic::InitialAssembler`]); its
    /// SNI, when the flow did not know it, is kept in [`FlowCore::hosts`].
    /// Call it before the classifier sees the datagram: the Initials that
    /// start the flow are its first connection's, which the classifier
    /// reads.
    pub fn learn_quic_names(&mut self, payload: &[u8]) -> QuicNews {
        let none = QuicNews::default();
        let Some(dcid) = crate::wire::quic::initial_dcid(payload) else {
            return none;
        };
        let first = !self.sniffer.is_done();
        let q = self.quic.get_or_insert_with(Box::default);
        if q.known.iter().any(|k| k.as_slice() == dcid) {
            return none;
        }
        if first {
            q.know(dcid);
            return none;
        }
        let r = match q.assembling.as_mut() {
            Some((d, a)) if d.as_slice() == dcid => a.feed(payload),
            _ => {
                let mut a = crate::wire::quic::InitialAssembler::default();
                let r = a.feed(payload);
                if r.is_none() {
                    // Not opened by its own keys: an open connection's
                    // later Initial (the server's ID as its DCID).
                    q.know(dcid);
                    return none;
                }
                // A new connection (one begun before and never whole is
                // forgotten: it named nothing).
                q.assembling = Some((dcid.to_vec(), a));
                r
            }
        };
        if r != Some(true) {
            return QuicNews {
                waits: r.is_some(),
                ..none
            };
        }
        let sni = q
            .assembling
            .take()
            .and_then(|(_, a)| a.sni().map(str::to_owned));
        q.know(dcid);
        QuicNews {
            new: sni.is_some_and(|n| self.learn_host(&n)),
            waits: false,
            completes: true,
        }
    }

    /// Whether the client's TCP stream ends inside a message that names
    /// where it goes: an HTTP/1.x request's head, a SOCKS request, or the
    /// ClientHello a proxy's tunnel begins with.
    pub fn head_partial(&self) -> bool {
        match &self.requests {
            StreamRead::Http(r) => r.partial(),
            StreamRead::Socks(s) => s.partial(),
            _ => false,
        }
    }

    /// Reads the next bytes of the client's TCP stream, in order: as
    /// HTTP/1.x requests when the stream began like one
    /// ([`crate::wire::http::RequestStream`]: every request's host, a
    /// forward proxy's target, a CONNECT tunnel's ClientHello), or as a
    /// SOCKS handshake when it began with a greeting
    /// ([`crate::wire::socks::SocksStream`]: the request's target, the
    /// tunnel's ClientHello). Names the flow did not know are kept in
    /// [`FlowCore::hosts`]; addresses (a target given as one, or an IP
    /// literal for a host) become the flow's [`FlowCore::peers`], judged
    /// like a relay's.
    pub fn learn_stream_hosts(&mut self, data: &[u8]) -> StreamHosts {
        use crate::wire::socks::{SocksStream, Target, greeting};
        if matches!(self.requests, StreamRead::Unseen) {
            if data.is_empty() {
                return StreamHosts::default();
            }
            self.requests = if crate::wire::http::may_start_request(data) {
                StreamRead::Http(Box::default())
            } else if greeting(data).is_some() || matches!(data, [4 | 5]) {
                StreamRead::Socks(Box::new(SocksStream::new()))
            } else {
                StreamRead::No
            };
        }
        let mut names: Vec<String> = Vec::new();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut udp_relay = false;
        let partial = match &mut self.requests {
            StreamRead::Http(r) => {
                r.feed(data, |n| names.push(n.to_owned()));
                let partial = r.partial();
                if r.lost() {
                    self.requests = StreamRead::No;
                }
                partial
            }
            StreamRead::Socks(s) => {
                s.feed(data, |t| match t {
                    Target::Name(n) => names.push(n.to_owned()),
                    Target::Addr(a) => addrs.push(a),
                });
                let partial = s.partial();
                udp_relay = s.udp_associate();
                if s.done() {
                    self.requests = StreamRead::No;
                }
                partial
            }
            _ => return StreamHosts::default(),
        };
        let mut new = false;
        for n in names {
            // An IP literal is an address to reach, not a name.
            match n.trim_start_matches('[').trim_end_matches(']').parse() {
                // (the server's own address is no one else to reach)
                Ok(ip) if ip == self.server.ip() => {}
                Ok(ip) => new |= self.learn_peer(SocketAddr::new(ip, 0)),
                Err(_) => new |= self.learn_host(&n),
            }
        }
        for a in addrs {
            new |= self.learn_peer(a);
        }
        StreamHosts {
            new,
            partial,
            udp_relay,
        }
    }

    /// Reads a datagram the app sent to its SOCKS 5 proxy's UDP relay
    /// ([`FlowCore::socks_relay`]) for the target its header names
    /// ([`crate::wire::socks::udp_target`]): a name joins
    /// [`FlowCore::hosts`], an address [`FlowCore::peers`]; whether it is
    /// new.
    pub fn learn_relay_target(&mut self, payload: &[u8]) -> bool {
        use crate::wire::socks::{Target, udp_target};
        if !self.socks_relay {
            return false;
        }
        match udp_target(payload) {
            Some(Target::Name(n)) => self.learn_host(n),
            Some(Target::Addr(a)) => self.learn_peer(a),
            None => false,
        }
    }

    /// Whether the client's TCP stream ends inside a TURN message.
    pub fn turn_partial(&self) -> bool {
        matches!(&self.turn, TurnRead::Reading(t) if t.partial())
    }

    /// Reads the next bytes of the client's TCP stream, in order, as TURN
    /// over TCP when the stream began with a STUN message
    /// ([`crate::wire::rtc::TurnStream`]), and keeps the new peers the
    /// messages they complete name.
    pub fn learn_stream_peers(&mut self, data: &[u8]) -> StreamPeers {
        self.learn_stream_peers_with(data, |_, _, _| false)
    }

    /// Whether the client's TCP stream is read as TURN over TCP.
    pub fn reads_turn(&self) -> bool {
        matches!(self.turn, TurnRead::Reading(_))
    }

    /// As [`FlowCore::learn_stream_peers`], each peer not known before
    /// first offered to `refuse` (the flow, the peer, the stream offset of
    /// the message naming it), as in [`FlowCore::learn_peers_with`]: the
    /// stream ranges of the messages naming a refused peer are in
    /// [`StreamPeers::refused`], to be taken out of the stream.
    pub fn learn_stream_peers_with(
        &mut self,
        data: &[u8],
        mut refuse: impl FnMut(&FlowCore, SocketAddr, u64) -> bool,
    ) -> StreamPeers {
        if matches!(self.turn, TurnRead::Unseen) {
            self.turn = if crate::wire::rtc::stun_start(data) {
                TurnRead::Reading(Box::default())
            } else {
                TurnRead::No
            };
        }
        let mut out = StreamPeers {
            news: PeerNews::Nothing,
            partial: false,
            refused: Vec::new(),
        };
        // The framer is taken out while its messages are read, then put
        // back (unless the stream stopped looking like TURN).
        let TurnRead::Reading(mut t) = std::mem::take(&mut self.turn) else {
            self.turn = TurnRead::No;
            return out;
        };
        t.feed(data, |m, start| {
            match self.learn_peers_with(m, |core, peer| refuse(core, peer, start)) {
                PeerNews::TooMany => out.news = PeerNews::TooMany,
                PeerNews::New if out.news != PeerNews::TooMany => out.news = PeerNews::New,
                PeerNews::Refused => {
                    out.refused.push(start..start + m.len() as u64);
                    if out.news == PeerNews::Nothing {
                        out.news = PeerNews::Refused;
                    }
                }
                _ => {}
            }
        });
        out.partial = t.partial();
        self.turn = if t.lost() {
            TurnRead::No
        } else {
            TurnRead::Reading(t)
        };
        out
    }

    /// Reads a datagram the app sent for the TURN peers it names
    /// ([`crate::wire::rtc::turn_peers`]) and keeps the new ones.
    pub fn learn_peers(&mut self, payload: &[u8]) -> PeerNews {
        self.learn_peers_with(payload, |_, _| false)
    }

    /// As [`FlowCore::learn_peers`], each peer not known before first
    /// offered to `refuse` (the flow with the peers it has, the new one):
    /// a peer it refuses is kept among [`FlowCore::refused_peers`]. A
    /// message naming a refused peer, new or known, is
    /// [`PeerNews::Refused`] (it must not leave), whatever else it names.
    pub fn learn_peers_with(
        &mut self,
        payload: &[u8],
        mut refuse: impl FnMut(&FlowCore, SocketAddr) -> bool,
    ) -> PeerNews {
        let Some(found) = crate::wire::rtc::turn_peers(payload) else {
            return PeerNews::Nothing;
        };
        if found.more {
            return PeerNews::TooMany;
        }
        let mut news = PeerNews::Nothing;
        for peer in found.iter() {
            if self.refused_peers.iter().any(|p| p.ip() == peer.ip()) {
                news = PeerNews::Refused;
            } else if self.peers.iter().any(|p| p.ip() == peer.ip()) {
            } else if refuse(self, peer) {
                if self.refused_peers.len() == MAX_PEERS {
                    self.refused_peers.remove(0);
                }
                self.refused_peers.push(peer);
                news = PeerNews::Refused;
            } else {
                self.learn_peer(peer);
                if news == PeerNews::Nothing {
                    news = PeerNews::New;
                }
            }
        }
        news
    }

    /// The refused peers become the flow's own (a message naming one
    /// reached, or will reach, its server): the flow is judged with them.
    pub fn admit_refused(&mut self) {
        for p in std::mem::take(&mut self.refused_peers) {
            self.learn_peer(p);
        }
    }

    /// Keeps `peer` among the addresses the flow's server is asked to
    /// reach, unless its address is known; whether it is new.
    fn learn_peer(&mut self, peer: SocketAddr) -> bool {
        if self.peers.iter().any(|p| p.ip() == peer.ip()) {
            return false;
        }
        if self.peers.len() == MAX_PEERS {
            self.peers.remove(0);
        }
        self.peers.push(peer);
        true
    }
}

/// One flow, from its initiator's point of view.
#[derive(Debug)]
pub struct Flow {
    /// IP protocol (6 TCP, 17 UDP, 1/58 ICMP).
    pub proto: u8,
    /// What every flow has: endpoints, classifier, leaks, names, last
    /// packet, packets and bytes.
    pub core: FlowCore,
    /// First packet, ns.
    pub first_ns: u64,
    /// Whether the flow's own server name went into the name map.
    name_shared: bool,
    scan: [ScanState; 2],
    /// A TCP flow's two directions put back in order (up, down).
    order: Option<Box<[reorder::StreamOrder; 2]>>,
}

impl Flow {
    /// The policy's verdict on the flow, from the facts the live engine
    /// judges with ([`dataplane::judge_parts`]): the same packets give the
    /// same verdict in an audit and in the firewall.
    pub fn judge<'p>(&self, policy: &'p Policy, intel: &Intel) -> Verdict<'p> {
        self.judge_relayed(policy, intel).0
    }

    /// The verdict ([`Flow::judge`]) and the peers the live engine would
    /// have refused, each with the verdict that refused it: a TURN message
    /// (over UDP or TCP) naming a peer the rules block is dropped while
    /// the relay goes on for its other peers ([`dataplane::peer_refusal`]),
    /// so the flow is judged with the peers let through; for a SOCKS
    /// relay's or a proxy's targets, every peer counts in the flow's
    /// verdict. (Live, a TURN message over TCP whose head had to leave
    /// before its end came, slower than the sniffing time, cuts the flow
    /// instead: a capture's timing is not read for that.)
    pub fn judge_relayed<'p>(
        &self,
        policy: &'p Policy,
        intel: &Intel,
    ) -> (Verdict<'p>, Vec<(SocketAddr, Verdict<'p>)>) {
        let t = match self.proto {
            6 => PTransport::Tcp,
            1 | 58 => PTransport::Icmp,
            _ => PTransport::Udp,
        };
        // A relay's peers are admitted one by one, as live, where a message
        // naming a refused peer is dropped: TURN over UDP and TCP (not a
        // SOCKS relay, nor a proxy's target).
        let turn = match t {
            PTransport::Udp => !self.core.socks_relay,
            PTransport::Tcp => self.core.reads_turn(),
            _ => false,
        };
        if turn && !self.core.peers.is_empty() {
            let (accepted, refused) = dataplane::admit_peers(policy, intel, t, &self.core);
            let v = dataplane::judge_with_peers(policy, intel, t, &self.core, &accepted);
            return (v, refused);
        }
        (
            dataplane::judge_parts(policy, intel, t, &self.core),
            Vec::new(),
        )
    }
}

/// An unordered flow key.
type Key = (u8, SocketAddr, SocketAddr);

fn key(proto: u8, a: SocketAddr, b: SocketAddr) -> Key {
    if a <= b { (proto, a, b) } else { (proto, b, a) }
}

/// Counters of what was not inspected.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Packets inspected.
    pub packets: u64,
    /// Packets not parsed, by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// IP fragments received.
    pub fragments: u64,
    /// Datagrams reassembled from fragments (then inspected whole).
    pub reassembled: u64,
    /// Other IP protocols (GRE, ESP, ...), counted per packet.
    pub other_protocols: u64,
    /// New flows refused because the table was full.
    pub refused_flows: u64,
    /// DNS answers whose names were tied to their addresses.
    pub dns_answers: u64,
    /// TCP segments whose bytes had all been seen (retransmissions).
    pub tcp_retransmitted: u64,
    /// TCP segments that came before the bytes ahead of them and waited.
    pub tcp_early: u64,
    /// Gaps in TCP streams stepped over: bytes the capture never had.
    pub tcp_gaps: u64,
}

/// Early TCP bytes all flows together hold at most while they wait for
/// the gaps before them ([`reorder`]); past it they are inspected at once.
pub const REORDER_BUDGET: usize = 32 * 1024 * 1024;

/// The flow table and the classifier, driven one packet at a time.
#[derive(Debug)]
pub struct Inspector {
    flows: Vec<Flow>,
    index: HashMap<Key, usize>,
    max_flows: usize,
    leak: Option<LeakDetector>,
    hits: Vec<LeakHit>,
    frags: frag::Reassembler,
    /// Address → names, from the DNS answers and the flows in the capture,
    /// as the live engine learns them.
    names: dns::NameMap,
    /// Flows by server address, to give names learned later to the flows
    /// already open (bounded by the flow table).
    by_server: HashMap<IpAddr, Vec<usize>>,
    /// What was not inspected, and why.
    pub counters: Counters,
    /// What early TCP segments may still hold ([`REORDER_BUDGET`]).
    reorder_budget: usize,
    /// The SOCKS 5 UDP relays the capture's clients asked for.
    relays: SocksRelays,
    /// One packet's TCP bytes in stream order.
    ordered: Vec<u8>,
}

impl Inspector {
    /// An inspector holding at most `max_flows` flows (new ones beyond are
    /// refused and counted), scanning cleartext for `leak` identifiers.
    pub fn new(max_flows: usize, leak: Option<LeakDetector>) -> Self {
        Self {
            flows: Vec::new(),
            index: HashMap::new(),
            max_flows,
            leak,
            hits: Vec::new(),
            frags: frag::Reassembler::new(frag::FragLimits::default()),
            names: dns::NameMap::default(),
            by_server: HashMap::new(),
            relays: SocksRelays::default(),
            counters: Counters::default(),
            reorder_budget: REORDER_BUDGET,
            ordered: Vec::new(),
        }
    }

    /// The flows, in order of first packet.
    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    fn drop(&mut self, d: Drop) {
        *self
            .counters
            .drops
            .entry(DropReason::Packet(d))
            .or_insert(0) += 1;
    }

    /// Inspects one IP packet seen at `ts_ns`; returns the flow's index.
    /// A packet that carries another (GTP-U, CAPWAP data, IP in IP: see
    /// [`crate::wire::packet::carried_ip`]) is inspected as the packet inside, as nDPI does:
    /// a capture taken on a tunnel's path is about the flows inside it.
    pub fn on_ip(&mut self, bytes: &[u8], ts_ns: u64) -> Option<usize> {
        self.on_ip_inner(crate::wire::packet::innermost_ip(bytes), ts_ns)
    }

    fn on_ip_inner(&mut self, bytes: &[u8], ts_ns: u64) -> Option<usize> {
        self.counters.packets += 1;
        let p = match parse_ip(bytes) {
            Ok(p) => p,
            Err(d) => {
                self.drop(d);
                return None;
            }
        };
        // Fragments are only ever inspected as whole datagrams.
        if p.fragment.is_some() {
            self.counters.fragments += 1;
            return match self.frags.push(&p, ts_ns) {
                frag::FragResult::Complete(whole) => {
                    self.counters.reassembled += 1;
                    self.counters.packets -= 1;
                    self.on_ip(&whole, ts_ns)
                }
                frag::FragResult::Pending => None,
                frag::FragResult::Dropped(why) => {
                    *self
                        .counters
                        .drops
                        .entry(DropReason::Fragment(why))
                        .or_insert(0) += 1;
                    None
                }
            };
        }
        let mut tcp_seq = None;
        let (carrier, sport, dport, payload, syn) = match p.transport {
            Transport::Tcp {
                sport,
                dport,
                flags,
                payload,
                seq,
                ack,
            } => {
                let acked = (flags & tcp_flags::ACK != 0).then_some(ack);
                tcp_seq = Some((seq, flags & tcp_flags::SYN != 0, acked));
                (
                    Carrier::Tcp,
                    sport,
                    dport,
                    payload,
                    Some(flags & (tcp_flags::SYN | tcp_flags::ACK)),
                )
            }
            Transport::Udp {
                sport,
                dport,
                payload,
            } => (Carrier::Udp, sport, dport, payload, None),
            Transport::Icmp {
                echo_id, payload, ..
            } => {
                let id = echo_id.unwrap_or(0);
                (
                    if echo_id.is_some() {
                        Carrier::IcmpEcho
                    } else {
                        Carrier::IcmpOther
                    },
                    id,
                    id,
                    payload,
                    None,
                )
            }
            Transport::Fragment(_) => {
                // Unreachable: fragments were handled above.
                self.drop(Drop::Malformed);
                return None;
            }
            Transport::Other { .. } => {
                self.counters.other_protocols += 1;
                return None;
            }
        };
        let src = SocketAddr::new(p.src, sport);
        let dst = SocketAddr::new(p.dst, dport);
        let k = key(p.proto, src, dst);
        let idx = match self.index.get(&k) {
            Some(&i) => i,
            None => {
                if self.flows.len() >= self.max_flows {
                    self.counters.refused_flows += 1;
                    return None;
                }
                // The initiator: SYN's sender, SYN-ACK's receiver; else the
                // side on the higher (ephemeral) port when the other is a
                // service port, else the first sender.
                let reply = match syn {
                    Some(f) if f == tcp_flags::SYN | tcp_flags::ACK => true,
                    Some(tcp_flags::SYN) => false,
                    _ => sport < 1024 && dport >= 1024,
                };
                let (client, server) = if reply { (dst, src) } else { (src, dst) };
                let ctx = FlowCtx {
                    names: self
                        .names
                        .names(server.ip(), ts_ns)
                        .map(str::to_owned)
                        .collect(),
                    app: None,
                    uid: None,
                };
                self.by_server
                    .entry(server.ip())
                    .or_default()
                    .push(self.flows.len());
                let mut core = FlowCore::new(client, server, ctx, ts_ns);
                core.socks_relay = p.proto == 17 && self.relays.has(client.ip(), server.ip());
                self.flows.push(Flow {
                    proto: p.proto,
                    core,
                    first_ns: ts_ns,
                    name_shared: false,
                    scan: Default::default(),
                    order: (p.proto == 6).then(Default::default),
                });
                self.index.insert(k, self.flows.len() - 1);
                self.flows.len() - 1
            }
        };
        let f = &mut self.flows[idx];
        let dir = if src == f.core.client {
            Dir::Up
        } else {
            Dir::Down
        };
        f.core.last_ns = ts_ns;
        match dir {
            Dir::Up => f.core.volume.up(bytes.len()),
            Dir::Down => f.core.volume.down(bytes.len()),
        }
        // A TCP segment's bytes in stream order: retransmissions once,
        // early segments when the gap before them fills. A segment that
        // acknowledges bytes the other way which the capture never had
        // (the gap before that side's early segments) gives those early
        // segments first: their gap will not fill.
        let mut ordered = std::mem::take(&mut self.ordered);
        ordered.clear();
        if let (Some((_, _, Some(ack))), Some(order)) = (tcp_seq, f.order.as_deref_mut()) {
            let back = 1 - dir as usize;
            if order[back].acked_past_gap(ack) {
                order[back].flush(&mut self.reorder_budget, |b| ordered.extend_from_slice(b));
                self.counters.tcp_gaps += 1;
                let (back_dir, back_port) = match dir {
                    Dir::Up => (Dir::Down, f.core.server.port()),
                    Dir::Down => (Dir::Up, f.core.client.port()),
                };
                self.inspect(idx, carrier, back_dir, back_port, &ordered, ts_ns);
                ordered.clear();
            }
        }
        let f = &mut self.flows[idx];
        let payload = match (tcp_seq, f.order.as_deref_mut()) {
            (Some((seq, syn, _)), Some(order)) => {
                let pushed =
                    order[dir as usize].push(seq, syn, payload, &mut self.reorder_budget, |b| {
                        ordered.extend_from_slice(b)
                    });
                let c = &mut self.counters;
                c.tcp_retransmitted += u64::from(pushed.duplicate);
                c.tcp_early += u64::from(pushed.early);
                c.tcp_gaps += u64::from(pushed.gap_skipped);
                &ordered[..]
            }
            _ => payload,
        };
        self.inspect(idx, carrier, dir, sport, payload, ts_ns);
        self.ordered = ordered;
        Some(idx)
    }

    /// The capture ended: the TCP bytes still waiting for a gap before them
    /// (a segment the capture lost) are read now, over the gap.
    pub fn finish(&mut self, ts_ns: u64) {
        let mut ordered = std::mem::take(&mut self.ordered);
        for idx in 0..self.flows.len() {
            for dir in [Dir::Up, Dir::Down] {
                let Some(order) = self.flows[idx].order.as_deref_mut() else {
                    break;
                };
                ordered.clear();
                if order[dir as usize].flush(&mut self.reorder_budget, |b| {
                    ordered.extend_from_slice(b);
                }) {
                    self.counters.tcp_gaps += 1;
                    let sport = match dir {
                        Dir::Up => self.flows[idx].core.client.port(),
                        Dir::Down => self.flows[idx].core.server.port(),
                    };
                    self.inspect(idx, Carrier::Tcp, dir, sport, &ordered, ts_ns);
                }
            }
        }
        self.ordered = ordered;
    }

    /// What one packet's payload (a TCP segment's: the stream's next bytes)
    /// tells about flow `idx`: its protocol, class and name, a relay's
    /// peers, the names of later HTTP requests and QUIC connections,
    /// identifier leaks, and the names a DNS answer ties to
    /// addresses.
    fn inspect(
        &mut self,
        idx: usize,
        carrier: Carrier,
        dir: Dir,
        sport: u16,
        payload: &[u8],
        ts_ns: u64,
    ) {
        let f = &mut self.flows[idx];
        // Later QUIC connections on the flow, as live (before the
        // classifier, which reads the first).
        if (carrier, dir) == (Carrier::Udp, Dir::Up) {
            let _ = f.core.learn_quic_names(payload);
        }
        f.core.sniffer.on_payload(
            carrier,
            dir,
            (f.core.client.port(), f.core.server.port()),
            payload,
            ts_ns,
        );
        // The peers a TURN relay is asked to reach, as live (TCP: the
        // stream in order).
        match (carrier, dir) {
            (Carrier::Udp, Dir::Up) => {
                let _ = f.core.learn_peers(payload);
                let _ = f.core.learn_relay_target(payload);
            }
            (Carrier::Tcp, Dir::Up) if !payload.is_empty() => {
                let _ = f.core.learn_stream_peers(payload);
                // And every request's host and a proxy's targets, as live.
                if f.core.learn_stream_hosts(payload).udp_relay {
                    let (c, s) = (f.core.client.ip(), f.core.server.ip());
                    self.relays.add(c, s);
                }
            }
            _ => {}
        }
        scan_leaks(
            self.leak.as_ref(),
            f.core.sniffer.encrypted,
            &mut f.scan[dir as usize],
            payload,
            &mut self.hits,
            &mut f.core.leaks,
        );
        if !f.name_shared
            && let Some(n) = &f.core.sniffer.server_name
        {
            // TLS, QUIC, HTTP and SD-RTN names feed the map, as live.
            f.name_shared = true;
            let (ip, n) = (f.core.server.ip(), n.clone());
            let limit = dns::DnsLimits::default().names;
            self.names
                .learn(ip, &n, ts_ns + dns::SEEN_NAME_TTL_NS, limit);
        }
        if carrier == Carrier::Udp
            && sport == 53
            && let Some(a) = dns::seen_answer(payload)
        {
            self.dns_answer(&a, ts_ns);
        }
    }

    /// A DNS answer in the capture: its names go with its addresses, for
    /// the flows to come and those already open, as the live engine ties
    /// them ([`dns::learn_answer`]).
    fn dns_answer(&mut self, a: &dns::SeenAnswer, ts_ns: u64) {
        self.counters.dns_answers += 1;
        let limit = dns::DnsLimits::default().names;
        let ttl = a.ttl_s.max(dns::MIN_TTL);
        dns::learn_answer(&mut self.names, &a.chain, &a.addrs, ttl, ts_ns, limit);
        for ip in &a.addrs {
            for &i in self.by_server.get(ip).into_iter().flatten() {
                let ctx = &mut self.flows[i].core.ctx;
                for n in &a.chain {
                    if !ctx.names.contains(n) {
                        ctx.names.push(n.clone());
                    }
                }
            }
        }
    }
}

/// Scans one payload of a flow for registered identifiers, keeping at most
/// [`MAX_LEAKS_PER_FLOW`] findings in `leaks`; flows known to be encrypted
/// are not scanned. Returns whether a new finding was added. `hits` is
/// scratch space.
pub(crate) fn scan_leaks(
    det: Option<&LeakDetector>,
    encrypted: Option<bool>,
    scan: &mut ScanState,
    payload: &[u8],
    hits: &mut Vec<LeakHit>,
    leaks: &mut Vec<LeakHit>,
) -> bool {
    let Some(det) = det else { return false };
    if payload.is_empty() || encrypted == Some(true) || leaks.len() >= MAX_LEAKS_PER_FLOW {
        return false;
    }
    hits.clear();
    det.scan(scan, payload, hits);
    let room = MAX_LEAKS_PER_FLOW - leaks.len();
    let before = leaks.len();
    leaks.extend(hits.drain(..).take(room));
    leaks.len() > before
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP segment from 192.0.2.10:40000 to 198.51.100.7:443 (or
    /// back), sequence number `seq`, `flags`, carrying `payload`.
    fn segment(up: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        segment_acking(up, seq, 1, flags, payload)
    }

    fn segment_acking(up: bool, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (a, b) = (([192, 0, 2, 10], 40_000u16), ([198, 51, 100, 7], 443u16));
        let (src, dst) = if up { (a, b) } else { (b, a) };
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&u16::try_from(40 + payload.len()).unwrap().to_be_bytes());
        ip.extend_from_slice(&src.0);
        ip.extend_from_slice(&dst.0);
        ip.extend_from_slice(&src.1.to_be_bytes());
        ip.extend_from_slice(&dst.1.to_be_bytes());
        ip.extend_from_slice(&seq.to_be_bytes());
        ip.extend_from_slice(&ack.to_be_bytes());
        ip.extend_from_slice(&[0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]);
        ip.extend_from_slice(payload);
        ip
    }

    /// A ClientHello in three segments, captured out of order and with a
    /// retransmission, as lossy networks deliver them: read whole, named.
    #[test]
    fn tcp_segments_are_read_in_stream_order() {
        let hello = crate::wire::tls::client_hello_record("video.example.org");
        let (a, b) = (20, 50);
        let isn = 7_000u32;
        let mut insp = Inspector::new(16, None);
        let data = |at: usize, to: usize| segment(true, isn + 1 + at as u32, 0x18, &hello[at..to]);
        for p in [
            segment(true, isn, tcp_flags::SYN, b""),
            segment(false, 90_000, tcp_flags::SYN | tcp_flags::ACK, b""),
            data(b, hello.len()),
            data(0, a),
            data(0, a),
            data(a, b),
        ] {
            insp.on_ip(&p, 1_000);
        }
        let f = &insp.flows()[0];
        assert_eq!(
            f.core.sniffer.server_name.as_deref(),
            Some("video.example.org")
        );
        assert_eq!(
            f.core.sniffer.protocol,
            Some(crate::classify::Protocol::Tls)
        );
        let c = &insp.counters;
        assert_eq!((c.tcp_early, c.tcp_retransmitted, c.tcp_gaps), (1, 1, 0));
    }

    /// Picked up mid-stream, a byte before the client's request never
    /// captured (nDPI 4.2's `anyconnect-vpn.pcap` has this): the request
    /// waits, and the server's answer, which acknowledges past the gap,
    /// gives it first: the flow is named by the request, not taken for a
    /// nameless HTTP response.
    #[test]
    fn an_acknowledgement_past_a_gap_gives_what_waits_behind_it() {
        let mut insp = Inspector::new(16, None);
        let (c, s) = (1_674_094_720u32, 441_411_054u32);
        let get = b"GET /success.txt HTTP/1.1\r\nHost: detectportal.example.org\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsuccess\n";
        let end = c + 1 + u32::try_from(get.len()).unwrap();
        for p in [
            segment_acking(true, c, s, 0x10, b""),
            segment_acking(true, c + 1, s, 0x18, get),
            segment_acking(false, s, end, 0x18, ok),
        ] {
            insp.on_ip(&p, 0);
        }
        let f = &insp.flows()[0];
        assert_eq!(
            f.core.sniffer.server_name.as_deref(),
            Some("detectportal.example.org")
        );
        assert_eq!((insp.counters.tcp_early, insp.counters.tcp_gaps), (1, 1));
    }

    /// A segment the capture lost: what came after it waits, and is read
    /// when the capture ends (an identifier in it is still found).
    #[test]
    fn bytes_behind_a_gap_the_capture_never_fills_are_read_at_its_end() {
        let det = LeakDetector::new(&[("id".to_owned(), "secret-123".to_owned())]).ok();
        let mut insp = Inspector::new(16, det);
        let isn = 500u32;
        insp.on_ip(&segment(true, isn, tcp_flags::SYN, b""), 0);
        insp.on_ip(&segment(true, isn + 1, 0x18, b"POST /x HTTP/1.1\r\n"), 0);
        // 10 bytes lost, then the identifier.
        insp.on_ip(&segment(true, isn + 29, 0x18, b"id=secret-123&x=1"), 0);
        assert!(insp.flows()[0].core.leaks.is_empty(), "waits for the gap");
        insp.finish(1);
        assert_eq!(insp.counters.tcp_gaps, 1);
        assert!(!insp.flows()[0].core.leaks.is_empty(), "read at the end");
        assert_eq!(insp.reorder_budget, REORDER_BUDGET, "all given back");
    }

    proptest::proptest! {
        /// Whatever a capture holds, inspection never panics and the flow
        /// table stays within its bound.
        #[test]
        fn arbitrary_packets_never_panic(packets in proptest::collection::vec((0u8..3, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..160)), 1..60)) {
            let det = LeakDetector::new(&[("id".to_owned(), "secret-123".to_owned())]).ok();
            let mut insp = Inspector::new(5, det);
            for (i, (kind, body)) in packets.iter().enumerate() {
                let pkt: Vec<u8> = match kind {
                    0 => body.clone(),
                    k => {
                        let proto = if *k == 1 { 6 } else { 17 };
                        let mut ip = vec![0x45, 0];
                        ip.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
                        ip.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0, 192, 0, 2, (i % 9) as u8, 198, 51, 100, 1]);
                        ip.extend_from_slice(body);
                        ip
                    }
                };
                insp.on_ip(&pkt, i as u64 * 1_000_000);
                proptest::prop_assert!(insp.flows().len() <= 5);
            }
        }
    }
}
