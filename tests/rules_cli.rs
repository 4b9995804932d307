//! `geowall rules check|explain` run as a user would.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn geowall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geowall"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GEOWALL_WORLD")
        .output()
        .expect("geowall runs")
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

#[test]
fn agora_edge_is_blocked_via_the_vendor_layer() {
    let o = geowall(&[
        "rules",
        "explain",
        "--preset",
        "clubhouse",
        "104-166-161-75.edge.agora.io",
        "--traffic",
        "media",
        "--json",
    ]);
    let v = json(&o);
    assert_eq!(v["verdict"]["action"], "block");
    assert_eq!(v["verdict"]["layer"]["layer"], "vendor");
    assert_eq!(v["verdict"]["layer"]["country"], "CN");
    assert_eq!(v["jurisdiction"]["vendor"]["vendor_id"], "agora");
    assert_eq!(
        v["jurisdiction"]["vendor"]["evidence"]["domain"],
        "agora.io"
    );
    let text = geowall(&[
        "rules",
        "explain",
        "--preset",
        "clubhouse",
        "104-166-161-75.edge.agora.io",
        "--traffic",
        "media",
    ]);
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(
        s.contains("verdict: BLOCK") && s.contains("vendor layer (CN)") && s.contains("Agora"),
        "{s}"
    );
}

#[test]
fn alibaba_us_ping_is_blocked_via_network_and_owner() {
    let v = json(&geowall(&[
        "rules",
        "explain",
        "--preset",
        "clubhouse",
        "47.74.0.1",
        "--traffic",
        "ping",
        "--json",
    ]));
    assert_eq!(v["verdict"]["action"], "block");
    let layer = v["verdict"]["layer"]["layer"].as_str().unwrap_or("");
    assert!(layer == "network" || layer == "owner", "{v}");
    assert_eq!(v["jurisdiction"]["network"]["country"], "CN");
    assert_eq!(v["jurisdiction"]["owner"]["country"], "CN");
    assert_eq!(v["jurisdiction"]["owner"]["operator_id"], "alibaba");
    assert_eq!(v["jurisdiction"]["geo"]["geo-whois-asn-country"], "US");
    // Web to the same address is allowed by clubhouse.
    let v = json(&geowall(&[
        "rules",
        "explain",
        "--preset",
        "clubhouse",
        "47.74.0.1",
        "--traffic",
        "web",
        "--json",
    ]));
    assert_eq!(v["verdict"]["action"], "allow");
    assert_eq!(v["rules"][1]["failed"], "traffic");
}

#[test]
fn explain_with_a_policy_file_and_bad_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.toml");
    std::fs::write(&p, "name='mine'\ndefault='allow'\n[[rule]]\nname='no udp 8130'\naction='block'\nprotocol=['udp']\nport=[8130]\n").expect("write");
    let v = json(&geowall(&[
        "rules",
        "explain",
        "--policy",
        p.to_str().expect("utf8"),
        "198.51.100.1",
        "--proto",
        "udp",
        "--port",
        "8130",
        "--json",
    ]));
    assert_eq!(v["verdict"]["rule"], "no udp 8130");
    let o = geowall(&["rules", "explain", "not a target!"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("IP address or a domain"));
    let o = geowall(&["rules", "explain", "--preset", "nope", "1.1.1.1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("clubhouse"));
}

#[test]
fn check_passes_on_the_shipped_rules_and_locates_errors() {
    let o = geowall(&["rules", "check", "rules"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for f in [
        "default.toml",
        "clubhouse.toml",
        "strict.toml",
        "vendors.toml",
        "operators.toml",
    ] {
        assert!(out.contains(f), "{f} checked: {out}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("good.toml"), "name='g'\ndefault='allow'\n").expect("write");
    std::fs::write(
        dir.path().join("bad.toml"),
        "name='b'\ndefault='allow'\n[[rule]]\nname='r'\naction='block'\nvendor=['agoraa']\n",
    )
    .expect("write");
    let o = geowall(&["rules", "check", dir.path().to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml:6:9: unknown vendor 'agoraa'"),
        "{err}"
    );
    assert!(err.contains("hint: vendors in the catalog: agora"), "{err}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ok:"),
        "the good file is still reported"
    );
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules/presets/strict.toml")
            .exists()
    );
}

#[test]
fn bundle_keygen_build_sign_verify_and_rejections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |p: &str| dir.path().join(p).to_str().expect("utf8").to_owned();
    std::fs::create_dir(dir.path().join("r")).expect("mkdir");
    std::fs::write(
        dir.path().join("r/policy.toml"),
        "name='mine'\ndefault='allow'\n[[rule]]\nname='agora'\naction='block'\nvendor=['agora']\n",
    )
    .expect("write");
    assert!(
        geowall(&["rules", "keygen", "--out", &d("k")])
            .status
            .success()
    );
    assert!(
        geowall(&["rules", "keygen", "--out", &d("other")])
            .status
            .success()
    );
    let o = geowall(&["rules", "keygen", "--out", &d("k")]);
    assert!(!o.status.success(), "never overwrites a secret key");
    assert!(
        geowall(&[
            "rules",
            "build",
            &d("r"),
            "-o",
            &d("b.gwb"),
            "--sequence",
            "3"
        ])
        .status
        .success()
    );
    let verify = |extra: &[&str]| {
        let mut args = vec!["rules", "verify"];
        args.extend_from_slice(extra);
        let o = geowall(&args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = verify(&[&d("b.gwb"), "--pubkey", &d("k.pub")]);
    assert!(code == Some(1) && err.contains("not signed"), "{err}");
    assert!(
        geowall(&["rules", "sign", &d("b.gwb"), "--key", &d("k.key")])
            .status
            .success()
    );
    let (code, _) = verify(&[&d("b.gwb"), "--pubkey", &d("k.pub")]);
    assert_eq!(code, Some(0));
    let (code, err) = verify(&[&d("b.gwb"), "--pubkey", &d("other.pub")]);
    assert!(code == Some(1) && err.contains("unknown key"), "{err}");
    let (code, err) = verify(&[
        &d("b.gwb"),
        "--pubkey",
        &d("k.pub"),
        "--installed-sequence",
        "3",
    ]);
    assert!(code == Some(1) && err.contains("rollback"), "{err}");
    let mut bytes = std::fs::read(d("b.gwb")).expect("read");
    let n = bytes.len();
    bytes[n - 80] ^= 1;
    std::fs::write(d("t.gwb"), &bytes).expect("write");
    let (code, err) = verify(&[&d("t.gwb"), "--pubkey", &d("k.pub")]);
    assert!(code == Some(1) && err.contains("altered"), "{err}");
    std::fs::write(d("c.gwb"), &bytes[..n / 2]).expect("write");
    let (code, err) = verify(&[&d("c.gwb"), "--pubkey", &d("k.pub")]);
    assert!(code == Some(1) && err.contains("truncated"), "{err}");
    assert!(
        geowall(&[
            "rules",
            "build",
            &d("r"),
            "-o",
            &d("e.gwb"),
            "--sequence",
            "4",
            "--expires-in-days",
            "0",
            "--key",
            &d("k.key")
        ])
        .status
        .success()
    );
    let (code, err) = verify(&[&d("e.gwb"), "--pubkey", &d("k.pub")]);
    assert!(code == Some(1) && err.contains("expired"), "{err}");
}

/// The trust state outlives the process: with `--state-dir`, a bundle
/// older than one accepted before is refused after a restart too, and the
/// newer rules stay in force (said loudly); the very bundle accepted
/// before is accepted again; without a state directory the older bundle
/// would be taken.
#[test]
fn rollback_protection_survives_a_restart() {
    use geowall::policy::bundle;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = bundle::SigningKey::from_bytes(&[5; 32]);
    let pubkey = dir.path().join("key.pub");
    std::fs::write(
        &pubkey,
        format!("{}\n", bundle::key_hex(key.verifying_key().as_bytes())),
    )
    .expect("pubkey");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let make = |seq: u64, policy: &str| {
        let src = dir.path().join(format!("src{seq}"));
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("policy.toml"), policy).expect("policy");
        let b = bundle::sign(
            &bundle::build(&src, seq, now - 60, now + 3_600).expect("build"),
            &key,
        )
        .expect("sign");
        let path = dir.path().join(format!("b{seq}.gwb"));
        std::fs::write(&path, b).expect("bundle");
        path
    };
    let strict = make(
        11,
        "name = 'no-cn'\ndefault = 'allow'\n[[rule]]\nname = 'no CN'\naction = 'block'\njurisdiction = { countries = ['CN'] }\n",
    );
    let open = make(10, "name = 'open'\ndefault = 'allow'\n");
    // One datagram to a CN address of the shipped world.
    let mut ip = vec![0x45, 0, 0, 33, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&[192, 0, 2, 10, 112, 126, 96, 46]);
    ip.extend_from_slice(&[
        0x9c, 0x40, 0x13, 0x88, 0, 13, 0, 0, b'x', b'y', b'z', b'!', b'?',
    ]);
    let mut pcap = Vec::new();
    pcap.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    pcap.extend_from_slice(&[
        2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 101, 0, 0, 0,
    ]);
    pcap.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    pcap.extend_from_slice(&0u32.to_le_bytes());
    pcap.extend_from_slice(&(ip.len() as u32).to_le_bytes());
    pcap.extend_from_slice(&(ip.len() as u32).to_le_bytes());
    pcap.extend_from_slice(&ip);
    let cap = dir.path().join("one.pcap");
    std::fs::write(&cap, pcap).expect("pcap");
    let state = dir.path().join("state");
    let audit = |b: &Path, with_state: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_geowall"));
        c.args(["audit", "--json"])
            .arg(&cap)
            .arg("--bundle")
            .arg(b)
            .arg("--pubkey")
            .arg(&pubkey);
        if with_state {
            c.arg("--state-dir").arg(&state);
        }
        let o = c.output().expect("geowall runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value =
            serde_json::from_slice(o.stdout.split(|b| *b == b'\n').next().expect("a flow"))
                .expect("json");
        (
            v["verdict"]["action"].as_str().unwrap_or("?").to_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (v, err) = audit(&strict, true);
    assert_eq!(v, "block");
    assert!(!err.contains("WARNING"), "{err}");
    // A later start with the older bundle: refused, the newer one decides.
    let (v, err) = audit(&open, true);
    assert_eq!(v, "block", "the rules of bundle 11 stay");
    assert!(
        err.contains("WARNING") && err.contains("rollback") && err.contains("sequence 11"),
        "{err}"
    );
    // The bundle accepted before is accepted again, quietly.
    let (v, err) = audit(&strict, true);
    assert_eq!(v, "block");
    assert!(!err.contains("WARNING"), "{err}");
    // Without the state directory the older bundle would have been taken.
    assert_eq!(audit(&open, false).0, "allow");
}

/// A user with the binary alone can see what the presets are and read
/// their files: `rules list` names each preset and its rules in order,
/// `rules show` prints the very file the preset is compiled from (it
/// checks clean), and `rules explain` points at `rules show`, not at a
/// source path.
#[test]
fn the_presets_can_be_listed_and_read_without_the_source() {
    let o = geowall(&["rules", "list"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for preset in ["default", "clubhouse", "strict"] {
        assert!(
            s.contains(&format!("\n{preset}: ")) || s.starts_with(&format!("{preset}: ")),
            "{s}"
        );
    }
    assert!(
        s.contains("2. block  no pings or media to PRC jurisdiction"),
        "{s}"
    );
    // The catalogs too: each vendor with its evidence and how it is
    // recognised, each operator group, and what the owner layer covers.
    assert!(
        s.contains("  agora            CN Agora, Inc. (Shengwang)")
            && s.contains("recognised by 8 domains; AS140899; protocol sd-rtn"),
        "{s}"
    );
    assert!(
        s.contains("  china-telecom ") && s.contains("the owner layer covers "),
        "{s}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for preset in ["default", "clubhouse", "strict"] {
        let o = geowall(&["rules", "show", preset]);
        assert!(o.status.success());
        let shipped = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("rules/presets/{preset}.toml")),
        )
        .expect("preset file");
        assert_eq!(o.stdout, shipped, "{preset}");
        let copy = dir.path().join(format!("{preset}.toml"));
        std::fs::write(&copy, &o.stdout).expect("write");
        let c = geowall(&["rules", "check", copy.to_str().expect("utf8")]);
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    }
    let e = geowall(&["rules", "explain", "--preset", "strict", "198.51.100.10"]);
    let s = String::from_utf8_lossy(&e.stdout);
    assert!(
        s.contains("geowall rules show strict") && !s.contains("rules/presets"),
        "{s}"
    );
}

/// The reference of the rule language (docs/rules.md) against the parser:
/// in every section, the keys listed are exactly those the parser takes,
/// and every value listed for a key is one the parser takes while every
/// value the parser takes is named in the row; its example policy checks.
#[test]
fn the_rule_reference_matches_the_parser() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rules.md"))
        .expect("docs/rules.md");
    let dir = tempfile::tempdir().expect("tempdir");
    // What the parser says about a policy text (an error, or "").
    let check = |text: &str| {
        let p = dir.path().join("probe.toml");
        std::fs::write(&p, text).expect("write");
        let o = geowall(&["rules", "check", p.to_str().expect("utf-8")]);
        let mut all = String::from_utf8_lossy(&o.stdout).into_owned();
        all.push_str(&String::from_utf8_lossy(&o.stderr));
        if o.status.success() {
            String::new()
        } else {
            all
        }
    };
    // The backticked words after "expected" in an error.
    let expected = |err: &str| -> Vec<String> {
        let Some(i) = err.find("expected") else {
            return Vec::new();
        };
        let tail = err[i..].lines().next().unwrap_or("");
        tail.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    const HEAD: &str = "name = \"x\"\ndefault = \"allow\"\n";
    const RULE: &str = "[[rule]]\nname = \"r\"\naction = \"block\"\n";
    // Per section: the text with a key set to `value` (TOML).
    type Probe<'a> = &'a dyn Fn(&str, &str) -> String;
    let sections: [(&str, Probe<'_>); 6] = [
        ("## Top level", &|k: &str, v: &str| {
            if k == "default" {
                format!("name = \"x\"\ndefault = {v}\n")
            } else {
                format!("name = \"x\"\ndefault = \"block\"\n{k} = {v}\n")
            }
        }),
        ("## `[[list]]`", &|k: &str, v: &str| {
            format!("{HEAD}[[list]]\nname = \"l\"\nfile = \"f\"\n{k} = {v}\n")
        }),
        ("## `[[rule]]`", &|k: &str, v: &str| {
            if k == "action" {
                format!("{HEAD}[[rule]]\nname = \"r\"\naction = {v}\n")
            } else {
                format!("{HEAD}{RULE}{k} = {v}\n")
            }
        }),
        ("## `ask`", &|k: &str, v: &str| {
            format!("{HEAD}[[rule]]\nname = \"r\"\naction = \"ask\"\nask = {{ {k} = {v} }}\n")
        }),
        ("## `jurisdiction`", &|k: &str, v: &str| {
            format!("{HEAD}{RULE}jurisdiction = {{ countries = [\"CN\"], {k} = {v} }}\n")
        }),
        ("## `[dns]`", &|k: &str, v: &str| {
            format!("{HEAD}[dns]\n{k} = {v}\n")
        }),
    ];
    for (heading, probe) in sections {
        let body = doc
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("docs/rules.md has no {heading}"));
        let body = body.split("\n## ").next().unwrap_or("");
        let rows: Vec<Vec<&str>> = body
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| l.split(" | ").collect())
            .collect();
        let keys: Vec<String> = rows
            .iter()
            .map(|r| r[0].trim_start_matches("| ").trim_matches('`').to_owned())
            .collect();
        // The keys: exactly those the parser names for an unknown one.
        let mut taken = expected(&check(&probe("zz_unknown", "1")));
        let mut listed = keys.clone();
        taken.sort();
        listed.sort();
        assert_eq!(listed, taken, "keys of {heading}");
        // The values of keys the parser reads as names.
        for (row, key) in rows.iter().zip(&keys) {
            let values = row[1];
            let named: Vec<&str> = values.split(", ").map(|v| v.trim_matches('`')).collect();
            if !values
                .split(", ")
                .all(|v| v.starts_with('`') && v.ends_with('`'))
                || named == ["true", "false"]
            {
                continue;
            }
            let mut err = check(&probe(key, "\"zz_unknown\""));
            if err.contains("invalid type") {
                err = check(&probe(key, "[\"zz_unknown\"]"));
            }
            let accepted = expected(&err);
            assert!(!accepted.is_empty(), "{heading} {key}: {err}");
            for v in &named {
                assert!(
                    accepted.iter().any(|a| a == v),
                    "{heading} {key}: `{v}` is not taken: {err}"
                );
            }
            let row_text = row.join(" ");
            for a in &accepted {
                assert!(
                    row_text.contains(&format!("`{a}`")),
                    "{heading} {key}: `{a}` is taken but not documented"
                );
            }
        }
    }
    // The example at the top checks (its list file made for it).
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("an example");
    std::fs::create_dir_all(dir.path().join("lists")).expect("mkdir");
    std::fs::write(
        dir.path().join("lists/trackers.txt"),
        "0.0.0.0 tracker.example\n",
    )
    .expect("list");
    assert_eq!(check(example), "", "the example policy checks");
}

#[test]
fn explain_judges_each_peer_of_a_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = support::test_world(dir.path());
    let explain = |peer: &str, json: bool| {
        let mut args = vec![
            "rules",
            "explain",
            "--preset",
            "clubhouse",
            "--world",
            world.to_str().expect("utf8"),
            "--traffic",
            "media",
            "--peer",
            "198.51.100.20",
            "--peer",
            peer,
            "198.51.100.7",
        ];
        if json {
            args.push("--json");
        }
        geowall(&args)
    };
    let v = json(&explain("203.0.113.10:5004", true));
    assert_eq!(v["verdict"]["action"], "block");
    assert_eq!(v["verdict"]["peer"], "203.0.113.10:5004");
    assert_eq!(v["peers"][1]["jurisdiction"]["network"]["country"], "CN");
    assert_eq!(v["jurisdiction"]["network"]["country"], "US");
    let text = String::from_utf8_lossy(&explain("203.0.113.10:5004", false).stdout).into_owned();
    assert!(
        text.contains("peer 203.0.113.10:5004 (through the relay):")
            && text.contains("for peer 203.0.113.10:5004"),
        "{text}"
    );
    let v = json(&explain("198.51.100.30", true));
    assert_eq!(v["verdict"]["action"], "allow");
    let o = explain("not-an-address", false);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--peer 'not-an-address'"));
}

/// Writes a rules directory: a policy with a hosts list, a CIDR list, an
/// ASN list and a sing-box rule-set, and the rule `extra`.
fn rules_dir(dir: &Path, hosts: &str, cidrs: &str, asns: &str, singbox: &str, extra: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    let policy = format!(
        "name = \"lists\"\ndefault = \"allow\"\n\
[[list]]\nname = \"ads\"\nfile = \"ads.hosts\"\nformat = \"hosts\"\n\
[[list]]\nname = \"nets\"\nfile = \"nets.txt\"\nformat = \"cidr\"\n\
[[list]]\nname = \"ases\"\nfile = \"ases.txt\"\nformat = \"asn\"\n\
[[list]]\nname = \"sb\"\nfile = \"sb.json\"\nformat = \"sing-box\"\n\
[[rule]]\nname = \"lists\"\naction = \"block\"\nlist = [\"ads\", \"nets\", \"ases\", \"sb\"]\n{extra}"
    );
    std::fs::write(dir.join("policy.toml"), policy).expect("policy");
    std::fs::write(dir.join("ads.hosts"), hosts).expect("hosts");
    std::fs::write(dir.join("nets.txt"), cidrs).expect("cidrs");
    std::fs::write(dir.join("ases.txt"), asns).expect("asns");
    std::fs::write(dir.join("sb.json"), singbox).expect("sing-box");
}

#[test]
fn diff_shows_what_changed_in_rules_lists_and_catalogs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    rules_dir(
        &old,
        "# ads\n0.0.0.0 ads.example tracker.example\n",
        "203.0.113.0/24\n",
        "AS64500\n",
        r#"{"version": 2, "rules": [{"domain_suffix": ["edge.example"]}]}"#,
        "[[rule]]\nname = \"media\"\naction = \"block\"\ntraffic = [\"media\"]\n",
    );
    rules_dir(
        &new,
        "0.0.0.0 ads.example\n0.0.0.0 pixel.example\n",
        "203.0.113.0/24\n198.51.100.0/25\n",
        "64500\nAS64501\n",
        r#"{"version": 2, "rules": [{"domain_suffix": ["edge.example", "relay.example"]}]}"#,
        "[[rule]]\nname = \"media\"\naction = \"block\"\ntraffic = [\"media\", \"ping\"]\n\
[[rule]]\nname = \"new rule\"\naction = \"log\"\nport = [443]\n",
    );
    // The new directory brings its own vendor catalog: Agora gains a
    // domain, and a vendor is added.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/vendors/vendors.toml");
    let text = std::fs::read_to_string(shipped).expect("vendors");
    let text = text.replacen(
        "  \"agora.io\",\n",
        "  \"agora.io\",\n  \"agora-new.example\",\n",
        1,
    ) + "\n[[vendor]]\nid = \"acme\"\nname = \"Acme RTC\"\njurisdiction = \"CN\"\nevidence = \"test\"\ndomains = [\"acme.example\"]\n";
    std::fs::create_dir_all(new.join("vendors")).expect("dir");
    std::fs::write(new.join("vendors/vendors.toml"), text).expect("write");
    // The old side as a signed bundle file, the new as a directory.
    let key = dir.path().join("k");
    assert!(
        geowall(&["rules", "keygen", "--out", key.to_str().expect("utf8")])
            .status
            .success()
    );
    let old_b = dir.path().join("old.gwb");
    let o = geowall(&[
        "rules",
        "build",
        old.to_str().expect("utf8"),
        "-o",
        old_b.to_str().expect("utf8"),
        "--sequence",
        "4",
        "--key",
        dir.path().join("k.key").to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = json(&geowall(&[
        "rules",
        "diff",
        old_b.to_str().expect("utf8"),
        new.to_str().expect("utf8"),
        "--json",
    ]));
    assert_eq!(d["sequence"][0], 4);
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("str").to_owned())
            .collect()
    };
    // hosts: exact names.
    assert_eq!(strs(&d["lists"]["ads.hosts"]["added"]), ["=pixel.example"]);
    assert_eq!(
        strs(&d["lists"]["ads.hosts"]["removed"]),
        ["=tracker.example"]
    );
    assert_eq!(strs(&d["lists"]["nets.txt"]["added"]), ["198.51.100.0/25"]);
    // "64500" and "AS64500" are the same entry.
    assert_eq!(strs(&d["lists"]["ases.txt"]["added"]), ["AS64501"]);
    assert!(
        d["lists"]["ases.txt"]["removed"]
            .as_array()
            .expect("a")
            .is_empty()
    );
    assert_eq!(strs(&d["lists"]["sb.json"]["added"]), ["relay.example"]);
    assert_eq!(strs(&d["rules"]["added"]), ["new rule"]);
    assert_eq!(strs(&d["rules_changed"]), ["media"]);
    assert_eq!(strs(&d["vendors"]["added"]), ["acme"]);
    assert_eq!(d["vendors_changed"][0]["id"], "agora");
    assert_eq!(
        strs(&d["vendors_changed"][0]["domains"]["added"]),
        ["agora-new.example"]
    );
    assert!(d["operators"]["added"].as_array().expect("a").is_empty());
    // The text form, and no changes against itself.
    let o = geowall(&[
        "rules",
        "diff",
        old_b.to_str().expect("utf8"),
        new.to_str().expect("utf8"),
    ]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("list ads.hosts: +1 -1")
            && t.contains("  + =pixel.example")
            && t.contains("  ~ rule media")
            && t.contains("  + vendor acme")
            && t.contains("      + domain agora-new.example"),
        "{t}"
    );
    let o = geowall(&[
        "rules",
        "diff",
        old.to_str().expect("utf8"),
        old_b.to_str().expect("utf8"),
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no changes"));
    // Not a bundle: a clear error, status 1.
    let junk = dir.path().join("junk.gwb");
    std::fs::write(&junk, b"junk").expect("write");
    let o = geowall(&[
        "rules",
        "diff",
        junk.to_str().expect("utf8"),
        old_b.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("junk.gwb: not a readable rules bundle"));
}

/// `rules build SRC -o OUT --sequence SEQ --key KEY`, which must succeed.
fn build_signed(src: &Path, out: &Path, seq: &str, key: &Path) {
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let o = geowall(&[
        "rules",
        "build",
        &p(src),
        "-o",
        &p(out),
        "--sequence",
        seq,
        "--key",
        &p(key),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Key pairs `names` (NAME.key, NAME.pub) and a small rules directory
/// `src` in `dir`; the directory.
fn keys_and_rules(dir: &Path, names: &[&str]) -> std::path::PathBuf {
    for k in names {
        let prefix = dir.join(k);
        let o = geowall(&["rules", "keygen", "--out", prefix.to_str().expect("utf8")]);
        assert!(o.status.success());
    }
    let src = dir.join("src");
    rules_dir(
        &src,
        "0.0.0.0 ads.example\n",
        "203.0.113.0/24\n",
        "AS64500\n",
        r#"{"version": 2, "rules": []}"#,
        "",
    );
    src
}

#[test]
fn publish_writes_what_a_static_host_serves_and_never_goes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = keys_and_rules(dir.path(), &["a", "b"]);
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let build = |seq: &str, key: &str| {
        let out = dir.path().join(format!("r{seq}{key}.gwb"));
        build_signed(&src, &out, seq, &dir.path().join(format!("{key}.key")));
        out
    };
    let site = dir.path().join("site");
    let publish = |b: &Path, key: &str| {
        geowall(&[
            "rules",
            "publish",
            &p(b),
            &p(&site),
            "--key",
            &p(&dir.path().join(format!("{key}.key"))),
        ])
    };
    let o = publish(&build("5", "a"), "a");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["rules-5.gwb", "rules.gwb", "index.json"] {
        assert!(site.join(f).is_file(), "{f}");
    }
    let index = std::fs::read(site.join("index.json")).expect("index");
    let outer: Value = serde_json::from_slice(&index).expect("json");
    let inner: Value = serde_json::from_str(outer["index"].as_str().expect("index")).expect("json");
    assert_eq!(inner["sequence"], 5);
    assert_eq!(inner["file"], "rules-5.gwb");
    assert_eq!(outer["signature"].as_str().map(str::len), Some(128));
    // The published bundle verifies as a device would.
    let o = geowall(&[
        "rules",
        "verify",
        &p(&site.join("rules.gwb")),
        "--pubkey",
        &p(&dir.path().join("a.pub")),
    ]);
    assert!(o.status.success());
    // Not newer: refused, the site unchanged.
    let o = publish(&build("5", "a"), "a");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("publishes sequence 5"));
    // Signed by another key than the one given: refused.
    let o = publish(&build("6", "b"), "a");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        std::fs::read(site.join("index.json")).expect("index"),
        index
    );
    // Newer: published beside the old one.
    assert!(publish(&build("6", "a"), "a").status.success());
    assert!(site.join("rules-5.gwb").is_file() && site.join("rules-6.gwb").is_file());
}

#[test]
fn a_key_rotation_endorsed_by_the_old_key_verifies_with_the_old_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let src = keys_and_rules(dir.path(), &["old", "new"]);
    let build = |name: &str| {
        let out = dir.path().join(name);
        build_signed(&src, &out, "2", &dir.path().join("new.key"));
        out
    };
    let verify = |b: &Path| {
        geowall(&[
            "rules",
            "verify",
            &p(b),
            "--pubkey",
            &p(&dir.path().join("old.pub")),
        ])
    };
    // Signed by the new key alone: devices trusting the old key refuse it.
    let plain = build("plain.gwb");
    let o = verify(&plain);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("key"));
    // With the old key's endorsement in the directory: accepted.
    std::fs::create_dir(src.join("endorsements")).expect("mkdir");
    let o = geowall(&[
        "rules",
        "endorse",
        &p(&dir.path().join("new.pub")),
        "--key",
        &p(&dir.path().join("old.key")),
        "-o",
        &p(&src.join("endorsements/new.json")),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rotated = build("rotated.gwb");
    let o = verify(&rotated);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A malformed endorsement is refused when building.
    std::fs::write(src.join("endorsements/bad.json"), b"{}").expect("write");
    let o = geowall(&[
        "rules",
        "build",
        &p(&src),
        "-o",
        &p(&dir.path().join("x.gwb")),
        "--sequence",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an endorsement"));
}

/// A list bundle directory: list bundle `acme` with an adblock list and a
/// sing-box rule set.
fn acme_dir(dir: &Path, adblock: &str, singbox_cidr: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    let w = |n: &str, t: &str| std::fs::write(dir.join(n), t).expect("write");
    w(
        "lists.toml",
        "name = \"acme\"\ndescription = \"test lists\"\n\n[[list]]\nname = \"ads\"\nfile = \"ads.txt\"\nformat = \"adblock\"\n\n[[list]]\nname = \"relays\"\nfile = \"relays.json\"\nformat = \"sing-box\"\n",
    );
    w("ads.txt", adblock);
    w(
        "relays.json",
        &format!(r#"{{"version": 2, "rules": [{{"ip_cidr": ["{singbox_cidr}"]}}]}}"#),
    );
}

#[test]
fn list_bundles_are_built_checked_verified_diffed_and_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    keys_and_rules(dir.path(), &["l", "r"]);
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let (v1, v2) = (dir.path().join("acme1"), dir.path().join("acme2"));
    acme_dir(&v1, "! ads\n||ads.example^\n", "203.0.113.0/24");
    acme_dir(
        &v2,
        "! ads\n||ads.example^\n||more-ads.example^\n",
        "192.0.2.0/24",
    );
    // A policy drawing on it, with a list of its own.
    let pol = dir.path().join("pol");
    std::fs::create_dir_all(&pol).expect("dir");
    std::fs::write(
        pol.join("policy.toml"),
        "name = \"on-acme\"\ndefault = \"allow\"\n[[list]]\nname = \"ads\"\nfrom = \"acme\"\n[[list]]\nname = \"relays\"\nfrom = \"acme\"\n[[rule]]\nname = \"acme\"\naction = \"block\"\nlist = [\"ads\", \"relays\"]\n",
    )
    .expect("policy");
    let o = geowall(&["rules", "check", &p(&v1), &p(&pol)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("list bundle 'acme': ads, 1 entries; relays, 1 entries"),
        "{out}"
    );
    assert!(
        out.contains("from list bundles (a device must subscribe to them): acme/ads, acme/relays"),
        "{out}"
    );
    // Build both, signed by different maintainers.
    let (lb1, lb2, pb) = (
        dir.path().join("l1.gwb"),
        dir.path().join("l2.gwb"),
        dir.path().join("p.gwb"),
    );
    build_signed(&v1, &lb1, "1", &dir.path().join("l.key"));
    build_signed(&v2, &lb2, "2", &dir.path().join("l.key"));
    build_signed(&pol, &pb, "1", &dir.path().join("r.key"));
    let o = geowall(&[
        "rules",
        "verify",
        &p(&lb1),
        "--pubkey",
        &p(&dir.path().join("l.pub")),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && out.contains("list bundle 'acme' (ads: 1 entries, relays: 1 entries)"),
        "{out}"
    );
    let o = geowall(&[
        "rules",
        "verify",
        &p(&pb),
        "--pubkey",
        &p(&dir.path().join("r.pub")),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("needs lists from list bundles (the device's --subscribe-list): acme/ads, acme/relays"), "{out}");
    // The maintainer's review: per list file.
    let o = geowall(&["rules", "diff", &p(&lb1), &p(&lb2)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for line in [
        "sequence 1 -> 2",
        "+ more-ads.example",
        "+ 192.0.2.0/24",
        "- 203.0.113.0/24",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let o = geowall(&["rules", "diff", &p(&lb1), &p(&pb)]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a list bundle is not diffed with a rules bundle"
    );
    // Published under its own names beside a rules bundle.
    let site = dir.path().join("site");
    for (b, k) in [(&lb1, "l"), (&pb, "r")] {
        let o = geowall(&[
            "rules",
            "publish",
            &p(b),
            &p(&site),
            "--key",
            &p(&dir.path().join(format!("{k}.key"))),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for f in [
        "lists-1.gwb",
        "lists.gwb",
        "lists-index.json",
        "rules-1.gwb",
        "index.json",
    ] {
        assert!(site.join(f).is_file(), "{f}");
    }
    // A directory with both files, or neither, is refused with the reason.
    std::fs::copy(pol.join("policy.toml"), v1.join("policy.toml")).expect("copy");
    let o = geowall(&[
        "rules",
        "build",
        &p(&v1),
        "-o",
        &p(&dir.path().join("x.gwb")),
        "--sequence",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has both policy.toml"));
    // A device-side run cannot start on the policy without the lists.
    let o = geowall(&[
        "rules",
        "explain",
        "--policy",
        &p(&pol.join("policy.toml")),
        "ads.example",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("list bundle 'acme' is not installed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // With the list bundle given (a directory or a bundle), explain judges
    // with its lists: a listed name is blocked, another is not.
    for lists in [&v2, &lb1] {
        for (target, verdict) in [
            ("x.ads.example", "verdict: BLOCK (drop) by rule 1 \"acme\""),
            ("news.example", "verdict: ALLOW"),
        ] {
            let o = geowall(&[
                "rules",
                "explain",
                "--policy",
                &p(&pol.join("policy.toml")),
                "--lists",
                &p(lists),
                target,
            ]);
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(out.contains(verdict), "{target}: {out}");
        }
    }
}

#[test]
fn explain_names_the_vendor_by_its_signature_and_refuses_an_unknown_protocol() {
    let o = geowall(&[
        "rules",
        "explain",
        "--preset",
        "clubhouse",
        "192.0.2.10",
        "--proto",
        "udp",
        "--traffic",
        "media",
        "--protocol",
        "SD-RTN",
        "--json",
    ]);
    let v = json(&o);
    assert_eq!(v["jurisdiction"]["vendor"]["vendor_id"], "agora", "{v}");
    let bad = geowall(&["rules", "explain", "192.0.2.10", "--protocol", "sdrtn"]);
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        e.contains("sdrtn") && e.contains("expected one of") && e.contains("wireguard"),
        "{e}"
    );
}
