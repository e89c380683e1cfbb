//! A redb backend that reads a file and never writes it: redb's own writes go to memory.
//!
//! Opening a redb database writes to its file even when the caller only reads: the repair
//! after a crash, the integrity check's allocator state, the commit that closes it. Recovery
//! reads a storage server's durable version before it has decided anything, and `strata
//! check` must change nothing, so both read through this backend: the file is opened
//! read-only, and every byte redb writes is kept in memory pages over it, gone when the
//! database is dropped. Memory use is what redb writes (a few pages for a repair), not the
//! file's size.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};

/// The granularity of the in-memory copy of written bytes.
const PAGE_BYTES: u64 = 4096;

#[derive(Debug)]
struct Pages {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file below this offset are the file's; above it they read as zeros (redb
    /// shrank the storage at some point, and what it grows again must start zeroed).
    file_valid: u64,
    /// Every page redb wrote, whole.
    written: HashMap<u64, Vec<u8>>,
}

/// The part of one page that an access of `len` bytes at an offset covers.
struct Span {
    /// The page.
    index: u64,
    /// Where in the page the part starts.
    within: usize,
    /// How many bytes of the page it covers.
    take: usize,
    /// How many bytes of the access come before it.
    done: usize,
}

/// The pages an access of `len` bytes at `offset` covers, in order; an access past `limit`
/// (the storage's length) is an error, as for a file.
fn spans(offset: u64, len: usize, limit: u64) -> io::Result<Vec<Span>> {
    let end = offset
        .checked_add(len as u64)
        .filter(|&end| end <= limit)
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        let take = (PAGE_BYTES - at % PAGE_BYTES).min(end - at);
        out.push(Span {
            index: at / PAGE_BYTES,
            within: (at % PAGE_BYTES) as usize,
            take: take as usize,
            done: (at - offset) as usize,
        });
        at += take;
    }
    Ok(out)
}

/// A read-only view of a file with a private, in-memory layer for writes. See the module docs.
#[derive(Debug)]
pub(crate) struct ReadOnlyOverlay {
    file: File,
    pages: Mutex<Pages>,
}

fn poisoned() -> io::Error {
    io::Error::other("overlay poisoned by a panic")
}

impl ReadOnlyOverlay {
    /// A view of `file`, opened for reading.
    pub(crate) fn new(file: File) -> io::Result<ReadOnlyOverlay> {
        let len = file.metadata()?.len();
        Ok(ReadOnlyOverlay {
            file,
            pages: Mutex::new(Pages {
                len,
                file_valid: len,
                written: HashMap::new(),
            }),
        })
    }

    fn pages(&self) -> io::Result<MutexGuard<'_, Pages>> {
        self.pages.lock().map_err(|_| poisoned())
    }

    /// Page `index` as redb last saw it: written in memory, or read from the file (zeros past
    /// what of the file is still valid).
    fn page(&self, pages: &Pages, index: u64) -> io::Result<Vec<u8>> {
        if let Some(page) = pages.written.get(&index) {
            return Ok(page.clone());
        }
        let mut page = vec![0u8; PAGE_BYTES as usize];
        let start = index * PAGE_BYTES;
        if start < pages.file_valid {
            let from_file = (pages.file_valid - start).min(PAGE_BYTES) as usize;
            self.file.read_exact_at(&mut page[..from_file], start)?;
        }
        Ok(page)
    }
}

impl redb::StorageBackend for ReadOnlyOverlay {
    fn len(&self) -> io::Result<u64> {
        Ok(self.pages()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let pages = self.pages()?;
        for span in spans(offset, out.len(), pages.len)? {
            let page = self.page(&pages, span.index)?;
            out[span.done..span.done + span.take]
                .copy_from_slice(&page[span.within..span.within + span.take]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pages = self.pages()?;
        if len < pages.len {
            pages.file_valid = pages.file_valid.min(len);
            pages.written.retain(|&index, _| index * PAGE_BYTES < len);
            // The page the new end falls in keeps only what is below the end.
            let index = len / PAGE_BYTES;
            let cut = (len % PAGE_BYTES) as usize;
            if let Some(page) = pages.written.get_mut(&index) {
                page[cut..].fill(0);
            }
        }
        pages.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut pages = self.pages()?;
        for span in spans(offset, data.len(), pages.len)? {
            let mut page = self.page(&pages, span.index)?;
            page[span.within..span.within + span.take]
                .copy_from_slice(&data[span.done..span.done + span.take]);
            pages.written.insert(span.index, page);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use redb::StorageBackend;

    use super::*;

    fn overlay(bytes: &[u8]) -> (tempfile::NamedTempFile, ReadOnlyOverlay) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        let view = ReadOnlyOverlay::new(File::open(file.path()).unwrap()).unwrap();
        (file, view)
    }

    fn read(view: &ReadOnlyOverlay, offset: u64, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        view.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_file_and_writes_only_memory() {
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (file, view) = overlay(&original);
        assert_eq!(read(&view, 0, 10_000), original);
        // A write across a page boundary is seen by reads, and the file is untouched.
        view.write(4090, &[7; 20]).unwrap();
        let mut expected = original.clone();
        expected[4090..4110].fill(7);
        assert_eq!(read(&view, 0, 10_000), expected);
        assert_eq!(std::fs::read(file.path()).unwrap(), original);
        // Past the end is an error, as for a file.
        assert!(view.read(9_990, &mut [0; 20]).is_err());
        assert!(view.write(9_990, &[0; 20]).is_err());
    }

    #[test]
    fn shrinking_then_growing_reads_zeros_not_the_old_bytes() {
        let original = vec![9u8; 10_000];
        let (file, view) = overlay(&original);
        view.write(5_000, &[1; 10]).unwrap();
        view.set_len(4_100).unwrap();
        view.set_len(12_000).unwrap();
        let now = read(&view, 0, 12_000);
        assert_eq!(&now[..4_100], &original[..4_100]);
        assert!(
            now[4_100..].iter().all(|&b| b == 0),
            "grown bytes start zeroed"
        );
        assert_eq!(view.len().unwrap(), 12_000);
        assert_eq!(std::fs::read(file.path()).unwrap(), original);
    }
}
