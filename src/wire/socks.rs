//! SOCKS proxies (SOCKS 4 and 4a as NEC published them, SOCKS 5 of
//! RFC 1928 with RFC 1929's username and password): the client's side of
//! the handshake, for where it asks the proxy to go. The target travels in
//! the clear, a name (4a, 5) or an address (4, 5), and so does the first
//! message the client then sends through the tunnel: a TLS ClientHello
//! there names the server the proxy reaches ([`SocksStream`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::tls::{self, Hello};

/// Where a client asked a proxy to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A host name (SOCKS 4a, SOCKS 5's domain name type, or the SNI of
    /// the TLS ClientHello sent through the tunnel).
    Name(&'a str),
    /// An address and port.
    Addr(SocketAddr),
}

/// The versions of a SOCKS client's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// SOCKS 4 or 4a: the request is the first message.
    V4,
    /// SOCKS 5: the method greeting, then the request.
    V5,
}

/// The longest SOCKS message read (a SOCKS 5 request with a 255-byte
/// name is 262 bytes; SOCKS 4 user ids and 4a names are read up to this).
const MAX_MESSAGE: usize = 600;

/// Whether a TCP stream that begins with `p` is a SOCKS client's: a whole
/// SOCKS 5 greeting (version 5, 1 to 255 methods, exactly that many
/// bytes, or followed at once by the start of its request), or a whole
/// SOCKS 4 or 4a request (CONNECT or BIND, a user id and, for 4a, a name,
/// each ended by a zero byte, and nothing after).
pub fn greeting(p: &[u8]) -> Option<Version> {
    match p {
        [5, n, rest @ ..] if *n >= 1 => {
            let n = usize::from(*n);
            let methods = rest.get(..n)?;
            // Methods: the assigned ones and the private range.
            if !methods
                .iter()
                .all(|&m| m <= 9 || (0x80..=0xFE).contains(&m))
            {
                return None;
            }
            match &rest[n..] {
                [] => Some(Version::V5),
                [5, 1..=3, 0, 1 | 3 | 4, ..] => Some(Version::V5),
                _ => None,
            }
        }
        [4, 1 | 2, ..] => match socks4_request(p) {
            Some((_, len)) if len == p.len() => Some(Version::V4),
            _ => None,
        },
        _ => None,
    }
}

/// A whole SOCKS 4 or 4a request at the start of `p`: its target and its
/// length; `None` if it is not whole (or not one).
fn socks4_request(p: &[u8]) -> Option<(Target<'_>, usize)> {
    if p.len() < 9 || p[0] != 4 || !matches!(p[1], 1 | 2) {
        return None;
    }
    let port = u16::from_be_bytes([p[2], p[3]]);
    let ip = Ipv4Addr::new(p[4], p[5], p[6], p[7]);
    let user_end = 8 + p[8..].iter().take(MAX_MESSAGE).position(|&c| c == 0)?;
    let o = ip.octets();
    if o[..3] == [0, 0, 0] && o[3] != 0 {
        // 4a: the name follows the user id.
        let name_at = user_end + 1;
        let name_end = name_at + p.get(name_at..)?.iter().take(256).position(|&c| c == 0)?;
        let name = std::str::from_utf8(&p[name_at..name_end]).ok()?;
        return Some((Target::Name(name), name_end + 1));
    }
    Some((
        Target::Addr(SocketAddr::new(IpAddr::V4(ip), port)),
        user_end + 1,
    ))
}

/// A SOCKS 5 request's command, target and length.
type Request<'a> = (u8, Target<'a>, usize);

/// A whole SOCKS 5 request at the start of `p` (RFC 1928 section 4): its
/// command, target and length; `None` if it is not whole; `Some(Err)` if
/// it is not a request.
fn socks5_request(p: &[u8]) -> Option<Result<Request<'_>, ()>> {
    // Each byte of the fixed part is checked as soon as it is in.
    let fixed_ok = p.first().is_none_or(|&v| v == 5)
        && p.get(1).is_none_or(|c| matches!(c, 1..=3))
        && p.get(2).is_none_or(|&r| r == 0)
        && p.get(3).is_none_or(|a| matches!(a, 1 | 3 | 4));
    if !fixed_ok {
        return Some(Err(()));
    }
    let head = p.get(..4)?;
    Some(address(&p[3..])?.map(|(target, n)| (head[1], target, 3 + n)))
}

/// An address (RFC 1928 section 5) at the start of `p`, from its type byte
/// through its port: the target and the bytes it takes; `None` if it is
/// not whole; `Some(Err)` if it is not one.
fn address(p: &[u8]) -> Option<Result<(Target<'_>, usize), ()>> {
    let atyp = *p.first()?;
    let (addr_len, at) = match atyp {
        1 => (4, 1),
        4 => (16, 1),
        3 => (usize::from(*p.get(1)?), 2),
        _ => return Some(Err(())),
    };
    let end = at + addr_len + 2;
    let b = p.get(..end)?;
    let port = u16::from_be_bytes([b[end - 2], b[end - 1]]);
    let a = &b[at..at + addr_len];
    let target = match atyp {
        1 => Target::Addr(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            port,
        )),
        4 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            Target::Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => match std::str::from_utf8(a) {
            Ok(n) if !n.is_empty() => Target::Name(n),
            _ => return Some(Err(())),
        },
    };
    Some(Ok((target, end)))
}

/// The target of a datagram a client sends to its SOCKS 5 proxy's UDP
/// relay (RFC 1928 section 7: two zero bytes, a fragment number, then the
/// address type, address and port, then the data); `None` if it does not
/// start like one.
pub fn udp_target(p: &[u8]) -> Option<Target<'_>> {
    match p {
        [0, 0, _frag, rest @ ..] => address(rest)?.ok().map(|(t, _)| t),
        _ => None,
    }
}

/// An RFC 1929 username/password message at the start of `p`: its length;
/// `None` if it is not whole; `Some(Err)` if it is not one.
fn userpass(p: &[u8]) -> Option<Result<usize, ()>> {
    if *p.first()? != 1 {
        return Some(Err(()));
    }
    let ulen = usize::from(*p.get(1)?);
    let plen = usize::from(*p.get(2 + ulen)?);
    let n = 3 + ulen + plen;
    (p.len() >= n).then_some(Ok(n))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// SOCKS 5's greeting (or, at the start, SOCKS 4's request).
    #[default]
    Greeting,
    /// SOCKS 5, after the greeting: a username/password message or the
    /// request.
    Request,
    /// Through the tunnel: its first bytes, while they may be a TLS
    /// ClientHello.
    Tunnel,
    /// Nothing more is read.
    Done,
}

/// The client's side of a SOCKS connection, message by message:
/// [`SocksStream::feed`] hands over the target of its request, then the
/// server name of a TLS ClientHello that the client sends first through
/// the tunnel (up to [`tls::MAX_HELLO`] bytes). A stream that stops
/// looking like SOCKS is given up ([`SocksStream::done`]); a UDP
/// ASSOCIATE's address is the client's own, not a target, and ends the
/// reading. Memory: one message, or one ClientHello.
#[derive(Debug, Default)]
pub struct SocksStream {
    state: State,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    udp: bool,
}

impl SocksStream {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the client asked for a UDP relay (SOCKS 5's UDP
    /// ASSOCIATE): its datagrams to the proxy then name their targets
    /// ([`udp_target`]).
    pub fn udp_associate(&self) -> bool {
        self.udp
    }

    /// Whether nothing more is read from the stream (the tunnel's first
    /// message was read, or the stream is not SOCKS).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether a message has begun and is not whole yet (a request, or
    /// the ClientHello through the tunnel): the bytes fed so far end
    /// inside it, and only its rest says where it goes.
    pub fn partial(&self) -> bool {
        self.state != State::Done && !self.buf.is_empty()
    }

    fn finish(&mut self) {
        self.state = State::Done;
        self.buf = Vec::new();
        self.scratch = Vec::new();
    }

    /// Reads the next bytes of the client's stream; `on_target` gets each
    /// target they complete, in order.
    pub fn feed(&mut self, data: &[u8], mut on_target: impl FnMut(Target<'_>)) {
        if self.state == State::Done {
            return;
        }
        self.buf.extend_from_slice(data);
        loop {
            let buf = std::mem::take(&mut self.buf);
            let used = self.step(&buf, &mut on_target);
            match used {
                // Wait for more (within the bounds), or the state says.
                None => {
                    let bound = if self.state == State::Tunnel {
                        tls::MAX_HELLO
                    } else {
                        MAX_MESSAGE
                    };
                    if self.state == State::Done || buf.len() > bound {
                        self.finish();
                    } else {
                        self.buf = buf;
                    }
                    return;
                }
                Some(n) => {
                    if self.state == State::Done {
                        self.finish();
                        return;
                    }
                    self.buf = buf[n..].to_vec();
                    if self.buf.is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// One message from the start of `b`: the bytes it used, or `None` to
    /// wait for more (or when it ended the reading).
    fn step(&mut self, b: &[u8], on_target: &mut impl FnMut(Target<'_>)) -> Option<usize> {
        match self.state {
            State::Greeting => match b.first()? {
                5 => {
                    let n = usize::from(*b.get(1)?);
                    if n == 0 || b.len() < 2 + n {
                        self.state = if n == 0 { State::Done } else { State::Greeting };
                        return None;
                    }
                    self.state = State::Request;
                    Some(2 + n)
                }
                4 => match socks4_request(b) {
                    Some((t, n)) => {
                        on_target(t);
                        self.state = State::Tunnel;
                        Some(n)
                    }
                    None if b.len() >= 9 && !matches!(b[1], 1 | 2) => {
                        self.state = State::Done;
                        None
                    }
                    None => None,
                },
                _ => {
                    self.state = State::Done;
                    None
                }
            },
            State::Request => match b.first()? {
                1 => match userpass(b)? {
                    Ok(n) => Some(n),
                    Err(()) => {
                        self.state = State::Done;
                        None
                    }
                },
                _ => match socks5_request(b)? {
                    Ok((cmd, t, n)) => {
                        if cmd == 3 {
                            // UDP ASSOCIATE: the client's own address; the
                            // targets come in each datagram's header
                            // ([`udp_target`]).
                            self.udp = true;
                            self.state = State::Done;
                            return Some(n);
                        }
                        on_target(t);
                        self.state = State::Tunnel;
                        Some(n)
                    }
                    Err(()) => {
                        self.state = State::Done;
                        None
                    }
                },
            },
            State::Tunnel => {
                let mut scratch = std::mem::take(&mut self.scratch);
                let r = match tls::client_hello(b, &mut scratch) {
                    Hello::Found(h) => {
                        if let Some(n) = h.sni {
                            on_target(Target::Name(n));
                        }
                        self.state = State::Done;
                        Some(b.len())
                    }
                    Hello::NeedMore(_) => None,
                    Hello::NotTls => {
                        self.state = State::Done;
                        None
                    }
                };
                self.scratch = scratch;
                r
            }
            State::Done => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(cuts: &[usize], stream: &[u8]) -> (Vec<String>, SocksStream) {
        let mut s = SocksStream::new();
        let mut got = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            let c = c.clamp(at, stream.len());
            s.feed(&stream[at..c], |t| {
                got.push(match t {
                    Target::Name(n) => n.to_owned(),
                    Target::Addr(a) => a.to_string(),
                })
            });
            at = c;
        }
        (got, s)
    }

    /// SOCKS 5 with a name (curl's `socks5h://`, username and password
    /// offered and used), then a ClientHello through the tunnel.
    fn socks5_name_then_hello() -> Vec<u8> {
        let mut s = vec![5, 2, 0, 2];
        s.extend_from_slice(&[1, 4, b'u', b's', b'e', b'r', 2, b'p', b'w']);
        s.extend_from_slice(&[5, 1, 0, 3, 15]);
        s.extend_from_slice(b"far.example.net");
        s.extend_from_slice(&443u16.to_be_bytes());
        s.extend_from_slice(&tls::client_hello_records("hello.example.org", 0));
        s
    }

    #[test]
    fn every_version_names_where_it_goes() {
        let s = socks5_name_then_hello();
        let want = ["far.example.net", "hello.example.org"];
        let (got, r) = targets(&[], &s);
        assert_eq!(got, want);
        assert!(r.done() && !r.partial());
        // Cut anywhere: the same, and partial until the hello is whole.
        for c in 1..s.len() {
            let (got, _) = targets(&[c], &s);
            assert_eq!(got, want, "cut at {c}");
            let mut r = SocksStream::new();
            r.feed(&s[..c], |_| {});
            assert!(r.partial() || c == 4 || c == 13 || c == 35, "cut at {c}");
        }
        // SOCKS 5 with IPv4 and IPv6 addresses, no tunnel hello.
        let mut v4 = vec![5, 1, 0, 5, 1, 0, 1, 203, 0, 113, 10, 0x0D, 0x05];
        v4.extend_from_slice(b"\x16\x03");
        let (got, r) = targets(&[], &v4);
        assert_eq!(got, ["203.0.113.10:3333"]);
        assert!(r.partial(), "the tunnel's record may be a hello");
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&"2001:db8::10".parse::<Ipv6Addr>().expect("v6").octets());
        v6.extend_from_slice(&443u16.to_be_bytes());
        v6.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (got, r) = targets(&[], &v6);
        assert_eq!(got, ["[2001:db8::10]:443"]);
        assert!(r.done() && !r.partial(), "not TLS through the tunnel");
        // SOCKS 4 and 4a.
        let s4 = [4, 1, 0, 80, 198, 51, 100, 7, b'm', b'e', 0];
        let (got, r) = targets(&[], &s4);
        assert_eq!(got, ["198.51.100.7:80"]);
        assert!(!r.done());
        let mut s4a = vec![4, 1, 1, 187, 0, 0, 0, 1, 0];
        s4a.extend_from_slice(b"edge.example\0");
        assert_eq!(targets(&[], &s4a).0, ["edge.example"]);
        assert_eq!(greeting(&s4a), Some(Version::V4));
        // UDP ASSOCIATE names the client, not a target: its datagrams do.
        let (got, r) = targets(&[], &[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(got.is_empty() && r.done() && r.udp_associate());
        assert!(!targets(&[], &s).1.udp_associate());
        let mut d = vec![0, 0, 0, 3, 12];
        d.extend_from_slice(b"edge.example");
        d.extend_from_slice(&[0x13, 0x88, 0xAB]);
        assert_eq!(udp_target(&d), Some(Target::Name("edge.example")));
        let d = [0, 0, 0, 1, 203, 0, 113, 10, 0x13, 0x88, 0xAB];
        assert_eq!(
            udp_target(&d),
            Some(Target::Addr("203.0.113.10:5000".parse().expect("addr")))
        );
        for d in [
            &[0u8, 0, 0, 1, 203, 0][..],
            &[0, 1, 0, 1],
            &[0, 0, 0, 9, 1, 2, 3, 4, 0, 0],
        ] {
            assert_eq!(udp_target(d), None, "{d:?}");
        }
    }

    #[test]
    fn greetings_are_told_from_other_protocols() {
        assert_eq!(greeting(&[5, 1, 0]), Some(Version::V5));
        assert_eq!(greeting(&[5, 2, 0, 2]), Some(Version::V5));
        assert_eq!(
            greeting(&[5, 1, 0, 5, 1, 0, 3, 1, b'a', 0, 80]),
            Some(Version::V5)
        );
        // DCE/RPC's bind (version 5.0 and 5.1), a short start, no method,
        // methods not assigned, SOCKS 4 with more after its request.
        for p in [
            &[5u8, 0, 11, 3, 16, 0, 0, 0][..],
            &[5, 1, 11, 3, 16, 0, 0, 0, 72, 0],
            &[5, 1],
            &[5, 0],
            &[5, 2, 0x20, 0x30],
            &[4, 1, 0, 80, 198, 51, 100, 7, 0, 1],
            &[4, 3, 0, 80, 198, 51, 100, 7, 0],
        ] {
            assert_eq!(greeting(p), None, "{p:?}");
        }
    }

    #[test]
    fn what_is_not_socks_ends_the_reading() {
        for s in [
            &[5u8, 0][..],
            &[5, 1, 0, 9, 9, 9, 9],
            &[5, 1, 0, 5, 1, 0, 7, 0, 0],
            &[5, 1, 0, 2, 9],
            &[7, 1],
        ] {
            let (got, r) = targets(&[], s);
            assert!(got.is_empty() && r.done() && !r.partial(), "{s:?}");
        }
        // A request that never ends is not kept.
        let mut long = vec![4, 1, 0, 80, 0, 0, 0, 1];
        long.resize(2 * MAX_MESSAGE, b'a');
        let (_, r) = targets(&[], &long);
        assert!(r.done() && !r.partial());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_cuts_do_not_matter(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cut in 0usize..400,
        ) {
            let _ = greeting(&tail);
            let _ = udp_target(&tail);
            let mut s = socks5_name_then_hello();
            s.truncate(20);
            s.extend_from_slice(&tail);
            let (whole, a) = targets(&[], &s);
            let (pieces, b) = targets(&[cut], &s);
            proptest::prop_assert_eq!(whole, pieces);
            proptest::prop_assert_eq!((a.done(), a.partial()), (b.done(), b.partial()));
        }
    }
}
