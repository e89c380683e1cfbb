//! Running the work that blocks on redb's file where the configuration says (see
//! [`Blocking`]): tokio's blocking pool, or the asking task (the simulation).

use strata_core::{Blocking, ErrorKind, Result};

use crate::errors::error;

/// Runs `work` as `mode` says; `what` names it when the blocking task fails (a panic, or the
/// runtime shutting down).
pub(crate) async fn run<T: Send + 'static>(
    mode: Blocking,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    match mode {
        Blocking::Threads => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| error(ErrorKind::Unavailable(format!("{what} task: {e}")))),
        Blocking::Inline => Ok(work()),
    }
}
