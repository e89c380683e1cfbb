//! Resolver workers (`strata serve --role resolver`): a new resolver for each epoch, of the
//! director's settings, checked.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, Result, Stage};
use strata_net::{Recruiter, Recruitment, ResolverSettings, Role, Stages};
use strata_resolver::{HistoryConfig, ResolverConfig, WindowResolver};
use tokio::sync::watch;

/// `config` as a recruitment carries it.
pub(crate) fn resolver_settings(config: &ResolverConfig) -> ResolverSettings {
    ResolverSettings {
        window_versions: config.history.window_versions,
        max_run_batches: config.history.max_run_batches,
        recent_runs: u32::try_from(config.history.recent_runs).unwrap_or(u32::MAX),
        predecessor_wait: config.predecessor_wait,
        batch_transactions_max: config.batch_transactions_max as u64,
    }
}

/// The resolver configuration `settings` ask for, checked: every count at least 1, runs of at
/// most 65,536 batches, at most 1,024 recent runs, batches of at most 10,000,000
/// transactions, and a predecessor wait of at most 60 s.
/// [`EmbeddedConfig::validate`](crate::EmbeddedConfig::validate) holds the director's own
/// resolvers to the same limits.
///
/// Errors: `InvalidRequest` naming the first setting out of range.
pub(crate) fn resolver_config(settings: ResolverSettings) -> Result<ResolverConfig> {
    let out_of_range = |what: &str, value: u64, max: u64| {
        Error::new(
            Stage::Resolver,
            ErrorKind::InvalidRequest(format!(
                "resolver setting {what} = {value} is out of range (1 to {max})"
            )),
        )
    };
    let check = |what: &str, value: u64, max: u64| {
        if (1..=max).contains(&value) {
            Ok(value)
        } else {
            Err(out_of_range(what, value, max))
        }
    };
    let window_versions = check("window_versions", settings.window_versions, u64::MAX)?;
    let max_run_batches = check("max_run_batches", settings.max_run_batches.into(), 65_536)?;
    let recent_runs = check("recent_runs", settings.recent_runs.into(), 1_024)?;
    let batch = check(
        "batch_transactions_max",
        settings.batch_transactions_max,
        10_000_000,
    )?;
    let wait_ms = u64::try_from(settings.predecessor_wait.as_millis()).unwrap_or(u64::MAX);
    if wait_ms > 60_000 {
        return Err(Error::new(
            Stage::Resolver,
            ErrorKind::InvalidRequest(format!(
                "resolver setting predecessor_wait = {wait_ms} ms is out of range (at most \
                 60,000)"
            )),
        ));
    }
    Ok(ResolverConfig {
        history: HistoryConfig {
            window_versions,
            max_run_batches: u32::try_from(max_run_batches).unwrap_or(u32::MAX),
            recent_runs: usize::try_from(recent_runs).unwrap_or(usize::MAX),
        },
        predecessor_wait: settings.predecessor_wait,
        batch_transactions_max: usize::try_from(batch).unwrap_or(usize::MAX),
    })
}

/// A resolver worker: a new resolver for each epoch it is recruited for, of the settings the
/// recruitment carries (or of its own configuration when it carries none), published (for its
/// server to serve) in place of the one before.
pub struct ResolverWorker {
    config: ResolverConfig,
    epoch: Mutex<Option<Epoch>>,
    publish: watch::Sender<Arc<Stages>>,
}

impl ResolverWorker {
    /// A worker that runs resolvers of `config` and publishes them on `publish`.
    pub fn new(config: ResolverConfig, publish: watch::Sender<Arc<Stages>>) -> ResolverWorker {
        ResolverWorker {
            config,
            epoch: Mutex::new(None),
            publish,
        }
    }
}

#[async_trait]
impl Recruiter for ResolverWorker {
    fn role(&self) -> Role {
        Role::Resolver
    }

    async fn recruit(&self, r: Recruitment) -> Result<u32> {
        let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        // A stale director learns first that it is stale.
        super::fence_stale(Stage::Resolver, *epoch, r.epoch)?;
        let config = match r.resolver {
            Some(settings) => resolver_config(settings)?,
            None => self.config,
        };
        let resolver = WindowResolver::new(r.epoch, r.recovery_version, config);
        self.publish.send_replace(Arc::new(Stages {
            resolvers: vec![Arc::new(resolver)],
            ..Stages::default()
        }));
        *epoch = Some(r.epoch);
        tracing::info!(
            epoch = r.epoch.0,
            from = r.recovery_version.0,
            "recruited: resolver"
        );
        Ok(0)
    }

    fn epoch(&self) -> Option<Epoch> {
        *self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use strata_core::{KeyRange, ResolveBatch, TransactionConflicts, Verdict, Version};

    #[test]
    fn resolver_settings_carry_a_configuration_whole_and_bad_ones_are_refused() {
        let config = ResolverConfig {
            history: HistoryConfig {
                window_versions: 1_000,
                max_run_batches: 4,
                recent_runs: 2,
            },
            predecessor_wait: Duration::from_millis(250),
            batch_transactions_max: 500,
        };
        assert_eq!(resolver_config(resolver_settings(&config)).unwrap(), config);
        let default = ResolverConfig::default();
        assert_eq!(
            resolver_config(resolver_settings(&default)).unwrap(),
            default
        );
        let good = resolver_settings(&config);
        let bad = [
            (
                "window_versions",
                ResolverSettings {
                    window_versions: 0,
                    ..good
                },
            ),
            (
                "max_run_batches",
                ResolverSettings {
                    max_run_batches: 0,
                    ..good
                },
            ),
            (
                "max_run_batches",
                ResolverSettings {
                    max_run_batches: 65_537,
                    ..good
                },
            ),
            (
                "recent_runs",
                ResolverSettings {
                    recent_runs: 0,
                    ..good
                },
            ),
            (
                "recent_runs",
                ResolverSettings {
                    recent_runs: 1_025,
                    ..good
                },
            ),
            (
                "batch_transactions_max",
                ResolverSettings {
                    batch_transactions_max: 0,
                    ..good
                },
            ),
            (
                "batch_transactions_max",
                ResolverSettings {
                    batch_transactions_max: 10_000_001,
                    ..good
                },
            ),
            (
                "predecessor_wait",
                ResolverSettings {
                    predecessor_wait: Duration::from_secs(61),
                    ..good
                },
            ),
        ];
        for (field, settings) in bad {
            let e = resolver_config(settings).unwrap_err();
            assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[tokio::test]
    async fn a_resolver_worker_runs_the_settings_it_is_recruited_with() {
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let worker = ResolverWorker::new(ResolverConfig::default(), publish);
        let narrow = ResolverConfig {
            history: HistoryConfig {
                window_versions: 10,
                ..HistoryConfig::default()
            },
            ..ResolverConfig::default()
        };
        let recruitment = |epoch, resolver| Recruitment {
            epoch: Epoch(epoch),
            role: Role::Resolver,
            recovery_version: Version(100),
            resolver,
            proxy: None,
        };
        // Refused settings recruit nothing.
        let zero = ResolverSettings {
            recent_runs: 0,
            ..resolver_settings(&narrow)
        };
        assert!(worker.recruit(recruitment(1, Some(zero))).await.is_err());
        assert_eq!(Recruiter::epoch(&worker), None);
        worker
            .recruit(recruitment(2, Some(resolver_settings(&narrow))))
            .await
            .unwrap();
        // A read 50 versions old is outside a window of 10, not the worker's own 5,000,000.
        let old_read = |epoch| ResolveBatch {
            epoch: Epoch(epoch),
            previous_version: Version(100),
            version: Version(150),
            transactions: vec![TransactionConflicts {
                read_version: Some(Version(100)),
                read_conflicts: vec![KeyRange::single("k")],
                write_conflicts: vec![],
            }],
        };
        let resolver = published.borrow().resolvers[0].clone();
        let verdicts = resolver.resolve(old_read(2)).await.unwrap();
        assert!(
            matches!(verdicts[0], Verdict::TooOld { .. }),
            "{verdicts:?}"
        );
        // A recruitment without settings runs the worker's own configuration.
        worker.recruit(recruitment(3, None)).await.unwrap();
        let resolver = published.borrow().resolvers[0].clone();
        let verdicts = resolver.resolve(old_read(3)).await.unwrap();
        assert_eq!(verdicts, vec![Verdict::Committed]);
        // A stale recruitment is fenced before its settings are read.
        let e = worker
            .recruit(recruitment(3, Some(zero)))
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Fenced { .. }), "{e}");
    }
}

#[cfg(test)]
mod config_tests {
    #![allow(clippy::unwrap_used)]

    use crate::EmbeddedConfig;

    #[test]
    fn a_director_refuses_resolver_settings_its_workers_would_refuse() {
        EmbeddedConfig::default().validate().unwrap();
        let mut config = EmbeddedConfig::default();
        config.resolver.batch_transactions_max = 0;
        let e = config.validate().unwrap_err();
        assert!(e.to_string().contains("batch_transactions_max"), "{e}");
        let mut config = EmbeddedConfig::default();
        config.resolver.predecessor_wait = std::time::Duration::from_secs(120);
        let e = config.validate().unwrap_err();
        assert!(e.to_string().contains("predecessor_wait"), "{e}");
    }
}
