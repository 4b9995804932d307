//! The options every command that judges traffic shares: which rules,
//! which world database, which identifiers to watch for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use geowall::classify::leak::LeakDetector;
use geowall::intel::World;
use geowall::intel::catalog::Catalog;
use geowall::policy::lists::InstalledLists;
use geowall::policy::{Policy, bundle};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Rules, world and identifiers.
#[derive(clap::Args, Clone)]
pub(crate) struct RulesArgs {
    /// A shipped preset (default, clubhouse, strict).
    #[arg(long, conflicts_with_all = ["policy", "bundle", "subscribe"])]
    preset: Option<String>,
    /// A policy file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bundle", "subscribe"])]
    policy: Option<PathBuf>,
    /// Follow a maintainer's published rules (`geowall rules publish`) at
    /// this https:// URL (the directory, or its index.json): fetched at
    /// start when nothing was before, then checked at --subscribe-every;
    /// each newer bundle is verified with --pubkey and installed as a
    /// reload. Needs a state directory (where the bundle is kept).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "bundle",
        requires = "pubkey"
    )]
    subscribe: Option<String>,
    /// Follow a maintainer's published world data (`geowall world
    /// publish`) at this https:// URL (the directory, or its
    /// world-index.json), verified with --world-pubkey and installed as a
    /// world update. Needs a state directory.
    #[arg(long, value_name = "URL", requires = "world_pubkey")]
    subscribe_world: Option<String>,
    /// Follow a list bundle the policy draws lists from (`[[list]] from =
    /// "NAME"`), published with `geowall rules publish`, as NAME=URL
    /// (repeatable; each needs --list-pubkey NAME=FILE). Fetched at start
    /// when nothing was before; each newer one is verified and the rules
    /// are compiled again with it (open flows judged again). Needs a state
    /// directory.
    #[arg(long, value_name = "NAME=URL")]
    subscribe_list: Vec<String>,
    /// The public key list bundle NAME must be signed with, as NAME=FILE
    /// (repeatable).
    #[arg(long, value_name = "NAME=FILE")]
    list_pubkey: Vec<String>,
    /// How often to check the subscriptions (e.g. 6h, 90m, 30s).
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = super::subscribe::duration)]
    subscribe_every: std::time::Duration,
    /// A PEM file of certificate authorities trusted for the subscription's
    /// server besides the public ones (repeatable).
    #[arg(long, value_name = "FILE")]
    subscribe_ca: Vec<PathBuf>,
    /// A signed rules bundle (needs --pubkey).
    #[arg(long, value_name = "FILE", requires = "pubkey")]
    bundle: Option<PathBuf>,
    /// Trusted public key for --bundle.
    #[arg(long, value_name = "FILE")]
    pubkey: Vec<PathBuf>,
    /// An identifier to look for in cleartext, as LABEL=VALUE (repeatable).
    #[arg(long = "identifier", value_name = "LABEL=VALUE")]
    identifiers: Vec<String>,
    /// World database instead of the shipped one.
    #[arg(long, value_name = "FILE")]
    world: Option<PathBuf>,
    /// Accept world data updates (`geowall world update`) signed by this
    /// key (repeatable). With a state directory, the last accepted world
    /// bundle is used again after a restart, in place of --world or the
    /// shipped data.
    #[arg(long, value_name = "FILE")]
    world_pubkey: Vec<PathBuf>,
    /// Keep the last accepted bundle and its sequence number here, so that
    /// an older bundle is refused after a restart too, and a restart whose
    /// bundle is refused (older, expired, damaged) falls back to the last
    /// accepted one (`geowall run`: /var/lib/geowall unless given).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// What [`RulesArgs::load`] gives.
pub(crate) struct Loaded {
    /// The policy, with the catalogs it was compiled against.
    pub(crate) policy: Policy,
    pub(crate) leak: Option<LeakDetector>,
    pub(crate) world: Arc<World>,
    /// The bundle's sequence number, when the rules came from one.
    pub(crate) sequence: Option<u64>,
    /// The SHA-256 of that bundle's file.
    pub(crate) bundle_hash: Option<[u8; 32]>,
    /// The list bundles the rules drew lists from: name, sequence and
    /// expiry.
    pub(crate) lists: Vec<(String, u64, u64)>,
    /// When that bundle expires (Unix seconds).
    pub(crate) expires: Option<u64>,
    /// Said loudly at start: the given bundle was refused and the last
    /// accepted one is in force instead.
    pub(crate) note: Option<String>,
    /// The world bundle's sequence number, when the world data came from
    /// one (a world update accepted before a restart).
    pub(crate) world_sequence: Option<u64>,
}

impl RulesArgs {
    /// Reads, checks and compiles everything the options name (`lean`: see
    /// [`super::load_world`]).
    pub(crate) fn load(&self, lean: bool) -> anyhow::Result<Loaded> {
        self.load_rules(lean, None, true, None)
    }

    /// As [`RulesArgs::load`], refusing a bundle that is not newer than
    /// sequence `installed` (a rollback), as a reload must, unless it is
    /// the very bundle whose SHA-256 is `running` (compiled again with
    /// newer list bundles); a refused reload never falls back (the running
    /// rules stay).
    pub(crate) fn load_after(
        &self,
        lean: bool,
        installed: Option<u64>,
        running: Option<[u8; 32]>,
    ) -> anyhow::Result<Loaded> {
        self.load_rules(lean, installed, false, running)
    }

    /// The list subscriptions' names and URLs, each with its keys.
    fn list_specs(&self) -> anyhow::Result<Vec<(String, String, Vec<bundle::VerifyingKey>)>> {
        let mut keys: Vec<(String, bundle::VerifyingKey)> = Vec::new();
        for k in &self.list_pubkey {
            let (name, file) = k
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--list-pubkey '{k}': expected NAME=FILE"))?;
            anyhow::ensure!(
                self.subscribe_list
                    .iter()
                    .any(|s| s.split_once('=').is_some_and(|(n, _)| n == name)),
                "--list-pubkey {name}=...: no --subscribe-list {name}=URL"
            );
            keys.push((
                name.to_owned(),
                bundle::read_verifying_key(Path::new(file))?,
            ));
        }
        let mut out: Vec<(String, String, Vec<bundle::VerifyingKey>)> = Vec::new();
        for s in &self.subscribe_list {
            let (name, url) = s
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--subscribe-list '{s}': expected NAME=URL"))?;
            anyhow::ensure!(
                !out.iter().any(|(n, ..)| n == name),
                "--subscribe-list {name}: given twice"
            );
            let mine: Vec<_> = keys
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, k)| *k)
                .collect();
            anyhow::ensure!(
                !mine.is_empty(),
                "--subscribe-list {name}=...: needs the list maintainer's key: --list-pubkey {name}=FILE"
            );
            out.push((name.to_owned(), url.to_owned(), mine));
        }
        anyhow::ensure!(
            out.len() <= geowall::policy::lists::MAX_LIST_BUNDLES,
            "at most {} --subscribe-list",
            geowall::policy::lists::MAX_LIST_BUNDLES
        );
        Ok(out)
    }

    /// The list subscriptions the options describe.
    pub(crate) fn list_subscriptions(&self) -> anyhow::Result<Vec<super::subscribe::Subscription>> {
        self.list_specs()?
            .into_iter()
            .map(|(name, url, keys)| {
                self.subscribe_to(bundle::BundleKind::Lists, Some(&name), &url, keys)
            })
            .collect()
    }

    /// The list bundles kept in the state directory by the list
    /// subscriptions, each verified again (signature, expiry, name).
    fn installed_lists(&self) -> anyhow::Result<InstalledLists> {
        let mut out = InstalledLists::default();
        let specs = self.list_specs()?;
        if specs.is_empty() {
            return Ok(out);
        }
        let state = self.state_dir.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "--subscribe-list keeps its bundle in a state directory: give --state-dir DIR"
            )
        })?;
        for (name, _, keys) in specs {
            let f = super::subscribe::list_file(state, &name);
            let b = geowall::driver::subscribe::read_kept_list(&f, &name, &keys, now())
                .map_err(|e| anyhow::anyhow!(e))?;
            out.add(b).map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(out)
    }

    /// The rules subscription the options describe, if any.
    pub(crate) fn subscription(&self) -> anyhow::Result<Option<super::subscribe::Subscription>> {
        let Some(url) = &self.subscribe else {
            return Ok(None);
        };
        let keys = self
            .pubkey
            .iter()
            .map(|p| bundle::read_verifying_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        self.subscribe_to(bundle::BundleKind::Rules, None, url, keys)
            .map(Some)
    }

    /// The world data subscription the options describe, if any.
    pub(crate) fn world_subscription(
        &self,
    ) -> anyhow::Result<Option<super::subscribe::Subscription>> {
        let Some(url) = &self.subscribe_world else {
            return Ok(None);
        };
        self.subscribe_to(bundle::BundleKind::World, None, url, self.world_keys()?)
            .map(Some)
    }

    fn subscribe_to(
        &self,
        kind: bundle::BundleKind,
        list: Option<&str>,
        url: &str,
        keys: Vec<bundle::VerifyingKey>,
    ) -> anyhow::Result<super::subscribe::Subscription> {
        let state = self.state_dir.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "a subscription keeps its bundle in a state directory: give --state-dir DIR"
            )
        })?;
        std::fs::create_dir_all(state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        let flag = match kind {
            bundle::BundleKind::Rules => "--subscribe",
            bundle::BundleKind::World => "--subscribe-world",
            bundle::BundleKind::Lists => "--subscribe-list",
        };
        let mut extra_ca = Vec::new();
        for f in &self.subscribe_ca {
            extra_ca.extend(
                geowall::driver::dns::read_ca(f)
                    .map_err(|e| anyhow::anyhow!("--subscribe-ca: {e}"))?,
            );
        }
        super::subscribe::Subscription::new(
            kind,
            list,
            url,
            self.subscribe_every,
            keys,
            state,
            extra_ca,
        )
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
    }

    /// The bundle the rules come from: `--bundle`, or a subscription's.
    fn bundle_path(&self) -> Option<PathBuf> {
        self.bundle.clone().or_else(|| {
            self.subscribe.as_ref()?;
            Some(self.state_dir.as_ref()?.join(super::subscribe::FILE))
        })
    }

    /// For a command that fetches nothing (`audit`): subscriptions are
    /// read only as the bundles they keep in the state directory, so one
    /// given without `--state-dir` is an error, not silently left out.
    pub(crate) fn kept_only(&self) -> anyhow::Result<()> {
        let given = [
            ("--subscribe", self.subscribe.is_some()),
            ("--subscribe-world", self.subscribe_world.is_some()),
            ("--subscribe-list", !self.subscribe_list.is_empty()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, on)| *on)
            && self.state_dir.is_none()
        {
            anyhow::bail!(
                "{flag}: this command fetches nothing; it reads the bundle the subscription keeps in a state directory: give --state-dir DIR (e.g. /var/lib/geowall)"
            );
        }
        Ok(())
    }

    /// The state directory, if one was given (or defaulted).
    pub(crate) fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    /// The state directory, unless one was given; the one in use.
    pub(crate) fn default_state_dir(&mut self, dir: &str) -> PathBuf {
        self.state_dir
            .get_or_insert_with(|| PathBuf::from(dir))
            .clone()
    }

    fn load_rules(
        &self,
        lean: bool,
        installed: Option<u64>,
        start: bool,
        running: Option<[u8; 32]>,
    ) -> anyhow::Result<Loaded> {
        let (mut sequence, mut expires, mut note, mut bundle_hash) = (None, None, None, None);
        let lists = self.installed_lists()?;
        // The policy carries the catalogs it was compiled against (a
        // bundle's own, or the shipped ones).
        let policy = match (&self.bundle_path(), &self.policy) {
            (Some(b), _) => {
                let keys = self
                    .pubkey
                    .iter()
                    .map(|p| bundle::read_verifying_key(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let now = now();
                let store = self
                    .state_dir
                    .as_deref()
                    .map(bundle::TrustStore::open_dir)
                    .transpose()?;
                let recorded = match &store {
                    Some(s) => s.installed_sequence()?,
                    None => None,
                };
                // The newer of the running bundle and the recorded one; a
                // restart with the very bundle recorded (systemd restarting
                // geowall) is no rollback.
                let floor = installed.max(recorded);
                let given = std::fs::read(b)
                    .with_context(|| format!("cannot read {}", b.display()))
                    .and_then(|bytes| {
                        let same = (start
                            && store
                                .as_ref()
                                .and_then(bundle::TrustStore::last_good)
                                .is_some_and(|l| l == bytes))
                            || running.is_some_and(|h| h == bundle::sha256(&bytes));
                        let floor = if same { None } else { floor };
                        let o = bundle::open(&bytes, &keys, floor, now, &lists)
                            .with_context(|| format!("{}: rejected", b.display()))?;
                        Ok((bytes, o))
                    });
                let opened = match (given, &store) {
                    (Ok((bytes, o)), store) => {
                        if let Some(s) = store {
                            s.record(&bytes, o.sequence)?;
                        }
                        bundle_hash = Some(bundle::sha256(&bytes));
                        o
                    }
                    (Err(e), Some(s)) if start => {
                        // Never open because the given bundle is unusable:
                        // the last accepted one, or nothing.
                        let Some(last) = s.last_good() else {
                            return Err(e.context(
                                "and no bundle was accepted before (the state directory is empty)",
                            ));
                        };
                        bundle_hash = Some(bundle::sha256(&last));
                        let o = bundle::open(&last, &keys, None, now, &lists).map_err(|e2| {
                            anyhow::anyhow!(
                                "{}: rejected; the last accepted bundle is not usable either ({e2})",
                                b.display()
                            )
                        })?;
                        note = Some(format!(
                            "{}: rejected ({}); the last accepted bundle (sequence {}) stays in force",
                            b.display(),
                            e.root_cause(),
                            o.sequence
                        ));
                        o
                    }
                    (Err(e), _) => return Err(e),
                };
                sequence = Some(opened.sequence);
                expires = Some(opened.expires);
                opened.policy
            }
            (None, Some(p)) => Policy::load_with(p, &Catalog::shipped()?, &lists)?,
            (None, None) => Policy::preset(
                self.preset.as_deref().unwrap_or("default"),
                &Catalog::shipped()?,
            )?,
        };
        let mut ids = Vec::new();
        for s in &self.identifiers {
            let (l, v) = s
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--identifier '{s}': expected LABEL=VALUE"))?;
            ids.push((l.to_owned(), v.to_owned()));
        }
        let leak = if ids.is_empty() {
            None
        } else {
            Some(LeakDetector::new(&ids)?)
        };
        let (world, world_sequence) = match self.recorded_world()? {
            // Updates supersede the data the instance started from.
            Some((w, seq)) => (Arc::new(w), Some(seq)),
            None => (super::load_world(self.world.as_ref(), lean)?, None),
        };
        Ok(Loaded {
            policy,
            leak,
            world,
            sequence,
            bundle_hash,
            lists: lists
                .bundles()
                .iter()
                .map(|b| (b.name.clone(), b.sequence, b.expires))
                .collect(),
            expires,
            note,
            world_sequence,
        })
    }

    /// The keys world updates must be signed with (`--world-pubkey`).
    pub(crate) fn world_keys(&self) -> anyhow::Result<Vec<bundle::VerifyingKey>> {
        self.world_pubkey
            .iter()
            .map(|p| bundle::read_verifying_key(p).map_err(anyhow::Error::from))
            .collect()
    }

    /// Where accepted world bundles are recorded: `world/` in the state
    /// directory, if there is one.
    pub(crate) fn world_store(&self) -> anyhow::Result<Option<bundle::TrustStore>> {
        self.state_dir
            .as_deref()
            .map(|d| bundle::TrustStore::open_dir(&d.join("world")))
            .transpose()
            .map_err(anyhow::Error::from)
    }

    /// The world bundle accepted before a restart, if one is recorded and
    /// still verifies with `--world-pubkey` (its expiry aside: data once
    /// accepted stays in force, said loudly, until a newer one comes).
    fn recorded_world(&self) -> anyhow::Result<Option<(World, u64)>> {
        let keys = self.world_keys()?;
        let Some(bytes) = self.world_store()?.and_then(|s| s.last_good()) else {
            return Ok(None);
        };
        if keys.is_empty() {
            return Ok(None);
        }
        // 0: no expiry check here (the bundle was current when accepted).
        let w = bundle::open_world(&bytes, &keys, None, 0)
            .context("the recorded world bundle (state directory) does not verify")?;
        if now() >= w.expires {
            eprintln!(
                "geowall: WARNING: the recorded world bundle (sequence {}) expired at {}; it stays in force until a newer one arrives",
                w.sequence,
                geowall::timefmt::rfc3339(w.expires)
            );
        }
        Ok(Some((w.world, w.sequence)))
    }
}
