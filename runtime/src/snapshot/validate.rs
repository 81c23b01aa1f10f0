//! The checks a decoded snapshot body passes before anything uses it: its
//! sizes and counts are hostile until proven otherwise.

use super::{
    Body, Encoding, SnapshotError, LZ4_MAX_RATIO, MAX_MEMORY_BYTES, MAX_TABLE_ELEMENTS, PAGE_SIZE,
};

/// Checks that every run lies inside the image and inside its memory, that
/// runs are sorted and disjoint, and that page hashes match the page count
/// (format 1) or are absent (format 2).
pub(super) fn validate_body(
    body: &Body,
    image_len: u64,
    version: u32,
) -> Result<(), SnapshotError> {
    let mut table_elements = 0u64;
    for t in &body.tables {
        table_elements += u64::from(t.size);
        if table_elements > MAX_TABLE_ELEMENTS {
            return Err(SnapshotError::corrupt(format!(
                "tables hold more than {MAX_TABLE_ELEMENTS} elements in all"
            )));
        }
    }
    for mem in &body.memories {
        if mem.byte_size > MAX_MEMORY_BYTES {
            return Err(SnapshotError::corrupt(format!(
                "memory {} is {} bytes, more than the {MAX_MEMORY_BYTES} a memory can hold",
                mem.index, mem.byte_size
            )));
        }
        if mem.byte_size % (64 * 1024) != 0 {
            return Err(SnapshotError::corrupt(format!(
                "memory {} size {} is not a whole number of Wasm pages",
                mem.index, mem.byte_size
            )));
        }
        let mem_pages = mem.byte_size / PAGE_SIZE as u64;
        let mut next_free = 0u64;
        let mut total = 0u64;
        for run in &mem.runs {
            let end = run
                .first_page
                .checked_add(run.pages)
                .ok_or_else(|| SnapshotError::corrupt("run length overflows"))?;
            if run.pages == 0 || run.first_page < next_free || end > mem_pages {
                return Err(SnapshotError::corrupt(format!(
                    "memory {} run at page {} (+{}) overlaps another or lies outside the memory ({} pages)",
                    mem.index, run.first_page, run.pages, mem_pages
                )));
            }
            next_free = end;
            let stored_end = run
                .image_offset
                .checked_add(run.stored_len)
                .ok_or_else(|| SnapshotError::corrupt("run offset overflows"))?;
            if stored_end > image_len {
                return Err(SnapshotError::corrupt(format!(
                    "memory {} run at page {} lies outside the image",
                    mem.index, run.first_page
                )));
            }
            if run.encoding == Encoding::Raw
                && (run.stored_len != run.pages * PAGE_SIZE as u64
                    || run.image_offset % PAGE_SIZE as u64 != 0)
            {
                return Err(SnapshotError::corrupt(format!(
                    "memory {} raw run at page {} has a wrong length or alignment",
                    mem.index, run.first_page
                )));
            }
            if run.encoding == Encoding::Lz4
                && run.pages * PAGE_SIZE as u64 > run.stored_len.saturating_mul(LZ4_MAX_RATIO)
            {
                return Err(SnapshotError::corrupt(format!(
                    "memory {} compressed run at page {} declares {} pages, more than its {} bytes can hold",
                    mem.index, run.first_page, run.pages, run.stored_len
                )));
            }
            total += run.pages;
        }
        if version >= 2 && !mem.page_hashes.is_empty() {
            return Err(SnapshotError::corrupt(format!(
                "memory {} has page hashes, which format {version} does not store",
                mem.index
            )));
        }
        if version < 2 && total != mem.page_hashes.len() as u64 {
            return Err(SnapshotError::corrupt(format!(
                "memory {} has {} page hashes for {} stored pages",
                mem.index,
                mem.page_hashes.len(),
                total
            )));
        }
    }
    for t in &body.tables {
        for (start, elems) in &t.runs {
            if (*start as u64 + elems.len() as u64) > t.size as u64 {
                return Err(SnapshotError::corrupt(format!(
                    "table {} elements lie outside its size {}",
                    t.index, t.size
                )));
            }
        }
    }
    Ok(())
}
