//! The server's two background loops and what they do: the apply loop pulls entries from
//! the followed log, decodes them and applies them to the window; the flush loop makes the
//! versions older than the window and known committed durable in redb, then pops the log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_core::{ErrorKind, KeyRange, Mutation, Result, Version, buggify};

use crate::atomic::Bases;
use crate::blocking;
use crate::codec::{DATA, DURABLE_VERSION, META, decode_entry};
use crate::errors::{db_error, error, guarded};
use crate::files::write_tx;
use crate::server::Inner;
use crate::window::Flushed;

impl Inner {
    /// Applies pulled entries, in order, unless a roll back happened since they were pulled;
    /// their atomic operations with `bases` (see `atomic.rs`), unless those are of another
    /// applied version (then the entries are dropped, and pulled again).
    fn apply(
        &self,
        generation: u64,
        entries: Vec<(Version, Vec<Mutation>)>,
        bases: &Bases,
    ) -> Result<()> {
        let mut st = self.state()?;
        if st.generation != generation || bases.applied.is_some_and(|at| at != st.applied) {
            return Ok(());
        }
        for (version, mutations) in entries {
            if version <= st.applied {
                continue;
            }
            for (seq, m) in (0u32..).zip(mutations) {
                st.window.apply((version, seq), m, &self.shards, bases)?;
            }
            st.applied = version;
        }
        self.applied.set(st.applied);
        Ok(())
    }

    pub(crate) async fn apply_loop(self: Arc<Self>) {
        loop {
            let (after, generation) = match self.state() {
                Ok(st) if st.broken().is_ok() => (st.applied, st.generation),
                _ => return,
            };
            let log = match self.log() {
                Ok(log) => log,
                Err(_) => return,
            };
            let entries = match log.pull(after, self.config.pull_limit).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "storage could not pull from its log; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !entries.is_empty() && buggify::fires("storage.apply.lag") {
                tokio::time::sleep(Duration::from_millis(1 + buggify::below(50))).await;
            }
            let decoded: Result<Vec<(Version, Vec<Mutation>)>> = entries
                .into_iter()
                .map(|e| decode_entry(e.version, e.payload))
                .collect();
            let result = match decoded {
                Ok(entries) => self
                    .atomic_bases(&entries)
                    .await
                    .and_then(|bases| self.apply(generation, entries, &bases)),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "storage stopped applying");
                if let Ok(mut st) = self.state() {
                    st.failed = Some(e);
                }
                return;
            }
        }
    }

    pub(crate) async fn flush_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.flush_interval).await;
            if buggify::fires("storage.flush.skip") {
                continue;
            }
            if let Err(e) = self.flush().await {
                // A damaged file is never written again, and redb refuses every write after
                // one failed: retrying would only repeat the error.
                if self.state().is_ok_and(|st| st.damaged.is_some()) {
                    tracing::error!(error = %e, "storage file damaged; flushes stop");
                    return;
                }
                if self.state().is_ok_and(|st| st.failed.is_some()) {
                    tracing::error!(error = %e, "storage flush failed; flushes stop until the file is opened again");
                    return;
                }
                tracing::error!(error = %e, "storage flush failed; retrying");
            }
        }
    }

    /// Writes every version older than the window *and known committed* to redb, with the new
    /// durable version, in one write transaction; then forgets them in memory and lets the log
    /// pop them.
    ///
    /// The rule: only versions known committed (held durably by every log of the generation)
    /// may become durable. With several logs, the followed log may hold a batch the others
    /// never received; recovery then chooses a version below it and rolls it back, which it
    /// could not do had the batch reached redb. Such batches are applied and readable in memory,
    /// but stay there until [`RedbStorage::advance_committed`](crate::RedbStorage::advance_committed) covers them or a roll back drops
    /// them. So the durable version never passes what recovery will choose.
    pub(crate) async fn flush(self: &Arc<Self>) -> Result<()> {
        let (target, clears, keys) = {
            let mut st = self.state()?;
            // A damaged file is not written to again.
            if let Some(e) = &st.damaged {
                return Err(e.clone());
            }
            // Read under the state lock, so a roll back cannot slip in between choosing the
            // target and raising `oldest_readable`. `applied - window <= applied`, so the
            // target is never above what is applied, however far `committed` is.
            let committed = Version(self.committed.load(Ordering::Acquire));
            let target = st
                .applied
                .saturating_sub(self.config.window_versions)
                .min(committed);
            if target <= st.durable || self.config.read_only {
                return Ok(());
            }
            // From now on no read may need the state between the old durable version and
            // target, which redb is about to lose.
            st.oldest_readable = st.oldest_readable.max(target);
            let (clears, keys) = st.window.flushable(target);
            (target, clears, keys)
        };
        let inner = self.clone();
        let wrote = blocking::run(self.config.blocking, "flush", move || {
            inner.write(target, &clears, &keys)
        })
        .await?;
        let wrote = self.note(wrote);
        if let Err(e) = &wrote
            && matches!(e.kind, ErrorKind::Io(_))
            && let Ok(mut st) = self.state()
        {
            // redb refuses every write after an I/O error, so this server can make nothing
            // durable any more: it stops, monitoring ends the epoch, and the next one opens
            // the file again (redb's repair at that open rewrites the commit header, so what
            // it then reports is on the disk).
            st.failed.get_or_insert_with(|| e.clone());
        }
        let wrote = wrote?;
        {
            // Whether this flush wrote or an overlapping one with a newer target wrote first
            // (redb holds `target` or newer either way), everything up to `target` is durable
            // now: a caller of `flush` that then reads the durable version must see it, even
            // before the other flush updates memory.
            let mut st = self.state()?;
            // `max`: an overlapping flush with a newer target may have got here first.
            st.durable = st.durable.max(target);
            st.window.forget_through(target);
        }
        if !wrote {
            // The flush that wrote pops the log itself.
            return Ok(());
        }
        tracing::debug!(durable = target.0, "storage flushed");
        if self.config.pop_log {
            self.log()?.pop(target).await?;
        }
        Ok(())
    }

    /// Writes `clears`, then `keys`, and `target` as the durable version, in one redb write
    /// transaction, unless redb already holds `target` or newer. Blocking. Returns whether it
    /// wrote.
    fn write(&self, target: Version, clears: &[KeyRange], keys: &[Flushed]) -> Result<bool> {
        // Declared before `db`, so dropped after it, on every path: as long as `close` cannot
        // take the lock, a write may still hold the database.
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("storage poisoned by a panic".into())))?;
        if writer.closed {
            return Err(error(ErrorKind::Unavailable(
                "storage server closed".into(),
            )));
        }
        if target <= writer.durable {
            return Ok(false);
        }
        let db = self.db()?;
        let path = &self.path;
        let doing = "flushing";
        // Guarded inside the writer lock, so a panic in redb does not poison it.
        guarded(path, doing, || {
            let tx = write_tx(&db, path)?;
            {
                let mut data = tx.open_table(DATA).map_err(db_error(path, doing))?;
                for r in clears {
                    data.retain_in::<&[u8], _>(r.begin().as_ref()..r.end().as_ref(), |_, _| false)
                        .map_err(db_error(path, doing))?;
                }
                for (k, v) in keys {
                    match v {
                        Some(v) => {
                            data.insert(k.as_ref(), v.as_ref())
                                .map_err(db_error(path, doing))?;
                        }
                        None => {
                            data.remove(k.as_ref()).map_err(db_error(path, doing))?;
                        }
                    }
                }
                let mut meta = tx.open_table(META).map_err(db_error(path, doing))?;
                meta.insert(DURABLE_VERSION, target.0)
                    .map_err(db_error(path, doing))?;
            }
            // Immediate durability: committed means synced.
            tx.commit().map_err(db_error(path, doing))
        })?;
        writer.durable = target;
        Ok(true)
    }
}
