//! `ask` rules end to end, in network namespaces (root only; skips
//! otherwise): a connection an ask rule matches sends nothing to its
//! server (counted there) until it is answered; "allow once" lets that
//! connection through and the next one is asked again; an answer for the
//! app (`geowall answer --for app`) lets its later flows through unasked;
//! unanswered, the rule's default (block, reject) applies at its timeout;
//! "always" is kept in the state directory and holds after a restart. The
//! live page's control actions refuse requests without the token in their
//! header, without a JSON body, or from another origin.

mod support;

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::page::{page_of, request, stream};
use support::{Net, addr, echo, geowall_cli, in_ns, sa, tcp_exchange_within};

/// One rule for US and US2 (3 s, then block), one for DE and US6 (2 s,
/// then block); blocks are rejected.
fn policy() -> String {
    format!(
        "name = \"ask\"\ndefault = \"allow\"\n\
         [[rule]]\nname = \"ask before US\"\naction = \"ask\"\nblock = \"reject\"\nask = {{ default = \"block\", timeout = 3 }}\ncidr = [\"{}/32\", \"{}/32\"]\n\
         [[rule]]\nname = \"ask before the rest\"\naction = \"ask\"\nblock = \"reject\"\nask = {{ default = \"block\", timeout = 2 }}\ncidr = [\"{}/32\", \"{}/128\"]\n",
        addr::US,
        addr::US2,
        addr::DE,
        addr::US6
    )
}

/// From the app namespace, in the background: connects to `to`, sends
/// `req`, closes its side and reads the whole answer, waiting up to 20 s
/// (a held connection waits for its answer).
fn exchange(net: &Net, to: SocketAddr, req: &'static [u8]) -> Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let app = net.app.clone();
    std::thread::spawn(move || {
        let r = in_ns(&app, move || {
            tcp_exchange_within(to, req, Duration::from_secs(20))
        });
        let _ = tx.send(r);
    });
    rx
}

/// What the server echoed to an exchange (waiting up to 10 s).
fn echoed(rx: &Receiver<std::io::Result<Vec<u8>>>) -> Vec<u8> {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the app is answered")
        .expect("the server's echo")
}

/// The next event of `kind` about `server` on the page's stream, within
/// `limit`.
fn next_event(rx: &Receiver<Value>, kind: &str, server: &str, limit: Duration) -> Option<Value> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200))
            && e["kind"] == kind
            && e["server"] == server
        {
            return Some(e);
        }
    }
    None
}

/// A POST of `body` to the page at `path`, with `extra` header lines;
/// the status line and headers, and the body.
fn post(net: &Net, port: u16, path: &str, extra: &str, body: &str) -> (String, String) {
    request(
        net,
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The page's answer to question `prompt`.
fn answer(
    net: &Net,
    port: u16,
    token: &str,
    prompt: &Value,
    allow: bool,
    scope: &str,
) -> (String, String) {
    post(
        net,
        port,
        "/api/answer",
        &format!("X-Geowall-Token: {token}\r\nContent-Type: application/json\r\n"),
        &format!("{{\"prompt\": {prompt}, \"allow\": {allow}, \"scope\": \"{scope}\"}}"),
    )
}

#[test]
fn ask_rules_hold_flows_until_answered_and_apply_the_default_at_the_timeout() {
    if !support::root_or_skip(
        "ask_rules_hold_flows_until_answered_and_apply_the_default_at_the_timeout",
    ) {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(&policy());
    let (us, us2, de, us6) = (
        sa(addr::US, 7000),
        sa(addr::US2, 7000),
        sa(addr::DE, 7000),
        sa(addr::US6, 7000),
    );
    for a in [us, us2, de, us6] {
        net.tcp_server(a, echo);
    }
    let state = net.dir.path().join("state");
    let state_arg = state.to_str().expect("utf8").to_owned();
    let policy_arg = policy.to_str().expect("utf8").to_owned();
    let args = ["--policy", &policy_arg, "--state-dir", &state_arg, "--ui"];
    net.start_geowall(&world, &args);
    let (port, token) = page_of(&net.geowall_start);
    let rx = stream(&net, port, &token);

    // The page knows where answers "always" go.
    let (h, b) = request(
        &net,
        port,
        &format!(
            "GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Geowall-Token: {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(
        h.starts_with("http/1.1 200") && b.contains("answers.toml"),
        "{h} {b}"
    );

    // Held: the app's connection is accepted here, nothing reaches US.
    let a = exchange(&net, us, b"once");
    let asked = next_event(&rx, "asked", &us.to_string(), Duration::from_secs(5))
        .expect("an asked event on the page");
    assert_eq!(asked["action"], "ask", "{asked}");
    assert_eq!(asked["rule"], "ask before US", "{asked}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        net.count(addr::US, 6, 7000),
        0,
        "nothing reached US while asking"
    );
    assert!(a.try_recv().is_err(), "the app is still waiting");
    let prompt = &asked["prompt"];

    // The control actions refuse what a foreign page could send.
    let host_ok = format!("X-Geowall-Token: {token}\r\n");
    for (what, path, extra, why) in [
        (
            "the token in the query",
            format!("/api/answer?token={token}"),
            "Content-Type: application/json\r\n".to_owned(),
            "x-geowall-token",
        ),
        (
            "a form's body",
            "/api/answer".to_owned(),
            format!("{host_ok}Content-Type: application/x-www-form-urlencoded\r\n"),
            "json",
        ),
        (
            "another origin",
            "/api/answer".to_owned(),
            format!("{host_ok}Content-Type: application/json\r\nOrigin: http://evil.example\r\n"),
            "origins",
        ),
        (
            "a wrong token",
            "/api/reload".to_owned(),
            format!(
                "X-Geowall-Token: {}\r\nContent-Type: application/json\r\n",
                "0".repeat(64)
            ),
            "x-geowall-token",
        ),
    ] {
        let body = format!("{{\"prompt\": {prompt}, \"allow\": true}}");
        let (h, b) = post(&net, port, &path, &extra, &body);
        assert!(h.starts_with("http/1.1 403"), "{what}: {h}");
        assert!(b.to_ascii_lowercase().contains(why), "{what}: {b}");
        assert!(!h.contains("access-control-allow"), "{what}: {h}");
    }
    let (h, _) = request(
        &net,
        port,
        &format!(
            "GET /api/answer?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(h.starts_with("http/1.1 405"), "an action is a POST: {h}");
    let (h, b) = answer(&net, port, &token, &json_num(999_999), true, "once");
    assert!(
        h.starts_with("http/1.1 404") && b.contains("not waiting"),
        "{h} {b}"
    );
    assert!(a.try_recv().is_err(), "refused requests answered nothing");
    assert_eq!(net.count(addr::US, 6, 7000), 0);

    // Reloading the rules is an action too; the question survives it.
    let (h, b) = post(
        &net,
        port,
        "/api/reload",
        &format!("X-Geowall-Token: {token}\r\nContent-Type: application/json\r\n"),
        "{}",
    );
    assert!(
        h.starts_with("http/1.1 200") && b.contains("\"reloaded\":\"ask\""),
        "{h} {b}"
    );

    // "Allow once": this connection goes through, whole.
    let (h, b) = answer(&net, port, &token, prompt, true, "once");
    assert!(h.starts_with("http/1.1 200"), "{h} {b}");
    assert_eq!(echoed(&a), b"once");
    assert!(net.count(addr::US, 6, 7000) > 0);
    let (h, _) = answer(&net, port, &token, prompt, true, "once");
    assert!(h.starts_with("http/1.1 404"), "answered once: {h}");

    // Once means that flow: the next one is asked again, and answered
    // for the app with `geowall answer`; the app's later flows under the
    // rule then go through unasked.
    let b_rx = exchange(&net, us, b"app");
    let asked =
        next_event(&rx, "asked", &us.to_string(), Duration::from_secs(5)).expect("asked again");
    let status = geowall_cli(&net, &["status"]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("questions waiting") && said.contains(addr::US),
        "{said}"
    );
    let out = geowall_cli(
        &net,
        &[
            "answer",
            &asked["prompt"].to_string(),
            "allow",
            "--for",
            "app",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(echoed(&b_rx), b"app");
    let before = net.count(addr::US2, 6, 7000);
    let c = exchange(&net, us2, b"unasked");
    assert_eq!(echoed(&c), b"unasked");
    assert!(net.count(addr::US2, 6, 7000) > before);

    // Unanswered: blocked at the timeout (reset), nothing reached DE.
    let started = Instant::now();
    let d = exchange(&net, de, b"timeout");
    next_event(&rx, "asked", &de.to_string(), Duration::from_secs(5)).expect("asked about DE");
    let got = d
        .recv_timeout(Duration::from_secs(10))
        .expect("the app is told");
    assert!(got.is_err(), "reset at the timeout: {got:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "held for the timeout: {waited:?}"
    );
    assert_eq!(net.count(addr::DE, 6, 7000), 0, "nothing reached DE");

    // "Always": kept in the state directory, in force after a restart.
    let e = exchange(&net, us6, b"always");
    let asked = next_event(&rx, "asked", &us6.to_string(), Duration::from_secs(5))
        .expect("asked about US6");
    let (h, b) = answer(&net, port, &token, &asked["prompt"], true, "always");
    assert!(h.starts_with("http/1.1 200"), "{h} {b}");
    assert_eq!(echoed(&e), b"always");
    let kept = std::fs::read_to_string(state.join("answers.toml")).expect("answers kept");
    assert!(
        kept.contains(addr::US6) && kept.contains("\"allow\""),
        "{kept}"
    );
    let events = net.events();
    let timed_out = events
        .iter()
        .any(|e| e["kind"] == "answered" && e["answered"] == "timeout" && e["server"] == addr::DE);
    assert!(timed_out, "the timeout is an event: {events:?}");
    net.stop_geowall();
    net.start_geowall(&world, &args);
    assert!(
        net.geowall_start.contains("1 kept answer"),
        "{}",
        net.geowall_start
    );
    let before = net.count(addr::US6, 6, 7000);
    let f = exchange(&net, us6, b"after restart");
    assert_eq!(echoed(&f), b"after restart");
    assert!(net.count(addr::US6, 6, 7000) > before);
    std::thread::sleep(Duration::from_millis(300));
    let opened = net
        .events()
        .into_iter()
        .rev()
        .find(|e| e["kind"] == "opened" && e["server"] == us6.to_string())
        .expect("opened after the restart");
    assert_eq!(opened["answered"], "always", "{opened}");
}

fn json_num(n: u64) -> Value {
    Value::from(n)
}

/// With `--owners`, each flow's program is found in the apps' namespace:
/// an answer "for this app" lets that program's later flows under the rule
/// through unasked, while another program is asked on its own (and, left
/// unanswered, never reaches the server).
#[test]
fn answers_for_an_app_are_per_program_when_owners_are_found() {
    if !support::root_or_skip("answers_for_an_app_are_per_program_when_owners_are_found") {
        return;
    }
    let python = "/usr/bin/python3";
    if !std::path::Path::new(python).exists() {
        eprintln!(
            "answers_for_an_app_are_per_program_when_owners_are_found: skipped (no {python} to run as another program)"
        );
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(&policy());
    let (us, us2) = (sa(addr::US, 7000), sa(addr::US2, 7000));
    for a in [us, us2] {
        net.tcp_server(a, echo);
    }
    let policy_arg = policy.to_str().expect("utf8").to_owned();
    net.start_geowall(&world, &["--policy", &policy_arg, "--owners", "--ui"]);
    let (port, token) = page_of(&net.geowall_start);
    let rx = stream(&net, port, &token);
    let me = std::env::current_exe().expect("this test's program");
    let me = me.to_str().expect("utf8");

    let a = exchange(&net, us, b"mine");
    let asked =
        next_event(&rx, "asked", &us.to_string(), Duration::from_secs(5)).expect("asked about US");
    assert_eq!(asked["app"], me, "the program that connected: {asked}");
    let (h, b) = answer(&net, port, &token, &asked["prompt"], true, "app");
    assert!(h.starts_with("http/1.1 200"), "{h} {b}");
    assert_eq!(echoed(&a), b"mine");
    let b_rx = exchange(&net, us2, b"mine again");
    assert_eq!(echoed(&b_rx), b"mine again", "the same program, unasked");

    // Another program is asked on its own; unanswered, it is reset. (The
    // first program's connection to US2 finishes closing first.)
    let before = net.count_settled(addr::US2, 6, 7000);
    let script = format!(
        "import socket\ntry:\n    s = socket.create_connection(('{}', 7000), timeout=10)\n    s.sendall(b'other'); s.shutdown(socket.SHUT_WR)\n    print('got', s.recv(100))\nexcept OSError as e:\n    print('refused', e)\n",
        addr::US2
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &net.app, python, "-c", &script])
        .output()
        .expect("python runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("refused"), "another program: {said}");
    let asked = next_event(&rx, "asked", &us2.to_string(), Duration::from_secs(5))
        .expect("asked about the other program");
    let app = asked["app"].as_str().unwrap_or_default();
    assert!(app.contains("python"), "{asked}");
    assert_eq!(
        net.count(addr::US2, 6, 7000),
        before,
        "nothing of it reached US2"
    );
}
