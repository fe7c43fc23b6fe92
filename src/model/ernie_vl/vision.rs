//! ERNIE-4.5-VL's vision tower and resampler on the GPU (docs/ERNIE_4_5_VL_SPEC.md §3.1–§3.6):
//! a packed batch of images' patches (in 2×2-merge-block order, as [`super::image`] writes
//! them) in, one row per image token at the text width out.
//!
//! ViT, per block (pre-LN, eps 1e-6, residual stream `res` in bf16; P patches, D 1280):
//! ```text
//! qkv = y·Wqkvᵀ + b            one GEMM, bias epilogue            [P, 3·D]
//! rope2d(q, k)                 NeoX halves, head_dim 80, rows/cols of each patch
//! o   = attention(q, k, v)     per image, bidirectional (the given kernels, d80) [P, D]
//! y   = LN2(res += o·Woᵀ + bo)
//! y'  = LN1'(res += fc2(quick_gelu(fc1(y))))   the next block's LN1, or `vision_model.ln`
//! ```
//! The resampler (images; a video's frames are out of scope):
//! ```text
//! z = y viewed as [P/4, 4·D]                 four consecutive patches = one 2×2 block
//! z = LN(fc2_s(gelu(fc1_s(z))))              5120 → 5120 → 5120, eps 1e-6
//! z = LN(fc2_t(gelu(fc1_t([z, z]))))         10240 → 5120 → 5120 (the temporal pair on the
//!                                             image paired with itself), eps 1e-6
//! f = RMSNorm(z·Wmᵀ + bm, after_norm)        5120 → text hidden, the text eps
//! ```
//! `[z, z]` is written out (two row scatters) rather than folding the temporal weight's
//! halves, so the product is rounded as transformers rounds it (spec §3.6).

use super::names::{vision_block, RESAMPLER_PREFIX, VISION_PREFIX};
use crate::config::ErnieVlConfig;
use crate::error::{Error, Result};
use crate::kernels::attention::{vision_varlen_version, AttentionKernels, Varlen, VisionQkv};
use crate::kernels::elementwise::{gelu_in_place, Gelu};
use crate::kernels::embedding::scatter_rows;
use crate::kernels::norm::{layernorm, layernorm_add, rmsnorm};
use crate::kernels::rope::vision_rope;
use crate::model::weights::ValidatedWeights;
use crate::runtime::{DType, DeviceTensor, Epilogue, Gemm, Gpu, TensorView, TensorViewMut, Workspace};

const OP: &str = "ernie vision";

pub struct ErnieVisionBlock {
    pub norm1_w: DeviceTensor,
    pub norm1_b: DeviceTensor,
    /// `[3·D, D]`, q, k, v rows (the hub's fused `attn.qkv`).
    pub qkv_w: DeviceTensor,
    pub qkv_b: DeviceTensor,
    pub proj_w: DeviceTensor,
    pub proj_b: DeviceTensor,
    pub norm2_w: DeviceTensor,
    pub norm2_b: DeviceTensor,
    pub fc1_w: DeviceTensor,
    pub fc1_b: DeviceTensor,
    pub fc2_w: DeviceTensor,
    pub fc2_b: DeviceTensor,
}

/// One Linear + bias.
pub struct Linear {
    pub w: DeviceTensor,
    pub b: DeviceTensor,
}

/// Linear, GELU (erf), Linear, LayerNorm: the resampler's spatial and temporal pairs.
pub struct ResamplerPair {
    pub fc1: Linear,
    pub fc2: Linear,
    pub ln_w: DeviceTensor,
    pub ln_b: DeviceTensor,
}

pub struct ErnieVisionWeights {
    /// `[D, 588]`, no bias.
    pub patch_w: DeviceTensor,
    pub blocks: Vec<ErnieVisionBlock>,
    pub ln_w: DeviceTensor,
    pub ln_b: DeviceTensor,
    pub spatial: ResamplerPair,
    /// None when the checkpoint has no temporal pair (`use_temporal_conv` false).
    pub temporal: Option<ResamplerPair>,
    pub mlp: Linear,
    pub after_norm: DeviceTensor,
}

impl ErnieVisionWeights {
    pub fn upload(gpu: &Gpu, cfg: &ErnieVlConfig, host: &ValidatedWeights<'_>) -> Result<ErnieVisionWeights> {
        let one = |name: &str| -> Result<DeviceTensor> {
            let t = host
                .get(name)
                .ok_or_else(|| Error::invalid(OP, format!("missing tensor {name}")))?;
            if t.dtype != DType::BF16 {
                return Err(Error::invalid(OP, format!("{name} is {}, expected bf16", t.dtype)));
            }
            DeviceTensor::from_bytes(gpu, t.dtype, t.shape, t.data)
        };
        let linear = |prefix: &str| -> Result<Linear> {
            Ok(Linear {
                w: one(&format!("{prefix}weight"))?,
                b: one(&format!("{prefix}bias"))?,
            })
        };
        let pair = |prefix: &str| -> Result<ResamplerPair> {
            Ok(ResamplerPair {
                fc1: linear(&format!("{prefix}0."))?,
                fc2: linear(&format!("{prefix}2."))?,
                ln_w: one(&format!("{prefix}3.weight"))?,
                ln_b: one(&format!("{prefix}3.bias"))?,
            })
        };
        let blocks = (0..cfg.vision.depth)
            .map(|b| {
                let n = |s: &str| vision_block(b, s);
                Ok(ErnieVisionBlock {
                    norm1_w: one(&n("norm1.weight"))?,
                    norm1_b: one(&n("norm1.bias"))?,
                    qkv_w: one(&n("attn.qkv.weight"))?,
                    qkv_b: one(&n("attn.qkv.bias"))?,
                    proj_w: one(&n("attn.proj.weight"))?,
                    proj_b: one(&n("attn.proj.bias"))?,
                    norm2_w: one(&n("norm2.weight"))?,
                    norm2_b: one(&n("norm2.bias"))?,
                    fc1_w: one(&n("mlp.fc1.weight"))?,
                    fc1_b: one(&n("mlp.fc1.bias"))?,
                    fc2_w: one(&n("mlp.fc2.weight"))?,
                    fc2_b: one(&n("mlp.fc2.bias"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ErnieVisionWeights {
            patch_w: one(&format!("{VISION_PREFIX}patch_embed.proj.weight"))?,
            blocks,
            ln_w: one(&format!("{VISION_PREFIX}ln.weight"))?,
            ln_b: one(&format!("{VISION_PREFIX}ln.bias"))?,
            spatial: pair(&format!("{RESAMPLER_PREFIX}spatial_linear."))?,
            temporal: if cfg.use_temporal_conv {
                Some(pair(&format!("{RESAMPLER_PREFIX}temporal_linear."))?)
            } else {
                None
            },
            mlp: linear(&format!("{RESAMPLER_PREFIX}mlp."))?,
            after_norm: one(&format!("{RESAMPLER_PREFIX}after_norm.weight"))?,
        })
    }

    pub fn total_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                [
                    &b.norm1_w, &b.norm1_b, &b.qkv_w, &b.qkv_b, &b.proj_w, &b.proj_b, &b.norm2_w, &b.norm2_b, &b.fc1_w,
                    &b.fc1_b, &b.fc2_w, &b.fc2_b,
                ]
                .iter()
                .map(|t| t.nbytes())
                .sum::<usize>()
            })
            .sum();
        let pair = |p: &ResamplerPair| {
            p.fc1.w.nbytes()
                + p.fc1.b.nbytes()
                + p.fc2.w.nbytes()
                + p.fc2.b.nbytes()
                + p.ln_w.nbytes()
                + p.ln_b.nbytes()
        };
        blocks
            + self.patch_w.nbytes()
            + self.ln_w.nbytes()
            + self.ln_b.nbytes()
            + pair(&self.spatial)
            + self.temporal.as_ref().map_or(0, pair)
            + self.mlp.w.nbytes()
            + self.mlp.b.nbytes()
            + self.after_norm.nbytes()
    }
}

/// A packed batch of images described from their patch grids `(h, w)` (both even).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErnieVisionBatchHost {
    pub grids: Vec<(usize, usize)>,
    /// i32 `[n + 1]`: patch offsets per image.
    pub cu_patches: Vec<i32>,
    /// i32 `[P]`: each patch's row and column in its image, patches in merge-block order
    /// (spec §3.1: patch p is block p/4, quarter p%4).
    pub rows: Vec<i32>,
    pub cols: Vec<i32>,
    /// i32 `[P/4]`: rows 2m and 2m+1 of `[2·P/4, 4·D]`, where merged token m's copies go to
    /// form the temporal input `[z, z]`.
    pub pair_first: Vec<i32>,
    pub pair_second: Vec<i32>,
    pub max_patches: usize,
}

impl ErnieVisionBatchHost {
    pub fn new(grids: &[(usize, usize)]) -> Result<ErnieVisionBatchHost> {
        let mut b = ErnieVisionBatchHost {
            grids: grids.to_vec(),
            cu_patches: vec![0],
            ..Default::default()
        };
        for &(h, w) in grids {
            if h == 0 || w == 0 || h % 2 != 0 || w % 2 != 0 {
                return Err(Error::invalid(
                    OP,
                    format!("patch grid {h}x{w} is not even in both dims"),
                ));
            }
            let np = h * w;
            b.max_patches = b.max_patches.max(np);
            b.cu_patches.push(b.cu_patches.last().copied().unwrap_or(0) + np as i32);
            let gw = w / 2;
            for p in 0..np {
                let (block, q) = (p / 4, p % 4);
                b.rows.push((2 * (block / gw) + q / 2) as i32);
                b.cols.push((2 * (block % gw) + q % 2) as i32);
            }
        }
        let merged = b.rows.len() / 4;
        b.pair_first = (0..merged).map(|m| 2 * m as i32).collect();
        b.pair_second = (0..merged).map(|m| 2 * m as i32 + 1).collect();
        Ok(b)
    }

    pub fn num_patches(&self) -> usize {
        self.rows.len()
    }

    /// Image tokens: one per 2×2 block.
    pub fn num_tokens(&self) -> usize {
        self.rows.len() / 4
    }
}

/// The batch metadata on the device.
pub struct ErnieVisionBatch {
    pub host: ErnieVisionBatchHost,
    cu_patches: DeviceTensor,
    rows: DeviceTensor,
    cols: DeviceTensor,
    pair_first: DeviceTensor,
    pair_second: DeviceTensor,
}

impl ErnieVisionBatch {
    pub fn upload(gpu: &Gpu, host: ErnieVisionBatchHost) -> Result<ErnieVisionBatch> {
        let (n, p, m) = (host.grids.len(), host.num_patches(), host.num_tokens());
        Ok(ErnieVisionBatch {
            cu_patches: DeviceTensor::from_host(gpu, &[n + 1], &host.cu_patches)?,
            rows: DeviceTensor::from_host(gpu, &[p.max(1)], &pad(&host.rows))?,
            cols: DeviceTensor::from_host(gpu, &[p.max(1)], &pad(&host.cols))?,
            pair_first: DeviceTensor::from_host(gpu, &[m.max(1)], &pad(&host.pair_first))?,
            pair_second: DeviceTensor::from_host(gpu, &[m.max(1)], &pad(&host.pair_second))?,
            host,
        })
    }
}

fn pad(v: &[i32]) -> Vec<i32> {
    if v.is_empty() {
        vec![0]
    } else {
        v.to_vec()
    }
}

/// Workspace bytes of [`encode`] for `patches` patches.
pub fn workspace_bytes(cfg: &ErnieVlConfig, patches: usize) -> usize {
    let v = &cfg.vision;
    let d = v.hidden_size;
    let tokens = patches / 4;
    let mw = v.merged_width();
    let vit = patches * (d + d + 3 * d + d + d + v.intermediate_size);
    let resampler = tokens * (mw + mw + v.temporal_merge_size * mw);
    (vit + resampler) * 2 + 16 * 256
}

/// Encodes a packed batch: `pixels` bf16 `[P, 588]` (images in order, each in merge-block
/// order) into `out` bf16 `[P/4, text hidden]`. `attention`: the kernels of the d80 attention
/// (FA2 everywhere, or FA3 on Hopper).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    gpu: &Gpu,
    gemm: &mut Gemm,
    ws: &Workspace,
    cfg: &ErnieVlConfig,
    w: &ErnieVisionWeights,
    attention: AttentionKernels,
    batch: &ErnieVisionBatch,
    pixels: &TensorView<'_>,
    out: &mut TensorViewMut<'_>,
) -> Result<()> {
    let v = &cfg.vision;
    let (d, hd, heads) = (v.hidden_size, v.head_dim(), v.num_heads);
    let p = batch.host.num_patches();
    let tokens = batch.host.num_tokens();
    pixels.expect(OP, "pixels", DType::BF16, &[p, v.patch_dim()])?;
    out.expect(OP, "out", DType::BF16, &[tokens, cfg.text.hidden_size])?;
    if p == 0 {
        return Ok(());
    }
    if w.blocks.is_empty() {
        return Err(Error::invalid(OP, "a vision tower with no blocks"));
    }
    let eps = v.layer_norm_eps as f32;

    let mut res = ws.alloc(DType::BF16, &[p, d])?;
    gemm.matmul(gpu, &mut res, pixels, &w.patch_w.view(), None, Epilogue::None, false)?;
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
        &w.blocks[0].norm1_w.view(),
        &w.blocks[0].norm1_b.view(),
        eps,
    )?;
    for (l, b) in w.blocks.iter().enumerate() {
        gemm.matmul(
            gpu,
            &mut qkv,
            &y.as_view(),
            &b.qkv_w.view(),
            Some(&b.qkv_b.view()),
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
        vision_varlen_version(gpu, &mut o, &parts, &images, scale, attention)?;
        gemm.matmul(
            gpu,
            &mut delta,
            &o.as_view(),
            &b.proj_w.view(),
            Some(&b.proj_b.view()),
            Epilogue::Bias,
            false,
        )?;
        layernorm_add(
            gpu,
            &mut y,
            &delta.as_view(),
            &mut res,
            &b.norm2_w.view(),
            &b.norm2_b.view(),
            eps,
        )?;
        gemm.matmul(
            gpu,
            &mut mlp,
            &y.as_view(),
            &b.fc1_w.view(),
            Some(&b.fc1_b.view()),
            Epilogue::Bias,
            false,
        )?;
        gelu_in_place(gpu, &mut mlp, Gelu::Quick)?;
        gemm.matmul(
            gpu,
            &mut delta,
            &mlp.as_view(),
            &b.fc2_w.view(),
            Some(&b.fc2_b.view()),
            Epilogue::Bias,
            false,
        )?;
        let (nw, nb) = match w.blocks.get(l + 1) {
            Some(next) => (&next.norm1_w, &next.norm1_b),
            None => (&w.ln_w, &w.ln_b),
        };
        layernorm_add(gpu, &mut y, &delta.as_view(), &mut res, &nw.view(), &nb.view(), eps)?;
    }

    // Resampler: the merge is a reshape, since patches come in merge-block order.
    let mw = v.merged_width();
    let z_in = y.as_view().reshape(&[tokens, mw])?;
    let mut z = ws.alloc(DType::BF16, &[tokens, mw])?;
    resampler_pair(gpu, gemm, ws, &w.spatial, &z_in, &mut z, eps)?;
    let z = match &w.temporal {
        Some(t) => {
            if v.temporal_merge_size != 2 {
                return Err(Error::invalid(
                    OP,
                    format!("temporal_merge_size {} (only 2 is built)", v.temporal_merge_size),
                ));
            }
            let mut zz = ws.alloc(DType::BF16, &[tokens, 2 * mw])?;
            {
                let mut halves = zz.reborrow().reshape(&[2 * tokens, mw])?;
                scatter_rows(
                    gpu,
                    &mut halves,
                    &z.as_view(),
                    &batch.pair_first.view().narrow0(0, tokens)?,
                )?;
                scatter_rows(
                    gpu,
                    &mut halves,
                    &z.as_view(),
                    &batch.pair_second.view().narrow0(0, tokens)?,
                )?;
            }
            let mut zt = ws.alloc(DType::BF16, &[tokens, mw])?;
            resampler_pair(gpu, gemm, ws, t, &zz.as_view(), &mut zt, eps)?;
            zt
        }
        None => z,
    };
    let mut projected = ws.alloc(DType::BF16, &[tokens, cfg.text.hidden_size])?;
    gemm.matmul(
        gpu,
        &mut projected,
        &z.as_view(),
        &w.mlp.w.view(),
        Some(&w.mlp.b.view()),
        Epilogue::Bias,
        false,
    )?;
    rmsnorm(
        gpu,
        out,
        &projected.as_view(),
        &w.after_norm.view(),
        cfg.text.rms_norm_eps as f32,
    )
}

/// `out = LN(fc2(gelu_erf(fc1(x))))`.
fn resampler_pair(
    gpu: &Gpu,
    gemm: &mut Gemm,
    ws: &Workspace,
    pair: &ResamplerPair,
    x: &TensorView<'_>,
    out: &mut TensorViewMut<'_>,
    eps: f32,
) -> Result<()> {
    let (rows, width) = (x.dims()[0], pair.fc1.w.dims()[0]);
    let mut h = ws.alloc(DType::BF16, &[rows, width])?;
    gemm.matmul(
        gpu,
        &mut h,
        x,
        &pair.fc1.w.view(),
        Some(&pair.fc1.b.view()),
        Epilogue::Bias,
        false,
    )?;
    gelu_in_place(gpu, &mut h, Gelu::Erf)?;
    let mut h2 = ws.alloc(DType::BF16, &[rows, pair.fc2.w.dims()[0]])?;
    gemm.matmul(
        gpu,
        &mut h2,
        &h.as_view(),
        &pair.fc2.w.view(),
        Some(&pair.fc2.b.view()),
        Epilogue::Bias,
        false,
    )?;
    layernorm(gpu, out, &h2.as_view(), &pair.ln_w.view(), &pair.ln_b.view(), eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_block_order_positions() {
        // A 4x6 patch grid: blocks of 2x2 row-major over a 2x3 block grid; inside a block
        // (top-left, top-right, bottom-left, bottom-right).
        let b = ErnieVisionBatchHost::new(&[(4, 6), (2, 2)]).unwrap();
        assert_eq!(b.cu_patches, vec![0, 24, 28]);
        assert_eq!(b.max_patches, 24);
        let first: Vec<(i32, i32)> = b.rows[..8].iter().copied().zip(b.cols[..8].iter().copied()).collect();
        assert_eq!(
            first,
            vec![(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
        );
        // Block 3 is the second block row's first block.
        assert_eq!((b.rows[12], b.cols[12]), (2, 0));
        // Every (row, col) of the first image exactly once.
        let mut seen: Vec<(i32, i32)> = b.rows[..24].iter().copied().zip(b.cols[..24].iter().copied()).collect();
        seen.sort();
        let want: Vec<(i32, i32)> = (0..4).flat_map(|r| (0..6).map(move |c| (r, c))).collect();
        assert_eq!(seen, want);
        // The second image restarts at (0, 0).
        assert_eq!((b.rows[24], b.cols[24]), (0, 0));
        assert_eq!(b.num_tokens(), 7);
        assert_eq!(b.pair_first, vec![0, 2, 4, 6, 8, 10, 12]);
        assert_eq!(b.pair_second, vec![1, 3, 5, 7, 9, 11, 13]);
        assert!(ErnieVisionBatchHost::new(&[(3, 4)]).is_err());
        assert!(ErnieVisionBatchHost::new(&[(0, 4)]).is_err());
    }
}
