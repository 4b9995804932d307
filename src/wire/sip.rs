//! SIP (RFC 3261), the signalling of most voice-over-IP calls: the start
//! of a message, told by its first line, and the host a request is for.
//!
//! A request starts `METHOD URI SIP/2.0` with one of the methods RFC 3261
//! and its extensions define (upper case: methods are case-sensitive); a
//! response starts `SIP/2.0 NNN`. The request's URI (`sip:`, `sips:` or
//! `tel:`) names the host the request is for: the part after the user,
//! without port or parameters. An address in its place is no name.

use super::tls::is_host_name;

/// The start of a SIP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sip<'a> {
    /// A request, with the host its URI names (`None` for a `tel:` URI,
    /// an address, or a host that is no valid name).
    Request {
        /// The request's method.
        method: &'a str,
        /// The host its URI names.
        host: Option<&'a str>,
    },
    /// A response: its status code.
    Response(u16),
}

/// SIP's request methods: RFC 3261's six and those of RFC 3262 (PRACK),
/// 3265/6665 (SUBSCRIBE, NOTIFY), 3311 (UPDATE), 3428 (MESSAGE), 3515
/// (REFER), 3903 (PUBLISH) and 6086 (INFO).
const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
];

/// The longest first line read (a request URI can carry parameters).
const LINE_MAX: usize = 2048;

/// The SIP message that starts `p`, if it is one: its first line must end
/// (CRLF) within the first 2,048 bytes.
pub fn start(p: &[u8]) -> Option<Sip<'_>> {
    // A method or the version first, before the line's end is looked for.
    let method = |m: &str| p.starts_with(m.as_bytes()) && p.get(m.len()) == Some(&b' ');
    if !p.starts_with(b"SIP/2.0 ") && !METHODS.iter().any(|m| method(m)) {
        return None;
    }
    let end = p
        .get(..p.len().min(LINE_MAX))?
        .windows(2)
        .position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&p[..end]).ok()?;
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let code = rest.get(..3)?;
        let after = rest.as_bytes().get(3);
        if !code.bytes().all(|b| b.is_ascii_digit()) || !matches!(after, None | Some(b' ')) {
            return None;
        }
        let code: u16 = code.parse().ok()?;
        return (100..700).contains(&code).then_some(Sip::Response(code));
    }
    let mut parts = line.split(' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "SIP/2.0" || !METHODS.contains(&method) {
        return None;
    }
    let (scheme, rest) = uri.split_once(':')?;
    let host = match scheme.to_ascii_lowercase().as_str() {
        "sip" | "sips" => uri_host(rest),
        "tel" => None,
        _ => return None,
    };
    Some(Sip::Request { method, host })
}

/// The host of a SIP URI's part after the scheme: after the user (the last
/// `@`), before a port, parameters or headers. An address is no name.
fn uri_host(rest: &str) -> Option<&str> {
    let rest = rest.split([';', '?', '>']).next()?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.starts_with('[') {
        return None;
    }
    let host = host.split(':').next()?;
    let is_address = host.parse::<std::net::Ipv4Addr>().is_ok();
    (is_host_name(host.as_bytes()) && !is_address).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First lines from real captures: nDPI 4.2's `sip.pcap` (a softphone
    /// registering with a Danish provider) and Wireshark 4.0.17's
    /// `sip.pcapng`.
    #[test]
    fn from_captures() {
        assert_eq!(
            start(b"REGISTER sip:sip.cybercity.dk SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.2;branch=z9hG4bKnp112903503-43a64480192.168.1.2;rport\r\n"),
            Some(Sip::Request { method: "REGISTER", host: Some("sip.cybercity.dk") })
        );
        assert_eq!(
            start(b"SIP/2.0 401 Unauthorized\r\n"),
            Some(Sip::Response(401))
        );
        assert_eq!(
            start(b"INVITE sip:17324201111@135.25.31.10:5060;acme_realm=cpea8500 SIP/2.0\r\n"),
            Some(Sip::Request {
                method: "INVITE",
                host: None
            })
        );
        assert_eq!(
            start(b"REGISTER sip:csp.noklab.net SIP/2.0\r\n"),
            Some(Sip::Request {
                method: "REGISTER",
                host: Some("csp.noklab.net")
            })
        );
    }

    #[test]
    fn hosts_ports_and_users() {
        let host = |line: &str| match start(format!("{line}\r\n").as_bytes()) {
            Some(Sip::Request { host, .. }) => host.map(str::to_owned),
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            host("INVITE sip:alice@voip.example.com:5061;transport=tls SIP/2.0").as_deref(),
            Some("voip.example.com")
        );
        assert_eq!(
            host("MESSAGE sips:bob@example.org?subject=x SIP/2.0").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            host("OPTIONS SIP:Example.NET SIP/2.0").as_deref(),
            Some("Example.NET")
        );
        assert_eq!(host("INVITE sip:carol@[2001:db8::1]:5060 SIP/2.0"), None);
        assert_eq!(host("INVITE tel:+1-201-555-0123 SIP/2.0"), None);
        assert_eq!(host("BYE sip:a@b_ad!host SIP/2.0"), None);
    }

    /// Not SIP: HTTP, a lower-case method, an unknown scheme or method, a
    /// line that never ends, a status code out of range.
    #[test]
    fn not_sip() {
        for p in [
            &b"OPTIONS * HTTP/1.1\r\n"[..],
            b"invite sip:a@example.com SIP/2.0\r\n",
            b"INVITE http://example.com SIP/2.0\r\n",
            b"FETCH sip:example.com SIP/2.0\r\n",
            b"INVITE sip:example.com SIP/2.0",
            b"INVITE sip:example.com SIP/2.0 x\r\n",
            b"SIP/2.0 099 Odd\r\n",
            b"SIP/2.0 2000 OK\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(start(p), None, "{}", String::from_utf8_lossy(p));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = start(&b);
            let mut r = b"INVITE sip:".to_vec();
            r.extend_from_slice(&b);
            let _ = start(&r);
        }
    }
}
