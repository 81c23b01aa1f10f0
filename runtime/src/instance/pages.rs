//! Memory by pages and bytes: where each linear memory lives (for dirty-page
//! tracking), the 4 KiB pages a live migration reads, encodes and writes,
//! and the byte access to memory 0 the guest ABI uses.

use super::{Instance, WASM_PAGE};
use crate::error::{Error, Result};
use crate::memory;
use crate::rewrite::RESERVED_PREFIX;
use crate::snapshot::{Snapshot, PAGE_SIZE};

/// Where one linear memory lives (for dirty-page tracking).
#[derive(Debug, Clone, Copy)]
pub struct MemoryRegion {
    pub index: u32,
    pub base: *mut u8,
    pub size: usize,
    /// The whole reservation (the memory can grow up to it).
    pub reserved: usize,
}

impl Instance {
    /// Where each memory lives, for dirty-page tracking.
    pub fn memory_regions(&mut self) -> Result<Vec<MemoryRegion>> {
        let mut out = Vec::new();
        for (i, m) in self.memories()?.into_iter().enumerate() {
            let base = m.data_ptr(&self.store);
            let size = m.data_size(&self.store);
            let reserved = memory::reservation_of(base).unwrap_or(size);
            out.push(MemoryRegion {
                index: self.module.info.memories[i],
                base,
                size,
                reserved,
            });
        }
        Ok(out)
    }

    /// Direct access to a memory's bytes (for dirty-page tracking).
    pub fn memory_data(&mut self, index: usize) -> Option<&[u8]> {
        let name = format!(
            "{RESERVED_PREFIX}memory_{}",
            self.module.info.memories.get(index)?
        );
        let m = self.instance.get_memory(&mut self.store, &name)?;
        Some(m.data(&self.store))
    }

    /// Reads the given 4 KiB pages of a memory into a chunk.
    pub fn read_pages(&mut self, memory: u32, pages: &[u64]) -> Result<crate::snapshot::PageChunk> {
        let m = self.memory_by_index(memory)?;
        let data = m.data(&self.store);
        let mut out = Vec::with_capacity(pages.len() * PAGE_SIZE);
        let mut kept = Vec::with_capacity(pages.len());
        for &p in pages {
            let start = p as usize * PAGE_SIZE;
            if start + PAGE_SIZE <= data.len() {
                out.extend_from_slice(&data[start..start + PAGE_SIZE]);
                kept.push(p);
            }
        }
        Ok(crate::snapshot::PageChunk {
            memory,
            byte_size: data.len() as u64,
            pages: kept,
            data: out,
        })
    }

    /// The pages of `[first, end)` of a memory that are not all zero (a
    /// range past the memory's end is cut short), encoded as a page slice
    /// straight from the memory (see [`crate::snapshot::PageStream`]).
    pub fn encode_nonzero_pages(
        &mut self,
        memory: u32,
        first: u64,
        end: u64,
    ) -> Result<crate::snapshot::EncodedSlice> {
        let m = self.memory_by_index(memory)?;
        Ok(crate::snapshot::encode_nonzero(
            memory,
            m.data(&self.store),
            first,
            end,
        ))
    }

    /// The listed pages of a memory (ascending), zero or not, encoded as a
    /// page slice straight from the memory: a slice of a pre-copy round.
    pub fn encode_listed_pages(
        &mut self,
        memory: u32,
        pages: &[u64],
    ) -> Result<crate::snapshot::EncodedSlice> {
        let m = self.memory_by_index(memory)?;
        Ok(crate::snapshot::encode_listed(
            memory,
            m.data(&self.store),
            pages,
        ))
    }

    /// Writes the next bytes of a page slice into this instance's memory
    /// (see [`crate::snapshot::PageStream`]: the instance must not run
    /// until the stream's `finish` says the slice checked out).
    pub fn receive_slice(
        &mut self,
        stream: &mut crate::snapshot::PageStream,
        bytes: &[u8],
    ) -> std::result::Result<(), crate::snapshot::SnapshotError> {
        stream.feed(bytes, &mut Sink(self))
    }

    /// Every page of a memory whose content differs from a checkpoint's,
    /// compared byte for byte with the checkpoint's stored pages (pages it
    /// did not store are zero; pages past its memory's size too).
    pub fn pages_differing_from(
        &mut self,
        checkpoint: &Snapshot,
    ) -> Result<Vec<crate::snapshot::PageChunk>> {
        let mut chunks = Vec::new();
        for ms in &checkpoint.body.memories {
            let m = self.memory_by_index(ms.index)?;
            let data = m.data(&self.store);
            let pages = data.len() / PAGE_SIZE;
            let page = |p: usize| &data[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
            let mut differing: Vec<u64> = Vec::new();
            let zero_from = |from: usize, to: usize, out: &mut Vec<u64>| {
                out.extend(
                    (from..to)
                        .filter(|&p| !crate::snapshot::is_zero_page(page(p)))
                        .map(|p| p as u64),
                );
            };
            // Runs are sorted and disjoint (checked when the checkpoint was
            // decoded); `next` is the first page not compared yet.
            let mut next = 0usize;
            for run in &ms.runs {
                let stored = checkpoint
                    .run_data(run)
                    .map_err(|e| Error::Other(format!("the checkpoint does not read: {e}")))?;
                let first = (run.first_page as usize).min(pages);
                let end = (run.first_page as usize)
                    .saturating_add(run.pages as usize)
                    .min(pages);
                zero_from(next.min(first), first, &mut differing);
                for p in first..end {
                    let k = p - run.first_page as usize;
                    if page(p) != &stored[k * PAGE_SIZE..(k + 1) * PAGE_SIZE] {
                        differing.push(p as u64);
                    }
                }
                next = next.max(end);
            }
            zero_from(next, pages, &mut differing);
            chunks.push(self.read_pages(ms.index, &differing)?);
        }
        Ok(chunks)
    }

    /// Writes a chunk's pages (growing the memory to the chunk's size first).
    pub fn apply_chunk(&mut self, chunk: &crate::snapshot::PageChunk) -> Result<()> {
        self.apply_pages(chunk.memory, chunk.byte_size, &chunk.pages, &chunk.data)
    }

    fn apply_pages(
        &mut self,
        memory: u32,
        byte_size: u64,
        pages: &[u64],
        bytes: &[u8],
    ) -> Result<()> {
        let m = self.memory_by_index(memory)?;
        let cur = m.data_size(&self.store) as u64;
        if byte_size > cur {
            m.grow(&mut self.store, (byte_size - cur) / WASM_PAGE)
                .map_err(|e| {
                    Error::MemoryLimit(format!(
                        "cannot grow memory {memory} to {byte_size} bytes: {e}"
                    ))
                })?;
        }
        let data = m.data_mut(&mut self.store);
        for (k, &p) in pages.iter().enumerate() {
            let start = p as usize * PAGE_SIZE;
            data[start..start + PAGE_SIZE]
                .copy_from_slice(&bytes[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]);
        }
        Ok(())
    }

    /// Copies bytes into memory 0 (for the guest ABI).
    pub fn write_memory(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let m = self.memory_by_index(0)?;
        let data = m.data_mut(&mut self.store);
        let start = offset as usize;
        let end = start
            .checked_add(bytes.len())
            .filter(|&e| e <= data.len())
            .ok_or_else(|| Error::Other("write outside memory".into()))?;
        data[start..end].copy_from_slice(bytes);
        Ok(())
    }

    /// Copies bytes out of memory 0 (for the guest ABI).
    pub fn read_memory(&mut self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let m = self.memory_by_index(0)?;
        let data = m.data(&self.store);
        let start = offset as usize;
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| Error::Other("read outside memory".into()))?;
        Ok(data[start..end].to_vec())
    }
}

/// An instance's memories as a page slice's destination.
struct Sink<'a>(&'a mut Instance);

impl crate::snapshot::PageSink for Sink<'_> {
    fn prepare(
        &mut self,
        memory: u32,
        byte_size: u64,
        _pages: usize,
    ) -> std::result::Result<(), String> {
        let inst = &mut *self.0;
        let m = inst.memory_by_index(memory).map_err(|e| e.to_string())?;
        let cur = m.data_size(&inst.store) as u64;
        if byte_size > cur {
            m.grow(&mut inst.store, (byte_size - cur).div_ceil(WASM_PAGE))
                .map_err(|e| format!("cannot grow memory {memory} to {byte_size} bytes: {e}"))?;
        }
        Ok(())
    }

    fn memory(&mut self, memory: u32) -> &mut [u8] {
        let inst = &mut *self.0;
        match inst.memory_by_index(memory) {
            Ok(m) => m.data_mut(&mut inst.store),
            Err(_) => &mut [],
        }
    }
}
