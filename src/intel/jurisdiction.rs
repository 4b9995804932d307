//! A destination's jurisdiction, layer by layer, with the evidence for each.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Operator, Vendor, VendorEvidence};
use super::country::Country;
use super::world::{Embedding, GeoAnswers, MAX_GEO, World, embedded_ipv4, lookup_key};

/// The four jurisdiction layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Where the server is (every geolocation source).
    Geo,
    /// Where the announcing AS is registered.
    Network,
    /// The ultimate parent of the network operator (operator catalog).
    Owner,
    /// The company running the service (vendor catalog).
    Vendor,
}

impl Layer {
    /// All layers, in order.
    pub const ALL: [Layer; 4] = [Layer::Geo, Layer::Network, Layer::Owner, Layer::Vendor];

    /// Bit for a layer set.
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The layer's name.
    pub const fn name(self) -> &'static str {
        match self {
            Layer::Geo => "geo",
            Layer::Network => "network",
            Layer::Owner => "owner",
            Layer::Vendor => "vendor",
        }
    }
}

/// Everything known about where a destination answers to.
#[derive(Debug, Clone, Copy)]
pub struct Jurisdiction<'i, 'n> {
    /// The address looked up (after IPv4-mapped IPv6 is unwrapped).
    pub ip: Option<IpAddr>,
    /// Each geolocation source's country.
    pub geo: GeoAnswers,
    /// The geolocation sources' names, in the order of `geo`.
    pub geo_names: &'i [String],
    /// The AS registration country.
    pub network: Option<Country>,
    /// The announcing AS.
    pub asn: Option<u32>,
    /// The operator and its parent, when the AS is in the operator catalog.
    pub owner: Option<&'i Operator>,
    /// The vendor and how it was recognised.
    pub vendor: Option<(&'i Vendor, VendorEvidence<'n>)>,
    /// The address is in an IANA special-purpose block (private, loopback,
    /// link-local, multicast, ...) with no data: it is local, not unknown.
    pub local: bool,
    /// The IPv4 address an IPv6 address embeds (NAT64, 6to4, Teredo,
    /// IPv4-compatible), with what is known of it: its countries count in
    /// every layer too.
    pub embedded: Option<Embedded<'i>>,
}

/// What is known of an embedded IPv4 address.
#[derive(Debug, Clone, Copy)]
pub struct Embedded<'i> {
    /// How it is embedded.
    pub kind: Embedding,
    /// The IPv4 address.
    pub ip: std::net::Ipv4Addr,
    /// Its geolocation sources' countries.
    pub geo: GeoAnswers,
    /// Its AS registration country.
    pub network: Option<Country>,
    /// Its AS.
    pub asn: Option<u32>,
    /// Its operator.
    pub owner: Option<&'i Operator>,
}

impl Jurisdiction<'_, '_> {
    /// True when the world database knows nothing of the address (or
    /// there is no address) and it is not a local address.
    pub fn geo_unknown(&self) -> bool {
        !self.local && self.geo.is_unknown() && self.embedded.is_none_or(|e| e.geo.is_unknown())
    }

    /// True when the AS registration country is unknown (and the address is
    /// not local).
    pub fn network_unknown(&self) -> bool {
        !self.local && self.network.is_none() && self.embedded.is_none_or(|e| e.network.is_none())
    }

    /// The countries one layer names (geo: each source's country), the
    /// embedded IPv4 address's included; duplicates removed.
    pub fn countries(&self, layer: Layer) -> [Option<Country>; 2 * MAX_GEO] {
        let e = self.embedded;
        let mut raw = [None; 2 * MAX_GEO];
        match layer {
            Layer::Geo => {
                let own = self.geo.as_slice();
                raw[..own.len()].copy_from_slice(own);
                if let Some(e) = e {
                    let emb = e.geo.as_slice();
                    raw[own.len()..own.len() + emb.len()].copy_from_slice(emb);
                }
            }
            Layer::Network => {
                raw[0] = self.network;
                raw[1] = e.and_then(|e| e.network);
            }
            Layer::Owner => {
                raw[0] = self.owner.map(|o| o.jurisdiction);
                raw[1] = e.and_then(|e| e.owner).map(|o| o.jurisdiction);
            }
            Layer::Vendor => raw[0] = self.vendor.map(|v| v.0.jurisdiction),
        }
        let mut out = [None; 2 * MAX_GEO];
        let mut n = 0;
        for c in raw.into_iter().flatten() {
            if !out[..n].contains(&Some(c)) {
                out[n] = Some(c);
                n += 1;
            }
        }
        out
    }

    /// A JSON description of every layer and its evidence.
    pub fn to_json(&self) -> serde_json::Value {
        let geo: serde_json::Map<String, serde_json::Value> = self
            .geo_names
            .iter()
            .zip(self.geo.as_slice())
            .map(|(n, c)| (n.clone(), serde_json::json!(c)))
            .collect();
        serde_json::json!({
            "ip": self.ip,
            "local": self.local,
            "geo": geo,
            "network": { "country": self.network, "asn": self.asn },
            "owner": self.owner.map(|o| serde_json::json!({
                "country": o.jurisdiction, "operator": o.name, "parent": o.parent, "operator_id": o.id,
            })),
            "vendor": self.vendor.map(|(v, ev)| serde_json::json!({
                "country": v.jurisdiction, "vendor": v.name, "vendor_id": v.id, "evidence": ev,
            })),
            "embedded": self.embedded.map(|e| serde_json::json!({
                "kind": e.kind, "ipv4": e.ip, "geo": e.geo.as_slice(), "network": e.network, "asn": e.asn,
                "owner": e.owner.map(|o| o.id.as_str()),
            })),
        })
    }
}

/// The world database: where addresses are and whose networks they are
/// on. Cheap to clone. The catalogs (owners, vendors) are not here: a
/// policy carries the ones it was compiled against (a rules bundle brings
/// its own), and every question about owners and vendors names them, so no
/// answer can come from a stale copy.
#[derive(Debug, Clone)]
pub struct Intel {
    world: Arc<World>,
    /// NAT64 prefixes the device uses beside the well-known and local-use
    /// ones (a carrier's), at most [`MAX_NAT64_PREFIXES`].
    nat64: Arc<Vec<ipnet::Ipv6Net>>,
}

/// The world database a running engine follows: replaced whole by a world
/// update ([`crate::policy::bundle::open_world`]); the engine sees the
/// new generation at its next packet or timer and judges its open flows
/// again.
#[derive(Debug)]
pub struct WorldHandle {
    world: arc_swap::ArcSwap<World>,
    generation: std::sync::atomic::AtomicU64,
}

impl WorldHandle {
    /// Starts with `world` (generation 0).
    pub fn new(world: Arc<World>) -> Self {
        Self {
            world: arc_swap::ArcSwap::new(world),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The current database.
    pub fn current(&self) -> Arc<World> {
        self.world.load_full()
    }

    /// Replaces the database.
    pub fn replace(&self, w: World) {
        self.world.store(Arc::new(w));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// How many times it was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// NAT64 prefixes kept at most (configured and discovered together).
pub const MAX_NAT64_PREFIXES: usize = 8;

impl Intel {
    /// Wraps a world database.
    pub fn new(world: Arc<World>) -> Self {
        Self {
            world,
            nat64: Arc::default(),
        }
    }

    /// The same, with these NAT64 prefixes too: an address under one
    /// carries the jurisdiction of the IPv4 address it embeds (RFC 6052
    /// layout of the prefix's length). Duplicates are kept once; past
    /// [`MAX_NAT64_PREFIXES`] the oldest give way.
    ///
    /// # Errors
    /// A prefix length RFC 6052 does not allow (32, 40, 48, 56, 64, 96).
    pub fn with_nat64(&self, prefixes: &[ipnet::Ipv6Net]) -> Result<Self, String> {
        let mut all: Vec<ipnet::Ipv6Net> = self.nat64.as_ref().clone();
        for p in prefixes {
            if !super::world::RFC6052_LENGTHS.contains(&p.prefix_len()) {
                return Err(format!(
                    "NAT64 prefix {p}: RFC 6052 allows the lengths /32, /40, /48, /56, /64 and /96"
                ));
            }
            let p = p.trunc();
            if !all.contains(&p) {
                all.push(p);
            }
        }
        let extra = all.len().saturating_sub(MAX_NAT64_PREFIXES);
        all.drain(..extra);
        Ok(Self {
            world: Arc::clone(&self.world),
            nat64: Arc::new(all),
        })
    }

    /// The same NAT64 prefixes over another world database.
    pub fn with_world(&self, world: Arc<World>) -> Self {
        Self {
            world,
            nat64: Arc::clone(&self.nat64),
        }
    }

    /// The NAT64 prefixes in use besides the well-known ones.
    pub fn nat64_prefixes(&self) -> &[ipnet::Ipv6Net] {
        &self.nat64
    }

    /// The IPv4 address `ip` embeds: under one of the device's NAT64
    /// prefixes, or in a well-known form ([`embedded_ipv4`]).
    pub fn embedded(&self, ip: IpAddr) -> Option<(Embedding, std::net::Ipv4Addr)> {
        if let IpAddr::V6(v6) = ip
            && let Some(p) = self.nat64.iter().find(|p| p.contains(&v6))
        {
            return super::world::rfc6052_extract(v6, p.prefix_len())
                .map(|v4| (Embedding::Nat64Prefix, v4));
        }
        embedded_ipv4(ip)
    }

    /// The world database.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Places a destination known by an address and/or names, with the
    /// application protocol the classifier reported (for vendor
    /// signatures), owners and vendors from `catalog` (the policy's:
    /// [`crate::policy::Policy::catalog`]). Allocates nothing.
    pub fn jurisdiction<'a, 'n>(
        &'a self,
        catalog: &'a Catalog,
        ip: Option<IpAddr>,
        names: &[&'n str],
        protocol: Option<&'n str>,
    ) -> Jurisdiction<'a, 'n> {
        let key = ip.map(lookup_key);
        let info = key.map(|k| self.world.lookup(k));
        let asn = info.and_then(|i| i.asn());
        let geo = info.map_or(GeoAnswers::default(), |i| i.geo_sources());
        let network = info.and_then(|i| i.network_country());
        let embedded = key.and_then(|k| self.embedded(k)).map(|(kind, v4)| {
            let i = self.world.lookup_v4(v4);
            Embedded {
                kind,
                ip: v4,
                geo: i.geo_sources(),
                network: i.network_country(),
                asn: i.asn(),
                owner: i.asn().and_then(|a| catalog.operator_of(a)),
            }
        });
        // Only addresses the world knows nothing about can be local.
        let local = geo.is_unknown()
            && network.is_none()
            && key.is_some_and(is_special_purpose)
            && embedded.is_none_or(|e| e.geo.is_unknown() && e.network.is_none());
        Jurisdiction {
            embedded,
            ip: key,
            geo,
            geo_names: self.world.geo_source_names(),
            network,
            asn,
            owner: asn.and_then(|a| catalog.operator_of(a)),
            vendor: catalog.vendor_of(names, asn, protocol),
            local,
        }
    }
}

/// True for addresses in the IANA special-purpose blocks listed in
/// [`super::world::SPECIAL_PURPOSE`].
pub fn is_special_purpose(ip: IpAddr) -> bool {
    use std::sync::OnceLock;
    static NETS: OnceLock<Vec<ipnet::IpNet>> = OnceLock::new();
    let nets = NETS.get_or_init(|| {
        super::world::SPECIAL_PURPOSE
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    });
    let ip = lookup_key(ip);
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses() {
        for a in [
            "10.1.2.3",
            "192.168.0.1",
            "127.0.0.1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "2001:db8::5",
        ] {
            assert!(is_special_purpose(a.parse().expect("ip")), "{a}");
        }
        for a in ["8.8.8.8", "2400:3200::1", "47.74.0.1"] {
            assert!(!is_special_purpose(a.parse().expect("ip")), "{a}");
        }
    }

    #[cfg(feature = "embedded-world")]
    #[test]
    fn layers_for_the_reference_addresses() {
        let intel = Intel::new(crate::intel::world::embedded().expect("world"));
        let cat = Catalog::shipped().expect("catalog");
        let j = intel.jurisdiction(&cat, Some("47.74.0.1".parse().expect("ip")), &[], None);
        assert_eq!(
            j.countries(Layer::Geo)[0].map(|c| c.to_string()),
            Some("US".into())
        );
        assert_eq!(j.network.map(|c| c.to_string()), Some("CN".into()));
        assert_eq!(j.owner.map(|o| o.id.as_str()), Some("alibaba"));
        assert!(j.vendor.is_none());
        let j = intel.jurisdiction(&cat, None, &["104-166-161-75.edge.agora.io"], None);
        assert!(j.geo_unknown() && j.network_unknown());
        assert_eq!(j.vendor.map(|v| v.0.id.as_str()), Some("agora"));
        let j = intel.jurisdiction(&cat, Some("192.168.1.1".parse().expect("ip")), &[], None);
        assert!(j.local && !j.geo_unknown());
    }
}
