//! Start the real `tether` binary on a free port for end-to-end tests.
#![allow(dead_code)]

pub mod backend;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub scheme: &'static str,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_on(free_port(), args)
    }

    pub fn start_on(port: u16, args: &[&str]) -> Server {
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tether serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on "), "unexpected first line: {line:?}");
        let scheme = if line.contains("https://") { "wss" } else { "ws" };
        Server { child, port, scheme }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{}", self.scheme, self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A plain HTTP/1.1 request with optional extra header lines (each ending
/// in \r\n); returns (status, body).
pub async fn http_request(port: u16, method: &str, path: &str, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{headers}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of a Prometheus counter from /metrics.
pub async fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").await;
    body.lines().find_map(|l| l.strip_prefix(&format!("{name} ")).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
}

/// Find a program on PATH (or in /usr/sbin, where Debian puts nginx).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A program the cluster tests need; panics with how to get it (or returns
/// None when TETHER_SKIP_CLUSTER=1, to skip those tests on purpose).
pub fn require_program(name: &str) -> Option<std::path::PathBuf> {
    match find_program(name) {
        Some(p) => Some(p),
        None if std::env::var("TETHER_SKIP_CLUSTER").as_deref() == Ok("1") => {
            eprintln!("skipping: {name} not installed and TETHER_SKIP_CLUSTER=1");
            None
        }
        None => panic!("{name} is not installed: run scripts/deps.sh (or set TETHER_SKIP_CLUSTER=1 to skip the cluster tests)"),
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited with {status} before listening on {port}");
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_dir(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("tether-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A throwaway redis-server on a free port: no persistence, so a restart
/// loses everything (the harshest case for the broker).
pub struct Redis {
    child: Option<Child>,
    bin: std::path::PathBuf,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let bin = require_program("redis-server")?;
        let mut redis = Redis { child: None, bin, port: free_port(), dir: temp_dir("redis") };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        let mut child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server");
        wait_for_port(self.port, &mut child, "redis-server");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL: nothing saved, connections cut).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx as a WebSocket load balancer in front of `upstreams`, with the
/// configuration of deploy/nginx.conf, generated in a temporary directory.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Nginx {
    pub fn start(upstreams: &[u16]) -> Option<Nginx> {
        Self::start_with(upstreams, "max_fails=1 fail_timeout=10s")
    }

    /// [`Nginx::start`] with these parameters on each `server` line.
    pub fn start_with(upstreams: &[u16], params: &str) -> Option<Nginx> {
        Self::start_conf("nginx.conf", upstreams, params)
    }

    /// deploy/`name` (of the same shape as deploy/nginx.conf), with an
    /// access log of `<method> <upstream address> <Last-Event-ID>` lines
    /// (see [`Nginx::access_log`]).
    pub fn start_conf(name: &str, upstreams: &[u16], params: &str) -> Option<Nginx> {
        let bin = require_program("nginx")?;
        let dir = temp_dir("nginx");
        let port = free_port();
        let mut conf = Self::config(name, &dir, port, upstreams, params);
        if name != "nginx.conf" {
            conf = conf.replace("    access_log off;", &format!("    log_format upstream '$request_method $upstream_addr $http_last_event_id';\n    access_log {}/access.log upstream;", dir.display()));
        }
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        wait_for_port(port, &mut child, "nginx");
        Some(Nginx { child, port, dir })
    }

    /// deploy/nginx.conf itself, with this test's ports and directory.
    fn config(name: &str, dir: &std::path::Path, port: u16, upstreams: &[u16], params: &str) -> String {
        let deploy = std::fs::read_to_string(format!("{}/../../deploy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let servers: String = upstreams.iter().map(|p| format!("        server 127.0.0.1:{p} {params};\n")).collect();
        let d = dir.display();
        let mut conf = String::new();
        let mut upstream_done = false;
        for line in deploy.lines() {
            let t = line.trim();
            if t.starts_with("server 127.0.0.1:") {
                if !upstream_done {
                    conf.push_str(&servers);
                    upstream_done = true;
                }
                continue;
            }
            match t {
                "worker_processes auto;" => conf.push_str(&format!("worker_processes 1;\npid {d}/nginx.pid;\n")),
                "listen 80;" => conf.push_str(&format!("        listen 127.0.0.1:{port};\n")),
                "http {" => conf.push_str(&format!(
                    "http {{\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
                )),
                _ => {
                    conf.push_str(line);
                    conf.push('\n');
                }
            }
        }
        assert!(upstream_done && conf.contains(&format!("listen 127.0.0.1:{port};")), "deploy/nginx.conf changed shape:\n{conf}");
        conf
    }

    /// Load a new upstream list (SIGHUP): new connections go by it, while
    /// the old worker keeps the connections it proxies until they end, as
    /// when a node is added in production.
    pub fn reload(&self, upstreams: &[u16], params: &str) {
        std::fs::write(self.dir.join("nginx.conf"), Self::config("nginx.conf", &self.dir, self.port, upstreams, params)).unwrap();
        let pid = self.child.id();
        let workers = || std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default().split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let before = workers();
        Command::new("kill").arg("-HUP").arg(pid.to_string()).status().unwrap();
        // The new configuration is in use once a new worker runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while workers().iter().all(|w| before.contains(w)) {
            assert!(std::time::Instant::now() < deadline, "nginx did not reload:\n{}", self.error_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// The access log of [`Nginx::start_conf`] (empty for deploy/nginx.conf).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// What nginx logged (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown, the master stops its workers (a SIGKILLed
        // master would leave them running).
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client connection in these tests.
pub type Ws = tether::WebSocket<tether::MaybeTlsStream>;

/// A `tether.v1` connection to `path` (with `Authorization: Bearer` when
/// given), past its welcome.
pub async fn v1_bearer(server: &Server, path: &str, bearer: Option<&str>) -> Result<Ws, tether::Error> {
    let mut builder = tether::ClientBuilder::new(server.url(path)).protocol("tether.v1");
    if let Some(t) = bearer {
        builder = builder.header("Authorization", format!("Bearer {t}"));
    }
    let (mut ws, _) = builder.connect().await?;
    assert_eq!(next_envelope(&mut ws).await["type"], "welcome");
    Ok(ws)
}

/// The next envelope that is not a presence notice (within 30 s).
pub async fn next_envelope(ws: &mut Ws) -> serde_json::Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.recv()).await.expect("an envelope within 30 s") {
            Some(Ok(tether::Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "presence" {
                    return v;
                }
            }
            Some(Ok(_)) => continue,
            other => panic!("expected an envelope, got {other:?}"),
        }
    }
}

/// A `tether.v1` connection whose envelopes arrive on a channel (a task
/// reads them; `{"type":"_closed"}` marks the end), and its writing half.
pub async fn v1_split(url: &str, name: &str) -> (tether::split::WsWriter<tether::MaybeTlsStream>, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    let (ws, resp) = tether::ClientBuilder::new(url).protocol("tether.v1").connect().await.unwrap_or_else(|e| panic!("{name}: connect {url}: {e}"));
    assert_eq!(resp.protocol.as_deref(), Some("tether.v1"));
    let (mut reader, writer) = ws.split();
    let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match reader.recv().await {
                Some(Ok(tether::Message::Text(t))) => {
                    if tx.send(serde_json::from_str::<serde_json::Value>(&t).unwrap()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    let _ = tx.send(serde_json::json!({"type": "_closed"}));
                    return;
                }
            }
        }
    });
    (writer, inbox)
}
