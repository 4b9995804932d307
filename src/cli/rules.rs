//! `geowall rules check|explain`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use geowall::classify::Protocol;
use geowall::intel::catalog::{Catalog, SourceError};
use geowall::intel::jurisdiction::{Intel, Jurisdiction, Layer};
use geowall::policy::rules::PRESETS;
use geowall::policy::{Facts, Policy, Traffic, Transport, bundle};

/// `geowall rules` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Check policy and catalog files; errors are printed as
    /// file:line:col: message, and the exit code is 1 if there are any.
    Check {
        /// Files or directories (every *.toml below a directory; files with
        /// [[vendor]] or [[operator]] tables are checked as catalogs, files
        /// named lists.toml as list bundle manifests).
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
    },
    /// List the shipped presets: what each is for and its rules in order.
    List,
    /// Print a shipped preset's policy file (commented TOML: a starting
    /// point for your own, and the rule syntax by example).
    Show {
        /// The preset.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(PRESETS.map(|p| p.0)))]
        preset: String,
    },
    /// Explain the verdict for a destination: each jurisdiction layer with
    /// its evidence, each rule's outcome, and the verdict.
    Explain(ExplainArgs),
    /// Compile DIR into one bundle (unsigned unless --key): a rules bundle
    /// from policy.toml, its lists and optional vendors/ and operators/
    /// catalogs; or a list bundle from lists.toml and its lists, for
    /// policies to use with `[[list]] from = NAME`.
    Build {
        /// The rules directory.
        dir: PathBuf,
        /// Output file (.gwb).
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// Sequence number; must grow with every release.
        #[arg(long)]
        sequence: u64,
        /// Days until the bundle expires.
        #[arg(long, default_value_t = 30)]
        expires_in_days: u64,
        /// Sign with this secret key file.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Generate an Ed25519 key pair: PREFIX.key (secret, mode 0600) and
    /// PREFIX.pub.
    Keygen {
        /// Path prefix for the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Endorse a new signing key with the one devices trust (key
    /// rotation): put the file in the rules directory's `endorsements/`,
    /// sign with the new key, and devices that trust the old key accept
    /// the bundles (and the published index).
    Endorse {
        /// The new key's public file.
        new: PathBuf,
        /// The trusted (old) secret key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the endorsement (JSON).
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// Days the endorsement holds.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
    },
    /// Sign a bundle.
    Sign {
        /// The bundle.
        bundle: PathBuf,
        /// Secret key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Output (default: replace the bundle).
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show what changed between two rules bundles (or rules directories,
    /// built in memory): settings, rules, list entries, vendors and
    /// operators. For review before signing; signatures are not checked.
    Diff {
        /// The old bundle or directory.
        old: PathBuf,
        /// The new bundle or directory.
        new: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write what a static web host serves to subscribers into DIR: the
    /// bundle as `rules-SEQUENCE.gwb` and `rules.gwb`, and a signed
    /// `index.json` (latest sequence, expiry, size, SHA-256); a list
    /// bundle as `lists-SEQUENCE.gwb`, `lists.gwb` and `lists-index.json`.
    /// Refuses a bundle not signed by KEY, or not newer than what DIR
    /// already publishes.
    Publish {
        /// The signed bundle.
        bundle: PathBuf,
        /// The directory the web host serves.
        dir: PathBuf,
        /// The secret key the bundle was signed with (signs the index).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Verify a bundle as a device would before installing it.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// Trusted public key files.
        #[arg(long, required = true, value_name = "FILE")]
        pubkey: Vec<PathBuf>,
        /// Sequence number of the installed bundle (rollback check).
        #[arg(long)]
        installed_sequence: Option<u64>,
    },
}

/// Arguments of `geowall rules explain`.
#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    /// An IP address or a domain name.
    target: String,
    /// A shipped preset (default, clubhouse, strict).
    #[arg(long, conflicts_with = "policy")]
    preset: Option<String>,
    /// A policy file.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// A list bundle the policy's lists `from` are drawn from: a bundle
    /// file, or a directory with lists.toml (repeatable). Its signature is
    /// not checked here (`rules verify` does).
    #[arg(long, value_name = "FILE|DIR", requires = "policy")]
    lists: Vec<PathBuf>,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
    /// Transport protocol: tcp, udp or icmp.
    #[arg(long, value_parser = parse_transport)]
    proto: Option<Transport>,
    /// Traffic class: dns, web, media, ping or other.
    #[arg(long, value_parser = parse_traffic)]
    traffic: Option<Traffic>,
    /// Application protocol the classifier would report (e.g. sd-rtn,
    /// stun, zoom, wireguard).
    #[arg(long, value_name = "NAME", value_parser = parse_protocol)]
    protocol: Option<Protocol>,
    /// The flow carries a registered identifier in cleartext.
    #[arg(long)]
    leak: bool,
    /// The payload is encrypted (true or false).
    #[arg(long)]
    encrypted: Option<bool>,
    /// The app identity.
    #[arg(long)]
    app: Option<String>,
    /// The user the app runs as.
    #[arg(long)]
    uid: Option<u32>,
    /// A peer the flow's TURN relay is asked to reach (IP or IP:PORT, as
    /// CreatePermission, ChannelBind and Send name it): each is judged too.
    /// Repeat for several.
    #[arg(long, value_name = "ADDR")]
    peer: Vec<String>,
    /// Resolve a domain TARGET with the system resolver and explain each
    /// address (this sends DNS queries).
    #[arg(long)]
    resolve: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// World database instead of the shipped one.
    #[arg(long, value_name = "FILE")]
    world: Option<PathBuf>,
    /// Catalog files or directories instead of the shipped catalog.
    #[arg(long, value_name = "FILE|DIR")]
    catalog: Vec<PathBuf>,
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    match s {
        "tcp" => Ok(Transport::Tcp),
        "udp" => Ok(Transport::Udp),
        "icmp" => Ok(Transport::Icmp),
        _ => Err("expected tcp, udp or icmp".into()),
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::from_name(s).ok_or_else(|| {
        format!(
            "expected one of {}",
            Protocol::ALL.map(Protocol::name).join(", ")
        )
    })
}

fn parse_traffic(s: &str) -> Result<Traffic, String> {
    match s {
        "dns" => Ok(Traffic::Dns),
        "web" => Ok(Traffic::Web),
        "media" => Ok(Traffic::Media),
        "ping" => Ok(Traffic::Ping),
        "other" => Ok(Traffic::Other),
        _ => Err("expected dns, web, media, ping or other".into()),
    }
}

pub(crate) fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Check { paths } => check(&paths),
        Command::List => list(),
        Command::Show { preset } => {
            let text = PRESETS
                .iter()
                .find(|(n, _)| *n == preset)
                .map(|p| p.1)
                .context("no such preset")?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(a) => explain(a),
        Command::Build {
            dir,
            out,
            sequence,
            expires_in_days,
            key,
        } => {
            let now = now_secs();
            let expires = now.saturating_add(expires_in_days.saturating_mul(86_400));
            let mut b = bundle::build(&dir, sequence, now, expires)?;
            if let Some(k) = key {
                b = bundle::sign(&b, &bundle::read_signing_key(&k)?)?;
            }
            write_atomic(&out, &b)?;
            let kind = bundle::BundleKind::of(&b)?;
            println!(
                "wrote {} ({kind} bundle, {} bytes, sequence {sequence}, expires in {expires_in_days} days{})",
                out.display(),
                b.len(),
                if b.last() == Some(&0) {
                    ", unsigned"
                } else {
                    ", signed"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let k = bundle::keygen()?;
            let secret = out.with_extension("key");
            let public = out.with_extension("pub");
            if secret.exists() {
                anyhow::bail!(
                    "{} exists; refusing to overwrite a secret key",
                    secret.display()
                );
            }
            write_secret(
                &secret,
                format!("{}\n", bundle::key_hex(&k.to_bytes())).as_bytes(),
            )?;
            std::fs::write(
                &public,
                format!("{}\n", bundle::key_hex(k.verifying_key().as_bytes())),
            )
            .with_context(|| format!("cannot write {}", public.display()))?;
            println!(
                "wrote {} (secret: keep it offline) and {} (public: ship it to devices)",
                secret.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign {
            bundle: path,
            key,
            out,
        } => {
            let b =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let signed = bundle::sign(&b, &bundle::read_signing_key(&key)?)?;
            let out = out.unwrap_or(path);
            write_atomic(&out, &signed)?;
            println!("signed {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { old, new, json } => diff(&old, &new, json),
        Command::Endorse {
            new,
            key,
            out,
            valid_days,
        } => {
            let old = bundle::read_signing_key(&key)?;
            let newk = bundle::read_verifying_key(&new)?;
            let expires = now_secs() + valid_days.saturating_mul(86_400);
            let e = bundle::endorse(&old, &newk, expires);
            write_atomic(&out, (serde_json::to_string_pretty(&e)? + "\n").as_bytes())?;
            println!(
                "{}: key {} endorsed by key {} until {}",
                out.display(),
                bundle::key_id(&newk)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                e.by,
                geowall::timefmt::rfc3339(expires)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { bundle, dir, key } => publish(&bundle, &dir, &key),
        Command::Verify {
            bundle: path,
            pubkey,
            installed_sequence,
        } => {
            let b =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let keys = pubkey
                .iter()
                .map(|p| bundle::read_verifying_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            let kind = bundle::BundleKind::of(&b).unwrap_or(bundle::BundleKind::Rules);
            match bundle::inspect(&b, kind, &keys, installed_sequence, now_secs()) {
                Ok(v) => {
                    println!(
                        "ok: {} {}, sequence {}, expires {}, key {}, content sha256 {}",
                        path.display(),
                        v.what,
                        v.sequence,
                        geowall::timefmt::rfc3339(v.expires),
                        v.key_id,
                        v.content_hash
                    );
                    if !v.needs.is_empty() {
                        println!(
                            "needs lists from list bundles (the device's --subscribe-list): {}",
                            joined(&v.needs)
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("geowall: {}: rejected: {e}", path.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// A bundle file, or a rules directory built (unsigned) in memory, for
/// review.
fn review(p: &Path) -> anyhow::Result<bundle::Review> {
    let bytes = if p.is_dir() {
        bundle::build(p, 0, 0, u64::MAX)?
    } else {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?
    };
    bundle::review(&bytes).with_context(|| format!("{}: not a readable rules bundle", p.display()))
}

fn diff(old: &Path, new: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let d = geowall::policy::diff::diff(&review(old)?, &review(new)?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("sequence {} -> {}", d.sequence.0, d.sequence.1);
    if d.is_empty() {
        println!("no changes");
        return Ok(ExitCode::SUCCESS);
    }
    // `what` is the kind with its indent ("  rule ", "      domain ").
    let change = |what: &str, c: &geowall::policy::diff::Change| {
        let (indent, kind) = what.split_at(what.len() - what.trim_start().len());
        for a in &c.added {
            println!("{indent}+ {kind}{a}");
        }
        for r in &c.removed {
            println!("{indent}- {kind}{r}");
        }
    };
    for sdiff in &d.settings {
        println!("setting  {sdiff}");
    }
    if !d.rules.is_empty() || !d.rules_changed.is_empty() || d.rules_reordered {
        println!("rules:");
        change("  rule ", &d.rules);
        for r in &d.rules_changed {
            println!("  ~ rule {r}");
        }
        if d.rules_reordered {
            println!("  ~ the order of the rules changed (the first match decides)");
        }
    }
    for (file, c) in &d.lists {
        println!("list {file}: +{} -{}", c.added.len(), c.removed.len());
        change("  ", c);
    }
    let entries = |kind: &str,
                   c: &geowall::policy::diff::Change,
                   changed: &[geowall::policy::diff::EntryChange]| {
        if c.is_empty() && changed.is_empty() {
            return;
        }
        println!("{kind}s:");
        change(&format!("  {kind} "), c);
        for e in changed {
            println!("  ~ {kind} {}", e.id);
            if let Some(j) = &e.jurisdiction {
                println!("      jurisdiction {j}");
            }
            change("      domain ", &e.domains);
            change("      AS", &e.asns);
            change("      signature ", &e.signatures);
        }
    };
    entries("vendor", &d.vendors, &d.vendors_changed);
    entries("operator", &d.operators, &d.operators_changed);
    Ok(ExitCode::SUCCESS)
}

fn publish(path: &Path, dir: &Path, key: &Path) -> anyhow::Result<ExitCode> {
    publish_to(
        path,
        dir,
        key,
        &[bundle::BundleKind::Rules, bundle::BundleKind::Lists],
    )
}

/// Writes what a static host serves for a signed bundle of one of `kinds`
/// into `dir`: `KIND-SEQ.gwb`, `KIND.gwb` and the signed index
/// (`index.json` for rules, `world-index.json` for world data,
/// `lists-index.json` for a list bundle), never going back.
pub(crate) fn publish_to(
    path: &Path,
    dir: &Path,
    key: &Path,
    kinds: &[bundle::BundleKind],
) -> anyhow::Result<ExitCode> {
    let b = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = bundle::read_signing_key(key)?;
    let (index, ix) = bundle::publish_index(&b, &key)
        .with_context(|| format!("{}: cannot publish", path.display()))?;
    let kind = ix.kind;
    anyhow::ensure!(
        kinds.contains(&kind),
        "{} is a {kind} bundle: publish it with {}",
        path.display(),
        match kind {
            bundle::BundleKind::World => "geowall world publish",
            _ => "geowall rules publish",
        }
    );
    let latest = format!("{}.gwb", kind.stem());
    let index_name = kind.index_file();
    let how = match kind {
        bundle::BundleKind::World => "world bundle --sequence",
        _ => "rules build --sequence",
    };
    let seq = ix.sequence;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Never go back: what the directory publishes must be older.
    let current = dir.join(index_name);
    if let Ok(text) = std::fs::read(&current) {
        let old = bundle::read_index(&text)
            .with_context(|| format!("{}: not a geowall index", current.display()))?;
        anyhow::ensure!(
            seq > old.sequence,
            "{} publishes sequence {}; this bundle's is {seq}: publish a newer one ({how})",
            dir.display(),
            old.sequence
        );
    }
    // The bundles first, the index last: a client never reads an index
    // that names a file not there yet.
    write_atomic(&dir.join(&ix.file), &b)?;
    write_atomic(&dir.join(&latest), &b)?;
    write_atomic(&current, &index)?;
    println!(
        "published sequence {seq} in {}: {}, {latest}, {index_name} (signed)",
        dir.display(),
        ix.file
    );
    Ok(ExitCode::SUCCESS)
}

/// `a, b, c`.
fn joined<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn write_secret(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn load_catalog(paths: &[PathBuf]) -> Result<Catalog, SourceError> {
    if paths.is_empty() {
        Catalog::shipped()
    } else {
        Catalog::load(paths)
    }
}

fn toml_files_below(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_file() {
        out.push(p.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            toml_files_below(&e, out)?;
        } else if e.extension().is_some_and(|x| x == "toml") {
            out.push(e);
        }
    }
    Ok(())
}

/// `geowall rules list`.
fn list() -> anyhow::Result<ExitCode> {
    let catalog = Catalog::shipped()?;
    for (name, text) in PRESETS {
        let p = Policy::preset(name, &catalog)?;
        // The file's first comment paragraph says what the preset is for.
        let about = text
            .lines()
            .map_while(|l| l.strip_prefix('#').map(str::trim))
            .take_while(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let prefix = format!("geowall preset \"{name}\": ");
        println!("{name}: {}", about.strip_prefix(&prefix).unwrap_or(&about));
        println!("  default: {}", p.default.name());
        for (i, r) in p.rules.iter().enumerate() {
            println!("  {:>2}. {:<6} {}", i + 1, r.action.name(), r.name);
        }
    }
    println!("(`geowall rules show NAME` prints a preset's file)");
    println!();
    println!("vendors (the vendor layer: services recognised by name, AS or protocol):");
    for v in catalog.vendors() {
        println!("  {:<16} {} {}", v.id, v.jurisdiction, v.name);
        let text = v.evidence.split_whitespace().collect::<Vec<_>>().join(" ");
        let first = text.find(". ").map_or(text.as_str(), |i| &text[..=i]);
        println!("  {:<16} {first}", "");
        let mut how = vec![format!("{} domains", v.domains.len())];
        if !v.asns.is_empty() {
            let a: Vec<String> = v.asns.iter().map(|a| format!("AS{a}")).collect();
            how.push(a.join(" "));
        }
        if !v.signatures.is_empty() {
            how.push(format!("protocol {}", v.signatures.join(", ")));
        }
        println!("  {:<16} recognised by {}", "", how.join("; "));
    }
    println!();
    println!("operators (the owner layer: who runs the network an address is on):");
    for o in catalog.operators() {
        println!(
            "  {:<28} {} {} ({} AS{}; parent: {})",
            o.id,
            o.jurisdiction,
            o.name,
            o.asns.len(),
            if o.asns.len() == 1 { "" } else { "es" },
            o.parent
        );
    }
    let world = super::load_world(None, false)?;
    let owned: std::collections::HashSet<u32> = catalog
        .operators()
        .iter()
        .flat_map(|o| o.asns.iter().copied())
        .collect();
    let a = world.announced_by(|asn| owned.contains(&asn));
    let all = world.announced_by(|_| true);
    println!(
        "  the owner layer covers {} ASes announcing {:.1} M IPv4 addresses ({:.1}% of all announced) and {:.1}% of announced IPv6 /64s",
        owned.len(),
        a.ipv4_addresses as f64 / 1e6,
        100.0 * a.ipv4_addresses as f64 / all.ipv4_addresses.max(1) as f64,
        100.0 * a.ipv6_slash64s as f64 / all.ipv6_slash64s.max(1) as f64,
    );
    println!("(the catalog files, with evidence and sources: rules/vendors, rules/operators)");
    Ok(ExitCode::SUCCESS)
}

fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for p in paths {
        toml_files_below(p, &mut files).with_context(|| format!("cannot read {}", p.display()))?;
    }
    // Catalogs first: policies are checked against them (vendor ids).
    let is_catalog = |t: &str| {
        t.lines()
            .any(|l| matches!(l.trim(), "[[vendor]]" | "[[operator]]"))
    };
    let mut texts = Vec::new();
    let mut errors = 0usize;
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(t) => texts.push((f.clone(), t)),
            Err(e) => {
                errors += 1;
                eprintln!("{}: cannot read: {e}", f.display());
            }
        }
    }
    let catalog_sources: Vec<(PathBuf, String)> = texts
        .iter()
        .filter(|(_, t)| is_catalog(t))
        .cloned()
        .collect();
    let catalog = if catalog_sources.is_empty() {
        Catalog::shipped().map_err(anyhow::Error::from)?
    } else {
        match Catalog::from_sources(catalog_sources.clone()) {
            Ok(c) => {
                for (f, _) in &catalog_sources {
                    println!("ok: {} (catalog)", f.display());
                }
                c
            }
            Err(e) => {
                errors += 1;
                eprintln!("{e}");
                Catalog::shipped().map_err(anyhow::Error::from)?
            }
        }
    };
    for (f, t) in texts.iter().filter(|(_, t)| !is_catalog(t)) {
        let base = f.parent().unwrap_or(Path::new(""));
        let mut read = |l: &str| std::fs::read_to_string(base.join(l)).map_err(|e| e.to_string());
        if f.file_name().is_some_and(|n| n == "lists.toml") {
            match geowall::policy::lists::read_manifest(f, t, &mut read) {
                Ok((m, lists)) => println!(
                    "ok: {} (list bundle '{}': {})",
                    f.display(),
                    m.name,
                    lists
                        .iter()
                        .map(|l| format!("{}, {} entries", l.name, l.entries.len()))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                Err(e) => {
                    errors += 1;
                    eprintln!("{e}");
                }
            }
            continue;
        }
        match Policy::declared(f, t, &mut read, &catalog) {
            Ok(p) => {
                println!(
                    "ok: {} (policy '{}', {} rules, {} lists)",
                    f.display(),
                    p.name,
                    p.rules,
                    p.lists
                );
                if !p.needs.is_empty() {
                    println!(
                        "  from list bundles (a device must subscribe to them): {}",
                        joined(&p.needs)
                    );
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("{e}");
            }
        }
    }
    if files.is_empty() {
        eprintln!("geowall: no .toml files found");
        return Ok(ExitCode::from(1));
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn explain(a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let catalog = Arc::new(load_catalog(&a.catalog)?);
    let mut lists = geowall::policy::lists::InstalledLists::default();
    for l in &a.lists {
        let b = review(l)?;
        let b = bundle::review_lists(&b).with_context(|| format!("{}", l.display()))?;
        lists.add(b).map_err(|e| anyhow::anyhow!("--lists: {e}"))?;
    }
    let policy = match (&a.preset, &a.policy) {
        (_, Some(f)) => Policy::load_with(f, &catalog, &lists)?,
        (p, None) => Policy::preset(p.as_deref().unwrap_or("default"), &catalog)?,
    };
    let world = super::load_world(a.world.as_ref(), false)?;
    let intel = Intel::new(world);
    let (ips, name): (Vec<Option<IpAddr>>, Option<&str>) = match a.target.parse::<IpAddr>() {
        Ok(ip) => (vec![Some(ip)], None),
        Err(_) => {
            geowall::intel::domain::DomainPattern::parse(&a.target).map_err(|e| {
                anyhow::anyhow!("TARGET must be an IP address or a domain name: {e}")
            })?;
            if a.resolve {
                use std::net::ToSocketAddrs;
                let addrs: Vec<Option<IpAddr>> = (a.target.as_str(), 0)
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve {}", a.target))?
                    .map(|s| Some(s.ip()))
                    .collect();
                (addrs, Some(a.target.as_str()))
            } else {
                (vec![None], Some(a.target.as_str()))
            }
        }
    };
    let names: Vec<&str> = name.into_iter().collect();
    let mut peers = Vec::new();
    for p in &a.peer {
        let addr = p
            .parse::<std::net::SocketAddr>()
            .or_else(|_| {
                p.parse::<IpAddr>()
                    .map(|ip| std::net::SocketAddr::new(ip, 0))
            })
            .map_err(|_| {
                anyhow::anyhow!(
                    "--peer '{p}' is not an address (e.g. 203.0.113.10 or 203.0.113.10:5004)"
                )
            })?;
        peers.push(addr);
    }
    for ip in ips {
        let facts = Facts {
            dst: ip,
            port: a.port,
            transport: a.proto,
            names: &names,
            traffic: a.traffic,
            protocol: a.protocol.map(Protocol::name),
            encrypted: a.encrypted,
            leak: a.leak,
            app: a.app.as_deref(),
            uid: a.uid,
            peers: &peers,
            as_peer: false,
        };
        let j = intel.jurisdiction(policy.catalog(), facts.dst, facts.names, facts.protocol);
        let trace = policy.trace(&facts, Some(&j));
        let verdict = policy.evaluate(&intel, &facts);
        let peer_views: Vec<_> = peers
            .iter()
            .map(|&p| {
                let pf = facts.of_peer(p);
                let pj = intel.jurisdiction(policy.catalog(), pf.dst, &[], None);
                let pt = policy.trace(&pf, Some(&pj));
                (p, pj, pt)
            })
            .collect();
        if a.json {
            let doc = serde_json::json!({
                "target": a.target,
                "ip": ip,
                "names": names,
                "policy": policy.name,
                "jurisdiction": j.to_json(),
                "rules": trace,
                "peers": peer_views.iter().map(|(p, pj, pt)| serde_json::json!({
                    "peer": p, "jurisdiction": pj.to_json(), "rules": pt,
                })).collect::<Vec<_>>(),
                "verdict": verdict.to_json(),
            });
            println!("{doc}");
            continue;
        }
        match (ip, name) {
            (Some(ip), Some(n)) => println!("target: {n} -> {ip}"),
            (Some(ip), None) => println!("target: {ip}"),
            (None, Some(n)) => {
                println!("target: {n} (not resolved; --resolve looks up its addresses)")
            }
            (None, None) => {}
        }
        match policy
            .source
            .to_str()
            .and_then(|s| s.strip_prefix("preset:"))
        {
            Some(p) => println!(
                "policy: {} (the shipped preset; `geowall rules show {p}` prints it)",
                policy.name
            ),
            None => println!("policy: {} ({})", policy.name, policy.source.display()),
        }
        print_layers(&j);
        print_trace(&trace);
        for (p, pj, pt) in &peer_views {
            println!("peer {p} (through the relay):");
            print_layers(pj);
            print_trace(pt);
        }
        let by = match verdict.rule {
            Some((i, r)) => format!("rule {} \"{}\"", i + 1, r.name),
            None => "the default action".to_owned(),
        };
        let how = match verdict.action {
            geowall::policy::Action::Block(m) => format!(
                "BLOCK ({})",
                if m == geowall::policy::BlockMode::Drop {
                    "drop"
                } else {
                    "reject"
                }
            ),
            geowall::policy::Action::Allow => "ALLOW".to_owned(),
            geowall::policy::Action::Log => "LOG".to_owned(),
            geowall::policy::Action::Ask(a) => format!(
                "ASK (the flow is held until answered; unanswered after {} s: {})",
                a.timeout_s,
                if a.default_allow { "allow" } else { "block" }
            ),
        };
        let via = verdict
            .layer
            .map(|l| format!(" via the {} layer ({})", l.layer.name(), l.country_name()))
            .unwrap_or_default();
        let whom = verdict
            .peer
            .map(|p| format!(" for peer {p}"))
            .unwrap_or_default();
        println!("verdict: {how} by {by}{via}{whom}");
        if let Some((i, r)) = verdict.logged_by {
            println!("logged by rule {} \"{}\"", i + 1, r.name);
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn print_trace(trace: &[geowall::policy::RuleTrace]) {
    println!("rules:");
    for t in trace {
        let outcome = match (t.failed, t.layer) {
            (Some(c), _) => format!("no match ({c})"),
            (None, Some(l)) => format!("MATCH via {} {}", l.layer.name(), l.country_name()),
            (None, None) => "MATCH".to_owned(),
        };
        println!("  {:>2}. {:<50} {}", t.index + 1, t.name, outcome);
    }
}

fn print_layers(j: &Jurisdiction<'_, '_>) {
    let unknown = |local: bool| {
        if local {
            "local address (no jurisdiction)"
        } else {
            "unknown"
        }
    };
    println!("jurisdiction:");
    let geo = match j.ip {
        None => "unknown (no address)".to_owned(),
        Some(_) if j.geo.is_unknown() => unknown(j.local).to_owned(),
        Some(_) => j
            .geo_names
            .iter()
            .zip(j.geo.as_slice())
            .map(|(n, c)| format!("{n}={}", c.map_or("?".to_owned(), |c| c.to_string())))
            .collect::<Vec<_>>()
            .join(" "),
    };
    println!("  {:<8} {geo}", Layer::Geo.name());
    let net = match (j.network, j.asn) {
        (Some(c), Some(a)) => format!("{c} (AS{a} is registered there)"),
        (Some(c), None) => c.to_string(),
        (None, Some(a)) => format!("unknown (AS{a})"),
        (None, None) => {
            if j.ip.is_none() {
                "unknown (no address)".to_owned()
            } else {
                unknown(j.local).to_owned()
            }
        }
    };
    println!("  {:<8} {net}", Layer::Network.name());
    let owner = j
        .owner
        .map_or("- (not in the operator catalog)".to_owned(), |o| {
            format!("{} ({} -> {})", o.jurisdiction, o.name, o.parent)
        });
    println!("  {:<8} {owner}", Layer::Owner.name());
    let vendor = j
        .vendor
        .map_or("- (no vendor recognised)".to_owned(), |(v, ev)| {
            let how = match ev {
                geowall::intel::catalog::VendorEvidence::Domain { name, domain } => {
                    format!("name {name} is under {domain}")
                }
                geowall::intel::catalog::VendorEvidence::Asn { asn } => {
                    format!("AS{asn} is the vendor's")
                }
                geowall::intel::catalog::VendorEvidence::Signature { protocol } => {
                    format!("protocol {protocol}")
                }
            };
            format!("{} ({}; {how})", v.jurisdiction, v.name)
        });
    println!("  {:<8} {vendor}", Layer::Vendor.name());
    if let Some(e) = j.embedded {
        let geo: Vec<String> = e
            .geo
            .as_slice()
            .iter()
            .map(|c| c.map_or("?".to_owned(), |c| c.to_string()))
            .collect();
        println!(
            "  embedded {} ({:?}): geo {}, network {}{}; its countries count in every layer",
            e.ip,
            e.kind,
            geo.join("/"),
            e.network.map_or("unknown".to_owned(), |c| c.to_string()),
            e.owner
                .map(|o| format!(", owner {} ({})", o.jurisdiction, o.name))
                .unwrap_or_default()
        );
    }
}
