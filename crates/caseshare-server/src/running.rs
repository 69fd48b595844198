//! A broker running in a task of the caller's runtime, with a handle to
//! stop it: what embedders (the bench, the demo) use instead of driving
//! [`crate::serve`] with a shutdown future of their own.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::{Bound, ServeError};

/// A started broker.
#[derive(Debug)]
pub struct Running {
    /// Where it listens, its verifier key and the dev PKI it made, if any.
    pub bound: Bound,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

/// Starts a broker on the current tokio runtime and returns once its
/// sockets are bound. A broker that refuses to start (damaged store, bad
/// keys, a port in use) returns that refusal.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    let task = tokio::spawn(crate::serve(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |bound| {
            let _ = bound_tx.send(bound);
        },
    ));
    match bound_rx.await {
        Ok(bound) => Ok(Running {
            bound,
            stop: Some(stop_tx),
            task,
        }),
        // `serve` returned before binding: its result says why.
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(ServeError::Secret(
                "the broker stopped before it was listening".into(),
            )),
            Err(e) => Err(ServeError::Io {
                context: "the broker's task".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        },
    }
}

impl Running {
    /// Stops the broker gracefully (streams end, in-flight writes commit,
    /// the writer drains) and returns how `serve` ended.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Io {
                context: "the broker's task".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Whether the broker has stopped (by itself, e.g. after a failed commit).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        let mut config = Config::load(None, |_| None).unwrap();
        config.data_dir = dir.to_path_buf();
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.ops_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    /// Once `stop` returns the store is closed: the same data directory
    /// opens again at once in the same process (sled takes a lock on its
    /// files, so a store still held by a lingering task would refuse).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_broker_has_closed_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for round in 0..3 {
            let running = start(config(&data))
                .await
                .unwrap_or_else(|e| panic!("start {round}: {e}"));
            running.stop().await.unwrap();
            let reopened =
                caseshare_store::sled_backend::SledStore::open(&data.join("store"), 1 << 20);
            assert!(reopened.is_ok(), "round {round}: {:?}", reopened.err());
        }
    }
}
