//! f64 reference attention for one sequence (one image), on the CPU.

/// One sequence's inputs, as f64 copies of the exact bf16 values the GPU got.
pub struct SeqInputs<'a> {
    /// `[q_len, hq, d]`
    pub q: &'a [f64],
    /// `[k_len, hkv, d]`
    pub k: &'a [f64],
    /// `[k_len, hkv, d]`
    pub v: &'a [f64],
    pub q_len: usize,
    pub k_len: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub scale: f64,
    /// Query `i` sees keys `j <= k_len - q_len + i` (the queries are the last `q_len`
    /// positions); otherwise every key.
    pub causal: bool,
}

/// Attention output and LSE of the query rows in `rows`: returns (`[rows.len(), hq, d]`,
/// `[rows.len(), hq]`). A row that sees no key gets zeros and LSE -inf. Work is spread over
/// threads (the GPU host has 16 cores).
pub fn attention_rows(a: &SeqInputs<'_>, rows: &[usize]) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.q.len(), a.q_len * a.hq * a.d);
    assert_eq!(a.k.len(), a.k_len * a.hkv * a.d);
    assert_eq!(a.v.len(), a.k_len * a.hkv * a.d);
    let pairs: Vec<(usize, usize)> = rows.iter().flat_map(|&r| (0..a.hq).map(move |h| (r, h))).collect();
    let threads = std::thread::available_parallelism().map_or(4, |t| t.get()).min(16);
    let chunk = pairs.len().div_ceil(threads).max(1);
    let results: Vec<(Vec<f64>, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|&(r, h)| one_row(a, r, h)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut out = Vec::with_capacity(rows.len() * a.hq * a.d);
    let mut lse = Vec::with_capacity(rows.len() * a.hq);
    for (o, l) in results {
        out.extend_from_slice(&o);
        lse.push(l);
    }
    (out, lse)
}

/// Output `[d]` and LSE of query row `i`, head `h`.
fn one_row(a: &SeqInputs<'_>, i: usize, h: usize) -> (Vec<f64>, f64) {
    let d = a.d;
    let kvh = h / (a.hq / a.hkv);
    let visible = if a.causal {
        // Keys 0 ..= k_len - q_len + i, when that is not negative.
        (a.k_len + i + 1).saturating_sub(a.q_len).min(a.k_len)
    } else {
        a.k_len
    };
    if visible == 0 {
        return (vec![0.0; d], f64::NEG_INFINITY);
    }
    let qr = &a.q[(i * a.hq + h) * d..(i * a.hq + h + 1) * d];
    let scores: Vec<f64> = (0..visible)
        .map(|j| {
            let kr = &a.k[(j * a.hkv + kvh) * d..(j * a.hkv + kvh + 1) * d];
            a.scale * qr.iter().zip(kr).map(|(x, y)| x * y).sum::<f64>()
        })
        .collect();
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut out = vec![0.0; d];
    let mut l = 0.0;
    for (j, &s) in scores.iter().enumerate() {
        let p = (s - m).exp();
        l += p;
        let vr = &a.v[(j * a.hkv + kvh) * d..(j * a.hkv + kvh + 1) * d];
        for (o, x) in out.iter_mut().zip(vr) {
            *o += p * x;
        }
    }
    for o in &mut out {
        *o /= l;
    }
    (out, m + l.ln())
}

/// The query rows a test compares: all of them for short runs; for long ones the first and
/// last 8, the rows around each 64-row boundary of the first 4 tiles, and an even spread, so
/// that the f64 reference stays fast (a 5120-row causal run in full is about 54 GFLOP).
pub fn sample_rows(q_len: usize) -> Vec<usize> {
    if q_len <= 256 {
        return (0..q_len).collect();
    }
    let mut rows: Vec<usize> = (0..8).chain(q_len - 8..q_len).collect();
    for b in [63usize, 64, 65, 127, 128, 129, 191, 192, 255, 256] {
        rows.push(b.min(q_len - 1));
    }
    for i in 0..48 {
        rows.push(i * (q_len - 1) / 47);
    }
    rows.sort_unstable();
    rows.dedup();
    rows
}
