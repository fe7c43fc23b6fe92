//! Stop token ids: the per-token check costs the same for a list of 1 or 200 000 ids (it runs
//! for every sequence of every step on the engine thread), and a long list still stops a
//! sequence at the right token. Cost is counted, not timed: a wrapper id type counts the
//! hashes and comparisons a lookup makes.

use std::cell::Cell;
use std::hash::{Hash, Hasher};

use ocrvl::engine::{Scheduler, SchedulerConfig, Sequence, StopConditions, StopTokenSet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

thread_local! {
    static HASHES: Cell<usize> = const { Cell::new(0) };
    static COMPARISONS: Cell<usize> = const { Cell::new(0) };
}

/// A token id that counts how often it is hashed and compared (per thread: tests run in
/// parallel).
#[derive(Clone, Copy, Debug)]
struct Counted(u32);

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        COMPARISONS.with(|c| c.set(c.get() + 1));
        self.0 == other.0
    }
}

impl Eq for Counted {}

impl Hash for Counted {
    fn hash<H: Hasher>(&self, state: &mut H) {
        HASHES.with(|c| c.set(c.get() + 1));
        self.0.hash(state);
    }
}

fn reset() {
    HASHES.with(|c| c.set(0));
    COMPARISONS.with(|c| c.set(0));
}

fn counts() -> (usize, usize) {
    (HASHES.with(Cell::get), COMPARISONS.with(Cell::get))
}

#[test]
fn a_lookup_costs_the_same_for_any_list_length() {
    const LOOKUPS: usize = 2000;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for len in [1usize, 100, 10_000, 200_000] {
        // Even ids are in the set; lookups ask for present and absent ids half and half.
        let set = StopTokenSet::from_ids((0..len as u32).map(|i| Counted(2 * i)));
        assert_eq!(set.len(), len);
        reset();
        let mut found = 0;
        for k in 0..LOOKUPS {
            let id = 2 * rng.random_range(0..len as u32) + (k % 2) as u32;
            found += set.contains(&Counted(id)) as usize;
        }
        let (hashes, comparisons) = counts();
        assert_eq!(found, LOOKUPS / 2, "{len} ids");
        // One hash per lookup, and about one comparison per present id: a linear scan would
        // make about `len / 2` comparisons per lookup.
        assert_eq!(hashes, LOOKUPS, "{len} ids: {hashes} hashes for {LOOKUPS} lookups");
        assert!(
            comparisons <= 2 * LOOKUPS,
            "{len} ids: {comparisons} comparisons for {LOOKUPS} lookups"
        );
    }
}

#[test]
fn an_empty_set_does_no_work() {
    let set: StopTokenSet<Counted> = StopTokenSet::from_ids([]);
    reset();
    for id in 0..100 {
        assert!(!set.contains(&Counted(id)));
    }
    assert_eq!(counts(), (0, 0));
    assert!(set.is_empty());
}

#[test]
fn duplicates_count_once() {
    let set = StopTokenSet::from_ids([5u32, 5, 7, 5]);
    assert_eq!(set.len(), 2);
    assert!(set.contains(&5) && set.contains(&7) && !set.contains(&6));
}

/// A sequence with a long stop list stops at the first generated token in it (and not before),
/// through the scheduler's update, as one with a short list does.
#[test]
fn a_long_stop_list_stops_at_the_right_token() {
    let config = SchedulerConfig {
        num_blocks: 64,
        block_size: 16,
        max_num_seqs: 4,
        max_num_batched_tokens: 256,
        max_model_len: 512,
        enable_prefix_caching: false,
        max_encoder_patches_per_step: 1024,
    };
    // Stop ids: 200 000 ids from 1 000 000 up, and 777.
    let mut stop_ids: Vec<u32> = (1_000_000..1_200_000).collect();
    stop_ids.push(777);
    let stop = StopConditions {
        stop_token_ids: stop_ids,
        ..StopConditions::max_tokens(50)
    };
    let mut s = Scheduler::new(config).unwrap();
    s.add(Sequence::new(1, vec![3; 20], Vec::new(), stop)).unwrap();
    let generated = [10u32, 11, 12, 777, 13];
    let mut done = None;
    for &token in &generated {
        let out = s.schedule();
        assert_eq!(out.scheduled.len(), 1);
        let update = s.update(&out, &[(1, token)]);
        if let Some(seq) = update.finished.into_iter().next() {
            done = Some(seq);
            break;
        }
    }
    let seq = done.expect("the stop token did not end the sequence");
    assert_eq!(seq.output_token_ids(), &[10, 11, 12, 777]);
    assert_eq!(seq.finish_reason(), Some(ocrvl::engine::FinishReason::Stop));
}
