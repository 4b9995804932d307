//! The real sockets behind allowed flows: one small task per flow, which
//! connects (protected) and relays between its socket and the engine loop.
//!
//! Flow control both ways is by byte counts shared with the loop: a task
//! stops reading from its server while its flow's window ([`Shared`]: the
//! flow's allowance in the engine up to [`TCP_WINDOW_MAX`], each way, set
//! again as the allowance grows and shrinks) of bytes it read are still
//! waiting for room in the app's window, and the loop pauses reading from
//! the app while a window of bytes wait to be written upstream. So a
//! flow's memory here is bounded whatever the two ends do, and follows the
//! engine's TCP memory budget: a connection with a small allowance has
//! small queues here too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};

use super::protect::Protection;
use crate::engine::dataplane::{FlowId, Unreachable};
use nix::sys::socket::sockopt;

/// Bytes read from a server at once, at most.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from a server at once, at first.
const MIN_CHUNK: usize = 4 * 1024;
/// A TCP flow's window here, at most: its local buffer's size up to this.
/// The kernel's own socket buffers hold what is in flight beyond it, so a
/// bigger queue here adds memory, not speed (measured: 1 MiB queues for
/// 1 MiB buffers moved the same single stream with 2.7 MB more peak RSS;
/// `benches/README.md`).
pub const TCP_WINDOW_MAX: usize = 256 * 1024;
/// Largest datagram.
const DATAGRAM: usize = 65_536;
/// Datagram bytes queued for one UDP flow's server at most; past it new
/// datagrams are dropped (counted as `udp-queue-full`), as a full network
/// queue would.
pub const UDP_QUEUE: usize = 256 * 1024;

/// Waits until the server sent something, then reads up to `chunk` bytes
/// into a new buffer (not zeroed first: only what arrives is written);
/// empty at the end of the stream. No buffer is held while waiting, so an
/// idle connection costs none.
async fn read_chunk(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    chunk: usize,
) -> std::io::Result<Vec<u8>> {
    loop {
        rd.readable().await?;
        let mut b = Vec::with_capacity(chunk);
        match rd.try_read_buf(&mut b) {
            Ok(_) => return Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Queued chunks written upstream in one system call, at most.
const MAX_BATCH: usize = 16;

/// Writes every byte of `bufs`, in order, with as few system calls as the
/// socket allows.
async fn write_all_vectored(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    bufs: &[Vec<u8>],
) -> std::io::Result<()> {
    let mut slices: [std::io::IoSlice<'_>; MAX_BATCH] =
        std::array::from_fn(|_| std::io::IoSlice::new(&[]));
    let mut n = 0;
    for (s, b) in slices.iter_mut().zip(bufs) {
        *s = std::io::IoSlice::new(b);
        n += 1;
    }
    let mut rest = &mut slices[..n];
    std::io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        let w = wr.write_vectored(rest).await?;
        if w == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, w);
    }
    Ok(())
}

/// How long an upstream TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// From the loop to a flow's task.
#[derive(Debug)]
pub enum Cmd {
    /// Bytes (TCP) or one datagram (UDP) to send.
    Data(Vec<u8>),
    /// An echo request.
    Echo {
        /// Sequence number.
        seq: u16,
        /// Data after the header.
        data: Vec<u8>,
    },
    /// Shut down the write side (TCP).
    Fin,
}

/// From a flow's task to the loop.
#[derive(Debug)]
pub enum Up {
    /// The TCP connection is up.
    Connected,
    /// Opening, connecting, sending or receiving failed.
    Failed {
        /// A TCP flow's (the app's side is then reset).
        tcp: bool,
        /// Why.
        error: std::io::Error,
    },
    /// Bytes from the server (TCP).
    Data(Vec<u8>),
    /// A datagram from the server (UDP).
    Datagram(Vec<u8>),
    /// The UDP flow's destination cannot be reached: the kernel reported
    /// an ICMP error on the socket.
    Unreachable(Unreachable),
    /// An echo reply.
    Echo {
        /// Sequence number.
        seq: u16,
        /// Data after the header.
        data: Vec<u8>,
    },
    /// An ICMP error about the echo request `seq` (a router on the way
    /// said its host or network cannot be reached).
    EchoUnreachable {
        /// The request's sequence number.
        seq: u16,
        /// What the error said.
        why: Unreachable,
    },
    /// The server closed its side (TCP).
    Eof,
    /// The upstream queue fell below the flow's window.
    Drained,
    /// The resolver's answer to a DNS query (the id is the query's token).
    Dns(Option<crate::engine::dns::Resolved>),
}

/// A flow's commands from the loop, in order. Unlike a channel (which
/// allocates a block of slots per flow up front), an empty queue holds no
/// memory, so an idle flow costs little here.
#[derive(Debug, Default)]
pub struct Cmds {
    queue: std::sync::Mutex<std::collections::VecDeque<Cmd>>,
    ready: Notify,
    closed: AtomicBool,
}

impl Cmds {
    /// Queues `cmd` for the task.
    pub fn send(&self, cmd: Cmd) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(cmd);
        self.ready.notify_one();
    }

    /// The loop is done with the flow: the task ends once it took what is
    /// queued.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// The next queued command, if any.
    fn try_recv(&self) -> Option<Cmd> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Waits for the next command; `None` once closed and empty. Safe to
    /// cancel (in `select!`): nothing is taken until it is returned.
    async fn recv(&self) -> Option<Cmd> {
        loop {
            if let Some(c) = self.try_recv() {
                return Some(c);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.ready.notified().await;
        }
    }
}

/// Counters a flow's task shares with the loop.
#[derive(Debug, Default)]
pub struct Shared {
    /// Commands for the task.
    pub cmds: Cmds,
    /// The most bytes queued each way: read from the server and not yet
    /// taken by the engine (plus one read), or waiting to be written to the
    /// server before the app is paused. For a TCP flow, its local buffer
    /// ([`crate::engine::dataplane::Output::TcpOpen`]) up to
    /// [`TCP_WINDOW_MAX`], following its allowance
    /// ([`crate::engine::dataplane::Output::TcpWindow`]); for UDP,
    /// [`UDP_QUEUE`] towards the server.
    window: AtomicUsize,
    /// Bytes read from the server and not yet taken by the engine.
    pub down_inflight: AtomicUsize,
    /// Bytes queued for the server.
    pub up_queued: AtomicUsize,
    /// Wakes the task when `down_inflight` falls below `window`.
    pub room: Notify,
}

impl Shared {
    /// Counters for a flow whose queues hold `window` bytes each way.
    pub fn new(window: usize) -> Self {
        Self {
            window: AtomicUsize::new(window),
            ..Self::default()
        }
    }

    /// The flow's window now.
    pub fn window(&self) -> usize {
        self.window.load(Ordering::Acquire)
    }

    /// Sets the flow's window; wakes the task if that lets it read again.
    /// Returns whether the bytes queued for the server are now below it
    /// (the app may be resumed).
    pub fn set_window(&self, window: usize) -> bool {
        let before = self.window.swap(window, Ordering::AcqRel);
        let inflight = self.down_inflight.load(Ordering::Acquire);
        if inflight >= before && inflight < window {
            self.room.notify_one();
        }
        self.up_queued.load(Ordering::Acquire) < window
    }

    /// Queues `data` for the server. Counted first, then queued: the task
    /// can never write (and subtract) bytes not yet counted, so the count
    /// never runs below zero and the window's crossing is never missed.
    /// Returns whether the flow is now at or past its window (pause the
    /// app until the task reports [`Up::Drained`]).
    pub fn queue_up(&self, data: Vec<u8>) -> bool {
        let n = data.len();
        let queued = self.up_queued.fetch_add(n, Ordering::AcqRel) + n;
        self.cmds.send(Cmd::Data(data));
        queued >= self.window()
    }

    /// The task wrote `n` queued bytes to the server. Returns whether that
    /// took the flow from at or past its window to below it (report
    /// [`Up::Drained`]).
    fn written(&self, n: usize) -> bool {
        let before = self.up_queued.fetch_sub(n, Ordering::AcqRel);
        let w = self.window();
        before >= w && before.saturating_sub(n) < w
    }

    /// The engine took `n` of the task's bytes.
    pub fn taken(&self, n: usize) {
        let before = self.down_inflight.fetch_sub(n, Ordering::AcqRel);
        let w = self.window();
        if before >= w && before - n < w {
            self.room.notify_one();
        }
    }
}

/// Where a task reports.
pub type Reports = mpsc::UnboundedSender<(FlowId, Up)>;

/// The opened socket, or `None` after reporting why it could not be
/// opened (`tcp`: the app's side is then reset).
fn opened<T>(r: std::io::Result<T>, flow: FlowId, tcp: bool, reports: &Reports) -> Option<T> {
    r.map_err(|error| {
        let _ = reports.send((flow, Up::Failed { tcp, error }));
    })
    .ok()
}

/// Connects to `dst` and relays until either side is done.
pub async fn tcp(
    flow: FlowId,
    dst: SocketAddr,
    prot: Protection,
    shared: Arc<Shared>,
    reports: Reports,
) {
    let connect = async {
        let s = prot.socket(
            dst.ip(),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_tcp_nodelay(true)?;
        let s = tokio::net::TcpSocket::from_std_stream(s.into());
        match tokio::time::timeout(CONNECT_TIMEOUT, s.connect(dst)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out"),
            )),
        }
    };
    let Some(stream) = opened(connect.await, flow, true, &reports) else {
        return;
    };
    let _ = reports.send((flow, Up::Connected));
    let (mut rd, mut wr) = stream.into_split();
    // Reads start small and grow while they come back full: an idle or
    // chatty flow holds little, a bulk one reads in big chunks.
    let mut chunk = MIN_CHUNK;
    let mut reading = true;
    // Allocated at the first write, not for a connection that stays idle.
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        let may_read = reading && shared.down_inflight.load(Ordering::Acquire) < shared.window();
        tokio::select! {
            cmd = shared.cmds.recv() => match cmd {
                Some(Cmd::Data(b)) => {
                    // What else is queued already goes out in the same
                    // system call: each send wakes the receiver, and an
                    // upload arrives as one chunk per TUN segment.
                    batch.push(b);
                    let mut fin = false;
                    while batch.len() < MAX_BATCH {
                        match shared.cmds.try_recv() {
                            Some(Cmd::Data(b)) => batch.push(b),
                            Some(Cmd::Fin) => {
                                fin = true;
                                break;
                            }
                            Some(Cmd::Echo { .. }) => {}
                            None => break,
                        }
                    }
                    let n: usize = batch.iter().map(Vec::len).sum();
                    if let Err(e) = write_all_vectored(&mut wr, &batch).await {
                        let _ = reports.send((flow, Up::Failed { tcp: true, error: e }));
                        return;
                    }
                    batch.clear();
                    if shared.written(n) {
                        let _ = reports.send((flow, Up::Drained));
                    }
                    if fin {
                        let _ = wr.shutdown().await;
                    }
                }
                Some(Cmd::Fin) => {
                    let _ = wr.shutdown().await;
                }
                Some(Cmd::Echo { .. }) => {}
                // The loop closed the flow.
                None => return,
            },
            r = read_chunk(&mut rd, chunk), if may_read => match r {
                Ok(b) if b.is_empty() => {
                    reading = false;
                    let _ = reports.send((flow, Up::Eof));
                }
                Ok(b) => {
                    if b.len() == chunk {
                        chunk = (chunk * 2).min(READ_CHUNK).min(shared.window().max(MIN_CHUNK));
                    }
                    shared.down_inflight.fetch_add(b.len(), Ordering::AcqRel);
                    let _ = reports.send((flow, Up::Data(b)));
                }
                Err(e) => {
                    let _ = reports.send((flow, Up::Failed { tcp: true, error: e }));
                    return;
                }
            },
            () = shared.room.notified(), if reading && !may_read => {}
        }
    }
}

/// Reports `e` as [`Up::Unreachable`] if it says the destination cannot
/// be reached; other errors (a full send buffer, say) are not the
/// destination's doing and are not reported.
fn unreachable(flow: FlowId, e: &std::io::Error, reports: &Reports) {
    if let Some(why) = Unreachable::of_io(e.kind()) {
        let _ = reports.send((flow, Up::Unreachable(why)));
    }
}

/// A connected UDP socket to `dst`; relays datagrams both ways. ICMP
/// errors the kernel reports on it are passed on as [`Up::Unreachable`].
pub async fn udp(
    flow: FlowId,
    dst: SocketAddr,
    prot: Protection,
    shared: Arc<Shared>,
    reports: Reports,
) {
    let open = async {
        let s = prot.socket(dst.ip(), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        let s = tokio::net::UdpSocket::from_std(s.into())?;
        s.connect(dst).await?;
        Ok::<_, std::io::Error>(s)
    };
    let Some(sock) = opened(open.await, flow, false, &reports) else {
        return;
    };
    let mut buf = Vec::with_capacity(DATAGRAM);
    loop {
        buf.clear();
        tokio::select! {
            cmd = shared.cmds.recv() => match cmd {
                Some(Cmd::Data(b)) => {
                    // A datagram the kernel cannot take now is lost, as on
                    // any UDP path. A send can also return the error an
                    // ICMP message left on the socket: the app is told.
                    if let Err(e) = sock.send(&b).await {
                        unreachable(flow, &e, &reports);
                    }
                    shared.up_queued.fetch_sub(b.len(), Ordering::AcqRel);
                }
                Some(_) => {}
                None => return,
            },
            r = sock.recv_buf(&mut buf) => match r {
                Ok(n) => {
                    let _ = reports.send((flow, Up::Datagram(buf[..n].to_vec())));
                }
                // An ICMP error for the flow (ECONNREFUSED and the like)
                // goes to the app; the flow stays, as UDP does.
                Err(e) => unreachable(flow, &e, &reports),
            }
        }
    }
}

/// An unprivileged ICMP ("ping") socket to `dst`; sends echo requests and
/// relays replies. Needs the process's group in `net.ipv4.ping_group_range`
/// (it covers ICMPv6 too); otherwise the flow fails with that reason.
pub async fn echo(
    flow: FlowId,
    dst: IpAddr,
    prot: Protection,
    shared: Arc<Shared>,
    reports: Reports,
) {
    let (proto, request, reply) = match dst {
        IpAddr::V4(_) => (socket2::Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (socket2::Protocol::ICMPV6, 128, 129),
    };
    let open = || -> std::io::Result<tokio::net::UdpSocket> {
        let s = prot.socket(dst, socket2::Type::DGRAM, Some(proto)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot open a ping socket ({e}); is the group in net.ipv4.ping_group_range?"
                ),
            )
        })?;
        s.connect(&SocketAddr::new(dst, 0).into())?;
        // ICMP errors about the requests are queued with the request they
        // quote (without, a host unreachable is not reported at all).
        let fd = std::os::fd::AsFd::as_fd(&s);
        match dst {
            IpAddr::V4(_) => nix::sys::socket::setsockopt(&fd, sockopt::Ipv4RecvErr, &true),
            IpAddr::V6(_) => nix::sys::socket::setsockopt(&fd, sockopt::Ipv6RecvErr, &true),
        }?;
        // A ping socket is a datagram socket: tokio's UDP type carries it.
        tokio::net::UdpSocket::from_std(s.into())
    };
    let Some(sock) = opened(open(), flow, false, &reports) else {
        return;
    };
    let mut buf = Vec::with_capacity(DATAGRAM);
    let mut pkt = Vec::new();
    loop {
        buf.clear();
        tokio::select! {
            cmd = shared.cmds.recv() => match cmd {
                Some(Cmd::Echo { seq, data }) => {
                    pkt.clear();
                    // The kernel fills in the identifier and the checksum.
                    pkt.extend_from_slice(&[request, 0, 0, 0, 0, 0]);
                    pkt.extend_from_slice(&seq.to_be_bytes());
                    pkt.extend_from_slice(&data);
                    let _ = sock.send(&pkt).await;
                }
                Some(_) => {}
                None => return,
            },
            r = sock.recv_buf(&mut buf) => match r {
                Ok(n) if n >= 8 && buf[0] == reply => {
                    let seq = u16::from_be_bytes([buf[6], buf[7]]);
                    let _ = reports.send((flow, Up::Echo { seq, data: buf[8..n].to_vec() }));
                }
                Ok(_) => {}
                // An ICMP error: the queue says which request it is about.
                Err(_) => {
                    while let Some(err) = queued_echo_error(&sock) {
                        if let Some((seq, why)) = err {
                            let _ = reports.send((flow, Up::EchoUnreachable { seq, why }));
                        }
                    }
                }
            }
        }
    }
}

/// Takes one error from a ping socket's error queue (`IP_RECVERR`): the
/// sequence number of the echo request an ICMP destination-unreachable
/// error quotes and what it said, `Some(None)` for another error, `None`
/// once the queue is empty.
fn queued_echo_error(sock: &tokio::net::UdpSocket) -> Option<Option<(u16, Unreachable)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut quoted = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut quoted)];
    let mut space = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let n = msg.bytes;
    let err = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _) => Some(e),
        _ => None,
    });
    let icmp = err.filter(|e| {
        (e.ee_origin == nix::libc::SO_EE_ORIGIN_ICMP && e.ee_type == 3)
            || (e.ee_origin == nix::libc::SO_EE_ORIGIN_ICMP6 && e.ee_type == 1)
    });
    // The quoted request: type, code, checksum, identifier, sequence.
    let found = icmp.filter(|_| n >= 8).and_then(|e| {
        let kind = std::io::Error::from_raw_os_error(i32::try_from(e.ee_errno).ok()?).kind();
        let why = Unreachable::of_io(kind)?;
        Some((u16::from_be_bytes([quoted[6], quoted[7]]), why))
    });
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Bytes queued for the server are counted before the task can take
    /// them: a task that takes and writes them at once (here, a thread
    /// spinning on the queue) never sees fewer bytes counted than it took,
    /// the count ends at zero, and the last write, which empties a full
    /// window, reports the crossing that resumes the app.
    #[test]
    fn queued_bytes_are_counted_before_the_task_can_write_them() {
        let shared = Arc::new(Shared::new(64));
        let rounds = 100_000;
        let task = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let (mut taken, mut short, mut last_drained) = (0, 0, false);
                while taken < rounds {
                    if let Some(Cmd::Data(b)) = shared.cmds.try_recv() {
                        taken += 1;
                        if shared.up_queued.load(Ordering::Acquire) < b.len() {
                            short += 1;
                        }
                        last_drained = shared.written(b.len());
                    }
                }
                (short, last_drained)
            })
        };
        for _ in 0..rounds {
            assert!(shared.queue_up(vec![0; 64]), "each chunk fills the window");
        }
        let (short, last_drained) = task.join().expect("task");
        assert_eq!(short, 0, "the task saw bytes not yet counted");
        assert_eq!(shared.up_queued.load(Ordering::Acquire), 0);
        assert!(last_drained, "the last write reports the window drained");
    }

    /// A window that grows past what the task read ahead wakes it, and
    /// says whether the bytes queued for the server are now below it (the
    /// app may be resumed); one that shrinks wakes nothing.
    #[tokio::test]
    async fn a_grown_window_wakes_the_task_and_resumes_the_app() {
        let shared = Shared::new(16 * 1024);
        shared.down_inflight.store(16 * 1024, Ordering::Release);
        shared.up_queued.store(20 * 1024, Ordering::Release);
        assert!(!shared.set_window(8 * 1024), "still past it");
        let woke = tokio::time::timeout(Duration::from_millis(10), shared.room.notified()).await;
        assert!(woke.is_err(), "a smaller window wakes nothing");
        assert!(shared.set_window(32 * 1024), "queued bytes now below it");
        assert_eq!(shared.window(), 32 * 1024);
        let woke = tokio::time::timeout(Duration::from_secs(5), shared.room.notified()).await;
        assert!(woke.is_ok(), "the task may read again");
    }

    /// A flow's task reads ahead from its server at most its window (plus
    /// one read of at most the window) while the engine takes nothing, and
    /// goes on once the engine takes the bytes.
    #[tokio::test]
    async fn a_flow_reads_ahead_at_most_its_window() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let dst = listener.local_addr().expect("address");
        const SENT: usize = 1024 * 1024;
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let _ = s.write_all(&vec![7u8; SENT]).await;
        });
        let window = 16 * 1024;
        let shared = Arc::new(Shared::new(window));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(tcp(1, dst, Protection::default(), shared.clone(), tx));
        let mut got = Vec::new();
        // Nothing taken: reads stop once the window is full.
        while shared.down_inflight.load(Ordering::Acquire) < window {
            match rx.recv().await {
                Some((_, Up::Data(b))) => got.push(b),
                Some(_) => {}
                None => panic!("the task ended"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok((_, up)) = rx.try_recv() {
            if let Up::Data(b) = up {
                got.push(b);
            }
        }
        let held: usize = got.iter().map(Vec::len).sum();
        assert!(
            held <= 2 * window,
            "{held} bytes read ahead with a window of {window}"
        );
        // Taking them lets the rest come.
        let mut total = held;
        shared.taken(held);
        while total < SENT {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((_, Up::Data(b)))) => {
                    total += b.len();
                    shared.taken(b.len());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert_eq!(total, SENT, "every byte arrives once taken");
        shared.cmds.close();
        let _ = task.await;
        let _ = server.await;
    }

    /// A vectored write of many chunks (empty ones among them) through a
    /// small send buffer arrives whole and in order, however the kernel
    /// splits it.
    #[tokio::test]
    async fn vectored_writes_deliver_every_byte_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_send_buffer_size(4096).expect("SO_SNDBUF");
        let (client, server) = tokio::join!(sock.connect(addr), listener.accept());
        let (_rd, mut wr) = client.expect("connect").into_split();
        let (mut server, _) = server.expect("accept");
        let chunks: Vec<Vec<u8>> = (0..MAX_BATCH)
            .map(|i| {
                let len = if i % 5 == 0 { 0 } else { i * 7_919 };
                (0..len).map(|j| (i * 31 + j) as u8).collect()
            })
            .collect();
        let want: Vec<u8> = chunks.concat();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("read");
            got
        });
        write_all_vectored(&mut wr, &chunks).await.expect("write");
        wr.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
    }
}
