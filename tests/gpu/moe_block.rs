//! ERNIE-4.5-VL's MoE block (src/model/ernie_vl/moe_block.rs: shared experts through the dense
//! GEMM, routed experts through the MoE kernels) against the f64 block with its own routing,
//! text and vision tokens mixed, at two token counts from one scratch (the second reuses the
//! first's buffers, as a decode step after a prefill does).

use half::bf16;
use rand::Rng;

use ocrvl::model::ernie_vl::moe_block::{moe_block, ExpertPoolWeights, MoeBlockShape, MoeBlockWeights, MoeScratch};
use ocrvl::runtime::{DType, DeviceTensor, Gemm};

use crate::common::ref_moe;
use crate::common::tol::{assert_close, rms, BF16_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rand_f32, rng};
use crate::moe::{make_pool, make_pool_int8, routed_reference};

fn round_bf16(v: f64) -> f64 {
    bf16::from_f64(v).to_f64()
}

#[test]
#[ignore = "needs GPU"]
fn moe_block_matches_f64_with_shared_experts() {
    check_moe_block(false);
}

/// The same block with `--quantization wint8` experts (int8, one f32 scale per row); the f64
/// reference multiplies by exactly q · scale.
#[test]
#[ignore = "needs GPU"]
fn moe_block_int8_experts_match_f64_with_shared_experts() {
    check_moe_block(true);
}

fn check_moe_block(int8_experts: bool) {
    let g = gpu();
    let mut gemm = Gemm::new(&g).unwrap();
    let mut r = rng(0xb10c);
    let (hidden, experts, top_k, shared_inter) = (256, 16, 4, 256);
    let shape = MoeBlockShape {
        hidden,
        experts_per_pool: experts,
        pool_inter: vec![256, 128],
        shared_inter,
        top_k,
        norm_min: 1e-12,
    };
    let make = if int8_experts { make_pool_int8 } else { make_pool };
    let pools = [
        make(&g, &mut r, experts, 256, hidden),
        make(&g, &mut r, experts, 128, hidden),
    ];
    let router = rand_f32(&mut r, 2 * experts * hidden, 0.1);
    let bias = rand_f32(&mut r, 2 * experts, 0.02);
    let sg = rand_bf16(&mut r, shared_inter * hidden, 0.05);
    let su = rand_bf16(&mut r, shared_inter * hidden, 0.05);
    let sd = rand_bf16(&mut r, hidden * shared_inter, 0.05);
    let rd = DeviceTensor::from_host(&g, &[2 * experts, hidden], &router).unwrap();
    let bd = DeviceTensor::from_host(&g, &[2, experts], &bias).unwrap();
    let sgu_d = DeviceTensor::from_host(&g, &[2 * shared_inter, hidden], &[sg.clone(), su.clone()].concat()).unwrap();
    let sd_d = DeviceTensor::from_host(&g, &[hidden, shared_inter], &sd).unwrap();
    let weights = MoeBlockWeights {
        router: rd.view(),
        correction_bias: bd.view(),
        pools: pools
            .iter()
            .map(|p| {
                let (gate_up, down, scales) = p.weights();
                ExpertPoolWeights { gate_up, down, scales }
            })
            .collect(),
        shared_gate_up: Some(sgu_d.view()),
        shared_down: Some(sd_d.view()),
    };
    let mut scratch = MoeScratch::new(&g, &shape, 300).unwrap();
    let (sg64, su64, sd64) = (bf16_to_f64(&sg), bf16_to_f64(&su), bf16_to_f64(&sd));
    let r64: Vec<f64> = router.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = bias.iter().map(|&v| v as f64).collect();

    for tokens in [300, 7] {
        let x = rand_bf16(&mut r, tokens * hidden, 1.0);
        let token_pool: Vec<i32> = (0..tokens).map(|_| i32::from(r.random_range(0..4) == 0)).collect();
        let xd = DeviceTensor::from_host(&g, &[tokens, hidden], &x).unwrap();
        let pd = DeviceTensor::from_host(&g, &[tokens], &token_pool).unwrap();
        let mut out = DeviceTensor::alloc(&g, DType::BF16, &[tokens, hidden]).unwrap();
        out.view_mut().fill_bytes(&g, 0xFF).unwrap();
        moe_block(
            &g,
            &mut gemm,
            &mut out.view_mut(),
            &xd.view(),
            &pd.view(),
            &weights,
            &mut scratch,
        )
        .unwrap();
        let got = bf16_to_f64(&out.to_host::<bf16>(&g).unwrap());

        let x64 = bf16_to_f64(&x);
        let (logits, _) = ref_moe::router_logits(&x64, &r64, tokens, hidden, 2 * experts);
        let (mut gs, mut ws, mut skipped) = (vec![], vec![], 0);
        for t in 0..tokens {
            let row = &logits[t * 2 * experts..(t + 1) * 2 * experts];
            let xr = &x64[t * hidden..(t + 1) * hidden];
            let Some(routed) = routed_reference(&pools, experts, top_k, row, &b64, token_pool[t] as usize, xr) else {
                skipped += 1;
                continue;
            };
            // Shared: gate and up rounded by the GEMM, silu(g)·u rounded once (silu_mul), the
            // down GEMM rounded.
            let act: Vec<f64> = (0..shared_inter)
                .map(|c| {
                    let gv = round_bf16((0..hidden).map(|i| xr[i] * sg64[c * hidden + i]).sum());
                    let uv = round_bf16((0..hidden).map(|i| xr[i] * su64[c * hidden + i]).sum());
                    round_bf16(gv / (1.0 + (-gv).exp()) * uv)
                })
                .collect();
            let shared = ref_moe::matvec(&act, &sd64, hidden, shared_inter);
            let acc: Vec<f64> = routed.iter().zip(shared).map(|(r, s)| r + round_bf16(s)).collect();
            gs.extend_from_slice(&got[t * hidden..(t + 1) * hidden]);
            ws.extend(acc);
        }
        assert!(skipped <= 2, "{tokens} tokens: {skipped} routed within 1e-6 of a tie");
        assert_close(
            &format!("moe block, {tokens} tokens"),
            &gs,
            &ws,
            2e-2 * rms(&ws),
            2.0 * BF16_RTOL,
        );
    }
}
