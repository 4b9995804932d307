//! A serialisable, owned form of a lookup, with stable field names: the
//! JSON `geowall lookup --json` prints and later reports reuse.

use std::net::IpAddr;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::World;
use crate::intel::country::Country;

/// Each geolocation source's answer by the source's name, in the
/// database's order; serialised as a map from source name to country (or
/// `null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoSources(pub Vec<(String, Option<Country>)>);

impl Serialize for GeoSources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, c) in &self.0 {
            m.serialize_entry(name, c)?;
        }
        m.end()
    }
}

/// Everything the world database says about one address. Unknown values are
/// `None` (JSON `null`), never a guess.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LookupReport {
    /// The address asked about.
    pub ip: IpAddr,
    /// The address the answer is for, when it differs: an IPv4-mapped IPv6
    /// address is answered as its IPv4 address, and an IPv6 address the
    /// data knows nothing about that embeds an IPv4 address (NAT64, 6to4,
    /// Teredo, IPv4-compatible) as the embedded one, as the firewall judges
    /// it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub looked_up: Option<IpAddr>,
    /// The country the geolocation sources agree on; `None` if none knows
    /// or they disagree.
    pub geo_country: Option<Country>,
    /// Each geolocation source's answer.
    pub geo_sources: GeoSources,
    /// True when the geolocation sources disagree.
    pub disputed: bool,
    /// The announcing AS.
    pub asn: Option<u32>,
    /// The AS's organisation.
    pub as_org: Option<String>,
    /// The country the AS is registered in.
    pub network_country: Option<Country>,
}

impl World {
    /// Looks `ip` up and returns an owned report.
    pub fn report(&self, ip: IpAddr) -> LookupReport {
        let mut key = super::lookup_key(ip);
        let mut info = self.lookup(key);
        if info.is_empty()
            && let Some((_, v4)) = super::embedded_ipv4(key)
        {
            key = IpAddr::V4(v4);
            info = self.lookup(key);
        }
        LookupReport {
            ip,
            looked_up: (key != ip).then_some(key),
            geo_country: info.geo_country(),
            geo_sources: GeoSources(
                self.geo_source_names()
                    .iter()
                    .cloned()
                    .zip(info.geo_sources().as_slice().iter().copied())
                    .collect(),
            ),
            disputed: info.disputed(),
            asn: info.asn(),
            as_org: info.as_org().map(str::to_owned),
            network_country: info.network_country(),
        }
    }
}
