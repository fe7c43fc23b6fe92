//! The text rope launches that also write the paged KV cache (`mrope_and_cache`,
//! `mrope_interleaved_and_cache`) against the two launches they replace (the rope, then
//! `write_kv`), bit for bit: q, k and v in the fused qkv buffer and both whole caches, which
//! start poisoned, so a cache element written where it should not be, or not written where it
//! should, fails. The two separate launches are themselves checked against f64 references
//! (tests/gpu/rope.rs, tests/gpu/kv_cache.rs).
//!
//! Shapes: PaddleOCR-VL's decoder (16 q / 2 kv heads of 128) and ERNIE-4.5-VL's (20 / 4 of
//! 128), at decode batches (1, 256) and prefill chunks (odd counts), block sizes 16, 64 and
//! 256, slots shuffled over the pool with padding (-1) and out-of-pool slots among them.

use half::bf16;
use ocrvl::kernels::kv_cache::write_kv;
use ocrvl::kernels::rope::{mrope, mrope_and_cache, mrope_interleaved, mrope_interleaved_and_cache, CacheWrite};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorView};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::common::{gpu, rand_f32, rng};

const THETA: f32 = 500000.0;

#[derive(Clone, Copy, Debug)]
enum Rope {
    /// Neox pairs, sections [16, 24, 24] (PaddleOCR-VL).
    Mrope,
    /// Interleaved pairs, section_hw 44 (ERNIE-4.5-VL).
    Interleaved,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    rope: Rope,
    tokens: usize,
    q_heads: usize,
    kv_heads: usize,
    block_size: usize,
}

fn bits(g: &Gpu, t: &DeviceTensor) -> Vec<u16> {
    t.to_host::<bf16>(g).unwrap().iter().map(|x| x.to_bits()).collect()
}

fn from_bits(g: &Gpu, dims: &[usize], b: &[u16]) -> DeviceTensor {
    let v: Vec<bf16> = b.iter().map(|&x| bf16::from_bits(x)).collect();
    DeviceTensor::from_host(g, dims, &v).unwrap()
}

/// The fused buffer, caches and slots after one path: `fused` true runs the one-launch form.
fn run(g: &Gpu, c: &Case, qkv: &[u16], cache: &[u16], slots: &[i32], positions: &[i32], fused: bool) -> [Vec<u16>; 3] {
    let hd = 128;
    let (qw, kw) = (c.q_heads * hd, c.kv_heads * hd);
    let pool = cache.len() / (c.kv_heads * c.block_size * hd);
    let cache_dims = [pool, c.kv_heads, c.block_size, hd];
    let mut buf = from_bits(g, &[c.tokens, qw + 2 * kw], qkv);
    let mut kc = from_bits(g, &cache_dims, cache);
    // The v cache starts from another poison than the k cache.
    let v_start: Vec<u16> = cache.iter().map(|&x| x ^ 0x8000).collect();
    let mut vc = from_bits(g, &cache_dims, &v_start);
    let slot_dev = DeviceTensor::from_host(g, &[c.tokens], slots).unwrap();
    let pos = DeviceTensor::from_host(g, &[3, c.tokens], positions).unwrap();
    {
        let mut view = buf.view_mut();
        let [mut q, mut k, v] = view.reborrow().split_columns([qw, kw, kw]).unwrap();
        let v: TensorView<'_> = v.as_view();
        if fused {
            let cache = CacheWrite {
                k_cache: &mut kc.view_mut(),
                v_cache: &mut vc.view_mut(),
                v: &v,
                slot_mapping: &slot_dev.view(),
            };
            match c.rope {
                Rope::Mrope => mrope_and_cache(g, &mut q, &mut k, &pos.view(), hd, [16, 24, 24], THETA, cache),
                Rope::Interleaved => mrope_interleaved_and_cache(g, &mut q, &mut k, &pos.view(), hd, 44, THETA, cache),
            }
            .unwrap();
        } else {
            match c.rope {
                Rope::Mrope => mrope(g, &mut q, &mut k, &pos.view(), hd, [16, 24, 24], THETA),
                Rope::Interleaved => mrope_interleaved(g, &mut q, &mut k, &pos.view(), hd, 44, THETA),
            }
            .unwrap();
            write_kv(
                g,
                &mut kc.view_mut(),
                &mut vc.view_mut(),
                &k.as_view(),
                &v,
                &slot_dev.view(),
            )
            .unwrap();
        }
    }
    [bits(g, &buf), bits(g, &kc), bits(g, &vc)]
}

fn run_case(g: &Gpu, c: &Case, seed: u64) {
    let mut r = rng(seed);
    let hd = 128;
    let width = (c.q_heads + 2 * c.kv_heads) * hd;
    let qkv: Vec<u16> = rand_f32(&mut r, c.tokens * width, 1.0)
        .iter()
        .map(|&x| bf16::from_f32(x).to_bits())
        .collect();
    // A pool a little larger than the tokens need; slots drawn without repeats.
    let pool = c.tokens.div_ceil(c.block_size) + 2;
    let num_slots = pool * c.block_size;
    let mut all: Vec<i32> = (0..num_slots as i32).collect();
    all.shuffle(&mut r);
    let slots: Vec<i32> = (0..c.tokens)
        .map(|t| match r.random_range(0..16) {
            0 => -1,                                         // padding: not written
            1 => (num_slots + r.random_range(0..64)) as i32, // past the pool: skipped
            _ => all[t],
        })
        .collect();
    let positions: Vec<i32> = (0..3 * c.tokens).map(|_| r.random_range(0..16384)).collect();
    let cache: Vec<u16> = (0..num_slots * c.kv_heads * hd)
        .map(|i| 0x7FC0 | (i % 61) as u16)
        .collect();

    let want = run(g, c, &qkv, &cache, &slots, &positions, false);
    let got = run(g, c, &qkv, &cache, &slots, &positions, true);
    for (what, w, x) in [
        ("qkv", &want[0], &got[0]),
        ("k cache", &want[1], &got[1]),
        ("v cache", &want[2], &got[2]),
    ] {
        if let Some(i) = (0..w.len()).find(|&i| w[i] != x[i]) {
            panic!(
                "{c:?}: {what} differs at element {i} of {}: want 0x{:04x}, got 0x{:04x}",
                w.len(),
                w[i],
                x[i]
            );
        }
    }
    // The case must write something (not all slots skipped) for the comparison to mean much.
    assert_ne!(want[1], cache, "{c:?}: no slot was written");
}

#[test]
#[ignore = "needs GPU"]
fn rope_and_cache_write_equal_the_two_launches() {
    let g = gpu();
    let mut seed = 7100;
    for rope in [Rope::Mrope, Rope::Interleaved] {
        let (q_heads, kv_heads) = match rope {
            Rope::Mrope => (16, 2),
            Rope::Interleaved => (20, 4),
        };
        for (tokens, block_size) in [(1, 64), (256, 64), (255, 16), (257, 256), (1000, 64), (3, 16)] {
            let c = Case {
                rope,
                tokens,
                q_heads,
                kv_heads,
                block_size,
            };
            run_case(&g, &c, seed);
            seed += 1;
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn rope_and_cache_refuse_a_mismatched_cache() {
    let g = gpu();
    let (tokens, hd) = (4, 128);
    let mut buf = DeviceTensor::zeros(&g, DType::BF16, &[tokens, (16 + 4) * hd]).unwrap();
    let pos = DeviceTensor::zeros(&g, DType::I32, &[3, tokens]).unwrap();
    let slots = DeviceTensor::zeros(&g, DType::I32, &[tokens]).unwrap();
    let short_slots = DeviceTensor::zeros(&g, DType::I32, &[tokens - 1]).unwrap();
    // A cache of 4 heads of 64: k's width matches it (2 x 128 = 4 x 64) but not its head_dim.
    let mut kc = DeviceTensor::zeros(&g, DType::BF16, &[2, 4, 64, 64]).unwrap();
    let mut vc = DeviceTensor::zeros(&g, DType::BF16, &[2, 4, 64, 64]).unwrap();
    let mut kc_ok = DeviceTensor::zeros(&g, DType::BF16, &[2, 2, 64, hd]).unwrap();
    let mut vc_ok = DeviceTensor::zeros(&g, DType::BF16, &[2, 2, 64, hd]).unwrap();
    let mut view = buf.view_mut();
    let [mut q, mut k, v] = view.reborrow().split_columns([16 * hd, 2 * hd, 2 * hd]).unwrap();
    let v = v.as_view();
    let err = mrope_and_cache(
        &g,
        &mut q,
        &mut k,
        &pos.view(),
        hd,
        [16, 24, 24],
        THETA,
        CacheWrite {
            k_cache: &mut kc.view_mut(),
            v_cache: &mut vc.view_mut(),
            v: &v,
            slot_mapping: &slots.view(),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("head_dim"), "{err}");
    let err = mrope_interleaved_and_cache(
        &g,
        &mut q,
        &mut k,
        &pos.view(),
        hd,
        44,
        THETA,
        CacheWrite {
            k_cache: &mut kc_ok.view_mut(),
            v_cache: &mut vc_ok.view_mut(),
            v: &v,
            slot_mapping: &short_slots.view(),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("got bf16 [4, 256]"), "{err}");
}
