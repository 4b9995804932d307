//! End to end through a real TUN, in network namespaces (root only; skips
//! otherwise): allowed flows work byte for byte, blocked flows put zero
//! packets on the wire at the server's side, rejected TCP sees an RST.
//! Servers sit in the test world's CN, HK, US and DE ranges.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Net, addr, echo, in_ns, media_exchange, sa, sd_rtn, tcp_exchange, udp_exchange};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The clubhouse rules, plus TCP rules to see reject and drop on the wire.
const POLICY: &str = r#"
name = "e2e"
default = "allow"

[[rule]]
name = "reject tcp 7000 to PRC"
action = "block"
block = "reject"
protocol = ["tcp"]
port = [7000]
jurisdiction = { countries = ["CN", "HK", "MO"] }

[[rule]]
name = "drop tcp 7001 to PRC"
action = "block"
block = "drop"
protocol = ["tcp"]
port = [7001]
jurisdiction = { countries = ["CN", "HK", "MO"] }

[[rule]]
name = "no pings or media to PRC jurisdiction"
action = "block"
block = "reject"
traffic = ["ping", "media"]
jurisdiction = { countries = ["CN", "HK", "MO"], layers = ["geo", "network", "owner", "vendor"], disputed = "any" }
"#;

/// Answers a ClientHello with the server name it carries.
fn sni_reply(req: &[u8]) -> Vec<u8> {
    let mut scratch = Vec::new();
    match geowall::wire::tls::client_hello(req, &mut scratch) {
        geowall::wire::tls::Hello::Found(h) => format!("sni:{}", h.sni.unwrap_or("-")).into_bytes(),
        _ => b"not a hello".to_vec(),
    }
}

fn silent(_: &[u8]) -> Vec<u8> {
    Vec::new()
}

/// One echo request from an unprivileged ping socket; the reply's data.
fn ping(to: &str) -> std::io::Result<Vec<u8>> {
    let ip: std::net::IpAddr = to.parse().map_err(std::io::Error::other)?;
    let (domain, proto, kind) = if ip.is_ipv4() {
        (socket2::Domain::IPV4, socket2::Protocol::ICMPV4, 8u8)
    } else {
        (socket2::Domain::IPV6, socket2::Protocol::ICMPV6, 128u8)
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(proto))?;
    s.set_read_timeout(Some(Duration::from_millis(700)))?;
    s.connect(&SocketAddr::new(ip, 0).into())?;
    let mut pkt = vec![kind, 0, 0, 0, 0, 0, 0, 1];
    pkt.extend_from_slice(b"geowall-ping-payload");
    s.send(&pkt)?;
    let mut buf = vec![0u8; 2048];
    let n = (&s).read(&mut buf)?;
    Ok(buf[8.min(n)..n].to_vec())
}

fn rtp(seq: u16) -> Vec<u8> {
    geowall::wire::rtc::rtp_packet(seq)
}

#[test]
fn allowed_flows_work_and_blocked_flows_never_reach_the_server() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    for ip in [addr::US, addr::CN, addr::US6, addr::CN6] {
        net.tcp_server(sa(ip, 7000), echo);
        net.tcp_server(sa(ip, 7001), echo);
        net.udp_server(sa(ip, 7000), echo);
    }
    net.tcp_server(sa(addr::US, 7443), sni_reply);
    for ip in [addr::US, addr::CN, addr::DE, addr::CN6] {
        net.udp_server(sa(ip, 5004), echo);
    }
    net.udp_server(sa(addr::HK, 4001), silent);
    net.udp_server(sa(addr::US2, 4001), silent);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);

    let app = net.app.clone();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    in_ns(&app, || {
        // TCP, both families, byte for byte (300 kB each way).
        for ip in [addr::US, addr::US6] {
            let got = tcp_exchange(sa(ip, 7000), &big).expect("tcp to US");
            assert!(
                got == big,
                "TCP to {ip}: {} bytes back, not the same",
                got.len()
            );
        }
        // A TLS ClientHello reaches the server intact.
        let hello = support::client_hello("meet.example.org");
        let got = tcp_exchange(sa(addr::US, 7443), &hello).expect("tls to US");
        assert_eq!(got, b"sni:meet.example.org");
        // Rejected TCP: an RST (refused or reset), never an answer.
        for ip in [addr::CN, addr::CN6] {
            match tcp_exchange(sa(ip, 7000), b"hello") {
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                    ),
                    "TCP to {ip}:7000: {e}"
                ),
                Ok(b) => panic!("TCP to {ip}:7000 was answered: {b:?}"),
            }
        }
        // Dropped TCP: no answer at all.
        assert!(tcp_exchange(sa(addr::CN, 7001), b"hello").is_err());
        // UDP echo, both families.
        for ip in [addr::US, addr::US6] {
            let got = udp_exchange(sa(ip, 7000), b"udp hello").expect("udp to US");
            assert_eq!(got, b"udp hello");
        }
        // Media: allowed to DE, blocked to CN (v4 and v6).
        assert_eq!(
            media_exchange(sa(addr::DE, 5004), 1).expect("rtp to DE"),
            rtp(1)
        );
        for ip in [addr::CN, addr::CN6] {
            for seq in 1..=5 {
                assert!(
                    media_exchange(sa(ip, 5004), seq * 2).is_err(),
                    "RTP to {ip}"
                );
            }
        }
        // SD-RTN probes: to HK, and to a US address (caught by the vendor;
        // that address is then known as an Agora edge's, so it gets its
        // own: pings to it would be blocked from now on).
        for ip in [addr::HK, addr::US2] {
            let _ = udp_exchange(sa(ip, 4001), &sd_rtn("104-166-161-75.edge.agora.io"));
        }
        // Ping: US answers, v4 and v6; CN and a US-located CN network don't.
        assert_eq!(ping(addr::US).expect("ping US"), b"geowall-ping-payload");
        assert_eq!(ping(addr::US6).expect("ping US6"), b"geowall-ping-payload");
        for ip in [addr::CN, addr::US_CN_NET, addr::CN6] {
            assert!(ping(ip).is_err(), "ping {ip} was answered");
        }
    });
    // Let the last packets land before reading the counters.
    std::thread::sleep(Duration::from_millis(200));
    let blocked = [
        (addr::CN, 6, 7000),
        (addr::CN6, 6, 7000),
        (addr::CN, 6, 7001),
        (addr::CN, 17, 5004),
        (addr::CN6, 17, 5004),
        (addr::HK, 17, 4001),
        (addr::US2, 17, 4001),
        (addr::CN, 1, 0),
        (addr::US_CN_NET, 1, 0),
        (addr::CN6, 58, 0),
    ];
    for (ip, proto, port) in blocked {
        assert_eq!(
            net.count(ip, proto, port),
            0,
            "packets reached {ip} proto {proto} port {port}"
        );
    }
    let allowed = [
        (addr::US, 6, 7000),
        (addr::US6, 6, 7000),
        (addr::US, 6, 7443),
        (addr::US, 17, 7000),
        (addr::US6, 17, 7000),
        (addr::DE, 17, 5004),
        (addr::US, 1, 0),
        (addr::US6, 58, 0),
    ];
    for (ip, proto, port) in allowed {
        assert!(
            net.count(ip, proto, port) > 0,
            "nothing reached {ip} proto {proto} port {port}"
        );
    }
    // Every decision is an event with its rule and layer.
    let events = net.events();
    let find = |kind: &str, server: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["server"] == server)
            .unwrap_or_else(|| panic!("no {kind} event for {server}: {events:#?}"))
    };
    let e = find("blocked", &format!("{}:4001", addr::US2));
    assert_eq!(e["layer"], "vendor:CN");
    assert_eq!(e["server_name"], "104-166-161-75.edge.agora.io");
    assert_eq!(
        find("blocked", &format!("{}:7000", addr::CN))["rule"],
        "reject tcp 7000 to PRC"
    );
    assert_eq!(find("blocked", addr::US_CN_NET)["layer"], "network:CN");
    assert_eq!(
        find("opened", &format!("{}:7443", addr::US))["server_name"],
        "meet.example.org"
    );
    net.stop_geowall();
}

/// Fail-closed: killed mid-transfer, geowall takes its TUN with it; the app
/// namespace has no route left and nothing reaches the server until
/// geowall is back, and then traffic flows again.
#[test]
fn when_geowall_dies_nothing_leaves_until_it_is_back() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    let rules = ["--policy", policy.to_str().expect("utf-8")];
    net.tcp_server(sa(addr::US, 7000), echo);
    net.udp_server(sa(addr::US, 7000), echo);
    net.start_geowall(&world, &rules);
    let app = net.app.clone();
    // A TCP connection in the middle of sending.
    let mut open = in_ns(&app, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7000), b"before").expect("udp"),
            b"before"
        );
        let mut s = TcpStream::connect_timeout(&sa(addr::US, 7000), TIMEOUT).expect("tcp");
        s.write_all(&[7u8; 50_000]).expect("first half");
        s
    });
    std::thread::sleep(Duration::from_millis(200));
    net.kill_geowall();
    std::thread::sleep(Duration::from_millis(200));
    let (tcp0, udp0) = (net.count(addr::US, 6, 7000), net.count(addr::US, 17, 7000));
    let routes = std::process::Command::new("ip")
        .args(["-n", &app, "route", "show", "table", "all"])
        .output()
        .expect("ip route");
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(!routes.contains(&net.tun), "the TUN is gone: {routes}");
    assert!(
        !routes.contains("default"),
        "no default route is left: {routes}"
    );
    in_ns(&app, || {
        let _ = open.write_all(&[8u8; 50_000]);
        assert!(udp_exchange(sa(addr::US, 7000), b"during").is_err());
        assert!(tcp_exchange(sa(addr::US, 7000), b"during").is_err());
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = (net.count(addr::US, 6, 7000), net.count(addr::US, 17, 7000));
    eprintln!(
        "kill: packets at the server after SIGKILL: {} TCP, {} UDP",
        after.0 - tcp0,
        after.1 - udp0
    );
    assert_eq!(
        after,
        (tcp0, udp0),
        "nothing reached the server while geowall was down"
    );
    // Back: traffic flows again.
    net.start_geowall(&world, &rules);
    in_ns(&app, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7000), b"after").expect("udp"),
            b"after"
        );
        assert_eq!(
            tcp_exchange(sa(addr::US, 7000), b"after").expect("tcp"),
            b"after"
        );
    });
    net.stop_geowall();
}

/// `geowall exec` (run here inside the test's firewall namespace, which
/// plays the host): the program runs as the sudo user in a namespace of its
/// own, its traffic goes through geowall (allowed byte for byte, blocked
/// never reaching the server), its output and exit status come through,
/// `--ui` prints the live page's loopback address, and the namespace is
/// gone afterwards.
#[test]
fn exec_confines_one_program() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("exec_confines_one_program: skipped (no /usr/bin/python3 to run as the program)");
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US, 7000), echo);
    net.udp_server(sa(addr::CN, 5004), echo);
    let script = format!(
        r#"
import os, socket, sys
print("uid", os.getuid())
print("tunables", os.environ.get("GLIBC_TUNABLES", "unset"), os.environ.get("GEOWALL_GLIBC_TUNABLES_BEFORE", "none"))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.sendto(b"through", ("{us}", 7000)); print("udp", u.recvfrom(100)[0].decode())
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); m.settimeout(0.5)
rtp = lambda seq: bytes([0x80, 96, 0, seq, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78]) + bytes(160)
try:
    m.sendto(rtp(1), ("{cn}", 5004)); m.sendto(rtp(2), ("{cn}", 5004))
    m.recvfrom(100); print("media answered")
except OSError as e:
    print("media blocked")
sys.exit(7)
"#,
        us = addr::US,
        cn = addr::CN
    );
    let out = geowall_exec(&net, &world, &policy, &["--ui"], &script)
        .env("GLIBC_TUNABLES", "glibc.malloc.check=0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("geowall exec runs");
    // `ip netns exec` execs geowall: its namespace is named after this id.
    let own = format!("gwexec{}", out.id());
    const TUNED: &[u8] = b"glibc.cpu.x86_rep_movsb_threshold=1073741824";
    // On an AMD CPU geowall starts again with glibc's vector copies (the
    // environment it was started with, as /proc shows it, says so).
    let amd = std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| c.contains("AuthenticAMD") || c.contains("HygonGenuine"));
    let environ = format!("/proc/{}/environ", out.id());
    let tuned = (0..100).any(|_| {
        // glibc's loader cuts the variable where it read it: the value
        // shows as separate strings.
        let seen =
            std::fs::read(&environ).is_ok_and(|e| e.windows(TUNED.len()).any(|w| w == TUNED));
        if !seen {
            std::thread::sleep(Duration::from_millis(10));
        }
        seen
    });
    assert_eq!(
        tuned,
        amd,
        "geowall runs with vector copies where the CPU is AMD's: {:?}",
        String::from_utf8_lossy(&std::fs::read(&environ).unwrap_or_default())
    );
    // Started again, it keeps its name.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", out.id())).unwrap_or_default();
    assert_eq!(comm.trim(), "geowall", "the process's name");
    let out = out.wait_with_output().expect("geowall exec ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit status passes through: {stdout} {stderr}"
    );
    assert!(
        stdout.contains("uid 65534"),
        "runs as the sudo user: {stdout}"
    );
    assert!(stdout.contains("udp through"), "{stdout} {stderr}");
    assert!(stdout.contains("media blocked"), "{stdout}");
    assert!(
        stdout.contains("tunables glibc.malloc.check=0 none"),
        "the program gets the environment geowall was given: {stdout}"
    );
    assert!(
        stderr.contains("live page at http://127.0.0.1:") && stderr.contains("/#"),
        "--ui prints the page's loopback address with its token: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        net.count(addr::CN, 17, 5004),
        0,
        "media never reached the CN relay"
    );
    assert!(net.count(addr::US, 17, 7000) > 0);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&left.stdout)
            .split_whitespace()
            .any(|n| n == own),
        "the namespace {own} is removed"
    );
}

/// `geowall exec` with the test's world and rules (its DNS upstream in the
/// internet namespace, and `extra` options) running the system's Python
/// on `script` as nobody, from the firewall namespace. (The system's
/// Python: one under root's home is not the user's to run.)
fn geowall_exec(
    net: &Net,
    world: &std::path::Path,
    policy: &std::path::Path,
    extra: &[&str],
    script: &str,
) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        &net.fw,
        env!("CARGO_BIN_EXE_geowall"),
        "exec",
    ])
    .arg("--world")
    .arg(world)
    .arg("--policy")
    .arg(policy)
    .args(["--dns-upstream", "udp:198.51.100.53"])
    .args(extra)
    .args(["--", "/usr/bin/python3", "-c", script])
    .env("SUDO_UID", "65534")
    .env("SUDO_GID", "65534");
    c
}

/// A program confined with `geowall exec` can be watched and steered as
/// any instance: `geowall status --tun gwx<PID>` (the TUN is named after
/// geowall's process id) answers while the program runs, and the control
/// socket is gone once it has exited.
#[test]
fn status_reaches_a_program_confined_with_exec() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("status_reaches_a_program_confined_with_exec: skipped (no /usr/bin/python3)");
        return;
    }
    let net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    let mut child = geowall_exec(&net, &world, &policy, &[], "import time; time.sleep(4)")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("geowall exec runs");
    // `ip netns exec` execs geowall: the same process id.
    let tun = format!("gwx{}", child.id());
    let status = |tun: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_geowall"))
            .args(["status", "--json", "--tun", tun])
            .output()
            .expect("geowall status runs")
    };
    let answered = (0..30).find_map(|_| {
        let out = status(&tun);
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    let answered = answered.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("`geowall status --tun {tun}` never answered")
    });
    let j: serde_json::Value = serde_json::from_str(&answered).expect("JSON");
    assert_eq!(j["policy"], "e2e", "{j}");
    let done = child.wait().expect("exec ends");
    assert!(done.success(), "{done:?}");
    let after = status(&tun);
    assert!(!after.status.success(), "the socket is removed at the end");
    assert!(
        !std::path::Path::new(&format!("/run/geowall/{tun}.sock")).exists(),
        "the socket file is removed"
    );
}

/// `geowall status` and `geowall reload` against a running instance: the
/// status shows the flows and blocks; a reload applies new rules to new
/// flows, and a broken file is refused with the running rules kept.
#[test]
fn status_and_reload_work_against_a_running_instance() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US, 7000), echo);
    net.udp_server(sa(addr::CN, 5004), echo);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    in_ns(&app, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7000), b"one").expect("udp"),
            b"one"
        );
        assert!(media_exchange(sa(addr::CN, 5004), 1).is_err());
    });
    std::thread::sleep(Duration::from_millis(300));
    let geowall = |args: &[&str]| support::geowall_cli(&net, args);
    let out = geowall(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["policy"], "e2e");
    assert!(
        v["opened"].as_u64() >= Some(1) && v["blocked"].as_u64() >= Some(1),
        "{v}"
    );
    assert!(v["flows_open"].as_u64() >= Some(1), "{v}");
    assert!(
        v["bytes_up"].as_u64() >= Some(3) && v["bytes_down"].as_u64() >= Some(3),
        "{v}"
    );
    assert_eq!(v["blocked_by_jurisdiction"]["geo:CN"], 1, "{v}");
    // A broken file: refused, the running rules stay.
    std::fs::write(&policy, "name = 'broken'\n[[rule]]\n").expect("write");
    let out = geowall(&["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the running rules stay"));
    in_ns(&app, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7000), b"two").expect("udp"),
            b"two"
        );
    });
    // New rules: UDP 7000 to the US is blocked for new flows.
    let blocked = format!(
        "{POLICY}\n[[rule]]\nname = \"no udp 7000\"\naction = \"block\"\nprotocol = [\"udp\"]\nport = [7000]\n"
    );
    std::fs::write(
        &policy,
        blocked.replace("name = \"e2e\"", "name = \"e2e-2\""),
    )
    .expect("write");
    let out = geowall(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("e2e-2"));
    std::thread::sleep(Duration::from_millis(100));
    let before = net.count(addr::US, 17, 7000);
    in_ns(&app, || {
        assert!(
            udp_exchange(sa(addr::US, 7000), b"three").is_err(),
            "blocked after the reload"
        );
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(net.count(addr::US, 17, 7000), before);
    net.stop_geowall();
}

/// Waits up to 5 s for an event that `pred` accepts; the events so far.
fn wait_event(net: &Net, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let t = std::time::Instant::now();
    loop {
        let ev = net.events();
        if ev.iter().any(&pred) || t.elapsed() > Duration::from_secs(5) {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A closed flow's event counts its packets and bytes each way (checked
/// against what the app sent); `status` adds them up by destination; after
/// logrotate moves the events file, SIGHUP makes geowall write a new one.
#[test]
fn closed_flows_carry_their_bytes_and_sighup_reopens_the_events() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.tcp_server(sa(addr::US, 7002), echo);
    net.start_geowall(&world, &["--policy", policy.to_str().expect("utf-8")]);
    let app = net.app.clone();
    let request = vec![b'x'; 20_000];
    in_ns(&app, || {
        assert_eq!(
            tcp_exchange(sa(addr::US, 7002), &request).expect("tcp"),
            request
        );
    });
    let closed = |e: &serde_json::Value| e["kind"] == "closed" && e["proto"] == "tcp";
    let ev = wait_event(&net, closed);
    let c = ev.iter().find(|e| closed(e)).expect("a closed TCP flow");
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    // 20,000 bytes each way, plus the IP and TCP headers of every segment.
    for (packets, bytes) in [("packets_up", "bytes_up"), ("packets_down", "bytes_down")] {
        assert!(
            n(bytes) >= 20_000 + 40 * n(packets) && n(bytes) < 20_000 + 80 * n(packets),
            "{c}"
        );
    }
    let out = support::geowall_cli(&net, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let row = v["bytes_by_destination"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["destination"] == addr::US))
        .unwrap_or_else(|| panic!("the US server by bytes: {v}"));
    assert_eq!(
        (row["bytes_up"].as_u64(), row["bytes_down"].as_u64()),
        (Some(n("bytes_up")), Some(n("bytes_down"))),
        "{v}"
    );
    // Media the rules block, its flow still open: what the app sent is
    // listed apart, never among the bytes that went to a destination.
    in_ns(&app, || {
        assert!(media_exchange(sa(addr::CN, 7004), 1).is_err());
    });
    assert_eq!(net.count(addr::CN, 17, 7004), 0);
    let t = std::time::Instant::now();
    let v = loop {
        let out = support::geowall_cli(&net, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if v["blocked_bytes_by_destination"][0]["destination"] == addr::CN
            || t.elapsed() > Duration::from_secs(5)
        {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let blocked = &v["blocked_bytes_by_destination"];
    assert_eq!(blocked[0]["destination"], addr::CN, "{v}");
    assert_eq!(blocked[0]["packets_up"], 2, "{v}");
    let rows = v["bytes_by_destination"].as_array().expect("rows");
    assert!(!rows.iter().any(|r| r["destination"] == addr::CN), "{v}");
    let out = support::geowall_cli(&net, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bytes by destination"), "{text}");
    assert!(
        text.contains("blocked flows' bytes by destination"),
        "{text}"
    );
    // logrotate: the file moves, SIGHUP, the next events go to a new file.
    let rotated = net.events.with_extension("1");
    std::fs::rename(&net.events, &rotated).expect("rotate");
    let pid = net.geowall_pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    std::thread::sleep(Duration::from_millis(300));
    in_ns(&app, || {
        assert_eq!(
            tcp_exchange(sa(addr::US, 7002), b"again").expect("tcp after SIGHUP"),
            b"again"
        );
    });
    let ev = wait_event(&net, closed);
    assert!(
        ev.iter().any(closed),
        "the new file has the new flow: {ev:?}"
    );
    assert!(
        net.geowall_pid().is_some() && net.wait_geowall(Duration::from_millis(100)).is_none(),
        "SIGHUP does not stop geowall"
    );
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    assert_eq!(
        old.lines()
            .filter(|l| l.contains("\"kind\":\"closed\""))
            .count(),
        1,
        "{old}"
    );
    // A UDP flow still open when geowall stops is closed in the log too,
    // with its bytes (a study of where the bytes went misses none).
    net.udp_server(sa(addr::US, 7003), |q| q.to_vec());
    in_ns(&app, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7003), b"open at stop").expect("udp"),
            b"open at stop"
        );
    });
    net.stop_geowall();
    let ev = net.events();
    let udp = ev
        .iter()
        .find(|e| {
            e["kind"] == "closed"
                && e["proto"] == "udp"
                && e["server"] == format!("{}:7003", addr::US)
        })
        .unwrap_or_else(|| panic!("the open UDP flow closed at the stop: {ev:#?}"));
    // 12 bytes each way, in one datagram (IPv4 and UDP headers: 28).
    assert_eq!(
        (udp["bytes_up"].as_u64(), udp["bytes_down"].as_u64()),
        (Some(40), Some(40)),
        "{udp}"
    );
}

fn snapshot(ns: &str) -> String {
    let mut s = String::new();
    for args in [
        vec!["-4", "rule"],
        vec!["-6", "rule"],
        vec!["-4", "route", "show", "table", "all"],
        vec!["-6", "route", "show", "table", "all"],
    ] {
        let out = std::process::Command::new("ip")
            .args(["-n", ns])
            .args(&args)
            .output()
            .expect("ip");
        // Link-local addresses of a fresh namespace appear when their
        // duplicate address detection ends, whatever geowall does.
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if !l.contains("fe80:") {
                s.push_str(l);
                s.push('\n');
            }
        }
    }
    s
}

/// Removes a directory when dropped.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The resolv.conf `ip netns exec` shows as `/etc/resolv.conf` in the
/// namespace `net.fw` plays the host in (`geowall run` changes it, never
/// the real one), naming 192.0.2.99; removed when the guard drops.
fn host_resolv(net: &Net) -> (Remove, std::path::PathBuf) {
    let etc = std::path::PathBuf::from("/etc/netns").join(&net.fw);
    std::fs::create_dir_all(&etc).expect("etc");
    let resolv = etc.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.99\n").expect("resolv.conf");
    (Remove(etc), resolv)
}

/// What a reboot clears while `geowall run` held the host: its routing
/// rules and table (the kernel's), and /run.
fn reboot(net: &Net) {
    for fam in ["-4", "-6"] {
        for prio in ["6776", "6777"] {
            while std::process::Command::new("ip")
                .args(["-n", &net.fw, fam, "rule", "del", "priority", prio])
                .output()
                .is_ok_and(|o| o.status.success())
            {}
        }
        support::ip(&["-n", &net.fw, fam, "route", "flush", "table", "6777"]);
    }
    // Where the resolver's backup lived before it moved to the state
    // directory: a tmpfs, empty after a power loss.
    let _ = std::fs::remove_file("/run/geowall/resolv.conf.before");
}

/// A power loss while `geowall run` holds the host: at the next boot the
/// kernel's rules and /run are gone, but /etc/resolv.conf still names
/// geowall. A restart keeps the host's own resolver as its backup (a
/// clean stop puts it back), and `geowall down` puts it back from the
/// state directory.
#[test]
fn down_restores_the_resolver_after_a_power_loss() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    let (_cleanup, resolv) = host_resolv(&net);
    let read = || std::fs::read_to_string(&resolv).expect("read");
    let before = snapshot(&net.fw);
    let power_loss = |mut g: std::process::Child| {
        let _ = g.kill();
        let _ = g.wait();
        reboot(&net);
        assert_eq!(snapshot(&net.fw), before, "the reboot cleared the routing");
        assert!(
            read().contains("198.18.255.2"),
            "still geowall's: {}",
            read()
        );
    };
    power_loss(start_run(&net, &world, &policy));
    // geowall starts again at boot, then stops cleanly.
    let g = start_run(&net, &world, &policy);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut g = g;
    let _ = g.wait();
    assert_eq!(
        read(),
        "nameserver 192.0.2.99\n",
        "the host's own, kept across the power loss"
    );
    // Or it does not start again: `down` puts the resolver back.
    power_loss(start_run(&net, &world, &policy));
    let out = down_in(&net, &[]).output().expect("down");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("resolver restored"),
        "{err}"
    );
    assert_eq!(read(), "nameserver 192.0.2.99\n");
    let out = down_in(&net, &[]).output().expect("down");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to remove"));
}

/// Runs `script` with bash in the namespace `ns`, as user `uid` (through
/// setpriv) unless it is 0; its exit status.
fn bash_in(ns: &str, uid: u32, script: &str) -> std::process::ExitStatus {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", ns]);
    if uid != 0 {
        let id = uid.to_string();
        c.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
    }
    c.args(["bash", "-c", script]).status().expect("bash runs")
}

/// Under `geowall run`, each new flow's owner is found (by sock_diag, off
/// the engine's thread) before it is judged: `uid` and `app` rules (a
/// glob) block the flows of one user and of one program, and no other;
/// the events name both.
#[test]
fn run_judges_flows_by_their_program_and_user() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let policy = r#"
name = "owners"
default = "allow"

[[rule]]
name = "nobody stays home"
action = "block"
uid = [65534]

[[rule]]
name = "no shells to 7001"
action = "block"
block = "reject"
app = ["b*sh"]
port = [7001]
"#;
    let (policy, world) = net.policy_and_world(policy);
    net.udp_server(sa(addr::US, 7000), echo);
    net.udp_server(sa(addr::US, 7001), echo);
    net.tcp_server(sa(addr::US, 7001), echo);
    let (_cleanup, _) = host_resolv(&net);
    let mut g = start_run(&net, &world, &policy);
    let fw = net.fw.clone();
    // Each socket stays open a moment after sending, as an app's does
    // (waiting for the echo in the shell itself: a `sleep` would hold the
    // socket too).
    let send = |port: u16| {
        format!(
            "exec 3<>/dev/udp/{}/{port}; printf x >&3; read -r -t 0.5 -u 3 _ || true",
            addr::US
        )
    };
    assert!(bash_in(&fw, 65534, &send(7000)).success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        net.count(addr::US, 17, 7000),
        0,
        "nobody's datagram stayed home"
    );
    assert!(bash_in(&fw, 0, &send(7000)).success());
    assert!(bash_in(&fw, 0, &send(7001)).success());
    let tcp = bash_in(&fw, 0, &format!("exec 3<>/dev/tcp/{}/7001", addr::US));
    std::thread::sleep(Duration::from_millis(300));
    let (at_7000, at_7001) = (net.count(addr::US, 17, 7000), net.count(addr::US, 17, 7001));
    // The test itself (not a shell, not nobody) is let through.
    let me = in_ns(&fw, || {
        (
            udp_exchange(sa(addr::US, 7000), b"me").is_ok(),
            udp_exchange(sa(addr::US, 7001), b"me").is_ok(),
        )
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = g.wait();
    assert_eq!(at_7000, 1, "root's shell reached 7000");
    assert_eq!(at_7001, 0, "no shell reached 7001");
    assert!(!tcp.success(), "a shell's connection to 7001 is refused");
    assert_eq!(me, (true, true));
    let ev = net.events();
    let blocked = |rule: &str| {
        ev.iter()
            .find(|e| e["kind"] == "blocked" && e["rule"] == rule)
            .cloned()
            .unwrap_or_else(|| panic!("no block by {rule}: {ev:#?}"))
    };
    let b = blocked("nobody stays home");
    assert_eq!(b["uid"], 65534, "{b}");
    assert_eq!(b["app"], "/usr/bin/bash", "{b}");
    let b = blocked("no shells to 7001");
    assert_eq!(
        (b["uid"].as_u64(), b["app"].as_str()),
        (Some(0), Some("/usr/bin/bash")),
        "{b}"
    );
}

/// Under `geowall run` with rules that do not look at owners, a TCP
/// connection is accepted while its program is being found and judged
/// once it is: the request reaches the server and the `opened` event names
/// the program; a connection the address alone blocks still fails at once,
/// and nothing reaches that server.
#[test]
fn run_finds_the_program_of_a_connection_it_accepted_before_judging_it() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let policy = r#"
name = "no owner rules"
default = "allow"

[[rule]]
name = "nothing to PRC"
action = "block"
block = "reject"
jurisdiction = { countries = ["CN"] }
"#;
    let (policy, world) = net.policy_and_world(policy);
    net.tcp_server(sa(addr::US, 7001), echo);
    net.tcp_server(sa(addr::CN, 7001), echo);
    let (_cleanup, _) = host_resolv(&net);
    let mut g = start_run(&net, &world, &policy);
    let fw = net.fw.clone();
    let (us, cn) = in_ns(&fw, || {
        let us = tcp_exchange(sa(addr::US, 7001), b"whose?");
        let t = std::time::Instant::now();
        let cn = TcpStream::connect_timeout(&sa(addr::CN, 7001), Duration::from_secs(2));
        (us, cn.map(drop).map_err(|e| (e.kind(), t.elapsed())))
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = g.wait();
    assert_eq!(us.expect("US").as_slice(), b"whose?");
    let (kind, took) = cn.expect_err("the CN connect is refused");
    assert_eq!(kind, ErrorKind::ConnectionRefused);
    assert!(took < Duration::from_secs(1), "at once: {took:?}");
    assert_eq!(net.count(addr::CN, 6, 7001), 0);
    let me = std::env::current_exe().expect("this test's program");
    let ev = net.events();
    let opened = ev
        .iter()
        .find(|e| e["kind"] == "opened" && e["server"] == format!("{}:7001", addr::US))
        .unwrap_or_else(|| panic!("no opened event: {ev:#?}"));
    assert_eq!(opened["app"], me.to_str().expect("utf8"), "{opened}");
    assert_eq!(opened["uid"], 0, "{opened}");
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "blocked" && e["rule"] == "nothing to PRC"),
        "{ev:#?}"
    );
}

/// Where the tests' `geowall run` keeps its state (never the host's).
fn run_state(net: &Net) -> std::path::PathBuf {
    net.dir.path().join("run-state")
}

/// `geowall SUB` in the namespace `net.fw` plays the host in, with the
/// tests' state directory.
fn in_host(net: &Net, sub: &str) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &net.fw, env!("CARGO_BIN_EXE_geowall"), sub])
        .arg("--state-dir")
        .arg(run_state(net));
    c
}

/// `geowall down ARGS` in the namespace `net.fw` plays the host in.
fn down_in(net: &Net, args: &[&str]) -> std::process::Command {
    let mut c = in_host(net, "down");
    c.args(args);
    c
}

/// `geowall run` in the namespace that plays the host, on `world` and
/// `policy`.
fn run_command(
    net: &Net,
    world: &std::path::Path,
    policy: &std::path::Path,
) -> std::process::Command {
    let mut c = in_host(net, "run");
    c.arg("--world").arg(world).arg("--policy").arg(policy);
    c
}

fn start_run(net: &Net, world: &std::path::Path, policy: &std::path::Path) -> std::process::Child {
    use std::io::BufRead;
    let mut c = run_command(net, world, policy)
        .args(["--dns-upstream", "udp:198.51.100.53"])
        .arg("--events")
        .arg(&net.events)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("geowall run");
    let mut err = std::io::BufReader::new(c.stderr.take().expect("stderr"));
    let mut line = String::new();
    let _ = err.read_line(&mut line);
    assert!(
        line.contains("whole host goes through"),
        "geowall run did not start: {line}"
    );
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    c
}

/// `geowall run` in a namespace that plays the host (never on the real
/// host): all of its traffic, IPv4 and IPv6, goes through geowall; SIGTERM
/// leaves rules, routes and resolver exactly as before; after SIGKILL
/// nothing leaves until `geowall down`, which is idempotent.
/// `geowall run` with the default `system` DNS upstream on a host whose
/// resolv.conf names a local stub (127.0.0.53, as systemd-resolved's
/// does) besides a real server: the stub (played here by a forwarder that
/// asks through the TUN, as resolved does once the host points at
/// geowall) would ask geowall back, so geowall asks the real server only
/// (the stub is asked nothing), and the host's names resolve. A stub alone: geowall does not start, says what to give,
/// and the host stays blocked until `down`.
#[test]
fn run_never_takes_a_local_stub_for_its_upstream() {
    use hickory_proto::rr::{RData, RecordType, rdata::A};
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    fn zone(name: &str, t: RecordType) -> Vec<hickory_proto::rr::Record> {
        match (name, t) {
            ("ok.example", RecordType::A) => vec![hickory_proto::rr::Record::from_rdata(
                hickory_proto::rr::Name::from_ascii(name).expect("name"),
                60,
                RData::A(A(addr::US.parse().expect("ip"))),
            )],
            _ => Vec::new(),
        }
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.add_server_address("198.51.100.53");
    let served = net.dns_server(sa("198.51.100.53", 53), zone);
    let (_cleanup, resolv) = host_resolv(&net);
    std::fs::write(&resolv, "nameserver 127.0.0.53\nnameserver 198.51.100.53\n").expect("write");
    // The host's stub, as systemd-resolved's behaves once the host points
    // at geowall: it asks geowall (through the TUN), counting what it is
    // asked.
    let fw = net.fw.clone();
    let (stub, ask) = in_ns(&fw, || {
        let stub = std::net::UdpSocket::bind("127.0.0.53:53").expect("bind the stub");
        let ask = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        (stub, ask)
    });
    stub.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    ask.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let stub_asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (stop, n) = (net.stopping(), stub_asked.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((k, from)) = stub.recv_from(&mut buf) else {
                    continue;
                };
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = ask.send_to(&buf[..k], sa("192.0.2.99", 53));
                let mut answer = [0u8; 1500];
                if let Ok(a) = ask.recv(&mut answer) {
                    let _ = stub.send_to(&answer[..a], from);
                }
            }
        });
    }
    let start = || {
        run_command(&net, &world, &policy)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("geowall run")
    };
    let mut g = start();
    let mut err = std::io::BufReader::new(g.stderr.take().expect("stderr"));
    let mut said = String::new();
    while !said.contains("whole host goes through") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) == 0 {
            panic!("geowall run did not start: {said}");
        }
        said.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    assert!(said.contains("DNS upstream: 198.51.100.53"), "{said}");
    let answer = in_ns(&fw, || {
        support::dns_query(sa("192.0.2.99", 53), "ok.example", RecordType::A, false)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = g.wait();
    let answer = answer.expect("the host's query is answered");
    let got: Vec<_> = answer.answers.iter().map(|r| r.data.clone()).collect();
    assert_eq!(
        got,
        [RData::A(A(addr::US.parse().expect("ip")))],
        "{answer:?}"
    );
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(
        stub_asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "geowall never asks the stub that asks geowall"
    );
    // A stub alone.
    std::fs::write(&resolv, "nameserver 127.0.0.53\n").expect("write");
    let mut g = start();
    let ended = (0..200).any(|_| {
        let done = g.try_wait().ok().flatten().is_some();
        if !done {
            std::thread::sleep(Duration::from_millis(50));
        }
        done
    });
    if !ended {
        let _ = g.kill();
    }
    let out = g.wait_with_output().expect("geowall run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(ended, "geowall run started on a local stub alone: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--dns-upstream") && err.contains("127.0.0.53"),
        "{err}"
    );
    let blocked = in_ns(&fw, || udp_exchange(sa(addr::US, 7000), b"x"));
    assert!(blocked.is_err(), "fail-closed until down");
    let out = down_in(&net, &[]).output().expect("down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network change under `geowall run`: the host's resolver settings now
/// name another DNS server (as a network manager writes them on a new
/// link), and geowall, which answers every query, asks the new server from
/// then on, without a restart; the old one is asked nothing more.
#[test]
fn run_follows_the_host_s_dns_servers_when_the_network_changes() {
    use hickory_proto::rr::{RData, RecordType, rdata::A};
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    fn first(name: &str, t: RecordType) -> Vec<hickory_proto::rr::Record> {
        support::every_name_is(name, t, addr::US)
    }
    fn second(name: &str, t: RecordType) -> Vec<hickory_proto::rr::Record> {
        support::every_name_is(name, t, addr::US2)
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.add_server_address("198.51.100.53");
    net.add_server_address("198.51.100.54");
    let asked_first = net.dns_server(sa("198.51.100.53", 53), first);
    let asked_second = net.dns_server(sa("198.51.100.54", 53), second);
    let (_cleanup, resolv) = host_resolv(&net);
    std::fs::write(&resolv, "nameserver 198.51.100.53\n").expect("write");
    let mut g = run_command(&net, &world, &policy)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("geowall run");
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let mut err = std::io::BufReader::new(g.stderr.take().expect("stderr"));
        let said = said.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0 {
                said.lock().expect("said").push_str(&line);
                line.clear();
            }
        });
    }
    let says = |what: &str| {
        (0..200).any(|_| {
            let found = said.lock().expect("said").contains(what);
            if !found {
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        })
    };
    let started = says("whole host goes through");
    let fw = net.fw.clone();
    let ask = |name: &str| {
        in_ns(&fw, || {
            support::dns_query(sa("192.0.2.99", 53), name, RecordType::A, false)
        })
        .map(|m| m.answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>())
    };
    let before = started.then(|| ask("one.example"));
    // The new link's servers, as its manager writes them.
    std::fs::write(&resolv, "nameserver 198.51.100.54\n").expect("write");
    let followed = started && says("DNS upstream now 198.51.100.54");
    let first_count = asked_first.load(std::sync::atomic::Ordering::SeqCst);
    let after = followed.then(|| ask("two.example"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = g.wait();
    let said = said.lock().expect("said").clone();
    assert!(started, "geowall run did not start: {said}");
    assert!(said.contains("DNS upstream: 198.51.100.53"), "{said}");
    let us = |ip: &str| vec![RData::A(A(ip.parse().expect("ip")))];
    assert_eq!(
        before.map(|r| r.expect("answered")),
        Some(us(addr::US)),
        "{said}"
    );
    assert!(followed, "the new server was not taken: {said}");
    assert_eq!(
        after.map(|r| r.expect("answered")),
        Some(us(addr::US2)),
        "answered by the new server: {said}"
    );
    assert!(asked_second.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(
        asked_first.load(std::sync::atomic::Ordering::SeqCst),
        first_count,
        "the old server is asked nothing more"
    );
}

#[test]
fn run_routes_the_whole_host_and_fails_closed() {
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US, 7000), echo);
    net.udp_server(sa(addr::US6, 7000), echo);
    net.udp_server(sa(addr::CN, 5004), echo);
    // `ip netns exec` shows this file as the namespace's /etc/resolv.conf:
    // geowall run changes it, never the real one.
    let (_cleanup, resolv) = host_resolv(&net);
    let real = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let before = snapshot(&net.fw);
    let fw = net.fw.clone();

    let mut g = start_run(&net, &world, &policy);
    assert!(
        std::fs::read_to_string(&resolv)
            .expect("read")
            .contains("198.18.255.2")
    );
    let r = in_ns(&fw, || {
        (
            udp_exchange(sa(addr::US, 7000), b"v4").map_err(|e| e.to_string()),
            // In a namespace this fresh the veth's link-local address may
            // still be in duplicate address detection for about a second,
            // which holds up neighbour discovery for the first packets.
            (0..4)
                .map(|_| udp_exchange(sa(addr::US6, 7000), b"v6"))
                .find(Result::is_ok)
                .unwrap_or_else(|| Err(std::io::Error::other("no IPv6 answer in 4 tries")))
                .map_err(|e| e.to_string()),
            media_exchange(sa(addr::CN, 5004), 1).is_err(),
        )
    });
    if r.0.is_err() || r.1.is_err() || !r.2 {
        let _ = g.kill();
        let _ = g.wait();
        panic!(
            "{r:?}; events: {:#?}; routes: {}",
            net.events(),
            snapshot(&net.fw)
        );
    }
    assert_eq!(
        net.count(addr::CN, 17, 5004),
        0,
        "media never reached the CN relay"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = g.wait();
    assert_eq!(snapshot(&net.fw), before, "rules and routes as before");
    assert_eq!(
        std::fs::read_to_string(&resolv).expect("read"),
        "nameserver 192.0.2.99\n"
    );

    // Killed: fail-closed until `geowall down`.
    let mut g = start_run(&net, &world, &policy);
    in_ns(&fw, || {
        assert_eq!(udp_exchange(sa(addr::US, 7000), b"a").expect("up"), b"a")
    });
    let _ = g.kill();
    let _ = g.wait();
    std::thread::sleep(Duration::from_millis(200));
    let n = net.count(addr::US, 17, 7000);
    in_ns(&fw, || {
        assert!(udp_exchange(sa(addr::US, 7000), b"leak?").is_err());
        assert!(udp_exchange(sa(addr::US6, 7000), b"leak?").is_err());
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        net.count(addr::US, 17, 7000),
        n,
        "nothing left while geowall was dead"
    );
    let down = |expect: &str| {
        let out = down_in(&net, &[]).output().expect("down");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(expect));
    };
    // The unit's stop step after a crash, as systemd runs it: everything
    // stays and nothing leaves; only a clean stop removes the setup.
    let blocked = snapshot(&net.fw);
    for result in ["signal", "exit-code", "core-dump", "timeout", ""] {
        let mut c = down_in(&net, &["--after-stop"]);
        if !result.is_empty() {
            c.env("SERVICE_RESULT", result);
        }
        let out = c.output().expect("down --after-stop");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("stay"));
        assert_eq!(
            snapshot(&net.fw),
            blocked,
            "kept after SERVICE_RESULT={result}"
        );
        assert!(
            std::fs::read_to_string(&resolv)
                .expect("read")
                .contains("198.18.255.2"),
            "the resolver stays pointed at geowall"
        );
    }
    in_ns(&fw, || {
        assert!(udp_exchange(sa(addr::US, 7000), b"leak?").is_err());
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(net.count(addr::US, 17, 7000), n, "still nothing leaves");
    // A restart after the crash keeps the host blocked throughout and its
    // SIGTERM restores the host as it was before the first start.
    let mut g = start_run(&net, &world, &policy);
    in_ns(&fw, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7000), b"b").expect("up again"),
            b"b"
        )
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = g.wait();
    assert_eq!(snapshot(&net.fw), before, "restored after the restart");
    assert_eq!(
        std::fs::read_to_string(&resolv).expect("read"),
        "nameserver 192.0.2.99\n",
        "the host's own resolver, kept across the crash"
    );
    // Crash again; this time a clean stop's step removes it all.
    let mut g = start_run(&net, &world, &policy);
    let _ = g.kill();
    let _ = g.wait();
    let out = down_in(&net, &["--after-stop"])
        .env("SERVICE_RESULT", "success")
        .output()
        .expect("down --after-stop");
    assert!(out.status.success());
    assert_eq!(snapshot(&net.fw), before, "a clean stop removes it");
    down("nothing to remove");
    // And by hand after a crash.
    let mut g = start_run(&net, &world, &policy);
    let _ = g.kill();
    let _ = g.wait();
    down("removed");
    down("nothing to remove");
    assert_eq!(
        snapshot(&net.fw),
        before,
        "down restores the rules and routes"
    );
    assert_eq!(
        std::fs::read_to_string(&resolv).expect("read"),
        "nameserver 192.0.2.99\n"
    );
    assert_eq!(
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        real,
        "the real resolver untouched"
    );
}

/// `geowall run` whose only rules are an expired bundle (and nothing was
/// accepted before) does not run open: it installs the blackhole and its
/// rules, says why, and exits; nothing leaves the namespace, to any
/// server, until `geowall down`.
#[test]
fn run_with_an_expired_bundle_blocks_the_host() {
    use geowall::policy::bundle;
    if !support::root_or_skip("netns_e2e") {
        return;
    }
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(POLICY);
    net.udp_server(sa(addr::US, 7000), echo);
    net.udp_server(sa(addr::CN, 7000), echo);
    let (_cleanup, _) = host_resolv(&net);
    let fw = net.fw.clone();
    let before = snapshot(&fw);
    // Reachable before.
    in_ns(&fw, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7000), b"hi").expect("open"),
            b"hi"
        )
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let key = bundle::SigningKey::from_bytes(&[8; 32]);
    let pubkey = dir.path().join("key.pub");
    std::fs::write(&pubkey, bundle::key_hex(key.verifying_key().as_bytes())).expect("key");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("policy.toml"), "name = 'old'\ndefault = 'allow'\n").expect("policy");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expired = bundle::sign(
        &bundle::build(&src, 3, now - 7_200, now - 3_600).expect("build"),
        &key,
    )
    .expect("sign");
    let b = dir.path().join("expired.gwb");
    std::fs::write(&b, expired).expect("bundle");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &fw, env!("CARGO_BIN_EXE_geowall"), "run"])
        .arg("--world")
        .arg(&world)
        .arg("--bundle")
        .arg(&b)
        .arg("--pubkey")
        .arg(&pubkey)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--dns-upstream", "udp:198.51.100.53"])
        .output()
        .expect("geowall run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("expired") && err.contains("blocked (fail-closed"),
        "a clear message: {err}"
    );
    let us = net.count(addr::US, 17, 7000);
    let cn = net.count(addr::CN, 17, 7000);
    in_ns(&fw, || {
        assert!(udp_exchange(sa(addr::US, 7000), b"leak?").is_err());
        assert!(udp_exchange(sa(addr::CN, 7000), b"leak?").is_err());
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        (net.count(addr::US, 17, 7000), net.count(addr::CN, 17, 7000)),
        (us, cn),
        "nothing left, to any server"
    );
    assert_ne!(
        snapshot(&fw),
        before,
        "the blackhole and its rules are in place"
    );
    let down = down_in(&net, &[]).output().expect("down");
    assert!(down.status.success());
    assert_eq!(snapshot(&fw), before, "down opens it again");
    in_ns(&fw, || {
        assert_eq!(
            udp_exchange(sa(addr::US, 7000), b"hi").expect("open again"),
            b"hi"
        )
    });
}
