//! HTTP/1.x requests: the `Host` header.

/// The outcome of looking for an HTTP request's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpHost<'a> {
    /// Not an HTTP/1.x request.
    NotHttp,
    /// A request whose headers are not complete yet.
    NeedMore,
    /// The request's host (port removed), or `None` if it has no valid
    /// `Host` header.
    Found(Option<&'a str>),
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"PATCH ",
    b"TRACE ",
];

/// An HTTP/1.x response's status line at the start of `p`: `HTTP/1.0` or
/// `HTTP/1.1`, a space, a three-digit status code, then a space or the
/// line's end. What a capture that missed the request still shows.
pub fn response_start(p: &[u8]) -> bool {
    p.len() >= 13
        && (p.starts_with(b"HTTP/1.1 ") || p.starts_with(b"HTTP/1.0 "))
        && p[9..12].iter().all(u8::is_ascii_digit)
        && matches!(p[12], b' ' | b'\r')
}

/// Whether `p` starts with an HTTP/1.x request's method and the space
/// after it.
pub fn request_start(p: &[u8]) -> bool {
    METHODS.iter().any(|m| p.starts_with(m))
}

/// Whether a stream that begins with `p` may be HTTP/1.x requests: one of
/// the common methods and its space, or the start of one (a stream's
/// first segment may be short).
pub fn may_start_request(p: &[u8]) -> bool {
    let head = &p[..p.len().min(8)];
    !p.is_empty()
        && METHODS
            .iter()
            .any(|m| m.starts_with(head) || head.starts_with(m))
}

/// Looks for the `Host` of an HTTP/1.x request at the start of `stream`.
pub fn host(stream: &[u8]) -> HttpHost<'_> {
    if !may_start_request(stream) {
        return HttpHost::NotHttp;
    }
    let Some(line_end) = find(stream, b"\r\n") else {
        return if stream.len() > 8192 {
            HttpHost::NotHttp
        } else {
            HttpHost::NeedMore
        };
    };
    if !stream[..line_end].windows(7).any(|w| w == b"HTTP/1.") {
        return HttpHost::NotHttp;
    }
    let mut at = line_end + 2;
    loop {
        let Some(rel) = find(&stream[at..], b"\r\n") else {
            return HttpHost::NeedMore;
        };
        let line = &stream[at..at + rel];
        if line.is_empty() {
            return HttpHost::Found(None);
        }
        if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"host:") {
            return HttpHost::Found(authority_host(trim(&line[5..])));
        }
        at += rel + 2;
    }
}

/// The most bytes of one request's head [`RequestStream`] keeps: a head
/// that runs longer is not read (the stream is given up).
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// The most of a ClientHello read through a CONNECT tunnel (the hello and
/// its records' headers).
const MAX_TUNNEL_HELLO: usize = super::tls::MAX_HELLO + 16 * 1024;

/// The longest chunk-size line (with its extensions) or trailer line read.
const MAX_CHUNK_LINE: usize = 4096;

/// The client's side of an HTTP/1.x connection, framed request by request
/// (RFC 9112): each request's head is read whole, then its body passed
/// over by its `Content-Length` or its chunked coding, so that every
/// request of a keep-alive or pipelined connection (and each one a
/// forward proxy is asked to make) is seen, not only the first.
///
/// [`RequestStream::feed`] hands over the names each whole head gives:
/// its `Host`, and the authority of an absolute-form or CONNECT target
/// (which is where a proxy goes, whatever `Host` says). A stream that
/// stops looking like HTTP/1.x requests, or whose framing cannot be told
/// (a `Transfer-Encoding` other than chunked, a malformed or
/// contradictory `Content-Length`, a head over [`MAX_REQUEST_HEAD`]), is
/// given up ([`RequestStream::lost`]). After a CONNECT or an `Upgrade`,
/// the next bytes decide: another request is read as one, anything else
/// (the tunnel's TLS, WebSocket frames) gives the stream up. Memory: one
/// head at most.
#[derive(Debug, Default)]
pub struct RequestStream {
    state: ReqState,
    /// The current head's bytes so far (from its first non-empty line).
    head: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    /// Between requests, or inside a head ([`RequestStream::head`]).
    #[default]
    Head,
    /// A body of known length: bytes still to pass over.
    Body(u64),
    /// A chunked body: the chunk-size line being read (its length so far).
    ChunkSize(usize),
    /// Inside a chunk: data bytes and its CRLF still to pass over.
    ChunkData(u64),
    /// The trailer section after the last chunk: the current line's length
    /// so far.
    Trailer(usize),
    /// After a CONNECT or an `Upgrade`: what comes next decides.
    Switched,
    /// Through a CONNECT tunnel: a TLS ClientHello (its bytes so far in
    /// [`RequestStream::head`]), whose server name is the tunnel's.
    TunnelHello,
    /// Not HTTP/1.x requests (any more): nothing is read.
    Lost,
}

/// What one whole request head says of how the stream goes on.
struct Head<'a> {
    /// `Host` (port removed), when valid.
    host: Option<&'a str>,
    /// The authority of an absolute-form or CONNECT target (port
    /// removed), when it names a host.
    target: Option<&'a str>,
    /// How the body is framed; `None`: it cannot be told.
    body: Option<Body>,
    /// A CONNECT, or a request asking to switch protocols.
    switches: bool,
}

enum Body {
    Length(u64),
    Chunked,
}

/// A token character (RFC 9110 section 5.6.2).
fn tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// The methods HTTP (RFC 9110, RFC 5789) and WebDAV (RFC 4918, RFC 3253,
/// RFC 4791, RFC 5323) define, each with its space: a head that starts
/// with one is held while it comes in pieces ([`RequestStream::partial`]).
const KNOWN_METHODS: [&[u8]; 20] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
    b"LOCK ",
    b"UNLOCK ",
    b"REPORT ",
    b"SEARCH ",
    b"MKCALENDAR ",
    b"MKACTIVITY ",
];

/// The longest method read: longer tokens are not taken for one.
const MAX_METHOD: usize = 24;

/// The longest request line read.
const MAX_REQUEST_LINE: usize = 8192;

impl RequestStream {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream stopped looking like HTTP/1.x requests (nothing
    /// more is read from it).
    pub fn lost(&self) -> bool {
        self.state == ReqState::Lost
    }

    /// Whether a request's head has begun and is not whole yet: the bytes
    /// fed so far end inside it, and only the rest says its host.
    ///
    /// Only a head that starts with a method HTTP and WebDAV define counts:
    /// one with a method of its own is still read, and its end judged, but
    /// what comes of it before its end is not held (a stream that goes on
    /// in another protocol after an HTTP start is not held up).
    pub fn partial(&self) -> bool {
        if self.state == ReqState::TunnelHello {
            return true;
        }
        self.state == ReqState::Head
            && !self.head.is_empty()
            && KNOWN_METHODS.iter().any(|m| {
                let n = m.len().min(self.head.len());
                m[..n] == self.head[..n]
            })
    }

    fn lose(&mut self) {
        self.state = ReqState::Lost;
        self.head = Vec::new();
    }

    /// Frames the next bytes of the client's stream; `on_name` gets the
    /// names of every whole request head they complete, in order.
    pub fn feed(&mut self, mut data: &[u8], mut on_name: impl FnMut(&str)) {
        while !data.is_empty() {
            match self.state {
                ReqState::Lost => return,
                ReqState::Body(n) => {
                    let k = n.min(data.len() as u64);
                    data = &data[k as usize..];
                    self.state = if k == n {
                        ReqState::Head
                    } else {
                        ReqState::Body(n - k)
                    };
                }
                ReqState::ChunkData(n) => {
                    let k = n.min(data.len() as u64);
                    data = &data[k as usize..];
                    self.state = if k == n {
                        ReqState::ChunkSize(0)
                    } else {
                        ReqState::ChunkData(n - k)
                    };
                }
                ReqState::ChunkSize(_) | ReqState::Trailer(_) => {
                    data = self.chunk_lines(data);
                }
                ReqState::Switched => {
                    // A request again (a proxy tunnel carrying cleartext
                    // HTTP), a ClientHello through the tunnel, or the
                    // other protocol: no longer read.
                    if data[0].is_ascii_uppercase() {
                        self.state = ReqState::Head;
                    } else if data[0] == 0x16 {
                        self.state = ReqState::TunnelHello;
                    } else {
                        self.lose();
                    }
                }
                ReqState::TunnelHello => {
                    let room = MAX_TUNNEL_HELLO.saturating_sub(self.head.len());
                    let take = data.len().min(room);
                    self.head.extend_from_slice(&data[..take]);
                    let mut scratch = Vec::new();
                    match super::tls::client_hello(&self.head, &mut scratch) {
                        super::tls::Hello::Found(h) => {
                            if let Some(n) = h.sni {
                                on_name(n);
                            }
                            self.lose();
                        }
                        super::tls::Hello::NeedMore(_) if take == data.len() => {}
                        _ => self.lose(),
                    }
                    return;
                }
                ReqState::Head => {
                    data = self.head_bytes(data, &mut on_name);
                }
            }
        }
    }

    /// Reads chunk-size and trailer lines (the CRLF after a chunk's data
    /// is counted in its data); returns what is left of `data`.
    fn chunk_lines<'d>(&mut self, mut data: &'d [u8]) -> &'d [u8] {
        while let Some((&c, rest)) = data.split_first() {
            data = rest;
            match self.state {
                ReqState::ChunkSize(len) => {
                    if c == b'\n' {
                        // The line is in `head`: hex digits, then
                        // extensions after ';' (whitespace allowed).
                        let line = std::mem::take(&mut self.head);
                        let digits: Vec<u8> = line
                            .iter()
                            .copied()
                            .take_while(u8::is_ascii_hexdigit)
                            .collect();
                        let after = &line[digits.len()..];
                        let ok_after =
                            after.is_empty() || matches!(after[0], b';' | b' ' | b'\t' | b'\r');
                        let size = std::str::from_utf8(&digits)
                            .ok()
                            .filter(|d| !d.is_empty() && d.len() <= 15)
                            .and_then(|d| u64::from_str_radix(d, 16).ok());
                        match size {
                            Some(0) if ok_after => self.state = ReqState::Trailer(0),
                            Some(n) if ok_after => self.state = ReqState::ChunkData(n + 2),
                            _ => {
                                self.lose();
                                return &[];
                            }
                        }
                        return data;
                    }
                    if len >= MAX_CHUNK_LINE {
                        self.lose();
                        return &[];
                    }
                    // Only the digits and what follows them up to a ';'
                    // matter; the line is kept short anyway.
                    self.head.push(c);
                    self.state = ReqState::ChunkSize(len + 1);
                }
                ReqState::Trailer(len) => {
                    if c == b'\n' {
                        if len == 0 {
                            // The empty line: the request is whole.
                            self.state = ReqState::Head;
                            return data;
                        }
                        self.state = ReqState::Trailer(0);
                    } else if c == b'\r' {
                        // Not counted: a lone CRLF is the empty line.
                    } else if len >= MAX_CHUNK_LINE {
                        self.lose();
                        return &[];
                    } else {
                        self.state = ReqState::Trailer(len + 1);
                    }
                }
                _ => return data,
            }
        }
        data
    }

    /// Reads head bytes; returns what is left of `data` after the head (if
    /// it completed).
    fn head_bytes<'d>(&mut self, mut data: &'d [u8], on_name: &mut impl FnMut(&str)) -> &'d [u8] {
        if self.head.is_empty() {
            // Empty lines before a request line are passed over (RFC 9112
            // section 2.2).
            let skip = data
                .iter()
                .position(|&c| c != b'\r' && c != b'\n')
                .unwrap_or(data.len());
            data = &data[skip..];
            if data.is_empty() {
                return data;
            }
        }
        // Where the head ends, looking back 3 bytes into what was kept.
        let back = self.head.len().min(3);
        let from = self.head.len() - back;
        let mut joined = [0u8; 3 + 4];
        let mut end = None;
        {
            // The end may straddle what was kept and the new bytes.
            let kept = &self.head[from..];
            let n = kept.len();
            joined[..n].copy_from_slice(kept);
            let m = data.len().min(3);
            joined[n..n + m].copy_from_slice(&data[..m]);
            if let Some(p) = find(&joined[..n + m], b"\r\n\r\n") {
                end = Some(p + 4 - n);
            }
        }
        if end.is_none() {
            end = find(data, b"\r\n\r\n").map(|p| p + 4);
        }
        let take = end.unwrap_or(data.len());
        if self.head.len() + take > MAX_REQUEST_HEAD {
            self.lose();
            return &[];
        }
        self.head.extend_from_slice(&data[..take]);
        if !self.plausible() {
            self.lose();
            return &[];
        }
        if end.is_none() {
            return &[];
        }
        let head = std::mem::take(&mut self.head);
        match parse_head(&head) {
            None => {
                self.lose();
                return &[];
            }
            Some(h) => {
                if let Some(n) = h.host {
                    on_name(n);
                }
                if let Some(n) = h.target
                    && Some(n) != h.host
                {
                    on_name(n);
                }
                self.state = match h.body {
                    None => ReqState::Lost,
                    Some(Body::Chunked) => ReqState::ChunkSize(0),
                    Some(Body::Length(n)) if n > 0 => ReqState::Body(n),
                    Some(Body::Length(_)) if h.switches => ReqState::Switched,
                    Some(Body::Length(_)) => ReqState::Head,
                };
            }
        }
        // The buffer is kept for the next head (its capacity reused).
        self.head = head;
        self.head.clear();
        if self.state == ReqState::Lost {
            self.head = Vec::new();
            return &[];
        }
        &data[take..]
    }

    /// Whether the head kept so far can still be a request's: a method
    /// token and a space, a request line of at most 8 KiB.
    fn plausible(&self) -> bool {
        let h = &self.head;
        let Some(sp) = h.iter().take(MAX_METHOD + 1).position(|&c| c == b' ') else {
            return h.len() <= MAX_METHOD && h.iter().all(|&c| tchar(c));
        };
        if sp == 0 || !h[..sp].iter().all(|&c| tchar(c)) {
            return false;
        }
        // The target and version: visible characters and the space
        // between them. Once the line ends (at its first LF), it must end
        // in an HTTP/1.x version and CRLF: a line protocol's command is
        // not a head.
        let window = &h[..h.len().min(MAX_REQUEST_LINE + 2)];
        match window.iter().position(|&c| c == b'\n') {
            Some(e) => {
                e >= sp + 11
                    && h[e - 1] == b'\r'
                    && h[e - 2].is_ascii_digit()
                    && h[e - 10..e - 2] == *b" HTTP/1."
                    && h[sp + 1..e - 10].iter().all(u8::is_ascii_graphic)
            }
            None => {
                // (its CR may have come without its LF yet)
                let rest = &h[sp + 1..];
                let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
                h.len() <= MAX_REQUEST_LINE
                    && rest.iter().all(|&c| c == b' ' || c.is_ascii_graphic())
            }
        }
    }
}

/// Reads a whole request head (ending in an empty line).
fn parse_head(head: &[u8]) -> Option<Head<'_>> {
    let line_end = find(head, b"\r\n")?;
    let line = &head[..line_end];
    let sp = line.iter().position(|&c| c == b' ')?;
    let method = &line[..sp];
    let rest = &line[sp + 1..];
    let sp2 = rest.iter().rposition(|&c| c == b' ')?;
    let (target, version) = (&rest[..sp2], &rest[sp2 + 1..]);
    if !version.starts_with(b"HTTP/1.") || version.len() != 8 {
        return None;
    }
    let connect = method == b"CONNECT";
    let target = if connect {
        authority_host(target)
    } else if let Some(p) = find(target, b"://") {
        // absolute-form: scheme "://" authority [path]
        let a = &target[p + 3..];
        let end = a
            .iter()
            .position(|&c| matches!(c, b'/' | b'?' | b'#'))
            .unwrap_or(a.len());
        let a = &a[..end];
        // Userinfo is not part of the host.
        let a = a
            .iter()
            .rposition(|&c| c == b'@')
            .map_or(a, |p| &a[p + 1..]);
        authority_host(a)
    } else {
        None
    };
    let mut host = None;
    let mut seen_host = false;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    let mut coding: Option<bool> = None;
    let mut switches = connect;
    for l in head[line_end + 2..].split(|&c| c == b'\n') {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let Some(colon) = l.iter().position(|&c| c == b':') else {
            continue;
        };
        let (name, value) = (&l[..colon], trim(&l[colon + 1..]));
        if name.eq_ignore_ascii_case(b"host") {
            // The first `Host` counts (a second makes the request invalid
            // to a server; the first is what an address filter would see).
            if !seen_host {
                seen_host = true;
                host = authority_host(value);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for v in value.split(|&c| c == b',') {
                let v = trim(v);
                let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .flatten();
                match (n, length) {
                    (None, _) => bad_length = true,
                    (Some(n), Some(m)) if n != m => bad_length = true,
                    (Some(n), _) => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked must be the last coding applied.
            let last = value
                .rsplit(|&c| c == b',')
                .next()
                .map(trim)
                .unwrap_or_default();
            coding = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") && !value.is_empty() {
            switches = true;
        }
    }
    let body = match coding {
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
        Some(true) => Some(Body::Chunked),
        Some(false) => None,
        None if bad_length => None,
        None => Some(Body::Length(length.unwrap_or(0))),
    };
    Some(Head {
        host,
        target,
        body,
        switches,
    })
}

/// The host of an authority (`host[:port]`, `[v6]:port`; an IPv6 literal
/// kept whole in its brackets), when it is a plausible name or address.
fn authority_host(a: &[u8]) -> Option<&str> {
    let v = if a.first() == Some(&b'[') {
        a.iter().position(|&c| c == b']').map(|p| &a[..=p])?
    } else {
        a.iter().position(|&c| c == b':').map_or(a, |p| &a[..p])
    };
    let ok = !v.is_empty()
        && v.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        });
    if ok {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |p| p + 1);
    &b[s..e.max(s)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:  Example.com:8080 \r\n\r\n"),
            HttpHost::Found(Some("Example.com"))
        );
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n"),
            HttpHost::Found(Some("[2001:db8::1]"))
        );
        assert_eq!(host(b"GET / HTTP/1.0\r\n\r\n"), HttpHost::Found(None));
        assert_eq!(host(b"GET / HTTP/1.1\r\nHo"), HttpHost::NeedMore);
        assert_eq!(host(b"GE"), HttpHost::NeedMore);
        assert_eq!(host(b"SSH-2.0-OpenSSH\r\n"), HttpHost::NotHttp);
        assert_eq!(host(b"GET / SPDY\r\n\r\n"), HttpHost::NotHttp);
    }

    /// The names a stream gives, fed in pieces cut at `cuts`.
    fn names_cut(stream: &[u8], cuts: &[usize]) -> (Vec<String>, RequestStream) {
        let mut r = RequestStream::new();
        let mut names = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            let c = c.clamp(at, stream.len());
            r.feed(&stream[at..c], |n| names.push(n.to_owned()));
            at = c;
        }
        (names, r)
    }

    fn names(stream: &[u8]) -> (Vec<String>, RequestStream) {
        names_cut(stream, &[])
    }

    const KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n\
        POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 40\r\n\r\n\
        GET / HTTP/1.1\r\nHost: hidden.example\r\n\r\n\
        \r\nPUT /c HTTP/1.1\r\nHost: b.example:8080\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
        1c;name=v\r\nGET / HTTP/1.1\r\nHost: no\r\n\r\n\r\n\
        0\r\nX-Trailer: GET / HTTP/1.1\r\n\r\n\
        PROPFIND /d HTTP/1.1\r\nhost: [2001:db8::5]:80\r\n\r\n";

    #[test]
    fn every_request_of_a_connection_is_read_and_bodies_are_passed_over() {
        // The 40-byte body and the chunk hide request-like bytes: they
        // are passed over, not read as requests.
        let want = ["a.example", "a.example", "b.example", "[2001:db8::5]"];
        let (got, r) = names(KEEP_ALIVE);
        assert_eq!(got, want);
        assert!(!r.lost() && !r.partial());
        // Cut anywhere, and byte by byte, the names are the same.
        for c in 0..KEEP_ALIVE.len() {
            assert_eq!(names_cut(KEEP_ALIVE, &[c]).0, want, "cut at {c}");
        }
        let every: Vec<usize> = (1..KEEP_ALIVE.len()).collect();
        assert_eq!(names_cut(KEEP_ALIVE, &every).0, want);
    }

    #[test]
    fn a_head_begun_and_not_whole_is_partial() {
        let mut r = RequestStream::new();
        let mut n = Vec::new();
        r.feed(b"\r\n", |h| n.push(h.to_owned()));
        assert!(!r.partial(), "empty lines between requests");
        r.feed(b"GET / HTTP/1.1\r\nHost: a.exa", |h| n.push(h.to_owned()));
        assert!(r.partial() && n.is_empty());
        r.feed(b"mple\r\nContent-Length: 3\r\n\r", |h| n.push(h.to_owned()));
        assert!(r.partial() && n.is_empty());
        r.feed(b"\nab", |h| n.push(h.to_owned()));
        assert_eq!(n, ["a.example"]);
        assert!(!r.partial(), "inside a body");
        r.feed(b"c", |h| n.push(h.to_owned()));
        assert!(!r.partial(), "between requests");
        r.feed(b"G", |h| n.push(h.to_owned()));
        assert!(r.partial());
        // A method of its own is read, but not held while it comes: what
        // goes on after an HTTP start in another protocol is not held up.
        let mut r = RequestStream::new();
        r.feed(b"GET / HTTP/1.1\r\n\r\nagain 0001", |h| {
            n.push(h.to_owned())
        });
        assert!(!r.partial() && !r.lost());
        let mut r = RequestStream::new();
        r.feed(
            b"GET / HTTP/1.1\r\n\r\nBREW /pot HTTP/1.1\r\nHost: c.example\r\n",
            |h| n.push(h.to_owned()),
        );
        assert!(!r.partial() && !r.lost());
        r.feed(b"\r\n", |h| n.push(h.to_owned()));
        assert_eq!(
            n.last().map(String::as_str),
            Some("c.example"),
            "its end is read"
        );
    }

    #[test]
    fn a_proxy_request_names_where_it_goes() {
        // An absolute-form target is where a forward proxy goes, whatever
        // Host says; userinfo and port are not the host.
        let (got, _) = names(
            b"GET http://user@far.example:8080/x?y HTTP/1.1\r\nHost: near.example\r\n\r\n\
              GET http://near.example/ HTTP/1.1\r\nHost: near.example\r\n\r\n",
        );
        assert_eq!(got, ["near.example", "far.example", "near.example"]);
        // A CONNECT tunnel: its ClientHello names the server the proxy
        // reaches (held while it comes), and nothing after it is read ...
        let connect = b"CONNECT far.example:443 HTTP/1.1\r\nHost: far.example:443\r\n\r\n";
        let (got, r) = names(&[&connect[..], b"\x16\x03\x01"].concat());
        assert_eq!(got, ["far.example"]);
        assert!(!r.lost() && r.partial());
        let hello = crate::wire::tls::client_hello_records("inner.example.org", 0);
        let tunnel = [
            &connect[..],
            &hello,
            b"\x17\x03\x03\x00\x10GET / HTTP/1.1\r\n",
        ]
        .concat();
        for c in 0..tunnel.len() {
            let (got, r) = names_cut(&tunnel, &[c]);
            assert_eq!(got, ["far.example", "inner.example.org"], "cut at {c}");
            assert!(r.lost() && !r.partial());
        }
        let (got, r) = names(&[&connect[..], b"\x17\x03\x03"].concat());
        assert_eq!(got, ["far.example"]);
        assert!(r.lost() && !r.partial(), "not a hello");
        // ... but cleartext requests through it are.
        let (got, r) = names(
            b"CONNECT far.example:80 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: far.example\r\n\r\n\
              GET / HTTP/1.1\r\nHost: other.example\r\n\r\n",
        );
        assert_eq!(got, ["far.example", "far.example", "other.example"]);
        assert!(!r.lost());
        // A WebSocket's frames after an Upgrade end the reading.
        let (got, r) =
            names(b"GET /ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n\r\n\x81\x85GET ");
        assert_eq!(got, ["a.example"]);
        assert!(r.lost());
    }

    #[test]
    fn framing_that_cannot_be_told_gives_the_stream_up() {
        for s in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nGET "[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nGET ",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nGET ",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nGET ",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03\x01\x02\x00",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1 x\r\n",
        ] {
            let (_, r) = names(s);
            assert!(r.lost() && !r.partial(), "{:?}", String::from_utf8_lossy(s));
        }
        // Equal repeated lengths are one length.
        let (got, r) = names(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nokGET / HTTP/1.1\r\nHost: b\r\n\r\n");
        assert_eq!(got, ["a", "b"]);
        assert!(!r.lost());
        // A head longer than the bound is not kept.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_REQUEST_HEAD + 10, b'a');
        let (_, r) = names(&long);
        assert!(r.lost() && !r.partial());
        // A request line that never ends is not kept either.
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE + 10, b'a');
        let (_, r) = names(&line);
        assert!(r.lost());
        // A line protocol's command is not a head that is still coming.
        let (_, r) = names(b"HELP me\r\n");
        assert!(r.lost() && !r.partial());
        let (_, r) = names(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nagain 0001\n");
        assert!(r.lost() && !r.partial());
        // A request line with control characters, or a bare LF, is not one.
        for s in [&b"GET /\x01 HTTP/1.1\r\n"[..], b"GET / HTTP/1.1\n"] {
            let (_, r) = names(s);
            assert!(r.lost(), "{:?}", String::from_utf8_lossy(s));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = host(&b);
            let mut g = b"GET / HTTP/1.1\r\n".to_vec();
            g.extend_from_slice(&b);
            let _ = host(&g);
        }

        /// Framing never panics, and where the stream is cut does not
        /// change what it says.
        #[test]
        fn requests_framed_the_same_however_cut(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let mut s = KEEP_ALIVE[..KEEP_ALIVE.len() / 2].to_vec();
            s.extend_from_slice(&tail);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (whole, a) = names(&s);
            let (pieces, b) = names_cut(&s, &cuts);
            proptest::prop_assert_eq!(whole, pieces);
            proptest::prop_assert_eq!((a.lost(), a.partial()), (b.lost(), b.partial()));
        }
    }
}
