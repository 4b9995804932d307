//! `geowall rules check|explain` run as a user would.

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
