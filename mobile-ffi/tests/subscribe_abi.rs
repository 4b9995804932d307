//! Subscriptions through the phone library, end to end in network
//! namespaces (root only; skips otherwise): the C host (`tests/c/host.c`)
//! starts the engine on a TUN with a configuration that subscribes to a
//! maintainer's rules and to another maintainer's list bundle, published
//! on an HTTPS server of the test CA (`dns.test`, a documentation
//! address). Newer bundles are installed while running and block servers
//! (counted there); a foreign-key publication is refused with the rules
//! kept; a restart with the server away starts from the kept bundles;
//! nothing kept and the server away, or rules that block their own update
//! server, refuse the start.

#[path = "../../tests/support/mod.rs"]
mod support;

mod host;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use geowall::policy::bundle;
use host::{Host, compile};
use serde_json::Value;
use support::site::{
    Maintainer, RESOLVER, SITE, fixture, publish_lists, publish_world, start_site, world_bundle,
    zone,
};
use support::{Net, addr, echo, in_ns, sa, tcp_exchange};

const MARK: &str = "0x77";

/// The policy of rules v1: list `edges` of list bundle `acme` blocked.
const ON_ACME: &str = "name = \"on-acme\"\ndefault = \"allow\"\n[[list]]\nname = \"edges\"\nfrom = \"acme\"\n[[rule]]\nname = \"acme edges\"\naction = \"block\"\nblock = \"reject\"\nlist = [\"edges\"]\n";

/// Rules v2: the same, and the US server blocked by address.
fn on_acme_and(cidr: &str) -> String {
    format!(
        "{}[[rule]]\nname = \"v2 blocks {cidr}\"\naction = \"block\"\nblock = \"reject\"\ncidr = [\"{cidr}\"]\n",
        ON_ACME.replace("on-acme", "on-acme-v2")
    )
}

/// The engine's configuration: the maintainer's rules and the `acme`
/// list bundle, checked every 2 s, kept in `state`.
fn config(world: &Path, state: &Path, m: &Maintainer) -> Value {
    let ca = std::fs::read_to_string(fixture("dot/ca.pem")).expect("ca.pem");
    let acme = bundle::SigningKey::from_bytes(&[8; 32]);
    serde_json::json!({
        "world": world,
        "trusted_keys": [bundle::key_hex(m.key.verifying_key().as_bytes())],
        "dns_upstreams": [format!("udp:{RESOLVER}")],
        "mtu": 1500,
        "state_dir": state,
        "subscriptions": [
            {"url": "https://dns.test/site/", "every": "2s", "ca": [ca.clone()]},
            {
                "url": "https://dns.test/site/",
                "list": "acme",
                "keys": [bundle::key_hex(acme.verifying_key().as_bytes())],
                "every": "2s",
                "ca": [ca],
            },
        ],
    })
}

/// The subscriptions' state, as the library reports it.
fn subs(app: &mut Host) -> Value {
    let r = app.cmd("subs");
    let json = r.strip_prefix("ok ").unwrap_or_else(|| panic!("subs: {r}"));
    serde_json::from_str(json).expect("json")
}

/// Waits up to 15 s for `ok(subscriptions)`.
fn wait_subs(app: &mut Host, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = subs(app);
        if ok(&s) || t.elapsed() > Duration::from_secs(15) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the engine with `cfg`; the host's answer.
fn start(app: &mut Host, dir: &Path, name: &str, cfg: &Value) -> String {
    let f = dir.join(name);
    std::fs::write(&f, cfg.to_string()).expect("config");
    app.cmd(&format!("start {}", f.display()))
}

/// Checks that a TCP exchange with `to` fails and that not one packet
/// reached its server meanwhile (`why`: what blocks it).
fn held_off(net: &Net, to: std::net::SocketAddr, why: &str) {
    let ip = to.ip().to_string();
    let before = net.count_settled(&ip, 6, to.port());
    assert!(!reaches(net, to), "{why}: the exchange went through");
    assert_eq!(
        net.count(&ip, 6, to.port()),
        before,
        "{why}: a packet reached {to}"
    );
}

/// Whether a TCP exchange with `to` from the firewall namespace (behind
/// the TUN) gets its echo.
fn reaches(net: &Net, to: std::net::SocketAddr) -> bool {
    in_ns(&net.fw, || tcp_exchange(to, b"ping through the library"))
        .is_ok_and(|r| r == b"ping through the library")
}

#[test]
fn the_library_follows_rule_and_list_subscriptions() {
    if !support::root_or_skip("the_library_follows_rule_and_list_subscriptions") {
        return;
    }
    let exe = compile("host.c");
    let mut net = Net::new();
    net.add_server_address(RESOLVER);
    net.dns_server(sa(RESOLVER, 53), zone);
    let (us, us2) = (sa(addr::US, 7000), sa(addr::US2, 7000));
    net.tcp_server(us, echo);
    net.tcp_server(us2, echo);
    let scratch = net.dir.path().to_owned();
    let world = support::test_world(&scratch);
    let m = Maintainer::new(&scratch);
    let acme = bundle::SigningKey::from_bytes(&[8; 32]);
    m.publish(ON_ACME, 1, 3_600, &m.key);
    publish_lists(&scratch, &m.site, "edges", "203.0.113.0/24\n", 1, &acme);
    let site = start_site(&mut net, m.site.clone());
    let state = scratch.join("state");

    // The app: TUN in the firewall namespace; sockets the library
    // protects (marked) go out over the link, the rest into the TUN.
    let mut app = host::c_host_on_tun(&net, &exe, MARK, false);

    // Nothing kept: both are fetched at start and kept in the state
    // directory; the policy draws its list from the list bundle.
    let cfg = config(&world, &state, &m);
    let r = start(&mut app, &scratch, "config.json", &cfg);
    assert!(r.starts_with("ok "), "start: {r}");
    assert!(state.join("subscribed.gwb").exists());
    assert!(state.join("lists/acme.gwb").exists());
    let s = subs(&mut app);
    assert_eq!(s[0]["what"], "rules", "{s}");
    assert_eq!(s[0]["installed"], 1, "{s}");
    assert!(s[0]["installed_at"].is_u64(), "{s}");
    assert_eq!(s[1]["what"], "list bundle acme", "{s}");
    assert_eq!(s[1]["installed"], 1, "{s}");
    assert!(reaches(&net, us), "v1 allows the US server");
    assert!(reaches(&net, us2), "list v1 does not hold US2");

    // The list maintainer adds US2: the same policy, compiled again,
    // blocks it within the interval.
    let us2_net = format!("{}/32\n", addr::US2);
    publish_lists(&scratch, &m.site, "edges", &us2_net, 2, &acme);
    let s = wait_subs(&mut app, |s| s[1]["installed"] == 2);
    assert_eq!(s[1]["installed"], 2, "{s}");
    assert_eq!(s[0]["installed"], 1, "the rules bundle is the same: {s}");
    held_off(&net, us2, "list v2 blocks US2");

    // The rules maintainer blocks the US server: installed, applied.
    m.publish(&on_acme_and(&format!("{}/32", addr::US)), 2, 3_600, &m.key);
    let s = wait_subs(&mut app, |s| s[0]["installed"] == 2);
    assert_eq!(s[0]["installed"], 2, "{s}");
    held_off(&net, us, "rules v2 block the US server");
    assert!(
        app.cmd(&format!("check {} 7000 6 0", addr::US))
            .starts_with("ok 2 "),
        "the checker path agrees"
    );
    assert!(
        !reaches(&net, us2),
        "rules v2 still draw on list v2 for US2"
    );

    // A publication by a foreign key that would open everything: refused,
    // rules v2 stay.
    let foreign = bundle::SigningKey::from_bytes(&[9; 32]);
    m.publish("name = \"open\"\ndefault = \"allow\"\n", 3, 3_600, &foreign);
    let s = wait_subs(&mut app, |s| s[0]["last_error"].is_string());
    let e = s[0]["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(e.contains("refused"), "{s}");
    assert_eq!(s[0]["installed"], 2, "{s}");
    assert!(!reaches(&net, us), "the refused bundle changed nothing");
    assert!(s[0]["failures"].as_u64().unwrap_or(0) >= 1, "{s}");

    // Each install and each failed round reached `on_event`.
    let events: Vec<Value> = app
        .stderr()
        .lines()
        .filter_map(|l| l.strip_prefix("event "))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["kind"] == "update"
            && e["what"] == "list bundle acme"
            && e["sequence"] == 2),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "update"
            && e["what"] == "rules"
            && e["installed"] == "policy on-acme-v2"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "update-failed" && e["what"] == "rules"),
        "{events:?}"
    );

    // Restart with the server away: the kept bundles are the rules.
    assert_eq!(app.cmd("stop"), "ok");
    assert_eq!(app.cmd("free"), "ok");
    site.down.store(true, Ordering::SeqCst);
    let r = start(&mut app, &scratch, "config.json", &cfg);
    assert!(r.starts_with("ok "), "restart from what is kept: {r}");
    let s = subs(&mut app);
    assert_eq!(s[0]["installed"], 2, "{s}");
    assert_eq!(s[1]["installed"], 2, "{s}");
    held_off(&net, us, "kept rules v2 hold after a restart");
    held_off(&net, us2, "kept list v2 holds after a restart");
    assert_eq!(app.cmd("stop"), "ok");
    assert_eq!(app.cmd("free"), "ok");

    // Nothing kept and the server away: no start (nothing to start with).
    let fresh = config(&world, &scratch.join("fresh"), &m);
    let r = start(&mut app, &scratch, "fresh.json", &fresh);
    assert!(
        r.starts_with("err 15 ") && r.contains("first fetch failed"),
        "{r}"
    );

    // Rules that block their own update server: fetched, then refused.
    site.down.store(false, Ordering::SeqCst);
    m.publish(&on_acme_and(&format!("{SITE}/32")), 4, 3_600, &m.key);
    let blocked = config(&world, &scratch.join("blocked"), &m);
    let r = start(&mut app, &scratch, "blocked.json", &blocked);
    assert!(
        r.starts_with("err 15 ") && r.contains("the rules block the update server"),
        "{r}"
    );
    app.quit();
}

#[test]
fn the_library_follows_world_data() {
    if !support::root_or_skip("the_library_follows_world_data") {
        return;
    }
    let exe = compile("host.c");
    let mut net = Net::new();
    net.add_server_address(RESOLVER);
    net.dns_server(sa(RESOLVER, 53), zone);
    let us2 = sa(addr::US2, 7000);
    net.tcp_server(us2, echo);
    let scratch = net.dir.path().to_owned();
    let m = Maintainer::new(&scratch);
    // Rules that block the PRC; world data as the test world says (US2 in
    // the US), then moved (US2 in the PRC), from another maintainer's key.
    let geo = bundle::SigningKey::from_bytes(&[6; 32]);
    m.publish(
        "name = \"no-prc\"\ndefault = \"allow\"\n[[rule]]\nname = \"no PRC\"\naction = \"block\"\nblock = \"reject\"\nport = [7000]\njurisdiction = { countries = [\"CN\"] }\n",
        1,
        3_600,
        &m.key,
    );
    publish_world(&m.site, &world_bundle(&scratch, false, 1, &geo), &geo);
    let _site = start_site(&mut net, m.site.clone());
    let ca = std::fs::read_to_string(fixture("dot/ca.pem")).expect("ca.pem");
    let state = scratch.join("state");
    let cfg = serde_json::json!({
        "trusted_keys": [bundle::key_hex(m.key.verifying_key().as_bytes())],
        "dns_upstreams": [format!("udp:{RESOLVER}")],
        "state_dir": state,
        "subscriptions": [
            {"url": "https://dns.test/site/", "every": "2s", "ca": [ca.clone()]},
            {"url": "https://dns.test/site/", "world": true, "every": "2s", "ca": [ca],
             "keys": [bundle::key_hex(geo.verifying_key().as_bytes())]},
        ],
    });
    let mut app = host::c_host_on_tun(&net, &exe, MARK, false);
    let r = start(&mut app, &scratch, "config.json", &cfg);
    assert!(r.starts_with("ok "), "start: {r}");
    assert!(state.join("subscribed-world.gwb").exists());
    let s = subs(&mut app);
    assert_eq!(s[1]["what"], "world data", "{s}");
    assert_eq!(s[1]["installed"], 1, "{s}");
    assert!(reaches(&net, us2), "US2 is in the US");

    // The moved world arrives: US2 is now in the PRC and the same rules
    // block it; the checker path agrees.
    publish_world(&m.site, &world_bundle(&scratch, true, 2, &geo), &geo);
    let s = wait_subs(&mut app, |s| s[1]["installed"] == 2);
    assert_eq!(s[1]["installed"], 2, "{s}");
    held_off(&net, us2, "the moved world blocks US2");
    assert!(
        app.cmd(&format!("check {} 7000 6 0", addr::US2))
            .starts_with("ok 2 "),
        "the checker path uses the new world too"
    );
    assert_eq!(app.cmd("stop"), "ok");
    assert_eq!(app.cmd("free"), "ok");
    // A restart starts from the kept world data: in it the test's
    // resolver (198.51.100.53) is in the PRC too, so the start is refused
    // rather than resolving through it.
    let r = start(&mut app, &scratch, "config.json", &cfg);
    assert!(
        r.starts_with("err 3 ") && r.contains("refusing upstream resolver"),
        "restart with the kept moved world: {r}"
    );
    app.quit();
}
