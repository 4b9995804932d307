//! `geowall world build|info|bundle|update`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use geowall::intel::world::{BuildProgress, WorldBuilder};
use indicatif::{ProgressBar, ProgressStyle};

/// `geowall world` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Compile public data sources into a world database.
    Build {
        /// A directory with the pinned sources (see `rules/world/refresh`),
        /// or a fixture CSV file (see `tests/fixtures/world.csv`).
        #[arg(long, value_name = "DIR|CSV")]
        from: PathBuf,
        /// Where to write the database.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also write a JSON manifest (sources, versions, licences, build
        /// date, counts, SHA-256 of the database).
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// A further geolocation source: a MaxMind DB country database
        /// (GeoLite2-Country, DB-IP lite, IPinfo lite, ...), as NAME=FILE,
        /// or FILE to name it after its database type. Repeat for up to
        /// four; each is reported by name in `lookup`, disputes and
        /// `rules explain`, and a `geo` rule matches what any source says.
        #[arg(long = "geo-mmdb", value_name = "[NAME=]FILE")]
        geo_mmdb: Vec<String>,
    },
    /// Sign a world database as a world bundle, for `geowall world
    /// update` (its own sequence series, apart from rules bundles').
    Bundle {
        /// The world database (`geowall world build --out`).
        world: PathBuf,
        /// Where to write the bundle.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// Its sequence number: each update must be newer than the last.
        #[arg(long)]
        sequence: u64,
        /// The maintainer's signing key (`geowall rules keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Days until it expires (a stale bundle replayed later is refused).
        #[arg(long, default_value_t = 120)]
        valid_days: u64,
    },
    /// Write what a static web host serves to world subscribers
    /// (`--subscribe-world`) into DIR: `world-SEQUENCE.gwb`, `world.gwb`
    /// and a signed `world-index.json`. Refuses a bundle not signed by KEY
    /// or not newer than what DIR publishes.
    Publish {
        /// The signed world bundle.
        bundle: PathBuf,
        /// The directory the web host serves.
        dir: PathBuf,
        /// The secret key the bundle was signed with (signs the index).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Replace the world data of a running geowall with a signed world
    /// bundle (the instance must trust its key: `--world-pubkey`); open
    /// flows are judged again under it. A bundle that is older than the
    /// running one, expired, altered or signed by another key is refused
    /// and the running data stays.
    Update {
        /// The world bundle.
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        #[command(flatten)]
        instance: super::control::Args,
    },
    /// Describe a world database: sources, build date, age, sizes.
    Info {
        /// Database to describe instead of the shipped one.
        #[arg(long, value_name = "FILE")]
        world: Option<PathBuf>,
        /// Print the metadata as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Build {
            from,
            out,
            manifest,
            geo_mmdb,
        } => build(&from, &out, manifest.as_deref(), &geo_mmdb),
        Command::Info { world, json } => info(world.as_ref(), json),
        Command::Publish { bundle, dir, key } => super::rules::publish_to(
            &bundle,
            &dir,
            &key,
            &[geowall::policy::bundle::BundleKind::World],
        ),
        Command::Bundle {
            world,
            out,
            sequence,
            key,
            valid_days,
        } => bundle(&world, &out, sequence, &key, valid_days),
        Command::Update { bundle, instance } => {
            super::need_root(
                "world update",
                "it talks to a running geowall's control socket",
            )?;
            let path = std::fs::canonicalize(&bundle)
                .with_context(|| format!("cannot read {}", bundle.display()))?;
            let v = super::control::ask_with(
                &instance,
                serde_json::json!({"cmd": "world-update", "bundle": path}),
            )?;
            if instance.json() {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "world data updated: sequence {}, built {}",
                v["world_updated"],
                v["world_built"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `NAME=FILE` or `FILE`.
fn named_file(arg: &str) -> (Option<&str>, &Path) {
    match arg.split_once('=') {
        Some((name, file)) if !name.contains('/') && !file.is_empty() => {
            (Some(name), Path::new(file))
        }
        _ => (None, Path::new(arg)),
    }
}

fn build(
    from: &Path,
    out: &Path,
    manifest: Option<&Path>,
    geo_mmdb: &[String],
) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<34} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = |p: BuildProgress| match p {
        BuildProgress::Reading { file, done, total } => {
            bar.set_message(format!("reading {file}"));
            bar.set_length(total);
            bar.set_position(done);
        }
        BuildProgress::Counting { file, done } => {
            bar.set_message(format!("reading {file}: {done} networks"));
            bar.tick();
        }
        BuildProgress::Stage(s) => {
            bar.set_message(s.to_owned());
            bar.tick();
        }
        _ => {}
    };
    let mut b = WorldBuilder::new();
    if from.is_dir() {
        b.add_source_dir(from, &mut progress)?;
    } else {
        b.add_fixture_csv(from, &mut progress)?;
    }
    for arg in geo_mmdb {
        let (name, file) = named_file(arg);
        let name = b.add_geo_mmdb(name, file, &mut progress)?;
        bar.suspend(|| {
            eprintln!(
                "further geolocation source '{name}' from {}",
                file.display()
            );
        });
    }
    let (bytes, stats) = b.build(&mut progress)?;
    bar.finish_and_clear();
    // Check what we wrote loads before replacing the old file.
    let world = geowall::intel::World::from_vec(bytes.clone())
        .context("the built database does not validate")?;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    let sha = hex(&geowall::policy::bundle::sha256(&bytes));
    if let Some(m) = manifest {
        let doc = serde_json::json!({
            "file": out.file_name().map(|n| n.to_string_lossy().into_owned()),
            "bytes": bytes.len(),
            "sha256": sha,
            "meta": world.meta(),
        });
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        std::fs::write(m, text).with_context(|| format!("cannot write {}", m.display()))?;
    }
    eprintln!(
        "wrote {} ({:.1} MB, sha256 {}): {} IPv4 and {} IPv6 range starts (+{} finer than /64), {} records, {} ASNs",
        out.display(),
        bytes.len() as f64 / 1e6,
        &sha[..16],
        stats.v4_entries,
        stats.v6_entries,
        stats.fine_entries,
        stats.records,
        stats.asns
    );
    Ok(ExitCode::SUCCESS)
}

fn bundle(
    world: &Path,
    out: &Path,
    sequence: u64,
    key: &Path,
    valid_days: u64,
) -> anyhow::Result<ExitCode> {
    use geowall::policy::bundle;
    let db = std::fs::read(world).with_context(|| format!("cannot read {}", world.display()))?;
    let key = bundle::read_signing_key(key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + valid_days.saturating_mul(86_400);
    let signed = bundle::sign(&bundle::build_world(&db, sequence, now, expires)?, &key)?;
    std::fs::write(out, &signed).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: world bundle, sequence {sequence}, {:.1} MB, expires {}",
        out.display(),
        signed.len() as f64 / 1e6,
        geowall::timefmt::rfc3339(expires)
    );
    Ok(ExitCode::SUCCESS)
}

fn info(path: Option<&PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let w = super::load_world(path, false)?;
    let m = w.meta();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, m)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let age = super::control::days_since(&m.built_at, now)
        .map_or_else(String::new, |d| format!(" ({d} days ago)"));
    writeln!(
        out,
        "world database: {:.1} MB, built {}{age}",
        w.size_bytes() as f64 / 1e6,
        m.built_at
    )?;
    if super::control::days_since(&m.built_at, now)
        .is_some_and(|d| d > super::control::WORLD_STALE_DAYS)
    {
        writeln!(
            out,
            "WARNING: older than {} days: the internet's map moves; update it (`geowall world update` or a newer release)",
            super::control::WORLD_STALE_DAYS
        )?;
    }
    writeln!(out, "geolocation sources: {}", m.geo_sources.join(", "))?;
    writeln!(
        out,
        "AS registration country: {}; AS and organisation: {}",
        m.network_source, m.asn_source
    )?;
    writeln!(
        out,
        "{} IPv4 and {} IPv6 range starts (+{} finer than /64), {} records, {} ASNs",
        m.stats.v4_entries, m.stats.v6_entries, m.stats.fine_entries, m.stats.records, m.stats.asns
    )?;
    for s in &m.sources {
        writeln!(
            out,
            "  {:<24} {} {} ({}) sha256 {}",
            s.name, s.package, s.version, s.licence, s.sha256
        )?;
    }
    for (k, v) in &m.stats.inputs {
        writeln!(
            out,
            "  input {k:<34} {:>8} ranges, {:>5} overlapping, {:>6} unknown",
            v.ranges, v.overlapping, v.unknown
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
