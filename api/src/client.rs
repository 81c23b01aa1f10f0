//! A small HTTP client for the API, with errors that say what to do.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::ErrorBody;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        url: String,
        reason: String,
        /// The connection was never made: the request was not delivered.
        connect: bool,
    },
    /// The server's certificate is not one the client trusts (or the
    /// server did not accept the client's).
    #[error("cannot trust {url}: {reason}")]
    Certificate { url: String, reason: String },
    #[error("{url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{message}")]
    Status {
        status: u16,
        message: String,
        /// The server's `Retry-After`, in seconds: it did not act on the
        /// request and asks for it again after that long.
        retry_after: Option<u64>,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the peer asked to wait before sending the request again,
    /// when it answered that it did not act on it (503 with `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status {
                retry_after: Some(s),
                ..
            } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }

    /// Whether the request surely never reached the peer (the connection
    /// could not be made), so that sending it elsewhere cannot run it twice.
    pub fn never_delivered(&self) -> bool {
        matches!(self, ClientError::Unreachable { connect: true, .. })
    }

    /// Whether the peer could not be reached at all (connection refused...).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        )
    }
}

/// An answer passed through as it came.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// An API client holding the cluster token.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    token: Option<String>,
    timeout: Duration,
    /// Headers sent with every request.
    headers: Vec<(String, String)>,
}

impl Client {
    /// A client that trusts no certificate authority: plain `http://` only
    /// (an `https://` server is refused as untrusted).
    pub fn new(token: Option<String>) -> Client {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Client::with_config(token, Arc::new(cfg))
    }

    /// A client that verifies `https://` servers against the cluster's CA
    /// and presents the identity in `tls`, if any.
    pub fn with_tls(token: Option<String>, tls: &crate::tls::Tls) -> anyhow::Result<Client> {
        Ok(Client::with_config(token, tls.client_config()?))
    }

    /// As [`Client::with_tls`], for servers whose certificate names `role`
    /// only (any other certificate of the cluster is refused).
    pub fn with_tls_for(
        token: Option<String>,
        tls: &crate::tls::Tls,
        role: &crate::tls::Role,
    ) -> anyhow::Result<Client> {
        Ok(Client::with_config(token, tls.client_config_for(role)?))
    }

    /// A client with this TLS configuration (`http://` URLs stay plain).
    pub fn with_config(token: Option<String>, tls: Arc<rustls::ClientConfig>) -> Client {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Shorter than the servers' idle timeout, so that a pooled
        // connection is not reused just as the server closes it.
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(connector);
        Client {
            inner,
            token,
            timeout: Duration::from_secs(120),
            headers: Vec::new(),
        }
    }

    /// The same client, sending this header with every request too.
    pub fn with_header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The same client with another token (or none).
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same client without the token: for calls that must not carry
    /// it, such as requests passed through to an app's ingress.
    pub fn without_token(mut self) -> Client {
        self.token = None;
        self
    }

    /// Sends a request and hands back the answer as it came, whatever its
    /// status (for requests passed through to an app). Fails only when no
    /// answer came: unreachable, connection lost, or the timeout.
    pub async fn send_raw(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<RawResponse, ClientError> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = &self.token {
            req = req.header(crate::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Unreachable {
                url: url.into(),
                reason: e.to_string(),
                connect: true,
            })?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                let connect = e.is_connect();
                let mut reason = e.to_string();
                let mut certificate = false;
                let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
                while let Some(s) = src {
                    reason = s.to_string();
                    if let Some(re) = s.downcast_ref::<rustls::Error>() {
                        certificate |= matches!(
                            re,
                            rustls::Error::InvalidCertificate(_)
                                | rustls::Error::NoCertificatesPresented
                                | rustls::Error::AlertReceived(
                                    rustls::AlertDescription::BadCertificate
                                        | rustls::AlertDescription::UnknownCA
                                        | rustls::AlertDescription::CertificateRequired
                                        | rustls::AlertDescription::CertificateRevoked
                                        | rustls::AlertDescription::CertificateExpired
                                )
                        );
                    }
                    certificate |= reason.contains("invalid peer certificate");
                    src = s.source();
                }
                if certificate {
                    ClientError::Certificate {
                        url: url.into(),
                        reason,
                    }
                } else {
                    ClientError::Unreachable {
                        url: url.into(),
                        reason,
                        connect,
                    }
                }
            })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: url.into(),
                    reason: format!("connection lost: {e}"),
                    connect: false,
                })?
                .to_bytes();
            Ok::<_, ClientError>(RawResponse {
                status,
                content_type,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.into(),
                secs: self.timeout.as_secs(),
            })?
    }

    /// Sends a request; returns the status and body of a 2xx answer, or the
    /// error message of any other.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let RawResponse {
            status,
            headers,
            body,
            ..
        } = self.send_raw(method, url, Some(content_type), body).await?;
        if status.is_success() {
            return Ok((status, body));
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                format!(
                    "{url} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                )
            });
        let retry_after = headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Err(ClientError::Status {
            status: status.as_u16(),
            message,
            retry_after,
        })
    }

    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, ClientError> {
        let (_, body) = self
            .send(Method::GET, url, "application/json", Bytes::new())
            .await?;
        decode(url, &body)
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: url.into(),
            reason: e.to_string(),
        })?;
        let (_, body) = self
            .send(Method::POST, url, "application/json", bytes.into())
            .await?;
        decode(url, &body)
    }

    pub async fn delete(&self, url: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, url, "application/json", Bytes::new())
            .await
            .map(|_| ())
    }

    pub async fn put_bytes(&self, url: &str, body: Bytes) -> Result<Bytes, ClientError> {
        self.send(Method::PUT, url, "application/octet-stream", body)
            .await
            .map(|(_, b)| b)
    }

    pub async fn post_bytes(&self, url: &str, body: Bytes) -> Result<Bytes, ClientError> {
        self.send(Method::POST, url, "application/octet-stream", body)
            .await
            .map(|(_, b)| b)
    }

    /// Whether a resource exists (2xx) or not (404).
    pub async fn exists(&self, url: &str) -> Result<bool, ClientError> {
        match self
            .send(Method::HEAD, url, "application/octet-stream", Bytes::new())
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn decode<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Decode {
        url: url.into(),
        reason: e.to_string(),
    })
}
