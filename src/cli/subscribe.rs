//! Subscriptions: a running geowall follows a maintainer's published rules
//! (`geowall rules publish`) over HTTPS. Each round fetches the signed
//! `index.json` (conditionally), and when it names a newer bundle, fetches
//! that, checks its size and SHA-256 against the index and verifies it as
//! `rules verify` does (pinned keys, newer than the installed sequence, not
//! expired) before it replaces the file the rules are read from and is
//! installed as a reload (open flows judged again). A failed round changes
//! nothing and is retried with backoff and jitter. The update server is a
//! destination like any other: the running rules judge it before a byte is
//! sent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use geowall::driver::fetch::{Fetched, Fetcher, HttpsUrl};
use geowall::intel::Intel;
use geowall::intel::jurisdiction::WorldHandle;
use geowall::policy::{Facts, Policy, PolicyHandle, Traffic, Transport, bundle};
use serde::Serialize;

/// The file a rules subscription's bundle is kept in, in the state
/// directory.
pub(crate) const FILE: &str = "subscribed.gwb";
/// The file a world subscription's bundle is kept in.
const WORLD_FILE: &str = "subscribed-world.gwb";
/// An index larger than this is refused.
const MAX_INDEX: usize = 64 * 1024;
/// The first retry after a failure; it doubles up to the interval.
const RETRY_FIRST: Duration = Duration::from_secs(30);

/// Reloads the rules as the instance was started and returns them; with
/// `true`, the running rules bundle may be compiled again (list bundles
/// changed), else only a newer one is taken.
pub(crate) type Reload = Arc<dyn Fn(bool) -> anyhow::Result<Policy> + Send + Sync>;
/// Installs a fetched bundle kept at a path; says what was installed.
pub(crate) type Install = Arc<dyn Fn(&Path) -> anyhow::Result<String> + Send + Sync>;

/// What `geowall status` shows of a subscription.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Status {
    /// What it brings: `rules`, `world data`, `list bundle NAME`.
    pub(crate) what: String,
    /// The index's URL.
    pub(crate) url: String,
    /// The installed bundle's sequence.
    pub(crate) installed: Option<u64>,
    /// When it expires (Unix seconds).
    pub(crate) expires: Option<u64>,
    /// The last round (Unix seconds).
    pub(crate) last_check: Option<u64>,
    /// The last round that reached the server and read its index.
    pub(crate) last_success: Option<u64>,
    /// What went wrong in the last round, if it failed.
    pub(crate) last_error: Option<String>,
    /// Rounds failed in a row.
    pub(crate) failures: u32,
    #[serde(skip)]
    etag: Option<String>,
    #[serde(skip)]
    last_modified: Option<String>,
}

/// A verified bundle a round fetched.
pub(crate) struct Got {
    sequence: u64,
    expires: u64,
    bytes: Vec<u8>,
}

/// A subscription to a published rules directory.
#[derive(Clone)]
pub(crate) struct Subscription {
    kind: bundle::BundleKind,
    /// A list bundle's name, which what is fetched must carry.
    list: Option<String>,
    url: HttpsUrl,
    every: Duration,
    keys: Vec<bundle::VerifyingKey>,
    /// Where the bundle goes (the rules are read from there).
    file: PathBuf,
    extra_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub(crate) status: Arc<Mutex<Status>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `6h`, `90m`, `30s`, `1d` or a number of seconds.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 6h, 90m, 30s)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        "d" => n * 86_400,
        _ => return Err(format!("'{s}': the unit is s, m, h or d")),
    };
    if secs == 0 {
        return Err("the interval must be at least 1 s".into());
    }
    Ok(Duration::from_secs(secs))
}

impl Subscription {
    /// A subscription to `kind` bundles (for a list bundle, the one named
    /// `list`) at `url` (a published directory, ending in `/`, or its
    /// index: `index.json` for rules, `world-index.json` for world data,
    /// `lists-index.json` for a list bundle) with the bundle kept in
    /// `state`, verified with `keys`, checked every `every`, trusting `ca`
    /// files besides the public roots.
    pub(crate) fn new(
        kind: bundle::BundleKind,
        list: Option<&str>,
        url: &str,
        every: Duration,
        keys: Vec<bundle::VerifyingKey>,
        state: &Path,
        ca: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let (flag, file, keyflag) = match (kind, list) {
            (bundle::BundleKind::Rules, _) => ("--subscribe", state.join(FILE), "--pubkey"),
            (bundle::BundleKind::World, _) => (
                "--subscribe-world",
                state.join(WORLD_FILE),
                "--world-pubkey",
            ),
            (bundle::BundleKind::Lists, Some(name)) => {
                anyhow::ensure!(
                    geowall::policy::lists::valid_bundle_name(name),
                    "--subscribe-list: '{name}' cannot name a list bundle (1 to 64 of a-z, 0-9, '.', '_', '-')"
                );
                (
                    "--subscribe-list",
                    list_file(state, name),
                    "--list-pubkey NAME=",
                )
            }
            (bundle::BundleKind::Lists, None) => {
                anyhow::bail!("a list subscription needs the list bundle's name")
            }
        };
        let mut url: HttpsUrl = url
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{flag}: {e}"))?;
        if url.path.ends_with('/') {
            url = url.sibling(kind.index_file());
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "{flag} needs the maintainer's key: {keyflag} FILE"
        );
        let mut extra_ca = Vec::new();
        for f in ca {
            extra_ca.extend(
                geowall::driver::dns::read_ca(f)
                    .map_err(|e| anyhow::anyhow!("--subscribe-ca: {e}"))?,
            );
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Ok(Self {
            status: Arc::new(Mutex::new(Status {
                what: list.map_or_else(|| kind.to_string(), |n| format!("list bundle {n}")),
                url: url.to_string(),
                ..Status::default()
            })),
            kind,
            list: list.map(str::to_owned),
            url,
            every,
            keys,
            file,
            extra_ca,
        })
    }

    /// The file the subscribed rules are read from.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// A fetcher resolving with `resolver`, its sockets protected.
    pub(crate) fn fetcher(
        &self,
        resolver: geowall::driver::dns::Resolver,
        protection: geowall::driver::protect::Protection,
    ) -> anyhow::Result<Fetcher> {
        Fetcher::new(resolver, protection, &self.extra_ca)
            .map_err(|e| anyhow::anyhow!("--subscribe-ca: {e}"))
    }

    /// Whether `policy` lets geowall reach the update server at `ip`.
    pub(crate) fn judge(
        policy: &Policy,
        intel: &Intel,
        ip: IpAddr,
        url: &HttpsUrl,
    ) -> Result<(), String> {
        let names = [url.host.as_str()];
        let facts = Facts {
            dst: Some(ip),
            port: Some(url.port),
            transport: Some(Transport::Tcp),
            names: if url.host.parse::<IpAddr>().is_ok() {
                &[]
            } else {
                &names
            },
            traffic: Some(Traffic::Web),
            protocol: Some("tls"),
            encrypted: Some(true),
            ..Facts::default()
        };
        let v = policy.evaluate(intel, &facts);
        if v.is_block() {
            return Err(format!(
                "the rules block the update server {ip} ({}{}); it is not contacted",
                v.rule.map_or_else(
                    || "the default action".to_owned(),
                    |(_, r)| format!("rule '{}'", r.name)
                ),
                v.layer.map(|l| format!(", {l}")).unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// One round: the index, and the bundle it names when newer than
    /// `installed`: its sequence and bytes, verified (not yet written to
    /// [`Self::file`]). `Ok(None)`: nothing new.
    pub(crate) async fn check(
        &self,
        fetcher: &Fetcher,
        installed: Option<u64>,
        allowed: &(dyn Fn(IpAddr, &HttpsUrl) -> Result<(), String> + Sync),
    ) -> Result<Option<Got>, String> {
        let (etag, modified) = {
            let s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            (s.etag.clone(), s.last_modified.clone())
        };
        let got = fetcher
            .get(
                &self.url,
                etag.as_deref(),
                modified.as_deref(),
                MAX_INDEX,
                allowed,
            )
            .await?;
        let Fetched::Body {
            body,
            etag,
            last_modified,
        } = got
        else {
            return Ok(None);
        };
        let index = bundle::open_index(&body, self.kind, &self.keys, None, now())
            .map_err(|e| format!("{}: refused: {e}", self.url))?
            .ok_or_else(|| format!("{}: refused: an index of nothing", self.url))?;
        match installed {
            Some(i) if index.sequence < i => {
                return Err(format!(
                    "{}: refused: it publishes sequence {}, older than the installed {i} (a rollback, or a stale mirror)",
                    self.url, index.sequence
                ));
            }
            Some(i) if index.sequence == i => {
                self.remember(etag, last_modified);
                return Ok(None);
            }
            _ => {}
        }
        if index.file.contains('/') || index.file.starts_with('.') {
            return Err(format!(
                "{}: refused: the index names {:?}",
                self.url, index.file
            ));
        }
        let url = self.url.sibling(&index.file);
        let max = usize::try_from(index.size).unwrap_or(usize::MAX);
        let Fetched::Body { body: b, .. } = fetcher.get(&url, None, None, max, allowed).await?
        else {
            return Err(format!(
                "{url}: the server answered 304 to an unconditional request"
            ));
        };
        let digest: String = bundle::sha256(&b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        if b.len() as u64 != index.size || digest != index.sha256 {
            return Err(format!(
                "{url}: refused: not the bundle the signed index names (size or SHA-256 differ)"
            ));
        }
        let got = bundle::inspect(&b, self.kind, &self.keys, installed, now())
            .map_err(|e| format!("{url}: refused: {e}"))?;
        if let Some(want) = &self.list
            && got.list_bundle.as_ref() != Some(want)
        {
            return Err(format!(
                "{url}: refused: it is list bundle '{}', not '{want}'",
                got.list_bundle.unwrap_or_default()
            ));
        }
        self.remember(etag, last_modified);
        Ok(Some(Got {
            sequence: got.sequence,
            expires: got.expires,
            bytes: b,
        }))
    }

    fn remember(&self, etag: Option<String>, last_modified: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.etag = etag;
        s.last_modified = last_modified;
    }

    /// Records a round's outcome; the delay before the next one: the
    /// interval after a success, else 30 s doubling up to it, each with up
    /// to a fifth of jitter.
    fn record<T>(
        &self,
        outcome: &Result<Option<T>, String>,
        installed: Option<u64>,
        expires: Option<u64>,
    ) -> Duration {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        let t = now();
        s.last_check = Some(t);
        s.installed = installed;
        s.expires = expires;
        let base = match outcome {
            Ok(_) => {
                s.last_success = Some(t);
                s.last_error = None;
                s.failures = 0;
                self.every
            }
            Err(e) => {
                s.last_error = Some(e.clone());
                s.failures = s.failures.saturating_add(1);
                RETRY_FIRST
                    .saturating_mul(1 << (s.failures - 1).min(16))
                    .min(self.every)
            }
        };
        jitter(base)
    }
}

/// `d` plus or minus up to a fifth, from the OS random source.
fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_or(0.5, |()| f64::from(u16::from_le_bytes(b)) / 65_535.0);
    d.mul_f64(0.8 + 0.4 * r)
}

/// Where a list subscription keeps its bundle: `lists/NAME.gwb` in the
/// state directory.
pub(crate) fn list_file(state: &Path, name: &str) -> PathBuf {
    state.join("lists").join(format!("{name}.gwb"))
}

/// Puts a verified bundle where it is kept and installs it; if the install
/// is refused (a policy that no longer compiles with it), the kept file is
/// what it was, so a restart starts from what was running.
fn put_and_install(file: &Path, bytes: &[u8], install: &Install) -> anyhow::Result<String> {
    let before = std::fs::read(file).ok();
    write_atomic(file, bytes).with_context(|| format!("cannot write {}", file.display()))?;
    install(file).inspect_err(|_| {
        let back = match &before {
            Some(b) => write_atomic(file, b),
            None => std::fs::remove_file(file),
        };
        if let Err(e) = back {
            eprintln!(
                "geowall: WARNING: cannot put back {}: {e}; a restart may start from the refused bundle and stop there",
                file.display()
            );
        }
    })
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// At start, with nothing fetched before: one round, with no rules yet to
/// judge the server (the rules it brings judge it next; see
/// [`refuse_blocked_server`]).
pub(crate) fn fetch_first(sub: &Subscription, fetcher: &Fetcher) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let got = rt.block_on(sub.check(fetcher, None, &|_, _| Ok(())));
    match got {
        Ok(Some(Got {
            sequence: seq,
            bytes,
            ..
        })) => {
            write_atomic(&sub.file, &bytes)
                .with_context(|| format!("cannot write {}", sub.file.display()))?;
            eprintln!("geowall: subscription {}: fetched sequence {seq}", sub.url);
            Ok(())
        }
        Ok(None) => anyhow::bail!("{}: the index names nothing newer than nothing", sub.url),
        Err(e) => Err(anyhow::anyhow!(e).context(format!(
            "{}: nothing was fetched before and the first fetch failed (nothing to start with)",
            sub.status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .what
        ))),
    }
}

/// Refuses to start when the rules block their own update server (an
/// address URL is judged at once; a name, after resolving it).
pub(crate) fn refuse_blocked_server(
    sub: &Subscription,
    fetcher: &Fetcher,
    policy: &Policy,
    intel: &Intel,
) -> anyhow::Result<()> {
    let ips: Vec<IpAddr> = match sub.url.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            match rt.block_on(fetcher.resolve(&sub.url)) {
                Ok(ips) => ips,
                Err(e) => {
                    // Offline at start: the rules judge each round anyway.
                    eprintln!(
                        "geowall: WARNING: subscription: {e}; the server is judged when it resolves"
                    );
                    Vec::new()
                }
            }
        }
    };
    for ip in ips {
        Subscription::judge(policy, intel, ip, &sub.url)
            .map_err(|e| anyhow::anyhow!("refusing the subscription {}: {e}", sub.url))?;
    }
    Ok(())
}

/// Follows the subscription until the process ends: rounds at the
/// interval, each judged by the running rules (`policy`, `world`), a newer
/// bundle installed with `install` (a reload for rules, a world update for
/// world data: verified again, recorded in the state directory, swapped
/// in; open flows judged again).
pub(crate) async fn follow(
    sub: Subscription,
    fetcher: Fetcher,
    policy: Arc<PolicyHandle>,
    world: Arc<WorldHandle>,
    install: Install,
    mut installed: Option<u64>,
    expires: Arc<Mutex<Option<u64>>>,
) {
    let exp = |e: &Arc<Mutex<Option<u64>>>| *e.lock().unwrap_or_else(PoisonError::into_inner);
    {
        let mut s = sub.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.installed = installed;
        s.expires = exp(&expires);
    }
    let mut wait = jitter(sub.every);
    loop {
        tokio::time::sleep(wait).await;
        let p = policy.current();
        let intel = Intel::new(world.current());
        let allowed = |ip: IpAddr, url: &HttpsUrl| Subscription::judge(&p, &intel, ip, url);
        let mut outcome = sub.check(&fetcher, installed, &allowed).await;
        if let Ok(Some(got)) = &outcome {
            let seq = got.sequence;
            match put_and_install(&sub.file, &got.bytes, &install) {
                Ok(what) => {
                    installed = Some(seq);
                    *expires.lock().unwrap_or_else(PoisonError::into_inner) = Some(got.expires);
                    eprintln!(
                        "geowall: subscription {}: installed sequence {seq} ({what})",
                        sub.url
                    );
                }
                Err(e) => {
                    outcome = Err(format!("install refused, the running data stays: {e:#}"));
                }
            }
        }
        if let Err(e) = &outcome {
            eprintln!("geowall: subscription: {e}");
        }
        wait = sub.record(&outcome, installed, exp(&expires));
    }
}
