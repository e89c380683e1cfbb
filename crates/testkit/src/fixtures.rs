//! Fixtures: small, complete values for examples and tests.

use std::collections::BTreeMap;

use bytes::Bytes;
use strata_core::system::{
    BeginKey, ClusterConfig, RecoveryRecord, SystemConfig, TransactionSystemLayout,
};
use strata_core::{Epoch, LogId, Version};

/// A small, complete configuration of two proxies, two resolvers and two logs.
pub fn system_config() -> SystemConfig {
    SystemConfig {
        cluster: ClusterConfig {
            coordinators: vec!["127.0.0.1:4500".into()],
            parameters: BTreeMap::from([("commit_batch_ms".into(), "1".into())]),
            policies: BTreeMap::from([("replication".into(), "single".into())]),
        },
        layout: TransactionSystemLayout {
            id: 1,
            epoch: Epoch(1),
            sequencer: "sequencer-0".into(),
            commit_proxies: vec!["proxy-0".into(), "proxy-1".into()],
            resolvers: BTreeMap::from([
                (BeginKey::from(""), "resolver-0".into()),
                (BeginKey::from("m"), "resolver-1".into()),
            ]),
            logs: BTreeMap::from([(LogId(0), "log-0".into()), (LogId(1), "log-1".into())]),
            storage_teams: BTreeMap::from([
                (BeginKey::from(""), vec!["storage-0".into()]),
                (
                    BeginKey(Bytes::from_static(b"\xff")),
                    vec!["storage-0".into()],
                ),
            ]),
            services: BTreeMap::new(),
        },
        last_completed: RecoveryRecord {
            epoch: Epoch(1),
            recovery_version: Version(0),
        },
    }
}

#[cfg(feature = "proptest")]
mod arbitrary {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use proptest::prelude::*;
    use strata_core::system::{
        BeginKey, ClusterConfig, RecoveryRecord, SystemConfig, TransactionSystemLayout,
    };
    use strata_core::{Epoch, LogId, Version};

    fn name() -> impl Strategy<Value = String> {
        // Names may hold any text, '/' and non-ASCII included: a name is the rest of its key.
        "[a-z0-9_/é.-]{1,12}"
    }

    fn begin_key() -> impl Strategy<Value = BeginKey> {
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| BeginKey(Bytes::from(b)))
    }

    fn names() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(name(), name(), 0..5)
    }

    /// Any valid configuration: names of any text (`/` and non-ASCII included), begin keys of
    /// any bytes, zero to a few of every component. For property tests (feature `proptest`).
    pub fn arb_system_config() -> impl Strategy<Value = SystemConfig> {
        (
            (
                proptest::collection::vec(name(), 0..4),
                names(),
                names(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (
                name(),
                proptest::collection::vec(name(), 0..5),
                proptest::collection::btree_map(begin_key(), name(), 0..5),
                proptest::collection::btree_map(any::<u64>().prop_map(LogId), name(), 0..6),
                proptest::collection::btree_map(
                    begin_key(),
                    proptest::collection::vec(name(), 0..4),
                    0..5,
                ),
                names(),
            ),
        )
            .prop_map(
                |(
                    (coordinators, parameters, policies, id, epoch, recovery_version),
                    (sequencer, commit_proxies, resolvers, logs, storage_teams, services),
                )| SystemConfig {
                    cluster: ClusterConfig {
                        coordinators,
                        parameters,
                        policies,
                    },
                    layout: TransactionSystemLayout {
                        id,
                        epoch: Epoch(epoch),
                        sequencer,
                        commit_proxies,
                        resolvers,
                        logs,
                        storage_teams,
                        services,
                    },
                    last_completed: RecoveryRecord {
                        epoch: Epoch(epoch),
                        recovery_version: Version(recovery_version),
                    },
                },
            )
    }
}

#[cfg(feature = "proptest")]
pub use arbitrary::arb_system_config;
