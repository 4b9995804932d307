//! Signed rules bundles (`.gwb`): a policy with its lists and catalogs in
//! one file, signed with Ed25519, with a sequence number against rollback
//! and an expiry against freeze attacks.
//!
//! Layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `GEOWALLB` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | flags (0) |
//! | 16 | 8 | sequence number |
//! | 24 | 8 | created (Unix seconds) |
//! | 32 | 8 | expires (Unix seconds) |
//! | 40 | 8 | signing key id (first 8 bytes of SHA-256 of the public key; 0 if unsigned) |
//! | 48 | 8 | content length N |
//! | 56 | 32 | SHA-256 of the content |
//! | 88 | N | content: a file count (u32), then per file: path length (u16), path, data length (u32), data |
//! | 88+N | 1 | signature count (0 or 1) |
//! | 89+N | 64 | Ed25519 signature over bytes 0..88+N |
//!
//! The content holds `policy.toml`, the list files it names, and the
//! catalogs (`vendors/*.toml`, `operators/*.toml`). Loading checks, in this
//! order, each failure with its own [`BundleError`]: length and magic
//! (truncated), version, presence of a signature, a trusted key, the
//! signature, the content hash and archive, expiry, sequence (rollback),
//! and finally that the policy compiles. A rejected bundle changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::lists::{InstalledLists, ListBundle, ListRef, Manifest, NamedList, read_manifest};
use super::rules::{Declared, Policy};

/// SHA-256 of `b`.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An Ed25519 signing key (a maintainer's secret), from its 32-byte seed.
pub struct SigningKey {
    seed: [u8; 32],
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("SigningKey")
            .field("public", &self.verifying_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key with this seed (every 32-byte seed is one).
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("ring takes any 32-byte Ed25519 seed");
        Self { seed: *seed, pair }
    }

    /// The seed, as key files hold it.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.seed
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        use ring::signature::KeyPair;
        let mut b = [0u8; 32];
        b.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey(b)
    }

    /// The Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

/// An Ed25519 public key: whose signatures a device trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey([u8; 32]);

impl VerifyingKey {
    /// The key with these bytes. Bytes that are not a curve point are
    /// accepted here and verify nothing.
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        Self(*b)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

use crate::intel::catalog::{Catalog, SourceError};

const MAGIC: [u8; 8] = *b"GEOWALLB";
const VERSION: u32 = 1;
const HEADER: usize = 88;
/// The largest bundle accepted (64 MiB).
pub const MAX_BUNDLE: usize = 64 << 20;

/// Why a bundle was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Shorter than its header says, or not a bundle at all.
    #[error("bundle is truncated: {0}")]
    Truncated(String),
    /// Not a geowall bundle.
    #[error("not a geowall rules bundle (bad magic bytes)")]
    BadMagic,
    /// Another format version.
    #[error("bundle format version {0} is not supported (this geowall reads version 1)")]
    UnsupportedVersion(u32),
    /// Nobody signed it.
    #[error("bundle is not signed: sign it with `geowall rules sign`")]
    MissingSignature,
    /// Signed by a key this installation does not trust.
    #[error("bundle is signed by an unknown key (id {0}); trust its public key with --pubkey")]
    UnknownKey(String),
    /// The signature does not match: the bundle was altered after signing.
    #[error("bundle signature is invalid: the bundle was altered after signing")]
    BadSignature,
    /// The content does not match its hash, or the archive is malformed.
    #[error("bundle content is corrupt: {0}")]
    Corrupt(String),
    /// Past its expiry: a stale bundle replayed to freeze updates.
    #[error("bundle expired at {} (now {}); ask the list maintainer for a current one", crate::timefmt::rfc3339(*expires), crate::timefmt::rfc3339(*now))]
    Expired {
        /// Expiry (Unix seconds).
        expires: u64,
        /// Now (Unix seconds).
        now: u64,
    },
    /// Not newer than what is installed: a rollback.
    #[error(
        "bundle sequence {sequence} is not newer than the installed {installed} (rollback refused)"
    )]
    Rollback {
        /// The bundle's sequence number.
        sequence: u64,
        /// The installed one.
        installed: u64,
    },
    /// A bundle of the other kind (world data given as rules, or rules as
    /// world data).
    #[error("this is a {found} bundle, not a {wanted} bundle")]
    WrongKind {
        /// What it is.
        found: BundleKind,
        /// What was asked for.
        wanted: BundleKind,
    },
    /// The policy inside does not compile.
    #[error("bundle policy is invalid: {0}")]
    InvalidPolicy(#[from] SourceError),
    /// The world database inside does not load.
    #[error("bundle world database is invalid: {0}")]
    InvalidWorld(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

/// What a bundle carries, recorded (and signed) in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// A policy, its lists and catalogs (`geowall rules build`).
    Rules,
    /// A world database (`geowall world bundle`).
    World,
    /// A maintainer's named lists (`geowall rules build` of a directory
    /// with `lists.toml`), which policies draw on with `from`.
    Lists,
}

impl BundleKind {
    fn code(self) -> u32 {
        match self {
            BundleKind::Rules => 0,
            BundleKind::World => 1,
            BundleKind::Lists => 2,
        }
    }

    /// The kind a bundle's header names (nothing else is checked).
    ///
    /// # Errors
    /// Too short, or a kind this geowall does not know.
    pub fn of(b: &[u8]) -> Result<Self, BundleError> {
        match b
            .get(12..16)
            .map(|k| u32::from_le_bytes([k[0], k[1], k[2], k[3]]))
        {
            Some(0) => Ok(BundleKind::Rules),
            Some(1) => Ok(BundleKind::World),
            Some(2) => Ok(BundleKind::Lists),
            Some(k) => Err(BundleError::Corrupt(format!("unknown bundle kind {k}"))),
            None => Err(BundleError::Truncated("no kind".into())),
        }
    }

    /// The word published files are named with: `rules-SEQ.gwb`,
    /// `world-SEQ.gwb`, `lists-SEQ.gwb`.
    pub fn stem(self) -> &'static str {
        match self {
            BundleKind::Rules => "rules",
            BundleKind::World => "world",
            BundleKind::Lists => "lists",
        }
    }

    /// The index a static host publishes for this kind.
    pub fn index_file(self) -> &'static str {
        match self {
            BundleKind::Rules => "index.json",
            BundleKind::World => "world-index.json",
            BundleKind::Lists => "lists-index.json",
        }
    }
}

impl std::fmt::Display for BundleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BundleKind::Rules => "rules",
            BundleKind::World => "world data",
            BundleKind::Lists => "list",
        })
    }
}

/// A verified world bundle.
#[derive(Debug)]
pub struct WorldBundle {
    /// Sequence number (its own series, apart from the rules bundles').
    pub sequence: u64,
    /// Created (Unix seconds).
    pub created: u64,
    /// Expires (Unix seconds).
    pub expires: u64,
    /// Hex id of the key that signed it.
    pub key_id: String,
    /// The world database, loaded and checked.
    pub world: crate::intel::world::World,
}

/// A verified bundle.
#[derive(Debug)]
pub struct Bundle {
    /// Sequence number.
    pub sequence: u64,
    /// Created (Unix seconds).
    pub created: u64,
    /// Expires (Unix seconds).
    pub expires: u64,
    /// Hex SHA-256 of the content.
    pub content_hash: String,
    /// Hex id of the key that signed it.
    pub key_id: String,
    /// The compiled policy.
    pub policy: Policy,
    /// The catalog it carries.
    pub catalog: Catalog,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The 8-byte id of a public key.
pub fn key_id(k: &VerifyingKey) -> [u8; 8] {
    let d = sha256(k.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Encodes files as bundle content.
fn archive(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    out.extend_from_slice(
        &u32::try_from(files.len())
            .map_err(|_| "too many files")?
            .to_le_bytes(),
    );
    for (p, d) in files {
        out.extend_from_slice(
            &u16::try_from(p.len())
                .map_err(|_| format!("path too long: {p}"))?
                .to_le_bytes(),
        );
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(
            &u32::try_from(d.len())
                .map_err(|_| format!("file too large: {p}"))?
                .to_le_bytes(),
        );
        out.extend_from_slice(d);
    }
    Ok(out)
}

fn unarchive(c: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = c
            .get(at..at.checked_add(n).ok_or("length overflow")?)
            .ok_or("archive ends early")?;
        at += n;
        Ok(s)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad count")?);
    let mut files = BTreeMap::new();
    for _ in 0..count {
        let pl = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "bad path length")?) as usize;
        let path = std::str::from_utf8(take(pl)?)
            .map_err(|_| "a path is not UTF-8")?
            .to_owned();
        if path.is_empty()
            || path.starts_with('/')
            || path.split('/').any(|s| s == ".." || s.is_empty())
        {
            return Err(format!("unsafe path in archive: {path:?}"));
        }
        let dl = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad data length")?) as usize;
        let data = take(dl)?.to_vec();
        if files.insert(path.clone(), data).is_some() {
            return Err(format!("duplicate path in archive: {path}"));
        }
    }
    if at != c.len() {
        return Err("trailing bytes after the archive".into());
    }
    Ok(files)
}

/// An archived file's text.
fn archived_text(files: &BTreeMap<String, Vec<u8>>, p: &str) -> Result<String, String> {
    let d = files
        .get(p)
        .ok_or_else(|| format!("{p} is not in the bundle"))?;
    String::from_utf8(d.clone()).map_err(|_| format!("{p} is not UTF-8"))
}

/// The catalog of archived files (`vendors/`, `operators/`).
fn archived_catalog(files: &BTreeMap<String, Vec<u8>>) -> Result<Catalog, BundleError> {
    let mut cats = Vec::new();
    for p in files
        .keys()
        .filter(|p| p.starts_with("vendors/") || p.starts_with("operators/"))
    {
        cats.push((
            PathBuf::from(p),
            archived_text(files, p).map_err(BundleError::Corrupt)?,
        ));
    }
    Ok(Catalog::from_sources(cats)?)
}

/// Compiles a policy and catalog from archived files, drawing lists
/// `from` list bundles on `installed`.
fn compile(
    files: &BTreeMap<String, Vec<u8>>,
    installed: &InstalledLists,
) -> Result<(Policy, Catalog), BundleError> {
    let catalog = archived_catalog(files)?;
    let policy_text = archived_text(files, "policy.toml").map_err(BundleError::Corrupt)?;
    let policy = Policy::parse_with(
        Path::new("policy.toml"),
        &policy_text,
        &mut |f| archived_text(files, f),
        installed,
        &catalog,
    )?;
    Ok((policy, catalog))
}

/// Checks archived files compile, without list bundles (see
/// [`Policy::declared`]).
fn compile_declared(files: &BTreeMap<String, Vec<u8>>) -> Result<Declared, BundleError> {
    let catalog = archived_catalog(files)?;
    let policy_text = archived_text(files, "policy.toml").map_err(BundleError::Corrupt)?;
    Ok(Policy::declared(
        Path::new("policy.toml"),
        &policy_text,
        &mut |f| archived_text(files, f),
        &catalog,
    )?)
}

/// Reads a list bundle's archived files: its manifest and lists.
fn compile_lists(
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<(Manifest, Vec<NamedList>), BundleError> {
    let text = archived_text(files, "lists.toml").map_err(BundleError::Corrupt)?;
    Ok(read_manifest(Path::new("lists.toml"), &text, &mut |f| {
        archived_text(files, f)
    })?)
}

fn io_error(p: &Path, e: std::io::Error) -> BundleError {
    BundleError::Io {
        path: p.to_owned(),
        message: e.to_string(),
    }
}

/// Builds an unsigned bundle from a directory: a rules bundle from one
/// holding `policy.toml`, the list files it names, and optionally
/// `vendors/` and `operators/` catalogs (the shipped catalogs are included
/// when absent); a list bundle from one holding `lists.toml` and its lists
/// (see [`Manifest`]). Either may carry `endorsements/*.json` (key
/// rotation).
///
/// # Errors
/// Neither file or both, a file cannot be read, or what it says has a
/// mistake (located).
pub fn build(
    dir: &Path,
    sequence: u64,
    created: u64,
    expires: u64,
) -> Result<Vec<u8>, BundleError> {
    let pol = dir.join("policy.toml");
    let man = dir.join("lists.toml");
    match (pol.exists(), man.exists()) {
        (true, false) => build_rules(dir, sequence, created, expires),
        (false, true) => build_lists(dir, sequence, created, expires),
        (true, true) => Err(BundleError::Io {
            path: dir.to_owned(),
            message: "has both policy.toml (a rules bundle) and lists.toml (a list bundle): build each from a directory of its own".into(),
        }),
        (false, false) => Err(BundleError::Io {
            path: dir.to_owned(),
            message: "has neither policy.toml (a rules bundle) nor lists.toml (a list bundle)"
                .into(),
        }),
    }
}

/// Adds `dir/endorsements/*.json` to `files`, each checked to be one.
fn add_endorsements(dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) -> Result<(), BundleError> {
    let d = dir.join("endorsements");
    if !d.is_dir() {
        return Ok(());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(&d)
        .map_err(|e| io_error(&d, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    found.sort();
    for f in found {
        let data = std::fs::read(&f).map_err(|e| io_error(&f, e))?;
        serde_json::from_slice::<Endorsement>(&data).map_err(|e| BundleError::Io {
            path: f.clone(),
            message: format!("not an endorsement (geowall rules endorse): {e}"),
        })?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.insert(format!("endorsements/{name}"), data);
    }
    Ok(())
}

/// A rules bundle from a directory with `policy.toml` (see [`build`]).
fn build_rules(
    dir: &Path,
    sequence: u64,
    created: u64,
    expires: u64,
) -> Result<Vec<u8>, BundleError> {
    let io = io_error;
    let mut files = BTreeMap::new();
    let pol = dir.join("policy.toml");
    let policy_text = std::fs::read_to_string(&pol).map_err(|e| io(&pol, e))?;
    files.insert("policy.toml".to_owned(), policy_text.clone().into_bytes());
    for sub in ["vendors", "operators"] {
        let d = dir.join(sub);
        if d.is_dir() {
            for f in crate::intel::catalog::toml_files(&d)? {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                files.insert(
                    format!("{sub}/{name}"),
                    std::fs::read(&f).map_err(|e| io(&f, e))?,
                );
            }
        } else {
            for (p, t) in crate::intel::catalog::SHIPPED
                .iter()
                .filter(|(p, _)| p.contains(sub))
            {
                let name = Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                files.insert(format!("{sub}/{name}"), t.as_bytes().to_vec());
            }
        }
    }
    // Endorsements of the signing key (key rotation) travel with it.
    add_endorsements(dir, &mut files)?;
    // Check it compiles, reading lists from the directory and recording
    // them; lists from list bundles are the device's to supply.
    let catalog = archived_catalog(&files)?;
    let mut lists = BTreeMap::new();
    Policy::declared(
        &pol,
        &policy_text,
        &mut |f| {
            let data = std::fs::read_to_string(dir.join(f)).map_err(|e| e.to_string())?;
            lists.insert(f.to_owned(), data.clone().into_bytes());
            Ok(data)
        },
        &catalog,
    )?;
    for (k, v) in lists {
        files.insert(k, v);
    }
    let content = archive(&files).map_err(BundleError::Corrupt)?;
    Ok(frame_content(&content, sequence, created, expires))
}

/// A list bundle from a directory with `lists.toml` (see [`build`]).
fn build_lists(
    dir: &Path,
    sequence: u64,
    created: u64,
    expires: u64,
) -> Result<Vec<u8>, BundleError> {
    let man = dir.join("lists.toml");
    let text = std::fs::read_to_string(&man).map_err(|e| io_error(&man, e))?;
    let mut files = BTreeMap::new();
    files.insert("lists.toml".to_owned(), text.clone().into_bytes());
    read_manifest(&man, &text, &mut |f| {
        let data = std::fs::read_to_string(dir.join(f)).map_err(|e| e.to_string())?;
        files.insert(f.to_owned(), data.clone().into_bytes());
        Ok(data)
    })?;
    add_endorsements(dir, &mut files)?;
    let content = archive(&files).map_err(BundleError::Corrupt)?;
    Ok(frame_kind(
        BundleKind::Lists,
        &content,
        sequence,
        created,
        expires,
    ))
}

/// An unsigned rules bundle around `content` taken as it is (normally the
/// archive [`build`] makes; tools and the fuzzer pass other bytes).
pub fn frame_content(content: &[u8], sequence: u64, created: u64, expires: u64) -> Vec<u8> {
    frame_kind(BundleKind::Rules, content, sequence, created, expires)
}

/// An unsigned world bundle around a world database's bytes (checked to
/// load first).
///
/// # Errors
/// The database does not load.
pub fn build_world(
    database: &[u8],
    sequence: u64,
    created: u64,
    expires: u64,
) -> Result<Vec<u8>, BundleError> {
    crate::intel::world::World::from_slice(database)
        .map_err(|e| BundleError::InvalidWorld(e.to_string()))?;
    Ok(frame_kind(
        BundleKind::World,
        database,
        sequence,
        created,
        expires,
    ))
}

fn frame_kind(
    kind: BundleKind,
    content: &[u8],
    sequence: u64,
    created: u64,
    expires: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + content.len() + 65);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.code().to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&created.to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&(content.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha256(content));
    out.extend_from_slice(content);
    out.push(0);
    out
}

/// The signed part of a bundle and its length, after the frame checks.
fn frame(b: &[u8]) -> Result<usize, BundleError> {
    if b.len() > MAX_BUNDLE {
        return Err(BundleError::Corrupt(format!(
            "larger than {MAX_BUNDLE} bytes"
        )));
    }
    if b.len() < 8 {
        return Err(BundleError::Truncated(format!("{} bytes", b.len())));
    }
    if b[..8] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    if b.len() < HEADER {
        return Err(BundleError::Truncated(format!(
            "header needs {HEADER} bytes, have {}",
            b.len()
        )));
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != VERSION {
        return Err(BundleError::UnsupportedVersion(version));
    }
    let n = usize::try_from(u64_at(b, 48))
        .map_err(|_| BundleError::Corrupt("content length overflows".into()))?;
    let body = HEADER
        .checked_add(n)
        .ok_or_else(|| BundleError::Corrupt("content length overflows".into()))?;
    if b.len() < body + 1 {
        return Err(BundleError::Truncated(format!(
            "content of {n} bytes declared, file has {}",
            b.len()
        )));
    }
    Ok(body)
}

/// Signs a bundle (replacing any signature).
pub fn sign(bundle: &[u8], key: &SigningKey) -> Result<Vec<u8>, BundleError> {
    let body = frame(bundle)?;
    let mut out = bundle[..body].to_vec();
    out[40..48].copy_from_slice(&key_id(&key.verifying_key()));
    let sig = key.sign(&out);
    out.push(1);
    out.extend_from_slice(&sig);
    Ok(out)
}

/// A bundle whose frame, signature, kind, expiry and sequence were
/// checked: its header fields and content.
struct Verified<'b> {
    sequence: u64,
    created: u64,
    expires: u64,
    content_hash: String,
    key_id: String,
    content: &'b [u8],
}

/// Checks a bundle of `kind`: frame, signature by one of `trusted`, the
/// content's hash, expiry against `now` and sequence against `installed`.
fn verify<'b>(
    b: &'b [u8],
    kind: BundleKind,
    trusted: &[VerifyingKey],
    installed: Option<u64>,
    now: u64,
) -> Result<Verified<'b>, BundleError> {
    let body = frame(b)?;
    let sig = match b[body] {
        0 if b.len() == body + 1 => return Err(BundleError::MissingSignature),
        1 if b.len() == body + 65 => &b[body + 1..],
        1 if b.len() < body + 65 => {
            return Err(BundleError::Truncated("signature cut short".into()));
        }
        _ => {
            return Err(BundleError::Corrupt(
                "unexpected bytes after the content".into(),
            ));
        }
    };
    let id: [u8; 8] = b[40..48]
        .try_into()
        .map_err(|_| BundleError::Truncated("key id".into()))?;
    let content = &b[HEADER..body];
    let endorsed;
    let key = match trusted.iter().find(|k| key_id(k) == id) {
        Some(k) => k,
        None => {
            // A rotated key: a trusted key's endorsement of it travels in
            // the (rules or list) bundle itself.
            endorsed = (kind != BundleKind::World)
                .then(|| unarchive(content).ok())
                .flatten()
                .and_then(|files| endorsed_key(&files, &id, trusted, now))
                .ok_or_else(|| BundleError::UnknownKey(hex(&id)))?;
            &endorsed
        }
    };
    if !key.verify(&b[..body], sig) {
        return Err(BundleError::BadSignature);
    }
    if sha256(content).as_slice() != &b[56..88] {
        return Err(BundleError::Corrupt(
            "content does not match its SHA-256".into(),
        ));
    }
    let found = BundleKind::of(b)?;
    if found != kind {
        return Err(BundleError::WrongKind {
            found,
            wanted: kind,
        });
    }
    let (sequence, created, expires) = (u64_at(b, 16), u64_at(b, 24), u64_at(b, 32));
    if now >= expires {
        return Err(BundleError::Expired { expires, now });
    }
    if let Some(i) = installed
        && sequence <= i
    {
        return Err(BundleError::Rollback {
            sequence,
            installed: i,
        });
    }
    Ok(Verified {
        sequence,
        created,
        expires,
        content_hash: hex(&b[56..88]),
        key_id: hex(&id),
        content,
    })
}

/// A rules or list bundle's header and files, read for review (`geowall
/// rules diff`): signed or not, its signature is *not* checked, only its
/// frame, kind, content hash and archive. Never install what this returns;
/// use [`open`] or [`open_lists`].
#[derive(Debug, Clone)]
pub struct Review {
    /// Rules or lists.
    pub kind: BundleKind,
    /// Sequence number.
    pub sequence: u64,
    /// Expires (Unix seconds).
    pub expires: u64,
    /// Whether it carries a signature (unchecked).
    pub signed: bool,
    /// The archived files: `policy.toml` or `lists.toml`, list files,
    /// `vendors/*.toml`, `operators/*.toml`, `endorsements/*.json`.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads a rules or list bundle for review; see [`Review`].
///
/// # Errors
/// A damaged frame or archive, a world bundle, or content that does not
/// match its hash.
pub fn review(b: &[u8]) -> Result<Review, BundleError> {
    let body = frame(b)?;
    let content = &b[HEADER..body];
    if sha256(content).as_slice() != &b[56..88] {
        return Err(BundleError::Corrupt(
            "content does not match its SHA-256".into(),
        ));
    }
    let kind = BundleKind::of(b)?;
    if kind == BundleKind::World {
        return Err(BundleError::WrongKind {
            found: BundleKind::World,
            wanted: BundleKind::Rules,
        });
    }
    Ok(Review {
        kind,
        sequence: u64_at(b, 16),
        expires: u64_at(b, 32),
        signed: b[body] == 1,
        files: unarchive(content).map_err(BundleError::Corrupt)?,
    })
}

/// Verifies and opens a rules bundle.
///
/// `trusted`: the public keys to accept; `installed`: the sequence number
/// of the installed bundle, if any; `now`: Unix seconds; `lists`: the list
/// bundles the device has installed, which the policy's lists `from` list
/// bundles are drawn from (one not there is an error).
///
/// # Errors
/// Any check failed: see [`BundleError`].
pub fn open(
    b: &[u8],
    trusted: &[VerifyingKey],
    installed: Option<u64>,
    now: u64,
    lists: &InstalledLists,
) -> Result<Bundle, BundleError> {
    let v = verify(b, BundleKind::Rules, trusted, installed, now)?;
    let files = unarchive(v.content).map_err(BundleError::Corrupt)?;
    let (policy, catalog) = compile(&files, lists)?;
    Ok(Bundle {
        sequence: v.sequence,
        created: v.created,
        expires: v.expires,
        content_hash: v.content_hash,
        key_id: v.key_id,
        policy,
        catalog,
    })
}

/// Verifies and opens a world bundle (the same checks as [`open`], its
/// own sequence series), loading the database it carries.
///
/// # Errors
/// Any check failed, or the database does not load.
pub fn open_world(
    b: &[u8],
    trusted: &[VerifyingKey],
    installed: Option<u64>,
    now: u64,
) -> Result<WorldBundle, BundleError> {
    let v = verify(b, BundleKind::World, trusted, installed, now)?;
    let world = crate::intel::world::World::from_slice(v.content)
        .map_err(|e| BundleError::InvalidWorld(e.to_string()))?;
    Ok(WorldBundle {
        sequence: v.sequence,
        created: v.created,
        expires: v.expires,
        key_id: v.key_id,
        world,
    })
}

/// Verifies and opens a list bundle (the same checks as [`open`], its own
/// sequence series): its name and lists.
///
/// # Errors
/// Any check failed, or a list has a mistake.
pub fn open_lists(
    b: &[u8],
    trusted: &[VerifyingKey],
    installed: Option<u64>,
    now: u64,
) -> Result<ListBundle, BundleError> {
    let v = verify(b, BundleKind::Lists, trusted, installed, now)?;
    let files = unarchive(v.content).map_err(BundleError::Corrupt)?;
    let (manifest, lists) = compile_lists(&files)?;
    Ok(ListBundle {
        name: manifest.name,
        sequence: v.sequence,
        created: v.created,
        expires: v.expires,
        key_id: v.key_id,
        lists,
    })
}

/// A list bundle read for review (see [`Review`]): its lists, with the
/// signature not checked (`key_id` is empty), for what-if tools such as
/// `rules explain --lists`. Never install what this returns; use
/// [`open_lists`].
///
/// # Errors
/// Not a list bundle, or a list has a mistake.
pub fn review_lists(r: &Review) -> Result<ListBundle, BundleError> {
    if r.kind != BundleKind::Lists {
        return Err(BundleError::WrongKind {
            found: r.kind,
            wanted: BundleKind::Lists,
        });
    }
    let (m, lists) = compile_lists(&r.files)?;
    Ok(ListBundle {
        name: m.name,
        sequence: r.sequence,
        created: 0,
        expires: r.expires,
        key_id: String::new(),
        lists,
    })
}

/// What [`inspect`] found in a bundle of any kind.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// Its kind.
    pub kind: BundleKind,
    /// Sequence number.
    pub sequence: u64,
    /// Expires (Unix seconds).
    pub expires: u64,
    /// Hex id of the key that signed it.
    pub key_id: String,
    /// Hex SHA-256 of the content.
    pub content_hash: String,
    /// What it carries, in words.
    pub what: String,
    /// A list bundle's name.
    pub list_bundle: Option<String>,
    /// A rules bundle's lists from list bundles.
    pub needs: Vec<ListRef>,
}

/// Verifies a bundle of `kind` as [`open`], [`open_world`] or
/// [`open_lists`] do, without installing anything; a rules bundle's policy
/// is checked without list bundles (the lists it needs from them are
/// named), as `rules verify` and a subscription's fetch check it.
///
/// # Errors
/// Any check failed.
pub fn inspect(
    b: &[u8],
    kind: BundleKind,
    trusted: &[VerifyingKey],
    installed: Option<u64>,
    now: u64,
) -> Result<Inspected, BundleError> {
    let v = verify(b, kind, trusted, installed, now)?;
    let mut out = Inspected {
        kind,
        sequence: v.sequence,
        expires: v.expires,
        key_id: v.key_id,
        content_hash: v.content_hash,
        what: String::new(),
        list_bundle: None,
        needs: Vec::new(),
    };
    match kind {
        BundleKind::Rules => {
            let files = unarchive(v.content).map_err(BundleError::Corrupt)?;
            let d = compile_declared(&files)?;
            out.what = format!("policy '{}' ({} rules, {} lists)", d.name, d.rules, d.lists);
            out.needs = d.needs;
        }
        BundleKind::World => {
            let w = crate::intel::world::World::from_slice(v.content)
                .map_err(|e| BundleError::InvalidWorld(e.to_string()))?;
            out.what = format!("world data built {}", w.meta().built_at);
        }
        BundleKind::Lists => {
            let files = unarchive(v.content).map_err(BundleError::Corrupt)?;
            let (m, lists) = compile_lists(&files)?;
            out.what = format!(
                "list bundle '{}' ({})",
                m.name,
                lists
                    .iter()
                    .map(|l| format!("{}: {} entries", l.name, l.entries.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            out.list_bundle = Some(m.name);
        }
    }
    Ok(out)
}

/// A trusted key's word that another key may sign in its place (key
/// rotation): `geowall rules endorse`, carried in bundles under
/// `endorsements/` and in published indexes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endorsement {
    /// The endorsed public key (hex).
    pub key: String,
    /// The id of the endorsing key (hex).
    pub by: String,
    /// Until when (Unix seconds) the endorsement holds.
    pub expires: u64,
    /// The endorsing key's signature (hex).
    pub signature: String,
}

/// What an endorsement's signature covers.
fn endorsement_message(key: &str, expires: u64) -> Vec<u8> {
    format!("geowall-endorsement-v1\n{key}\n{expires}\n").into_bytes()
}

/// `by` endorses `new` until `expires`.
pub fn endorse(by: &SigningKey, new: &VerifyingKey, expires: u64) -> Endorsement {
    let key = hex(new.as_bytes());
    Endorsement {
        signature: hex(&by.sign(&endorsement_message(&key, expires))),
        by: hex(&key_id(&by.verifying_key())),
        key,
        expires,
    }
}

impl Endorsement {
    /// The endorsed key, if a key of `trusted` signed this endorsement and
    /// it has not expired at `now`.
    pub fn check(&self, trusted: &[VerifyingKey], now: u64) -> Option<VerifyingKey> {
        if now >= self.expires {
            return None;
        }
        let by = trusted.iter().find(|k| hex(&key_id(k)) == self.by)?;
        let sig = unhex(&self.signature)?;
        if !by.verify(&endorsement_message(&self.key, self.expires), &sig) {
            return None;
        }
        let raw: [u8; 32] = unhex(&self.key)?.try_into().ok()?;
        Some(VerifyingKey::from_bytes(&raw))
    }
}

/// The key with id `id` that an endorsement among `files`
/// (`endorsements/*.json`) by a `trusted` key vouches for.
fn endorsed_key(
    files: &BTreeMap<String, Vec<u8>>,
    id: &[u8; 8],
    trusted: &[VerifyingKey],
    now: u64,
) -> Option<VerifyingKey> {
    files
        .iter()
        .filter(|(p, _)| p.starts_with("endorsements/"))
        .filter_map(|(_, d)| serde_json::from_slice::<Endorsement>(d).ok())
        .filter_map(|e| e.check(trusted, now))
        .find(|k| key_id(k) == *id)
}

/// What a static host publishes beside its bundles (in `index.json`, with
/// its signature, see [`publish_index`]): the latest bundle's file,
/// sequence, expiry, size and SHA-256, so a subscriber learns at the cost
/// of a small file whether there is anything newer, and cannot be shown an
/// older index (it carries the sequence) or a bundle other than the one it
/// names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// `rules`, `world` or `lists`.
    pub kind: BundleKind,
    /// The bundle's sequence number.
    pub sequence: u64,
    /// When the bundle expires (Unix seconds).
    pub expires: u64,
    /// The bundle's file name, beside the index.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the whole bundle file.
    pub sha256: String,
    /// Hex id of the key that signed the bundle and the index.
    pub key_id: String,
}

/// Signatures over an index are over this prefix and the index's bytes, so
/// no other geowall signature can pass for one.
const INDEX_CONTEXT: &[u8] = b"geowall-index-v1\n";

/// The published form of an [`Index`]: the index's JSON text as a string
/// and the hex signature over it, in one file so that a host replacing it
/// never serves an index with another index's signature.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedIndex {
    index: String,
    signature: String,
    /// For an index signed by a rotated key: the endorsement the bundle
    /// carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endorsement: Option<Endorsement>,
}

/// The published index for a signed bundle, signed by `key`, which must
/// be the key that signed the bundle; and the index. The bundle's file is
/// named `rules-SEQ.gwb`, `world-SEQ.gwb` or `lists-SEQ.gwb` ([`Index::file`]).
///
/// # Errors
/// The bundle is damaged, unsigned or signed by another key.
pub fn publish_index(bundle: &[u8], key: &SigningKey) -> Result<(Vec<u8>, Index), BundleError> {
    let vk = key.verifying_key();
    frame(bundle)?;
    let kind = BundleKind::of(bundle)?;
    // The full check, its expiry and sequence aside (0: a past time).
    let v = verify(bundle, kind, &[vk], None, 0)?;
    let endorsement = match kind {
        BundleKind::Rules | BundleKind::Lists => review(bundle)?
            .files
            .iter()
            .filter(|(p, _)| p.starts_with("endorsements/"))
            .filter_map(|(_, d)| serde_json::from_slice::<Endorsement>(d).ok())
            .find(|e| e.key == hex(vk.as_bytes())),
        BundleKind::World => None,
    };
    let index = Index {
        kind,
        sequence: v.sequence,
        expires: v.expires,
        file: format!("{}-{}.gwb", kind.stem(), v.sequence),
        size: bundle.len() as u64,
        sha256: hex(&sha256(bundle)),
        key_id: v.key_id,
    };
    let text =
        serde_json::to_string(&index).map_err(|e| BundleError::Corrupt(format!("index: {e}")))?;
    let mut msg = INDEX_CONTEXT.to_vec();
    msg.extend_from_slice(text.as_bytes());
    let signed = SignedIndex {
        signature: hex(&key.sign(&msg)),
        index: text,
        endorsement,
    };
    let mut out = serde_json::to_vec_pretty(&signed)
        .map_err(|e| BundleError::Corrupt(format!("index: {e}")))?;
    out.push(b'\n');
    Ok((out, index))
}

/// Reads a published `index.json` without checking it (to compare
/// sequences when publishing).
///
/// # Errors
/// It is not an index.
pub fn read_index(published: &[u8]) -> Result<Index, BundleError> {
    let s: SignedIndex = serde_json::from_slice(published)
        .map_err(|e| BundleError::Corrupt(format!("index: {e}")))?;
    serde_json::from_str(&s.index).map_err(|e| BundleError::Corrupt(format!("index: {e}")))
}

/// Verifies a published index of `kind` bundles with `trusted` keys; `installed`:
/// the sequence a subscriber runs, which the index must exceed to be worth
/// fetching (`Ok(None)` when it does not: nothing new), and `now` for its
/// expiry.
///
/// # Errors
/// A bad signature, an unknown key, a damaged or expired index.
pub fn open_index(
    published: &[u8],
    kind: BundleKind,
    trusted: &[VerifyingKey],
    installed: Option<u64>,
    now: u64,
) -> Result<Option<Index>, BundleError> {
    let s: SignedIndex = serde_json::from_slice(published)
        .map_err(|e| BundleError::Corrupt(format!("index: {e}")))?;
    let json = s.index.as_bytes();
    let index: Index =
        serde_json::from_slice(json).map_err(|e| BundleError::Corrupt(format!("index: {e}")))?;
    let sig = unhex(&s.signature).ok_or(BundleError::BadSignature)?;
    let endorsed = s
        .endorsement
        .as_ref()
        .and_then(|e| e.check(trusted, now))
        .filter(|k| hex(&key_id(k)) == index.key_id);
    let key = trusted
        .iter()
        .find(|k| hex(&key_id(k)) == index.key_id)
        .or(endorsed.as_ref())
        .ok_or_else(|| BundleError::UnknownKey(index.key_id.clone()))?;
    let mut msg = INDEX_CONTEXT.to_vec();
    msg.extend_from_slice(json);
    if !key.verify(&msg, &sig) {
        return Err(BundleError::BadSignature);
    }
    if index.kind != kind {
        return Err(BundleError::WrongKind {
            found: index.kind,
            wanted: kind,
        });
    }
    if now >= index.expires {
        return Err(BundleError::Expired {
            expires: index.expires,
            now,
        });
    }
    Ok(installed
        .is_none_or(|i| index.sequence > i)
        .then_some(index))
}

/// Generates a signing key from the OS random source.
pub fn keygen() -> Result<SigningKey, BundleError> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| BundleError::Io {
            path: PathBuf::from("(OS random source)"),
            message: "no random bytes".into(),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a hex key file (secret: 32-byte seed).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let bad = |m: &str| BundleError::Io {
        path: path.to_owned(),
        message: m.to_owned(),
    };
    let t = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let b: [u8; 32] = unhex(&t)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("not a geowall secret key (64 hex digits)"))?;
    Ok(SigningKey::from_bytes(&b))
}

/// Reads a hex public key file.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let bad = |m: &str| BundleError::Io {
        path: path.to_owned(),
        message: m.to_owned(),
    };
    let t = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    parse_verifying_key(&t).map_err(bad)
}

/// A public key from its 64 hex digits (as key files hold it).
///
/// # Errors
/// Not 64 hex digits.
pub fn parse_verifying_key(hex: &str) -> Result<VerifyingKey, &'static str> {
    let b: [u8; 32] = unhex(hex)
        .and_then(|v| v.try_into().ok())
        .ok_or("not a geowall public key (64 hex digits)")?;
    Ok(VerifyingKey::from_bytes(&b))
}

/// Hex of a key's bytes, for key files.
pub fn key_hex(b: &[u8; 32]) -> String {
    hex(b)
}

/// Holds the installed bundle and installs updates: a rejected update
/// leaves what is installed untouched.
#[derive(Debug)]
pub struct Installer {
    trusted: Vec<VerifyingKey>,
    installed: Option<Bundle>,
    /// The installed bundle's bytes (one bundle), to compile it again when
    /// the list bundles change.
    installed_bytes: Option<Vec<u8>>,
    lists: InstalledLists,
    /// Bundles not newer than this are rollbacks even with none installed
    /// (the sequence a [`TrustStore`] recorded).
    floor: Option<u64>,
}

impl Installer {
    /// An installer trusting these keys, with nothing installed; its
    /// bundles' policies draw on no list bundle.
    pub fn new(trusted: Vec<VerifyingKey>) -> Self {
        Self::with_lists(trusted, InstalledLists::default())
    }

    /// An installer trusting these keys, whose bundles' policies draw on
    /// `lists` (`[[list]] from`).
    pub fn with_lists(trusted: Vec<VerifyingKey>, lists: InstalledLists) -> Self {
        Self {
            trusted,
            installed: None,
            installed_bytes: None,
            lists,
            floor: None,
        }
    }

    /// Refuses, from now on, every bundle not newer than `sequence` (one
    /// accepted before a restart whose bundle cannot be installed again).
    pub fn refuse_up_to(&mut self, sequence: u64) {
        self.floor = self.floor.max(Some(sequence));
    }

    /// The installed bundle.
    pub fn installed(&self) -> Option<&Bundle> {
        self.installed.as_ref()
    }

    /// The list bundles policies draw on.
    pub fn lists(&self) -> &InstalledLists {
        &self.lists
    }

    /// Verifies `bytes` against the trusted keys and the installed
    /// sequence, and installs it. On error nothing changes.
    pub fn install(&mut self, bytes: &[u8], now: u64) -> Result<&Bundle, BundleError> {
        let b = open(
            bytes,
            &self.trusted,
            self.installed.as_ref().map(|b| b.sequence).max(self.floor),
            now,
            &self.lists,
        )?;
        self.installed_bytes = Some(bytes.to_vec());
        Ok(self.installed.insert(b))
    }

    /// Takes new list bundles: the installed bundle (if any) is compiled
    /// again with them (verified again, its sequence kept) and returned.
    /// On error (its policy needs a list they lack, it has expired)
    /// nothing changes.
    pub fn relist(
        &mut self,
        lists: InstalledLists,
        now: u64,
    ) -> Result<Option<&Bundle>, BundleError> {
        let again = match &self.installed_bytes {
            Some(bytes) => Some(open(bytes, &self.trusted, None, now, &lists)?),
            None => None,
        };
        self.lists = lists;
        if let Some(b) = again {
            self.installed = Some(b);
        }
        Ok(self.installed.as_ref())
    }
}

/// The device's memory of the last accepted bundle, kept across restarts
/// in a directory of its own (`/var/lib/geowall` for `geowall run`; a path
/// the app gives on phones): the bundle itself (`installed.gwb`) and its
/// sequence number (`sequence`). A bundle not newer than the recorded one
/// is a rollback even after a restart, and the recorded bundle is what a
/// restart falls back to. Files are replaced atomically (written beside,
/// then renamed), so a power cut leaves the old record or the new one.
#[derive(Debug, Clone)]
pub struct TrustStore {
    dir: PathBuf,
}

impl TrustStore {
    /// The store in `dir`, created (mode 0700) if missing.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open_dir(dir: &Path) -> Result<Self, BundleError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| BundleError::Io {
                path: dir.to_owned(),
                message: format!("cannot create the state directory: {e}"),
            })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The recorded sequence number, if a bundle was ever accepted.
    ///
    /// # Errors
    /// The record cannot be read or is not a number (a damaged state
    /// directory is an error, never "no bundle yet": that would allow a
    /// rollback).
    pub fn installed_sequence(&self) -> Result<Option<u64>, BundleError> {
        let p = self.dir.join("sequence");
        match std::fs::read_to_string(&p) {
            Ok(t) => t.trim().parse().map(Some).map_err(|_| BundleError::Io {
                path: p,
                message: "not a sequence number (a damaged state directory)".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BundleError::Io {
                path: p,
                message: e.to_string(),
            }),
        }
    }

    /// The recorded bundle's bytes, if any.
    pub fn last_good(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("installed.gwb")).ok()
    }

    /// Records an accepted bundle and its sequence number.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn record(&self, bytes: &[u8], sequence: u64) -> Result<(), BundleError> {
        let put = |name: &str, data: &[u8]| {
            let path = self.dir.join(name);
            let tmp = self.dir.join(format!(".{name}.new"));
            std::fs::write(&tmp, data)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| BundleError::Io {
                    path,
                    message: e.to_string(),
                })
        };
        // The bundle first: a record whose sequence is newer than its
        // bundle would refuse the bundle it names.
        put("installed.gwb", bytes)?;
        put("sequence", format!("{sequence}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn the_trust_store_remembers_across_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("state");
        let s = TrustStore::open_dir(&d).expect("store");
        assert_eq!(s.installed_sequence().expect("read"), None);
        assert!(s.last_good().is_none());
        s.record(b"bundle-11", 11).expect("record");
        // A new instance (a restart) reads the same.
        let s = TrustStore::open_dir(&d).expect("store");
        assert_eq!(s.installed_sequence().expect("read"), Some(11));
        assert_eq!(s.last_good().as_deref(), Some(b"bundle-11".as_slice()));
        std::fs::write(d.join("sequence"), "eleven").expect("damage");
        assert!(s.installed_sequence().is_err(), "damaged is an error");
    }

    #[test]
    fn a_published_index_names_its_bundle_and_cannot_be_forged_or_replayed() {
        let (a, b) = (key(1), key(2));
        let bundle = signed(7, 2_000, &a);
        let (published, index) = publish_index(&bundle, &a).expect("index");
        assert_eq!(
            (index.sequence, index.expires, index.file.as_str()),
            (7, 2_000, "rules-7.gwb")
        );
        assert_eq!(index.sha256, hex(&sha256(&bundle)));
        assert_eq!(read_index(&published).expect("reads"), index);
        let trusted = [a.verifying_key()];
        assert_eq!(
            open_index(&published, BundleKind::Rules, &trusted, Some(6), 1_000).expect("opens"),
            Some(index.clone())
        );
        // Nothing newer than what runs.
        assert_eq!(
            open_index(&published, BundleKind::Rules, &trusted, Some(7), 1_000).expect("opens"),
            None
        );
        // Expired, another key, a changed index.
        assert!(matches!(
            open_index(&published, BundleKind::Rules, &trusted, None, 2_000),
            Err(BundleError::Expired { .. })
        ));
        assert!(matches!(
            open_index(
                &published,
                BundleKind::Rules,
                &[b.verifying_key()],
                None,
                1_000
            ),
            Err(BundleError::UnknownKey(_))
        ));
        let text = String::from_utf8(published.clone()).expect("utf8");
        let forged = text.replace("\\\"sequence\\\":7", "\\\"sequence\\\":70");
        assert_ne!(forged, text, "the replacement applies");
        assert!(matches!(
            open_index(forged.as_bytes(), BundleKind::Rules, &trusted, None, 1_000),
            Err(BundleError::BadSignature)
        ));
        // The index is signed by the bundle's own key only.
        assert!(publish_index(&bundle, &b).is_err());
        assert!(publish_index(&signed(8, 2_000, &b)[..10], &b).is_err());
    }

    /// Bundles signed by a key B that a trusted key A endorsed, carried in
    /// the bundle, are accepted by devices trusting only A; so is the
    /// index B signs. Without the endorsement, with an expired one, or one
    /// signed by an untrusted key, B is refused.
    #[test]
    fn a_rotation_endorsed_by_the_trusted_key_is_followed() {
        let (a, b, c) = (key(1), key(2), key(3));
        let trusted = [a.verifying_key()];
        let with = |e: Option<&Endorsement>, seq: u64| {
            let dir = rules_dir();
            if let Some(e) = e {
                std::fs::create_dir(dir.path().join("endorsements")).expect("mkdir");
                std::fs::write(
                    dir.path().join("endorsements/b.json"),
                    serde_json::to_vec(e).expect("json"),
                )
                .expect("write");
            }
            sign(
                &build(dir.path(), seq, NOW - 10, NOW + 1_000).expect("builds"),
                &b,
            )
            .expect("signs")
        };
        let good = endorse(&a, &b.verifying_key(), NOW + 500);
        let bundle_b = with(Some(&good), 8);
        let opened = open(&bundle_b, &trusted, Some(7), NOW, InstalledLists::none())
            .expect("B, endorsed by A");
        assert_eq!(opened.key_id, hex(&key_id(&b.verifying_key())));
        let (index, _) = publish_index(&bundle_b, &b).expect("index");
        assert!(
            open_index(&index, BundleKind::Rules, &trusted, Some(7), NOW)
                .expect("opens")
                .is_some()
        );
        // Not endorsed, endorsed by an untrusted key, or past the
        // endorsement's time: B is unknown.
        for (what, e, now) in [
            ("none", None, NOW),
            (
                "by C",
                Some(endorse(&c, &b.verifying_key(), NOW + 500)),
                NOW,
            ),
            ("expired", Some(good.clone()), NOW + 600),
        ] {
            let bb = with(e.as_ref(), 9);
            assert!(
                matches!(
                    open(&bb, &trusted, None, now, InstalledLists::none()),
                    Err(BundleError::UnknownKey(_))
                ),
                "{what}"
            );
            let (ix, _) = publish_index(&bb, &b).expect("index");
            assert!(
                open_index(&ix, BundleKind::Rules, &trusted, None, now).is_err(),
                "{what}: index"
            );
        }
        // An endorsement is for its key only: one for C does not let B in.
        let for_c = endorse(&a, &c.verifying_key(), NOW + 500);
        assert!(
            open(
                &with(Some(&for_c), 10),
                &trusted,
                None,
                NOW,
                InstalledLists::none()
            )
            .is_err()
        );
        // A changed endorsement does not verify.
        let mut forged = good.clone();
        forged.expires += 1;
        assert!(forged.check(&trusted, NOW).is_none());
        assert!(good.check(&trusted, NOW).is_some());
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn rules_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("policy.toml"),
            "name='b'\ndefault='allow'\n[[list]]\nname='l'\nfile='lists/l.txt'\nformat='domains'\n[[rule]]\nname='r'\naction='block'\nlist=['l']\n",
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("lists")).expect("mkdir");
        std::fs::write(dir.path().join("lists/l.txt"), "agora.io\n").expect("write");
        dir
    }

    fn signed(seq: u64, expires: u64, k: &SigningKey) -> Vec<u8> {
        let dir = rules_dir();
        sign(
            &build(dir.path(), seq, NOW - 10, expires).expect("builds"),
            k,
        )
        .expect("signs")
    }

    #[test]
    fn a_good_bundle_opens_and_carries_its_lists_and_catalog() {
        let k = key(1);
        let b = open(
            &signed(5, NOW + 100, &k),
            &[k.verifying_key()],
            Some(4),
            NOW,
            InstalledLists::none(),
        )
        .expect("opens");
        assert_eq!((b.sequence, b.policy.name.as_str()), (5, "b"));
        assert_eq!(b.policy.lists[0].entries, 1);
        assert!(
            b.catalog.vendor("agora").is_some(),
            "the shipped catalog travels with it"
        );
        assert_eq!(b.key_id, hex(&key_id(&k.verifying_key())));
    }

    #[test]
    fn each_kind_of_bad_bundle_has_its_own_error() {
        let k = key(1);
        let trusted = [k.verifying_key()];
        let good = signed(5, NOW + 100, &k);
        // Tampered: any byte of the signed part.
        for at in [20, 60, HEADER + 3, good.len() - 70] {
            let mut t = good.clone();
            t[at] ^= 1;
            assert!(
                matches!(
                    open(&t, &trusted, None, NOW, InstalledLists::none()),
                    Err(BundleError::BadSignature)
                ),
                "byte {at}"
            );
        }
        // Signed by a key nobody trusts.
        let other = signed(5, NOW + 100, &key(2));
        assert!(matches!(
            open(&other, &trusted, None, NOW, InstalledLists::none()),
            Err(BundleError::UnknownKey(_))
        ));
        // Signed by another key but claiming the trusted key's id.
        let mut forged = other.clone();
        forged[40..48].copy_from_slice(&key_id(&k.verifying_key()));
        assert!(matches!(
            open(&forged, &trusted, None, NOW, InstalledLists::none()),
            Err(BundleError::BadSignature)
        ));
        // Not signed at all.
        let unsigned = build(rules_dir().path(), 5, NOW, NOW + 100).expect("builds");
        assert!(matches!(
            open(&unsigned, &trusted, None, NOW, InstalledLists::none()),
            Err(BundleError::MissingSignature)
        ));
        // Rolled back: same or older sequence than installed.
        assert!(matches!(
            open(&good, &trusted, Some(5), NOW, InstalledLists::none()),
            Err(BundleError::Rollback {
                sequence: 5,
                installed: 5
            })
        ));
        assert!(matches!(
            open(&good, &trusted, Some(9), NOW, InstalledLists::none()),
            Err(BundleError::Rollback { .. })
        ));
        // Expired (freeze attack).
        let stale = signed(6, NOW - 1, &k);
        assert!(matches!(
            open(&stale, &trusted, None, NOW, InstalledLists::none()),
            Err(BundleError::Expired { .. })
        ));
        // Truncated anywhere.
        for len in [
            0,
            5,
            40,
            HEADER,
            HEADER + 10,
            good.len() - 1,
            good.len() - 64,
        ] {
            let e = open(&good[..len], &trusted, None, NOW, InstalledLists::none())
                .expect_err("truncated");
            assert!(matches!(e, BundleError::Truncated(_)), "len {len}: {e}");
        }
        // Not a bundle.
        assert!(matches!(
            open(
                b"GEOWALLW and more bytes",
                &trusted,
                None,
                NOW,
                InstalledLists::none()
            ),
            Err(BundleError::BadMagic)
        ));
        // Corrupt content under a valid signature: the hash field is wrong.
        let mut c = build(rules_dir().path(), 7, NOW, NOW + 100).expect("builds");
        c[56] ^= 0xFF;
        let c = sign(&c, &k).expect("signs");
        assert!(matches!(
            open(&c, &trusted, None, NOW, InstalledLists::none()),
            Err(BundleError::Corrupt(_))
        ));
        // A signed policy that does not compile.
        let dir = rules_dir();
        let mut files = BTreeMap::new();
        files.insert(
            "policy.toml".to_owned(),
            b"name='x'\ndefault='maybe'\n".to_vec(),
        );
        let content = archive(&files).expect("archive");
        let mut raw = build(dir.path(), 8, NOW, NOW + 100).expect("builds")[..HEADER].to_vec();
        raw[48..56].copy_from_slice(&(content.len() as u64).to_le_bytes());
        raw[56..88].copy_from_slice(&sha256(&content));
        raw.extend_from_slice(&content);
        raw.push(0);
        let bad_policy = sign(&raw, &k).expect("signs");
        assert!(matches!(
            open(&bad_policy, &trusted, None, NOW, InstalledLists::none()),
            Err(BundleError::InvalidPolicy(_))
        ));
    }

    #[test]
    fn a_rejected_update_keeps_the_installed_rules() {
        let k = key(3);
        let mut inst = Installer::new(vec![k.verifying_key()]);
        inst.install(&signed(10, NOW + 100, &k), NOW)
            .expect("first install");
        let mut tampered = signed(11, NOW + 100, &k);
        let n = tampered.len();
        tampered[n - 100] ^= 1;
        assert!(inst.install(&tampered, NOW).is_err());
        assert!(
            inst.install(&signed(9, NOW + 100, &k), NOW).is_err(),
            "rollback"
        );
        assert_eq!(inst.installed().map(|b| b.sequence), Some(10));
        inst.install(&signed(11, NOW + 100, &k), NOW)
            .expect("a newer good one installs");
        assert_eq!(inst.installed().map(|b| b.sequence), Some(11));
    }

    #[test]
    fn archive_rejects_unsafe_paths() {
        for bad in ["../x", "/etc/passwd", "a//b", ""] {
            let mut files = BTreeMap::new();
            files.insert(bad.to_owned(), vec![1]);
            let c = archive(&files).expect("encodes");
            assert!(unarchive(&c).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = open(&bytes, &[key(1).verifying_key()], None, NOW, InstalledLists::none());
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = open(&framed, &[key(1).verifying_key()], Some(1), NOW, InstalledLists::none());
        }
    }

    fn world_bytes() -> Vec<u8> {
        let mut b = crate::intel::world::WorldBuilder::new();
        let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world.csv");
        b.add_fixture_csv(&csv, &mut |_| {}).expect("fixture");
        b.build(&mut |_| {}).expect("builds").0
    }

    #[test]
    fn world_bundles_verify_like_rules_bundles_and_never_pass_for_them() {
        let db = world_bytes();
        let trusted = [key(1).verifying_key()];
        let signed = |seq: u64, expires: u64| {
            sign(
                &build_world(&db, seq, NOW - 10, expires).expect("build"),
                &key(1),
            )
            .expect("sign")
        };
        let w = open_world(&signed(5, NOW + 60), &trusted, Some(4), NOW).expect("opens");
        assert_eq!(w.sequence, 5);
        assert!(
            !w.world
                .lookup("203.0.113.1".parse().expect("ip"))
                .is_empty()
        );
        // Older, expired, unknown key, tampered.
        assert!(matches!(
            open_world(&signed(5, NOW + 60), &trusted, Some(5), NOW),
            Err(BundleError::Rollback { .. })
        ));
        assert!(matches!(
            open_world(&signed(6, NOW - 1), &trusted, None, NOW),
            Err(BundleError::Expired { .. })
        ));
        assert!(matches!(
            open_world(&signed(6, NOW + 60), &[key(2).verifying_key()], None, NOW),
            Err(BundleError::UnknownKey(_))
        ));
        let mut bad = signed(6, NOW + 60);
        let mid = HEADER + db.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(
            open_world(&bad, &trusted, None, NOW),
            Err(BundleError::BadSignature)
        ));
        // The kind is signed: a world bundle is no rules bundle and back.
        assert!(matches!(
            open(
                &signed(6, NOW + 60),
                &trusted,
                None,
                NOW,
                InstalledLists::none()
            ),
            Err(BundleError::WrongKind {
                found: BundleKind::World,
                wanted: BundleKind::Rules
            })
        ));
        let rules = sign(&frame_content(b"x", 1, NOW - 10, NOW + 60), &key(1)).expect("sign");
        assert!(matches!(
            open_world(&rules, &trusted, None, NOW),
            Err(BundleError::WrongKind { .. })
        ));
        // Not a database: refused when built.
        assert!(matches!(
            build_world(b"not a world", 1, NOW, NOW + 60),
            Err(BundleError::InvalidWorld(_))
        ));
    }
}
