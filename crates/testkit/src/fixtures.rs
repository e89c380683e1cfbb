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
