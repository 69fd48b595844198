//! The verifiable audit log at runtime: the tiled Merkle tree over every
//! audit leaf, the committed (size, root) the rest of the broker may prove
//! against, and signed checkpoints.
//!
//! The writer appends each batch's leaf hashes before committing and puts
//! the resulting tile writes in the same batch; once the batch is durable
//! it publishes the new size and root. Proofs are only served for sizes at
//! or below the published one. Every checkpoint signed is also persisted
//! outside sled (`Storage::persist_checkpoint`), so that a sled that lost
//! committed audit entries is refused at the next start.
//!
//! Proofs hold no lock: a committed size's tiles are all in the store (a
//! partial tile is only ever rewritten longer), so a proof reads the store
//! alone, as of that size, while the writer goes on appending. The tree's
//! lock guards only the append-side state.

use std::sync::{Arc, Mutex, RwLock};

use caseshare_audit::merkle::{self, Hash, leaf_hash};
use caseshare_audit::note::{NoteSigner, checkpoint_text, sign_note};
use caseshare_audit::tiles::{TileNodes, TileStore, TileWrite, TiledTree};
use caseshare_core::pb;
use caseshare_store::{Storage, StoreError};
use tokio::sync::watch;

use crate::errors::BrokerError;

/// Reads tiles from the broker's store.
pub struct StoreTiles<'a>(pub &'a dyn Storage);

impl TileStore for StoreTiles<'_> {
    type Error = StoreError;
    fn get_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.tile(level, index)
    }
}

/// The log's tree and checkpoints.
pub struct AuditLog {
    store: Arc<dyn Storage>,
    /// The append side of the tree (ahead of the committed head while a
    /// batch commits); proofs never take it.
    tree: Mutex<TiledTree>,
    committed: watch::Sender<(u64, Hash)>,
    signer: NoteSigner,
    origin: String,
    latest: RwLock<Option<pb::Checkpoint>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the tree at the stored size.
    pub fn open(
        store: Arc<dyn Storage>,
        size: u64,
        signer: NoteSigner,
        origin: String,
    ) -> Result<Arc<Self>, BrokerError> {
        let tree = TiledTree::open(size, &StoreTiles(store.as_ref()))
            .map_err(|e| BrokerError::Internal(format!("audit tree: {e}")))?;
        let root = tree.current_root();
        let (committed, _) = watch::channel((size, root));
        Ok(Arc::new(AuditLog {
            store,
            tree: Mutex::new(tree),
            committed,
            signer,
            origin,
            latest: RwLock::new(None),
        }))
    }

    /// The verifier key auditors pin (`<name>+<id>+<key>`).
    pub fn vkey(&self) -> String {
        self.signer.verifier().to_vkey()
    }

    /// Appends leaves (not yet committed); returns the tile writes to put in
    /// the same batch, and the new size and root.
    pub fn append(&self, leaves: &[Vec<u8>]) -> (Vec<TileWrite>, u64, Hash) {
        let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
        let writes = tree.append(&hashes);
        (writes, tree.size(), tree.current_root())
    }

    /// Publishes a committed size and root.
    pub fn committed(&self, size: u64, root: Hash) {
        self.committed.send_replace((size, root));
    }

    /// The committed size and root.
    pub fn head(&self) -> (u64, Hash) {
        *self.committed.borrow()
    }

    /// A receiver of committed heads.
    pub fn subscribe(&self) -> watch::Receiver<(u64, Hash)> {
        self.committed.subscribe()
    }

    /// The signed checkpoint of the committed head (signing a new one if the
    /// log grew since the last).
    pub fn checkpoint(&self) -> Result<pb::Checkpoint, BrokerError> {
        let (size, root) = self.head();
        if let Some(cp) = self
            .latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && cp.tree_size == size
        {
            return Ok(cp.clone());
        }
        let note = sign_note(&checkpoint_text(&self.origin, size, &root), &self.signer)
            .map_err(|e| BrokerError::Internal(format!("signing the checkpoint: {e}")))?;
        let cp = pb::Checkpoint {
            tree_size: size,
            root_hash: root.to_vec(),
            note,
            vkey: self.vkey(),
        };
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(cp.clone());
        metrics::counter!("caseshare_checkpoints_signed_total").increment(1);
        crate::ops::gauges::checkpoint_signed(size);
        self.persist(size, root, cp.note.clone());
        Ok(cp)
    }

    /// Signs the checkpoint of the committed head and saves it before
    /// returning (at shutdown, once the writer has drained): a clean stop
    /// leaves the guard covering every committed audit entry, so the next
    /// start notices if sled lost any of them.
    pub fn persist_final(&self) -> Result<u64, BrokerError> {
        let cp = self.checkpoint()?;
        let root: Hash = cp
            .root_hash
            .as_slice()
            .try_into()
            .map_err(|_| BrokerError::Internal("checkpoint root is not 32 bytes".into()))?;
        self.store
            .persist_checkpoint(cp.tree_size, root, &cp.note)
            .map_err(BrokerError::from)?;
        Ok(cp.tree_size)
    }

    /// Persists a checkpoint outside sled (see `caseshare_store::checkpoint`)
    /// on a blocking thread; a failure is logged (the checkpoint only guards
    /// the next start against sled going back).
    fn persist(&self, size: u64, root: Hash, note: String) {
        let store = self.store.clone();
        let write = move || {
            if let Err(e) = store.persist_checkpoint(size, root, &note) {
                tracing::error!(error = %e, size, "could not persist the audit checkpoint");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    fn check_size(&self, size: u64, field: &str) -> Result<(), BrokerError> {
        let (head, _) = self.head();
        if size > head {
            return Err(BrokerError::invalid(
                field,
                format!("the log has {head} entries"),
            ));
        }
        Ok(())
    }

    /// The inclusion proof of `index` in the tree of `size` (at most the
    /// committed head), from the store's tiles. Blocking: reads the store.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, BrokerError> {
        self.check_size(size, "tree_size")?;
        if index >= size {
            return Err(BrokerError::invalid(
                "leaf_index",
                "must be less than tree_size",
            ));
        }
        let tiles = StoreTiles(self.store.as_ref());
        merkle::inclusion_proof(index, size, &TileNodes::new(&tiles, size))
            .map_err(|e| BrokerError::Internal(format!("inclusion proof: {e}")))
    }

    /// The consistency proof from `from` to `to` (at most the committed
    /// head), from the store's tiles. Blocking: reads the store.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, BrokerError> {
        self.check_size(to, "to_size")?;
        if from == 0 {
            return Err(BrokerError::invalid("from_size", "must be at least 1"));
        }
        if from > to {
            return Err(BrokerError::invalid("from_size", "must not exceed to_size"));
        }
        let tiles = StoreTiles(self.store.as_ref());
        merkle::consistency_proof(from, to, &TileNodes::new(&tiles, to))
            .map_err(|e| BrokerError::Internal(format!("consistency proof: {e}")))
    }
}

#[cfg(test)]
mod tests;
