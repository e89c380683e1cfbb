//! The writer thread: it takes every push queued, writes them as one group commit into the
//! active segment (rolling into a new segment when it is full), syncs once and only then
//! answers them all. A failed write or sync poisons the log. With [`Blocking::Inline`] (the
//! simulation) the same writer runs as a task instead.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Blocking, Result, Version};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::error::io_error;
use crate::file_log::Shared;
use crate::format::{RECORD_HEADER_BYTES, RecordHeader, SEGMENT_FORMAT, SEGMENT_HEADER_BYTES};
use crate::index::Placed;
use crate::meta::write_manifest;
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

/// The writer thread's state: the segment being written, and the spare to roll into.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Segment,
    /// Where the next record goes in the active segment.
    write_at: u64,
    has_records: bool,
    /// The end of the zeros written ahead of the data in the active segment: writes before it
    /// overwrite (their syncs commit no size change), writes past it append.
    room_end: u64,
    spare: Spare,
    buf: Vec<u8>,
}

/// The way to the writer: a channel to its thread, or the queue its task writes from.
#[derive(Clone, Debug)]
pub(crate) enum Queue {
    Thread(Sender<Write>),
    Task(Arc<Inline>),
}

impl Queue {
    /// Queues `w`; gives it back when the writer has stopped.
    pub(crate) fn send(&self, w: Write) -> std::result::Result<(), Write> {
        match self {
            Queue::Thread(tx) => tx.send(w).map_err(|e| e.0),
            Queue::Task(inline) => inline.send(w),
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
    /// says [`Blocking::Inline`]), writing into `active` from `write_at` (its zeros end at
    /// `room_end`); pushes go to it through the returned queue, and a thread stops once every
    /// sender is dropped and it has answered what it holds.
    pub(crate) fn start(
        shared: Arc<Shared>,
        active: Segment,
        write_at: u64,
        room_end: u64,
    ) -> std::io::Result<(Queue, Running)> {
        let id = shared.id;
        let blocking = shared.config.blocking;
        let writer = Writer {
            shared,
            active,
            write_at,
            has_records: write_at > SEGMENT_HEADER_BYTES as u64,
            room_end,
            spare: Spare::None,
            buf: Vec::new(),
        };
        match blocking {
            Blocking::Threads => {
                let (tx, rx) = std::sync::mpsc::channel();
                let handle = std::thread::Builder::new()
                    .name(format!("strata-tlog-{}", id.0))
                    .spawn(move || writer.run(rx))?;
                Ok((Queue::Thread(tx), Running::Thread(handle)))
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

    fn run(mut self, rx: Receiver<Write>) {
        // Size of the last group and how long its sync took: the gathering heuristic below.
        let mut last_group = 1;
        let mut last_sync = Duration::ZERO;
        while let Ok(first) = rx.recv() {
            let mut bytes = first.payload.len() + RECORD_HEADER_BYTES;
            let mut group = vec![first];
            // Take what is queued. When the last group was larger than what is here now, its
            // pushers are likely on their way back (they were all answered at once): if told
            // to (`gather_stragglers`), wait a little for them, at most half a sync, rather
            // than paying a whole sync for a partial group and another for the rest. A lone
            // pusher never waits.
            let gather_until = std::time::Instant::now() + last_sync / 2;
            while bytes < self.shared.config.group_bytes_max {
                let next = match rx.try_recv() {
                    Ok(w) => Some(w),
                    Err(TryRecvError::Disconnected) => None,
                    Err(TryRecvError::Empty)
                        if self.shared.config.gather_stragglers && group.len() < last_group =>
                    {
                        let left =
                            gather_until.saturating_duration_since(std::time::Instant::now());
                        rx.recv_timeout(left).ok()
                    }
                    Err(TryRecvError::Empty) => None,
                };
                let Some(w) = next else { break };
                bytes += w.payload.len() + RECORD_HEADER_BYTES;
                group.push(w);
            }
            last_group = group.len();
            let started = std::time::Instant::now();
            self.commit(group);
            last_sync = started.elapsed().min(Duration::from_millis(2));
        }
        self.spare.retire(&self.shared);
    }

    /// Writes and syncs `group` and answers its pushers; refuses it on a poisoned log.
    fn commit(&mut self, group: Vec<Write>) {
        if let Some(poisoned) = self.shared.chain.poisoned_error() {
            for w in group {
                let _ = w.ack.send(Err(poisoned.clone()));
            }
            return;
        }
        match self.write_group(&group) {
            Ok(placed) => {
                let last = placed.last().map(|p| p.version);
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
                self.active.file.sync_data()?;
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
        self.active.file.sync_data()?;
        Ok(placed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.active.file.write_all_at(&self.buf, self.write_at)?;
            self.write_at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
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
        self.active = segment;
        self.write_at = SEGMENT_HEADER_BYTES as u64;
        self.has_records = false;
        self.room_end = len.max(SEGMENT_HEADER_BYTES as u64);
        Ok(())
    }
}
