//! DNS messages: the question's name and type. Names are decoded into a
//! fixed 255-byte buffer (no allocation); compression pointers are
//! followed with a bound on jumps.

use super::bytes::be16;

/// A decoded DNS name (dotted, lowercase, at most 253 characters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DnsName {
    buf: [u8; 255],
    len: u8,
}

impl DnsName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DnsName({})", self.as_str())
    }
}

/// The first question of a DNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// Transaction id.
    pub id: u16,
    /// True for a response.
    pub response: bool,
    /// The queried name.
    pub name: DnsName,
    /// Query type (1 A, 28 AAAA, 65 HTTPS, ...).
    pub qtype: u16,
}

/// Decodes a name starting at `at`; returns it and the offset after it.
pub fn read_name(msg: &[u8], mut at: usize) -> Option<(DnsName, usize)> {
    let mut name = DnsName {
        buf: [0; 255],
        len: 0,
    };
    let mut end = None;
    let mut jumps = 0;
    loop {
        let l = *msg.get(at)?;
        match l & 0xC0 {
            0x00 => {
                if l == 0 {
                    return Some((name, end.unwrap_or(at + 1)));
                }
                let label = msg.get(at + 1..at + 1 + usize::from(l))?;
                let n = usize::from(name.len);
                let need = n + usize::from(n > 0) + label.len();
                if need > 253 {
                    return None;
                }
                if n > 0 {
                    name.buf[n] = b'.';
                }
                let start = n + usize::from(n > 0);
                for (d, &c) in name.buf[start..need].iter_mut().zip(label) {
                    if !(c.is_ascii_graphic()) || c == b'.' {
                        return None;
                    }
                    *d = c.to_ascii_lowercase();
                }
                name.len = need as u8;
                at += 1 + label.len();
            }
            0xC0 => {
                jumps += 1;
                if jumps > 16 {
                    return None;
                }
                let ptr = usize::from(be16(msg, at)? & 0x3FFF);
                end.get_or_insert(at + 2);
                if ptr >= at {
                    return None;
                }
                at = ptr;
            }
            _ => return None,
        }
    }
}

/// The first question of a DNS message over UDP.
pub fn question(msg: &[u8]) -> Option<Question> {
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    let qd = be16(msg, 4)?;
    // Standard query or response, at least one question.
    if qd == 0 || (flags >> 11) & 0xF > 2 {
        return None;
    }
    let (name, at) = read_name(msg, 12)?;
    let qtype = be16(msg, at)?;
    let class = be16(msg, at + 2)?;
    if class & 0x7FFF != 1 && class != 255 {
        return None;
    }
    Some(Question {
        id,
        response: flags & 0x8000 != 0,
        name,
        qtype,
    })
}

/// A DNS query read strictly enough to tell DNS on any port from other
/// traffic: a standard query (QR 0, opcode 0) with exactly one question
/// of class IN (or ANY) and a type other than 0, no answers or authority
/// records, and nothing after the question but at most one EDNS OPT
/// record. Random or other protocols' bytes meet all of that by chance
/// almost never: the message must end exactly where the question (and
/// the OPT record) says.
pub fn strict_query(msg: &[u8]) -> Option<Question> {
    let flags = be16(msg, 2)?;
    let (qd, an, ns, ar) = (be16(msg, 4)?, be16(msg, 6)?, be16(msg, 8)?, be16(msg, 10)?);
    if flags & 0xF800 != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let q = question(msg)?;
    let (_, at) = read_name(msg, 12)?;
    if q.qtype == 0 {
        return None;
    }
    let end = at + 4;
    match ar {
        0 => (msg.len() == end).then_some(q),
        _ => {
            // OPT: root name, type 41, class (payload size), TTL, length.
            let opt = msg.get(end..)?;
            let (&root, rest) = opt.split_first()?;
            let rdlen = usize::from(be16(rest, 8)?);
            (root == 0 && be16(rest, 0)? == 41 && opt.len() == 11 + rdlen).then_some(q)
        }
    }
}

/// The name a message is about: its first question, or (for mDNS and
/// LLMNR announcements, which carry no question) its first answer's owner.
pub fn first_name(msg: &[u8]) -> Option<DnsName> {
    if let Some(q) = question(msg) {
        return Some(q.name);
    }
    let flags = be16(msg, 2)?;
    let (qd, an) = (be16(msg, 4)?, be16(msg, 6)?);
    if qd != 0 || an == 0 || flags & 0x8000 == 0 {
        return None;
    }
    let (name, at) = read_name(msg, 12)?;
    // The answer's type and class must be there.
    be16(msg, at + 2)?;
    Some(name)
}

/// A DNS header a message on a DNS port can have: at least 12 bytes, an
/// assigned opcode (query, inverse query, status, notify, update), no
/// more than 16 questions and 256 records in each section, and at least
/// one question or record. Says nothing of the names: for DNS ports,
/// where the port already says DNS and only a name geowall will not take
/// (UTF-8 labels, an inverse query, damage) is missing.
pub fn plausible_header(msg: &[u8]) -> bool {
    let (Some(flags), Some(qd), Some(an), Some(ns), Some(ar)) = (
        be16(msg, 2),
        be16(msg, 4),
        be16(msg, 6),
        be16(msg, 8),
        be16(msg, 10),
    ) else {
        return false;
    };
    let opcode = (flags >> 11) & 0xF;
    matches!(opcode, 0 | 1 | 2 | 4 | 5)
        && qd <= 16
        && an.max(ns).max(ar) <= 256
        && u32::from(qd) + u32::from(an) + u32::from(ns) + u32::from(ar) > 0
}

/// The first question of a DNS message over TCP (2-byte length prefix).
pub fn question_tcp(stream: &[u8]) -> Option<Question> {
    let len = usize::from(be16(stream, 0)?);
    question(stream.get(2..2 + len).or_else(|| stream.get(2..))?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_strict_query_is_dns_on_any_port_and_little_else_is() {
        let q = query("a.example");
        assert_eq!(
            strict_query(&q)
                .map(|q| q.name.as_str().to_owned())
                .as_deref(),
            Some("a.example")
        );
        // With an EDNS OPT record.
        let mut e = q.clone();
        e[11] = 1;
        e.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert!(strict_query(&e).is_some());
        // A byte more, a response, two questions: not a strict query.
        let mut longer = q.clone();
        longer.push(0);
        assert!(strict_query(&longer).is_none());
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(strict_query(&resp).is_none());
        let mut two = q.clone();
        two[5] = 2;
        assert!(strict_query(&two).is_none());
    }

    proptest::proptest! {
        /// Random datagrams are almost never taken for DNS queries.
        #[test]
        fn random_bytes_are_not_strict_queries(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            proptest::prop_assume!(b.len() < 12 || b[4..6] != [0, 1] || b[6..10] != [0; 4]);
            proptest::prop_assert!(strict_query(&b).is_none());
        }
    }

    pub(crate) fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn questions() {
        let q = question(&query("WWW.Example.ORG")).expect("question");
        assert_eq!(
            (q.name.as_str(), q.qtype, q.response, q.id),
            ("www.example.org", 1, false, 0x1234)
        );
        let mut tcp = (query("a.b").len() as u16).to_be_bytes().to_vec();
        tcp.extend_from_slice(&query("a.b"));
        assert_eq!(
            question_tcp(&tcp).map(|q| q.name.as_str().to_owned()),
            Some("a.b".into())
        );
    }

    #[test]
    fn announcements_are_named_by_their_first_answer() {
        let mut m = vec![0, 0, 0x84, 0x00, 0, 0, 0, 1, 0, 0, 0, 0];
        for l in ["_raop", "_tcp", "local"] {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 12, 0, 1, 0, 0, 0, 10, 0, 0]);
        assert_eq!(
            first_name(&m).map(|n| n.as_str().to_owned()),
            Some("_raop._tcp.local".into())
        );
        assert!(question(&m).is_none());
    }

    #[test]
    fn compression_pointers_are_bounded() {
        // A pointer to itself and a forward pointer are refused.
        let mut m = vec![
            0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1,
        ];
        assert!(question(&m).is_none());
        m[13] = 40;
        assert!(question(&m).is_none());
        // A valid backward pointer.
        let mut r = query("x.example");
        let ans = r.len();
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(
            read_name(&r, ans).map(|(n, e)| (n.as_str().to_owned(), e)),
            Some(("x.example".into(), ans + 2))
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = question(&b);
            let _ = question_tcp(&b);
            let _ = read_name(&b, 0);
        }
    }
}
