//! Damaged storage files: a file with a page zeroed, overwritten or with bits flipped must never
//! make the crate panic. Opening or reading it either works and returns exactly what was
//! written (the damage hit unused space) or fails with `Corruption` naming the file. A real I/O
//! error stays an I/O error.
//!
//! The fuzz tests damage one random 4 KiB page of a small storage file (a few thousand keys,
//! made durable by many flushes), 200 times each, half of them in the file as a clean close
//! left it and half as a crash after the last flush would have. They are seeded: the seed is
//! printed, and `STRATA_DAMAGE_SEED=<seed>` replays a run. Nothing catches panics here: one
//! escaping the crate fails the test. redb's own panics, caught inside the crate, still print
//! their message to stderr.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{
    Epoch, Error, ErrorKind, KeyRange, LogId, LogServer, Mutation, StorageServer, Version, wire,
};
use strata_storage::{RedbStorage, StorageConfig, durable_version_at};
use strata_testkit::MemoryLog;
use strata_testkit::rng::SplitMix64;

type State = BTreeMap<Bytes, Bytes>;

const PAGE: usize = 4096;
const KEYS: u64 = 4_000;
const VERSIONS: u64 = 30;
const ITERATIONS: u64 = 200;

fn everything() -> KeyRange {
    KeyRange::new("", "\u{7f}").unwrap()
}

fn key(n: u64) -> Bytes {
    Bytes::from(format!("key{n:05}"))
}

/// Flushes only when asked, and then everything applied and committed: the window is empty,
/// so every read goes to the file.
fn config() -> StorageConfig {
    StorageConfig {
        window_versions: 0,
        flush_interval: Duration::from_secs(3600),
        read_wait: Duration::from_secs(5),
        pop_log: false,
        ..StorageConfig::default()
    }
}

async fn open_with(path: &Path, config: StorageConfig) -> strata_core::Result<RedbStorage> {
    // An empty log: the server only serves what the file holds.
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    RedbStorage::open(path, vec![everything()], log, config).await
}

async fn open(path: &Path) -> strata_core::Result<RedbStorage> {
    open_with(path, config()).await
}

/// Builds a storage file holding a few thousand keys, written by one flush per version (sets,
/// overwrites and clears, so the file has history and freed pages), and closes it. Before
/// closing, copies it to `crashed`: what a crash after the last flush would leave (redb then
/// recovers at open, a different path from a clean open). Returns the durable version and what
/// both files hold.
async fn build(path: &Path, crashed: &Path, rng: &mut SplitMix64) -> (Version, State) {
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let storage = RedbStorage::open(path, vec![everything()], log.clone(), config())
        .await
        .unwrap();
    let mut state = State::new();
    for v in 1..=VERSIONS {
        let mutations: Vec<Mutation> = (0..200)
            .map(|i| {
                let k = key(rng.below(KEYS));
                if rng.below(10) == 0 {
                    Mutation::Clear { key: k }
                } else {
                    Mutation::Set {
                        key: k,
                        value: Bytes::from(format!("value-{v}-{i}-{}", rng.next_u64())),
                    }
                }
            })
            .collect();
        for m in &mutations {
            match m {
                Mutation::Set { key, value } => {
                    state.insert(key.clone(), value.clone());
                }
                Mutation::Clear { key } => {
                    state.remove(key);
                }
                Mutation::ClearRange { .. } | Mutation::Atomic { .. } => unreachable!(),
            }
        }
        let payload = wire::encode_parts(None, &[], &[], &mutations, Some(Version(v))).unwrap();
        log.push(Epoch(1), Version(v - 1), Version(v), payload)
            .await
            .unwrap();
        storage.advance_committed(Version(v));
        tokio::time::timeout(Duration::from_secs(60), storage.wait_applied(Version(v)))
            .await
            .unwrap()
            .unwrap();
        storage.flush().await.unwrap();
    }
    assert_eq!(storage.durable_version().await.unwrap(), Version(VERSIONS));
    // The last flush committed (and synced): the file holds what a crash now would leave.
    std::fs::copy(path, crashed).unwrap();
    storage.close().await;
    (Version(VERSIONS), state)
}

/// How a page was damaged.
#[derive(Clone, Copy, Debug)]
enum Damage {
    Zeroed,
    Random,
    FlippedBits,
}

/// Damages one 4 KiB page of `bytes`, chosen at random, in place. Three times in four the
/// page is one that holds something (not all zero), so that most runs hit live data.
fn damage(bytes: &mut [u8], rng: &mut SplitMix64) -> (usize, Damage) {
    let pages = bytes.len() / PAGE;
    let used: Vec<usize> = (0..pages)
        .filter(|&p| bytes[p * PAGE..(p + 1) * PAGE].iter().any(|&b| b != 0))
        .collect();
    let page = if rng.below(4) != 0 && !used.is_empty() {
        used[rng.below(used.len() as u64) as usize]
    } else {
        rng.below(pages as u64) as usize
    };
    let slice = &mut bytes[page * PAGE..(page + 1) * PAGE];
    let how = match rng.below(3) {
        0 => Damage::Zeroed,
        1 => Damage::Random,
        _ => Damage::FlippedBits,
    };
    match how {
        Damage::Zeroed => slice.fill(0),
        Damage::Random => {
            for b in slice.iter_mut() {
                *b = rng.next_u64() as u8;
            }
        }
        Damage::FlippedBits => {
            for _ in 0..=rng.below(4) {
                let bit = rng.below((PAGE * 8) as u64) as usize;
                slice[bit / 8] ^= 1 << (bit % 8);
            }
        }
    }
    (page, how)
}

/// `err` must be `Corruption` and name `path`.
fn assert_corruption(err: &Error, path: &Path, context: &str) {
    assert!(
        matches!(err.kind, ErrorKind::Corruption(_)),
        "{context}: expected corruption, got {err}"
    );
    let shown = path.display().to_string();
    assert!(
        err.to_string().contains(&shown),
        "{context}: the error does not name {shown}: {err}"
    );
}

/// What reading a damaged file returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// Every read returned exactly what was written.
    Exact,
    /// Some read returned something else (possible only without the integrity check).
    Wrong,
    /// A read failed with `Corruption` naming the file, and every read after it too.
    Corrupt,
}

/// Reads every key (one range read) and some keys one by one at `version`. A read that fails
/// must fail with `Corruption` naming `path`, and so must every read after it: a server that
/// met damage does not go back to the file.
async fn read_all(
    storage: &RedbStorage,
    path: &Path,
    version: Version,
    state: &State,
    rng: &mut SplitMix64,
    context: &str,
) -> Read {
    let mut read = Read::Exact;
    match storage
        .get_range(everything(), version, usize::MAX, false)
        .await
    {
        Ok(got) => {
            let want: Vec<(Bytes, Bytes)> = state.clone().into_iter().collect();
            if got.more || got.entries != want {
                read = Read::Wrong;
            }
        }
        Err(e) => {
            assert_corruption(&e, path, &format!("{context}: range read"));
            read = Read::Corrupt;
        }
    }
    for _ in 0..32 {
        let k = key(rng.below(KEYS));
        match storage.get(k.clone(), version).await {
            Ok(got) => {
                assert_ne!(
                    read,
                    Read::Corrupt,
                    "{context}: a read of {k:?} worked after one met corruption"
                );
                if got != state.get(&k).cloned() {
                    read = Read::Wrong;
                }
            }
            Err(e) => {
                assert_corruption(&e, path, &format!("{context}: get {k:?}"));
                read = Read::Corrupt;
            }
        }
    }
    if read == Read::Corrupt {
        // The server stays failed, and says why.
        let err = storage.applied_version().await.unwrap_err();
        assert_corruption(&err, path, &format!("{context}: applied_version"));
    }
    read
}

fn seed() -> u64 {
    let seed = std::env::var("STRATA_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_da6a_9e00_0001u64);
    println!("damage seed {seed} (replay with STRATA_DAMAGE_SEED={seed})");
    seed
}

/// The two undamaged images damage is applied to: a file closed cleanly, and the same file as
/// a crash after its last flush would have left it. Each is checked first to open and read
/// back exactly: the integrity check finds nothing to report in an undamaged file, after a
/// crash included.
struct Images {
    dir: tempfile::TempDir,
    durable: Version,
    state: State,
    images: Vec<(&'static str, Vec<u8>)>,
}

async fn images(rng: &mut SplitMix64) -> Images {
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed.redb");
    let crashed = dir.path().join("crashed.redb");
    let (durable, state) = build(&closed, &crashed, rng).await;
    let mut images = Vec::new();
    for (name, original) in [("closed", &closed), ("crashed", &crashed)] {
        let bytes = std::fs::read(original).unwrap();
        println!(
            "{name}: {} bytes, {} pages, {} not all zero",
            bytes.len(),
            bytes.len() / PAGE,
            bytes
                .chunks(PAGE)
                .filter(|p| p.iter().any(|&b| b != 0))
                .count()
        );
        // On a copy each time: opening writes to the file (recovery, redb's close).
        let path = dir.path().join(format!("undamaged-{name}.redb"));
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(durable_version_at(&path).unwrap(), durable, "{name}");
        std::fs::write(&path, &bytes).unwrap();
        let storage = open(&path).await.unwrap();
        let context = format!("{name}, undamaged");
        let read = read_all(&storage, &path, durable, &state, rng, &context).await;
        assert_eq!(read, Read::Exact, "{context}");
        storage.close().await;
        images.push((name, bytes));
    }
    Images {
        dir,
        durable,
        state,
        images,
    }
}

/// What one damaged file led to, with the integrity check on.
#[derive(Debug, Default)]
struct Checked {
    /// Everything worked and read back exactly: the damage hit unused space.
    intact: u64,
    /// `durable_version_at` found the damage, and so did `open` after it.
    found_by_both_checks: u64,
    /// Only `open` found it.
    found_by_open_only: u64,
    /// A read found it, after a successful open.
    found_by_a_read: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_never_panics_and_is_reported_as_corruption_naming_the_file() {
    let seed = seed();
    let mut rng = SplitMix64(seed);
    let Images {
        dir,
        durable,
        state,
        images,
    } = images(&mut rng).await;

    let mut outcomes = [Checked::default(), Checked::default()];
    for iteration in 0..ITERATIONS {
        // Each iteration has its own generator, so one can be replayed from the printed seed.
        let mut rng = SplitMix64(seed.wrapping_add(iteration));
        let image = (iteration % 2) as usize;
        let (name, bytes) = &images[image];
        let outcomes = &mut outcomes[image];
        let path = dir.path().join(format!("damaged-{iteration}.redb"));
        let mut damaged = bytes.clone();
        let (page, how) = damage(&mut damaged, &mut rng);
        std::fs::write(&path, &damaged).unwrap();
        let context =
            format!("seed {seed}, iteration {iteration}: {name} file, page {page} {how:?}");

        // Recovery's first look at the file. Nothing here catches a panic: one fails the test.
        let first = durable_version_at(&path);
        match &first {
            Ok(v) => assert_eq!(*v, durable, "{context}: durable_version_at"),
            Err(e) => assert_corruption(e, &path, &format!("{context}: durable_version_at")),
        }
        let storage = match open(&path).await {
            Ok(storage) => storage,
            Err(e) => {
                assert_corruption(&e, &path, &format!("{context}: open"));
                if first.is_err() {
                    outcomes.found_by_both_checks += 1;
                } else {
                    outcomes.found_by_open_only += 1;
                }
                continue;
            }
        };
        // Damage found once is found again: the first check did not repair it away (say, by
        // falling back to an older commit, whose versions the log may have dropped).
        assert!(
            first.is_ok(),
            "{context}: open worked after durable_version_at found damage"
        );
        assert_eq!(
            storage.durable_version().await.unwrap(),
            durable,
            "{context}: durable version after open"
        );
        let read = read_all(&storage, &path, durable, &state, &mut rng, &context).await;
        storage.close().await;
        match read {
            Read::Exact => outcomes.intact += 1,
            Read::Corrupt => outcomes.found_by_a_read += 1,
            Read::Wrong => panic!("{context}: a read returned other values than were written"),
        }
    }
    for ((name, _), outcomes) in images.iter().zip(&outcomes) {
        println!(
            "outcomes of {} damaged {name} files: {outcomes:?}",
            ITERATIONS / 2
        );
    }
}

/// What one damaged file led to, with the integrity check off.
#[derive(Debug, Default)]
struct Unchecked {
    /// Everything worked and read back exactly.
    intact: u64,
    /// `open` failed with `Corruption`.
    found_at_open: u64,
    /// A read failed with `Corruption`.
    found_by_a_read: u64,
    /// Every read worked but some returned other values: what the check is there to prevent.
    wrong_values: u64,
}

/// Without the integrity check redb trusts the file, and some damage makes it panic inside an
/// open or a read (on the blocking thread, or on the async task where a read takes its
/// snapshot). None may escape: each is `Corruption` naming the file, the server keeps failing
/// with it, and closing works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_integrity_check_off_damage_still_never_panics() {
    let seed = seed();
    let mut rng = SplitMix64(seed);
    let Images {
        dir,
        durable,
        state,
        images,
    } = images(&mut rng).await;
    let unchecked = StorageConfig {
        check_integrity: false,
        ..config()
    };

    let mut outcomes = [Unchecked::default(), Unchecked::default()];
    for iteration in 0..ITERATIONS {
        let mut rng = SplitMix64(seed.wrapping_add(iteration));
        let image = (iteration % 2) as usize;
        let (name, bytes) = &images[image];
        let outcomes = &mut outcomes[image];
        let path = dir.path().join(format!("damaged-{iteration}.redb"));
        let mut damaged = bytes.clone();
        let (page, how) = damage(&mut damaged, &mut rng);
        std::fs::write(&path, &damaged).unwrap();
        let context =
            format!("seed {seed}, iteration {iteration}: {name} file, page {page} {how:?}");

        let storage = match open_with(&path, unchecked).await {
            Ok(storage) => storage,
            Err(e) => {
                assert_corruption(&e, &path, &format!("{context}: open"));
                outcomes.found_at_open += 1;
                continue;
            }
        };
        let read = read_all(&storage, &path, durable, &state, &mut rng, &context).await;
        storage.close().await;
        match read {
            Read::Exact => outcomes.intact += 1,
            Read::Corrupt => outcomes.found_by_a_read += 1,
            Read::Wrong => outcomes.wrong_values += 1,
        }
    }
    for ((name, _), outcomes) in images.iter().zip(&outcomes) {
        println!(
            "outcomes of {} damaged {name} files, unchecked: {outcomes:?}",
            ITERATIONS / 2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_io_error_is_reported_as_io_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: opening it fails with an I/O error (EISDIR) even
    // as root, and nothing is damaged.
    let directory = dir.path().join("storage.redb");
    std::fs::create_dir(&directory).unwrap();
    // A path below a regular file: every look at it fails with ENOTDIR, also as root.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let below_a_file = blocker.join("storage.redb");

    for path in [&directory, &below_a_file] {
        let shown = path.display().to_string();
        let err = durable_version_at(path).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Io(_)), "{shown}: {err}");
        assert!(err.to_string().contains(&shown), "{shown}: {err}");
        let err = open(path).await.unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Io(_)), "{shown}: {err}");
        assert!(err.to_string().contains(&shown), "{shown}: {err}");
    }
}
