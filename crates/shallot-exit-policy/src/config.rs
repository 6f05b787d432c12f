//! The relay-side configuration of exit policies.

use serde::{Deserialize, Serialize};

use crate::IpPrefix;

/// Default of [`ExitPolicyConfig::reject_private`]: refuse private destinations (as Tor's
/// `ExitPolicyRejectPrivate 1`).
pub const DEFAULT_REJECT_PRIVATE: bool = true;

/// How a relay applies its exit-policy file (specs/06 §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitPolicyConfig {
    /// Refuse private, loopback, link-local, multicast, unspecified and other special-purpose
    /// destinations (IANA's registries, 6to4 of private) and the relay's own addresses before
    /// the file's rules (the reject-private prelude, specs/06 §6).
    /// Turn off only for a test network on loopback or a LAN.
    #[serde(default = "default_reject_private")]
    pub reject_private: bool,
    /// Ranges inside the prelude's that the file's rules decide after all (the relay's own
    /// addresses stay refused): the networks of a lab or a simulated internet, so that its exits
    /// keep refusing loopback and every other private range. Empty by default; never for a
    /// relay on the open internet. specs/06 §6.
    #[serde(default)]
    pub private_allowed: Vec<IpPrefix>,
}

fn default_reject_private() -> bool {
    DEFAULT_REJECT_PRIVATE
}

impl Default for ExitPolicyConfig {
    fn default() -> Self {
        ExitPolicyConfig {
            reject_private: DEFAULT_REJECT_PRIVATE,
            private_allowed: Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_is_the_default_and_unknown_keys_are_refused() {
        let empty: ExitPolicyConfig = toml::from_str("").unwrap();
        assert_eq!(empty, ExitPolicyConfig::default());
        assert!(empty.reject_private);
        let off: ExitPolicyConfig = toml::from_str("reject_private = false").unwrap();
        assert!(!off.reject_private);
        assert!(toml::from_str::<ExitPolicyConfig>("reject_privat = false").is_err());
    }
}
