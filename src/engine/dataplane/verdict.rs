//! The one place a flow's facts are built for the policy: the live engine
//! (UDP, echo, TCP) and the audit's inspector judge with it, from the
//! [`FlowCore`] every flow embeds.

use super::*;

/// The names a flow's facts carry: the one its payload named (SNI, Host,
/// QUIC, SD-RTN), the hosts its later HTTP/1.x requests named, then those
/// its address was learned with.
pub fn fact_names(core: &FlowCore) -> Vec<&str> {
    core.sniffer
        .server_name
        .as_deref()
        .into_iter()
        .chain(core.hosts.iter().map(String::as_str))
        .chain(core.ctx.names.iter().map(String::as_str))
        .collect()
}

/// The policy's facts about a flow carried over `transport`. `names`
/// comes from [`fact_names`].
pub fn facts<'a>(transport: PTransport, core: &'a FlowCore, names: &'a [&'a str]) -> Facts<'a> {
    let sn = &core.sniffer;
    Facts {
        dst: Some(core.server.ip()),
        port: (transport != PTransport::Icmp).then_some(core.server.port()),
        transport: Some(transport),
        names,
        traffic: sn.class,
        protocol: sn.protocol.map(|p| p.name()),
        encrypted: match sn.encryption() {
            Encryption::Encrypted => Some(true),
            Encryption::Cleartext => Some(false),
            Encryption::Unknown => None,
        },
        leak: !core.leaks.is_empty(),
        app: core.ctx.app.as_deref(),
        uid: core.ctx.uid,
        peers: &core.peers,
        as_peer: false,
    }
}

/// The verdict on a flow (see [`facts`]).
///
/// The names are judged together (the flow's own name with those its
/// address was learned with, so a vendor's name a DNS answer tied to the
/// address counts) and each name the flow asked for itself is also judged
/// by itself, with the flow's other facts: its own name (SNI, Host, QUIC),
/// and every name a later message asked for ([`FlowCore::hosts`]: another
/// HTTP request's host, a proxy's target, a later QUIC connection's SNI).
/// The flow is blocked if any of these is, held for a question if one of
/// them asks and none blocks, and otherwise has the names' verdict
/// together. So a rule allowing a name the address is also known by, or
/// the connection's first name, cannot carry another name through.
pub fn judge_parts<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    core: &FlowCore,
) -> Verdict<'p> {
    judge_with_peers(policy, intel, transport, core, &core.peers)
}

/// Whether a relayed flow's server may not be asked to reach `peer` (a
/// TURN message naming it): the verdict on the flow with the peer added
/// to those it has, when that blocks and the flow without it is not
/// blocked. Such a peer is refused, and its message dropped, while the
/// flow goes on with its other peers; a flow the rules block without it
/// is blocked as a whole instead (`None` here). The live engine and the
/// audit decide with this one function.
pub fn peer_refusal<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    core: &FlowCore,
    accepted: &[SocketAddr],
    peer: SocketAddr,
) -> Option<Verdict<'p>> {
    let mut with: Vec<SocketAddr> = Vec::with_capacity(accepted.len() + 1);
    with.extend_from_slice(accepted);
    with.push(peer);
    let v = judge_with_peers(policy, intel, transport, core, &with);
    if !v.is_block() || judge_with_peers(policy, intel, transport, core, accepted).is_block() {
        return None;
    }
    Some(v)
}

/// The peers of a relayed flow, in the order its messages named them,
/// told apart as the live engine admitted them ([`peer_refusal`], each
/// judged with those accepted before it): (accepted, refused with the
/// verdict that refused it). For the audit, which reads every peer first.
pub fn admit_peers<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    core: &FlowCore,
) -> (Vec<SocketAddr>, Vec<(SocketAddr, Verdict<'p>)>) {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for &p in &core.peers {
        match peer_refusal(policy, intel, transport, core, &accepted, p) {
            Some(v) => refused.push((p, v)),
            None => accepted.push(p),
        }
    }
    (accepted, refused)
}

/// As [`judge_parts`], the flow's peers being `peers`.
pub fn judge_with_peers<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    core: &FlowCore,
    peers: &[SocketAddr],
) -> Verdict<'p> {
    let own = core.sniffer.server_name.as_deref();
    let together: Vec<&str> = own
        .into_iter()
        .chain(core.ctx.names.iter().map(String::as_str))
        .collect();
    let v = policy.evaluate(
        intel,
        &Facts {
            peers,
            ..facts(transport, core, &together)
        },
    );
    if matches!(v.action, Action::Block(_)) {
        return v;
    }
    // The own name alone differs from the names together only when the
    // address has names of its own.
    let alone = own.filter(|_| !core.ctx.names.is_empty());
    let mut asked = None;
    for n in alone
        .into_iter()
        .chain(core.hosts.iter().map(String::as_str))
    {
        let one = [n];
        let w = policy.evaluate(
            intel,
            &Facts {
                peers,
                ..facts(transport, core, &one)
            },
        );
        match w.action {
            Action::Block(_) => return w,
            Action::Ask(_) if asked.is_none() => asked = Some(w),
            _ => {}
        }
    }
    match (&v.action, asked) {
        (Action::Ask(_), _) | (_, None) => v,
        (_, Some(w)) => w,
    }
}
