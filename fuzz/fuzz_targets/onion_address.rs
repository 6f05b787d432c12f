//! Fuzzes the `.shallot` name parser (specs/09 §2): any application or web page can put a name
//! in a SOCKS request. Whatever parses must print back to the canonical form of the same key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_onion::{OnionAddress, SpecialName};

fuzz_target!(|data: &[u8]| {
    let Ok(host) = std::str::from_utf8(data) else {
        return;
    };
    if let SpecialName::Shallot(Ok(address)) = SpecialName::of(host) {
        let printed = address.to_string();
        assert_eq!(OnionAddress::parse(&printed), Ok(address));
    }
    let _ = OnionAddress::parse(host).map_err(|e| e.to_string());
});
