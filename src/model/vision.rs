//! The vision tower and projector on the GPU (MODEL_SPEC.md §3.2–§3.7): many images packed in
//! one varlen sequence of patches, encoded in one pass.
//!
//! Per layer (pre-LN, residual stream `res` in bf16):
//! ```text
//! qkv = y·Wqkvᵀ + b            one GEMM, bias epilogue        [P, 3·1152]
//! rope2d(q, k)                 in place on column slices
//! o   = attention(q, k, v)     per image, bidirectional      [P, 1152]
//! d   = o·Woᵀ + bo
//! y   = LN2(res += d)          fused add + LayerNorm
//! f   = gelu_tanh(y·W1ᵀ + b1)  GELU fused in the GEMM epilogue
//! d   = f·W2ᵀ + b2
//! y   = LN1'(res += d)         the next layer's LN1, or post_layernorm after the last
//! ```
//! Then the projector: LayerNorm (eps 1e-5), the 2×2 merge as a row permutation into
//! `[P/4, 4·1152]`, linear_1 + bias, GELU (erf), linear_2 + bias.

use super::gpu_weights::ModelWeights;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::attention::{vision_varlen_version, Varlen, VisionQkv};
use crate::kernels::elementwise::{gelu_in_place, Gelu};
use crate::kernels::embedding::{pos_embed_resample_add, scatter_rows};
use crate::kernels::norm::{layernorm, layernorm_add};
use crate::kernels::rope::vision_rope;
use crate::runtime::{DType, DeviceTensor, Epilogue, Gemm, Gpu, TensorView, TensorViewMut, Workspace};

/// Eps of the projector's pre-norm (the vision layers use the config's 1e-6).
pub const PROJECTOR_LN_EPS: f32 = 1e-5;

/// The host-side description of a packed batch of images, from their patch grids.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VisionBatchHost {
    /// (h, w) in patches per image; both even (the 2×2 merge).
    pub grids: Vec<(usize, usize)>,
    /// i32 [n + 1]: patch offsets.
    pub cu_patches: Vec<i32>,
    /// i32 [n, 2]: h, w.
    pub grid_hw: Vec<i32>,
    /// i32 [P]: each patch's row and column in its image.
    pub rows: Vec<i32>,
    pub cols: Vec<i32>,
    /// i32 [P]: where each patch goes in the merged layout viewed as [P, hidden]: merged token
    /// m of the batch is rows 4m..4m+3, in the order (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1).
    pub merge_rows: Vec<i32>,
    pub max_patches: usize,
}

impl VisionBatchHost {
    pub fn new(grids: &[(usize, usize)]) -> Result<VisionBatchHost> {
        let mut b = VisionBatchHost {
            grids: grids.to_vec(),
            cu_patches: vec![0],
            ..Default::default()
        };
        let mut merged_base = 0;
        for &(h, w) in grids {
            if h == 0 || w == 0 || h % 2 != 0 || w % 2 != 0 {
                return Err(Error::invalid(
                    "vision batch",
                    format!("patch grid {h}x{w} is not even in both dims"),
                ));
            }
            let np = h * w;
            b.max_patches = b.max_patches.max(np);
            b.cu_patches.push(b.cu_patches.last().unwrap() + np as i32);
            b.grid_hw.extend([h as i32, w as i32]);
            for p in 0..np {
                let (r, c) = (p / w, p % w);
                b.rows.push(r as i32);
                b.cols.push(c as i32);
                let m = merged_base + (r / 2) * (w / 2) + c / 2;
                b.merge_rows.push((4 * m + (r % 2) * 2 + c % 2) as i32);
            }
            merged_base += np / 4;
        }
        Ok(b)
    }

    pub fn num_patches(&self) -> usize {
        self.rows.len()
    }

    pub fn num_merged(&self) -> usize {
        self.rows.len() / 4
    }
}

/// The batch metadata on the device.
pub struct VisionBatch {
    pub host: VisionBatchHost,
    cu_patches: DeviceTensor,
    grid_hw: DeviceTensor,
    rows: DeviceTensor,
    cols: DeviceTensor,
    merge_rows: DeviceTensor,
}

impl VisionBatch {
    pub fn upload(gpu: &Gpu, host: VisionBatchHost) -> Result<VisionBatch> {
        let n = host.grids.len();
        let p = host.num_patches();
        Ok(VisionBatch {
            cu_patches: DeviceTensor::from_host(gpu, &[n + 1], &host.cu_patches)?,
            grid_hw: DeviceTensor::from_host(gpu, &[n, 2], &host.grid_hw)?,
            rows: DeviceTensor::from_host(gpu, &[p], &host.rows)?,
            cols: DeviceTensor::from_host(gpu, &[p], &host.cols)?,
            merge_rows: DeviceTensor::from_host(gpu, &[p], &host.merge_rows)?,
            host,
        })
    }
}

/// Bytes of workspace [`encode`] needs for `patches` patches.
pub fn workspace_bytes(cfg: &ModelConfig, patches: usize) -> usize {
    let v = &cfg.vision;
    let d = v.hidden_size;
    // res, y, qkv, o, d, mlp: each aligned to 256 bytes by the arena.
    let elems = patches * (d + d + 3 * d + d + d + v.intermediate_size) + patches / 4 * v.merged_width() * 2;
    elems * 2 + 16 * 256
}

/// Encodes a packed batch of images: `pixels` bf16 [P, 3·14·14] in patch order, into `out` bf16
/// [P/4, text hidden] (the image tokens, images in batch order).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    gpu: &Gpu,
    gemm: &mut Gemm,
    ws: &Workspace,
    cfg: &ModelConfig,
    w: &ModelWeights,
    batch: &VisionBatch,
    pixels: &TensorView<'_>,
    out: &mut TensorViewMut<'_>,
) -> Result<()> {
    const OP: &str = "vision encode";
    let v = &cfg.vision;
    let (d, hd, heads) = (v.hidden_size, v.head_dim(), v.num_attention_heads);
    let p = batch.host.num_patches();
    pixels.expect(OP, "pixels", DType::BF16, &[p, v.patch_dim()])?;
    out.expect(OP, "out", DType::BF16, &[p / 4, cfg.text.hidden_size])?;
    if p == 0 {
        return Ok(());
    }
    let eps = v.layer_norm_eps as f32;

    // Patch embedding (the 14×14 stride-14 convolution as a GEMM) plus resampled positions.
    let mut res = ws.alloc(DType::BF16, &[p, d])?;
    gemm.matmul(
        gpu,
        &mut res,
        pixels,
        &w.patch_w.view(),
        Some(&w.patch_b.view()),
        Epilogue::Bias,
        false,
    )?;
    pos_embed_resample_add(
        gpu,
        &mut res,
        &w.pos_table.view(),
        v.position_table_side(),
        &batch.cu_patches.view(),
        &batch.grid_hw.view(),
    )?;

    let mut y = ws.alloc(DType::BF16, &[p, d])?;
    let mut qkv = ws.alloc(DType::BF16, &[p, 3 * d])?;
    let mut o = ws.alloc(DType::BF16, &[p, d])?;
    let mut delta = ws.alloc(DType::BF16, &[p, d])?;
    let mut mlp = ws.alloc(DType::BF16, &[p, v.intermediate_size])?;
    let images = Varlen {
        cu_seqlens: batch.cu_patches.view(),
        max_seqlen: batch.host.max_patches,
    };
    let scale = 1.0 / (hd as f32).sqrt();

    layernorm(
        gpu,
        &mut y,
        &res.as_view(),
        &w.vision[0].ln1_w.view(),
        &w.vision[0].ln1_b.view(),
        eps,
    )?;
    for (l, lw) in w.vision.iter().enumerate() {
        gemm.matmul(
            gpu,
            &mut qkv,
            &y.as_view(),
            &lw.qkv_w.view(),
            Some(&lw.qkv_b.view()),
            Epilogue::Bias,
            false,
        )?;
        {
            let [mut q, mut k, _] = qkv.reborrow().split_columns([d, d, d])?;
            vision_rope(
                gpu,
                &mut q,
                &mut k,
                &batch.rows.view(),
                &batch.cols.view(),
                hd,
                v.rope_theta as f32,
            )?;
        }
        let qkv_view = qkv.as_view();
        let parts = VisionQkv {
            q: qkv_view.columns(0, d)?,
            k: qkv_view.columns(d, d)?,
            v: qkv_view.columns(2 * d, d)?,
            num_heads: heads,
        };
        vision_varlen_version(gpu, &mut o, &parts, &images, scale, w.attention)?;
        gemm.matmul(
            gpu,
            &mut delta,
            &o.as_view(),
            &lw.out_w.view(),
            Some(&lw.out_b.view()),
            Epilogue::Bias,
            false,
        )?;
        layernorm_add(
            gpu,
            &mut y,
            &delta.as_view(),
            &mut res,
            &lw.ln2_w.view(),
            &lw.ln2_b.view(),
            eps,
        )?;
        gemm.matmul(
            gpu,
            &mut mlp,
            &y.as_view(),
            &lw.fc1_w.view(),
            Some(&lw.fc1_b.view()),
            Epilogue::GeluTanhBias,
            false,
        )?;
        gemm.matmul(
            gpu,
            &mut delta,
            &mlp.as_view(),
            &lw.fc2_w.view(),
            Some(&lw.fc2_b.view()),
            Epilogue::Bias,
            false,
        )?;
        let (nw, nb) = match w.vision.get(l + 1) {
            Some(next) => (&next.ln1_w, &next.ln1_b),
            None => (&w.post_ln_w, &w.post_ln_b),
        };
        layernorm_add(gpu, &mut y, &delta.as_view(), &mut res, &nw.view(), &nb.view(), eps)?;
    }

    // Projector: pre-norm per patch, then the 2×2 merge as a row permutation.
    layernorm(
        gpu,
        &mut o,
        &y.as_view(),
        &w.proj_ln_w.view(),
        &w.proj_ln_b.view(),
        PROJECTOR_LN_EPS,
    )?;
    let mw = v.merged_width();
    let mut merged = ws.alloc(DType::BF16, &[p / 4, mw])?;
    {
        let mut as_rows = merged.reborrow().reshape(&[p, d])?;
        scatter_rows(gpu, &mut as_rows, &o.as_view(), &batch.merge_rows.view())?;
    }
    let mut hidden = ws.alloc(DType::BF16, &[p / 4, mw])?;
    gemm.matmul(
        gpu,
        &mut hidden,
        &merged.as_view(),
        &w.proj_l1_w.view(),
        Some(&w.proj_l1_b.view()),
        Epilogue::Bias,
        false,
    )?;
    gelu_in_place(gpu, &mut hidden, Gelu::Erf)?;
    gemm.matmul(
        gpu,
        out,
        &hidden.as_view(),
        &w.proj_l2_w.view(),
        Some(&w.proj_l2_b.view()),
        Epilogue::Bias,
        false,
    )
}
