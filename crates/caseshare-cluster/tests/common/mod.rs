//! What every cluster test needs: a real 3-node NATS cluster (the test
//! kit's, `sync_interval: always`) and a journal configuration on it.
#![allow(dead_code)]

use std::time::Duration;

use caseshare_cluster::JournalConfig;
use caseshare_testkit::NatsCluster;

/// A 3-node cluster, with the server's version printed.
pub async fn cluster() -> NatsCluster {
    let c = NatsCluster::start(3).await;
    eprintln!("NATS cluster: {} at {:?}", c.version(), c.urls());
    c
}

/// The default journal shape (R3) on every node of `c`.
pub fn config(c: &NatsCluster) -> JournalConfig {
    JournalConfig::new(c.urls())
}

/// The same, reaching only node `i` first (another client than `config`'s).
pub fn config_via(c: &NatsCluster, i: usize) -> JournalConfig {
    let mut urls = c.urls();
    urls.rotate_left(i);
    JournalConfig {
        client_name: Some(format!("test-via-n{i}")),
        ..JournalConfig::new(urls)
    }
}

/// A bound for waits that should finish much sooner.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Opens the journal as the broker does (`caseshare_server`'s cluster
/// start): a connection or JetStream error (a node still joining the
/// meta group answers a request late) is tried again for up to
/// [`PATIENCE`], printing each wait; every other answer is returned.
pub async fn open_result(
    config: &JournalConfig,
) -> Result<caseshare_cluster::Journal, caseshare_cluster::ClusterError> {
    use caseshare_cluster::ClusterError;
    let started = std::time::Instant::now();
    loop {
        match caseshare_cluster::Journal::open(config).await {
            Err(e @ (ClusterError::Connect(_) | ClusterError::JetStream(_)))
                if started.elapsed() < PATIENCE =>
            {
                eprintln!("opening the journal: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// [`open_result`], which must succeed.
pub async fn open(config: &JournalConfig) -> caseshare_cluster::Journal {
    match open_result(config).await {
        Ok(journal) => journal,
        Err(e) => panic!("the journal did not open within {PATIENCE:?}: {e}"),
    }
}

/// Appends as a caller must: `Unavailable` (a stream that is new or
/// electing a leader answers "no stream found" or times out) is retried
/// with the same id and expected sequence, up to [`PATIENCE`]; every other
/// answer is returned as it is.
pub async fn append(
    journal: &caseshare_cluster::Journal,
    expected_last: u64,
    msg_id: &str,
    bytes: bytes::Bytes,
) -> Result<u64, caseshare_cluster::AppendError> {
    caseshare_cluster::retry_unavailable(PATIENCE, || {
        journal.append(expected_last, msg_id, bytes.clone())
    })
    .await
}

/// Appends `bytes` as the next message after `last`, retrying while the
/// journal is unavailable (a lost acknowledgement answers `Duplicate` on
/// the retry: the first try was stored); gives the sequence and how many
/// tries it took.
pub async fn append_retrying(
    journal: &caseshare_cluster::Journal,
    last: u64,
    id: &str,
    bytes: bytes::Bytes,
) -> (u64, u32) {
    use caseshare_cluster::AppendError;
    let started = std::time::Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match journal.append(last, id, bytes.clone()).await {
            Ok(seq) => return (seq, tries),
            // An earlier try was stored; its acknowledgement was lost.
            Err(AppendError::Duplicate { sequence }) => return (sequence, tries),
            Err(AppendError::Unavailable(why)) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "journal unavailable for 30 s: {why}"
                );
                // Pace the retries (a closed connection fails at once).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("append {id} after {last}: {e}"),
        }
    }
}
