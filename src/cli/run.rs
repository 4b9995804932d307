//! `geowall run`: the whole host through geowall, and `geowall down`.
//!
//! Routing in the manner of `wg-quick`: geowall's own sockets carry a
//! firewall mark; everything unmarked is looked up in a routing table of
//! geowall's whose default route is the TUN, after the main table has had
//! its say for everything more specific than a default route
//! (`suppress_prefixlength 0`), so the LAN and loopback keep working. IPv4
//! and IPv6 alike. The system resolver is pointed into the TUN (geowall
//! answers every query anyway; see [`super::hostdns`]).
//!
//! **Fail-closed:** geowall's table also holds a blackhole default route
//! behind the TUN's. If geowall dies, the TUN and its route go with it and
//! the blackhole is what is left: nothing leaves until geowall is back or
//! `geowall down` removes the rules. SIGINT/SIGTERM restore everything.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;
use geowall::driver::{Protection, TunSpec};

/// The mark on geowall's own sockets, and its routing table.
pub(crate) const FWMARK: u32 = 0x6777;
const TABLE: &str = "6777";
/// Rule priorities (below main's 32766).
const PRIO_SUPPRESS: &str = "6776";
const PRIO_TABLE: &str = "6777";
const TUN: &str = "geowall0";
const V4: &str = "198.18.255.1/30";
const V6: &str = "2001:db8:ffff::1/64";
const RESOLVER: &str = "198.18.255.2";

/// Arguments of `geowall run`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    engine: super::tunnel::EngineArgs,
}

/// IPv4, and IPv6 when the host has it (then it must not bypass geowall).
fn families() -> Vec<&'static str> {
    if Path::new("/proc/net/if_inet6").exists() {
        vec!["-4", "-6"]
    } else {
        vec!["-4"]
    }
}

/// Whether a routing rule with this priority is in place.
fn rule_present(fam: &str, prio: &str) -> bool {
    Command::new("ip")
        .args([fam, "rule", "list", "priority", prio])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// The fail-closed part of the setup: geowall's table with a blackhole
/// default route, and the rules that send everything unmarked there (after
/// the main table has had its say for everything more specific than a
/// default route). Idempotent: what is there is kept and completed, never
/// removed and added again, so there is no moment without it.
fn install_blackhole() -> anyhow::Result<()> {
    let mark = format!("{FWMARK:#x}");
    for fam in families() {
        super::ip(&[
            fam,
            "route",
            "replace",
            "blackhole",
            "default",
            "table",
            TABLE,
            "metric",
            "4000",
        ])?;
        if !rule_present(fam, PRIO_TABLE) {
            super::ip(&[
                fam, "rule", "add", "not", "fwmark", &mark, "table", TABLE, "priority", PRIO_TABLE,
            ])?;
        }
        if !rule_present(fam, PRIO_SUPPRESS) {
            super::ip(&[
                fam,
                "rule",
                "add",
                "table",
                "main",
                "suppress_prefixlength",
                "0",
                "priority",
                PRIO_SUPPRESS,
            ])?;
        }
    }
    Ok(())
}

/// Sets up the routing and the resolver: the blackhole and its rules
/// ([`install_blackhole`]), the TUN's route in front of the blackhole, and
/// the resolver pointed at geowall (its backup kept in `state`).
fn up(state: &Path) -> anyhow::Result<()> {
    install_blackhole()?;
    for fam in families() {
        super::ip(&[
            fam, "route", "replace", "default", "dev", TUN, "table", TABLE, "metric", "1",
        ])?;
    }
    super::hostdns::point_at(state, TUN, RESOLVER)
}

/// Removes what `up` set (the resolver as its backup in `state` says);
/// true if anything was there.
fn down_quiet(state: &Path) -> anyhow::Result<bool> {
    let mut any = false;
    for fam in families() {
        for prio in [PRIO_TABLE, PRIO_SUPPRESS] {
            while Command::new("ip")
                .args([fam, "rule", "del", "priority", prio])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                any = true;
            }
        }
        // `flush` succeeds on an empty table too; what counts are rules.
        let _ = Command::new("ip")
            .args([fam, "route", "flush", "table", TABLE])
            .output();
    }
    // The control socket of an instance that died.
    let _ = std::fs::remove_file(super::control::socket_path(TUN));
    any |= super::hostdns::restore(state)?;
    Ok(any)
}

/// Where `geowall run` keeps the last accepted rules bundle by default.
const STATE_DIR: &str = "/var/lib/geowall";

pub(crate) fn run(mut a: Args) -> anyhow::Result<ExitCode> {
    super::need_root("run", "it routes the whole host through geowall")?;
    let state = a.engine.rules.default_state_dir(STATE_DIR);
    if a.engine.uses_system_upstream() {
        // Not a loopback stub: it would ask geowall back (see
        // `hostdns::run_upstreams`). Read again while running.
        let tun: [ipnet::IpNet; 2] = [V4.parse()?, V6.parse()?];
        let state = state.clone();
        a.engine.system_servers = Some(std::sync::Arc::new(move || {
            super::hostdns::host_run_upstreams(&state, |ip| tun.iter().any(|n| n.contains(&ip)))
        }));
    }
    let protection = Protection {
        fwmark: Some(FWMARK),
        ..Protection::default()
    };
    let mut prepared = match a.engine.prepare(&protection) {
        Ok(p) => p,
        Err(e) => {
            // No usable rules is never a reason to run open.
            install_blackhole().context("cannot install the blackhole (fail-closed)")?;
            eprintln!(
                "geowall: cannot start: {e:#}\ngeowall: the host is blocked (fail-closed: nothing leaves but the LAN) until geowall starts; `geowall down` opens it"
            );
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(s) = &prepared.system_dns {
        eprintln!(
            "geowall: DNS upstream: {} (what the host's resolver asks; followed while running)",
            super::tunnel::server_list(s.servers())
        );
    }
    // Each flow's owning process and user, for events and `app` / `uid`
    // rules, found off the engine's thread.
    prepared.attribute = true;
    let spec = TunSpec {
        name: TUN.into(),
        mtu: prepared.mtu,
        netns: None,
        addresses: vec![V4.parse()?, V6.parse()?],
        default_route: false,
        offload: !a.engine.no_offload,
    };
    let policy = prepared.policy_name.clone();
    let (watch, sock) = super::tunnel::control(TUN, &prepared)?;
    let mut setup = Ok(());
    let failed = std::sync::Arc::new(tokio::sync::Notify::new());
    let stop = failed.clone();
    let summary = super::tunnel::serve(
        prepared,
        &spec,
        protection,
        || {
            setup = up(&state);
            match &setup {
                Ok(()) => eprintln!(
                    "geowall: the whole host goes through {TUN} (policy {policy}); Ctrl-C restores the routes and the resolver; if geowall dies, traffic stays blocked until `geowall down`"
                ),
                // Stop at once; what was set up is removed below.
                Err(_) => failed.notify_one(),
            }
        },
        // SIGINT and SIGTERM stop it too.
        async move { stop.notified().await },
        Some(watch),
    );
    let _ = std::fs::remove_file(&sock);
    let restored = down_quiet(&state);
    setup?;
    restored?;
    let summary = summary?;
    eprintln!("{}", super::tunnel::summary_line(&summary));
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `geowall down`.
#[derive(clap::Args)]
pub(crate) struct DownArgs {
    /// Run as a service manager's stop step (systemd's `ExecStopPost`):
    /// remove the setup only when the service stopped cleanly
    /// (`SERVICE_RESULT=success`); after a crash, a kill or a failed start
    /// the blackhole and the rules stay, so nothing leaves until geowall is
    /// back.
    #[arg(long)]
    after_stop: bool,
    /// Where `geowall run` kept the host's resolver settings (its
    /// `--state-dir`).
    #[arg(long, value_name = "DIR", default_value = STATE_DIR)]
    state_dir: PathBuf,
}

pub(crate) fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    super::need_root("down", "it removes routes and restores the resolver")?;
    if a.after_stop {
        let result = std::env::var("SERVICE_RESULT").unwrap_or_default();
        if result != "success" {
            let shown = if result.is_empty() { "unset" } else { &result };
            eprintln!(
                "geowall: the service did not stop cleanly (SERVICE_RESULT={shown}): the routing rules and the blackhole stay, so nothing leaves until geowall is back; `geowall down` removes them"
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    if down_quiet(&a.state_dir)? {
        eprintln!("geowall: routing rules removed and the resolver restored");
    } else {
        eprintln!("geowall: nothing to remove");
    }
    Ok(ExitCode::SUCCESS)
}
