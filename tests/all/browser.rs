//! Headless Chromium driven over the DevTools protocol: open a page, run
//! JavaScript in it, wait for a condition, take a screenshot. Debian's
//! `chromium` is installed when missing (as root, with apt-get), like the
//! other tools the tests need; elsewhere the error says what to install.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Flags for a quiet, self-contained headless browser.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--window-size=1300,1100",
    "--remote-debugging-port=0",
];

pub struct Browser {
    child: Child,
    ws: WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: `$TERN_CHROMIUM`, else `chromium` (installed with
/// apt-get when missing and this is Debian as root).
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("TERN_CHROMIUM") {
        return p.into();
    }
    tern_artifacts::tools::debian_tool(
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        "chromium",
        "the dashboard test needs Chromium: install Debian's `chromium` package \
         (`apt-get install -y chromium`; .ci/run does this) or set TERN_CHROMIUM",
    )
}

impl Browser {
    /// Starts headless Chromium and attaches to its first tab. It trusts
    /// the tests' cluster CA: a server whose chain holds that CA (by the
    /// SHA-256 of its public key) is accepted, as a browser that imported
    /// `ca.pem` would.
    pub fn start() -> Browser {
        use base64::Engine;
        let ca = crate::nodes::test_ca();
        let spki = tern_api::tls::cert_info(ca.cert_der()).unwrap().spki_sha256;
        let pin = base64::engine::general_purpose::STANDARD.encode(spki);
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium())
            .args(FLAGS)
            .arg(format!("--ignore-certificate-errors-spki-list={pin}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(i) = line.find("ws://") {
                        let _ = tx.send(line[i..].trim().to_string());
                        sent = true;
                    }
                }
                // Keep draining, so that chromium never blocks on stderr.
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not print its DevTools address within 60 s");
        let port: u16 = browser_ws
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("DevTools port");
        let page_ws = page_target(port);
        let (ws, _) = tungstenite::connect(page_ws.as_str()).expect("cannot attach to the tab");
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// Sends a DevTools command and returns its result (events that arrive
    /// meanwhile are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("DevTools send");
        loop {
            let m = self.ws.read().expect("DevTools read");
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            return json!({"exception": e});
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (not null/false/""/0) and returns
    /// it; panics after `within` with `what` and the last value.
    pub fn wait_for(&mut self, what: &str, expr: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::Object(o) => !o.contains_key("exception"),
                Value::Array(_) => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("the page never showed {what} within {within:?}: last value {v}; page text:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG of the page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DevTools WebSocket of the browser's first tab.
fn page_target(port: u16) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("DevTools HTTP");
        write!(
            s,
            "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // DevTools keeps the connection open: read the head, then exactly
        // Content-Length bytes.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let n = s.read(&mut chunk).expect("DevTools HTTP read");
            assert!(n > 0, "DevTools closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("DevTools answer without Content-Length");
            if buf.len() >= end + 4 + len {
                break String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            }
        };
        let targets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(ws) = targets.as_array().and_then(|ts| {
            ts.iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        }) {
            return ws.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "chromium has no page target: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where test artifacts (screenshots) go: `target/test-artifacts/`.
pub fn artifact_dir() -> PathBuf {
    // The test binary is target/<profile>/deps/all-HASH.
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(|t| t.join("test-artifacts"))
        .unwrap_or_else(|| std::env::temp_dir().join("tern-test-artifacts"))
}
