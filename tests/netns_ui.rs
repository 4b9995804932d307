//! The live page (`--ui`) of a running geowall, in network namespaces
//! (root only; skips otherwise): requests without the token, with a
//! foreign `Host` (DNS rebinding) or from another origin are refused; no
//! answer carries a CORS header; with the token, the page's event stream
//! shows flows as they happen, each with where its server is; in a real
//! browser, the page shows flows on the map and answers an `ask` rule's
//! question (nothing reaches the server before the click).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::page::{page_of, request, stream};
use support::{Net, addr, echo, in_ns, sa, tcp_exchange};

const POLICY: &str = "name = \"ui\"\ndefault = \"allow\"\n[[rule]]\nname = \"no PRC\"\naction = \"block\"\njurisdiction = { countries = [\"CN\"] }\n";

/// Echo servers on US, US2 and CN port 7000, and geowall running `policy`
/// with the live page: the namespaces, the page's port and its token.
fn with_page(policy: &str) -> (Net, u16, String) {
    let mut net = Net::new();
    let (policy, world) = net.policy_and_world(policy);
    for a in [addr::US, addr::US2, addr::CN] {
        net.tcp_server(sa(a, 7000), echo);
    }
    net.start_geowall(
        &world,
        &["--policy", policy.to_str().expect("utf8"), "--ui"],
    );
    let (port, token) = page_of(&net.geowall_start);
    (net, port, token)
}

#[test]
fn the_live_page_refuses_strangers_and_shows_flows_as_they_happen() {
    if !support::root_or_skip("the_live_page_refuses_strangers_and_shows_flows_as_they_happen") {
        return;
    }
    let (us, us2, cn) = (sa(addr::US, 7000), sa(addr::US2, 7000), sa(addr::CN, 7000));
    let (net, port, token) = with_page(POLICY);
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
            "POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-Geowall-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
    );
    assert!(h.starts_with("http/1.1 405"), "POST to the stream: {h}");

    // Traffic while no page is open: kept, and described when a page
    // opens (the backlog); then traffic with the page open (live).
    let r = in_ns(&net.app, || tcp_exchange(us2, b"before the page"));
    assert_eq!(r.expect("US2").as_slice(), b"before the page");
    std::thread::sleep(Duration::from_millis(300));
    let rx = stream(&net, port, &token);
    let t = Instant::now();
    let mut before = None;
    while before.is_none() && t.elapsed() < Duration::from_secs(5) {
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(500))
            && e["kind"] == "opened"
            && e["server"] == us2.to_string()
        {
            before = Some(e);
        }
    }
    let before = before.expect("the flow from before the page, in its backlog");
    assert_eq!(before["where"]["network"]["country"], "US", "{before}");
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

/// Where Debian's Chromium and ChromeDriver are, if installed (`.ci/run`
/// installs them).
fn browser() -> Option<(&'static str, &'static str)> {
    // The program itself: Debian's /usr/bin/chromium is a shell wrapper.
    let chromium = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let driver = "/usr/bin/chromedriver";
    std::path::Path::new(driver)
        .exists()
        .then_some((chromium, driver))
}

/// One WebDriver call to the ChromeDriver on `port` in namespace `ns`.
fn webdriver(ns: &str, port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // ChromeDriver keeps the connection open: read what Content-Length says.
    let body = in_ns(ns, move || {
        let c = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        c.set_read_timeout(Some(Duration::from_secs(60)))?;
        (&c).write_all(req.as_bytes())?;
        let mut r = BufReader::new(c);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        Ok::<_, std::io::Error>(body)
    });
    let body = body.unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "chromedriver {path}: {e}: {}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// ChromeDriver, stopped when dropped.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_browser_shows_the_flows_on_the_live_page() {
    if !support::root_or_skip("a_browser_shows_the_flows_on_the_live_page") {
        return;
    }
    let Some((chromium, chromedriver)) = browser() else {
        eprintln!(
            "SKIP a_browser_shows_the_flows_on_the_live_page: no Chromium and ChromeDriver (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let ask = format!(
        "{POLICY}[[rule]]\nname = \"ask before US2\"\naction = \"ask\"\nask = {{ timeout = 60 }}\ncidr = [\"{}/32\"]\n[[rule]]\nname = \"no web on 7001\"\naction = \"block\"\nblock = \"reject\"\ntraffic = [\"web\"]\nport = [7001]\n",
        addr::US2
    );
    let (us, us2, cn) = (sa(addr::US, 7000), sa(addr::US2, 7000), sa(addr::CN, 7000));
    let (net, port, token) = with_page(&ask);

    // A headless Chromium in the firewall namespace (where the page is),
    // driven over WebDriver.
    const DRIVER: u16 = 9515;
    let _driver = Driver(
        std::process::Command::new("ip")
            .args(["netns", "exec", &net.fw, chromedriver])
            .arg(format!("--port={DRIVER}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let fw = net.fw.clone();
    let t = Instant::now();
    while in_ns(&fw, || {
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], DRIVER)))
    })
    .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = net.dir.path().join("chromium");
    let session = webdriver(
        &fw,
        DRIVER,
        "POST",
        "/session",
        Some(&serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // No background networking: in a namespace with no way
                // out, Chromium's own lookups and fetches only stall it.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-quic", "--no-first-run",
                         "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}})),
    );
    let id = session["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_owned();
    let shown = Instant::now();
    webdriver(
        &fw,
        DRIVER,
        "POST",
        &format!("/session/{id}/url"),
        Some(&serde_json::json!({"url": format!("http://127.0.0.1:{port}/#{token}")})),
    );
    // What a script run in the page returns.
    let script = |js: &str| {
        webdriver(
            &fw,
            DRIVER,
            "POST",
            &format!("/session/{id}/execute/sync"),
            Some(&serde_json::json!({"script": js, "args": []})),
        )["value"]
            .clone()
    };
    let read = || {
        script("return [document.getElementById('state').textContent, document.querySelector('#flows tbody').textContent, document.getElementById('countries').textContent, document.getElementById('alerts').textContent].join('\\n')")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // The page connects to its event stream once loaded: within seconds of
    // the navigation's end, however busy the machine.
    let loaded = Instant::now();
    let mut page = read();
    while !page.starts_with("live") && loaded.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
        page = read();
    }
    assert!(page.starts_with("live"), "the page did not connect: {page}");
    eprintln!(
        "live page: loaded {} ms after it was asked for, connected {} ms after that",
        (loaded - shown).as_millis(),
        loaded.elapsed().as_millis()
    );

    // Traffic after the page opened: it appears there within a second.
    let r = in_ns(&net.app, || tcp_exchange(us, b"hello browser"));
    assert_eq!(r.expect("US").as_slice(), b"hello browser");
    let _ = in_ns(&net.app, || tcp_exchange(cn, b"x"));
    let traffic = Instant::now();
    let mut page = read();
    while !(page.contains(addr::US) && page.contains("no PRC"))
        && traffic.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
        page = read();
    }
    let took = traffic.elapsed();
    assert!(
        page.contains(addr::US),
        "the US flow is not in the table: {page}"
    );
    assert!(page.contains("no PRC"), "the block is not shown: {page}");
    assert!(page.contains("CN"), "no CN among the countries: {page}");
    // The map: China red (blocked), the United States blue (traffic).
    let map = script(
        "const c = id => (document.querySelector('#map path#' + id) || {getAttribute: () => 'missing'}).getAttribute('class'); return [c('cn'), c('us'), c('fr')].join(' ')",
    );
    assert_eq!(map, "blocked traffic ", "{map}");
    // A flow blocked at its request (opened, judged, closed): one block on
    // the page, not a second for the `closed` event that repeats it.
    let web = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
    let _ = in_ns(&net.app, || tcp_exchange(sa(addr::US, 7001), web));
    let t = Instant::now();
    while !read().contains("no web on 7001") && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let text = |id: &str| {
        let v = script(&format!(
            "return document.getElementById('{id}').textContent"
        ));
        v.as_str().unwrap_or_default().to_owned()
    };
    let (counts, alerts) = (text("counts"), text("alerts"));
    assert!(
        counts.contains(" 2 blocked"),
        "the CN flow and the web flow: {counts}; {alerts}"
    );
    assert!(!alerts.contains("closed "), "{alerts}");
    eprintln!(
        "live page: flows shown {} ms after the traffic ({} ms after the page opened)",
        took.as_millis(),
        shown.elapsed().as_millis()
    );

    // A question: the app's connection to US2 waits, nothing reaches
    // US2, until "Allow once" is clicked on the page.
    let app = net.app.clone();
    let (tx, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = in_ns(&app, || {
            support::tcp_exchange_within(us2, b"asked in the browser", Duration::from_secs(30))
        });
        let _ = tx.send(r);
    });
    let question = || {
        script("return document.getElementById('questions').textContent")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let t = Instant::now();
    while !question().contains(addr::US2) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let q = question();
    assert!(
        q.contains(addr::US2) && q.contains("ask before US2"),
        "no question on the page: {q}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        net.count(addr::US2, 6, 7000),
        0,
        "nothing reached US2 while asking"
    );
    // No answers file (no --state-dir): "always" is not offered.
    let always = script(
        "return [...document.querySelectorAll('#questions button')].filter(b => b.textContent.startsWith('Always')).map(b => b.disabled)",
    );
    assert_eq!(always, serde_json::json!([true, true]), "{always}");
    let button = webdriver(
        &fw,
        DRIVER,
        "POST",
        &format!("/session/{id}/element"),
        Some(
            &serde_json::json!({"using": "xpath", "value": "//ol[@id='questions']//button[text()='Allow once']"}),
        ),
    );
    let element = button["value"]
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no Allow once button: {button}"))
        .to_owned();
    webdriver(
        &fw,
        DRIVER,
        "POST",
        &format!("/session/{id}/element/{element}/click"),
        Some(&serde_json::json!({})),
    );
    let r = answered
        .recv_timeout(Duration::from_secs(10))
        .expect("the app is answered");
    assert_eq!(r.expect("US2").as_slice(), b"asked in the browser");
    assert!(net.count(addr::US2, 6, 7000) > 0);
    let t = Instant::now();
    while question().contains(addr::US2) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !question().contains(addr::US2),
        "the question stays on the page"
    );

    let shot = webdriver(
        &fw,
        DRIVER,
        "GET",
        &format!("/session/{id}/screenshot"),
        None,
    );
    let png = shot["value"].as_str().unwrap_or_default();
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} base64 bytes",
        png.len()
    );
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png.b64"),
        png,
    )
    .expect("screenshot");
    webdriver(&fw, DRIVER, "DELETE", &format!("/session/{id}"), None);
    assert_eq!(net.count(addr::CN, 6, 7000), 0, "nothing reached CN");
}
