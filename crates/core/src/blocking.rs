//! Where a stage runs the disk work that blocks: [`Blocking`].

/// Where a stage runs the work that blocks on a disk (a log's group commits and spare
/// segments, a storage server's reads and flushes).
///
/// Production runs it on threads, so that no runtime thread waits on a disk. The simulation
/// runs the whole cluster on one thread, on a disk whose calls return quickly;
/// there the work runs on the task that asks for it, so that what happens, and in what order,
/// is decided by the program alone and a seed replays exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Blocking {
    /// On a thread of the stage's own (a log's writer) or tokio's blocking pool. The default.
    #[default]
    Threads,
    /// On the asking task, blocking its runtime thread meanwhile. Only under a current-thread
    /// runtime, on a disk whose calls return quickly (the simulation's directory on a memory
    /// file system).
    Inline,
}
