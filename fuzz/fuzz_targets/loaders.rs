//! The world database loader (validated: magic, version, lengths,
//! checksum) with lookups on what loads, and the capture reader with the
//! link and IP parsers the audit uses.
#![no_main]

use geowall::wire::capture::Capture;
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
});
