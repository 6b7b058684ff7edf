//! A Hugging Face Hub stand-in on 127.0.0.1: serves
//! `GET /{owner}/{repo}/resolve/{revision}/{file}` with the headers the Hub
//! sends (`etag`, `x-repo-commit`) and byte ranges, which is all a file
//! download needs. Runs on a thread of its own so blocking callers can use it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub struct MockHub {
    pub endpoint: String,
    /// Requests served, by path.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicUsize>,
    addr: std::net::SocketAddr,
}

impl MockHub {
    /// Serves `files` (path after `/resolve/main/` in `owner/repo` → bytes).
    pub fn start(repo: &str, files: HashMap<String, Arc<Vec<u8>>>) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicUsize::new(0));
        let prefix = format!("/{repo}/resolve/main/");
        let files = Arc::new(files);
        {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) != 0 {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let files = files.clone();
                    let requests = requests.clone();
                    let prefix = prefix.clone();
                    std::thread::spawn(move || serve(stream, &prefix, &files, &requests));
                }
            });
        }
        MockHub {
            endpoint: format!("http://{addr}"),
            requests,
            stop,
            addr,
        }
    }

    /// Stops accepting connections.
    pub fn shutdown(&self) {
        self.stop.store(1, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    mut stream: TcpStream,
    prefix: &str,
    files: &HashMap<String, Arc<Vec<u8>>>,
    requests: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("range")
            {
                let spec = value.trim().trim_start_matches("bytes=");
                if let Some((a, b)) = spec.split_once('-') {
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                }
            }
        }
        requests.lock().unwrap().push(path.clone());
        let file = path.strip_prefix(prefix).and_then(|f| files.get(f));
        let response = match file {
            None => {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 15\r\nx-error-code: EntryNotFound\r\n\r\nEntry not found"
                    .to_vec()
            }
            Some(bytes) => {
                let (start, end) = range.unwrap_or((0, bytes.len() - 1));
                let end = end.min(bytes.len() - 1);
                let body = &bytes[start..=end];
                let mut head = format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{end}/{}\r\netag: \"etag-{}\"\r\nx-repo-commit: {COMMIT}\r\n\r\n",
                    body.len(),
                    bytes.len(),
                    bytes.len()
                )
                .into_bytes();
                head.extend_from_slice(body);
                head
            }
        };
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}
