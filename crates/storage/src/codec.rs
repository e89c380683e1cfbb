//! How the storage file's redb tables are laid out, and the bytes this crate reads and writes:
//! the table definitions, the record of the shards a file was opened for, and the decoding of
//! a log entry into the mutations it applies.

use bytes::Bytes;
use redb::TableDefinition;
use strata_core::{ErrorKind, KeyRange, Mutation, Result, TransactionView, Version};

use crate::errors::error;

/// The data: each key with its value as of the durable version.
pub(crate) const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// Bookkeeping: the durable version under [`DURABLE_VERSION`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the durable version in [`META`].
pub(crate) const DURABLE_VERSION: &str = "durable_version";
/// The key ranges the file holds, written by the first open: a file is never served as
/// another shard (storage files swapped or copied between servers).
pub(crate) const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("shards");
/// The key of the shards record in [`SHARDS`] (see [`encode_shards`]).
pub(crate) const SHARDS_KEY: &str = "shards";

/// The shards' stored form: for each range, its begin and its end, each as a little-endian
/// `u32` length then the bytes.
pub(crate) fn encode_shards(shards: &[KeyRange]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in shards {
        for k in [r.begin(), r.end()] {
            out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(k);
        }
    }
    out
}

/// A printable form of shards, for errors.
pub(crate) fn shown(shards: &[KeyRange]) -> String {
    shards
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shards a file records, decoded for an error message (`None` when unreadable).
pub(crate) fn decode_shards(mut bytes: &[u8]) -> Option<Vec<KeyRange>> {
    let mut take = || -> Option<Bytes> {
        let len = usize::try_from(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
        let key = Bytes::copy_from_slice(bytes.get(4..4 + len)?);
        bytes = &bytes[4 + len..];
        Some(key)
    };
    let mut out = Vec::new();
    while let Some(begin) = take() {
        out.push(KeyRange::new(begin, take()?).ok()?);
    }
    Some(out)
}

/// The mutations of the log entry at `version`: its payload is a transaction in wire form,
/// whose commit version, if it carries one, must be `version` (else the log is `Corruption`).
pub(crate) fn decode_entry(version: Version, payload: Bytes) -> Result<(Version, Vec<Mutation>)> {
    let view = TransactionView::parse(payload).map_err(|e| error(ErrorKind::Wire(e)))?;
    let commit = view
        .commit_version()
        .map_err(|e| error(ErrorKind::Wire(e)))?;
    if let Some(commit) = commit
        && commit != version
    {
        return Err(error(ErrorKind::Corruption(format!(
            "log entry {version} carries commit version {commit}"
        ))));
    }
    let mutations = view.mutations().map_err(|e| error(ErrorKind::Wire(e)))?;
    Ok((version, mutations))
}
