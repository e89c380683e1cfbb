//! The in-memory index of a log: its segments, and where each durable entry is, with the
//! payloads of the newest entries cached for pulls close behind the writer.

use std::collections::VecDeque;

use bytes::Bytes;
use strata_core::Version;

use crate::segment::Segment;

/// Where one durable entry is.
#[derive(Clone, Debug)]
pub(crate) struct Placed {
    pub(crate) version: Version,
    pub(crate) previous: Version,
    pub(crate) offset: u64,
    pub(crate) payload_len: u32,
    /// The payload, while it is among the newest `pull_cache_bytes`.
    pub(crate) cached: Option<Bytes>,
}

/// The durable entries and the segments holding them.
#[derive(Debug)]
pub(crate) struct Index {
    pub(crate) segments: Vec<Segment>,
    pub(crate) entries: VecDeque<Placed>,
    /// How many entries at the front have no cached payload (the cache holds a suffix).
    pub(crate) uncached: usize,
    pub(crate) cached_bytes: usize,
}

impl Index {
    /// Appends durable entries and evicts the oldest cached payloads beyond `limit` bytes.
    pub(crate) fn append(&mut self, placed: Vec<Placed>, limit: usize) {
        for p in placed {
            self.cached_bytes += p.cached.as_ref().map_or(0, Bytes::len);
            self.entries.push_back(p);
        }
        while self.cached_bytes > limit && self.uncached < self.entries.len() {
            if let Some(p) = self.entries.get_mut(self.uncached) {
                self.cached_bytes -= p.cached.take().map_or(0, |b| b.len());
            }
            self.uncached += 1;
        }
    }

    /// Drops entries from the front while `drop` says so.
    pub(crate) fn pop_front_while(&mut self, drop: impl Fn(&Placed) -> bool) {
        while self.entries.front().is_some_and(&drop) {
            if let Some(p) = self.entries.pop_front() {
                self.cached_bytes -= p.cached.map_or(0, |b| b.len());
            }
            self.uncached = self.uncached.saturating_sub(1);
        }
    }

    /// The segment holding `version`.
    pub(crate) fn segment_of(&self, version: Version) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base < version);
        self.segments.get(i.checked_sub(1)?)
    }
}
