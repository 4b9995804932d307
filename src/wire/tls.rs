//! TLS ClientHello: server name (SNI) and ALPN.
//!
//! Input is the start of the client's byte stream. A ClientHello may be
//! split across TCP segments (the caller passes more bytes and gets
//! [`Hello::NeedMore`] until it is whole) and across TLS records (its
//! fragments are joined in a caller-provided scratch buffer, bounded by
//! [`MAX_HELLO`]).

/// The largest ClientHello accepted (bytes of handshake message).
pub const MAX_HELLO: usize = 64 * 1024;

/// The outcome of looking for a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello<'a> {
    /// Not (the start of) a TLS handshake.
    NotTls,
    /// Looks like TLS; at least this many bytes of stream are needed.
    NeedMore(usize),
    /// A ClientHello.
    Found(ClientHello<'a>),
}

/// What a ClientHello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The server name, when present and a valid host name.
    pub sni: Option<&'a str>,
    /// The raw ALPN protocol list (see [`ClientHello::alpn`]).
    pub alpn_raw: Option<&'a [u8]>,
}

impl<'a> ClientHello<'a> {
    /// The offered ALPN protocols, in order.
    pub fn alpn(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = self.alpn_raw.unwrap_or(&[]);
        std::iter::from_fn(move || {
            let (&n, tail) = rest.split_first()?;
            let (p, t) = tail.split_at_checked(usize::from(n))?;
            rest = t;
            Some(p)
        })
    }
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    )))
}

/// True for a plausible host name: letters, digits, '-', '_' and dots.
pub fn is_host_name(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// Looks for a ClientHello at the start of `stream`.
pub fn client_hello<'a>(stream: &'a [u8], scratch: &'a mut Vec<u8>) -> Hello<'a> {
    // Record header: type 22 (handshake), version 3.x, length.
    match stream.first() {
        None => return Hello::NeedMore(5),
        Some(22) => {}
        Some(_) => return Hello::NotTls,
    }
    if stream.len() >= 2 && stream[1] != 3 {
        return Hello::NotTls;
    }
    let Some(rlen) = be16(stream, 3) else {
        return Hello::NeedMore(5);
    };
    if rlen == 0 || rlen > 18_432 {
        return Hello::NotTls;
    }
    let first = match stream.get(5..5 + rlen) {
        Some(f) => f,
        None => &stream[5.min(stream.len())..],
    };
    // Handshake header: type 1 (ClientHello), 24-bit length.
    match first.first() {
        None => return Hello::NeedMore(9),
        Some(1) => {}
        Some(_) => return Hello::NotTls,
    }
    let Some(hs) = first.get(1..4) else {
        return Hello::NeedMore(9);
    };
    let hlen = (usize::from(hs[0]) << 16) | (usize::from(hs[1]) << 8) | usize::from(hs[2]);
    if hlen > MAX_HELLO {
        return Hello::NotTls;
    }
    if 4 + hlen <= rlen {
        // The whole hello is in the first record: no copy.
        let Some(body) = first.get(4..4 + hlen) else {
            return Hello::NeedMore(5 + 4 + hlen);
        };
        return parse_body(body);
    }
    // Joined from several records.
    scratch.clear();
    let mut at = 0;
    while scratch.len() < 4 + hlen {
        let Some(h) = stream.get(at..at + 5) else {
            return Hello::NeedMore(at + 5);
        };
        if h[0] != 22 || h[1] != 3 {
            return Hello::NotTls;
        }
        let Some(len) = be16(h, 3) else {
            return Hello::NotTls;
        };
        let Some(frag) = stream.get(at + 5..at + 5 + len) else {
            return Hello::NeedMore(at + 5 + len);
        };
        scratch.extend_from_slice(frag);
        at += 5 + len;
        if len == 0 {
            return Hello::NotTls;
        }
    }
    let joined: &'a [u8] = scratch.as_slice();
    match joined.get(4..4 + hlen) {
        Some(body) => parse_body(body),
        None => Hello::NotTls,
    }
}

/// The server name of a ClientHello whose first record is not whole yet,
/// when its `server_name` extension already is: what a server would read
/// of the name from the bytes so far. `None` when they are not the start
/// of a ClientHello or end before the name does.
pub fn partial_hello_sni(stream: &[u8]) -> Option<&str> {
    if stream.first() != Some(&22) || stream.get(1) != Some(&3) {
        return None;
    }
    let rlen = be16(stream, 3)?;
    let first = stream.get(5..)?;
    partial_message_sni(&first[..first.len().min(rlen)])
}

/// [`partial_hello_sni`] for a ClientHello handshake message without its
/// record header (QUIC's CRYPTO stream).
pub fn partial_message_sni(msg: &[u8]) -> Option<&str> {
    if msg.first() != Some(&1) {
        return None;
    }
    let hs = msg.get(1..4)?;
    let hlen = (usize::from(hs[0]) << 16) | (usize::from(hs[1]) << 8) | usize::from(hs[2]);
    let body = msg.get(4..)?;
    parse_extensions(&body[..body.len().min(hlen)])?.sni
}

/// A minimal TLS 1.3-shaped ClientHello record naming `sni` (one cipher
/// suite, the server-name extension only): what the demo and the tests
/// send.
pub fn client_hello_record(sni: &str) -> Vec<u8> {
    client_hello_records(sni, 0)
}

/// [`client_hello_record`] with a padding extension (RFC 7685) of `pad`
/// zero bytes when `pad` is not 0 (at most 60,000 are added), in as many
/// records of at most 16,384 bytes as it takes.
pub fn client_hello_records(sni: &str, pad: usize) -> Vec<u8> {
    let pad = pad.min(60_000);
    let name = sni.as_bytes();
    let n = |v: usize| u16::try_from(v).unwrap_or(0).to_be_bytes();
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&n(name.len() + 5));
    ext.extend_from_slice(&n(name.len() + 3));
    ext.push(0);
    ext.extend_from_slice(&n(name.len()));
    ext.extend_from_slice(name);
    if pad > 0 {
        ext.extend_from_slice(&[0, 21]);
        ext.extend_from_slice(&n(pad));
        ext.resize(ext.len() + pad, 0);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&n(ext.len()));
    body.extend_from_slice(&ext);
    let len = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    let mut hs = vec![1, len[1], len[2], len[3]];
    hs.extend_from_slice(&body);
    let mut rec = Vec::with_capacity(hs.len() + 5 * hs.len().div_ceil(16_384));
    for chunk in hs.chunks(16_384) {
        rec.extend_from_slice(&[22, 3, 1]);
        rec.extend_from_slice(&n(chunk.len()));
        rec.extend_from_slice(chunk);
    }
    rec
}

/// A ClientHello in SSL 2.0's format, as old clients send it to reach
/// servers of any version (RFC 6101, appendix E.1): a 2-byte header with
/// the top bit set and the length, message type 1, a version (SSL 2.0, or
/// SSL 3.0 to TLS 1.3 in the compatible form), then cipher specs (3 bytes
/// each), a session id (0 or 16 bytes) and a challenge (16 to 32 bytes)
/// whose lengths add up to the header's (its first 11 bytes decide). It
/// names no server.
pub fn sslv2_client_hello(p: &[u8]) -> bool {
    let (Some(&h0), Some(&h1)) = (p.first(), p.get(1)) else {
        return false;
    };
    let len = usize::from(h0 & 0x7F) << 8 | usize::from(h1);
    let field = |at| {
        p.get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let (Some(version), Some(ciphers), Some(session), Some(challenge)) =
        (field(3), field(5), field(7), field(9))
    else {
        return false;
    };
    h0 & 0x80 != 0
        && p.get(2) == Some(&1)
        && (version == 0x0002 || (0x0300..=0x0304).contains(&version))
        && ciphers > 0
        && ciphers % 3 == 0
        && matches!(session, 0 | 16)
        && (16..=32).contains(&challenge)
        && 9 + ciphers + session + challenge == len
}

/// How many bytes of the stream a ClientHello that `stream` starts needs,
/// record headers included, as its first record's header and its
/// handshake header announce it (the records that follow assumed no
/// shorter than the first); `None` if the stream does not start with a
/// ClientHello record or announces more than [`MAX_HELLO`].
pub fn hello_stream_len(stream: &[u8]) -> Option<usize> {
    if stream.first() != Some(&22) || stream.get(1) != Some(&3) || stream.get(5) != Some(&1) {
        return None;
    }
    let record = be16(stream, 3)?.max(1);
    let h = stream.get(6..9)?;
    let hlen = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    if hlen > MAX_HELLO {
        return None;
    }
    let message = 4 + hlen;
    Some(message + 5 * message.div_ceil(record))
}

/// Parses a bare handshake message (no record layer), as QUIC carries it
/// in CRYPTO frames: type 1, 24-bit length, ClientHello body.
pub fn client_hello_message(msg: &[u8]) -> Hello<'_> {
    match msg.first() {
        None => return Hello::NeedMore(4),
        Some(1) => {}
        Some(_) => return Hello::NotTls,
    }
    let Some(h) = msg.get(1..4) else {
        return Hello::NeedMore(4);
    };
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    if len > MAX_HELLO {
        return Hello::NotTls;
    }
    match msg.get(4..4 + len) {
        Some(body) => parse_body(body),
        None => Hello::NeedMore(4 + len),
    }
}

fn parse_body(b: &[u8]) -> Hello<'_> {
    let Some(found) = parse_extensions(b) else {
        return Hello::NotTls;
    };
    Hello::Found(found)
}

fn parse_extensions(b: &[u8]) -> Option<ClientHello<'_>> {
    // legacy_version(2) random(32)
    let mut at = 34;
    let sid = usize::from(*b.get(at)?);
    at += 1 + sid;
    let suites = be16(b, at)?;
    at += 2 + suites;
    let comp = usize::from(*b.get(at)?);
    at += 1 + comp;
    let mut hello = ClientHello {
        sni: None,
        alpn_raw: None,
    };
    let Some(ext_len) = be16(b, at) else {
        return Some(hello);
    };
    // What the extensions say up to the first one that breaks its own
    // length (as a corrupted hello's, whose server will refuse it): the
    // name it gave before that is still the name it asked for.
    let exts = b.get(at + 2..)?;
    let exts = &exts[..exts.len().min(ext_len)];
    let mut e = 0;
    while let (Some(kind), Some(len)) = (be16(exts, e), be16(exts, e + 2)) {
        let Some(data) = exts.get(e + 4..e + 4 + len) else {
            break;
        };
        match kind {
            0 => hello.sni = server_name(data),
            16 => hello.alpn_raw = be16(data, 0).and_then(|list| data.get(2..2 + list)),
            _ => {}
        }
        e += 4 + len;
    }
    Some(hello)
}

/// The host name in a `server_name` extension's body: a list whose first
/// entry is of type 0 (host_name).
fn server_name(data: &[u8]) -> Option<&str> {
    let list = data.get(2..2 + be16(data, 0)?)?;
    if list.first() != Some(&0) {
        return None;
    }
    let name = list.get(3..3 + be16(list, 1)?)?;
    is_host_name(name)
        .then(|| std::str::from_utf8(name).ok())
        .flatten()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The SSL 2.0-format hello from Wireshark's `rsasnakeoil2.pcap` (a
    /// TLS 1.0 client, 26 cipher specs, no session, a 16-byte challenge).
    /// A hello cut anywhere gives its name once the `server_name`
    /// extension is whole, and never a name it does not hold.
    #[test]
    fn a_partial_hello_gives_its_name_once_the_name_is_in() {
        let name = "104-166-161-75.edge.agora.io";
        let h = client_hello_records(name, 300);
        let ends = h
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .expect("in")
            + name.len();
        for cut in 0..h.len() {
            let want = (cut >= ends).then_some(name);
            assert_eq!(partial_hello_sni(&h[..cut]), want, "cut at {cut}");
        }
        assert_eq!(partial_hello_sni(b"GET / HTTP/1.1\r\n"), None);
        let mut not_hello = h.clone();
        not_hello[5] = 2;
        assert_eq!(partial_hello_sni(&not_hello), None, "a ServerHello");
    }

    #[test]
    fn sslv2_hello_from_a_capture() {
        let h = crate::wire::bytes::hex(
            "8067010300004e000000100100800300800700c006004002008004008000003900003800003500003300003200000400000500002f00001600001300feff00000a00001500001200fefe000009000064000062000003000006a8b893bb90e92aa24d6dcc1ce72a8021",
        );
        assert!(sslv2_client_hello(&h));
        let mut bad = h.clone();
        bad[10] = 17;
        assert!(!sslv2_client_hello(&bad), "lengths must add up");
        assert!(sslv2_client_hello(&h[..11]), "its first 11 bytes decide");
        let mut bad = h.clone();
        bad[2] = 4;
        assert!(!sslv2_client_hello(&bad), "not a ClientHello");
        let mut bad = h.clone();
        bad[6] = 0x4F;
        assert!(!sslv2_client_hello(&bad), "cipher specs are 3 bytes each");
        assert!(!sslv2_client_hello(&[0x80]));
        assert!(!sslv2_client_hello(&client_hello_record("example.org")));
    }

    /// A real-shaped ClientHello record for `sni` with ALPN h2, http/1.1.
    pub(crate) fn hello_record(sni: &str) -> Vec<u8> {
        hello_record_alpn(sni, b"\x02h2\x08http/1.1")
    }

    /// A real-shaped ClientHello record for `sni` offering `alpn` (the
    /// extension's list, each protocol ID length-prefixed).
    pub(crate) fn hello_record_alpn(sni: &str, alpn: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        let name = sni.as_bytes();
        let mut sn = vec![0u8];
        sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sn.extend_from_slice(name);
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&((sn.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(sn.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sn);
        ext.extend_from_slice(&16u16.to_be_bytes());
        ext.extend_from_slice(&((alpn.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(alpn.len() as u16).to_be_bytes());
        ext.extend_from_slice(alpn);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(32);
        body.extend_from_slice(&[9u8; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_and_alpn() {
        let r = hello_record("www.example.org");
        let mut s = Vec::new();
        let Hello::Found(h) = client_hello(&r, &mut s) else {
            panic!("found")
        };
        assert_eq!(h.sni, Some("www.example.org"));
        assert_eq!(
            h.alpn().collect::<Vec<_>>(),
            [b"h2".as_slice(), b"http/1.1"]
        );
    }

    /// A hello whose ALPN extension and the one after it break their own
    /// lengths after a good `server_name` (nDPI 4.2's
    /// `tls_invalid_reads.pcap`, a mobile network's capture): the name is
    /// still read, as nDPI reads it.
    #[test]
    fn a_corrupted_hello_still_gives_the_name_before_the_damage() {
        let r = crate::wire::bytes::hex(
            "16030100b2010000ae0303e25f8f7559ed27be965385da1a0aff448e59ae0907c906a053e2a475ebeb3237000028c02bc02cc02fc030009e009fc009c00ac013c01400330039c007c011009c009d002f0035000500ff0100005d000000160014000011652e63726173686c79746963732e636f6d0017000000230000000d0016001406010603050105030401040303010303020102030010000bb889a52f563519e55f943e47e34fc6943577c34438787013cecd7950cb",
        );
        let mut s = Vec::new();
        let Hello::Found(h) = client_hello(&r, &mut s) else {
            panic!("found")
        };
        assert_eq!(h.sni, Some("e.crashlytics.com"));
        assert_eq!(h.alpn().count(), 0);
    }

    #[test]
    fn split_across_segments_and_records() {
        let r = hello_record("split.example");
        let mut s = Vec::new();
        for cut in [0, 1, 4, 5, 8, 40, r.len() - 1] {
            assert!(
                matches!(client_hello(&r[..cut], &mut s), Hello::NeedMore(n) if n > cut),
                "cut {cut}"
            );
        }
        // The same handshake in two records.
        let hs = &r[5..];
        let (a, b) = hs.split_at(30);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[22, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        let Hello::Found(h) = client_hello(&two, &mut s) else {
            panic!("joined")
        };
        assert_eq!(h.sni, Some("split.example"));
        assert!(matches!(
            client_hello(&two[..40], &mut s),
            Hello::NeedMore(_)
        ));
    }

    #[test]
    fn not_tls_and_bad_names() {
        let mut s = Vec::new();
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n", &mut s), Hello::NotTls);
        assert_eq!(client_hello(&[22, 2, 0, 0, 5], &mut s), Hello::NotTls);
        let r = hello_record("bad name!");
        let Hello::Found(h) = client_hello(&r, &mut s) else {
            panic!("found")
        };
        assert_eq!(h.sni, None, "invalid host names are not reported");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut s = Vec::new();
            let _ = client_hello(&b, &mut s);
            let mut tls = vec![22, 3, 1];
            tls.extend_from_slice(&b);
            let _ = client_hello(&tls, &mut s);
        }
    }
}
