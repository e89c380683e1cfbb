//! Shared by the scenario tests: a small embedded cluster in a temporary directory.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use strata_director::{EmbeddedCluster, EmbeddedConfig};

/// A cluster of two of everything (two storage servers and two resolvers split the key space
/// at `0x80`), in a directory that lives as long as the returned guard.
pub async fn cluster() -> (EmbeddedCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig {
        logs: 2,
        storage: 2,
        resolvers: 2,
        proxies: 2,
        ..EmbeddedConfig::default()
    };
    let cluster = EmbeddedCluster::start(dir.path(), config)
        .await
        .expect("cluster starts");
    (cluster, dir)
}
