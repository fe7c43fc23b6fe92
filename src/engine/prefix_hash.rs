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
//! The hash is FNV-1a with 128-bit state (offset basis and prime from the FNV specification,
//! draft-eastlake-fnv), over this little-endian byte encoding of a block:
//!
//! ```text
//! parent:  0u8                         (first block of a sequence)
//!        | 1u8, parent hash as u128
//! tokens:  count as u32, then each token id as u32
//! images:  for each image whose span intersects the block, in prompt order:
//!            1u8, content hash u64, span start relative to the block's first token i64
//!            (negative when the image began in an earlier block), span length u64
//!          then 0u8
//! ```
//!
//! The tags and the count make the encoding injective, so different blocks differ as byte
//! strings. The result is fixed across runs, machines and builds (no `RandomState`), which
//! keeps scheduling reproducible. 128 bits, not 64, because a collision silently serves
//! another prompt's KV: with 2^64 state the birthday bound is reached by a long-lived server,
//! with 2^128 it never is. Hashing is byte-at-a-time: a 64-token block measured 0.38 µs
//! (release build, this repository's CPU host), about 50 µs for a full 8192-token step,
//! small next to the GPU step it plans. FNV rather than xxh3 keeps the crate's dependencies
//! as they are; the function is one swap away if hashing ever shows in a profile.
//!
//! The caller's image content hash must cover everything that determines the image's
//! features and its grid (the pixels after resizing, the grid dimensions).

use super::sequence::ImageSpan;

/// The hash of one full block and, through its parent, of the whole prefix up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

/// FNV-1a, 128-bit. The prime is 2^88 + 2^8 + 0x3b.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a128 {
    state: u128,
}

impl Fnv1a128 {
    pub const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
    pub const PRIME: u128 = 0x0000000001000000000000000000013b;

    pub fn new() -> Self {
        Fnv1a128 {
            state: Self::OFFSET_BASIS,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state ^= b as u128;
            self.state = self.state.wrapping_mul(Self::PRIME);
        }
    }

    pub fn write_u8(&mut self, v: u8) {
        self.write(&[v]);
    }

    pub fn write_u32(&mut self, v: u32) {
        self.write(&v.to_le_bytes());
    }

    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    pub fn write_i64(&mut self, v: i64) {
        self.write(&v.to_le_bytes());
    }

    pub fn write_u128(&mut self, v: u128) {
        self.write(&v.to_le_bytes());
    }

    pub fn finish(&self) -> u128 {
        self.state
    }
}

impl Default for Fnv1a128 {
    fn default() -> Self {
        Self::new()
    }
}

/// The hash of the block holding `tokens` (exactly one block's worth) at token index
/// `block_start` of its sequence, given the parent block's hash and the sequence's image
/// spans (sorted by start, as in the prompt). Only images intersecting the block are hashed.
pub fn hash_block(parent: Option<BlockHash>, block_start: usize, tokens: &[u32], images: &[ImageSpan]) -> BlockHash {
    let mut h = Fnv1a128::new();
    match parent {
        None => h.write_u8(0),
        Some(BlockHash(p)) => {
            h.write_u8(1);
            h.write_u128(p);
        }
    }
    h.write_u32(tokens.len() as u32);
    for &t in tokens {
        h.write_u32(t);
    }
    let block_end = block_start + tokens.len();
    for img in images {
        if img.start >= block_end {
            break; // sorted: every later image starts later still
        }
        if img.end() <= block_start {
            continue;
        }
        h.write_u8(1);
        h.write_u64(img.content_hash);
        h.write_i64(img.start as i64 - block_start as i64);
        h.write_u64(img.len as u64);
    }
    h.write_u8(0);
    BlockHash(h.finish())
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

    /// Published FNV-1a 128 test vectors (the FNV reference table).
    #[test]
    fn fnv1a_128_reference_vectors() {
        let hash = |s: &[u8]| {
            let mut h = Fnv1a128::new();
            h.write(s);
            h.finish()
        };
        assert_eq!(hash(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(hash(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
        assert_eq!(hash(b"foobar"), 0x343e1662793c64bf6f0d3597ba446f18);
    }
}
