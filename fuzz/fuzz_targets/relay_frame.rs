//! Fuzzes the relay-message decoder (specs/03 §2–§5): no input may panic, and whatever decodes
//! must re-encode into an area of the same size that decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_cell::RelayFrame;

fuzz_target!(|area: &[u8]| {
    if let Ok(frame) = RelayFrame::decode(area) {
        let again = frame
            .encode(area.len())
            .expect("a decoded frame must re-encode into its own area");
        assert_eq!(RelayFrame::decode(&again).expect("re-encoded frame must decode"), frame);
        // Encoding is canonical: encoding the re-decoded frame gives the same bytes.
        assert_eq!(frame.encode(area.len()).expect("encode"), again);
    }
});
