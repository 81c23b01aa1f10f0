//! Servers of this process: a listener bound before its server starts (so
//! that others can be told its URL), and a running server that stops on
//! request or when dropped. The node agent's and the control plane's
//! in-process starters (`tern_node::spawn`, `tern_control::spawn`) are built
//! on these; `tern up`, `tern demo`, the tests and the benchmarks start
//! their servers through them.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A listener, bound, its server not started yet.
pub struct Bound {
    pub listener: TcpListener,
    /// `https://ADDR` (or `http://ADDR` after [`Bound::plain`]), with an
    /// unspecified address shown as 127.0.0.1.
    pub url: String,
}

impl Bound {
    /// A free port on 127.0.0.1.
    pub async fn loopback() -> std::io::Result<Bound> {
        Bound::at("127.0.0.1:0").await
    }

    /// `addr` (`HOST:PORT`).
    pub async fn at(addr: &str) -> std::io::Result<Bound> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let host = if local.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            local.ip()
        };
        let url = format!("https://{}", SocketAddr::new(host, local.port()));
        Ok(Bound { listener, url })
    }

    /// For a server that speaks plain HTTP (asked for explicitly).
    pub fn plain(mut self) -> Bound {
        if let Some(rest) = self.url.strip_prefix("https://") {
            self.url = format!("http://{rest}");
        }
        self
    }
}

/// The future a server runs until: it resolves when the server is asked to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server running in this process.
pub struct Served {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Served {
    /// Runs `serve(listener, shutdown)` on the runtime.
    pub fn spawn<F, Fut>(bound: Bound, serve: F) -> Served
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(serve(bound.listener, shutdown));
        Served {
            url: bound.url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Asks the server to stop (it finishes in the background).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the server has ended (stopped, or failed).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the server ends by itself (a failure, or a stop asked
    /// elsewhere) and gives its outcome.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        match self.task.as_mut() {
            Some(t) => {
                let r = t.await;
                self.task = None;
                r.map_err(|e| anyhow::anyhow!("the server task failed: {e}"))?
            }
            None => Ok(()),
        }
    }

    /// Stops the server and waits for it to end, at most `deadline`.
    pub async fn shut_down(mut self, deadline: Duration) -> anyhow::Result<()> {
        self.stop();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(deadline, task).await {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("the server task failed: {e}"))?,
            Err(_) => anyhow::bail!("did not stop within {} s", deadline.as_secs()),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` bytes sent over a fresh plain TCP connection on loopback, timed
/// until the receiver has them all: the raw transfer the benchmarks set
/// a move's or a restart's time against, measured in the same run.
pub async fn raw_loopback_transfer(n: u64) -> std::io::Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let recv = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            got += k as u64;
        }
        Ok::<_, std::io::Error>((got, std::time::Instant::now()))
    });
    let src = vec![0x5au8; 1 << 20];
    let t0 = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut left = n;
    while left > 0 {
        let k = left.min(src.len() as u64) as usize;
        s.write_all(&src[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await?;
    let (got, t_end) = recv.await.map_err(std::io::Error::other)??;
    if got != n {
        return Err(std::io::Error::other(format!("{got} bytes arrived of {n}")));
    }
    Ok(t_end - t0)
}
