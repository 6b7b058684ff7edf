//! An OpenAI-compatible mock server on 127.0.0.1 with fault injection.
//!
//! A raw HTTP/1.1 server on tokio (no framework): faults such as truncated
//! bodies, stalls and dropped connections need control of the bytes on the
//! wire. Faults are consumed one per request in order; when none are left
//! every request gets a normal reply. Also used by `benches/openai.rs`.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// A normal reply.
    Ok,
    /// An error status, with an optional `Retry-After` and a JSON body.
    Status {
        code: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
    },
    /// Wait this long before a normal reply.
    Stall(Duration),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 whose body stops halfway (the connection closes).
    Truncated,
    /// 200 without a `usage` block.
    NoUsage,
    /// A normal reply whose usage says this many prompt tokens came from
    /// the server's prompt cache (`prompt_tokens_details.cached_tokens`,
    /// as llama-server and OpenAI report it).
    CachedPrompt(u64),
    /// 200 with an HTML page.
    WrongContentType,
    /// 200 with a body of this many bytes.
    Huge(usize),
    /// Close the connection without replying.
    Drop,
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
}

type ReplyFn = dyn Fn(&serde_json::Value) -> String + Send + Sync;

struct State {
    /// When each request was read (benchmarks: time to first request).
    arrivals: Mutex<Vec<std::time::Instant>>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    faults: Mutex<VecDeque<Fault>>,
    seen: Mutex<Vec<Seen>>,
    latency: Duration,
    reply: Box<ReplyFn>,
    record: bool,
}

pub struct MockServer {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The default replies: JSON feedback for structured requests, else a haiku
/// that passes the self-refine checks.
pub fn default_reply(req: &serde_json::Value) -> String {
    if req.get("response_format").is_some() {
        r#"{"score": 8, "feedback": "Keep the three lines."}"#.to_string()
    } else {
        "Old code untangles,\ngreen tests keep watch through the night,\nthe build breathes again."
            .to_string()
    }
}

impl MockServer {
    pub async fn start(faults: Vec<Fault>) -> MockServer {
        Self::start_with(faults, Duration::ZERO, Box::new(default_reply), true).await
    }

    /// `record: false` skips keeping requests (for load tests).
    pub async fn start_with(
        faults: Vec<Fault>,
        latency: Duration,
        reply: Box<ReplyFn>,
        record: bool,
    ) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let state = Arc::new(State {
            arrivals: Mutex::new(Vec::new()),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            faults: Mutex::new(faults.into()),
            seen: Mutex::new(Vec::new()),
            latency,
            reply,
            record,
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, s).await;
                });
            }
        });
        MockServer { url, state, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// When each request so far was read, in order.
    #[allow(dead_code)]
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.state.arrivals.lock().unwrap().clone()
    }

    /// The most requests the server was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn push_faults(&self, faults: Vec<Fault>) {
        self.state.faults.lock().unwrap().extend(faults);
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read the head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.lines();
        let path = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut length = 0usize;
        let mut authorization = None;
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: serde_json::Value = serde_json::from_slice(&buf[head_end..head_end + length])
            .unwrap_or(serde_json::Value::Null);
        buf.drain(..head_end + length);
        let fault = state
            .faults
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Fault::Ok);
        if state.record {
            state.seen.lock().unwrap().push(Seen {
                path: path.clone(),
                authorization,
                body: body.clone(),
            });
        }
        let _answering = InFlight::enter(&state);
        state
            .arrivals
            .lock()
            .unwrap()
            .push(std::time::Instant::now());
        if !state.latency.is_zero() {
            tokio::time::sleep(state.latency).await;
        }
        let ok_body = || reply_body(&path, &body, &state, true);
        let response: Vec<u8> = match fault {
            Fault::Ok => http(200, "application/json", &ok_body(), None),
            Fault::Status {
                code,
                retry_after,
                body,
            } => http(code, "application/json", body, retry_after),
            Fault::Stall(d) => {
                tokio::time::sleep(d).await;
                http(200, "application/json", &ok_body(), None)
            }
            Fault::Malformed => http(200, "application/json", "{\"choices\": [", None),
            Fault::Truncated => {
                let full = ok_body();
                let mut r = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", full.len())
                    .into_bytes();
                r.extend_from_slice(&full.as_bytes()[..full.len() / 2]);
                stream.write_all(&r).await?;
                return Ok(());
            }
            Fault::CachedPrompt(n) => {
                let mut v: serde_json::Value =
                    serde_json::from_str(&reply_body(&path, &body, &state, true))
                        .expect("the mock's own reply is JSON");
                v["usage"]["prompt_tokens_details"] = serde_json::json!({ "cached_tokens": n });
                http(200, "application/json", &v.to_string(), None)
            }
            Fault::NoUsage => http(
                200,
                "application/json",
                &reply_body(&path, &body, &state, false),
                None,
            ),
            Fault::WrongContentType => http(
                200,
                "text/html",
                "<html><body>Bad gateway</body></html>",
                None,
            ),
            Fault::Huge(n) => http(
                200,
                "application/json",
                &format!("{{\"pad\": \"{}\"}}", "x".repeat(n)),
                None,
            ),
            Fault::Drop => return Ok(()),
        };
        stream.write_all(&response).await?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn http(code: u16, content_type: &str, body: &str, retry_after: Option<&str>) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let retry = retry_after
        .map(|r| format!("retry-after: {r}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{retry}connection: keep-alive\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn reply_body(path: &str, req: &serde_json::Value, state: &State, usage: bool) -> String {
    if path.ends_with("/embeddings") {
        let inputs = req["input"].as_array().cloned().unwrap_or_default();
        let data: Vec<serde_json::Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let t = t.as_str().unwrap_or("");
                serde_json::json!({ "index": i, "embedding": [t.len() as f32, words(t) as f32, 1.0] })
            })
            .collect();
        return serde_json::json!({ "object": "list", "data": data, "usage": { "prompt_tokens": 3, "total_tokens": 3 } }).to_string();
    }
    let n = req["n"].as_u64().unwrap_or(1);
    let prompt: u64 = req["messages"].as_array().map_or(0, |m| {
        m.iter()
            .map(|m| words(m["content"].as_str().unwrap_or("")))
            .sum()
    });
    let content = (state.reply)(req);
    let choices: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let mut c = serde_json::json!({
                "index": i,
                "message": { "role": "assistant", "content": content },
                "finish_reason": "stop",
            });
            if req["logprobs"].as_bool() == Some(true) {
                // The first token's logprobs agree with the reply: a "No"
                // is a confident No, anything else a confident Yes.
                let (first, other) = if content.trim_start().starts_with("No") {
                    ("No", "Yes")
                } else {
                    ("Yes", "No")
                };
                c["logprobs"] = serde_json::json!({ "content": [{
                    "token": first, "logprob": -0.1,
                    "top_logprobs": [{ "token": first, "logprob": -0.1 }, { "token": other, "logprob": -2.4 }]
                }]});
            }
            c
        })
        .collect();
    let mut out = serde_json::json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 0,
        "model": req["model"], "choices": choices,
    });
    if usage {
        let completion = words(&content) * n;
        out["usage"] = serde_json::json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
    }
    out.to_string()
}

/// Counts a request from the moment it is read until it is answered (or
/// the connection goes).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> InFlight<'a> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = state.in_flight.fetch_add(1, SeqCst) + 1;
        state.max_in_flight.fetch_max(now, SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
