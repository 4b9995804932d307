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
pub fn judge_parts<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    core: &FlowCore,
) -> Verdict<'p> {
    let names = fact_names(core);
    policy.evaluate(intel, &facts(transport, core, &names))
}
