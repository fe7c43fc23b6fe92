//! `--quantization wint8` on the tiny ERNIE-4.5-VL: the model loaded with int8 experts gives
//! the logits of the same checkpoint rewritten with every expert weight replaced by what its
//! int8 form stands for, `bf16(q · scale)` (`ocrvl::model::quantize`), loaded in bf16. The two
//! runs differ only by that last bf16 rounding of the weights and by where the scale is
//! applied (to the f32 sum, or folded into each weight), so they must agree as two bf16 runs
//! of one model do. A prompt with an image, prefilled whole, then six decode steps, so both the
//! vision and the text pools' experts are used.

use std::path::Path;

use half::bf16;
use rand::Rng;
use safetensors::tensor::{serialize_to_file, TensorView as StTensor};
use safetensors::{Dtype as StDtype, SafeTensors};

use ocrvl::config::{ErnieVlConfig, LoadFormat, Quantization};
use ocrvl::kernels::attention::AttentionKernels;
use ocrvl::model::ernie_vl::family::ErnieVl;
use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};
use ocrvl::model::family::ModelFamily;
use ocrvl::model::quantize::{dequantize_rows_int8, quantize_rows_int8};
use ocrvl::preprocess::image::ImageGrid;
use ocrvl::runtime::{DeviceTensor, Gemm, Workspace};

use crate::common::tol::{assert_close, rms};
use crate::common::{gpu, rand_bf16, rng};
use crate::ernie_family::{encode, run_steps};

/// Rewrites every `*.safetensors` shard in `dir`, replacing each routed expert weight
/// (`...mlp.experts.N.{gate,up,down}_proj.weight`, rows are output channels) by its row-wise
/// int8 round trip; returns how many tensors changed.
fn dequantize_experts_in_place(dir: &Path) -> usize {
    let mut changed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = vec![];
        for (name, view) in st.tensors() {
            let mut data = view.data().to_vec();
            let expert = name.contains(".mlp.experts.") && name.ends_with("_proj.weight");
            if expert {
                assert_eq!(view.dtype(), StDtype::BF16, "{name}");
                let row_len = *view.shape().last().unwrap();
                let w: Vec<bf16> = bytemuck::pod_collect_to_vec(&data);
                let back = dequantize_rows_int8(&quantize_rows_int8(&name, &w, row_len).unwrap(), row_len);
                data = bytemuck::cast_slice::<bf16, u8>(&back).to_vec();
                changed += 1;
            }
            tensors.push((name, view.dtype(), view.shape().to_vec(), data));
        }
        let views: Vec<(String, StTensor<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), StTensor::new(*d, s.clone(), b).unwrap()))
            .collect();
        let metadata = st_metadata(&bytes);
        serialize_to_file(views, metadata, &path).unwrap();
    }
    changed
}

/// The shard's `__metadata__` (the loader may read `format`), kept as it was.
fn st_metadata(bytes: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    meta.metadata().clone()
}

#[test]
#[ignore = "needs GPU"]
fn ernie_tiny_int8_experts_match_their_dequantized_checkpoint() {
    let g = gpu();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ErnieVlConfig::tiny();
    write_synthetic_model(dir.path(), &cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    let kernels = AttentionKernels::default();
    let int8 = ErnieVl::load_quantized(&g, dir.path(), kernels, LoadFormat::Files, Quantization::ExpertsInt8).unwrap();
    let bf16_bytes = {
        let plain = ErnieVl::load(&g, dir.path(), kernels).unwrap();
        plain.weight_bytes()
    };
    // The experts are most of the weights: int8 must take well under the bf16 bytes.
    assert!(
        int8.weight_bytes() < bf16_bytes,
        "int8 experts take {} bytes, bf16 {bf16_bytes}",
        int8.weight_bytes()
    );
    let changed = dequantize_experts_in_place(dir.path());
    let experts_per_layer = 2 * cfg.moe.num_experts * 3;
    let moe_layers = (0..cfg.text.num_hidden_layers)
        .filter(|&l| cfg.moe.is_moe_layer(l))
        .count();
    assert_eq!(changed, experts_per_layer * moe_layers, "expert tensors rewritten");
    let rounded = ErnieVl::load(&g, dir.path(), kernels).unwrap();

    let mut gemm = Gemm::new(&g).unwrap();
    let mut ws = Workspace::new(&g, 64 << 20).unwrap();
    let mut r = rng(0xE41E_0008);
    let grid = ImageGrid { t: 1, h: 6, w: 4 };
    let n_img = int8.image_tokens(grid);
    let t = &cfg.tokens;
    let text =
        |r: &mut rand_chacha::ChaCha8Rng, n: usize| -> Vec<u32> { (0..n).map(|_| r.random_range(5..900)).collect() };
    let mut ids = text(&mut r, 6);
    ids.push(t.image_start_token_id);
    ids.extend(std::iter::repeat_n(t.image_token_id, n_img));
    ids.push(t.image_end_token_id);
    ids.extend(text(&mut r, 8));
    let prompt_len = ids.len();
    ids.extend(text(&mut r, 6));
    let pixels = rand_bf16(&mut r, grid.num_patches() * int8.patch_values(), 2.0);
    // The vision tower has no experts: the same features for both.
    let feats_host = encode(&g, &rounded, &mut gemm, &ws, &[grid], &pixels);
    let feats = DeviceTensor::from_host(&g, &[n_img, rounded.feature_width()], &feats_host).unwrap();
    let spans: Vec<(usize, usize)> = std::iter::once((0, prompt_len))
        .chain((prompt_len..ids.len()).map(|s| (s, s + 1)))
        .collect();
    let a = run_steps(&g, &int8, &mut gemm, &mut ws, &ids, prompt_len, &[grid], &feats, &spans);
    let b = run_steps(
        &g,
        &rounded,
        &mut gemm,
        &mut ws,
        &ids,
        prompt_len,
        &[grid],
        &feats,
        &spans,
    );
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let got: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let want: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        // As two bf16 runs of one model (tests/gpu/ernie_family.rs, chunked against whole).
        assert_close(&format!("wint8 step {i}"), &got, &want, 3e-2 * rms(&want), 2e-2);
    }
}
