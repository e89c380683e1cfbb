//! Reads: waiting (bounded) for a read's version, and the durable side of every read. A point
//! read the window cannot answer (the window's answer is given in `server.rs`) and every range
//! read go to a redb snapshot taken under the state lock, on a blocking thread; a range read
//! merges the window over the snapshot with [`strata_core::merge`].

use std::sync::{Arc, MutexGuard};

use bytes::Bytes;
use redb::ReadableDatabase;
use strata_core::merge::{Direction, OlderEntry, merge};
use strata_core::{ErrorKind, Key, KeyRange, RangeRead, Result, Value, Version, printable};

use crate::blocking;
use crate::codec::DATA;
use crate::errors::{db_error, error, guarded};
use crate::server::{Inner, State};

/// A pair read from a redb snapshot, borrowed: copied only if a range read returns it.
struct DurablePair<'a>(
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

impl OlderEntry for DurablePair<'_> {
    fn key(&self) -> &[u8] {
        self.0.value()
    }

    fn to_pair(&self) -> (Key, Value) {
        (
            Bytes::copy_from_slice(self.0.value()),
            Bytes::copy_from_slice(self.1.value()),
        )
    }
}

impl Inner {
    /// A redb snapshot, for a read that holds the state lock `st`: taken under it, so that no
    /// flush commits between the read's check of the window and the snapshot. Guarded, because
    /// redb may panic on a damaged file even here; the panic is caught before it could unwind
    /// through the lock (and poison it) or through the caller's task. Damage is recorded in `st`.
    pub(crate) fn begin_read(&self, st: &mut State) -> Result<redb::ReadTransaction> {
        let db = self.db()?;
        let doing = "starting a read";
        st.note(guarded(&self.path, doing, || {
            db.begin_read().map_err(db_error(&self.path, doing))
        }))
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        if self.shards.iter().any(|s| s.contains(key)) {
            Ok(())
        } else {
            Err(error(ErrorKind::WrongShard {
                key: printable(key),
            }))
        }
    }

    /// Waits (bounded) until `version` is applied; then checks it is not too old.
    async fn readable(&self, version: Version) -> Result<()> {
        let reached = self.applied.wait_for(|v| v >= version);
        if tokio::time::timeout(self.config.read_wait, reached)
            .await
            .is_err()
        {
            return Err(error(ErrorKind::FutureVersion {
                version,
                newest: self.applied.get(),
            }));
        }
        Ok(())
    }

    /// The state, once `version` is applied (bounded wait) and if it is still readable: what
    /// every read starts from.
    pub(crate) async fn state_at(&self, version: Version) -> Result<MutexGuard<'_, State>> {
        self.readable(version).await?;
        let st = self.state()?;
        st.broken()?;
        if version < st.oldest_readable {
            return Err(error(ErrorKind::TooOld {
                version,
                oldest: st.oldest_readable,
            }));
        }
        Ok(st)
    }

    /// A point read of `key` from the durable store, through `snapshot` (taken under the state
    /// lock after the window had no answer), on a blocking thread.
    pub(crate) async fn get_durable(
        self: Arc<Self>,
        key: Key,
        snapshot: redb::ReadTransaction,
    ) -> Result<Option<Value>> {
        let inner = self.clone();
        let read = blocking::run(self.config.blocking, "read", move || {
            let path = &inner.path;
            let doing = &format!("reading {}", printable(&key));
            // The snapshot moves in, so a panic drops it inside the guard.
            guarded(path, doing, move || {
                let table = snapshot.open_table(DATA).map_err(db_error(path, doing))?;
                let value = table.get(key.as_ref()).map_err(db_error(path, doing))?;
                Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
            })
        })
        .await?;
        self.note(read)
    }

    /// Up to `limit` pairs of `range` at `version` (see
    /// [`strata_core::StorageServer::get_range`]).
    pub(crate) async fn get_range(
        self: &Arc<Self>,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        if !self
            .shards
            .iter()
            .any(|s| s.begin() <= range.begin() && range.end() <= s.end())
        {
            return Err(error(ErrorKind::WrongShard {
                key: format!("{range}"),
            }));
        }
        let (window, clears, snapshot) = {
            let mut st = self.state_at(version).await?;
            let window = st.window.scan(&range, version);
            let clears = st.window.clears_in(&range, version);
            (window, clears, self.begin_read(&mut st)?)
        };
        let inner = self.clone();
        let read = blocking::run(self.config.blocking, "read", move || {
            let path = &inner.path;
            let doing = &format!("reading {range}");
            // The snapshot moves in, so a panic drops it inside the guard.
            guarded(path, doing, move || -> Result<RangeRead> {
                let table = snapshot.open_table(DATA).map_err(db_error(path, doing))?;
                let durable = table
                    .range::<&[u8]>(range.begin().as_ref()..range.end().as_ref())
                    .map_err(db_error(path, doing))?
                    .map(|item| item.map(|(key, value)| DurablePair(key, value)));
                // The window is newer than redb, and its range clears hide what redb holds.
                merge(
                    window,
                    durable,
                    |key: &[u8]| clears.iter().any(|c| c.contains(key)),
                    Direction::from_reverse(reverse),
                    limit,
                )
                .map_err(db_error(path, doing))
            })
        })
        .await?;
        self.note(read)
    }
}
