//! DNS: every query the apps send is answered here (from the cache, the
//! resolver, or as blocked), and the answers' names are tied to their
//! addresses for the flows that follow and those already open.

use super::*;

/// Where a DNS answer goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reply {
    /// A UDP datagram from `server` to `client`.
    Udp {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// The local TCP connection with this key.
    Tcp((SocketAddr, SocketAddr)),
}

impl Engine {
    /// A DNS answer tied `names` to `ip` after flows to it were opened:
    /// those flows carry the names from now on and are judged again.
    pub(super) fn names_learned(&mut self, ip: IpAddr, names: &[String], now_ns: u64) {
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
            if f.core.server.ip() == ip && f.state == State::Open && add(&mut f.core.ctx) {
                udp.push(*k);
            }
        }
        for k in udp {
            self.rejudge_datagram_flow(k);
        }
        let mut tcp = Vec::new();
        for (k, f) in &mut self.tcp {
            // Flows still sniffing take the names into their first verdict.
            if f.core.server.ip() == ip
                && !f.silent
                && f.phase != TcpPhase::Blocked
                && add(&mut f.core.ctx)
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

    /// Names the address `ip` was learned with, still valid at `now_ns`.
    pub(super) fn learned_names(&mut self, ip: IpAddr, now_ns: u64) -> Vec<String> {
        self.names.names(ip, now_ns).map(str::to_owned).collect()
    }

    /// A DNS query from the app: answered at once when blocked, cached or
    /// malformed; otherwise sent to the resolver.
    pub(super) fn on_dns(&mut self, payload: &[u8], reply: Reply, now_ns: u64) {
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

    /// RFC 7050: the network's NAT64 prefix, read from the AAAA answer to
    /// `ipv4only.arpa` (an app or the OS asks it to find the prefix): each
    /// address embedding 192.0.0.170 or 192.0.0.171 under an RFC 6052
    /// length gives a prefix, which flows are judged with from then on.
    fn learn_nat64(&mut self, records: &[hickory_proto::rr::Record]) {
        let wka = [
            std::net::Ipv4Addr::new(192, 0, 0, 170),
            std::net::Ipv4Addr::new(192, 0, 0, 171),
        ];
        let mut found = Vec::new();
        for r in records {
            let hickory_proto::rr::RData::AAAA(a) = &r.data else {
                continue;
            };
            for len in crate::intel::world::RFC6052_LENGTHS {
                if crate::intel::world::rfc6052_extract(a.0, len)
                    .is_some_and(|v4| wka.contains(&v4))
                    && let Ok(p) = ipnet::Ipv6Net::new(a.0, len)
                {
                    found.push(p.trunc());
                    break;
                }
            }
        }
        let new: Vec<_> = found
            .into_iter()
            .filter(|p| !self.intel.nat64_prefixes().contains(p))
            .collect();
        if !new.is_empty()
            && let Ok(intel) = self.intel.with_nat64(&new)
        {
            self.counters.nat64_discovered += new.len() as u64;
            self.intel = intel;
        }
    }

    pub(super) fn dns_answer(
        &mut self,
        q: &Question,
        reply: Reply,
        rcode: hickory_proto::op::ResponseCode,
        records: &[hickory_proto::rr::Record],
        age: u32,
        now_ns: u64,
    ) {
        if q.name_text() == "ipv4only.arpa" {
            self.learn_nat64(records);
        }
        let shown = self.routable_only(records, now_ns);
        let policy = self.policy.current();
        let tcp = matches!(reply, Reply::Tcp(_));
        let (bytes, out) = dns::answer(
            q,
            rcode,
            shown.as_deref().unwrap_or(records),
            age,
            &policy,
            &self.intel,
            None,
            tcp,
        );
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

    /// `records` without the addresses (and address hints) the upstream
    /// network cannot reach now ([`Engine::unroutable`]): on a network
    /// with no IPv6, say, an AAAA answer comes back empty and the app
    /// connects over IPv4 at once, as on a host whose resolver asks only
    /// for the families it has (Happy Eyeballs would otherwise try IPv6
    /// first, and a UDP app would wait out its own timeout there). `None`
    /// when every address can be reached (the common case: no copy).
    fn routable_only(
        &mut self,
        records: &[hickory_proto::rr::Record],
        now_ns: u64,
    ) -> Option<Vec<hickory_proto::rr::Record>> {
        use hickory_proto::rr::RData;
        let mut unreachable = |ip: IpAddr| self.unroutable(ip, now_ns).is_some();
        fn goes(
            r: &hickory_proto::rr::Record,
            unreachable: &mut dyn FnMut(IpAddr) -> bool,
        ) -> bool {
            match &r.data {
                RData::A(a) => unreachable(IpAddr::V4(a.0)),
                RData::AAAA(a) => unreachable(IpAddr::V6(a.0)),
                RData::HTTPS(s) => dns::hints(&s.0.svc_params).any(unreachable),
                RData::SVCB(s) => dns::hints(&s.svc_params).any(unreachable),
                _ => false,
            }
        }
        // Each of the first 64 records looked at once (a bit each: no
        // allocation for the common answer, all reachable); any after
        // them, rare, again below.
        let mut mask = 0u64;
        let mut any = false;
        for (i, r) in records.iter().enumerate() {
            if goes(r, &mut unreachable) {
                any = true;
                if i < 64 {
                    mask |= 1 << i;
                }
            }
        }
        if !any {
            return None;
        }
        let mut kept = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let drop = if i < 64 {
                mask & (1 << i) != 0
            } else {
                goes(r, &mut unreachable)
            };
            match &r.data {
                RData::A(_) | RData::AAAA(_) if drop => {}
                _ => {
                    let mut r = r.clone();
                    match &mut r.data {
                        // Only records with a hint to drop are looked at again.
                        RData::HTTPS(s) if drop => {
                            dns::filter_hints(&mut s.0.svc_params, &mut unreachable)
                        }
                        RData::SVCB(s) if drop => {
                            dns::filter_hints(&mut s.svc_params, &mut unreachable)
                        }
                        _ => {}
                    }
                    kept.push(r);
                }
            }
        }
        self.counters.dns_unroutable += 1;
        Some(kept)
    }

    pub(super) fn dns_event(
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
    pub(super) fn dns_reply(&mut self, reply: Reply, bytes: &[u8], now_ns: u64) {
        match reply {
            Reply::Udp { client, server } => {
                if let Some(p) = reply::udp_packet(server, client, bytes) {
                    self.out.push_back(Output::ToTun(p));
                }
            }
            Reply::Tcp(key) => {
                let Some(set) = self.socks.get_mut(&key) else {
                    return self.drop_reason(DropReason::DnsTcpGone);
                };
                let sock = set.socket_mut();
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
