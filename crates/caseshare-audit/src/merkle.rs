//! The RFC 6962 / RFC 9162 §2.1 Merkle tree over SHA-256: leaf and node
//! hashing, tree roots, inclusion and consistency proof generation, and their
//! verification.
//!
//! This module owns the tree's *mathematics* and nothing about storage.
//! Proof generation is generic over a [`NodeSource`], anything that can hand
//! out the hash of a complete, aligned ("perfect") subtree: [`MemTree`] keeps
//! every level in memory, and [`crate::tiles::TiledTree`] reads them from
//! tiles. A proof is expressed as perfect-subtree hashes plus, where the path
//! crosses the tree's ragged right edge, hashes computed on the fly from the
//! perfect subtrees covering that edge, so every proof costs O(log n) node
//! reads (the approach of transparency-dev/merkle's `proof` package and of
//! C2SP tlog-tiles).
//!
//! Verification follows transparency-dev/merkle's `proof.VerifyInclusion`
//! and `proof.VerifyConsistency`, including their strictness: a consistency
//! proof from an empty tree (`size1 == 0`) is always rejected, equal sizes
//! require an empty proof, the proof length must be exactly the expected one,
//! the index must be below the size and the leaf hash must be 32 bytes. On
//! top of that, every proof element must be 32 bytes, and the roots of a
//! consistency proof between different sizes must be 32 bytes (no genuine
//! root has another length).
//!
//! Node coordinates: a perfect subtree at `level` L and `index` i covers the
//! leaves `[i * 2^L, (i + 1) * 2^L)`; level 0 holds the leaf hashes.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Length in bytes of every hash in the tree (SHA-256).
pub const HASH_LEN: usize = 32;

/// A SHA-256 tree hash: a leaf hash, an interior node hash or a root.
pub type Hash = [u8; HASH_LEN];

/// Domain-separation prefix of leaf hashes (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of interior node hashes (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The leaf hash of `data`: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([LEAF_PREFIX])
        .chain_update(data)
        .finalize()
        .into()
}

/// The interior node hash of two child hashes: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    hash_children(left, right)
}

/// `SHA-256(0x01 || left || right)` over arbitrary byte strings (RFC 6962's
/// `HashChildren`); [`node_hash`] is the same for 32-byte hashes.
pub fn hash_children(left: &[u8], right: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([NODE_PREFIX])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The root of the tree whose leaves have the given leaf hashes, computed by
/// RFC 6962's recursive definition (the left subtree holds the largest power
/// of two strictly smaller than the number of leaves). The empty tree's root
/// is [`empty_root`]. O(n) hashes, O(log n) stack.
pub fn root_from_leaf_hashes(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [only] => *only,
        _ => {
            let k = split_point(leaf_hashes.len() as u64) as usize;
            let (left, right) = leaf_hashes.split_at(k);
            node_hash(&root_from_leaf_hashes(left), &root_from_leaf_hashes(right))
        }
    }
}

/// The largest power of two strictly smaller than `n`; `n` must be >= 2.
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Which of the two roots of a consistency check a mismatch concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// The root of an inclusion proof's tree.
    Tree,
    /// The root of the older (smaller) tree of a consistency proof.
    Old,
    /// The root of the newer (larger) tree of a consistency proof.
    New,
}

impl std::fmt::Display for RootKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RootKind::Tree => "tree",
            RootKind::Old => "old (size1)",
            RootKind::New => "new (size2)",
        })
    }
}

/// Why an inclusion or consistency proof was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error(
        "leaf index {index} is outside a tree of size {size}: an inclusion proof needs index < tree size"
    )]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        size: u64,
    },
    /// The leaf hash is not a SHA-256 hash.
    #[error(
        "leaf hash is {len} bytes, expected 32: pass the RFC 6962 leaf hash SHA-256(0x00 || leaf), not the leaf itself"
    )]
    BadLeafHashLength {
        /// Length of the supplied leaf hash.
        len: usize,
    },
    /// A proof element is not a SHA-256 hash.
    #[error("proof hash #{position} is {len} bytes, expected 32")]
    BadProofHashLength {
        /// Zero-based position of the element in the proof.
        position: usize,
        /// Its length.
        len: usize,
    },
    /// A root to check a consistency proof against is not a SHA-256 hash.
    #[error("the {which} root is {len} bytes, expected 32")]
    BadRootLength {
        /// Which root.
        which: RootKind,
        /// Its length.
        len: usize,
    },
    /// The proof does not have the number of hashes the sizes dictate.
    #[error(
        "proof has {got} hashes, but a proof for these sizes/index must have exactly {want}: the proof does not belong to these parameters"
    )]
    WrongProofLength {
        /// Hashes supplied.
        got: usize,
        /// Hashes required.
        want: usize,
    },
    /// The newer tree is smaller than the older one.
    #[error(
        "size2 ({size2}) is smaller than size1 ({size1}): a consistency proof goes from an older, smaller tree to a newer one"
    )]
    SizeDecreased {
        /// Older size.
        size1: u64,
        /// Newer size.
        size2: u64,
    },
    /// A consistency proof from the empty tree was supplied.
    #[error(
        "a consistency proof from an empty tree (size1 = 0) is meaningless: every tree extends the empty tree, so there is nothing to verify"
    )]
    EmptyOldTree,
    /// Equal sizes, but the proof is not empty.
    #[error("both trees have size {size}, so the proof must be empty, but it has {len} hashes")]
    NonEmptyProofForEqualSizes {
        /// The common size.
        size: u64,
        /// Hashes supplied.
        len: usize,
    },
    /// Different sizes, but no proof hashes.
    #[error("the proof is empty, but sizes {size1} and {size2} differ, so it needs hashes")]
    EmptyProof {
        /// Older size.
        size1: u64,
        /// Newer size.
        size2: u64,
    },
    /// The proof leads to a different root than the one expected.
    #[error(
        "the proof yields {which} root {} but the expected root is {}: the proof, leaf hash, index or sizes are wrong, or the log was rewritten",
        hex::encode(.computed),
        hex::encode(.expected)
    )]
    RootMismatch {
        /// Which root did not match.
        which: RootKind,
        /// The root computed from the proof.
        computed: Vec<u8>,
        /// The root the caller expected.
        expected: Vec<u8>,
    },
}

fn check_root(which: RootKind, computed: &[u8], expected: &[u8]) -> Result<(), ProofError> {
    if computed == expected {
        Ok(())
    } else {
        Err(ProofError::RootMismatch {
            which,
            computed: computed.to_vec(),
            expected: expected.to_vec(),
        })
    }
}

fn to_hashes<P: AsRef<[u8]>>(proof: &[P]) -> Result<Vec<Hash>, ProofError> {
    proof
        .iter()
        .enumerate()
        .map(|(position, p)| {
            let p = p.as_ref();
            Hash::try_from(p).map_err(|_| ProofError::BadProofHashLength {
                position,
                len: p.len(),
            })
        })
        .collect()
}

/// Splits an inclusion proof for `index` in a tree of `size` into the number
/// of hashes below the point where the paths to `index` and `size - 1`
/// diverge (`inner`) and the number above it (`border`). Needs index < size.
fn decompose_inclusion_proof(index: u64, size: u64) -> (usize, usize) {
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = index.checked_shr(inner as u32).unwrap_or(0).count_ones() as usize;
    (inner, border)
}

fn chain_inner(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        seed = if (index >> i) & 1 == 0 {
            node_hash(&seed, h)
        } else {
            node_hash(h, &seed)
        };
    }
    seed
}

fn chain_inner_right(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if (index >> i) & 1 == 1 {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

fn chain_border_right(mut seed: Hash, proof: &[Hash]) -> Hash {
    for h in proof {
        seed = node_hash(h, &seed);
    }
    seed
}

/// The root implied by an inclusion proof of the leaf with hash `leaf_hash` at
/// `index` in a tree of `tree_size` leaves (proof hashes ordered from the leaf
/// upwards, as RFC 6962 and RFC 9162 produce them).
pub fn root_from_inclusion_proof<P: AsRef<[u8]>>(
    leaf_hash: &[u8],
    index: u64,
    tree_size: u64,
    proof: &[P],
) -> Result<Hash, ProofError> {
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    let leaf = Hash::try_from(leaf_hash).map_err(|_| ProofError::BadLeafHashLength {
        len: leaf_hash.len(),
    })?;
    let (inner, border) = decompose_inclusion_proof(index, tree_size);
    if proof.len() != inner + border {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want: inner + border,
        });
    }
    let proof = to_hashes(proof)?;
    let (inner_part, border_part) = proof.split_at(inner);
    let res = chain_inner(leaf, inner_part, index);
    Ok(chain_border_right(res, border_part))
}

/// Verifies that the leaf with hash `leaf_hash` sits at `index` in the tree of
/// `tree_size` leaves whose root is `root`.
///
/// Accepts proof hashes as anything byte-like (`[u8; 32]`, `Vec<u8>` from a
/// protobuf `repeated bytes`, …); each must be 32 bytes.
pub fn verify_inclusion<P: AsRef<[u8]>>(
    leaf_hash: &[u8],
    index: u64,
    tree_size: u64,
    proof: &[P],
    root: &[u8],
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_hash, index, tree_size, proof)?;
    check_root(RootKind::Tree, &computed, root)
}

/// Verifies that the tree of `size2` leaves with root `root2` extends (is an
/// append-only continuation of) the tree of `size1` leaves with root `root1`.
///
/// As in transparency-dev/merkle: `size1 == 0` is always rejected; when
/// `size1 == size2` the proof must be empty and the roots are compared as
/// byte strings.
pub fn verify_consistency<P: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    proof: &[P],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizeDecreased { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::NonEmptyProofForEqualSizes {
                size: size1,
                len: proof.len(),
            });
        }
        return check_root(RootKind::New, root1, root2);
    }
    if proof.is_empty() {
        return Err(ProofError::EmptyProof { size1, size2 });
    }
    let old_root = Hash::try_from(root1).map_err(|_| ProofError::BadRootLength {
        which: RootKind::Old,
        len: root1.len(),
    })?;
    if root2.len() != HASH_LEN {
        return Err(ProofError::BadRootLength {
            which: RootKind::New,
            len: root2.len(),
        });
    }

    let (inner, border) = decompose_inclusion_proof(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    // size1 < size2 guarantees shift < inner.
    let inner = inner.saturating_sub(shift);

    // The proof starts with the root of the largest perfect subtree ending at
    // size1, unless size1 is a power of two (then that subtree is the old tree
    // itself and its root is root1).
    let size1_is_power_of_two = size1.is_power_of_two();
    let start = usize::from(!size1_is_power_of_two);
    if proof.len() != start + inner + border {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want: start + inner + border,
        });
    }
    let proof = to_hashes(proof)?;
    let (seed, rest) = match proof.split_first() {
        Some((first, rest)) if !size1_is_power_of_two => (*first, rest),
        _ => (old_root, &proof[..]),
    };
    let (inner_part, border_part) = rest.split_at(inner);
    let mask = (size1 - 1) >> shift;

    let hash1 = chain_border_right(chain_inner_right(seed, inner_part, mask), border_part);
    check_root(RootKind::Old, &hash1, root1)?;
    let hash2 = chain_border_right(chain_inner(seed, inner_part, mask), border_part);
    check_root(RootKind::New, &hash2, root2)
}

/// A source of perfect-subtree hashes for proof generation.
pub trait NodeSource {
    /// Why a node could not be read.
    type Error;

    /// The number of leaves the source knows; proofs and roots can be
    /// produced for any size up to this.
    fn tree_size(&self) -> u64;

    /// The hash of the perfect subtree at `level` covering the leaves
    /// `[index << level, (index + 1) << level)`; that range must lie within
    /// [`NodeSource::tree_size`].
    fn perfect_node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

impl<T: NodeSource + ?Sized> NodeSource for &T {
    type Error = T::Error;

    fn tree_size(&self) -> u64 {
        (**self).tree_size()
    }

    fn perfect_node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        (**self).perfect_node(level, index)
    }
}

/// Why a proof or root could not be produced.
#[derive(Debug, Error)]
pub enum ProofGenError<E> {
    /// The leaf index is not inside the requested tree.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// Requested leaf index.
        index: u64,
        /// Requested tree size.
        size: u64,
    },
    /// The requested tree is larger than the log.
    #[error("tree size {requested} is larger than the log, which has {available} entries")]
    BeyondTree {
        /// Requested tree size.
        requested: u64,
        /// Entries in the log.
        available: u64,
    },
    /// A consistency proof towards a smaller tree was requested.
    #[error(
        "cannot prove consistency from size {size1} to the smaller size {size2}: size1 must be <= size2"
    )]
    SizeDecreased {
        /// Older size.
        size1: u64,
        /// Newer size.
        size2: u64,
    },
    /// A consistency proof from the empty tree was requested.
    #[error(
        "a consistency proof from an empty tree (size1 = 0) is meaningless and verifiers reject it; use size1 >= 1"
    )]
    EmptyOldTree,
    /// The node source failed.
    #[error("could not read a node of the Merkle tree: {0}")]
    Source(#[source] E),
}

/// The hash of the RFC 6962 subtree over the leaves `[begin, end)`, which must
/// be a node of the tree (begin aligned to the smallest power of two >=
/// `end - begin`). Built from the perfect subtrees named by the bits of
/// `end - begin`, combined right to left: O(log n) reads and hashes.
fn range_hash<S: NodeSource + ?Sized>(begin: u64, end: u64, src: &S) -> Result<Hash, S::Error> {
    let mut acc: Option<Hash> = None;
    let mut pos = end;
    let mut rem = end - begin;
    while rem != 0 {
        let level = rem.trailing_zeros();
        pos -= 1u64 << level;
        let h = src.perfect_node(level as u8, pos >> level)?;
        acc = Some(match acc {
            None => h,
            Some(right) => node_hash(&h, &right),
        });
        rem &= rem - 1;
    }
    Ok(acc.unwrap_or_else(empty_root))
}

fn check_available<S: NodeSource + ?Sized>(
    size: u64,
    src: &S,
) -> Result<(), ProofGenError<S::Error>> {
    let available = src.tree_size();
    if size > available {
        return Err(ProofGenError::BeyondTree {
            requested: size,
            available,
        });
    }
    Ok(())
}

/// The root of the tree made of the first `size` leaves of `src`.
pub fn tree_root<S: NodeSource + ?Sized>(
    size: u64,
    src: &S,
) -> Result<Hash, ProofGenError<S::Error>> {
    check_available(size, src)?;
    range_hash(0, size, src).map_err(ProofGenError::Source)
}

/// The RFC 6962 / RFC 9162 inclusion proof (audit path) of leaf `index` in
/// the tree of the first `size` leaves, ordered from the leaf upwards.
/// Reads O(log size) perfect nodes.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    index: u64,
    size: u64,
    src: &S,
) -> Result<Vec<Hash>, ProofGenError<S::Error>> {
    check_available(size, src)?;
    if index >= size {
        return Err(ProofGenError::IndexOutOfRange { index, size });
    }
    // Walk down from the root; [begin, end) is the current subtree, always a
    // node of the tree. At most one sibling (the first right sibling) is
    // imperfect; once the walk goes left the subtree is perfect.
    let mut proof = Vec::with_capacity(64);
    let (mut begin, mut end) = (0u64, size);
    while end - begin > 1 {
        let k = split_point(end - begin);
        let mid = begin + k;
        if index < mid {
            proof.push(range_hash(mid, end, src).map_err(ProofGenError::Source)?);
            end = mid;
        } else {
            let level = k.trailing_zeros();
            proof.push(
                src.perfect_node(level as u8, begin >> level)
                    .map_err(ProofGenError::Source)?,
            );
            begin = mid;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The RFC 6962 / RFC 9162 consistency proof between the trees of the first
/// `size1` and `size2` leaves, ordered as RFC 9162's `SUBPROOF` emits it
/// after reversal (lowest subtree first). Empty when the sizes are equal.
/// Reads O(log size2) perfect nodes.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    size1: u64,
    size2: u64,
    src: &S,
) -> Result<Vec<Hash>, ProofGenError<S::Error>> {
    check_available(size2, src)?;
    if size1 > size2 {
        return Err(ProofGenError::SizeDecreased { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofGenError::EmptyOldTree);
    }
    let mut proof = Vec::with_capacity(64);
    if size1 == size2 {
        return Ok(proof);
    }
    // RFC 9162 SUBPROOF(m, D[begin:end], b), unrolled. `complete` is b: true
    // while the old tree's root is a node the verifier already knows.
    let (mut begin, mut end) = (0u64, size2);
    let mut complete = true;
    loop {
        if size1 == end {
            if !complete {
                // [begin, end) is perfect here (end came from a left turn).
                proof.push(range_hash(begin, end, src).map_err(ProofGenError::Source)?);
            }
            break;
        }
        let k = split_point(end - begin);
        let mid = begin + k;
        if size1 <= mid {
            proof.push(range_hash(mid, end, src).map_err(ProofGenError::Source)?);
            end = mid;
        } else {
            let level = k.trailing_zeros();
            proof.push(
                src.perfect_node(level as u8, begin >> level)
                    .map_err(ProofGenError::Source)?,
            );
            begin = mid;
            complete = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// A node that a [`MemTree`] does not (yet) have.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("node (level {level}, index {index}) is not a complete subtree of a tree of size {size}")]
pub struct MissingNode {
    /// Requested level.
    pub level: u8,
    /// Requested index.
    pub index: u64,
    /// Leaves in the tree.
    pub size: u64,
}

/// An in-memory Merkle tree that keeps every perfect subtree hash, level by
/// level, so any node read is O(1). Meant for tests, tools and small trees;
/// the server persists its tree with [`crate::tiles::TiledTree`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemTree {
    /// `levels[l][i]` is the perfect subtree at level `l`, index `i`.
    levels: Vec<Vec<Hash>>,
}

impl MemTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree with the given leaf hashes.
    pub fn from_leaf_hashes(leaf_hashes: &[Hash]) -> Self {
        let mut tree = Self::new();
        for h in leaf_hashes {
            tree.push(*h);
        }
        tree
    }

    /// Appends one leaf hash; amortised O(1).
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut level = 0;
        let mut cur = leaf_hash;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(cur);
            if row.len() % 2 == 1 {
                break;
            }
            cur = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        // Every node `range_hash` reads for the whole tree exists by construction.
        match range_hash(0, self.len(), self) {
            Ok(root) => root,
            Err(missing) => unreachable!("MemTree invariant broken: {missing}"),
        }
    }
}

impl NodeSource for MemTree {
    type Error = MissingNode;

    fn tree_size(&self) -> u64 {
        self.len()
    }

    fn perfect_node(&self, level: u8, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(usize::from(level))
            .and_then(|row| row.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(MissingNode {
                level,
                index,
                size: self.len(),
            })
    }
}
