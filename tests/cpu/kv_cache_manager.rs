//! The KV cache manager on its own: slot allocation, the prefix cache's computed blocks,
//! registration of full blocks, and freeing, checked against the pool's counts.

use ocrvl::engine::kv_cache_manager::kv_slot;
use ocrvl::engine::{KvCacheManager, Sequence, StopConditions};

const BS: usize = 4;

fn seq(id: u64, prompt: &[u32]) -> Sequence {
    Sequence::new(id, prompt.to_vec(), Vec::new(), StopConditions::max_tokens(8))
}

#[test]
fn allocate_slots_covers_the_tokens_and_free_returns_every_block() {
    let mut kv = KvCacheManager::new(8, BS, false);
    let mut s = seq(1, &[1, 2, 3, 4, 5, 6]);
    assert_eq!(kv.blocks_needed(&s, 6), 2);
    kv.allocate_slots(&mut s, 6);
    assert_eq!(s.block_table().len(), 2);
    assert_eq!(kv.num_free(), 6);
    // Within the last block: nothing new; one past it: one more.
    assert_eq!(kv.blocks_needed(&s, 8), 0);
    assert_eq!(kv.blocks_needed(&s, 9), 1);
    kv.allocate_slots(&mut s, 9);
    assert_eq!(s.block_table().len(), 3);
    let table = s.block_table().to_vec();
    assert_eq!(kv_slot(&table, 5, BS), table[1] as i32 * BS as i32 + 1);
    kv.check_ref_counts(std::iter::once(&s)).unwrap();
    kv.free(&mut s);
    assert!(s.block_table().is_empty());
    assert_eq!(kv.num_free(), 8);
    kv.check_ref_counts(std::iter::empty()).unwrap();
    kv.pool().check_invariants().unwrap();
}

#[test]
fn registered_blocks_are_the_next_prompts_computed_prefix() {
    let mut kv = KvCacheManager::new(8, BS, true);
    let prompt: Vec<u32> = (10..20).collect(); // 2 full blocks and 2 tokens
    let mut a = seq(1, &prompt);
    assert_eq!(kv.computed_blocks(&mut a), 0, "nothing is cached yet");
    kv.allocate_with_prefix(&mut a, 0, 3);
    kv.register_full_blocks(&mut a, 0, prompt.len());
    let a_table = a.block_table().to_vec();

    // The same prompt: both full blocks are cached (never the block of the last token).
    let mut b = seq(2, &prompt);
    assert_eq!(kv.computed_blocks(&mut b), 2);
    assert_eq!(kv.cached_blocks_on_free_list(&b, 2), 0, "a still holds them");
    kv.allocate_with_prefix(&mut b, 2, 1);
    assert_eq!(b.block_table()[..2], a_table[..2]);
    assert_eq!(kv.pool().ref_count(a_table[0]), 2);
    kv.check_ref_counts([&a, &b].into_iter()).unwrap();

    // Freed, the cached blocks stay findable and sit on the free list until reused.
    kv.free(&mut a);
    kv.free(&mut b);
    let mut c = seq(3, &prompt);
    assert_eq!(kv.computed_blocks(&mut c), 2);
    assert_eq!(kv.cached_blocks_on_free_list(&c, 2), 2);
    // A different first token shares nothing (the hash is chained over the prefix).
    let mut other: Vec<u32> = prompt.clone();
    other[0] = 99;
    let mut d = seq(4, &other);
    assert_eq!(kv.computed_blocks(&mut d), 0);
    kv.pool().check_invariants().unwrap();
}

#[test]
fn without_prefix_caching_nothing_is_computed_or_registered() {
    let mut kv = KvCacheManager::new(4, BS, false);
    let prompt: Vec<u32> = (0..9).collect();
    let mut a = seq(1, &prompt);
    kv.allocate_slots(&mut a, prompt.len());
    kv.register_full_blocks(&mut a, 0, prompt.len());
    assert_eq!(kv.pool().num_cached(), 0);
    let mut b = seq(2, &prompt);
    assert_eq!(kv.computed_blocks(&mut b), 0);
}
