//! Intelligence about destinations: the world database (geolocation, AS,
//! network registration country) and, later, the vendor and operator
//! catalogs.

pub mod catalog;
pub mod country;
pub mod domain;
pub mod jurisdiction;
pub mod world;

pub use country::Country;
pub use jurisdiction::{Intel, Jurisdiction, Layer};
pub use world::{World, WorldError, WorldInfo};
