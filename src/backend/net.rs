//! The one HTTP client of the process, for model servers and `tool` nodes.
//!
//! Plain `http://` requests go over a connection pool that never touches
//! TLS; the TLS connector (native-tls, the system's root certificates) is
//! made on the first `https://` request, once. Loading the CA bundle costs
//! tens of milliseconds of CPU, which was most of a short `redraft run`
//! against a local server.
//!
//! Requests are built with `reqwest`'s types (async-openai hands us a
//! `reqwest::Request`), but `reqwest` is compiled without TLS and never
//! executes them: this module does, with hyper.

use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a new connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per host.
const IDLE_PER_HOST: usize = 512;

type Plain = Client<HttpConnector, reqwest::Body>;
type Tls = Client<hyper_tls::HttpsConnector<HttpConnector>, reqwest::Body>;

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the server did not reply in time")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("transport error: {0}")]
    Transport(String),
    /// The reply was longer than the caller's limit (`limit` bytes).
    #[error("reply larger than the {limit}-byte limit")]
    TooLarge { status: u16, limit: usize },
    #[error("TLS is unavailable: {0}")]
    Tls(String),
    #[error("invalid request: {0}")]
    Request(String),
}

/// A reply read whole (up to a size limit).
#[derive(Debug)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    c.set_nodelay(true);
    c
}

fn plain() -> &'static Plain {
    static PLAIN: OnceLock<Plain> = OnceLock::new();
    PLAIN.get_or_init(|| {
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .build(connector())
    })
}

fn tls() -> Result<&'static Tls, HttpError> {
    static TLS: OnceLock<Result<Tls, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        let tls = native_tls::TlsConnector::new().map_err(|e| e.to_string())?;
        let mut http = connector();
        http.enforce_http(false);
        let https = hyper_tls::HttpsConnector::from((http, tls.into()));
        Ok(Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .build(https))
    })
    .as_ref()
    .map_err(|e| HttpError::Tls(e.clone()))
}

/// Sends `request` and reads the reply, all within `timeout`; a reply body
/// over `max_bytes` is refused as soon as it is known to be.
pub async fn execute(
    request: reqwest::Request,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Reply, HttpError> {
    let https = request.url().scheme() == "https";
    let request: http::Request<reqwest::Body> = request
        .try_into()
        .map_err(|e: reqwest::Error| HttpError::Request(e.to_string()))?;
    let exchange = async {
        let response = if https {
            tls()?.request(request).await
        } else {
            plain().request(request).await
        }
        .map_err(|e| {
            if e.is_connect() {
                HttpError::Connect(root_cause(&e))
            } else {
                HttpError::Transport(root_cause(&e))
            }
        })?;
        let (parts, mut body) = response.into_parts();
        let too_large = HttpError::TooLarge {
            status: parts.status.as_u16(),
            limit: max_bytes,
        };
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_bytes) {
            return Err(too_large);
        }
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(max_bytes));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| HttpError::Transport(root_cause(&e)))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > max_bytes {
                    return Err(too_large);
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: bytes,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout)?
}

/// The innermost error's message: the useful part of a wrapped one.
pub(crate) fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn https_urls_speak_tls_and_http_urls_do_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Reads the first byte of each connection, then hangs up.
        let server = tokio::spawn(async move {
            let mut first = Vec::new();
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 1];
                stream.read_exact(&mut b).await.unwrap();
                first.push(b[0]);
            }
            first
        });
        for scheme in ["https", "http"] {
            let url = format!("{scheme}://127.0.0.1:{port}/v1").parse().unwrap();
            let request = reqwest::Request::new(reqwest::Method::GET, url);
            let e = execute(request, Duration::from_secs(10), 1024)
                .await
                .unwrap_err();
            // The TLS handshake is part of connecting.
            assert!(
                matches!(e, HttpError::Transport(_) | HttpError::Connect(_)),
                "{scheme}: {e}"
            );
        }
        // A TLS handshake record (0x16), then a plain `GET`.
        assert_eq!(server.await.unwrap(), [0x16, b'G']);
    }

    #[tokio::test]
    async fn a_reply_past_the_limit_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let body = "x".repeat(2000);
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        });
        let url = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let e = execute(
            reqwest::Request::new(reqwest::Method::GET, url),
            Duration::from_secs(10),
            1000,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                HttpError::TooLarge {
                    status: 200,
                    limit: 1000
                }
            ),
            "{e}"
        );
    }
}
