//! What the engine targets share: the shipped world and catalog, loaded
//! once per process.

use std::sync::{Arc, OnceLock};

use geowall::classify::leak::LeakDetector;
use geowall::engine::dataplane::{Engine, EngineConfig};
use geowall::intel::catalog::Catalog;
use geowall::intel::jurisdiction::Intel;
use geowall::policy::{Policy, PolicyHandle};

struct Shared {
    intel: Intel,
    policy: Arc<PolicyHandle>,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let catalog = Catalog::shipped().expect("shipped catalog");
        let policy = Policy::preset("clubhouse", &catalog).expect("preset");
        let world = geowall::intel::world::embedded_lean().expect("embedded world");
        Shared {
            intel: Intel::new(world),
            policy: Arc::new(PolicyHandle::new(policy)),
        }
    })
}

/// A fresh engine with the clubhouse rules, watching one identifier.
pub fn engine() -> Engine {
    let s = shared();
    let leak = LeakDetector::new(&[("user_id".to_owned(), "4815162342".to_owned())]).ok();
    Engine::new(
        EngineConfig {
            max_flows: 64,
            ..EngineConfig::default()
        },
        s.intel.clone(),
        s.policy.clone(),
        leak,
    )
}
