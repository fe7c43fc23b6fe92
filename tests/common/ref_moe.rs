//! f64 references for the MoE kernels (kernels/include/moe.h): router logits, top-k routing,
//! the stable sort of pairs by expert, the experts' SwiGLU MLP with transformers' bf16
//! roundings, and the weighted combine.

use half::bf16;

/// `logits[t, j] = Σ_i x[t, i] · w[j, i]` and, per element, `Σ_i |x[t, i] · w[j, i]|` (the
/// scale an f32 sum's rounding error is relative to).
pub fn router_logits(x: &[f64], w: &[f64], tokens: usize, hidden: usize, num_logits: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; tokens * num_logits];
    let mut scale = vec![0.0; tokens * num_logits];
    for t in 0..tokens {
        let xr = &x[t * hidden..(t + 1) * hidden];
        for j in 0..num_logits {
            let wr = &w[j * hidden..(j + 1) * hidden];
            let (mut s, mut a) = (0.0, 0.0);
            for i in 0..hidden {
                s += xr[i] * wr[i];
                a += (xr[i] * wr[i]).abs();
            }
            out[t * num_logits + j] = s;
            scale[t * num_logits + j] = a;
        }
    }
    (out, scale)
}

/// One token's routing: global expert ids in descending order of score, their renormalised
/// weights (not rounded), and the smallest score gap among the first top_k + 1 experts in
/// score order (how close the choice or its order came to a tie).
#[derive(Clone, Debug)]
pub struct Route {
    pub ids: Vec<usize>,
    pub weights: Vec<f64>,
    pub margin: f64,
}

/// Softmax over the pool's logits, top-k of probability + bias (ties to the lower id),
/// weights = chosen probabilities / max(their sum, norm_min).
pub fn route(
    logits: &[f64],
    bias: Option<&[f64]>,
    pool: usize,
    num_experts: usize,
    top_k: usize,
    norm_min: f64,
) -> Route {
    let l = &logits[pool * num_experts..(pool + 1) * num_experts];
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|v| v / sum).collect();
    let score: Vec<f64> = (0..num_experts).map(|i| p[i] + bias.map_or(0.0, |b| b[i])).collect();
    let mut order: Vec<usize> = (0..num_experts).collect();
    order.sort_by(|&a, &b| score[b].partial_cmp(&score[a]).unwrap().then(a.cmp(&b)));
    let chosen = &order[..top_k];
    let total: f64 = chosen.iter().map(|&i| p[i]).sum();
    let denom = total.max(norm_min);
    let ranked = &order[..(top_k + 1).min(num_experts)];
    let margin = ranked
        .windows(2)
        .map(|w| score[w[0]] - score[w[1]])
        .fold(f64::INFINITY, f64::min);
    Route {
        ids: chosen.iter().map(|&i| pool * num_experts + i).collect(),
        weights: chosen.iter().map(|&i| p[i] / denom).collect(),
        margin,
    }
}

/// What `ocrvl_moe_align` writes, computed by a stable sort on the host.
#[derive(Debug, PartialEq)]
pub struct Aligned {
    pub sorted_pairs: Vec<i32>,
    pub pair_slot: Vec<i32>,
    pub tile_expert: Vec<i32>,
}

pub fn align(ids: &[i32], num_experts: usize, max_tiles: usize, block_m: usize) -> Aligned {
    let mut count = vec![0usize; num_experts];
    for &e in ids {
        if e >= 0 && (e as usize) < num_experts {
            count[e as usize] += 1;
        }
    }
    let mut first_tile = vec![0usize; num_experts];
    let mut tile_expert = vec![-1i32; max_tiles];
    let mut tiles = 0;
    for e in 0..num_experts {
        first_tile[e] = tiles;
        for _ in 0..count[e].div_ceil(block_m) {
            tile_expert[tiles] = e as i32;
            tiles += 1;
        }
    }
    let mut sorted_pairs = vec![-1i32; max_tiles * block_m];
    let mut pair_slot = vec![-1i32; ids.len()];
    let mut cursor = vec![0usize; num_experts];
    for (i, &e) in ids.iter().enumerate() {
        if e < 0 || e as usize >= num_experts {
            continue;
        }
        let e = e as usize;
        let slot = first_tile[e] * block_m + cursor[e];
        cursor[e] += 1;
        sorted_pairs[slot] = i as i32;
        pair_slot[i] = slot as i32;
    }
    Aligned {
        sorted_pairs,
        pair_slot,
        tile_expert,
    }
}

fn round_bf16(v: f64) -> f64 {
    bf16::from_f64(v).to_f64()
}

/// One expert's SwiGLU on one row, with transformers' roundings: gate and up rounded to bf16,
/// silu(gate) rounded, the product rounded. `gate_w`, `up_w`: `[inter, hidden]`.
pub fn swiglu_row(x: &[f64], gate_w: &[f64], up_w: &[f64], inter: usize, hidden: usize) -> Vec<f64> {
    (0..inter)
        .map(|c| {
            let g: f64 = (0..hidden).map(|i| x[i] * gate_w[c * hidden + i]).sum();
            let u: f64 = (0..hidden).map(|i| x[i] * up_w[c * hidden + i]).sum();
            let (g, u) = (round_bf16(g), round_bf16(u));
            let act = round_bf16(g / (1.0 + (-g).exp()));
            act * u
        })
        .collect()
}

/// `y[c] = Σ_i h[i] · w[c, i]` for `w`: `[n, k]`.
pub fn matvec(h: &[f64], w: &[f64], n: usize, k: usize) -> Vec<f64> {
    (0..n).map(|c| (0..k).map(|i| h[i] * w[c * k + i]).sum()).collect()
}
