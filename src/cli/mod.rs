//! Command-line front end: argument parsing and output only; all logic lives
//! in the library.

mod audit;
mod lookup;
mod report;
mod rules;
mod source;
mod tunnel;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use geowall::intel::World;

/// geowall: a client-side egress firewall that keeps traffic away from
/// blocked jurisdictions.
#[derive(Parser)]
#[command(name = "geowall", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show where addresses are, which AS runs them, and where that AS is
    /// registered.
    Lookup(lookup::Args),
    /// Build or inspect world databases.
    #[command(subcommand)]
    World(world::Command),
    /// Replay a packet capture: who the app talked to, under whose
    /// jurisdiction, what would have been blocked, and what leaked.
    Audit(audit::Args),
    /// Check policies and catalogs, and explain verdicts.
    #[command(subcommand)]
    Rules(rules::Command),
    /// Run the firewall on a TUN device: create it (optionally in another
    /// network namespace, with addresses and a default route there) and
    /// judge and relay everything that enters it.
    Tunnel(tunnel::Args),
}

/// Loads `--world FILE`, else `$GEOWALL_WORLD`, else the shipped database
/// (with `lean`, used in place: small resident memory, slower lookups).
pub(crate) fn load_world(path: Option<&PathBuf>, lean: bool) -> anyhow::Result<Arc<World>> {
    let env = std::env::var_os("GEOWALL_WORLD").map(PathBuf::from);
    if let Some(p) = path.or(env.as_ref()) {
        return Ok(Arc::new(World::open(p)?));
    }
    #[cfg(feature = "embedded-world")]
    {
        if lean {
            Ok(geowall::intel::world::embedded_lean()?)
        } else {
            Ok(geowall::intel::world::embedded()?)
        }
    }
    #[cfg(not(feature = "embedded-world"))]
    {
        let _ = lean;
        anyhow::bail!(
            "this geowall was built without the shipped world database; pass --world FILE or set GEOWALL_WORLD"
        )
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lookup(a) => lookup::run(a),
        Command::World(c) => world::run(c),
        Command::Rules(c) => rules::run(c),
        Command::Audit(a) => audit::run(a),
        Command::Tunnel(a) => tunnel::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("geowall: {e:#}");
            ExitCode::from(1)
        }
    }
}
