//! `geowall audit` on captures built here and on the shared ones.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn geowall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geowall"))
        .args(args)
        .env_remove("GEOWALL_WORLD")
        .output()
        .expect("geowall runs")
}

/// Source, source port, destination, destination port, payload.
type Datagram = ([u8; 4], u16, [u8; 4], u16, Vec<u8>);

/// A pcap (raw IPv4 link type) of UDP datagrams. Only a file: nothing is
/// sent anywhere; the addresses are documentation ranges.
fn pcap_udp(packets: &[Datagram]) -> Vec<u8> {
    pcap_raw(&udp_ips(packets))
}

/// The IPv4 packets of UDP datagrams.
fn udp_ips(packets: &[Datagram]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .map(|(src, sp, dst, dp, payload)| {
            let total = 20 + 8 + payload.len();
            let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip.extend_from_slice(src);
            ip.extend_from_slice(dst);
            ip.extend_from_slice(&sp.to_be_bytes());
            ip.extend_from_slice(&dp.to_be_bytes());
            ip.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0]);
            ip.extend_from_slice(payload);
            ip
        })
        .collect()
}

/// An SD-RTN-shaped payload (the public facts: byte 6 = 0x21, "\x04SNI" at
/// 12, a u16 length at 16, 0 at 18, the host name at 19), followed by
/// `tail`.
fn sd_rtn(host: &str, tail: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x21, 0, 0, 0, 0, 0, 0x04, 0x53, 0x4E, 0x49,
    ];
    p.extend_from_slice(&(host.len() as u16).to_be_bytes());
    p.push(0);
    p.extend_from_slice(host.as_bytes());
    p.extend_from_slice(tail);
    p
}

#[test]
fn synthetic_sd_rtn_with_a_cleartext_user_id_is_a_leak_and_blocked_by_clubhouse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = [192, 0, 2, 10];
    let edge = [203, 0, 113, 5];
    let host = "104-166-161-75.edge.agora.io";
    let pcap = pcap_udp(&[
        (client, 40_000, edge, 8130, sd_rtn(host, b"")),
        (edge, 8130, client, 40_000, sd_rtn(host, b"ok")),
        (
            client,
            40_000,
            edge,
            8130,
            sd_rtn(host, b"uid=4815162342;room=ROOM-ab12cd"),
        ),
    ]);
    let f = dir.path().join("sdrtn.pcap");
    std::fs::write(&f, &pcap).expect("write");
    let o = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        "clubhouse",
        "--json",
        "--identifier",
        "user_id=4815162342",
        "--identifier",
        "room=ROOM-ab12cd",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let flows: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(flows.len(), 1);
    let fl = &flows[0];
    assert_eq!(fl["src"], "192.0.2.10:40000");
    assert_eq!(fl["dst"], "203.0.113.5:8130");
    assert_eq!(
        (fl["packets_up"].as_u64(), fl["packets_down"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(fl["protocol"], "sd-rtn");
    assert_eq!(fl["class"], "media");
    assert_eq!(fl["server_name"], host);
    assert_eq!(fl["encrypted"], "cleartext");
    assert_eq!(fl["jurisdiction"]["vendor"]["vendor_id"], "agora");
    assert_eq!(fl["verdict"]["action"], "block");
    assert_eq!(fl["rule"], "no cleartext identifiers to PRC jurisdiction");
    let labels: Vec<&str> = fl["leaks"]
        .as_array()
        .expect("leaks")
        .iter()
        .filter_map(|l| l["label"].as_str())
        .collect();
    assert!(
        labels.contains(&"user_id") && labels.contains(&"room"),
        "{labels:?}"
    );
    assert!(
        fl["leaks"]
            .as_array()
            .expect("leaks")
            .iter()
            .all(|l| l["encoding"] == "plain")
    );
    // The human table says the same.
    let t = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        "clubhouse",
        "--identifier",
        "user_id=4815162342",
    ]);
    let s = String::from_utf8_lossy(&t.stdout);
    assert!(
        s.contains("sd-rtn") && s.contains("BLOCK") && s.contains("user_id"),
        "{s}"
    );
    // With the rule and the layer that decided, each layer in its column,
    // and the counts.
    let line = s
        .lines()
        .find(|l| l.contains("BLOCK"))
        .expect("a BLOCK row");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[6], "CN", "the vendor column: {line}");
    assert!(
        line.contains("rule \"") && line.contains("vendor layer"),
        "{line}"
    );
    let header = s.lines().next().expect("header");
    let col = |name: &str| header.find(name).expect(name);
    assert!(line.len() > col("VERDICT") && &line[col("VERDICT")..col("VERDICT") + 5] == "BLOCK");
}

#[test]
fn html_report_colours_countries_and_escapes_capture_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An HTTP-looking SD-RTN host cannot carry markup (host names are
    // validated), so put hostile text where a capture can: a DNS name.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["<script>x", "example"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let pcap = pcap_udp(&[
        (
            [192, 0, 2, 10],
            40_000,
            [112, 126, 96, 46],
            8130,
            sd_rtn("104-166-161-75.edge.agora.io", b"uid=4815162342"),
        ),
        ([192, 0, 2, 10], 40_001, [198, 51, 100, 53], 53, q),
    ]);
    let f = dir.path().join("c.pcap");
    std::fs::write(&f, &pcap).expect("write");
    let out = dir.path().join("r.html");
    let o = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        "clubhouse",
        "--identifier",
        "user_id=4815162342",
        "--html",
        out.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&out).expect("report");
    assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>"));
    assert!(
        html.contains("#map path#cn { fill: #c0392b; }"),
        "blocked country coloured"
    );
    assert!(
        html.contains("<svg") && html.contains("id=\"cn\""),
        "map embedded"
    );
    assert!(!html.contains("<script>"), "capture text is escaped");
    assert!(html.contains("&lt;script&gt;x.example"));
    assert!(
        html.contains("user_id")
            && html.contains("no cleartext identifiers to PRC jurisdiction (1 flow)")
    );
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "no external resources"
    );
}

#[test]
fn audit_reports_bad_input_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture").expect("write");
    let o = geowall(&["audit", junk.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a pcap or pcapng"));
    let o = geowall(&["audit", "/nonexistent/x.pcap"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    let o = geowall(&[
        "audit",
        junk.to_str().expect("utf8"),
        "--identifier",
        "novalue",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("LABEL=VALUE"));
    // A subscription is read only as the bundle it keeps: without a state
    // directory, an error instead of the default rules.
    let key = dir.path().join("key.pub");
    std::fs::write(&key, b"not read").expect("write");
    let o = geowall(&[
        "audit",
        junk.to_str().expect("utf8"),
        "--subscribe",
        "https://rules.example/",
        "--pubkey",
        key.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--subscribe: this command fetches nothing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A truncated capture: the flows before the damage are still reported.
    let good = pcap_udp(&[
        ([192, 0, 2, 1], 5000, [198, 51, 100, 1], 53, vec![0; 12]),
        ([192, 0, 2, 1], 5001, [198, 51, 100, 1], 53, vec![0; 12]),
    ]);
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &good[..good.len() - 5]).expect("write");
    let o = geowall(&["audit", cut.to_str().expect("utf8"), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated"));
}

/// The help tells the rules options as an audit uses them: nothing is
/// fetched, and the options that only steer fetching are not offered.
#[test]
fn audit_help_says_subscriptions_are_read_from_the_state_directory() {
    let out = geowall(&["audit", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for hidden in ["--subscribe-every", "--subscribe-ca"] {
        assert!(!help.contains(hidden), "{hidden} is not offered:\n{help}");
    }
    for flag in ["--subscribe <URL>", "--subscribe-world", "--subscribe-list"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} is listed:\n{help}"));
        assert!(
            line.contains("--state-dir") && line.contains("nothing is fetched"),
            "{flag} says where it reads from: {line}"
        );
    }
    // The running commands still offer and explain fetching.
    let out = geowall(&["tunnel", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--subscribe-every") && help.contains("fetched at start"));
}

#[test]
fn audit_of_a_shared_capture() {
    let cap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi/signal.pcap");
    if !cap.exists() {
        println!("skipped: {} is not there", cap.display());
        return;
    }
    let o = geowall(&["audit", cap.to_str().expect("utf8"), "--json"]);
    assert!(o.status.success());
    let flows: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(flows.iter().any(
        |f| f["server_name"] == "textsecure-service.whispersystems.org"
            && f["class"] == "web"
            && f["encrypted"] == "encrypted"
    ));
    for f in &flows {
        for k in [
            "proto",
            "src",
            "dst",
            "packets_up",
            "packets_down",
            "bytes_up",
            "bytes_down",
            "protocol",
            "class",
            "server_name",
            "encrypted",
            "jurisdiction",
            "verdict",
            "rule",
            "leaks",
        ] {
            assert!(f.get(k).is_some(), "{k} in {f}");
        }
    }
}

/// The report opens in a real browser: headless Chromium renders it to a
/// screenshot. Skipped (with a message) where Chromium is not installed
/// (`apt-get install chromium`).
#[test]
fn html_report_renders_in_headless_chromium() {
    let Some(browser) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        println!("skipped: no chromium on PATH (apt-get install chromium to run this check)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = pcap_udp(&[(
        [192, 0, 2, 10],
        40_000,
        [112, 126, 96, 46],
        8130,
        sd_rtn("104-166-161-75.edge.agora.io", b""),
    )]);
    let f = dir.path().join("c.pcap");
    std::fs::write(&f, &pcap).expect("write");
    let html = dir.path().join("r.html");
    let o = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        "clubhouse",
        "--html",
        html.to_str().expect("utf8"),
    ]);
    assert!(o.status.success());
    let png = dir.path().join("r.png");
    let profile = dir.path().join("profile");
    let st = Command::new("timeout")
        .args([
            "90",
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1200,900")
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "screenshot of {size} bytes; chromium said: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// A pcap (raw IPv4) of ready-made IP packets.
fn pcap_raw(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&65_535u32.to_le_bytes());
    b.extend_from_slice(&101u32.to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        b.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(p.len() as u32).to_le_bytes());
        b.extend_from_slice(&(p.len() as u32).to_le_bytes());
        b.extend_from_slice(p);
    }
    b
}

#[test]
fn fragmented_sd_rtn_with_a_tiny_first_fragment_is_still_seen_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = sd_rtn(
        "104-166-161-75.edge.agora.io",
        b"uid=4815162342 and more bytes to span fragments",
    );
    let mut l4 = vec![0x9C, 0x40, 0x1F, 0xC2];
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(&payload);
    // Fragments at 0 (just the UDP header), 8 and 32; sent out of order.
    let cuts = [0usize, 8, 32, l4.len()];
    let mut frags: Vec<Vec<u8>> = cuts
        .windows(2)
        .map(|w| {
            let more = w[1] < l4.len();
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + w[1] - w[0]) as u16).to_be_bytes());
            h.extend_from_slice(&[0x12, 0x34]);
            h.extend_from_slice(
                &(((w[0] / 8) as u16) | if more { 0x2000 } else { 0 }).to_be_bytes(),
            );
            h.extend_from_slice(&[64, 17, 0, 0, 192, 0, 2, 10, 203, 0, 113, 5]);
            h.extend_from_slice(&l4[w[0]..w[1]]);
            h
        })
        .collect();
    frags.swap(0, 2);
    let f = dir.path().join("frag.pcap");
    std::fs::write(&f, pcap_raw(&frags)).expect("write");
    let o = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        "clubhouse",
        "--json",
        "--identifier",
        "user_id=4815162342",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let flows: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(flows.len(), 1, "one flow, from the reassembled datagram");
    assert_eq!(flows[0]["protocol"], "sd-rtn");
    assert_eq!(flows[0]["verdict"]["action"], "block");
    assert_eq!(flows[0]["leaks"][0]["label"], "user_id");
    assert!(String::from_utf8_lossy(&o.stderr).contains("3 fragments (1 datagrams reassembled)"));
}

/// The Clubhouse researchers' situation: a DNS answer in the capture names
/// an Agora edge (1 s TTL) at a US address, then the app sends RTP there
/// (one packet a second, past the TTL). The audit says what the firewall
/// would do: block, by the vendor layer, through the name the answer tied
/// to the address. RTP to another US address, which no answer names, is
/// allowed.
#[test]
fn a_name_from_a_dns_answer_in_the_capture_blocks_media_to_its_address() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};
    let edge = "104-166-161-75.edge.agora.io.";
    let name = Name::from_ascii(edge).expect("name");
    let mut q = Message::query();
    q.metadata.id = 7;
    q.add_query(Query::query(name.clone(), RecordType::A));
    let mut r = Message::response(7, OpCode::Query);
    r.metadata.message_type = MessageType::Response;
    r.add_query(Query::query(name.clone(), RecordType::A));
    r.add_answer(Record::from_rdata(
        name,
        1,
        RData::A(A("198.51.100.20".parse().expect("ip"))),
    ));
    let (app, resolver) = ([192, 0, 2, 10], [198, 18, 1, 1]);
    let (agora, other) = ([198, 51, 100, 20], [198, 51, 100, 30]);
    let mut packets = vec![
        (app, 5353, resolver, 53, q.to_vec().expect("query")),
        (resolver, 53, app, 5353, r.to_vec().expect("answer")),
    ];
    for seq in 0..4u16 {
        packets.push((
            app,
            40_002,
            agora,
            5004,
            geowall::wire::rtc::rtp_packet(seq),
        ));
        packets.push((
            app,
            40_003,
            other,
            5004,
            geowall::wire::rtc::rtp_packet(seq),
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("dns-then-rtp.pcap");
    std::fs::write(&f, pcap_udp(&packets)).expect("write");
    let o = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        "clubhouse",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let flows: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let flow = |dst: &str| {
        flows
            .iter()
            .find(|f| f["dst"] == dst)
            .unwrap_or_else(|| panic!("no flow to {dst}: {flows:?}"))
    };
    let a = flow("198.51.100.20:5004");
    assert_eq!(a["class"], "media");
    assert_eq!(a["verdict"]["action"], "block", "{a}");
    assert_eq!(a["verdict"]["layer"]["layer"], "vendor", "{a}");
    assert_eq!(a["names"][0], "104-166-161-75.edge.agora.io");
    let b = flow("198.51.100.30:5004");
    assert_eq!(b["verdict"]["action"], "allow", "{b}");
}

/// The same capture from a file, from standard input, gzip- and
/// zstd-compressed: the same flows, byte for byte.
#[test]
fn audit_reads_standard_input_and_compressed_captures() {
    use std::io::Write;
    let cap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ndpi/quic.pcap");
    let plain = std::fs::read(&cap).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let want = geowall(&["audit", "--json", cap.to_str().expect("utf8")]);
    assert!(want.status.success());
    assert!(want.stdout.len() > 100);

    let mut child = Command::new(env!("CARGO_BIN_EXE_geowall"))
        .args(["audit", "--json", "-"])
        .env_remove("GEOWALL_WORLD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("geowall runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = plain.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed));
    let got = child.wait_with_output().expect("output");
    writer.join().expect("writer").expect("write");
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout, want.stdout, "from standard input");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zst = zstd::encode_all(&plain[..], 3).expect("zstd");
    // Named without .gz: the format is told by its bytes.
    for (name, bytes) in [("capture.gz", &gz), ("capture.pcap.zst", &zst)] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let got = geowall(&["audit", "--json", path.to_str().expect("utf8")]);
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(got.stdout, want.stdout, "{name}");
    }

    // A compressed capture cut short: the flows before the cut, a warning
    // that says where, exit status 1.
    let cut_path = dir.path().join("cut.pcap.gz");
    std::fs::write(&cut_path, &gz[..gz.len() / 2]).expect("write");
    let got = geowall(&["audit", "--json", cut_path.to_str().expect("utf8")]);
    assert_eq!(got.status.code(), Some(1));
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(
        err.contains("WARNING") && err.contains("frames before it"),
        "{err}"
    );
    let flows = String::from_utf8_lossy(&got.stdout).lines().count();
    assert!(flows >= 1, "the flows before the cut: {err}");
}

/// A TURN Allocate request for a UDP relay (RFC 8656), no credentials.
fn turn_allocate() -> Vec<u8> {
    let mut m = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[3; 12]);
    m.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    m
}

#[test]
fn a_relayed_flow_shows_the_peer_refused_and_why() {
    use geowall::wire::rtc::{TURN_CREATE_PERMISSION, turn_message};
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let (app, relay) = ([192, 0, 2, 10], [198, 51, 100, 7]);
    let alloc = turn_allocate();
    let peer = "203.0.113.10:5004".parse().expect("addr");
    let perm = turn_message(TURN_CREATE_PERMISSION, [4; 12], &[peer], None, &[]);
    let pcap = pcap_udp(&[
        (app, 40_000, relay, 3478, alloc),
        (app, 40_000, relay, 3478, perm),
    ]);
    let f = dir.path().join("turn.pcap");
    std::fs::write(&f, &pcap).expect("write");
    let run = |json: bool| {
        let mut args = vec![
            "audit",
            f.to_str().expect("utf8"),
            "--preset",
            "clubhouse",
            "--world",
            world.to_str().expect("utf8"),
        ];
        if json {
            args.push("--json");
        }
        let o = geowall(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let fl: Value = serde_json::from_str(run(true).lines().next().expect("a flow")).expect("json");
    assert_eq!(fl["dst"], "198.51.100.7:3478");
    assert_eq!(fl["jurisdiction"]["network"]["country"], "US");
    // The peer is refused (its message dropped), the relay itself allowed.
    let refused = &fl["peers_refused"][0];
    assert_eq!(refused["peer"], "203.0.113.10:5004", "{fl}");
    assert_eq!(refused["jurisdiction"]["network"]["country"], "CN");
    assert_eq!(refused["verdict"]["action"], "block");
    assert_eq!(refused["verdict"]["peer"], "203.0.113.10:5004");
    assert_eq!(fl["peers"], serde_json::json!([]));
    assert_eq!(fl["verdict"]["action"], "allow");
    let table = run(false);
    assert!(
        table.contains("peers refused: 203.0.113.10:5004 ("),
        "{table}"
    );
}

/// TCP segments from `src` to `dst` carrying `chunks` in order (PSH|ACK,
/// sequence numbers following on), as IPv4 packets in a pcap.
fn pcap_tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), chunks: &[&[u8]]) -> Vec<u8> {
    pcap_raw(&tcp_ips(src, dst, chunks))
}

/// The IPv4 packets of one TCP stream's segments, from `src` to `dst`.
fn tcp_ips(src: ([u8; 4], u16), dst: ([u8; 4], u16), chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut seq = 1_000u32;
    chunks
        .iter()
        .map(|payload| {
            let total = 20 + 20 + payload.len();
            let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip.extend_from_slice(&src.0);
            ip.extend_from_slice(&dst.0);
            ip.extend_from_slice(&src.1.to_be_bytes());
            ip.extend_from_slice(&dst.1.to_be_bytes());
            ip.extend_from_slice(&seq.to_be_bytes());
            ip.extend_from_slice(&1u32.to_be_bytes()); // ack
            ip.extend_from_slice(&[0x50, 0x18, 0xFF, 0xFF, 0, 0, 0, 0]);
            ip.extend_from_slice(payload);
            seq = seq.wrapping_add(payload.len() as u32);
            ip
        })
        .collect()
}

#[test]
fn a_relay_over_tcp_shows_the_peer_its_stream_names() {
    use geowall::wire::rtc::{TURN_CREATE_PERMISSION, turn_message};
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let alloc = turn_allocate();
    let peer = "203.0.113.10:5004".parse().expect("addr");
    let perm = turn_message(TURN_CREATE_PERMISSION, [4; 12], &[peer], None, &[]);
    // The permission split across two segments, the first sharing one with
    // the allocation's tail.
    let mut first = alloc[10..].to_vec();
    first.extend_from_slice(&perm[..30]);
    let pcap = pcap_tcp(
        ([192, 0, 2, 10], 40_000),
        ([198, 51, 100, 7], 3478),
        &[&alloc[..10], &first, &perm[30..]],
    );
    let fl = first_flow(dir.path(), &pcap, "clubhouse", &world);
    assert_eq!(fl["dst"], "198.51.100.7:3478", "{fl}");
    // As live: the permission is taken out of the stream, the relay goes
    // on.
    assert_eq!(fl["peers_refused"][0]["peer"], "203.0.113.10:5004", "{fl}");
    assert_eq!(fl["peers_refused"][0]["verdict"]["action"], "block");
    assert_eq!(fl["peers"], serde_json::json!([]), "{fl}");
    assert_eq!(fl["verdict"]["action"], "allow");
}

/// A UDP relay asked for a US peer and then a CN one: the audit shows
/// what the live engine does, the CN peer refused (its messages dropped)
/// and the relay allowed for the US peer, in the JSON and in the table.
#[test]
fn a_relay_over_udp_shows_the_peer_it_would_have_refused() {
    use geowall::wire::rtc::{TURN_CREATE_PERMISSION, TURN_SEND, turn_message};
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let us = "198.51.100.20:5004".parse().expect("addr");
    let cn = "203.0.113.10:5004".parse().expect("addr");
    let app = ([192, 0, 2, 10], 40_000);
    let relay = ([198, 51, 100, 7], 3478);
    let msgs = [
        turn_allocate(),
        turn_message(TURN_CREATE_PERMISSION, [4; 12], &[us], None, &[]),
        turn_message(TURN_CREATE_PERMISSION, [5; 12], &[cn], None, &[]),
        turn_message(TURN_SEND, [6; 12], &[us], None, b"voice"),
    ];
    let dgrams: Vec<Datagram> = msgs
        .into_iter()
        .map(|m| (app.0, app.1, relay.0, relay.1, m))
        .collect();
    let pcap = pcap_udp(&dgrams);
    let fl = first_flow(dir.path(), &pcap, "clubhouse", &world);
    assert_eq!(fl["verdict"]["action"], "allow", "{fl}");
    assert_eq!(fl["peers"].as_array().map(Vec::len), Some(1), "{fl}");
    assert_eq!(fl["peers"][0]["peer"], "198.51.100.20:5004");
    assert_eq!(fl["peers_refused"][0]["peer"], "203.0.113.10:5004", "{fl}");
    assert_eq!(
        fl["peers_refused"][0]["rule"],
        "no pings or media to PRC jurisdiction"
    );
    let f = dir.path().join("flows.pcap");
    let o = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        "clubhouse",
        "--world",
        world.to_str().expect("utf8"),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("198.51.100.7:3478"))
        .unwrap_or_else(|| panic!("the relay's row:\n{text}"));
    assert!(line.contains("allow"), "{line}");
    assert!(
        line.contains("peers refused: 203.0.113.10:5004 (rule \"no pings or media to PRC jurisdiction\", geo layer: CN)"),
        "{line}"
    );
}

/// A keep-alive HTTP/1.1 connection whose second request names an Agora
/// edge (its head cut across two segments) shows the host and is blocked
/// in the audit, as the live engine cuts it; a body that reads like such
/// a request is not taken for one.
#[test]
fn every_request_of_a_keep_alive_connection_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let edge = "104-166-161-75.edge.agora.io";
    let hidden = format!("GET / HTTP/1.1\r\nHost: {edge}\r\n\r\n");
    let first = format!(
        "POST / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let second = format!("GET /v HTTP/1.1\r\nHost: {edge}\r\n\r\n");
    let audit = |segments: &[&[u8]]| {
        let pcap = pcap_tcp(([192, 0, 2, 10], 40_000), ([198, 51, 100, 7], 80), segments);
        first_flow(dir.path(), &pcap, "strict", &world)
    };
    let fl = audit(&[first.as_bytes()]);
    assert_eq!(fl["server_name"], "www.example.com", "{fl}");
    assert_eq!(
        fl["hosts"],
        serde_json::json!([]),
        "the body is not a request"
    );
    assert_eq!(fl["verdict"]["action"], "allow", "{fl}");
    let (a, b) = second.as_bytes().split_at(25);
    let fl = audit(&[first.as_bytes(), a, b]);
    assert_eq!(fl["server_name"], "www.example.com", "{fl}");
    assert_eq!(fl["hosts"], serde_json::json!([edge]), "{fl}");
    assert_eq!(fl["verdict"]["action"], "block", "{fl}");
}

/// Two QUIC connections on one UDP socket to one server: the audit shows
/// the second's name (its hello in two Initials) beside the first's, and
/// blocks the flow when it names an Agora edge, as the live engine cuts
/// it.
#[test]
fn every_quic_connection_of_a_flow_is_audited() {
    use geowall::wire::quic::client_initials;
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let (app, server) = (([192, 0, 2, 10], 40_000), ([198, 51, 100, 7], 443));
    let audit = |second: &str| {
        let mut initials = client_initials(1, &[0xA1; 8], "www.example.com", 1).expect("built");
        initials.extend(client_initials(1, &[0xB2; 8], second, 2).expect("built"));
        let datagrams: Vec<Datagram> = initials
            .into_iter()
            .map(|p| (app.0, app.1, server.0, server.1, p))
            .collect();
        first_flow(dir.path(), &pcap_udp(&datagrams), "strict", &world)
    };
    let fl = audit("cdn.example.net");
    assert_eq!(fl["protocol"], "quic", "{fl}");
    assert_eq!(fl["server_name"], "www.example.com", "{fl}");
    assert_eq!(fl["hosts"], serde_json::json!(["cdn.example.net"]), "{fl}");
    assert_eq!(fl["verdict"]["action"], "allow", "{fl}");
    let edge = "104-166-161-75.edge.agora.io";
    let fl = audit(edge);
    assert_eq!(fl["hosts"], serde_json::json!([edge]), "{fl}");
    assert_eq!(fl["verdict"]["action"], "block", "{fl}");
}

/// A SOCKS 5 client asks its proxy for a UDP relay; the datagrams it then
/// sends the relay name their targets: the audit shows them as the relay
/// flow's peers and blocks the flow for a CN target, as the live engine
/// cuts it.
#[test]
fn a_socks_udp_relay_shows_the_targets_its_datagrams_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let (app, proxy) = ([192, 0, 2, 10], [198, 51, 100, 7]);
    let to = |ip: [u8; 4]| {
        let mut d = vec![0, 0, 0, 1];
        d.extend_from_slice(&ip);
        d.extend_from_slice(&5004u16.to_be_bytes());
        d.extend_from_slice(b"voice");
        (app, 41_000, proxy, 40_000, d)
    };
    let relay_flow = |targets: &[[u8; 4]]| {
        let mut ips = tcp_ips(
            (app, 40_000),
            (proxy, 1080),
            &[&[5, 1, 0], &[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]],
        );
        let datagrams: Vec<Datagram> = targets.iter().map(|t| to(*t)).collect();
        ips.extend(udp_ips(&datagrams));
        let flows = all_flows(dir.path(), &pcap_raw(&ips), "strict", &world);
        let tcp = flows
            .iter()
            .find(|f| f["proto"] == "tcp")
            .expect("the TCP flow");
        assert_eq!(tcp["protocol"], "socks", "{tcp}");
        flows
            .into_iter()
            .find(|f| f["proto"] == "udp")
            .expect("the relay flow")
    };
    let fl = relay_flow(&[[198, 51, 100, 20]]);
    assert_eq!(fl["peers"][0]["peer"], "198.51.100.20:5004", "{fl}");
    assert_eq!(fl["verdict"]["action"], "allow", "{fl}");
    let fl = relay_flow(&[[198, 51, 100, 20], [203, 0, 113, 10]]);
    assert_eq!(fl["peers"][1]["peer"], "203.0.113.10:5004", "{fl}");
    assert_eq!(fl["verdict"]["action"], "block", "{fl}");
    assert_eq!(fl["verdict"]["peer"], "203.0.113.10:5004", "{fl}");
}

/// The first flow of `geowall audit --json --preset preset` on the capture
/// `pcap` (written in `dir`), with the test world.
fn first_flow(dir: &Path, pcap: &[u8], preset: &str, world: &Path) -> Value {
    all_flows(dir, pcap, preset, world).remove(0)
}

/// Every flow of `geowall audit --json --preset preset` on the capture
/// `pcap` (written in `dir`), with the test world.
fn all_flows(dir: &Path, pcap: &[u8], preset: &str, world: &Path) -> Vec<Value> {
    let f = dir.join("flows.pcap");
    std::fs::write(&f, pcap).expect("write");
    let o = geowall(&[
        "audit",
        f.to_str().expect("utf8"),
        "--preset",
        preset,
        "--world",
        world.to_str().expect("utf8"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let flows: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(!flows.is_empty(), "no flow");
    flows
}

/// The flows of `geowall audit --json` on a fixture.
fn audit_flows(fixture: &str) -> Vec<Value> {
    let cap = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let o = geowall(&["audit", cap.to_str().expect("utf8"), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// Captures taken on an overlay's path (tcpdump's own test captures):
/// the flows inside VXLAN and Geneve are the ones reported, every packet
/// of them, and the carrier's packets make no flow of their own but where
/// what they carry is not IP (ARP inside VXLAN). PPTP's GRE carries only
/// PPP's control protocol here, so only the control connection is a flow.
#[test]
fn flows_inside_overlays_are_read() {
    let flow = |flows: &[Value], src: &str, dst: &str| {
        flows
            .iter()
            .find(|f| f["src"] == src && f["dst"] == dst)
            .cloned()
            .unwrap_or_else(|| panic!("no flow {src} -> {dst} in {flows:?}"))
    };
    let geneve = audit_flows("tcpdump/geneve.pcap");
    assert_eq!(geneve.len(), 2, "{geneve:?}");
    let ssh = flow(&geneve, "30.0.0.2:51225", "30.0.0.1:22");
    assert_eq!(
        (ssh["packets_up"].as_u64(), ssh["packets_down"].as_u64()),
        (Some(17), Some(16))
    );
    let ping = flow(&geneve, "30.0.0.1:10578", "30.0.0.2:10578");
    assert_eq!(ping["class"], "ping");
    assert_eq!(ping["packets_up"].as_u64(), Some(3));

    let vxlan = audit_flows("tcpdump/vxlan.pcap");
    let ping = flow(&vxlan, "192.168.203.3:1292", "192.168.203.5:1292");
    assert_eq!(
        (ping["packets_up"].as_u64(), ping["packets_down"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(
        vxlan.iter().filter(|f| f["proto"] == "udp").count(),
        2,
        "the two datagrams with ARP inside: {vxlan:?}"
    );

    let pptp = audit_flows("tcpdump/pptp.pcap");
    assert_eq!(pptp.len(), 1, "{pptp:?}");
    assert_eq!(pptp[0]["dst"], "10.1.1.10:1723");
}

/// A capture of what a Linux firewall's `NFLOG` rule logged (tcpdump's
/// `nflog.pcap`: four DNS answers): each packet is read from its record,
/// each answer names its flow.
#[test]
fn netfilter_log_captures_are_read() {
    let flows = audit_flows("tcpdump/nflog.pcap");
    assert_eq!(flows.len(), 4, "{flows:?}");
    for f in &flows {
        assert_eq!(f["protocol"], "dns", "{f}");
        assert_eq!(f["dst"], "74.82.42.42:53", "{f}");
    }
    assert!(flows.iter().any(|f| f["server_name"] == "www.example.com"));
}
