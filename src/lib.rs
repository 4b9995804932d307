//! geowall: a client-side egress firewall that keeps an app's pings and
//! media away from servers under jurisdictions its user blocks.
//!
//! Layers, top to bottom (each uses only those below it): the front ends
//! (the `geowall` binary, the phone library), [`driver`] (TUN, sockets,
//! resolver, on tokio), [`engine`] (sans-IO: packets and time in, packets
//! and events out), [`policy`] (rules and verdicts), [`classify`]
//! (traffic classes and names from payloads), [`intel`] (world database
//! and catalogs) and [`wire`] (packet and protocol parsers). See
//! `docs/layout.md` for the whole design.

pub mod classify;
pub mod driver;
pub mod engine;
pub mod intel;
pub mod policy;
pub mod timefmt;
pub mod wire;
