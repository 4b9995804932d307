//! The world database loader (validated: magic, version, lengths,
//! checksum) with lookups on what loads, and the capture reader with the
//! link and IP parsers the audit uses.
#![no_main]

use geowall::wire::capture::{Capture, CaptureStream};
use geowall::wire::packet::{parse_ip, strip_link};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = geowall::intel::World::from_slice(data) {
        for ip in ["203.0.113.10", "2001:db8::1", "0.0.0.0", "255.255.255.255"] {
            let _ = w.lookup(ip.parse().expect("ip"));
        }
    }
    if let Ok(c) = Capture::new(data) {
        for f in c.take(1_000) {
            let Ok(f) = f else { break };
            if let Ok(ip) = strip_link(f.link, f.data) {
                let _ = parse_ip(ip);
            }
        }
    }
    // The streaming reader, in small reads, gives the same frames.
    let mut s = CaptureStream::new(std::io::Read::chain(
        &data[..data.len() / 2],
        &data[data.len() / 2..],
    ));
    let whole: Vec<Vec<u8>> = Capture::new(data)
        .map(|c| {
            c.take(1_000)
                .map_while(Result::ok)
                .map(|f| f.data.to_vec())
                .collect()
        })
        .unwrap_or_default();
    for want in &whole {
        match s.next_frame() {
            Some(Ok(f)) => assert_eq!(f.data, &want[..]),
            other => panic!("stream and buffer disagree: {other:?}"),
        }
    }
});
