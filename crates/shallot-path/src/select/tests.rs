//! Path-selection tests: one per invariant on hand-built views (specs/05 §3), errors (§8), and
//! a property test over many random views.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Instant;

use libp2p_identity::{PeerId, ed25519};
use rand::Rng;
use rand::seq::SliceRandom;
use shallot_directory::{NetworkView, ViewEntry};

use super::*;
use crate::testutil::{NOW, Spec, keys, peer_of, rng, seeded_keys, view_of, view_with};
use shallot_error::{ErrorKind, HasKind};

use crate::{MAX_SAMPLED_GUARDS, NUM_GUARDS};

/// Selects `n` paths, each by a new selector (so with new guards): every relay gets its turn
/// at every position the rules allow.
fn sample(view: &NetworkView, target: ExitTarget, n: u64) -> Vec<[PeerId; 3]> {
    let relays = RelayIndex::new(view);
    let mut rng = rng(1);
    (0..n)
        .map(|_| {
            PathSelector::in_memory()
                .select_path(&relays, target, NOW, &mut rng)
                .expect("a path exists")
                .peers()
        })
        .collect()
}

/// Selects `n` paths from one selector (so with one guard set).
fn sample_one_client(view: &NetworkView, target: ExitTarget, n: u64) -> Vec<[PeerId; 3]> {
    let relays = RelayIndex::new(view);
    let mut selector = PathSelector::in_memory();
    let mut rng = rng(1);
    (0..n)
        .map(|_| {
            selector
                .select_path(&relays, target, NOW, &mut rng)
                .expect("a path exists")
                .peers()
        })
        .collect()
}

fn together(paths: &[[PeerId; 3]], a: &PeerId, b: &PeerId) -> usize {
    paths
        .iter()
        .filter(|p| p.contains(a) && p.contains(b))
        .count()
}

fn appears(paths: &[[PeerId; 3]], a: &PeerId) -> usize {
    paths.iter().filter(|p| p.contains(a)).count()
}

#[test]
fn rule1_three_distinct_relays_or_no_path() {
    let (view, _) = view_of(&[
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.2.0.1/tcp/1"], "accept 80"),
    ]);
    let relays = RelayIndex::new(&view);
    let err = PathSelector::in_memory()
        .select_path(&relays, ExitTarget::Port(80), NOW, &mut rng(1))
        .expect_err("two relays cannot make a three-hop path");
    assert!(matches!(err, PathError::NotEnoughRelays { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);

    let (view, _) = view_of(&[
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.3.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.2.0.1/tcp/1"], "accept 80"),
    ]);
    for peers in sample(&view, ExitTarget::Port(80), 200) {
        let distinct: HashSet<PeerId> = peers.into_iter().collect();
        assert_eq!(distinct.len(), 3);
    }
}

#[test]
fn rule2_two_relays_in_one_ipv4_slash16_never_share_a_path() {
    let (view, peers) = view_of(&[
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.1.200.9/tcp/1"]), // same /16 as 0, other /24
        Spec::relay(&["/ip4/10.3.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.4.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.5.0.1/tcp/1"], "accept 80,443"),
        Spec::exit(&["/ip4/10.6.0.1/tcp/1"], "accept 80,443"),
    ]);
    let paths = sample(&view, ExitTarget::Port(443), 2000);
    assert_eq!(together(&paths, &peers[0], &peers[1]), 0);
    // Not vacuous: both relays are used.
    assert!(appears(&paths, &peers[0]) > 0 && appears(&paths, &peers[1]) > 0);
}

#[test]
fn rule2_only_exit_in_the_guards_slash16_means_no_path() {
    // Three relays, all pinned as guards; the only exit shares a /16 with one of them.
    let specs = |exit_addr: &'static [&'static str]| {
        [
            Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
            Spec::relay(&["/ip4/10.2.0.1/tcp/1"]),
            Spec::exit(exit_addr, "accept 80"),
        ]
    };
    let (view, _) = view_of(&specs(&["/ip4/10.1.99.99/tcp/1"]));
    let relays = RelayIndex::new(&view);
    let err = PathSelector::in_memory()
        .select_path(&relays, ExitTarget::Port(80), NOW, &mut rng(3))
        .expect_err("every path breaks rule 2");
    assert!(matches!(err, PathError::NotEnoughRelays { .. }), "{err}");
    // The same view with the exit in its own /16 has paths.
    let (view, _) = view_of(&specs(&["/ip4/10.9.0.1/tcp/1"]));
    assert_eq!(sample(&view, ExitTarget::Port(80), 10).len(), 10);
}

#[test]
fn rule2_counts_every_address_ipv6_slash32_and_mapped_ipv4() {
    let (view, peers) = view_of(&[
        // 0 and 1: one /32 (2001:db8::/32), different /48s.
        Spec::relay(&["/ip6/2001:db8:1::1/tcp/1"]),
        Spec::relay(&["/ip6/2001:db8:ffff::1/tcp/1"]),
        // 2 and 3: 3's *second* address is IPv4-mapped and in 2's /16.
        Spec::relay(&["/ip4/10.7.0.1/tcp/1"]),
        Spec::relay(&["/ip6/2001:db9::1/tcp/1", "/ip6/::ffff:10.7.9.9/tcp/1"]),
        Spec::relay(&["/ip4/10.8.0.1/tcp/1"]),
        Spec::exit(&["/ip6/2001:dba::1/tcp/1"], "accept 1-65535"),
        Spec::exit(&["/ip4/10.10.0.1/tcp/1"], "accept 1-65535"),
    ]);
    let paths = sample(&view, ExitTarget::Any, 3000);
    assert_eq!(together(&paths, &peers[0], &peers[1]), 0);
    assert_eq!(together(&paths, &peers[2], &peers[3]), 0);
    for peer in &peers[..4] {
        assert!(appears(&paths, peer) > 0);
    }
}

#[test]
fn rule3_mutual_family_never_shares_a_path_one_sided_may() {
    let keys = keys(7);
    let p: Vec<PeerId> = keys.iter().map(peer_of).collect();
    let mut specs = vec![
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.2.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.3.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.4.0.1/tcp/1"], "accept 443"),
        Spec::relay(&["/ip4/10.5.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.6.0.1/tcp/1"], "accept 443"),
        Spec::exit(&["/ip4/10.7.0.1/tcp/1"], "accept 443"),
    ];
    // 0 and 1 declare each other; 2 lists the exit 3 but 3 does not list 2. Whichever relays
    // are the guards, 2 and 3 can meet (2 as guard or middle, 3 as exit).
    specs[0].family = vec![p[1]];
    specs[1].family = vec![p[0]];
    specs[2].family = vec![p[3]];
    let view = view_with(&keys, &specs);
    let paths = sample(&view, ExitTarget::Port(443), 3000);
    assert_eq!(together(&paths, &p[0], &p[1]), 0);
    assert!(appears(&paths, &p[0]) > 0 && appears(&paths, &p[1]) > 0);
    // specs/05 §3.3: a one-sided declaration does not count.
    assert!(together(&paths, &p[2], &p[3]) > 0);
}

#[test]
fn rule4_exit_allows_the_port_and_no_exit_is_a_policy_refusal() {
    let (view, peers) = view_of(&[
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.2.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.3.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.4.0.1/tcp/1"], "accept 80,443"),
        Spec::exit(&["/ip4/10.5.0.1/tcp/1"], "reject 25"),
        Spec::exit(&["/ip4/10.6.0.1/tcp/1"], "reject 1-65535"),
    ]);
    // Port 22: only "reject 25" allows it.
    let paths = sample(&view, ExitTarget::Port(22), 500);
    assert!(paths.iter().all(|p| p[2] == peers[4]));
    let paths = sample(&view, ExitTarget::Port(443), 500);
    let exits: HashSet<PeerId> = paths.iter().map(|p| p[2]).collect();
    assert_eq!(exits, HashSet::from([peers[3], peers[4]]));
    // The relay that accepts nothing is not an exit even for "any".
    let paths = sample(&view, ExitTarget::Any, 500);
    assert!(paths.iter().all(|p| p[2] != peers[5]));

    let (view, _) = view_of(&[
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.2.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.4.0.1/tcp/1"], "accept 80,443"),
        Spec::exit(&["/ip4/10.5.0.1/tcp/1"], "accept 80"),
    ]);
    let relays = RelayIndex::new(&view);
    let mut selector = PathSelector::in_memory();
    for port in [25, 22, 0] {
        let err = selector
            .select_path(&relays, ExitTarget::Port(port), NOW, &mut rng(4))
            .expect_err("no exit allows it");
        assert!(
            matches!(err, PathError::NoExitForPort(p) if p == port),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::PolicyRefusal);
    }
    let (no_exits, _) = view_of(&[
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.2.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.3.0.1/tcp/1"]),
    ]);
    let err = PathSelector::in_memory()
        .select_path(
            &RelayIndex::new(&no_exits),
            ExitTarget::Any,
            NOW,
            &mut rng(4),
        )
        .expect_err("no exit at all");
    assert!(matches!(err, PathError::NoExit), "{err}");
}

#[test]
fn rule5_the_guard_is_always_pinned() {
    let specs: Vec<Spec<'_>> = (1..=12u8)
        .map(|i| {
            let addr: &'static str = Box::leak(format!("/ip4/10.{i}.0.1/tcp/1").into_boxed_str());
            let addrs: &'static [&'static str] = Box::leak(vec![addr].into_boxed_slice());
            if i % 3 == 0 {
                Spec::exit(addrs, "accept 443")
            } else {
                Spec::relay(addrs)
            }
        })
        .collect();
    let (view, _) = view_of(&specs);
    let relays = RelayIndex::new(&view);
    let mut selector = PathSelector::in_memory();
    let mut rng = rng(5);
    let mut used = HashSet::new();
    for _ in 0..1000 {
        let path = selector
            .select_path(&relays, ExitTarget::Port(443), NOW, &mut rng)
            .expect("path");
        assert!(selector.guards().contains(&path.peers()[0]));
        used.insert(path.peers()[0]);
    }
    assert_eq!(selector.guards().guards().len(), NUM_GUARDS);
    // specs/05 §5.5: one guard in use while it works.
    assert_eq!(used.len(), 1);
}

#[test]
fn exits_and_middles_are_uniform() {
    let (view, peers) = view_of(&[
        Spec::relay(&["/ip4/10.1.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.2.0.1/tcp/1"]),
        Spec::relay(&["/ip4/10.3.0.1/tcp/1"]),
        Spec::exit(&["/ip4/10.4.0.1/tcp/1"], "accept 443"),
        Spec::exit(&["/ip4/10.5.0.1/tcp/1"], "accept 443"),
        Spec::exit(&["/ip4/10.6.0.1/tcp/1"], "accept 443"),
        Spec::exit(&["/ip4/10.7.0.1/tcp/1"], "accept 443"),
    ]);
    let paths = sample_one_client(&view, ExitTarget::Port(443), 8000);
    // Whichever relay is the guard, the exit is uniform among the four exits not equal to it.
    let mut counts: HashMap<PeerId, usize> = HashMap::new();
    for p in &paths {
        *counts.entry(p[2]).or_default() += 1;
    }
    let guard = paths[0][0];
    let exits: Vec<PeerId> = peers[3..].iter().copied().filter(|p| *p != guard).collect();
    let expected = paths.len() / exits.len();
    for exit in &exits {
        let n = counts.get(exit).copied().unwrap_or(0);
        assert!(n.abs_diff(expected) < expected / 10, "{n} vs {expected}");
    }
}

// ---- the property test -------------------------------------------------------------------

/// An IPv4 /16 or IPv6 /32 computed without the crate's code, as a number.
fn slash16_or_32(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4) >> 16)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if bits >> 32 == 0xffff {
                (4, (bits & 0xffff_ffff) >> 16)
            } else {
                (6, bits >> 96)
            }
        }
    }
}

/// specs/05 §3 rules 1–3 for a pair, from the descriptors.
fn may_share(a: &ViewEntry, b: &ViewEntry) -> bool {
    let (da, db) = (a.descriptor.descriptor(), b.descriptor.descriptor());
    let (pa, pb) = (da.peer_id(), db.peer_id());
    if pa == pb {
        return false;
    }
    let na: HashSet<(u8, u128)> = da.ip_addrs().map(slash16_or_32).collect();
    if db.ip_addrs().map(slash16_or_32).any(|n| na.contains(&n)) {
        return false;
    }
    !(da.family.contains(&pb) && db.family.contains(&pa))
}

fn exit_allows(entry: &ViewEntry, target: ExitTarget) -> bool {
    let d = entry.descriptor.descriptor();
    let Ok(Some(summary)) = d.exit_policy_summary() else {
        return false;
    };
    d.flags.is_exit()
        && match target {
            ExitTarget::Port(port) => port != 0 && summary.allows_port(port),
            ExitTarget::Any => (1..=u16::MAX).any(|p| summary.allows_port(p)),
        }
}

fn is_valid(view: &NetworkView, guards: &[PeerId], hops: [&ViewEntry; 3], t: ExitTarget) -> bool {
    let [g, m, e] = hops;
    guards.contains(&g.descriptor.peer_id())
        && view.get(&g.descriptor.peer_id()).is_some()
        && exit_allows(e, t)
        && may_share(g, m)
        && may_share(g, e)
        && may_share(m, e)
}

/// Brute force: is there any valid path with any pinned guard?
fn any_valid_path(view: &NetworkView, guards: &[PeerId], t: ExitTarget) -> bool {
    let entries: Vec<&ViewEntry> = view.entries().collect();
    guards.iter().filter_map(|g| view.get(g)).any(|g| {
        entries
            .iter()
            .any(|e| entries.iter().any(|m| is_valid(view, guards, [g, m, e], t)))
    })
}

const SUMMARIES: [&str; 6] = [
    "accept 80,443",
    "accept 1-65535",
    "reject 25",
    "accept 22",
    "reject 1-65535",
    "accept 443,8000-9000",
];
const TARGETS: [ExitTarget; 7] = [
    ExitTarget::Port(22),
    ExitTarget::Port(25),
    ExitTarget::Port(80),
    ExitTarget::Port(443),
    ExitTarget::Port(8080),
    ExitTarget::Port(0),
    ExitTarget::Any,
];

fn random_addr<R: Rng>(rng: &mut R) -> String {
    // Few /16s and /32s, so conflicts are common; /24s vary so the view's cap rarely bites.
    let (a, b, c) = (
        rng.random_range(0..10u8),
        rng.random::<u8>(),
        rng.random_range(1..255u8),
    );
    match rng.random_range(0..4) {
        0 | 1 => format!("/ip4/10.{a}.{b}.{c}/tcp/1"),
        2 => format!(
            "/ip6/2001:{:x}:{b:x}::{c:x}/tcp/1",
            rng.random_range(0..4u8)
        ),
        _ => format!("/ip6/::ffff:10.{a}.{b}.{c}/tcp/1"),
    }
}

/// A random view over a random subset of `keys`.
fn random_view<R: Rng>(keys: &[ed25519::Keypair], rng: &mut R) -> NetworkView {
    let n = rng.random_range(3..=keys.len());
    let mut chosen: Vec<usize> = (0..keys.len()).collect();
    chosen.shuffle(rng);
    chosen.truncate(n);
    let groups: Vec<u8> = (0..n).map(|_| rng.random_range(0..6)).collect();
    let mut view = crate::testutil::empty_view();
    for (slot, &k) in chosen.iter().enumerate() {
        let addrs: Vec<String> = (0..rng.random_range(1..=3))
            .map(|_| random_addr(rng))
            .collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let mut family = Vec::new();
        if rng.random_bool(0.5) {
            // Declare the own group (mutual when the others declare it too).
            family.extend(
                (0..n)
                    .filter(|&o| o != slot && groups[o] == groups[slot])
                    .map(|o| peer_of(&keys[chosen[o]])),
            );
        }
        if rng.random_bool(0.3) {
            family.push(peer_of(&keys[chosen[rng.random_range(0..n)]]));
        }
        family.truncate(shallot_directory::MAX_FAMILY);
        let spec = Spec {
            addrs: &addrs,
            family,
            summary: rng
                .random_bool(0.4)
                .then(|| SUMMARIES[rng.random_range(0..SUMMARIES.len())]),
            first_seen: NOW - rng.random_range(0..8 * 24 * 3600) * u64::from(rng.random_bool(0.7)),
        };
        view.offer(crate::testutil::sign(&keys[k], &spec), spec.first_seen);
    }
    view
}

#[test]
fn property_100k_paths_never_break_an_invariant() {
    const VIEWS: usize = 100;
    const PATHS_PER_VIEW: usize = 1000;
    let started = Instant::now();
    let keys = seeded_keys(40, 0x5A11_0007);
    // Views from their own stream: how many draws a selection takes (guard failover pins
    // more guards) must not change which views the test covers.
    let mut view_rng = rng(0x5A11_0007);
    let (mut ok, mut errors) = (0usize, HashMap::<&'static str, usize>::new());
    let mut provisional = 0usize;
    for v in 0..VIEWS as u64 {
        let view = random_view(&keys, &mut view_rng);
        let mut rng = crate::testutil::rng(0x5A11_0008 + v);
        let relays = RelayIndex::new(&view);
        let mut selector = PathSelector::in_memory();
        // (target, guards) -> whether any valid path exists: failures grow the guard set.
        let mut exists: HashMap<(Option<u16>, Vec<PeerId>), bool> = HashMap::new();
        for i in 0..PATHS_PER_VIEW {
            // Guard failover only in the second half of each view: it pins more guards, which
            // can make a path possible where the first three could not (NotEnoughRelays).
            let failover = i >= PATHS_PER_VIEW / 2;
            let target = TARGETS[rng.random_range(0..TARGETS.len())];
            let result = selector.select_path(&relays, target, NOW, &mut rng);
            let guards: Vec<PeerId> = selector
                .guards()
                .guards()
                .iter()
                .map(|g| *g.peer())
                .collect();
            assert!(guards.len() <= MAX_SAMPLED_GUARDS);
            assert_eq!(guards.iter().collect::<HashSet<_>>().len(), guards.len());
            let key = match target {
                ExitTarget::Port(p) => Some(p),
                ExitTarget::Any => None,
            };
            match result {
                Ok(path) => {
                    assert!(
                        is_valid(&view, &guards, path.hops(), target),
                        "invalid path {:?} for {target:?}",
                        path.peers()
                    );
                    ok += 1;
                    provisional += usize::from(path.provisional_guard());
                    // Exercise guard failover: the next path must still obey every rule.
                    if failover && rng.random_bool(0.02) {
                        selector
                            .mark_guard_failed(&path.peers()[0], NOW)
                            .expect("in memory");
                    }
                }
                Err(PathError::NoExitForPort(port)) => {
                    assert_eq!(Some(port), key);
                    assert!(view.entries().all(|e| !exit_allows(e, target)));
                    *errors.entry("NoExitForPort").or_default() += 1;
                }
                Err(PathError::NoExit) => {
                    assert_eq!(target, ExitTarget::Any);
                    assert!(view.entries().all(|e| !exit_allows(e, target)));
                    *errors.entry("NoExit").or_default() += 1;
                }
                Err(PathError::NotEnoughRelays { .. }) => {
                    // Never an error when a valid path exists.
                    let any = *exists
                        .entry((key, guards.clone()))
                        .or_insert_with(|| any_valid_path(&view, &guards, target));
                    assert!(!any, "a valid path exists for {target:?}");
                    *errors.entry("NotEnoughRelays").or_default() += 1;
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    }
    let sampled = VIEWS * PATHS_PER_VIEW;
    eprintln!(
        "property: {sampled} selections over {VIEWS} random views: {ok} paths, errors {errors:?}, \
         {provisional} with a provisional guard, in {:.1?}",
        started.elapsed()
    );
    // Not vacuous: most selections return paths, and every error path is exercised.
    assert!(ok > sampled / 2, "only {ok} paths");
    for kind in ["NoExitForPort", "NotEnoughRelays"] {
        assert!(
            errors.get(kind).is_some_and(|&n| n > 0),
            "{kind} never seen"
        );
    }
}
