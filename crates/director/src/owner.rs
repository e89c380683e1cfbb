//! One owner per data directory: the first thing every command does is take the directory's
//! lock (`strata.lock`, an exclusive `flock` holding the owner's process id), so that a second
//! process on a directory in use fails at once, naming the holder, before it reads or writes
//! anything. Within one process the lock is shared: every cluster and tool of the process on
//! that directory holds the same one, and it is released when the last of them lets go (or
//! when the process ends, however it ends).
//!
//! What it cannot stop: someone deleting `strata.lock` (or the whole directory) while it is
//! held lets a second process lock a new file. The logs' own locks still refuse that process
//! once it reaches them, so two owners never write the same log.

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
    file: Option<File>,
    dir: PathBuf,
}

impl Drop for DirectoryLock {
    fn drop(&mut self) {
        // Closed under the registry's lock, so that a thread of this process taking the
        // directory meanwhile either finds this handle alive or finds the file released.
        let _held = held().lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.file.take());
    }
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
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(error(ErrorKind::InvalidRequest(format!(
            "{} is not a directory",
            data_dir.display()
        ))));
    }
    if create {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            error(ErrorKind::InvalidRequest(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            )))
        })?;
    } else if !data_dir.exists() {
        return Err(error(ErrorKind::InvalidRequest(format!(
            "there is no data directory {}: a command that only reads creates none \
             (`strata recover` makes one)",
            data_dir.display()
        ))));
    }
    let dir = data_dir.canonicalize().map_err(|e| {
        error(ErrorKind::InvalidRequest(format!(
            "{}: {e}",
            data_dir.display()
        )))
    })?;
    // A handle of this process that is being dropped right now still holds the file until
    // its drop takes the registry: wait for it (briefly) rather than refuse ourselves.
    let started = std::time::Instant::now();
    loop {
        match take(&dir)? {
            Taken::Lock(lock) => return Ok(lock),
            Taken::Busy(holder)
                if holder == std::process::id().to_string()
                    && started.elapsed() < std::time::Duration::from_secs(1) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // A process killed a moment ago keeps its lock until the kernel has closed its
            // files, which a thread in the middle of an fsync delays: `kill -9` then `strata
            // recover` must not be refused by the process that is going away.
            Taken::Busy(holder)
                if started.elapsed() < EXITING_HOLDER_WAIT && holder_is_exiting(&holder) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Taken::Busy(holder) => {
                let holder = match holder.as_str() {
                    "" => "another process".to_owned(),
                    pid => format!("process {pid}"),
                };
                return Err(error(ErrorKind::Unavailable(format!(
                    "data directory {} is in use by {holder}",
                    data_dir.display()
                ))));
            }
        }
    }
}

/// How long a command waits for a holder that is exiting to let the directory go.
const EXITING_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the process `pid` (as the lock file names it) is going away: gone already, a
/// zombie, or exiting (`PF_EXITING` in `/proc/<pid>/stat`). Where `/proc` cannot say (another
/// system, a pid that is not a number), the holder is taken as alive.
fn holder_is_exiting(pid: &str) -> bool {
    /// `PF_EXITING`, set on a task as it starts to exit (include/linux/sched.h).
    const PF_EXITING: u64 = 0x4;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // Gone, where /proc exists.
        return std::path::Path::new("/proc/self/stat").exists();
    };
    // The fields after the command name (which may hold spaces), from the third: state, ppid,
    // pgrp, session, tty_nr, tpgid, flags.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&("Z" | "X" | "x")));
    let exiting = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0);
    zombie || exiting
}

/// What one try to take a directory gave.
enum Taken {
    Lock(Arc<DirectoryLock>),
    /// Held by another file description; the holder's pid as the file says, maybe empty.
    Busy(String),
}

/// One try, under the registry's lock.
fn take(dir: &Path) -> Result<Taken> {
    let mut held = held().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(lock) = held.get(dir).and_then(Weak::upgrade) {
        return Ok(Taken::Lock(lock));
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
            return Ok(Taken::Busy(holder.trim().to_owned()));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // The pid only names the holder in an error; the lock is the flock, so it is not synced.
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io)?;
    let lock = Arc::new(DirectoryLock {
        file: Some(file),
        dir: dir.to_owned(),
    });
    held.retain(|_, weak| weak.strong_count() > 0);
    held.insert(dir.to_owned(), Arc::downgrade(&lock));
    Ok(Taken::Lock(lock))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_holder_that_is_exiting_or_gone_is_told_from_a_live_one() {
        // A live process: this one.
        assert!(!holder_is_exiting(&std::process::id().to_string()));
        // A child that has exited and is not reaped yet is a zombie.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !holder_is_exiting(&pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(holder_is_exiting(&pid), "a zombie is exiting");
        child.wait().unwrap();
        // Reaped: gone.
        assert!(holder_is_exiting(&pid), "a process gone is exiting");
        // What the lock file may hold that names no process: taken as alive.
        assert!(!holder_is_exiting(""));
        assert!(!holder_is_exiting("not a pid"));
    }

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
    fn threads_taking_and_dropping_the_lock_at_once_never_refuse_their_own_process() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = dir.path().to_owned();
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        drop(lock_directory(&path, false).unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_reader_never_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = lock_directory(&missing, false).unwrap_err();
        assert!(e.to_string().contains("there is no data directory"), "{e}");
        assert!(!missing.exists());
        // A file where the directory should be is named as such, and left alone.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        for create in [false, true] {
            let e = lock_directory(&file, create).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("{} is not a directory", file.display())),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        lock_directory(&missing, true).unwrap();
        assert!(missing.join(LOCK_FILE).exists());
    }
}
