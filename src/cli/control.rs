//! The local control socket of a running geowall (`/run/geowall/NAME.sock`,
//! root only), and `geowall status` / `geowall reload` / `geowall answer`,
//! which talk to it. One JSON request per line (`{"cmd":"status"}`,
//! `{"cmd":"reload"}`, `{"cmd":"answer","prompt":N,"allow":true,"scope":"once"}`,
//! `{"cmd":"world-update","bundle":PATH}`), one JSON answer per line.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context;
use geowall::driver::Live;
use geowall::engine::Volume;
use geowall::engine::dataplane::{Decision, Event, EventKind};
use geowall::intel::World;
use geowall::intel::jurisdiction::WorldHandle;
use geowall::policy::PolicyHandle;
use serde_json::{Value, json};

/// Where the control socket of the instance named `name` lives.
pub(crate) fn socket_path(name: &str) -> PathBuf {
    Path::new("/run/geowall").join(format!("{name}.sock"))
}

/// Decisions added up from events.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    blocked_by_layer: HashMap<String, u64>,
    by_class: HashMap<String, u64>,
    blocked_by_rule: HashMap<String, u64>,
    destinations: HashMap<String, u64>,
    /// Packets and bytes of the closed flows, by app.
    closed_by_app: HashMap<String, Volume>,
    /// Packets and bytes of the closed flows not blocked, by destination.
    closed_by_destination: HashMap<String, Volume>,
    /// Packets and bytes of the closed flows blocked (at their start or
    /// cut later), by destination: what their apps sent, not relayed.
    closed_blocked_by_destination: HashMap<String, Volume>,
    bytes_events: u64,
}

/// The most apps, and destinations, a tally keeps (each).
const TALLY_KEYS: usize = 4_096;

/// Adds `v` to `key`'s entry in `map`, holding at most [`TALLY_KEYS`]
/// keys (past it, new keys are added up under `(others)`).
fn add_bounded(map: &mut HashMap<String, Volume>, key: String, v: &Volume) {
    let key = if map.len() < TALLY_KEYS || map.contains_key(&key) {
        key
    } else {
        "(others)".to_owned()
    };
    map.entry(key).or_default().add(v);
}

impl Tally {
    /// Counts one decision.
    pub(crate) fn add(&mut self, e: &Event) {
        self.bytes_events += 1;
        // Every flow's bytes come once, with its `closed` event (a `cut`
        // event carries them too, so far: not added again).
        if e.kind == EventKind::Closed
            && let Some(v) = &e.volume
        {
            let app = e.app.clone().unwrap_or_else(|| "-".to_owned());
            add_bounded(&mut self.closed_by_app, app, v);
            // A blocked flow's `closed` repeats the block.
            let dests = if e.action == Decision::Block {
                &mut self.closed_blocked_by_destination
            } else {
                &mut self.closed_by_destination
            };
            add_bounded(dests, e.destination(), v);
        }
        if e.kind == EventKind::Closed {
            return;
        }
        *self.by_class.entry(e.class.name().to_owned()).or_insert(0) += 1;
        if e.action == Decision::Block {
            if let Some(l) = &e.layer {
                *self.blocked_by_layer.entry(l.clone()).or_insert(0) += 1;
            }
            if let Some(r) = &e.rule {
                *self.blocked_by_rule.entry(r.clone()).or_insert(0) += 1;
            }
        }
        // Bounded: the map keeps at most 4,096 destinations.
        if self.destinations.len() < 4_096 || self.destinations.contains_key(&e.server) {
            *self.destinations.entry(e.server.clone()).or_insert(0) += 1;
        }
    }
}

/// What the control socket serves from.
pub(crate) struct State {
    pub(crate) live: Arc<Mutex<Live>>,
    pub(crate) tally: Arc<Mutex<Tally>>,
    pub(crate) policy: Arc<PolicyHandle>,
    /// Reloads the rules as the instance was started (files re-read).
    pub(crate) reload: super::subscribe::Reload,
    pub(crate) started: Instant,
    /// When the running rules bundle expires (Unix seconds), if they came
    /// from one.
    pub(crate) expires: Arc<Mutex<Option<u64>>>,
    /// The world data the engine follows.
    pub(crate) world: Arc<WorldHandle>,
    /// Verifies the world bundle at a path and records it (newer than the
    /// running one, signed by a `--world-pubkey`): its sequence and data.
    pub(crate) world_update: WorldUpdate,
    /// The state of the subscriptions the instance follows.
    pub(crate) subscriptions: Vec<Arc<Mutex<super::subscribe::Status>>>,
    /// Hands answers to `ask` rules' questions to the engine.
    pub(crate) asker: geowall::driver::ask::Asker,
}

/// Reads the rules again and puts them in force (every flow, the open ones
/// too, is judged by them); the new policy's name.
///
/// # Errors
/// The rules were refused; the running ones stay.
pub(crate) fn reload_rules(
    reload: &super::subscribe::Reload,
    policy: &PolicyHandle,
) -> Result<String, String> {
    match reload(false) {
        Ok(p) => {
            let name = p.name.clone();
            policy.replace(p);
            Ok(name)
        }
        Err(e) => Err(format!("reload refused, the running rules stay: {e:#}")),
    }
}

/// An answer as the control socket and the live page take it: `prompt`
/// (a number), `allow` (true or false) and `scope` (`once`, `app`,
/// `always`; default `once`).
///
/// # Errors
/// A field is missing or wrong; the message says which.
pub(crate) fn read_answer(
    req: &Value,
) -> Result<
    (
        geowall::engine::dataplane::PromptId,
        geowall::engine::dataplane::Answer,
    ),
    String,
> {
    use geowall::engine::dataplane::{Answer, Scope};
    let prompt = req["prompt"]
        .as_u64()
        .ok_or("an answer needs \"prompt\": the question's number")?;
    let allow = req["allow"]
        .as_bool()
        .ok_or("an answer needs \"allow\": true or false")?;
    let scope = match &req["scope"] {
        Value::Null => Scope::Once,
        v => v
            .as_str()
            .and_then(Scope::parse)
            .ok_or("\"scope\" is \"once\", \"app\" or \"always\"")?,
    };
    Ok((prompt, Answer { allow, scope }))
}

/// See [`State::world_update`].
pub(crate) type WorldUpdate = Arc<dyn Fn(&Path) -> anyhow::Result<(u64, World)> + Send + Sync>;

/// World data older than this many days is said to be stale by `status`.
pub(crate) const WORLD_STALE_DAYS: u64 = 90;

/// How many whole days ago `built_at` (RFC 3339, as world databases
/// record it) was, if it reads.
pub(crate) fn days_since(built_at: &str, now: u64) -> Option<u64> {
    let t = geowall::timefmt::parse_rfc3339(built_at)?;
    Some(now.saturating_sub(t) / 86_400)
}

/// How many apps and destinations `status` lists by bytes.
const STATUS_TOP: usize = 10;

/// The closed flows' volumes plus the open ones', the [`STATUS_TOP`]
/// largest by bytes, as JSON rows named by `key`.
fn by_bytes(key: &str, closed: &HashMap<String, Volume>, open: &[(String, Volume)]) -> Value {
    let mut all = closed.clone();
    for (k, v) in open {
        all.entry(k.clone()).or_default().add(v);
    }
    let mut rows: Vec<(String, Volume)> = all.into_iter().collect();
    rows.sort_by(|a, b| b.1.bytes().cmp(&a.1.bytes()).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(STATUS_TOP);
    Value::Array(
        rows.into_iter()
            .map(|(k, v)| {
                let mut row = serde_json::to_value(v).unwrap_or_default();
                row[key] = Value::String(k);
                row
            })
            .collect(),
    )
}

fn status(s: &State) -> Value {
    let live = s.live.lock().map(|l| l.clone()).unwrap_or_default();
    let t = s.tally.lock();
    let (layers, classes, rules, mut top, apps, dests, blocked_dests) = match &t {
        Ok(t) => (
            t.blocked_by_layer.clone(),
            t.by_class.clone(),
            t.blocked_by_rule.clone(),
            t.destinations
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect::<Vec<_>>(),
            by_bytes("app", &t.closed_by_app, &live.open_by_app),
            by_bytes(
                "destination",
                &t.closed_by_destination,
                &live.open_by_destination,
            ),
            by_bytes(
                "destination",
                &t.closed_blocked_by_destination,
                &live.open_blocked_by_destination,
            ),
        ),
        Err(_) => Default::default(),
    };
    drop(t);
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(10);
    let c = &live.counters;
    let expires = *s.expires.lock().unwrap_or_else(PoisonError::into_inner);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let world = s.world.current();
    let built = world.meta().built_at.clone();
    let age = days_since(&built, now);
    let subscriptions: Vec<super::subscribe::Status> = s
        .subscriptions
        .iter()
        .map(|st| st.lock().unwrap_or_else(PoisonError::into_inner).at(now))
        .collect();
    let waiting: Vec<Value> = live.waiting.iter().map(|(id, q)| q.to_json(*id)).collect();
    json!({
        "waiting": waiting,
        "asked": c.asked,
        "asked_busy": c.asked_busy,
        "subscriptions": subscriptions,
        "world_built": built,
        "world_age_days": age,
        "world_stale": age.is_some_and(|d| d > WORLD_STALE_DAYS),
        // An expired bundle's rules stay in force (fail-closed) until newer
        // ones arrive; status says they are stale.
        "rules_expires": expires,
        "rules_stale": expires.is_some_and(|e| now >= e),
        "policy": s.policy.current().name,
        "uptime_s": s.started.elapsed().as_secs(),
        "flows_open": live.flows,
        "packets_from_tun": c.tun_packets,
        "opened": c.opened,
        "blocked": c.blocked,
        "cut": c.cut,
        "refused": c.refused,
        "tcp_squeezed": c.tcp_squeezed,
        "tcp_released": c.tcp_released,
        "tcp_long_reads_refused": c.tcp_long_reads_refused,
        "udp_held": c.held,
        "udp_held_dropped": c.held_dropped,
        "udp_unreachable": c.udp_unreachable,
        "echo_unreachable": c.echo_unreachable,
        "no_route": c.no_route,
        "family_down": c.family_down,
        "families_down": c.families_down,
        "bytes_up": live.bytes_up,
        "bytes_down": live.bytes_down,
        "dns": {"queries": c.dns_queries, "blocked": c.dns_blocked, "filtered": c.dns_filtered, "unroutable": c.dns_unroutable, "cached": live.dns_cached},
        "drops": c.drops,
        "blocked_by_jurisdiction": layers,
        "decisions_by_class": classes,
        "blocked_by_rule": rules,
        "top_destinations": top,
        // Closed flows, plus the open ones as of the last second.
        "bytes_by_app": apps,
        "bytes_by_destination": dests,
        // What apps sent in flows geowall blocked (at their start: none of
        // it left; cut later: what came before the cut did).
        "blocked_bytes_by_destination": blocked_dests,
    })
}

fn answer(s: &State, line: &str) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({"error": format!("not a JSON request: {e}")}),
    };
    match req["cmd"].as_str() {
        Some("status") => status(s),
        Some("reload") => match reload_rules(&s.reload, &s.policy) {
            Ok(name) => json!({"reloaded": name}),
            Err(e) => json!({"error": e}),
        },
        Some("answer") => match read_answer(&req) {
            Ok((prompt, a)) => match s.asker.answer_blocking(prompt, a) {
                Ok(()) => json!({"answered": prompt}),
                Err(e) => json!({"error": e.to_string()}),
            },
            Err(e) => json!({"error": e}),
        },
        Some("world-update") => {
            let Some(path) = req["bundle"].as_str() else {
                return json!({"error": "world-update needs \"bundle\": PATH"});
            };
            match (s.world_update)(Path::new(path)) {
                Ok((sequence, w)) => {
                    let built = w.meta().built_at.clone();
                    // The engine takes it at its next packet or timer, and
                    // judges the open flows again.
                    s.world.replace(w);
                    json!({"world_updated": sequence, "world_built": built})
                }
                Err(e) => {
                    json!({"error": format!("world update refused, the running data stays: {e:#}")})
                }
            }
        }
        _ => json!({"error": "unknown command (status, reload, answer, world-update)"}),
    }
}

/// Serves the control socket at `path` until the process ends (a thread).
pub(crate) fn serve(path: &Path, state: State) -> anyhow::Result<()> {
    let dir = path.parent().context("socket path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut w = match c.try_clone() {
                Ok(w) => w,
                Err(_) => continue,
            };
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            for line in BufReader::new(c).lines().take(64) {
                let Ok(line) = line else { break };
                let a = answer(&state, &line);
                if writeln!(w, "{a}").is_err() {
                    break;
                }
            }
        }
    });
    Ok(())
}

/// Arguments of `geowall status` and `geowall reload`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The instance: its TUN's name (`geowall tunnel --tun`).
    #[arg(long, default_value = "geowall0", conflicts_with = "socket")]
    tun: String,
    /// The control socket's path instead.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Whether the raw JSON answer was asked for.
    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

fn ask(a: &Args, cmd: &str) -> anyhow::Result<Value> {
    ask_with(a, json!({ "cmd": cmd }))
}

/// Sends `req` to the instance `a` names; its answer (an error answer is
/// an error).
pub(crate) fn ask_with(a: &Args, req: Value) -> anyhow::Result<Value> {
    let path = a.socket.clone().unwrap_or_else(|| socket_path(&a.tun));
    let mut s = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach a running geowall at {} (is it running, and are you root?)",
            path.display()
        )
    })?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("a garbled answer")?;
    if let Some(e) = v["error"].as_str() {
        anyhow::bail!("{e}");
    }
    Ok(v)
}

pub(crate) fn run_status(a: Args) -> anyhow::Result<ExitCode> {
    let v = ask(&a, "status")?;
    if a.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "policy {}  up {} s  flows open {}  opened {}  blocked {}  cut {}  refused {}  small-window TCP {}",
        v["policy"].as_str().unwrap_or("?"),
        v["uptime_s"],
        v["flows_open"],
        v["opened"],
        v["blocked"],
        v["cut"],
        v["refused"],
        v["tcp_squeezed"]
    );
    if v["world_stale"].as_bool() == Some(true) {
        println!(
            "WARNING: the world data was built {} ({} days ago): update it (`geowall world update`)",
            v["world_built"].as_str().unwrap_or("?"),
            v["world_age_days"]
        );
    }
    if v["rules_stale"].as_bool() == Some(true) {
        println!(
            "WARNING: the rules bundle expired at {}: its rules stay in force until newer ones arrive",
            v["rules_expires"]
                .as_u64()
                .map_or_else(|| "?".to_owned(), geowall::timefmt::rfc3339)
        );
    }
    for sub in v["subscriptions"].as_array().into_iter().flatten() {
        let when = |k: &str| {
            sub[k]
                .as_u64()
                .map_or_else(|| "never".to_owned(), geowall::timefmt::rfc3339)
        };
        println!(
            "subscription ({}) {}: sequence {} (installed {}), expires {}, last check {}, last success {}",
            sub["what"].as_str().unwrap_or("?"),
            sub["url"].as_str().unwrap_or("?"),
            sub["installed"],
            when("installed_at"),
            when("expires"),
            when("last_check"),
            when("last_success")
        );
        if let Some(e) = sub["last_error"].as_str() {
            println!("WARNING: the last {} checks failed: {e}", sub["failures"]);
        }
        if let Some(exp) = sub["expires"].as_u64() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let what = sub["what"].as_str().unwrap_or("?");
            if now >= exp {
                println!(
                    "WARNING: the {what} expired at {}: it stays in force until a newer one arrives",
                    geowall::timefmt::rfc3339(exp)
                );
            } else if exp - now < 86_400 {
                println!(
                    "WARNING: the {what} expires at {}, within a day, and nothing newer has arrived",
                    geowall::timefmt::rfc3339(exp)
                );
            }
        }
    }
    println!(
        "bytes: {} to servers, {} from servers",
        v["bytes_up"], v["bytes_down"]
    );
    println!(
        "dns: {} queries, {} blocked, {} filtered, {} cached",
        v["dns"]["queries"], v["dns"]["blocked"], v["dns"]["filtered"], v["dns"]["cached"]
    );
    for (title, key) in [
        ("blocked by jurisdiction", "blocked_by_jurisdiction"),
        ("decisions by class", "decisions_by_class"),
        ("blocked by rule", "blocked_by_rule"),
    ] {
        if let Some(m) = v[key].as_object().filter(|m| !m.is_empty()) {
            println!("{title}:");
            for (k, n) in m {
                println!("  {n:>6}  {k}");
            }
        }
    }
    if let Some(t) = v["top_destinations"].as_array().filter(|t| !t.is_empty()) {
        println!("top destinations (flows):");
        for d in t {
            println!("  {:>6}  {}", d[1], d[0].as_str().unwrap_or("?"));
        }
    }
    for (title, key, name) in [
        ("bytes by app", "bytes_by_app", "app"),
        (
            "bytes by destination",
            "bytes_by_destination",
            "destination",
        ),
        (
            "blocked flows' bytes by destination (what apps sent; not relayed past the block)",
            "blocked_bytes_by_destination",
            "destination",
        ),
    ] {
        if let Some(rows) = v[key].as_array().filter(|t| !t.is_empty()) {
            println!("{title} (up / down):");
            for r in rows {
                println!(
                    "  {:>10} / {:<10}  {}",
                    human_bytes(r["bytes_up"].as_u64().unwrap_or(0)),
                    human_bytes(r["bytes_down"].as_u64().unwrap_or(0)),
                    r[name].as_str().unwrap_or("?")
                );
            }
        }
    }
    if let Some(w) = v["waiting"].as_array().filter(|w| !w.is_empty()) {
        println!("questions waiting (geowall answer N allow|block [--for once|app|always]):");
        for q in w {
            println!(
                "  {:>4}  {} -> {}  ({} flow(s) held; rule \"{}\"; unanswered after {} s: {})",
                q["prompt"],
                q["app"].as_str().unwrap_or("unknown app"),
                q["destination"].as_str().unwrap_or("?"),
                q["flows"],
                q["rule"].as_str().unwrap_or("?"),
                q["timeout_s"],
                q["default"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `geowall answer`.
#[derive(clap::Args)]
pub(crate) struct AnswerArgs {
    /// The question's number (`geowall status`, or the `prompt` of an
    /// `asked` event).
    prompt: u64,
    /// `allow` or `block`.
    #[arg(value_parser = ["allow", "block"])]
    decision: String,
    /// How far the answer reaches: `once` (the flows held under this
    /// question), `app` (every flow of the app the rule asks about, until
    /// geowall stops), `always` (the app and this destination, kept in the
    /// answers file across restarts).
    #[arg(long = "for", value_name = "SCOPE", default_value = "once", value_parser = ["once", "app", "always"])]
    scope: String,
    #[command(flatten)]
    instance: Args,
}

pub(crate) fn run_answer(a: AnswerArgs) -> anyhow::Result<ExitCode> {
    let v = ask_with(
        &a.instance,
        json!({"cmd": "answer", "prompt": a.prompt, "allow": a.decision == "allow", "scope": a.scope}),
    )?;
    println!("question {}: {} ({})", v["answered"], a.decision, a.scope);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run_reload(a: Args) -> anyhow::Result<ExitCode> {
    let v = ask(&a, "reload")?;
    println!("reloaded: policy {}", v["reloaded"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

/// `n` bytes for a person: `512 B`, `1.5 KiB`, `20.0 MiB`, `3.1 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_with_every_mistake_named() {
        use geowall::engine::dataplane::{Answer, Scope};
        assert_eq!(
            read_answer(&json!({"prompt": 7, "allow": true})),
            Ok((
                7,
                Answer {
                    allow: true,
                    scope: Scope::Once
                }
            ))
        );
        assert_eq!(
            read_answer(&json!({"prompt": 7, "allow": false, "scope": "always"})),
            Ok((
                7,
                Answer {
                    allow: false,
                    scope: Scope::Always
                }
            ))
        );
        for (req, says) in [
            (json!({"allow": true}), "\"prompt\""),
            (json!({"prompt": -1, "allow": true}), "\"prompt\""),
            (json!({"prompt": "7", "allow": true}), "\"prompt\""),
            (json!({"prompt": 7}), "\"allow\""),
            (json!({"prompt": 7, "allow": "yes"}), "\"allow\""),
            (
                json!({"prompt": 7, "allow": true, "scope": "forever"}),
                "\"scope\"",
            ),
        ] {
            let e = read_answer(&req).expect_err("refused");
            assert!(e.contains(says), "{req}: {e}");
        }
    }

    #[test]
    fn bytes_read_as_a_person_says_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(5000 << 40), "5000.0 TiB");
    }

    /// A cut flow's bytes are added once, from its `closed` event, not
    /// also from the `cut` event before it, and by destination apart from
    /// the flows not blocked (what the app sent was not all relayed); an
    /// allowed flow's among those.
    #[test]
    fn a_cut_flows_bytes_are_added_once_and_apart() {
        let v = Volume {
            packets_up: 2,
            packets_down: 1,
            bytes_up: 700,
            bytes_down: 90,
        };
        let mut e = Event {
            kind: EventKind::Cut,
            flow: 3,
            proto: geowall::engine::dataplane::FlowProto::Udp,
            client: "198.18.1.2:40000".into(),
            server: "198.51.100.10:3478".into(),
            class: geowall::classify::Traffic::Media,
            protocol: geowall::classify::Protocol::Stun,
            server_name: None,
            encrypted: geowall::classify::Encryption::Unknown,
            action: Decision::Block,
            rule: Some("no media".into()),
            layer: None,
            leaks: Vec::new(),
            names: Vec::new(),
            app: None,
            uid: None,
            detail: None,
            peers: Vec::new(),
            hosts: Vec::new(),
            peer: None,
            prompt: None,
            answered: None,
            volume: Some(v),
        };
        let mut t = Tally::default();
        t.add(&e);
        e.kind = EventKind::Closed;
        t.add(&e);
        assert_eq!(
            t.closed_blocked_by_destination.get(&e.destination()),
            Some(&v)
        );
        assert_eq!(t.closed_by_destination.get(&e.destination()), None);
        assert_eq!(t.closed_by_app.get("-"), Some(&v));
        e.action = Decision::Allow;
        e.server = "198.51.100.11:3478".into();
        t.add(&e);
        assert_eq!(t.closed_by_destination.get(&e.destination()), Some(&v));
        assert_eq!(t.closed_blocked_by_destination.len(), 1);
    }

    #[test]
    fn status_adds_closed_and_open_flows_by_bytes() {
        let mut closed = HashMap::new();
        let v = |up, down| Volume {
            packets_up: 1,
            packets_down: 1,
            bytes_up: up,
            bytes_down: down,
        };
        add_bounded(&mut closed, "a.example".into(), &v(10, 20));
        add_bounded(&mut closed, "b.example".into(), &v(1, 1));
        let open = vec![
            ("a.example".to_owned(), v(5, 5)),
            ("c.example".to_owned(), v(100, 0)),
        ];
        let rows = by_bytes("destination", &closed, &open);
        let names: Vec<&str> = rows
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["destination"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["c.example", "a.example", "b.example"]);
        assert_eq!(rows[1]["bytes_up"], 15);
        assert_eq!(rows[1]["packets_down"], 2);
        // The tally's keys are bounded; the rest add up under one row.
        let mut many = HashMap::new();
        for i in 0..TALLY_KEYS + 5 {
            add_bounded(&mut many, format!("{i}.example"), &v(1, 0));
        }
        assert_eq!(many.len(), TALLY_KEYS + 1);
        assert_eq!(many["(others)"].bytes_up, 5);
    }
}
