//! An MoE layer of a tiny ERNIE-4.5-VL checkpoint (`synth-model --arch ernie-4.5-vl-28b-a3b
//! --tiny`, written here) rearranged into the MoE kernels' layout
//! (src/model/ernie_vl/moe_weights.rs): every element of the router, the correction bias, each
//! pool's gate/up and down, and the shared experts is checked against the stored tensors, the
//! padding (tiny widths 96 and 32 become 128 and 64) is zero, and a dense layer is refused.

use half::bf16;

use ocrvl::config::ErnieVlConfig;
use ocrvl::model::ernie_vl::checkpoint::validate;
use ocrvl::model::ernie_vl::moe_weights::{moe_layer_host, padded_inter};
use ocrvl::model::ernie_vl::names::{correction_bias, expert, router, text_layer, ExpertPool};
use ocrvl::model::ernie_vl::synthetic::{write_synthetic_model, ErnieSyntheticOptions};
use ocrvl::model::weights::{Checkpoint, ValidatedWeights};
use ocrvl::runtime::DType;

/// A stored tensor's elements as f32 (bf16 or f32 storage).
fn stored(w: &ValidatedWeights<'_>, name: &str) -> Vec<f32> {
    let t = w.get(name).unwrap_or_else(|| panic!("no {name}"));
    match t.dtype {
        DType::F32 => t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::BF16 => t
            .data
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        other => panic!("{name} is {other}"),
    }
}

fn as_f32(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

#[test]
fn tiny_moe_layer_in_the_kernels_layout() {
    let cfg = ErnieVlConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_model(dir.path(), &cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let w = validate(&ckpt, &cfg).unwrap();
    let (h, e) = (cfg.text.hidden_size, cfg.moe.num_experts);
    let layer = 2;
    let host = moe_layer_host(&cfg, layer, &w).unwrap();

    // Router: row p·E + j is column j of pool p's stored [H, E] matrix.
    assert_eq!(host.router.len(), 2 * e * h);
    for (p, pool) in [ExpertPool::Text, ExpertPool::Vision].into_iter().enumerate() {
        let r = stored(&w, &router(layer, pool));
        for j in 0..e {
            for i in 0..h {
                assert_eq!(
                    host.router[(p * e + j) * h + i],
                    r[i * e + j],
                    "router pool {p} row {j} col {i}"
                );
            }
        }
    }
    assert_eq!(host.correction_bias, stored(&w, &correction_bias(layer)));

    for (p, (pool, width)) in [
        (ExpertPool::Text, cfg.moe.text_intermediate_size),
        (ExpertPool::Vision, cfg.moe.vision_intermediate_size),
    ]
    .into_iter()
    .enumerate()
    {
        let ip = padded_inter(width);
        assert!(ip >= width && ip % 64 == 0 && (ip > width) == (width % 64 != 0));
        assert_eq!(host.pool_inter[p], ip);
        let gu = as_f32(&host.gate_up[p]);
        let dn = as_f32(&host.down[p]);
        assert_eq!(gu.len(), e * 2 * ip * h);
        assert_eq!(dn.len(), e * h * ip);
        for n in 0..e {
            let gate = stored(&w, &expert(&cfg, layer, pool, n, "gate_proj"));
            let up = stored(&w, &expert(&cfg, layer, pool, n, "up_proj"));
            let down = stored(&w, &expert(&cfg, layer, pool, n, "down_proj"));
            let gu_e = &gu[n * 2 * ip * h..(n + 1) * 2 * ip * h];
            for c in 0..ip {
                // Feature c: gate at row 16(c/8) + c%8, up 8 rows further.
                let (g_row, u_row) = (16 * (c / 8) + c % 8, 16 * (c / 8) + 8 + c % 8);
                for i in 0..h {
                    let (want_g, want_u) = if c < width {
                        (gate[c * h + i], up[c * h + i])
                    } else {
                        (0.0, 0.0)
                    };
                    assert_eq!(gu_e[g_row * h + i], want_g, "pool {p} expert {n} gate feature {c}");
                    assert_eq!(gu_e[u_row * h + i], want_u, "pool {p} expert {n} up feature {c}");
                }
            }
            let dn_e = &dn[n * h * ip..(n + 1) * h * ip];
            for r in 0..h {
                for c in 0..ip {
                    let want = if c < width { down[r * width + c] } else { 0.0 };
                    assert_eq!(dn_e[r * ip + c], want, "pool {p} expert {n} down [{r}, {c}]");
                }
            }
        }
    }

    // Shared experts: gate rows then up rows; down as stored.
    let si = cfg.moe.shared_intermediate_size();
    assert_eq!(host.shared_inter, si);
    let prefix = |proj: &str| text_layer(layer, &format!("mlp.shared_experts.{proj}.weight"));
    let want_gu = [stored(&w, &prefix("gate_proj")), stored(&w, &prefix("up_proj"))].concat();
    assert_eq!(as_f32(host.shared_gate_up.as_ref().unwrap()), want_gu);
    assert_eq!(
        as_f32(host.shared_down.as_ref().unwrap()),
        stored(&w, &prefix("down_proj"))
    );
}

#[test]
fn a_dense_layer_has_no_moe_weights() {
    let cfg = ErnieVlConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_model(dir.path(), &cfg, &ErnieSyntheticOptions::for_model(true)).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let w = validate(&ckpt, &cfg).unwrap();
    assert!(!cfg.moe.is_moe_layer(0));
    let err = moe_layer_host(&cfg, 0, &w).err().expect("layer 0 is dense");
    assert!(err.to_string().contains("layer 0 is a dense layer"), "{err}");
}
