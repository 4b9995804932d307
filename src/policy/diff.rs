//! What changed between two rules bundles, for a maintainer's review before
//! signing (`geowall rules diff OLD NEW`): the policy's settings and rules,
//! every list's entries, and the vendors and operators of the catalogs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use super::bundle::{BundleError, BundleKind, Review};
use super::lists::{ListFormat, parse_list};
use crate::intel::catalog::Catalog;

/// Added and removed items of one set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// In the new bundle only.
    pub added: Vec<String>,
    /// In the old bundle only.
    pub removed: Vec<String>,
}

impl Change {
    fn of(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Self {
        Self {
            added: new.difference(old).cloned().collect(),
            removed: old.difference(new).cloned().collect(),
        }
    }

    /// True when nothing was added or removed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// One catalog entry (vendor or operator) present in both bundles whose
/// content changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntryChange {
    /// The entry's id.
    pub id: String,
    /// Jurisdiction, `old -> new`, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
    /// Domains (vendors only).
    pub domains: Change,
    /// AS numbers.
    pub asns: Change,
    /// Protocol signatures (vendors only).
    pub signatures: Change,
}

impl EntryChange {
    /// True when nothing but the id is set: the entry did not change.
    pub fn is_empty(&self) -> bool {
        self.jurisdiction.is_none()
            && self.domains.is_empty()
            && self.asns.is_empty()
            && self.signatures.is_empty()
    }
}

/// Everything that differs between two rules bundles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BundleDiff {
    /// `old -> new` sequence numbers.
    pub sequence: (u64, u64),
    /// The policy's top-level settings (name, default, `[dns]`, ...) that
    /// changed, as `key: old -> new`.
    pub settings: Vec<String>,
    /// Rules by name: added, removed.
    pub rules: Change,
    /// Rules in both whose conditions or action changed.
    pub rules_changed: Vec<String>,
    /// Whether the order of the rules both have changed (the first match
    /// decides, so order matters).
    pub rules_reordered: bool,
    /// Per list file: entries added and removed.
    pub lists: BTreeMap<String, Change>,
    /// Vendors by id.
    pub vendors: Change,
    /// Vendors in both whose content changed.
    pub vendors_changed: Vec<EntryChange>,
    /// Operators by id.
    pub operators: Change,
    /// Operators in both whose content changed.
    pub operators_changed: Vec<EntryChange>,
}

impl BundleDiff {
    /// True when the two bundles say the same (their sequence aside).
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && self.rules.is_empty()
            && self.rules_changed.is_empty()
            && !self.rules_reordered
            && self.lists.values().all(Change::is_empty)
            && self.vendors.is_empty()
            && self.vendors_changed.is_empty()
            && self.operators.is_empty()
            && self.operators_changed.is_empty()
    }
}

fn text(r: &Review, path: &str) -> Result<String, BundleError> {
    let d = r
        .files
        .get(path)
        .ok_or_else(|| BundleError::Corrupt(format!("{path} is not in the bundle")))?;
    String::from_utf8(d.clone()).map_err(|_| BundleError::Corrupt(format!("{path} is not UTF-8")))
}

/// The bundle's TOML file: `policy.toml`, or a list bundle's `lists.toml`.
fn manifest_name(r: &Review) -> &'static str {
    match r.kind {
        BundleKind::Lists => "lists.toml",
        _ => "policy.toml",
    }
}

fn policy_toml(r: &Review) -> Result<toml::Table, BundleError> {
    let name = manifest_name(r);
    text(r, name)?
        .parse::<toml::Table>()
        .map_err(|e| BundleError::Corrupt(format!("{name}: {e}")))
}

/// The rules of a policy file, by name, in order.
fn rules(t: &toml::Table) -> Vec<(String, toml::Value)> {
    t.get("rule")
        .and_then(toml::Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let name = r
                        .get("name")
                        .and_then(toml::Value::as_str)
                        .unwrap_or("?")
                        .to_owned();
                    (name, r.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The format each list file is read in, from the `[[list]]`s of a policy
/// or a list bundle's manifest.
fn list_formats(t: &toml::Table) -> BTreeMap<String, ListFormat> {
    let mut out = BTreeMap::new();
    for l in t
        .get("list")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        let file = l.get("file").and_then(toml::Value::as_str);
        let format = l
            .get("format")
            .cloned()
            .and_then(|f| f.try_into::<ListFormat>().ok());
        if let (Some(file), Some(format)) = (file, format) {
            out.insert(file.to_owned(), format);
        }
    }
    out
}

/// A list file's entries as geowall reads them (`example.com`,
/// `=exact.example`, `*.sub.example`, `203.0.113.0/24`, `AS4134`), or,
/// for a file no list names, its lines without comments and blanks.
fn entries(
    path: &str,
    data: &[u8],
    format: Option<ListFormat>,
) -> Result<BTreeSet<String>, BundleError> {
    let text = String::from_utf8_lossy(data);
    let Some(format) = format else {
        return Ok(text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect());
    };
    let e = parse_list(std::path::Path::new(path), &text, format)?;
    Ok(e.domains
        .iter()
        .map(ToString::to_string)
        .chain(e.cidrs.iter().map(ToString::to_string))
        .chain(e.asns.iter().map(|a| format!("AS{a}")))
        .collect())
}

fn catalog(r: &Review) -> Result<Catalog, BundleError> {
    let sources: Vec<(PathBuf, String)> = r
        .files
        .iter()
        .filter(|(p, _)| p.starts_with("vendors/") || p.starts_with("operators/"))
        .map(|(p, d)| (PathBuf::from(p), String::from_utf8_lossy(d).into_owned()))
        .collect();
    Ok(Catalog::from_sources(sources)?)
}

fn set<T: ToString>(items: impl IntoIterator<Item = T>) -> BTreeSet<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

/// Compares two bundles of the same kind (rules, or lists) read with
/// [`super::bundle::review`].
///
/// # Errors
/// Bundles of two kinds, or one whose policy or manifest file or catalogs
/// do not read.
pub fn diff(old: &Review, new: &Review) -> Result<BundleDiff, BundleError> {
    if old.kind != new.kind {
        return Err(BundleError::WrongKind {
            found: new.kind,
            wanted: old.kind,
        });
    }
    let mut d = BundleDiff {
        sequence: (old.sequence, new.sequence),
        ..BundleDiff::default()
    };
    let (po, pn) = (policy_toml(old)?, policy_toml(new)?);
    let keys: BTreeSet<&String> = po
        .keys()
        .chain(pn.keys())
        .filter(|k| *k != "rule")
        .collect();
    for k in keys {
        let show =
            |v: Option<&toml::Value>| v.map_or_else(|| "(none)".to_owned(), |v| v.to_string());
        if po.get(k) != pn.get(k) {
            d.settings
                .push(format!("{k}: {} -> {}", show(po.get(k)), show(pn.get(k))));
        }
    }
    let (ro, rn) = (rules(&po), rules(&pn));
    d.rules = Change::of(
        &ro.iter().map(|r| r.0.clone()).collect(),
        &rn.iter().map(|r| r.0.clone()).collect(),
    );
    for (name, v) in &rn {
        if ro.iter().any(|(n, o)| n == name && o != v) {
            d.rules_changed.push(name.clone());
        }
    }
    let common = |a: &[(String, toml::Value)], b: &[(String, toml::Value)]| -> Vec<String> {
        a.iter()
            .filter(|(n, _)| b.iter().any(|(m, _)| m == n))
            .map(|(n, _)| n.clone())
            .collect()
    };
    d.rules_reordered = common(&ro, &rn) != common(&rn, &ro);
    let is_list = |p: &&String| {
        *p != manifest_name(old)
            && !p.starts_with("vendors/")
            && !p.starts_with("operators/")
            && !p.starts_with("endorsements/")
    };
    let paths: BTreeSet<&String> = old
        .files
        .keys()
        .chain(new.files.keys())
        .filter(is_list)
        .collect();
    let (fo, fnew) = (list_formats(&po), list_formats(&pn));
    for p in paths {
        let e = |r: &Review, f: &BTreeMap<String, ListFormat>| match r.files.get(p) {
            Some(d) => entries(p, d, f.get(p).copied()),
            None => Ok(BTreeSet::new()),
        };
        let c = Change::of(&e(old, &fo)?, &e(new, &fnew)?);
        if !c.is_empty() {
            d.lists.insert(p.clone(), c);
        }
    }
    let (co, cn) = (catalog(old)?, catalog(new)?);
    d.vendors = Change::of(
        &set(co.vendors().iter().map(|v| &v.id)),
        &set(cn.vendors().iter().map(|v| &v.id)),
    );
    for v in cn.vendors() {
        let Some(o) = co.vendor(&v.id) else { continue };
        let c = EntryChange {
            id: v.id.clone(),
            jurisdiction: (o.jurisdiction != v.jurisdiction)
                .then(|| format!("{} -> {}", o.jurisdiction, v.jurisdiction)),
            domains: Change::of(&set(&o.domains), &set(&v.domains)),
            asns: Change::of(&set(&o.asns), &set(&v.asns)),
            signatures: Change::of(&set(&o.signatures), &set(&v.signatures)),
        };
        if !c.is_empty() {
            d.vendors_changed.push(c);
        }
    }
    d.operators = Change::of(
        &set(co.operators().iter().map(|o| &o.id)),
        &set(cn.operators().iter().map(|o| &o.id)),
    );
    for n in cn.operators() {
        let Some(o) = co.operators().iter().find(|o| o.id == n.id) else {
            continue;
        };
        let c = EntryChange {
            id: n.id.clone(),
            jurisdiction: (o.jurisdiction != n.jurisdiction)
                .then(|| format!("{} -> {}", o.jurisdiction, n.jurisdiction)),
            asns: Change::of(&set(&o.asns), &set(&n.asns)),
            ..EntryChange::default()
        };
        if !c.is_empty() {
            d.operators_changed.push(c);
        }
    }
    Ok(d)
}
