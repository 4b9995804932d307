//! QUIC Initial packets (RFC 9000/9001, v2 RFC 9369 and its drafts, IETF
//! drafts 21-34, mvfst, Google's Q050 and T05x; [`Version`]): derive the
//! client's Initial keys from the Destination Connection ID, remove header
//! protection, decrypt, and reassemble CRYPTO frames across packets into
//! the hello (a TLS ClientHello, or for Q050 Google's CHLO), for its server
//! name and ALPN. The salts are the published constants of each version;
//! the AEAD tag proves the right one was used. Legacy Google QUIC (up to
//! Q046) carries its hello in cleartext: [`gquic_chlo_sni`].
//!
//! Memory: an [`InitialAssembler`] holds at most [`tls::MAX_HELLO`] bytes of
//! CRYPTO data per flow, plus one datagram of scratch.

use ring::aead::{self, quic as hp};
use ring::hkdf;

use super::tls::{self, ClientHello, Hello};

/// QUIC versions geowall can read Initials of: each is a salt, a set of
/// HKDF labels and a numbering of long-header packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// QUIC v1 (RFC 9000), and drafts 33 and 34, which share its salt.
    V1,
    /// QUIC v2 (RFC 9369).
    V2,
    /// QUIC v2 while it was a draft: `0xff020000` (draft 00, version 1's
    /// packet types) and the provisional `0x709a50c4` (v2's types).
    V2Draft {
        /// Whether packet types are numbered as in v2.
        v2_types: bool,
    },
    /// IETF drafts 29 to 32 (still seen in captures).
    Draft29,
    /// IETF drafts 23 to 28, and Facebook's mvfst `0xfaceb002` and
    /// `0xfaceb00e`, which use their salt.
    Draft23,
    /// IETF drafts 21 and 22, and mvfst `0xfaceb001`.
    Draft22,
    /// Google QUIC Q050: IETF packet protection around Google's own
    /// handshake (a CHLO tag/value map).
    Q050,
    /// Google QUIC T050 (TLS handshake).
    T050,
    /// Google QUIC T051 (TLS handshake).
    T051,
}

impl Version {
    /// The versions whose keys could protect an Initial with version
    /// number `v`, in the order to try them. A greased version
    /// (`0x?a?a?a?a`, sent to force negotiation) carries no salt of its
    /// own: clients protect it with the keys of a version they speak, so
    /// v1's and draft 29's are tried, and the AEAD tag says which.
    fn candidates(v: u32) -> &'static [Version] {
        match v {
            0x0000_0001 | 0xFF00_0021 | 0xFF00_0022 => &[Version::V1],
            0x6B33_43CF => &[Version::V2],
            0xFF02_0000 => &[Version::V2Draft { v2_types: false }],
            0x709A_50C4 => &[Version::V2Draft { v2_types: true }],
            0xFF00_001D..=0xFF00_0020 => &[Version::Draft29],
            0xFF00_0017..=0xFF00_001C | 0xFACE_B002 | 0xFACE_B00E => &[Version::Draft23],
            0xFF00_0015 | 0xFF00_0016 | 0xFACE_B001 => &[Version::Draft22],
            0x5130_3530 => &[Version::Q050],
            0x5430_3530 => &[Version::T050],
            0x5430_3531 => &[Version::T051],
            v if v & 0x0F0F_0F0F == 0x0A0A_0A0A => &[Version::V1, Version::Draft29],
            _ => &[],
        }
    }

    /// The one version a version number names, if it names one.
    #[cfg(test)]
    fn from_u32(v: u32) -> Option<Self> {
        match Self::candidates(v) {
            [one] => Some(*one),
            _ => None,
        }
    }

    fn salt(self) -> &'static [u8] {
        match self {
            Version::V1 => &[
                0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8,
                0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
            ],
            Version::V2 => &[
                0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26,
                0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
            ],
            Version::V2Draft { .. } => &[
                0xa7, 0x07, 0xc2, 0x03, 0xa5, 0x9b, 0x47, 0x18, 0x4a, 0x1d, 0x62, 0xca, 0x57, 0x04,
                0x06, 0xea, 0x7a, 0xe3, 0xe5, 0xd3,
            ],
            Version::Draft29 => &[
                0xaf, 0xbf, 0xec, 0x28, 0x99, 0x93, 0xd2, 0x4c, 0x9e, 0x97, 0x86, 0xf1, 0x9c, 0x61,
                0x11, 0xe0, 0x43, 0x90, 0xa8, 0x99,
            ],
            Version::Draft23 => &[
                0xc3, 0xee, 0xf7, 0x12, 0xc7, 0x2e, 0xbb, 0x5a, 0x11, 0xa7, 0xd2, 0x43, 0x2b, 0xb4,
                0x63, 0x65, 0xbe, 0xf9, 0xf5, 0x02,
            ],
            Version::Draft22 => &[
                0x7f, 0xbc, 0xdb, 0x0e, 0x7c, 0x66, 0xbb, 0xe9, 0x19, 0x3a, 0x96, 0xcd, 0x21, 0x51,
                0x9e, 0xbd, 0x7a, 0x02, 0x64, 0x4a,
            ],
            Version::Q050 => &[
                0x50, 0x45, 0x74, 0xef, 0xd0, 0x66, 0xfe, 0x2f, 0x9d, 0x94, 0x5c, 0xfc, 0xdb, 0xd3,
                0xa7, 0xf0, 0xd3, 0xb5, 0x6b, 0x45,
            ],
            Version::T050 => &[
                0x7f, 0xf5, 0x79, 0xe5, 0xac, 0xd0, 0x72, 0x91, 0x55, 0x80, 0x30, 0x4c, 0x43, 0xa2,
                0x36, 0x7c, 0x60, 0x48, 0x83, 0x10,
            ],
            Version::T051 => &[
                0x7a, 0x4e, 0xde, 0xf4, 0xe7, 0xcc, 0xee, 0x5f, 0xa4, 0x50, 0x6c, 0x19, 0x12, 0x4f,
                0xc8, 0xcc, 0xda, 0x6e, 0x03, 0x3d,
            ],
        }
    }

    /// Whether long-header packet types are numbered as in v2.
    fn v2_types(self) -> bool {
        matches!(self, Version::V2 | Version::V2Draft { v2_types: true })
    }

    /// The CRYPTO frame's type: Google's versions number it 0x08 (IETF's
    /// STREAM).
    fn crypto_frame(self) -> u8 {
        if matches!(self, Version::Q050 | Version::T050 | Version::T051) {
            0x08
        } else {
            0x06
        }
    }

    /// The long-header packet type bits of an Initial.
    fn initial_type(self) -> u8 {
        if self.v2_types() { 1 } else { 0 }
    }

    fn labels(self) -> (&'static [u8], &'static [u8], &'static [u8]) {
        if matches!(self, Version::V2 | Version::V2Draft { .. }) {
            (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")
        } else {
            (b"quic key", b"quic iv", b"quic hp")
        }
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 section 7.1) with an empty context.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Option<()> {
    let len = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

/// The client's Initial packet protection keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialKeys {
    /// AEAD key.
    pub key: [u8; 16],
    /// AEAD IV.
    pub iv: [u8; 12],
    /// Header protection key.
    pub hp: [u8; 16],
}

/// Derives the client Initial keys for a Destination Connection ID.
pub fn client_initial_keys(version: Version, dcid: &[u8]) -> Option<InitialKeys> {
    let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, version.salt()).extract(dcid);
    let mut client = [0u8; 32];
    expand_label(&initial, b"client in", &mut client)?;
    let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &client);
    let (lk, li, lh) = version.labels();
    let mut k = InitialKeys {
        key: [0; 16],
        iv: [0; 12],
        hp: [0; 16],
    };
    expand_label(&client, lk, &mut k.key)?;
    expand_label(&client, li, &mut k.iv)?;
    expand_label(&client, lh, &mut k.hp)?;
    Some(k)
}

/// A QUIC variable-length integer at `at`: (value, bytes used).
fn varint(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let n = 1usize << (first >> 6);
    let bytes = b.get(at..at + n)?;
    let mut v = u64::from(first & 0x3F);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, n))
}

/// Appends `x` (below 2^30) as a QUIC variable-length integer.
fn put_varint(out: &mut Vec<u8>, x: u64) {
    match x {
        0..=63 => out.push(x as u8),
        64..=16_383 => out.extend_from_slice(&(0x4000 | x as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(0x8000_0000 | (x as u32 & 0x3FFF_FFFF)).to_be_bytes()),
    }
}

/// The client Initials that open a QUIC connection, as a client sends
/// them: a TLS ClientHello naming `sni` ([`tls::client_hello_records`]'s)
/// in CRYPTO frames cut over `packets` datagrams (1 to 8), each padded to
/// 1,200 bytes and protected (RFC 9001 section 5) with the keys of version
/// number `version` and the Destination Connection ID `dcid`. `None` for a
/// version whose Initials geowall does not read, for Q050 (its hello is
/// not TLS), or a `dcid` over 20 bytes. For tests and benchmarks.
pub fn client_initials(
    version: u32,
    dcid: &[u8],
    sni: &str,
    packets: usize,
) -> Option<Vec<Vec<u8>>> {
    client_initials_padded(version, dcid, sni, 0, packets)
}

/// [`client_initials`] with a padding extension of `pad` bytes after the
/// server name ([`tls::client_hello_records`]), for a hello as long as a
/// browser's with post-quantum key shares, whose first Initial holds the
/// name and the rest follow.
pub fn client_initials_padded(
    version: u32,
    dcid: &[u8],
    sni: &str,
    pad: usize,
    packets: usize,
) -> Option<Vec<Vec<u8>>> {
    let v = *Version::candidates(version).first()?;
    if v == Version::Q050 || dcid.len() > 20 {
        return None;
    }
    let keys = client_initial_keys(v, dcid)?;
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &keys.key).ok()?);
    let hpk = hp::HeaderProtectionKey::new(&hp::AES_128, &keys.hp).ok()?;
    // The handshake message, out of its records.
    let records = tls::client_hello_records(sni, pad);
    let mut hello = Vec::new();
    let mut at = 0;
    while let Some(h) = records.get(at..at + 5) {
        let n = usize::from(u16::from_be_bytes([h[3], h[4]]));
        hello.extend_from_slice(records.get(at + 5..at + 5 + n)?);
        at += 5 + n;
    }
    let per = hello.len().div_ceil(packets.clamp(1, 8));
    let mut out = Vec::new();
    for (i, chunk) in hello.chunks(per).enumerate() {
        let mut payload = vec![v.crypto_frame()];
        put_varint(&mut payload, (i * per) as u64);
        put_varint(&mut payload, chunk.len() as u64);
        payload.extend_from_slice(chunk);
        // Long header: Initial, 4-byte packet number; an 8-byte source
        // connection ID; no token.
        let mut packet = vec![0xC3 | (v.initial_type() << 4)];
        packet.extend_from_slice(&version.to_be_bytes());
        packet.push(dcid.len() as u8);
        packet.extend_from_slice(dcid);
        packet.push(8);
        packet.extend_from_slice(&[0x5C; 8]);
        packet.push(0);
        let fixed = packet.len() + 2 + 4 + 16;
        if fixed + payload.len() < 1200 {
            // PADDING frames.
            payload.resize(1200 - fixed, 0);
        }
        put_varint(&mut packet, (4 + payload.len() + 16) as u64);
        let pn_offset = packet.len();
        let pn = i as u64;
        packet.extend_from_slice(&(pn as u32).to_be_bytes());
        let mut nonce = keys.iv;
        for (j, b) in pn.to_be_bytes().iter().enumerate() {
            nonce[4 + j] ^= b;
        }
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&packet[..]),
            &mut payload,
        )
        .ok()?;
        // Header protection: the sample is the ciphertext's first 16
        // bytes (4 bytes after the packet number's start).
        let mask = hpk.new_mask(payload.get(..16)?).ok()?;
        packet[0] ^= mask[0] & 0x0F;
        for j in 0..4 {
            packet[pn_offset + j] ^= mask[1 + j];
        }
        packet.extend_from_slice(&payload);
        out.push(packet);
    }
    Some(out)
}

/// The Destination Connection ID of the client Initial at the start of
/// `dgram`, when it is the Initial of a version geowall reads (what
/// [`decrypt_initial`] would try; the keys are not checked).
pub fn initial_dcid(dgram: &[u8]) -> Option<&[u8]> {
    let first = *dgram.first()?;
    if first & 0xC0 != 0xC0 {
        return None;
    }
    let number = u32::from_be_bytes(dgram.get(1..5)?.try_into().ok()?);
    if !Version::candidates(number)
        .iter()
        .any(|v| (first >> 4) & 0x03 == v.initial_type())
    {
        return None;
    }
    let dcid_len = usize::from(*dgram.get(5)?);
    if dcid_len > 20 {
        return None;
    }
    dgram.get(6..6 + dcid_len)
}

/// Decrypts the client Initial at the start of `dgram` into `plain`
/// (cleared first); returns the version whose keys opened it, or `None`
/// if this is not a client Initial geowall can read.
pub fn decrypt_initial(dgram: &[u8], plain: &mut Vec<u8>) -> Option<Version> {
    let first = *dgram.first()?;
    if first & 0xC0 != 0xC0 {
        return None;
    }
    let number = u32::from_be_bytes(dgram.get(1..5)?.try_into().ok()?);
    let dcid_len = usize::from(*dgram.get(5)?);
    if dcid_len > 20 {
        return None;
    }
    let dcid = dgram.get(6..6 + dcid_len)?;
    let mut at = 6 + dcid_len;
    let scid_len = usize::from(*dgram.get(at)?);
    at += 1 + scid_len;
    let (token_len, n) = varint(dgram, at)?;
    at += n + usize::try_from(token_len).ok()?;
    let (length, n) = varint(dgram, at)?;
    at += n;
    let pn_offset = at;
    let end = pn_offset.checked_add(usize::try_from(length).ok()?)?;
    let packet = dgram.get(..end)?;
    Version::candidates(number)
        .iter()
        .filter(|v| (first >> 4) & 0x03 == v.initial_type())
        .find(|v| open_initial(**v, packet, dcid, pn_offset, plain).is_some())
        .copied()
}

/// Removes header protection from and decrypts one client Initial
/// (`packet`, its packet number at `pn_offset`) with `version`'s keys.
fn open_initial(
    version: Version,
    packet: &[u8],
    dcid: &[u8],
    pn_offset: usize,
    plain: &mut Vec<u8>,
) -> Option<()> {
    let keys = client_initial_keys(version, dcid)?;
    // Header protection: the sample starts 4 bytes after the packet number.
    let sample = packet.get(pn_offset + 4..pn_offset + 20)?;
    let hpk = hp::HeaderProtectionKey::new(&hp::AES_128, &keys.hp).ok()?;
    let mask = hpk.new_mask(sample).ok()?;
    let first = packet[0] ^ (mask[0] & 0x0F);
    let pn_len = usize::from(first & 0x03) + 1;
    let hlen = pn_offset + pn_len;
    // The header (with its token) is the AAD: assemble it in `plain`.
    plain.clear();
    plain.extend_from_slice(packet.get(..hlen)?);
    plain[0] = first;
    let mut pn = 0u64;
    for i in 0..pn_len {
        let b = plain[pn_offset + i] ^ mask[1 + i];
        plain[pn_offset + i] = b;
        pn = (pn << 8) | u64::from(b);
    }
    let mut nonce = keys.iv;
    for (i, b) in pn.to_be_bytes().iter().enumerate() {
        nonce[4 + i] ^= b;
    }
    let aad_len = plain.len();
    plain.extend_from_slice(packet.get(hlen..)?);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &keys.key).ok()?);
    let (aad, body) = plain.split_at_mut(aad_len);
    let clear_len = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&*aad),
            body,
        )
        .ok()?
        .len();
    // Keep only the plaintext, at the start of `plain`.
    plain.copy_within(aad_len..aad_len + clear_len, 0);
    plain.truncate(clear_len);
    Some(())
}

/// Collects CRYPTO frames from a flow's client Initials until the
/// ClientHello is whole. Bounded by [`tls::MAX_HELLO`].
#[derive(Debug, Default)]
pub struct InitialAssembler {
    data: Vec<u8>,
    /// Sorted, disjoint byte ranges of `data` that were received.
    have: Vec<(usize, usize)>,
    plain: Vec<u8>,
    /// The QUIC version seen.
    pub version: Option<Version>,
}

impl InitialAssembler {
    /// A new, empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, off: usize, bytes: &[u8]) -> Option<()> {
        let end = off.checked_add(bytes.len())?;
        if end > tls::MAX_HELLO {
            return None;
        }
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[off..end].copy_from_slice(bytes);
        self.have.push((off, end));
        self.have.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.have.len());
        for &(s, e) in &self.have {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.have = merged;
        Some(())
    }

    /// Bytes received contiguously from offset 0.
    fn prefix(&self) -> usize {
        match self.have.first() {
            Some(&(0, e)) => e,
            _ => 0,
        }
    }

    /// Feeds one UDP datagram from the client. Returns `Some(true)` once
    /// the hello is complete (read it with [`InitialAssembler::sni`] or,
    /// for a TLS handshake, [`InitialAssembler::client_hello`]),
    /// `Some(false)` when more is needed, `None` when the datagram is not
    /// a readable client Initial.
    pub fn feed(&mut self, dgram: &[u8]) -> Option<bool> {
        let mut plain = std::mem::take(&mut self.plain);
        let v = decrypt_initial(dgram, &mut plain);
        let r = v.and_then(|v| {
            self.version = Some(v);
            self.frames(&plain, v)
        });
        self.plain = plain;
        r?;
        let hello = &self.data[..self.prefix()];
        Some(if self.version == Some(Version::Q050) {
            gquic_chlo(hello).is_some()
        } else {
            matches!(tls::client_hello_message(hello), Hello::Found(_))
        })
    }

    /// The server name the hello asks for: the TLS ClientHello's SNI, or
    /// for Q050 the `SNI` tag of Google's CHLO.
    pub fn sni(&self) -> Option<&str> {
        let hello = &self.data[..self.prefix()];
        if self.version == Some(Version::Q050) {
            gquic_chlo(hello).flatten()
        } else {
            self.client_hello().and_then(|h| h.sni)
        }
    }

    /// The server name of a TLS ClientHello not whole yet, when the
    /// CRYPTO bytes received from offset 0 already hold its
    /// `server_name` extension ([`tls::partial_message_sni`]).
    pub fn partial_sni(&self) -> Option<&str> {
        if self.version == Some(Version::Q050) {
            return None;
        }
        tls::partial_message_sni(&self.data[..self.prefix()])
    }

    fn frames(&mut self, p: &[u8], version: Version) -> Option<()> {
        let crypto = u64::from(version.crypto_frame());
        let mut at = 0;
        while at < p.len() {
            let (kind, n) = varint(p, at)?;
            at += n;
            match kind {
                0x00 | 0x01 => {}
                0x02 | 0x03 => {
                    // ACK: largest, delay, range count, first range, ranges.
                    let mut fields = 4;
                    let (_, n) = varint(p, at)?;
                    at += n;
                    let (_, n) = varint(p, at)?;
                    at += n;
                    let (count, n) = varint(p, at)?;
                    at += n;
                    fields += usize::try_from(count).ok()?.checked_mul(2)?;
                    for _ in 3..fields {
                        let (_, n) = varint(p, at)?;
                        at += n;
                    }
                    if kind == 0x03 {
                        for _ in 0..3 {
                            let (_, n) = varint(p, at)?;
                            at += n;
                        }
                    }
                }
                k if k == crypto => {
                    let (off, n) = varint(p, at)?;
                    at += n;
                    let (len, n) = varint(p, at)?;
                    at += n;
                    let len = usize::try_from(len).ok()?;
                    let data = p.get(at..at.checked_add(len)?)?;
                    self.add(usize::try_from(off).ok()?, data)?;
                    at += len;
                }
                0x1C => return Some(()),
                // Nothing else may appear in a client Initial before the
                // hello is sent; stop reading this packet.
                _ => return Some(()),
            }
        }
        Some(())
    }

    /// The TLS ClientHello, once complete (none for Q050's CHLO).
    pub fn client_hello(&self) -> Option<ClientHello<'_>> {
        match tls::client_hello_message(&self.data[..self.prefix()]) {
            Hello::Found(h) => Some(h),
            _ => None,
        }
    }
}

/// Google QUIC (gQUIC, versions up to Q046): the client's CHLO handshake
/// message travels in cleartext near the start of the first packet as a
/// tag/value map; its `SNI\0` tag holds the server name. Looks for `CHLO`
/// in the first 64 bytes, then requires a well-formed map (tags
/// increasing, end offsets increasing and in bounds). Returns `None` if
/// there is no such CHLO, `Some(None)` for a CHLO without a valid SNI.
pub fn gquic_chlo(payload: &[u8]) -> Option<Option<&str>> {
    let head = payload.get(..payload.len().min(64 + 4))?;
    let at = head.windows(4).position(|w| w == b"CHLO")?;
    let m = payload.get(at..)?;
    let n = usize::from(u16::from_le_bytes(m.get(4..6)?.try_into().ok()?));
    if n == 0 || n > 128 {
        return None;
    }
    let index = m.get(8..8 + n * 8)?;
    let values = m.get(8 + n * 8..)?;
    let (mut prev_tag, mut prev_end) = (None::<u32>, 0usize);
    let mut sni = None;
    for e in index.chunks_exact(8) {
        let tag = u32::from_le_bytes(e[..4].try_into().ok()?);
        let end = usize::try_from(u32::from_le_bytes(e[4..].try_into().ok()?)).ok()?;
        if prev_tag.is_some_and(|p| p >= tag) || end < prev_end || end > values.len() {
            return None;
        }
        if &e[..4] == b"SNI\0" {
            sni = Some(&values[prev_end..end]);
        }
        prev_tag = Some(tag);
        prev_end = end;
    }
    Some(
        sni.filter(|h| tls::is_host_name(h))
            .and_then(|h| std::str::from_utf8(h).ok()),
    )
}

/// A QUIC generation, told by the version field of a long header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Version Negotiation (version 0).
    VersionNegotiation,
    /// IETF QUIC version 1 (RFC 9000).
    V1,
    /// IETF QUIC version 2 (RFC 9369).
    V2,
    /// QUIC v2 as a draft: `0xff020000` (draft 00, version 1's packet
    /// types) and the provisional `0x709a50c4` (v2's).
    V2Draft {
        /// Whether packet types are numbered as in v2.
        v2_types: bool,
    },
    /// An IETF draft (`0xff0000NN`, NN the draft number).
    Draft(u8),
    /// Google QUIC (`Q0NN`, e.g. Q043, Q046, Q050).
    Google(u16),
    /// Google QUIC over TLS (`T0NN`, e.g. T050, T051).
    GoogleTls(u16),
    /// Facebook's mvfst (`0xfaceb0NN`).
    Mvfst(u8),
    /// A reserved version that forces negotiation (`0x?a?a?a?a`, RFC 9000
    /// section 15).
    Grease,
}

/// The generation a version number names, if QUIC knows it.
pub fn generation(version: u32) -> Option<Generation> {
    let b = version.to_be_bytes();
    match version {
        0 => Some(Generation::VersionNegotiation),
        1 => Some(Generation::V1),
        0x6B33_43CF => Some(Generation::V2),
        0xFF02_0000 => Some(Generation::V2Draft { v2_types: false }),
        0x709A_50C4 => Some(Generation::V2Draft { v2_types: true }),
        v if v & 0xFFFF_FF00 == 0xFF00_0000 => Some(Generation::Draft(b[3])),
        v if v & 0xFFFF_FF00 == 0xFACE_B000 => Some(Generation::Mvfst(b[3])),
        v if v & 0x0F0F_0F0F == 0x0A0A_0A0A => Some(Generation::Grease),
        _ if (b[0] == b'Q' || b[0] == b'T') && b[1..].iter().all(u8::is_ascii_digit) => {
            let n =
                u16::from(b[1] - b'0') * 100 + u16::from(b[2] - b'0') * 10 + u16::from(b[3] - b'0');
            Some(if b[0] == b'Q' {
                Generation::Google(n)
            } else {
                Generation::GoogleTls(n)
            })
        }
        _ => None,
    }
}

/// The QUIC generation of a datagram that starts with a QUIC long header
/// (any packet type, either direction), read strictly enough that no RTP,
/// STUN or DTLS packet passes: a known version; for Version Negotiation,
/// connection ids of at most 20 bytes and a whole list of known versions;
/// otherwise the fixed bit, connection ids of at most 20 bytes and, for
/// Initial, 0-RTT and Handshake packets, a length that fits the datagram.
/// Google QUIC's older public header (Q043 and before: flags, an 8-byte
/// connection id, then the version) is recognised too.
pub fn long_header(p: &[u8]) -> Option<Generation> {
    let first = *p.first()?;
    if first & 0x80 == 0 {
        // gQUIC public header: version flag (0x01), 8-byte id (0x08), no
        // reserved bit (0x80), then "Q0NN".
        if first & 0x89 == 0x09 {
            let v = u32::from_be_bytes(p.get(9..13)?.try_into().ok()?);
            return generation(v).filter(|g| matches!(g, Generation::Google(_)));
        }
        return None;
    }
    let version = u32::from_be_bytes(p.get(1..5)?.try_into().ok()?);
    let g = generation(version)?;
    if matches!(g, Generation::Google(_) | Generation::GoogleTls(_)) {
        // Q046 packs both connection id lengths in one byte; Q050 and T05x
        // follow the invariants. Either way, the fixed bit.
        return (first & 0x40 != 0).then_some(g);
    }
    let dcid_len = usize::from(*p.get(5)?);
    let scid_at = 6 + dcid_len;
    let scid_len = usize::from(*p.get(scid_at)?);
    let rest = scid_at + 1 + scid_len;
    if dcid_len > 20 || scid_len > 20 || rest > p.len() {
        return None;
    }
    if g == Generation::VersionNegotiation {
        let list = &p[rest..];
        let whole = !list.is_empty() && list.len().is_multiple_of(4);
        return (whole
            && list.chunks_exact(4).all(|c| {
                generation(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .is_some_and(|g| g != Generation::VersionNegotiation)
            }))
        .then_some(g);
    }
    if first & 0x40 == 0 {
        return None;
    }
    // The packet type (v2 numbers them differently; Retry is the one
    // without a length either way).
    let kind = (first >> 4) & 0x03;
    let v2_types = matches!(g, Generation::V2 | Generation::V2Draft { v2_types: true });
    let retry = if v2_types { kind == 0 } else { kind == 3 };
    if retry {
        return Some(g);
    }
    let initial = if v2_types { kind == 1 } else { kind == 0 };
    let mut at = rest;
    if initial {
        let (token, n) = varint(p, at)?;
        at = at
            .checked_add(n)?
            .checked_add(usize::try_from(token).ok()?)?;
    }
    let (len, n) = varint(p, at)?;
    let len = usize::try_from(len).ok()?;
    // A packet number and an AEAD tag at least; within the datagram.
    (len >= 17 && at + n + len <= p.len()).then_some(g)
}

/// The server name of a gQUIC CHLO, if it has one.
pub fn gquic_chlo_sni(payload: &[u8]) -> Option<&str> {
    gquic_chlo(payload).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bytes::hex;

    /// A long-header packet built per RFC 9000 section 17.2 (and the
    /// drafts, mvfst and Q050, which share its invariants): `first` byte,
    /// version, 8-byte connection ids, for Initial an empty token, then a
    /// length and that many bytes.
    fn long(first: u8, version: u32, initial: bool, body: usize) -> Vec<u8> {
        let mut p = vec![first];
        p.extend_from_slice(&version.to_be_bytes());
        p.push(8);
        p.extend_from_slice(&[0x11; 8]);
        p.push(8);
        p.extend_from_slice(&[0x22; 8]);
        if initial {
            p.push(0);
        }
        p.extend_from_slice(&(0x4000u16 | body as u16).to_be_bytes());
        p.extend(std::iter::repeat_n(0x5a, body));
        p
    }

    #[test]
    fn every_quic_generation_is_told_by_its_long_header() {
        let cases = [
            (long(0xc0, 1, true, 1200), Generation::V1),
            (long(0xd0, 0x6B33_43CF, true, 1200), Generation::V2),
            (long(0xd0, 0xFF00_001C, false, 200), Generation::Draft(28)),
            (long(0xe0, 0xFF00_0022, false, 60), Generation::Draft(34)),
            (long(0xc0, 0xFF00_0017, true, 1200), Generation::Draft(23)),
            (long(0xc0, 0xFACE_B002, true, 1200), Generation::Mvfst(2)),
            (
                long(0xc0, u32::from_be_bytes(*b"Q050"), true, 1200),
                Generation::Google(50),
            ),
            (
                long(0xc0, u32::from_be_bytes(*b"T051"), true, 1200),
                Generation::GoogleTls(51),
            ),
            (
                long(0xc3, u32::from_be_bytes(*b"Q046"), false, 40),
                Generation::Google(46),
            ),
            (long(0xc0, 0x1A2A_3A4A, true, 1200), Generation::Grease),
        ];
        for (p, g) in cases {
            assert_eq!(long_header(&p), Some(g), "{g:?}");
        }
        // Version Negotiation: ids, then whole supported versions.
        let mut vn = vec![0x80 | 0x2b, 0, 0, 0, 0, 8];
        vn.extend_from_slice(&[0x22; 8]);
        vn.push(8);
        vn.extend_from_slice(&[0x11; 8]);
        for v in [1u32, 0x6B33_43CF, 0xFF00_001D] {
            vn.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(long_header(&vn), Some(Generation::VersionNegotiation));
        vn.push(0);
        assert_eq!(long_header(&vn), None, "a torn version list");
        // gQUIC's older public header: flags, 8-byte id, "Q043".
        let mut q43 = vec![0x0d];
        q43.extend_from_slice(&[0x33; 8]);
        q43.extend_from_slice(b"Q043");
        q43.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(long_header(&q43), Some(Generation::Google(43)));
        // Not QUIC: an unknown version, a length past the datagram, no
        // fixed bit, RTP.
        assert_eq!(long_header(&long(0xc0, 0x1234_5678, true, 1200)), None);
        let mut cut = long(0xe0, 1, false, 60);
        cut.truncate(40);
        assert_eq!(long_header(&cut), None);
        assert_eq!(long_header(&long(0x80, 1, true, 1200)), None);
        for seq in [0u16, 1, 7, 0x1234] {
            assert_eq!(long_header(&crate::wire::rtc::rtp_packet(seq)), None);
        }
        // RTP with a zero sequence and timestamp 1 (its version field
        // reads as QUIC v1 or Version Negotiation): no fixed bit, no list.
        let mut rtp = vec![0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01];
        rtp.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        rtp.extend_from_slice(&[0xd5; 160]);
        assert_eq!(long_header(&rtp), None);
    }

    #[test]
    fn every_version_number_finds_the_keys_of_its_generation() {
        assert_eq!(Version::from_u32(0xFF00_0022), Some(Version::V1));
        assert_eq!(Version::from_u32(0xFF00_0021), Some(Version::V1));
        assert_eq!(Version::from_u32(0xFF00_0020), Some(Version::Draft29));
        assert_eq!(Version::from_u32(0xFF00_001D), Some(Version::Draft29));
        for d in 23..=28 {
            assert_eq!(Version::from_u32(0xFF00_0000 | d), Some(Version::Draft23));
        }
        assert_eq!(Version::from_u32(0xFF00_0016), Some(Version::Draft22));
        assert_eq!(Version::from_u32(0xFACE_B001), Some(Version::Draft22));
        assert_eq!(Version::from_u32(0xFACE_B002), Some(Version::Draft23));
        assert_eq!(Version::from_u32(0xFACE_B00E), Some(Version::Draft23));
        assert_eq!(
            Version::from_u32(0xFF02_0000),
            Some(Version::V2Draft { v2_types: false })
        );
        assert_eq!(
            Version::from_u32(0x709A_50C4),
            Some(Version::V2Draft { v2_types: true })
        );
        assert_eq!(
            Version::from_u32(u32::from_be_bytes(*b"Q050")),
            Some(Version::Q050)
        );
        assert_eq!(
            Version::from_u32(u32::from_be_bytes(*b"T050")),
            Some(Version::T050)
        );
        assert_eq!(
            Version::from_u32(u32::from_be_bytes(*b"T051")),
            Some(Version::T051)
        );
        // A greased version: whichever keys open it.
        assert_eq!(
            Version::candidates(0x3A4A_5A6A),
            &[Version::V1, Version::Draft29]
        );
        assert_eq!(Version::from_u32(u32::from_be_bytes(*b"Q046")), None);
        assert_eq!(Version::from_u32(0xFF00_0014), None);
    }

    /// Initials built for every TLS generation, in one packet or cut over
    /// three, are read back whole, with their name; their DCID is told.
    #[test]
    fn built_initials_are_read_back_with_their_name() {
        let versions = [
            0x0000_0001,
            0x6B33_43CF,
            0xFF02_0000,
            0x709A_50C4,
            0xFF00_001D,
            0xFF00_0017,
            0xFF00_0016,
            0xFACE_B001,
            0xFACE_B002,
            0xFACE_B00E,
            u32::from_be_bytes(*b"T050"),
            u32::from_be_bytes(*b"T051"),
            0x1A2A_3A4A,
        ];
        for v in versions {
            for packets in [1, 3] {
                let dcid = [0xD1, 0xC1, 0xD0, packets as u8];
                let p = client_initials(v, &dcid, "later.example.net", packets).expect("built");
                assert_eq!(p.len(), packets, "{v:#x}");
                let mut a = InitialAssembler::new();
                for (i, d) in p.iter().enumerate() {
                    assert!(d.len() >= 1200);
                    assert_eq!(initial_dcid(d), Some(&dcid[..]), "{v:#x}");
                    let whole = a.feed(d);
                    assert_eq!(whole, Some(i + 1 == packets), "{v:#x} packet {i}");
                }
                assert_eq!(a.sni(), Some("later.example.net"), "{v:#x}");
            }
        }
        assert!(client_initials(u32::from_be_bytes(*b"Q050"), &[1; 8], "a", 1).is_none());
        assert!(client_initials(0xFF00_0014, &[1; 8], "a", 1).is_none());
        assert!(client_initials(1, &[1; 21], "a", 1).is_none());
        // A short header, a Handshake packet and an unknown version have
        // no Initial DCID.
        let p = &client_initials(1, &[1; 8], "a", 1).expect("built")[0];
        let mut short = p.clone();
        short[0] = 0x43;
        let mut handshake = p.clone();
        handshake[0] = 0xE3;
        let mut unknown = p.clone();
        unknown[1..5].copy_from_slice(&0xFF00_0014u32.to_be_bytes());
        for d in [short, handshake, unknown] {
            assert_eq!(initial_dcid(&d), None);
        }
    }

    #[test]
    fn rfc9001_appendix_a_client_keys() {
        let k = client_initial_keys(Version::V1, &hex("8394c8f03e515708")).expect("keys");
        assert_eq!(k.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(k.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(k.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
    }

    #[test]
    fn rfc9369_appendix_a_client_keys() {
        let k = client_initial_keys(Version::V2, &hex("8394c8f03e515708")).expect("keys");
        assert_eq!(k.key.to_vec(), hex("8b1a0bc121284290a29e0971b5cd045d"));
        assert_eq!(k.iv.to_vec(), hex("91f73e2351d8fa91660e909f"));
        assert_eq!(k.hp.to_vec(), hex("45b95e15235d6f45a6b19cbcb0294ba9"));
    }

    #[test]
    fn gquic_chlo() {
        // Public header (flags 0x0d, 8-byte CID, version Q043, packet
        // number), a 12-byte hash, a STREAM frame header, then the CHLO.
        let mut p = vec![0x0d, 1, 2, 3, 4, 5, 6, 7, 8];
        p.extend_from_slice(b"Q043");
        p.push(1);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&[0xA0, 0x01, 0x00, 0x00]);
        p.extend_from_slice(b"CHLO");
        p.extend_from_slice(&[2, 0, 0, 0]);
        let host = b"www.youtube.com";
        p.extend_from_slice(b"PAD\0");
        p.extend_from_slice(&4u32.to_le_bytes());
        p.extend_from_slice(b"SNI\0");
        p.extend_from_slice(&((4 + host.len()) as u32).to_le_bytes());
        p.extend_from_slice(b"----");
        p.extend_from_slice(host);
        assert_eq!(gquic_chlo_sni(&p), Some("www.youtube.com"));
        // Tags out of order, or an offset past the end, are refused.
        let mut bad = p.clone();
        let i = bad.windows(4).position(|w| w == b"PAD\0").expect("tag");
        bad[i..i + 4].copy_from_slice(b"ZZZ\0");
        assert_eq!(gquic_chlo_sni(&bad), None);
        let mut short = p.clone();
        short.truncate(short.len() - 3);
        assert_eq!(gquic_chlo_sni(&short), None);
    }

    #[test]
    fn varints() {
        assert_eq!(varint(&hex("25"), 0), Some((37, 1)));
        assert_eq!(varint(&hex("7bbd"), 0), Some((15_293, 2)));
        assert_eq!(varint(&hex("9d7f3e7d"), 0), Some((494_878_333, 4)));
        assert_eq!(
            varint(&hex("c2197c5eff14e88c"), 0),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(varint(&hex("c2"), 0), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut a = InitialAssembler::new();
            let _ = a.feed(&b);
            let mut v1 = vec![0xC3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0];
            v1.extend_from_slice(&b);
            let _ = a.feed(&v1);
            let _ = a.client_hello();
            let _ = long_header(&b);
            let _ = long_header(&v1);
            let mut c = b"CHLO".to_vec();
            c.extend_from_slice(&b);
            let _ = gquic_chlo_sni(&c);
        }
    }
}
