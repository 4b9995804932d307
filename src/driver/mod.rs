//! The IO around the sans-IO engine: a TUN device read and written on
//! tokio, real upstream sockets (kept out of the TUN, see [`protect`]), and
//! the engine's clock.
//!
//! One task runs the engine loop: it reads packets from the TUN in
//! batches, feeds them to the [`Engine`] with the time, and carries out
//! what the engine asks ([`Output`]): packets back to the TUN, upstream
//! sockets opened, written, closed (each flow's socket is a small task of
//! its own, [`upstream`]), events to the caller. Everything runs on the
//! caller's tokio runtime; a current-thread runtime is enough and is what
//! `geowall tunnel` uses.
//!
//! **Fail-closed.** The driver forwards nothing by itself: every byte that
//! leaves goes through a socket the engine asked for. If the process dies,
//! the TUN's file descriptor closes and the kernel deletes the device with
//! its routes; an app namespace whose only interface was the TUN (as
//! `geowall tunnel --netns` and `geowall exec` set up) is then left with no
//! route at all, so nothing leaves until geowall is back.

pub mod ask;
pub mod attribution;
pub mod dns;
pub mod fetch;
pub mod procs;
pub mod protect;
pub mod setup;
pub mod sockdiag;
pub mod subscribe;
pub mod tun;
pub mod upstream;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::engine::Volume;
use crate::engine::dataplane::{Engine, EngineCounters, Event, FlowId, Output};
use attribution::{Attribution, AttributionCounters};
pub use protect::{Protection, SocketProtector};
pub use tun::{Tun, TunSpec};
use upstream::{Cmd, Shared, Up};

/// Packets read from the TUN before the loop looks at anything else.
const TUN_BATCH: usize = 64;
/// Reports from upstream tasks handled before the loop looks elsewhere.
const REPORT_BATCH: usize = 64;
/// How often the upstream's default routes are looked at again (a network
/// that changed: Wi-Fi to mobile data, IPv6 that came or went).
const ROUTE_CHECK: Duration = Duration::from_secs(2);

/// Threads beside the loop's own for blocking work kept off it (reading
/// the host's resolver settings).
pub const BLOCKING_THREADS: usize = 4;

/// Upstream tasks run before the runtime looks for I/O again, and so
/// before the loop reads the TUN again (tokio's default is 61). A new
/// flow's task connects its socket in its first run, and on a fast path
/// that system call carries the whole handshake: with tokio's default, a
/// burst of flows opened together (owners found at once under `geowall
/// run`) held a new connection's SYN for 2.5 to 3.8 ms.
pub const EVENT_INTERVAL: u32 = 8;

/// The runtime [`run`] is meant for: the loop on the calling thread, and at
/// most [`BLOCKING_THREADS`] more for blocking system calls.
///
/// # Errors
/// The runtime cannot be made (no threads, no epoll).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
}

/// Which families the protected sockets have a default route for: a
/// route lookup (no packet) to a documentation address of each (RFC 5737,
/// RFC 3849), which only a default route (or one as wide) covers.
fn default_routes(p: &Protection) -> crate::engine::dataplane::UpstreamRoutes {
    use std::net::{Ipv4Addr, Ipv6Addr};
    crate::engine::dataplane::UpstreamRoutes {
        v4: p.has_route(Ipv4Addr::new(192, 0, 2, 1).into()),
        v6: p.has_route(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into()),
    }
}

/// A flow's upstream side, as the loop sees it.
struct Link {
    /// Commands (in `shared.cmds`) and flow-control counts, shared with
    /// the flow's task.
    shared: Arc<Shared>,
    /// Server bytes the app's window could not take yet.
    down: VecDeque<Vec<u8>>,
    /// The server closed; tell the app once `down` is empty.
    eof: bool,
}

impl Drop for Link {
    /// The loop is done with the flow: its task ends.
    fn drop(&mut self) {
        self.shared.cmds.close();
    }
}

/// What a running engine shows the outside (refreshed about every 100 ms).
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Flows in the table now.
    pub flows: usize,
    /// The engine's counters.
    pub counters: EngineCounters,
    /// DNS answers cached now.
    pub dns_cached: usize,
    /// Payload bytes relayed to servers.
    pub bytes_up: u64,
    /// Payload bytes relayed from servers.
    pub bytes_down: u64,
    /// The open flows' packets and bytes by app (the platform's name for
    /// it, or `-` when unknown), most bytes first, at most
    /// [`OPEN_TOP`]; refreshed about every second.
    pub open_by_app: Volumes,
    /// The same by destination ([`crate::engine::FlowCore::destination`]),
    /// of the flows not blocked.
    pub open_by_destination: Volumes,
    /// The same, of the flows blocked (at their start, or cut later): what
    /// their apps sent, which was not relayed (a cut flow's bytes before
    /// the cut were).
    pub open_blocked_by_destination: Volumes,
    /// The questions of `ask` rules waiting for an answer, oldest first
    /// (at most [`crate::engine::dataplane::ask::MAX_PROMPTS`]).
    pub waiting: Vec<(
        crate::engine::dataplane::PromptId,
        crate::engine::dataplane::Prompt,
    )>,
}

/// Packets and bytes by app or by destination, most bytes first.
pub type Volumes = Vec<(String, Volume)>;

/// How many apps and destinations [`Live`] keeps of the open flows.
pub const OPEN_TOP: usize = 32;

/// The open flows' volumes added up by app, by destination (flows not
/// blocked) and by destination of the blocked ones, the [`OPEN_TOP`]
/// largest of each.
fn open_volumes(engine: &Engine) -> (Volumes, Volumes, Volumes) {
    let mut apps: HashMap<&str, Volume> = HashMap::new();
    let mut dests: HashMap<String, Volume> = HashMap::new();
    let mut blocked: HashMap<String, Volume> = HashMap::new();
    for f in engine.open_flows() {
        apps.entry(f.ctx.app.as_deref().unwrap_or("-"))
            .or_default()
            .add(&f.volume);
        let to = if f.blocked.is_some() {
            &mut blocked
        } else {
            &mut dests
        };
        to.entry(f.destination()).or_default().add(&f.volume);
    }
    let top = |mut v: Volumes| {
        v.sort_by(|a, b| b.1.bytes().cmp(&a.1.bytes()).then_with(|| a.0.cmp(&b.0)));
        v.truncate(OPEN_TOP);
        v
    };
    (
        top(apps.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        top(dests.into_iter().collect()),
        top(blocked.into_iter().collect()),
    )
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The engine's counters.
    pub counters: EngineCounters,
    /// Upstream sockets that failed to open or broke, by error kind.
    pub upstream_failures: HashMap<String, u64>,
    /// Payload bytes relayed to servers.
    pub bytes_up: u64,
    /// Payload bytes relayed from servers.
    pub bytes_down: u64,
    /// Datagrams dropped because their flow's upstream queue held
    /// [`upstream::UDP_QUEUE`] bytes already.
    pub udp_queue_full: u64,
    /// What finding the flows' owners did.
    pub attribution: AttributionCounters,
}

impl std::fmt::Display for Summary {
    /// One line: packets, flows, DNS, upstream failures, drops.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counters;
        let mut drops: Vec<String> = c.drops.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        drops.sort();
        write!(
            f,
            "{} packets from the TUN, {} flows opened, {} blocked, {} cut, {} refused ({} TCP with small windows past the memory budget); {} DNS queries ({} blocked, {} filtered); {} bytes up, {} down ({} datagrams dropped on full queues); {} UDP flows held until their class was known ({} held datagrams dropped); upstream failures {:?}; drops {{{}}}",
            c.tun_packets,
            c.opened,
            c.blocked,
            c.cut,
            c.refused,
            c.tcp_squeezed,
            c.dns_queries,
            c.dns_blocked,
            c.dns_filtered,
            self.bytes_up,
            self.bytes_down,
            self.udp_queue_full,
            c.held,
            c.held_dropped,
            self.upstream_failures,
            drops.join(", ")
        )?;
        if c.udp_unreachable > 0 {
            write!(
                f,
                "; {} ICMP unreachable errors passed on to UDP flows",
                c.udp_unreachable
            )?;
        }
        if c.echo_unreachable > 0 {
            write!(
                f,
                "; {} ICMP unreachable errors passed on to echo requests",
                c.echo_unreachable
            )?;
        }
        if c.no_route > 0 {
            write!(
                f,
                "; {} new flows answered \"network unreachable\" (no upstream route)",
                c.no_route
            )?;
        }
        if c.dns_unroutable > 0 {
            write!(
                f,
                "; {} DNS answers without the addresses the upstream network cannot reach",
                c.dns_unroutable
            )?;
        }
        if c.family_down > 0 {
            write!(
                f,
                "; {} new flows answered \"network unreachable\" (their address family's upstream connects went unanswered; found {} times)",
                c.family_down, c.families_down
            )?;
        }
        if c.asked + c.asked_busy > 0 {
            write!(
                f,
                "; {} new flows held for an answer to an ask rule ({} got the rule's default at once: too many questions waiting)",
                c.asked, c.asked_busy
            )?;
        }
        let a = &self.attribution;
        if a.asked > 0 {
            write!(
                f,
                "; owners found for {} of {} new flows ({} went on without, {} packets dropped while waiting)",
                a.found, a.asked, a.unattributed, a.dropped
            )?;
        }
        Ok(())
    }
}

/// What runs beside the engine, each optional.
#[derive(Debug, Default)]
pub struct Services {
    /// Answers the DNS queries geowall takes (without, they fail); it may
    /// be replaced in place while running (the host's DNS servers
    /// changed): each query takes the one current when it is asked.
    pub resolver: Option<dns::SharedResolver>,
    /// Kept up to date (about every 100 ms) for status queries.
    pub live: Option<Arc<std::sync::Mutex<Live>>>,
    /// Finds each new flow's owner (off the loop's thread) before the
    /// engine sees the flow.
    pub attribution: Option<Attribution>,
    /// Users' answers to `ask` rules' questions (from [`ask::channel`]);
    /// without, every question gets its rule's default at its timeout.
    pub answers: Option<mpsc::Receiver<ask::AnswerRequest>>,
}

/// Runs the engine on `tun` until `shutdown` completes or the TUN fails,
/// with `services` beside it. `on_event` gets every decision.
///
/// # Errors
/// Reading or writing the TUN failed (for example, the device was
/// removed); the error says which.
pub async fn run(
    mut engine: Engine,
    tun: Tun,
    protection: Protection,
    services: Services,
    mut on_event: impl FnMut(&Event),
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Summary> {
    let Services {
        resolver,
        live,
        mut attribution,
        mut answers,
    } = services;
    let mut published = Instant::now();
    let mut volumes_published = Instant::now();
    let start = Instant::now();
    let now = || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let (report_tx, mut reports) = mpsc::unbounded_channel::<(FlowId, Up)>();
    let mut links: HashMap<FlowId, Link> = HashMap::new();
    let mut stalled: HashSet<FlowId> = HashSet::new();
    engine.set_tcp_checksum_offload(tun.completes_tcp_checksums());
    engine.set_upstream_routes(default_routes(&protection));
    {
        let p = protection.clone();
        engine.set_route_lookup(Box::new(move |ip| p.has_route(ip)));
    }
    let mut routes_checked = Instant::now();
    let mut buf = vec![0u8; tun.buffer_len()];
    let mut scratch = Vec::new();
    let mut summary = Summary::default();
    tokio::pin!(shutdown);
    loop {
        // Carry out what the engine asked.
        while let Some(o) = engine.poll_output() {
            match o {
                Output::ToTun(p) => tun.send(&p).await?,
                Output::Event(e) => on_event(&e),
                Output::DnsQuery { query, name, rtype } => match &resolver {
                    Some(r) => {
                        let (r, tx) = (r.load_full(), report_tx.clone());
                        tokio::spawn(async move {
                            let answer = dns::resolve(&r, name, rtype).await;
                            let _ = tx.send((query, Up::Dns(answer)));
                        });
                    }
                    None => engine.handle_dns_answer(query, None, now()),
                },
                Output::TcpOpen { flow, dst, window } => {
                    let link = new_link(window);
                    let shared = link.shared.clone();
                    links.insert(flow, link);
                    let (p, r) = (protection.clone(), report_tx.clone());
                    tokio::spawn(upstream::tcp(flow, dst, p, shared, r));
                }
                Output::TcpWindow { flow, window } => {
                    if let Some(l) = links.get(&flow)
                        && l.shared.set_window(window.min(upstream::TCP_WINDOW_MAX))
                    {
                        engine.set_tcp_upstream_paused(flow, false, now());
                    }
                }
                Output::UdpOpen { flow, dst } => {
                    let link = new_link(upstream::UDP_QUEUE);
                    let shared = link.shared.clone();
                    links.insert(flow, link);
                    let (p, r) = (protection.clone(), report_tx.clone());
                    tokio::spawn(upstream::udp(flow, dst, p, shared, r));
                }
                Output::EchoRequest {
                    flow,
                    dst,
                    seq,
                    data,
                } => {
                    let link = links.entry(flow).or_insert_with(|| {
                        let link = new_link(upstream::UDP_QUEUE);
                        let (p, r) = (protection.clone(), report_tx.clone());
                        tokio::spawn(upstream::echo(flow, dst, p, link.shared.clone(), r));
                        link
                    });
                    link.shared.cmds.send(Cmd::Echo { seq, data });
                }
                Output::UdpSend { flow, payload } => {
                    if let Some(l) = links.get(&flow) {
                        let n = payload.len();
                        if l.shared.up_queued.load(Ordering::Acquire) + n > upstream::UDP_QUEUE {
                            summary.udp_queue_full += 1;
                        } else {
                            summary.bytes_up += n as u64;
                            l.shared.up_queued.fetch_add(n, Ordering::AcqRel);
                            l.shared.cmds.send(Cmd::Data(payload));
                        }
                    }
                }
                Output::TcpSend { flow, payload } => {
                    summary.bytes_up += payload.len() as u64;
                    if let Some(l) = links.get(&flow)
                        && l.shared.queue_up(payload)
                    {
                        engine.set_tcp_upstream_paused(flow, true, now());
                    }
                }
                Output::TcpFin { flow } => {
                    if let Some(l) = links.get(&flow) {
                        l.shared.cmds.send(Cmd::Fin);
                    }
                }
                Output::Close { flow } => {
                    // Dropping the sender ends the task and its socket.
                    links.remove(&flow);
                    stalled.remove(&flow);
                }
            }
        }
        let mut deadline = engine
            .poll_timeout()
            .map(|t| start + Duration::from_nanos(t));
        // Wake up at least this often, even when nothing happens: to
        // publish what is live, and so that new rules (a reload) reach the
        // open flows within a quarter of a second.
        let tick = published + Duration::from_millis(if live.is_some() { 150 } else { 250 });
        deadline = Some(deadline.map_or(tick, |d| d.min(tick)));
        if let Some(d) = attribution.as_ref().and_then(Attribution::deadline) {
            deadline = deadline.map(|t| t.min(d));
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = tun.recv(&mut buf) => {
                let mut next = Some(r);
                for _ in 0..TUN_BATCH {
                    match next {
                        Some(Ok(n)) => {
                            let t = now();
                            tun.packets(&buf[..n], &mut scratch, |p| match &mut attribution {
                                Some(a) => a.offer(&mut engine, p, t),
                                None => engine.handle_tun(p, t),
                            });
                        }
                        Some(Err(e)) => return Err(tun_error(&e)),
                        None => break,
                    }
                    next = tun.try_recv(&mut buf);
                }
            }
            r = reports.recv() => {
                let mut next = r;
                for _ in 0..REPORT_BATCH {
                    let Some((flow, up)) = next else { break };
                    on_report(&mut engine, &mut links, &mut stalled, &mut summary, flow, up, now());
                    next = reports.try_recv().ok();
                }
            }
            Some((key, owner)) = answer(&mut attribution) => {
                if let Some(a) = &mut attribution {
                    a.answered(&mut engine, key, owner, now());
                }
            }
            Some(req) = next(&mut answers) => {
                let outcome = engine.answer(req.prompt, req.answer, now());
                // The asker may have given up waiting: nothing to tell.
                let _ = req.done.send(outcome);
            }
            () = sleep_until(deadline) => engine.handle_timeout(now()),
        }
        if let Some(a) = &mut attribution {
            a.expire(&mut engine, now());
        }
        if published.elapsed() >= Duration::from_millis(100) {
            published = Instant::now();
            if let Some(l) = &live {
                let volumes = volumes_published.elapsed() >= Duration::from_secs(1);
                if volumes {
                    volumes_published = published;
                }
                publish(l, &engine, &summary, volumes);
            }
        }
        if routes_checked.elapsed() >= ROUTE_CHECK {
            routes_checked = Instant::now();
            engine.set_upstream_routes(default_routes(&protection));
        }
        // Server bytes that waited for the app's window.
        if !stalled.is_empty() {
            let t = now();
            stalled.retain(|&flow| {
                let Some(l) = links.get_mut(&flow) else {
                    return false;
                };
                push_down(&mut engine, flow, l, t);
                !l.down.is_empty() || l.eof
            });
        }
    }
    // Every flow still open ends here: its `closed` event, with its
    // packets and bytes (the upstream sockets close as `links` drops).
    engine.close_all();
    while let Some(o) = engine.poll_output() {
        if let Output::Event(e) = o {
            on_event(&e);
        }
    }
    drop(links);
    summary.counters = engine.counters.clone();
    summary.attribution = attribution.map(|a| a.counters).unwrap_or_default();
    if let Some(l) = &live {
        // The final numbers, for whoever reads them after the stop.
        publish(l, &engine, &summary, true);
    }
    Ok(summary)
}

/// Refreshes `live` (and, with `volumes`, the open flows' volumes).
fn publish(live: &std::sync::Mutex<Live>, engine: &Engine, summary: &Summary, volumes: bool) {
    let v = volumes.then(|| open_volumes(engine));
    if let Ok(mut l) = live.lock() {
        if let Some((apps, dests, blocked)) = v {
            l.open_by_app = apps;
            l.open_by_destination = dests;
            l.open_blocked_by_destination = blocked;
        }
        l.flows = engine.flow_count();
        l.waiting.clear();
        l.waiting
            .extend(engine.prompts().map(|(id, q)| (id, q.clone())));
        l.counters.clone_from(&engine.counters);
        l.dns_cached = engine.dns_cache.len();
        l.bytes_up = summary.bytes_up;
        l.bytes_down = summary.bytes_down;
    }
}

fn tun_error(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("reading the TUN: {e}"))
}

/// The next owner found, when attribution runs (otherwise never).
async fn answer(
    a: &mut Option<Attribution>,
) -> Option<(
    crate::engine::dataplane::OwnerKey,
    crate::engine::dataplane::AppOwner,
)> {
    match a {
        Some(a) => a.answer().await,
        None => std::future::pending().await,
    }
}

/// The next user answer, when anyone can answer (otherwise never).
/// The next message of an optional channel (never, without one).
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn new_link(window: usize) -> Link {
    Link {
        shared: Arc::new(Shared::new(window.min(upstream::TCP_WINDOW_MAX))),
        down: VecDeque::new(),
        eof: false,
    }
}

/// Offers the flow's waiting server bytes to the app's window; tells the
/// app about the server's close once all are through.
fn push_down(engine: &mut Engine, flow: FlowId, l: &mut Link, now: u64) {
    while let Some(front) = l.down.front_mut() {
        if engine.tcp_send_room(flow) == 0 {
            return;
        }
        let n = engine.handle_tcp_from_upstream(flow, front, now);
        l.shared.taken(n);
        if n == front.len() {
            l.down.pop_front();
        } else {
            front.drain(..n);
            return;
        }
    }
    if l.eof {
        l.eof = false;
        engine.handle_tcp_upstream_closed(flow, now);
    }
}

fn on_report(
    engine: &mut Engine,
    links: &mut HashMap<FlowId, Link>,
    stalled: &mut HashSet<FlowId>,
    summary: &mut Summary,
    flow: FlowId,
    up: Up,
    now: u64,
) {
    if let Up::Dns(answer) = up {
        // `flow` is the query's token here.
        return engine.handle_dns_answer(flow, answer, now);
    }
    let Some(l) = links.get_mut(&flow) else {
        // The flow was closed meanwhile.
        return;
    };
    match up {
        Up::Connected => engine.handle_tcp_connected(flow, now),
        Up::Failed { tcp, error } => {
            *summary
                .upstream_failures
                .entry(format!("{:?}", error.kind()))
                .or_insert(0) += 1;
            links.remove(&flow);
            stalled.remove(&flow);
            if tcp {
                use crate::engine::dataplane::ConnectFailure;
                let why = match error.kind() {
                    std::io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
                    std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::HostUnreachable => ConnectFailure::Unanswered,
                    _ => ConnectFailure::Other,
                };
                engine.handle_tcp_connect_failed(flow, why, now);
            }
        }
        Up::Datagram(d) => {
            summary.bytes_down += d.len() as u64;
            engine.handle_udp_from_upstream(flow, &d, now);
        }
        Up::Data(d) => {
            summary.bytes_down += d.len() as u64;
            l.down.push_back(d);
            push_down(engine, flow, l, now);
            if !l.down.is_empty() {
                stalled.insert(flow);
            }
        }
        Up::Unreachable(why) => engine.handle_udp_unreachable(flow, why, now),
        Up::EchoUnreachable { seq, why } => engine.handle_echo_unreachable(flow, seq, why, now),
        Up::Echo { seq, data } => engine.handle_echo_reply(flow, seq, &data, now),
        Up::Eof => {
            l.eof = true;
            push_down(engine, flow, l, now);
            if l.eof {
                stalled.insert(flow);
            }
        }
        Up::Dns(_) => {}
        Up::Drained => {
            if l.shared.up_queued.load(Ordering::Acquire) < l.shared.window() {
                engine.set_tcp_upstream_paused(flow, false, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP flow's driver queues follow its allowance, up to
    /// [`upstream::TCP_WINDOW_MAX`]: a 1 MiB allowance gets 256 KiB queues,
    /// one of 8 KiB gets 8 KiB ones.
    #[test]
    fn driver_queues_follow_the_buffer_up_to_their_cap() {
        assert_eq!(
            new_link(1024 * 1024).shared.window(),
            upstream::TCP_WINDOW_MAX
        );
        assert_eq!(new_link(8 * 1024).shared.window(), 8 * 1024);
    }
}
