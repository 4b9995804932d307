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
    }
}
