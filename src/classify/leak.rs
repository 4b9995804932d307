//! Identifier leaks: registered identifiers (user IDs, room IDs, tokens,
//! e-mail addresses) found in cleartext payloads, in the encodings apps
//! commonly use: as-is, the hexadecimal form of a decimal number (and the
//! decimal form of a `0x` hex number), base64 (at any alignment inside a
//! longer base64 string) and URL-encoding. One Aho-Corasick automaton scans
//! every payload once; matches spanning packet boundaries are found by
//! keeping the last bytes of the previous payload of the same direction.
//!
//! Matching is case-sensitive (base64 is), except that e-mail addresses
//! are also searched in lowercase. Base64 detection at every alignment
//! needs identifiers of at least 6 bytes (a 4- or 5-byte one can leave too
//! few stable characters at one alignment). Memory per flow direction: the longest
//! pattern minus one byte of tail.

use aho_corasick::{AhoCorasick, MatchKind};
use serde::Serialize;

/// How an identifier appeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// As registered.
    Plain,
    /// A decimal number written in hexadecimal (or a hex number in decimal).
    Number,
    /// Inside base64.
    Base64,
    /// URL-encoded.
    UrlEncoded,
    /// Lowercased (e-mail addresses).
    Lowercase,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakHit {
    /// The identifier's label (e.g. `user_id`).
    pub label: String,
    /// How it was encoded.
    pub encoding: Encoding,
    /// Byte offset in the direction's stream where the match starts.
    pub offset: u64,
}

/// Why an identifier cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identifier '{label}': {why}")]
pub struct IdentifierError {
    /// The label.
    pub label: String,
    /// The reason.
    pub why: &'static str,
}

/// The minimum identifier length: shorter ones match by chance.
pub const MIN_LEN: usize = 4;

/// A compiled set of identifiers.
#[derive(Debug, Clone)]
pub struct LeakDetector {
    ac: AhoCorasick,
    /// Per pattern: (identifier index, encoding).
    meta: Vec<(usize, Encoding)>,
    labels: Vec<String>,
    max_len: usize,
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    s
}

/// The base64 substrings that appear whenever `v` is encoded at any
/// alignment inside a longer base64 string.
fn base64_forms(v: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..3usize {
        let mut buf = vec![0u8; k];
        buf.extend_from_slice(v);
        let enc = base64(&buf);
        // Characters carrying prefix bits, and the last partial group.
        let skip = [0, 2, 3][k];
        let full = (k + v.len()) / 3 * 4;
        if full >= skip + MIN_LEN {
            out.push(enc[skip..full].to_owned());
        }
    }
    out
}

fn url_encode(v: &str) -> String {
    let mut s = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl LeakDetector {
    /// Compiles `(label, value)` pairs.
    pub fn new(ids: &[(String, String)]) -> Result<Self, IdentifierError> {
        let mut pats: Vec<Vec<u8>> = Vec::new();
        let mut meta = Vec::new();
        let mut labels = Vec::new();
        for (i, (label, value)) in ids.iter().enumerate() {
            let err = |why| IdentifierError {
                label: label.clone(),
                why,
            };
            if value.len() < MIN_LEN {
                return Err(err("shorter than 4 characters: it would match by chance"));
            }
            if value.len() > 1024 {
                return Err(err("longer than 1024 characters"));
            }
            labels.push(label.clone());
            let mut add = |p: Vec<u8>, e: Encoding| {
                if p.len() >= MIN_LEN && !pats.contains(&p) {
                    pats.push(p);
                    meta.push((i, e));
                }
            };
            add(value.as_bytes().to_vec(), Encoding::Plain);
            if value.bytes().all(|b| b.is_ascii_digit())
                && let Ok(n) = value.parse::<u128>()
            {
                add(format!("{n:x}").into_bytes(), Encoding::Number);
                add(format!("{n:X}").into_bytes(), Encoding::Number);
            }
            if let Some(h) = value
                .strip_prefix("0x")
                .or_else(|| value.strip_prefix("0X"))
                && let Ok(n) = u128::from_str_radix(h, 16)
            {
                add(n.to_string().into_bytes(), Encoding::Number);
            }
            for f in base64_forms(value.as_bytes()) {
                add(f.into_bytes(), Encoding::Base64);
            }
            let u = url_encode(value);
            if u != *value {
                add(u.into_bytes(), Encoding::UrlEncoded);
            }
            if value.contains('@') {
                add(value.to_ascii_lowercase().into_bytes(), Encoding::Lowercase);
            }
        }
        let max_len = pats.iter().map(Vec::len).max().unwrap_or(0);
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&pats)
            .map_err(|_| IdentifierError {
                label: String::new(),
                why: "patterns could not be compiled",
            })?;
        Ok(Self {
            ac,
            meta,
            labels,
            max_len,
        })
    }

    /// Scans the next payload of one direction of a flow.
    pub fn scan(&self, state: &mut ScanState, payload: &[u8], hits: &mut Vec<LeakHit>) {
        let tail = state.tail.len();
        state.buf.clear();
        state.buf.extend_from_slice(&state.tail);
        state.buf.extend_from_slice(payload);
        let base = state.offset - tail as u64;
        for m in self.ac.find_iter(&state.buf) {
            // Matches wholly inside the old tail were reported before.
            if m.end() <= tail {
                continue;
            }
            if let Some(&(i, encoding)) = self.meta.get(m.pattern().as_usize()) {
                hits.push(LeakHit {
                    label: self.labels[i].clone(),
                    encoding,
                    offset: base + m.start() as u64,
                });
            }
        }
        let keep = self.max_len.saturating_sub(1).min(state.buf.len());
        state.tail.clear();
        state
            .tail
            .extend_from_slice(&state.buf[state.buf.len() - keep..]);
        state.offset += payload.len() as u64;
    }
}

/// Per-direction scanning state.
#[derive(Debug, Clone, Default)]
pub struct ScanState {
    tail: Vec<u8>,
    buf: Vec<u8>,
    offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(ids: &[(&str, &str)]) -> LeakDetector {
        LeakDetector::new(
            &ids.iter()
                .map(|(l, v)| ((*l).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
        .expect("compiles")
    }

    fn scan(d: &LeakDetector, parts: &[&[u8]]) -> Vec<LeakHit> {
        let mut st = ScanState::default();
        let mut hits = Vec::new();
        for p in parts {
            d.scan(&mut st, p, &mut hits);
        }
        hits
    }

    #[test]
    fn encodings() {
        let d = det(&[("user_id", "1234567890"), ("email", "Ann@Example.org")]);
        let enc = |p: &[u8]| {
            scan(&d, &[p])
                .into_iter()
                .map(|h| (h.label, h.encoding))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            enc(b"uid=1234567890&x"),
            [("user_id".into(), Encoding::Plain)]
        );
        assert_eq!(enc(b"id:499602d2;"), [("user_id".into(), Encoding::Number)]);
        // base64 at every alignment inside a longer string.
        for prefix in ["", "x", "xy", "xyz"] {
            let b = base64(format!("{prefix}1234567890{prefix}").as_bytes());
            let hits = enc(b.as_bytes());
            assert!(
                hits.contains(&("user_id".into(), Encoding::Base64)),
                "prefix {prefix:?}: {b}"
            );
        }
        assert_eq!(
            enc(b"to=Ann%40Example.org"),
            [("email".into(), Encoding::UrlEncoded)]
        );
        assert_eq!(
            enc(b"mail ann@example.org"),
            [("email".into(), Encoding::Lowercase)]
        );
        assert!(enc(b"nothing here 123456789").is_empty());
    }

    #[test]
    fn across_packets_once_with_stream_offsets() {
        let d = det(&[("room", "ROOM-77421")]);
        let hits = scan(&d, &[b"header ROOM-7", b"7421 trailer", b"and ROOM-77421"]);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].offset, 7);
        assert_eq!(hits[1].offset, 13 + 12 + 4);
    }

    #[test]
    fn short_identifiers_are_refused() {
        assert!(LeakDetector::new(&[("x".into(), "123".into())]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn base64_forms_are_found_at_any_alignment(v in "[ -~]{6,40}", pre in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5), post in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5)) {
            let d = det(&[("id", v.as_str())]);
            let mut raw = pre.clone();
            raw.extend_from_slice(v.as_bytes());
            raw.extend_from_slice(&post);
            let b = base64(&raw);
            let hits = scan(&d, &[b.as_bytes()]);
            proptest::prop_assert!(hits.iter().any(|h| h.label == "id"), "{} in {}", v, b);
        }
    }
}
