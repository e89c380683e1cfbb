//! The simulation's disk: the real files, plus a record of what was synced, so that a crash can
//! be a power loss rather than a process crash.
//!
//! [`PowerDisk`] sits between the logs and their file system (the fault switchboard's, over the
//! real one), and between the storage servers and their redb files (a redb backend, installed
//! for the simulation's thread). Every write goes to the real file at once, so everything that reads the data
//! directory (recovery's checks, the popping check, a byte count) sees it as a process would;
//! beside it, for every file it has touched, it keeps the file's *durable* contents (as of its
//! last `sync_data`) and the writes made since, and for every directory it has touched, the
//! entries as of its last `sync_dir`. [`PowerDisk::lose_power`] then rewrites a copy of the
//! data directory into what a machine that lost power would find: each directory as last
//! synced, each file as last synced plus a seeded choice of the 512-byte sectors of its later
//! writes (torn writes: any of them, in any order, may have reached the platter).
//!
//! It also injects the disk's own faults, as the seed chooses: the next few syncs fail (and, as
//! on Linux after a failed writeback, what they should have made durable is gone at the next
//! power loss, though reads still see it), or the disk is full for a while (no file grows).
//!
//! What it does not model: the coordinated state (it keeps what was written, which a power loss
//! may also do), the storage directory's entries (the storage crate creates its file under a
//! temporary name and renames it into place itself: a power loss keeps those changes), and a
//! directory's own entry in its parent (the log directories are made by `create_dir_all`,
//! outside this file system).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use strata_testkit::rng::SplitMix64;
use strata_tlog::fs::{Fs, FsFile};

/// The unit a torn write keeps or loses.
const SECTOR: u64 = 512;

/// A file system that remembers what was synced; see the module's documentation.
#[derive(Debug)]
pub(crate) struct PowerDisk {
    inner: Arc<dyn Fs>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// The file at each path of the directories touched, by inode.
    names: BTreeMap<PathBuf, u64>,
    /// Each touched directory's entries as of its last sync (or as found when first touched).
    durable_dirs: BTreeMap<PathBuf, BTreeMap<String, u64>>,
    files: BTreeMap<u64, Inode>,
    /// The storage servers' redb files, by the path they were opened at. Their directory is
    /// not followed: the storage crate creates, renames and syncs it by itself.
    storage: BTreeMap<PathBuf, u64>,
    next_inode: u64,
    /// Syncs still to fail.
    failing_syncs: u64,
    /// Syncs still to succeed before those fail.
    syncs_before_failing: u64,
    /// While set, no file grows.
    full: bool,
    /// The sync at which the power goes (1: the next one), when the chaos chose one.
    dies_at: Option<u64>,
    /// The power went in the middle of a sync: nothing changes any more.
    dead: bool,
}

#[derive(Debug, Default)]
struct Inode {
    /// The contents as of the last sync; `None` while they are what the file held when first
    /// touched and it has not been written or moved since (they are then on the disk).
    durable: Option<Vec<u8>>,
    /// The writes since the last sync, in order.
    pending: Vec<Pending>,
}

#[derive(Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

impl Inode {
    /// Writes at `to` what a power loss leaves of this file: its durable contents and what
    /// `rng` keeps of its changes since; returns how many changes were pending. A file
    /// untouched since the boot began is left as the copy holds it.
    fn write_image(&self, to: &Path, rng: &mut SplitMix64) -> io::Result<u64> {
        let Some(durable) = &self.durable else {
            return Ok(0);
        };
        let mut contents = durable.clone();
        let lost = torn_pending(&mut contents, &self.pending, rng);
        std::fs::write(to, &contents)?;
        Ok(lost)
    }
}

fn apply(contents: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write(at, bytes) => {
            let (at, end) = (*at as usize, *at as usize + bytes.len());
            if contents.len() < end {
                contents.resize(end, 0);
            }
            contents[at..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => contents.resize(*len as usize, 0),
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_all(file: &dyn FsFile) -> io::Result<Vec<u8>> {
    let mut contents = vec![0; file.len()? as usize];
    file.read_exact_at(&mut contents, 0)?;
    Ok(contents)
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))
}

impl State {
    /// Starts following `dir`: what it holds now counts as durable (it was there when the boot
    /// began, or was put there outside this file system).
    fn touch(&mut self, inner: &dyn Fs, dir: &Path) -> io::Result<()> {
        if self.durable_dirs.contains_key(dir) {
            return Ok(());
        }
        let mut entries = BTreeMap::new();
        let mut names = inner.list(dir)?;
        names.sort();
        for name in names {
            let inode = self.new_inode(None);
            self.names.insert(dir.join(&name), inode);
            entries.insert(name, inode);
        }
        self.durable_dirs.insert(dir.to_owned(), entries);
        Ok(())
    }

    fn new_inode(&mut self, durable: Option<Vec<u8>>) -> u64 {
        self.next_inode += 1;
        self.files.insert(
            self.next_inode,
            Inode {
                durable,
                pending: Vec::new(),
            },
        );
        self.next_inode
    }

    /// The inode at `path` (a file put there outside this file system counts as durable).
    fn inode(&mut self, inner: &dyn Fs, path: &Path) -> io::Result<u64> {
        self.touch(inner, parent(path)?)?;
        if let Some(&inode) = self.names.get(path) {
            return Ok(inode);
        }
        let inode = self.new_inode(None);
        self.names.insert(path.to_owned(), inode);
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            let name = name.to_string_lossy().into_owned();
            self.durable_dirs
                .entry(dir.to_owned())
                .or_default()
                .insert(name, inode);
        }
        Ok(inode)
    }

    /// Keeps the durable contents of the file at `path` in memory before it changes or moves.
    fn capture(&mut self, inner: &dyn Fs, path: &Path, inode: u64) -> io::Result<()> {
        if self.files.get(&inode).is_some_and(|f| f.durable.is_none()) {
            let contents = read_all(inner.open(path)?.as_ref())?;
            if let Some(f) = self.files.get_mut(&inode) {
                f.durable = Some(contents);
            }
        }
        Ok(())
    }

    /// Whether this sync fails: an injected failure, or the power going in the middle of it.
    fn sync_fails(&mut self) -> io::Result<()> {
        self.alive()?;
        if let Some(at) = &mut self.dies_at {
            *at -= 1;
            if *at == 0 {
                self.dead = true;
                return self.alive();
            }
        }
        if self.failing_syncs > 0 && self.syncs_before_failing > 0 {
            self.syncs_before_failing -= 1;
        } else if self.failing_syncs > 0 {
            self.failing_syncs -= 1;
            return Err(io::Error::other("injected sync failure (simulated disk)"));
        }
        Ok(())
    }

    /// Refuses every change once the power is gone (the process would be gone too; here the
    /// boot runs on to its end, and the crash that ends it finds the disk as it was then).
    fn alive(&self) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("the power went (simulated disk)"));
        }
        Ok(())
    }
}

impl PowerDisk {
    pub(crate) fn new(inner: Arc<dyn Fs>) -> PowerDisk {
        PowerDisk {
            inner,
            state: Arc::default(),
        }
    }

    /// Makes the next `n` syncs (of files or directories) fail.
    pub(crate) fn fail_syncs(&self, n: u64) {
        self.fail_syncs_after(0, n);
    }

    /// Makes `n` syncs (of files or directories) fail once the next `ok` have succeeded.
    pub(crate) fn fail_syncs_after(&self, ok: u64, n: u64) {
        let mut state = lock(&self.state);
        state.syncs_before_failing = ok;
        state.failing_syncs = n;
    }

    /// Fills the disk (no file may grow), or frees it.
    pub(crate) fn set_full(&self, full: bool) {
        lock(&self.state).full = full;
    }

    /// Makes the power go in the middle of the `n`th sync from now (1: the next): its writes
    /// and every one after it are as unsynced at the crash that ends the boot, which must then
    /// be a power loss.
    pub(crate) fn die_at_sync(&self, n: u64) {
        let mut state = lock(&self.state);
        if state.dies_at.is_none() {
            state.dies_at = Some(n.max(1));
        }
    }

    /// Whether the power went in the middle of a sync.
    pub(crate) fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    /// Rewrites `image`, a copy of the directory `live` taken at this instant, into what a
    /// power loss now would leave: every directory this disk followed holds its entries as
    /// last synced, and every file its contents as last synced, plus the sectors of later
    /// writes that `rng` keeps. Returns how many unsynced writes (of which some sectors may
    /// survive) and directory changes were lost.
    pub(crate) fn lose_power(
        &self,
        live: &Path,
        image: &Path,
        rng: &mut SplitMix64,
    ) -> io::Result<u64> {
        let state = lock(&self.state);
        let mut lost = 0;
        for (dir, durable) in &state.durable_dirs {
            let Ok(relative) = dir.strip_prefix(live) else {
                continue;
            };
            let target = image.join(relative);
            if !target.is_dir() {
                // Removed outside this file system (the removal then counts as durable).
                continue;
            }
            // Entries made since the last sync are gone.
            for (path, inode) in state.names.range(dir.clone()..) {
                if !path.starts_with(dir) {
                    break;
                }
                let (Some(name), true) = (path.file_name(), path.parent() == Some(dir)) else {
                    continue;
                };
                if durable.get(&*name.to_string_lossy()) != Some(inode) {
                    lost += 1;
                    remove_file_if_present(&target.join(name))?;
                }
            }
            for (name, inode) in durable {
                lost += state.files[inode].write_image(&target.join(name), rng)?;
            }
        }
        for (path, inode) in &state.storage {
            let Ok(relative) = path.strip_prefix(live) else {
                continue;
            };
            // Gone since (a file created under a temporary name and renamed into place once
            // closed: its writes were synced by then).
            if !path.exists() {
                continue;
            }
            lost += state.files[inode].write_image(&image.join(relative), rng)?;
        }
        Ok(lost)
    }

    fn wrap(&self, file: Arc<dyn FsFile>, inode: u64) -> Arc<dyn FsFile> {
        Arc::new(PowerFile {
            file,
            inode,
            state: self.state.clone(),
        })
    }
}

/// Applies to `contents` what `rng` keeps of the changes `pending` since the last sync: some
/// sectors of each write, and each change of length or not. Returns how many there were.
fn torn_pending(contents: &mut Vec<u8>, pending: &[Pending], rng: &mut SplitMix64) -> u64 {
    for op in pending {
        match op {
            Pending::Write(at, bytes) => torn(contents, *at, bytes, rng),
            Pending::SetLen(_) if rng.below(2) == 0 => apply(contents, op),
            Pending::SetLen(_) => {}
        }
    }
    pending.len() as u64
}

/// Applies to `contents` the sectors of the write of `bytes` at `at` that `rng` keeps.
fn torn(contents: &mut Vec<u8>, at: u64, bytes: &[u8], rng: &mut SplitMix64) {
    let end = at + bytes.len() as u64;
    let mut sector = at - at % SECTOR;
    while sector < end {
        let (from, to) = (sector.max(at), (sector + SECTOR).min(end));
        if rng.below(2) == 0 {
            let piece = &bytes[(from - at) as usize..(to - at) as usize];
            apply(contents, &Pending::Write(from, piece.to_vec()));
        }
        sector += SECTOR;
    }
}

fn remove_file_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Fs for PowerDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let file = self.inner.open(path)?;
        let inode = lock(&self.state).inode(self.inner.as_ref(), path)?;
        Ok(self.wrap(file, inode))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let mut state = lock(&self.state);
        state.alive()?;
        state.touch(self.inner.as_ref(), parent(path)?)?;
        let file = self.inner.create(path)?;
        let inode = state.new_inode(Some(Vec::new()));
        state.names.insert(path.to_owned(), inode);
        drop(state);
        Ok(self.wrap(file, inode))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.alive()?;
        let inode = state.inode(self.inner.as_ref(), path)?;
        state.capture(self.inner.as_ref(), path, inode)?;
        self.inner.remove(path)?;
        state.names.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.alive()?;
        let moving = state.inode(self.inner.as_ref(), from)?;
        state.capture(self.inner.as_ref(), from, moving)?;
        state.touch(self.inner.as_ref(), parent(to)?)?;
        if let Some(&replaced) = state.names.get(to) {
            state.capture(self.inner.as_ref(), to, replaced)?;
        }
        self.inner.rename(from, to)?;
        state.names.remove(from);
        state.names.insert(to.to_owned(), moving);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.sync_fails()?;
        state.touch(self.inner.as_ref(), dir)?;
        self.inner.sync_dir(dir)?;
        let entries: BTreeMap<String, u64> = state
            .names
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir))
            .filter_map(|(path, &inode)| {
                Some((path.file_name()?.to_string_lossy().into_owned(), inode))
            })
            .collect();
        state.durable_dirs.insert(dir.to_owned(), entries);
        Ok(())
    }
}

impl strata_storage::backend::FileBackends for PowerDisk {
    fn open(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut state = lock(&self.state);
        state.alive()?;
        let inode = match state.storage.get(path) {
            Some(&inode) => inode,
            None => {
                let inode = state.new_inode(None);
                state.storage.insert(path.to_owned(), inode);
                inode
            }
        };
        Ok(Box::new(PowerBackend {
            file,
            inode,
            state: self.state.clone(),
        }))
    }
}

/// A storage server's redb file on a [`PowerDisk`].
#[derive(Debug)]
struct PowerBackend {
    file: std::fs::File,
    inode: u64,
    state: Arc<Mutex<State>>,
}

impl PowerBackend {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut contents = vec![0; self.file.metadata()?.len() as usize];
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut contents, 0)?;
        Ok(contents)
    }
}

impl redb::StorageBackend for PowerBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let now = self.len()?;
        change(
            &self.state,
            self.inode,
            now,
            || self.read_all(),
            Pending::SetLen(len),
            || self.file.set_len(len),
        )
    }

    fn sync_data(&self) -> io::Result<()> {
        sync(&self.state, self.inode, || self.file.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let now = self.len()?;
        change(
            &self.state,
            self.inode,
            now,
            || self.read_all(),
            Pending::Write(offset, data.to_vec()),
            || std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset),
        )
    }
}

/// A file on a [`PowerDisk`].
#[derive(Debug)]
struct PowerFile {
    file: Arc<dyn FsFile>,
    inode: u64,
    state: Arc<Mutex<State>>,
}

/// Records `op` on the file `inode` (now `len` bytes long), which `write` does to the real
/// file, keeping the durable contents first (`read_all` reads them while they are still on the
/// disk). Refused when the power went, or when the disk is full and `op` grows the file.
fn change(
    state: &Mutex<State>,
    inode: u64,
    len: u64,
    read_all: impl FnOnce() -> io::Result<Vec<u8>>,
    op: Pending,
    write: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let mut state = lock(state);
    state.alive()?;
    let grows = match &op {
        Pending::Write(at, bytes) => at + bytes.len() as u64,
        Pending::SetLen(len) => *len,
    } > len;
    if grows && state.full {
        return Err(io::Error::from(io::ErrorKind::StorageFull));
    }
    let Some(file) = state.files.get_mut(&inode) else {
        return write();
    };
    if file.durable.is_none() {
        file.durable = Some(read_all()?);
    }
    write()?;
    file.pending.push(op);
    Ok(())
}

/// Syncs the file `inode` with `sync`: what was written since becomes durable, unless the sync
/// fails (injected, or the power going in the middle of it).
fn sync(state: &Mutex<State>, inode: u64, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let mut state = lock(state);
    let result = state.sync_fails().and_then(|()| sync());
    if state.dead {
        // The power went during this sync: its writes stay pending, torn at the crash.
        return result;
    }
    let Some(file) = state.files.get_mut(&inode) else {
        return result;
    };
    let pending = std::mem::take(&mut file.pending);
    // What the sync made durable. After a failure, as Linux does after a failed writeback,
    // the pages count as clean: reads still see the writes, but no later sync makes them
    // durable.
    if result.is_ok()
        && let Some(durable) = &mut file.durable
    {
        pending.iter().for_each(|op| apply(durable, op));
    }
    result
}

impl PowerFile {
    fn change(&self, op: Pending, write: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let len = self.file.len()?;
        change(
            &self.state,
            self.inode,
            len,
            || read_all(self.file.as_ref()),
            op,
            write,
        )
    }
}

impl FsFile for PowerFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.change(Pending::Write(offset, buf.to_vec()), || {
            self.file.write_all_at(buf, offset)
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        sync(&self.state, self.inode, || self.file.sync_data())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Pending::SetLen(len), || self.file.set_len(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_tlog::fs::RealFs;

    fn setup() -> (tempfile::TempDir, PathBuf, PowerDisk) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("log");
        std::fs::create_dir_all(&dir).unwrap();
        (root, dir, PowerDisk::new(Arc::new(RealFs)))
    }

    /// The image a power loss leaves, read back as (name, contents).
    fn after_power_loss(root: &Path, disk: &PowerDisk, seed: u64) -> BTreeMap<String, Vec<u8>> {
        let image = root.with_extension("image");
        crate::sim::copy_dir(root, &image).unwrap();
        disk.lose_power(root, &image, &mut SplitMix64(seed))
            .unwrap();
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(image.join("log")).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            files.insert(name, std::fs::read(entry.path()).unwrap());
        }
        std::fs::remove_dir_all(&image).unwrap();
        files
    }

    #[test]
    fn a_power_loss_keeps_what_was_synced_and_loses_the_rest() {
        let (root, dir, disk) = setup();
        std::fs::write(dir.join("old"), b"from an earlier boot").unwrap();
        let a = disk.create(&dir.join("a")).unwrap();
        a.write_all_at(b"synced", 0).unwrap();
        a.sync_data().unwrap();
        disk.sync_dir(&dir).unwrap();
        a.write_all_at(b"SYNCED and not", 0).unwrap();
        // Created, written and synced, but its directory entry never was.
        let b = disk.create(&dir.join("b")).unwrap();
        b.write_all_at(b"b", 0).unwrap();
        b.sync_data().unwrap();
        let old = disk.open(&dir.join("old")).unwrap();
        old.set_len(4).unwrap();
        // The live files hold everything written.
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"SYNCED and not");
        assert!(dir.join("b").exists());
        // Sectors of 512 bytes: these writes are one sector each, kept or lost whole, and
        // truncations kept or not; over several seeds both happen.
        let mut seen_a = std::collections::BTreeSet::new();
        let mut seen_old = std::collections::BTreeSet::new();
        for seed in 0..16 {
            let files = after_power_loss(root.path(), &disk, seed);
            assert_eq!(
                files.keys().collect::<Vec<_>>(),
                ["a", "old"],
                "b's entry was never synced"
            );
            seen_a.insert(files["a"].clone());
            seen_old.insert(files["old"].clone());
        }
        assert_eq!(
            seen_a,
            [b"SYNCED and not".to_vec(), b"synced".to_vec()].into()
        );
        assert_eq!(
            seen_old,
            [b"from".to_vec(), b"from an earlier boot".to_vec()].into()
        );
    }

    #[test]
    fn a_torn_write_keeps_whole_sectors_of_it() {
        let (root, dir, disk) = setup();
        let f = disk.create(&dir.join("f")).unwrap();
        disk.sync_dir(&dir).unwrap();
        f.write_all_at(&[1; 2048], 100).unwrap();
        for seed in 0..8 {
            let files = after_power_loss(root.path(), &disk, seed);
            let f = &files["f"];
            assert!(f.len() <= 2148);
            // Every 512-byte sector of the file is all old (zero) or all new (one) bytes.
            for (i, sector) in f.chunks(512).enumerate() {
                let from = if i == 0 { 100 } else { 0 };
                let part = &sector[from.min(sector.len())..];
                assert!(
                    part.iter().all(|&b| b == 0) || part.iter().all(|&b| b == 1),
                    "sector {i} mixes old and new bytes: {part:?}"
                );
            }
        }
    }

    #[test]
    fn renames_and_removals_are_durable_only_once_the_directory_is_synced() {
        let (root, dir, disk) = setup();
        let t = disk.create(&dir.join("tmp")).unwrap();
        t.write_all_at(b"manifest", 0).unwrap();
        t.sync_data().unwrap();
        disk.sync_dir(&dir).unwrap();
        std::fs::write(dir.join("gone"), b"kept until synced").unwrap();
        disk.rename(&dir.join("tmp"), &dir.join("MANIFEST"))
            .unwrap();
        disk.remove(&dir.join("gone")).unwrap();
        let files = after_power_loss(root.path(), &disk, 1);
        assert_eq!(files["tmp"], b"manifest");
        assert_eq!(files["gone"], b"kept until synced");
        assert!(!files.contains_key("MANIFEST"));
        disk.sync_dir(&dir).unwrap();
        let files = after_power_loss(root.path(), &disk, 1);
        assert_eq!(files.keys().collect::<Vec<_>>(), ["MANIFEST"]);
        assert_eq!(files["MANIFEST"], b"manifest");
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable_then_or_later() {
        let (root, dir, disk) = setup();
        let f = disk.create(&dir.join("f")).unwrap();
        disk.sync_dir(&dir).unwrap();
        f.write_all_at(b"lost", 0).unwrap();
        disk.fail_syncs(1);
        assert!(f.sync_data().is_err());
        // Reads still see it; the next sync succeeds but cannot bring it back.
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"lost");
        f.sync_data().unwrap();
        for seed in 0..4 {
            assert_eq!(after_power_loss(root.path(), &disk, seed)["f"], b"");
        }
    }

    #[test]
    fn power_going_in_a_sync_leaves_its_writes_unsynced_and_refuses_every_change() {
        let (root, dir, disk) = setup();
        let f = disk.create(&dir.join("f")).unwrap();
        f.write_all_at(b"kept", 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir(&dir).unwrap();
        disk.die_at_sync(2);
        f.write_all_at(b"KEPT", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"torn", 4).unwrap();
        assert!(f.sync_data().is_err());
        assert!(disk.is_dead());
        assert!(f.write_all_at(b"late", 8).is_err());
        assert!(disk.create(&dir.join("g")).is_err());
        assert!(disk.remove(&dir.join("f")).is_err());
        assert!(disk.sync_dir(&dir).is_err());
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..16 {
            seen.insert(after_power_loss(root.path(), &disk, seed)["f"].clone());
        }
        assert_eq!(seen, [b"KEPT".to_vec(), b"KEPTtorn".to_vec()].into());
    }

    #[test]
    fn a_storage_file_keeps_what_redb_synced() {
        use strata_storage::backend::FileBackends;
        let (root, dir, disk) = setup();
        let path = dir.join("0.redb");
        let file = FileBackends::open(&disk, &path).unwrap();
        file.write(0, b"committed").unwrap();
        file.sync_data().unwrap();
        file.write(0, b"COMMITTED and more").unwrap();
        file.set_len(4096).unwrap();
        assert_eq!(file.len().unwrap(), 4096);
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..16 {
            let image = after_power_loss(root.path(), &disk, seed);
            let kept = image["0.redb"].clone();
            assert!([9, 18, 4096].contains(&kept.len()), "{}", kept.len());
            seen.insert(kept[..9].to_vec());
        }
        assert_eq!(seen, [b"COMMITTED".to_vec(), b"committed".to_vec()].into());
        // A second open of the same path is the same file.
        FileBackends::open(&disk, &path)
            .unwrap()
            .sync_data()
            .unwrap();
        assert_eq!(
            &after_power_loss(root.path(), &disk, 0)["0.redb"][..9],
            b"COMMITTED"
        );
    }

    #[test]
    fn a_full_disk_refuses_growth_but_not_overwrites() {
        let (_root, dir, disk) = setup();
        let f = disk.create(&dir.join("f")).unwrap();
        f.write_all_at(b"1234", 0).unwrap();
        disk.set_full(true);
        let e = f.write_all_at(b"12345", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(f.set_len(8).unwrap_err().kind(), io::ErrorKind::StorageFull);
        f.write_all_at(b"abcd", 0).unwrap();
        disk.set_full(false);
        f.write_all_at(b"abcde", 0).unwrap();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"abcde");
    }

    /// A storage server whose flush failed at either sync of its two-phase commit, closed and
    /// opened again on the same machine (the page cache holding what the failed sync did not
    /// write back), reports as durable only what a power loss keeps: the logs are popped up to
    /// what it reports.
    /// redb's two-phase commit and the repair its open makes after an unclean close keep this
    /// true; a failed flush also stops the server, so that the epoch ends and the file is
    /// opened again (redb refuses every write after an I/O error).
    #[test]
    fn a_storage_file_reopened_after_a_failed_flush_holds_what_it_reports() {
        for ok in 0..2 {
            let (kept, reopened) = reopen_after_failed_flush(ok);
            assert_eq!(kept, reopened, "the flush's sync {} failed", ok + 1);
        }
    }

    /// Flushes a storage server once, then again with its sync `ok + 1` failing; closes it,
    /// opens it again and returns the durable version a power loss then keeps and the one the
    /// server reported.
    fn reopen_after_failed_flush(ok: u64) -> (strata_core::Version, strata_core::Version) {
        use strata_core::{ErrorKind, KeyRange, LogId, Mutation, StorageServer, Version};
        use strata_storage::{RedbStorage, StorageConfig, durable_version_at};
        let (root, dir, disk) = setup();
        let disk = Arc::new(disk);
        let path = dir.join("0.redb");
        let _installed = strata_storage::backend::install(disk.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let log = Arc::new(strata_testkit::MemoryLog::new(LogId(1), Version(0)));
        let config = StorageConfig {
            window_versions: 0,
            flush_interval: std::time::Duration::from_secs(3600),
            pop_log: false,
            blocking: strata_core::Blocking::Inline,
            ..StorageConfig::default()
        };
        let shard = || vec![KeyRange::new("", "\u{7f}").unwrap()];
        let reopened = runtime.block_on(async {
            let storage = RedbStorage::open(&path, shard(), log.clone(), config)
                .await
                .unwrap();
            for v in 1..=20u64 {
                let set = Mutation::Set {
                    key: format!("k{}", v % 7).into(),
                    value: format!("v{v}").into(),
                };
                log.push_mutations(Version(v - 1), Version(v), &[set])
                    .await
                    .unwrap();
                storage.advance_committed(Version(v));
                storage.wait_applied(Version(v)).await.unwrap();
                if v == 10 {
                    storage.flush().await.unwrap();
                    disk.fail_syncs_after(ok, 1);
                }
            }
            let failed = storage.flush().await.unwrap_err();
            assert!(matches!(failed.kind, ErrorKind::Io(_)), "{failed}");
            // The server stopped: monitoring's probe says why.
            let probe = storage.applied_version().await.unwrap_err();
            assert!(
                probe.to_string().contains("injected sync failure"),
                "{probe}"
            );
            storage.close().await;
            let storage = RedbStorage::open(&path, shard(), log.clone(), config)
                .await
                .unwrap();
            let reopened = storage.durable_version().await.unwrap();
            storage.close().await;
            reopened
        });
        let image = root.path().with_extension("image");
        crate::sim::copy_dir(root.path(), &image).unwrap();
        disk.lose_power(root.path(), &image, &mut SplitMix64(1))
            .unwrap();
        let kept = durable_version_at(&image.join("log").join("0.redb")).unwrap();
        std::fs::remove_dir_all(&image).unwrap();
        (kept, reopened)
    }
}
