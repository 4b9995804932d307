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
/// A name a later message asked for ([`FlowCore::hosts`]: another HTTP
/// request's host, a proxy's target, a later QUIC connection's SNI) is a
/// destination of its own, so it is judged by itself, with the flow's
/// other facts: the flow is blocked if its first name (with the names its
/// address was learned with) or any later one is, held for a question if
/// one of them asks and none blocks, and otherwise has its first name's
/// verdict. So a rule that allows one name cannot carry another through
/// on the same connection.
pub fn judge_parts<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    core: &FlowCore,
) -> Verdict<'p> {
    let first: Vec<&str> = core
        .sniffer
        .server_name
        .as_deref()
        .into_iter()
        .chain(core.ctx.names.iter().map(String::as_str))
        .collect();
    let v = policy.evaluate(intel, &facts(transport, core, &first));
    if matches!(v.action, Action::Block(_)) {
        return v;
    }
    let mut asked = None;
    for h in &core.hosts {
        let one = [h.as_str()];
        let w = policy.evaluate(intel, &facts(transport, core, &one));
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
