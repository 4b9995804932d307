//! Talking to geowall's live page (`--ui`) from the firewall namespace:
//! its address and token, one request, its event stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::{Net, in_ns};

/// The page's port and token, from what geowall printed at start.
pub(crate) fn page_of(said: &str) -> (u16, String) {
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
pub(crate) fn request(net: &Net, port: u16, head: &str) -> (String, String) {
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

/// The page's event stream, read from the firewall namespace: each
/// decision as JSON, as it arrives.
pub(crate) fn stream(net: &Net, port: u16, token: &str) -> std::sync::mpsc::Receiver<Value> {
    let fw = net.fw.clone();
    let head = format!(
        "GET /api/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
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
    rx
}
