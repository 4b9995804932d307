//! Importing blocklists: plain domain lists, hosts files, the common
//! AdGuard/ABP `||domain^` subset, CIDR lists, ASN lists, and sing-box
//! rule-set source JSON (`domain`, `domain_suffix`, `ip_cidr`).
//!
//! Every line is either understood or reported with its line and column:
//! unsupported syntax is an error, never silently dropped.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::intel::catalog::SourceError;
use crate::intel::domain::{DomainPattern, PatternKind};

/// A list file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListFormat {
    /// One domain pattern per line (`example.com`, `=exact.example`,
    /// `*.sub.example`); `#` comments.
    Domains,
    /// A hosts file: `0.0.0.0 name [name...]`; each name is blocked exactly.
    Hosts,
    /// AdGuard/ABP: `||example.com^` (domain and subdomains); `!` comments.
    Adblock,
    /// One CIDR or address per line.
    Cidr,
    /// One AS number per line (`AS4134` or `4134`).
    Asn,
    /// sing-box rule-set source (JSON, version 1-3).
    SingBox,
}

/// What a list contains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListEntries {
    /// Domain patterns.
    pub domains: Vec<DomainPattern>,
    /// Address blocks.
    pub cidrs: Vec<ipnet::IpNet>,
    /// AS numbers.
    pub asns: Vec<u32>,
}

impl ListEntries {
    /// Total entries.
    pub fn len(&self) -> usize {
        self.domains.len() + self.cidrs.len() + self.asns.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a list's text. `path` is used in error messages only.
pub fn parse_list(path: &Path, text: &str, format: ListFormat) -> Result<ListEntries, SourceError> {
    if format == ListFormat::SingBox {
        return parse_sing_box(path, text);
    }
    let mut out = ListEntries::default();
    let mut offset = 0usize;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let lead = line.len() - line.trim_start().len();
        let t = line.trim();
        let err = |col_off: usize, msg: String| SourceError {
            path: path.to_owned(),
            line: line_no,
            col: text
                .get(line_start..line_start + col_off)
                .map_or(1, |s| s.chars().count() + 1),
            message: msg,
            hint: None,
        };
        let comment = match format {
            ListFormat::Adblock => {
                t.starts_with('!') || t.starts_with('#') || (t.starts_with('[') && t.ends_with(']'))
            }
            _ => t.starts_with('#'),
        };
        if t.is_empty() || comment {
            continue;
        }
        // Trailing comments after the entry.
        let t = match format {
            ListFormat::Adblock => t,
            _ => t.split('#').next().unwrap_or("").trim(),
        };
        match format {
            ListFormat::Domains => {
                out.domains
                    .push(DomainPattern::parse(t).map_err(|e| err(lead, e.to_string()))?);
            }
            ListFormat::Hosts => {
                let mut words = t.split_whitespace();
                let addr = words.next().unwrap_or("");
                if addr.parse::<IpAddr>().is_err() {
                    return Err(err(
                        lead,
                        format!("'{addr}' is not an address: expected 'ADDRESS NAME...'"),
                    ));
                }
                let mut any = false;
                for name in words {
                    any = true;
                    if matches!(
                        name,
                        "localhost"
                            | "localhost.localdomain"
                            | "local"
                            | "broadcasthost"
                            | "ip6-localhost"
                            | "ip6-loopback"
                    ) || name.starts_with("ip6-")
                    {
                        continue;
                    }
                    let col = lead + t.find(name).unwrap_or(0);
                    let mut p = DomainPattern::parse(name).map_err(|e| err(col, e.to_string()))?;
                    p.kind = PatternKind::Exact;
                    out.domains.push(p);
                }
                if !any {
                    return Err(err(lead, "an address with no host name".into()));
                }
            }
            ListFormat::Adblock => {
                let unsupported =
                    |why: &str| err(lead, format!("unsupported adblock syntax '{t}': {why}"));
                if t.starts_with("@@") {
                    return Err(unsupported("exception rules (@@) are not supported"));
                }
                let Some(rest) = t.strip_prefix("||") else {
                    return Err(unsupported("only '||domain^' rules are supported"));
                };
                let Some(domain) = rest.strip_suffix('^').or_else(|| rest.strip_suffix("^|"))
                else {
                    return Err(unsupported(if rest.contains('$') {
                        "rule options ($...) are not supported"
                    } else {
                        "expected '^' right after the domain"
                    }));
                };
                if domain.contains(['/', '*', '$', '^']) {
                    return Err(unsupported(
                        "paths, wildcards and options are not supported",
                    ));
                }
                out.domains
                    .push(DomainPattern::parse(domain).map_err(|e| err(lead + 2, e.to_string()))?);
            }
            ListFormat::Cidr => {
                let net = t
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| err(lead, format!("'{t}' is not a CIDR or address")))?;
                if net.trunc() != net {
                    return Err(err(
                        lead,
                        format!("'{t}' has host bits set; did you mean {}?", net.trunc()),
                    ));
                }
                out.cidrs.push(net);
            }
            ListFormat::Asn => {
                let n = t
                    .strip_prefix("AS")
                    .or_else(|| t.strip_prefix("as"))
                    .unwrap_or(t);
                out.asns.push(
                    n.parse()
                        .map_err(|_| err(lead, format!("'{t}' is not an AS number")))?,
                );
            }
            ListFormat::SingBox => {}
        }
    }
    Ok(out)
}

fn parse_sing_box(path: &Path, text: &str) -> Result<ListEntries, SourceError> {
    let at = |needle: &str| text.find(needle).unwrap_or(0);
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| SourceError {
        path: path.to_owned(),
        line: e.line(),
        col: e.column(),
        message: format!("not valid JSON: {e}"),
        hint: None,
    })?;
    let fail = |needle: &str, msg: String| SourceError::at(path, text, at(needle), msg);
    let rules = v.get("rules").and_then(|r| r.as_array()).ok_or_else(|| {
        fail(
            "{",
            "expected a sing-box rule-set source: {\"version\": N, \"rules\": [...]}".into(),
        )
    })?;
    if let Some(obj) = v.as_object() {
        for k in obj.keys() {
            if k != "version" && k != "rules" {
                return Err(fail(&format!("\"{k}\""), format!("unsupported key '{k}'")));
            }
        }
    }
    let mut out = ListEntries::default();
    for r in rules {
        let Some(obj) = r.as_object() else {
            return Err(fail("rules", "each rule must be an object".into()));
        };
        for (k, val) in obj {
            let items: Vec<&str> = match val {
                serde_json::Value::String(s) => vec![s.as_str()],
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str().ok_or_else(|| {
                            fail(&format!("\"{k}\""), format!("'{k}' must hold strings"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(fail(
                        &format!("\"{k}\""),
                        format!("'{k}' must be a string or a list of strings"),
                    ));
                }
            };
            for item in items {
                let bad = |e: String| fail(&format!("\"{item}\""), e);
                match k.as_str() {
                    "domain" => {
                        let mut p = DomainPattern::parse(item).map_err(|e| bad(e.to_string()))?;
                        p.kind = PatternKind::Exact;
                        out.domains.push(p);
                    }
                    "domain_suffix" => {
                        out.domains
                            .push(DomainPattern::parse(item).map_err(|e| bad(e.to_string()))?);
                    }
                    "ip_cidr" => {
                        let net = item
                            .parse::<ipnet::IpNet>()
                            .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| bad(format!("'{item}' is not a CIDR")))?;
                        out.cidrs.push(net.trunc());
                    }
                    other => {
                        return Err(fail(
                            &format!("\"{other}\""),
                            format!(
                                "unsupported sing-box rule key '{other}' (supported: domain, domain_suffix, ip_cidr)"
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str, f: ListFormat) -> Result<ListEntries, SourceError> {
        parse_list(Path::new("l.txt"), text, f)
    }

    #[test]
    fn domains_and_comments() {
        let l = p(
            "# c\nagora.io\n\n=x.example # trailing\n*.w.example\n",
            ListFormat::Domains,
        )
        .expect("ok");
        assert_eq!(
            l.domains
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["agora.io", "=x.example", "*.w.example"]
        );
        let e = p("ok.example\n  bad..example\n", ListFormat::Domains).expect_err("bad");
        assert_eq!((e.line, e.col), (2, 3), "{e}");
    }

    #[test]
    fn hosts_files() {
        let l = p(
            "127.0.0.1 localhost\n0.0.0.0 ads.example track.example\n:: ads6.example\n",
            ListFormat::Hosts,
        )
        .expect("ok");
        assert_eq!(l.domains.len(), 3);
        assert!(l.domains.iter().all(|d| d.kind == PatternKind::Exact));
        let e =
            p("0.0.0.0 fine.example\nads.example\n", ListFormat::Hosts).expect_err("no address");
        assert_eq!(e.line, 2, "{e}");
        let e = p("0.0.0.0 ok.example b@d\n", ListFormat::Hosts).expect_err("bad name");
        assert_eq!((e.line, e.col), (1, 20), "{e}");
    }

    #[test]
    fn adblock_subset_and_unsupported_lines() {
        let l = p(
            "[Adblock Plus 2.0]\n! title\n||ads.example^\n||t.example^|\n",
            ListFormat::Adblock,
        )
        .expect("ok");
        assert_eq!(l.domains.len(), 2);
        assert!(l.domains.iter().all(|d| d.kind == PatternKind::Suffix));
        for (bad, why) in [
            ("@@||ok.example^", "exception"),
            ("||ads.example^$third-party", "options"),
            ("/banner/*", "only"),
            ("||ads.example/path^", "paths"),
        ] {
            let e = p(&format!("||a.example^\n{bad}\n"), ListFormat::Adblock).expect_err(bad);
            assert!(e.line == 2 && e.message.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn cidr_and_asn_lists() {
        let l = p(
            "203.0.113.0/25\n2001:db8:86::/48\n198.51.100.7\n",
            ListFormat::Cidr,
        )
        .expect("ok");
        assert_eq!(l.cidrs.len(), 3);
        let e = p("203.0.113.1/25\n", ListFormat::Cidr).expect_err("host bits");
        assert!(e.message.contains("203.0.113.0/25"), "{e}");
        let l = p("AS4134\n4837\n", ListFormat::Asn).expect("ok");
        assert_eq!(l.asns, [4134, 4837]);
        assert_eq!(p("AS41x\n", ListFormat::Asn).expect_err("bad").line, 1);
    }

    #[test]
    fn sing_box_rule_sets() {
        let text = r#"{"version": 2, "rules": [{"domain": ["a.example"], "domain_suffix": [".b.example", "c.example"], "ip_cidr": ["203.0.113.0/24"]}]}"#;
        let l = p(text, ListFormat::SingBox).expect("ok");
        assert_eq!((l.domains.len(), l.cidrs.len()), (3, 1));
        assert_eq!(l.domains[0].kind, PatternKind::Exact);
        let text = "{\"version\": 2,\n \"rules\": [{\"domain_keyword\": [\"ads\"]}]}";
        let e = p(text, ListFormat::SingBox).expect_err("unsupported");
        assert!(e.line == 2 && e.message.contains("domain_keyword"), "{e}");
        assert!(p("{nope", ListFormat::SingBox).is_err());
    }
}

/// The most list bundles a device follows at once.
pub const MAX_LIST_BUNDLES: usize = 16;
/// The most lists one list bundle carries.
pub const MAX_LISTS_PER_BUNDLE: usize = 64;

/// A list bundle's manifest, `lists.toml`: the name policies know the
/// bundle by, and its lists.
///
/// ```toml
/// name = "acme"
/// description = "Acme's tracker lists"
///
/// [[list]]
/// name = "trackers"
/// file = "trackers.txt"
/// format = "hosts"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The bundle's name (`from = "NAME"` in a policy's `[[list]]`, and
    /// the device's `--subscribe-list NAME=URL`).
    pub name: String,
    /// What the lists are for.
    #[serde(default)]
    pub description: Option<String>,
    /// The lists.
    #[serde(default, rename = "list")]
    pub lists: Vec<ManifestList>,
}

/// One list of a [`Manifest`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestList {
    /// How policies name it.
    pub name: String,
    /// Its file, beside `lists.toml`.
    pub file: String,
    /// Its format.
    pub format: ListFormat,
}

/// Whether `name` may name a list bundle: 1 to 64 of `a-z 0-9 . _ -`,
/// starting with a letter or digit (it names a file in the state
/// directory).
pub fn valid_bundle_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Reads a manifest and every list it names (`read` gives a file's text by
/// the name the manifest uses). `path` is the manifest's, for errors.
///
/// # Errors
/// The manifest or a list has a mistake (located), a name is invalid or
/// repeated, there are no lists or too many.
pub fn read_manifest(
    path: &Path,
    text: &str,
    read: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<(Manifest, Vec<NamedList>), SourceError> {
    let m: Manifest = toml::from_str(text).map_err(|e| SourceError::from_toml(path, text, &e))?;
    if !valid_bundle_name(&m.name) {
        return Err(
            SourceError::file(path, format!("'{}' cannot name a list bundle", m.name))
                .hint("1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"),
        );
    }
    if m.lists.is_empty() {
        return Err(SourceError::file(
            path,
            "a list bundle needs at least one [[list]]",
        ));
    }
    if m.lists.len() > MAX_LISTS_PER_BUNDLE {
        return Err(SourceError::file(
            path,
            format!(
                "{} lists; a list bundle carries at most {MAX_LISTS_PER_BUNDLE}",
                m.lists.len()
            ),
        ));
    }
    let mut out: Vec<NamedList> = Vec::with_capacity(m.lists.len());
    for l in &m.lists {
        if l.name.trim().is_empty() {
            return Err(SourceError::file(path, "a [[list]] has an empty name"));
        }
        if out.iter().any(|x| x.name == l.name) {
            return Err(SourceError::file(
                path,
                format!("list '{}' is defined twice", l.name),
            ));
        }
        let file = path.parent().unwrap_or(Path::new("")).join(&l.file);
        let body = read(&l.file).map_err(|e| {
            SourceError::file(
                path,
                format!("cannot read list '{}' ({}): {e}", l.name, l.file),
            )
        })?;
        out.push(NamedList {
            name: l.name.clone(),
            format: l.format,
            entries: parse_list(&file, &body, l.format)?,
        });
    }
    Ok((m, out))
}

/// A list read from a list bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedList {
    /// Its name in the bundle.
    pub name: String,
    /// The format it was written in.
    pub format: ListFormat,
    /// What it holds.
    pub entries: ListEntries,
}

/// A verified list bundle (`geowall rules build` of a directory with
/// `lists.toml`): a maintainer's named lists that policies use with
/// `[[list]] name = "...", from = "BUNDLE"`.
#[derive(Debug, Clone)]
pub struct ListBundle {
    /// The bundle's name.
    pub name: String,
    /// Sequence number (its own series).
    pub sequence: u64,
    /// Created (Unix seconds).
    pub created: u64,
    /// Expires (Unix seconds).
    pub expires: u64,
    /// Hex id of the key that signed it.
    pub key_id: String,
    /// Its lists.
    pub lists: Vec<NamedList>,
}

/// A policy's reference to a list of a list bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListRef {
    /// The list's name.
    pub name: String,
    /// The list bundle's name.
    pub from: String,
}

impl std::fmt::Display for ListRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.from, self.name)
    }
}

/// The list bundles installed on a device (at most
/// [`MAX_LIST_BUNDLES`], one per name), which policies draw lists from.
#[derive(Debug, Clone, Default)]
pub struct InstalledLists {
    bundles: Vec<ListBundle>,
}

impl InstalledLists {
    /// None installed.
    pub fn none() -> &'static Self {
        static NONE: InstalledLists = InstalledLists {
            bundles: Vec::new(),
        };
        &NONE
    }

    /// Adds a bundle.
    ///
    /// # Errors
    /// One of the same name is installed, or the bound is reached.
    pub fn add(&mut self, b: ListBundle) -> Result<(), String> {
        if self.bundles.iter().any(|x| x.name == b.name) {
            return Err(format!("two list bundles are named '{}'", b.name));
        }
        if self.bundles.len() >= MAX_LIST_BUNDLES {
            return Err(format!(
                "at most {MAX_LIST_BUNDLES} list bundles can be installed"
            ));
        }
        self.bundles.push(b);
        Ok(())
    }

    /// The installed bundles.
    pub fn bundles(&self) -> &[ListBundle] {
        &self.bundles
    }

    /// The entries of list `r.name` of bundle `r.from`.
    ///
    /// # Errors
    /// No such bundle is installed, or it has no such list: said with what
    /// there is.
    pub fn get(&self, r: &ListRef) -> Result<&ListEntries, String> {
        let Some(b) = self.bundles.iter().find(|b| b.name == r.from) else {
            return Err(format!(
                "list bundle '{}' is not installed on this device ({}): subscribe to it with --subscribe-list {}=URL --list-pubkey {}=KEY",
                r.from,
                if self.bundles.is_empty() {
                    "none is".to_owned()
                } else {
                    format!(
                        "installed: {}",
                        self.bundles
                            .iter()
                            .map(|b| b.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                r.from,
                r.from
            ));
        };
        b.lists
            .iter()
            .find(|l| l.name == r.name)
            .map(|l| &l.entries)
            .ok_or_else(|| {
                format!(
                    "list bundle '{}' (sequence {}) has no list '{}'; it has: {}",
                    b.name,
                    b.sequence,
                    r.name,
                    b.lists
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}
