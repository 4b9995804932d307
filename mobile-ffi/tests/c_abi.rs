//! A C program (`tests/c/host.c`, compiled here with the system `cc`)
//! embeds geowall through `include/geowall.h` and `libgeowall_ffi.so`, the
//! way a phone app would: it opens a TUN in a network namespace, starts the
//! engine with a `protect_socket` callback that marks each upstream socket
//! (policy routing sends marked sockets past the TUN, everything else into
//! it), and the test sends real traffic through it, updates the rules
//! bundle (a valid one applies, a tampered or rolled-back one is refused and
//! the rules stay), reads stats, stops and frees. Under valgrind when it is
//! installed: no leak, no invalid access. Root only; skips otherwise.

#[path = "../../tests/support/mod.rs"]
mod support;

mod host;

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::rr::{RData, RecordType, rdata::A};

use geowall::policy::bundle;
use host::{compile, library_dir, stat};
use support::{Net, addr, echo, in_ns, sa, tcp_exchange};

const MARK: &str = "0x77";

/// What the engine starts with: PRC-jurisdiction TCP 7000 rejected.
const POLICY: &str = r#"
name = "ffi-start"
default = "allow"

[[rule]]
name = "reject tcp 7000 to PRC"
action = "block"
block = "reject"
protocol = ["tcp"]
port = [7000]
jurisdiction = { countries = ["CN", "HK", "MO"] }
"#;

/// What the signed bundle brings: the same, plus 198.51.100.20 blocked.
const BUNDLE_POLICY: &str = r#"
name = "ffi-bundle"
default = "allow"

[[rule]]
name = "reject tcp 7000 to PRC"
action = "block"
block = "reject"
protocol = ["tcp"]
port = [7000]
jurisdiction = { countries = ["CN", "HK", "MO"] }

[[rule]]
name = "bundle blocks US2"
action = "block"
block = "reject"
cidr = ["198.51.100.20/32"]
"#;

/// A blocked TCP flow: refused at the SYN when the address decides, reset
/// after the first bytes when the rules needed them.
fn assert_blocked(r: std::io::Result<Vec<u8>>, what: &str) {
    let e = r.expect_err(what);
    assert!(
        matches!(
            e.kind(),
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
        ),
        "{what}: {e}"
    );
}

/// A signed bundle of `policy` with sequence `seq`.
fn signed(dir: &std::path::Path, policy: &str, seq: u64, key: &bundle::SigningKey) -> Vec<u8> {
    let d = dir.join(format!("bundle{seq}"));
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("policy.toml"), policy).expect("policy");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let raw = bundle::build(&d, seq, now - 60, now + 86_400).expect("bundle builds");
    bundle::sign(&raw, key).expect("signs")
}

#[test]
fn a_c_app_runs_the_engine_on_a_tun() {
    if !support::root_or_skip("a_c_app_runs_the_engine_on_a_tun") {
        return;
    }
    let exe = compile("host.c");
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    let _ = policy;
    let (us, us2, cn) = (sa(addr::US, 7000), sa(addr::US2, 7000), sa(addr::CN, 7000));
    for a in [us, us2, cn] {
        net.tcp_server(a, echo);
    }
    // Two networks' DNS servers: each answers every name with its own
    // address.
    fn first(name: &str, t: RecordType) -> Vec<hickory_proto::rr::Record> {
        support::every_name_is(name, t, addr::US)
    }
    fn second(name: &str, t: RecordType) -> Vec<hickory_proto::rr::Record> {
        support::every_name_is(name, t, addr::DE)
    }
    net.add_server_address("198.51.100.53");
    net.add_server_address("198.51.100.54");
    let asked_first = net.dns_server(sa("198.51.100.53", 53), first);
    let asked_second = net.dns_server(sa("198.51.100.54", 53), second);
    let key = bundle::SigningKey::from_bytes(&[7; 32]);
    let config = serde_json::json!({
        "policy": POLICY,
        "world": world,
        "trusted_keys": [bundle::key_hex(key.verifying_key().as_bytes())],
        "dns_upstreams": ["udp:198.51.100.53:53"],
        "mtu": 1500,
    });
    let cfg = net.dir.path().join("config.json");
    std::fs::write(&cfg, config.to_string()).expect("config");

    // The app: TUN in the firewall namespace, which also has the link to
    // the internet. Unmarked traffic goes into the TUN; sockets the
    // callback marked take the main table, out over the link.
    let mut app = host::c_host_on_tun(&net, &exe, MARK, true);
    let started = app.cmd(&format!("start {}", cfg.display()));
    assert!(started.starts_with("ok "), "start: {started}");

    let fw = net.fw.clone();
    // Allowed: byte for byte, through a socket the callback protected.
    let r = in_ns(&fw, || tcp_exchange(us, b"hello through the ABI"));
    assert_eq!(r.expect("US flow").as_slice(), b"hello through the ABI");
    let r = in_ns(&fw, || tcp_exchange(us2, b"US2 before the bundle"));
    assert_eq!(r.expect("US2 flow").as_slice(), b"US2 before the bundle");
    // Blocked by the starting policy: reset, nothing on the wire.
    assert_blocked(in_ns(&fw, || tcp_exchange(cn, b"x")), "CN");

    // A valid bundle applies at once.
    let dir = net.dir.path().to_owned();
    let b5 = dir.join("b5.gwb");
    std::fs::write(&b5, signed(&dir, BUNDLE_POLICY, 5, &key)).expect("bundle");
    assert_eq!(app.cmd(&format!("bundle {}", b5.display())), "ok 5");
    let before_us2 = net.count_settled(addr::US2, 6, 7000);
    assert_blocked(
        in_ns(&fw, || tcp_exchange(us2, b"x")),
        "US2 after the bundle",
    );
    // A tampered bundle (one byte of its policy changed) is refused...
    let mut bad = signed(&dir, BUNDLE_POLICY, 6, &key);
    let i = bad.len() / 2;
    bad[i] ^= 0x20;
    let b6 = dir.join("b6.gwb");
    std::fs::write(&b6, bad).expect("bundle");
    let r = app.cmd(&format!("bundle {}", b6.display()));
    assert!(r.starts_with("err 13 "), "tampered bundle: {r}");
    // ... as is an older one (rollback) that would allow everything ...
    let b4 = dir.join("b4.gwb");
    std::fs::write(&b4, signed(&dir, "name='open'\ndefault='allow'\n", 4, &key)).expect("bundle");
    let r = app.cmd(&format!("bundle {}", b4.display()));
    assert!(r.starts_with("err 11 "), "rolled-back bundle: {r}");
    // ... and one signed by another key.
    let other = bundle::SigningKey::from_bytes(&[9; 32]);
    let b7 = dir.join("b7.gwb");
    std::fs::write(
        &b7,
        signed(&dir, "name='open'\ndefault='allow'\n", 7, &other),
    )
    .expect("bundle");
    let r = app.cmd(&format!("bundle {}", b7.display()));
    assert!(r.starts_with("err 14 "), "foreign bundle: {r}");
    // The rules of bundle 5 still hold.
    assert_blocked(
        in_ns(&fw, || tcp_exchange(us2, b"x")),
        "US2 after the refused bundles",
    );
    let r = in_ns(&fw, || tcp_exchange(us, b"US still fine"));
    assert_eq!(r.expect("US flow").as_slice(), b"US still fine");
    assert_eq!(
        app.cmd("check 198.51.100.20 7000 6 0"),
        "ok 2 1 [bundle blocks US2] []"
    );
    assert!(app.cmd("version").contains(" bundle=5"));

    // Identifiers can be replaced while running; bad input is refused.
    assert_eq!(app.cmd(r#"ids {"user_id":"1234567890"}"#), "ok");
    assert!(app.cmd(r#"ids {"user_id":"#).starts_with("err 4 "));

    // The device joins another network: the app hands over its DNS
    // servers, asked from the next query on; the old ones no more.
    let ask = |name: &str| {
        in_ns(&fw, || {
            support::dns_query(sa("192.0.2.99", 53), name, RecordType::A, false)
        })
        .map(|m| m.answers.iter().map(|r| r.data.clone()).collect::<Vec<_>>())
        .expect("answered")
    };
    let a = |ip: &str| vec![RData::A(A(ip.parse().expect("ip")))];
    assert_eq!(ask("one.example"), a(addr::US));
    assert_eq!(app.cmd(r#"dns ["udp:198.51.100.54:53"]"#), "ok");
    let first_count = asked_first.load(Ordering::SeqCst);
    assert_eq!(ask("two.example"), a(addr::DE), "the new network's server");
    assert_eq!(asked_first.load(Ordering::SeqCst), first_count);
    assert!(asked_second.load(Ordering::SeqCst) >= 1);
    // A bad list changes nothing; nor does a server the rules block
    // (bundle 5 blocks 198.51.100.20).
    assert!(app.cmd(r#"dns ["8.8.8.8"]"#).starts_with("err 4 "));
    let r = app.cmd(r#"dns ["udp:198.51.100.20:53"]"#);
    assert!(
        r.starts_with("err 4 ") && r.contains("refusing upstream resolver 198.51.100.20"),
        "{r}"
    );
    assert!(app.cmd("dns []").starts_with("err 4 "));
    assert_eq!(ask("three.example"), a(addr::DE));

    // Every bad call returns its error; none crashes.
    assert_eq!(app.cmd("abuse"), "ok abuse");

    // Stats are published about every 100 ms: wait for this traffic's.
    let mut s = app.cmd("stats");
    for _ in 0..50 {
        if s.starts_with("ok ") && stat(&s, "blocked") >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        s = app.cmd("stats");
    }
    assert!(s.starts_with("ok running=1 "), "{s}");
    assert!(stat(&s, "opened") >= 3, "{s}");
    assert!(stat(&s, "blocked") >= 3, "{s}");
    assert!(stat(&s, "tun_packets") > 0, "{s}");
    assert!(
        stat(&s, "bytes_up") > 0 && stat(&s, "bytes_down") > 0,
        "{s}"
    );
    assert_eq!(stat(&s, "bundle_sequence"), 5, "{s}");
    assert!(stat(&s, "protected") >= 3, "every upstream socket: {s}");
    assert_eq!(stat(&s, "refused_sockets"), 0, "{s}");
    assert!(stat(&s, "events") >= 6, "{s}");
    assert!(stat(&s, "app_lookups") >= 1, "{s}");
    assert!(stat(&s, "events_with_app") >= 1, "{s}");

    assert_eq!(app.cmd("stop"), "ok");
    // Double stop and use after stop: errors.
    assert!(app.cmd("stop").starts_with("err 6 "));
    assert!(
        app.cmd(&format!("bundle {}", b5.display()))
            .starts_with("err 6 ")
    );
    assert!(app.cmd(r#"ids {"a":"bcdefgh"}"#).starts_with("err 6 "));
    assert!(
        app.cmd(r#"dns ["udp:198.51.100.54:53"]"#)
            .starts_with("err 6 ")
    );
    assert!(app.cmd("check 198.51.100.10 80 6 0").starts_with("err 6 "));
    let s = app.cmd("stats");
    assert!(s.starts_with("ok running=0 "), "{s}");
    assert_eq!(app.cmd("free"), "ok");
    assert!(app.cmd("stats").starts_with("err 5 "));
    assert!(app.cmd("free").starts_with("err 5 "));
    app.quit();

    // Nothing to the blocked servers, not even a SYN.
    assert_eq!(net.count(addr::CN, 6, 7000), 0, "packets reached CN");
    assert_eq!(
        net.count(addr::US2, 6, 7000),
        before_us2,
        "packets reached US2 after the bundle blocked it"
    );
    assert!(net.count(addr::US, 6, 7000) > 0, "the counter sees traffic");
    let _ = library_dir();
}

/// Peak memory of the engine started through the ABI with the default
/// rules and the shipped world (compiled into the library), idle and
/// after a short load. Reported in `mobile-ffi/README.md`; the figure
/// there comes from a release build:
/// `cargo test --release -p geowall-ffi --test c_abi memory -- --nocapture`.
#[test]
fn memory_through_the_abi() {
    if !support::root_or_skip("memory_through_the_abi") {
        return;
    }
    let exe = compile("host.c");
    let mut net = Net::new();
    let bulk = sa(addr::US, 7200);
    net.tcp_server(bulk, echo);
    let cfg = net.dir.path().join("config.json");
    let config = serde_json::json!({ "dns_upstreams": [format!("udp:{}:53", addr::US)] });
    std::fs::write(&cfg, config.to_string()).expect("config");
    // Not under valgrind: its own memory would be counted.
    let mut app = host::c_host_on_tun(&net, &exe, MARK, false);
    let before = app.cmd("rss");
    assert!(
        app.cmd(&format!("start {}", cfg.display()))
            .starts_with("ok ")
    );
    std::thread::sleep(Duration::from_secs(1));
    let idle = app.cmd("rss");
    // Load: 16 parallel echo flows of 1 MiB each way, then 300 short ones.
    let fw = net.fw.clone();
    let payload = vec![0x5a_u8; 1 << 20];
    std::thread::scope(|s| {
        for _ in 0..16 {
            let (fw, payload) = (fw.clone(), payload.clone());
            s.spawn(move || {
                let r = in_ns(&fw, || tcp_exchange(bulk, &payload));
                assert_eq!(r.expect("bulk flow").len(), payload.len());
            });
        }
    });
    for i in 0..300 {
        let r = in_ns(&fw, || tcp_exchange(bulk, format!("short {i}").as_bytes()));
        assert!(r.is_ok(), "short flow {i}");
    }
    let loaded = app.cmd("rss");
    assert_eq!(app.cmd("stop"), "ok");
    assert_eq!(app.cmd("free"), "ok");
    app.quit();
    eprintln!(
        "memory (KiB) before start: {before}\nidle after start: {idle}\nafter load: {loaded}"
    );
    let hwm = stat(&loaded, "VmHWM");
    // The iOS packet-tunnel limit is 50 MiB.
    assert!(hwm < 50 * 1024, "peak RSS {hwm} KiB");
}
