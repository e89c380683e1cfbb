//! The persistence phase's two views of the configuration agree, for any configuration.

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::prelude::*;
use strata_core::Key;
use strata_core::system::{SystemConfig, keys};
use strata_testkit::fixtures::arb_system_config as config;

/// The suffixes of the keys under `prefix`.
fn suffixes(pairs: &[(Key, Bytes)], prefix: &[u8]) -> BTreeSet<Vec<u8>> {
    pairs
        .iter()
        .filter_map(|(k, _)| k.strip_prefix(prefix).map(<[u8]>::to_vec))
        .collect()
}

fn set(items: impl IntoIterator<Item = impl AsRef<[u8]>>) -> BTreeSet<Vec<u8>> {
    items.into_iter().map(|i| i.as_ref().to_vec()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decomposed_reassembles_to_the_monolithic_value(c in config()) {
        let mono = SystemConfig::from_monolithic(&c.monolithic_value().unwrap()).unwrap();
        let pairs = c.decomposed().unwrap();
        let mut shuffled = pairs.clone();
        shuffled.reverse();
        let reassembled = SystemConfig::from_decomposed(shuffled).unwrap();
        prop_assert_eq!(&reassembled, &mono);
        prop_assert_eq!(&reassembled, &c);
    }

    #[test]
    fn decomposed_pairs_name_exactly_the_components(c in config()) {
        let pairs = c.decomposed().unwrap();
        let l = &c.layout;
        prop_assert_eq!(
            suffixes(&pairs, b"\xff/system/cluster/parameters/"),
            set(c.cluster.parameters.keys())
        );
        prop_assert_eq!(
            suffixes(&pairs, b"\xff/system/cluster/policies/"),
            set(c.cluster.policies.keys())
        );
        prop_assert_eq!(
            suffixes(&pairs, b"\xff/system/layout/commit_proxies/"),
            set((0..l.commit_proxies.len()).map(|n| n.to_string()))
        );
        prop_assert_eq!(
            suffixes(&pairs, b"\xff/system/layout/resolvers/"),
            set(l.resolvers.keys().map(|b| b.0.clone()))
        );
        prop_assert_eq!(
            suffixes(&pairs, b"\xff/system/layout/logs/"),
            set(l.logs.keys().map(|id| id.0.to_string()))
        );
        prop_assert_eq!(
            suffixes(&pairs, b"\xff/system/layout/storage_teams/"),
            set(l.storage_teams.keys().map(|b| b.0.clone()))
        );
        prop_assert_eq!(
            suffixes(&pairs, b"\xff/system/layout/services/"),
            set(l.services.keys())
        );
        let singles = [
            keys::cluster_epoch(),
            keys::cluster_coordinators(),
            keys::layout_id(),
            keys::layout_sequencer(),
            keys::recovery_last_completed(),
        ];
        let components = c.cluster.parameters.len()
            + c.cluster.policies.len()
            + l.commit_proxies.len()
            + l.resolvers.len()
            + l.logs.len()
            + l.storage_teams.len()
            + l.services.len();
        prop_assert_eq!(pairs.len(), singles.len() + components);
        for k in &singles {
            prop_assert!(pairs.iter().any(|(p, _)| p == k));
        }
        // Every decomposed key lies where the persistence phase clears or overwrites it.
        for (k, _) in &pairs {
            prop_assert!(
                keys::cluster_range().contains(k)
                    || keys::layout_range().contains(k)
                    || *k == keys::recovery_last_completed()
            );
        }
    }
}
