//! A tiny hub on 127.0.0.1 for the download tests: one thread, one request per connection
//! (`Connection: close`), serving a set of files in the hub's URL layout:
//! - `GET /api/models/{repo}/revision/{rev}`: the commit and the file list;
//! - `HEAD /{repo}/resolve/{commit}/{path}`: `ETag` and `Content-Length`; for `.safetensors`
//!   files a 302 to `/cdn/{etag}` with `X-Linked-Etag` / `X-Linked-Size`, as the hub answers
//!   for LFS files; for `.jinja` files a same-host 307 to `/cache/{etag}`, as the hub's
//!   resolve cache answers;
//! - `GET` of either place, honouring `Range: bytes=N-` with a 206.
//!
//! `cut_once(path, bytes)` makes the next full GET of that file send its headers (the whole
//! length) and then only `bytes` bytes before closing: a dropped connection mid-file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    /// "Org/Name" → (commit, path → bytes).
    repos: BTreeMap<String, (String, BTreeMap<String, Vec<u8>>)>,
    seen: Vec<Seen>,
    /// path → bytes to send before dropping the connection, used once.
    cut: BTreeMap<String, usize>,
    /// repo → paths in the file list that resolve/ answers 404 for.
    listed_only: BTreeMap<String, Vec<String>>,
}

pub struct HubServer {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    pub fn start() -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            let _ = handle(stream, &state);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                // The listener drops here: later connections are refused.
            })
        };
        HubServer {
            endpoint,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Serves `files` (repo-relative path → bytes) as `repo` at `commit`.
    pub fn add_repo(&self, repo: &str, commit: &str, files: BTreeMap<String, Vec<u8>>) {
        let mut s = self.state.lock().unwrap();
        s.repos.insert(repo.to_string(), (commit.to_string(), files));
    }

    /// Lists `path` in `repo`'s file list without serving it.
    pub fn list_only(&self, repo: &str, path: &str) {
        let mut s = self.state.lock().unwrap();
        s.listed_only
            .entry(repo.to_string())
            .or_default()
            .push(path.to_string());
    }

    pub fn cut_once(&self, path: &str, bytes: usize) {
        self.state.lock().unwrap().cut.insert(path.to_string(), bytes);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Stops serving: the port is closed when this returns.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fake, file-name-safe ETag: FNV-1a of the bytes and their length, in hex.
pub fn etag_of(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}{:08x}", bytes.len())
}

fn handle(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut s = state.lock().unwrap();
    s.seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
        authorization,
    });
    let mut out = stream;
    let reply = route(&mut s, &method, &path, range.as_deref());
    drop(s);
    let mut head = format!("HTTP/1.1 {}\r\nConnection: close\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let n = reply.send.unwrap_or(reply.body.len()).min(reply.body.len());
        out.write_all(&reply.body[..n])?;
    }
    out.flush()?;
    // Drain nothing more; closing the socket ends the response (or cuts it short).
    let _ = out.shutdown(std::net::Shutdown::Both);
    let _ = reader.read(&mut [0u8; 1]);
    Ok(())
}

struct Reply {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes (a cut connection).
    send: Option<usize>,
}

fn reply(status: &'static str, body: Vec<u8>) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Length".into(), body.len().to_string())],
        body,
        send: None,
    }
}

fn route(s: &mut State, method: &str, path: &str, range: Option<&str>) -> Reply {
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // {org}/{name}/revision/{rev}
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() == 4 && parts[2] == "revision" {
            let repo = format!("{}/{}", parts[0], parts[1]);
            if let Some((commit, files)) = s.repos.get(&repo) {
                if parts[3] == "main" || parts[3] == commit {
                    let extra = s.listed_only.get(&repo).cloned().unwrap_or_default();
                    let siblings: Vec<_> = files
                        .keys()
                        .chain(extra.iter())
                        .map(|k| serde_json::json!({"rfilename": k}))
                        .collect();
                    let body = serde_json::json!({"id": repo, "sha": commit, "siblings": siblings});
                    return reply("200 OK", body.to_string().into_bytes());
                }
                return reply("404 Not Found", br#"{"error":"Revision Not Found"}"#.to_vec());
            }
        }
        return reply("404 Not Found", br#"{"error":"Repository not found"}"#.to_vec());
    }
    let blob = path.strip_prefix("/cdn/").or_else(|| path.strip_prefix("/cache/"));
    let (file_key, bytes) = if let Some(etag) = blob {
        let found = s
            .repos
            .values()
            .flat_map(|(_, files)| files.iter())
            .find(|(_, b)| etag_of(b) == etag)
            .map(|(k, b)| (k.clone(), b.clone()));
        match found {
            Some(f) => f,
            None => return reply("404 Not Found", Vec::new()),
        }
    } else {
        // /{org}/{name}/resolve/{commit}/{path...}
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if parts.len() != 5 || parts[2] != "resolve" {
            return reply("404 Not Found", Vec::new());
        }
        let repo = format!("{}/{}", parts[0], parts[1]);
        let Some((commit, files)) = s.repos.get(&repo) else {
            return reply("404 Not Found", Vec::new());
        };
        let Some(bytes) = files.get(parts[4]).filter(|_| parts[3] == commit) else {
            return reply("404 Not Found", b"Entry not found".to_vec());
        };
        let etag = etag_of(bytes);
        if parts[4].ends_with(".jinja") {
            // The hub's same-host redirect for small files (its resolve cache).
            let mut r = reply("307 Temporary Redirect", Vec::new());
            r.headers.push(("Location".into(), format!("/cache/{etag}")));
            r.headers.push(("ETag".into(), format!("\"{etag}\"")));
            return r;
        }
        if parts[4].ends_with(".safetensors") {
            let mut r = reply("302 Found", Vec::new());
            r.headers.push(("Location".into(), format!("/cdn/{etag}")));
            r.headers.push(("X-Linked-Etag".into(), format!("\"{etag}\"")));
            r.headers.push(("X-Linked-Size".into(), bytes.len().to_string()));
            return r;
        }
        if method == "HEAD" {
            let mut r = reply("200 OK", Vec::new());
            r.headers = vec![
                ("Content-Length".into(), bytes.len().to_string()),
                ("ETag".into(), format!("\"{etag}\"")),
            ];
            return r;
        }
        (parts[4].to_string(), bytes.clone())
    };
    if method == "HEAD" {
        let mut r = reply("200 OK", Vec::new());
        r.headers = vec![
            ("Content-Length".into(), bytes.len().to_string()),
            ("ETag".into(), format!("\"{}\"", etag_of(&bytes))),
        ];
        return r;
    }
    let start: usize = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if start > bytes.len() {
        return reply("416 Range Not Satisfiable", Vec::new());
    }
    let total = bytes.len();
    let mut r = if range.is_some() {
        let mut r = reply("206 Partial Content", bytes[start..].to_vec());
        r.headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{}/{total}", total.saturating_sub(1)),
        ));
        r
    } else {
        reply("200 OK", bytes)
    };
    if range.is_none() {
        if let Some(n) = s.cut.remove(&file_key) {
            r.send = Some(n);
        }
    }
    r
}
