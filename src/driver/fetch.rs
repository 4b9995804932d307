//! Fetching published files over HTTPS for subscriptions: through a
//! protected socket (never through the TUN), names resolved by geowall's
//! own resolver, the server judged by the running rules before a byte is
//! sent, rustls with the public roots (and any private CA given), one
//! HTTP/1.1 `GET` per connection with conditional headers, a size limit
//! and a time limit on the whole exchange.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dns::Resolver;
use super::protect::Protection;

/// How long one fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Response headers larger than this are refused.
const MAX_HEADERS: usize = 16 * 1024;

/// An `https://` URL: host, port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// The host name or address.
    pub host: String,
    /// The port (443 unless given).
    pub port: u16,
    /// The path, starting with `/`.
    pub path: String,
}

impl std::fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            write!(f, "https://{host}{}", self.path)
        } else {
            write!(f, "https://{host}:{}{}", self.port, self.path)
        }
    }
}

impl std::str::FromStr for HttpsUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("https://").ok_or_else(|| {
            format!("'{s}' is not an https:// URL (lists are only fetched over TLS)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') || path.contains(['?', '#', ' ']) {
            return Err(format!(
                "'{s}': no credentials, query or fragment in a subscription URL"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{s}': unclosed '[' in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 443,
            Some(p) => p
                .parse()
                .map_err(|_| format!("'{s}': '{p}' is not a port"))?,
        };
        if host.is_empty() {
            return Err(format!("'{s}': no host"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_owned(),
        })
    }
}

impl HttpsUrl {
    /// The URL of `file` in the same directory (the path up to its last
    /// `/`, then `file`).
    pub fn sibling(&self, file: &str) -> Self {
        let dir = &self.path[..=self.path.rfind('/').unwrap_or(0)];
        Self {
            path: format!("{dir}{file}"),
            ..self.clone()
        }
    }
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// 304: what was fetched before is current.
    NotModified,
    /// 200, with the validators to send next time.
    Body {
        /// The body.
        body: Vec<u8>,
        /// Its `ETag`.
        etag: Option<String>,
        /// Its `Last-Modified`.
        last_modified: Option<String>,
    },
}

/// Fetches over HTTPS as the module says. Clones share the resolver
/// ([`Fetcher::set_resolver`]).
#[derive(Clone)]
pub struct Fetcher {
    resolver: super::dns::SharedResolver,
    protection: Protection,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher resolving with `resolver`, its sockets protected by
    /// `protection`, trusting the public roots and `extra` authorities.
    ///
    /// # Errors
    /// An extra certificate rustls refuses.
    pub fn new(
        resolver: Resolver,
        protection: Protection,
        extra: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, String> {
        Ok(Self {
            resolver: super::dns::shared(resolver),
            protection,
            tls: Arc::new(super::dns::tls_config(extra)?),
        })
    }

    /// Resolves with `resolver` from the next fetch on, in this fetcher and
    /// its clones: the servers of a network the host moved to.
    pub fn set_resolver(&self, resolver: Resolver) {
        self.resolver.store(Arc::new(resolver));
    }

    /// The addresses `url`'s host has (itself, if it is an address).
    ///
    /// # Errors
    /// The name does not resolve.
    pub async fn resolve(&self, url: &HttpsUrl) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = url.host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let resolver = self.resolver.load_full();
        let ips: Vec<IpAddr> = resolver
            .lookup_ip(url.host.as_str())
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
            .iter()
            .collect();
        if ips.is_empty() {
            return Err(format!("{} has no address", url.host));
        }
        Ok(ips)
    }

    /// `GET url`, with `If-None-Match`/`If-Modified-Since` from `etag` and
    /// `last_modified`; a body over `max` bytes is an error. `allowed` is
    /// asked about each address before connecting (the running rules'
    /// verdict): `Err` with its reason refuses it.
    ///
    /// # Errors
    /// What failed, with the URL: resolution, the rules, connect, TLS, a
    /// status other than 200 and 304, a damaged or oversized answer, the
    /// time limit.
    pub async fn get(
        &self,
        url: &HttpsUrl,
        etag: Option<&str>,
        last_modified: Option<&str>,
        max: usize,
        allowed: &(dyn Fn(IpAddr, &HttpsUrl) -> Result<(), String> + Sync),
    ) -> Result<Fetched, String> {
        let work = async {
            let ips = self.resolve(url).await?;
            let mut last = String::new();
            for ip in ips {
                allowed(ip, url)?;
                match self.exchange(url, ip, etag, last_modified, max).await {
                    Ok(f) => return Ok(f),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .map_err(|_| format!("timed out after {} s", FETCH_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{url}: {e}"))
    }

    async fn exchange(
        &self,
        url: &HttpsUrl,
        ip: IpAddr,
        etag: Option<&str>,
        last_modified: Option<&str>,
        max: usize,
    ) -> Result<Fetched, String> {
        let dst = SocketAddr::new(ip, url.port);
        let s = self
            .protection
            .socket(ip, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
            .map_err(|e| format!("socket: {e}"))?;
        let tcp = tokio::net::TcpSocket::from_std_stream(s.into())
            .connect(dst)
            .await
            .map_err(|e| format!("cannot connect to {dst}: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("'{}' cannot be checked in a certificate: {e}", url.host))?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {dst}: {e}"))?;
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: geowall/{}\r\nAccept: */*\r\nConnection: close\r\n",
            url.path,
            if url.port == 443 {
                url.host.clone()
            } else {
                format!("{}:{}", url.host, url.port)
            },
            env!("CARGO_PKG_VERSION")
        );
        if let Some(e) = etag {
            req.push_str(&format!("If-None-Match: {e}\r\n"));
        }
        if let Some(m) = last_modified {
            req.push_str(&format!("If-Modified-Since: {m}\r\n"));
        }
        req.push_str("\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut raw = Vec::new();
        let limit = (max + MAX_HEADERS) as u64 + 1;
        (&mut tls)
            .take(limit)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        parse_response(&raw, max)
    }
}

/// Reads an HTTP/1.1 response held whole (`Connection: close`).
fn parse_response(raw: &[u8], max: usize) -> Result<Fetched, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .filter(|&i| i <= MAX_HEADERS)
        .ok_or("no complete response headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "response headers are not text")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code: u16 = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| status.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP/1.x status line: {status:?}"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    match code {
        304 => return Ok(Fetched::NotModified),
        200 => {}
        c => {
            return Err(format!(
                "the server answered {status:?}{}",
                if c == 404 {
                    " (nothing published there?)"
                } else {
                    ""
                }
            ));
        }
    }
    let mut body = raw[end + 4..].to_vec();
    if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(n) = header("content-length") {
        let n: usize = n.parse().map_err(|_| format!("bad Content-Length {n:?}"))?;
        if body.len() < n {
            return Err(format!("the answer was cut: {} of {n} bytes", body.len()));
        }
        body.truncate(n);
    }
    if body.len() > max {
        return Err(format!("the answer is larger than {max} bytes"));
    }
    Ok(Fetched::Body {
        body,
        etag: header("etag"),
        last_modified: header("last-modified"),
    })
}

/// Decodes a chunked body.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line is cut")?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or("a chunk size is not hex")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = b.get(..size).ok_or("a chunk is cut")?;
        out.extend_from_slice(chunk);
        b = b.get(size + 2..).ok_or("a chunk is cut")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver set on a fetcher is the one its clones (the followers'
    /// copies) resolve with from then on.
    #[test]
    fn a_new_resolver_reaches_every_clone() {
        use super::super::dns::{Upstream, build, tests::loopback_server};
        let (first, t1) = loopback_server([192, 0, 2, 7], 2);
        let (second, t2) = loopback_server([192, 0, 2, 8], 2);
        let resolver = |at| {
            build(&[Upstream::Udp(at)], &Protection::default(), &[])
                .expect("resolver")
                .0
        };
        let fetcher = Fetcher::new(resolver(first), Protection::default(), &[]).expect("fetcher");
        let copy = fetcher.clone();
        let url: HttpsUrl = "https://updates.example/index.json".parse().expect("url");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let before = rt.block_on(copy.resolve(&url));
        fetcher.set_resolver(resolver(second));
        let after = rt.block_on(copy.resolve(&url));
        let _ = (t1.join(), t2.join());
        assert_eq!(before, Ok(vec![IpAddr::from([192, 0, 2, 7])]));
        assert_eq!(after, Ok(vec![IpAddr::from([192, 0, 2, 8])]));
    }

    #[test]
    fn urls_read_and_siblings() {
        let u: HttpsUrl = "https://Lists.Example:8443/geowall/index.json"
            .parse()
            .expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("lists.example", 8443, "/geowall/index.json")
        );
        assert_eq!(
            u.sibling("rules-7.gwb").to_string(),
            "https://lists.example:8443/geowall/rules-7.gwb"
        );
        let v: HttpsUrl = "https://[2001:db8::1]/".parse().expect("v6");
        assert_eq!((v.host.as_str(), v.port), ("2001:db8::1", 443));
        assert_eq!(v.to_string(), "https://[2001:db8::1]/");
        for bad in [
            "http://x/",
            "https://",
            "https://u@x/",
            "https://x:99999/",
            "https://x/?a=1",
        ] {
            assert!(bad.parse::<HttpsUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_read_with_their_validators_and_limits() {
        let ok = b"HTTP/1.1 200 OK\r\nETag: \"v7\"\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(ok, 100),
            Ok(Fetched::Body {
                body: b"hello".to_vec(),
                etag: Some("\"v7\"".into()),
                last_modified: None
            })
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\n", 100),
            Ok(Fetched::NotModified)
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
        assert!(
            matches!(parse_response(chunked, 100), Ok(Fetched::Body { body, .. }) if body == b"hello")
        );
        assert!(parse_response(ok, 4).is_err(), "over the size limit");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello", 100).is_err());
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n", 100).is_err());
        assert!(parse_response(b"garbage", 100).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_answer_reads_without_panicking(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse_response(&b, 200);
            let _ = dechunk(&b);
        }
    }
}
