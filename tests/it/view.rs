//! `redraft view`: the HTTP API and pages against SQLite and PostgreSQL
//! stores, live updates, the token and Host checks, hostile strings, and
//! the app driven in headless Chromium (the list's count rising, item
//! filters, an item's diff, and a review accepted and rejected edit by
//! edit).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redraft::eval::store::{self, SharedStore};
use redraft::view::{self, ViewConfig};
use serde_json::{Value, json};

use crate::support::{fixtures, redraft, redraft_command, review_url, root, skip};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redraft-view-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `eval` of the view fixture (30 items, two with hostile ids and outputs)
/// into `store`; its id.
fn fixture_eval(store: &str, extra: &[&str]) -> String {
    fixture_eval_on(store, &fixtures().join("view/items.jsonl"), extra)
}

/// `eval` of the view fixture's workflow over `data`.
fn fixture_eval_on(store: &str, data: &Path, extra: &[&str]) -> String {
    let wf = fixtures().join("view/view.yaml").display().to_string();
    let data = data.display().to_string();
    let mut args = vec![
        "eval", &wf, "--data", &data, "--answer", "answer", "--store", store, "--json", "-q",
    ];
    args.extend_from_slice(extra);
    let o = redraft(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["eval"].as_str().unwrap().to_string()
}

/// One HTTP/1.1 request to the viewer: status, headers (lowercase names)
/// and body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("the viewer answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    (
        status,
        headers,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn enc(s: &str) -> String {
    redraft::eval::report::query_value(s)
}

/// No model or data-set text reaches a page as markup.
fn assert_escaped(page: &str) {
    for raw in [
        "<script>window.__xss",
        "<img src=x",
        "</textarea>\"",
        "<b>bold",
    ] {
        assert!(!page.contains(raw), "unescaped `{raw}` in the page");
    }
}

async fn viewer(location: &str, token: Option<&str>) -> view::Viewer {
    // Off the runtime: a PostgreSQL store drives a runtime of its own.
    let at = location.to_string();
    let opened = tokio::task::spawn_blocking(move || {
        store::open_with(
            &at,
            &store::StoreOptions {
                access: store::Access::ReadOnly,
                ..Default::default()
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    view::start(
        ViewConfig {
            token: token.map(str::to_string),
            poll: Duration::from_millis(100),
            ..ViewConfig::default()
        },
        Some(SharedStore::new(opened)),
    )
    .await
    .unwrap()
}

/// Everything but the browser, against one store location.
async fn serves_a_store(location: &str) {
    let a = fixture_eval(location, &["--scorer", "numeric"]);
    let b = fixture_eval(location, &["--scorer", "exact"]);
    let v = viewer(location, None).await;
    let addr = v.addr();

    let (status, headers, page) = http(addr, "GET", "/", &[], None).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-page=list"));
    let csp = headers
        .iter()
        .find(|(k, _)| k == "content-security-policy")
        .unwrap();
    assert!(csp.1.contains("default-src 'self'"), "{csp:?}");
    let (status, _, js) = http(addr, "GET", "/assets/app.js", &[], None).await;
    assert_eq!(status, 200);
    assert!(js.contains("textContent") && !js.contains("innerHTML"));

    // The list (the poller's first read may take a moment).
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let (_, _, body) = http(addr, "GET", "/api/evals", &[], None).await;
        let list: Value = serde_json::from_str(&body).unwrap();
        if list.as_array().unwrap().len() >= 2 || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == a.as_str())
        .unwrap();
    assert_eq!(
        (row["done"].as_i64(), row["units"].as_i64()),
        (Some(30), Some(30))
    );
    assert!(row["tokens"].as_u64().unwrap() > 0);

    // One eval: the report, with rows the app filters on and item links.
    let (status, _, page) = http(addr, "GET", &format!("/e/{a}"), &[], None).await;
    assert_eq!(status, 200);
    assert_escaped(&page);
    assert!(page.contains("data-flip=\"neg\"") && page.contains("data-flip=\"pos\""));
    assert_eq!(page.matches("data-flip=\"right\"").count(), 28);
    assert!(page.contains("/assets/app.js") && page.contains("id=items"));
    let neg = "flip-neg <script>window.__xss='id'</script>";
    assert!(page.contains(&format!("/e/{a}/item?id={}&amp;epoch=0", enc(neg))));
    assert!(
        !page.contains("<h2>Revision chains</h2>"),
        "items have pages instead"
    );

    // One item: its chain with the diff, verdict and calls, all escaped.
    let (status, _, item) = http(
        addr,
        "GET",
        &format!("/e/{a}/item?id={}&epoch=0", enc(neg)),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{item}");
    assert_escaped(&item);
    assert!(item.contains("&lt;script&gt;window.__xss"), "{item}");
    assert!(
        item.contains("<del>") && item.contains("<ins>5.</ins>"),
        "{item}"
    );
    assert!(item.contains("id=calls") && item.contains("<td>draft</td>"));
    let (status, _, _) = http(
        addr,
        "GET",
        &format!("/e/{a}/item?id=nope&epoch=0"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, body) = http(addr, "GET", "/e/ffffffffffffffff", &[], None).await;
    assert_eq!(status, 404, "{body}");

    // A comparison: the exact scorer fails every "The answer is N." reply.
    let (status, _, cmp) = http(addr, "GET", &format!("/compare?a={a}&b={b}"), &[], None).await;
    assert_eq!(status, 200);
    assert_escaped(&cmp);
    assert!(cmp.contains("id=flipped") && cmp.contains("McNemar"));
    assert_eq!(
        cmp.matches("<section class=flip ").count(),
        29,
        "right in a, wrong in b"
    );
    // The same ids over other reference answers are other questions: not
    // paired, so nothing flips (as `redraft compare` counts).
    let other =
        std::env::temp_dir().join(format!("redraft-view-{}-other.jsonl", std::process::id()));
    let items = std::fs::read_to_string(fixtures().join("view/items.jsonl")).unwrap();
    std::fs::write(
        &other,
        items.replace(r#""answer": "4""#, r#""answer": "4.0""#),
    )
    .unwrap();
    let c = fixture_eval_on(location, &other, &["--scorer", "exact"]);
    let (_, _, cmp) = http(addr, "GET", &format!("/compare?a={a}&b={c}"), &[], None).await;
    assert_eq!(cmp.matches("<section class=flip ").count(), 0);
    assert!(cmp.contains("No item is right in one and wrong in the other"));
    // The same data set with other inputs (a method's own): paired by id,
    // in the methods table, the flip matrix and the side-by-side list alike.
    let d = fixture_eval(location, &["--scorer", "exact", "--map", "task=id"]);
    let (_, _, cmp) = http(addr, "GET", &format!("/compare?a={a}&b={d}"), &[], None).await;
    assert_eq!(cmp.matches("<section class=flip ").count(), 29);
    assert!(cmp.contains("NFR 96.7%"), "the flip matrix pairs them too");

    // What the server refuses.
    let (status, _, _) = http(addr, "GET", "/", &[("Host", "evil.example:80")], None).await;
    assert_eq!(
        status, 421,
        "another site's page (DNS rebinding) is refused"
    );
    let (status, _, _) = http(addr, "GET", "/nope", &[], None).await;
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, "DELETE", "/", &[], None).await;
    assert_eq!(status, 405);
    let (status, _, body) = http(
        addr,
        "POST",
        "/api/reviews/1/submit",
        &[],
        Some(&json!({"reviewer": "x", "decisions": []})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = http(addr, "POST", "/api/reviews/1/submit", &[], None).await;
    assert_eq!(status, 400, "no body");

    // Live: a new eval appears on the stream while it runs.
    let started = Instant::now();
    let store_at = location.to_string();
    let running = std::thread::spawn(move || {
        fixture_eval(&store_at, &["--scorer", "numeric", "--name", "live"])
    });
    let (mut seen, mut latency) = (false, None);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(format!("GET /api/live HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut text = String::new();
        while Instant::now() < started + Duration::from_secs(30) {
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            // The newest list on the stream, and the "live" eval in it.
            let newest = text
                .rsplit("event: evals\ndata: ")
                .find_map(|e| serde_json::from_str::<Value>(e.split("\n\n").next()?).ok());
            let live = newest
                .as_ref()
                .and_then(|l| l.as_array()?.iter().find(|e| e["name"] == "live").cloned());
            if let Some(e) = live {
                seen = true;
                latency.get_or_insert(started.elapsed());
                if e["done"] == 30 {
                    break;
                }
            }
        }
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{}",
            &text[..text.len().min(300)]
        );
        assert!(text.contains("text/event-stream") && text.contains("event: evals"));
    }
    running.join().unwrap();
    assert!(seen, "the running eval reached the live stream");
    eprintln!("live: the new eval showed after {latency:?}");

    // With a token: refused without it, a cookie after the first use.
    let t = viewer(location, Some("s3cret")).await;
    let (status, _, _) = http(t.addr(), "GET", "/api/evals", &[], None).await;
    assert_eq!(status, 401);
    let (status, headers, _) = http(t.addr(), "GET", "/?token=s3cret", &[], None).await;
    assert_eq!(status, 200);
    let cookie = headers.iter().find(|(k, _)| k == "set-cookie").unwrap();
    assert!(cookie.1.starts_with("redraft_token=s3cret;") && cookie.1.contains("HttpOnly"));
    for (cookie, status) in [("redraft_token=s3cret", 200), ("redraft_token=s3creT", 401)] {
        let (got, _, _) = http(t.addr(), "GET", "/api/evals", &[("Cookie", cookie)], None).await;
        assert_eq!(got, status, "{cookie}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_viewer_serves_a_sqlite_store() {
    let dir = temp_dir("sqlite");
    serves_a_store(&dir.join("v.db").display().to_string()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_viewer_serves_a_postgres_store() {
    let Ok(url) = std::env::var("REDRAFT_TEST_POSTGRES") else {
        return skip("REDRAFT_TEST_POSTGRES");
    };
    // The fixture's evals have ids of their own; a second run resumes them.
    serves_a_store(&url).await;
}

#[test]
fn view_flags_are_checked() {
    let o = redraft(&["view", "--store", "/no/such/store.db", "--port", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not exist"), "{err}");
    let o = redraft(&["view", "--poll", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--poll soon"));
    // A host name other than localhost is not looked up.
    let o = redraft(&["view", "--host", "example.com"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("an IP address such as 127.0.0.1"), "{err}");
}

/// Stopped by a signal, the viewer ends the line the signal began and
/// exits as every command does: 128 + the signal's number.
#[test]
fn the_viewer_stops_on_each_signal_with_its_exit_code() {
    let dir = temp_dir("signals");
    let store = dir.join("r.db").display().to_string();
    fixture_eval(&store, &[]);
    for (sig, code, name, host) in [
        (libc::SIGTERM, 143, "terminated (SIGTERM)", "127.0.0.1"),
        (libc::SIGHUP, 129, "hangup (SIGHUP)", "localhost"),
        (libc::SIGINT, 130, "interrupted", "127.0.0.1"),
    ] {
        let mut child = redraft_command()
            .args(["view", "--store", &store, "--host", host])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Serving once the URL is out (the handlers are installed before).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("redraft view: http://127.0.0.1:"),
            "{line}"
        );
        // SAFETY: signalling our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(
            err.ends_with(&format!(
                "{name}: stopping the viewer; the store was only read\n"
            )),
            "{err:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM while a run or an eval waits for reviews in the browser, sent
/// as soon as the review URL is out (what a script that waits for the URL
/// does): exit 143 with the summary written, as without a viewer.
#[test]
fn a_signal_while_reviews_wait_in_the_browser_stops_cleanly() {
    let dir = temp_dir("review-signal");
    let store = dir.join("r.db").display().to_string();
    let r3 = root().join("workflows/r3.yaml").display().to_string();
    let texts = fixtures().join("view/texts.jsonl").display().to_string();
    let run: &[&str] = &["run", &r3, "--review", "web", "--json", "-q"];
    let eval: &[&str] = &[
        "eval", &r3, "--data", &texts, "--answer", "document", "--scorer", "contains", "--review",
        "web", "--store", &store, "--json", "-q",
    ];
    for args in [run, eval] {
        let mut child = redraft_command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        review_url(&mut child);
        // SAFETY: signalling our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(143), "{}", args[0]);
        let summary: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: {e}: {:?}", args[0], out.stdout));
        assert!(summary.is_object(), "{}: {summary}", args[0]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- the browser ----

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("REDRAFT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    path.exists().then_some(path)
}

/// A headless Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: JSON messages separated by NUL on fds 3 and
/// 4), with one page. Console errors and uncaught exceptions are kept.
struct Browser {
    child: std::process::Child,
    to: std::fs::File,
    from: std::sync::mpsc::Receiver<Value>,
    next: u64,
    session: String,
    problems: Vec<String>,
}

impl Browser {
    fn launch(exe: &Path, profile: &Path) -> Browser {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let pipe = || {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            (fds[0], fds[1])
        };
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let mut command = Command::new(exe);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        unsafe {
            command.pre_exec(move || {
                // Out of the way first, so that one dup2 cannot overwrite
                // the other's source (a pipe end may already be fd 3 or 4).
                let (r, w) = (
                    libc::fcntl(cmd_read, libc::F_DUPFD, 10),
                    libc::fcntl(out_write, libc::F_DUPFD, 10),
                );
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        unsafe {
            libc::close(cmd_read);
            libc::close(out_write);
        }
        let to = unsafe { std::fs::File::from_raw_fd(cmd_write) };
        let reader = unsafe { std::fs::File::from_raw_fd(out_read) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).map(|n| n > 0).unwrap_or(false) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            child,
            to,
            from: rx,
            next: 0,
            session: String::new(),
            problems: Vec::new(),
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Runtime.enable", json!({}));
        b.call("Log.enable", json!({}));
        b.call("Page.enable", json!({}));
        b
    }

    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.problems.push(format!("exception: {params}")),
            Some("Runtime.consoleAPICalled")
                if params["type"] == "error" || params["type"] == "warning" =>
            {
                self.problems.push(format!("console: {params}"))
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.problems.push(format!("log: {}", params["entry"]))
            }
            _ => {}
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    /// Evaluates `expr` in the page (promises awaited); its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    fn wait(&mut self, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.eval(expr) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = self.eval("document.body ? document.body.innerText.slice(0, 3000) : ''");
        panic!(
            "timed out waiting for {what} ({expr}); the page says:\n{}",
            text.as_str().unwrap_or("")
        );
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait("document.readyState === 'complete'", "the page to load");
    }

    fn key(&mut self, key: &str) {
        let code = if key == "Enter" {
            13
        } else {
            key.to_ascii_uppercase().as_bytes()[0] as u32
        };
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({"type": kind, "key": key, "windowsVirtualKeyCode": code});
            if kind == "keyDown" && key.len() == 1 {
                p["text"] = json!(key);
            }
            if key == "Enter" && kind == "keyDown" {
                p["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_works_in_a_real_browser() {
    let Some(exe) = chromium() else {
        return skip("Chromium (/usr/bin/chromium or REDRAFT_CHROMIUM)");
    };
    let dir = temp_dir("browser");
    let location = dir.join("v.db").display().to_string();
    let a = fixture_eval(&location, &["--scorer", "numeric"]);
    let v = viewer(&location, None).await;
    let base = format!("http://{}", v.addr());
    let mut b = tokio::task::block_in_place(|| Browser::launch(&exe, &dir.join("profile")));

    tokio::task::block_in_place(|| {
        // The list, and a running eval's count rising in it.
        b.open(&format!("{base}/"));
        b.wait(
            "document.body.getAttribute('data-app-ready') === '1'",
            "the list",
        );
        b.wait(
            "document.querySelectorAll('#evals tbody tr').length === 1",
            "one eval",
        );
        let mut eval = redraft_command();
        eval.args([
            "eval",
            &fixtures().join("view/view.yaml").display().to_string(),
            "--data",
            &fixtures().join("view/items.jsonl").display().to_string(),
            "--answer",
            "answer",
            "--scorer",
            "numeric",
            "--store",
            &location,
            "--name",
            "running",
            "--concurrency",
            "1",
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut running = eval.spawn().unwrap();
        let done = "(function(){var r=document.querySelector('#evals tbody tr:first-child');return r && r.cells[1].textContent==='running' ? Number(r.getAttribute('data-done')) : -1;})()";
        b.wait(
            &format!("{done} >= 1 && {done} < 30"),
            "the running eval, part done",
        );
        let first = b.eval(done).as_i64().unwrap();
        b.wait(
            &format!("{done} > {first}"),
            "its count to rise without a reload",
        );
        assert!(running.wait().unwrap().success());
        b.wait(&format!("{done} === 30"), "the finished count");

        // One eval: filter to flipped items, open one, see its diff.
        b.open(&format!("{base}/e/{a}"));
        b.wait(
            "document.body.getAttribute('data-app-ready') === '1'",
            "the eval page",
        );
        b.eval("var s=document.getElementById('show'); s.value='flipped'; s.dispatchEvent(new Event('change')); true");
        assert_eq!(
            b.eval("document.getElementById('items').getAttribute('data-shown')"),
            json!("2")
        );
        b.eval("var s=document.getElementById('show'); s.value='neg'; s.dispatchEvent(new Event('change')); true");
        assert_eq!(
            b.eval("document.getElementById('items').getAttribute('data-shown')"),
            json!("1")
        );
        b.eval("Array.from(document.querySelectorAll('#items tbody tr')).find(r => r.style.display !== 'none').querySelector('a').click(); true");
        b.wait(
            "location.pathname.endsWith('/item') && document.readyState === 'complete'",
            "the item page",
        );
        b.wait("!!document.querySelector('#chain ins')", "the diff");
        // The hostile revision shows as text, and the answer's change as a diff.
        let ins =
            b.eval("Array.from(document.querySelectorAll('#chain ins')).map(e => e.textContent)");
        let ins: Vec<&str> = ins
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(ins.last(), Some(&"5."), "{ins:?}");
        assert!(ins.iter().any(|i| i.contains("<img")), "{ins:?}");
        assert!(
            b.eval("document.querySelector('h1').textContent")
                .as_str()
                .unwrap()
                .contains("<script>")
        );
        assert_eq!(
            b.eval("typeof window.__xss"),
            json!("undefined"),
            "no hostile text ran"
        );
    });

    // A review in the browser: accept three edits and reject one with the
    // keyboard; the run applies exactly those (as with a decisions file).
    let mut run = redraft_command();
    run.args([
        "run",
        &root().join("workflows/r3.yaml").display().to_string(),
        "--review",
        "web",
        "-q",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = run.spawn().unwrap();
    let url = review_url(&mut child);
    tokio::task::block_in_place(|| {
        b.open(&url);
        b.wait(
            "document.querySelectorAll('section.review').length === 1",
            "the first review",
        );
        assert_eq!(
            b.eval("document.querySelectorAll('section.review .edit').length"),
            json!(4)
        );
        for k in ["a", "a", "r", "a"] {
            b.key(k);
        }
        assert_eq!(
            b.eval("document.querySelectorAll('.edit.accepted').length"),
            json!(3)
        );
        assert_eq!(
            b.eval("document.querySelectorAll('.edit.rejected').length"),
            json!(1)
        );
        b.eval("document.querySelector('section.review .comment').value='the third changes the meaning'; true");
        let before_submit = b.problems.clone();
        assert!(
            before_submit.is_empty(),
            "console errors: {before_submit:#?}"
        );
        b.key("Enter");
    });
    // The run applies the decisions and ends (its viewer with it).
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success());
    let out = String::from_utf8_lossy(&done.stdout).into_owned();
    let from_file = redraft(&[
        "run",
        &root().join("workflows/r3.yaml").display().to_string(),
        "--review",
        &root()
            .join("workflows/replies/r3.decisions.yaml")
            .display()
            .to_string(),
        "-q",
    ]);
    assert_eq!(
        out,
        String::from_utf8_lossy(&from_file.stdout),
        "the same decisions, the same text"
    );
    assert!(
        out.contains("on time"),
        "the rejected edit was not applied: {out}"
    );

    // After the run ended, only the page's requests to its gone viewer may fail.
    let port = url
        .split(':')
        .nth(2)
        .and_then(|p| p.split('/').next())
        .unwrap_or("?")
        .to_string();
    let problems: Vec<String> = b
        .problems
        .iter()
        .filter(|p| !p.contains(&port))
        .cloned()
        .collect();
    assert!(problems.is_empty(), "console errors: {problems:#?}");
    drop(v);
}

/// `redraft eval --review web`: each item's review waits on the page,
/// marked with the item, held by the reviewer who claims it; the eval ends
/// when both are decided, with the decisions in its review table.
#[tokio::test(flavor = "multi_thread")]
async fn an_eval_sends_each_items_reviews_to_one_reviewer() {
    let dir = temp_dir("eval-review");
    let store = dir.join("r.db").display().to_string();
    let mut child = redraft_command()
        .args([
            "eval",
            &root().join("workflows/r3.yaml").display().to_string(),
            "--data",
            &fixtures().join("view/texts.jsonl").display().to_string(),
            "--answer",
            "document",
            "--scorer",
            "contains",
            "--review",
            "web",
            "--store",
            &store,
            "--json",
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = review_url(&mut child);
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/review")
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = loop {
        let (_, _, body) = http(addr, "GET", "/api/reviews?reviewer=ann", &[], None).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["pending"].as_array().unwrap().len() == 2 || Instant::now() > deadline {
            break v["pending"].as_array().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut items: Vec<&str> = pending
        .iter()
        .map(|p| p["item"].as_str().unwrap())
        .collect();
    items.sort();
    assert_eq!(items, ["text-1 <b>x</b>", "text-2"]);
    let (one, two) = (
        pending[0]["id"].as_u64().unwrap(),
        pending[1]["id"].as_u64().unwrap(),
    );
    let post = |id: u64, action: &'static str, who: &'static str, d: Value| {
        let body = json!({"reviewer": who, "decisions": d});
        async move {
            http(
                addr,
                "POST",
                &format!("/api/reviews/{id}/{action}"),
                &[],
                Some(&body),
            )
            .await
            .0
        }
    };
    assert_eq!(post(two, "claim", "bob", json!(null)).await, 200);
    let (_, _, body) = http(addr, "GET", "/api/reviews?reviewer=ann", &[], None).await;
    assert!(body.contains("\"taken_by\":\"bob\""), "{body}");
    assert_eq!(
        post(two, "submit", "ann", json!([true, true, true, true])).await,
        409
    );
    assert_eq!(
        post(one, "submit", "ann", json!([true, true, false, true])).await,
        200
    );
    assert_eq!(
        post(two, "submit", "bob", json!([true, true, true, true])).await,
        200
    );
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success());
    let out = String::from_utf8_lossy(&done.stdout).into_owned();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metrics"]["done"], 2);
    assert_eq!(v["metrics"]["reviews"][0]["accepted"], 7);
    assert_eq!(v["metrics"]["reviews"][0]["proposed"], 8);
}
