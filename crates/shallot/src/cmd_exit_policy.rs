//! `shallot exit-policy check FILE ADDR:PORT...`: what a relay with this policy file would do
//! with each target (specs/06 §8).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use shallot_exit_policy::{ExitPolicy, ExitPolicyConfig, RelayExitPolicy};

/// Checks `targets` against the policy in `file` as a relay would: with the reject-private
/// prelude on (the relay default) unless `allow_private`, which mirrors
/// `exit_policy_reject_private = false` in a relay's config. Prints one line per target.
pub(crate) fn check_with(
    file: &Path,
    targets: &[String],
    allow_private: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read exit-policy file {}", file.display()))?;
    let report = report(&file.display().to_string(), &text, targets, allow_private)?;
    for warning in &report.warnings {
        eprintln!("shallot: {warning}");
    }
    for line in &report.lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `check` prints.
struct Report {
    /// To stderr: rules that parse but are suspicious.
    warnings: Vec<String>,
    /// To stdout: one line per target.
    lines: Vec<String>,
}

/// Parses the policy and every target first, so a bad target fails before any output.
fn report(
    source_name: &str,
    text: &str,
    targets: &[String],
    allow_private: bool,
) -> anyhow::Result<Report> {
    let file = ExitPolicy::parse(source_name, text)?;
    let warnings = file.warnings().iter().map(ToString::to_string).collect();
    let parsed: Vec<(SocketAddr, IpAddr, u16)> = targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<anyhow::Result<_>>()?;
    let config = ExitPolicyConfig {
        reject_private: !allow_private,
        private_allowed: Vec::new(),
    };
    let relay = RelayExitPolicy::new(file, &config, &[]);
    let lines = parsed
        .iter()
        .map(|(shown, addr, port)| {
            let verdict = relay.evaluate(*addr, *port);
            format!("{shown} {} ({})", verdict.decision, verdict.reason)
        })
        .collect();
    Ok(Report { warnings, lines })
}

/// `1.1.1.1:443` or `[2001:db8::1]:443`; no names, no port 0, no IPv6 zone.
fn parse_target(target: &str) -> anyhow::Result<(SocketAddr, IpAddr, u16)> {
    let Ok(addr) = target.parse::<SocketAddr>() else {
        bail!(
            "target {target:?} is not ADDR:PORT (for example 1.1.1.1:443 or [2001:db8::1]:443; \
             names are not resolved)"
        );
    };
    if addr.port() == 0 {
        bail!("target {target:?}: port 0 is not a destination port");
    }
    if let SocketAddr::V6(v6) = addr
        && v6.scope_id() != 0
    {
        bail!("target {target:?}: an exit policy has no zone ids; drop the '%...'");
    }
    Ok((addr, addr.ip(), addr.port()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const REDUCED: &str = include_str!("../../../configs/exit-policies/reduced.policy");

    fn lines(text: &str, targets: &[&str], allow_private: bool) -> Vec<String> {
        let targets: Vec<String> = targets.iter().map(|t| (*t).to_owned()).collect();
        match report("reduced.policy", text, &targets, allow_private) {
            Ok(r) => r.lines,
            Err(e) => panic!("{e:#}"),
        }
    }

    #[test]
    fn reduced_policy_must_show() {
        let got = lines(
            REDUCED,
            &["1.1.1.1:443", "1.1.1.1:25", "10.0.0.1:443"],
            false,
        );
        let accept_443 = REDUCED
            .lines()
            .position(|l| l == "accept *:443")
            .map(|i| i + 1)
            .unwrap();
        let reject_all = REDUCED.lines().count();
        assert_eq!(
            got,
            [
                format!("1.1.1.1:443 accept (reduced.policy line {accept_443}: accept *:443)"),
                format!("1.1.1.1:25 reject (reduced.policy line {reject_all}: reject *:*)"),
                "10.0.0.1:443 reject (reject-private default: 10.0.0.0/8 is private)".to_owned(),
            ]
        );
    }

    #[test]
    fn reject_private_refuses_shared_address_space_and_6to4_of_private() {
        let got = lines(REDUCED, &["100.64.0.1:80", "[2002:a00:1::1]:80"], false);
        assert_eq!(
            got,
            [
                "100.64.0.1:80 reject (reject-private default: 100.64.0.0/10 is special-purpose)",
                "[2002:a00:1::1]:80 reject (reject-private default: [2002:a00::]/24 embeds a \
                 non-public IPv4 address)",
            ]
        );
    }

    #[test]
    fn allow_private_mirrors_reject_private_false() {
        let got = lines(REDUCED, &["10.0.0.1:443", "[::1]:443"], true);
        assert!(
            got[0].starts_with("10.0.0.1:443 accept (reduced.policy line "),
            "{got:?}"
        );
        assert!(got[1].starts_with("[::1]:443 accept"), "{got:?}");
    }

    #[test]
    fn default_reject_is_named() {
        let got = lines("accept *:443", &["[2001:db8::1]:80"], false);
        assert_eq!(
            got,
            ["[2001:db8::1]:80 reject (no rule matched: rejected by default)"]
        );
    }

    #[test]
    fn parse_errors_and_bad_targets_are_errors() {
        let err = report("bad.policy", "accept *:80x", &[], false)
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").starts_with("bad.policy:1:10: expected a port"),
            "{err:#}"
        );
        for bad in [
            "example.com:80",
            "1.1.1.1",
            "1.1.1.1:0",
            "1.1.1.1:65536",
            "::1:80",
            "[fe80::1%2]:80",
        ] {
            let err = report("ok.policy", "accept *:*", &[bad.to_owned()], false).err();
            assert!(err.is_some(), "{bad}");
        }
    }
}
