//! The resolver behind the engine's DNS: hickory, with upstreams given as
//! `system` (`/etc/resolv.conf`), `udp:IP[:PORT]`, `tcp:IP[:PORT]`,
//! `tls:IP[:PORT]@NAME` (DNS over TLS) or `https:IP[:PORT]@NAME` (DNS over
//! HTTPS). Certificates of `tls:` and `https:` upstreams are checked
//! against the public authorities (webpki-roots) and any extra authorities
//! given with [`read_ca`] (a resolver with a private CA).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{
    RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
use hickory_resolver::net::{DnsError, NetError};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::protect::Protection;
use crate::engine::dns::Resolved;

/// The resolver the driver uses: its sockets get the same protection as
/// the flows' (fwmark, interface, protector hook).
pub type Resolver = hickory_resolver::Resolver<ProtectedRuntime>;

/// A resolver replaced in place (the host moved to a network with other
/// DNS servers): each lookup takes the one current when it starts.
pub type SharedResolver = Arc<arc_swap::ArcSwap<Resolver>>;

/// `r`, to be replaced in place later.
pub fn shared(r: Resolver) -> SharedResolver {
    Arc::new(arc_swap::ArcSwap::from_pointee(r))
}

/// hickory's tokio runtime, with every socket it opens protected.
#[derive(Clone, Default)]
pub struct ProtectedRuntime {
    inner: TokioRuntimeProvider,
    protection: Protection,
}

impl RuntimeProvider for ProtectedRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = tokio::net::UdpSocket;
    type Tcp = AsyncIoTokioAsStd<tokio::net::TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server: SocketAddr,
        bind: Option<SocketAddr>,
        wait: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Tcp>>>> {
        let prot = self.protection.clone();
        Box::pin(async move {
            let s = prot.socket(server.ip(), socket2::Type::STREAM, None)?;
            if let Some(b) = bind {
                s.bind(&b.into())?;
            }
            s.set_tcp_nodelay(true)?;
            let s = tokio::net::TcpSocket::from_std_stream(s.into());
            match tokio::time::timeout(wait.unwrap_or(Duration::from_secs(5)), s.connect(server))
                .await
            {
                Ok(r) => r.map(AsyncIoTokioAsStd),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to resolver {server} timed out"),
                )),
            }
        })
    }

    fn bind_udp(
        &self,
        local: SocketAddr,
        server: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = io::Result<Self::Udp>>>> {
        let prot = self.protection.clone();
        Box::pin(async move {
            let s = prot.socket(server.ip(), socket2::Type::DGRAM, None)?;
            s.bind(&local.into())?;
            tokio::net::UdpSocket::from_std(s.into())
        })
    }
}

/// One upstream resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The system's (`/etc/resolv.conf`).
    System,
    /// Plain DNS over UDP (falling back to TCP for truncated answers).
    Udp(SocketAddr),
    /// Plain DNS over TCP.
    Tcp(SocketAddr),
    /// DNS over TLS, checking the certificate against the name.
    Tls(SocketAddr, String),
    /// DNS over HTTPS, checking the certificate against the name.
    Https(SocketAddr, String),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::System => write!(f, "system"),
            Upstream::Udp(a) => write!(f, "udp:{a}"),
            Upstream::Tcp(a) => write!(f, "tcp:{a}"),
            Upstream::Tls(a, n) => write!(f, "tls:{a}@{n}"),
            Upstream::Https(a, n) => write!(f, "https:{a}@{n}"),
        }
    }
}

fn addr(s: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, port))
        .map_err(|_| format!("'{s}' is not an address (IP, IP:PORT or [IPv6]:PORT)"))
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "system" {
            return Ok(Upstream::System);
        }
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("upstream '{s}': expected system, udp:IP, tcp:IP, tls:IP@NAME or https:IP@NAME")
        })?;
        let named = |port| -> Result<(SocketAddr, String), String> {
            let (a, n) = rest.rsplit_once('@').ok_or_else(|| {
                format!("upstream '{s}': {kind} needs @NAME (the certificate's name)")
            })?;
            if n.is_empty() {
                return Err(format!("upstream '{s}': empty name after @"));
            }
            Ok((addr(a, port)?, n.to_owned()))
        };
        match kind {
            "udp" => Ok(Upstream::Udp(addr(rest, 53)?)),
            "tcp" => Ok(Upstream::Tcp(addr(rest, 53)?)),
            "tls" => named(853).map(|(a, n)| Upstream::Tls(a, n)),
            "https" => named(443).map(|(a, n)| Upstream::Https(a, n)),
            _ => Err(format!("upstream '{s}': unknown kind '{kind}'")),
        }
    }
}

fn server(a: SocketAddr, protocol: ProtocolConfig) -> NameServerConfig {
    let mut c = ConnectionConfig::new(protocol);
    c.port = a.port();
    NameServerConfig::new(a.ip(), true, vec![c])
}

/// Refuses upstream resolvers that `policy` blocks by address (under a
/// blocked jurisdiction, ASN or range): every query would go there.
///
/// # Errors
/// The first refused address, with the rule and the layer that matched.
pub fn refuse_blocked(
    policy: &crate::policy::Policy,
    intel: &crate::intel::jurisdiction::Intel,
    upstreams: &[IpAddr],
) -> Result<(), String> {
    for &ip in upstreams {
        if let Some((rule, layer)) = policy.dns_blocks_address(intel, ip, &[], None) {
            return Err(format!(
                "refusing upstream resolver {ip}: it is under a blocked jurisdiction (rule '{}'{}); choose another upstream",
                rule.name,
                layer
                    .map(|l| format!(", {} layer: {}", l.layer.name(), l.country_name()))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Builds the resolver; also returns the upstream servers' addresses (to
/// check against the policy before any query leaves).
///
/// # Errors
/// The system configuration cannot be read, or hickory refuses it.
pub fn build(
    upstreams: &[Upstream],
    protection: &Protection,
    extra_roots: &[CertificateDer<'static>],
) -> Result<(Resolver, Vec<IpAddr>), String> {
    let mut servers = Vec::new();
    let mut opts = ResolverOpts::default();
    for u in upstreams {
        match u {
            Upstream::System => {
                let (cfg, sys) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?;
                opts = sys;
                servers.extend(cfg.name_servers().iter().cloned());
            }
            Upstream::Udp(a) => {
                let mut s = server(*a, ProtocolConfig::Udp);
                let mut tcp = ConnectionConfig::new(ProtocolConfig::Tcp);
                tcp.port = a.port();
                s.connections.push(tcp);
                servers.push(s);
            }
            Upstream::Tcp(a) => servers.push(server(*a, ProtocolConfig::Tcp)),
            Upstream::Tls(a, n) => {
                servers.push(server(
                    *a,
                    ConnectionConfig::tls(Arc::from(n.as_str())).protocol,
                ));
            }
            Upstream::Https(a, n) => servers.push(server(
                *a,
                ConnectionConfig::https(Arc::from(n.as_str()), None).protocol,
            )),
        }
    }
    if servers.is_empty() {
        return Err("no upstream resolver configured (the system lists none)".into());
    }
    let ips = servers.iter().map(|s| s.ip).collect();
    // geowall caches answers itself (to filter them per policy); hickory
    // keeps a small cache of its own for concurrent identical queries.
    opts.cache_size = 256;
    // Two tries of 2 s: an app's stub resolver (glibc: 5 s) gets SERVFAIL
    // from geowall before it gives up on its own.
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.ndots = 0;
    let cfg = ResolverConfig::from_name_servers(servers);
    let runtime = ProtectedRuntime {
        inner: TokioRuntimeProvider::default(),
        protection: protection.clone(),
    };
    let mut builder =
        hickory_resolver::Resolver::builder_with_config(cfg, runtime).with_options(opts);
    if !extra_roots.is_empty() {
        builder = builder.with_tls_config(tls_config(extra_roots)?);
    }
    let r = builder
        .build()
        .map_err(|e| format!("cannot build the resolver: {e}"))?;
    Ok((r, ips))
}

/// The certificates of a PEM file of certificate authorities, to trust
/// for `tls:` and `https:` upstreams besides the public ones.
///
/// # Errors
/// The file cannot be read, is not PEM, or holds no certificate; the
/// message names the file.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_ca(&bytes, &path.display().to_string())
}

/// The certificates of PEM text (`what` names it in errors), as
/// [`read_ca`] reads them from a file.
///
/// # Errors
/// Not PEM, or no certificate in it.
pub fn parse_ca(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what}: no certificate in it (expected PEM blocks '-----BEGIN CERTIFICATE-----')"
        ));
    }
    Ok(certs)
}

/// TLS settings for the upstreams: the public authorities and `extra`.
pub(crate) fn tls_config(
    extra: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (i, c) in extra.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| format!("extra certificate authority {}: {e}", i + 1))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Resolves `name` for `rtype`: the answer section, or the negative
/// answer; `None` when no upstream answered.
pub async fn resolve(r: &Resolver, name: Name, rtype: RecordType) -> Option<Resolved> {
    match r.lookup(name, rtype).await {
        Ok(l) => Some(Resolved {
            rcode: ResponseCode::NoError,
            records: l.answers().to_vec(),
            negative_ttl: None,
        }),
        Err(NetError::Dns(DnsError::NoRecordsFound(n))) => Some(Resolved {
            rcode: n.response_code,
            records: Vec::new(),
            negative_ttl: n.negative_ttl,
        }),
        Err(NetError::Dns(DnsError::ResponseCode(c))) if c == ResponseCode::NXDomain => {
            Some(Resolved {
                rcode: c,
                records: Vec::new(),
                negative_ttl: None,
            })
        }
        Err(_) => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dot")
            .join(name)
    }

    /// Extra authorities: a PEM file with one certificate is read and goes
    /// into the TLS settings; every way a file can be wrong is an error
    /// naming it.
    #[test]
    fn extra_certificate_authorities_are_read_or_refused_with_the_file() {
        let ca = read_ca(&fixture("ca.pem")).expect("the test CA");
        assert_eq!(ca.len(), 1);
        tls_config(&ca).expect("TLS settings with the test CA");
        let dir = tempfile::tempdir().expect("temp dir");
        let cases: [(&str, &[u8], &str); 3] = [
            ("empty.pem", b"", "no certificate"),
            (
                "key.pem",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "no certificate",
            ),
            (
                "bad.pem",
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "not a PEM",
            ),
        ];
        for (name, text, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            let e = read_ca(&p).expect_err(name);
            assert!(e.contains(want) && e.contains(name), "{name}: {e}");
        }
        let e = read_ca(&dir.path().join("missing.pem")).expect_err("missing");
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
    }

    struct Count(AtomicUsize);
    impl crate::driver::SocketProtector for Count {
        fn protect(&self, _fd: std::os::fd::RawFd) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    /// A DNS server of a test's own on loopback, answering `answers` queries
    /// within 5 s (an A question with the record `ip`, for any name; other
    /// types with no record); its address.
    pub(crate) fn loopback_server(
        ip: [u8; 4],
        answers: usize,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        use hickory_proto::op::Message;
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let at = server.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            for _ in 0..answers {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    return;
                };
                let q = Message::from_vec(&buf[..n]).expect("query");
                let mut m = Message::response(q.metadata.id, q.metadata.op_code);
                m.metadata.recursion_available = true;
                let question = q.queries[0].clone();
                let name = question.name().clone();
                let a = question.query_type() == RecordType::A;
                m.add_query(question);
                if a {
                    m.add_answer(Record::from_rdata(
                        name,
                        60,
                        RData::A(A::from(std::net::Ipv4Addr::from(ip))),
                    ));
                }
                let _ = server.send_to(&m.to_vec().expect("encode"), from);
            }
        });
        (at, t)
    }

    /// A real resolver against a server of the test's own on loopback:
    /// the answer comes back, and the protector saw the resolver's socket.
    #[test]
    fn resolver_sockets_are_protected_and_answers_come_back() {
        let (at, t) = loopback_server([192, 0, 2, 7], 1);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let prot = Protection {
            protector: Some(count.clone()),
            ..Protection::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let got = rt.block_on(async {
            let (r, ips) = build(&[Upstream::Udp(at)], &prot, &[]).expect("resolver");
            assert_eq!(ips, vec![at.ip()]);
            resolve(
                &r,
                Name::from_ascii("api.example.").expect("name"),
                RecordType::A,
            )
            .await
        });
        let _ = t.join();
        let got = got.expect("an answer");
        assert_eq!(got.records.len(), 1);
        assert!(
            count.0.load(Ordering::SeqCst) >= 1,
            "the protector saw the socket"
        );
    }

    #[test]
    fn upstream_specs_parse_and_say_what_is_wrong() {
        assert_eq!("system".parse(), Ok(Upstream::System));
        assert_eq!(
            "udp:192.0.2.53".parse(),
            Ok(Upstream::Udp("192.0.2.53:53".parse().expect("addr")))
        );
        assert_eq!(
            "tcp:[2001:db8::53]:5353".parse(),
            Ok(Upstream::Tcp("[2001:db8::53]:5353".parse().expect("addr")))
        );
        assert_eq!(
            "tls:192.0.2.53@dns.example".parse(),
            Ok(Upstream::Tls(
                "192.0.2.53:853".parse().expect("addr"),
                "dns.example".into()
            ))
        );
        assert_eq!(
            "https:2001:db8::53@dns.example".parse(),
            Ok(Upstream::Https(
                "[2001:db8::53]:443".parse().expect("addr"),
                "dns.example".into()
            ))
        );
        for (bad, says) in [
            ("udp:nowhere", "not an address"),
            ("tls:192.0.2.53", "needs @NAME"),
            ("quic:192.0.2.53", "unknown kind"),
            ("8.8.8.8", "expected system"),
        ] {
            let e = bad.parse::<Upstream>().expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
