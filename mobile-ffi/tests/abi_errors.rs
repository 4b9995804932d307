//! Bad input through the C ABI, without root: null pointers, invalid
//! UTF-8, invalid JSON, unknown handles, a checker used after it was
//! freed, double free; every call returns its error code and a message,
//! none crashes. Checks (the engine-free call) against the shipped rules.

use std::ffi::{CStr, CString, c_char};
use std::ptr;

use geowall_ffi::*;

fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `buf` has `buf.len()` writable bytes.
    unsafe { geowall_last_error(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: geowall_last_error NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// A NUL-terminated string that is not UTF-8.
const BAD_UTF8: &[u8] = b"{\"preset\":\"\xff\"}\0";

fn checker(config: &str) -> GeowallHandle {
    let mut h = 0;
    let cfg = c(config);
    // SAFETY: valid string and out pointer.
    let s = unsafe { geowall_checker_new(cfg.as_ptr(), &raw mut h) };
    assert_eq!(s, GeowallStatus::Ok, "{}", last_error());
    assert_ne!(h, 0);
    h
}

fn check(h: GeowallHandle, host: &str, port: u16, proto: i32, traffic: i32) -> GeowallVerdict {
    let mut v = GeowallVerdict::default();
    let host = c(host);
    // SAFETY: valid strings (app null) and out pointer.
    let s = unsafe {
        geowall_check(
            h,
            host.as_ptr(),
            port,
            proto,
            traffic,
            ptr::null(),
            &raw mut v,
        )
    };
    assert_eq!(s, GeowallStatus::Ok, "{}", last_error());
    v
}

/// `geowall_version` of `h`, which must succeed (every field written: the
/// struct starts with sentinel values).
fn version(h: GeowallHandle) -> GeowallVersion {
    let mut ver = GeowallVersion {
        abi: u32::MAX,
        reserved0: 0,
        library: [1; 32],
        bundle_sequence: u64::MAX,
        reserved: [0; 4],
    };
    // SAFETY: a valid out pointer; the handle is checked.
    let s = unsafe { geowall_version(h, &raw mut ver) };
    assert_eq!(s, GeowallStatus::Ok, "{}", last_error());
    ver
}

fn text(a: &[c_char]) -> String {
    // SAFETY: geowall NUL-terminates these arrays.
    unsafe { CStr::from_ptr(a.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn null_pointers_are_errors() {
    let mut h = 0;
    let cfg = c("{}");
    // SAFETY: every pointer is valid or null, as each case says.
    unsafe {
        assert_eq!(
            geowall_start(3, ptr::null(), ptr::null(), &raw mut h),
            GeowallStatus::NullPointer
        );
        assert!(
            last_error().contains("config_json is null"),
            "{}",
            last_error()
        );
        assert_eq!(
            geowall_start(3, cfg.as_ptr(), ptr::null(), ptr::null_mut()),
            GeowallStatus::NullPointer
        );
        assert_eq!(
            geowall_checker_new(ptr::null(), &raw mut h),
            GeowallStatus::NullPointer
        );
        assert_eq!(
            geowall_checker_new(cfg.as_ptr(), ptr::null_mut()),
            GeowallStatus::NullPointer
        );
        assert_eq!(
            geowall_stats(1, ptr::null_mut()),
            GeowallStatus::NullPointer
        );
        assert_eq!(
            geowall_version(0, ptr::null_mut()),
            GeowallStatus::NullPointer
        );
        assert_eq!(
            geowall_update_bundle(1, ptr::null(), 5),
            GeowallStatus::NullPointer
        );
        assert_eq!(
            geowall_set_identifiers(1, ptr::null()),
            GeowallStatus::NullPointer
        );
        assert_eq!(
            geowall_set_dns_upstreams(1, ptr::null()),
            GeowallStatus::NullPointer
        );
    }
    let h = checker("{}");
    let mut v = GeowallVerdict::default();
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            geowall_check(h, ptr::null(), 443, 6, 0, ptr::null(), &raw mut v),
            GeowallStatus::NullPointer
        );
        let host = c("example.org");
        assert_eq!(
            geowall_check(h, host.as_ptr(), 443, 6, 0, ptr::null(), ptr::null_mut()),
            GeowallStatus::NullPointer
        );
        assert_eq!(geowall_free(h), GeowallStatus::Ok);
    }
}

#[test]
fn invalid_utf8_and_json_are_errors() {
    let mut h = 0;
    // SAFETY: NUL-terminated strings and a valid out pointer.
    unsafe {
        assert_eq!(
            geowall_checker_new(BAD_UTF8.as_ptr().cast(), &raw mut h),
            GeowallStatus::InvalidUtf8
        );
        for (json, want) in [
            ("{not json", "configuration"),
            ("{\"mtuu\": 1500}", "unknown field `mtuu`"),
            ("{\"mtu\": \"big\"}", "invalid type"),
            ("{\"preset\": \"nope\"}", "nope"),
            (
                "{\"preset\": \"default\", \"policy\": \"name='x'\"}",
                "either preset or policy",
            ),
            ("{\"policy\": \"name = \"}", "policy"),
            ("{\"trusted_keys\": [\"abcd\"]}", "trusted_keys"),
            (
                "{\"world\": \"/nonexistent/world.gwdb\"}",
                "/nonexistent/world.gwdb",
            ),
        ] {
            let cfg = c(json);
            assert_eq!(
                geowall_checker_new(cfg.as_ptr(), &raw mut h),
                GeowallStatus::InvalidConfig,
                "{json}"
            );
            assert!(last_error().contains(want), "{json}: {}", last_error());
        }
        // The engine refuses a bad configuration before it touches the TUN.
        let cfg = c("{\"mtu\": 500}");
        let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&devnull);
        assert_eq!(
            geowall_start(fd, cfg.as_ptr(), ptr::null(), &raw mut h),
            GeowallStatus::InvalidConfig
        );
        assert!(last_error().contains("1280"), "{}", last_error());
        // An extra certificate authority that is not PEM, or holds none.
        for (bad, want) in [
            ("not pem at all", "dns_ca[0]: no certificate"),
            (
                "-----BEGIN CERTIFICATE-----\\n!!\\n-----END CERTIFICATE-----\\n",
                "dns_ca[0]: not a PEM",
            ),
        ] {
            let cfg = c(&format!(
                "{{\"dns_upstreams\": [\"tls:192.0.2.53@dns.test\"], \"dns_ca\": [\"{bad}\"]}}"
            ));
            assert_eq!(
                geowall_start(fd, cfg.as_ptr(), ptr::null(), &raw mut h),
                GeowallStatus::InvalidConfig,
                "{bad}"
            );
            assert!(last_error().contains(want), "{bad}: {}", last_error());
        }
        // A good one passes the configuration (and then /dev/null is no TUN).
        let ca = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dot/ca.pem"),
        )
        .expect("test CA");
        let cfg = c(&serde_json::json!({
            "dns_upstreams": ["tls:192.0.2.53@dns.test"],
            "dns_ca": [ca],
        })
        .to_string());
        let s = geowall_start(fd, cfg.as_ptr(), ptr::null(), &raw mut h);
        assert_eq!(s, GeowallStatus::Io, "{}", last_error());
        // Not a TUN: an error, not a crash.
        let cfg = c("{\"dns_upstreams\": [\"udp:192.0.2.53\"]}");
        let s = geowall_start(fd, cfg.as_ptr(), ptr::null(), &raw mut h);
        assert_eq!(s, GeowallStatus::Io, "{}", last_error());
        assert_eq!(
            geowall_start(-1, cfg.as_ptr(), ptr::null(), &raw mut h),
            GeowallStatus::InvalidArgument
        );
        assert_eq!(
            geowall_start(100_000, cfg.as_ptr(), ptr::null(), &raw mut h),
            GeowallStatus::InvalidArgument
        );
    }
    let h = checker("{}");
    let mut v = GeowallVerdict::default();
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            geowall_check(
                h,
                BAD_UTF8.as_ptr().cast(),
                1,
                6,
                0,
                ptr::null(),
                &raw mut v
            ),
            GeowallStatus::InvalidUtf8
        );
        let host = c("example.org");
        assert_eq!(
            geowall_check(
                h,
                host.as_ptr(),
                1,
                6,
                0,
                BAD_UTF8.as_ptr().cast(),
                &raw mut v
            ),
            GeowallStatus::InvalidUtf8
        );
        assert_eq!(
            geowall_check(h, host.as_ptr(), 1, 99, 0, ptr::null(), &raw mut v),
            GeowallStatus::InvalidArgument
        );
        assert_eq!(
            geowall_check(h, host.as_ptr(), 1, 6, 9, ptr::null(), &raw mut v),
            GeowallStatus::InvalidArgument
        );
        let empty = c("  ");
        assert_eq!(
            geowall_check(h, empty.as_ptr(), 1, 6, 0, ptr::null(), &raw mut v),
            GeowallStatus::InvalidArgument
        );
        assert_eq!(
            geowall_update_bundle(h, b"GEOWALLB".as_ptr(), 8),
            GeowallStatus::BundleRejected
        );
        assert!(
            last_error().starts_with("bundle rejected"),
            "{}",
            last_error()
        );
        assert_eq!(geowall_free(h), GeowallStatus::Ok);
    }
}

#[test]
fn handles_are_checked() {
    let h = checker("{\"preset\": \"clubhouse\"}");
    let mut st = GeowallStats::default();
    let ids = c("{}");
    // SAFETY: valid pointers; handles are plain numbers.
    unsafe {
        // A checker is not an engine.
        assert_eq!(geowall_stop(h), GeowallStatus::InvalidHandle);
        assert_eq!(geowall_stats(h, &raw mut st), GeowallStatus::InvalidHandle);
        assert_eq!(
            geowall_set_identifiers(h, ids.as_ptr()),
            GeowallStatus::InvalidHandle
        );
        let upstreams = c("[\"udp:192.0.2.53\"]");
        assert_eq!(
            geowall_set_dns_upstreams(h, upstreams.as_ptr()),
            GeowallStatus::InvalidHandle
        );
        // Made-up handles.
        for bad in [0, u64::MAX, h + 1_000_000] {
            assert_eq!(geowall_stop(bad), GeowallStatus::InvalidHandle);
            assert_eq!(geowall_free(bad), GeowallStatus::InvalidHandle);
        }
        assert_eq!(geowall_free(h), GeowallStatus::Ok);
        // Freed: every use is an error, a second free too.
        assert_eq!(geowall_free(h), GeowallStatus::InvalidHandle);
        let mut v = GeowallVerdict::default();
        let host = c("agora.io");
        assert_eq!(
            geowall_check(h, host.as_ptr(), 443, 6, 0, ptr::null(), &raw mut v),
            GeowallStatus::InvalidHandle
        );
        assert!(last_error().contains(&h.to_string()), "{}", last_error());
    }
}

#[test]
fn checks_follow_the_rules() {
    let h = checker("{\"preset\": \"clubhouse\"}");
    // Agora's names are a CN vendor: media to them is blocked, by name.
    let v = check(h, "edge.agora.io", 4001, 17, GEOWALL_TRAFFIC_MEDIA);
    assert_ne!(v.action, GEOWALL_ALLOW, "{v:?}");
    assert!(v.rule_index >= 0);
    assert!(!text(&v.rule).is_empty());
    assert_eq!(text(&v.layer), "vendor:CN");
    // Web to an unrelated name is allowed by the default.
    let v = check(h, "example.org.", 443, 6, GEOWALL_TRAFFIC_WEB);
    assert_eq!(v.action, GEOWALL_ALLOW);
    assert_eq!(v.rule_index, -1);
    assert_eq!(text(&v.rule), "");
    let ver = version(h);
    assert_eq!(ver.abi, GEOWALL_ABI_VERSION);
    assert_eq!(ver.bundle_sequence, 0);
    assert_eq!(text(&ver.library), env!("CARGO_PKG_VERSION"));
    // SAFETY: a handle from checker_new.
    assert_eq!(unsafe { geowall_free(h) }, GeowallStatus::Ok);
}

#[test]
fn the_error_message_fits_the_callers_buffer() {
    // SAFETY: handles are plain numbers.
    assert_eq!(unsafe { geowall_stop(0) }, GeowallStatus::InvalidHandle);
    // SAFETY: null with 0 asks for the length.
    let full = unsafe { geowall_last_error(ptr::null_mut(), 0) };
    assert!(full > 10);
    let mut small = [1 as c_char; 5];
    // SAFETY: `small` has 5 writable bytes.
    let n = unsafe { geowall_last_error(small.as_mut_ptr(), small.len()) };
    assert_eq!(n, full);
    assert_eq!(small[4], 0, "NUL-terminated within the buffer");
    assert_eq!(text(&small).len(), 4);
}

/// Rules bundles an app pushes: a policy blocking CN, built and signed
/// when asked.
struct Pushed {
    dir: tempfile::TempDir,
    now: u64,
}

impl Pushed {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("policy.toml"),
            "name = 'pushed'\ndefault = 'allow'\n[[rule]]\nname = 'no CN'\naction = 'block'\njurisdiction = { countries = ['CN'] }\n",
        )
        .expect("policy");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        Self { dir, now }
    }

    /// The bundle of sequence `seq`, expiring at `expires`, signed by `key`.
    fn bundle(&self, seq: u64, expires: u64, key: &geowall::policy::bundle::SigningKey) -> Vec<u8> {
        use geowall::policy::bundle;
        bundle::sign(
            &bundle::build(self.dir.path(), seq, self.now - 100, expires).expect("build"),
            key,
        )
        .expect("sign")
    }
}

/// Each kind of refused rules bundle keeps its kind across the C ABI, so
/// an app can tell an update seen twice (harmless) from a forged one; the
/// running rules stay after each.
#[test]
fn each_kind_of_refused_bundle_has_its_own_status() {
    use geowall::policy::bundle;
    let pushed = Pushed::new();
    let now = pushed.now;
    let trusted = bundle::SigningKey::from_bytes(&[3; 32]);
    let stranger = bundle::SigningKey::from_bytes(&[4; 32]);
    let make = |seq: u64, expires: u64, key: &bundle::SigningKey| pushed.bundle(seq, expires, key);
    let h = checker(&format!(
        "{{\"trusted_keys\":[\"{}\"]}}",
        bundle::key_hex(trusted.verifying_key().as_bytes())
    ));
    let push = |b: &[u8]| {
        // SAFETY: `b` is a live slice of `b.len()` bytes.
        let s = unsafe { geowall_update_bundle(h, b.as_ptr(), b.len()) };
        (s, last_error())
    };
    assert_eq!(push(&make(5, now + 3_600, &trusted)).0, GeowallStatus::Ok);
    let (s, m) = push(&make(5, now + 3_600, &trusted));
    assert_eq!(s, GeowallStatus::BundleRollback, "{m}");
    let (s, m) = push(&make(6, now - 10, &trusted));
    assert_eq!(s, GeowallStatus::BundleExpired, "{m}");
    let (s, m) = push(&make(7, now + 3_600, &stranger));
    assert_eq!(s, GeowallStatus::BundleUnknownKey, "{m}");
    let mut forged = make(8, now + 3_600, &trusted);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (s, m) = push(&forged);
    assert_eq!(s, GeowallStatus::BundleBadSignature, "{m}");
    let (s, m) = push(b"GEOWALLB");
    assert_eq!(s, GeowallStatus::BundleRejected, "{m}");
    // The bundle installed first still decides.
    let v = check(h, "112.126.96.46", 443, 6, 0);
    assert_eq!(
        (v.action, text(&v.rule)),
        (GEOWALL_DROP, "no CN".to_owned())
    );
    // SAFETY: a live handle.
    assert_eq!(unsafe { geowall_free(h) }, GeowallStatus::Ok);
}

#[test]
fn subscriptions_are_checked_before_anything_is_fetched() {
    use geowall::policy::bundle;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let key = bundle::SigningKey::from_bytes(&[3; 32]);
    let hex = bundle::key_hex(key.verifying_key().as_bytes());
    let url = "https://dns.test/site/";
    let bad = [
        (
            serde_json::json!({"subscriptions": [{"url": url}], "trusted_keys": [hex]}),
            "give state_dir",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": "http://dns.test/"}], "trusted_keys": [hex]}),
            "subscriptions[0]",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url}]}),
            "no key",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "every": "soon"}], "trusted_keys": [hex]}),
            "subscriptions[0]: every: 'soon' is not a duration",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "every": "0s"}], "trusted_keys": [hex]}),
            "at least 1 s",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "list": "Bad Name", "keys": [hex]}]}),
            "cannot name a list bundle",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "list": "acme"}]}),
            "no key",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "keys": ["abcd"]}]}),
            "subscriptions[0]: keys: 'abcd'",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "ca": ["not pem"]}], "trusted_keys": [hex]}),
            "subscriptions[0]: ca[0]",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "list": "acme", "keys": [hex]}, {"url": url, "list": "acme", "keys": [hex]}]}),
            "subscriptions[1]: list bundle acme is subscribed to twice",
        ),
        (
            serde_json::json!({"state_dir": state, "preset": "strict", "subscriptions": [{"url": url}], "trusted_keys": [hex]}),
            "give no preset or policy",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "list": "acme", "world": true, "keys": [hex]}]}),
            "a list bundle or world data, not both",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "world": true}], "trusted_keys": [hex]}),
            "no key",
        ),
        (
            serde_json::json!({"state_dir": state, "subscriptions": [{"url": url, "list": "acme", "keys": [hex], "intervall": "1h"}]}),
            "unknown field `intervall`",
        ),
    ];
    let mut h = 0;
    for (json, want) in bad {
        let cfg = c(&json.to_string());
        // SAFETY: a valid string and out pointer.
        let s = unsafe { geowall_checker_new(cfg.as_ptr(), &raw mut h) };
        assert_eq!(s, GeowallStatus::InvalidConfig, "{json}");
        assert!(last_error().contains(want), "{json}: {}", last_error());
    }

    // A checker fetches nothing: a bundle not kept yet is a subscription
    // error, never the preset instead.
    let rules_sub = serde_json::json!({"state_dir": state, "subscriptions": [{"url": url}], "trusted_keys": [hex]});
    let cfg = c(&rules_sub.to_string());
    // SAFETY: as above.
    let s = unsafe { geowall_checker_new(cfg.as_ptr(), &raw mut h) };
    assert_eq!(s, GeowallStatus::Subscription, "{}", last_error());
    assert!(last_error().contains("subscribed.gwb"), "{}", last_error());

    // What a started engine kept is what a checker judges with; an
    // expired kept bundle refuses rather than falling back.
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("dir");
    std::fs::write(
        rules.join("policy.toml"),
        "name = 'kept'\ndefault = 'allow'\n[[rule]]\nname = 'no CN'\naction = 'block'\njurisdiction = { countries = ['CN'] }\n",
    )
    .expect("policy");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let kept = |expires: u64| {
        let b = bundle::sign(
            &bundle::build(&rules, 4, now - 100, expires).expect("build"),
            &key,
        )
        .expect("sign");
        std::fs::write(state.join("subscribed.gwb"), b).expect("kept");
    };
    kept(now + 3_600);
    let h = checker(&rules_sub.to_string());
    let v = check(h, "112.126.96.46", 443, 6, 0);
    assert_eq!(
        (v.action, text(&v.rule)),
        (GEOWALL_DROP, "no CN".to_owned())
    );
    let mut len = 0;
    // SAFETY: a live handle, no buffer, a valid length pointer.
    let st = unsafe { geowall_subscriptions(h, ptr::null_mut(), 0, &raw mut len) };
    assert_eq!(st, GeowallStatus::Ok);
    let mut buf = vec![0 as c_char; len + 1];
    // SAFETY: `buf` has `buf.len()` writable bytes.
    let st = unsafe { geowall_subscriptions(h, buf.as_mut_ptr(), buf.len(), &raw mut len) };
    assert_eq!(st, GeowallStatus::Ok);
    let s: serde_json::Value = serde_json::from_str(&text(&buf)).expect("json");
    assert_eq!(s[0]["what"], "rules", "{s}");
    assert_eq!(s[0]["url"], "https://dns.test/site/index.json", "{s}");
    // SAFETY: a live handle.
    assert_eq!(unsafe { geowall_free(h) }, GeowallStatus::Ok);
    kept(now - 10);
    let cfg = c(&rules_sub.to_string());
    let mut h = 0;
    // SAFETY: as above.
    let s = unsafe { geowall_checker_new(cfg.as_ptr(), &raw mut h) };
    assert_eq!(s, GeowallStatus::Subscription, "{}", last_error());
    assert!(last_error().contains("expired"), "{}", last_error());
}

/// Without a rules subscription, a bundle the app installed is kept in
/// `state_dir`: after a restart it decides again and an older one (or the
/// same) is still a rollback. A kept bundle that expired meanwhile gives
/// way to the configured rules, its sequence still refusing older
/// bundles.
#[test]
fn installed_bundles_are_kept_across_restarts() {
    use geowall::policy::bundle;
    let pushed = Pushed::new();
    let now = pushed.now;
    let key = bundle::SigningKey::from_bytes(&[3; 32]);
    let make = |seq: u64, expires: u64| pushed.bundle(seq, expires, &key);
    let cfg = serde_json::json!({
        "trusted_keys": [bundle::key_hex(key.verifying_key().as_bytes())],
        "state_dir": pushed.dir.path().join("state"),
    })
    .to_string();
    let push = |h: GeowallHandle, b: &[u8]| {
        // SAFETY: `b` is a live slice of `b.len()` bytes.
        let s = unsafe { geowall_update_bundle(h, b.as_ptr(), b.len()) };
        (s, last_error())
    };
    let sequence = |h: GeowallHandle| version(h).bundle_sequence;
    let cn = "112.126.96.46";
    let h = checker(&cfg);
    assert_eq!(
        check(h, cn, 443, 6, 0).action,
        GEOWALL_ALLOW,
        "the default preset"
    );
    assert_eq!(push(h, &make(5, now + 3_600)).0, GeowallStatus::Ok);
    // SAFETY: a live handle.
    assert_eq!(unsafe { geowall_free(h) }, GeowallStatus::Ok);

    let h = checker(&cfg);
    assert_eq!(sequence(h), 5, "the kept bundle after a restart");
    let v = check(h, cn, 443, 6, 0);
    assert_eq!(
        (v.action, text(&v.rule)),
        (GEOWALL_DROP, "no CN".to_owned())
    );
    for seq in [4, 5] {
        let (s, m) = push(h, &make(seq, now + 3_600));
        assert_eq!(s, GeowallStatus::BundleRollback, "{seq}: {m}");
    }
    // A bundle that expires in two seconds (counted from now, not from the
    // test's start: a loaded machine may be seconds in), kept, then
    // expired at the restart: the configured rules run, and 6 stays
    // refused.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 2;
    let (s, m) = push(h, &make(6, soon));
    assert_eq!(s, GeowallStatus::Ok, "{m}");
    // SAFETY: a live handle.
    assert_eq!(unsafe { geowall_free(h) }, GeowallStatus::Ok);
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        <= soon
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let h = checker(&cfg);
    assert_eq!(
        (sequence(h), check(h, cn, 443, 6, 0).action),
        (0, GEOWALL_ALLOW)
    );
    let (s, m) = push(h, &make(6, now + 3_600));
    assert_eq!(
        s,
        GeowallStatus::BundleRollback,
        "the recorded sequence: {m}"
    );
    assert_eq!(push(h, &make(7, now + 3_600)).0, GeowallStatus::Ok);
    // SAFETY: a live handle.
    assert_eq!(unsafe { geowall_free(h) }, GeowallStatus::Ok);
}
