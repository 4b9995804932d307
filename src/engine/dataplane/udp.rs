//! UDP and ICMP echo flows: judged at the first datagram and again while
//! the classifier learns, relayed datagram by datagram.

use super::*;
use crate::engine::QuicNews;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Open,
    /// The class is not known yet and could decide a block: datagrams are
    /// held (in [`FlowState::held`]), nothing is opened upstream, until the
    /// classifier is done, [`HOLD_DATAGRAMS`] or [`HOLD_BYTES`] are held,
    /// or [`HOLD_NS`] passed since the first.
    Holding {
        since_ns: u64,
    },
    /// Held for an answer to an `ask` rule's question: datagrams are held
    /// as while [`State::Holding`] (echo requests are dropped), nothing is
    /// opened upstream, until [`FlowCore::answer`] is set.
    Asking,
    Blocked(BlockMode),
}

/// Datagrams of one flow held before its class is known, at most (as many
/// as the real-time detector needs to decide).
pub(super) const HOLD_DATAGRAMS: usize = crate::classify::REALTIME_PACKETS as usize;
/// Bytes of one flow's held datagrams, at most.
pub(super) const HOLD_BYTES: usize = 64 * 1024;
/// Bytes held by all flows together, at most; past it a flow is decided
/// with what is known.
pub(super) const HOLD_BYTES_TOTAL: usize = 4 * 1024 * 1024;
/// How long a flow's datagrams are held at most (one second).
pub(super) const HOLD_NS: u64 = 1_000_000_000;

#[derive(Debug)]
pub(super) struct FlowState {
    pub(super) id: FlowId,
    /// Endpoints, classifier, leaks, names, last packet.
    pub(super) core: FlowCore,
    pub(super) icmp: bool,
    /// Echo identifier the app used (ICMP).
    pub(super) ident: u16,
    pub(super) scan: ScanState,
    pub(super) state: State,
    /// Datagrams held while the class is decided (see [`State::Holding`]).
    pub(super) held: Vec<Vec<u8>>,
    /// The class the flow was last judged with: a change (STUN or QUIC
    /// turning out to be media) judges it again.
    pub(super) judged_class: Option<crate::classify::Traffic>,
    /// An open flow's later QUIC connection whose hello is still coming:
    /// since when its Initials are held (in [`FlowState::held`]), nothing
    /// of them sent, until the hello is whole and judged or
    /// [`HOLD_NS`] passed.
    pub(super) later_since: Option<u64>,
}

impl Engine {
    #[expect(
        clippy::too_many_arguments,
        reason = "one internal call site per transport"
    )]
    pub(super) fn on_datagram(
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
            if self.refused_without_route(raw, server.ip(), now_ns) {
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
                    core: FlowCore::new(client, server, ctx, now_ns),
                    icmp,
                    ident: client.port(),
                    scan: ScanState::default(),
                    state: State::Open,
                    held: Vec::new(),
                    judged_class: None,
                    later_since: None,
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
        if new {
            f.core.socks_relay = self.socks_relays.has(client.ip(), server.ip());
        }
        f.core.last_ns = now_ns;
        f.core.volume.up(raw.len());
        // A later QUIC connection's Initials (before the classifier, which
        // reads the first connection's).
        let later = if icmp {
            QuicNews::default()
        } else {
            f.core.learn_quic_names(payload)
        };
        let carrier = if icmp {
            Carrier::IcmpEcho
        } else {
            Carrier::Udp
        };
        let named = f.core.sniffer.server_name.is_some();
        f.core.sniffer.on_payload(
            carrier,
            Dir::Up,
            (client.port(), server.port()),
            payload,
            now_ns,
        );
        // A TURN message naming a peer the rules block does not leave; the
        // relay goes on for the other peers (it forwards only to peers it
        // was given permission for).
        let mut refusals = Vec::new();
        let news = if icmp {
            PeerNews::Nothing
        } else {
            // The rules are loaded only for a peer not seen before (most
            // datagrams name none).
            let (rules, intel, id) = (&self.policy, &self.intel, f.id);
            f.core.learn_peers_with(payload, |core, peer| {
                let policy = rules.current();
                let refused =
                    peer_refusal(&policy, intel, PTransport::Udp, core, &core.peers, peer);
                if let Some(v) = &refused {
                    let mut ev =
                        Event::of_flow(EventKind::PeerRefused, id, FlowProto::Udp, core, Some(v));
                    ev.peers = vec![peer.to_string()];
                    refusals.push(ev);
                }
                refused.is_some()
            })
        };
        for ev in refusals {
            self.out.push_back(Output::Event(Box::new(ev)));
        }
        let new_peer = match news {
            PeerNews::TooMany => return self.drop_reason(DropReason::TurnTooManyPeers),
            PeerNews::Refused => return self.drop_reason(DropReason::TurnPeerRefused),
            news => news == PeerNews::New,
        };
        // A SOCKS 5 UDP relay's datagram: the target its header names.
        let new_peer = new_peer | (!icmp && f.core.learn_relay_target(payload));
        let new_leak = crate::engine::scan_leaks(
            self.leak.load().as_deref(),
            f.core.sniffer.encrypted,
            &mut f.scan,
            payload,
            &mut self.hits,
            &mut f.core.leaks,
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
        if f.state == State::Asking {
            let held: usize = f.held.iter().map(Vec::len).sum();
            if !icmp
                && f.held.len() < HOLD_DATAGRAMS
                && held + payload.len() <= HOLD_BYTES
                && self.held_bytes + payload.len() <= HOLD_BYTES_TOTAL
            {
                f.held.push(payload.to_vec());
                self.held_bytes += payload.len();
            } else {
                self.counters.held_dropped += 1;
            }
            return;
        }
        if let State::Holding { since_ns } = f.state {
            let held: usize = f.held.iter().map(Vec::len).sum();
            let fits = f.held.len() < HOLD_DATAGRAMS
                && held + payload.len() <= HOLD_BYTES
                && self.held_bytes + payload.len() <= HOLD_BYTES_TOTAL;
            if fits {
                f.held.push(payload.to_vec());
                self.held_bytes += payload.len();
            } else {
                self.counters.held_dropped += 1;
            }
            let due = !fits
                || f.core.sniffer.is_done()
                || new_leak
                || f.held.len() >= HOLD_DATAGRAMS
                || now_ns.saturating_sub(since_ns) >= HOLD_NS;
            if due {
                self.release_held(key, Some(raw));
            }
            return;
        }
        // A later QUIC connection's hello still coming: its Initials wait
        // for the rest (bounded; the flow's other datagrams go on).
        if later.waits {
            let held: usize = f.held.iter().map(Vec::len).sum();
            if f.held.len() < HOLD_DATAGRAMS
                && held + payload.len() <= HOLD_BYTES
                && self.held_bytes + payload.len() <= HOLD_BYTES_TOTAL
            {
                f.held.push(payload.to_vec());
                self.held_bytes += payload.len();
                if f.later_since.is_none() {
                    f.later_since = Some(now_ns);
                    self.wake_at(now_ns + HOLD_NS);
                }
            } else {
                self.counters.held_dropped += 1;
            }
            return;
        }
        // Its hello whole now: what was held of it is judged with it.
        let later_held = if later.completes && f.later_since.take().is_some() {
            let held = std::mem::take(&mut f.held);
            self.held_bytes -= held.iter().map(Vec::len).sum::<usize>();
            held
        } else {
            Vec::new()
        };
        // Judge at the first datagram, and again on new evidence (a name
        // the flow's first hello gave only now among it).
        let class_changed = f.core.sniffer.class != f.judged_class;
        let name_learned = !named && f.core.sniffer.server_name.is_some();
        if new
            || new_leak
            || new_peer
            || later.new
            || !f.core.sniffer.is_done()
            || class_changed
            || name_learned
        {
            if let Some(f) = self.flows.get_mut(&key) {
                f.judged_class = f.core.sniffer.class;
            }
            let policy = self.policy.current();
            let Some(f) = self.flows.get_mut(&key) else {
                return;
            };
            if let Some(n) = f.core.server_own_name() {
                // QUIC, SD-RTN and other names feed the same map as DNS.
                let until = now_ns + dns::SEEN_NAME_TTL_NS;
                self.names
                    .learn(f.core.server.ip(), n, until, self.cfg.dns.names);
            }
            let mut verdict = self.asks.resolve(judge(&policy, &self.intel, f), &f.core);
            let (id, proto) = (f.id, f.proto());
            let held_now = new
                && asking!(self).hold_or_settle(
                    ask::Held::Datagram(key),
                    id,
                    proto,
                    &mut f.core,
                    &mut verdict,
                    now_ns,
                );
            if held_now {
                f.state = State::Asking;
                if !icmp && self.held_bytes + payload.len() <= HOLD_BYTES_TOTAL {
                    f.held.push(payload.to_vec());
                    self.held_bytes += payload.len();
                } else {
                    self.counters.held_dropped += 1;
                }
                return;
            }
            // An ask rule that newly matches an open flow does not hold
            // it: it goes on (only new flows are asked about).
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
                    f.core.note_block(&ev);
                }
                if new {
                    self.counters.blocked += 1;
                } else {
                    self.counters.cut += 1;
                    self.out.push_back(Output::Close { flow: id });
                }
                self.counters.held_dropped += later_held.len() as u64;
                if mode == BlockMode::Reject
                    && let Some(r) = reply::unreachable(raw)
                {
                    self.out.push_back(Output::ToTun(r));
                }
                self.out.push_back(Output::Event(Box::new(ev)));
                return;
            }
            if new
                && !icmp
                && !self.flows[&key].core.sniffer.is_done()
                && ((policy.needs_payload() && self.flows[&key].core.sniffer.quic_hello_coming())
                    || self.class_could_block(&policy, &self.flows[&key]))
                && self.held_bytes + payload.len() <= HOLD_BYTES_TOTAL
            {
                // The class, or the name the rest of a QUIC hello gives,
                // could still block it: hold, open nothing.
                self.held_bytes += payload.len();
                if let Some(f) = self.flows.get_mut(&key) {
                    f.state = State::Holding { since_ns: now_ns };
                    f.held.push(payload.to_vec());
                }
                self.counters.held += 1;
                self.wake_at(now_ns + HOLD_NS);
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
        for payload in later_held {
            self.out.push_back(Output::UdpSend { flow: id, payload });
        }
        if !icmp && self.flows[&key].core.sniffer.unconfirmed_rtp() {
            let policy = self.policy.current();
            if self.class_could_block(&policy, &self.flows[&key]) {
                return self.drop_reason(DropReason::UnconfirmedRtp);
            }
        }
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

    /// Whether some traffic class would make the policy block this flow
    /// (so its first datagrams wait for the class).
    fn class_could_block(&self, policy: &crate::policy::Policy, f: &FlowState) -> bool {
        let names = fact_names(&f.core);
        let facts = facts(PTransport::Udp, &f.core, &names);
        policy.class_could_block(&self.intel, &facts, &|v| self.asks.resolve(v, &f.core))
    }

    /// Decides a flow whose datagrams were held (for its class, or for an
    /// answer): blocked, they are dropped (the app told with `raw`'s
    /// unreachable under `reject`); allowed, the flow opens upstream and
    /// they leave in order; an `ask` rule's unanswered question holds them
    /// on.
    pub(super) fn release_held(&mut self, key: DatagramKey, raw: Option<&[u8]>) {
        let policy = self.policy.current();
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        let held = std::mem::take(&mut f.held);
        // A QUIC hello not whole by the end of the hold: judged by the name
        // its Initials so far hold, if they do.
        f.core.sniffer.name_from_partial_hello();
        f.core.sniffer.end_hold();
        f.judged_class = f.core.sniffer.class;
        let held_len = held.iter().map(Vec::len).sum::<usize>();
        self.held_bytes -= held_len;
        let mut v = self.asks.resolve(judge(&policy, &self.intel, f), &f.core);
        let (id, proto, now_ns) = (f.id, f.proto(), f.core.last_ns);
        let held_now = asking!(self).hold_or_settle(
            ask::Held::Datagram(key),
            id,
            proto,
            &mut f.core,
            &mut v,
            now_ns,
        );
        if held_now {
            self.held_bytes += held_len;
            f.state = State::Asking;
            f.held = held;
            return;
        }
        let f = &self.flows[&key];
        if let Action::Block(mode) = v.action {
            let ev = f.event(EventKind::Blocked, Some(&v));
            self.counters.blocked += 1;
            self.counters.held_dropped += held.len() as u64;
            if let Some(f) = self.flows.get_mut(&key) {
                f.state = State::Blocked(mode);
                f.core.note_block(&ev);
            }
            if mode == BlockMode::Reject
                && let Some(r) = raw.and_then(reply::unreachable)
            {
                self.out.push_back(Output::ToTun(r));
            }
            self.out.push_back(Output::Event(Box::new(ev)));
            return;
        }
        let ev = f.event(EventKind::Opened, Some(&v));
        let (dst, icmp) = (f.core.server, f.icmp);
        if let Some(f) = self.flows.get_mut(&key) {
            f.state = State::Open;
        }
        self.counters.opened += 1;
        self.out.push_back(Output::Event(Box::new(ev)));
        if icmp {
            // Echo requests were not kept: the next one goes out.
            return;
        }
        self.out.push_back(Output::UdpOpen { flow: id, dst });
        for payload in held {
            self.out.push_back(Output::UdpSend { flow: id, payload });
        }
    }

    /// An open flow's later QUIC connection whose hello did not come whole
    /// within [`HOLD_NS`]: its Initials held go on, in order (the flow is
    /// judged as it stands: a hello never whole names nothing).
    pub(super) fn send_later_held(&mut self, key: DatagramKey) {
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        if f.later_since.take().is_none() {
            return;
        }
        let held = std::mem::take(&mut f.held);
        self.held_bytes -= held.iter().map(Vec::len).sum::<usize>();
        if f.state != State::Open {
            self.counters.held_dropped += held.len() as u64;
            return;
        }
        let id = f.id;
        for payload in held {
            self.out.push_back(Output::UdpSend { flow: id, payload });
        }
    }

    /// Judges an open UDP or echo flow again (new rules, a name learned for
    /// its server); cuts it if it is now blocked.
    pub(super) fn rejudge_datagram_flow(&mut self, key: DatagramKey) {
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
            f.core.note_block(&ev);
            // A later connection's Initials held: never sent now.
            f.later_since = None;
            let held = std::mem::take(&mut f.held);
            self.held_bytes -= held.iter().map(Vec::len).sum::<usize>();
            self.counters.held_dropped += held.len() as u64;
        }
        self.counters.cut += 1;
        self.out.push_back(Output::Close { flow: id });
        self.out.push_back(Output::Event(Box::new(ev)));
    }

    /// The open UDP or echo flow `flow`, its idle clock refreshed; `None`
    /// (counted when the id is unknown) for blocked or closed flows.
    pub(super) fn open_flow(&mut self, flow: FlowId, now_ns: u64) -> Option<&mut FlowState> {
        let Some(key) = self.ids.get(&flow).copied() else {
            self.drop_reason(DropReason::UnknownFlow);
            return None;
        };
        let f = self
            .flows
            .get_mut(&key)
            .filter(|f| f.state == State::Open)?;
        f.core.last_ns = now_ns;
        Some(f)
    }

    /// A datagram that arrived on the flow's upstream socket.
    pub fn handle_udp_from_upstream(&mut self, flow: FlowId, payload: &[u8], now_ns: u64) {
        let Some(f) = self.open_flow(flow, now_ns) else {
            return;
        };
        f.core.sniffer.on_payload(
            Carrier::Udp,
            Dir::Down,
            (f.core.client.port(), f.core.server.port()),
            payload,
            now_ns,
        );
        if let Some(pkt) = reply::udp_packet(f.core.server, f.core.client, payload) {
            f.core.volume.down(pkt.len());
            self.out.push_back(Output::ToTun(pkt));
        }
    }

    /// The flow's upstream socket reported that its destination cannot be
    /// reached (the server's or a router's ICMP error, as the kernel gave
    /// it: `ECONNREFUSED` and the like, see [`Unreachable::of_io`]). The app
    /// gets the same error from the server's address, quoting a datagram of
    /// the flow, so a connected socket fails at once as it would without
    /// geowall (a resolver moves on to its next server, QUIC falls back)
    /// instead of waiting for its timeout. The flow stays open: UDP has no
    /// connection to end, and the app decides.
    pub fn handle_udp_unreachable(&mut self, flow: FlowId, why: Unreachable, _now_ns: u64) {
        let Some(f) = self.open_datagram_flow(flow, false) else {
            return;
        };
        let quoted = reply::udp_packet(f.core.client, f.core.server, &[]);
        if let Some(pkt) = quoted.and_then(|q| reply::icmp_unreachable(&q, why)) {
            f.core.volume.down(pkt.len());
            self.counters.udp_unreachable += 1;
            self.out.push_back(Output::ToTun(pkt));
        }
    }

    /// An ICMP error the upstream ping socket reported about the flow's
    /// echo request `seq` (its host or network unreachable, as a router on
    /// the way said): the app gets the same error, quoting that request,
    /// as `ping` shows without geowall ("Destination Host Unreachable")
    /// instead of a silence.
    pub fn handle_echo_unreachable(
        &mut self,
        flow: FlowId,
        seq: u16,
        why: Unreachable,
        _now_ns: u64,
    ) {
        let Some(f) = self.open_datagram_flow(flow, true) else {
            return;
        };
        let (app, server) = (f.core.client.ip(), f.core.server.ip());
        let quoted = reply::echo_packet(app, server, true, f.ident, seq, &[]);
        if let Some(pkt) = quoted.and_then(|q| reply::icmp_unreachable(&q, why)) {
            f.core.volume.down(pkt.len());
            self.counters.echo_unreachable += 1;
            self.out.push_back(Output::ToTun(pkt));
        }
    }

    /// The open UDP (`icmp` false) or echo flow `flow`, for an error its
    /// upstream socket reported (an unknown flow is a counted drop).
    fn open_datagram_flow(&mut self, flow: FlowId, icmp: bool) -> Option<&mut FlowState> {
        let Some(key) = self.ids.get(&flow).copied() else {
            self.drop_reason(DropReason::UnknownFlow);
            return None;
        };
        self.flows
            .get_mut(&key)
            .filter(|f| f.state == State::Open && f.icmp == icmp)
    }

    /// An echo reply that arrived upstream for the flow.
    pub fn handle_echo_reply(&mut self, flow: FlowId, seq: u16, data: &[u8], now_ns: u64) {
        let Some(f) = self.open_flow(flow, now_ns) else {
            return;
        };
        if let Some(pkt) =
            reply::echo_reply(f.core.server.ip(), f.core.client.ip(), f.ident, seq, data)
        {
            f.core.volume.down(pkt.len());
            self.out.push_back(Output::ToTun(pkt));
        }
    }
}

impl FlowState {
    /// A decision event about this UDP or echo flow.
    pub(super) fn event(&self, kind: EventKind, v: Option<&Verdict<'_>>) -> Event {
        Event::of_flow(kind, self.id, self.proto(), &self.core, v)
    }

    /// UDP or echo.
    pub(super) fn proto(&self) -> FlowProto {
        if self.icmp {
            FlowProto::Icmp
        } else {
            FlowProto::Udp
        }
    }
}

pub(super) fn judge<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    f: &FlowState,
) -> Verdict<'p> {
    let t = if f.icmp {
        PTransport::Icmp
    } else {
        PTransport::Udp
    };
    judge_parts(policy, intel, t, &f.core)
}
