//! Post-copy moves: the app stops on the source, only its state without
//! pages and the list of pages the target lacks move (`PostcopyFrame`), and
//! it resumes on the target at once. Its pages follow two ways at the same
//! time: the target's fault handler asks for a page (and neighbours) the
//! first time the app touches it (`target.rs`, the fetch loop), and the
//! source pushes every page in the background (`source.rs`). The source
//! keeps the frozen instance until every page is delivered, then drops it.
//!
//! While pages are still on the source the app depends on two nodes:
//! - the source is lost (its answers stop): the target's pager fails, the
//!   instance with its incomplete memory is dropped, and the app restarts
//!   on the target from its last checkpoint (whole, one generation; never
//!   a mix of it and the pages that did arrive), or is failed if it has
//!   none; its status says which. The target keeps a watch request on the
//!   source (`GET /v1/postcopy/APP/watch`) whose connection breaks the
//!   moment the source dies: from then the app's calls are held, not
//!   acknowledged, until the source answers again (a cut link) or the
//!   restart (they run on the restored instance); a write acknowledged on
//!   the pages the target had would otherwise be lost by the restart;
//! - the target is lost (pushes cannot reach it, or it no longer knows the
//!   move): the source still holds the whole state at the switch and
//!   resumes the app there; the move fails saying so. What the app did on
//!   the target since the switch is lost with the target.
//!
//! Where the target cannot page (no userfaultfd, or post-copy turned off),
//! it says so when the move opens and the move goes hot (`note` in the
//! report).
//!
//! Endpoints: `POST /v1/migrations/ID/postcopy` (the switch, on the
//! target), `POST /v1/postcopy/APP/pages` and `/done` (pushes, on the
//! target), `POST /v1/postcopy/APP/fetch?memory=N` and `GET
//! /v1/postcopy/APP/watch` (requests, on the source). The bytes are `tern_runtime::snapshot`'s.

mod source;
mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_runtime::instance::Instance;
use tern_runtime::postcopy::Pager;

pub(crate) use source::{serve_fetch, serve_watch};
pub(crate) use target::{receive_done, receive_push, receive_push_slice, receive_switch};

use crate::node::{lock, Node};

/// Pages per push (4 MiB).
const PUSH_PAGES: usize = 1024;
/// Pushes on the wire at once.
const PUSHES_IN_FLIGHT: usize = 4;
/// About the most pages a push may carry (four times what a source
/// sends).
const MAX_PUSH_PAGES: u64 = 4 * PUSH_PAGES as u64;
/// The most bytes a push may be: [`MAX_PUSH_PAGES`] pages with their
/// indices, head and sums (either format). A push whose head claims more
/// is refused before anything is staged for it, so a peer cannot make this
/// node map and fill gigabytes for one request.
pub(crate) const MAX_PUSH_BYTES: u64 =
    MAX_PUSH_PAGES * (tern_runtime::snapshot::PAGE_SIZE as u64 + 64) + 4096;
/// Pushes of one move whose bytes may fail their check on arrival (a link
/// that damages them; TLS would have cut the connection instead) before
/// the target gives the move up: each is answered 422 and sent again by
/// the source, which drops nothing; the last is answered 409, the app
/// restarts on the target from its checkpoint, and the source drops its
/// copy. A source never sends one push more often than this, and a
/// target asks for pages as often at most when their answer arrives
/// damaged.
const MAX_REJECTED_PUSHES: u32 = 8;
/// Pages asked for with each faulting page (itself included): a fault
/// usually means its neighbours are next.
const FETCH_PAGES: usize = 16;

/// Why post-copy moves cannot arrive here, if they cannot.
pub(crate) fn unavailable(node: &Node) -> Option<String> {
    if !node.config.postcopy {
        return Some("post-copy is turned off on this node".into());
    }
    tern_runtime::postcopy::available().err()
}

/// A post-copy arriving here: the pager of the app's instance.
pub(crate) struct Incoming {
    pub pager: Arc<Pager>,
    /// The move (its app, generation, checkpoint to restart from).
    pub session: Arc<crate::migrate::target::TargetSession>,
    /// The last page that came from the source (pushed or fetched).
    pub last_progress: Mutex<Instant>,
    /// When the move arrived.
    pub opened: Instant,
    /// The source was given up (once: the app restarts from its
    /// checkpoint). Holding and running the app's calls happen under it.
    pub given_up: Mutex<bool>,
    /// Pushes refused so far because their bytes did not check out.
    pub rejected: std::sync::atomic::AtomicU32,
}

impl Incoming {
    pub(crate) fn new(
        pager: Arc<Pager>,
        session: Arc<crate::migrate::target::TargetSession>,
    ) -> Incoming {
        Incoming {
            pager,
            session,
            last_progress: Mutex::new(Instant::now()),
            opened: Instant::now(),
            given_up: Mutex::new(false),
            rejected: 0.into(),
        }
    }

    fn touch(&self) {
        *lock(&self.last_progress) = Instant::now();
    }

    /// The source may be gone (its watch or a fetch broke): the app's calls
    /// are held, not acknowledged, until it answers again or is given up.
    fn doubt(&self, node: &Node, app: &str, generation: u64, why: &str) {
        let _g = lock(&self.given_up);
        // Every page is in: the app no longer depends on the source.
        if self.pager.is_finished() && self.pager.failure().is_none() {
            return;
        }
        if let Some(h) = node
            .local(app)
            .filter(|h| h.spec().generation == generation)
        {
            h.hold_calls(&format!(
                "the post-copy source, which holds some of its pages, does not answer ({why})"
            ));
        }
    }

    /// The source answered: the calls held meanwhile run.
    fn trust(&self, node: &Node, app: &str, generation: u64) {
        let g = lock(&self.given_up);
        if *g {
            return;
        }
        if let Some(h) = node
            .local(app)
            .filter(|h| h.spec().generation == generation)
        {
            h.unhold_calls();
        }
    }

    /// Gives the source up, once: `false` if it already was. The app's
    /// calls are held until it restarts from its checkpoint.
    fn give_up(&self, node: &Node, app: &str, generation: u64) -> bool {
        let mut g = lock(&self.given_up);
        if std::mem::replace(&mut *g, true) {
            return false;
        }
        if let Some(h) = node
            .local(app)
            .filter(|h| h.spec().generation == generation)
        {
            h.hold_calls("the post-copy source was lost: the app restarts from its checkpoint");
        }
        true
    }
}

/// A post-copy leaving here: the frozen instance whose pages are still
/// to be delivered.
pub(crate) struct Outgoing {
    /// `None` until the source holds the frozen instance here (the target
    /// may ask for pages the moment it has the switch frame), and again
    /// once the move ended.
    pub inst: Mutex<Option<Instance>>,
    /// `true` once `inst` was filled: a fetch that arrives before waits.
    pub ready: tokio::sync::watch::Sender<bool>,
    /// The target node's name (the only peer that may fetch).
    pub to: String,
    pub bytes_served: std::sync::atomic::AtomicU64,
    pub pages_served: std::sync::atomic::AtomicU64,
}

impl Outgoing {
    /// A post-copy to node `to`, its frozen instance not handed over yet.
    pub(crate) fn new(to: &str) -> Outgoing {
        Outgoing {
            inst: Mutex::new(None),
            ready: tokio::sync::watch::channel(false).0,
            to: to.to_string(),
            bytes_served: 0.into(),
            pages_served: 0.into(),
        }
    }

    /// Counts a chunk of pages served to the target on its demand.
    pub(crate) fn served(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.bytes_served.fetch_add(bytes as u64, Relaxed);
        self.pages_served.fetch_add((bytes / 4096) as u64, Relaxed);
    }
}

/// The post-copy moves under way on a node, by app.
#[derive(Default)]
pub(crate) struct Registry {
    incoming: Mutex<HashMap<String, Arc<Incoming>>>,
    outgoing: Mutex<HashMap<String, Arc<Outgoing>>>,
}

impl Registry {
    /// Whether `peer` is the target of a post-copy of `app` leaving here.
    pub(crate) fn is_target(&self, peer: &str, app: &str) -> bool {
        lock(&self.outgoing).get(app).is_some_and(|o| o.to == peer)
    }

    /// Closes the page service of a post-copy of `app` leaving here whose
    /// switch did not happen.
    pub(crate) fn close_outgoing(&self, app: &str) {
        lock(&self.outgoing).remove(app);
    }
}

#[cfg(test)]
mod tests {
    use tern_runtime::postcopy::PushReceiver;
    use tern_runtime::snapshot::{encode_listed, PAGE_SIZE};

    use super::{MAX_PUSH_BYTES, MAX_PUSH_PAGES, PUSH_PAGES};

    /// A push as large as a source sends is taken; one whose head claims
    /// twice the pages a push may carry is refused on its head alone,
    /// before a byte of its pages comes or anything is staged.
    #[test]
    fn a_push_is_bounded_by_what_a_source_sends() {
        let pages = 2 * MAX_PUSH_PAGES as usize;
        let mem = vec![7u8; pages * PAGE_SIZE];
        let fits: Vec<u64> = (0..PUSH_PAGES as u64).collect();
        let slice = encode_listed(0, &mem, &fits);
        let mut push = PushReceiver::new(MAX_PUSH_BYTES);
        push.feed(slice.bytes()).unwrap();
        assert_eq!(push.finish().unwrap().pages(), PUSH_PAGES);

        let all: Vec<u64> = (0..pages as u64).collect();
        let slice = encode_listed(0, &mem, &all);
        let head = 8 * pages + 64;
        let mut push = PushReceiver::new(MAX_PUSH_BYTES);
        let refused = push.feed(&slice.bytes()[..head]).unwrap_err();
        assert!(
            refused.to_string().contains("a slice can hold"),
            "{refused}"
        );
    }
}
