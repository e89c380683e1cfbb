//! System keys and the cluster configuration the persistence phase writes.
//!
//! The director ends every recovery with one system transaction that stores the whole
//! [`SystemConfig`] twice: once as the monolithic value of [`keys::config`], read whole by a
//! coordinator taking over, and once decomposed into one key per component, read by whoever
//! needs one piece. [`SystemConfig::monolithic_value`] and [`SystemConfig::decomposed`] give
//! the two views (the director's persistence phase decides how it writes them);
//! [`SystemConfig::from_decomposed`] reassembles the decomposed view, and the invariant is that
//! it gives back exactly what [`SystemConfig::from_monolithic`] reads.
//!
//! Every value is one format-version byte ([`VALUE_FORMAT_VERSION`]) followed by JSON (chosen
//! so that `strata dump` and an operator can read it; these values are small and written once
//! per recovery, so compactness does not matter). A value of another format version is refused
//! with [`ConfigError::UnsupportedFormatVersion`], never guessed at.
//!
//! ```
//! use strata_core::system::{keys, SystemConfig};
//! let mut config = SystemConfig::default();
//! config.layout.sequencer = "sequencer-0".into();
//! config.layout.commit_proxies = vec!["proxy-0".into(), "proxy-1".into()];
//! let pairs = config.decomposed()?;
//! assert!(pairs.iter().any(|(k, _)| *k == keys::layout_sequencer()));
//! let reassembled = SystemConfig::from_decomposed(pairs)?;
//! assert_eq!(reassembled, SystemConfig::from_monolithic(&config.monolithic_value()?)?);
//! # Ok::<(), strata_core::system::ConfigError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::traits::LogId;
use crate::types::{
    Epoch, KEY_BYTES_MAX, Key, KeyRange, VALUE_BYTES_MAX, Value, Version, parse_printable,
    printable,
};

/// The format version byte that starts every system value this build writes.
pub const VALUE_FORMAT_VERSION: u8 = 1;

/// The system keys, one constructor each.
pub mod keys {
    use super::*;

    /// Prefix of every system key Strata writes.
    pub const SYSTEM_PREFIX: &[u8] = b"\xff/system/";
    /// Prefix of the decomposed cluster configuration.
    pub const CLUSTER_PREFIX: &[u8] = b"\xff/system/cluster/";
    /// Prefix of the decomposed transaction system layout.
    pub const LAYOUT_PREFIX: &[u8] = b"\xff/system/layout/";

    const CONFIG: &[u8] = b"\xff/system/config";
    const CLUSTER_EPOCH: &[u8] = b"\xff/system/cluster/epoch";
    const CLUSTER_COORDINATORS: &[u8] = b"\xff/system/cluster/coordinators";
    pub(super) const CLUSTER_PARAMETERS: &[u8] = b"\xff/system/cluster/parameters/";
    pub(super) const CLUSTER_POLICIES: &[u8] = b"\xff/system/cluster/policies/";
    const LAYOUT_ID: &[u8] = b"\xff/system/layout/id";
    const LAYOUT_SEQUENCER: &[u8] = b"\xff/system/layout/sequencer";
    pub(super) const LAYOUT_COMMIT_PROXIES: &[u8] = b"\xff/system/layout/commit_proxies/";
    pub(super) const LAYOUT_RESOLVERS: &[u8] = b"\xff/system/layout/resolvers/";
    pub(super) const LAYOUT_LOGS: &[u8] = b"\xff/system/layout/logs/";
    pub(super) const LAYOUT_STORAGE_TEAMS: &[u8] = b"\xff/system/layout/storage_teams/";
    pub(super) const LAYOUT_SERVICES: &[u8] = b"\xff/system/layout/services/";
    const RECOVERY_LAST_COMPLETED: &[u8] = b"\xff/system/recovery/last_completed";

    fn joined(prefix: &[u8], suffix: &[u8]) -> Key {
        let mut k = Vec::with_capacity(prefix.len() + suffix.len());
        k.extend_from_slice(prefix);
        k.extend_from_slice(suffix);
        Bytes::from(k)
    }

    /// Every system key: `[\xff/system/, \xff/system0)`.
    pub fn system_range() -> KeyRange {
        KeyRange::from_ordered(
            Bytes::from_static(SYSTEM_PREFIX),
            Bytes::from_static(b"\xff/system0"),
        )
    }
    /// `\xff/system/cluster/`, cleared by every persistence phase.
    pub fn cluster_range() -> KeyRange {
        KeyRange::from_ordered(
            Bytes::from_static(CLUSTER_PREFIX),
            Bytes::from_static(b"\xff/system/cluster0"),
        )
    }
    /// `\xff/system/layout/`, cleared by every persistence phase.
    pub fn layout_range() -> KeyRange {
        KeyRange::from_ordered(
            Bytes::from_static(LAYOUT_PREFIX),
            Bytes::from_static(b"\xff/system/layout0"),
        )
    }
    /// `\xff/system/config`: the monolithic configuration.
    pub fn config() -> Key {
        Bytes::from_static(CONFIG)
    }
    /// `\xff/system/cluster/epoch`.
    pub fn cluster_epoch() -> Key {
        Bytes::from_static(CLUSTER_EPOCH)
    }
    /// `\xff/system/cluster/coordinators`.
    pub fn cluster_coordinators() -> Key {
        Bytes::from_static(CLUSTER_COORDINATORS)
    }
    /// `\xff/system/cluster/parameters/<name>`.
    pub fn cluster_parameter(name: &str) -> Key {
        joined(CLUSTER_PARAMETERS, name.as_bytes())
    }
    /// `\xff/system/cluster/policies/<name>`.
    pub fn cluster_policy(name: &str) -> Key {
        joined(CLUSTER_POLICIES, name.as_bytes())
    }
    /// `\xff/system/layout/id`.
    pub fn layout_id() -> Key {
        Bytes::from_static(LAYOUT_ID)
    }
    /// `\xff/system/layout/sequencer`.
    pub fn layout_sequencer() -> Key {
        Bytes::from_static(LAYOUT_SEQUENCER)
    }
    /// `\xff/system/layout/commit_proxies/<n>`, `n` in decimal from 0.
    pub fn layout_commit_proxy(n: usize) -> Key {
        joined(LAYOUT_COMMIT_PROXIES, n.to_string().as_bytes())
    }
    /// `\xff/system/layout/resolvers/<begin key>`, the begin key as raw bytes.
    pub fn layout_resolver(begin: &[u8]) -> Key {
        joined(LAYOUT_RESOLVERS, begin)
    }
    /// `\xff/system/layout/logs/<log id>`, the id in decimal.
    pub fn layout_log(id: LogId) -> Key {
        joined(LAYOUT_LOGS, id.0.to_string().as_bytes())
    }
    /// `\xff/system/layout/storage_teams/<begin key>`, the begin key as raw bytes.
    pub fn layout_storage_team(begin: &[u8]) -> Key {
        joined(LAYOUT_STORAGE_TEAMS, begin)
    }
    /// `\xff/system/layout/services/<service id>`.
    pub fn layout_service(id: &str) -> Key {
        joined(LAYOUT_SERVICES, id.as_bytes())
    }
    /// `\xff/system/recovery/last_completed`.
    pub fn recovery_last_completed() -> Key {
        Bytes::from_static(RECOVERY_LAST_COMPLETED)
    }
}

/// A key that starts a shard (of a resolver or a storage team); the shard runs to the next
/// begin key. Written in JSON as its [`printable`] form, so binary keys stay readable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BeginKey(pub Key);

impl From<&'static str> for BeginKey {
    fn from(s: &'static str) -> BeginKey {
        BeginKey(Bytes::from_static(s.as_bytes()))
    }
}

impl fmt::Display for BeginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&printable(&self.0))
    }
}

impl Serialize for BeginKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&printable(&self.0))
    }
}

impl<'de> Deserialize<'de> for BeginKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BeginKey, D::Error> {
        let text = String::deserialize(d)?;
        parse_printable(&text)
            .map(|b| BeginKey(Bytes::from(b)))
            .ok_or_else(|| serde::de::Error::custom(format!("not a printable key: {text:?}")))
    }
}

/// The cluster's configuration as the operator set it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The coordinators' addresses.
    pub coordinators: Vec<String>,
    /// Named tuning parameters.
    pub parameters: BTreeMap<String, String>,
    /// Named policies (replication, placement).
    pub policies: BTreeMap<String, String>,
}

/// Who plays which role in one epoch: the Transaction System Layout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionSystemLayout {
    /// Identifies this layout; a new one for every recovery.
    pub id: u64,
    /// The epoch the layout belongs to.
    pub epoch: Epoch,
    /// The sequencer's address.
    pub sequencer: String,
    /// The commit proxies' addresses, in order.
    pub commit_proxies: Vec<String>,
    /// Resolver addresses by the begin key of the range each resolves.
    pub resolvers: BTreeMap<BeginKey, String>,
    /// Log locations by log id.
    pub logs: BTreeMap<LogId, String>,
    /// Storage team members by the begin key of the range each team holds.
    pub storage_teams: BTreeMap<BeginKey, Vec<String>>,
    /// Other services by id.
    pub services: BTreeMap<String, String>,
}

/// Which recovery completed last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// The epoch of the recovery.
    pub epoch: Epoch,
    /// The version the recovery rolled the cluster back to.
    pub recovery_version: Version,
}

/// Everything the persistence phase stores: the value of [`keys::config`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemConfig {
    /// The operator's configuration.
    pub cluster: ClusterConfig,
    /// The layout of the new epoch; its `epoch` is stored as `\xff/system/cluster/epoch`.
    pub layout: TransactionSystemLayout,
    /// The recovery that wrote this configuration.
    pub last_completed: RecoveryRecord,
}

/// Why a system value could not be built or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value starts with a format version this build does not read.
    #[error("{key}: unsupported value format version {found} (this build reads {supported})")]
    UnsupportedFormatVersion {
        /// The key, printable.
        key: String,
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The value is not valid for its key.
    #[error("{key}: malformed value: {reason}")]
    Malformed {
        /// The key, printable.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A required key is absent from the decomposed pairs.
    #[error("missing system key {key}")]
    Missing {
        /// The key, printable.
        key: String,
    },
    /// A key under a configuration prefix that no component maps to, or one given twice.
    #[error("unexpected system key {key}: {reason}")]
    UnexpectedKey {
        /// The key, printable.
        key: String,
        /// Why it does not fit.
        reason: String,
    },
    /// A key or value would be over its limit.
    #[error("{key}: {what} is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The key, printable (truncated when long).
        key: String,
        /// "key" or "value".
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The layout's epoch and the recovery record's epoch differ.
    #[error("layout is of {layout} but the recovery record is of {recovery}")]
    EpochMismatch {
        /// The layout's epoch.
        layout: Epoch,
        /// The recovery record's epoch.
        recovery: Epoch,
    },
}

type ConfigResult<T> = Result<T, ConfigError>;

/// Printable form of a key for an error message, shortened so that a 10 KB key cannot flood a
/// log line.
fn key_name(key: &[u8]) -> String {
    const SHOWN_BYTES_MAX: usize = 64;
    if key.len() <= SHOWN_BYTES_MAX {
        printable(key)
    } else {
        format!(
            "{}...({} bytes)",
            printable(&key[..SHOWN_BYTES_MAX]),
            key.len()
        )
    }
}

/// Encodes a system value: the format version byte, then JSON.
pub fn encode_value<T: Serialize>(key: &[u8], value: &T) -> ConfigResult<Value> {
    let mut out = vec![VALUE_FORMAT_VERSION];
    serde_json::to_writer(&mut out, value).map_err(|e| ConfigError::Malformed {
        key: key_name(key),
        reason: e.to_string(),
    })?;
    if out.len() > VALUE_BYTES_MAX {
        return Err(ConfigError::TooLarge {
            key: key_name(key),
            what: "value",
            len: out.len(),
            max: VALUE_BYTES_MAX,
        });
    }
    Ok(Bytes::from(out))
}

/// Decodes a system value written by [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> ConfigResult<T> {
    let Some((&version, json)) = value.split_first() else {
        return Err(ConfigError::Malformed {
            key: key_name(key),
            reason: "empty value".into(),
        });
    };
    if version != VALUE_FORMAT_VERSION {
        return Err(ConfigError::UnsupportedFormatVersion {
            key: key_name(key),
            found: version,
            supported: VALUE_FORMAT_VERSION,
        });
    }
    serde_json::from_slice(json).map_err(|e| ConfigError::Malformed {
        key: key_name(key),
        reason: e.to_string(),
    })
}

impl SystemConfig {
    /// Checks what the stored form relies on: the layout and the recovery record are of the
    /// same epoch.
    pub fn validate(&self) -> ConfigResult<()> {
        if self.layout.epoch != self.last_completed.epoch {
            return Err(ConfigError::EpochMismatch {
                layout: self.layout.epoch,
                recovery: self.last_completed.epoch,
            });
        }
        Ok(())
    }

    /// The value of [`keys::config`].
    pub fn monolithic_value(&self) -> ConfigResult<Value> {
        self.validate()?;
        encode_value(&keys::config(), self)
    }

    /// Reads the value of [`keys::config`].
    pub fn from_monolithic(value: &[u8]) -> ConfigResult<SystemConfig> {
        let config: SystemConfig = decode_value(&keys::config(), value)?;
        config.validate()?;
        Ok(config)
    }

    /// Every decomposed key with its value, one per component, in key order.
    pub fn decomposed(&self) -> ConfigResult<Vec<(Key, Value)>> {
        self.validate()?;
        let c = &self.cluster;
        let l = &self.layout;
        let mut pairs = Vec::new();
        let mut put = |key: Key, value: ConfigResult<Value>| -> ConfigResult<()> {
            if key.len() > KEY_BYTES_MAX {
                return Err(ConfigError::TooLarge {
                    key: key_name(&key),
                    what: "key",
                    len: key.len(),
                    max: KEY_BYTES_MAX,
                });
            }
            pairs.push((key, value?));
            Ok(())
        };
        let k = keys::cluster_epoch();
        put(k.clone(), encode_value(&k, &l.epoch))?;
        let k = keys::cluster_coordinators();
        put(k.clone(), encode_value(&k, &c.coordinators))?;
        for (name, v) in &c.parameters {
            let k = keys::cluster_parameter(name);
            put(k.clone(), encode_value(&k, v))?;
        }
        for (name, v) in &c.policies {
            let k = keys::cluster_policy(name);
            put(k.clone(), encode_value(&k, v))?;
        }
        let k = keys::layout_id();
        put(k.clone(), encode_value(&k, &l.id))?;
        let k = keys::layout_sequencer();
        put(k.clone(), encode_value(&k, &l.sequencer))?;
        for (n, v) in l.commit_proxies.iter().enumerate() {
            let k = keys::layout_commit_proxy(n);
            put(k.clone(), encode_value(&k, v))?;
        }
        for (begin, v) in &l.resolvers {
            let k = keys::layout_resolver(&begin.0);
            put(k.clone(), encode_value(&k, v))?;
        }
        for (id, v) in &l.logs {
            let k = keys::layout_log(*id);
            put(k.clone(), encode_value(&k, v))?;
        }
        for (begin, v) in &l.storage_teams {
            let k = keys::layout_storage_team(&begin.0);
            put(k.clone(), encode_value(&k, v))?;
        }
        for (id, v) in &l.services {
            let k = keys::layout_service(id);
            put(k.clone(), encode_value(&k, v))?;
        }
        let k = keys::recovery_last_completed();
        put(k.clone(), encode_value(&k, &self.last_completed))?;
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(pairs)
    }

    /// Reassembles a configuration from its decomposed pairs, in any order.
    ///
    /// The monolithic key may be among the pairs and is ignored. Every other pair must be a
    /// decomposed key: an unknown key, a key given twice, a gap in the commit proxy numbers or
    /// a missing required key is an error, so a damaged view is never mistaken for a smaller
    /// layout.
    pub fn from_decomposed(
        pairs: impl IntoIterator<Item = (Key, Value)>,
    ) -> ConfigResult<SystemConfig> {
        let mut by_key = BTreeMap::new();
        for (k, v) in pairs {
            if k == keys::config() {
                continue;
            }
            let name = key_name(&k);
            if by_key.insert(k, v).is_some() {
                return Err(ConfigError::UnexpectedKey {
                    key: name,
                    reason: "given twice".into(),
                });
            }
        }
        let mut take = |key: Key| -> ConfigResult<Value> {
            by_key.remove(&key).ok_or_else(|| ConfigError::Missing {
                key: key_name(&key),
            })
        };
        let epoch: Epoch = decode_value(&keys::cluster_epoch(), &take(keys::cluster_epoch())?)?;
        let coordinators = decode_value(
            &keys::cluster_coordinators(),
            &take(keys::cluster_coordinators())?,
        )?;
        let id = decode_value(&keys::layout_id(), &take(keys::layout_id())?)?;
        let sequencer = decode_value(&keys::layout_sequencer(), &take(keys::layout_sequencer())?)?;
        let last_completed = decode_value(
            &keys::recovery_last_completed(),
            &take(keys::recovery_last_completed())?,
        )?;

        let mut config = SystemConfig {
            cluster: ClusterConfig {
                coordinators,
                ..ClusterConfig::default()
            },
            layout: TransactionSystemLayout {
                id,
                epoch,
                sequencer,
                ..TransactionSystemLayout::default()
            },
            last_completed,
        };
        let mut proxies = BTreeMap::new();
        for (key, value) in by_key {
            let unexpected = |reason: &str| ConfigError::UnexpectedKey {
                key: key_name(&key),
                reason: reason.into(),
            };
            let utf8 = |suffix: &[u8]| {
                String::from_utf8(suffix.to_vec()).map_err(|_| unexpected("name is not UTF-8"))
            };
            let (prefix, suffix) = split_component(&key).ok_or_else(|| unexpected("unknown"))?;
            match prefix {
                keys::CLUSTER_PARAMETERS => {
                    let v = decode_value(&key, &value)?;
                    config.cluster.parameters.insert(utf8(suffix)?, v);
                }
                keys::CLUSTER_POLICIES => {
                    let v = decode_value(&key, &value)?;
                    config.cluster.policies.insert(utf8(suffix)?, v);
                }
                keys::LAYOUT_COMMIT_PROXIES => {
                    let n = parse_decimal(suffix).ok_or_else(|| unexpected("bad proxy number"))?;
                    proxies.insert(n, decode_value::<String>(&key, &value)?);
                }
                keys::LAYOUT_RESOLVERS => {
                    let v = decode_value(&key, &value)?;
                    let begin = BeginKey(Bytes::copy_from_slice(suffix));
                    config.layout.resolvers.insert(begin, v);
                }
                keys::LAYOUT_LOGS => {
                    let id = parse_decimal(suffix).ok_or_else(|| unexpected("bad log id"))?;
                    let v = decode_value(&key, &value)?;
                    config.layout.logs.insert(LogId(id), v);
                }
                keys::LAYOUT_STORAGE_TEAMS => {
                    let v = decode_value(&key, &value)?;
                    let begin = BeginKey(Bytes::copy_from_slice(suffix));
                    config.layout.storage_teams.insert(begin, v);
                }
                keys::LAYOUT_SERVICES => {
                    let v = decode_value(&key, &value)?;
                    config.layout.services.insert(utf8(suffix)?, v);
                }
                _ => return Err(unexpected("unknown")),
            }
        }
        for (expected, (n, address)) in proxies.into_iter().enumerate() {
            if u64::try_from(expected).ok() != Some(n) {
                return Err(ConfigError::Missing {
                    key: key_name(&keys::layout_commit_proxy(expected)),
                });
            }
            config.layout.commit_proxies.push(address);
        }
        config.validate()?;
        Ok(config)
    }
}

/// The component prefix `key` starts with, and the rest of it.
fn split_component(key: &[u8]) -> Option<(&'static [u8], &[u8])> {
    [
        keys::CLUSTER_PARAMETERS,
        keys::CLUSTER_POLICIES,
        keys::LAYOUT_COMMIT_PROXIES,
        keys::LAYOUT_RESOLVERS,
        keys::LAYOUT_LOGS,
        keys::LAYOUT_STORAGE_TEAMS,
        keys::LAYOUT_SERVICES,
    ]
    .into_iter()
    .find_map(|p| key.strip_prefix(p).map(|rest| (p, rest)))
}

/// A decimal number in canonical form (no sign, no leading zero but for "0" itself).
fn parse_decimal(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let n: u64 = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}
