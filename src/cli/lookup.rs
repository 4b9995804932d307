//! `geowall lookup`.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use geowall::intel::world::LookupReport;

/// Arguments of `geowall lookup`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// IP addresses to look up (IPv4 or IPv6); `-` reads addresses from
    /// standard input, one or more per line.
    #[arg(required = true, value_name = "IP")]
    ips: Vec<String>,
    /// Print one JSON object per address instead of a table.
    #[arg(long)]
    json: bool,
    /// World database to use instead of the shipped one (also
    /// `$GEOWALL_WORLD`).
    #[arg(long, value_name = "FILE")]
    world: Option<PathBuf>,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let world = super::load_world(a.world.as_ref(), false)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut bad = 0usize;
    let mut header = !a.json;
    let mut one = |text: &str, out: &mut dyn Write| -> std::io::Result<()> {
        let Ok(ip) = text.parse::<IpAddr>() else {
            bad += 1;
            eprintln!(
                "geowall: '{text}' is not an IP address (expected e.g. 192.0.2.1 or 2001:db8::1)"
            );
            return Ok(());
        };
        let r = world.report(ip);
        if a.json {
            serde_json::to_writer(&mut *out, &r)?;
            writeln!(out)
        } else {
            if std::mem::take(&mut header) {
                writeln!(
                    out,
                    "{:<40} {:<22} {:<10} {:<7} AS ORG",
                    "IP", "GEO", "ASN", "NETWORK"
                )?;
            }
            write_row(out, &r)
        }
    };
    for arg in &a.ips {
        if arg == "-" {
            for line in std::io::stdin().lock().lines() {
                for word in line?.split_whitespace() {
                    one(word, &mut out)?;
                }
            }
        } else {
            one(arg, &mut out)?;
        }
    }
    out.flush()?;
    Ok(if bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_row(out: &mut dyn Write, r: &LookupReport) -> std::io::Result<()> {
    let dash = || "-".to_owned();
    let geo = match (r.geo_country, r.disputed) {
        (_, true) => {
            let each: Vec<String> = r
                .geo_sources
                .0
                .iter()
                .map(|(_, c)| c.map(|c| c.to_string()).unwrap_or_else(dash))
                .collect();
            format!("{} disputed", each.join("/"))
        }
        (Some(c), false) => c.to_string(),
        (None, false) => dash(),
    };
    let ip = match r.looked_up {
        Some(k) => format!("{} (as {k})", r.ip),
        None => r.ip.to_string(),
    };
    writeln!(
        out,
        "{:<40} {:<22} {:<10} {:<7} {}",
        ip,
        geo,
        r.asn.map(|a| format!("AS{a}")).unwrap_or_else(dash),
        r.network_country
            .map(|c| c.to_string())
            .unwrap_or_else(dash),
        r.as_org.as_deref().unwrap_or("-")
    )?;
    if r.disputed {
        let each: Vec<String> = r
            .geo_sources
            .0
            .iter()
            .map(|(n, c)| format!("{n} {}", c.map(|c| c.to_string()).unwrap_or_else(dash)))
            .collect();
        writeln!(out, "    disputed: {}", each.join(", "))?;
    }
    Ok(())
}
