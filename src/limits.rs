//! Abuse limits, shared by every API process through Redis: a token bucket of requests per
//! API key, and a count of failed authentications per client address. When Redis cannot
//! be reached the limits let requests through (uploads must not stop with Redis) and the
//! miss is counted (`photoq_background_failures_total{task="limiter"}`).

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use uuid::Uuid;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};

/// How long failed authentications are counted, and an address refused once over the limit.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// KEYS: bucket. ARGV: tokens per second, burst. Takes one token; returns 0, or the
/// milliseconds until one is available (nothing taken then). Time is Redis's own.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
",
    )
});

/// KEYS: failures. ARGV: limit. Returns the milliseconds the address stays refused, or 0.
static REFUSED_FOR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < tonumber(ARGV[1]) then return 0 end
return math.max(redis.call('PTTL', KEYS[1]), 1)
",
    )
});

/// KEYS: failures. ARGV: window (ms). Counts one failure; the window starts at the first.
static FAILED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
",
    )
});

/// The limits of one API process; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    queue: Queue,
    config: LimitsConfig,
    metrics: Metrics,
}

impl Limiter {
    pub fn new(queue: Queue, config: LimitsConfig, metrics: Metrics) -> Self {
        Limiter {
            queue,
            config,
            metrics,
        }
    }

    /// Takes one request from `owner`'s bucket; `Some(wait)` when it is empty.
    pub async fn take(&self, owner: Uuid) -> Option<Duration> {
        if self.config.requests_per_sec == 0 {
            return None;
        }
        let key = self.queue.keys().rate(owner);
        let wait: Result<u64, QueueError> = async {
            let mut conn = self.queue.connection().await?;
            Ok(TAKE
                .key(key)
                .arg(self.config.requests_per_sec)
                .arg(self.config.burst.max(1))
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        self.allowed_on_error(wait)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    /// `Some(wait)` while `addr` is refused for failing to authenticate too often.
    pub async fn refused(&self, addr: IpAddr) -> Option<Duration> {
        if self.config.auth_failures_per_min == 0 {
            return None;
        }
        let key = self.failures_key(addr);
        let ms: Result<u64, QueueError> = async {
            let mut conn = self.queue.connection().await?;
            Ok(REFUSED_FOR
                .key(key)
                .arg(self.config.auth_failures_per_min)
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        self.allowed_on_error(ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
    }

    /// Counts a failed authentication from `addr`.
    pub async fn failed(&self, addr: IpAddr) {
        if self.config.auth_failures_per_min == 0 {
            return;
        }
        let key = self.failures_key(addr);
        let counted: Result<u64, QueueError> = async {
            let mut conn = self.queue.connection().await?;
            Ok(FAILED
                .key(key)
                .arg(AUTH_FAILURE_WINDOW.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?)
        }
        .await;
        self.allowed_on_error(counted);
    }

    fn failures_key(&self, addr: IpAddr) -> String {
        self.queue.keys().other(&format!("authfail:{addr}"))
    }

    /// The answer, or nothing (let the request through) when Redis did not give one.
    fn allowed_on_error(&self, answer: Result<u64, QueueError>) -> Option<u64> {
        match answer {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, "limits not checked: redis unavailable");
                self.metrics
                    .background_failures
                    .with_label_values(&["limiter"])
                    .inc();
                None
            }
        }
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
/// address in `X-Forwarded-For` (read from the right) that is not a trusted proxy.
pub fn client_addr(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpAddr]) -> IpAddr {
    let mut addr = peer;
    if !trusted.contains(&peer) {
        return addr;
    }
    let hops = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                addr = ip;
                if !trusted.contains(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let proxy = ip("10.0.0.2");
        let trusted = [proxy, ip("10.0.0.3")];
        // An untrusted peer cannot claim another address.
        assert_eq!(
            client_addr(ip("203.0.113.9"), &["198.51.100.1"], &trusted),
            ip("203.0.113.9")
        );
        // Through two trusted proxies: the first untrusted hop from the right.
        assert_eq!(
            client_addr(proxy, &["198.51.100.1, 203.0.113.5", "10.0.0.3"], &trusted),
            ip("203.0.113.5")
        );
        // A trusted proxy with no header, or a malformed one, is itself the client.
        assert_eq!(client_addr(proxy, &[], &trusted), proxy);
        assert_eq!(client_addr(proxy, &["nonsense"], &trusted), proxy);
    }
}
