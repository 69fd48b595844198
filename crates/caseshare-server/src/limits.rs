//! Per-principal limits: a token bucket on publishes, a cap on concurrent
//! streams and the bytes one PublishStream may hold in flight, so that one
//! abusive client cannot starve the others.
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

    /// Takes one token for `principal`, or refuses. A principal already
    /// tracked costs one lookup and no allocation (this runs per publish).
    pub fn acquire(&self, principal: &str) -> Result<(), BrokerError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(principal) {
            return self.take(b, now);
        }
        if buckets.len() >= self.max_principals {
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
        self.take(b, now)
    }

    /// Refills `b` up to `now` and takes a token from it, or refuses.
    fn take(&self, b: &mut Bucket, now: Instant) -> Result<(), BrokerError> {
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

/// Counts open streams per principal, and sizes each PublishStream's
/// window of publishes in flight.
#[derive(Debug)]
pub struct StreamLimiter {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
    inflight_bytes: usize,
}

/// The encoded bytes of publishes one PublishStream has read and not yet
/// answered (`limits.max_stream_inflight_bytes`). The stream reads nothing
/// more while its window is full, so HTTP/2 flow control holds the client
/// back and the broker holds at most a window (plus the one message being
/// read) per stream.
#[derive(Debug)]
pub struct PublishWindow {
    room: Arc<tokio::sync::Semaphore>,
    max: u32,
}

impl PublishWindow {
    /// A window of `bytes` (at least 1, at most `u32::MAX`).
    pub fn new(bytes: usize) -> Self {
        let max = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        PublishWindow {
            room: Arc::new(tokio::sync::Semaphore::new(max as usize)),
            max,
        }
    }

    /// Waits until a publish of `bytes` fits and holds its room until the
    /// permit is dropped. A publish larger than the whole window takes all
    /// of it, so it waits for the window to empty and then goes alone.
    pub async fn take(
        &self,
        bytes: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, BrokerError> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.max);
        // The semaphore is private and never closed.
        self.room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| BrokerError::Unavailable("the publish window closed".into()))
    }
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
    /// At most `max` concurrent streams per principal, each PublishStream
    /// with `inflight_bytes` of publishes in flight.
    pub fn new(max: usize, inflight_bytes: usize) -> Self {
        StreamLimiter {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
            inflight_bytes,
        }
    }

    /// A new PublishStream's window of publishes in flight.
    pub fn publish_window(&self) -> PublishWindow {
        PublishWindow::new(self.inflight_bytes)
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
        let l = StreamLimiter::new(1, 1024);
        let slot = l.acquire("a");
        assert!(slot.is_ok());
        assert!(l.acquire("a").is_err());
        drop(slot);
        assert!(l.acquire("a").is_ok());
    }

    #[test]
    fn a_publish_window_holds_publishes_up_to_its_bytes() {
        use futures::FutureExt;
        let w = PublishWindow::new(1024);
        let a = w.take(600).now_or_never().and_then(Result::ok);
        assert!(a.is_some(), "600 of 1,024 bytes fit");
        let b = w.take(424).now_or_never().and_then(Result::ok);
        assert!(b.is_some(), "the window fills exactly");
        assert!(
            w.take(1).now_or_never().is_none(),
            "one byte past the window waits"
        );
        drop(a);
        let c = w.take(600).now_or_never().and_then(Result::ok);
        assert!(c.is_some(), "an answered publish's room is free again");
        drop((b, c));
    }

    #[test]
    fn a_publish_larger_than_the_window_goes_alone() {
        use futures::FutureExt;
        let w = PublishWindow::new(1024);
        let small = w.take(1).now_or_never().and_then(Result::ok);
        assert!(small.is_some());
        assert!(
            w.take(64 * 1024).now_or_never().is_none(),
            "a large publish waits for the window to empty"
        );
        drop(small);
        let large = w.take(64 * 1024).now_or_never().and_then(Result::ok);
        assert!(large.is_some(), "then takes the whole window");
        assert!(
            w.take(1).now_or_never().is_none(),
            "and nothing rides with it"
        );
        drop(large);
        assert!(w.take(1024).now_or_never().is_some());
    }
}
