//! One owner per data directory: the first thing every command does is take the directory's
//! lock (`strata.lock`, an exclusive `flock` holding the owner's process id), so that a second
//! process on a directory in use fails at once, naming the holder, before it reads or writes
//! anything. Within one process the lock is shared: every cluster and tool of the process on
//! that directory holds the same one, and it is released when the last of them lets go (or
//! when the process ends, however it ends).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use strata_core::{Error, ErrorKind, Result, Stage};

/// The lock file's name in a data directory.
pub const LOCK_FILE: &str = "strata.lock";

/// This process's hold on a data directory. Dropping the last handle releases it.
#[derive(Debug)]
pub struct DirectoryLock {
    /// Held open: the lock lives as long as the file description.
    _file: File,
    dir: PathBuf,
}

impl DirectoryLock {
    /// The directory held.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The locks this process holds, by canonical directory.
fn held() -> &'static Mutex<HashMap<PathBuf, Weak<DirectoryLock>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<DirectoryLock>>>> = OnceLock::new();
    HELD.get_or_init(Mutex::default)
}

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Director, kind)
}

/// Takes `data_dir` for this process: creates it first when `create` is set (a command that
/// starts a cluster), and otherwise requires it to exist (a command that only reads). Fails
/// at once, writing nothing, when another process holds it: `Unavailable` naming the
/// directory and the holder's process id.
pub fn lock_directory(data_dir: &Path, create: bool) -> Result<Arc<DirectoryLock>> {
    if create {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            error(ErrorKind::InvalidRequest(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            )))
        })?;
    } else if !data_dir.is_dir() {
        return Err(error(ErrorKind::InvalidRequest(format!(
            "{} is not a data directory",
            data_dir.display()
        ))));
    }
    let dir = data_dir.canonicalize().map_err(|e| {
        error(ErrorKind::InvalidRequest(format!(
            "{}: {e}",
            data_dir.display()
        )))
    })?;
    let mut held = held().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(lock) = held.get(&dir).and_then(Weak::upgrade) {
        return Ok(lock);
    }
    let path = dir.join(LOCK_FILE);
    let io = |e: std::io::Error| {
        Error::io(
            Stage::Director,
            std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        )
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("process {pid}"),
            };
            return Err(error(ErrorKind::Unavailable(format!(
                "data directory {} is in use by {holder}",
                data_dir.display()
            ))));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_data())
        .map_err(io)?;
    let lock = Arc::new(DirectoryLock {
        _file: file,
        dir: dir.clone(),
    });
    held.retain(|_, weak| weak.strong_count() > 0);
    held.insert(dir, Arc::downgrade(&lock));
    Ok(lock)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_process_shares_its_lock_and_releases_it_with_the_last_handle() {
        let dir = tempfile::tempdir().unwrap();
        let a = lock_directory(dir.path(), false).unwrap();
        let b = lock_directory(dir.path(), false).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // Another open file description is another owner: refused while held...
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop((a, b));
        // ...and free once the last handle is gone.
        other.try_lock().unwrap();
    }

    #[test]
    fn a_reader_never_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = lock_directory(&missing, false).unwrap_err();
        assert!(e.to_string().contains("is not a data directory"), "{e}");
        assert!(!missing.exists());
        lock_directory(&missing, true).unwrap();
        assert!(missing.join(LOCK_FILE).exists());
    }
}
