//! Stores written before the event log: their events, kept in sled as
//! `E` records, move into the event log once, at open.

use super::{SledStore, be, decode, key};
use crate::{StoreError, StoredEvent};

impl SledStore {
    /// Moves events a store written before the event log kept in sled
    /// (`E` records) into the log, once.
    pub(super) fn move_legacy_events(&self) -> Result<bool, StoreError> {
        let mut legacy = Vec::new();
        let mut keys = Vec::new();
        for item in self.tree.scan_prefix([b'E']) {
            let (k, v) = item?;
            legacy.push(decode::<StoredEvent>(&k, &v)?);
            keys.push(k);
        }
        if legacy.is_empty() {
            return Ok(false);
        }
        let next = self.events.next_sequence().unwrap_or(0);
        legacy.retain(|e| e.sequence >= next);
        // Expunged events leave gaps only below the first retained one.
        let mut b = sled::Batch::default();
        if let Some(first) = legacy.first().map(|e| e.sequence)
            && self.events.next_sequence().is_none()
        {
            self.events.set_first(first)?;
            b.insert(key(b'M', &[b"first"]), be(first).to_vec());
        }
        self.events.append(&legacy)?;
        for k in keys {
            b.remove(k);
        }
        for k in self.tree.scan_prefix([b'I']).keys() {
            b.remove(k?);
        }
        self.tree.apply_batch(b)?;
        self.sync()?;
        tracing::info!(events = legacy.len(), "moved events into the event log");
        Ok(true)
    }
}
