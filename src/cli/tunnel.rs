//! `geowall tunnel`: the firewall on one TUN device. The building block of
//! `geowall run` and `geowall exec`, and what the end-to-end tests and the
//! benchmark drive.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use geowall::driver::{self, Protection, Tun, TunSpec};
use geowall::engine::dataplane::{Engine, EngineConfig};
use geowall::intel::jurisdiction::Intel;
use geowall::policy::PolicyHandle;
use ipnet::IpNet;

/// Arguments of `geowall tunnel`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Name of the TUN device to create (at most 15 bytes).
    #[arg(long, default_value = "geowall0")]
    tun: String,
    /// Move the TUN into this network namespace (by name, as `ip netns`
    /// knows it) and set it up there; the engine stays here, so its own
    /// sockets cannot re-enter the TUN.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// An address for the TUN, e.g. 198.18.255.1/30 (repeatable).
    #[arg(long = "address", value_name = "CIDR")]
    addresses: Vec<IpNet>,
    /// Route everything in --netns through the TUN (IPv4, and IPv6 when
    /// an IPv6 address is given).
    #[arg(long, requires = "netns")]
    default_route: bool,
    /// The TUN's MTU.
    #[arg(long, default_value_t = 65_535)]
    mtu: u16,
    /// Mark upstream sockets with this fwmark (for policy routing).
    #[arg(long, value_name = "MARK")]
    fwmark: Option<u32>,
    /// Bind upstream sockets to this interface.
    #[arg(long, value_name = "IFACE")]
    bind_interface: Option<String>,
    /// Where DNS queries are resolved: `system` (/etc/resolv.conf),
    /// `udp:IP[:PORT]`, `tcp:IP[:PORT]`, `tls:IP[:PORT]@NAME`,
    /// `https:IP[:PORT]@NAME` (repeatable). Every query the apps send, to
    /// any address, is answered by geowall through these; an upstream under
    /// a jurisdiction the policy blocks is refused at start.
    #[arg(long = "dns-upstream", value_name = "SPEC", default_value = "system")]
    dns_upstream: Vec<driver::dns::Upstream>,
    /// Write decisions as JSON lines to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Flows at most; more are refused and counted.
    #[arg(long, default_value_t = EngineConfig::default().max_flows)]
    max_flows: usize,
    #[command(flatten)]
    rules: super::source::RulesArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let super::source::Loaded {
        policy,
        catalog,
        leak,
        world,
    } = a.rules.load(true)?;
    let intel = Intel::new(world, Arc::new(catalog));
    let (resolver, upstream_ips) =
        driver::dns::build(&a.dns_upstream).map_err(anyhow::Error::msg)?;
    for ip in upstream_ips {
        if let Some((rule, layer)) = policy.dns_blocks_address(&intel, ip, &[], None) {
            anyhow::bail!(
                "refusing upstream resolver {ip}: it is under a blocked jurisdiction (rule '{}'{}); choose another with --dns-upstream",
                rule.name,
                layer
                    .map(|l| format!(
                        ", {} layer: {}",
                        l.layer.name(),
                        l.country.map_or("unknown".to_owned(), |c| c.to_string())
                    ))
                    .unwrap_or_default()
            );
        }
    }
    let cfg = EngineConfig {
        max_flows: a.max_flows,
        mtu: usize::from(a.mtu),
        ..EngineConfig::default()
    };
    let policy_name = policy.name.clone();
    let engine = Engine::new(cfg, intel, Arc::new(PolicyHandle::new(policy)), leak);
    let spec = TunSpec {
        name: a.tun.clone(),
        mtu: a.mtu,
        netns: a.netns.clone(),
        addresses: a.addresses.clone(),
        default_route: a.default_route,
    };
    let protection = Protection {
        fwmark: a.fwmark,
        bind_device: a.bind_interface.clone(),
        protector: None,
    };
    let mut sink: Option<Box<dyn Write>> = match &a.events {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = rt.block_on(async {
        let tun = Tun::create(&spec)?;
        eprintln!(
            "geowall: {} up{} (policy {policy_name}, mtu {}); Ctrl-C stops",
            spec.name,
            spec.netns
                .as_deref()
                .map(|n| format!(" in netns {n}"))
                .unwrap_or_default(),
            spec.mtu
        );
        let on_event = |e: &geowall::engine::dataplane::Event| {
            if let Some(w) = sink.as_mut()
                && let Ok(line) = serde_json::to_string(e)
            {
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            }
        };
        driver::run(
            engine,
            tun,
            protection,
            Some(resolver),
            on_event,
            shutdown_signal(),
        )
        .await
    })?;
    let c = &summary.counters;
    eprintln!(
        "geowall: stopped; {} packets from the TUN, {} flows opened, {} blocked, {} cut, {} refused; upstream failures {:?}; drops {:?}",
        c.tun_packets, c.opened, c.blocked, c.cut, c.refused, summary.upstream_failures, c.drops
    );
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers, only the TUN's end stops the run.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
