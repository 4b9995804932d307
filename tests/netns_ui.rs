//! The live page (`--ui`) of a running geowall, in network namespaces
//! (root only; skips otherwise): requests without the token, with a
//! foreign `Host` (DNS rebinding) or from another origin are refused; no
//! answer carries a CORS header; with the token, the page's event stream
//! shows flows as they happen, each with where its server is.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Net, addr, echo, in_ns, sa, tcp_exchange};

const POLICY: &str = "name = \"ui\"\ndefault = \"allow\"\n[[rule]]\nname = \"no PRC\"\naction = \"block\"\njurisdiction = { countries = [\"CN\"] }\n";

/// The page's port and token, from what geowall printed at start.
fn page_of(said: &str) -> (u16, String) {
    let at = said
        .find("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("no page address in: {said}"));
    let rest = &said[at + "http://127.0.0.1:".len()..];
    let (port, rest) = rest.split_once("/#").expect("port/#token");
    let token: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(token.len(), 64, "{said}");
    (port.parse().expect("port"), token)
}

/// One request to the page from the firewall namespace; the status line
/// and headers, and the body.
fn request(net: &Net, port: u16, head: &str) -> (String, String) {
    let head = head.to_owned();
    in_ns(&net.fw, move || {
        let mut c = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("page");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(head.as_bytes()).expect("send");
        let mut all = String::new();
        let _ = c.read_to_string(&mut all);
        let (h, b) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
        (h.to_ascii_lowercase(), b.to_owned())
    })
}

#[test]
fn the_live_page_refuses_strangers_and_shows_flows_as_they_happen() {
    if !support::root_or_skip("the_live_page_refuses_strangers_and_shows_flows_as_they_happen") {
        return;
    }
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(POLICY);
    let (us, cn) = (sa(addr::US, 7000), sa(addr::CN, 7000));
    net.tcp_server(us, echo);
    net.tcp_server(cn, echo);
    net.start_geowall(
        &world,
        &["--policy", policy.to_str().expect("utf8"), "--ui"],
    );
    let (port, token) = page_of(&net.geowall_start);
    let host = format!("127.0.0.1:{port}");

    // The page itself needs no token (it holds no data) but its own Host.
    let (h, body) = request(
        &net,
        port,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    assert!(h.starts_with("http/1.1 200"), "{h}");
    assert!(body.contains("<title>geowall: live</title>"), "{body}");
    assert!(
        h.contains("content-security-policy: default-src 'none'"),
        "{h}"
    );
    assert!(h.contains("x-frame-options: deny"), "{h}");
    let (h, _) = request(
        &net,
        port,
        &format!("GET /app.js HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
    );
    assert!(h.starts_with("http/1.1 200"), "{h}");

    // Refusals: each its own reason, none with a CORS header.
    for (what, head, why) in [
        (
            "no token",
            format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            "token",
        ),
        (
            "a wrong token",
            format!(
                "GET /api/events?token={} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
                "0".repeat(64)
            ),
            "token",
        ),
        (
            "a foreign Host (DNS rebinding)",
            format!(
                "GET /api/events?token={token} HTTP/1.1\r\nHost: rebind.example:{port}\r\nConnection: close\r\n\r\n"
            ),
            "host",
        ),
        (
            "another origin",
            format!(
                "GET /api/events?token={token} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"
            ),
            "origins",
        ),
        (
            "another site",
            format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"
            ),
            "sites",
        ),
    ] {
        let (h, body) = request(&net, port, &head);
        assert!(h.starts_with("http/1.1 403"), "{what}: {h}");
        assert!(body.to_ascii_lowercase().contains(why), "{what}: {body}");
        assert!(!h.contains("access-control-allow"), "{what}: {h}");
    }
    let (h, _) = request(
        &net,
        port,
        &format!(
            "POST /api/events?token={token} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(h.starts_with("http/1.1 405"), "POST to the stream: {h}");

    // With the token: the stream, then traffic, which shows up on it.
    let fw = net.fw.clone();
    let head = format!(
        "GET /api/events?token={token} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    );
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        in_ns(&fw, move || {
            let mut c = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("page");
            c.set_read_timeout(Some(Duration::from_secs(15)))
                .expect("timeout");
            c.write_all(head.as_bytes()).expect("send");
            for line in BufReader::new(c).lines() {
                let Ok(line) = line else { break };
                if let Some(data) = line.strip_prefix("data: ")
                    && let Ok(v) = serde_json::from_str::<Value>(data)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let r = in_ns(&net.app, || tcp_exchange(us, b"hello page"));
    assert_eq!(r.expect("US").as_slice(), b"hello page");
    let _ = in_ns(&net.app, || tcp_exchange(cn, b"x"));
    let (mut opened, mut blocked) = (None, None);
    while (opened.is_none() || blocked.is_none()) && started.elapsed() < Duration::from_secs(10) {
        let Ok(e) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        if e["kind"] == "opened" && e["server"] == us.to_string() {
            opened = Some(e);
        } else if e["kind"] == "blocked" && e["server"] == cn.to_string() {
            blocked = Some(e);
        }
    }
    let opened = opened.expect("the US flow on the page");
    assert_eq!(opened["where"]["network"]["country"], "US", "{opened}");
    assert!(opened["time_ms"].is_u64(), "{opened}");
    let blocked = blocked.expect("the blocked CN flow on the page");
    assert_eq!(blocked["rule"], "no PRC", "{blocked}");
    assert_eq!(blocked["where"]["network"]["country"], "CN", "{blocked}");
    assert_eq!(net.count(addr::CN, 6, 7000), 0, "nothing reached CN");
}
