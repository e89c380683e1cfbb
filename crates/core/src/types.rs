//! Keys, ranges, versions, epochs, mutations and transactions.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::atomic::AtomicOp;

/// A key: any byte string of at most [`KEY_BYTES_MAX`] bytes.
///
/// User keys sort below `0xff`; keys that start with `0xff` are system keys.
pub type Key = Bytes;

/// A value: any byte string of at most [`VALUE_BYTES_MAX`] bytes.
pub type Value = Bytes;

/// Largest key, in bytes, accepted anywhere in Strata.
pub const KEY_BYTES_MAX: usize = 10_000;

/// Largest end of a [`KeyRange`], in bytes: one more than a key, so that the range holding
/// exactly one key of the largest size (`key + "\0"`) can be written down.
pub const RANGE_END_BYTES_MAX: usize = KEY_BYTES_MAX + 1;

/// Largest value, in bytes, accepted anywhere in Strata.
pub const VALUE_BYTES_MAX: usize = 100_000;

/// Largest encoded transaction, in bytes (header and every section included).
pub const TRANSACTION_BYTES_MAX: usize = 10_000_000;

/// Width of the MVCC window, in versions: reads older than the newest version minus this are
/// refused as too old. At about 1,000,000 versions a second this is five seconds.
pub const MVCC_WINDOW_VERSIONS: u64 = 5_000_000;

/// Longest a client transaction may live, from asking for its read version to its last read
/// or its commit: 5 s, FoundationDB's limit. It is the MVCC window told in time: the sequencer
/// hands out versions along a monotonic clock at 1,000,000 a second (`strata_sequencer`'s
/// `VERSIONS_PER_SECOND`), so [`MVCC_WINDOW_VERSIONS`] is five seconds of versions, and a
/// transaction older than that reads versions the storage servers have let go of and commits
/// against writes the resolvers have forgotten. A client may set a shorter limit, never a
/// longer one.
pub const TRANSACTION_LIFETIME_MAX: Duration = Duration::from_secs(5);

/// A commit version. Versions are totally ordered and advance about 1,000,000 per second of wall
/// time, so a version is also a clock.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version before any commit.
    pub const ZERO: Version = Version(0);

    /// This version moved forward by `versions`, saturating at `u64::MAX`.
    #[must_use]
    pub fn saturating_add(self, versions: u64) -> Version {
        Version(self.0.saturating_add(versions))
    }

    /// This version moved back by `versions`, saturating at zero.
    #[must_use]
    pub fn saturating_sub(self, versions: u64) -> Version {
        Version(self.0.saturating_sub(versions))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A recovery generation. Every recovery runs under a strictly larger epoch, and a stage locked
/// with an epoch refuses requests of older ones.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch that follows this one.
    #[must_use]
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// Why a [`KeyRange`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRangeError {
    /// `begin` does not sort strictly before `end`, so the range would be empty or inverted.
    #[error("key range is empty or inverted: begin {begin} is not below end {end}")]
    NotAscending {
        /// The begin key, printable.
        begin: String,
        /// The end key, printable.
        end: String,
    },
    /// The prefix is empty or made only of `0xff` bytes, so no key bounds it from above.
    #[error("prefix {prefix} has no successor key; it cannot bound a range")]
    NoPrefixSuccessor {
        /// The prefix, printable.
        prefix: String,
    },
}

/// A half-open range of keys `[begin, end)`, never empty: `begin < end` always holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRange {
    begin: Key,
    end: Key,
}

impl KeyRange {
    /// The range `[begin, end)`; fails unless `begin < end`.
    pub fn new(begin: impl Into<Key>, end: impl Into<Key>) -> Result<KeyRange, KeyRangeError> {
        let (begin, end) = (begin.into(), end.into());
        if begin < end {
            Ok(KeyRange { begin, end })
        } else {
            Err(KeyRangeError::NotAscending {
                begin: printable(&begin),
                end: printable(&end),
            })
        }
    }

    /// The range holding exactly `key`: `[key, key + "\0")`.
    pub fn single(key: impl Into<Key>) -> KeyRange {
        let begin: Key = key.into();
        let mut end = Vec::with_capacity(begin.len() + 1);
        end.extend_from_slice(&begin);
        end.push(0);
        KeyRange {
            begin,
            end: Bytes::from(end),
        }
    }

    /// The range of every key that starts with `prefix`.
    ///
    /// Fails for an empty prefix or one made only of `0xff` bytes: no key bounds those.
    pub fn prefix(prefix: impl Into<Key>) -> Result<KeyRange, KeyRangeError> {
        let begin: Key = prefix.into();
        match begin.iter().rposition(|&b| b != 0xff) {
            Some(last) => {
                let mut end = begin[..=last].to_vec();
                end[last] += 1;
                Ok(KeyRange {
                    begin,
                    end: Bytes::from(end),
                })
            }
            None => Err(KeyRangeError::NoPrefixSuccessor {
                prefix: printable(&begin),
            }),
        }
    }

    /// The first key of the range.
    pub fn begin(&self) -> &Key {
        &self.begin
    }

    /// The first key after the range.
    pub fn end(&self) -> &Key {
        &self.end
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_ref() <= key && key < self.end.as_ref()
    }

    /// Whether the two ranges share at least one key.
    pub fn intersects(&self, other: &KeyRange) -> bool {
        self.begin < other.end && other.begin < self.end
    }

    /// The keys the two ranges share, if any.
    pub fn intersection(&self, other: &KeyRange) -> Option<KeyRange> {
        let begin = self.begin.clone().max(other.begin.clone());
        let end = self.end.clone().min(other.end.clone());
        (begin < end).then_some(KeyRange { begin, end })
    }

    /// Builds a range without checking `begin < end`: only for callers that just checked it.
    pub(crate) fn from_ordered(begin: Key, end: Key) -> KeyRange {
        debug_assert!(begin < end);
        KeyRange { begin, end }
    }
}

impl fmt::Debug for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", printable(&self.begin), printable(&self.end))
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One change to the database, applied at the commit version of its transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Sets `key` to `value`.
    Set {
        /// The key written.
        key: Key,
        /// Its new value.
        value: Value,
    },
    /// Removes `key`.
    Clear {
        /// The key removed.
        key: Key,
    },
    /// Removes every key in `range`.
    ClearRange {
        /// The keys removed.
        range: KeyRange,
    },
    /// Sets `key` to `op` applied to the value it holds just before this mutation (see
    /// [`AtomicOp`]): the storage servers compute the value, so the transaction need not read
    /// the key, and concurrent atomic operations on it do not conflict.
    Atomic {
        /// The operation.
        op: AtomicOp,
        /// The key written.
        key: Key,
        /// The operand: a little-endian integer of 1 to [`VALUE_BYTES_MAX`] bytes, whose
        /// length is the length of the value written.
        operand: Value,
    },
}

impl Mutation {
    /// The keys this mutation writes, as a range.
    pub fn range(&self) -> KeyRange {
        match self {
            Mutation::Set { key, .. } | Mutation::Clear { key } | Mutation::Atomic { key, .. } => {
                KeyRange::single(key.clone())
            }
            Mutation::ClearRange { range } => range.clone(),
        }
    }
}

/// A transaction as the client built it: its reads, its conflict ranges and its writes.
///
/// A transaction that read something has a `read_version`; one without reads (a blind write)
/// may leave it `None`, and then it can never conflict. Its bytes on the wire are described in
/// [`crate::wire`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The version every read of the transaction was made at.
    pub read_version: Option<Version>,
    /// Keys read: a write committed to any of them after `read_version` is a conflict.
    pub read_conflicts: Vec<KeyRange>,
    /// Keys written: checked against the reads of later transactions.
    pub write_conflicts: Vec<KeyRange>,
    /// The writes, applied in order at the commit version.
    pub mutations: Vec<Mutation>,
}

/// The part of a transaction that conflict resolution needs, without its mutations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionConflicts {
    /// The version the transaction read at; `None` when it read nothing.
    pub read_version: Option<Version>,
    /// Keys read.
    pub read_conflicts: Vec<KeyRange>,
    /// Keys written.
    pub write_conflicts: Vec<KeyRange>,
}

impl Transaction {
    /// The conflict part of the transaction, as a resolver takes it.
    pub fn conflicts(&self) -> TransactionConflicts {
        TransactionConflicts {
            read_version: self.read_version,
            read_conflicts: self.read_conflicts.clone(),
            write_conflicts: self.write_conflicts.clone(),
        }
    }
}

/// Writes `bytes` the way FoundationDB prints keys: printable ASCII as it is, a backslash as
/// `\\`, and every other byte as `\xNN`. [`parse_printable`] reads it back.
///
/// ```
/// assert_eq!(strata_core::printable(b"\xff/system/config"), "\\xff/system/config");
/// ```
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\x");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out
}

/// Reads back what [`printable`] wrote; `None` when `text` is not in that form.
pub fn parse_printable(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b != b'\\' {
            if !(0x20..=0x7e).contains(&b) {
                return None;
            }
            out.push(b);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'x', hi, lo, tail @ ..] => {
                let digit = |c: u8| char::from(c).to_digit(16);
                let value = digit(*hi)? * 16 + digit(*lo)?;
                out.push(u8::try_from(value).ok()?);
                rest = tail;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rejects_empty_and_inverted() {
        assert!(KeyRange::new("a", "a").is_err());
        assert!(KeyRange::new("b", "a").is_err());
        assert!(KeyRange::new("a", "b").is_ok());
        assert!(KeyRange::new("", "\0").is_ok());
    }

    #[test]
    fn single_holds_exactly_one_key() {
        let r = KeyRange::single("k");
        assert!(r.contains(b"k"));
        assert!(!r.contains(b"k\0"));
        assert!(!r.contains(b"j\xff"));
    }

    #[test]
    fn prefix_bounds_every_extension() {
        let r = KeyRange::prefix(&b"a\xff"[..]).unwrap();
        assert_eq!(r.end().as_ref(), b"b");
        assert!(r.contains(b"a\xff\xff\xff"));
        assert!(!r.contains(b"a\xfe"));
        let sys = KeyRange::prefix(&b"\xff/system/"[..]).unwrap();
        assert_eq!(sys.end().as_ref(), b"\xff/system0");
        assert!(KeyRange::prefix("").is_err());
        assert!(KeyRange::prefix(&b"\xff\xff"[..]).is_err());
    }

    #[test]
    fn intersection_is_the_shared_part() {
        let a = KeyRange::new("a", "m").unwrap();
        let b = KeyRange::new("k", "z").unwrap();
        assert_eq!(a.intersection(&b), Some(KeyRange::new("k", "m").unwrap()));
        let c = KeyRange::new("m", "n").unwrap();
        assert!(!a.intersects(&c));
        assert_eq!(a.intersection(&c), None);
    }

    #[test]
    fn printable_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = printable(&all);
        assert_eq!(parse_printable(&text).unwrap(), all);
        assert_eq!(printable(b"a\\b\x00"), "a\\\\b\\x00");
        assert_eq!(parse_printable("\\x4"), None);
        assert_eq!(parse_printable("\\q"), None);
    }
}
