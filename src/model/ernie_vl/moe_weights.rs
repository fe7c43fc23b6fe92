//! One MoE layer's weights rearranged from the hub checkpoint (spec §4.2) into the layout the
//! MoE kernels read ([`super::moe_block`]), on the host, ready to upload:
//!
//! | kernel operand | from the hub | rearrangement |
//! |---|---|---|
//! | router f32 `[P·E, H]` | `mlp.gate.weight`, `mlp.gate.weight_1`, each `[H, E]` (bf16 or f32) | transposed, text rows then vision rows, f32 |
//! | correction bias f32 `[P, E]` | `mlp.moe_statics.e_score_correction_bias` `[2, E]` | as is, f32 |
//! | gate/up bf16 `[E, 2·Ip, H]` per pool | `experts.{n}.gate_proj`, `up_proj` `[I, H]` | gate and up rows interleaved in groups of 8 (`kernels::moe::interleave_gate_up`), zero rows up to `Ip` |
//! | down bf16 `[E, H, Ip]` per pool | `experts.{n}.down_proj` `[H, I]` | zero columns up to `Ip` |
//! | shared gate/up bf16 `[2·Is, H]` | `shared_experts.gate_proj`, `up_proj` `[Is, H]` | gate rows, then up rows (for `silu_mul`) |
//! | shared down bf16 `[H, Is]` | `shared_experts.down_proj` | as is |
//!
//! `Ip` is the pool's SwiGLU width rounded up to [`INTER_ALIGN`], because the grouped GEMM
//! takes `k` in steps of 64 and `n = 2·Ip` in tiles of 128. Padding is exact: a zero gate row
//! and a zero up row give `silu(0) · 0 = 0`, and a zero column of down adds nothing. The
//! real model needs none (1536 and 512); the tiny test model (96 and 32) does.

use half::bf16;

use super::names::{correction_bias, expert, router, text_layer, ExpertPool};
use crate::config::ErnieVlConfig;
use crate::error::{Error, Result};
use crate::kernels::moe::interleave_gate_up;
use crate::model::weights::{HostTensor, ValidatedWeights};
use crate::runtime::DType;

/// Expert SwiGLU widths are padded to a multiple of this (the grouped GEMM's k step; twice it
/// is its n tile).
pub const INTER_ALIGN: usize = 64;

const OP: &str = "ernie moe weights";

/// One MoE layer in the kernels' layout; see the module table.
pub struct MoeLayerHost {
    pub router: Vec<f32>,
    pub correction_bias: Vec<f32>,
    /// Each pool's padded SwiGLU width `Ip` (text, vision).
    pub pool_inter: Vec<usize>,
    /// Per pool, `[E, 2·Ip, H]`.
    pub gate_up: Vec<Vec<bf16>>,
    /// Per pool, `[E, H, Ip]`.
    pub down: Vec<Vec<bf16>>,
    /// The shared experts' width (0: none) and their weights.
    pub shared_inter: usize,
    pub shared_gate_up: Option<Vec<bf16>>,
    pub shared_down: Option<Vec<bf16>>,
}

/// `w` rounded up to a multiple of [`INTER_ALIGN`].
pub fn padded_inter(w: usize) -> usize {
    w.div_ceil(INTER_ALIGN) * INTER_ALIGN
}

/// Rearranges layer `layer`'s MoE weights; an error for a dense layer or a missing tensor.
pub fn moe_layer_host(cfg: &ErnieVlConfig, layer: usize, weights: &ValidatedWeights<'_>) -> Result<MoeLayerHost> {
    let m = &cfg.moe;
    if !m.is_moe_layer(layer) {
        return Err(Error::invalid(
            OP,
            format!("layer {layer} is a dense layer, not an MoE layer"),
        ));
    }
    let (h, e) = (cfg.text.hidden_size, m.num_experts);
    let get = |name: &str| -> Result<HostTensor<'_>> {
        weights
            .get(name)
            .ok_or_else(|| Error::invalid(OP, format!("the checkpoint has no {name}")))
    };

    let mut router_rows = Vec::with_capacity(2 * e * h);
    for pool in [ExpertPool::Text, ExpertPool::Vision] {
        let t = get(&router(layer, pool))?;
        expect_shape(&t, &[h, e])?;
        let vals = to_f32(&t)?;
        // [H, E] stored; row j of the kernel's router is column j of the stored matrix.
        for j in 0..e {
            router_rows.extend((0..h).map(|i| vals[i * e + j]));
        }
    }
    let bias = get(&correction_bias(layer))?;
    expect_shape(&bias, &[2, e])?;

    let (mut gate_up, mut down, mut pool_inter) = (vec![], vec![], vec![]);
    for (pool, width) in [
        (ExpertPool::Text, m.text_intermediate_size),
        (ExpertPool::Vision, m.vision_intermediate_size),
    ] {
        let padded = padded_inter(width);
        let mut gu_all = Vec::with_capacity(e * 2 * padded * h);
        let mut down_all = Vec::with_capacity(e * h * padded);
        for n in 0..e {
            let mut gate = to_bf16(&get(&expert(cfg, layer, pool, n, "gate_proj"))?, &[width, h])?;
            let mut up = to_bf16(&get(&expert(cfg, layer, pool, n, "up_proj"))?, &[width, h])?;
            gate.resize(padded * h, bf16::ZERO);
            up.resize(padded * h, bf16::ZERO);
            gu_all.extend(interleave_gate_up(&gate, &up, padded, h)?);
            let d = to_bf16(&get(&expert(cfg, layer, pool, n, "down_proj"))?, &[h, width])?;
            for row in d.chunks_exact(width) {
                down_all.extend_from_slice(row);
                down_all.extend(std::iter::repeat_n(bf16::ZERO, padded - width));
            }
        }
        gate_up.push(gu_all);
        down.push(down_all);
        pool_inter.push(padded);
    }

    let shared_inter = m.shared_intermediate_size();
    let (shared_gate_up, shared_down) = if shared_inter > 0 {
        let prefix = |proj: &str| text_layer(layer, &format!("mlp.shared_experts.{proj}.weight"));
        let mut gu = to_bf16(&get(&prefix("gate_proj"))?, &[shared_inter, h])?;
        gu.extend(to_bf16(&get(&prefix("up_proj"))?, &[shared_inter, h])?);
        let d = to_bf16(&get(&prefix("down_proj"))?, &[h, shared_inter])?;
        (Some(gu), Some(d))
    } else {
        (None, None)
    };
    Ok(MoeLayerHost {
        router: router_rows,
        correction_bias: to_f32(&bias)?,
        pool_inter,
        gate_up,
        down,
        shared_inter,
        shared_gate_up,
        shared_down,
    })
}

fn expect_shape(t: &HostTensor<'_>, dims: &[usize]) -> Result<()> {
    if t.shape != dims {
        return Err(Error::invalid(
            OP,
            format!("{} is {:?}, expected {dims:?}", t.name, t.shape),
        ));
    }
    Ok(())
}

/// The elements of a bf16 or f32 tensor as f32.
fn to_f32(t: &HostTensor<'_>) -> Result<Vec<f32>> {
    match t.dtype {
        DType::F32 => Ok(t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        DType::BF16 => Ok(t
            .data
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect()),
        other => Err(Error::invalid(
            OP,
            format!("{} is {other}; expected bf16 or f32", t.name),
        )),
    }
}

/// The elements of a bf16 tensor of shape `dims`.
fn to_bf16(t: &HostTensor<'_>, dims: &[usize]) -> Result<Vec<bf16>> {
    expect_shape(t, dims)?;
    if t.dtype != DType::BF16 {
        return Err(Error::invalid(OP, format!("{} is {}; expected bf16", t.name, t.dtype)));
    }
    Ok(t.data
        .chunks_exact(2)
        .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])))
        .collect())
}
