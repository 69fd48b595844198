//! The persisted layout of the audit Merkle tree: C2SP tlog-tiles style hash
//! tiles, the append path that produces them, and a [`NodeSource`] over them.
//!
//! # Layout
//!
//! The tree's hashes are stored in *tiles* of height 8 ([`TILE_HEIGHT`]): the
//! tile at tile level `L` and tile index `N` holds the hashes of the tree
//! nodes at tree level `8 * L` with node indices `N * 256 .. N * 256 + 255`
//! ([`TILE_WIDTH`] = 256). Tile level 0 therefore holds the leaf hashes, tile
//! level 1 the roots of the 256-leaf subtrees, and so on. Nodes at the seven
//! tree levels between two tile levels are not stored; they are recomputed
//! from the tile's hashes when read (at most 255 hashes per tile read, see
//! [`TileNodes`]).
//!
//! A tile's stored bytes are its hashes concatenated in index order, 32 bytes
//! each, with no header: a full tile is 8192 bytes. The tile at the right
//! edge of the tree is *partial*: it holds exactly the hashes that are
//! complete in the current tree (`(size >> 8L) % 256` of them) and is
//! rewritten, longer, as the tree grows. Because the log is append-only a
//! longer version of a tile always begins with the shorter one, so a store
//! that holds the tiles of size `n` can answer for every size `<= n`.
//!
//! The store key is the pair `(level: u8, index: u64)`; [`TileKey::to_bytes`]
//! gives a 9-byte encoding (`level`, then `index` big-endian) whose byte
//! order sorts tiles by level, then index.
//!
//! # Appending
//!
//! [`TiledTree`] keeps the tree's right edge in memory: the compact range
//! (one hash per set bit of the size) and the partial tile of every tile
//! level. [`TiledTree::append`] therefore reads nothing and costs one hash per
//! leaf (amortised) plus copying the tiles it returns; the caller writes the
//! returned [`TileWrite`]s in the same atomic batch as the entries. After a
//! restart, [`TiledTree::open`] rebuilds the right edge from the store with
//! O(log n) tile reads.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;

use thiserror::Error;

use crate::merkle::{self, HASH_LEN, Hash, NodeSource, ProofGenError, node_hash};

/// Tree levels per tile.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes per full tile (`2^TILE_HEIGHT`).
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Bytes in a full tile.
pub const FULL_TILE_BYTES: usize = TILE_WIDTH as usize * HASH_LEN;

/// The address of a tile: `level` is the tile level (tree level `8 * level`),
/// `index` the tile's position in that row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileKey {
    /// Tile level.
    pub level: u8,
    /// Tile index within the level.
    pub index: u64,
}

impl TileKey {
    /// Length of [`TileKey::to_bytes`].
    pub const ENCODED_LEN: usize = 9;

    /// `[level, index as big-endian u64]`: sorts by level, then index.
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = self.level;
        out[1..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    /// The inverse of [`TileKey::to_bytes`]; `None` unless exactly 9 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&level, index) = bytes.split_first()?;
        let index = u64::from_be_bytes(index.try_into().ok()?);
        Some(Self { level, index })
    }
}

/// A tile to write: replace the stored value of `(level, index)` with `data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileWrite {
    /// Tile level.
    pub level: u8,
    /// Tile index within the level.
    pub index: u64,
    /// Concatenated 32-byte hashes (a multiple of 32 bytes, at most 8192).
    pub data: Vec<u8>,
}

impl TileWrite {
    /// The tile's address.
    pub fn key(&self) -> TileKey {
        TileKey {
            level: self.level,
            index: self.index,
        }
    }
}

/// Read access to persisted tiles.
pub trait TileStore {
    /// Why a read failed.
    type Error: std::error::Error + 'static;

    /// The stored bytes of tile `(level, index)`, or `None` if never written.
    fn get_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, Self::Error>;
}

impl<T: TileStore + ?Sized> TileStore for &T {
    type Error = T::Error;

    fn get_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, Self::Error> {
        (**self).get_tile(level, index)
    }
}

/// A [`TileStore`] in a `HashMap`, for tests and tools.
#[derive(Clone, Debug, Default)]
pub struct MemTileStore {
    tiles: HashMap<TileKey, Vec<u8>>,
}

impl MemTileStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores one tile, replacing any previous version.
    pub fn put_tile(&mut self, level: u8, index: u64, data: Vec<u8>) {
        self.tiles.insert(TileKey { level, index }, data);
    }

    /// Applies the writes returned by [`TiledTree::append`].
    pub fn apply(&mut self, writes: impl IntoIterator<Item = TileWrite>) {
        for w in writes {
            self.put_tile(w.level, w.index, w.data);
        }
    }

    /// Number of stored tiles.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// Whether no tile is stored.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }
}

impl TileStore for MemTileStore {
    type Error = Infallible;

    fn get_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, Infallible> {
        Ok(self.tiles.get(&TileKey { level, index }).cloned())
    }
}

/// Why tiles could not provide a node.
#[derive(Debug, Error)]
pub enum TileError<E> {
    /// The store failed.
    #[error("reading tile (level {level}, index {index}) from the tile store failed: {source}")]
    Store {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
        /// The store's error.
        #[source]
        source: E,
    },
    /// A tile the tree needs was never written.
    #[error(
        "tile (level {level}, index {index}) is missing from the tile store, but a tree of size {tree_size} needs it: the tiles are behind the log entries or were lost; rebuild them from the entries"
    )]
    MissingTile {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
        /// The tree size being served.
        tree_size: u64,
    },
    /// A tile is shorter than the tree needs.
    #[error(
        "tile (level {level}, index {index}) holds {have} hashes, but a tree of size {tree_size} needs at least {need}: the tiles are behind the log entries; rebuild them from the entries"
    )]
    ShortTile {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
        /// Hashes in the stored tile.
        have: usize,
        /// Hashes needed.
        need: usize,
        /// The tree size being served.
        tree_size: u64,
    },
    /// A tile's length is not a whole number of hashes (or exceeds a full tile).
    #[error(
        "tile (level {level}, index {index}) is {len} bytes, which is not a whole number (at most 256) of 32-byte hashes: the tile store is corrupt"
    )]
    MalformedTile {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
        /// Its length in bytes.
        len: usize,
    },
    /// The requested node is not complete in the tree.
    #[error(
        "node (level {level}, index {index}) is not a complete subtree of a tree of size {tree_size}"
    )]
    NodeOutOfRange {
        /// Tree level.
        level: u8,
        /// Node index.
        index: u64,
        /// The tree size being served.
        tree_size: u64,
    },
}

/// Nodes at tree level `8 * tile_level` in a tree of `size` leaves.
fn row_len(size: u64, tile_level: u32) -> u64 {
    size.checked_shr(tile_level * TILE_HEIGHT).unwrap_or(0)
}

/// A [`NodeSource`] over a [`TileStore`] for a tree of a given size,
/// optionally overlaid with the in-memory right-edge tiles of a
/// [`TiledTree`] (which then win over the store for those tiles).
///
/// It caches every tile it reads, together with the tile-internal levels it
/// has hashed (at most 511 hashes, 16 KiB, per tile), for its own lifetime:
/// a single proof reads each tile once, and generating many proofs through
/// one `TileNodes` hashes each tile at most once. Keep it short-lived (it
/// borrows the store anyway).
#[derive(Debug)]
pub struct TileNodes<'a, S: ?Sized> {
    store: &'a S,
    size: u64,
    edge: &'a [Vec<u8>],
    /// Per tile: `levels[h]` holds the nodes `h` levels above the tile's row.
    cache: RefCell<HashMap<TileKey, Vec<Vec<Hash>>>>,
}

impl<'a, S: TileStore + ?Sized> TileNodes<'a, S> {
    /// Nodes of the tree of `size` leaves, read from `store` only (the store
    /// must hold that tree's tiles, including the partial right-edge ones).
    pub fn new(store: &'a S, size: u64) -> Self {
        Self::with_edge(store, size, &[])
    }

    fn with_edge(store: &'a S, size: u64, edge: &'a [Vec<u8>]) -> Self {
        Self {
            store,
            size,
            edge,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Reads tile `(level, index)`, preferring the in-memory right edge.
    fn tile(&self, level: u8, index: u64) -> Result<Cow<'a, [u8]>, TileError<S::Error>> {
        let edge_tile = row_len(self.size, u32::from(level)) / TILE_WIDTH;
        if index == edge_tile
            && let Some(data) = self.edge.get(usize::from(level))
        {
            return Ok(Cow::Borrowed(data.as_slice()));
        }
        let data = self
            .store
            .get_tile(level, index)
            .map_err(|source| TileError::Store {
                level,
                index,
                source,
            })?
            .ok_or(TileError::MissingTile {
                level,
                index,
                tree_size: self.size,
            })?;
        if data.len() % HASH_LEN != 0 || data.len() > FULL_TILE_BYTES {
            return Err(TileError::MalformedTile {
                level,
                index,
                len: data.len(),
            });
        }
        Ok(Cow::Owned(data))
    }
}

fn tile_hashes(data: &[u8]) -> Vec<Hash> {
    data.chunks_exact(HASH_LEN)
        .map(|c| {
            let mut h = [0u8; HASH_LEN];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

impl<S: TileStore + ?Sized> NodeSource for TileNodes<'_, S> {
    type Error = TileError<S::Error>;

    fn tree_size(&self) -> u64 {
        self.size
    }

    fn perfect_node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        // The node covers [index << level, (index + 1) << level).
        if level >= 64 || (u128::from(index) + 1) << level > u128::from(self.size) {
            return Err(TileError::NodeOutOfRange {
                level,
                index,
                tree_size: self.size,
            });
        }
        // level < 64, so the tile level is at most 7.
        let tile_level = (u32::from(level) / TILE_HEIGHT) as u8;
        let height = (u32::from(level) % TILE_HEIGHT) as usize;
        // The node sits `height` levels above the tile row, at `pos`.
        let per_tile = TILE_WIDTH >> height;
        let key = TileKey {
            level: tile_level,
            index: index / per_tile,
        };
        let pos = (index % per_tile) as usize;

        let mut cache = self.cache.borrow_mut();
        let levels = match cache.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let data = self.tile(key.level, key.index)?;
                v.insert(vec![tile_hashes(&data)])
            }
        };
        while levels.len() <= height {
            let Some(below) = levels.last() else { break };
            let above = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(above);
        }
        match levels.get(height).and_then(|row| row.get(pos)) {
            Some(h) => Ok(*h),
            None => Err(TileError::ShortTile {
                level: key.level,
                index: key.index,
                have: levels.first().map_or(0, Vec::len),
                need: (pos + 1) << height,
                tree_size: self.size,
            }),
        }
    }
}

/// The audit tree's append-side state: its size, its compact range and the
/// partial tile of each tile level. See the module docs for the layout.
///
/// `append` updates this state before the caller has persisted the returned
/// tiles. If persisting fails, discard the tree and [`TiledTree::open`] it
/// again at the durable size (or keep a `clone()` from before the append).
///
/// Roots and proofs read the right-edge partial tiles from memory and every
/// other tile from the store, so apply an append's writes before serving
/// proofs that cover it (the server only serves durable sizes anyway).
#[derive(Clone, Debug)]
pub struct TiledTree {
    size: u64,
    /// `frontier[l]` is the perfect subtree at level `l` ending the compact
    /// range, valid only where bit `l` of `size` is set.
    frontier: Vec<Hash>,
    /// `edge[t]`: bytes of the tile at tile level `t` that receives the next
    /// node of that row; it holds `(size >> 8t) % 256` hashes.
    edge: Vec<Vec<u8>>,
}

impl Default for TiledTree {
    fn default() -> Self {
        Self::new()
    }
}

impl TiledTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            size: 0,
            frontier: vec![[0u8; HASH_LEN]; 64],
            edge: Vec::new(),
        }
    }

    /// Reopens the tree of `size` leaves from the tiles in `store`: reads the
    /// partial tile of each tile level and the O(log n) nodes of the compact
    /// range. Extra hashes in a stored partial tile (a store ahead of `size`)
    /// are ignored and will be overwritten by the next append.
    pub fn open<S: TileStore + ?Sized>(size: u64, store: &S) -> Result<Self, TileError<S::Error>> {
        let mut edge = Vec::new();
        let mut tile_level = 0u32;
        loop {
            let row = row_len(size, tile_level);
            if row == 0 {
                break;
            }
            let level = tile_level as u8;
            let index = row / TILE_WIDTH;
            let width = (row % TILE_WIDTH) as usize;
            let mut data = Vec::with_capacity(FULL_TILE_BYTES);
            if width > 0 {
                let stored = TileNodes::new(store, size).tile(level, index)?;
                let Some(prefix) = stored.get(..width * HASH_LEN) else {
                    return Err(TileError::ShortTile {
                        level,
                        index,
                        have: stored.len() / HASH_LEN,
                        need: width,
                        tree_size: size,
                    });
                };
                data.extend_from_slice(prefix);
            }
            edge.push(data);
            tile_level += 1;
        }
        let mut tree = Self {
            size,
            frontier: vec![[0u8; HASH_LEN]; 64],
            edge,
        };
        let mut frontier = vec![[0u8; HASH_LEN]; 64];
        {
            let nodes = tree.nodes(store);
            for (level, slot) in frontier.iter_mut().enumerate() {
                if (size >> level) & 1 == 1 {
                    *slot = nodes.perfect_node(level as u8, (size >> level) - 1)?;
                }
            }
        }
        tree.frontier = frontier;
        Ok(tree)
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the current tree, from the in-memory compact range (no
    /// reads).
    pub fn current_root(&self) -> Hash {
        let mut acc: Option<Hash> = None;
        for (level, h) in self.frontier.iter().enumerate() {
            if (self.size >> level) & 1 == 1 {
                acc = Some(match acc {
                    None => *h,
                    Some(right) => node_hash(h, &right),
                });
            }
        }
        acc.unwrap_or_else(merkle::empty_root)
    }

    /// Appends leaf hashes and returns the tiles that changed: every tile
    /// completed by this batch and the new version of every partial tile the
    /// batch touched. Writing them (in order; a later write of the same key
    /// supersedes an earlier one, though this never returns two) alongside
    /// the entries keeps the store in step with the tree. No reads; about one
    /// hash per leaf.
    pub fn append(&mut self, leaf_hashes: &[Hash]) -> Vec<TileWrite> {
        let mut writes = Vec::new();
        let mut dirty: Vec<bool> = vec![false; self.edge.len()];
        for leaf in leaf_hashes {
            let old = self.size;
            self.record(0, old, leaf, &mut writes, &mut dirty);
            let mut cur = *leaf;
            let mut level = 0usize;
            while (old >> level) & 1 == 1 {
                cur = node_hash(&self.frontier[level], &cur);
                level += 1;
                if (level as u32).is_multiple_of(TILE_HEIGHT) {
                    let tile_level = level as u32 / TILE_HEIGHT;
                    self.record(tile_level, old >> level, &cur, &mut writes, &mut dirty);
                }
            }
            self.frontier[level] = cur;
            self.size = old + 1;
        }
        for (tile_level, changed) in dirty.iter().enumerate() {
            if *changed
                && let Some(data) = self.edge.get(tile_level)
                && !data.is_empty()
            {
                writes.push(TileWrite {
                    level: tile_level as u8,
                    index: row_len(self.size, tile_level as u32) / TILE_WIDTH,
                    data: data.clone(),
                });
            }
        }
        writes
    }

    /// Adds the node `index` of tile level `tile_level`'s row to its edge tile,
    /// emitting the tile when it becomes full.
    fn record(
        &mut self,
        tile_level: u32,
        index: u64,
        hash: &Hash,
        writes: &mut Vec<TileWrite>,
        dirty: &mut Vec<bool>,
    ) {
        let t = tile_level as usize;
        if self.edge.len() <= t {
            self.edge
                .resize_with(t + 1, || Vec::with_capacity(FULL_TILE_BYTES));
        }
        if dirty.len() <= t {
            dirty.resize(t + 1, false);
        }
        let data = &mut self.edge[t];
        debug_assert_eq!(data.len() as u64, (index % TILE_WIDTH) * HASH_LEN as u64);
        data.extend_from_slice(hash);
        if data.len() == FULL_TILE_BYTES {
            let full = std::mem::replace(data, Vec::with_capacity(FULL_TILE_BYTES));
            writes.push(TileWrite {
                level: tile_level as u8,
                index: index / TILE_WIDTH,
                data: full,
            });
            dirty[t] = false;
        } else {
            dirty[t] = true;
        }
    }

    /// A [`NodeSource`] for this tree: the in-memory right edge, then `store`.
    pub fn nodes<'a, S: TileStore + ?Sized>(&'a self, store: &'a S) -> TileNodes<'a, S> {
        TileNodes::with_edge(store, self.size, &self.edge)
    }

    /// The root of the tree of the first `size` leaves (`size <= self.size()`).
    pub fn root<S: TileStore + ?Sized>(
        &self,
        size: u64,
        store: &S,
    ) -> Result<Hash, ProofGenError<TileError<S::Error>>> {
        if size == self.size {
            return Ok(self.current_root());
        }
        merkle::tree_root(size, &self.nodes(store))
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof<S: TileStore + ?Sized>(
        &self,
        index: u64,
        size: u64,
        store: &S,
    ) -> Result<Vec<Hash>, ProofGenError<TileError<S::Error>>> {
        merkle::inclusion_proof(index, size, &self.nodes(store))
    }

    /// The consistency proof from the tree of `size1` leaves to that of `size2`.
    pub fn consistency_proof<S: TileStore + ?Sized>(
        &self,
        size1: u64,
        size2: u64,
        store: &S,
    ) -> Result<Vec<Hash>, ProofGenError<TileError<S::Error>>> {
        merkle::consistency_proof(size1, size2, &self.nodes(store))
    }

    /// The leaf hash at `index` (`index < self.size()`).
    pub fn leaf_hash<S: TileStore + ?Sized>(
        &self,
        index: u64,
        store: &S,
    ) -> Result<Hash, TileError<S::Error>> {
        self.nodes(store).perfect_node(0, index)
    }
}
