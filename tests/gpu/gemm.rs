//! The cuBLASLt wrapper against an f64 reference: shapes of the model (decode M=1 and 256, the
//! vision MLP at 5040 patches) and odd neighbours; bias and GELU epilogues; accumulate; f32
//! output; strided views.

use half::bf16;
use ocrvl::runtime::{DType, DeviceTensor, Epilogue, Gemm, Gpu, TensorView};

use crate::common::reference::{gelu_tanh, matmul_xwt};
use crate::common::tol::{assert_close_scaled, rms, BF16_RTOL, F32_RTOL};
use crate::common::{bf16_to_f64, gpu, rand_bf16, rng};

struct Case {
    m: usize,
    n: usize,
    k: usize,
    epilogue: Epilogue,
    out: DType,
    accumulate: bool,
}

/// Rows whose values are checked: all for small M, else a spread sample including the first
/// and last row. Every row is still checked for being written (no NaN).
fn sample_rows(m: usize) -> Vec<usize> {
    if m <= 512 {
        (0..m).collect()
    } else {
        let mut rows: Vec<usize> = (0..96).map(|i| i * (m - 1) / 95).collect();
        rows.dedup();
        rows
    }
}

fn download_f64(g: &Gpu, t: &DeviceTensor) -> Vec<f64> {
    match t.dtype() {
        DType::BF16 => bf16_to_f64(&t.to_host::<bf16>(g).unwrap()),
        _ => t.to_host::<f32>(g).unwrap().iter().map(|&v| v as f64).collect(),
    }
}

fn run_case(g: &Gpu, gemm: &mut Gemm, c: &Case, seed: u64) {
    let what = format!(
        "gemm M={} N={} K={} {:?} out={} acc={}",
        c.m, c.n, c.k, c.epilogue, c.out, c.accumulate
    );
    let mut r = rng(seed);
    // Scales keep |out| around 1, so bf16 rounding is relative to values of order 1.
    let xs = 1.0 / (c.k as f32).sqrt().sqrt();
    let x = rand_bf16(&mut r, c.m * c.k, xs * 1.7);
    let w = rand_bf16(&mut r, c.n * c.k, xs * 1.7);
    let bias = rand_bf16(&mut r, c.n, 0.5);
    let init = rand_bf16(&mut r, c.m * c.n, 1.0);

    let dx = DeviceTensor::from_host(g, &[c.m, c.k], &x).unwrap();
    let dw = DeviceTensor::from_host(g, &[c.n, c.k], &w).unwrap();
    let dbias = match c.out {
        DType::F32 => {
            DeviceTensor::from_host(g, &[c.n], &bias.iter().map(|b| b.to_f32()).collect::<Vec<f32>>()).unwrap()
        }
        _ => DeviceTensor::from_host(g, &[c.n], &bias).unwrap(),
    };
    let mut out = match (c.accumulate, c.out) {
        (true, DType::F32) => {
            DeviceTensor::from_host(g, &[c.m, c.n], &init.iter().map(|b| b.to_f32()).collect::<Vec<f32>>()).unwrap()
        }
        (true, _) => DeviceTensor::from_host(g, &[c.m, c.n], &init).unwrap(),
        (false, dt) => {
            let mut t = DeviceTensor::alloc(g, dt, &[c.m, c.n]).unwrap();
            t.view_mut().fill_bytes(g, 0xFF).unwrap();
            t
        }
    };
    let bias_view = (c.epilogue != Epilogue::None).then(|| dbias.view());
    gemm.matmul(
        g,
        &mut out.view_mut(),
        &dx.view(),
        &dw.view(),
        bias_view.as_ref(),
        c.epilogue,
        c.accumulate,
    )
    .unwrap();
    let got = download_f64(g, &out);
    assert!(
        got.iter().all(|v| !v.is_nan()),
        "{what}: an output element was left unwritten (NaN)"
    );

    let rows = sample_rows(c.m);
    let bias64 = bf16_to_f64(&bias);
    let with_bias = c.epilogue != Epilogue::None;
    let want_rows = matmul_xwt(&bf16_to_f64(&x), &bf16_to_f64(&w), None, c.k, c.n, &rows);
    let mut want = Vec::new();
    let mut got_s = Vec::new();
    // The magnitude each element's rounding scales with: cuBLASLt may round the product to the
    // output type before it adds the bias and again before it adds the old output (seen on the
    // H100: 1.4 ulp of the result at M=83 N=769 K=1153), so the error follows
    // |product| + |bias| + |old|, not |result|.
    let mut scale = Vec::new();
    for (ri, &m) in rows.iter().enumerate() {
        for j in 0..c.n {
            let ab = want_rows[ri][j];
            let b = if with_bias { bias64[j] } else { 0.0 };
            let mut v = ab + b;
            if c.epilogue == Epilogue::GeluTanhBias {
                v = gelu_tanh(v);
            }
            let mut s = v.abs().max(ab.abs() + b.abs());
            if c.accumulate {
                let old = init[m * c.n + j].to_f64();
                v += old;
                s += old.abs();
            }
            want.push(v);
            scale.push(s);
            got_s.push(got[m * c.n + j]);
        }
    }
    let (atol, rtol) = match c.out {
        DType::F32 => (1e-5 * rms(&want), F32_RTOL),
        _ => (1e-3 * rms(&want), BF16_RTOL),
    };
    assert_close_scaled(&what, &got_s, &want, &scale, atol, rtol);
}

#[test]
#[ignore = "needs GPU"]
fn gemm_matches_f64_reference_at_model_and_odd_shapes() {
    let g = gpu();
    let mut gemm = Gemm::new(&g).unwrap();
    use DType::*;
    use Epilogue::*;
    let cases = [
        // Decode: one token through q_proj, and a full batch through gate/up.
        Case {
            m: 1,
            n: 2048,
            k: 1024,
            epilogue: None,
            out: BF16,
            accumulate: false,
        },
        Case {
            m: 256,
            n: 3072,
            k: 1024,
            epilogue: None,
            out: BF16,
            accumulate: false,
        },
        // o_proj adding into the residual stream.
        Case {
            m: 256,
            n: 1024,
            k: 2048,
            epilogue: None,
            out: BF16,
            accumulate: true,
        },
        // lm_head logits in f32.
        Case {
            m: 7,
            n: 103424,
            k: 1024,
            epilogue: None,
            out: F32,
            accumulate: false,
        },
        // Vision MLP at 5040 patches: fc1 with the fused GELU, fc2 with bias.
        Case {
            m: 5040,
            n: 4304,
            k: 1152,
            epilogue: GeluTanhBias,
            out: BF16,
            accumulate: false,
        },
        Case {
            m: 5040,
            n: 1152,
            k: 4304,
            epilogue: Bias,
            out: BF16,
            accumulate: false,
        },
        // Odd neighbours: nothing a multiple of 8.
        Case {
            m: 83,
            n: 769,
            k: 1153,
            epilogue: Bias,
            out: BF16,
            accumulate: false,
        },
        Case {
            m: 1,
            n: 5,
            k: 7,
            epilogue: Bias,
            out: F32,
            accumulate: true,
        },
        Case {
            m: 17,
            n: 1152,
            k: 1152,
            epilogue: Bias,
            out: F32,
            accumulate: false,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        run_case(&g, &mut gemm, c, 1000 + i as u64);
    }
}

#[test]
#[ignore = "needs GPU"]
fn gemm_on_strided_views_equals_dense() {
    // A fused qkv output [M, 2048+256+256]: multiply its k columns (a strided view) by a
    // weight, into a column slice of a wider output, and compare with the dense product.
    let g = gpu();
    let mut gemm = Gemm::new(&g).unwrap();
    let mut r = rng(77);
    let (m, wide, k, n) = (37usize, 2560usize, 256usize, 512usize);
    let qkv = rand_bf16(&mut r, m * wide, 0.3);
    let w = rand_bf16(&mut r, n * k, 0.3);
    let dqkv = DeviceTensor::from_host(&g, &[m, wide], &qkv).unwrap();
    let dw = DeviceTensor::from_host(&g, &[n, k], &w).unwrap();
    let kcols: TensorView = dqkv.view().columns(2048, k).unwrap();

    let dense_x: Vec<bf16> = (0..m)
        .flat_map(|i| qkv[i * wide + 2048..i * wide + 2048 + k].to_vec())
        .collect();
    let ddense = DeviceTensor::from_host(&g, &[m, k], &dense_x).unwrap();
    let mut want = DeviceTensor::zeros(&g, DType::BF16, &[m, n]).unwrap();
    gemm.matmul(
        &g,
        &mut want.view_mut(),
        &ddense.view(),
        &dw.view(),
        None,
        Epilogue::None,
        false,
    )
    .unwrap();

    let mut wide_out = DeviceTensor::alloc(&g, DType::BF16, &[m, 3 * n]).unwrap();
    wide_out.view_mut().fill_bytes(&g, 0xFF).unwrap();
    gemm.matmul(
        &g,
        &mut wide_out.view_mut().columns(n, n).unwrap(),
        &kcols,
        &dw.view(),
        None,
        Epilogue::None,
        false,
    )
    .unwrap();
    let got = wide_out.to_host::<bf16>(&g).unwrap();
    let want = want.to_host::<bf16>(&g).unwrap();
    for i in 0..m {
        for j in 0..3 * n {
            let v = got[i * 3 * n + j];
            if (n..2 * n).contains(&j) {
                assert_eq!(v.to_bits(), want[i * n + j - n].to_bits(), "row {i} col {j}");
            } else {
                assert!(v.is_nan(), "row {i} col {j}: written outside the column slice");
            }
        }
    }
}

#[test]
#[ignore = "needs GPU"]
fn gemm_rejects_mismatched_shapes() {
    let g = gpu();
    let mut gemm = Gemm::new(&g).unwrap();
    let x = DeviceTensor::zeros(&g, DType::BF16, &[4, 64]).unwrap();
    let w = DeviceTensor::zeros(&g, DType::BF16, &[32, 63]).unwrap();
    let mut out = DeviceTensor::zeros(&g, DType::BF16, &[4, 32]).unwrap();
    let err = gemm
        .matmul(
            &g,
            &mut out.view_mut(),
            &x.view(),
            &w.view(),
            None,
            Epilogue::None,
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not give out"), "{err}");
    let w = DeviceTensor::zeros(&g, DType::BF16, &[32, 64]).unwrap();
    let err = gemm
        .matmul(
            &g,
            &mut out.view_mut(),
            &x.view(),
            &w.view(),
            None,
            Epilogue::Bias,
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("needs a bias"), "{err}");
}

#[test]
#[ignore = "needs GPU"]
fn autotuned_plans_match_f64_reference() {
    // With autotuning on, the first call of each shape times the heuristic's candidates and
    // keeps the fastest; whatever it picks must still be right (and accumulate calls, which
    // are never tuned because the timing runs would add into `out`, too).
    let g = gpu();
    let mut gemm = Gemm::new(&g).unwrap();
    gemm.set_autotune(512);
    let decode = |m, n, k, accumulate| Case {
        m,
        n,
        k,
        epilogue: Epilogue::None,
        out: DType::BF16,
        accumulate,
    };
    let cases = [
        decode(256, 2560, 1024, false),
        decode(256, 1024, 2048, false),
        decode(256, 6144, 1024, false),
        decode(256, 1024, 3072, true),
        decode(24, 2560, 1024, false),
        decode(1, 1024, 3072, false),
        Case {
            m: 256,
            n: 103424,
            k: 1024,
            epilogue: Epilogue::None,
            out: DType::F32,
            accumulate: false,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        // Twice: the first call tunes, the second runs the chosen algorithm.
        run_case(&g, &mut gemm, c, 2000 + i as u64);
        run_case(&g, &mut gemm, c, 2100 + i as u64);
    }
}
