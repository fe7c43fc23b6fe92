//! Paged decode attention at GQA groups other than PaddleOCR-VL's 8 (tests/gpu/decode.rs
//! covers that one in depth): ERNIE-4.5-VL-28B-A3B's 20 query heads over 4 (group 5), and the
//! awkward neighbours 1, 3 and 7, against the f64 reference. The kernel holds a group in the
//! first rows of an 8-row MMA tile (kernels/decode/paged_decode.cuh); the rows past the group
//! must not write anything, and every query head of the group must be written (groups over 8
//! are refused: decode.rs). Batches mix
//! lengths (one key, a partial tile, a partial last block, several thousand keys), the pool is
//! shuffled and NaN wherever a correct kernel must not read, o is poisoned with NaN first, and
//! each case runs unsplit, with 3 splits and with the heuristic's count. Tolerance as in
//! decode.rs: `2e-2 * rms(want) + BF16_RTOL * |want|` per sequence.

use half::bf16;
use ocrvl::kernels::decode::{decode_num_splits, decode_paged, decode_workspace_bytes, PagedKv};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};
use rand::Rng;

use crate::common::ref_decode::{build_pool, decode_attention};
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rng};

const D: usize = 128;

/// One batch at `hq` query heads over `hkv` kv heads: o from the kernel (split count `splits`,
/// None: the heuristic's) against the f64 reference, per sequence.
fn check_group(g: &Gpu, seed: u64, hq: usize, hkv: usize, lens: &[usize], block_size: usize) {
    let mut r = rng(seed);
    let n = lens.len();
    let scale = 1.0 / (D as f32).sqrt();
    let q = rand_bf16(&mut r, n * hq * D, 3.0);
    let k_seqs: Vec<Vec<bf16>> = lens.iter().map(|&l| rand_bf16(&mut r, l * hkv * D, 1.0)).collect();
    let v_seqs: Vec<Vec<bf16>> = lens.iter().map(|&l| rand_bf16(&mut r, l * hkv * D, 1.0)).collect();
    let pool = build_pool(&mut r, &k_seqs, &v_seqs, lens, hkv, D, block_size, 3);
    let want: Vec<Vec<f64>> = (0..n)
        .map(|s| {
            decode_attention(
                &bf16_to_f64(&q[s * hq * D..(s + 1) * hq * D]),
                &bf16_to_f64(&k_seqs[s]),
                &bf16_to_f64(&v_seqs[s]),
                lens[s],
                hkv,
                D,
                scale as f64,
            )
        })
        .collect();

    let cache_dims = [pool.num_blocks, hkv, block_size, D];
    let qd = DeviceTensor::from_host(g, &[n, hq, D], &q).unwrap();
    let k = DeviceTensor::from_host(g, &cache_dims, &pool.k).unwrap();
    let v = DeviceTensor::from_host(g, &cache_dims, &pool.v).unwrap();
    let bt = DeviceTensor::from_host(g, &[n, pool.max_blocks_per_seq], &pool.block_tables).unwrap();
    let sl: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let sl = DeviceTensor::from_host(g, &[n], &sl).unwrap();
    let max_seq_len = lens.iter().copied().max().unwrap_or(0);
    let kv = PagedKv {
        k_cache: k.view(),
        v_cache: v.view(),
        block_tables: bt.view(),
        seq_lens: sl.view(),
        max_seq_len,
    };
    for splits in [Some(1), Some(3), None] {
        let used = splits.unwrap_or_else(|| decode_num_splits(n, hkv, max_seq_len, g.sm_count()));
        let ws_bytes = decode_workspace_bytes(n, hq, D, used);
        let mut ws = DeviceTensor::alloc(g, DType::F32, &[ws_bytes.div_ceil(4).max(1)]).unwrap();
        ws.view_mut().fill_bytes(g, 0xFF).unwrap();
        let mut o = DeviceTensor::alloc(g, DType::BF16, &[n, hq, D]).unwrap();
        o.view_mut().fill_bytes(g, 0xFF).unwrap();
        let got = decode_paged(
            g,
            &mut o.view_mut(),
            &qd.view(),
            &kv,
            scale,
            splits,
            Some(&mut ws.view_mut()),
        )
        .unwrap_or_else(|e| panic!("{hq} over {hkv} heads: {e}"));
        assert_eq!(got, used, "split count");
        let o = bf16_to_f64(&o.to_host::<bf16>(g).unwrap());
        for (s, w) in want.iter().enumerate() {
            // A query head the kernel skipped stays NaN and fails here.
            let label = format!(
                "{hq} over {hkv} heads, block {block_size}, {used} splits: seq {s} (len {})",
                lens[s]
            );
            assert_close(&label, &o[s * hq * D..(s + 1) * hq * D], w, 2e-2 * rms(w), BF16_RTOL);
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn decode_matches_reference_at_ernie_vl_group_5() {
    let g = gpu();
    // 28B-A3B's attention: 20 query heads over 4 kv heads.
    let lens = [1usize, 2, 17, 63, 64, 65, 300, 1000, 2050, 5120];
    check_group(&g, 0xDE50, 20, 4, &lens, 64);
    check_group(&g, 0xDE51, 20, 4, &lens, 16);
    // 128 sequences of the decode workload's lengths (1024 prompt + up to 1024 out).
    let mut r = rng(0xDE52);
    let many: Vec<usize> = (0..128).map(|_| r.random_range(1024..=2048)).collect();
    check_group(&g, 0xDE53, 20, 4, &many, 64);
}

#[test]
#[ignore = "needs GPU"]
fn decode_matches_reference_at_groups_1_3_and_7() {
    let g = gpu();
    let lens = [1usize, 17, 65, 1000, 2050];
    for (hq, hkv) in [(4usize, 4usize), (6, 2), (7, 1), (21, 3)] {
        check_group(&g, 0xDE60 + hq as u64, hq, hkv, &lens, 16);
    }
}
