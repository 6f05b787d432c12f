//! Parsed policies and their evaluation (specs/06 §5, §6).

use std::fmt;
use std::net::IpAddr;

use crate::addr::{AddressFamily, IpPrefix, non_public, non_public_nets, uncovered_address};
use crate::config::ExitPolicyConfig;
use crate::err::{ParseWarning, PolicyError};
use crate::parse::{self, SourceLine};
use crate::rule::{Decision, Origin, PortRange, PreludeKind, Rule};
use crate::summary::{self, PolicySummary};

/// An exit-policy file, parsed: its rules in order, as written. Evaluating it applies the file
/// alone; a relay enforces a [`RelayExitPolicy`], which puts the reject-private prelude first.
#[derive(Clone, Debug)]
pub struct ExitPolicy {
    rules: RuleList,
    warnings: Vec<ParseWarning>,
}

impl ExitPolicy {
    /// Parses a policy file's `text`. `source_name` (usually the file name) is only used in
    /// messages. specs/06 §3.
    pub fn parse(source_name: &str, text: &str) -> Result<ExitPolicy, PolicyError> {
        let parsed = parse::parse(source_name, text)?;
        Ok(ExitPolicy {
            rules: RuleList {
                source_name: source_name.to_owned(),
                lines: parsed.lines,
                rules: parsed.rules,
            },
            warnings: parsed.warnings,
        })
    }

    /// Rules that parsed but probably do not mean what was intended (specs/06 §3.3).
    pub fn warnings(&self) -> &[ParseWarning] {
        &self.warnings
    }

    /// The name given to [`ExitPolicy::parse`].
    pub fn source_name(&self) -> &str {
        &self.rules.source_name
    }

    /// The file's decision for a connection to `addr`:`port`, and the rule that made it.
    /// specs/06 §5.
    pub fn evaluate(&self, addr: IpAddr, port: u16) -> Verdict<'_> {
        self.rules.evaluate(addr, port)
    }

    /// Whether the file accepts `port` for at least one public address (specs/06 §5.4): what a
    /// client can ask before it knows the address.
    pub fn allows_port_somewhere(&self, port: u16) -> bool {
        self.rules.public_witness(port).is_some()
    }

    /// The port-list summary of the file's rules for `family` (specs/06 §7).
    pub fn summary(&self, family: AddressFamily) -> PolicySummary {
        summary::summarize(&self.rules, family)
    }

    #[cfg(test)]
    pub(crate) fn rules_for_test(&self) -> &RuleList {
        &self.rules
    }
}

/// What a relay enforces and advertises: the reject-private prelude (unless turned off), then
/// the file's rules, then the default reject. specs/06 §6.
#[derive(Clone, Debug)]
pub struct RelayExitPolicy {
    rules: RuleList,
    /// Destinations the prelude's private ranges leave to the file's rules (own addresses
    /// excepted).
    private_allowed: Vec<IpPrefix>,
}

impl RelayExitPolicy {
    /// Puts the prelude of specs/06 §6 in front of `file`'s rules. `own_addresses` are the
    /// addresses the relay advertises; the prelude refuses them too.
    pub fn new(file: ExitPolicy, config: &ExitPolicyConfig, own_addresses: &[IpAddr]) -> Self {
        let ExitPolicy { mut rules, .. } = file;
        if config.reject_private {
            let prelude = |prefix: IpPrefix, kind: PreludeKind| Rule {
                decision: Decision::Reject,
                prefix,
                ports: PortRange::ALL,
                origin: Origin::Prelude(kind),
            };
            let mut all: Vec<Rule> = non_public_nets()
                .map(|(p, kind)| prelude(p, kind))
                .collect();
            all.extend(
                own_addresses
                    .iter()
                    .map(|&a| prelude(IpPrefix::host(a), PreludeKind::OwnAddress)),
            );
            all.append(&mut rules.rules);
            rules.rules = all;
        }
        let private_allowed = if config.reject_private {
            config.private_allowed.clone()
        } else {
            Vec::new()
        };
        RelayExitPolicy {
            rules,
            private_allowed,
        }
    }

    /// The relay's decision for a connection to `addr`:`port`, and what made it. specs/06 §5, §6.
    pub fn evaluate(&self, addr: IpAddr, port: u16) -> Verdict<'_> {
        if self.private_allowed.iter().any(|p| p.contains(addr)) {
            return self.rules.evaluate_where(addr, port, |rule| {
                !matches!(rule.origin, Origin::Prelude(kind) if kind != PreludeKind::OwnAddress)
            });
        }
        self.rules.evaluate(addr, port)
    }

    /// Whether the relay accepts `port` for at least one public address (specs/06 §5.4).
    pub fn allows_port_somewhere(&self, port: u16) -> bool {
        self.rules.public_witness(port).is_some()
    }

    /// The summary the relay puts in its descriptor for `family` (specs/06 §7).
    pub fn summary(&self, family: AddressFamily) -> PolicySummary {
        summary::summarize(&self.rules, family)
    }
}

/// The decision for one connection and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<'p> {
    /// Accept or reject.
    pub decision: Decision,
    /// The rule that decided, or the default.
    pub reason: Reason<'p>,
}

/// What decided a [`Verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason<'p> {
    /// A rule of the policy file.
    Rule(RuleRef<'p>),
    /// The reject-private prelude (specs/06 §6).
    Prelude(PreludeRule),
    /// No rule matched: rejected by default (specs/06 §5.3).
    NoRuleMatched,
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule(r) => write!(f, "{} line {}: {}", r.source_name, r.line, r.text),
            Reason::Prelude(p) => {
                let what = match p.kind {
                    PreludeKind::Private => "is private",
                    PreludeKind::Multicast => "is multicast",
                    PreludeKind::SpecialPurpose => "is special-purpose",
                    PreludeKind::EmbedsNonPublic => "embeds a non-public IPv4 address",
                    PreludeKind::OwnAddress => "is this relay's own address",
                };
                if p.kind == PreludeKind::OwnAddress {
                    write!(f, "reject-private default: {} {what}", p.prefix.network())
                } else {
                    write!(f, "reject-private default: {} {what}", p.prefix)
                }
            }
            Reason::NoRuleMatched => f.write_str("no rule matched: rejected by default"),
        }
    }
}

/// A rule of a policy file, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef<'p> {
    /// The file name given to the parser.
    pub source_name: &'p str,
    /// Line number, from 1.
    pub line: u32,
    /// The rule's text, without comment.
    pub text: &'p str,
}

/// A rule of the reject-private prelude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreludeRule {
    /// The refused addresses.
    pub prefix: IpPrefix,
    /// Why they are refused.
    pub kind: PreludeKind,
}

/// Rules in evaluation order, with the source lines they came from.
#[derive(Clone, Debug)]
pub(crate) struct RuleList {
    source_name: String,
    lines: Vec<SourceLine>,
    pub(crate) rules: Vec<Rule>,
}

impl RuleList {
    /// First match wins; no match is a reject. specs/06 §5.
    fn evaluate(&self, addr: IpAddr, port: u16) -> Verdict<'_> {
        self.evaluate_where(addr, port, |_| true)
    }

    /// As `evaluate`, over the rules `considered` keeps.
    fn evaluate_where(
        &self,
        addr: IpAddr,
        port: u16,
        considered: impl Fn(&Rule) -> bool,
    ) -> Verdict<'_> {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| considered(r) && r.matches(addr, port))
        else {
            return Verdict {
                decision: Decision::Reject,
                reason: Reason::NoRuleMatched,
            };
        };
        let reason = match rule.origin {
            Origin::Line(i) => match self.lines.get(i) {
                Some(line) => Reason::Rule(RuleRef {
                    source_name: &self.source_name,
                    line: line.number,
                    text: &line.text,
                }),
                // Unreachable by construction: every Line origin indexes `lines`.
                None => Reason::NoRuleMatched,
            },
            Origin::Prelude(kind) => Reason::Prelude(PreludeRule {
                prefix: rule.prefix,
                kind,
            }),
        };
        Verdict {
            decision: rule.decision,
            reason,
        }
    }

    /// A public address the rules accept on `port`, IPv4 first, if there is one. specs/06 §5.4.
    pub(crate) fn public_witness(&self, port: u16) -> Option<IpAddr> {
        AddressFamily::ALL
            .into_iter()
            .find_map(|family| self.public_witness_in(family, port))
    }

    /// A public address of `family` that the rules accept on `port`, if there is one.
    ///
    /// Walks the rules that match `port` in order, keeping the prefixes already decided (and
    /// the non-public ones) as "covered"; an accept rule yields a witness if part of its prefix
    /// is still uncovered.
    pub(crate) fn public_witness_in(&self, family: AddressFamily, port: u16) -> Option<IpAddr> {
        let mut covered: Vec<IpPrefix> = non_public(family).collect();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.prefix.family() == family && r.ports.contains(port))
        {
            if rule.decision == Decision::Accept
                && let Some(addr) = uncovered_address(rule.prefix, &covered)
            {
                return Some(addr);
            }
            if rule.prefix.is_any() {
                return None; // everything of this family is decided
            }
            covered.push(rule.prefix);
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(text: &str) -> ExitPolicy {
        ExitPolicy::parse("t.policy", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const A: Decision = Decision::Accept;
    const R: Decision = Decision::Reject;

    /// What decided: `Some(line)` for a file rule, `None` for the default reject.
    type Case = (
        &'static str,
        &'static str,
        u16,
        Decision,
        Option<u32>,
        &'static str,
    );

    /// The table of specs/06 §5 against Tor's semantics. Each case: policy text, address, port,
    /// expected decision, deciding line (None = default reject), and the rule of Tor's it
    /// checks.
    const CASES: &[Case] = &[
        // --- first match wins, default reject --------------------------------------------
        (
            "accept *:80\nreject *:*",
            "1.1.1.1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: \"Policies are considered first to last, and the first match wins\"",
        ),
        (
            "accept *:80\nreject *:*",
            "1.1.1.1",
            81,
            R,
            Some(2),
            "tor(1) ExitPolicy: first match wins; reject *:* catches the rest",
        ),
        (
            "reject *:80\naccept *:80",
            "1.1.1.1",
            80,
            R,
            Some(1),
            "tor(1) ExitPolicy: first match wins even if a later rule differs",
        ),
        (
            "accept 18.7.22.69:*\nreject 18.0.0.0/8:*\naccept *:*",
            "18.7.22.69",
            22,
            A,
            Some(1),
            "tor(1) ExitPolicy example: web.mit.edu accepted before the /8 reject",
        ),
        (
            "accept 18.7.22.69:*\nreject 18.0.0.0/8:*\naccept *:*",
            "18.7.22.70",
            22,
            R,
            Some(2),
            "tor(1) ExitPolicy example: the rest of 18/8 rejected",
        ),
        (
            "accept 18.7.22.69:*\nreject 18.0.0.0/8:*\naccept *:*",
            "19.0.0.1",
            22,
            A,
            Some(3),
            "tor(1) ExitPolicy example: \"accept any other IPv4 or IPv6 traffic\"",
        ),
        (
            "accept 18.7.22.69:*\nreject 18.0.0.0/8:*\naccept *:*",
            "2001:db8::1",
            22,
            A,
            Some(3),
            "tor(1) ExitPolicy example: accept *:* also covers IPv6",
        ),
        (
            "accept *:80",
            "1.1.1.1",
            443,
            R,
            None,
            "specs/06 §5.3: no rule matched is a reject (Shallot appends reject *:*, not Tor's default policy)",
        ),
        (
            "",
            "1.1.1.1",
            80,
            R,
            None,
            "specs/06 §5.3: an empty policy rejects everything",
        ),
        (
            "# only a comment\n\n",
            "1.1.1.1",
            80,
            R,
            None,
            "specs/06 §3.1: comments and blank lines are not rules",
        ),
        (
            "accept *:*",
            "1.1.1.1",
            0,
            R,
            None,
            "tor's parse_port_range: '*' is 1-65535, so port 0 matches no rule",
        ),
        // --- ports ----------------------------------------------------------------------
        (
            "accept *:80-81",
            "1.1.1.1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: PORT may be FROM_PORT-TO_PORT (inclusive low end)",
        ),
        (
            "accept *:80-81",
            "1.1.1.1",
            81,
            A,
            Some(1),
            "tor(1) ExitPolicy: port interval includes TO_PORT",
        ),
        (
            "accept *:80-81",
            "1.1.1.1",
            82,
            R,
            None,
            "tor(1) ExitPolicy: port interval ends at TO_PORT",
        ),
        (
            "accept *:80-81",
            "1.1.1.1",
            79,
            R,
            None,
            "tor(1) ExitPolicy: port interval starts at FROM_PORT",
        ),
        (
            "accept 1.1.1.1",
            "1.1.1.1",
            65535,
            A,
            Some(1),
            "tor(1) ExitPolicy: \"If PORT is omitted, that means *\"",
        ),
        (
            "accept *:*",
            "1.1.1.1",
            1,
            A,
            Some(1),
            "tor's parse_port_range: '*' starts at port 1",
        ),
        (
            "accept *:*",
            "1.1.1.1",
            65535,
            A,
            Some(1),
            "tor's parse_port_range: '*' ends at port 65535",
        ),
        (
            "accept *:",
            "1.1.1.1",
            8080,
            A,
            Some(1),
            "tor's parse_port_range: an empty port list means '*'",
        ),
        (
            "accept *:0-1024",
            "1.1.1.1",
            1,
            A,
            Some(1),
            "tor's parse_port_range: a low end of 0 is raised to 1",
        ),
        (
            "accept *:0\naccept *:1\nreject *:*",
            "1.1.1.1",
            1,
            A,
            Some(2),
            "tor's parse_port_range: port 0 alone is the range 1-0, which matches nothing",
        ),
        (
            "accept *:65535",
            "1.1.1.1",
            65535,
            A,
            Some(1),
            "tor's parse_port_range: 65535 is a valid port",
        ),
        (
            "accept *:080",
            "1.1.1.1",
            80,
            A,
            Some(1),
            "tor's tor_parse_long: leading zeros are decimal",
        ),
        // --- IPv4 addresses and masks ---------------------------------------------------
        (
            "accept 1.2.3.4:*",
            "1.2.3.4",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: \"If /MASK is omitted then this policy just applies to the host given\"",
        ),
        (
            "accept 1.2.3.4:*",
            "1.2.3.5",
            80,
            R,
            None,
            "tor(1) ExitPolicy: a host rule does not match its neighbour",
        ),
        (
            "reject 10.0.0.0/8:*\naccept *:*",
            "10.255.255.255",
            80,
            R,
            Some(1),
            "tor's tor_addr_parse_mask_ports: /8 covers the last address of the net",
        ),
        (
            "reject 10.0.0.0/8:*\naccept *:*",
            "11.0.0.0",
            80,
            A,
            Some(2),
            "tor's tor_addr_parse_mask_ports: /8 ends at the net's edge",
        ),
        (
            "reject 172.16.0.0/12\naccept *:*",
            "172.31.0.1",
            80,
            R,
            Some(1),
            "tor's addr_mask_get_bits: a /12 spans 172.16-172.31",
        ),
        (
            "reject 172.16.0.0/12\naccept *:*",
            "172.32.0.1",
            80,
            A,
            Some(2),
            "tor's addr_mask_get_bits: 172.32 is outside 172.16/12",
        ),
        (
            "reject 10.0.0.0/255.0.0.0:*\naccept *:*",
            "10.1.2.3",
            80,
            R,
            Some(1),
            "tor's tor_addr_parse_mask_ports: IPv4 dotted masks are allowed",
        ),
        (
            "reject 192.168.0.0/255.255.0.0\naccept *:*",
            "192.169.0.1",
            80,
            A,
            Some(2),
            "tor's tor_addr_parse_mask_ports: a dotted mask is a prefix length",
        ),
        (
            "reject 10.1.2.3/8:*\naccept *:*",
            "10.200.0.1",
            80,
            R,
            Some(1),
            "tor's tor_addr_compare_masked: host bits beyond the mask are ignored",
        ),
        (
            "accept 0.0.0.0/0:443",
            "8.8.8.8",
            443,
            A,
            Some(1),
            "tor's tor_addr_parse_mask_ports: 0.0.0.0/0 is every IPv4 address",
        ),
        (
            "accept 0.0.0.0/0:443",
            "2001:db8::1",
            443,
            R,
            None,
            "stem/tor #16103: 0.0.0.0/0 is IPv4 only, not IPv6",
        ),
        (
            "accept 1.2.3.4/32:80",
            "1.2.3.4",
            80,
            A,
            Some(1),
            "tor's tor_addr_parse_mask_ports: /32 is one IPv4 host",
        ),
        (
            "accept 1.2.3.4:80",
            "::ffff:1.2.3.4",
            80,
            R,
            None,
            "tor's compare_known_tor_addr_to_addr_policy: CMP_EXACT, IPv4-mapped IPv6 is not IPv4",
        ),
        (
            "accept 010.0.0.1:80",
            "10.0.0.1",
            80,
            A,
            Some(1),
            "tor's tor_inet_aton: leading zeros in an octet are decimal",
        ),
        // --- IPv6 addresses and masks ---------------------------------------------------
        (
            "accept [2001:db8::1]:443",
            "2001:db8::1",
            443,
            A,
            Some(1),
            "tor(1) ExitPolicy: IPv6 addresses are written in brackets",
        ),
        (
            "accept [2001:db8::1]:443",
            "2001:db8::2",
            443,
            R,
            None,
            "tor's tor_addr_parse_mask_ports: no mask is /128",
        ),
        (
            "reject6 [FC00::]/7:*\naccept *:*",
            "fdff::1",
            80,
            R,
            Some(1),
            "tor(1) ExitPolicy: \"reject6 [FC00::]/7:*\" rejects the 7-bit prefix of FC00::",
        ),
        (
            "reject6 [FC00::]/7:*\naccept *:*",
            "fe00::1",
            80,
            A,
            Some(2),
            "tor(1) ExitPolicy: FE00:: is outside [FC00::]/7",
        ),
        (
            "accept6 [C000::]/3:*",
            "dfff::1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: \"accept6 [C000::]/3:*\" accepts the 3-bit prefix of C000::",
        ),
        (
            "accept6 [C000::]/3:*",
            "bfff::1",
            80,
            R,
            None,
            "tor(1) ExitPolicy: BFFF:: is outside [C000::]/3",
        ),
        (
            "accept [2001:db8::]/32:80",
            "2001:db8:ffff::1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: accept (without 6) takes IPv6 addresses too",
        ),
        (
            "accept [2001:db8::]/32:80",
            "1.2.3.4",
            80,
            R,
            None,
            "tor's CMP_EXACT: an IPv6 rule never matches IPv4",
        ),
        (
            "accept [::]/0:80",
            "2001:db8::1",
            80,
            A,
            Some(1),
            "tor's tor_addr_parse_mask_ports: [::]/0 is every IPv6 address",
        ),
        (
            "accept [::]/0:80",
            "1.1.1.1",
            80,
            R,
            None,
            "stem/tor #16103: [::]/0 is IPv6 only",
        ),
        (
            "accept [::ffff:1.2.3.4]/128:80",
            "::ffff:1.2.3.5",
            80,
            A,
            Some(1),
            "tor's tor_addr_parse_mask_ports: /N on an IPv4-mapped address becomes 96 + N % 32 (so /128 is /96)",
        ),
        (
            "accept [::ffff:1.2.3.4]/120:80",
            "::ffff:1.2.4.0",
            80,
            R,
            None,
            "tor's tor_addr_parse_mask_ports: IPv4-mapped /120 stays /120",
        ),
        // --- *, *4, *6, accept6/reject6 -------------------------------------------------
        (
            "accept *:80",
            "1.1.1.1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: \"*\" expands to an IPv4 wildcard rule ...",
        ),
        (
            "accept *:80",
            "2001:db8::1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: ... and an IPv6 wildcard rule",
        ),
        (
            "accept *4:80",
            "1.1.1.1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: \"*4\" is the IPv4 wildcard",
        ),
        (
            "accept *4:80",
            "2001:db8::1",
            80,
            R,
            None,
            "tor(1) ExitPolicy: \"*4\" does not match IPv6",
        ),
        (
            "accept *6:80",
            "2001:db8::1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy: \"*6\" is the IPv6 wildcard",
        ),
        (
            "accept *6:80",
            "1.1.1.1",
            80,
            R,
            None,
            "tor(1) ExitPolicy: \"*6\" does not match IPv4",
        ),
        (
            "accept6 *:80",
            "2001:db8::1",
            80,
            A,
            Some(1),
            "tor's router_parse_addr_policy: accept6 * is an IPv6 wildcard only",
        ),
        (
            "accept6 *:80",
            "1.1.1.1",
            80,
            R,
            None,
            "tor's router_parse_addr_policy: accept6 * does not match IPv4",
        ),
        (
            "reject6 *:80\naccept *:*",
            "1.1.1.1",
            80,
            A,
            Some(2),
            "tor's router_parse_addr_policy: reject6 * leaves IPv4 alone",
        ),
        (
            "accept6 1.2.3.4:80\nreject *:*",
            "1.2.3.4",
            80,
            R,
            Some(2),
            "tor(1) ExitPolicy: \"Using an IPv4 address with accept6 or reject6 is ignored\"",
        ),
        (
            "reject6 *4:*\naccept *:*",
            "1.1.1.1",
            25,
            A,
            Some(2),
            "tor's router_parse_addr_policy_item_from_string: an IPv4 wildcard under reject6 is ignored",
        ),
        (
            "accept6 [2001:db8::1]:22",
            "2001:db8::1",
            22,
            A,
            Some(1),
            "tor(1) ExitPolicy: accept6 takes bracketed IPv6 addresses",
        ),
        (
            "accept *4:*\nreject *6:*",
            "2001:db8::1",
            443,
            R,
            Some(2),
            "tor(1) ExitPolicy: different IPv4 and IPv6 rules with *4 and *6",
        ),
        // --- private ---------------------------------------------------------------------
        (
            "reject private:*\naccept *:*",
            "10.1.1.1",
            80,
            R,
            Some(1),
            "tor's private_nets: 10.0.0.0/8",
        ),
        (
            "reject private:*\naccept *:*",
            "172.20.0.1",
            80,
            R,
            Some(1),
            "tor's private_nets: 172.16.0.0/12",
        ),
        (
            "reject private:*\naccept *:*",
            "192.168.1.1",
            80,
            R,
            Some(1),
            "tor's private_nets: 192.168.0.0/16",
        ),
        (
            "reject private:*\naccept *:*",
            "127.0.0.1",
            80,
            R,
            Some(1),
            "tor's private_nets: 127.0.0.0/8",
        ),
        (
            "reject private:*\naccept *:*",
            "169.254.3.4",
            80,
            R,
            Some(1),
            "tor's private_nets: 169.254.0.0/16",
        ),
        (
            "reject private:*\naccept *:*",
            "0.1.2.3",
            80,
            R,
            Some(1),
            "tor's private_nets: 0.0.0.0/8",
        ),
        (
            "reject private:*\naccept *:*",
            "::1",
            80,
            R,
            Some(1),
            "tor's private_nets: [::]/8 (loopback)",
        ),
        (
            "reject private:*\naccept *:*",
            "fd12::1",
            80,
            R,
            Some(1),
            "tor's private_nets: [fc00::]/7",
        ),
        (
            "reject private:*\naccept *:*",
            "fe80::1",
            80,
            R,
            Some(1),
            "tor's private_nets: [fe80::]/10",
        ),
        (
            "reject private:*\naccept *:*",
            "fec0::1",
            80,
            R,
            Some(1),
            "tor's private_nets: [fec0::]/10",
        ),
        (
            "reject private:*\naccept *:*",
            "ff02::1",
            80,
            R,
            Some(1),
            "tor's private_nets: [ff00::]/8",
        ),
        (
            "reject private:*\naccept *:*",
            "::ffff:10.0.0.1",
            80,
            R,
            Some(1),
            "tor's private_nets: [::]/8 covers IPv4-mapped addresses",
        ),
        (
            "reject private:*\naccept *:*",
            "172.32.0.1",
            80,
            A,
            Some(2),
            "tor's private_nets: 172.32/16 is public",
        ),
        (
            "reject private:*\naccept *:*",
            "224.0.0.1",
            80,
            A,
            Some(2),
            "tor's private_nets: IPv4 multicast is not in Tor's private list",
        ),
        (
            "reject private:*\naccept *:*",
            "1.1.1.1",
            80,
            A,
            Some(2),
            "tor's private_nets: 1.1.1.1 is public",
        ),
        (
            "reject private:25\naccept *:*",
            "10.0.0.1",
            80,
            A,
            Some(2),
            "tor's router_parse_addr_policy_private: private takes a port",
        ),
        (
            "reject6 private:*\naccept *:*",
            "10.0.0.1",
            80,
            R,
            Some(1),
            "tor(1) ExitPolicy: \"private\" always produces IPv4 and IPv6 rules, even with accept6/reject6",
        ),
        (
            "accept 127.0.0.1:80\nreject private:*\naccept *:*",
            "127.0.0.1",
            80,
            A,
            Some(1),
            "tor(1) ExitPolicy example: \"accept 127.0.0.1:80,reject private:*\"",
        ),
        (
            "accept 127.0.0.1:80\nreject private:*\naccept *:*",
            "127.0.0.1",
            81,
            R,
            Some(2),
            "tor(1) ExitPolicy example: other loopback ports rejected",
        ),
        // --- comments and layout ---------------------------------------------------------
        (
            "accept *:80 # web\nreject *:*",
            "1.1.1.1",
            80,
            A,
            Some(1),
            "tor(1) configuration file format: \"Anything after a # character is treated as a comment\"",
        ),
        (
            "\t  accept\t*:80  ",
            "1.1.1.1",
            80,
            A,
            Some(1),
            "specs/06 §3.2: blanks around and between tokens",
        ),
        (
            "# header\n\naccept *:443\nreject *:*",
            "1.1.1.1",
            443,
            A,
            Some(3),
            "specs/06 §3.1: lines count from 1, comments included",
        ),
    ];

    #[test]
    fn table_against_tor_semantics() {
        assert!(
            CASES.len() >= 60,
            "every rule of specs/06 needs its cases: at least 60"
        );
        for (i, (text, addr, port, want, line, why)) in CASES.iter().enumerate() {
            let p = policy(text);
            let verdict = p.evaluate(ip(addr), *port);
            let got_line = match verdict.reason {
                Reason::Rule(r) => Some(r.line),
                Reason::NoRuleMatched => None,
                other => panic!("case {i}: unexpected reason {other:?}"),
            };
            assert_eq!(
                (verdict.decision, got_line),
                (*want, *line),
                "case {i} ({why}): {text:?} for {addr}:{port}"
            );
        }
    }

    fn relay(text: &str, reject_private: bool, own: &[&str]) -> RelayExitPolicy {
        let own: Vec<IpAddr> = own.iter().map(|a| ip(a)).collect();
        RelayExitPolicy::new(
            policy(text),
            &ExitPolicyConfig {
                reject_private,
                private_allowed: Vec::new(),
            },
            &own,
        )
    }

    #[test]
    fn relay_prelude_refuses_private_multicast_unspecified_and_own_addresses() {
        let r = relay("accept *:*", true, &["203.0.113.5", "2001:db8::5"]);
        for (addr, net) in [
            ("10.0.0.1", "10.0.0.0/8"),
            ("127.0.0.1", "127.0.0.0/8"),
            ("169.254.1.1", "169.254.0.0/16"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("224.0.0.1", "224.0.0.0/4"),
            ("239.1.2.3", "224.0.0.0/4"),
            ("::", "[::]/8"),
            ("::1", "[::]/8"),
            ("fe80::1", "[fe80::]/10"),
            ("ff02::1", "[ff00::]/8"),
        ] {
            let v = r.evaluate(ip(addr), 443);
            assert_eq!(v.decision, Decision::Reject, "{addr}");
            match v.reason {
                Reason::Prelude(p) => assert_eq!(p.prefix.to_string(), net, "{addr}"),
                other => panic!("{addr}: {other:?}"),
            }
        }
        let v = r.evaluate(ip("203.0.113.5"), 443);
        assert_eq!(
            v.reason.to_string(),
            "reject-private default: 203.0.113.5 is this relay's own address"
        );
        assert_eq!(
            r.evaluate(ip("2001:db8::5"), 443).decision,
            Decision::Reject
        );
        assert_eq!(
            r.evaluate(ip("203.0.113.6"), 443).decision,
            Decision::Accept
        );
        assert_eq!(
            r.evaluate(ip("10.0.0.1"), 443).reason.to_string(),
            "reject-private default: 10.0.0.0/8 is private"
        );
    }

    /// One address of every range of IANA's special-purpose registries that the prelude
    /// refuses (specs/06 §4.2), and the prefix that refuses it.
    const SPECIAL_PURPOSE_CASES: &[(&str, &str)] = &[
        ("100.64.0.1", "100.64.0.0/10"),
        ("100.127.255.254", "100.64.0.0/10"),
        ("192.0.0.8", "192.0.0.0/24"),
        ("192.88.99.1", "192.88.99.0/24"),
        ("198.18.0.1", "198.18.0.0/15"),
        ("198.19.255.255", "198.18.0.0/15"),
        ("240.0.0.1", "240.0.0.0/4"),
        ("255.255.255.255", "240.0.0.0/4"),
        ("100::1", "[100::]/64"),
        ("2001::1", "[2001::]/32"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "[2001::]/32"),
        ("2001:2::1", "[2001:2::]/48"),
        ("5f00::1", "[5f00::]/16"),
        // IPv4-mapped and NAT64 (RFC 6052, RFC 8215) addresses lie inside Tor's [::]/8.
        ("::ffff:10.0.0.1", "[::]/8"),
        ("64:ff9b::a00:1", "[::]/8"),
        ("64:ff9b::6440:1", "[::]/8"),
        ("64:ff9b:1::1", "[::]/8"),
        ("fd12:3456::1", "[fc00::]/7"),
        ("fe80::1", "[fe80::]/10"),
        ("169.254.169.254", "169.254.0.0/16"),
        ("224.0.0.251", "224.0.0.0/4"),
        ("ff05::1:3", "[ff00::]/8"),
        // 6to4 (RFC 3056) addresses whose embedded IPv4 address is not public.
        ("2002:a00:1::1", "[2002:a00::]/24"),
        ("2002:7f00:1::1", "[2002:7f00::]/24"),
        ("2002:ac10:1::1", "[2002:ac10::]/28"),
        ("2002:a9fe:a9fe::1", "[2002:a9fe::]/32"),
        ("2002:6440:1::1", "[2002:6440::]/26"),
        ("2002:c612:1::1", "[2002:c612::]/31"),
        ("2002:e000:1::1", "[2002:e000::]/20"),
        ("2002:ffff:ffff::1", "[2002:f000::]/20"),
        ("2002::1", "[2002::]/24"),
    ];

    #[test]
    fn prelude_refuses_the_special_purpose_registries() {
        let r = relay("accept *:*", true, &[]);
        for &(addr, net) in SPECIAL_PURPOSE_CASES {
            let v = r.evaluate(ip(addr), 80);
            assert_eq!(v.decision, Decision::Reject, "{addr} was accepted");
            match v.reason {
                Reason::Prelude(p) => assert_eq!(p.prefix.to_string(), net, "{addr}"),
                other => panic!("{addr}: {other:?}"),
            }
            assert!(!crate::addr::is_public(ip(addr)), "{addr} counts as public");
        }
        // The neighbours, and NAT64 and 6to4 addresses of public IPv4 addresses, are public.
        for addr in [
            "100.63.255.255",
            "100.128.0.0",
            "192.0.1.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2002:101:101::1",
            "2001:1::1",
            "2001:4860::8888",
            "2a00:1450::1",
        ] {
            assert_eq!(
                r.evaluate(ip(addr), 80).decision,
                Decision::Accept,
                "{addr}"
            );
        }
        // Tests on loopback and LANs turn the prelude off, and then the file decides.
        let open = relay("accept *:*", false, &[]);
        for &(addr, _) in SPECIAL_PURPOSE_CASES {
            assert_eq!(
                open.evaluate(ip(addr), 80).decision,
                Decision::Accept,
                "{addr}"
            );
        }
    }

    #[test]
    fn prelude_comes_before_the_files_rules() {
        // tor(1) ExitPolicy: private addresses are rejected "at the beginning of your exit policy".
        let r = relay("accept 10.0.0.1:80\nreject *:*", true, &[]);
        assert_eq!(r.evaluate(ip("10.0.0.1"), 80).decision, Decision::Reject);
    }

    #[test]
    fn private_allowed_ranges_are_left_to_the_file_and_the_rest_stays_refused() {
        // A simulated internet in 10.200.0.0/16: its exits may reach it, and nothing else
        // private (loopback, the rest of 10/8, the relay's own address inside the range).
        let config = ExitPolicyConfig {
            reject_private: true,
            private_allowed: vec!["10.200.0.0/16".parse().unwrap()],
        };
        let r = RelayExitPolicy::new(
            policy("reject *:25\naccept *:*"),
            &config,
            &[ip("10.200.0.9")],
        );
        assert_eq!(r.evaluate(ip("10.200.0.2"), 80).decision, Decision::Accept);
        // The file still decides inside the range.
        assert_eq!(r.evaluate(ip("10.200.0.2"), 25).decision, Decision::Reject);
        for (addr, kind) in [
            ("10.200.0.9", PreludeKind::OwnAddress),
            ("10.1.0.2", PreludeKind::Private),
            ("127.0.0.1", PreludeKind::Private),
        ] {
            let v = r.evaluate(ip(addr), 80);
            assert_eq!(v.decision, Decision::Reject, "{addr}");
            assert!(
                matches!(v.reason, Reason::Prelude(p) if p.kind == kind),
                "{addr}: {:?}",
                v.reason
            );
        }
        // Without the prelude there is nothing to exempt from: the file alone decides.
        let off = ExitPolicyConfig {
            reject_private: false,
            ..config
        };
        let r = RelayExitPolicy::new(policy("accept *:*"), &off, &[]);
        assert_eq!(r.evaluate(ip("127.0.0.1"), 80).decision, Decision::Accept);
    }

    #[test]
    fn prefixes_parse_from_config_text() {
        let p: IpPrefix = "10.200.0.0/16".parse().unwrap();
        assert_eq!(p.to_string(), "10.200.0.0/16");
        let p: IpPrefix = "[fd00::]/8".parse().unwrap();
        assert_eq!(p.to_string(), "[fd00::]/8");
        let p: IpPrefix = "192.0.2.1".parse().unwrap();
        assert_eq!(p.prefix_len(), 32);
        for bad in [
            "10.200.0.1/16",
            "10.0.0.0/33",
            "nonsense/8",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
        let config: ExitPolicyConfig =
            toml::from_str("private_allowed = [\"10.200.0.0/16\"]").unwrap();
        assert_eq!(config.private_allowed.len(), 1);
        assert!(
            toml::from_str::<ExitPolicyConfig>("private_allowed = [\"10.200.0.1/16\"]").is_err()
        );
    }

    #[test]
    fn reject_private_false_leaves_only_the_files_rules() {
        // tor(1) ExitPolicyRejectPrivate 0; the local test network needs it.
        let r = relay("accept 127.0.0.1:9000\nreject *:*", false, &["127.0.0.1"]);
        let v = r.evaluate(ip("127.0.0.1"), 9000);
        assert_eq!(v.decision, Decision::Accept);
        assert_eq!(
            v.reason.to_string(),
            "t.policy line 1: accept 127.0.0.1:9000"
        );
        let v = r.evaluate(ip("127.0.0.1"), 9001);
        assert_eq!(
            (v.decision, v.reason.to_string()),
            (Decision::Reject, "t.policy line 2: reject *:*".to_owned())
        );
    }

    #[test]
    fn reasons_display() {
        let p = policy("# c\naccept *:443 # https\nreject *:*");
        assert_eq!(
            p.evaluate(ip("1.1.1.1"), 443).reason.to_string(),
            "t.policy line 2: accept *:443"
        );
        let p = policy("accept *:443");
        assert_eq!(
            p.evaluate(ip("1.1.1.1"), 80).reason.to_string(),
            "no rule matched: rejected by default"
        );
    }

    #[test]
    fn port_only_question() {
        let p = policy("reject *:25\naccept *:*");
        assert!(!p.allows_port_somewhere(25));
        assert!(p.allows_port_somewhere(80));
        assert!(!p.allows_port_somewhere(0));
        // Only private addresses accepted: no public address is.
        let p = policy("accept private:80\nreject *:*");
        assert!(!p.allows_port_somewhere(80));
        // One public host is enough.
        let p = policy("accept 1.2.3.4:25\nreject *:*");
        assert!(p.allows_port_somewhere(25));
        // IPv6 only.
        let p = policy("reject *4:*\naccept *6:22");
        // [::]/8 is private and [100::]/64 discard-only, so the first public IPv6 address is
        // 100:0:0:1::.
        assert_eq!(p.rules.public_witness(22), Some(ip("100:0:0:1::")));
        // An accept shadowed by earlier rules for every public address.
        let p = policy("reject 0.0.0.0/1:80\nreject 128.0.0.0/1:80\naccept *4:80\nreject *:*");
        assert!(!p.allows_port_somewhere(80));
        // ... but not if a sliver is left.
        let p = policy("reject 0.0.0.0/1:80\nreject 128.0.0.0/2:80\naccept *4:80\nreject *:*");
        // 192.0.0.0/24 is special-purpose.
        assert_eq!(p.rules.public_witness(80), Some(ip("192.0.1.0")));
        // The relay prelude counts: only the relay's own address is accepted by the file.
        let r = relay("accept 203.0.113.5:80\nreject *:*", true, &["203.0.113.5"]);
        assert!(!r.allows_port_somewhere(80));
    }

    fn arb_public_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|b| IpAddr::V4(std::net::Ipv4Addr::from_bits(b))),
            any::<u128>().prop_map(|b| IpAddr::V6(std::net::Ipv6Addr::from_bits(b))),
            // Addresses at the edges of the patterns above.
            prop::sample::select(vec![
                "1.2.3.4",
                "1.2.3.255",
                "9.255.255.255",
                "12.0.0.0",
                "127.255.255.255",
                "128.0.0.0",
                "191.255.255.255",
                "192.0.0.0",
                "223.255.255.255",
                "255.255.255.255",
                "2001:db8::1",
                "2001:db8::",
                "1fff:ffff::",
                "2000::",
                "3fff::1",
                "8000::",
                "fbff::1",
                "fe00::",
            ])
            .prop_map(ip),
        ]
        .prop_filter("public only", |a| crate::addr::is_public(*a))
    }

    proptest! {
        /// specs/06 §5.4: the port-only question agrees with the full evaluation. When it says
        /// yes, its witness is a public address the policy accepts; when it says no, no public
        /// address we try is accepted.
        #[test]
        fn port_only_question_agrees_with_evaluate(
            text in crate::testutil::arb_policy(),
            addrs in proptest::collection::vec(arb_public_addr(), 1..24),
            reject_private in any::<bool>(),
        ) {
            let file = policy(&text);
            let relay = RelayExitPolicy::new(file.clone(), &ExitPolicyConfig { reject_private, private_allowed: Vec::new() }, &[]);
            for &port in crate::testutil::PROBE_PORTS {
                let witness = file.rules.public_witness(port);
                prop_assert_eq!(file.allows_port_somewhere(port), witness.is_some());
                if let Some(w) = witness {
                    prop_assert!(crate::addr::is_public(w));
                    prop_assert_eq!(file.evaluate(w, port).decision, Decision::Accept, "{} {}", w, port);
                    // The prelude only refuses non-public addresses here (no own addresses).
                    prop_assert_eq!(relay.evaluate(w, port).decision, Decision::Accept);
                } else {
                    for &a in &addrs {
                        prop_assert_eq!(file.evaluate(a, port).decision, Decision::Reject, "{} {}", a, port);
                    }
                }
                prop_assert_eq!(relay.allows_port_somewhere(port), file.allows_port_somewhere(port));
            }
        }
    }
}
