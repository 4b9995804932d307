//! Matching host names against large sets of domain patterns.
//!
//! Patterns:
//! - `example.com` or `.example.com`: the domain and every subdomain;
//! - `=example.com`: exactly that name;
//! - `*.example.com`: subdomains only, not the domain itself.
//!
//! A [`DomainMap`] stores one 64-bit fingerprint (and, in maps, a `u32`
//! value) per pattern in an open-addressing table at most 75% full: about
//! 11 bytes per pattern for a set, 16 for a map. Names are never stored.
//! A lookup hashes the name once from right to left, keeping the hash at
//! every label boundary, then probes from the most specific suffix to the
//! least; it allocates nothing. Two different patterns share a
//! fingerprint with probability about 2^-64 per pair: a false match would
//! need a collision between a looked-up name and a stored pattern, which for
//! a million patterns and four probes a name is about 2 x 10^-13 per name.
//! Normal ASCII case folding applies; a trailing dot is ignored.

use std::fmt;

/// How a pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternKind {
    /// Exactly the name.
    Exact,
    /// The name and all subdomains.
    Suffix,
    /// Subdomains only.
    Wildcard,
}

/// A parsed domain pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// How it matches.
    pub kind: PatternKind,
    /// The normalised domain (lowercase, no leading or trailing dot).
    pub domain: String,
}

/// Why a pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a domain pattern: {why}")]
pub struct PatternError {
    /// The text given.
    pub text: String,
    /// The reason.
    pub why: &'static str,
}

impl DomainPattern {
    /// Parses `example.com`, `.example.com`, `=example.com` or
    /// `*.example.com`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |why| PatternError {
            text: text.to_owned(),
            why,
        };
        let t = text.trim();
        let (kind, rest) = if let Some(r) = t.strip_prefix("*.") {
            (PatternKind::Wildcard, r)
        } else if let Some(r) = t.strip_prefix('=') {
            (PatternKind::Exact, r)
        } else if let Some(r) = t.strip_prefix('.') {
            (PatternKind::Suffix, r)
        } else {
            (PatternKind::Suffix, t)
        };
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        if rest.is_empty() {
            return Err(err("empty domain"));
        }
        if rest.len() > 253 {
            return Err(err("longer than 253 characters"));
        }
        for label in rest.split('.') {
            if label.is_empty() {
                return Err(err("empty label (two dots in a row)"));
            }
            if label.len() > 63 {
                return Err(err("a label is longer than 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err(
                    "only letters, digits, '-' and '_' are allowed (use punycode for IDN)",
                ));
            }
        }
        Ok(Self {
            kind,
            domain: rest.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PatternKind::Exact => write!(f, "={}", self.domain),
            PatternKind::Suffix => f.write_str(&self.domain),
            PatternKind::Wildcard => write!(f, "*.{}", self.domain),
        }
    }
}

/// A match: the pattern kind and the matched domain's length in the name
/// (its last `len` bytes), and the value stored with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainMatch {
    /// How the pattern matched.
    pub kind: PatternKind,
    /// The matched domain is the last `suffix_len` bytes of the name.
    pub suffix_len: usize,
    /// The value stored with the pattern (0 in sets).
    pub value: u32,
}

impl DomainMatch {
    /// The matched domain, as a slice of the looked-up name.
    pub fn domain<'n>(&self, name: &'n str) -> &'n str {
        let name = name.strip_suffix('.').unwrap_or(name);
        name.get(name.len().saturating_sub(self.suffix_len)..)
            .unwrap_or(name)
    }
}

const TAG_EXACT: u64 = 0x9E37_79B9_7F4A_7C15;
const TAG_SUFFIX: u64 = 0xC2B2_AE3D_27D4_EB4F;
const TAG_WILD: u64 = 0x1656_67B1_9E37_79F9;
const MAX_LABELS: usize = 32;

#[inline]
fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01B3)
}

/// Final mixing (the splitmix64 finaliser) so similar names spread out.
#[inline]
fn finish(h: u64, tag: u64) -> u64 {
    let mut z = h ^ tag;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let z = z ^ (z >> 31);
    if z == 0 { 1 } else { z }
}

fn hash_domain(d: &str) -> u64 {
    d.bytes().rev().fold(0xCBF2_9CE4_8422_2325, fnv_step)
}

/// A set or map of domain patterns. Build with [`DomainMap::builder`].
#[derive(Clone, Default)]
pub struct DomainMap {
    slots: Vec<u64>,
    values: Vec<u32>,
    len: usize,
}

impl fmt::Debug for DomainMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainMap")
            .field("patterns", &self.len)
            .field("bytes", &self.heap_bytes())
            .finish()
    }
}

/// Collects patterns for a [`DomainMap`].
#[derive(Debug, Default)]
pub struct DomainMapBuilder {
    entries: Vec<(u64, u32)>,
    with_values: bool,
}

impl DomainMapBuilder {
    /// Adds a pattern with a value (a later duplicate keeps the first
    /// value).
    pub fn insert(&mut self, p: &DomainPattern, value: u32) {
        if value != 0 {
            self.with_values = true;
        }
        let tag = match p.kind {
            PatternKind::Exact => TAG_EXACT,
            PatternKind::Suffix => TAG_SUFFIX,
            PatternKind::Wildcard => TAG_WILD,
        };
        self.entries
            .push((finish(hash_domain(&p.domain), tag), value));
    }

    /// Number of patterns added (duplicates included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Builds the table.
    pub fn build(self) -> DomainMap {
        let cap = (self.entries.len() * 4 / 3 + 1).max(4);
        let mut slots = vec![0u64; cap];
        let mut values = if self.with_values {
            vec![0u32; cap]
        } else {
            Vec::new()
        };
        let mut len = 0;
        for (fp, v) in self.entries {
            let mut i = slot_of(fp, cap);
            loop {
                if slots[i] == 0 {
                    slots[i] = fp;
                    if let Some(x) = values.get_mut(i) {
                        *x = v;
                    }
                    len += 1;
                    break;
                }
                if slots[i] == fp {
                    break;
                }
                i = if i + 1 == cap { 0 } else { i + 1 };
            }
        }
        DomainMap { slots, values, len }
    }
}

#[inline]
fn slot_of(fp: u64, cap: usize) -> usize {
    ((u128::from(fp) * cap as u128) >> 64) as usize
}

impl DomainMap {
    /// A builder.
    pub fn builder() -> DomainMapBuilder {
        DomainMapBuilder::default()
    }

    /// Number of distinct patterns.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap memory used, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * 8 + self.values.len() * 4
    }

    #[inline]
    fn probe(&self, fp: u64) -> Option<u32> {
        let cap = self.slots.len();
        if cap == 0 {
            return None;
        }
        let mut i = slot_of(fp, cap);
        // The table is at most 75% full, so an empty slot ends every probe.
        for _ in 0..cap {
            let s = *self.slots.get(i)?;
            if s == fp {
                return Some(self.values.get(i).copied().unwrap_or(0));
            }
            if s == 0 {
                return None;
            }
            i = if i + 1 == cap { 0 } else { i + 1 };
        }
        None
    }

    /// The most specific pattern matching `name`, if any.
    #[inline]
    pub fn lookup(&self, name: &str) -> Option<DomainMatch> {
        if self.len == 0 {
            return None;
        }
        let b = name.as_bytes();
        let b = b.strip_suffix(b".").unwrap_or(b);
        if b.is_empty() {
            return None;
        }
        // Hashes of each suffix that starts at a label boundary, from the
        // shortest (the TLD) to the longest, with their lengths.
        let mut hs = [(0u64, 0usize); MAX_LABELS];
        let mut n = 0;
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for (i, &c) in b.iter().enumerate().rev() {
            if c == b'.' && n < MAX_LABELS {
                hs[n] = (h, b.len() - i - 1);
                n += 1;
            }
            h = fnv_step(h, c);
        }
        let full = (h, b.len());
        // Most specific first: the whole name, then shorter suffixes.
        if let Some(v) = self.probe(finish(full.0, TAG_EXACT)) {
            return Some(DomainMatch {
                kind: PatternKind::Exact,
                suffix_len: full.1,
                value: v,
            });
        }
        if let Some(v) = self.probe(finish(full.0, TAG_SUFFIX)) {
            return Some(DomainMatch {
                kind: PatternKind::Suffix,
                suffix_len: full.1,
                value: v,
            });
        }
        for &(h, len) in hs[..n].iter().rev() {
            if let Some(v) = self.probe(finish(h, TAG_SUFFIX)) {
                return Some(DomainMatch {
                    kind: PatternKind::Suffix,
                    suffix_len: len,
                    value: v,
                });
            }
            if let Some(v) = self.probe(finish(h, TAG_WILD)) {
                return Some(DomainMatch {
                    kind: PatternKind::Wildcard,
                    suffix_len: len,
                    value: v,
                });
            }
        }
        None
    }

    /// True when any pattern matches `name`.
    #[inline]
    pub fn matches(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pats: &[(&str, u32)]) -> DomainMap {
        let mut b = DomainMap::builder();
        for (p, v) in pats {
            b.insert(&DomainPattern::parse(p).expect("valid"), *v);
        }
        b.build()
    }

    #[test]
    fn kinds_match_as_documented() {
        let m = map(&[
            ("agora.io", 1),
            ("=exact.example", 2),
            ("*.wild.example", 3),
        ]);
        let v = |n: &str| m.lookup(n).map(|x| x.value);
        assert_eq!(v("agora.io"), Some(1));
        assert_eq!(v("104-166-161-75.edge.agora.io"), Some(1));
        assert_eq!(v("AGORA.IO."), Some(1), "case and trailing dot");
        assert_eq!(v("notagora.io"), None, "label boundary respected");
        assert_eq!(v("agora.io.evil.com"), None);
        assert_eq!(v("exact.example"), Some(2));
        assert_eq!(v("a.exact.example"), None);
        assert_eq!(v("wild.example"), None);
        assert_eq!(v("a.wild.example"), Some(3));
        assert_eq!(v("b.a.wild.example"), Some(3));
        assert_eq!(v(""), None);
        assert_eq!(v("."), None);
        assert_eq!(v("io"), None);
    }

    #[test]
    fn most_specific_pattern_wins_and_reports_the_domain() {
        let m = map(&[
            ("example.com", 1),
            ("cdn.example.com", 2),
            ("=www.example.com", 3),
        ]);
        let name = "img.cdn.example.com";
        let hit = m.lookup(name).expect("match");
        assert_eq!((hit.value, hit.domain(name)), (2, "cdn.example.com"));
        assert_eq!(m.lookup("www.example.com").map(|h| h.value), Some(3));
        assert_eq!(m.lookup("x.www.example.com").map(|h| h.value), Some(1));
    }

    #[test]
    fn parse_rejects_bad_patterns() {
        for bad in [
            "",
            "*.",
            "a..b",
            "exa mple.com",
            "=",
            "ü.com",
            &"a".repeat(64),
        ] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?}");
        }
        let p = DomainPattern::parse(" .Example.COM. ").expect("valid");
        assert_eq!(
            (p.kind, p.domain.as_str()),
            (PatternKind::Suffix, "example.com")
        );
        assert_eq!(p.to_string(), "example.com");
    }

    #[test]
    fn many_patterns_and_memory_bound() {
        let mut b = DomainMap::builder();
        for i in 0..20_000u32 {
            b.insert(
                &DomainPattern::parse(&format!("host{i}.example{}.net", i % 97)).expect("valid"),
                0,
            );
        }
        let m = b.build();
        assert_eq!(m.len(), 20_000);
        assert!(m.heap_bytes() <= 20_000 * 11 + 64, "{}", m.heap_bytes());
        for i in (0..20_000u32).step_by(37) {
            assert!(m.matches(&format!("a.host{i}.example{}.net", i % 97)));
            assert!(!m.matches(&format!("host{i}x.example{}.net", i % 97)));
        }
    }

    #[test]
    fn very_deep_names_still_match_their_suffixes() {
        let m = map(&[("example.com", 1)]);
        let deep = format!("{}example.com", "a.".repeat(100));
        assert_eq!(m.lookup(&deep).map(|h| h.value), Some(1));
    }

    proptest::proptest! {
        #[test]
        fn lookup_never_panics(name in "\\PC{0,300}") {
            let m = map(&[("example.com", 1), ("*.x.y", 2)]);
            let _ = m.lookup(&name);
        }
    }
}
