//! The demo's delivery feeds: one open `Subscribe` stream per subscribing
//! agency, read (and acknowledged) up to a given event.

use anyhow::{Context, Result, anyhow};
use caseshare_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{TIMEOUT, WINDOW};
use crate::client::Clients;

/// An open `Subscribe` stream for one agency.
pub(super) struct Feed {
    /// The agency reading it.
    pub(super) agency: &'static str,
    tx: mpsc::Sender<pb::SubscribeRequest>,
    rx: tonic::Streaming<pb::Delivery>,
}

impl Feed {
    /// Opens `subscription` as `agency`, with the demo's flow-control window.
    pub(super) async fn open(
        clients: &Clients,
        agency: &'static str,
        subscription: &str,
    ) -> Result<Feed> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::SubscribeRequest {
            subscription: subscription.into(),
            max_outstanding: WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|_| anyhow!("{agency}: could not open the delivery stream"))?;
        let rx = clients
            .subscriber
            .clone()
            .subscribe(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("{agency}: Subscribe {subscription}"))?
            .into_inner();
        Ok(Feed { agency, tx, rx })
    }

    /// Reads (and acknowledges) deliveries until the one for `sequence`, or a
    /// later one, arrives; returns everything read.
    pub(super) async fn until(&mut self, sequence: u64) -> Result<Vec<pb::Delivery>> {
        let mut got = Vec::new();
        loop {
            let delivery = tokio::time::timeout(TIMEOUT, self.rx.message())
                .await
                .map_err(|_| {
                    anyhow!(
                        "{}: the delivery of event {sequence} did not arrive within {} s",
                        self.agency,
                        TIMEOUT.as_secs()
                    )
                })?
                .with_context(|| format!("{}: the delivery stream failed", self.agency))?
                .ok_or_else(|| anyhow!("{}: the delivery stream ended", self.agency))?;
            self.tx
                .send(pb::SubscribeRequest {
                    ack: Some(pb::AckIds {
                        delivery_ids: vec![delivery.delivery_id.clone()],
                    }),
                    ..Default::default()
                })
                .await
                .map_err(|_| anyhow!("{}: the delivery stream closed", self.agency))?;
            let done = delivery.sequence >= sequence;
            got.push(delivery);
            if done {
                return Ok(got);
            }
        }
    }
}
