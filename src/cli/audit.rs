//! `geowall audit`: replay a capture through the engine's flow table,
//! classifier and policy, and report every flow.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use geowall::engine::dataplane::{DropReason, fact_names};
use geowall::engine::{Flow, Inspector};
use geowall::intel::jurisdiction::Intel;
use geowall::policy::Policy;
use geowall::wire::capture::Capture;
use geowall::wire::packet::strip_link;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `geowall audit`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// A pcap or pcapng capture.
    file: PathBuf,
    #[command(flatten)]
    rules: super::source::RulesArgs,
    /// One JSON object per flow.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report (map, blocks, leaks).
    #[arg(long, value_name = "OUT.html")]
    html: Option<PathBuf>,
    /// The most flows to track (more are counted and skipped).
    #[arg(long, default_value_t = 1_000_000)]
    max_flows: usize,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let super::source::Loaded {
        policy,
        leak,
        world,
        note,
        ..
    } = a.rules.load(false)?;
    if let Some(n) = note {
        eprintln!("geowall: WARNING: {n}");
    }
    let intel = Intel::new(world);

    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let cap = Capture::new(&bytes).with_context(|| format!("{}", a.file.display()))?;
    let mut insp = Inspector::new(a.max_flows, leak);
    let bar = ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} reading [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut frames, mut other_links) = (0u64, 0u64);
    let mut damaged = None;
    for f in cap {
        match f {
            Ok(f) => {
                frames += 1;
                if frames % 4096 == 0 {
                    bar.set_position(
                        (f.data.as_ptr() as usize).saturating_sub(bytes.as_ptr() as usize) as u64,
                    );
                }
                match strip_link(f.link, f.data) {
                    Ok(ip) => {
                        insp.on_ip(ip, f.ts_nanos);
                    }
                    Err(_) => other_links += 1,
                }
            }
            Err(e) => {
                damaged = Some(e);
                break;
            }
        }
    }
    bar.finish_and_clear();

    let rows: Vec<Row> = insp
        .flows()
        .iter()
        .map(|f| row(f, &intel, &policy))
        .collect();
    let blocked = rows.iter().filter(|r| r.blocked).count();
    let leaking = rows.iter().filter(|r| !r.leaks.is_empty()).count();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !a.json {
        writeln!(
            out,
            "{:<5} {:<47} {:<8} {:<6} {:<34} {:<14} {:<7} LEAKS",
            "PROTO",
            "CLIENT -> SERVER",
            "PROTOCOL",
            "CLASS",
            "SERVER NAME",
            "JURISDICTION",
            "VERDICT"
        )?;
    }
    for r in &rows {
        if a.json {
            serde_json::to_writer(&mut out, &r.json)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{:<5} {:<47} {:<8} {:<6} {:<34} {:<14} {:<7} {}",
                r.proto,
                format!("{} -> {}", r.client, r.server),
                r.protocol,
                r.class,
                r.server_name.as_deref().unwrap_or("-"),
                if r.countries.is_empty() {
                    "-".to_owned()
                } else {
                    r.countries.join(",")
                },
                if r.blocked { "BLOCK" } else { "allow" },
                r.leaks
                    .iter()
                    .map(|l| format!("{} ({})", l.0, l.1))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
    }
    out.flush()?;
    let c = &insp.counters;
    let not_ip = DropReason::Packet(geowall::wire::packet::Drop::NotIp);
    eprintln!(
        "{}: {frames} frames, {} flows ({} would be blocked under '{}', {} with identifier leaks); {} fragments ({} datagrams reassembled); not inspected: {} non-IP frames, {} other IP protocols, {} malformed or discarded (overlapping, incomplete, ...), {} flows over the limit",
        a.file.display(),
        insp.flows().len(),
        blocked,
        policy.name,
        leaking,
        c.fragments,
        c.reassembled,
        other_links + c.drops.get(&not_ip).copied().unwrap_or(0),
        c.other_protocols,
        c.drops
            .iter()
            .filter(|(k, _)| **k != not_ip)
            .map(|(_, v)| v)
            .sum::<u64>(),
        c.refused_flows
    );
    if let Some(path) = &a.html {
        let title = a
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let html = super::report::html(&title, &policy.name, &rows, c);
        std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(e) = damaged {
        eprintln!(
            "geowall: {}: {e}; the flows above are from the frames before it",
            a.file.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One flow, ready for every output format.
pub(crate) struct Row {
    pub(crate) json: serde_json::Value,
    pub(crate) proto: &'static str,
    pub(crate) client: String,
    pub(crate) server: String,
    pub(crate) protocol: &'static str,
    pub(crate) class: &'static str,
    pub(crate) server_name: Option<String>,
    /// Every country any jurisdiction layer names.
    pub(crate) countries: Vec<String>,
    /// Where the server is (each geolocation source).
    pub(crate) geo: Vec<String>,
    pub(crate) blocked: bool,
    pub(crate) rule: Option<String>,
    /// The layer and country that made the deciding rule match.
    pub(crate) why: Option<String>,
    /// (label, encoding, offset).
    pub(crate) leaks: Vec<(String, String, u64)>,
}

fn row(f: &Flow, intel: &Intel, policy: &Policy) -> Row {
    // The names and the verdict as the live engine has them: the flow's
    // own name, then those DNS answers in the capture tied to its server.
    let names = fact_names(&f.core);
    // With the policy's catalogs, as its verdict sees them.
    let j = intel.jurisdiction(
        policy.catalog(),
        Some(f.core.server.ip()),
        &names,
        f.core.sniffer.protocol.map(|p| p.name()),
    );
    let v = f.judge(policy, intel);
    let mut countries: Vec<String> = Vec::new();
    for l in geowall::intel::Layer::ALL {
        for c in j.countries(l).into_iter().flatten() {
            let s = c.to_string();
            if !countries.contains(&s) {
                countries.push(s);
            }
        }
    }
    let geo = j
        .countries(geowall::intel::Layer::Geo)
        .into_iter()
        .flatten()
        .map(|c| c.to_string())
        .collect();
    let json = serde_json::json!({
        "proto": proto_name(f.proto),
        "src": f.core.client.to_string(),
        "dst": f.core.server.to_string(),
        "packets_up": f.packets_up,
        "packets_down": f.packets_down,
        "bytes_up": f.bytes_up,
        "bytes_down": f.bytes_down,
        "protocol": f.core.sniffer.protocol.map(|p| p.name()),
        "class": f.core.sniffer.class_now().name(),
        "server_name": f.core.sniffer.server_name,
        "names": f.core.ctx.names,
        "encrypted": f.core.sniffer.encryption(),
        "jurisdiction": j.to_json(),
        "verdict": v.to_json(),
        "rule": v.rule.map(|(_, r)| r.name.as_str()),
        "leaks": f.core.leaks,
    });
    Row {
        json,
        proto: proto_name(f.proto),
        client: f.core.client.to_string(),
        server: f.core.server.to_string(),
        protocol: f.core.sniffer.protocol.map_or("-", |p| p.name()),
        class: f.core.sniffer.class_now().name(),
        server_name: f.core.sniffer.server_name.clone(),
        countries,
        geo,
        blocked: v.is_block(),
        rule: v.rule.map(|(_, r)| r.name.clone()),
        why: v
            .layer
            .map(|l| format!("{} layer: {}", l.layer.name(), l.country_name())),
        leaks: f
            .core
            .leaks
            .iter()
            .map(|l| {
                let enc = serde_json::to_value(l.encoding)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (l.label.clone(), enc, l.offset)
            })
            .collect(),
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmp6",
        _ => "ip",
    }
}
