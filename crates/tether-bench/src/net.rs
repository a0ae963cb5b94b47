//! The operating-system side of a run: the target address, opening
//! non-blocking sockets (optionally from one of several loopback source
//! addresses), the open-file limit, and reading a process's memory and CPU
//! time from `/proc`.

use anyhow::{bail, Context, Result};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

/// Where to connect and what to put in the upgrade request.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The resolved address (IPv4 preferred when a name has both).
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host_header: String,
    /// Path and query.
    pub path: String,
}

/// Parse a `ws://HOST[:PORT]/path` URL and resolve its host once.
pub(crate) fn parse_target(url: &str) -> Result<Target> {
    let parsed = url::Url::parse(url).with_context(|| format!("invalid URL {url:?} (expected ws://HOST:PORT/path)"))?;
    match parsed.scheme() {
        "ws" => {}
        "wss" => bail!("wss:// is not supported: the generator measures the server's WebSocket path, not TLS; use ws://"),
        other => bail!("unsupported scheme {other:?} in {url:?}: use ws://HOST:PORT/path"),
    }
    let host = parsed.host_str().with_context(|| format!("no host in {url:?}"))?;
    let addrs = parsed.socket_addrs(|| Some(80)).with_context(|| format!("cannot resolve {host}"))?;
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{host} resolved to no address"))?;
    let host_header = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let mut path = parsed.path().to_string();
    if let Some(q) = parsed.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target { addr, host_header, path })
}

/// The source address for connection number `index` when spreading over
/// `source_ips` loopback addresses 127.0.0.1, .2, ...; `None` for one.
pub(crate) fn source_ip(index: usize, source_ips: u8) -> Option<IpAddr> {
    (source_ips > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % source_ips as usize) as u8)))
}

/// Check that `--source-ips` makes sense for `target`.
pub(crate) fn check_source_ips(target: &Target, source_ips: u8) -> Result<()> {
    if source_ips == 0 || source_ips > 254 {
        bail!("--source-ips must be between 1 and 254");
    }
    if source_ips > 1 && !matches!(target.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
        bail!("--source-ips > 1 binds to 127.0.0.x and needs an IPv4 loopback target, not {}", target.addr);
    }
    Ok(())
}

/// Start a non-blocking connect to `addr`, from `source` if given.
pub(crate) fn open_socket(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let Some(source) = source else {
        return mio::net::TcpStream::connect(addr);
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// Raise the soft open-file limit to the hard one, and fail clearly if
/// `connections` sockets (plus a few descriptors of our own) still do not fit.
pub(crate) fn ensure_fd_limit(connections: usize) -> Result<()> {
    let needed = connections as u64 + 64;
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("cannot read or raise the open-file limit")?;
    if needed > limit {
        bail!(
            "{connections} connections need about {needed} open files, but the limit is {limit} \
             (soft limit already raised to the hard limit): raise it with `ulimit -Hn`/`ulimit -n` or use fewer connections"
        );
    }
    Ok(())
}

/// Resident memory of process `pid` in bytes (`VmRSS` in `/proc/PID/status`).
pub(crate) fn vm_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path} (is process {pid} running?)"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, fixed at 100
/// in the Linux ABI).
const USER_HZ: f64 = 100.0;

/// CPU time used by a process (all its threads), sampled at an instant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuSample {
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    /// Sample process `pid`, or this process for `None`. `None` if `/proc`
    /// cannot tell (not Linux, or the process is gone).
    pub(crate) fn take(pid: Option<u32>) -> Option<CpuSample> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".to_string(),
        };
        let stat = std::fs::read_to_string(path).ok()?;
        Some(CpuSample { ticks: parse_cpu_ticks(&stat)?, at: Instant::now() })
    }

    /// Percent of one core used between `self` and `later` (100 = one core busy).
    pub(crate) fn percent_until(&self, later: &CpuSample) -> f64 {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        crate::stats::round1(later.ticks.saturating_sub(self.ticks) as f64 / USER_HZ / secs * 100.0)
    }
}

/// utime + stime from a `/proc/PID/stat` line (fields 14 and 15; the command
/// name in parentheses may itself contain spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Watches this process's CPU and, with a pid, the server's CPU and memory
/// over a measurement window.
pub(crate) struct UsageWatch {
    pid: Option<u32>,
    rss_before: u64,
    client: Option<CpuSample>,
    server: Option<CpuSample>,
}

impl UsageWatch {
    /// Record the server's memory now (before any connection); fails if
    /// `pid` is given and cannot be read.
    pub(crate) fn new(pid: Option<u32>) -> Result<Self> {
        let rss_before = pid.map(vm_rss_bytes).transpose()?.unwrap_or(0);
        Ok(UsageWatch { pid, rss_before, client: None, server: None })
    }

    /// The measurement window begins.
    pub(crate) fn start(&mut self) {
        self.client = CpuSample::take(None);
        self.server = self.pid.and_then(|pid| CpuSample::take(Some(pid)));
    }

    /// The window ends: this process's CPU percent, and the server's usage.
    pub(crate) fn finish(&self) -> (Option<f64>, Option<crate::report::ServerUsage>) {
        let percent = |start: Option<CpuSample>, pid| Some(start?.percent_until(&CpuSample::take(pid)?));
        let client = percent(self.client, None);
        let server = self.pid.map(|pid| crate::report::ServerUsage {
            pid,
            cpu_percent: percent(self.server, Some(pid)),
            rss_before_bytes: self.rss_before,
            rss_after_bytes: vm_rss_bytes(pid).unwrap_or(0),
        });
        (client, server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("ws://127.0.0.1:9001/chat?room=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!((t.host_header.as_str(), t.path.as_str()), ("127.0.0.1:9001", "/chat?room=1"));
        let t = parse_target("ws://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.host_header.as_str(), t.path.as_str()), (80, "127.0.0.1", "/"));
        let t = parse_target("ws://[::1]:8080/").unwrap();
        assert_eq!(t.host_header, "[::1]:8080");
        assert!(parse_target("wss://127.0.0.1/").unwrap_err().to_string().contains("not supported"));
        assert!(parse_target("http://127.0.0.1/").is_err());
        assert!(parse_target("127.0.0.1:80").is_err());
    }

    #[test]
    fn source_addresses_rotate_over_loopback() {
        assert_eq!(source_ip(5, 1), None);
        let ips: Vec<_> = (0..5).map(|i| source_ip(i, 4).unwrap().to_string()).collect();
        assert_eq!(ips, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"]);
        let remote = Target { addr: "[::1]:80".parse().unwrap(), host_header: String::new(), path: String::new() };
        assert!(check_source_ips(&remote, 4).is_err());
        assert!(check_source_ips(&remote, 1).is_ok());
    }

    #[test]
    fn proc_parsing() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  12345 kB\nVmSwap: 0 kB\n"), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let stat = "1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert!(vm_rss_bytes(std::process::id()).unwrap() > 0);
        let a = CpuSample::take(None).unwrap();
        let b = CpuSample { ticks: a.ticks + 50, at: a.at + std::time::Duration::from_secs(1) };
        assert_eq!(a.percent_until(&b), 50.0);
    }
}
