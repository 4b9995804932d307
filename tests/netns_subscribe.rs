//! Subscriptions end to end, in network namespaces (root only; skips
//! otherwise): a maintainer publishes signed rules (`geowall rules
//! publish`) on an HTTPS server of the test CA, named `dns.test` by the
//! test's DNS server, on a documentation address; a running geowall
//! follows it. A newer bundle that blocks a vendor is installed within the
//! interval and the vendor's server stops receiving; a tampered, older,
//! foreign-key or expired publication is refused with the running rules
//! kept; the server going away keeps the rules and is retried; rules that
//! block their own update server refuse the subscription at start.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use geowall::policy::bundle;
use serde_json::Value;
use support::site::{
    Maintainer, RESOLVER, fixture, now, publish_lists, publish_world, start_site, world_bundle,
    zone,
};
use support::{Net, addr, in_ns, sa, udp_exchange_within};

/// An Agora edge's name: the vendor layer says CN wherever it is.
const AGORA_EDGE: &str = "104-166-161-75.edge.agora.io";

/// The options of a geowall following the maintainer's rules at the test
/// site (checked every 2 s, the test CA, the test resolver), its state in
/// `state`.
fn subscribed_args(scratch: &Path, state: &Path) -> Vec<String> {
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    vec![
        "--subscribe".to_owned(),
        "https://dns.test/site/".to_owned(),
        "--pubkey".to_owned(),
        p(&scratch.join("a.pub")),
        "--state-dir".to_owned(),
        p(state),
        "--subscribe-every".to_owned(),
        "2s".to_owned(),
        "--subscribe-ca".to_owned(),
        p(&fixture("dot/ca.pem")),
        "--dns-upstream".to_owned(),
        format!("udp:{RESOLVER}"),
    ]
}

/// Starts `geowall tunnel ARGS` on another TUN of `net`, which must
/// refuse to start; what it said.
fn refused_start(net: &Net, world: &Path, args: &[String]) -> String {
    let o = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.fw,
            env!("CARGO_BIN_EXE_geowall"),
            "tunnel",
        ])
        .args(["--tun", &format!("{}r", net.tun), "--netns", &net.app])
        .arg("--world")
        .arg(world)
        .args(args)
        .output()
        .expect("geowall runs");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    err
}

const ALLOW_ALL: &str = "name = \"v1\"\ndefault = \"allow\"\n";
const NO_AGORA: &str = "name = \"v2\"\ndefault = \"allow\"\n[[rule]]\nname = \"no agora\"\naction = \"block\"\nvendor = [\"agora\"]\n[[rule]]\nname = \"no CN\"\naction = \"block\"\njurisdiction = { countries = [\"CN\"], layers = [\"geo\"] }\n";

fn status(net: &Net) -> Value {
    let o = support::geowall_cli(net, &["status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// Waits up to `limit` for `ok(status)`.
fn wait_status(net: &Net, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = status(net);
        if ok(&s) || t.elapsed() > limit {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends plain datagrams to the other US server's port 7000 (one no
/// vendor's name was learned for) from the app's namespace; how many it
/// received.
fn hello(net: &Net, n: usize) -> u64 {
    let before = net.count(addr::US2, 17, 7000);
    in_ns(&net.app, || {
        for _ in 0..n {
            let _ = udp_exchange_within(sa(addr::US2, 7000), b"hello", Duration::from_millis(100));
        }
    });
    // Unknown UDP may be held up to 1 s while its class is decided.
    std::thread::sleep(Duration::from_millis(1_500));
    net.count(addr::US2, 17, 7000) - before
}

/// Sends SD-RTN probes naming the Agora edge to the US server from the
/// app's namespace; how many the server received.
fn probe(net: &Net, n: usize) -> u64 {
    let before = net.count(addr::US, 17, 8130);
    let host = AGORA_EDGE.to_owned();
    in_ns(&net.app, move || {
        for _ in 0..n {
            let _ = udp_exchange_within(
                sa(addr::US, 8130),
                &support::sd_rtn(&host),
                Duration::from_millis(100),
            );
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    net.count(addr::US, 17, 8130) - before
}

#[test]
fn a_subscription_installs_newer_rules_and_refuses_bad_ones() {
    if !support::root_or_skip("a_subscription_installs_newer_rules_and_refuses_bad_ones") {
        return;
    }
    let mut net = Net::new();
    net.add_server_address(RESOLVER);
    net.dns_server(sa(RESOLVER, 53), zone);
    net.udp_server(sa(addr::US, 8130), |_| Vec::new());
    net.udp_server(sa(addr::US2, 7000), |_| Vec::new());
    let scratch = net.dir.path().to_owned();
    let m = Maintainer::new(&scratch);
    m.publish(ALLOW_ALL, 1, 3_600, &m.key);
    let site = start_site(&mut net, m.site.clone());
    let world = support::test_world(&scratch);
    let state = scratch.join("state");
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let mut args = subscribed_args(&scratch, &state);
    args.extend([
        "--world-pubkey".to_owned(),
        p(&scratch.join("a.pub")),
        "--subscribe-world".to_owned(),
        "https://dns.test/site/".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.start_geowall(&world, &args);
    // Started from the first fetch: v1 allows the vendor.
    let s = status(&net);
    assert_eq!(s["policy"], "v1");
    assert_eq!(s["subscriptions"][0]["installed"], 1);
    assert!(probe(&net, 3) >= 3, "v1 lets the probes through");

    // v2 blocks the vendor: installed within the interval, and the server
    // stops receiving.
    m.publish(NO_AGORA, 2, 3_600, &m.key);
    let s = wait_status(&net, Duration::from_secs(12), |s| s["policy"] == "v2");
    assert_eq!(s["policy"], "v2", "{s}");
    assert_eq!(s["subscriptions"][0]["installed"], 2);
    assert!(
        s["subscriptions"][0]["installed_at"]
            .as_u64()
            .is_some_and(|t| t + 60 > now()),
        "installed just now: {s}"
    );
    assert_eq!(probe(&net, 3), 0, "v2 blocks the vendor");
    // An unchanged index is answered 304 (conditional request).
    let before = site.requests.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(4));
    let s = status(&net);
    assert!(site.requests.load(Ordering::SeqCst) > before);
    assert!(s["subscriptions"][0]["last_error"].is_null(), "{s}");

    // Bad publications: each refused, v2 stays and keeps blocking.
    type Publish<'a> = Box<dyn Fn() + 'a>;
    let bad: Vec<(&str, Publish<'_>)> = vec![
        ("older", Box::new(|| m.publish(ALLOW_ALL, 1, 3_600, &m.key))),
        (
            "foreign key",
            Box::new(|| {
                m.publish(
                    ALLOW_ALL,
                    3,
                    3_600,
                    &bundle::SigningKey::from_bytes(&[9; 32]),
                )
            }),
        ),
        ("expired", Box::new(|| m.publish(ALLOW_ALL, 4, -10, &m.key))),
        (
            "tampered bundle",
            Box::new(|| {
                m.publish(ALLOW_ALL, 5, 3_600, &m.key);
                let f = m.site.join("rules-5.gwb");
                let mut b = std::fs::read(&f).expect("read");
                let n = b.len();
                b[n / 2] ^= 1;
                std::fs::write(f, b).expect("write");
            }),
        ),
    ];
    for (what, publish) in &bad {
        publish();
        let s = wait_status(&net, Duration::from_secs(12), |s| {
            s["subscriptions"][0]["last_error"].is_string()
        });
        assert!(
            s["subscriptions"][0]["last_error"].is_string(),
            "{what}: {s}"
        );
        assert_eq!(s["policy"], "v2", "{what}");
        assert_eq!(s["subscriptions"][0]["installed"], 2, "{what}");
        assert_eq!(probe(&net, 2), 0, "{what}: still blocked");
        // Back to the good publication before the next case.
        m.publish(NO_AGORA, 2, 3_600, &m.key);
        let s = wait_status(&net, Duration::from_secs(12), |s| {
            s["subscriptions"][0]["last_error"].is_null()
        });
        assert!(s["subscriptions"][0]["last_error"].is_null(), "{what}: {s}");
    }

    // Each install and each failed round is among the events.
    let updates: Vec<Value> = net
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "update" || e["kind"] == "update-failed")
        .collect();
    assert!(
        updates.iter().any(|e| e["kind"] == "update"
            && e["what"] == "rules"
            && e["sequence"] == 2
            && e["installed"] == "policy v2"
            && e["time"].is_string()),
        "{updates:?}"
    );
    assert!(
        updates.iter().any(|e| e["kind"] == "update-failed"
            && e["error"]
                .as_str()
                .is_some_and(|x| x.contains("unknown key"))),
        "{updates:?}"
    );

    // The server goes away: the rules stay, failures are counted.
    site.down.store(true, Ordering::SeqCst);
    let s = wait_status(&net, Duration::from_secs(12), |s| {
        s["subscriptions"][0]["failures"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        s["subscriptions"][0]["failures"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    assert_eq!(s["policy"], "v2");
    assert_eq!(probe(&net, 2), 0);
    site.down.store(false, Ordering::SeqCst);

    // World data by the same channel: a world bundle that moves the US
    // range to the PRC is installed, and v2's CN rule now stops what it
    // let through. (The update site is in that range too: from then on
    // the running rules refuse to contact it.)
    assert!(hello(&net, 3) >= 3, "US before the move");
    publish_world(&m.site, &world_bundle(&scratch, true, 1, &m.key), &m.key);
    let s = wait_status(&net, Duration::from_secs(12), |s| {
        s["subscriptions"][1]["installed"] == 1
    });
    assert_eq!(s["subscriptions"][1]["installed"], 1, "{s}");
    assert_eq!(hello(&net, 3), 0, "CN after the move");
    let s = wait_status(&net, Duration::from_secs(12), |s| {
        s["subscriptions"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("the rules block the update server"))
    });
    assert!(
        s["subscriptions"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("the rules block the update server")),
        "{s}"
    );

    net.stop_geowall();

    // Rules that block their own update server: the subscription is
    // refused at start (the recorded bundle is read, nothing fetched).
    site.down.store(false, Ordering::SeqCst);
    m.publish(
        "name = \"v6\"\ndefault = \"allow\"\n[[rule]]\nname = \"no site\"\naction = \"block\"\ncidr = [\"198.51.100.40/32\"]\n",
        6,
        3_600,
        &m.key,
    );
    let fresh = scratch.join("state2");
    let mut a2: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let i = a2.iter().position(|a| a == "--state-dir").expect("arg") + 1;
    a2[i] = p(&fresh);
    let err = refused_start(&net, &world, &a2);
    assert!(
        err.contains("refusing the subscription") && err.contains("no site"),
        "{err}"
    );
}

/// A policy that blocks list `edges` of list bundle `acme`.
const ON_ACME: &str = "name = \"on-acme\"\ndefault = \"allow\"\n[[list]]\nname = \"edges\"\nfrom = \"acme\"\n[[rule]]\nname = \"acme edges\"\naction = \"block\"\nlist = [\"edges\"]\n";

#[test]
fn a_list_subscription_feeds_the_policy_and_a_missing_list_is_never_an_allow() {
    if !support::root_or_skip(
        "a_list_subscription_feeds_the_policy_and_a_missing_list_is_never_an_allow",
    ) {
        return;
    }
    let mut net = Net::new();
    net.add_server_address(RESOLVER);
    net.dns_server(sa(RESOLVER, 53), zone);
    net.udp_server(sa(addr::US2, 7000), |_| Vec::new());
    let scratch = net.dir.path().to_owned();
    // Two maintainers, one site: the policy's and the list's, each with
    // its own key.
    let m = Maintainer::new(&scratch);
    let lists_key = bundle::SigningKey::from_bytes(&[8; 32]);
    std::fs::write(
        scratch.join("acme.pub"),
        bundle::key_hex(lists_key.verifying_key().as_bytes()) + "\n",
    )
    .expect("pub");
    m.publish(ON_ACME, 1, 3_600, &m.key);
    publish_lists(
        &scratch,
        &m.site,
        "edges",
        "203.0.113.0/24\n",
        1,
        &lists_key,
    );
    let _site = start_site(&mut net, m.site.clone());
    let world = support::test_world(&scratch);
    let state = scratch.join("state");
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let mut args = subscribed_args(&scratch, &state);
    args.extend([
        "--subscribe-list".to_owned(),
        "acme=https://dns.test/site/".to_owned(),
        "--list-pubkey".to_owned(),
        format!("acme={}", p(&scratch.join("acme.pub"))),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.start_geowall(&world, &args);
    let s = status(&net);
    assert_eq!(s["policy"], "on-acme", "{s}");
    assert_eq!(s["subscriptions"][1]["what"], "list bundle acme", "{s}");
    assert_eq!(s["subscriptions"][1]["installed"], 1, "{s}");
    assert!(hello(&net, 3) >= 3, "list v1 does not hold the server");
    // Published for an hour: the text status warns it expires within a day.
    let o = support::geowall_cli(&net, &["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "subscription (list bundle acme) https://dns.test/site/lists-index.json: sequence 1"
        ) && text.contains("WARNING: the list bundle acme expires at"),
        "{text}"
    );

    // The list maintainer adds the server: the same policy blocks it.
    let us2 = format!("{}/32\n", addr::US2);
    publish_lists(&scratch, &m.site, "edges", &us2, 2, &lists_key);
    let s = wait_status(&net, Duration::from_secs(12), |s| {
        s["subscriptions"][1]["installed"] == 2
    });
    assert_eq!(s["subscriptions"][1]["installed"], 2, "{s}");
    assert_eq!(
        s["subscriptions"][0]["installed"], 1,
        "the policy bundle is the same"
    );
    assert_eq!(hello(&net, 3), 0, "list v2 blocks the server");

    // A list bundle without the list the policy uses: refused, list v2 and
    // its block stay, and the kept file is still v2.
    publish_lists(
        &scratch,
        &m.site,
        "renamed",
        "192.0.2.0/24\n",
        3,
        &lists_key,
    );
    let s = wait_status(&net, Duration::from_secs(12), |s| {
        s["subscriptions"][1]["last_error"].is_string()
    });
    let e = s["subscriptions"][1]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(e.contains("has no list 'edges'"), "{s}");
    assert_eq!(s["subscriptions"][1]["installed"], 2, "{s}");
    assert_eq!(hello(&net, 3), 0, "still blocked");
    let kept = std::fs::read(state.join("lists/acme.gwb")).expect("kept");
    let kept =
        bundle::open_lists(&kept, &[lists_key.verifying_key()], None, now()).expect("verifies");
    assert_eq!(kept.sequence, 2);
    // A list bundle from another key is refused the same way.
    publish_lists(&scratch, &m.site, "edges", "192.0.2.0/24\n", 4, &m.key);
    let s = wait_status(&net, Duration::from_secs(12), |s| {
        s["subscriptions"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown key"))
    });
    assert_eq!(s["subscriptions"][1]["installed"], 2, "{s}");
    net.stop_geowall();

    // A device that follows the policy but not the list bundle it draws
    // on does not start.
    let mut a2: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let i = a2
        .iter()
        .position(|a| a == "--subscribe-list")
        .expect("arg");
    a2.drain(i..i + 4);
    let i = a2.iter().position(|a| a == "--state-dir").expect("arg") + 1;
    a2[i] = p(&scratch.join("state2"));
    let err = refused_start(&net, &world, &a2);
    assert!(err.contains("list bundle 'acme' is not installed"), "{err}");
}

/// The host moves to another network while geowall follows a
/// subscription with the system's resolver: the host's resolver settings
/// now name another server, and the next fetches resolve the site through
/// it (the new server is asked), not through the resolver of the network
/// left behind.
#[test]
fn a_subscription_resolves_through_the_host_s_new_dns_servers() {
    if !support::root_or_skip("a_subscription_resolves_through_the_host_s_new_dns_servers") {
        return;
    }
    /// `ip netns exec` shows this folder's resolv.conf as the namespace's
    /// /etc/resolv.conf; removed at the end.
    struct Etc(std::path::PathBuf);
    impl Drop for Etc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    const SECOND: &str = "198.51.100.54";
    let mut net = Net::new();
    net.add_server_address(RESOLVER);
    net.add_server_address(SECOND);
    net.dns_server(sa(RESOLVER, 53), zone);
    let asked_second = net.dns_server(sa(SECOND, 53), zone);
    let scratch = net.dir.path().to_owned();
    let m = Maintainer::new(&scratch);
    m.publish(ALLOW_ALL, 1, 3_600, &m.key);
    let _site = start_site(&mut net, m.site.clone());
    let world = support::test_world(&scratch);
    let etc = Etc(Path::new("/etc/netns").join(&net.fw));
    std::fs::create_dir_all(&etc.0).expect("etc");
    let resolv = etc.0.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {RESOLVER}\n")).expect("resolv.conf");
    // The test's options but the upstream: the system's (the default).
    let mut args = subscribed_args(&scratch, &scratch.join("state"));
    let i = args
        .iter()
        .position(|a| a == "--dns-upstream")
        .expect("arg");
    args.drain(i..i + 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.start_geowall(&world, &args);
    assert_eq!(status(&net)["policy"], "v1");
    assert_eq!(asked_second.load(Ordering::SeqCst), 0);
    std::fs::write(&resolv, format!("nameserver {SECOND}\n")).expect("resolv.conf");
    m.publish(NO_AGORA, 2, 3_600, &m.key);
    let s = wait_status(&net, Duration::from_secs(12), |s| {
        s["policy"] == "v2" && asked_second.load(Ordering::SeqCst) > 0
    });
    assert_eq!(s["policy"], "v2", "{s}");
    assert!(
        asked_second.load(Ordering::SeqCst) > 0,
        "the site was resolved through the new network's server"
    );
}
