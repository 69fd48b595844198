//! Measuring the broker: setting up, running the publishers
//! (`PublishStream` or unary `Publish`) and the subscribers (`Subscribe`,
//! acknowledging on the stream), and the run's summary.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use caseshare_cli::client::{ClientConfig, Clients};
use caseshare_proto::v1 as pb;
use futures::FutureExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::broker::{
    EmbeddedBroker, Endpoints, endpoints_embedded, endpoints_remote, scrape, server_figures,
    setup_broker, status, teardown_broker,
};
use crate::cluster::CaseshareCluster;
use crate::machine::cpu_secs;
use crate::measure::{
    AckPolicy, Clock, PubResult, PubSpec, SubResult, SubSpec, collect, histogram, record_ns,
};
use crate::summary::RunSummary;
use crate::workload::Workload;
use crate::{AGREEMENT_ID, BenchArgs, NatsSync, PublishMode, SUBSCRIBER_AGENCY};

/// Measures the broker: embedded (one in-process broker, or with
/// `--cluster N` N replicas in cluster mode) or at `--server`.
pub(crate) async fn run(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<RunSummary> {
    if args.embedded && args.cluster > 0 {
        writeln!(
            out,
            "caseshare: starting cluster mode ({} replicas, 3 NATS nodes)",
            args.cluster
        )?;
        let cluster = CaseshareCluster::start(args, out).await?;
        let endpoints = cluster.endpoints(args)?;
        let result = measure_caseshare(args, &endpoints, &cluster.pids(), out).await;
        // Kills the replicas, then the NATS nodes (SIGKILL and reap).
        tokio::task::block_in_place(|| drop(cluster));
        return result;
    }
    let embedded = if args.embedded {
        writeln!(out, "caseshare: starting an embedded broker")?;
        Some(EmbeddedBroker::start(args).await?)
    } else {
        None
    };
    let endpoints = match (&embedded, &args.server) {
        (Some(b), _) => endpoints_embedded(b),
        (None, Some(server)) => endpoints_remote(args, server)?,
        (None, None) => bail!("--target caseshare needs --embedded or --server URL"),
    };
    // A broker in this process is counted as the bench's own CPU; a
    // running one only when `--server-pid` names it.
    let pids: Vec<u32> = match embedded {
        Some(_) => Vec::new(),
        None => args.server_pid.into_iter().collect(),
    };
    let mut result = measure_caseshare(args, &endpoints, &pids, out).await;
    if let Some(b) = embedded {
        let stopped = b.stop(args.events).await;
        if let Ok(r) = &mut result {
            r.traces = Some(stopped?);
        }
    }
    result
}

/// Sets up, runs the workload against `e` and tears down.
async fn measure_caseshare(
    args: &BenchArgs,
    e: &Endpoints,
    server_pids: &[u32],
    out: &mut impl std::io::Write,
) -> Result<RunSummary> {
    let w = Arc::new(Workload::new(args)?);
    writeln!(
        out,
        "caseshare: registering agencies, putting agreement {AGREEMENT_ID}, creating {} subscription(s)",
        args.subscribers
    )?;
    let names = setup_broker(e, args, &w).await?;
    let clock = Clock::start();
    let mut subscribers = Vec::new();
    for name in &names {
        subscribers.push(tokio::spawn(cs_subscribe(
            e.subscriber.clone(),
            SubSpec::new(args, &w, clock, name.clone()),
            AckPolicy {
                batch: args.ack_batch as usize,
                linger: Duration::from_secs_f64(args.ack_linger_ms.max(0.0) / 1000.0),
            },
        )));
    }
    let before = match &e.ops {
        Some(ops) => Some(scrape(ops).await?),
        None => None,
    };
    // This process (and an in-process broker), and the cluster's processes.
    let servers_cpu = || -> f64 {
        server_pids
            .iter()
            .map(|p| cpu_secs(&p.to_string()))
            .sum::<f64>()
    };
    let (self_before, servers_before) = (cpu_secs("self"), servers_cpu());
    writeln!(
        out,
        "caseshare: publishing {} events with {} publisher(s)",
        args.events, args.publishers
    )?;
    let start_ns = clock.now_ns();
    let start = tokio::time::Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let spec = PubSpec::new(args, &w, clock, start, p);
        let conf = e.publisher.clone();
        publishers.push(match args.mode() {
            PublishMode::Stream => tokio::spawn(cs_publish_stream(conf, spec)),
            PublishMode::Unary => tokio::spawn(cs_publish_unary(conf, spec)),
        });
    }
    let collected = collect(args, publishers, subscribers, start_ns).await?;
    let servers = servers_cpu() - servers_before;
    let cpu = cpu_secs("self") - self_before + servers;
    let server = match (&e.ops, before) {
        (Some(ops), Some(before)) => {
            let after = scrape(ops).await?;
            Some(server_figures(&before, &after, collected.elapsed_secs))
        }
        _ => None,
    };
    teardown_broker(e, &names).await?;
    Ok(RunSummary {
        target: "caseshare".into(),
        endpoint: e.label.clone(),
        mode: args.mode(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        events: args.events,
        event_bytes: w.event_bytes,
        rate: args.rate,
        window: args.window,
        max_outstanding: args.max_outstanding,
        ack_batch: args.ack_batch,
        ack_linger_ms: args.ack_linger_ms,
        elapsed_secs: collected.elapsed_secs,
        publish: collected.publish,
        delivery: collected.delivery,
        server,
        cpu_secs: cpu,
        cpu_us_per_event: cpu * 1e6 / args.events as f64,
        server_cpu_secs: (!server_pids.is_empty()).then_some(servers),
        traces: None,
        // Cluster mode: its NATS nodes' setting (`both` starts them `always`).
        nats_sync: (args.embedded && args.cluster > 0).then(|| {
            if args.nats_sync.syncs_always() {
                NatsSync::Always
            } else {
                NatsSync::Default
            }
        }),
        workload: None,
    })
}

/// Fails unless the response shares the event with the subscriber agency.
fn check_shared(r: &pb::PublishResponse) -> Result<()> {
    let shared = r
        .decisions
        .iter()
        .any(|d| d.agency_id == SUBSCRIBER_AGENCY && d.decision == pb::Decision::Shared as i32);
    if shared {
        Ok(())
    } else {
        bail!(
            "event {} was not shared with {SUBSCRIBER_AGENCY} (decisions: {:?}); the bench agreement does not cover it",
            r.event_id,
            r.decisions
        )
    }
}

/// One publisher over `PublishStream`, at most `window` in flight.
async fn cs_publish_stream(conf: ClientConfig, spec: PubSpec) -> Result<PubResult> {
    let PubSpec {
        w,
        clock,
        p,
        count,
        sched,
        window,
        idle,
        check,
        ..
    } = spec;
    let mut client = Clients::connect(&conf)?.publisher;
    let (tx, rx) = mpsc::channel::<pb::PublishRequest>(window.clamp(1, 4096));
    let permits = Arc::new(Semaphore::new(window));
    let sender = {
        let (w, permits) = (w.clone(), permits.clone());
        tokio::spawn(async move {
            let mut lag = histogram()?;
            for i in 0..count {
                permits.acquire().await?.forget();
                if let Some(late) = sched.wait(i).await {
                    record_ns(&mut lag, late);
                }
                let event = w.event(p, i, clock.now_ns());
                let request = pb::PublishRequest {
                    event: Some(event),
                    trace_context: w.trace_context(p, i),
                    ..Default::default()
                };
                if tx.send(request).await.is_err() {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(lag)
        })
    };
    let mut latency = histogram()?;
    let mut got = 0;
    let mut last_ns = 0;
    let received = async {
        let mut responses = client
            .publish_stream(ReceiverStream::new(rx))
            .await
            .map_err(status)?
            .into_inner();
        while got < count {
            let r = tokio::time::timeout(idle, responses.message())
                .await
                .map_err(|_| anyhow!("no publish response for {idle:?} after {got} of {count}"))?
                .map_err(status)?
                .with_context(|| {
                    format!("the broker ended the publish stream after {got} of {count}")
                })?;
            let now = clock.now_ns();
            if got == 0 && check {
                check_shared(&r)?;
            }
            let sent = w
                .sent_ns(&r.event_id)
                .with_context(|| format!("unexpected event id {:?} in a response", r.event_id))?;
            record_ns(&mut latency, now.saturating_sub(sent));
            permits.add_permits(1);
            got += 1;
            last_ns = now;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // Unblocks the sender if the stream failed.
    permits.close();
    received?;
    let lag = sender
        .await
        .map_err(|e| anyhow!("publish sender panicked: {e}"))??;
    Ok(PubResult {
        latency,
        lag,
        published: got,
        last_ns,
    })
}

/// One publisher over unary `Publish`, one at a time.
async fn cs_publish_unary(conf: ClientConfig, spec: PubSpec) -> Result<PubResult> {
    let PubSpec {
        w,
        clock,
        p,
        count,
        sched,
        check,
        ..
    } = spec;
    let mut client = Clients::connect(&conf)?.publisher;
    let mut latency = histogram()?;
    let mut lag = histogram()?;
    let mut last_ns = 0;
    for i in 0..count {
        if let Some(late) = sched.wait(i).await {
            record_ns(&mut lag, late);
        }
        let sent = clock.now_ns();
        let r = client
            .publish(pb::PublishRequest {
                event: Some(w.event(p, i, sent)),
                trace_context: w.trace_context(p, i),
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner();
        let now = clock.now_ns();
        if i == 0 && check {
            check_shared(&r)?;
        }
        record_ns(&mut latency, now.saturating_sub(sent));
        last_ns = now;
    }
    Ok(PubResult {
        latency,
        lag,
        published: count,
        last_ns,
    })
}

/// One subscriber over `Subscribe`, acknowledging on the stream as `ack`
/// says, until it has received `spec.total` events.
async fn cs_subscribe(conf: ClientConfig, spec: SubSpec, ack: AckPolicy) -> Result<SubResult> {
    let SubSpec {
        w,
        clock,
        name,
        max_outstanding,
        total,
        idle,
    } = spec;
    let ack_batch = ack.batch;
    let mut client = Clients::connect(&conf)?.subscriber;
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::SubscribeRequest {
        subscription: name.clone(),
        max_outstanding,
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(status)?
        .into_inner();
    let mut latency = histogram()?;
    let (mut delivered, mut redeliveries, mut foreign, mut last_ns) = (0, 0, 0, 0);
    let mut acks: Vec<String> = Vec::with_capacity(ack_batch);
    let mut ack_messages = 0;
    let mut ack_due = tokio::time::Instant::now();
    while delivered < total {
        // Ack what has arrived as soon as nothing more is waiting.
        let next = if acks.is_empty() {
            tokio::time::timeout(idle, stream.message())
                .await
                .map_err(|_| {
                    anyhow!("no delivery on {name} for {idle:?} after {delivered} of {total}")
                })?
        } else if ack.linger.is_zero() {
            match stream.message().now_or_never() {
                Some(n) => n,
                None => {
                    send_acks(&tx, &mut acks, &mut ack_messages).await?;
                    continue;
                }
            }
        } else {
            match tokio::time::timeout_at(ack_due, stream.message()).await {
                Ok(n) => n,
                Err(_) => {
                    send_acks(&tx, &mut acks, &mut ack_messages).await?;
                    continue;
                }
            }
        };
        let d = next.map_err(status)?.with_context(|| {
            format!("the broker ended the stream on {name} after {delivered} of {total}")
        })?;
        let now = clock.now_ns();
        let sent = d.event.as_ref().and_then(|e| w.sent_ns(&e.event_id));
        match sent {
            _ if d.attempt > 1 => redeliveries += 1,
            Some(sent) => {
                record_ns(&mut latency, now.saturating_sub(sent));
                delivered += 1;
                last_ns = now;
            }
            None => foreign += 1,
        }
        if acks.is_empty() {
            ack_due = tokio::time::Instant::now() + ack.linger;
        }
        acks.push(d.delivery_id);
        if acks.len() >= ack_batch {
            send_acks(&tx, &mut acks, &mut ack_messages).await?;
        }
    }
    if !acks.is_empty() {
        send_acks(&tx, &mut acks, &mut ack_messages).await?;
    }
    // End the request stream; the broker handles the acks before its end.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    Ok(SubResult {
        latency,
        delivered,
        redeliveries,
        foreign,
        ack_messages,
        last_ns,
    })
}

/// Sends the held delivery ids in one ack message.
async fn send_acks(
    tx: &mpsc::Sender<pb::SubscribeRequest>,
    acks: &mut Vec<String>,
    count: &mut u64,
) -> Result<()> {
    *count += 1;
    tx.send(pb::SubscribeRequest {
        ack: Some(pb::AckIds {
            delivery_ids: std::mem::take(acks),
        }),
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("the subscribe stream closed"))
}
