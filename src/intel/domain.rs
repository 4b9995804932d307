//! Matching host names against large sets of domain patterns.
//!
//! Patterns:
//! - `example.com` or `.example.com`: the domain and every subdomain;
//! - `=example.com`: exactly that name;
//! - `*.example.com`: subdomains only, not the domain itself.
//!
//! A [`DomainMap`] stores one 64-bit slot per domain (a 61-bit fingerprint
//! of the domain plus 3 bits saying which kinds of pattern it has) and, in
//! maps, a `u32` value, in an open-addressing table at most half full:
//! about 16 bytes per domain for a set, 24 for a map. Names are never
//! stored. A lookup hashes the name once from right to left, keeping the
//! hash at every label boundary, loads the home slot of every suffix before
//! looking at any (so their cache misses overlap), then decides from the
//! most specific suffix to the least; it allocates nothing. Two different
//! domains share a fingerprint with probability about 2^-61 per pair: a
//! false match needs a looked-up suffix to collide with a stored domain,
//! about 2 x 10^-12 per name for a million domains and five suffixes.
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

/// Kind bits kept in a slot's low 3 bits.
const K_EXACT: u64 = 1;
const K_SUFFIX: u64 = 2;
const K_WILD: u64 = 4;
const KIND_MASK: u64 = 7;
const MAX_LABELS: usize = 16;

#[inline]
fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01B3)
}

/// Hashes one label, case-insensitively.
#[inline]
fn hash_label(l: &[u8]) -> u64 {
    l.iter()
        .fold(0xCBF2_9CE4_8422_2325u64, |h, &c| fnv_step(h, c))
}

/// Final mixing (the splitmix64 finaliser) so similar names spread out;
/// the low 3 bits are cleared for the kind bits, and the result is never 0
/// (an empty slot).
#[inline]
fn finish(h: u64) -> u64 {
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let z = (z ^ (z >> 31)) & !KIND_MASK;
    if z == 0 { 8 } else { z }
}

/// Fingerprints of every suffix of `b` that starts at a label boundary,
/// from the shortest (the last label) to the whole name, with their byte
/// lengths; returns how many. Each label is hashed on its own and folded
/// into the running suffix hash from the right. Names with more than
/// [`MAX_LABELS`] labels keep their rightmost suffixes and the whole name.
#[inline]
fn suffix_fps(b: &[u8], out: &mut [(u64, usize); MAX_LABELS + 1]) -> usize {
    let label = hash_label;
    let mut n = 0;
    let mut s = 0u64;
    let mut end = b.len();
    for (i, &c) in b.iter().enumerate().rev() {
        if c == b'.' {
            s = fold_label(s, label(&b[i + 1..end]));
            end = i;
            if n < MAX_LABELS {
                out[n] = (finish(s), b.len() - i - 1);
                n += 1;
            }
        }
    }
    s = fold_label(s, label(&b[..end]));
    out[n] = (finish(s), b.len());
    n + 1
}

#[inline]
fn fold_label(s: u64, h: u64) -> u64 {
    (s.rotate_left(23) ^ h).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn hash_domain(d: &str) -> u64 {
    let mut fps = [(0u64, 0usize); MAX_LABELS + 1];
    let n = suffix_fps(d.as_bytes(), &mut fps);
    fps[n - 1].0
}

/// A set or map of domain patterns. Build with [`DomainMap::builder`].
#[derive(Clone, Default)]
pub struct DomainMap {
    slots: Vec<u64>,
    values: Vec<u32>,
    len: usize,
    /// A blocked Bloom filter over the fingerprints (8 bits per domain,
    /// three bits in one 64-bit word per key), for large maps only: it
    /// fits in cache where the table does not, and answers most negative
    /// probes without touching the table.
    filter: Vec<u64>,
}

/// Maps with at least this many slots get a prefilter.
const FILTER_MIN_SLOTS: usize = 1 << 16;

#[inline]
fn filter_word(fp: u64, words: usize) -> usize {
    (((fp >> 32) * words as u64) >> 32) as usize
}

#[inline]
fn filter_mask(fp: u64) -> u64 {
    (1u64 << ((fp >> 3) & 63)) | (1u64 << ((fp >> 9) & 63)) | (1u64 << ((fp >> 15) & 63))
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
        let kind = match p.kind {
            PatternKind::Exact => K_EXACT,
            PatternKind::Suffix => K_SUFFIX,
            PatternKind::Wildcard => K_WILD,
        };
        self.entries.push((hash_domain(&p.domain) | kind, value));
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
        let cap = (self.entries.len() * 2 + 1).max(4);
        let mut slots = vec![0u64; cap];
        let mut values = if self.with_values {
            vec![0u32; cap]
        } else {
            Vec::new()
        };
        let mut len = 0;
        for (key, v) in self.entries {
            let fp = key & !KIND_MASK;
            let mut i = slot_of(fp, cap);
            loop {
                if slots[i] == 0 {
                    slots[i] = key;
                    if let Some(x) = values.get_mut(i) {
                        *x = v;
                    }
                    len += 1;
                    break;
                }
                if slots[i] & !KIND_MASK == fp {
                    if slots[i] & key & KIND_MASK == 0 {
                        len += 1;
                    }
                    slots[i] |= key & KIND_MASK;
                    break;
                }
                i = if i + 1 == cap { 0 } else { i + 1 };
            }
        }
        let mut filter = Vec::new();
        if cap >= FILTER_MIN_SLOTS {
            filter = vec![0u64; (len / 8).max(1)];
            let words = filter.len();
            for &k in slots.iter().filter(|&&k| k != 0) {
                let fp = k & !KIND_MASK;
                filter[filter_word(fp, words)] |= filter_mask(fp);
            }
        }
        DomainMap {
            slots,
            values,
            len,
            filter,
        }
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
        self.slots.len() * 8 + self.values.len() * 4 + self.filter.len() * 8
    }

    /// Finds the slot of a domain fingerprint, starting from a slot value
    /// already loaded at its home position.
    #[inline]
    fn find(&self, fp: u64, home: usize, first: u64) -> Option<(u64, u32)> {
        let cap = self.slots.len();
        let (mut i, mut s) = (home, first);
        // The table is at most half full, so an empty slot ends every probe.
        for _ in 0..cap {
            if s & !KIND_MASK == fp {
                return Some((s & KIND_MASK, self.values.get(i).copied().unwrap_or(0)));
            }
            if s == 0 {
                return None;
            }
            i = if i + 1 == cap { 0 } else { i + 1 };
            s = *self.slots.get(i)?;
        }
        None
    }

    /// The most specific pattern matching `name`, if any.
    #[inline]
    pub fn lookup(&self, name: &str) -> Option<DomainMatch> {
        let cap = self.slots.len();
        if self.len == 0 || cap == 0 {
            return None;
        }
        let b = name.as_bytes();
        let b = b.strip_suffix(b".").unwrap_or(b);
        if b.is_empty() {
            return None;
        }
        let mut fps = [(0u64, 0usize); MAX_LABELS + 1];
        let n = suffix_fps(b, &mut fps);
        // Load every home slot before inspecting any (independent loads,
        // overlapping misses), skipping suffixes the prefilter rules out.
        let mut homes = [(0usize, 0u64); MAX_LABELS + 1];
        let words = self.filter.len();
        for (home, &(fp, _)) in homes.iter_mut().zip(&fps[..n]) {
            if words > 0 {
                let m = filter_mask(fp);
                if self
                    .filter
                    .get(filter_word(fp, words))
                    .is_none_or(|w| w & m != m)
                {
                    continue;
                }
            }
            let i = slot_of(fp, cap);
            *home = (i, self.slots.get(i).copied().unwrap_or(0));
        }
        // Most specific first: the whole name, then shorter suffixes.
        for k in (0..n).rev() {
            let (fp, len) = fps[k];
            let (home, first) = homes[k];
            if first == 0 {
                continue;
            }
            let Some((kinds, value)) = self.find(fp, home, first) else {
                continue;
            };
            let whole = k == n - 1;
            let kind = if whole && kinds & K_EXACT != 0 {
                PatternKind::Exact
            } else if kinds & K_SUFFIX != 0 {
                PatternKind::Suffix
            } else if !whole && kinds & K_WILD != 0 {
                PatternKind::Wildcard
            } else {
                continue;
            };
            return Some(DomainMatch {
                kind,
                suffix_len: len,
                value,
            });
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
    fn kinds_of_one_domain_share_a_slot() {
        let m = map(&[("=x.example", 1), ("*.x.example", 1)]);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.lookup("x.example").map(|h| h.kind),
            Some(PatternKind::Exact)
        );
        assert_eq!(
            m.lookup("a.x.example").map(|h| h.kind),
            Some(PatternKind::Wildcard)
        );
        let m = map(&[("=x.example", 1)]);
        assert_eq!(
            m.lookup("a.x.example"),
            None,
            "an exact pattern does not cover subdomains"
        );
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
        for i in 0..40_000u32 {
            b.insert(
                &DomainPattern::parse(&format!("host{i}.example{}.net", i % 97)).expect("valid"),
                0,
            );
        }
        let m = b.build();
        assert_eq!(m.len(), 40_000);
        assert!(m.heap_bytes() <= 40_000 * 17 + 64, "{}", m.heap_bytes());
        assert!(!m.filter.is_empty(), "large maps get a prefilter");
        for i in (0..40_000u32).step_by(37) {
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

    /// The naive answer: the most specific pattern by string comparison.
    fn oracle(pats: &[(PatternKind, String)], name: &str) -> Option<(PatternKind, usize)> {
        let name = name.to_ascii_lowercase();
        let mut best: Option<(PatternKind, usize)> = None;
        for (kind, d) in pats {
            let is_sub = name.len() > d.len()
                && name.ends_with(d.as_str())
                && name.as_bytes()[name.len() - d.len() - 1] == b'.';
            let hit = match kind {
                PatternKind::Exact => name == *d,
                PatternKind::Suffix => name == *d || is_sub,
                PatternKind::Wildcard => is_sub,
            };
            // Longer domains are more specific; at equal length exact wins
            // over suffix (both cover the whole name).
            let rank = |k: PatternKind| match k {
                PatternKind::Exact => 2,
                PatternKind::Suffix => 1,
                PatternKind::Wildcard => 0,
            };
            if hit
                && best.is_none_or(|(bk, bl)| {
                    d.len() > bl || (d.len() == bl && rank(*kind) > rank(bk))
                })
            {
                best = Some((*kind, d.len()));
            }
        }
        best
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        #[test]
        fn lookup_matches_the_string_oracle(
            pats in proptest::collection::vec((0u8..3, proptest::collection::vec("[a-c]{1,2}", 1..4)), 1..12),
            names in proptest::collection::vec(proptest::collection::vec("[a-cA-C]{1,2}", 1..6), 1..20),
        ) {
            let pats: Vec<(PatternKind, String)> = pats
                .into_iter()
                .map(|(k, labels)| ([PatternKind::Exact, PatternKind::Suffix, PatternKind::Wildcard][k as usize], labels.join(".")))
                .collect();
            let mut b = DomainMap::builder();
            for (k, d) in &pats {
                b.insert(&DomainPattern { kind: *k, domain: d.clone() }, 0);
            }
            let m = b.build();
            for labels in names {
                let name = labels.join(".");
                let got = m.lookup(&name).map(|h| (h.kind, h.suffix_len));
                proptest::prop_assert_eq!(got, oracle(&pats, &name), "name {}", name);
            }
        }

        #[test]
        fn lookup_never_panics(name in "\\PC{0,300}") {
            let m = map(&[("example.com", 1), ("*.x.y", 2)]);
            let _ = m.lookup(&name);
        }
    }
}
