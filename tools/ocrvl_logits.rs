//! `ocrvl-logits`: runs a model directory on given inputs and writes the logits of every
//! position (one prefill, teacher forcing). The full-size fidelity script
//! (tools/compare_full_model.py) uses it to compare ocrvl with transformers on the same inputs.
//!
//!     ocrvl-logits --model DIR --inputs in.safetensors --out logits.safetensors
//!
//! Inputs (as transformers' processor and `get_rope_index` produce them): `input_ids` i64 [S],
//! `position_ids` i64 [3, S], `pixel_values` f32 [P, 3, 14, 14], `image_grid_thw` i64 [n, 3].
//! Output: `logits` f32 [S, vocab].

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use half::bf16;
use safetensors::{Dtype, SafeTensors};

use ocrvl::config::ModelConfig;
use ocrvl::model::gpu_weights::ModelWeights;
use ocrvl::model::prompt_logits::prompt_logits;
use ocrvl::model::weights::Checkpoint;
use ocrvl::runtime::Gpu;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocrvl-logits: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tensor_i64(st: &SafeTensors<'_>, name: &str) -> anyhow::Result<Vec<i64>> {
    let t = st.tensor(name).with_context(|| format!("input tensor `{name}`"))?;
    if t.dtype() != Dtype::I64 {
        bail!("input tensor `{name}` must be i64, is {:?}", t.dtype());
    }
    Ok(t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

fn run() -> anyhow::Result<()> {
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" | "--inputs" | "--out" => {
                let v = args.next().with_context(|| format!("{a} needs a value"))?;
                flags.insert(a, v);
            }
            other => bail!("unknown argument `{other}` (usage: --model DIR --inputs FILE --out FILE)"),
        }
    }
    let get = |k: &str| {
        flags
            .get(k)
            .map(PathBuf::from)
            .with_context(|| format!("{k} is required"))
    };
    let (model, inputs, out) = (get("--model")?, get("--inputs")?, get("--out")?);

    let gpu = Gpu::new(0)?;
    let cfg = ModelConfig::from_dir(&model)?;
    let ckpt = Checkpoint::open(&model)?;
    let mut weights = ModelWeights::upload(&gpu, &cfg, &ckpt.validate(&cfg)?)?;
    weights.attention = ocrvl::config::EnvFlags::from_env()?
        .flash_attn_version
        .resolve(&gpu)?
        .into();

    let bytes = std::fs::read(&inputs).with_context(|| format!("reading {}", inputs.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {}", inputs.display()))?;
    let ids: Vec<u32> = tensor_i64(&st, "input_ids")?.iter().map(|&v| v as u32).collect();
    let positions: Vec<i32> = tensor_i64(&st, "position_ids")?.iter().map(|&v| v as i32).collect();
    let grid = tensor_i64(&st, "image_grid_thw")?;
    let grids: Vec<(usize, usize)> = grid.chunks(3).map(|g| (g[1] as usize, g[2] as usize)).collect();
    let px = st.tensor("pixel_values").context("input tensor `pixel_values`")?;
    if px.dtype() != Dtype::F32 {
        bail!("pixel_values must be f32, is {:?}", px.dtype());
    }
    let pixels: Vec<bf16> = px
        .data()
        .chunks_exact(4)
        .map(|c| bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();

    let logits = prompt_logits(&gpu, &cfg, &weights, &ids, &positions, &pixels, &grids)?;
    let shape = vec![ids.len(), cfg.text.vocab_size];
    let data: &[u8] = bytemuck::cast_slice(&logits);
    let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, data)?;
    safetensors::serialize_to_file([("logits", view)], None, &out)?;
    println!(
        "ocrvl-logits: {} positions x {} vocab -> {}",
        ids.len(),
        cfg.text.vocab_size,
        out.display()
    );
    Ok(())
}
