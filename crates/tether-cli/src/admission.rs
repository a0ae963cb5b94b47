//! Who may open a connection to `tether serve`: the connection slots
//! (`--max-connections`, taken at accept so handshakes in progress count),
//! connections per client address, failed-token throttling, the token
//! check itself, and how the client address is found behind a proxy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Open connections per client address; an entry lives while its count is
/// above zero, so the map is bounded by the open connections.
pub struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its address; released on drop.
pub struct IpGuard {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp { limit, counts: Mutex::new(HashMap::new()) })
    }

    /// Count one more connection from `ip`, or `None` if it has its limit.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpGuard { table: self.clone(), ip })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Most addresses whose failures are remembered at once; past it, entries
/// of earlier minutes are cleared, and if all are current the new address
/// goes untracked (the table never grows without bound).
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Failed token checks per client address, per wall-clock minute.
pub struct AuthFailures {
    limit: u32,
    started: Instant,
    table: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl AuthFailures {
    pub fn new(limit: u32) -> AuthFailures {
        AuthFailures { limit, started: Instant::now(), table: Mutex::new(HashMap::new()) }
    }

    fn minute(&self) -> u64 {
        self.started.elapsed().as_secs() / 60
    }

    /// Whether `ip` used up its failures for this minute.
    pub fn throttled(&self, ip: IpAddr) -> bool {
        let minute = self.minute();
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.get(&ip).is_some_and(|&(m, n)| m == minute && n >= self.limit)
    }

    /// Count one failure for `ip`.
    pub fn record(&self, ip: IpAddr) {
        let minute = self.minute();
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_TRACKED_ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, (m, _)| *m == minute);
            if table.len() >= MAX_TRACKED_ADDRESSES {
                return;
            }
        }
        let entry = table.entry(ip).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Whether the request carries `token`: `Authorization: Bearer T` (the
/// scheme in any case, RFC 9110 §11.1) or `?token=T`. Compared in constant
/// time, so response timing does not reveal how much of a guess was right.
pub fn has_token(token: &str, authorization: Option<&str>, query: Option<&str>) -> bool {
    let bearer = authorization.and_then(|v| {
        let (scheme, rest) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let in_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let matches = |given: Option<&str>| given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())));
    // Both checked, so the time taken does not say which one was present.
    let (a, b) = (matches(bearer), matches(in_query));
    a | b
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy and a client-address header is configured, the address the
/// proxies recorded: in a list such as X-Forwarded-For, the right-most entry
/// that is not itself a trusted proxy (entries further left were written by
/// the client and prove nothing).
pub fn client_ip(peer: IpAddr, header: Option<&str>, trusted: bool, proxies: &[IpAddr]) -> IpAddr {
    if !trusted {
        return address_key(peer);
    }
    let forwarded = header.and_then(|v| {
        v.rsplit(',').map(|entry| entry.trim().parse::<IpAddr>()).find(|ip| !matches!(ip, Ok(ip) if proxies.contains(ip)))
    });
    address_key(match forwarded {
        Some(Ok(ip)) => ip,
        _ => peer,
    })
}

/// What limits per address count: an IPv4 address, or an IPv6 /64 (one
/// subscriber line usually holds a whole /64, so counting single IPv6
/// addresses would give one attacker 2^64 of them).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Refusals written before reading the request (no slot, or too many
/// connections from the address) in flight at once; past it the socket
/// is simply closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;

/// Answer a connection that gets no slot with an HTTP status and close it,
/// without reading more than a little of its request. Bounded in time and
/// in how many run at once.
pub fn refuse_early(tcp: tokio::net::TcpStream, peer: SocketAddr, status: u16, reason: &'static str, tls: bool) {
    static IN_FLIGHT: Semaphore = Semaphore::const_new(MAX_REFUSALS_IN_FLIGHT);
    tracing::debug!(%peer, status, reason, "connection refused");
    if tls {
        // Refused before the TLS handshake: there is no way to say why.
        return;
    }
    let Ok(permit) = IN_FLIGHT.try_acquire() else { return };
    tokio::spawn(async move {
        let _permit = permit;
        let mut tcp = tcp;
        let text = match status {
            429 => "Too Many Requests",
            _ => "Service Unavailable",
        };
        let response = format!(
            "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
            reason.len() + 1
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            // Read the request head first (a client that sends it and then
            // reads would otherwise see a reset, not the status).
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await;
            tcp.write_all(response.as_bytes()).await?;
            tcp.shutdown().await?;
            while tcp.read(&mut buf).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_exact() {
        assert!(has_token("s3cret", Some("Bearer s3cret"), None));
        assert!(has_token("s3cret", Some("bearer s3cret"), None));
        assert!(has_token("s3cret", Some("BEARER  s3cret "), None));
        assert!(has_token("s3cret", None, Some("a=1&token=s3cret")));
        assert!(!has_token("s3cret", Some("Bearer s3cre"), None));
        assert!(!has_token("s3cret", Some("Bearer s3cret2"), None));
        assert!(!has_token("s3cret", Some("Basic s3cret"), None));
        assert!(!has_token("s3cret", Some("s3cret"), None));
        assert!(!has_token("s3cret", None, None));
    }

    #[test]
    fn per_ip_counts_and_releases() {
        let t = PerIp::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = t.acquire(ip).unwrap();
        let _b = t.acquire(ip).unwrap();
        assert!(t.acquire(ip).is_none());
        assert!(t.acquire("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(t.acquire(ip).is_some());
        assert!(t.counts.lock().unwrap().len() <= 2);
    }

    #[test]
    fn auth_failures_throttle_per_address() {
        let f = AuthFailures::new(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(!f.throttled(ip));
            f.record(ip);
        }
        assert!(f.throttled(ip));
        assert!(!f.throttled("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn client_address_from_a_trusted_proxy_only() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let proxies = [peer, "10.1.1.1".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_ip(peer, Some("1.2.3.4, 10.0.0.9"), true, &proxies), ip("10.0.0.9"));
        // Two trusted hops: the entry our first proxy wrote.
        assert_eq!(client_ip(peer, Some("6.6.6.6, 10.0.0.9, 10.1.1.1"), true, &proxies), ip("10.0.0.9"));
        assert_eq!(client_ip(peer, Some("10.0.0.9"), false, &proxies), peer);
        assert_eq!(client_ip(peer, Some("garbage"), true, &proxies), peer);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(address_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
