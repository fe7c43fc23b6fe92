//! The KV cache manager: which blocks of the pool hold each sequence's KV. It finds a new
//! sequence's computed prefix in the prefix cache, allocates the blocks (slots) a step's
//! tokens need, registers blocks as they fill, and frees a sequence's blocks; the scheduler
//! ([`super::scheduler`]) decides who runs and asks it for blocks (vLLM v1's
//! `KVCacheManager`, nano-vllm's `BlockManager`).
//!
//! A sequence's KV state is its `num_computed_tokens` and `block_table` (see
//! [`super::sequence`]): the token at position `p` lives in block `block_table[p /
//! block_size]` at offset `p % block_size`, its slot ([`kv_slot`]).

use super::block_pool::BlockPool;
use super::sequence::Sequence;

pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_prefix_caching: bool,
}

/// The KV cache slot of position `p` of a sequence with blocks `table`.
pub fn kv_slot(table: &[u32], p: usize, block_size: usize) -> i32 {
    (table[p / block_size] as usize * block_size + p % block_size) as i32
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        KvCacheManager {
            pool: BlockPool::new(num_blocks),
            block_size,
            enable_prefix_caching,
        }
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_free(&self) -> usize {
        self.pool.num_free()
    }

    /// Blocks that hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// New blocks `seq` needs so that its table covers its first `num_tokens` tokens.
    pub fn blocks_needed(&self, seq: &Sequence, num_tokens: usize) -> usize {
        self.blocks_for(num_tokens).saturating_sub(seq.block_table.len())
    }

    /// The computed prefix of a waiting `seq` in the prefix cache: how many of its first full
    /// blocks are cached (0 without prefix caching). At most the full blocks before its last
    /// token: a step must compute at least one token to produce logits, and cached blocks are
    /// never written.
    pub fn computed_blocks(&self, seq: &mut Sequence) -> usize {
        if !self.enable_prefix_caching {
            return 0;
        }
        let bs = self.block_size;
        let max_hits = (seq.total_len() - 1) / bs;
        seq.extend_block_hashes(bs, max_hits);
        seq.block_hashes[..max_hits]
            .iter()
            .take_while(|&&h| self.pool.peek(h).is_some())
            .count()
    }

    /// Free blocks that taking the first `hits` cached blocks of `seq` removes from the free
    /// list (cached blocks no sequence holds stay on it until reused).
    pub fn cached_blocks_on_free_list(&self, seq: &Sequence, hits: usize) -> usize {
        seq.block_hashes[..hits]
            .iter()
            .filter(|&&h| self.pool.peek(h).is_some_and(|b| self.pool.is_free(b)))
            .count()
    }

    /// Gives a waiting `seq` (no blocks yet) its first `hits` blocks from the prefix cache and
    /// `new_blocks` fresh ones; the caller counted the free blocks.
    pub fn allocate_with_prefix(&mut self, seq: &mut Sequence, hits: usize, new_blocks: usize) {
        for j in 0..hits {
            let block = self
                .pool
                .lookup(seq.block_hashes[j])
                .expect("peeked by computed_blocks");
            seq.block_table.push(block);
        }
        for _ in 0..new_blocks {
            seq.block_table
                .push(self.pool.allocate().expect("free blocks counted by the caller"));
        }
    }

    /// Extends `seq`'s table to cover its first `num_tokens` tokens; the caller checked that
    /// [`KvCacheManager::blocks_needed`] blocks are free.
    pub fn allocate_slots(&mut self, seq: &mut Sequence, num_tokens: usize) {
        for _ in 0..self.blocks_needed(seq, num_tokens) {
            seq.block_table
                .push(self.pool.allocate().expect("free blocks counted by the caller"));
        }
    }

    /// Registers in the prefix cache the blocks of `seq` that became full and final as its
    /// computed tokens went from `old` to `new` (nothing without prefix caching).
    pub fn register_full_blocks(&mut self, seq: &mut Sequence, old: usize, new: usize) {
        let bs = self.block_size;
        if self.enable_prefix_caching && new / bs > old / bs {
            seq.extend_block_hashes(bs, new / bs);
            for j in old / bs..new / bs {
                self.pool.register(seq.block_table[j], seq.block_hashes[j]);
            }
        }
    }

    /// Returns all of `seq`'s blocks to the pool, last block first (see `block_pool`: its
    /// longest-prefix blocks, the ones others most likely share, stay cached longest).
    pub fn free(&mut self, seq: &mut Sequence) {
        for &b in seq.block_table.iter().rev() {
            self.pool.free(b);
        }
        seq.block_table.clear();
    }

    /// Checks that the pool's reference counts are exactly the block tables of `seqs` (the
    /// pool's own invariants are `pool().check_invariants()`).
    pub fn check_ref_counts<'a>(&self, seqs: impl Iterator<Item = &'a Sequence>) -> Result<(), String> {
        let mut refs = vec![0u32; self.pool.num_blocks()];
        for seq in seqs {
            for &b in &seq.block_table {
                refs[b as usize] += 1;
            }
        }
        for (b, &r) in refs.iter().enumerate() {
            if self.pool.ref_count(b as u32) != r {
                return Err(format!(
                    "block {b}: ref count {} but {r} tables hold it",
                    self.pool.ref_count(b as u32)
                ));
            }
        }
        Ok(())
    }
}
