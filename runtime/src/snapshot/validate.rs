//! The checks a decoded snapshot body passes before anything uses it: its
//! sizes and counts are hostile until proven otherwise.

use super::{
    Body, Encoding, SnapshotError, LZ4_MAX_RATIO, MAX_MEMORIES, MAX_MEMORY_BYTES,
    MAX_TABLE_ELEMENTS, PAGE_SIZE,
};

/// Checks that there are at most [`MAX_MEMORIES`] memories, each index
/// once; that every run lies inside the image and inside its memory, that
/// runs are sorted and disjoint in the memory and no two share bytes of the
/// image; and that page hashes match the page count (format 1) or are
/// absent (format 2).
pub(super) fn validate_body(
    body: &Body,
    image_len: u64,
    version: u32,
) -> Result<(), SnapshotError> {
    if body.memories.len() > MAX_MEMORIES {
        return Err(SnapshotError::corrupt(format!(
            "{} memories, more than the {MAX_MEMORIES} a snapshot may hold",
            body.memories.len()
        )));
    }
    let mut indices: Vec<u32> = body.memories.iter().map(|m| m.index).collect();
    indices.sort_unstable();
    if let Some(w) = indices.windows(2).find(|w| w[0] == w[1]) {
        return Err(SnapshotError::corrupt(format!(
            "memory {} is described twice",
            w[0]
        )));
    }
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
    // Every run's bytes are its own: a writer appends each run's bytes to
    // the image, so runs that share bytes are made up (and would let a few
    // bytes of body claim the same image range over and over).
    let mut stored: Vec<(u64, u64)> = body
        .memories
        .iter()
        .flat_map(|m| m.runs.iter())
        .map(|r| (r.image_offset, r.image_offset.saturating_add(r.stored_len)))
        .collect();
    stored.sort_unstable();
    if stored.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(SnapshotError::corrupt("two runs share bytes of the image"));
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

#[cfg(test)]
mod tests {
    use super::super::tests::{memory_with, parts, with_body};
    use super::super::{lazy::LazySnapshot, Snapshot, MAX_MEMORIES};

    /// A body that describes a memory twice, more memories than an app can
    /// have, or two runs over the same bytes of the image is refused,
    /// whole and lazily, before any page of it is laid out.
    #[test]
    fn memories_are_few_and_distinct_and_runs_own_their_bytes() {
        let mem = memory_with(16, &[(1, 9), (3, 7), (9, 1)]);
        let snap = Snapshot::encode(parts(&mem, false, vec![]));
        assert!(snap.body.memories[0].runs.len() >= 2);
        let twice = {
            let mut b = snap.body.clone();
            let mut other = b.memories[0].clone();
            other.runs.clear();
            b.memories.push(other);
            b
        };
        let many = {
            let mut b = snap.body.clone();
            for i in 1..=MAX_MEMORIES as u32 {
                let mut m = b.memories[0].clone();
                m.index = i;
                m.runs.clear();
                b.memories.push(m);
            }
            b
        };
        let shared = {
            let mut b = snap.body.clone();
            let first = b.memories[0].runs[0].clone();
            let r = &mut b.memories[0].runs[1];
            r.image_offset = first.image_offset;
            r.stored_len = first.stored_len;
            r.pages = first.pages;
            b
        };
        for (what, body, why) in [
            ("a memory twice", twice, "described twice"),
            ("too many memories", many, "more than the"),
            ("runs sharing bytes", shared, "share bytes"),
        ] {
            let bytes = with_body(&snap, &body);
            let whole = Snapshot::from_bytes(bytes.clone()).expect_err(what);
            assert!(whole.to_string().contains(why), "{what}: {whole}");
            let lazily =
                LazySnapshot::new(&bytes, &bytes[snap_body_range(&bytes)], bytes.len() as u64);
            assert!(lazily.is_err(), "{what}: read lazily");
        }
        // The body as written passes.
        Snapshot::from_bytes(with_body(&snap, &snap.body)).unwrap();
    }

    /// Where the header says the body is.
    fn snap_body_range(bytes: &[u8]) -> std::ops::Range<usize> {
        let at = |k: usize| u64::from_le_bytes(bytes[k..k + 8].try_into().unwrap()) as usize;
        at(32)..bytes.len()
    }
}
