//! Outside programs the tests run, from Debian's packages: found where the
//! package puts them, installed with apt-get when missing (as root), or a
//! panic that says what to install. `.ci/run` installs them up front.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first of `paths` that exists, else Debian's `package` installed with
/// apt-get (as root), else a panic saying `how`.
pub fn debian_tool(paths: &[&str], package: &str, how: &str) -> PathBuf {
    let found = || paths.iter().map(PathBuf::from).find(|p| p.exists());
    if let Some(p) = found() {
        return p;
    }
    eprintln!("{package} is missing: installing it (if root, with apt-get) for the tests");
    crate::apt::install(&[package]);
    found().unwrap_or_else(|| panic!("{how}"))
}

/// An etcd server (Debian's `etcd-server`) on two free loopback ports, its
/// data in a temporary directory; killed when dropped.
pub struct Etcd {
    /// `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub endpoint: String,
    /// A plain HTTP listener: the client one, or with TLS the metrics one
    /// (which answers `/health` only).
    plain: String,
    child: Child,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    /// Starts etcd and waits until it is healthy (a leader elected).
    pub fn start() -> Etcd {
        Etcd::launch(None)
    }

    /// Starts etcd serving its clients over TLS only, with `cert`/`key`
    /// (PEM files), and requiring a client certificate signed by `ca`
    /// (`--client-cert-auth`). Its health (and [`Etcd::http`]) is on a
    /// separate plain metrics listener.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> Etcd {
        Etcd::launch(Some((ca, cert, key)))
    }

    fn launch(tls: Option<(&Path, &Path, &Path)>) -> Etcd {
        let bin = debian_tool(
            &["/usr/bin/etcd"],
            "etcd-server",
            "these tests need etcd: install Debian's `etcd-server` package \
             (`apt-get install -y etcd-server`; .ci/run does this)",
        );
        let dir =
            std::env::temp_dir().join(format!("tern-etcd-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("etcd's directory");
        let (client_port, peer_port, plain_port) = (free_port(), free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let plain = match tls {
            Some(_) => format!("http://127.0.0.1:{plain_port}"),
            None => endpoint.clone(),
        };
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd's log");
        let mut cmd = Command::new(bin);
        cmd.args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")]);
        if let Some((ca, cert, key)) = tls {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth")
                .args(["--listen-metrics-urls", &plain]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let etcd = Etcd {
            endpoint,
            plain,
            child,
            dir,
        };
        let t0 = Instant::now();
        while !etcd
            .http("GET", "/health", "")
            .is_some_and(|(s, b)| s == 200 && b.contains("true"))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "etcd did not come up: {}",
                std::fs::read_to_string(etcd.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    /// `etcd://127.0.0.1:PORT/PREFIX`, as `tern control --store` takes it.
    pub fn store_url(&self, prefix: &str) -> String {
        match self.endpoint.strip_prefix("https://") {
            Some(host) => format!("etcd+https://{host}/{prefix}"),
            None => format!(
                "etcd://{}/{prefix}",
                self.endpoint.trim_start_matches("http://")
            ),
        }
    }

    /// A plain HTTP/1.0 exchange with etcd's JSON gateway: status and body.
    pub fn http(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        plain_http(&self.plain, method, path, body)
    }
}

/// One plain HTTP/1.0 exchange with `base` (`http://HOST:PORT`): status and body.
pub fn plain_http(base: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A Prometheus server (Debian's `prometheus`) on a free loopback port,
/// scraping the given targets every 500 ms; killed when dropped.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`(job, "http://HOST:PORT/metrics")`)
    /// and waits until it is ready.
    pub fn start(targets: &[(&str, &str)]) -> Prometheus {
        let bin = debian_tool(
            &["/usr/bin/prometheus"],
            "prometheus",
            "this test needs Prometheus: install Debian's `prometheus` package \
             (`apt-get install -y prometheus`; .ci/run does this)",
        );
        let dir = std::env::temp_dir().join(format!(
            "tern-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("Prometheus's directory");
        let mut config = String::from(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n",
        );
        for (job, url) in targets {
            let rest = url.trim_start_matches("http://");
            let (host, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
            config.push_str(&format!(
                "  - job_name: '{job}'\n    metrics_path: '/{path}'\n    static_configs:\n      - targets: ['{host}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("Prometheus's configuration");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("Prometheus's log");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { url, child, dir };
        let t0 = Instant::now();
        while plain_http(&p.url, "GET", "/-/ready", "").is_none_or(|(s, _)| s != 200) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "Prometheus did not come up: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The answer (JSON text) of an instant query `expr` on the HTTP API.
    pub fn query(&self, expr: &str) -> Option<String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        match plain_http(&self.url, "GET", &path, "")? {
            (200, body) => Some(body),
            _ => None,
        }
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
