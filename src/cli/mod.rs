//! Command-line front end: argument parsing and output only; all logic lives
//! in the library.

mod audit;
mod control;
mod copies;
mod demo;
mod exec;
mod hostdns;
mod lookup;
mod report;
mod rules;
mod run;
mod source;
mod subscribe;
mod tunnel;
mod ui;
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
    /// Run one program confined to a network namespace whose only way out
    /// is geowall (as the user who called sudo); its exit status is
    /// geowall's.
    Exec(exec::Args),
    /// See the firewall work in a sandbox of its own (root; touches nothing
    /// on your network): a Clubhouse-like app under the clubhouse preset.
    Demo(demo::Args),
    /// Show what a running geowall is doing (flows, blocks by
    /// jurisdiction, class and rule, top destinations).
    Status(control::Args),
    /// Protect the whole host: route everything through geowall (policy
    /// routing, IPv4 and IPv6, resolver pointed at geowall); fail-closed.
    Run(run::Args),
    /// Remove what `geowall run` set up (after a crash); idempotent.
    Down(run::DownArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `geowall man > geowall.1`; with
    /// `--dir`, write it and a page for every subcommand (geowall-run.1,
    /// geowall-rules-check.1, ...) there.
    Man {
        /// Write geowall.1 and every subcommand's page into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Re-read the rules of a running geowall; every open flow is judged
    /// again and those the new rules block are cut. A rejected file keeps
    /// the running rules.
    Reload(control::Args),
    /// Answer a question an `ask` rule raised in a running geowall: its
    /// held flows go on or are blocked (`geowall status` lists the
    /// questions waiting).
    Answer(control::AnswerArgs),
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

/// Runs `ip ARGS` (iproute2); its message on failure.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    use anyhow::Context;
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Whether this process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The one refusal for commands that need root: what the command does that
/// needs it, and how to run it (exit status 2).
pub(crate) fn need_root(command: &str, why: &str) -> anyhow::Result<()> {
    if is_root() {
        return Ok(());
    }
    Err(NeedRoot(format!(
        "geowall {command} needs root ({why}); run it with sudo: sudo geowall {command} ..."
    ))
    .into())
}

/// A command that needs root, run without it: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NeedRoot(String);

pub(crate) fn main() -> ExitCode {
    geowall::engine::pages::tune_allocator();
    // A command line that cannot be read is bad input: status 1, like any
    // other (clap's own choice would be 2, which here means "needs root").
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if matches!(
        cli.command,
        Command::Tunnel(_) | Command::Exec(_) | Command::Demo(_) | Command::Run(_)
    ) {
        copies::prefer_vector_copies();
    }
    let result = match cli.command {
        Command::Lookup(a) => lookup::run(a),
        Command::World(c) => world::run(c),
        Command::Rules(c) => rules::run(c),
        Command::Audit(a) => audit::run(a),
        Command::Tunnel(a) => tunnel::run(a),
        Command::Exec(a) => exec::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Status(a) => control::run_status(a),
        Command::Run(a) => run::run(a),
        Command::Down(a) => run::down(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "geowall",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            match dir {
                None => clap_mangen::Man::new(Cli::command().disable_help_subcommand(true))
                    .render(&mut std::io::stdout())
                    .map(|()| ExitCode::SUCCESS)
                    .map_err(anyhow::Error::from),
                Some(d) => std::fs::create_dir_all(&d)
                    .and_then(|()| clap_mangen::generate_to(Cli::command(), &d))
                    .map(|()| ExitCode::SUCCESS)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot write the manual pages to {}: {e}", d.display())
                    }),
            }
        }
        Command::Reload(a) => control::run_reload(a),
        Command::Answer(a) => control::run_answer(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("geowall: {e:#}");
            if e.downcast_ref::<NeedRoot>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
