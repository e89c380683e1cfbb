//! Where a storage server's redb file is read and written: the operating system's file, unless
//! the calling thread installed other backends ([`install`]).
//!
//! The seeded simulation installs its disk here, one that remembers what each file held at its
//! last sync, so that a simulated power loss keeps only that (plus torn sectors of the rest).
//! It runs the cluster on one thread with [`strata_core::Blocking::Inline`], so every file a
//! storage server opens is opened on that thread. Other threads, and every server of a
//! process that installed nothing, use the operating system's files. Read-only opens
//! ([`crate::stored_at`], [`crate::StorageConfig::read_only`]) always read the real file.
//!
//! ```
//! use std::path::Path;
//! use std::sync::Arc;
//! use strata_storage::backend::{self, FileBackends};
//!
//! /// The operating system's files, opened by hand: where a backend that watches or fails
//! /// the file's writes and syncs would start.
//! #[derive(Debug)]
//! struct Plain;
//!
//! impl FileBackends for Plain {
//!     fn open(&self, path: &Path) -> std::io::Result<Box<dyn redb::StorageBackend>> {
//!         let file = std::fs::OpenOptions::new()
//!             .read(true)
//!             .write(true)
//!             .create(true)
//!             .truncate(false)
//!             .open(path)?;
//!         Ok(Box::new(redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?))
//!     }
//! }
//!
//! let installed = backend::install(Arc::new(Plain));
//! // Storage servers opened on this thread now go through `Plain`.
//! drop(installed);
//! ```

use std::cell::RefCell;
use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Opens the backends of storage files.
pub trait FileBackends: Send + Sync + Debug {
    /// The backend of the storage file at `path`, created empty when it is missing. Called
    /// when a server creates its file and each time it opens it.
    fn open(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>>;
}

thread_local! {
    static INSTALLED: RefCell<Option<Arc<dyn FileBackends>>> = const { RefCell::new(None) };
}

/// The backends installed on this thread; dropping it goes back to the operating system's
/// files.
#[derive(Debug)]
#[must_use = "the backends are uninstalled when the guard is dropped"]
pub struct Installed(());

impl Drop for Installed {
    fn drop(&mut self) {
        INSTALLED.with(|i| i.borrow_mut().take());
    }
}

/// Makes the storage servers' file work on the calling thread go through `backends`.
pub fn install(backends: Arc<dyn FileBackends>) -> Installed {
    INSTALLED.with(|i| *i.borrow_mut() = Some(backends));
    Installed(())
}

/// Opens (creating it when missing) the database at `path` with `builder`, through the
/// installed backends if there are any.
pub(crate) fn create(
    builder: &redb::Builder,
    path: &Path,
) -> std::result::Result<redb::Database, redb::DatabaseError> {
    match INSTALLED.with(|i| i.borrow().clone()) {
        Some(backends) => builder.create_with_backend(Boxed(backends.open(path)?)),
        None => builder.create(path),
    }
}

/// A boxed backend is a backend (redb takes one by value).
#[derive(Debug)]
struct Boxed(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for Boxed {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts the files opened, and keeps them in memory.
    #[derive(Debug, Default)]
    struct Counting(AtomicU64);

    impl FileBackends for Counting {
        fn open(&self, _path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(Box::new(redb::backends::InMemoryBackend::new()))
        }
    }

    #[test]
    fn installed_backends_serve_this_thread_only_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting::default());
        let installed = install(counting.clone());
        let db = create(&redb::Builder::new(), &dir.path().join("a.redb")).unwrap();
        drop(db);
        assert_eq!(counting.0.load(Ordering::Relaxed), 1);
        assert!(!dir.path().join("a.redb").exists(), "went to the backend");
        // Another thread uses the real files.
        let path = dir.path().join("b.redb");
        std::thread::spawn(move || drop(create(&redb::Builder::new(), &path).unwrap()))
            .join()
            .unwrap();
        assert!(dir.path().join("b.redb").exists());
        drop(installed);
        drop(create(&redb::Builder::new(), &dir.path().join("c.redb")).unwrap());
        assert!(dir.path().join("c.redb").exists());
        assert_eq!(counting.0.load(Ordering::Relaxed), 1);
    }
}
