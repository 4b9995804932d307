//! `ask` rules through the phone library, end to end in network
//! namespaces (root only; skips otherwise): the C host
//! (`tests/c/host.c`) runs the engine on a TUN; a connection an ask rule
//! matches reaches `on_event` as an `asked` event (the app's prompt) and
//! sends nothing to its server (counted there) until the host answers
//! with `geowall_answer`; "always" is kept in `state_dir` and holds after
//! a restart; unanswered, the rule's default applies at its timeout.

#[path = "../../tests/support/mod.rs"]
mod support;

mod host;

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use host::{Host, compile, stat};
use serde_json::Value;
use support::{Net, addr, echo, in_ns, sa, tcp_exchange_within};

const MARK: &str = "0x78";

/// One ask rule for US and US2: unanswered after 2 s, blocked (reset).
fn policy() -> String {
    format!(
        "name = \"ask\"\ndefault = \"allow\"\n[[rule]]\nname = \"ask before US\"\naction = \"ask\"\nblock = \"reject\"\nask = {{ default = \"block\", timeout = 2 }}\ncidr = [\"{}/32\", \"{}/32\"]\n",
        addr::US,
        addr::US2
    )
}

/// An exchange with `to` from the firewall namespace (behind the TUN), in
/// the background, waiting up to 20 s.
fn exchange(net: &Net, to: SocketAddr, req: &'static [u8]) -> Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let fw = net.fw.clone();
    std::thread::spawn(move || {
        let _ = tx.send(in_ns(&fw, move || {
            tcp_exchange_within(to, req, Duration::from_secs(20))
        }));
    });
    rx
}

/// The `asked` events about `server` the host's `on_event` got so far.
fn asked(app: &Host, server: SocketAddr) -> Vec<Value> {
    app.stderr()
        .lines()
        .filter_map(|l| l.strip_prefix("event "))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|e| e["kind"] == "asked" && e["server"] == server.to_string())
        .collect()
}

/// Waits up to 5 s for the `n`th `asked` event about `server`; its
/// question's number.
fn nth_question(app: &Host, server: SocketAddr, n: usize) -> u64 {
    let t = Instant::now();
    loop {
        if let Some(e) = asked(app, server).get(n - 1) {
            assert_eq!(e["app"], "org.example.cabi", "{e}");
            return e["prompt"].as_u64().expect("a question's number");
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no asked event for {server}\n{}",
            app.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_library_asks_the_app_and_holds_flows_until_it_answers() {
    if !support::root_or_skip("the_library_asks_the_app_and_holds_flows_until_it_answers") {
        return;
    }
    let exe = compile("host.c");
    let mut net = Net::new();
    let (_, world) = net.policy_and_world(&policy());
    let (us, us2) = (sa(addr::US, 7000), sa(addr::US2, 7000));
    for a in [us, us2] {
        net.tcp_server(a, echo);
    }
    let state = net.dir.path().join("state");
    let config = serde_json::json!({
        "policy": policy(),
        "world": world,
        "dns_upstreams": [format!("udp:{}:53", addr::US)],
        "mtu": 1500,
        "state_dir": state,
    });
    let cfg = net.dir.path().join("config.json");
    std::fs::write(&cfg, config.to_string()).expect("config");
    let mut app = host::c_host_on_tun(&net, &exe, MARK, false);
    let started = app.cmd(&format!("start {}", cfg.display()));
    assert!(started.starts_with("ok "), "start: {started}");

    // Held until the app answers; nothing reaches US meanwhile.
    let a = exchange(&net, us, b"once");
    let q = nth_question(&app, us, 1);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        net.count(addr::US, 6, 7000),
        0,
        "nothing reached US while asking"
    );
    let r = app.cmd("answer 999999 1 0");
    assert!(r.starts_with("err 4 ") && r.contains("not waiting"), "{r}");
    let r = app.cmd(&format!("answer {q} 1 7"));
    assert!(r.starts_with("err 4 ") && r.contains("scope 7"), "{r}");
    assert!(a.try_recv().is_err(), "refused answers answered nothing");
    assert_eq!(app.cmd(&format!("answer {q} 1 0")), "ok");
    let got = a.recv_timeout(Duration::from_secs(10)).expect("answered");
    assert_eq!(got.expect("echo").as_slice(), b"once");
    assert!(net.count(addr::US, 6, 7000) > 0);

    // "Always" for US2: kept in state_dir.
    let b = exchange(&net, us2, b"always");
    let q = nth_question(&app, us2, 1);
    assert_eq!(app.cmd(&format!("answer {q} 1 2")), "ok");
    let got = b.recv_timeout(Duration::from_secs(10)).expect("answered");
    assert_eq!(got.expect("echo").as_slice(), b"always");
    let kept = std::fs::read_to_string(state.join("answers.toml")).expect("kept");
    assert!(
        kept.contains(addr::US2) && kept.contains("org.example.cabi"),
        "{kept}"
    );

    // Unanswered: reset at the timeout, nothing more reached US.
    let before = net.count_settled(addr::US, 6, 7000);
    let c = exchange(&net, us, b"timeout");
    nth_question(&app, us, 2);
    let got = c.recv_timeout(Duration::from_secs(10)).expect("told");
    assert!(got.is_err(), "reset at the timeout: {got:?}");
    assert_eq!(net.count(addr::US, 6, 7000), before, "nothing reached US");
    let st = app.cmd("stats");
    assert_eq!(stat(&st, "asked"), 3, "{st}");

    // After a restart, the kept answer settles US2 without asking.
    assert_eq!(app.cmd("stop"), "ok");
    assert_eq!(app.cmd("free"), "ok");
    let started = app.cmd(&format!("start {}", cfg.display()));
    assert!(started.starts_with("ok "), "restart: {started}");
    let d = exchange(&net, us2, b"kept");
    let got = d.recv_timeout(Duration::from_secs(10)).expect("answered");
    assert_eq!(got.expect("echo").as_slice(), b"kept");
    assert_eq!(asked(&app, us2).len(), 1, "not asked again");
    assert_eq!(app.cmd("stop"), "ok");
    assert_eq!(app.cmd("free"), "ok");
    app.quit();
}
