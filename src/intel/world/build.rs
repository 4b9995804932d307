//! Compiling public data sources into a world database.
//!
//! Each source gives ranges per *layer* (two geolocation sources and up to
//! four further ones, the AS registration country, the AS number). Per
//! layer, where ranges overlap the most specific (smallest) one wins, ties
//! going to the range seen first.
//! The layers are then merged into one step function per address family
//! and encoded (see [`super::format`]).

use crate::timefmt::rfc3339;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
#[cfg(feature = "world-build")]
use std::fs::File;
#[cfg(feature = "world-build")]
use std::io::Read;
use std::net::IpAddr;
#[cfg(feature = "world-build")]
use std::path::Path;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::format::{
    Counts, DEFAULT_STRIDE, FINE, HEADER_LEN, MAX_EXTRA_GEO, MAX_RECORDS, NO_ASN, V4_ENTRY,
    V4_INDEX_LEN, pack_countries,
};
use super::{GEO_SOURCE_NAMES, WorldMeta};
use crate::intel::country::Country;

/// Why a build failed. Input errors name the file and line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source directory lacks files the build needs.
    #[error(
        "{dir}: missing source files: {missing}\n  hint: `rules/world/refresh` fetches and unpacks the pinned sources"
    )]
    MissingSources {
        /// The directory.
        dir: PathBuf,
        /// The missing file names, comma-separated.
        missing: String,
    },
    /// A line of an input is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The MMDB source could not be read.
    #[error("{path}: MaxMind DB error: {message}")]
    Mmdb {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// The data does not fit the format (more than 16.7 million distinct
    /// records, or a section over 4 GiB).
    #[error("the data does not fit the world format: {0}")]
    TooLarge(String),
}

/// Progress of a build, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildProgress {
    /// Reading an input file.
    Reading {
        /// File name.
        file: String,
        /// Bytes read so far.
        done: u64,
        /// Bytes in the file.
        total: u64,
    },
    /// Reading a source whose size in records is not known up front.
    Counting {
        /// File name.
        file: String,
        /// Records read so far.
        done: u64,
    },
    /// A processing stage started.
    Stage(&'static str),
}

/// Where one input came from, recorded in the database and its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// Short name, e.g. `geo-whois-asn-country`.
    pub name: String,
    /// Package it came from, e.g. `npm:@ip-location-db/asn`.
    pub package: String,
    /// Pinned package version.
    pub version: String,
    /// SPDX licence expression or licence name.
    pub licence: String,
    /// SHA-256 of the package archive.
    pub sha256: String,
}

/// Per-input counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputStats {
    /// Ranges read.
    pub ranges: u64,
    /// Ranges that overlap an earlier range of the same layer (resolved by
    /// most-specific-wins).
    pub overlapping: u64,
    /// Ranges whose value meant "unknown" and were skipped.
    pub unknown: u64,
}

/// What a build produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildStats {
    /// Per input layer and family, e.g. `geo-whois-asn-country/ipv4`.
    pub inputs: BTreeMap<String, InputStats>,
    /// IPv4 range starts in the merged table.
    pub v4_entries: u64,
    /// IPv6 /64-granular range starts.
    pub v6_entries: u64,
    /// IPv6 range starts finer than /64.
    pub fine_entries: u64,
    /// Distinct (countries, AS) records.
    pub records: u64,
    /// Distinct AS numbers.
    pub asns: u64,
    /// AS numbers given more than one organisation name (first kept).
    pub asn_name_conflicts: u64,
    /// Blocks forced to "unknown" (see [`SPECIAL_PURPOSE`]).
    #[serde(default)]
    pub masked: Vec<String>,
}

/// The layers every build has; further geolocation sources follow them.
const LAYERS: usize = 4;
const L_NET: usize = 2;
const L_ASN: usize = 3;
const LAYER_NAMES: [&str; LAYERS] = [GEO_SOURCE_NAMES[0], GEO_SOURCE_NAMES[1], "iptoasn", "asn"];

/// One record: packed countries (geo0, geo1, network), AS number, and the
/// further geolocation sources' countries.
type Record = (u32, u32, [u16; MAX_EXTRA_GEO]);

#[derive(Clone, Copy, Debug)]
struct Range {
    start: u128,
    end: u128,
    val: u32,
}

/// Accumulates ranges, then writes a world database.
pub struct WorldBuilder {
    /// `[family][layer]`, family 0 = IPv4, 1 = IPv6; layers past
    /// [`LAYERS`] are the further geolocation sources.
    ranges: [Vec<Vec<Range>>; 2],
    /// The further geolocation sources' names, in slot order from 2.
    extra_geo: Vec<String>,
    stats: BuildStats,
    /// AS number to organisation name.
    asn_names: BTreeMap<u32, String>,
    sources: Vec<SourceInfo>,
    built_at: String,
    /// Ranges where every layer is forced to "unknown", per family.
    mask: [Vec<Range>; 2],
}

/// IANA special-purpose blocks (RFC 6890 and its registries) that belong to
/// no jurisdiction: private, loopback, link-local, shared, documentation,
/// benchmarking, multicast and reserved space. Public sources sometimes
/// geolocate them (the 2026-06 npm data puts 192.168.1.1 in AU and
/// 2001:db8::1 in JP); a firewall must not, or a rule against that country
/// would cut the LAN. Tunnelling prefixes that embed an IPv4 address are
/// resolved by policy, by that address: 6to4, Teredo and the well-known
/// NAT64 prefix are not listed, and the local-use NAT64 `/48` is, so that
/// no source geolocates its addresses themselves.
pub const SPECIAL_PURPOSE: [&str; 25] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:2::/48",
    "2001:db8::/32",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

impl Default for WorldBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn fam_name(f: usize) -> &'static str {
    if f == 0 { "ipv4" } else { "ipv6" }
}

fn to_key(ip: IpAddr) -> (usize, u128) {
    match ip {
        IpAddr::V4(a) => (0, u128::from(u32::from(a))),
        IpAddr::V6(a) => (1, u128::from(a)),
    }
}

impl WorldBuilder {
    /// An empty builder; `built_at` is now, or `SOURCE_DATE_EPOCH` if set.
    pub fn new() -> Self {
        let secs = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
        Self {
            ranges: [vec![Vec::new(); LAYERS], vec![Vec::new(); LAYERS]],
            extra_geo: Vec::new(),
            stats: BuildStats::default(),
            asn_names: BTreeMap::new(),
            sources: Vec::new(),
            built_at: rfc3339(secs),
            mask: Default::default(),
        }
    }

    /// Forces every layer to "unknown" inside [`SPECIAL_PURPOSE`] blocks.
    /// [`WorldBuilder::add_source_dir`] does this; fixture builds do not, so
    /// tests can give documentation ranges made-up jurisdictions.
    pub fn mask_special_purpose(&mut self) {
        for cidr in SPECIAL_PURPOSE {
            if let Ok(net) = cidr.parse::<ipnet::IpNet>() {
                let (f, s) = to_key(net.network());
                let (_, e) = to_key(net.broadcast());
                self.mask[f].push(Range {
                    start: s,
                    end: e,
                    val: 1,
                });
            }
        }
        self.stats.masked = SPECIAL_PURPOSE.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Records where the inputs came from.
    pub fn set_sources(&mut self, sources: Vec<SourceInfo>) {
        self.sources = sources;
    }

    fn layer_name(&self, layer: usize) -> &str {
        match LAYER_NAMES.get(layer) {
            Some(n) => n,
            None => self
                .extra_geo
                .get(layer - LAYERS)
                .map_or("?", String::as_str),
        }
    }

    fn stat(&mut self, layer: usize, fam: usize) -> &mut InputStats {
        let key = format!("{}/{}", self.layer_name(layer), fam_name(fam));
        self.stats.inputs.entry(key).or_default()
    }

    /// Registers a further geolocation source and returns its slot (2 and
    /// up, the order of [`super::World::geo_source_names`]). Names are
    /// letters, digits, `.`, `_` and `-`, and unique; at most four further
    /// sources.
    pub fn add_geo_source(&mut self, name: &str) -> Result<usize, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!(
                "'{name}' is not a source name (1 to 64 letters, digits, '.', '_' or '-')"
            ));
        }
        if GEO_SOURCE_NAMES.contains(&name) || self.extra_geo.iter().any(|n| n == name) {
            return Err(format!(
                "a geolocation source named '{name}' is already in the build"
            ));
        }
        if self.extra_geo.len() == MAX_EXTRA_GEO {
            return Err(format!(
                "at most {MAX_EXTRA_GEO} further geolocation sources fit a world database"
            ));
        }
        self.extra_geo.push(name.to_owned());
        for fam in &mut self.ranges {
            fam.push(Vec::new());
        }
        Ok(1 + self.extra_geo.len())
    }

    fn push(&mut self, layer: usize, start: IpAddr, end: IpAddr, val: u32) -> Result<(), String> {
        let (fs, s) = to_key(start);
        let (fe, e) = to_key(end);
        if fs != fe {
            return Err(format!("range {start}-{end} mixes IPv4 and IPv6"));
        }
        if s > e {
            return Err(format!("range start {start} is after its end {end}"));
        }
        self.ranges[fs][layer].push(Range {
            start: s,
            end: e,
            val,
        });
        self.stat(layer, fs).ranges += 1;
        Ok(())
    }

    /// Adds a geolocation range for source `slot` (0 and 1 are
    /// [`GEO_SOURCE_NAMES`], 2 and up those [`WorldBuilder::add_geo_source`]
    /// registered); `None` records an explicit "unknown".
    pub fn add_geo(
        &mut self,
        slot: usize,
        start: IpAddr,
        end: IpAddr,
        c: Option<Country>,
    ) -> Result<(), String> {
        let layer = match slot {
            0 | 1 => slot,
            _ if slot - 2 < self.extra_geo.len() => LAYERS + slot - 2,
            _ => return Err(format!("no geolocation source in slot {slot}")),
        };
        self.push_country(layer, start, end, c)
    }

    /// Adds an AS registration-country range.
    pub fn add_network(
        &mut self,
        start: IpAddr,
        end: IpAddr,
        c: Option<Country>,
    ) -> Result<(), String> {
        self.push_country(L_NET, start, end, c)
    }

    /// A country range for a country layer; `None` is counted as unknown.
    fn push_country(
        &mut self,
        layer: usize,
        start: IpAddr,
        end: IpAddr,
        c: Option<Country>,
    ) -> Result<(), String> {
        match c {
            Some(c) => self.push(layer, start, end, u32::from(c.packed())),
            None => {
                self.stat(layer, to_key(start).0).unknown += 1;
                Ok(())
            }
        }
    }

    /// Adds an AS range with the organisation's name (an empty name adds
    /// none; the first name given for an AS is kept).
    pub fn add_asn(
        &mut self,
        start: IpAddr,
        end: IpAddr,
        asn: u32,
        org: &str,
    ) -> Result<(), String> {
        if asn == NO_ASN {
            return Err(format!("AS{asn} is reserved (RFC 7300)"));
        }
        match self.asn_names.get_mut(&asn) {
            Some(name) if name.is_empty() => *name = org.to_owned(),
            Some(name) => {
                if !org.is_empty() && name != org {
                    self.stats.asn_name_conflicts += 1;
                }
            }
            None => {
                self.asn_names.insert(asn, org.to_owned());
            }
        }
        self.push(L_ASN, start, end, asn)
    }

    #[cfg(feature = "world-build")]
    /// Reads the pinned public sources from a directory laid out by
    /// `rules/world/refresh`:
    /// `geo-whois-asn-country-ipv4.csv`, `geo-whois-asn-country-ipv6.csv`,
    /// `geoip`, `geoip6` (Tor's IPFire export), `asn-ipv4.csv`,
    /// `asn-ipv6.csv`, `iptoasn-country.mmdb`, and optionally
    /// `SOURCES.json` (a list of [`SourceInfo`]).
    pub fn add_source_dir(
        &mut self,
        dir: &Path,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<(), BuildError> {
        const FILES: [&str; 7] = [
            "geo-whois-asn-country-ipv4.csv",
            "geo-whois-asn-country-ipv6.csv",
            "geoip",
            "geoip6",
            "asn-ipv4.csv",
            "asn-ipv6.csv",
            "iptoasn-country.mmdb",
        ];
        let missing: Vec<&str> = FILES
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(BuildError::MissingSources {
                dir: dir.to_owned(),
                missing: missing.join(", "),
            });
        }
        let sources = dir.join("SOURCES.json");
        if sources.is_file() {
            let text = read_text(&sources)?;
            self.sources = serde_json::from_str(&text).map_err(|e| BuildError::Parse {
                path: sources.clone(),
                line: e.line() as u64,
                message: e.to_string(),
            })?;
        }
        for f in &FILES[0..2] {
            self.read_csv(&dir.join(f), 3, progress, |b, rec| {
                let c = Country::parse_source_code(&rec[2]).map_err(|e| e.to_string())?;
                b.add_geo(0, parse_addr(&rec[0])?, parse_addr(&rec[1])?, c)
            })?;
        }
        for f in &FILES[2..4] {
            self.read_csv(&dir.join(f), 3, progress, |b, rec| {
                let c = Country::parse_source_code(&rec[2]).map_err(|e| e.to_string())?;
                b.add_geo(1, parse_addr(&rec[0])?, parse_addr(&rec[1])?, c)
            })?;
        }
        for f in &FILES[4..6] {
            self.read_csv(&dir.join(f), 4, progress, |b, rec| {
                let asn = parse_asn(&rec[2])?;
                b.add_asn(
                    parse_addr(&rec[0])?,
                    parse_addr(&rec[1])?,
                    asn,
                    rec[3].trim(),
                )
            })?;
        }
        self.read_mmdb(&dir.join(FILES[6]), progress)?;
        self.mask_special_purpose();
        Ok(())
    }

    #[cfg(feature = "world-build")]
    /// Reads a fixture CSV: a header line
    /// `range,geo-whois-asn-country,ipfire-location,asn,as_org,network`, then
    /// one row per range, where `range` is a CIDR (`203.0.113.0/25`) or
    /// `first-last`, and an empty cell means the source says nothing for
    /// that range. `#` starts a comment line.
    pub fn add_fixture_csv(
        &mut self,
        path: &Path,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<(), BuildError> {
        const HEADER: [&str; 6] = [
            "range",
            GEO_SOURCE_NAMES[0],
            GEO_SOURCE_NAMES[1],
            "asn",
            "as_org",
            "network",
        ];
        let mut first = true;
        self.read_csv(path, 6, progress, |b, rec| {
            if std::mem::take(&mut first) {
                let got: Vec<&str> = rec.iter().map(str::trim).collect();
                if got != HEADER {
                    return Err(format!("expected the header '{}'", HEADER.join(",")));
                }
                return Ok(());
            }
            let (s, e) = parse_range(rec[0].trim())?;
            for slot in 0..2 {
                let cell = rec[1 + slot].trim();
                if !cell.is_empty() {
                    let c = Country::parse_source_code(cell).map_err(|e| e.to_string())?;
                    b.add_geo(slot, s, e, c)?;
                }
            }
            if !rec[3].trim().is_empty() {
                b.add_asn(s, e, parse_asn(&rec[3])?, rec[4].trim())?;
            }
            if !rec[5].trim().is_empty() {
                let c = Country::parse_source_code(&rec[5]).map_err(|e| e.to_string())?;
                b.add_network(s, e, c)?;
            }
            Ok(())
        })
    }

    #[cfg(feature = "world-build")]
    fn read_csv(
        &mut self,
        path: &Path,
        columns: usize,
        progress: &mut dyn FnMut(BuildProgress),
        mut row: impl FnMut(&mut Self, &csv::StringRecord) -> Result<(), String>,
    ) -> Result<(), BuildError> {
        let file = File::open(path).map_err(|source| BuildError::Io {
            path: path.to_owned(),
            source,
        })?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
        let mut rec = csv::StringRecord::new();
        let mut n = 0u64;
        loop {
            let line = rdr.position().line();
            match rdr.read_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    return Err(BuildError::Parse {
                        path: path.to_owned(),
                        line: e.position().map(|p| p.line()).unwrap_or(line),
                        message: e.to_string(),
                    });
                }
            }
            let line = rec.position().map(|p| p.line()).unwrap_or(line);
            if rec.len() == 1 && rec[0].trim().is_empty() {
                continue;
            }
            if rec.len() != columns {
                return Err(BuildError::Parse {
                    path: path.to_owned(),
                    line,
                    message: format!("expected {columns} columns, found {}", rec.len()),
                });
            }
            row(self, &rec).map_err(|message| BuildError::Parse {
                path: path.to_owned(),
                line,
                message,
            })?;
            n += 1;
            if n.is_multiple_of(65_536) {
                progress(BuildProgress::Reading {
                    file: name.clone(),
                    done: rdr.position().byte(),
                    total,
                });
            }
        }
        progress(BuildProgress::Reading {
            file: name,
            done: total,
            total,
        });
        Ok(())
    }

    #[cfg(feature = "world-build")]
    fn read_mmdb(
        &mut self,
        path: &Path,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<(), BuildError> {
        #[derive(Deserialize)]
        struct Rec {
            country_code: Option<String>,
        }
        let (reader, _) = open_mmdb(path)?;
        self.mmdb_networks(&reader, path, progress, |b, s, e, rec: Option<Rec>| {
            let cc = rec.and_then(|r| r.country_code).unwrap_or_default();
            let c = Country::parse_source_code(&cc).map_err(|e| e.to_string())?;
            b.add_network(s, e, c)
        })
    }

    #[cfg(feature = "world-build")]
    /// Adds a MaxMind DB file as a further geolocation source and returns
    /// its name: `name`, or one made from the file's `database_type`
    /// (`GeoLite2-Country` becomes `geolite2-country`). The country of a
    /// network is read as the GeoIP2 schema writes it (`country.iso_code`,
    /// as in GeoLite2-Country, GeoIP2-Country and DB-IP lite) or as IPinfo's
    /// do (`country_code`, or a two-letter `country`); the AS registration
    /// country (`registered_country`) is not a location and is not read.
    /// Where the file says nothing the source counts as not knowing.
    pub fn add_geo_mmdb(
        &mut self,
        name: Option<&str>,
        path: &Path,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<String, BuildError> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum CountryField {
            Map { iso_code: Option<String> },
            Code(String),
            Other(serde::de::IgnoredAny),
        }
        #[derive(Deserialize)]
        struct Rec {
            country_code: Option<String>,
            country: Option<CountryField>,
        }
        let (reader, sha) = open_mmdb(path)?;
        let meta = reader.metadata();
        let name = match name {
            Some(n) => n.to_owned(),
            None => source_name(&meta.database_type),
        };
        let slot = self
            .add_geo_source(&name)
            .map_err(|message| BuildError::Mmdb {
                path: path.to_owned(),
                message,
            })?;
        self.sources.push(SourceInfo {
            name: name.clone(),
            package: format!(
                "file:{} ({})",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                meta.database_type
            ),
            version: rfc3339(meta.build_epoch),
            licence: licence_of(&meta.database_type).to_owned(),
            sha256: sha.iter().map(|b| format!("{b:02x}")).collect(),
        });
        self.mmdb_networks(&reader, path, progress, |b, s, e, rec: Option<Rec>| {
            let code = rec.and_then(|r| {
                r.country_code.or(match r.country {
                    Some(CountryField::Map { iso_code }) => iso_code,
                    Some(CountryField::Code(c)) if c.trim().len() == 2 => Some(c),
                    _ => None,
                })
            });
            let c = Country::parse_source_code(code.as_deref().unwrap_or(""))
                .map_err(|e| e.to_string())?;
            b.add_geo(slot, s, e, c)
        })?;
        Ok(name)
    }

    #[cfg(feature = "world-build")]
    /// Every network of a MaxMind DB with data, decoded as `T`, to `row`;
    /// errors name the file and the network.
    fn mmdb_networks<T: serde::de::DeserializeOwned>(
        &mut self,
        reader: &maxminddb::Reader<Vec<u8>>,
        path: &Path,
        progress: &mut dyn FnMut(BuildProgress),
        mut row: impl FnMut(&mut Self, IpAddr, IpAddr, Option<T>) -> Result<(), String>,
    ) -> Result<(), BuildError> {
        let err = |e: maxminddb::MaxMindDbError| BuildError::Mmdb {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut n = 0u64;
        for item in reader
            .networks(maxminddb::WithinOptions::default())
            .map_err(err)?
        {
            let item = item.map_err(err)?;
            let net = item.network().map_err(err)?;
            let rec: Option<T> = item.decode().map_err(|e| BuildError::Mmdb {
                path: path.to_owned(),
                message: format!("network {net}: {e}"),
            })?;
            row(self, net.network(), net.broadcast(), rec).map_err(|message| BuildError::Mmdb {
                path: path.to_owned(),
                message: format!("network {net}: {message}"),
            })?;
            n += 1;
            if n.is_multiple_of(65_536) {
                progress(BuildProgress::Counting {
                    file: name.clone(),
                    done: n,
                });
            }
        }
        progress(BuildProgress::Counting {
            file: name,
            done: n,
        });
        Ok(())
    }

    /// Compiles everything added so far into database bytes.
    pub fn build(
        mut self,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<(Vec<u8>, BuildStats), BuildError> {
        progress(BuildProgress::Stage(
            "resolving overlaps (most specific wins)",
        ));
        let empty: Record = (0, NO_ASN, [0; MAX_EXTRA_GEO]);
        let mut records: Vec<Record> = vec![empty];
        let mut rec_ids: HashMap<Record, u32> = HashMap::from([(empty, 0)]);
        let layers = LAYERS + self.extra_geo.len();
        let mut merged: [Vec<(u128, u32)>; 2] = Default::default();
        for (fam, merged_fam) in merged.iter_mut().enumerate() {
            let max = if fam == 0 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            let mut flat: Vec<Vec<(u128, Option<u32>)>> = Vec::with_capacity(layers + 1);
            for layer in 0..layers {
                let ranges = std::mem::take(&mut self.ranges[fam][layer]);
                let (f, overlapping) = flatten(ranges, max);
                if overlapping > 0 {
                    self.stat(layer, fam).overlapping += overlapping;
                }
                flat.push(f);
            }
            flat.push(flatten(std::mem::take(&mut self.mask[fam]), max).0);
            progress(BuildProgress::Stage("merging layers"));
            *merged_fam = merge(&flat, |vals| {
                if vals[layers].is_some() {
                    return 0;
                }
                let c = |v: Option<u32>| v.unwrap_or(0) as u16;
                let mut extra = [0; MAX_EXTRA_GEO];
                for (e, v) in extra.iter_mut().zip(&vals[LAYERS..layers]) {
                    *e = c(*v);
                }
                let key = (
                    pack_countries(c(vals[0]), c(vals[1]), c(vals[L_NET])),
                    vals[L_ASN].unwrap_or(NO_ASN),
                    extra,
                );
                let next = records.len() as u32;
                *rec_ids.entry(key).or_insert_with(|| {
                    records.push(key);
                    next
                })
            });
        }
        if records.len() > MAX_RECORDS {
            return Err(BuildError::TooLarge(format!(
                "{} distinct records",
                records.len()
            )));
        }

        progress(BuildProgress::Stage("encoding"));
        let v4 = &merged[0];
        let (v6, fine) = split_v6(&merged[1]);
        let mut names = String::new();
        let asns = std::mem::take(&mut self.asn_names);
        let mut asn_rows = Vec::with_capacity(asns.len());
        for (asn, name) in &asns {
            names.push_str(name);
            asn_rows.push((*asn, names.len() as u32));
        }
        self.stats.v4_entries = v4.len() as u64;
        self.stats.v6_entries = v6.len() as u64;
        self.stats.fine_entries = fine.len() as u64;
        self.stats.records = records.len() as u64;
        self.stats.asns = asns.len() as u64;
        let meta = WorldMeta {
            built_at: self.built_at.clone(),
            geo_sources: GEO_SOURCE_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .chain(self.extra_geo.iter().cloned())
                .collect(),
            network_source: LAYER_NAMES[L_NET].to_owned(),
            asn_source: LAYER_NAMES[L_ASN].to_owned(),
            sources: self.sources.clone(),
            stats: self.stats.clone(),
        };
        let meta_json =
            serde_json::to_vec(&meta).map_err(|e| BuildError::TooLarge(e.to_string()))?;
        let too_large = |what: &str| BuildError::TooLarge(format!("too many {what}"));
        let counts = Counts {
            meta_len: u32::try_from(meta_json.len()).map_err(|_| too_large("meta bytes"))?,
            v4: u32::try_from(v4.len()).map_err(|_| too_large("IPv4 ranges"))?,
            v6: u32::try_from(v6.len()).map_err(|_| too_large("IPv6 ranges"))?,
            fine: u32::try_from(fine.len()).map_err(|_| too_large("fine IPv6 ranges"))?,
            records: records.len() as u32,
            asns: u32::try_from(asns.len()).map_err(|_| too_large("ASNs"))?,
            names_len: u32::try_from(names.len()).map_err(|_| too_large("name bytes"))?,
            stride: DEFAULT_STRIDE,
            extra_geo: self.extra_geo.len() as u32,
        };
        let l = counts.layout().ok_or_else(|| too_large("bytes"))?;
        let mut out = vec![0u8; l.file_len];
        out[..HEADER_LEN].copy_from_slice(&counts.header(l.file_len as u64));
        out[l.meta.0..l.meta.1].copy_from_slice(&meta_json);
        // v4 bucket index: idx[b] = entries with top-16 < b.
        let mut idx = vec![0u32; V4_INDEX_LEN];
        for &(p, _) in v4 {
            idx[(p >> 16) as usize + 1] += 1;
        }
        for b in 1..V4_INDEX_LEN {
            idx[b] += idx[b - 1];
        }
        put_all(&mut out, l.v4_index.0, idx.iter().map(|v| v.to_le_bytes()));
        put_all(
            &mut out,
            l.v4_entries.0,
            v4.iter().map(|&(p, r)| {
                let k = (p as u16).to_le_bytes();
                let r = r.to_le_bytes();
                [k[0], k[1], r[0], r[1], r[2]]
            }),
        );
        debug_assert_eq!(V4_ENTRY, 5);
        put_all(
            &mut out,
            l.v6_keys.0,
            v6.iter().map(|&(k, _)| k.to_le_bytes()),
        );
        put_all(&mut out, l.v6_vals.0, v6.iter().map(|&(_, v)| u24(v)));
        put_all(
            &mut out,
            l.v6_sample.0,
            v6.iter()
                .step_by(DEFAULT_STRIDE as usize)
                .map(|&(k, _)| k.to_le_bytes()),
        );
        put_all(
            &mut out,
            l.fine_keys.0,
            fine.iter().map(|&(k, _)| k.to_le_bytes()),
        );
        put_all(&mut out, l.fine_vals.0, fine.iter().map(|&(_, v)| u24(v)));
        put_all(
            &mut out,
            l.records.0,
            records.iter().map(|&(c, a, _)| {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&c.to_le_bytes());
                b[4..].copy_from_slice(&a.to_le_bytes());
                b
            }),
        );
        let extra = self.extra_geo.len();
        put_all(
            &mut out,
            l.extra_geo.0,
            records
                .iter()
                .flat_map(|(_, _, e)| e[..extra].iter().map(|c| c.to_le_bytes())),
        );
        put_all(
            &mut out,
            l.asns.0,
            asn_rows.iter().map(|&(a, end)| {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&a.to_le_bytes());
                b[4..].copy_from_slice(&end.to_le_bytes());
                b
            }),
        );
        out[l.names.0..l.names.1].copy_from_slice(names.as_bytes());
        let body = out.len() - 4;
        let crc = crc32fast::hash(&out[..body]);
        out[body..].copy_from_slice(&crc.to_le_bytes());
        Ok((out, self.stats))
    }
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

fn put_all<const N: usize>(out: &mut [u8], mut at: usize, items: impl Iterator<Item = [u8; N]>) {
    for it in items {
        out[at..at + N].copy_from_slice(&it);
        at += N;
    }
}

#[cfg(feature = "world-build")]
/// Opens a MaxMind DB file; with it, the SHA-256 of its bytes.
fn open_mmdb(path: &Path) -> Result<(maxminddb::Reader<Vec<u8>>, [u8; 32]), BuildError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| BuildError::Io {
            path: path.to_owned(),
            source,
        })?;
    let sha = crate::policy::bundle::sha256(&bytes);
    let reader = maxminddb::Reader::from_source(bytes).map_err(|e| BuildError::Mmdb {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok((reader, sha))
}

#[cfg(feature = "world-build")]
/// A source name made from an MMDB `database_type`: lowercase, every
/// character other than a letter, digit, `.`, `_` or `-` made `-`, a
/// trailing `.mmdb` dropped.
fn source_name(database_type: &str) -> String {
    let t = database_type.trim();
    let t = t.strip_suffix(".mmdb").unwrap_or(t);
    let n: String = t
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if n.is_empty() { "mmdb".to_owned() } else { n }
}

#[cfg(feature = "world-build")]
/// The licence a publisher states for its free country database, by its
/// `database_type`.
fn licence_of(database_type: &str) -> &'static str {
    let t = database_type.to_ascii_lowercase();
    if t.starts_with("geolite2") {
        "GeoLite2 End User License Agreement (MaxMind)"
    } else if t.starts_with("dbip") || t.starts_with("db-ip") {
        "CC-BY-4.0 (DB-IP lite)"
    } else if t.starts_with("ipinfo") {
        "CC-BY-SA-4.0 (IPinfo Lite)"
    } else {
        "unknown: see the publisher's terms"
    }
}

#[cfg(feature = "world-build")]
fn read_text(path: &Path) -> Result<String, BuildError> {
    std::fs::read_to_string(path).map_err(|source| BuildError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(feature = "world-build")]
/// An address as written in the sources: dotted IPv4, IPv6 text, or a
/// decimal IPv4 number (Tor's `geoip`).
fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u32>()
            .map(|n| IpAddr::V4(n.into()))
            .map_err(|_| format!("'{s}' is not an IPv4 number (over 4294967295)"));
    }
    s.parse().map_err(|_| format!("'{s}' is not an IP address"))
}

#[cfg(feature = "world-build")]
fn parse_asn(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("AS")
        .or_else(|| t.strip_prefix("as"))
        .unwrap_or(t);
    t.parse()
        .map_err(|_| format!("'{}' is not an AS number", s.trim()))
}

#[cfg(feature = "world-build")]
/// A CIDR (`192.0.2.0/25`) or an inclusive `first-last` range.
fn parse_range(s: &str) -> Result<(IpAddr, IpAddr), String> {
    if let Some((a, b)) = s.split_once('-') {
        return Ok((parse_addr(a)?, parse_addr(b)?));
    }
    let net: ipnet::IpNet = s
        .parse()
        .map_err(|_| format!("'{s}' is neither a CIDR nor a first-last range"))?;
    if net.network() != net.addr() {
        return Err(format!(
            "'{s}' has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok((net.network(), net.broadcast()))
}

/// Most-specific-wins flattening of one layer: returns the coalesced step
/// function (`(start, value)`, value `None` for gaps) and how many ranges
/// overlapped an earlier one.
fn flatten(ranges: Vec<Range>, max: u128) -> (Vec<(u128, Option<u32>)>, u64) {
    // Keep each range's input position: the first range seen wins a tie.
    let mut ranges: Vec<(Range, usize)> = ranges.into_iter().zip(0..).collect();
    ranges.sort_by_key(|(r, _)| r.start);
    let mut overlapping = 0u64;
    let mut reach: Option<u128> = None;
    let mut points: Vec<u128> = Vec::with_capacity(ranges.len() * 2);
    for (r, _) in &ranges {
        if reach.is_some_and(|e| r.start <= e) {
            overlapping += 1;
        }
        reach = Some(reach.map_or(r.end, |e| e.max(r.end)));
        points.push(r.start);
        if r.end < max {
            points.push(r.end + 1);
        }
    }
    points.sort_unstable();
    points.dedup();
    // Min-heap on (size, input position, sorted position): the smallest
    // range wins, then the one seen first.
    let mut heap: BinaryHeap<Reverse<(u128, usize, usize)>> = BinaryHeap::new();
    let mut out: Vec<(u128, Option<u32>)> = Vec::with_capacity(points.len());
    let mut last: Option<u32> = None;
    let mut i = 0;
    for p in points {
        while i < ranges.len() && ranges[i].0.start == p {
            let (r, seq) = ranges[i];
            heap.push(Reverse((r.end - r.start, seq, i)));
            i += 1;
        }
        while let Some(Reverse((_, _, j))) = heap.peek() {
            if ranges[*j].0.end < p {
                heap.pop();
            } else {
                break;
            }
        }
        let v = heap.peek().map(|Reverse((_, _, j))| ranges[*j].0.val);
        if v != last {
            out.push((p, v));
            last = v;
        }
    }
    (out, overlapping)
}

/// Merges the layers' step functions into one, interning each distinct
/// combination as a record.
fn merge(
    layers: &[Vec<(u128, Option<u32>)>],
    mut intern: impl FnMut(&[Option<u32>]) -> u32,
) -> Vec<(u128, u32)> {
    let mut pos = vec![0usize; layers.len()];
    let mut cur: Vec<Option<u32>> = vec![None; layers.len()];
    let mut out = Vec::new();
    let mut last = 0u32;
    loop {
        let next = layers
            .iter()
            .zip(&pos)
            .filter_map(|(l, &i)| l.get(i).map(|e| e.0))
            .min();
        let Some(p) = next else { break };
        for (k, l) in layers.iter().enumerate() {
            if let Some(&(q, v)) = l.get(pos[k])
                && q == p
            {
                cur[k] = v;
                pos[k] += 1;
            }
        }
        let rec = intern(&cur);
        if rec != last {
            out.push((p, rec));
            last = rec;
        }
    }
    out
}

/// IPv6 main entries: upper 64 bits of a range start, record or [`FINE`].
type MainV6 = Vec<(u64, u32)>;
/// IPv6 range starts finer than /64, with their records.
type FineV6 = Vec<(u128, u32)>;

/// Splits the IPv6 step function into /64-granular main entries and a fine
/// table for the /64s that contain finer boundaries.
fn split_v6(b: &[(u128, u32)]) -> (MainV6, FineV6) {
    let mut main: Vec<(u64, u32)> = Vec::with_capacity(b.len());
    let mut fine: Vec<(u128, u32)> = Vec::new();
    let mut cur = 0u32;
    let mut i = 0;
    while i < b.len() {
        let hi = (b[i].0 >> 64) as u64;
        let mut j = i;
        while j < b.len() && (b[j].0 >> 64) as u64 == hi {
            j += 1;
        }
        let group = &b[i..j];
        if group.len() == 1 && group[0].0 as u64 == 0 {
            main.push((hi, group[0].1));
            cur = group[0].1;
        } else {
            main.push((hi, FINE));
            let start_val = if group[0].0 as u64 == 0 {
                group[0].1
            } else {
                cur
            };
            fine.push((u128::from(hi) << 64, start_val));
            fine.extend(group.iter().filter(|e| e.0 as u64 != 0).copied());
            cur = group[group.len() - 1].1;
            let next_starts_group = b
                .get(j)
                .is_some_and(|e| (e.0 >> 64) as u64 == hi.wrapping_add(1));
            if hi != u64::MAX && !next_starts_group {
                main.push((hi + 1, cur));
            }
        }
        i = j;
    }
    // Drop entries that repeat the value before them (never after FINE).
    let mut prev = 0u32;
    main.retain(|&(_, v)| {
        let keep = v == FINE || v != prev;
        prev = v;
        keep
    });
    (main, fine)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u128, end: u128, val: u32) -> Range {
        Range { start, end, val }
    }

    #[test]
    fn nested_ranges_most_specific_wins() {
        // [0,99]=1 contains [10,19]=2 which contains [12,12]=3.
        let (f, ov) = flatten(vec![r(0, 99, 1), r(10, 19, 2), r(12, 12, 3)], 1000);
        assert_eq!(ov, 2);
        assert_eq!(
            f,
            vec![
                (0, Some(1)),
                (10, Some(2)),
                (12, Some(3)),
                (13, Some(2)),
                (20, Some(1)),
                (100, None)
            ]
        );
    }

    #[test]
    fn partial_overlap_smaller_wins_ties_first_wins() {
        let (f, _) = flatten(vec![r(0, 9, 1), r(5, 24, 2)], 100);
        assert_eq!(f, vec![(0, Some(1)), (10, Some(2)), (25, None)]);
        let (f, _) = flatten(vec![r(0, 9, 7), r(0, 9, 8)], 100);
        assert_eq!(f, vec![(0, Some(7)), (10, None)]);
        // Found by the property test: equal sizes, partial overlap, the
        // later-starting range seen first. Input order decides, not start.
        let (f, _) = flatten(vec![r(20, 29, 3), r(15, 24, 1)], 100);
        assert_eq!(f, vec![(15, Some(1)), (20, Some(3)), (30, None)]);
    }

    #[test]
    fn adjacent_equal_values_coalesce_and_max_is_not_exceeded() {
        let (f, ov) = flatten(vec![r(0, 4, 1), r(5, 9, 1), r(10, 255, 2)], 255);
        assert_eq!(ov, 0);
        assert_eq!(f, vec![(0, Some(1)), (10, Some(2))]);
    }

    #[test]
    fn merge_emits_on_change_only() {
        let a = vec![(0, Some(1)), (10, None)];
        let b = vec![(5, Some(2)), (10, Some(2))];
        let mut seen = Vec::new();
        let out = merge(&[a, b], |v| {
            let v = v.to_vec();
            if let Some(i) = seen.iter().position(|s| *s == v) {
                return i as u32;
            }
            seen.push(v);
            (seen.len() - 1) as u32
        });
        // record 0 = [Some(1), None] at 0 is the first interned, so nothing is
        // emitted until it changes.
        assert_eq!(out, vec![(5, 1), (10, 2)]);
    }

    #[test]
    fn split_v6_makes_fine_groups() {
        let p = |hi: u64, lo: u64| (u128::from(hi) << 64) | u128::from(lo);
        let b = vec![
            (p(1, 0), 5),
            (p(2, 0), 6),
            (p(2, 8), 7),
            (p(2, 9), 6),
            (p(9, 0), 0),
        ];
        let (main, fine) = split_v6(&b);
        assert_eq!(main, vec![(1, 5), (2, FINE), (3, 6), (9, 0)]);
        assert_eq!(fine, vec![(p(2, 0), 6), (p(2, 8), 7), (p(2, 9), 6)]);
        // A group that starts mid-/64 inherits the value before it.
        let b = vec![(p(1, 0), 5), (p(4, 3), 6)];
        let (main, fine) = split_v6(&b);
        assert_eq!(main, vec![(1, 5), (4, FINE), (5, 6)]);
        assert_eq!(fine, vec![(p(4, 0), 5), (p(4, 3), 6)]);
    }

    #[test]
    fn special_purpose_blocks_parse() {
        for c in SPECIAL_PURPOSE {
            assert!(
                c.parse::<ipnet::IpNet>().is_ok_and(|n| n.trunc() == n),
                "{c}"
            );
        }
    }

    #[test]
    fn parses_source_fields() {
        assert_eq!(parse_addr("16777216"), Ok("1.0.0.0".parse().expect("ip")));
        assert!(parse_addr("4294967296").is_err());
        assert!(parse_addr("1.2.3").is_err());
        assert_eq!(parse_asn("AS4134"), Ok(4134));
        assert!(parse_asn("x").is_err());
        assert!(parse_range("192.0.2.1/24").is_err());
        assert_eq!(
            parse_range("192.0.2.0/25"),
            Ok((
                "192.0.2.0".parse().expect("ip"),
                "192.0.2.127".parse().expect("ip")
            ))
        );
    }
}
