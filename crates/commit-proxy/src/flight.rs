//! The batches in flight, for stall detection: when each started and which stage it waits on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use tokio::time::Instant;

use strata_core::{Stage, Version};

use crate::stages::Stages;

/// The stages a batch in flight can wait on, as kept in [`Track::waiting`].
pub(crate) const WAITED_ON: [Stage; 3] = [Stage::Sequencer, Stage::Resolver, Stage::Log];

pub(crate) const ON_SEQUENCER: u8 = 0;

pub(crate) const ON_RESOLVER: u8 = 1;

pub(crate) const ON_LOG: u8 = 2;

/// One batch between asking for its version pair and its answer (see the crate docs, "Stall
/// detection").
pub(crate) struct Track {
    /// Given by the batcher in increasing order, so the list of tracks stays sorted by it.
    pub(crate) seq: u64,
    pub(crate) started: Instant,
    /// The stage the batch waits on now: an index into [`WAITED_ON`].
    pub(crate) waiting: AtomicU8,
    /// The batch's commit version; zero until the sequencer handed it out.
    pub(crate) version: AtomicU64,
}

/// A batch's place in the in-flight list, for as long as this lives: dropping it (however the
/// batch ends) takes the batch off the list.
pub(crate) struct InFlight {
    pub(crate) stages: Arc<Stages>,
    pub(crate) track: Arc<Track>,
}

impl InFlight {
    /// Lists a batch that is about to ask the sequencer for its version pair.
    pub(crate) fn begin(stages: &Arc<Stages>, seq: u64) -> InFlight {
        let track = Arc::new(Track {
            seq,
            started: Instant::now(),
            waiting: AtomicU8::new(ON_SEQUENCER),
            version: AtomicU64::new(0),
        });
        stages.flights().push_back(track.clone());
        InFlight {
            stages: stages.clone(),
            track,
        }
    }

    pub(crate) fn versioned(&self, version: Version) {
        self.track.version.store(version.0, Ordering::Relaxed);
    }

    pub(crate) fn waits_on(&self, stage: u8) {
        self.track.waiting.store(stage, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut flights = self.stages.flights();
        // Batches usually end in order, so this is almost always the front.
        if let Ok(i) = flights.binary_search_by_key(&self.track.seq, |t| t.seq) {
            flights.remove(i);
        }
    }
}

/// What [`BatchingProxy::health`] reports of the oldest batch in flight.
pub(crate) struct Oldest {
    pub(crate) started: Instant,
    pub(crate) stage: Stage,
    pub(crate) version: Version,
    pub(crate) in_flight: usize,
}
