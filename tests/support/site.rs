//! A maintainer's publication for the subscription tests: a static HTTPS
//! server of the test CA (`dns.test`) on a documentation address, and a
//! maintainer who builds, signs and publishes rules and list bundles there.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use geowall::policy::bundle;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::{Net, in_ns, sa};

/// The update server's address (US in the test world).
pub(crate) const SITE: &str = "198.51.100.40";
/// The test's DNS server (US in the test world), which answers [`zone`].
pub(crate) const RESOLVER: &str = "198.51.100.53";

/// The test DNS server's zone: `dns.test` is the update server.
pub(crate) fn zone(name: &str, t: RecordType) -> Vec<Record> {
    match (name, t) {
        ("dns.test", RecordType::A) => vec![Record::from_rdata(
            Name::from_ascii("dns.test.").expect("name"),
            60,
            RData::A(A(SITE.parse().expect("ip"))),
        )],
        _ => Vec::new(),
    }
}

/// A file under `tests/fixtures/` (from the root package or from
/// mobile-ffi/, which includes this file).
pub(crate) fn fixture(p: &str) -> PathBuf {
    ["tests/fixtures", "../tests/fixtures"]
        .iter()
        .map(|d| Path::new(env!("CARGO_MANIFEST_DIR")).join(d))
        .find(|d| d.exists())
        .expect("tests/fixtures")
        .join(p)
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A static HTTPS server on SITE:443 with the test CA's `dns.test`
/// certificate, serving `dir` under `/site/`: `ETag` (the file's SHA-256)
/// and `If-None-Match`, 404 for the rest. It counts requests; `down`
/// closes connections at once (the server is away).
pub(crate) struct Site {
    /// Requests served.
    pub(crate) requests: Arc<AtomicUsize>,
    /// Set: connections are closed at once.
    pub(crate) down: Arc<AtomicBool>,
}

pub(crate) fn start_site(net: &mut Net, dir: PathBuf) -> Site {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(fixture("dot/server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(fixture("dot/server.key")).expect("server.key");
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server TLS"),
    );
    net.add_server_address(SITE);
    let l = in_ns(&net.net, || {
        TcpListener::bind(sa(SITE, 443)).expect("bind 443")
    });
    l.set_nonblocking(true).expect("nonblocking");
    let site = Site {
        requests: Arc::default(),
        down: Arc::default(),
    };
    let (requests, down, stop) = (
        Arc::clone(&site.requests),
        Arc::clone(&site.down),
        net.stopping(),
    );
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            if down.load(Ordering::SeqCst) {
                continue;
            }
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&cfg)) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, c);
            let mut head = Vec::new();
            {
                let mut r = BufReader::new(&mut tls);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if line == "\r\n" {
                        break;
                    }
                    head.extend_from_slice(line.as_bytes());
                    line.clear();
                }
            }
            requests.fetch_add(1, Ordering::SeqCst);
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            let inm = head.lines().find_map(|l| {
                l.strip_prefix("If-None-Match: ")
                    .map(|v| v.trim().to_owned())
            });
            let file = path
                .strip_prefix("/site/")
                .filter(|f| !f.contains('/') && !f.is_empty())
                .and_then(|f| std::fs::read(dir.join(f)).ok());
            let reply = match file {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                Some(body) => {
                    let tag: String = bundle::sha256(&body)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    let tag = format!("\"{tag}\"");
                    if inm.as_deref() == Some(tag.as_str()) {
                        format!("HTTP/1.1 304 Not Modified\r\nETag: {tag}\r\n\r\n").into_bytes()
                    } else {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nETag: {tag}\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                }
            };
            let _ = tls.write_all(&reply);
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            let mut sink = [0u8; 64];
            let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = tls.sock.read(&mut sink);
        }
    });
    site
}

/// A maintainer: a rules directory, a key, a site directory.
pub(crate) struct Maintainer {
    pub(crate) dir: PathBuf,
    pub(crate) key: bundle::SigningKey,
    pub(crate) site: PathBuf,
}

impl Maintainer {
    /// The maintainer of the tests: `rules/` and `site/` in `scratch`, key
    /// 7 (its public key in `a.pub`).
    pub(crate) fn new(scratch: &Path) -> Self {
        let m = Self {
            dir: scratch.join("rules"),
            key: bundle::SigningKey::from_bytes(&[7; 32]),
            site: scratch.join("site"),
        };
        std::fs::create_dir_all(&m.dir).expect("dir");
        std::fs::create_dir_all(&m.site).expect("dir");
        std::fs::write(
            scratch.join("a.pub"),
            bundle::key_hex(m.key.verifying_key().as_bytes()) + "\n",
        )
        .expect("pub");
        m
    }

    /// Builds the rules `policy` as sequence `seq` (valid `valid_s`),
    /// signed by `key`, and publishes it in the site directory.
    pub(crate) fn publish(&self, policy: &str, seq: u64, valid_s: i64, key: &bundle::SigningKey) {
        std::fs::write(self.dir.join("policy.toml"), policy).expect("policy");
        let t = now();
        let b = bundle::sign(
            &bundle::build(&self.dir, seq, t - 60, t.saturating_add_signed(valid_s))
                .expect("build"),
            key,
        )
        .expect("sign");
        let (index, ix) = bundle::publish_index(&b, key).expect("index");
        let file = ix.file;
        std::fs::write(self.site.join(&file), &b).expect("bundle");
        std::fs::write(self.site.join("index.json"), index).expect("index");
    }
}

/// Publishes list bundle `acme` (sequence `seq`, signed by `key`) in
/// `site`: list `list` holds the networks `cidrs`.
pub(crate) fn publish_lists(
    scratch: &Path,
    site: &Path,
    list: &str,
    cidrs: &str,
    seq: u64,
    key: &bundle::SigningKey,
) {
    let d = scratch.join(format!("acme-{seq}"));
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::write(
        d.join("lists.toml"),
        format!(
            "name = \"acme\"\n[[list]]\nname = \"{list}\"\nfile = \"nets.txt\"\nformat = \"cidr\"\n"
        ),
    )
    .expect("manifest");
    std::fs::write(d.join("nets.txt"), cidrs).expect("list");
    let t = now();
    let b = bundle::sign(
        &bundle::build(&d, seq, t - 60, t + 3_600).expect("build"),
        key,
    )
    .expect("sign");
    let (index, ix) = bundle::publish_index(&b, key).expect("index");
    assert_eq!(ix.file, format!("lists-{seq}.gwb"));
    std::fs::write(site.join(&ix.file), &b).expect("bundle");
    std::fs::write(site.join("lists-index.json"), index).expect("index");
}

/// The test world as a world bundle of sequence `seq` signed by `key`;
/// `moved`: with the US range (the servers and the update site) moved to
/// the PRC.
pub(crate) fn world_bundle(
    scratch: &Path,
    moved: bool,
    seq: u64,
    key: &bundle::SigningKey,
) -> Vec<u8> {
    let fixture = std::fs::read_to_string(fixture("world.csv")).expect("fixture");
    let csv_text = if moved {
        let m = fixture.replace(
            "198.51.100.0/24,US,US,64502,Test US Carrier,US",
            "198.51.100.0/24,CN,CN,64500,Test PRC Telecom,CN",
        );
        assert_ne!(m, fixture);
        m
    } else {
        fixture
    };
    let csv = scratch.join(format!("world-{seq}.csv"));
    std::fs::write(&csv, csv_text).expect("csv");
    let mut b = geowall::intel::world::WorldBuilder::new();
    b.add_fixture_csv(&csv, &mut |_| {}).expect("reads");
    let db = b.build(&mut |_| {}).expect("builds").0;
    let t = now();
    bundle::sign(
        &bundle::build_world(&db, seq, t - 10, t + 3_600).expect("build"),
        key,
    )
    .expect("sign")
}

/// Publishes a world bundle in `site` (`world-index.json` names it).
pub(crate) fn publish_world(site: &Path, world: &[u8], key: &bundle::SigningKey) {
    let (index, ix) = bundle::publish_index(world, key).expect("world index");
    std::fs::write(site.join(&ix.file), world).expect("world bundle");
    std::fs::write(site.join("world-index.json"), index).expect("world index");
}
