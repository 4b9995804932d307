//! What the engine tells the outside about its decisions: typed events,
//! built in one place, serialised to stable JSON lines (the field names and
//! values `--events` files, `geowall status` and the phone library's
//! callback have always carried).

use serde::Serialize;

use super::dataplane::FlowId;
use super::frag::FragDrop;
use super::{FlowCore, Volume};
use crate::classify::{Encryption, Protocol, Traffic};
use crate::policy::{Action, Answered, Verdict};
use crate::wire::packet::Drop;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EventKind {
    /// A flow was allowed and opened upstream.
    Opened,
    /// A flow was blocked at its first packet (or its first bytes).
    Blocked,
    /// An open flow was blocked by later evidence and cut.
    Cut,
    /// A flow ended (idle, or both sides closed).
    Closed,
    /// A relayed flow's message asking its relay to reach a peer the rules
    /// block was dropped, and later ones naming that peer will be; the
    /// flow goes on with its other peers. The event's `peers` is the
    /// refused peer, its rule and layer what refused it.
    PeerRefused,
    /// A DNS name (or a link of its CNAME chain) is blocked.
    DnsBlocked,
    /// Addresses were removed from a DNS answer.
    DnsFiltered,
    /// A new flow matched an `ask` rule: it is held (nothing leaves) until
    /// the question ([`Event::prompt`]) is answered or times out.
    Asked,
    /// A question was settled (the event's `answered` says how): its held
    /// flows go on or are blocked.
    Answered,
}

impl EventKind {
    /// The kind as it is written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Blocked => "blocked",
            EventKind::Cut => "cut",
            EventKind::Closed => "closed",
            EventKind::PeerRefused => "peer-refused",
            EventKind::DnsBlocked => "dns-blocked",
            EventKind::DnsFiltered => "dns-filtered",
            EventKind::Asked => "asked",
            EventKind::Answered => "answered",
        }
    }
}

/// Whether an event's flow (or name) was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let through.
    Allow,
    /// Stopped.
    Block,
    /// Held until the user answers (an `asked` event).
    Ask,
}

impl Decision {
    /// The decision as it is written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Block => "block",
            Decision::Ask => "ask",
        }
    }
}

/// What kind of flow an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowProto {
    /// A TCP connection.
    Tcp,
    /// A UDP flow.
    Udp,
    /// An ICMP or ICMPv6 echo flow.
    Icmp,
    /// A DNS query, answered by geowall.
    Dns,
}

impl FlowProto {
    /// The name as it is written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowProto::Tcp => "tcp",
            FlowProto::Udp => "udp",
            FlowProto::Icmp => "icmp",
            FlowProto::Dns => "dns",
        }
    }
}

/// Why a packet (or a DNS query) was dropped without a flow decision: a
/// counter key, written in JSON as its [`DropReason::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The IP packet could not be read.
    Packet(Drop),
    /// Fragments were discarded.
    Fragment(FragDrop),
    /// Broadcast or multicast: no one server answers it.
    BroadcastOrMulticast,
    /// ICMP other than an echo request from the app.
    IcmpNotEcho,
    /// An IP protocol other than TCP, UDP and ICMP.
    OtherProtocol,
    /// The driver named a flow the engine does not have.
    UnknownFlow,
    /// The local stack could not take the connection.
    TcpListenFailed,
    /// A DNS query too broken to answer.
    DnsUnreadable,
    /// A malformed DNS query (answered with an error).
    DnsMalformed,
    /// Too many queries waiting for the resolver (answered SERVFAIL).
    DnsPendingFull,
    /// The resolver did not answer in time (answered SERVFAIL).
    DnsResolverTimeout,
    /// An answer for a query no longer waiting.
    DnsUnknownQuery,
    /// A DNS-over-TCP answer whose connection is gone.
    DnsTcpGone,
    /// A DNS-over-TCP app that does not read its answers (reset).
    DnsTcpFull,
    /// A TURN message naming more peers than geowall reads from one
    /// message: it cannot be judged, so it does not leave.
    TurnTooManyPeers,
    /// A TURN message naming a peer the rules refuse (see
    /// [`EventKind::PeerRefused`]): it does not leave, the flow goes on.
    TurnPeerRefused,
    /// On a flow decided as QUIC or a tunnel, a datagram that starts like
    /// an RTP stream no second packet has confirmed yet, where media could
    /// be blocked: dropped, not relayed (if it is the start of a call, none
    /// of it leaves; if it was QUIC with its fixed bit greased, QUIC sends
    /// it again).
    UnconfirmedRtp,
}

impl DropReason {
    /// The reason's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Packet(d) => d.as_str(),
            DropReason::Fragment(f) => f.as_str(),
            DropReason::BroadcastOrMulticast => "broadcast-or-multicast",
            DropReason::IcmpNotEcho => "icmp-not-echo",
            DropReason::OtherProtocol => "other-protocol",
            DropReason::UnknownFlow => "unknown-flow",
            DropReason::TcpListenFailed => "tcp-listen-failed",
            DropReason::DnsUnreadable => "dns-unreadable",
            DropReason::DnsMalformed => "dns-malformed",
            DropReason::DnsPendingFull => "dns-pending-full",
            DropReason::DnsResolverTimeout => "dns-resolver-timeout",
            DropReason::DnsUnknownQuery => "dns-unknown-query",
            DropReason::DnsTcpGone => "dns-tcp-gone",
            DropReason::DnsTcpFull => "dns-tcp-full",
            DropReason::TurnTooManyPeers => "turn-too-many-peers",
            DropReason::TurnPeerRefused => "turn-peer-refused",
            DropReason::UnconfirmedRtp => "unconfirmed-rtp",
        }
    }
}

impl Serialize for DropReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}
display_as_str!(EventKind, Decision, FlowProto, DropReason, Answered);

/// A decision, for logs and the user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The flow (0 for DNS events).
    pub flow: FlowId,
    /// What kind of flow.
    pub proto: FlowProto,
    /// The app's side.
    pub client: String,
    /// The destination (for DNS events, the queried name).
    pub server: String,
    /// The traffic class.
    pub class: Traffic,
    /// The application protocol.
    pub protocol: Protocol,
    /// The server name, if known.
    pub server_name: Option<String>,
    /// Encryption status.
    pub encrypted: Encryption,
    /// Allowed or blocked.
    pub action: Decision,
    /// The deciding rule.
    pub rule: Option<String>,
    /// The layer and country that made it match (`vendor:CN`).
    pub layer: Option<String>,
    /// Identifier labels seen in cleartext.
    pub leaks: Vec<String>,
    /// Names the server's address was learned with (DNS answers, earlier
    /// flows); for DNS events, the queried name and its CNAME chain.
    pub names: Vec<String>,
    /// The app that owns the flow (an executable path, or what the
    /// platform calls it), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The user the app runs as, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// More about a DNS decision (the addresses removed from an answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a flow through a TURN relay: the peers it asked the relay to
    /// reach (from CreatePermission, ChannelBind and Send).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Hosts the connection's later HTTP/1.x requests named, besides
    /// `server_name` (keep-alive, pipelined, through a forward proxy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The peer whose jurisdiction decided a block, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The question an `ask` rule raised (`asked` and `answered` events):
    /// what [`crate::engine::dataplane::Engine::answer`] takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<u64>,
    /// How an `ask` rule's question was settled, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<Answered>,
    /// On `closed` and `cut`: the flow's IP packets and bytes each way
    /// (`packets_up`, `packets_down`, `bytes_up`, `bytes_down`, as the
    /// app's side saw them).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
}

/// What a person calls a server: the name the flow reached it by, else the
/// first name its address was learned with, else the address.
pub(crate) fn destination(server_name: Option<&str>, names: &[String], address: &str) -> String {
    server_name
        .or(names.first().map(String::as_str))
        .unwrap_or(address)
        .to_owned()
}

impl Event {
    /// What a person calls the event's server (see
    /// [`FlowCore::destination`]): for DNS events, the queried name.
    pub fn destination(&self) -> String {
        let address = self
            .server
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| self.server.clone(), |a| a.ip().to_string());
        destination(self.server_name.as_deref(), &self.names, &address)
    }

    /// The event about flow `id`, with the verdict that decided it (none:
    /// an allow without a rule, or a close). Echo flows show the server's
    /// address without a port.
    pub(crate) fn of_flow(
        kind: EventKind,
        id: FlowId,
        proto: FlowProto,
        f: &FlowCore,
        v: Option<&Verdict<'_>>,
    ) -> Self {
        // A blocked or cut flow's close repeats what blocked it.
        let note = f
            .blocked
            .as_deref()
            .filter(|_| kind == EventKind::Closed && v.is_none());
        Self {
            kind,
            flow: id,
            proto,
            client: f.client.to_string(),
            server: if proto == FlowProto::Icmp {
                f.server.ip().to_string()
            } else {
                f.server.to_string()
            },
            class: f.sniffer.class_now(),
            protocol: f.sniffer.protocol.unwrap_or(Protocol::Unknown),
            server_name: f.sniffer.server_name.clone(),
            encrypted: f.sniffer.encryption(),
            action: match v.map(|v| v.action) {
                Some(Action::Block(_)) => Decision::Block,
                Some(Action::Ask(_)) => Decision::Ask,
                _ if note.is_some() => Decision::Block,
                _ => Decision::Allow,
            },
            rule: match note {
                Some(n) => n.rule.clone(),
                None => v.and_then(|v| v.rule.map(|(_, r)| r.name.clone())),
            },
            layer: match note {
                Some(n) => n.layer.clone(),
                None => v.and_then(|v| v.layer).map(|l| l.to_string()),
            },
            leaks: f.leaks.iter().map(|l| l.label.clone()).collect(),
            names: f.ctx.names.clone(),
            app: f.ctx.app.clone(),
            uid: f.ctx.uid,
            detail: None,
            peers: f.peers.iter().map(ToString::to_string).collect(),
            hosts: f.hosts.clone(),
            peer: match note {
                Some(n) => n.peer.clone(),
                None => v.and_then(|v| v.peer).map(|p| p.to_string()),
            },
            prompt: None,
            answered: v.and_then(|v| v.answered),
            volume: matches!(kind, EventKind::Closed | EventKind::Cut).then_some(f.volume),
        }
    }

    /// The event that a question was settled: `allow` or not, `how`, for
    /// `app` reaching `destination`, asked by rule `rule`.
    pub(crate) fn answered(
        prompt: u64,
        q: &super::dataplane::Prompt,
        allow: bool,
        how: Answered,
    ) -> Self {
        Self {
            kind: EventKind::Answered,
            flow: 0,
            proto: q.proto,
            client: String::new(),
            server: q.destination.clone(),
            class: Traffic::Other,
            protocol: Protocol::Unknown,
            server_name: None,
            encrypted: Encryption::Unknown,
            action: if allow {
                Decision::Allow
            } else {
                Decision::Block
            },
            rule: Some(q.rule.clone()),
            layer: None,
            leaks: Vec::new(),
            names: Vec::new(),
            app: q.app.clone(),
            uid: None,
            detail: Some(format!("{} held flow(s)", q.flows)),
            peers: Vec::new(),
            hosts: Vec::new(),
            peer: None,
            prompt: Some(prompt),
            answered: Some(how),
            volume: None,
        }
    }

    /// A DNS decision about `name` (always a block or a filter).
    pub(crate) fn dns(
        kind: EventKind,
        name: String,
        names: Vec<String>,
        rule: Option<String>,
        layer: Option<String>,
        detail: Option<String>,
    ) -> Self {
        Self {
            kind,
            flow: 0,
            proto: FlowProto::Dns,
            client: String::new(),
            server_name: Some(name.clone()),
            server: name,
            class: Traffic::Dns,
            protocol: Protocol::Dns,
            encrypted: Encryption::Cleartext,
            action: Decision::Block,
            rule,
            layer,
            leaks: Vec::new(),
            names,
            app: None,
            uid: None,
            detail,
            peers: Vec::new(),
            hosts: Vec::new(),
            peer: None,
            prompt: None,
            answered: None,
            volume: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON consumers read is pinned: field names, order and values.
    #[test]
    fn event_json_is_stable() {
        let ctx = crate::engine::dataplane::FlowCtx {
            names: vec!["edge.example".into()],
            app: Some("/usr/bin/app".into()),
            uid: Some(1000),
        };
        let core = FlowCore::new(
            "192.0.2.200:40000".parse().expect("addr"),
            "198.51.100.7:5000".parse().expect("addr"),
            ctx,
            0,
        );
        let e = Event::of_flow(EventKind::Opened, 7, FlowProto::Udp, &core, None);
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"kind":"opened","flow":7,"proto":"udp","client":"192.0.2.200:40000","server":"198.51.100.7:5000","class":"other","protocol":"unknown","server_name":null,"encrypted":"unknown","action":"allow","rule":null,"layer":null,"leaks":[],"names":["edge.example"],"app":"/usr/bin/app","uid":1000}"#
        );
        let mut core = core;
        core.volume.up(60);
        core.volume.up(1500);
        core.volume.down(80);
        let c = Event::of_flow(EventKind::Closed, 7, FlowProto::Udp, &core, None);
        assert_eq!(
            serde_json::to_string(&c).expect("json"),
            r#"{"kind":"closed","flow":7,"proto":"udp","client":"192.0.2.200:40000","server":"198.51.100.7:5000","class":"other","protocol":"unknown","server_name":null,"encrypted":"unknown","action":"allow","rule":null,"layer":null,"leaks":[],"names":["edge.example"],"app":"/usr/bin/app","uid":1000,"packets_up":2,"packets_down":1,"bytes_up":1560,"bytes_down":80}"#
        );
        let d = Event::dns(
            EventKind::DnsFiltered,
            "a.example".into(),
            vec!["a.example".into()],
            Some("r".into()),
            Some("geo:CN".into()),
            Some("removed 203.0.113.5".into()),
        );
        assert_eq!(
            serde_json::to_string(&d).expect("json"),
            r#"{"kind":"dns-filtered","flow":0,"proto":"dns","client":"","server":"a.example","class":"dns","protocol":"dns","server_name":"a.example","encrypted":"cleartext","action":"block","rule":"r","layer":"geo:CN","leaks":[],"names":["a.example"],"detail":"removed 203.0.113.5"}"#
        );
        for (k, s) in [
            (EventKind::Blocked, "\"blocked\""),
            (EventKind::Cut, "\"cut\""),
            (EventKind::Closed, "\"closed\""),
            (EventKind::PeerRefused, "\"peer-refused\""),
            (EventKind::DnsBlocked, "\"dns-blocked\""),
        ] {
            assert_eq!(serde_json::to_string(&k).expect("json"), s);
            assert_eq!(format!("\"{k}\""), s);
        }
    }
}
