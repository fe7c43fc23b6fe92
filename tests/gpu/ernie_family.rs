//! ERNIE-4.5-VL end to end on the tiny random model (`ErnieVlConfig::tiny`, the hub's names and
//! layouts): `ErnieVl::load` from a synthetic sharded checkpoint, the vision tower and
//! resampler, and decoder steps over the paged cache. Not a fidelity test (transformers is the
//! oracle for that, on the GPU host: tools/gpu/ernie_oracle.py); these check what holds
//! whatever the weights:
//! - image features are finite, `[tokens, hidden]`, and each image's rows are the same bits
//!   alone as in a packed batch (attention never crosses images);
//! - a prompt with an image prefilled in one chunk and in two chunks (the split inside the
//!   image) gives the same last-token logits within bf16 rounding, and so do the decode steps
//!   after it: the paged cache, the 3D rope positions and the MoE pools agree across chunks;
//! - every logits element is written (the buffers start as NaN).

use std::path::Path;

use half::bf16;
use rand::Rng;

use ocrvl::config::ErnieVlConfig;
use ocrvl::kernels::attention::{AttentionKernels, AttentionVersion};
use ocrvl::model::ernie_vl::family::ErnieVl;
use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};
use ocrvl::model::family::ModelFamily;
use ocrvl::model::step::{HostStep, SeqChunk};
use ocrvl::preprocess::image::ImageGrid;
use ocrvl::runtime::{DType, DeviceTensor, Gemm, Gpu, Workspace};

use crate::attention::versions;
use crate::common::tol::{assert_close, rms};
use crate::common::{gpu, rand_bf16, rng};

fn load_tiny(g: &Gpu, dir: &Path) -> ErnieVl {
    load_tiny_with(g, dir, AttentionKernels::default())
}

fn load_tiny_with(g: &Gpu, dir: &Path, kernels: AttentionKernels) -> ErnieVl {
    let cfg = ErnieVlConfig::tiny();
    write_synthetic_model(dir, &cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    ErnieVl::load(g, dir, kernels).unwrap()
}

pub(crate) fn encode(
    g: &Gpu,
    m: &ErnieVl,
    gemm: &mut Gemm,
    ws: &Workspace,
    grids: &[ImageGrid],
    pixels: &[bf16],
) -> Vec<bf16> {
    let feats = m
        .encode_images(g, gemm, ws, grids, &mut |v| v.copy_from_host(g, pixels))
        .unwrap();
    let tokens: usize = grids.iter().map(|&gr| m.image_tokens(gr)).sum();
    assert_eq!(feats.dims(), &[tokens, m.feature_width()]);
    let host: Vec<bf16> = feats.to_host(g).unwrap();
    assert!(
        host.iter().all(|x| x.to_f32().is_finite()),
        "an image feature is not finite"
    );
    host
}

#[test]
#[ignore = "needs GPU"]
fn ernie_tiny_images_encode_alone_as_in_a_batch() {
    let g = gpu();
    let fa2 = images_encode_alone_as_in_a_batch(&g, AttentionVersion::Fa2);
    for version in versions(&g).into_iter().filter(|&v| v != AttentionVersion::Fa2) {
        // Another path's features agree with FA2's within bf16 rounding of the attention.
        let other = images_encode_alone_as_in_a_batch(&g, version);
        // (Two ViT blocks and the resampler carry the attention's last-bit differences.)
        let a: Vec<f64> = fa2.iter().map(|x| x.to_f64()).collect();
        let b: Vec<f64> = other.iter().map(|x| x.to_f64()).collect();
        assert_close(
            &format!("{version:?} image features against FA2"),
            &b,
            &a,
            5e-2 * rms(&a),
            2e-2,
        );
    }
}

/// Encodes three images in one batch and each alone (the same bits) with `version`'s attention
/// and checks that a video grid is refused; returns the batch's features.
fn images_encode_alone_as_in_a_batch(g: &Gpu, version: AttentionVersion) -> Vec<bf16> {
    let dir = tempfile::tempdir().unwrap();
    let m = load_tiny_with(g, dir.path(), AttentionKernels::from(version));
    let mut gemm = Gemm::new(g).unwrap();
    let ws = Workspace::new(g, 64 << 20).unwrap();
    let mut r = rng(0xE41E_0001);
    let grids = [
        ImageGrid { t: 1, h: 4, w: 6 },
        ImageGrid { t: 1, h: 2, w: 2 },
        ImageGrid { t: 1, h: 10, w: 8 },
    ];
    let pv = m.patch_values();
    let pixels: Vec<bf16> = rand_bf16(&mut r, grids.iter().map(|g| g.num_patches()).sum::<usize>() * pv, 2.0);
    let batch = encode(g, &m, &mut gemm, &ws, &grids, &pixels);
    let (mut p0, mut t0) = (0, 0);
    let width = m.feature_width();
    for (i, &grid) in grids.iter().enumerate() {
        let np = grid.num_patches();
        let one = encode(g, &m, &mut gemm, &ws, &[grid], &pixels[p0 * pv..(p0 + np) * pv]);
        let nt = m.image_tokens(grid);
        let same = one
            .iter()
            .zip(&batch[t0 * width..(t0 + nt) * width])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "image {i} ({grid:?}): alone differs from the batch");
        p0 += np;
        t0 += nt;
    }
    // A video grid is refused with a clear error, before anything runs.
    let err = m
        .encode_images(g, &mut gemm, &ws, &[ImageGrid { t: 2, h: 2, w: 2 }], &mut |_| Ok(()))
        .unwrap_err();
    assert!(err.to_string().contains("video"), "{err}");
    batch
}

/// Runs `spans` of the sequence `ids` as steps (prefill chunks, then one-token decodes) and
/// returns each step's last-token logits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_steps(
    g: &Gpu,
    m: &ErnieVl,
    gemm: &mut Gemm,
    ws: &mut Workspace,
    ids: &[u32],
    prompt_len: usize,
    grids: &[ImageGrid],
    feats: &DeviceTensor,
    spans: &[(usize, usize)],
) -> Vec<Vec<f32>> {
    let layout = m.layout_prompt(&ids[..prompt_len], grids).unwrap();
    let block_size = 16;
    let needed = ids.len().div_ceil(block_size);
    let mut cache = m.new_kv_cache(g, 2 * needed, block_size).unwrap();
    // Blocks in reverse order: a table that is not the identity.
    let table: Vec<i32> = (0..needed as i32).rev().map(|b| b + needed as i32).collect();
    let image_positions: Vec<usize> = layout.image_spans().iter().flat_map(|s| s.clone()).collect();
    let mut err = DeviceTensor::zeros(g, DType::I32, &[1]).unwrap();
    let mut out = Vec::new();
    for &(a, b) in spans {
        ws.reset();
        let slots: Vec<usize> = image_positions
            .iter()
            .filter(|&&t| t >= a && t < b)
            .map(|&t| t - a)
            .collect();
        let first = image_positions.iter().filter(|&&t| t < a).count();
        let chunk = SeqChunk {
            ids: ids[a..b].to_vec(),
            positions: [0, 1, 2].map(|ax| (a..b).map(|t| layout.position(t)[ax]).collect()),
            start: a,
            block_table: table.clone(),
            is_decode: b - a == 1 && a >= prompt_len,
            wants_logits: true,
            image_slots: slots.clone(),
        };
        let host = HostStep::build(&[chunk], block_size).unwrap();
        let dstep = host.upload(g).unwrap();
        let f = (!slots.is_empty()).then(|| feats.view().narrow0(first, slots.len()).unwrap());
        let inputs = dstep.inputs(f).unwrap();
        let mut logits = DeviceTensor::alloc(g, DType::F32, &[1, m.vocab_size()]).unwrap();
        logits.view_mut().fill_bytes(g, 0xFF).unwrap();
        m.forward(
            g,
            gemm,
            ws,
            &mut cache,
            &inputs,
            &mut err.view_mut(),
            &mut logits.view_mut(),
        )
        .unwrap();
        let got: Vec<f32> = logits.to_host(g).unwrap();
        assert!(
            got.iter().all(|x| x.is_finite()),
            "step {a}..{b}: a logit is not finite or unwritten"
        );
        out.push(got);
    }
    assert_eq!(
        err.to_host::<i32>(g).unwrap()[0],
        0,
        "embedding reported an out-of-range id"
    );
    out
}

#[test]
#[ignore = "needs GPU"]
fn ernie_tiny_chunked_prefill_and_decode_agree() {
    let g = gpu();
    let dir = tempfile::tempdir().unwrap();
    let m = load_tiny(&g, dir.path());
    let cfg = m.ernie_config().clone();
    let t = &cfg.tokens;
    let mut gemm = Gemm::new(&g).unwrap();
    let mut ws = Workspace::new(&g, 64 << 20).unwrap();
    let mut r = rng(0xE41E_0002);
    let grid = ImageGrid { t: 1, h: 6, w: 4 };
    let n_img = m.image_tokens(grid);
    // "text" <start> n x <image> <end> "text"; then 6 generated tokens.
    let text =
        |r: &mut rand_chacha::ChaCha8Rng, n: usize| -> Vec<u32> { (0..n).map(|_| r.random_range(5..900)).collect() };
    let mut ids = text(&mut r, 7);
    ids.push(t.image_start_token_id);
    ids.extend(std::iter::repeat_n(t.image_token_id, n_img));
    ids.push(t.image_end_token_id);
    ids.extend(text(&mut r, 9));
    let prompt_len = ids.len();
    ids.extend(text(&mut r, 6));
    let pixels = rand_bf16(&mut r, grid.num_patches() * m.patch_values(), 2.0);
    let feats_host = encode(&g, &m, &mut gemm, &ws, &[grid], &pixels);
    let feats = DeviceTensor::from_host(&g, &[n_img, m.feature_width()], &feats_host).unwrap();

    let decodes: Vec<(usize, usize)> = (prompt_len..ids.len()).map(|s| (s, s + 1)).collect();
    let whole: Vec<(usize, usize)> = std::iter::once((0, prompt_len))
        .chain(decodes.iter().copied())
        .collect();
    // Split inside the image (after 3 of its tokens).
    let split = 7 + 1 + 3;
    let chunked: Vec<(usize, usize)> = [(0, split), (split, prompt_len)]
        .into_iter()
        .chain(decodes.iter().copied())
        .collect();
    let a = run_steps(&g, &m, &mut gemm, &mut ws, &ids, prompt_len, &[grid], &feats, &whole);
    let b = run_steps(&g, &m, &mut gemm, &mut ws, &ids, prompt_len, &[grid], &feats, &chunked);
    // Compare the prompt's last logits and every decode step's (chunked has one extra step).
    let a_rows: Vec<&Vec<f32>> = a.iter().collect();
    let b_rows: Vec<&Vec<f32>> = b.iter().skip(1).collect();
    assert_eq!(a_rows.len(), b_rows.len());
    for (i, (x, y)) in a_rows.iter().zip(&b_rows).enumerate() {
        let want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let got: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        // bf16 activations through 3 layers: a few bf16 ulps of the logits' scale.
        assert_close(&format!("step {i}"), &got, &want, 3e-2 * rms(&want), 2e-2);
    }
}

/// `--load-format dummy` on a directory without weights (`synth-model --config-only`) makes
/// the synthetic checkpoint's seed-0 bytes, so its image features and logits are the same bits
/// as the written checkpoint's.
#[test]
#[ignore = "needs GPU"]
fn dummy_load_format_runs_as_the_written_checkpoint() {
    use ocrvl::config::LoadFormat;
    let g = gpu();
    let written = tempfile::tempdir().unwrap();
    let m = load_tiny(&g, written.path());
    let bare = tempfile::tempdir().unwrap();
    let mut opts = ErnieSyntheticOptions::for_model(true);
    opts.weights = false;
    write_synthetic_model(bare.path(), &ErnieVlConfig::tiny(), &opts).unwrap();
    assert!(!bare.path().join("model.safetensors.index.json").exists());
    let d = ErnieVl::load_with(&g, bare.path(), AttentionKernels::default(), LoadFormat::Dummy).unwrap();

    let mut gemm = Gemm::new(&g).unwrap();
    let mut ws = Workspace::new(&g, 64 << 20).unwrap();
    let mut r = rng(0xE41E_0003);
    let grid = ImageGrid { t: 1, h: 4, w: 6 };
    let pixels = rand_bf16(&mut r, grid.num_patches() * m.patch_values(), 2.0);
    let a = encode(&g, &m, &mut gemm, &ws, &[grid], &pixels);
    let b = encode(&g, &d, &mut gemm, &ws, &[grid], &pixels);
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "image features differ"
    );

    let t = &ErnieVlConfig::tiny().tokens;
    let n_img = m.image_tokens(grid);
    let mut ids: Vec<u32> = (0..5).map(|_| r.random_range(5..900)).collect();
    ids.push(t.image_start_token_id);
    ids.extend(std::iter::repeat_n(t.image_token_id, n_img));
    ids.push(t.image_end_token_id);
    ids.extend((0..4).map(|_| r.random_range(5..900u32)));
    let feats = DeviceTensor::from_host(&g, &[n_img, m.feature_width()], &a).unwrap();
    let spans = [(0, ids.len())];
    let la = run_steps(&g, &m, &mut gemm, &mut ws, &ids, ids.len(), &[grid], &feats, &spans);
    let lb = run_steps(&g, &d, &mut gemm, &mut ws, &ids, ids.len(), &[grid], &feats, &spans);
    assert!(
        la[0].iter().zip(&lb[0]).all(|(x, y)| x.to_bits() == y.to_bits()),
        "logits differ"
    );
}
