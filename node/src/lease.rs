//! The node's lease on its apps: it serves them only while the control
//! plane has recently heard from it.
//!
//! The control plane restarts a node's apps elsewhere once it has not heard
//! from the node for its heartbeat timeout. A node that is alive but not
//! heard (a partition, or a machine so loaded its heartbeats arrive late)
//! would then serve its copies while the new ones serve too. So every
//! acknowledged heartbeat grants the node a lease of half that timeout,
//! counted from when the heartbeat was *sent* (before the control plane
//! could have seen it); once it runs out, the node refuses its apps' calls
//! with 503 until a heartbeat is acknowledged again, well before the control
//! plane may act. The price: while no control plane answers (all of them
//! down, or cut off), the node's apps answer 503 after half the timeout;
//! several control planes on etcd keep that window short. A control plane
//! that restarts waits a whole timeout before it calls any node down, so a
//! node that reaches it again in that time keeps its apps.
//!
//! A node given no control plane holds no lease and always serves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lease deadline meaning "not bound by a lease".
const NONE: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct Lease {
    start: Instant,
    /// Milliseconds since `start` until which the node may serve; 0 before
    /// the first acknowledged heartbeat; [`NONE`] without a control plane.
    until_ms: AtomicU64,
    /// The length of a lease, in ms (half the control plane's heartbeat
    /// timeout, as its latest acknowledgement stated it).
    term_ms: AtomicU64,
}

/// A lease's length before any control plane stated its timeout.
const DEFAULT_TERM: Duration = Duration::from_secs(5);

impl Lease {
    /// A lease for a node that reports to a control plane (`bound`) or not.
    pub(crate) fn new(bound: bool) -> Lease {
        Lease {
            start: Instant::now(),
            until_ms: AtomicU64::new(if bound { 0 } else { NONE }),
            term_ms: AtomicU64::new(DEFAULT_TERM.as_millis() as u64),
        }
    }

    /// How long a lease lasts (at least half a second): a heartbeat waits
    /// no longer for its answer, since an answer that comes later grants
    /// nothing (the lease counts from the send), and the next heartbeat may
    /// find a control plane that answers.
    pub(crate) fn term(&self) -> Duration {
        Duration::from_millis(self.term_ms.load(Ordering::Relaxed).max(500))
    }

    /// A heartbeat sent at `sent` was acknowledged by a control plane whose
    /// heartbeat timeout is `timeout`.
    pub(crate) fn renew(&self, sent: Instant, timeout: Duration) {
        if self.until_ms.load(Ordering::Relaxed) == NONE {
            return;
        }
        let term = timeout.as_millis() as u64 / 2;
        self.term_ms.store(term, Ordering::Relaxed);
        let sent_ms = sent.saturating_duration_since(self.start).as_millis() as u64;
        let until = sent_ms + term;
        self.until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// `Err` with the reason when the node must not serve now.
    pub(crate) fn check(&self) -> Result<(), String> {
        let until = self.until_ms.load(Ordering::Relaxed);
        if until == NONE {
            return Ok(());
        }
        let now = self.start.elapsed().as_millis() as u64;
        if now < until {
            return Ok(());
        }
        Err(if until == 0 {
            "this node has not reached the control plane yet: try again in a moment".into()
        } else {
            format!(
                "this node has not reached the control plane for {:.1} s, so it serves no app \
                 (another copy may be starting elsewhere): try again in a moment",
                (now - until) as f64 / 1000.0
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_half_the_timeout_from_the_send() {
        let free = Lease::new(false);
        assert!(free.check().is_ok(), "no control plane: no lease");
        free.renew(Instant::now(), Duration::ZERO);
        assert!(free.check().is_ok());

        let l = Lease::new(true);
        assert!(l.check().unwrap_err().contains("not reached"));
        assert_eq!(l.term(), DEFAULT_TERM, "no timeout stated yet");
        l.renew(Instant::now(), Duration::from_secs(20));
        assert!(l.check().is_ok());
        assert_eq!(l.term(), Duration::from_secs(10), "half the stated timeout");
        // An old acknowledgement does not shorten a newer lease.
        l.renew(l.start, Duration::ZERO);
        assert!(l.check().is_ok());
        assert_eq!(
            l.term(),
            Duration::from_millis(500),
            "a heartbeat waits half a second at least"
        );
        // A lease that has run out says for how long.
        let past = Lease {
            start: Instant::now() - Duration::from_secs(10),
            until_ms: AtomicU64::new(0),
            term_ms: AtomicU64::new(0),
        };
        past.renew(past.start, Duration::from_secs(2));
        let e = past.check().unwrap_err();
        assert!(e.contains("serves no app") && e.contains("for 9."), "{e}");
    }
}
