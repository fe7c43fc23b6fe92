//! The cache of preprocessed images (`--mm-processor-cache-gb`, vLLM's flag and meaning): a
//! least-recently-used map from an image's encoded bytes and resize bounds to its patchified
//! bf16 pixels and grid, bounded by bytes. A hit skips decoding, resizing and normalising (tens
//! of milliseconds of CPU for a page) and shares the pixels with the engine (`Arc`, no copy).
//!
//! The key is a hash of the encoded bytes plus the `smart_resize` bounds (the same bytes with
//! other `min_pixels`/`max_pixels` give other pixels). A hash alone could be made to collide by
//! a caller who wanted another request's pixels, so each entry keeps its encoded bytes and a
//! hit compares them: a collision is a miss, never a wrong image. Those bytes count towards
//! the budget along with the pixels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use half::bf16;

use crate::preprocess::ImageGrid;

/// Bytes counted per entry on top of its pixels and encoded bytes (map and list nodes).
const ENTRY_OVERHEAD: usize = 128;

/// What identifies a preprocessed image: its content and the resize bounds it was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub content_hash: u128,
    pub min_pixels: u64,
    pub max_pixels: u64,
}

/// A preprocessed image: patch rows (`grid.h * grid.w` rows of `3 * 14 * 14` values).
#[derive(Clone, Debug)]
pub struct CachedImage {
    pub pixels: Arc<[bf16]>,
    pub grid: ImageGrid,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageCacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

struct Entry {
    encoded: Box<[u8]>,
    image: CachedImage,
    bytes: usize,
    /// Its position in `Lru::order`.
    tick: u64,
}

#[derive(Default)]
struct Lru {
    map: HashMap<ImageKey, Entry>,
    /// Least recently used first.
    order: BTreeMap<u64, ImageKey>,
    next_tick: u64,
    stats: ImageCacheStats,
}

/// Thread-safe; shared by every caller of `Service::submit`.
pub struct ImageCache {
    capacity: usize,
    lru: Mutex<Lru>,
}

impl ImageCache {
    /// A cache of at most `capacity_bytes`; 0 is a cache that holds nothing.
    pub fn new(capacity_bytes: usize) -> ImageCache {
        ImageCache {
            capacity: capacity_bytes,
            lru: Mutex::new(Lru::default()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The image for `key` if it is cached with exactly these `encoded` bytes.
    pub fn get(&self, key: &ImageKey, encoded: &[u8]) -> Option<CachedImage> {
        if !self.is_enabled() {
            return None;
        }
        let mut lru = self.lru.lock().ok()?;
        let lru = &mut *lru;
        let found = match lru.map.get_mut(key) {
            Some(e) if *e.encoded == *encoded => {
                // Most recently used now.
                lru.order.remove(&e.tick);
                e.tick = lru.next_tick;
                lru.order.insert(e.tick, *key);
                lru.next_tick += 1;
                Some(e.image.clone())
            }
            _ => None,
        };
        if found.is_some() {
            lru.stats.hits += 1;
        } else {
            lru.stats.misses += 1;
        }
        found
    }

    /// Stores an image, evicting the least recently used ones until it fits. An image larger
    /// than the whole cache is not stored.
    pub fn insert(&self, key: ImageKey, encoded: &[u8], image: CachedImage) {
        let bytes = image.pixels.len() * std::mem::size_of::<bf16>() + encoded.len() + ENTRY_OVERHEAD;
        if bytes > self.capacity {
            return;
        }
        let Ok(mut lru) = self.lru.lock() else { return };
        let lru = &mut *lru;
        if let Some(old) = lru.map.remove(&key) {
            lru.order.remove(&old.tick);
            lru.stats.bytes -= old.bytes;
        }
        while lru.stats.bytes + bytes > self.capacity {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some(e) = lru.map.remove(&victim) {
                lru.stats.bytes -= e.bytes;
                lru.stats.evictions += 1;
            }
        }
        let tick = lru.next_tick;
        lru.next_tick += 1;
        lru.order.insert(tick, key);
        lru.map.insert(
            key,
            Entry {
                encoded: encoded.into(),
                image,
                bytes,
                tick,
            },
        );
        lru.stats.bytes += bytes;
    }

    pub fn stats(&self) -> ImageCacheStats {
        self.lru
            .lock()
            .map(|l| ImageCacheStats {
                entries: l.map.len(),
                ..l.stats
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(values: usize) -> CachedImage {
        CachedImage {
            pixels: vec![bf16::from_f32(0.5); values].into(),
            grid: ImageGrid { t: 1, h: 1, w: 1 },
        }
    }

    fn key(n: u64) -> ImageKey {
        ImageKey {
            content_hash: n as u128,
            min_pixels: 112_896,
            max_pixels: 1_003_520,
        }
    }

    /// The bytes one entry of `values` pixels and `encoded` bytes counts.
    fn cost(values: usize, encoded: usize) -> usize {
        values * 2 + encoded + ENTRY_OVERHEAD
    }

    #[test]
    fn hits_return_the_stored_pixels() {
        let cache = ImageCache::new(1 << 20);
        assert!(cache.get(&key(1), b"png-1").is_none());
        let img = image(100);
        cache.insert(key(1), b"png-1", img.clone());
        let hit = cache.get(&key(1), b"png-1").expect("a hit");
        assert!(
            Arc::ptr_eq(&hit.pixels, &img.pixels),
            "the pixels are shared, not copied"
        );
        assert_eq!(hit.grid, img.grid);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
        assert_eq!(s.bytes, cost(100, 5));
    }

    #[test]
    fn other_bounds_or_other_bytes_miss() {
        let cache = ImageCache::new(1 << 20);
        cache.insert(key(1), b"png-1", image(10));
        let other_bounds = ImageKey {
            max_pixels: 1_605_632,
            ..key(1)
        };
        assert!(cache.get(&other_bounds, b"png-1").is_none());
        // Same hash, other content (a collision): a miss, never the other image.
        assert!(cache.get(&key(1), b"png-2").is_none());
        assert!(cache.get(&key(1), b"png-1").is_some());
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        // Room for exactly three entries of 1000 values and 4 encoded bytes.
        let cache = ImageCache::new(3 * cost(1000, 4));
        for n in 1..=3 {
            cache.insert(key(n), b"img!", image(1000));
        }
        assert_eq!(cache.stats().entries, 3);
        // Touch 1, so 2 is now the least recently used.
        assert!(cache.get(&key(1), b"img!").is_some());
        cache.insert(key(4), b"img!", image(1000));
        assert!(cache.get(&key(2), b"img!").is_none(), "2 was evicted");
        for n in [1, 3, 4] {
            assert!(cache.get(&key(n), b"img!").is_some(), "{n} kept");
        }
        // One entry twice the size pushes out two.
        cache.insert(key(5), b"img!", image(2000));
        let s = cache.stats();
        assert!(s.bytes <= cache.capacity());
        assert_eq!(s.evictions, 3);
        assert!(cache.get(&key(5), b"img!").is_some());
    }

    #[test]
    fn zero_capacity_is_off_and_oversized_images_are_not_stored() {
        let off = ImageCache::new(0);
        assert!(!off.is_enabled());
        off.insert(key(1), b"x", image(1));
        assert!(off.get(&key(1), b"x").is_none());
        assert_eq!(off.stats().entries, 0);

        let small = ImageCache::new(cost(10, 1));
        small.insert(key(1), b"x", image(11));
        assert_eq!(small.stats().entries, 0);
        small.insert(key(2), b"x", image(10));
        assert_eq!(small.stats().entries, 1);
    }

    #[test]
    fn reinserting_a_key_replaces_it() {
        let cache = ImageCache::new(1 << 20);
        cache.insert(key(1), b"a", image(10));
        cache.insert(key(1), b"a", image(20));
        let s = cache.stats();
        assert_eq!(s.entries, 1);
        assert_eq!(s.bytes, cost(20, 1));
    }
}
