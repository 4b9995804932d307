//! `geowall tunnel`: the firewall on one TUN device. The building block of
//! `geowall exec` (and later `geowall run`), and what the end-to-end tests
//! and the benchmark drive.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use super::control::WorldUpdate;
use anyhow::Context;
use geowall::driver::setup::{CaPem, RunConfig, Started};
use geowall::driver::{self, Live, Protection, Summary, Tun, TunSpec};
use geowall::engine::dataplane::{Decision, Engine, EngineConfig, Event, EventKind};
use geowall::intel::jurisdiction::{Intel, WorldHandle};
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
    /// Mark upstream sockets with this fwmark (for policy routing).
    #[arg(long, value_name = "MARK")]
    fwmark: Option<u32>,
    /// Bind upstream sockets to this interface.
    #[arg(long, value_name = "IFACE")]
    bind_interface: Option<String>,
    /// Find each new flow's program and user (in --netns, where the apps
    /// are), as `geowall run` does: rules by `app` and `uid` match, events
    /// name the program, and answers "for this app" are per program.
    #[arg(long)]
    owners: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// What every command that runs the firewall takes.
#[derive(clap::Args)]
pub(crate) struct EngineArgs {
    /// The TUN's MTU.
    #[arg(long, default_value_t = 65_535)]
    mtu: u16,
    /// Do not use the kernel's TUN offloads (checksums then are computed
    /// and checked on both sides of the TUN).
    #[arg(long)]
    pub(crate) no_offload: bool,
    /// Where DNS queries are resolved: `system` (/etc/resolv.conf),
    /// `udp:IP[:PORT]`, `tcp:IP[:PORT]`, `tls:IP[:PORT]@NAME`,
    /// `https:IP[:PORT]@NAME` (repeatable). Every query the apps send, to
    /// any address, is answered by geowall through these; an upstream under
    /// a jurisdiction the policy blocks is refused at start.
    #[arg(long = "dns-upstream", value_name = "SPEC", default_value = "system", value_parser = upstream)]
    dns_upstream: Vec<String>,
    /// A PEM file of certificate authorities trusted for `tls:` and
    /// `https:` upstreams besides the public ones, for a resolver with a
    /// private CA (repeatable).
    #[arg(long = "dns-ca", value_name = "FILE")]
    dns_ca: Vec<PathBuf>,
    /// A NAT64 prefix of the network (a carrier's, e.g. 2001:db8:64::/96;
    /// lengths /32, /40, /48, /56, /64, /96): IPv6 addresses under it are
    /// judged by the IPv4 address they embed (repeatable; 64:ff9b::/96 and
    /// every /96 inside 64:ff9b:1::/48 always are, and prefixes the apps'
    /// `ipv4only.arpa` lookups reveal are added).
    #[arg(long = "nat64-prefix", value_name = "CIDR")]
    nat64_prefixes: Vec<ipnet::Ipv6Net>,
    /// Append decisions as JSON lines, each with its time, to FILE (`-`:
    /// standard output, as a readable coloured log when it is a terminal).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Serve a live page of the flows on loopback (its address, with a
    /// random token, is printed at start).
    #[arg(long)]
    ui: bool,
    /// The live page's port (default: any free one).
    #[arg(long, value_name = "PORT", requires = "ui")]
    ui_port: Option<u16>,
    /// The answers file: answers "always" to `ask` rules are kept here and
    /// read at start (default: answers.toml in the state directory, when
    /// there is one).
    #[arg(long, value_name = "FILE")]
    answers: Option<PathBuf>,
    /// Flows at most; more are refused and counted. Each relayed flow holds
    /// an open file: the bound is lowered to fit the open-files limit
    /// (`ulimit -n`, hard) minus 256.
    #[arg(long, default_value_t = EngineConfig::default().max_flows)]
    max_flows: usize,
    #[command(flatten)]
    pub(crate) rules: super::source::RulesArgs,
    /// What `system` stands for (default: /etc/resolv.conf's servers);
    /// `geowall run` reads the host's resolver past its own setup.
    #[arg(skip)]
    pub(crate) system_servers: Option<ReadServers>,
}

/// Reads the DNS servers that the `system` upstream stands for now.
pub(crate) type ReadServers = Arc<dyn Fn() -> anyhow::Result<Vec<std::net::IpAddr>> + Send + Sync>;

/// How often the `system` upstream's servers are read again while running.
const SYSTEM_DNS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The `system` DNS upstream, followed while running: its servers are read
/// again every [`SYSTEM_DNS_CHECK`], and when they change (a laptop on
/// another network, a link's DHCP lease renewed with other servers) the
/// engine resolves through the new ones.
pub(crate) struct SystemDns {
    /// The upstreams as given, `system` among them.
    specs: Vec<String>,
    /// The servers `system` stands for now.
    servers: Vec<std::net::IpAddr>,
    read: ReadServers,
}

impl SystemDns {
    /// The servers `system` stands for now.
    pub(crate) fn servers(&self) -> &[std::net::IpAddr] {
        &self.servers
    }
}

/// The servers of the host's /etc/resolv.conf: what `system` stands for
/// unless told otherwise.
fn resolv_conf_servers() -> anyhow::Result<Vec<std::net::IpAddr>> {
    let f = super::hostdns::RESOLV_CONF;
    let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {f}"))?;
    Ok(super::hostdns::nameservers(&text))
}

/// `specs` with `system` replaced by plain DNS to `servers` (port 53).
fn with_system(specs: &[String], servers: &[std::net::IpAddr]) -> Vec<String> {
    specs
        .iter()
        .flat_map(|u| {
            if u == "system" {
                servers
                    .iter()
                    .map(|ip| format!("udp:{}", std::net::SocketAddr::new(*ip, 53)))
                    .collect()
            } else {
                vec![u.clone()]
            }
        })
        .collect()
}

/// Servers joined for a message.
pub(crate) fn server_list(servers: &[std::net::IpAddr]) -> String {
    servers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a `--dns-upstream` while the arguments are read.
fn upstream(s: &str) -> Result<String, String> {
    s.parse::<driver::dns::Upstream>().map(|_| s.to_owned())
}

/// An engine ready to run, with what the driver needs beside it.
pub(crate) struct Prepared {
    pub(crate) engine: Engine,
    /// Serve the live page on this port (0: any free one).
    ui: Option<u16>,
    /// Events go to a terminal: readable lines rather than JSON.
    readable: bool,
    /// The running rules (replaced by a reload).
    pub(crate) policy: Arc<PolicyHandle>,
    resolver: driver::dns::Resolver,
    sink: Option<EventSink>,
    /// The policy's name.
    pub(crate) policy_name: String,
    /// The TUN's MTU.
    pub(crate) mtu: u16,
    /// Said loudly once the firewall is up (the bundle given was refused
    /// and the last accepted one is in force).
    note: Option<String>,
    /// Find each new flow's owning process in the host's socket tables
    /// (`geowall run`, where the apps share geowall's namespace).
    pub(crate) attribute: bool,
    /// Stop on SIGINT and SIGTERM (restoring what was set up); the
    /// handlers are in place before the TUN comes up, so a signal that
    /// comes at once is never the default, uncleaned death. `exec` leaves
    /// the signals to its program.
    pub(crate) stop_on_signals: bool,
    /// The world data the engine follows (replaced by a world update).
    pub(crate) world: Arc<WorldHandle>,
    /// Reads the rules again as they were given (newer than the running
    /// bundle, if they came from one): `geowall reload` and the
    /// subscription install through it.
    pub(crate) reload: super::subscribe::Reload,
    /// When the running bundle expires (updated by each reload).
    pub(crate) expires_now: Arc<Mutex<Option<u64>>>,
    /// Verifies a world bundle at a path (newer than the running and the
    /// recorded one, signed by a `--world-pubkey`) and records it: `geowall
    /// world update` and the world subscription install through it.
    pub(crate) world_update: WorldUpdate,
    /// The subscriptions followed while running.
    subscriptions: Vec<super::subscribe::Follow>,
    /// The resolver settings their fetchers are built from.
    run: RunConfig,
    /// The `system` DNS upstream, followed while running.
    pub(crate) system_dns: Option<SystemDns>,
    /// Hands users' answers to `ask` rules to the engine.
    pub(crate) asker: driver::ask::Asker,
    /// The engine loop's end of it.
    answers: tokio::sync::mpsc::Receiver<driver::ask::AnswerRequest>,
}

/// The answers file's name in the state directory.
pub(crate) const ANSWERS_FILE: &str = "answers.toml";

impl EngineArgs {
    /// Whether an upstream is `system` (the default).
    pub(crate) fn uses_system_upstream(&self) -> bool {
        self.dns_upstream.iter().any(|u| u == "system")
    }

    /// Loads the rules and the world, builds the resolver (its sockets
    /// protected like the flows'; refusing an upstream under a blocked
    /// jurisdiction) and the engine.
    pub(crate) fn prepare(&self, protection: &Protection) -> anyhow::Result<Prepared> {
        let system_dns = if self.uses_system_upstream() {
            let read = self
                .system_servers
                .clone()
                .unwrap_or_else(|| Arc::new(resolv_conf_servers));
            let servers = read()?;
            anyhow::ensure!(
                !servers.is_empty(),
                "the host's resolver lists no DNS server ({} has no usable nameserver line); give one with --dns-upstream (udp:IP, tls:IP@NAME, ...)",
                super::hostdns::RESOLV_CONF
            );
            Some(SystemDns {
                specs: self.dns_upstream.clone(),
                servers,
                read,
            })
        } else {
            None
        };
        let run = self.run_config(system_dns.as_ref())?;
        let subscription = self.rules.subscription()?;
        let list_subscriptions = self.rules.list_subscriptions()?;
        // One resolver for the fetches at start, built only if needed.
        let mut start_resolver = None;
        let mut fetcher_for = |sub: &super::subscribe::Subscription| -> anyhow::Result<_> {
            let r = match &start_resolver {
                Some(r) => Clone::clone(r),
                None => start_resolver
                    .insert(driver::setup::resolver(&run, protection)?.0)
                    .clone(),
            };
            sub.fetcher(r, protection.clone())
                .map_err(|e| anyhow::anyhow!("--subscribe-ca: {e}"))
        };
        for sub in subscription.iter().chain(&list_subscriptions) {
            if !sub.file().exists() {
                let seq = super::subscribe::fetch_first(sub, &fetcher_for(sub)?)
                    .map_err(|e| anyhow::anyhow!(e))?;
                eprintln!(
                    "geowall: subscription {}: fetched sequence {seq}",
                    sub.url()
                );
            }
        }
        let super::source::Loaded {
            policy,
            leak,
            world,
            sequence,
            bundle_hash,
            lists,
            expires,
            note,
            world_sequence,
        } = self.rules.load(true)?;
        for (name, seq, _) in &lists {
            eprintln!("geowall: lists from list bundle '{name}' (sequence {seq})");
        }
        for sub in subscription.iter().chain(&list_subscriptions) {
            if let Some(w) = super::subscribe::refuse_blocked_server(
                sub,
                &fetcher_for(sub)?,
                &policy,
                &Intel::new(Arc::clone(&world)),
            )
            .map_err(|e| anyhow::anyhow!(e))?
            {
                eprintln!("geowall: WARNING: {w}");
            }
        }
        let policy_name = policy.name.clone();
        let handle = Arc::new(PolicyHandle::new(policy));
        let world = Arc::new(WorldHandle::new(world));
        let Started {
            mut engine,
            resolver,
            ..
        } = driver::setup::start(
            Arc::clone(&handle),
            Intel::new(world.current()),
            leak,
            &run,
            protection,
        )?;
        engine.follow_world(Arc::clone(&world));
        let answers_file = self
            .answers
            .clone()
            .or_else(|| self.rules.state_dir().map(|d| d.join(ANSWERS_FILE)))
            .map(driver::ask::AnswersFile::new);
        if let Some(f) = &answers_file {
            let kept = f
                .load()
                .map_err(|e| anyhow::anyhow!("the answers file: {e}"))?;
            if !kept.is_empty() {
                eprintln!(
                    "geowall: {} kept answer(s) to ask rules from {}",
                    kept.len(),
                    f.path().display()
                );
            }
            engine.keep_answers(kept);
        }
        let (asker, answers) = driver::ask::channel(answers_file);
        let sink = match &self.events {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(EventSink {
                path: None,
                w: Box::new(std::io::stdout()),
                reopen: Arc::default(),
            }),
            Some(p) => Some(EventSink {
                w: Box::new(append_to(p)?),
                path: Some(p.clone()),
                reopen: Arc::default(),
            }),
        };
        let expires_now = Arc::new(Mutex::new(expires));
        let reload = self.reloader(sequence, bundle_hash, Arc::clone(&expires_now));
        let world_update = self.world_updater(world_sequence);
        let mut follows = Vec::new();
        if let Some(sub) = subscription {
            let (reload, handle) = (Arc::clone(&reload), Arc::clone(&handle));
            follows.push(super::subscribe::Follow::new(
                sub,
                Arc::new(move |_: &Path| {
                    let p = reload(false).map_err(|e| format!("{e:#}"))?;
                    let name = format!("policy {}", p.name);
                    handle.replace(p);
                    Ok(name)
                }),
                sequence,
                Arc::clone(&expires_now),
            ));
        }
        for (sub, (_, seq, exp)) in list_subscriptions.into_iter().zip(&lists) {
            let (reload, handle) = (Arc::clone(&reload), Arc::clone(&handle));
            follows.push(super::subscribe::Follow::new(
                sub,
                // The rules compiled again with the new lists (the same
                // rules bundle, or a newer one).
                Arc::new(move |_: &Path| {
                    let p = reload(true).map_err(|e| format!("{e:#}"))?;
                    let name = format!("policy {} compiled again", p.name);
                    handle.replace(p);
                    Ok(name)
                }),
                Some(*seq),
                Arc::new(Mutex::new(Some(*exp))),
            ));
        }
        if let Some(sub) = self.rules.world_subscription()? {
            let (update, w) = (Arc::clone(&world_update), Arc::clone(&world));
            follows.push(super::subscribe::Follow::new(
                sub,
                Arc::new(move |path: &Path| {
                    let (_, new) = update(path).map_err(|e| format!("{e:#}"))?;
                    let built = format!("world data built {}", new.meta().built_at);
                    w.replace(new);
                    Ok(built)
                }),
                world_sequence,
                Arc::default(),
            ));
        }
        let readable = self.events.as_ref().is_some_and(|p| p.as_os_str() == "-")
            && std::io::IsTerminal::is_terminal(&std::io::stdout());
        Ok(Prepared {
            engine,
            ui: self.ui.then_some(self.ui_port.unwrap_or(0)),
            readable,
            policy: handle,
            resolver,
            sink,
            policy_name,
            mtu: self.mtu,
            note,
            attribute: false,
            stop_on_signals: true,
            world,
            reload,
            expires_now,
            world_update,
            subscriptions: follows,
            run,
            system_dns,
            asker,
            answers,
        })
    }

    /// Verifies and records world bundles (see [`Prepared::world_update`]).
    fn world_updater(&self, installed: Option<u64>) -> WorldUpdate {
        let world_rules = self.rules.clone();
        let world_installed = Mutex::new(installed);
        Arc::new(move |path: &Path| {
            let keys = world_rules.world_keys()?;
            anyhow::ensure!(
                !keys.is_empty(),
                "this instance trusts no world data key: start it with --world-pubkey FILE"
            );
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let store = world_rules.world_store()?;
            let mut seq = world_installed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let recorded = match &store {
                Some(s) => s.installed_sequence()?,
                None => None,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let w = geowall::policy::bundle::open_world(&bytes, &keys, (*seq).max(recorded), now)?;
            if let Some(s) = &store {
                s.record(&bytes, w.sequence)?;
            }
            *seq = Some(w.sequence);
            Ok((w.sequence, w.world))
        })
    }

    /// The resolver and engine settings the options give.
    fn run_config(&self, system: Option<&SystemDns>) -> anyhow::Result<RunConfig> {
        let mut dns_ca = Vec::new();
        for f in &self.dns_ca {
            let pem = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {} (--dns-ca)", f.display()))?;
            dns_ca.push(CaPem {
                name: format!("{} (--dns-ca)", f.display()),
                pem,
            });
        }
        let mut run = RunConfig::default();
        run.mtu = self.mtu;
        run.max_flows = self.max_flows;
        run.dns_upstreams = match system {
            Some(s) => with_system(&s.specs, &s.servers),
            None => self.dns_upstream.clone(),
        };
        run.dns_ca = dns_ca;
        run.nat64_prefixes.clone_from(&self.nat64_prefixes);
        Ok(run)
    }

    /// Reads the rules again, refusing a bundle not newer than the one
    /// running (`installed` at start, its file's SHA-256 `hash`) unless
    /// asked to compile the running one again (`again`: list bundles
    /// changed); keeps `expires` current.
    fn reloader(
        &self,
        installed: Option<u64>,
        hash: Option<[u8; 32]>,
        expires: Arc<Mutex<Option<u64>>>,
    ) -> super::subscribe::Reload {
        let rules = self.rules.clone();
        let running = Mutex::new((installed, hash));
        Arc::new(move |again: bool| {
            let mut run = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let l = rules.load_after(true, run.0, run.1.filter(|_| again))?;
            if l.sequence.is_some() {
                *run = (l.sequence, l.bundle_hash);
                *expires
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = l.expires;
            }
            Ok(l.policy)
        })
    }
}

/// Where the events go: standard output, or a file appended to (a restart
/// keeps the history) and opened again on SIGHUP (after logrotate moved
/// it).
pub(crate) struct EventSink {
    /// The file, if not standard output.
    path: Option<PathBuf>,
    w: Box<dyn Write + Send>,
    /// Set by SIGHUP: open the file again before the next line.
    reopen: Arc<std::sync::atomic::AtomicBool>,
}

impl EventSink {
    /// Writes one line (and flushes it), first opening the file again if a
    /// SIGHUP asked for it. A file that cannot be opened again is said at
    /// once; the lines go on to the file open until then.
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.reopen.swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Some(p) = &self.path
        {
            match append_to(p) {
                Ok(f) => self.w = Box::new(f),
                Err(e) => eprintln!(
                    "geowall: WARNING: {e:#}; the events go on to the file open until now"
                ),
            }
        }
        writeln!(self.w, "{line}").and_then(|()| self.w.flush())
    }
}

/// Opens `p` to append events to, creating it.
fn append_to(p: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("cannot open {} for the events", p.display()))
}

/// What a status query reads: the engine's live numbers and the tally of
/// its decisions.
pub(crate) type Watch = (Arc<Mutex<Live>>, Arc<Mutex<super::control::Tally>>);

/// Creates the TUN of `spec`, calls `up`, and runs the firewall on it until
/// `shutdown` completes (on a runtime of its own, on this thread).
pub(crate) fn serve(
    p: Prepared,
    spec: &TunSpec,
    protection: Protection,
    up: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
    control: Option<Watch>,
) -> anyhow::Result<Summary> {
    let Prepared {
        engine,
        resolver,
        sink,
        readable,
        note,
        attribute,
        stop_on_signals,
        policy,
        world,
        subscriptions,
        run,
        system_dns,
        ui,
        asker,
        answers,
        reload,
        ..
    } = p;
    if ui.is_none()
        && let Some(r) = policy
            .current()
            .rules
            .iter()
            .find(|r| matches!(r.action, geowall::policy::Action::Ask(_)))
    {
        let tun = if spec.name == "geowall0" {
            String::new()
        } else {
            format!(" --tun {}", spec.name)
        };
        eprintln!(
            "geowall: the rules ask before some flows (rule \"{}\"): answer with `geowall answer N allow|block{tun}` (`geowall status{tun}` lists the questions) or start with --ui; unanswered, a question gets its rule's default at its timeout",
            r.name
        );
    }
    // The live page: its own thread, fed without waiting.
    let feed = match ui {
        Some(port) => {
            let (feed, url) = super::ui::start(
                port,
                Arc::clone(&policy),
                Arc::clone(&world),
                super::ui::Control { asker, reload },
            )?;
            eprintln!("geowall: live page at {url} (loopback only; the address carries its token)");
            Some(feed)
        }
        None => None,
    };
    // The subscriptions' own resolver and fetchers (not the engine's).
    let mut follows = Vec::new();
    if !subscriptions.is_empty() {
        let (r, _) = driver::setup::resolver(&run, &protection)?;
        for f in subscriptions {
            let fetcher = f
                .sub()
                .fetcher(r.clone(), protection.clone())
                .map_err(|e| anyhow::anyhow!("--subscribe-ca: {e}"))?;
            follows.push((f, fetcher));
        }
    }
    // Event lines that could not be written (a full disk, a closed pipe).
    let unwritten = std::cell::Cell::new(0u64);
    // The resolver's sockets were protected when it was built.
    let rt = driver::runtime().context("cannot start the async runtime")?;
    let summary = rt.block_on(async {
        let signals = if stop_on_signals {
            use tokio::signal::unix::{SignalKind, signal};
            Some((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        } else {
            None
        };
        let shutdown = async move {
            match signals {
                Some((mut int, mut term)) => tokio::select! {
                    () = shutdown => {}
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                },
                None => shutdown.await,
            }
        };
        let tun = Tun::create(spec)?;
        up();
        let resolver = driver::dns::shared(resolver);
        if let Some(sys) = system_dns {
            tokio::spawn(follow_system_dns(
                sys,
                run.clone(),
                protection.clone(),
                (Arc::clone(&policy), Arc::clone(&world)),
                Arc::clone(&resolver),
                follows.iter().map(|(_, f)| f.clone()).collect(),
            ));
        }
        // Each round is said on standard error and, as an `update` or
        // `update-failed` line, among the events.
        let (updates, mut updates_rx) =
            tokio::sync::mpsc::channel::<super::subscribe::UpdateEvent>(64);
        for (f, fetcher) in follows {
            let updates = updates.clone();
            tokio::spawn(super::subscribe::follow(
                f,
                fetcher,
                Arc::clone(&policy),
                Arc::clone(&world),
                move |sub: &super::subscribe::Subscription, round: super::subscribe::Round<'_>| {
                    super::subscribe::report(sub, round);
                    let _ = updates.try_send(super::subscribe::UpdateEvent::of(sub, round));
                },
            ));
        }
        drop(updates);
        if let Some(n) = &note {
            eprintln!("geowall: WARNING: {n}");
        }
        if let Some(s) = &sink
            && s.path.is_some()
        {
            // SIGHUP (logrotate's postrotate) opens the events file again.
            let flag = Arc::clone(&s.reopen);
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot watch for SIGHUP: {e}")))?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    flag.store(true, std::sync::atomic::Ordering::Release);
                }
            });
        }
        let attribution = if attribute {
            Some(driver::attribution::Attribution::start_in(
                spec.netns.as_deref(),
            )?)
        } else {
            None
        };
        let (live, tally) = control.unzip();
        let sink = std::cell::RefCell::new(sink);
        // Writes one line of the events, counting what cannot be written.
        let write = |line: &str| {
            if let Some(w) = sink.borrow_mut().as_mut()
                && let Err(err) = w.write_line(line)
            {
                if unwritten.get() == 0 {
                    eprintln!(
                        "geowall: WARNING: cannot write the events ({err}); later failures are counted"
                    );
                }
                unwritten.set(unwritten.get() + 1);
            }
        };
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
        };
        let on_event = |e: &Event| {
            if let Some(f) = &feed {
                f.offer(super::ui::Item::Event(Box::new(e.clone())));
            }
            if let Some(t) = &tally
                && let Ok(mut t) = t.lock()
            {
                t.add(e);
            }
            if sink.borrow().is_some() {
                let now = now();
                write(&if readable {
                    format!("{} {}", clock(now), readable_line(e))
                } else {
                    timed_json(e, now)
                });
            }
        };
        let updates = async {
            while let Some(u) = updates_rx.recv().await {
                if let Some(f) = &feed {
                    f.offer(super::ui::Item::Update(
                        serde_json::to_value(&u).unwrap_or_default(),
                    ));
                }
                let now = now();
                write(&if readable {
                    format!("{} \x1b[1m{}\x1b[0m", clock(now), u.readable())
                } else {
                    timed_json(&u, now)
                });
            }
            // No subscription (or all gone): nothing more to write.
            std::future::pending::<()>().await;
        };
        let run = driver::run(
            engine,
            tun,
            protection,
            driver::Services {
                resolver: Some(resolver),
                live,
                attribution,
                answers: Some(answers),
            },
            on_event,
            shutdown,
        );
        tokio::select! {
            r = run => r,
            () = updates => unreachable!("the updates future never ends"),
        }
    })?;
    if unwritten.get() > 0 {
        eprintln!(
            "geowall: WARNING: {} events could not be written",
            unwritten.get()
        );
    }
    Ok(summary)
}

/// Follows the `system` DNS upstream (see [`SystemDns`]): its servers read
/// again every [`SYSTEM_DNS_CHECK`] (off the engine's thread); a new list
/// gets a resolver built as at start and checked against the running rules
/// (`judged`) as at start, put in the engine's place (`engine`) and the
/// subscriptions' `fetchers`'. A list that cannot be read, is empty, or is
/// refused leaves the resolver as it is, said once.
async fn follow_system_dns(
    mut sys: SystemDns,
    run: RunConfig,
    protection: Protection,
    judged: (Arc<PolicyHandle>, Arc<WorldHandle>),
    engine: driver::dns::SharedResolver,
    fetchers: Vec<driver::fetch::Fetcher>,
) {
    let (policy, world) = judged;
    let mut tick = tokio::time::interval(SYSTEM_DNS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // The last problem said, and a list refused (not built again).
    let mut said: Option<String> = None;
    let mut refused: Option<Vec<std::net::IpAddr>> = None;
    loop {
        tick.tick().await;
        let read = Arc::clone(&sys.read);
        let now = match tokio::task::spawn_blocking(move || read()).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("reading the host's resolver failed: {e}")),
        };
        let outcome = match now {
            Ok(s) if s == sys.servers => {
                said = None;
                continue;
            }
            Ok(s) if refused.as_ref() == Some(&s) => continue,
            Ok(s) if s.is_empty() => Err(anyhow::anyhow!(
                "the host's resolver lists no DNS server now"
            )),
            Ok(s) => {
                let mut cfg = run.clone();
                cfg.dns_upstreams = with_system(&sys.specs, &s);
                let built = driver::setup::judged_resolver(
                    &cfg,
                    &protection,
                    &policy.current(),
                    &Intel::new(world.current()),
                )
                .map_err(anyhow::Error::from);
                if built.is_err() {
                    refused = Some(s.clone());
                }
                built.map(|r| (s, r))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((servers, resolver)) => {
                for f in &fetchers {
                    f.set_resolver(resolver.clone());
                }
                engine.store(Arc::new(resolver));
                eprintln!(
                    "geowall: DNS upstream now {} (the host's resolver changed; was {})",
                    server_list(&servers),
                    server_list(&sys.servers)
                );
                sys.servers = servers;
                (said, refused) = (None, None);
            }
            Err(e) => {
                let m = format!("{e:#}");
                if said.as_ref() != Some(&m) {
                    eprintln!(
                        "geowall: WARNING: the host's DNS servers changed but cannot be used: {m}; geowall goes on asking {}",
                        server_list(&sys.servers)
                    );
                    said = Some(m);
                }
            }
        }
    }
}

/// Opens the control socket of the instance named `name` (`geowall status`,
/// `geowall reload`); what the driver must keep up to date, and the
/// socket's path (to remove at the end).
pub(crate) fn control(name: &str, prepared: &Prepared) -> anyhow::Result<(Watch, PathBuf)> {
    let live = Arc::new(Mutex::new(Live::default()));
    let tally = Arc::new(Mutex::new(super::control::Tally::default()));
    let reload = Arc::clone(&prepared.reload);
    let sock = super::control::socket_path(name);
    super::control::serve(
        &sock,
        super::control::State {
            live: live.clone(),
            tally: tally.clone(),
            policy: prepared.policy.clone(),
            // A reloaded bundle must be newer than the running one.
            reload,
            expires: Arc::clone(&prepared.expires_now),
            subscriptions: prepared
                .subscriptions
                .iter()
                .map(|f| f.sub().status_handle())
                .collect(),
            started: std::time::Instant::now(),
            world: Arc::clone(&prepared.world),
            // Newer than the running world bundle and the recorded one,
            // signed by a --world-pubkey; recorded before it is used.
            world_update: Arc::clone(&prepared.world_update),
            asker: prepared.asker.clone(),
        },
    )?;
    Ok(((live, tally), sock))
}

/// A decision as a coloured line for a terminal: blocks red, openings
/// green, the rest plain.
/// An event as a JSON line, with the wall-clock `time` it was written
/// (RFC 3339, milliseconds) first.
fn timed_json(e: &impl serde::Serialize, now: std::time::Duration) -> String {
    let mut line = format!("{{\"time\":\"{}\",", geowall::timefmt::rfc3339_millis(now));
    let body = serde_json::to_string(e).unwrap_or_default();
    // The event is a JSON object: its fields follow the time.
    match body.strip_prefix('{') {
        Some(rest) if rest != "}" => line.push_str(rest),
        _ => {
            line.pop();
            line.push('}');
        }
    }
    line
}

/// The time of day, UTC, for the readable log.
fn clock(now: std::time::Duration) -> String {
    let t = geowall::timefmt::rfc3339_millis(now);
    t.get(11..23).map_or(t.clone(), str::to_owned)
}

pub(crate) fn readable_line(e: &Event) -> String {
    let colour = match (e.action, e.kind) {
        (Decision::Block, _) => "\x1b[31m",
        (Decision::Ask, _) => "\x1b[1;33m",
        (_, EventKind::Opened) => "\x1b[32m",
        _ => "\x1b[2m",
    };
    let mut s = format!(
        "{colour}{:<12}\x1b[0m {:<4} {:<24} {:<5} {:<8}",
        e.kind, e.proto, e.server, e.class, e.protocol
    );
    for n in e.server_name.iter().chain(e.names.first()) {
        s.push_str(&format!(" {n}"));
    }
    // A name a later request or QUIC connection on the flow asked for.
    if let Some(h) = e.hosts.last() {
        s.push_str(&format!(" then {h}"));
    }
    if let Some(r) = &e.rule {
        s.push_str(&format!(" rule \"{r}\""));
    }
    if let Some(l) = &e.layer {
        s.push_str(&format!(" ({l})"));
    }
    if !e.leaks.is_empty() {
        s.push_str(&format!(" \x1b[33mleak: {}\x1b[0m", e.leaks.join(",")));
    }
    if let Some(d) = &e.detail {
        s.push_str(&format!(" {d}"));
    }
    if let Some(q) = e.prompt {
        let app = e.app.as_deref().unwrap_or("unknown app");
        match e.answered {
            None => s.push_str(&format!(
                " \x1b[1;33mquestion {q} from {app}: geowall answer {q} allow|block [--for once|app|always]\x1b[0m"
            )),
            Some(how) => s.push_str(&format!(" question {q} from {app}: {} ({how})", e.action)),
        }
    }
    s
}

/// One line about a finished run, for standard error.
pub(crate) fn summary_line(s: &Summary) -> String {
    format!("geowall: stopped; {s}")
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    super::need_root("tunnel", "it creates a TUN device and sets routes")?;
    let protection = Protection {
        fwmark: a.fwmark,
        bind_device: a.bind_interface.clone(),
        protector: None,
    };
    let mut prepared = a.engine.prepare(&protection)?;
    prepared.attribute = a.owners;
    let spec = TunSpec {
        name: a.tun.clone(),
        mtu: prepared.mtu,
        netns: a.netns.clone(),
        addresses: a.addresses.clone(),
        default_route: a.default_route,
        offload: !a.engine.no_offload,
    };
    let policy_name = prepared.policy_name.clone();
    let up = || {
        eprintln!(
            "geowall: {} up{} (policy {policy_name}, mtu {}); Ctrl-C stops",
            spec.name,
            spec.netns
                .as_deref()
                .map(|n| format!(" in netns {n}"))
                .unwrap_or_default(),
            spec.mtu
        );
    };
    let (watch, sock) = control(&spec.name, &prepared)?;
    let summary = serve(
        prepared,
        &spec,
        protection,
        up,
        // Only a signal stops it.
        std::future::pending(),
        Some(watch),
    );
    let _ = std::fs::remove_file(&sock);
    let summary = summary?;
    eprintln!("{}", summary_line(&summary));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A question reads on a terminal with its number, the app and how to
    /// answer it; its answer with how it came.
    #[test]
    fn questions_read_with_how_to_answer_them() {
        let mut e = Event {
            kind: EventKind::Asked,
            flow: 3,
            proto: geowall::engine::dataplane::FlowProto::Tcp,
            client: "198.18.1.2:40000".into(),
            server: "198.51.100.10:443".into(),
            class: geowall::classify::Traffic::Other,
            protocol: geowall::classify::Protocol::Unknown,
            server_name: None,
            encrypted: geowall::classify::Encryption::Unknown,
            action: Decision::Ask,
            rule: Some("ask before US".into()),
            layer: None,
            leaks: Vec::new(),
            names: Vec::new(),
            app: Some("/usr/bin/curl".into()),
            uid: None,
            detail: None,
            peers: Vec::new(),
            hosts: Vec::new(),
            peer: None,
            prompt: Some(7),
            answered: None,
            volume: None,
        };
        let asked = readable_line(&e);
        assert!(
            asked.contains("question 7 from /usr/bin/curl: geowall answer 7 allow|block"),
            "{asked}"
        );
        e.kind = EventKind::Answered;
        e.action = Decision::Allow;
        e.answered = Some(geowall::policy::Answered::App);
        let answered = readable_line(&e);
        assert!(
            answered.contains("question 7 from /usr/bin/curl: allow (app)"),
            "{answered}"
        );
        // A cut by a name a later request asked for names it.
        e.kind = EventKind::Cut;
        e.prompt = None;
        e.server_name = Some("www.example.com".into());
        e.hosts = vec!["cdn.example.net".into(), "b.example".into()];
        let cut = readable_line(&e);
        assert!(cut.contains("www.example.com then b.example rule"), "{cut}");
    }
}
