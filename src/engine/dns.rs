//! DNS inside the engine, sans-IO: every query the app sends (UDP or TCP,
//! port 53, to any address) is answered here. Names a policy blocks get the
//! configured block answer; other queries are resolved by the driver
//! ([`super::dataplane::Output::DnsQuery`]), cached here, and their answers
//! filtered before the app sees them: addresses under a blocked
//! jurisdiction are removed from A, AAAA and HTTPS/SVCB hints, CNAME chains
//! are checked link by link. Addresses learned from answers (and from TLS,
//! QUIC, HTTP and SD-RTN names) are remembered with their names
//! ([`NameMap`]) for the flows that follow.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamValue};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::intel::jurisdiction::Intel;
use crate::policy::{DnsBlockAnswer, DnsEmptyAnswer, DnsFilter, Policy};

/// Largest UDP answer sent when the query had no EDNS.
pub const UDP_PLAIN: usize = 512;
/// Largest UDP answer sent with EDNS (the DNS flag day 2020 value).
pub const UDP_EDNS: u16 = 1232;
/// Positive answers are cached at most this long (and at least
/// [`MIN_TTL`]).
pub const MAX_TTL: u32 = 86_400;
/// Negative answers (NXDOMAIN, NODATA) are cached at most this long.
pub const MAX_NEGATIVE_TTL: u32 = 900;
/// No answer is cached for less (servers that say 0 would make every query
/// go upstream).
pub const MIN_TTL: u32 = 1;
/// TTL of synthesised block answers.
pub const BLOCK_TTL: u32 = 60;
/// Names kept per address.
pub const NAMES_PER_ADDRESS: usize = 8;
/// How long a name seen in a flow (SNI, Host, ...) is remembered.
pub const SEEN_NAME_TTL_NS: u64 = 300_000_000_000;
/// How long a name from a DNS answer stays with its address at least,
/// whatever the answer's TTL (one hour): apps keep using addresses past
/// their TTL, and the name is the evidence of whose service it is.
pub const NAME_HOLD_NS: u64 = 3_600_000_000_000;

/// Limits of the DNS state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsLimits {
    /// Cached answers at most (default 8,192).
    pub cache_entries: usize,
    /// Bytes of cached answers at most, counted as their wire size
    /// (default 4 MiB).
    pub cache_bytes: usize,
    /// Addresses with learned names at most (default 65,536).
    pub names: usize,
    /// Queries waiting for the resolver at most (default 1,024); more get
    /// SERVFAIL at once.
    pub pending: usize,
    /// A query the resolver has not answered by then gets SERVFAIL
    /// (default 4 s: before a stub resolver's own 5 s timeout, so that a
    /// dead or slow upstream fails fast and visibly).
    pub answer_within_ns: u64,
}

impl Default for DnsLimits {
    fn default() -> Self {
        Self {
            cache_entries: 8_192,
            cache_bytes: 4 << 20,
            names: 65_536,
            pending: 1_024,
            answer_within_ns: 4_000_000_000,
        }
    }
}

/// What the resolver said.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The response code (NoError with no records is NODATA).
    pub rcode: ResponseCode,
    /// The answer section (CNAME chain and records), as received.
    pub records: Vec<Record>,
    /// How long a negative answer may be cached (from the SOA), if known.
    pub negative_ttl: Option<u32>,
}

/// A cached answer.
#[derive(Debug, Clone)]
struct Cached {
    rcode: ResponseCode,
    records: Arc<[Record]>,
    /// When it was stored, and when it expires.
    stored_ns: u64,
    expires_ns: u64,
    bytes: usize,
}

/// Answers by (lowercased name, type), bounded in entries and bytes;
/// oldest out first.
#[derive(Debug, Default)]
pub struct Cache {
    map: HashMap<(Name, RecordType), Cached>,
    order: VecDeque<((Name, RecordType), u64)>,
    bytes: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups not in the cache (or expired).
    pub misses: u64,
}

impl Cache {
    fn get(
        &mut self,
        key: &(Name, RecordType),
        now_ns: u64,
    ) -> Option<(ResponseCode, Arc<[Record]>, u32)> {
        match self.map.get(key) {
            Some(c) if c.expires_ns > now_ns => {
                self.hits += 1;
                // Hand out the records with their remaining TTL.
                let elapsed =
                    u32::try_from((now_ns - c.stored_ns) / 1_000_000_000).unwrap_or(u32::MAX);
                Some((c.rcode, c.records.clone(), elapsed))
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    fn put(&mut self, key: (Name, RecordType), r: &Resolved, now_ns: u64, lim: &DnsLimits) {
        let ttl = if r.records.is_empty() {
            r.negative_ttl
                .unwrap_or(60)
                .clamp(MIN_TTL, MAX_NEGATIVE_TTL)
        } else {
            r.records
                .iter()
                .map(|x| x.ttl)
                .min()
                .unwrap_or(0)
                .clamp(MIN_TTL, MAX_TTL)
        };
        let bytes = 64 + r.records.iter().map(approx_size).sum::<usize>();
        if bytes > lim.cache_bytes / 4 {
            return;
        }
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= old.bytes;
        }
        while self.map.len() >= lim.cache_entries || self.bytes + bytes > lim.cache_bytes {
            let Some((k, at)) = self.order.pop_front() else {
                break;
            };
            // Skip stale order entries (the key was replaced since).
            if self.map.get(&k).is_some_and(|c| c.stored_ns == at)
                && let Some(c) = self.map.remove(&k)
            {
                self.bytes -= c.bytes;
            }
        }
        self.bytes += bytes;
        self.order.push_back((key.clone(), now_ns));
        self.map.insert(
            key,
            Cached {
                rcode: r.rcode,
                records: r.records.clone().into(),
                stored_ns: now_ns,
                expires_ns: now_ns + u64::from(ttl) * 1_000_000_000,
                bytes,
            },
        );
        // The order queue may hold stale entries; keep it bounded too.
        if self.order.len() > 2 * lim.cache_entries {
            let map = &self.map;
            self.order
                .retain(|(k, at)| map.get(k).is_some_and(|c| c.stored_ns == *at));
        }
    }

    /// Answers cached now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes cached now (wire-size estimate).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn approx_size(r: &Record) -> usize {
    let name = r.name.len() + 10;
    name + match &r.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::CNAME(c) => c.0.len(),
        RData::HTTPS(s) => 64 + s.0.target_name.len() + 32 * s.0.svc_params.len(),
        RData::SVCB(s) => 64 + s.target_name.len() + 32 * s.svc_params.len(),
        _ => 128,
    }
}
/// Address → the names it was reached by, each with an expiry. Bounded by
/// a number of addresses; when full, the address used least recently
/// (learned or looked up) makes room. At most [`NAMES_PER_ADDRESS`] names
/// per address.
#[derive(Debug, Default)]
pub struct NameMap {
    map: HashMap<IpAddr, NameEntry>,
    /// Addresses in order of use, with the use's stamp; an entry whose
    /// stamp is not its address's latest is stale and skipped.
    order: VecDeque<(IpAddr, u64)>,
    clock: u64,
}

#[derive(Debug)]
struct NameEntry {
    names: Vec<(Arc<str>, u64)>,
    used: u64,
}

impl NameMap {
    /// Remembers that `ip` was reached by `name` until `expires_ns`, in a
    /// map of at most `max` addresses.
    pub fn learn(&mut self, ip: IpAddr, name: &str, expires_ns: u64, max: usize) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.map.contains_key(&ip) {
            self.touch(ip);
            let Some(e) = self.map.get_mut(&ip) else {
                return;
            };
            let v = &mut e.names;
            if let Some(e) = v.iter_mut().find(|(n, _)| **n == *name) {
                e.1 = e.1.max(expires_ns);
            } else if v.len() < NAMES_PER_ADDRESS {
                v.push((name.into(), expires_ns));
            } else if let Some(e) = v.iter_mut().min_by_key(|(_, t)| *t) {
                // Full: the name that expires first makes room.
                *e = (name.into(), expires_ns);
            }
            return;
        }
        while self.map.len() >= max.max(1) {
            let Some((old, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|e| e.used == stamp) {
                self.map.remove(&old);
            }
        }
        self.clock += 1;
        self.order.push_back((ip, self.clock));
        self.map.insert(
            ip,
            NameEntry {
                names: vec![(name.into(), expires_ns)],
                used: self.clock,
            },
        );
        self.compact();
    }

    /// Marks `ip` as just used.
    fn touch(&mut self, ip: IpAddr) {
        self.clock += 1;
        let stamp = self.clock;
        if let Some(e) = self.map.get_mut(&ip) {
            e.used = stamp;
            self.order.push_back((ip, stamp));
            self.compact();
        }
    }

    /// Drops stale order entries once they outnumber the live ones, so the
    /// queue stays within twice the map's size.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(ip, stamp)| map.get(ip).is_some_and(|e| e.used == *stamp));
        }
    }

    /// The names `ip` was reached by that have not expired at `now_ns`; a
    /// hit counts as a use.
    pub fn names(&mut self, ip: IpAddr, now_ns: u64) -> impl Iterator<Item = &str> {
        if self.map.contains_key(&ip) {
            self.touch(ip);
        }
        self.map
            .get(&ip)
            .into_iter()
            .flat_map(|e| &e.names)
            .filter(move |(_, t)| *t > now_ns)
            .map(|(n, _)| &**n)
    }

    /// Addresses with names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no address has a name.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A query the app sent, reduced to what the answer needs.
#[derive(Debug, Clone)]
pub struct Question {
    /// The query's id.
    pub id: u16,
    /// Recursion desired, copied into the answer.
    pub rd: bool,
    /// The question, as asked (case kept).
    pub query: Query,
    /// The name, lowercased (the cache key).
    pub name: Name,
    /// EDNS payload size the app offered, if it used EDNS.
    pub edns: Option<u16>,
}

impl Question {
    /// The name as text, lowercased, without the final dot.
    pub fn name_text(&self) -> String {
        let s = self.name.to_ascii();
        s.trim_end_matches('.').to_owned()
    }
}

/// Why a DNS message could not be taken as a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not even a header: nothing can be answered.
    Unreadable,
    /// Answer with this code (FORMERR, NOTIMP, SERVFAIL) and the id.
    Answer(u16, ResponseCode),
}

/// Reads an app's query.
pub fn parse_query(bytes: &[u8]) -> Result<Question, Refusal> {
    let id = match bytes {
        [a, b, ..] if bytes.len() >= 12 => u16::from_be_bytes([*a, *b]),
        _ => return Err(Refusal::Unreadable),
    };
    let m = Message::from_vec(bytes).map_err(|_| Refusal::Answer(id, ResponseCode::ServFail))?;
    if m.metadata.message_type != MessageType::Query {
        return Err(Refusal::Unreadable);
    }
    if m.metadata.op_code != OpCode::Query {
        return Err(Refusal::Answer(id, ResponseCode::NotImp));
    }
    let [query] = &m.queries[..] else {
        return Err(Refusal::Answer(id, ResponseCode::FormErr));
    };
    Ok(Question {
        id,
        rd: m.metadata.recursion_desired,
        name: query.name().to_lowercase(),
        query: query.clone(),
        edns: m.edns.as_ref().map(|e| e.max_payload()),
    })
}

/// A minimal error answer: the header of `bytes` with QR set and `rcode`,
/// and its question if it has one that parses.
pub fn error_answer(id: u16, rcode: ResponseCode, q: Option<&Question>) -> Vec<u8> {
    let mut m = Message::error_msg(id, OpCode::Query, rcode);
    if let Some(q) = q {
        m.add_query(q.query.clone());
        m.metadata.recursion_desired = q.rd;
    }
    m.metadata.recursion_available = true;
    m.to_vec().unwrap_or_else(|_| {
        let mut h = vec![0u8; 12];
        h[0..2].copy_from_slice(&id.to_be_bytes());
        h[2] = 0x80;
        h[3] = 0x80 | (u16::from(rcode) & 0xF) as u8;
        h
    })
}

/// What an answer did, for the event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The rule that blocked the name (or a CNAME link), if any.
    pub blocked_by: Option<String>,
    /// Addresses removed from the answer, and the rule of the first.
    pub removed: Vec<IpAddr>,
    /// The rule and layer that removed them.
    pub removed_by: Option<(String, Option<String>)>,
    /// Addresses left in the answer.
    pub kept: Vec<IpAddr>,
    /// The names of the CNAME chain, in order.
    pub chain: Vec<String>,
}

/// Builds the answer to `q` from resolver `records` (already aged by
/// `age_s`), applying the policy; learns the kept addresses into `names`.
#[expect(clippy::too_many_arguments, reason = "the answer's inputs, named")]
pub fn answer(
    q: &Question,
    rcode: ResponseCode,
    records: &[Record],
    age_s: u32,
    policy: &Policy,
    intel: &Intel,
    app: Option<&str>,
    tcp: bool,
) -> (Vec<u8>, Outcome) {
    let mut out = Outcome::default();
    let chain = chain(&q.name_text(), records);
    out.chain.clone_from(&chain);
    // Link by link: a blocked name anywhere in the chain blocks the query.
    for link in &chain {
        if let Some(rule) = policy.dns_blocks_name(intel, &[link.as_str()], app) {
            out.blocked_by = Some(rule.name.clone());
            let how = rule.dns_answer.unwrap_or(policy.dns.blocked);
            return (block_answer(q, how, tcp), out);
        }
    }
    let names: Vec<&str> = chain.iter().map(String::as_str).collect();
    let mut m = response(q, rcode);
    let mut kept = Vec::with_capacity(records.len());
    let mut had_addresses = false;
    let blocked_ip = |ip: IpAddr, out: &mut Outcome| -> bool {
        if policy.dns.filter == DnsFilter::Off {
            return false;
        }
        match policy.dns_blocks_address(intel, ip, &names, app) {
            Some((rule, layer)) => {
                out.removed.push(ip);
                out.removed_by
                    .get_or_insert_with(|| (rule.name.clone(), layer.map(|l| l.to_string())));
                true
            }
            None => false,
        }
    };
    for r in records {
        let mut r = r.clone();
        r.ttl = r.ttl.saturating_sub(age_s).max(MIN_TTL);
        match &mut r.data {
            RData::A(A(ip)) => {
                had_addresses = true;
                let ip = IpAddr::V4(*ip);
                if !blocked_ip(ip, &mut out) {
                    out.kept.push(ip);
                    kept.push(r);
                }
            }
            RData::AAAA(AAAA(ip)) => {
                had_addresses = true;
                let ip = IpAddr::V6(*ip);
                if !blocked_ip(ip, &mut out) {
                    out.kept.push(ip);
                    kept.push(r);
                }
            }
            RData::HTTPS(s) => {
                filter_hints(&mut s.0.svc_params, &mut |ip| blocked_ip(ip, &mut out));
                kept.push(r);
            }
            RData::SVCB(s) => {
                filter_hints(&mut s.svc_params, &mut |ip| blocked_ip(ip, &mut out));
                kept.push(r);
            }
            _ => kept.push(r),
        }
    }
    if policy.dns.filter == DnsFilter::Prefer && had_addresses && out.kept.is_empty() {
        // Nothing else to offer: answer as resolved; the flow rules decide.
        out.removed.clear();
        out.removed_by = None;
        kept = records.to_vec();
        for r in &mut kept {
            r.ttl = r.ttl.saturating_sub(age_s).max(MIN_TTL);
            match &r.data {
                RData::A(A(ip)) => out.kept.push(IpAddr::V4(*ip)),
                RData::AAAA(AAAA(ip)) => out.kept.push(IpAddr::V6(*ip)),
                _ => {}
            }
        }
    }
    if had_addresses && out.kept.is_empty() {
        match policy.dns.filtered {
            DnsEmptyAnswer::Nodata => kept.retain(|r| matches!(r.data, RData::CNAME(_))),
            DnsEmptyAnswer::Nxdomain => {
                kept.clear();
                m.metadata.response_code = ResponseCode::NXDomain;
            }
        }
    }
    m.add_answers(kept);
    (encode(&m, q, tcp), out)
}

/// The names of an answer's CNAME chain: the question's name, then every
/// CNAME target, lowercased, without the final dot.
pub fn chain(qname: &str, records: &[Record]) -> Vec<String> {
    let mut chain = vec![qname.trim_end_matches('.').to_ascii_lowercase()];
    for r in records {
        if let RData::CNAME(c) = &r.data {
            let t = c.0.to_lowercase().to_ascii();
            let t = t.trim_end_matches('.').to_owned();
            if !chain.contains(&t) {
                chain.push(t);
            }
        }
    }
    chain
}

/// Ties each address of an answer to every name of its chain, for the
/// answer's TTL but at least [`NAME_HOLD_NS`]: apps use an answer past its
/// TTL (their own caches, Happy Eyeballs), and a low TTL must not detach a
/// vendor's name from its edge. The one rule for the live engine and the
/// audit.
pub fn learn_answer(
    names: &mut NameMap,
    chain: &[String],
    addrs: &[IpAddr],
    ttl_s: u32,
    now_ns: u64,
    max: usize,
) {
    let until = now_ns + (u64::from(ttl_s) * 1_000_000_000).max(NAME_HOLD_NS);
    for ip in addrs {
        for n in chain {
            names.learn(*ip, n, until, max);
        }
    }
}

/// A DNS answer seen on the wire (in a capture): its chain, its addresses
/// and their smallest TTL. `None` for anything that is not a response
/// carrying addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenAnswer {
    /// The CNAME chain, as [`chain`] gives it.
    pub chain: Vec<String>,
    /// The A and AAAA addresses.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the answer's records, seconds.
    pub ttl_s: u32,
}

/// Reads a DNS response message (see [`SeenAnswer`]).
pub fn seen_answer(payload: &[u8]) -> Option<SeenAnswer> {
    let m = Message::from_vec(payload).ok()?;
    if m.metadata.message_type != MessageType::Response {
        return None;
    }
    let q = m.queries.first()?;
    let addrs: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(IpAddr::V4(*ip)),
            RData::AAAA(AAAA(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        return None;
    }
    Some(SeenAnswer {
        chain: chain(&q.name().to_lowercase().to_ascii(), &m.answers),
        addrs,
        ttl_s: m.answers.iter().map(|r| r.ttl).min().unwrap_or(0),
    })
}

/// Removes blocked addresses from ipv4hint/ipv6hint; a hint list left
/// empty is removed.
/// The addresses of an HTTPS or SVCB record's `ipv4hint` and `ipv6hint`.
pub(crate) fn hints(
    params: &[(hickory_proto::rr::rdata::svcb::SvcParamKey, SvcParamValue)],
) -> impl Iterator<Item = IpAddr> + '_ {
    params.iter().flat_map(|(_, v)| {
        let (v4, v6): (&[A], &[AAAA]) = match v {
            SvcParamValue::Ipv4Hint(IpHint(h)) => (h, &[]),
            SvcParamValue::Ipv6Hint(IpHint(h)) => (&[], h),
            _ => (&[], &[]),
        };
        v4.iter()
            .map(|a| IpAddr::V4(a.0))
            .chain(v6.iter().map(|a| IpAddr::V6(a.0)))
    })
}

/// Removes the hint addresses `blocked` says so of (and hints left with
/// none).
pub(crate) fn filter_hints(
    params: &mut Vec<(hickory_proto::rr::rdata::svcb::SvcParamKey, SvcParamValue)>,
    blocked: &mut dyn FnMut(IpAddr) -> bool,
) {
    params.retain_mut(|(_, v)| match v {
        SvcParamValue::Ipv4Hint(IpHint(h)) => {
            h.retain(|a| !blocked(IpAddr::V4(a.0)));
            !h.is_empty()
        }
        SvcParamValue::Ipv6Hint(IpHint(h)) => {
            h.retain(|a| !blocked(IpAddr::V6(a.0)));
            !h.is_empty()
        }
        _ => true,
    });
}

fn response(q: &Question, rcode: ResponseCode) -> Message {
    let mut m = Message::response(q.id, OpCode::Query);
    m.metadata.recursion_desired = q.rd;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.add_query(q.query.clone());
    if q.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(UDP_EDNS);
        m.set_edns(e);
    }
    m
}

/// The block answer for `q`.
pub fn block_answer(q: &Question, how: DnsBlockAnswer, tcp: bool) -> Vec<u8> {
    match how {
        DnsBlockAnswer::Nxdomain => {
            let m = response(q, ResponseCode::NXDomain);
            encode(&m, q, tcp)
        }
        DnsBlockAnswer::Null => {
            let mut m = response(q, ResponseCode::NoError);
            let name = q.query.name().clone();
            match q.query.query_type() {
                RecordType::A => {
                    m.add_answer(Record::from_rdata(
                        name,
                        BLOCK_TTL,
                        RData::A(A::new(0, 0, 0, 0)),
                    ));
                }
                RecordType::AAAA => {
                    m.add_answer(Record::from_rdata(
                        name,
                        BLOCK_TTL,
                        RData::AAAA(AAAA::new(0, 0, 0, 0, 0, 0, 0, 0)),
                    ));
                }
                _ => {}
            }
            encode(&m, q, tcp)
        }
    }
}

/// Encodes `m`; over UDP, an answer larger than the app can take becomes
/// a truncated one (TC set, no records), so the app retries over TCP.
fn encode(m: &Message, q: &Question, tcp: bool) -> Vec<u8> {
    let limit = if tcp {
        usize::from(u16::MAX)
    } else {
        q.edns
            .map_or(UDP_PLAIN, |e| usize::from(e.clamp(512, UDP_EDNS)))
    };
    match m.to_vec() {
        Ok(v) if v.len() <= limit => v,
        Ok(_) => {
            let mut t = response(q, m.metadata.response_code);
            t.metadata.truncation = true;
            t.to_vec()
                .unwrap_or_else(|_| error_answer(q.id, ResponseCode::ServFail, Some(q)))
        }
        Err(_) => error_answer(q.id, ResponseCode::ServFail, Some(q)),
    }
}

/// The cache key of a question.
pub fn key(q: &Question) -> (Name, RecordType) {
    (q.name.clone(), q.query.query_type())
}

/// Looks `q` up in the cache.
pub fn cached(
    cache: &mut Cache,
    q: &Question,
    now_ns: u64,
) -> Option<(ResponseCode, Arc<[Record]>, u32)> {
    cache.get(&key(q), now_ns)
}

/// Stores a resolver answer for `q`.
pub fn store(cache: &mut Cache, q: &Question, r: &Resolved, now_ns: u64, lim: &DnsLimits) {
    // Failures other than "no such name" are not cached.
    if matches!(r.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        cache.put(key(q), r, now_ns, lim);
    }
}

#[cfg(test)]
mod tests;
