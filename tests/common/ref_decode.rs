//! Decode attention in f64, and the host-side paged pool the decode tests build (so that they
//! do not depend on the kv_cache kernel).

use half::bf16;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// One sequence: `q` `[num_q_heads, head_dim]`, `k` and `v` `[len, num_kv_heads, head_dim]`
/// (logical, contiguous). Returns `o` `[num_q_heads, head_dim]`:
/// `o[h] = sum_j softmax_j(scale * q[h] . k[j, h / group]) v[j, h / group]`, zeros when `len`
/// is 0 (the kernel's documented behaviour).
pub fn decode_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    len: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
) -> Vec<f64> {
    let num_q_heads = q.len() / head_dim;
    let group = num_q_heads / num_kv_heads;
    let mut out = vec![0.0; num_q_heads * head_dim];
    if len == 0 {
        return out;
    }
    let mut s = vec![0.0; len];
    for h in 0..num_q_heads {
        let kvh = h / group;
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        for (j, sj) in s.iter_mut().enumerate() {
            let kr = &k[(j * num_kv_heads + kvh) * head_dim..][..head_dim];
            *sj = scale * qh.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>();
        }
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut denom = 0.0;
        let o = &mut out[h * head_dim..(h + 1) * head_dim];
        for (j, &sj) in s.iter().enumerate() {
            let p = (sj - m).exp();
            denom += p;
            let vr = &v[(j * num_kv_heads + kvh) * head_dim..][..head_dim];
            for (od, vd) in o.iter_mut().zip(vr) {
                *od += p * vd;
            }
        }
        for od in o.iter_mut() {
            *od /= denom;
        }
    }
    out
}

/// A paged pool built on the host: K and V `[num_blocks, num_kv_heads, block_size, head_dim]`
/// and the block table `[num_seqs, max_blocks_per_seq]`.
pub struct PagedPool {
    pub k: Vec<bf16>,
    pub v: Vec<bf16>,
    pub block_tables: Vec<i32>,
    pub num_blocks: usize,
    pub max_blocks_per_seq: usize,
}

/// Scatters each sequence's contiguous K/V (`[len, num_kv_heads, head_dim]`) into a pool of
/// `factor` times the blocks needed, sequences taking blocks in a shuffled order (FA3's
/// randperm page table). Everything a correct kernel must not read is NaN: the unused blocks,
/// the unused tail of each sequence's last block, and the table entries past a sequence's last
/// block (they name an unused, NaN-filled block). A stray read then shows up as NaN.
#[allow(clippy::too_many_arguments)]
pub fn build_pool(
    rng: &mut ChaCha8Rng,
    k_seqs: &[Vec<bf16>],
    v_seqs: &[Vec<bf16>],
    lens: &[usize],
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    factor: usize,
) -> PagedPool {
    assert!(
        factor >= 2,
        "the NaN block for unused table entries comes from the spare blocks"
    );
    let blocks_of: Vec<usize> = lens.iter().map(|&l| l.div_ceil(block_size)).collect();
    let needed: usize = blocks_of.iter().sum();
    let num_blocks = (needed * factor).max(2);
    let max_blocks_per_seq = blocks_of.iter().cloned().max().unwrap_or(0).max(1);
    let mut order: Vec<usize> = (0..num_blocks).collect();
    order.shuffle(rng);
    let spare = order[needed] as i32; // never assigned: stays NaN
    let nan = bf16::from_bits(0x7FC0);
    let tile = num_kv_heads * block_size * head_dim;
    let mut k = vec![nan; num_blocks * tile];
    let mut v = vec![nan; num_blocks * tile];
    let mut block_tables = vec![spare; lens.len() * max_blocks_per_seq];
    let mut next = 0;
    for (s, &len) in lens.iter().enumerate() {
        for b in 0..blocks_of[s] {
            let blk = order[next];
            next += 1;
            block_tables[s * max_blocks_per_seq + b] = blk as i32;
            for pos in b * block_size..((b + 1) * block_size).min(len) {
                let off = pos - b * block_size;
                for h in 0..num_kv_heads {
                    let src = (pos * num_kv_heads + h) * head_dim;
                    let dst = ((blk * num_kv_heads + h) * block_size + off) * head_dim;
                    k[dst..dst + head_dim].copy_from_slice(&k_seqs[s][src..src + head_dim]);
                    v[dst..dst + head_dim].copy_from_slice(&v_seqs[s][src..src + head_dim]);
                }
            }
        }
    }
    PagedPool {
        k,
        v,
        block_tables,
        num_blocks,
        max_blocks_per_seq,
    }
}
