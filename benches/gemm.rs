//! cuBLASLt GEMM at the model's shapes, reported in TFLOP/s against the measured bf16 rate.
//! `cargo bench --bench gemm` on a GPU machine.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use ocrvl::runtime::gemm::AUTOTUNE_CANDIDATES;
use ocrvl::runtime::{DType, DeviceTensor, Epilogue, Gemm, Gpu, GpuTimer};

/// `out = x · wᵀ` with no bias or epilogue, through `gemm`'s algorithm choice.
fn plain_matmul(
    gemm: &mut Gemm,
    gpu: &Gpu,
    out: &mut DeviceTensor,
    x: &DeviceTensor,
    w: &DeviceTensor,
) -> ocrvl::Result<()> {
    gemm.matmul(
        gpu,
        &mut out.view_mut(),
        &x.view(),
        &w.view(),
        None,
        Epilogue::None,
        false,
    )
}

fn gemm_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut gemm = Gemm::new(&gpu).unwrap();
    // (name, M, N, K): decode at batch 256, a 2k-token prefill chunk, the vision tower at
    // 5040 patches, lm_head over a decode batch.
    let shapes = [
        ("text_qkv_b256", 256, 2560, 1024),
        ("text_gate_up_b256", 256, 6144, 1024),
        ("text_down_b256", 256, 1024, 3072),
        ("text_o_b256", 256, 1024, 2048),
        ("lm_head_b256", 256, 103424, 1024),
        ("text_qkv_b64", 64, 2560, 1024),
        ("text_down_b64", 64, 1024, 3072),
        ("ernie_qkv_b128", 128, 3584, 2560),
        ("ernie_o_b128", 128, 2560, 2560),
        ("text_gate_up_prefill2048", 2048, 6144, 1024),
        ("vision_qkv_5040", 5040, 3456, 1152),
        ("vision_fc1_5040", 5040, 4304, 1152),
        ("vision_fc2_5040", 5040, 1152, 4304),
        ("square_8192", 8192, 8192, 8192),
    ];
    let mut group = c.benchmark_group("gemm");
    for (name, m, n, k) in shapes {
        let fill = |len: usize, seed: u32| -> Vec<bf16> {
            (0..len)
                .map(|i| bf16::from_f32((((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0))
                .collect()
        };
        let x = DeviceTensor::from_host(&gpu, &[m, k], &fill(m * k, 1)).unwrap();
        let w = DeviceTensor::from_host(&gpu, &[n, k], &fill(n * k, 2)).unwrap();
        let out_dtype = if name.starts_with("lm_head") {
            DType::F32
        } else {
            DType::BF16
        };
        let mut out = DeviceTensor::alloc(&gpu, out_dtype, &[m, n]).unwrap();
        let flops = 2.0 * (m * n * k) as f64;
        group.throughput(Throughput::Elements(flops as u64));
        let mut run = || plain_matmul(&mut gemm, &gpu, &mut out, &x, &w).unwrap();
        run();
        let ms = common::mean_ms(&gpu, 3, 20, &mut run);
        common::report_tflops(&format!("gemm {name}: M={m} N={n} K={k}"), flops, ms, "measured");
        group.bench_function(name, |b| b.iter_custom(|iters| common::time_gpu(&gpu, iters, &mut run)));
        if m <= 512 {
            // The engine times the heuristic's first 8 candidates for decode shapes
            // (Gemm::set_autotune); the `_autotuned32` row asks the heuristic for 32 (split-k
            // and stream-k algorithms rank lower in its list).
            for (candidates, suffix) in [(AUTOTUNE_CANDIDATES, ""), (32, "32")] {
                let mut tuned = Gemm::new(&gpu).unwrap();
                tuned.set_autotune(512);
                tuned.set_autotune_candidates(candidates);
                let ms =
                    GpuTimer::time_mean_ms(&gpu, 3, 20, || plain_matmul(&mut tuned, &gpu, &mut out, &x, &w)).unwrap();
                let label = format!("gemm {name}_autotuned{suffix}: M={m} N={n} K={k}");
                common::report_tflops(&label, flops, ms, "measured");
            }
        }
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = gemm_benches }
criterion_main!(benches);
