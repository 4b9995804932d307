//! The rule language (TOML) and its compiled form; `docs/rules.md` is the
//! user's reference, checked against this parser by a test.
//!
//! ```toml
//! name = "example"
//! default = "allow"                 # or "block" (then default_block = "drop" | "reject")
//!
//! [[list]]                          # lists referenced by rules, relative to this file
//! name = "ads"
//! file = "lists/ads.txt"
//! format = "hosts"                  # domains | hosts | adblock | cidr | asn | sing-box
//!
//! [[list]]                          # or a list of an installed list bundle
//! name = "trackers"
//! from = "acme"
//!
//! [[rule]]                          # first match wins ("log" rules record and go on)
//! name = "no pings or media to PRC jurisdiction"
//! action = "block"                  # allow | block | log | ask
//! block = "reject"                  # drop (default) | reject: TCP RST / ICMP unreachable
//! traffic = ["ping", "media"]
//! jurisdiction = { countries = ["CN"], layers = ["geo", "network", "owner", "vendor"], unknown = "ignore", disputed = "any" }
//! ```
//!
//! Conditions (all optional; a rule matches when all its conditions do; the
//! values in one list are alternatives): `jurisdiction`, `asn`, `cidr`,
//! `domain`, `vendor`, `port` (numbers or `"a-b"` ranges), `protocol`
//! (`tcp`, `udp`, `icmp`), `traffic` (`dns`, `web`, `media`, `ping`,
//! `other`), `encrypted`, `leak`, `local` (the server is on the device or
//! the local network: loopback, private, link-local, multicast), `app`
//! (paths, file names or globs: [`super::app`]), `uid`, `list`. A condition on a fact that
//! is not known yet (no server name, traffic not classified) does not
//! match.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::app::AppPattern;
use super::lists::{InstalledLists, ListEntries, ListFormat, ListRef, parse_list};
use crate::intel::catalog::{Catalog, SourceError};
use crate::intel::country::Country;
use crate::intel::domain::{DomainMap, DomainPattern};
use crate::intel::jurisdiction::Layer;

/// What to do with a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through.
    Allow,
    /// Stop it.
    Block(BlockMode),
    /// Record it and keep evaluating (as a rule); never a final verdict.
    Log,
    /// Hold the flow (nothing leaves) and ask the user; unanswered, the
    /// rule's default applies at its timeout.
    Ask(Ask),
}

impl Action {
    /// `allow`, `block`, `log` or `ask`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block(_) => "block",
            Action::Log => "log",
            Action::Ask(_) => "ask",
        }
    }
}

/// An `ask` rule's terms: what applies when no one answers, after how
/// long, and how a block (answered or by default) is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ask {
    /// Allow when no one answers in time (else block).
    pub default_allow: bool,
    /// Seconds a flow is held waiting for an answer
    /// ([`ASK_TIMEOUT_MAX`] at most).
    pub timeout_s: u16,
    /// How a block is carried out.
    pub mode: BlockMode,
}

/// Default seconds an `ask` rule holds a flow.
pub const ASK_TIMEOUT_DEFAULT: u16 = 30;
/// Most seconds an `ask` rule may hold a flow.
pub const ASK_TIMEOUT_MAX: u16 = 600;

impl Ask {
    /// The action an answer (or the timeout) leads to.
    pub fn outcome(&self, allow: bool) -> Action {
        if allow {
            Action::Allow
        } else {
            Action::Block(self.mode)
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsk {
    #[serde(default)]
    default: RawAskDefault,
    #[serde(default = "raw_ask_timeout")]
    timeout: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAskDefault {
    Allow,
    #[default]
    Block,
}

fn raw_ask_timeout() -> u32 {
    u32::from(ASK_TIMEOUT_DEFAULT)
}

/// Which end of a relayed flow a rule's conditions look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// The flow's server, and each peer a TURN relay is asked to reach.
    #[default]
    Any,
    /// The flow's server only (for a relayed flow, the relay).
    Server,
    /// The peers a TURN relay is asked to reach only.
    Peer,
}

/// How a block is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockMode {
    /// Silently discard.
    #[default]
    Drop,
    /// Tell the app: TCP RST, or ICMP/ICMPv6 unreachable.
    Reject,
}

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

pub use crate::classify::Traffic;

/// What unknown geolocation or network data means for a jurisdiction
/// condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownMode {
    /// Unknown matches nothing (other layers may still match).
    #[default]
    Ignore,
    /// Unknown counts as a match: "if we cannot tell, assume the worst".
    /// Local (special-purpose) addresses are not unknown.
    Match,
}

/// What a disagreement between geolocation sources means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisputedMode {
    /// Any source naming a listed country is enough.
    #[default]
    Any,
    /// Every source that knows must name a listed country.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    Allow,
    Block,
    Log,
    Ask,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    description: Option<String>,
    default: Spanned<RawAction>,
    #[serde(default)]
    default_block: Option<BlockMode>,
    #[serde(default)]
    list: Vec<RawList>,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    dns: DnsSettings,
}

/// What a blocked DNS name is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsBlockAnswer {
    /// NXDOMAIN: the name does not exist.
    #[default]
    Nxdomain,
    /// `0.0.0.0` for A, `::` for AAAA (apps that retry on NXDOMAIN stop).
    Null,
}

/// What an answer whose every address was filtered out becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsEmptyAnswer {
    /// NOERROR with no addresses (NODATA).
    #[default]
    Nodata,
    /// NXDOMAIN.
    Nxdomain,
}

/// Which addresses answer filtering removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsFilter {
    /// Every address some block rule's address conditions match
    /// (jurisdiction, ASN, CIDR), whatever the traffic would be.
    #[default]
    All,
    /// Such addresses only when others remain: names served only from
    /// blocked jurisdictions still resolve (the flow rules then decide).
    Prefer,
    /// None.
    Off,
}

/// The policy's `[dns]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSettings {
    /// Answer for blocked names (a rule's `dns_answer` overrides it).
    #[serde(default)]
    pub blocked: DnsBlockAnswer,
    /// Answer when filtering removed every address.
    #[serde(default)]
    pub filtered: DnsEmptyAnswer,
    /// Which addresses are filtered out of answers.
    #[serde(default)]
    pub filter: DnsFilter,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    name: Spanned<String>,
    #[serde(default)]
    file: Option<Spanned<String>>,
    #[serde(default)]
    format: Option<ListFormat>,
    /// A list of an installed list bundle, by the bundle's name.
    #[serde(default)]
    from: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJurisdiction {
    countries: Vec<Spanned<String>>,
    #[serde(default)]
    layers: Option<Vec<Layer>>,
    #[serde(default)]
    unknown: UnknownMode,
    #[serde(default)]
    disputed: DisputedMode,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    One(i64),
    Range(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Spanned<RawAction>,
    #[serde(default)]
    block: Option<Spanned<BlockMode>>,
    #[serde(default)]
    ask: Option<Spanned<RawAsk>>,
    #[serde(default)]
    jurisdiction: Option<Spanned<RawJurisdiction>>,
    #[serde(default)]
    asn: Option<Spanned<Vec<u32>>>,
    #[serde(default)]
    cidr: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    domain: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    vendor: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    port: Option<Spanned<Vec<Spanned<RawPort>>>>,
    #[serde(default)]
    protocol: Option<Spanned<Vec<Transport>>>,
    #[serde(default)]
    traffic: Option<Spanned<Vec<Traffic>>>,
    #[serde(default)]
    encrypted: Option<bool>,
    #[serde(default)]
    leak: Option<bool>,
    #[serde(default)]
    local: Option<bool>,
    #[serde(default)]
    app: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    uid: Option<Spanned<Vec<u32>>>,
    #[serde(default)]
    list: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    dns_answer: Option<DnsBlockAnswer>,
    #[serde(default)]
    endpoint: Endpoint,
}

/// Sorted, merged address ranges; membership by binary search.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    fn from_nets(nets: &[ipnet::IpNet]) -> Self {
        fn merge<T: Ord + Copy>(mut v: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
            v.sort_unstable();
            let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
            for (s, e) in v {
                if let Some(last) = out.last_mut()
                    && next(last.1).is_none_or(|n| s <= n)
                {
                    last.1 = last.1.max(e);
                    continue;
                }
                out.push((s, e));
            }
            out
        }
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in nets {
            match n {
                ipnet::IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                ipnet::IpNet::V6(n) => {
                    v6.push((u128::from(n.network()), u128::from(n.broadcast())))
                }
            }
        }
        Self {
            v4: merge(v4, |x| x.checked_add(1)),
            v6: merge(v6, |x| x.checked_add(1)),
        }
    }

    /// True when `ip` is in the set (IPv4-mapped IPv6 is checked as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn find<T: Ord + Copy>(v: &[(T, T)], x: T) -> bool {
            let i = v.partition_point(|r| r.0 <= x);
            i > 0 && v[i - 1].1 >= x
        }
        match crate::intel::world::lookup_key(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// A compiled list.
#[derive(Debug, Clone)]
pub struct CompiledList {
    /// The list's name.
    pub name: String,
    /// Where it came from.
    pub file: PathBuf,
    /// Its domains.
    pub domains: DomainMap,
    /// Its address blocks.
    pub cidrs: CidrSet,
    /// Its AS numbers, sorted.
    pub asns: Vec<u32>,
    /// Entries read.
    pub entries: usize,
}

/// A jurisdiction condition.
#[derive(Debug, Clone)]
pub struct JurisdictionCond {
    /// Countries (10-bit packed codes) as a bitset.
    countries: [u64; 11],
    /// The countries, for display.
    pub country_list: Vec<Country>,
    /// Layer bits ([`Layer::bit`]).
    pub layers: u8,
    /// Unknown handling.
    pub unknown: UnknownMode,
    /// Dispute handling.
    pub disputed: DisputedMode,
}

impl JurisdictionCond {
    /// True when the country is listed.
    #[inline]
    pub fn has(&self, c: Country) -> bool {
        let p = usize::from(c.packed());
        self.countries
            .get(p / 64)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }
}

/// The conditions of a rule (each `None` is absent).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub(crate) jurisdiction: Option<JurisdictionCond>,
    pub(crate) asn: Option<Vec<u32>>,
    pub(crate) cidr: Option<CidrSet>,
    pub(crate) domain: Option<DomainMap>,
    pub(crate) vendor: Option<Vec<String>>,
    pub(crate) port: Option<Vec<(u16, u16)>>,
    pub(crate) protocol: Option<u8>,
    pub(crate) traffic: Option<u8>,
    pub(crate) encrypted: Option<bool>,
    pub(crate) leak: Option<bool>,
    /// The server is on the device or the local network ([`super::eval::is_local`]).
    pub(crate) local: Option<bool>,
    pub(crate) app: Option<Vec<AppPattern>>,
    pub(crate) uid: Option<Vec<u32>>,
    pub(crate) list: Option<Vec<usize>>,
    /// Which end of a relayed flow the rule looks at.
    pub(crate) endpoint: Endpoint,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name.
    pub name: String,
    /// Its action.
    pub action: Action,
    /// 1-based line of the rule in its file.
    pub line: usize,
    /// What a DNS query this rule blocks is answered with (else the
    /// policy's `[dns] blocked`).
    pub dns_answer: Option<DnsBlockAnswer>,
    pub(crate) cond: Conditions,
}

impl Rule {
    /// The rule's jurisdiction condition, if any.
    pub fn jurisdiction(&self) -> Option<&JurisdictionCond> {
        self.cond.jurisdiction.as_ref()
    }
}

/// A compiled, immutable policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// What happens when no rule decides.
    pub default: Action,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Lists the rules refer to.
    pub lists: Vec<CompiledList>,
    /// The file it came from.
    pub source: PathBuf,
    /// DNS answers: blocked names, filtered addresses.
    pub dns: DnsSettings,
    pub(crate) needs_intel: bool,
    /// The catalogs the policy was compiled against. Vendors and owners are
    /// recognised with these while it is evaluated, so a policy swapped in
    /// from a rules bundle uses the bundle's catalogs, not the ones the
    /// firewall started with.
    pub(crate) catalog: Arc<Catalog>,
}

/// A policy checked without the list bundles it draws on
/// ([`Policy::declared`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The policy's name.
    pub name: String,
    /// How many rules it has.
    pub rules: usize,
    /// How many lists it defines (its own and list bundles').
    pub lists: usize,
    /// The lists it needs from list bundles.
    pub needs: Vec<ListRef>,
}

/// The presets shipped in `rules/presets/`, compiled in.
pub const PRESETS: [(&str, &str); 3] = [
    ("default", include_str!("../../rules/presets/default.toml")),
    (
        "clubhouse",
        include_str!("../../rules/presets/clubhouse.toml"),
    ),
    ("strict", include_str!("../../rules/presets/strict.toml")),
];

impl Policy {
    /// The catalogs this policy was compiled against, which its evaluation
    /// uses to recognise vendors and owners.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// A shipped preset by name.
    pub fn preset(name: &str, catalog: &Catalog) -> Result<Self, SourceError> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            SourceError::file(Path::new("--preset"), format!("no preset named '{name}'")).hint(
                format!(
                    "the presets are: {}",
                    PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        // Named as a binary-only user can find it: `geowall rules show`.
        let path = PathBuf::from(format!("preset:{name}"));
        Self::parse(&path, text, None, catalog)
    }

    /// Reads and compiles a policy file; its lists are read relative to it
    /// (a list `from` a list bundle is an error: see [`Policy::load_with`]).
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Self, SourceError> {
        Self::load_with(path, catalog, InstalledLists::none())
    }

    /// Compiles policy text. `base` is where list files are looked up
    /// (`None`: lists are not allowed). Vendors must exist in `catalog`.
    pub fn parse(
        path: &Path,
        text: &str,
        base: Option<&Path>,
        catalog: &Catalog,
    ) -> Result<Self, SourceError> {
        match base {
            Some(base) => Self::parse_with(
                path,
                text,
                &mut |f| std::fs::read_to_string(base.join(f)).map_err(|e| e.to_string()),
                InstalledLists::none(),
                catalog,
            ),
            None => Self::parse_with(
                path,
                text,
                &mut |_| Err("lists are not allowed here (a compiled-in preset)".into()),
                InstalledLists::none(),
                catalog,
            ),
        }
    }

    /// Compiles policy text, reading each list's `file` (as written in the
    /// policy) through `read_list`: from disk, or from a bundle; lists
    /// `from` a list bundle are taken from `installed` (one not there is an
    /// error: never an empty list).
    pub fn parse_with(
        path: &Path,
        text: &str,
        read_list: &mut dyn FnMut(&str) -> Result<String, String>,
        installed: &InstalledLists,
        catalog: &Catalog,
    ) -> Result<Self, SourceError> {
        Self::compile(path, text, read_list, Some(installed), catalog).map(|(p, _)| p)
    }

    /// Checks policy text as [`Policy::parse_with`] does, without the list
    /// bundles it draws lists from (a maintainer's `rules check` and
    /// `rules build`): what it is and the lists it needs from them. The
    /// policy itself is not returned: compiled without those lists, it
    /// must never judge traffic.
    pub fn declared(
        path: &Path,
        text: &str,
        read_list: &mut dyn FnMut(&str) -> Result<String, String>,
        catalog: &Catalog,
    ) -> Result<Declared, SourceError> {
        Self::compile(path, text, read_list, None, catalog).map(|(p, needs)| Declared {
            name: p.name,
            rules: p.rules.len(),
            lists: p.lists.len(),
            needs,
        })
    }

    /// Reads and compiles a policy file as [`Policy::load`] does, drawing
    /// lists from `installed` list bundles.
    pub fn load_with(
        path: &Path,
        catalog: &Catalog,
        installed: &InstalledLists,
    ) -> Result<Self, SourceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SourceError::file(path, format!("cannot read: {e}")))?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse_with(
            path,
            &text,
            &mut |f| std::fs::read_to_string(base.join(f)).map_err(|e| e.to_string()),
            installed,
            catalog,
        )
    }

    /// Compiles; `installed: None` compiles a bundle's lists as empty (the
    /// policy is then only checked, never returned to be evaluated).
    fn compile(
        path: &Path,
        text: &str,
        read_list: &mut dyn FnMut(&str) -> Result<String, String>,
        installed: Option<&InstalledLists>,
        catalog: &Catalog,
    ) -> Result<(Self, Vec<ListRef>), SourceError> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| SourceError::from_toml(path, text, &e))?;
        let at = |span: std::ops::Range<usize>, msg: String| {
            SourceError::at(path, text, span.start, msg)
        };
        let default = match (*raw.default.get_ref(), raw.default_block) {
            (RawAction::Allow, None) => Action::Allow,
            (RawAction::Block, mode) => Action::Block(mode.unwrap_or_default()),
            (RawAction::Log | RawAction::Ask, _) => {
                return Err(at(
                    raw.default.span(),
                    "the default action must be 'allow' or 'block'".into(),
                ));
            }
            (RawAction::Allow, Some(_)) => {
                return Err(at(
                    raw.default.span(),
                    "default_block only goes with default = \"block\"".into(),
                ));
            }
        };
        let mut lists: Vec<CompiledList> = Vec::new();
        let mut refs = Vec::new();
        for l in raw.list {
            if lists.iter().any(|x| x.name == *l.name.get_ref()) {
                return Err(at(
                    l.name.span(),
                    format!("list '{}' is defined twice", l.name.get_ref()),
                ));
            }
            let (file, entries) = match (l.file, l.format, l.from) {
                (Some(f), Some(format), None) => {
                    let body = read_list(f.get_ref()).map_err(|e| {
                        at(f.span(), format!("cannot read list '{}': {e}", f.get_ref()))
                    })?;
                    let file = path.parent().unwrap_or(Path::new("")).join(f.get_ref());
                    let entries = parse_list(&file, &body, format)?;
                    (file, entries)
                }
                (None, None, Some(from)) => {
                    let r = ListRef {
                        name: l.name.get_ref().clone(),
                        from: from.get_ref().clone(),
                    };
                    let entries = match installed {
                        Some(i) => i.get(&r).map_err(|e| at(from.span(), e))?.clone(),
                        None => ListEntries::default(),
                    };
                    let file = PathBuf::from(format!("list bundle {}", r.from));
                    refs.push(r);
                    (file, entries)
                }
                _ => {
                    return Err(at(
                        l.name.span(),
                        format!(
                            "list '{}' needs either file and format, or from (a list bundle's name)",
                            l.name.get_ref()
                        ),
                    ));
                }
            };
            lists.push(compile_list(l.name.into_inner(), file, &entries));
        }
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut needs_intel = false;
        for r in raw.rule {
            let rule = compile_rule(r, text, path, &lists, catalog)?;
            let c = &rule.cond;
            // CIDRs too: an IPv6 address under a NAT64 prefix is matched
            // by the IPv4 address it embeds, which intel extracts.
            needs_intel |= c.jurisdiction.is_some()
                || c.asn.is_some()
                || c.vendor.is_some()
                || c.list.is_some()
                || c.cidr.is_some();
            rules.push(rule);
        }
        let policy = Policy {
            name: raw.name,
            description: raw.description,
            default,
            rules,
            lists,
            source: path.to_owned(),
            dns: raw.dns,
            needs_intel,
            catalog: Arc::new(catalog.clone()),
        };
        Ok((policy, refs))
    }
}

fn compile_list(name: String, file: PathBuf, e: &ListEntries) -> CompiledList {
    let mut d = DomainMap::builder();
    for p in &e.domains {
        d.insert(p, 0);
    }
    let mut asns = e.asns.clone();
    asns.sort_unstable();
    asns.dedup();
    CompiledList {
        name,
        file,
        domains: d.build(),
        cidrs: CidrSet::from_nets(&e.cidrs),
        asns,
        entries: e.len(),
    }
}

fn nonempty<T>(v: &Spanned<Vec<T>>, key: &str, path: &Path, text: &str) -> Result<(), SourceError> {
    if v.get_ref().is_empty() {
        return Err(SourceError::at(
            path,
            text,
            v.span().start,
            format!("'{key}' is an empty list: it would match nothing"),
        )
        .hint(format!(
            "remove '{key}' to match everything, or list at least one value"
        )));
    }
    Ok(())
}

fn compile_rule(
    r: RawRule,
    text: &str,
    path: &Path,
    lists: &[CompiledList],
    catalog: &Catalog,
) -> Result<Rule, SourceError> {
    let at =
        |span: std::ops::Range<usize>, msg: String| SourceError::at(path, text, span.start, msg);
    let line = crate::intel::catalog::line_col(text, r.name.span().start).0;
    if let Some(a) = &r.ask
        && *r.action.get_ref() != RawAction::Ask
    {
        return Err(at(
            a.span(),
            "'ask' (default and timeout) only goes with action = \"ask\"".into(),
        ));
    }
    let action = match (*r.action.get_ref(), r.block) {
        (RawAction::Allow, None) => Action::Allow,
        (RawAction::Log, None) => Action::Log,
        (RawAction::Block, b) => Action::Block(b.map(|b| b.into_inner()).unwrap_or_default()),
        (RawAction::Ask, b) => {
            let span = r.ask.as_ref().map_or(r.action.span(), Spanned::span);
            let raw = r.ask.map_or(
                RawAsk {
                    default: RawAskDefault::Block,
                    timeout: raw_ask_timeout(),
                },
                Spanned::into_inner,
            );
            let default_allow = raw.default == RawAskDefault::Allow;
            let timeout_s = u16::try_from(raw.timeout)
                .ok()
                .filter(|t| (1..=ASK_TIMEOUT_MAX).contains(t))
                .ok_or_else(|| {
                    at(
                        span.clone(),
                        format!(
                            "an ask rule's timeout is 1 to {ASK_TIMEOUT_MAX} seconds, not {}",
                            raw.timeout
                        ),
                    )
                })?;
            Action::Ask(Ask {
                default_allow,
                timeout_s,
                mode: b.map(|b| b.into_inner()).unwrap_or_default(),
            })
        }
        (_, Some(b)) => {
            return Err(at(
                b.span(),
                "'block' (drop or reject) only goes with action = \"block\" or \"ask\"".into(),
            ));
        }
    };
    let mut c = Conditions::default();
    if let Some(j) = r.jurisdiction {
        let span = j.span();
        let j = j.into_inner();
        if j.countries.is_empty() {
            return Err(at(span, "jurisdiction needs at least one country".into()));
        }
        let mut bits = [0u64; 11];
        let mut list = Vec::new();
        for s in &j.countries {
            let country: Country = s
                .get_ref()
                .parse()
                .map_err(|e: crate::intel::country::CountryError| at(s.span(), e.to_string()))?;
            if !country.is_known() {
                let hint = country
                    .meant()
                    .map_or_else(String::new, |m| format!("; did you mean {m}?"));
                return Err(at(
                    s.span(),
                    format!("'{country}' is not an ISO 3166-1 country code{hint}"),
                ));
            }
            let p = usize::from(country.packed());
            bits[p / 64] |= 1 << (p % 64);
            list.push(country);
        }
        let layers = match j.layers {
            None => Layer::ALL.iter().fold(0, |m, l| m | l.bit()),
            Some(ls) if ls.is_empty() => {
                return Err(at(
                    span,
                    "jurisdiction.layers is empty: name at least one layer".into(),
                ));
            }
            Some(ls) => ls.iter().fold(0, |m, l| m | l.bit()),
        };
        c.jurisdiction = Some(JurisdictionCond {
            countries: bits,
            country_list: list,
            layers,
            unknown: j.unknown,
            disputed: j.disputed,
        });
    }
    if let Some(a) = r.asn {
        nonempty(&a, "asn", path, text)?;
        let mut v = a.into_inner();
        v.sort_unstable();
        v.dedup();
        c.asn = Some(v);
    }
    if let Some(v) = r.cidr {
        nonempty(&v, "cidr", path, text)?;
        let mut nets = Vec::new();
        for s in v.get_ref() {
            let n: ipnet::IpNet = s
                .get_ref()
                .parse()
                .or_else(|_| s.get_ref().parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    at(
                        s.span(),
                        format!("'{}' is not a CIDR (e.g. 203.0.113.0/24)", s.get_ref()),
                    )
                })?;
            if n.trunc() != n {
                return Err(at(
                    s.span(),
                    format!(
                        "'{}' has host bits set; did you mean {}?",
                        s.get_ref(),
                        n.trunc()
                    ),
                ));
            }
            nets.push(n);
        }
        c.cidr = Some(CidrSet::from_nets(&nets));
    }
    if let Some(v) = r.domain {
        nonempty(&v, "domain", path, text)?;
        let mut b = DomainMap::builder();
        for s in v.get_ref() {
            let p = DomainPattern::parse(s.get_ref()).map_err(|e| {
                at(s.span(), e.to_string()).hint("patterns: example.com (and subdomains), =example.com (exactly), *.example.com (subdomains only)")
            })?;
            b.insert(&p, 0);
        }
        c.domain = Some(b.build());
    }
    if let Some(v) = r.vendor {
        nonempty(&v, "vendor", path, text)?;
        for s in v.get_ref() {
            if catalog.vendor(s.get_ref()).is_none() {
                return Err(
                    at(s.span(), format!("unknown vendor '{}'", s.get_ref())).hint(format!(
                        "vendors in the catalog: {}",
                        catalog
                            .vendors()
                            .iter()
                            .map(|v| v.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
        }
        c.vendor = Some(
            v.into_inner()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
        );
    }
    if let Some(v) = r.port {
        nonempty(&v, "port", path, text)?;
        let mut ranges = Vec::new();
        for p in v.get_ref() {
            let bad = || {
                at(
                    p.span(),
                    "a port is a number 0-65535 or a range \"first-last\"".into(),
                )
            };
            let range = match p.get_ref() {
                RawPort::One(n) => {
                    let n = u16::try_from(*n).map_err(|_| bad())?;
                    (n, n)
                }
                RawPort::Range(s) => {
                    let (a, b) = s.split_once('-').ok_or_else(bad)?;
                    let a: u16 = a.trim().parse().map_err(|_| bad())?;
                    let b: u16 = b.trim().parse().map_err(|_| bad())?;
                    if a > b {
                        return Err(at(p.span(), format!("port range {a}-{b} is backwards")));
                    }
                    (a, b)
                }
            };
            ranges.push(range);
        }
        c.port = Some(ranges);
    }
    let bits = |v: &[u8]| v.iter().fold(0u8, |m, b| m | (1 << b));
    if let Some(v) = r.protocol {
        nonempty(&v, "protocol", path, text)?;
        c.protocol = Some(bits(
            &v.get_ref().iter().map(|t| *t as u8).collect::<Vec<_>>(),
        ));
    }
    if let Some(v) = r.traffic {
        nonempty(&v, "traffic", path, text)?;
        c.traffic = Some(bits(
            &v.get_ref().iter().map(|t| *t as u8).collect::<Vec<_>>(),
        ));
    }
    c.encrypted = r.encrypted;
    c.leak = r.leak;
    c.local = r.local;
    c.endpoint = r.endpoint;
    if let Some(v) = r.app {
        nonempty(&v, "app", path, text)?;
        let mut pats = Vec::new();
        for s in v.get_ref() {
            pats.push(AppPattern::new(s.get_ref()).map_err(|e| {
                at(s.span(), e).hint("patterns: /usr/bin/curl (that path), curl (that file name), firefox* or /opt/*/bin/* (* any run, ? one character)")
            })?);
        }
        c.app = Some(pats);
    }
    if let Some(v) = r.uid {
        nonempty(&v, "uid", path, text)?;
        c.uid = Some(v.into_inner());
    }
    if let Some(v) = r.list {
        nonempty(&v, "list", path, text)?;
        let mut idx = Vec::new();
        for s in v.get_ref() {
            let i = lists
                .iter()
                .position(|l| l.name == *s.get_ref())
                .ok_or_else(|| {
                    at(s.span(), format!("unknown list '{}'", s.get_ref()))
                        .hint("define it with [[list]] name = ..., file = ..., format = ...")
                })?;
            idx.push(i);
        }
        c.list = Some(idx);
    }
    Ok(Rule {
        name: r.name.into_inner(),
        action,
        line,
        dns_answer: r.dns_answer,
        cond: c,
    })
}
