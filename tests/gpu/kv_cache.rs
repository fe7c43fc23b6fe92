//! The paged KV cache writer (`write_kv`, kernel `reshape_and_cache`): new k and v rows, taken
//! as column views of one fused qkv buffer (or as 3-D tensors), scattered through a shuffled
//! block table into a pool three times the size the tokens need, with padding slots (-1) and a
//! slot just past the pool (skipped defensively). The caches start out filled with a poison
//! pattern (NaN bit patterns that vary with the index); after the write, exactly the mapped
//! slots must hold bit-exact copies and every other element its poison.

use half::{bf16, f16};
use ocrvl::kernels::kv_cache::write_kv;
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorView};
use ocrvl::{Error, Result};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::common::{gpu, rand_f32, rng};

#[derive(Clone, Copy, Debug)]
struct Case {
    tokens: usize,
    heads: usize,
    head_dim: usize,
    block_size: usize,
    dtype: DType,
    /// k and v as separate [tokens, heads, head_dim] tensors instead of fused-qkv columns.
    three_d: bool,
}

fn upload_bits(g: &Gpu, dtype: DType, dims: &[usize], bits: &[u16]) -> DeviceTensor {
    match dtype {
        DType::BF16 => {
            let v: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b)).collect();
            DeviceTensor::from_host(g, dims, &v).unwrap()
        }
        DType::F16 => {
            let v: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
            DeviceTensor::from_host(g, dims, &v).unwrap()
        }
        d => panic!("no 16-bit tensor of {d}"),
    }
}

fn download_bits(g: &Gpu, t: &DeviceTensor) -> Vec<u16> {
    match t.dtype() {
        DType::BF16 => t.to_host::<bf16>(g).unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::F16 => t.to_host::<f16>(g).unwrap().iter().map(|x| x.to_bits()).collect(),
        d => panic!("no 16-bit tensor of {d}"),
    }
}

fn random_bits(r: &mut rand_chacha::ChaCha8Rng, dtype: DType, n: usize) -> Vec<u16> {
    rand_f32(r, n, 2.0)
        .iter()
        .map(|&x| match dtype {
            DType::BF16 => bf16::from_f32(x).to_bits(),
            _ => f16::from_f32(x).to_bits(),
        })
        .collect()
}

/// NaN bit patterns (never produced by the finite random inputs) that vary with the index, so
/// that an element copied from elsewhere in the cache is caught too.
fn poison(n: usize, sign: u16) -> Vec<u16> {
    (0..n).map(|i| sign | 0x7FC0 | (i % 61) as u16).collect()
}

fn run_case(g: &Gpu, c: &Case, seed: u64) {
    let what = format!("{c:?}");
    let mut r = rng(seed);
    let (bs, heads, hd) = (c.block_size, c.heads, c.head_dim);
    let kw = heads * hd;

    // The tokens continue a sequence that already fills `start` slots of its first block.
    let start = r.random_range(0..bs);
    let needed = (start + c.tokens).div_ceil(bs);
    let pool = 3 * needed;
    let mut ids: Vec<usize> = (0..pool).collect();
    ids.shuffle(&mut r);
    let block_table = &ids[..needed];
    let mut slots: Vec<i32> = (0..c.tokens)
        .map(|t| {
            let p = start + t;
            (block_table[p / bs] * bs + p % bs) as i32
        })
        .collect();
    // About one token in eight is padding; token 1 points just past the pool.
    for s in slots.iter_mut() {
        if r.random_range(0..8) == 0 {
            *s = -1;
        }
    }
    if c.tokens > 1 {
        slots[1] = (pool * bs) as i32;
    }

    // k and v inputs: columns of a fused [tokens, q | k | v] buffer, or 3-D tensors.
    let qw = 8 * hd;
    let width = qw + 2 * kw;
    let fused_bits = random_bits(&mut r, c.dtype, c.tokens * width);
    let k_in: Vec<u16> = fused_bits
        .chunks(width)
        .flat_map(|row| row[qw..qw + kw].to_vec())
        .collect();
    let v_in: Vec<u16> = fused_bits
        .chunks(width)
        .flat_map(|row| row[qw + kw..].to_vec())
        .collect();
    let fused = upload_bits(g, c.dtype, &[c.tokens, width], &fused_bits);
    let k3 = upload_bits(g, c.dtype, &[c.tokens, heads, hd], &k_in);
    let v3 = upload_bits(g, c.dtype, &[c.tokens, heads, hd], &v_in);
    let (k_view, v_view): (TensorView<'_>, TensorView<'_>) = if c.three_d {
        (k3.view(), v3.view())
    } else {
        (
            fused.view().columns(qw, kw).unwrap(),
            fused.view().columns(qw + kw, kw).unwrap(),
        )
    };

    let cache_dims = [pool, heads, bs, hd];
    let n = pool * heads * bs * hd;
    let (k_poison, v_poison) = (poison(n, 0), poison(n, 0x8000));
    let mut k_cache = upload_bits(g, c.dtype, &cache_dims, &k_poison);
    let mut v_cache = upload_bits(g, c.dtype, &cache_dims, &v_poison);
    let slot_dev = DeviceTensor::from_host(g, &[c.tokens], &slots).unwrap();

    write_kv(
        g,
        &mut k_cache.view_mut(),
        &mut v_cache.view_mut(),
        &k_view,
        &v_view,
        &slot_dev.view(),
    )
    .unwrap();

    let (mut k_want, mut v_want) = (k_poison, v_poison);
    for (t, &s) in slots.iter().enumerate() {
        if s < 0 || s as usize >= pool * bs {
            continue;
        }
        let (block, off) = (s as usize / bs, s as usize % bs);
        for h in 0..heads {
            let dst = ((block * heads + h) * bs + off) * hd;
            let src = t * kw + h * hd;
            k_want[dst..dst + hd].copy_from_slice(&k_in[src..src + hd]);
            v_want[dst..dst + hd].copy_from_slice(&v_in[src..src + hd]);
        }
    }
    for (name, cache, want) in [("k_cache", &k_cache, &k_want), ("v_cache", &v_cache, &v_want)] {
        let got = download_bits(g, cache);
        if let Some(i) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
            let (d, rest) = (i % hd, i / hd);
            let (off, rest) = (rest % bs, rest / bs);
            let (h, block) = (rest % heads, rest / heads);
            let slot = (block * bs + off) as i32;
            let token = slots.iter().position(|&s| s == slot);
            panic!(
                "{what}: {name} element {i} (block {block}, head {h}, offset {off}, dim {d}; slot {slot}, \
                 written by token {token:?}): got 0x{:04x}, want 0x{:04x}",
                got[i], want[i]
            );
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn write_kv_scatters_exactly_the_mapped_slots() {
    let g = gpu();
    let mut seed = 0xCAC0_0000;
    for &tokens in &[1usize, 7, 83, 5040] {
        for &block_size in &[16usize, 64] {
            let c = Case {
                tokens,
                heads: 2,
                head_dim: 128,
                block_size,
                dtype: DType::BF16,
                three_d: false,
            };
            run_case(&g, &c, seed);
            seed += 1;
        }
    }
}

/// Other head dims (the smallest, a 72-d head, the largest), the extreme block sizes, f16, and
/// 3-D k and v tensors.
#[test]
#[ignore = "needs GPU"]
fn write_kv_other_shapes_dtypes_and_layouts() {
    let g = gpu();
    let cases = [
        (83, 3, 72, 32, DType::BF16, false),
        (50, 1, 8, 16, DType::BF16, false),
        (300, 2, 256, 256, DType::BF16, false),
        (300, 2, 128, 128, DType::F16, false),
        (97, 2, 128, 64, DType::BF16, true),
        (1, 16, 64, 16, DType::BF16, true),
    ];
    for (i, &(tokens, heads, head_dim, block_size, dtype, three_d)) in cases.iter().enumerate() {
        let c = Case {
            tokens,
            heads,
            head_dim,
            block_size,
            dtype,
            three_d,
        };
        run_case(&g, &c, 0xCAC0_1000 + i as u64);
    }
}

fn is_invalid(r: &Result<()>) -> bool {
    matches!(r, Err(Error::Invalid { .. }))
}

#[test]
#[ignore = "needs GPU"]
fn write_kv_rejects_bad_arguments() {
    let g = gpu();
    let tokens = 7;
    let slots = DeviceTensor::from_host(&g, &[tokens], &[0i32, 1, 2, 3, 4, 5, 6]).unwrap();
    let fused = DeviceTensor::zeros(&g, DType::BF16, &[tokens, 2560 + 8]).unwrap();
    let (k, v) = (
        fused.view().columns(2048, 256).unwrap(),
        fused.view().columns(2304, 256).unwrap(),
    );

    // Caches of a bad block size or head dim, and a mismatched or f32 pair.
    for (why, kd, vd, dtype) in [
        ("block_size 48", [4, 2, 48, 128], [4, 2, 48, 128], DType::BF16),
        ("block_size 8", [4, 2, 8, 128], [4, 2, 8, 128], DType::BF16),
        ("block_size 512", [4, 2, 512, 128], [4, 2, 512, 128], DType::BF16),
        ("v_cache dims differ", [4, 2, 64, 128], [5, 2, 64, 128], DType::BF16),
        ("f32 caches", [4, 2, 64, 128], [4, 2, 64, 128], DType::F32),
    ] {
        let mut kc = DeviceTensor::zeros(&g, dtype, &kd).unwrap();
        let mut vc = DeviceTensor::zeros(&g, dtype, &vd).unwrap();
        let res = write_kv(&g, &mut kc.view_mut(), &mut vc.view_mut(), &k, &v, &slots.view());
        assert!(is_invalid(&res), "{why}: {res:?}");
    }
    // head_dim 68 (not whole 16-byte vectors) and 264 (over 256), with matching k and v.
    for head_dim in [68usize, 264] {
        let mut kc = DeviceTensor::zeros(&g, DType::BF16, &[4, 2, 64, head_dim]).unwrap();
        let mut vc = DeviceTensor::zeros(&g, DType::BF16, &[4, 2, 64, head_dim]).unwrap();
        let kv = DeviceTensor::zeros(&g, DType::BF16, &[tokens, 2 * head_dim]).unwrap();
        let res = write_kv(
            &g,
            &mut kc.view_mut(),
            &mut vc.view_mut(),
            &kv.view(),
            &kv.view(),
            &slots.view(),
        );
        assert!(is_invalid(&res), "head_dim {head_dim}: {res:?}");
    }

    let mut kc = DeviceTensor::zeros(&g, DType::BF16, &[4, 2, 64, 128]).unwrap();
    let mut vc = DeviceTensor::zeros(&g, DType::BF16, &[4, 2, 64, 128]).unwrap();
    let slots_f32 = DeviceTensor::zeros(&g, DType::F32, &[tokens]).unwrap();
    let slots_short = DeviceTensor::from_host(&g, &[tokens - 1], &[0i32; 6]).unwrap();
    let k_misaligned = fused.view().columns(2044, 256).unwrap();
    let k_narrow = fused.view().columns(2048, 128).unwrap();
    let k_f16 = DeviceTensor::zeros(&g, DType::F16, &[tokens, 256]).unwrap();
    for (why, kk, ss) in [
        ("f32 slot_mapping", k, slots_f32.view()),
        ("slot_mapping of 6 for 7 tokens", k, slots_short.view()),
        ("k 8-byte aligned only", k_misaligned, slots.view()),
        ("k of one head for two", k_narrow, slots.view()),
        ("f16 k into bf16 caches", k_f16.view(), slots.view()),
    ] {
        let res = write_kv(&g, &mut kc.view_mut(), &mut vc.view_mut(), &kk, &v, &ss);
        assert!(is_invalid(&res), "{why}: {res:?}");
    }

    // No tokens: nothing to do, not an error.
    let none = DeviceTensor::zeros(&g, DType::I32, &[0]).unwrap();
    let kv0 = DeviceTensor::zeros(&g, DType::BF16, &[0, 256]).unwrap();
    write_kv(
        &g,
        &mut kc.view_mut(),
        &mut vc.view_mut(),
        &kv0.view(),
        &kv0.view(),
        &none.view(),
    )
    .unwrap();
}
