//! Fuzzes the relay-descriptor decoder and signature check (specs/04 §3, §4): remote input,
//! served by any DHT node. Whatever verifies must be canonical and re-encode to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_directory::SignedDescriptor;

fuzz_target!(|data: &[u8]| {
    match SignedDescriptor::verify_ignoring_time(data) {
        Ok(signed) => {
            assert_eq!(signed.as_bytes(), data);
            let descriptor = signed.descriptor();
            let _ = descriptor.check_time(0);
            let _ = descriptor.exit_policy_summary();
            let _ = descriptor.ip_addrs().count();
            let _ = signed.peer_id();
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
