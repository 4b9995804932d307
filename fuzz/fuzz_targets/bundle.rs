//! The bundle loader: the input as a whole bundle (rejected at the frame
//! or the signature), and as the content of a correctly framed and signed
//! bundle (so that the archive, catalog and policy inside are parsed), and
//! as a world bundle's database.
#![no_main]

use geowall::policy::bundle::{self, SigningKey};
use geowall::policy::lists::InstalledLists;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[42; 32]);
    let trusted = [key.verifying_key()];
    let lists = InstalledLists::none();
    let _ = bundle::open(data, &trusted, None, NOW, lists);
    let _ = bundle::open_world(data, &trusted, None, NOW);
    let _ = bundle::open_lists(data, &trusted, None, NOW);
    // A published index and a bundle read for review (`rules diff`).
    let _ = bundle::open_index(data, bundle::BundleKind::Rules, &trusted, Some(3), NOW);
    let _ = bundle::read_index(data);
    if let Ok(r) = bundle::review(data) {
        let _ = geowall::policy::diff::diff(&r, &r);
    }
    let framed = bundle::frame_content(data, 7, NOW - 10, NOW + 10);
    if let Ok(signed) = bundle::sign(&framed, &key) {
        let _ = bundle::open(&signed, &trusted, Some(3), NOW, lists);
        let _ = bundle::inspect(&signed, bundle::BundleKind::Rules, &trusted, Some(3), NOW);
        if let Ok(r) = bundle::review(&signed) {
            let _ = geowall::policy::diff::diff(&r, &r);
        }
        // The same bytes as a world database, past every check but its own.
        let mut world = signed.clone();
        world[12] = 1;
        if let Ok(w) = bundle::sign(&world[..world.len() - 64], &key) {
            let _ = bundle::open_world(&w, &trusted, Some(3), NOW);
        }
        // And as a list bundle's archive.
        let mut listed = signed.clone();
        listed[12] = 2;
        if let Ok(l) = bundle::sign(&listed[..listed.len() - 64], &key) {
            let _ = bundle::open_lists(&l, &trusted, Some(3), NOW);
            let _ = bundle::inspect(&l, bundle::BundleKind::Lists, &trusted, Some(3), NOW);
            if let Ok(r) = bundle::review(&l) {
                let _ = geowall::policy::diff::diff(&r, &r);
            }
        }
    }
});
