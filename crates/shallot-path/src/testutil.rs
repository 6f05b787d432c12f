//! Signed descriptors and views for tests.

use libp2p_identity::{PeerId, ed25519};
use shallot_crypto::OnionPublicKey;
use shallot_directory::{
    DESCRIPTOR_LIFETIME_SECS, Descriptor, NetworkView, PROTOCOL_CIRCUIT_V1, RelayFlags,
    SignedDescriptor, ViewConfig,
};

/// The descriptors' publication time; tests select at it.
pub(crate) const NOW: u64 = 1_800_000_000;
/// A first-seen time that makes a relay old enough to be a guard at [`NOW`].
pub(crate) const OLD: u64 = NOW - crate::GUARD_MIN_AGE_SECS;

/// A relay to put in a test view.
pub(crate) struct Spec<'a> {
    pub(crate) addrs: &'a [&'a str],
    pub(crate) family: Vec<PeerId>,
    /// Exit-policy summary; `None` for a non-exit.
    pub(crate) summary: Option<&'a str>,
    pub(crate) first_seen: u64,
}

impl<'a> Spec<'a> {
    pub(crate) fn relay(addrs: &'a [&'a str]) -> Self {
        Self {
            addrs,
            family: Vec::new(),
            summary: None,
            first_seen: OLD,
        }
    }

    pub(crate) fn exit(addrs: &'a [&'a str], summary: &'a str) -> Self {
        Self {
            summary: Some(summary),
            ..Self::relay(addrs)
        }
    }
}

pub(crate) fn peer_of(keypair: &ed25519::Keypair) -> PeerId {
    libp2p_identity::PublicKey::from(keypair.public()).to_peer_id()
}

pub(crate) fn sign(keypair: &ed25519::Keypair, spec: &Spec<'_>) -> SignedDescriptor {
    let descriptor = Descriptor {
        identity: keypair.public(),
        published_at: NOW,
        expires_at: NOW + DESCRIPTOR_LIFETIME_SECS,
        protocols: PROTOCOL_CIRCUIT_V1,
        flags: RelayFlags(if spec.summary.is_some() {
            RelayFlags::EXIT
        } else {
            0
        }),
        addrs: spec
            .addrs
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect(),
        onion_key: OnionPublicKey([7; 32]),
        previous_onion_key: None,
        family: spec.family.clone(),
        policy_summary: spec.summary.unwrap_or("").as_bytes().to_vec(),
    };
    descriptor.sign(keypair).expect("sign test descriptor")
}

/// A view without the subnet caps, so tests can place relays as they like.
pub(crate) fn empty_view() -> NetworkView {
    NetworkView::new(ViewConfig {
        max_relays_per_subnet: usize::MAX,
        max_relays_per_block: usize::MAX,
        ..ViewConfig::default()
    })
}

/// Builds a view from specs; returns it with each relay's PeerId, in spec order.
pub(crate) fn view_of(specs: &[Spec<'_>]) -> (NetworkView, Vec<PeerId>) {
    let keys = keys(specs.len());
    let view = view_with(&keys, specs);
    (view, keys.iter().map(peer_of).collect())
}

/// `n` fresh identity keypairs.
pub(crate) fn keys(n: usize) -> Vec<ed25519::Keypair> {
    (0..n).map(|_| ed25519::Keypair::generate()).collect()
}

/// `n` identity keypairs derived from `seed`, the same on every run.
pub(crate) fn seeded_keys(n: usize, seed: u64) -> Vec<ed25519::Keypair> {
    (0..n as u64)
        .map(|i| {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_be_bytes());
            bytes[8..16].copy_from_slice(&i.to_be_bytes());
            ed25519::Keypair::from(
                ed25519::SecretKey::try_from_bytes(&mut bytes).expect("32 bytes"),
            )
        })
        .collect()
}

/// Builds a view from specs, relay `i` signed by `keys[i]`.
pub(crate) fn view_with(keys: &[ed25519::Keypair], specs: &[Spec<'_>]) -> NetworkView {
    let mut view = empty_view();
    for (keypair, spec) in keys.iter().zip(specs) {
        view.offer(sign(keypair, spec), spec.first_seen);
    }
    view
}

/// A deterministic RNG for tests.
pub(crate) fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(seed)
}
