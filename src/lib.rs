//! geowall: a client-side egress firewall that keeps an app's pings and
//! media away from servers under jurisdictions its user blocks.
//!
//! Layers, top to bottom (each uses only those below it): front ends
//! (the `geowall` binary), then [`intel`] (world database and catalogs).
//! See `README.md` for the whole design.

pub mod classify;
pub mod driver;
pub mod engine;
pub mod intel;
pub mod policy;
pub mod timefmt;
pub mod wire;
