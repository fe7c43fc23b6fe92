//! The embedding family, in GB/s (bytes read + written, each counted once) against the
//! measured copy rate: the token-embedding gather at a 16k-token prefill and a 256-sequence
//! decode step, the scatter of one page's image features, and the position embedding of a
//! 5040-patch page.

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use ocrvl::kernels::embedding::{embedding_gather, pos_embed_resample_add, scatter_rows};
use ocrvl::runtime::{DType, DeviceTensor, Gpu};

const VOCAB: usize = 103424;
const HIDDEN: usize = 1024;

/// Pseudo-random ids in [0, n) (a multiplicative hash: no RNG needed for timing).
fn ids(gpu: &Gpu, len: usize, n: usize, salt: u32) -> DeviceTensor {
    let v: Vec<i32> = (0..len)
        .map(|i| (((i as u32 ^ salt).wrapping_mul(2654435761) >> 7) as usize % n) as i32)
        .collect();
    DeviceTensor::from_host(gpu, &[len], &v).unwrap()
}

fn embedding_benches(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("embedding");
    let table = common::filled(&gpu, &[VOCAB, HIDDEN], 1);
    let mut err = DeviceTensor::zeros(&gpu, DType::I32, &[1]).unwrap();

    // Gather: each output row read once from the table and written once, plus the ids.
    for (name, tokens) in [
        ("embedding_gather_16384x1024", 16384usize),
        ("embedding_gather_256x1024", 256),
    ] {
        let bytes = tokens * HIDDEN * 2 * 2 + tokens * 4;
        let sets = common::sets_for(bytes);
        let id_sets: Vec<DeviceTensor> = (0..sets).map(|k| ids(&gpu, tokens, VOCAB, k as u32)).collect();
        let mut outs: Vec<DeviceTensor> = (0..sets)
            .map(|k| common::filled(&gpu, &[tokens, HIDDEN], k as u32))
            .collect();
        common::bench_rotating(&mut group, &gpu, name, bytes, sets, |k| {
            embedding_gather(
                &gpu,
                &mut outs[k].view_mut(),
                &table.view(),
                &id_sets[k].view(),
                &mut err.view_mut(),
            )
            .unwrap()
        });
    }

    // Scatter: the 1280 features of a maximal image into a 5040-token prompt.
    {
        let (tokens, n) = (5040usize, 1280usize);
        let bytes = n * HIDDEN * 2 * 2 + n * 4;
        let sets = common::sets_for(bytes);
        let rows: Vec<i32> = (20..20 + n as i32).collect();
        let d_rows = DeviceTensor::from_host(&gpu, &[n], &rows).unwrap();
        let srcs: Vec<DeviceTensor> = (0..sets)
            .map(|k| common::filled(&gpu, &[n, HIDDEN], k as u32))
            .collect();
        let mut dsts: Vec<DeviceTensor> = (0..sets)
            .map(|k| common::filled(&gpu, &[tokens, HIDDEN], k as u32))
            .collect();
        common::bench_rotating(&mut group, &gpu, "scatter_rows_1280_into_5040x1024", bytes, sets, |k| {
            scatter_rows(&gpu, &mut dsts[k].view_mut(), &srcs[k].view(), &d_rows.view()).unwrap()
        });
    }

    // Position embedding of one 72x70-patch page (5040 patches, dim 1152): x read and written
    // once, the 27x27 table (1.7 MB, L2-resident) counted once.
    {
        let (h, w, dim, side) = (72usize, 70usize, 1152usize, 27usize);
        let total = h * w;
        let bytes = total * dim * 2 * 2 + side * side * dim * 2;
        let sets = common::sets_for(bytes);
        let pos_table = common::filled(&gpu, &[side * side, dim], 7);
        let cu = DeviceTensor::from_host(&gpu, &[2], &[0i32, total as i32]).unwrap();
        let hw = DeviceTensor::from_host(&gpu, &[1, 2], &[h as i32, w as i32]).unwrap();
        let mut xs: Vec<DeviceTensor> = (0..sets)
            .map(|k| common::filled(&gpu, &[total, dim], k as u32))
            .collect();
        common::bench_rotating(&mut group, &gpu, "pos_embed_resample_add_5040x1152", bytes, sets, |k| {
            pos_embed_resample_add(
                &gpu,
                &mut xs[k].view_mut(),
                &pos_table.view(),
                side,
                &cu.view(),
                &hw.view(),
            )
            .unwrap()
        });
    }
    group.finish();
}

criterion_group! { name = benches; config = common::criterion(); targets = embedding_benches }
criterion_main!(benches);
