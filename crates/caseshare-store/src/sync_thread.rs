//! Threads that run the `fdatasync`s handed to them, so that a commit can
//! make several files durable at once: two `fdatasync`s at once cost the
//! disk about one (the file system commits one journal transaction for
//! both, and the block layer merges their cache flushes), one after the
//! other about two.

use std::fs::File;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use crate::StoreError;

type SyncJob = (Arc<File>, SyncSender<std::io::Result<()>>);

/// An `fdatasync` under way on a sync thread.
#[derive(Debug)]
pub struct PendingSync(Option<Receiver<std::io::Result<()>>>);

impl PendingSync {
    /// No sync: nothing was written.
    pub fn none() -> Self {
        PendingSync(None)
    }

    /// Waits for it.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx
                .recv()
                .map_err(|_| StoreError::Engine("a sync thread is gone".into()))?
                .map_err(StoreError::from),
        }
    }
}

/// One sync thread, started by its first job.
#[derive(Debug)]
pub(crate) struct SyncThread {
    name: &'static str,
    queue: Mutex<Option<Sender<SyncJob>>>,
}

impl SyncThread {
    /// A sync thread named `name` (not started yet).
    pub(crate) const fn new(name: &'static str) -> Self {
        SyncThread {
            name,
            queue: Mutex::new(None),
        }
    }

    /// Starts `fdatasync` of `file` on the thread.
    pub(crate) fn sync(&self, file: Arc<File>) -> Result<PendingSync, StoreError> {
        let mut queue = self
            .queue
            .lock()
            .map_err(|_| StoreError::Engine(format!("{} poisoned", self.name)))?;
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let queued = match queue.as_ref() {
            Some(s) => s.send((file, done)),
            None => Err(std::sync::mpsc::SendError((file, done))),
        };
        if let Err(std::sync::mpsc::SendError(job)) = queued {
            // No thread yet (or it is gone): start one.
            let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
            std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || {
                    for (file, done) in rx {
                        let _ = done.send(file.sync_data());
                    }
                })?;
            tx.send(job)
                .map_err(|_| StoreError::Engine(format!("{} gone", self.name)))?;
            *queue = Some(tx);
        }
        Ok(PendingSync(Some(result)))
    }
}
