//! The one place a flow's facts are built for the policy: the live engine
//! (UDP, echo, TCP) and the audit's inspector judge with it.

use super::*;

/// The names a flow's facts carry: the one its payload named (SNI, Host,
/// QUIC, SD-RTN), then those its address was learned with.
pub fn fact_names<'a>(sn: &'a Sniffer, ctx: &'a FlowCtx) -> Vec<&'a str> {
    sn.server_name
        .as_deref()
        .into_iter()
        .chain(ctx.names.iter().map(String::as_str))
        .collect()
}

/// The policy's facts about a flow: the one place they are built, for the
/// live engine and the audit alike. `names` comes from [`fact_names`].
pub fn facts<'a>(
    transport: PTransport,
    server: SocketAddr,
    sn: &'a Sniffer,
    leaks: &[LeakHit],
    ctx: &'a FlowCtx,
    names: &'a [&'a str],
) -> Facts<'a> {
    Facts {
        dst: Some(server.ip()),
        port: (transport != PTransport::Icmp).then_some(server.port()),
        transport: Some(transport),
        names,
        traffic: sn.class,
        protocol: sn.protocol.map(|p| p.name()),
        encrypted: match sn.encryption() {
            Encryption::Encrypted => Some(true),
            Encryption::Cleartext => Some(false),
            Encryption::Unknown => None,
        },
        leak: !leaks.is_empty(),
        app: ctx.app.as_deref(),
    }
}

/// The verdict on a flow's facts (see [`facts`]).
pub fn judge_parts<'p>(
    policy: &'p crate::policy::Policy,
    intel: &Intel,
    transport: PTransport,
    server: SocketAddr,
    sn: &Sniffer,
    leaks: &[LeakHit],
    ctx: &FlowCtx,
) -> Verdict<'p> {
    let names = fact_names(sn, ctx);
    policy.evaluate(intel, &facts(transport, server, sn, leaks, ctx, &names))
}
