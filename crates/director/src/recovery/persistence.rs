//! Phase 10, the persistence phase: one system transaction that stores the whole
//! configuration twice (the monolithic key and the decomposed keys), committed through the new
//! pipeline and read back, under the phase's deadline.

use std::sync::{Arc, Mutex};

use crate::HeldStorage;
use strata_core::system::{
    ClusterConfig, ConfigError, RecoveryRecord, SystemConfig, TransactionSystemLayout, keys,
};
use strata_core::{Error, ErrorKind, Mutation, Result, Stage, Version};
use strata_txn_builder::Transaction;

use super::{Attempt, RecoveryError, error, millis};
use crate::cluster::Pipeline;
use crate::config::EmbeddedConfig;

/// Phase 10 under its deadline. A timeout names the stage the phase was waiting on: the stage
/// a commit proxy's oldest batch waits on during the commit, otherwise the phase's own step.
pub(super) async fn persist_within_deadline(
    pipeline: &Pipeline,
    storage: &[Arc<dyn HeldStorage>],
    layout: TransactionSystemLayout,
    recovery_version: Version,
    config: &EmbeddedConfig,
) -> Attempt<(Version, SystemConfig)> {
    let step = Mutex::new(Stage::Sequencer);
    let persisted = persist(pipeline, storage, layout, recovery_version, &step);
    match tokio::time::timeout(config.persistence_deadline, persisted).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            let waiting = step.lock().map(|s| *s).unwrap_or(Stage::Director);
            let stage = match waiting {
                Stage::CommitProxy => pipeline
                    .proxies
                    .iter()
                    .find_map(|p| p.waiting_on())
                    .unwrap_or(Stage::CommitProxy),
                other => other,
            };
            Err(RecoveryError::Attempt(Error::new(
                stage,
                ErrorKind::Timeout {
                    what: "the persistence phase".into(),
                    after_ms: millis(config.persistence_deadline),
                },
            )))
        }
    }
}

/// Phase 10, the persistence phase: one system transaction holding the whole configuration,
/// committed through the new pipeline, then read back through a fresh transaction and
/// compared. `step` tells which stage it waits on, for a timeout's error.
async fn persist(
    pipeline: &Pipeline,
    storage: &[Arc<dyn HeldStorage>],
    layout: TransactionSystemLayout,
    recovery_version: Version,
    step: &Mutex<Stage>,
) -> Result<(Version, SystemConfig)> {
    let at = |stage: Stage| {
        if let Ok(mut s) = step.lock() {
            *s = stage;
        }
    };
    // Through the proxies run here: a proxy worker refuses system keys.
    let db = &pipeline.system_database;
    let config_error =
        |e: strata_core::system::ConfigError| error(ErrorKind::Corruption(e.to_string()));
    at(Stage::Sequencer);
    let tx = db.begin();
    // Asked for here, not by the first read below, so that a sequencer that hangs is the
    // stage a timeout names (and the worker recovery passes over).
    tx.read_version().await?;
    // The configuration the previous coordinator wrote, read from the monolithic key: the
    // handoff from one generation to the next.
    at(Stage::Storage);
    let cluster = match tx.snapshot_get(&keys::config()).await? {
        Some(value) => {
            SystemConfig::from_monolithic(&value)
                .map_err(config_error)?
                .cluster
        }
        None => ClusterConfig {
            coordinators: vec!["embedded".into()],
            ..ClusterConfig::default()
        },
    };
    let epoch = layout.epoch;
    let system = SystemConfig {
        cluster,
        layout,
        last_completed: RecoveryRecord {
            epoch,
            recovery_version,
        },
    };
    for m in system_writes(&system).map_err(config_error)? {
        match m {
            Mutation::Set { key, value } => tx.set(key, value),
            Mutation::Clear { key } => tx.clear(key),
            Mutation::ClearRange { range } => tx.clear_range(range),
            Mutation::Atomic { op, key, operand } => tx.atomic(op, key, operand),
        }
    }
    at(Stage::CommitProxy);
    // On a task of its own: the system transaction is a lone commit, which runs its batch,
    // and with an idle log writes and syncs its record, on the thread of the task that
    // commits. Committed here, a stalled sync would hold this task, and the phase's deadline
    // around it could not fire until the disk came back.
    let version = match tokio::spawn(async move { tx.commit().await }).await {
        // Whether a failed system transaction committed is the next recovery's to say; the
        // director exits naming the stage that failed it.
        Ok(Err(e)) => match e.kind {
            ErrorKind::CommitUnknown(cause) => return Err(*cause),
            _ => return Err(e),
        },
        Ok(Ok(version)) => version,
        // A bug: the director's own, as it was when it committed on its own task.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            return Err(error(ErrorKind::Unavailable(format!(
                "the system transaction's task: {e}"
            ))));
        }
    };

    // Wait until the storage servers have applied it (the phase's deadline bounds this), so
    // the read back below does not depend on how long a single read may wait.
    at(Stage::Storage);
    for s in storage {
        s.wait_applied(version).await?;
    }
    // Read it back through a fresh transaction.
    at(Stage::Sequencer);
    let check = db.begin();
    let read_at = check.read_version().await?;
    if read_at < version {
        return Err(Error::new(
            Stage::Sequencer,
            ErrorKind::InvalidRequest(format!(
                "read version {read_at} is older than the system transaction at {version}"
            )),
        ));
    }
    at(Stage::Storage);
    let (from_monolithic, from_decomposed) = read_both_views(&check).await?;
    if from_monolithic != system || from_decomposed != system {
        return Err(error(ErrorKind::Corruption(
            "the configuration read back differs from the one written".into(),
        )));
    }
    tracing::info!(
        version = version.0,
        epoch = epoch.0,
        "persistence phase complete"
    );
    Ok((version, system))
}

/// The configuration as `tx` reads it twice: from the monolithic key, and reassembled from the
/// decomposed keys and the recovery record (which fails on a key of an older, larger layout
/// left behind). A view missing or unreadable is `Corruption`. The persistence phase checks
/// both against what it wrote; the simulation checks them after every recovery.
pub(crate) async fn read_both_views(tx: &Transaction) -> Result<(SystemConfig, SystemConfig)> {
    let config_error =
        |e: strata_core::system::ConfigError| error(ErrorKind::Corruption(e.to_string()));
    let monolithic = tx.snapshot_get(&keys::config()).await?.ok_or_else(|| {
        error(ErrorKind::Corruption(
            "the monolithic key is missing".into(),
        ))
    })?;
    let mut pairs = Vec::new();
    for range in [keys::cluster_range(), keys::layout_range()] {
        pairs.extend(tx.snapshot_get_range(&range, 100_000, false).await?);
    }
    let last = keys::recovery_last_completed();
    if let Some(v) = tx.snapshot_get(&last).await? {
        pairs.push((last, v));
    }
    Ok((
        SystemConfig::from_monolithic(&monolithic).map_err(config_error)?,
        SystemConfig::from_decomposed(pairs).map_err(config_error)?,
    ))
}

/// The writes of the system transaction, in order: clear [`keys::cluster_range`] and
/// [`keys::layout_range`] (so no entry of an older, larger layout survives), set the monolithic
/// key, set every decomposed key. The recovery record's key lies outside both ranges and is
/// always overwritten.
pub(super) fn system_writes(
    system: &SystemConfig,
) -> std::result::Result<Vec<Mutation>, ConfigError> {
    let decomposed = system.decomposed()?;
    let mut out = Vec::with_capacity(decomposed.len() + 3);
    out.push(Mutation::ClearRange {
        range: keys::cluster_range(),
    });
    out.push(Mutation::ClearRange {
        range: keys::layout_range(),
    });
    out.push(Mutation::Set {
        key: keys::config(),
        value: system.monolithic_value()?,
    });
    out.extend(
        decomposed
            .into_iter()
            .map(|(key, value)| Mutation::Set { key, value }),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use strata_core::system::BeginKey;
    use strata_core::{Key, LogId, Value};
    use strata_testkit::fixtures::{arb_system_config, system_config};

    use super::*;

    /// What `writes` leave in a store that held `before`, applied in order.
    fn apply(before: &[(Key, Value)], writes: &[Mutation]) -> BTreeMap<Key, Value> {
        let mut store: BTreeMap<Key, Value> = before.iter().cloned().collect();
        for m in writes {
            match m {
                Mutation::Set { key, value } => {
                    store.insert(key.clone(), value.clone());
                }
                Mutation::Clear { key } => {
                    store.remove(key);
                }
                Mutation::ClearRange { range } => store.retain(|k, _| !range.contains(k)),
                Mutation::Atomic { op, key, operand } => {
                    let value = op.apply(store.get(key).map(|v| v.as_ref()), operand);
                    store.insert(key.clone(), value);
                }
            }
        }
        store
    }

    fn both_views(store: &BTreeMap<Key, Value>) -> (SystemConfig, SystemConfig) {
        let monolithic = SystemConfig::from_monolithic(&store[&keys::config()]).unwrap();
        let decomposed = SystemConfig::from_decomposed(
            store
                .iter()
                .filter(|(k, _)| **k != keys::config())
                .map(|(k, v)| (k.clone(), v.clone())),
        )
        .unwrap();
        (monolithic, decomposed)
    }

    #[test]
    fn writes_store_both_views_and_leave_nothing_of_a_larger_layout() {
        // The layout before had more of everything than the one written now.
        let mut larger = system_config();
        larger.layout.commit_proxies.push("proxy-2".into());
        larger
            .layout
            .resolvers
            .insert(BeginKey::from("t"), "resolver-2".into());
        larger.layout.logs.insert(LogId(7), "log-7".into());
        larger
            .cluster
            .parameters
            .insert("gone".into(), "soon".into());
        let mut before = larger.decomposed().unwrap();
        before.push((keys::config(), larger.monolithic_value().unwrap()));
        // A user key beside the system keys is left alone.
        before.push((Key::from_static(b"user"), Value::from_static(b"kept")));

        let now = system_config();
        let writes = system_writes(&now).unwrap();
        assert!(
            matches!(&writes[0], Mutation::ClearRange { range } if *range == keys::cluster_range())
        );
        assert!(
            matches!(&writes[1], Mutation::ClearRange { range } if *range == keys::layout_range())
        );
        let store = apply(&before, &writes);
        assert_eq!(
            store[&Key::from_static(b"user")],
            Value::from_static(b"kept")
        );
        let mut system_only = store.clone();
        system_only.remove(&Key::from_static(b"user"));
        let (monolithic, decomposed) = both_views(&system_only);
        assert_eq!(monolithic, now);
        assert_eq!(decomposed, now);
    }

    proptest! {
        /// For any configuration written over any other: both views read back as the one
        /// written, and nothing of the one before survives.
        #[test]
        fn any_configuration_overwrites_any_other(
            before in arb_system_config(),
            now in arb_system_config(),
        ) {
            let mut stored = before.decomposed().unwrap();
            stored.push((keys::config(), before.monolithic_value().unwrap()));
            let store = apply(&stored, &system_writes(&now).unwrap());
            let (monolithic, decomposed) = both_views(&store);
            prop_assert_eq!(monolithic, now.clone());
            prop_assert_eq!(decomposed, now);
        }
    }
}
