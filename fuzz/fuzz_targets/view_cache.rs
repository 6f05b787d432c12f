//! Fuzzes the client's view-cache decoder and loader (specs/04 §6.4): a local file, but one a
//! crash, a full disk or another program can leave in any state, and whose contents are then
//! verified again as if they came from the DHT.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_directory::{NetworkView, ViewConfig, decode_cache, encode_cache};

fuzz_target!(|data: &[u8]| {
    let Ok(contents) = decode_cache(data) else {
        return;
    };
    let mut view = NetworkView::new(ViewConfig::default());
    for (peer, sighting) in contents.sightings {
        view.remember(peer, sighting);
    }
    let _ = view.offer_all(contents.entries, 1_800_000_000);
    // What the view holds encodes to a cache that decodes again.
    let again = decode_cache(&encode_cache(&view)).expect("a view's own cache decodes");
    assert_eq!(again.entries.len(), view.len());
});
