//! Evaluating a compiled policy on a flow's facts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::rules::{
    Action, BlockMode, CompiledList, DisputedMode, Endpoint, Policy, Rule, Traffic, Transport,
    UnknownMode,
};
use crate::intel::country::Country;
use crate::intel::jurisdiction::{Intel, Jurisdiction, Layer};

/// What is known about a flow when a verdict is asked for. Unknown facts
/// are `None`; a condition on an unknown fact does not match.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Destination port.
    pub port: Option<u16>,
    /// Transport protocol.
    pub transport: Option<Transport>,
    /// Names the destination was reached by (DNS, SNI, Host, ...).
    pub names: &'a [&'a str],
    /// Traffic class.
    pub traffic: Option<Traffic>,
    /// Application protocol the classifier named (`tls`, `sd-rtn`, ...),
    /// used for vendor signatures.
    pub protocol: Option<&'a str>,
    /// Whether the payload is encrypted.
    pub encrypted: Option<bool>,
    /// Whether a registered identifier was seen in cleartext.
    pub leak: bool,
    /// The app identity the platform gave.
    pub app: Option<&'a str>,
    /// The user the app runs as.
    pub uid: Option<u32>,
    /// The peers a TURN relay (the destination) was asked to reach: the
    /// policy judges each too ([`Policy::evaluate`]).
    pub peers: &'a [SocketAddr],
    /// These facts are about one of another flow's peers (`dst` is the
    /// peer): rules with `endpoint = "server"` do not apply, rules with
    /// `endpoint = "peer"` do.
    pub as_peer: bool,
}

impl<'a> Facts<'a> {
    /// What DNS knows: an address (or none yet), names, the app; nothing
    /// about the flow.
    pub fn dns(dst: Option<IpAddr>, names: &'a [&'a str], app: Option<&'a str>) -> Self {
        Self {
            dst,
            port: None,
            transport: None,
            names,
            traffic: None,
            protocol: None,
            encrypted: None,
            leak: false,
            app,
            uid: None,
            peers: &[],
            as_peer: false,
        }
    }

    /// The facts about `peer`, a peer of the relayed flow these facts
    /// describe: the same app, class and transport, the peer's address and
    /// port, no names (none was given for it) and no vendor signature (the
    /// protocol is the relay's).
    pub fn of_peer(&self, peer: SocketAddr) -> Facts<'a> {
        Facts {
            dst: Some(peer.ip()),
            port: Some(peer.port()),
            names: &[],
            protocol: None,
            peers: &[],
            as_peer: true,
            ..*self
        }
    }
}

/// Why a jurisdiction condition matched: the layer, and the country it
/// named (`None` when it matched because the data is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerMatch {
    /// The layer.
    pub layer: Layer,
    /// The country, or `None` for "unknown".
    pub country: Option<Country>,
}

impl LayerMatch {
    /// The country, or `unknown` when the layer matched because the data
    /// is unknown.
    pub fn country_name(&self) -> String {
        self.country
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string())
    }
}

impl std::fmt::Display for LayerMatch {
    /// `layer:COUNTRY`, as events and the phone library show it
    /// (`vendor:CN`, `geo:unknown`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.layer.name(), self.country_name())
    }
}

/// The decision for a flow.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'p> {
    /// Allow or block.
    pub action: Action,
    /// The deciding rule, or `None` for the policy's default.
    pub rule: Option<(usize, &'p Rule)>,
    /// The first `log` rule that matched on the way, if any.
    pub logged_by: Option<(usize, &'p Rule)>,
    /// The jurisdiction layer that made the deciding rule match.
    pub layer: Option<LayerMatch>,
    /// When the flow is blocked for where a TURN relay would take it: the
    /// peer the deciding rule matched (its layer is the peer's).
    pub peer: Option<SocketAddr>,
    /// When an `ask` rule decided: how the answer came (the action is then
    /// the answer's outcome, no longer [`Action::Ask`]).
    pub answered: Option<Answered>,
}

/// How the question of an `ask` rule was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answered {
    /// The user answered for this flow (and the others held with it).
    Once,
    /// The user answered for the app, for as long as geowall runs.
    App,
    /// The user's answer for the app and destination, kept in the local
    /// answers file across restarts.
    Always,
    /// No answer in time: the rule's default applied.
    Timeout,
    /// Too many questions were waiting: the rule's default applied at once.
    Busy,
}

impl Answered {
    /// The name as it is written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Answered::Once => "once",
            Answered::App => "app",
            Answered::Always => "always",
            Answered::Timeout => "timeout",
            Answered::Busy => "busy",
        }
    }
}

impl<'p> Verdict<'p> {
    /// True for a block.
    pub fn is_block(&self) -> bool {
        matches!(self.action, Action::Block(_))
    }

    /// The `ask` rule's terms while the verdict waits for an answer.
    pub fn ask(&self) -> Option<crate::policy::Ask> {
        match self.action {
            Action::Ask(a) => Some(a),
            _ => None,
        }
    }

    /// The verdict an answer (allow or not) to its `ask` rule gives, `how`
    /// it came; unchanged for any other verdict.
    pub fn answer(self, allow: bool, how: Answered) -> Verdict<'p> {
        match self.action {
            Action::Ask(a) => Verdict {
                action: a.outcome(allow),
                answered: Some(how),
                ..self
            },
            _ => self,
        }
    }

    /// A JSON object with stable field names.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "action": self.action.name(),
            "block": match self.action { Action::Block(BlockMode::Drop) => Some("drop"), Action::Block(BlockMode::Reject) => Some("reject"), _ => None },
            "rule": self.rule.map(|(_, r)| r.name.as_str()),
            "rule_index": self.rule.map(|(i, _)| i),
            "logged_by": self.logged_by.map(|(_, r)| r.name.as_str()),
            "layer": self.layer,
            "peer": self.peer,
            "answered": self.answered,
            "ask": self.ask().map(|a| serde_json::json!({
                "default": if a.default_allow { "allow" } else { "block" },
                "timeout": a.timeout_s,
            })),
        })
    }
}

/// Why one rule did or did not match.
#[derive(Debug, Clone, Serialize)]
pub struct RuleTrace {
    /// Rule index.
    pub index: usize,
    /// Rule name.
    pub name: String,
    /// `None` if it matched, else the first condition that failed.
    pub failed: Option<&'static str>,
    /// The jurisdiction layer that matched, when it did.
    pub layer: Option<LayerMatch>,
}

impl Rule {
    /// Checks the rule: `Ok(layer)` if it matches (with the jurisdiction
    /// layer that matched, if it has that condition), `Err(condition)`
    /// naming the first condition that failed.
    /// `lists` are the policy's lists (for the `list` condition).
    pub fn check(
        &self,
        lists: &[CompiledList],
        f: &Facts<'_>,
        j: Option<&Jurisdiction<'_, '_>>,
    ) -> Result<Option<LayerMatch>, &'static str> {
        self.check_with(lists, f, j, false)
    }

    /// Whether the rule has conditions on the flow itself (port, protocol,
    /// class, encryption, leak), which DNS cannot know.
    fn has_flow_conditions(&self) -> bool {
        let c = &self.cond;
        c.protocol.is_some()
            || c.traffic.is_some()
            || c.port.is_some()
            || c.encrypted.is_some()
            || c.leak.is_some()
    }

    /// Whether what the payload tells (class, encryption, leaks, names
    /// from SNI or Host, vendor signatures) could decide if the rule
    /// matches.
    fn may_match_later(&self, lists: &[CompiledList]) -> bool {
        let c = &self.cond;
        c.traffic.is_some()
            || c.encrypted.is_some()
            || c.leak.is_some()
            || c.domain.is_some()
            || c.vendor.is_some()
            || c.list.as_ref().is_some_and(|ls| {
                ls.iter()
                    .filter_map(|&i| lists.get(i))
                    .any(|l| !l.domains.is_empty())
            })
            || c.jurisdiction
                .as_ref()
                .is_some_and(|j| j.layers & Layer::Vendor.bit() != 0)
    }

    /// Whether the rule has conditions on the address (jurisdiction, ASN,
    /// CIDR, or a list with addresses or ASNs).
    fn has_address_conditions(&self, lists: &[CompiledList]) -> bool {
        let c = &self.cond;
        c.jurisdiction.is_some()
            || c.asn.is_some()
            || c.cidr.is_some()
            || c.local.is_some()
            || c.list.as_ref().is_some_and(|ls| {
                ls.iter()
                    .filter_map(|&i| lists.get(i))
                    .any(|l| !l.cidrs.is_empty() || !l.asns.is_empty())
            })
    }

    /// Like [`Rule::check`]; with `any_flow`, conditions on the flow
    /// (port, protocol, class, encryption, leak) count as met.
    fn check_with(
        &self,
        lists: &[CompiledList],
        f: &Facts<'_>,
        j: Option<&Jurisdiction<'_, '_>>,
        any_flow: bool,
    ) -> Result<Option<LayerMatch>, &'static str> {
        let c = &self.cond;
        let need = |ok: bool, what: &'static str| if ok { Ok(()) } else { Err(what) };
        if any_flow {
            return self.check_where(lists, f, j);
        }
        if let Some(p) = c.protocol {
            need(
                f.transport.is_some_and(|t| p & (1 << t as u8) != 0),
                "protocol",
            )?;
        }
        if let Some(t) = c.traffic {
            need(
                f.traffic.is_some_and(|x| t & (1 << x as u8) != 0),
                "traffic",
            )?;
        }
        if let Some(ports) = &c.port {
            need(
                f.port
                    .is_some_and(|p| ports.iter().any(|&(a, b)| a <= p && p <= b)),
                "port",
            )?;
        }
        if let Some(e) = c.encrypted {
            need(f.encrypted == Some(e), "encrypted")?;
        }
        if let Some(l) = c.leak {
            need(f.leak == l, "leak")?;
        }
        self.check_where(lists, f, j)
    }

    /// The conditions on who and where: app, names, addresses, vendor,
    /// jurisdiction.
    fn check_where(
        &self,
        lists: &[CompiledList],
        f: &Facts<'_>,
        j: Option<&Jurisdiction<'_, '_>>,
    ) -> Result<Option<LayerMatch>, &'static str> {
        let c = &self.cond;
        let need = |ok: bool, what: &'static str| if ok { Ok(()) } else { Err(what) };
        match c.endpoint {
            Endpoint::Any => {}
            Endpoint::Server => need(!f.as_peer, "endpoint")?,
            Endpoint::Peer => need(f.as_peer, "endpoint")?,
        }
        if let Some(apps) = &c.app {
            need(
                f.app.is_some_and(|a| apps.iter().any(|x| x.matches(a))),
                "app",
            )?;
        }
        if let Some(uids) = &c.uid {
            need(f.uid.is_some_and(|u| uids.contains(&u)), "uid")?;
        }
        if let Some(d) = &c.domain {
            need(f.names.iter().any(|n| d.matches(n)), "domain")?;
        }
        // An IPv6 address that embeds an IPv4 one (NAT64, 6to4, ...) is
        // also matched by that address: a range of IPv4 servers cannot be
        // reached around a rule through the carrier's NAT64.
        let embedded = j
            .and_then(|j| j.embedded.as_ref().map(|e| IpAddr::V4(e.ip)))
            .or_else(|| {
                f.dst
                    .and_then(crate::intel::world::embedded_ipv4)
                    .map(|(_, v4)| IpAddr::V4(v4))
            });
        let in_set = |contains: &dyn Fn(IpAddr) -> bool| {
            f.dst.is_some_and(contains) || embedded.is_some_and(contains)
        };
        if let Some(set) = &c.cidr {
            need(in_set(&|ip| set.contains(ip)), "cidr")?;
        }
        if let Some(l) = c.local {
            need(f.dst.is_some_and(is_local) == l, "local")?;
        }
        if let Some(asns) = &c.asn {
            need(
                j.and_then(|j| j.asn)
                    .is_some_and(|a| asns.binary_search(&a).is_ok()),
                "asn",
            )?;
        }
        if let Some(vs) = &c.vendor {
            need(
                j.and_then(|j| j.vendor)
                    .is_some_and(|(v, _)| vs.contains(&v.id)),
                "vendor",
            )?;
        }
        if let Some(ls) = &c.list {
            let hit = ls.iter().filter_map(|&i| lists.get(i)).any(|l| {
                f.names.iter().any(|n| l.domains.matches(n))
                    || in_set(&|ip| l.cidrs.contains(ip))
                    || j.and_then(|j| j.asn)
                        .is_some_and(|a| l.asns.binary_search(&a).is_ok())
            });
            need(hit, "list")?;
        }
        match &c.jurisdiction {
            None => Ok(None),
            Some(jc) => {
                let j = j.ok_or("jurisdiction")?;
                let has = |l: Layer| jc.layers & l.bit() != 0;
                for layer in Layer::ALL.into_iter().filter(|l| has(*l)) {
                    let cs = j.countries(layer);
                    let hit = if layer == Layer::Geo && jc.disputed == DisputedMode::All {
                        let mut known = cs.into_iter().flatten().peekable();
                        let first = known.peek().copied();
                        let all = cs.into_iter().flatten().all(|cc| jc.has(cc));
                        first.filter(|_| all)
                    } else {
                        cs.into_iter().flatten().find(|cc| jc.has(*cc))
                    };
                    if let Some(country) = hit {
                        return Ok(Some(LayerMatch {
                            layer,
                            country: Some(country),
                        }));
                    }
                }
                if jc.unknown == UnknownMode::Match {
                    if has(Layer::Geo) && j.geo_unknown() {
                        return Ok(Some(LayerMatch {
                            layer: Layer::Geo,
                            country: None,
                        }));
                    }
                    if has(Layer::Network) && j.network_unknown() {
                        return Ok(Some(LayerMatch {
                            layer: Layer::Network,
                            country: None,
                        }));
                    }
                }
                Err("jurisdiction")
            }
        }
    }
}

impl Policy {
    /// The verdict for a flow. The first `allow`, `block` or `ask` rule
    /// that matches decides (an `ask` verdict waits for an answer, see
    /// [`Verdict::answer`]); `log` rules that match are recorded and
    /// evaluation goes on; with no decision, the default applies.
    ///
    /// A flow through a TURN relay with known peers ([`Facts::peers`]) is
    /// judged for the relay and then for each peer (with
    /// [`Facts::of_peer`]): the first peer the policy blocks blocks the
    /// flow, with [`Verdict::peer`] naming it.
    pub fn evaluate<'p>(&'p self, intel: &Intel, f: &Facts<'_>) -> Verdict<'p> {
        let j = self
            .needs_intel
            .then(|| intel.jurisdiction(&self.catalog, f.dst, f.names, f.protocol));
        let v = self.decide(f, j.as_ref());
        if v.is_block() {
            return v;
        }
        for &peer in f.peers {
            let pf = f.of_peer(peer);
            let pj = self
                .needs_intel
                .then(|| intel.jurisdiction(&self.catalog, pf.dst, &[], None));
            let pv = self.decide(&pf, pj.as_ref());
            if pv.is_block() {
                return Verdict {
                    peer: Some(peer),
                    ..pv
                };
            }
        }
        v
    }

    /// The verdict given an already computed jurisdiction.
    pub fn decide<'p>(&'p self, f: &Facts<'_>, j: Option<&Jurisdiction<'_, '_>>) -> Verdict<'p> {
        let mut logged_by = None;
        for (i, r) in self.rules.iter().enumerate() {
            let Ok(layer) = r.check(&self.lists, f, j) else {
                continue;
            };
            if r.action == Action::Log {
                logged_by.get_or_insert((i, r));
                continue;
            }
            return Verdict {
                action: r.action,
                rule: Some((i, r)),
                logged_by,
                layer,
                peer: None,
                answered: None,
            };
        }
        Verdict {
            action: self.default,
            rule: None,
            logged_by,
            layer: None,
            peer: None,
            answered: None,
        }
    }

    /// True when some rule depends on facts only the payload gives (traffic
    /// class, names, vendor, encryption, leaks, lists of domains): then a
    /// TCP flow's first bytes must be read before it is judged. Otherwise
    /// the address alone decides and the engine can connect at once.
    pub fn needs_payload(&self) -> bool {
        self.rules.iter().any(|r| {
            let c = &r.cond;
            c.traffic.is_some()
                || c.domain.is_some()
                || c.vendor.is_some()
                || c.encrypted.is_some()
                || c.leak.is_some()
                || c.list.as_ref().is_some_and(|ls| ls.iter().any(|&i| self.lists.get(i).is_some_and(|l| !l.domains.is_empty())))
                // The vendor layer can be recognised by name or signature.
                || c.jurisdiction.as_ref().is_some_and(|j| j.layers & Layer::Vendor.bit() != 0)
        })
    }

    /// True when some rule looks at who owns a flow (`app`, `uid`) or asks
    /// the user (whose answers may hold for one program): then a flow's
    /// owner must be known before anything of it is judged, its first
    /// packet included.
    pub fn needs_owner(&self) -> bool {
        self.rules.iter().any(|r| {
            r.cond.app.is_some() || r.cond.uid.is_some() || matches!(r.action, Action::Ask(_))
        })
    }

    /// The verdict at a TCP SYN or a flow's first datagram when the payload
    /// cannot change it: `Some` when a rule that needs nothing from the
    /// payload (no class, encryption or leak condition) blocks `f` (the
    /// address, port, app and names learned before), and no rule before it
    /// could still match once the payload is read and allow the flow; the
    /// policy's default block counts the same way. `None` when the payload
    /// could still matter or the flow is allowed: then it is read first.
    ///
    /// Names only add matches (an SNI or a vendor signature can make a
    /// `domain`, `vendor` or vendor-layer rule match, never unmatch), so a
    /// rule that matches on the names known now still matches later.
    pub fn settled_block<'p>(&'p self, intel: &Intel, f: &Facts<'_>) -> Option<Verdict<'p>> {
        let j = self
            .needs_intel
            .then(|| intel.jurisdiction(&self.catalog, f.dst, f.names, f.protocol));
        let mut logged_by = None;
        for (i, r) in self.rules.iter().enumerate() {
            let c = &r.cond;
            let payload_bound = c.traffic.is_some() || c.encrypted.is_some() || c.leak.is_some();
            let matched = r.check(&self.lists, f, j.as_ref());
            if r.action == Action::Log {
                if matched.is_ok() {
                    logged_by.get_or_insert((i, r));
                }
                continue;
            }
            match matched {
                Ok(layer) if !payload_bound => {
                    return matches!(r.action, Action::Block(_)).then_some(Verdict {
                        action: r.action,
                        rule: Some((i, r)),
                        logged_by,
                        layer,
                        peer: None,
                        answered: None,
                    });
                }
                // It may match (or stop matching) once the payload is read:
                // an allow rule then leaves the outcome open.
                // An ask rule too: the user may allow it.
                _ if matches!(r.action, Action::Allow | Action::Ask(_))
                    && r.may_match_later(&self.lists) =>
                {
                    return None;
                }
                _ => {}
            }
        }
        matches!(self.default, Action::Block(_)).then_some(Verdict {
            action: self.default,
            rule: None,
            logged_by,
            layer: None,
            peer: None,
            answered: None,
        })
    }

    /// Whether the traffic class, once known, could block a flow that
    /// `f` (class not yet known) allows, or make an `ask` rule hold it:
    /// some class would make the policy block it or ask about it (an ask
    /// that `settle` settles, from answers given before, counts as its
    /// answer). The engine then holds the flow's first datagrams until the
    /// class is decided, instead of relaying them.
    pub fn class_could_block(
        &self,
        intel: &Intel,
        f: &Facts<'_>,
        settle: &dyn for<'v> Fn(Verdict<'v>) -> Verdict<'v>,
    ) -> bool {
        const CLASSES: [Traffic; 5] = [
            Traffic::Media,
            Traffic::Ping,
            Traffic::Web,
            Traffic::Dns,
            Traffic::Other,
        ];
        let j = self
            .needs_intel
            .then(|| intel.jurisdiction(&self.catalog, f.dst, f.names, f.protocol));
        CLASSES.iter().any(|&t| {
            let g = Facts {
                traffic: Some(t),
                ..*f
            };
            let v = settle(self.decide(&g, j.as_ref()));
            v.is_block() || v.ask().is_some()
        })
    }

    /// The DNS step for a queried name (and the names of a CNAME chain):
    /// the first rule about names alone (domain, vendor, lists of domains,
    /// perhaps app; nothing about addresses or the flow) that matches
    /// decides; `Some` when that rule blocks.
    pub fn dns_blocks_name<'p>(
        &'p self,
        intel: &Intel,
        names: &[&str],
        app: Option<&str>,
    ) -> Option<&'p Rule> {
        let f = Facts::dns(None, names, app);
        let j = self
            .needs_intel
            .then(|| intel.jurisdiction(&self.catalog, None, names, None));
        self.rules
            .iter()
            .filter(|r| {
                r.action != Action::Log
                    && !r.has_flow_conditions()
                    && !r.has_address_conditions(&self.lists)
                    && (r.cond.domain.is_some() || r.cond.vendor.is_some() || r.cond.list.is_some())
            })
            .find(|r| r.check_with(&self.lists, &f, j.as_ref(), false).is_ok())
            .filter(|r| matches!(r.action, Action::Block(_)))
    }

    /// The DNS step for an answered address reached by `names`: the first
    /// rule with address conditions that matches it, whatever the flow
    /// would be (allow rules that depend on the flow cannot decide here and
    /// are passed over); `Some` (with the layer) when that rule blocks, so
    /// the address is removed from the answer.
    pub fn dns_blocks_address<'p>(
        &'p self,
        intel: &Intel,
        ip: IpAddr,
        names: &[&str],
        app: Option<&str>,
    ) -> Option<(&'p Rule, Option<LayerMatch>)> {
        let f = Facts::dns(Some(ip), names, app);
        let j = self
            .needs_intel
            .then(|| intel.jurisdiction(&self.catalog, Some(ip), names, None));
        for r in &self.rules {
            if r.action == Action::Log
                || !r.has_address_conditions(&self.lists)
                || (r.action == Action::Allow && r.has_flow_conditions())
            {
                continue;
            }
            if let Ok(layer) = r.check_with(&self.lists, &f, j.as_ref(), true) {
                return matches!(r.action, Action::Block(_)).then_some((r, layer));
            }
        }
        None
    }

    /// Every rule's outcome for a flow, for `geowall rules explain`.
    pub fn trace(&self, f: &Facts<'_>, j: Option<&Jurisdiction<'_, '_>>) -> Vec<RuleTrace> {
        self.rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let res = r.check(&self.lists, f, j);
                RuleTrace {
                    index,
                    name: r.name.clone(),
                    failed: res.err(),
                    layer: res.ok().flatten(),
                }
            })
            .collect()
    }
}

/// A policy that can be replaced while flows are evaluated against it:
/// readers never wait, a swap is atomic, and a failed update leaves the
/// running policy untouched (the caller only swaps in what compiled).
/// Each swap bumps a generation number, so that whoever judged flows with
/// the old policy (the engine) can tell and judge them again.
#[derive(Debug)]
pub struct PolicyHandle {
    policy: arc_swap::ArcSwap<Policy>,
    generation: AtomicU64,
}

impl PolicyHandle {
    /// Starts with a policy (generation 0).
    pub fn new(p: Policy) -> Self {
        Self {
            policy: arc_swap::ArcSwap::from_pointee(p),
            generation: AtomicU64::new(0),
        }
    }

    /// The current policy.
    pub fn current(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Replaces the policy.
    pub fn replace(&self, p: Policy) {
        self.policy.store(Arc::new(p));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many times the policy was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Whether an address is on the device or its local network, not the
/// internet: loopback, private (RFC 1918, IPv6 unique local), link-local,
/// multicast and the IPv4 broadcast address; an IPv4-mapped IPv6 address by
/// its IPv4 address. The `local` rule condition.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(IpAddr::V4(v4));
            }
            let s = v6.segments()[0];
            v6.is_loopback()
                || v6.is_multicast()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
        }
    }
}
