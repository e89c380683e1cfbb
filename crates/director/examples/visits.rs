//! Strata as an embedded library: open (recover) the store in a directory, count a visit with
//! an atomic add, list the visitors by range, and stop.
//!
//! Run: `cargo run -p strata-director --example visits -- ./visits-data ada`; each run counts
//! one more visit. `cargo test --workspace` runs it too, on a temporary directory.
//!
//! A library user depends on `strata-director` alone (with `default-features = false` to leave
//! out the command's own dependencies) and on tokio with the `rt-multi-thread` and `macros`
//! features for `#[tokio::main]`.

use std::path::Path;

use strata_director::{EmbeddedCluster, EmbeddedConfig, Key, KeyRange, Result};

/// Counts a visit of `who` to the store in `dir`; returns the visits so far and everyone who
/// visited.
async fn visit(dir: &Path, who: &str) -> Result<(u64, Vec<String>)> {
    let cluster = EmbeddedCluster::start(dir, EmbeddedConfig::default()).await?;
    let db = cluster.database();
    let key = Key::from(format!("visits/{who}"));
    // The visit: an atomic add, applied by the storage servers to whatever the count is then.
    // It writes the key without reading it, so visits at the same time never conflict.
    db.run(|tx| {
        let key = key.clone();
        async move {
            tx.atomic_add_i64(key, 1);
            Ok(())
        }
    })
    .await?;
    // Reading it back, with everyone who visited, in a transaction of its own.
    let (answer, _version) = db
        .run(|tx| {
            let key = key.clone();
            async move {
                let seen = match tx.get(&key).await? {
                    Some(v) => u64::from_le_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
                    None => 0,
                };
                // A bad range is an error of the transaction: `?` works here.
                let range = KeyRange::new("visits/", "visits0")?;
                let everyone = tx.get_range(&range, 100, false).await?;
                let names = everyone
                    .iter()
                    .map(|(k, _)| String::from_utf8_lossy(&k[b"visits/".len()..]).into_owned())
                    .collect();
                Ok((seen, names))
            }
        })
        .await?;
    cluster.stop().await;
    Ok(answer)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./visits-data".into());
    let who = args.next().unwrap_or_else(|| "ada".into());
    let (count, everyone) = visit(dir.as_ref(), &who).await?;
    println!(
        "{who} has visited {count} time(s); visitors: {}",
        everyone.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_visits_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            visit(dir.path(), "ada").await.unwrap(),
            (1, vec!["ada".into()])
        );
        assert_eq!(
            visit(dir.path(), "grace").await.unwrap(),
            (1, vec!["ada".into(), "grace".into()])
        );
        assert_eq!(visit(dir.path(), "ada").await.unwrap().0, 2);
    }
}
