//! Network faults: a relay in front of each node of a soak. A node
//! advertises the relay's address, so everything that reaches it — the
//! control plane's calls, other nodes' migration streams, the clients'
//! calls — goes through the relay, which passes bytes through untouched
//! until told to:
//! - **cut** every connection open now (both sides see a reset, as when a
//!   link goes down; new connections go through);
//! - **stall** for a while: bytes stop moving both ways, then flow again
//!   (a congested or flapping link; TCP's own buffers fill);
//! - **corrupt** the next chunk it passes (one byte flipped; over TLS the
//!   record's MAC fails and the connection dies — a bad link must never
//!   become bad data).
//!
//! Connections are bounded per relay; a relay's tasks end when it is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Connections one relay carries at once; more are refused.
const MAX_CONNECTIONS: usize = 512;

/// What the relay is told to do.
struct Control {
    /// Bumped to cut every connection open now.
    cut: watch::Sender<u64>,
    /// No byte moves before this instant.
    stalled_until: Mutex<Option<tokio::time::Instant>>,
    /// Chunks still to corrupt (one byte each).
    corrupt: AtomicU64,
}

/// A relay in front of one node.
pub struct Relay {
    /// `127.0.0.1:PORT` the node advertises.
    pub addr: std::net::SocketAddr,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and forwards every connection to
    /// `target` (the node's own listener).
    pub async fn start(target: std::net::SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind a relay")?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            cut: watch::channel(0).0,
            stalled_until: Mutex::new(None),
            corrupt: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, target, control.clone()));
        Ok(Relay {
            addr,
            control,
            task,
        })
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        self.control.cut.send_modify(|n| *n += 1);
    }

    /// Stops every byte for `d`.
    pub fn stall(&self, d: Duration) {
        *self
            .control
            .stalled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now() + d);
    }

    /// Flips one byte of the next chunk that passes.
    pub fn corrupt_next(&self) {
        self.control.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets a corruption no chunk met (the fault's move is over).
    pub fn disarm(&self) {
        self.control.corrupt.store(0, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, target: std::net::SocketAddr, control: Arc<Control>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let control = control.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    carry(inbound, outbound, &control).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Passes bytes both ways until either side closes or the relay cuts.
async fn carry(a: TcpStream, b: TcpStream, control: &Control) {
    let mut cut = control.cut.subscribe();
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    // A side that ends its stream ends the other side's too (as a link
    // carries a FIN): a client must see its node's connection close when
    // the node dies, not find out on its next request.
    let up = async {
        pump(&mut ar, &mut bw, control).await;
        let _ = bw.shutdown().await;
    };
    let down = async {
        pump(&mut br, &mut aw, control).await;
        let _ = aw.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.changed() => {
            // Dropping both halves resets the connections (SO_LINGER 0 is
            // not needed: the peers see the close mid-message).
        }
    }
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    control: &Control,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            let until = *control
                .stalled_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > tokio::time::Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        if control
            .corrupt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1))
            .is_ok()
        {
            buf[n / 2] ^= 0x5a;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; its address.
    async fn echo() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn a_relay_passes_cuts_stalls_and_corrupts() {
        let relay = Relay::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"hello").await.unwrap(), b"hello");

        // Corrupted: one byte differs, once.
        relay.corrupt_next();
        let back = roundtrip(&mut s, b"abcdef").await.unwrap();
        assert_ne!(back, b"abcdef");
        assert_eq!(
            back.iter().zip(b"abcdef").filter(|(a, b)| a != b).count(),
            1
        );
        assert_eq!(roundtrip(&mut s, b"abcdef").await.unwrap(), b"abcdef");

        // Stalled: nothing comes back before the stall ends.
        relay.stall(Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        assert_eq!(roundtrip(&mut s, b"later").await.unwrap(), b"later");
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t0.elapsed()
        );

        // Cut: the open connection dies; a new one goes through.
        relay.cut();
        let mut buf = [0u8; 1];
        let dead = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = s.write_all(b"x").await;
            s.read(&mut buf).await
        })
        .await
        .expect("a cut connection ends");
        assert!(matches!(dead, Ok(0) | Err(_)), "{dead:?}");
        let mut s2 = TcpStream::connect(relay.addr).await.unwrap();
        assert_eq!(roundtrip(&mut s2, b"again").await.unwrap(), b"again");
    }
}
