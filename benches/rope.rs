//! The rope kernels, in GB/s against the measured copy rate. Bytes counted: q and k read once and
//! written once (positions are under 1% of that and not counted). q and k are column views of a
//! fused qkv buffer, as in the model.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;
use ocrvl::kernels::kv_cache::write_kv;
use ocrvl::kernels::rope::{
    mrope, mrope_and_cache, mrope_interleaved, mrope_interleaved_and_cache, vision_rope, CacheWrite,
};
use ocrvl::runtime::{DType, DeviceTensor, Gpu, TensorViewMut};

#[derive(Clone, Copy)]
enum Kind {
    /// 16 q heads, 2 kv heads of 128 (fused width 2560), M-RoPE theta 5e5, sections [16, 24, 24].
    Text,
    /// 16 + 16 heads of 72 (fused width 3456), theta 1e4.
    Vision,
}

/// q and k column views of one fused [tokens, width] buffer.
fn qk_views(t: &mut DeviceTensor, q: (usize, usize), k: (usize, usize)) -> (TensorViewMut<'_>, TensorViewMut<'_>) {
    let whole = t.view_mut();
    let (ptr, dims, stride) = (whole.device_ptr(), whole.dims().to_vec(), whole.stride0());
    // SAFETY: both views lie inside `t`, which stays mutably borrowed while they live, and the
    // callers pass disjoint column ranges.
    let (a, b) = unsafe {
        (
            TensorViewMut::from_raw(ptr, DType::BF16, &dims, stride).unwrap(),
            TensorViewMut::from_raw(ptr, DType::BF16, &dims, stride).unwrap(),
        )
    };
    (a.columns(q.0, q.1).unwrap(), b.columns(k.0, k.1).unwrap())
}

/// Deterministic non-zero values in [-1, 1]: zeros could hide unwritten outputs and time
/// faster than real data.
fn values(n: usize) -> Vec<bf16> {
    (0..n)
        .map(|i| bf16::from_f32(((i as u32).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0))
        .collect()
}

fn rope_benches(c: &mut Criterion) {
    let gpu: Gpu = common::gpu();
    let mut group = c.benchmark_group("rope");
    // (name, kind, tokens, buffers): the 16k-token prefill moves 151 MB and the vision tower's
    // 5040 patches 46 MB, so the vision case rotates over 4 buffers to keep the 50 MB L2 from
    // serving it; the 256-token decode step (2.4 MB) is launch-bound and measured L2-warm.
    for (name, kind, tokens, copies) in [
        ("mrope_prefill_16384", Kind::Text, 16384usize, 1usize),
        ("mrope_decode_256", Kind::Text, 256, 1),
        ("vision_rope_5040", Kind::Vision, 5040, 4),
    ] {
        let (qw, kw, width) = match kind {
            Kind::Text => (2048, 256, 2560),
            Kind::Vision => (1152, 1152, 3456),
        };
        let mut bufs: Vec<DeviceTensor> = (0..copies)
            .map(|_| DeviceTensor::from_host(&gpu, &[tokens, width], &values(tokens * width)).unwrap())
            .collect();
        let pos: Vec<i32> = (0..3 * tokens)
            .map(|i| ((i as u32).wrapping_mul(40503) % 16384) as i32)
            .collect();
        let pos = DeviceTensor::from_host(&gpu, &[3, tokens], &pos).unwrap();
        let rc: Vec<i32> = (0..tokens).map(|i| (i % 97) as i32).collect();
        let rows = DeviceTensor::from_host(&gpu, &[tokens], &rc).unwrap();
        let cols = DeviceTensor::from_host(&gpu, &[tokens], &rc).unwrap();

        let bytes = tokens * (qw + kw) * 2 * 2;
        let mut i = 0usize;
        let run = || {
            let (mut q, mut k) = qk_views(&mut bufs[i % copies], (0, qw), (qw, kw));
            i += 1;
            match kind {
                Kind::Text => mrope(&gpu, &mut q, &mut k, &pos.view(), 128, [16, 24, 24], 500000.0).unwrap(),
                Kind::Vision => vision_rope(&gpu, &mut q, &mut k, &rows.view(), &cols.view(), 72, 10000.0).unwrap(),
            }
        };
        common::bench_gbps(&mut group, &gpu, name, bytes, 50, run);
    }
    group.finish();
}

/// A decoder layer's rope and cache write at decode batches: the two launches (rope, then
/// write_kv) against the one launch that does both (`*_and_cache`). Printed as us per layer.
fn rope_cache_benches(_c: &mut Criterion) {
    let gpu: Gpu = common::gpu();
    // (name, q heads, kv heads, interleaved, tokens): PaddleOCR-VL at batch 256, ERNIE at 128.
    for (name, qh, kvh, interleaved, tokens) in [
        ("paddle_decode_256", 16usize, 2usize, false, 256usize),
        ("ernie_decode_128", 20, 4, true, 128),
    ] {
        let hd = 128;
        let (qw, kw) = (qh * hd, kvh * hd);
        let mut buf = DeviceTensor::from_host(&gpu, &[tokens, qw + 2 * kw], &values(tokens * (qw + 2 * kw))).unwrap();
        let pos: Vec<i32> = (0..3 * tokens)
            .map(|i| ((i as u32).wrapping_mul(40503) % 16384) as i32)
            .collect();
        let pos = DeviceTensor::from_host(&gpu, &[3, tokens], &pos).unwrap();
        // Each sequence's next slot in its own 64-token block, as in a decode step.
        let slots: Vec<i32> = (0..tokens as i32).map(|t| t * 64 + 17).collect();
        let slots = DeviceTensor::from_host(&gpu, &[tokens], &slots).unwrap();
        let mut kc = DeviceTensor::zeros(&gpu, DType::BF16, &[tokens, kvh, 64, hd]).unwrap();
        let mut vc = DeviceTensor::zeros(&gpu, DType::BF16, &[tokens, kvh, 64, hd]).unwrap();
        for fused in [false, true] {
            let ms = common::mean_ms(&gpu, 20, 200, || {
                let mut view = buf.view_mut();
                let [mut q, mut k, v] = view.reborrow().split_columns([qw, kw, kw]).unwrap();
                let v = v.as_view();
                let p = pos.view();
                if fused {
                    let cache = CacheWrite {
                        k_cache: &mut kc.view_mut(),
                        v_cache: &mut vc.view_mut(),
                        v: &v,
                        slot_mapping: &slots.view(),
                    };
                    if interleaved {
                        mrope_interleaved_and_cache(&gpu, &mut q, &mut k, &p, hd, 44, 500000.0, cache).unwrap();
                    } else {
                        mrope_and_cache(&gpu, &mut q, &mut k, &p, hd, [16, 24, 24], 500000.0, cache).unwrap();
                    }
                } else {
                    if interleaved {
                        mrope_interleaved(&gpu, &mut q, &mut k, &p, hd, 44, 500000.0).unwrap();
                    } else {
                        mrope(&gpu, &mut q, &mut k, &p, hd, [16, 24, 24], 500000.0).unwrap();
                    }
                    write_kv(
                        &gpu,
                        &mut kc.view_mut(),
                        &mut vc.view_mut(),
                        &k.as_view(),
                        &v,
                        &slots.view(),
                    )
                    .unwrap();
                }
            });
            let how = if fused { "one launch" } else { "rope + write_kv" };
            println!("rope_cache {name} ({how}): {:.2} us per layer", ms * 1e3);
        }
    }
}

criterion_group! { name = benches; config = common::criterion(); targets = rope_benches, rope_cache_benches }
criterion_main!(benches);
