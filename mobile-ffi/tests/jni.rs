//! A Java program on the machine's JDK (`tests/java/JniHost.java` with the
//! shipped `android/src/org/geowall/*.java`, compiled here with `javac`)
//! runs the engine through the JNI layer on a real TUN descriptor, in a
//! network namespace: it starts, passes allowed traffic and blocks the
//! rest (zero packets at the blocked server), answers checks, reports
//! stats, stops and frees; bad calls throw `GeowallException` with the
//! right code. Root and a JDK needed; skips otherwise.

#[path = "../../tests/support/mod.rs"]
mod support;

mod host;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use host::{Host, compile, crate_dir, library_dir};
use support::{Net, addr, in_ns, tcp_exchange};

const MARK: u32 = 0x77;

const POLICY: &str = r#"
name = "jni"
default = "allow"

[[rule]]
name = "reject tcp to PRC networks"
action = "block"
block = "reject"
protocol = ["tcp"]
jurisdiction = { countries = ["CN", "HK", "MO"], layers = ["geo", "network"] }
"#;

fn has_jdk() -> bool {
    let ok = ["java", "javac"].iter().all(|p| {
        Command::new(p)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("jni test skipped: no JDK (java and javac); .ci/run installs one");
    }
    ok
}

/// Compiles the Java sources into `out`.
fn javac(out: &Path) {
    let mut c = Command::new("javac");
    c.arg("-Xlint:all").arg("-Werror").arg("-d").arg(out);
    for f in [
        "android/src/org/geowall/Geowall.java",
        "android/src/org/geowall/GeowallException.java",
        "tests/java/JniHost.java",
    ] {
        c.arg(crate_dir().join(f));
    }
    let o = c.output().expect("javac runs");
    assert!(
        o.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_java_app_runs_the_engine_through_jni() {
    if !support::root_or_skip("a_java_app_runs_the_engine_through_jni") || !has_jdk() {
        return;
    }
    let classes = Path::new(env!("CARGO_TARGET_TMPDIR")).join("jni-classes");
    javac(&classes);
    let tun_exec = compile("tun_exec.c");
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(POLICY);
    let (us, cn) = (
        SocketAddr::new(addr::US.parse().expect("ip"), 7100),
        SocketAddr::new(addr::CN.parse().expect("ip"), 7100),
    );
    net.tcp_server(us, <[u8]>::to_vec);
    net.tcp_server(cn, <[u8]>::to_vec);
    let config = serde_json::json!({
        "policy": POLICY,
        "world": world,
        "fwmark": MARK,
        "dns_upstreams": [format!("udp:{}:53", addr::US)],
    });
    let cfg = net.dir.path().join("config.json");
    std::fs::write(&cfg, config.to_string()).expect("config");

    let tun = net.tun.clone();
    let lib = library_dir();
    let mut app = Host::spawn_with(
        &net.fw,
        &[tun_exec.to_str().expect("path"), &tun, "java"],
        &[
            "-Xcheck:jni",
            &format!("-Djava.library.path={}", lib.display()),
            "-cp",
            classes.to_str().expect("path"),
            "JniHost",
            "3",
        ],
        false,
    );
    app.expect_line("tun ready");
    let mark = format!("{MARK:#x}");
    host::route_into_tun(&net.fw, &tun, &mark);
    let r = app.cmd(&format!("start {}", cfg.display()));
    assert_eq!(r, "ok", "start");

    let fw = net.fw.clone();
    let r = in_ns(&fw, || tcp_exchange(us, b"hello from java"));
    assert_eq!(r.expect("US flow").as_slice(), b"hello from java");
    let e = in_ns(&fw, || tcp_exchange(cn, b"x")).expect_err("CN blocked");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    let v = app.cmd("check 203.0.113.10 443 6 2");
    assert!(
        v.contains(r#""action":"block""#) && v.contains("reject tcp to PRC networks"),
        "{v}"
    );
    let v = app.cmd("check 198.51.100.10 443 6 2");
    assert!(v.contains(r#""action":"allow""#), "{v}");
    assert!(app.cmd("version").contains(r#""abi":1"#));
    assert_eq!(app.cmd("abuse"), "ok abuse");

    // Stats are published about every 100 ms: wait for this traffic's.
    let parse = |s: &str| -> serde_json::Value {
        serde_json::from_str(
            s.strip_prefix("ok ")
                .and_then(|s| s.split(" protected=").next())
                .expect("stats JSON"),
        )
        .expect("stats parse")
    };
    let mut s = app.cmd("stats");
    for _ in 0..50 {
        if parse(&s)["blocked"].as_u64() >= Some(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        s = app.cmd("stats");
    }
    let json = parse(&s);
    assert_eq!(json["running"], true, "{s}");
    assert!(json["opened"].as_u64() >= Some(1), "{s}");
    assert!(json["blocked"].as_u64() >= Some(1), "{s}");
    assert!(json["bytes_down"].as_u64() >= Some(15), "{s}");
    assert!(host::stat(&s, "protected") >= 1, "{s}");
    assert!(host::stat(&s, "events") >= 2, "{s}");
    assert!(host::stat(&s, "events_with_app") >= 1, "{s}");

    assert_eq!(app.cmd("stop"), "ok");
    assert!(app.cmd("stop").starts_with("err 6 "), "double stop");
    assert!(
        app.cmd("check 198.51.100.10 443 6 2").starts_with("err 6 "),
        "use after stop"
    );
    // After the stop, the final numbers.
    let s = app.cmd("stats");
    assert_eq!(parse(&s)["running"], false, "{s}");
    assert!(
        parse(&s)["tun_packets"].as_u64() >= json["tun_packets"].as_u64(),
        "{s}"
    );
    assert_eq!(app.cmd("free"), "ok");
    app.quit();
    assert_eq!(net.count(addr::CN, 6, 7100), 0, "packets reached CN");
    assert!(net.count(addr::US, 6, 7100) > 0);
}
