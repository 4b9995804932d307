//! Classification: which protocol a flow speaks, what kind of traffic it
//! is, which server name it is for, whether it is encrypted, and whether it
//! carries a registered identifier in cleartext.
//!
//! # Rules
//!
//! The first payload packets decide (at most [`SNIFF_PACKETS`] per flow,
//! [`SNIFF_BYTES`] of the client's TCP stream, or a whole TLS ClientHello
//! or HTTP request head that goes on past them: [`sniff_limit`]):
//!
//! | seen | protocol | class | encrypted |
//! |---|---|---|---|
//! | ICMP/ICMPv6, echo or any other type (errors such as port unreachable report reachability) | `icmp` | `ping` | no |
//! | DNS question, or an mDNS/LLMNR answer (UDP or TCP, ports 53, 5353, 5355; over TCP also the server's answer when the question was not captured); on any other UDP port but NetBIOS's 137, a query that reads strictly as one ([`dns::strict_query`]) | `dns` | `dns` | no |
//! | TLS ClientHello (or, mid-stream, TLS records; or an SSL 2.0-format hello) | `tls` | `web`; `dns` on port 853; `other` on mail/directory/SIP ports (465, 587, 993, 995, 636, 989, 990, 5061; Apple push on 5223 is `web`) | yes |
//! | QUIC Initial (v1, v2, drafts 29-34) or gQUIC CHLO; any other QUIC long header by its version ([`quic::long_header`]: Version Negotiation, drafts, Q0xx, T05x, mvfst) | `quic` | `web` | yes |
//! | HTTP/1.x request (or, the request not captured, the server's response) | `http` | `web` | no |
//! | SD-RTN (Agora) | `sd-rtn` | `media` | no (its host name is cleartext) |
//! | STUN, any method (also RFC 4571-framed on TCP): Binding requests are the connectivity checks of a media session (ICE), TURN methods carry it | `stun` | `media` | no |
//! | TURN ChannelData | `turn` | `media` | no |
//! | DTLS | `dtls` | `media` | yes |
//! | RTP / RTCP (also RFC 4571-framed on TCP) | `rtp` / `rtcp` | `media` | no (payload may be SRTP) |
//! | ZRTP | `zrtp` | `media` | no |
//! | Zoom's SFU setup and media encapsulation on UDP 8801-8810, its peer hello on any port ([`rtc::zoom`]) | `zoom` | `media` | yes |
//! | WireGuard: a handshake message, or two transport data messages of one session | `wireguard` | `other` | yes |
//! | OpenVPN: a client's hard reset and the server's answer naming its session | `openvpn` | `other` | yes |
//! | BitTorrent uTP: a SYN and the STATE that answers it ([`utp`]) | `bittorrent` | `other` | by the sampled bytes |
//! | RakNet (games): an offline message with its magic ([`raknet`]); its connected datagrams that follow read as RTP but do not make the flow `media` | `raknet` | `other` | by the sampled bytes |
//! | IKE/ISAKMP on UDP 500 or 4500 ([`tunnel::ike`]), or two ESP packets of one security association on 4500 | `ike` | `other` | yes |
//! | Cisco AnyConnect's DTLS (records with the pre-standard version 0x0100, [`tunnel::anyconnect_dtls`]) | `anyconnect` | `other` | yes |
//! | CAPWAP on UDP 5246/5247 ([`tunnel::capwap`]): a wireless controller's control channel and its access points' frames | `capwap` | `other` | by the sampled bytes |
//! | TFTP: a read or write request to port 69, or a data block and the acknowledgement of that block ([`apps`]) | `tftp` | `other` | by the sampled bytes |
//! | AFS's RX on UDP 7000-7009: a whole RX header ([`apps::rx`]) | `rx` | `other` | by the sampled bytes |
//! | Nintendo PIA (game sessions): its magic ([`apps::nintendo_pia`]) | `nintendo` | `other` | by the sampled bytes |
//! | SIP: a request line `METHOD URI SIP/2.0` or a status line ([`sip::start`]), UDP or TCP, any port; a request names the flow by its URI's host | `sip` | `other` | no |
//! | A SOCKS 5 greeting or SOCKS 4/4a request as the client's first TCP bytes ([`socks::greeting`]); where it asks to go is read by the flow's stream reader | `socks` | `other` | sampled |
//!
//! Encryption status ([`Sniffer::encryption`]): from the protocol (RTP is
//! cleartext unless DTLS was seen in the same flow, then it is SRTP), else
//! from the first [`SAMPLE_BYTES`] payload bytes: mostly printable is
//! cleartext, high byte entropy is encrypted, otherwise unknown.
//!
//! A refinement only ever moves a flow to a class at least as strictly
//! handled (`other` to `media`, never back). UDP that
//! no sniffer recognises is `media` once it shows a real-time shape (at
//! least [`REALTIME_PACKETS`] packets in one direction, at least 90% of
//! them 20-1300 bytes, arriving on average at most 100 ms apart), else
//! `other`: a recognised tunnel, game or transfer is `other` whatever its
//! shape. A flow decided QUIC, WireGuard, OpenVPN, AnyConnect, CAPWAP,
//! TFTP, AFS RX, Nintendo PIA or SIP whose app then sends two RTP packets of one
//! stream, or non-binding STUN with its magic cookie, becomes `media`
//! (none of them sends a packet that starts like one).

pub mod leak;

use serde::{Deserialize, Serialize};

use crate::wire::{apps, dns, http, quic, raknet, rtc, sip, socks, tls, tunnel, utp};

/// Traffic class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// Name resolution.
    Dns,
    /// TLS, QUIC, HTTP.
    Web,
    /// Real-time audio and video.
    Media,
    /// ICMP of every type: echo, and the errors that report reachability.
    Ping,
    /// Anything else.
    Other,
}

impl Traffic {
    /// The class's name.
    pub fn name(self) -> &'static str {
        match self {
            Traffic::Dns => "dns",
            Traffic::Web => "web",
            Traffic::Media => "media",
            Traffic::Ping => "ping",
            Traffic::Other => "other",
        }
    }
}

impl std::fmt::Display for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Whether a flow's payloads are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// TLS, QUIC, DTLS, SRTP (after DTLS), or high-entropy payloads.
    Encrypted,
    /// HTTP, DNS, plain RTP, SD-RTN host names, printable payloads.
    Cleartext,
    /// Not enough to tell.
    Unknown,
}

/// Payload bytes sampled per flow to judge unknown protocols.
pub const SAMPLE_BYTES: usize = 512;

/// Application protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Not recognised (yet).
    Unknown,
    /// TLS.
    Tls,
    /// QUIC.
    Quic,
    /// HTTP/1.x.
    Http,
    /// DNS.
    Dns,
    /// STUN.
    Stun,
    /// TURN ChannelData.
    Turn,
    /// RTP.
    Rtp,
    /// RTCP.
    Rtcp,
    /// DTLS.
    Dtls,
    /// ZRTP.
    Zrtp,
    /// Agora SD-RTN.
    SdRtn,
    /// ICMP/ICMPv6.
    Icmp,
    /// Zoom's media transport (its SFU and peer encapsulations).
    Zoom,
    /// WireGuard.
    #[serde(rename = "wireguard")]
    WireGuard,
    /// OpenVPN.
    #[serde(rename = "openvpn")]
    OpenVpn,
    /// IKE (ISAKMP, IKEv2): IPsec's key exchange, and the ESP that follows
    /// it on port 4500.
    Ike,
    /// BitTorrent's uTP.
    #[serde(rename = "bittorrent")]
    BitTorrent,
    /// RakNet, a game transport.
    #[serde(rename = "raknet")]
    RakNet,
    /// CAPWAP: a wireless controller's control channel and its access
    /// points' tunnelled frames (RFC 5415).
    Capwap,
    /// Cisco AnyConnect's (and OpenConnect's) DTLS VPN tunnel.
    #[serde(rename = "anyconnect")]
    AnyConnect,
    /// TFTP file transfers (RFC 1350).
    Tftp,
    /// AFS's RX remote procedure calls.
    Rx,
    /// Nintendo's PIA game sessions.
    Nintendo,
    /// SIP, a voice-over-IP call's signalling (RFC 3261).
    Sip,
    /// A SOCKS 4, 4a or 5 proxy's handshake (the tunnel it opens follows).
    Socks,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl Protocol {
    /// Every protocol the classifier reports.
    pub const ALL: [Protocol; 26] = [
        Protocol::Unknown,
        Protocol::Tls,
        Protocol::Quic,
        Protocol::Http,
        Protocol::Dns,
        Protocol::Stun,
        Protocol::Turn,
        Protocol::Rtp,
        Protocol::Rtcp,
        Protocol::Dtls,
        Protocol::Zrtp,
        Protocol::SdRtn,
        Protocol::Icmp,
        Protocol::Zoom,
        Protocol::WireGuard,
        Protocol::OpenVpn,
        Protocol::Ike,
        Protocol::BitTorrent,
        Protocol::RakNet,
        Protocol::Capwap,
        Protocol::AnyConnect,
        Protocol::Tftp,
        Protocol::Rx,
        Protocol::Nintendo,
        Protocol::Sip,
        Protocol::Socks,
    ];

    /// The protocol named `name` ([`Protocol::name`], any case).
    pub fn from_name(name: &str) -> Option<Protocol> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The protocol's name (as in vendor signatures).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Unknown => "unknown",
            Protocol::Tls => "tls",
            Protocol::Quic => "quic",
            Protocol::Http => "http",
            Protocol::Dns => "dns",
            Protocol::Stun => "stun",
            Protocol::Turn => "turn",
            Protocol::Rtp => "rtp",
            Protocol::Rtcp => "rtcp",
            Protocol::Dtls => "dtls",
            Protocol::Zrtp => "zrtp",
            Protocol::SdRtn => "sd-rtn",
            Protocol::Icmp => "icmp",
            Protocol::Zoom => "zoom",
            Protocol::WireGuard => "wireguard",
            Protocol::OpenVpn => "openvpn",
            Protocol::Ike => "ike",
            Protocol::BitTorrent => "bittorrent",
            Protocol::RakNet => "raknet",
            Protocol::Capwap => "capwap",
            Protocol::AnyConnect => "anyconnect",
            Protocol::Tftp => "tftp",
            Protocol::Rx => "rx",
            Protocol::Nintendo => "nintendo",
            Protocol::Sip => "sip",
            Protocol::Socks => "socks",
        }
    }
}

/// Payload packets per flow the sniffers look at.
pub const SNIFF_PACKETS: u32 = 12;
/// Real-time packets after a QUIC start that make a flow media. One is
/// enough: RTP v2 starts with the bits `10`, which in QUIC is a long header
/// without the fixed bit, something a QUIC endpoint sends only if both
/// sides greased that bit (RFC 9287), and then only during the handshake.
const QUIC_THEN_RTC: u8 = 1;
/// The most an RTP sequence number may move on between two packets of
/// one stream that confirm each other.
const RTP_SEQ_STEP: u16 = 64;
/// Bytes of the client's TCP stream kept for sniffing.
pub const SNIFF_BYTES: usize = 16 * 1024;
/// The most of a client's TCP stream kept for a ClientHello that
/// announces more than [`SNIFF_BYTES`]: [`tls::MAX_HELLO`] and the headers
/// of its records.
pub const HELLO_SNIFF_BYTES: usize = 80 * 1024;
/// The most of a client's TCP stream kept for an HTTP/1.x request's head
/// (the request line and the headers up to `Host`), as much as common
/// servers accept.
pub const HEAD_SNIFF_BYTES: usize = 64 * 1024;

/// How much of a client's TCP stream that starts with `first` is read
/// before the flow is judged: [`SNIFF_BYTES`]; when it starts with a TLS
/// ClientHello that announces more, the whole hello
/// ([`tls::hello_stream_len`], at most [`HELLO_SNIFF_BYTES`]); when it
/// starts with an HTTP/1.x method, up to [`HEAD_SNIFF_BYTES`] while the
/// `Host` header has not come. So a hello padded past 16 KiB, or a request
/// whose `Host` follows 16 KiB of other headers, still gives its name
/// before anything leaves.
pub fn sniff_limit(first: &[u8]) -> usize {
    match tls::hello_stream_len(first) {
        Some(n) => n.clamp(SNIFF_BYTES, HELLO_SNIFF_BYTES),
        None if http::request_start(first) => HEAD_SNIFF_BYTES,
        None => SNIFF_BYTES,
    }
}
/// Packets in one direction before an unknown UDP flow can be judged
/// real-time.
pub const REALTIME_PACKETS: u32 = 20;

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the flow's initiator.
    Up,
    /// Towards the initiator.
    Down,
}

/// The transport a payload came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo.
    IcmpEcho,
    /// Other ICMP.
    IcmpOther,
}

/// What the classifier knows about one flow. Memory: at most
/// [`SNIFF_BYTES`] of stream ([`HELLO_SNIFF_BYTES`] for a ClientHello that
/// announces more, [`HEAD_SNIFF_BYTES`] for an HTTP request) plus one QUIC
/// assembler while sniffing; both are freed once the flow is decided.
#[derive(Debug, Default)]
pub struct Sniffer {
    /// The protocol.
    pub protocol: Option<Protocol>,
    /// The class.
    pub class: Option<Traffic>,
    /// The server name.
    pub server_name: Option<String>,
    /// Whether payloads are encrypted.
    pub encrypted: Option<bool>,
    dtls_seen: bool,
    /// A tunnel's first message, waiting for the one that confirms it.
    tunnel: Pending,
    /// Real-time datagrams (RTP confirmed by its stream, STUN other than
    /// a binding) the app sent after the flow was decided QUIC or a tunnel.
    rtc_after_quic: u8,
    /// The last RTP header seen each way (SSRC, sequence number), waiting
    /// for the next packet of the same stream to confirm it.
    rtp_last: [Option<(u32, u16)>; 2],
    /// The app's last datagram on a flow decided as QUIC or a tunnel read
    /// as an RTP header that nothing confirmed yet.
    unconfirmed_rtp: bool,
    /// Byte histogram of the first payload bytes and how many were seen.
    /// Kept only while the encryption status depends on it (a named
    /// protocol says its own). Counts fit: at most [`SAMPLE_BYTES`].
    hist: Option<Box<[u16; 256]>>,
    sampled: usize,
    stream: Vec<u8>,
    /// The client's stream starts a ClientHello or a request whose head
    /// is not whole yet: it is read past [`SNIFF_PACKETS`], up to
    /// [`sniff_limit`].
    head_coming: bool,
    quic: Option<Box<quic::InitialAssembler>>,
    scratch: Vec<u8>,
    payloads: u32,
    done: bool,
    shape: [Shape; 2],
}

/// The first half of a two-packet tunnel signature.
#[derive(Debug, Default, Clone, Copy)]
enum Pending {
    #[default]
    None,
    /// WireGuard transport data: receiver index, counter.
    WireGuardData(u32, u64),
    /// An OpenVPN client hard reset: the client's session id.
    OpenVpnReset([u8; 8]),
    /// ESP in UDP, up: SPI, sequence number.
    Esp(u32, u32),
    /// A uTP SYN: connection id, sequence number.
    UtpSyn(u16, u16),
    /// A TFTP data packet going one way: its block number.
    TftpData(Dir, u16),
}

#[derive(Debug, Default, Clone, Copy)]
struct Shape {
    packets: u32,
    in_range: u32,
    first_ns: u64,
    last_ns: u64,
}

impl Sniffer {
    /// A sniffer for a new flow.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the protocol decided says the encryption status itself, so
    /// that the sampled bytes no longer matter.
    fn protocol_says_encryption(&self) -> bool {
        self.done && self.encrypted.is_some() && self.protocol != Some(Protocol::Unknown)
    }

    fn decide(&mut self, p: Protocol, class: Traffic, encrypted: bool) {
        self.settle(p, class, Some(encrypted));
    }

    /// Decides a protocol that may or may not be encrypted: the sampled
    /// payload says ([`Sniffer::encryption`]).
    fn decide_sampled(&mut self, p: Protocol, class: Traffic) {
        self.settle(p, class, None);
    }

    fn settle(&mut self, p: Protocol, class: Traffic, encrypted: Option<bool>) {
        self.protocol = Some(p);
        self.class = Some(class);
        self.encrypted = encrypted;
        self.done = true;
        if self.protocol_says_encryption() {
            self.hist = None;
        }
        self.stream = Vec::new();
        self.quic = None;
        self.scratch = Vec::new();
    }

    fn name(&mut self, n: &str) {
        if self.server_name.is_none() && !n.is_empty() {
            self.server_name = Some(n.chars().take(253).collect());
        }
    }

    /// Feeds one packet's payload. `ports` are (initiator, responder).
    pub fn on_payload(
        &mut self,
        carrier: Carrier,
        dir: Dir,
        ports: (u16, u16),
        payload: &[u8],
        ts_ns: u64,
    ) {
        match carrier {
            Carrier::IcmpEcho => return self.decide(Protocol::Icmp, Traffic::Ping, false),
            Carrier::IcmpOther => {
                if !self.done {
                    self.decide(Protocol::Icmp, Traffic::Ping, false);
                }
                return;
            }
            _ => {}
        }
        if payload.is_empty() {
            return;
        }
        self.sample(payload);
        if carrier == Carrier::Udp {
            self.shape_update(dir, payload.len(), ts_ns);
        }
        // A STUN flow can still turn out to be media; so can a flow that
        // began with one QUIC Initial and goes on with real-time packets
        // (a QUIC-looking start does not make media `web`).
        if self.done {
            // None of these sends a packet that starts like RTP (IKE's ESP
            // and RakNet's datagrams can; RX's epoch, a client's start time,
            // will only from 2038).
            let refinable = matches!(
                self.protocol,
                Some(
                    Protocol::Quic
                        | Protocol::WireGuard
                        | Protocol::OpenVpn
                        | Protocol::Capwap
                        | Protocol::AnyConnect
                        | Protocol::Tftp
                        | Protocol::Nintendo
                        | Protocol::Rx
                        | Protocol::Sip
                )
            );
            if refinable && carrier == Carrier::Udp && dir == Dir::Up {
                // Only what a QUIC packet cannot be by chance: a QUIC peer
                // may grease the fixed bit (RFC 9287) on every packet, and
                // then a short header reads as a lone RTP, RTCP or TURN
                // ChannelData header (its connection id where their
                // lengths and sources are). Two RTP packets of one stream,
                // or STUN with its magic cookie, it cannot be.
                self.unconfirmed_rtp = false;
                let rtc = match rtc::classify(payload) {
                    Some(rtc::Rtc::Stun { method, .. }) => {
                        method != 1 && rtc::stun_prefix(payload).is_some()
                    }
                    Some(rtc::Rtc::Rtp { seq, ssrc, .. }) => {
                        let confirmed = self.rtp_confirms(dir, ssrc, seq);
                        self.unconfirmed_rtp = !confirmed;
                        confirmed
                    }
                    _ => false,
                };
                if rtc {
                    self.rtc_after_quic = self.rtc_after_quic.saturating_add(1);
                    if self.rtc_after_quic >= QUIC_THEN_RTC {
                        self.protocol = Some(Protocol::Unknown);
                        self.class = Some(Traffic::Media);
                        self.encrypted = None;
                    }
                }
            }
            return;
        }
        self.payloads += 1;
        let dns_port = [53, 5353, 5355].contains(&ports.1) || [53, 5353, 5355].contains(&ports.0);
        match carrier {
            // NetBIOS name service (137) speaks DNS's message format
            // without being DNS.
            Carrier::Udp => {
                let by_content = !dns_port && ports.0 != 137 && ports.1 != 137;
                self.sniff_udp(dir, ports, dns_port, by_content, payload);
            }
            Carrier::Tcp => self.sniff_tcp(dir, ports, dns_port, payload),
            _ => {}
        }
        // A ClientHello or a request head longer than the packets counted
        // here is read whole.
        let head_coming = self.head_coming && self.stream.len() < sniff_limit(&self.stream);
        if !self.done && self.payloads >= SNIFF_PACKETS && !head_coming {
            self.give_up(carrier);
        }
    }

    fn sniff_udp(
        &mut self,
        dir: Dir,
        ports: (u16, u16),
        dns_port: bool,
        dns_by_content: bool,
        p: &[u8],
    ) {
        if dns_port {
            if let Some(n) = dns::first_name(p) {
                self.name(n.as_str());
                return self.decide(Protocol::Dns, Traffic::Dns, false);
            }
            // A DNS message whose name geowall does not take (UTF-8 labels
            // as LLMNR and mDNS allow, an inverse query, a damaged name):
            // still DNS; a later message may still name the flow.
            if dns::plausible_header(p) {
                self.protocol = Some(Protocol::Dns);
                self.class = Some(Traffic::Dns);
                self.encrypted = Some(false);
                return;
            }
        }
        // DNS on another port, by its content alone.
        if dns_by_content
            && dir == Dir::Up
            && let Some(q) = dns::strict_query(p)
        {
            self.name(q.name.as_str());
            return self.decide(Protocol::Dns, Traffic::Dns, false);
        }
        if let Some(s) = sip::start(p) {
            if let sip::Sip::Request { host: Some(h), .. } = s
                && dir == Dir::Up
            {
                self.name(h);
            }
            return self.decide(Protocol::Sip, Traffic::Other, false);
        }
        if let Some(host) = quic::gquic_chlo(p) {
            if let Some(h) = host {
                self.name(h);
            }
            return self.decide(Protocol::Quic, Traffic::Web, true);
        }
        if dir == Dir::Up && p.first().is_some_and(|b| b & 0xC0 == 0xC0) {
            let a = self.quic.get_or_insert_with(Default::default);
            match a.feed(p) {
                Some(true) => {
                    let sni = a.sni().map(str::to_owned);
                    if let Some(n) = sni {
                        self.name(&n);
                    }
                    return self.decide(Protocol::Quic, Traffic::Web, true);
                }
                Some(false) => {
                    // A readable Initial: QUIC even before the hello ends.
                    self.protocol = Some(Protocol::Quic);
                    self.class = Some(Traffic::Web);
                    self.encrypted = Some(true);
                    return;
                }
                None => {}
            }
        }
        // Any other QUIC long header (Version Negotiation, drafts whose
        // Initials are not read, gQUIC Q0xx and T05x, mvfst, 0-RTT and
        // Handshake packets): QUIC, never media.
        if quic::long_header(p).is_some() {
            return self.decide(Protocol::Quic, Traffic::Web, true);
        }
        // Tunnels and Zoom before the real-time first-byte rules, which an
        // IKE SPI or an OpenVPN opcode could otherwise happen to satisfy.
        match self.sniff_tunnel(dir, ports, p) {
            // These may be encrypted or not; a tunnel is.
            Some(
                p @ (Protocol::BitTorrent
                | Protocol::RakNet
                | Protocol::Capwap
                | Protocol::Tftp
                | Protocol::Rx
                | Protocol::Nintendo),
            ) => {
                return self.decide_sampled(p, Traffic::Other);
            }
            Some(proto) => return self.decide(proto, Traffic::Other, true),
            None => {}
        }
        let zoom_port = |port: u16| (8801..=8810).contains(&port);
        if rtc::zoom(p, zoom_port(ports.0) || zoom_port(ports.1)).is_some() {
            return self.decide(Protocol::Zoom, Traffic::Media, true);
        }
        match rtc::classify(p) {
            Some(rtc::Rtc::SdRtn { host }) => {
                self.name(host);
                self.decide(Protocol::SdRtn, Traffic::Media, false);
            }
            Some(rtc::Rtc::Stun { .. }) => self.decide(Protocol::Stun, Traffic::Media, false),
            Some(rtc::Rtc::TurnChannel { .. }) => {
                self.decide(Protocol::Turn, Traffic::Media, false)
            }
            Some(rtc::Rtc::Dtls { .. }) => {
                self.dtls_seen = true;
                self.decide(Protocol::Dtls, Traffic::Media, true);
            }
            // One header that reads as RTP is a guess (a quarter of all
            // byte values start like one); two of one stream, the same
            // source with the sequence moving on, are RTP. The first waits
            // for the second.
            Some(rtc::Rtc::Rtp { seq, ssrc, .. }) if self.rtp_confirms(dir, ssrc, seq) => {
                self.decide(Protocol::Rtp, Traffic::Media, false);
            }
            Some(rtc::Rtc::Rtcp { .. }) => self.decide(Protocol::Rtcp, Traffic::Media, false),
            Some(rtc::Rtc::Zrtp) => self.decide(Protocol::Zrtp, Traffic::Media, false),
            Some(rtc::Rtc::Rtp { .. }) | None => {}
        }
    }

    /// A tunnel's signature (or uTP's or RakNet's, which like a tunnel are
    /// no media whatever their shape), or the first half of one kept for
    /// the next packet.
    fn sniff_tunnel(&mut self, dir: Dir, ports: (u16, u16), p: &[u8]) -> Option<Protocol> {
        if raknet::offline_message(p) {
            return Some(Protocol::RakNet);
        }
        if tunnel::capwap(p, ports) {
            return Some(Protocol::Capwap);
        }
        if tunnel::anyconnect_dtls(p) {
            return Some(Protocol::AnyConnect);
        }
        if apps::nintendo_pia(p) {
            return Some(Protocol::Nintendo);
        }
        if apps::rx(p, ports) {
            return Some(Protocol::Rx);
        }
        if dir == Dir::Up && apps::tftp_request(p, ports.1) {
            return Some(Protocol::Tftp);
        }
        // A TFTP transfer: a data block one way, its acknowledgement back.
        if let Some(block) = apps::tftp_ack(p)
            && let Pending::TftpData(d, b) = self.tunnel
            && d != dir
            && b == block
        {
            return Some(Protocol::Tftp);
        }
        if let Some(block) = apps::tftp_data(p) {
            self.tunnel = Pending::TftpData(dir, block);
        }
        if tunnel::ike(p, ports) {
            return Some(Protocol::Ike);
        }
        if tunnel::wireguard_handshake(p) {
            return Some(Protocol::WireGuard);
        }
        // Counters are per direction (each end has its own receiver index
        // and counter): follow the initiator's.
        if dir == Dir::Up
            && let Some(now) = tunnel::wireguard_data(p)
        {
            if let Pending::WireGuardData(r, c) = self.tunnel
                && tunnel::wireguard_data_follows((r, c), now)
            {
                return Some(Protocol::WireGuard);
            }
            self.tunnel = Pending::WireGuardData(now.0, now.1);
            return None;
        }
        if dir == Dir::Up
            && let Some(now) = tunnel::esp_in_udp(p, ports)
        {
            if let Pending::Esp(spi, seq) = self.tunnel
                && tunnel::esp_follows((spi, seq), now)
            {
                return Some(Protocol::Ike);
            }
            if !matches!(self.tunnel, Pending::OpenVpnReset(_)) {
                self.tunnel = Pending::Esp(now.0, now.1);
            }
        }
        match (dir, self.tunnel) {
            (Dir::Up, _) => {
                if let Some(s) = tunnel::openvpn_client_reset(p) {
                    self.tunnel = Pending::OpenVpnReset(s);
                } else if let Some((id, seq)) = utp::syn(p) {
                    self.tunnel = Pending::UtpSyn(id, seq);
                }
            }
            (Dir::Down, Pending::OpenVpnReset(s)) if tunnel::openvpn_server_reset(p, &s) => {
                return Some(Protocol::OpenVpn);
            }
            (Dir::Down, Pending::UtpSyn(id, seq)) if utp::answers_syn(p, (id, seq)) => {
                return Some(Protocol::BitTorrent);
            }
            _ => {}
        }
        None
    }

    /// Whether an RTP header (`ssrc`, `seq`) going `dir` continues the
    /// stream of the last one seen that way: the same source, the
    /// sequence number 1 to [`RTP_SEQ_STEP`] on (losses and reordering
    /// allowed). Remembers it for the next.
    fn rtp_confirms(&mut self, dir: Dir, ssrc: u32, seq: u16) -> bool {
        let last = self.rtp_last[dir as usize].replace((ssrc, seq));
        last.is_some_and(|(s, q)| s == ssrc && seq.wrapping_sub(q).wrapping_sub(1) < RTP_SEQ_STEP)
    }

    fn sniff_tcp(&mut self, dir: Dir, ports: (u16, u16), dns_port: bool, p: &[u8]) {
        // Whole-segment protocols first (STUN over TCP, RFC 4571 RTP).
        let framed = p
            .get(0..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        let stun = rtc::stun_prefix(p).or_else(|| {
            // RFC 4571 framing: a 2-byte length, then the message.
            framed
                .filter(|&l| l + 2 <= p.len())
                .and_then(|_| rtc::stun_prefix(&p[2..]))
        });
        match stun {
            Some(_) => return self.decide(Protocol::Stun, Traffic::Media, false),
            None => {
                if let Some(len) = p
                    .get(0..2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                    && len + 2 <= p.len()
                    && len >= 12
                    && !dns_port
                    && matches!(
                        p.get(2..2 + len).and_then(rtc::classify),
                        Some(rtc::Rtc::Rtp { .. } | rtc::Rtc::Rtcp { .. })
                    )
                {
                    return self.decide(Protocol::Rtp, Traffic::Media, false);
                }
            }
        }
        if dir != Dir::Up {
            // The client's start was not captured (mid-stream, or one
            // direction only): the server's TLS records still say TLS, its
            // HTTP response HTTP, its DNS answer DNS; none names the flow.
            // Provisional: the client's own first bytes, when they come,
            // still decide (a server does not speak for its client).
            if self.stream.is_empty() && self.protocol.is_none() {
                let seen = if tls_record(p) {
                    Some((Protocol::Tls, tls_class(ports.1), true))
                } else if http::response_start(p) {
                    Some((Protocol::Http, Traffic::Web, false))
                } else if dns_port && dns::question_tcp(p).is_some_and(|q| q.response) {
                    Some((Protocol::Dns, Traffic::Dns, false))
                } else {
                    None
                };
                if let Some((proto, class, encrypted)) = seen {
                    self.protocol = Some(proto);
                    self.class = Some(class);
                    self.encrypted = Some(encrypted);
                }
            }
            return;
        }
        let limit = sniff_limit(if self.stream.is_empty() {
            p
        } else {
            &self.stream
        });
        if self.stream.len() < limit {
            let room = limit - self.stream.len();
            self.stream.extend_from_slice(&p[..p.len().min(room)]);
        }
        // A STUN message (TURN over TCP) that came in more than one segment.
        if rtc::stun_prefix(&self.stream).is_some() {
            return self.decide(Protocol::Stun, Traffic::Media, false);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let stream = std::mem::take(&mut self.stream);
        let verdict: Option<(Protocol, Traffic, bool, Option<String>)> =
            match tls::client_hello(&stream, &mut scratch) {
                tls::Hello::Found(h) => {
                    // TURN or STUN over TLS by its ALPN (RFC 7443): a
                    // relay's media whatever the port.
                    let class = if h.alpn().any(|a| TURN_ALPNS.contains(&a)) {
                        Traffic::Media
                    } else {
                        Traffic::Web
                    };
                    Some((Protocol::Tls, class, true, h.sni.map(str::to_owned)))
                }
                tls::Hello::NeedMore(_) => {
                    self.head_coming = true;
                    None
                }
                tls::Hello::NotTls if let Some(s) = sip::start(&stream) => {
                    let host = match s {
                        sip::Sip::Request { host, .. } => host.map(str::to_owned),
                        sip::Sip::Response(_) => None,
                    };
                    Some((Protocol::Sip, Traffic::Other, false, host))
                }
                tls::Hello::NotTls => match http::host(&stream) {
                    http::HttpHost::Found(h) => {
                        Some((Protocol::Http, Traffic::Web, false, h.map(str::to_owned)))
                    }
                    http::HttpHost::NeedMore => {
                        self.head_coming = true;
                        None
                    }
                    http::HttpHost::NotHttp => {
                        if dns_port {
                            dns::question_tcp(&stream).map(|q| {
                                (
                                    Protocol::Dns,
                                    Traffic::Dns,
                                    false,
                                    Some(q.name.as_str().to_owned()),
                                )
                            })
                        } else if tls_record(&stream) || tls::sslv2_client_hello(&stream) {
                            // Mid-stream (the client's records, not a
                            // hello), or an old client's SSL 2.0-format
                            // hello: TLS without a name.
                            Some((Protocol::Tls, Traffic::Web, true, None))
                        } else if socks::greeting(&stream).is_some() {
                            // A proxy's handshake: where it goes is read
                            // by the flow's stream reader, not here.
                            Some((Protocol::Socks, Traffic::Other, false, None))
                        } else if rtc::stun_incomplete(&stream) {
                            // The start of a STUN message: wait for the rest.
                            None
                        } else if let (Some(p), Some(c)) = (self.protocol, self.class) {
                            // Mid-stream bytes after what the server's side
                            // said (a capture that missed the start).
                            Some((p, c, self.encrypted.unwrap_or(false), None))
                        } else {
                            // Neither TLS nor HTTP can start like this, and
                            // no later client bytes would change that: an
                            // unknown protocol, decided now rather than
                            // after more packets or the engine's sniffing
                            // time (encryption is still judged from the
                            // sampled bytes).
                            Some((Protocol::Unknown, Traffic::Other, false, None))
                        }
                    }
                },
            };
        self.stream = stream;
        self.scratch = scratch;
        if let Some((proto, class, enc, name)) = verdict {
            if let Some(n) = name {
                self.name(&n);
            }
            let class = if proto == Protocol::Tls && class == Traffic::Web {
                tls_class(ports.1)
            } else {
                class
            };
            if proto == Protocol::Socks {
                // Its tunnel may carry anything: the sampled bytes say.
                self.decide_sampled(proto, class);
            } else {
                self.decide(proto, class, enc);
            }
        }
    }

    fn shape_update(&mut self, dir: Dir, len: usize, ts: u64) {
        let s = &mut self.shape[dir as usize];
        if s.packets == 0 {
            s.first_ns = ts;
        }
        s.packets += 1;
        s.last_ns = ts;
        if (20..=1300).contains(&len) {
            s.in_range += 1;
        }
        if !self.done && self.protocol.is_none() && carrier_realtime(s) {
            self.decide(Protocol::Unknown, Traffic::Media, false);
        }
    }

    fn give_up(&mut self, carrier: Carrier) {
        if self.protocol.is_some() {
            // E.g. QUIC whose hello never completed.
            self.done = true;
            return;
        }
        if carrier == Carrier::Udp && self.shape.iter().any(carrier_realtime) {
            return self.decide(Protocol::Unknown, Traffic::Media, false);
        }
        // Keep watching the shape of unknown UDP; decide TCP now.
        if carrier == Carrier::Tcp {
            self.decide(Protocol::Unknown, Traffic::Other, false);
        } else {
            self.stream = Vec::new();
            self.quic = None;
        }
    }

    fn sample(&mut self, p: &[u8]) {
        if self.sampled >= SAMPLE_BYTES || self.protocol_says_encryption() {
            return;
        }
        let h = self.hist.get_or_insert_with(|| Box::new([0; 256]));
        let take = p.len().min(SAMPLE_BYTES - self.sampled);
        for &b in &p[..take] {
            h[usize::from(b)] += 1;
        }
        self.sampled += take;
    }

    /// The flow's encryption status: from the protocol where it says, else
    /// from the sampled payload: mostly printable (at least 90% of at
    /// least 32 bytes) is cleartext; byte entropy of at least 7.2 bits over
    /// at least 256 bytes is encrypted; anything else is unknown.
    pub fn encryption(&self) -> Encryption {
        if self.protocol == Some(Protocol::Rtp) && self.dtls_seen {
            return Encryption::Encrypted;
        }
        match self.encrypted {
            Some(true) => return Encryption::Encrypted,
            Some(false) if self.protocol != Some(Protocol::Unknown) => {
                return Encryption::Cleartext;
            }
            _ => {}
        }
        let Some(h) = &self.hist else {
            return Encryption::Unknown;
        };
        let n = self.sampled as f64;
        let printable: u32 = h
            .iter()
            .enumerate()
            .filter(|(b, _)| matches!(*b, 9 | 10 | 13 | 32..=126))
            .map(|(_, c)| u32::from(*c))
            .sum();
        if self.sampled >= 32 && f64::from(printable) >= 0.9 * n {
            return Encryption::Cleartext;
        }
        if self.sampled >= 256 {
            let entropy: f64 = h
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| {
                    let p = f64::from(c) / n;
                    -p * p.log2()
                })
                .sum();
            if entropy >= 7.2 {
                return Encryption::Encrypted;
            }
        }
        Encryption::Unknown
    }

    /// Ends the wait for evidence that a live firewall holds a flow's
    /// first datagrams for: if all it has is an RTP header not yet
    /// confirmed by a second packet of its stream, the flow is taken for
    /// RTP, `media` (fail closed: a lone packet that reads as RTP is not
    /// let through as `other` because its stream never followed).
    /// Otherwise nothing changes. The offline audit does not call it.
    pub fn end_hold(&mut self) {
        if !self.done && self.protocol.is_none() && self.rtp_last.iter().any(Option::is_some) {
            self.decide(Protocol::Rtp, Traffic::Media, false);
        }
    }

    /// Whether the app's last datagram, on a flow decided as QUIC or a
    /// tunnel, read as an RTP header that no second packet of its stream
    /// has confirmed: the start of a call, or a QUIC packet whose fixed
    /// bit was greased (RFC 9287). The next packet tells; a live firewall
    /// that must not let media out drops this one meanwhile.
    pub fn unconfirmed_rtp(&self) -> bool {
        self.unconfirmed_rtp
    }

    /// The class to report now (`other` while nothing is known).
    pub fn class_now(&self) -> Traffic {
        self.class.unwrap_or(Traffic::Other)
    }

    /// True once the flow is decided.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes the server name from a ClientHello that is not whole yet (over
    /// TCP, or in QUIC Initials), when the bytes so far hold it
    /// ([`tls::partial_hello_sni`]): a flow
    /// judged before its hello is whole is judged by the name the server
    /// would already have read. The hello is still read to its end.
    pub fn name_from_partial_hello(&mut self) {
        if self.server_name.is_some() {
            return;
        }
        let n = if self.head_coming() {
            tls::partial_hello_sni(&self.stream).map(str::to_owned)
        } else if self.quic_hello_coming() {
            self.quic
                .as_ref()
                .and_then(|a| a.partial_sni())
                .map(str::to_owned)
        } else {
            None
        };
        if let Some(n) = n {
            self.name(&n);
        }
    }

    /// Whether the flow's first QUIC Initials were read and their
    /// ClientHello is not whole yet: the rest may name the server.
    pub fn quic_hello_coming(&self) -> bool {
        !self.done && self.protocol == Some(Protocol::Quic) && self.quic.is_some()
    }

    /// Whether the client's stream ends inside a ClientHello or request
    /// head the sniffer is still reading (up to [`sniff_limit`]): its rest
    /// may name the server.
    pub fn head_coming(&self) -> bool {
        !self.done && self.head_coming && self.stream.len() < sniff_limit(&self.stream)
    }
}

/// ALPN protocol IDs of STUN and TURN over (D)TLS (RFC 7443).
const TURN_ALPNS: [&[u8]; 2] = [b"stun.turn", b"stun.nat-discovery"];

/// The class of TLS on a server port: DNS over TLS (853) is `dns`; TURN
/// over TLS (`turns:`, 5349, RFC 7065; and STUN's own 3478, where no web
/// service listens) is `media`: a relay carries the call inside it, which
/// nothing in a browser's hello (no server name for an address, no ALPN)
/// tells apart from web; mail, directory and SIP over TLS are `other`;
/// the rest is `web`.
fn tls_class(server_port: u16) -> Traffic {
    match server_port {
        853 => Traffic::Dns,
        3478 | 5349 => Traffic::Media,
        465 | 587 | 993 | 995 | 636 | 989 | 990 | 5061 => Traffic::Other,
        _ => Traffic::Web,
    }
}

/// A TLS record header: content type 20-23, version 3.1-3.4, a plausible
/// length.
fn tls_record(p: &[u8]) -> bool {
    p.len() >= 5
        && (20..=23).contains(&p[0])
        && p[1] == 3
        && (1..=4).contains(&p[2])
        && usize::from(u16::from_be_bytes([p[3], p[4]])) <= 18_432
}

fn carrier_realtime(s: &Shape) -> bool {
    // At least 90% in range: one odd datagram (a 1,400-byte start, a
    // keyframe) does not switch the detection off.
    s.packets >= REALTIME_PACKETS
        && u64::from(s.in_range) * 10 >= u64::from(s.packets) * 9
        && (s.last_ns.saturating_sub(s.first_ns)) / u64::from(s.packets - 1) <= 100_000_000
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first QUIC Initial a client sends in
    /// tests/fixtures/ndpi/quic.pcap.
    pub(crate) fn quic_initial() -> Vec<u8> {
        use crate::wire::packet::{Transport, parse_ip, strip_link};
        let bytes = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi/quic.pcap"),
        )
        .expect("capture");
        let cap = crate::wire::capture::Capture::new(&bytes).expect("pcap");
        cap.filter_map(Result::ok)
            .find_map(|f| {
                let ip = parse_ip(strip_link(f.link, f.data).ok()?).ok()?;
                match ip.transport {
                    Transport::Udp {
                        dport: 443,
                        payload,
                        ..
                    } => Some(payload.to_vec()),
                    _ => None,
                }
            })
            .expect("a QUIC Initial")
    }

    fn feed(s: &mut Sniffer, c: Carrier, d: Dir, ports: (u16, u16), p: &[u8]) {
        s.on_payload(c, d, ports, p, 0);
    }

    #[test]
    fn tls_hello_over_two_segments() {
        let r = tls::tests::hello_record("www.example.org");
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Tcp, Dir::Up, (50000, 443), &r[..20]);
        assert!(!s.is_done());
        feed(&mut s, Carrier::Tcp, Dir::Up, (50000, 443), &r[20..]);
        assert_eq!(
            (s.protocol, s.class, s.encrypted),
            (Some(Protocol::Tls), Some(Traffic::Web), Some(true))
        );
        assert_eq!(s.server_name.as_deref(), Some("www.example.org"));
    }

    /// An old client's SSL 2.0-format hello (Wireshark's
    /// `rsasnakeoil2.pcap`) is TLS, without a name.
    #[test]
    fn an_sslv2_format_hello_is_tls() {
        let h = crate::wire::bytes::hex(
            "8067010300004e000000100100800300800700c006004002008004008000003900003800003500003300003200000400000500002f00001600001300feff00000a00001500001200fefe000009000064000062000003000006a8b893bb90e92aa24d6dcc1ce72a8021",
        );
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Tcp, Dir::Up, (38713, 443), &h);
        assert_eq!(
            (s.protocol, s.class, s.server_name.as_deref()),
            (Some(Protocol::Tls), Some(Traffic::Web), None)
        );
    }

    /// A capture that missed the client's start (mid-stream, or one
    /// direction only): the server's HTTP response is HTTP, its DNS answer
    /// over TCP (Wireshark's `dns-ooo.pcap` shape) DNS, its TLS records
    /// TLS; an SSH banner stays unknown. Provisionally: a client's hello
    /// that comes after still decides, and names the flow.
    #[test]
    fn the_servers_side_alone_still_says_what_it_is() {
        let server = |ports: (u16, u16), p: &[u8]| {
            let mut s = Sniffer::new();
            feed(&mut s, Carrier::Tcp, Dir::Down, ports, p);
            (s.protocol, s.class, s.server_name)
        };
        assert_eq!(
            server((50000, 80), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            (Some(Protocol::Http), Some(Traffic::Web), None)
        );
        let mut answer = dns::tests::query("www.example.org");
        answer[2] |= 0x80;
        let mut framed = u16::try_from(answer.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        assert_eq!(
            server((50000, 53), &framed),
            (Some(Protocol::Dns), Some(Traffic::Dns), None)
        );
        // The same bytes as a question, or off DNS's ports, are no answer.
        let mut asked = u16::try_from(answer.len()).unwrap().to_be_bytes().to_vec();
        asked.extend_from_slice(&dns::tests::query("www.example.org"));
        assert_eq!(server((50000, 53), &asked).0, None);
        assert_eq!(server((50000, 8080), &framed).0, None);
        assert_eq!(server((50000, 22), b"SSH-2.0-OpenSSH_9.2\r\n").0, None);
        assert!(!http::response_start(b"HTTP/1.1 2x0 OK\r\n"));
        // A server that answers first cannot stand in for its client.
        let mut s = Sniffer::new();
        feed(
            &mut s,
            Carrier::Tcp,
            Dir::Down,
            (50000, 443),
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        assert!(!s.is_done());
        let hello = tls::tests::hello_record("blocked.example.org");
        feed(&mut s, Carrier::Tcp, Dir::Up, (50000, 443), &hello);
        assert_eq!(
            (s.protocol, s.server_name.as_deref()),
            (Some(Protocol::Tls), Some("blocked.example.org"))
        );
    }

    #[test]
    fn sd_rtn_names_the_flow_and_is_media() {
        let p = rtc::sd_rtn_probe("104-166-161-75.edge.agora.io");
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Udp, Dir::Up, (40000, 8130), &p);
        assert_eq!(
            (s.protocol, s.class),
            (Some(Protocol::SdRtn), Some(Traffic::Media))
        );
        assert_eq!(
            s.server_name.as_deref(),
            Some("104-166-161-75.edge.agora.io")
        );
    }

    #[test]
    fn stun_binding_is_media_and_stays_media() {
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(&[1; 12]);
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Udp, Dir::Up, (40000, 3478), &req);
        assert_eq!(
            (s.protocol, s.class),
            (Some(Protocol::Stun), Some(Traffic::Media))
        );
        let mut rtp = vec![0x80, 0x6F, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        rtp.extend_from_slice(&[0; 100]);
        feed(&mut s, Carrier::Udp, Dir::Up, (40000, 3478), &rtp);
        assert_eq!(s.class, Some(Traffic::Media));
        // RFC 4571-framed on TCP: the same.
        let mut framed = (req.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&req);
        let mut t = Sniffer::new();
        feed(&mut t, Carrier::Tcp, Dir::Up, (40000, 3478), &framed);
        assert_eq!(t.class, Some(Traffic::Media));
        // TURN over TCP, the first message in two segments: it waits for
        // the rest instead of being decided unknown.
        let mut u = Sniffer::new();
        feed(&mut u, Carrier::Tcp, Dir::Up, (40000, 3478), &req[..6]);
        assert!(!u.is_done(), "half a STUN message");
        feed(&mut u, Carrier::Tcp, Dir::Up, (40000, 3478), &req[6..]);
        assert_eq!(
            (u.protocol, u.class),
            (Some(Protocol::Stun), Some(Traffic::Media))
        );
    }

    /// Feeds `n` copies of `p` 20 ms apart, up: a real-time shape.
    fn feed_paced(s: &mut Sniffer, ports: (u16, u16), n: u64, p: impl Fn(u64) -> Vec<u8>) {
        for i in 0..n {
            s.on_payload(Carrier::Udp, Dir::Up, ports, &p(i), i * 20_000_000);
        }
    }

    #[test]
    fn every_protocol_is_named_once_and_read_back() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_name(p.name()), Some(p));
            assert_eq!(
                serde_json::to_value(p).ok(),
                Some(serde_json::Value::from(p.name())),
                "events name it as the rules do"
            );
        }
        assert_eq!(Protocol::from_name("SD-RTN"), Some(Protocol::SdRtn));
        assert_eq!(Protocol::from_name("sdrtn"), None);
    }

    #[test]
    fn tls_class_follows_the_server_port() {
        let hello = tls::tests::hello_record("push.example");
        for (port, class) in [
            (443, Traffic::Web),
            (5223, Traffic::Web),
            (853, Traffic::Dns),
            (5349, Traffic::Media),
            (3478, Traffic::Media),
            (993, Traffic::Other),
            (5061, Traffic::Other),
        ] {
            let mut s = Sniffer::new();
            feed(&mut s, Carrier::Tcp, Dir::Up, (50000, port), &hello);
            assert_eq!(
                (s.protocol, s.class),
                (Some(Protocol::Tls), Some(class)),
                "port {port}"
            );
        }
    }

    /// TURN over TLS: by its ALPN (RFC 7443) on any port, and by the
    /// `turns:` port without one (a browser's hello to a relay named by
    /// address carries neither a name nor an ALPN): media, so a rule on
    /// media judges the relay; web's ALPN on the same port 443 stays web.
    #[test]
    fn turn_over_tls_is_media() {
        for (alpn, port, class) in [
            (&b"\x09stun.turn"[..], 443, Traffic::Media),
            (&b"\x12stun.nat-discovery"[..], 8443, Traffic::Media),
            (&b"\x02h2\x09stun.turn"[..], 443, Traffic::Media),
            (&b"\x02h2\x08http/1.1"[..], 443, Traffic::Web),
            (&b"\x08http/1.1"[..], 5349, Traffic::Media),
        ] {
            let hello = tls::tests::hello_record_alpn("relay.example", alpn);
            let mut s = Sniffer::new();
            feed(&mut s, Carrier::Tcp, Dir::Up, (50000, port), &hello);
            assert_eq!(
                (s.protocol, s.class),
                (Some(Protocol::Tls), Some(class)),
                "{alpn:?} on {port}"
            );
        }
    }

    /// File transfers, RPCs, game sessions, a wireless controller's tunnel
    /// and a DTLS VPN, each at a call's pace: recognised, `other`, never
    /// media; an app's RTP stream after a CAPWAP or TFTP start is media.
    #[test]
    fn transfers_games_and_controllers_are_other_at_a_calls_pace() {
        use crate::wire::bytes::hex;
        // TFTP: data blocks one way, their acknowledgements back.
        let mut t = Sniffer::new();
        for i in 0..30u16 {
            let mut data = vec![0, 3];
            data.extend_from_slice(&(i + 1).to_be_bytes());
            data.extend_from_slice(&[0x41; 512]);
            let ack = [0, 4, ((i + 1) >> 8) as u8, (i + 1) as u8];
            let at = u64::from(i) * 20_000_000;
            t.on_payload(Carrier::Udp, Dir::Up, (3445, 50618), &data, at);
            t.on_payload(Carrier::Udp, Dir::Down, (3445, 50618), &ack, at);
        }
        assert_eq!(
            (t.protocol, t.class),
            (Some(Protocol::Tftp), Some(Traffic::Other))
        );
        // Data blocks nobody acknowledges are no transfer: their shape
        // decides.
        let mut u = Sniffer::new();
        feed_paced(&mut u, (3445, 50618), 30, |i| {
            let mut d = vec![0, 3, 0, i as u8];
            d.extend_from_slice(&[0x41; 160]);
            d
        });
        assert_eq!(u.class, Some(Traffic::Media), "by its shape");
        // Nintendo PIA, AFS RX, CAPWAP and AnyConnect, from captures.
        let pia =
            hex("32ab986402000000ecc00000895c564c741760b90c98486fdd31610a8f43f745f0a965db80e9590f");
        let rx = hex("d70fb3305c224fb0000000010000000100000001010500000000000100010004");
        let capwap = hex(
            "0100000015feff0001000000000001003091525de0381a81cffbbc5c495068756e8580383b27a1c2ff20",
        );
        let mut anyconnect = hex("17010000010000000000050020");
        anyconnect.extend_from_slice(&[0x5A; 32]);
        for (ports, p, want) in [
            ((55915, 27520), &pia, Protocol::Nintendo),
            ((7001, 7000), &rx, Protocol::Rx),
            ((12380, 5246), &capwap, Protocol::Capwap),
            ((54107, 443), &anyconnect, Protocol::AnyConnect),
        ] {
            let mut s = Sniffer::new();
            feed_paced(&mut s, ports, 30, |_| p.clone());
            assert_eq!((s.protocol, s.class), (Some(want), Some(Traffic::Other)));
        }
        // RTP after a CAPWAP or RX start: two packets of one stream make
        // media.
        for (ports, start) in [((12380, 5246), &capwap), ((7001, 7000), &rx)] {
            let mut c = Sniffer::new();
            feed(&mut c, Carrier::Udp, Dir::Up, ports, start);
            for seq in [1, 2] {
                feed(&mut c, Carrier::Udp, Dir::Up, ports, &rtc::rtp_packet(seq));
            }
            assert_eq!(c.class, Some(Traffic::Media), "{ports:?}");
        }
    }

    /// A ClientHello padded to 40 KiB, in three records and 1,448-byte
    /// segments (28 packets, more than the packets a flow is otherwise
    /// sniffed for), gives its name; a stream that only claims a hello
    /// longer than TLS allows keeps to the usual 16 KiB.
    #[test]
    fn a_long_hello_is_read_whole() {
        let hello = tls::client_hello_records("long.example.org", 40_000);
        let mut s = Sniffer::new();
        for seg in hello.chunks(1448) {
            feed(&mut s, Carrier::Tcp, Dir::Up, (50000, 443), seg);
        }
        assert_eq!(s.protocol, Some(Protocol::Tls));
        assert_eq!(s.server_name.as_deref(), Some("long.example.org"));
        assert_eq!(sniff_limit(&hello), hello.len());
        let mut huge = hello.clone();
        huge[6] = 0x7F;
        assert_eq!(sniff_limit(&huge), SNIFF_BYTES);
        let mut t = Sniffer::new();
        for seg in huge.chunks(1448) {
            feed(&mut t, Carrier::Tcp, Dir::Up, (50000, 443), seg);
            assert!(t.stream.len() <= SNIFF_BYTES);
        }
    }

    /// An HTTP request whose `Host` header follows 30 KB of cookies, in
    /// 1,448-byte segments, is named by it; one whose head runs past what
    /// is kept is decided without a name.
    #[test]
    fn a_long_request_head_is_read_to_its_host() {
        let request = |cookie: usize| {
            let mut r = b"GET /a HTTP/1.1\r\nCookie: ".to_vec();
            r.resize(r.len() + cookie, b'x');
            r.extend_from_slice(b"\r\nHost: far.example.net\r\n\r\n");
            r
        };
        let mut s = Sniffer::new();
        for seg in request(30_000).chunks(1448) {
            feed(&mut s, Carrier::Tcp, Dir::Up, (50000, 80), seg);
        }
        assert_eq!(s.protocol, Some(Protocol::Http));
        assert_eq!(s.server_name.as_deref(), Some("far.example.net"));
        let mut t = Sniffer::new();
        for seg in request(HEAD_SNIFF_BYTES).chunks(1448) {
            feed(&mut t, Carrier::Tcp, Dir::Up, (50000, 80), seg);
        }
        assert!(t.done);
        assert_eq!(t.server_name, None);
    }

    /// SIP, a call's signalling: `other` and cleartext, named by the host
    /// its request is for, over UDP (re-registrations at any pace) and
    /// TCP (not taken for HTTP by its `OPTIONS` method); RTP sent after a
    /// SIP start on the same flow still makes it media.
    #[test]
    fn sip_is_signalling_named_by_its_request() {
        let register =
            b"REGISTER sip:sip.cybercity.dk SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.2\r\n\r\n";
        let mut u = Sniffer::new();
        feed_paced(&mut u, (5060, 5060), 30, |_| register.to_vec());
        assert_eq!(
            (u.protocol, u.class, u.encrypted),
            (Some(Protocol::Sip), Some(Traffic::Other), Some(false))
        );
        assert_eq!(u.server_name.as_deref(), Some("sip.cybercity.dk"));
        let mut t = Sniffer::new();
        let options = b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\nMax-Forwards: 70\r\n\r\n";
        feed(&mut t, Carrier::Tcp, Dir::Up, (40312, 5060), options);
        assert_eq!(
            (t.protocol, t.class),
            (Some(Protocol::Sip), Some(Traffic::Other))
        );
        assert_eq!(t.server_name.as_deref(), Some("chicago.example.com"));
        let mut r = Sniffer::new();
        feed(&mut r, Carrier::Udp, Dir::Up, (5060, 5060), register);
        for seq in [1, 2] {
            feed(
                &mut r,
                Carrier::Udp,
                Dir::Up,
                (5060, 5060),
                &rtc::rtp_packet(seq),
            );
        }
        assert_eq!(r.class, Some(Traffic::Media));
    }

    #[test]
    fn tunnels_are_other_whatever_their_shape() {
        use crate::wire::tunnel::tests::{
            esp, ikev2_init, ovpn_client, ovpn_server, wg_data, wg_message,
        };
        use crate::wire::utp::tests::utp;
        // WireGuard: a handshake, then paced data that alone would read as
        // media.
        let mut s = Sniffer::new();
        feed(
            &mut s,
            Carrier::Udp,
            Dir::Up,
            (40000, 51820),
            &wg_message(1, 148),
        );
        feed_paced(&mut s, (40000, 51820), 30, |i| wg_data(5, i, 160));
        assert_eq!(
            (s.protocol, s.class),
            (Some(Protocol::WireGuard), Some(Traffic::Other))
        );
        // Real-time packets the app sends on it after all: media.
        for seq in [1, 2] {
            feed(
                &mut s,
                Carrier::Udp,
                Dir::Up,
                (40000, 51820),
                &rtc::rtp_packet(seq),
            );
        }
        assert_eq!(s.class, Some(Traffic::Media));
        // Mid-session (no handshake in sight): two data messages that go on,
        // the other end's answers in between.
        let mut d = Sniffer::new();
        for i in 0..30u64 {
            let (up, down) = (wg_data(5, 1000 + i, 160), wg_data(9, 40 + i, 96));
            d.on_payload(Carrier::Udp, Dir::Up, (40000, 443), &up, i * 20_000_000);
            d.on_payload(Carrier::Udp, Dir::Down, (40000, 443), &down, i * 20_000_000);
        }
        assert_eq!(d.protocol, Some(Protocol::WireGuard));
        assert_eq!(d.class, Some(Traffic::Other));
        // ... but data whose counters do not go on is not taken for it.
        let mut j = Sniffer::new();
        feed_paced(&mut j, (40000, 443), 30, |i| wg_data(i as u32, 7, 160));
        assert_eq!(j.class, Some(Traffic::Media), "by its shape");
        // OpenVPN: the reset, and the answer naming its session.
        let (c, sv) = ([1, 2, 3, 4, 5, 6, 7, 8], [9; 8]);
        let mut o = Sniffer::new();
        feed(
            &mut o,
            Carrier::Udp,
            Dir::Up,
            (40000, 1194),
            &ovpn_client(c),
        );
        assert!(!o.is_done(), "a reset alone is not enough");
        feed(
            &mut o,
            Carrier::Udp,
            Dir::Down,
            (40000, 1194),
            &ovpn_server(sv, [7; 8]),
        );
        assert!(!o.is_done(), "an answer for another session");
        feed(
            &mut o,
            Carrier::Udp,
            Dir::Down,
            (40000, 1194),
            &ovpn_server(sv, c),
        );
        assert_eq!(
            (o.protocol, o.class),
            (Some(Protocol::OpenVpn), Some(Traffic::Other))
        );
        // uTP: a SYN, then the answer's paced acknowledgements.
        let mut u = Sniffer::new();
        let syn = utp(4, 77, 1, 0, &[]);
        feed(&mut u, Carrier::Udp, Dir::Up, (40000, 6881), &syn);
        for i in 0..30u64 {
            let ack = utp(2, 77, 9 + i as u16, 1, &[]);
            u.on_payload(Carrier::Udp, Dir::Down, (40000, 6881), &ack, i * 20_000_000);
        }
        assert_eq!(
            (u.protocol, u.class),
            (Some(Protocol::BitTorrent), Some(Traffic::Other))
        );
        // RakNet: its handshake, then connected datagrams (0x84: RTP-like).
        let mut g = Sniffer::new();
        let req = raknet::tests::open_connection_request(1200);
        feed(&mut g, Carrier::Udp, Dir::Up, (40000, 19132), &req);
        feed_paced(&mut g, (40000, 19132), 30, |i| {
            let mut d = vec![0x84, i as u8, 0, 0];
            d.resize(120, 0x42);
            d
        });
        assert_eq!(
            (g.protocol, g.class),
            (Some(Protocol::RakNet), Some(Traffic::Other))
        );
        // IKE, whose random SPI would otherwise read as RTP.
        let mut k = Sniffer::new();
        let mut init = ikev2_init(240);
        init[0] = 0x80;
        feed(&mut k, Carrier::Udp, Dir::Up, (500, 500), &init);
        assert_eq!(
            (k.protocol, k.class),
            (Some(Protocol::Ike), Some(Traffic::Other))
        );
        // ESP on 4500 with no IKE in sight: by its sequence numbers.
        let mut e = Sniffer::new();
        feed_paced(&mut e, (40000, 4500), 30, |i| {
            esp(0x0100_0001, 50 + i as u32, 160)
        });
        assert_eq!(
            (e.protocol, e.class),
            (Some(Protocol::Ike), Some(Traffic::Other))
        );
        let mut r = Sniffer::new();
        feed(&mut r, Carrier::Udp, Dir::Up, (40000, 7000), &init);
        assert_eq!(r.protocol, None, "not on IKE's ports: an RTP-like guess");
    }

    #[test]
    fn zoom_media_and_zoom_stun_are_media_from_the_first_packet() {
        use crate::wire::rtc::tests::{classic_stun_message, zoom_peer_hello, zoom_sfu_media};
        let first = |ports: (u16, u16), p: &[u8]| {
            let mut s = Sniffer::new();
            feed(&mut s, Carrier::Udp, Dir::Up, ports, p);
            (s.protocol, s.class)
        };
        let zoom = (Some(Protocol::Zoom), Some(Traffic::Media));
        assert_eq!(first((40000, 8801), &zoom_sfu_media(15, 0, 1)), zoom);
        let hello = zoom_peer_hello("203.0.113.9", b"0a1b2c3d");
        assert_eq!(first((40000, 50000), &hello), zoom);
        // Zoom's peers check connectivity with classic STUN.
        assert_eq!(
            first((40000, 50000), &classic_stun_message(1, &[])),
            (Some(Protocol::Stun), Some(Traffic::Media))
        );
    }

    /// A quarter of all datagrams start like RTP (version 2), so one
    /// header is not enough: two of one stream are. NetBIOS, DNSCrypt and
    /// NTP in nDPI's captures read as RTP one packet at a time; none has a
    /// source that repeats with a sequence that moves on.
    #[test]
    fn rtp_is_two_packets_of_one_stream() {
        let rtp = |seq: u16, ssrc: u32| {
            let mut p = rtc::rtp_packet(seq);
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            p
        };
        let ports = (40000, 5004);
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Udp, Dir::Up, ports, &rtp(10, 7));
        assert_eq!(s.protocol, None, "one header is a guess");
        feed(&mut s, Carrier::Udp, Dir::Down, ports, &rtp(11, 7));
        assert_eq!(s.protocol, None, "the other direction is another stream");
        feed(&mut s, Carrier::Udp, Dir::Up, ports, &rtp(11, 9));
        assert_eq!(s.protocol, None, "another source");
        feed(&mut s, Carrier::Udp, Dir::Up, ports, &rtp(11, 9));
        assert_eq!(s.protocol, None, "the same sequence number again");
        feed(&mut s, Carrier::Udp, Dir::Up, ports, &rtp(13, 9));
        assert_eq!(
            (s.protocol, s.class),
            (Some(Protocol::Rtp), Some(Traffic::Media))
        );
        // Sequence numbers wrap; a jump past the step is not a stream.
        let mut w = Sniffer::new();
        feed(&mut w, Carrier::Udp, Dir::Up, ports, &rtp(65535, 3));
        feed(&mut w, Carrier::Udp, Dir::Up, ports, &rtp(0, 3));
        assert_eq!(w.protocol, Some(Protocol::Rtp));
        let mut j = Sniffer::new();
        feed(&mut j, Carrier::Udp, Dir::Up, ports, &rtp(100, 3));
        feed(
            &mut j,
            Carrier::Udp,
            Dir::Up,
            ports,
            &rtp(100 + RTP_SEQ_STEP + 1, 3),
        );
        assert_eq!(j.protocol, None);
        // The hold's end takes a lone header for media.
        j.end_hold();
        assert_eq!(
            (j.protocol, j.class),
            (Some(Protocol::Rtp), Some(Traffic::Media))
        );
        let mut o = Sniffer::new();
        feed(&mut o, Carrier::Udp, Dir::Up, ports, b"opaque datagram");
        o.end_hold();
        assert_eq!(o.protocol, None, "nothing that read as RTP: no guess");
    }

    /// DNS ports: a message whose name geowall does not take is DNS all
    /// the same (LLMNR with a UTF-8 host name, an inverse query), without
    /// a name, and a later message can still name the flow.
    #[test]
    fn dns_on_its_ports_without_a_name_geowall_takes() {
        // LLMNR query for a UTF-8 name (from nDPI's 1kxun.pcap).
        let llmnr = [
            0x53, 0x74, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x0c, 0xe5, 0xb0, 0x8f, 0xe4, 0xbd, 0x9b,
            0xe5, 0xb0, 0x88, 0xe6, 0xa9, 0x9f, 0, 0, 0xff, 0, 1,
        ];
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Udp, Dir::Up, (51451, 5355), &llmnr);
        assert_eq!(
            (s.protocol, s.class),
            (Some(Protocol::Dns), Some(Traffic::Dns))
        );
        assert_eq!(s.server_name, None);
        feed(
            &mut s,
            Carrier::Udp,
            Dir::Up,
            (51451, 5355),
            &dns::tests::query("printer.local"),
        );
        assert_eq!(s.server_name.as_deref(), Some("printer.local"));
        // Not a DNS header: an unassigned opcode, or nothing in it.
        for bad in [
            &[0u8, 1, 0x18, 0, 0, 1, 0, 0, 0, 0, 0, 0][..],
            &[0u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            let mut b = Sniffer::new();
            feed(&mut b, Carrier::Udp, Dir::Up, (40000, 53), bad);
            assert_ne!(b.protocol, Some(Protocol::Dns), "{bad:?}");
        }
    }

    #[test]
    fn unknown_udp_with_a_realtime_shape_is_media() {
        let mut s = Sniffer::new();
        for i in 0..25u64 {
            s.on_payload(
                Carrier::Udp,
                Dir::Up,
                (40000, 50000),
                &[0x55; 160],
                i * 20_000_000,
            );
        }
        assert_eq!(s.class, Some(Traffic::Media));
        let mut bulk = Sniffer::new();
        for i in 0..25u64 {
            bulk.on_payload(
                Carrier::Udp,
                Dir::Up,
                (40000, 50000),
                &[0x55; 1400],
                i * 20_000_000,
            );
        }
        assert_ne!(bulk.class, Some(Traffic::Media));
    }

    /// One odd datagram does not switch real-time detection off: unknown
    /// UDP of 20 datagrams 20 ms apart, the first 1,400 bytes, is media.
    #[test]
    fn one_odd_datagram_does_not_hide_a_real_time_shape() {
        let mut s = Sniffer::new();
        for i in 0..20u64 {
            let len = if i == 0 { 1400 } else { 200 };
            let p: Vec<u8> = (0..len)
                .map(|b| (b * 7 + i as usize) as u8 | 0x01)
                .collect();
            s.on_payload(Carrier::Udp, Dir::Up, (40000, 7000), &p, i * 20_000_000);
        }
        assert_eq!(s.class, Some(Traffic::Media));
    }

    /// A flow that starts with a real QUIC Initial (from a capture) and
    /// goes on with RTP is media, not `web`.
    #[test]
    fn quic_of_every_generation_is_web_never_media() {
        // A draft-28 0-RTT packet, an mvfst Handshake and a Version
        // Negotiation, on a port media also uses.
        let long = |first: u8, version: u32| {
            let mut p = vec![first];
            p.extend_from_slice(&version.to_be_bytes());
            p.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
            p.extend_from_slice(&[0x40, 40]);
            p.extend_from_slice(&[0x80; 40]);
            p
        };
        let mut vn = vec![0x80, 0, 0, 0, 0, 0, 0];
        vn.extend_from_slice(&1u32.to_be_bytes());
        for (dir, p) in [
            (Dir::Up, long(0xd0, 0xFF00_001C)),
            (Dir::Up, long(0xe0, 0xFACE_B016)),
            (Dir::Down, vn),
        ] {
            let mut s = Sniffer::new();
            s.on_payload(Carrier::Udp, dir, (40000, 3478), &p, 0);
            assert_eq!(
                (s.protocol, s.class),
                (Some(Protocol::Quic), Some(Traffic::Web)),
                "{p:02x?}"
            );
            // Its short-header packets that follow keep it web (real-time
            // packets after a QUIC-looking start still make media: see
            // the next test).
            let mut short = vec![0x41];
            short.extend_from_slice(&[0x9c; 120]);
            for i in 0..8 {
                s.on_payload(Carrier::Udp, Dir::Up, (40000, 3478), &short, 1 + i);
            }
            assert_eq!(s.class, Some(Traffic::Web));
        }
    }

    #[test]
    fn a_quic_start_does_not_make_media_web() {
        let initial = quic_initial();
        let mut s = Sniffer::new();
        s.on_payload(Carrier::Udp, Dir::Up, (40000, 443), &initial, 0);
        assert_eq!(s.protocol, Some(Protocol::Quic));
        assert_eq!(s.class, Some(Traffic::Web));
        // One packet that reads as RTP is what a greased QUIC short header
        // (RFC 9287) can look like; the next packet of its stream is not.
        s.on_payload(Carrier::Udp, Dir::Up, (40000, 443), &rtc::rtp_packet(0), 1);
        assert_eq!(s.class, Some(Traffic::Web));
        s.on_payload(Carrier::Udp, Dir::Up, (40000, 443), &rtc::rtp_packet(1), 2);
        assert_eq!(s.class, Some(Traffic::Media));
    }

    /// A TCP client's first bytes that neither TLS nor HTTP can start
    /// with decide the flow at once (no waiting for more packets), as
    /// `other`; bytes that could still become an HTTP request wait.
    #[test]
    fn unknown_tcp_first_bytes_decide_at_once() {
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Tcp, Dir::Up, (40000, 9002), b"ping 0\n");
        assert!(s.is_done());
        assert_eq!(
            (s.protocol, s.class),
            (Some(Protocol::Unknown), Some(Traffic::Other))
        );
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Tcp, Dir::Up, (40000, 80), b"GET / HT");
        assert!(!s.is_done(), "could still be HTTP");
    }

    #[test]
    fn encryption_status() {
        let mut h = Sniffer::new();
        feed(
            &mut h,
            Carrier::Tcp,
            Dir::Up,
            (5000, 80),
            b"GET / HTTP/1.1\r\nHost: x.example\r\n\r\n",
        );
        assert_eq!(h.encryption(), Encryption::Cleartext);
        // Unknown TCP: printable text is cleartext, uniform bytes encrypted.
        let mut t = Sniffer::new();
        feed(
            &mut t,
            Carrier::Tcp,
            Dir::Up,
            (5000, 7000),
            b"HELLO some plain protocol text with words in it",
        );
        assert_eq!(t.encryption(), Encryption::Cleartext);
        let mut r = Sniffer::new();
        let uniform: Vec<u8> = (0..512u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        feed(&mut r, Carrier::Tcp, Dir::Up, (5000, 7000), &uniform);
        assert_eq!(r.encryption(), Encryption::Encrypted);
        let mut few = Sniffer::new();
        feed(
            &mut few,
            Carrier::Tcp,
            Dir::Up,
            (5000, 7000),
            &[0, 1, 2, 250],
        );
        assert_eq!(few.encryption(), Encryption::Unknown);
        let r = tls::tests::hello_record("a.example");
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Tcp, Dir::Up, (5000, 443), &r);
        assert_eq!(s.encryption(), Encryption::Encrypted);
    }

    #[test]
    fn dns_http_icmp() {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 7];
        q.extend_from_slice(b"example");
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut s = Sniffer::new();
        feed(&mut s, Carrier::Udp, Dir::Up, (5000, 53), &q);
        assert_eq!(
            (s.class, s.server_name.as_deref()),
            (Some(Traffic::Dns), Some("a.example"))
        );
        // The same query to a resolver on another port: DNS by content;
        // but not on NetBIOS's name service port, which shares the format.
        let mut odd = Sniffer::new();
        feed(&mut odd, Carrier::Udp, Dir::Up, (5000, 5300), &q);
        assert_eq!(
            (odd.class, odd.protocol, odd.server_name.as_deref()),
            (Some(Traffic::Dns), Some(Protocol::Dns), Some("a.example"))
        );
        let mut nb = Sniffer::new();
        feed(&mut nb, Carrier::Udp, Dir::Up, (137, 137), &q);
        assert_ne!(nb.class, Some(Traffic::Dns));
        let mut h = Sniffer::new();
        feed(
            &mut h,
            Carrier::Tcp,
            Dir::Up,
            (5000, 80),
            b"GET / HTTP/1.1\r\nHost: x.example\r\n\r\n",
        );
        assert_eq!(
            (h.protocol, h.encrypted),
            (Some(Protocol::Http), Some(false))
        );
        let mut i = Sniffer::new();
        feed(&mut i, Carrier::IcmpEcho, Dir::Up, (0, 0), &[]);
        assert_eq!(i.class, Some(Traffic::Ping));
        // An error (port unreachable, packet too big) is ICMP too.
        let mut e = Sniffer::new();
        feed(&mut e, Carrier::IcmpOther, Dir::Up, (0, 0), &[0x45; 28]);
        assert_eq!(
            (e.protocol, e.class),
            (Some(Protocol::Icmp), Some(Traffic::Ping))
        );
    }
}
