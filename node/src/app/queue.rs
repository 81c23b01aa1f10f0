//! The bound on an app's calls waiting for its actor: at most
//! [`MAX_QUEUED_CALLS`] calls and [`MAX_QUEUED_BYTES`] of their request
//! bodies are queued or held (during a move's pause) at once; past that a
//! call is answered at once with 503 and `Retry-After`, so clients that
//! outrun an app cannot grow a node's memory without bound.
//!
//! A call takes a [`Ticket`] when it is queued and gives it back when it
//! is answered, dropped, or replayed elsewhere: the ticket lives in the
//! call's [`Reply`], so every path that ends a call ends its ticket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::lease::Lease;

/// Calls queued or held per app, at most.
pub(crate) const MAX_QUEUED_CALLS: u64 = 256;
/// Request bytes queued or held per app, at most.
pub(crate) const MAX_QUEUED_BYTES: u64 = 64 << 20;
/// What a refused call is told to wait before it tries again, in seconds.
pub(crate) const RETRY_AFTER_SECS: u64 = 1;

/// The counts of one app's queue.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    calls: AtomicU64,
    bytes: AtomicU64,
}

impl Queue {
    /// A place in the queue for a call carrying `bytes`, if there is one.
    pub(crate) fn admit(self: &Arc<Self>, bytes: u64) -> Option<Ticket> {
        let calls = self.calls.fetch_add(1, Ordering::AcqRel) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let ticket = Ticket {
            queue: self.clone(),
            bytes,
        };
        if calls > MAX_QUEUED_CALLS || total > MAX_QUEUED_BYTES {
            // Dropping the ticket gives the place back.
            return None;
        }
        Some(ticket)
    }

    /// Calls queued or held now.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Acquire)
    }
}

/// A call's place in its app's queue, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    queue: Arc<Queue>,
    bytes: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.calls.fetch_sub(1, Ordering::AcqRel);
        self.queue.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Where a call's answer goes, holding its place in the queue.
#[derive(Debug)]
pub(crate) struct Reply<T> {
    tx: oneshot::Sender<T>,
    _ticket: Ticket,
    /// The node's lease the call was admitted under: checked again when
    /// the call's turn comes.
    lease: Arc<Lease>,
}

impl<T> Reply<T> {
    pub(crate) fn new(tx: oneshot::Sender<T>, ticket: Ticket, lease: Arc<Lease>) -> Reply<T> {
        Reply {
            tx,
            _ticket: ticket,
            lease,
        }
    }

    /// Why the call must not run now: the node's lease ran out while it
    /// waited (behind a long call, or held during a move's pause), and
    /// another copy of the app may be starting elsewhere.
    pub(crate) fn lapsed(&self) -> Option<String> {
        self.lease.check().err()
    }

    /// Answers the call (its caller may have gone: then nobody hears).
    pub(crate) fn send(self, value: T) {
        let _ = self.tx.send(value);
    }

    /// Whether the caller has gone away (its connection closed): a call
    /// nobody waits for is not run.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_in_calls_and_bytes_and_gives_places_back() {
        let q = Arc::new(Queue::default());
        let tickets: Vec<Ticket> = (0..MAX_QUEUED_CALLS).map(|_| q.admit(1).unwrap()).collect();
        assert!(q.admit(0).is_none(), "one call past the bound");
        assert_eq!(q.calls(), MAX_QUEUED_CALLS);
        drop(tickets);
        assert_eq!(q.calls(), 0);
        let big = q
            .admit(MAX_QUEUED_BYTES)
            .expect("one body of the whole budget");
        assert!(q.admit(1).is_none(), "one byte past the bound");
        drop(big);
        assert!(q.admit(1).is_some());
        assert_eq!(q.calls(), 0, "a dropped ticket gives its place back");
    }
}
