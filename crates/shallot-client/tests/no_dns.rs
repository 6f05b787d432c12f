//! The client never resolves a destination name itself (specs/07 §1). Together with the
//! front's unit tests (a name reaches the circuit manager as `Host::Name`, unresolved) and
//! `e2e.rs` (`localhost` is resolved by the exit), this checks the client has no way to do it:
//! no resolver dependency and no call into the system resolver anywhere in its source.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn no_resolver_dependency() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("[dev-dependencies]").next())
        .expect("a [dependencies] table");
    for resolver in ["hickory", "trust-dns", "resolv", "dns", "shallot-relay"] {
        assert!(
            !deps.contains(resolver),
            "shallot-client must not depend on {resolver}"
        );
    }
}

#[test]
fn no_system_resolver_calls_in_the_source() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for call in ["lookup_host", "to_socket_addrs", "getaddrinfo"] {
            assert!(!text.contains(call), "{} calls {call}", path.display());
        }
        // The DNS port is the one UDP socket: it receives applications' queries and answers
        // their source; it never connects a UDP socket anywhere (its tests, after
        // `mod tests`, play the application and do).
        let is_dns_port = path.file_name().is_some_and(|n| n == "dns.rs");
        let code = text.split("\nmod tests {").next().unwrap_or(&text);
        if is_dns_port {
            assert!(
                !code.contains(".connect("),
                "the DNS port connects a socket"
            );
        } else {
            assert!(
                !text.contains("UdpSocket"),
                "{} uses UdpSocket",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "expected the crate's modules, found {checked}"
    );
}
