//! The rule language and the list formats: a policy, with its lists read
//! from the same input, a list bundle's manifest, and each list format on
//! its own.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use geowall::intel::catalog::Catalog;
use geowall::policy::Policy;
use geowall::policy::lists::{InstalledLists, ListFormat, parse_list, read_manifest};
use libfuzzer_sys::fuzz_target;

fn catalog() -> &'static Catalog {
    static C: OnceLock<Catalog> = OnceLock::new();
    C.get_or_init(|| Catalog::shipped().expect("shipped catalog"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Policy::parse_with(
        Path::new("fuzz.toml"),
        text,
        &mut |_| Ok(text.to_owned()),
        InstalledLists::none(),
        catalog(),
    );
    let _ = Policy::declared(
        Path::new("fuzz.toml"),
        text,
        &mut |_| Ok(text.to_owned()),
        catalog(),
    );
    // A list bundle's manifest, its lists read from the same input.
    let _ = read_manifest(Path::new("lists.toml"), text, &mut |_| Ok(text.to_owned()));
    for f in [
        ListFormat::Domains,
        ListFormat::Hosts,
        ListFormat::Adblock,
        ListFormat::Cidr,
        ListFormat::Asn,
        ListFormat::SingBox,
    ] {
        let _ = parse_list(Path::new("fuzz.list"), text, f);
    }
    let _ = Catalog::from_sources(vec![(
        Path::new("vendors/fuzz.toml").to_owned(),
        text.to_owned(),
    )]);
});
