//! Post-copy on both sides of a move: on the source, which pages the
//! target will lack and the answers to its page requests; on the target,
//! the pager that brings those pages in on first touch (see
//! [`crate::postcopy`]), and the rule that an instance whose pager failed
//! takes no more calls and no captures.

use std::sync::Arc;

use super::Instance;
use crate::error::{Error, Result};
use crate::memory;
use crate::postcopy::{PagedMemory, Pager, WantFn};
use crate::snapshot::{EncodedSlice, PageChunk, PageRequest, RemotePages, PAGE_SIZE};

impl Instance {
    /// The pages of each memory a post-copy target must fetch: the ones
    /// ever touched here (for an anonymous memory, residency says which;
    /// untouched ones are zero), else every page.
    pub fn postcopy_remote(&mut self) -> Result<Vec<RemotePages>> {
        let mut out = Vec::new();
        for (i, m) in self.memories()?.into_iter().enumerate() {
            let data = m.data(&self.store);
            let pages = (data.len() / PAGE_SIZE) as u64;
            let resident = if self.anonymous.get(i).copied().unwrap_or(false) {
                memory::residency(data.as_ptr(), data.len())
            } else {
                None
            };
            let index = self.module.info.memories[i];
            out.push(match resident {
                Some(r) => RemotePages::from_fn(index, data.len() as u64, pages, |p| {
                    r[p as usize] & 1 != 0
                }),
                None => RemotePages::from_fn(index, data.len() as u64, pages, |_| true),
            });
        }
        Ok(out)
    }

    /// Answers a target's page request (untrusted bytes, checked against
    /// the memory's size) with a page chunk of the pages asked for.
    pub fn serve_page_request(&mut self, memory: u32, body: &[u8]) -> Result<Vec<u8>> {
        let m = self.memory_by_index(memory)?;
        let data = m.data(&self.store);
        let req = PageRequest::decode(body, (data.len() / PAGE_SIZE) as u64)?;
        if req.memory != memory {
            return Err(Error::Other(format!(
                "page request for memory {}, sent for memory {memory}",
                req.memory
            )));
        }
        Ok(PageChunk::encode_from(memory, data, &req.pages))
    }

    /// Some pages of a memory encoded as a page slice (what a post-copy
    /// source pushes: the target receives it with a
    /// [`PushReceiver`](crate::postcopy::PushReceiver)); pages past the
    /// memory's end, unsorted or listed twice, are refused.
    pub fn encode_push(&mut self, memory: u32, pages: &[u64]) -> Result<EncodedSlice> {
        let m = self.memory_by_index(memory)?;
        let data = m.data(&self.store);
        let end = (data.len() / PAGE_SIZE) as u64;
        if pages.windows(2).any(|w| w[0] >= w[1]) || pages.last().is_some_and(|&p| p >= end) {
            return Err(Error::Other(format!(
                "pages to encode are unsorted or past the end of memory {memory}"
            )));
        }
        Ok(crate::snapshot::encode_listed(memory, data, pages))
    }

    /// Makes this (freshly restored, state-only) instance a post-copy
    /// target: its memories' contents are discarded and every page is
    /// brought in on first touch, from the source (`want`) for the
    /// `remote` pages, zero for the others. The app's interrupt handle is
    /// the pager's way to stop it if the source is lost.
    pub fn start_postcopy(&mut self, remote: &[RemotePages], want: WantFn) -> Result<Arc<Pager>> {
        if self.pager.is_some() {
            return Err(Error::Other("post-copy is already under way".into()));
        }
        let mut mems = Vec::new();
        for r in self.memory_regions()? {
            if let Some(rp) = remote.iter().find(|x| x.memory == r.index) {
                if rp.byte_size != r.size as u64 {
                    return Err(Error::Incompatible(format!(
                        "memory {} is {} bytes here but {} on the source",
                        r.index, r.size, rp.byte_size
                    )));
                }
            }
            mems.push(PagedMemory {
                index: r.index,
                base: r.base as u64,
                reserved: r.reserved as u64,
                size: r.size as u64,
            });
        }
        let interrupt = self.store.data().interrupt.clone();
        let pager = Pager::start(mems, remote, interrupt, want)
            .map_err(|e| Error::io("cannot start post-copy paging", e))?;
        // Residency says nothing about pages not fetched yet.
        self.anonymous.iter_mut().for_each(|a| *a = false);
        self.pager = Some(pager.clone());
        Ok(pager)
    }

    /// The pager of a post-copy still under way (`None` once done).
    pub fn pager(&self) -> Option<&Arc<Pager>> {
        self.pager.as_ref()
    }

    /// Refuses to go on once post-copy failed: the memory is incomplete.
    pub(crate) fn check_postcopy(&mut self) -> Result<()> {
        let Some(p) = &self.pager else {
            return Ok(());
        };
        if let Some(why) = p.failure() {
            self.torn = true;
            return Err(Error::PostcopyLost(why));
        }
        if p.is_finished() {
            self.pager = None;
        }
        Ok(())
    }
}
