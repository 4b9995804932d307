//! `geowall audit`: replay a capture through the engine's flow table,
//! classifier and policy, and report every flow.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use geowall::engine::dataplane::{DropReason, fact_names};
use geowall::engine::{Flow, Inspector};
use geowall::intel::jurisdiction::Intel;
use geowall::policy::Policy;
use geowall::wire::capture::CaptureStream;
use geowall::wire::packet::strip_link;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `geowall audit`. The rules options are the running
/// commands', told as an audit uses them: it fetches nothing, so a
/// subscription's URL names the bundle kept in the state directory, and
/// the options that only steer fetching are not shown.
#[derive(clap::Args)]
#[command(
    mut_arg("subscribe", |a| a.help(
        "Judge with the rules bundle the subscription keeps in --state-dir \
         (the last one `run`, `tunnel` or `exec` accepted), verified again \
         with --pubkey; nothing is fetched"
    )),
    mut_arg("subscribe_world", |a| a.help(
        "Use the world data bundle this subscription keeps in --state-dir, \
         verified again with --world-pubkey; nothing is fetched"
    )),
    mut_arg("subscribe_list", |a| a.help(
        "Use the list bundle NAME this subscription keeps in --state-dir, \
         as NAME=URL (repeatable; each needs --list-pubkey NAME=FILE); \
         nothing is fetched"
    )),
    mut_arg("world_pubkey", |a| a.help(
        "The key the world bundle kept in --state-dir must be signed with \
         (repeatable); without one, --world or the shipped data is used"
    )),
    mut_arg("state_dir", |a| a.help(
        "Where `run`, `tunnel` or `exec` keep the bundles they accepted: \
         read for the subscriptions; a --bundle older than the one \
         recorded there is refused, as at start"
    )),
    mut_arg("subscribe_every", |a| a.hide(true)),
    mut_arg("subscribe_ca", |a| a.hide(true)),
)]
pub(crate) struct Args {
    /// A pcap or pcapng capture, plain or gzip/zstd-compressed; `-` reads
    /// standard input. Read as a stream: memory does not grow with the
    /// capture's size.
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
    a.rules.kept_only()?;
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

    let input = open_capture(&a.file)?;
    let mut cap = CaptureStream::new(input.reader);
    let mut insp = Inspector::new(a.max_flows, leak);
    // Drawn only on a terminal, and only once the work has taken a second;
    // a stream of unknown size gets a spinner with the counts.
    let bar = ProgressBar::with_draw_target(input.size, ProgressDrawTarget::hidden());
    let template = match input.size {
        Some(_) => "{spinner} reading [{bar:30}] {bytes}/{total_bytes} {msg}",
        None => "{spinner} reading {bytes} {msg}",
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let mut shown = false;
    let (mut frames, mut other_links) = (0u64, 0u64);
    let mut damaged = None;
    let mut last_ts = 0;
    while let Some(f) = cap.next_frame() {
        match f {
            Ok(f) => {
                frames += 1;
                last_ts = f.ts_nanos;
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
        if frames % 8192 == 0 {
            if !shown && started.elapsed() >= std::time::Duration::from_secs(1) {
                shown = true;
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            bar.set_position(input.read.load(Ordering::Relaxed));
            bar.set_message(format!("{frames} packets, {} flows", insp.flows().len()));
        }
    }
    bar.finish_and_clear();
    // TCP bytes still waiting for a segment the capture never had.
    insp.finish(last_ts);

    // Each flow's row is written as it is made; only the HTML report
    // keeps them all.
    let mut rows: Vec<Row> = Vec::new();
    let (mut blocked, mut leaking) = (0usize, 0usize);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !a.json {
        writeln!(
            out,
            "{:<5} {:<8} {:<6} {:<6} {:<6} {:<6} {:<6} {:>13} {:>19} {:<7} {:<30} CLIENT -> SERVER, WHY, LEAKS",
            "PROTO",
            "PROTOCOL",
            "CLASS",
            "GEO",
            "NET",
            "OWNER",
            "VENDOR",
            "PKTS UP/DOWN",
            "BYTES UP/DOWN",
            "VERDICT",
            "SERVER NAME"
        )?;
    }
    for f in insp.flows() {
        let r = row(f, &intel, &policy);
        blocked += usize::from(r.blocked);
        leaking += usize::from(!r.leaks.is_empty());
        if a.json {
            serde_json::to_writer(&mut out, &r.json)?;
            writeln!(out)?;
        } else {
            // The columns of fixed width first; addresses (IPv6 ones are
            // long), the reason and the leaks after them.
            let mut line = format!(
                "{:<5} {:<8} {:<6} {:<6} {:<6} {:<6} {:<6} {:>13} {:>19} {:<7} {:<30} {} -> {}",
                r.proto,
                r.protocol,
                r.class,
                r.layers[0],
                r.layers[1],
                r.layers[2],
                r.layers[3],
                format!("{}/{}", r.packets.0, r.packets.1),
                format!("{}/{}", r.bytes.0, r.bytes.1),
                if r.blocked { "BLOCK" } else { "allow" },
                r.server_name.as_deref().unwrap_or("-"),
                r.client,
                r.server,
            );
            if let Some(rule) = &r.rule {
                line.push_str(&format!("  rule \"{rule}\""));
                if let Some(why) = &r.why {
                    line.push_str(&format!(" ({why})"));
                }
            }
            if !r.refused_peers.is_empty() {
                line.push_str(&format!("  peers refused: {}", r.refused_peers.join(", ")));
            }
            if !r.leaks.is_empty() {
                let leaks: Vec<String> = r
                    .leaks
                    .iter()
                    .map(|l| format!("{} ({})", l.0, l.1))
                    .collect();
                line.push_str(&format!("  leaks: {}", leaks.join(", ")));
            }
            writeln!(out, "{line}")?;
        }
        if a.html.is_some() {
            rows.push(r);
        }
    }
    out.flush()?;
    let c = &insp.counters;
    let not_ip = DropReason::Packet(geowall::wire::packet::Drop::NotIp);
    eprintln!(
        "{}: {frames} frames, {} flows ({} would be blocked under '{}', {} with identifier leaks); {} fragments ({} datagrams reassembled); TCP read in stream order ({} retransmitted segments read once, {} early ones waited, {} gaps the capture never filled); not inspected: {} non-IP frames, {} other IP protocols, {} malformed or discarded (overlapping, incomplete, ...), {} flows over the limit",
        a.file.display(),
        insp.flows().len(),
        blocked,
        policy.name,
        leaking,
        c.fragments,
        c.reassembled,
        c.tcp_retransmitted,
        c.tcp_early,
        c.tcp_gaps,
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
            "geowall: WARNING: {}: {e}; the flows above are from the {frames} frames before it",
            a.file.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// A capture opened for reading: its bytes (decompressed), how many of the
/// underlying file's bytes have been read, and the file's size if known.
struct Input {
    reader: Box<dyn Read>,
    read: Arc<AtomicU64>,
    size: Option<u64>,
}

/// Counts the bytes read from the file (before decompression), for the
/// progress bar.
struct Counting<R>(R, Arc<AtomicU64>);

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens `path` (`-` for standard input), decompressing gzip and zstd
/// captures, recognised by their magic numbers rather than their names.
fn open_capture(path: &Path) -> anyhow::Result<Input> {
    let read = Arc::new(AtomicU64::new(0));
    let (raw, size): (Box<dyn Read>, Option<u64>) = if path == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let size = f.metadata().ok().map(|m| m.len()).filter(|n| *n > 0);
        (Box::new(f), size)
    };
    let mut buf = BufReader::with_capacity(1 << 16, Counting(raw, read.clone()));
    let head = buf
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let reader: Box<dyn Read> = match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            zstd::stream::read::Decoder::with_buffer(buf)
                .with_context(|| format!("{}: cannot start zstd", path.display()))?,
        ),
        _ => Box::new(buf),
    };
    Ok(Input { reader, read, size })
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
    /// Each layer's countries (geo, network, owner, vendor), `-` for none.
    pub(crate) layers: [String; 4],
    /// Packets and bytes, client to server and back.
    pub(crate) packets: (u64, u64),
    pub(crate) bytes: (u64, u64),
    pub(crate) blocked: bool,
    pub(crate) rule: Option<String>,
    /// The layer and country that made the deciding rule match.
    pub(crate) why: Option<String>,
    /// (label, encoding, offset).
    pub(crate) leaks: Vec<(String, String, u64)>,
    /// The relay's peers the live engine would have refused (their TURN
    /// messages dropped, the relay going on), each with its rule and layer.
    pub(crate) refused_peers: Vec<String>,
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
    let (v, refused) = f.judge_relayed(policy, intel);
    let peer_jurisdiction =
        |p: &std::net::SocketAddr| intel.jurisdiction(policy.catalog(), Some(p.ip()), &[], None);
    let mut countries: Vec<String> = Vec::new();
    for l in geowall::intel::Layer::ALL {
        for c in j.countries(l).into_iter().flatten() {
            let s = c.to_string();
            if !countries.contains(&s) {
                countries.push(s);
            }
        }
    }
    let layers = geowall::intel::Layer::ALL.map(|l| {
        let cs: Vec<String> = j
            .countries(l)
            .into_iter()
            .flatten()
            .map(|c| c.to_string())
            .collect();
        if cs.is_empty() {
            "-".to_owned()
        } else {
            cs.join(",")
        }
    });
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
        "packets_up": f.core.volume.packets_up,
        "packets_down": f.core.volume.packets_down,
        "bytes_up": f.core.volume.bytes_up,
        "bytes_down": f.core.volume.bytes_down,
        "protocol": f.core.sniffer.protocol.map(|p| p.name()),
        "class": f.core.sniffer.class_now().name(),
        "server_name": f.core.sniffer.server_name,
        "hosts": f.core.hosts,
        "names": f.core.ctx.names,
        "encrypted": f.core.sniffer.encryption(),
        "jurisdiction": j.to_json(),
        "peers": f.core.peers.iter().filter(|p| !refused.iter().any(|(r, _)| r == *p)).map(|p| serde_json::json!({
            "peer": p,
            "jurisdiction": peer_jurisdiction(p).to_json(),
        })).collect::<Vec<_>>(),
        "peers_refused": refused.iter().map(|(p, rv)| serde_json::json!({
            "peer": p,
            "jurisdiction": peer_jurisdiction(p).to_json(),
            "verdict": rv.to_json(),
            "rule": rv.rule.map(|(_, r)| r.name.as_str()),
        })).collect::<Vec<_>>(),
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
        layers,
        packets: (f.core.volume.packets_up, f.core.volume.packets_down),
        bytes: (f.core.volume.bytes_up, f.core.volume.bytes_down),
        blocked: v.is_block(),
        rule: v.rule.map(|(_, r)| r.name.clone()),
        why: v.layer.map(|l| {
            let whom = v.peer.map(|p| format!(" (peer {p})")).unwrap_or_default();
            format!("{} layer: {}{whom}", l.layer.name(), l.country_name())
        }),
        refused_peers: refused
            .iter()
            .map(|(p, rv)| {
                let rule = rv
                    .rule
                    .map_or("the policy's default", |(_, r)| r.name.as_str());
                let why = rv
                    .layer
                    .map(|l| format!(", {} layer: {}", l.layer.name(), l.country_name()))
                    .unwrap_or_default();
                format!("{p} (rule \"{rule}\"{why})")
            })
            .collect(),
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
