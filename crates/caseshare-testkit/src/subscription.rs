//! An open `Subscribe` stream as a test drives it: open (or be refused),
//! the next delivery with a deadline, inline acknowledgements.

use std::time::Duration;

use caseshare_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::broker::{Broker, Endpoint};

/// How long [`Subscription::next`] waits before failing the test.
const NEXT_TIMEOUT: Duration = Duration::from_secs(30);

/// An open Subscribe stream.
#[derive(Debug)]
pub struct Subscription {
    /// The request side (acks, nacks, window changes).
    pub tx: tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
    /// The deliveries.
    pub rx: tonic::Streaming<pb::Delivery>,
}

impl Subscription {
    /// Opens `agency`'s subscription `name` with a window of
    /// `max_outstanding` (fails the test if refused).
    pub async fn open(b: &Broker, agency: &str, name: &str, max_outstanding: u32) -> Subscription {
        Self::try_open(b, agency, name, max_outstanding)
            .await
            .unwrap()
    }

    /// Opens a stream, or returns the status the broker refused it with.
    pub async fn try_open(
        b: &Broker,
        agency: &str,
        name: &str,
        max_outstanding: u32,
    ) -> Result<Subscription, tonic::Status> {
        Self::try_open_at(&b.endpoint(), agency, name, max_outstanding).await
    }

    /// [`Subscription::try_open`] on a broker known by its [`Endpoint`]
    /// (one in a container, one of a compose file).
    pub async fn try_open_at(
        e: &Endpoint,
        agency: &str,
        name: &str,
        max_outstanding: u32,
    ) -> Result<Subscription, tonic::Status> {
        let mut c = e.client(agency);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tx.send(pb::SubscribeRequest {
            subscription: name.into(),
            max_outstanding,
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = c
            .subscriber
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Subscription { tx, rx })
    }

    /// The next delivery (fails the test after 30 s).
    pub async fn next(&mut self) -> pb::Delivery {
        tokio::time::timeout(NEXT_TIMEOUT, self.rx.next())
            .await
            .expect("a delivery within 30 s")
            .expect("stream open")
            .expect("delivery, not an error")
    }

    /// Acknowledges deliveries inline on the stream.
    pub async fn ack(&self, ids: Vec<String>) {
        self.tx
            .send(pb::SubscribeRequest {
                ack: Some(pb::AckIds { delivery_ids: ids }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}
