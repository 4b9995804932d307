//! The vendor and operator catalogs: who runs a service, and who ultimately
//! owns a network, with the jurisdiction each answers to.
//!
//! - A **vendor** is the company running a service. It is recognised by the
//!   names a flow is reached by (domain patterns, see [`crate::intel::domain`]),
//!   by the AS numbers it announces (matched by number, never by name: other
//!   ASes are called "Agora" too), or by a protocol signature the classifier
//!   reports (e.g. `sd-rtn`).
//! - An **operator** maps AS numbers to the company that operates them and
//!   its ultimate parent's jurisdiction, for networks whose registration
//!   country hides the parent (AS45102 is registered in the US; Alibaba is
//!   Chinese).
//!
//! Catalog files are TOML (`rules/vendors/*.toml`, `rules/operators/*.toml`);
//! every entry cites its evidence. Errors name file, line and column.
//! Lookups allocate nothing; memory is proportional to the entries.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classify::Protocol;

use super::country::Country;
use super::domain::{DomainMap, DomainPattern};

/// A company running a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vendor {
    /// Stable identifier used in rules (`vendor = ["agora"]`).
    pub id: String,
    /// Legal or common name.
    pub name: String,
    /// The jurisdiction the vendor answers to.
    pub jurisdiction: Country,
    /// Why: where it is headquartered or incorporated, with sources.
    pub evidence: String,
    /// Domain patterns of its services.
    #[serde(default)]
    pub domains: Vec<String>,
    /// AS numbers it announces.
    #[serde(default)]
    pub asns: Vec<u32>,
    /// Protocol signatures only its services use (names reported by the
    /// classifier, e.g. `sd-rtn`).
    #[serde(default)]
    pub signatures: Vec<String>,
    /// Where the facts come from.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// A network operator and its ultimate parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// Stable identifier.
    pub id: String,
    /// The operator's name.
    pub name: String,
    /// The ultimate parent.
    pub parent: String,
    /// The parent's jurisdiction.
    pub jurisdiction: Country,
    /// AS numbers it operates.
    pub asns: Vec<u32>,
    /// Why, with sources.
    pub evidence: String,
    /// Where the facts come from.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Words that, in an AS's registered organisation name, say it may
    /// belong to this operator's group (lowercase, matched as substrings).
    /// The catalog's completeness test finds every such AS in the shipped
    /// world data and requires it in `asns` or in `excluded`.
    #[serde(default)]
    pub names: Vec<String>,
    /// ASes whose names match `names` but that are not the group's, each
    /// with the reason.
    #[serde(default)]
    pub excluded: Vec<Excluded>,
}

/// An AS a group's name words find that is not the group's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Excluded {
    /// The AS number.
    pub asn: u32,
    /// Why it is not the group's.
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    vendor: Vec<Vendor>,
    #[serde(default)]
    operator: Vec<Operator>,
}

/// An error in a catalog or rules file, located.
/// Shown as `path:line:col: message`, or `path: message` for an error about
/// a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when known.
    pub hint: Option<String>,
}

impl SourceError {
    /// An error at a byte offset of `text`.
    pub fn at(path: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(text, offset);
        Self {
            path: path.to_owned(),
            line,
            col,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }

    /// Converts a TOML parse error.
    pub fn from_toml(path: &Path, text: &str, e: &toml::de::Error) -> Self {
        let offset = e.span().map_or(0, |s| s.start);
        Self::at(path, text, offset, e.message().trim().to_owned())
    }

    /// An error about a whole file (line and column 0).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            line: 0,
            col: 0,
            message: message.into(),
            hint: None,
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceError {}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// How a vendor was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "lowercase")]
pub enum VendorEvidence<'n> {
    /// A name of the flow matched one of the vendor's domains.
    Domain {
        /// The name seen.
        name: &'n str,
        /// The catalog domain it fell under.
        domain: &'n str,
    },
    /// The destination's AS is the vendor's.
    Asn {
        /// The AS number.
        asn: u32,
    },
    /// The classifier saw the vendor's protocol.
    Signature {
        /// The protocol name.
        protocol: &'n str,
    },
}

/// Vendors and operators, indexed for lookups.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    vendors: Vec<Vendor>,
    operators: Vec<Operator>,
    /// Domain pattern -> vendor index + 1.
    vendor_domains: DomainMap,
    /// Sorted (AS, vendor index).
    vendor_asns: Vec<(u32, u32)>,
    /// Sorted (signature, vendor index).
    vendor_sigs: Vec<(String, u32)>,
    /// Sorted (AS, operator index).
    operator_asns: Vec<(u32, u32)>,
}

/// The catalog files shipped in `rules/`, compiled in.
pub const SHIPPED: [(&str, &str); 2] = [
    (
        "rules/vendors/vendors.toml",
        include_str!("../../rules/vendors/vendors.toml"),
    ),
    (
        "rules/operators/operators.toml",
        include_str!("../../rules/operators/operators.toml"),
    ),
];

impl Catalog {
    /// The shipped catalog.
    pub fn shipped() -> Result<Self, SourceError> {
        Self::from_sources(
            SHIPPED
                .iter()
                .map(|(p, t)| (PathBuf::from(p), (*t).to_owned())),
        )
    }

    /// Loads catalog files: each path may be a file or a directory of
    /// `*.toml` files.
    pub fn load(paths: &[PathBuf]) -> Result<Self, SourceError> {
        let mut sources = Vec::new();
        for p in paths {
            for f in toml_files(p)? {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| SourceError::file(&f, format!("cannot read: {e}")))?;
                sources.push((f, text));
            }
        }
        Self::from_sources(sources)
    }

    /// Builds a catalog from `(path, text)` pairs.
    pub fn from_sources(
        sources: impl IntoIterator<Item = (PathBuf, String)>,
    ) -> Result<Self, SourceError> {
        let mut c = Catalog::default();
        let mut domains = DomainMap::builder();
        let mut seen_domains: std::collections::HashMap<String, (String, PathBuf)> =
            Default::default();
        for (path, text) in sources {
            let file: CatalogFile =
                toml::from_str(&text).map_err(|e| SourceError::from_toml(&path, &text, &e))?;
            let locate = |needle: &str| text.find(needle).unwrap_or(0);
            for v in file.vendor {
                let at = locate(&format!("\"{}\"", v.id));
                if c.vendors.iter().any(|o| o.id == v.id) {
                    return Err(SourceError::at(
                        &path,
                        &text,
                        at,
                        format!("vendor '{}' is defined twice", v.id),
                    ));
                }
                let idx = c.vendors.len() as u32;
                for d in &v.domains {
                    let p = DomainPattern::parse(d)
                        .map_err(|e| SourceError::at(&path, &text, locate(d), e.to_string()))?;
                    if let Some((other, _)) =
                        seen_domains.insert(p.to_string(), (v.id.clone(), path.clone()))
                    {
                        return Err(SourceError::at(
                            &path,
                            &text,
                            locate(d),
                            format!(
                                "domain '{d}' is claimed by vendors '{other}' and '{}'",
                                v.id
                            ),
                        ));
                    }
                    domains.insert(&p, idx + 1);
                }
                for &a in &v.asns {
                    if let Some(&(_, o)) = c.vendor_asns.iter().find(|(x, _)| *x == a) {
                        let msg = match c.vendors.get(o as usize) {
                            Some(other) => {
                                format!("AS{a} is claimed by vendors '{}' and '{}'", other.id, v.id)
                            }
                            None => format!("AS{a} is listed twice under vendor '{}'", v.id),
                        };
                        return Err(SourceError::at(&path, &text, at, msg));
                    }
                    c.vendor_asns.push((a, idx));
                }
                for s in &v.signatures {
                    if Protocol::from_name(s).is_none() {
                        return Err(SourceError::at(
                            &path,
                            &text,
                            locate(&format!("\"{s}\"")),
                            format!(
                                "vendor '{}' names the signature '{s}', a protocol the classifier never reports (it reports {})",
                                v.id,
                                Protocol::ALL.map(Protocol::name).join(", ")
                            ),
                        ));
                    }
                    c.vendor_sigs.push((s.to_ascii_lowercase(), idx));
                }
                c.vendors.push(v);
            }
            for o in file.operator {
                let at = locate(&format!("\"{}\"", o.id));
                if c.operators.iter().any(|x| x.id == o.id) {
                    return Err(SourceError::at(
                        &path,
                        &text,
                        at,
                        format!("operator '{}' is defined twice", o.id),
                    ));
                }
                let idx = c.operators.len() as u32;
                for &a in &o.asns {
                    if let Some(&(_, p)) = c.operator_asns.iter().find(|(x, _)| *x == a) {
                        // `p` is this operator's own index when it lists an
                        // ASN twice.
                        let msg = match c.operators.get(p as usize) {
                            Some(other) => format!(
                                "AS{a} is listed under operators '{}' and '{}'",
                                other.id, o.id
                            ),
                            None => format!("AS{a} is listed twice under operator '{}'", o.id),
                        };
                        return Err(SourceError::at(&path, &text, at, msg));
                    }
                    c.operator_asns.push((a, idx));
                }
                c.operators.push(o);
            }
        }
        c.vendor_asns.sort_unstable();
        c.vendor_sigs.sort_unstable();
        c.operator_asns.sort_unstable();
        c.vendor_domains = domains.build();
        Ok(c)
    }

    /// All vendors.
    pub fn vendors(&self) -> &[Vendor] {
        &self.vendors
    }

    /// All operators.
    pub fn operators(&self) -> &[Operator] {
        &self.operators
    }

    /// A vendor by id.
    pub fn vendor(&self, id: &str) -> Option<&Vendor> {
        self.vendors.iter().find(|v| v.id == id)
    }

    /// The operator of an AS.
    pub fn operator_of(&self, asn: u32) -> Option<&Operator> {
        let i = self
            .operator_asns
            .binary_search_by_key(&asn, |e| e.0)
            .ok()?;
        self.operators.get(self.operator_asns[i].1 as usize)
    }

    /// The vendor behind a flow: by its names first (most specific pattern),
    /// then its AS, then a protocol signature.
    pub fn vendor_of<'n>(
        &self,
        names: &[&'n str],
        asn: Option<u32>,
        protocol: Option<&'n str>,
    ) -> Option<(&Vendor, VendorEvidence<'n>)> {
        for &n in names {
            if let Some(m) = self.vendor_domains.lookup(n) {
                let v = self.vendors.get(m.value.checked_sub(1)? as usize)?;
                return Some((
                    v,
                    VendorEvidence::Domain {
                        name: n,
                        domain: m.domain(n),
                    },
                ));
            }
        }
        if let Some(a) = asn
            && let Ok(i) = self.vendor_asns.binary_search_by_key(&a, |e| e.0)
        {
            let v = self.vendors.get(self.vendor_asns[i].1 as usize)?;
            return Some((v, VendorEvidence::Asn { asn: a }));
        }
        let p = protocol?;
        let i = self
            .vendor_sigs
            .binary_search_by(|(s, _)| s.as_str().cmp(p))
            .ok()?;
        let v = self.vendors.get(self.vendor_sigs[i].1 as usize)?;
        Some((v, VendorEvidence::Signature { protocol: p }))
    }
}

/// `path` itself if a file, else the `*.toml` files in it, sorted.
pub(crate) fn toml_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let rd = std::fs::read_dir(path)
        .map_err(|e| SourceError::file(path, format!("cannot read: {e}")))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `bundle` fuzz target: an ASN listed twice in one entry
    /// indexed past the end of the list being built.
    #[test]
    fn an_asn_listed_twice_in_one_entry_is_an_error_not_a_panic() {
        let op = "[[operator]]\nid = \"x\"\nname = \"X\"\nparent = \"X\"\njurisdiction = \"CN\"\nevidence = \"e\"\nasns = [64500, 64500]\n";
        let e = Catalog::from_sources([(PathBuf::from("operators/x.toml"), op.to_owned())])
            .expect_err("duplicate ASN");
        assert!(
            e.to_string()
                .contains("AS64500 is listed twice under operator 'x'"),
            "{e}"
        );
        let single = op.replace("64500, 64500", "64500");
        let twice = format!("{single}{}", single.replace("64500", "64501"));
        let e = Catalog::from_sources([(PathBuf::from("operators/x.toml"), twice)])
            .expect_err("duplicate operator");
        assert!(
            e.to_string().contains("operator 'x' is defined twice"),
            "{e}"
        );
        let v = "[[vendor]]\nid = \"v\"\nname = \"V\"\njurisdiction = \"CN\"\nevidence = \"e\"\nasns = [64502, 64502]\n";
        let e = Catalog::from_sources([(PathBuf::from("vendors/v.toml"), v.to_owned())])
            .expect_err("duplicate ASN");
        assert!(
            e.to_string()
                .contains("AS64502 is listed twice under vendor 'v'"),
            "{e}"
        );
    }

    #[test]
    fn a_signature_the_classifier_never_reports_is_an_error() {
        let v = "[[vendor]]\nid = \"v\"\nname = \"V\"\njurisdiction = \"CN\"\nevidence = \"e\"\nsignatures = [\"sdrtn\"]\n";
        let e = Catalog::from_sources([(PathBuf::from("vendors/v.toml"), v.to_owned())])
            .expect_err("unknown signature");
        assert!(
            e.to_string().contains(
                "vendor 'v' names the signature 'sdrtn', a protocol the classifier never reports"
            ),
            "{e}"
        );
        let ok = v.replace("sdrtn", "SD-RTN");
        let c = Catalog::from_sources([(PathBuf::from("vendors/v.toml"), ok)]).expect("known");
        assert!(c.vendor_of(&[], None, Some("sd-rtn")).is_some());
    }

    #[test]
    fn shipped_catalog_loads_and_knows_agora() {
        let c = Catalog::shipped().expect("shipped catalog parses");
        let (v, ev) = c
            .vendor_of(&["104-166-161-75.edge.agora.io"], None, None)
            .expect("agora");
        assert_eq!((v.id.as_str(), v.jurisdiction.as_str()), ("agora", "CN"));
        assert_eq!(
            ev,
            VendorEvidence::Domain {
                name: "104-166-161-75.edge.agora.io",
                domain: "agora.io"
            }
        );
        assert_eq!(
            c.vendor_of(&[], Some(140_899), None)
                .map(|x| x.0.id.as_str()),
            Some("agora")
        );
        assert_eq!(
            c.vendor_of(&[], None, Some("sd-rtn"))
                .map(|x| x.0.id.as_str()),
            Some("agora")
        );
        assert!(
            c.vendor_of(&["example.com"], Some(21_859), Some("tls"))
                .is_none()
        );
        for d in [
            "agora.io",
            "agoraio.cn",
            "agoralab.co",
            "sd-rtn.com",
            "rtnsvc.com",
            "rtesvc.com",
            "rtelink.com",
            "netless.link",
        ] {
            assert!(c.vendor_of(&[d], None, None).is_some(), "{d}");
        }
    }

    #[test]
    fn shipped_operators_cover_the_required_asns() {
        let c = Catalog::shipped().expect("parses");
        let want: [(&str, &[u32]); 11] = [
            ("china-telecom", &[4134, 4809, 4812, 23724, 58466]),
            ("china-unicom", &[4837, 9929, 4808, 17621]),
            ("china-mobile", &[9808, 56040, 58453]),
            ("alibaba", &[37963, 45102, 24429]),
            ("tencent", &[45090, 132203]),
            ("huawei-cloud", &[55990, 136907]),
            ("baidu", &[38365, 55967]),
            ("bytedance", &[396986, 138699, 137718]),
            ("ucloud", &[135377]),
            ("cernet", &[4538]),
            ("agora", &[140899]),
        ];
        for (id, asns) in want {
            for &a in asns {
                let o = c
                    .operator_of(a)
                    .unwrap_or_else(|| panic!("AS{a} has an operator"));
                assert_eq!(
                    (o.id.as_str(), o.jurisdiction.as_str()),
                    (id, "CN"),
                    "AS{a}"
                );
            }
        }
        assert!(
            c.operator_of(21_859).is_none(),
            "Zenlayer is not a PRC operator"
        );
    }

    /// Each shipped vendor is recognised by a host its SDK reaches (from
    /// the sources in its entry), broad parent domains are not taken for
    /// it, and every vendor of the catalog is in this table.
    #[test]
    fn each_shipped_vendor_is_recognised_by_its_sdk_hosts() {
        let c = Catalog::shipped().expect("parses");
        let table: [(&str, &[&str]); 8] = [
            (
                "agora",
                &["104-166-161-75.edge.agora.io", "ap-web-1.agora.io"],
            ),
            (
                "tencent-trtc",
                &[
                    "schedule.rtc.tencentcloud.com",
                    "yun.tim.qq.com",
                    "x.trtc.tencent-cloud.com",
                ],
            ),
            (
                "zegocloud",
                &["webliveroom1-api.zego.im", "accesshub-wss.coolzcloud.com"],
            ),
            (
                "netease-yunxin",
                &["lbs.netease.im", "wecan-lbs.yunxinvcloud.com"],
            ),
            (
                "volcengine-rtc",
                &["rtc-access-src.zijieapi.com", "common.rtc.volcvideo.com"],
            ),
            ("alibaba-rtc", &["gslb.dingrtc.com", "gw.rtn.aliyuncs.com"]),
            ("rongcloud", &["nav.cn.ronghub.com", "x.cn.rongnav.com"]),
            ("qiniu-rtc", &["rtc.qiniuapi.com"]),
        ];
        for (id, hosts) in table {
            let v = c
                .vendor(id)
                .unwrap_or_else(|| panic!("{id} is in the catalog"));
            assert_eq!(v.jurisdiction.to_string(), "CN", "{id}");
            assert!(!v.sources.is_empty() && !v.evidence.is_empty(), "{id}");
            for h in hosts {
                let got = c.vendor_of(&[h], None, None).map(|(v, _)| v.id.as_str());
                assert_eq!(got, Some(id), "{h}");
            }
        }
        for v in c.vendors() {
            assert!(
                table.iter().any(|(id, _)| *id == v.id),
                "vendor {} has no test here",
                v.id
            );
        }
        // The shared parents of listed hosts are not any vendor's.
        for h in [
            "www.qq.com",
            "oss-cn-hangzhou.aliyuncs.com",
            "www.zijieapi.com",
            "mail.126.net",
            "www.qiniuapi.com",
            "cos.ap-guangzhou.myqcloud.com",
        ] {
            assert_eq!(
                c.vendor_of(&[h], None, None).map(|(v, _)| v.id.clone()),
                None,
                "{h}"
            );
        }
        assert!(c.vendors().len() >= 6);
    }

    /// Every AS of the shipped world data whose registered name holds one
    /// of a group's `names` words is in the group's `asns` or `excluded`
    /// (with a reason); the report of what the owner layer covers.
    #[cfg(feature = "embedded-world")]
    #[test]
    fn every_as_a_group_names_is_listed_or_excluded() {
        let w = crate::intel::world::embedded().expect("world");
        let c = Catalog::shipped().expect("parses");
        let mut missing = Vec::new();
        for o in c.operators() {
            assert!(!o.names.is_empty(), "{}: no `names` words", o.id);
            for n in &o.names {
                assert_eq!(*n, n.to_lowercase(), "{}: names are lowercase", o.id);
            }
            for e in &o.excluded {
                assert!(
                    !o.asns.contains(&e.asn),
                    "{}: AS{} listed and excluded",
                    o.id,
                    e.asn
                );
                assert!(
                    !e.reason.trim().is_empty(),
                    "{}: AS{} has no reason",
                    o.id,
                    e.asn
                );
            }
            for (asn, name) in w.asns() {
                let lower = name.to_lowercase();
                if o.names.iter().any(|n| lower.contains(n.as_str()))
                    && !o.asns.contains(&asn)
                    && !o.excluded.iter().any(|e| e.asn == asn)
                {
                    missing.push(format!("{}: AS{asn} {name}", o.id));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "ASes the groups' words find that the catalog neither lists nor excludes:\n{}",
            missing.join("\n")
        );
        let owned: std::collections::HashSet<u32> = c
            .operators()
            .iter()
            .flat_map(|o| o.asns.iter().copied())
            .collect();
        let a = w.announced_by(|x| owned.contains(&x));
        let all = w.announced_by(|_| true);
        eprintln!(
            "owner layer: {} ASes, {} IPv4 addresses of {} announced, {} IPv6 /64s of {}",
            owned.len(),
            a.ipv4_addresses,
            all.ipv4_addresses,
            a.ipv6_slash64s,
            all.ipv6_slash64s
        );
        assert!(a.ipv4_addresses > 0 && a.ipv4_addresses < all.ipv4_addresses);
    }

    #[cfg(feature = "embedded-world")]
    #[test]
    fn every_catalog_asn_exists_in_the_shipped_world() {
        let w = crate::intel::world::embedded().expect("world");
        let c = Catalog::shipped().expect("parses");
        for o in c.operators() {
            for &a in &o.asns {
                assert!(
                    w.as_org_of(a).is_some(),
                    "AS{a} ({}) is not in the shipped ASN data",
                    o.id
                );
            }
        }
        for v in c.vendors() {
            for &a in &v.asns {
                assert!(
                    w.as_org_of(a).is_some(),
                    "AS{a} ({}) is not in the shipped ASN data",
                    v.id
                );
            }
        }
    }

    #[test]
    fn errors_are_located() {
        let bad = "[[vendor]]\nid = \"x\"\nname = \"X\"\njurisdiction = \"C1\"\nevidence = \"e\"\n";
        let e = Catalog::from_sources([(PathBuf::from("v.toml"), bad.to_owned())])
            .expect_err("bad country");
        assert_eq!((e.line, e.path.to_str()), (4, Some("v.toml")), "{e}");
        let bad = "[[vendor]]\nid = \"x\"\nname = \"X\"\njurisdiction = \"CN\"\nevidence = \"e\"\ndomains = [\"a..b\"]\n";
        let e = Catalog::from_sources([(PathBuf::from("v.toml"), bad.to_owned())])
            .expect_err("bad domain");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("empty label"), "{e}");
        let bad = "[[vendor]]\nid = \"x\"\nname = \"X\"\njurisdiction = \"CN\"\nevidence = \"e\"\ncolour = 1\n";
        let e = Catalog::from_sources([(PathBuf::from("v.toml"), bad.to_owned())])
            .expect_err("unknown field");
        assert!(e.message.contains("colour"), "{e}");
        let two = "[[operator]]\nid = \"a\"\nname = \"A\"\nparent = \"P\"\njurisdiction = \"CN\"\nasns = [1]\nevidence = \"e\"\n[[operator]]\nid = \"b\"\nname = \"B\"\nparent = \"P\"\njurisdiction = \"CN\"\nasns = [1]\nevidence = \"e\"\n";
        let e = Catalog::from_sources([(PathBuf::from("o.toml"), two.to_owned())])
            .expect_err("dup asn");
        assert!(e.message.contains("AS1") && e.line == 9, "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_col("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_col("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
