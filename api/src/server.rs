//! Helpers for the HTTP servers of nodes and the control plane: one body
//! type, JSON and error responses, size-limited bodies, the token check, and
//! an accept loop that stops on a shutdown signal.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::ErrorBody;

/// The body of every response.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A handler's future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode response: {e}\"}}").into_bytes());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(bytes))
        .expect("valid response")
}

/// An error response: `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// Raw bytes.
pub fn bytes(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(full(body))
        .expect("valid response")
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Whether the request carries `Authorization: Bearer TOKEN`.
pub fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(crate::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// The response for a missing or wrong token.
pub fn unauthorized() -> Response<Body> {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong cluster token: pass --token, set TERN_TOKEN, or use the token file that `tern up` wrote",
    )
}

/// The response for a credential that may not do this.
pub fn forbidden(message: impl Into<String>) -> Response<Body> {
    error(StatusCode::FORBIDDEN, message)
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    read_body_into(body, limit).await
}

/// A buffer as `Bytes` that goes back to [`tern_util::pool`] when the last
/// reference to it drops (a request body, once sent).
pub fn recycled(buf: Vec<u8>) -> Bytes {
    struct Recycled(Vec<u8>);
    impl AsRef<[u8]> for Recycled {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    impl Drop for Recycled {
        fn drop(&mut self) {
            tern_util::pool::give(std::mem::take(&mut self.0));
        }
    }
    Bytes::from_owner(Recycled(buf))
}

async fn read_body_into(mut body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    use hyper::body::Body as _;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    };
    // One buffer sized from Content-Length, each chunk appended and then
    // dropped: a large body (a snapshot) is copied once and its chunks'
    // memory is reused, instead of all chunks kept and then concatenated.
    let hint = body.size_hint();
    let expected = hint.exact().unwrap_or(hint.lower());
    if expected > limit as u64 {
        return Err(too_large());
    }
    let mut buf: Vec<u8> = Vec::with_capacity(expected as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and parses a JSON body.
pub async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, Response<Body>> {
    let bytes = read_body(body, crate::MAX_JSON_BODY).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

/// A request handler.
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<Body>> + Send + Sync>;

/// How a listener serves: TLS or (only when asked for) plain HTTP, and the
/// bounds that keep a stranger from exhausting the process.
#[derive(Clone)]
pub struct ServeOptions {
    /// `None`: plain HTTP (only when the operator asked for it).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A request's head must arrive within this, and a kept-alive
    /// connection that sends nothing for this long is closed.
    pub header_timeout: Duration,
}

impl ServeOptions {
    /// Plain HTTP, with the default bounds.
    pub fn plain() -> ServeOptions {
        ServeOptions {
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_TIMEOUT,
            header_timeout: DEFAULT_TIMEOUT,
        }
    }

    /// TLS with this configuration, with the default bounds.
    pub fn tls(config: Arc<rustls::ServerConfig>) -> ServeOptions {
        ServeOptions {
            tls: Some(config),
            ..ServeOptions::plain()
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Connections one listener serves at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Handshake and header-read timeout by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause after a failed accept (file descriptors exhausted...).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 (over TLS when `opts.tls` is set) on an already-bound
/// listener until `shutdown` resolves. One task per connection, at most
/// `opts.max_connections` at once; a failed accept (out of file
/// descriptors) backs off instead of spinning. Over TLS, a client's
/// verified certificate becomes a [`Peer`](crate::tls::Peer) in each
/// request's extensions; a plain-HTTP request gets a one-line answer that
/// says to use https.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => {
                        backoff = Duration::from_millis(5);
                        stream
                    }
                    Err(e) => {
                        // EMFILE, ENFILE, ENOBUFS...: the same error comes
                        // back at once; wait (longer each time) for
                        // connections to end instead of spinning.
                        tracing::warn!("accept failed: {e}; pausing {} ms", backoff.as_millis());
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    // At the cap: close at once (the client sees a reset).
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let acceptor = acceptor.clone();
                let opts = opts.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    match acceptor {
                        None => serve_connection(stream, None, handler, &opts).await,
                        Some(acceptor) => {
                            let Some(tls) = handshake(stream, &acceptor, &opts).await else {
                                return;
                            };
                            let peer = crate::tls::peer_of(tls.get_ref().1.peer_certificates().unwrap_or(&[]));
                            serve_connection(tls, peer, handler, &opts).await
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

/// The TLS handshake, within the timeout; a client that speaks plain HTTP
/// is told to use https.
async fn handshake(
    stream: tokio::net::TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    opts: &ServeOptions,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(opts.handshake_timeout, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] != 0x16 => {
            // Not a TLS record: most likely plain HTTP.
            answer_plain_request(stream).await;
            return None;
        }
        Ok(Ok(1)) => {}
        _ => return None,
    }
    match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => None,
    }
}

/// The answer to a plain-HTTP request on a TLS listener.
async fn answer_plain_request(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = "{\"error\":\"this server speaks HTTPS only: use an https:// URL (and the cluster's CA, ca.pem in the data directory)\"}\n";
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection<IO>(
    io: IO,
    peer: Option<crate::tls::Peer>,
    handler: Handler,
    opts: &ServeOptions,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let h = handler.clone();
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        async move { Ok::<_, Infallible>(h(req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true)
        .serve_connection(io, svc)
        .await;
}

/// The verified client certificate of a request's connection, if any.
pub fn peer<B>(req: &Request<B>) -> Option<&crate::tls::Peer> {
    req.extensions().get::<crate::tls::Peer>()
}

/// The bearer token a request carries, if any.
pub fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(crate::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The path's segments, without empty ones.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// A query parameter's value.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}
