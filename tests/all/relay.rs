//! A small HTTP/1.1 relay put between a node and the node it talks to, for
//! tests that need to see or disturb a migration on the wire: it reads each
//! request head and its body, so it knows which protocol step a request is,
//! and by configuration it "dies" at the Nth request of a step (the
//! connection is dropped without forwarding it, and every later connection
//! is refused, like a machine that lost power), flips one byte in the middle
//! of the first `/pages` body (or of every one) or of the first answer to
//! a step, or holds the first request of a step until the test releases it
//! (a migration caught in the middle, on purpose).
//!
//! Between nodes that speak TLS (an `https://` target) the relay ends TLS
//! on both sides: it presents a certificate of the tests' CA for its own
//! address, and to the target the control plane's certificate (so what it
//! forwards is allowed as the control plane's). [`Tap`] is the other kind:
//! it relays TCP bytes as they are and records them, to show what a
//! machine in the middle would see.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Runs when the relay reaches its fatal request, before it dies.
pub type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// At the `nth` (1-based) request whose path ends with `suffix`: drop
    /// the connection without forwarding the request, and refuse every
    /// later connection.
    DieAt { suffix: &'static str, nth: usize },
    /// Flip one byte in the middle of the body of the first `/pages` request.
    CorruptFirstPages,
    /// Flip one byte in the middle of the body of every `/pages` request.
    CorruptEveryPages,
    /// Flip one byte in the middle of the answer to the first request
    /// whose path ends with `suffix`.
    CorruptFirstAnswerTo { suffix: &'static str },
    /// Hold the first request whose path ends with `suffix` until
    /// [`Relay::release`]; [`Relay::wait_held`] returns once it is held.
    HoldAt { suffix: &'static str },
    /// Forward the first request whose path ends with `suffix`, and drop
    /// the connection instead of passing its answer back (a link cut after
    /// the peer acted); then hold the next request, on any connection,
    /// for `stall_next` before forwarding it (a link slow to come back).
    LoseAnswerAt {
        suffix: &'static str,
        stall_next: std::time::Duration,
    },
}

/// One request the relay saw, and the status the target answered.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub body_len: usize,
    /// `None`: never forwarded (the relay died on it) or never answered.
    pub status: Option<u16>,
    /// The relay damaged this body.
    pub tampered: bool,
}

struct RelayState {
    upstream: SocketAddr,
    fault: Fault,
    hook: Mutex<Option<Hook>>,
    matched: Mutex<usize>,
    fired: AtomicBool,
    /// `LoseAnswerAt`: the request after the lost answer was stalled.
    stalled: AtomicBool,
    seen: Mutex<Vec<Exchange>>,
    dead: watch::Sender<bool>,
    /// `HoldAt`: the request is being held.
    held: watch::Sender<bool>,
    /// `HoldAt`: let it go.
    released: watch::Sender<bool>,
}

pub struct Relay {
    pub url: String,
    state: Arc<RelayState>,
}

/// The relay's TLS ends: toward the client and toward the target.
#[derive(Clone)]
struct TlsEnds {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

fn tls_ends(target: &str) -> TlsEnds {
    use tern_api::tls::Role;
    // The relay poses as the target node toward the source (which accepts
    // only the certificate of the node it moves the app to), and as the
    // control plane toward the target.
    let as_node = crate::nodes::identity(Role::Node(target.into()));
    let as_control = crate::nodes::identity(Role::Control);
    TlsEnds {
        acceptor: tokio_rustls::TlsAcceptor::from(as_node.server_config().unwrap()),
        connector: tokio_rustls::TlsConnector::from(as_control.client_config().unwrap()),
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

impl Relay {
    /// A relay to the node `target_name` at `target_url`.
    pub async fn start(
        target_url: &str,
        target_name: &str,
        fault: Fault,
        hook: Option<Hook>,
    ) -> Relay {
        let (scheme, rest) = target_url.split_once("://").expect("a URL");
        let upstream: SocketAddr = rest.parse().expect("target address");
        let tls = (scheme == "https").then(|| tls_ends(target_name));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (dead, _) = watch::channel(false);
        let state = Arc::new(RelayState {
            upstream,
            fault,
            hook: Mutex::new(hook),
            matched: Mutex::new(0),
            fired: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
            dead,
            held: watch::channel(false).0,
            released: watch::channel(false).0,
        });
        let st = state.clone();
        tokio::spawn(async move {
            let mut dead = st.dead.subscribe();
            loop {
                tokio::select! {
                    // Dead: the listener is dropped, later connects are refused.
                    _ = dead.wait_for(|d| *d) => break,
                    accepted = listener.accept() => {
                        let Ok((down, _)) = accepted else { continue };
                        let st = st.clone();
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let mut dead = st.dead.subscribe();
                            tokio::select! {
                                r = relay_connection(down, tls, &st) => {
                                    if let Err(e) = r {
                                        eprintln!("relay: connection ended: {e}");
                                    }
                                }
                                // Dead: every open connection is cut too.
                                _ = dead.wait_for(|d| *d) => {}
                            }
                        });
                    }
                }
            }
        });
        Relay { url, state }
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn is_dead(&self) -> bool {
        *self.state.dead.borrow()
    }

    /// `HoldAt`: returns once the relay holds its request.
    pub async fn wait_held(&self) {
        let mut rx = self.state.held.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// `HoldAt`: forwards the held request (and every later one).
    pub fn release(&self) {
        let _ = self.state.released.send(true);
    }
}

/// Relays one client connection, request by request (HTTP/1.1 without
/// pipelining, as hyper's client speaks it).
async fn relay_connection(
    down: TcpStream,
    tls: Option<TlsEnds>,
    st: &RelayState,
) -> std::io::Result<()> {
    let up = TcpStream::connect(st.upstream).await?;
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let (mut down, mut up): (Box<dyn Stream>, Box<dyn Stream>) = match tls {
        None => (Box::new(down), Box::new(up)),
        Some(t) => {
            let down = t.acceptor.accept(down).await?;
            let name = rustls::pki_types::ServerName::IpAddress(st.upstream.ip().into());
            let up = t.connector.connect(name, up).await?;
            (Box::new(down), Box::new(up))
        }
    };
    let (mut dbuf, mut ubuf) = (Vec::new(), Vec::new());
    loop {
        let Some(mut req) = read_message(&mut down, &mut dbuf, None).await? else {
            return Ok(());
        };
        let (method, path) = request_line(&req.head)?;
        let mut ex = Exchange {
            method: method.clone(),
            path: path.clone(),
            body_len: req.body.len(),
            status: None,
            tampered: false,
        };
        match st.fault {
            Fault::LoseAnswerAt { stall_next, .. }
                if st.fired.load(Ordering::SeqCst) && !st.stalled.swap(true, Ordering::SeqCst) =>
            {
                tokio::time::sleep(stall_next).await;
            }
            Fault::DieAt { suffix, nth } if path.ends_with(suffix) => {
                let n = {
                    let mut m = st.matched.lock().unwrap();
                    *m += 1;
                    *m
                };
                if n == nth {
                    st.seen.lock().unwrap().push(ex);
                    let hook = st.hook.lock().unwrap().take();
                    if let Some(h) = hook {
                        h().await;
                    }
                    let _ = st.dead.send(true);
                    return Ok(());
                }
            }
            Fault::HoldAt { suffix }
                if path.ends_with(suffix) && !st.fired.swap(true, Ordering::SeqCst) =>
            {
                let mut released = st.released.subscribe();
                let _ = st.held.send(true);
                let _ = released.wait_for(|r| *r).await;
            }
            Fault::CorruptFirstPages | Fault::CorruptEveryPages
                if path.ends_with("/pages")
                    && (matches!(st.fault, Fault::CorruptEveryPages)
                        || !st.fired.swap(true, Ordering::SeqCst)) =>
            {
                assert!(!req.chunked, "the relay damages Content-Length bodies only");
                let mid = req.body.len() / 2;
                req.body[mid] ^= 0x5a;
                ex.tampered = true;
            }
            _ => {}
        }
        up.write_all(&req.head).await?;
        up.write_all(&req.body).await?;
        // A TLS stream may keep the last records of a large body until
        // flushed (the peer then waits for them forever).
        up.flush().await?;
        let Some(resp) = read_message(&mut up, &mut ubuf, Some(&method)).await? else {
            st.seen.lock().unwrap().push(ex);
            return Ok(());
        };
        ex.status = Some(status_code(&resp.head)?);
        let mut resp = resp;
        if let Fault::CorruptFirstAnswerTo { suffix } = st.fault {
            if path.ends_with(suffix) && !st.fired.swap(true, Ordering::SeqCst) {
                assert!(
                    !resp.chunked,
                    "the relay damages Content-Length bodies only"
                );
                let mid = resp.body.len() / 2;
                resp.body[mid] ^= 0x5a;
                ex.tampered = true;
            }
        }
        st.seen.lock().unwrap().push(ex);
        if let Fault::LoseAnswerAt { suffix, .. } = st.fault {
            if path.ends_with(suffix) && !st.fired.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
        }
        down.write_all(&resp.head).await?;
        down.write_all(&resp.body).await?;
        down.flush().await?;
    }
}

struct Message {
    /// Start line and headers, with the blank line.
    head: Vec<u8>,
    /// The body as it was on the wire.
    body: Vec<u8>,
    chunked: bool,
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

async fn read_more(
    s: &mut Box<dyn Stream>,
    buf: &mut Vec<u8>,
    want: usize,
) -> std::io::Result<usize> {
    buf.reserve(want.clamp(16 << 10, 4 << 20));
    s.read_buf(buf).await
}

/// Reads one request (`response_to: None`) or one response to a request
/// with this method. `Ok(None)`: the peer closed between messages.
async fn read_message(
    s: &mut Box<dyn Stream>,
    buf: &mut Vec<u8>,
    response_to: Option<&str>,
) -> std::io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Err(bad("message head larger than 64 KiB"));
        }
        if read_more(s, buf, 0).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("connection closed inside a message head"))
            };
        }
    };
    let head: Vec<u8> = buf.drain(..head_end).collect();
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(
                        v.trim()
                            .parse::<usize>()
                            .map_err(|_| bad("bad Content-Length"))?,
                    )
                }
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
    }
    let no_body = match response_to {
        None => false,
        Some(method) => {
            let code = start
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0);
            method == "HEAD" || (100..200).contains(&code) || code == 204 || code == 304
        }
    };
    let body = if no_body {
        Vec::new()
    } else if chunked {
        read_chunked(s, buf).await?
    } else {
        let n = match (length, response_to) {
            (Some(n), _) => n,
            (None, None) => 0,
            (None, Some(_)) => {
                return Err(bad("response without Content-Length or chunked encoding"))
            }
        };
        while buf.len() < n {
            if read_more(s, buf, n - buf.len()).await? == 0 {
                return Err(bad("connection closed inside a body"));
            }
        }
        buf.drain(..n).collect()
    };
    Ok(Some(Message {
        head,
        body,
        chunked,
    }))
}

/// A chunked body, raw (framing included).
async fn read_chunked(s: &mut Box<dyn Stream>, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i + 2;
            }
            if read_more(s, buf, 0).await? == 0 {
                return Err(bad("connection closed inside a chunk size"));
            }
        };
        let line: Vec<u8> = buf.drain(..line_end).collect();
        let size_text = String::from_utf8_lossy(&line);
        let size =
            usize::from_str_radix(size_text.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
        raw.extend_from_slice(&line);
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i + 2;
                    }
                    if read_more(s, buf, 0).await? == 0 {
                        return Err(bad("connection closed inside trailers"));
                    }
                };
                let l: Vec<u8> = buf.drain(..end).collect();
                raw.extend_from_slice(&l);
                if l == b"\r\n" {
                    return Ok(raw);
                }
            }
        }
        while buf.len() < size + 2 {
            if read_more(s, buf, size + 2 - buf.len()).await? == 0 {
                return Err(bad("connection closed inside a chunk"));
            }
        }
        raw.extend(buf.drain(..size + 2));
    }
}

fn request_line(head: &[u8]) -> std::io::Result<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split("\r\n").next().unwrap_or("").split_whitespace();
    let method = parts.next().ok_or_else(|| bad("no method"))?.to_string();
    let target = parts.next().ok_or_else(|| bad("no request target"))?;
    // Origin form (`/v1/...`) or absolute form (`http://host/v1/...`).
    let path = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => target,
    };
    let path = path.split('?').next().unwrap_or(path).to_string();
    Ok((method, path))
}

fn status_code(head: &[u8]) -> std::io::Result<u16> {
    String::from_utf8_lossy(head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))
}

/// A TCP relay that passes bytes through untouched (TLS stays end to end)
/// and records every byte it sees, both ways.
pub struct Tap {
    pub url: String,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    pub async fn start(target_url: &str) -> Tap {
        let (scheme, rest) = target_url.split_once("://").expect("a URL");
        let upstream: SocketAddr = rest.parse().expect("target address");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let (r1, r2) = (rec.clone(), rec);
                    let a = async move {
                        let mut b = vec![0u8; 64 << 10];
                        while let Ok(n) = dr.read(&mut b).await {
                            if n == 0 || uw.write_all(&b[..n]).await.is_err() {
                                break;
                            }
                            r1.lock().unwrap().extend_from_slice(&b[..n]);
                        }
                        let _ = uw.shutdown().await;
                    };
                    let z = async move {
                        let mut b = vec![0u8; 64 << 10];
                        while let Ok(n) = ur.read(&mut b).await {
                            if n == 0 || dw.write_all(&b[..n]).await.is_err() {
                                break;
                            }
                            r2.lock().unwrap().extend_from_slice(&b[..n]);
                        }
                        let _ = dw.shutdown().await;
                    };
                    tokio::join!(a, z);
                });
            }
        });
        Tap { url, seen }
    }

    /// Every byte relayed so far, both directions interleaved.
    pub fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}
