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
