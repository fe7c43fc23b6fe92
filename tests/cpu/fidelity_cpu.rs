//! Fidelity on the committed tiny-model fixture (tests/fixtures/tiny_model, made by
//! tools/make_model_fixture.py with transformers, the oracle nobody here wrote): the f64 CPU
//! reference forward reproduces transformers' image features and logits, and the M-RoPE ids.

use std::path::{Path, PathBuf};

use crate::ref_model::{positions_3d, RefModel};
use safetensors::SafeTensors;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model")
}

/// A tensor of the expected-outputs file as f64, with its shape.
fn read(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f64>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    let data = t.data();
    let v = match t.dtype() {
        safetensors::Dtype::F32 => data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("fixture tensor {name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), v)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn reference_forward_matches_transformers() {
    let dir = fixture_dir();
    let bytes =
        std::fs::read(dir.join("expected.safetensors")).expect("tests/fixtures/tiny_model/expected.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = RefModel::load(&dir);

    let (_, ids) = read(&st, "input_ids");
    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    let (_, grid) = read(&st, "image_grid_thw");
    let grids: Vec<(usize, usize)> = grid.chunks(3).map(|g| (g[1] as usize, g[2] as usize)).collect();

    // M-RoPE ids: the independent reference equals transformers' get_rope_index.
    let (pos_shape, pos_want) = read(&st, "position_ids");
    assert_eq!(pos_shape, vec![3, ids.len()]);
    let (pos, _delta) = positions_3d(&ids, model.cfg.tokens.image_token_id, &grids);
    let pos_flat: Vec<f64> = pos.iter().flatten().map(|&p| p as f64).collect();
    assert_eq!(pos_flat, pos_want, "M-RoPE position ids differ from transformers");

    // Vision tower + projector on transformers' pixel values.
    let (_, pixels) = read(&st, "pixel_values");
    let img = model.image_tokens(&pixels, &grids);
    let (_, feats_want) = read(&st, "image_features");
    let feat_err = max_abs_diff(&img, &feats_want);
    let feat_scale = feats_want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!("image features: max |diff| {feat_err:.3e} (max |value| {feat_scale:.3})");
    // transformers ran in f32: its rounding, not ours, bounds the difference.
    assert!(
        feat_err <= 1e-4 * feat_scale.max(1.0),
        "image features differ: {feat_err}"
    );

    let logits = model.logits(&ids, &img, &pos);
    let (shape, want) = read(&st, "logits");
    assert_eq!(shape, vec![ids.len(), model.cfg.text.vocab_size]);
    let err = max_abs_diff(&logits, &want);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!("logits: max |diff| {err:.3e} (max |logit| {scale:.3})");
    assert!(err <= 1e-4 * scale.max(1.0), "logits differ from transformers by {err}");

    // Greedy tokens: the argmax of each position before a generated token is that token.
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let prompt_len: usize = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("prompt_len"))
        .unwrap()
        .parse()
        .unwrap();
    let vocab = model.cfg.text.vocab_size;
    for t in prompt_len..ids.len() {
        let row = &logits[(t - 1) * vocab..t * vocab];
        let best = (0..vocab)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(best as u32, ids[t], "greedy token {} differs", t - prompt_len);
    }
}

#[test]
fn preprocessing_matches_transformers_pixel_values() {
    use ocrvl::config::ModelConfig;
    use ocrvl::preprocess::image::ImageProcessor;

    let dir = fixture_dir();
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let processor = ImageProcessor::from_model_dir(&dir, &cfg).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, want) = read(&st, "pixel_values");
    let (_, grid) = read(&st, "image_grid_thw");
    let mut got = Vec::new();
    for (i, g) in grid.chunks(3).enumerate() {
        let png = std::fs::read(dir.join(format!("image{i}.png"))).unwrap();
        let p = processor.process_bytes(&png).unwrap();
        assert_eq!((p.grid.h, p.grid.w), (g[1] as usize, g[2] as usize), "image {i}: grid");
        got.extend(p.pixel_values.iter().map(|&v| v as f64));
    }
    assert_eq!(got.len(), want.len(), "pixel value count");
    // One uint8 level after (x/255 - 0.5)/0.5 is 2/255. Pillow's resize is matched exactly
    // (tests/cpu/preprocess.rs); allow one level for a Pillow whose pass order differs.
    let level = 2.0 / 255.0;
    let off = got.iter().zip(&want).filter(|(a, b)| (*a - *b).abs() > 1e-6).count();
    let worst = max_abs_diff(&got, &want);
    eprintln!(
        "pixel values: {off} of {} differ, max |diff| {worst:.5} ({:.2} levels)",
        got.len(),
        worst / level
    );
    assert!(
        worst <= level + 1e-6,
        "pixel values differ by more than one uint8 level: {worst}"
    );
}
