//! Per-principal limits: a token bucket on publishes and a cap on
//! concurrent streams, so that one abusive client cannot starve the others.
//! Both answer `RESOURCE_EXHAUSTED` with a message naming the limit; a rate
//! refusal also carries `google.rpc.RetryInfo` saying when to try again, and
//! is answered only after `limits.refusal_delay_ms` (see `auth`), so a
//! client that ignores refusals gets few of them per second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::errors::BrokerError;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per principal, for one RPC family.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    family: &'static str,
    max_principals: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// The most principals a limiter tracks at once, by default. Buckets that
/// have refilled to their burst are dropped first (forgetting them changes
/// nothing); if every tracked bucket is still partly spent, a new principal
/// is refused rather than let the map grow.
pub const DEFAULT_MAX_PRINCIPALS: usize = 100_000;

impl RateLimiter {
    /// The publish family: `rate` tokens per second, at most `burst` saved up.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self::for_family("publish", rate, burst, DEFAULT_MAX_PRINCIPALS)
    }

    /// The limiter of `family` (named in refusals as
    /// `limits.<family>_rate_per_sec`), tracking at most `max_principals`.
    pub fn for_family(family: &'static str, rate: f64, burst: f64, max_principals: usize) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            family,
            max_principals: max_principals.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    /// How many principals are tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes one token for `principal`, or refuses.
    pub fn acquire(&self, principal: &str) -> Result<(), BrokerError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(principal) && buckets.len() >= self.max_principals {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= self.max_principals {
                metrics::counter!("caseshare_rate_limited_total", "family" => self.family, "reason" => "table_full").increment(1);
                return Err(BrokerError::RateLimited {
                    message: format!(
                        "{} rate limit: too many clients are being limited at once ({} tracked)",
                        self.family, self.max_principals
                    ),
                    retry_after: std::time::Duration::from_secs(1),
                });
            }
        }
        let b = buckets.entry(principal.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            metrics::counter!("caseshare_rate_limited_total", "family" => self.family, "reason" => "rate").increment(1);
            let wait = if self.rate > 0.0 {
                (1.0 - b.tokens) / self.rate
            } else {
                3_600.0
            };
            Err(BrokerError::RateLimited {
                message: format!(
                    "{f} rate limit exceeded (limits.{f}_rate_per_sec = {}, limits.{f}_burst = {})",
                    self.rate,
                    self.burst,
                    f = self.family
                ),
                retry_after: std::time::Duration::from_secs_f64(wait.clamp(0.0, 3_600.0)),
            })
        }
    }
}

/// Counts open streams per principal.
#[derive(Debug)]
pub struct StreamLimiter {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// Releases a stream slot when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    principal: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

impl StreamLimiter {
    /// At most `max` concurrent streams per principal.
    pub fn new(max: usize) -> Self {
        StreamLimiter {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes a slot for `principal`, or refuses.
    pub fn acquire(&self, principal: &str) -> Result<StreamSlot, BrokerError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(principal.to_string()).or_insert(0);
        if *n >= self.max {
            return Err(BrokerError::ResourceExhausted(format!(
                "too many concurrent streams for this client (limits.max_streams_per_principal = {})",
                self.max
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            principal: principal.to_string(),
            open: self.open.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let r = RateLimiter::new(0.001, 3.0);
        for _ in 0..3 {
            assert!(r.acquire("a").is_ok());
        }
        let e = r
            .acquire("a")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("limits.publish_rate_per_sec"), "{e}");
        assert!(r.acquire("b").is_ok(), "other principals are unaffected");
    }

    #[test]
    fn a_refusal_says_when_the_next_token_comes() {
        let r = RateLimiter::new(10.0, 1.0);
        assert!(r.acquire("a").is_ok());
        match r.acquire("a") {
            Err(BrokerError::RateLimited { retry_after, .. }) => {
                assert!(retry_after > std::time::Duration::ZERO);
                assert!(retry_after <= std::time::Duration::from_millis(100));
            }
            other => panic!("expected a rate refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_bucket_table_is_bounded() {
        let r = RateLimiter::for_family("admin", 0.001, 2.0, 2);
        assert!(r.acquire("a").is_ok());
        assert!(r.acquire("b").is_ok());
        // Both buckets are partly spent: a third principal is refused.
        let e = r
            .acquire("c")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("admin rate limit"), "{e}");
        assert_eq!(r.tracked(), 2);
        // A full bucket is forgotten to make room.
        let r = RateLimiter::for_family("admin", 1_000_000.0, 2.0, 2);
        assert!(r.acquire("a").is_ok());
        assert!(r.acquire("b").is_ok());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(r.acquire("c").is_ok());
        assert!(r.tracked() <= 2);
    }

    #[test]
    fn stream_slots_are_released() {
        let l = StreamLimiter::new(1);
        let slot = l.acquire("a");
        assert!(slot.is_ok());
        assert!(l.acquire("a").is_err());
        drop(slot);
        assert!(l.acquire("a").is_ok());
    }
}
