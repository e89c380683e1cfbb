//! The writer: it takes every push queued, writes them as one group commit into the active
//! segment (rolling into a new segment when it is full), syncs once and only then answers them
//! all. A failed write or sync poisons the log.
//!
//! Production runs it on a thread of its own, and a push that finds the log idle (nothing
//! queued, no group being written, and no sign of load: see [`LaneQueue`]) writes and syncs
//! itself, on the pusher's thread: the leader of a group of one, as RocksDB's first writer in
//! a write group is. Handing a lone push to the thread and its answer back costs two wake-ups
//! across CPUs, about 100 µs on the project's test machine, when the sync itself takes
//! 150-200 µs. Under load the log is seldom idle, and pushes queue for the thread's group
//! commits. A leader blocks a runtime thread for its sync, so a push leads only while another
//! runtime thread is parked, with nothing to run, and at most one fewer than the runtime's
//! threads lead at once (see [`LeadSlot`]). With [`Blocking::Inline`] (the simulation) the
//! writer runs as a task instead, and every push queues.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Blocking, Error, Result, Version};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::config::Leaders;
use crate::error::io_error;
use crate::file_log::Shared;
use crate::format::{RECORD_HEADER_BYTES, RecordHeader, SEGMENT_FORMAT, SEGMENT_HEADER_BYTES};
use crate::fs::GroupMark;
use crate::index::Placed;
use crate::meta::write_manifest;
use crate::pages::PageWriter;
use crate::resync;
use crate::segment::Segment;
use crate::spare::{SPARE_FILE, Spare};

/// A push on its way to the writer.
pub(crate) struct Write {
    pub(crate) version: Version,
    pub(crate) previous: Version,
    /// The record's header, CRCs included, computed by the pusher.
    pub(crate) header: RecordHeader,
    pub(crate) payload: Bytes,
    pub(crate) ack: oneshot::Sender<Result<()>>,
    /// Room in the queue, given back when the push is answered.
    pub(crate) _room: OwnedSemaphorePermit,
}

/// The writer's state: the segment being written, and the spare to roll into.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// The newest version written (the log's newest when it was opened): the next push must
    /// name it as its predecessor.
    written: Version,
    active: Segment,
    /// Where the next record goes in the active segment.
    write_at: u64,
    has_records: bool,
    /// The end of the zeros written ahead of the data in the active segment: writes before it
    /// overwrite (their syncs commit no size change), writes past it append.
    room_end: u64,
    spare: Spare,
    buf: Vec<u8>,
    /// The active segment opened for whole-page writes, when the log writes with direct I/O
    /// ([`FileLogConfig::direct_io`](crate::FileLogConfig::direct_io)).
    pages: Option<PageWriter>,
}

/// The way to the writer: a channel to its thread, or the queue its task writes from.
#[derive(Clone, Debug)]
pub(crate) enum Queue {
    Thread(Sender<Write>, Arc<Lane>),
    Task(Arc<Inline>),
}

/// What the writer thread and the pushers that lead share: the writer, and whether a push
/// may lead.
pub(crate) struct Lane {
    /// Held by whoever writes a group: the thread, or a leading pusher. `None` once the
    /// thread has stopped: the log is closed, and nothing may be written any more.
    writer: Mutex<Option<Writer>>,
    /// Taken by a pusher under the chain's lock (before it holds the writer, which it only
    /// tries for), and by the thread while it holds the writer.
    queue: Mutex<LaneQueue>,
    /// When an idle log's pushes lead (the log's configuration).
    leaders: Leaders,
}

/// The pushes the thread holds, and whether the log looks idle.
#[derive(Debug)]
struct LaneQueue {
    /// Pushes sent to the thread and not yet written: raised before a push is sent, lowered
    /// once its group is written.
    unwritten: usize,
    /// Groups of one push in a row that the thread wrote with nothing queued behind them (a
    /// new log starts at [`LONE_GROUPS_TO_LEAD`]: idle).
    lone_groups: u32,
}

/// Lone groups in a row after which a log that was busy counts as idle again. A busy log
/// writes one now and then: at 64 clients of `strata bench`, one in 230 pushes led when one
/// was enough, one in 500 with two.
const LONE_GROUPS_TO_LEAD: u32 = 2;

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never waits: formatting a log must not block on its pushers.
        f.debug_struct("Lane")
            .field("queue", &self.queue.try_lock().ok())
            .finish_non_exhaustive()
    }
}

impl LaneQueue {
    /// A new log's: idle.
    fn new() -> LaneQueue {
        LaneQueue {
            unwritten: 0,
            lone_groups: LONE_GROUPS_TO_LEAD,
        }
    }

    /// Whether a push may lead, if it can take the writer: only with nothing unwritten, so a
    /// leader never passes a push admitted before it (that is what keeps the log in chain
    /// order), and only once the thread has written [`LONE_GROUPS_TO_LEAD`] lone groups in a
    /// row: under load a leader costs more than it saves (it writes a group of one while the
    /// pushes behind it wait, and blocks a runtime thread for its sync).
    fn may_lead(&self) -> bool {
        self.unwritten == 0 && self.lone_groups >= LONE_GROUPS_TO_LEAD
    }

    /// A push that may not lead (or found the writer held) is queued for the thread.
    fn queued(&mut self) {
        self.unwritten += 1;
    }

    /// The thread wrote a group of `n` pushes.
    fn written(&mut self, n: usize) {
        self.unwritten -= n;
        self.lone_groups = if n == 1 && self.unwritten == 0 {
            self.lone_groups.saturating_add(1)
        } else {
            0
        };
    }
}

impl Lane {
    /// The writer, once whoever holds it is done. After a panic while writing a group, the
    /// log is poisoned: that group's answers were dropped, and what it left on the disk and
    /// in the writer is not known, so nothing may be written behind it.
    fn writer(&self) -> MutexGuard<'_, Option<Writer>> {
        self.writer.lock().unwrap_or_else(|panicked| {
            let writer = panicked.into_inner();
            if let Some(w) = writer.as_ref() {
                w.shared
                    .chain
                    .poison("a panic while writing a group commit".into());
            }
            writer
        })
    }

    fn queue(&self) -> MutexGuard<'_, LaneQueue> {
        // Two plain fields, each always valid: a panic elsewhere leaves them usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a queued push reached the writer.
pub(crate) enum Sent<'a> {
    /// Queued: the writer answers it.
    Queued,
    /// The log was idle: the pusher writes it, now, holding the writer (see [`Led::write`]).
    Lead(Led<'a>),
}

/// A push that leads: it holds the writer, and nothing admitted before it is unwritten.
pub(crate) struct Led<'a> {
    writer: MutexGuard<'a, Option<Writer>>,
    write: Write,
    _slot: LeadSlot,
}

impl Led<'_> {
    /// Writes and syncs the push as a group of one and answers it (on a poisoned log, with
    /// the poisoning), blocking the calling thread meanwhile.
    pub(crate) fn write(self) {
        let Led {
            mut writer, write, ..
        } = self;
        // The writer is only taken from the lane once the thread has stopped, which it does
        // when every sender is gone; this push still holds one (the queue it led from).
        if let Some(writer) = writer.as_mut() {
            writer.commit(vec![write]);
        }
    }
}

/// Runtime threads leading a group commit right now, over every log in the process.
static LEADING: AtomicUsize = AtomicUsize::new(0);

/// A runtime thread's leave to lead: only while another thread of the runtime is parked (see
/// [`some_thread_parked`]), and at most one fewer than the runtime has threads lead at once,
/// whatever the number of logs, so that at least one always runs everything else. A
/// runtime of one thread (tokio's current-thread one) never leads: nothing else could run
/// during the leader's sync, so no push could queue behind it and end the idleness, and a
/// hundred concurrent pushers would each lead in turn, one sync each. A disk that stalls
/// holds up its leaders, never the whole runtime: the deadlines that end a stalled epoch still
/// fire, on other tasks. The leader is the task that pushed (a lone commit's caller, through
/// the commit proxy), so a deadline of that task's own cannot fire during the sync: the
/// director's persistence phase commits on a task of its own for that reason. (The count is
/// the process's, not one runtime's: a process of several runtimes leads less. A push from a
/// thread that is not one of the runtime's workers, such as `block_on`'s, also takes a turn,
/// though it blocks no worker.)
struct LeadSlot(());

impl LeadSlot {
    fn take(leaders: Leaders) -> Option<LeadSlot> {
        if leaders == Leaders::Never {
            return None;
        }
        let metrics = tokio::runtime::Handle::try_current().ok()?.metrics();
        let threads = metrics.num_workers();
        if leaders == Leaders::Auto && !some_thread_parked(&metrics) {
            return None;
        }
        let mut leading = LEADING.load(Ordering::Acquire);
        loop {
            if leading + 1 >= threads {
                return None;
            }
            match LEADING.compare_exchange_weak(
                leading,
                leading + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(LeadSlot(())),
                Err(now) => leading = now,
            }
        }
    }
}

/// Whether a thread of the runtime is parked, with nothing to run (a snapshot: it may be
/// waking that moment, and then the push queues). A leader blocks its thread
/// for a whole sync: that costs nothing while another thread idles (the time it saves is
/// wake-ups, not CPU), but when every other thread is busy the runtime is short of CPU, and
/// the writer thread's sync leaves the runtime all of its threads. At 256 clients of `strata
/// bench` on a disk that syncs in 60 µs, leading whenever the log looked idle cost 10-15% of
/// the commits per second. (Tokio counts each park and unpark of a worker: odd is parked.)
#[cfg(target_has_atomic = "64")]
fn some_thread_parked(metrics: &tokio::runtime::RuntimeMetrics) -> bool {
    (0..metrics.num_workers()).any(|w| metrics.worker_park_unpark_count(w) % 2 == 1)
}

/// Without 64-bit atomics tokio keeps no park counts: no runtime thread leads.
#[cfg(not(target_has_atomic = "64"))]
fn some_thread_parked(_: &tokio::runtime::RuntimeMetrics) -> bool {
    false
}

impl Drop for LeadSlot {
    fn drop(&mut self) {
        LEADING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Poisons the log when dropped by a thread unwinding from a panic in a group commit: the
/// group's answers are dropped, its pushes were admitted, and what it left on the disk and in
/// the writer is not known. Poisoned, the log refuses what follows and a `lock` waiting for
/// the group to become durable fails at once instead of waiting out its deadline.
struct PoisonOnPanic(Arc<Shared>);

impl Drop for PoisonOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .chain
                .poison("a panic while writing a group commit".into());
        }
    }
}

impl Queue {
    /// Queues `w`, or hands it back to be written by its pusher when the log is idle; gives
    /// it back as an error when the writer has stopped. Called under the chain's lock, so that
    /// pushes reach the writer in chain order.
    pub(crate) fn send(&self, w: Write) -> std::result::Result<Sent<'_>, Write> {
        match self {
            Queue::Thread(tx, lane) => {
                let mut queue = lane.queue();
                if queue.may_lead()
                    && let Some(slot) = LeadSlot::take(lane.leaders)
                    && let Ok(writer) = lane.writer.try_lock()
                {
                    return Ok(Sent::Lead(Led {
                        writer,
                        write: w,
                        _slot: slot,
                    }));
                }
                tx.send(w).map_err(|e| e.0)?;
                queue.queued();
                Ok(Sent::Queued)
            }
            Queue::Task(inline) => inline.send(w).map(|()| Sent::Queued),
        }
    }
}

/// The running writer, to stop it.
#[derive(Debug)]
pub(crate) enum Running {
    Thread(JoinHandle<()>),
    Task(Arc<Inline>, tokio::task::JoinHandle<()>),
}

impl Running {
    /// Stops the writer once it has written and answered what it holds: a thread is joined
    /// (its queue is closed); an inline writer's queue is written here and now, so a log
    /// reopened right after never meets a writer of the old handle.
    pub(crate) fn stop(self) {
        match self {
            Running::Thread(handle) => {
                let _ = handle.join();
            }
            Running::Task(inline, task) => {
                inline.close();
                task.abort();
            }
        }
    }
}

/// An inline writer ([`Blocking::Inline`]): the pushes queued and the writer, shared by the
/// pushers, the task that writes what they queue, and `close`. Everything runs on one thread,
/// so the lock is never waited for; it is held while a group is written and synced.
#[derive(Debug)]
pub(crate) struct Inline {
    state: std::sync::Mutex<InlineState>,
    queued: tokio::sync::Notify,
}

struct InlineState {
    queue: std::collections::VecDeque<Write>,
    /// `None` once closed.
    writer: Option<Writer>,
}

impl std::fmt::Debug for InlineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineState")
            .field("queued", &self.queue.len())
            .field("closed", &self.writer.is_none())
            .finish()
    }
}

impl Inline {
    fn state(&self) -> std::sync::MutexGuard<'_, InlineState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn send(&self, w: Write) -> std::result::Result<(), Write> {
        let mut st = self.state();
        if st.writer.is_none() {
            return Err(w);
        }
        st.queue.push_back(w);
        drop(st);
        self.queued.notify_one();
        Ok(())
    }

    /// Writes everything queued, a group (at most `group_bytes_max`) at a time; `false` once
    /// closed.
    fn write_queued(&self) -> bool {
        let mut st = self.state();
        let InlineState { queue, writer } = &mut *st;
        let Some(writer) = writer else { return false };
        while let Some(first) = queue.pop_front() {
            let mut bytes = first.payload.len() + RECORD_HEADER_BYTES;
            let mut group = vec![first];
            while bytes < writer.shared.config.group_bytes_max {
                let Some(w) = queue.pop_front() else { break };
                bytes += w.payload.len() + RECORD_HEADER_BYTES;
                group.push(w);
            }
            writer.commit(group);
        }
        true
    }

    /// Writes what is queued, then stops: later pushes are refused.
    fn close(&self) {
        self.write_queued();
        if let Some(mut writer) = self.state().writer.take() {
            writer.spare.retire(&writer.shared);
        }
    }

    /// The task: writes what is queued each time a push wakes it, until closed.
    async fn run(self: Arc<Self>) {
        while self.write_queued() {
            self.queued.notified().await;
        }
    }
}

impl Writer {
    /// Starts the writer of the log `shared` (a thread, or a task when its configuration
    /// says [`Blocking::Inline`]), whose newest version is `written`, writing into `active`
    /// from `write_at` (its zeros end at
    /// `room_end`); pushes go to it through the returned queue, and a thread stops once every
    /// sender is dropped and it has answered what it holds.
    pub(crate) fn start(
        shared: Arc<Shared>,
        written: Version,
        active: Segment,
        write_at: u64,
        room_end: u64,
    ) -> std::io::Result<(Queue, Running)> {
        let id = shared.id;
        let blocking = shared.config.blocking;
        let pages = if shared.config.direct_io {
            Some(PageWriter::open(shared.fs.as_ref(), &active, write_at)?)
        } else {
            None
        };
        let writer = Writer {
            shared,
            written,
            active,
            write_at,
            has_records: write_at > SEGMENT_HEADER_BYTES as u64,
            room_end,
            spare: Spare::None,
            buf: Vec::new(),
            pages,
        };
        match blocking {
            Blocking::Threads => {
                let lane = Arc::new(Lane {
                    leaders: writer.shared.config.leaders,
                    writer: Mutex::new(Some(writer)),
                    queue: Mutex::new(LaneQueue::new()),
                });
                let (tx, rx) = std::sync::mpsc::channel();
                let thread_lane = lane.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("strata-tlog-{}", id.0))
                    .spawn(move || run_thread(&thread_lane, &rx))?;
                Ok((Queue::Thread(tx, lane), Running::Thread(handle)))
            }
            Blocking::Inline => {
                let inline = Arc::new(Inline {
                    state: std::sync::Mutex::new(InlineState {
                        queue: std::collections::VecDeque::new(),
                        writer: Some(writer),
                    }),
                    queued: tokio::sync::Notify::new(),
                });
                let task = tokio::spawn(inline.clone().run());
                Ok((Queue::Task(inline.clone()), Running::Task(inline, task)))
            }
        }
    }

    /// Writes and syncs `group` and answers its pushers; refuses it on a poisoned log.
    ///
    /// A group that does not continue the versions written is refused and poisons the log,
    /// before anything is written: the chain admits pushes in order and the queue keeps it,
    /// so this only catches a bug in either, but a log written out of order would be
    /// corruption on the next open, while a poisoned one only ends the epoch.
    fn commit(&mut self, group: Vec<Write>) {
        let _poison_on_panic = PoisonOnPanic(self.shared.clone());
        // Checked for order only on a healthy log: after a failed write the versions written
        // are not known, and an out-of-order complaint would hide the real cause.
        let refused = self
            .shared
            .chain
            .poisoned_error()
            .or_else(|| self.poison_if_out_of_order(&group));
        if let Some(poisoned) = refused {
            for w in group {
                let _ = w.ack.send(Err(poisoned.clone()));
            }
            return;
        }
        let written = {
            let _mark = GroupMark::set();
            self.write_group(&group)
        };
        match written {
            Ok(placed) => {
                let last = placed.last().map(|p| p.version);
                if let Some(v) = last {
                    self.written = v;
                }
                if let Ok(mut index) = self.shared.index() {
                    index.append(placed, self.shared.config.pull_cache_bytes);
                }
                if let Some(v) = last {
                    self.shared.chain.set_durable(v);
                }
                for w in group {
                    let _ = w.ack.send(Ok(()));
                }
            }
            Err(e) => {
                // After a failed write or sync the page cache and the file may disagree
                // with what we think is on disk: refuse everything from now on. Recovery
                // on the next open finds the truth. The error is kept, so that a refusal
                // long after it still says what went wrong.
                self.shared.chain.poison(format!("i/o: {e} ({})", e.kind()));
                tracing::error!(log = self.shared.id.0, error = %e, "log write failed; log poisoned");
                // What the failed sync wrote may sit in the page cache without ever reaching
                // the disk: the next open must write it again before trusting it.
                if let Err(e) = resync::mark(self.shared.fs.as_ref(), &self.shared.dir) {
                    tracing::error!(log = self.shared.id.0, error = %e, "could not mark the log for a resync");
                }
                let err = io_error(e);
                for w in group {
                    let _ = w.ack.send(Err(err.clone()));
                }
            }
        }
    }

    /// Poisons the log, and returns its error, when `group` does not continue the versions
    /// written.
    fn poison_if_out_of_order(&self, group: &[Write]) -> Option<Error> {
        let mut previous = self.written;
        for w in group {
            if w.previous != previous {
                self.shared.chain.poison(format!(
                    "push {} (after {}) reached the writer after {previous}",
                    w.version, w.previous
                ));
                tracing::error!(
                    log = self.shared.id.0,
                    version = w.version.0,
                    written = previous.0,
                    "a push reached the writer out of chain order; log poisoned"
                );
                return self.shared.chain.poisoned_error();
            }
            previous = w.version;
        }
        None
    }

    /// Appends the group, rolling to new segments as needed, and syncs. Returns where each
    /// entry landed; nothing of it is visible before this returns.
    fn write_group(&mut self, group: &[Write]) -> std::io::Result<Vec<Placed>> {
        self.spare.tend(&self.shared, self.write_at, self.room_end);
        if let Some(first) = group.first()
            && self.active.format != SEGMENT_FORMAT
        {
            // A format 1 segment is only read, never appended to.
            self.roll(first.previous)?;
        }
        let mut placed = Vec::with_capacity(group.len());
        self.buf.clear();
        for (i, w) in group.iter().enumerate() {
            let record_len = (RECORD_HEADER_BYTES + w.payload.len()) as u64;
            let end = self.write_at + self.buf.len() as u64 + record_len;
            // Roll when the segment is full, or as soon as a record would append while a
            // zero-filled segment is ready.
            let spare_ready = self.spare.is_ready();
            if self.has_records
                && (end > self.shared.config.segment_bytes || (end > self.room_end && spare_ready))
            {
                self.flush()?;
                self.sync()?;
                self.roll(w.previous)?;
            }
            let offset = self.write_at + self.buf.len() as u64;
            // The group's last record is marked: recovery's evidence that the group was
            // complete when a later one follows it.
            self.buf
                .extend_from_slice(&w.header.encode(i + 1 == group.len()));
            self.buf.extend_from_slice(&w.payload);
            self.has_records = true;
            #[expect(clippy::cast_possible_truncation)] // NOTE: checked against payload_bytes_max
            placed.push(Placed {
                version: w.version,
                previous: w.previous,
                offset,
                payload_len: w.payload.len() as u32,
                cached: Some(w.payload.clone()),
            });
        }
        self.flush()?;
        self.sync()?;
        Ok(placed)
    }

    /// Writes the bytes gathered in `buf` where the active segment's data ends.
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            match &mut self.pages {
                Some(pages) => pages.append(self.write_at, &self.buf)?,
                None => self.active.file.write_all_at(&self.buf, self.write_at)?,
            }
            self.write_at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Makes what [`Writer::flush`] wrote durable.
    fn sync(&self) -> std::io::Result<()> {
        match &self.pages {
            Some(pages) => pages.sync(),
            None => self.active.file.sync_data(),
        }
    }

    /// Starts the next segment after `base`: the spare when it is ready, else an empty file;
    /// either is made durable and then named in the manifest before this returns.
    fn roll(&mut self, base: Version) -> std::io::Result<()> {
        let (fs, dir, id) = (self.shared.fs.as_ref(), &self.shared.dir, self.shared.id);
        let segment = match self.spare.take_ready() {
            Some(file) => Segment::install(fs, dir, id, file, &dir.join(SPARE_FILE), base)?,
            None => Segment::create(fs, dir, id, base)?,
        };
        // Named durably before any record goes into it: from now on recovery requires this
        // segment, so losing it is corruption, never a torn write. (An empty format 1 segment
        // replaced in place keeps its base, which the manifest already names.)
        if segment.base != self.active.base {
            write_manifest(fs, dir, id, base)?;
        }
        let len = segment.file.len()?;
        let zero_filled = len > SEGMENT_HEADER_BYTES as u64;
        // An empty format 1 segment is replaced in place (same base, same name).
        let replaces = segment.path == self.active.path;
        if let Ok(mut index) = self.shared.index() {
            if replaces {
                index.segments.pop();
            }
            index.segments.push(segment.clone());
        }
        tracing::debug!(
            log = self.shared.id.0,
            base = base.0,
            zero_filled,
            "new segment"
        );
        if self.shared.config.direct_io {
            self.pages = Some(PageWriter::open(fs, &segment, SEGMENT_HEADER_BYTES as u64)?);
        }
        self.active = segment;
        self.write_at = SEGMENT_HEADER_BYTES as u64;
        self.has_records = false;
        self.room_end = len.max(SEGMENT_HEADER_BYTES as u64);
        Ok(())
    }
}

/// The writer thread: writes what is queued, a group at a time, until every sender is gone;
/// then stops the writer, so that a push leading after the close writes nothing.
fn run_thread(lane: &Lane, rx: &Receiver<Write>) {
    // Size of the last group and how long its sync took: the gathering heuristic below.
    let mut last_group = 1;
    let mut last_sync = Duration::ZERO;
    while let Ok(first) = rx.recv() {
        let mut writer = lane.writer();
        let Some(w) = writer.as_mut() else { break };
        let mut bytes = first.payload.len() + RECORD_HEADER_BYTES;
        let mut group = vec![first];
        // Take what is queued. When the last group was larger than what is here now, its
        // pushers are likely on their way back (they were all answered at once): if told
        // to (`gather_stragglers`), wait a little for them, at most half a sync, rather
        // than paying a whole sync for a partial group and another for the rest. A lone
        // pusher never waits. (The writer is held meanwhile, so none of them leads.)
        let gather_until = std::time::Instant::now() + last_sync / 2;
        while bytes < w.shared.config.group_bytes_max {
            let next = match rx.try_recv() {
                Ok(w) => Some(w),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty)
                    if w.shared.config.gather_stragglers && group.len() < last_group =>
                {
                    let left = gather_until.saturating_duration_since(std::time::Instant::now());
                    rx.recv_timeout(left).ok()
                }
                Err(TryRecvError::Empty) => None,
            };
            let Some(next) = next else { break };
            bytes += next.payload.len() + RECORD_HEADER_BYTES;
            group.push(next);
        }
        last_group = group.len();
        let started = std::time::Instant::now();
        w.commit(group);
        last_sync = started.elapsed().min(Duration::from_millis(2));
        // Counted off while the writer is still held: a push that then finds the log idle
        // and the writer free may lead, since everything before it is written.
        lane.queue().written(last_group);
    }
    if let Some(mut writer) = lane.writer().take() {
        writer.spare.retire(&writer.shared);
    }
}

#[cfg(test)]
mod tests {
    use super::LaneQueue;

    /// Drives the lane's state through seeded interleavings of pushes and written groups, as
    /// a model of the thread's queue: a push may lead only when nothing queued before it is
    /// unwritten (a leader passing one would write the log out of chain order), and a lone
    /// push on a quiet log does lead.
    #[test]
    fn a_push_leads_only_when_nothing_before_it_is_unwritten() {
        let mut rng = strata_testkit::rng::SplitMix64(0x1ead);
        let mut led = 0;
        for _ in 0..200 {
            let mut lane = LaneQueue::new();
            // What the thread has received and not written yet, in groups it will take.
            let mut held = 0usize;
            for _ in 0..200 {
                if rng.below(2) == 0 {
                    // A push. It may find the writer held (by a leader, or by the thread
                    // writing what it holds) or free (nothing is being written, or the thread
                    // has pushes but has not taken the writer yet).
                    let writer_free = rng.below(3) != 0;
                    if lane.may_lead() && writer_free {
                        assert_eq!(held, 0, "a push led past {held} unwritten");
                        led += 1;
                    } else {
                        lane.queued();
                        held += 1;
                    }
                } else if held > 0 {
                    let n = 1 + usize::try_from(rng.below(held as u64)).unwrap_or(0);
                    held -= n;
                    lane.written(n);
                }
                assert_eq!(lane.unwritten, held);
            }
        }
        assert!(led > 1_000, "pushes led {led} times");

        // After load, the log turns idle again once the thread writes lone pushes with
        // nothing behind them, twice in a row.
        let mut lane = LaneQueue::new();
        assert!(lane.may_lead(), "a new log is idle");
        lane.queued();
        lane.queued();
        lane.written(2);
        assert!(!lane.may_lead(), "a group of two is load");
        lane.queued();
        lane.written(1);
        assert!(!lane.may_lead(), "one lone group");
        lane.queued();
        lane.queued();
        lane.written(1);
        assert!(!lane.may_lead(), "a lone group with a push behind it");
        lane.written(1);
        lane.queued();
        lane.written(1);
        assert!(lane.may_lead(), "two lone groups in a row");
    }
}
