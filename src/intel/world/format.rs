//! The on-disk layout of a world database (`.gwdb`), shared by the reader
//! and the builder.
//!
//! All integers are little-endian. A file is a 64-byte header, then these
//! sections in this order, each padded with zeros to a multiple of 8 bytes,
//! then a CRC-32 (IEEE) of every byte before it:
//!
//! | section | size | content |
//! |---|---|---|
//! | meta | `meta_len` | UTF-8 JSON [`WorldMeta`](super::WorldMeta) |
//! | v4 index | 65,537 x u32 | `idx[b]` = number of v4 entries whose top 16 bits are `< b` |
//! | v4 entries | `v4_count` x 5 | low 16 bits of the range start (u16), record (u24) |
//! | v6 keys | `v6_count` x u64 | upper 64 bits of each range start, strictly increasing |
//! | v6 values | `v6_count` x u24 | record, or [`FINE`] when the /64 is split finer |
//! | v6 sample | `ceil(v6_count / stride)` x u64 | every `stride`-th v6 key |
//! | fine keys | `fine_count` x u128 | full range starts inside split /64s |
//! | fine values | `fine_count` x u24 | record |
//! | records | `record_count` x 8 | packed countries (u32: geo0, geo1, network, 10 bits each), AS number (u32, [`NO_ASN`] for none) |
//! | ASNs | `asn_count` x 8 | AS number (u32, strictly increasing), end offset of its name in the names blob (u32) |
//! | names | `names_len` | UTF-8 organisation names, back to back |
//! | extra geo | `record_count` x `extra_geo` x u16 | per record, the country of each further geolocation source (version 3 only) |
//!
//! A range table is a step function: an address takes the record of the
//! last range start at or below it, or record 0 (nothing known) when there
//! is none. Record 0 is always the empty record.

/// First eight bytes of every world database.
pub(crate) const MAGIC: [u8; 8] = *b"GEOWALLW";
/// The format version of a database with only the two shipped
/// geolocation sources; version [`VERSION_EXTRA`] adds the extra geo
/// section. A build writes the lowest version that holds its data, so a
/// build without extra sources stays byte-identical to earlier releases'.
pub(crate) const VERSION: u32 = 2;
/// The format version with further geolocation sources (`extra_geo` > 0).
pub(crate) const VERSION_EXTRA: u32 = 3;
/// The most further geolocation sources one database holds.
pub(crate) const MAX_EXTRA_GEO: usize = 4;
/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 64;
/// Entries in the IPv4 bucket index (one per /16, plus the end).
pub(crate) const V4_INDEX_LEN: usize = 65_537;
/// Bytes per IPv4 entry.
pub(crate) const V4_ENTRY: usize = 5;
/// A v6 value meaning "look in the fine table".
pub(crate) const FINE: u32 = 0x00FF_FFFF;
/// The largest record index a u24 can hold (FINE is reserved).
pub(crate) const MAX_RECORDS: usize = FINE as usize;
/// An AS number meaning "no AS known" (AS 4294967295 is reserved, RFC 7300).
pub(crate) const NO_ASN: u32 = u32::MAX;
/// Default v6 sample stride.
pub(crate) const DEFAULT_STRIDE: u32 = 16;

/// Counts stored in the header; they fix every section's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) meta_len: u32,
    pub(crate) v4: u32,
    pub(crate) v6: u32,
    pub(crate) fine: u32,
    pub(crate) records: u32,
    pub(crate) asns: u32,
    pub(crate) names_len: u32,
    pub(crate) stride: u32,
    /// Further geolocation sources (0 in a version-2 file).
    pub(crate) extra_geo: u32,
}

/// Byte ranges of each section within the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Layout {
    pub(crate) meta: (usize, usize),
    pub(crate) v4_index: (usize, usize),
    pub(crate) v4_entries: (usize, usize),
    pub(crate) v6_keys: (usize, usize),
    pub(crate) v6_vals: (usize, usize),
    pub(crate) v6_sample: (usize, usize),
    pub(crate) fine_keys: (usize, usize),
    pub(crate) fine_vals: (usize, usize),
    pub(crate) records: (usize, usize),
    pub(crate) asns: (usize, usize),
    pub(crate) names: (usize, usize),
    pub(crate) extra_geo: (usize, usize),
    /// Total file length including the trailing checksum.
    pub(crate) file_len: usize,
}

#[cfg(test)]
pub(crate) const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

impl Counts {
    /// Number of sampled v6 keys.
    pub(crate) fn samples(&self) -> usize {
        if self.stride == 0 {
            0
        } else {
            (self.v6 as usize).div_ceil(self.stride as usize)
        }
    }

    /// Computes the layout, or `None` if it would overflow `usize`.
    pub(crate) fn layout(&self) -> Option<Layout> {
        let mut at = HEADER_LEN;
        let mut next = |len: usize| -> Option<(usize, usize)> {
            let start = at;
            let end = start.checked_add(len)?;
            at = end.checked_add(7)? & !7;
            Some((start, end))
        };
        let v4 = self.v4 as usize;
        let v6 = self.v6 as usize;
        let fine = self.fine as usize;
        let l = Layout {
            meta: next(self.meta_len as usize)?,
            v4_index: next(V4_INDEX_LEN * 4)?,
            v4_entries: next(v4.checked_mul(V4_ENTRY)?)?,
            v6_keys: next(v6.checked_mul(8)?)?,
            v6_vals: next(v6.checked_mul(3)?)?,
            v6_sample: next(self.samples().checked_mul(8)?)?,
            fine_keys: next(fine.checked_mul(16)?)?,
            fine_vals: next(fine.checked_mul(3)?)?,
            records: next((self.records as usize).checked_mul(8)?)?,
            asns: next((self.asns as usize).checked_mul(8)?)?,
            names: next(self.names_len as usize)?,
            extra_geo: next(
                (self.records as usize)
                    .checked_mul(self.extra_geo as usize)?
                    .checked_mul(2)?,
            )?,
            file_len: 0,
        };
        Some(Layout {
            file_len: at.checked_add(4)?,
            ..l
        })
    }

    /// Writes the header.
    pub(crate) fn header(&self, file_len: u64) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version().to_le_bytes());
        // 12..16: flags, zero.
        h[16..24].copy_from_slice(&file_len.to_le_bytes());
        let fields = [
            self.meta_len,
            self.v4,
            self.v6,
            self.fine,
            self.records,
            self.asns,
            self.names_len,
            self.stride,
            self.extra_geo,
        ];
        for (i, v) in fields.iter().enumerate() {
            let at = 24 + 4 * i;
            h[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// Reads the counts back from a header (the caller checked magic and
    /// length).
    pub(crate) fn from_header(h: &[u8]) -> Self {
        let f = |i: usize| rd_u32(h, 24 + 4 * i);
        Self {
            meta_len: f(0),
            v4: f(1),
            v6: f(2),
            fine: f(3),
            records: f(4),
            asns: f(5),
            names_len: f(6),
            stride: f(7),
            extra_geo: f(8),
        }
    }

    /// The version a file with these counts is written as.
    pub(crate) fn version(&self) -> u32 {
        if self.extra_geo == 0 {
            VERSION
        } else {
            VERSION_EXTRA
        }
    }
}

/// Packs three 10-bit country values into a u32.
pub(crate) const fn pack_countries(geo0: u16, geo1: u16, net: u16) -> u32 {
    (geo0 as u32) | ((geo1 as u32) << 10) | ((net as u32) << 20)
}

/// Unpacks [`pack_countries`].
pub(crate) const fn unpack_countries(v: u32) -> [u16; 3] {
    [
        (v & 0x3FF) as u16,
        ((v >> 10) & 0x3FF) as u16,
        ((v >> 20) & 0x3FF) as u16,
    ]
}

// Little-endian readers over byte slices. They return 0 past the end instead
// of panicking; every offset used by lookups was validated at load.
#[inline]
pub(crate) fn rd_u16(b: &[u8], at: usize) -> u16 {
    match at.checked_add(2).and_then(|e| b.get(at..e)) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}
#[inline]
pub(crate) fn rd_u24(b: &[u8], at: usize) -> u32 {
    match at.checked_add(3).and_then(|e| b.get(at..e)) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], 0]),
        None => 0,
    }
}
#[inline]
pub(crate) fn rd_u32(b: &[u8], at: usize) -> u32 {
    match at.checked_add(4).and_then(|e| b.get(at..e)) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}
#[inline]
pub(crate) fn rd_u64(b: &[u8], at: usize) -> u64 {
    match at
        .checked_add(8)
        .and_then(|e| b.get(at..e))
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
    {
        Some(a) => u64::from_le_bytes(a),
        None => 0,
    }
}
#[inline]
pub(crate) fn rd_u128(b: &[u8], at: usize) -> u128 {
    match at
        .checked_add(16)
        .and_then(|e| b.get(at..e))
        .and_then(|s| <[u8; 16]>::try_from(s).ok())
    {
        Some(a) => u128::from_le_bytes(a),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let c = Counts {
            meta_len: 17,
            v4: 3,
            v6: 40,
            fine: 2,
            records: 9,
            asns: 4,
            names_len: 33,
            stride: 16,
            extra_geo: 2,
        };
        let l = c.layout().expect("fits");
        let h = c.header(l.file_len as u64);
        assert_eq!(&h[0..8], b"GEOWALLW");
        assert_eq!(Counts::from_header(&h), c);
        assert_eq!(c.samples(), 3);
        // Every section starts 8-aligned and they do not overlap.
        let secs = [
            l.meta,
            l.v4_index,
            l.v4_entries,
            l.v6_keys,
            l.v6_vals,
            l.v6_sample,
            l.fine_keys,
            l.fine_vals,
            l.records,
            l.asns,
            l.names,
            l.extra_geo,
        ];
        for w in secs.windows(2) {
            assert_eq!(w[0].0 % 8, 0);
            assert!(w[0].1 <= w[1].0);
        }
        assert_eq!(l.extra_geo.1 - l.extra_geo.0, 9 * 2 * 2);
        assert_eq!(l.file_len, pad8(l.extra_geo.1) + 4);
        assert_eq!(rd_u32(&h, 8), VERSION_EXTRA);
        let plain = Counts { extra_geo: 0, ..c };
        let pl = plain.layout().expect("fits");
        assert_eq!(
            pl.file_len,
            pad8(pl.names.1) + 4,
            "version 2 layout unchanged"
        );
        assert_eq!(rd_u32(&plain.header(0), 8), VERSION);
    }

    #[test]
    fn country_packing() {
        let p = pack_countries(1, 676, 300);
        assert_eq!(unpack_countries(p), [1, 676, 300]);
    }

    #[test]
    fn readers_do_not_panic_past_the_end() {
        let b = [1u8, 2, 3];
        assert_eq!(rd_u16(&b, 0), 0x0201);
        assert_eq!(rd_u24(&b, 0), 0x030201);
        assert_eq!(rd_u32(&b, 0), 0);
        assert_eq!(rd_u64(&b, 2), 0);
        assert_eq!(rd_u128(&b, usize::MAX - 1), 0);
    }
}
