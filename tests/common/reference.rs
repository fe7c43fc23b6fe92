//! Plain-loop f64 references for the kernels, on the CPU.

/// out[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n]), for the rows in `rows` only (large
/// shapes check a sample of rows). Rows are spread over threads: the GPU host has 16 cores.
pub fn matmul_xwt(x: &[f64], w: &[f64], bias: Option<&[f64]>, k: usize, n: usize, rows: &[usize]) -> Vec<Vec<f64>> {
    let threads = std::thread::available_parallelism().map_or(4, |t| t.get()).min(16);
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&m| {
                            let xr = &x[m * k..(m + 1) * k];
                            (0..n)
                                .map(|j| {
                                    let wr = &w[j * k..(j + 1) * k];
                                    let dot: f64 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                                    dot + bias.map_or(0.0, |b| b[j])
                                })
                                .collect::<Vec<f64>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// GELU, tanh form (PyTorch's `gelu(approximate="tanh")`).
pub fn gelu_tanh(v: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
}
