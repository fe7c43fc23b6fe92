//! A plain f64 CPU forward of PaddleOCR-VL (MODEL_SPEC.md §3 and §10), for small models: the
//! reference the GPU forward and transformers' outputs are compared with. Written for
//! clarity, not speed: dense loops, no batching, one sequence.

use std::collections::HashMap;
use std::path::Path;

use half::bf16;
use ocrvl::config::ModelConfig;
use ocrvl::model::names::{text_layer, vision_layer, LM_HEAD};
use ocrvl::model::weights::Checkpoint;

/// A weight matrix or vector in f64, row-major, with its shape.
pub struct W {
    pub shape: Vec<usize>,
    pub v: Vec<f64>,
}

pub struct RefModel {
    pub cfg: ModelConfig,
    w: HashMap<String, W>,
}

impl RefModel {
    pub fn load(dir: &Path) -> RefModel {
        let cfg = ModelConfig::from_dir(dir).expect("config");
        let ckpt = Checkpoint::open(dir).expect("checkpoint");
        let valid = ckpt.validate(&cfg).expect("validate");
        let mut w = HashMap::new();
        for t in valid.iter() {
            let v: Vec<f64> = bytemuck::cast_slice::<u8, u16>(t.data)
                .iter()
                .map(|&b| bf16::from_bits(b).to_f64())
                .collect();
            w.insert(
                t.name.to_string(),
                W {
                    shape: t.shape.to_vec(),
                    v,
                },
            );
        }
        if valid.lm_head_tied() {
            let e = &w["model.embed_tokens.weight"];
            let copy = W {
                shape: e.shape.clone(),
                v: e.v.clone(),
            };
            w.insert(LM_HEAD.to_string(), copy);
        }
        RefModel { cfg, w }
    }

    fn get(&self, name: &str) -> &W {
        self.w
            .get(name)
            .unwrap_or_else(|| panic!("reference model: no tensor {name}"))
    }

    /// Patch embeddings through the vision tower and projector, for each image in turn.
    /// `pixels`: [sum patches, 3*14*14] in the spec's patch order; `grids`: (h, w) in patches.
    /// Returns [sum merged tokens, text hidden].
    pub fn image_tokens(&self, pixels: &[f64], grids: &[(usize, usize)]) -> Vec<f64> {
        let vc = &self.cfg.vision;
        let d = vc.hidden_size;
        let pd = vc.patch_dim();
        let mut out = Vec::new();
        let mut offset = 0;
        for &(h, w) in grids {
            let np = h * w;
            let px = &pixels[offset * pd..(offset + np) * pd];
            offset += np;
            let pe = self.get("visual.vision_model.embeddings.patch_embedding.weight");
            let mut x = linear(
                px,
                np,
                &pe.v,
                d,
                pd,
                Some(&self.get("visual.vision_model.embeddings.patch_embedding.bias").v),
            );
            let table = &self.get("visual.vision_model.embeddings.position_embedding.weight").v;
            let side = vc.position_table_side();
            for p in 0..np {
                let pos = bilinear(table, side, d, h, w, p / w, p % w);
                for j in 0..d {
                    x[p * d + j] += pos[j];
                }
            }
            // 2-D rotary angles: dims 0..17 from the row, 18..35 from the column, repeated.
            let hd = vc.head_dim();
            let half = hd / 2;
            let nf = half / 2;
            let inv: Vec<f64> = (0..nf)
                .map(|i| 1.0 / vc.rope_theta.powf((2 * i) as f64 / half as f64))
                .collect();
            let angles: Vec<Vec<f64>> = (0..np)
                .map(|p| {
                    let (r, c) = ((p / w) as f64, (p % w) as f64);
                    let a: Vec<f64> = inv.iter().map(|f| r * f).chain(inv.iter().map(|f| c * f)).collect();
                    a.iter().chain(a.iter()).copied().collect()
                })
                .collect();
            for l in 0..vc.num_hidden_layers {
                let g = |s: &str| &self.get(&vision_layer(l, s)).v;
                let y = layernorm(&x, d, g("layer_norm1.weight"), g("layer_norm1.bias"), vc.layer_norm_eps);
                let mut q = linear(
                    &y,
                    np,
                    g("self_attn.q_proj.weight"),
                    d,
                    d,
                    Some(g("self_attn.q_proj.bias")),
                );
                let mut k = linear(
                    &y,
                    np,
                    g("self_attn.k_proj.weight"),
                    d,
                    d,
                    Some(g("self_attn.k_proj.bias")),
                );
                let v = linear(
                    &y,
                    np,
                    g("self_attn.v_proj.weight"),
                    d,
                    d,
                    Some(g("self_attn.v_proj.bias")),
                );
                let heads = vc.num_attention_heads;
                rope_neox(&mut q, np, heads, hd, &angles);
                rope_neox(&mut k, np, heads, hd, &angles);
                let o = attention(&q, &k, &v, np, np, heads, heads, hd, false, 0);
                let o = linear(
                    &o,
                    np,
                    g("self_attn.out_proj.weight"),
                    d,
                    d,
                    Some(g("self_attn.out_proj.bias")),
                );
                add_into(&mut x, &o);
                let y = layernorm(&x, d, g("layer_norm2.weight"), g("layer_norm2.bias"), vc.layer_norm_eps);
                let inter = vc.intermediate_size;
                let mut f = linear(&y, np, g("mlp.fc1.weight"), inter, d, Some(g("mlp.fc1.bias")));
                f.iter_mut().for_each(|e| *e = gelu_tanh(*e));
                let f = linear(&f, np, g("mlp.fc2.weight"), d, inter, Some(g("mlp.fc2.bias")));
                add_into(&mut x, &f);
            }
            let post = |s: &str| &self.get(&format!("visual.vision_model.post_layernorm.{s}")).v;
            let x = layernorm(&x, d, post("weight"), post("bias"), vc.layer_norm_eps);
            let pre = |s: &str| &self.get(&format!("mlp_AR.pre_norm.{s}")).v;
            let x = layernorm(&x, d, pre("weight"), pre("bias"), 1e-5);
            // 2x2 merge: token (i, j) = [P(2i,2j), P(2i,2j+1), P(2i+1,2j), P(2i+1,2j+1)].
            let (gh, gw) = (h / 2, w / 2);
            let mut merged = Vec::with_capacity(np * d);
            for i in 0..gh {
                for j in 0..gw {
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let p = (2 * i + dy) * w + 2 * j + dx;
                        merged.extend_from_slice(&x[p * d..(p + 1) * d]);
                    }
                }
            }
            let m = gh * gw;
            let md = 4 * d;
            let l1 = |s: &str| &self.get(&format!("mlp_AR.linear_1.{s}")).v;
            let l2 = |s: &str| &self.get(&format!("mlp_AR.linear_2.{s}")).v;
            let mut y = linear(&merged, m, l1("weight"), md, md, Some(l1("bias")));
            y.iter_mut().for_each(|e| *e = gelu_erf(*e));
            out.extend(linear(
                &y,
                m,
                l2("weight"),
                self.cfg.text.hidden_size,
                md,
                Some(l2("bias")),
            ));
        }
        out
    }

    /// Logits [S, vocab] for a whole sequence (prefill of every token, causal).
    /// `positions`: [3][S] M-RoPE position ids; image placeholders take `image_tokens` in order.
    pub fn logits(&self, ids: &[u32], image_tokens: &[f64], positions: &[Vec<i64>; 3]) -> Vec<f64> {
        let tc = &self.cfg.text;
        let d = tc.hidden_size;
        let s = ids.len();
        let embed = &self.get("model.embed_tokens.weight").v;
        let mut x = vec![0.0; s * d];
        let mut next_image = 0;
        for (t, &id) in ids.iter().enumerate() {
            let row = if id == self.cfg.tokens.image_token_id {
                next_image += 1;
                &image_tokens[(next_image - 1) * d..next_image * d]
            } else {
                &embed[id as usize * d..(id as usize + 1) * d]
            };
            x[t * d..(t + 1) * d].copy_from_slice(row);
        }
        assert_eq!(
            next_image * d,
            image_tokens.len(),
            "image placeholders and image tokens differ in number"
        );
        let hd = tc.head_dim;
        let nf = hd / 2;
        let sections = tc.mrope_section;
        let axis_of = |j: usize| {
            if j < sections[0] {
                0
            } else if j < sections[0] + sections[1] {
                1
            } else {
                2
            }
        };
        let inv: Vec<f64> = (0..nf)
            .map(|j| 1.0 / tc.rope_theta.powf((2 * j) as f64 / hd as f64))
            .collect();
        let angles: Vec<Vec<f64>> = (0..s)
            .map(|t| {
                let a: Vec<f64> = (0..nf).map(|j| positions[axis_of(j)][t] as f64 * inv[j]).collect();
                a.iter().chain(a.iter()).copied().collect()
            })
            .collect();
        let (hq, hkv) = (tc.num_attention_heads, tc.num_key_value_heads);
        for l in 0..tc.num_hidden_layers {
            let g = |n: &str| &self.get(&text_layer(l, n)).v;
            let y = rmsnorm(&x, d, g("input_layernorm.weight"), tc.rms_norm_eps);
            let mut q = linear(&y, s, g("self_attn.q_proj.weight"), hq * hd, d, None);
            let mut k = linear(&y, s, g("self_attn.k_proj.weight"), hkv * hd, d, None);
            let v = linear(&y, s, g("self_attn.v_proj.weight"), hkv * hd, d, None);
            rope_neox(&mut q, s, hq, hd, &angles);
            rope_neox(&mut k, s, hkv, hd, &angles);
            let o = attention(&q, &k, &v, s, s, hq, hkv, hd, true, 0);
            add_into(&mut x, &linear(&o, s, g("self_attn.o_proj.weight"), d, hq * hd, None));
            let y = rmsnorm(&x, d, g("post_attention_layernorm.weight"), tc.rms_norm_eps);
            let inter = tc.intermediate_size;
            let gate = linear(&y, s, g("mlp.gate_proj.weight"), inter, d, None);
            let up = linear(&y, s, g("mlp.up_proj.weight"), inter, d, None);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(&a, &b)| a / (1.0 + (-a).exp()) * b)
                .collect();
            add_into(&mut x, &linear(&act, s, g("mlp.down_proj.weight"), d, inter, None));
        }
        let y = rmsnorm(&x, d, &self.get("model.norm.weight").v, tc.rms_norm_eps);
        linear(&y, s, &self.get(LM_HEAD).v, tc.vocab_size, d, None)
    }
}

/// x [m, k] · w[n, k]ᵀ (+ b[n]).
pub fn linear(x: &[f64], m: usize, w: &[f64], n: usize, k: usize, b: Option<&Vec<f64>>) -> Vec<f64> {
    assert_eq!(x.len(), m * k, "linear: x");
    assert_eq!(w.len(), n * k, "linear: w");
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            out[i * n + j] = xr.iter().zip(wr).map(|(a, b)| a * b).sum::<f64>() + b.map_or(0.0, |b| b[j]);
        }
    }
    out
}

fn add_into(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

pub fn layernorm(x: &[f64], d: usize, w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|r| {
            let mean = r.iter().sum::<f64>() / d as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            r.iter()
                .enumerate()
                .map(move |(j, v)| (v - mean) * inv * w[j] + b[j])
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn rmsnorm(x: &[f64], d: usize, w: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|r| {
            let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
            r.iter()
                .enumerate()
                .map(move |(j, v)| v * inv * w[j])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Bilinear resample of a side×side table to an (h, w) grid, align_corners = false (§3.3):
/// the row of output patch (y, x).
pub fn bilinear(table: &[f64], side: usize, d: usize, h: usize, w: usize, y: usize, x: usize) -> Vec<f64> {
    let coord = |o: usize, n: usize| {
        let s = ((o as f64 + 0.5) * side as f64 / n as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(side - 1);
        let i1 = (i0 + 1).min(side - 1);
        (i0, i1, s - i0 as f64)
    };
    let (y0, y1, fy) = coord(y, h);
    let (x0, x1, fx) = coord(x, w);
    let at = |r: usize, c: usize, j: usize| table[(r * side + c) * d + j];
    (0..d)
        .map(|j| {
            (1.0 - fy) * (1.0 - fx) * at(y0, x0, j)
                + (1.0 - fy) * fx * at(y0, x1, j)
                + fy * (1.0 - fx) * at(y1, x0, j)
                + fy * fx * at(y1, x1, j)
        })
        .collect()
}

/// Rotate-half rotary on x [n, heads, hd] with per-token angles [n][hd].
pub fn rope_neox(x: &mut [f64], n: usize, heads: usize, hd: usize, angles: &[Vec<f64>]) {
    let half = hd / 2;
    for (t, ang) in angles.iter().enumerate().take(n) {
        for h in 0..heads {
            let base = (t * heads + h) * hd;
            let row: Vec<f64> = x[base..base + hd].to_vec();
            for i in 0..hd {
                let rot = if i < half { -row[i + half] } else { row[i - half] };
                x[base + i] = row[i] * ang[i].cos() + rot * ang[i].sin();
            }
        }
    }
}

/// Softmax attention for one sequence: q [sq, hq, hd], k/v [sk, hkv, hd]; query head j uses kv
/// head j / (hq / hkv). Causal: query i sits at key position `q_offset + i`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    sq: usize,
    sk: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
    causal: bool,
    q_offset: usize,
) -> Vec<f64> {
    let group = hq / hkv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; sq * hq * hd];
    for i in 0..sq {
        for h in 0..hq {
            let kh = h / group;
            let qr = &q[(i * hq + h) * hd..(i * hq + h + 1) * hd];
            let last = if causal { (q_offset + i).min(sk - 1) } else { sk - 1 };
            let scores: Vec<f64> = (0..=last)
                .map(|j| {
                    qr.iter()
                        .zip(&k[(j * hkv + kh) * hd..(j * hkv + kh + 1) * hd])
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut out[(i * hq + h) * hd..(i * hq + h + 1) * hd];
            for (j, p) in e.iter().enumerate() {
                let vr = &v[(j * hkv + kh) * hd..(j * hkv + kh + 1) * hd];
                o.iter_mut().zip(vr).for_each(|(a, b)| *a += p / z * b);
            }
        }
    }
    out
}

pub fn gelu_tanh(v: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
}

pub fn gelu_erf(v: f64) -> f64 {
    0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))
}

/// erf to about 1e-15 (series for small |x|, continued fraction via erfc for large).
pub fn erf(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series: converges fast enough below 2.5 in f64.
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc by Lentz's continued fraction: erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))).
        let ax = x.abs();
        let mut f = ax;
        for n in (1..60).rev() {
            f = ax + (n as f64 / 2.0) / f;
        }
        let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / f;
        (1.0 - erfc).copysign(x)
    }
}

/// M-RoPE position ids (§3.9), written independently of the crate's builder: [3][S] and the
/// rope delta. `grids` are (h, w) in patches of the images in prompt order.
pub fn positions_3d(ids: &[u32], image_token: u32, grids: &[(usize, usize)]) -> ([Vec<i64>; 3], i64) {
    let mut pos: [Vec<i64>; 3] = [vec![], vec![], vec![]];
    let mut cur = 0i64;
    let mut t = 0;
    let mut img = 0;
    while t < ids.len() {
        if ids[t] == image_token {
            let (h, w) = grids[img];
            img += 1;
            let (gh, gw) = (h / 2, w / 2);
            for k in 0..gh * gw {
                pos[0].push(cur);
                pos[1].push(cur + (k / gw) as i64);
                pos[2].push(cur + (k % gw) as i64);
            }
            t += gh * gw;
            cur += gh.max(gw) as i64;
        } else {
            for p in pos.iter_mut() {
                p.push(cur);
            }
            cur += 1;
            t += 1;
        }
    }
    let delta = cur - ids.len() as i64;
    (pos, delta)
}
