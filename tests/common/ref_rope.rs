//! f64 references for the rope kernels (model spec §3.4 and §3.10): rotate-half rope with
//! exact angles, on the bf16 values the device holds.

/// Per token, the angle of each pair j in [0, head_dim/2) for M-RoPE: frequency j takes its
/// position from axis T (`pos[0]`) for j < sections[0], H (`pos[1]`) for
/// j < sections[0] + sections[1], else W (`pos[2]`); inv_freq[j] = theta^(-2j/head_dim).
/// `pos[axis][t]`; returns `[tokens][head_dim/2]`.
pub fn mrope_angles(pos: [&[i32]; 3], head_dim: usize, sections: [usize; 3], theta: f64) -> Vec<Vec<f64>> {
    let half = head_dim / 2;
    assert_eq!(sections.iter().sum::<usize>(), half);
    (0..pos[0].len())
        .map(|t| {
            (0..half)
                .map(|j| {
                    let axis = if j < sections[0] {
                        0
                    } else if j < sections[0] + sections[1] {
                        1
                    } else {
                        2
                    };
                    pos[axis][t] as f64 * theta.powf(-2.0 * j as f64 / head_dim as f64)
                })
                .collect()
        })
        .collect()
}

/// Per token, the angle of each pair j in [0, head_dim/2) for the 2-D vision rope: with
/// f = head_dim/4 and inv_freq[i] = theta^(-2i/(head_dim/2)), pair j < f turns by
/// rows[t] * inv_freq[j], pair j >= f by cols[t] * inv_freq[j - f].
pub fn vision_angles(rows: &[i32], cols: &[i32], head_dim: usize, theta: f64) -> Vec<Vec<f64>> {
    let (half, f) = (head_dim / 2, head_dim / 4);
    let inv = |i: usize| theta.powf(-2.0 * i as f64 / half as f64);
    rows.iter()
        .zip(cols)
        .map(|(&r, &c)| {
            (0..half)
                .map(|j| {
                    if j < f {
                        r as f64 * inv(j)
                    } else {
                        c as f64 * inv(j - f)
                    }
                })
                .collect()
        })
        .collect()
}

/// Rotate-half rope of `x` `[tokens][heads * head_dim]` (row-major, contiguous) by `angles`
/// `[tokens][head_dim/2]`: element j and j + head_dim/2 of every head become
/// (x_j cos a_j - x_{j+h} sin a_j, x_{j+h} cos a_j + x_j sin a_j).
pub fn rotate_half(x: &[f64], heads: usize, head_dim: usize, angles: &[Vec<f64>]) -> Vec<f64> {
    let half = head_dim / 2;
    let width = heads * head_dim;
    assert_eq!(x.len(), angles.len() * width);
    let mut out = vec![0.0; x.len()];
    for (t, ang) in angles.iter().enumerate() {
        let (sin, cos): (Vec<f64>, Vec<f64>) = ang.iter().map(|a| a.sin_cos()).unzip();
        for h in 0..heads {
            let base = t * width + h * head_dim;
            for j in 0..half {
                let (a, b) = (x[base + j], x[base + j + half]);
                out[base + j] = a * cos[j] - b * sin[j];
                out[base + j + half] = b * cos[j] + a * sin[j];
            }
        }
    }
    out
}

/// Per token, the angle of each pair i in [0, head_dim/2) for ERNIE-4.5-VL's 3D rope: axis H
/// (`pos[1]`) for even i < section_hw, W (`pos[2]`) for odd i < section_hw, T (`pos[0]`)
/// beyond; inv_freq[i] = theta^(-2i/head_dim). Returns `[tokens][head_dim/2]`.
pub fn ernie_angles(pos: [&[i32]; 3], head_dim: usize, section_hw: usize, theta: f64) -> Vec<Vec<f64>> {
    (0..pos[0].len())
        .map(|t| {
            (0..head_dim / 2)
                .map(|i| {
                    let axis = if i < section_hw { 1 + (i & 1) } else { 0 };
                    pos[axis][t] as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64)
                })
                .collect()
        })
        .collect()
}

/// Interleaved-pair rope of `x` `[tokens][heads * head_dim]` by `angles` `[tokens][head_dim/2]`:
/// elements 2i and 2i+1 of every head become (x_2i cos a_i - x_2i+1 sin a_i,
/// x_2i+1 cos a_i + x_2i sin a_i).
pub fn rotate_interleaved(x: &[f64], heads: usize, head_dim: usize, angles: &[Vec<f64>]) -> Vec<f64> {
    let width = heads * head_dim;
    assert_eq!(x.len(), angles.len() * width);
    let mut out = vec![0.0; x.len()];
    for (t, ang) in angles.iter().enumerate() {
        for h in 0..heads {
            let base = t * width + h * head_dim;
            for (i, a) in ang.iter().enumerate() {
                let (s, c) = a.sin_cos();
                let (x0, x1) = (x[base + 2 * i], x[base + 2 * i + 1]);
                out[base + 2 * i] = x0 * c - x1 * s;
                out[base + 2 * i + 1] = x1 * c + x0 * s;
            }
        }
    }
    out
}
