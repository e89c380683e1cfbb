//! The system keys' bytes, and what reading a damaged or foreign system value gives.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use strata_core::KEY_BYTES_MAX;
use strata_core::LogId;
use strata_core::system::{
    BeginKey, ConfigError, SystemConfig, VALUE_FORMAT_VERSION, encode_value, keys,
};
use strata_testkit::fixtures::system_config;

#[test]
fn example_round_trips_both_ways() {
    let c = system_config();
    let mono = SystemConfig::from_monolithic(&c.monolithic_value().unwrap()).unwrap();
    let parts = SystemConfig::from_decomposed(c.decomposed().unwrap()).unwrap();
    assert_eq!(mono, c);
    assert_eq!(parts, c);
}

#[test]
fn keys_have_the_documented_bytes() {
    assert_eq!(keys::config().as_ref(), b"\xff/system/config");
    assert_eq!(
        keys::layout_commit_proxy(12).as_ref(),
        b"\xff/system/layout/commit_proxies/12"
    );
    assert_eq!(
        keys::layout_log(LogId(3)).as_ref(),
        b"\xff/system/layout/logs/3"
    );
    assert_eq!(
        keys::layout_resolver(b"\x01m").as_ref(),
        b"\xff/system/layout/resolvers/\x01m"
    );
    assert!(keys::system_range().contains(&keys::recovery_last_completed()));
    assert!(keys::cluster_range().contains(&keys::cluster_policy("p")));
    assert!(!keys::cluster_range().contains(&keys::config()));
    assert!(!keys::layout_range().contains(&keys::recovery_last_completed()));
}

#[test]
fn unknown_value_version_is_named() {
    let mut v = system_config().monolithic_value().unwrap().to_vec();
    v[0] = 7;
    assert_eq!(
        SystemConfig::from_monolithic(&v),
        Err(ConfigError::UnsupportedFormatVersion {
            key: "\\xff/system/config".into(),
            found: 7,
            supported: VALUE_FORMAT_VERSION
        })
    );
    assert!(matches!(
        SystemConfig::from_monolithic(&[]),
        Err(ConfigError::Malformed { .. })
    ));
}

#[test]
fn damaged_decomposed_view_is_refused() {
    let c = system_config();
    let pairs = c.decomposed().unwrap();

    let without_epoch: Vec<_> = pairs
        .iter()
        .filter(|(k, _)| *k != keys::cluster_epoch())
        .cloned()
        .collect();
    assert!(matches!(
        SystemConfig::from_decomposed(without_epoch),
        Err(ConfigError::Missing { .. })
    ));

    let without_proxy_0: Vec<_> = pairs
        .iter()
        .filter(|(k, _)| *k != keys::layout_commit_proxy(0))
        .cloned()
        .collect();
    assert_eq!(
        SystemConfig::from_decomposed(without_proxy_0),
        Err(ConfigError::Missing {
            key: "\\xff/system/layout/commit_proxies/0".into()
        })
    );

    let mut stray = pairs.clone();
    stray.push((
        Bytes::from_static(b"\xff/system/layout/bogus"),
        Bytes::new(),
    ));
    assert!(matches!(
        SystemConfig::from_decomposed(stray),
        Err(ConfigError::UnexpectedKey { .. })
    ));

    let mut twice = pairs.clone();
    twice.push(pairs[0].clone());
    assert!(matches!(
        SystemConfig::from_decomposed(twice),
        Err(ConfigError::UnexpectedKey { .. })
    ));

    let mut padded = pairs;
    padded.push((
        Bytes::from_static(b"\xff/system/layout/commit_proxies/01"),
        encode_value(b"", &"p").unwrap(),
    ));
    assert!(matches!(
        SystemConfig::from_decomposed(padded),
        Err(ConfigError::UnexpectedKey { .. })
    ));
}

#[test]
fn oversized_begin_key_is_refused() {
    let mut c = system_config();
    c.layout
        .resolvers
        .insert(BeginKey(Bytes::from(vec![b'k'; KEY_BYTES_MAX])), "r".into());
    assert!(matches!(
        c.decomposed(),
        Err(ConfigError::TooLarge { what: "key", .. })
    ));
}
