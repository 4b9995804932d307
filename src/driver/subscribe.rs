//! Subscriptions: a running geowall follows a maintainer's published
//! bundles (`geowall rules publish`) over HTTPS: rules, world data or a
//! named list bundle. Each round fetches the signed index (conditionally),
//! and when it names a newer bundle, fetches that, checks its size and
//! SHA-256 against the index and verifies it as `rules verify` does
//! (pinned keys, newer than the installed sequence, not expired) before it
//! replaces the file kept in the state directory and is installed (a
//! reload: open flows judged again). A failed round changes nothing and is
//! retried with backoff and jitter. The update server is a destination
//! like any other: the running rules judge it before a byte is sent.
//!
//! The command line (`--subscribe`, `--subscribe-world`,
//! `--subscribe-list`) and the phone library (`subscriptions` in its
//! configuration) both follow subscriptions through this module.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::Serialize;

use super::fetch::{Fetched, Fetcher, HttpsUrl};
use crate::intel::Intel;
use crate::intel::jurisdiction::WorldHandle;
use crate::policy::lists::{InstalledLists, ListBundle};
use crate::policy::{Facts, Policy, PolicyHandle, Traffic, Transport, bundle};

/// The file a rules subscription's bundle is kept in, in the state
/// directory.
pub const RULES_FILE: &str = "subscribed.gwb";
/// The file a world subscription's bundle is kept in.
pub const WORLD_FILE: &str = "subscribed-world.gwb";
/// An index larger than this is refused.
const MAX_INDEX: usize = 64 * 1024;
/// The first retry after a failure; it doubles up to the interval.
const RETRY_FIRST: Duration = Duration::from_secs(30);
/// The interval when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(6 * 3_600);

/// Installs a fetched bundle kept at a path; says what was installed, or
/// why it was refused (the running data then stays).
pub type Install = Arc<dyn Fn(&Path) -> Result<String, String> + Send + Sync>;

/// What a subscription's state is: what `geowall status` and the phone
/// library's `geowall_subscriptions` show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// What it brings: `rules`, `world data`, `list bundle NAME`.
    pub what: String,
    /// The index's URL.
    pub url: String,
    /// The installed bundle's sequence.
    pub installed: Option<u64>,
    /// When it expires (Unix seconds).
    pub expires: Option<u64>,
    /// When it was installed on this device (Unix seconds; for a bundle
    /// kept from before a restart, when it was kept).
    pub installed_at: Option<u64>,
    /// The last round (Unix seconds).
    pub last_check: Option<u64>,
    /// The last round that reached the server and read its index.
    pub last_success: Option<u64>,
    /// What went wrong in the last round, if it failed.
    pub last_error: Option<String>,
    /// Rounds failed in a row.
    pub failures: u32,
    /// The installed bundle has expired (it stays in force until a newer
    /// one arrives); set in the copies [`Status::at`] makes.
    pub stale: bool,
    #[serde(skip)]
    etag: Option<String>,
    #[serde(skip)]
    last_modified: Option<String>,
}

impl Status {
    /// A copy as of `now` (Unix seconds): [`Status::stale`] said.
    pub fn at(&self, now: u64) -> Self {
        Self {
            stale: self.expires.is_some_and(|e| now >= e),
            ..self.clone()
        }
    }
}

/// A verified bundle a round fetched.
#[derive(Debug)]
pub struct Got {
    /// Its sequence.
    pub sequence: u64,
    /// When it expires (Unix seconds).
    pub expires: u64,
    bytes: Vec<u8>,
}

/// A subscription to a published directory.
#[derive(Clone)]
pub struct Subscription {
    kind: bundle::BundleKind,
    /// A list bundle's name, which what is fetched must carry.
    list: Option<String>,
    url: HttpsUrl,
    every: Duration,
    keys: Vec<bundle::VerifyingKey>,
    /// Where the bundle is kept (the rules are read from there).
    file: PathBuf,
    extra_ca: Vec<CertificateDer<'static>>,
    status: Arc<Mutex<Status>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("kind", &self.kind)
            .field("list", &self.list)
            .field("url", &self.url.to_string())
            .field("every", &self.every)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads an interval: `6h`, `90m`, `30s`, `1d` or a number of seconds.
///
/// # Errors
/// Not a number with one of those units, or zero.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 6h, 90m, 30s)"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("'{s}': the unit is s, m, h or d")),
    }
    .ok_or_else(|| format!("'{s}' is too long"))?;
    if secs == 0 {
        return Err("the interval must be at least 1 s".into());
    }
    Ok(Duration::from_secs(secs))
}

impl Subscription {
    /// A subscription to `kind` bundles (for a list bundle, the one named
    /// `list`) at `url` (a published directory, ending in `/`, or its
    /// index: `index.json` for rules, `world-index.json` for world data,
    /// `lists-index.json` for a list bundle), the bundle kept in the state
    /// directory `state` (created if missing), verified with `keys`,
    /// checked every `every`, trusting `extra_ca` besides the public
    /// roots.
    ///
    /// # Errors
    /// Not an `https://` URL, no key, a list bundle without a valid name,
    /// a state directory that cannot be created.
    pub fn new(
        kind: bundle::BundleKind,
        list: Option<&str>,
        url: &str,
        every: Duration,
        keys: Vec<bundle::VerifyingKey>,
        state: &Path,
        extra_ca: Vec<CertificateDer<'static>>,
    ) -> Result<Self, String> {
        let file = match (kind, list) {
            (bundle::BundleKind::Rules, _) => state.join(RULES_FILE),
            (bundle::BundleKind::World, _) => state.join(WORLD_FILE),
            (bundle::BundleKind::Lists, Some(name)) => {
                if !crate::policy::lists::valid_bundle_name(name) {
                    return Err(format!(
                        "'{name}' cannot name a list bundle (1 to 64 of a-z, 0-9, '.', '_', '-')"
                    ));
                }
                list_file(state, name)
            }
            (bundle::BundleKind::Lists, None) => {
                return Err("a list subscription needs the list bundle's name".into());
            }
        };
        let mut url: HttpsUrl = url.parse()?;
        if url.path.ends_with('/') {
            url = url.sibling(kind.index_file());
        }
        if keys.is_empty() {
            return Err(format!(
                "{url}: no key to verify its bundles with (the maintainer's public key)"
            ));
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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

    /// The file the subscribed bundle is kept in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// What it brings.
    pub fn kind(&self) -> bundle::BundleKind {
        self.kind
    }

    /// The list bundle's name, for a list subscription.
    pub fn list(&self) -> Option<&str> {
        self.list.as_deref()
    }

    /// The index's URL.
    pub fn url(&self) -> &HttpsUrl {
        &self.url
    }

    /// The keys its bundles are verified with.
    pub fn keys(&self) -> &[bundle::VerifyingKey] {
        &self.keys
    }

    /// Its state now.
    pub fn status(&self) -> Status {
        lock(&self.status).at(now())
    }

    /// Its state, shared: it changes as rounds go by.
    pub fn status_handle(&self) -> Arc<Mutex<Status>> {
        Arc::clone(&self.status)
    }

    /// A fetcher resolving with `resolver`, its sockets protected.
    ///
    /// # Errors
    /// An extra certificate authority rustls refuses.
    pub fn fetcher(
        &self,
        resolver: super::dns::Resolver,
        protection: super::protect::Protection,
    ) -> Result<Fetcher, String> {
        Fetcher::new(resolver, protection, &self.extra_ca)
    }

    /// Whether `policy` lets geowall reach the update server at `ip`.
    ///
    /// # Errors
    /// The rules block it: which rule, under which layer.
    pub fn judge(policy: &Policy, intel: &Intel, ip: IpAddr, url: &HttpsUrl) -> Result<(), String> {
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
    ///
    /// # Errors
    /// The server cannot be reached or is blocked by `allowed`, or what
    /// it serves is refused (signature, rollback, expiry, size, name).
    pub async fn check(
        &self,
        fetcher: &Fetcher,
        installed: Option<u64>,
        allowed: &(dyn Fn(IpAddr, &HttpsUrl) -> Result<(), String> + Sync),
    ) -> Result<Option<Got>, String> {
        let (etag, modified) = {
            let s = lock(&self.status);
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
        let mut s = lock(&self.status);
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
        let mut s = lock(&self.status);
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
pub fn list_file(state: &Path, name: &str) -> PathBuf {
    state.join("lists").join(format!("{name}.gwb"))
}

/// The list bundle `name` kept at `file`, verified again (signature by
/// one of `keys`, not expired at `now`, the name it carries).
///
/// # Errors
/// Not fetched yet, damaged, foreign, expired, or another bundle's.
pub fn read_kept_list(
    file: &Path,
    name: &str,
    keys: &[bundle::VerifyingKey],
    now: u64,
) -> Result<ListBundle, String> {
    let bytes = std::fs::read(file).map_err(|e| {
        format!(
            "list bundle '{name}': cannot read {} (not fetched yet?): {e}",
            file.display()
        )
    })?;
    let b = bundle::open_lists(&bytes, keys, None, now)
        .map_err(|e| format!("list bundle '{name}' ({}): {e}", file.display()))?;
    if b.name != name {
        return Err(format!(
            "{}: it is list bundle '{}', not '{name}'",
            file.display(),
            b.name
        ));
    }
    Ok(b)
}

/// The list bundles the list subscriptions among `subs` keep, each
/// verified again, ready for a policy's `[[list]] from`.
///
/// # Errors
/// One of them cannot be read or is refused ([`read_kept_list`]), or there
/// are more than a policy may draw on.
pub fn kept_lists(subs: &[Subscription]) -> Result<InstalledLists, String> {
    let mut out = InstalledLists::default();
    for s in subs {
        if let (bundle::BundleKind::Lists, Some(name)) = (s.kind, &s.list) {
            out.add(read_kept_list(&s.file, name, &s.keys, now())?)?;
        }
    }
    Ok(out)
}

/// Puts a verified bundle where it is kept and installs it; if the install
/// is refused (a policy that no longer compiles with it), the kept file is
/// what it was, so a restart starts from what was running.
fn put_and_install(file: &Path, bytes: &[u8], install: &Install) -> Result<String, String> {
    let before = std::fs::read(file).ok();
    write_atomic(file, bytes).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    install(file).map_err(|e| {
        let back = match &before {
            Some(b) => write_atomic(file, b),
            None => std::fs::remove_file(file),
        };
        match back {
            Ok(()) => e,
            Err(b) => format!(
                "{e}; and {} cannot be put back ({b}): a restart may start from the refused bundle and stop there",
                file.display()
            ),
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

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// At start, with nothing kept before: one round, with no rules yet to
/// judge the server (the rules it brings judge it next; see
/// [`refuse_blocked_server`]); the bundle is kept. Blocks the calling
/// thread (which must not be in an async runtime) until the round ends;
/// the sequence fetched.
///
/// # Errors
/// The round failed: there is nothing to start with.
pub fn fetch_first(sub: &Subscription, fetcher: &Fetcher) -> Result<u64, String> {
    let got = runtime()?.block_on(sub.check(fetcher, None, &|_, _| Ok(())));
    match got {
        Ok(Some(Got {
            sequence, bytes, ..
        })) => {
            write_atomic(&sub.file, &bytes)
                .map_err(|e| format!("cannot write {}: {e}", sub.file.display()))?;
            Ok(sequence)
        }
        Ok(None) => Err(format!(
            "{}: the index names nothing newer than nothing",
            sub.url
        )),
        Err(e) => Err(format!(
            "{}: nothing was fetched before and the first fetch failed (nothing to start with): {e}",
            lock(&sub.status).what
        )),
    }
}

/// Refuses a subscription whose update server the rules block (an address
/// URL is judged at once; a name, after resolving it). Blocks the calling
/// thread (not in an async runtime). `Ok(Some(warning))`: the name did not
/// resolve (offline at start); the server is judged at each round anyway.
///
/// # Errors
/// The rules block the server: the subscription is refused.
pub fn refuse_blocked_server(
    sub: &Subscription,
    fetcher: &Fetcher,
    policy: &Policy,
    intel: &Intel,
) -> Result<Option<String>, String> {
    let ips: Vec<IpAddr> = match sub.url.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match runtime()?.block_on(fetcher.resolve(&sub.url)) {
            Ok(ips) => ips,
            Err(e) => {
                return Ok(Some(format!(
                    "subscription: {e}; the server is judged when it resolves"
                )));
            }
        },
    };
    for ip in ips {
        Subscription::judge(policy, intel, ip, &sub.url)
            .map_err(|e| format!("refusing the subscription {}: {e}", sub.url))?;
    }
    Ok(None)
}

/// What a round of [`follow`] did, for the caller to log.
#[derive(Debug, Clone, Copy)]
pub enum Round<'a> {
    /// A newer bundle was installed.
    Installed {
        /// Its sequence.
        sequence: u64,
        /// What the install said (the policy, the world data).
        what: &'a str,
    },
    /// The round failed; everything stays as it was.
    Failed(&'a str),
}

/// What a round's outcome is called in the events stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateKind {
    /// A newer bundle was installed.
    Update,
    /// The round failed (unreachable, refused); nothing changed.
    UpdateFailed,
}

/// A round's outcome as a line of the events stream, beside the flows'
/// events (`--events`, the phone library's `on_event`):
/// `{"kind":"update","what":"rules","url":…,"sequence":2,"installed":"policy v2"}`
/// or `{"kind":"update-failed",…,"error":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateEvent {
    /// Installed, or failed.
    pub kind: UpdateKind,
    /// What the subscription brings (`rules`, `world data`, `list bundle
    /// NAME`).
    pub what: String,
    /// The index's URL.
    pub url: String,
    /// The sequence installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// What the install said (the policy now in force).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed: Option<String>,
    /// Why the round failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl UpdateEvent {
    /// The event of `round` of `sub`.
    pub fn of(sub: &Subscription, round: Round<'_>) -> Self {
        let (kind, sequence, installed, error) = match round {
            Round::Installed { sequence, what } => (
                UpdateKind::Update,
                Some(sequence),
                Some(what.to_owned()),
                None,
            ),
            Round::Failed(e) => (UpdateKind::UpdateFailed, None, None, Some(e.to_owned())),
        };
        Self {
            kind,
            what: lock(&sub.status).what.clone(),
            url: sub.url.to_string(),
            sequence,
            installed,
            error,
        }
    }

    /// A line for a person (the events on a terminal).
    pub fn readable(&self) -> String {
        match (&self.installed, &self.error) {
            (Some(i), _) => format!(
                "update: {} sequence {} installed from {} ({i})",
                self.what,
                self.sequence.unwrap_or_default(),
                self.url
            ),
            (None, e) => format!(
                "update failed: {} from {}: {}",
                self.what,
                self.url,
                e.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// A subscription and how what it fetches is installed.
pub struct Follow {
    sub: Subscription,
    install: Install,
    installed: Option<u64>,
    expires: Arc<Mutex<Option<u64>>>,
}

impl Follow {
    /// `sub`, whose bundles `install` installs (a reload for rules and
    /// lists, a world update for world data: open flows judged again),
    /// with sequence `installed` in force now, expiring at what `expires`
    /// holds (kept current by each install; the caller may share it). Its
    /// status says so from here on.
    pub fn new(
        sub: Subscription,
        install: Install,
        installed: Option<u64>,
        expires: Arc<Mutex<Option<u64>>>,
    ) -> Self {
        {
            let mut s = lock(&sub.status);
            s.installed = installed;
            s.expires = *lock(&expires);
            s.installed_at = installed.and_then(|_| {
                let m = std::fs::metadata(&sub.file)
                    .and_then(|m| m.modified())
                    .ok()?;
                Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
            });
        }
        Self {
            sub,
            install,
            installed,
            expires,
        }
    }

    /// The subscription.
    pub fn sub(&self) -> &Subscription {
        &self.sub
    }
}

/// Follows `f` until the task is dropped: rounds at the interval, each
/// judged by the running rules (`policy`, `world`), a newer bundle kept
/// and installed; `report` hears of each install and each failure.
pub async fn follow(
    f: Follow,
    fetcher: Fetcher,
    policy: Arc<PolicyHandle>,
    world: Arc<WorldHandle>,
    report: impl Fn(&Subscription, Round<'_>) + Send + 'static,
) {
    let Follow {
        sub,
        install,
        mut installed,
        expires,
    } = f;
    let mut wait = jitter(sub.every);
    loop {
        tokio::time::sleep(wait).await;
        let p = policy.current();
        let intel = Intel::new(world.current());
        let allowed = |ip: IpAddr, url: &HttpsUrl| Subscription::judge(&p, &intel, ip, url);
        let mut outcome = sub.check(&fetcher, installed, &allowed).await;
        if let Ok(Some(got)) = &outcome {
            match put_and_install(&sub.file, &got.bytes, &install) {
                Ok(what) => {
                    installed = Some(got.sequence);
                    lock(&sub.status).installed_at = Some(now());
                    *lock(&expires) = Some(got.expires);
                    report(
                        &sub,
                        Round::Installed {
                            sequence: got.sequence,
                            what: &what,
                        },
                    );
                }
                Err(e) => {
                    outcome = Err(format!("install refused, the running data stays: {e}"));
                }
            }
        }
        if let Err(e) = &outcome {
            report(&sub, Round::Failed(e));
        }
        let exp = *lock(&expires);
        wait = sub.record(&outcome, installed, exp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_written_and_bad_ones_say_why() {
        for (s, secs) in [("6h", 21_600), ("90m", 5_400), ("1d", 86_400), ("30", 30)] {
            assert_eq!(parse_interval(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for (s, why) in [
            ("0s", "at least 1 s"),
            ("5x", "the unit is"),
            ("soon", "not a duration"),
            ("", "not a duration"),
            ("999999999999999999d", "too long"),
        ] {
            let e = parse_interval(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn a_subscription_names_where_its_bundle_is_kept_and_refuses_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = bundle::SigningKey::from_bytes(&[5; 32]).verifying_key();
        let new = |kind, list, url: &str, keys: Vec<bundle::VerifyingKey>| {
            Subscription::new(
                kind,
                list,
                url,
                DEFAULT_INTERVAL,
                keys,
                dir.path(),
                Vec::new(),
            )
        };
        let s = new(
            bundle::BundleKind::Lists,
            Some("acme"),
            "https://lists.test/pub/",
            vec![key],
        )
        .expect("a list subscription");
        assert_eq!(s.file(), dir.path().join("lists/acme.gwb"));
        assert_eq!(
            s.url().to_string(),
            "https://lists.test/pub/lists-index.json"
        );
        assert_eq!(s.status().what, "list bundle acme");
        assert!(!s.status().stale, "nothing installed is not stale");
        let st = Status {
            expires: Some(1_000),
            ..Status::default()
        };
        assert!(!st.at(999).stale);
        assert!(
            st.at(1_000).stale,
            "expired: in force, and said to be stale"
        );
        let s = new(
            bundle::BundleKind::World,
            None,
            "https://w.test/",
            vec![key],
        )
        .expect("a world subscription");
        assert_eq!(s.file(), dir.path().join(WORLD_FILE));
        assert_eq!(s.url().to_string(), "https://w.test/world-index.json");
        for (kind, list, url, keys, why) in [
            (
                bundle::BundleKind::Rules,
                None,
                "http://x.test/",
                vec![key],
                "https",
            ),
            (
                bundle::BundleKind::Rules,
                None,
                "https://x.test/",
                vec![],
                "no key",
            ),
            (
                bundle::BundleKind::Lists,
                None,
                "https://x.test/",
                vec![key],
                "name",
            ),
            (
                bundle::BundleKind::Lists,
                Some("../up"),
                "https://x.test/",
                vec![key],
                "cannot name a list bundle",
            ),
        ] {
            let e = new(kind, list, url, keys).expect_err(url);
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
