//! The pieces every measurement shares: the run's [`Clock`], latency
//! histograms, the `--rate` [`Schedule`], each publisher's and
//! subscriber's part of the workload ([`PubSpec`], [`SubSpec`]), what they
//! report ([`PubResult`], [`SubResult`]) and collecting those into figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use crate::summary::{DeliveryFigures, Latency, PublishFigures};
use crate::workload::Workload;
use crate::{BenchArgs, PublishMode};

/// Highest latency the histograms hold: 10 minutes, in microseconds.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Nanoseconds since the bench started, shared by every task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    /// A clock that starts now.
    pub(crate) fn start() -> Self {
        Clock(Instant::now())
    }

    /// Nanoseconds since the clock started.
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// An empty latency histogram (microseconds, 3 significant figures).
pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// Records a latency given in nanoseconds (at least 1 µs).
pub(crate) fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// Adds one histogram's samples to another.
fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<()> {
    into.add(from).map_err(|e| anyhow!("histogram: {e}"))
}

/// When each of one publisher's events is due, with `--rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    start: tokio::time::Instant,
    /// Seconds between this publisher's events; `None` = no pacing.
    interval: Option<f64>,
    offset: f64,
}

impl Schedule {
    /// Publisher `publisher`'s schedule from `start`, with `--rate` spread
    /// evenly over the publishers.
    pub(crate) fn new(args: &BenchArgs, start: tokio::time::Instant, publisher: u32) -> Self {
        if args.rate > 0.0 {
            let per = args.rate / f64::from(args.publishers);
            let interval = 1.0 / per;
            Schedule {
                start,
                interval: Some(interval),
                offset: interval * f64::from(publisher) / f64::from(args.publishers),
            }
        } else {
            Schedule {
                start,
                interval: None,
                offset: 0.0,
            }
        }
    }

    /// Sleeps until event `i` is due; returns how late the send is, ns.
    pub(crate) async fn wait(&self, i: u64) -> Option<u64> {
        let interval = self.interval?;
        let due = self.start + Duration::from_secs_f64(self.offset + interval * i as f64);
        tokio::time::sleep_until(due).await;
        Some(
            u64::try_from(
                tokio::time::Instant::now()
                    .saturating_duration_since(due)
                    .as_nanos(),
            )
            .unwrap_or(u64::MAX),
        )
    }
}

/// How many events publisher `p` sends.
fn share(total: u64, publishers: u32, p: u32) -> u64 {
    let n = u64::from(publishers);
    total / n + u64::from(u64::from(p) < total % n)
}

/// What one publisher measured.
#[derive(Debug)]
pub(crate) struct PubResult {
    pub(crate) latency: Histogram<u64>,
    pub(crate) lag: Histogram<u64>,
    pub(crate) published: u64,
    pub(crate) last_ns: u64,
}

/// When a subscriber sends its acks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AckPolicy {
    /// Most ids per ack message.
    pub(crate) batch: usize,
    /// How long the first held id may wait for more.
    pub(crate) linger: Duration,
}

/// What one subscriber measured.
#[derive(Debug)]
pub(crate) struct SubResult {
    pub(crate) latency: Histogram<u64>,
    pub(crate) delivered: u64,
    pub(crate) redeliveries: u64,
    pub(crate) foreign: u64,
    pub(crate) ack_messages: u64,
    pub(crate) last_ns: u64,
}

/// What all publishers and subscribers of one run measured, together.
pub(crate) struct Collected {
    pub(crate) publish: PublishFigures,
    pub(crate) delivery: DeliveryFigures,
    pub(crate) elapsed_secs: f64,
}

/// Waits for every publisher and subscriber and merges their figures.
pub(crate) async fn collect(
    args: &BenchArgs,
    publishers: Vec<JoinHandle<Result<PubResult>>>,
    subscribers: Vec<JoinHandle<Result<SubResult>>>,
    start_ns: u64,
) -> Result<Collected> {
    let mut pub_latency = histogram()?;
    let mut lag = histogram()?;
    let mut published = 0;
    let mut pub_last = start_ns;
    for (i, h) in publishers.into_iter().enumerate() {
        let r = h
            .await
            .map_err(|e| anyhow!("publisher {i} panicked: {e}"))?
            .with_context(|| format!("publisher {i}"))?;
        merge(&mut pub_latency, &r.latency)?;
        merge(&mut lag, &r.lag)?;
        published += r.published;
        pub_last = pub_last.max(r.last_ns);
    }
    let mut del_latency = histogram()?;
    let (mut delivered, mut redeliveries, mut foreign, mut ack_messages) = (0, 0, 0, 0);
    let mut del_last = start_ns;
    for (i, h) in subscribers.into_iter().enumerate() {
        let r = h
            .await
            .map_err(|e| anyhow!("subscriber {i} panicked: {e}"))?
            .with_context(|| format!("subscriber {i}"))?;
        merge(&mut del_latency, &r.latency)?;
        delivered += r.delivered;
        redeliveries += r.redeliveries;
        foreign += r.foreign;
        ack_messages += r.ack_messages;
        del_last = del_last.max(r.last_ns);
    }
    let secs = |end: u64| (end.saturating_sub(start_ns)) as f64 / 1e9;
    let per_sec = |n: u64, end: u64| {
        let s = secs(end);
        if s > 0.0 { n as f64 / s } else { 0.0 }
    };
    Ok(Collected {
        publish: PublishFigures {
            events: published,
            events_per_sec: per_sec(published, pub_last),
            latency: Latency::of(&pub_latency),
            schedule_lag: (args.rate > 0.0).then(|| Latency::of(&lag)),
        },
        delivery: DeliveryFigures {
            deliveries: delivered,
            redeliveries,
            foreign,
            ack_messages,
            ids_per_ack_message: if ack_messages > 0 {
                (delivered + redeliveries + foreign) as f64 / ack_messages as f64
            } else {
                0.0
            },
            events_per_sec: if args.subscribers == 0 {
                0.0
            } else {
                per_sec(delivered / u64::from(args.subscribers), del_last)
            },
            latency: Latency::of(&del_latency),
        },
        elapsed_secs: secs(pub_last.max(del_last)),
    })
}

/// One publisher's part of the workload.
#[derive(Debug, Clone)]
pub(crate) struct PubSpec {
    /// The run's events.
    pub(crate) w: Arc<Workload>,
    /// The run's clock, for send and receive times.
    pub(crate) clock: Clock,
    /// Its index.
    pub(crate) p: u64,
    /// Events it publishes.
    pub(crate) count: u64,
    pub(crate) sched: Schedule,
    pub(crate) mode: PublishMode,
    /// Most publishes in flight (`--stream`).
    pub(crate) window: usize,
    /// Give up after waiting this long for anything (`--idle-timeout-secs`).
    pub(crate) idle: Duration,
    /// Check the first response shares the event with the subscriber agency.
    pub(crate) check: bool,
}

impl PubSpec {
    /// Publisher `p`'s part of the workload `args` describe.
    pub(crate) fn new(
        args: &BenchArgs,
        w: &Arc<Workload>,
        clock: Clock,
        start: tokio::time::Instant,
        p: u32,
    ) -> Self {
        PubSpec {
            w: w.clone(),
            clock,
            p: u64::from(p),
            count: share(args.events, args.publishers, p),
            sched: Schedule::new(args, start, p),
            mode: args.mode(),
            window: args.window as usize,
            idle: Duration::from_secs(args.idle_timeout_secs),
            check: args.subscribers > 0,
        }
    }
}

/// One subscriber's part of the workload.
#[derive(Debug, Clone)]
pub(crate) struct SubSpec {
    /// The run's events.
    pub(crate) w: Arc<Workload>,
    /// The run's clock, for send and receive times.
    pub(crate) clock: Clock,
    /// Its subscription (broker) or durable consumer (NATS).
    pub(crate) name: String,
    /// Most unacknowledged deliveries (`max_outstanding`; for NATS it is
    /// set on the consumer instead).
    pub(crate) max_outstanding: u32,
    /// Events it receives before it stops.
    pub(crate) total: u64,
    /// Give up after waiting this long for anything (`--idle-timeout-secs`).
    pub(crate) idle: Duration,
}

impl SubSpec {
    /// Subscriber `name`'s part of the workload `args` describe.
    pub(crate) fn new(args: &BenchArgs, w: &Arc<Workload>, clock: Clock, name: String) -> Self {
        SubSpec {
            w: w.clone(),
            clock,
            name,
            max_outstanding: args.max_outstanding,
            total: args.events,
            idle: Duration::from_secs(args.idle_timeout_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..7).map(|p| share(100, 7, p)).sum();
        assert_eq!(total, 100);
    }
}
