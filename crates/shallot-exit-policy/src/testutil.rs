//! Generators shared by the property tests.

use proptest::prelude::*;

/// Address patterns: wildcards, `private`, prefixes at the edges of the private nets, hosts.
const PATTERNS: &[&str] = &[
    "*",
    "*4",
    "*6",
    "private",
    "0.0.0.0/0",
    "[::]/0",
    "1.2.3.4",
    "1.2.3.0/24",
    "10.0.0.0/7",
    "11.0.0.0/8",
    "0.0.0.0/1",
    "128.0.0.0/1",
    "192.0.0.0/3",
    "224.0.0.0/3",
    "172.0.0.0/8",
    "[2001:db8::]/32",
    "[2000::]/3",
    "[8000::]/1",
    "[::]/1",
    "[fe00::]/7",
    "[2001:db8::1]",
    "[::ffff:1.2.3.4]/120",
];

/// Port lists of the generated rules.
const PORTS: &[&str] = &[
    "*",
    "80",
    "443",
    "22-25",
    "1-1024",
    "1000-65535",
    "25",
    "80-443",
    "0",
    "65535",
    "100",
];

/// Every edge of [`PORTS`]: the ports where a generated policy's answer can change.
pub(crate) const PROBE_PORTS: &[u16] = &[
    1, 2, 21, 22, 24, 25, 26, 79, 80, 81, 99, 100, 101, 442, 443, 444, 999, 1000, 1024, 1025,
    65534, 65535,
];

/// A policy of up to 12 rules drawn from the lists above.
pub(crate) fn arb_policy() -> impl Strategy<Value = String> {
    let rule = (0..4usize, 0..PATTERNS.len(), 0..PORTS.len()).prop_map(|(k, a, p)| {
        let keyword = ["accept", "reject", "accept6", "reject6"][k];
        format!("{keyword} {}:{}", PATTERNS[a], PORTS[p])
    });
    proptest::collection::vec(rule, 0..12).prop_map(|rules| rules.join("\n"))
}
