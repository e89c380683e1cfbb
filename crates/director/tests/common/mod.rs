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

/// A small, fast, seeded generator (SplitMix64), so failures replay.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
