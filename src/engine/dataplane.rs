//! The sans-IO engine: packets from the TUN side and results from upstream
//! in, with the time; packets for the TUN side, instructions for the
//! driver and events out. No clock, file or socket in here.
//!
//! Call order (as in quinn-proto): feed input with [`Engine::handle_tun`],
//! [`Engine::handle_udp_from_upstream`], [`Engine::handle_echo_reply`] and
//! [`Engine::handle_timeout`]; after each, drain [`Engine::poll_output`];
//! ask [`Engine::poll_timeout`] when to call `handle_timeout` next.
//!
//! This version handles UDP and ICMP/ICMPv6 echo. **No byte before the
//! verdict:** a UDP flow's first datagram is classified and judged before
//! the driver is asked to open anything upstream; later evidence (a
//! reclassification, a leaked identifier) is judged again and can cut an
//! open flow. TCP termination (smoltcp) is not in this version: TCP packets
//! are counted as `tcp-not-handled` and dropped.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use super::frag::{FragLimits, FragResult, Reassembler};
use super::reply;
use crate::classify::leak::{LeakDetector, LeakHit, ScanState};
use crate::classify::{Carrier, Dir, Encryption, Sniffer};
use crate::intel::jurisdiction::Intel;
use crate::policy::{Action, BlockMode, Facts, PolicyHandle, Transport as PTransport, Verdict};
use crate::wire::packet::{Transport, parse_ip};

/// A flow's identity towards the driver.
pub type FlowId = u64;

/// Limits and timeouts, with defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Flows at most (default 65,536); new ones beyond are refused.
    pub max_flows: usize,
    /// A UDP flow idle this long is closed (default 60 s).
    pub udp_idle_ns: u64,
    /// An echo flow idle this long is closed (default 30 s).
    pub icmp_idle_ns: u64,
    /// Fragment reassembly limits.
    pub frag: FragLimits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            udp_idle_ns: 60_000_000_000,
            icmp_idle_ns: 30_000_000_000,
            frag: FragLimits::default(),
        }
    }
}

/// What a decision event records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// `opened`, `blocked` (at the first packet), `cut` (an open flow
    /// blocked by later evidence), `closed`.
    pub kind: &'static str,
    /// The flow.
    pub flow: FlowId,
    /// `udp` or `icmp`.
    pub proto: &'static str,
    /// The app's side.
    pub client: String,
    /// The destination.
    pub server: String,
    /// The traffic class.
    pub class: &'static str,
    /// The application protocol.
    pub protocol: &'static str,
    /// The server name, if known.
    pub server_name: Option<String>,
    /// Encryption status.
    pub encrypted: Encryption,
    /// `allow` or `block`.
    pub action: &'static str,
    /// The deciding rule.
    pub rule: Option<String>,
    /// The layer and country that made it match (`vendor:CN`).
    pub layer: Option<String>,
    /// Identifier labels seen in cleartext.
    pub leaks: Vec<String>,
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
    /// Close the flow's upstream socket.
    Close {
        /// The flow.
        flow: FlowId,
    },
    /// A decision, for logs and the user.
    Event(Event),
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
    last_ns: u64,
}

/// Counters (monotonic).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineCounters {
    /// Packets from the TUN.
    pub tun_packets: u64,
    /// Packets dropped without a flow, by reason.
    pub drops: HashMap<&'static str, u64>,
    /// Flows opened upstream.
    pub opened: u64,
    /// Flows blocked at their first packet.
    pub blocked: u64,
    /// Open flows cut by later evidence.
    pub cut: u64,
    /// New flows refused because the table was full.
    pub refused: u64,
}

/// The engine.
pub struct Engine {
    cfg: EngineConfig,
    intel: Intel,
    policy: Arc<PolicyHandle>,
    leak: Option<LeakDetector>,
    flows: HashMap<(bool, SocketAddr, SocketAddr), FlowState>,
    ids: HashMap<FlowId, (bool, SocketAddr, SocketAddr)>,
    next_id: FlowId,
    frags: Reassembler,
    out: VecDeque<Output>,
    hits: Vec<LeakHit>,
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
        Self {
            frags: Reassembler::new(cfg.frag),
            cfg,
            intel,
            policy,
            leak,
            flows: HashMap::new(),
            ids: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
            hits: Vec::new(),
            counters: EngineCounters::default(),
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Flows in the table.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// When [`Engine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.flows
            .values()
            .map(|f| {
                f.last_ns
                    + if f.icmp {
                        self.cfg.icmp_idle_ns
                    } else {
                        self.cfg.udp_idle_ns
                    }
            })
            .min()
    }

    fn drop_reason(&mut self, r: &'static str) {
        *self.counters.drops.entry(r).or_insert(0) += 1;
    }

    /// Closes idle flows.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.frags.expire(now_ns);
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
                let ev = self.event("closed", &f, None);
                self.out.push_back(Output::Event(ev));
            }
        }
    }

    /// A packet the app sent into the TUN.
    pub fn handle_tun(&mut self, packet: &[u8], now_ns: u64) {
        self.counters.tun_packets += 1;
        let p = match parse_ip(packet) {
            Ok(p) => p,
            Err(d) => return self.drop_reason(d.as_str()),
        };
        if p.fragment.is_some() {
            match self.frags.push(&p, now_ns) {
                FragResult::Complete(whole) => {
                    self.counters.tun_packets -= 1;
                    return self.handle_tun(&whole, now_ns);
                }
                FragResult::Pending => return,
                FragResult::Dropped(why) => return self.drop_reason(why.as_str()),
            }
        }
        match p.transport {
            Transport::Udp {
                sport,
                dport,
                payload,
            } => {
                let client = SocketAddr::new(p.src, sport);
                let server = SocketAddr::new(p.dst, dport);
                self.on_datagram(packet, false, client, server, 0, payload, now_ns);
            }
            Transport::Icmp {
                kind,
                echo_id: Some(ident),
                payload,
                ..
            } if kind == 8 || kind == 128 => {
                let seq = payload
                    .get(2..4)
                    .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
                let data = payload.get(4..).unwrap_or(&[]);
                let client = SocketAddr::new(p.src, ident);
                let server = SocketAddr::new(p.dst, 0);
                self.on_datagram(packet, true, client, server, seq, data, now_ns);
            }
            Transport::Icmp { .. } => self.drop_reason("icmp-not-echo"),
            Transport::Tcp { .. } => self.drop_reason("tcp-not-handled"),
            Transport::Fragment(_) => self.drop_reason("malformed"),
            Transport::Other { .. } => self.drop_reason("other-protocol"),
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
            if self.flows.len() >= self.cfg.max_flows {
                self.counters.refused += 1;
                // Refuse like a block: the app learns at once.
                if let Some(r) = reply::unreachable(raw) {
                    self.out.push_back(Output::ToTun(r));
                }
                return;
            }
            let id = self.next_id;
            self.next_id += 1;
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
                    last_ns: now_ns,
                },
            );
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
        let mut new_leak = false;
        if let Some(det) = &self.leak
            && f.sniffer.encrypted != Some(true)
            && f.leaks.len() < super::MAX_LEAKS_PER_FLOW
        {
            self.hits.clear();
            det.scan(&mut f.scan, payload, &mut self.hits);
            new_leak = !self.hits.is_empty();
            f.leaks.append(&mut self.hits);
        }
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
            let verdict = judge(&policy, &self.intel, f);
            if let Action::Block(mode) = verdict.action {
                let kind = if new { "blocked" } else { "cut" };
                let ev = self.event(kind, &self.flows[&key], Some(&verdict));
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
                self.out.push_back(Output::Event(ev));
                return;
            }
            if new {
                let ev = self.event("opened", &self.flows[&key], Some(&verdict));
                self.counters.opened += 1;
                self.out.push_back(Output::Event(ev));
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

    /// STUN flows can turn out to carry media after they are decided:
    /// judge them again on every packet.
    fn needs_rejudge(&self, key: &(bool, SocketAddr, SocketAddr)) -> bool {
        self.flows
            .get(key)
            .is_some_and(|f| f.sniffer.protocol == Some(crate::classify::Protocol::Stun))
    }

    /// A datagram that arrived on the flow's upstream socket.
    pub fn handle_udp_from_upstream(&mut self, flow: FlowId, payload: &[u8], now_ns: u64) {
        let Some(key) = self.ids.get(&flow).copied() else {
            return self.drop_reason("unknown-flow");
        };
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        if f.state != State::Open {
            return;
        }
        f.last_ns = now_ns;
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
        let Some(key) = self.ids.get(&flow).copied() else {
            return self.drop_reason("unknown-flow");
        };
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        if f.state != State::Open {
            return;
        }
        f.last_ns = now_ns;
        if let Some(pkt) = reply::echo_reply(f.server.ip(), f.client.ip(), f.ident, seq, data) {
            self.out.push_back(Output::ToTun(pkt));
        }
    }

    fn event(&self, kind: &'static str, f: &FlowState, v: Option<&Verdict<'_>>) -> Event {
        Event {
            kind,
            flow: f.id,
            proto: if f.icmp { "icmp" } else { "udp" },
            client: f.client.to_string(),
            server: if f.icmp {
                f.server.ip().to_string()
            } else {
                f.server.to_string()
            },
            class: f.sniffer.class_now().name(),
            protocol: f.sniffer.protocol.map_or("unknown", |p| p.name()),
            server_name: f.sniffer.server_name.clone(),
            encrypted: f.sniffer.encryption(),
            action: match v.map(|v| v.action) {
                Some(Action::Block(_)) => "block",
                _ => "allow",
            },
            rule: v.and_then(|v| v.rule.map(|(_, r)| r.name.clone())),
            layer: v.and_then(|v| v.layer).map(|l| {
                format!(
                    "{}:{}",
                    l.layer.name(),
                    l.country.map_or("unknown".to_owned(), |c| c.to_string())
                )
            }),
            leaks: f.leaks.iter().map(|l| l.label.clone()).collect(),
        }
    }
}

fn judge<'p>(policy: &'p crate::policy::Policy, intel: &Intel, f: &FlowState) -> Verdict<'p> {
    let names: Vec<&str> = f.sniffer.server_name.as_deref().into_iter().collect();
    let facts = Facts {
        dst: Some(f.server.ip()),
        port: (!f.icmp).then_some(f.server.port()),
        transport: Some(if f.icmp {
            PTransport::Icmp
        } else {
            PTransport::Udp
        }),
        names: &names,
        traffic: f.sniffer.class,
        protocol: f.sniffer.protocol.map(|p| p.name()),
        encrypted: match f.sniffer.encryption() {
            Encryption::Encrypted => Some(true),
            Encryption::Cleartext => Some(false),
            Encryption::Unknown => None,
        },
        leak: !f.leaks.is_empty(),
        app: None,
    };
    policy.evaluate(intel, &facts)
}

#[cfg(test)]
mod tests;
