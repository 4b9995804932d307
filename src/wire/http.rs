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

/// Looks for the `Host` of an HTTP/1.x request at the start of `stream`.
pub fn host(stream: &[u8]) -> HttpHost<'_> {
    let head = &stream[..stream.len().min(8)];
    if !METHODS
        .iter()
        .any(|m| m.starts_with(head) || head.starts_with(m))
    {
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
            let v = trim(&line[5..]);
            // Strip a port; keep IPv6 literals in brackets whole.
            let v = if v.first() == Some(&b'[') {
                v.iter().position(|&c| c == b']').map_or(v, |p| &v[..=p])
            } else {
                v.iter().position(|&c| c == b':').map_or(v, |p| &v[..p])
            };
            let ok = !v.is_empty()
                && v.iter().all(|&c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, b'-' | b'.' | b'_' | b'[' | b']' | b':')
                });
            return HttpHost::Found(if ok {
                std::str::from_utf8(v).ok()
            } else {
                None
            });
        }
        at += rel + 2;
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

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = host(&b);
            let mut g = b"GET / HTTP/1.1\r\n".to_vec();
            g.extend_from_slice(&b);
            let _ = host(&g);
        }
    }
}
