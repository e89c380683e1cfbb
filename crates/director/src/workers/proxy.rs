//! Commit proxy workers (`strata serve --role proxy`): a commit proxy for each epoch, wired to
//! the epoch's sequencer, resolvers and logs where the recruitment says they are served.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, LogServer, Resolver, Result, Sequencer, Stage,
};
use strata_net::{
    Access, ProxySettings, ProxyWiring, Recruiter, Recruitment, RemoteLog, RemoteProxy,
    RemoteResolver, RemoteSequencer, Role, Stages,
};
use tokio::sync::watch;

use super::{RECRUIT_TIMEOUT, Reach};

/// `config` as a recruitment carries it.
pub(crate) fn proxy_settings(config: &ProxyConfig) -> ProxySettings {
    let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    ProxySettings {
        batch_window: config.batch_window,
        batch_transactions_max: wide(config.batch_transactions_max),
        batch_bytes_max: wide(config.batch_bytes_max),
        queue_transactions_max: wide(config.queue_transactions_max),
        queue_wait: config.queue_wait,
        in_flight_batches_max: wide(config.in_flight_batches_max),
        stall_timeout: config.stall_timeout,
    }
}

/// The most of each count a proxy recruitment may ask for, and the longest of each wait:
/// [`EmbeddedConfig::validate`](crate::EmbeddedConfig::validate) leaves the director's own
/// proxies free, but a worker runs what a message says, so it bounds what it builds.
const COUNT_MAX: u64 = 10_000_000;
const WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The proxy configuration `settings` ask for, checked: counts from 1 (pipeline depth from 0)
/// to 10,000,000, waits of at most 60 s, and a stall timeout above zero; the batch size in
/// bytes is checked by [`BatchingProxy::new`] against the wire limit.
///
/// Errors: `InvalidRequest` naming the first setting out of range.
pub(crate) fn proxy_config(settings: ProxySettings) -> Result<ProxyConfig> {
    let refuse = |why: String| {
        Error::new(
            Stage::CommitProxy,
            ErrorKind::InvalidRequest(format!("proxy setting {why}")),
        )
    };
    let count = |what: &str, value: u64, min: u64| {
        if (min..=COUNT_MAX).contains(&value) {
            Ok(usize::try_from(value).unwrap_or(usize::MAX))
        } else {
            Err(refuse(format!(
                "{what} = {value} is out of range ({min} to {COUNT_MAX})"
            )))
        }
    };
    let wait = |what: &str, value: std::time::Duration| {
        if value <= WAIT_MAX {
            Ok(value)
        } else {
            Err(refuse(format!(
                "{what} = {} ms is out of range (at most {} ms)",
                value.as_millis(),
                WAIT_MAX.as_millis()
            )))
        }
    };
    if settings.stall_timeout.is_zero() {
        return Err(refuse(
            "stall_timeout = 0 is out of range (above zero)".into(),
        ));
    }
    Ok(ProxyConfig {
        batch_window: wait("batch_window", settings.batch_window)?,
        batch_transactions_max: count(
            "batch_transactions_max",
            settings.batch_transactions_max,
            1,
        )?,
        batch_bytes_max: usize::try_from(settings.batch_bytes_max).unwrap_or(usize::MAX),
        queue_transactions_max: count(
            "queue_transactions_max",
            settings.queue_transactions_max,
            1,
        )?,
        queue_wait: wait("queue_wait", settings.queue_wait)?,
        in_flight_batches_max: count("in_flight_batches_max", settings.in_flight_batches_max, 0)?,
        stall_timeout: wait("stall_timeout", settings.stall_timeout)?,
    })
}

/// How long a recruitment may take on the worker, from its arrival (waiting for an earlier
/// one included) to its proxy built: a second less than the director waits for it
/// ([`RECRUIT_TIMEOUT`], which also covers the calls there and back), so that a proxy is
/// published only while the director still waits for it.
const BUILD_DEADLINE: std::time::Duration =
    RECRUIT_TIMEOUT.saturating_sub(std::time::Duration::from_secs(1));

/// A commit proxy worker: a new proxy for each epoch it is recruited for, which calls the
/// epoch's stages where the recruitment's [`ProxyWiring`] says they are (the sequencer and
/// resolvers on their workers or the director's port for the cluster, the logs on that
/// port), published in place of the one before.
///
/// The proxy of an ended epoch needs no stopping: the next epoch's sequencer, resolvers and
/// logs fence its batches, and it fails.
pub struct ProxyWorker {
    access: Access,
    /// The epoch it runs and its proxy, once recruited.
    running: Mutex<Option<(Epoch, Arc<BatchingProxy>)>>,
    /// One recruitment at a time: each connects to the stages it names before it publishes,
    /// and a slower, older one must not replace a newer one's proxy.
    recruiting: tokio::sync::Mutex<()>,
    publish: watch::Sender<Arc<Stages>>,
}

impl ProxyWorker {
    /// A worker that reaches the stages its proxies call with `access` (the cluster's id and
    /// TLS credentials) and publishes its proxies on `publish`.
    pub fn new(access: Access, publish: watch::Sender<Arc<Stages>>) -> ProxyWorker {
        ProxyWorker {
            access,
            running: Mutex::new(None),
            recruiting: tokio::sync::Mutex::new(()),
            publish,
        }
    }

    fn running(&self) -> Option<(Epoch, Arc<BatchingProxy>)> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The proxy `wiring` describes, for `epoch`: every stage it calls connected to (the
    /// sequencer checked to be of `epoch`).
    async fn build(&self, epoch: Epoch, wiring: ProxyWiring) -> Result<BatchingProxy> {
        let config = proxy_config(wiring.settings)?;
        // The director's stages answer only calls that carry its token for this epoch; the
        // workers' stages take it too, and ask nothing of it.
        let access = match wiring.token {
            Some(token) => self.access.clone().with_token(token),
            None => self.access.clone(),
        };
        let sequencer = RemoteSequencer::connect(&wiring.sequencer, access.clone()).await?;
        let at = &wiring.sequencer;
        super::reached_epoch(Stage::Sequencer, "sequencer", at, sequencer.epoch(), epoch)?;
        let mut resolvers: Vec<(Key, Arc<dyn Resolver>)> = Vec::new();
        for (begin, address, index) in wiring.resolvers {
            let resolver = RemoteResolver::connect(&address, access.clone(), index).await?;
            resolvers.push((begin, Arc::new(resolver)));
        }
        let mut logs: Vec<Arc<dyn LogServer>> = Vec::new();
        for (id, address) in wiring.logs {
            logs.push(Arc::new(
                RemoteLog::connect(&address, access.clone(), id).await?,
            ));
        }
        let sequencer: Arc<dyn Sequencer> = Arc::new(sequencer);
        BatchingProxy::new(epoch, sequencer, resolvers, logs, config)
    }
}

#[async_trait]
impl Recruiter for ProxyWorker {
    fn role(&self) -> Role {
        Role::Proxy
    }

    async fn recruit(&self, r: Recruitment) -> Result<u32> {
        let Some(wiring) = r.proxy else {
            return Err(Error::new(
                Stage::CommitProxy,
                ErrorKind::InvalidRequest(
                    "a proxy's recruitment must say where the epoch's stages are".into(),
                ),
            ));
        };
        // The wait for an earlier recruitment counts too: a proxy built after the director
        // gave up on it would run unwatched (nothing names it, nothing asks its health).
        let built = tokio::time::timeout(BUILD_DEADLINE, async {
            let one = self.recruiting.lock().await;
            // A stale director learns first that it is stale, before anything is reached.
            super::fence_stale(Stage::CommitProxy, self.epoch(), r.epoch)?;
            Ok::<_, Error>((one, self.build(r.epoch, wiring).await?))
        })
        .await
        .map_err(|_| {
            Error::new(
                Stage::CommitProxy,
                ErrorKind::Timeout {
                    what: "the epoch's stages to be reached".into(),
                    after_ms: u64::try_from(BUILD_DEADLINE.as_millis()).unwrap_or(u64::MAX),
                },
            )
        })?;
        let (_one, proxy) = built?;
        let proxy = Arc::new(proxy);
        self.publish.send_replace(Arc::new(Stages {
            proxies: vec![proxy.clone()],
            ..Stages::default()
        }));
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some((r.epoch, proxy));
        tracing::info!(
            epoch = r.epoch.0,
            from = r.recovery_version.0,
            "recruited: commit proxy"
        );
        Ok(0)
    }

    fn epoch(&self) -> Option<Epoch> {
        self.running().map(|(epoch, _)| epoch)
    }

    /// What monitoring asks of a proxy in the director's process (`BatchingProxy::health`):
    /// a batch that failed, a batcher that stopped, or a stalled chain.
    fn failure(&self) -> Option<String> {
        let (_, proxy) = self.running()?;
        proxy.health().err().map(|e| e.to_string())
    }
}

#[async_trait]
impl Reach for RemoteProxy {
    const ROLE: Role = Role::Proxy;

    async fn reach(address: &str, access: Access, index: u32, epoch: Epoch) -> Result<Self> {
        let proxy = RemoteProxy::connect(address, access, index).await?;
        super::reached_epoch(Stage::CommitProxy, "proxy", address, proxy.epoch(), epoch)?;
        Ok(proxy)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn proxy_settings_carry_a_configuration_whole_and_bad_ones_are_refused() {
        let config = ProxyConfig {
            batch_window: Duration::from_micros(150),
            batch_transactions_max: 300,
            batch_bytes_max: 1 << 20,
            queue_transactions_max: 4_000,
            queue_wait: Duration::from_millis(20),
            in_flight_batches_max: 3,
            stall_timeout: Duration::from_secs(2),
        };
        assert_eq!(proxy_config(proxy_settings(&config)).unwrap(), config);
        let default = ProxyConfig::default();
        assert_eq!(proxy_config(proxy_settings(&default)).unwrap(), default);
        let good = proxy_settings(&config);
        let bad = [
            (
                "batch_transactions_max",
                ProxySettings {
                    batch_transactions_max: 0,
                    ..good
                },
            ),
            (
                "queue_transactions_max",
                ProxySettings {
                    queue_transactions_max: COUNT_MAX + 1,
                    ..good
                },
            ),
            (
                "in_flight_batches_max",
                ProxySettings {
                    in_flight_batches_max: u64::MAX,
                    ..good
                },
            ),
            (
                "batch_window",
                ProxySettings {
                    batch_window: Duration::from_secs(61),
                    ..good
                },
            ),
            (
                "queue_wait",
                ProxySettings {
                    queue_wait: Duration::from_secs(3_600),
                    ..good
                },
            ),
            (
                "stall_timeout",
                ProxySettings {
                    stall_timeout: Duration::ZERO,
                    ..good
                },
            ),
        ];
        for (what, settings) in bad {
            let e = proxy_config(settings).unwrap_err();
            assert!(
                matches!(&e.kind, ErrorKind::InvalidRequest(why) if why.contains(what)),
                "{what}: {e}"
            );
        }
        assert_eq!(
            proxy_config(ProxySettings {
                in_flight_batches_max: 0,
                ..good
            })
            .unwrap()
            .in_flight_batches_max,
            0
        );
    }

    /// A recruitment whose stages never answer gives up within [`BUILD_DEADLINE`], a second
    /// before the director does, counting the wait behind an earlier recruitment: nothing is
    /// published after the director gave up. (Virtual time: the silent server never answers,
    /// so the clock only moves when everything waits.)
    #[tokio::test(start_paused = true)]
    async fn a_recruitment_gives_up_before_the_director_does_waiting_included() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let worker = Arc::new(ProxyWorker::new(
            Access::new(strata_net::ClusterId::new("c").unwrap(), None),
            publish,
        ));
        let recruitment = |epoch| Recruitment {
            epoch: Epoch(epoch),
            role: Role::Proxy,
            recovery_version: strata_core::Version(0),
            resolver: None,
            proxy: Some(ProxyWiring {
                sequencer: address.clone(),
                resolvers: vec![(Key::new(), address.clone(), 0)],
                logs: vec![(strata_core::LogId(1), address.clone())],
                settings: proxy_settings(&ProxyConfig::default()),
                token: None,
            }),
        };
        let started = tokio::time::Instant::now();
        let (first, second) = tokio::join!(
            worker.recruit(recruitment(5)),
            worker.recruit(recruitment(6))
        );
        for answer in [first, second] {
            let e = answer.unwrap_err();
            assert!(matches!(e.kind, ErrorKind::Timeout { .. }), "{e}");
        }
        assert!(
            started.elapsed() <= BUILD_DEADLINE,
            "{:?}",
            started.elapsed()
        );
        assert!(BUILD_DEADLINE < RECRUIT_TIMEOUT);
        assert_eq!(worker.epoch(), None);
        assert!(published.borrow().proxies.is_empty());
    }

    /// A director configuration its proxy workers would refuse is refused before anything
    /// is written, not passed over worker by worker at every recovery.
    #[test]
    fn the_director_refuses_proxy_settings_its_workers_would_refuse() {
        crate::EmbeddedConfig::default().validate().unwrap();
        let config = crate::EmbeddedConfig {
            proxy: ProxyConfig {
                queue_wait: Duration::from_secs(90),
                ..ProxyConfig::default()
            },
            ..crate::EmbeddedConfig::default()
        };
        let e = config.validate().unwrap_err();
        assert!(e.to_string().contains("queue_wait"), "{e}");
    }
}
