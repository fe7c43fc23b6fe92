//! The norm kernels in GB/s against the measured copy rate. Bytes are the minimum each op must
//! move: rows read once and written once (plain: x in, out; fused: x and residual in, residual
//! and out), plus weight (and bias). Prefill shapes rotate over enough buffer sets that one
//! pass over all of them is about 3x the 50 MB L2, so they are HBM numbers; the decode shape
//! (256 x 1024, 1 MB) is timed warm in L2, which is where the norm finds its input after the
//! GEMM that wrote it.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use ocrvl::kernels::norm::{layernorm, layernorm_add, rmsnorm, rmsnorm_add};
use ocrvl::runtime::{DeviceTensor, Gpu};

#[derive(Clone, Copy)]
enum Op {
    Rms,
    RmsAdd,
    Ln,
    LnAdd,
}

/// One set of operands; the fused ops update `res` in place on every run (its values grow by
/// x per run, harmlessly for timing).
struct Set {
    x: DeviceTensor,
    out: DeviceTensor,
    res: DeviceTensor,
}

fn pattern(n: usize, salt: u32) -> Vec<bf16> {
    // Non-zero, varied data: zeros can time faster than real data.
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ salt).wrapping_mul(2654435761);
            bf16::from_f32((h % 2001) as f32 / 1000.0 - 1.0 + 0.25)
        })
        .collect()
}

fn run(gpu: &Gpu, op: Op, s: &mut Set, w: &DeviceTensor, b: &DeviceTensor) {
    let (x, mut out, mut res) = (s.x.view(), s.out.view_mut(), s.res.view_mut());
    match op {
        Op::Rms => rmsnorm(gpu, &mut out, &x, &w.view(), 1e-5),
        Op::RmsAdd => rmsnorm_add(gpu, &mut out, &x, &mut res, &w.view(), 1e-5),
        Op::Ln => layernorm(gpu, &mut out, &x, &w.view(), &b.view(), 1e-6),
        Op::LnAdd => layernorm_add(gpu, &mut out, &x, &mut res, &w.view(), &b.view(), 1e-6),
    }
    .unwrap();
}

fn norm_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("norm");
    for (name, op, tokens, hidden, hbm) in [
        ("rmsnorm_16384x1024", Op::Rms, 16384usize, 1024usize, true),
        ("rmsnorm_add_16384x1024", Op::RmsAdd, 16384, 1024, true),
        ("layernorm_5040x1152", Op::Ln, 5040, 1152, true),
        ("layernorm_add_5040x1152", Op::LnAdd, 5040, 1152, true),
        ("rmsnorm_256x1024_warm_l2", Op::Rms, 256, 1024, false),
        ("rmsnorm_add_256x1024_warm_l2", Op::RmsAdd, 256, 1024, false),
    ] {
        let row_bytes = tokens * hidden * 2;
        let (row_passes, vectors) = match op {
            Op::Rms => (2, 1),
            Op::RmsAdd => (4, 1),
            Op::Ln => (2, 2),
            Op::LnAdd => (4, 2),
        };
        let bytes = row_passes * row_bytes + vectors * hidden * 2;
        let sets_n = if hbm { (150usize << 20).div_ceil(bytes) } else { 1 };
        let x_host = pattern(tokens * hidden, 1);
        let res_host = pattern(tokens * hidden, 2);
        let mut sets: Vec<Set> = (0..sets_n)
            .map(|_| Set {
                x: DeviceTensor::from_host(&gpu, &[tokens, hidden], &x_host).unwrap(),
                out: DeviceTensor::from_host(&gpu, &[tokens, hidden], &x_host).unwrap(),
                res: DeviceTensor::from_host(&gpu, &[tokens, hidden], &res_host).unwrap(),
            })
            .collect();
        let w = DeviceTensor::from_host(&gpu, &[hidden], &pattern(hidden, 3)).unwrap();
        let b = DeviceTensor::from_host(&gpu, &[hidden], &pattern(hidden, 4)).unwrap();
        group.throughput(Throughput::Bytes(bytes as u64));
        let mut k = 0usize;
        let mut step = || {
            run(&gpu, op, &mut sets[k % sets_n], &w, &b);
            k += 1;
        };
        let ms = common::mean_ms(&gpu, 3 * sets_n, 60 * sets_n, &mut step);
        common::report_gbps(name, bytes, ms);
        group.bench_function(name, |bch| {
            bch.iter_custom(|iters| common::time_gpu(&gpu, iters, &mut step))
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = norm_benches }
criterion_main!(benches);
