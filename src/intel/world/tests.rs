//! Tests of the world database: builder and reader together, with byte-level
//! corruption and a model-based property test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn cc(s: &str) -> Option<Country> {
    Some(s.parse().expect("valid code"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid address")
}

fn no_progress() -> impl FnMut(BuildProgress) {
    |_| {}
}

/// A small world exercising every table.
fn small_world() -> World {
    let mut b = WorldBuilder::new();
    b.add_geo(0, ip("1.0.0.0"), ip("1.0.0.255"), cc("AU"))
        .expect("range");
    b.add_geo(1, ip("1.0.0.0"), ip("1.0.0.255"), cc("AU"))
        .expect("range");
    // Nested overlap: 1.0.0.16/28 inside 1.0.0.0/24.
    b.add_geo(0, ip("1.0.0.16"), ip("1.0.0.31"), cc("CN"))
        .expect("range");
    b.add_asn(ip("1.0.0.0"), ip("1.0.0.255"), 13335, "Cloudflare, Inc.")
        .expect("range");
    b.add_network(ip("1.0.0.0"), ip("1.0.0.255"), cc("US"))
        .expect("range");
    // Spans a /16 bucket boundary.
    b.add_geo(0, ip("2.0.255.0"), ip("2.1.0.255"), cc("FR"))
        .expect("range");
    // The very last IPv4 address.
    b.add_geo(0, ip("255.255.255.255"), ip("255.255.255.255"), cc("ZW"))
        .expect("range");
    // IPv6: a /32, and a range finer than /64 inside it.
    b.add_geo(
        0,
        ip("2400:3200::"),
        ip("2400:3200:ffff:ffff:ffff:ffff:ffff:ffff"),
        cc("CN"),
    )
    .expect("range");
    b.add_geo(0, ip("2400:3200::8000"), ip("2400:3200::80ff"), cc("HK"))
        .expect("range");
    b.add_asn(
        ip("2400:3200::"),
        ip("2400:3200:ffff:ffff:ffff:ffff:ffff:ffff"),
        37963,
        "Hangzhou Alibaba",
    )
    .expect("range");
    let (bytes, _) = b.build(&mut no_progress()).expect("builds");
    World::from_vec(bytes).expect("loads")
}

#[test]
fn range_edges_nesting_and_gaps_v4() {
    let w = small_world();
    let g = |s: &str| w.lookup(ip(s)).geo_sources().get(0);
    assert_eq!(g("0.255.255.255"), None, "gap before the first range");
    assert_eq!(g("1.0.0.0"), cc("AU"), "first address");
    assert_eq!(g("1.0.0.15"), cc("AU"), "just before the nested range");
    assert_eq!(g("1.0.0.16"), cc("CN"), "first of nested");
    assert_eq!(g("1.0.0.31"), cc("CN"), "last of nested");
    assert_eq!(g("1.0.0.32"), cc("AU"), "outer resumes");
    assert_eq!(g("1.0.0.255"), cc("AU"), "last address");
    assert_eq!(g("1.0.1.0"), None, "gap after");
    assert_eq!(g("2.0.254.255"), None);
    assert_eq!(g("2.0.255.0"), cc("FR"));
    assert_eq!(g("2.1.0.0"), cc("FR"), "continues into the next /16 bucket");
    assert_eq!(g("2.1.0.255"), cc("FR"));
    assert_eq!(g("2.1.1.0"), None);
    assert_eq!(g("255.255.255.254"), None);
    assert_eq!(g("255.255.255.255"), cc("ZW"));
    assert_eq!(g("0.0.0.0"), None);
    let i = w.lookup(ip("1.0.0.20"));
    assert_eq!(i.asn(), Some(13335));
    assert_eq!(i.as_org(), Some("Cloudflare, Inc."));
    assert_eq!(i.network_country(), cc("US"));
    // Source 0 says CN (nested), source 1 says AU: a dispute, never a pick.
    assert!(i.disputed());
    assert_eq!(i.geo_country(), None);
    assert_eq!(i.geo_countries().count(), 2);
    let i = w.lookup(ip("1.0.0.1"));
    assert!(!i.disputed());
    assert_eq!(i.geo_country(), cc("AU"));
    assert!(w.lookup(ip("9.9.9.9")).is_empty());
    assert_eq!(w.as_org_of(37963), Some("Hangzhou Alibaba"));
    assert_eq!(w.as_org_of(1), None);
}

#[test]
fn ipv6_and_fine_ranges() {
    let w = small_world();
    let g = |s: &str| w.lookup(ip(s)).geo_sources().get(0);
    assert_eq!(g("2400:3200::1"), cc("CN"));
    assert_eq!(g("2400:3200::7fff"), cc("CN"));
    assert_eq!(g("2400:3200::8000"), cc("HK"));
    assert_eq!(g("2400:3200::80ff"), cc("HK"));
    assert_eq!(g("2400:3200::8100"), cc("CN"));
    assert_eq!(g("2400:3200:0:1::"), cc("CN"), "next /64 after a split one");
    assert_eq!(g("2400:3200:ffff:ffff:ffff:ffff:ffff:ffff"), cc("CN"));
    assert_eq!(g("2400:3201::"), None);
    assert_eq!(g("2400:31ff:ffff:ffff:ffff:ffff:ffff:ffff"), None);
    assert_eq!(g("::"), None);
    assert_eq!(g("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), None);
    assert_eq!(w.lookup(ip("2400:3200::8001")).asn(), Some(37963));
}

#[test]
fn special_purpose_blocks_can_be_masked() {
    let mut b = WorldBuilder::new();
    b.add_geo(0, ip("192.0.0.0"), ip("192.255.255.255"), cc("AU"))
        .expect("range");
    b.add_geo(
        0,
        ip("2001:d00::"),
        ip("2001:dff:ffff:ffff:ffff:ffff:ffff:ffff"),
        cc("JP"),
    )
    .expect("range");
    b.mask_special_purpose();
    let w = World::from_vec(b.build(&mut no_progress()).expect("builds").0).expect("loads");
    for unknown in [
        "192.168.1.1",
        "192.0.2.1",
        "2001:db8::1",
        "192.168.0.0",
        "192.168.255.255",
    ] {
        assert!(w.lookup(ip(unknown)).is_empty(), "{unknown}");
    }
    for known in [
        "192.167.255.255",
        "192.169.0.0",
        "2001:db7:ffff::1",
        "2001:db9::",
    ] {
        assert!(!w.lookup(ip(known)).is_empty(), "{known}");
    }
}

#[test]
fn v4_mapped_ipv6_is_answered_as_ipv4() {
    let w = small_world();
    let mapped = ip("::ffff:1.0.0.20");
    assert_eq!(
        w.lookup(mapped).geo_sources(),
        w.lookup(ip("1.0.0.20")).geo_sources()
    );
    assert_eq!(w.lookup(mapped).asn(), Some(13335));
    let r = w.report(mapped);
    assert_eq!(r.looked_up, Some(ip("1.0.0.20")));
    // The IPv6 table itself knows nothing at ::ffff:0:0/96.
    let v6: Ipv6Addr = "::ffff:1.0.0.20".parse().expect("v6");
    assert!(w.lookup_v6(v6).is_empty());
    // A NAT64 or 6to4 address the data does not know is reported as the
    // IPv4 address it embeds, as the firewall judges it.
    for embedding in ["64:ff9b::1.0.0.20", "64:ff9b:1::1.0.0.20", "2002:100:14::1"] {
        let r = w.report(ip(embedding));
        assert_eq!(r.looked_up, Some(ip("1.0.0.20")), "{embedding}");
        assert_eq!((r.asn, r.network_country), (Some(13335), cc("US")));
    }
}

#[test]
fn lookup_many_matches_lookup_on_mixed_families() {
    let w = small_world();
    let texts = [
        "1.0.0.20",
        "2400:3200::8000",
        "::ffff:1.0.0.1",
        "9.9.9.9",
        "2.1.0.0",
        "::",
        "255.255.255.255",
        "2400:3200::1",
        "0.0.0.0",
        "2400:3201::",
        "1.0.0.255",
        "2.0.255.0",
        "ffff::1",
        "1.0.0.16",
        "2400:3200:0:1::",
        "1.0.1.0",
        "1.0.0.31",
        "2400:3200::80ff",
    ];
    let ips: Vec<IpAddr> = texts.iter().map(|t| ip(t)).collect();
    let mut many = Vec::new();
    w.lookup_many(&ips, &mut many);
    assert_eq!(many.len(), ips.len());
    for (i, got) in ips.iter().zip(&many) {
        let one = w.lookup(*i);
        assert_eq!(
            (got.geo_sources(), got.network_country(), got.asn()),
            (one.geo_sources(), one.network_country(), one.asn()),
            "{i}"
        );
    }
    assert_eq!(many[1].geo_sources().get(0), cc("HK"));
    let mut none = Vec::new();
    w.lookup_many(&[], &mut none);
    assert!(none.is_empty());
}

#[test]
fn report_json_has_stable_fields_and_nulls() {
    let w = small_world();
    let v = serde_json::to_value(w.report(ip("1.0.0.20"))).expect("json");
    assert_eq!(v["ip"], "1.0.0.20");
    assert_eq!(v["geo_country"], serde_json::Value::Null);
    assert_eq!(v["geo_sources"]["geo-whois-asn-country"], "CN");
    assert_eq!(v["geo_sources"]["ipfire-location"], "AU");
    assert_eq!(v["disputed"], true);
    assert_eq!(v["asn"], 13335);
    assert_eq!(v["network_country"], "US");
    assert!(v.get("looked_up").is_none());
    let v = serde_json::to_value(w.report(ip("9.9.9.9"))).expect("json");
    for k in ["geo_country", "asn", "as_org", "network_country"] {
        assert_eq!(v[k], serde_json::Value::Null, "{k} unknown is null");
    }
}

/// A small world with one further geolocation source (format version 3).
fn built_bytes() -> Vec<u8> {
    let mut b = WorldBuilder::new();
    b.add_geo(0, ip("1.0.0.0"), ip("1.0.0.255"), cc("AU"))
        .expect("range");
    assert_eq!(b.add_geo_source("extra"), Ok(2));
    b.add_geo(2, ip("1.0.0.0"), ip("1.0.0.127"), cc("NZ"))
        .expect("range");
    b.add_geo(2, ip("2400:3200::"), ip("2400:3200::ff"), cc("CN"))
        .expect("range");
    b.add_asn(ip("1.0.0.0"), ip("1.0.0.255"), 13335, "Cloudflare")
        .expect("range");
    b.build(&mut no_progress()).expect("builds").0
}

#[test]
fn further_geolocation_sources_round_trip_and_only_they_need_version_3() {
    let w = World::from_vec(built_bytes()).expect("loads");
    assert_eq!(
        w.geo_source_names(),
        ["geo-whois-asn-country", "ipfire-location", "extra"]
    );
    let g = w.lookup(ip("1.0.0.5")).geo_sources();
    assert_eq!(g.as_slice(), [cc("AU"), None, cc("NZ")]);
    assert!(g.disputed() && g.agreed().is_none());
    assert_eq!(
        g.distinct().collect::<Vec<_>>(),
        [cc("AU").expect("cc"), cc("NZ").expect("cc")]
    );
    let g = w.lookup(ip("1.0.0.200")).geo_sources();
    assert_eq!(g.as_slice(), [cc("AU"), None, None]);
    assert_eq!(g.agreed(), cc("AU"));
    // Only the further source knows this one.
    let i = w.lookup(ip("2400:3200::7"));
    assert!(!i.is_empty());
    assert_eq!(i.geo_country(), cc("CN"));
    assert!(w.lookup(ip("9.9.9.9")).is_empty());
    assert_eq!(
        u32::from_le_bytes(built_bytes()[8..12].try_into().expect("4")),
        3
    );
    // Without further sources the file stays version 2.
    let plain = small_world_bytes();
    assert_eq!(u32::from_le_bytes(plain[8..12].try_into().expect("4")), 2);
    assert_eq!(
        World::from_vec(plain)
            .expect("loads")
            .lookup(ip("1.0.0.5"))
            .geo_sources()
            .as_slice(),
        [cc("AU"), None]
    );
    // Names are checked, and there are at most four further sources.
    let mut b = WorldBuilder::new();
    assert!(b.add_geo_source("ipfire-location").is_err());
    assert!(b.add_geo_source("has space").is_err());
    assert!(
        b.add_geo(2, ip("1.0.0.0"), ip("1.0.0.1"), cc("AU"))
            .is_err()
    );
    for n in ["a", "b", "c", "d"] {
        b.add_geo_source(n).expect("fits");
    }
    assert!(b.add_geo_source("a").is_err());
    assert!(b.add_geo_source("e").is_err());
}

fn small_world_bytes() -> Vec<u8> {
    let mut b = WorldBuilder::new();
    b.add_geo(0, ip("1.0.0.0"), ip("1.0.0.255"), cc("AU"))
        .expect("range");
    b.add_asn(ip("1.0.0.0"), ip("1.0.0.255"), 13335, "Cloudflare")
        .expect("range");
    b.add_geo(0, ip("2400:3200::"), ip("2400:3200::ff"), cc("CN"))
        .expect("range");
    b.build(&mut no_progress()).expect("builds").0
}

fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn corrupt_and_truncated_files_are_rejected() {
    let good = built_bytes();
    assert!(World::from_vec(good.clone()).is_ok());
    // Truncated at every length, including inside the header.
    for len in [0, 4, 8, 40, 63, 64, 67, good.len() / 2, good.len() - 1] {
        let e = World::from_vec(good[..len].to_vec()).expect_err("truncated");
        assert!(
            matches!(e, WorldError::BadMagic | WorldError::Length { .. }),
            "len {len}: {e}"
        );
    }
    // Extra bytes.
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        World::from_vec(long),
        Err(WorldError::Length { .. })
    ));
    // Magic.
    let mut m = good.clone();
    m[0] = b'X';
    assert!(matches!(World::from_vec(m), Err(WorldError::BadMagic)));
    // Version.
    let mut v = good.clone();
    v[8] = 9;
    assert!(matches!(
        World::from_vec(v),
        Err(WorldError::UnsupportedVersion {
            found: 9,
            supported: 3
        })
    ));
    // Any flipped byte past the header is caught by the checksum.
    for at in [70, good.len() / 3, good.len() - 10, good.len() - 1] {
        let mut c = good.clone();
        c[at] ^= 0x40;
        let e = World::from_vec(c).expect_err("flipped");
        assert!(matches!(e, WorldError::Checksum { .. }), "byte {at}: {e}");
    }
}

#[test]
fn structurally_wrong_files_with_valid_checksums_are_rejected() {
    let good = built_bytes();
    let c = Counts::from_header(&good);
    let l = c.layout().expect("layout");
    // A record index past the table in the first v4 entry.
    let mut b = good.clone();
    let at = l.v4_entries.0 + 2;
    b[at..at + 3].copy_from_slice(&[0xF0, 0xFF, 0x00]);
    let e = World::from_vec(reseal(b)).expect_err("bad record");
    assert!(
        matches!(
            e,
            WorldError::Inconsistent {
                section: "v4 entries",
                ..
            }
        ),
        "{e}"
    );
    // An index that goes backwards.
    let mut b = good.clone();
    let at = l.v4_index.0 + 4 * 300;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = World::from_vec(reseal(b)).expect_err("bad index");
    assert!(
        matches!(
            e,
            WorldError::Inconsistent {
                section: "v4 index",
                ..
            }
        ),
        "{e}"
    );
    // Counts that do not match the length.
    let mut b = good.clone();
    b[32..36].copy_from_slice(&(c.v6 + 1).to_le_bytes());
    let e = World::from_vec(reseal(b)).expect_err("bad counts");
    assert!(
        matches!(
            e,
            WorldError::Inconsistent {
                section: "header",
                ..
            }
        ),
        "{e}"
    );
    // A country code over 676.
    let mut b = good.clone();
    let at = l.records.0 + 8;
    b[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let e = World::from_vec(reseal(b)).expect_err("bad country");
    assert!(
        matches!(
            e,
            WorldError::Inconsistent {
                section: "records",
                ..
            }
        ),
        "{e}"
    );
    // A further source's country over 676, and a record 0 that knows one.
    for (rec, val) in [(1usize, 1000u16), (0, 5)] {
        let mut b = good.clone();
        let at = l.extra_geo.0 + rec * 2;
        b[at..at + 2].copy_from_slice(&val.to_le_bytes());
        let e = World::from_vec(reseal(b)).expect_err("bad extra country");
        assert!(
            matches!(
                e,
                WorldError::Inconsistent {
                    section: "extra geo",
                    ..
                }
            ),
            "{e}"
        );
    }
    // A version 2 header with a further source, and a version 3 one
    // without.
    let mut b = good.clone();
    b[8] = 2;
    let e = World::from_vec(reseal(b)).expect_err("v2 with extras");
    assert!(
        matches!(
            e,
            WorldError::Inconsistent {
                section: "header",
                ..
            }
        ),
        "{e}"
    );
    let mut b = small_world_bytes();
    b[8] = 3;
    let e = World::from_vec(reseal(b)).expect_err("v3 without extras");
    assert!(
        matches!(
            e,
            WorldError::Inconsistent {
                section: "header",
                ..
            }
        ),
        "{e}"
    );
    // Meta that is not JSON.
    let mut b = good.clone();
    b[l.meta.0] = b'!';
    let e = World::from_vec(reseal(b)).expect_err("bad meta");
    assert!(
        matches!(
            e,
            WorldError::Inconsistent {
                section: "meta",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn open_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("w.gwdb");
    std::fs::write(&p, &built_bytes()[..100]).expect("write");
    let e = World::open(&p).expect_err("truncated").to_string();
    assert!(e.contains("w.gwdb") && e.contains("truncated"), "{e}");
    let e = World::open(dir.path().join("missing.gwdb"))
        .expect_err("missing")
        .to_string();
    assert!(e.contains("missing.gwdb"), "{e}");
}

// ---- Model-based property test -------------------------------------------

#[derive(Debug, Clone)]
struct R {
    layer: usize,
    start: u128,
    end: u128,
    val: u32,
}

/// The naive answer: per layer, the smallest range containing `x`, the
/// first added winning ties.
fn oracle(ranges: &[R], layer: usize, x: u128) -> Option<u32> {
    let mut best: Option<(u128, u32)> = None;
    for r in ranges.iter().filter(|r| r.layer == layer) {
        if r.start <= x && x <= r.end {
            let size = r.end - r.start;
            if best.is_none_or(|(s, _)| size < s) {
                best = Some((size, r.val));
            }
        }
    }
    best.map(|b| b.1)
}

fn arb_ranges(v6: bool) -> impl Strategy<Value = Vec<R>> {
    // Addresses drawn from a small window (with fine structure in IPv6 and
    // bucket-crossing in IPv4) so that ranges overlap often.
    let base: u128 = if v6 {
        0x2001_0db8_0000_0000_0000_0000_0000_0000
    } else {
        0x0A00_FF00
    };
    let point = move || {
        prop_oneof![
            (0u128..600).prop_map(move |o| base + o),
            (0u128..8, 0u128..4).prop_map(move |(hi, lo)| if v6 {
                base + (hi << 64) + lo * 0x1000
            } else {
                base + (hi << 14) + lo
            }),
        ]
    };
    proptest::collection::vec((0usize..6, point(), point(), 1u32..6), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|(layer, a, b, val)| R {
                layer,
                start: a.min(b),
                end: a.max(b),
                val,
            })
            .collect()
    })
}

fn to_ip(v6: bool, x: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(x))
    } else {
        IpAddr::V4(Ipv4Addr::from(x as u32))
    }
}

fn check_model(ranges: &[R], v6: bool) -> Result<(), TestCaseError> {
    let mut b = WorldBuilder::new();
    // Layers 4 and 5 are further geolocation sources (slots 2 and 3).
    b.add_geo_source("x2").map_err(TestCaseError::fail)?;
    b.add_geo_source("x3").map_err(TestCaseError::fail)?;
    let countries = ["AA", "BB", "CN", "DE", "EE", "FR"];
    for r in ranges {
        let (s, e) = (to_ip(v6, r.start), to_ip(v6, r.end));
        let c = cc(countries[r.val as usize]);
        match r.layer {
            0 | 1 => b.add_geo(r.layer, s, e, c),
            2 => b.add_network(s, e, c),
            3 => b.add_asn(s, e, 64_496 + r.val, &format!("org{}", r.val)),
            extra => b.add_geo(extra - 2, s, e, c),
        }
        .map_err(TestCaseError::fail)?;
    }
    let (bytes, _) = b
        .build(&mut no_progress())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let w = World::from_vec(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut probes: Vec<u128> = ranges
        .iter()
        .flat_map(|r| [r.start, r.end, r.start.saturating_sub(1), r.end + 1])
        .collect();
    probes.push(0);
    for &x in &probes {
        if !v6 && x > u128::from(u32::MAX) {
            continue;
        }
        let i = w.lookup(to_ip(v6, x));
        let want_c = |layer| oracle(ranges, layer, x).and_then(|v| cc(countries[v as usize]));
        prop_assert_eq!(i.geo_sources().get(0), want_c(0), "geo0 at {:x}", x);
        prop_assert_eq!(i.geo_sources().get(1), want_c(1), "geo1 at {:x}", x);
        prop_assert_eq!(i.geo_sources().get(2), want_c(4), "geo2 at {:x}", x);
        prop_assert_eq!(i.geo_sources().get(3), want_c(5), "geo3 at {:x}", x);
        prop_assert_eq!(i.network_country(), want_c(2), "net at {:x}", x);
        prop_assert_eq!(
            i.asn(),
            oracle(ranges, 3, x).map(|v| 64_496 + v),
            "asn at {:x}",
            x
        );
    }
    // The batched path answers exactly as the single one.
    let ips: Vec<IpAddr> = probes
        .iter()
        .filter(|&&x| v6 || x <= u128::from(u32::MAX))
        .map(|&x| to_ip(v6, x))
        .collect();
    let mut many = Vec::new();
    w.lookup_many(&ips, &mut many);
    prop_assert_eq!(many.len(), ips.len());
    for (ip, got) in ips.iter().zip(&many) {
        let one = w.lookup(*ip);
        prop_assert_eq!(
            (got.geo_sources(), got.network_country(), got.asn()),
            (one.geo_sources(), one.network_country(), one.asn()),
            "at {}",
            ip
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn lookups_match_the_model_v4(ranges in arb_ranges(false)) {
        check_model(&ranges, false)?;
    }

    #[test]
    fn lookups_match_the_model_v6(ranges in arb_ranges(true)) {
        check_model(&ranges, true)?;
    }

    /// Any mutation of a valid file either fails to load with an error or
    /// loads and answers lookups without panicking.
    #[test]
    fn mutated_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        reseal_it in any::<bool>(),
        probe in any::<u128>(),
    ) {
        let mut b = built_bytes();
        for (i, v) in edits {
            let at = i.index(b.len());
            b[at] = v;
        }
        let b = if reseal_it && b.len() > 4 { reseal(b) } else { b };
        if let Ok(w) = World::from_vec(b) {
            let _ = w.lookup(IpAddr::V6(Ipv6Addr::from(probe))).as_org();
            let _ = w.lookup(IpAddr::V4(Ipv4Addr::from(probe as u32))).as_org();
        }
    }
}

#[test]
fn embedded_ipv4_forms() {
    use std::net::Ipv4Addr;
    let e = |s: &str| embedded_ipv4(ip(s));
    let v4 = Ipv4Addr::new(203, 0, 113, 5);
    assert_eq!(e("64:ff9b::203.0.113.5"), Some((Embedding::Nat64, v4)));
    assert_eq!(
        e("64:ff9b:1::cb00:7105"),
        Some((Embedding::Nat64Local, v4)),
        "RFC 8215 local use, as a /96"
    );
    assert_eq!(
        e("64:ff9b:1:ab:12::cb00:7105"),
        Some((Embedding::Nat64Local, v4)),
        "any /96 inside the local-use /48"
    );
    assert_eq!(e("2002:cb00:7105::1"), Some((Embedding::SixToFour, v4)));
    // Teredo: server 65.54.227.120, client 203.0.113.5 inverted.
    assert_eq!(
        e("2001:0:4136:e378:8000:63bf:34ff:8efa"),
        Some((Embedding::Teredo, v4))
    );
    assert_eq!(e("::203.0.113.5"), Some((Embedding::Compatible, v4)));
    for none in [
        "::",
        "::1",
        "2001:db8::1",
        "2400:3200::1",
        "203.0.113.5",
        "::ffff:203.0.113.5",
    ] {
        assert_eq!(e(none), None, "{none}");
    }
}

/// RFC 6052 section 2.4's table: 192.0.2.33 under each prefix length.
#[test]
fn rfc6052_layouts() {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let want = Ipv4Addr::new(192, 0, 2, 33);
    for (len, addr) in [
        (32, "2001:db8:c000:221::"),
        (40, "2001:db8:1c0:2:21::"),
        (48, "2001:db8:122:c000:2:2100::"),
        (56, "2001:db8:122:3c0:0:221::"),
        (64, "2001:db8:122:344:c0:2:2100:0"),
        (96, "2001:db8:122:344::192.0.2.33"),
    ] {
        let a: Ipv6Addr = addr.parse().expect("addr");
        assert_eq!(rfc6052_extract(a, len), Some(want), "/{len}");
    }
    assert_eq!(rfc6052_extract(Ipv6Addr::LOCALHOST, 50), None);
}
