//! UDP and ICMP echo flows: judged at the first datagram and again while
//! the classifier learns, relayed datagram by datagram.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Open,
    Blocked(BlockMode),
}

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
        f.core.last_ns = now_ns;
        let carrier = if icmp {
            Carrier::IcmpEcho
        } else {
            Carrier::Udp
        };
        f.core.sniffer.on_payload(
            carrier,
            Dir::Up,
            (client.port(), server.port()),
            payload,
            now_ns,
        );
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
        // Judge at the first datagram, and again on new evidence.
        if new || new_leak || !f.core.sniffer.is_done() || self.needs_rejudge(&key) {
            let policy = self.policy.current();
            let f = &self.flows[&key];
            if let Some(n) = &f.core.sniffer.server_name {
                // QUIC, SD-RTN and other names feed the same map as DNS.
                let until = now_ns + dns::SEEN_NAME_TTL_NS;
                self.names
                    .learn(f.core.server.ip(), n, until, self.cfg.dns.names);
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
        }
        self.counters.cut += 1;
        self.out.push_back(Output::Close { flow: id });
        self.out.push_back(Output::Event(Box::new(ev)));
    }

    /// STUN flows can turn out to carry media after they are decided:
    /// judge them again on every packet.
    pub(super) fn needs_rejudge(&self, key: &(bool, SocketAddr, SocketAddr)) -> bool {
        self.flows
            .get(key)
            .is_some_and(|f| f.core.sniffer.protocol == Some(crate::classify::Protocol::Stun))
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
            self.out.push_back(Output::ToTun(pkt));
        }
    }

    /// An echo reply that arrived upstream for the flow.
    pub fn handle_echo_reply(&mut self, flow: FlowId, seq: u16, data: &[u8], now_ns: u64) {
        let Some(f) = self.open_flow(flow, now_ns) else {
            return;
        };
        if let Some(pkt) =
            reply::echo_reply(f.core.server.ip(), f.core.client.ip(), f.ident, seq, data)
        {
            self.out.push_back(Output::ToTun(pkt));
        }
    }
}

impl FlowState {
    /// A decision event about this UDP or echo flow.
    pub(super) fn event(&self, kind: EventKind, v: Option<&Verdict<'_>>) -> Event {
        let proto = if self.icmp {
            FlowProto::Icmp
        } else {
            FlowProto::Udp
        };
        Event::of_flow(kind, self.id, proto, &self.core, v)
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
