//! The `geowall lookup` and `geowall world` commands, run as a user would:
//! the real binary, the shipped database, and a fixture database built from
//! `tests/fixtures/world.csv`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn geowall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geowall"))
        .args(args)
        .env_remove("GEOWALL_WORLD")
        .output()
        .expect("geowall runs")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn fixture_world(dir: &Path) -> PathBuf {
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv");
    let out = dir.join("test-world.gwdb");
    let o = geowall(&[
        "world",
        "build",
        "--from",
        csv.to_str().expect("utf8 path"),
        "--out",
        out.to_str().expect("utf8 path"),
    ]);
    assert!(
        o.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn shipped_database_answers_the_reference_addresses_offline() {
    let o = geowall(&[
        "lookup",
        "112.126.96.46",
        "47.74.0.1",
        "114.114.114.114",
        "2400:3200::1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_lines(&o);
    assert_eq!(v.len(), 4);
    // Alibaba Cloud Beijing: geo CN, AS37963, network CN.
    assert_eq!(v[0]["ip"], "112.126.96.46");
    assert_eq!(v[0]["geo_country"], "CN");
    assert_eq!(v[0]["asn"], 37963);
    assert_eq!(v[0]["network_country"], "CN");
    // Alibaba US: a US address whose AS is registered in CN.
    assert_eq!(v[1]["asn"], 45102);
    assert_eq!(v[1]["network_country"], "CN");
    assert!(
        v[1]["as_org"]
            .as_str()
            .is_some_and(|s| s.contains("Alibaba"))
    );
    // 114DNS: geo CN, announced by Zenlayer (AS21859), registered US.
    assert_eq!(v[2]["geo_country"], "CN");
    assert_eq!(v[2]["asn"], 21859);
    assert_ne!(v[2]["network_country"], "CN");
    // IPv6 answered from IPv6 data.
    assert_eq!(v[3]["geo_country"], "CN");
    assert!(v[3]["asn"].is_u64());
    for r in &v {
        for k in [
            "ip",
            "geo_country",
            "geo_sources",
            "disputed",
            "asn",
            "as_org",
            "network_country",
        ] {
            assert!(r.get(k).is_some(), "field {k} present in {r}");
        }
    }
}

#[test]
fn shipped_database_blanks_special_purpose_addresses() {
    let o = geowall(&[
        "lookup",
        "--json",
        "192.168.1.1",
        "2001:db8::1",
        "127.0.0.1",
    ]);
    assert!(o.status.success());
    for r in json_lines(&o) {
        assert_eq!(r["geo_country"], Value::Null, "{r}");
        assert_eq!(r["asn"], Value::Null, "{r}");
        assert_eq!(r["network_country"], Value::Null, "{r}");
    }
}

#[test]
fn fixture_world_resolves_the_test_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = fixture_world(dir.path());
    let o = geowall(&[
        "lookup",
        "--json",
        "--world",
        w.to_str().expect("utf8"),
        "203.0.113.0",
        "203.0.113.127",
        "203.0.113.128",
        "192.0.2.5",
        "192.0.2.150",
        "192.0.2.151",
        "198.18.0.9",
        "2001:db8:86::1",
        "2001:db8:1::1",
        "2001:db8:1:0:8000::1",
        "::ffff:203.0.113.200",
        "192.0.2.144",
        "198.51.100.255",
        "198.19.0.1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_lines(&o);
    let geo = |i: usize| v[i]["geo_country"].clone();
    let net = |i: usize| v[i]["network_country"].clone();
    assert_eq!(
        (geo(0), net(0), v[0]["asn"].clone()),
        ("CN".into(), "CN".into(), 64500.into())
    );
    assert_eq!(geo(1), "CN", "last address of 203.0.113.0/25");
    assert_eq!(
        (geo(2), net(2)),
        ("HK".into(), "CN".into()),
        "first of the /25 after"
    );
    assert_eq!(
        (geo(3), net(3)),
        ("US".into(), "CN".into()),
        "PRC cloud US region"
    );
    // 192.0.2.150: source 1 says FR (nested /32), source 2 says DE: disputed.
    assert_eq!(v[4]["disputed"], true);
    assert_eq!(geo(4), Value::Null);
    assert_eq!(v[4]["geo_sources"]["geo-whois-asn-country"], "FR");
    assert_eq!(v[4]["geo_sources"]["ipfire-location"], "DE");
    assert_eq!(
        v[5]["geo_sources"]["geo-whois-asn-country"], "NL",
        "back in the /28"
    );
    assert_eq!(v[6]["disputed"], true);
    assert_eq!(geo(7), "CN");
    assert_eq!(geo(8), "US");
    assert_eq!(
        (geo(9), net(9)),
        ("HK".into(), "CN".into()),
        "range finer than /64"
    );
    assert_eq!(v[10]["looked_up"], "203.0.113.200");
    assert_eq!(geo(10), "HK");
    assert_eq!(v[11]["geo_sources"]["geo-whois-asn-country"], "NL");
    assert_eq!(geo(12), "US", "last address of 198.51.100.0/24");
    // A gap: nothing known, everything null.
    assert_eq!(
        (geo(13), net(13), v[13]["asn"].clone()),
        (Value::Null, Value::Null, Value::Null)
    );
}

#[test]
fn bad_addresses_are_reported_and_the_rest_still_answered() {
    let o = geowall(&[
        "lookup",
        "--json",
        "1.1.1.1",
        "not-an-ip",
        "300.1.1.1",
        "8.8.8.8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_lines(&o).len(), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("'not-an-ip' is not an IP address"), "{err}");
    assert!(err.contains("'300.1.1.1'"), "{err}");
}

#[test]
fn reads_addresses_from_stdin() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_geowall"))
        .args(["lookup", "--json", "-"])
        .env_remove("GEOWALL_WORLD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"1.1.1.1 8.8.8.8\n\n2400:3200::1\n")
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success());
    assert_eq!(json_lines(&o).len(), 3);
}

#[test]
fn table_output_is_readable() {
    let o = geowall(&["lookup", "47.74.0.1"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    let mut lines = s.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.contains("GEO") && h.contains("NETWORK"))
    );
    let row = lines.next().expect("a row");
    assert!(
        row.contains("47.74.0.1") && row.contains("AS45102") && row.contains("CN"),
        "{row}"
    );
}

#[test]
fn corrupt_truncated_and_missing_databases_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = fixture_world(dir.path());
    let bytes = std::fs::read(&w).expect("read");
    let cut = dir.path().join("cut.gwdb");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    let flipped = dir.path().join("flipped.gwdb");
    let mut f = bytes.clone();
    let mid = f.len() / 2;
    f[mid] ^= 1;
    std::fs::write(&flipped, &f).expect("write");
    let not = dir.path().join("not.gwdb");
    std::fs::write(&not, b"hello").expect("write");
    for (file, want) in [
        (cut, "truncated"),
        (flipped, "corrupt"),
        (not, "not a geowall world database"),
        (
            dir.path().join("missing.gwdb"),
            "cannot read world database",
        ),
    ] {
        let o = geowall(&["lookup", "--world", file.to_str().expect("utf8"), "1.1.1.1"]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{}: {err}", file.display());
        assert!(!err.contains("panicked"), "{err}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn fixture_errors_name_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "range,geo-whois-asn-country,ipfire-location,asn,as_org,network\n192.0.2.0/24,US,US,64500,x,US\n192.0.2.1/24,US,,,,\n",
    )
    .expect("write");
    let out = dir.path().join("w.gwdb");
    let o = geowall(&[
        "world",
        "build",
        "--from",
        csv.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.csv:3:") && err.contains("host bits"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written on error");
    // A source directory with files missing says which.
    let o = geowall(&[
        "world",
        "build",
        "--from",
        dir.path().to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing source files") && err.contains("iptoasn-country.mmdb"),
        "{err}"
    );
}

#[test]
fn world_info_describes_the_shipped_database() {
    let o = geowall(&["world", "info", "--json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["geo_sources"][0], "geo-whois-asn-country");
    assert_eq!(v["sources"].as_array().map(Vec::len), Some(4));
    assert!(
        v["stats"]["v4_entries"]
            .as_u64()
            .is_some_and(|n| n > 100_000)
    );
}

/// Builds the fixture world with the three MMDB fixtures as further
/// geolocation sources (one named on the command line, two after their
/// database types).
fn world_with_mmdb_sources(dir: &Path) -> PathBuf {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = dir.join("extra.gwdb");
    let dbip = format!(
        "dbip={}",
        fx.join("mmdb/dbip-country-lite-test.mmdb").display()
    );
    let o = geowall(&[
        "world",
        "build",
        "--from",
        fx.join("world.csv").to_str().expect("utf8"),
        "--geo-mmdb",
        fx.join("mmdb/GeoLite2-Country-Test.mmdb")
            .to_str()
            .expect("utf8"),
        "--geo-mmdb",
        &dbip,
        "--geo-mmdb",
        fx.join("mmdb/ipinfo-lite-test.mmdb")
            .to_str()
            .expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(
        o.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("further geolocation source 'geolite2-country'")
    );
    out
}

#[test]
fn further_mmdb_sources_are_named_in_lookups_disputes_and_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = world_with_mmdb_sources(dir.path());
    let ws = w.to_str().expect("utf8");
    let o = geowall(&[
        "lookup",
        "--world",
        ws,
        "--json",
        "198.51.100.10",
        "81.2.69.142",
        "2001:250::1",
        "198.18.1.5",
        "203.0.113.5",
        "198.51.100.200",
    ]);
    assert!(o.status.success());
    let v = json_lines(&o);
    let names: Vec<&str> = v[0]["geo_sources"]
        .as_object()
        .expect("map")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "dbip",
        "geo-whois-asn-country",
        "geolite2-country",
        "ipfire-location",
        "ipinfo-lite",
    ];
    let mut got = names.clone();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    // The shipped sources say US; DB-IP's and IPinfo's schemas say CN.
    let g = &v[0]["geo_sources"];
    assert_eq!(g["geo-whois-asn-country"], "US");
    assert_eq!(g["dbip"], "CN");
    assert_eq!(g["ipinfo-lite"], "CN");
    assert_eq!(g["geolite2-country"], Value::Null);
    assert_eq!(v[0]["disputed"], true);
    assert_eq!(v[0]["geo_country"], Value::Null);
    // Addresses only the GeoLite2 file knows (IPv4 and IPv6).
    assert_eq!(v[1]["geo_sources"]["geolite2-country"], "GB");
    assert_eq!(v[1]["geo_country"], "GB");
    assert_eq!(v[2]["geo_sources"]["geolite2-country"], "CN");
    // IPinfo's older schema (the code in `country`).
    assert_eq!(v[3]["geo_sources"]["ipinfo-lite"], "SG");
    // A DB-IP record without a country: that source does not know.
    assert_eq!(v[4]["geo_sources"]["dbip"], Value::Null);
    assert_eq!(v[4]["geo_country"], "CN");
    assert_eq!(v[5]["disputed"], false);
    assert_eq!(v[5]["geo_country"], "US");

    // The table names every source of a dispute.
    let o = geowall(&["lookup", "--world", ws, "198.51.100.10"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("US/US/-/CN/CN disputed")
            && text.contains("disputed: geo-whois-asn-country US, ipfire-location US, geolite2-country -, dbip CN, ipinfo-lite CN"),
        "{text}"
    );

    // A geo rule matches what any source says: with the further sources,
    // CN blocks an address the shipped two place in the US.
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "name = \"t\"\ndefault = \"allow\"\n[[rule]]\nname = \"no CN\"\naction = \"block\"\njurisdiction = { countries = [\"CN\"], layers = [\"geo\"], disputed = \"any\" }\n",
    )
    .expect("write");
    let plain = fixture_world(dir.path());
    let explain = |world: &Path| {
        let o = geowall(&[
            "rules",
            "explain",
            "--policy",
            policy.to_str().expect("utf8"),
            "--world",
            world.to_str().expect("utf8"),
            "--json",
            "198.51.100.10",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).expect("json")
    };
    let with = explain(&w);
    assert_eq!(with["verdict"]["action"], "block", "{with}");
    assert_eq!(with["verdict"]["rule"], "no CN");
    assert_eq!(explain(&plain)["verdict"]["action"], "allow");

    // `world info` lists each further source with its file and licence.
    let o = geowall(&["world", "info", "--world", ws, "--json"]);
    let m: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(m["geo_sources"].as_array().map(Vec::len), Some(5));
    assert_eq!(m["geo_sources"][3], "dbip");
    let src = m["sources"].as_array().expect("sources");
    assert!(
        src.iter().any(|s| s["name"] == "dbip"
            && s["licence"]
                .as_str()
                .is_some_and(|l| l.contains("CC-BY-4.0"))
            && s["sha256"].as_str().is_some_and(|h| h.len() == 64)),
        "{m}"
    );
}

#[test]
fn bad_mmdb_sources_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let csv = fx.join("world.csv");
    let lite = fx.join("mmdb/GeoLite2-Country-Test.mmdb");
    let lite = lite.to_str().expect("utf8");
    let out = dir.path().join("w.gwdb");
    let not = dir.path().join("not.mmdb");
    std::fs::write(&not, b"not a database").expect("write");
    let named = |n: &str| format!("{n}={lite}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![not.display().to_string()],
            "not.mmdb: MaxMind DB error",
        ),
        (
            vec![dir.path().join("gone.mmdb").display().to_string()],
            "gone.mmdb",
        ),
        (vec![named("a b")], "is not a source name"),
        (vec![named("ipfire-location")], "already in the build"),
        (vec![named("x"), named("x")], "already in the build"),
        (
            vec![named("a"), named("b"), named("c"), named("d"), named("e")],
            "at most 4 further geolocation sources",
        ),
    ];
    for (sources, want) in cases {
        let mut args = vec![
            "world".to_owned(),
            "build".to_owned(),
            "--from".to_owned(),
            csv.display().to_string(),
            "--out".to_owned(),
            out.display().to_string(),
        ];
        for s in &sources {
            args.push("--geo-mmdb".to_owned());
            args.push(s.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = geowall(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{sources:?}: {err}");
        assert!(err.contains(want), "{sources:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "nothing written on error");
    }
}
