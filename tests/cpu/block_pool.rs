//! The KV block pool (allocation, reference counts, the prefix cache's LRU eviction) and the
//! prefix hash of full blocks. CPU only.

use std::collections::HashMap;

use ocrvl::engine::prefix_hash::{
    extend_block_hashes, full_block_hashes, hash_block, hash_block_with, image_content_hash, image_content_hash_with,
    HashKey,
};
use ocrvl::engine::{BlockHash, BlockPool, ImageSpan};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn check(pool: &BlockPool) {
    if let Err(e) = pool.check_invariants() {
        panic!("block pool invariant broken: {e}");
    }
}

#[test]
fn allocates_every_block_once_then_none() {
    let mut pool = BlockPool::new(5);
    check(&pool);
    let mut got: Vec<u32> = (0..5).map(|_| pool.allocate().expect("a free block")).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4], "a fresh pool hands out blocks in order");
    assert_eq!(pool.allocate(), None);
    assert_eq!((pool.num_free(), pool.num_used()), (0, 5));
    check(&pool);
    for b in got.drain(..) {
        pool.free(b);
    }
    assert_eq!(pool.num_free(), 5);
    check(&pool);
}

#[test]
fn empty_pool_allocates_nothing() {
    let mut pool = BlockPool::new(0);
    check(&pool);
    assert_eq!(pool.allocate(), None);
}

#[test]
#[should_panic(expected = "already free")]
fn double_free_panics() {
    let mut pool = BlockPool::new(2);
    let b = pool.allocate().unwrap();
    pool.free(b);
    pool.free(b);
}

#[test]
fn freed_cached_block_stays_findable_until_reallocated() {
    let mut pool = BlockPool::new(2);
    let h = BlockHash(42);
    let a = pool.allocate().unwrap();
    assert!(pool.register(a, h));
    pool.free(a);
    assert_eq!(pool.num_free(), 2);
    assert_eq!(pool.peek(h), Some(a), "freed but cached");
    check(&pool);

    // A hit on a free cached block takes it off the free list with one reference.
    assert_eq!(pool.lookup(h), Some(a));
    assert_eq!((pool.ref_count(a), pool.num_free()), (1, 1));
    // A hit on a used block adds a reference.
    assert_eq!(pool.lookup(h), Some(a));
    assert_eq!(pool.ref_count(a), 2);
    check(&pool);
    pool.free(a);
    pool.free(a);
    check(&pool);

    // The free list is [never-used block, a]: the first allocation leaves a cached, the
    // second reallocates a and evicts its hash.
    let b = pool.allocate().unwrap();
    assert_ne!(b, a);
    assert_eq!(pool.peek(h), Some(a));
    assert_eq!(pool.allocate(), Some(a));
    assert_eq!(pool.peek(h), None, "reallocation evicts the hash");
    assert_eq!(pool.block_hash(a), None);
    assert_eq!(pool.lookup(h), None);
    check(&pool);
}

#[test]
fn eviction_takes_the_least_recently_freed_block() {
    let mut pool = BlockPool::new(3);
    let blocks: Vec<u32> = (0..3).map(|_| pool.allocate().unwrap()).collect();
    for (i, &b) in blocks.iter().enumerate() {
        assert!(pool.register(b, BlockHash(100 + i as u128)));
    }
    // Free in the order 2, 0, 1: the least recently freed is 2.
    for b in [2, 0, 1] {
        pool.free(blocks[b]);
    }
    assert_eq!(pool.allocate(), Some(blocks[2]));
    assert_eq!(pool.peek(BlockHash(102)), None);
    assert_eq!(pool.peek(BlockHash(100)), Some(blocks[0]));
    // A hit refreshes nothing by itself, but freeing again moves the block to the tail.
    assert_eq!(pool.lookup(BlockHash(100)), Some(blocks[0]));
    pool.free(blocks[0]);
    assert_eq!(pool.allocate(), Some(blocks[1]), "0 was freed more recently than 1");
    assert_eq!(pool.allocate(), Some(blocks[0]));
    check(&pool);
}

#[test]
fn register_keeps_the_first_block_for_a_hash() {
    let mut pool = BlockPool::new(2);
    let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
    assert!(pool.register(a, BlockHash(7)));
    assert!(
        pool.register(a, BlockHash(7)),
        "re-registering the same hash is a no-op"
    );
    assert!(
        !pool.register(b, BlockHash(7)),
        "a second block with the same content stays unregistered"
    );
    assert_eq!(pool.block_hash(b), None);
    assert_eq!(pool.num_cached(), 1);
    check(&pool);
    pool.free(a);
    pool.free(b);
    check(&pool);
    assert_eq!(pool.reset_prefix_cache(), 1);
    assert_eq!(pool.peek(BlockHash(7)), None);
    check(&pool);
}

/// Random allocate / free / register / lookup against a plain model of the reference counts,
/// with the invariants checked after every operation.
#[test]
fn random_operations_keep_invariants() {
    for seed in 0..8u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.random_range(1..64usize);
        let mut pool = BlockPool::new(n);
        // References we hold, one entry per reference.
        let mut held: Vec<u32> = Vec::new();
        let mut model_refs: HashMap<u32, u32> = HashMap::new();
        for op in 0..4000 {
            match rng.random_range(0..4) {
                0 => match pool.allocate() {
                    Some(b) => {
                        assert_eq!(
                            model_refs.get(&b).copied().unwrap_or(0),
                            0,
                            "seed {seed} op {op}: used block reallocated"
                        );
                        assert_eq!(pool.block_hash(b), None);
                        model_refs.insert(b, 1);
                        held.push(b);
                    }
                    None => assert_eq!(held.iter().collect::<std::collections::HashSet<_>>().len(), n),
                },
                1 if !held.is_empty() => {
                    let b = held.swap_remove(rng.random_range(0..held.len()));
                    pool.free(b);
                    *model_refs.get_mut(&b).unwrap() -= 1;
                }
                2 if !held.is_empty() => {
                    // A small hash space, so that duplicates and collisions with freed
                    // cached blocks happen often.
                    let b = held[rng.random_range(0..held.len())];
                    let h = BlockHash(rng.random_range(0..(2 * n as u128)));
                    let registered = pool.register_if_unhashed(b, h);
                    if registered {
                        assert_eq!(pool.peek(h), Some(b));
                    }
                }
                _ => {
                    let h = BlockHash(rng.random_range(0..(2 * n as u128)));
                    let expect = pool.peek(h);
                    let got = pool.lookup(h);
                    assert_eq!(got, expect);
                    if let Some(b) = got {
                        *model_refs.entry(b).or_insert(0) += 1;
                        held.push(b);
                    }
                }
            }
            if let Err(e) = pool.check_invariants() {
                panic!("seed {seed} op {op}: {e}");
            }
            for (&b, &r) in &model_refs {
                assert_eq!(pool.ref_count(b), r, "seed {seed} op {op}: block {b}");
            }
            assert_eq!(pool.num_used(), model_refs.values().filter(|&&r| r > 0).count());
        }
        for b in held.drain(..) {
            pool.free(b);
        }
        assert_eq!(pool.num_free(), n);
        check(&pool);
    }
}

/// `register` panics on a block already holding another hash; the random test registers
/// only unhashed blocks (or the same hash again).
trait RegisterIfUnhashed {
    fn register_if_unhashed(&mut self, block: u32, hash: BlockHash) -> bool;
}

impl RegisterIfUnhashed for BlockPool {
    fn register_if_unhashed(&mut self, block: u32, hash: BlockHash) -> bool {
        match self.block_hash(block) {
            Some(existing) => existing == hash,
            None => self.register(block, hash),
        }
    }
}

// ---- prefix hash ----

const BS: usize = 16;

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..100_000)).collect()
}

fn image(start: usize, len: usize, content_hash: u128) -> ImageSpan {
    ImageSpan {
        start,
        len,
        content_hash,
        num_patches: 4 * len,
    }
}

#[test]
fn equal_prefixes_hash_equal() {
    let a = tokens(100, 1);
    let mut b = a[..70].to_vec();
    b.extend(tokens(50, 2));
    let (ha, hb) = (full_block_hashes(&a, &[], BS), full_block_hashes(&b, &[], BS));
    // Tokens 0..70 agree: blocks 0..4 (0..64) are equal, block 4 (64..80) differs, and
    // every later block differs through the chain even where tokens would agree.
    assert_eq!(ha.len(), 6);
    assert_eq!(hb.len(), 7);
    assert_eq!(ha[..4], hb[..4]);
    assert!(ha[4..].iter().zip(&hb[4..]).all(|(x, y)| x != y));
}

#[test]
fn same_block_after_different_prefixes_differs() {
    let a = tokens(32, 3);
    let mut b = tokens(16, 4);
    b.extend_from_slice(&a[16..]);
    let (ha, hb) = (full_block_hashes(&a, &[], BS), full_block_hashes(&b, &[], BS));
    assert_ne!(ha[0], hb[0]);
    assert_ne!(ha[1], hb[1], "the parent hash is part of a block's hash");
}

#[test]
fn partial_blocks_are_not_hashed() {
    for len in [0, 1, 15, 16, 17, 31, 32, 33, 100] {
        assert_eq!(full_block_hashes(&tokens(len, 5), &[], BS).len(), len / BS, "len {len}");
    }
    // Extending stops at the full blocks too, and keeps what is already there.
    let t = tokens(40, 6);
    let mut chain = Vec::new();
    extend_block_hashes(&mut chain, &t, &[], BS, 1);
    assert_eq!(chain.len(), 1);
    extend_block_hashes(&mut chain, &t, &[], BS, 10);
    assert_eq!(chain, full_block_hashes(&t, &[], BS));
}

#[test]
fn images_with_different_content_hash_differently() {
    let t = tokens(64, 7);
    // The image covers tokens 20..40: blocks 1 and 2.
    let h1 = full_block_hashes(&t, &[image(20, 20, 111)], BS);
    let h2 = full_block_hashes(&t, &[image(20, 20, 222)], BS);
    let none = full_block_hashes(&t, &[], BS);
    assert_eq!(h1[0], h2[0], "block 0 holds no image token");
    assert_eq!(h1[0], none[0]);
    for j in 1..4 {
        assert_ne!(h1[j], h2[j], "block {j}");
        assert_ne!(h1[j], none[j], "block {j}");
    }
    // The same content at another offset is other KV too.
    let shifted = full_block_hashes(&t, &[image(21, 19, 111)], BS);
    assert_eq!(shifted[0], h1[0]);
    assert_ne!(shifted[1], h1[1]);
    // Identical images give identical hashes.
    assert_eq!(full_block_hashes(&t, &[image(20, 20, 111)], BS), h1);
}

#[test]
fn an_image_counts_in_every_block_it_spans() {
    let t = tokens(64, 8);
    // The image starts in block 0 and ends in block 2; block 3 is text after it. Changing
    // only the image changes block 1 itself even though block 1 is all placeholders, and
    // block hash 1 stays dependent on the image when computed from the same parent.
    let a = full_block_hashes(&t, &[image(10, 30, 1)], BS);
    let b = full_block_hashes(&t, &[image(10, 30, 2)], BS);
    let parent = Some(a[0]);
    let direct_a = hash_block(parent, 16, &t[16..32], &[image(10, 30, 1)]);
    let direct_b = hash_block(parent, 16, &t[16..32], &[image(10, 30, 2)]);
    assert_eq!(direct_a, a[1]);
    assert_ne!(direct_a, direct_b);
    assert!(a.iter().zip(&b).all(|(x, y)| x != y));
}

#[test]
fn the_hash_is_keyed_blake3_of_the_documented_layout() {
    // The byte layout of `prefix_hash`'s doc, built by hand: tag 0 (no parent), 16 as u32,
    // tokens 0..16 as u32, tag 1, content hash u128, start 4 as i64, length 8 as u64, tag 0.
    let key = [7u8; 32];
    let t: Vec<u32> = (0..16).collect();
    let got = hash_block_with(&HashKey::from_bytes(key), None, 0, &t, &[image(4, 8, 0xfeed)]);
    let mut bytes = vec![0u8];
    bytes.extend(16u32.to_le_bytes());
    t.iter().for_each(|x| bytes.extend(x.to_le_bytes()));
    bytes.push(1);
    bytes.extend(0xfeed_u128.to_le_bytes());
    bytes.extend(4i64.to_le_bytes());
    bytes.extend(8u64.to_le_bytes());
    bytes.push(0);
    let full = blake3::keyed_hash(&key, &bytes);
    let want = u128::from_le_bytes(full.as_bytes()[..16].try_into().unwrap());
    assert_eq!(got, BlockHash(want));
}

#[test]
fn block_hashes_are_stable_within_a_process_and_depend_on_the_key() {
    let t = tokens(16 * 40, 9);
    let images = [image(20, 30, 5)];
    // The process key: the same input hashes the same every time, and it is the key
    // `hash_block` uses.
    let a = full_block_hashes(&t, &images, BS);
    assert_eq!(a, full_block_hashes(&t, &images, BS));
    assert_eq!(a[0], hash_block_with(HashKey::process(), None, 0, &t[..BS], &images));
    // Other keys: every block's hash differs (the chance of one equal pair is 2^-128 each).
    let k1 = HashKey::from_bytes([1; 32]);
    let k2 = HashKey::from_bytes([2; 32]);
    let fresh = HashKey::random();
    let mut parents = [None; 3];
    for (j, block) in t.chunks(BS).enumerate() {
        let h: Vec<BlockHash> = [&k1, &k2, &fresh]
            .iter()
            .zip(&parents)
            .map(|(k, p)| hash_block_with(k, *p, j * BS, block, &images))
            .collect();
        assert_ne!(h[0], h[1], "block {j}");
        assert_ne!(h[0], h[2], "block {j}");
        assert_ne!(h[1], h[2], "block {j}");
        assert_ne!(h[2], a[j], "block {j}: a fresh random key gave the process key's hash");
        parents = [Some(h[0]), Some(h[1]), Some(h[2])];
    }
    // Two random keys are different keys.
    let (r1, r2) = (HashKey::random(), HashKey::random());
    assert_ne!(
        hash_block_with(&r1, None, 0, &t[..BS], &[]),
        hash_block_with(&r2, None, 0, &t[..BS], &[])
    );
}

#[test]
fn image_identity_is_a_keyed_128_bit_hash_of_the_bytes() {
    let png = b"\x89PNG\r\n\x1a\n some image bytes".to_vec();
    let mut other = png.clone();
    *other.last_mut().unwrap() ^= 1;
    // Stable within the process, sensitive to every byte.
    assert_eq!(image_content_hash(&png), image_content_hash(&png));
    assert_ne!(image_content_hash(&png), image_content_hash(&other));
    assert_eq!(
        image_content_hash(&png),
        image_content_hash_with(HashKey::process(), &png)
    );
    // Keyed: another key, another identity.
    let k1 = HashKey::from_bytes([1; 32]);
    let k2 = HashKey::from_bytes([2; 32]);
    assert_ne!(image_content_hash_with(&k1, &png), image_content_hash_with(&k2, &png));
    // 128 bits are used: across many inputs both halves vary (a u64 widened would leave
    // the high half zero).
    let highs: std::collections::HashSet<u64> = (0..64u32)
        .map(|i| (image_content_hash(&i.to_le_bytes()) >> 64) as u64)
        .collect();
    assert_eq!(highs.len(), 64);
    // The image key is derived for its purpose: an image's hash is not the block key's hash
    // of the same bytes.
    let block_key_hash = blake3::keyed_hash(&[1; 32], &png);
    let block_key_low = u128::from_le_bytes(block_key_hash.as_bytes()[..16].try_into().unwrap());
    assert_ne!(image_content_hash_with(&k1, &png), block_key_low);
}

/// The FNV-1a-128 block hash this crate used before keying (the encoding of `prefix_hash`'s
/// doc, no parent, no image), reimplemented to show what the key protects against.
fn old_fnv_block_hash(tokens: &[u32]) -> u128 {
    const BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut bytes = vec![0u8];
    bytes.extend((tokens.len() as u32).to_le_bytes());
    tokens.iter().for_each(|t| bytes.extend(t.to_le_bytes()));
    bytes.push(0);
    bytes.iter().fold(BASIS, |h, &b| (h ^ b as u128).wrapping_mul(PRIME))
}

/// Two 64-token blocks, every id under 65536 (valid ids of the model's 103424-token
/// vocabulary), that collide under the old unkeyed FNV-1a-128 block hash: found offline in
/// seconds by lattice reduction (a short integer combination of powers of the FNV prime that
/// vanishes mod 2^128, then realised byte by byte through the XORs). With the old hash a
/// prompt starting with one would have been served the KV of a prompt starting with the other.
const COLLIDING_A: [u32; 64] = [
    62826, 368, 17583, 7329, 4595, 3161, 6187, 4873, 27408, 49303, 276, 1295, 56576, 61453, 42063, 13036, 38755, 47010,
    55495, 26079, 2341, 12817, 20786, 32835, 13438, 22608, 21672, 46456, 6489, 11046, 17778, 29240, 49613, 15602,
    18529, 59997, 57590, 21544, 47964, 1634, 6227, 18909, 47953, 20117, 48953, 37011, 24326, 59372, 48060, 7614, 54838,
    25944, 57713, 26041, 34282, 41886, 49464, 59113, 9811, 2778, 64553, 14990, 27646, 49191,
];

const COLLIDING_B: [u32; 64] = [
    62570, 496, 17575, 25215, 4308, 3657, 2331, 3864, 38174, 51046, 9, 1648, 50183, 61446, 42073, 65405, 37284, 22435,
    23489, 41592, 14369, 4656, 20821, 34624, 11296, 31695, 14232, 30232, 6185, 26718, 50578, 37447, 49614, 15602,
    18529, 59997, 57590, 21544, 47964, 1634, 6227, 18909, 47953, 20117, 48953, 37011, 24326, 59372, 48060, 7614, 54838,
    25944, 57713, 26041, 34282, 41886, 49464, 59113, 9811, 2778, 64553, 14990, 27646, 49191,
];

#[test]
fn a_crafted_fnv_collision_no_longer_collides() {
    assert_ne!(COLLIDING_A, COLLIDING_B);
    assert_eq!(
        old_fnv_block_hash(&COLLIDING_A),
        old_fnv_block_hash(&COLLIDING_B),
        "the crafted pair collides under the old hash"
    );
    assert_ne!(
        hash_block(None, 0, &COLLIDING_A, &[]),
        hash_block(None, 0, &COLLIDING_B, &[]),
        "the keyed hash separates them"
    );
    for key in [HashKey::from_bytes([0; 32]), HashKey::random()] {
        assert_ne!(
            hash_block_with(&key, None, 0, &COLLIDING_A, &[]),
            hash_block_with(&key, None, 0, &COLLIDING_B, &[])
        );
    }
    // As prefixes in the pool: the second prompt finds no cached block of the first.
    let a = full_block_hashes(&COLLIDING_A, &[], 64);
    let b = full_block_hashes(&COLLIDING_B, &[], 64);
    assert_ne!(a, b);
}
