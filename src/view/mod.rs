//! `redraft view`: a local web app over a results store (SQLite or
//! PostgreSQL) and, for `redraft run --review web`, over the edits a
//! running workflow waits on.
//!
//! One HTTP/1.1 server (hyper) on 127.0.0.1 by default. Pages are rendered
//! here, most of them by the report's own code (`eval::report`, with
//! [`Target::View`]); the one script (`assets/app.js`) is embedded in the
//! binary, so nothing is fetched from elsewhere and no build step exists.
//!
//! Live updates are server-sent events (`/api/live`): one task polls the
//! store every [`ViewConfig::poll`] and every open page receives the list
//! when it changed, and the pending reviews when they change. SSE rather
//! than polling from each page: one store query per interval whatever the
//! number of pages, no request per page per interval, and the browser
//! reconnects by itself; rather than WebSockets: the updates only flow one
//! way, and plain HTTP needs no upgrade handling.
//!
//! Invariants: every text from a store, a model or a data set reaches the
//! page escaped (server side through `eval::html::escape`, in the script
//! through `textContent` only); the server answers only requests whose
//! `Host` is the address it serves (a page on another site cannot reach it
//! through DNS rebinding); bound to anything but a loopback address it
//! requires the token printed at start (a `?token=` once, then a cookie).

mod pages;
pub mod reviews;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::eval::store::{SharedStore, StoreError};

pub use reviews::WebReviewer;

/// How the viewer is served.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// The address to bind (127.0.0.1 unless `--host`).
    pub host: IpAddr,
    /// 0: a free port.
    pub port: u16,
    /// Required on every request when set (always set off loopback).
    pub token: Option<String>,
    /// How often the store is read for live updates.
    pub poll: Duration,
}

impl ViewConfig {
    /// Serving on `host:port` (0: a free port), reading the store every
    /// `poll`; off a loopback address with a random token (128 bits from
    /// the system's generator).
    pub fn on(host: IpAddr, port: u16, poll: Duration) -> Result<ViewConfig, ViewError> {
        let token = if host.is_loopback() {
            None
        } else {
            let mut bytes = [0u8; 16];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .map_err(ViewError::Token)?;
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
        };
        Ok(ViewConfig {
            host,
            port,
            token,
            poll,
        })
    }
}

/// 127.0.0.1 on a free port, no token, the store read every 500 ms.
impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            token: None,
            poll: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving on {0} needs a token (a host other than a loopback address)")]
    NoToken(IpAddr),
    #[error("cannot read /dev/urandom for the viewer's token: {0}")]
    Token(std::io::Error),
}

/// A running viewer; dropping it stops the server.
pub struct Viewer {
    addr: SocketAddr,
    token: Option<String>,
    reviews: Arc<reviews::Reviews>,
    /// The server's accept loop, and the store's poller when there is one.
    task: tokio::task::JoinHandle<()>,
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl Viewer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to open (with the token, when one is required).
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    /// A reviewer whose edits wait in this viewer's review page.
    pub fn reviewer(&self) -> WebReviewer {
        WebReviewer::new(self.reviews.clone())
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(p) = &self.poller {
            p.abort();
        }
    }
}

/// What the handlers share.
struct State {
    store: Option<SharedStore>,
    token: Option<String>,
    /// `host:port` values a request's Host header may carry.
    hosts: Vec<String>,
    /// The latest eval list as JSON (the poller's), for `/api/evals` and
    /// the live stream.
    evals: watch::Receiver<Arc<String>>,
    reviews: Arc<reviews::Reviews>,
}

/// Starts the viewer over `store` (none: the review page only).
pub async fn start(config: ViewConfig, store: Option<SharedStore>) -> Result<Viewer, ViewError> {
    if !config.host.is_loopback() && config.token.is_none() {
        return Err(ViewError::NoToken(config.host));
    }
    let bind = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| ViewError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ViewError::Bind { addr: bind, source })?;
    let mut hosts = vec![addr.to_string()];
    if config.host.is_loopback() {
        hosts.push(format!("localhost:{}", addr.port()));
    }
    let (tx, rx) = watch::channel(Arc::new(String::from("[]")));
    let reviews = Arc::new(reviews::Reviews::default());
    let state = Arc::new(State {
        store: store.clone(),
        token: config.token.clone(),
        hosts,
        evals: rx,
        reviews: reviews.clone(),
    });
    let poller = store.map(|s| tokio::spawn(poll(s, tx, config.poll)));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Viewer {
        addr,
        token: config.token,
        reviews,
        task,
        poller,
    })
}

/// Reads the eval list every `every` and publishes it when it changed. An
/// eval still running (units pending or claimed) is read in full each time;
/// a finished one's totals are kept from when it was last seen changing.
async fn poll(store: SharedStore, tx: watch::Sender<Arc<String>>, every: Duration) {
    // Each eval's row as last read, with the done and failed counts it had.
    let mut known: HashMap<String, (i64, i64, Value)> = HashMap::new();
    loop {
        let snapshot = {
            let seen: HashMap<String, (i64, i64)> = known
                .iter()
                .map(|(id, (done, failed, _))| (id.clone(), (*done, *failed)))
                .collect();
            store
                .with(move |s| {
                    let mut out = Vec::new();
                    for e in s.evals()? {
                        let unchanged = seen.get(&e.id) == Some(&(e.done, e.failed));
                        let fresh = if unchanged && e.done + e.failed == e.units {
                            None
                        } else {
                            Some((s.counts(&e.id)?, s.spent(&e.id)?))
                        };
                        out.push((e, fresh));
                    }
                    Ok(out)
                })
                .await
        };
        match snapshot {
            Ok(list) => {
                let mut rows = Vec::with_capacity(list.len());
                for (e, fresh) in list {
                    let row = match fresh {
                        Some((counts, spent)) => {
                            let row = json!({
                                "id": e.id, "name": e.name, "workflow": e.workflow,
                                "models": e.models, "created_at": e.created_at,
                                "units": e.units, "done": e.done, "failed": e.failed,
                                "pending": counts.pending, "running": counts.claimed,
                                "mean_score": e.mean_score,
                                "tokens": spent.tokens, "calls": spent.calls, "cost_usd": spent.cost_usd,
                            });
                            known.insert(e.id.clone(), (e.done, e.failed, row.clone()));
                            row
                        }
                        None => known[&e.id].2.clone(),
                    };
                    rows.push(row);
                }
                let text = Arc::new(Value::Array(rows).to_string());
                tx.send_if_modified(|old| {
                    let changed = **old != *text;
                    if changed {
                        *old = text;
                    }
                    changed
                });
            }
            Err(e) => tracing::warn!("view: reading the store failed: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        content_type.parse().expect("a valid header"),
    );
    h.insert(
        header::CACHE_CONTROL,
        "no-store".parse().expect("a valid header"),
    );
    h.insert(
        "x-content-type-options",
        "nosniff".parse().expect("a valid header"),
    );
    // Nothing is loaded from anywhere else, and no page may frame this one.
    h.insert(
        "content-security-policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
            .parse()
            .expect("a valid header"),
    );
    r
}

fn html(body: String) -> Response<Body> {
    response(StatusCode::OK, "text/html; charset=utf-8", body)
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    response(status, "application/json", v.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

fn store_error(e: StoreError) -> Response<Body> {
    let status = match e {
        StoreError::NoEval { .. } | StoreError::Ambiguous { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

/// A query string's value for `key`, decoded (`+` a space, `%XX` a byte).
fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// A path segment, percent-decoded.
fn segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether the request may be served: its Host is ours, and it carries the
/// token when one is required (query or cookie).
fn allowed(state: &State, req: &Request<Incoming>) -> Result<bool, Refusal> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !state.hosts.iter().any(|h| h == host) {
        return Err(Refusal(StatusCode::MISDIRECTED_REQUEST, "unknown Host"));
    }
    let Some(token) = &state.token else {
        return Ok(false);
    };
    let from_query = query(req, "token");
    let from_cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|c| c.to_str().ok())
        .flat_map(|c| c.split(';'))
        .find_map(|c| c.trim().strip_prefix("redraft_token=").map(str::to_string));
    let ok = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
    };
    if ok(&from_cookie) {
        Ok(false)
    } else if ok(&from_query) {
        Ok(true)
    } else {
        Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "this viewer needs its token (?token=, printed at start)",
        ))
    }
}

/// Why a request is not served.
struct Refusal(StatusCode, &'static str);

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let set_cookie = match allowed(state, &req) {
        Ok(set) => set,
        Err(Refusal(status, message)) => return error(status, message),
    };
    let mut r = route(state, req).await;
    if set_cookie && let Some(t) = &state.token {
        if let Ok(v) = format!("redraft_token={t}; HttpOnly; SameSite=Strict; Path=/").parse() {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    r
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, [""]) => html(pages::list()),
        (Method::GET, ["review"]) => html(pages::review()),
        (Method::GET, ["assets", "app.js"]) => response(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            pages::APP_JS,
        ),
        (Method::GET, ["api", "evals"]) => response(
            StatusCode::OK,
            "application/json",
            state.evals.borrow().to_string(),
        ),
        (Method::GET, ["api", "live"]) => live(state),
        (Method::GET, ["e", id]) => eval_page(state, id).await,
        (Method::GET, ["e", id, "item"]) => {
            let item = query(&req, "id").unwrap_or_default();
            let epoch = query(&req, "epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            item_page(state, id, &item, epoch).await
        }
        (Method::GET, ["compare"]) => {
            let (Some(a), Some(b)) = (query(&req, "a"), query(&req, "b")) else {
                return error(StatusCode::BAD_REQUEST, "compare needs ?a=EVAL&b=EVAL");
            };
            compare_page(state, &a, &b).await
        }
        (Method::GET, ["api", "reviews"]) => {
            let me = query(&req, "reviewer").unwrap_or_default();
            json_response(StatusCode::OK, &state.reviews.listing(&me))
        }
        (Method::POST, ["api", "reviews", id, action]) => {
            let Ok(id) = id.parse::<u64>() else {
                return error(StatusCode::NOT_FOUND, "no such review");
            };
            let action = action.to_string();
            match read_json(req).await {
                Ok(body) => {
                    let (status, v) = state.reviews.act(id, &action, &body);
                    json_response(status, &v)
                }
                Err(r) => r,
            }
        }
        (Method::GET, _) => error(StatusCode::NOT_FOUND, "no such page"),
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// A JSON request body of at most 1 MiB.
async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), 1 << 20);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is over 1 MiB or broken",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not JSON: {e}"),
        )
    })
}

/// The live stream: `evals` (the list, when it changes) and `reviews` (the
/// pending reviews' version, when they change), and a comment every 15 s so
/// a closed page is noticed.
fn live(state: &State) -> Response<Body> {
    let evals = state.evals.clone();
    let reviews = state.reviews.subscribe();
    let stream = futures_util::stream::unfold(
        (evals, reviews, true),
        |(mut evals, mut reviews, first)| async move {
            let frame = if first {
                let list = evals.borrow_and_update().clone();
                let version = *reviews.borrow_and_update();
                format!("event: evals\ndata: {list}\n\nevent: reviews\ndata: {version}\n\n")
            } else {
                tokio::select! {
                    changed = evals.changed() => {
                        changed.ok()?;
                        format!("event: evals\ndata: {}\n\n", *evals.borrow_and_update())
                    }
                    changed = reviews.changed() => {
                        changed.ok()?;
                        format!("event: reviews\ndata: {}\n\n", *reviews.borrow_and_update())
                    }
                    _ = tokio::time::sleep(Duration::from_secs(15)) => ": keep-alive\n\n".to_string(),
                }
            };
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(frame))),
                (evals, reviews, false),
            ))
        },
    );
    let mut r = response(StatusCode::OK, "text/event-stream", "");
    *r.body_mut() = BodyExt::boxed(StreamBody::new(stream));
    r
}

fn no_store() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "this viewer has no results store")
}

async fn eval_page(state: &State, id: &str) -> Response<Body> {
    let Some(store) = &state.store else {
        return no_store();
    };
    let id = segment(id);
    let loaded = store
        .with(move |s| {
            let record = s.eval(&id)?;
            let units = s.units(&record.id, false)?;
            Ok((record, units))
        })
        .await;
    match loaded {
        Ok((record, units)) => {
            let page = tokio::task::spawn_blocking(move || pages::eval(record, units)).await;
            match page {
                Ok(page) => html(page),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        Err(e) => store_error(e),
    }
}

async fn item_page(state: &State, id: &str, item: &str, epoch: u32) -> Response<Body> {
    let Some(store) = &state.store else {
        return no_store();
    };
    let (id, item_id) = (segment(id), item.to_string());
    let loaded = store
        .with(move |s| {
            let record = s.eval(&id)?;
            let unit = s.unit(&record.id, &item_id, epoch)?;
            Ok((record, unit))
        })
        .await;
    match loaded {
        Ok((record, Some(unit))) => html(pages::item(&record, &unit)),
        Ok((record, None)) => error(
            StatusCode::NOT_FOUND,
            &format!("eval {} has no item `{item}` epoch {epoch}", record.id),
        ),
        Err(e) => store_error(e),
    }
}

async fn compare_page(state: &State, a: &str, b: &str) -> Response<Body> {
    let Some(store) = &state.store else {
        return no_store();
    };
    let (a, b) = (a.to_string(), b.to_string());
    let loaded = store
        .with(move |s| {
            let mut out = Vec::new();
            for id in [a, b] {
                let record = s.eval(&id)?;
                let units = s.units(&record.id, false)?;
                out.push((record, units));
            }
            Ok(out)
        })
        .await;
    match loaded {
        Ok(evals) => match tokio::task::spawn_blocking(move || pages::compare(evals)).await {
            Ok(page) => html(page),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_path_segments_decode() {
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
        assert_eq!(segment("HumanEval%2F0"), "HumanEval/0");
    }
}
