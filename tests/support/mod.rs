//! A private internet in network namespaces, for end-to-end tests (see
//! `shared/docs/testing.md`): an app namespace whose only way out is
//! geowall's TUN, a firewall namespace where `geowall tunnel` runs, and an
//! "internet" namespace with the test's servers on its loopback, reached
//! over a veth pair. Only documentation and benchmark ranges are used, and
//! every namespace is deleted when the [`Net`] is dropped (and leftovers of
//! dead test processes at the next start).
#![allow(dead_code, reason = "each test binary uses a part")]

pub(crate) mod page;
pub(crate) mod site;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether this process may build namespaces; prints why not.
pub(crate) fn root_or_skip(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if !Path::new("/dev/net/tun").exists() {
        Some("no /dev/net/tun")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("no `ip` (iproute2)")
    } else {
        None
    };
    if let Some(why) = why {
        // CI runs as root with everything installed: a network test that
        // would skip there is a broken CI machine, not a pass.
        assert!(
            !(std::env::var_os("CI").is_some_and(|v| v == "true")
                && nix::unistd::geteuid().is_root()),
            "{test}: would skip ({why}) in a root CI run; the network tests must run there"
        );
        eprintln!("{test}: skipped ({why}); these tests need root, /dev/net/tun and iproute2");
        return false;
    }
    true
}

/// (destination, IP protocol, destination port) of an Ethernet frame, read
/// from the fixed header offsets (RFC 791, RFC 8200; an IPv6 fragment
/// header is looked through). Port 0 for non-first fragments and ICMP.
/// Tunnels (6in4, GRE) are booked under their outer header. `None` for
/// anything else.
fn frame_key(f: &[u8]) -> Option<(IpAddr, u8, u16)> {
    let port = |b: &[u8], at: usize| -> u16 {
        b.get(at + 2..at + 4)
            .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]))
    };
    match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
        0x0800 => {
            let ip = f.get(14..)?;
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            let proto = *ip.get(9)?;
            let first = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff == 0;
            let p = if first && matches!(proto, 6 | 17) {
                port(ip, ihl)
            } else {
                0
            };
            Some((IpAddr::from(dst), proto, p))
        }
        0x86dd => {
            let ip = f.get(14..)?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let (mut proto, mut at, mut first) = (*ip.get(6)?, 40, true);
            if proto == 44 {
                first = u16::from_be_bytes([*ip.get(42)?, *ip.get(43)?]) & 0xfff8 == 0;
                proto = *ip.get(40)?;
                at = 48;
            }
            let p = if first && matches!(proto, 6 | 17) {
                port(ip, at)
            } else {
                0
            };
            Some((IpAddr::from(dst), proto, p))
        }
        _ => None,
    }
}

/// Runs `ip ARGS`, panicking with its message on failure.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that has entered namespace `ns`: the sockets it
/// makes live there.
pub(crate) fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("the namespace thread")
    })
}

/// Moves the calling thread into namespace `ns`.
pub(crate) fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("the namespace exists");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Deletes namespaces left by test processes that are gone.
fn clean_leftovers() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // gw{a,f,n}{pid}x{n}
        if let Some(rest) = name.strip_prefix("gw")
            && let Some(pid) = rest.get(1..).and_then(|r| r.split('x').next())
            && let Ok(pid) = pid.parse::<u32>()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// The server addresses (see `tests/fixtures/world.csv`).
pub(crate) mod addr {
    /// Geolocated CN, network CN.
    pub(crate) const CN: &str = "203.0.113.10";
    /// Geolocated HK, network CN.
    pub(crate) const HK: &str = "203.0.113.200";
    /// Geolocated US, network US.
    pub(crate) const US: &str = "198.51.100.10";
    /// Another US address (names learned for one do not touch the other).
    pub(crate) const US2: &str = "198.51.100.20";
    /// Geolocated US, network registered in CN.
    pub(crate) const US_CN_NET: &str = "192.0.2.10";
    /// Geolocated DE, network DE.
    pub(crate) const DE: &str = "192.0.2.200";
    /// IPv6, CN.
    pub(crate) const CN6: &str = "2001:db8:86::10";
    /// IPv6, US.
    pub(crate) const US6: &str = "2001:db8:1::10";
}

/// Packets seen on the internet side, by destination address, IP protocol
/// and destination port (0 for ICMP).
pub(crate) type Counts = Arc<Mutex<HashMap<(IpAddr, u8, u16), u64>>>;

/// The three namespaces, the servers' stop flag, and geowall.
pub(crate) struct Net {
    /// The app namespace.
    pub(crate) app: String,
    /// The firewall namespace.
    pub(crate) fw: String,
    /// The internet namespace.
    pub(crate) net: String,
    /// The internet side of the veth pair.
    pub(crate) veth_net: String,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Packets counted on the internet side of the link.
    pub(crate) counts: Counts,
    geowall: Option<Child>,
    /// What geowall wrote to standard error after its first line.
    geowall_err: Arc<Mutex<String>>,
    /// What geowall said on standard error until its TUN was up.
    pub(crate) geowall_start: String,
    /// Where geowall writes its events.
    pub(crate) events: PathBuf,
    /// The TUN's name.
    pub(crate) tun: String,
    /// A scratch directory.
    pub(crate) dir: tempfile::TempDir,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Net {
    /// Builds the namespaces and the link, puts the servers' addresses on
    /// the internet's loopback, and starts counting packets there.
    pub(crate) fn new() -> Self {
        clean_leftovers();
        let id = format!(
            "{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let (app, fw, net) = (format!("gwa{id}"), format!("gwf{id}"), format!("gwn{id}"));
        let (vf, vn) = (format!("gvf{id}"), format!("gvn{id}"));
        let mut me = Self {
            app: app.clone(),
            fw: fw.clone(),
            net: net.clone(),
            veth_net: vn.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            counts: Counts::default(),
            geowall: None,
            geowall_err: Arc::default(),
            geowall_start: String::new(),
            events: PathBuf::new(),
            tun: format!("gwt{id}"),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        me.events = me.dir.path().join("events.jsonl");
        for n in [&app, &fw, &net] {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
            // No duplicate address detection on the links made from here
            // on: it would hold back their first IPv6 packets for a second.
            for conf in ["all", "default"] {
                sysctl(n, &format!("net.ipv6.conf.{conf}.accept_dad"), "0");
            }
        }
        ip(&[
            "link", "add", &vf, "netns", &fw, "type", "veth", "peer", "name", &vn, "netns", &net,
        ]);
        ip(&["-n", &fw, "addr", "add", "198.18.0.1/30", "dev", &vf]);
        ip(&["-n", &net, "addr", "add", "198.18.0.2/30", "dev", &vn]);
        ip(&[
            "-n",
            &fw,
            "addr",
            "add",
            "2001:db8:ff00::1/64",
            "dev",
            &vf,
            "nodad",
        ]);
        ip(&[
            "-n",
            &net,
            "addr",
            "add",
            "2001:db8:ff00::2/64",
            "dev",
            &vn,
            "nodad",
        ]);
        ip(&["-n", &fw, "link", "set", &vf, "up"]);
        ip(&["-n", &net, "link", "set", &vn, "up"]);
        ip(&["-n", &fw, "route", "add", "default", "via", "198.18.0.2"]);
        ipv6_default_route(&fw, "add");
        for a in [
            addr::CN,
            addr::HK,
            addr::US,
            addr::US2,
            addr::US_CN_NET,
            addr::DE,
        ] {
            ip(&["-n", &net, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        for a in [addr::CN6, addr::US6] {
            ip(&[
                "-n",
                &net,
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
        }
        // Unprivileged ping sockets: geowall's upstream echo and the app's.
        for n in [&fw, &app] {
            sysctl(n, "net.ipv4.ping_group_range", "0 2147483647");
        }
        me.start_counter();
        me
    }

    fn start_counter(&mut self) {
        let (net, stop, counts) = (self.net.clone(), self.stop.clone(), self.counts.clone());
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        self.threads.push(std::thread::spawn(move || {
            enter(&net);
            // Every frame on every interface of the internet namespace.
            let s = socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(0x0300)),
            )
            .expect("packet socket");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            r.store(true, Ordering::SeqCst);
            let mut buf = vec![0u8; 70_000];
            while !stop.load(Ordering::SeqCst) {
                let Ok(n) = (&s).read(&mut buf) else {
                    continue;
                };
                if n < 14 {
                    continue;
                }
                // Read by this counter itself, not by geowall's parser: a
                // bug there cannot hide a packet here. A frame it cannot
                // read is counted under the unspecified address.
                let key = frame_key(&buf[..n]).unwrap_or((IpAddr::from([0, 0, 0, 0]), 255, 0));
                *counts.lock().expect("counts").entry(key).or_insert(0) += 1;
            }
        }));
        let t = Instant::now();
        while !ready.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Frames the counter could not read (not IPv4 or IPv6, cut short).
    pub(crate) fn unreadable_frames(&self) -> u64 {
        self.count("0.0.0.0", 255, 0)
    }

    /// Puts one more server address on the internet namespace's loopback
    /// (an IPv6 one without duplicate address detection, so that a server
    /// can bind it at once rather than after it stops being tentative).
    pub(crate) fn add_server_address(&self, a: &str) {
        let cidr = format!("{a}/{}", if a.contains(':') { 128 } else { 32 });
        let mut args = vec!["-n", &self.net, "addr", "add", &cidr, "dev", "lo"];
        if a.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    /// Writes `policy` into the scratch directory and builds the test world
    /// there; their paths.
    pub(crate) fn policy_and_world(&self, policy: &str) -> (PathBuf, PathBuf) {
        let p = self.dir.path().join("policy.toml");
        std::fs::write(&p, policy).expect("policy");
        (p, test_world(self.dir.path()))
    }

    /// Packets counted towards `dst` (address, protocol, port).
    pub(crate) fn count(&self, dst: &str, proto: u8, port: u16) -> u64 {
        let ip: IpAddr = dst.parse().expect("address");
        self.counts
            .lock()
            .expect("counts")
            .get(&(ip, proto, port))
            .copied()
            .unwrap_or(0)
    }

    /// [`Net::count`] once the count has stopped moving (two reads 200 ms
    /// apart agree; 5 s at most): the packets of connections that are
    /// closing have landed.
    pub(crate) fn count_settled(&self, dst: &str, proto: u8, port: u16) -> u64 {
        let mut last = self.count(dst, proto, port);
        for _ in 0..25 {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.count(dst, proto, port);
            if now == last {
                break;
            }
            last = now;
        }
        last
    }

    /// Starts `geowall tunnel` in the firewall namespace with the TUN in the
    /// app namespace, and waits until the TUN is up there.
    pub(crate) fn start_geowall(&mut self, world: &Path, rules: &[&str]) {
        // Only the root package has the binary (mobile-ffi shares this file).
        let Some(bin) = option_env!("CARGO_BIN_EXE_geowall") else {
            panic!("start_geowall needs the geowall binary (the root package's tests)")
        };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.fw, bin, "tunnel"]);
        c.args(["--tun", &self.tun, "--netns", &self.app, "--default-route"]);
        c.args([
            "--address",
            "198.18.1.2/24",
            "--address",
            "2001:db8:ff01::2/64",
        ]);
        c.arg("--world")
            .arg(world)
            .arg("--events")
            .arg(&self.events);
        c.args(rules);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("geowall starts");
        let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        // Notes (such as the open-files limit) may come before the line
        // that says the TUN is up.
        let mut said = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("geowall did not start: {said}");
            }
            said.push_str(&line);
            if line.contains(" up in netns") {
                break;
            }
        }
        self.geowall_start = said;
        // Keep reading its stderr so it never blocks on a full pipe.
        let keep = self.geowall_err.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            if !rest.is_empty() {
                eprintln!("geowall: {rest}");
            }
            if let Ok(mut k) = keep.lock() {
                k.push_str(&rest);
            }
        });
        self.geowall = Some(child);
    }

    /// Stops geowall (SIGTERM) and waits for it.
    pub(crate) fn stop_geowall(&mut self) {
        self.signal_geowall(nix::sys::signal::Signal::SIGTERM);
    }

    /// geowall's process id (`ip netns exec` execs it), while it runs.
    pub(crate) fn geowall_pid(&self) -> Option<u32> {
        self.geowall.as_ref().map(Child::id)
    }

    /// Waits up to `limit` for geowall to exit by itself; its status and
    /// standard error, or `None` if it still runs.
    pub(crate) fn wait_geowall(
        &mut self,
        limit: Duration,
    ) -> Option<(std::process::ExitStatus, String)> {
        let t = Instant::now();
        while t.elapsed() < limit {
            let c = self.geowall.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.geowall = None;
                // The reader thread sees the end of the pipe right after.
                std::thread::sleep(Duration::from_millis(100));
                let err = self
                    .geowall_err
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default();
                return Some((st, err));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills geowall outright (SIGKILL: no cleanup of its own).
    pub(crate) fn kill_geowall(&mut self) {
        self.signal_geowall(nix::sys::signal::Signal::SIGKILL);
    }

    fn signal_geowall(&mut self, sig: nix::sys::signal::Signal) {
        // `ip netns exec` execs geowall: the child's pid is geowall's.
        if let Some(mut c) = self.geowall.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
    }

    /// geowall's events so far.
    pub(crate) fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A TCP server in the internet namespace on `at`: for each connection
    /// it reads until the client's FIN and answers `reply(request)`.
    pub(crate) fn tcp_server(&mut self, at: SocketAddr, reply: fn(&[u8]) -> Vec<u8>) {
        let (net, stop) = (self.net.clone(), self.stop.clone());
        let l = in_ns(&net, || TcpListener::bind(at).expect("bind tcp server"));
        l.set_nonblocking(true).expect("nonblocking");
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut req = Vec::new();
                        let _ = c.read_to_end(&mut req);
                        let _ = c.write_all(&reply(&req));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// A UDP server in the internet namespace on `at` that answers each
    /// datagram with `reply(datagram)` (nothing when empty).
    pub(crate) fn udp_server(&mut self, at: SocketAddr, reply: fn(&[u8]) -> Vec<u8>) {
        let (net, stop) = (self.net.clone(), self.stop.clone());
        let s = in_ns(&net, || UdpSocket::bind(at).expect("bind udp server"));
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        self.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let r = reply(&buf[..n]);
                    if !r.is_empty() {
                        let _ = s.send_to(&r, from);
                    }
                }
            }
        }));
    }
}

/// Adds (`op` "add") or deletes ("del") the IPv6 default route of the
/// firewall namespace `fw`, through the internet namespace.
pub(crate) fn ipv6_default_route(fw: &str, op: &str) {
    ip(&[
        "-n",
        fw,
        "-6",
        "route",
        op,
        "default",
        "via",
        "2001:db8:ff00::2",
    ]);
}

/// Sets a sysctl inside namespace `ns`.
pub(crate) fn sysctl(ns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    // /proc/sys/net shows the namespace of the thread that opens it.
    in_ns(ns, || std::fs::write(&path, value))
        .unwrap_or_else(|e| panic!("sysctl {key} in {ns}: {e}"));
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_geowall();
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for n in [&self.app, &self.fw, &self.net] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Builds the test world database from `tests/fixtures/world.csv` into
/// `dir`.
pub(crate) fn test_world(dir: &Path) -> PathBuf {
    let out = dir.join("world.gwdb");
    // The root package's, also from mobile-ffi/ (which includes this file).
    let csv = ["tests/fixtures/world.csv", "../tests/fixtures/world.csv"]
        .iter()
        .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .find(|p| p.exists())
        .expect("tests/fixtures/world.csv");
    let mut b = geowall::intel::world::WorldBuilder::new();
    b.add_fixture_csv(&csv, &mut |_| {})
        .expect("the fixture world reads");
    let (bytes, _) = b.build(&mut |_| {}).expect("the fixture world builds");
    std::fs::write(&out, bytes).expect("write the world");
    out
}

/// A TLS 1.3-shaped ClientHello record naming `sni`.
pub(crate) fn client_hello(sni: &str) -> Vec<u8> {
    geowall::wire::tls::client_hello_record(sni)
}

/// Answers for the test's DNS server: name (lowercase, no final dot) and
/// type to records.
pub(crate) type Zone = fn(&str, hickory_proto::rr::RecordType) -> Vec<hickory_proto::rr::Record>;

/// A zone's answer that gives every name the IPv4 address `ip` (and no
/// other type anything): for servers told apart by what they answer.
pub(crate) fn every_name_is(
    name: &str,
    t: hickory_proto::rr::RecordType,
    ip: &str,
) -> Vec<hickory_proto::rr::Record> {
    use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};
    if t != RecordType::A {
        return Vec::new();
    }
    vec![Record::from_rdata(
        Name::from_ascii(name).expect("name"),
        60,
        RData::A(A(ip.parse().expect("ip"))),
    )]
}

/// The answer of the test's DNS server to `query`.
pub(crate) fn zone_answer(query: &[u8], zone: Zone) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    let n = question.name().to_lowercase().to_ascii();
    let records = zone(n.trim_end_matches('.'), question.query_type());
    if records.is_empty() && question.query_type() == hickory_proto::rr::RecordType::A {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m.add_query(question);
    m.add_answers(records);
    m.to_vec().ok()
}

impl Net {
    /// A DNS server in the internet namespace on `at`, over UDP and TCP,
    /// answering from `zone`; it counts the queries it got.
    pub(crate) fn dns_server(&mut self, at: SocketAddr, zone: Zone) -> Arc<AtomicUsize> {
        let served = Arc::new(AtomicUsize::new(0));
        let (net, stop) = (self.net.clone(), self.stop.clone());
        let (u, t) = in_ns(&net, || {
            (
                UdpSocket::bind(at).expect("bind dns/udp"),
                TcpListener::bind(at).expect("bind dns/tcp"),
            )
        });
        u.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        t.set_nonblocking(true).expect("nonblocking");
        let (s1, st1) = (served.clone(), stop.clone());
        self.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !st1.load(Ordering::SeqCst) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    s1.fetch_add(1, Ordering::SeqCst);
                    if let Some(a) = zone_answer(&buf[..n], zone) {
                        let _ = u.send_to(&a, from);
                    }
                }
            }
        }));
        self.stream_thread(t, zone, served.clone(), Some);
        served
    }

    /// The flag that stops the test's servers (set when the network is
    /// dropped).
    pub(crate) fn stopping(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// A DNS server over a stream (two-byte length framing) in the
    /// internet namespace on `at`: `wrap` turns each accepted connection
    /// into the stream spoken on (TLS, say). It counts the queries it
    /// answered.
    pub(crate) fn dns_stream_server<S: Read + Write>(
        &mut self,
        at: SocketAddr,
        zone: Zone,
        wrap: impl Fn(std::net::TcpStream) -> Option<S> + Send + 'static,
    ) -> Arc<AtomicUsize> {
        let served = Arc::new(AtomicUsize::new(0));
        let t = in_ns(&self.net, || {
            TcpListener::bind(at).expect("bind dns stream")
        });
        t.set_nonblocking(true).expect("nonblocking");
        self.stream_thread(t, zone, served.clone(), wrap);
        served
    }

    /// Accepts connections on `t` until the stop flag, answering framed
    /// queries from `zone` on each, one connection at a time.
    fn stream_thread<S: Read + Write>(
        &mut self,
        t: TcpListener,
        zone: Zone,
        served: Arc<AtomicUsize>,
        wrap: impl Fn(std::net::TcpStream) -> Option<S> + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((c, _)) = t.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let Some(mut c) = wrap(c) else {
                    continue;
                };
                let mut len = [0u8; 2];
                while c.read_exact(&mut len).is_ok() {
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if c.read_exact(&mut q).is_err() {
                        break;
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    if let Some(a) = zone_answer(&q, zone) {
                        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&a);
                        let _ = c.write_all(&framed);
                        let _ = c.flush();
                    }
                }
            }
        }));
    }
}

/// Asks `server` for `name`/`rtype` over UDP (or TCP); the answer.
pub(crate) fn dns_query(
    server: SocketAddr,
    name: &str,
    rtype: hickory_proto::rr::RecordType,
    tcp: bool,
) -> std::io::Result<hickory_proto::op::Message> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).map_err(std::io::Error::other)?,
        rtype,
    ));
    let q = m.to_vec().map_err(std::io::Error::other)?;
    let bytes = if tcp {
        let mut s = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&(q.len() as u16).to_be_bytes())?;
        s.write_all(&q)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut a = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut a)?;
        a
    } else {
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.send_to(&q, server)?;
        let mut buf = vec![0u8; 4096];
        let (n, _) = s.recv_from(&mut buf)?;
        buf.truncate(n);
        buf
    };
    Message::from_vec(&bytes).map_err(std::io::Error::other)
}

/// `ip:port` as a socket address.
pub(crate) fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// A server's reply: the request itself.
pub(crate) fn echo(req: &[u8]) -> Vec<u8> {
    req.to_vec()
}

/// Connects to `to`, sends `req`, closes the sending side and reads the
/// whole answer (3 s timeouts).
pub(crate) fn tcp_exchange(to: SocketAddr, req: &[u8]) -> std::io::Result<Vec<u8>> {
    tcp_exchange_within(to, req, Duration::from_secs(3))
}

/// [`tcp_exchange`] with timeouts of `t`.
pub(crate) fn tcp_exchange_within(
    to: SocketAddr,
    req: &[u8],
    t: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = std::net::TcpStream::connect_timeout(&to, t)?;
    s.set_read_timeout(Some(t))?;
    s.write_all(req)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Sends one datagram and waits up to `wait` for one back.
pub(crate) fn udp_exchange_within(
    to: SocketAddr,
    req: &[u8],
    wait: Duration,
) -> std::io::Result<Vec<u8>> {
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    s.set_read_timeout(Some(wait))?;
    s.send(req)?;
    let mut buf = vec![0u8; 65_536];
    let n = s.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// A call's first audio as an app sends it: two RTP packets of one
/// stream (`seq`, `seq + 1`), 20 ms apart, from one socket; waits (700 ms
/// at most) for the first datagram back.
pub(crate) fn media_exchange(to: SocketAddr, seq: u16) -> std::io::Result<Vec<u8>> {
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_millis(700)))?;
    s.send(&geowall::wire::rtc::rtp_packet(seq))?;
    std::thread::sleep(Duration::from_millis(20));
    s.send(&geowall::wire::rtc::rtp_packet(seq.wrapping_add(1)))?;
    let mut buf = vec![0u8; 65_536];
    let n = s.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// Sends one datagram and waits (700 ms at most) for one back.
pub(crate) fn udp_exchange(to: SocketAddr, req: &[u8]) -> std::io::Result<Vec<u8>> {
    udp_exchange_within(to, req, Duration::from_millis(700))
}

/// Runs `geowall ARGS --tun TUN` (status, reload) against this instance.
pub(crate) fn geowall_cli(net: &Net, args: &[&str]) -> std::process::Output {
    let Some(bin) = option_env!("CARGO_BIN_EXE_geowall") else {
        panic!("geowall_cli needs the geowall binary (the root package's tests)")
    };
    Command::new(bin)
        .args(args)
        .args(["--tun", &net.tun])
        .output()
        .expect("geowall runs")
}

/// `geowall reload` against this instance, which must succeed.
pub(crate) fn reload(net: &Net) {
    let out = geowall_cli(net, &["reload"]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts geowall with the policy file `policy` and `upstream` (an IPv4
/// address) as its plain DNS upstream.
pub(crate) fn start_with_resolver(net: &mut Net, world: &Path, policy: &Path, upstream: &str) {
    net.start_geowall(
        world,
        &[
            "--policy",
            policy.to_str().expect("utf-8"),
            "--dns-upstream",
            &format!("udp:{upstream}"),
        ],
    );
}

/// An SD-RTN-shaped probe naming an Agora edge (the vendor layer says CN
/// wherever the address is).
pub(crate) fn sd_rtn(host: &str) -> Vec<u8> {
    geowall::wire::rtc::sd_rtn_probe(host)
}
