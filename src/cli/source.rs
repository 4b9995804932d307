//! The options every command that judges traffic shares: which rules,
//! which world database, which identifiers to watch for.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use geowall::classify::leak::LeakDetector;
use geowall::intel::World;
use geowall::intel::catalog::Catalog;
use geowall::policy::{Policy, bundle};

/// Rules, world and identifiers.
#[derive(clap::Args, Clone)]
pub(crate) struct RulesArgs {
    /// A shipped preset (default, clubhouse, strict).
    #[arg(long, conflicts_with_all = ["policy", "bundle"])]
    preset: Option<String>,
    /// A policy file.
    #[arg(long, value_name = "FILE", conflicts_with = "bundle")]
    policy: Option<PathBuf>,
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
}

/// What [`RulesArgs::load`] gives.
pub(crate) struct Loaded {
    /// The policy, with the catalogs it was compiled against.
    pub(crate) policy: Policy,
    pub(crate) leak: Option<LeakDetector>,
    pub(crate) world: Arc<World>,
    /// The bundle's sequence number, when the rules came from one.
    pub(crate) sequence: Option<u64>,
}

impl RulesArgs {
    /// Reads, checks and compiles everything the options name (`lean`: see
    /// [`super::load_world`]).
    pub(crate) fn load(&self, lean: bool) -> anyhow::Result<Loaded> {
        self.load_after(lean, None)
    }

    /// As [`RulesArgs::load`], refusing a bundle that is not newer than
    /// sequence `installed` (a rollback), as a reload must.
    pub(crate) fn load_after(&self, lean: bool, installed: Option<u64>) -> anyhow::Result<Loaded> {
        let mut sequence = None;
        // The policy carries the catalogs it was compiled against (a
        // bundle's own, or the shipped ones).
        let policy = match (&self.bundle, &self.policy) {
            (Some(b), _) => {
                let bytes =
                    std::fs::read(b).with_context(|| format!("cannot read {}", b.display()))?;
                let keys = self
                    .pubkey
                    .iter()
                    .map(|p| bundle::read_verifying_key(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let opened = bundle::open(&bytes, &keys, installed, now)
                    .with_context(|| format!("{}: rejected", b.display()))?;
                sequence = Some(opened.sequence);
                opened.policy
            }
            (None, Some(p)) => Policy::load(p, &Catalog::shipped()?)?,
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
        let world = super::load_world(self.world.as_ref(), lean)?;
        Ok(Loaded {
            policy,
            leak,
            world,
            sequence,
        })
    }
}
