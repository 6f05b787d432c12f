#![doc = include_str!("../README.md")]

mod addr;
mod config;
mod err;
mod parse;
mod policy;
mod rule;
mod summary;
#[cfg(test)]
mod testutil;

pub use addr::{
    AddressFamily, IPV4_MULTICAST, IpPrefix, PRIVATE_NETS, SIX_TO_FOUR, SPECIAL_PURPOSE_NETS,
    is_public,
};
pub use config::{DEFAULT_REJECT_PRIVATE, ExitPolicyConfig};
pub use err::{Location, ParseWarning, PolicyError, QuotedLine, SummaryError};
pub use parse::MAX_RULES;
pub use policy::{ExitPolicy, PreludeRule, Reason, RelayExitPolicy, RuleRef, Verdict};
pub use rule::{Decision, PortRange, PreludeKind};
pub use summary::{MAX_SUMMARY_LEN, PolicySummary};
