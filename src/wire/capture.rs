//! Reading packet captures: classic pcap (both byte orders, micro- and
//! nanosecond timestamps) and pcapng (section, interface, enhanced and
//! simple packet blocks). Zero-copy: frames borrow the capture's bytes.
//!
//! A damaged capture yields an error for the damaged part, with its byte
//! offset, and stops; frames read before it are not lost.

/// Link-layer types (the pcap LINKTYPE values geowall understands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// BSD loopback / null (4-byte address family).
    Null,
    /// Ethernet II, with 802.1Q/802.1ad VLAN tags.
    Ethernet,
    /// Raw IPv4 or IPv6.
    Raw,
    /// Linux cooked capture v1.
    LinuxSll,
    /// Linux cooked capture v2.
    LinuxSll2,
    /// OpenBSD loopback (like null, network byte order).
    Loop,
    /// PPP (LINKTYPE_PPP 9, PPP_HDLC 50), also Cisco HDLC framing as
    /// some systems record it under 9.
    Ppp,
    /// Cisco HDLC (LINKTYPE_C_HDLC 104): address, control, EtherType.
    CiscoHdlc,
    /// IEEE 802.11 frames (LINKTYPE_IEEE802_11 105), as a Wi-Fi card in
    /// monitor mode records them.
    Ieee80211,
    /// IEEE 802.11 frames after a radiotap header
    /// (LINKTYPE_IEEE802_11_RADIOTAP 127).
    Radiotap,
    /// Linux netfilter's log (LINKTYPE_NFLOG 239: `tcpdump -i nflog:N`, or
    /// packets an `NFLOG` firewall rule sent to userspace).
    Nflog,
    /// Anything else (the frame is counted and skipped).
    Other(u32),
}

impl LinkType {
    /// From a pcap LINKTYPE number.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            12 | 101 | 228 | 229 => LinkType::Raw,
            9 | 50 => LinkType::Ppp,
            104 => LinkType::CiscoHdlc,
            105 => LinkType::Ieee80211,
            127 => LinkType::Radiotap,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            239 => LinkType::Nflog,
            other => LinkType::Other(other),
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_nanos: u64,
    /// The frame's link layer.
    pub link: LinkType,
    /// The captured bytes (possibly shorter than on the wire).
    pub data: &'a [u8],
    /// The length on the wire.
    pub orig_len: u32,
}

/// Why a capture could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// Neither pcap nor pcapng.
    #[error("not a pcap or pcapng capture (unknown magic number)")]
    UnknownFormat,
    /// The file ends inside a header or record.
    #[error("capture is truncated at byte {offset}: {what}")]
    Truncated {
        /// Byte offset.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A length or field is impossible.
    #[error("capture is malformed at byte {offset}: {what}")]
    Malformed {
        /// Byte offset.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Pcap {
        big: bool,
        nanos: bool,
        link: LinkType,
    },
    PcapNg {
        big: bool,
    },
}

/// An iterator over the frames of a capture held in memory.
#[derive(Debug, Clone)]
pub struct Capture<'a> {
    data: &'a [u8],
    at: usize,
    format: Format,
    /// pcapng interfaces: link type and timestamp resolution (ticks/s).
    interfaces: Vec<(LinkType, u64)>,
    failed: bool,
}

fn rd16(b: &[u8], at: usize, big: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(s)
    } else {
        u16::from_le_bytes(s)
    })
}

fn rd32(b: &[u8], at: usize, big: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(s)
    } else {
        u32::from_le_bytes(s)
    })
}

impl<'a> Capture<'a> {
    /// Recognises the format from the first bytes.
    pub fn new(data: &'a [u8]) -> Result<Self, CaptureError> {
        let magic = rd32(data, 0, false).ok_or(CaptureError::Truncated {
            offset: 0,
            what: "magic number",
        })?;
        let (format, at) = match magic {
            0xA1B2_C3D4 | 0xD4C3_B2A1 | 0xA1B2_3C4D | 0x4D3C_B2A1 => {
                let big = matches!(magic, 0xD4C3_B2A1 | 0x4D3C_B2A1);
                let nanos = matches!(magic, 0xA1B2_3C4D | 0x4D3C_B2A1);
                let link = rd32(data, 20, big).ok_or(CaptureError::Truncated {
                    offset: 0,
                    what: "pcap header",
                })?;
                (
                    Format::Pcap {
                        big,
                        nanos,
                        link: LinkType::from_u32(link & 0x0FFF_FFFF),
                    },
                    24,
                )
            }
            0x0A0D_0D0A => {
                let bom = rd32(data, 8, false).ok_or(CaptureError::Truncated {
                    offset: 0,
                    what: "pcapng section header",
                })?;
                let big = match bom {
                    0x1A2B_3C4D => false,
                    0x4D3C_2B1A => true,
                    _ => {
                        return Err(CaptureError::Malformed {
                            offset: 8,
                            what: "pcapng byte-order magic",
                        });
                    }
                };
                (Format::PcapNg { big }, 0)
            }
            _ => return Err(CaptureError::UnknownFormat),
        };
        Ok(Self {
            data,
            at,
            format,
            interfaces: Vec::new(),
            failed: false,
        })
    }

    fn next_pcap(
        &mut self,
        big: bool,
        nanos: bool,
        link: LinkType,
    ) -> Option<Result<Frame<'a>, CaptureError>> {
        let d = self.data;
        let at = self.at;
        if at == d.len() {
            return None;
        }
        let trunc = |what| Some(Err(CaptureError::Truncated { offset: at, what }));
        let (Some(sec), Some(frac), Some(incl), Some(orig)) = (
            rd32(d, at, big),
            rd32(d, at + 4, big),
            rd32(d, at + 8, big),
            rd32(d, at + 12, big),
        ) else {
            return trunc("record header");
        };
        let start = at + 16;
        let Some(data) = start
            .checked_add(incl as usize)
            .and_then(|end| d.get(start..end))
        else {
            return trunc("record data");
        };
        self.at = start + incl as usize;
        let ts = u64::from(sec) * 1_000_000_000 + u64::from(frac) * if nanos { 1 } else { 1_000 };
        Some(Ok(Frame {
            ts_nanos: ts,
            link,
            data,
            orig_len: orig,
        }))
    }

    fn next_pcapng(&mut self, mut big: bool) -> Option<Result<Frame<'a>, CaptureError>> {
        let d = self.data;
        loop {
            let at = self.at;
            if at == d.len() {
                return None;
            }
            let (Some(kind), Some(len)) = (rd32(d, at, big), rd32(d, at + 4, big)) else {
                return Some(Err(CaptureError::Truncated {
                    offset: at,
                    what: "block header",
                }));
            };
            let len = len as usize;
            if len < 12 || !len.is_multiple_of(4) {
                return Some(Err(CaptureError::Malformed {
                    offset: at + 4,
                    what: "block length",
                }));
            }
            let Some(block) = at.checked_add(len).and_then(|e| d.get(at..e)) else {
                return Some(Err(CaptureError::Truncated {
                    offset: at,
                    what: "block",
                }));
            };
            self.at = at + len;
            let body = &block[8..len - 4];
            match kind {
                // Section header: a new section resets interfaces.
                0x0A0D_0D0A => {
                    let bom = rd32(body, 0, false);
                    let nb = match bom {
                        Some(0x1A2B_3C4D) => false,
                        Some(0x4D3C_2B1A) => true,
                        _ => {
                            return Some(Err(CaptureError::Malformed {
                                offset: at + 8,
                                what: "byte-order magic",
                            }));
                        }
                    };
                    // Lengths already read with the old order are only
                    // trusted for this block.
                    self.format = Format::PcapNg { big: nb };
                    self.interfaces.clear();
                    big = nb;
                }
                // Interface description: link type and options.
                1 => {
                    let Some(link) = rd16(body, 0, big) else {
                        return Some(Err(CaptureError::Truncated {
                            offset: at + 8,
                            what: "interface block",
                        }));
                    };
                    let mut res = 1_000_000u64;
                    let mut o = 8;
                    while let (Some(code), Some(olen)) =
                        (rd16(body, o, big), rd16(body, o + 2, big))
                    {
                        if code == 0 {
                            break;
                        }
                        if code == 9
                            && olen >= 1
                            && let Some(&r) = body.get(o + 4)
                        {
                            let exp = u32::from(r & 0x7F);
                            res = if r & 0x80 != 0 {
                                2u64.checked_pow(exp)
                            } else {
                                10u64.checked_pow(exp)
                            }
                            .unwrap_or(1_000_000);
                        }
                        o += 4 + usize::from(olen).div_ceil(4) * 4;
                    }
                    self.interfaces
                        .push((LinkType::from_u32(u32::from(link)), res.max(1)));
                }
                // Enhanced packet block.
                6 => {
                    let (Some(ifc), Some(hi), Some(lo), Some(cap), Some(orig)) = (
                        rd32(body, 0, big),
                        rd32(body, 4, big),
                        rd32(body, 8, big),
                        rd32(body, 12, big),
                        rd32(body, 16, big),
                    ) else {
                        return Some(Err(CaptureError::Truncated {
                            offset: at + 8,
                            what: "packet block",
                        }));
                    };
                    let Some(&(link, res)) = self.interfaces.get(ifc as usize) else {
                        return Some(Err(CaptureError::Malformed {
                            offset: at + 8,
                            what: "packet names an undefined interface",
                        }));
                    };
                    let Some(data) = body.get(20..20usize.saturating_add(cap as usize)) else {
                        return Some(Err(CaptureError::Malformed {
                            offset: at + 20,
                            what: "captured length exceeds the block",
                        }));
                    };
                    let ticks = (u64::from(hi) << 32) | u64::from(lo);
                    let ts = (u128::from(ticks) * 1_000_000_000 / u128::from(res)) as u64;
                    return Some(Ok(Frame {
                        ts_nanos: ts,
                        link,
                        data,
                        orig_len: orig,
                    }));
                }
                // Simple packet block: interface 0, no timestamp.
                3 => {
                    let Some(orig) = rd32(body, 0, big) else {
                        return Some(Err(CaptureError::Truncated {
                            offset: at + 8,
                            what: "simple packet block",
                        }));
                    };
                    let Some(&(link, _)) = self.interfaces.first() else {
                        return Some(Err(CaptureError::Malformed {
                            offset: at,
                            what: "packet before any interface",
                        }));
                    };
                    let data = &body[4.min(body.len())..];
                    let data = &data[..data.len().min(orig as usize)];
                    return Some(Ok(Frame {
                        ts_nanos: 0,
                        link,
                        data,
                        orig_len: orig,
                    }));
                }
                // Other blocks (statistics, name resolution, ...) are skipped.
                _ => {}
            }
        }
    }
}

impl<'a> Iterator for Capture<'a> {
    type Item = Result<Frame<'a>, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = match self.format {
            Format::Pcap { big, nanos, link } => self.next_pcap(big, nanos, link),
            Format::PcapNg { big } => self.next_pcapng(big),
        };
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}

/// The largest record [`CaptureStream`] reads: a pcap record or pcapng
/// block longer than this is reported as malformed rather than buffered.
pub const MAX_RECORD: usize = 64 << 20;

/// What [`CaptureStream`] reads in one go (its buffer's starting size).
const CHUNK: usize = 1 << 20;

/// A capture read from any byte stream (a file, standard input, a
/// decompressor) in chunks: memory is one buffer of `CHUNK` bytes, grown
/// only for a record longer than that, up to [`MAX_RECORD`], whatever the
/// capture's size. Frames borrow the buffer until the next call.
#[derive(Debug)]
pub struct CaptureStream<R> {
    src: R,
    buf: Vec<u8>,
    /// Consumed up to here.
    start: usize,
    /// Filled up to here.
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    eof: bool,
    format: Option<Format>,
    interfaces: Vec<(LinkType, u64)>,
    failed: bool,
}

/// A frame found in [`CaptureStream`]'s buffer.
#[derive(Debug, Clone, Copy)]
struct Found {
    /// Offset in the buffer.
    at: usize,
    len: usize,
    ts_nanos: u64,
    link: LinkType,
    orig_len: u32,
}

/// A read error or a capture error, with the stream offset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The source could not be read.
    #[error("cannot read the capture at byte {offset}: {source}")]
    Io {
        /// Bytes read before the error.
        offset: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed capture (offsets are stream offsets).
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

impl<R: std::io::Read> CaptureStream<R> {
    /// Reads from `src`; the format is recognised at the first frame.
    pub fn new(src: R) -> Self {
        Self {
            src,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            base: 0,
            eof: false,
            format: None,
            interfaces: Vec::new(),
            failed: false,
        }
    }

    /// Bytes consumed from the stream so far.
    pub fn position(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Moves the unread bytes to the front, grows the buffer when a single
    /// record fills it, and reads more. `Ok(false)` at the end of the
    /// stream.
    fn refill(&mut self) -> Result<bool, StreamError> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_RECORD {
                return Err(CaptureError::Malformed {
                    offset: usize::try_from(self.base).unwrap_or(usize::MAX),
                    what: "record longer than the 64 MiB limit",
                }
                .into());
            }
            let n = (self.buf.len() * 2).min(MAX_RECORD);
            self.buf.resize(n, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StreamError::Io {
                        offset: self.base + self.end as u64,
                        source: e,
                    });
                }
            }
        }
    }

    fn shift(&self, e: CaptureError) -> CaptureError {
        let b = usize::try_from(self.base).unwrap_or(usize::MAX);
        match e {
            CaptureError::Truncated { offset, what } => CaptureError::Truncated {
                offset: offset.saturating_add(b),
                what,
            },
            CaptureError::Malformed { offset, what } => CaptureError::Malformed {
                offset: offset.saturating_add(b),
                what,
            },
            other => other,
        }
    }

    /// The next frame, `None` at the end of the stream. After an error
    /// (a truncated last record, a malformed one, a read error) it returns
    /// `None`: the frames before it stand.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, StreamError>> {
        if self.failed {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.failed = true;
        }
        match r {
            Ok(None) => None,
            Ok(Some(f)) => Some(Ok(Frame {
                ts_nanos: f.ts_nanos,
                link: f.link,
                data: &self.buf[f.at..f.at + f.len],
                orig_len: f.orig_len,
            })),
            Err(e) => Some(Err(e)),
        }
    }

    /// Parses the next frame in the buffer, refilling as needed.
    fn step(&mut self) -> Result<Option<Found>, StreamError> {
        loop {
            let format = match self.format {
                Some(f) => f,
                None => match Capture::new(&self.buf[self.start..self.end]) {
                    Ok(c) => {
                        self.format = Some(c.format);
                        self.start += c.at;
                        continue;
                    }
                    Err(CaptureError::Truncated { .. }) if !self.eof => {
                        self.refill()?;
                        continue;
                    }
                    Err(CaptureError::Truncated { .. }) if self.end == self.start => {
                        return Err(CaptureError::Truncated {
                            offset: 0,
                            what: "magic number (the capture is empty)",
                        }
                        .into());
                    }
                    Err(e) => return Err(self.shift(e).into()),
                },
            };
            let mut c = Capture {
                data: &self.buf[..self.end],
                at: self.start,
                format,
                interfaces: std::mem::take(&mut self.interfaces),
                failed: false,
            };
            let r = c.next();
            let (at, fmt, ifs) = (c.at, c.format, c.interfaces);
            self.interfaces = ifs;
            match r {
                Some(Ok(f)) => {
                    let off = f.data.as_ptr() as usize - self.buf.as_ptr() as usize;
                    let out = Found {
                        at: off,
                        len: f.data.len(),
                        ts_nanos: f.ts_nanos,
                        link: f.link,
                        orig_len: f.orig_len,
                    };
                    self.format = Some(fmt);
                    self.start = at;
                    return Ok(Some(out));
                }
                // Not all of the next record is here yet.
                None | Some(Err(CaptureError::Truncated { .. })) if !self.eof => {
                    // Blocks before the cut (pcapng interfaces) are kept.
                    self.format = Some(fmt);
                    self.start = at;
                    self.refill()?;
                }
                None => return Ok(None),
                Some(Err(e)) => {
                    self.start = at;
                    return Err(self.shift(e).into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(big: bool, nanos: bool, link: u32, frames: &[&[u8]]) -> Vec<u8> {
        let w32 = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut b = Vec::new();
        b.extend_from_slice(&w32(if nanos { 0xA1B2_3C4D } else { 0xA1B2_C3D4 }));
        b.extend_from_slice(&w16(2));
        b.extend_from_slice(&w16(4));
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&w32(65535));
        b.extend_from_slice(&w32(link));
        for (i, f) in frames.iter().enumerate() {
            b.extend_from_slice(&w32(1_700_000_000 + i as u32));
            b.extend_from_slice(&w32(5));
            b.extend_from_slice(&w32(f.len() as u32));
            b.extend_from_slice(&w32(f.len() as u32 + 10));
            b.extend_from_slice(f);
        }
        b
    }

    fn block(kind: u32, body: &[u8]) -> Vec<u8> {
        let pad = (4 - body.len() % 4) % 4;
        let len = (12 + body.len() + pad) as u32;
        let mut b = kind.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(&vec![0; pad]);
        b.extend_from_slice(&len.to_le_bytes());
        b
    }

    #[test]
    fn pcap_both_byte_orders_and_resolutions() {
        for (big, nanos) in [(false, false), (true, false), (false, true), (true, true)] {
            let b = pcap(big, nanos, 101, &[b"abc", b"", b"hello"]);
            let frames: Vec<Frame<'_>> = Capture::new(&b)
                .expect("pcap")
                .collect::<Result<_, _>>()
                .expect("frames");
            assert_eq!(frames.len(), 3);
            assert_eq!(
                (frames[0].data, frames[0].link, frames[0].orig_len),
                (b"abc".as_slice(), LinkType::Raw, 13)
            );
            let frac = if nanos { 5 } else { 5_000 };
            assert_eq!(frames[2].ts_nanos, 1_700_000_002 * 1_000_000_000 + frac);
        }
    }

    #[test]
    fn pcapng_with_interfaces_and_resolution() {
        let mut shb = 0x1A2B_3C4Du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut b = block(0x0A0D_0D0A, &shb);
        // Interface 0: Ethernet, if_tsresol = 10^-9.
        let mut idb = vec![1, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&block(1, &idb));
        let mut epb = 0u32.to_le_bytes().to_vec();
        let ts: u64 = 1_700_000_000_123_456_789;
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ts as u32).to_le_bytes());
        epb.extend_from_slice(&5u32.to_le_bytes());
        epb.extend_from_slice(&60u32.to_le_bytes());
        epb.extend_from_slice(b"12345");
        b.extend_from_slice(&block(6, &epb));
        b.extend_from_slice(&block(5, b"stats"));
        let frames: Vec<Frame<'_>> = Capture::new(&b)
            .expect("pcapng")
            .collect::<Result<_, _>>()
            .expect("frames");
        assert_eq!(frames.len(), 1);
        assert_eq!(
            (frames[0].data, frames[0].link, frames[0].ts_nanos),
            (b"12345".as_slice(), LinkType::Ethernet, ts)
        );
        // A packet naming an undefined interface.
        let mut bad = b.clone();
        let mut epb2 = epb.clone();
        epb2[0] = 7;
        bad.extend_from_slice(&block(6, &epb2));
        let r: Vec<_> = Capture::new(&bad).expect("pcapng").collect();
        assert!(matches!(
            r.last(),
            Some(Err(CaptureError::Malformed { .. }))
        ));
    }

    #[test]
    fn many_section_headers_do_not_recurse() {
        let mut shb = 0x1A2B_3C4Du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        let one = block(0x0A0D_0D0A, &shb);
        let many: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 100_000)
            .collect();
        assert_eq!(Capture::new(&many).expect("pcapng").count(), 0);
    }

    #[test]
    fn damage_is_reported_with_its_offset_and_earlier_frames_kept() {
        let b = pcap(false, false, 1, &[b"first", b"second"]);
        let cut = &b[..b.len() - 3];
        let r: Vec<_> = Capture::new(cut).expect("pcap").collect();
        assert_eq!(r.len(), 2);
        assert!(r[0].is_ok());
        assert!(
            matches!(r[1], Err(CaptureError::Truncated { offset: 45, .. })),
            "{:?}",
            r[1]
        );
        assert_eq!(
            Capture::new(b"nope, not a capture").err(),
            Some(CaptureError::UnknownFormat)
        );
        assert!(matches!(
            Capture::new(&[1, 2]),
            Err(CaptureError::Truncated { .. })
        ));
    }

    /// A reader that hands out at most `step` bytes a call.
    struct Dribble<'a>(&'a [u8], usize);

    impl std::io::Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    type Owned = (u64, LinkType, Vec<u8>, u32);

    fn in_memory(b: &[u8]) -> (Vec<Owned>, Option<CaptureError>) {
        let mut frames = Vec::new();
        let Ok(c) = Capture::new(b) else {
            return (frames, Capture::new(b).err());
        };
        for f in c {
            match f {
                Ok(f) => frames.push((f.ts_nanos, f.link, f.data.to_vec(), f.orig_len)),
                Err(e) => return (frames, Some(e)),
            }
        }
        (frames, None)
    }

    fn streamed(b: &[u8], step: usize) -> (Vec<Owned>, Option<String>) {
        let mut s = CaptureStream::new(Dribble(b, step));
        let mut frames = Vec::new();
        while let Some(f) = s.next_frame() {
            match f {
                Ok(f) => frames.push((f.ts_nanos, f.link, f.data.to_vec(), f.orig_len)),
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
        assert!(s.next_frame().is_none());
        (frames, None)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ndpi")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn a_stream_gives_the_frames_of_the_whole_file_in_any_chunking() {
        for name in [
            "quic.pcap",
            "rtp.pcapng",
            "quic_frags_ch_in_multiple_packets.pcapng",
        ] {
            let b = fixture(name);
            let (want, err) = in_memory(&b);
            assert!(err.is_none() && !want.is_empty(), "{name}");
            for step in [1, 7, 4096, 1 << 20] {
                let (got, err) = streamed(&b, step);
                assert_eq!(err, None, "{name} in steps of {step}");
                assert!(got == want, "{name} in steps of {step}");
            }
        }
    }

    #[test]
    fn a_stream_cut_anywhere_keeps_the_frames_before_the_cut_and_says_where() {
        let b = fixture("dns.pcap");
        let (all, _) = in_memory(&b);
        for cut in (0..b.len()).step_by(13) {
            let (want, want_err) = in_memory(&b[..cut]);
            let (got, err) = streamed(&b[..cut], 5);
            assert!(got == want, "cut at {cut}");
            assert!(all.starts_with(&got));
            // A cut exactly between records is a clean end; an empty
            // stream says so.
            if cut == 0 {
                assert!(err.expect("empty").contains("empty"));
            } else {
                assert_eq!(err, want_err.map(|e| e.to_string()), "cut at {cut}");
            }
        }
    }

    #[test]
    fn records_longer_than_a_chunk_are_read_and_absurd_ones_refused() {
        let big = vec![0x45u8; 3 * CHUNK + 5];
        let b = pcap(false, false, 101, &[&big, b"tail"]);
        let (got, err) = streamed(&b, 1 << 16);
        assert_eq!(err, None);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].2, big);
        // A record header claiming 1 GiB: an error, not a 1 GiB buffer.
        let mut b = pcap(false, false, 101, &[b"x"]);
        b[24 + 8..24 + 12].copy_from_slice(&(1u32 << 30).to_le_bytes());
        b.extend(std::iter::repeat_n(0u8, 2 * MAX_RECORD));
        let (got, err) = streamed(&b, 1 << 20);
        assert!(got.is_empty());
        assert!(err.expect("an error").contains("64 MiB"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            for magic in [[0xD4u8, 0xC3, 0xB2, 0xA1], [0x0A, 0x0D, 0x0D, 0x0A]] {
                let mut v = magic.to_vec();
                v.extend_from_slice(&b);
                if let Ok(c) = Capture::new(&v) {
                    for f in c.take(1000) {
                        let _ = f;
                    }
                }
            }
        }

        #[test]
        fn a_stream_agrees_with_the_whole_buffer(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            step in 1usize..64,
            ng in proptest::prelude::any::<bool>(),
        ) {
            let mut v = if ng { vec![0x0A, 0x0D, 0x0D, 0x0A] } else { vec![0xD4, 0xC3, 0xB2, 0xA1] };
            v.extend_from_slice(&b);
            let (want, want_err) = in_memory(&v);
            let (got, err) = streamed(&v, step);
            proptest::prop_assert!(got == want);
            proptest::prop_assert_eq!(err.is_some(), want_err.is_some());
        }
    }
}
