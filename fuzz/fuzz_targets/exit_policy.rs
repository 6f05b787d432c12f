//! Fuzzes both parsers of `shallot-exit-policy`: the policy-file parser (operator input) and the
//! summary decoder (remote input, specs/06 §7.3). The first byte picks which; the rest is input.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use shallot_exit_policy::{AddressFamily, ExitPolicy, MAX_SUMMARY_LEN, PolicySummary};

const PROBES: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        let text = String::from_utf8_lossy(input);
        match ExitPolicy::parse("fuzz.policy", &text) {
            Ok(policy) => {
                for addr in PROBES {
                    for port in [0, 1, 80, 443, 65535] {
                        let _ = policy.evaluate(addr, port).reason.to_string();
                    }
                }
                for family in AddressFamily::ALL {
                    let summary = policy.summary(family);
                    let encoded = summary.encode();
                    // specs/06 §7.2: bounded, and the canonical form decodes to itself.
                    assert!(encoded.len() <= MAX_SUMMARY_LEN);
                    assert_eq!(PolicySummary::decode(&encoded).as_ref(), Ok(&summary));
                    // specs/06 §7.4: never claims more than the policy.
                    for port in [1, 22, 80, 443, 65535] {
                        if summary.allows_port(port) {
                            assert!(policy.allows_port_somewhere(port));
                        }
                    }
                }
            }
            Err(err) => {
                let _ = err.to_string();
            }
        }
    } else {
        match PolicySummary::decode_bytes(input) {
            Ok(summary) => {
                // specs/06 §7.3: only canonical input decodes.
                assert_eq!(summary.encode().as_bytes(), input);
                let _ = summary.allows_port(0);
                let _ = summary.allows_port(80);
            }
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
});
