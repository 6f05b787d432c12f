//! Fuzzes the directory protocol's decoders (specs/04 §7): requests come from any peer, listings
//! from any relay a client or relay asks. Whatever decodes must encode back to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_directory::{DirRequest, DirResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = DirRequest::decode(data) {
        assert_eq!(request.encode().expect("re-encode"), data);
    }
    if let Ok(response) = DirResponse::decode(data) {
        assert_eq!(response.encode().expect("re-encode"), data);
    }
});
