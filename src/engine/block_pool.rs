//! The pool of KV-cache blocks: allocation, reference counts and the prefix cache.
//!
//! Every block is either free (reference count 0, on the free list) or used (count >= 1,
//! held by that many sequences' block tables; a count above 1 is a prefix shared through the
//! cache). The free list is a doubly linked list threaded through two index arrays, so that
//! allocate, free, and taking a cached block out of the middle of the list are all O(1)
//! (vLLM v1's `FreeKVCacheBlockQueue`).
//!
//! The prefix cache: a full block whose KV is final may carry its content hash
//! ([`BlockPool::register`]). When such a block is freed it keeps its hash and its KV, and
//! stays findable by [`BlockPool::lookup`] until [`BlockPool::allocate`] hands it out for
//! other content. Freed blocks go to the tail of the free list and allocation takes the
//! head, so the least recently freed cached block is evicted first (LRU). Callers free a
//! sequence's blocks last block first, so that its longest-prefix blocks (the ones other
//! requests most likely share) outlive its tail.
//!
//! Block ids are `u32`: the GPU side's block tables and slot mapping are 32-bit.

use std::collections::HashMap;

use super::prefix_hash::BlockHash;

/// End of the free list.
const NONE: u32 = u32::MAX;

#[derive(Debug)]
pub struct BlockPool {
    /// Sequences holding each block; 0 means free.
    ref_counts: Vec<u32>,
    /// The content hash of each block registered in the prefix cache. Invariant: `hashes[b]
    /// == Some(h)` exactly when `cached[h] == b`.
    hashes: Vec<Option<BlockHash>>,
    /// Free-list links (`NONE` at the ends); meaningful only for free blocks.
    prev: Vec<u32>,
    next: Vec<u32>,
    /// Least recently freed block, the next to be allocated.
    head: u32,
    /// Most recently freed block.
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, u32>,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks, numbered `0..num_blocks` and allocated in that
    /// order at first.
    pub fn new(num_blocks: usize) -> Self {
        assert!(num_blocks < NONE as usize, "a pool holds fewer than 2^32 - 1 blocks");
        let n = num_blocks as u32;
        let prev = (0..n).map(|b| if b == 0 { NONE } else { b - 1 }).collect();
        let next = (0..n).map(|b| if b + 1 == n { NONE } else { b + 1 }).collect();
        BlockPool {
            ref_counts: vec![0; num_blocks],
            hashes: vec![None; num_blocks],
            prev,
            next,
            head: if n == 0 { NONE } else { 0 },
            tail: if n == 0 { NONE } else { n - 1 },
            num_free: num_blocks,
            cached: HashMap::new(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks on the free list, cached ones included (they can be evicted at any time).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free
    }

    /// Blocks registered in the prefix cache, free or used.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    pub fn is_free(&self, block: u32) -> bool {
        self.ref_counts[block as usize] == 0
    }

    /// The block's prefix-cache hash, if it is registered.
    pub fn block_hash(&self, block: u32) -> Option<BlockHash> {
        self.hashes[block as usize]
    }

    /// Takes the least recently freed block, with reference count 1 and no hash (a cached
    /// block is evicted from the prefix cache here). `None` when every block is used.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = self.head;
        if block == NONE {
            return None;
        }
        self.unlink(block);
        if let Some(h) = self.hashes[block as usize].take() {
            self.cached.remove(&h);
        }
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// Drops one reference. At zero the block goes to the tail of the free list; a
    /// registered block keeps its hash and stays findable until it is reallocated.
    ///
    /// Panics on a free block: a double free means a block table is corrupt.
    pub fn free(&mut self, block: u32) {
        let count = &mut self.ref_counts[block as usize];
        assert!(*count > 0, "BlockPool::free: block {block} is already free");
        *count -= 1;
        if *count == 0 {
            self.push_tail(block);
        }
    }

    /// A prefix-cache hit takes a reference: a free cached block leaves the free list with
    /// count 1, a used one gains a reference. `None` on a miss.
    pub fn lookup(&mut self, hash: BlockHash) -> Option<u32> {
        let block = *self.cached.get(&hash)?;
        if self.ref_counts[block as usize] == 0 {
            self.unlink(block);
        }
        self.ref_counts[block as usize] += 1;
        Some(block)
    }

    /// The block cached under `hash`, without touching it (to plan an admission before
    /// committing to it).
    pub fn peek(&self, hash: BlockHash) -> Option<u32> {
        self.cached.get(&hash).copied()
    }

    /// Registers a used block whose KV is complete under its content hash. Returns whether
    /// the block is now cached under `hash`: `false` when another block already holds the
    /// hash (two sequences computed the same prefix before either was registered); the first
    /// stays the cached one and this block stays unregistered, freed like any other.
    ///
    /// Panics if the block is free or registered under a different hash.
    pub fn register(&mut self, block: u32, hash: BlockHash) -> bool {
        assert!(
            self.ref_counts[block as usize] > 0,
            "BlockPool::register: block {block} is free"
        );
        if let Some(existing) = self.hashes[block as usize] {
            assert_eq!(
                existing, hash,
                "BlockPool::register: block {block} already holds another hash"
            );
            return true;
        }
        match self.cached.get(&hash) {
            Some(_) => false,
            None => {
                self.cached.insert(hash, block);
                self.hashes[block as usize] = Some(hash);
                true
            }
        }
    }

    /// Drops every cached hash; used blocks stay used. Returns how many were dropped.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let n = self.cached.len();
        self.cached.clear();
        self.hashes.iter_mut().for_each(|h| *h = None);
        n
    }

    /// Checks every invariant with a full walk; for tests and debugging.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.num_blocks();
        let mut on_list = vec![false; n];
        let mut walked = 0usize;
        let mut prev = NONE;
        let mut cur = self.head;
        while cur != NONE {
            let b = cur as usize;
            if b >= n {
                return Err(format!("free list holds out-of-range block {cur}"));
            }
            if on_list[b] {
                return Err(format!("free list visits block {cur} twice"));
            }
            on_list[b] = true;
            walked += 1;
            if self.prev[b] != prev {
                return Err(format!("block {cur}: prev link {} != {prev}", self.prev[b]));
            }
            prev = cur;
            cur = self.next[b];
        }
        if prev != self.tail {
            return Err(format!("free list ends at {prev}, tail is {}", self.tail));
        }
        if walked != self.num_free {
            return Err(format!("free list has {walked} blocks, num_free is {}", self.num_free));
        }
        for (b, &count) in self.ref_counts.iter().enumerate() {
            if (count == 0) != on_list[b] {
                return Err(format!("block {b}: ref count {count} but on free list: {}", on_list[b]));
            }
        }
        if self.num_free + self.num_used() != n {
            return Err("free + used != num_blocks".into());
        }
        for (&h, &b) in &self.cached {
            if self.hashes.get(b as usize) != Some(&Some(h)) {
                return Err(format!(
                    "prefix cache maps {h:?} to block {b}, which holds {:?}",
                    self.hashes.get(b as usize)
                ));
            }
        }
        let hashed = self.hashes.iter().filter(|h| h.is_some()).count();
        if hashed != self.cached.len() {
            return Err(format!(
                "{hashed} blocks carry a hash, the prefix cache has {}",
                self.cached.len()
            ));
        }
        Ok(())
    }

    fn unlink(&mut self, block: u32) {
        let (p, nx) = (self.prev[block as usize], self.next[block as usize]);
        match p {
            NONE => self.head = nx,
            p => self.next[p as usize] = nx,
        }
        match nx {
            NONE => self.tail = p,
            nx => self.prev[nx as usize] = p,
        }
        self.prev[block as usize] = NONE;
        self.next[block as usize] = NONE;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, block: u32) {
        self.prev[block as usize] = self.tail;
        self.next[block as usize] = NONE;
        match self.tail {
            NONE => self.head = block,
            t => self.next[t as usize] = block,
        }
        self.tail = block;
        self.num_free += 1;
    }
}
