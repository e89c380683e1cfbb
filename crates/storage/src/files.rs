//! The storage file on disk: creating it whole or not at all, opening it (with redb's
//! integrity check and the shards record), two-phase write transactions, closing it, and
//! reading what a file holds without writing it ([`stored_at`], [`durable_version_at`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use strata_core::{KeyRange, Result, Version};

use crate::backend;
use crate::codec::{
    DATA, DURABLE_VERSION, META, SHARDS, SHARDS_KEY, decode_shards, encode_shards, shown,
};
use crate::errors::{corruption, db_error, guarded, io_error};
use crate::overlay::ReadOnlyOverlay;

/// What a storage file holds, as [`stored_at`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its durable version (0 for a file never flushed).
    pub durable: Version,
    /// The key ranges it was first opened for; `None` for a file written before they were
    /// recorded.
    pub shards: Option<Vec<KeyRange>>,
}

/// Opens the database at `path`, an existing file (`create_if_missing` made it whole).
///
/// With `check`, the open runs redb's integrity check (`Builder::set_check_integrity_on_open`,
/// the check and repair of `Database::check_integrity` run by the open itself): it verifies the
/// checksum of every page of the committed trees before trusting any of them, so damage is
/// `Corruption` naming the file, found at open rather than by whichever read first lands on it.
/// Without it, redb trusts a file that was closed cleanly: a damaged page may make the open or
/// a read panic (caught by `guarded`), and since reads do not verify checksums, a read may even
/// return wrong values. A plain open followed by `Database::check_integrity` would check the
/// same, but only after the open had already read unverified pages (in the damage test most
/// damaged files then made redb panic inside the open); this way redb itself reports them.
///
/// That check does not report what it repairs, but for this crate's files no repair can hide
/// damage: every commit is two-phase (see `write_tx`), so a primary commit slot or tree that
/// fails its checksums is an error, never a silent fall back to the previous commit; what is
/// left to repair is redb's allocator state, which it rebuilds from the verified trees anyway.
///
/// Cost: it reads every live page and commits once; see [`StorageConfig::check_integrity`](crate::StorageConfig::check_integrity).
fn open_db(path: &Path, check: bool, doing: &str) -> Result<redb::Database> {
    let mut builder = redb::Builder::new();
    builder.set_check_integrity_on_open(check);
    backend::create(&builder, path).map_err(db_error(path, doing))
}

/// Opens the file at `path` so that nothing is ever written to it: every write redb makes
/// (a repair, the shards record, the allocator state at close) goes to memory. A missing file
/// is an empty database in memory.
fn open_read_only(path: &Path, check: bool, doing: &str) -> Result<redb::Database> {
    let mut builder = redb::Builder::new();
    builder.set_check_integrity_on_open(check);
    if !exists(path)? {
        return builder
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_error(path, doing));
    }
    let file = std::fs::File::open(path).map_err(|e| io_error(path, doing, &e))?;
    let backend = ReadOnlyOverlay::new(file).map_err(|e| io_error(path, doing, &e))?;
    builder
        .create_with_backend(backend)
        .map_err(db_error(path, doing))
}

/// A write transaction that commits in two phases. With redb's default one-phase commit, a
/// primary commit slot whose checksums fail is taken for a commit a crash interrupted, and redb
/// silently falls back to the previous commit. With two phases the primary slot is only made
/// primary once its data is synced, so a crash never leaves it invalid: one that fails its
/// checksums is damage, which redb then reports (`Corrupted`) instead of repairing by losing
/// the newest commit. (redb's own commit when a database closes is two-phase already; a file
/// left by a crash, though, ends with a flush's commit.) Losing the newest commit would be
/// worse than an error: the file would open at an older durable version, below what the log
/// may already have popped (without this, in the damage test, a crash image whose newest
/// commit was damaged opened at the previous durable version). It costs one more sync per
/// flush; measured, a flush of 100 keys took the same 2-3 ms with or without it (ext4).
pub(crate) fn write_tx(db: &redb::Database, path: &Path) -> Result<redb::WriteTransaction> {
    let mut tx = db
        .begin_write()
        .map_err(db_error(path, "starting a write"))?;
    tx.set_two_phase_commit(true);
    Ok(tx)
}

/// Drops a database handle, guarded: closing the last one writes redb's allocator state to the
/// file, which reads the file's system tree, so a damaged file may panic even here.
pub(crate) fn drop_db(path: &Path, db: Option<Arc<redb::Database>>) {
    if let Err(e) = guarded(path, "closing", move || {
        drop(db);
        Ok(())
    }) {
        tracing::error!(error = %e, "storage file damaged; closing it failed");
    }
}

/// Opens the storage file at `path` for a server owning `shards`, creating it (complete or not
/// at all) when missing, with redb's integrity check when `check`: the database and its durable
/// version (0 for a file never flushed). Blocking, guarded.
///
/// The file holds the shards it was first opened for, and no others: the first open records
/// them, and a later open for other shards is `Corruption` (a storage file of another server,
/// swapped or copied in).
pub(crate) fn open_file(
    path: &Path,
    shards: &[KeyRange],
    check: bool,
    read_only: bool,
) -> Result<(redb::Database, Version)> {
    let doing = "opening";
    guarded(path, doing, || {
        let db = if read_only {
            open_read_only(path, check, doing)?
        } else {
            create_if_missing(path)?;
            open_db(path, check, doing)?
        };
        let tx = write_tx(&db, path)?;
        let durable = {
            tx.open_table(DATA).map_err(db_error(path, doing))?;
            let meta = tx.open_table(META).map_err(db_error(path, doing))?;
            let durable = meta.get(DURABLE_VERSION).map_err(db_error(path, doing))?;
            let mut table = tx.open_table(SHARDS).map_err(db_error(path, doing))?;
            let wanted = encode_shards(shards);
            let stored = table
                .get(SHARDS_KEY)
                .map_err(db_error(path, doing))?
                .map(|v| v.value().to_vec());
            match stored {
                Some(stored) if stored != wanted => {
                    return Err(corruption(
                        path,
                        doing,
                        format!(
                            "it holds shards {}, not {}: a storage file of another server",
                            decode_shards(&stored)
                                .map_or_else(|| "(unreadable)".into(), |s| shown(&s)),
                            shown(shards)
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    table
                        .insert(SHARDS_KEY, wanted.as_slice())
                        .map_err(db_error(path, doing))?;
                }
            }
            Version(durable.map_or(0, |v| v.value()))
        };
        tx.commit().map_err(db_error(path, doing))?;
        Ok((db, durable))
    })
}

/// The name a storage file has while it is being created.
fn creating_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".creating");
    PathBuf::from(name)
}

/// Creates an empty database at `path` unless one is there, so that it appears complete or
/// not at all. redb creates a file in place, in steps (the file, its length, a header, then
/// its magic number): a crash in between would leave an empty or zero-filled file that every
/// later open refuses. So the database is made under a temporary name, with its tables
/// committed (synced), then renamed into place and the directory synced. A temporary file
/// left by a crash never held anything and is removed.
fn create_if_missing(path: &Path) -> Result<()> {
    if exists(path)? {
        return Ok(());
    }
    let creating = creating_path(path);
    let doing = "creating";
    match std::fs::remove_file(&creating) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(&creating, doing, &e));
        }
        _ => {}
    }
    {
        let db = backend::create(&redb::Builder::new(), &creating)
            .map_err(db_error(&creating, doing))?;
        let tx = write_tx(&db, &creating)?;
        tx.open_table(DATA).map_err(db_error(&creating, doing))?;
        tx.open_table(META).map_err(db_error(&creating, doing))?;
        tx.commit().map_err(db_error(&creating, doing))?;
    }
    std::fs::rename(&creating, path).map_err(|e| io_error(path, doing, &e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "syncing the directory", &e))
}

/// Whether `path` exists. Unlike `Path::exists`, which answers `false` whenever it cannot
/// tell, an I/O error (a parent that is not a directory, a directory that cannot be searched)
/// is returned as such: otherwise recovery would take an unreadable file for a missing one,
/// durable at version 0.
fn exists(path: &Path) -> Result<bool> {
    path.try_exists()
        .map_err(|e| io_error(path, "looking for the file", &e))
}

/// The durable version stored in the redb database at `path` (0 when there is none yet),
/// read without starting a server: recovery needs it to know how much history to replay.
/// Blocking; the database must not be open elsewhere.
///
/// The file is only read, never written: redb's writes at open (a repair after a crash, the
/// integrity check's bookkeeping) go to memory (`ReadOnlyOverlay`), so recovery can look
/// before it decides anything, and a directory it then refuses is left as it was.
///
/// It runs redb's integrity check first (as [`RedbStorage::open`](crate::RedbStorage::open) does by default), since
/// recovery looks here before anything else: a damaged file is `Corruption` naming the file,
/// found now rather than by a read after recovery chose its plan. No panic escapes: one inside
/// redb is `Corruption` too. A genuine I/O error is `Io`, naming the file.
/// The check reads the whole file: see [`StorageConfig::check_integrity`](crate::StorageConfig::check_integrity) for its cost.
pub fn durable_version_at(path: &Path) -> Result<Version> {
    Ok(stored_at(path)?.durable)
}

/// What the storage file at `path` holds: its durable version and the shards it was opened
/// for (both `0`/`None` when there is no file yet). Reads only, as [`durable_version_at`]
/// does, with the same integrity check.
pub fn stored_at(path: &Path) -> Result<Stored> {
    if !exists(path)? {
        return Ok(Stored {
            durable: Version::ZERO,
            shards: None,
        });
    }
    guarded(path, "reading the durable version", || {
        let doing = "reading the durable version";
        // An existing file is opened, never initialized: it is not empty (it was created
        // whole, see `create_if_missing`), and an empty one is refused below.
        let db = open_read_only(path, true, doing)?;
        let tx = db.begin_read().map_err(db_error(path, doing))?;
        let durable = match tx.open_table(META) {
            Ok(meta) => {
                let durable = meta.get(DURABLE_VERSION).map_err(db_error(path, doing))?;
                Version(durable.map_or(0, |v| v.value()))
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Version::ZERO,
            Err(e) => return Err(db_error(path, doing)(e)),
        };
        let shards =
            match tx.open_table(SHARDS) {
                Ok(table) => match table.get(SHARDS_KEY).map_err(db_error(path, doing))? {
                    Some(v) => Some(decode_shards(v.value()).ok_or_else(|| {
                        corruption(path, doing, "its shards record cannot be read")
                    })?),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_error(path, doing)(e)),
            };
        Ok(Stored { durable, shards })
    })
}
