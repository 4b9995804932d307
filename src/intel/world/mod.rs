//! The world database: for any IP address, where it is (one answer per
//! geolocation source), which AS announces it, and the country that AS is
//! registered in.
//!
//! A [`World`] is a validated, read-only view over the bytes of a `.gwdb`
//! file (see [`format`] for the layout). Loading checks the magic, version,
//! length, CRC-32 and every structural invariant, so a corrupt or truncated
//! file is an error at load and lookups never panic or read out of bounds.
//! Lookups allocate nothing.
//!
//! Memory bound: the bytes of the file (about 14 MB for the shipped world),
//! nothing more.

mod build;
#[cfg(feature = "embedded-world")]
mod embedded;
mod format;
mod report;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use build::{
    BuildError, BuildProgress, BuildStats, InputStats, SPECIAL_PURPOSE, SourceInfo, WorldBuilder,
};
#[cfg(feature = "embedded-world")]
pub use embedded::{EMBEDDED_WORLD, embedded, embedded_lean};
pub use report::{GeoSources, LookupReport};

use crate::intel::country::Country;
use format::{
    Counts, FINE, HEADER_LEN, Layout, MAGIC, MAX_EXTRA_GEO, NO_ASN, V4_ENTRY, V4_INDEX_LEN,
    VERSION, VERSION_EXTRA, rd_u16, rd_u24, rd_u32, rd_u64, rd_u128, unpack_countries,
};

/// The names of the two geolocation sources every database has, the first
/// two of [`World::geo_source_names`].
pub const GEO_SOURCE_NAMES: [&str; 2] = ["geo-whois-asn-country", "ipfire-location"];

/// The most geolocation sources one database holds: the two shipped ones
/// and up to four more (`geowall world build --geo-mmdb`).
pub const MAX_GEO: usize = 2 + MAX_EXTRA_GEO;

/// Each geolocation source's country for one address, in the order of
/// [`World::geo_source_names`]; `None` where a source knows nothing. A
/// small copyable value: nothing is allocated.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct GeoAnswers {
    answers: [Option<Country>; MAX_GEO],
    len: u8,
}

impl std::fmt::Debug for GeoAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl GeoAnswers {
    /// Answers from the given sources, in order (at most [`MAX_GEO`]; any
    /// more are ignored).
    pub fn new(answers: &[Option<Country>]) -> Self {
        let mut g = Self::default();
        for (slot, c) in g.answers.iter_mut().zip(answers) {
            *slot = *c;
            g.len += 1;
        }
        g
    }

    /// One answer per source.
    pub fn as_slice(&self) -> &[Option<Country>] {
        &self.answers[..usize::from(self.len)]
    }

    /// Source `i`'s answer (`None` past the last source too).
    pub fn get(&self, i: usize) -> Option<Country> {
        self.as_slice().get(i).copied().flatten()
    }

    /// True when no source knows the address.
    pub fn is_unknown(&self) -> bool {
        self.as_slice().iter().all(Option::is_none)
    }

    /// True when two sources name different countries.
    pub fn disputed(&self) -> bool {
        let mut known = self.as_slice().iter().flatten();
        let first = known.next();
        known.any(|c| Some(c) != first)
    }

    /// The country every source that knows agrees on; `None` when none
    /// knows or when they disagree: this never picks one side of a
    /// dispute.
    pub fn agreed(&self) -> Option<Country> {
        if self.disputed() {
            return None;
        }
        self.as_slice().iter().flatten().next().copied()
    }

    /// Every distinct country any source names, in source order.
    pub fn distinct(&self) -> impl Iterator<Item = Country> + use<> {
        let mut out = [None; MAX_GEO];
        let mut n = 0;
        for c in self.as_slice().iter().flatten() {
            if !out[..n].contains(&Some(*c)) {
                out[n] = Some(*c);
                n += 1;
            }
        }
        out.into_iter().flatten()
    }
}

/// Why a world database could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorldError {
    /// The file could not be read.
    #[error("cannot read world database {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes do not start with the world database magic.
    #[error("not a geowall world database (the first bytes are not 'GEOWALLW')")]
    BadMagic,
    /// The file was written by another format version.
    #[error(
        "world database format version {found} is not supported (this geowall reads version {supported}); rebuild it with `geowall world build`"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file is shorter or longer than its header says.
    #[error(
        "world database is truncated or padded: its header says {expected} bytes, but there are {actual}"
    )]
    Length {
        /// Length from the header (or the minimum length).
        expected: u64,
        /// Actual length.
        actual: u64,
    },
    /// The checksum does not match: the bytes were changed.
    #[error("world database is corrupt: CRC-32 is {computed:08x} but the file says {stored:08x}")]
    Checksum {
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// The checksum matched but the content breaks an invariant.
    #[error("world database is inconsistent: {section}: {detail}")]
    Inconsistent {
        /// Which section.
        section: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A file-level error, with the file it came from.
    #[error("{path}: {error}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        error: Box<WorldError>,
    },
}

fn bad(section: &'static str, detail: impl Into<String>) -> WorldError {
    WorldError::Inconsistent {
        section,
        detail: detail.into(),
    }
}

/// What a world database says about how and from what it was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldMeta {
    /// Build time (RFC 3339, UTC), or `SOURCE_DATE_EPOCH` when set.
    pub built_at: String,
    /// The geolocation sources, in slot order.
    pub geo_sources: Vec<String>,
    /// The source of the AS registration country.
    pub network_source: String,
    /// The source of range to AS and organisation.
    pub asn_source: String,
    /// Where each input came from (empty if the builder was not told).
    pub sources: Vec<SourceInfo>,
    /// Counts from the build.
    pub stats: BuildStats,
}

enum Bytes {
    Owned(Vec<u8>),
    Static(&'static [u8]),
    /// An anonymous mapping advised for huge pages; the database is at
    /// `start..start + len`, 2 MiB-aligned.
    Mapped {
        map: memmap2::MmapMut,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Static(s) => s,
            Bytes::Mapped { map, start, len } => map.get(*start..*start + *len).unwrap_or(&[]),
        }
    }

    /// Fills a 2 MiB-aligned, huge-page-advised anonymous mapping of `len`
    /// bytes with `fill`. Random lookups touch the whole database; on 4 KiB
    /// pages most of them also miss the TLB. `None` where the OS refuses
    /// the mapping (the caller then uses a plain buffer).
    fn mapped(
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
    ) -> Option<std::io::Result<Self>> {
        const HUGE: usize = 2 << 20;
        let mut map = memmap2::MmapOptions::new()
            .len(len.checked_add(HUGE)?)
            .map_anon()
            .ok()?;
        // Advice only: a kernel without transparent huge pages ignores it.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let addr = map.as_ptr() as usize;
        let start = addr.next_multiple_of(HUGE) - addr;
        let dst = map.get_mut(start..start + len)?;
        Some(fill(dst).map(|()| Bytes::Mapped { map, start, len }))
    }
}

/// A loaded, validated world database.
///
/// Cheap to share (`Arc<World>`); every method takes `&self`.
pub struct World {
    bytes: Bytes,
    layout: Layout,
    counts: Counts,
    meta: WorldMeta,
    /// Every [`TOP`]-th key of the v6 sample, built at load (a few KiB, so
    /// the first steps of an IPv6 search stay in the fastest cache); empty
    /// for [`World::from_static_trusted`], whose point is to touch only the
    /// pages lookups visit.
    v6_top: Box<[u64]>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("bytes", &self.data().len())
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// The answer for one address. Field access is lazy and cheap; nothing is
/// allocated.
#[derive(Clone, Copy)]
pub struct WorldInfo<'w> {
    world: &'w World,
    countries: [u16; 3],
    asn: u32,
    record: u32,
}

impl std::fmt::Debug for WorldInfo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldInfo")
            .field("geo_sources", &self.geo_sources())
            .field("network_country", &self.network_country())
            .field("asn", &self.asn())
            .field("as_org", &self.as_org())
            .finish()
    }
}

impl<'w> WorldInfo<'w> {
    /// Each geolocation source's country, in the order of
    /// [`World::geo_source_names`] (the shipped two, [`GEO_SOURCE_NAMES`],
    /// then any the database was built with).
    pub fn geo_sources(&self) -> GeoAnswers {
        let mut all = [None; MAX_GEO];
        all[0] = Country::from_packed(self.countries[0]);
        all[1] = Country::from_packed(self.countries[1]);
        let extra = self.world.counts.extra_geo as usize;
        if extra > 0 {
            let d = self.world.data();
            let at = self.world.layout.extra_geo.0 + self.record as usize * extra * 2;
            for (k, slot) in all[2..2 + extra.min(MAX_EXTRA_GEO)].iter_mut().enumerate() {
                *slot = Country::from_packed(rd_u16(d, at + 2 * k));
            }
        }
        GeoAnswers::new(&all[..2 + extra.min(MAX_EXTRA_GEO)])
    }

    /// True when two sources name different countries.
    pub fn disputed(&self) -> bool {
        self.geo_sources().disputed()
    }

    /// The country all sources that know agree on; `None` when no source
    /// knows or when they disagree (see [`WorldInfo::disputed`]): this never
    /// picks one side of a dispute.
    pub fn geo_country(&self) -> Option<Country> {
        self.geo_sources().agreed()
    }

    /// Every distinct country any geolocation source names.
    pub fn geo_countries(&self) -> impl Iterator<Item = Country> + use<> {
        self.geo_sources().distinct()
    }

    /// The country the announcing AS is registered in.
    pub fn network_country(&self) -> Option<Country> {
        Country::from_packed(self.countries[2])
    }

    /// The AS number announcing the address.
    pub fn asn(&self) -> Option<u32> {
        (self.asn != NO_ASN).then_some(self.asn)
    }

    /// The AS's organisation name, as the ASN source writes it (a binary
    /// search of the AS table: only pay for it when needed).
    pub fn as_org(&self) -> Option<&'w str> {
        self.asn().and_then(|a| self.world.as_org_of(a))
    }

    /// True when no source knows anything about the address.
    pub fn is_empty(&self) -> bool {
        self.countries == [0, 0, 0] && self.asn == NO_ASN && self.geo_sources().is_unknown()
    }
}

/// Address space announced by some ASes ([`World::announced_by`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Announced {
    /// IPv4 addresses.
    pub ipv4_addresses: u64,
    /// IPv6 /64 networks.
    pub ipv6_slash64s: u128,
}

/// How an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Embedding {
    /// NAT64, the well-known prefix `64:ff9b::/96` (RFC 6052).
    Nat64,
    /// NAT64 under the local-use prefix `64:ff9b:1::/48` (RFC 8215), with
    /// a `/96` inside it, whichever the network chose (`64:ff9b:1::a.b.c.d`,
    /// `64:ff9b:1:ab::a.b.c.d`: the IPv4 address in the last 32 bits). A
    /// network using a shorter prefix there is told with
    /// `--nat64-prefix`, or learned from `ipv4only.arpa`.
    Nat64Local,
    /// 6to4, `2002::/16` (RFC 3056): the IPv4 address in bits 16-47.
    SixToFour,
    /// Teredo, `2001::/32` (RFC 4380): the client's IPv4 address,
    /// inverted, in the last 32 bits.
    Teredo,
    /// IPv4-compatible, `::a.b.c.d` (deprecated, RFC 4291).
    Compatible,
    /// NAT64 under a network-specific prefix the device uses (a carrier's,
    /// given or discovered per RFC 7050), in the RFC 6052 layout of its
    /// length.
    Nat64Prefix,
}

/// The RFC 6052 prefix lengths, the only ones an IPv4-embedded IPv6
/// address can use.
pub const RFC6052_LENGTHS: [u8; 6] = [32, 40, 48, 56, 64, 96];

/// The IPv4 address embedded in `addr` under a NAT64 prefix of length
/// `len` (RFC 6052 section 2.2: the 32 bits follow the prefix, skipping bits
/// 64-71); `None` for a length RFC 6052 does not allow.
pub fn rfc6052_extract(addr: Ipv6Addr, len: u8) -> Option<Ipv4Addr> {
    let o = addr.octets();
    let b = match len {
        32 => [o[4], o[5], o[6], o[7]],
        40 => [o[5], o[6], o[7], o[9]],
        48 => [o[6], o[7], o[9], o[10]],
        56 => [o[7], o[9], o[10], o[11]],
        64 => [o[9], o[10], o[11], o[12]],
        96 => [o[12], o[13], o[14], o[15]],
        _ => return None,
    };
    Some(Ipv4Addr::from(b))
}

/// The IPv4 address an IPv6 address embeds, if it is one of the
/// [`Embedding`] forms. Traffic to such an address ends at (or is relayed
/// to) that IPv4 address, so its jurisdiction counts.
pub fn embedded_ipv4(ip: IpAddr) -> Option<(Embedding, Ipv4Addr)> {
    let IpAddr::V6(v6) = ip else { return None };
    let o = v6.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
        return Some((Embedding::Nat64, last));
    }
    if o[..6] == [0, 0x64, 0xff, 0x9b, 0, 1] {
        return Some((Embedding::Nat64Local, last));
    }
    if o[0] == 0x20 && o[1] == 0x02 {
        return Some((Embedding::SixToFour, Ipv4Addr::new(o[2], o[3], o[4], o[5])));
    }
    if o[..4] == [0x20, 0x01, 0, 0] {
        return Some((
            Embedding::Teredo,
            Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]),
        ));
    }
    if o[..12] == [0; 12] && o[12] != 0 {
        return Some((Embedding::Compatible, last));
    }
    None
}

/// The address actually looked up: IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`) are answered as the IPv4 address.
pub fn lookup_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl World {
    /// Reads and validates a database file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WorldError> {
        use std::io::Read;
        let path = path.as_ref();
        let io = |source| WorldError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "file too large",
            ))
        })?;
        let bytes = match Bytes::mapped(len, |buf| file.read_exact(buf)) {
            Some(b) => b.map_err(io)?,
            None => {
                let mut v = Vec::with_capacity(len);
                file.read_to_end(&mut v).map_err(io)?;
                Bytes::Owned(v)
            }
        };
        Self::new(bytes).map_err(|e| WorldError::InFile {
            path: path.to_owned(),
            error: Box::new(e),
        })
    }

    /// Validates a database held in memory.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, WorldError> {
        Self::new(Bytes::Owned(bytes))
    }

    /// Validates a database in static memory (e.g. `include_bytes!`),
    /// without copying it.
    pub fn from_static(bytes: &'static [u8]) -> Result<Self, WorldError> {
        Self::new(Bytes::Static(bytes))
    }

    /// Uses the database compiled into this binary as it is, checking only
    /// its frame (magic, version, lengths) and reading its meta: nothing
    /// else is touched, so only the pages lookups visit become resident
    /// (a few hundred KiB instead of the whole database). For data that is
    /// part of the program itself and was validated when it was built
    /// (the test suite checks the shipped copy in full); never for data
    /// from outside.
    pub fn from_static_trusted(bytes: &'static [u8]) -> Result<Self, WorldError> {
        let (counts, layout) = check_frame(bytes, false)?;
        let meta = parse_meta(bytes, &counts, &layout)?;
        Ok(Self {
            bytes: Bytes::Static(bytes),
            layout,
            counts,
            meta,
            // Building it would read the whole v6 sample now.
            v6_top: Box::new([]),
        })
    }

    /// Validates a copy of `bytes` held in huge-page-advised memory (faster
    /// random lookups than [`World::from_static`] for the same memory).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, WorldError> {
        let b = match Bytes::mapped(bytes.len(), |dst| {
            dst.copy_from_slice(bytes);
            Ok(())
        }) {
            Some(Ok(b)) => b,
            _ => Bytes::Owned(bytes.to_vec()),
        };
        Self::new(b)
    }

    #[inline]
    fn data(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    fn new(bytes: Bytes) -> Result<Self, WorldError> {
        let data = bytes.as_slice();
        let (counts, layout) = check_frame(data, true)?;
        let meta = check_sections(data, &counts, &layout)?;
        let v6_top = v6_top(data, &layout);
        Ok(Self {
            bytes,
            layout,
            counts,
            meta,
            v6_top,
        })
    }

    /// How the database was built.
    pub fn meta(&self) -> &WorldMeta {
        &self.meta
    }

    /// The geolocation sources' names, in the order of
    /// [`WorldInfo::geo_sources`]: [`GEO_SOURCE_NAMES`], then the further
    /// sources it was built with.
    pub fn geo_source_names(&self) -> &[String] {
        &self.meta.geo_sources
    }

    /// Size of the database in bytes (all of it is held in memory).
    pub fn size_bytes(&self) -> usize {
        self.data().len()
    }

    /// Looks an address up. IPv4-mapped IPv6 addresses are answered as IPv4.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> WorldInfo<'_> {
        match ip {
            IpAddr::V4(v4) => self.lookup_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.lookup_v4(v4),
                None => self.lookup_v6(v6),
            },
        }
    }

    /// Looks an IPv4 address up.
    #[inline]
    pub fn lookup_v4(&self, ip: Ipv4Addr) -> WorldInfo<'_> {
        let rec = self.record_v4(u32::from(ip));
        self.info(rec)
    }

    /// Looks an IPv6 address up (no mapping: `::ffff:a.b.c.d` is looked up
    /// in the IPv6 table; use [`World::lookup`] to map it).
    #[inline]
    pub fn lookup_v6(&self, ip: Ipv6Addr) -> WorldInfo<'_> {
        let rec = self.record_v6(u128::from(ip));
        self.info(rec)
    }

    /// A section as fixed-size elements: zero-copy, one bounds check per
    /// element read (the sections were validated at load).
    #[inline(always)]
    fn sec<const N: usize>(&self, r: (usize, usize)) -> &[[u8; N]] {
        sec(self.data(), r)
    }

    #[inline(always)]
    fn info(&self, rec: u32) -> WorldInfo<'_> {
        let r = self
            .sec::<8>(self.layout.records)
            .get(rec as usize)
            .copied()
            .unwrap_or([0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        WorldInfo {
            world: self,
            countries: unpack_countries(u32::from_le_bytes([r[0], r[1], r[2], r[3]])),
            asn: u32::from_le_bytes([r[4], r[5], r[6], r[7]]),
            record: rec,
        }
    }

    #[inline(always)]
    fn record_v4(&self, x: u32) -> u32 {
        let d = self.data();
        let entries = sec::<5>(d, self.layout.v4_entries);
        // Sizes were validated at load; these guards keep every index below
        // in bounds without a check per access.
        let (Ok(index), Some(last)) = (
            <&[[u8; 4]; V4_INDEX_LEN]>::try_from(sec::<4>(d, self.layout.v4_index)),
            entries.len().checked_sub(1),
        ) else {
            return 0;
        };
        let b = (x >> 16) as usize;
        let lo = u32::from_le_bytes(index[b]) as usize;
        let hi = u32::from_le_bytes(index[b + 1]) as usize;
        let low = x as u16;
        let key = |i: usize| {
            let e = entries[i.min(last)];
            u16::from_le_bytes([e[0], e[1]])
        };
        // Number of entries in [lo, hi) whose low key is <= `low`.
        let pos = upper_bound(lo, hi.saturating_sub(lo), |i| key(i) <= low);
        // Entry pos-1 is the last start <= x; when pos == lo it lies in an
        // earlier bucket, which is still the right answer.
        u24_at_entry(entries, pos.wrapping_sub(1))
    }

    #[inline]
    fn record_v6(&self, x: u128) -> u32 {
        let d = self.data();
        let hi = (x >> 64) as u64;
        let stride = self.counts.stride as usize;
        let sample = sec::<8>(d, self.layout.v6_sample);
        let keys = sec::<8>(d, self.layout.v6_keys);
        // The last top key <= hi, then the last sample <= hi in its block
        // of TOP samples, then the last key <= hi in that sample's block.
        // Without a top level (the lean embedding) the whole sample is
        // searched.
        let top = &self.v6_top;
        let (first, len) = if top.is_empty() {
            (0, sample.len())
        } else {
            let t = upper_bound(0, top.len(), |i| top.get(i).map_or(u64::MAX, |k| *k) <= hi);
            if t == 0 {
                return 0;
            }
            let first = (t - 1) * TOP;
            (first, TOP.min(sample.len().saturating_sub(first)))
        };
        let s = upper_bound(first, len, |i| u64_at(sample, i) <= hi);
        if s == 0 {
            return 0;
        }
        let start = s.saturating_sub(1) * stride;
        let end = (start + stride).min(keys.len());
        // pos > start: the sample itself is <= hi.
        let pos = upper_bound(start, end.saturating_sub(start), |i| u64_at(keys, i) <= hi);
        let v = u24_at(sec::<3>(d, self.layout.v6_vals), pos.wrapping_sub(1));
        if v != FINE {
            return v;
        }
        let fine = sec::<16>(d, self.layout.fine_keys);
        let pos = upper_bound(0, fine.len(), |i| {
            fine.get(i).map_or(u128::MAX, |k| u128::from_le_bytes(*k)) <= x
        });
        u24_at(sec::<3>(d, self.layout.fine_vals), pos.wrapping_sub(1))
    }

    /// Looks up many addresses, appending one answer per address to `out`,
    /// in order. Equivalent to calling [`World::lookup`] on each, but groups
    /// of lookups advance in lockstep so that their memory accesses overlap:
    /// use it wherever addresses come in bulk (captures, DNS answers,
    /// lists). Allocates only what `out` needs to grow.
    pub fn lookup_many<'w>(&'w self, ips: &[IpAddr], out: &mut Vec<WorldInfo<'w>>) {
        out.reserve(ips.len());
        for chunk in ips.chunks(GROUP) {
            let mut recs = [0u32; GROUP];
            self.records_group(chunk, &mut recs);
            out.extend(recs[..chunk.len()].iter().map(|&r| self.info(r)));
        }
    }

    /// Records for up to [`GROUP`] addresses, searched in lockstep.
    fn records_group(&self, ips: &[IpAddr], recs: &mut [u32; GROUP]) {
        // Split lanes by family (IPv4-mapped IPv6 counts as IPv4).
        let (mut v4, mut v6) = (Lanes::default(), Lanes::default());
        for (k, ip) in ips.iter().enumerate() {
            match lookup_key(*ip) {
                IpAddr::V4(a) => v4.push(k, u128::from(u32::from(a))),
                IpAddr::V6(a) => v6.push(k, u128::from(a)),
            }
        }
        if v4.n > 0 {
            // IPv4: bucket bounds, then the in-bucket search.
            let index = self.sec::<4>(self.layout.v4_index);
            let entries = self.sec::<5>(self.layout.v4_entries);
            let at = |i: usize| index.get(i).map_or(0, |v| u32::from_le_bytes(*v) as usize);
            for i in 0..v4.n {
                let b = (v4.key[i] >> 16) as usize;
                v4.first[i] = at(b);
                v4.len[i] = at(b + 1).saturating_sub(v4.first[i]);
            }
            v4.search(|k, m| {
                entries
                    .get(m)
                    .map_or(u16::MAX, |e| u16::from_le_bytes([e[0], e[1]]))
                    <= k as u16
            });
            for i in 0..v4.n {
                recs[v4.lane[i]] = match v4.first[i].checked_sub(1).and_then(|p| entries.get(p)) {
                    Some(e) => u32::from_le_bytes([e[2], e[3], e[4], 0]),
                    None => 0,
                };
            }
        }
        if v6.n == 0 {
            return;
        }
        // IPv6: samples, then the block, then the value.
        let sample = self.sec::<8>(self.layout.v6_sample);
        let keys = self.sec::<8>(self.layout.v6_keys);
        let vals = self.sec::<3>(self.layout.v6_vals);
        let stride = self.counts.stride as usize;
        for i in 0..v6.n {
            v6.first[i] = 0;
            v6.len[i] = sample.len();
        }
        let le = |s: &[[u8; 8]], k: u128, m: usize| u64_at(s, m) <= (k >> 64) as u64;
        v6.search(|k, m| le(sample, k, m));
        let mut none = [false; GROUP];
        for (i, none) in none.iter_mut().enumerate().take(v6.n) {
            let s = v6.first[i];
            *none = s == 0;
            let start = s.saturating_sub(1) * stride;
            v6.first[i] = start;
            v6.len[i] = if s == 0 {
                0
            } else {
                (start + stride).min(keys.len()).saturating_sub(start)
            };
        }
        v6.search(|k, m| le(keys, k, m));
        for i in 0..v6.n {
            let v = u24_at(vals, v6.first[i].wrapping_sub(1));
            recs[v6.lane[i]] = if none[i] {
                0
            } else if v == FINE {
                self.record_v6(v6.key[i])
            } else {
                v
            };
        }
    }

    fn asn_name(&self, i: u32) -> Option<&str> {
        if i >= self.counts.asns {
            return None;
        }
        let d = self.data();
        let at = self.layout.asns.0 + i as usize * 8;
        let end = rd_u32(d, at + 4) as usize;
        let start = if i == 0 {
            0
        } else {
            rd_u32(d, at - 4) as usize
        };
        let names = d.get(self.layout.names.0..self.layout.names.1)?;
        let s = std::str::from_utf8(names.get(start..end)?).ok()?;
        if s.is_empty() { None } else { Some(s) }
    }

    /// How much address space the ASes `owned` picks announce, by the
    /// database's AS layer: IPv4 addresses, and IPv6 in /64s (the finer
    /// ranges inside split /64s are not counted). Reads the whole range
    /// tables: for reports, not the packet path.
    pub fn announced_by(&self, owned: impl Fn(u32) -> bool) -> Announced {
        let asn_of = |rec: u32| {
            self.sec::<8>(self.layout.records)
                .get(rec as usize)
                .map_or(NO_ASN, |r| u32::from_le_bytes([r[4], r[5], r[6], r[7]]))
        };
        let mut out = Announced::default();
        // IPv4: each entry runs to the next one's start.
        let index = self.sec::<4>(self.layout.v4_index);
        let entries = self.sec::<5>(self.layout.v4_entries);
        let mut starts = Vec::with_capacity(entries.len());
        for b in 0..V4_INDEX_LEN - 1 {
            let at = |i: usize| index.get(i).map_or(0, |v| u32::from_le_bytes(*v) as usize);
            for e in entries.get(at(b)..at(b + 1)).unwrap_or(&[]) {
                let start = ((b as u64) << 16) | u64::from(u16::from_le_bytes([e[0], e[1]]));
                starts.push((start, u32::from_le_bytes([e[2], e[3], e[4], 0])));
            }
        }
        for (i, &(start, rec)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(1 << 32, |n| n.0);
            let a = asn_of(rec);
            if a != NO_ASN && owned(a) {
                out.ipv4_addresses += end - start;
            }
        }
        // IPv6, in /64s.
        let keys = self.sec::<8>(self.layout.v6_keys);
        let vals = self.sec::<3>(self.layout.v6_vals);
        for i in 0..keys.len() {
            let v = u24_at(vals, i);
            if v == FINE {
                continue;
            }
            let a = asn_of(v);
            if a != NO_ASN && owned(a) {
                let end = keys.get(i + 1).map_or(u128::from(u64::MAX) + 1, |k| {
                    u128::from(u64::from_le_bytes(*k))
                });
                out.ipv6_slash64s += end - u128::from(u64_at(keys, i));
            }
        }
        out
    }

    /// Every AS number the database names, in increasing order, with its
    /// organisation name (empty when the source gave none).
    pub fn asns(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        let d = self.data();
        let base = self.layout.asns.0;
        (0..self.counts.asns).map(move |i| {
            let asn = rd_u32(d, base + i as usize * 8);
            (asn, self.asn_name(i).unwrap_or(""))
        })
    }

    /// The organisation name the database holds for an AS number.
    pub fn as_org_of(&self, asn: u32) -> Option<&str> {
        let d = self.data();
        let base = self.layout.asns.0;
        let (mut l, mut r) = (0usize, self.counts.asns as usize);
        while l < r {
            let m = l + (r - l) / 2;
            let v = rd_u32(d, base + m * 8);
            if v == asn {
                return self.asn_name(m as u32);
            }
            if v < asn {
                l = m + 1;
            } else {
                r = m;
            }
        }
        None
    }
}

/// Section `r` of `d` as fixed-size elements (empty if out of range, which
/// validation rules out).
#[inline(always)]
fn sec<const N: usize>(d: &[u8], r: (usize, usize)) -> &[[u8; N]] {
    d.get(r.0..r.1).map_or(&[], |s| s.as_chunks::<N>().0)
}

/// The record of IPv4 entry `i`, or 0 (nothing known) past either end.
#[inline(always)]
fn u24_at_entry(s: &[[u8; 5]], i: usize) -> u32 {
    s.get(i)
        .map_or(0, |e| u32::from_le_bytes([e[2], e[3], e[4], 0]))
}

/// The v6 key or sample at `i`; past the end reads as the largest key
/// (never, after validation).
#[inline(always)]
fn u64_at(s: &[[u8; 8]], i: usize) -> u64 {
    s.get(i).map_or(u64::MAX, |k| u64::from_le_bytes(*k))
}

/// Samples per key of [`World`]'s top level of the IPv6 search.
const TOP: usize = 16;

/// Every [`TOP`]-th sampled v6 key of a checked file.
fn v6_top(d: &[u8], l: &Layout) -> Box<[u64]> {
    sec::<8>(d, l.v6_sample)
        .iter()
        .step_by(TOP)
        .map(|k| u64::from_le_bytes(*k))
        .collect()
}

/// The u24 at element `i`, or 0 (nothing known) past the end.
#[inline(always)]
fn u24_at(s: &[[u8; 3]], i: usize) -> u32 {
    s.get(i)
        .map_or(0, |v| u32::from_le_bytes([v[0], v[1], v[2], 0]))
}

/// Lookups interleaved by [`World::lookup_many`].
const GROUP: usize = 16;

/// Up to [`GROUP`] searches advancing in lockstep.
#[derive(Default)]
struct Lanes {
    n: usize,
    lane: [usize; GROUP],
    key: [u128; GROUP],
    first: [usize; GROUP],
    len: [usize; GROUP],
}

impl Lanes {
    fn push(&mut self, lane: usize, key: u128) {
        if self.n < GROUP {
            self.lane[self.n] = lane;
            self.key[self.n] = key;
            self.n += 1;
        }
    }

    /// For each lane, a branchless upper bound over `[first, first + len)`
    /// for a predicate `le(key, index)` that holds on a prefix; the result
    /// is left in `first`. Each round issues one independent load per
    /// lane, so cache misses overlap.
    #[inline(always)]
    fn search(&mut self, le: impl Fn(u128, usize) -> bool) {
        let mut longest = self.len[..self.n].iter().copied().max().unwrap_or(0);
        while longest > 1 {
            for i in 0..self.n {
                let half = self.len[i] / 2;
                let probe = self.first[i] + half.max(1) - 1;
                // Arithmetic select: a data-dependent branch here would be
                // mispredicted half the time and serialise the lanes.
                self.first[i] = std::hint::select_unpredictable(
                    le(self.key[i], probe),
                    self.first[i] + half,
                    self.first[i],
                );
                self.len[i] -= half;
            }
            longest -= longest / 2;
        }
        for i in 0..self.n {
            let hit = self.len[i] == 1 && le(self.key[i], self.first[i]);
            self.first[i] += usize::from(hit);
        }
    }
}

/// Branchless upper bound: for a predicate that holds for a prefix of
/// `[first, first + len)`, returns the index just past that prefix.
#[inline(always)]
fn upper_bound(first: usize, mut len: usize, le: impl Fn(usize) -> bool) -> usize {
    let mut base = first;
    while len > 1 {
        let half = len / 2;
        // A conditional move, not a branch: a data-dependent branch here
        // is mispredicted half the time and stops the CPU from overlapping
        // the memory accesses of independent lookups.
        base = std::hint::select_unpredictable(le(base + half - 1), base + half, base);
        len -= half;
    }
    base + usize::from(len == 1) * usize::from(le(base))
}

/// Checks magic, version, length and (with `crc`) the checksum; returns the
/// counts and layout.
fn check_frame(d: &[u8], crc: bool) -> Result<(Counts, Layout), WorldError> {
    if d.len() < 8 || d[0..8] != MAGIC {
        return Err(WorldError::BadMagic);
    }
    if d.len() < HEADER_LEN + 4 {
        return Err(WorldError::Length {
            expected: (HEADER_LEN + 4) as u64,
            actual: d.len() as u64,
        });
    }
    let version = rd_u32(d, 8);
    if version != VERSION && version != VERSION_EXTRA {
        return Err(WorldError::UnsupportedVersion {
            found: version,
            supported: VERSION_EXTRA,
        });
    }
    let stated = rd_u64(d, 16);
    if stated != d.len() as u64 {
        return Err(WorldError::Length {
            expected: stated,
            actual: d.len() as u64,
        });
    }
    let body = d.len() - 4;
    let stored = rd_u32(d, body);
    if crc {
        let computed = crc32fast::hash(&d[..body]);
        if stored != computed {
            return Err(WorldError::Checksum { stored, computed });
        }
    }
    let counts = Counts::from_header(d);
    let layout = counts
        .layout()
        .ok_or_else(|| bad("header", "section sizes overflow"))?;
    if layout.file_len != d.len() {
        return Err(bad(
            "header",
            format!(
                "counts describe {} bytes but the file has {}",
                layout.file_len,
                d.len()
            ),
        ));
    }
    if rd_u32(d, 12) != 0 {
        return Err(bad("header", "unknown flags are set"));
    }
    if counts.records == 0 {
        return Err(bad("records", "record 0 (nothing known) is missing"));
    }
    if counts.records as usize > format::MAX_RECORDS {
        return Err(bad("records", "more records than a u24 can index"));
    }
    if counts.v6 > 0 && counts.stride == 0 {
        return Err(bad("header", "v6 sample stride is 0"));
    }
    if counts.version() != version || counts.extra_geo as usize > MAX_EXTRA_GEO {
        return Err(bad(
            "header",
            format!(
                "version {version} with {} further geolocation sources (version {VERSION} has none, {VERSION_EXTRA} 1 to {MAX_EXTRA_GEO})",
                counts.extra_geo
            ),
        ));
    }
    Ok((counts, layout))
}

/// Reads the meta and checks it names one geolocation source per slot,
/// each once.
fn parse_meta(d: &[u8], c: &Counts, l: &Layout) -> Result<WorldMeta, WorldError> {
    let meta: WorldMeta = serde_json::from_slice(&d[l.meta.0..l.meta.1])
        .map_err(|e| bad("meta", format!("not valid meta JSON: {e}")))?;
    let names = &meta.geo_sources;
    if names.len() != 2 + c.extra_geo as usize {
        return Err(bad(
            "meta",
            format!(
                "{} geolocation source names for {} sources",
                names.len(),
                2 + c.extra_geo
            ),
        ));
    }
    if let Some(dup) = names
        .iter()
        .enumerate()
        .find_map(|(i, n)| names[..i].contains(n).then_some(n))
    {
        return Err(bad(
            "meta",
            format!("geolocation source '{dup}' is named twice"),
        ));
    }
    Ok(meta)
}

/// Checks every invariant lookups rely on; returns the parsed meta.
fn check_sections(d: &[u8], c: &Counts, l: &Layout) -> Result<WorldMeta, WorldError> {
    let meta = parse_meta(d, c, l)?;
    let nrec = c.records;
    let extra = c.extra_geo as usize;
    for i in 0..nrec as usize * extra {
        let v = rd_u16(d, l.extra_geo.0 + 2 * i);
        if v > 676 || (i < extra && v != 0) {
            return Err(bad(
                "extra geo",
                format!("record {} has an invalid country", i / extra),
            ));
        }
    }

    // Records and ASNs first: ranges refer to them.
    for i in 0..nrec as usize {
        let at = l.records.0 + i * 8;
        let cc = unpack_countries(rd_u32(d, at));
        if rd_u32(d, at) >> 30 != 0 || cc.iter().any(|&v| v > 676) {
            return Err(bad("records", format!("record {i} has an invalid country")));
        }
        let a = rd_u32(d, at + 4);
        if i == 0 && (cc != [0, 0, 0] || a != NO_ASN) {
            return Err(bad("records", "record 0 must be empty"));
        }
    }
    let names = &d[l.names.0..l.names.1];
    let names_str =
        std::str::from_utf8(names).map_err(|e| bad("names", format!("not UTF-8: {e}")))?;
    let (mut prev_asn, mut prev_end) = (None::<u32>, 0usize);
    for i in 0..c.asns as usize {
        let at = l.asns.0 + i * 8;
        let asn = rd_u32(d, at);
        let end = rd_u32(d, at + 4) as usize;
        if prev_asn.is_some_and(|p| p >= asn) {
            return Err(bad(
                "asns",
                format!("AS numbers not increasing at entry {i}"),
            ));
        }
        if end < prev_end || end > names.len() || !names_str.is_char_boundary(end) {
            return Err(bad("asns", format!("name bounds of entry {i} are invalid")));
        }
        prev_asn = Some(asn);
        prev_end = end;
    }

    // IPv4 index and entries.
    let mut prev = 0u32;
    for b in 0..V4_INDEX_LEN {
        let v = rd_u32(d, l.v4_index.0 + b * 4);
        if (b == 0 && v != 0) || v < prev {
            return Err(bad(
                "v4 index",
                format!("bucket {b} offset {v} is out of order"),
            ));
        }
        prev = v;
    }
    if prev != c.v4 {
        return Err(bad(
            "v4 index",
            "last bucket does not end at the entry count",
        ));
    }
    for b in 0..V4_INDEX_LEN - 1 {
        let lo = rd_u32(d, l.v4_index.0 + b * 4) as usize;
        let hi = rd_u32(d, l.v4_index.0 + b * 4 + 4) as usize;
        let mut last = None::<u16>;
        for i in lo..hi {
            let at = l.v4_entries.0 + i * V4_ENTRY;
            let k = rd_u16(d, at);
            if last.is_some_and(|p| p >= k) {
                return Err(bad(
                    "v4 entries",
                    format!("keys not increasing at entry {i}"),
                ));
            }
            last = Some(k);
            if rd_u24(d, at + 2) >= nrec {
                return Err(bad(
                    "v4 entries",
                    format!("entry {i} names a missing record"),
                ));
            }
        }
    }

    // IPv6 main table, samples and fine table.
    let mut last = None::<u64>;
    let mut fine_groups = 0usize;
    for i in 0..c.v6 as usize {
        let k = rd_u64(d, l.v6_keys.0 + i * 8);
        if last.is_some_and(|p| p >= k) {
            return Err(bad("v6 keys", format!("keys not increasing at entry {i}")));
        }
        last = Some(k);
        let v = rd_u24(d, l.v6_vals.0 + i * 3);
        if v == FINE {
            fine_groups += 1;
            // The fine table must hold the group's first address exactly.
            let want = u128::from(k) << 64;
            if !fine_has(d, l, c, want) {
                return Err(bad(
                    "fine keys",
                    format!("split /64 at v6 entry {i} has no start"),
                ));
            }
        } else if v >= nrec {
            return Err(bad(
                "v6 values",
                format!("entry {i} names a missing record"),
            ));
        }
    }
    for s in 0..c.samples() {
        let want = rd_u64(d, l.v6_keys.0 + s * c.stride as usize * 8);
        if rd_u64(d, l.v6_sample.0 + s * 8) != want {
            return Err(bad(
                "v6 sample",
                format!("sample {s} does not match its key"),
            ));
        }
    }
    let mut last = None::<u128>;
    let mut starts = 0usize;
    for i in 0..c.fine as usize {
        let k = rd_u128(d, l.fine_keys.0 + i * 16);
        if last.is_some_and(|p| p >= k) {
            return Err(bad(
                "fine keys",
                format!("keys not increasing at entry {i}"),
            ));
        }
        last = Some(k);
        if rd_u24(d, l.fine_vals.0 + i * 3) >= nrec {
            return Err(bad(
                "fine values",
                format!("entry {i} names a missing record"),
            ));
        }
        if k as u64 == 0 {
            starts += 1;
        }
    }
    if starts != fine_groups {
        return Err(bad(
            "fine keys",
            format!("{starts} group starts for {fine_groups} split /64s"),
        ));
    }
    Ok(meta)
}

fn fine_has(d: &[u8], l: &Layout, c: &Counts, want: u128) -> bool {
    let (mut a, mut b) = (0usize, c.fine as usize);
    while a < b {
        let m = a + (b - a) / 2;
        let k = rd_u128(d, l.fine_keys.0 + m * 16);
        if k == want {
            return true;
        }
        if k < want {
            a = m + 1;
        } else {
            b = m;
        }
    }
    false
}

#[cfg(test)]
mod tests;
