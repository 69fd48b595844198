//! The journal: one JetStream stream of operation batches, created with
//! the configured shape (or refused when it exists with another; its
//! retention and duplicate window are updated to the configured ones),
//! appended with fencing (`Nats-Expected-Last-Sequence`) and deduplication
//! (`Nats-Msg-Id`), and read in order from any sequence (see `reader`).

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::config::{JournalConfig, connect};
use crate::error::{AppendError, ClusterError};
use crate::reader::Reader;

/// JetStream's "wrong last sequence" error code.
const WRONG_LAST_SEQUENCE: u64 = 10071;
/// JetStream's "cluster not available" / "temporarily unavailable" codes.
const UNAVAILABLE_CODES: [u64; 3] = [10008, 10009, 10006];

/// The replicated journal (see the crate documentation).
#[derive(Clone)]
pub struct Journal {
    client: async_nats::Client,
    js: jetstream::Context,
    config: JournalConfig,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("stream", &self.config.stream)
            .field("subject", &self.config.subject)
            .finish_non_exhaustive()
    }
}

/// The stream configuration the journal needs.
pub(crate) fn stream_config(config: &JournalConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        description: Some("Caseshare journal: one message per committed batch".into()),
        subjects: vec![config.subject.clone()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        // No count or size limit, and nothing is discarded for them;
        // deletion and purge are refused by the server. Messages older
        // than `max_age` (when configured; zero keeps every message) are
        // dropped: a replica behind the first message left refuses to
        // start and is seeded from a copy.
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_messages: -1,
        max_bytes: -1,
        max_age: config.max_age,
        max_messages_per_subject: -1,
        max_message_size: i32::try_from(config.max_message_bytes).unwrap_or(i32::MAX),
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        duplicate_window: config.duplicate_window,
        // Lets any replica answer direct gets (reads of one message).
        allow_direct: true,
        ..Default::default()
    }
}

/// The differences that make an existing stream unusable as the journal.
fn differences(found: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    if found.storage != want.storage {
        out.push(format!(
            "storage: found {:?}, configured {:?}",
            found.storage, want.storage
        ));
    }
    if found.num_replicas != want.num_replicas {
        out.push(format!(
            "replicas: found {}, configured {}",
            found.num_replicas, want.num_replicas
        ));
    }
    if found.subjects != want.subjects {
        out.push(format!(
            "subjects: found {:?}, configured {:?}",
            found.subjects, want.subjects
        ));
    }
    if found.retention != want.retention {
        out.push(format!(
            "retention: found {:?}, configured {:?}",
            found.retention, want.retention
        ));
    }
    let limited =
        found.max_messages > 0 || found.max_bytes > 0 || found.max_messages_per_subject > 0;
    if limited {
        out.push(format!(
            "limits: found max_msgs {} max_bytes {} max_msgs_per_subject {}, configured none \
             (the journal drops messages by age only)",
            found.max_messages, found.max_bytes, found.max_messages_per_subject
        ));
    }
    out
}

/// The existing stream's configuration with the configured retention
/// (`max_age`) and duplicate window, when either differs: JetStream
/// changes both in place. `None` when both are as configured.
fn retention_update(found: &stream::Config, want: &stream::Config) -> Option<stream::Config> {
    if found.max_age == want.max_age && found.duplicate_window == want.duplicate_window {
        return None;
    }
    Some(stream::Config {
        max_age: want.max_age,
        duplicate_window: want.duplicate_window,
        ..found.clone()
    })
}

impl Journal {
    /// Connects, then creates the stream if absent or checks the one there:
    /// another storage, replica count, subject list, retention policy or a
    /// count or size limit gives [`ClusterError::Mismatch`] naming each
    /// difference, and nothing is changed. Another `max_age` or duplicate
    /// window is changed to the configured one (logged).
    pub async fn open(config: &JournalConfig) -> Result<Journal, ClusterError> {
        let client = connect(config).await?;
        Self::open_with(client, config).await
    }

    /// As [`Journal::open`] over an existing connection.
    pub async fn open_with(
        client: async_nats::Client,
        config: &JournalConfig,
    ) -> Result<Journal, ClusterError> {
        config.validate()?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let want = stream_config(config);
        let js_err = |e: &dyn std::fmt::Display| {
            ClusterError::JetStream(format!("stream {}: {e}", config.stream))
        };
        let mut stream = match js.get_stream(&config.stream).await {
            Ok(s) => s,
            Err(e) if not_found(&e) => {
                // A concurrent creator's identical stream is fine.
                match js.create_stream(want.clone()).await {
                    Ok(s) => s,
                    Err(c) => js
                        .get_stream(&config.stream)
                        .await
                        .map_err(|_| js_err(&c))?,
                }
            }
            Err(e) => return Err(js_err(&e)),
        };
        let info = stream.info().await.map_err(|e| js_err(&e))?;
        let diffs = differences(&info.config, &want);
        if !diffs.is_empty() {
            return Err(ClusterError::Mismatch {
                what: format!("stream {}", config.stream),
                differences: diffs.join("; "),
            });
        }
        if let Some(update) = retention_update(&info.config, &want) {
            js.update_stream(&update).await.map_err(|e| js_err(&e))?;
            tracing::info!(
                stream = %config.stream,
                max_age_s = want.max_age.as_secs(),
                was_max_age_s = info.config.max_age.as_secs(),
                duplicate_window_s = want.duplicate_window.as_secs(),
                was_duplicate_window_s = info.config.duplicate_window.as_secs(),
                "journal stream's retention updated to the configured one"
            );
        }
        Ok(Journal {
            client,
            js,
            config: config.clone(),
        })
    }

    /// The connection (the lease may share it).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    /// Appends `bytes` if the stream's last sequence is `expected_last`
    /// (0: the stream is empty), under message id `msg_id`, and waits for
    /// JetStream's acknowledgement (stored by a quorum of replicas; fsynced
    /// there with `sync_interval: always`). Gives the new sequence.
    ///
    /// [`AppendError::Unavailable`] means the outcome is unknown: retry
    /// with the same `msg_id` and `expected_last` (see its documentation).
    pub async fn append(
        &self,
        expected_last: u64,
        msg_id: &str,
        bytes: Bytes,
    ) -> Result<u64, AppendError> {
        let message = jetstream::message::PublishMessage::build()
            .payload(bytes)
            .message_id(msg_id)
            .expected_last_sequence(expected_last)
            .expected_stream(&self.config.stream);
        let ack = self.send(message).await;
        match ack {
            Ok(ack) if ack.duplicate => Err(AppendError::Duplicate {
                sequence: ack.sequence,
            }),
            Ok(ack) => Ok(ack.sequence),
            Err(e) => match classify(expected_last, &e) {
                fenced @ AppendError::Fenced { .. } => {
                    Err(self.fenced_or_ours(expected_last, msg_id, fenced).await)
                }
                other => Err(other),
            },
        }
    }

    /// Appends `bytes` wherever the stream is (no expected sequence: the
    /// journal's order decides where it applies), under message id
    /// `msg_id`, and waits for JetStream's acknowledgement (stored by a
    /// quorum). Gives the sequence, also when an earlier try with the same
    /// id had been stored (within the stream's duplicate window).
    /// [`AppendError::Unavailable`] means the outcome is unknown: retry with
    /// the same `msg_id`.
    pub async fn propose(&self, msg_id: &str, bytes: Bytes) -> Result<u64, AppendError> {
        let message = jetstream::message::PublishMessage::build()
            .payload(bytes)
            .message_id(msg_id)
            .expected_stream(&self.config.stream);
        let ack = self.send(message).await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => Err(classify(0, &e)),
        }
    }

    /// When the stream stored message `seq` (µs since the epoch, the
    /// stream leader's clock, the same on every replica), read from the
    /// stream leader; `None` if there is no such message.
    pub async fn time_of(&self, seq: u64) -> Result<Option<i64>, ClusterError> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(micros(m.time))),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(ClusterError::JetStream(e.to_string())),
        }
    }

    /// Publishes to the journal's subject and waits for the stream's
    /// acknowledgement.
    async fn send(
        &self,
        message: jetstream::message::PublishMessage,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        match self
            .js
            .send_publish(self.config.subject.clone(), message)
            .await
        {
            Ok(future) => future.await,
            Err(e) => Err(e),
        }
    }

    /// A fenced append whose own earlier try is the message right after
    /// `expected_last` (stored, its acknowledgement lost, the retry checked
    /// against the moved sequence) is a duplicate of that message, not a
    /// deposition, whatever the order of the server's checks and however
    /// long ago. If the message cannot be read, the refusal stands.
    async fn fenced_or_ours(
        &self,
        expected_last: u64,
        msg_id: &str,
        fenced: AppendError,
    ) -> AppendError {
        let Ok(stream) = self.js.get_stream(&self.config.stream).await else {
            return fenced;
        };
        let Some(next) = expected_last.checked_add(1) else {
            return fenced;
        };
        match stream.get_raw_message(next).await {
            Ok(m)
                if m.headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .is_some_and(|id| id.as_str() == msg_id) =>
            {
                AppendError::Duplicate { sequence: next }
            }
            _ => fenced,
        }
    }

    /// The stream's last sequence (0 when empty), as its leader says.
    pub async fn last_sequence(&self) -> Result<u64, ClusterError> {
        Ok(self.bounds().await?.1)
    }

    /// The stream's first and last sequences, as its leader says: `(0, 0)`
    /// when nothing was ever appended; once messages older than `max_age`
    /// are dropped the first is past 1 (`last + 1` when every message
    /// was dropped).
    pub async fn bounds(&self) -> Result<(u64, u64), ClusterError> {
        let mut stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// Every message from sequence `seq` (1 is the first) in order, then
    /// each new one as it is appended, without end. Reads through an
    /// ephemeral consumer without acknowledgements, recreated from the next
    /// expected sequence whenever it stalls or fails (a stream-leader
    /// change, a lost server): no sequence is skipped or repeated, and a
    /// hole in the stream ends the stream with [`ClusterError::Gap`].
    pub fn read_from(&self, seq: u64) -> BoxStream<'static, Result<(u64, Bytes), ClusterError>> {
        self.entries_from(seq)
            .map(|r| r.map(|e| (e.sequence, e.payload)))
            .boxed()
    }

    /// As [`Journal::read_from`], with each message's stored time.
    pub fn entries_from(&self, seq: u64) -> BoxStream<'static, Result<Entry, ClusterError>> {
        Reader::new(self.js.clone(), &self.config, seq.max(1))
            .into_stream()
            .boxed()
    }
}

/// One journal message as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its stream sequence (1 is the first).
    pub sequence: u64,
    /// When the stream stored it: µs since the epoch, by the stream
    /// leader's clock (the same on every replica of the stream).
    pub time_micros: i64,
    /// Its bytes.
    pub payload: Bytes,
}

/// µs since the epoch.
pub(crate) fn micros(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// Whether a stream lookup failed because there is no such stream.
fn not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(api)
        if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// What a failed publish means for the appender.
fn classify(expected: u64, error: &jetstream::context::PublishError) -> AppendError {
    let api = std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|e| (e.error_code().0, e.to_string()));
    match (error.kind(), api) {
        (PublishErrorKind::WrongLastSequence, api) => AppendError::Fenced {
            expected,
            actual: api.and_then(|(_, text)| last_number(&text)),
        },
        (_, Some((code, _))) if code == WRONG_LAST_SEQUENCE => AppendError::Fenced {
            expected,
            actual: None,
        },
        (_, Some((code, text))) if UNAVAILABLE_CODES.contains(&code) => {
            AppendError::Unavailable(text)
        }
        (
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::MaxAckPending,
            _,
        ) => AppendError::Unavailable(error.to_string()),
        (_, Some((_, text))) => AppendError::Refused(text),
        _ => AppendError::Refused(error.to_string()),
    }
}

/// The last decimal number of the server's description, before the
/// client's ` (code 400, error code 10071)` suffix ("wrong last sequence:
/// 41" → 41).
fn last_number(text: &str) -> Option<u64> {
    let text = text.split(" (code ").next().unwrap_or(text);
    text.split(|c: char| !c.is_ascii_digit())
        .rfind(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
}

/// Opens a KV bucket beside the journal (on its connection, with its
/// request timeout), creating it with `config` if absent; a concurrent
/// creator's identical bucket is fine. Gives the JetStream context too.
pub(crate) async fn open_bucket(
    journal: &Journal,
    config: jetstream::kv::Config,
) -> Result<(jetstream::Context, jetstream::kv::Store), ClusterError> {
    let js = jetstream::ContextBuilder::new()
        .timeout(journal.config().request_timeout)
        .build(journal.client().clone());
    let bucket = config.bucket.clone();
    let store = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => match js.create_key_value(config).await {
            Ok(store) => store,
            Err(e) => js
                .get_key_value(&bucket)
                .await
                .map_err(|_| ClusterError::JetStream(format!("KV bucket {bucket}: {e}")))?,
        },
    };
    Ok((js, store))
}

/// Runs an append (`attempt`) again while its outcome is unknown
/// ([`AppendError::Unavailable`]: a new stream electing its leader, a lost
/// acknowledgement), for at most `patience`, with pauses doubling from
/// 25 ms to 500 ms; gives the first other answer. The attempt must use
/// the same message id each time, so that one that did land answers
/// [`AppendError::Duplicate`] (or its sequence, for [`Journal::propose`]),
/// never a second message.
pub async fn retry_unavailable<T, F, Fut>(
    patience: std::time::Duration,
    mut attempt: F,
) -> Result<T, AppendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AppendError>>,
{
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(25);
    loop {
        match attempt().await {
            Err(AppendError::Unavailable(e)) if started.elapsed() < patience => {
                tracing::debug!(error = %e, "journal unavailable; retrying the append");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_refusals_number_is_read() {
        assert_eq!(last_number("wrong last sequence: 41"), Some(41));
        assert_eq!(
            last_number("wrong last sequence: 7 (code 400, error code 10071)"),
            Some(7)
        );
        assert_eq!(last_number("no number (code 400, error code 10071)"), None);
    }

    #[test]
    fn a_stream_with_another_shape_is_named() {
        let want = stream_config(&JournalConfig::default());
        assert!(differences(&want, &want).is_empty());
        let found = stream::Config {
            num_replicas: 1,
            storage: stream::StorageType::Memory,
            max_bytes: 1 << 30,
            ..want.clone()
        };
        let d = differences(&found, &want).join("; ");
        assert!(d.contains("replicas: found 1, configured 3"), "{d}");
        assert!(d.contains("storage"), "{d}");
        assert!(d.contains("max_bytes 1073741824"), "{d}");
    }

    #[test]
    fn another_retention_is_updated_not_refused() {
        let want = stream_config(&JournalConfig {
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(60),
            ..JournalConfig::default()
        });
        assert_eq!(retention_update(&want, &want), None);
        let found = stream::Config {
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(120),
            description: Some("kept as found".into()),
            ..want.clone()
        };
        assert!(differences(&found, &want).is_empty());
        let update = retention_update(&found, &want).unwrap();
        assert_eq!(update.max_age, Duration::from_secs(3600));
        assert_eq!(update.duplicate_window, Duration::from_secs(60));
        assert_eq!(update.description.as_deref(), Some("kept as found"));
    }
}
