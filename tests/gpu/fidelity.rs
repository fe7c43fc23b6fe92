//! ocrvl's GPU forward against transformers on the committed tiny-model fixture
//! (tests/fixtures/tiny_model, made by tools/make_model_fixture.py): the prompt prefilled in
//! one step, then 20 decode steps teacher-forced with transformers' greedy tokens; every step's
//! logits compared, and ocrvl's own greedy choice checked against transformers' wherever the
//! oracle's top-2 margin is clearly above the bf16 noise.

use half::bf16;
use safetensors::SafeTensors;

use ocrvl::config::ModelConfig;
use ocrvl::model::gpu_weights::ModelWeights;
use ocrvl::model::step::{HostStep, SeqChunk};
use ocrvl::model::text::{self, KvCache};
use ocrvl::model::vision::{self, VisionBatch, VisionBatchHost};
use ocrvl::model::weights::Checkpoint;
use ocrvl::runtime::{DType, DeviceTensor, Gemm, Workspace};

use crate::common::gpu;

fn read_f64(st: &SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("fixture tensor {name}: dtype {other:?}"),
    }
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap()
}

#[test]
#[ignore = "needs GPU"]
fn gpu_forward_matches_transformers_on_the_fixture() {
    let g = gpu();
    let dir = crate::common::repo_dir().join("tests/fixtures/tiny_model");
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let weights = ModelWeights::upload(&g, &cfg, &ckpt.validate(&cfg).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let prompt_len: usize = header.metadata().as_ref().unwrap()["prompt_len"].parse().unwrap();
    let ids: Vec<u32> = read_f64(&st, "input_ids").iter().map(|&v| v as u32).collect();
    let grid = read_f64(&st, "image_grid_thw");
    let grids: Vec<(usize, usize)> = grid.chunks(3).map(|g| (g[1] as usize, g[2] as usize)).collect();
    let pos = read_f64(&st, "position_ids");
    let want = read_f64(&st, "logits");
    let margins = read_f64(&st, "greedy_margins");
    let vocab = cfg.text.vocab_size;
    let total = ids.len();

    let mut gemm = Gemm::new(&g).unwrap();
    let mut ws = Workspace::new(&g, 64 << 20).unwrap();
    let pixels: Vec<bf16> = read_f64(&st, "pixel_values")
        .iter()
        .map(|&v| bf16::from_f64(v))
        .collect();
    let batch = VisionBatch::upload(&g, VisionBatchHost::new(&grids).unwrap()).unwrap();
    let p = batch.host.num_patches();
    let dpix = DeviceTensor::from_host(&g, &[p, cfg.vision.patch_dim()], &pixels).unwrap();
    let mut img = DeviceTensor::alloc(&g, DType::BF16, &[p / 4, cfg.text.hidden_size]).unwrap();
    vision::encode(
        &g,
        &mut gemm,
        &ws,
        &cfg,
        &weights,
        &batch,
        &dpix.view(),
        &mut img.view_mut(),
    )
    .unwrap();

    let block_size = 16;
    let blocks = total.div_ceil(block_size);
    let mut cache = KvCache::new(&g, &cfg, blocks, block_size).unwrap();
    let table: Vec<i32> = (0..blocks as i32).rev().collect();
    let mut err = DeviceTensor::zeros(&g, DType::I32, &[1]).unwrap();
    let positions = |a: usize, b: usize| [0, 1, 2].map(|ax| (a..b).map(|t| pos[ax * total + t] as i32).collect());

    let mut max_err = 0.0f64;
    let mut got_rows: Vec<Vec<f32>> = Vec::new();
    let mut spans = vec![(0usize, prompt_len)];
    spans.extend((prompt_len..total - 1).map(|t| (t, t + 1)));
    for &(a, b) in &spans {
        ws.reset();
        let slots: Vec<usize> = (a..b)
            .filter(|&t| ids[t] == cfg.tokens.image_token_id)
            .map(|t| t - a)
            .collect();
        let chunk = SeqChunk {
            ids: ids[a..b].to_vec(),
            positions: positions(a, b),
            start: a,
            block_table: table.clone(),
            is_decode: a >= prompt_len,
            wants_logits: true,
            image_slots: slots.clone(),
        };
        let mut host = HostStep::build(&[chunk], block_size).unwrap();
        // Every row's logits in the prefill, to compare all prompt positions.
        host.logits_rows = (0..(b - a) as i32).collect();
        let dstep = host.upload(&g).unwrap();
        let feats = (!slots.is_empty()).then(|| img.view());
        let inputs = dstep.inputs(feats).unwrap();
        let mut logits = DeviceTensor::alloc(&g, DType::F32, &[b - a, vocab]).unwrap();
        text::forward(
            &g,
            &mut gemm,
            &ws,
            &cfg,
            &weights,
            &mut cache,
            &inputs,
            &mut err.view_mut(),
            &mut logits.view_mut(),
        )
        .unwrap();
        let got = logits.to_host::<f32>(&g).unwrap();
        for (r, row) in got.chunks(vocab).enumerate() {
            let t = a + r;
            let w = &want[t * vocab..(t + 1) * vocab];
            let e = row
                .iter()
                .zip(w)
                .map(|(x, y)| (*x as f64 - y).abs())
                .fold(0.0, f64::max);
            max_err = max_err.max(e);
            got_rows.push(row.to_vec());
        }
    }
    let range = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!(
        "fixture logits: max |diff| {max_err:.4} over {} positions, logit range {range:.3}",
        got_rows.len()
    );
    assert!(
        max_err <= 0.03 * range,
        "logits differ from transformers by {max_err} (range {range})"
    );

    // Greedy: where the oracle's margin is clearly above our error, our choice must equal its.
    let mut checked = 0;
    for (step, t) in (prompt_len..total).enumerate() {
        let ours = argmax(&got_rows[t - 1]);
        if margins[step] > 2.0 * max_err {
            assert_eq!(
                ours as u32, ids[t],
                "greedy step {step}: ours {ours}, transformers {} (margin {})",
                ids[t], margins[step]
            );
            checked += 1;
        }
    }
    eprintln!(
        "greedy tokens: {checked} of {} checked (the rest have margins under 2x the logit error)",
        total - prompt_len
    );
    assert!(
        checked * 2 >= total - prompt_len,
        "too few greedy steps have a usable margin: {checked}"
    );
    assert_eq!(
        err.to_host::<i32>(&g).unwrap()[0],
        0,
        "embedding reported an out-of-range id"
    );
}
