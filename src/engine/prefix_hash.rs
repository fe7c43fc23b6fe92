//! Content hashes of full KV-cache blocks, the keys of the prefix cache.
//!
//! A block's KV depends on every token before it (attention) and, for image placeholder
//! tokens, on the image's features; and through M-RoPE, the positions of later text depend
//! on the grids of earlier images. So a block's hash chains its parent's hash (which covers
//! the whole prefix) with the block's own token ids and the images whose placeholder spans
//! fall in it. Two blocks with equal hashes therefore hold equal KV, and a request can reuse
//! another's blocks for a shared prefix (nano-vllm's chained-hash idea, vLLM v1's
//! `BlockHash`).
//!
//! Only full blocks are hashed: the last, partial block of a sequence is still being written
//! and is never shared.
//!
//! The hash is BLAKE3 in keyed mode under a key drawn from the OS's random source once per
//! process ([`HashKey::process`]), truncated to 128 bits, over this little-endian byte
//! encoding of a block:
//!
//! ```text
//! parent:  0u8                         (first block of a sequence)
//!        | 1u8, parent hash as u128
//! tokens:  count as u32, then each token id as u32
//! images:  for each image whose span intersects the block, in prompt order:
//!            1u8, content hash u128, span start relative to the block's first token i64
//!            (negative when the image began in an earlier block), span length u64
//!          then 0u8
//! ```
//!
//! The tags and the count make the encoding injective, so different blocks differ as byte
//! strings. Why keyed: the cache is shared by every tenant, and a collision silently serves
//! one prompt's KV to another. An unkeyed hash (the FNV-1a this replaced, or any public
//! function) lets a caller search offline for a prompt whose block collides with another
//! tenant's; with a secret key nobody outside the process can compute a hash, so collisions
//! are left to chance, and at 128 bits chance never finds one. The key changes per process,
//! so hashes are not comparable across runs; nothing stores them. Cost: one keyed BLAKE3 of
//! about 270 bytes per full 64-token block, well under a microsecond.
//!
//! The caller's image content hash must cover everything that determines the image's
//! features and its grid (the pixels after resizing, the grid dimensions); the service uses
//! [`image_content_hash`] of the encoded bytes, keyed the same way.

use std::sync::OnceLock;

use rand::TryRngCore;

use super::sequence::ImageSpan;

/// The hash of one full block and, through its parent, of the whole prefix up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

/// A 256-bit BLAKE3 key. The engine uses one per process ([`HashKey::process`]); tests make
/// their own to show that hashes depend on it.
#[derive(Clone)]
pub struct HashKey([u8; 32]);

impl HashKey {
    pub fn from_bytes(bytes: [u8; 32]) -> HashKey {
        HashKey(bytes)
    }

    /// A fresh key from the OS's random source (falling back to the thread RNG, itself
    /// seeded from the OS, if the direct read fails).
    pub fn random() -> HashKey {
        let mut key = [0u8; 32];
        if rand::rngs::OsRng.try_fill_bytes(&mut key).is_err() {
            rand::Rng::fill(&mut rand::rng(), &mut key);
        }
        HashKey(key)
    }

    /// This process's key: drawn once, on first use.
    pub fn process() -> &'static HashKey {
        static KEY: OnceLock<HashKey> = OnceLock::new();
        KEY.get_or_init(HashKey::random)
    }

    /// A key for another purpose, derived from this one (domain separation: an image's
    /// hash can never equal a block's hash by construction of the input).
    fn derive(&self, purpose: &[u8]) -> HashKey {
        HashKey(*blake3::keyed_hash(&self.0, purpose).as_bytes())
    }

    fn hash128(&self, bytes: &[u8]) -> u128 {
        let full = blake3::keyed_hash(&self.0, bytes);
        let mut low = [0u8; 16];
        low.copy_from_slice(&full.as_bytes()[..16]);
        u128::from_le_bytes(low)
    }
}

impl std::fmt::Debug for HashKey {
    // The key is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// The identity of an image for the prefix cache: keyed BLAKE3 (this process's key, derived
/// for images) of its encoded bytes, 128 bits. Equal bytes give equal hashes within a
/// process; nobody without the key can make two images collide.
pub fn image_content_hash(bytes: &[u8]) -> u128 {
    static IMAGE_KEY: OnceLock<HashKey> = OnceLock::new();
    IMAGE_KEY
        .get_or_init(|| HashKey::process().derive(b"ocrvl image identity v1"))
        .hash128(bytes)
}

/// [`image_content_hash`] under a given key (tests).
pub fn image_content_hash_with(key: &HashKey, bytes: &[u8]) -> u128 {
    key.derive(b"ocrvl image identity v1").hash128(bytes)
}

/// The hash of the block holding `tokens` (exactly one block's worth) at token index
/// `block_start` of its sequence, given the parent block's hash and the sequence's image
/// spans (sorted by start, as in the prompt). Only images intersecting the block are hashed.
/// Keyed with this process's key.
pub fn hash_block(parent: Option<BlockHash>, block_start: usize, tokens: &[u32], images: &[ImageSpan]) -> BlockHash {
    hash_block_with(HashKey::process(), parent, block_start, tokens, images)
}

/// [`hash_block`] under a given key.
pub fn hash_block_with(
    key: &HashKey,
    parent: Option<BlockHash>,
    block_start: usize,
    tokens: &[u32],
    images: &[ImageSpan],
) -> BlockHash {
    // The encoding is built whole and hashed in one call: one pass over ~270 bytes.
    let mut buf = Vec::with_capacity(1 + 16 + 4 + 4 * tokens.len() + 34);
    match parent {
        None => buf.push(0),
        Some(BlockHash(p)) => {
            buf.push(1);
            buf.extend_from_slice(&p.to_le_bytes());
        }
    }
    buf.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    for &t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    let block_end = block_start + tokens.len();
    for img in images {
        if img.start >= block_end {
            break; // sorted: every later image starts later still
        }
        if img.end() <= block_start {
            continue;
        }
        buf.push(1);
        buf.extend_from_slice(&img.content_hash.to_le_bytes());
        buf.extend_from_slice(&(img.start as i64 - block_start as i64).to_le_bytes());
        buf.extend_from_slice(&(img.len as u64).to_le_bytes());
    }
    buf.push(0);
    BlockHash(key.hash128(&buf))
}

/// Extends `hashes`, the chain of hashes of a sequence's first blocks, to cover its first
/// `num_blocks` blocks; `num_blocks` is capped at the number of full blocks in `tokens`, so a
/// partial block is never hashed. Hashes already in `hashes` are kept (the content of a
/// full block never changes: sequences only append), so calling this as a sequence grows
/// hashes each block once.
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    tokens: &[u32],
    images: &[ImageSpan],
    block_size: usize,
    num_blocks: usize,
) {
    let num_blocks = num_blocks.min(tokens.len() / block_size);
    for j in hashes.len()..num_blocks {
        let start = j * block_size;
        let parent = j.checked_sub(1).map(|p| hashes[p]);
        let h = hash_block(parent, start, &tokens[start..start + block_size], images);
        hashes.push(h);
    }
}

/// The hashes of every full block of `tokens`, first block first.
pub fn full_block_hashes(tokens: &[u32], images: &[ImageSpan], block_size: usize) -> Vec<BlockHash> {
    let mut hashes = Vec::with_capacity(tokens.len() / block_size);
    extend_block_hashes(&mut hashes, tokens, images, block_size, usize::MAX);
    hashes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BLAKE3's keyed-mode test vector (the reference `test_vectors.json`, input length 0,
    /// key "whats the Elvish word for friend"): the function really is keyed BLAKE3.
    #[test]
    fn keyed_blake3_reference_vector() {
        let key = HashKey::from_bytes(*b"whats the Elvish word for friend");
        let hex: String = key
            .hash128(b"")
            .to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "92b2b75604ed3c761f9d6f62392c8a92");
    }
}
