//! Reading the journal in order and following it: an ephemeral pull
//! consumer without acknowledgements (in memory, one replica), created at
//! the next sequence the reader needs and recreated from there whenever it
//! fails or misses heartbeats (a stream-leader change, a killed server).
//! The reader itself checks contiguity: an earlier sequence (a recreated
//! consumer starting early) is dropped. A later one means the consumer
//! went past messages this reader never got — without acknowledgements,
//! messages lost in transit are not sent again: when the client's server
//! dies, what the consumer (on the stream's leader) had sent through it
//! is lost, the client reconnects elsewhere and the same consumer carries
//! on after them. So the reader asks the stream for the message it needs:
//! if the stream holds it, the consumer is recreated from there (nothing
//! is skipped); only if the stream does not is it a gap, which ends the
//! stream with an error (a replica stops rather than skip a message).
//!
//! Why this and not async-nats' ordered consumer: the ordered consumer
//! does the same recreation but waits two 15 s heartbeats before noticing
//! a lost consumer, and recreates from the first message when it has seen
//! none yet. Why no acknowledgements: the reader's position belongs to the
//! replica (stored with its state), so server-side ack state would be a
//! second, disagreeing copy of it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::{Stream, StreamExt};

use crate::config::JournalConfig;
use crate::error::ClusterError;
use crate::journal::{Entry, micros};

/// The consumer's idle heartbeat: a consumer that goes silent for about two
/// of these (its server died, its stream lost its leader) is recreated.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request waits for messages.
const EXPIRES: Duration = Duration::from_secs(10);
/// Messages per pull request.
const BATCH: usize = 256;
/// An abandoned consumer is removed by the server after this.
const INACTIVE: Duration = Duration::from_secs(30);
/// Longest pause between attempts to recreate the consumer.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The reader's state between items.
pub(crate) struct Reader {
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// The sequence the reader gives next.
    next: u64,
    messages: Option<pull::Stream>,
    consumer: Option<String>,
    failures: u32,
    done: bool,
}

impl Reader {
    pub(crate) fn new(js: jetstream::Context, config: &JournalConfig, next: u64) -> Self {
        Reader {
            js,
            stream: config.stream.clone(),
            subject: config.subject.clone(),
            next,
            messages: None,
            consumer: None,
            failures: 0,
            done: false,
        }
    }

    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Entry, ClusterError>> {
        futures::stream::unfold(self, |mut reader| async move {
            let item = reader.next_item().await?;
            Some((item, reader))
        })
    }

    /// The next message, or the error that ends the stream (then `None`).
    async fn next_item(&mut self) -> Option<Result<Entry, ClusterError>> {
        if self.done {
            return None;
        }
        loop {
            let Some(messages) = self.messages.as_mut() else {
                self.subscribe().await;
                continue;
            };
            let message = match messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::info!(stream = %self.stream, next = self.next, error = %e,
                        "journal reader: consumer failed, recreating");
                    self.drop_consumer();
                    continue;
                }
                None => {
                    self.drop_consumer();
                    continue;
                }
            };
            let (seq, time_micros) = match message.info() {
                Ok(info) => (info.stream_sequence, micros(info.published)),
                Err(e) => {
                    tracing::warn!(error = %e, "journal reader: message without metadata");
                    self.drop_consumer();
                    continue;
                }
            };
            if seq < self.next {
                continue; // a recreated consumer repeating: already given
            }
            if seq > self.next {
                // Either the consumer skipped messages it had sent (lost
                // with a server between it and this client), or the stream
                // lacks them: only the stream can say which.
                self.drop_consumer();
                match self.stream_holds(self.next).await {
                    Ok(false) => {
                        self.done = true;
                        return Some(Err(ClusterError::Gap {
                            expected: self.next,
                            found: seq,
                        }));
                    }
                    Ok(true) => {
                        tracing::info!(stream = %self.stream, next = self.next, found = seq,
                        "journal reader: the consumer skipped messages lost in transit; reading again from the next one")
                    }
                    Err(e) => {
                        tracing::info!(stream = %self.stream, next = self.next, found = seq, error = %e,
                        "journal reader: the consumer skipped ahead and the stream cannot say yet whether it holds the next message; reading again from it")
                    }
                }
                continue;
            }
            self.next += 1;
            self.failures = 0;
            return Some(Ok(Entry {
                sequence: seq,
                time_micros,
                payload: message.message.payload.clone(),
            }));
        }
    }

    /// Creates a consumer at `self.next`, retrying (with a backoff up to a
    /// second) until one is made: the stream may be electing a leader.
    async fn subscribe(&mut self) {
        loop {
            match self.try_subscribe().await {
                Ok(()) => return,
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let pause = Duration::from_millis(50)
                        .saturating_mul(self.failures)
                        .min(MAX_BACKOFF);
                    tracing::info!(stream = %self.stream, next = self.next, error = %e,
                        "journal reader: cannot create consumer yet");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn try_subscribe(&mut self) -> Result<(), String> {
        let config = pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.next,
            },
            ack_policy: jetstream::consumer::AckPolicy::None,
            filter_subject: self.subject.clone(),
            inactive_threshold: INACTIVE,
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        };
        let consumer = self
            .js
            .create_consumer_on_stream(config, &self.stream)
            .await
            .map_err(|e| e.to_string())?;
        self.consumer = Some(consumer.cached_info().name.clone());
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .expires(EXPIRES)
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        self.messages = Some(messages);
        Ok(())
    }

    /// Whether the stream holds message `seq` (asked of the stream's
    /// leader; an error when it cannot answer now).
    async fn stream_holds(&self, seq: u64) -> Result<bool, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        match stream.get_raw_message(seq).await {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Forgets the current consumer and asks the server to delete it (in
    /// the background; the server removes it after `INACTIVE` anyway).
    fn drop_consumer(&mut self) {
        self.messages = None;
        if let Some(name) = self.consumer.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let js = self.js.clone();
            let stream = self.stream.clone();
            handle.spawn(async move {
                let _ = js.delete_consumer_from_stream(&name, &stream).await;
            });
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.drop_consumer();
    }
}
