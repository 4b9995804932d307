//! Policy tests: presets on the reference destinations, located errors for
//! every kind of mistake, lists, and the fixture test world.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::intel::catalog::Catalog;
use crate::intel::jurisdiction::{Intel, Layer};
use crate::intel::world::{BuildProgress, World, WorldBuilder};

fn catalog() -> Catalog {
    Catalog::shipped().expect("shipped catalog")
}

/// The test world of tests/fixtures/world.csv (documentation ranges).
fn fixture_intel() -> Intel {
    let mut b = WorldBuilder::new();
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv");
    b.add_fixture_csv(&csv, &mut |_: BuildProgress| {})
        .expect("fixture");
    let world = World::from_vec(b.build(&mut |_| {}).expect("builds").0).expect("loads");
    Intel::new(Arc::new(world))
}

/// Whether `p` blocks a destination known by address and names only.
fn blocks(p: &Policy, intel: &Intel, dst: Option<IpAddr>, names: &[&str]) -> bool {
    p.evaluate(
        intel,
        &Facts {
            dst,
            names,
            ..Facts::default()
        },
    )
    .is_block()
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("ip"))
}

fn parse(text: &str) -> Result<Policy, crate::intel::catalog::SourceError> {
    Policy::parse(Path::new("p.toml"), text, None, &catalog())
}

#[test]
fn all_presets_parse() {
    for (name, _) in rules::PRESETS {
        let p = Policy::preset(name, &catalog()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.name, name);
        assert!(!p.rules.is_empty());
    }
    let e = Policy::preset("nope", &catalog()).expect_err("unknown preset");
    assert!(e.to_string().contains("clubhouse"), "{e}");
}

#[test]
fn clubhouse_blocks_media_and_pings_by_every_layer() {
    let intel = fixture_intel();
    let p = Policy::preset("clubhouse", &catalog()).expect("preset");
    let v = |dst: Option<IpAddr>, names: &[&str], t: Traffic| {
        let f = Facts {
            dst,
            names,
            traffic: Some(t),
            ..Facts::default()
        };
        let v = p.evaluate(&intel, &f);
        (
            v.is_block(),
            v.layer.map(|l| (l.layer, l.country.map(|c| c.to_string()))),
        )
    };
    let cn = Some("CN".to_owned());
    // Geolocated in CN.
    assert_eq!(
        v(ip("203.0.113.5"), &[], Traffic::Media),
        (true, Some((Layer::Geo, cn.clone())))
    );
    // US-located, network registered CN (a PRC cloud's US region).
    assert_eq!(
        v(ip("192.0.2.10"), &[], Traffic::Ping),
        (true, Some((Layer::Network, cn.clone())))
    );
    // HK counts as PRC jurisdiction.
    assert!(v(ip("203.0.113.200"), &[], Traffic::Ping).0);
    // A German host reached by an Agora name: vendor layer.
    assert_eq!(
        v(
            ip("192.0.2.200"),
            &["104-166-161-75.edge.agora.io"],
            Traffic::Media
        ),
        (true, Some((Layer::Vendor, cn.clone())))
    );
    // Web is not covered; US and DE are allowed.
    assert!(!v(ip("203.0.113.5"), &[], Traffic::Web).0);
    assert!(!v(ip("198.51.100.1"), &[], Traffic::Media).0);
    assert!(!v(ip("192.0.2.200"), &[], Traffic::Media).0);
    // IPv6 and IPv4-mapped IPv6.
    assert!(v(ip("2001:db8:86::9"), &[], Traffic::Ping).0);
    assert!(v(ip("::ffff:203.0.113.5"), &[], Traffic::Ping).0);
    assert!(!v(ip("2001:db8:1::9"), &[], Traffic::Ping).0);
    // Unclassified traffic is not matched by a traffic condition.
    let f = Facts {
        dst: ip("203.0.113.5"),
        ..Facts::default()
    };
    assert!(!p.evaluate(&intel, &f).is_block());
    // A cleartext identifier to PRC jurisdiction, whatever the class.
    let f = Facts {
        dst: ip("203.0.113.5"),
        traffic: Some(Traffic::Web),
        leak: true,
        ..Facts::default()
    };
    let verdict = p.evaluate(&intel, &f);
    assert_eq!(verdict.action, Action::Block(BlockMode::Reject));
    assert_eq!(
        verdict.rule.map(|r| r.1.name.as_str()),
        Some("no cleartext identifiers to PRC jurisdiction")
    );
}

#[test]
fn disputes_count_in_clubhouse_but_not_in_default() {
    let intel = fixture_intel();
    // 192.0.2.150: geo sources say FR and DE in the fixture; make a policy
    // against FR to see disputes.
    let any = parse("name='t'\ndefault='allow'\n[[rule]]\nname='fr'\naction='block'\njurisdiction={countries=['FR'], layers=['geo']}\n").expect("ok");
    let all = parse("name='t'\ndefault='allow'\n[[rule]]\nname='fr'\naction='block'\njurisdiction={countries=['FR'], layers=['geo'], disputed='all'}\n").expect("ok");
    let f = Facts {
        dst: ip("192.0.2.150"),
        ..Facts::default()
    };
    assert!(any.evaluate(&intel, &f).is_block());
    assert!(!all.evaluate(&intel, &f).is_block());
    let both = parse("name='t'\ndefault='allow'\n[[rule]]\nname='x'\naction='block'\njurisdiction={countries=['FR','DE'], layers=['geo'], disputed='all'}\n").expect("ok");
    assert!(both.evaluate(&intel, &f).is_block());
}

#[test]
fn strict_blocks_unknown_but_not_local() {
    let intel = fixture_intel();
    let p = Policy::preset("strict", &catalog()).expect("preset");
    let blocked = |a: &str| {
        p.evaluate(
            &intel,
            &Facts {
                dst: ip(a),
                ..Facts::default()
            },
        )
        .is_block()
    };
    assert!(blocked("203.0.113.5"), "CN");
    // Evaluation only: nothing is sent anywhere.
    assert!(
        blocked("8.8.8.8"),
        "an address the test world knows nothing about is unknown"
    );
    assert!(
        !blocked("198.19.0.1"),
        "a gap inside a special-purpose block is local, not unknown"
    );
    assert!(!blocked("198.51.100.1"), "US");
    assert!(!blocked("10.0.0.1"), "private is local, not unknown");
    assert!(!blocked("fe80::1"), "link-local");
    let v = p.evaluate(
        &intel,
        &Facts {
            dst: ip("8.8.8.8"),
            ..Facts::default()
        },
    );
    assert_eq!(
        v.layer,
        Some(LayerMatch {
            layer: Layer::Geo,
            country: None
        })
    );
}

#[test]
fn default_preset_logs_and_allows_web() {
    let intel = fixture_intel();
    let p = Policy::preset("default", &catalog()).expect("preset");
    let v = p.evaluate(
        &intel,
        &Facts {
            dst: ip("203.0.113.5"),
            traffic: Some(Traffic::Web),
            ..Facts::default()
        },
    );
    assert_eq!(v.action, Action::Allow);
    assert!(v.rule.is_none());
    assert_eq!(
        v.logged_by.map(|r| r.1.name.as_str()),
        Some("log other traffic to PRC jurisdiction")
    );
    let v = p.evaluate(
        &intel,
        &Facts {
            dst: ip("203.0.113.5"),
            traffic: Some(Traffic::Media),
            ..Facts::default()
        },
    );
    assert!(v.is_block());
}

#[test]
fn conditions_combine() {
    let intel = fixture_intel();
    let p = parse(
        r#"name = "t"
default = "block"
default_block = "reject"
[[rule]]
name = "dns"
action = "allow"
protocol = ["udp", "tcp"]
port = [53, "5353-5355"]
[[rule]]
name = "app"
action = "allow"
app = ["com.example.ok"]
encrypted = true
[[rule]]
name = "tools of one user"
action = "allow"
app = ["/usr/bin/curl", "wget*"]
uid = [1000, 1001]
[[rule]]
name = "us carrier"
action = "allow"
asn = [64502]
cidr = ["198.51.100.0/25"]
[[rule]]
name = "names"
action = "allow"
domain = ["=exact.example", "*.wild.example", "suffix.example"]
"#,
    )
    .expect("parses");
    let ev = |f: Facts<'_>| p.evaluate(&intel, &f).rule.map(|r| r.1.name.clone());
    let base = Facts::default();
    assert_eq!(
        ev(Facts {
            transport: Some(Transport::Udp),
            port: Some(53),
            ..base
        }),
        Some("dns".into())
    );
    assert_eq!(
        ev(Facts {
            transport: Some(Transport::Tcp),
            port: Some(5354),
            ..base
        }),
        Some("dns".into())
    );
    assert_eq!(
        ev(Facts {
            transport: Some(Transport::Icmp),
            port: Some(53),
            ..base
        }),
        None
    );
    assert_eq!(
        ev(Facts {
            app: Some("com.example.ok"),
            encrypted: Some(true),
            ..base
        }),
        Some("app".into())
    );
    assert_eq!(
        ev(Facts {
            app: Some("com.example.ok"),
            encrypted: Some(false),
            ..base
        }),
        None
    );
    // Path, glob and user together.
    for (app, uid, rule) in [
        (Some("/usr/bin/curl"), Some(1000), Some("tools of one user")),
        (
            Some("/usr/local/bin/wget2"),
            Some(1001),
            Some("tools of one user"),
        ),
        (Some("/usr/local/bin/curl"), Some(1000), None),
        (Some("/usr/bin/curl"), Some(0), None),
        (Some("/usr/bin/curl"), None, None),
        (None, Some(1000), None),
    ] {
        assert_eq!(
            ev(Facts { app, uid, ..base }),
            rule.map(str::to_owned),
            "{app:?} {uid:?}"
        );
    }
    assert_eq!(
        ev(Facts {
            dst: ip("198.51.100.7"),
            ..base
        }),
        Some("us carrier".into())
    );
    assert_eq!(
        ev(Facts {
            dst: ip("198.51.100.200"),
            ..base
        }),
        None,
        "ASN matches but not the CIDR"
    );
    for (n, want) in [
        ("exact.example", true),
        ("a.exact.example", false),
        ("a.wild.example", true),
        ("wild.example", false),
        ("x.suffix.example", true),
    ] {
        assert_eq!(
            ev(Facts {
                names: &[n],
                ..base
            })
            .is_some(),
            want,
            "{n}"
        );
    }
    let v = p.evaluate(&intel, &base);
    assert_eq!(v.action, Action::Block(BlockMode::Reject));
}

#[test]
fn lists_from_files_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).expect("write");
    w("d.txt", "blocked.example\n");
    w("h.txt", "0.0.0.0 hosts.example\n");
    w("a.txt", "! adblock\n||adblock.example^\n");
    w("c.txt", "198.51.100.128/25\n");
    w("n.txt", "AS64500\n");
    w(
        "s.json",
        r#"{"version": 1, "rules": [{"domain_suffix": ["singbox.example"]}]}"#,
    );
    w(
        "p.toml",
        r#"name = "lists"
default = "allow"
[[list]]
name = "d"
file = "d.txt"
format = "domains"
[[list]]
name = "h"
file = "h.txt"
format = "hosts"
[[list]]
name = "a"
file = "a.txt"
format = "adblock"
[[list]]
name = "c"
file = "c.txt"
format = "cidr"
[[list]]
name = "n"
file = "n.txt"
format = "asn"
[[list]]
name = "s"
file = "s.json"
format = "sing-box"
[[rule]]
name = "listed"
action = "block"
list = ["d", "h", "a", "c", "n", "s"]
"#,
    );
    let p = Policy::load(&dir.path().join("p.toml"), &catalog()).expect("loads");
    assert_eq!(p.lists.len(), 6);
    let intel = fixture_intel();
    let blocked = |dst: Option<IpAddr>, names: &[&str]| blocks(&p, &intel, dst, names);
    for n in [
        "blocked.example",
        "x.blocked.example",
        "hosts.example",
        "a.adblock.example",
        "singbox.example",
    ] {
        assert!(blocked(None, &[n]), "{n}");
    }
    assert!(
        !blocked(None, &["x.hosts.example"]),
        "hosts entries are exact"
    );
    assert!(blocked(ip("198.51.100.200"), &[]), "cidr list");
    assert!(blocked(ip("203.0.113.9"), &[]), "asn list (AS64500)");
    assert!(!blocked(ip("198.51.100.1"), &[]));
    // A bad line in a list is located in the list file.
    w("d.txt", "ok.example\nbad..example\n");
    let e = Policy::load(&dir.path().join("p.toml"), &catalog()).expect_err("bad list");
    assert!(e.path.ends_with("d.txt") && e.line == 2, "{e}");
    // A missing list file is located at the policy's `file` key.
    w(
        "p2.toml",
        "name='x'\ndefault='allow'\n[[list]]\nname='m'\nfile='missing.txt'\nformat='domains'\n",
    );
    let e = Policy::load(&dir.path().join("p2.toml"), &catalog()).expect_err("missing list");
    assert_eq!(
        (e.line, e.path.file_name().and_then(|f| f.to_str())),
        (5, Some("p2.toml")),
        "{e}"
    );
}

#[test]
fn malformed_rules_give_located_errors() {
    let head = "name = 't'\ndefault = 'allow'\n[[rule]]\nname = 'r'\naction = 'block'\n";
    let cases: &[(&str, usize, &str)] = &[
        ("colour = 'red'\n", 6, "colour"),
        ("jurisdiction = { countries = ['C1'] }\n", 6, "two-letter"),
        (
            "jurisdiction = { countries = [] }\n",
            6,
            "at least one country",
        ),
        (
            "jurisdiction = { countries = ['CN'], layers = ['geo', 'moon'] }\n",
            6,
            "moon",
        ),
        (
            "jurisdiction = { countries = ['RU', 'UK'] }\n",
            6,
            "did you mean gb",
        ),
        (
            "jurisdiction = { countries = ['XX'] }\n",
            6,
            "not an iso 3166-1 country code",
        ),
        ("cidr = ['203.0.113.1/24']\n", 6, "host bits"),
        ("cidr = ['nope']\n", 6, "not a cidr"),
        ("port = [70000]\n", 6, "port"),
        ("port = ['90-80']\n", 6, "backwards"),
        ("domain = ['a..b']\n", 6, "empty label"),
        ("domain = []\n", 6, "empty list"),
        ("vendor = ['nosuch']\n", 6, "unknown vendor"),
        ("list = ['nosuch']\n", 6, "unknown list"),
        ("traffic = ['video']\n", 6, "video"),
        ("protocol = ['sctp']\n", 6, "sctp"),
        ("block = 'maybe'\n", 6, "maybe"),
    ];
    for (body, line, needle) in cases {
        let e = parse(&format!("{head}{body}")).expect_err(body);
        assert_eq!(e.line, *line, "{body}: {e}");
        assert!(e.col >= 1, "{e}");
        assert!(e.to_string().to_lowercase().contains(needle), "{body}: {e}");
        assert!(e.to_string().starts_with("p.toml:"), "{e}");
    }
    let e = parse(
        "name = 't'\ndefault = 'allow'\n[[rule]]\nname = 'r'\naction = 'allow'\nblock = 'drop'\n",
    )
    .expect_err("block on allow");
    assert_eq!((e.line, e.col), (6, 9), "{e}");
    let e = parse("name = 't'\ndefault = 'log'\n").expect_err("log default");
    assert_eq!(e.line, 2, "{e}");
    let e = parse("name = 't'\ndefault = 'allow'\n[[rule]\n").expect_err("syntax");
    assert_eq!(e.line, 3, "{e}");
    let e = parse("default = 'allow'\n").expect_err("missing name");
    assert!(e.message.contains("name"), "{e}");
}

#[test]
fn trace_explains_each_rule() {
    let intel = fixture_intel();
    let p = Policy::preset("clubhouse", &catalog()).expect("preset");
    let f = Facts {
        dst: ip("198.51.100.1"),
        traffic: Some(Traffic::Media),
        ..Facts::default()
    };
    let j = intel.jurisdiction(p.catalog(), f.dst, f.names, f.protocol);
    let t = p.trace(&f, Some(&j));
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].failed, Some("leak"));
    assert_eq!(t[1].failed, Some("jurisdiction"));
}

#[test]
fn handle_swaps_atomically() {
    let a = Policy::preset("default", &catalog()).expect("a");
    let b = Policy::preset("strict", &catalog()).expect("b");
    let h = PolicyHandle::new(a);
    let before = h.current();
    h.replace(b);
    assert_eq!(before.name, "default", "a reader keeps the policy it took");
    assert_eq!(h.current().name, "strict");
}

#[cfg(feature = "embedded-world")]
#[test]
fn reference_cases_with_the_shipped_world() {
    let intel = Intel::new(crate::intel::world::embedded().expect("world"));
    let p = Policy::preset("clubhouse", &catalog()).expect("preset");
    let f = Facts {
        names: &["104-166-161-75.edge.agora.io"],
        traffic: Some(Traffic::Media),
        ..Facts::default()
    };
    let v = p.evaluate(&intel, &f);
    assert!(v.is_block());
    assert_eq!(v.layer.map(|l| l.layer), Some(Layer::Vendor));
    let f = Facts {
        dst: ip("47.74.0.1"),
        traffic: Some(Traffic::Ping),
        ..Facts::default()
    };
    let v = p.evaluate(&intel, &f);
    assert!(v.is_block());
    assert!(matches!(
        v.layer.map(|l| l.layer),
        Some(Layer::Network | Layer::Owner)
    ));
    // Zenlayer's 114.114.114.114 is geolocated CN: blocked by geo.
    let f = Facts {
        dst: ip("114.114.114.114"),
        traffic: Some(Traffic::Ping),
        ..Facts::default()
    };
    assert_eq!(
        p.evaluate(&intel, &f).layer.map(|l| l.layer),
        Some(Layer::Geo)
    );
    let _ = PathBuf::new();
}

#[test]
fn embedded_ipv4_jurisdiction_counts() {
    let intel = fixture_intel();
    let p = Policy::preset("clubhouse", &catalog()).expect("preset");
    let ping = |a: &str| {
        let f = Facts {
            dst: ip(a),
            traffic: Some(Traffic::Ping),
            ..Facts::default()
        };
        p.evaluate(&intel, &f).is_block()
    };
    // 203.0.113.5 is CN in the test world; 198.51.100.7 is US.
    for blocked in [
        "64:ff9b::203.0.113.5",
        "64:ff9b:1::203.0.113.5",
        "2002:cb00:7105::1",
        "2001:0:4136:e378:8000:63bf:34ff:8efa",
        "::203.0.113.5",
    ] {
        assert!(ping(blocked), "{blocked} embeds a CN address");
    }
    for allowed in [
        "64:ff9b::198.51.100.7",
        "64:ff9b:1::198.51.100.7",
        "2002:c633:6407::1",
    ] {
        assert!(!ping(allowed), "{allowed} embeds a US address");
    }
    let j = intel.jurisdiction(p.catalog(), ip("64:ff9b::203.0.113.5"), &[], None);
    assert!(!j.geo_unknown() && !j.local);
    assert_eq!(j.to_json()["embedded"]["kind"], "nat64");
}

#[test]
fn strict_refuses_encrypted_dns_around_geowall() {
    let intel = fixture_intel();
    let p = Policy::preset("strict", &catalog()).expect("preset");
    let rule = |f: Facts<'_>| p.evaluate(&intel, &f).rule.map(|r| r.1.name.clone());
    // DoT to a US address of the test world (only evaluated, never sent).
    assert_eq!(
        rule(Facts {
            dst: ip("198.51.100.9"),
            port: Some(853),
            transport: Some(Transport::Tcp),
            ..Facts::default()
        })
        .as_deref(),
        Some("no DNS over TLS or QUIC around geowall")
    );
    // DoH by name: the flow, and the name at the DNS step.
    assert_eq!(
        rule(Facts {
            dst: ip("198.51.100.9"),
            port: Some(443),
            names: &["dns.google"],
            ..Facts::default()
        })
        .as_deref(),
        Some("no DNS over HTTPS to public resolvers, by name")
    );
    assert!(
        p.dns_blocks_name(&intel, &["cloudflare-dns.com"], None)
            .is_some()
    );
    assert!(
        p.dns_blocks_name(&intel, &["www.example.org"], None)
            .is_none()
    );
    // DoH by address, on 443 only.
    let doh = |port| {
        rule(Facts {
            dst: ip("1.1.1.1"),
            port: Some(port),
            ..Facts::default()
        })
    };
    assert_eq!(
        doh(443).as_deref(),
        Some("no DNS over HTTPS to public resolvers, by address")
    );
    assert_ne!(
        doh(80).as_deref(),
        Some("no DNS over HTTPS to public resolvers, by address")
    );
}

#[test]
fn dns_address_filtering_ignores_the_flow_but_respects_allow_rules() {
    let intel = fixture_intel();
    let p = Policy::preset("clubhouse", &catalog()).expect("preset");
    // The clubhouse rules are about pings and media; at DNS time any
    // traffic could follow, so a CN address is filtered.
    assert!(
        p.dns_blocks_address(&intel, "203.0.113.5".parse().expect("ip"), &[], None)
            .is_some()
    );
    assert!(
        p.dns_blocks_address(&intel, "198.51.100.5".parse().expect("ip"), &[], None)
            .is_none()
    );
    // An earlier allow rule on the address alone keeps it.
    let allow = parse("name='t'\ndefault='allow'\n[[rule]]\nname='ok'\naction='allow'\ncidr=['203.0.113.5/32']\n[[rule]]\nname='cn'\naction='block'\ntraffic=['media']\njurisdiction={countries=['CN']}\n").expect("ok");
    assert!(
        allow
            .dns_blocks_address(&intel, "203.0.113.5".parse().expect("ip"), &[], None)
            .is_none()
    );
    assert!(
        allow
            .dns_blocks_address(&intel, "203.0.113.6".parse().expect("ip"), &[], None)
            .is_some()
    );
    // A name rule that also needs a flow condition does not block names.
    let media = parse("name='t'\ndefault='allow'\n[[rule]]\nname='m'\naction='block'\ntraffic=['media']\ndomain=['meet.example.org']\n").expect("ok");
    assert!(
        media
            .dns_blocks_name(&intel, &["meet.example.org"], None)
            .is_none()
    );
}

/// A policy brings the catalogs it was compiled with: evaluated by an
/// engine whose own catalogs predate it (a rules bundle swapped in at run
/// time), it still recognises the vendors it names.
#[test]
fn a_policy_recognises_vendors_with_its_own_catalog() {
    let vendor = r#"
[[vendor]]
id = "examplecorp"
name = "Example Corp"
jurisdiction = "CN"
evidence = "a test vendor"
domains = ["vendor.example"]
sources = ["this test"]
"#;
    let mut sources: Vec<(PathBuf, String)> = crate::intel::catalog::SHIPPED
        .iter()
        .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
        .collect();
    sources.push((PathBuf::from("extra/vendors.toml"), vendor.to_owned()));
    let newer = Catalog::from_sources(sources).expect("catalog with the extra vendor");
    let text = "name = 'bundle'\ndefault = 'allow'\n[[rule]]\nname = 'no-examplecorp'\naction = 'block'\nvendor = ['examplecorp']\n";
    let p = Policy::parse(Path::new("bundle.toml"), text, None, &newer).expect("compiles");
    // The shipped catalogs do not know the vendor; the policy's do.
    let intel = fixture_intel();
    assert!(catalog().vendor("examplecorp").is_none());
    let names = ["cdn.vendor.example"];
    let f = Facts {
        dst: ip("203.0.113.5"),
        names: &names,
        ..Facts::default()
    };
    let v = p.evaluate(&intel, &f);
    assert!(v.is_block(), "blocked via the policy's catalog: {v:?}");
    assert_eq!(v.rule.map(|r| r.1.name.as_str()), Some("no-examplecorp"));
    // A policy compiled against the shipped catalogs cannot name it.
    let err = Policy::parse(Path::new("old.toml"), text, None, &catalog()).expect_err("unknown");
    assert!(err.to_string().contains("unknown vendor"), "{err}");
}

/// NAT64 beyond the well-known prefix: an address under a network's own
/// prefix (any RFC 6052 length) carries the embedded IPv4 address's
/// jurisdiction, and `cidr` rules match IPv4 ranges through any NAT64
/// form, configured or well-known.
#[test]
fn nat64_prefixes_and_cidr_rules_see_the_embedded_address() {
    let strict = Policy::preset("strict", &catalog()).expect("strict");
    // 203.0.113.5 (CN in the test world) under 2001:db8:64::/48: RFC 6052
    // puts it in bytes 6-7 and 9-10.
    let under48 = |v4: [u8; 4]| {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x00, 0x64]);
        o[6] = v4[0];
        o[7] = v4[1];
        o[9] = v4[2];
        o[10] = v4[3];
        Some(IpAddr::from(o))
    };
    let f = |dst| Facts {
        dst,
        ..Facts::default()
    };
    let plain = fixture_intel();
    let carrier = plain
        .with_nat64(&["2001:db8:64::/48".parse().expect("prefix")])
        .expect("an RFC 6052 length");
    let cn = under48([203, 0, 113, 5]);
    assert!(
        !strict.evaluate(&plain, &f(cn)).is_block(),
        "unknown prefix: not seen"
    );
    let v = strict.evaluate(&carrier, &f(cn));
    assert!(v.is_block(), "the carrier's prefix: CN");
    assert!(
        !strict
            .evaluate(&carrier, &f(under48([198, 51, 100, 7])))
            .is_block()
    );
    assert!(
        plain
            .with_nat64(&["2001:db8:64::/50".parse().expect("prefix")])
            .is_err()
    );
    // A cidr rule on an IPv4 range blocks it through NAT64.
    let cat = catalog();
    let p = Policy::parse(
        Path::new("p.toml"),
        "name='r'\ndefault='allow'\n[[rule]]\nname='no range'\naction='block'\ncidr=['203.0.113.0/25']\n",
        None,
        &cat,
    )
    .expect("policy");
    for blocked in [
        "203.0.113.5",
        "64:ff9b::203.0.113.5",
        "64:ff9b:1::203.0.113.5",
    ] {
        assert!(p.evaluate(&plain, &f(ip(blocked))).is_block(), "{blocked}");
    }
    assert!(
        p.evaluate(&carrier, &f(cn)).is_block(),
        "through the carrier's prefix"
    );
    assert!(
        !p.evaluate(&plain, &f(ip("64:ff9b::198.51.100.7")))
            .is_block()
    );
}

/// An allow-list policy can let the LAN and the device itself through with
/// `local = true`, and nothing else: private, link-local, loopback,
/// multicast and IPv6 unique-local addresses are local; a public address,
/// a documentation one and NAT64 to a private IPv4 address are not.
#[test]
fn an_allow_list_lets_the_local_network_through_with_local() {
    let intel = fixture_intel();
    let p = parse(
        "name='allow-list'\ndefault='block'\n[[rule]]\nname='the LAN'\naction='allow'\nlocal=true\n",
    )
    .expect("compiles");
    let allowed = |s: &str| {
        !p.evaluate(
            &intel,
            &Facts {
                dst: ip(s),
                ..Facts::default()
            },
        )
        .is_block()
    };
    for lan in [
        "192.168.1.1",
        "10.0.0.8",
        "172.16.5.4",
        "169.254.1.1",
        "127.0.0.1",
        "224.0.0.251",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fd12:3456::1",
        "ff02::fb",
        "::ffff:192.168.1.1",
    ] {
        assert!(allowed(lan), "{lan}");
    }
    for far in [
        "198.51.100.10",
        "8.8.8.8",
        "2001:db8:1::10",
        "64:ff9b::c0a8:101",
        "172.32.0.1",
    ] {
        assert!(!allowed(far), "{far}");
    }
    // The opposite: a rule for everything but the LAN.
    let p = parse("name='t'\ndefault='allow'\n[[rule]]\nname='not local'\naction='block'\nlocal=false\nprotocol=['udp']\n").expect("compiles");
    let f = |s: &str| Facts {
        dst: ip(s),
        transport: Some(Transport::Udp),
        ..Facts::default()
    };
    assert!(p.evaluate(&intel, &f("198.51.100.10")).is_block());
    assert!(!p.evaluate(&intel, &f("192.168.1.1")).is_block());
}

#[test]
fn a_relayed_flow_is_judged_for_its_relay_and_each_peer() {
    let intel = fixture_intel();
    let club = Policy::preset("clubhouse", &catalog()).expect("preset");
    let relay = ip("198.51.100.7");
    let media = |peers: &'static [std::net::SocketAddr]| Facts {
        dst: relay,
        traffic: Some(Traffic::Media),
        peers,
        ..Facts::default()
    };
    // The relay alone, and with a US peer: allowed.
    assert!(!club.evaluate(&intel, &media(&[])).is_block());
    static US: [std::net::SocketAddr; 1] = [std::net::SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 20)),
        5004,
    )];
    assert!(!club.evaluate(&intel, &media(&US)).is_block());
    // A CN peer behind the US relay: blocked, naming the peer and its layer.
    static BOTH: [std::net::SocketAddr; 2] = [
        US[0],
        std::net::SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 10)), 5004),
    ];
    let v = club.evaluate(&intel, &media(&BOTH));
    assert!(v.is_block());
    assert_eq!(v.peer, Some(BOTH[1]));
    assert_eq!(v.layer.map(|l| l.to_string()).as_deref(), Some("geo:CN"));
    assert_eq!(v.to_json()["peer"], "203.0.113.10:5004");
    // A rule may look at one end only.
    let p = parse(
        r#"
name = "ends"
default = "allow"
[[rule]]
name = "relay side"
action = "block"
endpoint = "server"
jurisdiction = { countries = ["CN"] }
[[rule]]
name = "peers in DE"
action = "block"
endpoint = "peer"
jurisdiction = { countries = ["DE"] }
"#,
    )
    .expect("parses");
    assert!(
        !p.evaluate(&intel, &media(&BOTH)).is_block(),
        "CN peer, server-only rule"
    );
    static DE: [std::net::SocketAddr; 1] = [std::net::SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 200)),
        9,
    )];
    let v = p.evaluate(&intel, &media(&DE));
    assert_eq!(v.rule.map(|r| r.1.name.as_str()), Some("peers in DE"));
    // The peer-only rule never looks at the server itself.
    let to_de = Facts {
        dst: ip("192.0.2.200"),
        ..Facts::default()
    };
    assert!(!p.evaluate(&intel, &to_de).is_block());
    let e = parse("name = \"x\"\ndefault = \"allow\"\n[[rule]]\nname = \"r\"\naction = \"block\"\nendpoint = \"relay\"\n")
        .expect_err("unknown endpoint");
    assert!(
        e.to_string().contains("endpoint") || e.to_string().contains("relay"),
        "{e}"
    );
}

/// A list bundle directory: `acme` with a hosts list and a CIDR list.
fn acme_lists(hosts: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).expect("write");
    w(
        "lists.toml",
        "name = \"acme\"\n[[list]]\nname = \"trackers\"\nfile = \"trackers.hosts\"\nformat = \"hosts\"\n[[list]]\nname = \"nets\"\nfile = \"nets.txt\"\nformat = \"cidr\"\n",
    );
    w("trackers.hosts", hosts);
    w("nets.txt", "# relay ranges\n198.51.100.0/25\n");
    dir
}

/// A rules directory whose policy blocks list `trackers` and `nets` from
/// list bundle `acme`, and its own list `mine`.
fn policy_on_acme() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("policy.toml"),
        "name = \"p\"\ndefault = \"allow\"\n[[list]]\nname = \"trackers\"\nfrom = \"acme\"\n[[list]]\nname = \"nets\"\nfrom = \"acme\"\n[[list]]\nname = \"mine\"\nfile = \"mine.txt\"\nformat = \"domains\"\n[[rule]]\nname = \"listed\"\naction = \"block\"\nlist = [\"trackers\", \"nets\", \"mine\"]\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("mine.txt"), "mine.example\n").expect("write");
    dir
}

#[test]
fn a_policy_draws_lists_from_installed_list_bundles_and_never_runs_without_them() {
    use super::bundle::{
        BundleError, BundleKind, SigningKey, build, inspect, open, open_lists, sign,
    };
    use super::lists::InstalledLists;
    const NOW: u64 = 1_800_000_000;
    let (pk, lk) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let lists = |hosts: &str, seq: u64| {
        let d = acme_lists(hosts);
        sign(
            &build(d.path(), seq, NOW - 10, NOW + 100).expect("builds"),
            &lk,
        )
        .expect("signs")
    };
    let lb = lists("0.0.0.0 tracker.example other.example\n", 3);
    assert_eq!(BundleKind::of(&lb).expect("kind"), BundleKind::Lists);
    let acme = open_lists(&lb, &[lk.verifying_key()], None, NOW).expect("opens");
    assert_eq!(acme.name, "acme");
    assert_eq!(
        acme.lists
            .iter()
            .map(|l| (l.name.as_str(), l.entries.len()))
            .collect::<Vec<_>>(),
        [("trackers", 2), ("nets", 1)]
    );
    // The policy bundle builds without the list bundle, naming what it needs.
    let pd = policy_on_acme();
    let pb = sign(
        &build(pd.path(), 7, NOW - 10, NOW + 100).expect("builds"),
        &pk,
    )
    .expect("signs");
    let seen = inspect(&pb, BundleKind::Rules, &[pk.verifying_key()], None, NOW).expect("checks");
    assert_eq!(
        seen.needs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["acme/trackers", "acme/nets"]
    );
    // With the list bundle installed, its entries judge traffic.
    let mut installed = InstalledLists::default();
    installed.add(acme.clone()).expect("adds");
    let p = open(&pb, &[pk.verifying_key()], None, NOW, &installed)
        .expect("opens")
        .policy;
    let intel = fixture_intel();
    let blocked = |p: &Policy, dst: Option<IpAddr>, names: &[&str]| blocks(p, &intel, dst, names);
    assert!(blocked(&p, None, &["tracker.example"]));
    assert!(blocked(&p, None, &["mine.example"]));
    assert!(blocked(&p, ip("198.51.100.7"), &[]));
    assert!(!blocked(&p, ip("198.51.100.200"), &[]));
    assert!(
        !blocked(&p, None, &["x.tracker.example"]),
        "hosts entries are exact"
    );
    // Without it, the policy does not open: never an empty list.
    let e = open(
        &pb,
        &[pk.verifying_key()],
        None,
        NOW,
        InstalledLists::none(),
    )
    .expect_err("missing");
    assert!(
        matches!(&e, BundleError::InvalidPolicy(s) if s.message.contains("'acme' is not installed")),
        "{e}"
    );
    // A list bundle of that name without the list: said, with what it has.
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        d.path().join("lists.toml"),
        "name = \"acme\"\n[[list]]\nname = \"trackers\"\nfile = \"t.txt\"\nformat = \"domains\"\n",
    )
    .expect("write");
    std::fs::write(d.path().join("t.txt"), "tracker.example\n").expect("write");
    let short = open_lists(
        &sign(
            &build(d.path(), 4, NOW - 10, NOW + 100).expect("builds"),
            &lk,
        )
        .expect("signs"),
        &[lk.verifying_key()],
        None,
        NOW,
    )
    .expect("opens");
    let mut only_trackers = InstalledLists::default();
    only_trackers.add(short).expect("adds");
    let e = open(&pb, &[pk.verifying_key()], None, NOW, &only_trackers).expect_err("no nets");
    assert!(
        e.to_string()
            .contains("has no list 'nets'; it has: trackers"),
        "{e}"
    );
    // An installer (the phone library's) compiles its bundle again when
    // the lists change; lists that lack one it needs change nothing.
    let mut inst = bundle::Installer::with_lists(vec![pk.verifying_key()], installed.clone());
    assert_eq!(inst.install(&pb, NOW).expect("installs").sequence, 7);
    let e = inst
        .relist(only_trackers, NOW)
        .expect_err("the policy needs acme/nets");
    assert!(e.to_string().contains("has no list 'nets'"), "{e}");
    assert_eq!(
        inst.lists().bundles()[0].lists.len(),
        2,
        "the old lists stay"
    );
    let again = inst
        .relist(installed.clone(), NOW)
        .expect("compiles again")
        .expect("installed");
    assert_eq!(again.sequence, 7);
    assert!(blocked(&again.policy, ip("198.51.100.7"), &[]));
    assert!(
        inst.relist(installed.clone(), NOW + 100).is_err(),
        "an expired bundle is not compiled again"
    );
    // Two bundles of one name are refused.
    assert!(installed.add(acme).is_err());
    // A list bundle is no rules bundle, and back; each has its own checks.
    assert!(matches!(
        open(&lb, &[lk.verifying_key()], None, NOW, &installed),
        Err(BundleError::WrongKind {
            found: BundleKind::Lists,
            wanted: BundleKind::Rules
        })
    ));
    assert!(matches!(
        open_lists(&pb, &[pk.verifying_key()], None, NOW),
        Err(BundleError::WrongKind { .. })
    ));
    let trusted = [lk.verifying_key()];
    assert!(matches!(
        open_lists(&lb, &trusted, Some(3), NOW),
        Err(BundleError::Rollback { .. })
    ));
    assert!(matches!(
        open_lists(&lb, &trusted, None, NOW + 100),
        Err(BundleError::Expired { .. })
    ));
    assert!(matches!(
        open_lists(&lb, &[pk.verifying_key()], None, NOW),
        Err(BundleError::UnknownKey(_))
    ));
    // A newer list bundle changes what the same policy blocks.
    let lb2 = lists("0.0.0.0 other.example\n", 4);
    let mut newer = InstalledLists::default();
    newer
        .add(open_lists(&lb2, &trusted, Some(3), NOW).expect("newer opens"))
        .expect("adds");
    let p2 = open(&pb, &[pk.verifying_key()], None, NOW, &newer)
        .expect("opens")
        .policy;
    assert!(!blocked(&p2, None, &["tracker.example"]));
    assert!(blocked(&p2, None, &["other.example"]));
    // And the diff of the two list bundles says so, per list file.
    let d = diff::diff(
        &bundle::review(&lb).expect("review"),
        &bundle::review(&lb2).expect("review"),
    )
    .expect("diff");
    assert_eq!(d.lists["trackers.hosts"].removed, ["=tracker.example"]);
    assert!(d.rules.is_empty() && d.settings.is_empty());
    assert!(
        diff::diff(
            &bundle::review(&lb).expect("review"),
            &bundle::review(&pb).expect("review")
        )
        .is_err(),
        "a list bundle is not compared with a rules bundle"
    );
}

#[test]
fn list_manifests_and_list_references_are_checked_where_they_are_written() {
    use super::lists::read_manifest;
    let none = |_: &str| -> Result<String, String> { Ok("a.example\n".into()) };
    let m = |t: &str| {
        read_manifest(Path::new("lists.toml"), t, &mut { none }).map(|(m, l)| (m.name, l.len()))
    };
    assert_eq!(
        m("name = \"ok-1\"\n[[list]]\nname = \"a\"\nfile = \"a.txt\"\nformat = \"domains\"\n"),
        Ok(("ok-1".into(), 1))
    );
    for (bad, says) in [
        (
            "name = \"Bad/Name\"\n[[list]]\nname = \"a\"\nfile = \"a\"\nformat = \"domains\"\n",
            "cannot name a list bundle",
        ),
        ("name = \"x\"\n", "at least one [[list]]"),
        (
            "name = \"x\"\n[[list]]\nname = \"a\"\nfile = \"a\"\nformat = \"domains\"\n[[list]]\nname = \"a\"\nfile = \"b\"\nformat = \"domains\"\n",
            "defined twice",
        ),
        (
            "name = \"x\"\n[[list]]\nname = \"a\"\nfile = \"a\"\nformat = \"nope\"\n",
            "unknown variant",
        ),
        ("name = \"x\"\nextra = 1\n", "unknown field"),
    ] {
        let e = m(bad).expect_err(bad);
        assert!(e.message.contains(says), "{bad}: {e}");
    }
    // In a policy: a list is a file with a format, or from a list bundle.
    let cat = catalog();
    for bad in [
        "name='x'\ndefault='allow'\n[[list]]\nname='l'\nfrom='acme'\nfile='f.txt'\n",
        "name='x'\ndefault='allow'\n[[list]]\nname='l'\n",
        "name='x'\ndefault='allow'\n[[list]]\nname='l'\nfile='f.txt'\n",
    ] {
        let e = Policy::declared(Path::new("p.toml"), bad, &mut { none }, &cat).expect_err(bad);
        assert!(
            e.message.contains("needs either file and format, or from"),
            "{e}"
        );
        assert_eq!(e.line, 4, "{e}");
    }
    // A policy file drawing on a list bundle: checked, but not loaded
    // without it (the error is at its `from`).
    let t = "name='x'\ndefault='allow'\n[[list]]\nname='l'\nfrom='acme'\n[[rule]]\nname='r'\naction='block'\nlist=['l']\n";
    let d = Policy::declared(Path::new("p.toml"), t, &mut { none }, &cat).expect("checks");
    assert_eq!((d.rules, d.lists, d.needs.len()), (1, 1, 1));
    let e = Policy::parse(Path::new("p.toml"), t, Some(Path::new(".")), &cat)
        .expect_err("not installed");
    assert_eq!(e.line, 5, "{e}");
    assert!(e.message.contains("not installed"), "{e}");
}

/// `ask` rules: their terms, their defaults, every mistake located, and
/// what the verdict steps make of them (an ask is never a settled block,
/// and an answer turns it into the outcome it names).
#[test]
fn ask_rules() {
    const HEAD: &str = "name = \"x\"\ndefault = \"allow\"\n[[rule]]\nname = \"r\"\n";
    let p = parse(&format!(
        "{HEAD}action = \"ask\"\nblock = \"reject\"\nask = {{ default = \"allow\", timeout = 9 }}\ncidr = [\"203.0.113.0/24\"]\n"
    ))
    .expect("parses");
    assert_eq!(
        p.rules[0].action,
        Action::Ask(Ask {
            default_allow: true,
            timeout_s: 9,
            mode: BlockMode::Reject
        })
    );
    let p = parse(&format!(
        "{HEAD}action = \"ask\"\ncidr = [\"203.0.113.0/24\"]\n"
    ))
    .expect("parses");
    assert_eq!(
        p.rules[0].action,
        Action::Ask(Ask {
            default_allow: false,
            timeout_s: ASK_TIMEOUT_DEFAULT,
            mode: BlockMode::Drop
        })
    );
    for (body, says) in [
        (
            "action = \"block\"\nask = { timeout = 5 }\n",
            "only goes with action = \"ask\"",
        ),
        (
            "action = \"ask\"\nask = { timeout = 0 }\n",
            "1 to 600 seconds, not 0",
        ),
        ("action = \"ask\"\nask = { timeout = 601 }\n", "not 601"),
        (
            "action = \"ask\"\nask = { default = \"log\" }\n",
            "unknown variant `log`",
        ),
        (
            "action = \"ask\"\nask = { when = 1 }\n",
            "unknown field `when`",
        ),
    ] {
        let e = parse(&format!("{HEAD}{body}")).expect_err(body);
        let text = e.to_string();
        assert!(
            text.contains(says) && text.contains("p.toml:"),
            "{body}: {text}"
        );
    }
    let e = parse("name = \"x\"\ndefault = \"ask\"\n").expect_err("default ask");
    assert!(e.to_string().contains("must be 'allow' or 'block'"), "{e}");
    // An ask rule before a block: the SYN settles nothing while the ask
    // could still match (a name read from the payload) and be allowed.
    let intel = fixture_intel();
    let p = parse(&format!(
        "{HEAD}action = \"ask\"\ndomain = [\"example.org\"]\n[[rule]]\nname = \"b\"\naction = \"block\"\ncidr = [\"203.0.113.0/24\"]\n"
    ))
    .expect("parses");
    let f = Facts {
        dst: ip("203.0.113.5"),
        ..Facts::default()
    };
    assert!(p.settled_block(&intel, &f).is_none());
    let named = Facts {
        names: &["www.example.org"],
        ..f
    };
    let v = p.evaluate(&intel, &named);
    assert!(v.ask().is_some() && !v.is_block());
    let allowed = v.answer(true, Answered::Once);
    assert_eq!(
        (allowed.action, allowed.answered),
        (Action::Allow, Some(Answered::Once))
    );
    assert!(v.answer(false, Answered::Timeout).is_block());
    assert!(p.class_could_block(&intel, &named, &|v| v));
    assert!(!p.class_could_block(&intel, &named, &|v| v.answer(true, Answered::App)));
}
