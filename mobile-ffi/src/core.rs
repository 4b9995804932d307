//! What both bindings (C and JNI) call: configuration, the engine on its
//! own thread, checks, bundles, statistics. Plain Rust types only; the
//! bindings convert at their edge.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

use geowall::classify::leak::LeakDetector;
use geowall::driver::fetch::Fetcher;
use geowall::driver::setup::{CaPem, RunConfig, Started};
use geowall::driver::subscribe::{Follow, Round, Subscription, UpdateEvent};
use geowall::driver::{self, Live, Protection, SocketProtector, Tun};
use geowall::engine::dataplane::{AppLookup, AppOwner, Engine, Event};
use geowall::intel::World;
use geowall::intel::catalog::Catalog;
use geowall::intel::jurisdiction::Intel;
use geowall::intel::jurisdiction::WorldHandle;
use geowall::policy::bundle::{self, Installer};
use geowall::policy::lists::InstalledLists;
use geowall::policy::{Action, BlockMode, Facts, Policy, PolicyHandle, Traffic, Transport};
use serde::Deserialize;

/// What went wrong, as a status code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The status (see [`crate::GeowallStatus`]).
    pub code: Code,
    /// What happened, for people.
    pub message: String,
}

/// Error kinds; the C and Java bindings turn them into codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// A required pointer was null.
    NullPointer,
    /// A string was not UTF-8.
    InvalidUtf8,
    /// The configuration (JSON) was refused.
    InvalidConfig,
    /// An argument was out of range.
    InvalidArgument,
    /// No engine or checker has this handle (never was, or freed).
    InvalidHandle,
    /// The engine was stopped.
    Stopped,
    /// A rules bundle was refused as malformed (truncated, corrupt, an
    /// unknown format or version, rules that do not compile); the running
    /// rules stay.
    BundleRejected,
    /// A rules bundle was not newer than the installed one (a rollback);
    /// the running rules stay. Harmless: an update seen twice.
    BundleRollback,
    /// A rules bundle had expired; the running rules stay.
    BundleExpired,
    /// A rules bundle's signature was missing or wrong (forged or damaged);
    /// the running rules stay.
    BundleBadSignature,
    /// A rules bundle was signed by a key the app does not trust; the
    /// running rules stay.
    BundleUnknownKey,
    /// The TUN or a socket failed.
    Io,
    /// A subscription stopped the start: nothing kept and the first fetch
    /// failed, a kept bundle refused, or rules that block its server.
    Subscription,
    /// The call would wait for the thread it was made on.
    WrongThread,
    /// A bug inside geowall (a caught panic).
    Internal,
}

impl Error {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

fn config_error(m: impl Into<String>) -> Error {
    Error::new(Code::InvalidConfig, m)
}

/// The upstreams of a JSON array of strings (`what` names it in errors).
///
/// # Errors
/// Not an array of strings.
pub fn upstream_list(json: &str, what: &str) -> Result<Vec<String>, Error> {
    serde_json::from_str(json).map_err(|e| {
        Error::new(
            Code::InvalidArgument,
            format!("{what}: expected an array of upstreams such as [\"udp:192.0.2.53\"]: {e}"),
        )
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The configuration an app passes as JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A shipped preset: `default`, `clubhouse` or `strict` (the default
    /// is `default`).
    pub preset: Option<String>,
    /// A policy as TOML text, instead of a preset (lists must be inline:
    /// there are no files to read them from).
    pub policy: Option<String>,
    /// Hex Ed25519 public keys trusted to sign rules bundles.
    pub trusted_keys: Vec<String>,
    /// Identifiers to watch for in cleartext, label → value.
    pub identifiers: BTreeMap<String, String>,
    /// Where DNS queries are resolved: `system`, `udp:IP[:PORT]`,
    /// `tcp:IP[:PORT]`, `tls:IP[:PORT]@NAME`, `https:IP[:PORT]@NAME`.
    /// Default `system` (`/etc/resolv.conf`; phones have none: give one).
    pub dns_upstreams: Vec<String>,
    /// Certificate authorities (PEM text) trusted for `tls:` and `https:`
    /// upstreams besides the public ones: a resolver with a private CA.
    pub dns_ca: Vec<String>,
    /// The TUN's MTU (default 1500).
    pub mtu: Option<u16>,
    /// Flows at most (default: the engine's).
    pub max_flows: Option<usize>,
    /// `SO_MARK` for upstream sockets (Linux, needs `CAP_NET_ADMIN`).
    pub fwmark: Option<u32>,
    /// Bind upstream sockets to this interface.
    pub bind_interface: Option<String>,
    /// A world database file instead of the one compiled in.
    pub world: Option<PathBuf>,
    /// Deliver decisions to `on_event` (default true).
    pub events: Option<bool>,
    /// The network's NAT64 prefixes (Android: `LinkProperties
    /// .getNat64Prefix()`), e.g. `64:ff9b::/96`: addresses under them are
    /// judged by the IPv4 address they embed.
    pub nat64_prefixes: Vec<String>,
    /// A directory of the app's own (its private files directory) where
    /// bundles are kept across restarts (subscribed ones, or those the app
    /// installs), and the answers "always" to `ask` rules
    /// (`answers.toml`); needed by `subscriptions`.
    pub state_dir: Option<PathBuf>,
    /// Signed bundles followed over HTTPS: one rules subscription (instead
    /// of `preset`/`policy`) and any number of list bundles a policy's
    /// `[[list]] from` draws on.
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// One subscription of [`Config::subscriptions`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionConfig {
    /// The published directory (`https://…/`, as `geowall rules publish`
    /// writes it) or its index file.
    pub url: String,
    /// A list bundle's name (what a policy's `from` names); absent: the
    /// rules themselves.
    pub list: Option<String>,
    /// World data bundles (`geowall world publish`) instead of rules;
    /// they replace `world` and need their own `keys`.
    pub world: bool,
    /// Hex Ed25519 public keys its bundles must be signed with; a rules
    /// subscription takes `trusted_keys` when this is empty.
    pub keys: Vec<String>,
    /// How often it is checked: `6h` (the default), `90m`, `30s`, `1d`.
    pub every: Option<String>,
    /// Certificate authorities (PEM text) trusted for its server besides
    /// the public ones.
    pub ca: Vec<String>,
}

impl Config {
    /// Parses the JSON text.
    ///
    /// # Errors
    /// Not JSON, or an unknown or ill-typed field (the message says which).
    pub fn parse(json: &str) -> Result<Self, Error> {
        serde_json::from_str(json).map_err(|e| config_error(format!("configuration: {e}")))
    }
}

/// The rules side shared by a running engine and an engine-free checker:
/// policy (replaced by bundle updates), world and catalog, bundle state,
/// subscriptions.
pub struct Rules {
    policy: Arc<PolicyHandle>,
    /// The world data (replaced by a world subscription's updates).
    world: Arc<WorldHandle>,
    /// The sequence and expiry of the world data a world subscription
    /// kept, as loaded.
    world_kept: Option<(u64, u64)>,
    installer: Mutex<Installer>,
    sequence: AtomicU64,
    /// The policy without a bundle (a preset or policy text), compiled
    /// again when the list bundles change.
    base: Base,
    /// What the configuration subscribes to.
    subscriptions: Vec<Subscription>,
    /// Where bundles installed by the app are kept (in `state_dir`, without
    /// a rules subscription): the last accepted one and its sequence, so a
    /// restart runs it again and an older one stays a rollback.
    store: Option<bundle::TrustStore>,
    /// Said once the engine runs (the kept bundle could not be used again).
    pub note: Option<String>,
}

/// Where the policy comes from before any bundle is installed.
enum Base {
    /// A shipped preset.
    Preset(String),
    /// Policy text.
    Text(String),
}

impl Base {
    fn compile(&self, catalog: &Catalog, lists: &InstalledLists) -> Result<Policy, Error> {
        match self {
            Self::Preset(p) => {
                Policy::preset(p, catalog).map_err(|e| config_error(format!("preset: {e}")))
            }
            Self::Text(text) => {
                let mut no_files = |f: &str| -> Result<String, String> {
                    Err(format!(
                        "'{f}': there are no list files here; give the list inline or from a list bundle (from = \"NAME\")"
                    ))
                };
                Policy::parse_with(
                    std::path::Path::new("policy"),
                    text,
                    &mut no_files,
                    lists,
                    catalog,
                )
                .map_err(|e| config_error(format!("policy: {e}")))
            }
        }
    }
}

/// The bundle the app installed before a restart, installed again from
/// `store`: `Ok(Ok((policy, sequence)))`; `Ok(Err(note))` when there is
/// none (no note) or it cannot be used again (expired, its key no longer
/// trusted: the note says so), the recorded sequence then still refusing
/// older bundles.
///
/// # Errors
/// A damaged record of the sequence.
fn kept_install(
    store: Option<&bundle::TrustStore>,
    installer: &mut Installer,
) -> Result<Result<(Policy, u64), Option<String>>, Error> {
    let Some(store) = store else {
        return Ok(Err(None));
    };
    let recorded = store
        .installed_sequence()
        .map_err(|e| config_error(format!("state_dir: {e}")))?;
    let Some(bytes) = store.last_good() else {
        if let Some(seq) = recorded {
            installer.refuse_up_to(seq);
        }
        return Ok(Err(None));
    };
    match installer.install(&bytes, now_unix()) {
        Ok(b) => Ok(Ok((b.policy.clone(), b.sequence))),
        Err(e) => {
            if let Some(seq) = recorded {
                installer.refuse_up_to(seq);
            }
            Ok(Err(Some(format!(
                "the rules bundle kept in state_dir (sequence {}) cannot be used again ({e}): the configured rules run until a newer bundle is installed",
                recorded.map_or_else(|| "unknown".to_owned(), |s| s.to_string())
            ))))
        }
    }
}

fn parse_key(hex: &str) -> Result<bundle::VerifyingKey, Error> {
    bundle::parse_verifying_key(hex)
        .map_err(|e| config_error(format!("trusted_keys: '{hex}': {e}")))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The bundle a subscription keeps (`what` names it in the error).
fn read_kept(sub: &Subscription, what: &str) -> Result<Vec<u8>, Error> {
    let f = sub.file();
    std::fs::read(f).map_err(|e| {
        Error::new(
            Code::Subscription,
            format!("{what} subscription: cannot read {}: {e}", f.display()),
        )
    })
}

/// The world data a world subscription keeps, verified again (its
/// expiry aside: data once accepted stays in force until newer data
/// comes, as `geowall run` does), with its sequence and expiry.
fn kept_world(sub: &Subscription) -> Result<(Arc<World>, u64, u64), Error> {
    let bytes = read_kept(sub, "world")?;
    // 0: no expiry check (the bundle was current when it was accepted).
    bundle::open_world(&bytes, sub.keys(), None, 0)
        .map(|w| (Arc::new(w.world), w.sequence, w.expires))
        .map_err(|e| {
            Error::new(
                Code::Subscription,
                format!(
                    "world subscription: the kept bundle {} is refused ({e})",
                    sub.file().display()
                ),
            )
        })
}

/// The subscriptions `cfg` describes, checked (no network).
fn subscriptions(cfg: &Config) -> Result<Vec<Subscription>, Error> {
    if cfg.subscriptions.is_empty() {
        return Ok(Vec::new());
    }
    let state = cfg.state_dir.as_deref().ok_or_else(|| {
        config_error("subscriptions keep their bundles in a directory: give state_dir")
    })?;
    let mut out = Vec::with_capacity(cfg.subscriptions.len());
    for (i, s) in cfg.subscriptions.iter().enumerate() {
        let at = format!("subscriptions[{i}]");
        if s.list.is_some() && s.world {
            return Err(config_error(format!(
                "{at}: a subscription brings a list bundle or world data, not both"
            )));
        }
        let keys: Vec<String> = match (&s.list, s.world, s.keys.is_empty()) {
            (None, false, true) => cfg.trusted_keys.clone(),
            _ => s.keys.clone(),
        };
        let keys = keys
            .iter()
            .map(|k| {
                bundle::parse_verifying_key(k)
                    .map_err(|e| config_error(format!("{at}: keys: '{k}': {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let every = match &s.every {
            None => driver::subscribe::DEFAULT_INTERVAL,
            Some(e) => driver::subscribe::parse_interval(e)
                .map_err(|m| config_error(format!("{at}: every: {m}")))?,
        };
        let mut ca = Vec::new();
        for (j, pem) in s.ca.iter().enumerate() {
            ca.extend(
                driver::dns::parse_ca(pem.as_bytes(), &format!("{at}: ca[{j}]"))
                    .map_err(config_error)?,
            );
        }
        let kind = match (&s.list, s.world) {
            (Some(_), _) => bundle::BundleKind::Lists,
            (None, true) => bundle::BundleKind::World,
            (None, false) => bundle::BundleKind::Rules,
        };
        let sub = Subscription::new(kind, s.list.as_deref(), &s.url, every, keys, state, ca)
            .map_err(|m| config_error(format!("{at}: {m}")))?;
        if out.iter().any(|o: &Subscription| o.file() == sub.file()) {
            return Err(config_error(format!(
                "{at}: {} is subscribed to twice",
                sub.status().what
            )));
        }
        out.push(sub);
    }
    if out.len() > 2 + geowall::policy::lists::MAX_LIST_BUNDLES {
        return Err(config_error(format!(
            "at most one rules, one world and {} list subscriptions",
            geowall::policy::lists::MAX_LIST_BUNDLES
        )));
    }
    Ok(out)
}

impl Rules {
    /// Loads what `cfg` names: policy (preset, text, or the kept bundle
    /// of a rules subscription), the kept list bundles of its list
    /// subscriptions, catalog, world. Nothing is fetched: a subscription
    /// whose bundle is not kept yet is an error here (a started engine
    /// fetches it first).
    ///
    /// # Errors
    /// An unknown preset, a policy that does not compile, a bad key, a
    /// world file that cannot be read, a bad subscription, a kept bundle
    /// missing or refused ([`Code::Subscription`]).
    pub fn load(cfg: &Config) -> Result<Self, Error> {
        Self::load_with(cfg, subscriptions(cfg)?)
    }

    fn load_with(cfg: &Config, subscriptions: Vec<Subscription>) -> Result<Self, Error> {
        let catalog = Catalog::shipped().map_err(|e| config_error(format!("catalog: {e}")))?;
        let rules_sub = subscriptions
            .iter()
            .find(|s| s.kind() == bundle::BundleKind::Rules);
        let base = match (&cfg.preset, &cfg.policy) {
            (Some(_), Some(_)) => {
                return Err(config_error("give either preset or policy, not both"));
            }
            (Some(_), None) | (None, Some(_)) if rules_sub.is_some() => {
                return Err(config_error(
                    "a rules subscription brings the policy: give no preset or policy with it",
                ));
            }
            (_, Some(text)) => Base::Text(text.clone()),
            (p, None) => Base::Preset(p.clone().unwrap_or_else(|| "default".into())),
        };
        let lists = driver::subscribe::kept_lists(&subscriptions)
            .map_err(|e| Error::new(Code::Subscription, e))?;
        let keys = cfg
            .trusted_keys
            .iter()
            .map(|k| parse_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut installer = Installer::with_lists(keys, lists);
        let store = match (&cfg.state_dir, rules_sub) {
            (Some(dir), None) => Some(
                bundle::TrustStore::open_dir(dir)
                    .map_err(|e| config_error(format!("state_dir: {e}")))?,
            ),
            _ => None,
        };
        let mut note = None;
        let (policy, sequence) = match rules_sub {
            Some(sub) => {
                let f = sub.file();
                let bytes = read_kept(sub, "rules")?;
                let b = installer.install(&bytes, now_unix()).map_err(|e| {
                    Error::new(
                        Code::Subscription,
                        format!(
                            "rules subscription: the kept bundle {} is refused ({e}); nothing started",
                            f.display()
                        ),
                    )
                })?;
                (b.policy.clone(), b.sequence)
            }
            None => match kept_install(store.as_ref(), &mut installer)? {
                Ok(b) => b,
                Err(why) => {
                    note = why;
                    (base.compile(&catalog, installer.lists())?, 0)
                }
            },
        };
        let (world, world_kept) = match subscriptions
            .iter()
            .find(|s| s.kind() == bundle::BundleKind::World)
        {
            Some(sub) => {
                let (w, seq, expires) = kept_world(sub)?;
                (w, Some((seq, expires)))
            }
            None => (load_world(cfg.world.as_ref())?, None),
        };
        Ok(Self {
            policy: Arc::new(PolicyHandle::new(policy)),
            world: Arc::new(WorldHandle::new(world)),
            world_kept,
            installer: Mutex::new(installer),
            sequence: AtomicU64::new(sequence),
            base,
            subscriptions,
            store,
            note,
        })
    }

    /// Verifies and installs a signed bundle; its policy replaces the
    /// running one at once. A refused bundle changes nothing.
    ///
    /// # Errors
    /// [`Code::BundleRollback`], [`Code::BundleExpired`],
    /// [`Code::BundleBadSignature`], [`Code::BundleUnknownKey`] or (a
    /// malformed bundle) [`Code::BundleRejected`], with the reason.
    pub fn install(&self, bytes: &[u8]) -> Result<u64, Error> {
        let mut inst = lock(&self.installer);
        let b = inst.install(bytes, now_unix()).map_err(|e| {
            let code = match e {
                bundle::BundleError::Rollback { .. } => Code::BundleRollback,
                bundle::BundleError::Expired { .. } => Code::BundleExpired,
                bundle::BundleError::BadSignature | bundle::BundleError::MissingSignature => {
                    Code::BundleBadSignature
                }
                bundle::BundleError::UnknownKey(_) => Code::BundleUnknownKey,
                _ => Code::BundleRejected,
            };
            Error::new(code, format!("bundle rejected: {e}"))
        })?;
        let (policy, seq) = (b.policy.clone(), b.sequence);
        self.policy.replace(policy);
        self.sequence.store(seq, Ordering::Release);
        if let Some(store) = &self.store {
            store.record(bytes, seq).map_err(|e| {
                Error::new(
                    Code::Io,
                    format!("bundle {seq} is in force, but it could not be kept in state_dir: {e}"),
                )
            })?;
        }
        Ok(seq)
    }

    /// Reads the kept list bundles again and compiles the policy again
    /// with them (the installed bundle's, or the preset or text); the
    /// running policy is replaced. On error nothing changes.
    fn relist(&self) -> Result<String, String> {
        let lists = driver::subscribe::kept_lists(&self.subscriptions)?;
        let mut inst = lock(&self.installer);
        let policy = if inst.installed().is_some() {
            inst.relist(lists, now_unix())
                .map_err(|e| format!("the rules bundle with the new lists: {e}"))?
                .map(|b| b.policy.clone())
                .ok_or("the installed bundle went away")?
        } else {
            let catalog = Catalog::shipped().map_err(|e| format!("catalog: {e}"))?;
            let p = self.base.compile(&catalog, &lists).map_err(|e| e.message)?;
            inst.relist(lists, now_unix()).map_err(|e| e.to_string())?;
            p
        };
        let name = format!("policy {} compiled again", policy.name);
        self.policy.replace(policy);
        Ok(name)
    }

    /// The installed bundle's sequence number (0: none).
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::Acquire)
    }

    /// What the running world data says.
    fn intel(&self) -> Intel {
        Intel::new(self.world.current())
    }

    /// How a world subscription's bundles are installed: verified again
    /// and swapped in (the engine takes them at its next packet or timer
    /// and judges the open flows again); the sequence and expiry of the
    /// data loaded at start.
    fn world_install(
        &self,
        sub: &Subscription,
    ) -> (driver::subscribe::Install, Option<u64>, Option<u64>) {
        let (keys, world) = (sub.keys().to_vec(), Arc::clone(&self.world));
        let install = Arc::new(move |path: &std::path::Path| {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let w =
                bundle::open_world(&bytes, &keys, None, now_unix()).map_err(|e| e.to_string())?;
            let built = format!("world data built {}", w.world.meta().built_at);
            world.replace(w.world);
            Ok(built)
        });
        (
            install,
            self.world_kept.map(|k| k.0),
            self.world_kept.map(|k| k.1),
        )
    }

    /// The state of each subscription (what is installed, the last
    /// check, the last error), in the configuration's order.
    pub fn subscriptions(&self) -> Vec<driver::subscribe::Status> {
        self.subscriptions
            .iter()
            .map(Subscription::status)
            .collect()
    }

    /// What the subscriptions follow once the engine runs: each with how
    /// what it fetches is installed here and a fetcher resolving with
    /// `resolver`; each update server judged by the rules first.
    fn follows(
        self: &Arc<Self>,
        resolver: &driver::dns::Resolver,
        protection: &Protection,
        host: &Arc<dyn Host>,
    ) -> Result<Vec<(Follow, Fetcher)>, Error> {
        let policy = self.policy.current();
        let mut out = Vec::with_capacity(self.subscriptions.len());
        for sub in &self.subscriptions {
            let fetcher = sub
                .fetcher(resolver.clone(), protection.clone())
                .map_err(config_error)?;
            if let Some(w) =
                driver::subscribe::refuse_blocked_server(sub, &fetcher, &policy, &self.intel())
                    .map_err(|e| Error::new(Code::Subscription, e))?
            {
                host.on_log(Level::Warn, &w);
            }
            let rules = Arc::clone(self);
            let inst = lock(&self.installer);
            let (install, installed, expires): (driver::subscribe::Install, _, _) =
                match (sub.kind(), sub.list()) {
                    (bundle::BundleKind::World, _) => self.world_install(sub),
                    (_, None) => {
                        let b = inst.installed();
                        (
                            Arc::new(move |path: &std::path::Path| {
                                let bytes = std::fs::read(path)
                                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                                rules
                                    .install(&bytes)
                                    .map(|_| format!("policy {}", rules.policy_name()))
                                    .map_err(|e| e.message)
                            }),
                            b.map(|b| b.sequence),
                            b.map(|b| b.expires),
                        )
                    }
                    (_, Some(name)) => {
                        let b = inst.lists().bundles().iter().find(|b| b.name == name);
                        (
                            Arc::new(move |_: &std::path::Path| rules.relist()),
                            b.map(|b| b.sequence),
                            b.map(|b| b.expires),
                        )
                    }
                };
            drop(inst);
            out.push((
                Follow::new(
                    sub.clone(),
                    install,
                    installed,
                    Arc::new(Mutex::new(expires)),
                ),
                fetcher,
            ));
        }
        Ok(out)
    }

    /// The running policy's name.
    pub fn policy_name(&self) -> String {
        self.policy.current().name.clone()
    }

    /// The verdict for a destination given by name or address.
    pub fn check(&self, q: &Query<'_>) -> Result<Checked, Error> {
        let host = q.host.trim().trim_end_matches('.');
        if host.is_empty() {
            return Err(Error::new(Code::InvalidArgument, "host is empty"));
        }
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let lower = host.to_ascii_lowercase();
        let name = [lower.as_str()];
        let facts = Facts {
            dst: ip,
            port: (q.port != 0).then_some(q.port),
            transport: q.transport,
            names: if ip.is_some() { &[] } else { &name },
            traffic: q.traffic,
            protocol: None,
            encrypted: None,
            leak: false,
            app: q.app,
            uid: None,
            peers: &[],
            as_peer: false,
        };
        let policy = self.policy.current();
        let v = policy.evaluate(&self.intel(), &facts);
        Ok(Checked {
            action: v.action,
            rule: v.rule.map(|(i, r)| (i, r.name.clone())),
            layer: v.layer.map(|l| l.to_string()),
            json: v.to_json().to_string(),
        })
    }
}

fn load_world(path: Option<&PathBuf>) -> Result<Arc<World>, Error> {
    match path {
        Some(p) => World::open(p)
            .map(Arc::new)
            .map_err(|e| config_error(format!("world {}: {e}", p.display()))),
        None => {
            geowall::intel::world::embedded_lean().map_err(|e| config_error(format!("world: {e}")))
        }
    }
}

/// A question for [`Rules::check`].
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// A host name or an IP address.
    pub host: &'a str,
    /// Destination port (0: any).
    pub port: u16,
    /// Transport, if known.
    pub transport: Option<Transport>,
    /// Traffic class, if known.
    pub traffic: Option<Traffic>,
    /// The asking app's identity.
    pub app: Option<&'a str>,
}

/// The answer of [`Rules::check`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// Allow or block (and how).
    pub action: Action,
    /// The deciding rule's index and name; `None`: the default.
    pub rule: Option<(usize, String)>,
    /// The jurisdiction layer that matched, `layer:COUNTRY`.
    pub layer: Option<String>,
    /// All of it as JSON.
    pub json: String,
}

impl Checked {
    /// 0 allow, 1 block silently (drop), 2 block with an answer (reject).
    pub fn action_code(&self) -> i32 {
        match self.action {
            Action::Block(BlockMode::Drop) => 1,
            Action::Block(BlockMode::Reject) => 2,
            _ => 0,
        }
    }
}

/// Transport from an IP protocol number (0: unknown).
///
/// # Errors
/// Another number.
pub fn transport(proto: i32) -> Result<Option<Transport>, Error> {
    match proto {
        0 => Ok(None),
        6 => Ok(Some(Transport::Tcp)),
        17 => Ok(Some(Transport::Udp)),
        1 | 58 => Ok(Some(Transport::Icmp)),
        _ => Err(Error::new(
            Code::InvalidArgument,
            format!("transport {proto}: expected 0, 6 (TCP), 17 (UDP), 1 or 58 (ICMP)"),
        )),
    }
}

/// Traffic class from its code (0: unknown).
///
/// # Errors
/// Another number.
pub fn traffic(code: i32) -> Result<Option<Traffic>, Error> {
    match code {
        0 => Ok(None),
        1 => Ok(Some(Traffic::Dns)),
        2 => Ok(Some(Traffic::Web)),
        3 => Ok(Some(Traffic::Media)),
        4 => Ok(Some(Traffic::Ping)),
        5 => Ok(Some(Traffic::Other)),
        _ => Err(Error::new(
            Code::InvalidArgument,
            format!("traffic {code}: expected 0..=5 (unknown, dns, web, media, ping, other)"),
        )),
    }
}

/// Compiles identifiers to watch for (empty: watch for none).
///
/// # Errors
/// An identifier the detector refuses (too short, empty label).
pub fn identifiers(ids: &BTreeMap<String, String>) -> Result<Option<LeakDetector>, Error> {
    if ids.is_empty() {
        return Ok(None);
    }
    let pairs: Vec<(String, String)> = ids.iter().map(|(l, v)| (l.clone(), v.clone())).collect();
    LeakDetector::new(&pairs)
        .map(Some)
        .map_err(|e| Error::new(Code::InvalidArgument, format!("identifiers: {e}")))
}

/// Log levels given to `on_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something is off.
    Warn = 2,
    /// Start, stop, updates.
    Info = 3,
}

/// What the platform does for the engine: the bindings implement it over
/// C function pointers or Java methods. Called on the engine's thread.
pub trait Host: Send + Sync {
    /// Keeps `fd` out of the tunnel; `false` refuses the socket.
    fn protect(&self, fd: RawFd) -> bool;
    /// Whether [`Host::app_for_flow`] is implemented.
    fn has_app_lookup(&self) -> bool;
    /// The app that owns a flow (proto is 6 or 17), if known.
    fn app_for_flow(&self, proto: i32, src: SocketAddr, dst: SocketAddr) -> Option<String>;
    /// Whether [`Host::protect`] is implemented.
    fn has_protect(&self) -> bool;
    /// A decision, as JSON.
    fn on_event(&self, json: &str);
    /// A message for the app's log.
    fn on_log(&self, level: Level, msg: &str);
}

struct Protect(Arc<dyn Host>);

impl SocketProtector for Protect {
    fn protect(&self, fd: RawFd) -> bool {
        self.0.protect(fd)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
struct Ending {
    /// The engine's thread has returned.
    ended: bool,
    /// Why, if not by `stop`.
    error: Option<String>,
}

/// A running (or stopped) engine.
pub struct Running {
    /// Its rules (checks and bundle updates go here).
    pub rules: Arc<Rules>,
    leak: Arc<arc_swap::ArcSwapOption<LeakDetector>>,
    live: Arc<Mutex<Live>>,
    ending: Arc<Mutex<Ending>>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
    host: Arc<dyn Host>,
    started: Instant,
    asker: driver::ask::Asker,
    /// The engine's resolver, replaced in place by new upstreams.
    resolver: driver::dns::SharedResolver,
    /// What new upstreams' resolvers are built from: the start's settings
    /// (CAs) and socket protection.
    run: RunConfig,
    protection: Protection,
    /// The subscriptions' fetchers (sharing their resolver with the
    /// followers' copies): they resolve through new upstreams too.
    fetchers: Vec<Fetcher>,
}

/// The answers file's name in `state_dir`.
pub const ANSWERS_FILE: &str = "answers.toml";

/// Statistics of an engine.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Still running.
    pub running: bool,
    /// What the engine's loop last published.
    pub live: Live,
    /// Sequence of the installed bundle (0: none).
    pub bundle_sequence: u64,
    /// Milliseconds since start.
    pub uptime_ms: u64,
}

impl Running {
    /// Starts the engine on a duplicate of `tun_fd` (the caller keeps its
    /// own descriptor) on a thread of its own, and waits until it reads.
    ///
    /// # Errors
    /// A bad configuration, an upstream resolver under a blocked
    /// jurisdiction, a descriptor that is not a usable TUN.
    pub fn start(tun_fd: RawFd, cfg: &Config, host: Arc<dyn Host>) -> Result<Self, Error> {
        if tun_fd < 0 {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("TUN descriptor {tun_fd} is negative"),
            ));
        }
        // A bad descriptor fails before anything is loaded.
        let fd = dup(tun_fd)?;
        let subscriptions = subscriptions(cfg)?;
        let leak = identifiers(&cfg.identifiers).map_err(|e| config_error(e.message))?;
        let protection = Protection {
            fwmark: cfg.fwmark,
            bind_device: cfg.bind_interface.clone(),
            protector: host
                .has_protect()
                .then(|| Arc::new(Protect(host.clone())) as Arc<dyn SocketProtector>),
        };
        let mut run = RunConfig::default();
        // Phones' TUNs default to the Ethernet MTU.
        run.mtu = cfg.mtu.unwrap_or(1500);
        if let Some(m) = cfg.max_flows {
            run.max_flows = m;
        }
        if !cfg.dns_upstreams.is_empty() {
            run.dns_upstreams.clone_from(&cfg.dns_upstreams);
        }
        run.dns_ca = cfg
            .dns_ca
            .iter()
            .enumerate()
            .map(|(i, pem)| CaPem {
                name: format!("dns_ca[{i}]"),
                pem: pem.clone(),
            })
            .collect();
        run.nat64_prefixes = cfg
            .nat64_prefixes
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e| config_error(format!("nat64_prefixes: '{p}': {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Subscriptions: what is not kept yet is fetched first (nothing to
        // start with otherwise); then the rules judge each update server.
        let sub_resolver = if subscriptions.is_empty() {
            None
        } else {
            let (r, _) = driver::setup::resolver(&run, &protection)
                .map_err(|e| config_error(e.to_string()))?;
            for sub in subscriptions.iter().filter(|s| !s.file().exists()) {
                let f = sub
                    .fetcher(r.clone(), protection.clone())
                    .map_err(config_error)?;
                let seq = driver::subscribe::fetch_first(sub, &f)
                    .map_err(|e| Error::new(Code::Subscription, e))?;
                host.on_log(
                    Level::Info,
                    &format!("subscription {}: fetched sequence {seq}", sub.url()),
                );
            }
            Some(r)
        };
        let rules = Arc::new(Rules::load_with(cfg, subscriptions)?);
        let follows = match &sub_resolver {
            Some(r) => rules.follows(r, &protection, &host)?,
            None => Vec::new(),
        };
        let world = Arc::clone(&rules.world);
        let Started {
            mut engine,
            resolver,
            ..
        } = driver::setup::start(rules.policy.clone(), rules.intel(), leak, &run, &protection)
            .map_err(|e| config_error(e.to_string()))?;
        // World updates (a world subscription) reach the engine.
        engine.follow_world(Arc::clone(&rules.world));
        // Answers "always" to ask rules, kept in the state directory.
        let answers_file = cfg
            .state_dir
            .as_ref()
            .map(|d| driver::ask::AnswersFile::new(d.join(ANSWERS_FILE)));
        if let Some(f) = &answers_file {
            engine.keep_answers(
                f.load()
                    .map_err(|e| config_error(format!("state_dir: {e}")))?,
            );
        }
        let (asker, answers) = driver::ask::channel(answers_file);
        let resolver = driver::dns::shared(resolver);
        let mtu = run.mtu;
        if host.has_app_lookup() {
            let h = host.clone();
            let lookup: AppLookup = Box::new(move |t, src, dst| {
                let proto = match t {
                    Transport::Tcp => 6,
                    Transport::Udp => 17,
                    Transport::Icmp => 1,
                };
                AppOwner {
                    app: h.app_for_flow(proto, src, dst),
                    uid: None,
                }
            });
            engine.set_app_lookup(lookup);
        }
        let leak = engine.identifiers();
        let live = Arc::new(Mutex::new(Live::default()));
        let ending = Arc::new(Mutex::new(Ending::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let events = cfg.events.unwrap_or(true);
        let policy_name = rules.policy_name();
        let fetchers = follows.iter().map(|(_, f)| f.clone()).collect();
        let following = Following {
            follows,
            policy: Arc::clone(&rules.policy),
            world,
            answers,
        };
        let protection_kept = protection.clone();
        let resolver_kept = Arc::clone(&resolver);
        let t = {
            let (live, ending, host) = (live.clone(), ending.clone(), host.clone());
            std::thread::Builder::new()
                .name("geowall-engine".into())
                .spawn(move || {
                    let h = host.clone();
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        engine_thread(
                            engine, fd, mtu, protection, resolver, live, host, events, stop_rx,
                            ready_tx, following,
                        )
                    }));
                    let error = match run {
                        Ok(Ok(summary)) => {
                            h.on_log(Level::Info, &format!("stopped: {summary}"));
                            None
                        }
                        Ok(Err(e)) => Some(e),
                        Err(_) => Some("the engine's thread panicked (a bug in geowall)".into()),
                    };
                    if let Some(e) = &error {
                        h.on_log(Level::Error, e);
                    }
                    let mut g = lock(&ending);
                    g.ended = true;
                    g.error = error;
                })
                .map_err(|e| Error::new(Code::Io, format!("cannot start a thread: {e}")))?
        };
        let thread_id = t.thread().id();
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = t.join();
                return Err(Error::new(Code::Io, e));
            }
            Err(_) => {
                let _ = t.join();
                let e = lock(&ending).error.clone();
                return Err(Error::new(
                    Code::Internal,
                    e.unwrap_or_else(|| "the engine's thread ended before starting".into()),
                ));
            }
        }
        host.on_log(
            Level::Info,
            &format!("started on TUN fd {tun_fd} (policy {policy_name}, mtu {mtu})"),
        );
        if let Some(n) = &rules.note {
            host.on_log(Level::Warn, n);
        }
        Ok(Self {
            rules,
            leak,
            live,
            ending,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(t)),
            thread_id,
            host,
            started: Instant::now(),
            asker,
            resolver: resolver_kept,
            run,
            protection: protection_kept,
            fetchers,
        })
    }

    fn usable(&self) -> Result<(), Error> {
        if lock(&self.stop).is_none() {
            return Err(Error::new(Code::Stopped, "the engine was stopped"));
        }
        Ok(())
    }

    /// Stops the engine and waits for its thread; no callback is called
    /// after this returns.
    ///
    /// # Errors
    /// Already stopped; called from a callback (the engine's own thread);
    /// the engine had ended by itself with an error (returned here).
    pub fn stop(&self) -> Result<(), Error> {
        if std::thread::current().id() == self.thread_id {
            return Err(Error::new(
                Code::WrongThread,
                "stop was called from a callback on the engine's own thread; call it from another thread",
            ));
        }
        let Some(tx) = lock(&self.stop).take() else {
            return Err(Error::new(Code::Stopped, "the engine was already stopped"));
        };
        let _ = tx.send(());
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        match lock(&self.ending).error.clone() {
            Some(e) => Err(Error::new(Code::Io, format!("the engine had ended: {e}"))),
            None => Ok(()),
        }
    }

    /// Verifies and installs a signed bundle.
    ///
    /// # Errors
    /// Stopped, or the bundle was refused (the running rules stay).
    pub fn install(&self, bytes: &[u8]) -> Result<u64, Error> {
        self.usable()?;
        match self.rules.install(bytes) {
            Ok(seq) => {
                self.host.on_log(
                    Level::Info,
                    &format!(
                        "rules bundle {seq} installed (policy {})",
                        self.rules.policy_name()
                    ),
                );
                Ok(seq)
            }
            Err(e) => {
                self.host.on_log(Level::Warn, &e.message);
                Err(e)
            }
        }
    }

    /// Answers question `prompt` (an `asked` event's `prompt`): its held
    /// flows go on (`allow`) or are blocked, for the `scope` given (0 once,
    /// 1 the app while the engine runs, 2 always: kept in `state_dir`).
    /// Waits until the engine took it.
    ///
    /// # Errors
    /// Stopped; called from a callback (the engine's own thread, which
    /// would wait for itself); a scope out of range; no such question
    /// waiting; "always" without `state_dir`; the answers file could not be
    /// written (the answer is in force all the same).
    pub fn answer(&self, prompt: u64, allow: bool, scope: u32) -> Result<(), Error> {
        use driver::ask::AskError;
        use geowall::engine::dataplane::{Answer, Scope};
        self.usable()?;
        if std::thread::current().id() == self.thread_id {
            return Err(Error::new(
                Code::WrongThread,
                "answer was called from a callback on the engine's own thread; answer from another thread (the app's prompt)",
            ));
        }
        let scope = match scope {
            0 => Scope::Once,
            1 => Scope::App,
            2 => Scope::Always,
            n => {
                return Err(Error::new(
                    Code::InvalidArgument,
                    format!("scope {n}: 0 (once), 1 (app) or 2 (always)"),
                ));
            }
        };
        self.asker
            .answer_blocking(prompt, Answer { allow, scope })
            .map_err(|e| {
                let code = match e {
                    AskError::NoPrompt(_) | AskError::NoFile => Code::InvalidArgument,
                    AskError::Stopped => Code::Stopped,
                    AskError::Keep(_) | AskError::NotTaken => Code::Io,
                };
                Error::new(code, e.to_string())
            })
    }

    /// Resolves the apps' DNS through `upstreams` from the next query on
    /// (as `dns_upstreams` at start: `udp:IP[:PORT]`, `tls:IP@NAME`, ...):
    /// for the servers of a network the device just joined. Each is
    /// checked against the running rules as at start. The subscriptions'
    /// fetches resolve through them too.
    ///
    /// # Errors
    /// Stopped; no upstream, or one that does not parse or whose resolver
    /// cannot be built; an upstream under a jurisdiction the rules block.
    /// The upstreams in use stay.
    pub fn set_dns_upstreams(&self, upstreams: &[String]) -> Result<(), Error> {
        self.usable()?;
        if upstreams.is_empty() {
            return Err(Error::new(
                Code::InvalidArgument,
                "dns_upstreams: empty; give at least one (udp:IP, tls:IP@NAME, ...)",
            ));
        }
        let mut run = self.run.clone();
        run.dns_upstreams = upstreams.to_vec();
        let resolver = driver::setup::judged_resolver(
            &run,
            &self.protection,
            &self.rules.policy.current(),
            &self.rules.intel(),
        )
        .map_err(|e| Error::new(Code::InvalidArgument, e.to_string()))?;
        for f in &self.fetchers {
            f.set_resolver(resolver.clone());
        }
        self.resolver.store(Arc::new(resolver));
        self.host.on_log(
            Level::Info,
            &format!("DNS upstreams now {}", upstreams.join(", ")),
        );
        Ok(())
    }

    /// Replaces the identifiers watched for leaks.
    ///
    /// # Errors
    /// Stopped, or an identifier was refused (the old set stays).
    pub fn set_identifiers(&self, ids: &BTreeMap<String, String>) -> Result<(), Error> {
        self.usable()?;
        let d = identifiers(ids)?;
        self.leak.store(d.map(Arc::new));
        self.host.on_log(
            Level::Info,
            &format!("watching {} identifiers for leaks", ids.len()),
        );
        Ok(())
    }

    /// A check against the running rules.
    ///
    /// # Errors
    /// Stopped, or a bad query.
    pub fn check(&self, q: &Query<'_>) -> Result<Checked, Error> {
        self.usable()?;
        self.rules.check(q)
    }

    /// The numbers (the last ones, after a stop).
    pub fn stats(&self) -> Stats {
        Stats {
            running: !lock(&self.ending).ended,
            live: lock(&self.live).clone(),
            bundle_sequence: self.rules.sequence(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::current().id() != self.thread_id
            && let Some(tx) = lock(&self.stop).take()
        {
            let _ = tx.send(());
            if let Some(t) = lock(&self.thread).take() {
                let _ = t.join();
            }
        }
    }
}

fn dup(fd: RawFd) -> Result<OwnedFd, Error> {
    // SAFETY: `fd` is non-negative (checked by the caller) and the caller
    // of the binding promises it is an open descriptor for this call; it
    // is only borrowed for the duration of `dup`.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::unistd::dup(borrowed).map_err(|e| {
        Error::new(
            Code::InvalidArgument,
            format!("TUN descriptor {fd} is not open ({e})"),
        )
    })
}

/// What the engine's thread follows besides the TUN: the subscriptions,
/// the rules they install into and the world they are judged with.
struct Following {
    follows: Vec<(Follow, Fetcher)>,
    policy: Arc<PolicyHandle>,
    world: Arc<WorldHandle>,
    /// Users' answers to `ask` rules, for the engine's loop.
    answers: tokio::sync::mpsc::Receiver<driver::ask::AnswerRequest>,
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site, the thread's body"
)]
fn engine_thread(
    engine: Engine,
    fd: OwnedFd,
    mtu: u16,
    protection: Protection,
    resolver: driver::dns::SharedResolver,
    live: Arc<Mutex<Live>>,
    host: Arc<dyn Host>,
    events: bool,
    stop: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    following: Following,
) -> Result<driver::Summary, String> {
    let rt = match driver::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let e = format!("cannot start the async runtime: {e}");
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    rt.block_on(async move {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open descriptor this thread owns (it came
        // from an `OwnedFd`, whose ownership `into_raw_fd` gave up), and it
        // is the platform's TUN: Android's `VpnService` and the test host
        // open it with `IFF_NO_PI` and without `IFF_VNET_HDR`, as
        // `from_fd` requires. `from_fd` takes ownership at once, also on
        // error, so nothing else closes it.
        let tun = match unsafe { tun_rs::AsyncDevice::from_fd(raw) } {
            Ok(d) => Tun::from_device(d, mtu),
            Err(e) => {
                // tun-rs owned the descriptor from the start and has
                // closed it on the way out.
                let e = e.to_string();
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
        };
        let _ = ready.send(Ok(()));
        // The subscriptions' rounds end with the runtime.
        for (f, fetcher) in following.follows {
            let h = Arc::clone(&host);
            tokio::spawn(driver::subscribe::follow(
                f,
                fetcher,
                Arc::clone(&following.policy),
                Arc::clone(&following.world),
                move |sub: &Subscription, round: Round<'_>| {
                    match round {
                        Round::Installed { sequence, what } => h.on_log(
                            Level::Info,
                            &format!(
                                "subscription {}: installed sequence {sequence} ({what})",
                                sub.url()
                            ),
                        ),
                        Round::Failed(e) => h.on_log(Level::Warn, &format!("subscription: {e}")),
                    }
                    // Among the decisions: `update` / `update-failed`.
                    if events && let Ok(j) = serde_json::to_string(&UpdateEvent::of(sub, round)) {
                        h.on_event(&j);
                    }
                },
            ));
        }
        let on_event = |e: &Event| {
            if events && let Ok(j) = serde_json::to_string(e) {
                host.on_event(&j);
            }
        };
        let shutdown = async move {
            let _ = stop.await;
        };
        driver::run(
            engine,
            tun,
            protection,
            driver::Services {
                resolver: Some(resolver),
                live: Some(live),
                // The platform says who owns a flow (`app_for_flow`).
                attribution: None,
                answers: Some(following.answers),
            },
            on_event,
            shutdown,
        )
        .await
        .map_err(|e| e.to_string())
    })
}

/// Sum of the engine's drop counters.
pub fn dropped(live: &Live) -> u64 {
    live.counters.drops.values().sum()
}

/// The engines and checkers alive, by handle. Handles are never reused,
/// so a stale one is an error, not someone else's engine.
pub(crate) enum Object {
    Engine(Arc<Running>),
    Checker(Arc<Rules>),
}

struct Registry {
    next: u64,
    objects: HashMap<u64, Object>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// Registers an object; its handle (never 0).
pub(crate) fn register(o: Object) -> u64 {
    let mut g = lock(&REGISTRY);
    let r = g.get_or_insert_with(|| Registry {
        next: 1,
        objects: HashMap::new(),
    });
    let h = r.next;
    r.next += 1;
    r.objects.insert(h, o);
    h
}

fn bad_handle(h: u64) -> Error {
    Error::new(
        Code::InvalidHandle,
        format!("no engine or checker has handle {h} (never made, or freed)"),
    )
}

/// The engine with handle `h`.
pub(crate) fn engine(h: u64) -> Result<Arc<Running>, Error> {
    match lock(&REGISTRY).as_ref().and_then(|r| r.objects.get(&h)) {
        Some(Object::Engine(e)) => Ok(e.clone()),
        Some(Object::Checker(_)) => Err(Error::new(
            Code::InvalidHandle,
            format!("handle {h} is a checker, not an engine"),
        )),
        None => Err(bad_handle(h)),
    }
}

/// The rules of handle `h` (an engine's or a checker's).
pub(crate) fn rules(h: u64) -> Result<(Arc<Rules>, Option<Arc<Running>>), Error> {
    match lock(&REGISTRY).as_ref().and_then(|r| r.objects.get(&h)) {
        Some(Object::Engine(e)) => Ok((e.rules.clone(), Some(e.clone()))),
        Some(Object::Checker(c)) => Ok((c.clone(), None)),
        None => Err(bad_handle(h)),
    }
}

/// Removes `h`; an engine still running is stopped (outside the lock).
pub(crate) fn free(h: u64) -> Result<(), Error> {
    let o = lock(&REGISTRY)
        .as_mut()
        .and_then(|r| r.objects.remove(&h))
        .ok_or_else(|| bad_handle(h))?;
    if let Object::Engine(e) = &o
        && std::thread::current().id() == e.thread_id
    {
        // Put it back: dropping it here would wait for this very thread.
        lock(&REGISTRY).as_mut().map(|r| r.objects.insert(h, o));
        return Err(Error::new(
            Code::WrongThread,
            "free was called from a callback on the engine's own thread",
        ));
    }
    drop(o);
    Ok(())
}

/// The installed bundle's sequence of `h` (0 for handle 0 or none).
pub(crate) fn bundle_sequence(h: u64) -> Result<u64, Error> {
    if h == 0 {
        return Ok(0);
    }
    Ok(rules(h)?.0.sequence())
}

/// Installs a bundle in the engine or checker `h`; its sequence.
pub(crate) fn install(h: u64, bytes: &[u8]) -> Result<u64, Error> {
    match rules(h)? {
        (_, Some(engine)) => engine.install(bytes),
        (rules, None) => rules.install(bytes),
    }
}

/// A check against the rules of the engine or checker `h`.
pub(crate) fn check(h: u64, q: &Query<'_>) -> Result<Checked, Error> {
    match rules(h)? {
        (_, Some(engine)) => engine.check(q),
        (rules, None) => rules.check(q),
    }
}
