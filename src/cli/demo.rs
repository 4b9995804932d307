//! `geowall demo`: the firewall at work in a sandbox of its own, with no
//! internet and without touching the machine's network. It builds three
//! network namespaces (an app, the firewall, a private "internet" with
//! servers on documentation addresses), a world database that places those
//! addresses in CN, HK, US and DE, runs `geowall tunnel` with the
//! `clubhouse` preset, and plays a Clubhouse-like app: signalling to a US
//! API, SD-RTN pings carrying the user's ID in cleartext to edges in CN, HK
//! and the US (one on a US-located network of a PRC operator), media to a
//! CN and a US relay, ICMP pings. Decisions show as they happen; a summary
//! counts what reached each server, on the server's side. Everything it
//! created is removed at the end, also on Ctrl-C.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use geowall::intel::world::WorldBuilder;

/// The sandbox's world (the same as the tests' fixture).
const WORLD_CSV: &str = include_str!("../../tests/fixtures/world.csv");
/// The user ID the app leaks.
const USER_ID: &str = "4815162342";

/// Addresses (see `tests/fixtures/world.csv`).
const API_US: &str = "198.51.100.10";
const EDGE_CN: &str = "203.0.113.10";
const EDGE_HK: &str = "203.0.113.200";
const EDGE_US: &str = "198.51.100.20";
const EDGE_US_PRC_NET: &str = "192.0.2.10";
const RELAY_US: &str = "198.51.100.30";

/// Arguments of `geowall demo`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Keep the decisions as JSON lines in FILE too.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
}

/// The namespaces, removed on drop.
struct Sandbox {
    names: [String; 3],
    stop: Arc<AtomicBool>,
    geowall: Option<Child>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.geowall.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("no namespace {ns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter namespace {ns}"))
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| enter(ns).map(|()| f()))
            .join()
            .map_err(|_| anyhow::anyhow!("a sandbox thread failed"))?
    })
}

type Counts = Arc<Mutex<HashMap<(IpAddr, u8, u16), u64>>>;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), port)
}

/// One step of the scripted app.
struct Step {
    what: &'static str,
    dst: &'static str,
    proto: u8,
    port: u16,
    /// Whether the app got an answer.
    answered: bool,
    /// Whether the clubhouse preset must block it.
    blocked: bool,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    super::need_root(
        "demo",
        "it builds network namespaces and a TUN device of its own; nothing on your network is touched",
    )?;
    let id = std::process::id();
    let names = [
        format!("gwdemo{id}a"),
        format!("gwdemo{id}f"),
        format!("gwdemo{id}n"),
    ];
    let [app, fw, net] = names.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut sandbox = Sandbox {
        names: names.clone(),
        stop: stop.clone(),
        geowall: None,
    };
    // Ctrl-C: remove everything, then leave.
    {
        let names = names.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            for n in &names {
                let _ = Command::new("ip").args(["netns", "del", n]).output();
            }
            eprintln!("\ngeowall demo: interrupted; the sandbox is removed");
            std::process::exit(130);
        });
    }
    println!(
        "Building the sandbox: namespaces {app} (the phone), {fw} (geowall), {net} (the internet)"
    );
    for n in &names {
        super::ip(&["netns", "add", n])?;
        super::ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    let (vf, vn) = (format!("gwd{id}f"), format!("gwd{id}n"));
    super::ip(&[
        "link", "add", &vf, "netns", &fw, "type", "veth", "peer", "name", &vn, "netns", &net,
    ])?;
    super::ip(&["-n", &fw, "addr", "add", "198.18.0.1/30", "dev", &vf])?;
    super::ip(&["-n", &net, "addr", "add", "198.18.0.2/30", "dev", &vn])?;
    super::ip(&["-n", &fw, "link", "set", &vf, "up"])?;
    super::ip(&["-n", &net, "link", "set", &vn, "up"])?;
    super::ip(&["-n", &fw, "route", "add", "default", "via", "198.18.0.2"])?;
    for s in [API_US, EDGE_CN, EDGE_HK, EDGE_US, EDGE_US_PRC_NET, RELAY_US] {
        super::ip(&["-n", &net, "addr", "add", &format!("{s}/32"), "dev", "lo"])?;
    }
    for n in [&fw, &app] {
        in_ns(n, || {
            std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        })?
        .context("cannot allow ping sockets in the sandbox")?;
    }

    // The sandbox's world database.
    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let csv = dir.path().join("world.csv");
    std::fs::write(&csv, WORLD_CSV)?;
    let mut b = WorldBuilder::new();
    b.add_fixture_csv(&csv, &mut |_| {})?;
    let world = dir.path().join("world.gwdb");
    std::fs::write(&world, b.build(&mut |_| {})?.0)?;

    // Servers, and a packet counter on the internet's side.
    let counts: Counts = Counts::default();
    start_counter(&net, stop.clone(), counts.clone())?;
    let tcp = in_ns(&net, || TcpListener::bind(sa(API_US, 443)))??;
    serve_tcp(tcp, stop.clone());
    for (s, port) in [
        (EDGE_CN, 4001),
        (EDGE_HK, 4001),
        (EDGE_US, 4001),
        (EDGE_US_PRC_NET, 4001),
        (EDGE_CN, 5004),
        (RELAY_US, 5004),
    ] {
        let u = in_ns(&net, || UdpSocket::bind(sa(s, port)))??;
        serve_udp(u, stop.clone());
    }

    // geowall.
    let events = a
        .events
        .clone()
        .unwrap_or_else(|| dir.path().join("events.jsonl"));
    let tun = format!("gwd{id}t");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &fw])
        .arg(std::env::current_exe().context("cannot find this program")?)
        .args(["tunnel", "--tun", &tun, "--netns", &app, "--default-route"])
        .args(["--address", "198.18.1.2/24", "--preset", "clubhouse"])
        .args(["--dns-upstream", "udp:198.51.100.53"])
        .args(["--identifier", &format!("user_id={USER_ID}")])
        .arg("--world")
        .arg(&world)
        .arg("--events")
        .arg(&events)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start geowall tunnel")?;
    let mut err = std::io::BufReader::new(child.stderr.take().context("stderr")?);
    sandbox.geowall = Some(child);
    let mut line = String::new();
    let _ = err.read_line(&mut line);
    anyhow::ensure!(
        line.contains(" up in netns"),
        "geowall did not start: {line}"
    );
    println!("geowall is up with the clubhouse preset, watching for user_id={USER_ID}\n");

    // Decisions, as geowall logs them.
    let tail = {
        let (events, stop) = (events.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = 0usize;
            loop {
                let done = stop.load(Ordering::SeqCst);
                let text = std::fs::read_to_string(&events).unwrap_or_default();
                for l in text.lines().skip(seen) {
                    seen += 1;
                    print_event(l);
                }
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // The app.
    let steps = in_ns(&app, play)?;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let _ = tail.join();
    println!();
    println!("Summary (packets counted on the servers' side):");
    println!(
        "  {:<42} {:<16} {:>8}  app got an answer",
        "what", "server", "packets"
    );
    let c = counts.lock().map(|c| c.clone()).unwrap_or_default();
    let mut ok = true;
    for s in &steps {
        let n = c
            .get(&(
                s.dst.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                s.proto,
                s.port,
            ))
            .copied()
            .unwrap_or(0);
        println!(
            "  {:<42} {:<16} {:>8}  {}",
            s.what,
            s.dst,
            n,
            if s.answered { "yes" } else { "no" }
        );
        ok &= if s.blocked { n == 0 } else { n > 0 };
    }
    drop(sandbox);
    println!();
    if ok {
        println!(
            "Nothing of the pings, media or leaked user ID reached a server under PRC jurisdiction; the US API, the US media relay and the ping to the US went through. The sandbox is removed."
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("Unexpected: see the table above. The sandbox is removed.");
        Ok(ExitCode::from(1))
    }
}

/// The scripted Clubhouse-like app.
fn play() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut step = |what, dst, proto, port, blocked, answered| {
        println!(
            "  app: {what:<42} -> {dst:<15} {}",
            if answered { "answered" } else { "no answer" }
        );
        steps.push(Step {
            what,
            dst,
            proto,
            port,
            answered,
            blocked,
        });
    };
    // Signalling: a TLS ClientHello to the API.
    let answered = TcpStream::connect_timeout(&sa(API_US, 443), Duration::from_secs(3))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(&geowall::wire::tls::client_hello_record(
                "api.clubhouse.example",
            ))?;
            let mut b = [0u8; 16];
            s.read(&mut b)
        })
        .is_ok_and(|n| n > 0);
    step(
        "signalling (TLS) to the US API",
        API_US,
        6,
        443,
        false,
        answered,
    );
    // SD-RTN pings with the user ID in cleartext.
    // All blocked: the vendor (Agora) is a PRC company, whatever the
    // address; the edges in CN and HK and the PRC-operated US network too.
    for (what, dst) in [
        ("SD-RTN ping + user ID to CN edge", EDGE_CN),
        ("SD-RTN ping + user ID to HK edge", EDGE_HK),
        ("SD-RTN ping + user ID to US edge", EDGE_US),
        ("SD-RTN ping + user ID to PRC-run US edge", EDGE_US_PRC_NET),
    ] {
        let p = sd_rtn("1-2-3-4.edge.agora.io", USER_ID);
        step(what, dst, 17, 4001, true, udp(dst, 4001, &p));
    }
    // Media.
    step(
        "RTP media to CN relay",
        EDGE_CN,
        17,
        5004,
        true,
        media(EDGE_CN, 5004),
    );
    step(
        "RTP media to US relay",
        RELAY_US,
        17,
        5004,
        false,
        media(RELAY_US, 5004),
    );
    // ICMP.
    step("ICMP ping to the US API", API_US, 1, 0, false, ping(API_US));
    step("ICMP ping to CN edge", EDGE_CN, 1, 0, true, ping(EDGE_CN));
    steps
}

fn print_event(line: &str) {
    let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    if e["kind"] == "closed" {
        return;
    }
    let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
    println!(
        "    geowall: {:<7} {:<4} {:<20} {:<5} {:<7} {}{}{}",
        s("kind"),
        s("proto"),
        s("server"),
        s("class"),
        s("protocol"),
        e["rule"]
            .as_str()
            .map(|r| format!("\"{r}\""))
            .unwrap_or_default(),
        e["layer"]
            .as_str()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default(),
        e["leaks"]
            .as_array()
            .filter(|l| !l.is_empty())
            .map(|l| format!(
                " leak: {}",
                l.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .unwrap_or_default(),
    );
}

fn udp(dst: &str, port: u16, payload: &[u8]) -> bool {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut b = [0u8; 2048];
    s.send_to(payload, sa(dst, port)).is_ok() && s.recv_from(&mut b).is_ok()
}

/// A call's first audio: five RTP packets of one stream, 20 ms apart,
/// from one socket; true if the server answered any.
fn media(dst: &str, port: u16) -> bool {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    for seq in 1..=5 {
        if s.send_to(&geowall::wire::rtc::rtp_packet(seq), sa(dst, port))
            .is_err()
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut b = [0u8; 2048];
    s.recv_from(&mut b).is_ok()
}

fn ping(dst: &str) -> bool {
    let Ok(s) = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::ICMPV4),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let pkt = [8u8, 0, 0, 0, 0, 0, 0, 1, b'g', b'w'];
    let mut b = [0u8; 256];
    s.send_to(&pkt, &sa(dst, 0).into()).is_ok() && (&s).read(&mut b).is_ok()
}

/// An SD-RTN-shaped probe naming `host`, with `id` after it.
fn sd_rtn(host: &str, id: &str) -> Vec<u8> {
    let mut p = geowall::wire::rtc::sd_rtn_probe(host);
    p.extend_from_slice(b"uid=");
    p.extend_from_slice(id.as_bytes());
    p
}

fn serve_tcp(l: TcpListener, stop: Arc<AtomicBool>) {
    let _ = l.set_nonblocking(true);
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut b = [0u8; 4096];
                    if c.read(&mut b).is_ok_and(|n| n > 0) {
                        let _ = c.write_all(b"hello from the API");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

fn serve_udp(u: UdpSocket, stop: Arc<AtomicBool>) {
    let _ = u.set_read_timeout(Some(Duration::from_millis(50)));
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = u.recv_from(&mut b) {
                let _ = u.send_to(&b[..n], from);
            }
        }
    });
}

/// Counts every IP packet seen in namespace `ns`, by destination address,
/// protocol and port.
fn start_counter(ns: &str, stop: Arc<AtomicBool>, counts: Counts) -> anyhow::Result<()> {
    let s = in_ns(ns, || {
        socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(0x0300)),
        )
    })?
    .context("cannot open a packet socket")?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while !stop.load(Ordering::SeqCst) {
            let Ok(n) = (&s).read(&mut buf) else {
                continue;
            };
            if n < 14 {
                continue;
            }
            if let Ok(p) = geowall::wire::packet::parse_ip(&buf[14..n]) {
                use geowall::wire::packet::Transport as T;
                let (proto, port) = match p.transport {
                    T::Tcp { dport, .. } => (6, dport),
                    T::Udp { dport, .. } => (17, dport),
                    T::Icmp { .. } => (1, 0),
                    _ => (0, 0),
                };
                if let Ok(mut c) = counts.lock() {
                    *c.entry((p.dst, proto, port)).or_insert(0) += 1;
                }
            }
        }
    });
    Ok(())
}
