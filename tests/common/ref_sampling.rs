//! f64 references for the sampling kernel; the definitions are those of
//! kernels/include/sampling.h (allowed set = top-k and top-p applied jointly to the untruncated
//! distribution, ties at the boundary kept; log-probs of the processed logits before
//! truncation).
#![allow(dead_code)]

use std::collections::HashMap;

/// Philox4x32-10, a Rust copy of kernels/common/philox.cuh (checked against the paper's known
/// answers in tests/cpu/sampling_cpu.rs).
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    const M0: u32 = 0xD251_1F53;
    const M1: u32 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    for _ in 0..10 {
        let p0 = M0 as u64 * ctr[0] as u64;
        let p1 = M1 as u64 * ctr[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
        key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
    }
    ctr
}

/// The penalties on one row, with the kernel's f32 arithmetic and order (repetition, then
/// frequency * count, then presence), on the tokens of `history` only. Tests choose dyadic
/// values, for which every step is exact, so that a fused multiply-add in the kernel cannot
/// make a difference.
pub fn apply_penalties_f32(x: &mut [f32], history: &[i32], rep: f32, freq: f32, pres: f32) {
    if rep == 1.0 && freq == 0.0 && pres == 0.0 {
        return;
    }
    let mut counts: HashMap<usize, u32> = HashMap::new();
    for &t in history {
        *counts.entry(t as usize).or_default() += 1;
    }
    for (&t, &c) in &counts {
        let mut v = x[t];
        if rep != 1.0 {
            v = if v > 0.0 { v / rep } else { v * rep };
        }
        v -= freq * c as f32;
        v -= pres;
        x[t] = v;
    }
}

/// The index of the largest value, the lowest index among equal maxima.
pub fn argmax_lowest(z: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best
}

pub fn log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = z.iter().map(|&v| (v - m).exp()).sum();
    let ls = s.ln();
    z.iter().map(|&v| v - m - ls).collect()
}

pub fn softmax(z: &[f64]) -> Vec<f64> {
    log_softmax(z).iter().map(|v| v.exp()).collect()
}

/// Indices of the finite values in the kernel's list order: value descending, index ascending.
pub fn order_desc(z: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..z.len()).filter(|&i| z[i].is_finite()).collect();
    idx.sort_by(|&a, &b| z[b].partial_cmp(&z[a]).unwrap().then(a.cmp(&b)));
    idx
}

/// The allowed set: v is allowed iff #{u: z_u > z_v} < top_k (0 = off) and
/// sum_{u: z_u > z_v} p_u < top_p (>= 1 = off). -inf values are never allowed.
pub fn allowed(z: &[f64], top_k: usize, top_p: f64) -> Vec<bool> {
    let p = softmax(z);
    let order = order_desc(z);
    let mut out = vec![false; z.len()];
    let (mut count_above, mut mass_above) = (0usize, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        // A group of equal values shares one test: the count and mass strictly above it.
        let mut j = i;
        while j < order.len() && z[order[j]] == z[order[i]] {
            j += 1;
        }
        let ok = (top_k == 0 || count_above < top_k) && (top_p >= 1.0 || mass_above < top_p);
        for &v in &order[i..j] {
            out[v] = ok;
            count_above += 1;
            mass_above += p[v];
        }
        i = j;
    }
    out
}

/// The truncated, renormalised distribution.
pub fn truncated(z: &[f64], top_k: usize, top_p: f64) -> Vec<f64> {
    let p = softmax(z);
    let a = allowed(z, top_k, top_p);
    let s: f64 = p.iter().zip(&a).filter(|(_, &ok)| ok).map(|(v, _)| v).sum();
    p.iter().zip(&a).map(|(&v, &ok)| if ok { v / s } else { 0.0 }).collect()
}

/// The cumulative mass, in list order, before and after each tie group: (mass above, mass
/// including the group), one entry per group.
pub fn group_masses(z: &[f64]) -> Vec<(f64, f64)> {
    let p = softmax(z);
    let order = order_desc(z);
    let mut out = Vec::new();
    let mut acc = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let before = acc;
        while j < order.len() && z[order[j]] == z[order[i]] {
            acc += p[order[j]];
            j += 1;
        }
        out.push((before, acc));
        i = j;
    }
    out
}

/// A top_p near `target` that sits halfway between the masses before and after the tie group
/// at the boundary, so that f32 and f64 agree on the allowed set; also returns the margin
/// (half the boundary group's mass).
pub fn safe_top_p(z: &[f64], target: f64) -> (f64, f64) {
    for (before, after) in group_masses(z) {
        if after >= target {
            return ((before + after) / 2.0, (after - before) / 2.0);
        }
    }
    (1.0, 0.0)
}

/// The gap between the k-th and (k+1)-th values in list order (0 when they tie).
pub fn top_k_gap(z: &[f64], k: usize) -> f64 {
    let order = order_desc(z);
    if k == 0 || k >= order.len() {
        return f64::INFINITY;
    }
    z[order[k - 1]] - z[order[k]]
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}
