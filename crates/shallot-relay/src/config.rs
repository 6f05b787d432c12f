//! The relay's settings (`configs/relay.example.toml`, `configs/exit-relay.example.toml`).

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use libp2p::multiaddr::Protocol;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shallot_directory::{
    DESCRIPTOR_LIFETIME_SECS, MAX_ADDRS, MAX_CLOCK_SKEW_SECS, MAX_DESCRIPTOR_LIFETIME_SECS,
};
use shallot_p2p::{Multiaddr, PeerId, TransportConfig};

use crate::err::RelayError;
use crate::traffic::{AccountingPeriod, AccountingRule, ByteCount, MIN_BANDWIDTH_RATE};

/// Default [`RelayConfig::data_dir`].
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shallot/relay";
/// Default port of [`RelayConfig::listen`] (TCP and QUIC).
pub const DEFAULT_PORT: u16 = 9001;
/// Default [`RelayConfig::exit_policy_reject_private`] (specs/06 §6).
pub const DEFAULT_EXIT_POLICY_REJECT_PRIVATE: bool = shallot_exit_policy::DEFAULT_REJECT_PRIVATE;
/// Default [`RelayConfig::safe_logging`].
pub const DEFAULT_SAFE_LOGGING: bool = true;
/// Default [`RelayConfig::max_circuits`].
pub const DEFAULT_MAX_CIRCUITS: usize = 8192;
/// Default [`RelayConfig::max_circuits_per_peer`]. A middle relay sees a guard as one peer that
/// carries many clients' circuits, so this is well above what one client needs.
pub const DEFAULT_MAX_CIRCUITS_PER_PEER: usize = 512;
/// Default [`RelayConfig::max_circuits_per_address`]: room for the circuits of many clients
/// behind one NAT (a client holds a few dozen), a thirty-second of the default total.
pub const DEFAULT_MAX_CIRCUITS_PER_ADDRESS: usize = 256;
/// Default [`RelayConfig::create_rate_per_address`]: Tor's `DoSCircuitCreationRate` (3 a
/// second) and `DoSCircuitCreationBurst` (90).
pub const DEFAULT_CREATE_RATE_PER_ADDRESS: CreateRate = CreateRate {
    per_second: 3,
    burst: 90,
};
/// Default [`RelayConfig::create_rate_total`]: what a relay spends on CREATE handshakes at
/// most, whoever sends them. A handshake costs the relay two X25519 operations and some
/// hashing, roughly a tenth of a millisecond of one core, so this is about a tenth of a core:
/// the rest stays for the circuits it carries.
pub const DEFAULT_CREATE_RATE_TOTAL: CreateRate = CreateRate {
    per_second: 1000,
    burst: 1000,
};
/// Default [`CreateRate::per_second`].
pub const DEFAULT_CREATE_RATE_PER_SECOND: u32 = 20;
/// Default [`CreateRate::burst`].
pub const DEFAULT_CREATE_RATE_BURST: u32 = 100;
/// Default [`RelayConfig::handshake_timeout_secs`].
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default [`RelayConfig::connect_timeout_secs`].
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 15;
/// Default [`RelayConfig::resolve_timeout_secs`].
pub const DEFAULT_RESOLVE_TIMEOUT_SECS: u64 = 10;
/// Default [`RelayConfig::max_queued_bytes`]: 256 MiB, for a small VPS (a relay's queues
/// stay well under it in normal use: a busy circuit holds a few hundred KiB).
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 256 * 1024 * 1024;
/// The smallest [`RelayConfig::max_queued_bytes`] accepted: a few busy circuits' worth.
pub const MIN_MAX_QUEUED_BYTES: u64 = 1024 * 1024;
/// Default [`RelayConfig::idle_circuit_timeout_secs`]: shallot-proto's
/// `DEFAULT_IDLE_TIMEOUT`, two hours.
pub const DEFAULT_IDLE_CIRCUIT_TIMEOUT_SECS: u64 = shallot_proto::DEFAULT_IDLE_TIMEOUT.as_secs();
/// Default [`RelayConfig::extend_timeout_secs`].
pub const DEFAULT_EXTEND_TIMEOUT_SECS: u64 = 30;
/// Default [`RelayConfig::onion_key_rotation_secs`]: 7 days (specs/04 §4).
pub const DEFAULT_ONION_KEY_ROTATION_SECS: u64 = 7 * 24 * 3600;

/// How fast one peer may open circuits: a token bucket (specs/00 §4.2 item 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRate {
    /// CREATEs per second a peer may sustain. Default [`DEFAULT_CREATE_RATE_PER_SECOND`].
    #[serde(default = "default_create_rate_per_second")]
    pub per_second: u32,
    /// CREATEs a peer may send at once after a quiet period. Default
    /// [`DEFAULT_CREATE_RATE_BURST`].
    #[serde(default = "default_create_rate_burst")]
    pub burst: u32,
}

impl Default for CreateRate {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_CREATE_RATE_PER_SECOND,
            burst: DEFAULT_CREATE_RATE_BURST,
        }
    }
}

/// Settings of a relay (and exit). Every field has a default; `announce` must be set when the
/// relay listens on an unspecified address such as `0.0.0.0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Directory of the relay's key files (created 0700 if missing). Default
    /// [`DEFAULT_DATA_DIR`].
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on. Default: TCP and QUIC on port [`DEFAULT_PORT`] of `0.0.0.0`.
    #[serde(default = "default_listen", with = "display_list")]
    pub listen: Vec<Multiaddr>,
    /// Addresses put in the descriptor, without `/p2p/` (at most 8). Default (empty): the
    /// bound listen addresses, which must then be specific (not `0.0.0.0` or `::`).
    #[serde(default, with = "display_list")]
    pub announce: Vec<Multiaddr>,
    /// DHT servers to join through, each ending with `/p2p/<PeerId>`. Default: none (this
    /// relay starts a network).
    #[serde(default, with = "display_list")]
    pub bootstrap: Vec<Multiaddr>,
    /// PeerIds of the operator's other relays (the descriptor's declared family, at most 16).
    /// Default: none.
    #[serde(default, with = "display_list")]
    pub family: Vec<PeerId>,
    /// The exit-policy file (Tor syntax, specs/06); the relay is an exit if and only if this is
    /// set. A relative path is relative to the working directory. Default: not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_policy_file: Option<PathBuf>,
    /// Refuse private, loopback, link-local, multicast destinations and the relay's own
    /// addresses before the policy file's rules (specs/06 §6). Default
    /// [`DEFAULT_EXIT_POLICY_REJECT_PRIVATE`].
    #[serde(default = "default_exit_policy_reject_private")]
    pub exit_policy_reject_private: bool,
    /// Ranges inside the reject-private prelude that the policy file decides after all (the
    /// relay's own addresses stay refused), e.g. `["10.200.0.0/16"]`: the destinations of a
    /// lab or a simulated internet, whose exits keep refusing loopback and every other private
    /// range. Never for a relay on the open internet. Default: empty (specs/06 §6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_policy_private_allowed: Vec<shallot_exit_policy::IpPrefix>,
    /// Dial other relays at private, loopback and link-local addresses (to prove their
    /// descriptors' addresses, and as next hops). Only for test networks, where every relay has
    /// such an address. Default: false.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// DNS servers the exit resolves names with. Empty: only `localhost` resolves (to
    /// 127.0.0.1 and ::1); every other name fails with END RESOLVEFAILED. Never the system
    /// resolver, never `/etc/hosts`. Default: empty.
    #[serde(default)]
    pub dns_upstreams: Vec<SocketAddr>,
    /// Replace destinations and peer addresses in logs by `[scrubbed]`. Default
    /// [`DEFAULT_SAFE_LOGGING`].
    #[serde(default = "default_safe_logging")]
    pub safe_logging: bool,
    /// Circuits this relay holds at once, in total. Default [`DEFAULT_MAX_CIRCUITS`].
    #[serde(default = "default_max_circuits")]
    pub max_circuits: usize,
    /// Circuits one previous-hop relay (listed in this relay's directory store) may hold
    /// here at once. Default [`DEFAULT_MAX_CIRCUITS_PER_PEER`].
    #[serde(default = "default_max_circuits_per_peer")]
    pub max_circuits_per_peer: usize,
    /// How fast one previous-hop relay may open circuits. Default: [`CreateRate::default`].
    #[serde(default)]
    pub create_rate_per_peer: CreateRate,
    /// Circuits the peers connected from one IPv4 address or IPv6 /64 (relays left out) may
    /// hold here at once, whatever their PeerIds. Default
    /// [`DEFAULT_MAX_CIRCUITS_PER_ADDRESS`].
    #[serde(default = "default_max_circuits_per_address")]
    pub max_circuits_per_address: usize,
    /// How fast the peers connected from one address (relays left out) may open circuits,
    /// together. Default [`DEFAULT_CREATE_RATE_PER_ADDRESS`]; a value left out of the table
    /// takes [`CreateRate`]'s default.
    #[serde(default = "default_create_rate_per_address")]
    pub create_rate_per_address: CreateRate,
    /// How fast the relay runs CREATE handshakes in all, shared round robin among sources so
    /// that a flood from one waits behind itself (specs/00 §4.4). Default
    /// [`DEFAULT_CREATE_RATE_TOTAL`]; a value left out of the table takes [`CreateRate`]'s
    /// default.
    #[serde(default = "default_create_rate_total")]
    pub create_rate_total: CreateRate,
    /// Seconds a new circuit stream may take to deliver its preamble and first cell. Default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT_SECS`].
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Seconds an exit connection may take to connect. Default
    /// [`DEFAULT_CONNECT_TIMEOUT_SECS`].
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Seconds a name lookup may take. Default [`DEFAULT_RESOLVE_TIMEOUT_SECS`].
    #[serde(default = "default_resolve_timeout_secs")]
    pub resolve_timeout_secs: u64,
    /// Seconds an EXTEND may take to open the next hop's stream and get its CREATED. Default
    /// [`DEFAULT_EXTEND_TIMEOUT_SECS`].
    #[serde(default = "default_extend_timeout_secs")]
    pub extend_timeout_secs: u64,
    /// Seconds a circuit may carry no cell either way (and no byte from a destination) before
    /// the relay destroys it (specs/03 §4.11). Clients send a DROP on circuits with open
    /// streams well within it. Default [`DEFAULT_IDLE_CIRCUIT_TIMEOUT_SECS`].
    #[serde(default = "default_idle_circuit_timeout_secs")]
    pub idle_circuit_timeout_secs: u64,
    /// Bytes the relay's circuits may hold in all on behalf of their peers (cells queued, data
    /// read from destinations and not yet sent, data for destinations not yet written;
    /// specs/00 §4.5, Tor's `MaxMemInQueues`). Past it the relay destroys the circuits whose
    /// data has waited longest until they hold at most 90 % of it. At least
    /// [`MIN_MAX_QUEUED_BYTES`]; default [`DEFAULT_MAX_QUEUED_BYTES`].
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: u64,
    /// Bytes a second the relay's circuits may receive, and as many they may send (a token
    /// bucket each way shared by all circuits and exit connections, Tor's
    /// `RelayBandwidthRate`), e.g. `"1 MB"`. At least [`MIN_BANDWIDTH_RATE`]. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_rate: Option<ByteCount>,
    /// Bytes the buckets save up while the relay is quieter than `bandwidth_rate` (Tor's
    /// `RelayBandwidthBurst`); at least `bandwidth_rate`. Default: `bandwidth_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_burst: Option<ByteCount>,
    /// Bytes the relay may carry per `accounting_period`, counted by `accounting_rule` (Tor's
    /// `AccountingMax`), e.g. `"100 GB"`. With 5 % (at most 500 MiB) left it hibernates: it
    /// refuses new circuits and marks its descriptor, so clients leave it; once all is spent
    /// it carries nothing; both end when the next period begins. The count survives restarts
    /// (`accounting.state` in the data directory). Default: no allowance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounting_max: Option<ByteCount>,
    /// `"day"`, `"week"` or `"month"`, starting at 00:00 UTC (Mondays, the first of the month).
    /// Default: month.
    #[serde(default)]
    pub accounting_period: AccountingPeriod,
    /// Which bytes count against `accounting_max`: `"max"` (the larger of received and sent),
    /// `"sum"`, `"in"` or `"out"` (Tor's `AccountingRule`). Default: max.
    #[serde(default)]
    pub accounting_rule: AccountingRule,
    /// Lifetime of each published descriptor (specs/04 §4). Default
    /// [`DESCRIPTOR_LIFETIME_SECS`].
    #[serde(default = "default_descriptor_lifetime_secs")]
    pub descriptor_lifetime_secs: u64,
    /// Seconds between onion-key rotations (specs/04 §4). Default
    /// [`DEFAULT_ONION_KEY_ROTATION_SECS`].
    #[serde(default = "default_onion_key_rotation_secs")]
    pub onion_key_rotation_secs: u64,
    /// How the relay's node reaches others: the system's network, or an in-memory network in
    /// tests. Not read from files.
    #[serde(skip)]
    pub transport: TransportConfig,
    /// Publish the announced addresses whatever the reachability test says (specs/04 §4.1):
    /// what a hostile relay's own code would do, for tests of the directory's defences against
    /// it. Not read from files.
    #[serde(skip)]
    pub publish_untested: bool,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

fn default_listen() -> Vec<Multiaddr> {
    vec![
        Multiaddr::empty()
            .with(Protocol::Ip4([0, 0, 0, 0].into()))
            .with(Protocol::Tcp(DEFAULT_PORT)),
        Multiaddr::empty()
            .with(Protocol::Ip4([0, 0, 0, 0].into()))
            .with(Protocol::Udp(DEFAULT_PORT))
            .with(Protocol::QuicV1),
    ]
}

fn default_exit_policy_reject_private() -> bool {
    DEFAULT_EXIT_POLICY_REJECT_PRIVATE
}

fn default_safe_logging() -> bool {
    DEFAULT_SAFE_LOGGING
}

fn default_max_circuits() -> usize {
    DEFAULT_MAX_CIRCUITS
}

fn default_max_circuits_per_peer() -> usize {
    DEFAULT_MAX_CIRCUITS_PER_PEER
}

fn default_max_circuits_per_address() -> usize {
    DEFAULT_MAX_CIRCUITS_PER_ADDRESS
}

fn default_create_rate_per_address() -> CreateRate {
    DEFAULT_CREATE_RATE_PER_ADDRESS
}

fn default_create_rate_total() -> CreateRate {
    DEFAULT_CREATE_RATE_TOTAL
}

fn default_create_rate_per_second() -> u32 {
    DEFAULT_CREATE_RATE_PER_SECOND
}

fn default_create_rate_burst() -> u32 {
    DEFAULT_CREATE_RATE_BURST
}

fn default_handshake_timeout_secs() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT_SECS
}

fn default_idle_circuit_timeout_secs() -> u64 {
    DEFAULT_IDLE_CIRCUIT_TIMEOUT_SECS
}

fn default_max_queued_bytes() -> u64 {
    DEFAULT_MAX_QUEUED_BYTES
}

fn default_connect_timeout_secs() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_SECS
}

fn default_resolve_timeout_secs() -> u64 {
    DEFAULT_RESOLVE_TIMEOUT_SECS
}

fn default_extend_timeout_secs() -> u64 {
    DEFAULT_EXTEND_TIMEOUT_SECS
}

fn default_descriptor_lifetime_secs() -> u64 {
    DESCRIPTOR_LIFETIME_SECS
}

fn default_onion_key_rotation_secs() -> u64 {
    DEFAULT_ONION_KEY_ROTATION_SECS
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            listen: default_listen(),
            announce: Vec::new(),
            bootstrap: Vec::new(),
            family: Vec::new(),
            exit_policy_file: None,
            exit_policy_reject_private: DEFAULT_EXIT_POLICY_REJECT_PRIVATE,
            exit_policy_private_allowed: Vec::new(),
            allow_private_addresses: false,
            dns_upstreams: Vec::new(),
            safe_logging: DEFAULT_SAFE_LOGGING,
            max_circuits: DEFAULT_MAX_CIRCUITS,
            max_circuits_per_peer: DEFAULT_MAX_CIRCUITS_PER_PEER,
            create_rate_per_peer: CreateRate::default(),
            max_circuits_per_address: DEFAULT_MAX_CIRCUITS_PER_ADDRESS,
            create_rate_per_address: DEFAULT_CREATE_RATE_PER_ADDRESS,
            create_rate_total: DEFAULT_CREATE_RATE_TOTAL,
            handshake_timeout_secs: DEFAULT_HANDSHAKE_TIMEOUT_SECS,
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            resolve_timeout_secs: DEFAULT_RESOLVE_TIMEOUT_SECS,
            extend_timeout_secs: DEFAULT_EXTEND_TIMEOUT_SECS,
            idle_circuit_timeout_secs: DEFAULT_IDLE_CIRCUIT_TIMEOUT_SECS,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            bandwidth_rate: None,
            bandwidth_burst: None,
            accounting_max: None,
            accounting_period: AccountingPeriod::default(),
            accounting_rule: AccountingRule::default(),
            descriptor_lifetime_secs: DESCRIPTOR_LIFETIME_SECS,
            onion_key_rotation_secs: DEFAULT_ONION_KEY_ROTATION_SECS,
            transport: TransportConfig::default(),
            publish_untested: false,
        }
    }
}

impl RelayConfig {
    /// Parses a TOML document (unknown keys are errors) and checks it.
    pub fn from_toml_str(text: &str) -> Result<Self, RelayError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, RelayError> {
        let text = std::fs::read_to_string(path).map_err(|source| RelayError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Whether this relay is an exit (an exit-policy file is set).
    pub fn is_exit(&self) -> bool {
        self.exit_policy_file.is_some()
    }

    /// Checks the rules that serde cannot express. [`crate::Relay::start`] calls it too.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |m: String| Err(RelayError::Config(m));
        if self.listen.is_empty() {
            return bad("`listen` is empty: the relay needs at least one address".into());
        }
        if self.announce.len() > MAX_ADDRS {
            return bad(format!("`announce` has more than {MAX_ADDRS} addresses"));
        }
        if let Some(a) = self
            .announce
            .iter()
            .find(|a| matches!(a.iter().last(), Some(Protocol::P2p(_))))
        {
            return bad(format!("`announce` address {a} must not end with /p2p/"));
        }
        if let Some(a) = self
            .bootstrap
            .iter()
            .find(|a| !matches!(a.iter().last(), Some(Protocol::P2p(_))))
        {
            return bad(format!(
                "`bootstrap` address {a} must end with /p2p/<PeerId>"
            ));
        }
        if self.family.len() > shallot_directory::MAX_FAMILY {
            return bad(format!(
                "`family` has more than {} PeerIds",
                shallot_directory::MAX_FAMILY
            ));
        }
        let positive = [
            ("max_circuits", self.max_circuits as u64),
            ("max_circuits_per_peer", self.max_circuits_per_peer as u64),
            (
                "create_rate_per_peer.per_second",
                u64::from(self.create_rate_per_peer.per_second),
            ),
            (
                "create_rate_per_peer.burst",
                u64::from(self.create_rate_per_peer.burst),
            ),
            (
                "max_circuits_per_address",
                self.max_circuits_per_address as u64,
            ),
            (
                "create_rate_per_address.per_second",
                u64::from(self.create_rate_per_address.per_second),
            ),
            (
                "create_rate_per_address.burst",
                u64::from(self.create_rate_per_address.burst),
            ),
            (
                "create_rate_total.per_second",
                u64::from(self.create_rate_total.per_second),
            ),
            (
                "create_rate_total.burst",
                u64::from(self.create_rate_total.burst),
            ),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("resolve_timeout_secs", self.resolve_timeout_secs),
            ("extend_timeout_secs", self.extend_timeout_secs),
            ("idle_circuit_timeout_secs", self.idle_circuit_timeout_secs),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(format!("`{name}` must be at least 1"));
        }
        if self.max_queued_bytes < MIN_MAX_QUEUED_BYTES {
            return bad(format!(
                "`max_queued_bytes` must be at least {MIN_MAX_QUEUED_BYTES} (1 MiB)"
            ));
        }
        if usize::try_from(self.max_queued_bytes).is_err() {
            return bad("`max_queued_bytes` does not fit this machine's address space".into());
        }
        match (self.bandwidth_rate, self.bandwidth_burst) {
            (None, Some(_)) => {
                return bad("`bandwidth_burst` is set without `bandwidth_rate`".into());
            }
            (Some(rate), _) if rate.bytes() < MIN_BANDWIDTH_RATE => {
                return bad(format!(
                    "`bandwidth_rate` must be at least {MIN_BANDWIDTH_RATE} bytes (75 KBytes) a second"
                ));
            }
            (Some(rate), Some(burst)) if burst < rate => {
                return bad("`bandwidth_burst` must be at least `bandwidth_rate`".into());
            }
            _ => {}
        }
        if self.accounting_max.is_some_and(|max| max.bytes() == 0) {
            return bad("`accounting_max` must be more than 0 bytes".into());
        }
        if self.descriptor_lifetime_secs < MIN_DESCRIPTOR_LIFETIME_SECS
            || self.descriptor_lifetime_secs > MAX_DESCRIPTOR_LIFETIME_SECS
        {
            return bad(format!(
                "`descriptor_lifetime_secs` must be within {MIN_DESCRIPTOR_LIFETIME_SECS}..={MAX_DESCRIPTOR_LIFETIME_SECS} (specs/04 §4)"
            ));
        }
        // specs/02 §2.2: the previous onion key is kept until every descriptor that named it
        // as current has expired (lifetime plus clock skew); with one previous key the next
        // rotation must not come sooner.
        let min_rotation = self
            .descriptor_lifetime_secs
            .saturating_add(MAX_CLOCK_SKEW_SECS);
        if self.onion_key_rotation_secs < min_rotation {
            return bad(format!(
                "`onion_key_rotation_secs` must be at least `descriptor_lifetime_secs` + \
                 {MAX_CLOCK_SKEW_SECS} s of clock skew ({min_rotation})"
            ));
        }
        Ok(())
    }
}

/// The shortest descriptor lifetime a relay accepts in its config: republication happens at
/// half the lifetime at the latest, and this keeps it from becoming a busy loop.
pub const MIN_DESCRIPTOR_LIFETIME_SECS: u64 = 60;

/// Serde for lists of values written as strings (`Multiaddr`, `PeerId`).
mod display_list {
    use super::{Deserialize, Deserializer, Display, FromStr, Serializer};

    pub(super) fn serialize<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| {
                s.parse::<T>()
                    .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
            })
            .collect()
    }
}

impl RelayConfig {
    /// The buckets' rate and burst in bytes, when the bandwidth is limited.
    pub(crate) fn rate_and_burst(&self) -> Option<(u64, u64)> {
        let rate = self.bandwidth_rate?.bytes();
        Some((rate, self.bandwidth_burst.map_or(rate, ByteCount::bytes)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const RELAY_EXAMPLE: &str = include_str!("../../../configs/relay.example.toml");
    const EXIT_EXAMPLE: &str = include_str!("../../../configs/exit-relay.example.toml");

    /// Every key of a serialized config, nested tables as `table.key`.
    fn keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                let name = format!("{prefix}{k}");
                if v.is_table() {
                    keys(v, &format!("{name}."), out);
                } else {
                    out.insert(name);
                }
            }
        }
    }

    /// Every field of the struct: the default with every optional field set, serialized.
    fn all_fields() -> BTreeSet<String> {
        let full = RelayConfig {
            exit_policy_file: Some(PathBuf::from("x")),
            bandwidth_rate: Some(ByteCount(MIN_BANDWIDTH_RATE)),
            bandwidth_burst: Some(ByteCount(MIN_BANDWIDTH_RATE)),
            accounting_max: Some(ByteCount(1)),
            ..RelayConfig::default()
        };
        let mut out = BTreeSet::new();
        keys(&toml::Value::try_from(&full).unwrap(), "", &mut out);
        out
    }

    /// The keys a file sets, plus the optional keys it shows commented out as `# key = ...`.
    fn file_keys(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        keys(&toml::from_str::<toml::Value>(text).unwrap(), "", &mut out);
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ")
                && let Some((k, _)) = rest.split_once(" = ")
                && !k.contains(' ')
            {
                out.insert(k.to_owned());
            }
        }
        out
    }

    #[test]
    fn relay_example_is_the_default_field_for_field() {
        let parsed: RelayConfig = toml::from_str(RELAY_EXAMPLE).unwrap();
        assert_eq!(parsed, RelayConfig::default());
        // The default refuses to start only for lack of `announce`; it validates otherwise.
        parsed.validate().unwrap();
    }

    #[test]
    fn exit_example_differs_only_in_the_policy_file() {
        let parsed: RelayConfig = toml::from_str(EXIT_EXAMPLE).unwrap();
        parsed.validate().unwrap();
        assert_eq!(
            parsed.exit_policy_file.as_deref(),
            Some(Path::new("configs/exit-policies/reduced.policy"))
        );
        let expected = RelayConfig {
            exit_policy_file: parsed.exit_policy_file.clone(),
            ..RelayConfig::default()
        };
        assert_eq!(parsed, expected);
        assert!(parsed.is_exit());
        // The file it names exists and parses.
        let policy = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../configs/exit-policies/reduced.policy"),
        )
        .unwrap();
        shallot_exit_policy::ExitPolicy::parse("reduced.policy", &policy).unwrap();
    }

    #[test]
    fn examples_miss_no_field() {
        let all = all_fields();
        assert!(all.contains("create_rate_per_peer.burst"));
        assert!(all.contains("exit_policy_file"));
        for (name, text) in [("relay", RELAY_EXAMPLE), ("exit", EXIT_EXAMPLE)] {
            let got = file_keys(text);
            let missing: Vec<_> = all.difference(&got).collect();
            assert!(missing.is_empty(), "{name} example misses {missing:?}");
            let unknown: Vec<_> = got.difference(&all).collect();
            assert!(unknown.is_empty(), "{name} example has unknown {unknown:?}");
        }
    }

    #[test]
    fn empty_file_is_the_default_and_unknown_keys_are_refused() {
        assert_eq!(
            toml::from_str::<RelayConfig>("").unwrap(),
            RelayConfig::default()
        );
        assert!(RelayConfig::from_toml_str("max_circuit = 3").is_err());
        assert!(RelayConfig::from_toml_str("[create_rate_per_peer]\nrate = 3").is_err());
        assert!(RelayConfig::from_toml_str("listen = [\"not an address\"]").is_err());
        assert!(RelayConfig::from_toml_str("family = [\"nope\"]").is_err());
    }

    #[test]
    fn validation_refuses_unusable_values() {
        for text in [
            "listen = []",
            "max_circuits = 0",
            "create_rate_per_peer = { per_second = 0, burst = 1 }",
            "max_circuits_per_address = 0",
            "create_rate_per_address = { per_second = 1, burst = 0 }",
            "bootstrap = [\"/ip4/127.0.0.1/tcp/1\"]",
            "descriptor_lifetime_secs = 10",
            "descriptor_lifetime_secs = 100000",
            "onion_key_rotation_secs = 60",
            "bandwidth_rate = \"10 KB\"",
            "bandwidth_burst = \"1 MB\"",
            "bandwidth_rate = \"1 MB\"\nbandwidth_burst = \"500 KB\"",
            "accounting_max = 0",
        ] {
            let err = RelayConfig::from_toml_str(text).unwrap_err();
            assert!(matches!(err, RelayError::Config(_)), "{text}: {err}");
        }
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let ok = RelayConfig::from_toml_str(&format!(
            "bootstrap = [\"/ip4/127.0.0.1/tcp/1/p2p/{peer}\"]\nfamily = [\"{peer}\"]"
        ));
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn bandwidth_and_accounting_read_in_tors_units() {
        let c = RelayConfig::from_toml_str(
            "bandwidth_rate = \"1 MB\"\naccounting_max = \"10 GB\"\n\
             accounting_period = \"week\"\naccounting_rule = \"sum\"",
        )
        .unwrap();
        assert_eq!(c.rate_and_burst(), Some((1 << 20, 1 << 20)));
        assert_eq!(c.accounting_max, Some(ByteCount(10 << 30)));
        assert_eq!(c.accounting_period, AccountingPeriod::Week);
        assert_eq!(c.accounting_rule, AccountingRule::Sum);
        let burst =
            RelayConfig::from_toml_str("bandwidth_rate = 100000\nbandwidth_burst = \"2 MB\"")
                .unwrap();
        assert_eq!(burst.rate_and_burst(), Some((100_000, 2 << 20)));
        assert!(RelayConfig::from_toml_str("accounting_period = \"fortnight\"").is_err());
        assert_eq!(RelayConfig::default().rate_and_burst(), None);
    }
}
