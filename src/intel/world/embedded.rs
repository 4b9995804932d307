//! The world database shipped in `rules/world/`, compiled into the binary so
//! that geowall answers offline from any directory.

use std::sync::{Arc, OnceLock};

use super::{World, WorldError};

/// The bytes of `rules/world/world.gwdb` at build time.
pub static EMBEDDED_WORLD: &[u8] = include_bytes!("../../../rules/world/world.gwdb");

/// The shipped world database, validated once per process and copied
/// into huge-page-advised memory (the static bytes are then never touched,
/// so they do not stay resident).
pub fn embedded() -> Result<Arc<World>, WorldError> {
    static WORLD: OnceLock<Result<Arc<World>, String>> = OnceLock::new();
    match WORLD.get_or_init(|| {
        World::from_slice(EMBEDDED_WORLD)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }) {
        Ok(w) => Ok(Arc::clone(w)),
        Err(e) => Err(WorldError::Inconsistent {
            section: "embedded database",
            detail: e.clone(),
        }),
    }
}

/// The shipped world database used in place, for long-running processes
/// that must stay small (the VPN, phones): nothing is copied and only the
/// pages lookups visit become resident. Lookups are slower than with
/// [`embedded`] (4 KiB pages, cold at first); a flow needs one lookup, not
/// one per packet. The full validation of these bytes is in the tests.
pub fn embedded_lean() -> Result<Arc<World>, WorldError> {
    static WORLD: OnceLock<Result<Arc<World>, String>> = OnceLock::new();
    match WORLD.get_or_init(|| {
        World::from_static_trusted(EMBEDDED_WORLD)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }) {
        Ok(w) => Ok(Arc::clone(w)),
        Err(e) => Err(WorldError::Inconsistent {
            section: "embedded database",
            detail: e.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lean_embedding_answers_like_the_validated_one() {
        let full = embedded().expect("the shipped database validates in full");
        let lean = embedded_lean().expect("frame");
        for ip in [
            "112.126.96.46",
            "47.74.0.1",
            "114.114.114.114",
            "2400:3200::1",
            "8.8.8.8",
        ] {
            let ip = ip.parse().expect("ip");
            assert_eq!(
                format!("{:?}", full.lookup(ip)),
                format!("{:?}", lean.lookup(ip)),
                "{ip}"
            );
        }
        // The lean one searches IPv6 without the top level the full one
        // builds at load: the same answers in, at and just before range
        // starts all over the table.
        let keys = full.sec::<8>(full.layout.v6_keys);
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut known = 0;
        for _ in 0..20_000 {
            let at = (next() as usize) % keys.len();
            let start = u128::from(u64::from_le_bytes(keys[at])) << 64;
            let v6 = match next() % 3 {
                0 => start | u128::from(next()),
                1 => start,
                _ => start.wrapping_sub(1),
            };
            let ip = std::net::IpAddr::V6(v6.into());
            assert_eq!(full.lookup(ip).asn(), lean.lookup(ip).asn(), "{ip}");
            known += usize::from(full.lookup(ip).asn().is_some());
            assert_eq!(
                full.lookup(ip).geo_sources(),
                lean.lookup(ip).geo_sources(),
                "{ip}"
            );
            let v4 = std::net::IpAddr::V4((next() as u32).into());
            assert_eq!(full.lookup(v4).asn(), lean.lookup(v4).asn(), "{v4}");
        }
        // Enough of them fall in announced ranges for this to test anything.
        assert!(known > 1_000, "only {known} of 20,000 IPv6 addresses known");
    }
}
