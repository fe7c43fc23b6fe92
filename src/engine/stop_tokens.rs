//! A request's stop token ids as a hashed set, checked once per generated token on the
//! engine thread.
//!
//! The check runs inside the scheduler's update, for every sequence of every step, so its cost
//! is paid by every tenant: a linear scan would let one request with a long list slow all
//! steps. A hash lookup costs one hash and, on average, about one comparison whatever the
//! list's length. The std `HashSet` hashes with SipHash under a per-process random key, so a
//! caller cannot choose ids that all land in one bucket and turn lookups linear again.
//!
//! Generic over the id type only so that a test can count the comparisons a lookup makes; the
//! engine uses `StopTokenSet<u32>`.

use std::collections::HashSet;
use std::hash::Hash;

/// The distinct stop token ids of one sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopTokenSet<T: Eq + Hash = u32> {
    ids: HashSet<T>,
}

impl<T: Eq + Hash> StopTokenSet<T> {
    /// The set of `ids` (duplicates kept once).
    pub fn from_ids(ids: impl IntoIterator<Item = T>) -> Self {
        StopTokenSet {
            ids: ids.into_iter().collect(),
        }
    }

    /// Whether `id` is a stop token: one hash and about one comparison, for any length.
    pub fn contains(&self, id: &T) -> bool {
        // An empty set (most requests) skips hashing altogether.
        !self.ids.is_empty() && self.ids.contains(id)
    }

    /// Number of distinct ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl<T: Eq + Hash> Default for StopTokenSet<T> {
    fn default() -> Self {
        StopTokenSet { ids: HashSet::new() }
    }
}
