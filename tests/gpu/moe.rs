//! The MoE kernels (src/kernels/moe.rs) against f64 references (tests/common/ref_moe.rs):
//! ERNIE-4.5-VL-28B-A3B's shapes (hidden 2560; text experts of 1536, vision experts of 512;
//! 64 experts per pool, top-6) and awkward neighbours (widths that are not a multiple of a
//! tile, a pool of 20 experts, top-k = every expert, experts with 0, 64 and 65 pairs, ids out
//! of range, NaN logits). Outputs are poisoned first, so an unwritten element fails.

use half::bf16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use ocrvl::kernels::moe::{self, Epilogue, ExpertWeight, GemmKernel, BLOCK_M};
use ocrvl::model::quantize::{quantize_rows_int8, Int8Rows};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorView as DeviceView};
use ocrvl::sys::OcrvlStatus;
use ocrvl::Error;

use crate::common::ref_moe;
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rand_f32, rng};

/// A device tensor whose bytes are all `byte` (0xFF: bf16/f32 NaN; 0x7F: i32 2139062143).
fn poisoned(g: &Gpu, dtype: DType, dims: &[usize], byte: u8) -> DeviceTensor {
    let mut t = DeviceTensor::alloc(g, dtype, dims).unwrap();
    t.view_mut().fill_bytes(g, byte).unwrap();
    t
}

#[test]
#[ignore = "needs GPU"]
fn router_logits_match_f64() {
    let g = gpu();
    let mut r = rng(0x30e1);
    let split_max = moe::ROUTER_SPLIT_K_MAX_TOKENS;
    // (tokens, hidden, num_logits, x row stride): decode and prefill at the model's 2560 x
    // (2 pools x 64), one token, widths that leave partial tiles in every dimension, the
    // split-k kernel's last token count and the tiled kernel's first, strided rows of x, and
    // widths the split-k kernel refuses (hidden or stride not a multiple of 8: tiled).
    for (tokens, hidden, num_logits, x_stride) in [
        (256, 2560, 128, 2560),
        (1, 2560, 128, 2560),
        (127, 2560, 128, 2560),
        (1000, 2560, 128, 2560),
        (17, 72, 100, 72),
        (33, 40, 1, 40),
        (split_max, 64, 40, 64),
        (split_max + 1, 64, 40, 64),
        (6, 2560, 128, 2568),
        (5, 36, 10, 36),
        (9, 64, 33, 68),
    ] {
        let x = rand_bf16(&mut r, tokens * x_stride, 1.0);
        let w = rand_f32(&mut r, num_logits * hidden, 0.05);
        let xd = DeviceTensor::from_host(&g, &[tokens, x_stride], &x).unwrap();
        let wd = DeviceTensor::from_host(&g, &[num_logits, hidden], &w).unwrap();
        let mut out = poisoned(&g, DType::F32, &[tokens, num_logits], 0xFF);
        let xv = xd.view().columns(0, hidden).unwrap();
        moe::router_logits(&g, &mut out.view_mut(), &xv, &wd.view()).unwrap();
        // The same inputs give the same bits on a second run.
        let mut again = poisoned(&g, DType::F32, &[tokens, num_logits], 0xFF);
        moe::router_logits(&g, &mut again.view_mut(), &xv, &wd.view()).unwrap();
        let x: Vec<half::bf16> = (0..tokens)
            .flat_map(|t| x[t * x_stride..t * x_stride + hidden].iter().copied())
            .collect();
        let got: Vec<f32> = out.to_host(&g).unwrap();
        let got_again: Vec<f32> = again.to_host(&g).unwrap();
        assert!(
            got.iter().zip(&got_again).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{tokens}x{hidden}x{num_logits}: two runs differ"
        );
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let (want, scale) = ref_moe::router_logits(&bf16_to_f64(&x), &w64, tokens, hidden, num_logits);
        for i in 0..want.len() {
            // f32 products summed in f32 over `hidden` terms: a few 1e-6 of Σ|terms| in
            // practice (bf16 inputs would be ~4e-3).
            let bound = 3e-5 * scale[i] + 1e-30;
            let d = (got[i] as f64 - want[i]).abs();
            assert!(
                d <= bound,
                "{tokens}x{hidden}x{num_logits}: logit {i}: got {}, want {}, |diff| {d} > {bound}",
                got[i],
                want[i]
            );
        }
    }
}

/// Routes `tokens` tokens on the GPU; returns (ids, weights) as the host reads them.
#[allow(clippy::too_many_arguments)]
fn gpu_topk(
    g: &Gpu,
    logits: &[f32],
    tokens: usize,
    width: usize,
    pools: Option<&[i32]>,
    bias: Option<(&[f32], usize)>,
    num_experts: usize,
    top_k: usize,
) -> (Vec<i32>, Vec<f32>) {
    let ld = DeviceTensor::from_host(g, &[tokens, width], logits).unwrap();
    let pd = pools.map(|p| DeviceTensor::from_host(g, &[tokens], p).unwrap());
    let bd = bias.map(|(b, n_pools)| DeviceTensor::from_host(g, &[n_pools, num_experts], b).unwrap());
    let mut ids = poisoned(g, DType::I32, &[tokens, top_k], 0x7F);
    let mut w = poisoned(g, DType::F32, &[tokens, top_k], 0xFF);
    let pv = pd.as_ref().map(|t| t.view());
    let bv = bd.as_ref().map(|t| t.view());
    moe::topk(
        g,
        &mut ids.view_mut(),
        &mut w.view_mut(),
        &ld.view(),
        pv.as_ref(),
        bv.as_ref(),
        num_experts,
        1e-12,
    )
    .unwrap();
    (ids.to_host(g).unwrap(), w.to_host(g).unwrap())
}

#[test]
#[ignore = "needs GPU"]
fn topk_matches_reference_routing() {
    let g = gpu();
    let mut r = rng(0x70b6);
    // (tokens, pools, experts per pool, top_k, with bias): the model's two pools of 64, top-6;
    // one pool; 20 experts (not a multiple of 32); 256 (the largest); top_k = every expert.
    for (tokens, pools, num_experts, top_k, with_bias) in [
        (300, 2, 64, 6, true),
        (1, 2, 64, 6, true),
        (97, 1, 64, 6, false),
        (50, 2, 20, 3, true),
        (40, 1, 256, 16, true),
        (10, 1, 8, 8, true),
    ] {
        let width = pools * num_experts;
        let logits = rand_f32(&mut r, tokens * width, 4.0);
        let bias = rand_f32(&mut r, width, 0.05);
        let token_pool: Vec<i32> = (0..tokens).map(|_| r.random_range(0..pools as i32)).collect();
        let (ids, w) = gpu_topk(
            &g,
            &logits,
            tokens,
            width,
            Some(&token_pool),
            with_bias.then_some((&bias[..], pools)),
            num_experts,
            top_k,
        );
        let mut near_ties = 0;
        for t in 0..tokens {
            let l64: Vec<f64> = logits[t * width..(t + 1) * width].iter().map(|&v| v as f64).collect();
            let pool = token_pool[t] as usize;
            let b64: Vec<f64> = bias[pool * num_experts..(pool + 1) * num_experts]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let want = ref_moe::route(&l64, with_bias.then_some(&b64[..]), pool, num_experts, top_k, 1e-12);
            let got_ids: Vec<usize> = ids[t * top_k..(t + 1) * top_k].iter().map(|&v| v as usize).collect();
            if want.margin < 1e-6 && got_ids != want.ids {
                near_ties += 1; // f32 against f64 may order a near-tie either way
                continue;
            }
            assert_eq!(
                got_ids, want.ids,
                "{tokens}x{pools}x{num_experts} top-{top_k}: token {t}'s experts"
            );
            let got_w: Vec<f64> = w[t * top_k..(t + 1) * top_k].iter().map(|&v| v as f64).collect();
            for (k, (&gw, &ww)) in got_w.iter().zip(&want.weights).enumerate() {
                // f32 probabilities and one bf16 rounding.
                assert_eq!(gw, bf16::from_f32(gw as f32).to_f64(), "weights are rounded to bf16");
                assert!(
                    (gw - ww).abs() <= BF16_RTOL * ww + 1e-7,
                    "token {t} k {k}: weight {gw} want {ww}"
                );
            }
        }
        assert!(near_ties <= tokens / 100, "{near_ties} near-ties chose differently");
    }
}

#[test]
#[ignore = "needs GPU"]
fn topk_without_pools_or_bias_and_with_nan_logits_stays_in_range() {
    let g = gpu();
    let mut r = rng(0x70b7);
    let (tokens, num_experts, top_k) = (64, 64, 6);
    let mut logits = rand_f32(&mut r, tokens * 2 * num_experts, 3.0);
    // Token 5: every logit NaN; token 9: half NaN, one +inf.
    logits[5 * 128..5 * 128 + 64].fill(f32::NAN);
    for i in 0..32 {
        logits[9 * 128 + 2 * i] = f32::NAN;
    }
    logits[9 * 128 + 7] = f32::INFINITY;
    // No token_pool: every token uses pool 0, the first 64 columns of its row.
    let (ids, _) = gpu_topk(&g, &logits, tokens, 128, None, None, num_experts, top_k);
    for t in 0..tokens {
        let mut row: Vec<i32> = ids[t * top_k..(t + 1) * top_k].to_vec();
        assert!(
            row.iter().all(|&e| (0..64).contains(&e)),
            "token {t}: ids {row:?} outside pool 0"
        );
        row.sort();
        row.dedup();
        assert_eq!(row.len(), top_k, "token {t}: repeated experts");
    }
    // A clean token follows the reference without bias.
    let l64: Vec<f64> = logits[3 * 128..4 * 128].iter().map(|&v| v as f64).collect();
    let want = ref_moe::route(&l64, None, 0, num_experts, top_k, 1e-12);
    let got: Vec<usize> = ids[3 * top_k..4 * top_k].iter().map(|&v| v as usize).collect();
    assert_eq!(got, want.ids);
}

/// Runs align on the GPU over `ids` (as [pairs, 1]); returns what it wrote.
fn gpu_align(g: &Gpu, ids: &[i32], num_experts: usize, tiles: usize) -> ref_moe::Aligned {
    let idd = DeviceTensor::from_host(g, &[ids.len(), 1], ids).unwrap();
    let mut sorted = poisoned(g, DType::I32, &[tiles * BLOCK_M], 0x7F);
    let mut slot = poisoned(g, DType::I32, &[ids.len()], 0x7F);
    let mut tile_expert = poisoned(g, DType::I32, &[tiles], 0x7F);
    moe::align(
        g,
        &mut sorted.view_mut(),
        &mut slot.view_mut(),
        &mut tile_expert.view_mut(),
        &idd.view(),
        num_experts,
    )
    .unwrap();
    ref_moe::Aligned {
        sorted_pairs: sorted.to_host(g).unwrap(),
        pair_slot: slot.to_host(g).unwrap(),
        tile_expert: tile_expert.to_host(g).unwrap(),
    }
}

#[test]
#[ignore = "needs GPU"]
fn align_sorts_pairs_stably_into_tiles() {
    let g = gpu();
    let mut r = rng(0xa119);
    let uniform = |r: &mut ChaCha8Rng, n: usize, e: i32| -> Vec<i32> { (0..n).map(|_| r.random_range(0..e)).collect() };
    let mut cases: Vec<(&str, Vec<i32>, usize)> = vec![
        ("decode 256x6 over 128", uniform(&mut r, 1536, 128), 128),
        ("prefill 8192x6 over 128", uniform(&mut r, 49152, 128), 128),
        ("one pair", vec![77], 128),
        ("1023 pairs over 256", uniform(&mut r, 1023, 256), 256),
        ("1025 pairs over 3", uniform(&mut r, 1025, 3), 3),
    ];
    // Experts with exactly 64 and 65 pairs and many with none; every pair on one expert.
    let mut edges = vec![5; 64];
    edges.extend(vec![9; 65]);
    edges.extend(vec![0; 1]);
    cases.push(("runs of 64, 65 and 1", edges, 128));
    cases.push(("all on one expert", vec![127; 3000], 128));
    // Ids out of range are left out.
    let mut bad = uniform(&mut r, 500, 64);
    bad[3] = -1;
    bad[100] = 64;
    bad[499] = i32::MAX;
    cases.push(("ids out of range", bad, 64));
    for (name, ids, num_experts) in cases {
        for extra in [0, 3] {
            let tiles = moe::max_tiles(ids.len(), num_experts) + extra;
            let got = gpu_align(&g, &ids, num_experts, tiles);
            let want = ref_moe::align(&ids, num_experts, tiles, BLOCK_M);
            assert_eq!(got.tile_expert, want.tile_expert, "{name}: tile_expert");
            assert_eq!(got.pair_slot, want.pair_slot, "{name}: pair_slot");
            assert_eq!(got.sorted_pairs, want.sorted_pairs, "{name}: sorted_pairs");
        }
    }
    // Too few tiles is refused before launching.
    let idd = DeviceTensor::from_host(&g, &[1536, 1], &vec![0i32; 1536]).unwrap();
    let tiles = moe::max_tiles(1536, 128) - 1;
    let mut sorted = DeviceTensor::alloc(&g, DType::I32, &[tiles * BLOCK_M]).unwrap();
    let mut slot = DeviceTensor::alloc(&g, DType::I32, &[1536]).unwrap();
    let mut te = DeviceTensor::alloc(&g, DType::I32, &[tiles]).unwrap();
    let err = moe::align(
        &g,
        &mut sorted.view_mut(),
        &mut slot.view_mut(),
        &mut te.view_mut(),
        &idd.view(),
        128,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

/// One pool's experts for the grouped GEMM test: gate, up, down per expert as f64 (what the
/// device weights stand for), and the device weights in the kernel's layout.
pub(crate) struct Pool {
    pub inter: usize,
    pub gate: Vec<Vec<f64>>,
    pub up: Vec<Vec<f64>>,
    pub down: Vec<Vec<f64>>,
    pub gate_up_dev: DeviceTensor,
    pub down_dev: DeviceTensor,
    /// int8 weights (`make_pool_int8`): the f32 row scales of gate/up and down.
    pub scales: Option<(DeviceTensor, DeviceTensor)>,
}

impl Pool {
    /// The pool's gate/up and down weights as the grouped GEMM takes them.
    pub(crate) fn weights(&self) -> (DeviceView<'_>, DeviceView<'_>, Option<(DeviceView<'_>, DeviceView<'_>)>) {
        let scales = self.scales.as_ref().map(|(gu, d)| (gu.view(), d.view()));
        (self.gate_up_dev.view(), self.down_dev.view(), scales)
    }
}

pub(crate) fn make_pool(g: &Gpu, r: &mut ChaCha8Rng, experts: usize, inter: usize, hidden: usize) -> Pool {
    let (mut gate, mut up, mut down) = (vec![], vec![], vec![]);
    let (mut gu_all, mut down_all) = (vec![], vec![]);
    for _ in 0..experts {
        let gw = rand_bf16(r, inter * hidden, 0.04);
        let uw = rand_bf16(r, inter * hidden, 0.04);
        let dw = rand_bf16(r, hidden * inter, 0.04);
        gu_all.extend(moe::interleave_gate_up(&gw, &uw, inter, hidden).unwrap());
        down_all.extend_from_slice(&dw);
        gate.push(bf16_to_f64(&gw));
        up.push(bf16_to_f64(&uw));
        down.push(bf16_to_f64(&dw));
    }
    Pool {
        inter,
        gate,
        up,
        down,
        gate_up_dev: DeviceTensor::from_host(g, &[experts, 2 * inter, hidden], &gu_all).unwrap(),
        down_dev: DeviceTensor::from_host(g, &[experts, hidden, inter], &down_all).unwrap(),
        scales: None,
    }
}

/// As [`make_pool`] with weight-only int8 weights (`quantize_rows_int8`, one scale per row);
/// the f64 weights are exactly `q · scale`, what the kernel multiplies by.
pub(crate) fn make_pool_int8(g: &Gpu, r: &mut ChaCha8Rng, experts: usize, inter: usize, hidden: usize) -> Pool {
    let (mut gate, mut up, mut down) = (vec![], vec![], vec![]);
    let (mut gu_q, mut gu_s, mut down_q, mut down_s) = (vec![], vec![], vec![], vec![]);
    let exact = |q: &Int8Rows, row_len: usize| -> Vec<f64> {
        q.q.iter()
            .enumerate()
            .map(|(i, &v)| v as f64 * q.scales[i / row_len] as f64)
            .collect()
    };
    for _ in 0..experts {
        let gq = quantize_rows_int8("gate", &rand_bf16(r, inter * hidden, 0.04), hidden).unwrap();
        let uq = quantize_rows_int8("up", &rand_bf16(r, inter * hidden, 0.04), hidden).unwrap();
        let dq = quantize_rows_int8("down", &rand_bf16(r, hidden * inter, 0.04), inter).unwrap();
        // The interleaving moves whole rows, so the scales (rows of one value) move with them.
        gu_q.extend(moe::interleave_gate_up(&gq.q, &uq.q, inter, hidden).unwrap());
        gu_s.extend(moe::interleave_gate_up(&gq.scales, &uq.scales, inter, 1).unwrap());
        down_q.extend_from_slice(&dq.q);
        down_s.extend_from_slice(&dq.scales);
        gate.push(exact(&gq, hidden));
        up.push(exact(&uq, hidden));
        down.push(exact(&dq, inter));
    }
    Pool {
        inter,
        gate,
        up,
        down,
        gate_up_dev: DeviceTensor::from_host(g, &[experts, 2 * inter, hidden], &gu_q).unwrap(),
        down_dev: DeviceTensor::from_host(g, &[experts, hidden, inter], &down_q).unwrap(),
        scales: Some((
            DeviceTensor::from_host(g, &[experts, 2 * inter], &gu_s).unwrap(),
            DeviceTensor::from_host(g, &[experts, hidden], &down_s).unwrap(),
        )),
    }
}

/// The experts' MLPs over routed pairs, two pools, on the GPU and in f64: `ids` `[tokens,
/// top_k]` global (pool p's expert e is p · experts + e). Checks h (gate/up + SwiGLU) and y
/// (down) at every used slot, and that padding slots stay untouched. Every pool has the same
/// expert count and hidden width.
fn check_grouped_gemm(
    kernel: GemmKernel,
    name: &str,
    g: &Gpu,
    r: &mut ChaCha8Rng,
    pools: &[Pool],
    ids: &[i32],
    top_k: usize,
) {
    let (experts, hidden) = (pools[0].gate.len(), pools[0].gate_up_dev.dims()[2]);
    let tokens = ids.len() / top_k;
    let total_experts = experts * pools.len();
    let x = rand_bf16(r, tokens * hidden, 1.0);
    let xd = DeviceTensor::from_host(g, &[tokens, hidden], &x).unwrap();
    let idd = DeviceTensor::from_host(g, &[tokens, top_k], ids).unwrap();
    let tiles = moe::max_tiles(ids.len(), total_experts);
    let slots = tiles * BLOCK_M;
    let mut sorted = DeviceTensor::alloc(g, DType::I32, &[slots]).unwrap();
    let mut pair_slot = DeviceTensor::alloc(g, DType::I32, &[ids.len()]).unwrap();
    let mut tile_expert = DeviceTensor::alloc(g, DType::I32, &[tiles]).unwrap();
    moe::align(
        g,
        &mut sorted.view_mut(),
        &mut pair_slot.view_mut(),
        &mut tile_expert.view_mut(),
        &idd.view(),
        total_experts,
    )
    .unwrap();
    let max_inter = pools.iter().map(|p| p.inter).max().unwrap();
    let mut h = poisoned(g, DType::BF16, &[slots, max_inter], 0xFF);
    let mut y = poisoned(g, DType::BF16, &[slots, hidden], 0xFF);
    run_pools(
        g,
        kernel,
        pools,
        experts,
        &xd,
        top_k,
        &sorted,
        &tile_expert,
        &mut h,
        &mut y,
    );
    let sorted_h: Vec<i32> = sorted.to_host(g).unwrap();
    let h_got = bf16_to_f64(&h.to_host::<bf16>(g).unwrap());
    let y_got = bf16_to_f64(&y.to_host::<bf16>(g).unwrap());
    let x64 = bf16_to_f64(&x);
    let (mut hg, mut hw, mut yg, mut yw) = (vec![], vec![], vec![], vec![]);
    for s in 0..slots {
        let pair = sorted_h[s];
        if pair < 0 {
            assert!(
                y_got[s * hidden..(s + 1) * hidden].iter().all(|v| v.is_nan()),
                "{name}: padding slot {s} was written"
            );
            continue;
        }
        let (t, e) = (pair as usize / top_k, ids[pair as usize] as usize);
        let (pool, local) = (&pools[e / experts], e % experts);
        let xr = &x64[t * hidden..(t + 1) * hidden];
        let hr = ref_moe::swiglu_row(xr, &pool.gate[local], &pool.up[local], pool.inter, hidden);
        // The down projection is checked on the GPU's own h, so an h rounding that differs
        // from the reference's (a near-boundary f32 sum) is not counted twice.
        let h_row = &h_got[s * max_inter..s * max_inter + pool.inter];
        let yr = ref_moe::matvec(h_row, &pool.down[local], hidden, pool.inter);
        hg.extend_from_slice(h_row);
        hw.extend(hr);
        yg.extend_from_slice(&y_got[s * hidden..(s + 1) * hidden]);
        yw.extend(yr);
    }
    // h: gate and up may round to the other side of a bf16 boundary (f32 against f64 sums),
    // which moves h by up to 2^-8 relative; then one more rounding.
    assert_close(&format!("{name}: h"), &hg, &hw, 1e-3 * rms(&hw), 4.0 * BF16_RTOL);
    assert_close(&format!("{name}: y"), &yg, &yw, 1e-2 * rms(&yw), BF16_RTOL);
}

/// Both grouped GEMMs of every pool over routed slots: `h = swiglu(x[token] · gate_upᵀ)` into
/// the first `inter` columns of `h`, then `y = h · downᵀ`.
#[allow(clippy::too_many_arguments)]
fn run_pools(
    g: &Gpu,
    kernel: GemmKernel,
    pools: &[Pool],
    experts: usize,
    xd: &DeviceTensor,
    top_k: usize,
    sorted: &DeviceTensor,
    tile_expert: &DeviceTensor,
    h: &mut DeviceTensor,
    y: &mut DeviceTensor,
) {
    for (p, pool) in pools.iter().enumerate() {
        let range = p * experts..(p + 1) * experts;
        let (gate_up, down, scales) = pool.weights();
        let (gate_up, down) = match &scales {
            None => (ExpertWeight::Bf16(&gate_up), ExpertWeight::Bf16(&down)),
            Some((gs, ds)) => (
                ExpertWeight::Int8 {
                    weight: &gate_up,
                    scales: gs,
                },
                ExpertWeight::Int8 {
                    weight: &down,
                    scales: ds,
                },
            ),
        };
        let mut hv = h.view_mut().columns(0, pool.inter).unwrap();
        moe::grouped_gemm_with(
            g,
            kernel,
            &mut hv,
            &xd.view(),
            &sorted.view(),
            Some(top_k),
            gate_up,
            &tile_expert.view(),
            range.clone(),
            Epilogue::SwiGlu,
        )
        .unwrap();
        let hin = h.view().columns(0, pool.inter).unwrap();
        moe::grouped_gemm_with(
            g,
            kernel,
            &mut y.view_mut(),
            &hin,
            &sorted.view(),
            None,
            down,
            &tile_expert.view(),
            range,
            Epilogue::None,
        )
        .unwrap();
    }
}

/// top_k 1 ids over two pools of `experts`: pool 0's expert e gets `counts[e]` pairs, pool 1's
/// experts the same counts in reverse order, the pairs interleaved so that a run is not one
/// contiguous stretch of tokens.
fn runs_of(counts: &[usize], experts: usize) -> Vec<i32> {
    let mut ids = vec![];
    for (e, &c) in counts.iter().enumerate() {
        ids.extend(std::iter::repeat_n(e as i32, c));
        ids.extend(std::iter::repeat_n((2 * experts - 1 - e) as i32, c));
    }
    let n = ids.len();
    (0..n).map(|i| ids[(i * 7) % n]).collect()
}

/// Random routing: each token picks a pool, then top_k distinct experts in it.
fn random_ids(r: &mut ChaCha8Rng, tokens: usize, pools: usize, experts: usize, top_k: usize) -> Vec<i32> {
    let mut ids = Vec::with_capacity(tokens * top_k);
    for _ in 0..tokens {
        let p = r.random_range(0..pools);
        let mut chosen: Vec<usize> = vec![];
        while chosen.len() < top_k {
            let e = r.random_range(0..experts);
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        ids.extend(chosen.iter().map(|&e| (p * experts + e) as i32));
    }
    ids
}

// Hidden 2560; text experts of 1536, vision experts of 512 (n = 3072 / 1024 for gate+up,
// k = 1536 / 512 for down), top-6. 8 experts per pool keep the host's reference fast; the
// kernel indexes a pool's experts the same way whatever their number.
const MODEL_HIDDEN: usize = 2560;
const MODEL_EXPERTS: usize = 8;
const MODEL_TOP_K: usize = 6;

/// The text and vision pools at the model's widths, made by `make` (bf16 or int8).
fn model_shape_pools(
    g: &Gpu,
    r: &mut ChaCha8Rng,
    make: fn(&Gpu, &mut ChaCha8Rng, usize, usize, usize) -> Pool,
) -> [Pool; 2] {
    [
        make(g, r, MODEL_EXPERTS, 1536, MODEL_HIDDEN),
        make(g, r, MODEL_EXPERTS, 512, MODEL_HIDDEN),
    ]
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_matches_f64_at_the_model_shapes() {
    let g = gpu();
    let mut r = rng(0x6e33);
    let (experts, top_k) = (MODEL_EXPERTS, MODEL_TOP_K);
    let pools = model_shape_pools(&g, &mut r, make_pool);
    let ids = random_ids(&mut r, 64, 2, experts, top_k);
    check_grouped_gemm(GemmKernel::Mma, "model shapes", &g, &mut r, &pools, &ids, top_k);
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_handles_empty_full_and_overflowing_tiles() {
    let g = gpu();
    let mut r = rng(0x6e34);
    // Small widths (one n tile, two k steps) so every slot can be checked: pool 0 of 4
    // experts with inter 64 (n = 128), pool 1 with inter 128 (n = 256); hidden 128.
    let (hidden, experts) = (128, 4);
    let pools = [
        make_pool(&g, &mut r, experts, 64, hidden),
        make_pool(&g, &mut r, experts, 128, hidden),
    ];
    // top_k 1: expert 1 gets 64 pairs (one full tile), expert 2 gets 65 (a tile and one),
    // expert 6 gets 1, the others none.
    let mut ids = vec![1i32; 64];
    ids.extend(vec![2; 65]);
    ids.push(6);
    check_grouped_gemm(GemmKernel::Mma, "64/65/1 pairs", &g, &mut r, &pools, &ids, 1);
    // top_k 2 over 300 tokens, all in pool 1: pool 0's call writes nothing.
    let ids = random_ids(&mut r, 300, 1, experts, 2)
        .iter()
        .map(|&e| e + experts as i32)
        .collect::<Vec<_>>();
    check_grouped_gemm(GemmKernel::Mma, "one pool only", &g, &mut r, &pools, &ids, 2);
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_computes_every_live_row_at_sub_tile_boundaries() {
    // The kernel skips an m16 sub-tile whose first slot is padding (grouped_gemm.cuh): runs
    // that end one before, at and one after each 16-row boundary of a 64-slot tile, and runs
    // that spill into a second tile, must still give every live row its product.
    let g = gpu();
    let mut r = rng(0x6e35);
    let (hidden, experts) = (128, 8);
    let pools = [
        make_pool(&g, &mut r, experts, 64, hidden),
        make_pool(&g, &mut r, experts, 128, hidden),
    ];
    for counts in [[15usize, 16, 17, 31, 32, 33, 47, 48], [49, 63, 64, 65, 79, 80, 81, 1]] {
        let ids = runs_of(&counts, experts);
        check_grouped_gemm(
            GemmKernel::Mma,
            &format!("runs of {counts:?}"),
            &g,
            &mut r,
            &pools,
            &ids,
            1,
        );
    }
}

/// The grouped GEMM (no epilogue, gathering top-1 from 4 zero rows of `a`) over `tiles` tiles of
/// padding only, each tile given expert `tile_expert`: what the launcher checks, refuses and
/// chooses, with nothing to compute. `out` is `[tiles · BLOCK_M, n]` for an `[1, n, k]` weight.
fn gemm_on_padding(
    g: &Gpu,
    kernel: GemmKernel,
    weight: ExpertWeight<'_, '_>,
    tiles: usize,
    tile_expert: i32,
) -> ocrvl::Result<()> {
    let w = match weight {
        ExpertWeight::Bf16(w) => w,
        ExpertWeight::Int8 { weight, .. } => weight,
    };
    let (n, k) = (w.dims()[1], w.dims()[2]);
    let sorted = DeviceTensor::from_host(g, &[tiles * BLOCK_M], &vec![-1i32; tiles * BLOCK_M]).unwrap();
    let te = DeviceTensor::from_host(g, &[tiles], &vec![tile_expert; tiles]).unwrap();
    let a = DeviceTensor::zeros(g, DType::BF16, &[4, k]).unwrap();
    let mut out = DeviceTensor::zeros(g, DType::BF16, &[tiles * BLOCK_M, n]).unwrap();
    moe::grouped_gemm_with(
        g,
        kernel,
        &mut out.view_mut(),
        &a.view(),
        &sorted.view(),
        Some(1),
        weight,
        &te.view(),
        0..1,
        Epilogue::None,
    )
}

/// Every wgmma kernel (the rings and their in-flight variants) when they run on this GPU (sm_90
/// with an sm_90a build); else none, after checking that they are refused as unsupported.
fn wgmma_kernels(g: &Gpu) -> &'static [GemmKernel] {
    if g.compute_capability() == (9, 0) && ocrvl::kernels::attention::fa3_built() {
        return &GemmKernel::WGMMA;
    }
    let w = DeviceTensor::zeros(g, DType::BF16, &[1, 256, 64]).unwrap();
    let err = gemm_on_padding(g, GemmKernel::Wgmma, ExpertWeight::Bf16(&w.view()), 1, 0).unwrap_err();
    assert!(is_unsupported(&err), "wgmma on {:?}: {err}", g.compute_capability());
    eprintln!(
        "wgmma grouped GEMM not available on {:?}; checked that it is refused",
        g.compute_capability()
    );
    &[]
}

fn is_unsupported(err: &Error) -> bool {
    matches!(
        err,
        Error::Kernel {
            status: OcrvlStatus::OCRVL_STATUS_UNSUPPORTED,
            ..
        }
    )
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_wgmma_matches_f64_at_the_model_shapes() {
    let g = gpu();
    for &kernel in wgmma_kernels(&g) {
        let mut r = rng(0x6e3a);
        let (experts, top_k) = (MODEL_EXPERTS, MODEL_TOP_K);
        let pools = model_shape_pools(&g, &mut r, make_pool);
        // 96 tokens over 8 experts of 2 pools: about 36 pairs per expert, so partial tiles,
        // 40 k steps (gate/up) and 24 / 8 (down) through the ring.
        let ids = random_ids(&mut r, 96, 2, experts, top_k);
        check_grouped_gemm(
            kernel,
            &format!("{kernel:?}, model shapes"),
            &g,
            &mut r,
            &pools,
            &ids,
            top_k,
        );
    }
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_wgmma_handles_full_partial_and_empty_tiles() {
    let g = gpu();
    for &kernel in wgmma_kernels(&g) {
        let mut r = rng(0x6e3b);
        // The narrowest widths the kernel takes: n = 256 (gate/up of inter 128, and down with
        // hidden 256) and n = 512; k = 256 (4 k steps: fewer than the 4-stage ring's prologue
        // plus one) and 128 (2 steps).
        let (hidden, experts) = (256, 6);
        let pools = [
            make_pool(&g, &mut r, experts, 128, hidden),
            make_pool(&g, &mut r, experts, 256, hidden),
        ];
        // Runs of 1, 63, 64, 65, 128 and 200 pairs (one to four tiles, full and partial).
        let ids = runs_of(&[1, 63, 64, 65, 128, 200], experts);
        check_grouped_gemm(kernel, &format!("{kernel:?}, runs"), &g, &mut r, &pools, &ids, 1);
        // top-2 over 500 tokens in both pools, with one expert of each pool left empty.
        let ids: Vec<i32> = random_ids(&mut r, 500, 2, experts - 1, 2)
            .iter()
            .map(|&e| if e >= (experts - 1) as i32 { e + 1 } else { e })
            .collect();
        check_grouped_gemm(kernel, &format!("{kernel:?}, top-2"), &g, &mut r, &pools, &ids, 2);
    }
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_wgmma_refuses_what_it_has_no_tile_for() {
    let g = gpu();
    let kernels = wgmma_kernels(&g);
    if kernels.is_empty() {
        return; // refused as unsupported: wgmma_kernels checked it
    }
    // n = 384: a multiple of the mma.sync kernel's 128 columns, not of wgmma's 256.
    let w = DeviceTensor::zeros(&g, DType::BF16, &[1, 384, 128]).unwrap();
    for &kernel in kernels {
        let err = gemm_on_padding(&g, kernel, ExpertWeight::Bf16(&w.view()), 1, -1).unwrap_err();
        assert!(is_unsupported(&err), "{kernel:?} n 384: {err}");
    }
    // Auto takes the mma.sync kernel there: the call runs.
    gemm_on_padding(&g, GemmKernel::Auto, ExpertWeight::Bf16(&w.view()), 1, -1).unwrap();
    // int8 weights have no wgmma kernel.
    let w8 = DeviceTensor::zeros(&g, DType::I8, &[1, 256, 128]).unwrap();
    let sc = DeviceTensor::zeros(&g, DType::F32, &[1, 256]).unwrap();
    let int8 = ExpertWeight::Int8 {
        weight: &w8.view(),
        scales: &sc.view(),
    };
    let err = gemm_on_padding(&g, GemmKernel::Wgmma, int8, 1, -1).unwrap_err();
    assert!(err.to_string().contains("int8"), "{err}");
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_int8_matches_f64_at_the_model_shapes() {
    // `--quantization wint8`: the same shapes as the bf16 test, the weights int8 with one f32
    // scale per row, the reference on exactly q · scale.
    let g = gpu();
    let mut r = rng(0x6e38);
    let (experts, top_k) = (MODEL_EXPERTS, MODEL_TOP_K);
    let pools = model_shape_pools(&g, &mut r, make_pool_int8);
    let ids = random_ids(&mut r, 64, 2, experts, top_k);
    check_grouped_gemm(GemmKernel::Mma, "int8, model shapes", &g, &mut r, &pools, &ids, top_k);
    // A decode-sized step (few live slots per tile) and one of ~75 slots per expert (a full
    // tile and a partial one; the host's f64 reference bounds the size).
    let ids = random_ids(&mut r, 3, 2, experts, top_k);
    check_grouped_gemm(GemmKernel::Mma, "int8, 3 tokens", &g, &mut r, &pools, &ids, top_k);
    let ids = random_ids(&mut r, 200, 2, experts, top_k);
    check_grouped_gemm(GemmKernel::Mma, "int8, 200 tokens", &g, &mut r, &pools, &ids, top_k);
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_int8_handles_tile_boundaries_and_refusals() {
    let g = gpu();
    let mut r = rng(0x6e39);
    // One n tile and two k steps (hidden 128), runs ending around every 16-row boundary and
    // spilling into a second tile, as for bf16.
    let (hidden, experts) = (128, 8);
    let pools = [
        make_pool_int8(&g, &mut r, experts, 64, hidden),
        make_pool_int8(&g, &mut r, experts, 128, hidden),
    ];
    let ids = runs_of(&[15, 16, 17, 33, 64, 65, 81, 1], experts);
    check_grouped_gemm(GemmKernel::Mma, "int8 runs", &g, &mut r, &pools, &ids, 1);

    // Scales of the wrong shape or dtype are refused before anything runs.
    let w = DeviceTensor::zeros(&g, DType::I8, &[1, 128, 128]).unwrap();
    for bad in [
        DeviceTensor::zeros(&g, DType::F32, &[1, 64]).unwrap(),
        DeviceTensor::zeros(&g, DType::BF16, &[1, 128]).unwrap(),
    ] {
        let int8 = ExpertWeight::Int8 {
            weight: &w.view(),
            scales: &bad.view(),
        };
        let err = gemm_on_padding(&g, GemmKernel::Auto, int8, 2, -1).unwrap_err();
        assert!(err.to_string().contains("scales"), "{err}");
    }
}

#[test]
#[ignore = "needs GPU"]
fn grouped_gemm_refuses_widths_it_has_no_tile_for() {
    let g = gpu();
    // k = 96 is not a multiple of 64; then n = 192 is not a multiple of 128.
    for (n, k) in [(128, 96), (192, 128)] {
        let w = DeviceTensor::zeros(&g, DType::BF16, &[1, n, k]).unwrap();
        let err = gemm_on_padding(&g, GemmKernel::Auto, ExpertWeight::Bf16(&w.view()), 2, -1).unwrap_err();
        assert!(is_unsupported(&err), "n {n} k {k}: {err}");
    }
}

#[test]
#[ignore = "needs GPU"]
fn combine_matches_f64() {
    let g = gpu();
    let mut r = rng(0xc0b1);
    // (tokens, top_k, hidden, with shared): the model's 2560 and top-6 at decode and prefill
    // sizes, and a width of one 8-column vector.
    for (tokens, top_k, hidden, with_shared) in [
        (256, 6, 2560, true),
        (257, 6, 2560, false),
        (5, 3, 8, true),
        (1, 16, 1032, true),
    ] {
        let slots = tokens * top_k + 64;
        let y = rand_bf16(&mut r, slots * hidden, 1.0);
        let shared = rand_bf16(&mut r, tokens * hidden, 1.0);
        // A permutation of slots, with one pair left out (-1).
        let mut pair_slot: Vec<i32> = (0..(tokens * top_k) as i32)
            .map(|i| (i * 7919) % slots as i32)
            .collect();
        pair_slot[tokens * top_k / 2] = -1;
        let w: Vec<f32> = (0..tokens * top_k)
            .map(|_| bf16::from_f32(r.random_range(0.0..1.0)).to_f32())
            .collect();
        let yd = DeviceTensor::from_host(&g, &[slots, hidden], &y).unwrap();
        let sd = DeviceTensor::from_host(&g, &[tokens, hidden], &shared).unwrap();
        let pd = DeviceTensor::from_host(&g, &[tokens * top_k], &pair_slot).unwrap();
        let wd = DeviceTensor::from_host(&g, &[tokens, top_k], &w).unwrap();
        let mut out = poisoned(&g, DType::BF16, &[tokens, hidden], 0xFF);
        let sv = sd.view();
        moe::combine(
            &g,
            &mut out.view_mut(),
            &yd.view(),
            &pd.view(),
            &wd.view(),
            with_shared.then_some(&sv),
        )
        .unwrap();
        let got = bf16_to_f64(&out.to_host::<bf16>(&g).unwrap());
        let mut want = vec![0.0; tokens * hidden];
        for t in 0..tokens {
            for c in 0..hidden {
                let mut s = if with_shared {
                    shared[t * hidden + c].to_f64()
                } else {
                    0.0
                };
                for k in 0..top_k {
                    let slot = pair_slot[t * top_k + k];
                    if slot >= 0 {
                        s += w[t * top_k + k] as f64 * y[slot as usize * hidden + c].to_f64();
                    }
                }
                want[t * hidden + c] = s;
            }
        }
        assert_close(
            &format!("combine {tokens}x{top_k}x{hidden}"),
            &got,
            &want,
            1e-3 * rms(&want),
            BF16_RTOL,
        );
    }
}

/// The routed part of an MoE layer for one token in f64, with its own routing from `logits`
/// (`[pools · experts]`) and `bias` (`[pools, experts]`): `Σ_k bf16(w_k) · bf16(y_k)`, each
/// expert's SwiGLU with transformers' roundings. None when the routing is within 1e-6 of a tie
/// (f32 may choose the other expert there).
pub(crate) fn routed_reference(
    pools: &[Pool],
    experts: usize,
    top_k: usize,
    logits: &[f64],
    bias: &[f64],
    pool: usize,
    xr: &[f64],
) -> Option<Vec<f64>> {
    let hidden = xr.len();
    let route = ref_moe::route(
        logits,
        Some(&bias[pool * experts..(pool + 1) * experts]),
        pool,
        experts,
        top_k,
        1e-12,
    );
    if route.margin < 1e-6 {
        return None;
    }
    let mut acc = vec![0.0; hidden];
    for (&e, &w) in route.ids.iter().zip(&route.weights) {
        let (pl, local) = (&pools[e / experts], e % experts);
        let hr = ref_moe::swiglu_row(xr, &pl.gate[local], &pl.up[local], pl.inter, hidden);
        let yr = ref_moe::matvec(&hr, &pl.down[local], hidden, pl.inter);
        let wk = bf16::from_f64(w).to_f64();
        for (a, y) in acc.iter_mut().zip(yr) {
            *a += wk * bf16::from_f64(y).to_f64();
        }
    }
    Some(acc)
}

/// A whole MoE layer's routed part (router → top-k → align → grouped GEMMs → combine) against
/// the f64 layer with its own routing. Tokens whose f64 routing is within 1e-6 of a tie are
/// skipped (f32 may choose the other expert there), and there must be few of them.
#[test]
#[ignore = "needs GPU"]
fn moe_layer_matches_f64() {
    let g = gpu();
    let mut r = rng(0x1a7e);
    let (tokens, hidden, experts, top_k) = (200, 256, 16, 4);
    let pools = [
        make_pool(&g, &mut r, experts, 256, hidden),
        make_pool(&g, &mut r, experts, 128, hidden),
    ];
    let router = rand_f32(&mut r, 2 * experts * hidden, 0.1);
    let bias = rand_f32(&mut r, 2 * experts, 0.02);
    let token_pool: Vec<i32> = (0..tokens).map(|t| i32::from(t % 3 == 0)).collect();
    let x = rand_bf16(&mut r, tokens * hidden, 1.0);
    let shared = rand_bf16(&mut r, tokens * hidden, 0.5);

    let xd = DeviceTensor::from_host(&g, &[tokens, hidden], &x).unwrap();
    let rd = DeviceTensor::from_host(&g, &[2 * experts, hidden], &router).unwrap();
    let bd = DeviceTensor::from_host(&g, &[2, experts], &bias).unwrap();
    let pd = DeviceTensor::from_host(&g, &[tokens], &token_pool).unwrap();
    let sd = DeviceTensor::from_host(&g, &[tokens, hidden], &shared).unwrap();
    let mut logits = DeviceTensor::alloc(&g, DType::F32, &[tokens, 2 * experts]).unwrap();
    let mut ids = DeviceTensor::alloc(&g, DType::I32, &[tokens, top_k]).unwrap();
    let mut w = DeviceTensor::alloc(&g, DType::F32, &[tokens, top_k]).unwrap();
    let tiles = moe::max_tiles(tokens * top_k, 2 * experts);
    let slots = tiles * BLOCK_M;
    let mut sorted = DeviceTensor::alloc(&g, DType::I32, &[slots]).unwrap();
    let mut pair_slot = DeviceTensor::alloc(&g, DType::I32, &[tokens * top_k]).unwrap();
    let mut tile_expert = DeviceTensor::alloc(&g, DType::I32, &[tiles]).unwrap();
    let mut h = DeviceTensor::alloc(&g, DType::BF16, &[slots, 256]).unwrap();
    let mut y = DeviceTensor::alloc(&g, DType::BF16, &[slots, hidden]).unwrap();
    let mut out = poisoned(&g, DType::BF16, &[tokens, hidden], 0xFF);

    moe::router_logits(&g, &mut logits.view_mut(), &xd.view(), &rd.view()).unwrap();
    let (pv, bv) = (pd.view(), bd.view());
    moe::topk(
        &g,
        &mut ids.view_mut(),
        &mut w.view_mut(),
        &logits.view(),
        Some(&pv),
        Some(&bv),
        experts,
        1e-12,
    )
    .unwrap();
    moe::align(
        &g,
        &mut sorted.view_mut(),
        &mut pair_slot.view_mut(),
        &mut tile_expert.view_mut(),
        &ids.view(),
        2 * experts,
    )
    .unwrap();
    run_pools(
        &g,
        GemmKernel::Auto,
        &pools,
        experts,
        &xd,
        top_k,
        &sorted,
        &tile_expert,
        &mut h,
        &mut y,
    );
    let sv = sd.view();
    moe::combine(
        &g,
        &mut out.view_mut(),
        &y.view(),
        &pair_slot.view(),
        &w.view(),
        Some(&sv),
    )
    .unwrap();
    let got = bf16_to_f64(&out.to_host::<bf16>(&g).unwrap());

    let x64 = bf16_to_f64(&x);
    let r64: Vec<f64> = router.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
    let (ref_logits, _) = ref_moe::router_logits(&x64, &r64, tokens, hidden, 2 * experts);
    let (mut gs, mut ws, mut skipped) = (vec![], vec![], 0);
    for t in 0..tokens {
        let xr = &x64[t * hidden..(t + 1) * hidden];
        let row = &ref_logits[t * 2 * experts..(t + 1) * 2 * experts];
        let Some(mut acc) = routed_reference(&pools, experts, top_k, row, &b64, token_pool[t] as usize, xr) else {
            skipped += 1;
            continue;
        };
        for (a, v) in acc.iter_mut().zip(&shared[t * hidden..(t + 1) * hidden]) {
            *a += v.to_f64();
        }
        gs.extend_from_slice(&got[t * hidden..(t + 1) * hidden]);
        ws.extend(acc);
    }
    assert!(skipped <= 2, "{skipped} tokens routed within 1e-6 of a tie");
    assert_close("moe layer", &gs, &ws, 2e-2 * rms(&ws), 2.0 * BF16_RTOL);
}

#[test]
#[ignore = "needs GPU"]
fn token_pool_marks_vision_ids_after_the_decode_prefix() {
    let g = gpu();
    let mut r = rng(0x7001_0001);
    // ERNIE-4.5-VL's placeholder and start/end markers among ordinary ids.
    let vision = [100_295u32, 101_304, 101_305, 101_306, 101_307];
    for &(tokens, prefix) in &[(1usize, 0usize), (1, 1), (300, 0), (300, 37), (4097, 256), (5, 9)] {
        let ids: Vec<i32> = (0..tokens)
            .map(|_| {
                if r.random_bool(0.4) {
                    vision[r.random_range(0..vision.len())] as i32
                } else {
                    r.random_range(0..103_424)
                }
            })
            .collect();
        let d_ids = DeviceTensor::from_host(&g, &[tokens], &ids).unwrap();
        let mut pool = poisoned(&g, DType::I32, &[tokens], 0x7F);
        moe::token_pool(&g, &mut pool.view_mut(), &d_ids.view(), prefix, &vision).unwrap();
        let got: Vec<i32> = pool.to_host(&g).unwrap();
        let want: Vec<i32> = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| i32::from(t >= prefix && vision.contains(&(id as u32))))
            .collect();
        assert_eq!(got, want, "tokens {tokens}, prefix {prefix}");
    }
    // No vision ids: every token text; too many ids: refused before launch.
    let ids = DeviceTensor::from_host(&g, &[3], &[100_295i32, 1, 2]).unwrap();
    let mut pool = poisoned(&g, DType::I32, &[3], 0x7F);
    moe::token_pool(&g, &mut pool.view_mut(), &ids.view(), 0, &[]).unwrap();
    assert_eq!(pool.to_host::<i32>(&g).unwrap(), vec![0, 0, 0]);
    assert!(moe::token_pool(&g, &mut pool.view_mut(), &ids.view(), 0, &[1; 9]).is_err());
}
