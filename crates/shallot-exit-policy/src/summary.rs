//! The port-list summary of a policy (specs/06 §7), after Tor's `policy_summarize` and the
//! dir-spec "p" line: `accept PORTLIST` or `reject PORTLIST`.

use std::fmt;

use crate::addr::{AddressFamily, non_public};
use crate::err::SummaryError;
use crate::policy::RuleList;
use crate::rule::{Decision, PortRange, Rule};

/// The longest summary, in bytes, as Tor's `MAX_EXITPOLICY_SUMMARY_LEN`. specs/06 §7.2.
pub const MAX_SUMMARY_LEN: usize = 1000;

/// A port is summarized as accepted only if the public addresses rejected before the first
/// wildcard accept are at most 1/2^7 of the family's space: 2^25 for IPv4, Tor's
/// `REJECT_CUTOFF_COUNT`. specs/06 §7.1.
const REJECT_CUTOFF_SHIFT: u8 = 7;

/// Which ports a policy accepts "for most addresses" (specs/06 §7): what a client checks before
/// it knows the address. Never claims a port that the full policy rejects for every public
/// address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicySummary {
    /// `Accept`: the listed ports are accepted, all others rejected; `Reject`: the reverse.
    decision: Decision,
    /// Ascending, disjoint, non-adjacent, non-empty.
    ranges: Vec<PortRange>,
}

impl PolicySummary {
    /// The summary that accepts no port (`reject 1-65535`).
    pub fn reject_all() -> Self {
        PolicySummary {
            decision: Decision::Reject,
            ranges: vec![PortRange::ALL],
        }
    }

    /// Whether the summary says `port` is accepted. Port 0 never is.
    pub fn allows_port(&self, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        let i = self.ranges.partition_point(|r| r.max() < port);
        let listed = self.ranges.get(i).is_some_and(|r| r.contains(port));
        match self.decision {
            Decision::Accept => listed,
            Decision::Reject => !listed,
        }
    }

    /// Whether no port is accepted.
    pub fn accepts_nothing(&self) -> bool {
        self.decision == Decision::Reject && self.ranges == [PortRange::ALL]
    }

    /// Whether the port list is of accepted (`Accept`) or rejected (`Reject`) ports.
    pub fn list_kind(&self) -> Decision {
        self.decision
    }

    /// The listed port ranges, ascending.
    pub fn ranges(&self) -> &[PortRange] {
        &self.ranges
    }

    /// The canonical text, e.g. `accept 80,443` (specs/06 §7.2). Same as `to_string()`.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// Decodes a summary from a peer. Accepts only the canonical form of specs/06 §7.3, so
    /// `decode(s)?.encode() == s`. Never panics.
    pub fn decode(s: &str) -> Result<Self, SummaryError> {
        if s.len() > MAX_SUMMARY_LEN {
            return Err(SummaryError::TooLong {
                len: s.len(),
                max: MAX_SUMMARY_LEN,
            });
        }
        let (decision, list) = if let Some(list) = s.strip_prefix("accept ") {
            (Decision::Accept, list)
        } else if let Some(list) = s.strip_prefix("reject ") {
            (Decision::Reject, list)
        } else {
            return Err(SummaryError::BadKeyword);
        };
        let mut ranges = Vec::new();
        let mut next_min: u32 = 1;
        for (index, entry) in list.split(',').enumerate() {
            let range = decode_entry(entry).ok_or(SummaryError::BadEntry { index })?;
            if u32::from(range.min()) < next_min {
                return Err(SummaryError::NotCanonical { index });
            }
            // specs/06 §7.3: the next entry starts at least two ports later (no touching).
            next_min = u32::from(range.max()) + 2;
            ranges.push(range);
        }
        Ok(PolicySummary { decision, ranges })
    }

    /// As [`PolicySummary::decode`], for bytes off the wire.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, SummaryError> {
        if bytes.len() > MAX_SUMMARY_LEN {
            return Err(SummaryError::TooLong {
                len: bytes.len(),
                max: MAX_SUMMARY_LEN,
            });
        }
        let s = std::str::from_utf8(bytes).map_err(|_| SummaryError::NotUtf8)?;
        Self::decode(s)
    }

    /// Builds the summary from the accepted ranges (ascending, disjoint, non-adjacent), as
    /// Tor's `policy_summarize` does: the shorter of the accept and reject lists (accept on a
    /// tie), and if both exceed the limit, the accept list cut at an entry boundary, which only
    /// drops accepted ports. specs/06 §7.2.
    fn from_accepted(accepted: Vec<PortRange>) -> Self {
        if accepted.is_empty() {
            return Self::reject_all();
        }
        let rejected = complement(&accepted);
        if rejected.is_empty() {
            return PolicySummary {
                decision: Decision::Accept,
                ranges: vec![PortRange::ALL],
            };
        }
        let limit = MAX_SUMMARY_LEN - "accept ".len();
        let accepted_len = list_len(&accepted);
        let rejected_len = list_len(&rejected);
        if accepted_len > limit && rejected_len > limit {
            let mut kept = Vec::new();
            let mut len = 0;
            for r in accepted {
                let add = r.to_string().len() + usize::from(!kept.is_empty());
                if len + add > limit {
                    break;
                }
                len += add;
                kept.push(r);
            }
            PolicySummary {
                decision: Decision::Accept,
                ranges: kept,
            }
        } else if rejected_len < accepted_len {
            PolicySummary {
                decision: Decision::Reject,
                ranges: rejected,
            }
        } else {
            PolicySummary {
                decision: Decision::Accept,
                ranges: accepted,
            }
        }
    }
}

impl fmt::Display for PolicySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.decision)?;
        for (i, r) in self.ranges.iter().enumerate() {
            write!(f, "{}{r}", if i == 0 { ' ' } else { ',' })?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PolicySummary {
    type Err = SummaryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s)
    }
}

/// `PORT` or `LOW-HIGH` with `LOW < HIGH`, canonical numbers only.
fn decode_entry(entry: &str) -> Option<PortRange> {
    match entry.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (canonical_port(low)?, canonical_port(high)?);
            if low < high {
                PortRange::new(low, high)
            } else {
                None
            }
        }
        None => {
            let port = canonical_port(entry)?;
            PortRange::new(port, port)
        }
    }
}

/// A port 1-65535 written without sign or leading zeros.
fn canonical_port(s: &str) -> Option<u16> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() > 5 || bytes[0] == b'0' {
        return None;
    }
    if !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.parse().ok()
}

/// The ports of 1-65535 not in `ranges` (ascending, disjoint).
fn complement(ranges: &[PortRange]) -> Vec<PortRange> {
    let mut out = Vec::new();
    let mut next: u32 = 1;
    for r in ranges {
        if u32::from(r.min()) > next
            && let Some(gap) = port_range(next, u32::from(r.min()) - 1)
        {
            out.push(gap);
        }
        next = u32::from(r.max()) + 1;
    }
    if let Some(tail) = port_range(next, 65535) {
        out.push(tail);
    }
    out
}

fn port_range(min: u32, max: u32) -> Option<PortRange> {
    PortRange::new(u16::try_from(min).ok()?, u16::try_from(max).ok()?)
}

/// The length of the comma-joined list.
fn list_len(ranges: &[PortRange]) -> usize {
    ranges.iter().map(|r| r.to_string().len()).sum::<usize>() + ranges.len().saturating_sub(1)
}

/// The summary of `rules` for `family`. specs/06 §7.1.
///
/// Ports are taken in segments over which the set of matching rules is constant, so the work is
/// proportional to the number of rules, not of ports.
pub(crate) fn summarize(rules: &RuleList, family: AddressFamily) -> PolicySummary {
    let relevant: Vec<&Rule> = rules
        .rules
        .iter()
        .filter(|r| r.prefix.family() == family && !r.ports.is_empty())
        .collect();
    let mut bounds: Vec<u32> = vec![1, 65536];
    for r in &relevant {
        bounds.push(u32::from(r.ports.min()));
        bounds.push(u32::from(r.ports.max()) + 1);
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut accepted: Vec<PortRange> = Vec::new();
    for w in bounds.windows(2) {
        let (Some(&low), Some(&next)) = (w.first(), w.get(1)) else {
            continue;
        };
        let Some(segment) = port_range(low, next - 1) else {
            continue;
        };
        let port = segment.min();
        // Tor's criterion, and the guarantee of specs/06 §7.1: some public address is accepted.
        if broadly_accepted(&relevant, family, port)
            && rules.public_witness_in(family, port).is_some()
        {
            match accepted.last_mut() {
                Some(last) if u32::from(last.max()) + 1 == u32::from(segment.min()) => {
                    if let Some(merged) = PortRange::new(last.min(), segment.max()) {
                        *last = merged;
                    }
                }
                _ => accepted.push(segment),
            }
        }
    }
    PolicySummary::from_accepted(accepted)
}

/// Tor's rule (`policy_summary_add_item`): a port is accepted if a wildcard accept matches it
/// before rejects of more than the cutoff of public addresses do. Rejects wholly inside the
/// non-public set do not count. specs/06 §7.1.
fn broadly_accepted(rules: &[&Rule], family: AddressFamily, port: u16) -> bool {
    let cutoff = 1u128 << (family.width() - REJECT_CUTOFF_SHIFT);
    let mut rejected: u128 = 0;
    for r in rules.iter().filter(|r| r.ports.contains(port)) {
        match r.decision {
            Decision::Accept if r.prefix.is_any() => return rejected <= cutoff,
            Decision::Accept => {}
            Decision::Reject => {
                if !non_public(family).any(|np| np.covers(&r.prefix)) {
                    rejected = rejected.saturating_add(r.prefix.size());
                }
            }
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::policy::{ExitPolicy, RelayExitPolicy};
    use crate::{ExitPolicyConfig, testutil};
    use proptest::prelude::*;

    const V4: AddressFamily = AddressFamily::Ipv4;
    const V6: AddressFamily = AddressFamily::Ipv6;

    fn policy(text: &str) -> ExitPolicy {
        ExitPolicy::parse("t.policy", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn summary(text: &str, family: AddressFamily) -> String {
        policy(text).summary(family).encode()
    }

    #[test]
    fn reduced_policy_summary_is_what_tor_publishes() {
        let text = include_str!("../../../configs/exit-policies/reduced.policy");
        let want = "accept 20-23,43,53,79-81,88,110,143,194,220,389,443,464-465,531,543-544,\
                    554,563,587,636,706,749,873,902-904,981,989-995,1194,1220,1293,1500,1533,\
                    1677,1723,1755,1863,2082-2083,2086-2087,2095-2096,2102-2104,3128,3389,3690,\
                    4321,4643,5050,5190,5222-5223,5228,5900,6660-6669,6679,6697,8000,8008,8074,\
                    8080,8082,8087-8088,8232-8233,8332-8333,8443,8888,9418,9999-10000,11371,\
                    19294,19638,50002,64738";
        assert_eq!(summary(text, V4), want);
        assert_eq!(summary(text, V6), want);
        // The relay prelude does not change it: private rejects are not counted.
        let relay = RelayExitPolicy::new(policy(text), &ExitPolicyConfig::default(), &[]);
        assert_eq!(relay.summary(V4).encode(), want);
    }

    #[test]
    fn tor_default_policy_summary() {
        // tor(1) ExitPolicy: the default exit policy.
        let text = "reject *:25\nreject *:119\nreject *:135-139\nreject *:445\nreject *:563\n\
                    reject *:1214\nreject *:4661-4666\nreject *:6346-6429\nreject *:6699\n\
                    reject *:6881-6999\naccept *:*";
        let want = "reject 25,119,135-139,445,563,1214,4661-4666,6346-6429,6699,6881-6999";
        assert_eq!(summary(text, V4), want);
        assert_eq!(summary(text, V6), want);
    }

    #[test]
    fn special_cases_and_families() {
        assert_eq!(summary("", V4), "reject 1-65535");
        assert_eq!(summary("reject *:*", V4), "reject 1-65535");
        assert_eq!(summary("accept *:*", V4), "accept 1-65535");
        assert_eq!(summary("accept *:80\naccept *:443", V4), "accept 80,443");
        assert_eq!(summary("accept *4:80\naccept *6:443", V4), "accept 80");
        assert_eq!(summary("accept *4:80\naccept *6:443", V6), "accept 443");
        // Shorter list wins; a tie goes to accept.
        assert_eq!(summary("accept *:1-32767", V4), "accept 1-32767");
        assert_eq!(summary("reject *:80\naccept *:*", V4), "reject 80");
    }

    #[test]
    fn tor_reject_cutoff() {
        // policies.c REJECT_CUTOFF_COUNT: up to 2^25 rejected addresses still summarize as accept.
        assert_eq!(
            summary("reject 1.0.0.0/7:80\naccept *:*", V4),
            "accept 1-65535"
        );
        assert_eq!(summary("reject 1.0.0.0/6:80\naccept *:*", V4), "reject 80");
        // Rejects inside private space do not count (Tor skips its private_nets).
        assert_eq!(
            summary("reject 10.0.0.0/8:80\nreject private:*\naccept *:*", V4),
            "accept 1-65535"
        );
        // Only wildcard accepts count: one host is not "most addresses".
        assert_eq!(
            summary("accept 1.2.3.4:25\nreject *:*", V4),
            "reject 1-65535"
        );
        // IPv6 uses the same fraction of its space.
        assert_eq!(
            summary("reject [2000::]/8:80\naccept *:*", V6),
            "accept 1-65535"
        );
        assert_eq!(summary("reject [2000::]/6:80\naccept *:*", V6), "reject 80");
    }

    #[test]
    fn never_claims_a_port_no_public_address_gets() {
        // Accepting private addresses opens nothing, and rejecting all public space closes
        // port 80 even though a wildcard accept follows.
        let text = "accept private:80\nreject 0.0.0.0/1:80\nreject 128.0.0.0/1:80\naccept *:*";
        assert_eq!(summary(text, V4), "reject 80");
    }

    #[test]
    fn decode_accepts_only_canonical_summaries() {
        for good in [
            "accept 80",
            "reject 1-65535",
            "accept 20-23,43,53,79-81",
            "accept 1,3,65535",
        ] {
            assert_eq!(
                PolicySummary::decode(good).map(|s| s.encode()),
                Ok(good.to_owned())
            );
        }
        let bad: &[(&str, SummaryError)] = &[
            ("", SummaryError::BadKeyword),
            ("accept", SummaryError::BadKeyword),
            ("Accept 80", SummaryError::BadKeyword),
            ("accept  80", SummaryError::BadEntry { index: 0 }),
            ("accept ", SummaryError::BadEntry { index: 0 }),
            ("accept 0", SummaryError::BadEntry { index: 0 }),
            ("accept 080", SummaryError::BadEntry { index: 0 }),
            ("accept 65536", SummaryError::BadEntry { index: 0 }),
            ("accept 80-80", SummaryError::BadEntry { index: 0 }),
            ("accept 90-80", SummaryError::BadEntry { index: 0 }),
            ("accept 80,", SummaryError::BadEntry { index: 1 }),
            ("accept 80,x", SummaryError::BadEntry { index: 1 }),
            ("accept +80", SummaryError::BadEntry { index: 0 }),
            ("accept 443,80", SummaryError::NotCanonical { index: 1 }),
            ("accept 80,80", SummaryError::NotCanonical { index: 1 }),
            ("accept 80,81", SummaryError::NotCanonical { index: 1 }),
            ("accept 80-90,85", SummaryError::NotCanonical { index: 1 }),
            ("accept 80\n", SummaryError::BadEntry { index: 0 }),
        ];
        for (text, want) in bad {
            assert_eq!(PolicySummary::decode(text).as_ref(), Err(want), "{text:?}");
        }
        let long = format!("accept {}", "1".repeat(MAX_SUMMARY_LEN));
        assert!(matches!(
            PolicySummary::decode(&long),
            Err(SummaryError::TooLong { .. })
        ));
        assert_eq!(
            PolicySummary::decode_bytes(b"accept \xff"),
            Err(SummaryError::NotUtf8)
        );
    }

    #[test]
    fn allows_port() {
        let s = PolicySummary::decode("accept 22,80-81").unwrap();
        assert!(s.allows_port(22) && s.allows_port(80) && s.allows_port(81));
        assert!(
            !s.allows_port(21) && !s.allows_port(23) && !s.allows_port(82) && !s.allows_port(0)
        );
        let s = PolicySummary::decode("reject 25").unwrap();
        assert!(
            s.allows_port(24) && !s.allows_port(25) && s.allows_port(65535) && !s.allows_port(0)
        );
        assert!(PolicySummary::reject_all().accepts_nothing());
    }

    #[test]
    fn over_long_summaries_keep_a_prefix_of_the_accept_list() {
        // Every third port accepted: both lists far over the limit.
        let accepted: Vec<PortRange> = (1..=20_000u16)
            .step_by(3)
            .filter_map(|p| PortRange::new(p, p))
            .collect();
        let s = PolicySummary::from_accepted(accepted.clone());
        let text = s.encode();
        assert!(text.len() <= MAX_SUMMARY_LEN, "{}", text.len());
        assert!(text.starts_with("accept 1,4,7,"));
        assert_eq!(PolicySummary::decode(&text), Ok(s.clone()));
        for p in 1..=20_001u16 {
            if s.allows_port(p) {
                assert!(accepted.iter().any(|r| r.contains(p)), "{p}");
            }
        }
    }

    fn arb_accepted() -> impl Strategy<Value = Vec<PortRange>> {
        proptest::collection::btree_set(1u16..=65535, 0..600).prop_map(|ports| {
            let mut out: Vec<PortRange> = Vec::new();
            for p in ports {
                match out.last_mut() {
                    Some(last) if u32::from(last.max()) + 1 == u32::from(p) => {
                        *last = PortRange::new(last.min(), p).unwrap();
                    }
                    _ => out.push(PortRange::new(p, p).unwrap()),
                }
            }
            out
        })
    }

    proptest! {
        /// specs/06 §7: the summary never accepts a port that the full policy rejects for every
        /// public address, in either family, with or without the relay prelude.
        #[test]
        fn summary_never_claims_more_than_the_policy(
            text in testutil::arb_policy(),
            reject_private in any::<bool>(),
        ) {
            let file = policy(&text);
            let relay = RelayExitPolicy::new(file.clone(), &ExitPolicyConfig { reject_private, private_allowed: Vec::new() }, &[]);
            for family in AddressFamily::ALL {
                let s = file.summary(family);
                let r = relay.summary(family);
                prop_assert_eq!(PolicySummary::decode(&s.encode()), Ok(s.clone()));
                for &port in testutil::PROBE_PORTS {
                    if s.allows_port(port) {
                        let witness = file.rules_for_test().public_witness_in(family, port);
                        prop_assert!(witness.is_some(), "{} claims {} for {:?}", s, port, family);
                        if let Some(w) = witness {
                            prop_assert_eq!(file.evaluate(w, port).decision, Decision::Accept);
                        }
                        prop_assert!(file.allows_port_somewhere(port));
                    }
                    if r.allows_port(port) {
                        prop_assert!(relay.allows_port_somewhere(port));
                    }
                }
            }
        }

        /// specs/06 §7.2: building from any accepted set claims no port outside it, fits the
        /// limit, and decodes back to itself.
        #[test]
        fn from_accepted_is_faithful(accepted in arb_accepted()) {
            let s = PolicySummary::from_accepted(accepted.clone());
            let text = s.encode();
            prop_assert!(text.len() <= MAX_SUMMARY_LEN);
            prop_assert_eq!(PolicySummary::decode(&text), Ok(s.clone()));
            let truncated = list_len(&accepted) > MAX_SUMMARY_LEN - 7
                && list_len(&complement(&accepted)) > MAX_SUMMARY_LEN - 7;
            for port in (1..=65535u16).step_by(7).chain(accepted.iter().flat_map(|r| [r.min(), r.max()])) {
                let listed = accepted.iter().any(|r| r.contains(port));
                if truncated {
                    prop_assert!(!s.allows_port(port) || listed);
                } else {
                    prop_assert_eq!(s.allows_port(port), listed, "{} {}", text, port);
                }
            }
        }

        /// specs/06 §7.3: decoding never panics, and what decodes re-encodes byte for byte.
        #[test]
        fn decode_is_total_and_canonical(s in "(accept|reject|acc) [0-9,\\-]{0,40}") {
            if let Ok(summary) = PolicySummary::decode(&s) {
                prop_assert_eq!(summary.encode(), s);
            }
        }
    }
}
