//! One way to start an engine, for every front end (`geowall tunnel`,
//! `run` and `exec`, and the phone library): the run configuration as plain
//! data, and the one function that turns rules, a world and that
//! configuration into an engine and its resolver.
//!
//! Steps, in order: the flow bound is fitted to the open-files limit (each
//! relayed flow holds a socket); the DNS upstreams are parsed, their private
//! CAs read, and the resolver built with protected sockets; an upstream
//! under a jurisdiction the rules block is refused (its queries would
//! carry every name the apps look up there); the engine is made.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Protection;
use super::dns::{self, Upstream};
use crate::classify::leak::LeakDetector;
use crate::engine::dataplane::{Engine, EngineConfig};
use crate::intel::jurisdiction::Intel;
use crate::policy::PolicyHandle;

/// Descriptors kept for everything but upstream sockets (the TUN, the
/// resolver, control sockets, files).
pub const RESERVED_FDS: u64 = 256;

/// How an engine runs: plain data, the same for every front end. Unknown
/// fields are refused (JSON from an app, say); every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RunConfig {
    /// The TUN's MTU (default 65,535; at least 1,280, IPv6's minimum).
    pub mtu: u16,
    /// Flows at most (default 65,536); lowered to fit the open-files
    /// limit.
    pub max_flows: usize,
    /// Where DNS queries are resolved, as `geowall --dns-upstream` writes
    /// them (`system`, `udp:IP[:PORT]`, `tcp:IP[:PORT]`,
    /// `tls:IP[:PORT]@NAME`, `https:IP[:PORT]@NAME`); default `system`.
    pub dns_upstreams: Vec<String>,
    /// Certificate authorities trusted for `tls:` and `https:` upstreams
    /// besides the public ones.
    pub dns_ca: Vec<CaPem>,
    /// A UDP flow idle this long is closed (default 60 s).
    #[serde(with = "seconds")]
    pub udp_idle: Duration,
    /// An established TCP connection idle this long is reset (default
    /// 2 h).
    #[serde(with = "seconds")]
    pub tcp_idle: Duration,
    /// NAT64 prefixes the device's network uses besides `64:ff9b::/96` and
    /// the `/96`s inside `64:ff9b:1::/48` (a carrier's; Android reports it
    /// to VPN apps):
    /// addresses under them carry the jurisdiction of the IPv4 address they
    /// embed. Lengths /32, /40, /48, /56, /64 or /96 (RFC 6052). Prefixes
    /// the apps' own `ipv4only.arpa` lookups reveal (RFC 7050) are added
    /// while running.
    pub nat64_prefixes: Vec<ipnet::Ipv6Net>,
}

/// PEM text of certificate authorities, with what to call it in errors
/// (a file name, `dns_ca[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaPem {
    /// What errors call it.
    pub name: String,
    /// The PEM text.
    pub pem: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            mtu: 65_535,
            max_flows: e.max_flows,
            dns_upstreams: vec!["system".into()],
            dns_ca: Vec::new(),
            udp_idle: Duration::from_nanos(e.udp_idle_ns),
            tcp_idle: Duration::from_nanos(e.tcp_idle_ns),
            nat64_prefixes: Vec::new(),
        }
    }
}

/// Durations as whole seconds in configuration files.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Why an engine could not be set up. Each says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupError {
    /// The MTU is below IPv6's minimum.
    #[error("mtu {0}: at least 1280 (IPv6's minimum)")]
    Mtu(u16),
    /// A DNS upstream could not be read.
    #[error("DNS upstream '{spec}': {message}")]
    Upstream {
        /// The upstream as given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// A certificate authority could not be read.
    #[error("{0}")]
    Ca(String),
    /// The resolver could not be built.
    #[error("resolver: {0}")]
    Resolver(String),
    /// An upstream resolver is under a jurisdiction the rules block.
    #[error("{0}")]
    BlockedUpstream(String),
    /// A NAT64 prefix of a length RFC 6052 does not allow.
    #[error("{0}")]
    Nat64(String),
}

/// An engine ready to run, with what the driver needs beside it.
pub struct Started {
    /// The engine.
    pub engine: Engine,
    /// The resolver (its sockets protected like the flows').
    pub resolver: dns::Resolver,
    /// The flow bound in force (after fitting the open-files limit).
    pub max_flows: usize,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("engine", &self.engine)
            .field("max_flows", &self.max_flows)
            .finish_non_exhaustive()
    }
}

/// The resolver `cfg` describes (its sockets protected by `protection`),
/// and its upstream servers' addresses.
///
/// # Errors
/// An upstream that does not parse, a CA file that does not read, or a
/// resolver hickory refuses.
pub fn resolver(
    cfg: &RunConfig,
    protection: &Protection,
) -> Result<(dns::Resolver, Vec<std::net::IpAddr>), SetupError> {
    let upstreams = if cfg.dns_upstreams.is_empty() {
        vec![Upstream::System]
    } else {
        cfg.dns_upstreams
            .iter()
            .map(|s| {
                s.parse().map_err(|message| SetupError::Upstream {
                    spec: s.clone(),
                    message,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut roots = Vec::new();
    for ca in &cfg.dns_ca {
        roots.extend(dns::parse_ca(ca.pem.as_bytes(), &ca.name).map_err(SetupError::Ca)?);
    }
    dns::build(&upstreams, protection, &roots).map_err(SetupError::Resolver)
}

/// [`resolver`], refused when an upstream is under a jurisdiction `policy`
/// blocks (with `intel`): what a start and a later change of upstreams
/// build.
///
/// # Errors
/// As [`resolver`], or [`SetupError::BlockedUpstream`] naming the rule.
pub fn judged_resolver(
    cfg: &RunConfig,
    protection: &Protection,
    policy: &crate::policy::Policy,
    intel: &Intel,
) -> Result<dns::Resolver, SetupError> {
    let (r, ips) = resolver(cfg, protection)?;
    dns::refuse_blocked(policy, intel, &ips).map_err(SetupError::BlockedUpstream)?;
    Ok(r)
}

/// Makes an engine judging with `policy` (shared: replacing it re-judges
/// the open flows) and `intel`, watching for `leak` identifiers, as `cfg`
/// says, with upstream sockets protected by `protection`.
///
/// # Errors
/// A [`SetupError`] naming what to change; nothing is left running.
pub fn start(
    policy: Arc<PolicyHandle>,
    intel: Intel,
    leak: Option<LeakDetector>,
    cfg: &RunConfig,
    protection: &Protection,
) -> Result<Started, SetupError> {
    if cfg.mtu < 1280 {
        return Err(SetupError::Mtu(cfg.mtu));
    }
    let intel = intel
        .with_nat64(&cfg.nat64_prefixes)
        .map_err(SetupError::Nat64)?;
    let max_flows = fit_open_files(cfg.max_flows);
    let resolver = judged_resolver(cfg, protection, &policy.current(), &intel)?;
    let ecfg = EngineConfig {
        max_flows,
        mtu: usize::from(cfg.mtu),
        udp_idle_ns: u64::try_from(cfg.udp_idle.as_nanos()).unwrap_or(u64::MAX),
        tcp_idle_ns: u64::try_from(cfg.tcp_idle.as_nanos()).unwrap_or(u64::MAX),
        ..EngineConfig::default()
    };
    Ok(Started {
        engine: Engine::new(ecfg, intel, policy, leak),
        resolver,
        max_flows,
    })
}

/// Each relayed flow holds an upstream socket: raises the soft limit on
/// open files to the hard one, and returns how many flows fit under it
/// ([`RESERVED_FDS`] kept for everything else; at least 64).
pub fn fit_open_files(max_flows: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max_flows;
    };
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let fit = usize::try_from(hard.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    max_flows.min(fit.max(64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_configuration_is_plain_data_with_defaults() {
        let c: RunConfig = serde_json::from_str("{}").expect("empty");
        assert_eq!(c, RunConfig::default());
        let c: RunConfig = serde_json::from_str(
            r#"{"mtu":1500,"udp_idle":30,"dns_upstreams":["udp:192.0.2.53"],"dns_ca":[{"name":"corp","pem":"x"}]}"#,
        )
        .expect("parses");
        assert_eq!(
            (c.mtu, c.udp_idle, c.dns_ca[0].name.as_str()),
            (1500, Duration::from_secs(30), "corp")
        );
        let e = serde_json::from_str::<RunConfig>(r#"{"mtu":1500,"mtus":1}"#)
            .expect_err("unknown field");
        assert!(e.to_string().contains("mtus"), "{e}");
    }

    #[test]
    fn bad_inputs_are_errors_that_name_them() {
        let catalog = crate::intel::catalog::Catalog::shipped().expect("catalog");
        let policy = Arc::new(PolicyHandle::new(
            crate::policy::Policy::preset("default", &catalog).expect("preset"),
        ));
        let mut b = crate::intel::world::WorldBuilder::new();
        let csv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv");
        b.add_fixture_csv(&csv, &mut |_| {}).expect("fixture");
        let w = crate::intel::world::World::from_vec(b.build(&mut |_| {}).expect("builds").0)
            .expect("loads");
        let intel = Intel::new(Arc::new(w));
        let p = Protection::default();
        let cfg = |f: &dyn Fn(&mut RunConfig)| {
            let mut c = RunConfig {
                dns_upstreams: vec!["udp:198.51.100.53".into()],
                ..RunConfig::default()
            };
            f(&mut c);
            c
        };
        let err = |c: RunConfig| {
            start(Arc::clone(&policy), intel.clone(), None, &c, &p).expect_err("refused")
        };
        assert_eq!(err(cfg(&|c| c.mtu = 1000)), SetupError::Mtu(1000));
        assert!(matches!(
            err(cfg(&|c| c.dns_upstreams = vec!["carrier-pigeon".into()])),
            SetupError::Upstream { spec, .. } if spec == "carrier-pigeon"
        ));
        assert!(matches!(
            err(cfg(&|c| c.dns_ca = vec![CaPem { name: "corp.pem".into(), pem: "junk".into() }])),
            SetupError::Ca(m) if m.contains("corp.pem")
        ));
        // Under `strict`, a resolver in the test world's CN range is refused.
        policy.replace(crate::policy::Policy::preset("strict", &catalog).expect("strict"));
        assert!(matches!(
            err(cfg(&|c| c.dns_upstreams = vec!["udp:203.0.113.53".into()])),
            SetupError::BlockedUpstream(_)
        ));
        let ok = start(Arc::clone(&policy), intel.clone(), None, &cfg(&|_| {}), &p);
        assert!(ok.is_ok_and(|s| s.max_flows >= 64));
    }
}
